//! One producer's sending loop, on its own thread (so open-loop pacing can sleep
//! precisely without blocking the runtime).
//!
//! The loop fills one batch at a time: it waits for each message's due time (open
//! loop) or a free slot in its window (closed loop), builds the payload, picks a
//! priority, and hands the batch (or each record) to the SDK. Every delivery future
//! goes to the collector, which times it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use weir_client::{BatchRecord, DeliveryFuture, Producer, ProducerBatch, ProducerRecord};

use super::args::{ApiArg, Args, Mode, PacingArg};
use super::collector::{Delivery, Pending};
use super::mix::{MixPicker, PriorityMix, CLASS_PRIORITIES};
use super::run::{shards_of, Run, Stop};

/// The closed-loop window without --in-flight: the SDK's largest adaptive window (its
/// default `max_in_flight_per_shard`).
const AUTO_WINDOW_MAX: usize = 5;

/// Runs producer `idx` until `stop`, then flushes it.
pub async fn produce_loop(
    run: Arc<Run>,
    producer: Producer,
    idx: usize,
    stop: Stop,
    tx: mpsc::UnboundedSender<Pending>,
) -> anyhow::Result<()> {
    ProducerLoop::new(run, producer, idx, stop, tx).run().await
}

/// Open loop's schedule: message `k` of this producer is due at
/// `base + (k·every + phase) · step`.
struct Pacing {
    step: f64,
    every: f64,
    phase: f64,
}

impl Pacing {
    fn due(&self, base: Instant, k: u64) -> Instant {
        base + Duration::from_secs_f64((k as f64 * self.every + self.phase) * self.step)
    }
}

/// Blocks the producer's thread until `due` (see `--pacing`).
fn wait_until(due: Instant, pacing: PacingArg) {
    /// Waits longer than this sleep even when spinning, less this margin.
    const SPIN_BELOW: Duration = Duration::from_millis(2);
    loop {
        let now = Instant::now();
        let Some(left) = due.checked_duration_since(now).filter(|d| !d.is_zero()) else {
            return;
        };
        match pacing {
            PacingArg::Sleep => return std::thread::sleep(left),
            PacingArg::Spin if left > SPIN_BELOW => std::thread::sleep(left - SPIN_BELOW / 2),
            PacingArg::Spin => std::thread::yield_now(),
        }
    }
}

/// The schedule and the fixed (class, priority) of producer `idx`.
fn plan(c: &Args, idx: usize) -> (Option<Pacing>, Option<(usize, u8)>) {
    // By default producers share the rate equally, each sending every P-th slot.
    let mut pacing = c.rate.map(|r| Pacing {
        step: 1.0 / r,
        every: c.producers as f64,
        phase: idx as f64,
    });
    let fixed = match (&c.priority_mix, c.class_per_producer) {
        (Some(mix), true) => {
            let (class, n) = producer_class(mix, idx, c.producers);
            // This producer sends 1/n of its class's share of the rate.
            if let Some(r) = c.rate {
                let my_rate = r * mix.fraction(class) / n as f64;
                pacing = Some(Pacing {
                    step: 1.0 / my_rate,
                    every: 1.0,
                    phase: idx as f64 / c.producers as f64,
                });
            }
            Some((class, CLASS_PRIORITIES[class].0))
        }
        _ => None,
    };
    (pacing, fixed)
}

/// The class producer `idx` of `producers` sends with `--class-per-producer`, and how
/// many producers send that class: one per class of the mix, the rest to its largest.
fn producer_class(mix: &PriorityMix, idx: usize, producers: usize) -> (usize, usize) {
    let classes: Vec<usize> = mix.classes().collect();
    let largest = classes
        .iter()
        .copied()
        .max_by(|a, b| mix.fraction(*a).total_cmp(&mix.fraction(*b)))
        .unwrap_or(0);
    let minor: Vec<usize> = classes.iter().copied().filter(|c| *c != largest).collect();
    if idx < minor.len() && producers > minor.len() {
        (minor[idx], 1)
    } else {
        (largest, producers.saturating_sub(minor.len()).max(1))
    }
}

/// The payload every message of a produce run shares: static, so the clone for each
/// message and its drop touch no reference count (two atomic operations a message
/// that the SDK's own path does not need; the SDK copies the value into its batch).
/// One per producer per run, kept for the life of the process.
fn static_payload(size: usize) -> Bytes {
    Bytes::from_static(Box::leak(vec![0x5au8; size].into_boxed_slice()))
}

/// A producer's state over the whole run.
struct ProducerLoop {
    run: Arc<Run>,
    producer: Producer,
    stop: Stop,
    tx: mpsc::UnboundedSender<Pending>,
    topic: Arc<str>,
    shards: Vec<u32>,
    /// `--api batch`: one `send_batch` per batch; else one `send` per record.
    by_batch: bool,
    /// e2e payloads carry their intended send time and are timed at the consumer.
    e2e: bool,
    payload: Bytes,
    picker: Option<MixPicker>,
    /// `--class-per-producer`: the one (class, priority) this producer sends.
    fixed: Option<(usize, u8)>,
    /// `None`: closed loop.
    pacing: Option<Pacing>,
    /// Closed loop keeps at most --in-flight batches unacknowledged per producer, so
    /// batch latency is the pipeline's, not the time spent queued inside the SDK.
    /// Without --in-flight the semaphore holds [`AUTO_WINDOW_MAX`] permits and
    /// `reserved` holds back those beyond the lane's current window + 1.
    window: Arc<Semaphore>,
    reserved: Vec<OwnedSemaphorePermit>,
    /// Messages taken so far (the pacing index).
    k: u64,
    /// When the open-loop wait last ended (`--pacing-tick-us`).
    woke: Instant,
    measured_count: u64,
    sent: u64,
    batch_no: usize,
}

/// One batch being filled.
struct OpenBatch {
    shard: u32,
    /// Messages taken into it.
    n: u64,
    /// The intended send time of its first message.
    start: Instant,
    /// Its first message is due after the warmup.
    measured: bool,
    classes: Vec<(usize, Instant)>,
    /// `--api batch`: the records of the one `send_batch` call.
    records: Option<ProducerBatch>,
    /// `--api record`: the latest `send`'s future; only the batch's last one is
    /// timed as the batch, earlier ones go to the collector for per-class figures.
    held: Option<Pending>,
    /// `--api record` with no record timed by class: the latest `send`'s future
    /// alone (no collector entry per record, which cost more than the send).
    last: Option<DeliveryFuture>,
    permit: Option<OwnedSemaphorePermit>,
}

impl ProducerLoop {
    fn new(
        run: Arc<Run>,
        producer: Producer,
        idx: usize,
        stop: Stop,
        tx: mpsc::UnboundedSender<Pending>,
    ) -> Self {
        let c = &run.cli;
        let (pacing, fixed) = plan(c, idx);
        ProducerLoop {
            shards: shards_of(idx, c.producers, run.shards),
            e2e: c.mode == Mode::E2e,
            payload: static_payload(c.size),
            picker: c.priority_mix.as_ref().map(|m| m.picker()),
            fixed,
            pacing,
            topic: c.topic.as_str().into(),
            by_batch: c.api == ApiArg::Batch,
            window: Arc::new(Semaphore::new(
                c.in_flight.map_or(AUTO_WINDOW_MAX, |n| n.max(1)),
            )),
            reserved: Vec::new(),
            k: 0,
            woke: Instant::now(),
            measured_count: 0,
            sent: 0,
            batch_no: 0,
            run,
            producer,
            stop,
            tx,
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        while !self.one_batch().await? {}
        if self.run.cli.in_flight.is_none() {
            let priority = self.fixed.map(|(_, p)| p);
            for &shard in &self.shards {
                if let Some(w) = self.producer.in_flight_window(&self.topic, shard, priority) {
                    self.run.windows.lock().expect("windows").push(w);
                }
            }
        }
        self.run.sent.fetch_add(self.sent, Ordering::Release);
        self.producer.flush().await?;
        Ok(())
    }

    /// Fills and sends one batch; true once the stop condition is reached.
    async fn one_batch(&mut self) -> anyhow::Result<bool> {
        let mut b = self.open_batch().await?;
        let mut stopping = false;
        while (b.n as usize) < self.run.cli.batch {
            let Some(intended) = self.next_due(b.n) else {
                break;
            };
            if b.n == 0 {
                b.start = intended;
                b.measured = intended >= self.run.warmup_end;
            }
            stopping = match self.stop {
                Stop::Messages(m) => b.measured && self.measured_count >= m,
                Stop::Until(t) => intended >= t,
            };
            if stopping {
                break;
            }
            self.add_message(&mut b, intended).await?;
        }
        self.close_batch(b).await?;
        Ok(stopping)
    }

    /// Picks the next shard and, in closed loop, waits for a slot in the window.
    async fn open_batch(&mut self) -> anyhow::Result<OpenBatch> {
        let shard = self.shards[self.batch_no % self.shards.len()];
        self.batch_no += 1;
        let permit = match self.pacing {
            None => {
                self.follow_window(shard).await?;
                Some(self.window.clone().acquire_owned().await?)
            }
            Some(_) => None,
        };
        let records = self.by_batch.then(|| {
            ProducerBatch::with_capacity(self.topic.clone(), self.run.cli.batch).shard(shard)
        });
        Ok(OpenBatch {
            shard,
            n: 0,
            start: self.run.base,
            measured: false,
            classes: Vec::new(),
            records,
            held: None,
            last: None,
            permit,
        })
    }

    /// Without --in-flight: holds back the permits beyond the lane's adaptive window
    /// (the SDK's window for this producer's priority; its maximum until known), so
    /// the closed loop keeps as many batches outstanding as the SDK keeps in flight,
    /// as a fixed --in-flight does.
    async fn follow_window(&mut self, shard: u32) -> anyhow::Result<()> {
        if self.run.cli.in_flight.is_some() {
            return Ok(());
        }
        let priority = self.fixed.map(|(_, p)| p);
        let lane = self
            .producer
            .in_flight_window(&self.topic, shard, priority)
            .unwrap_or(AUTO_WINDOW_MAX);
        let hold = AUTO_WINDOW_MAX.saturating_sub(lane.max(1));
        self.reserved.truncate(hold);
        while self.reserved.len() < hold {
            self.reserved
                .push(self.window.clone().acquire_owned().await?);
        }
        Ok(())
    }

    /// When the next message is meant to go: now (closed loop), or its due time after
    /// sleeping until then (open loop). `None`: the batch api sends what is due now
    /// in one call rather than make those messages wait for later ones.
    fn next_due(&mut self, n: u64) -> Option<Instant> {
        let Some(pacing) = &self.pacing else {
            // Closed loop: only a batch's first message and per-class timing need the
            // time (a clock read per message cost a tenth of `send` here).
            let timed = n == 0 || self.picker.is_some() || self.e2e;
            return Some(if timed { Instant::now() } else { self.run.base });
        };
        let due = pacing.due(self.run.base, self.k);
        let now = Instant::now();
        if due > now {
            if n > 0 && self.by_batch {
                return None;
            }
            let tick = Duration::from_micros(self.run.cli.pacing_tick_us.unwrap_or(0));
            wait_until(due.max(self.woke + tick), self.run.cli.pacing);
            self.woke = Instant::now();
        }
        Some(due)
    }

    /// Adds one message to the batch (`--api batch`) or sends it (`--api record`).
    async fn add_message(&mut self, b: &mut OpenBatch, intended: Instant) -> anyhow::Result<()> {
        let value = self.payload_for(intended);
        let priority = self.pick_priority(b, intended);
        if let Some(records) = b.records.as_mut() {
            let mut rec = BatchRecord::new(value);
            rec.priority = priority;
            records.push_record(rec);
        } else {
            let mut rec = ProducerRecord::new(self.topic.clone(), value).shard(b.shard);
            rec.priority = priority;
            let fut = self.producer.send(rec).await?;
            if b.classes.is_empty() {
                // This record is not timed by class (the same for every record of the
                // batch, see `pick_priority`): only the batch's last future matters.
                b.last = Some(fut);
            } else {
                if let Some(h) = b.held.take() {
                    let _ = self.tx.send(h);
                }
                b.held = Some(Pending {
                    batch_start: b.start,
                    classes: std::mem::take(&mut b.classes),
                    batch_count: 0,
                    measured: b.measured,
                    fut: Delivery::Record(fut),
                    permit: None,
                });
            }
        }
        self.k += 1;
        b.n += 1;
        if b.measured {
            self.measured_count += 1;
        }
        Ok(())
    }

    /// The shared payload, or for e2e one carrying the intended send time in its first
    /// 8 bytes and, when it has room, the time it is handed to the SDK (now) in the
    /// next 8 (nanoseconds since the run's start).
    fn payload_for(&self, intended: Instant) -> Bytes {
        if !self.e2e {
            return self.payload.clone();
        }
        let size = self.run.cli.size;
        let since_base = |t: Instant| t.saturating_duration_since(self.run.base).as_nanos() as u64;
        let mut b = BytesMut::with_capacity(size);
        b.put_u64_le(since_base(intended));
        if size >= 16 {
            b.put_u64_le(since_base(Instant::now()));
        }
        b.resize(size, 0x5a);
        b.freeze()
    }

    /// The message's priority under `--priority-mix` (noting its class for timing).
    fn pick_priority(&mut self, b: &mut OpenBatch, intended: Instant) -> Option<u8> {
        let picker = self.picker.as_mut()?;
        let (class, prio) = self.fixed.unwrap_or_else(|| picker.next_pick());
        if !self.e2e && b.measured {
            b.classes.push((class, intended));
        }
        Some(prio)
    }

    /// Sends the batch (`--api batch`) and hands its last future to the collector.
    async fn close_batch(&mut self, b: OpenBatch) -> anyhow::Result<()> {
        let mut held = b.held.or_else(|| {
            b.last.map(|fut| Pending {
                batch_start: b.start,
                classes: Vec::new(),
                batch_count: 0,
                measured: b.measured,
                fut: Delivery::Record(fut),
                permit: None,
            })
        });
        if let Some(records) = b.records.filter(|r| !r.is_empty()) {
            held = Some(Pending {
                batch_start: b.start,
                classes: b.classes,
                batch_count: 0,
                measured: b.measured,
                fut: Delivery::Batch(self.producer.send_batch(records).await?),
                permit: None,
            });
        }
        if let Some(mut h) = held {
            h.batch_count = b.n;
            h.permit = b.permit;
            let _ = self.tx.send(h);
        }
        self.sent += b.n;
        self.run.progress.fetch_add(b.n, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn mix(s: &str) -> PriorityMix {
        s.parse().expect("valid mix")
    }

    #[test]
    fn one_producer_per_minor_class_and_the_rest_on_the_largest() {
        let m = mix("p0=5,p1=15,p3=80");
        let picks: Vec<(usize, usize)> = (0..5).map(|i| producer_class(&m, i, 5)).collect();
        assert_eq!(picks, vec![(0, 1), (1, 1), (3, 3), (3, 3), (3, 3)]);
        // Too few producers for one per minor class: all send the largest.
        assert_eq!(producer_class(&m, 0, 2), (3, 1));
    }

    #[test]
    fn open_loop_producers_interleave_their_slots_of_the_rate() {
        let args = Args::try_parse_from([
            "weir-bench",
            "produce",
            "--rate",
            "1000",
            "--producers",
            "4",
        ])
        .expect("flags");
        let base = Instant::now();
        let (pacing, fixed) = plan(&args, 1);
        assert!(fixed.is_none());
        let pacing = pacing.expect("open loop");
        // Producer 1 of 4 at 1000/s owns slots 1, 5, 9, … of 1 ms each.
        assert_eq!(pacing.due(base, 0) - base, Duration::from_millis(1));
        assert_eq!(pacing.due(base, 2) - base, Duration::from_millis(9));
        let closed = Args::try_parse_from(["weir-bench", "produce"]).expect("flags");
        assert!(plan(&closed, 0).0.is_none());
    }
}
