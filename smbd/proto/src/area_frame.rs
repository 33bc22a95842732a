//! Area frames: how smbdirectd and smbd name READ/WRITE payloads that live in the memory area
//! they share instead of travelling on their stream ([`crate::payload_frame`] carries the
//! bytes themselves).
//!
//! smbdirectd creates one memfd area, registers it once per RDMA protection domain, and passes
//! its descriptor to smbd (SCM_RIGHTS) with the [`Op::Hello`] frame that opens each
//! connection's stream. From then on a payload is a *descriptor*: an offset and a length in
//! that area, for one MessageId.
//!
//! * [`Op::Write`] (smbdirectd to smbd): the data of an RDMA-channel WRITE, RDMA-READ from the
//!   client into the area; sent right before its request.
//! * [`Op::Grant`] (smbdirectd to smbd): room for the data of an RDMA-channel READ; sent right
//!   before its request.
//! * [`Op::Read`] (smbd to smbdirectd): the READ's data is in (a prefix of) its grant; sent
//!   right before the response; the grant goes back to smbdirectd with it.
//! * [`Op::Release`] (smbd to smbdirectd): smbd is done with the range at `offset` (a WRITE's
//!   data was written, a grant went unused); sent before the response.
//!
//! smbd checks every descriptor (in the area, not overlapping one any connection holds, given
//! back only by the connection holding it): see `smbd::rdma_area`.
//!
//! Wire format, inside the 4-byte NetBIOS-style header of kind [`KIND`] (the body is always
//! [`BODY_LEN`] bytes): `[op u8][3 zero bytes][MessageId u64 LE][offset u64 LE][length u32 LE]`.

use crate::netbios;

/// Frame kind of an area frame on the smbd stream (payload frames are 0xD1, session messages
/// 0x00).
pub const KIND: u8 = 0xD2;

/// Bytes after the 4-byte frame header.
pub const BODY_LEN: usize = 24;

/// Bytes of a whole frame.
pub const FRAME_LEN: usize = netbios::HEADER_LEN + BODY_LEN;

/// What an area frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Opens a connection's stream, with the area's descriptor attached (SCM_RIGHTS) or, when
    /// smbdirectd has no area, without: then payloads travel in payload frames. MessageId,
    /// offset and length are 0.
    Hello,
    Write,
    Grant,
    Read,
    Release,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Hello => 1,
            Op::Write => 2,
            Op::Grant => 3,
            Op::Read => 4,
            Op::Release => 5,
        }
    }

    fn from_code(c: u8) -> Option<Op> {
        Some(match c {
            1 => Op::Hello,
            2 => Op::Write,
            3 => Op::Grant,
            4 => Op::Read,
            5 => Op::Release,
            _ => return None,
        })
    }
}

/// One area frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaFrame {
    pub op: Op,
    pub message_id: u64,
    /// Byte offset in the area.
    pub offset: u64,
    pub length: u32,
}

/// Why an area frame's body does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AreaFrameError {
    #[error("area frame body of {0} bytes (always {BODY_LEN})")]
    Length(usize),
    #[error("unknown area frame op {0}")]
    Op(u8),
    #[error("area frame reserved bytes are not zero")]
    Reserved,
}

impl AreaFrame {
    /// The hello that opens a connection's stream.
    pub fn hello() -> AreaFrame {
        AreaFrame {
            op: Op::Hello,
            message_id: 0,
            offset: 0,
            length: 0,
        }
    }

    /// The whole frame (header and body).
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        f[0] = KIND;
        f[3] = BODY_LEN as u8;
        let b = &mut f[netbios::HEADER_LEN..];
        b[0] = self.op.code();
        b[4..12].copy_from_slice(&self.message_id.to_le_bytes());
        b[12..20].copy_from_slice(&self.offset.to_le_bytes());
        b[20..24].copy_from_slice(&self.length.to_le_bytes());
        f
    }

    /// A frame's body (what follows its 4-byte header).
    pub fn decode_body(body: &[u8]) -> Result<AreaFrame, AreaFrameError> {
        let b: &[u8; BODY_LEN] = body
            .try_into()
            .map_err(|_| AreaFrameError::Length(body.len()))?;
        let op = Op::from_code(b[0]).ok_or(AreaFrameError::Op(b[0]))?;
        if b[1..4] != [0, 0, 0] {
            return Err(AreaFrameError::Reserved);
        }
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[20..24]);
        Ok(AreaFrame {
            op,
            message_id: u64_at(4),
            offset: u64_at(12),
            length: u32::from_le_bytes(len),
        })
    }

    /// The end of the described range, if it does not overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(u64::from(self.length))
    }
}

/// The decode fuzz target's property for area frames (also replayed over the checked-in
/// corpus): a body that decodes encodes back to itself. `Ok(true)` when `body` decoded.
pub fn check_round_trip(body: &[u8]) -> Result<bool, &'static str> {
    let Ok(f) = AreaFrame::decode_body(body) else {
        return Ok(false);
    };
    if f.encode()[netbios::HEADER_LEN..] != *body {
        return Err("encode(decode_body(body)) is not the body");
    }
    match netbios::PacketHeader::peek(&f.encode()) {
        Some(h) if h.kind == KIND && h.packet_len() == FRAME_LEN => Ok(true),
        _ => Err("an encoded area frame's header does not describe it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let f = AreaFrame {
            op: Op::Write,
            message_id: 0x0102,
            offset: 0x1000,
            length: 7,
        };
        let e = f.encode();
        assert_eq!(&e[..4], &[0xD2, 0, 0, 24]);
        assert_eq!(e[4], 2);
        assert_eq!(&e[8..10], &[2, 1]);
        assert_eq!(&e[16..18], &[0, 0x10]);
        assert_eq!(e[24], 7);
        assert_eq!(AreaFrame::decode_body(&e[4..]), Ok(f));
        assert_eq!(f.end(), Some(0x1007));
        assert_eq!(
            AreaFrame {
                offset: u64::MAX,
                ..f
            }
            .end(),
            None
        );
    }

    #[test]
    fn bad_bodies_are_refused() {
        let good = AreaFrame::hello().encode();
        assert_eq!(
            AreaFrame::decode_body(&good[4..27]),
            Err(AreaFrameError::Length(23))
        );
        let mut b = good[4..].to_vec();
        b.push(0);
        assert_eq!(AreaFrame::decode_body(&b), Err(AreaFrameError::Length(25)));
        let mut b = good[4..].to_vec();
        b[0] = 9;
        assert_eq!(AreaFrame::decode_body(&b), Err(AreaFrameError::Op(9)));
        let mut b = good[4..].to_vec();
        b[2] = 1;
        assert_eq!(AreaFrame::decode_body(&b), Err(AreaFrameError::Reserved));
    }

    #[test]
    fn bodies_round_trip() {
        for op in [Op::Hello, Op::Write, Op::Grant, Op::Read, Op::Release] {
            let f = AreaFrame {
                op,
                message_id: 9,
                offset: 1 << 40,
                length: u32::MAX,
            };
            assert_eq!(check_round_trip(&f.encode()[4..]), Ok(true));
        }
        assert_eq!(check_round_trip(&[0; 24]), Ok(false));
    }
}
