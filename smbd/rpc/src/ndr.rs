//! NDR 2.0 transfer syntax (C706 chapter 14), little-endian only: aligned primitives,
//! conformant varying strings and unique / ref pointers with deferred referents.
//!
//! Only little-endian integer representation is spoken: every Windows and Samba client sends
//! it, and [`crate::pdu`] refuses other data representations before NDR is reached.

use thiserror::Error;

/// The one decode error of this crate: PDUs and NDR stub data alike.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("truncated: needed {needed} bytes at offset {at}")]
    Truncated { at: usize, needed: usize },
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("{what} too large: {len}")]
    TooLarge { what: &'static str, len: usize },
}

/// Largest string (in UTF-16 code units) a decoder accepts: share and server names are far
/// shorter; the bound keeps a hostile conformance count from meaning anything.
pub const MAX_STRING_UNITS: u32 = 32 * 1024;

/// Reads NDR20 stub data. Alignment is relative to the start of the stub, as NDR requires.
pub struct NdrReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> NdrReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Skip padding up to a multiple of `n` (a power of two).
    pub fn align(&mut self, n: usize) -> Result<(), DecodeError> {
        let pad = (n - self.pos % n) % n;
        self.bytes(pad).map(|_| ())
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated {
                at: self.pos,
                needed: n,
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.align(2)?;
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.align(4)?;
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.align(8)?;
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A full (unique) pointer's referent id: `false` for NULL. The referent follows later,
    /// where the caller's deferral rules put it.
    pub fn unique_ptr(&mut self) -> Result<bool, DecodeError> {
        Ok(self.u32()? != 0)
    }

    /// A `[string] wchar_t*` referent: conformant varying array of UTF-16LE units including
    /// the terminating NUL (which is stripped; a missing one is tolerated).
    pub fn conformant_varying_string(&mut self) -> Result<String, DecodeError> {
        let max_count = self.u32()?;
        let offset = self.u32()?;
        let actual = self.u32()?;
        if offset != 0 {
            return Err(DecodeError::Invalid("string offset"));
        }
        if actual > max_count {
            return Err(DecodeError::Invalid("string actual_count above max_count"));
        }
        if max_count > MAX_STRING_UNITS {
            return Err(DecodeError::TooLarge {
                what: "string",
                len: max_count as usize,
            });
        }
        let raw = self.bytes(actual as usize * 2)?;
        let mut units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        if units.last() == Some(&0) {
            units.pop();
        }
        String::from_utf16(&units).map_err(|_| DecodeError::Invalid("UTF-16 string"))
    }

    /// `[in, string, unique] wchar_t*`: NULL or the string right behind its referent id
    /// (a top-level pointer's referent is not deferred past other parameters).
    pub fn unique_string(&mut self) -> Result<Option<String>, DecodeError> {
        if self.unique_ptr()? {
            Ok(Some(self.conformant_varying_string()?))
        } else {
            Ok(None)
        }
    }
}

type DeferredFn = Box<dyn FnOnce(&mut NdrWriter)>;

/// Writes NDR20 stub data. Embedded pointers' referents are queued with [`NdrWriter::defer`]
/// and written by [`NdrWriter::flush_deferred`] after the outermost constructed type, each
/// followed at once by the referents it deferred itself (C706 14.3.12.3).
pub struct NdrWriter {
    buf: Vec<u8>,
    deferred: Vec<DeferredFn>,
    next_referent: u32,
}

impl Default for NdrWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl NdrWriter {
    pub fn new() -> Self {
        // Windows numbers referents from 0x00020000 upwards; any non-zero unique value works.
        Self {
            buf: Vec::new(),
            deferred: Vec::new(),
            next_referent: 0x0002_0000,
        }
    }

    pub fn into_bytes(mut self) -> Vec<u8> {
        self.flush_deferred();
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn align(&mut self, n: usize) {
        let pad = (n - self.buf.len() % n) % n;
        self.buf.resize(self.buf.len() + pad, 0);
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.align(2);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A non-NULL unique pointer's referent id.
    pub fn referent_id(&mut self) {
        let id = self.next_referent;
        self.next_referent = self.next_referent.wrapping_add(4);
        self.u32(id);
    }

    pub fn null_ptr(&mut self) {
        self.u32(0);
    }

    /// Queue a referent to be written after the enclosing constructed type.
    pub fn defer(&mut self, f: impl FnOnce(&mut NdrWriter) + 'static) {
        self.deferred.push(Box::new(f));
    }

    /// Write the queued referents in order, each followed by its own deferred referents.
    pub fn flush_deferred(&mut self) {
        let queue = std::mem::take(&mut self.deferred);
        for f in queue {
            f(self);
            self.flush_deferred();
        }
    }

    /// A `[string] wchar_t*` referent: conformant varying UTF-16LE with its NUL.
    pub fn conformant_varying_string(&mut self, s: &str) {
        let units: Vec<u16> = s.encode_utf16().chain(std::iter::once(0)).collect();
        let n = units.len() as u32;
        self.u32(n);
        self.u32(0);
        self.u32(n);
        for u in units {
            self.buf.extend_from_slice(&u.to_le_bytes());
        }
    }

    /// An embedded `[string, unique] wchar_t*`: the referent id now, the string deferred.
    pub fn deferred_string(&mut self, s: &str) {
        self.referent_id();
        let s = s.to_owned();
        self.defer(move |w| w.conformant_varying_string(&s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_round_trip_and_alignment() {
        let mut w = NdrWriter::new();
        w.u8(1);
        w.conformant_varying_string("IPC$");
        let b = w.into_bytes();
        // One byte, three bytes of padding, three counts, five UTF-16 units.
        assert_eq!(b.len(), 4 + 12 + 10);
        assert_eq!(&b[4..16], &[5, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0]);
        let mut r = NdrReader::new(&b);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.conformant_varying_string().unwrap(), "IPC$");
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn deferred_referents_follow_their_structure_in_order() {
        let mut w = NdrWriter::new();
        // Two structs { name*, value }: both structs first, then both names.
        for (name, v) in [("a", 7u32), ("bc", 9)] {
            w.deferred_string(name);
            w.u32(v);
        }
        w.flush_deferred();
        let b = w.into_bytes();
        let mut r = NdrReader::new(&b);
        assert!(r.unique_ptr().unwrap());
        assert_eq!(r.u32().unwrap(), 7);
        assert!(r.unique_ptr().unwrap());
        assert_eq!(r.u32().unwrap(), 9);
        assert_eq!(r.conformant_varying_string().unwrap(), "a");
        assert_eq!(r.conformant_varying_string().unwrap(), "bc");
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn hostile_counts_are_decode_errors() {
        let mut w = NdrWriter::new();
        w.u32(2);
        w.u32(0);
        w.u32(3); // actual above max
        assert_eq!(
            NdrReader::new(&w.into_bytes()).conformant_varying_string(),
            Err(DecodeError::Invalid("string actual_count above max_count"))
        );
        let mut w = NdrWriter::new();
        w.u32(u32::MAX);
        w.u32(0);
        w.u32(u32::MAX);
        assert!(matches!(
            NdrReader::new(&w.into_bytes()).conformant_varying_string(),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            NdrReader::new(&[1, 0]).u32(),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
