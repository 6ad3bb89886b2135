//! `weir produce TOPIC`: one record per line of standard input, and an exact account
//! of what became of every line.
//!
//! Lines are read on their own thread (`produce/input.rs`), sent through one
//! idempotent producer, and settled in input order through a window of at most
//! [`PENDING_MAX`] lines, so memory stays bounded however long the input is. Each
//! settled line gets one status — stored (shard, offset), skipped (a bad line under
//! `--on-bad-line skip`), failed (the broker refused it: certainly not stored) or
//! unknown (the connection or broker went away first: it may be stored) — written to
//! `--report` and counted in the summary on standard error. At the first line that
//! fails, reading stops; what was already sent still settles and is reported.
//! `--producer-id-file` (`produce/resume.rs`) lets a re-run skip what was stored.

mod input;
mod resume;

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures_util::FutureExt;
use weir_client::{Acks, Admin, Client, ClientError, DeliveryFuture, Producer, ProducerRecord};
use weir_protocol::batch::{BATCH_HEADER_BYTES, RECORD_MIN_BYTES};

use super::{Failed, Interrupted, Signals};
pub use input::InputFormat;
use input::{BadLine, RawLine};
use resume::{ResumeState, StoredEarlier};

/// Lines sent and not yet settled, at most.
const PENDING_MAX: usize = 10_000;
/// How often the `--producer-id-file` checkpoint is rewritten.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Problem lines named one by one on standard error; the rest are counted.
const LINES_NAMED_MAX: usize = 10;
/// The SDK's largest record (16 × its default `max_batch_bytes` of 1 MiB).
const SDK_RECORD_MAX: usize = 16 << 20;
/// `--acks none`: longest wait for the topic's end offsets to show what was sent.
const ACKS_NONE_SETTLE: Duration = Duration::from_secs(3);

/// What `weir produce --help` says below the flags.
pub const AFTER_HELP: &str = "\
Each line of standard input is one record (its bytes as they are with --format text, \
decoded with --format base64|hex). A summary goes to standard error; --report FILE \
writes one JSON object per line read: {\"line\":N,\"status\":S,...} with S one of \
stored (with shard and offset), stored_earlier (stored by an earlier run of the same \
--producer-id-file: shard and offset), done_earlier (a line an earlier run settled), \
skipped (with reason), failed (refused by the broker: not stored; with error), \
unknown (the connection or broker went away first: it may be stored; with error), \
sent (--acks none: nothing is confirmed).

A bad line (not base64/hex, no --key-field field, larger than the topic takes): \
--on-bad-line stop (the default) sends every line before it and nothing from it on; \
skip leaves it out, names it on standard error and goes on. Reading also stops at the \
first line that fails; lines sent before then are still settled and reported.

--producer-id-file FILE keeps the producer id and a checkpoint in FILE. Re-running \
with the same FILE and the same input (or that input with more lines appended) skips \
what an earlier run settled, finds in the log what it stored after its last \
checkpoint (reported as stored_earlier, not sent again), and sends the rest: a run \
cut short can be re-run without storing any line twice.

Exit codes: 0 every line read was stored (or skipped with --on-bad-line skip); 1 a \
line failed, was unknown, stopped the run, or --acks none lost records; 130 / 143 \
interrupted by SIGINT / SIGTERM (after settling what was sent).";

/// Flags of `weir produce`.
#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Shard key for every line.
    #[arg(long, conflicts_with = "key_field")]
    pub key: Option<String>,
    /// Take the key from this whitespace-separated field of each value (1-based).
    #[arg(long)]
    pub key_field: Option<usize>,
    /// Priority 1 (highest) … 10; 0 leaves it to the topic's default.
    #[arg(long, default_value_t = 5)]
    pub priority: u8,
    /// Complexity 1 … 5; 0 leaves it to the topic's default.
    #[arg(long, default_value_t = 1)]
    pub complexity: u8,
    #[arg(long, value_enum, default_value_t = AckArg::Leader)]
    pub acks: AckArg,
    /// How a line becomes a value: `text` (its bytes), `base64` or `hex`.
    #[arg(long, value_enum, default_value_t = InputFormat::Text)]
    pub format: InputFormat,
    /// A line that cannot be sent: `stop` before it, or `skip` it and go on.
    #[arg(long, value_enum, default_value_t = OnBadLine::Stop)]
    pub on_bad_line: OnBadLine,
    /// Write what became of each line to FILE, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Keep the idempotent producer id and a checkpoint in FILE, so a re-run with the
    /// same input skips what was stored (see below).
    #[arg(long, value_name = "FILE")]
    pub producer_id_file: Option<PathBuf>,
    /// No summary when every line was stored.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `--acks`: what each message waits for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AckArg {
    None,
    Leader,
    Durable,
    /// Every in-sync copy of the shard holds it (a cluster).
    Mirrored,
}

/// `--on-bad-line`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnBadLine {
    /// Send the lines before it, nothing from it on; exit 1.
    Stop,
    /// Leave it out, name it on standard error, go on.
    Skip,
}

/// A line read and not yet settled.
struct Pending {
    line: u64,
    /// [`resume::line_hash`] of the line as read.
    hash: u64,
    what: Fate,
}

/// What is known about a pending line.
enum Fate {
    Sent(DeliveryFuture),
    /// Refused by the producer before it was queued.
    Refused(ClientError),
    /// An earlier run stored it here (found in the log).
    StoredEarlier(u32, u64),
    Skipped(String),
    /// At or before the checkpoint of `--producer-id-file`.
    DoneEarlier(Option<String>),
}

/// What became of one line.
#[derive(Debug)]
enum Status {
    Stored(u32, u64),
    StoredEarlier(u32, u64),
    DoneEarlier,
    Skipped(String),
    Failed(String),
    Unknown(String),
    Sent,
}

/// Counts per status, and the first problems by line.
#[derive(Default)]
struct Tally {
    read: u64,
    stored: u64,
    stored_earlier: u64,
    done_earlier: u64,
    skipped: u64,
    failed: u64,
    unknown: u64,
    sent: u64,
    named: usize,
}

impl Tally {
    fn count(&mut self, line: u64, s: &Status) {
        let problem = match s {
            Status::Stored(..) => {
                self.stored += 1;
                None
            }
            Status::StoredEarlier(..) => {
                self.stored_earlier += 1;
                None
            }
            Status::DoneEarlier => {
                self.done_earlier += 1;
                None
            }
            Status::Sent => {
                self.sent += 1;
                None
            }
            Status::Skipped(r) => {
                self.skipped += 1;
                Some(format!("skipped: {r}"))
            }
            Status::Failed(e) => {
                self.failed += 1;
                Some(format!("failed (not stored): {e}"))
            }
            Status::Unknown(e) => {
                self.unknown += 1;
                Some(format!("unknown (may be stored): {e}"))
            }
        };
        if let Some(p) = problem {
            self.named += 1;
            if self.named <= LINES_NAMED_MAX {
                eprintln!("weir produce: line {line} {p}");
            } else if self.named == LINES_NAMED_MAX + 1 {
                eprintln!("weir produce: more problem lines follow; --report FILE lists them all");
            }
        }
    }

    fn clean(&self) -> bool {
        self.failed == 0 && self.unknown == 0
    }
}

/// Why reading stopped before the end of the input.
enum Stop {
    BadLine(u64, String),
    Failed(u64),
    Signal(i32),
    Read(std::io::Error),
}

/// `--report FILE`: one JSON object per line read, in input order.
struct Report(Option<std::io::BufWriter<std::fs::File>>);

impl Report {
    fn open(path: Option<&Path>) -> anyhow::Result<Report> {
        Ok(Report(match path {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            None => None,
        }))
    }

    fn write(&mut self, line: u64, s: &Status) -> std::io::Result<()> {
        let Some(w) = &mut self.0 else { return Ok(()) };
        let v = match s {
            Status::Stored(shard, offset) => {
                serde_json::json!({"line": line, "status": "stored", "shard": shard, "offset": offset})
            }
            Status::StoredEarlier(shard, offset) => {
                serde_json::json!({"line": line, "status": "stored_earlier", "shard": shard, "offset": offset})
            }
            Status::DoneEarlier => serde_json::json!({"line": line, "status": "done_earlier"}),
            Status::Skipped(r) => {
                serde_json::json!({"line": line, "status": "skipped", "reason": r})
            }
            Status::Failed(e) => serde_json::json!({"line": line, "status": "failed", "error": e}),
            Status::Unknown(e) => {
                serde_json::json!({"line": line, "status": "unknown", "error": e})
            }
            Status::Sent => serde_json::json!({"line": line, "status": "sent"}),
        };
        writeln!(w, "{v}")
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// The producing side: settles the window in order and keeps report, tally and the
/// `--producer-id-file` checkpoint up to date.
struct Settler {
    window: VecDeque<Pending>,
    tally: Tally,
    report: Report,
    /// The checkpoint, with the file it goes to.
    resume: Option<(PathBuf, ResumeState)>,
    /// Records an earlier run stored after its checkpoint, not yet matched.
    earlier: StoredEarlier,
    /// A line failed or is unknown: the checkpoint stays before it.
    broken: Option<u64>,
    last_checkpoint: Instant,
}

impl Settler {
    /// Settles the front line, waiting for it when `wait`; false when it is not ready.
    async fn settle_front(&mut self, wait: bool) -> anyhow::Result<bool> {
        let Some(front) = self.window.front_mut() else {
            return Ok(false);
        };
        let status = match &mut front.what {
            Fate::Sent(fut) => {
                let r = if wait {
                    Some(fut.await)
                } else {
                    fut.now_or_never()
                };
                match r {
                    None => return Ok(false),
                    Some(Ok(m)) if m.offset == u64::MAX => Status::Sent,
                    Some(Ok(m)) => Status::Stored(m.shard, m.offset),
                    Some(Err(e)) if e.certainly_not_stored() => Status::Failed(e.to_string()),
                    Some(Err(e)) => Status::Unknown(e.to_string()),
                }
            }
            Fate::Refused(e) => Status::Failed(e.to_string()),
            Fate::StoredEarlier(shard, offset) => Status::StoredEarlier(*shard, *offset),
            Fate::Skipped(r) => Status::Skipped(r.clone()),
            Fate::DoneEarlier(None) => Status::DoneEarlier,
            Fate::DoneEarlier(Some(r)) => Status::Skipped(r.clone()),
        };
        let p = self.window.pop_front().expect("front exists");
        self.tally.count(p.line, &status);
        self.report
            .write(p.line, &status)
            .context("writing the report")?;
        let settled_at = match status {
            Status::Stored(s, o) | Status::StoredEarlier(s, o) => Some(Some((s, o))),
            Status::Skipped(_) if !matches!(p.what, Fate::DoneEarlier(_)) => Some(None),
            Status::Failed(_) | Status::Unknown(_) => {
                self.broken.get_or_insert(p.line);
                None
            }
            _ => None,
        };
        if let (Some(at), None, Some((_, st))) = (settled_at, self.broken, &mut self.resume) {
            st.settle(p.hash, at);
        }
        Ok(true)
    }

    /// Settles every line that is ready, without waiting.
    async fn settle_ready(&mut self) -> anyhow::Result<()> {
        while self.settle_front(false).await? {}
        Ok(())
    }

    /// Rewrites the checkpoint file when due (or now, with `force`).
    async fn checkpoint(&mut self, producer: &Producer, force: bool) -> anyhow::Result<()> {
        if !force && self.last_checkpoint.elapsed() < CHECKPOINT_EVERY {
            return Ok(());
        }
        self.last_checkpoint = Instant::now();
        self.report.flush().context("writing the report")?;
        let Some((path, st)) = &mut self.resume else {
            return Ok(());
        };
        if let Some((id, epoch)) = producer.identity().await {
            if id == st.producer_id {
                st.epoch = st.epoch.max(epoch);
            }
        }
        st.checkpoint(&self.earlier)
            .save(path)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Sends every line of standard input and reports what became of each.
pub async fn run(client: &Client, args: ProduceArgs) -> anyhow::Result<()> {
    if args.key_field == Some(0) {
        bail!("--key-field is 1-based");
    }
    if args.producer_id_file.is_some() && matches!(args.acks, AckArg::None) {
        bail!("--producer-id-file needs acknowledgements to know what was stored: use --acks leader, durable or mirrored");
    }
    let mut signals = Signals::new()?;
    let meta = Admin::new(client.clone())
        .describe_topic(&args.topic)
        .await
        .with_context(|| format!("no topic {}", args.topic))?;
    let ends: BTreeMap<u32, u64> = meta
        .shards
        .iter()
        .map(|s| (s.shard, s.high_watermark))
        .collect();
    let topic_max = match meta.config.max_message_bytes as usize {
        0 => SDK_RECORD_MAX,
        n => n.min(SDK_RECORD_MAX),
    };
    // Key and value of one record, at most (the rest is batch and record headers).
    let payload_max = topic_max.saturating_sub(BATCH_HEADER_BYTES + RECORD_MIN_BYTES);
    let too_large = |n: usize| {
        format!(
            "is {n} bytes; topic {} takes at most {payload_max} bytes of key and value per record \
             (its max_message_bytes is {}; see `weir topic describe {}`)",
            args.topic, meta.config.max_message_bytes, args.topic
        )
    };

    let mut builder = Producer::builder(client)
        .acks(match args.acks {
            AckArg::None => Acks::None,
            AckArg::Leader => Acks::Leader,
            AckArg::Durable => Acks::Durable,
            AckArg::Mirrored => Acks::Mirrored,
        })
        .priority(args.priority)
        .complexity(args.complexity);
    let mut earlier_run: Option<ResumeState> = None;
    let mut earlier = StoredEarlier::default();
    if let Some(path) = &args.producer_id_file {
        if let Some(st) = ResumeState::load(path)? {
            if st.topic != args.topic {
                bail!(
                    "{} belongs to topic {}, not {}; use another file",
                    path.display(),
                    st.topic,
                    args.topic
                );
            }
            // The broker bumps past the newest epoch it knows for the id.
            builder = builder.resume(st.producer_id, st.epoch);
            earlier_run = Some(st);
        }
    }
    // Fence an earlier run that may still be sending before looking for what it
    // stored: a scan first would miss what it stores after the scan's snapshot.
    let producer = builder.build().await?;
    if let Some(st) = &earlier_run {
        earlier = resume::scan(client, &args.topic, st.producer_id, &st.since)
            .await
            .context("looking for what the earlier run stored")?;
    }
    let resume = match &args.producer_id_file {
        None => None,
        Some(path) => {
            let (id, epoch) = producer
                .identity()
                .await
                .context("the producer has no id")?;
            let st = match &earlier_run {
                Some(prev) => ResumeState {
                    producer_id: id,
                    epoch,
                    ..prev.clone()
                },
                None => ResumeState::new(&args.topic, id, epoch, &ends),
            };
            // Saved before anything is sent: a run killed at once still leaves the id.
            st.checkpoint(&earlier)
                .save(path)
                .with_context(|| format!("writing {}", path.display()))?;
            Some((path.clone(), st))
        }
    };
    let done_earlier = earlier_run.as_ref().map_or(0, |s| s.lines_done);
    // The hash of the lines read so far, to compare with the earlier run's.
    let mut check_hash = resume::HASH_START;
    let mut settler = Settler {
        window: VecDeque::new(),
        tally: Tally::default(),
        report: Report::open(args.report.as_deref())?,
        resume,
        earlier,
        broken: None,
        last_checkpoint: Instant::now(),
    };
    let reader_max = match args.format {
        InputFormat::Text => payload_max,
        InputFormat::Base64 => payload_max / 3 * 4 + 8,
        InputFormat::Hex => payload_max * 2 + 8,
    };
    let mut lines = input::spawn_reader(std::io::BufReader::new(std::io::stdin()), reader_max);
    let key = args.key.clone().map(Bytes::from);
    let mut stop = None;
    loop {
        settler.settle_ready().await?;
        while settler.window.len() >= PENDING_MAX {
            settler.settle_front(true).await?;
        }
        settler.checkpoint(&producer, false).await?;
        if let Some(line) = settler.broken {
            stop = Some(Stop::Failed(line));
            break;
        }
        let raw: RawLine = tokio::select! {
            l = lines.recv() => match l {
                None => break,
                Some(Ok(l)) => l,
                Some(Err(e)) => {
                    stop = Some(Stop::Read(e));
                    break;
                }
            },
            signal = signals.recv() => {
                stop = Some(Stop::Signal(signal));
                break;
            }
        };
        settler.tally.read += 1;
        let hash = match raw.too_long {
            Some(n) => resume::line_hash(format!("too long: {n}").as_bytes()),
            None => resume::line_hash(&raw.bytes),
        };
        let prepared = prepare(
            &args,
            &key,
            raw.bytes,
            raw.too_long,
            payload_max,
            &too_large,
        );
        if raw.number <= done_earlier {
            // Settled by an earlier run; the input must be the one it read.
            check_hash = resume::fold(check_hash, hash);
            if raw.number == done_earlier {
                let prev = earlier_run.as_ref().expect("an earlier run");
                if check_hash != prev.input_hash {
                    bail!(
                        "the first {done_earlier} lines differ from those the run recorded in {} \
                         read; nothing was sent (use another --producer-id-file for other input)",
                        args.producer_id_file
                            .as_deref()
                            .map_or("?".into(), |p| p.display().to_string())
                    );
                }
            }
            let skipped = prepared.err().map(|b| b.0);
            settler.window.push_back(Pending {
                line: raw.number,
                hash,
                what: Fate::DoneEarlier(skipped),
            });
            continue;
        }
        let what = match prepared {
            Err(BadLine(reason)) => match args.on_bad_line {
                OnBadLine::Skip => Fate::Skipped(reason),
                OnBadLine::Stop => {
                    stop = Some(Stop::BadLine(raw.number, reason));
                    break;
                }
            },
            Ok((k, value)) => {
                let explicit = k.as_ref();
                match settler.earlier.take(explicit, &value) {
                    Some((shard, offset)) => Fate::StoredEarlier(shard, offset),
                    None => {
                        let mut rec = ProducerRecord::new(args.topic.clone(), value);
                        if let Some(k) = k {
                            rec = rec.key(k);
                        }
                        match producer.send(rec).await {
                            Ok(fut) => Fate::Sent(fut),
                            Err(e) => Fate::Refused(e),
                        }
                    }
                }
            }
        };
        settler.window.push_back(Pending {
            line: raw.number,
            hash,
            what,
        });
    }
    drop(lines);
    if settler.tally.read < done_earlier && stop.is_none() {
        bail!(
            "the input has {} lines, fewer than the {done_earlier} the earlier run recorded \
             settled; nothing was sent",
            settler.tally.read
        );
    }
    // Settle what was sent; a second signal gives up waiting.
    let mut abandoned = false;
    while !settler.window.is_empty() {
        tokio::select! {
            r = settler.settle_front(true) => { r?; }
            _ = signals.recv() => { abandoned = true; break; }
        }
    }
    if abandoned {
        for p in std::mem::take(&mut settler.window) {
            let s = Status::Unknown("interrupted before its acknowledgement".into());
            settler.tally.count(p.line, &s);
            settler.report.write(p.line, &s)?;
        }
    }
    settler.checkpoint(&producer, true).await?;
    let lost = if matches!(args.acks, AckArg::None) && settler.tally.sent > 0 {
        acks_none_check(client, &args.topic, &ends, settler.tally.sent).await
    } else {
        None
    };
    let ok = settler.tally.clean()
        && lost.is_none_or(|n| n == 0)
        && matches!(stop, None | Some(Stop::Signal(_)));
    if !ok || !args.quiet || settler.tally.sent > 0 {
        // Records left unmatched only mean something once the whole input was read.
        let unmatched = if stop.is_none() {
            settler.earlier.count
        } else {
            0
        };
        summary(&args, &settler.tally, stop.as_ref(), lost, unmatched);
    }
    match stop {
        Some(Stop::Signal(signal)) => Err(Interrupted { signal }.into()),
        _ if ok => Ok(()),
        _ => Err(Failed { code: 1 }.into()),
    }
}

/// A line's key (the explicit one, if any) and value, or why it cannot be sent.
fn prepare(
    args: &ProduceArgs,
    key: &Option<Bytes>,
    bytes: Vec<u8>,
    too_long: Option<u64>,
    payload_max: usize,
    too_large: &impl Fn(usize) -> String,
) -> Result<(Option<Bytes>, Bytes), BadLine> {
    if let Some(n) = too_long {
        return Err(BadLine(too_large(usize::try_from(n).unwrap_or(usize::MAX))));
    }
    let value = input::decode(args.format, bytes)?;
    let key = match args.key_field {
        Some(f) => Some(input::field(&value, f)?),
        None => key.clone(),
    };
    let n = value.len() + key.as_ref().map_or(0, |k| k.len());
    if n > payload_max {
        return Err(BadLine(too_large(n)));
    }
    Ok((key, value))
}

/// `--acks none`: how many of `sent` records the topic's end offsets do not account
/// for, after waiting up to [`ACKS_NONE_SETTLE`] for the broker to write them (other
/// producers can only hide losses, never invent them). `None` when unknown.
async fn acks_none_check(
    client: &Client,
    topic: &str,
    before: &BTreeMap<u32, u64>,
    sent: u64,
) -> Option<u64> {
    let admin = Admin::new(client.clone());
    let deadline = Instant::now() + ACKS_NONE_SETTLE;
    loop {
        let meta = admin.describe_topic(topic).await.ok()?;
        let grown: u64 = meta
            .shards
            .iter()
            .map(|s| {
                s.high_watermark
                    .saturating_sub(before.get(&s.shard).copied().unwrap_or(0))
            })
            .sum();
        if grown >= sent || Instant::now() >= deadline {
            return Some(sent.saturating_sub(grown));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The summary on standard error.
fn summary(args: &ProduceArgs, t: &Tally, stop: Option<&Stop>, lost: Option<u64>, held: usize) {
    let mut parts = vec![format!("{} stored", t.stored)];
    let mut add = |n: u64, what: &str| {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    };
    add(
        t.stored_earlier,
        "already stored by an earlier run (found in the log, not sent again)",
    );
    add(t.done_earlier, "settled by an earlier run (skipped)");
    add(t.skipped, "skipped (bad lines)");
    add(t.failed, "failed (refused by the broker: not stored)");
    add(t.unknown, "unknown (no answer: may or may not be stored)");
    add(t.sent, "sent unconfirmed (--acks none)");
    eprintln!(
        "weir produce: {} lines read, to topic {}: {}",
        t.read,
        args.topic,
        parts.join(", ")
    );
    match stop {
        Some(Stop::BadLine(line, reason)) => eprintln!(
            "weir produce: stopped at line {line}, which {reason}; it and the lines after it were \
             not sent (--on-bad-line skip leaves bad lines out instead)"
        ),
        Some(Stop::Failed(line)) => eprintln!(
            "weir produce: stopped reading after line {line} failed; later lines were not sent"
        ),
        Some(Stop::Signal(_)) => {
            eprintln!("weir produce: interrupted; the lines after those read were not sent")
        }
        Some(Stop::Read(e)) => eprintln!("weir produce: reading standard input failed: {e}"),
        None => {}
    }
    if t.sent > 0 {
        match lost {
            Some(0) => eprintln!(
                "weir produce: with --acks none the broker confirms nothing; the topic grew by \
                 at least as many records as were sent"
            ),
            Some(n) => eprintln!(
                "weir produce: with --acks none the broker confirms nothing, and {n} of the {} \
                 records sent are not in the topic: they were dropped",
                t.sent
            ),
            None => eprintln!(
                "weir produce: with --acks none the broker confirms nothing: records it dropped \
                 are not reported"
            ),
        }
    }
    if t.unknown > 0 || t.failed > 0 {
        match &args.producer_id_file {
            Some(p) => eprintln!(
                "weir produce: run again with --producer-id-file {} and the same input to send \
                 what was not stored, without storing anything twice",
                p.display()
            ),
            None => eprintln!(
                "weir produce: lines reported unknown may be stored; --producer-id-file FILE \
                 makes a re-run skip what was stored"
            ),
        }
    }
    if held > 0 {
        eprintln!(
            "weir produce: {held} records the earlier run stored matched no line of this input"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::ErrorCode;

    #[test]
    fn only_named_refusals_are_certainly_not_stored() {
        let broker = |code| ClientError::Broker {
            code,
            message: String::new(),
            retry_after_ms: 0,
        };
        assert!(broker(ErrorCode::InvalidRecord).certainly_not_stored());
        assert!(!broker(ErrorCode::RequestTimedOut).certainly_not_stored());
        assert!(!ClientError::Io("reset".into()).certainly_not_stored());
        assert!(!ClientError::Timeout(30_000).certainly_not_stored());
    }
}
