//! The client's view of a Weir cluster and the routing built on it.
//!
//! A single-node broker answers DescribeCluster with `enabled = 0`; the client then
//! never builds a [`ClusterState`] and keeps its one connection, exactly as before
//! clusters existed. Against a cluster it keeps the last DescribeCluster answer as an
//! immutable [`ClusterView`] behind an `Arc` (read per request or per produced batch,
//! never per record), sends each request where PROTOCOL.md §Cluster says it belongs
//! ([`Route`]), and on a routing refusal (NOT_PRIMARY, SHARD_OFFLINE, NOT_COORDINATOR,
//! NO_CONTROLLER) or a lost connection refreshes the view. Refreshes are single-flight:
//! a caller names the view generation it failed under, and only the first caller of a
//! generation asks the cluster again; the others wait for that answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use weir_protocol::messages::{DescribeClusterResponse, NO_NODE};
use weir_protocol::{ErrorCode, Request};

use crate::error::ClientError;

/// Refreshes of the view happen at most this often: a burst of failures (every lane
/// of a producer, every fetch of a consumer) costs one DescribeCluster per interval.
pub(crate) const REFRESH_MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Attempts of one request across refreshes of the view, besides the deadline.
pub(crate) const MAX_ROUTE_ATTEMPTS: u32 = 8;

/// Where a request must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// Any live node (topic administration, metadata, producer ids, quotas).
    Any,
    /// The primary of one shard (Produce, Fetch, PriorityFetch, ListOffsets).
    Shard(&'a str, u32),
    /// The controller, which coordinates every consumer group and serves every queue.
    Controller,
}

/// Where PROTOCOL.md §Cluster sends `req`.
pub(crate) fn route_of(req: &Request) -> Route<'_> {
    match req {
        Request::Produce(r) => Route::Shard(&r.topic, r.shard),
        Request::Fetch(r) => Route::Shard(&r.topic, r.shard),
        Request::PriorityFetch(r) => Route::Shard(&r.topic, r.shard),
        Request::ListOffsets(r) => Route::Shard(&r.topic, r.shard),
        Request::JoinGroup(_)
        | Request::Heartbeat(_)
        | Request::LeaveGroup(_)
        | Request::CommitOffsets(_)
        | Request::FetchOffsets(_)
        | Request::DescribeShardHistory(_)
        | Request::QueueFetch(_)
        | Request::Ack(_)
        | Request::Nack(_)
        | Request::ExtendLease(_)
        | Request::QueueStatus(_)
        | Request::AddNode(_) => Route::Controller,
        _ => Route::Any,
    }
}

/// Whether `req` may be sent again after an attempt whose outcome is unknown (the
/// connection died or the answer timed out): reads and requests whose repetition
/// changes nothing. Others are retried only after a refusal that says they were not
/// carried out.
pub(crate) fn safe_to_repeat(req: &Request) -> bool {
    matches!(
        req,
        Request::Fetch(_)
            | Request::PriorityFetch(_)
            | Request::ListOffsets(_)
            | Request::Metadata(_)
            | Request::DescribeCluster(_)
            | Request::DescribeShardHistory(_)
            | Request::FetchOffsets(_)
            | Request::Heartbeat(_)
            | Request::CommitOffsets(_)
            | Request::QueueStatus(_)
            | Request::FlowStatus(_)
            | Request::LoadHistory(_)
            | Request::DescribeQuotas(_)
    )
}

/// Whether `e` says the request reached the wrong node, or none: the view is stale.
pub(crate) fn is_routing_error(e: &ClientError) -> bool {
    match e {
        ClientError::Broker { code, .. } => matches!(
            code,
            ErrorCode::NotPrimary
                | ErrorCode::ShardOffline
                | ErrorCode::NotCoordinator
                | ErrorCode::NoController
        ),
        ClientError::Io(_) | ClientError::Timeout(_) => true,
        _ => false,
    }
}

/// Whether `e` refused the request before anything was done (so any request may be
/// sent again).
pub(crate) fn refused_unexecuted(e: &ClientError) -> bool {
    matches!(e, ClientError::Broker { .. }) && is_routing_error(e)
}

/// One shard's primary as last learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRoute {
    pub shard: u32,
    /// NO_NODE (0) while the shard has no primary.
    pub primary: u32,
    pub epoch: u32,
}

/// The cluster as the client last learned it. Immutable: a refresh builds a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The node that answered.
    pub answered_by: u32,
    /// The controller (group coordinator), or NO_NODE.
    pub controller: u32,
    /// Node id → protocol address.
    pub nodes: HashMap<u32, String>,
    /// Topic → its shards' primaries, sorted by shard.
    pub shards: HashMap<String, Vec<ShardRoute>>,
}

impl ClusterView {
    /// The view a DescribeCluster answer gives. The controller's answer is taken as
    /// it is (it applies metadata changes first; a topic deleted and created again
    /// starts its epochs anew). Another node's answer keeps, for each shard, whichever
    /// of `previous` and the answer names the higher epoch: a node that has not yet
    /// applied a switchover cannot move routing back to a fenced primary.
    pub fn merge(previous: Option<&ClusterView>, r: &DescribeClusterResponse) -> ClusterView {
        let previous = previous.filter(|_| r.node_id == NO_NODE || r.node_id != r.controller);
        let mut shards: HashMap<String, Vec<ShardRoute>> = HashMap::new();
        for p in &r.shards {
            shards.entry(p.topic.clone()).or_default().push(ShardRoute {
                shard: p.shard,
                primary: p.primary,
                epoch: p.epoch,
            });
        }
        for (topic, list) in shards.iter_mut() {
            list.sort_by_key(|s| s.shard);
            let Some(prev) = previous.and_then(|v| v.shards.get(topic)) else {
                continue;
            };
            for s in list.iter_mut() {
                if let Some(old) = find(prev, s.shard) {
                    if old.epoch > s.epoch {
                        *s = *old;
                    }
                }
            }
        }
        ClusterView {
            answered_by: r.node_id,
            controller: r.controller,
            nodes: r
                .nodes
                .iter()
                .map(|n| (n.node_id, n.addr.clone()))
                .collect(),
            shards,
        }
    }

    /// The primary of `(topic, shard)`, if the view knows one.
    pub fn primary(&self, topic: &str, shard: u32) -> Option<u32> {
        let s = find(self.shards.get(topic)?, shard)?;
        (s.primary != NO_NODE).then_some(s.primary)
    }

    /// The address of the node a route names, if the view knows one.
    pub(crate) fn addr_for(&self, route: Route<'_>) -> Option<&str> {
        let node = match route {
            Route::Any => return None,
            Route::Shard(topic, shard) => self.primary(topic, shard)?,
            Route::Controller => (self.controller != NO_NODE).then_some(self.controller)?,
        };
        self.nodes.get(&node).map(String::as_str)
    }
}

fn find(list: &[ShardRoute], shard: u32) -> Option<&ShardRoute> {
    list.binary_search_by_key(&shard, |s| s.shard)
        .ok()
        .map(|i| &list[i])
}

/// The cluster side of a client: the current view, its generation, and the
/// single-flight refresh.
#[derive(Debug)]
pub(crate) struct ClusterState {
    view: RwLock<Arc<ClusterView>>,
    /// Bumped by every refresh; a caller that failed under generation g asks for a
    /// refresh of g, which is a no-op once a newer view exists.
    generation: AtomicU64,
    /// Held while one caller refreshes; the instant of the last refresh.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// DescribeCluster requests sent by refreshes (for tests and logs).
    pub(crate) refreshes: AtomicU64,
}

impl ClusterState {
    pub(crate) fn new(view: ClusterView) -> ClusterState {
        ClusterState {
            view: RwLock::new(Arc::new(view)),
            generation: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(Some(Instant::now())),
            refreshes: AtomicU64::new(0),
        }
    }

    /// The current view and its generation.
    pub(crate) fn view(&self) -> (Arc<ClusterView>, u64) {
        let v = self.view.read().expect("cluster view lock").clone();
        (v, self.generation.load(Ordering::Acquire))
    }

    /// Runs `describe` to replace the view, unless a view newer than generation
    /// `seen` already exists (another caller refreshed meanwhile). Waits out
    /// [`REFRESH_MIN_INTERVAL`] since the last refresh first. `describe` returns
    /// `None` when no node answered; the view is then kept.
    pub(crate) async fn refresh<F, Fut>(&self, seen: u64, describe: F)
    where
        F: FnOnce(Arc<ClusterView>) -> Fut,
        Fut: std::future::Future<Output = Option<DescribeClusterResponse>>,
    {
        let mut last = self.refresh.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return;
        }
        if let Some(t) = *last {
            let since = t.elapsed();
            if since < REFRESH_MIN_INTERVAL {
                tokio::time::sleep(REFRESH_MIN_INTERVAL - since).await;
            }
        }
        let (current, _) = self.view();
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let answer = describe(current.clone()).await;
        *last = Some(Instant::now());
        if let Some(r) = answer.filter(|r| r.enabled == 1) {
            let next = ClusterView::merge(Some(&current), &r);
            *self.view.write().expect("cluster view lock") = Arc::new(next);
        }
        // Bumped even when nobody answered, so callers waiting on this generation
        // retry (and ask again after the interval) instead of waiting forever.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::messages::{NodeInfo, ShardPlacement};

    fn answer(primary: u32, epoch: u32) -> DescribeClusterResponse {
        DescribeClusterResponse {
            enabled: 1,
            node_id: 1,
            controller: 2,
            nodes: vec![
                NodeInfo {
                    node_id: 1,
                    addr: "a:1".into(),
                    ..Default::default()
                },
                NodeInfo {
                    node_id: 2,
                    addr: "b:2".into(),
                    ..Default::default()
                },
            ],
            shards: vec![ShardPlacement {
                topic: "t".into(),
                shard: 3,
                primary,
                epoch,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn routes_follow_the_view() {
        let v = ClusterView::merge(None, &answer(2, 1));
        assert_eq!(v.addr_for(Route::Shard("t", 3)), Some("b:2"));
        assert_eq!(v.addr_for(Route::Shard("t", 4)), None);
        assert_eq!(v.addr_for(Route::Shard("u", 3)), None);
        assert_eq!(v.addr_for(Route::Controller), Some("b:2"));
        assert_eq!(v.addr_for(Route::Any), None);
        let offline = ClusterView::merge(None, &answer(NO_NODE, 2));
        assert_eq!(offline.primary("t", 3), None);
    }

    #[test]
    fn an_older_epoch_from_a_follower_never_moves_a_shard_back() {
        let newer = ClusterView::merge(None, &answer(2, 5));
        let stale = ClusterView::merge(Some(&newer), &answer(1, 4));
        assert_eq!(stale.primary("t", 3), Some(2));
        let moved = ClusterView::merge(Some(&newer), &answer(1, 6));
        assert_eq!(moved.primary("t", 3), Some(1));
        // The controller (node 2 in `answer`) is believed as it is.
        let mut from_controller = answer(1, 1);
        from_controller.node_id = 2;
        let recreated = ClusterView::merge(Some(&newer), &from_controller);
        assert_eq!(recreated.primary("t", 3), Some(1));
    }

    #[test]
    fn routing_of_requests() {
        use weir_protocol::messages::*;
        let p: Request = ProduceRequest {
            topic: "t".into(),
            shard: 1,
            ..Default::default()
        }
        .into();
        assert_eq!(route_of(&p), Route::Shard("t", 1));
        assert!(!safe_to_repeat(&p));
        let h: Request = HeartbeatRequest::default().into();
        assert_eq!(route_of(&h), Route::Controller);
        let c: Request = CreateTopicRequest::default().into();
        assert_eq!(route_of(&c), Route::Any);
    }

    #[tokio::test]
    async fn refresh_is_single_flight() {
        let state = Arc::new(ClusterState::new(ClusterView::merge(None, &answer(1, 1))));
        let (_, seen) = state.view();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let s = state.clone();
            tasks.push(tokio::spawn(async move {
                s.refresh(seen, |_| async { Some(answer(2, 2)) }).await;
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(state.refreshes.load(Ordering::Relaxed), 1);
        assert_eq!(state.view().0.primary("t", 3), Some(2));
    }
}
