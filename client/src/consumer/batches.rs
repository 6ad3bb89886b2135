//! What a fetch response becomes: [`Message`]s (declared in `record.rs`) for `poll`,
//! [`ConsumedBatch`]es for `poll_batches`. Records stay in the response's buffer (keys, values and header
//! values are slices of it) and a batch is CRC-checked before any record of it is
//! handed out.

use std::sync::Arc;

use bytes::Bytes;
use weir_protocol::batch::{self, Batch};

use crate::error::{ClientError, Result};
use crate::record::Message;

/// The records of one fetched batch at or above the consumer's position, handed out
/// whole by [`Consumer::poll_batches`](super::Consumer::poll_batches). Exists so a
/// reader of many small records pays per batch, not per record: nothing is decoded
/// until [`ConsumedBatch::messages`] is iterated, and the records stay in the fetched
/// response's buffer.
#[derive(Debug, Clone)]
pub struct ConsumedBatch {
    pub(super) topic: Arc<str>,
    pub(super) shard: u32,
    /// The first offset handed out (a batch may start below the consumer's position).
    pub(super) first: u64,
    pub(super) body: BatchBody,
}

#[derive(Debug, Clone)]
pub(super) enum BatchBody {
    /// A stored batch, checked (CRC and records) but not decoded.
    Stored(Batch),
    /// Messages an earlier `poll` had already decoded.
    Decoded(Vec<Message>),
}

impl ConsumedBatch {
    /// The topic.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// The shard.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Offset of the first record handed out.
    pub fn first_offset(&self) -> u64 {
        self.first
    }

    /// One past the offset of the last record: the shard's position after this batch.
    pub fn next_offset(&self) -> u64 {
        match &self.body {
            BatchBody::Stored(b) => b.header().base_offset + u64::from(b.header().record_count),
            BatchBody::Decoded(v) => v.last().map_or(self.first, |m| m.offset + 1),
        }
    }

    /// Records handed out.
    pub fn len(&self) -> usize {
        match &self.body {
            BatchBody::Stored(_) => (self.next_offset() - self.first) as usize,
            BatchBody::Decoded(v) => v.len(),
        }
    }

    /// Whether no record is handed out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored batch (CRC-checked), unless its records were already decoded.
    pub fn batch(&self) -> Option<&Batch> {
        match &self.body {
            BatchBody::Stored(b) => Some(b),
            BatchBody::Decoded(_) => None,
        }
    }

    /// The records as messages, decoded as the iterator goes.
    pub fn messages(&self) -> impl Iterator<Item = Message> + '_ {
        let (stored, decoded) = match &self.body {
            BatchBody::Stored(b) => (Some(b), None),
            BatchBody::Decoded(v) => (None, Some(v)),
        };
        let first = self.first;
        stored
            .into_iter()
            .flat_map(move |b| {
                b.records()
                    .filter(move |r| r.offset >= first)
                    .map(|r| Message::from_record(&self.topic, self.shard, r))
            })
            .chain(decoded.into_iter().flat_map(|v| v.iter().cloned()))
    }

    /// Messages an earlier `poll` decoded, as batches: one per run of one shard.
    pub(super) fn from_decoded(msgs: Vec<Message>) -> Vec<ConsumedBatch> {
        let mut out: Vec<ConsumedBatch> = Vec::new();
        for m in msgs {
            match out.last_mut() {
                Some(ConsumedBatch {
                    topic,
                    shard,
                    body: BatchBody::Decoded(v),
                    ..
                }) if *shard == m.shard && Arc::ptr_eq(topic, &m.topic) => v.push(m),
                _ => out.push(ConsumedBatch {
                    topic: m.topic.clone(),
                    shard: m.shard,
                    first: m.offset,
                    body: BatchBody::Decoded(vec![m]),
                }),
            }
        }
        out
    }
}

/// Cuts a fetched record set into one `Bytes` per batch without checking them: each
/// batch's header, CRC and records are checked once, by `Batch::parse` (whole batches)
/// or by `batch::decode_records` in the pass that decodes them (`Records::batches`
/// would check the CRC a second time).
pub(super) fn split_batches(mut buf: Bytes) -> impl Iterator<Item = Result<Bytes>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        match batch::peek_total_bytes(&buf) {
            Some(total) if total <= buf.len() => Some(Ok(buf.split_to(total))),
            _ => {
                let rest = buf.len();
                buf.clear();
                Some(Err(ClientError::Protocol(format!(
                    "bad batch from broker: {rest} bytes left, not a whole batch"
                ))))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::batch::{BatchBuilder, NewRecord};

    fn one_batch(value: &[u8]) -> Bytes {
        let mut b = BatchBuilder::new();
        b.push(&NewRecord::value(1, value)).expect("push");
        b.finish().expect("finish")
    }

    #[test]
    fn split_batches_cuts_whole_batches_and_refuses_a_cut_one() {
        let (a, b) = (one_batch(b"first"), one_batch(b"second"));
        let both = Bytes::from([a.as_ref(), b.as_ref()].concat());
        let parts: Vec<Bytes> = split_batches(both.clone())
            .collect::<Result<_>>()
            .expect("two whole batches");
        assert_eq!(parts, vec![a.clone(), b]);
        // A record set cut inside its second batch is an error, never a short batch.
        let cut = both.slice(..both.len() - 3);
        let parts: Vec<Result<Bytes>> = split_batches(cut).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].as_ref().expect("first is whole"), &a);
        assert!(matches!(parts[1], Err(ClientError::Protocol(_))));
        // A flipped byte is caught by Batch::parse, which checks the CRC.
        let mut bad = a.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let only = split_batches(Bytes::from(bad))
            .next()
            .expect("one")
            .expect("whole");
        assert!(Batch::parse(only).is_err());
    }

    fn msg(topic: &Arc<str>, shard: u32, offset: u64) -> Message {
        Message {
            topic: topic.clone(),
            shard,
            offset,
            priority: 5,
            complexity: 1,
            timestamp_ms: 0,
            key: Bytes::new(),
            value: Bytes::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn decoded_messages_regroup_into_one_batch_per_run_of_a_shard() {
        let t: Arc<str> = "t".into();
        let msgs = vec![msg(&t, 0, 4), msg(&t, 0, 5), msg(&t, 1, 9), msg(&t, 0, 6)];
        let batches = ConsumedBatch::from_decoded(msgs);
        let runs: Vec<(u32, u64, u64, usize)> = batches
            .iter()
            .map(|b| (b.shard(), b.first_offset(), b.next_offset(), b.len()))
            .collect();
        assert_eq!(runs, vec![(0, 4, 6, 2), (1, 9, 10, 1), (0, 6, 7, 1)]);
        assert!(batches.iter().all(|b| b.batch().is_none()));
    }
}
