//! In-process, simulated-time tests of smbd's connection core: [`Pair`] drives several
//! `Conn`s (each one SMB client connection) against a temporary share and the in-process lock
//! engine, feeding them messages through the same entry points the io_uring worker and the
//! `smbd_conn` fuzz target use (`Conn::on_message`, `Conn::on_event`). The lock engine's clock
//! is stepped by hand, so a 35-second oplock break timeout takes no time at all.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smb_proto::header::{flags, Header};
use smb_proto::{status, CreateContext, Writer};
use smbd::clock::WallClock;
use smbd::conn::Conn;
use smbd::locking::EngineLocks;
use smbd::shared::Shared;

#[path = "../fuzz/conn_harness.rs"]
mod conn_harness;

use conn_harness::{body_negotiate, body_session_setup, body_tree_connect, cmd};

const OPLOCK_BREAK: u16 = 0x12;
const OPLOCK_BATCH: u8 = 0x09;
const OPLOCK_LEVEL_II: u8 = 0x01;
const OPLOCK_NONE: u8 = 0x00;
const FILE_OPEN_IF: u32 = 3;
const NON_DIRECTORY: u32 = 0x40;
/// The lock engine's default break timeout (lockmgr_engine::Config), as Samba and ksmbd.
const BREAK_TIMEOUT: Duration = Duration::from_secs(35);

/// One response as a client sees it.
struct Answer {
    hdr: Header,
    /// The message from its SMB2 header on.
    msg: Vec<u8>,
}

impl Answer {
    fn body(&self) -> &[u8] {
        &self.msg[64..]
    }

    fn u64_at(&self, off: usize) -> u64 {
        let b = &self.body()[off..off + 8];
        u64::from_le_bytes(b.try_into().expect("8 bytes"))
    }

    /// CREATE response: (oplock level, FileId).
    fn created(&self) -> (u8, (u64, u64)) {
        (self.body()[2], (self.u64_at(64), self.u64_at(72)))
    }
}

/// One client connection of a [`Pair`].
struct Client {
    conn: Conn,
    mid: u64,
    sid: u64,
    tid: u32,
    inbox: VecDeque<Answer>,
}

/// Connections sharing one server state (`Shared`), a temporary share and a lock engine whose
/// clock the test advances.
struct Pair {
    _dir: tempfile::TempDir,
    share: std::path::PathBuf,
    shared: Arc<Shared>,
    /// Nanoseconds since `start`, shared with the lock engine.
    clock: Arc<AtomicU64>,
    start: Instant,
    clients: Vec<Client>,
}

impl Pair {
    fn new() -> Pair {
        let dir = tempfile::tempdir().expect("temp dir");
        let share = dir.path().join("share");
        std::fs::create_dir(&share).expect("share dir");
        let share = share.canonicalize().expect("canonical share path");
        let clock = Arc::new(AtomicU64::new(1));
        // The in-process lock engine with a clock the test owns.
        let locks =
            EngineLocks::with_manual_clock(lockmgr_engine::Config::default(), clock.clone());
        // The time of day moves with the same counter.
        let wall = WallClock::Stepped {
            start: conn_harness::FIXED_FILETIME,
            elapsed: clock.clone(),
        };
        let shared = conn_harness::shared_with_locks(share.clone(), Box::new(locks), wall)
            .expect("server state");
        Pair {
            _dir: dir,
            share,
            shared,
            clock,
            start: Instant::now(),
            clients: Vec::new(),
        }
    }

    /// A new connection, logged on anonymously at `dialect` with the share connected; returns
    /// its index.
    fn connect(&mut self, dialect: u16) -> usize {
        self.connect_negotiated(dialect).0
    }

    /// [`Pair::connect`], also returning the NEGOTIATE response.
    fn connect_negotiated(&mut self, dialect: u16) -> (usize, Answer) {
        let id = self.clients.len() as u64 + 1;
        self.shared.register_conn(id, 0);
        self.clients.push(Client {
            conn: Conn::new(id, self.shared.clone(), None, None, self.now()),
            mid: 0,
            sid: 0,
            tid: 0,
            inbox: VecDeque::new(),
        });
        let c = self.clients.len() - 1;
        let neg = self.call(c, cmd::NEGOTIATE, body_negotiate(&[dialect]));
        assert_eq!(neg.hdr.status, status::SUCCESS, "NEGOTIATE");
        let first = self.call(
            c,
            cmd::SESSION_SETUP,
            body_session_setup(&conn_harness::ntlm_negotiate()),
        );
        assert_eq!(first.hdr.status, status::MORE_PROCESSING_REQUIRED);
        self.clients[c].sid = first.hdr.session_id;
        let auth = self.call(
            c,
            cmd::SESSION_SETUP,
            body_session_setup(&conn_harness::ntlm_anonymous_authenticate()),
        );
        assert_eq!(auth.hdr.status, status::SUCCESS, "anonymous SESSION_SETUP");
        let tree = self.call(c, cmd::TREE_CONNECT, body_tree_connect("\\\\sim\\data"));
        assert_eq!(tree.hdr.status, status::SUCCESS, "TREE_CONNECT");
        self.clients[c].tid = tree.hdr.tree_id;
        (c, neg)
    }

    /// Send one request on connection `c`; returns its MessageId. Answers (to any
    /// connection) are collected by [`Pair::pump`].
    fn send(&mut self, c: usize, command: u16, body: Vec<u8>) -> u64 {
        let cl = &mut self.clients[c];
        let mid = cl.mid;
        cl.mid += 1;
        let msg = conn_harness::request(command, mid, cl.sid, cl.tid, &body);
        let now = self.now();
        let cl = &mut self.clients[c];
        cl.conn.on_message(&msg, now);
        self.pump();
        mid
    }

    /// Send a request and return its final answer (skipping an interim STATUS_PENDING).
    fn call(&mut self, c: usize, command: u16, body: Vec<u8>) -> Answer {
        let mid = self.send(c, command, body);
        self.final_answer(c, mid)
            .unwrap_or_else(|| panic!("no answer to command {command:#x} (MessageId {mid})"))
    }

    /// Deliver what connections posted to each other (lock notifications, deferred
    /// completions) until nothing moves, and collect every connection's output.
    fn pump(&mut self) {
        let now = self.now();
        for _ in 0..64 {
            let events = self.shared.mailboxes[0].drain();
            if events.is_empty() {
                break;
            }
            for (id, ev) in events {
                if let Some(cl) = self.clients.get_mut(id as usize - 1) {
                    if !cl.conn.closed {
                        cl.conn.on_event(ev, now);
                    }
                }
            }
        }
        for cl in &mut self.clients {
            for frame in cl.conn.take_output() {
                let msg = frame[4..].to_vec();
                let hdr = Header::decode(&msg).expect("response header");
                assert!(hdr.flags & flags::SERVER_TO_REDIR != 0);
                cl.inbox.push_back(Answer { hdr, msg });
            }
        }
    }

    /// The simulated time: the connections see `start` plus what the test advanced.
    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.clock.load(Ordering::SeqCst))
    }

    /// Step the simulated clock (the connections' and the lock engine's) and fire its due timers.
    fn advance(&mut self, by: Duration) {
        self.clock.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        self.shared.tick(self.now());
        self.pump();
    }

    /// The final answer to `mid` received on `c`, if it came.
    fn final_answer(&mut self, c: usize, mid: u64) -> Option<Answer> {
        let inbox = &mut self.clients[c].inbox;
        let i = inbox
            .iter()
            .position(|a| a.hdr.message_id == mid && a.hdr.status != status::PENDING)?;
        inbox.remove(i)
    }

    /// Whether an interim STATUS_PENDING for `mid` was received on `c`.
    fn went_async(&self, c: usize, mid: u64) -> bool {
        self.clients[c]
            .inbox
            .iter()
            .any(|a| a.hdr.message_id == mid && a.hdr.status == status::PENDING)
    }

    /// Oplock break notifications received on `c`: (new level, FileId).
    fn take_breaks(&mut self, c: usize) -> Vec<(u8, (u64, u64))> {
        let inbox = &mut self.clients[c].inbox;
        let mut out = Vec::new();
        inbox.retain(|a| {
            if a.hdr.command == OPLOCK_BREAK && a.hdr.message_id == u64::MAX {
                out.push((a.body()[2], (a.u64_at(8), a.u64_at(16))));
                false
            } else {
                true
            }
        });
        out
    }

    /// Drop connection `c` as the worker does when its socket closes.
    fn disconnect(&mut self, c: usize) {
        let now = self.now();
        self.clients[c].conn.shutdown(now);
        self.pump();
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let now = self.now();
        for cl in &mut self.clients {
            if !cl.conn.closed {
                cl.conn.shutdown(now);
            }
        }
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|c| c.to_le_bytes()).collect()
}

/// A CREATE body (MS-SMB2 2.2.13) asking for `oplock` with `contexts`: read/write/delete
/// access, every sharing mode.
fn create_body(name: &str, oplock: u8, contexts: &[CreateContext]) -> Vec<u8> {
    create_body_with_options(name, oplock, NON_DIRECTORY, contexts)
}

/// [`create_body`] with CreateOptions `options`.
fn create_body_with_options(
    name: &str,
    oplock: u8,
    options: u32,
    contexts: &[CreateContext],
) -> Vec<u8> {
    let n = utf16(name);
    let ctx = smb_proto::encode_create_contexts(contexts);
    let name_off = 64 + 56;
    let ctx_off = if ctx.is_empty() {
        0
    } else {
        (name_off + n.len()).div_ceil(8) * 8
    };
    let mut w = Writer::new();
    w.u16(57).u8(0).u8(oplock).u32(2).u64(0).u64(0);
    w.u32(0xC001_0000)
        .u32(0x80)
        .u32(7)
        .u32(FILE_OPEN_IF)
        .u32(options);
    w.u16(name_off as u16)
        .u16(n.len() as u16)
        .u32(ctx_off as u32)
        .u32(ctx.len() as u32);
    w.bytes(&n);
    if !ctx.is_empty() {
        while 64 + w.buf.len() < ctx_off {
            w.u8(0);
        }
        w.bytes(&ctx);
    }
    w.buf
}

fn break_ack_body(level: u8, fid: (u64, u64)) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(24).u8(level).u8(0).u32(0).u64(fid.0).u64(fid.1);
    w.buf
}

fn durable_request() -> CreateContext {
    CreateContext {
        name: b"DHnQ".to_vec(),
        data: vec![0; 16],
    }
}

fn durable_reconnect(fid: (u64, u64)) -> CreateContext {
    let mut data = fid.0.to_le_bytes().to_vec();
    data.extend_from_slice(&fid.1.to_le_bytes());
    CreateContext {
        name: b"DHnC".to_vec(),
        data,
    }
}

/// Two connections: A holds a batch oplock on `file`, B opens the same file, which needs A's
/// oplock broken first. Returns (A, A's FileId, B, B's CREATE MessageId).
fn contended_open(p: &mut Pair, file: &str) -> (usize, (u64, u64), usize, u64) {
    let a = p.connect(0x0302);
    let b = p.connect(0x0302);
    let opened = p.call(a, cmd::CREATE, create_body(file, OPLOCK_BATCH, &[]));
    assert_eq!(opened.hdr.status, status::SUCCESS);
    let (level, fid) = opened.created();
    assert_eq!(level, OPLOCK_BATCH, "A holds a batch oplock");
    let mid = p.send(b, cmd::CREATE, create_body(file, OPLOCK_BATCH, &[]));
    assert_eq!(
        p.take_breaks(a),
        vec![(OPLOCK_LEVEL_II, fid)],
        "A is asked to break to level II"
    );
    assert!(p.went_async(b, mid), "B's CREATE waits for the break");
    assert!(p.final_answer(b, mid).is_none());
    (a, fid, b, mid)
}

/// MS-SMB2 3.3.6.1 / the lock engine's break timeout: a holder that never acknowledges an
/// oplock break loses its oplock after 35 s and the waiting CREATE completes then, not
/// before. (smbtorture needs a real 35-second wait for this.)
#[test]
fn unacknowledged_oplock_break_times_out() {
    let mut p = Pair::new();
    let (a, _, b, mid) = contended_open(&mut p, "contended.txt");
    p.advance(BREAK_TIMEOUT - Duration::from_millis(1));
    assert!(
        p.final_answer(b, mid).is_none(),
        "the CREATE completed before the break timed out"
    );
    p.advance(Duration::from_millis(2));
    let done = p
        .final_answer(b, mid)
        .expect("the CREATE completes once the break times out");
    assert_eq!(done.hdr.status, status::SUCCESS);
    // The holder is taken as having dropped its batch oplock; the newcomer shares read
    // caching as it would after an acknowledgment.
    assert_eq!(done.created().0, OPLOCK_LEVEL_II);
    assert!(p.take_breaks(a).is_empty(), "no second break");
}

/// The acknowledged break: the waiting CREATE completes as soon as A acknowledges, with no
/// time passing.
#[test]
fn acknowledged_oplock_break_completes_the_waiting_open() {
    let mut p = Pair::new();
    let (a, fid, b, mid) = contended_open(&mut p, "acked.txt");
    let ack = p.call(a, OPLOCK_BREAK, break_ack_body(OPLOCK_LEVEL_II, fid));
    assert_eq!(ack.hdr.status, status::SUCCESS);
    let done = p
        .final_answer(b, mid)
        .expect("the CREATE completes on the acknowledgment");
    assert_eq!(done.hdr.status, status::SUCCESS);
    assert_eq!(done.created().0, OPLOCK_LEVEL_II);
}

fn write_body(fid: (u64, u64), data: &[u8]) -> Vec<u8> {
    conn_harness::body_write(fid, 0, data)
}

/// The core's time of day is the one given to it: NEGOTIATE's SystemTime and the creation time
/// recorded for a new file move with the harness's stepped clock, not with the system's.
#[test]
fn the_time_of_day_is_the_stepped_clock() {
    let mut p = Pair::new();
    let hour = Duration::from_secs(3600);
    p.advance(hour);
    let expected = conn_harness::FIXED_FILETIME + (p.clock.load(Ordering::SeqCst) / 100);
    let (a, neg) = p.connect_negotiated(0x0302);
    // NEGOTIATE response: SystemTime at body offset 40.
    assert_eq!(neg.u64_at(40), expected, "NEGOTIATE SystemTime");
    p.advance(hour);
    let created = p.call(a, cmd::CREATE, create_body("new.txt", OPLOCK_NONE, &[]));
    assert_eq!(created.hdr.status, status::SUCCESS);
    // CREATE response: CreationTime at body offset 8.
    assert_eq!(
        created.u64_at(8),
        expected + hour.as_nanos() as u64 / 100,
        "CreationTime"
    );
}

/// A durable handle (DHnQ with a batch oplock) outlives its connection: a new connection
/// reclaims it with DHnC and reads through the very same handle what the first one wrote.
#[test]
fn durable_handle_reconnects_on_a_new_connection() {
    let mut p = Pair::new();
    let a = p.connect(0x0302);
    let opened = p.call(
        a,
        cmd::CREATE,
        create_body("durable.txt", OPLOCK_BATCH, &[durable_request()]),
    );
    assert_eq!(opened.hdr.status, status::SUCCESS);
    let (_, fid) = opened.created();
    let wrote = p.call(a, cmd::WRITE, write_body(fid, b"kept across reconnect"));
    assert_eq!(wrote.hdr.status, status::SUCCESS);
    p.disconnect(a);
    assert!(Path::new(&p.share).join("durable.txt").exists());

    let b = p.connect(0x0302);
    let reopened = p.call(
        b,
        cmd::CREATE,
        create_body("durable.txt", OPLOCK_BATCH, &[durable_reconnect(fid)]),
    );
    assert_eq!(reopened.hdr.status, status::SUCCESS, "DHnC reconnect");
    assert_eq!(reopened.created(), (OPLOCK_BATCH, fid), "the same handle");
    let read = p.call(b, cmd::READ, conn_harness::body_read(fid, 0, 21));
    assert_eq!(read.hdr.status, status::SUCCESS);
    let off = read.body()[2] as usize;
    assert_eq!(&read.msg[off..off + 21], b"kept across reconnect");

    // A second reclaim of the same handle, which the second connection holds, finds nothing
    // to reclaim once its wait for that connection is over.
    let c = p.connect(0x0302);
    let mid = p.send(
        c,
        cmd::CREATE,
        create_body("durable.txt", OPLOCK_NONE, &[durable_reconnect(fid)]),
    );
    p.advance(Duration::from_secs(1));
    let again = p.final_answer(c, mid).expect("an answer after the wait");
    assert_eq!(again.hdr.status, status::OBJECT_NAME_NOT_FOUND);
}

/// A client may reconnect before the server has noticed that its old connection is gone: the
/// reconnect waits (async) for the old connection to let the handle go, and completes as soon
/// as it does, with the same handle.
#[test]
fn durable_reconnect_waits_for_the_old_connection_to_let_go() {
    let mut p = Pair::new();
    let a = p.connect(0x0302);
    let opened = p.call(
        a,
        cmd::CREATE,
        create_body("held.txt", OPLOCK_BATCH, &[durable_request()]),
    );
    assert_eq!(opened.hdr.status, status::SUCCESS);
    let (_, fid) = opened.created();

    let b = p.connect(0x0302);
    let mid = p.send(
        b,
        cmd::CREATE,
        create_body("held.txt", OPLOCK_BATCH, &[durable_reconnect(fid)]),
    );
    assert!(p.went_async(b, mid), "the reconnect waits");
    p.advance(Duration::from_millis(100));
    assert!(p.final_answer(b, mid).is_none(), "still waiting");

    p.disconnect(a);
    let reopened = p
        .final_answer(b, mid)
        .expect("the reconnect completes when the old connection goes");
    assert_eq!(reopened.hdr.status, status::SUCCESS);
    assert_eq!(reopened.created(), (OPLOCK_BATCH, fid), "the same handle");
}

/// The wait of a reconnect for a handle its old connection keeps ends at its deadline, with
/// the handle not found.
#[test]
fn durable_reconnect_gives_up_when_the_old_connection_stays() {
    let mut p = Pair::new();
    let a = p.connect(0x0302);
    let opened = p.call(
        a,
        cmd::CREATE,
        create_body("kept.txt", OPLOCK_BATCH, &[durable_request()]),
    );
    assert_eq!(opened.hdr.status, status::SUCCESS);
    let (_, fid) = opened.created();

    let b = p.connect(0x0302);
    let mid = p.send(
        b,
        cmd::CREATE,
        create_body("kept.txt", OPLOCK_BATCH, &[durable_reconnect(fid)]),
    );
    assert!(p.went_async(b, mid));
    p.advance(Duration::from_millis(150));
    assert!(p.final_answer(b, mid).is_none(), "still waiting");
    p.advance(Duration::from_millis(100));
    let refused = p
        .final_answer(b, mid)
        .expect("the wait ends at its deadline");
    assert_eq!(refused.hdr.status, status::OBJECT_NAME_NOT_FOUND);
    // The old connection still has its handle.
    let wrote = p.call(a, cmd::WRITE, write_body(fid, b"still mine"));
    assert_eq!(wrote.hdr.status, status::SUCCESS);
}

/// SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2 asking for `timeout_ms`.
fn durable_v2_request(timeout_ms: u32, create_guid: [u8; 16]) -> CreateContext {
    let mut data = timeout_ms.to_le_bytes().to_vec();
    data.extend_from_slice(&[0; 12]); // Flags (not persistent), Reserved
    data.extend_from_slice(&create_guid);
    CreateContext {
        name: b"DH2Q".to_vec(),
        data,
    }
}

fn durable_v2_reconnect(fid: (u64, u64), create_guid: [u8; 16]) -> CreateContext {
    let mut data = fid.0.to_le_bytes().to_vec();
    data.extend_from_slice(&fid.1.to_le_bytes());
    data.extend_from_slice(&create_guid);
    data.extend_from_slice(&0u32.to_le_bytes());
    CreateContext {
        name: b"DH2C".to_vec(),
        data,
    }
}

/// A disconnected durable v2 handle is kept for its timeout and no longer: reclaimable just
/// before it, gone just after (MS-SMB2 3.3.5.9.10, 3.3.7.1), measured on the simulated clock.
#[test]
fn durable_v2_handle_expires_after_its_timeout() {
    let guid = [0x42; 16];
    let timeout = Duration::from_secs(10);
    for (wait, reclaimable) in [
        (timeout - Duration::from_millis(10), true),
        (timeout + Duration::from_millis(10), false),
    ] {
        let mut p = Pair::new();
        let a = p.connect(0x0302);
        let opened = p.call(
            a,
            cmd::CREATE,
            create_body(
                "v2.txt",
                OPLOCK_BATCH,
                &[durable_v2_request(timeout.as_millis() as u32, guid)],
            ),
        );
        assert_eq!(opened.hdr.status, status::SUCCESS);
        let (_, fid) = opened.created();
        p.disconnect(a);
        p.advance(wait);
        let b = p.connect(0x0302);
        let reopened = p.call(
            b,
            cmd::CREATE,
            create_body("v2.txt", OPLOCK_BATCH, &[durable_v2_reconnect(fid, guid)]),
        );
        if reclaimable {
            assert_eq!(reopened.hdr.status, status::SUCCESS, "after {wait:?}");
            assert_eq!(reopened.created().1, fid);
        } else {
            assert_eq!(
                reopened.hdr.status,
                status::OBJECT_NAME_NOT_FOUND,
                "after {wait:?}"
            );
        }
    }
}

/// An RqLs context asking for an RWH v2 lease with key `key`.
fn lease_rwh_request(key: u128) -> CreateContext {
    smb_proto::create_ctx::lease_response(&smb_proto::messages::LeaseContext {
        key,
        state: 7,
        flags: 0,
        duration: 0,
        parent_key: None,
        epoch: Some(0),
    })
}

const OPLOCK_LEASE: u8 = 0xFF;
const LOCKFLAG_EXCLUSIVE: u32 = 0x2;
const LOCKFLAG_UNLOCK: u32 = 0x4;
const LOCKFLAG_FAIL_IMMEDIATELY: u32 = 0x10;

const SET_INFO: u16 = 17;
const FILE_DELETE_ON_CLOSE: u32 = 0x1000;

/// A SET_INFO body (MS-SMB2 2.2.39) setting FileEndOfFileInformation (class 20) to `eof`.
fn set_eof_body(fid: (u64, u64), eof: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(33).u8(1).u8(20).u32(8).u16(64 + 32).u16(0).u32(0);
    w.u64(fid.0).u64(fid.1).u64(eof);
    w.buf
}

/// Send one request on `c` and count the lock-service requests it made (with a remote
/// lockmgrd: its round trips). Returns the answer, the count and the kinds asked.
fn round_trips(p: &mut Pair, c: usize, command: u16, body: Vec<u8>) -> (Answer, u64, String) {
    let before = p.shared.lock_requests.snapshot();
    let answer = p.call(c, command, body);
    let after = p.shared.lock_requests.snapshot();
    let mut total = 0;
    let mut kinds = Vec::new();
    for ((kind, b), (_, a)) in before.iter().zip(&after) {
        if a > b {
            total += a - b;
            kinds.push(format!("{kind}={}", a - b));
        }
    }
    (answer, total, kinds.join(" "))
}

/// The round trips each SMB operation costs a cluster node (issue 14): every lock-service
/// request is one lockmgrd round trip. Prints the table (`--nocapture`) and holds the counts.
#[test]
fn lock_service_round_trips_per_operation() {
    let mut p = Pair::new();
    let a = p.connect(0x0302);
    let mut table = Vec::new();
    let mut row = |what: &str, (answer, n, kinds): (Answer, u64, String)| {
        assert_eq!(answer.hdr.status, status::SUCCESS, "{what}");
        table.push((what.to_string(), n, kinds));
        answer
    };

    let plain = row(
        "CREATE (no caching)",
        round_trips(
            &mut p,
            a,
            cmd::CREATE,
            create_body("plain.txt", OPLOCK_NONE, &[]),
        ),
    )
    .created()
    .1;
    let batch = row(
        "CREATE (batch oplock)",
        round_trips(
            &mut p,
            a,
            cmd::CREATE,
            create_body("batch.txt", OPLOCK_BATCH, &[]),
        ),
    )
    .created()
    .1;
    let leased = row(
        "CREATE (RWH lease)",
        round_trips(
            &mut p,
            a,
            cmd::CREATE,
            create_body("lease.txt", OPLOCK_LEASE, &[lease_rwh_request(1)]),
        ),
    )
    .created()
    .1;
    let durable = row(
        "CREATE (RWH lease + DH2Q)",
        round_trips(
            &mut p,
            a,
            cmd::CREATE,
            create_body(
                "durable.txt",
                OPLOCK_LEASE,
                &[lease_rwh_request(2), durable_v2_request(60_000, [2; 16])],
            ),
        ),
    );
    assert!(
        durable.msg.windows(4).any(|w| w == b"DH2Q"),
        "the durable handle is granted"
    );
    let durable = durable.created().1;
    // The CREATE of a file without locks brings an I/O grant; READ, WRITE and size changes
    // then cost nothing until another node's lock recalls it.
    row(
        "WRITE (first, granted)",
        round_trips(&mut p, a, cmd::WRITE, write_body(plain, b"0123456789")),
    );
    row(
        "READ (granted)",
        round_trips(&mut p, a, cmd::READ, conn_harness::body_read(plain, 0, 10)),
    );
    row(
        "WRITE (granted)",
        round_trips(&mut p, a, cmd::WRITE, write_body(plain, b"0123456789")),
    );
    row(
        "SET_INFO end-of-file (granted)",
        round_trips(&mut p, a, SET_INFO, set_eof_body(plain, 10)),
    );
    // Another lock-service session (a second connection: with EngineLocks each connection
    // is one, as each node is with lockmgrd) locks the file: its lock waits for the
    // recall, which the first session acknowledges.
    let b = p.connect(0x0302);
    let plain_b = row(
        "CREATE (other session)",
        round_trips(
            &mut p,
            b,
            cmd::CREATE,
            create_body("plain.txt", OPLOCK_NONE, &[]),
        ),
    )
    .created()
    .1;
    row(
        "LOCK (other session, recalls)",
        round_trips(
            &mut p,
            b,
            cmd::LOCK,
            conn_harness::body_lock(plain_b, LOCKFLAG_EXCLUSIVE | LOCKFLAG_FAIL_IMMEDIATELY),
        ),
    );
    let (conflict, n, kinds) = round_trips(&mut p, a, cmd::WRITE, write_body(plain, b"0123456789"));
    assert_eq!(
        conflict.hdr.status,
        status::FILE_LOCK_CONFLICT,
        "the recalled grant is not used: the write sees the other session's lock"
    );
    table.push(("WRITE (locked by other)".to_string(), n, kinds));
    let mut row = |what: &str, (answer, n, kinds): (Answer, u64, String)| {
        assert_eq!(answer.hdr.status, status::SUCCESS, "{what}");
        table.push((what.to_string(), n, kinds));
        answer
    };
    row(
        "UNLOCK (other session)",
        round_trips(
            &mut p,
            b,
            cmd::LOCK,
            conn_harness::body_lock(plain_b, LOCKFLAG_UNLOCK),
        ),
    );
    row(
        "READ",
        round_trips(&mut p, a, cmd::READ, conn_harness::body_read(plain, 0, 10)),
    );
    // A batch oplock is not caching a write would break: its own open gets the grant too.
    row(
        "WRITE (batch oplock, granted)",
        round_trips(&mut p, a, cmd::WRITE, write_body(batch, b"0123456789")),
    );
    row(
        "LOCK",
        round_trips(
            &mut p,
            a,
            cmd::LOCK,
            conn_harness::body_lock(plain, LOCKFLAG_EXCLUSIVE | LOCKFLAG_FAIL_IMMEDIATELY),
        ),
    );
    row(
        "UNLOCK",
        round_trips(
            &mut p,
            a,
            cmd::LOCK,
            conn_harness::body_lock(plain, LOCKFLAG_UNLOCK),
        ),
    );
    for (what, fid) in [
        ("CLOSE", plain),
        ("CLOSE (batch oplock)", batch),
        ("CLOSE (lease)", leased),
        ("CLOSE (durable)", durable),
    ] {
        row(
            what,
            round_trips(&mut p, a, cmd::CLOSE, conn_harness::body_close(fid)),
        );
    }
    let doomed = row(
        "CREATE (delete-on-close)",
        round_trips(
            &mut p,
            a,
            cmd::CREATE,
            create_body_with_options(
                "doomed.txt",
                OPLOCK_NONE,
                NON_DIRECTORY | FILE_DELETE_ON_CLOSE,
                &[],
            ),
        ),
    )
    .created()
    .1;
    row(
        "CLOSE (delete-on-close)",
        round_trips(&mut p, a, cmd::CLOSE, conn_harness::body_close(doomed)),
    );
    for (what, n, kinds) in &table {
        println!("{what:<28} {n}  {kinds}");
    }
    let counts: Vec<(&str, u64)> = table.iter().map(|(w, n, _)| (w.as_str(), *n)).collect();
    assert_eq!(
        counts,
        vec![
            ("CREATE (no caching)", 1),
            ("CREATE (batch oplock)", 1),
            ("CREATE (RWH lease)", 1),
            ("CREATE (RWH lease + DH2Q)", 1),
            ("WRITE (first, granted)", 0),
            ("READ (granted)", 0),
            ("WRITE (granted)", 0),
            ("SET_INFO end-of-file (granted)", 0),
            ("CREATE (other session)", 1),
            ("LOCK (other session, recalls)", 2),
            ("WRITE (locked by other)", 1),
            ("UNLOCK (other session)", 1),
            ("READ", 1),
            ("WRITE (batch oplock, granted)", 0),
            ("LOCK", 1),
            ("UNLOCK", 1),
            ("CLOSE", 1),
            ("CLOSE (batch oplock)", 1),
            ("CLOSE (lease)", 1),
            ("CLOSE (durable)", 1),
            ("CREATE (delete-on-close)", 1),
            ("CLOSE (delete-on-close)", 1),
        ]
    );
}

/// A directory CREATE (OPEN_IF) with read/write/delete access sharing `share`.
fn dir_body(name: &str, share: u32) -> Vec<u8> {
    const DIRECTORY: u32 = 0x1;
    let mut b = create_body_with_options(name, OPLOCK_NONE, DIRECTORY, &[]);
    // ShareAccess: CREATE request body offset 32 (MS-SMB2 2.2.13).
    b[32..36].copy_from_slice(&share.to_le_bytes());
    b
}

/// smbtorture smb2.dir.sorted under load (issue 12): A holds a directory open and its client
/// hangs up; B's CREATE of the directory without FILE_SHARE_DELETE, sent after the hang-up,
/// must not meet A's open just because A's worker has not torn A down yet. It waits for that
/// teardown (MS-SMB2 3.3.7.1 closes A's opens) and then succeeds. While A's client is still
/// there, the same CREATE is a sharing violation at once.
#[test]
fn create_waits_for_a_hung_up_connection_to_be_torn_down() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    const SHARE_RW: u32 = 3;
    let mut p = Pair::new();
    let a = p.connect(0x0311);
    let b = p.connect(0x0311);
    // Each connection's transport, as the worker registers its socket.
    let (a_sock, a_client) = UnixStream::pair().expect("socketpair");
    let (b_sock, _b_client) = UnixStream::pair().expect("socketpair");
    p.shared
        .register_transport(a as u64 + 1, a_sock.as_raw_fd());
    p.shared
        .register_transport(b as u64 + 1, b_sock.as_raw_fd());
    let held = p.call(a, cmd::CREATE, dir_body("d", 7));
    assert_eq!(held.hdr.status, status::SUCCESS);
    let refused = p.call(b, cmd::CREATE, dir_body("d", SHARE_RW));
    assert_eq!(
        refused.hdr.status,
        status::SHARING_VIOLATION,
        "A's client is there: its open stands in the way"
    );
    // A's client hangs up; A's worker has not seen it yet.
    drop(a_client);
    let mid = p.send(b, cmd::CREATE, dir_body("d", SHARE_RW));
    assert!(p.went_async(b, mid), "B's CREATE waits for A's teardown");
    assert!(p.final_answer(b, mid).is_none());
    p.disconnect(a);
    let done = p
        .final_answer(b, mid)
        .expect("B's CREATE is decided once A is torn down");
    assert_eq!(done.hdr.status, status::SUCCESS);
    drop(a_sock);
}
