//! `weir dlq ...`, `weir queue status` and `weir consume --mode queue`: the operator's
//! side of queue mode. Kept out of `weir.rs` so the main file stays a dispatcher.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use weir_client::{Admin, Client, Producer, ProducerRecord, QueueConfig, QueueConsumer};
use weir_protocol::batch::{Batch, Record};
use weir_protocol::messages::*;

/// Header prefix of the broker's dead-letter headers.
const DLQ_PREFIX: &str = "weir.dlq.";

fn header<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| std::str::from_utf8(&h.value).ok())
}

fn dlq_header<'a>(r: &'a Record, field: &str) -> &'a str {
    header(r, &format!("{DLQ_PREFIX}{field}")).unwrap_or("-")
}

/// Reads records `[from, to)` of one shard.
async fn read_range(
    client: &Client,
    topic: &str,
    shard: u32,
    from: u64,
    to: u64,
    limit: usize,
) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to && out.len() < limit {
        let req = FetchRequest {
            topic: topic.to_string(),
            shard,
            offset: at,
            max_bytes: 1 << 20,
            min_bytes: 0,
            max_wait_ms: 0,
        };
        let resp = match client.call(req).await? {
            weir_protocol::ResponseBody::Fetch(f) => f,
            other => bail!("unexpected response {:?}", other.api_key()),
        };
        let before = at;
        for b in resp.records.batches() {
            let batch = Batch::parse(b?)?;
            for r in batch.records() {
                if r.offset >= at && r.offset < to && out.len() < limit {
                    at = r.offset + 1;
                    out.push(r);
                }
            }
        }
        if at == before {
            break;
        }
    }
    Ok(out)
}

/// Every dead-letter record of `topic` (all shards, oldest first per shard), at most
/// `limit`, with its shard.
async fn read_dlq(client: &Client, dlq: &str, limit: usize) -> anyhow::Result<Vec<(u32, Record)>> {
    let meta = Admin::new(client.clone())
        .describe_topic(dlq)
        .await
        .with_context(|| format!("no dead-letter topic {dlq}"))?;
    let mut out = Vec::new();
    for s in meta.shards {
        let left = limit.saturating_sub(out.len());
        for r in read_range(
            client,
            dlq,
            s.shard,
            s.log_start_offset,
            s.high_watermark,
            left,
        )
        .await?
        {
            out.push((s.shard, r));
        }
    }
    Ok(out)
}

/// `weir dlq list TOPIC`: one line per dead-lettered record.
pub async fn dlq_list(
    client: &Client,
    topic: &str,
    suffix: &str,
    limit: usize,
) -> anyhow::Result<()> {
    let dlq = format!("{topic}{suffix}");
    let recs = read_dlq(client, &dlq, limit).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} records in {dlq}", recs.len())?;
    for (shard, r) in recs {
        writeln!(
            out,
            "{shard}/{}\tfrom {}/{}/{}\tgroup {}\tattempts {}\tlast failure {}\terror {}",
            r.offset,
            dlq_header(&r, "source_topic"),
            dlq_header(&r, "source_shard"),
            dlq_header(&r, "source_offset"),
            dlq_header(&r, "group"),
            dlq_header(&r, "attempts"),
            dlq_header(&r, "last_failure_ms"),
            dlq_header(&r, "error"),
        )?;
    }
    Ok(())
}

/// `weir dlq show TOPIC --count N`: records in full, one JSON object per line.
pub async fn dlq_show(
    client: &Client,
    topic: &str,
    suffix: &str,
    count: usize,
) -> anyhow::Result<()> {
    let dlq = format!("{topic}{suffix}");
    let mut out = std::io::stdout().lock();
    for (shard, r) in read_dlq(client, &dlq, count).await? {
        let headers: serde_json::Map<String, serde_json::Value> = r
            .headers
            .iter()
            .map(|h| (h.name.clone(), String::from_utf8_lossy(&h.value).into()))
            .collect();
        let v = serde_json::json!({
            "dlq_shard": shard, "dlq_offset": r.offset,
            "key": String::from_utf8_lossy(&r.key), "priority": r.priority,
            "complexity": r.complexity, "timestamp_ms": r.timestamp_ms,
            "headers": headers, "value": String::from_utf8_lossy(&r.value),
        });
        writeln!(out, "{v}")?;
    }
    Ok(())
}

/// One `--filter` of `weir dlq replay`.
#[derive(Debug, Clone)]
pub enum Filter {
    /// `source_shard=N`
    SourceShard(u32),
    /// `source_offset=N` or `source_offset=A..B` (B excluded)
    SourceOffset(u64, u64),
    /// `group=G`
    Group(String),
    /// `error=TEXT` (the last error contains TEXT)
    Error(String),
    /// `header.NAME=VALUE`
    Header(String, String),
}

impl std::str::FromStr for Filter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: write KEY=VALUE"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("{s:?}: not a number"));
        Ok(match k {
            "source_shard" => Filter::SourceShard(num(v)? as u32),
            "source_offset" => match v.split_once("..") {
                Some((a, b)) => Filter::SourceOffset(num(a)?, num(b)?),
                None => Filter::SourceOffset(num(v)?, num(v)? + 1),
            },
            "group" => Filter::Group(v.to_string()),
            "error" => Filter::Error(v.to_string()),
            _ => match k.strip_prefix("header.") {
                Some(name) => Filter::Header(name.to_string(), v.to_string()),
                None => {
                    return Err(format!(
                        "{k:?}: filter on source_shard, source_offset, group, error or header.NAME"
                    ))
                }
            },
        })
    }
}

impl Filter {
    fn matches(&self, r: &Record) -> bool {
        let num = |f: &str| dlq_header(r, f).parse::<u64>().ok();
        match self {
            Filter::SourceShard(s) => num("source_shard") == Some(u64::from(*s)),
            Filter::SourceOffset(a, b) => num("source_offset").is_some_and(|o| o >= *a && o < *b),
            Filter::Group(g) => dlq_header(r, "group") == g,
            Filter::Error(t) => dlq_header(r, "error").contains(t.as_str()),
            Filter::Header(n, v) => header(r, n) == Some(v.as_str()),
        }
    }
}

/// `weir dlq replay TOPIC [--to T] [--filter ...]`. Without filters the position is
/// committed as group `<dlq>.replay`, so a second replay sends only newer records.
pub async fn dlq_replay(
    client: &Client,
    topic: &str,
    suffix: &str,
    to: Option<String>,
    filters: &[Filter],
    from_beginning: bool,
) -> anyhow::Result<()> {
    let dlq = format!("{topic}{suffix}");
    let admin = Admin::new(client.clone());
    let meta = admin
        .describe_topic(&dlq)
        .await
        .with_context(|| format!("no dead-letter topic {dlq}"))?;
    let target = to.clone().unwrap_or_else(|| topic.to_string());
    let target_shards = admin.describe_topic(&target).await?.shards.len() as u32;
    let group = format!("{dlq}.replay");
    let committed = admin.group_offsets(&group).await?;
    let producer = Producer::builder(client)
        .acks(weir_client::Acks::Durable)
        .build()
        .await?;
    let (mut seen, mut sent) = (0usize, 0usize);
    let mut commits = Vec::new();
    for s in &meta.shards {
        let start = if from_beginning || !filters.is_empty() {
            s.log_start_offset
        } else {
            committed
                .iter()
                .find(|e| e.topic == dlq && e.shard == s.shard)
                .map_or(s.log_start_offset, |e| e.offset.max(s.log_start_offset))
        };
        let recs = read_range(client, &dlq, s.shard, start, s.high_watermark, usize::MAX).await?;
        for r in recs {
            seen += 1;
            if !filters.iter().all(|f| f.matches(&r)) {
                continue;
            }
            let mut rec = ProducerRecord::new(target.clone(), r.value.clone())
                .priority(r.priority)
                .complexity(r.complexity)
                .header(
                    "weir.replayed_from",
                    format!("{dlq}/{}/{}", s.shard, r.offset),
                );
            if !r.key.is_empty() {
                rec = rec.key(r.key.clone());
            }
            for h in r.headers.iter().filter(|h| !h.name.starts_with(DLQ_PREFIX)) {
                rec = rec.header(h.name.clone(), h.value.clone());
            }
            if to.is_none() {
                if let Ok(src) = dlq_header(&r, "source_shard").parse::<u32>() {
                    if src < target_shards {
                        rec = rec.shard(src);
                    }
                }
            }
            producer.send(rec).await?;
            sent += 1;
        }
        commits.push(OffsetEntry {
            topic: dlq.clone(),
            shard: s.shard,
            offset: s.high_watermark,
        });
    }
    producer.flush().await?;
    if filters.is_empty() {
        let req = CommitOffsetsRequest {
            group,
            member_id: String::new(),
            generation: 0,
            offsets: commits,
        };
        client
            .call(req)
            .await
            .context("committing the replay position")?;
    }
    println!("replayed {sent} of {seen} records from {dlq} to {target}");
    Ok(())
}

fn breaker_name(code: u8) -> &'static str {
    match code {
        BREAKER_CLOSED => "closed",
        BREAKER_OPEN => "open",
        BREAKER_HALF_OPEN => "half-open",
        _ => "unknown",
    }
}

/// `weir queue status`: every queue's breaker, counters and shards.
pub async fn queue_status(client: &Client, group: &str, topic: &str) -> anyhow::Result<()> {
    let queues = weir_client::queue_status(client, group, topic).await?;
    print_queues(&queues);
    Ok(())
}

/// Prints queue states (also used by `weir status`).
pub fn print_queues(queues: &[QueueStatus]) {
    println!("{} queues", queues.len());
    for q in queues {
        println!(
            "  {} on {}: breaker {} for {} ms (window {} ok / {} failed); leased {} acked {} nacked {} expired {} redelivered {} dead-lettered {}",
            q.group, q.topic, breaker_name(q.breaker_state), q.breaker_state_ms,
            q.window_successes, q.window_failures, q.leased, q.acked, q.nacked, q.expired,
            q.redelivered, q.dead_lettered
        );
        for s in &q.shards {
            println!(
                "    shard {}: floor {} next {} hwm {}; leased {} waiting {} dying {} done above floor {}",
                s.shard, s.ack_floor, s.next_offset, s.high_watermark, s.leased, s.waiting,
                s.dying, s.done_above_floor
            );
        }
    }
}

/// `weir consume TOPIC --group G --mode queue`: leases records, prints their values,
/// then acks each after `ack_after_ms` (or nacks every one with `nack_all`).
pub async fn consume_queue(
    client: &Client,
    topic: &str,
    group: &str,
    count: Option<usize>,
    timeout_ms: u64,
    nack_all: bool,
    ack_after_ms: u64,
) -> anyhow::Result<()> {
    let q = QueueConsumer::with_config(
        client,
        group,
        topic,
        QueueConfig {
            consumer: "weir-cli".into(),
            lease: Duration::ZERO,
            max_wait: Duration::from_millis(timeout_ms.clamp(1, 500)),
        },
    );
    let mut handled = 0usize;
    let mut idle_since = Instant::now();
    let mut out = std::io::stdout().lock();
    while count.is_none_or(|c| handled < c) {
        let want = count.map_or(100, |c| (c - handled).min(100)) as u32;
        let msgs = q.fetch(want).await?;
        if msgs.is_empty() {
            if idle_since.elapsed() >= Duration::from_millis(timeout_ms) {
                break;
            }
            continue;
        }
        idle_since = Instant::now();
        for m in msgs {
            out.write_all(&m.value)?;
            out.write_all(b"\n")?;
            if nack_all {
                q.nack(&m, true, "nacked by weir consume --nack-all")
                    .await?;
            } else {
                if ack_after_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ack_after_ms)).await;
                }
                q.ack(&m).await?;
            }
            handled += 1;
        }
        out.flush()?;
    }
    Ok(())
}
