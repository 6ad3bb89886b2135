//! Users, API keys and ACL entries, kept in `<data_dir>/security.json` and in memory
//! as an immutable snapshot that connections read without a lock on every request.
//!
//! Writes are rare (an administrator adds a user or a grant): each one copies the
//! current state, changes the copy, replaces the file crash-safely
//! (`files::write_atomically`: write aside, fsync, rename, fsync the directory), and
//! only then publishes the new snapshot and bumps the generation. Connections keep the
//! principal's resolved grants and look at the generation (one atomic load) to see
//! whether to resolve them again, so a revoked grant applies to the next request of
//! every open connection.
//!
//! Passwords are never stored: a user is its SCRAM-SHA-256 credential (salt,
//! iterations, StoredKey, ServerKey). An API key is stored as an Argon2id hash (PHC
//! string) of its secret.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use weir_protocol::messages::{AclEntry, Operation, ResourceType};
use weir_protocol::scram::{Credential, KEY_BYTES};

/// The file's name in the data directory.
pub const FILE: &str = "security.json";

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid security file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One user: its SCRAM credential, base64 fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredUser {
    pub salt: String,
    pub iterations: u32,
    pub stored_key: String,
    pub server_key: String,
}

impl StoredUser {
    pub fn from_credential(c: &Credential) -> StoredUser {
        StoredUser {
            salt: B64.encode(&c.salt),
            iterations: c.iterations,
            stored_key: B64.encode(c.stored_key),
            server_key: B64.encode(c.server_key),
        }
    }

    pub fn credential(&self) -> Option<Credential> {
        let key = |s: &str| -> Option<[u8; KEY_BYTES]> { B64.decode(s).ok()?.try_into().ok() };
        Some(Credential {
            salt: B64.decode(&self.salt).ok()?,
            iterations: self.iterations,
            stored_key: key(&self.stored_key)?,
            server_key: key(&self.server_key)?,
        })
    }
}

/// One API key, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredKey {
    pub principal: String,
    pub description: String,
    pub created_ms: u64,
    /// Argon2id PHC string of the secret.
    pub hash: String,
}

/// One ACL entry as stored (names, not numbers, so the file reads well).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    pub principal: String,
    pub resource: String,
    pub pattern: String,
    pub operation: String,
}

impl Grant {
    pub fn from_entry(e: &AclEntry) -> Grant {
        Grant {
            principal: e.principal.clone(),
            resource: e.resource_type.name().to_string(),
            pattern: e.pattern.clone(),
            operation: e.operation.name().to_string(),
        }
    }

    pub fn entry(&self) -> Option<AclEntry> {
        Some(AclEntry {
            principal: self.principal.clone(),
            resource_type: ResourceType::from_name(&self.resource)?,
            pattern: self.pattern.clone(),
            operation: Operation::from_name(&self.operation)?,
        })
    }
}

/// One runtime quota change (AlterQuotas): the quota set, or `None` for a removed
/// entry (the client id falls back to the default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredQuota {
    pub produce_bytes_per_s: u64,
    pub produce_burst_bytes: u64,
    pub fetch_bytes_per_s: u64,
    pub fetch_burst_bytes: u64,
    pub max_connections: u32,
    pub max_queued_bytes: u64,
}

impl StoredQuota {
    pub fn from_quota(q: &weir_protocol::messages::Quota) -> StoredQuota {
        StoredQuota {
            produce_bytes_per_s: q.produce_bytes_per_s,
            produce_burst_bytes: q.produce_burst_bytes,
            fetch_bytes_per_s: q.fetch_bytes_per_s,
            fetch_burst_bytes: q.fetch_burst_bytes,
            max_connections: q.max_connections,
            max_queued_bytes: q.max_queued_bytes,
        }
    }

    pub fn quota(&self) -> weir_protocol::messages::Quota {
        weir_protocol::messages::Quota {
            produce_bytes_per_s: self.produce_bytes_per_s,
            produce_burst_bytes: self.produce_burst_bytes,
            fetch_bytes_per_s: self.fetch_bytes_per_s,
            fetch_burst_bytes: self.fetch_burst_bytes,
            max_connections: self.max_connections,
            max_queued_bytes: self.max_queued_bytes,
        }
    }
}

/// Everything the file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub users: BTreeMap<String, StoredUser>,
    pub api_keys: BTreeMap<String, StoredKey>,
    pub acls: BTreeSet<Grant>,
    /// Quota changes made at runtime (AlterQuotas), applied over the config's quotas
    /// at start, in client-id order.
    #[serde(default)]
    pub quotas: BTreeMap<String, Option<StoredQuota>>,
}

/// A parsed grant, ready to match requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub resource: ResourceType,
    pub pattern: String,
    pub operation: Operation,
}

impl Rule {
    /// Whether this grant allows `op` on the resource `name` of type `resource`.
    /// Cluster `admin` allows everything; `admin` on a resource allows every
    /// operation on it; any grant on a resource also allows describing it.
    pub fn allows(&self, resource: ResourceType, name: &str, op: Operation) -> bool {
        if self.resource == ResourceType::Cluster && self.operation == Operation::Admin {
            return true;
        }
        self.resource == resource
            && pattern_matches(&self.pattern, name)
            && (self.operation == op
                || self.operation == Operation::Admin
                || (op == Operation::Describe && self.operation != Operation::Member))
    }
}

/// `*` matches every name, `orders.*` every name starting with `orders.`, anything
/// else only itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The immutable state connections read.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub stored: Stored,
    /// Each principal's grants, its roles' grants included.
    rules: HashMap<String, Arc<[Rule]>>,
}

/// Prefix of a role's name when it is the principal of a grant.
pub const ROLE_PREFIX: &str = "role:";

impl Snapshot {
    fn new(stored: Stored) -> Snapshot {
        let mut own: HashMap<&str, Vec<Rule>> = HashMap::new();
        let mut roles: HashMap<&str, Vec<&str>> = HashMap::new();
        for g in &stored.acls {
            let Some(e) = g.entry() else { continue };
            if e.resource_type == ResourceType::Role {
                roles.entry(&g.principal).or_default().push(&g.pattern);
                continue;
            }
            own.entry(&g.principal).or_default().push(Rule {
                resource: e.resource_type,
                pattern: e.pattern,
                operation: e.operation,
            });
        }
        let mut rules: HashMap<String, Arc<[Rule]>> = HashMap::new();
        let principals: BTreeSet<&str> = own.keys().chain(roles.keys()).copied().collect();
        for p in principals {
            let mut all: Vec<Rule> = own.get(p).cloned().unwrap_or_default();
            for role in roles.get(p).into_iter().flatten() {
                let name = format!("{ROLE_PREFIX}{role}");
                all.extend(own.get(name.as_str()).into_iter().flatten().cloned());
            }
            rules.insert(p.to_string(), all.into());
        }
        Snapshot { stored, rules }
    }

    /// The grants of `principal` (its roles' included); empty when it has none.
    pub fn rules_of(&self, principal: &str) -> Arc<[Rule]> {
        self.rules
            .get(principal)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }
}

/// The store: the file, the published snapshot and its generation.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    snapshot: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    /// Serializes writers (read-modify-write of the whole file).
    writing: Mutex<()>,
}

impl Store {
    /// Reads `dir/security.json`, or starts empty when there is none.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            snapshot: RwLock::new(Arc::new(Snapshot::new(stored))),
            generation: AtomicU64::new(1),
            writing: Mutex::new(()),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Bumped by every published change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Changes the state with `f`, writes the file, then publishes the change. Blocks
    /// on file I/O: call it off the async workers. `f`'s error leaves everything as
    /// it was.
    pub fn update<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Stored) -> Result<T, E>,
    ) -> Result<T, E> {
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.snapshot().stored.clone();
        let out = f(&mut next)?;
        let bytes = serde_json::to_vec_pretty(&next).expect("the store serializes");
        crate::files::write_atomically(&self.dir, FILE, &bytes).map_err(|source| {
            StoreError::Write {
                path: self.dir.join(FILE),
                source,
            }
        })?;
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Snapshot::new(next));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(p: &str, r: &str, pat: &str, op: &str) -> Grant {
        Grant {
            principal: p.into(),
            resource: r.into(),
            pattern: pat.into(),
            operation: op.into(),
        }
    }

    #[test]
    fn patterns_match_exact_prefix_and_all() {
        assert!(pattern_matches("orders", "orders"));
        assert!(!pattern_matches("orders", "orders2"));
        assert!(pattern_matches("orders.*", "orders.eu"));
        assert!(!pattern_matches("orders.*", "payments"));
        assert!(pattern_matches("*", "anything"));
    }

    #[test]
    fn roles_lend_their_grants_and_admin_implies_the_rest() {
        let mut s = Stored::default();
        s.acls
            .insert(grant("role:writers", "topic", "orders.*", "produce"));
        s.acls.insert(grant("alice", "role", "writers", "member"));
        s.acls.insert(grant("bob", "topic", "logs", "admin"));
        s.acls.insert(grant("root", "cluster", "*", "admin"));
        let snap = Snapshot::new(s);
        let ok = |p: &str, r, n: &str, o| snap.rules_of(p).iter().any(|g| g.allows(r, n, o));
        use Operation::*;
        use ResourceType::*;
        assert!(ok("alice", Topic, "orders.eu", Produce));
        assert!(ok("alice", Topic, "orders.eu", Describe));
        assert!(!ok("alice", Topic, "orders.eu", Consume));
        assert!(!ok("alice", Topic, "payments", Produce));
        assert!(ok("bob", Topic, "logs", Delete));
        assert!(!ok("bob", Cluster, "*", Alter));
        assert!(ok("root", Cluster, "*", Alter));
        assert!(ok("root", Group, "g", Consume));
        assert!(!ok("nobody", Topic, "logs", Describe));
    }

    #[test]
    fn updates_persist_and_bump_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let g0 = store.generation();
        store
            .update(|s| {
                s.acls.insert(grant("a", "topic", "t", "produce"));
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert!(store.generation() > g0);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.snapshot().stored, store.snapshot().stored);
        // A failed change leaves the state as it was.
        let r: Result<(), StoreError> = store.update(|s| {
            s.acls.clear();
            Err(StoreError::Invalid {
                path: "x".into(),
                reason: "no".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(store.snapshot().stored.acls.len(), 1);
    }
}
