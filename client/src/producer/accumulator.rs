//! The producer's accumulator: places each record of `send` and `send_batch` in the
//! open batch of its (topic, shard, class) lane, in the caller's own task, and hands
//! sealed batches to the lane's sender.
//!
//! There is no accumulator task: the lanes live behind one short lock that `send`
//! takes to encode its record, so a record costs no channel message, no task wake-up
//! and no completion channel of its own (its future shares its batch's completion).
//! A batch leaves when it is full, at its linger deadline (a timer task keeps the
//! deadlines), or (with `linger = 0`) as soon as its lane has room in its in-flight
//! window: a lane's sender reports every settled batch, so a backlog leaves as one
//! batch the moment there is room.
//!
//! Lanes never wait on each other. Handing a sealed batch to its sender never blocks
//! (the sender's queue is unbounded); what bounds a lane's backlog is its class's pool
//! of `max_queued_records` places, which a record takes in `send` and gives back when
//! its batch is first written to the broker. A saturated P3 lane therefore holds P3
//! places only: a P0 `send` on the same producer takes from its own pool, encodes its
//! record and sends its batch while P3 sends wait for room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use weir_protocol::batch::{self, BatchBuilder, NewRecord};
use weir_protocol::classes::{ClassMap, CLASS_COUNT};
use weir_protocol::keys::KeyRule;
use weir_protocol::ErrorCode;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

mod relayout;

use super::sender::{SenderMsg, ShardSender};
use super::window::Window;
use super::{max_record_bytes, ProducerConfig};
use crate::client::Client;
use crate::delivery::{BatchShared, DeliveryFuture, Rerouted, Waiters};
use crate::error::{ClientError, Result};
use crate::partitioner::shard_for_key;
use crate::record::{Partitioning, ProducerBatch, ProducerRecord};

/// Least first capacity of a batch (it grows by doubling up to `max_batch_bytes`).
/// A batch starts at the size of its lane's previous batch: small batches, as
/// `linger = 0` sends when idle, should not each allocate a megabyte, and full ones
/// should not be copied while they grow.
const BATCH_START_BYTES: usize = 4 * 1024;

/// A lane: index of its topic in the accumulator, and `shard × CLASS_COUNT + class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LaneId {
    topic: u32,
    lane: u32,
}

impl LaneId {
    /// The lane's priority class index.
    fn class(self) -> usize {
        (self.lane % CLASS_COUNT as u32) as usize
    }
}

/// What the producer needs to know about a topic to place its records.
#[derive(Debug, Clone)]
struct TopicInfo {
    shards: u32,
    /// The topic's layout epoch (reshards so far) when `shards` was learnt.
    layout_epoch: u32,
    default_priority: u8,
    key_rule: KeyRule,
    /// Largest batch to build for this topic: `max_batch_bytes`, or less when the
    /// topic's `max_message_bytes` is smaller (the broker refuses larger requests).
    batch_bytes_max: usize,
}

struct TopicState {
    name: Arc<str>,
    info: TopicInfo,
    /// `shards × CLASS_COUNT` lanes.
    lanes: Vec<Lane>,
    /// Each shard's load as the broker last reported it (empty: not read, or load-aware
    /// routing off); see [`crate::routing`].
    loads: Vec<Option<crate::routing::ShardLoad>>,
    /// A reshard is being followed ([`Core::relayout`]): records of the topic wait.
    relayout: bool,
}

struct Lane {
    open: Option<Open>,
    sender: Option<mpsc::UnboundedSender<SenderMsg>>,
    /// Batches handed to the sender and not yet settled.
    outstanding: Arc<AtomicUsize>,
    /// How many batches the lane keeps in flight (set by its sender).
    window: Arc<Window>,
    /// Bytes of the lane's previous batch.
    last_bytes: usize,
    /// The buffer of an acknowledged batch, for the lane's next one.
    spare: Option<BytesMut>,
}

impl Lane {
    fn new(config: &ProducerConfig) -> Lane {
        Lane {
            open: None,
            sender: None,
            outstanding: Arc::new(AtomicUsize::new(0)),
            window: Arc::new(Window::new(config)),
            last_bytes: 0,
            spare: None,
        }
    }
}

struct Open {
    builder: BatchBuilder,
    waiters: Waiters,
    /// When a positive linger sends it anyway.
    deadline: Option<Instant>,
}

/// Who waits for the record being added.
enum NewWaiter<'a> {
    /// A `send` record: gets the future of its place in the batch.
    Record,
    Run(&'a Arc<BatchShared>),
    /// Record `.1` of a batch taken back after a reshard, placed again.
    Forward(&'a Arc<Rerouted>, u32),
}

/// The lanes and what places records in them; guarded by [`Core::state`].
struct State {
    topics: Vec<TopicState>,
    by_name: HashMap<Arc<str>, u32, Xxh3DefaultBuilder>,
    /// The previous record's topic, so a run to one topic skips the hash lookup.
    last_topic: Option<(Arc<str>, u32)>,
    /// Lanes with an open batch.
    open_lanes: Vec<LaneId>,
    round_robin: u32,
    /// The client's class map, read again each time a batch is sealed.
    classes: ClassMap,
    /// Records per class holding a place in the class's pool (`max_queued_records`):
    /// in an open batch or in a sealed one not yet sent. A plain count under the lock
    /// `send` takes anyway, so admission costs no atomic operation of its own.
    queued: [usize; CLASS_COUNT],
}

/// What `send` could not do under the lock.
pub(super) enum Blocked {
    /// The topic is not known yet: ask the broker, then try again.
    Topic(Box<ProducerRecord>),
    /// The record's class has no room: wait for a permit of `class`, then try again.
    Room(Box<ProducerRecord>, usize),
    /// The topic is being laid out again after a reshard: wait for
    /// [`Core::relaid`], then try again.
    Relayout(Box<ProducerRecord>),
}

/// The shared half of a producer: its lanes, record pools and settings.
pub(super) struct Core {
    client: Client,
    config: ProducerConfig,
    identity: Option<Arc<super::Identity>>,
    state: SyncMutex<State>,
    /// Places per priority class (see [`State::queued`]).
    max_queued: usize,
    /// Wakes `send` and `send_batch` calls waiting for places of a class.
    room: [Notify; CLASS_COUNT],
    /// Wakes the linger timer when a batch with a deadline opens.
    timer: Arc<Notify>,
    runtime: Handle,
    max_record_bytes: usize,
    /// This core, for the senders' room reports (they must not keep it alive).
    me: Weak<Core>,
    /// Wakes records waiting for a topic's relayout to finish.
    relaid: Notify,
    /// Relayouts started so far (a flush that saw one start goes again).
    relayouts: std::sync::atomic::AtomicU64,
}

impl Core {
    pub(super) fn new(
        client: Client,
        config: ProducerConfig,
        identity: Option<Arc<super::Identity>>,
        permits_per_class: usize,
    ) -> Arc<Core> {
        let timer = Arc::new(Notify::new());
        let linger = config.linger;
        let core = Arc::new_cyclic(|me| Core {
            state: SyncMutex::new(State {
                topics: Vec::new(),
                by_name: HashMap::default(),
                last_topic: None,
                open_lanes: Vec::new(),
                round_robin: 0,
                classes: client.class_map(),
                queued: [0; CLASS_COUNT],
            }),
            max_queued: permits_per_class,
            room: std::array::from_fn(|_| Notify::new()),
            timer: timer.clone(),
            runtime: Handle::current(),
            max_record_bytes: max_record_bytes(&config),
            client,
            config,
            identity,
            me: me.clone(),
            relaid: Notify::new(),
            relayouts: Default::default(),
        });
        if !linger.is_zero() {
            tokio::spawn(linger_timer(Arc::downgrade(&core), timer));
        }
        if let Some(period) = core.config.load_aware_routing {
            tokio::spawn(refresh_loads(Arc::downgrade(&core), period));
        }
        core
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("producer lanes")
    }

    /// Places a `send` record, or says what must happen first. `admitted`: the class
    /// whose permit the record already holds.
    pub(super) fn try_send(
        &self,
        mut rec: ProducerRecord,
        admitted: Option<usize>,
    ) -> std::result::Result<DeliveryFuture, Blocked> {
        let mut st = self.lock();
        let Some(t) = st.topic_index(&rec.topic) else {
            if let Some(c) = admitted {
                self.give_back(&mut st, c, 1);
            }
            return Err(Blocked::Topic(Box::new(rec)));
        };
        if st.topics[t as usize].relayout {
            if let Some(c) = admitted {
                self.give_back(&mut st, c, 1);
            }
            return Err(Blocked::Relayout(Box::new(rec)));
        }
        let info = &st.topics[t as usize].info;
        let shards = info.shards;
        key_from_rule(info, &mut rec.key, &rec.headers, &rec.value);
        let priority = rec.priority.unwrap_or(self.config.default_priority);
        let shard = match (rec.shard, &rec.key) {
            (Some(s), _) if s < shards => Some(s),
            (Some(_), _) => None,
            (None, Some(k)) if !k.is_empty() => Some(shard_for_key(k, shards)),
            // Unkeyed records stick to one shard until its batch is sent.
            (None, _) => Some(st.keyless_shard(
                t,
                priority,
                rec.complexity.unwrap_or(self.config.default_complexity),
            )),
        };
        let id = st.lane_id(t, shard.unwrap_or(0), priority);
        let class = id.class();
        match admitted {
            Some(c) if c == class => {}
            other => {
                if let Some(c) = other {
                    // The class map moved between the wait and now.
                    self.give_back(&mut st, c, 1);
                }
                if st.queued[class] >= self.max_queued {
                    return Err(Blocked::Room(Box::new(rec), class));
                }
                st.queued[class] += 1;
            }
        }
        let Some(shard) = shard else {
            self.give_back(&mut st, class, 1);
            let s = rec.shard.unwrap_or(0);
            return Ok(DeliveryFuture::failed(ClientError::Invalid(format!(
                "shard {s} out of range: topic has {shards}"
            ))));
        };
        debug_assert!(shard < shards);
        let headers = header_refs(&rec.headers);
        let new = new_record(
            &self.config,
            rec.priority,
            rec.complexity,
            rec.timestamp_ms,
            rec.key.as_deref().unwrap_or(&[]),
            &rec.value,
            &headers,
        );
        match self.append(&mut st, id, &new, NewWaiter::Record, 0) {
            Ok(fut) => Ok(fut.expect("a send record gets a future")),
            Err(e) => {
                self.give_back(&mut st, class, 1);
                Ok(DeliveryFuture::failed(e))
            }
        }
    }

    /// Takes `n` places of `class` if it has them.
    pub(super) fn try_take(&self, class: usize, n: usize) -> bool {
        let mut st = self.lock();
        if st.queued[class] + n > self.max_queued {
            return false;
        }
        st.queued[class] += n;
        true
    }

    /// Gives back `n` places of `class` and wakes the calls waiting for them.
    fn give_back(&self, st: &mut State, class: usize, n: usize) {
        st.queued[class] = st.queued[class].saturating_sub(n);
        self.room[class].notify_waiters();
    }

    /// Gives back places taken by [`Core::try_take`] that were not used.
    pub(super) fn untake(&self, class: usize, n: usize) {
        self.give_back(&mut self.lock(), class, n);
    }

    /// Notified when places of `class` come back.
    pub(super) fn room(&self, class: usize) -> &Notify {
        &self.room[class]
    }

    /// The in-flight window of the lane of (`topic`, `shard`, `priority`), once the
    /// topic is known.
    pub(super) fn window_of(&self, topic: &str, shard: u32, priority: Option<u8>) -> Option<usize> {
        let st = self.lock();
        let t = *st.by_name.get(topic)?;
        if shard >= st.topics[t as usize].info.shards {
            return None;
        }
        let id = st.lane_id(t, shard, priority.unwrap_or(self.config.default_priority));
        Some(st.lane(id).window.get())
    }

    /// Learns `topic` from the broker (once; later calls find it known).
    pub(super) async fn learn_topic(&self, topic: &Arc<str>) -> Result<()> {
        if self.lock().topic_index(topic).is_some() {
            return Ok(());
        }
        let m = self.client.metadata(&[topic]).await?;
        let Some(t) = m.topics.into_iter().find(|t| !t.shards.is_empty()) else {
            return Err(ClientError::Broker {
                code: ErrorCode::UnknownTopic,
                message: format!("no topic {topic:?}"),
                retry_after_ms: 0,
            });
        };
        let topic_max = t.config.max_message_bytes as usize;
        let info = TopicInfo {
            shards: active_shards(&t),
            layout_epoch: layout_epoch(&t),
            default_priority: t.config.default_priority,
            key_rule: KeyRule::parse(&t.config.shard_key_rule).unwrap_or(KeyRule::None),
            batch_bytes_max: match topic_max {
                0 => self.config.max_batch_bytes,
                n => self.config.max_batch_bytes.min(n),
            },
        };
        let mut st = self.lock();
        if st.by_name.contains_key(topic) {
            return Ok(()); // another caller learnt it meanwhile
        }
        let index = st.topics.len() as u32;
        let lanes = (0..t.shards.len().max(info.shards as usize) * CLASS_COUNT)
            .map(|_| Lane::new(&self.config))
            .collect();
        st.topics.push(TopicState {
            name: topic.clone(),
            info,
            lanes,
            loads: Vec::new(),
            relayout: false,
        });
        st.by_name.insert(topic.clone(), index);
        Ok(())
    }

    /// Records of `b` per class (to admit them), or `None` when its topic is unknown.
    /// `any_priority`: some record names its priority (else all take the default, and
    /// are counted without looking at each).
    pub(super) fn batch_classes(
        &self,
        b: &ProducerBatch,
        any_priority: bool,
    ) -> Option<([u32; CLASS_COUNT], ClassMap)> {
        let mut st = self.lock();
        let t = st.topic_index(&b.topic)?;
        let info = &st.topics[t as usize].info;
        let mut counts = [0u32; CLASS_COUNT];
        if any_priority {
            for r in &b.records {
                let p = r.priority.unwrap_or(self.config.default_priority);
                counts[class_of(&st.classes, p, info)] += 1;
            }
        } else {
            let class = class_of(&st.classes, self.config.default_priority, info);
            counts[class] = b.records.len() as u32;
        }
        Some((counts, st.classes))
    }

    /// Places every record of `b`, whose permits (counted by `classes`) are held; or,
    /// while its topic is laid out again after a reshard, gives the call back (wait for
    /// [`Core::relaid`] and call again).
    pub(super) fn add_batch(
        &self,
        b: ProducerBatch,
        shared: Arc<BatchShared>,
        classes: ClassMap,
    ) -> std::result::Result<(), (ProducerBatch, Arc<BatchShared>, ClassMap)> {
        let n = b.records.len();
        let mut st = self.lock();
        if st
            .topic_index(&b.topic)
            .is_some_and(|t| st.topics[t as usize].relayout)
        {
            return Err((b, shared, classes));
        }
        let give_back =
            |st: &mut State, records: &[crate::record::BatchRecord], info: &TopicInfo| {
                for r in records {
                    let p = r.priority.unwrap_or(self.config.default_priority);
                    self.give_back(st, class_of(&classes, p, info), 1);
                }
            };
        let Some(t) = st.topic_index(&b.topic) else {
            // Learnt before admission; topics are never forgotten.
            shared.failed(n as u64, &ClientError::Closed);
            return Ok(());
        };
        let info = st.topics[t as usize].info.clone();
        let shards = info.shards;
        let (fixed, batch_key): (Option<u32>, Option<Bytes>) = match b.partitioning {
            Partitioning::Shard(s) if s < shards => (Some(s), None),
            Partitioning::Shard(s) => {
                give_back(&mut st, &b.records, &info);
                let e = ClientError::Invalid(format!("shard {s} out of range: topic has {shards}"));
                shared.failed(n as u64, &e);
                return Ok(());
            }
            Partitioning::Key(k) if !k.is_empty() => (Some(shard_for_key(&k, shards)), Some(k)),
            Partitioning::Key(_) | Partitioning::PerRecord => (None, None),
        };
        // Unkeyed records of one call stick to one shard.
        let sticky = st.keyless_shard(
            t,
            self.config.default_priority,
            self.config.default_complexity,
        );
        let mut left = n;
        // Lanes the call added to (usually one).
        let mut touched: Vec<LaneId> = Vec::new();
        // Records of one call without a time of their own share the call's: one clock
        // read per call, not per record (the coarse clock moves once per tick anyway).
        let now = now_ms();
        // The records are read in place (moving each out cost a copy of the record
        // per record) and dropped with the call's vector at the end.
        for rec in &b.records {
            left -= 1;
            // The record's own key, else the call's, else the topic's rule's.
            let derived;
            let key = match rec.key.as_ref().filter(|k| !k.is_empty()) {
                Some(k) => Some(k),
                None => match &batch_key {
                    Some(k) => Some(k),
                    None => {
                        derived = derived_key(&info, &rec.headers, &rec.value);
                        derived.as_ref()
                    }
                },
            };
            let shard = match (fixed, key) {
                (Some(s), _) => s,
                (None, Some(k)) if !k.is_empty() => shard_for_key(k, shards),
                (None, _) => sticky,
            };
            let headers = header_refs(&rec.headers);
            let new = new_record(
                &self.config,
                rec.priority,
                rec.complexity,
                Some(rec.timestamp_ms.unwrap_or(now)),
                key.map_or(&[], |k| k.as_ref()),
                &rec.value,
                &headers,
            );
            let class = class_of(&classes, new.priority, &info);
            let id = LaneId {
                topic: t,
                lane: shard * CLASS_COUNT as u32 + class as u32,
            };
            // Room for the rest of the call, if it is like this record.
            let hint = new.encoded_bytes().saturating_mul(left + 1);
            if let Err(e) = self.append(&mut st, id, &new, NewWaiter::Run(&shared), hint) {
                self.give_back(&mut st, class, 1);
                shared.failed(1, &e);
            }
            if touched.last() != Some(&id) && !touched.contains(&id) {
                touched.push(id);
            }
        }
        if self.config.linger.is_zero() {
            for id in touched {
                if st.lane(id).open.is_some() && st.has_room(id) {
                    self.dispatch(&mut st, id);
                }
            }
        }
        Ok(())
    }

    /// Adds one encoded record to its lane's open batch (sealing the open one first if
    /// the record would overflow it), then sends the batch if it is full, or with
    /// `linger = 0` if its lane has room. `hint` is the bytes a new batch should
    /// reserve at least (beyond the lane's previous size). A `send` record gets its
    /// future; an error means the record was not added.
    fn append(
        &self,
        st: &mut State,
        id: LaneId,
        new: &NewRecord<'_>,
        waiter: NewWaiter<'_>,
        hint: usize,
    ) -> Result<Option<DeliveryFuture>> {
        let size = new.encoded_bytes();
        if size + batch::BATCH_HEADER_BYTES > self.max_record_bytes {
            return Err(ClientError::Invalid(
                "record larger than 16 × max_batch_bytes".into(),
            ));
        }
        let max = st.topics[id.topic as usize].info.batch_bytes_max;
        let overflow = st
            .lane(id)
            .open
            .as_ref()
            .is_some_and(|o| o.builder.size_bytes() + size > max);
        if overflow {
            self.dispatch(st, id);
        }
        let linger = self.config.linger;
        if st.lane(id).open.is_none() {
            let want = hint.max(st.lane(id).last_bytes).max(BATCH_START_BYTES);
            let cap = (batch::BATCH_HEADER_BYTES + want).min(max).min(4 << 20);
            let deadline = (!linger.is_zero()).then(|| Instant::now() + linger);
            let builder = match st.lane_mut(id).spare.take() {
                Some(buf) if buf.capacity() >= cap => BatchBuilder::with_buffer(buf),
                _ => BatchBuilder::with_capacity(cap),
            };
            st.lane_mut(id).open = Some(Open {
                builder,
                waiters: Waiters::default(),
                deadline,
            });
            st.open_lanes.push(id);
            if deadline.is_some() {
                self.timer.notify_one();
            }
        }
        let open = st.lane_mut(id).open.as_mut().expect("opened above");
        let index = open.builder.record_count();
        open.builder
            .push(new)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let fut = match waiter {
            NewWaiter::Record => Some(DeliveryFuture::pending(open.waiters.push_record(), index)),
            NewWaiter::Run(shared) => {
                open.waiters.push_run(shared, index);
                None
            }
            NewWaiter::Forward(rerouted, from) => {
                open.waiters.push_forward(rerouted, index, from);
                None
            }
        };
        let full = open.builder.size_bytes() >= max;
        // A `send_batch` call's lanes are looked at once the call is placed (a lane
        // with room would otherwise send the call's first record alone).
        let eager = fut.is_some() && linger.is_zero() && st.has_room(id);
        if full || eager {
            self.dispatch(st, id);
        }
        Ok(fut)
    }

    /// Hands the lane's open batch to its sender (starting the sender on first use).
    /// Never waits: the sender's queue is unbounded, its backlog bounded by the class's
    /// record permits.
    fn dispatch(&self, st: &mut State, id: LaneId) {
        if let Some(i) = st.open_lanes.iter().position(|l| *l == id) {
            st.open_lanes.swap_remove(i);
        }
        let Some(open) = st.lane_mut(id).open.take() else {
            return;
        };
        if open.waiters.is_empty() {
            return;
        }
        st.classes = self.client.class_map();
        st.lane_mut(id).last_bytes = open.builder.size_bytes();
        st.round_robin = st.round_robin.wrapping_add(1);
        let sender = match &st.lane(id).sender {
            Some(s) => s.clone(),
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                let topic = &st.topics[id.topic as usize];
                let lane = &topic.lanes[id.lane as usize];
                let me = self.me.clone();
                let s = ShardSender {
                    client: self.client.clone(),
                    config: self.config.clone(),
                    identity: self.identity.clone(),
                    topic: topic.name.clone(),
                    shard: id.lane / CLASS_COUNT as u32,
                    outstanding: lane.outstanding.clone(),
                    window: lane.window.clone(),
                    release: {
                        let me = self.me.clone();
                        let class = id.class();
                        Box::new(move |n| {
                            if let Some(core) = me.upgrade() {
                                core.give_back(&mut core.lock(), class, n as usize);
                            }
                        })
                    },
                    layout_changed: {
                        let me = self.me.clone();
                        let runtime = self.runtime.clone();
                        let topic = topic.name.clone();
                        Box::new(move || {
                            let (me, topic) = (me.clone(), topic.clone());
                            runtime.spawn(async move {
                                if let Some(core) = me.upgrade() {
                                    core.relayout(&topic).await;
                                }
                            });
                        })
                    },
                    room: Box::new(move |spare| {
                        if let Some(core) = me.upgrade() {
                            core.on_room(id, spare);
                        }
                    }),
                    epoch_used: None,
                    next_seq: 0,
                };
                self.runtime.spawn(s.run(rx));
                st.lane_mut(id).sender = Some(tx.clone());
                tx
            }
        };
        st.lane(id).outstanding.fetch_add(1, Ordering::AcqRel);
        // A closed sender fails the waiters as they drop.
        let _ = sender.send(SenderMsg::Batch(open.builder, open.waiters));
    }

    /// A batch of `id` settled (`spare`: its buffer, for the next batch): with
    /// `linger = 0` its open batch may go now.
    fn on_room(&self, id: LaneId, spare: Option<BytesMut>) {
        let mut st = self.lock();
        if spare.is_some() {
            st.lane_mut(id).spare = spare;
        }
        if st.lane(id).open.is_some() && self.config.linger.is_zero() && st.has_room(id) {
            self.dispatch(&mut st, id);
        }
    }

    /// Sends every open batch whose linger has expired; the next deadline after that.
    fn dispatch_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut st = self.lock();
        let due: Vec<LaneId> = st
            .open_lanes
            .iter()
            .copied()
            .filter(|id| {
                st.lane(*id)
                    .open
                    .as_ref()
                    .and_then(|o| o.deadline)
                    .is_some_and(|d| d <= now)
            })
            .collect();
        for id in due {
            self.dispatch(&mut st, id);
        }
        st.open_lanes
            .iter()
            .filter_map(|id| st.lane(*id).open.as_ref().and_then(|o| o.deadline))
            .min()
    }

    /// Sends every open batch; the returned replies come once every batch sent so far
    /// is settled.
    pub(super) fn flush_all(&self) -> Vec<oneshot::Receiver<()>> {
        let mut st = self.lock();
        while let Some(id) = st.open_lanes.last().copied() {
            self.dispatch(&mut st, id);
        }
        let mut acks = Vec::new();
        for lane in st.topics.iter().flat_map(|t| t.lanes.iter()) {
            let Some(s) = &lane.sender else { continue };
            let (tx, rx) = oneshot::channel();
            if s.send(SenderMsg::Flush(tx)).is_ok() {
                acks.push(rx);
            }
        }
        acks
    }
}

/// Reads the shard loads of every known topic every `period` while the producer
/// lives (load-aware routing). A failed read keeps the previous figures.
async fn refresh_loads(core: Weak<Core>, period: Duration) {
    let period = period.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(c) = core.upgrade() else { return };
        let names: Vec<Arc<str>> = c.lock().topics.iter().map(|t| t.name.clone()).collect();
        let admin = crate::admin::Admin::new(c.client.clone());
        drop(c);
        for name in names {
            let Ok(h) = admin.load_history(&name, 1, 1).await else {
                continue;
            };
            let Some(c) = core.upgrade() else { return };
            let mut st = c.lock();
            if let Some(i) = st.by_name.get(&name).copied() {
                let topic = &mut st.topics[i as usize];
                let mut loads = vec![None; topic.info.shards as usize];
                for s in &h.shards {
                    if let Some(slot) = loads.get_mut(s.shard as usize) {
                        *slot = Some(crate::routing::ShardLoad::from(s));
                    }
                }
                topic.loads = loads;
            }
        }
    }
}

impl Drop for Core {
    /// The last handle is gone: what is still open is sent (as before the producer was
    /// dropped, nothing accepted is left behind), and the linger timer stops.
    fn drop(&mut self) {
        let mut st = std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(|p| p.into_inner()),
            State {
                topics: Vec::new(),
                by_name: HashMap::default(),
                last_topic: None,
                open_lanes: Vec::new(),
                round_robin: 0,
                classes: ClassMap::default(),
                queued: [0; CLASS_COUNT],
            },
        );
        while let Some(id) = st.open_lanes.last().copied() {
            self.dispatch(&mut st, id);
        }
        self.timer.notify_one();
    }
}

impl State {
    /// The shard for keyless records of topic `t` until the next batch is sent:
    /// rotation, or with loads known the better of two drawn shards
    /// ([`crate::routing::choose`], seeded by the rotation counter so it sticks).
    fn keyless_shard(&self, t: u32, priority: u8, complexity: u8) -> u32 {
        let topic = &self.topics[t as usize];
        let shards = topic.info.shards.max(1);
        if topic.loads.is_empty() {
            return self.round_robin % shards;
        }
        crate::routing::choose(
            &topic.loads,
            shards,
            priority,
            complexity.max(1),
            u64::from(self.round_robin),
        )
    }

    /// The index of `topic` if it is known.
    fn topic_index(&mut self, topic: &Arc<str>) -> Option<u32> {
        if let Some((last, i)) = &self.last_topic {
            if Arc::ptr_eq(last, topic) || **last == **topic {
                return Some(*i);
            }
        }
        let i = *self.by_name.get(topic)?;
        self.last_topic = Some((topic.clone(), i));
        Some(i)
    }

    fn lane(&self, id: LaneId) -> &Lane {
        &self.topics[id.topic as usize].lanes[id.lane as usize]
    }

    fn lane_mut(&mut self, id: LaneId) -> &mut Lane {
        &mut self.topics[id.topic as usize].lanes[id.lane as usize]
    }

    fn has_room(&self, id: LaneId) -> bool {
        let lane = self.lane(id);
        lane.outstanding.load(Ordering::Acquire) < lane.window.get()
    }

    /// The lane of a record of `priority` bound for `shard` of topic `t`.
    fn lane_id(&self, t: u32, shard: u32, priority: u8) -> LaneId {
        let class = class_of(&self.classes, priority, &self.topics[t as usize].info);
        LaneId {
            topic: t,
            lane: shard * CLASS_COUNT as u32 + class as u32,
        }
    }
}

/// A topic's layout epoch: its reshards so far.
fn layout_epoch(t: &weir_protocol::messages::TopicMetadata) -> u32 {
    t.reshards.last().map_or(0, |r| r.epoch)
}

/// The shards a topic's keys are hashed over (all of them from a broker that predates
/// resharding and sends 0).
fn active_shards(t: &weir_protocol::messages::TopicMetadata) -> u32 {
    match t.active_shards {
        0 => t.shards.len() as u32,
        n => n,
    }
}

/// Sends lingering batches at their deadlines until the producer is gone.
async fn linger_timer(core: Weak<Core>, wake: Arc<Notify>) {
    loop {
        let next = match core.upgrade() {
            Some(c) => c.dispatch_due(),
            None => return,
        };
        match next {
            // Deadlines only grow (now + linger), so a new batch never needs an
            // earlier wake-up than the one armed; the notification only matters
            // when none is armed.
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(d) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// The class index of a record of `priority` (unset: the topic's default, as the
/// broker fills it in before it picks the record's class).
fn class_of(classes: &ClassMap, priority: u8, info: &TopicInfo) -> usize {
    let effective = if priority == batch::UNSET {
        info.default_priority
    } else {
        priority
    };
    classes.class_of(effective).index()
}

/// A record as the builder takes it, with the producer's defaults filled in.
fn new_record<'a>(
    config: &ProducerConfig,
    priority: Option<u8>,
    complexity: Option<u8>,
    timestamp_ms: Option<i64>,
    key: &'a [u8],
    value: &'a Bytes,
    headers: &'a [(&'a str, &'a [u8])],
) -> NewRecord<'a> {
    NewRecord {
        priority: priority.unwrap_or(config.default_priority),
        complexity: complexity.unwrap_or(config.default_complexity),
        timestamp_ms: timestamp_ms.unwrap_or_else(now_ms),
        key,
        value,
        headers,
    }
}

/// Milliseconds since the Unix epoch for a record `send` stamps: the coarse real-time
/// clock on Linux (a read of the kernel's last tick, a quarter of the cost of a
/// precise read, which was a tenth of a record's cost in the SDK), so a stamp may be
/// up to one kernel tick (1–10 ms) behind a precise clock.
fn now_ms() -> i64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME_COARSE exists on
        // every Linux since 2.6.32 and the call writes nothing else.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
            return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000;
        }
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A record without a key takes one from the topic's shard-key rule, exactly as the
/// broker would derive it.
fn key_from_rule(
    info: &TopicInfo,
    key: &mut Option<Bytes>,
    headers: &[(String, Bytes)],
    value: &Bytes,
) {
    if key.as_ref().is_none_or(|k| k.is_empty()) && info.key_rule != KeyRule::None {
        *key = derived_key(info, headers, value);
    }
}

/// The key the topic's shard-key rule gives a record without one (none without a rule).
fn derived_key(info: &TopicInfo, headers: &[(String, Bytes)], value: &Bytes) -> Option<Bytes> {
    if info.key_rule == KeyRule::None {
        return None;
    }
    let headers = headers.iter().map(|(n, v)| (n.as_str(), v.as_ref()));
    info.key_rule.derive(headers, value)
}

/// Header fields as the builder takes them (no allocation when there are none).
fn header_refs(headers: &[(String, Bytes)]) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_ref()))
        .collect()
}
