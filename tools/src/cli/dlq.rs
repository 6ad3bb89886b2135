//! `weir dlq list|show|replay`: read a topic's dead-letter topic (`<topic><suffix>`)
//! straight from its shards, and send its records back.
//!
//! The broker writes why a record died into `weir.dlq.*` headers; list and the
//! replay filters read those, replay strips them. The broker creates a dead-letter
//! topic with its first dead letter, so a missing one (of a topic that exists) means
//! zero dead letters, not an error.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;
use weir_client::{Admin, Client, Producer, ProducerRecord};
use weir_protocol::batch::{Batch, Record};
use weir_protocol::headers::{DLQ_PREFIX, REPLAYED_FROM};
use weir_protocol::messages::*;
use weir_protocol::ErrorCode;

/// Dead-letter commands.
#[derive(Subcommand, Debug)]
pub enum DlqCmd {
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
        filter: Vec<Filter>,
        /// Start at the dead-letter topic's beginning, not the remembered position.
        #[arg(long)]
        from_beginning: bool,
        #[arg(long, default_value = ".dlq")]
        suffix: String,
    },
}

/// Runs one dlq command.
pub async fn run(client: &Client, cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::List {
            topic,
            count,
            suffix,
        } => dlq_list(client, &topic, &suffix, count).await,
        DlqCmd::Show {
            topic,
            count,
            suffix,
        } => dlq_show(client, &topic, &suffix, count).await,
        DlqCmd::Replay {
            topic,
            to,
            filter,
            from_beginning,
            suffix,
        } => dlq_replay(client, &topic, &suffix, to, &filter, from_beginning).await,
    }
}

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
pub(super) async fn read_range(
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

/// The dead-letter topic `dlq` of `topic`, or `None` when nothing was dead-lettered
/// yet (it does not exist, but `topic` does).
async fn dlq_meta(
    client: &Client,
    topic: &str,
    dlq: &str,
) -> anyhow::Result<Option<TopicMetadata>> {
    let admin = Admin::new(client.clone());
    match admin.describe_topic(dlq).await {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
            admin
                .describe_topic(topic)
                .await
                .with_context(|| format!("no topic {topic}"))?;
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("describing {dlq}"))),
    }
}

/// Every dead-letter record of `topic` (all shards, oldest first per shard), at most
/// `limit`, with its shard; `None` when nothing was dead-lettered yet.
async fn read_dlq(
    client: &Client,
    topic: &str,
    dlq: &str,
    limit: usize,
) -> anyhow::Result<Option<Vec<(u32, Record)>>> {
    let Some(meta) = dlq_meta(client, topic, dlq).await? else {
        return Ok(None);
    };
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
    Ok(Some(out))
}

/// `weir dlq list TOPIC`: one line per dead-lettered record.
pub async fn dlq_list(
    client: &Client,
    topic: &str,
    suffix: &str,
    limit: usize,
) -> anyhow::Result<()> {
    let dlq = format!("{topic}{suffix}");
    let Some(recs) = read_dlq(client, topic, &dlq, limit).await? else {
        println!("0 records in {dlq} (nothing dead-lettered yet)");
        return Ok(());
    };
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
    let Some(recs) = read_dlq(client, topic, &dlq, count).await? else {
        eprintln!("0 dead letters in {dlq} (nothing dead-lettered yet)");
        return Ok(());
    };
    let mut out = std::io::stdout().lock();
    for (shard, r) in recs {
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
    let target = to.clone().unwrap_or_else(|| topic.to_string());
    let Some(meta) = dlq_meta(client, topic, &dlq).await? else {
        println!("replayed 0 of 0 records from {dlq} to {target} (nothing dead-lettered yet)");
        return Ok(());
    };
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
            replayed_up_to(&committed, &dlq, s)
        };
        let recs = read_range(client, &dlq, s.shard, start, s.high_watermark, usize::MAX).await?;
        for r in recs {
            seen += 1;
            if !filters.iter().all(|f| f.matches(&r)) {
                continue;
            }
            // Without --to, a record goes back to the shard it died on (if that exists).
            let shard = to
                .is_none()
                .then(|| dlq_header(&r, "source_shard").parse::<u32>().ok())
                .flatten()
                .filter(|src| *src < target_shards);
            let from = format!("{dlq}/{}/{}", s.shard, r.offset);
            let rec = replay_record(&r, &target, shard, from);
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

/// Where an unfiltered replay of shard `s` resumes: the committed position, or the
/// shard's start if none was committed (or it was removed by retention).
fn replayed_up_to(committed: &[OffsetEntry], dlq: &str, s: &ShardMetadata) -> u64 {
    committed
        .iter()
        .find(|e| e.topic == dlq && e.shard == s.shard)
        .map_or(s.log_start_offset, |e| e.offset.max(s.log_start_offset))
}

/// The dead-lettered record `r` as a new record for `target`: same key, value,
/// priority, complexity and headers, minus the `weir.dlq.*` ones, plus
/// `weir.replayed_from` = `from` (`<dlq>/<shard>/<offset>`).
fn replay_record(r: &Record, target: &str, shard: Option<u32>, from: String) -> ProducerRecord {
    let mut rec = ProducerRecord::new(target.to_string(), r.value.clone())
        .priority(r.priority)
        .complexity(r.complexity)
        .header(REPLAYED_FROM, from);
    if !r.key.is_empty() {
        rec = rec.key(r.key.clone());
    }
    for h in r.headers.iter().filter(|h| !h.name.starts_with(DLQ_PREFIX)) {
        rec = rec.header(h.name.clone(), h.value.clone());
    }
    if let Some(shard) = shard {
        rec = rec.shard(shard);
    }
    rec
}
