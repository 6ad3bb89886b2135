//! `weir`: the admin, produce and consume command-line tool.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context};

#[path = "../cli/queue.rs"]
mod queue_cli;
use clap::{Parser, Subcommand, ValueEnum};
use weir_client::{
    Acks, Admin, Client, Consumer, DeliveryOrder, Durability, OffsetReset, Producer,
    ProducerRecord, TopicConfig,
};

/// Administer a Weir broker, produce to it and consume from it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Broker address.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7700",
        env = "WEIR_BROKER"
    )]
    broker: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCmd),
    /// Send one message per line of standard input.
    Produce {
        topic: String,
        /// Shard key for every line.
        #[arg(long, conflicts_with = "key_field")]
        key: Option<String>,
        /// Take the key from this whitespace-separated field of each line (1-based).
        #[arg(long)]
        key_field: Option<usize>,
        /// Priority 1 (highest) … 10; 0 leaves it to the topic's default.
        #[arg(long, default_value_t = 5)]
        priority: u8,
        /// Complexity 1 … 5; 0 leaves it to the topic's default.
        #[arg(long, default_value_t = 1)]
        complexity: u8,
        #[arg(long, value_enum, default_value_t = AckArg::Leader)]
        acks: AckArg,
    },
    /// Print messages, one per line.
    Consume {
        topic: String,
        /// Consume as this group and commit what was printed.
        #[arg(long)]
        group: Option<String>,
        /// Start at the earliest offset when there is no committed one.
        #[arg(long)]
        from_beginning: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Exit when nothing arrives for this long.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        #[arg(long, value_enum, default_value_t = Format::Value)]
        format: Format,
        /// `offset` (stored order) or `priority` (P0 first, weighted fair with aging).
        #[arg(long, value_enum, default_value_t = OrderArg::Offset)]
        order: OrderArg,
        /// `stream` reads by offset; `queue` leases each record and acks (or nacks) it.
        #[arg(long, value_enum, default_value_t = Mode::Stream)]
        mode: Mode,
        /// Queue mode: nack (retriable) every record instead of acking it.
        #[arg(long)]
        nack_all: bool,
        /// Queue mode: wait this long before acking each record.
        #[arg(long, default_value_t = 0)]
        ack_after_ms: u64,
    },
    /// Broker version, uptime, topics, shards, offsets and queues.
    Status,
    /// Committed offsets of a group.
    Offsets { group: String },
    /// Per-client quotas: get, set, remove.
    #[command(subcommand)]
    Quota(weir_tools::cli::quota::QuotaCmd),
    /// Inspect and replay dead-letter topics.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Queue-mode groups.
    #[command(subcommand)]
    Queue(QueueCmd),
}

#[derive(Subcommand, Debug)]
enum DlqCmd {
    /// One line per dead-lettered record of TOPIC.
    List {
        topic: String,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Dead-letter topic suffix (the broker's `dlq_suffix`).
        #[arg(long, default_value = ".dlq")]
        suffix: String,
    },
    /// Records in full, as JSON lines.
    Show {
        topic: String,
        #[arg(long, default_value_t = 10)]
        count: usize,
        #[arg(long, default_value = ".dlq")]
        suffix: String,
    },
    /// Sends dead-lettered records back (to TOPIC by default). Without filters the
    /// position is remembered, so records are replayed once.
    Replay {
        topic: String,
        /// Send to this topic instead of the source topic.
        #[arg(long)]
        to: Option<String>,
        /// Only records matching KEY=VALUE: source_shard=N, source_offset=N or A..B,
        /// group=G, error=TEXT (contains), header.NAME=VALUE. Repeatable (all must match).
        #[arg(long)]
        filter: Vec<queue_cli::Filter>,
        /// Start at the dead-letter topic's beginning, not the remembered position.
        #[arg(long)]
        from_beginning: bool,
        #[arg(long, default_value = ".dlq")]
        suffix: String,
    },
}

#[derive(Subcommand, Debug)]
enum QueueCmd {
    /// Breaker state, counters and per-shard floors of queues.
    Status {
        #[arg(long, default_value = "")]
        group: String,
        #[arg(long, default_value = "")]
        topic: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Stream,
    Queue,
}

#[derive(Subcommand, Debug)]
enum TopicCmd {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
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
        /// Priority 1..=10 the broker gives records produced without one (0 = 5).
        #[arg(long, default_value_t = 0)]
        default_priority: u8,
        /// Complexity 1..=5 the broker gives records produced without one (0 = 1).
        #[arg(long, default_value_t = 0)]
        default_complexity: u8,
        /// Derive a missing shard key: `header:NAME` or `json:FIELD`.
        #[arg(long, default_value = "")]
        shard_key_rule: String,
    },
    /// List topics.
    List,
    /// Show a topic's settings and shards.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AckArg {
    None,
    Leader,
    Durable,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OrderArg {
    Offset,
    Priority,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurArg {
    None,
    Interval,
    Always,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// The value only.
    Value,
    /// Class, priority, complexity, shard/offset and key before the value.
    Meta,
    /// One JSON object per message with every field.
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(run(cli)) {
        // `weir consume | head` closing the pipe early is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>().map(|e| e.kind())
                == Some(std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::connect(cli.broker.clone())
        .await
        .with_context(|| format!("cannot reach broker at {}", cli.broker))?;
    let admin = Admin::new(client.clone());
    match cli.cmd {
        Cmd::Topic(TopicCmd::Create {
            name,
            shards,
            durability,
            flush_interval_ms,
            retention_ms,
            retention_bytes,
            segment_bytes,
            default_priority,
            default_complexity,
            shard_key_rule,
        }) => {
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
                max_message_bytes: 0,
                default_priority,
                default_complexity,
                shard_key_rule,
            };
            let t = admin.create_topic(&name, shards, config).await?;
            println!("created topic {} with {} shards", t.name, t.shards.len());
        }
        Cmd::Topic(TopicCmd::List) => {
            for t in admin.list_topics().await? {
                println!("{}\t{} shards", t.name, t.shards.len());
            }
        }
        Cmd::Topic(TopicCmd::Describe { name }) => {
            let t = admin.describe_topic(&name).await?;
            let c = &t.config;
            println!(
                "topic {}\n  durability {:?} (flush every {} ms)\n  retention {} ms, {} bytes\n  segment {} bytes, max message {} bytes\n  default priority {}, complexity {}, shard key rule {:?}",
                t.name, c.durability, c.flush_interval_ms, c.retention_ms, c.retention_bytes, c.segment_bytes, c.max_message_bytes,
                c.default_priority, c.default_complexity, c.shard_key_rule
            );
            for s in t.shards {
                println!(
                    "  shard {}: offsets [{}, {})",
                    s.shard, s.log_start_offset, s.high_watermark
                );
            }
        }
        Cmd::Topic(TopicCmd::Delete { name }) => {
            admin.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
        Cmd::Produce {
            topic,
            key,
            key_field,
            priority,
            complexity,
            acks,
        } => produce(&client, topic, key, key_field, priority, complexity, acks).await?,
        Cmd::Consume {
            topic,
            group,
            count,
            timeout_ms,
            mode: Mode::Queue,
            nack_all,
            ack_after_ms,
            ..
        } => {
            let group = group.context("--mode queue needs --group")?;
            queue_cli::consume_queue(
                &client,
                &topic,
                &group,
                count,
                timeout_ms,
                nack_all,
                ack_after_ms,
            )
            .await?
        }
        Cmd::Consume {
            topic,
            group,
            from_beginning,
            count,
            timeout_ms,
            format,
            order,
            ..
        } => {
            let order = match order {
                OrderArg::Offset => DeliveryOrder::Offset,
                OrderArg::Priority => DeliveryOrder::Priority,
            };
            consume(
                &client,
                topic,
                group,
                from_beginning,
                count,
                timeout_ms,
                (format, order),
            )
            .await?
        }
        Cmd::Status => {
            let m = admin.status().await?;
            println!(
                "{} at {}, up {} s",
                m.broker_software, cli.broker, m.uptime_s
            );
            println!("{} topics", m.topics.len());
            for t in m.topics {
                for s in t.shards {
                    println!(
                        "  {}/{}: offsets [{}, {})",
                        t.name, s.shard, s.log_start_offset, s.high_watermark
                    );
                }
            }
            let flow = admin.flow_status().await?;
            print!("{}", weir_tools::cli::quota::format_flow_status(&flow));
            let queues = weir_client::queue_status(&client, "", "").await?;
            queue_cli::print_queues(&queues);
        }
        Cmd::Dlq(DlqCmd::List {
            topic,
            count,
            suffix,
        }) => queue_cli::dlq_list(&client, &topic, &suffix, count).await?,
        Cmd::Dlq(DlqCmd::Show {
            topic,
            count,
            suffix,
        }) => queue_cli::dlq_show(&client, &topic, &suffix, count).await?,
        Cmd::Dlq(DlqCmd::Replay {
            topic,
            to,
            filter,
            from_beginning,
            suffix,
        }) => queue_cli::dlq_replay(&client, &topic, &suffix, to, &filter, from_beginning).await?,
        Cmd::Queue(QueueCmd::Status { group, topic }) => {
            queue_cli::queue_status(&client, &group, &topic).await?
        }
        Cmd::Quota(cmd) => weir_tools::cli::quota::run(&admin, cmd).await?,
        Cmd::Offsets { group } => {
            for e in admin.group_offsets(&group).await? {
                println!("{}/{}\t{}", e.topic, e.shard, e.offset);
            }
        }
    }
    Ok(())
}

async fn produce(
    client: &Client,
    topic: String,
    key: Option<String>,
    key_field: Option<usize>,
    priority: u8,
    complexity: u8,
    acks: AckArg,
) -> anyhow::Result<()> {
    if key_field == Some(0) {
        bail!("--key-field is 1-based");
    }
    let producer = Producer::builder(client)
        .acks(match acks {
            AckArg::None => Acks::None,
            AckArg::Leader => Acks::Leader,
            AckArg::Durable => Acks::Durable,
        })
        .priority(priority)
        .complexity(complexity)
        .build()
        .await?;
    let mut pending = Vec::new();
    let stdin = std::io::stdin();
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading standard input")?;
        let mut rec = ProducerRecord::new(topic.clone(), line.clone());
        let k = match key_field {
            Some(f) => Some(
                line.split_whitespace()
                    .nth(f - 1)
                    .with_context(|| format!("line {} has no field {f}", n + 1))?
                    .to_string(),
            ),
            None => key.clone(),
        };
        if let Some(k) = k {
            rec = rec.key(k);
        }
        pending.push(producer.send(rec).await?);
        // Bound the acknowledgements held in memory.
        if pending.len() >= 10_000 {
            for p in pending.drain(..) {
                p.await?;
            }
        }
    }
    producer.flush().await?;
    let mut failed = 0usize;
    let mut first_err = None;
    let total = pending.len();
    for p in pending {
        if let Err(e) = p.await {
            failed += 1;
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        bail!("{failed} of the last {total} messages were not acknowledged: {e}");
    }
    Ok(())
}

async fn consume(
    client: &Client,
    topic: String,
    group: Option<String>,
    from_beginning: bool,
    count: Option<usize>,
    timeout_ms: u64,
    (format, order): (Format, DeliveryOrder),
) -> anyhow::Result<()> {
    let mut b = Consumer::builder(client)
        .topic(topic)
        .order(order)
        .auto_commit(false)
        .fetch_max_wait(Duration::from_millis(timeout_ms.min(500)))
        .reset(if from_beginning {
            OffsetReset::Earliest
        } else {
            OffsetReset::Latest
        });
    if let Some(g) = &group {
        b = b.group(g.clone());
    }
    let mut consumer = b.build()?;
    let classes = client.class_map();
    let mut printed = 0usize;
    let out = std::io::stdout();
    let mut out = out.lock();
    loop {
        let want = count.map_or(1000, |c| (c - printed).min(1000));
        if want == 0 {
            break;
        }
        let msgs = consumer
            .poll(want, Duration::from_millis(timeout_ms))
            .await?;
        if msgs.is_empty() {
            break;
        }
        for m in msgs {
            match format {
                Format::Value => {
                    out.write_all(&m.value)?;
                    out.write_all(b"\n")?;
                }
                Format::Meta => {
                    write!(
                        out,
                        "{} p{} c{} {}/{}@{} key={} ",
                        classes.class_of(m.priority),
                        m.priority,
                        m.complexity,
                        m.topic,
                        m.shard,
                        m.offset,
                        String::from_utf8_lossy(&m.key)
                    )?;
                    out.write_all(&m.value)?;
                    out.write_all(b"\n")?;
                }
                Format::Json => {
                    let headers: serde_json::Map<String, serde_json::Value> = m
                        .headers
                        .iter()
                        .map(|h| (h.name.clone(), String::from_utf8_lossy(&h.value).into()))
                        .collect();
                    let v = serde_json::json!({
                        "topic": &*m.topic, "shard": m.shard, "offset": m.offset,
                        "key": String::from_utf8_lossy(&m.key), "priority": m.priority,
                        "complexity": m.complexity, "timestamp_ms": m.timestamp_ms,
                        "headers": headers, "value": String::from_utf8_lossy(&m.value),
                    });
                    writeln!(out, "{v}")?;
                }
            }
            printed += 1;
        }
        out.flush()?;
    }
    if group.is_some() {
        consumer.commit().await.context("committing offsets")?;
        consumer.close().await?;
    }
    Ok(())
}
