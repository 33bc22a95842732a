//! Attacks on the datagram fabric (issue 9 item 5) over UDP: lockmgrd in-process on loopback,
//! two nodes, and an attacker that spoofs any address (raw IPv4 socket with IP_HDRINCL) and
//! sees all loopback traffic (AF_PACKET on `lo`). The scenarios are shared with the
//! raw-Ethernet variant (`fabric_attacks_eth.rs`) in `support/fabric_attack.rs`. Needs root:
//! SKIPPED without it, a failure with CI=true.
//!
//! Every attack ends the same way: node A holds an exclusive byte-range lock, and node B's
//! conflicting lock must be refused. The injection also runs with frame MACs off (the
//! benchmark's insecure baseline) and there requires the attack to succeed: proof that it
//! really exercises what the MAC prevents.
// Raw sockets to attack or watch the transport from outside: test-only unsafe.
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use lockmgr_client::{ClientOptions, LockClient};
use lockmgr_engine::{Reply, Status};
use lockmgr_proto::ClusterKey;
use lockmgr_transport::udp::{UdpClient, UdpConfig, UdpServer};
use lockmgr_transport::{FabricKey, SpinConfig};

#[path = "support/fabric_attack.rs"]
mod fabric_attack;
mod support;

use fabric_attack::{have_root, Attacker, Dir, Injection, Nodes, PeerGauge, TIMEOUT};
use support::RunningServer;

const KEY: &[u8] = b"fabric-attack-cluster-key-000000";

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

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 only"),
    }
}

/// lockmgrd (its transport's peers counted by `gauge`), nodes A and B with an open each, and
/// an attacker on loopback.
fn setup(mac: bool, gauge: &PeerGauge) -> (RunningServer, Nodes<UdpClient>, UdpAttacker) {
    let transport = UdpServer::bind("127.0.0.1:0".parse().unwrap(), udp_config(mac)).unwrap();
    let server = transport.local_addr().unwrap();
    let running = support::spawn_server(gauge.watch(transport), KEY);
    let sniffer = Sniffer::new();
    let a = node(server, "node-a", mac);
    let b = node(server, "node-b", mac);
    let attacker = UdpAttacker {
        sniffer,
        a: node_addr(&a),
        server: v4(server),
    };
    (running, Nodes::new(a, b), attacker)
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
        let fd = fabric_attack::packet_socket("lo", libc::SOCK_DGRAM, libc::ETH_P_IP as u16)
            .unwrap_or_else(|e| panic!("packet socket on lo: {e}"));
        Sniffer(fd)
    }

    /// UDP datagrams captured so far between `a` and `b` (either way), each once: loopback
    /// shows outgoing and incoming copies, only incoming ones are kept.
    fn take(&self, a: SocketAddrV4, b: SocketAddrV4) -> Vec<(Dir, Vec<u8>)> {
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
            if udp.len() < 8 {
                continue;
            }
            let is = |src: SocketAddrV4, dst: SocketAddrV4| {
                p[12..16] == src.ip().octets()
                    && p[16..20] == dst.ip().octets()
                    && udp[0..2] == src.port().to_be_bytes()
                    && udp[2..4] == dst.port().to_be_bytes()
            };
            let dir = if is(a, b) {
                Dir::FromA
            } else if is(b, a) {
                Dir::ToA
            } else {
                continue;
            };
            out.push((dir, udp[8..].to_vec()));
        }
    }
}

/// On loopback: sees everything, writes datagrams with any source address.
struct UdpAttacker {
    sniffer: Sniffer,
    a: SocketAddrV4,
    server: SocketAddrV4,
}

impl Attacker for UdpAttacker {
    fn capture(&mut self) -> Vec<(Dir, Vec<u8>)> {
        self.sniffer.take(self.a, self.server)
    }
    fn send_as_a(&mut self, dgram: &[u8]) {
        spoof(self.a, self.server, dgram);
    }
    fn send_to_a(&mut self, dgram: &[u8]) {
        spoof(self.server, self.a, dgram);
    }
    fn send_as_stranger(&mut self, i: u32, dgram: &[u8]) {
        let [_, _, hi, lo] = i.to_be_bytes();
        // 127.1.0.0/16 is loopback too, and no node uses it.
        let src = SocketAddrV4::new(Ipv4Addr::new(127, 1, hi, lo), 40000);
        spoof(src, self.server, dgram);
    }
}

/// The attack: one spoofed SYN with a new connection id from node A's address:port
/// used to make lockmgrd drop A's session, releasing A's locks to node B. Now a SYN creates
/// nothing; neither do a CONFIRM without the key, a forged FIN or RST.
#[test]
fn spoofed_syn_from_a_nodes_address_does_not_drop_its_session() {
    if !have_root("spoofed_syn") {
        return;
    }
    let gauge = PeerGauge::default();
    let (_server, mut nodes, mut attacker) = setup(true, &gauge);
    fabric_attack::spoofed_handshake(&mut nodes, &mut attacker);
}

/// A captured unlock of node A, re-sent as is (replay) and re-sequenced as A's next frame
/// (injection): with frame MACs both are dropped.
#[test]
fn injected_or_replayed_unlock_is_rejected() {
    if !have_root("injected_unlock") {
        return;
    }
    for how in [Injection::Replay, Injection::Resequenced] {
        let gauge = PeerGauge::default();
        let (_server, mut nodes, mut attacker) = setup(true, &gauge);
        fabric_attack::injected_unlock_is_refused(&mut nodes, &mut attacker, how);
    }
}

/// Control for the test above: without frame MACs (the benchmark's insecure baseline) the very
/// same injection succeeds, so the test above fails without the MAC.
#[test]
fn without_frame_macs_the_injection_succeeds() {
    if !have_root("injection_control") {
        return;
    }
    let gauge = PeerGauge::default();
    let (_server, mut nodes, mut attacker) = setup(false, &gauge);
    assert_eq!(
        fabric_attack::inject_captured_unlock(&mut nodes, &mut attacker, Injection::Resequenced),
        Reply::Done(Status::Success),
        "control: the injected unlock should have worked without MACs"
    );
}

/// SYNs, keyless CONFIRMs and DATA from 2,000 spoofed addresses: lockmgrd answers and counts
/// them but holds no state for any, and node A's lock stays.
#[test]
fn unauthenticated_flood_costs_no_peer_state() {
    if !have_root("flood") {
        return;
    }
    let gauge = PeerGauge::default();
    let (_server, mut nodes, mut attacker) = setup(true, &gauge);
    fabric_attack::unauthenticated_flood(&mut nodes, &mut attacker, &gauge);
}
