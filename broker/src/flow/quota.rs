//! Per-client quotas: produce and fetch byte rates (token buckets with burst), open
//! connections, and bytes queued (accepted, not yet acknowledged).
//!
//! A client is identified by the `client_id` of its ApiVersions handshake; clients of
//! one tenant share an id and so share its limits. Quotas come from the config file
//! (`quota_default_*` and `[[quota_clients]]`) and can be changed at runtime with
//! AlterQuotas; a change applies to the next request of every connection of that id.
//! Runtime changes are not persisted: the config file is the source of truth at start.
//!
//! State per client id lives in one [`ClientState`] shared by its connections. The
//! registry keeps it while connections are open, so reconnecting does not refill a
//! bucket; idle entries are dropped once more than `max_tracked` ids are known, which
//! bounds the registry's memory whatever ids clients invent.
//!
//! Within one client's produce limits P0 comes first: P1–P3 produces stop at 7/8 of
//! `max_queued_bytes` and leave the last eighth of the produce bucket's burst in it,
//! so a client whose P3 traffic runs into its quota is throttled there while its P0
//! produces still pass. The long-run rate is the same for all classes together.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_protocol::classes::Class;
use weir_protocol::messages::{Quota, QuotaEntry};
use weir_protocol::ErrorCode;

use crate::error::BrokerError;

use super::bucket::TokenBucket;
use super::memory::P0_RESERVE_DIVISOR;

/// The limits and live counters of one client id.
#[derive(Debug)]
pub struct ClientState {
    id: String,
    connections: AtomicU32,
    queued_bytes: AtomicU64,
    throttled_total: AtomicU64,
    inner: Mutex<Limits>,
}

#[derive(Debug)]
struct Limits {
    quota: Quota,
    produce: TokenBucket,
    fetch: TokenBucket,
}

impl Limits {
    fn new(quota: Quota, now: Instant) -> Self {
        Limits {
            produce: TokenBucket::new(quota.produce_bytes_per_s, quota.produce_burst_bytes, now),
            fetch: TokenBucket::new(quota.fetch_bytes_per_s, quota.fetch_burst_bytes, now),
            quota,
        }
    }
}

/// Why a client's request is refused (always THROTTLED on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub retry_after: Duration,
    pub message: String,
}

impl ClientState {
    fn new(id: String, quota: Quota, now: Instant) -> Self {
        ClientState {
            id,
            connections: AtomicU32::new(0),
            queued_bytes: AtomicU64::new(0),
            throttled_total: AtomicU64::new(0),
            inner: Mutex::new(Limits::new(quota, now)),
        }
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn limits(&self) -> std::sync::MutexGuard<'_, Limits> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_quota(&self, quota: Quota, now: Instant) {
        let mut l = self.limits();
        l.produce
            .reconfigure(quota.produce_bytes_per_s, quota.produce_burst_bytes, now);
        l.fetch
            .reconfigure(quota.fetch_bytes_per_s, quota.fetch_burst_bytes, now);
        l.quota = quota;
    }

    fn throttled(&self, retry_after: Duration, message: String) -> Throttle {
        self.throttled_total.fetch_add(1, Ordering::Relaxed);
        Throttle {
            retry_after,
            message,
        }
    }

    /// Admits a produce of `bytes` whose most important record is in `class`: checks
    /// the queued-bytes limit, then takes the bytes from the produce bucket. P1–P3 stop
    /// short of both limits by the P0 reserve (the last eighth; see the module docs).
    /// On success the bytes count as queued until [`ClientState::produce_done`].
    pub fn admit_produce(&self, bytes: u64, class: Class, now: Instant) -> Result<(), Throttle> {
        let mut l = self.limits();
        let p0 = class == Class::P0;
        // 0 is unlimited, for every class.
        let max_queued = match l.quota.max_queued_bytes {
            m if p0 || m == 0 => m,
            m => (m - m / P0_RESERVE_DIVISOR).max(1),
        };
        let queued = self.queued_bytes.load(Ordering::Acquire);
        // One request is always let through when nothing is queued, so a request larger
        // than the limit cannot be refused forever.
        if max_queued > 0 && queued > 0 && queued + bytes > max_queued {
            drop(l);
            return Err(self.throttled(
                Duration::from_millis(100),
                format!(
                    "client {:?} has {queued} bytes queued; its max_queued_bytes is {max_queued}",
                    self.id
                ),
            ));
        }
        let keep = if p0 {
            0
        } else {
            l.produce.burst() / P0_RESERVE_DIVISOR
        };
        if let Err(wait) = l.produce.try_take_keeping(bytes, keep, now) {
            let rate = l.quota.produce_bytes_per_s;
            drop(l);
            return Err(self.throttled(
                wait,
                format!(
                    "client {:?} is over its produce quota of {rate} bytes/s",
                    self.id
                ),
            ));
        }
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    /// A produce admitted by [`ClientState::admit_produce`] was answered.
    pub fn produce_done(&self, bytes: u64) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// How long a fetch must wait for the fetch bucket to be out of debt (zero: now).
    pub fn fetch_wait(&self, now: Instant) -> Duration {
        let wait = self.limits().fetch.debt_wait(now);
        if !wait.is_zero() {
            self.throttled_total.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }

    /// Charges a served fetch of `bytes`.
    pub fn fetch_served(&self, bytes: u64, now: Instant) {
        self.limits().fetch.charge(bytes, now);
    }

    /// Open connections of this id.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Requests throttled so far.
    pub fn throttled_total(&self) -> u64 {
        self.throttled_total.load(Ordering::Relaxed)
    }
}

/// One connection's membership of a client id; leaving on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    client: Arc<ClientState>,
}

impl ConnectionSlot {
    /// The client this connection belongs to.
    pub fn client(&self) -> &Arc<ClientState> {
        &self.client
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.client.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Registry {
    default: Quota,
    entries: BTreeMap<String, Quota>,
    clients: HashMap<String, Arc<ClientState>>,
}

impl Registry {
    fn quota_of(&self, id: &str) -> Quota {
        self.entries
            .get(id)
            .cloned()
            .unwrap_or(self.default.clone())
    }
}

/// Most per-client quota entries (AlterQuotas beyond it is refused): each lives until
/// restart, so without a bound a client could grow the registry without end.
pub const MAX_QUOTA_ENTRIES: usize = 10_000;

/// Longest client id a quota entry may name (a handshake's client id may be longer;
/// it then simply gets the default quota).
pub const MAX_QUOTA_CLIENT_ID_BYTES: usize = 256;

/// Every quota and every tracked client.
#[derive(Debug)]
pub struct QuotaRegistry {
    inner: Mutex<Registry>,
    max_tracked: usize,
}

impl QuotaRegistry {
    /// Quotas from the config; at most `max_tracked` client ids kept while idle.
    pub fn new(default: Quota, entries: Vec<QuotaEntry>, max_tracked: usize) -> Self {
        QuotaRegistry {
            inner: Mutex::new(Registry {
                default,
                entries: entries
                    .into_iter()
                    .map(|e| (e.client_id, e.quota))
                    .collect(),
                clients: HashMap::new(),
            }),
            max_tracked: max_tracked.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `id`, created if needed (not counted as a connection).
    pub fn client(&self, id: &str) -> Arc<ClientState> {
        let now = Instant::now();
        let mut r = self.lock();
        if let Some(c) = r.clients.get(id) {
            return c.clone();
        }
        if r.clients.len() >= self.max_tracked {
            // Forget ids nobody uses; their buckets start full if they come back.
            r.clients
                .retain(|_, c| Arc::strong_count(c) > 1 || c.connections() > 0);
        }
        let c = Arc::new(ClientState::new(id.to_string(), r.quota_of(id), now));
        r.clients.insert(id.to_string(), c.clone());
        c
    }

    /// Counts a connection of `id`, or refuses it when the id is at its
    /// `max_connections`.
    pub fn connect(&self, id: &str) -> Result<ConnectionSlot, Throttle> {
        let client = self.client(id);
        let max = client.limits().quota.max_connections;
        let mut cur = client.connections.load(Ordering::Acquire);
        loop {
            if max > 0 && cur >= max {
                let t = client.throttled(
                    Duration::from_secs(1),
                    format!(
                        "client {id:?} already has {cur} connections; its max_connections is {max}"
                    ),
                );
                return Err(t);
            }
            match client.connections.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(ConnectionSlot { client }),
                Err(now) => cur = now,
            }
        }
    }

    /// Entries for `ids` (every entry, default first, when empty).
    pub fn describe(&self, ids: &[String]) -> Result<Vec<QuotaEntry>, BrokerError> {
        if ids.len() > MAX_QUOTA_ENTRIES + 1 {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "{} client ids asked for; at most {} per request (there are at most {MAX_QUOTA_ENTRIES} entries and the default)",
                    ids.len(),
                    MAX_QUOTA_ENTRIES + 1
                ),
            ));
        }
        let r = self.lock();
        let entry = |id: &str, q: &Quota| QuotaEntry {
            client_id: id.to_string(),
            quota: q.clone(),
        };
        if ids.is_empty() {
            return Ok(std::iter::once(entry("", &r.default))
                .chain(r.entries.iter().map(|(k, q)| entry(k, q)))
                .collect());
        }
        // One lookup per distinct id asked for: bounded above, and sorted by id.
        let wanted: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        Ok(wanted
            .into_iter()
            .filter_map(|id| match id {
                "" => Some(entry("", &r.default)),
                id => r.entries.get(id).map(|q| entry(id, q)),
            })
            .collect())
    }

    /// Sets (or removes) the quota of `id` and applies it to live clients. Returns the
    /// entry now in effect for `id`.
    pub fn alter(&self, id: &str, remove: bool, quota: Quota) -> Result<QuotaEntry, BrokerError> {
        if id.len() > MAX_QUOTA_CLIENT_ID_BYTES {
            return Err(BrokerError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "a quota's client id is at most {MAX_QUOTA_CLIENT_ID_BYTES} bytes, not {}",
                    id.len()
                ),
            ));
        }
        let now = Instant::now();
        let mut r = self.lock();
        if !remove
            && !id.is_empty()
            && r.entries.len() >= MAX_QUOTA_ENTRIES
            && !r.entries.contains_key(id)
        {
            return Err(BrokerError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "the broker already holds {MAX_QUOTA_ENTRIES} quota entries; remove one first"
                ),
            ));
        }
        match (id.is_empty(), remove) {
            (true, _) => r.default = quota,
            (false, true) => {
                r.entries.remove(id);
            }
            (false, false) => {
                r.entries.insert(id.to_string(), quota);
            }
        }
        // The default applies to every id without its own entry.
        let affected: Vec<Arc<ClientState>> = r
            .clients
            .values()
            .filter(|c| c.id == id || (id.is_empty() && !r.entries.contains_key(&c.id)))
            .cloned()
            .collect();
        for c in affected {
            c.set_quota(r.quota_of(&c.id), now);
        }
        Ok(QuotaEntry {
            client_id: id.to_string(),
            quota: r.quota_of(id),
        })
    }

    /// Client ids with open connections, sorted, at most `limit`.
    pub fn live(&self, limit: usize) -> Vec<Arc<ClientState>> {
        let r = self.lock();
        let mut v: Vec<_> = r
            .clients
            .values()
            .filter(|c| c.connections() > 0)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.truncate(limit);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(rate: u64, conns: u32, queued: u64) -> Quota {
        Quota {
            produce_bytes_per_s: rate,
            produce_burst_bytes: rate,
            fetch_bytes_per_s: rate,
            fetch_burst_bytes: 0,
            max_connections: conns,
            max_queued_bytes: queued,
        }
    }

    #[test]
    fn connections_per_client_id_are_limited_and_released() {
        let reg = QuotaRegistry::new(q(0, 2, 0), vec![], 100);
        let a = reg.connect("a").unwrap();
        let _b = reg.connect("a").unwrap();
        let err = reg.connect("a").unwrap_err();
        assert!(err.message.contains("max_connections"), "{}", err.message);
        // Another id has its own count.
        let _c = reg.connect("b").unwrap();
        drop(a);
        assert!(reg.connect("a").is_ok());
    }

    #[test]
    fn produce_rate_and_queued_bytes() {
        let reg = QuotaRegistry::new(q(0, 0, 0), vec![], 100);
        reg.alter("slow", false, q(1000, 0, 1500)).unwrap();
        let c = reg.client("slow");
        let t0 = Instant::now();
        c.admit_produce(800, Class::P0, t0).unwrap();
        // Over max_queued_bytes (800 + 800 > 1500).
        let e = c.admit_produce(800, Class::P0, t0).unwrap_err();
        assert!(e.message.contains("max_queued_bytes"), "{}", e.message);
        c.produce_done(800);
        // Queue is empty; the bucket has 200 left: 800 needs 600 ms.
        let e = c.admit_produce(800, Class::P0, t0).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_millis(600));
        assert_eq!(c.throttled_total(), 2);
        // Unlimited for ids on the default quota.
        let free = reg.client("other");
        for _ in 0..100 {
            free.admit_produce(1 << 20, Class::P0, t0).unwrap();
        }
    }

    /// A client's P3 produces run into its limits an eighth early, so its P0
    /// produces still pass where P3 is throttled: by queued bytes and by rate.
    #[test]
    fn p3_is_throttled_before_p0_within_one_client() {
        let reg = QuotaRegistry::new(q(0, 0, 0), vec![], 100);
        // 8000 B/s (burst 8000), at most 8000 bytes queued.
        reg.alter("mixed", false, q(8000, 0, 8000)).unwrap();
        let c = reg.client("mixed");
        let t0 = Instant::now();
        c.admit_produce(6000, Class::P3, t0).unwrap();
        // Queued: P3 stops at 7000 bytes, P0 may go to 8000.
        let e = c.admit_produce(1500, Class::P3, t0).unwrap_err();
        assert!(e.message.contains("max_queued_bytes"), "{}", e.message);
        c.admit_produce(1500, Class::P0, t0).unwrap();
        c.produce_done(7500);
        // Rate: 500 tokens left; P3 must leave 1000 in the bucket, P0 need not.
        let e = c.admit_produce(400, Class::P3, t0).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_millis(113));
        c.admit_produce(400, Class::P0, t0).unwrap();
        assert_eq!(c.throttled_total(), 2);
    }

    #[test]
    fn runtime_changes_reach_live_clients_and_removal_falls_back_to_default() {
        let reg = QuotaRegistry::new(q(0, 0, 0), vec![], 100);
        let c = reg.client("x");
        let t0 = Instant::now();
        c.admit_produce(10_000, Class::P3, t0).unwrap();
        reg.alter("x", false, q(100, 0, 0)).unwrap();
        assert!(c.admit_produce(1000, Class::P3, t0).is_err());
        let e = reg.alter("x", true, Quota::default()).unwrap();
        assert_eq!(e.quota, Quota::default());
        assert!(c.admit_produce(1000, Class::P3, t0).is_ok());
        // Changing the default reaches ids without their own entry.
        reg.alter("", false, q(100, 0, 0)).unwrap();
        assert!(c.admit_produce(1000, Class::P3, t0).is_err());
        let d = reg.describe(&[]).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].quota.produce_bytes_per_s, 100);
    }

    /// Issue 22: quota entries are bounded in number and id length, and a
    /// DescribeQuotas naming ids millions of times is refused instead of scanned.
    #[test]
    fn quota_entries_and_describe_requests_are_bounded() {
        let reg = QuotaRegistry::new(q(0, 0, 0), vec![], 100);
        let long = "x".repeat(MAX_QUOTA_CLIENT_ID_BYTES + 1);
        let e = reg.alter(&long, false, q(1, 0, 0)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        for i in 0..MAX_QUOTA_ENTRIES {
            reg.alter(&format!("c{i}"), false, q(1, 0, 0)).unwrap();
        }
        let e = reg.alter("one-more", false, q(1, 0, 0)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        // Changing an existing entry, the default, and removing still work.
        reg.alter("c0", false, q(2, 0, 0)).unwrap();
        reg.alter("", false, q(3, 0, 0)).unwrap();
        reg.alter("c1", true, Quota::default()).unwrap();
        reg.alter("one-more", false, q(1, 0, 0)).unwrap();
        // Each distinct id once, sorted; the default by the empty id.
        let ids: Vec<String> = ["c5", "", "c5", "nobody", "c2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let names: Vec<String> = reg
            .describe(&ids)
            .unwrap()
            .into_iter()
            .map(|e| e.client_id)
            .collect();
        assert_eq!(names, ["", "c2", "c5"]);
        let flood = vec!["c5".to_string(); MAX_QUOTA_ENTRIES + 2];
        assert_eq!(
            reg.describe(&flood).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn fetch_waits_out_its_debt() {
        let reg = QuotaRegistry::new(q(1000, 0, 0), vec![], 100);
        let c = reg.client("f");
        let t0 = Instant::now();
        assert_eq!(c.fetch_wait(t0), Duration::ZERO);
        c.fetch_served(3000, t0);
        assert_eq!(c.fetch_wait(t0), Duration::from_millis(2000));
    }

    #[test]
    fn idle_ids_are_forgotten_beyond_the_tracking_bound() {
        let reg = QuotaRegistry::new(Quota::default(), vec![], 10);
        let keep = reg.connect("kept").unwrap();
        for i in 0..1000 {
            reg.client(&format!("id-{i}"));
        }
        assert!(reg.lock().clients.len() <= 11);
        assert!(reg.lock().clients.contains_key("kept"));
        drop(keep);
    }
}
