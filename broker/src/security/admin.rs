//! Administration of users, API keys and ACL entries (apis 51–58). Each change is
//! written to `security.json` on the blocking pool before it is answered; the
//! connection audits it (`Security::audit_change`).

use std::sync::Arc;

use weir_protocol::frame::{RequestHeader, ResponseFrame};
use weir_protocol::messages::*;
use weir_protocol::{ErrorCode, Request, ResponseBody};

use super::auth;
use super::store::{Grant, StoreError, StoredKey, StoredUser};
use crate::error::BrokerError;
use crate::state::BrokerState;

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        BrokerError::new(ErrorCode::StorageError, e.to_string())
    }
}

/// Whether `request` is one of the administration apis served here.
pub fn handles(request: &Request) -> bool {
    matches!(
        request,
        Request::UpsertUser(_)
            | Request::DeleteUser(_)
            | Request::ListUsers(_)
            | Request::CreateApiKey(_)
            | Request::RevokeApiKey(_)
            | Request::ListApiKeys(_)
            | Request::AlterAcls(_)
            | Request::DescribeAcls(_)
    )
}

/// Answers one administration request.
pub async fn answer(
    state: &Arc<BrokerState>,
    header: &RequestHeader,
    request: Request,
) -> ResponseFrame {
    match route(state, request).await {
        Ok(body) => ResponseFrame::ok(header, body),
        Err(e) => ResponseFrame::error(header, e.code, 0, e.message),
    }
}

fn invalid(m: impl Into<String>) -> BrokerError {
    BrokerError::new(ErrorCode::InvalidConfig, m)
}

/// A principal or role name: 1..=249 printable characters without spaces.
fn check_name(what: &str, name: &str) -> Result<(), BrokerError> {
    if name.is_empty() || name.len() > 249 || !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "{what} {name:?}: 1..=249 printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// Runs a store change on the blocking pool.
async fn update<T: Send + 'static>(
    state: &Arc<BrokerState>,
    f: impl FnOnce(&mut super::store::Stored) -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || state.security.store.update(f))
        .await
        .map_err(|e| BrokerError::new(ErrorCode::Unknown, e.to_string()))?
}

async fn route(state: &Arc<BrokerState>, request: Request) -> Result<ResponseBody, BrokerError> {
    let snapshot = state.security.store.snapshot();
    Ok(match request {
        Request::UpsertUser(r) => {
            check_name("user", &r.name)?;
            let c = &r.credential;
            weir_protocol::scram::check_parameters(c.salt.len(), c.iterations)
                .map_err(|e| invalid(e.to_string()))?;
            let key = |b: &bytes::Bytes| -> Result<[u8; 32], BrokerError> {
                b[..]
                    .try_into()
                    .map_err(|_| invalid("stored_key and server_key are 32 bytes"))
            };
            let cred = weir_protocol::scram::Credential {
                salt: c.salt.to_vec(),
                iterations: c.iterations,
                stored_key: key(&c.stored_key)?,
                server_key: key(&c.server_key)?,
            };
            let user = StoredUser::from_credential(&cred);
            let created =
                update(state, move |s| Ok(s.users.insert(r.name, user).is_none())).await?;
            UpsertUserResponse {
                created: u8::from(created),
            }
            .into()
        }
        Request::DeleteUser(r) => {
            update(state, move |s| {
                s.users.remove(&r.name).map(|_| ()).ok_or_else(|| {
                    BrokerError::new(ErrorCode::UnknownPrincipal, format!("no user {:?}", r.name))
                })
            })
            .await?;
            DeleteUserResponse {}.into()
        }
        Request::ListUsers(_) => ListUsersResponse {
            users: snapshot.stored.users.keys().cloned().collect(),
        }
        .into(),
        Request::CreateApiKey(r) => {
            check_name("principal", &r.principal)?;
            if r.description.len() > 1024 {
                return Err(invalid("description over 1024 bytes"));
            }
            let (id, key, hash) = tokio::task::spawn_blocking(auth::new_api_key)
                .await
                .map_err(|e| BrokerError::new(ErrorCode::Unknown, e.to_string()))?
                .map_err(|e| BrokerError::new(ErrorCode::Unknown, e.to_string()))?;
            let stored = StoredKey {
                principal: r.principal,
                description: r.description,
                created_ms: crate::clock::now_ms().max(0) as u64,
                hash,
            };
            let key_id = id.clone();
            update(state, move |s| {
                s.api_keys.insert(id, stored);
                Ok(())
            })
            .await?;
            CreateApiKeyResponse { key_id, key }.into()
        }
        Request::RevokeApiKey(r) => {
            update(state, move |s| {
                s.api_keys.remove(&r.key_id).map(|_| ()).ok_or_else(|| {
                    BrokerError::new(
                        ErrorCode::UnknownPrincipal,
                        format!("no API key {:?}", r.key_id),
                    )
                })
            })
            .await?;
            RevokeApiKeyResponse {}.into()
        }
        Request::ListApiKeys(_) => ListApiKeysResponse {
            keys: snapshot
                .stored
                .api_keys
                .iter()
                .map(|(id, k)| ApiKeyEntry {
                    key_id: id.clone(),
                    principal: k.principal.clone(),
                    description: k.description.clone(),
                    created_ms: k.created_ms,
                })
                .collect(),
        }
        .into(),
        Request::AlterAcls(r) => {
            let e = &r.entry;
            check_name("principal", &e.principal)?;
            check_name("pattern", &e.pattern)?;
            let member = e.operation == Operation::Member;
            if member != (e.resource_type == ResourceType::Role) {
                return Err(invalid(
                    "role membership is the `member` operation on a role, and only that",
                ));
            }
            if e.resource_type == ResourceType::Cluster && e.pattern != super::acl::CLUSTER {
                return Err(invalid("the cluster's pattern is `*`"));
            }
            let grant = Grant::from_entry(e);
            let remove = r.remove != 0;
            let changed = update(state, move |s| {
                Ok(if remove {
                    s.acls.remove(&grant)
                } else {
                    s.acls.insert(grant)
                })
            })
            .await?;
            AlterAclsResponse {
                changed: u8::from(changed),
            }
            .into()
        }
        Request::DescribeAcls(r) => DescribeAclsResponse {
            entries: snapshot
                .stored
                .acls
                .iter()
                .filter(|g| r.principal.is_empty() || g.principal == r.principal)
                .filter_map(Grant::entry)
                .collect(),
        }
        .into(),
        other => {
            return Err(BrokerError::new(
                ErrorCode::Unknown,
                format!(
                    "{} is not a security administration api",
                    other.api_key().name()
                ),
            ))
        }
    })
}
