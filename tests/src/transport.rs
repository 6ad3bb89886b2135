//! The SDK suite runs twice: over loopback TCP to a `weir-broker` process, and
//! in-process to an [`EmbeddedBroker`] in the test process (no socket at all).
//!
//! A test written with [`crate::over_both_transports!`] takes a [`Transport`], starts
//! its broker with [`SdkBroker::start`] and gets clients from [`SdkBroker::client`];
//! the macro makes one `tcp` and one `in_process` test of it, so `cargo test` runs
//! every such test over both transports.

use std::time::Duration;

use weir_client::embedded::EmbeddedBroker;
use weir_client::{Client, ClientConfig};

use crate::BrokerProcess;

/// How the test's clients reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Loopback TCP to a broker process.
    Tcp,
    /// In-process channels to a broker embedded in the test.
    InProcess,
}

/// A broker the SDK tests talk to, over one transport.
pub enum SdkBroker {
    Process(BrokerProcess),
    Embedded {
        broker: Option<EmbeddedBroker>,
        _dir: tempfile::TempDir,
    },
}

impl SdkBroker {
    /// Starts a broker with default settings.
    pub async fn start(transport: Transport) -> SdkBroker {
        Self::start_with_env(transport, &[]).await
    }

    /// Starts a broker with `WEIR_*` settings, as a process's environment or, embedded,
    /// through the same config loader.
    pub async fn start_with_env(transport: Transport, env: &[(&str, &str)]) -> SdkBroker {
        match transport {
            Transport::Tcp => SdkBroker::Process(BrokerProcess::start_with_env(env)),
            Transport::InProcess => {
                let dir = tempfile::Builder::new()
                    .prefix("weir-it-embedded-")
                    .tempdir()
                    .expect("tempdir");
                let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
                let config = weir_broker::Config {
                    listen: "127.0.0.1:0".parse().expect("addr"),
                    http: "127.0.0.1:0".parse().expect("addr"),
                    data_dir: dir.path().join("data"),
                    ..weir_broker::Config::load(None, vars).expect("WEIR_* settings")
                };
                let broker =
                    tokio::time::timeout(Duration::from_secs(30), EmbeddedBroker::start(config))
                        .await
                        .expect("embedded broker started in time")
                        .expect("embedded broker");
                SdkBroker::Embedded {
                    broker: Some(broker),
                    _dir: dir,
                }
            }
        }
    }

    /// The broker's TCP address (an embedded broker listens too).
    pub fn addr(&self) -> String {
        match self {
            SdkBroker::Process(b) => b.addr(),
            SdkBroker::Embedded { broker, .. } => embedded(broker).addr().to_string(),
        }
    }

    /// A client over this broker's transport.
    pub async fn client(&self) -> Client {
        self.client_with(ClientConfig::default()).await
    }

    /// A client over this broker's transport, with settings.
    pub async fn client_with(&self, config: ClientConfig) -> Client {
        match self {
            SdkBroker::Process(b) => crate::connect_with(&b.addr(), config, WAIT).await,
            SdkBroker::Embedded { broker, .. } => {
                let c = embedded(broker)
                    .client_with(config)
                    .await
                    .expect("in-process client");
                assert!(c.is_in_process());
                c
            }
        }
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        match self {
            SdkBroker::Process(b) => b.data_dir(),
            SdkBroker::Embedded { _dir, .. } => _dir.path().join("data"),
        }
    }

    /// The embedded broker (`None` over TCP).
    pub fn embedded(&self) -> Option<&EmbeddedBroker> {
        match self {
            SdkBroker::Process(_) => None,
            SdkBroker::Embedded { broker, .. } => broker.as_ref(),
        }
    }

    /// Stops the broker (an embedded one flushes and closes its shards).
    pub async fn stop(mut self) {
        if let SdkBroker::Embedded { broker, .. } = &mut self {
            if let Some(b) = broker.take() {
                b.shutdown().await;
            }
        }
    }
}

fn embedded(b: &Option<EmbeddedBroker>) -> &EmbeddedBroker {
    b.as_ref().expect("embedded broker running")
}

/// Longest wait for a broker process to take connections.
const WAIT: Duration = Duration::from_secs(5);

/// Longest an SDK test may run: a hang fails the test, naming it, instead of stalling
/// the whole suite (a deadlock once held CI until its time ran out).
pub const TEST_LIMIT: Duration = Duration::from_secs(300);

/// Runs a test body within [`TEST_LIMIT`].
pub async fn bounded(test: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, test).await.is_err() {
        panic!("the test did not finish within {TEST_LIMIT:?} (hung?)");
    }
}

/// Makes two tests of one: `tcp` and `in_process`, in a module named after the test.
/// The body gets the transport as `$t`.
///
/// ```ignore
/// over_both_transports! {
///     async fn round_trip(t) {
///         let broker = SdkBroker::start(t).await;
///         let client = broker.client().await;
///         // ...
///     }
/// }
/// ```
#[macro_export]
macro_rules! over_both_transports {
    ($(#[$meta:meta])* async fn $name:ident($t:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                $crate::transport::bounded(run($crate::transport::Transport::Tcp)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                $crate::transport::bounded(run($crate::transport::Transport::InProcess)).await
            }

            async fn run($t: $crate::transport::Transport) $body
        }
    };
}
