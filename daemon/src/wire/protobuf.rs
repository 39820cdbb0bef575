//! A minimal protobuf reader and writer for the five MetalBond messages.
//!
//! Hand-written because it is the hot path: decoding an UPDATE allocates
//! nothing, and encoding writes straight into the outbound buffer. Output is
//! canonical proto3 (fields in number order, zero values omitted), which is
//! what the Go reference and prost emit, so frames match byte for byte; the
//! property tests check both directions against prost.

use bytes::BufMut;

/// Wire type of a protobuf field.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// Deepest nesting of (unknown, skipped) groups we accept. prost stops at
/// about 100 levels and Go at 10,000; no MetalBond peer sends groups at all,
/// the limit only bounds the recursion.
const MAX_GROUP_DEPTH: usize = 32;

/// A decoding failure, described for the log.
pub type ReadError = &'static str;

/// Iterates over the fields of one protobuf message.
pub struct Reader<'a> {
    buf: &'a [u8],
}

/// One field's value.
pub enum Value<'a> {
    /// Varint (wire type 0).
    Varint(u64),
    /// Length-delimited bytes (wire type 2).
    Bytes(&'a [u8]),
    /// Fixed 32 or 64 bit (wire types 5 and 1); no MetalBond field uses them.
    Fixed,
    /// A (proto2) group, wire types 3 to 4, skipped with its contents; no
    /// MetalBond field uses them.
    Group,
}

impl<'a> Reader<'a> {
    /// Reads fields from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The next field as (field number, value), or `None` at the end.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, ReadError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let (field, wire_type) = self.key()?;
        let value = match wire_type {
            VARINT => Value::Varint(self.varint()?),
            LEN => {
                let len = self.varint()?;
                if len > self.buf.len() as u64 {
                    return Err("length-delimited field runs past the end");
                }
                let (head, rest) = self.buf.split_at(len as usize);
                self.buf = rest;
                Value::Bytes(head)
            }
            FIXED64 => {
                self.skip(8)?;
                Value::Fixed
            }
            FIXED32 => {
                self.skip(4)?;
                Value::Fixed
            }
            START_GROUP => {
                self.skip_group(field, 1)?;
                Value::Group
            }
            END_GROUP => return Err("end-group tag without a start-group"),
            _ => return Err("unsupported wire type"),
        };
        Ok(Some((field, value)))
    }

    /// Reads a field key: (field number, wire type).
    fn key(&mut self) -> Result<(u32, u8), ReadError> {
        let tag = self.varint()?;
        if tag > u64::from(u32::MAX) {
            return Err("field tag out of range");
        }
        let field = (tag >> 3) as u32;
        if field == 0 {
            return Err("field number 0");
        }
        Ok((field, (tag & 7) as u8))
    }

    /// Skips the rest of a group of field `field` (its start tag is read),
    /// up to and including the matching end tag, like protobuf does for
    /// unknown fields.
    fn skip_group(&mut self, field: u32, depth: usize) -> Result<(), ReadError> {
        if depth > MAX_GROUP_DEPTH {
            return Err("groups nested too deeply");
        }
        loop {
            if self.buf.is_empty() {
                return Err("unterminated group");
            }
            let (inner, wire_type) = self.key()?;
            match wire_type {
                VARINT => {
                    self.varint()?;
                }
                LEN => {
                    let len = self.varint()?;
                    if len > self.buf.len() as u64 {
                        return Err("length-delimited field runs past the end");
                    }
                    self.buf = &self.buf[len as usize..];
                }
                FIXED64 => self.skip(8)?,
                FIXED32 => self.skip(4)?,
                START_GROUP => self.skip_group(inner, depth + 1)?,
                END_GROUP if inner == field => return Ok(()),
                END_GROUP => return Err("end-group tag does not match its start-group"),
                _ => return Err("unsupported wire type"),
            }
        }
    }

    fn skip(&mut self, n: usize) -> Result<(), ReadError> {
        if self.buf.len() < n {
            return Err("fixed-width field runs past the end");
        }
        self.buf = &self.buf[n..];
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, ReadError> {
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte > 1 {
                    return Err("varint overflows 64 bits");
                }
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        if self.buf.len() < 10 {
            Err("truncated varint")
        } else {
            Err("varint longer than 10 bytes")
        }
    }
}

impl<'a> Value<'a> {
    /// The value of a varint field, or an error for another wire type.
    pub fn varint(&self) -> Result<u64, ReadError> {
        match self {
            Value::Varint(v) => Ok(*v),
            _ => Err("wrong wire type for a varint field"),
        }
    }

    /// The bytes of a length-delimited field, or an error for another wire type.
    pub fn bytes(&self) -> Result<&'a [u8], ReadError> {
        match *self {
            Value::Bytes(b) => Ok(b),
            _ => Err("wrong wire type for a bytes field"),
        }
    }
}

/// Number of bytes `value` takes as a varint.
pub fn varint_len(value: u64) -> usize {
    // 1 byte per started group of 7 bits, at least 1.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Writes `value` as a varint.
pub fn put_varint(out: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Size of a varint field (tag + value), 0 when the value is zero (omitted).
pub fn varint_field_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + varint_len(value)
    }
}

/// Writes a varint field unless the value is zero (proto3 omits defaults).
pub fn put_varint_field(out: &mut impl BufMut, field: u32, value: u64) {
    if value != 0 {
        put_varint(out, u64::from(field << 3 | u32::from(VARINT)));
        put_varint(out, value);
    }
}

/// Size of a length-delimited field with a payload of `len` bytes, always emitted.
pub fn len_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Writes the tag and length of a length-delimited field; the caller writes the payload.
pub fn put_len_prefix(out: &mut impl BufMut, field: u32, len: usize) {
    put_varint(out, u64::from(field << 3 | u32::from(LEN)));
    put_varint(out, len as u64);
}

/// Protobuf encodes an `int32` (enum) as the sign-extended 64-bit varint.
pub fn enum_to_varint(value: i32) -> u64 {
    i64::from(value) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_len_matches_encoding() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "value {v}");
            let mut r = Reader::new(&out);
            assert_eq!(r.varint().unwrap(), v);
        }
    }

    #[test]
    fn rejects_truncated_and_overlong_varints() {
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .varint()
                .is_err()
        );
    }
}
