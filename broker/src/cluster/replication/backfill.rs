//! Catch-up of lagging copies, busiest shards first.
//!
//! A node that comes back after a while (or a new copy: `weir shard move`) has many
//! shards to copy. Copying them all at once shares the link and the disk among all of
//! them, so every shard stays out of sync for the whole catch-up; copying a few at a
//! time, the ones most at risk first, puts those back in sync early. Risk here is the
//! shard's write rate as its primary reports it (MirrorFetch `write_rate`): the busier a
//! shard, the more acknowledged records ride on fewer copies while this one is out of
//! sync. (The load forecast of the sharding issue can replace the rate here once it
//! exists.)
//!
//! A mirror task is *catching up* while its fetches come back full (more is waiting at
//! the primary); it then needs one of `mirror_catchup_parallel` permits, granted to
//! the waiting shard with the highest write rate. A copy that keeps pace never waits.
//! Each catch-up is logged when it starts (with its rank among the waiting ones) and
//! when it ends (records, bytes, seconds, MB/s), and counted for `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A shard copy: topic and shard number.
pub type Key = (String, u32);

/// When nothing is catching up, how long the first waiter waits for others to show
/// up before the ranking picks: a restarted node's copies each make their first fetch
/// within about this long, and the busiest of them should go first, not the first to
/// ask.
const GATHER: Duration = Duration::from_millis(300);

/// Node-wide counters of catch-ups.
#[derive(Debug, Default)]
pub struct BackfillMetrics {
    pub started: AtomicU64,
    pub finished: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Debug)]
struct Active {
    since: Instant,
    records: u64,
    bytes: u64,
    rate: u64,
}

#[derive(Debug, Default)]
struct Inner {
    active: HashMap<Key, Active>,
    /// Waiting shards and their write rate (records/s).
    waiting: HashMap<Key, u64>,
    /// Order in which catch-ups started, for tests and logs.
    started: Vec<Key>,
    /// Since when shards wait while none is catching up (see [`GATHER`]).
    gathering_since: Option<Instant>,
}

/// The node's catch-up scheduler.
#[derive(Debug)]
pub struct Backfill {
    parallel: usize,
    inner: Mutex<Inner>,
    changed: Notify,
    pub metrics: BackfillMetrics,
}

/// A granted catch-up; dropping it (the mirror task ended) frees the permit.
#[derive(Debug)]
pub struct Permit {
    backfill: Arc<Backfill>,
    key: Key,
}

impl Backfill {
    pub fn new(parallel: usize) -> Backfill {
        Backfill {
            parallel: parallel.max(1),
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            metrics: BackfillMetrics::default(),
        }
    }

    /// Waits until `key` may catch up: fewer than `parallel` catch-ups run and no
    /// waiting shard has a higher write rate (ties: the lower topic/shard first).
    /// `rate` may be updated by calling again while waiting is not needed: the mirror
    /// task waits here once per catch-up.
    ///
    /// Cancel-safe: a caller that stops waiting (its mirror task aborted when the node
    /// became the shard's primary) leaves the queue. Left in it, a busiest shard would
    /// be first forever, and no other catch-up would start.
    pub async fn admit(self: &Arc<Self>, key: Key, rate: u64, behind: u64) -> Permit {
        let _leaves = LeavesQueue {
            backfill: self,
            key: key.clone(),
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.inner.lock().expect("backfill lock");
                if inner.active.contains_key(&key) {
                    return self.permit(key);
                }
                inner.waiting.insert(key.clone(), rate);
                let gathering = inner.active.is_empty()
                    && inner
                        .gathering_since
                        .get_or_insert_with(Instant::now)
                        .elapsed()
                        < GATHER;
                let first = inner
                    .waiting
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                    .map(|(k, _)| k.clone());
                if !gathering && inner.active.len() < self.parallel && first.as_ref() == Some(&key)
                {
                    let waiting = inner.waiting.len();
                    inner.waiting.remove(&key);
                    if inner.waiting.is_empty() {
                        inner.gathering_since = None;
                    }
                    inner.active.insert(
                        key.clone(),
                        Active {
                            since: Instant::now(),
                            records: 0,
                            bytes: 0,
                            rate,
                        },
                    );
                    inner.started.push(key.clone());
                    self.metrics.started.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(topic = %key.0, shard = key.1, write_rate = rate, behind,
                        waiting, "catch-up started (busiest waiting shard first)");
                    return self.permit(key);
                }
            }
            // Bounded: a waiter whose turn came while it was not listening (or whose
            // gathering time ran out) looks again.
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    fn permit(self: &Arc<Self>, key: Key) -> Permit {
        // (`admit`'s guard then finds the key out of the queue: it is active.)
        Permit {
            backfill: self.clone(),
            key,
        }
    }

    /// The order catch-ups started in (oldest first).
    pub fn started_order(&self) -> Vec<Key> {
        self.inner.lock().expect("backfill lock").started.clone()
    }

    /// Catch-ups running now.
    pub fn active(&self) -> usize {
        self.inner.lock().expect("backfill lock").active.len()
    }

    fn release(&self, key: &Key) -> Option<Active> {
        let a = {
            let mut inner = self.inner.lock().expect("backfill lock");
            inner.waiting.remove(key);
            inner.active.remove(key)
        };
        self.changed.notify_waiters();
        a
    }
}

impl Permit {
    /// Counts what one round copied.
    pub fn copied(&self, records: u64, bytes: u64) {
        if let Some(a) = self
            .backfill
            .inner
            .lock()
            .expect("backfill lock")
            .active
            .get_mut(&self.key)
        {
            a.records += records;
            a.bytes += bytes;
        }
        self.backfill
            .metrics
            .records
            .fetch_add(records, Ordering::Relaxed);
        self.backfill
            .metrics
            .bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// The copy caught up: logs what the catch-up did and frees the permit.
    pub fn finish(self) {
        if let Some(a) = self.backfill.release(&self.key) {
            let secs = a.since.elapsed().as_secs_f64().max(1e-3);
            self.backfill
                .metrics
                .finished
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                topic = %self.key.0,
                shard = self.key.1,
                records = a.records,
                bytes = a.bytes,
                seconds = format!("{secs:.2}"),
                mb_per_s = format!("{:.1}", a.bytes as f64 / secs / 1e6),
                write_rate = a.rate,
                "catch-up finished"
            );
        }
        // Drop runs next and finds nothing left to release.
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.backfill.release(&self.key);
    }
}

/// Takes a waiter out of the queue however `admit` ends (a no-op once admitted).
struct LeavesQueue<'a> {
    backfill: &'a Backfill,
    key: Key,
}

impl Drop for LeavesQueue<'_> {
    fn drop(&mut self) {
        let mut inner = self.backfill.inner.lock().expect("backfill lock");
        if inner.waiting.remove(&self.key).is_some() {
            if inner.waiting.is_empty() {
                inner.gathering_since = None;
            }
            drop(inner);
            self.backfill.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_busiest_waiting_shard_goes_first_and_at_most_parallel_run() {
        let b = Arc::new(Backfill::new(1));
        let first = b.admit(("t".into(), 9), 1, 100).await;
        // Three wait, with different write rates.
        let mut waiters = Vec::new();
        for (shard, rate) in [(0u32, 10u64), (1, 500), (2, 50)] {
            let b = b.clone();
            waiters.push(tokio::spawn(async move {
                let p = b.admit(("t".into(), shard), rate, 100).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                p.finish();
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.active(), 1, "one permit, held by the first");
        first.finish();
        for w in waiters {
            w.await.unwrap();
        }
        let order: Vec<u32> = b.started_order().into_iter().map(|k| k.1).collect();
        assert_eq!(order, [9, 1, 2, 0], "by write rate, highest first");
        assert_eq!(b.active(), 0);
        assert_eq!(b.metrics.finished.load(Ordering::Relaxed), 4);
    }

    /// A waiter that gives up (its task aborted) leaves the queue: a busier shard
    /// that stopped waiting does not keep a quieter one from its turn. Fails without
    /// the guard in `admit`: shard 1 waits forever behind the absent shard 0.
    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let b = Arc::new(Backfill::new(1));
        let first = b.admit(("t".into(), 9), 1, 1).await;
        let busy = {
            let b = b.clone();
            tokio::spawn(async move { b.admit(("t".into(), 0), 1_000, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        busy.abort();
        assert!(busy.await.unwrap_err().is_cancelled());
        first.finish();
        let quiet = tokio::time::timeout(Duration::from_secs(2), b.admit(("t".into(), 1), 1, 1))
            .await
            .expect("the quieter shard's turn came");
        quiet.finish();
        assert_eq!(b.metrics.started.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_dropped_permit_frees_its_place() {
        let b = Arc::new(Backfill::new(1));
        let p = b.admit(("t".into(), 0), 1, 1).await;
        drop(p);
        let q = tokio::time::timeout(Duration::from_secs(1), b.admit(("t".into(), 1), 1, 1))
            .await
            .expect("admitted after the drop");
        q.finish();
    }
}
