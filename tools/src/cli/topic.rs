//! `weir topic create|list|describe|delete|delete-key|reshard`.

use clap::{Subcommand, ValueEnum};
use weir_client::{Admin, Durability, TopicConfig};

/// Topic administration.
#[derive(Subcommand, Debug)]
pub enum TopicCmd {
    /// Create a topic.
    Create {
        name: String,
        /// Shard count, at least 1.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
        #[arg(long, value_enum, default_value_t = DurArg::Interval)]
        durability: DurArg,
        /// Flush period for interval durability (0 = broker default).
        #[arg(long, default_value_t = 0)]
        flush_interval_ms: u32,
        /// Keep closed segments this long (0 = broker default).
        #[arg(long, default_value_t = 0)]
        retention_ms: u64,
        /// Keep at most this many bytes per shard (0 = broker default).
        #[arg(long, default_value_t = 0)]
        retention_bytes: u64,
        /// Segment file size (0 = broker default).
        #[arg(long, default_value_t = 0)]
        segment_bytes: u64,
        /// Largest produce request's records the topic takes, at most its segment
        /// size (0 = broker default).
        #[arg(long, default_value_t = 0)]
        max_message_bytes: u32,
        /// Priority 1..=10 the broker gives records produced without one (0 = 5).
        #[arg(long, default_value_t = 0)]
        default_priority: u8,
        /// Complexity 1..=5 the broker gives records produced without one (0 = 1).
        #[arg(long, default_value_t = 0)]
        default_complexity: u8,
        /// Derive a missing shard key: `header:NAME` or `json:FIELD`.
        #[arg(long, default_value = "")]
        shard_key_rule: String,
        /// Copies of each shard in a cluster, the primary included (0 = broker
        /// default, capped at the node count).
        #[arg(long, default_value_t = 0)]
        replicas: u8,
        /// In-sync copies a mirrored produce needs (0 = broker default, capped at
        /// replicas).
        #[arg(long, default_value_t = 0)]
        min_in_sync: u8,
    },
    /// List topics.
    List,
    /// Show a topic's settings and shards.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
    /// Delete every record with KEY from a topic (right to be forgotten): hidden from
    /// readers at once, removed from disk by the broker's next compaction
    /// (`delete_key_compact_ms`). Records produced later with the key are kept.
    DeleteKey { topic: String, key: String },
    /// Change a topic's shard count while producers and consumers run (grow or
    /// shrink): keys move by jump consistent hash, every shard's log is cut at one
    /// offset, and consumers finish a key's old shard before reading its new one.
    Reshard {
        topic: String,
        /// The new active shard count, at least 1.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
    },
}

/// `--durability` of `topic create`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DurArg {
    None,
    Interval,
    Always,
}

/// Runs one topic command.
pub async fn run(admin: &Admin, cmd: TopicCmd) -> anyhow::Result<()> {
    match cmd {
        TopicCmd::Create {
            name,
            shards,
            durability,
            flush_interval_ms,
            retention_ms,
            retention_bytes,
            segment_bytes,
            max_message_bytes,
            default_priority,
            default_complexity,
            shard_key_rule,
            replicas,
            min_in_sync,
        } => {
            let config = TopicConfig {
                durability: match durability {
                    DurArg::None => Durability::None,
                    DurArg::Interval => Durability::Interval,
                    DurArg::Always => Durability::Always,
                },
                flush_interval_ms,
                retention_ms,
                retention_bytes,
                segment_bytes,
                max_message_bytes,
                default_priority,
                default_complexity,
                shard_key_rule,
                replicas,
                min_in_sync,
            };
            let t = admin.create_topic(&name, shards, config).await?;
            println!("created topic {} with {} shards", t.name, t.shards.len());
        }
        TopicCmd::List => {
            for t in admin.list_topics().await? {
                println!("{}\t{} shards", t.name, t.shards.len());
            }
        }
        TopicCmd::Describe { name } => describe(admin, &name).await?,
        TopicCmd::Delete { name } => {
            admin.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
        TopicCmd::Reshard { topic, shards } => {
            let r = admin.reshard_topic(&topic, shards).await?;
            println!(
                "resharded topic {topic} from {} to {} shards (layout epoch {})",
                r.from_shards, r.to_shards, r.epoch
            );
            for (s, start) in r.starts.iter().enumerate() {
                println!("  shard {s}: new epoch starts at offset {start}");
            }
        }
        TopicCmd::DeleteKey { topic, key } => {
            let points = admin.delete_key(&topic, key.as_bytes()).await?;
            for p in points {
                println!(
                    "shard {}: records with the key below offset {} deleted",
                    p.shard, p.below
                );
            }
        }
    }
    Ok(())
}

async fn describe(admin: &Admin, name: &str) -> anyhow::Result<()> {
    let t = admin.describe_topic(name).await?;
    let c = &t.config;
    println!(
        "topic {}\n  durability {:?} (flush every {} ms)\n  retention {} ms, {} bytes\n  segment {} bytes, max message {} bytes\n  default priority {}, complexity {}, shard key rule {:?}",
        t.name, c.durability, c.flush_interval_ms, c.retention_ms, c.retention_bytes, c.segment_bytes, c.max_message_bytes,
        c.default_priority, c.default_complexity, c.shard_key_rule
    );
    for s in t.shards {
        let sealed = if t.active_shards > 0 && s.shard >= t.active_shards {
            " (sealed by a reshard)"
        } else {
            ""
        };
        println!(
            "  shard {}: offsets [{}, {}){sealed}",
            s.shard, s.log_start_offset, s.high_watermark
        );
    }
    for r in t.reshards.iter() {
        println!(
            "  reshard {}: {} -> {} shards, starts {:?} ({})",
            r.epoch, r.from_shards, r.to_shards, r.starts, r.reason
        );
    }
    Ok(())
}
