//! Public addresses (CTDB's public IP failover): service addresses that move between the
//! nodes, each held by one healthy node, taken over when its node dies, and the dead node's
//! clients reset at once with tickle ACKs.
//!
//! **Assignment** (every node computes the same from the node states the witness heartbeats
//! give it, [`assign`]): address i (config order) belongs to its home node, `[witness] nodes`
//! entry `i mod N`, while that node is healthy (up: not draining, not dead). The addresses of
//! unhealthy homes go, in config order, each to the healthy node holding the fewest so far
//! (ties: the first in `nodes`). So only a failed node's addresses move, and they spread evenly.
//! A node that comes back gets its home addresses back (automatic failback: the assignment is
//! a function of the healthy set only, so it never depends on history the nodes could
//! disagree on; the clients of a moved-back address are reset like those of a takeover).
//!
//! **Holding** is what a node's heartbeats say (`claims`). A node releases an address (deletes
//! it from its interface, then its next heartbeat, sent at once, drops the claim) as soon as
//! the assignment is no longer its own: at once on a drain, on a peer's return. It takes an
//! address assigned to it only when no other node claims it, except a node that is dead and
//! *fenced*: silent for `[witness] dead_after_ms + [public_addresses] fence_ms` (`fence_ms`
//! at least lockmgrd's liveness lease), and lockmgrd, asked through this node's session,
//! confirms it holds no session for it (`[[witness.nodes]] lockmgr_node`, default its name).
//! Then whatever it was granted is gone and (with node fencing) it can grant nothing for those
//! clients. A node only the heartbeats cannot reach but lockmgrd still hears keeps serving and
//! keeps its addresses: taking them would put each on two nodes. A node
//! takes nothing during its first `dead_after_ms` (it has not yet heard the others' claims).
//! A planned move (drain) therefore releases before anyone takes, with no fence wait.
//!
//! **Taking** an address: `ip addr add` on the configured interface, a gratuitous ARP request
//! and reply (so neighbours forget the old node's MAC; for an IPv6 address an unsolicited
//! Neighbor Advertisement to all nodes with the Override flag, RFC 4861 7.2.6, the address
//! added `nodad`: the fence already makes it this node's alone, and a tentative address could
//! neither send the tickles nor accept the clients' reconnects), and a tickle ACK for every connection
//! the previous holder last published for that address: a TCP ACK with sequence and
//! acknowledgment numbers 0 from public-ip:port to the client. It is outside the client's
//! window, so the client answers with an ACK carrying its real numbers; that reaches this node
//! (the address is here now), which has no such connection and resets it; the client sees
//! ECONNRESET and reconnects to the same address, now served here. The ARP and the tickles are
//! sent three times a second apart (a lost datagram would otherwise leave a client hanging).
//!
//! **The connection list** (CTDB's tickle list): every scan period (`heartbeat_ms`) a node
//! reads its established TCP connections whose local address is one it holds from the kernel
//! (`/proc/net/tcp` and `/proc/net/tcp6` of its network namespace: every port, SMB and witness alike, including
//! connections not yet accepted, without a hook in the I/O workers) and publishes them to its
//! peers on the heartbeat channel, bounded and signed (`peers`). Each node keeps, per address,
//! the last list published for it and by whom; it stays after its publisher releases the
//! address or dies, for the next holder. Connections made in the last scan period before a
//! node dies are not tickled (their clients wait for TCP's own timeouts).
//!
//! Why `ip` (iproute2) through `std::process::Command` rather than netlink: an address changes
//! only on a takeover or release, on this manager's thread, never on the I/O path; `ip` is
//! what an administrator uses to check the result, and a process start (a few milliseconds)
//! is small beside the fence wait. The ARP and the tickles, sent many at a time, use raw
//! sockets (`rawnet`).
//!
//! **Releasing** an address ends this node's RPC (witness and endpoint mapper) connections
//! made to it first, while the address is still here, so their clients see the connection
//! end at once and register with the witness of the new holder (as Samba's rpcd_witness does
//! on CTDB's release; see `WitnessState::end_rpc_on_public`), then deletes it. A connection
//! that races the release is refused. Its SMB connections to the address are shut down at the
//! same moment (`Shared::end_connections_to`), as Samba's smbd ends its connections to an
//! address CTDB releases: their clients reconnect, through the address, to its new holder,
//! and their durable handles, let go here as on any disconnect, can be reclaimed there. Left
//! open, such a connection would hold its opens, leases and locks on this node until TCP gave
//! up (minutes: nothing it sends can arrive once the address is gone), and the client's
//! reclaim on the new holder would meet its own old handle.
//!
//! **A node without a lock manager lease** (cut off from lockmgrd: `NodeStatus::Isolated`)
//! is not healthy: it releases its addresses at once and takes none, even when it sees every
//! other node dead (it may be the one cut off). lockmgrd has fenced it, so it can serve nothing;
//! an address it kept would hold its clients on a node that cannot answer, and one it took
//! would be held twice. Its peers take its addresses as they take a drained node's, without the
//! fence wait, once its heartbeat drops the claim. If its peers cannot hear it either, they
//! take them after the fence wait as from a dead node.
//!
//! IPv4 and IPv6 (tickles over IPv6 carry the TCP checksum over the IPv6 pseudo-header, RFC
//! 8200 8.1). SMB Direct connections cannot be tickled (their clients learn through the
//! witness or the RDMA CM disconnect).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{PublicAddress, PublicAddressesConfig};
use crate::locking::NodeSession;

use super::{rawnet, NodeStatus, NodeView, TcpConn, WitnessState};

/// Times the gratuitous ARP and the tickles are sent, [`ANNOUNCE_INTERVAL`] apart.
const ANNOUNCE_ROUNDS: u8 = 3;
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// After a failed `ip addr add` the address is tried again this much later.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which node (index into `[witness] nodes`) serves each of `addresses` addresses, given which
/// nodes are healthy; `None` when none is.
pub fn assign(addresses: usize, healthy: &[bool]) -> Vec<Option<usize>> {
    let n = healthy.len();
    let mut load = vec![0usize; n];
    let mut out = vec![None; addresses];
    if n == 0 {
        return out;
    }
    let mut orphans = Vec::new();
    for (i, slot) in out.iter_mut().enumerate() {
        let home = i % n;
        if healthy[home] {
            *slot = Some(home);
            load[home] += 1;
        } else {
            orphans.push(i);
        }
    }
    for i in orphans {
        let best = (0..n).filter(|&j| healthy[j]).min_by_key(|&j| (load[j], j));
        if let Some(j) = best {
            out[i] = Some(j);
            load[j] += 1;
        }
    }
    out
}

/// What this node should do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Addresses (indices) to delete from this node.
    pub release: Vec<usize>,
    /// Addresses to add to this node.
    pub take: Vec<usize>,
}

/// The rules of the module documentation: `views` of every node (`local` is this one),
/// `held` what this node holds, `fenced` how long a node must be silent before its claims
/// stop counting, `settled` whether this node has run long enough to know the others' claims,
/// `gone(j)` whether the lock manager confirms that node j holds no session any more (asked
/// only of dead nodes silent for `fenced`, before their claims are set aside).
pub fn decide(
    addresses: usize,
    views: &[NodeView],
    local: usize,
    held: u64,
    fenced: Duration,
    settled: bool,
    gone: &mut dyn FnMut(usize) -> bool,
) -> Decision {
    let healthy: Vec<bool> = views.iter().map(|v| v.status == NodeStatus::Up).collect();
    let assignment = assign(addresses, &healthy);
    let mut d = Decision::default();
    for (i, owner) in assignment.iter().enumerate() {
        let bit = 1u64 << i;
        let mine = *owner == Some(local);
        if held & bit != 0 && !mine {
            d.release.push(i);
        } else if held & bit == 0 && mine && settled {
            let claimed_elsewhere = views.iter().enumerate().any(|(j, v)| {
                j != local
                    && v.claims & bit != 0
                    && !(v.status == NodeStatus::Dead && v.silent_for >= fenced && gone(j))
            });
            if !claimed_elsewhere {
                d.take.push(i);
            }
        }
    }
    d
}

/// A gratuitous ARP request and reply announcing that `ip` is at `mac` (bodies for
/// [`rawnet::broadcast_arp`]). Both: some hosts update their caches on one kind only.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [[u8; 28]; 2] {
    let packet = |op: u16, target_mac: [u8; 6]| {
        let mut p = [0u8; 28];
        p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        p[4] = 6;
        p[5] = 4;
        p[6..8].copy_from_slice(&op.to_be_bytes());
        p[8..14].copy_from_slice(&mac);
        p[14..18].copy_from_slice(&ip.octets());
        p[18..24].copy_from_slice(&target_mac);
        p[24..28].copy_from_slice(&ip.octets());
        p
    };
    [packet(1, [0; 6]), packet(2, [0xff; 6])]
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A tickle ACK: an IPv4 packet with a TCP ACK from `from` (the public address and port)
/// to `to` (the client), sequence and acknowledgment numbers 0 (out of the client's window).
pub fn tickle_packet(from: SocketAddrV4, to: SocketAddrV4) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45; // IPv4, 20-byte header
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    p[8] = 64; // TTL
    p[9] = 6; // TCP
    p[12..16].copy_from_slice(&from.ip().octets());
    p[16..20].copy_from_slice(&to.ip().octets());
    let ip_sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp = &mut p[20..];
    tcp[0..2].copy_from_slice(&from.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&to.port().to_be_bytes());
    // seq and ack stay 0
    tcp[12] = 5 << 4; // 20-byte header
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&1234u16.to_be_bytes()); // window
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&from.ip().octets());
    pseudo[4..8].copy_from_slice(&to.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_sum = checksum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// A tickle ACK over IPv6: a 40-byte IPv6 header (hop limit 64, next header TCP) and the same
/// TCP ACK as [`tickle_packet`], its checksum over the IPv6 pseudo-header (RFC 8200 8.1:
/// source, destination, upper-layer length as 32 bits, three zero bytes, next header).
pub fn tickle_packet_v6(from: SocketAddrV6, to: SocketAddrV6) -> [u8; 60] {
    let mut p = [0u8; 60];
    p[0] = 0x60; // version 6, traffic class and flow label 0
    p[4..6].copy_from_slice(&20u16.to_be_bytes()); // payload length
    p[6] = 6; // TCP
    p[7] = 64; // hop limit
    p[8..24].copy_from_slice(&from.ip().octets());
    p[24..40].copy_from_slice(&to.ip().octets());
    let tcp = &mut p[40..];
    tcp[0..2].copy_from_slice(&from.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&to.port().to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&1234u16.to_be_bytes());
    let sum = checksum(&[&pseudo_v6(from.ip(), to.ip(), 6, 20), &p[40..]]);
    p[56..58].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The IPv6 pseudo-header of RFC 8200 8.1.
fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next: u8, len: u32) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0..16].copy_from_slice(&src.octets());
    h[16..32].copy_from_slice(&dst.octets());
    h[32..36].copy_from_slice(&len.to_be_bytes());
    h[39] = next;
    h
}

/// ff02::1, the all-nodes multicast address, and its Ethernet address (RFC 2464 7).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// An unsolicited Neighbor Advertisement (RFC 4861 4.4, 7.2.6) announcing that `ip` is at
/// `mac`: a whole IPv6 packet from `ip` to ff02::1 with hop limit 255 (receivers drop any
/// other, 7.1.2), ICMPv6 type 136 with the Override flag (not Solicited, not Router), the
/// target `ip` and a Target Link-Layer Address option; the ICMPv6 checksum over the
/// pseudo-header (RFC 4443 2.3).
pub fn neighbor_advertisement(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 72] {
    let mut p = [0u8; 72];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&32u16.to_be_bytes());
    p[6] = 58; // ICMPv6
    p[7] = 255;
    p[8..24].copy_from_slice(&ip.octets());
    p[24..40].copy_from_slice(&ALL_NODES.octets());
    let icmp = &mut p[40..];
    icmp[0] = 136; // Neighbor Advertisement
    icmp[4] = 0x20; // Override
    icmp[8..24].copy_from_slice(&ip.octets());
    icmp[24] = 2; // Target Link-Layer Address
    icmp[25] = 1; // in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    let sum = checksum(&[&pseudo_v6(&ip, &ALL_NODES, 58, 32), &p[40..]]);
    p[42..44].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The tickle for `c`, of its family.
pub fn tickle(c: &TcpConn) -> Option<Vec<u8>> {
    match (c.public, c.client) {
        (SocketAddr::V4(from), SocketAddr::V4(to)) => Some(tickle_packet(from, to).to_vec()),
        (SocketAddr::V6(from), SocketAddr::V6(to)) => Some(tickle_packet_v6(from, to).to_vec()),
        _ => None,
    }
}

/// An address:port of `/proc/net/tcp` (8 hex digits) or `/proc/net/tcp6` (32): the kernel
/// prints each 32-bit word of the address as the u32 it keeps in network order, read
/// natively. An IPv4-mapped IPv6 address (an IPv4 client of a dual-stack socket) is given as
/// the IPv4 address it maps.
fn hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !ip.is_ascii() {
        return None;
    }
    let word = |k: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(8 * k..8 * k + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for k in 0..4 {
                b[4 * k..4 * k + 4].copy_from_slice(&word(k)?);
            }
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The established connections of `/proc/net/tcp` or `/proc/net/tcp6` text whose local
/// address is in `held`.
pub fn established_to(proc_net_tcp: &str, held: &[IpAddr]) -> Vec<TcpConn> {
    const ESTABLISHED: &str = "01";
    let mut out: Vec<TcpConn> = proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, local, remote, state) = (f.next()?, f.next()?, f.next()?, f.next()?);
            if state != ESTABLISHED {
                return None;
            }
            let public = hex_addr(local)?;
            held.contains(&public.ip()).then_some(())?;
            let client = hex_addr(remote)?;
            (client.is_ipv4() == public.is_ipv4()).then_some(TcpConn { client, public })
        })
        .collect();
    out.sort();
    out
}

/// `ADDRESS holders assigned-to` lines (the control socket's `ips`; holders: the nodes not
/// dead that claim it, `-` for none).
pub fn ips_text(state: &WitnessState) -> String {
    let views = state.node_views(Instant::now());
    let names = state.node_names();
    let healthy: Vec<bool> = views.iter().map(|v| v.status == NodeStatus::Up).collect();
    let assignment = assign(state.public_addresses().len(), &healthy);
    let mut s = String::new();
    for (i, addr) in state.public_addresses().iter().enumerate() {
        let holders: Vec<&str> = views
            .iter()
            .zip(&names)
            // A dead node's last word is not holding: its address is being taken over.
            .filter(|(v, _)| v.claims & (1 << i) != 0 && v.status != NodeStatus::Dead)
            .map(|(_, n)| n.as_str())
            .collect();
        let holder = if holders.is_empty() {
            "-".to_string()
        } else {
            holders.join(",")
        };
        let assigned = assignment[i].map_or("-", |j| names[j].as_str());
        s.push_str(&format!("{addr} {holder} {assigned}\n"));
    }
    s
}

/// `ip addr add|del ADDRESS/PREFIX dev IFACE`; an address already there (add) or already
/// gone (del) is success.
fn ip_addr(op: &str, a: &PublicAddress) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    cmd.args(["addr", op, &a.address.to_string(), "dev", &a.interface]);
    if op == "add" && a.address.addr.is_ipv6() {
        // Usable at once (see the module documentation).
        cmd.arg("nodad");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let harmless = match op {
        "add" => err.contains("File exists"),
        _ => err.contains("Cannot assign requested address"),
    };
    if harmless {
        Ok(())
    } else {
        Err(err)
    }
}

/// The ARP and tickle rounds still to send for one taken address.
struct Announce {
    index: usize,
    conns: Vec<TcpConn>,
    rounds_left: u8,
    next: Instant,
}

/// The public address manager of this node: a thread deciding, adding, releasing, announcing
/// and scanning (see the module documentation).
/// What the lock manager says of a node, by its `[lockmgr] node_name`.
pub type NodeSessionCheck = Box<dyn Fn(&str) -> NodeSession + Send>;

/// This node's SMB connections, as the release of a public address deals with them.
pub trait SmbConnections: Send {
    /// `ip` is being released: end the connections made to it, and any made to it until
    /// [`SmbConnections::released`]. Returns how many were ended now.
    fn end_to(&self, ip: IpAddr) -> usize;
    /// `ip` is gone from this node.
    fn released(&self, ip: IpAddr);
}

pub struct Manager {
    state: Arc<WitnessState>,
    cfg: PublicAddressesConfig,
    dead_after: Duration,
    period: Duration,
    held: u64,
    retry_at: Vec<Option<Instant>>,
    announces: Vec<Announce>,
    /// Dead nodes whose addresses wait because lockmgrd still holds their session (bit per
    /// node: logged once per episode).
    held_back: u64,
    /// Ends the SMB connections to an address being released ([`Manager::spawn`]).
    smb: Option<Box<dyn SmbConnections>>,
}

impl Manager {
    pub fn new(state: Arc<WitnessState>, cfg: PublicAddressesConfig) -> Manager {
        let wc = state.config();
        let dead_after = Duration::from_millis(wc.dead_after_ms);
        let period = Duration::from_millis(wc.heartbeat_ms);
        let n = cfg.addresses.len();
        Manager {
            state,
            cfg,
            dead_after,
            period,
            held: 0,
            retry_at: vec![None; n],
            announces: Vec::new(),
            held_back: 0,
            smb: None,
        }
    }

    /// Start the manager's thread; it releases every address it holds and returns when
    /// `shutdown` is set (join it so the addresses are gone before the process exits).
    /// `node_session` asks the lock manager about a dead node before its addresses are taken;
    /// `smb` ends this node's SMB connections to an address it releases.
    pub fn spawn(
        mut self,
        shutdown: Arc<AtomicBool>,
        node_session: NodeSessionCheck,
        smb: Box<dyn SmbConnections>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        self.smb = Some(smb);
        std::thread::Builder::new()
            .name("smbd-public-ip".into())
            .spawn(move || self.run(shutdown, node_session))
    }

    fn run(mut self, shutdown: Arc<AtomicBool>, node_session: NodeSessionCheck) {
        // Left over from an earlier run of this node (a crash keeps the kernel's addresses):
        // this node holds nothing until the rules give it something.
        for a in &self.cfg.addresses {
            if let Err(e) = ip_addr("del", a) {
                tracing::warn!(address = %a.address, %e, "public address: removing a stale copy");
            }
        }
        let started = Instant::now();
        let tick = self.period.min(Duration::from_millis(100));
        let mut next_scan = started;
        while !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.step(
                now,
                now.duration_since(started) >= self.dead_after,
                &node_session,
            );
            self.announce(now);
            if now >= next_scan {
                self.scan();
                next_scan = now + self.period;
            }
            std::thread::sleep(tick);
        }
        for i in 0..self.cfg.addresses.len() {
            if self.held & (1 << i) != 0 {
                self.release(i);
            }
        }
    }

    fn step(&mut self, now: Instant, settled: bool, node_session: &NodeSessionCheck) {
        let views = self.state.node_views(now);
        let fenced = self.dead_after + Duration::from_millis(self.cfg.fence_ms);
        for (j, v) in views.iter().enumerate() {
            if v.status != NodeStatus::Dead {
                self.held_back &= !(1 << j);
            }
        }
        // Asked at most once per node and step, only for a dead node whose claim is in the way.
        let mut answers: Vec<Option<bool>> = vec![None; views.len()];
        let mut held_back = self.held_back;
        let state = &self.state;
        let mut gone = |j: usize| {
            *answers[j].get_or_insert_with(|| {
                let name = state.config().nodes[j].lockmgr_name();
                let answer = node_session(name);
                let gone = matches!(answer, NodeSession::Gone | NodeSession::NoLockManager);
                if !gone && held_back & (1 << j) == 0 {
                    held_back |= 1 << j;
                    tracing::warn!(
                        node = name,
                        lockmgrd = ?answer,
                        "public address: node silent but not fenced by the lock manager; not taking its addresses"
                    );
                }
                gone
            })
        };
        let d = decide(
            self.cfg.addresses.len(),
            &views,
            self.state.local_index(),
            self.held,
            fenced,
            settled,
            &mut gone,
        );
        self.held_back = held_back;
        for i in d.release {
            self.release(i);
        }
        for i in d.take {
            if self.retry_at[i].is_some_and(|t| now < t) {
                continue;
            }
            self.take(i, now);
        }
    }

    fn release(&mut self, i: usize) {
        let a = &self.cfg.addresses[i];
        // While the address is still here, so that their ends reach the clients.
        let witness_conns = self.state.end_rpc_on_public(i);
        let smb_conns = self
            .smb
            .as_ref()
            .map_or(0, |smb| smb.end_to(a.address.addr));
        if let Err(e) = ip_addr("del", a) {
            tracing::warn!(address = %a.address, %e, "public address: release failed");
        }
        if let Some(smb) = &self.smb {
            smb.released(a.address.addr);
        }
        self.held &= !(1 << i);
        self.state.set_local_claims(self.held);
        self.announces.retain(|x| x.index != i);
        tracing::info!(address = %a.address, interface = %a.interface, witness_conns, smb_conns, "public address released");
    }

    fn take(&mut self, i: usize, now: Instant) {
        let a = &self.cfg.addresses[i];
        // Before a client can reach it.
        self.state.serve_rpc_on_public(i);
        if let Err(e) = ip_addr("add", a) {
            tracing::warn!(address = %a.address, %e, "public address: take failed");
            self.state.end_rpc_on_public(i);
            self.retry_at[i] = Some(now + RETRY_AFTER);
            return;
        }
        self.retry_at[i] = None;
        self.held |= 1 << i;
        self.state.set_local_claims(self.held);
        let conns = if self.cfg.tickle {
            self.state.take_conns(i)
        } else {
            // Forget them all the same: they are not this node's to tickle later.
            let _ = self.state.take_conns(i);
            Vec::new()
        };
        tracing::info!(
            address = %a.address,
            interface = %a.interface,
            tickles = conns.len(),
            "public address taken"
        );
        self.announces.push(Announce {
            index: i,
            conns,
            rounds_left: ANNOUNCE_ROUNDS,
            next: now,
        });
        self.announce(now);
    }

    /// Send the ARP and tickle rounds that are due.
    fn announce(&mut self, now: Instant) {
        for x in self.announces.iter_mut().filter(|x| x.next <= now) {
            let a = &self.cfg.addresses[x.index];
            match rawnet::interface(&a.interface) {
                Ok((ifindex, mac)) => {
                    let sent = match a.address.addr {
                        IpAddr::V4(ip) => rawnet::broadcast_arp(ifindex, &gratuitous_arp(mac, ip)),
                        IpAddr::V6(ip) => rawnet::send_link(
                            ifindex,
                            rawnet::ETH_P_IPV6,
                            ALL_NODES_MAC,
                            &neighbor_advertisement(mac, ip),
                        ),
                    };
                    if let Err(e) = sent {
                        tracing::warn!(address = %a.address, %e, "public address: announcement (ARP / NA)");
                    }
                }
                Err(e) => tracing::warn!(interface = %a.interface, %e, "public address: interface"),
            }
            if !x.conns.is_empty() {
                match rawnet::RawIp::open(a.address.addr.is_ipv4()) {
                    Ok(sock) => {
                        for c in &x.conns {
                            let Some(packet) = tickle(c) else { continue };
                            if let Err(e) = sock.send(&packet, c.client.ip()) {
                                tracing::debug!(client = %c.client, %e, "tickle ACK");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(%e, "public address: raw socket for tickle ACKs"),
                }
            }
            x.rounds_left -= 1;
            x.next = now + ANNOUNCE_INTERVAL;
        }
        self.announces.retain(|x| x.rounds_left > 0);
    }

    /// Publish this node's connections to the addresses it holds.
    fn scan(&mut self) {
        let held: Vec<IpAddr> = self
            .cfg
            .addresses
            .iter()
            .enumerate()
            .filter(|(i, _)| self.held & (1 << i) != 0)
            .map(|(_, a)| a.address.addr)
            .collect();
        let mut conns = Vec::new();
        if !held.is_empty() {
            // IPv6 sockets (and IPv4 clients of dual-stack ones) are in tcp6; a kernel
            // without IPv6 has no such file.
            for (file, needed) in [("/proc/net/tcp", true), ("/proc/net/tcp6", false)] {
                match std::fs::read_to_string(file) {
                    Ok(text) => conns.extend(established_to(&text, &held)),
                    Err(e) if needed || e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(%e, file, "public address: reading the connections");
                        return;
                    }
                    Err(_) => {}
                }
            }
            conns.sort();
            conns.dedup();
        }
        conns.truncate(self.cfg.max_published_connections);
        self.state.set_local_conns(conns, self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(status: NodeStatus, silent_ms: u64, claims: u64) -> NodeView {
        NodeView {
            status,
            silent_for: Duration::from_millis(silent_ms),
            claims,
        }
    }

    #[test]
    fn assignment_keeps_homes_and_spreads_the_orphans() {
        assert_eq!(
            assign(6, &[true, true, true]),
            [0, 1, 2, 0, 1, 2].map(Some).to_vec()
        );
        // Node 2 down: only its addresses move, one to each survivor.
        assert_eq!(
            assign(6, &[true, true, false]),
            [0, 1, 0, 0, 1, 1].map(Some).to_vec()
        );
        assert_eq!(assign(2, &[false, false]), vec![None, None]);
        assert_eq!(assign(3, &[false, true]), [1, 1, 1].map(Some).to_vec());
    }

    /// `decide` for a cluster whose lock manager confirms every dead node fenced.
    fn decide_fenced(views: &[NodeView], local: usize, held: u64) -> Decision {
        decide(
            2,
            views,
            local,
            held,
            Duration::from_secs(10),
            true,
            &mut |_| true,
        )
    }

    /// Node 0 leaves in state `leaving` holding its home address 0: it releases at once,
    /// node 1 waits while the claim is still heard, then takes it without the fence wait.
    fn leaving_node_hands_over(leaving: NodeStatus) {
        let views = [view(leaving, 0, 0b1), view(NodeStatus::Up, 0, 0b10)];
        assert_eq!(
            decide_fenced(&views, 0, 0b1),
            Decision {
                release: vec![0],
                take: vec![]
            }
        );
        assert_eq!(decide_fenced(&views, 1, 0b10), Decision::default());
        let views = [view(leaving, 0, 0), view(NodeStatus::Up, 0, 0b10)];
        assert_eq!(decide_fenced(&views, 1, 0b10).take, vec![0]);
    }

    #[test]
    fn an_isolated_node_hands_its_addresses_over_and_takes_none() {
        // Node 0 lost its lock manager lease.
        leaving_node_hands_over(NodeStatus::Isolated);
        // Cut off from everything, it sees its peer dead: it still takes nothing.
        let views = [
            view(NodeStatus::Isolated, 0, 0),
            view(NodeStatus::Dead, 60_000, 0b10),
        ];
        assert_eq!(decide_fenced(&views, 0, 0), Decision::default());
    }

    #[test]
    fn a_dead_nodes_address_waits_for_the_fence() {
        let fenced = Duration::from_millis(2000);
        // Node 0 holds address 0 and went silent; address 0 is now assigned to node 1.
        let at = |silent| {
            let views = [
                view(NodeStatus::Dead, silent, 0b1),
                view(NodeStatus::Up, 0, 0b10),
            ];
            decide(2, &views, 1, 0b10, fenced, true, &mut |_| true)
        };
        assert_eq!(at(1500), Decision::default(), "not fenced yet");
        // Silent long enough, but the lock manager still holds its session (only the
        // heartbeats are cut): its address stays where it is.
        let views = [
            view(NodeStatus::Dead, 2000, 0b1),
            view(NodeStatus::Up, 0, 0b10),
        ];
        let mut asked = Vec::new();
        let d = decide(2, &views, 1, 0b10, fenced, true, &mut |j| {
            asked.push(j);
            false
        });
        assert_eq!(d, Decision::default());
        assert_eq!(asked, [0]);
        assert_eq!(
            at(2000),
            Decision {
                release: vec![],
                take: vec![0]
            }
        );
        // Not before this node has been up long enough to have heard the claims.
        let views = [view(NodeStatus::Dead, 5000, 0), view(NodeStatus::Up, 0, 0)];
        assert_eq!(
            decide(2, &views, 1, 0, fenced, false, &mut |_| true),
            Decision::default()
        );
    }

    #[test]
    fn a_drain_releases_first_and_the_home_node_gets_its_address_back() {
        let fenced = Duration::from_secs(10);
        leaving_node_hands_over(NodeStatus::Draining);
        // Node 0 back up: node 1 gives address 0 back; node 0 takes it after the release.
        let views = [view(NodeStatus::Up, 0, 0), view(NodeStatus::Up, 0, 0b11)];
        assert_eq!(
            decide(2, &views, 1, 0b11, fenced, true, &mut |_| true).release,
            vec![0]
        );
        assert_eq!(
            decide(2, &views, 0, 0, fenced, true, &mut |_| true),
            Decision::default()
        );
    }

    #[test]
    fn tickle_is_an_ack_with_zero_numbers_and_valid_checksums() {
        let p = tickle_packet(
            "10.0.0.100:445".parse().unwrap(),
            "10.0.0.7:51000".parse().unwrap(),
        );
        // A correct checksum makes the one's-complement sum over the covered bytes 0.
        assert_eq!(checksum(&[&p[..20]]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&[10, 0, 0, 100]);
        pseudo[4..8].copy_from_slice(&[10, 0, 0, 7]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(checksum(&[&pseudo, &p[20..]]), 0);
        assert_eq!(&p[20..24], &[0x01, 0xbd, 0xc7, 0x38]);
        assert_eq!(&p[24..32], &[0; 8], "seq and ack 0");
        assert_eq!(p[33], 0x10, "ACK only");
        let arp = gratuitous_arp([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(&arp[0][14..18], &arp[0][24..28], "sender IP = target IP");
        assert_eq!((arp[0][7], arp[1][7]), (1, 2));
    }

    #[test]
    fn proc_net_tcp_gives_established_connections_to_held_addresses() {
        // 10.0.0.100:445 <- 10.0.0.7:51000 established; a listener; another local address.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 00000000:01BD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
            1: 6400000A:01BD 0700000A:C738 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
            2: 0100000A:01BD 0800000A:C739 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n";
        let held = ["10.0.0.100".parse().unwrap()];
        assert_eq!(
            established_to(text, &held),
            vec![TcpConn {
                client: "10.0.0.7:51000".parse().unwrap(),
                public: "10.0.0.100:445".parse().unwrap(),
            }]
        );
        assert!(established_to(text, &[]).is_empty());
    }

    #[test]
    fn proc_net_tcp6_gives_ipv6_and_mapped_ipv4_connections() {
        // fd00::100:445 <- fd00::7:51000; ::ffff:10.0.0.100:445 <- ::ffff:10.0.0.7:51001 (an
        // IPv4 client of a dual-stack socket); a listener; a connection to another address.
        let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 00000000000000000000000000000000:01BD 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
            1: 000000FD000000000000000000010000:01BD 000000FD000000000000000007000000:C738 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
            2: 0000000000000000FFFF00006400000A:01BD 0000000000000000FFFF00000700000A:C739 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n\
            3: 000000FD000000000000000000020000:01BD 000000FD000000000000000007000000:C73A 01 00000000:00000000 00:00000000 00000000     0        0 4 1\n";
        let held: [IpAddr; 2] = ["fd00::100".parse().unwrap(), "10.0.0.100".parse().unwrap()];
        assert_eq!(
            established_to(text, &held),
            vec![
                TcpConn {
                    client: "10.0.0.7:51001".parse().unwrap(),
                    public: "10.0.0.100:445".parse().unwrap(),
                },
                TcpConn {
                    client: "[fd00::7]:51000".parse().unwrap(),
                    public: "[fd00::100]:445".parse().unwrap(),
                },
            ]
        );
        // Malformed lines are skipped, never a panic.
        for bad in [
            "1: 000000FD:01BD 000000FD000000000000000007000000:C738 01",
            "1: é:1 é:1 01",
            "1:",
        ] {
            assert!(established_to(&format!("header\n{bad}\n"), &held).is_empty());
        }
    }

    #[test]
    fn ipv6_tickle_and_neighbor_advertisement_bytes() {
        let from: SocketAddrV6 = "[fd00::100]:445".parse().unwrap();
        let to: SocketAddrV6 = "[fd00::7]:51000".parse().unwrap();
        let p = tickle_packet_v6(from, to);
        // Hand-checked: IPv6 header, payload 20, next header TCP, hop limit 64.
        assert_eq!(&p[0..8], &[0x60, 0, 0, 0, 0, 20, 6, 64]);
        assert_eq!(&p[8..24], &from.ip().octets());
        assert_eq!(&p[24..40], &to.ip().octets());
        // TCP: ports, seq and ack 0, 20-byte header, ACK, window 1234, checksum 0xe704
        // (computed apart over the RFC 8200 8.1 pseudo-header), urgent 0.
        assert_eq!(
            &p[40..60],
            &[
                0x01, 0xbd, 0xc7, 0x38, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x10, 0x04, 0xd2, 0xe7, 0x04,
                0, 0
            ]
        );
        assert_eq!(
            checksum(&[&pseudo_v6(from.ip(), to.ip(), 6, 20), &p[40..]]),
            0
        );

        let ip: Ipv6Addr = "fd00::100".parse().unwrap();
        let na = neighbor_advertisement([2, 0, 0, 0, 0, 1], ip);
        // IPv6 header: payload 32, ICMPv6, hop limit 255, from the address to ff02::1.
        assert_eq!(&na[0..8], &[0x60, 0, 0, 0, 0, 32, 58, 255]);
        assert_eq!(&na[8..24], &ip.octets());
        assert_eq!(
            &na[24..40],
            &[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        // Type 136, code 0, checksum 0x589d (computed apart), flags R=0 S=0 O=1, target,
        // option 2 (target link-layer address) of 1 x 8 bytes with the MAC.
        assert_eq!(&na[40..48], &[136, 0, 0x58, 0x9d, 0x20, 0, 0, 0]);
        assert_eq!(&na[48..64], &ip.octets());
        assert_eq!(&na[64..72], &[2, 1, 2, 0, 0, 0, 0, 1]);
        // Families never mix.
        let mixed = TcpConn {
            client: "[fd00::7]:1".parse().unwrap(),
            public: "10.0.0.100:445".parse().unwrap(),
        };
        assert_eq!(tickle(&mixed), None);
    }
}
