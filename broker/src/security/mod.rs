//! Security: who is on the other end of a connection and what they may do.
//!
//! Off by default (an embedded broker or the README's first commands need none of
//! it); each piece is switched on by its own settings. [`tls`] encrypts the protocol
//! port and, with a client CA, proves a service's identity by its certificate
//! ([`x509`] reads the name out of it). With `auth = "required"`, [`auth`] runs the
//! Authenticate api (SCRAM-SHA-256, API keys), [`acl`] says what each request needs,
//! [`store`] keeps users, keys and grants, [`admin`] serves their administration,
//! and [`audit`] writes the hash-chained audit log.
//!
//! The connection calls in at three places only: [`Security::authenticate`] for an
//! Authenticate request, [`Security::authorize`] before any other request starts,
//! and [`Security::audit_change`] when an administrative request was answered.

pub mod acl;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod store;
pub mod tls;
pub mod x509;

use std::sync::Arc;

use weir_protocol::frame::{RequestHeader, ResponseFrame};
use weir_protocol::messages::{AuthenticateRequest, AuthenticateResponse, Operation, ResourceType};
use weir_protocol::{ErrorCode, Request};

use crate::config::{AuthSetting, Config};

/// Who a connection's peer has proved to be, and the connection's authentication
/// state. Empty until the transport (a verified client certificate) or an
/// Authenticate exchange names a principal.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The authenticated principal (a user, an API key's principal, a certificate's
    /// common name).
    pub principal: Option<Arc<str>>,
    /// Where the connection comes from, for the audit log.
    pub peer: Option<std::net::SocketAddr>,
    /// A SCRAM exchange between its two steps.
    scram: Option<auth::Pending>,
    /// The principal's grants as of a store generation.
    rules: Option<(u64, Arc<[store::Rule]>)>,
    /// Refusals this connection has written to the audit log.
    denials_logged: u32,
    /// Another cluster node, authenticated by the cluster secret: may do everything.
    node: bool,
}

impl Identity {
    /// A connection from `peer`, authenticated as `principal` by its certificate if
    /// it presented one.
    pub fn new(peer: std::net::SocketAddr, principal: Option<String>) -> Identity {
        Identity {
            principal: principal.map(Into::into),
            peer: Some(peer),
            ..Identity::default()
        }
    }

    fn who(&self) -> &str {
        self.principal.as_deref().unwrap_or("")
    }
}

/// Everything a connection needs to know about security, built once at start.
#[derive(Debug)]
pub struct Security {
    /// TLS on the protocol port, when `tls_cert` is set.
    pub tls: Option<tls::TlsServer>,
    /// TLS on the HTTP port, when `http_tls` is on: the same certificate files and
    /// reloading, no client certificates.
    pub http_tls: Option<tls::TlsServer>,
    /// Whether every connection must authenticate and every request is checked.
    pub required: bool,
    /// Users, API keys, grants.
    pub store: store::Store,
    /// The audit log, when authentication is required.
    pub audit: Option<audit::AuditLog>,
    /// SHA-256 of the cluster secret (`WEIR_CLUSTER_SECRET`) that other nodes'
    /// links prove with the WEIR-NODE mechanism; `None` = no node may log in so.
    node_secret_digest: Option<[u8; 32]>,
}

/// Why the security settings could not be put in force; the broker does not start.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("cannot create the bootstrap admin: {0}")]
    Bootstrap(String),
}

/// The environment variable holding the secret cluster nodes authenticate their links
/// to each other with (never a config key, so it stays out of files and `Debug`).
pub const CLUSTER_SECRET_ENV: &str = "WEIR_CLUSTER_SECRET";

fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().try_into().expect("32 bytes")
}

/// The bootstrap administrator's user name.
pub const ADMIN_USER: &str = "admin";

impl Security {
    /// Loads what the config switches on. With `auth = "required"` and no user yet,
    /// `admin_password` (the `WEIR_ADMIN_PASSWORD` variable) creates the user
    /// `admin` with the cluster's `admin` grant (every operation on everything).
    pub fn open(config: &Config, admin_password: Option<&str>) -> Result<Security, SecurityError> {
        let required = config.auth == AuthSetting::Required;
        let store = store::Store::open(&config.data_dir)?;
        let audit = required
            .then(|| audit::AuditLog::open(&config.data_dir))
            .transpose()?;
        let security = Security {
            tls: tls::TlsServer::from_config(config)?,
            http_tls: tls::TlsServer::for_http(config)?,
            required,
            store,
            audit,
            node_secret_digest: std::env::var(CLUSTER_SECRET_ENV)
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| digest(s.as_bytes())),
        };
        if required {
            security.bootstrap(admin_password)?;
        }
        Ok(security)
    }

    fn bootstrap(&self, password: Option<&str>) -> Result<(), SecurityError> {
        if !self.store.snapshot().stored.users.is_empty() {
            return Ok(());
        }
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            if self.tls.as_ref().is_some_and(|t| t.mutual()) {
                return Ok(());
            }
            tracing::warn!(
                "auth is required but there are no users: set WEIR_ADMIN_PASSWORD to create `admin`"
            );
            return Ok(());
        };
        let bad = |e: &dyn std::fmt::Display| SecurityError::Bootstrap(e.to_string());
        let salt = auth::new_salt().map_err(|e| bad(&e))?;
        let cred = weir_protocol::scram::credential(password, &salt, auth::ITERATIONS)
            .map_err(|e| bad(&e))?;
        self.store
            .update(|s| {
                s.users.insert(
                    ADMIN_USER.to_string(),
                    store::StoredUser::from_credential(&cred),
                );
                s.acls.insert(store::Grant {
                    principal: ADMIN_USER.to_string(),
                    resource: ResourceType::Cluster.name().to_string(),
                    pattern: acl::CLUSTER.to_string(),
                    operation: Operation::Admin.name().to_string(),
                });
                Ok::<_, store::StoreError>(())
            })
            .map_err(SecurityError::Store)?;
        self.record(ADMIN_USER, None, "bootstrap_admin", ADMIN_USER, "ok", true);
        tracing::info!("created the bootstrap user `admin` (cluster admin)");
        Ok(())
    }

    /// Writes an audit entry, when there is an audit log.
    pub fn record(
        &self,
        principal: &str,
        peer: Option<std::net::SocketAddr>,
        action: &str,
        target: &str,
        outcome: &str,
        sync: bool,
    ) {
        if let Some(a) = &self.audit {
            a.record(
                audit::Event {
                    principal,
                    peer,
                    action,
                    target,
                    outcome,
                },
                sync,
            );
        }
    }

    /// Checks a request before it starts: `Err` is the refusal to send instead
    /// (AUTHENTICATION_REQUIRED before authentication, NOT_AUTHORIZED without the
    /// grant; each refusal audited). Always `Ok` when authentication is off.
    #[allow(clippy::result_large_err)]
    pub fn authorize(
        &self,
        identity: &mut Identity,
        header: &RequestHeader,
        request: &Request,
    ) -> Result<(), ResponseFrame> {
        if !self.required || identity.node {
            return Ok(());
        }
        let mut refused: Option<String> = None;
        let rules = match &identity.principal {
            None => match request {
                Request::ApiVersions(_) | Request::Authenticate(_) => return Ok(()),
                _ => {
                    return Err(ResponseFrame::error(
                        header,
                        ErrorCode::AuthenticationRequired,
                        0,
                        "authenticate first (Authenticate: SCRAM-SHA-256 or API-KEY)",
                    ))
                }
            },
            Some(p) => {
                let generation = self.store.generation();
                match &identity.rules {
                    Some((g, r)) if *g == generation => r.clone(),
                    _ => {
                        let r = self.store.snapshot().rules_of(p);
                        identity.rules = Some((generation, r.clone()));
                        r
                    }
                }
            }
        };
        let ok = acl::each_need(request, |n| {
            let allowed = rules
                .iter()
                .any(|g| g.allows(n.resource, n.name, n.operation));
            if !allowed {
                refused = Some(format!(
                    "{} on {} {}",
                    n.operation.name(),
                    n.resource.name(),
                    n.name
                ));
            }
            allowed
        });
        if ok {
            return Ok(());
        }
        let what = refused.unwrap_or_default();
        if identity.denials_logged <= audit::DENIALS_PER_CONNECTION {
            identity.denials_logged += 1;
            let (action, target) = if identity.denials_logged > audit::DENIALS_PER_CONNECTION {
                (
                    "denied",
                    "further refusals on this connection are not logged",
                )
            } else {
                ("denied", what.as_str())
            };
            self.record(
                identity.who(),
                identity.peer,
                action,
                target,
                request.api_key().name(),
                false,
            );
        }
        Err(ResponseFrame::error(
            header,
            ErrorCode::NotAuthorized,
            0,
            format!("{} may not {what}", identity.who()),
        ))
    }

    /// Serves one Authenticate request. On success the connection's principal is
    /// set (SCRAM's final step, or an API key); every attempt's outcome is audited.
    pub async fn authenticate(
        &self,
        identity: &mut Identity,
        header: &RequestHeader,
        req: AuthenticateRequest,
    ) -> ResponseFrame {
        let mechanism = req.mechanism.clone();
        let outcome: Result<(Option<String>, String), (String, auth::AuthError)> =
            match mechanism.as_str() {
                weir_protocol::scram::MECHANISM => match identity.scram.take() {
                    None => auth::scram_first(&self.store.snapshot(), &req.payload)
                        .map(|(pending, server_first)| {
                            identity.scram = Some(pending);
                            (None, server_first)
                        })
                        .map_err(|e| (String::new(), e)),
                    Some(pending) => {
                        let claimed = pending.user().to_string();
                        auth::scram_final(pending, &req.payload)
                            .map(|(user, server_final)| (Some(user), server_final))
                            .map_err(|e| (claimed, e))
                    }
                },
                auth::API_KEY_MECHANISM => {
                    let snapshot = self.store.snapshot();
                    let key = req.payload.clone();
                    let id = key_id(&key);
                    match tokio::task::spawn_blocking(move || auth::check_api_key(&snapshot, &key))
                        .await
                    {
                        Ok(Ok(principal)) => Ok((Some(principal), String::new())),
                        Ok(Err(e)) => Err((id, e)),
                        Err(_) => Err((id, auth::AuthError::BadKey)),
                    }
                }
                auth::NODE_MECHANISM => {
                    // Digests compared, so the time taken says nothing about how much
                    // of the secret a guess got right.
                    let proved = self
                        .node_secret_digest
                        .is_some_and(|d| d == digest(&req.payload));
                    if proved {
                        identity.node = true;
                        Ok((Some(auth::NODE_PRINCIPAL.to_string()), String::new()))
                    } else {
                        Err((String::new(), auth::AuthError::BadNodeSecret))
                    }
                }
                other => Err((String::new(), auth::AuthError::Mechanism(other.to_string()))),
            };
        match outcome {
            Ok((None, payload)) => ResponseFrame::ok(
                header,
                AuthenticateResponse {
                    payload: payload.into_bytes().into(),
                    done: 0,
                    principal: String::new(),
                },
            ),
            Ok((Some(principal), payload)) => {
                self.record(
                    &principal,
                    identity.peer,
                    "authenticate",
                    &mechanism,
                    "ok",
                    false,
                );
                identity.principal = Some(principal.as_str().into());
                identity.rules = None;
                ResponseFrame::ok(
                    header,
                    AuthenticateResponse {
                        payload: payload.into_bytes().into(),
                        done: 1,
                        principal,
                    },
                )
            }
            Err((claimed, e)) => {
                let message = e.to_string();
                self.record(
                    &claimed,
                    identity.peer,
                    "authenticate",
                    &mechanism,
                    &format!("failed: {message}"),
                    false,
                );
                ResponseFrame::error(header, ErrorCode::AuthenticationFailed, 0, message)
            }
        }
    }

    /// Audits an administrative request once it was answered (synced before the
    /// answer leaves when it succeeded).
    pub fn audit_change(
        &self,
        identity: &Identity,
        change: &(&'static str, String),
        resp: &ResponseFrame,
    ) {
        let outcome = match resp.error_code() {
            ErrorCode::None => "ok".to_string(),
            code => format!("refused: {code}"),
        };
        let ok = resp.error_code() == ErrorCode::None;
        self.record(
            identity.who(),
            identity.peer,
            change.0,
            &change.1,
            &outcome,
            ok,
        );
    }

    /// Applies the quota changes stored by earlier runs over the config's quotas. An
    /// entry that no longer applies (say, the config now allows fewer entries) is
    /// logged and skipped.
    pub fn restore_quotas(&self, flow: &crate::flow::FlowControl) {
        for (client_id, quota) in &self.store.snapshot().stored.quotas {
            let req = weir_protocol::messages::AlterQuotasRequest {
                client_id: client_id.clone(),
                remove: u8::from(quota.is_none()),
                quota: quota.as_ref().map(|q| q.quota()).unwrap_or_default(),
            };
            if let Err(e) = flow.alter_quotas(req) {
                tracing::warn!(%client_id, error = %e.message, "stored quota change not applied");
            }
        }
    }

    /// Records a quota change (already in force) so the next start applies it too.
    /// Blocks on file I/O: call it off the async workers.
    pub fn persist_quota(
        &self,
        client_id: &str,
        quota: Option<&weir_protocol::messages::Quota>,
    ) -> Result<(), store::StoreError> {
        let id = client_id.to_string();
        let q = quota.map(store::StoredQuota::from_quota);
        self.store.update(|s| {
            s.quotas.insert(id, q);
            Ok(())
        })
    }

    /// Whether anything about `request` concerns security's audit (only when
    /// authentication is required).
    pub fn admin_change(&self, request: &Request) -> Option<(&'static str, String)> {
        self.audit.as_ref().and_then(|_| acl::admin_change(request))
    }
}

/// The id part of an API key, for the audit log (never the secret).
fn key_id(key: &[u8]) -> String {
    std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(auth::KEY_PREFIX))
        .and_then(|k| k.split('_').next())
        .map(|id| format!("key {}", id.chars().take(32).collect::<String>()))
        .unwrap_or_default()
}
