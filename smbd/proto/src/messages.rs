//! SMB2 request bodies (decoded) and response bodies (encoded), MS-SMB2 2.2.3 - 2.2.40.

use crate::cursor::{slice_at, utf16_to_string, DecodeError, Reader, Writer};
use crate::header::{Command, Header, HEADER_SIZE};

/// SMB2 FileId (MS-SMB2 2.2.14.1): persistent + volatile halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileId {
    pub persistent: u64,
    pub volatile: u64,
}

impl FileId {
    /// All-ones id: "the file opened by the previous request in this compound" (MS-SMB2 3.3.5.2.7.2).
    pub const RELATED: FileId = FileId {
        persistent: u64::MAX,
        volatile: u64::MAX,
    };
    fn read(r: &mut Reader<'_>) -> Result<FileId, DecodeError> {
        Ok(FileId {
            persistent: r.u64()?,
            volatile: r.u64()?,
        })
    }
    fn write(&self, w: &mut Writer) {
        w.u64(self.persistent).u64(self.volatile);
    }
}

pub mod dialect {
    pub const SMB202: u16 = 0x0202;
    pub const SMB210: u16 = 0x0210;
    pub const SMB300: u16 = 0x0300;
    pub const SMB302: u16 = 0x0302;
    pub const SMB311: u16 = 0x0311;
    /// "SMB 2.???" wildcard answered to an SMB1 multi-protocol negotiate (MS-SMB2 3.3.5.3.1).
    pub const WILDCARD: u16 = 0x02FF;
}

pub mod caps {
    pub const DFS: u32 = 0x01;
    pub const LEASING: u32 = 0x02;
    pub const LARGE_MTU: u32 = 0x04;
    pub const MULTI_CHANNEL: u32 = 0x08;
    pub const PERSISTENT_HANDLES: u32 = 0x10;
    pub const DIRECTORY_LEASING: u32 = 0x20;
    pub const ENCRYPTION: u32 = 0x40;
}

pub mod security_mode {
    pub const SIGNING_ENABLED: u16 = 0x1;
    pub const SIGNING_REQUIRED: u16 = 0x2;
}

pub mod negctx {
    pub const PREAUTH_INTEGRITY: u16 = 1;
    pub const ENCRYPTION: u16 = 2;
    pub const COMPRESSION: u16 = 3;
    pub const NETNAME: u16 = 5;
    pub const TRANSPORT: u16 = 6;
    pub const RDMA_TRANSFORM: u16 = 7;
    pub const SIGNING: u16 = 8;
    pub const SHA512: u16 = 1;
}

/// One negotiate context (MS-SMB2 2.2.3.1), data kept raw; typed views below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateContext {
    pub ctx_type: u16,
    pub data: Vec<u8>,
}

impl NegotiateContext {
    /// For PREAUTH_INTEGRITY: (hash algorithms, salt).
    pub fn preauth(&self) -> Result<(Vec<u16>, Vec<u8>), DecodeError> {
        let mut r = Reader::new(&self.data);
        let n = r.u16()? as usize;
        let salt_len = r.u16()? as usize;
        let mut algs = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            algs.push(r.u16()?);
        }
        let salt = r.bytes(salt_len)?.to_vec();
        Ok((algs, salt))
    }
    /// A PREAUTH_INTEGRITY response context (MS-SMB2 2.2.3.1.1): one hash algorithm and the
    /// server's salt.
    pub fn preauth_response(hash: u16, salt: &[u8]) -> NegotiateContext {
        let mut w = Writer::new();
        w.u16(1).u16(salt.len() as u16).u16(hash).bytes(salt);
        NegotiateContext {
            ctx_type: negctx::PREAUTH_INTEGRITY,
            data: w.buf,
        }
    }
    /// An ENCRYPTION or SIGNING response context (MS-SMB2 2.2.3.1.2, 2.2.3.1.7): the one
    /// algorithm chosen (cipher 0 = no common cipher).
    pub fn chosen(ctx_type: u16, id: u16) -> NegotiateContext {
        let mut w = Writer::new();
        w.u16(1).u16(id);
        NegotiateContext {
            ctx_type,
            data: w.buf,
        }
    }
    /// For ENCRYPTION and SIGNING: the list of algorithm ids.
    pub fn id_list(&self) -> Result<Vec<u16>, DecodeError> {
        let mut r = Reader::new(&self.data);
        let n = r.u16()? as usize;
        let mut v = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            v.push(r.u16()?);
        }
        Ok(v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NegotiateRequest {
    pub security_mode: u16,
    pub capabilities: u32,
    pub client_guid: [u8; 16],
    pub dialects: Vec<u16>,
    pub contexts: Vec<NegotiateContext>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionSetupRequest {
    pub flags: u8,
    pub security_mode: u8,
    pub capabilities: u32,
    pub previous_session_id: u64,
    pub buffer: Vec<u8>,
}

pub const SESSION_FLAG_BINDING: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreeConnectRequest {
    pub flags: u16,
    pub path: String,
}

/// A create context (MS-SMB2 2.2.13.2), name as raw bytes ("MxAc", "RqLs", ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateContext {
    pub name: Vec<u8>,
    pub data: Vec<u8>,
}

pub mod ctx {
    pub const MXAC: &[u8] = b"MxAc";
    pub const QFID: &[u8] = b"QFid";
    pub const RQLS: &[u8] = b"RqLs";
    pub const DHNQ: &[u8] = b"DHnQ";
    pub const DHNC: &[u8] = b"DHnC";
    pub const DH2Q: &[u8] = b"DH2Q";
    pub const DH2C: &[u8] = b"DH2C";
    pub const EXTA: &[u8] = b"ExtA";
    pub const SECD: &[u8] = b"SecD";
    pub const ALSI: &[u8] = b"AlSi";
    pub const TWRP: &[u8] = b"TWrp";
    pub const APP_INSTANCE_ID: &[u8] = &[
        0x45, 0xBC, 0xA6, 0x6A, 0xEF, 0xA7, 0xF7, 0x4A, 0x90, 0x08, 0xFA, 0x46, 0x2E, 0x14, 0x4D,
        0x74,
    ];
}

/// Lease request context RqLs (MS-SMB2 2.2.13.2.8 v1 = 32 bytes, 2.2.13.2.10 v2 = 52 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseContext {
    pub key: u128,
    pub state: u32,
    pub flags: u32,
    pub duration: u64,
    /// v2 only.
    pub parent_key: Option<u128>,
    /// v2 only (`None` = v1).
    pub epoch: Option<u16>,
}

pub const LEASE_FLAG_PARENT_KEY_SET: u32 = 0x4;
pub const LEASE_FLAG_BREAK_IN_PROGRESS: u32 = 0x2;

impl LeaseContext {
    pub fn decode(data: &[u8]) -> Result<LeaseContext, DecodeError> {
        let mut r = Reader::new(data);
        let key = r.u128()?;
        let state = r.u32()?;
        let flags = r.u32()?;
        let duration = r.u64()?;
        if data.len() >= 52 {
            let parent = r.u128()?;
            let epoch = r.u16()?;
            Ok(LeaseContext {
                key,
                state,
                flags,
                duration,
                parent_key: (flags & LEASE_FLAG_PARENT_KEY_SET != 0).then_some(parent),
                epoch: Some(epoch),
            })
        } else {
            Ok(LeaseContext {
                key,
                state,
                flags,
                duration,
                parent_key: None,
                epoch: None,
            })
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u128(self.key).u32(self.state);
        match self.epoch {
            None => {
                w.u32(self.flags).u64(0);
            }
            Some(epoch) => {
                let flags = if self.parent_key.is_some() {
                    self.flags | LEASE_FLAG_PARENT_KEY_SET
                } else {
                    self.flags & !LEASE_FLAG_PARENT_KEY_SET
                };
                w.u32(flags)
                    .u64(0)
                    .u128(self.parent_key.unwrap_or(0))
                    .u16(epoch)
                    .u16(0);
            }
        }
        w.buf
    }
}

pub mod oplock_level {
    pub const NONE: u8 = 0;
    pub const II: u8 = 1;
    pub const EXCLUSIVE: u8 = 8;
    pub const BATCH: u8 = 9;
    pub const LEASE: u8 = 0xFF;
}

pub mod disposition {
    pub const SUPERSEDE: u32 = 0;
    pub const OPEN: u32 = 1;
    pub const CREATE: u32 = 2;
    pub const OPEN_IF: u32 = 3;
    pub const OVERWRITE: u32 = 4;
    pub const OVERWRITE_IF: u32 = 5;
}

pub mod create_options {
    pub const DIRECTORY_FILE: u32 = 0x0000_0001;
    pub const WRITE_THROUGH: u32 = 0x0000_0002;
    pub const SEQUENTIAL_ONLY: u32 = 0x0000_0004;
    pub const NON_DIRECTORY_FILE: u32 = 0x0000_0040;
    pub const DELETE_ON_CLOSE: u32 = 0x0000_1000;
    pub const OPEN_BY_FILE_ID: u32 = 0x0000_2000;
    pub const OPEN_REPARSE_POINT: u32 = 0x0020_0000;
}

pub mod create_action {
    pub const SUPERSEDED: u32 = 0;
    pub const OPENED: u32 = 1;
    pub const CREATED: u32 = 2;
    pub const OVERWRITTEN: u32 = 3;
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateRequest {
    pub security_flags: u8,
    pub oplock_level: u8,
    pub impersonation_level: u32,
    pub desired_access: u32,
    pub file_attributes: u32,
    pub share_access: u32,
    pub disposition: u32,
    pub options: u32,
    pub name: String,
    pub contexts: Vec<CreateContext>,
}

impl CreateRequest {
    pub fn context(&self, name: &[u8]) -> Option<&CreateContext> {
        self.contexts.iter().find(|c| c.name == name)
    }
}

pub const CLOSE_FLAG_POSTQUERY_ATTRIB: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CloseRequest {
    pub flags: u16,
    pub file_id: FileId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadRequest {
    pub padding: u8,
    pub flags: u8,
    pub length: u32,
    pub offset: u64,
    pub file_id: FileId,
    pub minimum_count: u32,
    pub channel: u32,
    pub remaining_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteRequest {
    pub offset: u64,
    pub file_id: FileId,
    pub channel: u32,
    pub remaining_bytes: u32,
    pub flags: u32,
    pub data: Vec<u8>,
}

/// WRITE request Flags (MS-SMB2 2.2.21).
pub mod write_flags {
    pub const WRITE_THROUGH: u32 = 0x1;
    pub const WRITE_UNBUFFERED: u32 = 0x2;
}

pub mod lock_flags {
    pub const SHARED: u32 = 0x1;
    pub const EXCLUSIVE: u32 = 0x2;
    pub const UNLOCK: u32 = 0x4;
    pub const FAIL_IMMEDIATELY: u32 = 0x10;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockElement {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockRequest {
    pub lock_sequence: u32,
    pub file_id: FileId,
    pub locks: Vec<LockElement>,
}

pub mod fsctl {
    pub const DFS_GET_REFERRALS: u32 = 0x0006_0194;
    pub const DFS_GET_REFERRALS_EX: u32 = 0x0006_01B0;
    pub const PIPE_TRANSCEIVE: u32 = 0x0011_C017;
    pub const VALIDATE_NEGOTIATE_INFO: u32 = 0x0014_0204;
    pub const QUERY_NETWORK_INTERFACE_INFO: u32 = 0x0014_01FC;
    pub const SRV_REQUEST_RESUME_KEY: u32 = 0x0014_0078;
    pub const SRV_COPYCHUNK: u32 = 0x0014_40F2;
    pub const SRV_COPYCHUNK_WRITE: u32 = 0x0014_80F2;
    pub const SRV_ENUMERATE_SNAPSHOTS: u32 = 0x0014_4064;
    pub const SET_SPARSE: u32 = 0x0009_00C4;
    pub const GET_REPARSE_POINT: u32 = 0x0009_00A8;
    pub const CREATE_OR_GET_OBJECT_ID: u32 = 0x0009_00C0;
    pub const QUERY_ALLOCATED_RANGES: u32 = 0x0009_40CF;
    pub const SET_ZERO_DATA: u32 = 0x0009_80C8;
    pub const FILE_LEVEL_TRIM: u32 = 0x0009_8208;
}

pub const IOCTL_IS_FSCTL: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IoctlRequest {
    pub ctl_code: u32,
    pub file_id: FileId,
    pub input: Vec<u8>,
    pub max_input_response: u32,
    pub max_output_response: u32,
    pub flags: u32,
}

pub mod query_dir_flags {
    pub const RESTART_SCANS: u8 = 0x01;
    pub const RETURN_SINGLE_ENTRY: u8 = 0x02;
    pub const INDEX_SPECIFIED: u8 = 0x04;
    pub const REOPEN: u8 = 0x10;
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryDirectoryRequest {
    pub info_class: u8,
    pub flags: u8,
    pub file_index: u32,
    pub file_id: FileId,
    pub pattern: String,
    pub output_buffer_length: u32,
}

pub const WATCH_TREE: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangeNotifyRequest {
    pub flags: u16,
    pub output_buffer_length: u32,
    pub file_id: FileId,
    pub completion_filter: u32,
}

pub mod info_type {
    pub const FILE: u8 = 1;
    pub const FILESYSTEM: u8 = 2;
    pub const SECURITY: u8 = 3;
    pub const QUOTA: u8 = 4;
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryInfoRequest {
    pub info_type: u8,
    pub class: u8,
    pub output_buffer_length: u32,
    pub additional_information: u32,
    pub flags: u32,
    pub file_id: FileId,
    pub input: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetInfoRequest {
    pub info_type: u8,
    pub class: u8,
    pub additional_information: u32,
    pub file_id: FileId,
    pub buffer: Vec<u8>,
}

/// OPLOCK_BREAK acknowledgement: oplock (2.2.24.1) or lease (2.2.24.2) flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakAck {
    Oplock { level: u8, file_id: FileId },
    Lease { flags: u32, key: u128, state: u32 },
}

/// A decoded request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Negotiate(NegotiateRequest),
    SessionSetup(SessionSetupRequest),
    Logoff,
    TreeConnect(TreeConnectRequest),
    TreeDisconnect,
    Create(CreateRequest),
    Close(CloseRequest),
    Flush { file_id: FileId },
    Read(ReadRequest),
    Write(WriteRequest),
    Lock(LockRequest),
    Ioctl(IoctlRequest),
    Cancel,
    Echo,
    QueryDirectory(QueryDirectoryRequest),
    ChangeNotify(ChangeNotifyRequest),
    QueryInfo(QueryInfoRequest),
    SetInfo(SetInfoRequest),
    OplockBreak(BreakAck),
}

fn check_size(r: &mut Reader<'_>, expected: u16) -> Result<(), DecodeError> {
    let s = r.u16()?;
    // Clients send the fixed size with the variable part's first byte counted (odd sizes).
    if s != expected {
        return Err(DecodeError::BadStructureSize(s));
    }
    Ok(())
}

impl Request {
    /// Decode one message (header + body) of a possibly compound chain.
    pub fn decode(msg: &[u8]) -> Result<(Header, Request), DecodeError> {
        let hdr = Header::decode(msg)?;
        let cmd = Command::from_u16(hdr.command).ok_or(DecodeError::UnknownCommand(hdr.command))?;
        let req = Self::decode_body(cmd, msg)?;
        Ok((hdr, req))
    }

    /// Decode the body of `cmd`; `msg` starts at the SMB2 header.
    pub fn decode_body(cmd: Command, msg: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::at(msg, HEADER_SIZE);
        Ok(match cmd {
            Command::Negotiate => {
                check_size(&mut r, 36)?;
                let count = r.u16()? as usize;
                let security_mode = r.u16()?;
                r.skip(2)?;
                let capabilities = r.u32()?;
                let client_guid = r.array16()?;
                let ctx_offset = r.u32()? as usize;
                let ctx_count = r.u16()? as usize;
                r.skip(2)?;
                let mut dialects = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    dialects.push(r.u16()?);
                }
                let mut contexts = Vec::new();
                if dialects.contains(&dialect::SMB311) && ctx_count > 0 {
                    let mut off = ctx_offset;
                    for _ in 0..ctx_count {
                        let mut cr = Reader::at(msg, off);
                        let ctx_type = cr.u16()?;
                        let len = cr.u16()? as usize;
                        cr.skip(4)?;
                        let data = cr.bytes(len)?.to_vec();
                        contexts.push(NegotiateContext { ctx_type, data });
                        off = (cr.pos() + 7) & !7;
                    }
                }
                Request::Negotiate(NegotiateRequest {
                    security_mode,
                    capabilities,
                    client_guid,
                    dialects,
                    contexts,
                })
            }
            Command::SessionSetup => {
                check_size(&mut r, 25)?;
                let flags = r.u8()?;
                let security_mode = r.u8()?;
                let capabilities = r.u32()?;
                r.skip(4)?;
                let off = r.u16()? as usize;
                let len = r.u16()? as usize;
                let previous_session_id = r.u64()?;
                let buffer = slice_at(msg, off, len)?.to_vec();
                Request::SessionSetup(SessionSetupRequest {
                    flags,
                    security_mode,
                    capabilities,
                    previous_session_id,
                    buffer,
                })
            }
            Command::Logoff => {
                check_size(&mut r, 4)?;
                Request::Logoff
            }
            Command::TreeConnect => {
                check_size(&mut r, 9)?;
                let flags = r.u16()?;
                let off = r.u16()? as usize;
                let len = r.u16()? as usize;
                let path = utf16_to_string(slice_at(msg, off, len)?)?;
                Request::TreeConnect(TreeConnectRequest { flags, path })
            }
            Command::TreeDisconnect => {
                check_size(&mut r, 4)?;
                Request::TreeDisconnect
            }
            Command::Create => {
                check_size(&mut r, 57)?;
                let security_flags = r.u8()?;
                let oplock_level = r.u8()?;
                let impersonation_level = r.u32()?;
                r.skip(16)?; // SmbCreateFlags + Reserved
                let desired_access = r.u32()?;
                let file_attributes = r.u32()?;
                let share_access = r.u32()?;
                let disposition = r.u32()?;
                let options = r.u32()?;
                let name_off = r.u16()? as usize;
                let name_len = r.u16()? as usize;
                let ctx_off = r.u32()? as usize;
                let ctx_len = r.u32()? as usize;
                let name = utf16_to_string(slice_at(msg, name_off, name_len)?)?;
                let contexts = decode_create_contexts(slice_at(msg, ctx_off, ctx_len)?)?;
                Request::Create(CreateRequest {
                    security_flags,
                    oplock_level,
                    impersonation_level,
                    desired_access,
                    file_attributes,
                    share_access,
                    disposition,
                    options,
                    name,
                    contexts,
                })
            }
            Command::Close => {
                check_size(&mut r, 24)?;
                let flags = r.u16()?;
                r.skip(4)?;
                let file_id = FileId::read(&mut r)?;
                Request::Close(CloseRequest { flags, file_id })
            }
            Command::Flush => {
                check_size(&mut r, 24)?;
                r.skip(6)?;
                Request::Flush {
                    file_id: FileId::read(&mut r)?,
                }
            }
            Command::Read => {
                check_size(&mut r, 49)?;
                let padding = r.u8()?;
                let flags = r.u8()?;
                let length = r.u32()?;
                let offset = r.u64()?;
                let file_id = FileId::read(&mut r)?;
                let minimum_count = r.u32()?;
                let channel = r.u32()?;
                let remaining_bytes = r.u32()?;
                Request::Read(ReadRequest {
                    padding,
                    flags,
                    length,
                    offset,
                    file_id,
                    minimum_count,
                    channel,
                    remaining_bytes,
                })
            }
            Command::Write => {
                check_size(&mut r, 49)?;
                let data_off = r.u16()? as usize;
                let len = r.u32()? as usize;
                let offset = r.u64()?;
                let file_id = FileId::read(&mut r)?;
                let channel = r.u32()?;
                let remaining_bytes = r.u32()?;
                r.skip(4)?; // WriteChannelInfoOffset/Length
                let flags = r.u32()?;
                let data = slice_at(msg, data_off, len)?.to_vec();
                Request::Write(WriteRequest {
                    offset,
                    file_id,
                    channel,
                    remaining_bytes,
                    flags,
                    data,
                })
            }
            Command::Lock => {
                check_size(&mut r, 48)?;
                let count = r.u16()? as usize;
                let lock_sequence = r.u32()?;
                let file_id = FileId::read(&mut r)?;
                let mut locks = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    let offset = r.u64()?;
                    let length = r.u64()?;
                    let flags = r.u32()?;
                    r.skip(4)?;
                    locks.push(LockElement {
                        offset,
                        length,
                        flags,
                    });
                }
                Request::Lock(LockRequest {
                    lock_sequence,
                    file_id,
                    locks,
                })
            }
            Command::Ioctl => {
                check_size(&mut r, 57)?;
                r.skip(2)?;
                let ctl_code = r.u32()?;
                let file_id = FileId::read(&mut r)?;
                let in_off = r.u32()? as usize;
                let in_len = r.u32()? as usize;
                let max_input_response = r.u32()?;
                r.skip(8)?; // OutputOffset/OutputCount
                let max_output_response = r.u32()?;
                let flags = r.u32()?;
                let input = slice_at(msg, in_off, in_len)?.to_vec();
                Request::Ioctl(IoctlRequest {
                    ctl_code,
                    file_id,
                    input,
                    max_input_response,
                    max_output_response,
                    flags,
                })
            }
            Command::Cancel => {
                check_size(&mut r, 4)?;
                Request::Cancel
            }
            Command::Echo => {
                check_size(&mut r, 4)?;
                Request::Echo
            }
            Command::QueryDirectory => {
                check_size(&mut r, 33)?;
                let info_class = r.u8()?;
                let flags = r.u8()?;
                let file_index = r.u32()?;
                let file_id = FileId::read(&mut r)?;
                let off = r.u16()? as usize;
                let len = r.u16()? as usize;
                let output_buffer_length = r.u32()?;
                let pattern = utf16_to_string(slice_at(msg, off, len)?)?;
                Request::QueryDirectory(QueryDirectoryRequest {
                    info_class,
                    flags,
                    file_index,
                    file_id,
                    pattern,
                    output_buffer_length,
                })
            }
            Command::ChangeNotify => {
                check_size(&mut r, 32)?;
                let flags = r.u16()?;
                let output_buffer_length = r.u32()?;
                let file_id = FileId::read(&mut r)?;
                let completion_filter = r.u32()?;
                Request::ChangeNotify(ChangeNotifyRequest {
                    flags,
                    output_buffer_length,
                    file_id,
                    completion_filter,
                })
            }
            Command::QueryInfo => {
                check_size(&mut r, 41)?;
                let info_type = r.u8()?;
                let class = r.u8()?;
                let output_buffer_length = r.u32()?;
                let in_off = r.u16()? as usize;
                r.skip(2)?;
                let in_len = r.u32()? as usize;
                let additional_information = r.u32()?;
                let flags = r.u32()?;
                let file_id = FileId::read(&mut r)?;
                let input = slice_at(msg, in_off, in_len)?.to_vec();
                Request::QueryInfo(QueryInfoRequest {
                    info_type,
                    class,
                    output_buffer_length,
                    additional_information,
                    flags,
                    file_id,
                    input,
                })
            }
            Command::SetInfo => {
                check_size(&mut r, 33)?;
                let info_type = r.u8()?;
                let class = r.u8()?;
                let len = r.u32()? as usize;
                let off = r.u16()? as usize;
                r.skip(2)?;
                let additional_information = r.u32()?;
                let file_id = FileId::read(&mut r)?;
                let buffer = slice_at(msg, off, len)?.to_vec();
                Request::SetInfo(SetInfoRequest {
                    info_type,
                    class,
                    additional_information,
                    file_id,
                    buffer,
                })
            }
            Command::OplockBreak => {
                let size = r.u16()?;
                match size {
                    24 => {
                        let level = r.u8()?;
                        r.skip(5)?;
                        let file_id = FileId::read(&mut r)?;
                        Request::OplockBreak(BreakAck::Oplock { level, file_id })
                    }
                    36 => {
                        r.skip(2)?;
                        let flags = r.u32()?;
                        let key = r.u128()?;
                        let state = r.u32()?;
                        Request::OplockBreak(BreakAck::Lease { flags, key, state })
                    }
                    s => return Err(DecodeError::BadStructureSize(s)),
                }
            }
        })
    }
}

/// Parse a chain of create contexts (MS-SMB2 2.2.13.2).
pub fn decode_create_contexts(buf: &[u8]) -> Result<Vec<CreateContext>, DecodeError> {
    let mut out = Vec::new();
    if buf.is_empty() {
        return Ok(out);
    }
    let mut off = 0usize;
    loop {
        let mut r = Reader::at(buf, off);
        let next = r.u32()? as usize;
        let name_off = r.u16()? as usize;
        let name_len = r.u16()? as usize;
        r.skip(2)?;
        let data_off = r.u16()? as usize;
        let data_len = r.u32()? as usize;
        let rel = &buf[off..];
        let name = slice_at(rel, name_off, name_len)?.to_vec();
        let data = slice_at(rel, data_off, data_len)?.to_vec();
        out.push(CreateContext { name, data });
        if next == 0 {
            return Ok(out);
        }
        if next < 16 || out.len() > 64 {
            return Err(DecodeError::Invalid("create context chain"));
        }
        off = off.checked_add(next).ok_or(DecodeError::BadOffset)?;
        if off >= buf.len() {
            return Err(DecodeError::BadOffset);
        }
    }
}

/// Encode a chain of create contexts; each is 8-byte aligned.
pub fn encode_create_contexts(ctxs: &[CreateContext]) -> Vec<u8> {
    let mut w = Writer::new();
    for (i, c) in ctxs.iter().enumerate() {
        let start = w.len();
        let name_off = 16usize;
        let data_off = (name_off + c.name.len() + 7) & !7;
        w.u32(0)
            .u16(name_off as u16)
            .u16(c.name.len() as u16)
            .u16(0)
            .u16(if c.data.is_empty() {
                0
            } else {
                data_off as u16
            })
            .u32(c.data.len() as u32)
            .bytes(&c.name);
        while w.len() - start < data_off {
            w.u8(0);
        }
        w.bytes(&c.data);
        if i + 1 < ctxs.len() {
            w.align(8);
            let next = (w.len() - start) as u32;
            w.set_u32(start, next);
        }
    }
    w.buf
}

// ---------------------------------------------------------------------------------------------
// Responses

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NegotiateResponse {
    pub security_mode: u16,
    pub dialect: u16,
    pub server_guid: [u8; 16],
    pub capabilities: u32,
    pub max_transact: u32,
    pub max_read: u32,
    pub max_write: u32,
    pub system_time: u64,
    pub start_time: u64,
    pub security_buffer: Vec<u8>,
    pub contexts: Vec<NegotiateContext>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateResponse {
    pub oplock_level: u8,
    pub flags: u8,
    pub action: u32,
    pub creation_time: u64,
    pub last_access_time: u64,
    pub last_write_time: u64,
    pub change_time: u64,
    pub allocation_size: u64,
    pub end_of_file: u64,
    pub attributes: u32,
    pub file_id: FileId,
    pub contexts: Vec<CreateContext>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloseResponse {
    pub flags: u16,
    pub creation_time: u64,
    pub last_access_time: u64,
    pub last_write_time: u64,
    pub change_time: u64,
    pub allocation_size: u64,
    pub end_of_file: u64,
    pub attributes: u32,
}

pub mod share_type {
    pub const DISK: u8 = 1;
    pub const PIPE: u8 = 2;
}

pub mod share_flags {
    pub const DFS: u32 = 0x01;
    pub const DFS_ROOT: u32 = 0x02;
    pub const NO_CACHING: u32 = 0x30;
    pub const ENCRYPT_DATA: u32 = 0x8000;
}

/// TREE_CONNECT response Capabilities (MS-SMB2 2.2.10).
pub mod share_caps {
    pub const DFS: u32 = 0x08;
    pub const CONTINUOUS_AVAILABILITY: u32 = 0x10;
    pub const SCALEOUT: u32 = 0x20;
    pub const CLUSTER: u32 = 0x40;
    pub const ASYMMETRIC: u32 = 0x80;
}

/// A response body; [`Response::encode_body`] writes it after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// ERROR response (MS-SMB2 2.2.2); also used for any failed command.
    Error {
        data: Vec<u8>,
    },
    Negotiate(NegotiateResponse),
    SessionSetup {
        flags: u16,
        buffer: Vec<u8>,
    },
    Logoff,
    TreeConnect {
        share_type: u8,
        flags: u32,
        capabilities: u32,
        maximal_access: u32,
    },
    TreeDisconnect,
    Create(CreateResponse),
    Close(CloseResponse),
    Flush,
    Read {
        data: Vec<u8>,
        /// The byte count sent on the request's RDMA channel (MS-SMB2 2.2.20); 0 for data
        /// returned inline in `data`.
        data_remaining: u32,
        /// Zero bytes between the fixed body and the data (DataOffset moves accordingly).
        padding: u8,
    },
    Write {
        count: u32,
    },
    Lock,
    Ioctl {
        ctl_code: u32,
        file_id: FileId,
        input: Vec<u8>,
        output: Vec<u8>,
    },
    Echo,
    QueryDirectory {
        data: Vec<u8>,
    },
    ChangeNotify {
        data: Vec<u8>,
    },
    QueryInfo {
        data: Vec<u8>,
    },
    SetInfo,
    OplockBreak {
        level: u8,
        file_id: FileId,
    },
    LeaseBreakAck {
        flags: u32,
        key: u128,
        state: u32,
    },
    /// Unsolicited lease break notification (MS-SMB2 2.2.23.2).
    LeaseBreakNotification {
        epoch: u16,
        flags: u32,
        key: u128,
        current: u32,
        new: u32,
    },
}

/// Offset of the next byte from the header start, as a u16/u32 field value.
fn off(w: &Writer, base: usize) -> usize {
    w.len() - base
}

impl Response {
    /// The ERROR response of a QUERY_INFO whose output buffer is too small for the answer
    /// (STATUS_BUFFER_TOO_SMALL): its ErrorData is the size needed as a u32 (MS-SMB2 3.3.5.20.3).
    pub fn buffer_too_small(required: u32) -> Response {
        Response::Error {
            data: required.to_le_bytes().to_vec(),
        }
    }

    /// Encode the body after a header that starts at `base` in `w`.
    pub fn encode_body(&self, w: &mut Writer, base: usize) {
        match self {
            Response::Error { data } => {
                w.u16(9).u8(0).u8(0).u32(data.len() as u32);
                if data.is_empty() {
                    w.u8(0);
                } else {
                    w.bytes(data);
                }
            }
            Response::Negotiate(n) => {
                w.u16(65)
                    .u16(n.security_mode)
                    .u16(n.dialect)
                    .u16(n.contexts.len() as u16)
                    .bytes(&n.server_guid)
                    .u32(n.capabilities)
                    .u32(n.max_transact)
                    .u32(n.max_read)
                    .u32(n.max_write)
                    .u64(n.system_time)
                    .u64(n.start_time);
                let sec_off = off(w, base) + 8;
                w.u16(sec_off as u16).u16(n.security_buffer.len() as u16);
                let ctx_off_pos = w.len();
                w.u32(0);
                w.bytes(&n.security_buffer);
                if n.contexts.is_empty() {
                    if n.security_buffer.is_empty() {
                        w.u8(0);
                    }
                } else {
                    while !off(w, base).is_multiple_of(8) {
                        w.u8(0);
                    }
                    let co = off(w, base) as u32;
                    w.set_u32(ctx_off_pos, co);
                    for (i, c) in n.contexts.iter().enumerate() {
                        w.u16(c.ctx_type)
                            .u16(c.data.len() as u16)
                            .u32(0)
                            .bytes(&c.data);
                        if i + 1 < n.contexts.len() {
                            while !off(w, base).is_multiple_of(8) {
                                w.u8(0);
                            }
                        }
                    }
                }
            }
            Response::SessionSetup { flags, buffer } => {
                w.u16(9).u16(*flags);
                let o = off(w, base) + 4;
                w.u16(if buffer.is_empty() { 0 } else { o as u16 })
                    .u16(buffer.len() as u16)
                    .bytes(buffer);
                if buffer.is_empty() {
                    w.u8(0);
                }
            }
            Response::Logoff | Response::TreeDisconnect | Response::Flush | Response::Lock => {
                w.u16(4).u16(0);
            }
            Response::Echo | Response::SetInfo => {
                w.u16(if matches!(self, Response::SetInfo) {
                    2
                } else {
                    4
                });
                if matches!(self, Response::Echo) {
                    w.u16(0);
                }
            }
            Response::TreeConnect {
                share_type,
                flags,
                capabilities,
                maximal_access,
            } => {
                w.u16(16)
                    .u8(*share_type)
                    .u8(0)
                    .u32(*flags)
                    .u32(*capabilities)
                    .u32(*maximal_access);
            }
            Response::Create(c) => {
                w.u16(89)
                    .u8(c.oplock_level)
                    .u8(c.flags)
                    .u32(c.action)
                    .u64(c.creation_time)
                    .u64(c.last_access_time)
                    .u64(c.last_write_time)
                    .u64(c.change_time)
                    .u64(c.allocation_size)
                    .u64(c.end_of_file)
                    .u32(c.attributes)
                    .u32(0);
                c.file_id.write(w);
                let ctx = encode_create_contexts(&c.contexts);
                if ctx.is_empty() {
                    w.u32(0).u32(0).u8(0);
                } else {
                    let o = (off(w, base) + 8 + 7) & !7;
                    w.u32(o as u32).u32(ctx.len() as u32);
                    while off(w, base) < o {
                        w.u8(0);
                    }
                    w.bytes(&ctx);
                }
            }
            Response::Close(c) => {
                w.u16(60)
                    .u16(c.flags)
                    .u32(0)
                    .u64(c.creation_time)
                    .u64(c.last_access_time)
                    .u64(c.last_write_time)
                    .u64(c.change_time)
                    .u64(c.allocation_size)
                    .u64(c.end_of_file)
                    .u32(c.attributes);
            }
            Response::Read {
                data,
                data_remaining,
                padding,
            } => {
                let o = off(w, base) + READ_RESPONSE_BODY_SIZE + *padding as usize;
                read_response_fixed_body(w, o, data.len() as u32, *data_remaining);
                for _ in 0..*padding {
                    w.u8(0);
                }
                w.bytes(data);
                // An empty inline Buffer still gets its one byte (the StructureSize of 17
                // counts it). Not after an RDMA channel's transfer (DataRemaining set): the
                // response ends at DataOffset, as ksmbd's does. The Linux client over SMB Direct
                // reads an RDMA READ response only up to DataOffset and never drains what
                // follows, so one byte more stays in its reassembly queue, is taken as the
                // start of the next message and corrupts its queue accounting (6.1:
                // NULL dereference in smbd_recv_buf).
                if data.is_empty() && *padding == 0 && *data_remaining == 0 {
                    w.u8(0);
                }
            }
            Response::Write { count } => {
                w.u16(17).u16(0).u32(*count).u32(0).u16(0).u16(0);
            }
            Response::Ioctl {
                ctl_code,
                file_id,
                input,
                output,
            } => {
                w.u16(49).u16(0).u32(*ctl_code);
                file_id.write(w);
                let in_off = off(w, base) + 24;
                let out_off = (in_off + input.len() + 7) & !7;
                w.u32(in_off as u32)
                    .u32(input.len() as u32)
                    .u32(if output.is_empty() {
                        in_off as u32 + input.len() as u32
                    } else {
                        out_off as u32
                    })
                    .u32(output.len() as u32)
                    .u32(0)
                    .u32(0)
                    .bytes(input);
                if !output.is_empty() {
                    while off(w, base) < out_off {
                        w.u8(0);
                    }
                    w.bytes(output);
                }
            }
            Response::QueryDirectory { data }
            | Response::ChangeNotify { data }
            | Response::QueryInfo { data } => {
                let size = match self {
                    Response::QueryDirectory { .. } | Response::QueryInfo { .. } => 9,
                    _ => 9,
                };
                let o = off(w, base) + 8;
                w.u16(size)
                    .u16(if data.is_empty() { 0 } else { o as u16 })
                    .u32(data.len() as u32)
                    .bytes(data);
                if data.is_empty() {
                    w.u8(0);
                }
            }
            Response::OplockBreak { level, file_id } => {
                w.u16(24).u8(*level).u8(0).u32(0);
                file_id.write(w);
            }
            Response::LeaseBreakAck { flags, key, state } => {
                w.u16(36).u16(0).u32(*flags).u128(*key).u32(*state).u64(0);
            }
            Response::LeaseBreakNotification {
                epoch,
                flags,
                key,
                current,
                new,
            } => {
                w.u16(44)
                    .u16(*epoch)
                    .u32(*flags)
                    .u128(*key)
                    .u32(*current)
                    .u32(*new)
                    .u32(0)
                    .u32(0)
                    .u32(0);
            }
        }
    }
}

/// Encode a full message: header then body. The header's fields are written as given.
pub fn encode_message(hdr: &Header, body: &Response) -> Vec<u8> {
    let mut w = Writer::new();
    hdr.encode(&mut w);
    body.encode_body(&mut w, 0);
    w.buf
}

/// Bytes of a READ response's fixed body (MS-SMB2 2.2.20), before its padding and data.
pub const READ_RESPONSE_BODY_SIZE: usize = 16;

/// Bytes of a READ response before its padding and data: the header and the fixed body.
pub const READ_RESPONSE_HEAD: usize = HEADER_SIZE + READ_RESPONSE_BODY_SIZE;

/// The fixed body of a READ response (MS-SMB2 2.2.20): StructureSize 17, DataOffset from the
/// start of the SMB2 header, Reserved, DataLength, DataRemaining, Reserved2.
fn read_response_fixed_body(w: &mut Writer, data_offset: usize, data_len: u32, remaining: u32) {
    w.u16(17)
        .u8(data_offset as u8)
        .u8(0)
        .u32(data_len)
        .u32(remaining)
        .u32(0);
}

/// Write a READ response's header and fixed body (MS-SMB2 2.2.20) in place, so that its data
/// can be read straight into the final buffer: `msg` is the whole message, whose first
/// [`READ_RESPONSE_HEAD`] + `padding` bytes were reserved for them, then the data, which
/// becomes DataLength. The padding is zeroed. For non-empty data the bytes are those
/// [`encode_message`] makes of `Response::Read` with that data (empty data there gets a byte
/// of Buffer this layout has no room for). `Err(Truncated)` when `msg` is shorter than the
/// reserved bytes, `Err(Invalid)` when the data does not fit DataLength.
pub fn write_read_response_head(
    msg: &mut [u8],
    hdr: &Header,
    data_remaining: u32,
    padding: u8,
) -> Result<(), DecodeError> {
    let data_offset = READ_RESPONSE_HEAD + padding as usize;
    let data_len = msg
        .len()
        .checked_sub(data_offset)
        .ok_or(DecodeError::Truncated)?;
    let data_len = u32::try_from(data_len).map_err(|_| DecodeError::Invalid("DataLength"))?;
    let mut w = Writer::with(Vec::with_capacity(READ_RESPONSE_HEAD));
    hdr.encode(&mut w);
    read_response_fixed_body(&mut w, data_offset, data_len, data_remaining);
    msg.get_mut(..w.buf.len())
        .ok_or(DecodeError::Truncated)?
        .copy_from_slice(&w.buf);
    if let Some(pad) = msg.get_mut(w.buf.len()..data_offset) {
        pad.fill(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_too_small_carries_the_size_needed() {
        assert_eq!(
            Response::buffer_too_small(0x0102_0304),
            Response::Error {
                data: vec![4, 3, 2, 1]
            }
        );
    }

    #[test]
    fn negotiate_response_contexts_decode_back() {
        let salt = [7u8; 32];
        let p = NegotiateContext::preauth_response(negctx::SHA512, &salt);
        assert_eq!(p.ctx_type, negctx::PREAUTH_INTEGRITY);
        assert_eq!(&p.data[..6], &[1, 0, 32, 0, 1, 0]);
        assert_eq!(p.preauth().unwrap(), (vec![negctx::SHA512], salt.to_vec()));
        let c = NegotiateContext::chosen(negctx::ENCRYPTION, 4);
        assert_eq!(
            (c.ctx_type, c.data.as_slice()),
            (negctx::ENCRYPTION, &[1, 0, 4, 0][..])
        );
        assert_eq!(c.id_list().unwrap(), vec![4]);
    }
    use crate::cursor::string_to_utf16;

    fn req_header(cmd: Command) -> Writer {
        let mut w = Writer::new();
        Header {
            command: cmd as u16,
            credits: 1,
            message_id: 7,
            ..Default::default()
        }
        .encode(&mut w);
        w
    }

    #[test]
    fn create_request_with_contexts_roundtrip() {
        let mut w = req_header(Command::Create);
        let name = string_to_utf16("dir\\file.txt");
        let lease = LeaseContext {
            key: 0x1122,
            state: 7,
            flags: 0,
            duration: 0,
            parent_key: None,
            epoch: Some(3),
        };
        let ctxs = encode_create_contexts(&[
            CreateContext {
                name: b"MxAc".to_vec(),
                data: vec![],
            },
            CreateContext {
                name: b"RqLs".to_vec(),
                data: lease.encode(),
            },
        ]);
        let name_off = 64 + 56;
        let ctx_off = (name_off + name.len() + 7) & !7;
        w.u16(57)
            .u8(0)
            .u8(oplock_level::LEASE)
            .u32(2)
            .zeros(16)
            .u32(0x8000_0000)
            .u32(0x80)
            .u32(7)
            .u32(disposition::OPEN_IF)
            .u32(0)
            .u16(name_off as u16)
            .u16(name.len() as u16)
            .u32(ctx_off as u32)
            .u32(ctxs.len() as u32)
            .bytes(&name);
        while w.len() < ctx_off {
            w.u8(0);
        }
        w.bytes(&ctxs);
        let (hdr, req) = Request::decode(&w.buf).unwrap();
        assert_eq!(hdr.message_id, 7);
        let Request::Create(c) = req else {
            panic!("not a create")
        };
        assert_eq!(c.name, "dir\\file.txt");
        assert_eq!(c.contexts.len(), 2);
        let l = LeaseContext::decode(&c.context(ctx::RQLS).unwrap().data).unwrap();
        assert_eq!(l, lease);
    }

    #[test]
    fn read_response_padding_moves_data_offset() {
        let body = |padding| {
            let mut w = Writer::new();
            Response::Read {
                data: b"abc".to_vec(),
                data_remaining: 0,
                padding,
            }
            .encode_body(&mut w, 0);
            w.buf
        };
        let plain = body(0);
        let padded = body(8);
        assert_eq!(padded[2], plain[2] + 8);
        assert_eq!(&padded[16..24], &[0u8; 8]);
        assert_eq!(&padded[24..27], b"abc");
        assert_eq!(padded.len(), plain.len() + 8);
    }

    #[test]
    fn read_response_head_in_place_is_the_encoders() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let sync = Header {
            command: Command::Read as u16,
            credits: 3,
            message_id: 0x1122_3344,
            session_id: 0x55,
            tree_id: 9,
            flags: crate::header::flags::SERVER_TO_REDIR | crate::header::flags::SIGNED,
            ..Header::default()
        };
        let async_hdr = Header {
            flags: crate::header::flags::SERVER_TO_REDIR | crate::header::flags::ASYNC_COMMAND,
            async_id: 77,
            ..sync
        };
        for hdr in [sync, async_hdr] {
            for padding in [0u8, 8, 80] {
                for remaining in [0u32, 5] {
                    let whole = encode_message(
                        &hdr,
                        &Response::Read {
                            data: data.clone(),
                            data_remaining: remaining,
                            padding,
                        },
                    );
                    let at = READ_RESPONSE_HEAD + padding as usize;
                    let mut msg = vec![0xEE; at];
                    msg.extend_from_slice(&data);
                    write_read_response_head(&mut msg, &hdr, remaining, padding).unwrap();
                    assert_eq!(msg, whole, "padding {padding} remaining {remaining}");
                }
            }
        }
        let mut short = vec![0; READ_RESPONSE_HEAD + 7];
        assert_eq!(
            write_read_response_head(&mut short, &Header::default(), 0, 8),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn rdma_read_response_ends_at_data_offset() {
        // The body after a 64-byte header, so DataOffset counts from the header as on the wire.
        let body = |data_remaining| {
            let mut w = Writer::new();
            w.zeros(64);
            Response::Read {
                data: Vec::new(),
                data_remaining,
                padding: 0,
            }
            .encode_body(&mut w, 0);
            w.buf.split_off(64)
        };
        // Inline and empty: the one Buffer byte of StructureSize 17.
        assert_eq!(body(0).len(), 17);
        // Sent on an RDMA channel: 16 bytes, DataOffset (64 + 16) is the message's end.
        let rdma = body(512 << 10);
        assert_eq!(rdma.len(), 16);
        assert_eq!(rdma[2], 80, "DataOffset");
        assert_eq!(&rdma[8..12], &(512u32 << 10).to_le_bytes(), "DataRemaining");
    }

    #[test]
    fn truncated_read_is_error() {
        let mut w = req_header(Command::Read);
        w.u16(49).u8(0);
        assert_eq!(Request::decode(&w.buf), Err(DecodeError::Truncated));
    }

    #[test]
    fn negotiate_with_contexts() {
        let mut w = req_header(Command::Negotiate);
        let dialects = [0x202u16, 0x311];
        let ctx_off = (64 + 36 + 4 + 7) & !7;
        w.u16(36)
            .u16(2)
            .u16(1)
            .u16(0)
            .u32(0x7f)
            .bytes(&[9; 16])
            .u32(ctx_off as u32)
            .u16(2)
            .u16(0);
        for d in dialects {
            w.u16(d);
        }
        w.align(8);
        w.u16(1)
            .u16(38)
            .u32(0)
            .u16(1)
            .u16(32)
            .u16(1)
            .bytes(&[1; 32]);
        w.align(8);
        w.u16(2).u16(4).u32(0).u16(1).u16(2);
        let (_, req) = Request::decode(&w.buf).unwrap();
        let Request::Negotiate(n) = req else { panic!() };
        assert_eq!(n.dialects, vec![0x202, 0x311]);
        assert_eq!(n.contexts.len(), 2);
        assert_eq!(n.contexts[0].preauth().unwrap(), (vec![1], vec![1; 32]));
        assert_eq!(n.contexts[1].id_list().unwrap(), vec![2]);
    }

    #[test]
    fn compound_split() {
        let mut a = req_header(Command::Echo);
        a.u16(4).u16(0);
        a.align(8);
        let len = a.len() as u32;
        a.set_u32(20, len);
        let mut b = req_header(Command::Echo);
        b.u16(4).u16(0);
        let mut all = a.buf.clone();
        all.extend_from_slice(&b.buf);
        let parts = crate::split_compound(&all).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(Request::decode(parts[1]).unwrap().1, Request::Echo);
    }

    #[test]
    fn error_response_layout() {
        let msg = encode_message(&Header::default(), &Response::Error { data: vec![] });
        assert_eq!(msg.len(), 64 + 9);
        assert_eq!(&msg[64..66], &[9, 0]);
    }
}
