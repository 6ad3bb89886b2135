//! A broker running inside the calling process (feature `embedded`), reached without
//! sockets.
//!
//! [`EmbeddedBroker::client`] returns an ordinary [`Client`] whose connection is an
//! in-process session (`weir_broker::server::inproc`): the calling task starts each
//! request in the broker's session as a typed value (a produce's record batches are
//! the `Bytes` the producer built, not copied), the broker hands each answer straight
//! to the request's waiter, and a
//! fetch's records are `Bytes` that point straight into the log's memory-mapped
//! segments (each keeps its map alive, so a slice stays valid after retention deleted
//! its file). The broker treats such a session exactly like a TCP connection: the
//! same handshake, authentication, quotas, shedding, priority classes and ack levels.
//! The broker still listens on its TCP port, so other processes can connect to it at
//! the same time ([`EmbeddedBroker::addr`], [`EmbeddedBroker::tcp_client`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use weir_broker::server::inproc::InProcess;
use weir_broker::{Broker, Config};
use weir_protocol::frame::RequestFrame;

use crate::client::Dialer;
use crate::connection::InProcessSession;
use crate::{Client, ClientConfig, Result};

impl InProcessSession for InProcess {
    fn submit(&self, frame: RequestFrame) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        Box::pin(InProcess::submit(self, frame))
    }
}

/// The session of a broker that has shut down: it starts nothing.
struct Closed;

impl InProcessSession for Closed {
    fn submit(&self, _: RequestFrame) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        Box::pin(std::future::ready(false))
    }
}

/// A broker in this process, on loopback, with its own data directory.
pub struct EmbeddedBroker {
    broker: Broker,
}

impl EmbeddedBroker {
    /// Starts a broker with `config` (use port 0 for free ports).
    pub async fn start(config: Config) -> anyhow::Result<EmbeddedBroker> {
        Ok(EmbeddedBroker {
            broker: Broker::start(config).await?,
        })
    }

    /// The broker's protocol address, for clients in other processes.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.broker.addr()
    }

    /// The broker itself (its state, metrics and HTTP address).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// A client that reaches the broker in-process (no socket; see the module docs).
    pub async fn client(&self) -> Result<Client> {
        self.client_with(ClientConfig::default()).await
    }

    /// Like [`EmbeddedBroker::client`], with settings (client id, credentials, breaker;
    /// `tls` does not apply in-process).
    pub async fn client_with(&self, config: ClientConfig) -> Result<Client> {
        let state = Arc::downgrade(self.broker.state());
        let dialer = Dialer(Arc::new(move |deliver| match state.upgrade() {
            Some(state) => Box::new(weir_broker::server::inproc::connect(&state, deliver)),
            // The broker has shut down: a session that is closed at once (dropping
            // `deliver` marks the connection dead).
            None => Box::new(Closed),
        }));
        Client::connect_dialed(self.addr().to_string(), config, Some(dialer)).await
    }

    /// A client that connects over loopback TCP, as another process would.
    pub async fn tcp_client(&self) -> Result<Client> {
        Client::connect(self.addr().to_string()).await
    }

    /// Flushes and stops the broker.
    pub async fn shutdown(self) {
        self.broker.shutdown().await;
    }
}
