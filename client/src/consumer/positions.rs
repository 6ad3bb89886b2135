//! Where the consumer is: a shard's position moves past what `poll` returned, never
//! past what is still buffered, so a commit covers exactly what the caller got.
//!
//! Offset order has one cursor per shard. Priority order has four lane cursors per
//! shard, each moving as its messages are returned; the shard's position (what is
//! committed) is the lowest of them.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use super::Consumer;
use crate::record::Message;

impl Consumer {
    /// Offset order: each shard's position moves past its last returned message, once
    /// per run of that shard's messages (not once per message).
    pub(super) fn advance(&mut self, out: &[Message]) {
        let mut i = 0;
        while i < out.len() {
            let first = &out[i];
            let mut j = i + 1;
            while j < out.len()
                && out[j].shard == first.shard
                && Arc::ptr_eq(&out[j].topic, &first.topic)
            {
                j += 1;
            }
            let last = &out[j - 1];
            self.positions
                .insert((last.topic.to_string(), last.shard), last.offset + 1);
            i = j;
        }
    }

    /// Priority order: each returned message moves its lane's cursor, and the shard's
    /// position is the lowest cursor.
    pub(super) fn advance_lanes(&mut self, out: &[Message], lanes: &[u8]) {
        for (m, lane) in out.iter().zip(lanes) {
            let lane = usize::from(*lane);
            let key = (m.topic.to_string(), m.shard);
            let next = match self.lanes.get_mut(&key) {
                Some(lanes) => {
                    lanes[lane] = lanes[lane].max(m.offset + 1);
                    lanes.iter().copied().min().unwrap_or(m.offset + 1)
                }
                None => m.offset + 1,
            };
            self.positions.insert(key, next);
        }
    }

    /// Moves the lanes of every shard with no buffered message to the cursors the
    /// broker reported, and the shard's position to their minimum.
    pub(super) fn apply_lane_floors(&mut self) {
        let done: Vec<(String, u32)> = {
            let buffered: HashSet<(&str, u32)> =
                self.buffered.iter().map(|m| (&*m.topic, m.shard)).collect();
            self.lane_floors
                .keys()
                .filter(|(t, s)| !buffered.contains(&(t.as_str(), *s)))
                .cloned()
                .collect()
        };
        for key in done {
            let floors = self.lane_floors.remove(&key).unwrap_or_default();
            if !self.positions.contains_key(&key) {
                continue; // no longer assigned
            }
            let Some(lanes) = self.lanes.get_mut(&key) else {
                continue;
            };
            for (l, f) in lanes.iter_mut().zip(floors) {
                *l = (*l).max(f);
            }
            if let Some(min) = lanes.iter().copied().min() {
                self.positions.insert(key, min);
            }
        }
    }

    /// Drops the buffered messages of one shard (after a seek).
    pub(super) fn drop_buffered(&mut self, topic: &str, shard: u32) {
        let keep = |m: &Message| !(&*m.topic == topic && m.shard == shard);
        if self.buffered_lanes.is_empty() {
            self.buffered.retain(keep);
            return;
        }
        let (msgs, lanes): (VecDeque<Message>, VecDeque<u8>) = self
            .buffered
            .drain(..)
            .zip(self.buffered_lanes.drain(..))
            .filter(|(m, _)| keep(m))
            .unzip();
        self.buffered = msgs;
        self.buffered_lanes = lanes;
    }
}
