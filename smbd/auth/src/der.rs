//! Just enough DER/BER to read and write SPNEGO tokens (RFC 4178, MS-SPNG). Only single-byte tags
//! and definite lengths are supported, which is all SPNEGO uses.

/// One decoded TLV: its tag, its content, and the whole encoding (tag + length + content).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

/// Reads consecutive TLVs from a buffer; every access is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Next TLV, or `None` if the encoding is truncated or uses forms we do not accept.
    pub(crate) fn next(&mut self) -> Option<Tlv<'a>> {
        let buf = self.buf;
        let tag = *buf.first()?;
        // Multi-byte tags (low five bits all set) never occur in SPNEGO.
        if tag & 0x1f == 0x1f {
            return None;
        }
        let first = *buf.get(1)?;
        let (len, hdr) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            // 0x80 is the BER indefinite form; more than 4 length bytes is absurd here.
            if n == 0 || n > 4 {
                return None;
            }
            let bytes = buf.get(2..2 + n)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        };
        let end = hdr.checked_add(len)?;
        let value = buf.get(hdr..end)?;
        let raw = buf.get(..end)?;
        self.buf = buf.get(end..)?;
        Some(Tlv { tag, value, raw })
    }
}

/// Appends a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Encodes one TLV.
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    out.push(tag);
    push_len(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_ENUMERATED: u8 = 0x0a;
pub(crate) const TAG_GENERAL_STRING: u8 = 0x1b;
pub(crate) const TAG_APPLICATION_0: u8 = 0x60;

/// Context-specific constructed tag `[n]`.
pub(crate) const fn ctx(n: u8) -> u8 {
    0xa0 | n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_roundtrip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70000] {
            let v = vec![7u8; len];
            let enc = tlv(0x04, &v);
            let mut r = Reader::new(&enc);
            let t = r.next().unwrap();
            assert_eq!(t.tag, 0x04);
            assert_eq!(t.value.len(), len);
            assert_eq!(t.raw, &enc[..]);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn truncated_and_indefinite_rejected() {
        assert!(Reader::new(&[0x04, 0x05, 1, 2]).next().is_none());
        assert!(Reader::new(&[0x30, 0x80, 0, 0]).next().is_none());
        assert!(Reader::new(&[0x30, 0x85, 1, 1, 1, 1, 1]).next().is_none());
        assert!(Reader::new(&[0x30]).next().is_none());
        assert!(Reader::new(&[]).next().is_none());
    }
}
