//! The `smbd_conn` fuzz target's harness, also compiled into `tests/fuzz_corpus.rs` (via
//! `#[path]`) so `cargo test` replays the checked-in corpus through the same checks, and the
//! generator of the seed corpus (`seeds`).
//!
//! One fuzz input is a SEQUENCE of messages for one connection: each is a little-endian u32
//! length followed by that many bytes (a length past the end takes the rest). They go through
//! `Conn::on_message` of a fresh connection over a fresh temporary share, with the in-process
//! lock engine, in order, as the worker would deliver them; events the connection posts to
//! itself (lock notifications) are delivered between messages. Properties checked:
//! * nothing panics;
//! * every output frame is a NetBIOS session message whose length matches, holding an SMB2
//!   message (or a transform) whose compound chain is well formed (each header decodes,
//!   SERVER_TO_REDIR is set, NextCommand is 8-aligned and stays inside the frame);
//! * a MessageId is answered finally at most once (MS-SMB2 3.3.1.1: a MessageId is never
//!   accepted twice), apart from STATUS_PENDING interim answers and oplock break
//!   notifications (MessageId 0xFFFFFFFFFFFFFFFF);
//! * once the connection is closed nothing more is fed (the worker drops it).
//!
//! Seeds use an anonymous NTLM session (its AUTHENTICATE does not depend on the server's random
//! challenge, so the sequence replays identically) and fixed ids: connection 1 gets session
//! 0x1_0000_0001, its first tree id 1, its first open volatile id 0x1_0000_0001.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use smb_proto::header::{flags, Header};
use smb_proto::Writer;
use smbd::config::Config;
use smbd::conn::Conn;
use smbd::shared::{Share, Shared};

pub const CONN_ID: u64 = 1;
pub const SESSION_ID: u64 = (CONN_ID << 32) | 1;
pub const TREE_ID: u32 = 1;
pub const FIRST_FID: u64 = (CONN_ID << 32) + 1;

/// Split an input into messages (see the module doc).
pub fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let rest = &data[4..];
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// The inverse of [`split`].
pub fn join(msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend_from_slice(&(m.len() as u32).to_le_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// One answer seen on the wire: (command, MessageId, status).
pub type Answer = (u16, u64, u32);

/// A scratch directory of its own for every run: tests call `run` from several threads of
/// one process, and one run's cleanup must not remove another's share.
fn scratch_root() -> PathBuf {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("smbd-fuzz-conn-{}-{run}", std::process::id()))
}

fn fresh_share(root: &std::path::Path) -> Result<PathBuf, String> {
    let share = root.join("share");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).map_err(|e| format!("{}: {e}", share.display()))?;
    share
        .canonicalize()
        .map_err(|e| format!("{}: {e}", share.display()))
}

fn make_shared(share: PathBuf) -> Result<Arc<Shared>, String> {
    // A clock that never moves: the same input gives the same output.
    let clock = smbd::clock::WallClock::Stepped {
        start: FIXED_FILETIME,
        elapsed: Default::default(),
    };
    shared_with_locks(share, smbd::locking::default_lock_service(), clock)
}

/// 2024-01-01T00:00:00Z as a FILETIME: the fuzz target's time of day.
pub const FIXED_FILETIME: u64 = 133_485_408_000_000_000;

/// A server state for one anonymous-guest share `data` at `share` (a canonical path), with the
/// given lock service and time of day (tests pass ones whose clocks they step by hand).
pub fn shared_with_locks(
    share: PathBuf,
    locks: Box<dyn smbd::locking::LockService>,
    clock: smbd::clock::WallClock,
) -> Result<Arc<Shared>, String> {
    shared_with_config(share, locks, clock, "")
}

/// [`shared_with_locks`] with `server_extra` lines added to the `[server]` section.
pub fn shared_with_config(
    share: PathBuf,
    locks: Box<dyn smbd::locking::LockService>,
    clock: smbd::clock::WallClock,
    server_extra: &str,
) -> Result<Arc<Shared>, String> {
    let cfg = Config::parse(&format!(
        "[server]\nnetbios_name = \"FUZZ\"\nsigning_required = false\nallow_anonymous = true\n\
         guest_account = \"root\"\n{server_extra}\n\n[[share]]\nname = \"data\"\npath = \"{}\"\n\
         guest_ok = true\n",
        share.display()
    ))
    .map_err(|e| format!("config: {e}"))?;
    let dir = smbd::beneath::ShareRoot::open(&share).map_err(|e| format!("share root: {e}"))?;
    let shares = vec![Share {
        name: "data".into(),
        dir: Arc::new(dir),
        root: share,
        read_only: false,
        encrypt: false,
        fs_id: 1,
        valid_users: Vec::new(),
        valid_groups: Vec::new(),
        guest_ok: true,
        continuous_availability: false,
        // A DFS root with one link, so referrals and PATH_NOT_COVERED are reachable.
        dfs_root: true,
        dfs_links: vec![smbd::config::DfsLink {
            components: vec!["link1".into()],
            targets: vec!["\\fuzz2\\data\\sub".into()],
        }],
        notify_through_lockmgr: false,
    }];
    // No users: the seeds log on anonymously. The guest account is root so that, when the
    // fuzzer runs as root, file operations do not switch this thread's file-system identity to
    // an account that cannot use the temporary share (as an ordinary user nothing switches).
    let users = smb_auth::users::UserDb::new();
    let shared = Shared::new(cfg, shares, users, locks, 1).map_err(|e| format!("shared: {e}"))?;
    Ok(Arc::new(shared.with_clock(clock)))
}

/// Check one output frame; returns its answers.
fn check_frame(f: &[u8]) -> Result<Vec<Answer>, String> {
    if f.len() < 4 || f[0] != 0 {
        return Err(format!("bad NetBIOS header {:?}", &f[..f.len().min(4)]));
    }
    let len = u32::from_be_bytes([0, f[1], f[2], f[3]]) as usize;
    if len != f.len() - 4 {
        return Err(format!(
            "NetBIOS length {len} for a {}-byte frame",
            f.len() - 4
        ));
    }
    let msg = &f[4..];
    match msg.get(..4) {
        Some([0xFD, b'S', b'M', b'B']) => {
            // Sealed: the keys are the session's; only the framing can be checked.
            if msg.len() < 52 + 64 {
                return Err("transform shorter than its header and an SMB2 header".into());
            }
            return Ok(Vec::new());
        }
        Some([0xFE, b'S', b'M', b'B']) => {}
        other => return Err(format!("frame holds no SMB2 message: {other:?}")),
    }
    let mut answers = Vec::new();
    let mut off = 0usize;
    loop {
        let m = &msg[off..];
        let h = Header::decode(m).map_err(|e| format!("response header at {off}: {e}"))?;
        if h.flags & flags::SERVER_TO_REDIR == 0 {
            return Err(format!("response at {off} without SERVER_TO_REDIR"));
        }
        answers.push((h.command, h.message_id, h.status.0));
        if h.next_command == 0 {
            break;
        }
        let next = h.next_command as usize;
        if !next.is_multiple_of(8) || next < 64 || next >= m.len() {
            return Err(format!(
                "NextCommand {next} at {off} in a {}-byte chain",
                msg.len()
            ));
        }
        off += next;
    }
    Ok(answers)
}

/// Feed `data` (see [`split`]) to a fresh connection; returns every answer, or a violated
/// property.
pub fn run(data: &[u8]) -> Result<Vec<Answer>, String> {
    let root = scratch_root();
    let share = fresh_share(&root)?;
    let shared = make_shared(share)?;
    shared.register_conn(CONN_ID, 0);
    let mut conn = Conn::new(CONN_ID, shared.clone(), None, None, Instant::now());
    let mut answers = Vec::new();
    let mut finals: HashMap<u64, u16> = HashMap::new();
    let mut result = Ok(());
    'outer: for m in split(data) {
        conn.on_message(m, Instant::now());
        // Lock notifications and other events the connection posted to itself.
        for _ in 0..8 {
            let evs = shared.mailboxes[0].drain();
            if evs.is_empty() || conn.closed {
                break;
            }
            for (c, ev) in evs {
                if c == CONN_ID {
                    conn.on_event(ev, Instant::now());
                }
            }
        }
        for f in conn.take_output() {
            match check_frame(&f) {
                Ok(a) => {
                    for (cmd, mid, st) in a {
                        if mid != u64::MAX && st != smb_proto::status::PENDING.0 {
                            if let Some(prev) = finals.insert(mid, cmd) {
                                result = Err(format!(
                                    "MessageId {mid} answered twice (command {prev:#x}, then {cmd:#x})"
                                ));
                                break 'outer;
                            }
                        }
                        answers.push((cmd, mid, st));
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break 'outer;
                }
            }
        }
        if conn.closed {
            break;
        }
    }
    conn.shutdown(Instant::now());
    let _ = std::fs::remove_dir_all(&root);
    result.map(|()| answers)
}

// ---- seed corpus ----------------------------------------------------------------------------

pub mod cmd {
    pub const NEGOTIATE: u16 = 0;
    pub const SESSION_SETUP: u16 = 1;
    pub const LOGOFF: u16 = 2;
    pub const TREE_CONNECT: u16 = 3;
    pub const TREE_DISCONNECT: u16 = 4;
    pub const CREATE: u16 = 5;
    pub const CLOSE: u16 = 6;
    pub const FLUSH: u16 = 7;
    pub const READ: u16 = 8;
    pub const WRITE: u16 = 9;
    pub const LOCK: u16 = 10;
    pub const IOCTL: u16 = 11;
    pub const ECHO: u16 = 13;
    pub const QUERY_DIRECTORY: u16 = 14;
    pub const QUERY_INFO: u16 = 16;
}

const RELATED_FID: (u64, u64) = (u64::MAX, u64::MAX);

/// Builds a request sequence with consecutive MessageIds.
pub struct Seq {
    pub msgs: Vec<Vec<u8>>,
    pub mid: u64,
    pub sid: u64,
    pub tid: u32,
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|c| c.to_le_bytes()).collect()
}

fn fid(w: &mut Writer, f: (u64, u64)) {
    w.u64(f.0).u64(f.1);
}

/// One unsigned request (credit charge 1, no flags) as `Conn::on_message` takes it.
pub fn request(command: u16, mid: u64, sid: u64, tid: u32, body: &[u8]) -> Vec<u8> {
    let mut m = header(command, mid, sid, tid, 0, 1);
    m.extend_from_slice(body);
    m
}

fn header(command: u16, mid: u64, sid: u64, tid: u32, fl: u32, charge: u16) -> Vec<u8> {
    let mut w = Writer::new();
    Header {
        credit_charge: charge,
        status: smb_proto::status::SUCCESS,
        command,
        credits: 64,
        flags: fl,
        next_command: 0,
        message_id: mid,
        process_id: 0xFEFF,
        tree_id: tid,
        async_id: 0,
        session_id: sid,
        signature: [0; 16],
    }
    .encode(&mut w);
    w.buf
}

pub fn body_negotiate(dialects: &[u16]) -> Vec<u8> {
    let mut w = Writer::new();
    let with311 = dialects.contains(&0x0311);
    w.u16(36).u16(dialects.len() as u16).u16(1).u16(0).u32(0x7F);
    w.bytes(&[0x11; 16]);
    let ctx_off = (64 + 36 + 2 * dialects.len()).div_ceil(8) * 8;
    if with311 {
        w.u32(ctx_off as u32).u16(1).u16(0);
    } else {
        w.u64(0);
    }
    for d in dialects {
        w.u16(*d);
    }
    if with311 {
        while 64 + w.buf.len() < ctx_off {
            w.u8(0);
        }
        // SMB2_PREAUTH_INTEGRITY_CAPABILITIES: SHA-512, 32-byte salt.
        w.u16(1).u16(38).u32(0);
        w.u16(1).u16(32).u16(1).bytes(&[0x5A; 32]);
    }
    w.buf
}

/// NTLM NEGOTIATE_MESSAGE (raw, no SPNEGO).
pub fn ntlm_negotiate() -> Vec<u8> {
    let mut w = Writer::new();
    // UNICODE | REQUEST_TARGET | NTLM | ALWAYS_SIGN | EXTENDED_SESSIONSECURITY
    w.bytes(b"NTLMSSP\0").u32(1).u32(0x0008_8205).zeros(16);
    w.buf
}

/// Anonymous NTLM AUTHENTICATE_MESSAGE: empty user, empty responses (MS-NLMP 3.2.5.1.2).
pub fn ntlm_anonymous_authenticate() -> Vec<u8> {
    let mut w = Writer::new();
    w.bytes(b"NTLMSSP\0").u32(3);
    for _ in 0..6 {
        w.u16(0).u16(0).u32(64);
    }
    // UNICODE | NTLM | ANONYMOUS | EXTENDED_SESSIONSECURITY
    w.u32(0x0008_0A01);
    w.buf
}

pub fn body_session_setup(token: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(25)
        .u8(0)
        .u8(1)
        .u32(0)
        .u32(0)
        .u16(64 + 24)
        .u16(token.len() as u16)
        .u64(0);
    w.bytes(token);
    w.buf
}

pub fn body_tree_connect(path: &str) -> Vec<u8> {
    let p = utf16(path);
    let mut w = Writer::new();
    w.u16(9).u16(0).u16(64 + 8).u16(p.len() as u16).bytes(&p);
    w.buf
}

pub fn body_create(name: &str, disposition: u32, options: u32) -> Vec<u8> {
    let n = utf16(name);
    let mut w = Writer::new();
    w.u16(57).u8(0).u8(0).u32(2).u64(0).u64(0);
    // GENERIC_READ | GENERIC_WRITE | DELETE, attributes normal, share read|write|delete.
    w.u32(0xC001_0000)
        .u32(0x80)
        .u32(7)
        .u32(disposition)
        .u32(options);
    w.u16(64 + 56).u16(n.len() as u16).u32(0).u32(0);
    if n.is_empty() {
        w.u8(0);
    } else {
        w.bytes(&n);
    }
    w.buf
}

pub fn body_write(f: (u64, u64), offset: u64, data: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(49).u16(64 + 48).u32(data.len() as u32).u64(offset);
    fid(&mut w, f);
    w.u32(0).u32(0).u16(0).u16(0).u32(0).bytes(data);
    w.buf
}

pub fn body_read(f: (u64, u64), offset: u64, len: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(49).u8(0).u8(0).u32(len).u64(offset);
    fid(&mut w, f);
    w.u32(0).u32(0).u32(0).u16(0).u16(0).u8(0);
    w.buf
}

pub fn body_close(f: (u64, u64)) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(24).u16(1).u32(0);
    fid(&mut w, f);
    w.buf
}

pub fn body_flush(f: (u64, u64)) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(24).u16(0).u32(0);
    fid(&mut w, f);
    w.buf
}

pub fn body_lock(f: (u64, u64), flags: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(48).u16(1).u32(0);
    fid(&mut w, f);
    w.u64(0).u64(4).u32(flags).u32(0);
    w.buf
}

pub fn body_query_info(f: (u64, u64), class: u8) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(41)
        .u8(1)
        .u8(class)
        .u32(4096)
        .u16(0)
        .u16(0)
        .u32(0)
        .u32(0)
        .u32(0);
    fid(&mut w, f);
    w.buf
}

pub fn body_query_directory(f: (u64, u64), class: u8) -> Vec<u8> {
    let p = utf16("*");
    let mut w = Writer::new();
    w.u16(33).u8(class).u8(1).u32(0);
    fid(&mut w, f);
    w.u16(64 + 32).u16(p.len() as u16).u32(65536).bytes(&p);
    w.buf
}

pub fn body_ioctl(f: (u64, u64), ctl_code: u32, input: &[u8], max_out: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(57).u16(0).u32(ctl_code);
    fid(&mut w, f);
    // Input at the end of the fixed body; no output buffer; SMB2_0_IOCTL_IS_FSCTL.
    w.u32(64 + 56)
        .u32(input.len() as u32)
        .u32(0)
        .u32(0)
        .u32(0)
        .u32(max_out)
        .u32(1)
        .u32(0)
        .bytes(input);
    w.buf
}

/// A DCE/RPC bind to srvsvc over NDR20 (smb-rpc's own client-side encoder).
pub fn rpc_bind_srvsvc() -> Vec<u8> {
    use smb_rpc::pdu::{ptype, Bind, ContextElem, NDR20};
    Bind {
        max_xmit_frag: 4280,
        max_recv_frag: 4280,
        assoc_group_id: 0,
        contexts: vec![ContextElem {
            id: 0,
            abstract_syntax: smb_rpc::srvsvc::SRVSVC,
            transfer_syntaxes: vec![NDR20],
        }],
    }
    .encode(ptype::BIND, 1)
}

/// srvsvc NetrShareEnum at level 1 as DCE/RPC call `call_id`.
pub fn rpc_share_enum(call_id: u32) -> Vec<u8> {
    let mut w = smb_rpc::NdrWriter::new();
    w.null_ptr(); // ServerName
    w.u32(1); // Level
    w.u32(1); // union discriminant
    w.referent_id(); // SHARE_INFO_1_CONTAINER
    w.u32(0);
    w.null_ptr();
    w.u32(u32::MAX); // PreferedMaximumLength
    w.null_ptr(); // ResumeHandle
    let flags = smb_rpc::pdu::pfc::FIRST_FRAG | smb_rpc::pdu::pfc::LAST_FRAG;
    smb_rpc::pdu::request(call_id, flags, 0, 15, &w.into_bytes())
}

pub fn body_small() -> Vec<u8> {
    vec![4, 0, 0, 0]
}

impl Seq {
    pub fn new() -> Seq {
        Seq {
            msgs: Vec::new(),
            mid: 0,
            sid: 0,
            tid: 0,
        }
    }

    /// Append a request; returns its MessageId.
    pub fn push(&mut self, command: u16, body: Vec<u8>) -> u64 {
        let charge = (body.len().saturating_sub(1) / 65536 + 1) as u16;
        self.push_charged(command, body, charge)
    }

    /// Append a request with the given CreditCharge.
    pub fn push_charged(&mut self, command: u16, body: Vec<u8>, charge: u16) -> u64 {
        let mid = self.mid;
        let mut m = header(command, mid, self.sid, self.tid, 0, charge);
        m.extend_from_slice(&body);
        self.msgs.push(m);
        self.mid += u64::from(charge);
        mid
    }

    /// Append a related compound of `(command, body)` requests.
    pub fn compound(&mut self, reqs: Vec<(u16, Vec<u8>)>) {
        let mut chain = Vec::new();
        let count = reqs.len();
        for (i, (command, body)) in reqs.into_iter().enumerate() {
            let fl = if i == 0 { 0 } else { flags::RELATED_OPERATIONS };
            let mut m = header(command, self.mid, self.sid, self.tid, fl, 1);
            self.mid += 1;
            m.extend_from_slice(&body);
            if i + 1 < count {
                while !m.len().is_multiple_of(8) {
                    m.push(0);
                }
                let next = m.len() as u32;
                m[20..24].copy_from_slice(&next.to_le_bytes());
            }
            chain.extend_from_slice(&m);
        }
        self.msgs.push(chain);
    }

    /// NEGOTIATE, anonymous SESSION_SETUP (2 legs) and TREE_CONNECT to `data`.
    pub fn login(&mut self, dialects: &[u16]) {
        self.push(cmd::NEGOTIATE, body_negotiate(dialects));
        self.push(cmd::SESSION_SETUP, body_session_setup(&ntlm_negotiate()));
        self.sid = SESSION_ID;
        self.push(
            cmd::SESSION_SETUP,
            body_session_setup(&ntlm_anonymous_authenticate()),
        );
        self.push(cmd::TREE_CONNECT, body_tree_connect("\\\\fuzz\\data"));
        self.tid = TREE_ID;
    }

    pub fn input(&self) -> Vec<u8> {
        join(&self.msgs)
    }
}

impl Default for Seq {
    fn default() -> Self {
        Seq::new()
    }
}

/// SMB1 NEGOTIATE offering SMB2 (the multi-protocol upgrade, MS-SMB2 3.3.5.3.1).
pub fn smb1_negotiate() -> Vec<u8> {
    let mut m = vec![0xFF, b'S', b'M', b'B', 0x72, 0, 0, 0, 0, 0x18, 0x53, 0xC8];
    m.extend_from_slice(&[0; 12]);
    m.extend_from_slice(&[0xFF, 0xFF, 0xFE, 0xFF, 0, 0, 0, 0]);
    let mut dialects = Vec::new();
    for d in ["NT LM 0.12", "SMB 2.002", "SMB 2.???"] {
        dialects.push(2);
        dialects.extend_from_slice(d.as_bytes());
        dialects.push(0);
    }
    m.push(0);
    m.extend_from_slice(&(dialects.len() as u16).to_le_bytes());
    m.extend_from_slice(&dialects);
    m
}

/// The file operations of a seed on an open `f`.
fn file_ops(s: &mut Seq, f: (u64, u64)) {
    s.push(cmd::WRITE, body_write(f, 0, b"hello fuzz"));
    s.push(cmd::READ, body_read(f, 0, 10));
    s.push(cmd::QUERY_INFO, body_query_info(f, 5)); // FileStandardInformation
    s.push(cmd::FLUSH, body_flush(f));
    s.push(cmd::LOCK, body_lock(f, 0x2 | 0x10));
    s.push(cmd::LOCK, body_lock(f, 0x4));
    s.push(cmd::CLOSE, body_close(f));
}

/// The seed corpus: (file name, input).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let f1 = (FIRST_FID, FIRST_FID);
    let mut out = Vec::new();
    for (name, dialects) in [
        (
            "seed-smb302-session",
            &[0x0202u16, 0x0210, 0x0300, 0x0302][..],
        ),
        (
            "seed-smb311-session",
            &[0x0202, 0x0210, 0x0300, 0x0302, 0x0311][..],
        ),
        ("seed-smb202-session", &[0x0202][..]),
    ] {
        let mut s = Seq::new();
        s.login(dialects);
        s.push(cmd::CREATE, body_create("a.txt", 5, 0x40)); // OVERWRITE_IF, non-directory
        file_ops(&mut s, f1);
        // The share root as a directory: list it.
        s.push(cmd::CREATE, body_create("", 1, 0x1));
        let d = (FIRST_FID + 1, FIRST_FID + 1);
        s.push(cmd::QUERY_DIRECTORY, body_query_directory(d, 37)); // IdBothDirectory
        s.push(cmd::CLOSE, body_close(d));
        s.push(cmd::ECHO, body_small());
        s.push(cmd::TREE_DISCONNECT, body_small());
        s.push(cmd::LOGOFF, body_small());
        out.push((name.to_string(), s.input()));
    }
    // A related compound: CREATE, WRITE, READ, CLOSE on the chain's handle.
    let mut s = Seq::new();
    s.login(&[0x0311, 0x0302]);
    s.compound(vec![
        (cmd::CREATE, body_create("chain.txt", 5, 0x40)),
        (cmd::WRITE, body_write(RELATED_FID, 0, b"chained")),
        (cmd::READ, body_read(RELATED_FID, 0, 7)),
        (cmd::CLOSE, body_close(RELATED_FID)),
    ]);
    out.push(("seed-compound".into(), s.input()));
    // SMB1 multi-protocol negotiate, then SMB2 from MessageId 1.
    let mut s = Seq::new();
    s.msgs.push(smb1_negotiate());
    s.mid = 1;
    s.login(&[0x0210, 0x0302]);
    s.push(cmd::CREATE, body_create("b.txt", 5, 0x40));
    file_ops(&mut s, f1);
    out.push(("seed-smb1-upgrade".into(), s.input()));
    // A replayed WRITE (same MessageId): the connection must drop.
    let mut s = Seq::new();
    s.login(&[0x0302]);
    s.push(cmd::CREATE, body_create("c.txt", 5, 0x40));
    s.push(cmd::WRITE, body_write(f1, 0, b"once"));
    let again = s.msgs[s.msgs.len() - 1].clone();
    s.msgs.push(again);
    s.push(cmd::READ, body_read(f1, 0, 4));
    out.push(("seed-replay".into(), s.input()));
    // A MessageId far beyond the credits granted.
    let mut s = Seq::new();
    s.login(&[0x0302]);
    s.mid += 100_000;
    s.push(cmd::ECHO, body_small());
    out.push(("seed-out-of-window".into(), s.input()));
    // IPC$: open the srvsvc pipe, bind and enumerate shares through FSCTL_PIPE_TRANSCEIVE,
    // enumerate again through WRITE + READ, close.
    let mut s = Seq::new();
    s.login(&[0x0311, 0x0302]);
    s.push(cmd::TREE_CONNECT, body_tree_connect("\\\\fuzz\\IPC$"));
    s.tid = TREE_ID + 1;
    s.push(cmd::CREATE, body_create("srvsvc", 1, 0));
    let transceive = smb_proto::fsctl::PIPE_TRANSCEIVE;
    s.push(
        cmd::IOCTL,
        body_ioctl(f1, transceive, &rpc_bind_srvsvc(), 4280),
    );
    s.push(
        cmd::IOCTL,
        body_ioctl(f1, transceive, &rpc_share_enum(2), 4280),
    );
    s.push(cmd::WRITE, body_write(f1, 0, &rpc_share_enum(3)));
    s.push(cmd::READ, body_read(f1, 0, 4280));
    s.push(cmd::CLOSE, body_close(f1));
    out.push(("seed-ipc-pipe".into(), s.input()));
    // DFS: a link referral and a root referral (_EX) on IPC$, then an open through the link on
    // the share (STATUS_PATH_NOT_COVERED).
    let mut s = Seq::new();
    s.login(&[0x0311, 0x0302]);
    s.push(cmd::TREE_CONNECT, body_tree_connect("\\\\fuzz\\IPC$"));
    s.tid = TREE_ID + 1;
    let no_file = (u64::MAX, u64::MAX);
    let req = |name: &str| smb_proto::dfs::ReferralRequest {
        max_referral_level: 4,
        file_name: name.into(),
        site_name: None,
    };
    s.push(
        cmd::IOCTL,
        body_ioctl(
            no_file,
            smb_proto::fsctl::DFS_GET_REFERRALS,
            &req("\\fuzz\\data\\link1\\x.txt").encode(),
            4096,
        ),
    );
    s.push(
        cmd::IOCTL,
        body_ioctl(
            no_file,
            smb_proto::fsctl::DFS_GET_REFERRALS_EX,
            &req("\\fuzz\\data").encode_ex(),
            4096,
        ),
    );
    // Room for the header only: STATUS_BUFFER_OVERFLOW with what fits.
    s.push(
        cmd::IOCTL,
        body_ioctl(
            no_file,
            smb_proto::fsctl::DFS_GET_REFERRALS,
            &req("\\fuzz\\data").encode(),
            8,
        ),
    );
    s.tid = TREE_ID;
    s.push(cmd::CREATE, body_create("link1\\x.txt", 1, 0x40));
    out.push(("seed-dfs".into(), s.input()));
    out
}
