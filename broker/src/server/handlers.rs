//! Request handlers: one function per api, each turning a request into a response.
//!
//! Handlers never panic on client input; every refusal is a [`BrokerError`] with its
//! wire code, turned into an error response by [`handle`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_protocol::batch::{self, BatchHeader};
use weir_protocol::frame::{RequestHeader, ResponseFrame};
use weir_protocol::messages::*;
use weir_protocol::{ApiKey, ErrorCode, Request, ResponseBody};

use crate::error::BrokerError;
use crate::flow::quota::ClientState;
use crate::flow::ProduceTicket;
use crate::shard::writer::PendingAppend;
use crate::shard::{AppendError, Shard};
use crate::state::BrokerState;

/// Software name and version sent in ApiVersions and Metadata.
pub fn broker_software() -> String {
    format!("weir {}", env!("CARGO_PKG_VERSION"))
}

/// Answers every request except Produce (see [`produce_start`]).
pub async fn handle(
    state: &Arc<BrokerState>,
    header: &RequestHeader,
    request: Request,
) -> ResponseFrame {
    match dispatch(state, request).await {
        Ok(body) => ResponseFrame::ok(header, body),
        Err(e) => {
            tracing::debug!(api = header.api_key, code = %e.code, message = %e.message, "request refused");
            ResponseFrame::error(header, e.code, 0, e.message)
        }
    }
}

async fn dispatch(state: &Arc<BrokerState>, request: Request) -> Result<ResponseBody, BrokerError> {
    Ok(match request {
        Request::ApiVersions(_) => ApiVersionsResponse {
            broker_software: broker_software(),
            max_frame_bytes: state.config.max_frame_bytes,
            apis: ApiKey::ALL
                .iter()
                .map(|a| ApiVersionRange {
                    api_key: *a as u16,
                    min_version: a.min_version(),
                    max_version: a.max_version(),
                })
                .collect(),
            class_bounds: state
                .config
                .class_map()
                .unwrap_or_default()
                .bounds()
                .to_vec(),
            class_weights: state.config.class_weights().to_vec(),
        }
        .into(),
        Request::CreateTopic(r) => {
            let t = state.topics.create(&r.name, r.shards, r.config).await?;
            CreateTopicResponse {
                topic: t.metadata(),
            }
            .into()
        }
        Request::DeleteTopic(r) => {
            state.topics.delete(&r.name).await?;
            DeleteTopicResponse {}.into()
        }
        Request::Metadata(r) => {
            let topics = if r.topics.is_empty() {
                state.topics.list()
            } else {
                r.topics
                    .iter()
                    .map(|n| state.topics.get(n))
                    .collect::<Result<Vec<_>, _>>()?
            };
            MetadataResponse {
                uptime_s: state.started.elapsed().as_secs(),
                broker_software: broker_software(),
                topics: topics.iter().map(|t| t.metadata()).collect(),
            }
            .into()
        }
        Request::Fetch(r) => fetch(state, r).await?.into(),
        Request::PriorityFetch(r) => super::priority_fetch::priority_fetch(state, r)
            .await?
            .into(),
        Request::ListOffsets(r) => {
            let topic = state.topics.get(&r.topic)?;
            let reader = topic.shard(r.shard)?.reader();
            match r.timestamp_ms {
                LATEST_TIMESTAMP => ListOffsetsResponse {
                    offset: reader.high_watermark(),
                    timestamp_ms: -1,
                },
                EARLIEST_TIMESTAMP => ListOffsetsResponse {
                    offset: reader.log_start_offset(),
                    timestamp_ms: -1,
                },
                ts => match reader.offset_for_timestamp(ts).map_err(BrokerError::from)? {
                    Some((offset, timestamp_ms)) => ListOffsetsResponse {
                        offset,
                        timestamp_ms,
                    },
                    None => ListOffsetsResponse {
                        offset: reader.high_watermark(),
                        timestamp_ms: -1,
                    },
                },
            }
            .into()
        }
        Request::InitProducerId(r) => {
            let fresh = || {
                state
                    .producer_ids
                    .allocate()
                    .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))
            };
            if r.producer_id == 0 || r.producer_epoch == u16::MAX {
                InitProducerIdResponse {
                    producer_id: fresh()?,
                    producer_epoch: 0,
                }
            } else {
                InitProducerIdResponse {
                    producer_id: r.producer_id,
                    producer_epoch: r.producer_epoch + 1,
                }
            }
            .into()
        }
        Request::JoinGroup(r) => {
            if state.queues.is_queue_group(&r.group) {
                return Err(BrokerError::new(
                    ErrorCode::NotQueueGroup,
                    format!("group {:?} is used in queue mode", r.group),
                ));
            }
            state.groups.join(r).await?.into()
        }
        Request::QueueFetch(r) => {
            if state.groups.has_group(&r.group) {
                return Err(BrokerError::new(
                    ErrorCode::NotQueueGroup,
                    format!("group {:?} is a streaming (offset) group", r.group),
                ));
            }
            let wait =
                Duration::from_millis(u64::from(r.max_wait_ms.min(state.config.max_fetch_wait_ms)));
            state
                .queues
                .fetch(r, wait, state.shutdown.clone())
                .await?
                .into()
        }
        Request::Ack(r) => state.queues.ack(r).await?.into(),
        Request::Nack(r) => state.queues.nack(r).await?.into(),
        Request::ExtendLease(r) => state.queues.extend(r).await?.into(),
        Request::QueueStatus(r) => state.queues.status(r).await?.into(),
        Request::Heartbeat(r) => {
            state
                .groups
                .heartbeat(&r.group, &r.member_id, r.generation)?;
            HeartbeatResponse {}.into()
        }
        Request::LeaveGroup(r) => {
            state.groups.leave(&r.group, &r.member_id)?;
            LeaveGroupResponse {}.into()
        }
        Request::CommitOffsets(r) => {
            state
                .groups
                .check_commit(&r.group, &r.member_id, r.generation)?;
            for e in &r.offsets {
                let t = state.topics.get(&e.topic)?;
                t.shard(e.shard)?;
            }
            state.offsets.commit(&r.group, &r.offsets).await?;
            CommitOffsetsResponse {}.into()
        }
        Request::FetchOffsets(r) => {
            let offsets = if r.shards.is_empty() {
                state.offsets.all(&r.group)
            } else {
                r.shards
                    .iter()
                    .filter_map(|s| {
                        state
                            .offsets
                            .get(&r.group, &s.topic, s.shard)
                            .map(|offset| OffsetEntry {
                                topic: s.topic.clone(),
                                shard: s.shard,
                                offset,
                            })
                    })
                    .collect()
            };
            FetchOffsetsResponse { offsets }.into()
        }
        Request::DescribeQuotas(r) => state.flow.describe_quotas(r).into(),
        Request::AlterQuotas(r) => state.flow.alter_quotas(r).into(),
        Request::FlowStatus(_) => state.flow.status().into(),
        Request::Produce(_) => {
            return Err(BrokerError::new(
                ErrorCode::Unknown,
                "produce is handled by produce_start",
            ))
        }
    })
}

async fn fetch(state: &Arc<BrokerState>, r: FetchRequest) -> Result<FetchResponse, BrokerError> {
    let topic = state.topics.get(&r.topic)?;
    let shard: &Arc<Shard> = topic.shard(r.shard)?;
    let reader = shard.reader();
    let max_bytes = fetch_max_bytes(state, r.max_bytes);
    long_poll(state, shard, r.max_wait_ms, |last| {
        let hwm = reader.high_watermark();
        let start = reader.log_start_offset();
        if r.offset < start || r.offset > hwm {
            return Err(BrokerError::new(
                ErrorCode::OffsetOutOfRange,
                format!("offset {} outside [{start}, {hwm}]", r.offset),
            ));
        }
        let chunks = if r.offset < hwm {
            reader.read(r.offset, max_bytes)?
        } else {
            Vec::new()
        };
        let bytes: usize = chunks.iter().map(|c| c.len()).sum();
        if !last && (bytes == 0 || bytes < r.min_bytes as usize) {
            return Ok(None);
        }
        state
            .metrics
            .fetch_bytes_total
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(Some(FetchResponse {
            high_watermark: hwm,
            log_start_offset: start,
            records: Records::from_chunks(chunks),
        }))
    })
    .await
}

/// The most record bytes one fetch response carries: what the client asked for, within
/// the frame size (less room for the headers), and at least 1 so a fetch progresses.
pub(crate) fn fetch_max_bytes(state: &BrokerState, requested: u32) -> usize {
    (requested as usize)
        .min((state.config.max_frame_bytes as usize).saturating_sub(1024))
        .max(1)
}

/// A long-poll read, shared by Fetch and PriorityFetch: calls `fill(last)` now and
/// again whenever the shard's high-water mark moves, until it answers. `last` is true
/// once the wait (`max_wait_ms`, capped by `max_fetch_wait_ms`) is over or the broker
/// is shutting down; `fill` must answer then.
pub(crate) async fn long_poll<T>(
    state: &BrokerState,
    shard: &Shard,
    max_wait_ms: u32,
    mut fill: impl FnMut(bool) -> Result<Option<T>, BrokerError>,
) -> Result<T, BrokerError> {
    let wait = Duration::from_millis(u64::from(max_wait_ms.min(state.config.max_fetch_wait_ms)));
    let deadline = Instant::now() + wait;
    let mut hwm_rx = shard.watch_high_watermark();
    let mut shutdown = state.shutdown.clone();
    loop {
        hwm_rx.borrow_and_update();
        let last = Instant::now() >= deadline || *shutdown.borrow();
        if let Some(answer) = fill(last)? {
            return Ok(answer);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = hwm_rx.changed() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A produce that has been queued on its shard (or refused before that).
pub enum PendingProduce {
    /// Answer now.
    Done(Option<ResponseFrame>),
    /// Wait for the shard writer.
    Queued {
        header: RequestHeader,
        acks: Acks,
        timeout: Duration,
        log_start: u64,
        rx: PendingAppend,
        records: u64,
        bytes: u64,
        /// Flow-control accounting, released when the produce is answered.
        ticket: ProduceTicket,
    },
}

/// Validates a produce and queues it on its shard's writer. Runs in the connection's
/// reader loop so produces from one connection are queued in the order they arrived.
pub async fn produce_start(
    state: &Arc<BrokerState>,
    client: &Arc<ClientState>,
    header: &RequestHeader,
    req: ProduceRequest,
) -> PendingProduce {
    let refuse_after = |e: BrokerError, retry_after_ms: u32| {
        tracing::debug!(code = %e.code, message = %e.message, "produce refused");
        state
            .metrics
            .request_errors_total
            .fetch_add(1, Ordering::Relaxed);
        if req.acks == Acks::None {
            PendingProduce::Done(None)
        } else {
            PendingProduce::Done(Some(ResponseFrame::error(
                header,
                e.code,
                retry_after_ms,
                e.message,
            )))
        }
    };
    let refuse = |e: BrokerError| refuse_after(e, 0);
    let topic = match state.topics.get(&req.topic) {
        Ok(t) => t,
        Err(e) => return refuse(e),
    };
    let shard = match topic.shard(req.shard) {
        Ok(s) => s.clone(),
        Err(e) => return refuse(e),
    };
    if req.records.len_bytes() > topic.config.max_message_bytes as usize {
        return refuse(BrokerError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "{} bytes of records exceed the topic's max_message_bytes {}",
                req.records.len_bytes(),
                topic.config.max_message_bytes
            ),
        ));
    }
    if req.records.is_empty() {
        return refuse(BrokerError::new(ErrorCode::InvalidBatch, "no batches"));
    }
    if req.acks == Acks::Mirrored {
        return refuse(BrokerError::new(
            ErrorCode::InvalidRequest,
            "acks=mirrored needs a mirror; mirrors are not available yet",
        ));
    }
    let mut batches = Vec::new();
    let mut headers: Vec<BatchHeader> = Vec::new();
    // Split on the length fields only; `validate` checks each batch's CRC once.
    let mut rest = req.records.to_bytes();
    while !rest.is_empty() {
        let Some(total) = batch::peek_total_bytes(&rest).filter(|&t| t <= rest.len()) else {
            return refuse(BrokerError::new(ErrorCode::InvalidBatch, "truncated batch"));
        };
        let b = rest.split_to(total);
        let (b, h) = match batch::validate_summary(&b) {
            Ok((h, summary)) => match topic.injector.apply(b, h, &summary) {
                Ok(filled) => filled,
                Err(e) => return refuse(e),
            },
            Err(e) => return refuse(BrokerError::new(e.code(), e.to_string())),
        };
        headers.push(h);
        batches.push(b);
    }
    // Order and idempotent sequences are per class and the writer queues a request in
    // one class's lane, so one request must not mix classes (the SDK never does).
    let class = shard.class_of(&headers);
    let classes = shard.classes();
    if headers
        .iter()
        .any(|h| classes.class_of(h.priority) != class)
    {
        return refuse(BrokerError::new(
            ErrorCode::InvalidBatch,
            "the batches of one produce request must all be in one priority class",
        ));
    }
    let filled: usize = batches.iter().map(|b| b.len()).sum();
    if filled > topic.config.max_message_bytes as usize {
        return refuse(BrokerError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "{filled} bytes of records after filling in metadata exceed the topic's max_message_bytes {}",
                topic.config.max_message_bytes
            ),
        ));
    }
    let records: u64 = headers.iter().map(|h| u64::from(h.record_count)).sum();
    let bytes = batches.iter().map(|b| b.len() as u64).sum();
    // Flow control decides before anything is queued: a refused produce was never
    // accepted. It sheds by the request's class, the lane it would wait in.
    let mut ticket = match state.flow.admit_produce(client, class, bytes) {
        Ok(t) => t,
        Err(r) => return refuse_after(BrokerError::new(r.code, r.message), r.retry_after_ms),
    };
    let durable = req.acks == Acks::Durable;
    let rx = match shard.enqueue(batches, headers, durable).await {
        Ok(rx) => rx,
        Err(e) => return refuse(append_error(e)),
    };
    ticket.enqueued();
    let timeout_ms = if req.timeout_ms == 0 {
        state.config.produce_timeout_ms
    } else {
        req.timeout_ms
    };
    PendingProduce::Queued {
        header: *header,
        acks: req.acks,
        timeout: Duration::from_millis(u64::from(timeout_ms)),
        log_start: shard.reader().log_start_offset(),
        rx,
        records,
        bytes,
        ticket,
    }
}

fn append_error(e: AppendError) -> BrokerError {
    let code = match &e {
        AppendError::Storage(_) => ErrorCode::StorageError,
        AppendError::OutOfOrder { .. } => ErrorCode::OutOfOrderSequence,
        AppendError::Fenced { .. } => ErrorCode::ProducerFenced,
        AppendError::Closed => ErrorCode::ShuttingDown,
    };
    BrokerError::new(code, e.to_string())
}

impl PendingProduce {
    /// Waits for the ack level and builds the response (none for `acks=none`).
    pub async fn finish(self, state: &BrokerState) -> Option<ResponseFrame> {
        let (header, acks, timeout, log_start, rx, records, bytes, mut ticket) = match self {
            PendingProduce::Done(r) => return r,
            PendingProduce::Queued {
                header,
                acks,
                timeout,
                log_start,
                rx,
                records,
                bytes,
                ticket,
            } => (header, acks, timeout, log_start, rx, records, bytes, ticket),
        };
        let outcome = match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(BrokerError::new(
                ErrorCode::RequestTimedOut,
                "ack level not reached in time; the records may still be written",
            )),
            Ok(Err(_)) => Err(BrokerError::new(ErrorCode::ShuttingDown, "shard closed")),
            Ok(Ok(r)) => r.map_err(append_error),
        };
        if let Ok(o) = &outcome {
            ticket.acked();
            if !o.duplicate {
                state
                    .metrics
                    .produce_records_total
                    .fetch_add(records, Ordering::Relaxed);
                state
                    .metrics
                    .produce_bytes_total
                    .fetch_add(bytes, Ordering::Relaxed);
            }
        }
        if acks == Acks::None {
            if let Err(e) = outcome {
                tracing::debug!(code = %e.code, "acks=none produce failed: {}", e.message);
            }
            return None;
        }
        Some(match outcome {
            Ok(o) => ResponseFrame::ok(
                &header,
                ProduceResponse {
                    base_offset: o.base_offset,
                    last_offset: o.last_offset,
                    log_start_offset: log_start,
                    duplicate: u8::from(o.duplicate),
                },
            ),
            Err(e) => {
                state
                    .metrics
                    .request_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                ResponseFrame::error(&header, e.code, 0, e.message)
            }
        })
    }
}
