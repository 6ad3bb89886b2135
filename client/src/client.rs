//! [`Client`]: a handle to one broker, or to a cluster of them, that reconnects by
//! itself.
//!
//! Against a single-node broker a client holds one connection. Against a cluster
//! (DescribeCluster answers `enabled = 1` after the handshake) it also keeps the
//! cluster's view (`cluster.rs`) and one lazily opened connection per node, and sends
//! each request to the node PROTOCOL.md §Cluster names for it, refreshing the view and
//! trying again when a node says it is the wrong one or cannot be reached.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Mutex;
use weir_protocol::classes::ClassMap;
use weir_protocol::messages::*;
use weir_protocol::{ApiKey, ErrorCode, Request, ResponseBody};

use crate::auth::Credentials;
use crate::cluster::{self, ClusterState, ClusterView, Route};
use crate::connection::{into_body, Connection};
use crate::error::{ClientError, Result};
use crate::flow::{BreakerConfig, BreakerState, SharedBreaker};
use crate::tls::{Connector, TlsConfig};

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Who this client is, sent in the handshake: the broker applies the quota of this
    /// id (clients sharing an id share a quota). Empty = the broker's default quota.
    pub client_id: String,
    pub connect_timeout: Duration,
    /// Longest wait for any response (long-poll fetches add their own wait to it).
    pub request_timeout: Duration,
    /// A circuit breaker around every call (see [`crate::flow`]); off when `None`.
    pub breaker: Option<BreakerConfig>,
    /// TLS to the broker (see [`crate::tls`]); plain TCP when `None`.
    pub tls: Option<TlsConfig>,
    /// Who the client is to a broker that requires authentication (see
    /// [`crate::auth`]); every new connection authenticates with them right after
    /// the handshake. `None` = don't authenticate.
    pub credentials: Option<Credentials>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_id: String::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            breaker: None,
            tls: None,
            credentials: None,
        }
    }
}

/// DescribeCluster attempts at connect time when the broker refuses it retriably.
const DISCOVER_ATTEMPTS: u32 = 4;

/// A connection to a broker (or to every node of a cluster), shared by producers,
/// consumers and admin calls. Cheap to clone. When a connection fails, the next call
/// opens a new one.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Opens an in-process session with an embedded broker whose answers go to the given
/// delivery function (see [`crate::embedded`]).
#[derive(Clone)]
pub(crate) struct Dialer(
    pub(crate)  Arc<
        dyn Fn(crate::connection::Deliver) -> Box<dyn crate::connection::InProcessSession>
            + Send
            + Sync,
    >,
);

/// A lazily opened connection, replaced when it fails.
///
/// A live connection is handed out under a short std lock and never makes its caller
/// wait on an async lock. Only opening one goes through `opening`, so one caller dials
/// while the others wait for it. Why no async lock on the common path: a tokio mutex
/// is fair, so a future queued on it is handed the lock when its turn comes even if
/// nobody polls it. A producer lane keeps its requests in a `FuturesOrdered` it
/// polls only between its own steps. One of them, handed the lock while the lane awaited
/// something else, held it until the lane came back, and the lane waited for a lane
/// that waited for this lock: `the_sdk_follows_its_own_epoch_bump_on_every_lane` in
/// `tests/tests/contract.rs` hung about once in 200 runs.
#[derive(Debug, Default)]
struct Slot {
    live: std::sync::Mutex<Option<Arc<Connection>>>,
    opening: Mutex<()>,
}

impl Slot {
    /// The connection if it is open and has not failed.
    fn live(&self) -> Option<Arc<Connection>> {
        self.live
            .lock()
            .expect("connection slot lock")
            .as_ref()
            .filter(|c| !c.is_dead())
            .cloned()
    }

    /// The live connection, or one `open` makes (one caller at a time).
    async fn get_or_open<F>(&self, open: impl FnOnce() -> F) -> Result<Arc<Connection>>
    where
        F: std::future::Future<Output = Result<Arc<Connection>>>,
    {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _opening = self.opening.lock().await;
        // Another caller may have opened it while this one waited.
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let conn = open().await?;
        *self.live.lock().expect("connection slot lock") = Some(conn.clone());
        Ok(conn)
    }
}

#[derive(Debug)]
struct Inner {
    /// The address string as given (possibly a comma-separated list).
    addr: String,
    /// The bootstrap addresses, tried in turn.
    bootstrap: Vec<String>,
    config: ClientConfig,
    /// The connection for requests any node may answer (the only one against a
    /// single-node broker), and the address it is open to.
    conn: Slot,
    conn_addr: std::sync::Mutex<String>,
    /// One connection per node address, for routed requests (cluster only).
    nodes: std::sync::Mutex<HashMap<String, Arc<Slot>>>,
    /// Set after the first handshake when the broker is part of a cluster.
    cluster: OnceLock<ClusterState>,
    /// The broker's priority classes, from the last handshake.
    classes: std::sync::Mutex<ClassMap>,
    breaker: Option<SharedBreaker>,
    /// Built once from `config.tls`, so bad files fail `connect_with` itself.
    tls: Option<Connector>,
    /// With an embedded broker: connections to the first bootstrap address (the
    /// embedded broker's own) open in-process sessions instead of sockets.
    dialer: Option<Dialer>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("in-process")
    }
}

pub(crate) use crate::error::expect_body;

impl Client {
    /// Connects to `addr` ("127.0.0.1:7700", or a comma-separated list of a cluster's
    /// nodes, "a:7700,b:7700", tried in turn) and performs the version handshake.
    /// Against a cluster the client then learns every node and shard primary (see the
    /// module docs).
    pub async fn connect(addr: impl Into<String>) -> Result<Client> {
        Self::connect_with(addr, ClientConfig::default()).await
    }

    /// Like [`Client::connect`], with settings.
    pub async fn connect_with(addr: impl Into<String>, config: ClientConfig) -> Result<Client> {
        Self::connect_dialed(addr, config, None).await
    }

    /// Like [`Client::connect_with`]; with `dialer`, the first address is reached
    /// in-process.
    pub(crate) async fn connect_dialed(
        addr: impl Into<String>,
        config: ClientConfig,
        dialer: Option<Dialer>,
    ) -> Result<Client> {
        let tls = config.tls.as_ref().map(Connector::new).transpose()?;
        let addr = addr.into();
        let bootstrap: Vec<String> = addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if bootstrap.is_empty() {
            return Err(ClientError::Invalid("no broker address given".into()));
        }
        let client = Client {
            inner: Arc::new(Inner {
                tls,
                conn_addr: std::sync::Mutex::new(bootstrap[0].clone()),
                addr,
                bootstrap,
                breaker: config.breaker.map(SharedBreaker::new),
                config,
                conn: Slot::default(),
                nodes: std::sync::Mutex::new(HashMap::new()),
                cluster: OnceLock::new(),
                classes: std::sync::Mutex::new(ClassMap::default()),
                dialer,
            }),
        };
        let conn = client.connection().await?;
        client.discover(&conn).await;
        Ok(client)
    }

    /// Connects to the first of `addrs` that answers; see [`Client::connect`].
    pub async fn connect_cluster(addrs: &[&str]) -> Result<Client> {
        Self::connect_with(addrs.join(","), ClientConfig::default()).await
    }

    /// Asks the broker whether it is part of a cluster; keeps the view if so. A broker
    /// that does not know DescribeCluster, or answers `enabled = 0`, is a single node.
    /// A retriable refusal (a node still starting its consensus engine) is asked again
    /// a few times rather than taken for a single node.
    async fn discover(&self, conn: &Connection) {
        let mut r = Err(ClientError::Closed);
        for attempt in 0..DISCOVER_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(cluster::REFRESH_MIN_INTERVAL * (1 << attempt)).await;
            }
            let req = DescribeClusterRequest { topics: Vec::new() };
            r = conn
                .call(req.into(), 0, self.inner.config.request_timeout)
                .await
                .and_then(into_body);
            match &r {
                Err(e @ ClientError::Broker { .. }) if e.is_retriable() => continue,
                _ => break,
            }
        }
        match r {
            Ok(ResponseBody::DescribeCluster(d)) if d.enabled == 1 => {
                tracing::debug!(nodes = d.nodes.len(), "connected to a cluster");
                let _ = self
                    .inner
                    .cluster
                    .set(ClusterState::new(ClusterView::merge(None, &d)));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "no cluster description; single node"),
        }
    }

    /// Whether this client reaches its broker in-process (see
    /// [`crate::embedded::EmbeddedBroker::client`]).
    pub fn is_in_process(&self) -> bool {
        self.inner.dialer.is_some()
    }

    /// The broker address as given to [`Client::connect`].
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The bootstrap addresses (the address list split on commas).
    pub fn bootstrap_addrs(&self) -> &[String] {
        &self.inner.bootstrap
    }

    /// The cluster as this client last learned it; `None` against a single-node
    /// broker.
    pub fn cluster_view(&self) -> Option<Arc<ClusterView>> {
        self.inner.cluster.get().map(|c| c.view().0)
    }

    /// How many times this client has asked the cluster for a fresh view since it
    /// connected (0 against a single-node broker).
    pub fn cluster_refreshes(&self) -> u64 {
        self.inner.cluster.get().map_or(0, |c| {
            c.refreshes.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The broker's priority → class map, as sent in the last handshake. Producers
    /// batch per (shard, class) with it, so each class keeps its own order.
    pub fn class_map(&self) -> ClassMap {
        *self.inner.classes.lock().expect("class map lock")
    }

    /// The connection for requests any node may answer, opening (and handshaking) a
    /// new one if needed: to the address it was last open to, then to each bootstrap
    /// address and each node the cluster view names, in turn (one pass).
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>> {
        self.inner.conn.get_or_open(|| self.open_any()).await
    }

    /// Opens a connection for [`Client::connection`].
    async fn open_any(&self) -> Result<Arc<Connection>> {
        let last = self.inner.conn_addr.lock().expect("conn addr lock").clone();
        let mut candidates = vec![last];
        candidates.extend(self.inner.bootstrap.iter().cloned());
        if let Some(c) = self.inner.cluster.get() {
            let mut known: Vec<_> = c
                .view()
                .0
                .nodes
                .iter()
                .map(|(id, a)| (*id, a.clone()))
                .collect();
            known.sort();
            candidates.extend(known.into_iter().map(|(_, a)| a));
        }
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|a| seen.insert(a.clone()));
        let mut last_err = None;
        for addr in candidates {
            match self.open(&addr).await {
                Ok(conn) => {
                    *self.inner.conn_addr.lock().expect("conn addr lock") = addr;
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "broker unreachable");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| ClientError::Io("no broker address".into())))
    }

    /// The connection to the node at `addr`, opened if needed.
    pub(crate) async fn node_connection(&self, addr: &str) -> Result<Arc<Connection>> {
        let slot = {
            let mut nodes = self.inner.nodes.lock().expect("node connections lock");
            match nodes.get(addr) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Slot::default());
                    nodes.insert(addr.to_string(), s.clone());
                    s
                }
            }
        };
        slot.get_or_open(|| self.open(addr)).await
    }

    /// Opens a connection to `addr` and performs the version handshake.
    async fn open(&self, addr: &str) -> Result<Arc<Connection>> {
        let mut conn = match &self.inner.dialer {
            Some(dial) if addr == self.inner.bootstrap[0] => {
                Connection::in_process(|deliver| (dial.0)(deliver))
            }
            _ => {
                Connection::connect(
                    addr,
                    self.inner.config.connect_timeout,
                    self.inner.tls.as_ref(),
                )
                .await?
            }
        };
        let req = ApiVersionsRequest {
            client_software: format!("weir-client {}", env!("CARGO_PKG_VERSION")),
            client_id: self.inner.config.client_id.clone(),
        };
        let resp = conn
            .call(req.into(), 0, self.inner.config.request_timeout)
            .await
            .and_then(into_body)?;
        let versions = expect_body!(resp, ApiVersions)?;
        for api in ApiKey::ALL {
            let ok = versions.apis.iter().any(|r| {
                r.api_key == *api as u16
                    && r.min_version <= api.max_version()
                    && api.max_version() <= r.max_version
            });
            if !ok {
                tracing::warn!(
                    api = api.name(),
                    "broker does not speak this api at our version"
                );
            }
        }
        conn.max_frame_bytes = versions.max_frame_bytes;
        if let Some(creds) = &self.inner.config.credentials {
            let principal =
                crate::auth::authenticate(&conn, creds, self.inner.config.request_timeout).await?;
            tracing::debug!(%principal, "authenticated");
        }
        let bounds: Option<[u8; 3]> = versions.class_bounds.as_slice().try_into().ok();
        match bounds.map(ClassMap::new) {
            Some(Ok(map)) => *self.inner.classes.lock().expect("class map lock") = map,
            _ => tracing::warn!(
                bounds = ?versions.class_bounds,
                "broker sent no usable class bounds; assuming the defaults"
            ),
        }
        Ok(Arc::new(conn))
    }

    /// The connection `route` names and the view generation it was chosen under.
    /// Against a single-node broker, always the one connection. A shard or controller
    /// the view does not know (a topic created since) costs one refresh; if it is
    /// still unknown, any node gets the request (and names the right one if it is not).
    pub(crate) async fn route_connection(
        &self,
        route: Route<'_>,
    ) -> Result<(Arc<Connection>, u64)> {
        let Some(cluster) = self.inner.cluster.get() else {
            return Ok((self.connection().await?, 0));
        };
        let (mut view, mut generation) = cluster.view();
        if route != Route::Any && view.addr_for(route).is_none() {
            self.refresh_view(generation).await;
            (view, generation) = cluster.view();
        }
        match view.addr_for(route) {
            Some(addr) => match self.node_connection(addr).await {
                Ok(conn) => Ok((conn, generation)),
                Err(e) => {
                    // The node the view names is down: the view is stale (or the
                    // cluster is electing its successor); the caller's retry uses the
                    // fresh one.
                    self.refresh_view(generation).await;
                    Err(e)
                }
            },
            None => Ok((self.connection().await?, generation)),
        }
    }

    /// Before a retry of a request whose route failed: a fresh cluster view, unless
    /// another caller is refreshing or just refreshed it (single-flight, at most one
    /// DescribeCluster per `REFRESH_MIN_INTERVAL`). No-op against a single node.
    pub(crate) async fn refresh_route(&self) {
        if let Some(cluster) = self.inner.cluster.get() {
            let (_, generation) = cluster.view();
            self.refresh_view(generation).await;
        }
    }

    /// After a failure under view `generation`: refreshes the view when `e` says it
    /// is stale (single-flight, see `cluster.rs`). No-op against a single node.
    pub(crate) async fn route_failed(&self, generation: u64, e: &ClientError) {
        if self.inner.cluster.get().is_some() && cluster::is_routing_error(e) {
            self.refresh_view(generation).await;
        }
    }

    /// Replaces the cluster view with a fresh DescribeCluster answer, unless a view
    /// newer than `generation` exists.
    async fn refresh_view(&self, generation: u64) {
        let Some(cluster) = self.inner.cluster.get() else {
            return;
        };
        cluster
            .refresh(generation, |view| self.describe_any(view))
            .await;
    }

    /// DescribeCluster from the first node that answers: the controller, then the
    /// other known nodes, then the bootstrap addresses (one pass, each bounded by the
    /// connect timeout).
    async fn describe_any(&self, view: Arc<ClusterView>) -> Option<DescribeClusterResponse> {
        let mut candidates: Vec<String> = Vec::new();
        if let Some(a) = view.nodes.get(&view.controller) {
            candidates.push(a.clone());
        }
        let mut known: Vec<_> = view.nodes.iter().collect();
        known.sort();
        candidates.extend(known.into_iter().map(|(_, a)| a.clone()));
        candidates.extend(self.inner.bootstrap.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|a| seen.insert(a.clone()));
        let timeout = self.inner.config.connect_timeout;
        for addr in candidates {
            let attempt = async {
                let conn = self.node_connection(&addr).await?;
                let req = DescribeClusterRequest { topics: Vec::new() };
                let body = into_body(conn.call(req.into(), 0, timeout).await?)?;
                expect_body!(body, DescribeCluster)
            };
            // The connect, handshake and answer together, so a node that accepts but
            // never answers costs one connect timeout, not a request timeout.
            let attempt = async {
                tokio::time::timeout(timeout, attempt)
                    .await
                    .unwrap_or(Err(ClientError::Timeout(timeout.as_millis() as u64)))
            };
            match attempt.await {
                Ok(d) if d.enabled == 1 => return Some(d),
                Ok(_) => tracing::debug!(%addr, "node answered as a single node"),
                Err(e) => tracing::debug!(%addr, error = %e, "node could not describe the cluster"),
            }
        }
        tracing::warn!("no node could describe the cluster; keeping the last view");
        None
    }

    /// Sends `request` to the node at `addr` (not routed, not retried).
    pub(crate) async fn call_node(&self, addr: &str, request: Request) -> Result<ResponseBody> {
        let conn = self.node_connection(addr).await?;
        into_body(
            conn.call(request, 0, self.inner.config.request_timeout)
                .await?,
        )
    }

    /// Sends any request and returns its successful body or the broker's error.
    pub async fn call(&self, request: impl Into<Request>) -> Result<ResponseBody> {
        self.call_with_timeout(request.into(), self.inner.config.request_timeout)
            .await
    }

    pub(crate) async fn call_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<ResponseBody> {
        self.call_at(request, 0, timeout).await
    }

    /// Sends a request whose header carries `priority` (0 = unspecified, 1..=10): the
    /// broker writes responses of more urgent requests first.
    pub(crate) async fn call_at(
        &self,
        request: Request,
        priority: u8,
        timeout: Duration,
    ) -> Result<ResponseBody> {
        self.breaker_admit()?;
        let outcome = match self.inner.cluster.get() {
            None => {
                async {
                    let conn = self.connection().await?;
                    into_body(conn.call(request, priority, timeout).await?)
                }
                .await
            }
            Some(_) => self.call_routed(request, priority, timeout).await,
        };
        self.breaker_record(&outcome);
        outcome
    }

    /// A call in a cluster: to the node the request's route names; after a routing
    /// refusal (which says nothing was done), a connection that could not be opened,
    /// or — for requests safe to repeat — a lost answer, refreshes the view and tries
    /// again, at most [`cluster::MAX_ROUTE_ATTEMPTS`] times and within `timeout`.
    async fn call_routed(
        &self,
        request: Request,
        priority: u8,
        timeout: Duration,
    ) -> Result<ResponseBody> {
        let deadline = tokio::time::Instant::now() + timeout;
        let repeatable = cluster::safe_to_repeat(&request);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let route = cluster::route_of(&request);
            // No generation when no connection was had: `route_connection` has then
            // refreshed the view already.
            let (outcome, generation, sent) = match self.route_connection(route).await {
                Err(e) => (Err(e), None, false),
                Ok((conn, generation)) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let r = match conn.call(request.clone(), priority, left).await {
                        Ok(frame) => into_body(frame),
                        Err(e) => Err(e),
                    };
                    (r, Some(generation), true)
                }
            };
            let e = match outcome {
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            let again = cluster::is_routing_error(&e)
                && (!sent || repeatable || cluster::refused_unexecuted(&e));
            if let Some(generation) = generation {
                self.route_failed(generation, &e).await;
            }
            let now = tokio::time::Instant::now();
            if !again || attempt >= cluster::MAX_ROUTE_ATTEMPTS || now >= deadline {
                return Err(e);
            }
            // An election (NO_CONTROLLER) or a switchover takes a moment; back off a
            // little more each time, never past the deadline.
            let pause = (cluster::REFRESH_MIN_INTERVAL * (1 << attempt.min(4)))
                .min(deadline.saturating_duration_since(now));
            tokio::time::sleep(pause).await;
        }
    }

    /// The circuit breaker's state, when the client has one.
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.inner.breaker.as_ref().map(SharedBreaker::state)
    }

    /// Fails with `ClientError::CircuitOpen` when the breaker refuses a call now.
    pub(crate) fn breaker_admit(&self) -> Result<()> {
        self.inner
            .breaker
            .as_ref()
            .map_or(Ok(()), SharedBreaker::admit)
    }

    /// Tells the breaker how an admitted call ended.
    pub(crate) fn breaker_record<T>(&self, outcome: &Result<T>) {
        if let Some(b) = &self.inner.breaker {
            b.record(outcome);
        }
    }

    /// Topics and their shards; all topics when `topics` is empty. Fails with the
    /// broker's error for the first named topic it could not describe (UNKNOWN_TOPIC);
    /// [`Client::metadata_partial`] returns the others too.
    pub async fn metadata(&self, topics: &[&str]) -> Result<MetadataResponse> {
        let m = self.metadata_partial(topics).await?;
        if let Some(e) = m.errors.first() {
            return Err(match ErrorCode::from_u16(e.error_code) {
                Some(code) => ClientError::Broker {
                    code,
                    message: format!("topic {:?} not described", e.name),
                    retry_after_ms: 0,
                },
                None => ClientError::Protocol(format!("unknown error code {}", e.error_code)),
            });
        }
        Ok(m)
    }

    /// Topics and their shards, and an error entry (`errors`) for each named topic the
    /// broker could not describe (PROTOCOL.md, Metadata): one unknown name does not fail
    /// the call.
    pub async fn metadata_partial(&self, topics: &[&str]) -> Result<MetadataResponse> {
        let req = MetadataRequest {
            topics: topics.iter().map(|s| s.to_string()).collect(),
        };
        expect_body!(self.call(req).await?, Metadata)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::FutureExt;
    use weir_protocol::frame::RequestFrame;

    use super::*;

    /// An in-process session that takes nothing (these tests send no request). It
    /// keeps the delivery function: the connection is dead once that is dropped.
    struct Nowhere(#[allow(dead_code)] std::sync::Mutex<Option<crate::connection::Deliver>>);

    impl crate::connection::InProcessSession for Nowhere {
        fn submit(&self, _: RequestFrame) -> Pin<Box<dyn Future<Output = bool> + Send>> {
            Box::pin(async { false })
        }
    }

    fn live() -> Arc<Connection> {
        Arc::new(Connection::in_process(|deliver| {
            Box::new(Nowhere(std::sync::Mutex::new(Some(deliver))))
        }))
    }

    /// A connection whose session has already ended.
    fn dead() -> Arc<Connection> {
        let c = Connection::in_process(|deliver| {
            drop(deliver);
            Box::new(Nowhere(std::sync::Mutex::new(None)))
        });
        assert!(c.is_dead());
        Arc::new(c)
    }

    /// The common path waits on no async lock, so a request future queued on it can
    /// never be handed a lock it is not polled to release (the lane deadlock described
    /// at `Slot`). Fails if a live connection is read under `opening`.
    #[tokio::test]
    async fn a_live_connection_is_handed_out_while_another_caller_opens_one() {
        let slot = Slot::default();
        let conn = live();
        *slot.live.lock().unwrap() = Some(conn.clone());
        let _dialing = slot.opening.lock().await;
        let got = slot
            .get_or_open(|| async { Err(ClientError::Io("must not open".into())) })
            .now_or_never()
            .expect("answered without waiting")
            .expect("the live connection");
        assert!(Arc::ptr_eq(&got, &conn));
    }

    /// A failed connection is replaced, by one caller: the others wait for it and get
    /// the same connection.
    #[tokio::test]
    async fn a_dead_connection_is_replaced_once_for_all_callers() {
        let slot = Slot::default();
        *slot.live.lock().unwrap() = Some(dead());
        let opened = AtomicUsize::new(0);
        let open = || async {
            opened.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok(live())
        };
        let (a, b, c) = tokio::join!(
            slot.get_or_open(open),
            slot.get_or_open(open),
            slot.get_or_open(open)
        );
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        assert!(!a.is_dead());
        assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&b, &c));
    }
}
