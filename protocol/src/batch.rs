//! The record batch: the unit a producer sends, the broker stores, and a consumer reads.
//!
//! A batch is stored on disk exactly as it travels on the wire. The broker stamps
//! `base_offset`, which the CRC does not cover, and never touches any other byte, so a
//! batch's CRC written by the producer is still valid when a consumer reads it back.
//! `leader_epoch` is also outside the CRC and reserved for the broker (mirrors will
//! stamp it); today it is stored as sent (0). PROTOCOL.md §"Record batches" has the byte layout.
//!
//! ```text
//! 0  u64 base_offset      stamped by the broker
//! 8  u32 batch_length     bytes after this field (total = 12 + batch_length)
//! 12 u32 leader_epoch     reserved for the broker; stored as sent (0)
//! 16 u32 crc              CRC-32 (IEEE) of bytes [20, total)
//! 20 u8  magic            1
//! 21 u8  attributes       0 (compression none); other values reserved
//! 22 u8  priority         highest priority (lowest number) of its records
//! 23 u8  reserved         0
//! 24 u32 record_count     >= 1
//! 28 i64 base_timestamp_ms
//! 36 i64 max_timestamp_ms
//! 44 u64 producer_id      0 = not idempotent
//! 52 u16 producer_epoch
//! 54 u16 reserved         0
//! 56 u32 base_sequence    0xFFFF_FFFF = none
//! 60 records...
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;

/// Bytes before the first record.
pub const BATCH_HEADER_BYTES: usize = 60;
/// Bytes a batch spends before its `batch_length` field counts (base offset + length).
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// Where the CRC-covered region starts.
pub const CRC_START: usize = 20;
/// The only batch format version.
pub const MAGIC: u8 = 1;
/// `producer_id` of a batch from a producer that is not idempotent.
pub const NO_PRODUCER_ID: u64 = 0;
/// `base_sequence` of a batch without a sequence.
pub const NO_SEQUENCE: u32 = u32::MAX;
/// How many of the most recent stored batches of each idempotent (producer, shard,
/// class) lane a broker remembers, so that a retry of one is answered with its
/// original offsets. An idempotent producer keeps at most this many batches of a lane
/// in flight: a retry of an older one would be answered OUT_OF_ORDER_SEQUENCE, and
/// sent again under a new epoch it would be stored twice.
pub const IDEMPOTENT_WINDOW: usize = 5;
/// Fewest bytes a record takes.
pub const RECORD_MIN_BYTES: usize = 18;
/// Priorities run from 1 (most urgent) to 10.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<u8> = 1..=10;
/// Complexity runs from 1 (simplest) to 5.
pub const COMPLEXITY_RANGE: std::ops::RangeInclusive<u8> = 1..=5;
/// A record's priority or complexity of 0 on the wire means "unset": the broker fills
/// in the topic's default before it stores the batch, so stored records always hold
/// values in [`PRIORITY_RANGE`] and [`COMPLEXITY_RANGE`].
pub const UNSET: u8 = 0;
/// Priorities a produced record may carry: [`UNSET`] or 1..=10.
pub const WIRE_PRIORITY_RANGE: std::ops::RangeInclusive<u8> = 0..=10;
/// Complexities a produced record may carry: [`UNSET`] or 1..=5.
pub const WIRE_COMPLEXITY_RANGE: std::ops::RangeInclusive<u8> = 0..=5;
/// Default priority when a producer gives none.
pub const DEFAULT_PRIORITY: u8 = 5;
/// Default complexity when a producer gives none.
pub const DEFAULT_COMPLEXITY: u8 = 1;

/// The fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub batch_length: u32,
    pub leader_epoch: u32,
    pub crc: u32,
    pub magic: u8,
    pub attributes: u8,
    pub priority: u8,
    pub record_count: u32,
    pub base_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: u64,
    pub producer_epoch: u16,
    pub base_sequence: u32,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Parses the header at the start of `buf` and checks its own fields (not the CRC,
    /// not the records). `buf` may hold more than this batch.
    pub fn read(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(DecodeError::Truncated {
                needed: BATCH_HEADER_BYTES,
                remaining: buf.len(),
            });
        }
        let h = BatchHeader {
            base_offset: le_u64(buf, 0),
            batch_length: le_u32(buf, 8),
            leader_epoch: le_u32(buf, 12),
            crc: le_u32(buf, 16),
            magic: buf[20],
            attributes: buf[21],
            priority: buf[22],
            record_count: le_u32(buf, 24),
            base_timestamp_ms: le_u64(buf, 28) as i64,
            max_timestamp_ms: le_u64(buf, 36) as i64,
            producer_id: le_u64(buf, 44),
            producer_epoch: le_u16(buf, 52),
            base_sequence: le_u32(buf, 56),
        };
        if (h.batch_length as usize) < BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES {
            return Err(DecodeError::InvalidBatch(
                "batch_length shorter than the header",
            ));
        }
        if h.magic != MAGIC {
            return Err(DecodeError::InvalidBatch("unknown magic"));
        }
        if h.attributes != 0 || buf[23] != 0 || le_u16(buf, 54) != 0 {
            return Err(DecodeError::InvalidBatch("reserved bits set"));
        }
        if h.record_count == 0 {
            return Err(DecodeError::InvalidBatch("record_count is zero"));
        }
        if !WIRE_PRIORITY_RANGE.contains(&h.priority) {
            return Err(DecodeError::InvalidRecord("batch priority outside 0..=10"));
        }
        if h.max_timestamp_ms < h.base_timestamp_ms {
            return Err(DecodeError::InvalidBatch(
                "max_timestamp_ms < base_timestamp_ms",
            ));
        }
        // base_offset is outside the CRC; offsets of the records (and the one after
        // them) must be representable so `last_offset` and readers cannot overflow.
        if h.base_offset
            .checked_add(u64::from(h.record_count))
            .is_none()
        {
            return Err(DecodeError::InvalidBatch(
                "base_offset + record_count overflows",
            ));
        }
        Ok(h)
    }

    /// The batch's size in bytes, header included.
    pub fn total_bytes(&self) -> usize {
        BATCH_LENGTH_PREFIX_BYTES + self.batch_length as usize
    }

    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// Sequence number of the batch's last record (wrapping), for idempotence.
    pub fn last_sequence(&self) -> u32 {
        self.base_sequence.wrapping_add(self.record_count - 1)
    }
}

/// The total length of the batch starting at `buf`, if its length field is present.
pub fn peek_total_bytes(buf: &[u8]) -> Option<usize> {
    if buf.len() < BATCH_LENGTH_PREFIX_BYTES {
        return None;
    }
    Some(BATCH_LENGTH_PREFIX_BYTES + le_u32(buf, 8) as usize)
}

/// CRC-32 (IEEE 802.3, as computed by zlib) of the covered part of a whole batch.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32fast::hash(&batch[CRC_START..])
}

/// Checks the header and CRC of the one batch at the start of `buf`, which may hold more
/// bytes after it. Cheap: one pass of CRC, no record walk. Used by storage recovery and
/// by clients on receipt.
pub fn verify(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
    let h = BatchHeader::read(buf)?;
    let total = h.total_bytes();
    if buf.len() < total {
        return Err(DecodeError::Truncated {
            needed: total,
            remaining: buf.len(),
        });
    }
    let computed = compute_crc(&buf[..total]);
    if computed != h.crc {
        return Err(DecodeError::BadCrc {
            stored: h.crc,
            computed,
        });
    }
    Ok(h)
}

/// Full validation of exactly one batch (no bytes after it): header, CRC, and every
/// record's lengths and ranges, plus the header's summaries (count, priority,
/// timestamps) against the records. The broker runs this on every produced batch.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, DecodeError> {
    validate_summary(batch).map(|(h, _)| h)
}

/// What [`validate_summary`] learns about a batch's records on its way through them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordSummary {
    /// Records whose priority is [`UNSET`].
    pub unset_priority: u32,
    /// Records whose complexity is [`UNSET`].
    pub unset_complexity: u32,
    /// Records with an empty key.
    pub keyless: u32,
}

impl RecordSummary {
    /// Whether every record has a priority and a complexity.
    pub fn complete(&self) -> bool {
        self.unset_priority == 0 && self.unset_complexity == 0
    }
}

/// [`validate`], also counting records with unset fields, in the same single pass.
pub fn validate_summary(batch: &[u8]) -> Result<(BatchHeader, RecordSummary), DecodeError> {
    walk(batch, |_, _, _| {})
}

/// Checks exactly one batch as [`validate`] does and decodes its records in the same
/// pass, handing each to `each` in order (a consumer's read, without walking the
/// records twice). On an error some records may already have been handed over; the
/// caller drops them.
pub fn decode_records(
    bytes: &Bytes,
    mut each: impl FnMut(Record),
) -> Result<BatchHeader, DecodeError> {
    walk(bytes, |h, raw, index| each(record_at(bytes, h, raw, index))).map(|(h, _)| h)
}

/// The one walk over a batch's records behind [`validate_summary`] and
/// [`decode_records`]: header and CRC first, then every record's lengths and ranges
/// (each handed to `each` with its index once checked), then the header's summaries.
fn walk(
    batch: &[u8],
    mut each: impl FnMut(&BatchHeader, &RawRecord, u32),
) -> Result<(BatchHeader, RecordSummary), DecodeError> {
    let h = verify(batch)?;
    let mut summary = RecordSummary::default();
    if h.total_bytes() != batch.len() {
        return Err(DecodeError::TrailingBytes(batch.len() - h.total_bytes()));
    }
    let mut pos = BATCH_HEADER_BYTES;
    let mut count: u32 = 0;
    let mut min_priority = u8::MAX;
    let mut max_ts = i64::MIN;
    while pos < batch.len() {
        let rec = RawRecord::parse(batch, pos)?;
        min_priority = min_priority.min(rec.priority);
        summary.unset_priority += u32::from(rec.priority == UNSET);
        summary.unset_complexity += u32::from(rec.complexity == UNSET);
        summary.keyless += u32::from(rec.key.0 == rec.key.1);
        let ts = h
            .base_timestamp_ms
            .checked_add(i64::from(rec.timestamp_delta_ms))
            .ok_or(DecodeError::InvalidBatch("record timestamp overflows"))?;
        max_ts = max_ts.max(ts);
        pos = rec.end;
        each(&h, &rec, count);
        count = count
            .checked_add(1)
            .ok_or(DecodeError::InvalidBatch("too many records"))?;
    }
    if count != h.record_count {
        return Err(DecodeError::InvalidBatch(
            "record_count does not match the records",
        ));
    }
    if min_priority != h.priority {
        return Err(DecodeError::InvalidBatch(
            "batch priority is not its records' highest",
        ));
    }
    if max_ts != h.max_timestamp_ms {
        return Err(DecodeError::InvalidBatch(
            "max_timestamp_ms does not match the records",
        ));
    }
    Ok((h, summary))
}

/// Writes the broker-assigned base offset into a batch (outside the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[0..8].copy_from_slice(&base_offset.to_le_bytes());
}

/// Writes the broker's leader epoch into a batch (outside the CRC).
pub fn set_leader_epoch(batch: &mut [u8], epoch: u32) {
    batch[12..16].copy_from_slice(&epoch.to_le_bytes());
}

/// Where the header's CRC and producer fields sit (see the layout in the module docs).
const CRC_AT: usize = 16;
const PRODUCER_ID_AT: usize = 44;
const PRODUCER_EPOCH_AT: usize = 52;
const BASE_SEQUENCE_AT: usize = 56;

/// Gives a finished batch a new producer id, epoch and base sequence, and the CRC that
/// goes with them. A producer does this when it moves queued batches to a new epoch:
/// re-encoding the records would cost a copy of each, while these fields are the only
/// ones that change. The batch's CRC is checked first, so a batch damaged in memory is
/// refused rather than given a CRC that makes it look whole.
pub fn restamp_producer(
    batch: &mut [u8],
    producer_id: u64,
    producer_epoch: u16,
    base_sequence: u32,
) -> Result<(), DecodeError> {
    let total = verify(batch)?.total_bytes();
    let batch = &mut batch[..total];
    batch[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_le_bytes());
    batch[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&producer_epoch.to_le_bytes());
    batch[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_le_bytes());
    let crc = compute_crc(batch);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The keys of a batch's records, in order (empty for a keyless record). For a batch
/// that passed [`validate`]: on bytes that did not, it stops at the first record it
/// cannot read. The broker uses it to hold the key → shard rule
/// ([`crate::keys::shard_for_key`]) without a second full validation pass.
pub fn record_keys(batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = BATCH_HEADER_BYTES;
    std::iter::from_fn(move || {
        // length u32, priority u8, complexity u8, timestamp_delta i32, key_length u16.
        let len = le_u32(batch.get(pos..pos + 4)?, 0) as usize;
        let key_len = le_u16(batch.get(pos + 10..pos + 12)?, 0) as usize;
        let key = batch.get(pos + 12..pos + 12 + key_len)?;
        pos = pos.checked_add(4 + len)?;
        Some(key)
    })
}

/// The absolute timestamps of a batch's records, in order. For a batch that passed
/// [`validate`] (or [`verify`] on read): it stops at the first record it cannot read.
/// ListOffsets uses it to answer with a record, not a batch.
pub fn record_timestamps(batch: &[u8]) -> impl Iterator<Item = i64> + '_ {
    let base = batch.get(28..36).map_or(0, |b| le_u64(b, 0) as i64);
    let mut pos = BATCH_HEADER_BYTES;
    std::iter::from_fn(move || {
        // length u32, priority u8, complexity u8, timestamp_delta i32.
        let len = le_u32(batch.get(pos..pos + 4)?, 0) as usize;
        let delta = le_u32(batch.get(pos + 6..pos + 10)?, 0) as i32;
        pos = pos.checked_add(4 + len)?;
        base.checked_add(i64::from(delta))
    })
}

/// The complexities of a batch's records, in order (0 = unset). For a batch that
/// passed [`validate`]: it stops at the first record it cannot read. The broker uses
/// it to place a keyless produce ([`crate::routing`]).
pub fn record_complexities(batch: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut pos = BATCH_HEADER_BYTES;
    std::iter::from_fn(move || {
        // length u32, priority u8, complexity u8.
        let len = le_u32(batch.get(pos..pos + 4)?, 0) as usize;
        let complexity = *batch.get(pos + 5)?;
        pos = pos.checked_add(4 + len)?;
        Some(complexity)
    })
}

/// Positions of one record's fields inside its batch.
struct RawRecord {
    priority: u8,
    complexity: u8,
    timestamp_delta_ms: i32,
    key: (usize, usize),
    value: (usize, usize),
    headers: (usize, u16),
    end: usize,
}

impl RawRecord {
    fn parse(b: &[u8], start: usize) -> Result<RawRecord, DecodeError> {
        let trunc = |needed: usize, at: usize| DecodeError::Truncated {
            needed,
            remaining: b.len().saturating_sub(at),
        };
        if b.len() - start < 4 {
            return Err(trunc(4, start));
        }
        let len = le_u32(b, start) as usize;
        let end = (start + 4)
            .checked_add(len)
            .filter(|&e| e <= b.len())
            .ok_or_else(|| trunc(len, start + 4))?;
        if len < RECORD_MIN_BYTES - 4 {
            return Err(DecodeError::InvalidBatch("record length below the minimum"));
        }
        let mut p = start + 4;
        let priority = b[p];
        let complexity = b[p + 1];
        let timestamp_delta_ms = le_u32(b, p + 2) as i32;
        p += 6;
        if !WIRE_PRIORITY_RANGE.contains(&priority) {
            return Err(DecodeError::InvalidRecord("priority outside 0..=10"));
        }
        if !WIRE_COMPLEXITY_RANGE.contains(&complexity) {
            return Err(DecodeError::InvalidRecord("complexity outside 0..=5"));
        }
        let key_len = le_u16(b, p) as usize;
        p += 2;
        if end - p < key_len + 4 {
            return Err(DecodeError::InvalidBatch("key overruns its record"));
        }
        let key = (p, p + key_len);
        p += key_len;
        let value_len = le_u32(b, p) as usize;
        p += 4;
        if end - p < value_len.saturating_add(2) {
            return Err(DecodeError::InvalidBatch("value overruns its record"));
        }
        let value = (p, p + value_len);
        p += value_len;
        let header_count = le_u16(b, p);
        p += 2;
        let headers_start = p;
        for _ in 0..header_count {
            if end - p < 2 {
                return Err(DecodeError::InvalidBatch("header overruns its record"));
            }
            let n = le_u16(b, p) as usize;
            p += 2;
            if end - p < n + 4 {
                return Err(DecodeError::InvalidBatch("header overruns its record"));
            }
            if std::str::from_utf8(&b[p..p + n]).is_err() {
                return Err(DecodeError::InvalidUtf8);
            }
            p += n;
            let v = le_u32(b, p) as usize;
            p += 4;
            if end - p < v {
                return Err(DecodeError::InvalidBatch("header overruns its record"));
            }
            p += v;
        }
        if p != end {
            return Err(DecodeError::InvalidBatch(
                "record has bytes after its headers",
            ));
        }
        Ok(RawRecord {
            priority,
            complexity,
            timestamp_delta_ms,
            key,
            value,
            headers: (headers_start, header_count),
            end,
        })
    }
}

/// One record header: a UTF-8 name and a byte value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
}

/// One record as a consumer sees it. `key` and `value` share the batch's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub priority: u8,
    pub complexity: u8,
    pub timestamp_ms: i64,
    /// The shard key; empty means the record has none.
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

/// A validated batch held as its stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// Validates `bytes` as exactly one batch (see [`validate`]).
    pub fn parse(bytes: Bytes) -> Result<Self, DecodeError> {
        let header = validate(&bytes)?;
        Ok(Batch { header, bytes })
    }

    /// The batch header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The records, with offsets and timestamps made absolute.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let mut pos = BATCH_HEADER_BYTES;
        let mut index = 0u32;
        std::iter::from_fn(move || {
            if pos >= self.bytes.len() {
                return None;
            }
            // Validated in `parse`, so this cannot fail.
            let raw = RawRecord::parse(&self.bytes, pos).ok()?;
            let rec = record_at(&self.bytes, &self.header, &raw, index);
            pos = raw.end;
            index += 1;
            Some(rec)
        })
    }
}

/// Record `index` of a checked batch, its key, value and header values slices of
/// `b` (no copy). Header names were checked as UTF-8 by [`RawRecord::parse`].
fn record_at(b: &Bytes, h: &BatchHeader, raw: &RawRecord, index: u32) -> Record {
    let mut headers = Vec::with_capacity(raw.headers.1 as usize);
    let mut p = raw.headers.0;
    for _ in 0..raw.headers.1 {
        let n = le_u16(b, p) as usize;
        let name = String::from_utf8_lossy(&b[p + 2..p + 2 + n]).into_owned();
        p += 2 + n;
        let v = le_u32(b, p) as usize;
        headers.push(Header {
            name,
            value: b.slice(p + 4..p + 4 + v),
        });
        p += 4 + v;
    }
    Record {
        offset: h.base_offset + u64::from(index),
        priority: raw.priority,
        complexity: raw.complexity,
        timestamp_ms: h.base_timestamp_ms + i64::from(raw.timestamp_delta_ms),
        key: b.slice(raw.key.0..raw.key.1),
        value: b.slice(raw.value.0..raw.value.1),
        headers,
    }
}

/// Splits concatenated batches into one `Bytes` per batch (zero-copy), checking each
/// batch's header and CRC. Stops at the first bad batch with its error.
pub fn split(mut buf: Bytes) -> impl Iterator<Item = Result<Bytes, DecodeError>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if buf.is_empty() || failed {
            return None;
        }
        match verify(&buf) {
            Ok(h) => Some(Ok(buf.split_to(h.total_bytes()))),
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

/// A record to add to a [`BatchBuilder`].
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub priority: u8,
    pub complexity: u8,
    pub timestamp_ms: i64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl<'a> NewRecord<'a> {
    /// A record with default priority and complexity and no key or headers.
    pub fn value(timestamp_ms: i64, value: &'a [u8]) -> Self {
        NewRecord {
            priority: DEFAULT_PRIORITY,
            complexity: DEFAULT_COMPLEXITY,
            timestamp_ms,
            key: &[],
            value,
            headers: &[],
        }
    }

    /// Bytes this record takes inside a batch.
    pub fn encoded_bytes(&self) -> usize {
        RECORD_MIN_BYTES
            + self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| 6 + n.len() + v.len())
                .sum::<usize>()
    }
}

/// Builds one batch record by record, then seals it with its header and CRC.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    record_count: u32,
    base_timestamp_ms: i64,
    max_timestamp_ms: i64,
    priority: u8,
    producer_id: u64,
    producer_epoch: u16,
    base_sequence: u32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// A builder for a batch from a producer that is not idempotent.
    pub fn new() -> Self {
        Self::with_capacity(4096)
    }

    /// Like [`BatchBuilder::new`], reserving `bytes` up front.
    pub fn with_capacity(bytes: usize) -> Self {
        Self::with_buffer(BytesMut::with_capacity(bytes.max(BATCH_HEADER_BYTES)))
    }

    /// Like [`BatchBuilder::new`], writing into `buf` (cleared first): a producer
    /// reuses the buffer of a batch the broker has acknowledged instead of having
    /// fresh pages faulted in for every batch.
    pub fn with_buffer(mut buf: BytesMut) -> Self {
        buf.clear();
        buf.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            buf,
            record_count: 0,
            base_timestamp_ms: 0,
            max_timestamp_ms: 0,
            priority: u8::MAX,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: 0,
            base_sequence: NO_SEQUENCE,
        }
    }

    /// Marks the batch as coming from an idempotent producer.
    pub fn producer(mut self, producer_id: u64, producer_epoch: u16, base_sequence: u32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Records added so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Bytes the batch would take if sealed now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends a record. Fails, leaving the builder unchanged, when a field is out of
    /// range or the record's timestamp is more than ±24 days from the batch's first.
    pub fn push(&mut self, r: &NewRecord<'_>) -> Result<(), DecodeError> {
        if !WIRE_PRIORITY_RANGE.contains(&r.priority) {
            return Err(DecodeError::InvalidRecord("priority outside 0..=10"));
        }
        if !WIRE_COMPLEXITY_RANGE.contains(&r.complexity) {
            return Err(DecodeError::InvalidRecord("complexity outside 0..=5"));
        }
        if r.key.len() > u16::MAX as usize || r.headers.len() > u16::MAX as usize {
            return Err(DecodeError::InvalidRecord("key or header list too long"));
        }
        if r.headers.iter().any(|(n, _)| n.len() > u16::MAX as usize) {
            return Err(DecodeError::InvalidRecord("header name too long"));
        }
        let len = r.encoded_bytes() - 4;
        if len > u32::MAX as usize / 2 {
            return Err(DecodeError::InvalidRecord("record too large"));
        }
        if self.record_count == 0 {
            self.base_timestamp_ms = r.timestamp_ms;
            self.max_timestamp_ms = r.timestamp_ms;
        }
        let delta = r
            .timestamp_ms
            .checked_sub(self.base_timestamp_ms)
            .and_then(|d| i32::try_from(d).ok())
            .ok_or(DecodeError::InvalidRecord(
                "timestamp too far from the batch's first",
            ))?;
        self.buf.reserve(len + 4);
        // The fixed fields as one 12-byte write, then the value's length and the header
        // count beside the slices they frame: fewer capacity checks per record, which
        // is most of the builder's cost for small records.
        let mut fixed = [0u8; 12];
        fixed[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        fixed[4] = r.priority;
        fixed[5] = r.complexity;
        fixed[6..10].copy_from_slice(&delta.to_le_bytes());
        fixed[10..12].copy_from_slice(&(r.key.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(&fixed);
        self.buf.extend_from_slice(r.key);
        self.buf
            .extend_from_slice(&(r.value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(r.value);
        self.buf
            .extend_from_slice(&(r.headers.len() as u16).to_le_bytes());
        for (name, value) in r.headers {
            self.buf.put_u16_le(name.len() as u16);
            self.buf.put_slice(name.as_bytes());
            self.buf.put_u32_le(value.len() as u32);
            self.buf.put_slice(value);
        }
        self.record_count += 1;
        self.priority = self.priority.min(r.priority);
        self.max_timestamp_ms = self.max_timestamp_ms.max(r.timestamp_ms);
        Ok(())
    }

    /// Writes the header and CRC. Fails if no record was added.
    pub fn finish(mut self) -> Result<Bytes, DecodeError> {
        if self.record_count == 0 {
            return Err(DecodeError::InvalidBatch("record_count is zero"));
        }
        let total = self.buf.len();
        if total - BATCH_LENGTH_PREFIX_BYTES > u32::MAX as usize {
            return Err(DecodeError::InvalidBatch("batch too large"));
        }
        let h = &mut self.buf[..BATCH_HEADER_BYTES];
        h[0..8].copy_from_slice(&0u64.to_le_bytes());
        h[8..12].copy_from_slice(&((total - BATCH_LENGTH_PREFIX_BYTES) as u32).to_le_bytes());
        h[12..16].copy_from_slice(&0u32.to_le_bytes());
        h[20] = MAGIC;
        h[21] = 0;
        h[22] = self.priority;
        h[23] = 0;
        h[24..28].copy_from_slice(&self.record_count.to_le_bytes());
        h[28..36].copy_from_slice(&self.base_timestamp_ms.to_le_bytes());
        h[36..44].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        h[44..52].copy_from_slice(&self.producer_id.to_le_bytes());
        h[52..54].copy_from_slice(&self.producer_epoch.to_le_bytes());
        h[54..56].copy_from_slice(&0u16.to_le_bytes());
        h[56..60].copy_from_slice(&self.base_sequence.to_le_bytes());
        let crc = compute_crc(&self.buf);
        self.buf[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok(self.buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bytes {
        let mut b = BatchBuilder::new().producer(7, 1, 100);
        b.push(&NewRecord {
            priority: 3,
            complexity: 2,
            timestamp_ms: 1_000,
            key: b"user-1",
            value: b"hello",
            headers: &[("trace", b"abc")],
        })
        .unwrap();
        b.push(&NewRecord::value(1_005, b"world")).unwrap();
        b.finish().unwrap()
    }

    #[test]
    fn build_then_parse() {
        let bytes = sample();
        let batch = Batch::parse(bytes).unwrap();
        let h = batch.header();
        assert_eq!(h.record_count, 2);
        assert_eq!(h.priority, 3);
        assert_eq!(h.max_timestamp_ms, 1_005);
        assert_eq!(h.last_sequence(), 101);
        let recs: Vec<_> = batch.records().collect();
        assert_eq!(recs[0].key.as_ref(), b"user-1");
        assert_eq!(recs[0].headers[0].name, "trace");
        assert_eq!(recs[1].value.as_ref(), b"world");
        assert_eq!(recs[1].timestamp_ms, 1_005);
        assert_eq!(recs[1].offset, 1);
    }

    #[test]
    fn record_keys_and_timestamps_walk_the_records() {
        let mut b = BatchBuilder::new();
        for (ts, key) in [(1000, &b"a"[..]), (900, b""), (1500, b"ccc")] {
            let mut r = NewRecord::value(ts, b"v");
            r.key = key;
            b.push(&r).unwrap();
        }
        let bytes = b.finish().unwrap();
        assert_eq!(
            record_keys(&bytes).collect::<Vec<_>>(),
            [&b"a"[..], b"", b"ccc"]
        );
        assert_eq!(
            record_timestamps(&bytes).collect::<Vec<_>>(),
            [1000, 900, 1500]
        );
        assert_eq!(
            record_keys(&bytes[..70]).count(),
            0,
            "a cut record is not read"
        );
    }

    #[test]
    fn stamping_keeps_crc_valid() {
        let mut v = sample().to_vec();
        set_base_offset(&mut v, 42);
        set_leader_epoch(&mut v, 9);
        let h = validate(&v).unwrap();
        assert_eq!((h.base_offset, h.leader_epoch), (42, 9));
    }

    #[test]
    fn restamping_the_producer_keeps_the_batch_valid_and_refuses_a_damaged_one() {
        let mut v = sample().to_vec();
        set_base_offset(&mut v, 42);
        restamp_producer(&mut v, 77, 3, 1_000).unwrap();
        let h = validate(&v).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (77, 3, 1_000)
        );
        assert_eq!(h.base_offset, 42, "the broker's fields are not touched");
        assert_eq!(h.last_sequence(), 1_001);
        let before: Vec<_> = Batch::parse(sample()).unwrap().records().collect();
        let after: Vec<_> = Batch::parse(Bytes::from(v.clone()))
            .unwrap()
            .records()
            .collect();
        assert_eq!(before.len(), after.len());
        for (a, b) in before.iter().zip(&after) {
            assert_eq!(
                (&a.key, &a.value, a.timestamp_ms),
                (&b.key, &b.value, b.timestamp_ms)
            );
        }
        // A flipped record byte is not laundered by a fresh CRC.
        let last = v.len() - 1;
        v[last] ^= 1;
        assert!(matches!(
            restamp_producer(&mut v, 1, 1, 1),
            Err(DecodeError::BadCrc { .. })
        ));
        assert!(restamp_producer(&mut v[..30], 1, 1, 1).is_err());
    }

    #[test]
    fn any_flipped_covered_bit_is_caught() {
        let good = sample().to_vec();
        for i in CRC_START..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(validate(&bad).is_err(), "flip at byte {i} not caught");
        }
    }

    #[test]
    fn out_of_range_priority_is_refused_by_the_builder() {
        let mut b = BatchBuilder::new();
        let mut r = NewRecord::value(0, b"x");
        r.priority = 11;
        assert_eq!(
            b.push(&r),
            Err(DecodeError::InvalidRecord("priority outside 0..=10"))
        );
        r.priority = 5;
        r.complexity = 6;
        assert!(b.push(&r).is_err());
        assert!(b.finish().is_err(), "no record was added");
        // 0 means "unset": accepted, and the header's priority says so.
        r.priority = UNSET;
        r.complexity = UNSET;
        let mut b = BatchBuilder::new();
        b.push(&r).unwrap();
        let bytes = b.finish().unwrap();
        let (h, summary) = validate_summary(&bytes).unwrap();
        assert_eq!(h.priority, UNSET);
        assert_eq!((summary.unset_priority, summary.unset_complexity), (1, 1));
    }
}
