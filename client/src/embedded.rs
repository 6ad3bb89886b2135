//! A broker running inside the calling process (feature `embedded`).

use weir_broker::{Broker, Config};

use crate::{Client, Result};

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

    /// The broker's protocol address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.broker.addr()
    }

    /// A client connected to it.
    pub async fn client(&self) -> Result<Client> {
        Client::connect(self.addr().to_string()).await
    }

    /// Flushes and stops the broker.
    pub async fn shutdown(self) {
        self.broker.shutdown().await;
    }
}
