//! The three SMB Direct messages (MS-SMBD 2.2.1-2.2.3), little-endian, and their
//! receive-side validation (MS-SMBD 3.1.5.6-3.1.5.8). Every message is one RDMA send, so a
//! decoder sees exactly one message in one buffer: trailing bytes are padding the sender chose,
//! not the start of another message.

use thiserror::Error;

/// The only protocol version MS-SMBD defines (1.7).
pub const SMBD_VERSION_1: u16 = 0x0100;
/// Length of a Negotiate Request (2.2.1).
pub const NEGOTIATE_REQUEST_LEN: usize = 20;
/// Length of a Negotiate Response (2.2.2).
pub const NEGOTIATE_RESPONSE_LEN: usize = 32;
/// Length of the fixed part of a Data Transfer message (2.2.3), without the optional padding.
pub const DATA_HEADER_LEN: usize = 20;
/// Where our own payloads start: the header padded to the 8-byte alignment 2.2.3 asks of
/// DataOffset.
pub const DATA_OFFSET: usize = 24;
/// Smallest MaxReceiveSize a peer may announce (3.1.5.6, 3.1.5.7).
pub const MIN_RECEIVE_SIZE: u32 = 128;
/// Smallest MaxFragmentedSize a peer may announce (3.1.5.6, 3.1.5.7).
pub const MIN_FRAGMENTED_SIZE: u32 = 131_072;
/// Data Transfer flag: the peer is asked to send a message promptly (keep-alive, 2.2.3).
pub const SMB_DIRECT_RESPONSE_REQUESTED: u16 = 0x0001;
/// NTSTATUS of a Negotiate Response refusing the offered version range (3.1.5.6).
pub const STATUS_NOT_SUPPORTED: u32 = 0xC000_00BB;

/// Why received bytes are not an acceptable SMB Direct message. Every variant ends the
/// connection (MS-SMBD 3.1.5.6-3.1.5.8 say "terminate the connection").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("{what}: {len} bytes, at least {min} needed")]
    TooShort {
        what: &'static str,
        len: usize,
        min: usize,
    },
    #[error("version range {min:#06x}..={max:#06x} does not include 0x0100")]
    UnsupportedVersion { min: u16, max: u16 },
    #[error("negotiated version {0:#06x} is not 0x0100")]
    BadNegotiatedVersion(u16),
    #[error("{0} is zero")]
    ZeroCredits(&'static str),
    #[error("MaxReceiveSize {0} is below 128")]
    ReceiveSizeTooSmall(u32),
    #[error("MaxFragmentedSize {0} is below 131072")]
    FragmentedSizeTooSmall(u32),
    #[error("negotiate response status {0:#010x}")]
    NegotiateFailed(u32),
    #[error("PreferredSendSize {preferred} exceeds our MaxReceiveSize {max}")]
    PreferredSendSizeTooLarge { preferred: u32, max: u32 },
    #[error("DataOffset {0} is not 8-byte aligned")]
    MisalignedDataOffset(u32),
    #[error("DataOffset {offset} overlaps the {DATA_HEADER_LEN}-byte header")]
    DataOffsetInHeader { offset: u32 },
    #[error("payload {offset}+{length} runs past the {len}-byte message")]
    PayloadOutOfBounds {
        offset: u32,
        length: u32,
        len: usize,
    },
    #[error("no payload but DataOffset is {0}")]
    OffsetWithoutPayload(u32),
    #[error(
        "DataLength {length} + RemainingDataLength {remaining} exceeds MaxFragmentedSize {max}"
    )]
    FragmentTooLarge {
        length: u32,
        remaining: u32,
        max: u32,
    },
    #[error("buffer descriptor list of {0} bytes is not a non-empty multiple of 16")]
    BadDescriptorList(usize),
    #[error("buffer descriptors describe more than u64::MAX bytes")]
    DescriptorLengthOverflow,
    #[error("channel {0:#x} carries no RDMA buffer descriptors")]
    NotAnRdmaChannel(u32),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn need(what: &'static str, b: &[u8], min: usize) -> Result<(), DecodeError> {
    if b.len() < min {
        return Err(DecodeError::TooShort {
            what,
            len: b.len(),
            min,
        });
    }
    Ok(())
}

/// Negotiate Request (MS-SMBD 2.2.1), sent by the initiator as the first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateRequest {
    pub min_version: u16,
    pub max_version: u16,
    pub credits_requested: u16,
    pub preferred_send_size: u32,
    pub max_receive_size: u32,
    pub max_fragmented_size: u32,
}

impl NegotiateRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(NEGOTIATE_REQUEST_LEN);
        b.extend_from_slice(&self.min_version.to_le_bytes());
        b.extend_from_slice(&self.max_version.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.credits_requested.to_le_bytes());
        b.extend_from_slice(&self.preferred_send_size.to_le_bytes());
        b.extend_from_slice(&self.max_receive_size.to_le_bytes());
        b.extend_from_slice(&self.max_fragmented_size.to_le_bytes());
        b
    }

    /// Parses the fields without judging them; see [`NegotiateRequest::validate`].
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        need("negotiate request", b, NEGOTIATE_REQUEST_LEN)?;
        Ok(Self {
            min_version: u16_at(b, 0),
            max_version: u16_at(b, 2),
            credits_requested: u16_at(b, 6),
            preferred_send_size: u32_at(b, 8),
            max_receive_size: u32_at(b, 12),
            max_fragmented_size: u32_at(b, 16),
        })
    }

    /// The version check of MS-SMBD 3.1.5.6. A failure here is answered with a Negotiate
    /// Response carrying STATUS_NOT_SUPPORTED before the connection ends.
    pub fn check_version(&self) -> Result<(), DecodeError> {
        if self.min_version > SMBD_VERSION_1 || self.max_version < SMBD_VERSION_1 {
            return Err(DecodeError::UnsupportedVersion {
                min: self.min_version,
                max: self.max_version,
            });
        }
        Ok(())
    }

    /// The remaining checks of MS-SMBD 3.1.5.6; a failure ends the connection without a reply.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.credits_requested == 0 {
            return Err(DecodeError::ZeroCredits("CreditsRequested"));
        }
        if self.max_receive_size < MIN_RECEIVE_SIZE {
            return Err(DecodeError::ReceiveSizeTooSmall(self.max_receive_size));
        }
        if self.max_fragmented_size < MIN_FRAGMENTED_SIZE {
            return Err(DecodeError::FragmentedSizeTooSmall(
                self.max_fragmented_size,
            ));
        }
        Ok(())
    }
}

/// Negotiate Response (MS-SMBD 2.2.2), the listener's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateResponse {
    pub min_version: u16,
    pub max_version: u16,
    pub negotiated_version: u16,
    pub credits_requested: u16,
    pub credits_granted: u16,
    pub status: u32,
    pub max_read_write_size: u32,
    pub preferred_send_size: u32,
    pub max_receive_size: u32,
    pub max_fragmented_size: u32,
}

impl NegotiateResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(NEGOTIATE_RESPONSE_LEN);
        b.extend_from_slice(&self.min_version.to_le_bytes());
        b.extend_from_slice(&self.max_version.to_le_bytes());
        b.extend_from_slice(&self.negotiated_version.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.credits_requested.to_le_bytes());
        b.extend_from_slice(&self.credits_granted.to_le_bytes());
        b.extend_from_slice(&self.status.to_le_bytes());
        b.extend_from_slice(&self.max_read_write_size.to_le_bytes());
        b.extend_from_slice(&self.preferred_send_size.to_le_bytes());
        b.extend_from_slice(&self.max_receive_size.to_le_bytes());
        b.extend_from_slice(&self.max_fragmented_size.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        need("negotiate response", b, NEGOTIATE_RESPONSE_LEN)?;
        Ok(Self {
            min_version: u16_at(b, 0),
            max_version: u16_at(b, 2),
            negotiated_version: u16_at(b, 4),
            credits_requested: u16_at(b, 8),
            credits_granted: u16_at(b, 10),
            status: u32_at(b, 12),
            max_read_write_size: u32_at(b, 16),
            preferred_send_size: u32_at(b, 20),
            max_receive_size: u32_at(b, 24),
            max_fragmented_size: u32_at(b, 28),
        })
    }

    /// The checks of MS-SMBD 3.1.5.7; `our_max_receive_size` is what our request announced.
    pub fn validate(&self, our_max_receive_size: u32) -> Result<(), DecodeError> {
        if self.status != 0 {
            return Err(DecodeError::NegotiateFailed(self.status));
        }
        if self.negotiated_version != SMBD_VERSION_1 {
            return Err(DecodeError::BadNegotiatedVersion(self.negotiated_version));
        }
        if self.max_receive_size < MIN_RECEIVE_SIZE {
            return Err(DecodeError::ReceiveSizeTooSmall(self.max_receive_size));
        }
        if self.max_fragmented_size < MIN_FRAGMENTED_SIZE {
            return Err(DecodeError::FragmentedSizeTooSmall(
                self.max_fragmented_size,
            ));
        }
        if self.credits_granted == 0 {
            return Err(DecodeError::ZeroCredits("CreditsGranted"));
        }
        if self.credits_requested == 0 {
            return Err(DecodeError::ZeroCredits("CreditsRequested"));
        }
        if self.preferred_send_size > our_max_receive_size {
            return Err(DecodeError::PreferredSendSizeTooLarge {
                preferred: self.preferred_send_size,
                max: our_max_receive_size,
            });
        }
        Ok(())
    }
}

/// The header of a Data Transfer message (MS-SMBD 2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataHeader {
    pub credits_requested: u16,
    pub credits_granted: u16,
    pub flags: u16,
    pub remaining_data_length: u32,
}

impl DataHeader {
    /// A whole message: the header, padding to [`DATA_OFFSET`] and the payload. An empty
    /// payload gives the 20-byte form with DataOffset 0 (2.2.3: no payload, offset 0).
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let (offset, total) = if payload.is_empty() {
            (0u32, DATA_HEADER_LEN)
        } else {
            (DATA_OFFSET as u32, DATA_OFFSET + payload.len())
        };
        let mut b = Vec::with_capacity(total);
        b.extend_from_slice(&self.credits_requested.to_le_bytes());
        b.extend_from_slice(&self.credits_granted.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.remaining_data_length.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        // DataLength fits: a payload is at most one receive buffer (u32 sizes).
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        if !payload.is_empty() {
            b.extend_from_slice(&[0u8; DATA_OFFSET - DATA_HEADER_LEN]);
            b.extend_from_slice(payload);
        }
        b
    }
}

/// A decoded Data Transfer message borrowing its payload from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataMessage<'a> {
    pub header: DataHeader,
    pub payload: &'a [u8],
}

impl<'a> DataMessage<'a> {
    /// Parses and checks a Data Transfer message as MS-SMBD 3.1.5.8 asks: at least 20
    /// bytes, CreditsRequested at least 1, DataOffset 8-byte aligned, payload inside the
    /// message, DataLength + RemainingDataLength within `max_fragmented_size` (ours).
    pub fn decode(b: &'a [u8], max_fragmented_size: u32) -> Result<Self, DecodeError> {
        need("data transfer message", b, DATA_HEADER_LEN)?;
        let header = DataHeader {
            credits_requested: u16_at(b, 0),
            credits_granted: u16_at(b, 2),
            flags: u16_at(b, 4),
            remaining_data_length: u32_at(b, 8),
        };
        let offset = u32_at(b, 12);
        let length = u32_at(b, 16);
        if header.credits_requested == 0 {
            return Err(DecodeError::ZeroCredits("CreditsRequested"));
        }
        if !offset.is_multiple_of(8) {
            return Err(DecodeError::MisalignedDataOffset(offset));
        }
        let payload = if length == 0 {
            // 2.2.3: without a payload the offset MUST be 0. Windows and Linux both send 0;
            // a non-zero offset is a peer we do not understand.
            if offset != 0 {
                return Err(DecodeError::OffsetWithoutPayload(offset));
            }
            &b[..0]
        } else {
            if (offset as usize) < DATA_HEADER_LEN {
                return Err(DecodeError::DataOffsetInHeader { offset });
            }
            let end = u64::from(offset) + u64::from(length);
            if end > b.len() as u64 {
                return Err(DecodeError::PayloadOutOfBounds {
                    offset,
                    length,
                    len: b.len(),
                });
            }
            &b[offset as usize..end as usize]
        };
        if u64::from(length) + u64::from(header.remaining_data_length)
            > u64::from(max_fragmented_size)
        {
            return Err(DecodeError::FragmentTooLarge {
                length,
                remaining: header.remaining_data_length,
                max: max_fragmented_size,
            });
        }
        Ok(Self { header, payload })
    }
}

/// The Channel field of SMB2 READ and WRITE requests (MS-SMB2 2.2.19, 2.2.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Channel {
    /// SMB2_CHANNEL_NONE: the data travels inline in the SMB2 message.
    None = 0,
    /// SMB2_CHANNEL_RDMA_V1: the channel info is a list of buffer descriptors.
    RdmaV1 = 1,
    /// SMB2_CHANNEL_RDMA_V1_INVALIDATE: as RdmaV1, and the server invalidates the first
    /// descriptor's token with Send-with-Invalidate on the response.
    RdmaV1Invalidate = 2,
    /// SMB2_CHANNEL_RDMA_TRANSFORM (3.1.1): descriptors wrapped in transform headers; not
    /// supported here.
    RdmaTransform = 3,
}

impl Channel {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::RdmaV1),
            2 => Some(Self::RdmaV1Invalidate),
            3 => Some(Self::RdmaTransform),
            _ => None,
        }
    }
}

/// One registered client buffer: SMB_DIRECT_BUFFER_DESCRIPTOR_V1 (MS-SMBD 2.2.3.1), which
/// MS-SMB2 2.2.19 (READ: ReadChannelInfoOffset/Length) and 2.2.21 (WRITE:
/// WriteChannelInfoOffset/Length) carry as their channel info when Channel is
/// SMB2_CHANNEL_RDMA_V1 or SMB2_CHANNEL_RDMA_V1_INVALIDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferDescriptorV1 {
    /// Remote virtual address (or offset) of the buffer in the peer's memory region.
    pub offset: u64,
    /// The steering tag (rkey) of the peer's memory region.
    pub token: u32,
    pub length: u32,
}

/// Size of one [`BufferDescriptorV1`] on the wire.
pub const BUFFER_DESCRIPTOR_V1_LEN: usize = 16;

impl BufferDescriptorV1 {
    pub fn encode_list(list: &[Self]) -> Vec<u8> {
        let mut b = Vec::with_capacity(list.len() * BUFFER_DESCRIPTOR_V1_LEN);
        for d in list {
            b.extend_from_slice(&d.offset.to_le_bytes());
            b.extend_from_slice(&d.token.to_le_bytes());
            b.extend_from_slice(&d.length.to_le_bytes());
        }
        b
    }

    /// A channel info blob: a non-empty array of descriptors, nothing else.
    pub fn decode_list(b: &[u8]) -> Result<Vec<Self>, DecodeError> {
        if b.is_empty() || !b.len().is_multiple_of(BUFFER_DESCRIPTOR_V1_LEN) {
            return Err(DecodeError::BadDescriptorList(b.len()));
        }
        Ok(b.chunks_exact(BUFFER_DESCRIPTOR_V1_LEN)
            .map(|c| Self {
                offset: u64::from(u32_at(c, 0)) | (u64::from(u32_at(c, 4)) << 32),
                token: u32_at(c, 8),
                length: u32_at(c, 12),
            })
            .collect())
    }

    /// Bytes the descriptors cover together: what an RDMA READ/WRITE of the whole list moves.
    pub fn total_length(list: &[Self]) -> u64 {
        list.iter().map(|d| u64::from(d.length)).sum()
    }
}

/// The channel info of an SMB2 READ or WRITE request: its Channel and the descriptors, if
/// the data moves by RDMA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaChannel {
    pub channel: Channel,
    pub descriptors: Vec<BufferDescriptorV1>,
}

impl RdmaChannel {
    /// `channel` and `info` as the READ/WRITE request carries them (the bytes at
    /// Read/WriteChannelInfoOffset, of Read/WriteChannelInfoLength).
    pub fn parse(channel: u32, info: &[u8]) -> Result<Self, DecodeError> {
        match Channel::from_u32(channel) {
            Some(c @ (Channel::RdmaV1 | Channel::RdmaV1Invalidate)) => Ok(Self {
                channel: c,
                descriptors: BufferDescriptorV1::decode_list(info)?,
            }),
            _ => Err(DecodeError::NotAnRdmaChannel(channel)),
        }
    }

    /// The token the server invalidates with Send-with-Invalidate on the response to a
    /// request with SMB2_CHANNEL_RDMA_V1_INVALIDATE (MS-SMB2 3.3.5.12 READ, 3.3.5.13 WRITE;
    /// the channel exists from dialect 3.0.2): the first descriptor's token, the region the
    /// client registered for this request.
    pub fn token_to_invalidate(&self) -> Option<u32> {
        match self.channel {
            Channel::RdmaV1Invalidate => self.descriptors.first().map(|d| d.token),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> NegotiateRequest {
        NegotiateRequest {
            min_version: SMBD_VERSION_1,
            max_version: SMBD_VERSION_1,
            credits_requested: 10,
            preferred_send_size: 1024,
            max_receive_size: 1024,
            max_fragmented_size: 131_072,
        }
    }

    #[test]
    fn negotiate_request_matches_spec_example() {
        // MS-SMBD 4.1: the initiator's Negotiate Request.
        let b = request().encode();
        assert_eq!(
            b,
            [
                0x00, 0x01, 0x00, 0x01, 0, 0, 0x0A, 0, 0x00, 0x04, 0, 0, 0x00, 0x04, 0, 0, 0, 0,
                0x02, 0
            ]
        );
        assert_eq!(NegotiateRequest::decode(&b), Ok(request()));
        assert_eq!(request().check_version(), Ok(()));
        assert_eq!(request().validate(), Ok(()));
    }

    #[test]
    fn negotiate_request_limits() {
        let mut r = request();
        r.min_version = 0x0101;
        r.max_version = 0x0102;
        assert!(matches!(
            r.check_version(),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
        let mut r = request();
        r.max_receive_size = 127;
        assert_eq!(r.validate(), Err(DecodeError::ReceiveSizeTooSmall(127)));
        let mut r = request();
        r.max_fragmented_size = 131_071;
        assert_eq!(
            r.validate(),
            Err(DecodeError::FragmentedSizeTooSmall(131_071))
        );
        let mut r = request();
        r.credits_requested = 0;
        assert!(r.validate().is_err());
        assert!(NegotiateRequest::decode(&[0; 19]).is_err());
    }

    #[test]
    fn negotiate_response_round_trip_and_checks() {
        let r = NegotiateResponse {
            min_version: SMBD_VERSION_1,
            max_version: SMBD_VERSION_1,
            negotiated_version: SMBD_VERSION_1,
            credits_requested: 10,
            credits_granted: 10,
            status: 0,
            max_read_write_size: 1 << 20,
            preferred_send_size: 1024,
            max_receive_size: 1024,
            max_fragmented_size: 131_072,
        };
        let b = r.encode();
        assert_eq!(b.len(), NEGOTIATE_RESPONSE_LEN);
        assert_eq!(NegotiateResponse::decode(&b), Ok(r));
        assert_eq!(r.validate(1024), Ok(()));
        assert!(matches!(
            r.validate(1023),
            Err(DecodeError::PreferredSendSizeTooLarge { .. })
        ));
        let mut bad = r;
        bad.credits_granted = 0;
        assert!(bad.validate(1024).is_err());
        let mut bad = r;
        bad.status = STATUS_NOT_SUPPORTED;
        assert_eq!(
            bad.validate(1024),
            Err(DecodeError::NegotiateFailed(STATUS_NOT_SUPPORTED))
        );
        assert!(NegotiateResponse::decode(&b[..31]).is_err());
    }

    #[test]
    fn data_message_layout_and_checks() {
        let h = DataHeader {
            credits_requested: 5,
            credits_granted: 3,
            flags: SMB_DIRECT_RESPONSE_REQUESTED,
            remaining_data_length: 7,
        };
        let b = h.encode(b"hello");
        assert_eq!(b.len(), DATA_OFFSET + 5);
        assert_eq!(u32_at(&b, 12), 24);
        let m = DataMessage::decode(&b, 131_072).expect("valid");
        assert_eq!(m.header, h);
        assert_eq!(m.payload, b"hello");

        let empty = h.encode(&[]);
        assert_eq!(empty.len(), DATA_HEADER_LEN);
        assert_eq!(
            DataMessage::decode(&empty, 131_072).map(|m| m.payload.len()),
            Ok(0)
        );

        let mut mis = b.clone();
        mis[12] = 20;
        assert_eq!(
            DataMessage::decode(&mis, 131_072),
            Err(DecodeError::MisalignedDataOffset(20))
        );
        let mut long = b.clone();
        long[16] = 6;
        assert!(matches!(
            DataMessage::decode(&long, 131_072),
            Err(DecodeError::PayloadOutOfBounds { .. })
        ));
        assert!(matches!(
            DataMessage::decode(&b, 11),
            Err(DecodeError::FragmentTooLarge { .. })
        ));
        let mut zero = b.clone();
        zero[0] = 0;
        assert!(DataMessage::decode(&zero, 131_072).is_err());
        let mut inside = b;
        inside[12] = 16;
        assert!(matches!(
            DataMessage::decode(&inside, 131_072),
            Err(DecodeError::DataOffsetInHeader { .. })
        ));
    }

    #[test]
    fn buffer_descriptors() {
        let list = [
            BufferDescriptorV1 {
                offset: 0x1122_3344_5566_7788,
                token: 0xAABB_CCDD,
                length: 4096,
            },
            BufferDescriptorV1 {
                offset: 0,
                token: 1,
                length: u32::MAX,
            },
        ];
        let b = BufferDescriptorV1::encode_list(&list);
        assert_eq!(&b[..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(
            BufferDescriptorV1::decode_list(&b).as_deref(),
            Ok(&list[..])
        );
        assert_eq!(
            BufferDescriptorV1::total_length(&list),
            4096 + u64::from(u32::MAX)
        );
        assert!(BufferDescriptorV1::decode_list(&b[..15]).is_err());
        assert!(BufferDescriptorV1::decode_list(&[]).is_err());
        let c = RdmaChannel::parse(2, &b).expect("rdma");
        assert_eq!(c.token_to_invalidate(), Some(0xAABB_CCDD));
        assert_eq!(
            RdmaChannel::parse(1, &b).map(|c| c.token_to_invalidate()),
            Ok(None)
        );
        assert_eq!(
            RdmaChannel::parse(0, &b),
            Err(DecodeError::NotAnRdmaChannel(0))
        );
    }
}
