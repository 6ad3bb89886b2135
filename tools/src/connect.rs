//! How the tools reach a secured broker: the TLS and credential flags shared by
//! `weir` and `weir-bench`, turned into the SDK's [`ClientConfig`].

use std::path::PathBuf;

use weir_client::{ClientConfig, Credentials, TlsConfig};

/// TLS and credential flags of `weir` and `weir-bench`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnectArgs {
    /// Connect with TLS, trusting the CA certificates in this PEM file.
    #[arg(long, global = true, env = "WEIR_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; its common name is who you are.
    #[arg(long, global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name the broker's certificate must carry [default: the host of the address].
    #[arg(long, global = true)]
    pub tls_server_name: Option<String>,
    /// Authenticate as this user (SCRAM-SHA-256), with --password. Given before the
    /// command: `weir --user U --password P topic list`.
    #[arg(
        long,
        env = "WEIR_USER",
        requires = "password",
        conflicts_with = "api_key"
    )]
    pub user: Option<String>,
    /// The user's password.
    #[arg(long, env = "WEIR_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Authenticate with an API key (`weir key create` printed it).
    #[arg(long, env = "WEIR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ConnectArgs {
    /// The SDK settings these flags ask for.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(TlsConfig {
                ca: ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                server_name: self.tls_server_name.clone(),
            }),
            None if self.tls_cert.is_some() => {
                anyhow::bail!("--tls-cert needs --tls-ca (the CA of the broker's certificate)")
            }
            None => None,
        };
        let credentials = match (&self.user, &self.password, &self.api_key) {
            (Some(user), Some(password), _) => Some(Credentials::Password {
                user: user.clone(),
                password: password.clone(),
            }),
            (None, _, Some(key)) => Some(Credentials::ApiKey(key.clone())),
            _ => None,
        };
        Ok(ClientConfig {
            tls,
            credentials,
            ..ClientConfig::default()
        })
    }
}
