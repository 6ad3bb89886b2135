//! Produce: validate a request, fill in record metadata, admit it, queue it on its
//! shard's writer in connection order, then answer it at its ack level.
//!
//! [`start`] runs in the connection's reader loop, so two produces pipelined on one
//! connection to one shard are queued (and written) in the order they were sent.
//! [`Queued::finish`] runs in its own task and waits for the ack level through
//! [`super::acks`], the one owner of "when may this produce be answered".

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_protocol::batch::{self, BatchHeader, NO_PRODUCER_ID};
use weir_protocol::classes::Class;
use weir_protocol::frame::{RequestHeader, ResponseFrame};
use weir_protocol::keys::shard_for_key;
use weir_protocol::messages::{Acks, ProduceRequest, ProduceResponse};
use weir_protocol::routing::ANY_SHARD;
use weir_protocol::{DecodeError, ErrorCode};

use super::acks::{append_error, AckPlan};
use super::{admission, placement};
use crate::cluster::replication::primary::PrimaryState;
use crate::error::BrokerError;
use crate::flow::quota::ClientState;
use crate::flow::ProduceTicket;
use crate::shard::writer::PendingAppend;
use crate::shard::{AppendError, AppendOutcome, Layout, Shard};
use crate::state::BrokerState;
use crate::topics::Topic;

/// How a produce ends: the response to send (none when the client asked for no
/// acknowledgement) and whether it failed (counted either way).
pub struct Outcome {
    pub response: Option<ResponseFrame>,
    pub failed: bool,
}

/// A produce after [`start`]: refused already, or queued on its shard.
pub enum Started {
    Refused(Outcome),
    Queued(Queued),
}

/// A produce waiting for its shard writer.
pub struct Queued {
    header: RequestHeader,
    plan: AckPlan,
    timeout: Duration,
    log_start: u64,
    answer: Answer,
    records: u64,
    bytes: u64,
    /// Flow-control accounting, released when the produce is answered.
    ticket: ProduceTicket,
    /// For `weir_produce_latency_seconds` and the topic's counters.
    topic: Arc<Topic>,
    /// For the shard's own counters (`ClassStats::io`).
    shard: Arc<Shard>,
    /// The shard's number (the request's, or the one the broker placed it on).
    shard_no: u32,
    class: Class,
    acks: usize,
    started: Instant,
    /// In a cluster, the shard's primary role (it moves the replicated high-water mark
    /// and answers `mirrored`).
    primary: Option<Arc<PrimaryState>>,
}

/// The writer's answer to a queued produce: there already when the append was written
/// in place (`shard::writer::append_in_place`), else still to come.
enum Answer {
    Ready(Result<AppendOutcome, AppendError>),
    Pending(PendingAppend),
}

/// Validates a produce and queues it on its shard's writer.
pub async fn start(
    state: &Arc<BrokerState>,
    client: &Arc<ClientState>,
    header: &RequestHeader,
    req: ProduceRequest,
) -> Started {
    let started = Instant::now();
    let acks = ack_index(req.acks);
    // Without an ack plan (a level this broker cannot give) the client still hears why.
    let reply = AckPlan::for_level(req.acks, state.cluster.is_some()).map_or(true, |p| p.reply);
    let refuse = |e: BrokerError, retry_after_ms: u32| {
        tracing::debug!(code = %e.code, message = %e.message, "produce refused");
        Started::Refused(Outcome {
            response: reply
                .then(|| ResponseFrame::error(header, e.code, retry_after_ms, e.message)),
            failed: true,
        })
    };
    let checked = match check(state, &req) {
        Ok(c) => c,
        Err(e) => return refuse(e, 0),
    };
    let Checked {
        topic,
        shard,
        shard_no,
        plan,
        batches,
        headers,
        class,
        primary,
        layout,
    } = checked;
    let records: u64 = headers.iter().map(|h| u64::from(h.record_count)).sum();
    let bytes = batches.iter().map(|b| b.len() as u64).sum();
    // Flow control decides before anything is queued: a refused produce was never
    // accepted. It sheds by the request's class, the lane it would wait in.
    let mut ticket = match admission::produce(state, client, class, bytes) {
        Ok(t) => t,
        Err(r) => {
            if r.code == ErrorCode::Shed {
                state.meters.shed_records[class.index()].fetch_add(records, Ordering::Relaxed);
            }
            return refuse(BrokerError::new(r.code, r.message), r.retry_after_ms);
        }
    };
    let stamps: Vec<(u64, u16)> = headers
        .iter()
        .map(|h| (h.producer_id, h.producer_epoch))
        .filter(|&(id, epoch)| id != 0 && epoch != 0)
        .collect();
    // The load signal's produce latency runs from here: it takes in a wait for room in
    // the lane, and the write itself when the append is written in place.
    ticket.enqueued();
    let answer = match shard
        .enqueue_in_layout(batches, headers, plan.needs_flush(), layout)
        .await
    {
        Ok(mut rx) => match rx.try_recv() {
            Ok(written) => Answer::Ready(written),
            Err(_) => Answer::Pending(rx),
        },
        Err(e) => return refuse(append_error(e), 0),
    };
    // Queued: a newer epoch now fences older instances on every shard.
    for (id, epoch) in stamps {
        state.producer_ids.observe(id, epoch);
    }
    let timeout_ms = match req.timeout_ms {
        0 => state.config.produce_timeout_ms,
        t => t,
    };
    Started::Queued(Queued {
        header: *header,
        plan,
        timeout: Duration::from_millis(u64::from(timeout_ms)),
        log_start: shard.reader().log_start_offset(),
        shard: shard.clone(),
        shard_no,
        answer,
        records,
        bytes,
        ticket,
        topic,
        class,
        acks,
        started,
        primary,
    })
}

/// The `ACK_LEVELS` index of an ack level.
fn ack_index(acks: Acks) -> usize {
    match acks {
        Acks::None => 0,
        Acks::Leader => 1,
        Acks::Durable => 2,
        Acks::Mirrored => 3,
    }
}

/// A produce that passed every check and is ready to be admitted.
struct Checked {
    topic: Arc<Topic>,
    shard: Arc<Shard>,
    shard_no: u32,
    plan: AckPlan,
    batches: Vec<Bytes>,
    headers: Vec<BatchHeader>,
    class: Class,
    primary: Option<Arc<PrimaryState>>,
    layout: Layout,
}

/// Every check a produce must pass before admission, in the order a client sees
/// their refusals.
fn check(state: &BrokerState, req: &ProduceRequest) -> Result<Checked, BrokerError> {
    let topic = match state.topics.get(&req.topic) {
        Ok(t) => t,
        // A cluster node may learn of a topic (its metadata) before it has opened
        // the topic's shards: the client retries (or goes to the primary) rather
        // than hear that a topic it just created does not exist.
        // (For ANY_SHARD, shard 0 stands for the topic.)
        Err(e) => match (&state.cluster, probe_shard(req.shard)) {
            (Some(c), probe) if c.meta().shard(&req.topic, probe).is_some() => {
                c.check_primary(&req.topic, probe)?;
                return Err(BrokerError::new(
                    ErrorCode::NotPrimary,
                    format!(
                        "{}/{} is in the cluster's metadata but not open on this node yet",
                        req.topic, req.shard
                    ),
                ));
            }
            _ => return Err(e),
        },
    };
    // A produce sent to ANY_SHARD is checked and filled first: where it goes depends
    // on its keys and priority.
    let (shard_no, filled) = if req.shard == ANY_SHARD {
        fits(&topic, req)?;
        let (batches, headers, keyed) = split_and_fill(&topic, req.records.to_bytes())?;
        let shard = placement::place(state, &topic, &batches, &headers)?;
        (shard, Some((batches, headers, keyed)))
    } else {
        (req.shard, None)
    };
    // A shard a reshard sealed takes no new records, but a producer's retry of what it
    // stored there before is still answered (see `Layout::Moved`, below).
    let (shard, mut moved) = match topic.active_shard(shard_no) {
        Ok(s) => (s.clone(), None),
        Err(e) if e.code == ErrorCode::LayoutChanged => (topic.shard(shard_no)?.clone(), Some(e)),
        Err(e) => return Err(e),
    };
    let plan = AckPlan::for_level(req.acks, state.cluster.is_some())?;
    // In a cluster only the primary takes produce, and a mirrored one needs enough
    // in-sync copies before anything is written.
    let primary = match &state.cluster {
        Some(c) => {
            let p = c.check_primary(&req.topic, shard_no)?;
            if plan.mirrored {
                p.check_min_in_sync()?;
            }
            // The primary's handle: a copy cut back and reopened gets a new one.
            Some(p)
        }
        None => None,
    };
    let shard = primary.as_ref().map_or(shard, |p| p.shard.clone());
    let max = topic.config.max_message_bytes;
    let (batches, headers, keyed) = match filled {
        Some(f) => f,
        None => {
            fits(&topic, req)?;
            split_and_fill(&topic, req.records.to_bytes())?
        }
    };
    if keyed && moved.is_none() {
        let earlier = topic.reshards.iter().map(|r| r.from_shards);
        match keys_on_shard(&batches, shard_no, topic.active, earlier) {
            Err(e) if e.code == ErrorCode::LayoutChanged => moved = Some(e),
            r => r?,
        }
    }
    // Routed under an earlier layout. An idempotent producer's batches may be a retry
    // of batches stored here before the reshard (the answer lost with a connection):
    // the writer answers those with their offsets and refuses the rest, so a retry is
    // never placed again and stored twice. Other batches are refused here.
    let layout = match moved {
        None => Layout::Checked(topic.layout_epoch()),
        Some(e) if headers.iter().any(|h| h.producer_id == NO_PRODUCER_ID) => return Err(e),
        Some(e) => {
            tracing::debug!(message = %e.message, "produce under an earlier layout: answered only if a retry");
            Layout::Moved
        }
    };
    // Fencing per producer id, on every shard at once (producer_ids.rs); the shard's
    // writer still checks sequences and its own lanes' epochs. Once per distinct stamp
    // (a request's batches almost always share one).
    let mut checked = None;
    for h in &headers {
        let stamp = (h.producer_id, h.producer_epoch);
        if checked != Some(stamp) {
            state.producer_ids.admit(stamp.0, stamp.1)?;
            checked = Some(stamp);
        }
    }
    let class = one_class(&shard, &headers)?;
    let filled: usize = batches.iter().map(|b| b.len()).sum();
    if filled > max as usize {
        return Err(BrokerError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "{filled} bytes of records after filling in metadata exceed the topic's max_message_bytes {max}"
            ),
        ));
    }
    Ok(Checked {
        topic,
        shard,
        shard_no,
        plan,
        batches,
        headers,
        class,
        primary,
        layout,
    })
}

/// The shard that stands for a request's topic in a cluster's metadata.
fn probe_shard(shard: u32) -> u32 {
    if shard == ANY_SHARD {
        0
    } else {
        shard
    }
}

/// The request's records are within the topic's `max_message_bytes` and not empty.
fn fits(topic: &Topic, req: &ProduceRequest) -> Result<(), BrokerError> {
    let max = topic.config.max_message_bytes;
    if req.records.len_bytes() > max as usize {
        return Err(BrokerError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "{} bytes of records exceed the topic's max_message_bytes {max}",
                req.records.len_bytes(),
            ),
        ));
    }
    if req.records.is_empty() {
        return Err(BrokerError::new(ErrorCode::InvalidBatch, "no batches"));
    }
    Ok(())
}

/// Cuts the request's records into batches on their length fields, validates each
/// (its CRC once) and fills in the topic's record metadata where a record left it
/// unset ([`crate::inject`]). Also says whether any stored record may carry a key:
/// not when the validator counted every record keyless and the topic's shard-key rule
/// gives none, so the key → shard check need not walk the records again.
fn split_and_fill(
    topic: &Topic,
    mut rest: Bytes,
) -> Result<(Vec<Bytes>, Vec<BatchHeader>, bool), BrokerError> {
    let mut batches = Vec::new();
    let mut headers = Vec::new();
    let mut keyed = false;
    while !rest.is_empty() {
        // A batch cut short (or stray bytes after the last one) is a truncated field,
        // the same failure, and so the same code, as anywhere else (PROTOCOL.md,
        // "Which error each failure yields"): `DecodeError::code` decides, not this file.
        let needed = batch::peek_total_bytes(&rest)
            .unwrap_or(0)
            .max(batch::BATCH_HEADER_BYTES);
        if needed > rest.len() {
            let e = DecodeError::Truncated {
                needed,
                remaining: rest.len(),
            };
            return Err(BrokerError::new(
                e.code(),
                format!("batch {}: {e}", batches.len()),
            ));
        }
        let b = rest.split_to(needed);
        let (h, summary) =
            batch::validate_summary(&b).map_err(|e| BrokerError::new(e.code(), e.to_string()))?;
        keyed |= summary.keyless < h.record_count || topic.injector.derives_keys(&summary);
        let (b, h) = topic.injector.apply(b, h, &summary)?;
        headers.push(h);
        batches.push(b);
    }
    Ok((batches, headers, keyed))
}

/// Holds the key → shard rule (PROTOCOL.md, "Key → shard"): every keyed record — one
/// whose stored key is not empty, its own or the one the topic's shard-key rule
/// derived — must be on the shard [`shard_for_key`] gives, so one key is never stored
/// on two shards whoever produced it. Keyless records may go anywhere. Runs on the
/// filled-in batches, so a derived key counts like a key sent. A key that belonged
/// here under any `earlier` shard count (before each of the topic's reshards) is
/// refused with LAYOUT_CHANGED instead (retriable: the client routed before it
/// learned of a reshard, perhaps of several).
fn keys_on_shard<E>(
    batches: &[Bytes],
    shard: u32,
    shards: u32,
    earlier: E,
) -> Result<(), BrokerError>
where
    E: IntoIterator<Item = u32> + Clone,
{
    if shards <= 1 && earlier.clone().into_iter().next().is_none() {
        return Ok(());
    }
    for (b, bytes) in batches.iter().enumerate() {
        for (r, key) in batch::record_keys(bytes).enumerate() {
            if key.is_empty() {
                continue;
            }
            let right = shard_for_key(key, shards);
            if right != shard {
                let shown = String::from_utf8_lossy(&key[..key.len().min(64)]);
                if earlier
                    .clone()
                    .into_iter()
                    .any(|n| shard_for_key(key, n) == shard)
                {
                    return Err(BrokerError::new(
                        ErrorCode::LayoutChanged,
                        format!(
                            "record {r} of batch {b}: key {shown:?} moved to shard {right} when the topic was resharded to {shards} shards; refresh Metadata"
                        ),
                    ));
                }
                return Err(BrokerError::new(
                    ErrorCode::WrongShard,
                    format!(
                        "record {r} of batch {b}: key {shown:?} belongs on shard {right} of {shards}, not shard {shard}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The one priority class of a request's batches. Order and idempotent sequences are
/// per class and the writer queues a request in one class's lane, so one request must
/// not mix classes (the SDK never does).
fn one_class(shard: &Shard, headers: &[BatchHeader]) -> Result<Class, BrokerError> {
    let class = shard.class_of(headers);
    let classes = shard.classes();
    if headers
        .iter()
        .any(|h| classes.class_of(h.priority) != class)
    {
        return Err(BrokerError::new(
            ErrorCode::InvalidBatch,
            "the batches of one produce request must all be in one priority class",
        ));
    }
    Ok(class)
}

impl Queued {
    /// Whether [`Queued::finish`] has nothing to wait for: the append was written in
    /// place and no mirror must confirm it. The caller then finishes it in its own
    /// task instead of spawning one (a spawned task may wake a sleeping runtime
    /// worker to run it).
    pub fn answered(&self) -> bool {
        matches!(self.answer, Answer::Ready(_)) && !(self.primary.is_some() && self.plan.mirrored)
    }

    /// Waits for the ack level and builds the response (none for `acks=none`).
    pub async fn finish(self, state: &BrokerState) -> Outcome {
        let Queued {
            header,
            plan,
            timeout,
            log_start,
            answer,
            records,
            bytes,
            mut ticket,
            topic,
            shard,
            shard_no,
            class,
            acks,
            started,
            primary,
        } = self;
        let deadline = std::time::Instant::now() + timeout;
        let mut outcome = match answer {
            Answer::Ready(written) => written.map_err(append_error),
            Answer::Pending(rx) => plan.wait(rx, timeout).await,
        };
        if let (Some(p), Ok(o)) = (&primary, &outcome) {
            p.on_local_write();
            if plan.mirrored {
                if let Err(e) = p.wait_replicated(o.last_offset + 1, deadline).await {
                    outcome = Err(e);
                }
            }
        }
        if let Ok(o) = &outcome {
            ticket.acked();
            if !o.duplicate {
                let m = &state.metrics;
                m.produce_records_total
                    .fetch_add(records, Ordering::Relaxed);
                m.produce_bytes_total.fetch_add(bytes, Ordering::Relaxed);
                topic.io.produced(records, bytes);
                shard.stats().io.produced(records, bytes);
            }
        }
        state.meters.produce[class.index()][acks].observe(started.elapsed());
        let failed = outcome.is_err();
        let response = match outcome {
            Err(e) if !plan.reply => {
                tracing::debug!(code = %e.code, "acks=none produce failed: {}", e.message);
                None
            }
            _ if !plan.reply => None,
            Ok(o) => Some(ResponseFrame::ok(
                &header,
                ProduceResponse {
                    base_offset: o.base_offset,
                    last_offset: o.last_offset,
                    log_start_offset: log_start,
                    duplicate: u8::from(o.duplicate),
                    shard: shard_no,
                },
            )),
            Err(e) => Some(ResponseFrame::error(&header, e.code, 0, e.message)),
        };
        Outcome { response, failed }
    }
}

#[cfg(test)]
mod tests {
    use weir_protocol::messages::TopicConfig;

    use weir_protocol::batch::{BatchBuilder, NewRecord};

    use super::*;
    use crate::inject::Injector;

    fn topic() -> Topic {
        let config = TopicConfig::default();
        Topic {
            name: "t".into(),
            injector: Injector::new(&config).unwrap(),
            config,
            shards: Vec::new(),
            active: 0,
            reshards: Default::default(),
            io: Default::default(),
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// One table of codes: every invalid batch of the published vectors, sent as a
    /// Produce's records, is refused with exactly the code the vector names (which
    /// the vector test ties to `DecodeError::code` and PROTOCOL.md's table). A
    /// truncated batch used to be INVALID_BATCH here and INVALID_REQUEST in the spec.
    #[test]
    fn produce_refuses_each_invalid_batch_vector_with_its_documented_code() {
        let file: serde_json::Value =
            serde_json::from_str(include_str!("../../../protocol/tests/vectors/invalid.json"))
                .unwrap();
        let mut seen = 0;
        for v in file["vectors"].as_array().unwrap() {
            if v["kind"] != "batch" {
                continue;
            }
            let bytes = Bytes::from(unhex(v["hex"].as_str().unwrap()));
            let err = split_and_fill(&topic(), bytes).expect_err(v["name"].as_str().unwrap());
            let shown = err.code.to_string();
            let name = shown.split(' ').next().unwrap();
            assert_eq!(
                name,
                v["code"].as_str().unwrap(),
                "{}: {}",
                v["name"],
                err.message
            );
            seen += 1;
        }
        assert!(seen >= 12, "{seen} batch vectors");
    }

    /// The key → shard check walks a request's records only when one may hold a key:
    /// a keyed record, or a keyless one under a shard-key rule that derives keys.
    #[test]
    fn only_requests_that_may_hold_keys_are_walked_for_them() {
        let keyed_of = |t: &Topic, keys: &[&[u8]]| split_and_fill(t, keyed(keys)).unwrap().2;
        let plain = topic();
        assert!(!keyed_of(&plain, &[b"", b""]));
        assert!(keyed_of(&plain, &[b"", b"user-1"]));
        let mut ruled = topic();
        let config = TopicConfig {
            shard_key_rule: "header:user".into(),
            ..TopicConfig::default()
        };
        ruled.injector = Injector::new(&config).unwrap();
        assert!(keyed_of(&ruled, &[b"", b""]));
    }

    fn keyed(keys: &[&[u8]]) -> Bytes {
        let mut b = BatchBuilder::new();
        for k in keys {
            let mut r = NewRecord::value(0, b"v");
            r.key = k;
            b.push(&r).unwrap();
        }
        b.finish().unwrap()
    }

    /// A keyed record on another shard than its key's is refused with WRONG_SHARD
    /// naming the right one; keyless records and one-shard topics pass anywhere.
    #[test]
    fn keyed_records_must_be_on_their_keys_shard() {
        let right = shard_for_key(b"user-1", 7);
        let wrong = (right + 1) % 7;
        let ok = keyed(&[b"user-1", b"", b"user-1"]);
        keys_on_shard(std::slice::from_ref(&ok), right, 7, []).unwrap();
        let e = keys_on_shard(&[ok], wrong, 7, []).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongShard);
        assert!(
            e.message
                .contains(&format!("belongs on shard {right} of 7, not shard {wrong}")),
            "{}",
            e.message
        );
        keys_on_shard(&[keyed(&[b"", b""])], wrong, 7, []).unwrap();
        keys_on_shard(&[keyed(&[b"user-1"])], 0, 1, []).unwrap();
        // The second batch's second record is the one out of place.
        let other = (0u32..)
            .map(|i| format!("k{i}"))
            .find(|k| shard_for_key(k.as_bytes(), 7) != right)
            .unwrap();
        let e = keys_on_shard(
            &[keyed(&[b"user-1"]), keyed(&[b"user-1", other.as_bytes()])],
            right,
            7,
            [],
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("record 1 of batch 1"),
            "{}",
            e.message
        );
    }

    /// After a reshard from 2 to 3 shards, a key that moved is refused on its old
    /// shard with LAYOUT_CHANGED (the client routed before it learned of the reshard,
    /// and may retry after refreshing), never stored there; on a shard it never
    /// belonged to it is still WRONG_SHARD.
    #[test]
    fn a_key_moved_by_a_reshard_is_refused_on_its_old_shard_as_a_layout_change() {
        let moved = (0u32..)
            .map(|i| format!("k{i}"))
            .find(|k| shard_for_key(k.as_bytes(), 3) == 2)
            .unwrap();
        let old = shard_for_key(moved.as_bytes(), 2);
        let e = keys_on_shard(&[keyed(&[moved.as_bytes()])], old, 3, [2]).unwrap_err();
        assert_eq!(e.code, ErrorCode::LayoutChanged, "{}", e.message);
        let never = 1 - old;
        let e = keys_on_shard(&[keyed(&[moved.as_bytes()])], never, 3, [2]).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongShard, "{}", e.message);
        keys_on_shard(&[keyed(&[moved.as_bytes()])], 2, 3, [2]).unwrap();
        // Shrinking to one shard: every key belongs on shard 0, but a key may still
        // arrive at its old shard.
        let e = keys_on_shard(&[keyed(&[moved.as_bytes()])], 2, 1, [3]).unwrap_err();
        assert_eq!(e.code, ErrorCode::LayoutChanged, "{}", e.message);
        // Two reshards (2 → 4 → 3) behind: a key on its shard under 2 shards, which
        // neither 4 nor 3 shards put there, is still a layout change, not WRONG_SHARD.
        let (key, two) = (0u32..)
            .map(|i| format!("k{i}"))
            .find_map(|k| {
                let (s2, s4, s3) = (
                    shard_for_key(k.as_bytes(), 2),
                    shard_for_key(k.as_bytes(), 4),
                    shard_for_key(k.as_bytes(), 3),
                );
                (s2 != s4 && s2 != s3).then_some((k, s2))
            })
            .unwrap();
        let e = keys_on_shard(&[keyed(&[key.as_bytes()])], two, 3, [2, 4]).unwrap_err();
        assert_eq!(e.code, ErrorCode::LayoutChanged, "{}", e.message);
        let e = keys_on_shard(&[keyed(&[key.as_bytes()])], two, 3, [4]).unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::WrongShard,
            "only the last reshard known: {}",
            e.message
        );
    }

    /// Bytes after the last batch too short to hold a batch header are a truncated
    /// field; a batch_length below the header is a malformed batch.
    #[test]
    fn stray_bytes_and_short_lengths_get_the_codes_of_the_table() {
        let mut b = BatchBuilder::new();
        b.push(&NewRecord::value(0, b"x")).unwrap();
        let one = b.finish().unwrap();
        let mut two = one.to_vec();
        two.extend_from_slice(&[0; 5]);
        let e = split_and_fill(&topic(), Bytes::from(two)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{}", e.message);
        let mut short = one.to_vec();
        short[8..12].copy_from_slice(&10u32.to_le_bytes());
        let e = split_and_fill(&topic(), Bytes::from(short)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidBatch, "{}", e.message);
    }
}
