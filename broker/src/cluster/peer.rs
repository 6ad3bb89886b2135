//! A node's client for talking to another node: one multiplexed connection per peer,
//! opened on first use and again after it breaks, carrying ConsensusRpc, ClusterWrite
//! and MirrorFetch requests. The broker cannot use the SDK (the SDK can embed the
//! broker), and needs far less of it: send a request, await the response with the
//! same correlation id, within a time limit.
//!
//! Links speak TLS when this node's protocol port does ([`set_link_tls`], built from
//! `tls_cert`, `tls_key` and `cluster_tls_ca`): the peer's certificate must chain to
//! the cluster CA and name the host of its `peers` address, so the cluster secret a
//! link authenticates with never crosses the network in clear.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, FramedWrite};
use weir_protocol::codec::ClientCodec;
use weir_protocol::frame::{RequestFrame, ResponsePayload};
use weir_protocol::{ErrorCode, Request, ResponseBody};

/// Connections to the other nodes by id: the ones `--peers` names from the start, and
/// the ones the metadata names later (nodes added to a running cluster, or the rest
/// of the cluster as a node that joined learns it). An address from `--peers` is this
/// node's own view of that node and is never replaced.
#[derive(Debug)]
pub struct PeerSet {
    own: u64,
    peers: RwLock<BTreeMap<u64, Arc<Peer>>>,
}

impl PeerSet {
    /// The nodes `configured` names (this node `own` left out).
    pub fn new(own: u64, configured: &BTreeMap<u64, String>) -> PeerSet {
        let peers = configured
            .iter()
            .filter(|(&id, _)| id != own)
            .map(|(&id, addr)| (id, Arc::new(Peer::new(addr.clone()))))
            .collect();
        PeerSet {
            own,
            peers: RwLock::new(peers),
        }
    }

    /// The connection to node `id`, if its address is known.
    pub fn get(&self, id: &u64) -> Option<Arc<Peer>> {
        self.peers.read().expect("peers lock").get(id).cloned()
    }

    /// Adds every node of `nodes` (id, address) not known yet.
    pub fn learn<'a>(&self, nodes: impl IntoIterator<Item = (u64, &'a str)>) {
        let unknown: Vec<(u64, &str)> = {
            let known = self.peers.read().expect("peers lock");
            nodes
                .into_iter()
                .filter(|(id, addr)| *id != self.own && !addr.is_empty() && !known.contains_key(id))
                .collect()
        };
        if unknown.is_empty() {
            return;
        }
        let mut known = self.peers.write().expect("peers lock");
        for (id, addr) in unknown {
            known
                .entry(id)
                .or_insert_with(|| Arc::new(Peer::new(addr.to_string())));
        }
    }
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// `refused` when the node's host answered that nothing listens on the port
    /// (ECONNREFUSED): proof that the node's process is not running, unlike a
    /// timeout, which a slow or cut-off node also gives.
    #[error("cannot reach node at {addr}: {reason}")]
    Unreachable {
        addr: String,
        reason: String,
        refused: bool,
    },
    #[error("connection to {0} closed")]
    Closed(String),
    #[error("no answer from {0} in time")]
    TimedOut(String),
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<ResponsePayload>>>>;

/// The `cluster_partition_file` of this process, if set (fault injection).
static PARTITION_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The cluster secret this node's links prove themselves with (`WEIR_CLUSTER_SECRET`).
static LINK_SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The TLS client side of this process's links, when its protocol port speaks TLS.
static LINK_TLS: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();

/// How often a link that keeps failing its TLS handshake is logged (warn).
const TLS_WARN_EVERY: Duration = Duration::from_secs(5);

/// Makes every link this process opens to another node speak TLS with `config`
/// (once per process; later calls are ignored).
pub fn set_link_tls(config: Arc<rustls::ClientConfig>) {
    let _ = LINK_TLS.set(tokio_rustls::TlsConnector::from(config));
}

/// Makes every link this process opens to another node authenticate first, with the
/// WEIR-NODE mechanism and `secret` (once per process; later calls are ignored). Peers
/// with `auth = required` refuse links that do not.
pub fn set_link_secret(secret: &str) {
    if !secret.is_empty() {
        let _ = LINK_SECRET.set(secret.to_string());
    }
}

/// Sets the fault-injection file (once per process; later calls are ignored).
pub fn set_partition_file(path: &str) {
    if !path.is_empty() {
        let _ = PARTITION_FILE.set(std::path::PathBuf::from(path));
    }
}

/// Whether this node is cut off from the others right now (fault injection).
pub fn partitioned() -> bool {
    PARTITION_FILE.get().is_some_and(|p| p.exists())
}

type LinkRead = Box<dyn AsyncRead + Send + Unpin>;
type LinkWrite = Box<dyn AsyncWrite + Send + Unpin>;

struct Conn {
    write: tokio::sync::Mutex<FramedWrite<LinkWrite, ClientCodec>>,
    pending: Pending,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A lazily connected, self-healing connection to one node.
pub struct Peer {
    addr: String,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU32,
    /// When a failed TLS handshake with this peer was last logged.
    tls_warned: Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("addr", &self.addr).finish()
    }
}

impl Peer {
    pub fn new(addr: impl Into<String>) -> Peer {
        Peer {
            addr: addr.into(),
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU32::new(1),
            tls_warned: Mutex::new(None),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `request` and waits at most `timeout` (connecting included) for its
    /// answer. A refusal comes back as [`PeerError::Refused`]. A broken connection is
    /// dropped, so the next call connects afresh.
    pub async fn call(
        &self,
        request: impl Into<Request>,
        timeout: Duration,
    ) -> Result<ResponseBody, PeerError> {
        let request = request.into();
        if partitioned() {
            return Err(PeerError::Unreachable {
                addr: self.addr.clone(),
                reason: "this node is cut off (cluster_partition_file exists)".into(),
                refused: false,
            });
        }
        match tokio::time::timeout(timeout, self.call_inner(request)).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::TimedOut(self.addr.clone())),
        }
    }

    async fn call_inner(&self, request: Request) -> Result<ResponseBody, PeerError> {
        let conn = self.connection().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().expect("pending lock").insert(id, tx);
        let sent = conn
            .write
            .lock()
            .await
            .send(RequestFrame::new(id, request))
            .await;
        if sent.is_err() {
            conn.pending.lock().expect("pending lock").remove(&id);
            self.forget(&conn).await;
            return Err(PeerError::Closed(self.addr.clone()));
        }
        match rx.await {
            Ok(ResponsePayload::Ok(body)) => Ok(body),
            Ok(ResponsePayload::Err(code, body)) => Err(PeerError::Refused {
                code,
                message: body.message,
            }),
            Err(_) => {
                self.forget(&conn).await;
                Err(PeerError::Closed(self.addr.clone()))
            }
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, PeerError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.reader.is_finished() {
                return Ok(c.clone());
            }
        }
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| PeerError::Unreachable {
                addr: self.addr.clone(),
                reason: e.to_string(),
                refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
            })?;
        let _ = stream.set_nodelay(true);
        let (r, w): (LinkRead, LinkWrite) = match LINK_TLS.get() {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(tls) => {
                let tls = self.handshake(tls, stream).await?;
                let (r, w) = tokio::io::split(tls);
                (Box::new(r), Box::new(w))
            }
        };
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_loop(
            FramedRead::new(r, ClientCodec::default()),
            pending.clone(),
        ));
        let conn = Arc::new(Conn {
            write: tokio::sync::Mutex::new(FramedWrite::new(w, ClientCodec::default())),
            pending,
            reader,
        });
        if let Some(secret) = LINK_SECRET.get() {
            self.authenticate(&conn, secret).await?;
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// The client side of a TLS handshake with the peer, checking its certificate
    /// against the cluster CA and the host of its address. A failure is logged (at
    /// most every [`TLS_WARN_EVERY`] per peer: links are retried often) with what to
    /// check, since it otherwise shows only as a node that never joins.
    async fn handshake(
        &self,
        tls: &tokio_rustls::TlsConnector,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, PeerError> {
        let failed = |reason: String| {
            let mut last = self.tls_warned.lock().expect("tls_warned lock");
            if last.is_none_or(|t| t.elapsed() >= TLS_WARN_EVERY) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(
                    peer = %self.addr,
                    "TLS handshake with node at {} failed: {reason} (does cluster_tls_ca hold the CA that signed its certificate, and does the certificate name the host of its peers address?)",
                    self.addr
                );
            }
            PeerError::Unreachable {
                addr: self.addr.clone(),
                reason: format!("TLS handshake: {reason}"),
                refused: false,
            }
        };
        let name = rustls::pki_types::ServerName::try_from(host_of(&self.addr).to_string())
            .map_err(|e| failed(format!("{:?} is no server name: {e}", host_of(&self.addr))))?;
        tls.connect(name, stream)
            .await
            .map_err(|e| failed(e.to_string()))
    }

    /// Proves this node to the peer on a new link (WEIR-NODE), before any other
    /// request; the link is not kept if the peer refuses.
    async fn authenticate(&self, conn: &Arc<Conn>, secret: &str) -> Result<(), PeerError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().expect("pending lock").insert(id, tx);
        let request = weir_protocol::messages::AuthenticateRequest {
            mechanism: crate::security::auth::NODE_MECHANISM.into(),
            payload: bytes::Bytes::copy_from_slice(secret.as_bytes()),
        };
        let sent = conn
            .write
            .lock()
            .await
            .send(RequestFrame::new(id, request))
            .await;
        if sent.is_err() {
            return Err(PeerError::Closed(self.addr.clone()));
        }
        match rx.await {
            Ok(ResponsePayload::Ok(_)) => Ok(()),
            Ok(ResponsePayload::Err(code, body)) => Err(PeerError::Refused {
                code,
                message: format!("authenticating this node's link: {}", body.message),
            }),
            Err(_) => Err(PeerError::Closed(self.addr.clone())),
        }
    }

    async fn forget(&self, conn: &Arc<Conn>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }
}

/// Hands each response to its caller; on any error, drops every waiting caller's
/// sender (they see the connection closed).
async fn read_loop(mut frames: FramedRead<LinkRead, ClientCodec>, pending: Pending) {
    while let Some(Ok(frame)) = frames.next().await {
        let waiter = pending
            .lock()
            .expect("pending lock")
            .remove(&frame.correlation_id);
        if let Some(w) = waiter {
            let _ = w.send(frame.payload);
        }
    }
    pending.lock().expect("pending lock").clear();
}

/// The host part of "host:port" or "[v6]:port": the name a peer's certificate must
/// carry.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn a_peer_certificate_must_name_the_host_of_its_address() {
        assert_eq!(host_of("127.0.0.1:7700"), "127.0.0.1");
        assert_eq!(host_of("node-2.example:7700"), "node-2.example");
        assert_eq!(host_of("[::1]:7700"), "::1");
    }
}
