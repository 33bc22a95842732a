//! One SMB2/3 connection: a state machine fed with NetBIOS frames, producing frames to send.
//! No socket I/O here (the io_uring worker owns sockets); file I/O is done synchronously.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use smb_auth::keys::{Cipher, Dialect, SessionKeys, SigningAlgorithm};
use smb_auth::ntlm::{AuthStep, NtlmServer};
use smb_auth::preauth::PreauthHash;
use smb_proto::header::{flags, TRANSFORM_PROTOCOL_ID};
use smb_proto::{
    caps, dialect, negctx, security_mode, smb1, status, Command, FileId, Header, NegotiateContext,
    NegotiateRequest, NegotiateResponse, Request, Response, SessionSetupRequest, Writer,
};

use crate::fs::DirEntry;
use crate::locking::{self, OplockGrant};
use crate::seqwin::SeqHandle;

pub(crate) mod ops;
use crate::shared::{Event, Shared};

/// Largest READ/WRITE/transact we accept (MS-SMB2 with LARGE_MTU: credit charge covers it).
pub const MAX_IO: u32 = 8 * 1024 * 1024;
/// SMB 2.0.2 has no multi-credit requests.
const MAX_IO_202: u32 = 65536;
/// The credit window a client may hold (Samba's default "smb2 max credits").
pub const MAX_CREDITS: u32 = 8192;
const REQUEST_OUT_OF_SEQUENCE: u32 = 0xC000_042A;
pub const SESSION_FLAG_IS_GUEST: u16 = 0x1;
pub const SESSION_FLAG_IS_NULL: u16 = 0x2;
pub const SESSION_FLAG_ENCRYPT_DATA: u16 = 0x4;

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

pub(crate) struct DirState {
    pub entries: Vec<DirEntry>,
    pub pos: usize,
    pub started: bool,
}

/// The named stream an open refers to.
#[derive(Debug, Clone)]
pub(crate) struct OpenStream {
    /// Name with the case it was created with.
    pub name: String,
    /// Data file in the stream depot.
    pub path: PathBuf,
}

pub(crate) struct Open {
    pub session_id: u64,
    pub tree_id: u32,
    pub share: usize,
    /// Absolute path; updated on rename.
    pub abs: PathBuf,
    /// Path relative to the share root (client view, for FileNameInformation).
    pub rel: PathBuf,
    /// Named stream of an open of `file:stream`; `file` is then the stream's data.
    pub stream: Option<OpenStream>,
    pub file: Option<File>,
    pub is_dir: bool,
    /// Granted access after generic mapping.
    pub access: u32,
    pub lock_open: Option<locking::OpenId>,
    pub stable_id: u128,
    pub dir: Option<DirState>,
    pub position: u64,
    pub mode: u32,
    pub delete_pending: bool,
    pub grant: OplockGrant,
    pub notify_watch: bool,
    /// FSCTL_LMR_REQUEST_RESILIENCY was granted (MS-SMB2 3.3.5.15.9).
    pub resilient: bool,
    /// Durable handle granted (DHnQ/DH2Q); v2 carries the create GUID.
    pub durable: Option<crate::durable::DurableState>,
    /// Byte-range locks held, to re-establish them on a durable reconnect.
    pub locks: Vec<locking::LockRange>,
    /// Open.LockSequenceArray (MS-SMB2 3.3.1.10): 0xFF = invalid entry.
    pub lock_seq: [u8; 64],
    /// The identity that opened it: a delete-on-close at teardown unlinks with it.
    pub identity: Option<Arc<crate::identity::UnixIdentity>>,
}

/// Work waiting for an asynchronous completion (MS-SMB2 3.3.4.2).
pub(crate) enum PendingKind {
    Notify {
        volatile: u64,
        dir: PathBuf,
        max_out: u32,
    },
    Lock {
        volatile: u64,
    },
    Create(Box<crate::conn::ops::CreateCont>),
    /// A rename through a lease handle waiting for other leases' handle-caching breaks
    /// (lock service `BreakForRename`); it is carried out when that completes.
    Rename {
        volatile: u64,
        buffer: Vec<u8>,
        class: u8,
    },
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
    pub prev_status: u32,
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
    pub create_err: Option<u32>,
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
    },
}

impl FileIo {
    /// Bytes still to transfer.
    pub fn remaining(&self) -> usize {
        match &self.op {
            FileOp::Read { len, .. } => len - self.done,
            FileOp::Write { data } => data.len() - self.done,
        }
    }
}

/// What a handler produced.
pub(crate) enum Outcome {
    Reply(u32, Response),
    /// Handed to the ring ([`FileIo`]); answered on completion.
    Deferred(Box<FileIo>),
    /// Went async: an interim STATUS_PENDING was (or will be) sent with this AsyncId.
    Pending(u64),
    /// No response at all (CANCEL).
    Nothing,
}

pub(crate) fn err(st: u32) -> Outcome {
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

pub struct Conn {
    pub id: u64,
    pub(crate) shared: Arc<Shared>,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub(crate) neg: Option<Negotiated>,
    pub(crate) conn_preauth: PreauthHash,
    pub(crate) sessions: HashMap<u64, Session>,
    pub(crate) opens: HashMap<u64, Open>,
    pub(crate) pending: HashMap<u64, PendingOp>,
    next_session: u64,
    pub(crate) next_tree: u32,
    pub(crate) next_volatile: u64,
    next_async: u64,
    pending_tree_id: Option<u32>,
    /// Connection.CommandSequenceWindow and credits (MS-SMB2 3.3.1.1, 3.3.1.2).
    seq: SeqHandle,
    /// The window of the bound connection whose forwarded request is being processed.
    cur_seq: Option<SeqHandle>,
    /// Signer for the current response when it is not the session's own (binding refusals).
    override_signer: Option<Signer>,
    /// Sessions of this connection to tear down once the current chain is answered.
    expire_after: Vec<u64>,
    /// Whether the request being answered was signed.
    signed_request: bool,
    out: Vec<Vec<u8>>,
    /// READs/WRITEs for the worker's ring.
    pub(crate) file_io: Vec<FileIo>,
    /// Zero bytes between a READ response body and its data (smbtorture hook).
    pub(crate) read_body_padding: u8,
    /// Set by `process_one` when a CREATE in the middle of a compound went async.
    suspend_chain: Option<u64>,
    /// Sessions owned here that other connections bound: (channel conn, session) -> signer.
    channels: HashMap<(u64, u64), Signer>,
    /// The bound connection whose forwarded request (or its async completion) is being
    /// answered; output then goes back to it.
    cur_channel: Option<u64>,
    channel_out: Vec<Vec<u8>>,
    /// Sessions of other connections this connection is bound to.
    bound: HashMap<u64, BoundChannel>,
    /// Signers of sessions that ended under the client (a failed reauthentication, here or
    /// on the owner of a bound session): USER_SESSION_DELETED for them stays signed.
    unbound: HashMap<u64, Signer>,
    binding: HashMap<u64, Binding>,
    pub closed: bool,
    /// The last create lost a race to create its name (see `Conn::create`).
    pub(crate) create_raced: bool,
    /// Resource-limit bookkeeping (`crate::limits`).
    pub(crate) limits: crate::limits::ConnLimits,
}

fn frame(msg: Vec<u8>) -> Vec<u8> {
    let len = msg.len() as u32;
    let mut f = Vec::with_capacity(msg.len() + 4);
    f.extend_from_slice(&(len & 0x00FF_FFFF).to_be_bytes());
    f[0] = 0;
    f.extend_from_slice(&msg);
    f
}

impl Conn {
    pub fn new(
        id: u64,
        shared: Arc<Shared>,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> Conn {
        Conn {
            id,
            shared,
            local,
            peer,
            neg: None,
            conn_preauth: PreauthHash::new(),
            sessions: HashMap::new(),
            opens: HashMap::new(),
            pending: HashMap::new(),
            next_session: 0,
            next_tree: 0,
            // File ids are unique across connections so that a durable handle can be found
            // again from any connection by its persistent id.
            next_volatile: id << 32,
            next_async: 0,
            pending_tree_id: None,
            seq: SeqHandle::default(),
            cur_seq: None,
            signed_request: false,
            expire_after: Vec::new(),
            override_signer: None,
            out: Vec::new(),
            file_io: Vec::new(),
            suspend_chain: None,
            read_body_padding: 0,
            channels: HashMap::new(),
            cur_channel: None,
            channel_out: Vec::new(),
            bound: HashMap::new(),
            unbound: HashMap::new(),
            binding: HashMap::new(),
            closed: false,
            create_raced: false,
            limits: Default::default(),
        }
    }

    /// Frames ready to be written to the socket (each with its 4-byte NetBIOS header).
    pub fn take_output(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.out)
    }

    /// READs/WRITEs to submit to the ring.
    pub(crate) fn take_file_io(&mut self) -> Vec<FileIo> {
        std::mem::take(&mut self.file_io)
    }

    /// READs/WRITEs handed out and not yet submitted.
    pub(crate) fn file_io_count(&self) -> usize {
        self.file_io.len()
    }

    /// Queue a complete response frame (4 bytes reserved for the NetBIOS header), signing or
    /// encrypting it as decided at dispatch.
    pub(crate) fn emit_framed(
        &mut self,
        mut buf: Vec<u8>,
        signer: Option<Signer>,
        enc: Option<u64>,
    ) {
        if enc.is_some() {
            self.emit(buf.get(4..).unwrap_or_default().to_vec(), enc);
            return;
        }
        if let Some((alg, key)) = signer {
            if let Some(msg) = buf.get_mut(4..) {
                if msg.len() >= 20 {
                    let fl =
                        u32::from_le_bytes([msg[16], msg[17], msg[18], msg[19]]) | flags::SIGNED;
                    msg[16..20].copy_from_slice(&fl.to_le_bytes());
                }
                if let Err(e) = smb_auth::signing::sign(alg, &key, msg) {
                    tracing::warn!(conn = self.id, %e, "signing failed");
                }
            }
        }
        let len = buf.len().saturating_sub(4) as u32;
        if buf.len() >= 4 {
            buf[..4].copy_from_slice(&(len & 0x00FF_FFFF).to_be_bytes());
        }
        self.out.push(buf);
    }

    pub(crate) fn dialect(&self) -> u16 {
        self.neg.as_ref().map_or(0, |n| n.dialect)
    }

    pub(crate) fn auth_dialect(&self) -> Dialect {
        Dialect::from_revision(self.dialect()).unwrap_or(Dialect::Smb202)
    }

    /// MS-SMB2 3.3.5.14: at 3.x with SMB2_GLOBAL_CAP_MULTI_CHANNEL, lock sequence numbers
    /// are verified for every open (a request may be replayed on another channel).
    pub(crate) fn lock_seq_all_opens(&self) -> bool {
        self.neg.as_ref().is_some_and(|n| {
            n.dialect >= dialect::SMB300 && n.server_caps & caps::MULTI_CHANNEL != 0
        })
    }

    pub(crate) fn max_io(&self) -> u32 {
        if self.dialect() == dialect::SMB202 {
            MAX_IO_202
        } else {
            MAX_IO
        }
    }

    /// Handle one complete NetBIOS session message payload.
    pub fn on_message(&mut self, msg: &[u8]) {
        if let Some(dir) = &self.shared.dump_dir {
            // Debug aid (SMBD_DUMP_DIR): keep received messages, e.g. as a fuzzing corpus.
            let n = self.next_async + self.next_volatile + msg.len() as u64;
            let _ = std::fs::write(
                dir.join(format!("c{}-{}-{}", self.id, n, rand::random::<u32>())),
                msg,
            );
        }
        if msg.len() < 4 {
            self.closed = true;
            return;
        }
        match &msg[..4] {
            [0xFF, b'S', b'M', b'B'] => self.smb1_negotiate(msg),
            [0xFD, b'S', b'M', b'B'] => {
                if !self.forward_to_owner(msg) {
                    self.encrypted_message(msg)
                }
            }
            [0xFE, b'S', b'M', b'B'] => {
                if !self.forward_to_owner(msg) {
                    self.process_chain(msg, None)
                }
            }
            _ => {
                tracing::debug!(conn = self.id, "not an SMB message; disconnecting");
                self.closed = true;
            }
        }
    }

    fn smb1_negotiate(&mut self, msg: &[u8]) {
        if self.neg.is_some() {
            self.closed = true;
            return;
        }
        let dialects = match smb1::decode_negotiate(msg) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(conn = self.id, %e, "bad SMB1 negotiate");
                self.closed = true;
                return;
            }
        };
        let Some(d) = smb1::smb2_dialect_for(&dialects) else {
            tracing::info!(conn = self.id, "SMB1-only client refused");
            self.closed = true;
            return;
        };
        if d == dialect::SMB202 {
            self.set_negotiated(d, &NegotiateRequest::default(), None, None);
        }
        // MS-SMB2 3.3.5.2.3: an SMB_COM_NEGOTIATE counts as MessageId 0.
        let credits = {
            let mut w = self.seq.lock();
            if w.consume(0, 1).is_err() {
                drop(w);
                tracing::debug!(conn = self.id, "second SMB1 negotiate; disconnecting");
                self.closed = true;
                return;
            }
            w.grant(1)
        };
        let body = self.negotiate_response_body(d, Vec::new());
        let hdr = Header {
            command: Command::Negotiate as u16,
            credits,
            flags: flags::SERVER_TO_REDIR,
            ..Default::default()
        };
        let mut w = Writer::new();
        hdr.encode(&mut w);
        body.encode_body(&mut w, 0);
        self.out.push(frame(w.buf));
    }

    fn encrypted_message(&mut self, msg: &[u8]) {
        let Some(sid) = smb_auth::encryption::transform_session_id(msg) else {
            self.closed = true;
            return;
        };
        let cipher = self
            .neg
            .as_ref()
            .and_then(|n| n.cipher)
            .unwrap_or(Cipher::Aes128Ccm);
        let key = match self.sessions.get(&sid).and_then(|s| s.keys.as_ref()) {
            Some(k) if !k.decryption.is_empty() => k.decryption.clone(),
            _ => {
                tracing::debug!(conn = self.id, sid, "transform for unknown session");
                self.closed = true;
                return;
            }
        };
        match smb_auth::encryption::decrypt(cipher, &key, msg) {
            Ok((_, plain)) => {
                if plain.get(..4) == Some(&smb_proto::header::PROTOCOL_ID[..]) {
                    self.process_chain(&plain, Some(sid));
                } else {
                    self.closed = true;
                }
            }
            Err(e) => {
                tracing::debug!(conn = self.id, %e, "decryption failed; disconnecting");
                self.closed = true;
            }
        }
    }

    /// `sealed`: the SessionId of the TRANSFORM_HEADER the chain was decrypted from.
    fn process_chain(&mut self, buf: &[u8], sealed: Option<u64>) {
        let msgs = match smb_proto::split_compound(buf) {
            // Borrowed: a large WRITE is not copied again before it is decoded.
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(conn = self.id, %e, "bad compound; disconnecting");
                self.closed = true;
                return;
            }
        };
        let max = self.shared.config.limits.max_compound;
        if msgs.len() > max {
            // No client chains this many requests; answering each would cost memory in
            // proportion to what an attacker sends, so the connection is dropped.
            tracing::warn!(conn = self.id, peer = ?self.peer, requests = msgs.len(), max, "compound over [limits] max_compound; disconnecting");
            self.closed = true;
            return;
        }
        let ctx = ChainCtx {
            encrypted: sealed.is_some(),
            sealed_session: sealed.unwrap_or(0),
            // A request forwarded from a bound channel is answered synchronously: ring
            // completions go out on this connection's own socket.
            single: msgs.len() == 1 && self.cur_channel.is_none(),
            seq: self.cur_seq.clone(),
            ..Default::default()
        };
        self.run_chain(msgs, 0, ctx);
    }

    /// Process `msgs` (the requests of a compound from index `first` on) and emit the
    /// responses as one chain.
    pub(crate) fn run_chain<M: AsRef<[u8]> + Into<Vec<u8>>>(
        &mut self,
        msgs: Vec<M>,
        first: usize,
        ctx: ChainCtx,
    ) {
        // The rest of a compound resumed after an async CREATE still spends MessageIds of the
        // connection the compound arrived on (a bound channel's, not this one's).
        let outer = self.cur_seq.clone();
        if ctx.seq.is_some() {
            self.cur_seq = ctx.seq.clone();
        }
        self.run_chain_inner(msgs, first, ctx);
        self.cur_seq = outer;
    }

    fn run_chain_inner<M: AsRef<[u8]> + Into<Vec<u8>>>(
        &mut self,
        msgs: Vec<M>,
        first: usize,
        mut ctx: ChainCtx,
    ) {
        let mut responses: Vec<(Vec<u8>, Option<Signer>)> = Vec::new();
        let mut enc_session: Option<u64> = None;
        let n = first + msgs.len();
        let mut it = msgs.into_iter();
        let mut i = first;
        let mut spent = 0usize;
        while let Some(m) = it.next() {
            ctx.index = i;
            ctx.response_bytes = spent;
            let one = self.process_one(m.as_ref(), &mut ctx, i + 1 == n);
            i += 1;
            if self.closed {
                // A protocol violation (e.g. a replayed MessageId): nothing more of this
                // compound is processed or answered.
                return;
            }
            let Some((resp, signer)) = one else {
                continue;
            };
            let (hdr_sid, hdr_cmd) = Header::decode(&resp)
                .map(|h| (h.session_id, h.command))
                .unwrap_or((0, 0));
            // The final SESSION_SETUP response goes out signed, not sealed (MS-SMB2 3.3.5.5.3).
            let setup =
                hdr_cmd == Command::SessionSetup as u16 || hdr_cmd == Command::Negotiate as u16;
            if ctx.encrypted || (!setup && self.session_wants_encryption(hdr_sid, ctx.tree_id)) {
                enc_session = enc_session.or(Some(hdr_sid));
            }
            // Samba pads a READ response in a compound to 8 bytes even when it is the last
            // one (smbtorture compound-padding); a lone READ stays unpadded.
            let mut resp = resp;
            if n > 1 && hdr_cmd == Command::Read as u16 {
                while resp.len() % 8 != 0 {
                    resp.push(0);
                }
            }
            spent += resp.len();
            responses.push((resp, signer));
            if self.closed {
                return;
            }
            if let Some(aid) = self.suspend_chain.take() {
                let rest: Vec<Vec<u8>> = it.by_ref().map(Into::into).collect();
                if let Some(p) = self.pending.get_mut(&aid) {
                    p.rest = Some((rest, ctx.clone()));
                }
                break;
            }
        }
        if responses.is_empty() {
            return;
        }
        // Chain: 8-byte align every response but the last, set NextCommand, then sign each.
        let count = responses.len();
        let mut chain = Vec::new();
        for (i, (mut r, signer)) in responses.into_iter().enumerate() {
            if i + 1 < count {
                while r.len() % 8 != 0 {
                    r.push(0);
                }
                let next = r.len() as u32;
                r[20..24].copy_from_slice(&next.to_le_bytes());
            }
            if let Some((alg, key)) = signer {
                if enc_session.is_none() {
                    let fl = u32::from_le_bytes([r[16], r[17], r[18], r[19]]) | flags::SIGNED;
                    r[16..20].copy_from_slice(&fl.to_le_bytes());
                    if let Err(e) = smb_auth::signing::sign(alg, &key, &mut r) {
                        tracing::warn!(conn = self.id, %e, "signing failed");
                    }
                }
            }
            chain.extend_from_slice(&r);
        }
        self.emit(chain, enc_session);
        for sid in std::mem::take(&mut self.expire_after) {
            let same_user = self.sessions.get(&sid).map(|s| s.user.to_lowercase());
            let new_user = self
                .sessions
                .get(&ctx.session_id)
                .map(|s| s.user.to_lowercase());
            if same_user.is_some() && same_user == new_user {
                self.park_durable_opens(Some(sid));
                self.close_session_opens(sid, None);
                self.sessions.remove(&sid);
                self.shared.session_gone(sid);
                self.end_channels(sid);
            }
        }
    }

    fn session_wants_encryption(&self, sid: u64, tree: u32) -> bool {
        self.sessions
            .get(&sid)
            .map(|s| {
                s.keys.as_ref().is_some_and(|k| !k.encryption.is_empty())
                    && (s.encrypt || s.trees.get(&tree).is_some_and(|t| t.encrypt))
            })
            .unwrap_or(false)
    }

    /// Queue a message (or chain), encrypting it for `enc_session` if given.
    pub(crate) fn emit(&mut self, msg: Vec<u8>, enc_session: Option<u64>) {
        if let Some(sid) = enc_session {
            let cipher = self
                .neg
                .as_ref()
                .and_then(|n| n.cipher)
                .unwrap_or(Cipher::Aes128Ccm);
            let key = self
                .sessions
                .get(&sid)
                .and_then(|s| s.keys.as_ref())
                .map(|k| k.encryption.clone());
            if let Some(key) = key.filter(|k| !k.is_empty()) {
                match smb_auth::encryption::encrypt(cipher, &key, sid, &msg) {
                    Ok(m) => {
                        debug_assert_eq!(m.get(..4), Some(&TRANSFORM_PROTOCOL_ID[..]));
                        self.push_out(frame(m));
                    }
                    Err(e) => {
                        tracing::warn!(conn = self.id, %e, "encryption failed; disconnecting");
                        self.closed = true;
                    }
                }
                return;
            }
        }
        self.push_out(frame(msg));
    }

    fn push_out(&mut self, f: Vec<u8>) {
        if self.cur_channel.is_some() {
            self.channel_out.push(f);
        } else {
            self.out.push(f);
        }
    }

    /// Signing algorithm and key of `sid` for the connection the current request came in
    /// on: a bound channel signs with its own Channel.SigningKey (MS-SMB2 3.3.5.5.3).
    pub(crate) fn signing_pair(&self, sid: u64) -> Option<Signer> {
        if let Some(ch) = self.cur_channel {
            if let Some(sig) = self.channels.get(&(ch, sid)) {
                return Some(sig.clone());
            }
        }
        let k = self.sessions.get(&sid)?.keys.as_ref()?;
        Some((self.neg.as_ref()?.signing_alg, k.signing.clone()))
    }

    /// Signing key of a session if responses to `hdr` must be signed.
    pub(crate) fn signer_for(
        &self,
        session_id: u64,
        request_signed: bool,
    ) -> Option<(SigningAlgorithm, Vec<u8>)> {
        let s = self.sessions.get(&session_id)?;
        if !matches!(s.state, AuthState::Valid) || s.anonymous {
            return None;
        }
        s.keys.as_ref()?;
        if request_signed || s.signing_required {
            self.signing_pair(session_id)
        } else {
            None
        }
    }

    fn response_header(req: &Header, st: u32, credits: u16) -> Header {
        Header {
            credit_charge: req.credit_charge,
            status: st,
            command: req.command,
            credits,
            flags: flags::SERVER_TO_REDIR | (req.flags & flags::RELATED_OPERATIONS),
            next_command: 0,
            message_id: req.message_id,
            process_id: req.process_id,
            tree_id: req.tree_id,
            async_id: 0,
            session_id: req.session_id,
            signature: [0; 16],
        }
    }

    /// The CommandSequenceWindow of the connection the current request arrived on.
    fn window(&self) -> SeqHandle {
        self.cur_seq.clone().unwrap_or_else(|| self.seq.clone())
    }

    /// MS-SMB2 3.3.5.2.3: the request's MessageId (with multi-credit, its CreditCharge
    /// consecutive ids) must be in the window and unused; then it leaves the window. A replayed,
    /// reused or not yet granted MessageId drops the connection (<258>: Windows and Samba do),
    /// so a captured signed request cannot be played again.
    fn consume_message_id(&mut self, hdr: &Header) -> bool {
        // 3.3.1.1 / 3.3.5.2.5: Connection.SupportsMultiCredit (2.1 and later); at 2.0.2 every
        // request takes one id whatever its CreditCharge says.
        let charge = if self.dialect() > dialect::SMB202 && self.dialect() != dialect::WILDCARD {
            hdr.credit_charge
        } else {
            1
        };
        let r = self.window().lock().consume(hdr.message_id, charge);
        match r {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    conn = self.id,
                    channel = ?self.cur_channel,
                    mid = hdr.message_id,
                    charge,
                    command = hdr.command,
                    error = ?e,
                    "MessageId outside the command sequence window; disconnecting"
                );
                self.closed = true;
                false
            }
        }
    }

    /// Credit accounting (MS-SMB2 3.3.1.2): grant what the client asks for while it holds at
    /// most [`MAX_CREDITS`] (see [`crate::seqwin::SeqWindow::grant`]); the granted ids join
    /// the window of the connection the request arrived on.
    fn grant_credits(&mut self, req: &Header) -> u16 {
        self.window().lock().grant(req.credits)
    }

    /// Process one message of a chain; returns the response bytes and how to sign them.
    fn process_one(
        &mut self,
        m: &[u8],
        ctx: &mut ChainCtx,
        last: bool,
    ) -> Option<(Vec<u8>, Option<Signer>)> {
        let mut hdr = match Header::decode(m) {
            Ok(h) => h,
            Err(_) => {
                self.closed = true;
                return None;
            }
        };
        // MS-SMB2 3.3.5.2.3: CANCEL takes no MessageId of its own (it names the request it
        // cancels); every other request consumes its ids before anything else is looked at.
        if hdr.command != Command::Cancel as u16 && !self.consume_message_id(&hdr) {
            return None;
        }
        let related = hdr.flags & flags::RELATED_OPERATIONS != 0;
        ctx.related = related;
        if related {
            // MS-SMB2 3.3.5.2.7.2: related requests inherit session, tree and file of the
            // previous request (whatever their header says, as Windows and Samba do).
            hdr.session_id = ctx.last_session_id;
            hdr.tree_id = ctx.last_tree_id;
        } else {
            ctx.file_id = None;
            if ctx.encrypted && hdr.session_id != ctx.sealed_session {
                // MS-SMB2 3.3.5.2.1.1: a decrypted request names the session whose key sealed
                // it. Otherwise the key of one session would carry requests of another, and
                // since sealed requests skip signature checks they would run unauthenticated.
                tracing::warn!(
                    conn = self.id,
                    sealed = ctx.sealed_session,
                    inner = hdr.session_id,
                    "sealed request names another session; disconnecting"
                );
                self.closed = true;
                return None;
            }
        }
        let signed = hdr.flags & flags::SIGNED != 0;
        self.signed_request = signed;
        self.override_signer = None;
        let cmd = Command::from_u16(hdr.command);
        ctx.session_id = hdr.session_id;
        ctx.tree_id = hdr.tree_id;
        let outcome = match cmd {
            None => err(status::INVALID_PARAMETER),
            Some(cmd) => {
                if related && ctx.index == 0 {
                    // A chain cannot start with a related request (MS-SMB2 3.3.5.2.7.2).
                    ctx.file_id = None;
                    err(status::INVALID_PARAMETER)
                } else if related
                    && cmd != Command::Negotiate
                    && !self.sessions.contains_key(&hdr.session_id)
                {
                    // The session the request inherits is not valid (Samba: a chained
                    // request with a bad session fails with INVALID_PARAMETER).
                    err(status::INVALID_PARAMETER)
                } else {
                    self.checked_dispatch(cmd, &hdr, m, ctx, last)
                }
            }
        };
        ctx.last_session_id = if self.sessions.contains_key(&ctx.session_id) {
            ctx.session_id
        } else {
            0
        };
        let tree_ok = self
            .sessions
            .get(&ctx.session_id)
            .is_some_and(|s| s.trees.contains_key(&ctx.tree_id));
        if matches!(outcome, Outcome::Nothing) {
            // No response (CANCEL, or a dropped connection): no credits either, since the
            // client would never learn of them.
            return None;
        }
        let credits = self.grant_credits(&hdr);
        let (st, body) = match outcome {
            Outcome::Nothing => return None,
            Outcome::Pending(async_id) if !last && cmd == Some(Command::Create) => {
                // MS-SMB2 <206>: a CREATE waiting for an oplock break may go async in the
                // middle of a compound; the rest of the chain waits for it.
                ctx.last_tree_id = if tree_ok { ctx.tree_id } else { 0 };
                self.suspend_chain = Some(async_id);
                let mut h = Self::response_header(&hdr, status::PENDING, credits);
                h.flags |= flags::ASYNC_COMMAND;
                h.async_id = async_id;
                let mut w = Writer::new();
                h.encode(&mut w);
                Response::Error { data: vec![] }.encode_body(&mut w, 0);
                ctx.prev_status = status::SUCCESS;
                return Some((w.buf, None));
            }
            Outcome::Pending(async_id) if !last => {
                // Like Windows and Samba, a request in the middle of a compound cannot go
                // async: it fails and the chain goes on (MS-SMB2 <159>, <162>).
                self.cancel_pending(async_id, status::INTERNAL_ERROR);
                self.pending.remove(&async_id);
                ctx.prev_status = status::INTERNAL_ERROR;
                (status::INTERNAL_ERROR, Response::Error { data: vec![] })
            }
            Outcome::Pending(async_id) => {
                let mut h = Self::response_header(&hdr, status::PENDING, credits);
                h.flags |= flags::ASYNC_COMMAND;
                h.async_id = async_id;
                let mut w = Writer::new();
                h.encode(&mut w);
                Response::Error { data: vec![] }.encode_body(&mut w, 0);
                ctx.prev_status = status::SUCCESS;
                return Some((w.buf, None));
            }
            Outcome::Reply(st, body) => (st, body),
            Outcome::Deferred(mut io) => {
                ctx.prev_status = status::SUCCESS;
                ctx.last_tree_id = if tree_ok { ctx.tree_id } else { 0 };
                io.hdr = Self::response_header(&hdr, status::SUCCESS, credits);
                io.signer = self.signer_for(hdr.session_id, signed);
                io.enc = (ctx.encrypted
                    || self.session_wants_encryption(hdr.session_id, ctx.tree_id))
                .then_some(hdr.session_id);
                self.file_io.push(*io);
                return None;
            }
        };
        ctx.prev_status = st;
        if st != status::SUCCESS {
            tracing::debug!(
                conn = self.id,
                channel = ?self.cur_channel,
                ?cmd,
                mid = hdr.message_id,
                status = format_args!("{st:#010x}"),
                "error response"
            );
        }
        if cmd == Some(Command::Create) && st != status::SUCCESS {
            ctx.file_id = None;
            ctx.create_err = Some(st);
        }
        let mut h = Self::response_header(&hdr, st, credits);
        if cmd == Some(Command::SessionSetup) {
            h.session_id = ctx.session_id;
        }
        if let Some(tid) = self.pending_tree_id.take() {
            h.tree_id = tid;
            ctx.tree_id = tid;
        }
        ctx.last_tree_id = if tree_ok
            || self
                .sessions
                .get(&ctx.session_id)
                .is_some_and(|s| s.trees.contains_key(&ctx.tree_id))
        {
            ctx.tree_id
        } else {
            0
        };
        let mut w = Writer::new();
        h.encode(&mut w);
        body.encode_body(&mut w, 0);
        let signer = match cmd {
            Some(Command::SessionSetup) => self.session_setup_signer(&h, st),
            Some(Command::Negotiate) => None,
            _ => {
                if st == status::USER_SESSION_DELETED {
                    // A session of another connection that is not bound here: the client
                    // signed with the session's key and wants the refusal signed too (Samba
                    // signs with the session's main channel key). Unknown sessions cannot be.
                    match (signed, self.neg.as_ref()) {
                        (true, Some(_)) if self.unbound.contains_key(&h.session_id) => {
                            self.unbound.get(&h.session_id).cloned()
                        }
                        (true, Some(n)) => self
                            .shared
                            .session_record(h.session_id)
                            .map(|rec| (n.signing_alg, rec.signing_key)),
                        _ => None,
                    }
                } else {
                    self.signer_for(h.session_id, signed)
                }
            }
        };
        let mut resp = w.buf;
        let mut signer = signer;
        if cmd == Some(Command::SessionSetup)
            && st == status::MORE_PROCESSING_REQUIRED
            && self.binding.contains_key(&h.session_id)
        {
            // The channel's preauth hash covers the interim response as sent, signature
            // included (Samba hashes after signing): sign it here.
            if let Some((alg, key)) = signer.take() {
                let fl =
                    u32::from_le_bytes([resp[16], resp[17], resp[18], resp[19]]) | flags::SIGNED;
                resp[16..20].copy_from_slice(&fl.to_le_bytes());
                if let Err(e) = smb_auth::signing::sign(alg, &key, &mut resp) {
                    tracing::warn!(conn = self.id, %e, "signing failed");
                }
            }
        }
        if cmd == Some(Command::Negotiate)
            && st == status::SUCCESS
            && self.dialect() == dialect::SMB311
        {
            // MS-SMB2 3.3.5.4: hash the NEGOTIATE request and response.
            self.conn_preauth = PreauthHash::new();
            self.conn_preauth.update(m);
            self.conn_preauth.update(&resp);
        }
        if cmd == Some(Command::SessionSetup) && st == status::MORE_PROCESSING_REQUIRED {
            if let Some(b) = self.binding.get_mut(&h.session_id) {
                if self
                    .neg
                    .as_ref()
                    .is_some_and(|n| n.dialect == dialect::SMB311)
                {
                    b.preauth.update(&resp);
                }
            } else if let Some(s) = self.sessions.get_mut(&h.session_id) {
                if self
                    .neg
                    .as_ref()
                    .is_some_and(|n| n.dialect == dialect::SMB311)
                {
                    s.preauth.update(&resp);
                }
            }
        }
        Some((resp, signer))
    }

    fn checked_dispatch(
        &mut self,
        cmd: Command,
        hdr: &Header,
        m: &[u8],
        ctx: &mut ChainCtx,
        last: bool,
    ) -> Outcome {
        if cmd != Command::Negotiate && self.neg.is_none() {
            self.closed = true;
            return Outcome::Nothing;
        }
        if cmd == Command::Cancel && !self.cancel_allowed(hdr, ctx, m) {
            // CANCEL has no response, not even an error (MS-SMB2 3.3.5.16).
            return Outcome::Nothing;
        }
        // Session checks (MS-SMB2 3.3.5.2.9) for everything but NEGOTIATE/SESSION_SETUP/ECHO/CANCEL.
        if !matches!(
            cmd,
            Command::Negotiate | Command::SessionSetup | Command::Echo | Command::Cancel
        ) {
            let Some(s) = self.sessions.get(&hdr.session_id) else {
                return err(status::USER_SESSION_DELETED);
            };
            if !matches!(s.state, AuthState::Valid) {
                return err(status::USER_SESSION_DELETED);
            }
            // A message forwarded from a bound connection may only use a session that
            // connection is bound to (MS-SMB2 3.3.5.2.9: the connection must be in the
            // session's ChannelList); another session of this connection is not its business.
            if let Some(ch) = self.cur_channel {
                if !self.channels.contains_key(&(ch, hdr.session_id)) {
                    return err(status::USER_SESSION_DELETED);
                }
            }
            let signed = hdr.flags & flags::SIGNED != 0;
            if !ctx.encrypted {
                if s.encrypt && s.keys.as_ref().is_some_and(|k| !k.decryption.is_empty()) {
                    return err(status::ACCESS_DENIED);
                }
                if signed {
                    if let Some((alg, key)) = self.signing_pair(hdr.session_id) {
                        if !smb_auth::signing::verify(alg, &key, m) {
                            tracing::debug!(conn = self.id, "bad signature");
                            return err(status::ACCESS_DENIED);
                        }
                    }
                } else if s.signing_required && !s.anonymous {
                    return err(status::ACCESS_DENIED);
                }
            }
            if !matches!(
                cmd,
                Command::Logoff | Command::TreeConnect | Command::OplockBreak
            ) {
                let Some(t) = s.trees.get(&hdr.tree_id) else {
                    return err(status::NETWORK_NAME_DELETED);
                };
                if t.encrypt
                    && !ctx.encrypted
                    && s.keys.as_ref().is_some_and(|k| !k.decryption.is_empty())
                {
                    return err(status::ACCESS_DENIED);
                }
            }
        }
        // Everything the request does to the share runs with the session user's credentials
        // (crate::identity). READ, WRITE, LOCK and FLUSH only use descriptors opened (and
        // permission-checked) as the user, so they skip the switch: it costs ~10 us when a
        // worker alternates between users (measured; two credential commits).
        let fd_only = matches!(
            cmd,
            Command::Read | Command::Write | Command::Lock | Command::Flush
        );
        if let Some(id) = self
            .sessions
            .get(&hdr.session_id)
            .and_then(|s| s.identity.as_ref())
            .filter(|_| !fd_only)
        {
            crate::identity::become_user(id);
        }
        let req = match Request::decode_body(cmd, m) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(conn = self.id, ?cmd, %e, "malformed request");
                return err(status::INVALID_PARAMETER);
            }
        };
        if !self.credit_charge_covers(hdr, &req) {
            return err(status::INVALID_PARAMETER);
        }
        self.dispatch(req, hdr, m, ctx, last)
    }

    /// MS-SMB2 3.3.5.2.5: with multi-credit, a request's CreditCharge must cover the larger
    /// of what it sends and what it may receive, one credit per 64 KiB (a client must not move
    /// 8 MiB for the price of one credit); without it no payload may exceed 64 KiB.
    fn credit_charge_covers(&self, hdr: &Header, req: &Request) -> bool {
        let payload: u64 = match req {
            Request::Read(r) => r.length.into(),
            Request::Write(w) => w.data.len() as u64,
            Request::Ioctl(i) => (i.input.len() as u64)
                .max(i.max_input_response.into())
                .max(i.max_output_response.into()),
            Request::QueryDirectory(q) => q.output_buffer_length.into(),
            Request::ChangeNotify(c) => c.output_buffer_length.into(),
            Request::QueryInfo(q) => (q.input.len() as u64).max(q.output_buffer_length.into()),
            Request::SetInfo(s) => s.buffer.len() as u64,
            _ => return true,
        };
        let d = self.dialect();
        let multi_credit = d > dialect::SMB202 && d != dialect::WILDCARD;
        if !multi_credit {
            // 2.0.2: the handlers refuse sizes above their (64 KiB) limits themselves.
            return true;
        }
        let needed = payload.saturating_sub(1) / 65536 + 1;
        let charge = u64::from(hdr.credit_charge.max(1));
        if needed > charge {
            tracing::debug!(
                conn = self.id,
                mid = hdr.message_id,
                payload,
                charge = hdr.credit_charge,
                "CreditCharge too small for the payload"
            );
            return false;
        }
        true
    }

    fn dispatch(
        &mut self,
        req: Request,
        hdr: &Header,
        m: &[u8],
        ctx: &mut ChainCtx,
        last: bool,
    ) -> Outcome {
        if let Some(st) = self.request_limit(&req, hdr, ctx) {
            return err(st);
        }
        match req {
            Request::Negotiate(n) => self.negotiate(n),
            Request::SessionSetup(s) => self.session_setup(s, hdr, ctx, m),
            Request::Logoff => self.logoff(hdr),
            Request::TreeConnect(t) => self.tree_connect(&t.path, hdr),
            Request::TreeDisconnect => self.tree_disconnect(hdr),
            Request::Echo => Outcome::Reply(status::SUCCESS, Response::Echo),
            Request::Cancel => self.cancel(hdr),
            Request::Create(c) => self.create(c, hdr, ctx),
            Request::Close(c) => self.close(c, ctx),
            Request::Flush { file_id } => self.flush(file_id, ctx),
            Request::Read(r) => self.read(r, ctx),
            Request::Write(w) => self.write(w, hdr, ctx),
            Request::Lock(l) => self.lock(l, hdr, ctx),
            Request::Ioctl(i) => self.ioctl(i, hdr, ctx),
            Request::QueryDirectory(q) => self.query_directory(q, ctx),
            Request::ChangeNotify(c) => self.change_notify(c, hdr, ctx, last),
            Request::QueryInfo(q) => self.query_info(q, ctx),
            Request::SetInfo(s) => self.set_info(s, hdr, ctx),
            Request::OplockBreak(a) => self.break_ack(a, ctx),
        }
    }

    // ---- NEGOTIATE ---------------------------------------------------------------------

    fn set_negotiated(
        &mut self,
        d: u16,
        req: &NegotiateRequest,
        cipher: Option<Cipher>,
        signing: Option<SigningAlgorithm>,
    ) {
        let dial = Dialect::from_revision(d).unwrap_or(Dialect::Smb202);
        let mut server_caps = 0;
        if d >= dialect::SMB210 {
            server_caps |= caps::LEASING | caps::LARGE_MTU;
        }
        if (dialect::SMB300..dialect::SMB311).contains(&d)
            && req.capabilities & caps::ENCRYPTION != 0
        {
            server_caps |= caps::ENCRYPTION;
        }
        if d >= dialect::SMB300 && d != dialect::WILDCARD && self.shared.config.server.multichannel
        {
            server_caps |= caps::MULTI_CHANNEL;
        }
        let mut server_security_mode = security_mode::SIGNING_ENABLED;
        if self.shared.config.server.signing_required {
            server_security_mode |= security_mode::SIGNING_REQUIRED;
        }
        let cipher = if d == dialect::SMB311 {
            cipher
        } else if server_caps & caps::ENCRYPTION != 0 {
            Some(Cipher::Aes128Ccm)
        } else {
            None
        };
        self.neg = Some(Negotiated {
            dialect: d,
            client_guid: req.client_guid,
            client_security_mode: req.security_mode,
            client_caps: req.capabilities,
            server_security_mode,
            server_caps,
            cipher,
            signing_alg: signing.unwrap_or(SigningAlgorithm::default_for(dial)),
            client_dialects: req.dialects.clone(),
        });
    }

    fn negotiate_response_body(&self, d: u16, contexts: Vec<NegotiateContext>) -> Response {
        let (server_security_mode, server_caps) = match &self.neg {
            Some(n) => (n.server_security_mode, n.server_caps),
            None => (
                security_mode::SIGNING_ENABLED
                    | if self.shared.config.server.signing_required {
                        security_mode::SIGNING_REQUIRED
                    } else {
                        0
                    },
                0,
            ),
        };
        let max = if d == dialect::SMB202 || d == dialect::WILDCARD {
            MAX_IO_202
        } else {
            MAX_IO
        };
        Response::Negotiate(NegotiateResponse {
            security_mode: server_security_mode,
            dialect: d,
            server_guid: self.shared.server_guid,
            capabilities: server_caps,
            max_transact: max,
            max_read: max,
            max_write: max,
            system_time: crate::fs::now_filetime(),
            start_time: 0,
            security_buffer: smb_auth::spnego::negotiate_token(),
            contexts,
        })
    }

    fn negotiate(&mut self, req: NegotiateRequest) -> Outcome {
        if self
            .neg
            .as_ref()
            .is_some_and(|n| n.dialect != dialect::WILDCARD)
        {
            // A second NEGOTIATE on a connection is a protocol violation (MS-SMB2 3.3.5.3).
            self.closed = true;
            return Outcome::Nothing;
        }
        if req.dialects.is_empty() {
            return err(status::INVALID_PARAMETER);
        }
        const OURS: [u16; 5] = [
            dialect::SMB311,
            dialect::SMB302,
            dialect::SMB300,
            dialect::SMB210,
            dialect::SMB202,
        ];
        let Some(d) = OURS.iter().copied().find(|d| req.dialects.contains(d)) else {
            return err(status::NOT_SUPPORTED);
        };
        tracing::debug!(
            conn = self.id,
            dialects = ?req.dialects,
            contexts = ?req.contexts.iter().map(|c| (c.ctx_type, c.data.len())).collect::<Vec<_>>(),
            "negotiate"
        );
        let mut contexts = Vec::new();
        let mut cipher = None;
        let mut signing = None;
        if d == dialect::SMB311 {
            let mut have_preauth = false;
            for c in &req.contexts {
                match c.ctx_type {
                    negctx::PREAUTH_INTEGRITY => {
                        if let Ok((algs, _)) = c.preauth() {
                            if algs.contains(&negctx::SHA512) {
                                have_preauth = true;
                            }
                        }
                    }
                    negctx::ENCRYPTION => {
                        if let Ok(ids) = c.id_list() {
                            // Prefer GCM (faster), then CCM; 128-bit first like Windows.
                            for pref in [2u16, 1, 4, 3] {
                                if ids.contains(&pref) {
                                    cipher = Cipher::from_id(pref);
                                    break;
                                }
                            }
                        }
                    }
                    negctx::SIGNING => {
                        if let Ok(ids) = c.id_list() {
                            for pref in [2u16, 1, 0] {
                                if ids.contains(&pref) {
                                    signing = SigningAlgorithm::from_id(pref);
                                    break;
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !have_preauth {
                return err(status::INVALID_PARAMETER);
            }
            let salt: [u8; 32] = rand::random();
            let mut w = Writer::new();
            w.u16(1).u16(32).u16(negctx::SHA512).bytes(&salt);
            contexts.push(NegotiateContext {
                ctx_type: negctx::PREAUTH_INTEGRITY,
                data: w.buf,
            });
            if req
                .contexts
                .iter()
                .any(|c| c.ctx_type == negctx::ENCRYPTION)
            {
                // Only answer contexts the client sent (MS-SMB2 3.3.5.4); cipher 0 = none.
                let mut w = Writer::new();
                w.u16(1).u16(cipher.map_or(0, |c| c.id()));
                contexts.push(NegotiateContext {
                    ctx_type: negctx::ENCRYPTION,
                    data: w.buf,
                });
            }
            if let Some(s) = signing {
                let mut w = Writer::new();
                w.u16(1).u16(s.id());
                contexts.push(NegotiateContext {
                    ctx_type: negctx::SIGNING,
                    data: w.buf,
                });
            }
        }
        self.set_negotiated(d, &req, cipher, signing);
        Outcome::Reply(status::SUCCESS, self.negotiate_response_body(d, contexts))
    }

    // ---- SESSION_SETUP -------------------------------------------------------------------

    fn session_setup(
        &mut self,
        req: SessionSetupRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
        m: &[u8],
    ) -> Outcome {
        let is311 = self.dialect() == dialect::SMB311;
        let mut sid = hdr.session_id;
        if req.flags & smb_proto::SESSION_FLAG_BINDING != 0 {
            return self.bind_session(&req, hdr, ctx, m);
        }
        if let Some(b) = self
            .bound
            .get(&sid)
            .filter(|_| !self.sessions.contains_key(&sid))
        {
            // A reauthentication on a bound channel is forwarded to the session's owner when
            // it verifies with the channel key (see forward_to_owner); this one did not. The
            // client drops a connection whose answer is unsigned when it signed.
            self.override_signer = Some(b.signer.clone());
            return err(status::ACCESS_DENIED);
        }
        if sid == 0 {
            self.next_session += 1;
            sid = (self.id << 32) | self.next_session;
            let ntlm = NtlmServer::new(
                self.shared.users.clone(),
                &self.shared.config.server.netbios_name,
                &self.shared.config.server.domain,
            );
            let mut preauth = PreauthHash::new();
            if is311 {
                preauth = self.conn_preauth.clone();
            }
            self.sessions.insert(
                sid,
                Session {
                    state: AuthState::InProgress(Box::new(ntlm)),
                    reauth: None,
                    user: String::new(),
                    anonymous: false,
                    keys: None,
                    signing_required: false,
                    encrypt: false,
                    preauth,
                    trees: HashMap::new(),
                    identity: None,
                },
            );
        } else if self.sessions.contains_key(&sid) {
            if let Err(st) = self.check_reauth_signature(sid, ctx, m) {
                return err(st);
            }
            let Some(s) = self.sessions.get_mut(&sid) else {
                return err(status::USER_SESSION_DELETED);
            };
            if matches!(s.state, AuthState::Valid) && s.reauth.is_none() {
                s.reauth = Some(Box::new(NtlmServer::new(
                    self.shared.users.clone(),
                    &self.shared.config.server.netbios_name,
                    &self.shared.config.server.domain,
                )));
            }
        } else {
            // A session of another connection: the client signs with that session's key and
            // expects the refusal signed the same way.
            if self.signed_request {
                if let (Some(rec), Some(n)) = (self.shared.session_record(sid), self.neg.as_ref()) {
                    self.override_signer = Some((n.signing_alg, rec.signing_key));
                }
            }
            return err(status::USER_SESSION_DELETED);
        }
        ctx.session_id = sid;
        let dial = self.auth_dialect();
        let cipher = self.neg.as_ref().and_then(|n| n.cipher);
        let client_requires_signing =
            req.security_mode as u16 & security_mode::SIGNING_REQUIRED != 0;
        let server_requires_signing = self.shared.config.server.signing_required;
        let allow_anon = self.shared.config.server.allow_anonymous;
        let global_encrypt = self.shared.config.server.encrypt;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return err(status::USER_SESSION_DELETED);
        };
        if is311 && !matches!(s.state, AuthState::Valid) {
            // MS-SMB2 3.3.5.5: every SESSION_SETUP request goes into the session's preauth hash.
            s.preauth.update(m);
        }
        let step = {
            let ntlm: &mut NtlmServer = match (&mut s.state, &mut s.reauth) {
                (_, Some(r)) => r,
                (AuthState::InProgress(n), None) => n,
                (AuthState::Valid, None) => return err(status::INTERNAL_ERROR),
            };
            ntlm.step(&req.buffer)
        };
        match step {
            Ok(AuthStep::Continue { token }) => Outcome::Reply(
                status::MORE_PROCESSING_REQUIRED,
                Response::SessionSetup {
                    flags: 0,
                    buffer: token,
                },
            ),
            Ok(AuthStep::Done {
                token,
                user,
                session_key,
                anonymous,
                ..
            }) => {
                let was_valid = matches!(s.state, AuthState::Valid);
                s.reauth = None;
                if was_valid {
                    // Checked before anything of the session changes (its identity included).
                    if let Err(st) = self.check_reauth_user(sid, &user, anonymous, allow_anon) {
                        return err(st);
                    }
                }
                if anonymous && !allow_anon {
                    self.sessions.remove(&sid);
                    return err(status::LOGON_FAILURE);
                }
                // The Unix identity the session's file operations run as: resolved for every
                // configured user at start, so a user without one cannot get here.
                let identity = if anonymous {
                    Some(self.shared.identities.guest.clone())
                } else {
                    self.shared.identities.of_user(&user)
                };
                let Some(identity) = identity else {
                    tracing::warn!(conn = self.id, %user, "no Unix identity for user");
                    self.sessions.remove(&sid);
                    return err(status::LOGON_FAILURE);
                };
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return err(status::USER_SESSION_DELETED);
                };
                s.identity = Some(identity);
                let preauth = s.preauth.value();
                let keys = smb_auth::keys::derive(
                    dial,
                    &session_key,
                    if is311 { Some(&preauth) } else { None },
                    cipher,
                );
                s.state = AuthState::Valid;
                s.user = user;
                let mut flags = 0;
                if was_valid {
                    // Re-authentication keeps the session's keys and signing state
                    // (MS-SMB2 3.3.5.5.3); Samba also accepts another user here.
                    if anonymous {
                        flags |= SESSION_FLAG_IS_NULL;
                    }
                    return Outcome::Reply(
                        status::SUCCESS,
                        Response::SessionSetup {
                            flags,
                            buffer: token,
                        },
                    );
                }
                s.anonymous = anonymous;
                if anonymous {
                    flags |= SESSION_FLAG_IS_NULL;
                } else {
                    if !was_valid {
                        s.keys = Some(keys);
                    }
                    s.signing_required = client_requires_signing || server_requires_signing;
                    if global_encrypt && dial.is_smb3() {
                        s.encrypt = true;
                        flags |= SESSION_FLAG_ENCRYPT_DATA;
                    }
                }
                tracing::info!(conn = self.id, sid, user = %s.user, anonymous, "session established");
                if !was_valid && !anonymous {
                    let user = s.user.clone();
                    let signing_key = s
                        .keys
                        .as_ref()
                        .map(|k| k.signing.clone())
                        .unwrap_or_default();
                    let (d, signing_alg) = self
                        .neg
                        .as_ref()
                        .map(|n| (n.dialect, n.signing_alg))
                        .unwrap_or((0, SigningAlgorithm::HmacSha256));
                    self.shared.session_established(
                        sid,
                        crate::shared::SessionRecord {
                            conn: self.id,
                            user: user.clone(),
                            dialect: d,
                            signing_alg,
                            signing_key,
                            cipher,
                            channels: 0,
                        },
                    );
                    if req.previous_session_id != 0 && req.previous_session_id != sid {
                        // MS-SMB2 3.3.5.5.3: the previous session of this user goes away, on
                        // whichever connection it lives (this one: after this response).
                        if self.sessions.contains_key(&req.previous_session_id) {
                            self.expire_after.push(req.previous_session_id);
                        } else {
                            self.shared.expire_previous_session(
                                req.previous_session_id,
                                &user,
                                self.id,
                            );
                        }
                    }
                }
                Outcome::Reply(
                    status::SUCCESS,
                    Response::SessionSetup {
                        flags,
                        buffer: token,
                    },
                )
            }
            Err(e) => {
                tracing::info!(conn = self.id, sid, %e, "authentication failed");
                let st = e.nt_status();
                let was_valid = matches!(s.state, AuthState::Valid);
                if was_valid {
                    // A failed re-authentication ends the session (as Windows and Samba do);
                    // the refusal is still signed with the session's key.
                    if self.signed_request {
                        self.override_signer = self.signer_for(sid, true);
                    }
                    // Later requests of the client on the session get USER_SESSION_DELETED
                    // signed with the session's key (the client insists on it).
                    let own = self
                        .sessions
                        .get(&sid)
                        .and_then(|s| s.keys.as_ref())
                        .zip(self.neg.as_ref())
                        .map(|(k, n)| (n.signing_alg, k.signing.clone()));
                    if let Some(sig) = own {
                        self.remember_ended(sid, sig);
                    }
                    self.close_session_opens(sid, None);
                    self.shared.session_gone(sid);
                    self.end_channels(sid);
                }
                self.sessions.remove(&sid);
                err(st)
            }
        }
    }

    /// MS-SMB2 3.3.5.2.4 for a reauthentication (SESSION_SETUP on a valid session): it is a
    /// request on an established session like any other, so a signature must verify with the
    /// session's (channel's) key, and an unsigned one is refused when the session requires
    /// signing. Otherwise anyone could restart authentication on somebody else's session
    /// without its key. Sealed requests were authenticated by decryption.
    fn check_reauth_signature(&mut self, sid: u64, ctx: &ChainCtx, m: &[u8]) -> Result<(), u32> {
        let Some(s) = self.sessions.get(&sid) else {
            return Ok(());
        };
        if !matches!(s.state, AuthState::Valid) || s.anonymous || ctx.encrypted {
            return Ok(());
        }
        let required = s.signing_required;
        if self.signed_request {
            let Some((alg, key)) = self.signing_pair(sid) else {
                return Ok(());
            };
            if !smb_auth::signing::verify(alg, &key, m) {
                tracing::info!(conn = self.id, sid, "reauthentication with a bad signature");
                return Err(status::ACCESS_DENIED);
            }
        } else if required {
            tracing::info!(
                conn = self.id,
                sid,
                "unsigned reauthentication of a signing session"
            );
            return Err(status::ACCESS_DENIED);
        }
        Ok(())
    }

    /// Whether a completed reauthentication of valid session `sid` may take effect.
    /// A reauthentication keeps Session.SessionKey, the signing and encryption keys, the tree
    /// connects and the opens (MS-SMB2 3.3.5.5.2); handing them to another user would give
    /// that user what was granted to the first one without any check. MS-SMB 3.3.5.3 lets the
    /// server fail a reauthentication that names another user, and we do (ACCESS_DENIED; the
    /// session goes on unchanged). Reauthenticating as anonymous (the guest identity: fewer
    /// rights; smbtorture session.reauth2-5, written against Windows, expect it) and back to
    /// the session's own user stays allowed where anonymous logons are.
    fn check_reauth_user(
        &mut self,
        sid: u64,
        user: &str,
        anonymous: bool,
        allow_anon: bool,
    ) -> Result<(), u32> {
        let refuse = |this: &mut Self, st: u32| {
            if this.signed_request {
                this.override_signer = this.signer_for(sid, true);
            }
            Err(st)
        };
        if anonymous {
            if !allow_anon {
                tracing::info!(conn = self.id, sid, "anonymous reauthentication refused");
                return refuse(self, status::LOGON_FAILURE);
            }
            return Ok(());
        }
        let owner = match self.shared.session_record(sid) {
            Some(r) => r.user,
            None => self
                .sessions
                .get(&sid)
                .map(|s| s.user.clone())
                .unwrap_or_default(),
        };
        if !owner.eq_ignore_ascii_case(user) {
            tracing::warn!(
                conn = self.id,
                sid,
                session_user = %owner,
                new_user = %user,
                "reauthentication as another user refused"
            );
            return refuse(self, status::ACCESS_DENIED);
        }
        Ok(())
    }

    /// SESSION_SETUP with SMB2_SESSION_FLAG_BINDING (MS-SMB2 3.3.5.5.2): checks in the order
    /// Windows and Samba apply them, then an authentication of the session's user on this
    /// connection. Refusals are signed with the session's key (the client verifies them with
    /// it); the final response with the new Channel.SigningKey (3.3.5.5.3).
    fn bind_session(
        &mut self,
        req: &SessionSetupRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
        m: &[u8],
    ) -> Outcome {
        let sid = hdr.session_id;
        ctx.session_id = sid;
        if let Some(b) = self.bound.get(&sid) {
            // Already a channel of this session: only a request signed with the channel key
            // gets the real answer.
            let signer = b.signer.clone();
            if !self.signed_request {
                return err(status::INVALID_PARAMETER);
            }
            let ok = smb_auth::signing::verify(signer.0, &signer.1, m);
            self.override_signer = Some(signer);
            if !ok {
                return err(status::ACCESS_DENIED);
            }
            return err(status::REQUEST_NOT_ACCEPTED);
        }
        if !self.binding.contains_key(&sid) {
            let rec = match self.binding_checks(sid) {
                Ok(rec) => rec,
                Err(o) => return o,
            };
            let ntlm = NtlmServer::new(
                self.shared.users.clone(),
                &self.shared.config.server.netbios_name,
                &self.shared.config.server.domain,
            );
            self.binding.insert(
                sid,
                Binding {
                    ntlm: Box::new(ntlm),
                    preauth: self.conn_preauth.clone(),
                    rec,
                },
            );
        }
        let is311 = self.dialect() == dialect::SMB311;
        let dial = self.auth_dialect();
        let Some(n) = self.neg.as_ref() else {
            return err(status::INVALID_PARAMETER);
        };
        let (cur_alg, cipher) = (n.signing_alg, n.cipher);
        let Some(b) = self.binding.get_mut(&sid) else {
            return err(status::USER_SESSION_DELETED);
        };
        // The client signs binding requests with the session's signing key and algorithm.
        let session_signer = (b.rec.signing_alg, b.rec.signing_key.clone());
        self.override_signer = Some(session_signer.clone());
        if !self.signed_request
            || !(smb_auth::signing::verify(session_signer.0, &session_signer.1, m)
                || smb_auth::signing::verify(cur_alg, &session_signer.1, m))
        {
            self.binding.remove(&sid);
            return err(status::ACCESS_DENIED);
        }
        if is311 {
            b.preauth.update(m);
        }
        match b.ntlm.step(&req.buffer) {
            Ok(AuthStep::Continue { token }) => Outcome::Reply(
                status::MORE_PROCESSING_REQUIRED,
                Response::SessionSetup {
                    flags: 0,
                    buffer: token,
                },
            ),
            Ok(AuthStep::Done {
                token,
                user,
                session_key,
                anonymous,
                ..
            }) => {
                let Some(b) = self.binding.remove(&sid) else {
                    return err(status::USER_SESSION_DELETED);
                };
                if anonymous || user.to_lowercase() != b.rec.user {
                    // MS-SMB2 3.3.5.5.2: the binding user must be the session's user.
                    tracing::info!(conn = self.id, sid, %user, "binding by another user refused");
                    return err(status::ACCESS_DENIED);
                }
                let preauth = b.preauth.value();
                let keys = smb_auth::keys::derive(
                    dial,
                    &session_key,
                    if is311 { Some(&preauth) } else { None },
                    cipher,
                );
                let signer: Signer = (cur_alg, keys.signing.clone());
                if self.shared.session_record(sid).is_none() {
                    return err(status::USER_SESSION_DELETED);
                }
                if !self.shared.channel_added(sid) {
                    return err(status::INSUFFICIENT_RESOURCES);
                }
                let delivered = self.shared.post_event(
                    b.rec.conn,
                    Event::ChannelBound {
                        session_id: sid,
                        channel: self.id,
                        signing_alg: signer.0,
                        signing_key: crate::shared::ChannelKey(signer.1.clone()),
                    },
                );
                if !delivered {
                    self.shared.channel_removed(sid);
                    return err(status::USER_SESSION_DELETED);
                }
                tracing::info!(conn = self.id, sid, owner = b.rec.conn, "session bound");
                self.bound.insert(
                    sid,
                    BoundChannel {
                        owner: b.rec.conn,
                        signer: signer.clone(),
                    },
                );
                self.override_signer = Some(signer);
                Outcome::Reply(
                    status::SUCCESS,
                    Response::SessionSetup {
                        flags: 0,
                        buffer: token,
                    },
                )
            }
            Err(e) => {
                tracing::info!(conn = self.id, sid, %e, "binding authentication failed");
                self.binding.remove(&sid);
                err(e.nt_status())
            }
        }
    }

    /// MS-SMB2 3.3.5.5.2 checks of a new binding, in Samba's order (which matches what
    /// smbtorture expects from Windows): the session's record, or the refusal to send.
    fn binding_checks(&mut self, sid: u64) -> Result<crate::shared::SessionRecord, Outcome> {
        let Some(rec) = (sid != 0)
            .then(|| self.shared.session_record(sid))
            .flatten()
        else {
            return Err(err(if sid == 0 {
                status::INVALID_PARAMETER
            } else {
                status::USER_SESSION_DELETED
            }));
        };
        let Some(n) = self.neg.as_ref() else {
            return Err(err(status::INVALID_PARAMETER));
        };
        let cur = n.signing_alg;
        let st = if rec.signing_alg == SigningAlgorithm::AesGmac && cur != rec.signing_alg {
            REQUEST_OUT_OF_SEQUENCE
        } else if cur == SigningAlgorithm::AesGmac && cur != rec.signing_alg {
            status::NOT_SUPPORTED
        } else if n.dialect < dialect::SMB300 || !self.shared.config.server.multichannel {
            status::REQUEST_NOT_ACCEPTED
        } else if !self.signed_request || rec.dialect != n.dialect || rec.cipher != n.cipher {
            status::INVALID_PARAMETER
        } else if rec.conn == self.id {
            // The session's own connection is already one of its channels.
            status::REQUEST_NOT_ACCEPTED
        } else {
            return Ok(rec);
        };
        // The refusal is signed with the session's key; across an SMB 2.x / 3.x mix the
        // client verifies it with the session's own algorithm (HMAC-SHA256 vs AES-CMAC).
        let alg = if rec.dialect < dialect::SMB300 || n.dialect < dialect::SMB300 {
            rec.signing_alg
        } else {
            cur
        };
        if self.signed_request {
            self.override_signer = Some((alg, rec.signing_key));
        }
        Err(err(st))
    }

    /// The final SESSION_SETUP response is signed for 3.1.1 (MS-SMB2 3.3.5.5.3) and whenever
    /// signing is required, so the client can verify the session key.
    fn session_setup_signer(&self, h: &Header, st: u32) -> Option<(SigningAlgorithm, Vec<u8>)> {
        if let Some(sig) = &self.override_signer {
            return Some(sig.clone());
        }
        if st != status::SUCCESS {
            // Re-authentication and binding attempts arrive signed on a valid session; their
            // answers (errors and interim ones too) are signed with the session's key.
            if h.flags & flags::SIGNED != 0 || self.signed_request {
                return self.signer_for(h.session_id, true);
            }
            return None;
        }
        let s = self.sessions.get(&h.session_id)?;
        if s.anonymous {
            return None;
        }
        s.keys.as_ref()?;
        let n = self.neg.as_ref()?;
        if n.dialect == dialect::SMB311 || s.signing_required || h.flags & flags::SIGNED != 0 {
            self.signing_pair(h.session_id)
        } else {
            None
        }
    }

    fn logoff(&mut self, hdr: &Header) -> Outcome {
        let sid = hdr.session_id;
        // Durable opens survive a logoff like a disconnect (Samba; smbtorture
        // durable-open.reopen4 reclaims one from a new session on the same connection).
        self.park_durable_opens(Some(sid));
        self.close_session_opens(sid, None);
        self.sessions.remove(&sid);
        self.shared.session_gone(sid);
        self.end_channels(sid);
        Outcome::Reply(status::SUCCESS, Response::Logoff)
    }

    pub(crate) fn close_session_opens(&mut self, sid: u64, tree: Option<u32>) {
        let ids: Vec<u64> = self
            .opens
            .iter()
            .filter(|(_, o)| o.session_id == sid && tree.is_none_or(|t| o.tree_id == t))
            .map(|(k, _)| *k)
            .collect();
        for v in ids {
            self.close_open(v, status::SUCCESS);
        }
    }

    fn tree_connect(&mut self, path: &str, hdr: &Header) -> Outcome {
        let name = path.rsplit('\\').next().unwrap_or("");
        let d = self.dialect();
        let (share, encrypt, read_only) = if name.eq_ignore_ascii_case("IPC$") {
            (None, false, true)
        } else {
            match self
                .shared
                .shares
                .iter()
                .position(|s| s.name.eq_ignore_ascii_case(name))
            {
                Some(i) => (
                    Some(i),
                    self.shared.shares[i].encrypt,
                    self.shared.shares[i].read_only,
                ),
                None => return err(status::BAD_NETWORK_NAME),
            }
        };
        let Some(s) = self.sessions.get_mut(&hdr.session_id) else {
            return err(status::USER_SESSION_DELETED);
        };
        if let Some(i) = share {
            // Who may use the share: anonymous sessions only where guest_ok says so, users
            // per valid_users (MS-SMB2 3.3.5.7: access to the share is checked here and
            // refused with STATUS_ACCESS_DENIED).
            let sh = &self.shared.shares[i];
            if !sh.admits(&s.user, s.anonymous, s.identity.as_deref()) {
                tracing::info!(conn = self.id, user = %s.user, anonymous = s.anonymous,
                    share = %sh.name, "tree connect refused");
                return err(status::ACCESS_DENIED);
            }
        }
        let encrypt = encrypt && !s.anonymous;
        if encrypt && d < dialect::SMB300 {
            return err(status::ACCESS_DENIED);
        }
        self.next_tree += 1;
        let tid = self.next_tree;
        s.trees.insert(tid, Tree { share, encrypt });
        let mut sflags = 0;
        if encrypt {
            sflags |= smb_proto::share_flags::ENCRYPT_DATA;
        }
        let maximal_access = if read_only { 0x0012_00A9 } else { 0x001F_01FF };
        // The response carries the new TreeId in its header.
        self.pending_tree_id = Some(tid);
        Outcome::Reply(
            status::SUCCESS,
            Response::TreeConnect {
                share_type: if share.is_some() {
                    smb_proto::share_type::DISK
                } else {
                    smb_proto::share_type::PIPE
                },
                flags: sflags,
                capabilities: 0,
                maximal_access,
            },
        )
    }

    fn tree_disconnect(&mut self, hdr: &Header) -> Outcome {
        self.close_session_opens(hdr.session_id, Some(hdr.tree_id));
        if let Some(s) = self.sessions.get_mut(&hdr.session_id) {
            s.trees.remove(&hdr.tree_id);
        }
        Outcome::Reply(status::SUCCESS, Response::TreeDisconnect)
    }

    // ---- async ------------------------------------------------------------------------------

    pub(crate) fn go_async(&mut self, hdr: &Header, ctx: &ChainCtx, kind: PendingKind) -> u64 {
        self.next_async += 1;
        let id = self.next_async;
        self.pending.insert(
            id,
            PendingOp {
                channel: self.cur_channel,
                rest: None,
                message_id: hdr.message_id,
                session_id: hdr.session_id,
                tree_id: hdr.tree_id,
                command: Command::from_u16(hdr.command).unwrap_or(Command::Echo),
                encrypted: ctx.encrypted,
                signed: hdr.flags & flags::SIGNED != 0,
                kind,
            },
        );
        id
    }

    /// Send the final response of an async operation.
    pub(crate) fn complete_async(&mut self, async_id: u64, st: u32, body: Response) {
        let Some(p) = self.pending.remove(&async_id) else {
            return;
        };
        let h = Header {
            status: st,
            command: p.command as u16,
            credits: 0,
            flags: flags::SERVER_TO_REDIR | flags::ASYNC_COMMAND,
            message_id: p.message_id,
            async_id,
            session_id: p.session_id,
            ..Default::default()
        };
        let mut w = Writer::new();
        h.encode(&mut w);
        body.encode_body(&mut w, 0);
        let mut msg = w.buf;
        let enc = (p.encrypted || self.session_wants_encryption(p.session_id, p.tree_id))
            .then_some(p.session_id);
        // The answer goes out on the connection the request came in on.
        let outer = self.cur_channel;
        let mut saved = std::mem::take(&mut self.channel_out);
        self.cur_channel = p.channel;
        if enc.is_none() {
            if let Some((alg, key)) = self.signer_for(p.session_id, p.signed) {
                msg[16..20].copy_from_slice(&(h.flags | flags::SIGNED).to_le_bytes());
                let _ = smb_auth::signing::sign(alg, &key, &mut msg);
            }
        }
        self.emit(msg, enc);
        self.cur_channel = outer;
        if let Some(ch) = p.channel.filter(|ch| Some(*ch) != outer) {
            self.flush_channel_out(ch, false);
        }
        saved.append(&mut self.channel_out);
        self.channel_out = saved;
    }

    /// MS-SMB2 3.3.5.2.4 applies to CANCEL too: on a session that signs, an unsigned or badly
    /// signed CANCEL must not abort a request the client sent signed (a blocking lock, a
    /// waiting create, a notify). Sealed CANCELs were authenticated by decryption.
    fn cancel_allowed(&self, hdr: &Header, ctx: &ChainCtx, m: &[u8]) -> bool {
        if ctx.encrypted || hdr.session_id == 0 {
            // Session 0 names no session, so it matches no pending request (see `cancel`).
            return true;
        }
        let Some(s) = self.sessions.get(&hdr.session_id) else {
            return true;
        };
        if !matches!(s.state, AuthState::Valid) || s.anonymous {
            return true;
        }
        if s.encrypt && s.keys.as_ref().is_some_and(|k| !k.decryption.is_empty()) {
            tracing::debug!(
                conn = self.id,
                "unsealed CANCEL on an encrypted session ignored"
            );
            return false;
        }
        if hdr.flags & flags::SIGNED != 0 {
            if let Some((alg, key)) = self.signing_pair(hdr.session_id) {
                if !smb_auth::signing::verify(alg, &key, m) {
                    tracing::info!(conn = self.id, "CANCEL with a bad signature ignored");
                    return false;
                }
            }
        } else if s.signing_required {
            tracing::info!(
                conn = self.id,
                "unsigned CANCEL on a signing session ignored"
            );
            return false;
        }
        true
    }

    fn cancel(&mut self, hdr: &Header) -> Outcome {
        let found = self
            .pending
            .iter()
            .find(|(aid, p)| {
                // Only the session that sent a request can cancel it, on the connection it
                // came in on (MessageIds are per connection).
                if p.session_id != hdr.session_id || p.channel != self.cur_channel {
                    return false;
                }
                if hdr.is_async() {
                    **aid == hdr.async_id
                } else {
                    p.message_id == hdr.message_id
                }
            })
            .map(|(aid, _)| *aid);
        if let Some(aid) = found {
            self.cancel_pending(aid, status::CANCELLED);
        }
        Outcome::Nothing
    }

    pub(crate) fn cancel_pending(&mut self, aid: u64, st: u32) {
        let Some(p) = self.pending.get(&aid) else {
            return;
        };
        match &p.kind {
            PendingKind::Notify { dir, .. } => {
                let dir = dir.clone();
                self.shared.unwatch(self.id, &dir);
                if st == status::INTERNAL_ERROR {
                    self.pending.remove(&aid);
                } else {
                    self.complete_async(aid, st, Response::Error { data: vec![] });
                }
            }
            PendingKind::Lock { .. } | PendingKind::Create(_) | PendingKind::Rename { .. } => {
                // The lock service answers with Completed{Done(Cancelled)}, which finishes it.
                let mid = p.message_id;
                let r = self.shared.lock_request(
                    self.id,
                    0,
                    locking::Request::Cancel {
                        request: locking::RequestId(mid),
                    },
                );
                tracing::debug!(conn = self.id, ?r, "cancel sent to lock service");
            }
        }
    }

    /// An event routed to this connection.
    pub fn on_event(&mut self, ev: Event) {
        match ev {
            Event::DirChanged { dir, action, name } => self.notify_fire(&dir, action, &name),
            Event::Lock(n) => self.on_lock_notification(n),
            Event::LockStateLost => {
                // Its handles' share modes and locks are no longer enforced anywhere: keeping
                // them would let another node grant conflicting ones. Dropping the connection
                // makes the client reconnect and reopen through the new lockmgrd session.
                tracing::warn!(
                    conn = self.id,
                    "lock state lost with lockmgrd; disconnecting"
                );
                self.closed = true;
            }
            Event::ExpireSession { session_id } => {
                tracing::info!(conn = self.id, session_id, "session expired by reconnect");
                // MS-SMB2 3.3.5.5.3: durable opens of the previous session stay reclaimable.
                self.park_durable_opens(Some(session_id));
                self.close_session_opens(session_id, None);
                self.sessions.remove(&session_id);
                self.end_channels(session_id);
            }
            Event::ChannelBound {
                session_id,
                channel,
                signing_alg,
                signing_key,
            } => {
                if self.sessions.contains_key(&session_id) {
                    tracing::info!(conn = self.id, session_id, channel, "channel bound");
                    self.channels
                        .insert((channel, session_id), (signing_alg, signing_key.0));
                } else {
                    self.shared
                        .post_event(channel, Event::ChannelGone { session_id });
                }
            }
            Event::ChannelMessage { channel, msg, seq } => {
                let was_closed = self.closed;
                self.cur_channel = Some(channel);
                self.cur_seq = Some(seq);
                self.on_message(&msg);
                self.cur_channel = None;
                self.cur_seq = None;
                // A protocol violation on the channel drops the channel, not this connection.
                let close = self.closed && !was_closed;
                self.closed = was_closed;
                self.flush_channel_out(channel, close);
            }
            Event::ChannelOutput { frames, close } => {
                self.out.extend(frames);
                if close {
                    self.closed = true;
                }
            }
            Event::ChannelGone { session_id } => {
                if let Some(b) = self.bound.remove(&session_id) {
                    self.remember_ended(session_id, b.signer);
                }
            }
            Event::ChannelClosed { channel } => {
                self.channels.retain(|(ch, _), _| *ch != channel);
            }
        }
    }

    fn remember_ended(&mut self, sid: u64, signer: Signer) {
        if self.unbound.len() >= 64 {
            self.unbound.clear();
        }
        self.unbound.insert(sid, signer);
    }

    /// Send what was produced for bound connection `channel` back to it.
    fn flush_channel_out(&mut self, channel: u64, close: bool) {
        let frames = std::mem::take(&mut self.channel_out);
        if frames.is_empty() && !close {
            return;
        }
        self.shared
            .post_event(channel, Event::ChannelOutput { frames, close });
    }

    /// Session `sid` ended: its bound channels forget it.
    fn end_channels(&mut self, sid: u64) {
        let gone: Vec<u64> = self
            .channels
            .keys()
            .filter(|(_, s)| *s == sid)
            .map(|(ch, _)| *ch)
            .collect();
        for ch in gone {
            self.channels.remove(&(ch, sid));
            self.shared
                .post_event(ch, Event::ChannelGone { session_id: sid });
        }
    }

    /// A message for a session this connection is bound to goes to the session's owner,
    /// which holds its trees and opens (MS-SMB2 3.3.5.2.9: the session is found in the
    /// global table). Returns false when it is to be processed here.
    fn forward_to_owner(&mut self, msg: &[u8]) -> bool {
        if self.bound.is_empty() {
            return false;
        }
        let sid = if msg[0] == 0xFD {
            smb_auth::encryption::transform_session_id(msg)
        } else {
            Header::decode(msg).ok().map(|h| h.session_id)
        };
        let Some(sid) = sid else {
            return false;
        };
        let Some(b) = self.bound.get(&sid) else {
            return false;
        };
        if msg[0] == 0xFE {
            let Ok(h) = Header::decode(msg) else {
                return false;
            };
            if h.command == Command::SessionSetup as u16 {
                // Binding again, or an unverifiable reauthentication, is answered here.
                let first = smb_proto::split_compound(msg)
                    .ok()
                    .and_then(|v| v.first().map(|m| m.to_vec()))
                    .unwrap_or_default();
                let binding = matches!(
                    Request::decode_body(Command::SessionSetup, &first),
                    Ok(Request::SessionSetup(ref r)) if r.flags & smb_proto::SESSION_FLAG_BINDING != 0
                );
                // A reauthentication goes to the owner (the client signs it only when the
                // session requires signing; the owner checks that).
                if binding
                    || (h.flags & flags::SIGNED != 0
                        && !smb_auth::signing::verify(b.signer.0, &b.signer.1, &first))
                {
                    return false;
                }
            }
        }
        let owner = b.owner;
        if self.shared.session_record(sid).is_none()
            || !self.shared.post_event(
                owner,
                Event::ChannelMessage {
                    channel: self.id,
                    msg: msg.to_vec(),
                    seq: self.seq.clone(),
                },
            )
        {
            self.bound.remove(&sid);
            return false;
        }
        true
    }

    /// The connection is gone: release everything.
    pub fn shutdown(&mut self) {
        let aids: Vec<u64> = self.pending.keys().copied().collect();
        for aid in aids {
            if let Some(PendingKind::Notify { dir, .. }) = self.pending.get(&aid).map(|p| &p.kind) {
                let dir = dir.clone();
                self.shared.unwatch(self.id, &dir);
            }
        }
        self.pending.clear();
        self.park_durable_opens(None);
        let ids: Vec<u64> = self.opens.keys().copied().collect();
        for v in ids {
            self.close_open(v, status::SUCCESS);
        }
        for sid in self.sessions.keys() {
            self.shared.session_gone(*sid);
        }
        let sids: Vec<u64> = self.sessions.keys().copied().collect();
        for sid in sids {
            self.end_channels(sid);
        }
        for sid in self.bound.keys() {
            self.shared.channel_removed(*sid);
        }
        let mut owners: Vec<u64> = self.bound.values().map(|b| b.owner).collect();
        owners.sort_unstable();
        owners.dedup();
        for o in owners {
            self.shared
                .post_event(o, Event::ChannelClosed { channel: self.id });
        }
        self.shared.unregister_conn(self.id);
    }
}
