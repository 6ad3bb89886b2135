//! Group membership and shard assignment (eager rebalancing, broker-side assignor).
//!
//! A group is `Stable` with a generation and an assignment, or `Rebalancing`. Any
//! membership change (join, leave, session expiry) starts a rebalance: every member
//! must call JoinGroup again (heartbeats answer REBALANCE_IN_PROGRESS until it does),
//! and a member re-joins only after it stopped consuming and committed. When every
//! member has re-joined, or the rebalance deadline passes (stragglers are removed),
//! the generation is bumped and shards are dealt out round-robin. So no shard is owned
//! by two members of the same generation, and a member of an old generation cannot
//! commit (ILLEGAL_GENERATION).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir_protocol::messages::{JoinGroupRequest, JoinGroupResponse, TopicShards};
use weir_protocol::ErrorCode;

use crate::error::BrokerError;
use crate::names::valid_name;
use crate::topics::TopicRegistry;

/// Most members one group may have.
pub const MAX_MEMBERS: usize = 1000;

/// Most groups with live members one broker coordinates.
pub const MAX_GROUPS: usize = 10_000;

#[derive(Debug)]
struct Member {
    topics: Vec<String>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    /// Re-joined during the current rebalance.
    rejoined: bool,
}

/// Most distinct topics one member may subscribe to.
pub const MAX_SUBSCRIBED_TOPICS: usize = 1000;

/// Where a join stands after its member entered the group.
enum Joined {
    /// Nothing changed: the current assignment.
    Unchanged(JoinGroupResponse),
    /// A rebalance runs; the member waits for it.
    Rebalancing {
        member_id: String,
        completed: watch::Receiver<u32>,
        deadline: Instant,
    },
}

#[derive(Debug)]
struct Group {
    generation: u32,
    rebalancing_until: Option<Instant>,
    members: BTreeMap<String, Member>,
    assignment: HashMap<String, Vec<TopicShards>>,
    /// Publishes the generation each time a rebalance completes.
    completed: watch::Sender<u32>,
}

impl Group {
    fn new() -> Self {
        Group {
            generation: 0,
            rebalancing_until: None,
            members: BTreeMap::new(),
            assignment: HashMap::new(),
            completed: watch::channel(0).0,
        }
    }

    fn start_rebalance(&mut self, now: Instant) {
        if self.rebalancing_until.is_none() {
            let timeout = self
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or(Duration::from_secs(10));
            self.rebalancing_until = Some(now + timeout);
            for m in self.members.values_mut() {
                m.rejoined = false;
            }
        }
    }

    fn try_complete(&mut self, topics: &TopicRegistry, now: Instant) {
        let Some(until) = self.rebalancing_until else {
            return;
        };
        let all_in = self.members.values().all(|m| m.rejoined);
        if !all_in && now < until {
            return;
        }
        self.members.retain(|id, m| {
            if !m.rejoined {
                tracing::info!(member = %id, "member did not re-join in time; removed");
            }
            m.rejoined
        });
        self.generation = self.generation.wrapping_add(1);
        self.rebalancing_until = None;
        self.assignment = assign(&self.members, topics);
        for m in self.members.values_mut() {
            m.last_seen = now;
        }
        self.completed.send_replace(self.generation);
    }
}

/// Deals each subscribed topic's shards round-robin over its members, in member-id order.
fn assign(
    members: &BTreeMap<String, Member>,
    topics: &TopicRegistry,
) -> HashMap<String, Vec<TopicShards>> {
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, m) in members {
        for t in &m.topics {
            wanted.entry(t.as_str()).or_default().push(id.as_str());
        }
    }
    let mut out: HashMap<String, Vec<TopicShards>> =
        members.keys().map(|id| (id.clone(), Vec::new())).collect();
    for (topic, ids) in wanted {
        let Ok(t) = topics.get(topic) else { continue };
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); ids.len()];
        for s in 0..t.shards.len() as u32 {
            per[s as usize % ids.len()].push(s);
        }
        for (id, shards) in ids.into_iter().zip(per) {
            if !shards.is_empty() {
                out.get_mut(id).expect("member").push(TopicShards {
                    topic: topic.to_string(),
                    shards,
                });
            }
        }
    }
    out
}

/// The broker's group coordinator.
#[derive(Debug)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    topics: Arc<TopicRegistry>,
    min_session: Duration,
    max_session: Duration,
    next_member: std::sync::atomic::AtomicU64,
}

impl Coordinator {
    /// A coordinator with no groups.
    pub fn new(topics: Arc<TopicRegistry>, min_session_ms: u32, max_session_ms: u32) -> Self {
        Coordinator {
            groups: Mutex::new(HashMap::new()),
            topics,
            min_session: Duration::from_millis(u64::from(min_session_ms)),
            max_session: Duration::from_millis(u64::from(max_session_ms)),
            next_member: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// A topic's shards changed (a reshard): every group with a member subscribed to
    /// it rebalances, so the new shards are dealt out and sealed ones stay assigned
    /// until read.
    pub fn topic_resharded(&self, topic: &str) {
        let now = Instant::now();
        let mut groups = self.groups.lock().expect("groups lock");
        for g in groups.values_mut() {
            if g.members
                .values()
                .any(|m| m.topics.iter().any(|t| t == topic))
            {
                g.start_rebalance(now);
            }
        }
    }

    /// Whether a group with live members of this name exists (queue mode refuses such
    /// names with NOT_QUEUE_GROUP).
    pub fn has_group(&self, name: &str) -> bool {
        self.groups
            .lock()
            .expect("groups lock")
            .get(name)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// Joins (or re-joins) and waits for the group's next stable generation.
    pub async fn join(&self, req: JoinGroupRequest) -> Result<JoinGroupResponse, BrokerError> {
        let (session, rebalance, topics) = self.check_join(&req)?;
        match self.enter(&req, topics, session, rebalance, Instant::now())? {
            Joined::Unchanged(resp) => Ok(resp),
            Joined::Rebalancing {
                member_id,
                completed,
                deadline,
            } => {
                self.await_assignment(&req.group, member_id, completed, deadline)
                    .await
            }
        }
    }

    /// The join's session and rebalance timeouts and its subscription (each topic
    /// once, sorted), after checking the request.
    fn check_join(
        &self,
        req: &JoinGroupRequest,
    ) -> Result<(Duration, Duration, Vec<String>), BrokerError> {
        if !valid_name(&req.group) {
            return Err(BrokerError::new(
                ErrorCode::InvalidGroupName,
                "bad group name",
            ));
        }
        let session = Duration::from_millis(u64::from(req.session_timeout_ms));
        if session < self.min_session || session > self.max_session {
            return Err(BrokerError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "session_timeout_ms {} outside {}..={}",
                    req.session_timeout_ms,
                    self.min_session.as_millis(),
                    self.max_session.as_millis()
                ),
            ));
        }
        let rebalance = Duration::from_millis(u64::from(req.rebalance_timeout_ms.max(100)))
            .min(Duration::from_secs(300));
        // A member's subscription lives as long as its session and is walked at every
        // rebalance: keep each name once, and bound how many.
        let topics: std::collections::BTreeSet<&str> =
            req.topics.iter().map(String::as_str).collect();
        if topics.len() > MAX_SUBSCRIBED_TOPICS {
            return Err(BrokerError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "{} topics subscribed; a member may subscribe to at most {MAX_SUBSCRIBED_TOPICS}",
                    topics.len()
                ),
            ));
        }
        let topics = topics.into_iter().map(str::to_string).collect();
        Ok((session, rebalance, topics))
    }

    /// Adds or refreshes the member under the groups lock, starting a rebalance when
    /// the membership or a subscription changed.
    fn enter(
        &self,
        req: &JoinGroupRequest,
        topics: Vec<String>,
        session: Duration,
        rebalance: Duration,
        now: Instant,
    ) -> Result<Joined, BrokerError> {
        let mut groups = self.groups.lock().expect("groups lock");
        if groups.len() >= MAX_GROUPS && !groups.contains_key(&req.group) {
            return Err(BrokerError::new(
                ErrorCode::InvalidConfig,
                format!("broker already coordinates MAX_GROUPS = {MAX_GROUPS} groups"),
            ));
        }
        let group = groups.entry(req.group.clone()).or_insert_with(Group::new);
        let member_id = if req.member_id.is_empty() {
            if group.members.len() >= MAX_MEMBERS {
                return Err(BrokerError::new(ErrorCode::InvalidConfig, "group is full"));
            }
            let n = self
                .next_member
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let prefix = match req.client_id.as_str() {
                "" => "member",
                id => id,
            };
            let id = format!("{prefix}-{n}");
            group.members.insert(
                id.clone(),
                Member {
                    topics,
                    session_timeout: session,
                    rebalance_timeout: rebalance,
                    last_seen: now,
                    rejoined: false,
                },
            );
            group.start_rebalance(now);
            id
        } else {
            let stable = group.rebalancing_until.is_none();
            let generation = group.generation;
            let Some(m) = group.members.get_mut(&req.member_id) else {
                return Err(BrokerError::new(
                    ErrorCode::UnknownMemberId,
                    "unknown member; join again",
                ));
            };
            m.last_seen = now;
            if stable && m.topics == topics {
                // Nothing changed: hand back the current assignment.
                return Ok(Joined::Unchanged(JoinGroupResponse {
                    member_id: req.member_id.clone(),
                    generation,
                    assignment: group
                        .assignment
                        .get(&req.member_id)
                        .cloned()
                        .unwrap_or_default(),
                }));
            }
            m.topics = topics;
            m.session_timeout = session;
            m.rebalance_timeout = rebalance;
            group.start_rebalance(now);
            req.member_id.clone()
        };
        group.members.get_mut(&member_id).expect("member").rejoined = true;
        let completed = group.completed.subscribe();
        group.try_complete(&self.topics, now);
        Ok(Joined::Rebalancing {
            member_id,
            completed,
            deadline: group.rebalancing_until.unwrap_or(now),
        })
    }

    /// Waits for the rebalance to complete (or be completed by the reaper at its
    /// deadline) and answers with the member's assignment.
    async fn await_assignment(
        &self,
        group: &str,
        member_id: String,
        mut completed: watch::Receiver<u32>,
        deadline: Instant,
    ) -> Result<JoinGroupResponse, BrokerError> {
        let wait_until = deadline + Duration::from_secs(1);
        loop {
            {
                let groups = self.groups.lock().expect("groups lock");
                if let Some(g) = groups.get(group) {
                    if g.rebalancing_until.is_none() {
                        return match g.assignment.get(&member_id) {
                            Some(a) if g.members.contains_key(&member_id) => {
                                Ok(JoinGroupResponse {
                                    member_id: member_id.clone(),
                                    generation: g.generation,
                                    assignment: a.clone(),
                                })
                            }
                            _ => Err(BrokerError::new(
                                ErrorCode::UnknownMemberId,
                                "removed during rebalance",
                            )),
                        };
                    }
                }
            }
            let left = wait_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BrokerError::new(
                    ErrorCode::RebalanceInProgress,
                    "rebalance did not finish; join again",
                ));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), completed.changed())
                .await;
        }
    }

    /// Keeps a member alive; tells it when to re-join.
    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
    ) -> Result<(), BrokerError> {
        let mut groups = self.groups.lock().expect("groups lock");
        let g = groups
            .get_mut(group)
            .ok_or_else(|| BrokerError::new(ErrorCode::UnknownMemberId, "unknown group"))?;
        let rebalancing = g.rebalancing_until.is_some();
        let current = g.generation;
        let m = g.members.get_mut(member_id).ok_or_else(|| {
            BrokerError::new(ErrorCode::UnknownMemberId, "unknown member; join again")
        })?;
        m.last_seen = Instant::now();
        if rebalancing {
            return Err(BrokerError::new(
                ErrorCode::RebalanceInProgress,
                "re-join the group",
            ));
        }
        if generation != current {
            return Err(BrokerError::new(
                ErrorCode::IllegalGeneration,
                format!("generation is {current}"),
            ));
        }
        Ok(())
    }

    /// Removes a member at once.
    pub fn leave(&self, group: &str, member_id: &str) -> Result<(), BrokerError> {
        let mut groups = self.groups.lock().expect("groups lock");
        let g = groups
            .get_mut(group)
            .ok_or_else(|| BrokerError::new(ErrorCode::UnknownMemberId, "unknown group"))?;
        if g.members.remove(member_id).is_none() {
            return Err(BrokerError::new(
                ErrorCode::UnknownMemberId,
                "unknown member",
            ));
        }
        let now = Instant::now();
        g.start_rebalance(now);
        g.try_complete(&self.topics, now);
        Ok(())
    }

    /// Checks that a commit comes from a current member (or from a consumer outside
    /// group management: empty member id, generation 0).
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
    ) -> Result<(), BrokerError> {
        if !valid_name(group) {
            return Err(BrokerError::new(
                ErrorCode::InvalidGroupName,
                "bad group name",
            ));
        }
        if member_id.is_empty() && generation == 0 {
            return Ok(());
        }
        let groups = self.groups.lock().expect("groups lock");
        let g = groups
            .get(group)
            .ok_or_else(|| BrokerError::new(ErrorCode::UnknownMemberId, "unknown group"))?;
        if !g.members.contains_key(member_id) {
            return Err(BrokerError::new(
                ErrorCode::UnknownMemberId,
                "unknown member",
            ));
        }
        if g.generation != generation {
            return Err(BrokerError::new(
                ErrorCode::IllegalGeneration,
                format!("generation is {}", g.generation),
            ));
        }
        Ok(())
    }

    /// Expires silent members and finishes overdue rebalances. Called periodically.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.groups.lock().expect("groups lock");
        for (name, g) in groups.iter_mut() {
            let rebalancing = g.rebalancing_until.is_some();
            let before = g.members.len();
            g.members.retain(|id, m| {
                // Members waiting inside JoinGroup are alive.
                let alive = (rebalancing && m.rejoined)
                    || now.duration_since(m.last_seen) <= m.session_timeout;
                if !alive {
                    tracing::info!(group = %name, member = %id, "session expired");
                }
                alive
            });
            if g.members.len() != before {
                g.start_rebalance(now);
            }
            g.try_complete(&self.topics, now);
        }
        groups.retain(|_, g| !g.members.is_empty() || g.rebalancing_until.is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use weir_protocol::messages::TopicConfig;

    async fn setup(dir: &std::path::Path) -> Arc<TopicRegistry> {
        let config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        let topics = Arc::new(TopicRegistry::open(Arc::new(config)).unwrap());
        let tc = TopicConfig {
            segment_bytes: 1 << 20,
            max_message_bytes: 1 << 19,
            ..TopicConfig::default()
        };
        topics.create("t", 5, tc).await.unwrap();
        topics
    }

    fn join_req(member_id: &str) -> JoinGroupRequest {
        JoinGroupRequest {
            group: "g".into(),
            member_id: member_id.into(),
            client_id: "c".into(),
            topics: vec!["t".into()],
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 2000,
        }
    }

    fn shards(r: &JoinGroupResponse) -> Vec<u32> {
        r.assignment.iter().flat_map(|a| a.shards.clone()).collect()
    }

    #[tokio::test]
    async fn members_get_disjoint_complete_assignments_and_old_generations_are_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let topics = setup(dir.path()).await;
        let c = Arc::new(Coordinator::new(topics.clone(), 100, 60_000));
        let a = c.join(join_req("")).await.unwrap();
        assert_eq!(shards(&a), vec![0, 1, 2, 3, 4]);
        c.heartbeat("g", &a.member_id, a.generation).unwrap();

        // A second member triggers a rebalance; the first learns it by heartbeat.
        let c2 = c.clone();
        let b_join = tokio::spawn(async move { c2.join(join_req("")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = c.heartbeat("g", &a.member_id, a.generation).unwrap_err();
        assert_eq!(err.code, ErrorCode::RebalanceInProgress);
        // Until the first re-joins, the old generation may still commit.
        c.check_commit("g", &a.member_id, a.generation).unwrap();
        let a2 = c.join(join_req(&a.member_id)).await.unwrap();
        let b = b_join.await.unwrap().unwrap();
        assert_eq!(a2.generation, b.generation);
        assert!(a2.generation > a.generation);
        let mut all = shards(&a2);
        all.extend(shards(&b));
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4], "disjoint and complete");
        assert!(!shards(&a2).is_empty() && !shards(&b).is_empty());
        // The old generation is fenced now.
        let err = c.check_commit("g", &a.member_id, a.generation).unwrap_err();
        assert_eq!(err.code, ErrorCode::IllegalGeneration);

        // Leaving hands everything to the other member after it re-joins.
        c.leave("g", &b.member_id).unwrap();
        assert_eq!(
            c.heartbeat("g", &a2.member_id, a2.generation)
                .unwrap_err()
                .code,
            ErrorCode::RebalanceInProgress
        );
        let a3 = c.join(join_req(&a.member_id)).await.unwrap();
        assert_eq!(shards(&a3), vec![0, 1, 2, 3, 4]);
        topics.close().await;
    }

    /// Issue 22: a subscription naming one topic a million times is kept once, and a
    /// re-join with the same set in another order changes nothing; too many distinct
    /// topics are refused by name.
    #[tokio::test]
    async fn subscriptions_are_deduplicated_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let topics = setup(dir.path()).await;
        let c = Arc::new(Coordinator::new(topics.clone(), 100, 60_000));
        let mut req = join_req("");
        req.topics = vec!["t".to_string(); 1_000_000];
        req.topics.push("absent".into());
        let a = c.join(req.clone()).await.unwrap();
        {
            let groups = c.groups.lock().unwrap();
            let m = &groups["g"].members[&a.member_id];
            assert_eq!(m.topics, vec!["absent".to_string(), "t".to_string()]);
        }
        assert_eq!(shards(&a), vec![0, 1, 2, 3, 4]);
        let mut again = join_req(&a.member_id);
        again.topics = vec!["t".into(), "absent".into(), "t".into()];
        let same = c.join(again).await.unwrap();
        assert_eq!(
            same.generation, a.generation,
            "same subscription: no rebalance"
        );
        let mut many = join_req("");
        many.topics = (0..=MAX_SUBSCRIBED_TOPICS)
            .map(|i| format!("t{i}"))
            .collect();
        let e = c.join(many).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        topics.close().await;
    }

    #[tokio::test]
    async fn silent_members_expire_and_stragglers_are_removed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let topics = setup(dir.path()).await;
        let c = Arc::new(Coordinator::new(topics.clone(), 100, 60_000));
        let mut req = join_req("");
        req.session_timeout_ms = 200;
        req.rebalance_timeout_ms = 300;
        let a = c.join(req.clone()).await.unwrap();
        // b joins; a never re-joins, so at the deadline a is removed and b gets all.
        let started = Instant::now();
        let c2 = c.clone();
        let ticker = tokio::spawn(async move {
            for _ in 0..50 {
                c2.tick();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let b = c.join(req).await.unwrap();
        assert_eq!(shards(&b), vec![0, 1, 2, 3, 4]);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            c.heartbeat("g", &a.member_id, a.generation)
                .unwrap_err()
                .code,
            ErrorCode::UnknownMemberId
        );
        ticker.abort();
        topics.close().await;
    }
}
