//! Following a reshard in the producer (PROTOCOL.md, "Resharding"): [`Core::relayout`]
//! takes back a topic's unstored batches from its lanes and places their records
//! again by the new shard count before any new record, so each key keeps its order
//! even for pipelined sends; [`Core::relearn_topic`] learns the new count.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use weir_protocol::batch::{self, NewRecord};
use weir_protocol::classes::CLASS_COUNT;
use weir_protocol::ErrorCode;

use super::{active_shards, layout_epoch, Core, Lane, LaneId, NewWaiter, State};
use crate::delivery::Rerouted;
use crate::error::{ClientError, Result};
use crate::partitioner::shard_for_key;
use crate::producer::sender::{HandedBack, SenderMsg};

/// Longest a relayout waits for Metadata to show a reshard the broker already
/// answered LAYOUT_CHANGED for.
const NEW_LAYOUT_WAIT: Duration = Duration::from_secs(5);

/// How many times a record may be placed again after reshards before it fails with
/// LAYOUT_CHANGED (bounds a loop of reshards or of a broker refusing a layout).
const MAX_REROUTES: u32 = 3;

impl Core {
    /// Learns a known topic's shard count again (a lane was told LAYOUT_CHANGED: the
    /// topic was resharded): records sent from now on are placed by the new count.
    /// Lanes of shards a reshard sealed stay (their batches in flight settle there).
    ///
    /// A LAYOUT_CHANGED answer may come as soon as the broker's writers are cut, a
    /// moment before Metadata shows the new count (the cut is made durable first):
    /// while Metadata still shows the epoch known before, it is asked again, for at
    /// most [`NEW_LAYOUT_WAIT`]; after that the count it shows is taken.
    pub(in crate::producer) async fn relearn_topic(&self, topic: &Arc<str>) -> Result<()> {
        let known = {
            let mut st = self.lock();
            st.topic_index(topic)
                .map(|i| st.topics[i as usize].info.layout_epoch)
        };
        let deadline = Instant::now() + NEW_LAYOUT_WAIT;
        let t = loop {
            let m = self.client.metadata(&[topic]).await?;
            let Some(t) = m.topics.into_iter().next() else {
                return Ok(());
            };
            if known.is_none_or(|k| layout_epoch(&t) > k) || Instant::now() >= deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let active = active_shards(&t);
        let physical = t.shards.len().max(active as usize);
        let mut st = self.lock();
        let Some(i) = st.topic_index(topic) else {
            return Ok(());
        };
        let topic_state = &mut st.topics[i as usize];
        if topic_state.info.shards != active {
            tracing::info!(topic = %topic, from = topic_state.info.shards, to = active, "topic resharded: routing by the new shard count");
        }
        topic_state.info.shards = active;
        topic_state.info.layout_epoch = layout_epoch(&t);
        while topic_state.lanes.len() < physical * CLASS_COUNT {
            topic_state.lanes.push(Lane::new(&self.config));
        }
        topic_state.loads.clear();
        Ok(())
    }

    /// Follows a reshard of `topic` (a lane was told LAYOUT_CHANGED) so that every
    /// key's records keep their order: new records of the topic wait; every lane of
    /// the topic gives back its batches not yet stored (in flight ones once they
    /// settle) and the open ones are taken; the topic's new shard count is learnt;
    /// then the records of those batches are placed again, lane by lane in their
    /// order, by the new count (a key's records all came from its one old lane, so
    /// they keep their order), each settling its original future when stored; and only
    /// then may new records come. A second call while one runs does nothing. Records
    /// re-routed [`MAX_REROUTES`] times fail with LAYOUT_CHANGED (a loop of reshards).
    pub(in crate::producer) async fn relayout(&self, topic: &Arc<str>) {
        // 1. Stop the topic and ask every lane for its batches.
        let (lanes, replies) = {
            let mut st = self.lock();
            let Some(t) = st.topic_index(topic) else {
                return;
            };
            if st.topics[t as usize].relayout {
                return;
            }
            st.topics[t as usize].relayout = true;
            self.relayouts.fetch_add(1, Ordering::AcqRel);
            let count = st.topics[t as usize].lanes.len();
            let mut lanes = Vec::with_capacity(count);
            let mut replies = Vec::with_capacity(count);
            for lane in 0..count as u32 {
                let id = LaneId { topic: t, lane };
                if let Some(i) = st.open_lanes.iter().position(|l| *l == id) {
                    st.open_lanes.swap_remove(i);
                }
                let open = st.lane_mut(id).open.take();
                let reply = st.lane(id).sender.as_ref().and_then(|s| {
                    let (tx, rx) = oneshot::channel();
                    s.send(SenderMsg::HandBack(tx)).ok().map(|_| rx)
                });
                lanes.push((id, open));
                replies.push(reply);
            }
            (lanes, replies)
        };
        let mut back = Vec::with_capacity(lanes.len());
        for ((id, open), reply) in lanes.into_iter().zip(replies) {
            let mut batches = match reply {
                Some(rx) => rx.await.unwrap_or_default(),
                None => Vec::new(),
            };
            if let Some(open) = open {
                // Not sent yet: its records took places (given back when a batch is
                // first sent); they are taken again below.
                let records = open.builder.record_count() as usize;
                self.give_back(&mut self.lock(), id.class(), records);
                match open.builder.finish() {
                    Ok(bytes) => batches.push(HandedBack {
                        bytes,
                        waiters: open.waiters,
                    }),
                    Err(e) => open.waiters.fail(&ClientError::Invalid(e.to_string())),
                }
            }
            back.push((id, batches));
        }
        // 2. The new shard count (a few tries: without it nothing can be placed).
        let mut learnt = self.relearn_topic(topic).await;
        for _ in 0..3 {
            if learnt.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            learnt = self.relearn_topic(topic).await;
        }
        // 3. Place the records again, then let new records come.
        let mut st = self.lock();
        let Some(t) = st.topic_index(topic) else {
            return;
        };
        let mut touched = Vec::new();
        for (old, batches) in back {
            for b in batches {
                let failure = match (&learnt, b.waiters.reroute_depth()) {
                    (Err(e), _) => Some(e.clone()),
                    (Ok(()), depth) if depth >= MAX_REROUTES => Some(ClientError::Broker {
                        code: ErrorCode::LayoutChanged,
                        message: format!(
                            "records placed again {depth} times after reshards; not sent again"
                        ),
                        retry_after_ms: 0,
                    }),
                    _ => None,
                };
                if let Some(e) = failure {
                    b.waiters.fail(&e);
                    continue;
                }
                self.place_again(&mut st, t, old, b, &mut touched);
            }
        }
        st.topics[t as usize].relayout = false;
        if self.config.linger.is_zero() {
            for id in touched {
                if st.lane(id).open.is_some() && st.has_room(id) {
                    self.dispatch(&mut st, id);
                }
            }
        }
        drop(st);
        self.relaid.notify_waiters();
    }

    /// Places the records of a batch taken back from lane `old` by the topic's current
    /// shard count: a keyed record by its key, a keyless one on its old shard while
    /// that is active (else where keyless records go), each in its old class. They
    /// take places in their class's pool again, beyond the pool's size if need be
    /// (they were accepted once).
    fn place_again(
        &self,
        st: &mut State,
        t: u32,
        old: LaneId,
        b: HandedBack,
        touched: &mut Vec<LaneId>,
    ) {
        let mut records = Vec::new();
        if let Err(e) = batch::decode_records(&b.bytes, |r| records.push(r)) {
            b.waiters.fail(&ClientError::Invalid(format!(
                "a batch taken back after a reshard does not decode: {e}"
            )));
            return;
        }
        let rerouted = Rerouted::new(b.waiters, records.len());
        let shards = st.topics[t as usize].info.shards;
        let old_shard = old.lane / CLASS_COUNT as u32;
        let class = old.class();
        for (i, r) in records.iter().enumerate() {
            let shard = if !r.key.is_empty() {
                shard_for_key(&r.key, shards)
            } else if old_shard < shards {
                old_shard
            } else {
                st.keyless_shard(t, r.priority, r.complexity)
            };
            let id = LaneId {
                topic: t,
                lane: shard * CLASS_COUNT as u32 + class as u32,
            };
            let headers: Vec<(&str, &[u8])> = r
                .headers
                .iter()
                .map(|h| (h.name.as_str(), &h.value[..]))
                .collect();
            let new = NewRecord {
                priority: r.priority,
                complexity: r.complexity,
                timestamp_ms: r.timestamp_ms,
                key: &r.key,
                value: &r.value,
                headers: &headers,
            };
            st.queued[class] += 1;
            if let Err(e) = self.append(st, id, &new, NewWaiter::Forward(&rerouted, i as u32), 0) {
                self.give_back(st, class, 1);
                rerouted.settle(i as u32, Err(e));
            }
            if !touched.contains(&id) {
                touched.push(id);
            }
        }
    }

    /// Waits until `topic` is not being laid out again.
    pub(in crate::producer) async fn wait_relaid(&self, topic: &str) {
        self.wait_until(|st| {
            !st.by_name
                .get(topic)
                .is_some_and(|&t| st.topics[t as usize].relayout)
        })
        .await
    }

    /// Waits until no topic is being laid out again.
    pub(in crate::producer) async fn wait_all_relaid(&self) {
        self.wait_until(|st| st.topics.iter().all(|t| !t.relayout))
            .await
    }

    async fn wait_until(&self, done: impl Fn(&State) -> bool) {
        loop {
            let relaid = self.relaid.notified();
            tokio::pin!(relaid);
            relaid.as_mut().enable();
            if done(&self.lock()) {
                return;
            }
            relaid.await;
        }
    }

    /// Relayouts started so far, and whether one runs now.
    pub(in crate::producer) fn relayout_state(&self) -> (u64, bool) {
        let busy = self.lock().topics.iter().any(|t| t.relayout);
        (self.relayouts.load(Ordering::Acquire), busy)
    }
}
