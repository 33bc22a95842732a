//! Named pipes on IPC$: a CREATE of a served pipe name opens an [`RpcPipe`]; WRITE, READ and
//! FSCTL_PIPE_TRANSCEIVE carry DCE/RPC PDUs to and from it (MS-SMB2 3.3.5.9, 3.3.5.12,
//! 3.3.5.13, 3.3.5.15.1); CLOSE, TREE_DISCONNECT, LOGOFF and the end of the connection drop
//! it. Only srvsvc is served (share enumeration for `smbclient -L` and Windows' net view).
//!
//! Who reaches a pipe is decided at TREE_CONNECT to IPC$: an authenticated session, or an
//! anonymous one only where `allow_anonymous` let it log on.

use smb_proto::{
    fsctl, status, CloseResponse, CreateResponse, FileId, IoctlRequest, NtStatus, Request,
    Response, IOCTL_IS_FSCTL,
};
use smb_rpc::srvsvc::{stype, ServerInfo, ShareEntry, Srvsvc};
use smb_rpc::{PipeConfig, PipeError, RpcPipe};

use crate::conn::{err, ChainCtx, Conn, Outcome};

/// Pipes one connection may hold open. With the per-pipe bounds below a connection's pipes
/// hold at most about 32 x (64 KiB request + 64 KiB unread output + one answer).
const MAX_PIPES_PER_CONN: usize = 32;
/// Largest reassembled RPC request: srvsvc requests are a few hundred bytes.
const PIPE_MAX_REQUEST: usize = 64 * 1024;
/// Unread answers beyond which a pipe refuses further writes (STATUS_PIPE_BUSY).
const PIPE_MAX_OUTPUT: usize = 64 * 1024;
const STATUS_PIPE_DISCONNECTED: NtStatus = NtStatus(0xC000_00B0);
const STATUS_PIPE_BUSY: NtStatus = NtStatus(0xC000_00AE);
/// A read found no answer waiting. Windows would pend the READ until one is written; every
/// call served here answers synchronously, so only a READ without a request gets this.
const STATUS_PIPE_EMPTY: NtStatus = NtStatus(0xC000_00D9);
const FILE_OPENED: u32 = 1;
const FILE_ATTRIBUTE_NORMAL: u32 = 0x80;
/// The names under which the pipes are served (case-insensitive, as on Windows).
const SRVSVC_PIPE: &str = "srvsvc";

/// An open named pipe of a session's IPC$ tree connect.
pub(crate) struct PipeOpen {
    session_id: u64,
    tree_id: u32,
    rpc: RpcPipe,
}

impl Conn {
    /// Take the request if it is for a named pipe: a CREATE on IPC$, or a command on a
    /// pipe's FileId. Anything else is handed back for the file service.
    pub(crate) fn pipe_request(
        &mut self,
        req: Request,
        ctx: &mut ChainCtx,
    ) -> Result<Outcome, Request> {
        match req {
            Request::Create(c) if self.tree_share(ctx) == Some(None) => {
                Ok(self.pipe_create(&c.name, ctx))
            }
            Request::Write(w) => match self.pipe_fid(w.file_id, ctx) {
                Some(v) => Ok(self.pipe_write(v, &w.data)),
                None => Err(Request::Write(w)),
            },
            Request::Read(r) => match self.pipe_fid(r.file_id, ctx) {
                Some(v) => Ok(self.pipe_read(v, r.length)),
                None => Err(Request::Read(r)),
            },
            Request::Ioctl(i) => match self.pipe_fid(i.file_id, ctx) {
                Some(v) => Ok(self.pipe_ioctl(v, &i)),
                None => Err(Request::Ioctl(i)),
            },
            Request::Close(c) => match self.pipe_fid(c.file_id, ctx) {
                Some(v) => {
                    self.pipes.remove(&v);
                    Ok(Outcome::Reply(
                        status::SUCCESS,
                        Response::Close(CloseResponse::default()),
                    ))
                }
                None => Err(Request::Close(c)),
            },
            Request::Flush { file_id } => match self.pipe_fid(file_id, ctx) {
                Some(_) => Ok(Outcome::Reply(status::SUCCESS, Response::Flush)),
                None => Err(Request::Flush { file_id }),
            },
            other => Err(other),
        }
    }

    /// Drop the pipes of a session (of one of its tree connects with `tree`).
    pub(crate) fn close_pipes(&mut self, session_id: u64, tree: Option<u32>) {
        self.pipes
            .retain(|_, p| p.session_id != session_id || tree.is_some_and(|t| p.tree_id != t));
    }

    /// The pipe a FileId names in this session and tree (the related-compound placeholder
    /// included), by its volatile id.
    fn pipe_fid(&self, fid: FileId, ctx: &ChainCtx) -> Option<u64> {
        let fid = if fid == FileId::RELATED {
            if !ctx.related {
                return None;
            }
            ctx.file_id?
        } else {
            fid
        };
        let p = self.pipes.get(&fid.volatile)?;
        (p.session_id == ctx.session_id
            && p.tree_id == ctx.tree_id
            && fid.persistent == fid.volatile)
            .then_some(fid.volatile)
    }

    fn pipe_create(&mut self, name: &str, ctx: &mut ChainCtx) -> Outcome {
        let name = name.trim_start_matches('\\');
        if !name.eq_ignore_ascii_case(SRVSVC_PIPE) {
            return err(status::OBJECT_NAME_NOT_FOUND);
        }
        if self.pipes.len() >= MAX_PIPES_PER_CONN {
            return err(status::INSUFFICIENT_RESOURCES);
        }
        self.next_volatile += 1;
        let v = self.next_volatile;
        let cfg = PipeConfig {
            sec_addr: format!("\\PIPE\\{SRVSVC_PIPE}"),
            // Association groups are per pipe here; any non-zero id names this one.
            assoc_group_id: (v as u32) | 0x1_0000,
            max_request: PIPE_MAX_REQUEST,
            max_output: PIPE_MAX_OUTPUT,
            ..PipeConfig::default()
        };
        let rpc = RpcPipe::new(cfg, vec![Box::new(self.srvsvc())]);
        self.pipes.insert(
            v,
            PipeOpen {
                session_id: ctx.session_id,
                tree_id: ctx.tree_id,
                rpc,
            },
        );
        let file_id = FileId {
            persistent: v,
            volatile: v,
        };
        ctx.file_id = Some(file_id);
        tracing::debug!(conn = self.id, pipe = name, volatile = v, "pipe opened");
        Outcome::Reply(
            status::SUCCESS,
            Response::Create(CreateResponse {
                oplock_level: 0,
                flags: 0,
                action: FILE_OPENED,
                creation_time: 0,
                last_access_time: 0,
                last_write_time: 0,
                change_time: 0,
                allocation_size: 4096,
                end_of_file: 0,
                attributes: FILE_ATTRIBUTE_NORMAL,
                file_id,
                contexts: Vec::new(),
            }),
        )
    }

    /// srvsvc over the configured shares (all listed, as Windows lists shares without
    /// access-based enumeration) and IPC$, typed the way Windows types it.
    fn srvsvc(&self) -> Srvsvc {
        let mut shares: Vec<ShareEntry> = self
            .shared
            .shares
            .iter()
            .map(|s| ShareEntry {
                name: s.name.clone(),
                share_type: stype::DISKTREE,
                comment: String::new(),
            })
            .collect();
        shares.push(ShareEntry {
            name: "IPC$".into(),
            share_type: stype::IPC | stype::SPECIAL,
            comment: "IPC Service".into(),
        });
        let server = ServerInfo {
            name: self.shared.config.server.netbios_name.clone(),
            comment: String::new(),
            version_major: 10,
            version_minor: 0,
        };
        Srvsvc::new(server, shares)
    }

    fn pipe_write(&mut self, v: u64, data: &[u8]) -> Outcome {
        if data.len() as u64 > u64::from(self.max_io()) {
            return err(status::INVALID_PARAMETER);
        }
        let Some(p) = self.pipes.get_mut(&v) else {
            return err(status::FILE_CLOSED);
        };
        match p.rpc.write(data) {
            Ok(()) => Outcome::Reply(
                status::SUCCESS,
                Response::Write {
                    count: data.len() as u32,
                },
            ),
            Err(e) => pipe_error(self.id, &e),
        }
    }

    /// The next answer PDU, or as much of it as fits: the rest stays for the next read and
    /// the status says so (BUFFER_OVERFLOW, a message-mode pipe's short read).
    fn pipe_take(&mut self, v: u64, max: u32) -> Result<(NtStatus, Vec<u8>), NtStatus> {
        let p = self.pipes.get_mut(&v).ok_or(status::FILE_CLOSED)?;
        match p.rpc.read(max as usize) {
            Some(r) if r.message_remaining > 0 => Ok((status::BUFFER_OVERFLOW, r.data)),
            Some(r) => Ok((status::SUCCESS, r.data)),
            None if p.rpc.is_broken() => Err(STATUS_PIPE_DISCONNECTED),
            None => Err(STATUS_PIPE_EMPTY),
        }
    }

    fn pipe_read(&mut self, v: u64, length: u32) -> Outcome {
        if length > self.max_io() {
            return err(status::INVALID_PARAMETER);
        }
        match self.pipe_take(v, length) {
            Ok((st, data)) => Outcome::Reply(
                st,
                Response::Read {
                    data,
                    data_remaining: 0,
                    padding: self.read_body_padding,
                },
            ),
            Err(st) => err(st),
        }
    }

    fn pipe_ioctl(&mut self, v: u64, i: &IoctlRequest) -> Outcome {
        if i.ctl_code != fsctl::PIPE_TRANSCEIVE {
            return err(status::INVALID_DEVICE_REQUEST);
        }
        if i.flags != IOCTL_IS_FSCTL {
            return err(status::NOT_SUPPORTED);
        }
        if i.max_output_response > self.max_io() || i.input.len() as u64 > u64::from(self.max_io())
        {
            return err(status::INVALID_PARAMETER);
        }
        let Some(p) = self.pipes.get_mut(&v) else {
            return err(status::FILE_CLOSED);
        };
        if let Err(e) = p.rpc.write(&i.input) {
            return pipe_error(self.id, &e);
        }
        match self.pipe_take(v, i.max_output_response) {
            Ok((st, output)) => Outcome::Reply(
                st,
                Response::Ioctl {
                    ctl_code: i.ctl_code,
                    file_id: FileId {
                        persistent: v,
                        volatile: v,
                    },
                    input: Vec::new(),
                    output,
                },
            ),
            Err(st) => err(st),
        }
    }
}

fn pipe_error(conn: u64, e: &PipeError) -> Outcome {
    tracing::debug!(conn, %e, "pipe write refused");
    err(match e {
        PipeError::OutputFull => STATUS_PIPE_BUSY,
        // A protocol error (or a failure smb-rpc adds later): the pipe cannot go on.
        _ => STATUS_PIPE_DISCONNECTED,
    })
}
