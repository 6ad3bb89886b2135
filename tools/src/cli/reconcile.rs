//! `weir reconcile list|replay T`: the records a returning primary had to cut from its
//! copy of `T` (never acknowledged as mirrored), kept in `T.reconcile` with their
//! origin headers (PROTOCOL.md §"Reconciliation records"), and writing them back.
//!
//! The replay rule (`--rule`):
//! - `last-write-wins` (the default): a kept record with a key goes back unless `T`
//!   already holds a record with the same key and a timestamp at or after its own (a
//!   later write of that key won); a keyless record always goes back.
//! - `all`: every kept record goes back.
//!
//! Either way a record goes back at most once: each copy carries
//! `weir.reconciled_from` = `<node>/<shard>/<offset>/<epoch>` of the kept record, and a
//! replay skips kept records whose origin `T` already names — and repeats in
//! `T.reconcile` (a node that died between keeping and cutting keeps them again).
//! Replayed records keep their key, value, headers (minus `weir.reconcile.*`),
//! priority, complexity and timestamp.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use weir_client::{Acks, Admin, Client, Producer, ProducerRecord};
use weir_protocol::batch::Record;
use weir_protocol::headers::{
    RECONCILED_FROM, RECONCILE_EPOCH, RECONCILE_NODE, RECONCILE_OFFSET, RECONCILE_PREFIX,
    RECONCILE_SHARD, RECONCILE_SUFFIX,
};
use weir_protocol::ErrorCode;

use super::dlq::read_range;

/// `weir reconcile ...`.
#[derive(Subcommand, Debug)]
pub enum ReconcileCmd {
    /// The records kept in `TOPIC.reconcile`: origin node, shard, offset, epoch, key.
    List {
        topic: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Writes the kept records back into TOPIC by `--rule`.
    Replay {
        topic: String,
        #[arg(long, value_enum, default_value_t = Rule::LastWriteWins)]
        rule: Rule,
        /// Say what would go back without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which kept records go back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rule {
    /// A keyed record unless a record of the same key with a timestamp at or after
    /// its own is in the topic; keyless records always.
    LastWriteWins,
    /// Every kept record.
    All,
}

pub async fn run(client: &Client, cmd: ReconcileCmd) -> anyhow::Result<()> {
    match cmd {
        ReconcileCmd::List { topic, limit } => list(client, &topic, limit).await,
        ReconcileCmd::Replay {
            topic,
            rule,
            dry_run,
        } => {
            let s = replay(client, &topic, rule, dry_run).await?;
            println!(
                "{} {} of {} kept records from {topic}{RECONCILE_SUFFIX} to {topic} ({} a later write of the key won, {} already replayed, {} repeats)",
                if dry_run { "would replay" } else { "replayed" },
                s.replayed,
                s.kept,
                s.newer_in_topic,
                s.already_replayed,
                s.repeats
            );
            Ok(())
        }
    }
}

fn header<'a>(r: &'a Record, name: &str) -> &'a str {
    r.headers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| std::str::from_utf8(&h.value).ok())
        .unwrap_or("-")
}

/// `<node>/<shard>/<offset>/<epoch>` of a kept record.
fn origin(r: &Record) -> String {
    format!(
        "{}/{}/{}/{}",
        header(r, RECONCILE_NODE),
        header(r, RECONCILE_SHARD),
        header(r, RECONCILE_OFFSET),
        header(r, RECONCILE_EPOCH)
    )
}

/// Records read per fetch round while walking a topic.
const PAGE: usize = 10_000;

/// Calls `f` with every record of `topic`, all shards, oldest first per shard, up to
/// what each shard's primary serves now (not the high-water mark a metadata answer
/// gave, which a mirror may report a moment late), a page at a time so memory stays
/// bounded however large the topic is; `false` when the topic does not exist.
async fn walk(client: &Client, topic: &str, mut f: impl FnMut(Record)) -> anyhow::Result<bool> {
    let meta = match Admin::new(client.clone()).describe_topic(topic).await {
        Ok(m) => m,
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => return Ok(false),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("describing {topic}"))),
    };
    for s in meta.shards {
        let mut at = s.log_start_offset;
        loop {
            let page = read_range(client, topic, s.shard, at, u64::MAX, PAGE).await?;
            let Some(last) = page.last().map(|r| r.offset) else {
                break;
            };
            page.into_iter().for_each(&mut f);
            at = last + 1;
        }
    }
    Ok(true)
}

/// Every record of `topic` (for the kept records, which only cut suffixes fill);
/// `None` when the topic does not exist.
async fn read_all(client: &Client, topic: &str) -> anyhow::Result<Option<Vec<Record>>> {
    let mut out = Vec::new();
    Ok(walk(client, topic, |r| out.push(r)).await?.then_some(out))
}

async fn list(client: &Client, topic: &str, limit: usize) -> anyhow::Result<()> {
    let kept_topic = format!("{topic}{RECONCILE_SUFFIX}");
    let Some(kept) = read_all(client, &kept_topic).await? else {
        println!("nothing kept for {topic} ({kept_topic} does not exist)");
        return Ok(());
    };
    println!("ORIGIN (node/shard/offset/epoch)  TIMESTAMP_MS   KEY");
    for r in kept.iter().take(limit) {
        println!(
            "{:<33} {:<14} {}",
            origin(r),
            r.timestamp_ms,
            String::from_utf8_lossy(&r.key)
        );
    }
    println!("{} kept records", kept.len());
    Ok(())
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub kept: usize,
    pub replayed: usize,
    pub newer_in_topic: usize,
    pub already_replayed: usize,
    pub repeats: usize,
}

/// What a replay needs to know of the topic: each key's latest timestamp and the
/// origins earlier replays wrote back.
#[derive(Debug, Default)]
pub struct TopicIndex {
    latest: HashMap<bytes::Bytes, i64>,
    replayed: HashSet<String>,
}

impl TopicIndex {
    /// Folds one record of the topic in.
    pub fn add(&mut self, r: &Record) {
        if !r.key.is_empty() {
            let t = self.latest.entry(r.key.clone()).or_insert(i64::MIN);
            *t = (*t).max(r.timestamp_ms);
        }
        let from = header(r, RECONCILED_FROM);
        if from != "-" {
            self.replayed.insert(from.to_string());
        }
    }
}

/// Chooses the kept records that go back under `rule`, given what the topic holds.
pub fn choose<'a>(
    kept: &'a [Record],
    index: &TopicIndex,
    rule: Rule,
) -> (Vec<&'a Record>, ReplayStats) {
    let (latest, replayed) = (&index.latest, &index.replayed);
    let mut stats = ReplayStats {
        kept: kept.len(),
        ..ReplayStats::default()
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in kept {
        let o = origin(r);
        if !seen.insert(o.clone()) {
            stats.repeats += 1;
        } else if replayed.contains(&o) {
            stats.already_replayed += 1;
        } else if rule == Rule::LastWriteWins
            && !r.key.is_empty()
            && latest.get(&r.key).is_some_and(|&t| t >= r.timestamp_ms)
        {
            stats.newer_in_topic += 1;
        } else {
            out.push(r);
        }
    }
    stats.replayed = out.len();
    (out, stats)
}

async fn replay(
    client: &Client,
    topic: &str,
    rule: Rule,
    dry_run: bool,
) -> anyhow::Result<ReplayStats> {
    let kept_topic = format!("{topic}{RECONCILE_SUFFIX}");
    let kept = read_all(client, &kept_topic).await?.unwrap_or_default();
    let mut index = TopicIndex::default();
    if !walk(client, topic, |r| index.add(&r)).await? {
        anyhow::bail!("no topic {topic}");
    }
    let (chosen, stats) = choose(&kept, &index, rule);
    if dry_run || chosen.is_empty() {
        return Ok(stats);
    }
    let producer = Producer::builder(client)
        .acks(Acks::Mirrored)
        .build()
        .await?;
    let mut acks = Vec::with_capacity(chosen.len());
    for r in chosen {
        let mut rec = ProducerRecord::new(topic.to_string(), r.value.clone())
            .priority(r.priority)
            .complexity(r.complexity)
            .timestamp_ms(r.timestamp_ms)
            .header(RECONCILED_FROM, origin(r));
        if !r.key.is_empty() {
            rec = rec.key(r.key.clone());
        }
        for h in r
            .headers
            .iter()
            .filter(|h| !h.name.starts_with(RECONCILE_PREFIX))
        {
            rec = rec.header(h.name.clone(), h.value.clone());
        }
        acks.push(producer.send(rec).await?);
    }
    for a in acks {
        a.await.context("writing a kept record back")?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use weir_protocol::batch::Header;

    fn kept(key: &str, ts: i64, offset: u64) -> Record {
        let h = |n: &str, v: String| Header {
            name: n.to_string(),
            value: Bytes::from(v),
        };
        Record {
            offset,
            priority: 5,
            complexity: 1,
            timestamp_ms: ts,
            key: Bytes::from(key.to_string()),
            value: Bytes::from(format!("v{offset}")),
            headers: vec![
                h(RECONCILE_NODE, "1".into()),
                h(RECONCILE_SHARD, "0".into()),
                h(RECONCILE_OFFSET, offset.to_string()),
                h(RECONCILE_EPOCH, "2".into()),
            ],
        }
    }

    fn index(records: &[Record]) -> TopicIndex {
        let mut i = TopicIndex::default();
        records.iter().for_each(|r| i.add(r));
        i
    }

    fn current(key: &str, ts: i64) -> Record {
        Record {
            offset: 0,
            priority: 5,
            complexity: 1,
            timestamp_ms: ts,
            key: Bytes::from(key.to_string()),
            value: Bytes::from_static(b"x"),
            headers: vec![],
        }
    }

    #[test]
    fn last_write_wins_by_timestamp_and_nothing_goes_back_twice() {
        let kept = vec![
            kept("a", 100, 10), // a later write of "a" (200) is in the topic: skipped
            kept("b", 300, 11), // "b" in the topic is older (200): back
            kept("", 50, 12),   // keyless: back
            kept("c", 100, 13), // "c" equal timestamp in the topic: the topic's wins
            kept("b", 300, 11), // a repeat of offset 11
        ];
        let topic = vec![current("a", 200), current("b", 200), current("c", 100)];
        let (out, s) = choose(&kept, &index(&topic), Rule::LastWriteWins);
        let offsets: Vec<u64> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![11, 12]);
        assert_eq!(
            s,
            ReplayStats {
                kept: 5,
                replayed: 2,
                newer_in_topic: 2,
                already_replayed: 0,
                repeats: 1
            }
        );
        let (all, _) = choose(&kept, &index(&topic), Rule::All);
        assert_eq!(all.len(), 4, "every kept record once");
        // After the replay the topic names the origins it took: nothing goes back again.
        let mut after = topic.clone();
        for r in &out {
            let mut copy = current(std::str::from_utf8(&r.key).unwrap(), r.timestamp_ms);
            copy.headers.push(Header {
                name: RECONCILED_FROM.to_string(),
                value: Bytes::from(origin(r)),
            });
            after.push(copy);
        }
        let (again, s) = choose(&kept, &index(&after), Rule::All);
        assert_eq!(again.len(), 2, "only the ones never replayed (a and c)");
        assert_eq!(s.already_replayed, 2);
    }
}
