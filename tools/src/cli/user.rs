//! `weir user add|remove|list` and `weir key create|revoke|list`: the principals of
//! a broker with `auth = "required"`.

use clap::Subcommand;
use weir_client::Admin;

/// Users (SCRAM-SHA-256 passwords).
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a user, or change its password. The password is turned into a SCRAM
    /// credential here; the broker never sees it.
    Add {
        name: String,
        /// The user's password (or WEIR_NEW_PASSWORD).
        #[arg(long = "password", env = "WEIR_NEW_PASSWORD", hide_env_values = true)]
        new_password: String,
    },
    /// Delete a user.
    Remove { name: String },
    /// List users.
    List,
}

/// API keys (for services).
#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Issue a key whose connections act as PRINCIPAL; it is printed once.
    Create {
        #[arg(long)]
        principal: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a key by its id.
    Revoke { key_id: String },
    /// List keys (ids and principals, never secrets).
    List,
}

pub async fn run_user(admin: &Admin, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add { name, new_password } => {
            let created = admin.upsert_user(&name, &new_password).await?;
            println!(
                "{} user {name}",
                if created {
                    "created"
                } else {
                    "changed the password of"
                }
            );
        }
        UserCmd::Remove { name } => {
            admin.delete_user(&name).await?;
            println!("removed user {name}");
        }
        UserCmd::List => {
            for u in admin.list_users().await? {
                println!("{u}");
            }
        }
    }
    Ok(())
}

pub async fn run_key(admin: &Admin, cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create {
            principal,
            description,
        } => {
            let k = admin.create_api_key(&principal, &description).await?;
            eprintln!(
                "key id {} for {principal}; the key is shown only now:",
                k.key_id
            );
            println!("{}", k.key);
        }
        KeyCmd::Revoke { key_id } => {
            admin.revoke_api_key(&key_id).await?;
            println!("revoked key {key_id}");
        }
        KeyCmd::List => {
            for k in admin.list_api_keys().await? {
                println!("{}\t{}\t{}", k.key_id, k.principal, k.description);
            }
        }
    }
    Ok(())
}
