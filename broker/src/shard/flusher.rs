//! [`Flusher`]: durable acknowledgements by pipelined group commit. The writer hands
//! it the appends that wait for durability; it runs one background flush at a time
//! while the writer goes on writing, and answers each append once a flush that covers
//! it completed.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::command::{AppendError, AppendOutcome, ClassStats};
use crate::storage::Log;

/// An append's reply channel and the outcome it gets once a flush covers it.
pub(super) type Waiter = (
    oneshot::Sender<Result<AppendOutcome, AppendError>>,
    Result<AppendOutcome, AppendError>,
);

/// Answers waiting for durability.
#[derive(Default)]
struct Durables {
    /// Appends acked once flushed, each with its append's own outcome.
    waiters: Vec<Waiter>,
    /// Explicit flush requests.
    replies: Vec<oneshot::Sender<Result<(), AppendError>>>,
}

impl Durables {
    fn answer(self, flushed: Result<(), AppendError>) {
        for (reply, result) in self.waiters {
            let _ = reply.send(flushed.clone().and(result));
        }
        for reply in self.replies {
            let _ = reply.send(flushed.clone());
        }
    }
}

/// A background flush and the answers that wait for it.
pub(super) struct RunningFlush {
    pub(super) done: oneshot::Receiver<Result<(), String>>,
    covers: Durables,
    /// The high-water mark when it started: everything below is durable once it is done.
    covers_to: u64,
    /// When it started, for `weir_flush_latency_seconds`.
    started: std::time::Instant,
}

/// Durable acknowledgements, pipelined: at most one flush runs (on a storage worker)
/// while the writer keeps writing; answers that arrive meanwhile queue for the next
/// flush, which starts as soon as the running one ends. So a durable append waits for
/// at most the running flush plus its own, and the disk syncs one group while the next
/// is written, instead of the writer idling through every `fdatasync`.
#[derive(Default)]
pub(super) struct Flusher {
    pub(super) running: Option<RunningFlush>,
    queued: Durables,
    /// A flush should start (someone waits, or the topic's durability asks for one).
    pub(super) wanted: bool,
    /// Bytes written since the running flush started (the next flush's share).
    pub(super) written_since_start: usize,
    /// Every group of this shard needs a flush (`durability = always`).
    always: bool,
}

impl Flusher {
    /// An idle flusher; `always` when every group needs a flush (`durability =
    /// always`).
    pub(super) fn new(always: bool) -> Self {
        Flusher {
            always,
            ..Flusher::default()
        }
    }

    pub(super) fn want(
        &mut self,
        waiters: Vec<Waiter>,
        reply: Option<oneshot::Sender<Result<(), AppendError>>>,
    ) {
        self.queued.waiters.extend(waiters);
        self.queued.replies.extend(reply);
        self.wanted = true;
    }

    /// Whether anyone waits for the next flush.
    pub(super) fn has_waiters(&self) -> bool {
        self.always || !self.queued.waiters.is_empty() || !self.queued.replies.is_empty()
    }

    /// Everyone waiting, running or queued, gets `flushed`.
    pub(super) fn answer_all(&mut self, flushed: Result<(), AppendError>) {
        if let Some(r) = self.running.take() {
            r.covers.answer(flushed.clone());
        }
        std::mem::take(&mut self.queued).answer(flushed);
        self.wanted = false;
    }

    /// Starts a background flush covering everything written to `log` so far, if one
    /// is wanted and none is running; the waiters queued until now ride on it.
    pub(super) fn start(&mut self, log: &mut Log) {
        if !self.wanted || self.running.is_some() {
            return;
        }
        let (tx, done) = oneshot::channel();
        match log.flush_in_background(move |r| {
            let _ = tx.send(r);
        }) {
            Ok(()) => {
                self.written_since_start = 0;
                self.running = Some(RunningFlush {
                    done,
                    covers: std::mem::take(&mut self.queued),
                    covers_to: log.published_high_watermark(),
                    started: std::time::Instant::now(),
                });
                self.wanted = false;
            }
            Err(e) => {
                // The log is failed: nothing waiting will ever be durable.
                tracing::error!(error = %e, "flush failed");
                let err = Err(AppendError::Storage(e.to_string()));
                let queued = std::mem::take(&mut self.queued);
                queued.answer(err);
                self.wanted = false;
            }
        }
    }

    /// Whether the running flush has sent its result (a flush thread that ended without
    /// one is noticed by `finish` or the writer's wait, not here).
    pub(super) fn running_done(&self) -> bool {
        self.running.as_ref().is_some_and(|r| !r.done.is_empty())
    }

    /// Answers the running flush's waiters once it is done: with `result` when the
    /// caller already awaited it, else if it has finished meanwhile.
    pub(super) fn finish(
        &mut self,
        log: &mut Log,
        stats: &ClassStats,
        result: Option<Result<(), String>>,
    ) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let r = match result {
            Some(r) => r,
            None => match running.done.try_recv() {
                Ok(r) => r,
                Err(oneshot::error::TryRecvError::Empty) => return,
                Err(oneshot::error::TryRecvError::Closed) => Err("flush thread ended".into()),
            },
        };
        let running = self.running.take().expect("checked above");
        match &r {
            Ok(()) => {
                stats.flushes.fetch_add(1, Ordering::Relaxed);
                stats.flush_latency.observe(running.started.elapsed());
                stats
                    .flushed_offset
                    .fetch_max(running.covers_to, Ordering::Release);
            }
            Err(e) => tracing::error!(error = %e, "flush failed"),
        }
        running.covers.answer(r.map_err(AppendError::Storage));
        // Whatever queued up meanwhile goes with the next flush, started at once.
        self.start(log);
    }

    /// One synchronous flush (it waits for a running one) that answers everyone still
    /// waiting for durability; for shutting down.
    pub(super) fn flush_and_answer_all(&mut self, log: &mut Log, stats: &ClassStats) {
        let flushed = log.flush().map_err(|e| {
            tracing::error!(error = %e, "flush failed");
            AppendError::Storage(e.to_string())
        });
        if flushed.is_ok() {
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            stats
                .flushed_offset
                .fetch_max(log.high_watermark(), Ordering::Release);
        }
        self.answer_all(flushed);
    }
}
