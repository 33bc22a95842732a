//! Raw-Ethernet transports (AF_PACKET, AF_XDP) between two network namespaces joined by veth.
//!
//! Every scenario is one generic function over [`Medium`], instantiated per transport by the
//! `medium_tests!` macro. Needs root; skipped with a message otherwise, a failure with CI=true.

use std::process::Stdio;
use std::time::{Duration, Instant};

use lockmgr_transport::afpacket::{PacketClient, PacketLink, PacketServer};
use lockmgr_transport::eth::{EthConfig, EthError, MacAddr};
use lockmgr_transport::netns::{self, NetnsPair, IFACE, MAC_A};
use lockmgr_transport::reliable::{FaultConfig, Link, ReliableConfig};
use lockmgr_transport::{
    ClientTransport, PeerId, ServerEvent, ServerTransport, TransportError, MAX_FRAME,
};

/// The test cluster's fabric secret (every datagram server needs one).
fn keyed() -> ReliableConfig {
    ReliableConfig {
        fabric_key: Some(lockmgr_transport::FabricKey::new([7; 32])),
        ..ReliableConfig::default()
    }
}

/// Only to avoid hanging forever when something is broken; never a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);
/// The other process of the multi-process tests.
const CHILD_EXE: &str = env!("CARGO_BIN_EXE_transport-test-child");

trait Medium {
    const NAME: &'static str;
    type S: ServerTransport + 'static;
    type C: ClientTransport + 'static;
    type L: Link<Addr = MacAddr> + 'static;
    fn link(eth: &EthConfig) -> Result<Self::L, TransportError>;
    fn server(eth: &EthConfig, cfg: ReliableConfig) -> Result<Self::S, TransportError>;
    fn client(
        eth: &EthConfig,
        server: MacAddr,
        cfg: ReliableConfig,
    ) -> Result<Self::C, TransportError>;
    fn conn_id(c: &Self::C) -> u64;
}

struct AfPacket;
impl Medium for AfPacket {
    const NAME: &'static str = "afpacket";
    type S = PacketServer;
    type C = PacketClient;
    type L = PacketLink;
    fn link(eth: &EthConfig) -> Result<Self::L, TransportError> {
        PacketLink::open(eth)
    }
    fn server(eth: &EthConfig, cfg: ReliableConfig) -> Result<Self::S, TransportError> {
        PacketServer::open(eth, cfg)
    }
    fn client(
        eth: &EthConfig,
        server: MacAddr,
        cfg: ReliableConfig,
    ) -> Result<Self::C, TransportError> {
        PacketClient::connect(eth, server, cfg)
    }
    fn conn_id(c: &Self::C) -> u64 {
        c.conn_id()
    }
}

#[cfg(feature = "afxdp")]
struct AfXdp;
#[cfg(feature = "afxdp")]
impl Medium for AfXdp {
    const NAME: &'static str = "afxdp";
    type S = lockmgr_transport::afxdp::XdpServer;
    type C = lockmgr_transport::afxdp::XdpClient;
    type L = lockmgr_transport::afxdp::XdpLink;
    fn link(eth: &EthConfig) -> Result<Self::L, TransportError> {
        lockmgr_transport::afxdp::XdpLink::open(eth, &Default::default())
    }
    fn server(eth: &EthConfig, cfg: ReliableConfig) -> Result<Self::S, TransportError> {
        lockmgr_transport::afxdp::XdpServer::open(eth, &Default::default(), cfg)
    }
    fn client(
        eth: &EthConfig,
        server: MacAddr,
        cfg: ReliableConfig,
    ) -> Result<Self::C, TransportError> {
        lockmgr_transport::afxdp::XdpClient::connect(eth, &Default::default(), server, cfg)
    }
    fn conn_id(c: &Self::C) -> u64 {
        c.conn_id()
    }
}

#[derive(Debug, PartialEq, Eq, Clone)]
enum Ev {
    Connected(PeerId),
    Frame(PeerId, Vec<u8>),
    Disconnected(PeerId),
}

fn poll_events(s: &mut dyn ServerTransport, out: &mut Vec<Ev>) -> usize {
    s.poll(&mut |ev| {
        out.push(match ev {
            ServerEvent::Connected(p) => Ev::Connected(p),
            ServerEvent::Frame(p, b) => Ev::Frame(p, b.to_vec()),
            ServerEvent::Disconnected(p) => Ev::Disconnected(p),
        })
    })
    .unwrap()
}

fn server_until(s: &mut dyn ServerTransport, out: &mut Vec<Ev>, pred: impl Fn(&[Ev]) -> bool) {
    let start = Instant::now();
    while !pred(out) {
        assert!(start.elapsed() < HANG_GUARD, "timed out; events: {out:?}");
        if poll_events(s, out) == 0 {
            s.wait(Some(Duration::from_millis(5))).unwrap();
        }
    }
}

fn eth() -> EthConfig {
    EthConfig::new(IFACE)
}

/// Server in namespace a, client in namespace b.
fn connect_pair<M: Medium>(
    pair: &NetnsPair,
    scfg: ReliableConfig,
    ccfg: ReliableConfig,
) -> (M::S, M::C, PeerId) {
    let mut server = NetnsPair::run_in(&pair.a, move || M::server(&eth(), scfg))
        .unwrap()
        .unwrap();
    let t = NetnsPair::spawn_in(&pair.b, move || M::client(&eth(), MAC_A, ccfg));
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| !e.is_empty());
    let client = t.join().unwrap().unwrap().unwrap();
    let Ev::Connected(peer) = evs[0] else {
        panic!("{evs:?}")
    };
    (server, client, peer)
}

fn frame(i: u32, len: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; len.max(4)];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

/// Both directions at once, single thread; checks exactly-once in-order delivery.
fn exchange(
    server: &mut dyn ServerTransport,
    client: &mut dyn ClientTransport,
    peer: PeerId,
    n: u32,
    max_len: usize,
) {
    let (mut sent_c, mut sent_s, mut got_s, mut got_c) = (0u32, 0u32, 0u32, 0u32);
    let len_c = |i: u32| (i as usize * 7919) % max_len;
    let len_s = |i: u32| (i as usize * 104_729) % max_len;
    let start = Instant::now();
    while got_s < n || got_c < n {
        assert!(
            start.elapsed() < HANG_GUARD,
            "stuck: sent_c={sent_c} got_s={got_s} sent_s={sent_s} got_c={got_c}"
        );
        while sent_c < n {
            match client.send(&frame(sent_c, len_c(sent_c))) {
                Ok(()) => sent_c += 1,
                Err(TransportError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        while sent_s < n {
            match server.send(peer, &frame(sent_s, len_s(sent_s))) {
                Ok(()) => sent_s += 1,
                Err(TransportError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let a = server
            .poll(&mut |ev| match ev {
                ServerEvent::Frame(p, b) => {
                    assert_eq!(p, peer);
                    assert_eq!(b, &frame(got_s, len_c(got_s))[..]);
                    got_s += 1;
                }
                other => panic!("unexpected {other:?}"),
            })
            .unwrap();
        let b = client
            .poll(&mut |b| {
                assert_eq!(b, &frame(got_c, len_s(got_c))[..]);
                got_c += 1;
            })
            .unwrap();
        if a == 0 && b == 0 {
            client.wait(Some(Duration::from_micros(200))).unwrap();
        }
    }
}

fn many_frames_both_ways<M: Medium>(pair: &NetnsPair) {
    let cfg = keyed();
    let (mut s, mut c, peer) = connect_pair::<M>(pair, cfg, cfg);
    exchange(&mut s, &mut c, peer, 5000, 1400);
}

fn large_frames<M: Medium>(pair: &NetnsPair) {
    let cfg = keyed();
    let (mut s, mut c, peer) = connect_pair::<M>(pair, cfg, cfg);
    exchange(&mut s, &mut c, peer, 300, MAX_FRAME + 1);
    let big: Vec<u8> = (0..MAX_FRAME).map(|i| (i * 31 % 256) as u8).collect();
    c.send(&big).unwrap();
    let mut evs = Vec::new();
    server_until(&mut s, &mut evs, |e| !e.is_empty());
    assert_eq!(evs, vec![Ev::Frame(peer, big)]);
    let too_big = vec![0u8; MAX_FRAME + 1];
    match c.send(&too_big) {
        Err(TransportError::FrameTooLarge { max, .. }) => assert_eq!(max, MAX_FRAME),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.send(peer, &too_big),
        Err(TransportError::FrameTooLarge { .. })
    ));
}

/// With a 1500-byte MTU, frames up to MAX_FRAME still work (fragmented), also under loss and
/// duplication; larger ones fail clearly.
fn small_mtu_fragments_large_frames<M: Medium>(pair: &NetnsPair) {
    let cfg = keyed();
    let (mut s, mut c, peer) = connect_pair::<M>(pair, cfg, cfg);
    exchange(&mut s, &mut c, peer, 300, MAX_FRAME + 1);
    match c.send(&vec![0u8; MAX_FRAME + 1]) {
        Err(TransportError::FrameTooLarge { max, .. }) => assert_eq!(max, MAX_FRAME),
        other => panic!("{other:?}"),
    }
    drop((s, c));
    let faulty = |seed| ReliableConfig {
        faults: FaultConfig {
            drop_rate: 0.1,
            dup_rate: 0.1,
            seed,
            on_send: true,
            on_recv: true,
        },
        give_up: Duration::from_secs(20),
        ..keyed()
    };
    let (mut s, mut c, peer) = connect_pair::<M>(pair, faulty(3), faulty(4));
    exchange(&mut s, &mut c, peer, 300, MAX_FRAME + 1);
}

fn lossy_exactly_once<M: Medium>(pair: &NetnsPair) {
    let faulty = |seed| ReliableConfig {
        faults: FaultConfig {
            drop_rate: 0.2,
            dup_rate: 0.2,
            seed,
            on_send: true,
            on_recv: true,
        },
        give_up: Duration::from_secs(20),
        ..keyed()
    };
    let (mut s, mut c, peer) = connect_pair::<M>(pair, faulty(1), faulty(2));
    exchange(&mut s, &mut c, peer, 2000, 1400);
}

fn close_detected<M: Medium>(pair: &NetnsPair) {
    let cfg = keyed();
    let (mut s, c, peer) = connect_pair::<M>(pair, cfg, cfg);
    drop(c); // FIN
    let mut evs = Vec::new();
    server_until(&mut s, &mut evs, |e| e.contains(&Ev::Disconnected(peer)));
    // AF_XDP: one socket per interface queue, so the first server must go first.
    drop(s);
    let (s, mut c, _) = connect_pair::<M>(pair, cfg, cfg);
    drop(s);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < HANG_GUARD);
        match c.poll(&mut |_| {}) {
            Err(TransportError::Disconnected) => break,
            Ok(_) => c.wait(Some(Duration::from_millis(5))).unwrap(),
            Err(e) => panic!("{e}"),
        }
    }
}

fn config_errors<M: Medium>(pair: &NetnsPair) {
    let cfg = keyed();
    let missing = NetnsPair::run_in(&pair.a, move || {
        M::server(&EthConfig::new("lmnosuch0"), cfg).err()
    })
    .unwrap();
    assert!(
        matches!(missing, Some(TransportError::Ethernet(EthError::NoSuchInterface(ref n))) if n == "lmnosuch0"),
        "{missing:?}"
    );
    let bad_type = NetnsPair::run_in(&pair.a, move || {
        let mut e = eth();
        e.ethertype = 0x0100;
        M::server(&e, cfg).err()
    })
    .unwrap();
    assert!(
        matches!(
            bad_type,
            Some(TransportError::Ethernet(EthError::BadEtherType(0x0100)))
        ),
        "{bad_type:?}"
    );
    assert!(matches!(
        "02:00:00:00:00".parse::<MacAddr>(),
        Err(EthError::BadMac(_))
    ));
    let down = std::process::Command::new("ip")
        .args(["-n", &pair.a, "link", "set", IFACE, "down"])
        .status()
        .unwrap();
    assert!(down.success());
    let down = NetnsPair::run_in(&pair.a, move || M::server(&eth(), cfg).err()).unwrap();
    assert!(
        matches!(
            down,
            Some(TransportError::Ethernet(EthError::InterfaceDown(_)))
        ),
        "{down:?}"
    );
}

fn client_process_killed<M: Medium>(pair: &NetnsPair) {
    let cfg = ReliableConfig {
        keepalive: Some(Duration::from_millis(20)),
        peer_timeout: Duration::from_millis(300),
        ..keyed()
    };
    let mut server = NetnsPair::run_in(&pair.a, move || M::server(&eth(), cfg))
        .unwrap()
        .unwrap();
    let mut child = NetnsPair::command_in(&pair.b, CHILD_EXE)
        .args(["eth-client", M::NAME])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| {
        e.iter()
            .any(|e| matches!(e, Ev::Frame(_, b) if b == b"child-hello"))
    });
    let Ev::Connected(peer) = evs[0] else {
        panic!("{evs:?}")
    };
    server.send(peer, b"ping").unwrap();
    server_until(&mut server, &mut evs, |e| {
        e.contains(&Ev::Frame(peer, b"ping".to_vec()))
    });
    // `ip netns exec` execs the test binary, so this pid is the client itself.
    child.kill().unwrap(); // SIGKILL: no FIN, only the liveness timeout can tell
    child.wait().unwrap();
    server_until(&mut server, &mut evs, |e| {
        e.contains(&Ev::Disconnected(peer))
    });
    assert_eq!(evs.last(), Some(&Ev::Disconnected(peer)));
    // Nothing of the killed process lingers (AF_XDP: its XDP program went with its bpf link,
    // its socket with its fds): a new client on the same interface connects.
    let t = NetnsPair::spawn_in(&pair.b, move || M::client(&eth(), MAC_A, cfg));
    let n = evs.len();
    server_until(&mut server, &mut evs, |e| e.len() > n);
    assert!(matches!(evs[n], Ev::Connected(p) if p != peer), "{evs:?}");
    t.join().unwrap().unwrap().unwrap();
}

/// A datagram of the reliability layer (wire v2) as an attacker writes it:
/// `magic | version | kind | conn_id | pn | seq | ack`, then `body`.
fn forged(kind: u8, conn_id: u64, pn: u64, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut d = vec![0x4c, 0x4d, 2, kind];
    d.extend_from_slice(&conn_id.to_le_bytes());
    d.extend_from_slice(&pn.to_le_bytes());
    d.extend_from_slice(&seq.to_le_bytes());
    d.extend_from_slice(&0u64.to_le_bytes());
    d.extend_from_slice(body);
    d
}

/// Spoofed frames on raw Ethernet (the attacker's AF_PACKET socket in the client's namespace
/// sends with the client's MAC, one in the server's namespace with the server's): a SYN and a
/// keyless CONFIRM with a new connection id, DATA and FIN with made-up tags for the live
/// connection, an RST to the client. The peer stays, nothing is delivered, and the connection
/// still works after the client's RST probe.
fn forged_frames_leave_a_peer_alone<M: Medium>(pair: &NetnsPair) {
    let cfg = keyed();
    let (mut s, mut c, peer) = connect_pair::<M>(pair, cfg, cfg);
    let conn_id = M::conn_id(&c);
    let mut as_client = NetnsPair::run_in(&pair.b, || PacketLink::open(&eth()))
        .unwrap()
        .unwrap();
    let mut as_server = NetnsPair::run_in(&pair.a, || PacketLink::open(&eth()))
        .unwrap()
        .unwrap();
    let mut hello = vec![0u8; 112];
    hello[0] = 1;
    as_client
        .send_to(&forged(1, 0xbad, 0, 0, &hello), MAC_A)
        .unwrap();
    hello[8] = 1; // some cookie time, made-up server nonce and proof
    hello[16..].fill(0x42);
    as_client
        .send_to(&forged(8, 0xbad, 0, 0, &hello), MAC_A)
        .unwrap();
    for seq in 0..4 {
        as_client
            .send_to(&forged(3, conn_id, 1000 + seq, seq, &[0x55; 40]), MAC_A)
            .unwrap();
    }
    as_client
        .send_to(&forged(6, conn_id, 2000, 0, &[0; 16]), MAC_A)
        .unwrap();
    as_server
        .send_to(&forged(7, conn_id, 0, 0, &[]), netns::MAC_B)
        .unwrap();
    // Past the client's RST probe: both sides keep polling meanwhile.
    let end = Instant::now() + Duration::from_millis(700);
    let mut evs = Vec::new();
    while Instant::now() < end {
        poll_events(&mut s, &mut evs);
        c.poll(&mut |b| panic!("client got a frame: {b:?}"))
            .unwrap();
        c.wait(Some(Duration::from_millis(2))).unwrap();
    }
    assert!(evs.is_empty(), "{evs:?}");
    let counters = s.fabric_counters().unwrap();
    assert_eq!(counters.handshakes, 1, "{counters:?}");
    assert!(counters.rejected_frames >= 5, "{counters:?}");
    assert!(counters.stale_handshakes >= 1, "{counters:?}");
    exchange(&mut s, &mut c, peer, 50, 1000);
}

macro_rules! medium_tests {
    ($modname:ident, $medium:ty) => {
        mod $modname {
            use super::*;

            fn with_pair(test: &str, mtu: usize, f: impl FnOnce(&NetnsPair)) {
                if let Some(pair) = netns::pair_or_skip(test, mtu) {
                    f(&pair);
                }
            }

            #[test]
            fn many_frames_both_ways_in_order() {
                with_pair("many_frames", 9000, many_frames_both_ways::<$medium>);
            }
            #[test]
            fn large_frames_and_too_large() {
                with_pair("large_frames", 9000, large_frames::<$medium>);
            }
            #[test]
            fn small_mtu_fragments_large_frames() {
                with_pair(
                    "small_mtu",
                    1500,
                    super::small_mtu_fragments_large_frames::<$medium>,
                );
            }
            #[test]
            fn lossy_and_duplicating_delivers_exactly_once_in_order() {
                with_pair("lossy", 9000, lossy_exactly_once::<$medium>);
            }
            #[test]
            fn close_detected_both_ways() {
                with_pair("close", 9000, close_detected::<$medium>);
            }
            #[test]
            fn typed_config_errors() {
                with_pair("config_errors", 9000, config_errors::<$medium>);
            }
            #[test]
            fn raw_link_pingpong_baseline() {
                with_pair("raw_pingpong", 9000, raw_pingpong::<$medium>);
            }
            #[test]
            fn forged_frames_are_rejected() {
                with_pair("forged", 9000, forged_frames_leave_a_peer_alone::<$medium>);
            }
            #[test]
            fn client_process_killed_disconnects() {
                with_pair("killed", 9000, client_process_killed::<$medium>);
            }
        }
    };
}

medium_tests!(afpacket, AfPacket);
#[cfg(feature = "afxdp")]
medium_tests!(afxdp, AfXdp);

#[test]
fn packet_link_needs_existing_interface_outside_netns_too() {
    let e = PacketLink::open(&EthConfig::new("lmnosuch1")).unwrap_err();
    assert!(matches!(
        e,
        TransportError::Ethernet(EthError::NoSuchInterface(_))
    ));
}

/// Several clients behind one MAC (one host): each gets its own peer, frames do not cross, and
/// a new client does not retire the others (unlike UDP, where an address is one process).
#[test]
fn afpacket_clients_sharing_a_mac_are_distinct_peers() {
    let Some(pair) = netns::pair_or_skip("shared_mac", 9000) else {
        return;
    };
    let cfg = keyed();
    let mut server = NetnsPair::run_in(&pair.a, move || AfPacket::server(&eth(), cfg))
        .unwrap()
        .unwrap();
    let mut clients = Vec::new();
    let mut evs = Vec::new();
    for i in 0..3usize {
        let t = NetnsPair::spawn_in(&pair.b, move || AfPacket::client(&eth(), MAC_A, cfg));
        server_until(&mut server, &mut evs, |e| e.len() > i);
        clients.push(t.join().unwrap().unwrap().unwrap());
    }
    let peers: Vec<PeerId> = evs
        .iter()
        .map(|e| match e {
            Ev::Connected(p) => *p,
            other => panic!("{other:?}"),
        })
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&[i as u8]).unwrap();
    }
    evs.clear();
    server_until(&mut server, &mut evs, |e| e.len() >= 3);
    let mut got: Vec<(PeerId, Vec<u8>)> = evs
        .iter()
        .map(|e| match e {
            Ev::Frame(p, b) => (*p, b.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    got.sort();
    let want: Vec<(PeerId, Vec<u8>)> = (0..3).map(|i| (peers[i], vec![i as u8])).collect();
    assert_eq!(got, want);
    for (i, p) in peers.iter().enumerate() {
        server.send(*p, &[100 + i as u8]).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        let start = Instant::now();
        while got.is_empty() {
            assert!(start.elapsed() < HANG_GUARD);
            server.poll(&mut |_| {}).unwrap();
            c.poll(&mut |b| got.push(b.to_vec())).unwrap();
        }
        assert_eq!(got, vec![vec![100 + i as u8]]);
    }
}

/// Several hosts behind a bridge, each its own AF_XDP socket; the server's AF_XDP socket sits
/// on the bridge device.
#[cfg(feature = "afxdp")]
#[test]
fn afxdp_server_on_bridge_with_several_client_hosts() {
    use lockmgr_transport::netns::{client_mac, star_or_skip, BRIDGE};
    let Some(star) = star_or_skip("afxdp_star", 3, 9000) else {
        return;
    };
    let cfg = keyed();
    let mut server = NetnsPair::run_in(&star.server, move || {
        AfXdp::server(&EthConfig::new(BRIDGE), cfg)
    })
    .unwrap()
    .unwrap();
    let mut clients = Vec::new();
    let mut evs = Vec::new();
    for (i, ns) in star.clients.iter().enumerate() {
        let t = NetnsPair::spawn_in(ns, move || AfXdp::client(&eth(), MAC_A, cfg));
        server_until(&mut server, &mut evs, |e| e.len() > i);
        clients.push(t.join().unwrap().unwrap().unwrap());
    }
    assert_ne!(client_mac(0), client_mac(1));
    let peers: Vec<PeerId> = evs
        .iter()
        .map(|e| match e {
            Ev::Connected(p) => *p,
            other => panic!("{other:?}"),
        })
        .collect();
    for (c, p) in clients.iter_mut().zip(&peers) {
        exchange(&mut server, c, *p, 200, 1000);
    }
}

fn raw_pingpong<M: Medium>(pair: &NetnsPair) {
    for len in [1, 64, 1400] {
        let echo = NetnsPair::run_in(&pair.a, || M::link(&eth()).unwrap()).unwrap();
        let client = NetnsPair::run_in(&pair.b, || M::link(&eth()).unwrap()).unwrap();
        let s = lockmgr_transport::raw::link_pingpong(echo, client, MAC_A, 100, 10, len).unwrap();
        assert_eq!(s.len(), 100);
    }
}

/// The XDP program only takes our EtherType: ARP and IPv4 on the same interface still reach
/// the kernel stack while an AF_XDP lockmgr server is attached.
#[cfg(feature = "afxdp")]
#[test]
fn afxdp_other_traffic_still_reaches_the_kernel() {
    let Some(pair) = netns::pair_or_skip("afxdp_passthrough", 1500) else {
        return;
    };
    for (ns, addr) in [(&pair.a, "10.77.0.1/24"), (&pair.b, "10.77.0.2/24")] {
        let ok = std::process::Command::new("ip")
            .args(["-n", ns, "addr", "add", addr, "dev", IFACE])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let cfg = keyed();
    let (mut server, mut client, peer) = connect_pair::<AfXdp>(&pair, cfg, cfg);
    let sock = NetnsPair::run_in(&pair.a, || {
        let s = std::net::UdpSocket::bind("10.77.0.1:0").unwrap();
        s.set_read_timeout(Some(HANG_GUARD)).unwrap();
        s
    })
    .unwrap();
    let to = sock.local_addr().unwrap();
    NetnsPair::run_in(&pair.b, move || {
        let s = std::net::UdpSocket::bind("10.77.0.2:0").unwrap();
        // Needs ARP both ways first, then the IPv4 datagram itself.
        s.send_to(b"kernel path", to).unwrap();
    })
    .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"kernel path");
    // And lockmgr traffic still flows through AF_XDP.
    exchange(&mut server, &mut client, peer, 50, 100);
}
