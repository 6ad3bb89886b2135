//! `weir quota get|set|remove` and the flow-control part of `weir status`.

use anyhow::Context;
use clap::{Args, Subcommand};
use weir_client::{Admin, FlowStatusResponse, Quota, QuotaEntry};

/// Read and change per-client quotas at runtime (recorded; kept across restarts).
#[derive(Subcommand, Debug)]
pub enum QuotaCmd {
    /// Show quotas: of the given client ids, or every entry ("" is the default).
    Get { client_ids: Vec<String> },
    /// Set limits of a client id ("" = the default quota). Limits not given keep their
    /// current value; 0 means no limit.
    Set {
        client_id: String,
        #[command(flatten)]
        limits: Limits,
    },
    /// Remove a client id's quota; it falls back to the default.
    Remove { client_id: String },
}

/// Quota fields as flags.
#[derive(Args, Debug, Default)]
pub struct Limits {
    #[arg(long)]
    pub produce_bytes_per_s: Option<u64>,
    #[arg(long)]
    pub produce_burst_bytes: Option<u64>,
    #[arg(long)]
    pub fetch_bytes_per_s: Option<u64>,
    #[arg(long)]
    pub fetch_burst_bytes: Option<u64>,
    #[arg(long)]
    pub max_connections: Option<u32>,
    #[arg(long)]
    pub max_queued_bytes: Option<u64>,
}

impl Limits {
    fn apply(&self, q: &mut Quota) {
        let set = |d: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *d = v;
            }
        };
        set(&mut q.produce_bytes_per_s, self.produce_bytes_per_s);
        set(&mut q.produce_burst_bytes, self.produce_burst_bytes);
        set(&mut q.fetch_bytes_per_s, self.fetch_bytes_per_s);
        set(&mut q.fetch_burst_bytes, self.fetch_burst_bytes);
        set(&mut q.max_queued_bytes, self.max_queued_bytes);
        if let Some(v) = self.max_connections {
            q.max_connections = v;
        }
    }
}

fn limit(v: u64) -> String {
    if v == 0 {
        "-".to_string()
    } else {
        v.to_string()
    }
}

/// One line per entry: id, then each limit ("-" = none).
pub fn format_entry(e: &QuotaEntry) -> String {
    let q = &e.quota;
    let id = if e.client_id.is_empty() {
        "(default)"
    } else {
        &e.client_id
    };
    format!(
        "{id}\tproduce {}/s burst {}\tfetch {}/s burst {}\tconnections {}\tqueued {}",
        limit(q.produce_bytes_per_s),
        limit(q.produce_burst_bytes),
        limit(q.fetch_bytes_per_s),
        limit(q.fetch_burst_bytes),
        limit(u64::from(q.max_connections)),
        limit(q.max_queued_bytes),
    )
}

/// Runs a `weir quota` subcommand.
pub async fn run(admin: &Admin, cmd: QuotaCmd) -> anyhow::Result<()> {
    match cmd {
        QuotaCmd::Get { client_ids } => {
            let ids: Vec<&str> = client_ids.iter().map(String::as_str).collect();
            for e in admin.describe_quotas(&ids).await? {
                println!("{}", format_entry(&e));
            }
        }
        QuotaCmd::Set { client_id, limits } => {
            // Start from the quota in effect for this id (its entry, else the default).
            let current = admin
                .describe_quotas(&[client_id.as_str(), ""])
                .await
                .context("reading the current quota")?;
            let mut q = current
                .iter()
                .find(|e| e.client_id == client_id)
                .or_else(|| current.iter().find(|e| e.client_id.is_empty()))
                .map(|e| e.quota.clone())
                .unwrap_or_default();
            limits.apply(&mut q);
            let e = admin.set_quota(&client_id, q).await?;
            println!("{}", format_entry(&e));
        }
        QuotaCmd::Remove { client_id } => {
            let e = admin.remove_quota(&client_id).await?;
            println!("removed; now {}", format_entry(&e));
        }
    }
    Ok(())
}

/// The flow-control lines of `weir status`.
pub fn format_flow_status(s: &FlowStatusResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "flow: load {}.{}% (memory {} of {} bytes, pending produce {} of {} bytes, ack latency {} of {} us)",
        s.load_permille / 10,
        s.load_permille % 10,
        s.memory_used_bytes,
        s.memory_budget_bytes,
        s.pending_produce_bytes,
        s.pending_produce_reference_bytes,
        s.produce_latency_ewma_us,
        s.produce_latency_target_us
    );
    let classes: Vec<String> = s
        .classes
        .iter()
        .map(|c| {
            format!(
                "P{} {}.{}% ({} shed)",
                c.class,
                c.shed_permille / 10,
                c.shed_permille % 10,
                c.shed_total
            )
        })
        .collect();
    let _ = writeln!(out, "  shedding: {}", classes.join(", "));
    for c in &s.clients {
        let id = if c.client_id.is_empty() {
            "(default)"
        } else {
            &c.client_id
        };
        let _ = writeln!(
            out,
            "  client {id}: {} connections, {} bytes queued, {} throttled",
            c.connections, c.queued_bytes, c.throttled_total
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keeps_limits_not_given() {
        let mut q = Quota {
            produce_bytes_per_s: 10,
            max_connections: 3,
            ..Default::default()
        };
        Limits {
            fetch_bytes_per_s: Some(7),
            max_connections: Some(0),
            ..Default::default()
        }
        .apply(&mut q);
        assert_eq!(q.produce_bytes_per_s, 10);
        assert_eq!(q.fetch_bytes_per_s, 7);
        assert_eq!(q.max_connections, 0);
        let line = format_entry(&QuotaEntry {
            client_id: String::new(),
            quota: q,
        });
        assert!(
            line.starts_with("(default)\tproduce 10/s burst -"),
            "{line}"
        );
    }
}
