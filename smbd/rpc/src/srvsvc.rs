//! srvsvc (MS-SRVS) share and server information, enough for `smbclient -L` and Windows'
//! "net view": NetrShareEnum (15) and NetrShareGetInfo (16) at levels 0 and 1,
//! NetrServerGetInfo (21) at levels 100 and 101. Every other opnum is out of range.

use crate::ndr::{DecodeError, NdrReader, NdrWriter};
use crate::pdu::{fault, SyntaxId, Uuid};
use crate::pipe::{CallId, CallResult, RpcInterface};

/// srvsvc 4b324fc8-1670-01d3-1278-5a47bf6ee188 version 3.0.
pub const SRVSVC: SyntaxId = SyntaxId {
    uuid: Uuid::from_fields(
        0x4b32_4fc8,
        0x1670,
        0x01d3,
        [0x12, 0x78, 0x5a, 0x47, 0xbf, 0x6e, 0xe1, 0x88],
    ),
    major: 3,
    minor: 0,
};

pub mod opnum {
    pub const NETR_SHARE_ENUM: u16 = 15;
    pub const NETR_SHARE_GET_INFO: u16 = 16;
    pub const NETR_SERVER_GET_INFO: u16 = 21;
}

/// Share types (MS-SRVS 2.2.2.4).
pub mod stype {
    pub const DISKTREE: u32 = 0;
    pub const PRINTQ: u32 = 1;
    pub const IPC: u32 = 3;
    /// Administrative / hidden share (IPC$, C$): Windows marks IPC$ `IPC | SPECIAL`.
    pub const SPECIAL: u32 = 0x8000_0000;
}

/// Win32 error codes answered in the WERROR return value.
pub mod werror {
    pub const OK: u32 = 0;
    pub const INVALID_LEVEL: u32 = 124;
    pub const NERR_NET_NAME_NOT_FOUND: u32 = 2310;
}

const PLATFORM_ID_NT: u32 = 500;
/// SV_TYPE_WORKSTATION | SV_TYPE_SERVER | SV_TYPE_SERVER_NT | SV_TYPE_NT (MS-SRVS 2.2.2.7).
const SERVER_TYPE: u32 = 0x1 | 0x2 | 0x8000 | 0x1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareEntry {
    pub name: String,
    /// A [`stype`] value.
    pub share_type: u32,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// NetBIOS name.
    pub name: String,
    pub comment: String,
    pub version_major: u32,
    pub version_minor: u32,
}

/// The srvsvc interface over a fixed share list (the caller decides what is listed).
#[derive(Debug, Clone)]
pub struct Srvsvc {
    pub server: ServerInfo,
    pub shares: Vec<ShareEntry>,
}

impl Srvsvc {
    pub fn new(server: ServerInfo, shares: Vec<ShareEntry>) -> Self {
        Self { server, shares }
    }

    fn share_enum(&self, stub: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut r = NdrReader::new(stub);
        let _server_name = r.unique_string()?;
        // SHARE_ENUM_STRUCT: Level, then the union's discriminant and its container pointer.
        let level = r.u32()?;
        let _discriminant = r.u32()?;
        if r.unique_ptr()? {
            let _entries_read = r.u32()?;
            if r.unique_ptr()? {
                // Clients send an empty container; an array here is not a request.
                return Err(DecodeError::Invalid("input share array"));
            }
        }
        let _preferred_max_len = r.u32()?;
        let resume = if r.unique_ptr()? {
            Some(r.u32()?)
        } else {
            None
        };
        // Everything from the resume point goes into one answer whatever PreferedMaximumLength
        // says (clients pass MAX_PREFERRED_LENGTH; a share list is small), so enumeration
        // never needs ERROR_MORE_DATA rounds.
        let skip = resume.unwrap_or(0) as usize;
        let listed = self.shares.get(skip..).unwrap_or(&[]);

        let mut w = NdrWriter::new();
        w.u32(level);
        w.u32(level);
        let status = match level {
            0 | 1 => {
                w.referent_id();
                w.u32(listed.len() as u32);
                w.referent_id();
                w.u32(listed.len() as u32);
                for s in listed {
                    w.deferred_string(&s.name);
                    if level == 1 {
                        w.u32(s.share_type);
                        w.deferred_string(&s.comment);
                    }
                }
                w.flush_deferred();
                werror::OK
            }
            _ => {
                w.null_ptr();
                werror::INVALID_LEVEL
            }
        };
        // TotalEntries, then the resume handle: everything was returned, so enumeration
        // ends (a zero handle restarts it).
        w.u32(self.shares.len() as u32);
        if resume.is_some() {
            w.referent_id();
            w.u32(0);
        } else {
            w.null_ptr();
        }
        w.u32(status);
        Ok(w.into_bytes())
    }

    fn share_get_info(&self, stub: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut r = NdrReader::new(stub);
        let _server_name = r.unique_string()?;
        // NetName is a [ref] pointer: no referent id on the wire.
        let net_name = r.conformant_varying_string()?;
        let level = r.u32()?;
        let share = self
            .shares
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(&net_name));
        let mut w = NdrWriter::new();
        w.u32(level);
        let status = match (share, level) {
            (Some(s), 0 | 1) => {
                w.referent_id();
                w.deferred_string(&s.name);
                if level == 1 {
                    w.u32(s.share_type);
                    w.deferred_string(&s.comment);
                }
                w.flush_deferred();
                werror::OK
            }
            (None, _) => {
                w.null_ptr();
                werror::NERR_NET_NAME_NOT_FOUND
            }
            (Some(_), _) => {
                w.null_ptr();
                werror::INVALID_LEVEL
            }
        };
        w.u32(status);
        Ok(w.into_bytes())
    }

    fn server_get_info(&self, stub: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut r = NdrReader::new(stub);
        let _server_name = r.unique_string()?;
        let level = r.u32()?;
        let sv = &self.server;
        let mut w = NdrWriter::new();
        w.u32(level);
        let status = match level {
            100 | 101 => {
                w.referent_id();
                w.u32(PLATFORM_ID_NT);
                w.deferred_string(&sv.name);
                if level == 101 {
                    w.u32(sv.version_major);
                    w.u32(sv.version_minor);
                    w.u32(SERVER_TYPE);
                    w.deferred_string(&sv.comment);
                }
                w.flush_deferred();
                werror::OK
            }
            _ => {
                w.null_ptr();
                werror::INVALID_LEVEL
            }
        };
        w.u32(status);
        Ok(w.into_bytes())
    }
}

impl RpcInterface for Srvsvc {
    fn syntax(&self) -> SyntaxId {
        SRVSVC
    }

    fn call(&mut self, _call: CallId, op: u16, stub: &[u8]) -> CallResult {
        let out = match op {
            opnum::NETR_SHARE_ENUM => self.share_enum(stub),
            opnum::NETR_SHARE_GET_INFO => self.share_get_info(stub),
            opnum::NETR_SERVER_GET_INFO => self.server_get_info(stub),
            _ => return CallResult::Fault(fault::NCA_S_OP_RNG_ERROR),
        };
        match out {
            Ok(stub) => CallResult::Reply(stub),
            Err(e) => {
                tracing::debug!(opnum = op, %e, "srvsvc stub data");
                CallResult::Fault(fault::BAD_STUB_DATA)
            }
        }
    }
}
