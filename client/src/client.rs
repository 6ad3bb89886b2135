//! [`Client`]: a handle to one broker that reconnects by itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use weir_protocol::classes::ClassMap;
use weir_protocol::messages::*;
use weir_protocol::{ApiKey, ErrorCode, Request, ResponseBody};

use crate::auth::Credentials;
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

/// A connection to a broker, shared by producers, consumers and admin calls. Cheap to
/// clone. When the connection fails, the next call opens a new one.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: String,
    config: ClientConfig,
    conn: Mutex<Option<Arc<Connection>>>,
    /// The broker's priority classes, from the last handshake.
    classes: std::sync::Mutex<ClassMap>,
    breaker: Option<SharedBreaker>,
    /// Built once from `config.tls`, so bad files fail `connect_with` itself.
    tls: Option<Connector>,
}

macro_rules! expect_body {
    ($body:expr, $variant:ident) => {
        match $body {
            ::weir_protocol::ResponseBody::$variant(b) => Ok(b),
            other => Err($crate::error::ClientError::Protocol(format!(
                "expected {} response, got {:?}",
                stringify!($variant),
                other.api_key()
            ))),
        }
    };
}
pub(crate) use expect_body;

impl Client {
    /// Connects to `addr` ("127.0.0.1:7700") and performs the version handshake.
    pub async fn connect(addr: impl Into<String>) -> Result<Client> {
        Self::connect_with(addr, ClientConfig::default()).await
    }

    /// Like [`Client::connect`], with settings.
    pub async fn connect_with(addr: impl Into<String>, config: ClientConfig) -> Result<Client> {
        let tls = config.tls.as_ref().map(Connector::new).transpose()?;
        let client = Client {
            inner: Arc::new(Inner {
                tls,
                addr: addr.into(),
                breaker: config.breaker.map(SharedBreaker::new),
                config,
                conn: Mutex::new(None),
                classes: std::sync::Mutex::new(ClassMap::default()),
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The broker address.
    pub fn addr(&self) -> &str {
        &self.inner.addr
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

    /// The live connection, opening (and handshaking) a new one if needed.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_dead() {
                return Ok(c.clone());
            }
        }
        let mut conn = Connection::connect(
            &self.inner.addr,
            self.inner.config.connect_timeout,
            self.inner.tls.as_ref(),
        )
        .await?;
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
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
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
        let outcome = async {
            let conn = self.connection().await?;
            into_body(conn.call(request, priority, timeout).await?)
        }
        .await;
        self.breaker_record(&outcome);
        outcome
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
