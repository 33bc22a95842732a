//! The one SMB1 message an SMB2 server must understand: the multi-protocol NEGOTIATE
//! (MS-SMB2 3.3.5.3.1), which a client sends to discover SMB2 support.

use crate::cursor::{DecodeError, Reader};
use crate::header::SMB1_PROTOCOL_ID;

const SMB_COM_NEGOTIATE: u8 = 0x72;

/// Dialect strings of an SMB1 NEGOTIATE request.
pub fn decode_negotiate(msg: &[u8]) -> Result<Vec<String>, DecodeError> {
    let mut r = Reader::new(msg);
    if r.bytes(4)? != SMB1_PROTOCOL_ID {
        return Err(DecodeError::BadProtocolId);
    }
    if r.u8()? != SMB_COM_NEGOTIATE {
        return Err(DecodeError::Invalid("SMB1 command other than NEGOTIATE"));
    }
    r.skip(27)?;
    let _word_count = r.u8()?;
    let byte_count = r.u16()? as usize;
    let bytes = r.bytes(byte_count.min(r.remaining()))?;
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((&fmt, tail)) = rest.split_first() {
        if fmt != 0x02 {
            return Err(DecodeError::Invalid("SMB1 dialect buffer format"));
        }
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated)?;
        out.push(String::from_utf8_lossy(&tail[..end]).into_owned());
        rest = &tail[end + 1..];
    }
    Ok(out)
}

/// Which SMB2 dialect to answer an SMB1 negotiate with: 0x02FF if "SMB 2.???" is offered,
/// 0x0202 if only "SMB 2.002", else `None` (SMB1-only client: not served).
pub fn smb2_dialect_for(dialects: &[String]) -> Option<u16> {
    if dialects.iter().any(|d| d == "SMB 2.???") {
        Some(crate::dialect::WILDCARD)
    } else if dialects.iter().any(|d| d == "SMB 2.002") {
        Some(crate::dialect::SMB202)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dialects() {
        let mut m = vec![0xFF, b'S', b'M', b'B', 0x72];
        m.extend_from_slice(&[0; 27]);
        m.push(0);
        let body = b"\x02NT LM 0.12\0\x02SMB 2.002\0\x02SMB 2.???\0";
        m.extend_from_slice(&(body.len() as u16).to_le_bytes());
        m.extend_from_slice(body);
        let d = decode_negotiate(&m).unwrap();
        assert_eq!(d, vec!["NT LM 0.12", "SMB 2.002", "SMB 2.???"]);
        assert_eq!(smb2_dialect_for(&d), Some(0x02FF));
    }
}
