//! SMB2/SMB3 message codec, no I/O.
//!
//! Server-side view: requests are decoded from bytes ([`Request::decode`]), responses are
//! encoded into bytes ([`encode_message`]). All offsets in SMB2 bodies are relative to the
//! start of the SMB2 header of the message they belong to (MS-SMB2 2.2.1), so decoders take the
//! whole message (header included) and encoders write header and body together.
//!
//! smbd's only SMB codec: besides the messages ([`messages`], [`header`], [`smb1`]) it holds
//! the NetBIOS session framing ([`netbios`]) and the payload frames smbdirectd adds to it
//! ([`payload_frame`]) and area frames ([`area_frame`]), the CREATE contexts ([`create_ctx`]), the
//! file-system information classes ([`fscc`]), the FSCTL input and output buffers
//! ([`fsctl_buf`]), the DFS referral request and response ([`dfs`]), the security descriptors of QUERY_INFO/SET_INFO SECURITY and the SecD
//! create context ([`security_descriptor`]) and the NTSTATUS values ([`status`], [`NtStatus`]).
//!
//! Nothing here panics on input: every read is bounds-checked and failures are [`DecodeError`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]

pub mod area_frame;
pub mod create_ctx;
pub mod cursor;
pub mod dfs;
pub mod fscc;
pub mod fsctl_buf;
pub mod header;
pub mod messages;
pub mod netbios;
pub mod payload_frame;
pub mod security_descriptor;
pub mod smb1;
pub mod status;

pub use cursor::{DecodeError, Reader, Writer};
pub use header::{Command, Header, HEADER_SIZE};
pub use messages::*;
pub use status::NtStatus;

/// Split a compound chain (MS-SMB2 3.3.5.2.7) into its messages by `NextCommand`.
///
/// Each slice starts at an SMB2 header. The last message extends to the end of `buf`.
pub fn split_compound(buf: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = buf;
    loop {
        let hdr = Header::decode(rest)?;
        let next = hdr.next_command as usize;
        if next == 0 {
            out.push(rest);
            return Ok(out);
        }
        // NextCommand must leave room for a header and be 8-byte aligned (MS-SMB2 2.2.1.2).
        if next < HEADER_SIZE || next > rest.len() || !next.is_multiple_of(8) {
            return Err(DecodeError::BadOffset);
        }
        out.push(&rest[..next]);
        rest = &rest[next..];
    }
}

/// Run `data` through every decoder (used by the fuzz target and the corpus test).
/// Returns how many messages decoded successfully.
pub fn fuzz_decode(data: &[u8]) -> usize {
    let mut ok = 0;
    let _ = smb1::decode_negotiate(data);
    if let Ok(msgs) = split_compound(data) {
        for m in msgs {
            if let Ok((_, req)) = Request::decode(m) {
                ok += 1;
                match req {
                    Request::Create(c) => {
                        for ctx in &c.contexts {
                            let _ = LeaseContext::decode(&ctx.data);
                        }
                    }
                    Request::Negotiate(n) => {
                        for c in &n.contexts {
                            let _ = c.preauth();
                            let _ = c.id_list();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = decode_create_contexts(data);
    let _ = LeaseContext::decode(data);
    let _ = payload_frame::decode_body(data);
    let _ = area_frame::AreaFrame::decode_body(data);
    ok
}
