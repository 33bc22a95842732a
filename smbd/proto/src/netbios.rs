//! NetBIOS session service framing of the SMB byte stream (RFC 1002 4.3.1, MS-SMB2 2.1):
//! every packet starts with a 4-byte header, a type byte and a 24-bit big-endian length.
//! Direct TCP (port 445) only uses session messages; port 139 adds the session request
//! and keepalives, which the server answers or skips.

/// Bytes of the header before each packet's payload.
pub const HEADER_LEN: usize = 4;

/// The largest payload the 24-bit length field can describe.
pub const MAX_PAYLOAD: usize = 0x00FF_FFFF;

/// Packet types (RFC 1002 4.3.1).
pub mod kind {
    pub const SESSION_MESSAGE: u8 = 0x00;
    pub const SESSION_REQUEST: u8 = 0x81;
    pub const POSITIVE_RESPONSE: u8 = 0x82;
    pub const KEEPALIVE: u8 = 0x85;
}

/// A packet header read from the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// One of [`kind`]; anything else is a protocol error for an SMB server.
    pub kind: u8,
    /// Payload bytes following the header.
    pub len: usize,
}

impl PacketHeader {
    /// The header at the start of `buf`, or `None` while fewer than 4 bytes have arrived.
    pub fn peek(buf: &[u8]) -> Option<PacketHeader> {
        match *buf {
            [kind, a, b, c, ..] => Some(PacketHeader {
                kind,
                len: ((a as usize) << 16) | ((b as usize) << 8) | c as usize,
            }),
            _ => None,
        }
    }

    /// Header plus payload bytes.
    pub fn packet_len(&self) -> usize {
        HEADER_LEN + self.len
    }
}

/// Write the session-message header into the first 4 bytes of `packet`, a buffer that
/// reserved them in front of its payload. The length is cut to 24 bits (callers keep
/// responses below [`MAX_PAYLOAD`]). Does nothing to a buffer shorter than a header.
pub fn write_session_header(packet: &mut [u8]) {
    write_header(packet, kind::SESSION_MESSAGE);
}

/// Write a header of type `kind` into the first 4 bytes of `packet` (as
/// [`write_session_header`], for the other frame kinds sharing the stream, e.g.
/// [`crate::payload_frame`]).
pub fn write_header(packet: &mut [u8], kind: u8) {
    if packet.len() < HEADER_LEN {
        return;
    }
    let len = (packet.len() - HEADER_LEN) as u32 & MAX_PAYLOAD as u32;
    packet[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    packet[0] = kind;
}

/// `msg` as one session message: a new buffer with the header in front.
pub fn session_message(msg: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + msg.len());
    f.extend_from_slice(&[0; HEADER_LEN]);
    f.extend_from_slice(msg);
    write_session_header(&mut f);
    f
}

/// The answer to a session request: a positive session response without payload.
pub fn positive_response() -> Vec<u8> {
    vec![kind::POSITIVE_RESPONSE, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_type_and_big_endian_24_bit_length() {
        assert_eq!(PacketHeader::peek(&[0, 1, 2]), None);
        let h = PacketHeader::peek(&[0x85, 0x01, 0x02, 0x03, 9]).expect("header");
        assert_eq!(h.kind, kind::KEEPALIVE);
        assert_eq!(h.len, 0x01_0203);
        assert_eq!(h.packet_len(), 0x01_0207);
    }

    #[test]
    fn session_messages_round_trip() {
        let msg: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let f = session_message(&msg);
        assert_eq!(&f[..4], &[0, 0, 0x01, 0x2c]);
        let h = PacketHeader::peek(&f).expect("header");
        assert_eq!(h.kind, kind::SESSION_MESSAGE);
        assert_eq!(&f[HEADER_LEN..h.packet_len()], &msg[..]);
    }

    #[test]
    fn reserved_header_is_filled_in_place() {
        let mut f = vec![0xAA; 4 + 5];
        write_session_header(&mut f);
        assert_eq!(&f[..4], &[0, 0, 0, 5]);
        let mut short = vec![0xAA; 3];
        write_session_header(&mut short);
        assert_eq!(short, [0xAA; 3]);
        assert_eq!(positive_response(), [0x82, 0, 0, 0]);
    }
}
