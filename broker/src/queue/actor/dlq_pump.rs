//! The dead-letter pump: records out of attempts are written to the dead-letter topic
//! by another task, one source shard's batch at a time, and recorded as dead in the
//! state log once that write is durable (see [`crate::queue::dlq`] for why that order
//! and how a crash between the two is healed).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_protocol::batch::{BatchHeader, Record};
use weir_protocol::ErrorCode;

use super::window::{read_record, EntryState, Timer};
use super::{Internal, QueueActor, C_DEAD};
use crate::error::BrokerError;
use crate::queue::dlq;
use crate::queue::state_log::{Event, Failure, ShardRecovery};
use crate::topics::{Topic, TopicRegistry};

/// Most records taken for one dead-letter write.
const DLQ_BATCH_RECORDS: usize = 256;
/// Bytes after which a dead-letter write starts another append.
const DLQ_APPEND_BYTES: usize = 1 << 20;
/// Delay before a failed dead-letter write is tried again.
const DLQ_RETRY: Duration = Duration::from_secs(1);

/// How a dead-letter write of records of source shard `shard` ended.
pub(super) struct DeadLettered {
    shard: u32,
    dlq_shard: u32,
    /// (source offset, dead-letter offset) of the records durably written.
    written: Vec<(u64, u64)>,
    /// Records not written because of `error`; tried again after [`DLQ_RETRY`].
    failed: Vec<u64>,
    /// Records that cannot be read any more (deleted by retention).
    lost: Vec<(u64, BrokerError)>,
    error: Option<BrokerError>,
}

/// Highest dead-letter offset the state log recorded, per dead-letter shard, over all
/// source shards.
pub(super) fn merged_dlq_high(recovered: &HashMap<u32, ShardRecovery>) -> HashMap<u32, u64> {
    let mut high: HashMap<u32, u64> = HashMap::new();
    for r in recovered.values() {
        for (ds, o) in &r.dlq_high {
            let h = high.entry(*ds).or_insert(*o);
            *h = (*h).max(*o);
        }
    }
    high
}

impl QueueActor {
    /// At start, finds records of this queue in the dead-letter topic past what the
    /// state log recorded (a crash came between the two writes), takes them as dead
    /// without writing them again, and returns the DEAD events to record.
    pub(super) fn heal_dead_letters(&mut self) -> Result<Vec<(u32, Event)>, BrokerError> {
        let mut healed = Vec::new();
        if let Some(dlq) = self.dlq.clone() {
            for ds in 0..dlq.shards.len() as u32 {
                let from = self.dlq_high.get(&ds).map_or(0, |h| h + 1);
                let found = dlq::scan_tail(&dlq, ds, from, &self.group, &self.topic_name)?;
                for f in found {
                    let Some(sq) = self.shards.get_mut(f.source_shard as usize) else {
                        continue;
                    };
                    if f.source_offset < sq.floor || sq.recovered_done.contains(&f.source_offset) {
                        continue;
                    }
                    sq.recovered_done.insert(f.source_offset);
                    sq.recovered_failed.remove(&f.source_offset);
                    healed.push((
                        f.source_shard,
                        Event::Dead {
                            offset: f.source_offset,
                            failures: f.failures,
                            dlq_shard: ds,
                            dlq_offset: f.dlq_offset,
                        },
                    ));
                }
            }
        }
        if !healed.is_empty() {
            tracing::warn!(
                group = %self.group,
                topic = %self.topic_name,
                records = healed.len(),
                "found dead-lettered records the state log did not record (crash between the two writes); recorded them as dead"
            );
        }
        for (_, ev) in &healed {
            if let Event::Dead {
                dlq_shard,
                dlq_offset,
                ..
            } = ev
            {
                let h = self.dlq_high.entry(*dlq_shard).or_insert(*dlq_offset);
                *h = (*h).max(*dlq_offset);
            }
        }
        Ok(healed)
    }

    /// Writes waiting records to the dead-letter topic in another task: up to
    /// [`DLQ_BATCH_RECORDS`] records of one source shard in one durable append (one
    /// flush for all). Their DEAD events follow in one state-log batch in
    /// [`QueueActor::on_internal`] once that write is durable, before the next write
    /// starts.
    pub(super) fn pump_dead_letters(&mut self) {
        if self.dlq_busy {
            return;
        }
        while let Some(&(s, _)) = self.dlq_pending.front() {
            let items = self.take_dead_batch(s);
            if items.is_empty() {
                continue;
            }
            self.dlq_busy = true;
            // A shard this node holds no copy of: the records go with the job.
            let held = match &self.shards[s as usize].remote {
                Some(feed) => items
                    .iter()
                    .filter_map(|(o, _)| feed.held.get(o).map(|r| (*o, r.clone())))
                    .collect(),
                None => HashMap::new(),
            };
            let job = DeadLetterJob {
                held,
                shard: s,
                items,
                topic: self.topic.clone(),
                topics: self.topics.clone(),
                group: self.group.clone(),
                name: dlq::dlq_name(&self.topic_name, &self.settings.dlq_suffix),
                retention_ms: self.settings.dlq_retention_ms,
                cached: self.dlq.clone(),
                replicated: self.settings.replicated.clone(),
            };
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Internal::DeadWritten(job.run().await));
            });
            return;
        }
    }

    /// Takes up to [`DLQ_BATCH_RECORDS`] pending records of source shard `s` off the
    /// queue, with their failures; those no longer dying are dropped.
    fn take_dead_batch(&mut self, s: u32) -> Vec<(u64, Failure)> {
        let mut take = Vec::new();
        let mut rest = std::collections::VecDeque::with_capacity(self.dlq_pending.len());
        for (ps, po) in self.dlq_pending.drain(..) {
            if ps == s && take.len() < DLQ_BATCH_RECORDS {
                take.push(po);
            } else {
                rest.push_back((ps, po));
            }
        }
        self.dlq_pending = rest;
        take.into_iter()
            .filter_map(|o| {
                let e = self.shards[s as usize].entries.get(&o)?;
                matches!(e.state, EntryState::Dying).then(|| (o, e.failure.clone()))
            })
            .collect()
    }

    pub(super) async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Fetched(f) => self.on_fetched(f),
            Internal::DeadWritten(done) => {
                self.dlq_busy = false;
                let s = done.shard;
                for (offset, e) in done.lost {
                    self.lost(s, offset, e);
                }
                if !done.written.is_empty() {
                    if self.dlq.is_none() {
                        let name = dlq::dlq_name(&self.topic_name, &self.settings.dlq_suffix);
                        self.dlq = self.topics.get(&name).ok();
                    }
                    self.record_dead(s, done.dlq_shard, &done.written).await;
                }
                if let Some(e) = done.error {
                    // The dead-letter topic may have been deleted: look it up (or
                    // create it) afresh next time rather than retry a closed one.
                    self.dlq = None;
                    tracing::error!(group = %self.group, topic = %self.topic_name, shard = s,
                        records = done.failed.len(), error = %e, "dead-letter write failed; trying again");
                    for offset in done.failed {
                        if let Some(en) = self.shards[s as usize].entries.get_mut(&offset) {
                            let key = self.timers.insert((s, offset, Timer::DlqRetry), DLQ_RETRY);
                            en.timer = Some(key);
                        }
                    }
                }
                self.pump_dead_letters();
            }
        }
    }

    /// Appends the DEAD events of records now durably in the dead-letter topic (one
    /// state-log batch, in dead-letter offset order), marks them done, and answers the
    /// nacks waiting for them once the events are durable.
    pub(super) async fn record_dead(&mut self, s: u32, dlq_shard: u32, written: &[(u64, u64)]) {
        let mut events = Vec::with_capacity(written.len());
        for &(offset, dlq_offset) in written {
            let failures = self.shards[s as usize]
                .entries
                .get(&offset)
                .map_or(0, |e| e.failure.failures);
            events.push((
                s,
                Event::Dead {
                    offset,
                    failures,
                    dlq_shard,
                    dlq_offset,
                },
            ));
            let high = self.dlq_high.entry(dlq_shard).or_insert(dlq_offset);
            *high = (*high).max(dlq_offset);
        }
        let waiters: Vec<_> = written
            .iter()
            .filter_map(|(o, _)| self.dead_waiters.remove(&(s, *o)))
            .collect();
        match self
            .log
            .append(&self.group, &self.topic_name, &events)
            .await
        {
            Ok(rx) => {
                tokio::spawn(async move {
                    let ok = matches!(rx.await, Ok(Ok(_)));
                    for w in waiters {
                        let _ = w.send(if ok {
                            Ok(())
                        } else {
                            Err(BrokerError::new(
                                ErrorCode::StorageError,
                                "dead-lettered, but not recorded durably",
                            ))
                        });
                    }
                });
            }
            // The records are in the dead-letter topic; the next start heals the
            // missing DEAD events from their headers.
            Err(e) => {
                tracing::error!(error = %e, "cannot record dead-letterings");
                for w in waiters {
                    let _ = w.send(Err(BrokerError::new(
                        ErrorCode::StorageError,
                        e.to_string(),
                    )));
                }
            }
        }
        for &(offset, _) in written {
            self.shards[s as usize].mark_done(offset);
            self.counts[C_DEAD] += 1;
            self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
            self.shared.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(group = %self.group, topic = %self.topic_name, shard = s, records = written.len(), "dead-lettered");
        self.shared.available.notify_waiters();
    }
}

/// One dead-letter write, run in its own task so the queue keeps serving meanwhile.
struct DeadLetterJob {
    shard: u32,
    /// (source offset, failure) of the records to write, all of `shard`.
    items: Vec<(u64, Failure)>,
    topic: Arc<Topic>,
    topics: Arc<TopicRegistry>,
    group: String,
    /// The dead-letter topic, created on first use unless `cached`.
    name: String,
    retention_ms: u64,
    cached: Option<Arc<Topic>>,
    /// On a cluster node: the topic is created through the consensus engine and
    /// written on its primary with mirrored acks.
    replicated: Option<Arc<dyn crate::queue::replicated::Replicator>>,
    /// Records of a shard this node holds no copy of, by offset.
    held: HashMap<u64, Record>,
}

impl DeadLetterJob {
    async fn run(self) -> DeadLettered {
        let mut done = DeadLettered {
            shard: self.shard,
            dlq_shard: 0,
            written: Vec::new(),
            failed: Vec::new(),
            lost: Vec::new(),
            error: None,
        };
        let shards = self.topic.shards.len() as u32;
        let dlq = match (self.cached.clone(), &self.replicated) {
            (Some(d), _) => Ok(d),
            (None, Some(r)) => {
                r.dead_letter_topic(
                    self.name.clone(),
                    self.topic.name.clone(),
                    shards,
                    self.retention_ms,
                )
                .await
            }
            (None, None) => {
                dlq::ensure_topic(&self.topics, &self.name, shards, self.retention_ms).await
            }
        };
        let dlq = match dlq {
            Ok(d) => d,
            Err(e) => {
                done.failed = self.items.iter().map(|(o, _)| *o).collect();
                done.error = Some(e);
                return done;
            }
        };
        done.dlq_shard = dlq::dlq_shard(&dlq, self.shard);
        // Appends of at most DLQ_APPEND_BYTES (at least one record each), one after
        // the other; the first failure stops the rest.
        let mut at = 0;
        while at < self.items.len() && done.error.is_none() {
            let (batches, headers, offsets) = self.build_chunk(&mut at, &mut done);
            if batches.is_empty() {
                continue;
            }
            let appended = match (&self.replicated, dlq.shard(done.dlq_shard)) {
                (_, Err(e)) => Err(e),
                (Some(r), Ok(_)) => {
                    r.append_mirrored(self.name.clone(), done.dlq_shard, batches)
                        .await
                }
                (None, Ok(shard)) => shard
                    .append(batches, headers, true)
                    .await
                    .map(|out| out.base_offset)
                    .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string())),
            };
            match appended {
                // One record per batch: the i-th landed at base + i.
                Ok(base) => done.written.extend(
                    offsets
                        .iter()
                        .enumerate()
                        .map(|(i, o)| (*o, base + i as u64)),
                ),
                Err(e) => {
                    done.failed.extend(offsets);
                    done.error = Some(e);
                }
            }
        }
        done.failed.extend(self.items[at..].iter().map(|(o, _)| *o));
        done
    }

    /// Builds the dead-letter batches of one append from `items[*at..]`: at least one
    /// record, up to [`DLQ_APPEND_BYTES`]. Records gone (retention) are noted as lost; a
    /// read or build error stops the chunk and is noted in `done`.
    fn build_chunk(
        &self,
        at: &mut usize,
        done: &mut DeadLettered,
    ) -> (Vec<Bytes>, Vec<BatchHeader>, Vec<u64>) {
        let (mut batches, mut headers, mut offsets, mut bytes) =
            (Vec::new(), Vec::new(), Vec::new(), 0usize);
        let (s, topic) = (self.shard, &self.topic);
        while *at < self.items.len() && (batches.is_empty() || bytes < DLQ_APPEND_BYTES) {
            let (offset, failure) = &self.items[*at];
            *at += 1;
            let record = match self.held.get(offset) {
                Some(r) => Ok(r.clone()),
                None => read_record(topic, s, *offset),
            };
            let built =
                record.and_then(|rec| dlq::build_batch(&self.group, &topic.name, s, &rec, failure));
            match built {
                Ok((batch, header)) => {
                    bytes += batch.len();
                    batches.push(batch);
                    headers.push(header);
                    offsets.push(*offset);
                }
                Err(e) if e.code == ErrorCode::OffsetOutOfRange => done.lost.push((*offset, e)),
                Err(e) => {
                    done.failed.push(*offset);
                    done.error = Some(e);
                    break;
                }
            }
        }
        (batches, headers, offsets)
    }
}
