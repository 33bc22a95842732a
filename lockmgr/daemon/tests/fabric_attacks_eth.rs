//! Attacks on the datagram fabric (issue 9) over raw Ethernet, checked as lock state in
//! lockmgrd: the scenarios of `support/fabric_attack.rs` (shared with the UDP variant,
//! `fabric_attacks.rs`) over AF_PACKET and AF_XDP.
//!
//! Network: a [`NetnsStar`] (lockmgrd on the bridge of the server's namespace) with node A in
//! client namespace 0, node B in 1 and the attacker in 2, i.e. on the same switch. The
//! attacker writes Ethernet frames with any source MAC (AF_PACKET, SOCK_RAW) from its port
//! (learning off there, like a switch with a static table, so a spoofed frame does not move
//! A's MAC to the attacker's port), and taps A's switch port (AF_PACKET on the bridge port in
//! the server's namespace): it sees every frame between A and lockmgrd, as someone on the path
//! would. Needs root and network namespaces (and AF_XDP for its half): SKIPPED without, a
//! failure with CI=true.
// Raw sockets to attack or watch the transport from outside: test-only unsafe.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use lockmgr_client::{ClientOptions, LockClient};
use lockmgr_engine::{Reply, Status};
use lockmgr_proto::ClusterKey;
use lockmgr_transport::afpacket::{PacketClient, PacketServer};
use lockmgr_transport::afxdp::{XdpClient, XdpServer};
use lockmgr_transport::eth::{EthConfig, MacAddr, DEFAULT_ETHERTYPE};
use lockmgr_transport::netns::{self, client_mac, NetnsPair, NetnsStar, BRIDGE, IFACE, MAC_A};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::{ClientTransport, FabricKey, ServerTransport, SpinConfig};

#[path = "support/fabric_attack.rs"]
mod fabric_attack;
mod support;

use fabric_attack::{have_root, Attacker, Dir, Injection, Nodes, PeerGauge, TIMEOUT};
use support::RunningServer;

const KEY: &[u8] = b"fabric-attack-cluster-key-000000";
/// Client namespaces of the star: node A, node B, the attacker.
const NODE_A: usize = 0;
const NODE_B: usize = 1;
const ATTACKER: usize = 2;
/// Ethernet header and the transport's fragment header (`msg_id u16 | index u8 | count u8 |
/// total u16 | len u16`), before the reliability datagram.
const ETH_HDR: usize = 14;
const FRAG_HDR: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Medium {
    AfPacket,
    AfXdp,
}

fn rcfg(mac: bool) -> ReliableConfig {
    ReliableConfig {
        // Several busy pollers on two vCPUs starve each other; sleeping keeps the test robust.
        spin: SpinConfig::never(),
        fabric_key: Some(FabricKey::new(
            ClusterKey::new(KEY).unwrap().fabric_secret(),
        )),
        insecure_no_frame_mac: !mac,
        ..ReliableConfig::default()
    }
}

/// A capability this test needs is missing: `None` (SKIPPED), or a failure with CI=true.
fn unavailable<T>(test: &str, why: String) -> Option<T> {
    let msg = format!("{test}: {why}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: required capability missing)");
    }
    eprintln!("SKIPPED {msg}");
    None
}

/// A non-blocking AF_PACKET socket bound to `iface` of the calling thread's namespace. It
/// receives every EtherType: on a bridge port only such sockets see frames at all (the bridge
/// takes them before per-protocol sockets would get them).
fn packet_socket(iface: &str) -> std::io::Result<OwnedFd> {
    fabric_attack::packet_socket(iface, libc::SOCK_RAW, libc::ETH_P_ALL as u16)
}

/// The attacker: a tap on node A's switch port and a raw socket on its own port.
struct EthAttacker {
    tap: OwnedFd,
    port: OwnedFd,
    a: MacAddr,
}

impl EthAttacker {
    /// Sends `dgram` as one unfragmented frame from `src` to `dst`.
    fn send(&mut self, src: MacAddr, dst: MacAddr, dgram: &[u8]) {
        let mut f = Vec::with_capacity(ETH_HDR + FRAG_HDR + dgram.len());
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&DEFAULT_ETHERTYPE.to_be_bytes());
        let len = (dgram.len() as u16).to_le_bytes();
        f.extend_from_slice(&[0xa5, 0x5a, 0, 1, len[0], len[1], len[0], len[1]]);
        f.extend_from_slice(dgram);
        // SAFETY: f outlives the call; the length is its own. The socket is bound to the
        // attacker's interface, so no address is needed.
        let n = unsafe { libc::send(self.port.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(n, f.len() as isize, "{}", std::io::Error::last_os_error());
    }
}

impl Attacker for EthAttacker {
    fn capture(&mut self) -> Vec<(Dir, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf outlives the call; the length is its own.
            let n =
                unsafe { libc::recv(self.tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return out;
            }
            let f = &buf[..n as usize];
            if f.len() < ETH_HDR + FRAG_HDR
                || f[12..14] != DEFAULT_ETHERTYPE.to_be_bytes()
                || f[17] != 1
            {
                continue; // fragments of large frames: lock traffic never has them
            }
            let len = usize::from(u16::from_le_bytes([f[20], f[21]]));
            let Some(dgram) = f.get(ETH_HDR + FRAG_HDR..ETH_HDR + FRAG_HDR + len) else {
                continue;
            };
            let dir = if f[0..6] == MAC_A.0 && f[6..12] == self.a.0 {
                Dir::FromA
            } else if f[0..6] == self.a.0 && f[6..12] == MAC_A.0 {
                Dir::ToA
            } else {
                continue;
            };
            out.push((dir, dgram.to_vec()));
        }
    }
    fn send_as_a(&mut self, dgram: &[u8]) {
        self.send(self.a, MAC_A, dgram);
    }
    fn send_to_a(&mut self, dgram: &[u8]) {
        self.send(MAC_A, self.a, dgram);
    }
    fn send_as_stranger(&mut self, i: u32, dgram: &[u8]) {
        let [_, _, hi, lo] = i.to_be_bytes();
        // Locally administered unicast addresses no station of the star uses.
        self.send(MacAddr([0x02, 0x66, 0x66, 0, hi, lo]), MAC_A, dgram);
    }
}

/// Everything a scenario runs on. Fields drop in order: lockmgrd stops first, the namespaces
/// go last.
struct Setup {
    _server: RunningServer,
    nodes: Nodes<Box<dyn ClientTransport>>,
    attacker: EthAttacker,
    gauge: PeerGauge,
    _star: NetnsStar,
}

fn server_transport(
    medium: Medium,
    mac: bool,
    gauge: &PeerGauge,
) -> Result<Box<dyn ServerTransport>, String> {
    let eth = EthConfig::new(BRIDGE);
    match medium {
        Medium::AfPacket => PacketServer::open(&eth, rcfg(mac))
            .map(|t| Box::new(gauge.watch(t)) as Box<dyn ServerTransport>),
        Medium::AfXdp => XdpServer::open(&eth, &Default::default(), rcfg(mac))
            .map(|t| Box::new(gauge.watch(t)) as Box<dyn ServerTransport>),
    }
    .map_err(|e| format!("{medium:?} server on {BRIDGE}: {e}"))
}

/// A node as smbd connects one: the transport without the key, `LockClient` authenticates.
fn node(medium: Medium, ns: &str, name: &str, mac: bool) -> LockClient<Box<dyn ClientTransport>> {
    let cfg = ReliableConfig {
        fabric_key: None,
        ..rcfg(mac)
    };
    let transport = NetnsPair::run_in(ns, move || -> Result<Box<dyn ClientTransport>, String> {
        let eth = EthConfig::new(IFACE);
        match medium {
            Medium::AfPacket => PacketClient::connect(&eth, MAC_A, cfg)
                .map(|t| Box::new(t) as Box<dyn ClientTransport>),
            Medium::AfXdp => XdpClient::connect(&eth, &Default::default(), MAC_A, cfg)
                .map(|t| Box::new(t) as Box<dyn ClientTransport>),
        }
        .map_err(|e| e.to_string())
    })
    .expect("client namespace")
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let options = ClientOptions {
        node_name: name.into(),
        key: ClusterKey::new(KEY).unwrap(),
        handshake_timeout: TIMEOUT,
    };
    LockClient::connect(transport, &options).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// lockmgrd on the star's bridge, nodes A and B with an open each, the attacker ready.
/// `None`: skipped (see [`unavailable`]).
fn setup(test: &str, medium: Medium, mac: bool) -> Option<Setup> {
    if !have_root(test) {
        return None;
    }
    let star = netns::star_or_skip(test, 3, 9000)?;
    // Learning off on the attacker's port: its spoofed source MACs must not pull A's or the
    // server's traffic towards it (that would only be a denial of service, not the attack).
    let port = format!("p{ATTACKER}");
    let learning = Command::new("ip")
        .args(["-n", &star.server, "link", "set", &port])
        .args(["type", "bridge_slave", "learning", "off"])
        .status()
        .expect("ip");
    assert!(learning.success(), "bridge learning off on {port}");
    let gauge = PeerGauge::default();
    let g = gauge.clone();
    let made = NetnsPair::run_in(&star.server, move || server_transport(medium, mac, &g))
        .expect("server namespace");
    let transport = match made {
        Ok(t) => t,
        Err(e) if medium == Medium::AfXdp => return unavailable(test, e),
        Err(e) => panic!("{e}"),
    };
    let server = support::spawn_server(transport, KEY);
    let tap = NetnsPair::run_in(&star.server, || packet_socket("p0"))
        .expect("server namespace")
        .expect("tap on node A's port");
    let port = NetnsPair::run_in(&star.clients[ATTACKER], || packet_socket(IFACE))
        .expect("attacker namespace")
        .expect("attacker's socket");
    let a = node(medium, &star.clients[NODE_A], "node-a", mac);
    let b = node(medium, &star.clients[NODE_B], "node-b", mac);
    Some(Setup {
        _server: server,
        nodes: Nodes::new(a, b),
        attacker: EthAttacker {
            tap,
            port,
            a: client_mac(NODE_A),
        },
        gauge,
        _star: star,
    })
}

macro_rules! attack_tests {
    ($modname:ident, $medium:expr) => {
        mod $modname {
            use super::*;

            /// The attack on raw Ethernet: a SYN (new connection id) with node A's MAC,
            /// a keyless CONFIRM for the server's answer, a FIN for A's live connection and an
            /// RST to A. A keeps its session and its lock.
            #[test]
            fn spoofed_syn_with_a_nodes_mac_does_not_drop_its_session() {
                let Some(mut s) = setup("eth_spoofed_syn", $medium, true) else {
                    return;
                };
                fabric_attack::spoofed_handshake(&mut s.nodes, &mut s.attacker);
            }

            /// One of A's real unlocks, captured on the wire, sent back as is and re-sequenced
            /// as A's next frame: with frame MACs both are dropped.
            #[test]
            fn injected_or_replayed_unlock_is_rejected() {
                for how in [Injection::Replay, Injection::Resequenced] {
                    let Some(mut s) = setup("eth_injected_unlock", $medium, true) else {
                        return;
                    };
                    fabric_attack::injected_unlock_is_refused(&mut s.nodes, &mut s.attacker, how);
                }
            }

            /// Control: without frame MACs (the benchmark's insecure baseline) the same
            /// re-sequenced unlock gets through, so the test above fails without the MAC.
            #[test]
            fn without_frame_macs_the_injection_succeeds() {
                let Some(mut s) = setup("eth_injection_control", $medium, false) else {
                    return;
                };
                assert_eq!(
                    fabric_attack::inject_captured_unlock(
                        &mut s.nodes,
                        &mut s.attacker,
                        Injection::Resequenced
                    ),
                    Reply::Done(Status::Success),
                    "control: the injected unlock should have worked without MACs"
                );
            }

            /// SYNs, keyless CONFIRMs and DATA from 2,000 MACs no station has: answered and
            /// counted, no peer state, A's lock stays.
            #[test]
            fn unauthenticated_flood_costs_no_peer_state() {
                let Some(mut s) = setup("eth_flood", $medium, true) else {
                    return;
                };
                fabric_attack::unauthenticated_flood(&mut s.nodes, &mut s.attacker, &s.gauge);
            }
        }
    };
}

attack_tests!(afpacket, Medium::AfPacket);
attack_tests!(afxdp, Medium::AfXdp);
