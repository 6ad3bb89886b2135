//! Primitive encoding: the [`Wire`] trait and a bounds-checked [`Reader`].
//!
//! All integers are little-endian. Strings are a `u16` byte length then UTF-8; byte
//! strings are a `u32` length then the bytes; arrays are a `u32` element count then the
//! elements. A reader never trusts a length: it checks it against the bytes that are
//! actually left before it slices or allocates, so a hostile length cannot make the
//! decoder allocate more than the frame it already holds.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;

/// A cursor over a frame body. Slices it hands out share the frame's buffer (no copy).
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// Reads from the start of `buf`.
    pub fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.remaining() < n {
            Err(DecodeError::Truncated {
                needed: n,
                remaining: self.remaining(),
            })
        } else {
            Ok(())
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// Takes the next `n` bytes as a zero-copy slice of the frame.
    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// Reads an array count and checks it against the bytes left, given that every
    /// element takes at least `min_elem_bytes` bytes on the wire.
    pub fn count(&mut self, min_elem_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        let need = n.saturating_mul(min_elem_bytes.max(1));
        self.need(need)?;
        Ok(n)
    }
}

/// A value with one fixed wire encoding.
pub trait Wire: Sized {
    /// The fewest bytes any value of this type takes; bounds array pre-allocation.
    const MIN_BYTES: usize;
    /// Appends the encoding to `buf`.
    fn encode(&self, buf: &mut BytesMut);
    /// Reads one value.
    fn decode(r: &mut Reader) -> Result<Self, DecodeError>;
    /// Like [`Wire::encode`], but large byte payloads (record sets) may be handed to
    /// `tail` instead of being copied into `head`; the frame is `head` then `tail`.
    /// Only the last field of a body may use `tail`.
    fn encode_split(&self, head: &mut BytesMut, _tail: &mut Vec<Bytes>) {
        self.encode(head);
    }
}

macro_rules! wire_int {
    ($t:ty, $n:literal, $get:ident, $put:ident) => {
        impl Wire for $t {
            const MIN_BYTES: usize = $n;
            fn encode(&self, buf: &mut BytesMut) {
                buf.$put(*self);
            }
            fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
                r.$get()
            }
        }
    };
}
wire_int!(u8, 1, u8, put_u8);
wire_int!(u16, 2, u16, put_u16_le);
wire_int!(u32, 4, u32, put_u32_le);
wire_int!(u64, 8, u64, put_u64_le);
wire_int!(i64, 8, i64, put_i64_le);

/// Strings: `u16` length, then UTF-8 bytes. Longer strings are a programming error on
/// the encoding side and are truncated at a character boundary below 65,535 bytes.
impl Wire for String {
    const MIN_BYTES: usize = 2;
    fn encode(&self, buf: &mut BytesMut) {
        let mut end = self.len().min(u16::MAX as usize);
        while !self.is_char_boundary(end) {
            end -= 1;
        }
        buf.put_u16_le(end as u16);
        buf.put_slice(&self.as_bytes()[..end]);
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u16()? as usize;
        let raw = r.take(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }
}

/// Byte strings: `u32` length, then the bytes (zero-copy on decode).
impl Wire for Bytes {
    const MIN_BYTES: usize = 4;
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.len() as u32);
        buf.put_slice(self);
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32()? as usize;
        r.take(n)
    }
}

/// Arrays: `u32` element count, then the elements.
impl<T: Wire> Wire for Vec<T> {
    const MIN_BYTES: usize = 4;
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.len() as u32);
        for item in self {
            item.encode(buf);
        }
    }
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.count(T::MIN_BYTES)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(T::decode(r)?);
        }
        Ok(out)
    }
}

/// Declares a plain struct whose wire form is its fields in order.
#[macro_export]
#[doc(hidden)]
macro_rules! wire_struct {
    ($(#[$m:meta])* pub struct $name:ident { $( $(#[$fm:meta])* pub $f:ident : $t:ty ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name { $( $(#[$fm])* pub $f: $t ),* }

        impl $crate::wire::Wire for $name {
            const MIN_BYTES: usize = 0 $( + <$t as $crate::wire::Wire>::MIN_BYTES )*;
            #[allow(unused_variables)]
            fn encode(&self, buf: &mut ::bytes::BytesMut) {
                $( $crate::wire::Wire::encode(&self.$f, buf); )*
            }
            #[allow(unused_variables)]
            fn encode_split(&self, head: &mut ::bytes::BytesMut, tail: &mut Vec<::bytes::Bytes>) {
                $( $crate::wire::Wire::encode_split(&self.$f, head, tail); )*
            }
            #[allow(unused_variables)]
            fn decode(r: &mut $crate::wire::Reader) -> Result<Self, $crate::error::DecodeError> {
                Ok(Self { $( $f: $crate::wire::Wire::decode(r)? ),* })
            }
        }
    };
}

/// Declares a `u8`-coded enum; unknown values are a named decode error.
#[macro_export]
#[doc(hidden)]
macro_rules! wire_enum {
    ($(#[$m:meta])* pub enum $name:ident : $field:literal { $( $(#[$vm:meta])* $v:ident = $n:literal ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $( $(#[$vm])* $v = $n ),* }

        impl $name {
            /// The value for a wire byte.
            pub fn from_u8(v: u8) -> Option<Self> {
                match v { $( $n => Some($name::$v), )* _ => None }
            }
        }

        impl $crate::wire::Wire for $name {
            const MIN_BYTES: usize = 1;
            fn encode(&self, buf: &mut ::bytes::BytesMut) {
                ::bytes::BufMut::put_u8(buf, *self as u8);
            }
            fn decode(r: &mut $crate::wire::Reader) -> Result<Self, $crate::error::DecodeError> {
                let v = r.u8()?;
                $name::from_u8(v).ok_or($crate::error::DecodeError::InvalidEnum { field: $field, value: v as u64 })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_array_count_is_rejected_before_allocation() {
        // Count of 4 billion strings in a 6-byte body.
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0, 0]));
        let err = Vec::<String>::decode(&mut r).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { .. }), "{err:?}");
    }

    #[test]
    fn hostile_bytes_length_is_rejected() {
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0x7f, 1, 2]));
        assert!(matches!(
            Bytes::decode(&mut r),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn bad_utf8_is_named() {
        let mut r = Reader::new(Bytes::from_static(&[2, 0, 0xc3, 0x28]));
        assert_eq!(String::decode(&mut r), Err(DecodeError::InvalidUtf8));
    }
}
