//! The payload frames smbdirectd and smbd exchange beside the SMB2 messages of an SMB Direct
//! connection (the data of READ/WRITE requests that use RDMA channels; why they exist:
//! `smbdirect::rw`).
//!
//! They share the stream with NetBIOS session messages ([`crate::netbios`]) and use the same
//! 4-byte header with a private kind, [`KIND`]:
//! `[0xD1][24-bit big-endian length][MessageId u64 LE][data]`, the length counting the
//! MessageId and the data. Neither side speaks to anyone else with them: smbd accepts them only
//! on its `rdma_proxy_socket` connections.

use crate::netbios;

/// Frame kind of a payload frame on the smbd stream (a session message is 0x00).
pub const KIND: u8 = 0xD1;

/// Bytes before a payload frame's data: the 4-byte frame header and the MessageId.
pub const HEADER_LEN: usize = netbios::HEADER_LEN + 8;

/// The most data one payload frame carries (the 24-bit length also counts the MessageId).
pub const MAX_DATA: usize = netbios::MAX_PAYLOAD - 8;

/// Why a payload frame cannot be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadFrameError {
    /// The body (what follows the 4-byte frame header) has no room for the MessageId, or the
    /// buffer given to [`write_header`] none for the header.
    #[error("payload frame of {len} bytes is shorter than its header ({need} bytes)")]
    Truncated { len: usize, need: usize },
    /// More data than the 24-bit length can describe.
    #[error("payload of {len} bytes (at most {MAX_DATA})")]
    TooLong { len: usize },
}

/// A payload frame of `message_id` carrying `data`: a new buffer.
pub fn encode(message_id: u64, data: &[u8]) -> Result<Vec<u8>, PayloadFrameError> {
    let mut f = Vec::with_capacity(HEADER_LEN + data.len());
    f.resize(HEADER_LEN, 0);
    f.extend_from_slice(data);
    write_header(&mut f, message_id)?;
    Ok(f)
}

/// Writes the header of a payload frame of `message_id` into the first [`HEADER_LEN`] bytes
/// of `frame`, a buffer that reserved them in front of its data (so the data can be read
/// straight into its final place): the data is `frame[HEADER_LEN..]`.
pub fn write_header(frame: &mut [u8], message_id: u64) -> Result<(), PayloadFrameError> {
    let data_len = frame
        .len()
        .checked_sub(HEADER_LEN)
        .ok_or(PayloadFrameError::Truncated {
            len: frame.len(),
            need: HEADER_LEN,
        })?;
    if data_len > MAX_DATA {
        return Err(PayloadFrameError::TooLong { len: data_len });
    }
    netbios::write_header(frame, KIND);
    frame[netbios::HEADER_LEN..HEADER_LEN].copy_from_slice(&message_id.to_le_bytes());
    Ok(())
}

/// The MessageId and data of a payload frame's body: what follows its 4-byte frame header
/// (whose kind and length the stream reader has already used, [`netbios::PacketHeader`]).
pub fn decode_body(body: &[u8]) -> Result<(u64, &[u8]), PayloadFrameError> {
    match body.split_first_chunk::<8>() {
        Some((id, data)) => Ok((u64::from_le_bytes(*id), data)),
        None => Err(PayloadFrameError::Truncated {
            len: body.len(),
            need: 8,
        }),
    }
}

/// Decode `body` as a payload frame's body and encode what it holds again (the `decode` fuzz
/// target's property, also replayed over its checked-in corpus): `Ok(true)` when `body`
/// decoded, `Err` names the property that failed.
pub fn check_round_trip(body: &[u8]) -> Result<bool, &'static str> {
    let Ok((id, data)) = decode_body(body) else {
        return Ok(false);
    };
    match encode(id, data) {
        Ok(f) if f.get(netbios::HEADER_LEN..) == Some(body) => Ok(true),
        Ok(_) => Err("encode(decode_body(body)) is not the body"),
        Err(PayloadFrameError::TooLong { .. }) if data.len() > MAX_DATA => Ok(true),
        Err(_) => Err("a decoded payload frame does not encode"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_kind_length_message_id_data() {
        let f = encode(0x0102_0304_0506_0708, b"abc").unwrap();
        assert_eq!(
            f,
            [0xD1, 0, 0, 11, 8, 7, 6, 5, 4, 3, 2, 1, b'a', b'b', b'c']
        );
        let h = netbios::PacketHeader::peek(&f).unwrap();
        assert_eq!((h.kind, h.packet_len()), (KIND, f.len()));
        assert_eq!(
            decode_body(&f[netbios::HEADER_LEN..]).unwrap(),
            (0x0102_0304_0506_0708, &b"abc"[..])
        );
        assert_eq!(
            decode_body(&f[4..12]).unwrap(),
            (0x0102_0304_0506_0708, &[][..])
        );
    }

    #[test]
    fn header_written_in_place_matches_the_encoder() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut f = vec![0xAA; HEADER_LEN];
        f.extend_from_slice(&data);
        write_header(&mut f, 42).unwrap();
        assert_eq!(f, encode(42, &data).unwrap());
    }

    #[test]
    fn bodies_round_trip() {
        assert_eq!(check_round_trip(&[1; 7]), Ok(false));
        assert_eq!(check_round_trip(&[1; 8]), Ok(true));
        assert_eq!(check_round_trip(&[1; 300]), Ok(true));
    }

    #[test]
    fn short_bodies_and_long_payloads_are_refused() {
        assert_eq!(
            decode_body(&[0; 7]),
            Err(PayloadFrameError::Truncated { len: 7, need: 8 })
        );
        assert_eq!(
            write_header(&mut [0; 11], 1),
            Err(PayloadFrameError::Truncated { len: 11, need: 12 })
        );
        let mut at_max = vec![0; HEADER_LEN + MAX_DATA];
        write_header(&mut at_max, 1).unwrap();
        assert_eq!(&at_max[..4], &[0xD1, 0xFF, 0xFF, 0xFF]);
        assert_eq!(
            encode(1, &vec![0; MAX_DATA + 1]),
            Err(PayloadFrameError::TooLong { len: MAX_DATA + 1 })
        );
    }
}
