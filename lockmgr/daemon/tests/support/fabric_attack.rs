//! The lock-state attacks on the datagram fabric (issue 9), written once for every medium:
//! `fabric_attacks.rs` runs them over UDP on loopback, `fabric_attacks_eth.rs` over AF_PACKET
//! and AF_XDP between network namespaces. A medium only supplies an [`Attacker`] (how to
//! capture datagrams on the path and send forged ones) and two authenticated nodes; the
//! scenarios here forge the reliability layer's datagrams and check the result as lock state
//! in lockmgrd: node A holds an exclusive byte-range lock, and node B's conflicting lock must
//! be refused after every attack.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockmgr_client::LockClient;
use lockmgr_engine::{
    access, share, FileId, LockRange, OpenId, OpenRequest, Reply, Request, Status,
};
use lockmgr_transport::reliable::{Link, ReliableServer};
use lockmgr_transport::{
    ClientTransport, PeerId, ServerEvent, ServerTransport, TransportError, Waker,
};

/// Limit of every call; only there so a broken run fails instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(10);
const FILE: FileId = FileId(42);
const RANGE: LockRange = LockRange {
    offset: 0,
    length: 100,
    exclusive: true,
};

/// `true` when this test can run. Without root it prints SKIPPED and returns `false`, except
/// with `CI=true`, where a missing capability is a failure (like `lockmgr_transport::netns`).
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return true;
    }
    let msg = format!("{test}: needs root (raw sockets), running as uid {uid}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: required capability missing)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

// The datagram layout of lockmgr_transport::reliable (wire v2), spelled out as an attacker
// would: magic u16 | version u8 | kind u8 | conn_id u64 | pn u64 | seq u64 | ack u64.
pub const KIND_SYN: u8 = 1;
pub const KIND_SYNACK: u8 = 2;
pub const KIND_DATA: u8 = 3;
pub const KIND_FIN: u8 = 6;
pub const KIND_RST: u8 = 7;
pub const KIND_CONFIRM: u8 = 8;
pub const HDR: usize = 36;
/// Body of SYN, SYNACK, CONFIRM: flags u8 | 7 zero bytes | time u64 | three 32-byte nonces.
pub const HELLO: usize = 112;

pub fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(b)
}

pub fn header(kind: u8, conn_id: u64) -> Vec<u8> {
    let mut d = vec![0u8; HDR];
    d[0..2].copy_from_slice(&0x4d4cu16.to_le_bytes());
    d[2] = 2;
    d[3] = kind;
    d[4..12].copy_from_slice(&conn_id.to_le_bytes());
    d
}

/// A SYN (frame MACs on, like the server) with client nonce `nonce`.
fn syn(conn_id: u64, nonce: u8) -> Vec<u8> {
    let mut d = header(KIND_SYN, conn_id);
    let mut hello = [0u8; HELLO];
    hello[0] = 1;
    hello[16..48].fill(nonce);
    d.extend_from_slice(&hello);
    d
}

/// Which way a captured datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    FromA,
    ToA,
}

/// Someone on the path between node A and lockmgrd, with a raw socket of the medium.
pub trait Attacker {
    /// Reliability-layer datagrams between node A and the server seen since the last call
    /// (medium headers removed), in order.
    fn capture(&mut self) -> Vec<(Dir, Vec<u8>)>;
    /// Sends `dgram` to the server from node A's address.
    fn send_as_a(&mut self, dgram: &[u8]);
    /// Sends `dgram` to node A from the server's address.
    fn send_to_a(&mut self, dgram: &[u8]);
    /// Sends `dgram` to the server from made-up address number `i` (no node uses it).
    fn send_as_stranger(&mut self, i: u32, dgram: &[u8]);
}

fn captured(att: &mut dyn Attacker, dir: Dir) -> Vec<Vec<u8>> {
    att.capture()
        .into_iter()
        .filter(|(d, _)| *d == dir)
        .map(|(_, g)| g)
        .collect()
}

/// Two authenticated nodes with one open each of the same file; A locks the range first.
pub struct Nodes<T: ClientTransport> {
    pub a: LockClient<T>,
    pub b: LockClient<T>,
    oa: OpenId,
    ob: OpenId,
}

fn open<T: ClientTransport>(n: &mut LockClient<T>) -> OpenId {
    let reply = n
        .call(
            Request::Open(OpenRequest {
                file: FILE,
                access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
                share: share::READ | share::WRITE,
                ..OpenRequest::default()
            }),
            TIMEOUT,
        )
        .expect("open");
    let Reply::Opened { open, .. } = reply else {
        panic!("open: {reply:?}")
    };
    open
}

fn lock<T: ClientTransport>(n: &mut LockClient<T>, open: OpenId) -> Reply {
    let request = Request::Lock {
        open,
        ranges: vec![RANGE],
        fail_immediately: true,
    };
    n.call(request, TIMEOUT).expect("lock call")
}

fn unlock<T: ClientTransport>(n: &mut LockClient<T>, open: OpenId) -> Reply {
    let request = Request::Unlock {
        open,
        ranges: vec![RANGE],
    };
    n.call(request, TIMEOUT).expect("unlock call")
}

impl<T: ClientTransport> Nodes<T> {
    pub fn new(mut a: LockClient<T>, mut b: LockClient<T>) -> Self {
        let oa = open(&mut a);
        let ob = open(&mut b);
        Nodes { a, b, oa, ob }
    }

    pub fn lock_a(&mut self) -> Reply {
        lock(&mut self.a, self.oa)
    }

    pub fn unlock_a(&mut self) -> Reply {
        unlock(&mut self.a, self.oa)
    }

    pub fn lock_b(&mut self) -> Reply {
        lock(&mut self.b, self.ob)
    }

    /// Lets lockmgrd and node A process what the attacker sent (A keeps answering
    /// keepalives and RST probes meanwhile, as smbd's pump would).
    pub fn settle(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            // An error means A lost its session: the assertions that follow say what it cost.
            let a = &mut self.a;
            if a.poll(&mut |_| {}).is_err() || a.wait(Some(Duration::from_millis(5))).is_err() {
                return;
            }
        }
    }

    /// The end of every attack: B is refused the range A holds, A's session still works
    /// (it unlocks), and then B gets the range.
    pub fn assert_a_still_holds_the_lock(&mut self, attack: &str) {
        assert_eq!(
            self.lock_b(),
            Reply::Done(Status::LockNotGranted),
            "{attack}: node B got the lock node A holds"
        );
        assert_eq!(
            self.unlock_a(),
            Reply::Done(Status::Success),
            "{attack}: node A's session did not survive"
        );
        assert_eq!(self.lock_b(), Reply::Done(Status::Success), "{attack}");
    }

    /// One value of the `fabric:` line of lockmgrd's status, asked through node B.
    pub fn fabric_stat(&mut self, name: &str) -> u64 {
        let text = self.b.status(TIMEOUT).expect("status");
        let line = text
            .lines()
            .find(|l| l.starts_with("fabric:"))
            .unwrap_or_else(|| panic!("no fabric line in status:\n{text}"));
        let key = format!("{name}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    }
}

/// The attack: a SYN with a new connection id from node A's address used to make
/// lockmgrd drop A's session, releasing A's locks to node B. Then, since the attacker sees the
/// SYNACK, a CONFIRM without the key; a FIN for A's live connection; an RST to A.
pub fn spoofed_handshake<T: ClientTransport>(n: &mut Nodes<T>, att: &mut dyn Attacker) {
    att.capture();
    assert_eq!(n.lock_a(), Reply::Done(Status::Success));
    let conn_id = captured(att, Dir::FromA)
        .iter()
        .find(|d| d[3] == KIND_DATA)
        .map(|d| u64_at(d, 4))
        .expect("A's traffic was captured");

    let new_conn = 0x0bad_5eed;
    att.send_as_a(&syn(new_conn, 0x77));
    n.settle(Duration::from_millis(50));
    let synack = captured(att, Dir::ToA)
        .into_iter()
        .find(|d| d.len() == HDR + HELLO && d[3] == KIND_SYNACK && u64_at(d, 4) == new_conn)
        .expect("the server answers the SYN (statelessly)");
    let mut confirm = synack;
    confirm[3] = KIND_CONFIRM;
    confirm[HDR + 80..].fill(0x55); // made-up proof
    att.send_as_a(&confirm);
    let mut fin = header(KIND_FIN, conn_id);
    fin[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    fin.extend_from_slice(&[0; 16]);
    att.send_as_a(&fin);
    att.send_to_a(&header(KIND_RST, conn_id));
    // Longer than the RST probe time, so a probe that failed would have killed A.
    n.settle(Duration::from_millis(700));
    n.assert_a_still_holds_the_lock("spoofed SYN/CONFIRM/FIN/RST");
}

/// Which of node A's captured unlocks is sent back, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// The datagram exactly as captured.
    Replay,
    /// The captured unlock re-sequenced as A's next frame, with a fresh packet number.
    Resequenced,
}

/// A locks, unlocks (captured), locks again; the attacker sends the captured unlock back as
/// `how` says. Returns B's answer to a conflicting lock: `LockNotGranted` when the injection
/// was refused. Without frame MACs, a re-sequenced unlock gets through (B is granted).
pub fn inject_captured_unlock<T: ClientTransport>(
    n: &mut Nodes<T>,
    att: &mut dyn Attacker,
    how: Injection,
) -> Reply {
    assert_eq!(n.lock_a(), Reply::Done(Status::Success));
    att.capture();
    assert_eq!(n.unlock_a(), Reply::Done(Status::Success));
    let unlock_dgram = captured(att, Dir::FromA)
        .into_iter()
        .find(|d| d[3] == KIND_DATA)
        .expect("the unlock was captured");
    assert_eq!(n.lock_a(), Reply::Done(Status::Success));
    n.settle(Duration::from_millis(20));
    let seen = captured(att, Dir::FromA);
    let next_seq = seen
        .iter()
        .filter(|d| d[3] == KIND_DATA)
        .map(|d| u64_at(d, 20) + 1)
        .max()
        .expect("A's lock was captured");
    let next_pn = seen.iter().map(|d| u64_at(d, 12)).max().unwrap_or(0) + 1000;
    let dgram = match how {
        Injection::Replay => unlock_dgram,
        Injection::Resequenced => {
            let mut d = unlock_dgram;
            d[12..20].copy_from_slice(&next_pn.to_le_bytes());
            d[20..28].copy_from_slice(&next_seq.to_le_bytes());
            d
        }
    };
    att.send_as_a(&dgram);
    n.settle(Duration::from_millis(100));
    n.lock_b()
}

/// With frame MACs: the injection of `how` is refused, B is refused A's range, and A's
/// session still works.
pub fn injected_unlock_is_refused<T: ClientTransport>(
    n: &mut Nodes<T>,
    att: &mut dyn Attacker,
    how: Injection,
) {
    assert_eq!(
        inject_captured_unlock(n, att, how),
        Reply::Done(Status::LockNotGranted),
        "{how:?}: an injected unlock released node A's lock"
    );
    n.assert_a_still_holds_the_lock(&format!("{how:?} unlock"));
}

/// How many peers (authenticated connections) a server transport holds, as seen after each
/// of its polls: the transport's own gauge ([`ReliableServer::peer_count`]), read from the
/// server thread.
#[derive(Clone, Default)]
pub struct PeerGauge {
    most: Arc<AtomicUsize>,
}

impl PeerGauge {
    /// The most peers the server held at once so far.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::Acquire)
    }

    /// `server`, reporting its peer count to this gauge.
    pub fn watch<L: Link>(&self, server: ReliableServer<L>) -> Gauged<L> {
        Gauged {
            inner: server,
            most: Arc::clone(&self.most),
        }
    }
}

/// A server transport that reports its peer count to a [`PeerGauge`]; otherwise unchanged.
pub struct Gauged<L: Link> {
    inner: ReliableServer<L>,
    most: Arc<AtomicUsize>,
}

impl<L: Link> ServerTransport for Gauged<L> {
    fn poll(&mut self, f: &mut dyn FnMut(ServerEvent<'_>)) -> Result<usize, TransportError> {
        let n = ServerTransport::poll(&mut self.inner, f);
        self.most
            .fetch_max(self.inner.peer_count(), Ordering::AcqRel);
        n
    }
    fn send(&mut self, peer: PeerId, frame: &[u8]) -> Result<(), TransportError> {
        ServerTransport::send(&mut self.inner, peer, frame)
    }
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        ServerTransport::wait(&mut self.inner, timeout)
    }
    fn waker(&self) -> Waker {
        ServerTransport::waker(&self.inner)
    }
    fn close_peer(&mut self, peer: PeerId) {
        ServerTransport::close_peer(&mut self.inner, peer)
    }
    fn fabric_counters(&self) -> Option<lockmgr_transport::fabric::FabricCounters> {
        ServerTransport::fabric_counters(&self.inner)
    }
}

/// Sources in the flood (each sends a SYN, a keyless CONFIRM and a DATA frame).
const STRANGERS: u32 = 2000;
/// Strangers sent before waiting for lockmgrd to count them: their 60 datagrams fit every
/// receive queue on the way (AF_XDP's 256-entry ring, a UDP socket's default 208 KiB buffer,
/// the kernel's 1000-packet backlog), so none is lost and every one is counted.
const BATCH: u32 = 20;

/// A flood from addresses no node uses: a SYN, a CONFIRM with a made-up cookie and proof, and
/// a DATA frame for a made-up connection from each. Handshakes in progress must cost lockmgrd
/// nothing: every SYN is answered (counted), every CONFIRM refused (counted), and the server
/// never holds more peers than the two real nodes. Node A's lock stays in place.
pub fn unauthenticated_flood<T: ClientTransport>(
    n: &mut Nodes<T>,
    att: &mut dyn Attacker,
    gauge: &PeerGauge,
) {
    assert_eq!(n.lock_a(), Reply::Done(Status::Success));
    let syns0 = n.fabric_stat("syns");
    let stale0 = n.fabric_stat("stale_handshakes");
    let mut sent = 0;
    while sent < STRANGERS {
        for i in sent..sent + BATCH {
            let conn_id = 0x5000_0000_0000 + u64::from(i);
            att.send_as_stranger(i, &syn(conn_id, i as u8));
            let mut confirm = syn(conn_id, i as u8);
            confirm[3] = KIND_CONFIRM;
            confirm[HDR + 8..HDR + 16].copy_from_slice(&1u64.to_le_bytes());
            confirm[HDR + 48..].fill(0x42);
            att.send_as_stranger(i, &confirm);
            let mut data = header(KIND_DATA, conn_id);
            data.extend_from_slice(&[0x33; 40]);
            att.send_as_stranger(i, &data);
        }
        sent += BATCH;
        // Wait until lockmgrd has seen the whole batch (A keeps its session meanwhile).
        let start = Instant::now();
        while n.fabric_stat("syns") < syns0 + u64::from(sent)
            || n.fabric_stat("stale_handshakes") < stale0 + u64::from(sent)
        {
            assert!(
                start.elapsed() < TIMEOUT,
                "lockmgrd did not count the flood: {sent} sent, syns {} -> {}, stale {} -> {}",
                syns0,
                n.fabric_stat("syns"),
                stale0,
                n.fabric_stat("stale_handshakes")
            );
            n.settle(Duration::from_millis(5));
        }
    }
    assert_eq!(
        n.fabric_stat("syns"),
        syns0 + u64::from(STRANGERS),
        "every SYN was answered"
    );
    assert_eq!(
        n.fabric_stat("handshakes"),
        2,
        "only the two nodes connected"
    );
    // The gauge saw the two real nodes (so it works) and nothing the flood left behind.
    assert_eq!(gauge.most(), 2, "peers held by the server at most");
    n.assert_a_still_holds_the_lock("unauthenticated flood");
}

/// A non-blocking AF_PACKET socket of `kind` (SOCK_RAW: whole frames; SOCK_DGRAM: without
/// the link header) for `ethertype`, bound to `iface` of the calling thread's namespace.
pub fn packet_socket(iface: &str, kind: i32, ethertype: u16) -> std::io::Result<OwnedFd> {
    let proto = ethertype.to_be();
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            kind | libc::SOCK_NONBLOCK,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(iface).map_err(std::io::Error::other)?;
    // SAFETY: name is a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll outlives the call; the length is its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}
