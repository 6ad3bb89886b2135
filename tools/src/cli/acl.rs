//! `weir acl add|remove|list` and `weir role grant|revoke`: who may do what.
//!
//! A grant names a principal (`--user`, which also names API-key and certificate
//! principals) or a role (`--role`), a resource (`--topic PATTERN`, `--group
//! PATTERN`, `--cluster`; a pattern ending in `*` is a prefix) and an operation.

use anyhow::bail;
use clap::{Args, Subcommand};
use weir_client::Admin;
use weir_protocol::messages::{AclEntry, Operation, ResourceType};

/// ACL entries.
#[derive(Subcommand, Debug)]
pub enum AclCmd {
    /// Grant an operation.
    Add(GrantArgs),
    /// Take a grant back.
    Remove(GrantArgs),
    /// List grants (of one user or role, or all).
    List {
        #[arg(long, conflicts_with = "role")]
        user: Option<String>,
        #[arg(long)]
        role: Option<String>,
    },
}

/// Roles: named sets of grants (`weir acl add --role R ...`), given to users.
#[derive(Subcommand, Debug)]
pub enum RoleCmd {
    /// Make a user a member of a role.
    Grant {
        role: String,
        #[arg(long)]
        user: String,
    },
    /// Take a role away from a user.
    Revoke {
        role: String,
        #[arg(long)]
        user: String,
    },
}

/// One grant as flags.
#[derive(Args, Debug)]
pub struct GrantArgs {
    /// The principal (a user, an API key's principal, a certificate's common name).
    #[arg(long, required_unless_present = "role", conflicts_with = "role")]
    pub user: Option<String>,
    /// A role instead of a principal.
    #[arg(long)]
    pub role: Option<String>,
    /// Topics: a name, a prefix ending in `*`, or `*`.
    #[arg(long, conflicts_with_all = ["group", "cluster"])]
    pub topic: Option<String>,
    /// Consumer or queue groups: a name, a prefix ending in `*`, or `*`.
    #[arg(long, conflicts_with = "cluster")]
    pub group: Option<String>,
    /// The broker itself (quotas, flow state, users, keys, ACLs).
    #[arg(long)]
    pub cluster: bool,
    /// produce, consume, create, delete, alter, describe or admin.
    #[arg(long)]
    pub op: String,
}

impl GrantArgs {
    fn entry(&self) -> anyhow::Result<AclEntry> {
        let principal = match (&self.user, &self.role) {
            (Some(u), None) => u.clone(),
            (None, Some(r)) => format!("role:{r}"),
            _ => bail!("give --user or --role"),
        };
        let (resource_type, pattern) = match (&self.topic, &self.group, self.cluster) {
            (Some(t), None, false) => (ResourceType::Topic, t.clone()),
            (None, Some(g), false) => (ResourceType::Group, g.clone()),
            (None, None, true) => (ResourceType::Cluster, "*".to_string()),
            _ => bail!("give one of --topic, --group, --cluster"),
        };
        let operation = match Operation::from_name(&self.op) {
            Some(Operation::Member) | None => bail!(
                "--op {}: one of produce, consume, create, delete, alter, describe, admin",
                self.op
            ),
            Some(op) => op,
        };
        Ok(AclEntry {
            principal,
            resource_type,
            pattern,
            operation,
        })
    }
}

fn show(e: &AclEntry) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        e.principal,
        e.resource_type.name(),
        e.pattern,
        e.operation.name()
    )
}

pub async fn run_acl(admin: &Admin, cmd: AclCmd) -> anyhow::Result<()> {
    match cmd {
        AclCmd::Add(g) => {
            let e = g.entry()?;
            let changed = admin.alter_acl(e.clone(), false).await?;
            println!(
                "{} {}",
                if changed { "added" } else { "already there:" },
                show(&e)
            );
        }
        AclCmd::Remove(g) => {
            let e = g.entry()?;
            let changed = admin.alter_acl(e.clone(), true).await?;
            println!(
                "{} {}",
                if changed { "removed" } else { "not there:" },
                show(&e)
            );
        }
        AclCmd::List { user, role } => {
            let principal = match (user, role) {
                (Some(u), _) => u,
                (None, Some(r)) => format!("role:{r}"),
                (None, None) => String::new(),
            };
            for e in admin.describe_acls(&principal).await? {
                println!("{}", show(&e));
            }
        }
    }
    Ok(())
}

pub async fn run_role(admin: &Admin, cmd: RoleCmd) -> anyhow::Result<()> {
    let (role, user, remove) = match cmd {
        RoleCmd::Grant { role, user } => (role, user, false),
        RoleCmd::Revoke { role, user } => (role, user, true),
    };
    let entry = AclEntry {
        principal: user.clone(),
        resource_type: ResourceType::Role,
        pattern: role.clone(),
        operation: Operation::Member,
    };
    let changed = admin.alter_acl(entry, remove).await?;
    let verb = match (remove, changed) {
        (false, true) => "granted",
        (false, false) => "already had",
        (true, true) => "revoked",
        (true, false) => "did not have",
    };
    println!("{user}: {verb} role {role}");
    Ok(())
}
