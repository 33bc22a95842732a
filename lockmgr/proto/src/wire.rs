//! Little-endian primitives: a bounded output sink and a checked input reader.

use crate::error::DecodeError;

/// Output window for one message, sized exactly by the message's computed length.
///
/// Writes that would pass the end are dropped and latch `overflow` (only possible if a length
/// function disagrees with its encoder, a codec bug the tests look for); field encoders thus stay
/// infallible and straight-line, and the frame writer checks once per message.
pub(crate) struct Sink<'b> {
    buf: &'b mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'b> Sink<'b> {
    #[inline]
    pub(crate) fn new(buf: &'b mut [u8]) -> Self {
        Sink {
            buf,
            pos: 0,
            overflow: false,
        }
    }

    /// Bytes written; equals the window size iff the message was encoded completely.
    #[inline]
    pub(crate) fn written(&self) -> Option<usize> {
        (!self.overflow).then_some(self.pos)
    }

    #[inline]
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.pos..self.pos + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos += bytes.len();
            }
            None => self.overflow = true,
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

    /// The next byte without consuming it.
    #[inline]
    pub(crate) fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
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
