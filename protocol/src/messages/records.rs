//! [`Records`]: concatenated record batches inside a Produce request or Fetch response.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch;
use crate::error::DecodeError;
use crate::wire::{Reader, Wire};

/// Concatenated record batches, held as one or more zero-copy chunks. On the wire: a
/// `u32` total length, then the batches back to back. A decoded value has one chunk, a
/// slice of the frame; a broker building a fetch response may pass several chunks
/// (one per segment it read from) so nothing is copied until the socket write.
#[derive(Clone, Default)]
pub struct Records {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Records {
    /// Records held in one buffer.
    pub fn from_bytes(bytes: Bytes) -> Self {
        let len = bytes.len();
        let chunks = if len == 0 { Vec::new() } else { vec![bytes] };
        Records { chunks, len }
    }

    /// Records held in several buffers, in order.
    pub fn from_chunks(chunks: Vec<Bytes>) -> Self {
        let chunks: Vec<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let len = chunks.iter().map(Bytes::len).sum();
        Records { chunks, len }
    }

    /// Total bytes.
    pub fn len_bytes(&self) -> usize {
        self.len
    }

    /// True when there are no batches.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// All bytes in one buffer; free when there is a single chunk.
    pub fn to_bytes(&self) -> Bytes {
        match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks[0].clone(),
            _ => {
                let mut b = BytesMut::with_capacity(self.len);
                for c in &self.chunks {
                    b.put_slice(c);
                }
                b.freeze()
            }
        }
    }

    /// Each batch as its own zero-copy `Bytes`, header and CRC checked.
    pub fn batches(&self) -> impl Iterator<Item = Result<Bytes, DecodeError>> {
        batch::split(self.to_bytes())
    }
}

impl PartialEq for Records {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.to_bytes() == other.to_bytes()
    }
}
impl Eq for Records {}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Records({} bytes", self.len)?;
        if self.len <= 64 {
            write!(f, ", {:02x?}", self.to_bytes().as_ref())?;
        }
        write!(f, ")")
    }
}

impl Wire for Records {
    const MIN_BYTES: usize = 4;
    fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(4 + self.len);
        buf.put_u32_le(self.len as u32);
        for c in &self.chunks {
            buf.put_slice(c);
        }
    }
    /// Writes the length prefix into `head` and hands the chunks to `tail` instead of
    /// copying them, for vectored socket writes.
    fn encode_split(&self, head: &mut BytesMut, tail: &mut Vec<Bytes>) {
        head.put_u32_le(self.len as u32);
        tail.extend(self.chunks.iter().cloned());
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Records::from_bytes(Bytes::decode(r)?))
    }
}
