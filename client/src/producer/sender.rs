//! The sender of one (topic, shard, priority class) lane: stamps idempotence fields
//! into sealed batches, keeps up to `max_in_flight_per_shard` of them in flight on the
//! connection to the shard's primary (in a cluster; the one connection otherwise),
//! retries failed ones in order — the same bytes, so an idempotent retry after a
//! switchover is answered as a duplicate by a new primary that already holds it — and
//! tells the accumulator each time a batch settles (so with `linger = 0` the next batch
//! leaves as soon as there is room).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use weir_protocol::batch::{self, BatchBuilder};
use weir_protocol::messages::*;
use weir_protocol::{ErrorCode, ResponseBody};

use super::window::{Estimator, Window};
use super::{init_producer_id, Identity, ProducerConfig};
use crate::client::{expect_body, Client};
use crate::cluster::Route;
use crate::delivery::Waiters;
use crate::error::{ClientError, Result};
use crate::flow::{self, Pushback};

/// What the accumulator hands a lane's sender.
pub(super) enum SenderMsg {
    Batch(BatchBuilder, Waiters),
    Flush(oneshot::Sender<()>),
    /// The topic was resharded: give back every batch not yet stored, in order, so
    /// the accumulator places their records again under the new layout (PROTOCOL.md,
    /// "Resharding"; `Core::relayout`).
    HandBack(oneshot::Sender<Vec<HandedBack>>),
}

/// A batch a lane gave back, certainly not stored: its bytes (records to place
/// again) and who waits for them.
pub(super) struct HandedBack {
    pub(super) bytes: Bytes,
    pub(super) waiters: Waiters,
}

struct Item {
    bytes: Bytes,
    record_count: u32,
    waiters: Waiters,
    attempts: u32,
    /// Order of arrival at this sender, for flushes (see `run`).
    ordinal: u64,
    /// An OUT_OF_ORDER_SEQUENCE answer was already taken as "re-stamp and resend"
    /// without costing an attempt (once per batch, so it cannot loop).
    resequenced: bool,
    /// An attempt ended without telling whether the batch was stored (I/O error,
    /// timeout): it must never be re-stamped under a new epoch, which would store it
    /// twice if the broker had kept it.
    maybe_stored: bool,
    /// First THROTTLED/SHED/breaker refusal of this batch (for `BlockFor`).
    pushed_back_since: Option<std::time::Instant>,
    /// Places in its class's pool still held (given back when it is first sent).
    permits: u32,
    /// When the current attempt was sent, and whether no other batch of the lane was
    /// in flight then (for the window's estimates).
    sent_at: Option<(std::time::Instant, bool)>,
    /// The last attempt failed on its route (NOT_PRIMARY, a lost connection, ...):
    /// the next one asks the cluster for a fresh view first. The view refreshed when
    /// the failure was seen may predate the switchover that the retry, a backoff
    /// later, can already use.
    reroute: bool,
}

pub(super) struct ShardSender {
    pub(super) client: Client,
    pub(super) config: ProducerConfig,
    pub(super) identity: Option<Arc<Identity>>,
    pub(super) topic: Arc<str>,
    pub(super) shard: u32,
    /// Batches handed to this sender and not yet settled (shared with the accumulator).
    pub(super) outstanding: Arc<AtomicUsize>,
    /// The lane's in-flight window (read by the accumulator, sized here).
    pub(super) window: Arc<Window>,
    /// Gives back places in the lane's class pool (records whose batch was sent).
    pub(super) release: Box<dyn Fn(u32) + Send + Sync>,
    /// Tells the accumulator that the topic was resharded (LAYOUT_CHANGED): it takes
    /// back every lane's unsettled batches ([`SenderMsg::HandBack`]) and places their
    /// records again by the new shard count.
    pub(super) layout_changed: Box<dyn Fn() + Send + Sync>,
    /// Tells the accumulator that this lane has settled a batch (with the batch's
    /// buffer, for the lane's next one).
    pub(super) room: Box<dyn Fn(Option<BytesMut>) + Send + Sync>,
    /// (producer id, epoch) the sequence numbers below belong to.
    pub(super) epoch_used: Option<(u64, u16)>,
    pub(super) next_seq: u32,
}

type InFlight =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ProduceResponse>> + Send>>;

impl ShardSender {
    /// Stamps producer id, epoch and sequence. `idle` says this lane has nothing sent
    /// and unsettled, nor queued: only then does it take up an epoch another lane moved
    /// the producer to. Switching while earlier batches are in flight could let a later
    /// batch overtake a refused one; instead, once the broker sees the new epoch it
    /// fences this lane's old-epoch batches (per producer id, on every shard), and the
    /// lane re-stamps them under the new epoch and sends them again
    /// (`moved_on_once_bumped`). Never waits (see [`Identity`]).
    fn stamp(&mut self, builder: BatchBuilder, idle: bool) -> Result<Item> {
        let count = builder.record_count();
        let builder = match &self.identity {
            Some(id) => {
                let current = id.get();
                if self.epoch_used.is_none() || (idle && self.epoch_used != Some(current)) {
                    self.epoch_used = Some(current);
                    self.next_seq = 0;
                }
                let ident = self.epoch_used.expect("set above");
                let b = builder.producer(ident.0, ident.1, self.next_seq);
                self.next_seq = self.next_seq.wrapping_add(count);
                b
            }
            None => builder,
        };
        let bytes = builder
            .finish()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        Ok(Item {
            bytes,
            record_count: count,
            waiters: Waiters::default(),
            attempts: 0,
            ordinal: 0,
            resequenced: false,
            maybe_stored: false,
            pushed_back_since: None,
            permits: count,
            sent_at: None,
            reroute: false,
        })
    }

    /// Whether the producer has moved to another epoch (or id) than the one this lane
    /// stamps, once any epoch bump under way has ended: a PRODUCER_FENCED answer is
    /// then this producer's own doing, not a newer instance's. Called with nothing in
    /// flight (see [`Identity`]).
    async fn moved_on_once_bumped(&self) -> bool {
        match &self.identity {
            Some(id) => {
                drop(id.bump_turn().await);
                self.epoch_used.is_some_and(|used| used != id.get())
            }
            None => false,
        }
    }

    /// Gives queued batches new sequence numbers under a new epoch (after a batch was
    /// given up, its successors would otherwise leave a gap). Called with nothing in
    /// flight: it waits for another lane's bump (see [`Identity`]).
    async fn bump_epoch(&mut self, queue: &mut VecDeque<Item>) -> Result<()> {
        let Some(id) = &self.identity else {
            return Ok(());
        };
        let _bumping = id.bump_turn().await;
        let mut ident = id.get();
        if Some(ident) == self.epoch_used {
            ident = match init_producer_id(&self.client, ident.0, ident.1).await {
                Err(e) if e.code() == Some(ErrorCode::UnknownProducerId) => {
                    init_producer_id(&self.client, 0, 0).await?
                }
                r => r?,
            };
            id.set(ident);
        }
        self.epoch_used = Some(ident);
        self.next_seq = 0;
        for item in queue.iter_mut() {
            let mut v = item.bytes.to_vec();
            batch::restamp_producer(&mut v, ident.0, ident.1, self.next_seq)
                .map_err(|e| ClientError::Invalid(format!("re-stamping a queued batch: {e}")))?;
            self.next_seq = self.next_seq.wrapping_add(item.record_count);
            item.bytes = Bytes::from(v);
        }
        Ok(())
    }

    fn send_one(&self, item: &Item) -> InFlight {
        let client = self.client.clone();
        let req = ProduceRequest {
            topic: self.topic.to_string(),
            shard: self.shard,
            acks: self.config.acks,
            timeout_ms: self
                .config
                .request_timeout
                .as_millis()
                .min(u32::MAX as u128) as u32,
            records: Records::from_bytes(item.bytes.clone()),
        };
        let acks = self.config.acks;
        let timeout = self.config.request_timeout + Duration::from_secs(1);
        // The request is as urgent as its batch's most urgent record.
        let priority = batch::BatchHeader::read(&item.bytes).map_or(0, |h| h.priority);
        let topic = self.topic.clone();
        let shard = self.shard;
        let reroute = item.reroute;
        Box::pin(async move {
            client.breaker_admit()?;
            if reroute {
                client.refresh_route().await;
            }
            // A routing failure does not refresh the view now: `run` sends the same
            // batch (same bytes, same sequences) again after its backoff, and that
            // attempt refreshes first (`reroute`), so it also sees a switchover that
            // was decided during the backoff.
            let outcome = async {
                let (conn, _) = client.route_connection(Route::Shard(&topic, shard)).await?;
                if acks == Acks::None {
                    conn.send(req.into(), priority, false).await?;
                    return Ok(ProduceResponse {
                        base_offset: u64::MAX,
                        last_offset: u64::MAX,
                        log_start_offset: 0,
                        duplicate: 0,
                        shard,
                    });
                }
                let frame = conn.call(req.into(), priority, timeout).await?;
                let body: ResponseBody = crate::connection::into_body(frame)?;
                expect_body!(body, Produce)
            }
            .await;
            client.breaker_record(&outcome);
            outcome
        })
    }

    /// The lane's loop. While requests are in flight it awaits nothing but its
    /// `select!` (which polls them) or the requests themselves: a request it stopped
    /// polling could hold a lock another lane waits for (see `client.rs`, `Slot`).
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<SenderMsg>) {
        let max = self.config.max_in_flight_per_shard.max(1);
        let mut estimator = Estimator::new(max, self.config.adaptive_in_flight);
        let mut queue: VecDeque<Item> = VecDeque::new();
        let mut sent: VecDeque<Item> = VecDeque::new();
        let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
        // A flush waits for the batches that arrived before it, not for an empty lane:
        // under steady load a lane may never be empty. (ordinal bound, reply)
        let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
        let mut received: u64 = 0;
        let mut closed = false;
        let mut backoff_until: Option<Instant> = None;
        // A LAYOUT_CHANGED answer stops the lane until the accumulator takes its
        // batches back (`SenderMsg::HandBack`): nothing more is sent under the old
        // layout.
        let mut paused = false;
        loop {
            if backoff_until.is_some_and(|t| Instant::now() >= t) {
                backoff_until = None;
            }
            while backoff_until.is_none() && !paused && sent.len() < self.window.get() {
                let Some(mut item) = queue.pop_front() else {
                    break;
                };
                in_flight.push_back(self.send_one(&item));
                item.sent_at = Some((std::time::Instant::now(), sent.is_empty()));
                if item.permits > 0 {
                    (self.release)(std::mem::take(&mut item.permits));
                }
                sent.push_back(item);
            }
            if !flushes.is_empty() {
                let oldest = queue.iter().chain(sent.iter()).map(|i| i.ordinal).min();
                let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut flushes)
                    .into_iter()
                    .partition(|(bound, _)| oldest.is_none_or(|o| o >= *bound));
                for (_, f) in done {
                    let _ = f.send(());
                }
                flushes = waiting;
            }
            if queue.is_empty() && sent.is_empty() && closed {
                return;
            }
            tokio::select! {
                msg = rx.recv(), if !closed && (queue.len() < max || paused) => match msg {
                    None => closed = true,
                    Some(SenderMsg::Flush(f)) => flushes.push((received, f)),
                    Some(SenderMsg::HandBack(reply)) => {
                        let back = self.hand_back(&mut queue, &mut sent, &mut in_flight).await;
                        let _ = reply.send(back);
                        paused = false;
                        backoff_until = None;
                    }
                    Some(SenderMsg::Batch(b, waiters)) => {
                        let count = b.record_count();
                        match self.stamp(b, queue.is_empty() && sent.is_empty()) {
                            Ok(mut item) => {
                                item.waiters = waiters;
                                item.ordinal = received;
                                received += 1;
                                queue.push_back(item);
                            }
                            Err(e) => {
                                (self.release)(count);
                                self.fail(waiters, &e);
                            }
                        }
                    }
                },
                _ = async { tokio::time::sleep_until(backoff_until.expect("backoff")).await }, if backoff_until.is_some() => {}
                res = in_flight.next(), if !in_flight.is_empty() => {
                    let res = res.expect("non-empty");
                    let mut item = sent.pop_front().expect("sent matches in_flight");
                    match res {
                        Ok(r) => {
                            let bytes = item.bytes.len();
                            let sent_at = item.sent_at;
                            self.resolve(item, r);
                            if let Some((at, alone)) = sent_at {
                                let now = std::time::Instant::now();
                                let w = estimator.settled(bytes, now - at, alone, now);
                                self.window.set(w);
                            }
                        }
                        Err(e) if e.code() == Some(ErrorCode::LayoutChanged) => {
                            // The topic was resharded after this batch was routed. The
                            // lane stops; what it holds unsettled (this batch, those
                            // after it) waits for the accumulator, which takes back
                            // every lane's batches of the topic and places their
                            // records again by the new shard count, before any record
                            // sent later (so a key's records keep their order).
                            paused = true;
                            self.note_fate(&mut item, &e);
                            let mut again = VecDeque::from([item]);
                            again.extend(self.settle_in_flight(&mut sent, &mut in_flight).await);
                            while let Some(it) = again.pop_back() {
                                queue.push_front(it);
                            }
                            (self.layout_changed)();
                        }
                        Err(e) => {
                            item.attempts += 1;
                            item.reroute = crate::cluster::is_routing_error(&e);
                            // Everything sent after the failed batch settles first.
                            let mut again = VecDeque::new();
                            while let Some(r) = in_flight.next().await {
                                let later = sent.pop_front().expect("sent matches in_flight");
                                match r {
                                    Ok(r) => {
                                        self.resolve(later, r);
                                    }
                                    Err(e) => {
                                        let mut later = later;
                                        later.reroute = crate::cluster::is_routing_error(&e);
                                        // Like the failed batch: an answer lost with the
                                        // connection leaves it perhaps stored, so it is
                                        // never placed again by a relayout.
                                        self.note_fate(&mut later, &e);
                                        again.push_back(later);
                                    }
                                }
                            }
                            // Fenced by this producer itself: another of its lanes moved
                            // it to a new epoch (the broker fences per producer id, on
                            // every shard at once), so this lane follows it: like a
                            // sequence gap, the batch and its successors are re-stamped
                            // under the new epoch and sent again. The broker may fence
                            // before the lane that asked for the epoch has heard it; so
                            // first any bump under way ends (nothing is in flight now).
                            let fenced = e.code() == Some(ErrorCode::ProducerFenced);
                            let own_bump = fenced && self.moved_on_once_bumped().await;
                            // Re-stamped only when no earlier attempt may have stored it;
                            // one that may have is given up (its fate unknown), and its
                            // successors follow the new epoch as they come back fenced.
                            let moved_on = own_bump && !item.maybe_stored;
                            item.maybe_stored |= !fenced && !e.certainly_not_stored();
                            // An id the broker does not know (its data was lost): a new
                            // id, taken by `bump_epoch`, and the same re-stamping.
                            let unknown_id = e.code() == Some(ErrorCode::UnknownProducerId);
                            let out_of_order = e.code() == Some(ErrorCode::OutOfOrderSequence) || moved_on || unknown_id;
                            if out_of_order && !item.resequenced {
                                // Not a failure of this batch: an earlier one of the lane
                                // was given up; it is re-stamped below and sent again.
                                item.resequenced = true;
                                item.attempts -= 1;
                            }
                            let push = flow::pushback(self.config.backpressure, &e, &mut item.pushed_back_since, std::time::Instant::now());
                            let retriable = match push {
                                Pushback::GiveUp => false,
                                Pushback::Wait(_) => {
                                    // Waiting out back-pressure is not a failed attempt.
                                    item.attempts -= 1;
                                    true
                                }
                                Pushback::No => e.is_retriable() || out_of_order,
                            };
                            let given_up = !(retriable && item.attempts <= self.config.retries);
                            if !given_up {
                                again.push_front(item);
                                let factor = 1u32 << (item_attempts(&again) - 1).min(5);
                                let mut wait = (self.config.retry_backoff * factor)
                                    .min(self.config.retry_backoff_max.max(self.config.retry_backoff));
                                if let Pushback::Wait(after) = push {
                                    wait = after;
                                }
                                backoff_until = Some(Instant::now() + wait);
                            } else {
                                tracing::warn!(topic = %self.topic, shard = self.shard, error = %e, "batch failed");
                                self.fail(std::mem::take(&mut item.waiters), &e);
                                // Fenced by a newer instance: this producer is done.
                                if fenced && !own_bump {
                                    for mut it in again.drain(..).chain(queue.drain(..)) {
                                        (self.release)(std::mem::take(&mut it.permits));
                                        self.fail(it.waiters, &e);
                                    }
                                }
                            }
                            while let Some(it) = again.pop_back() {
                                queue.push_front(it);
                            }
                            // A batch given up that was certainly not stored leaves a gap
                            // in the sequence: its successors (not stored either, being
                            // after it) move to a new epoch. When its fate is unknown
                            // (I/O error, timeout) they keep their stamps, so a stored
                            // one is recognised as a duplicate, and an unstored one comes
                            // back OUT_OF_ORDER_SEQUENCE and is re-stamped then.
                            if (given_up && e.certainly_not_stored()) || out_of_order {
                                if let Err(e2) = self.bump_epoch(&mut queue).await {
                                    tracing::warn!(error = %e2, "could not bump producer epoch");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

impl ShardSender {
    /// Waits for every batch in flight: a stored one is resolved, the others are
    /// returned in order (marked when their fate is unknown).
    async fn settle_in_flight(
        &self,
        sent: &mut VecDeque<Item>,
        in_flight: &mut FuturesOrdered<InFlight>,
    ) -> VecDeque<Item> {
        let mut unsettled = VecDeque::new();
        while let Some(r) = in_flight.next().await {
            let mut item = sent.pop_front().expect("sent matches in_flight");
            match r {
                Ok(r) => self.resolve(item, r),
                Err(e) => {
                    self.note_fate(&mut item, &e);
                    unsettled.push_back(item);
                }
            }
        }
        unsettled
    }

    /// Gives back every batch not yet stored (after the topic was resharded), in
    /// order: those in flight once they settle (a stored one is resolved here), then
    /// the queued ones. Nothing given back was stored, so the lane's sequence numbers
    /// go back to the first of them. A batch whose fate is unknown (an attempt's answer
    /// was lost or timed out, and no later one said it is not stored: `note_fate`) is
    /// failed rather than given back: placed again it could be stored twice.
    async fn hand_back(
        &mut self,
        queue: &mut VecDeque<Item>,
        sent: &mut VecDeque<Item>,
        in_flight: &mut FuturesOrdered<InFlight>,
    ) -> Vec<HandedBack> {
        let mut unsettled = self.settle_in_flight(sent, in_flight).await;
        unsettled.extend(queue.drain(..));
        let mut first: Option<batch::BatchHeader> = None;
        let mut back = Vec::with_capacity(unsettled.len());
        for mut item in unsettled {
            if item.permits > 0 {
                (self.release)(std::mem::take(&mut item.permits));
            }
            let waiters = std::mem::take(&mut item.waiters);
            if item.maybe_stored {
                let e = ClientError::Broker {
                    code: ErrorCode::LayoutChanged,
                    message: "the topic was resharded while this batch's fate was unknown (an attempt's answer was lost or timed out); it is not sent again, so it may or may not be stored".into(),
                    retry_after_ms: 0,
                };
                self.fail(waiters, &e);
                continue;
            }
            if first.is_none() {
                first = batch::BatchHeader::read(&item.bytes).ok();
            }
            self.settled(None);
            back.push(HandedBack {
                bytes: item.bytes,
                waiters,
            });
        }
        if let (Some(used), Some(h)) = (self.epoch_used, first) {
            if used == (h.producer_id, h.producer_epoch) {
                self.next_seq = h.base_sequence;
            }
        }
        back
    }
}

impl ShardSender {
    /// What a failed attempt tells of whether its batch is stored. An answer lost or
    /// timed out leaves it perhaps stored (and then it is never placed again by a
    /// relayout, nor re-stamped after being given up). LAYOUT_CHANGED or
    /// OUT_OF_ORDER_SEQUENCE to an idempotent batch says it is not, whatever earlier
    /// attempts did: the broker answers a retry of a stored batch with its offsets
    /// before it looks at the layout or the sequence (PROTOCOL.md, "Retries across a
    /// reshard"), and a lane keeps no more batches in flight than the broker remembers,
    /// so a stored one would have been recognised. Such a batch is placed again rather
    /// than failed as of unknown fate.
    fn note_fate(&self, item: &mut Item, e: &ClientError) {
        let denied = self.identity.is_some()
            && matches!(
                e.code(),
                Some(ErrorCode::LayoutChanged | ErrorCode::OutOfOrderSequence)
            );
        if denied {
            item.maybe_stored = false;
        } else {
            item.maybe_stored |= !e.certainly_not_stored();
        }
    }
}

fn item_attempts(q: &VecDeque<Item>) -> u32 {
    q.front().map_or(1, |i| i.attempts.max(1))
}

impl ShardSender {
    /// The batch was stored: its waiters learn their offsets and the lane has room.
    fn resolve(&self, item: Item, r: ProduceResponse) {
        item.waiters.resolve(self.shard, r.base_offset);
        // Nothing else holds the bytes once the request is written and answered.
        self.settled(item.bytes.try_into_mut().ok());
    }

    /// The batch failed for good.
    fn fail(&self, waiters: Waiters, e: &ClientError) {
        waiters.fail(e);
        self.settled(None);
    }

    fn settled(&self, spare: Option<BytesMut>) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        (self.room)(spare);
    }
}
