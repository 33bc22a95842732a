//! Byte layouts: the 8-byte header in front of every RDMA SEND, and the fixed-size hello both
//! sides exchange over the TCP side channel to connect their queue pairs.
//!
//! Everything is little-endian and fixed-size so that decoding is a bounds check plus a few
//! loads; every value that comes from the peer is validated here, before it reaches the verbs
//! layer.

use lockmgr_transport::MAX_FRAME;

/// Bytes in front of every message in a receive slot.
pub const HDR_LEN: usize = 8;

/// Size of one receive/send slot: a full frame plus the header, rounded up to a cache line so
/// slots never share a line.
pub const SLOT_SIZE: usize = (HDR_LEN + MAX_FRAME + 63) & !63;

/// What a SEND carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A transport frame (may also return credits).
    Data,
    /// Only returns credits; never delivered to the user.
    Credit,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Data => 1,
            Kind::Credit => 2,
        }
    }
}

/// The per-message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Data or credit-only.
    pub kind: Kind,
    /// Receive slots the sender re-posted since it last said so: new send credits for us.
    pub grant: u16,
    /// Payload bytes after the header.
    pub len: u32,
}

/// Why a received message was rejected (the peer is then dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer bytes than a header.
    #[error("message shorter than the header")]
    Short,
    /// Unknown kind byte.
    #[error("unknown message kind {0}")]
    BadKind(u8),
    /// Reserved byte not zero (reserved for future versions).
    #[error("reserved header byte set")]
    Reserved,
    /// Payload length larger than a frame.
    #[error("payload length {0} exceeds MAX_FRAME")]
    TooLong(u32),
    /// Header length disagrees with the number of bytes the HCA delivered.
    #[error("header says {header} payload bytes but {actual} arrived")]
    LengthMismatch {
        /// Length in the header.
        header: u32,
        /// Payload bytes actually received.
        actual: usize,
    },
    /// A credit-only message with payload.
    #[error("credit update carries payload")]
    CreditWithPayload,
}

impl Header {
    /// Writes the header into the first [`HDR_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8; HDR_LEN]) {
        out[0] = self.kind.code();
        out[1] = 0;
        out[2..4].copy_from_slice(&self.grant.to_le_bytes());
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
    }

    /// Decodes and validates a whole received message (`msg` is exactly the bytes the HCA
    /// reported in the completion's `byte_len`).
    pub fn decode(msg: &[u8]) -> Result<Header, HeaderError> {
        let Some(h) = msg.get(..HDR_LEN) else {
            return Err(HeaderError::Short);
        };
        let kind = match h[0] {
            1 => Kind::Data,
            2 => Kind::Credit,
            k => return Err(HeaderError::BadKind(k)),
        };
        if h[1] != 0 {
            return Err(HeaderError::Reserved);
        }
        let grant = u16::from_le_bytes([h[2], h[3]]);
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len as usize > MAX_FRAME {
            return Err(HeaderError::TooLong(len));
        }
        let actual = msg.len() - HDR_LEN;
        if len as usize != actual {
            return Err(HeaderError::LengthMismatch {
                header: len,
                actual,
            });
        }
        if kind == Kind::Credit && len != 0 {
            return Err(HeaderError::CreditWithPayload);
        }
        Ok(Header { kind, grant, len })
    }
}

/// "LKMGRDM1" little-endian.
pub const HELLO_MAGIC: u64 = 0x314d_4452_474d_4b4c;
/// Version of this wire format.
pub const HELLO_VERSION: u16 = 1;
/// Bytes of an encoded [`Hello`].
pub const HELLO_LEN: usize = 48;

/// Largest receive ring either side may announce (credits are carried in a u16, and a bigger
/// ring only pins more memory).
pub const MAX_SLOTS: u16 = 4096;
/// Smallest ring: the credit scheme keeps one credit in reserve and returns credits in halves,
/// which needs a few slots to make progress.
pub const MIN_SLOTS: u16 = 4;

/// Queue-pair coordinates exchanged over TCP before the QPs move to RTR/RTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Queue pair number.
    pub qpn: u32,
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    /// Port LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Port's active MTU as the verbs enum value (1 = 256 .. 5 = 4096).
    pub mtu: u8,
    /// Port link layer (1 = InfiniBand, 2 = Ethernet).
    pub link_layer: u8,
    /// GID of the chosen GID index.
    pub gid: [u8; 16],
    /// Receive slots posted for the peer: its initial send credits.
    pub slots: u16,
    /// Bytes per receive slot (must hold a header plus MAX_FRAME).
    pub slot_size: u32,
}

/// Why a hello was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// Not our magic number: something else is talking to the port.
    #[error("bad magic (not a lockmgr RDMA peer)")]
    Magic,
    /// Incompatible version.
    #[error("unsupported version {0}")]
    Version(u16),
    /// A field is out of range.
    #[error("invalid hello field: {0}")]
    Field(&'static str),
}

impl Hello {
    /// Fixed-size encoding.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..8].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        b[8..10].copy_from_slice(&HELLO_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&self.slots.to_le_bytes());
        b[12..16].copy_from_slice(&self.qpn.to_le_bytes());
        b[16..20].copy_from_slice(&self.psn.to_le_bytes());
        b[20..22].copy_from_slice(&self.lid.to_le_bytes());
        b[22] = self.mtu;
        b[23] = self.link_layer;
        b[24..40].copy_from_slice(&self.gid);
        b[40..44].copy_from_slice(&self.slot_size.to_le_bytes());
        b
    }

    /// Decodes and validates a peer's hello.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, HelloError> {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        if u64::from_le_bytes(magic) != HELLO_MAGIC {
            return Err(HelloError::Magic);
        }
        let version = u16_at(8);
        if version != HELLO_VERSION {
            return Err(HelloError::Version(version));
        }
        let slots = u16_at(10);
        if !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) {
            return Err(HelloError::Field("slots"));
        }
        let qpn = u32_at(12);
        if qpn == 0 || qpn > 0x00ff_ffff {
            return Err(HelloError::Field("qpn"));
        }
        let psn = u32_at(16);
        if psn > 0x00ff_ffff {
            return Err(HelloError::Field("psn"));
        }
        let mtu = b[22];
        if !(1..=5).contains(&mtu) {
            return Err(HelloError::Field("mtu"));
        }
        let slot_size = u32_at(40);
        if (slot_size as usize) < HDR_LEN + MAX_FRAME {
            return Err(HelloError::Field("slot_size"));
        }
        if b[44..48].iter().any(|&x| x != 0) {
            return Err(HelloError::Field("reserved"));
        }
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[24..40]);
        Ok(Hello {
            qpn,
            psn,
            lid: u16_at(20),
            mtu,
            link_layer: b[23],
            gid,
            slots,
            slot_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut hdr = [0u8; HDR_LEN];
        h.encode(&mut hdr);
        let mut v = hdr.to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            kind: Kind::Data,
            grant: 513,
            len: 3,
        };
        assert_eq!(Header::decode(&msg(&h, b"abc")), Ok(h));
        let c = Header {
            kind: Kind::Credit,
            grant: 7,
            len: 0,
        };
        assert_eq!(Header::decode(&msg(&c, b"")), Ok(c));
    }

    #[test]
    fn header_rejects_garbage() {
        assert_eq!(Header::decode(&[1, 0, 0]), Err(HeaderError::Short));
        assert_eq!(
            Header::decode(&[9, 0, 0, 0, 0, 0, 0, 0]),
            Err(HeaderError::BadKind(9))
        );
        assert_eq!(
            Header::decode(&[1, 1, 0, 0, 0, 0, 0, 0]),
            Err(HeaderError::Reserved)
        );
        let long = Header {
            kind: Kind::Data,
            grant: 0,
            len: MAX_FRAME as u32 + 1,
        };
        assert_eq!(
            Header::decode(&msg(&long, &[])),
            Err(HeaderError::TooLong(MAX_FRAME as u32 + 1))
        );
        let lying = Header {
            kind: Kind::Data,
            grant: 0,
            len: 10,
        };
        assert_eq!(
            Header::decode(&msg(&lying, b"abc")),
            Err(HeaderError::LengthMismatch {
                header: 10,
                actual: 3
            })
        );
        let credit = Header {
            kind: Kind::Credit,
            grant: 1,
            len: 1,
        };
        assert_eq!(
            Header::decode(&msg(&credit, b"x")),
            Err(HeaderError::CreditWithPayload)
        );
    }

    #[test]
    fn full_frame_fits_a_slot() {
        const { assert!(SLOT_SIZE >= HDR_LEN + MAX_FRAME) };
        assert_eq!(SLOT_SIZE % 64, 0);
    }

    fn sample_hello() -> Hello {
        Hello {
            qpn: 0x11,
            psn: 0x00ab_cdef,
            lid: 0,
            mtu: 3,
            link_layer: 2,
            gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1],
            slots: 32,
            slot_size: SLOT_SIZE as u32,
        }
    }

    #[test]
    fn hello_round_trip() {
        let h = sample_hello();
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn hello_rejects_bad_fields() {
        let mut b = sample_hello().encode();
        b[0] ^= 1;
        assert_eq!(Hello::decode(&b), Err(HelloError::Magic));
        let mut b = sample_hello().encode();
        b[8] = 2;
        assert_eq!(Hello::decode(&b), Err(HelloError::Version(2)));
        let cases: [(Hello, &str); 6] = [
            (
                Hello {
                    slots: 3,
                    ..sample_hello()
                },
                "slots",
            ),
            (
                Hello {
                    slots: MAX_SLOTS + 1,
                    ..sample_hello()
                },
                "slots",
            ),
            (
                Hello {
                    qpn: 0,
                    ..sample_hello()
                },
                "qpn",
            ),
            (
                Hello {
                    psn: 1 << 24,
                    ..sample_hello()
                },
                "psn",
            ),
            (
                Hello {
                    mtu: 6,
                    ..sample_hello()
                },
                "mtu",
            ),
            (
                Hello {
                    slot_size: 100,
                    ..sample_hello()
                },
                "slot_size",
            ),
        ];
        for (h, field) in cases {
            assert_eq!(Hello::decode(&h.encode()), Err(HelloError::Field(field)));
        }
        let mut b = sample_hello().encode();
        b[47] = 1;
        assert_eq!(Hello::decode(&b), Err(HelloError::Field("reserved")));
    }

    proptest! {
        #[test]
        fn header_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Header::decode(&bytes);
        }

        #[test]
        fn hello_decode_never_panics(bytes in proptest::array::uniform32(any::<u8>()),
                                     tail in proptest::array::uniform16(any::<u8>())) {
            let mut b = [0u8; HELLO_LEN];
            b[..32].copy_from_slice(&bytes);
            b[32..].copy_from_slice(&tail);
            let _ = Hello::decode(&b);
        }

        #[test]
        fn header_round_trips(grant in any::<u16>(), len in 0usize..=MAX_FRAME) {
            let h = Header { kind: Kind::Data, grant, len: len as u32 };
            let m = msg(&h, &vec![0u8; len]);
            prop_assert_eq!(Header::decode(&m), Ok(h));
        }
    }
}
