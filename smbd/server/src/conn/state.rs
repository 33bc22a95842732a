//! The state a connection keeps: negotiated parameters, sessions, trees, opens, pending
//! (async) operations, per-chain context and what a command handler produces.

use smb_proto::NtStatus;
use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use smb_auth::keys::{Cipher, SessionKeys, SigningAlgorithm};
use smb_auth::ntlm::NtlmServer;
use smb_auth::preauth::PreauthHash;
use smb_proto::{Command, FileId, Header, LeaseContext, Response};

use crate::seqwin::SeqHandle;

pub(crate) use crate::open::{DirState, Open, OpenStream};

/// How to sign a response: algorithm and key.
pub(crate) type Signer = (SigningAlgorithm, Vec<u8>);

pub(crate) struct Negotiated {
    pub dialect: u16,
    pub client_guid: [u8; 16],
    pub client_security_mode: u16,
    pub client_caps: u32,
    pub server_security_mode: u16,
    pub server_caps: u32,
    pub cipher: Option<Cipher>,
    pub signing_alg: SigningAlgorithm,
    pub client_dialects: Vec<u16>,
}

pub(crate) enum AuthState {
    InProgress(Box<NtlmServer>),
    Valid,
}

pub(crate) struct Session {
    pub state: AuthState,
    /// A re-authentication in progress on a valid session.
    pub reauth: Option<Box<NtlmServer>>,
    pub user: String,
    pub anonymous: bool,
    pub keys: Option<SessionKeys>,
    pub signing_required: bool,
    pub encrypt: bool,
    pub preauth: PreauthHash,
    pub trees: HashMap<u32, Tree>,
    /// Whose credentials the session's file operations run with (crate::identity): the
    /// mapped Unix user, or the guest account for an anonymous session; `None` until the
    /// session is authenticated.
    pub identity: Option<Arc<crate::identity::UnixIdentity>>,
}

impl Session {
    /// The session's security token for access checks against stored descriptors.
    pub fn token(&self) -> crate::sd::Token {
        match &self.identity {
            Some(id) => crate::sd::Token::of_unix(
                id.uid,
                std::iter::once(id.gid).chain(id.groups.iter().copied()),
                self.anonymous,
            ),
            None => crate::sd::Token {
                anonymous: true,
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Tree {
    /// Index into `Shared::shares`; `None` = IPC$.
    pub share: Option<usize>,
    pub encrypt: bool,
}

/// Work waiting for an asynchronous completion (MS-SMB2 3.3.4.2).
pub(crate) enum PendingKind {
    /// A CHANGE_NOTIFY waiting for a change of its handle's watched directory.
    Notify {
        volatile: u64,
        max_out: u32,
    },
    Lock {
        volatile: u64,
    },
    Create(Box<CreateCont>),
    /// A durable reconnect waiting for the connection that still holds its open
    /// (`Shared::wait_for_durable`).
    DurableReconnect(Box<ReconnectTarget>),
    /// A CREATE that met a conflict while other connections, whose clients had hung up,
    /// were not torn down yet (`Shared::wait_for_hung_up`, crate::hangup): decided again
    /// once they are.
    AfterHangup(Box<HangupWait>),
    /// A rename waiting for other opens' handle-caching breaks (lock service
    /// `BreakForRename`); it is carried out when that completes.
    Rename {
        volatile: u64,
        buffer: Vec<u8>,
        class: u8,
    },
    /// A SET_INFO FileDispositionInformation waiting for the same breaks.
    Disposition {
        volatile: u64,
        delete: bool,
    },
    /// A CLOSE of a delete-on-close handle waiting for the same breaks (Samba 4.22 delays it
    /// the same way), so other clients have let go of cached handles when it returns.
    Close {
        volatile: u64,
        flags: u16,
    },
}

/// What a durable reconnect waiting for its open needs to try again.
#[derive(Clone)]
pub(crate) struct ReconnectTarget {
    pub request: smb_proto::CreateRequest,
    pub rc: crate::durable::Reconnect,
    pub session_id: u64,
    pub tree_id: u32,
    pub share: usize,
}

/// What a CREATE waiting for hung-up connections needs to be decided again.
pub(crate) struct HangupWait {
    pub request: smb_proto::CreateRequest,
    pub hdr: smb_proto::Header,
    pub ctx: ChainCtx,
    /// The connections still to be torn down.
    pub waiting: Vec<u64>,
}

pub(crate) struct PendingOp {
    /// Bound connection the request arrived on (its answer goes back there).
    pub channel: Option<u64>,
    /// Requests of a compound that follow a CREATE which went async in the middle of the
    /// chain; processed once the CREATE completes (MS-SMB2 3.3.5.2.7, <206>: only a CREATE
    /// that waits for an oplock break may go async mid-chain).
    pub rest: Option<(Vec<Vec<u8>>, ChainCtx)>,
    pub message_id: u64,
    pub session_id: u64,
    pub tree_id: u32,
    pub command: Command,
    pub encrypted: bool,
    pub signed: bool,
    pub kind: PendingKind,
}

/// Per-chain state for related compound requests (MS-SMB2 3.3.5.2.7.2).
#[derive(Default, Clone)]
pub(crate) struct ChainCtx {
    pub session_id: u64,
    pub tree_id: u32,
    pub file_id: Option<FileId>,
    pub prev_status: NtStatus,
    pub encrypted: bool,
    /// SessionId of the TRANSFORM_HEADER the chain arrived in (when `encrypted`).
    pub sealed_session: u64,
    /// FileIds resolve through any tree of the session (oplock break acknowledgments).
    pub any_tree: bool,
    /// CommandSequenceWindow of the bound channel the compound arrived on (None: this
    /// connection's own).
    pub seq: Option<SeqHandle>,
    /// The request being processed has SMB2_FLAGS_RELATED_OPERATIONS.
    pub related: bool,
    /// Index of the request in the chain.
    pub index: usize,
    /// The request is alone in its message (not a compound): READ/WRITE may go to the ring.
    pub single: bool,
    /// Session and tree a related request inherits: those of the previous request if they
    /// were valid, else 0 (Samba's last_session_id / last_tid).
    pub last_session_id: u64,
    pub last_tree_id: u32,
    /// Status of a failed CREATE in this compound; related requests without a handle fail
    /// with it instead of FILE_CLOSED (MS-SMB2 3.3.5.2.7.2).
    pub create_err: Option<NtStatus>,
    /// Bytes of the chain's responses so far (`[limits] max_response_bytes`).
    pub response_bytes: usize,
}

/// A READ or WRITE handed to the worker's io_uring; the response goes out when the ring
/// completes it (see [`Conn::complete_file_io`]). The client sees an ordinary synchronous
/// answer, only later: MS-SMB2 3.3.4.2 lets any request complete asynchronously, and no
/// interim STATUS_PENDING is sent.
pub(crate) struct FileIo {
    /// A duplicate of the open's descriptor: a CLOSE while the I/O is in flight must not let
    /// the number be reused under the ring.
    pub file: File,
    pub offset: u64,
    /// Bytes transferred so far (the worker resubmits short transfers).
    pub done: usize,
    /// Volatile id of the open (position update, change notification).
    pub volatile: u64,
    pub op: FileOp,
    /// Response header (credits granted at dispatch), set by `process_one`.
    pub hdr: Header,
    pub signer: Option<Signer>,
    /// Session whose key encrypts the response.
    pub enc: Option<u64>,
}

pub(crate) enum FileOp {
    /// `buf` is the whole response frame: NetBIOS header, SMB2 header, READ body, padding,
    /// then room for the data at `data_off`, so the kernel reads straight into the message
    /// that is sent (no copy of the data unless it must be encrypted).
    Read {
        buf: Vec<u8>,
        data_off: usize,
        len: usize,
        minimum: u32,
        padding: u8,
    },
    Write {
        data: Vec<u8>,
        /// Stable before it is acknowledged (RWF_DSYNC): a persistent open on a continuously
        /// available share, or SMB2_WRITEFLAG_WRITE_THROUGH.
        write_through: bool,
    },
    /// An RDMA-channel READ into the area range smbdirectd granted for it: the kernel writes
    /// the file's data straight there (smbdirectd then RDMA-WRITEs it to the client), and the
    /// response carries DataLength 0.
    AreaRead {
        range: crate::rdma_area::AreaRange,
        len: usize,
        minimum: u32,
        padding: u8,
    },
    /// An RDMA-channel WRITE whose data smbdirectd RDMA-READ into the area: the kernel writes
    /// the file from the range itself, given back (`Release`) once the write has completed.
    AreaWrite {
        range: crate::rdma_area::AreaRange,
        write_through: bool,
    },
}

impl FileIo {
    /// Bytes still to transfer.
    pub fn remaining(&self) -> usize {
        match &self.op {
            FileOp::Read { len, .. } => len - self.done,
            FileOp::Write { data, .. } => data.len() - self.done,
            FileOp::AreaRead { len, .. } => len - self.done,
            FileOp::AreaWrite { range, .. } => range.len() - self.done,
        }
    }
}

/// What a handler produced.
pub(crate) enum Outcome {
    Reply(NtStatus, Response),
    /// Handed to the ring ([`FileIo`]); answered on completion.
    Deferred(Box<FileIo>),
    /// Went async: an interim STATUS_PENDING was (or will be) sent with this AsyncId.
    Pending(u64),
    /// No response at all (CANCEL).
    Nothing,
}

pub(crate) fn err(st: NtStatus) -> Outcome {
    Outcome::Reply(st, Response::Error { data: vec![] })
}

/// This connection as a channel bound to a session another connection owns
/// (MS-SMB2 3.3.5.5.2): requests for the session are forwarded to the owner.
pub(crate) struct BoundChannel {
    pub owner: u64,
    /// Channel.SigningKey (MS-SMB2 3.3.5.5.3) and this connection's signing algorithm.
    pub signer: Signer,
}

/// A session binding in progress on this connection.
pub(crate) struct Binding {
    pub ntlm: Box<NtlmServer>,
    /// The channel's preauth integrity hash (3.1.1): this connection's NEGOTIATE plus the
    /// binding exchange; it keys Channel.SigningKey.
    pub preauth: PreauthHash,
    pub rec: crate::shared::SessionRecord,
}

/// The data file of a named stream chosen by CREATE.
pub(crate) struct StreamTarget {
    /// Stream name with the case it was created with.
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    /// The stream did not exist and was created by this CREATE.
    pub(crate) created: bool,
    /// The base file did not exist and was created for the stream.
    pub(crate) base_created: bool,
}

/// Everything a CREATE needs to finish after the lock service granted (maybe later) the open.
pub(crate) struct CreateCont {
    pub(crate) session_id: u64,
    pub(crate) tree_id: u32,
    pub(crate) share: usize,
    pub(crate) abs: PathBuf,
    pub(crate) rel: PathBuf,
    pub(crate) existed: bool,
    pub(crate) created_now: bool,
    /// Named stream being opened; `abs`/`rel` stay the base object's.
    pub(crate) stream: Option<StreamTarget>,
    pub(crate) is_dir: bool,
    pub(crate) access: u32,
    pub(crate) disposition: u32,
    pub(crate) stable_id: u128,
    pub(crate) lease: Option<LeaseContext>,
    pub(crate) want_mxac: bool,
    pub(crate) want_qfid: bool,
    /// SMB2_CREATE_ALLOCATION_SIZE (AlSi) for new or overwritten files.
    pub(crate) allocation: Option<u64>,
    pub(crate) delete_on_close: bool,
    /// The faked `$Extend\$Quota:$Q:$INDEX_ALLOCATION` (see `ops::QUOTA_FAKE_FILE`).
    pub(crate) fake_quota: bool,
    /// DHnQ / DH2Q as the lock service is asked to grant it (persistent only where the share
    /// and connection allow it; none for directories). Granted if the caching allows it.
    pub(crate) durable: Option<crate::durable::DurableKind>,
    /// The SMB FileId (persistent = volatile) of the open, chosen before the lock service is
    /// asked: it is the key of a durable open, made durable in the same request.
    pub(crate) file_id: u64,
    pub(crate) share_access: u32,
    /// A new file created with FILE_ATTRIBUTE_READONLY: mode 0444 once its handle is open.
    pub(crate) make_read_only: bool,
    /// An existing file overwritten or superseded: the FileAttributes asked for, applied
    /// once it is truncated (MS-FSA 2.1.5.1.2.2).
    pub(crate) overwrite_attributes: Option<u32>,
    /// The CREATE's ChannelSequence: the open's first Open.ChannelSequence (MS-SMB2 3.3.5.2.10).
    pub(crate) channel_sequence: u16,
}
