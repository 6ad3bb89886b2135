//! `weir audit show|verify`: reads a broker's audit log file directly (not through
//! the broker: checking a tamper-evident log must not depend on trusting the broker
//! that wrote it).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use weir_broker::security::audit;

/// The audit log of a broker with `auth = "required"`.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Print the entries (time, principal, peer, action, target, outcome).
    Show(Where),
    /// Check the hash chain; names the first entry that breaks it.
    Verify(Where),
}

/// Which file.
#[derive(Args, Debug)]
pub struct Where {
    /// The audit log file [default: DATA_DIR/audit.log].
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The broker's data directory.
    #[arg(long, default_value = "./weir-data")]
    pub data_dir: PathBuf,
}

impl Where {
    fn read(&self) -> anyhow::Result<(PathBuf, String)> {
        let path = self
            .file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(audit::FILE));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok((path, text))
    }
}

pub fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Show(w) => {
            let (_, text) = w.read()?;
            for e in audit::entries(&text) {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    e.seq, e.time_ms, e.principal, e.peer, e.action, e.target, e.outcome
                );
            }
            Ok(())
        }
        AuditCmd::Verify(w) => {
            let (path, text) = w.read()?;
            match audit::verify(&text) {
                Ok(n) => {
                    println!("{}: {n} entries, chain intact", path.display());
                    Ok(())
                }
                Err(broken) => anyhow::bail!("{}: {broken}", path.display()),
            }
        }
    }
}
