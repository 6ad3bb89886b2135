//! The shard writer thread and its handle, [`Shard`].

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use weir_protocol::batch::BatchHeader;
use weir_protocol::messages::Durability;

use super::idempotence::{ProducerTable, Verdict};
use crate::storage::{Log, LogConfig, LogReader, StorageError};

/// Most appends the writer drains into one group before it flushes.
pub const MAX_GROUP_COMMANDS: usize = 1024;

/// How many of the newest offsets are scanned on open to rebuild producer state. A
/// producer idle for longer than this many records is forgotten, which only means
/// its next batch cannot be recognised as a retry of one written before that window.
pub const PRODUCER_STATE_SCAN_OFFSETS: u64 = 2_000_000;

/// Settings of one shard's writer.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub log: LogConfig,
    pub durability: Durability,
    /// Flush period for `Interval` durability.
    pub flush_interval_ms: u32,
    /// Appends that may wait in the writer's queue; senders wait when it is full.
    pub queue_depth: usize,
    /// How often retention runs.
    pub retention_check_ms: u64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            log: LogConfig::default(),
            durability: Durability::Interval,
            flush_interval_ms: 1000,
            queue_depth: 1024,
            retention_check_ms: 30_000,
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: u64,
    pub last_offset: u64,
    /// Every batch was a retry of one already stored; nothing was written.
    pub duplicate: bool,
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("out of order sequence: expected {expected}, got {got}")]
    OutOfOrder { expected: u32, got: u32 },
    #[error("producer fenced by epoch {current_epoch}")]
    Fenced { current_epoch: u16 },
    #[error("shard is closed")]
    Closed,
}

enum Command {
    Append {
        batches: Vec<Bytes>,
        headers: Vec<BatchHeader>,
        durable: bool,
        reply: Option<oneshot::Sender<Result<AppendOutcome, AppendError>>>,
    },
    Flush(oneshot::Sender<Result<(), AppendError>>),
    Shutdown,
}

/// Handle to one shard: cheap to share (`Arc`), used by every connection.
pub struct Shard {
    tx: mpsc::Sender<Command>,
    reader: LogReader,
    hwm: watch::Receiver<u64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("high_watermark", &*self.hwm.borrow())
            .finish()
    }
}

/// A queued append whose answer has not come yet.
pub type PendingAppend = oneshot::Receiver<Result<AppendOutcome, AppendError>>;

impl Shard {
    /// Opens (recovering) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path, name: &str, config: ShardConfig) -> Result<Arc<Shard>, StorageError> {
        let log = Log::open(dir, config.log.clone())?;
        let reader = log.reader();
        let producers = rebuild_producers(&reader);
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let (hwm_tx, hwm_rx) = watch::channel(log.high_watermark());
        let thread = std::thread::Builder::new()
            .name(format!("weir-w-{name}"))
            .spawn(move || run_writer(log, producers, rx, hwm_tx, config))
            .map_err(StorageError::from)?;
        Ok(Arc::new(Shard {
            tx,
            reader,
            hwm: hwm_rx,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Queues an append. Returns once the append is in the writer's queue, so appends
    /// queued one after another by one task are written in that order; the receiver
    /// yields the outcome. `batches` must be validated, with `headers` their headers.
    pub async fn enqueue(
        &self,
        batches: Vec<Bytes>,
        headers: Vec<BatchHeader>,
        durable: bool,
    ) -> Result<PendingAppend, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                batches,
                headers,
                durable,
                reply: Some(reply),
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        Ok(rx)
    }

    /// Queues an append and waits for its outcome.
    pub async fn append(
        &self,
        batches: Vec<Bytes>,
        headers: Vec<BatchHeader>,
        durable: bool,
    ) -> Result<AppendOutcome, AppendError> {
        let rx = self.enqueue(batches, headers, durable).await?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Flushes everything written so far.
    pub async fn flush(&self) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(reply))
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// The log's readers' view.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// A watch that changes whenever the high-water mark advances.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.hwm.clone()
    }

    /// Stops the writer after it has written and flushed everything queued before
    /// this call, and waits for its thread. Later appends fail with
    /// [`AppendError::Closed`].
    pub async fn close(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
        let thread = self.thread.lock().expect("shard thread lock").take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn rebuild_producers(reader: &LogReader) -> ProducerTable {
    let mut table = ProducerTable::default();
    let hwm = reader.high_watermark();
    let mut offset = reader
        .log_start_offset()
        .max(hwm.saturating_sub(PRODUCER_STATE_SCAN_OFFSETS));
    while offset < hwm {
        let chunks = match reader.read(offset, 1 << 20) {
            Ok(c) if !c.is_empty() => c,
            _ => break,
        };
        let mut next = offset;
        for chunk in &chunks {
            let mut pos = 0;
            while pos < chunk.len() {
                let Ok(h) = BatchHeader::read(&chunk[pos..]) else {
                    break;
                };
                table.record(&h);
                next = h.last_offset() + 1;
                pos += h.total_bytes();
            }
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    table
}

type Waiter = (
    oneshot::Sender<Result<AppendOutcome, AppendError>>,
    Result<AppendOutcome, AppendError>,
);

fn run_writer(
    mut log: Log,
    mut producers: ProducerTable,
    mut rx: mpsc::Receiver<Command>,
    hwm: watch::Sender<u64>,
    config: ShardConfig,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("writer runtime");
    rt.block_on(async move {
        let flush_every = Duration::from_millis(u64::from(config.flush_interval_ms.max(1)));
        let mut flush_tick = tokio::time::interval(flush_every);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention_tick =
            tokio::time::interval(Duration::from_millis(config.retention_check_ms.max(100)));
        retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = false;
        let mut group = Vec::with_capacity(64);
        loop {
            tokio::select! {
                biased;
                first = rx.recv() => {
                    let Some(first) = first else { break };
                    group.push(first);
                    while group.len() < MAX_GROUP_COMMANDS {
                        match rx.try_recv() {
                            Ok(c) => group.push(c),
                            Err(_) => break,
                        }
                    }
                    let shutdown = group.iter().any(|c| matches!(c, Command::Shutdown));
                    dirty |= process_group(&mut log, &mut producers, &mut group, &hwm, &config);
                    if shutdown {
                        rx.close();
                        while let Ok(c) = rx.try_recv() {
                            group.push(c);
                        }
                        process_group(&mut log, &mut producers, &mut group, &hwm, &config);
                        break;
                    }
                }
                _ = flush_tick.tick(), if config.durability == Durability::Interval && dirty => {
                    if let Err(e) = log.flush() {
                        tracing::error!(error = %e, "interval flush failed");
                    } else {
                        dirty = false;
                    }
                }
                _ = retention_tick.tick() => {
                    let now_ms = now_ms();
                    match log.apply_retention(now_ms) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(segments = n, "retention deleted segments"),
                        Err(e) => tracing::error!(error = %e, "retention failed"),
                    }
                }
            }
        }
        if let Err(e) = log.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    });
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes one drained group. Returns whether unflushed data remains.
fn process_group(
    log: &mut Log,
    producers: &mut ProducerTable,
    group: &mut Vec<Command>,
    hwm: &watch::Sender<u64>,
    config: &ShardConfig,
) -> bool {
    let mut leader_waiters: Vec<Waiter> = Vec::new();
    let mut durable_waiters: Vec<Waiter> = Vec::new();
    let mut flush_waiters = Vec::new();
    let mut wrote = false;
    for cmd in group.drain(..) {
        match cmd {
            Command::Flush(reply) => flush_waiters.push(reply),
            Command::Shutdown => {}
            Command::Append {
                batches,
                headers,
                durable,
                reply,
            } => {
                let result = append_one(log, producers, batches, headers);
                if matches!(&result, Ok(o) if !o.duplicate) {
                    wrote = true;
                }
                if let Some(reply) = reply {
                    if durable && result.is_ok() {
                        durable_waiters.push((reply, result));
                    } else {
                        leader_waiters.push((reply, result));
                    }
                }
            }
        }
    }
    if wrote {
        hwm.send_replace(log.high_watermark());
    }
    for (reply, result) in leader_waiters {
        let _ = reply.send(result);
    }
    let must_flush = !durable_waiters.is_empty()
        || !flush_waiters.is_empty()
        || (wrote && config.durability == Durability::Always);
    if !must_flush {
        return wrote;
    }
    let flushed = log.flush().map_err(|e| {
        tracing::error!(error = %e, "flush failed");
        AppendError::Storage(e.to_string())
    });
    for (reply, result) in durable_waiters {
        let _ = reply.send(flushed.clone().and(result));
    }
    for reply in flush_waiters {
        let _ = reply.send(flushed.clone());
    }
    flushed.is_err()
}

fn append_one(
    log: &mut Log,
    producers: &mut ProducerTable,
    batches: Vec<Bytes>,
    headers: Vec<BatchHeader>,
) -> Result<AppendOutcome, AppendError> {
    let mut first: Option<u64> = None;
    let mut last = 0u64;
    let mut to_write = Vec::with_capacity(batches.len());
    let mut to_write_headers = Vec::with_capacity(batches.len());
    for (batch, header) in batches.into_iter().zip(headers) {
        match producers.check(&header) {
            Verdict::Append => {
                to_write.push(batch);
                to_write_headers.push(header);
            }
            Verdict::Duplicate {
                base_offset,
                last_offset,
            } => {
                if to_write.is_empty() {
                    first.get_or_insert(base_offset);
                    last = last_offset;
                }
            }
            Verdict::OutOfOrder { expected, got } => {
                return Err(AppendError::OutOfOrder { expected, got })
            }
            Verdict::Fenced { current_epoch } => return Err(AppendError::Fenced { current_epoch }),
        }
    }
    if to_write.is_empty() {
        let base = first.ok_or_else(|| AppendError::Storage("empty append".into()))?;
        return Ok(AppendOutcome {
            base_offset: base,
            last_offset: last,
            duplicate: true,
        });
    }
    let info = log
        .append(&to_write)
        .map_err(|e| AppendError::Storage(e.to_string()))?;
    let mut next = info.base_offset;
    for mut h in to_write_headers {
        h.base_offset = next;
        next += u64::from(h.record_count);
        producers.record(&h);
    }
    Ok(AppendOutcome {
        base_offset: first.unwrap_or(info.base_offset),
        last_offset: info.last_offset,
        duplicate: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::batch::{BatchBuilder, NewRecord};

    fn config() -> ShardConfig {
        ShardConfig {
            log: LogConfig {
                segment_bytes: 1 << 20,
                ..LogConfig::default()
            },
            durability: Durability::Always,
            ..ShardConfig::default()
        }
    }

    fn batch(pid: u64, seq: u32, n: u32, tag: &str) -> (Bytes, BatchHeader) {
        let mut b = if pid == 0 {
            BatchBuilder::new()
        } else {
            BatchBuilder::new().producer(pid, 0, seq)
        };
        for i in 0..n {
            let v = format!("{tag}-{i}");
            b.push(&NewRecord::value(1, v.as_bytes())).unwrap();
        }
        let bytes = b.finish().unwrap();
        let h = BatchHeader::read(&bytes).unwrap();
        (bytes, h)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_appends_get_dense_distinct_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(dir.path(), "t", config()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let shard = shard.clone();
            tasks.push(tokio::spawn(async move {
                let (b, h) = batch(0, 0, 3, &format!("w{i}"));
                shard.append(vec![b], vec![h], true).await.unwrap()
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            let o = t.await.unwrap();
            assert_eq!(o.last_offset, o.base_offset + 2);
            got.push(o.base_offset);
        }
        got.sort();
        assert_eq!(got, (0..64).map(|i| i * 3).collect::<Vec<u64>>());
        assert_eq!(shard.reader().high_watermark(), 192);
        shard.close().await;
    }

    #[tokio::test]
    async fn retries_are_recognised_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(dir.path(), "t", config()).unwrap();
        let (b0, h0) = batch(7, 0, 2, "a");
        let (b1, h1) = batch(7, 2, 2, "b");
        let first = shard
            .append(vec![b0.clone()], vec![h0], true)
            .await
            .unwrap();
        shard.append(vec![b1], vec![h1], true).await.unwrap();
        let again = shard
            .append(vec![b0.clone()], vec![h0], true)
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(
            (again.base_offset, again.last_offset),
            (first.base_offset, first.last_offset)
        );
        let (gap, hg) = batch(7, 9, 1, "gap");
        assert_eq!(
            shard.append(vec![gap], vec![hg], true).await,
            Err(AppendError::OutOfOrder {
                expected: 4,
                got: 9
            })
        );
        shard.close().await;
        drop(shard);

        let shard = Shard::open(dir.path(), "t", config()).unwrap();
        let again = shard.append(vec![b0], vec![h0], true).await.unwrap();
        assert!(again.duplicate, "producer state is rebuilt from the log");
        assert_eq!(shard.reader().high_watermark(), 4);
        shard.close().await;
    }
}
