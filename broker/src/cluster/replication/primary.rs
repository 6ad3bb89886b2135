//! A shard copy in the primary role: it serves its mirrors' MirrorFetch, tracks where
//! each stands, keeps the replicated high-water mark (what readers see and what a
//! `mirrored` produce waits for) and asks the controller to change the in-sync set
//! when a mirror falls behind or catches up.
//!
//! The in-sync set it uses is always the committed one from the metadata: a mirror
//! stops counting only once the consensus engine has recorded that it left the set, so
//! a copy the controller might choose as the next primary always holds every record a
//! `mirrored` produce was acknowledged for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use weir_protocol::messages::{
    MirrorFetchRequest, MirrorFetchResponse, MirrorState, Records, NO_TRUNCATION,
};
use weir_protocol::ErrorCode;

use super::epochs::EpochHistory;
use crate::cluster::meta::{NodeId, ShardEntry};
use crate::error::BrokerError;
use crate::shard::Shard;

/// Where one mirror stands.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// It holds every offset below this.
    offset: u64,
    /// When it last held everything this copy held.
    caught_up: Instant,
}

/// What changes with the metadata: the committed in-sync set and its version.
#[derive(Debug, Clone)]
struct Membership {
    /// Every copy (changes when a copy moves: `weir shard move`).
    replicas: Vec<NodeId>,
    in_sync: Vec<NodeId>,
    version: u64,
    /// When each mirror last left the in-sync set: it rejoins only after catching up
    /// later than that (a dead mirror's last fetch never brings it back).
    left: HashMap<NodeId, Instant>,
}

/// One shard this node leads.
#[derive(Debug)]
pub struct PrimaryState {
    pub topic: String,
    pub shard_no: u32,
    pub node_id: NodeId,
    pub epoch: u32,
    pub min_in_sync: usize,
    pub shard: Arc<Shard>,
    membership: Mutex<Membership>,
    mirrors: Mutex<HashMap<NodeId, Progress>>,
    epochs: Mutex<EpochHistory>,
    /// Woken after every local write, so waiting MirrorFetches answer at once.
    written: Notify,
    /// Set when this node stops being the primary of this epoch.
    resigned: std::sync::atomic::AtomicBool,
    /// (when, log end then, records per second over the interval before): what
    /// MirrorFetch answers tell a lagging mirror about this shard's write rate.
    rate: Mutex<(Instant, u64, u64)>,
    since: Instant,
}

impl PrimaryState {
    /// Takes the primary role for `entry.epoch`: records the epoch's start at the
    /// log's end.
    pub fn begin(
        topic: &str,
        shard_no: u32,
        node_id: NodeId,
        entry: &ShardEntry,
        min_in_sync: usize,
        shard: Arc<Shard>,
        mut epochs: EpochHistory,
    ) -> Result<PrimaryState, BrokerError> {
        let end = shard.reader().log_end_offset();
        // Entries a mirror learned for records it never wrote go first.
        epochs
            .truncate(end)
            .and_then(|()| epochs.begin(entry.epoch, end))
            .map_err(|e| {
                BrokerError::new(
                    ErrorCode::StorageError,
                    format!(
                        "{topic}/{shard_no}: cannot record epoch {}: {e}",
                        entry.epoch
                    ),
                )
            })?;
        let p = PrimaryState {
            topic: topic.to_string(),
            shard_no,
            node_id,
            epoch: entry.epoch,
            min_in_sync,
            shard,
            membership: Mutex::new(Membership {
                replicas: entry.replicas.clone(),
                in_sync: entry.in_sync.clone(),
                version: entry.version,
                left: HashMap::new(),
            }),
            mirrors: Mutex::new(HashMap::new()),
            epochs: Mutex::new(epochs),
            written: Notify::new(),
            resigned: std::sync::atomic::AtomicBool::new(false),
            rate: Mutex::new((Instant::now(), end, 0)),
            since: Instant::now(),
        };
        p.recompute();
        Ok(p)
    }

    /// Every copy of the shard, as of the metadata this primary last took.
    pub fn replicas(&self) -> Vec<NodeId> {
        self.membership
            .lock()
            .expect("membership lock")
            .replicas
            .clone()
    }

    /// Takes a newer in-sync set and replica list (same epoch) from the metadata.
    pub fn update(&self, entry: &ShardEntry) {
        {
            let mut m = self.membership.lock().expect("membership lock");
            if entry.version <= m.version {
                return;
            }
            let now = Instant::now();
            for n in &m.in_sync.clone() {
                if !entry.in_sync.contains(n) {
                    m.left.insert(*n, now);
                }
            }
            m.in_sync = entry.in_sync.clone();
            m.replicas = entry.replicas.clone();
            m.version = entry.version;
        }
        self.recompute();
    }

    /// This node no longer leads this epoch: waiting fetches and produces give up.
    pub fn resign(&self) {
        self.resigned
            .store(true, std::sync::atomic::Ordering::Release);
        self.written.notify_waiters();
    }

    pub fn is_resigned(&self) -> bool {
        self.resigned.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn in_sync(&self) -> Vec<NodeId> {
        self.membership
            .lock()
            .expect("membership lock")
            .in_sync
            .clone()
    }

    pub fn version(&self) -> u64 {
        self.membership.lock().expect("membership lock").version
    }

    /// A mirrored produce needs this many in-sync copies.
    pub fn check_min_in_sync(&self) -> Result<(), BrokerError> {
        let n = self.in_sync().len();
        if n < self.min_in_sync {
            return Err(BrokerError::new(
                ErrorCode::NotEnoughMirrors,
                format!(
                    "{}/{}: {n} in-sync copies, min_in_sync is {}",
                    self.topic, self.shard_no, self.min_in_sync
                ),
            ));
        }
        Ok(())
    }

    /// Moves the replicated high-water mark: the lowest end among the in-sync copies.
    /// Runs after every local write, so it allocates nothing: it reads the in-sync
    /// set under its lock (taken before the mirrors' lock, as everywhere).
    pub fn recompute(&self) {
        let end = self.shard.reader().log_end_offset();
        let hwm = {
            let membership = self.membership.lock().expect("membership lock");
            let mirrors = self.mirrors.lock().expect("mirrors lock");
            membership
                .in_sync
                .iter()
                .filter(|&&n| n != self.node_id)
                .map(|n| mirrors.get(n).map_or(0, |p| p.offset.min(end)))
                .fold(end, u64::min)
        };
        self.shard.raise_visible(hwm);
    }

    /// Called after every local write.
    pub fn on_local_write(&self) {
        self.recompute();
        self.written.notify_waiters();
    }

    /// Waits until every in-sync copy holds the records below `end`. Fails with
    /// NOT_PRIMARY when this node stops leading, REQUEST_TIMED_OUT at `deadline`.
    pub async fn wait_replicated(&self, end: u64, deadline: Instant) -> Result<(), BrokerError> {
        let mut hwm = self.shard.watch_high_watermark();
        loop {
            if *hwm.borrow_and_update() >= end {
                return Ok(());
            }
            if self.is_resigned() {
                return Err(BrokerError::new(
                    ErrorCode::NotPrimary,
                    format!(
                        "{}/{}: this node stopped being the primary before the mirrors held the records; they may or may not be kept",
                        self.topic, self.shard_no
                    ),
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BrokerError::new(
                    ErrorCode::RequestTimedOut,
                    "the in-sync mirrors did not acknowledge in time; the records may still be kept",
                ));
            }
            // Woken by the high-water mark; the short tick notices a resignation.
            let tick = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(tick, hwm.changed()).await;
        }
    }

    /// Serves one MirrorFetch (the caller checked that this node leads the shard).
    pub async fn serve(
        &self,
        req: &MirrorFetchRequest,
        max_bytes: usize,
    ) -> Result<MirrorFetchResponse, BrokerError> {
        if req.epoch < self.epoch {
            return Err(BrokerError::new(
                ErrorCode::FencedEpoch,
                format!(
                    "{}/{}: epoch {} is over; epoch {} is led by node {}",
                    self.topic, self.shard_no, req.epoch, self.epoch, self.node_id
                ),
            ));
        }
        if req.epoch > self.epoch {
            return Err(BrokerError::new(
                ErrorCode::NotPrimary,
                format!(
                    "{}/{}: this node leads epoch {}, not {}",
                    self.topic, self.shard_no, self.epoch, req.epoch
                ),
            ));
        }
        let mirror = u64::from(req.node_id);
        if !self.replicas().contains(&mirror) || mirror == self.node_id {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "node {mirror} holds no mirror of {}/{}",
                    self.topic, self.shard_no
                ),
            ));
        }
        let reader = self.shard.reader();
        let end = reader.log_end_offset();
        let truncate = self.epochs.lock().expect("epochs lock").divergence(
            req.last_epoch,
            req.fetch_offset,
            end,
        );
        if let Some(to) = truncate {
            return Ok(self.response(Records::default(), to, req.fetch_offset));
        }
        if req.fetch_offset < reader.log_start_offset() {
            // Retention removed what the mirror needs next: it starts its copy over at
            // `log_start_offset` (the answer's epochs tell it the epoch before it).
            return Ok(self.response(Records::default(), NO_TRUNCATION, req.fetch_offset));
        }
        self.record(mirror, req.fetch_offset, end);
        // Long poll: wait for records past the mirror's end.
        if req.fetch_offset >= end && req.max_wait_ms > 0 {
            let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(1000)));
            let notified = self.written.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if reader.log_end_offset() <= req.fetch_offset && !self.is_resigned() {
                let _ = tokio::time::timeout(wait, notified).await;
            }
        }
        let chunks = reader
            .read_unreplicated(req.fetch_offset, max_bytes)
            .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        Ok(self.response(
            Records::from_chunks(chunks),
            NO_TRUNCATION,
            req.fetch_offset,
        ))
    }

    /// Records per second taken over the last second or more (sampled by fetches).
    fn write_rate(&self, end: u64) -> u64 {
        let mut r = self.rate.lock().expect("rate lock");
        let elapsed = r.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let rate = (end.saturating_sub(r.1) as f64 / elapsed.as_secs_f64()) as u64;
            *r = (Instant::now(), end, rate);
        }
        r.2
    }

    fn response(&self, records: Records, truncate_to: u64, from: u64) -> MirrorFetchResponse {
        let reader = self.shard.reader();
        let end = reader.log_end_offset();
        MirrorFetchResponse {
            log_end_offset: end,
            write_rate: self.write_rate(end),
            epoch: self.epoch,
            high_watermark: reader.high_watermark(),
            log_start_offset: reader.log_start_offset(),
            truncate_to,
            epochs: self.epochs.lock().expect("epochs lock").from_offset(from),
            records,
        }
    }

    fn record(&self, mirror: NodeId, offset: u64, end: u64) {
        let now = Instant::now();
        {
            let mut mirrors = self.mirrors.lock().expect("mirrors lock");
            let p = mirrors.entry(mirror).or_insert(Progress {
                offset,
                caught_up: self.since,
            });
            p.offset = offset;
            if offset >= end {
                p.caught_up = now;
            }
        }
        self.recompute();
    }

    /// The in-sync set this primary should propose now, if it differs from the
    /// committed one: mirrors that fell more than `lag_max` behind leave it, mirrors
    /// that hold everything join it.
    pub fn wanted_in_sync(&self, lag_max: Duration) -> Option<(Vec<NodeId>, u64)> {
        let now = Instant::now();
        let end = self.shard.reader().log_end_offset();
        let Membership {
            replicas,
            in_sync,
            version,
            left,
        } = self.membership.lock().expect("membership lock").clone();
        let mirrors = self.mirrors.lock().expect("mirrors lock");
        let mut wanted: Vec<NodeId> = Vec::with_capacity(replicas.len());
        for &n in &replicas {
            if n == self.node_id {
                wanted.push(n);
                continue;
            }
            let p = mirrors.get(&n);
            let keep = if in_sync.contains(&n) {
                // Never heard from since taking over counts from then.
                let caught = p.map_or(self.since, |p| p.caught_up);
                now.duration_since(caught) <= lag_max
            } else {
                let left_at = left.get(&n).copied().unwrap_or(self.since);
                p.is_some_and(|p| p.offset >= end && p.caught_up > left_at)
            };
            if keep {
                wanted.push(n);
            }
        }
        let same = wanted.len() == in_sync.len() && wanted.iter().all(|n| in_sync.contains(n));
        (!same).then_some((wanted, version))
    }

    /// Each mirror's position, for DescribeCluster.
    pub fn mirror_states(&self) -> Vec<MirrorState> {
        let end = self.shard.reader().log_end_offset();
        let now = Instant::now();
        let replicas = self.replicas();
        let mirrors = self.mirrors.lock().expect("mirrors lock");
        replicas
            .iter()
            .filter(|&&n| n != self.node_id)
            .map(|&n| {
                let p = mirrors.get(&n);
                MirrorState {
                    node_id: n as u32,
                    offset: p.map_or(0, |p| p.offset),
                    lag_records: end.saturating_sub(p.map_or(0, |p| p.offset)),
                    caught_up_ms_ago: now
                        .duration_since(p.map_or(self.since, |p| p.caught_up))
                        .as_millis() as u64,
                }
            })
            .collect()
    }
}
