//! Attacks on the datagram fabric (issue 9 item 5): lockmgrd in-process over UDP on loopback,
//! two nodes, and an attacker that spoofs one node's address (raw IPv4 socket with
//! IP_HDRINCL) and sees all loopback traffic (AF_PACKET on `lo`). Needs root; the tests say
//! SKIPPED and pass without it.
//!
//! Every attack ends the same way: node A holds an exclusive byte-range lock, and node B's
//! conflicting lock must be refused. The injection test also runs with frame MACs off (the
//! benchmark's insecure baseline) and there requires the attack to succeed: proof that it
//! really exercises what the MAC prevents.
// Raw sockets and poll(2) to attack or watch the transport from outside: test-only unsafe.
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use lockmgr_client::{ClientOptions, LockClient};
use lockmgr_engine::{
    access, share, FileId, LockRange, OpenId, OpenRequest, Reply, Request, Status,
};
use lockmgr_proto::ClusterKey;
use lockmgr_transport::udp::{UdpClient, UdpConfig, UdpServer};
use lockmgr_transport::{FabricKey, SpinConfig};

mod support;
use support::RunningServer;

const KEY: &[u8] = b"fabric-attack-cluster-key-000000";
const TIMEOUT: Duration = Duration::from_secs(10);
const FILE: FileId = FileId(42);
const RANGE: LockRange = LockRange {
    offset: 0,
    length: 100,
    exclusive: true,
};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: needs root (raw sockets)");
            return;
        }
    };
}

fn udp_config(mac: bool) -> UdpConfig {
    UdpConfig {
        spin: SpinConfig::never(),
        fabric_key: Some(FabricKey::new(
            ClusterKey::new(KEY).unwrap().fabric_secret(),
        )),
        insecure_no_frame_mac: !mac,
        ..UdpConfig::default()
    }
}

fn spawn_server(mac: bool) -> (RunningServer, SocketAddr) {
    let transport = UdpServer::bind("127.0.0.1:0".parse().unwrap(), udp_config(mac)).unwrap();
    let addr = transport.local_addr().unwrap();
    (support::spawn_server(transport, KEY), addr)
}

type Node = LockClient<UdpClient>;

/// A node as smbd connects one: the transport without the key, `LockClient` authenticates.
fn node(server: SocketAddr, name: &str, mac: bool) -> Node {
    let cfg = UdpConfig {
        fabric_key: None,
        ..udp_config(mac)
    };
    let options = ClientOptions {
        node_name: name.into(),
        key: ClusterKey::new(KEY).unwrap(),
        handshake_timeout: TIMEOUT,
    };
    LockClient::connect(UdpClient::connect(server, cfg).unwrap(), &options).unwrap()
}

fn node_addr(n: &Node) -> SocketAddrV4 {
    let port = n.transport().local_addr().unwrap().port();
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

fn open(n: &mut Node) -> OpenId {
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
        .unwrap();
    let Reply::Opened { open, .. } = reply else {
        panic!("open: {reply:?}")
    };
    open
}

fn lock(n: &mut Node, open: OpenId) -> Reply {
    n.call(
        Request::Lock {
            open,
            ranges: vec![RANGE],
            fail_immediately: true,
        },
        TIMEOUT,
    )
    .unwrap()
}

fn unlock(n: &mut Node, open: OpenId) -> Reply {
    n.call(
        Request::Unlock {
            open,
            ranges: vec![RANGE],
        },
        TIMEOUT,
    )
    .unwrap()
}

/// Lets lockmgrd and node A process what the attacker sent (A keeps answering keepalives and
/// RST probes meanwhile, as smbd's pump would).
fn settle(a: &mut Node, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        // An error means A lost its session: the assertions that follow say what that cost.
        if a.poll(&mut |_| {}).is_err() || a.wait(Some(Duration::from_millis(5))).is_err() {
            return;
        }
    }
}

/// Sends `payload` as a UDP datagram from `src` (any address: a spoofed one) to `dst`.
fn spoof(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // IPPROTO_RAW implies IP_HDRINCL: we write the IPv4 header (the kernel fills in the
    // checksum, RFC 791) and a UDP header without checksum (optional over IPv4, RFC 768).
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*dst.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: p and sin outlive the call; the lengths are theirs.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            p.as_ptr().cast(),
            p.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(n, p.len() as isize, "{}", std::io::Error::last_os_error());
}

/// Captures every UDP datagram on `lo` (the attacker is on the path).
struct Sniffer(OwnedFd);

impl Sniffer {
    fn new() -> Sniffer {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the name is a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
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
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        Sniffer(fd)
    }

    /// UDP payloads captured so far from `src` to `dst` (each once: loopback shows outgoing
    /// and incoming copies, only incoming ones are kept).
    fn take(&self, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from outlive the call; the lengths are theirs.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n <= 0 {
                return out;
            }
            let p = &buf[..n as usize];
            if from.sll_pkttype == libc::PACKET_OUTGOING || p.len() < 28 || p[9] != 17 {
                continue;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let Some(udp) = p.get(ihl..) else { continue };
            if udp.len() < 8
                || p[12..16] != src.ip().octets()
                || p[16..20] != dst.ip().octets()
                || udp[0..2] != src.port().to_be_bytes()
                || udp[2..4] != dst.port().to_be_bytes()
            {
                continue;
            }
            out.push(udp[8..].to_vec());
        }
    }
}

// The datagram layout of lockmgr_transport::reliable (wire v2), spelled out as an attacker
// would: magic u16 | version u8 | kind u8 | conn_id u64 | pn u64 | seq u64 | ack u64.
const KIND_SYN: u8 = 1;
const KIND_SYNACK: u8 = 2;
const KIND_DATA: u8 = 3;
const KIND_FIN: u8 = 6;
const KIND_CONFIRM: u8 = 8;
const HDR: usize = 36;
const HELLO: usize = 112;

fn u64_at(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
}

fn header(kind: u8, conn_id: u64) -> Vec<u8> {
    let mut d = vec![0u8; HDR];
    d[0..2].copy_from_slice(&0x4d4cu16.to_le_bytes());
    d[2] = 2;
    d[3] = kind;
    d[4..12].copy_from_slice(&conn_id.to_le_bytes());
    d
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 only"),
    }
}

/// The attack: one spoofed SYN with a new connection id from node A's address:port
/// used to make lockmgrd drop A's session, releasing A's locks to node B. Now a SYN creates
/// nothing; neither do a CONFIRM without the key, a forged FIN or RST.
#[test]
fn spoofed_syn_from_a_nodes_address_does_not_drop_its_session() {
    require_root!();
    let (_server, server) = spawn_server(true);
    let sniff = Sniffer::new();
    let mut a = node(server, "node-a", true);
    let mut b = node(server, "node-b", true);
    let oa = open(&mut a);
    let ob = open(&mut b);
    assert_eq!(lock(&mut a, oa), Reply::Done(Status::Success));
    let (a_addr, s_addr) = (node_addr(&a), v4(server));
    let conn_id = sniff
        .take(a_addr, s_addr)
        .iter()
        .find(|d| d[3] == KIND_DATA)
        .map(|d| u64_at(d, 4))
        .expect("A's traffic was captured");

    // The forged SYN (new conn id, node A's address and port).
    let mut syn = header(KIND_SYN, 0x0bad_5eed);
    let mut hello = [0u8; HELLO];
    hello[0] = 1; // frame MACs on, like the server
    hello[16..48].copy_from_slice(&[0x77; 32]);
    syn.extend_from_slice(&hello);
    spoof(a_addr, s_addr, &syn);
    settle(&mut a, Duration::from_millis(50));
    // On the path, the attacker also sees the SYNACK (sent to node A) and answers it: a
    // CONFIRM with the server's cookie but no knowledge of the key.
    let synack = sniff
        .take(s_addr, a_addr)
        .into_iter()
        .find(|d| d.len() == HDR + HELLO && d[3] == KIND_SYNACK && u64_at(d, 4) == 0x0bad_5eed)
        .expect("the server answers the SYN (statelessly)");
    let mut confirm = synack.clone();
    confirm[3] = KIND_CONFIRM;
    confirm[HDR + 80..].copy_from_slice(&[0x55; 32]); // made-up proof
    spoof(a_addr, s_addr, &confirm);
    // Forged FIN for A's real connection (conn id seen on the wire), and an RST to A.
    let mut fin = header(KIND_FIN, conn_id);
    fin[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    fin.extend_from_slice(&[0; 16]);
    spoof(a_addr, s_addr, &fin);
    spoof(s_addr, a_addr, &header(7, conn_id));
    // Longer than the RST probe time, so a probe that failed would have killed A.
    settle(&mut a, Duration::from_millis(700));

    assert_eq!(
        lock(&mut b, ob),
        Reply::Done(Status::LockNotGranted),
        "node B got the lock node A holds: A's session was dropped"
    );
    // A's session is intact.
    assert_eq!(unlock(&mut a, oa), Reply::Done(Status::Success));
    assert_eq!(lock(&mut b, ob), Reply::Done(Status::Success));
}

/// A captured unlock of node A, re-sent as is (replay) and re-sequenced as A's next frame
/// (injection). With frame MACs both are dropped; without (control) the injection unlocks.
fn inject_captured_unlock(mac: bool) -> Reply {
    let (_server, server) = spawn_server(mac);
    let sniff = Sniffer::new();
    let mut a = node(server, "node-a", mac);
    let mut b = node(server, "node-b", mac);
    let (a_addr, s_addr) = (node_addr(&a), v4(server));
    let oa = open(&mut a);
    let ob = open(&mut b);
    sniff.take(a_addr, s_addr);
    assert_eq!(lock(&mut a, oa), Reply::Done(Status::Success));
    sniff.take(a_addr, s_addr);
    assert_eq!(unlock(&mut a, oa), Reply::Done(Status::Success));
    let unlock_dgram = sniff
        .take(a_addr, s_addr)
        .into_iter()
        .find(|d| d[3] == KIND_DATA)
        .expect("the unlock was captured");
    assert_eq!(lock(&mut a, oa), Reply::Done(Status::Success));
    settle(&mut a, Duration::from_millis(20));
    let seen = sniff.take(a_addr, s_addr);
    let next_seq = seen
        .iter()
        .filter(|d| d[3] == KIND_DATA)
        .map(|d| u64_at(d, 20) + 1)
        .max()
        .expect("A's lock was captured");
    let next_pn = seen.iter().map(|d| u64_at(d, 12)).max().unwrap_or(0) + 1000;

    // Replay as captured.
    spoof(a_addr, s_addr, &unlock_dgram);
    // Injection: A's next sequence number, a fresh packet number.
    let mut injected = unlock_dgram.clone();
    injected[12..20].copy_from_slice(&next_pn.to_le_bytes());
    injected[20..28].copy_from_slice(&next_seq.to_le_bytes());
    spoof(a_addr, s_addr, &injected);
    settle(&mut a, Duration::from_millis(100));
    lock(&mut b, ob)
}

#[test]
fn injected_or_replayed_unlock_is_rejected() {
    require_root!();
    assert_eq!(
        inject_captured_unlock(true),
        Reply::Done(Status::LockNotGranted),
        "an injected unlock released node A's lock"
    );
}

/// Control for the test above: without frame MACs (the benchmark's insecure baseline) the very
/// same injection succeeds, so the test above fails without the MAC.
#[test]
fn without_frame_macs_the_injection_succeeds() {
    require_root!();
    assert_eq!(
        inject_captured_unlock(false),
        Reply::Done(Status::Success),
        "control: the injected unlock should have worked without MACs"
    );
}
