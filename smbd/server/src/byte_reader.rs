//! A cursor over a byte slice for smbd's own small encodings (durable-open blobs kept in
//! lockmgrd, signed datagrams between nodes). Every read past the end is `None`, so a short
//! or hostile input is a decode failure, never a panic. Integers are little-endian.

pub(crate) struct ByteReader<'a>(&'a [u8]);

impl<'a> ByteReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// Every byte was read (decoders refuse trailing bytes).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn u128(&mut self) -> Option<u128> {
        self.array().map(u128::from_le_bytes)
    }

    /// A UTF-8 string after its length as one byte.
    pub(crate) fn str_u8_len(&mut self) -> Option<String> {
        let n = usize::from(self.u8()?);
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }

    /// A UTF-8 string after its length as a little-endian u16.
    pub(crate) fn str_u16_len(&mut self) -> Option<String> {
        let n = usize::from(u16::from_le_bytes(self.array()?));
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::ByteReader;

    #[test]
    fn reads_past_the_end_are_none_and_consume_nothing() {
        let mut r = ByteReader::new(&[1, 2, 0, 0, 0, 2, b'h', b'i', 9]);
        assert_eq!(r.u8(), Some(1));
        assert_eq!(r.u32(), Some(2));
        assert_eq!(r.str_u8_len().as_deref(), Some("hi"));
        assert_eq!(r.u64(), None);
        assert_eq!(r.u8(), Some(9));
        assert_eq!(r.u8(), None);
        let mut s = ByteReader::new(&[3, 0, b'a', b'b']);
        assert_eq!(s.str_u16_len(), None);
    }
}
