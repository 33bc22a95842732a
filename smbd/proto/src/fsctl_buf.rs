//! The input and output buffers of the FSCTLs the server answers (MS-SMB2 2.2.31.x /
//! 2.2.32.x, MS-FSCC 2.3.x): decoders for what the client sends in an IOCTL request's input,
//! encoders for the IOCTL response's output. The control codes are in [`crate::fsctl`].

use std::net::IpAddr;

use crate::cursor::{DecodeError, Reader, Writer};

/// VALIDATE_NEGOTIATE_INFO request (MS-SMB2 2.2.31.4): what the client says it negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateNegotiateInfo {
    pub capabilities: u32,
    pub guid: [u8; 16],
    pub security_mode: u16,
    pub dialects: Vec<u16>,
}

impl ValidateNegotiateInfo {
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input);
        let capabilities = r.u32()?;
        let guid = r.array16()?;
        let security_mode = r.u16()?;
        let count = r.u16()? as usize;
        let mut dialects = Vec::new();
        for _ in 0..count {
            dialects.push(r.u16()?);
        }
        Ok(ValidateNegotiateInfo {
            capabilities,
            guid,
            security_mode,
            dialects,
        })
    }
}

/// VALIDATE_NEGOTIATE_INFO response (MS-SMB2 2.2.32.6): what the server negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateNegotiateResponse {
    pub capabilities: u32,
    pub guid: [u8; 16],
    pub security_mode: u16,
    pub dialect: u16,
}

impl ValidateNegotiateResponse {
    /// Its size on the wire.
    pub const SIZE: u32 = 24;

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.capabilities)
            .bytes(&self.guid)
            .u16(self.security_mode)
            .u16(self.dialect);
        w.buf
    }
}

/// One NETWORK_INTERFACE_INFO entry (MS-SMB2 2.2.32.5) with no RSS or RDMA capability, as the
/// whole QUERY_NETWORK_INTERFACE_INFO output: interface index 1, `link_speed` bits per
/// second, the SOCKADDR_STORAGE of `ip` (128 bytes).
pub fn network_interface_info(ip: IpAddr, link_speed: u64) -> Vec<u8> {
    let mut w = Writer::new();
    // Next, IfIndex, Capability, Reserved, LinkSpeed.
    w.u32(0).u32(1).u32(0).u32(0).u64(link_speed);
    let start = w.len();
    match ip {
        IpAddr::V4(v4) => {
            // SOCKADDR_IN: family 2, port 0, address.
            w.u16(2).u16(0).bytes(&v4.octets());
        }
        IpAddr::V6(v6) => {
            // SOCKADDR_IN6: family 23, port 0, flow info, address, scope id.
            w.u16(23).u16(0).u32(0).bytes(&v6.octets()).u32(0);
        }
    }
    while w.len() - start < 128 {
        w.u8(0);
    }
    w.buf
}

/// SRV_REQUEST_RESUME_KEY response (MS-SMB2 2.2.32.3): a 24-byte ResumeKey made of the
/// source open's volatile id and its connection, no context.
pub fn resume_key(volatile: u64, conn: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(volatile).u64(conn).u64(0).u32(0).u32(0);
    w.buf
}

/// One chunk of a copy: source offset, target offset, length.
pub type Chunk = (u64, u64, u32);

/// SRV_COPYCHUNK_COPY (MS-SMB2 2.2.31.1), with a ResumeKey made by [`resume_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyChunkCopy {
    /// The source open's volatile id and connection, from the resume key.
    pub source_volatile: u64,
    pub source_conn: u64,
    /// The chunks, at most `max_chunks + 1` of them (more than the server accepts is refused
    /// whatever the count).
    pub chunks: Vec<Chunk>,
}

impl CopyChunkCopy {
    pub fn decode(input: &[u8], max_chunks: u32) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input);
        let source_volatile = r.u64()?;
        let source_conn = r.u64()?;
        r.skip(8)?;
        let count = r.u32()?;
        r.skip(4)?;
        let mut chunks = Vec::new();
        for _ in 0..count.min(max_chunks.saturating_add(1)) {
            chunks.push((r.u64()?, r.u64()?, r.u32()?));
            r.skip(4)?;
        }
        Ok(CopyChunkCopy {
            source_volatile,
            source_conn,
            chunks,
        })
    }
}

/// SRV_COPYCHUNK_RESPONSE (MS-SMB2 2.2.32.1): chunks written, bytes written in a partial
/// chunk, total bytes written (or, with STATUS_INVALID_PARAMETER, the server's limits).
pub fn copychunk_response(chunks_written: u32, chunk_bytes_written: u32, total: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(chunks_written).u32(chunk_bytes_written).u32(total);
    w.buf
}

/// FILE_OBJECTID_BUFFER (MS-FSCC 2.1.3) with `id` as ObjectId and BirthObjectId.
pub fn object_id(id: u128) -> Vec<u8> {
    let mut w = Writer::new();
    w.u128(id).u128(0).u128(id).u128(0);
    w.buf
}

/// SRV_SNAPSHOT_ARRAY (MS-SMB2 2.2.32.2) listing no snapshots.
pub fn no_snapshots() -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(0).u32(0).u32(2).u16(0).u16(0);
    w.buf
}

/// Two 64-bit values: FILE_ALLOCATED_RANGE_BUFFER (MS-FSCC 2.3.41: FileOffset, Length) and
/// FILE_ZERO_DATA_INFORMATION (2.3.67: FileOffset, BeyondFinalZero) have this shape.
pub fn decode_offset_pair(input: &[u8]) -> Result<(u64, u64), DecodeError> {
    let mut r = Reader::new(input);
    Ok((r.u64()?, r.u64()?))
}

/// QUERY_ALLOCATED_RANGES output: FILE_ALLOCATED_RANGE_BUFFERs (offset, length) that fit in
/// `max` bytes, and whether some did not fit (STATUS_BUFFER_OVERFLOW).
pub fn allocated_ranges(ranges: &[(u64, u64)], max: usize) -> (Vec<u8>, bool) {
    let mut w = Writer::new();
    for &(offset, length) in ranges {
        if w.len() + 16 > max {
            return (w.buf, true);
        }
        w.u64(offset).u64(length);
    }
    (w.buf, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn validate_negotiate_info_round_trip() {
        let mut w = Writer::new();
        w.u32(0x7f)
            .bytes(&[9; 16])
            .u16(1)
            .u16(2)
            .u16(0x0210)
            .u16(0x0300);
        let v = ValidateNegotiateInfo::decode(&w.buf).expect("decodes");
        assert_eq!(
            v,
            ValidateNegotiateInfo {
                capabilities: 0x7f,
                guid: [9; 16],
                security_mode: 1,
                dialects: vec![0x0210, 0x0300],
            }
        );
        // A dialect count beyond the buffer is an error, not a short list.
        assert!(ValidateNegotiateInfo::decode(&w.buf[..w.buf.len() - 1]).is_err());
        let r = ValidateNegotiateResponse {
            capabilities: 0x44,
            guid: [7; 16],
            security_mode: 2,
            dialect: 0x0302,
        }
        .encode();
        assert_eq!(r.len() as u32, ValidateNegotiateResponse::SIZE);
        assert_eq!(&r[..4], &0x44u32.to_le_bytes());
        assert_eq!(&r[20..], &[2, 0, 0x02, 0x03]);
    }

    #[test]
    fn network_interface_info_layout() {
        let v4 = network_interface_info(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 1_000_000_000);
        assert_eq!(v4.len(), 24 + 128);
        assert_eq!(&v4[4..8], &1u32.to_le_bytes(), "IfIndex");
        assert_eq!(&v4[16..24], &1_000_000_000u64.to_le_bytes(), "LinkSpeed");
        assert_eq!(&v4[24..32], &[2, 0, 0, 0, 10, 0, 0, 7]);
        let v6 = network_interface_info(IpAddr::V6(Ipv6Addr::LOCALHOST), 1);
        assert_eq!(v6.len(), 24 + 128);
        assert_eq!(&v6[24..26], &23u16.to_le_bytes());
        assert_eq!(v6[24 + 8 + 15], 1, "the address after the flow info");
    }

    #[test]
    fn copychunk_request_decodes_the_resume_key_and_chunks() {
        let mut w = Writer::new();
        w.bytes(&resume_key(0x1234, 9)[..24]).u32(2).u32(0);
        w.u64(0).u64(100).u32(50).u32(0);
        w.u64(50).u64(150).u32(10).u32(0);
        let c = CopyChunkCopy::decode(&w.buf, 16).expect("decodes");
        assert_eq!((c.source_volatile, c.source_conn), (0x1234, 9));
        assert_eq!(c.chunks, vec![(0, 100, 50), (50, 150, 10)]);
        // Only max_chunks + 1 chunks are read: enough to refuse too many.
        let c = CopyChunkCopy::decode(&w.buf, 0).expect("decodes");
        assert_eq!(c.chunks.len(), 1);
        assert!(CopyChunkCopy::decode(&w.buf[..w.buf.len() - 4], 16).is_err());
        assert_eq!(
            copychunk_response(1, 2, 3),
            [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]
        );
    }

    #[test]
    fn fixed_outputs() {
        assert_eq!(resume_key(1, 2).len(), 32);
        let o = object_id(5);
        assert_eq!(o.len(), 64);
        assert_eq!(&o[..16], &o[32..48], "ObjectId is BirthObjectId");
        assert_eq!(
            no_snapshots(),
            [0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            decode_offset_pair(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]),
            Ok((1, 2))
        );
        assert!(decode_offset_pair(&[0; 15]).is_err());
    }

    #[test]
    fn allocated_ranges_stop_at_the_output_size() {
        let ranges = [(0, 10), (20, 10), (40, 10)];
        let (all, overflow) = allocated_ranges(&ranges, 48);
        assert_eq!((all.len(), overflow), (48, false));
        let (two, overflow) = allocated_ranges(&ranges, 47);
        assert_eq!((two.len(), overflow), (32, true));
        assert_eq!(&two[16..24], &20u64.to_le_bytes());
    }
}
