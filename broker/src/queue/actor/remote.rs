//! Shards the node serving the queue holds no copy of (a cluster topic with fewer
//! copies than nodes): their records come from the shard's primary, read with Fetch
//! over the node link by a task of their own, so the queue task never waits on the
//! network.
//!
//! Per such shard the task keeps what one fetch brought and the window has not taken
//! yet (`buf`, at most one fetch's bytes), and every record in the window (`held`:
//! leased, waiting for a retry, ready again or being dead-lettered), since a local copy
//! to read them again from does not exist. `held` is bounded by the window
//! (`queue_max_unacked_per_shard` records). One fetch runs at a time per shard: a
//! long-poll at the primary while nothing is new, started again as soon as the buffer
//! is empty and the window has room.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use weir_protocol::batch::{self, Batch, Record};
use weir_protocol::messages::{FetchResponse, LeasedMessage};

use super::{Internal, QueueActor};
use crate::error::BrokerError;

/// Bytes asked for per fetch.
const FETCH_BYTES: u32 = 256 * 1024;
/// How long a fetch waits at the primary while there is nothing new.
const FETCH_WAIT_MS: u32 = 500;
/// Pause after a failed fetch (no primary, a switchover) before the next one.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A shard read from its primary.
#[derive(Debug, Default)]
pub(super) struct RemoteFeed {
    /// Fetched and not yet read into the window, in offset order.
    pub(super) buf: VecDeque<Record>,
    /// The offset the next fetch starts at.
    fetch_from: u64,
    fetching: bool,
    /// The records in the window, by offset.
    pub(super) held: HashMap<u64, Record>,
    /// As the primary last said.
    pub(super) high_watermark: u64,
    log_start: u64,
}

impl RemoteFeed {
    pub(super) fn new(from: u64) -> RemoteFeed {
        RemoteFeed {
            fetch_from: from,
            ..RemoteFeed::default()
        }
    }
}

/// A fetch's answer, back in the queue task.
pub(super) struct Fetched {
    shard: u32,
    result: Result<FetchResponse, BrokerError>,
}

impl QueueActor {
    /// Starts a fetch of shard `s` unless one runs, records are still buffered or the
    /// window is full.
    pub(super) fn request_fetch(&mut self, s: u32) {
        let Some(r) = self.settings.replicated.clone() else {
            return;
        };
        let window = self.settings.window;
        let sq = &mut self.shards[s as usize];
        let full = sq.next - sq.floor >= window;
        let Some(feed) = sq.remote.as_mut() else {
            return;
        };
        if feed.fetching || !feed.buf.is_empty() || full {
            return;
        }
        feed.fetching = true;
        feed.fetch_from = feed.fetch_from.max(sq.next);
        let from = feed.fetch_from;
        let topic = self.topic_name.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = r.fetch(topic, s, from, FETCH_BYTES, FETCH_WAIT_MS).await;
            if result.is_err() {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            let _ = tx.send(Internal::Fetched(Fetched { shard: s, result }));
        });
    }

    /// Buffers what a fetch brought and starts the next one.
    pub(super) fn on_fetched(&mut self, f: Fetched) {
        let s = f.shard;
        let Some(feed) = self.shards[s as usize].remote.as_mut() else {
            return;
        };
        feed.fetching = false;
        match f.result {
            Ok(resp) => {
                feed.high_watermark = resp.high_watermark;
                feed.log_start = resp.log_start_offset;
                let mut added = false;
                'chunks: for chunk in resp.records.chunks() {
                    for b in batch::split(chunk.clone()) {
                        let parsed = match b.and_then(Batch::parse) {
                            Ok(p) => p,
                            Err(e) => {
                                // The primary checked every batch it stored; keep what
                                // came before and ask again from there.
                                tracing::warn!(group = %self.group, topic = %self.topic_name, shard = s,
                                    error = %e, "a batch fetched from the primary does not parse");
                                break 'chunks;
                            }
                        };
                        for rec in parsed.records() {
                            if rec.offset >= feed.fetch_from && rec.offset < resp.high_watermark {
                                feed.fetch_from = rec.offset + 1;
                                feed.buf.push_back(rec);
                                added = true;
                            }
                        }
                    }
                }
                if added {
                    self.shared.available.notify_waiters();
                }
            }
            Err(e) => {
                tracing::debug!(group = %self.group, topic = %self.topic_name, shard = s,
                    error = %e, "fetch from the shard's primary failed; trying again");
            }
        }
        self.request_fetch(s);
    }

    /// [`QueueActor::read_new`] for a remote shard: takes buffered records.
    pub(super) fn read_new_remote(
        &mut self,
        s: u32,
        want: u32,
        lease: Duration,
        out: &mut Vec<LeasedMessage>,
    ) {
        let mut granted = 0u32;
        loop {
            let window = self.settings.window;
            let sq = &mut self.shards[s as usize];
            let start = sq.remote.as_ref().map_or(0, |f| f.log_start);
            if sq.next < start {
                tracing::warn!(group = %self.group, topic = %self.topic_name, shard = s, from = sq.next, to = start,
                    "records deleted by retention before they were done");
                sq.skip_deleted(start);
            }
            if granted >= want || sq.next - sq.floor >= window {
                break;
            }
            let Some(feed) = sq.remote.as_mut() else {
                break;
            };
            let Some(rec) = feed.buf.pop_front() else {
                break;
            };
            if rec.offset < sq.next {
                continue;
            }
            self.take_new(s, rec, want, lease, &mut granted, out);
        }
        self.request_fetch(s);
    }

    /// Keeps `rec` while it is in the window of a remote shard.
    pub(super) fn hold(&mut self, s: u32, rec: &Record) {
        if let Some(feed) = self.shards[s as usize].remote.as_mut() {
            feed.held.insert(rec.offset, rec.clone());
        }
    }
}
