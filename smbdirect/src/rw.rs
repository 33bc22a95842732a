//! SMB2 READ/WRITE through RDMA channels (MS-SMB2 2.2.19, 2.2.21, 3.3.5.12, 3.3.5.13;
//! MS-SMBD 3.1.4.x), the protocol logic of the proxy, without I/O.
//!
//! Who rewrites what: nothing. smbd signs what it answers and verifies signatures over what the
//! client sent, so the proxy forwards every SMB2 message byte for byte and the RDMA payload
//! travels beside the messages, on the same smbd stream, in private *payload frames*
//! ([`PAYLOAD_FRAME_KIND`]): `[kind][24-bit big-endian length][MessageId u64 LE][data]`,
//! coded by `smb_proto::payload_frame`, which smbd uses too.
//!
//! * WRITE with an RDMA channel (Length 0, RemainingBytes = the byte count, the client's
//!   buffers in WriteChannelInfo): the proxy RDMA-READs the descriptors and sends smbd the
//!   payload frame of that MessageId right before the (unchanged) request; smbd writes the
//!   payload instead of the request's (empty) data.
//! * READ with an RDMA channel: the proxy remembers the request's descriptors; smbd answers
//!   with a payload frame of the data followed by its READ response with DataLength 0 and
//!   DataRemaining = the byte count (2.2.20: the length sent on the channel); the proxy
//!   RDMA-WRITEs the payload into the client's buffers and then sends the response on the same
//!   queue pair (RC ordering: the client sees the response only after the data was placed).
//! * SMB2_CHANNEL_RDMA_V1_INVALIDATE: the response of that MessageId goes out as
//!   SEND_WITH_INVALIDATE of the first descriptor's token.
//!
//! The proxy reads channel info from the plain request, so signed sessions work unchanged; an
//! encrypted request is opaque to it and smbd refuses RDMA channels in encrypted requests
//! (the Linux client never combines them; Windows does, and needs smbd itself to name the
//! transfers, see smbd/STATUS.md).
//!
//! Everything a client states is bounded before memory is touched: descriptors per request,
//! the total length (the negotiated MaxReadWriteSize), READs remembered at once.

use std::collections::HashMap;

use thiserror::Error;

use crate::codec::{BufferDescriptorV1, Channel, DecodeError, RdmaChannel};

/// The payload frames' codec, under the names the proxy knows them by.
pub use smb_proto::payload_frame::{
    decode_body as decode_payload_body, encode as encode_payload_frame, PayloadFrameError,
    HEADER_LEN as PAYLOAD_FRAME_HEADER, KIND as PAYLOAD_FRAME_KIND,
};

const SMB2_HEADER: usize = 64;
const SMB2_MAGIC: &[u8; 4] = b"\xfeSMB";
const CMD_READ: u16 = 0x0008;
const CMD_WRITE: u16 = 0x0009;
const FLAG_ASYNC: u32 = 0x0000_0002;
const STATUS_PENDING: u32 = 0x0000_0103;

/// Why the proxy refuses a client's RDMA channel request (the connection ends: the message is
/// signed, so the proxy cannot answer it with an error of its own).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RwError {
    #[error("SMB2 message truncated")]
    Truncated,
    #[error("channel info outside the SMB2 message")]
    ChannelInfoOutOfBounds,
    #[error(transparent)]
    Descriptors(#[from] DecodeError),
    #[error("{count} buffer descriptors (at most {max})")]
    TooManyDescriptors { count: usize, max: u16 },
    #[error("RDMA transfer of {len} bytes (at most {max})")]
    TooLong { len: u64, max: u32 },
    #[error("the descriptors hold {have} bytes, the request moves {need}")]
    DescriptorsTooShort { have: u64, need: u64 },
    #[error("more than {max} RDMA-channel READs outstanding")]
    TooManyReads { max: usize },
    #[error("MessageId {0} already has an RDMA transfer outstanding")]
    DuplicateMessageId(u64),
    #[error("payload for MessageId {0}, which has no RDMA-channel READ outstanding")]
    UnexpectedPayload(u64),
}

/// Bounds on what clients may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_descriptors: u16,
    /// Largest transfer of one request (the negotiated MaxReadWriteSize): the proxy's
    /// registered buffer is this large.
    pub max_total: u32,
    /// RDMA-channel READs whose response has not gone out yet.
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_descriptors: 16,
            max_total: 1 << 20,
            max_pending: 255,
        }
    }
}

/// A WRITE's data to RDMA-READ from the client before its request goes to smbd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePull {
    pub message_id: u64,
    pub descriptors: Vec<BufferDescriptorV1>,
    pub length: u32,
}

/// An RDMA-channel READ of a request: (MessageId, Length).
pub type ReadGrant = (u64, u32);

/// One RDMA READ or WRITE work request: `len` bytes between `local_offset` of the proxy's
/// registered buffer and the client's `remote_addr` under `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub local_offset: u32,
    pub remote_addr: u64,
    pub token: u32,
    pub len: u32,
}

/// Splits a transfer of `len` bytes over the descriptors in order (the buffer is their
/// concatenation, MS-SMB2 2.2.19): one segment per descriptor used, empty ones skipped.
pub fn plan(descriptors: &[BufferDescriptorV1], len: u32) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut left = len;
    let mut local = 0u32;
    for d in descriptors {
        if left == 0 {
            break;
        }
        let n = d.length.min(left);
        if n == 0 {
            continue;
        }
        out.push(Segment {
            local_offset: local,
            remote_addr: d.offset,
            token: d.token,
            len: n,
        });
        local += n;
        left -= n;
    }
    out
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, RwError> {
    let s = b.get(at..at + 2).ok_or(RwError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, RwError> {
    let s = b.get(at..at + 4).ok_or(RwError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, RwError> {
    let lo = u32_at(b, at)?;
    let hi = u32_at(b, at + 4)?;
    Ok(u64::from(hi) << 32 | u64::from(lo))
}

/// The parts of a compound SMB2 message (each from its header to the next one); empty if
/// the message is not plain SMB2 (an encrypted TRANSFORM, SMB1).
fn parts(msg: &[u8]) -> Result<Vec<&[u8]>, RwError> {
    let mut out = Vec::new();
    let mut rest = msg;
    loop {
        if rest.len() < SMB2_HEADER || &rest[..4] != SMB2_MAGIC {
            if out.is_empty() {
                return Ok(out);
            }
            return Err(RwError::Truncated);
        }
        let next = u32_at(rest, 20)? as usize;
        if next == 0 {
            out.push(rest);
            return Ok(out);
        }
        if next < SMB2_HEADER || next > rest.len() {
            return Err(RwError::Truncated);
        }
        out.push(&rest[..next]);
        rest = &rest[next..];
    }
}

/// A READ or WRITE part of a request with an RDMA channel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChannelRequest {
    message_id: u64,
    write: bool,
    length: u32,
    channel: RdmaChannel,
}

fn channel_request(part: &[u8], limits: &Limits) -> Result<Option<ChannelRequest>, RwError> {
    let cmd = u16_at(part, 12)?;
    let write = match cmd {
        CMD_READ => false,
        CMD_WRITE => true,
        _ => return Ok(None),
    };
    let flags = u32_at(part, 16)?;
    if flags & 1 != 0 {
        return Ok(None); // a response
    }
    let message_id = u64_at(part, 24)?;
    let body = SMB2_HEADER;
    // READ: Length @4, Channel @36, ReadChannelInfoOffset/Length @44/@46.
    // WRITE: Length @4 (0 on RDMA), Channel @32, RemainingBytes @36, info @40/@42.
    let (channel, info_at, length) = if write {
        (
            u32_at(part, body + 32)?,
            body + 40,
            u32_at(part, body + 36)?,
        )
    } else {
        (u32_at(part, body + 36)?, body + 44, u32_at(part, body + 4)?)
    };
    if !matches!(
        Channel::from_u32(channel),
        Some(Channel::RdmaV1 | Channel::RdmaV1Invalidate)
    ) {
        return Ok(None);
    }
    let off = usize::from(u16_at(part, info_at)?);
    let len = usize::from(u16_at(part, info_at + 2)?);
    let info = part
        .get(
            off..off
                .checked_add(len)
                .ok_or(RwError::ChannelInfoOutOfBounds)?,
        )
        .filter(|_| off >= SMB2_HEADER)
        .ok_or(RwError::ChannelInfoOutOfBounds)?;
    let count = len / crate::codec::BUFFER_DESCRIPTOR_V1_LEN;
    if count > usize::from(limits.max_descriptors) {
        return Err(RwError::TooManyDescriptors {
            count,
            max: limits.max_descriptors,
        });
    }
    let ch = RdmaChannel::parse(channel, info)?;
    if length > limits.max_total {
        return Err(RwError::TooLong {
            len: length.into(),
            max: limits.max_total,
        });
    }
    let have = BufferDescriptorV1::total_length(&ch.descriptors);
    if have < u64::from(length) {
        return Err(RwError::DescriptorsTooShort {
            have,
            need: length.into(),
        });
    }
    Ok(Some(ChannelRequest {
        message_id,
        write,
        length,
        channel: ch,
    }))
}

/// The proxy's RDMA-channel bookkeeping for one connection.
#[derive(Debug, Default)]
pub struct Transfers {
    limits: Limits,
    /// READs waiting for smbd's payload, by MessageId.
    reads: HashMap<u64, Vec<BufferDescriptorV1>>,
    /// Tokens to invalidate with the response of a MessageId (V1_INVALIDATE).
    invalidate: HashMap<u64, u32>,
    /// Bytes moved, for the daemon's counters.
    pub rdma_read_bytes: u64,
    pub rdma_write_bytes: u64,
}

impl Transfers {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// READs whose response has not gone out.
    pub fn pending_reads(&self) -> usize {
        self.reads.len()
    }

    /// A message from the client: remembers its RDMA-channel READs and returns the WRITE
    /// payloads to pull before the message goes to smbd (in message order).
    pub fn on_request(&mut self, msg: &[u8]) -> Result<Vec<WritePull>, RwError> {
        Ok(self.on_request_with_reads(msg)?.0)
    }

    /// [`Self::on_request`], also returning the RDMA-channel READs the message holds
    /// (MessageId and Length, in message order): the proxy grants each a slot of the shared
    /// area before the message goes to smbd.
    pub fn on_request_with_reads(
        &mut self,
        msg: &[u8],
    ) -> Result<(Vec<WritePull>, Vec<ReadGrant>), RwError> {
        let mut found = Vec::new();
        for p in parts(msg)? {
            if let Some(r) = channel_request(p, &self.limits)? {
                found.push(r);
            }
        }
        let mut pulls = Vec::new();
        let mut reads = Vec::new();
        for r in found {
            if self.reads.contains_key(&r.message_id) || self.invalidate.contains_key(&r.message_id)
            {
                return Err(RwError::DuplicateMessageId(r.message_id));
            }
            if self.reads.len() + self.invalidate.len() >= self.limits.max_pending {
                return Err(RwError::TooManyReads {
                    max: self.limits.max_pending,
                });
            }
            if let Some(t) = r.channel.token_to_invalidate() {
                self.invalidate.insert(r.message_id, t);
            }
            if r.write {
                pulls.push(WritePull {
                    message_id: r.message_id,
                    descriptors: r.channel.descriptors,
                    length: r.length,
                });
            } else {
                reads.push((r.message_id, r.length));
                self.reads.insert(r.message_id, r.channel.descriptors);
            }
        }
        Ok((pulls, reads))
    }

    /// smbd's payload for a READ: where to RDMA-WRITE it.
    pub fn on_payload(&mut self, message_id: u64, len: usize) -> Result<Vec<Segment>, RwError> {
        let d = self
            .reads
            .remove(&message_id)
            .ok_or(RwError::UnexpectedPayload(message_id))?;
        let have = BufferDescriptorV1::total_length(&d);
        if len as u64 > have || len as u64 > u64::from(self.limits.max_total) {
            return Err(RwError::DescriptorsTooShort {
                have: have.min(self.limits.max_total.into()),
                need: len as u64,
            });
        }
        Ok(plan(&d, len as u32))
    }

    /// smbd's response going to the client: forgets the transfers it ends and returns the
    /// token to invalidate with it, if its request asked for that. An interim (async
    /// STATUS_PENDING) response ends nothing.
    pub fn on_response(&mut self, msg: &[u8]) -> Option<u32> {
        let mut token = None;
        let Ok(ps) = parts(msg) else {
            return None;
        };
        for p in ps {
            let (Ok(flags), Ok(status), Ok(id)) = (u32_at(p, 16), u32_at(p, 8), u64_at(p, 24))
            else {
                continue;
            };
            if flags & FLAG_ASYNC != 0 && status == STATUS_PENDING {
                continue;
            }
            self.reads.remove(&id);
            if let Some(t) = self.invalidate.remove(&id) {
                token = token.or(Some(t));
            }
        }
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cmd: u16, message_id: u64, next: u32) -> Vec<u8> {
        let mut h = vec![0u8; SMB2_HEADER];
        h[..4].copy_from_slice(SMB2_MAGIC);
        h[4..6].copy_from_slice(&64u16.to_le_bytes());
        h[12..14].copy_from_slice(&cmd.to_le_bytes());
        h[20..24].copy_from_slice(&next.to_le_bytes());
        h[24..32].copy_from_slice(&message_id.to_le_bytes());
        h
    }

    fn desc(offset: u64, token: u32, length: u32) -> BufferDescriptorV1 {
        BufferDescriptorV1 {
            offset,
            token,
            length,
        }
    }

    /// A READ request as the Linux client builds it: Length, Channel, descriptors in Buffer.
    fn read_req(message_id: u64, len: u32, channel: u32, d: &[BufferDescriptorV1]) -> Vec<u8> {
        let mut m = header(CMD_READ, message_id, 0);
        let info = BufferDescriptorV1::encode_list(d);
        let mut b = vec![0u8; 48];
        b[..2].copy_from_slice(&49u16.to_le_bytes());
        b[4..8].copy_from_slice(&len.to_le_bytes());
        b[36..40].copy_from_slice(&channel.to_le_bytes());
        b[44..46].copy_from_slice(&(112u16).to_le_bytes());
        b[46..48].copy_from_slice(&(info.len() as u16).to_le_bytes());
        m.extend_from_slice(&b);
        m.extend_from_slice(&info);
        m
    }

    /// A WRITE request with Length 0 and RemainingBytes = `len` (MS-SMB2 2.2.21 for RDMA).
    fn write_req(message_id: u64, len: u32, channel: u32, d: &[BufferDescriptorV1]) -> Vec<u8> {
        let mut m = header(CMD_WRITE, message_id, 0);
        let info = BufferDescriptorV1::encode_list(d);
        let mut b = vec![0u8; 48];
        b[..2].copy_from_slice(&49u16.to_le_bytes());
        b[32..36].copy_from_slice(&channel.to_le_bytes());
        b[36..40].copy_from_slice(&len.to_le_bytes());
        b[40..42].copy_from_slice(&(112u16).to_le_bytes());
        b[42..44].copy_from_slice(&(info.len() as u16).to_le_bytes());
        m.extend_from_slice(&b);
        m.extend_from_slice(&info);
        m
    }

    fn response(message_id: u64, status: u32, flags: u32) -> Vec<u8> {
        let mut h = header(CMD_READ, message_id, 0);
        h[8..12].copy_from_slice(&status.to_le_bytes());
        h[16..20].copy_from_slice(&(flags | 1).to_le_bytes());
        h.extend_from_slice(&[0u8; 16]);
        h
    }

    #[test]
    fn write_pull_then_response_invalidates_the_token() {
        let mut t = Transfers::new(Limits::default());
        let d = [desc(0x1000, 7, 4096), desc(0x9000, 8, 4096)];
        let pulls = t.on_request(&write_req(5, 6000, 2, &d)).unwrap();
        assert_eq!(
            pulls,
            vec![WritePull {
                message_id: 5,
                descriptors: d.to_vec(),
                length: 6000
            }]
        );
        // An interim response keeps the token for the final one.
        assert_eq!(
            t.on_response(&response(5, STATUS_PENDING, FLAG_ASYNC)),
            None
        );
        assert_eq!(t.on_response(&response(5, 0, 0)), Some(7));
        assert_eq!(t.on_response(&response(5, 0, 0)), None, "used once");
    }

    #[test]
    fn read_payload_goes_to_the_descriptors_then_the_response_goes_plain_for_v1() {
        let mut t = Transfers::new(Limits::default());
        let d = [desc(0x1000, 7, 100), desc(0x9000, 8, 100)];
        assert!(t.on_request(&read_req(9, 150, 1, &d)).unwrap().is_empty());
        assert_eq!(t.pending_reads(), 1);
        assert_eq!(
            t.on_request_with_reads(&read_req(10, 64, 1, &d)).unwrap(),
            (vec![], vec![(10, 64)])
        );
        assert_eq!(
            t.on_payload(9, 150).unwrap(),
            vec![
                Segment {
                    local_offset: 0,
                    remote_addr: 0x1000,
                    token: 7,
                    len: 100
                },
                Segment {
                    local_offset: 100,
                    remote_addr: 0x9000,
                    token: 8,
                    len: 50
                },
            ]
        );
        assert_eq!(
            t.on_response(&response(9, 0, 0)),
            None,
            "RDMA_V1: no invalidate"
        );
        assert_eq!(t.on_payload(9, 1), Err(RwError::UnexpectedPayload(9)));
    }

    #[test]
    fn read_payload_longer_than_the_descriptors_is_refused() {
        let mut t = Transfers::new(Limits::default());
        t.on_request(&read_req(1, 100, 2, &[desc(0, 1, 100)]))
            .unwrap();
        assert!(matches!(
            t.on_payload(1, 101),
            Err(RwError::DescriptorsTooShort { .. })
        ));
    }

    #[test]
    fn failed_read_response_forgets_the_read() {
        let mut t = Transfers::new(Limits::default());
        t.on_request(&read_req(3, 10, 2, &[desc(0, 4, 10)]))
            .unwrap();
        assert_eq!(t.on_response(&response(3, 0xC000_0011, 0)), Some(4));
        assert_eq!(t.pending_reads(), 0);
    }

    #[test]
    fn requests_without_rdma_channels_and_encrypted_messages_pass() {
        let mut t = Transfers::new(Limits::default());
        assert!(t.on_request(&read_req(1, 10, 0, &[])).unwrap().is_empty());
        assert!(t.on_request(&header(0x0005, 2, 0)).unwrap().is_empty());
        let mut transform = vec![0u8; 100];
        transform[..4].copy_from_slice(b"\xfdSMB");
        assert!(t.on_request(&transform).unwrap().is_empty());
        assert_eq!(t.pending_reads(), 0);
    }

    #[test]
    fn bounds_descriptors_length_and_pending() {
        let limits = Limits {
            max_descriptors: 2,
            max_total: 1000,
            max_pending: 2,
        };
        let mut t = Transfers::new(limits);
        let three = [desc(0, 1, 10), desc(0, 2, 10), desc(0, 3, 10)];
        assert!(matches!(
            t.on_request(&read_req(1, 10, 1, &three)),
            Err(RwError::TooManyDescriptors { count: 3, max: 2 })
        ));
        assert!(matches!(
            t.on_request(&write_req(1, 1001, 1, &[desc(0, 1, 2000)])),
            Err(RwError::TooLong { .. })
        ));
        assert!(matches!(
            t.on_request(&write_req(1, 11, 1, &[desc(0, 1, 10)])),
            Err(RwError::DescriptorsTooShort { have: 10, need: 11 })
        ));
        t.on_request(&read_req(1, 10, 1, &[desc(0, 1, 10)]))
            .unwrap();
        assert_eq!(
            t.on_request(&read_req(1, 10, 1, &[desc(0, 1, 10)])),
            Err(RwError::DuplicateMessageId(1))
        );
        t.on_request(&read_req(2, 10, 1, &[desc(0, 1, 10)]))
            .unwrap();
        assert_eq!(
            t.on_request(&read_req(3, 10, 1, &[desc(0, 1, 10)])),
            Err(RwError::TooManyReads { max: 2 })
        );
    }

    #[test]
    fn channel_info_outside_the_message_or_in_the_header_is_refused() {
        let mut t = Transfers::new(Limits::default());
        let mut m = read_req(1, 10, 1, &[desc(0, 1, 10)]);
        m.truncate(m.len() - 1);
        assert_eq!(t.on_request(&m), Err(RwError::ChannelInfoOutOfBounds));
        let mut m = read_req(1, 10, 1, &[desc(0, 1, 10)]);
        m[64 + 44..64 + 46].copy_from_slice(&8u16.to_le_bytes());
        assert_eq!(t.on_request(&m), Err(RwError::ChannelInfoOutOfBounds));
        let mut m = read_req(1, 10, 1, &[desc(0, 1, 10)]);
        m[64 + 46..64 + 48].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(t.on_request(&m), Err(RwError::Descriptors(_))));
    }

    #[test]
    fn compound_parts_each_counted() {
        let mut t = Transfers::new(Limits::default());
        let mut first = write_req(1, 10, 1, &[desc(0x10, 1, 10)]);
        let next = first.len().next_multiple_of(8);
        first.resize(next, 0);
        first[20..24].copy_from_slice(&(next as u32).to_le_bytes());
        first.extend_from_slice(&read_req(2, 10, 2, &[desc(0x20, 2, 10)]));
        let pulls = t.on_request(&first).unwrap();
        assert_eq!(pulls.len(), 1);
        assert_eq!(pulls[0].message_id, 1);
        assert_eq!(t.pending_reads(), 1);
        let mut bad = first.clone();
        bad[20..24].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(
            Transfers::default().on_request(&bad),
            Err(RwError::Truncated)
        );
    }

    #[test]
    fn plan_skips_empty_descriptors_and_stops_at_the_length() {
        let d = [desc(1, 1, 0), desc(2, 2, 5), desc(3, 3, 5), desc(4, 4, 5)];
        let p = plan(&d, 7);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].remote_addr, p[0].len, p[0].local_offset), (2, 5, 0));
        assert_eq!((p[1].remote_addr, p[1].len, p[1].local_offset), (3, 2, 5));
        assert!(plan(&d, 0).is_empty());
    }
}
