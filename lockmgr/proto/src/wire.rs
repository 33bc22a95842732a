//! Little-endian primitives: a bounded output sink and a checked input reader.

use crate::error::DecodeError;

/// Where encoded bytes go: the tail of a caller's `Vec` or a caller's fixed buffer.
pub(crate) enum Out<'a> {
    Vec(&'a mut Vec<u8>),
    Slice {
        buf: &'a mut [u8],
        len: usize,
    },
    /// Only counts: sizes a message without writing it.
    Count(usize),
}

/// Output with a hard end (`limit`, an absolute index into the buffer).
///
/// Writes past the limit are dropped and latch `overflow`, so field encoders stay infallible
/// and straight-line; the frame writer checks the latch once per message and rolls back.
pub(crate) struct Sink<'a> {
    out: Out<'a>,
    limit: usize,
    overflow: bool,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(out: Out<'a>, limit: usize) -> Self {
        Sink {
            out,
            limit,
            overflow: false,
        }
    }

    pub(crate) fn counter() -> Sink<'static> {
        Sink::new(Out::Count(0), usize::MAX)
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        match &self.out {
            Out::Vec(v) => v.len(),
            Out::Slice { len, .. } => *len,
            Out::Count(n) => *n,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Drops everything written after `len` and clears the overflow latch.
    pub(crate) fn truncate(&mut self, len: usize) {
        match &mut self.out {
            Out::Vec(v) => v.truncate(len),
            Out::Slice { len: l, .. } | Out::Count(l) => *l = (*l).min(len),
        }
        self.overflow = false;
    }

    #[inline]
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        let cur = self.len();
        if self.overflow || bytes.len() > self.limit.saturating_sub(cur) {
            self.overflow = true;
            return;
        }
        match &mut self.out {
            Out::Vec(v) => v.extend_from_slice(bytes),
            Out::Slice { buf, len } => match buf.get_mut(cur..cur + bytes.len()) {
                Some(dst) => {
                    dst.copy_from_slice(bytes);
                    *len += bytes.len();
                }
                None => self.overflow = true,
            },
            Out::Count(n) => *n += bytes.len(),
        }
    }

    /// Overwrites already written bytes (header fields known only at the end).
    pub(crate) fn patch(&mut self, at: usize, bytes: &[u8]) {
        let dst = match &mut self.out {
            Out::Vec(v) => v.get_mut(at..at + bytes.len()),
            Out::Slice { buf, len } => buf
                .get_mut(..*len)
                .and_then(|b| b.get_mut(at..at + bytes.len())),
            Out::Count(_) => None,
        };
        if let Some(dst) = dst {
            dst.copy_from_slice(bytes);
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    #[inline]
    pub(crate) fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    #[inline]
    pub(crate) fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    #[inline]
    pub(crate) fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    #[inline]
    pub(crate) fn u128(&mut self, v: u128) {
        self.put(&v.to_le_bytes());
    }
    #[inline]
    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
}

/// Checked cursor over an input slice: every read is bounds-checked and reports `Truncated`.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    #[inline]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    #[inline]
    fn truncated(&self, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            needed,
            available: self.remaining(),
        }
    }

    #[inline]
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        match self.buf.get(self.pos..).and_then(|s| s.first_chunk::<N>()) {
            Some(a) => {
                self.pos += N;
                Ok(*a)
            }
            None => Err(self.truncated(N)),
        }
    }

    #[inline]
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated(n))?;
        match self.buf.get(self.pos..end) {
            Some(s) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(self.truncated(n)),
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }
    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }
    #[inline]
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }
    #[inline]
    pub(crate) fn u128(&mut self) -> Result<u128, DecodeError> {
        self.array().map(u128::from_le_bytes)
    }

    /// Booleans are strictly 0 or 1 so that every value has exactly one encoding.
    #[inline]
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::InvalidEnumValue {
                field,
                value: u64::from(v),
            }),
        }
    }

    /// Rejects bytes left over after the last field of a message body.
    #[inline]
    pub(crate) fn finish(&self, tag: u8) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBodyBytes { tag, extra }),
        }
    }
}
