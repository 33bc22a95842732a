//! The 64-byte SMB2 packet header (MS-SMB2 2.2.1.1 async, 2.2.1.2 sync).

use crate::cursor::{DecodeError, Reader, Writer};
use crate::status::NtStatus;

pub const HEADER_SIZE: usize = 64;
pub const PROTOCOL_ID: [u8; 4] = [0xFE, b'S', b'M', b'B'];
pub const TRANSFORM_PROTOCOL_ID: [u8; 4] = [0xFD, b'S', b'M', b'B'];
pub const SMB1_PROTOCOL_ID: [u8; 4] = [0xFF, b'S', b'M', b'B'];

pub mod flags {
    pub const SERVER_TO_REDIR: u32 = 0x0000_0001;
    pub const ASYNC_COMMAND: u32 = 0x0000_0002;
    pub const RELATED_OPERATIONS: u32 = 0x0000_0004;
    pub const SIGNED: u32 = 0x0000_0008;
    pub const PRIORITY_MASK: u32 = 0x0000_0070;
    pub const DFS_OPERATIONS: u32 = 0x1000_0000;
    pub const REPLAY_OPERATION: u32 = 0x2000_0000;
}

/// SMB2 command codes (MS-SMB2 2.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    Negotiate = 0,
    SessionSetup = 1,
    Logoff = 2,
    TreeConnect = 3,
    TreeDisconnect = 4,
    Create = 5,
    Close = 6,
    Flush = 7,
    Read = 8,
    Write = 9,
    Lock = 10,
    Ioctl = 11,
    Cancel = 12,
    Echo = 13,
    QueryDirectory = 14,
    ChangeNotify = 15,
    QueryInfo = 16,
    SetInfo = 17,
    OplockBreak = 18,
}

impl Command {
    pub fn from_u16(v: u16) -> Option<Command> {
        use Command::*;
        Some(match v {
            0 => Negotiate,
            1 => SessionSetup,
            2 => Logoff,
            3 => TreeConnect,
            4 => TreeDisconnect,
            5 => Create,
            6 => Close,
            7 => Flush,
            8 => Read,
            9 => Write,
            10 => Lock,
            11 => Ioctl,
            12 => Cancel,
            13 => Echo,
            14 => QueryDirectory,
            15 => ChangeNotify,
            16 => QueryInfo,
            17 => SetInfo,
            18 => OplockBreak,
            _ => return None,
        })
    }
}

/// SMB2 header. `tree_id` is meaningful for sync messages, `async_id` for async ones
/// (flag [`flags::ASYNC_COMMAND`]); the codec keeps both so a response can be re-encoded either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub credit_charge: u16,
    /// ChannelSequence/Reserved in requests; NTSTATUS in responses.
    pub status: NtStatus,
    pub command: u16,
    /// CreditRequest in requests, CreditResponse in responses.
    pub credits: u16,
    pub flags: u32,
    pub next_command: u32,
    pub message_id: u64,
    pub process_id: u32,
    pub tree_id: u32,
    pub async_id: u64,
    pub session_id: u64,
    pub signature: [u8; 16],
}

impl Header {
    pub fn decode(buf: &[u8]) -> Result<Header, DecodeError> {
        let mut r = Reader::new(buf);
        if r.bytes(4)? != PROTOCOL_ID {
            return Err(DecodeError::BadProtocolId);
        }
        let size = r.u16()?;
        if size != 64 {
            return Err(DecodeError::BadStructureSize(size));
        }
        let credit_charge = r.u16()?;
        let status = NtStatus(r.u32()?);
        let command = r.u16()?;
        let credits = r.u16()?;
        let flags = r.u32()?;
        let next_command = r.u32()?;
        let message_id = r.u64()?;
        let (process_id, tree_id, async_id);
        if flags & flags::ASYNC_COMMAND != 0 {
            async_id = r.u64()?;
            process_id = 0;
            tree_id = 0;
        } else {
            process_id = r.u32()?;
            tree_id = r.u32()?;
            async_id = 0;
        }
        let session_id = r.u64()?;
        let signature = r.array16()?;
        Ok(Header {
            credit_charge,
            status,
            command,
            credits,
            flags,
            next_command,
            message_id,
            process_id,
            tree_id,
            async_id,
            session_id,
            signature,
        })
    }

    pub fn is_async(&self) -> bool {
        self.flags & flags::ASYNC_COMMAND != 0
    }

    pub fn encode(&self, w: &mut Writer) {
        w.bytes(&PROTOCOL_ID)
            .u16(64)
            .u16(self.credit_charge)
            .u32(self.status.0)
            .u16(self.command)
            .u16(self.credits)
            .u32(self.flags)
            .u32(self.next_command)
            .u64(self.message_id);
        if self.is_async() {
            w.u64(self.async_id);
        } else {
            w.u32(self.process_id).u32(self.tree_id);
        }
        w.u64(self.session_id).bytes(&self.signature);
    }
}

/// Byte range of the Flags field in an encoded header.
const FLAGS_AT: std::ops::Range<usize> = 16..20;

/// Set SMB2_FLAGS_SIGNED in the encoded message `msg`, before it is signed (MS-SMB2
/// 3.1.4.1). A buffer too short to hold the Flags field is left alone.
pub fn mark_signed(msg: &mut [u8]) {
    if let Some(field) = msg.get_mut(FLAGS_AT) {
        let flags_now = u32::from_le_bytes([field[0], field[1], field[2], field[3]]);
        field.copy_from_slice(&(flags_now | flags::SIGNED).to_le_bytes());
    }
}

/// Set NextCommand of the encoded message `msg` (the offset of the next message of its
/// compound chain). A buffer too short to hold the field is left alone.
pub fn set_next_command(msg: &mut [u8], next: u32) {
    if let Some(field) = msg.get_mut(20..24) {
        field.copy_from_slice(&next.to_le_bytes());
    }
}

/// Command and NextCommand of the encoded message `msg`, read without decoding the rest of
/// its header (the worker's glance at a request before it is handled). `None` when `msg` is
/// shorter than a header or does not start with the SMB2 ProtocolId.
pub fn peek_command(msg: &[u8]) -> Option<(u16, u32)> {
    if msg.len() < HEADER_SIZE || msg.get(..4)? != PROTOCOL_ID {
        return None;
    }
    let command = u16::from_le_bytes([*msg.get(12)?, *msg.get(13)?]);
    let next = u32::from_le_bytes(msg.get(20..24)?.try_into().ok()?);
    Some((command, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_next_command_are_peeked() {
        let h = Header {
            command: Command::Write as u16,
            next_command: 0x1234_5678,
            ..Default::default()
        };
        let mut w = Writer::new();
        h.encode(&mut w);
        assert_eq!(
            peek_command(&w.buf),
            Some((Command::Write as u16, 0x1234_5678))
        );
        assert_eq!(peek_command(&w.buf[..63]), None);
        let mut sealed = w.buf.clone();
        sealed[..4].copy_from_slice(&TRANSFORM_PROTOCOL_ID);
        assert_eq!(peek_command(&sealed), None);
    }

    #[test]
    fn signed_flag_and_next_command_patch_an_encoded_header() {
        let h = Header {
            flags: flags::SERVER_TO_REDIR | flags::ASYNC_COMMAND,
            ..Default::default()
        };
        let mut w = Writer::new();
        h.encode(&mut w);
        let mut msg = w.buf;
        mark_signed(&mut msg);
        set_next_command(&mut msg, 0x88);
        let back = Header::decode(&msg).expect("decode");
        assert_eq!(
            back.flags,
            flags::SERVER_TO_REDIR | flags::ASYNC_COMMAND | flags::SIGNED
        );
        assert_eq!(back.next_command, 0x88);
        let mut short = vec![0u8; 18];
        mark_signed(&mut short);
        set_next_command(&mut short, 1);
        assert_eq!(short, [0u8; 18]);
    }
}
