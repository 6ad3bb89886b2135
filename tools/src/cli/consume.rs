//! `weir consume TOPIC`: print messages, one per line, by offset (`--mode stream`,
//! optionally as a group that commits what was printed) or leased from a queue
//! (`--mode queue`, in `queue.rs`).
//!
//! A group commits exactly what reached standard output, on every way out: the
//! timeout, `--count`, a closed pipe (`| head`), SIGINT/SIGTERM, and an error (what
//! was printed before it is committed, then the error is reported), plus every
//! `--commit-interval-ms` while it runs. A shard whose messages were only partly
//! written is moved back to the first one not written before the commit, so a run
//! cut short by a closed pipe resumes exactly there.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use weir_client::{Admin, Client, Consumer, DeliveryOrder, Message, OffsetReset};
use weir_protocol::classes::ClassMap;

use super::{Interrupted, Signals};

/// Most messages one poll asks for, so a slow terminal never holds many.
const POLL_MAX: usize = 1000;
/// Longest and shortest wait of one poll: signals, commits and the idle timer are
/// looked at between polls, and a poll needs some time for a fetch round at all.
const POLL_WAIT_MAX: Duration = Duration::from_millis(500);
const POLL_WAIT_MIN: Duration = Duration::from_millis(50);
/// While the consumer is still behind the end offsets the topic had at start, it
/// waits at least this long for records before it gives up (`--timeout-ms` only
/// counts once it has caught up), so `--timeout-ms 0` prints what was waiting.
const CATCH_UP_IDLE_MAX: Duration = Duration::from_secs(10);
/// Longest wait for the final commit; a broker that is gone must not hold the exit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `weir consume --help` says below the flags.
pub const AFTER_HELP: &str = "\
With --group, what was printed is committed every --commit-interval-ms and on every \
way out: the timeout, --count, a closed pipe (| head), Ctrl-C / SIGTERM and errors. \
The next run of the group starts after the last message written to standard output.

Exit codes: 0 done (timeout, --count or closed pipe); 1 error (what was printed \
before it is committed); 130 / 143 interrupted by SIGINT / SIGTERM (after committing).

Queue mode (--mode queue) leases each record, prints it and acks it; while the \
queue's circuit breaker is open, nothing is leased and a note on stderr says so.";

/// Flags of `weir consume`.
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consume as this group and commit what was printed.
    #[arg(long)]
    pub group: Option<String>,
    /// Start at the earliest offset when there is no committed one.
    #[arg(long)]
    pub from_beginning: bool,
    /// Start shard SHARD at OFFSET, whatever was committed (repeatable: `--offset
    /// 0=1200 --offset 3=0`). With --group the next commit records it: the way to move
    /// a group past a damaged batch, whose error names its offset.
    #[arg(long, value_name = "SHARD=OFFSET", value_parser = parse_start)]
    pub offset: Vec<(u32, u64)>,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<usize>,
    /// Exit when nothing arrives for this long, once the messages that were waiting at
    /// start are printed (0: print what is waiting, then exit).
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// With --group: commit what was printed this often while running.
    #[arg(long, default_value_t = 5000)]
    pub commit_interval_ms: u64,
    #[arg(long, value_enum, default_value_t = Format::Value)]
    pub format: Format,
    /// `offset` (stored order) or `priority` (P0 first, weighted fair with aging).
    #[arg(long, value_enum, default_value_t = OrderArg::Offset)]
    pub order: OrderArg,
    /// `stream` reads by offset; `queue` leases each record and acks (or nacks) it.
    #[arg(long, value_enum, default_value_t = Mode::Stream)]
    pub mode: Mode,
    /// Queue mode: nack (retriable) every record instead of acking it.
    #[arg(long)]
    pub nack_all: bool,
    /// Queue mode: wait this long before acking each record.
    #[arg(long, default_value_t = 0)]
    pub ack_after_ms: u64,
}

/// `--mode`: read a stream by offset, or lease from a queue.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Stream,
    Queue,
}

/// `--order` of stream mode.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OrderArg {
    Offset,
    Priority,
}

/// `--format`: how each message is printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// The value only.
    Value,
    /// Class, priority, complexity, shard/offset and key before the value.
    Meta,
    /// One JSON object per message with every field.
    Json,
}

/// Why the print loop ended.
enum End {
    /// Timeout, `--count`, or the reader closed the pipe.
    Done,
    Signal(i32),
    Failed(anyhow::Error),
}

/// Polls and prints until `--count` messages, `--timeout-ms` of silence, a closed
/// pipe, a signal or an error; a group commits what was printed on each of them.
pub async fn consume_stream(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    let order = match args.order {
        OrderArg::Offset => DeliveryOrder::Offset,
        OrderArg::Priority => DeliveryOrder::Priority,
    };
    let wait = Duration::from_millis(args.timeout_ms).clamp(POLL_WAIT_MIN, POLL_WAIT_MAX);
    // Where "caught up" is: the end of every shard as the topic is now.
    let ends: HashMap<u32, u64> = Admin::new(client.clone())
        .describe_topic(&args.topic)
        .await
        .with_context(|| format!("no topic {}", args.topic))?
        .shards
        .iter()
        .map(|s| (s.shard, s.high_watermark))
        .collect();
    let mut b = Consumer::builder(client)
        .topic(args.topic.clone())
        .order(order)
        .auto_commit(false)
        .fetch_max_wait(wait)
        .reset(if args.from_beginning {
            OffsetReset::Earliest
        } else {
            OffsetReset::Latest
        });
    if let Some(g) = &args.group {
        b = b.group(g.clone());
    }
    for &(shard, offset) in &args.offset {
        anyhow::ensure!(
            ends.contains_key(&shard),
            "--offset {shard}={offset}: topic {} has no shard {shard}",
            args.topic
        );
        b = b.start_at(args.topic.clone(), shard, offset);
    }
    let mut consumer = b.build()?;
    let classes = client.class_map();
    let commit_every = Duration::from_millis(args.commit_interval_ms);
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut printed = 0usize;
    let mut uncommitted = false;
    let mut last_commit = Instant::now();
    let mut idle_since = Instant::now();
    let mut out = std::io::stdout().lock();
    let end = loop {
        let want = args.count.map_or(POLL_MAX, |c| (c - printed).min(POLL_MAX));
        if want == 0 {
            break End::Done;
        }
        let polled = tokio::select! {
            r = consumer.poll(want, wait) => r,
            sig = signals.recv() => break End::Signal(sig),
        };
        let msgs = match polled {
            Ok(m) => m,
            Err(e) => {
                // Messages fetched before the failure are still buffered: print them
                // (without fetching again) so the commit covers everything before it.
                if let Ok(rest) = consumer.poll(want, Duration::ZERO).await {
                    if print_all(&mut out, &mut consumer, &rest, &args, &classes).is_ok() {
                        printed += rest.len();
                    }
                }
                break End::Failed(anyhow::Error::new(e).context("reading messages"));
            }
        };
        if msgs.is_empty() {
            let caught_up = consumer
                .positions()
                .iter()
                .all(|p| p.offset >= ends.get(&p.shard).copied().unwrap_or(0));
            let limit = if caught_up {
                timeout
            } else {
                timeout.max(CATCH_UP_IDLE_MAX)
            };
            if idle_since.elapsed() >= limit {
                break End::Done;
            }
        } else {
            idle_since = Instant::now();
            let n = msgs.len();
            if let Err(w) = print_all(&mut out, &mut consumer, &msgs, &args, &classes) {
                break write_end(w);
            }
            printed += n;
            uncommitted = true;
        }
        if args.group.is_some() && uncommitted && last_commit.elapsed() >= commit_every {
            last_commit = Instant::now();
            match consumer.commit().await {
                Ok(()) => uncommitted = false,
                // A failed periodic commit is retried at the next one and at exit.
                Err(e) => eprintln!("weir consume: commit failed (will retry): {e}"),
            }
        }
    };
    let positions = describe_positions(&consumer);
    // With a group, always: even with nothing printed, the commit fixes where the
    // group starts (an `OffsetReset::Latest` position would move on otherwise).
    if args.group.is_some() {
        let committed = tokio::select! {
            r = tokio::time::timeout(COMMIT_TIMEOUT, consumer.commit()) => match r {
                Ok(r) => r.context("committing what was printed"),
                Err(_) => Err(anyhow::anyhow!("committing what was printed: no answer within {COMMIT_TIMEOUT:?}")),
            },
            sig = signals.recv() => Err(anyhow::anyhow!("interrupted again (signal {sig}) while committing")),
        };
        if let Err(e) = committed {
            return Err(match end {
                End::Failed(first) => anyhow::anyhow!("{first:#}; then {e:#}"),
                _ => e,
            });
        }
        let _ = tokio::time::timeout(COMMIT_TIMEOUT, consumer.close()).await;
    }
    match end {
        End::Done => Ok(()),
        End::Signal(signal) => {
            if args.group.is_some() {
                eprintln!("weir consume: interrupted after {printed} messages; committed what was printed");
            }
            Err(Interrupted { signal }.into())
        }
        End::Failed(e) => {
            if args.group.is_some() {
                Err(e.context(format!(
                    "committed what was printed ({printed} messages): {positions}"
                )))
            } else {
                Err(e)
            }
        }
    }
}

/// The end of a loop whose write to standard output failed: a closed pipe is the
/// reader being done (`| head`), anything else an error.
fn write_end(e: std::io::Error) -> End {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        End::Done
    } else {
        End::Failed(anyhow::Error::new(e).context("writing to standard output"))
    }
}

/// Positions as `shard@offset`, for error messages.
fn describe_positions(consumer: &Consumer) -> String {
    let p: Vec<String> = consumer
        .positions()
        .iter()
        .map(|p| format!("shard {} at offset {}", p.shard, p.offset))
        .collect();
    if p.is_empty() {
        "no shards assigned".into()
    } else {
        p.join(", ")
    }
}

/// Prints `msgs` and flushes. When a write fails, every shard with a message not
/// written is moved back to its lowest such offset, so that a commit covers only
/// what was written (in priority order this may print some messages again: at
/// least once, never lost).
fn print_all(
    out: &mut impl Write,
    consumer: &mut Consumer,
    msgs: &[Message],
    args: &ConsumeArgs,
    classes: &ClassMap,
) -> std::io::Result<()> {
    let mut failed = None;
    for (i, m) in msgs.iter().enumerate() {
        if let Err(e) = write_message(out, m, args.format, classes) {
            failed = Some((i, e));
            break;
        }
    }
    let (first_unwritten, e) = match failed {
        None => match out.flush() {
            Ok(()) => return Ok(()),
            // Which lines the flush lost is unknown: treat the whole poll as unwritten.
            Err(e) => (0, e),
        },
        Some(f) => f,
    };
    let positions: HashMap<u32, u64> = consumer
        .positions()
        .into_iter()
        .map(|p| (p.shard, p.offset))
        .collect();
    let mut back: HashMap<u32, u64> = HashMap::new();
    for m in &msgs[first_unwritten..] {
        let o = back.entry(m.shard).or_insert(m.offset);
        *o = (*o).min(m.offset);
    }
    for (shard, offset) in back {
        let to = positions.get(&shard).map_or(offset, |p| (*p).min(offset));
        // Cannot fail: the shard was just polled, so it is assigned.
        let _ = consumer.seek(&msgs[0].topic, shard, to);
    }
    Err(e)
}

/// Prints one message as one line in `format`.
pub(super) fn write_message(
    out: &mut impl Write,
    m: &Message,
    format: Format,
    classes: &ClassMap,
) -> std::io::Result<()> {
    match format {
        Format::Value => {
            out.write_all(&m.value)?;
            out.write_all(b"\n")
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
            out.write_all(b"\n")
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
            writeln!(out, "{v}")
        }
    }
}

/// `SHARD=OFFSET` of `--offset`.
fn parse_start(s: &str) -> Result<(u32, u64), String> {
    let (shard, offset) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SHARD=OFFSET"))?;
    let shard = shard
        .trim()
        .parse()
        .map_err(|_| format!("{shard:?} is not a shard number"))?;
    let offset = offset
        .trim()
        .parse()
        .map_err(|_| format!("{offset:?} is not an offset"))?;
    Ok((shard, offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use weir_protocol::batch::Header;

    fn message() -> Message {
        Message {
            topic: "orders".into(),
            shard: 2,
            offset: 41,
            priority: 1,
            complexity: 3,
            timestamp_ms: 1_700_000_000_000,
            key: Bytes::from_static(b"user-1"),
            value: Bytes::from_static(b"hello"),
            headers: vec![Header {
                name: "trace".into(),
                value: Bytes::from_static(b"t-1"),
            }],
        }
    }

    fn printed(format: Format) -> String {
        let mut out = Vec::new();
        write_message(&mut out, &message(), format, &ClassMap::default()).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn each_format_prints_one_line_per_message() {
        assert_eq!(printed(Format::Value), "hello\n");
        assert_eq!(
            printed(Format::Meta),
            "P0 p1 c3 orders/2@41 key=user-1 hello\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(printed(Format::Json).trim_end()).expect("one JSON object");
        assert_eq!(
            json,
            serde_json::json!({
                "topic": "orders", "shard": 2, "offset": 41, "key": "user-1",
                "priority": 1, "complexity": 3, "timestamp_ms": 1_700_000_000_000i64,
                "headers": {"trace": "t-1"}, "value": "hello",
            })
        );
    }
}
