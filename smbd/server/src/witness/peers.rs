//! How the witness of each node learns the state of the others: an authenticated UDP
//! heartbeat from every node to every node, and the local control socket an administrator
//! drains the node through (`smbd witness drain`).
//!
//! A heartbeat is `"SWN2" | seq u64 | status u8 | claims u64 | name_len u8 | name |
//! HMAC-SHA256` over everything before the MAC, keyed with the cluster key. `status` is 0 up,
//! 1 draining, 2 isolated (no lock manager lease: see [`NodeStatus::Isolated`]). `claims` is the
//! set of public addresses the sender holds (bit i: `[public_addresses]` entry i). `seq` is
//! the sender's wall clock in milliseconds plus a counter, so it grows across restarts; a
//! receiver keeps the highest it accepted per node and drops anything not above it (a
//! recorded "up" replayed after the node died does not bring it back).
//!
//! With public addresses, a node also publishes its client connections to the addresses it
//! holds (what a survivor tickles after taking them), as pages of at most
//! `PAGE_ENTRY_BYTES` of connections: `"SWC2" | gen u64 | page u8 | pages u8 | claims u64 |
//! name_len u8 | name | count u8 | count x (family u8 (4 or 6), client address (4 or 16
//! bytes), client port, public address, public port; network order) | HMAC`. A
//! list goes out when it changes and again every `CONNS_RESEND_BEATS` heartbeats (a lost
//! page is made good); `gen` grows like `seq`, and a receiver takes a list only once all its
//! pages arrived and only if it is newer than the last one it took.
//!
//! A share move given on one node's control socket (`smbd witness share-move`) is forwarded
//! to the others so that every node's registrations for the share hear it: `"SWM2" | seq
//! u64 | name_len u8 | name | share_len u8 | share | count u8 (1..=32) | count x (family u8
//! (4 or 6), address (4 or 16 bytes), online u8 (0 or 1)) | HMAC`, sent three times a
//! heartbeat apart; `seq` grows like a heartbeat's and a receiver takes each once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{NodeStatus, TcpConn, WitnessState, MAX_SHARE_MOVE_TARGETS};
use crate::byte_reader::ByteReader;
use smb_rpc::witness::IpAddrInfo;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const MAGIC: &[u8; 4] = b"SWN2";
const CONNS_MAGIC: &[u8; 4] = b"SWC2";
const MOVE_MAGIC: &[u8; 4] = b"SWM2";
/// A forwarded share move goes out this many times, a heartbeat apart (a receiver takes it
/// once: the sequence).
const MOVE_SENDS: u8 = 3;
const MAC_LEN: usize = 32;
/// A connection page's header and MAC at their largest (a 255-byte name).
const PAGE_OVERHEAD: usize = 4 + 8 + 2 + 8 + 1 + 255 + 1 + MAC_LEN;
/// The connections of one page fill at most this many bytes: with the overhead a page stays
/// within 1472 bytes (a 1500-byte IPv4 packet's UDP payload), so it is never fragmented. That
/// is 89 IPv4 or 31 IPv6 connections.
const PAGE_ENTRY_BYTES: usize = 1472 - PAGE_OVERHEAD;
/// A connection list is sent again after this many heartbeats even when unchanged.
const CONNS_RESEND_BEATS: u32 = 4;
const MAX_DATAGRAM: usize = PAGE_OVERHEAD + PAGE_ENTRY_BYTES;

/// The bytes one connection takes in a page.
fn conn_len(c: &TcpConn) -> usize {
    match c.client {
        SocketAddr::V4(_) => 1 + 2 * (4 + 2),
        SocketAddr::V6(_) => 1 + 2 * (16 + 2),
    }
}

fn mac(key: &[u8], data: &[u8]) -> [u8; MAC_LEN] {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    m.update(data);
    m.finalize().into_bytes().into()
}

fn status_byte(s: NodeStatus) -> u8 {
    match s {
        NodeStatus::Up => 0,
        NodeStatus::Draining => 1,
        NodeStatus::Isolated => 2,
        // A node never says it is dead.
        NodeStatus::Dead => 0xff,
    }
}

/// A decoded heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub name: String,
    pub seq: u64,
    pub status: NodeStatus,
    pub claims: u64,
}

/// One decoded page of a connection list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnsPage {
    pub name: String,
    pub gen: u64,
    pub page: u8,
    pub pages: u8,
    /// What the sender held when it took the list: an address it held with no connection
    /// listed has none; one it did not hold keeps its last list for its next holder.
    pub claims: u64,
    pub conns: Vec<TcpConn>,
}

/// A share move forwarded by the node it was given on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMove {
    pub name: String,
    pub seq: u64,
    pub share: String,
    pub targets: Vec<IpAddrInfo>,
}

/// A verified datagram from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    Heartbeat(Heartbeat),
    Conns(ConnsPage),
    ShareMove(ShareMove),
}

/// Encode a share move (at most [`MAX_SHARE_MOVE_TARGETS`] targets are sent).
pub fn encode_share_move(
    key: &[u8],
    name: &str,
    seq: u64,
    share: &str,
    targets: &[IpAddrInfo],
) -> Vec<u8> {
    let targets = &targets[..targets.len().min(MAX_SHARE_MOVE_TARGETS)];
    let mut d = MOVE_MAGIC.to_vec();
    d.extend_from_slice(&seq.to_le_bytes());
    push_name(&mut d, name);
    push_name(&mut d, share);
    d.push(targets.len() as u8);
    for t in targets {
        match t.addr {
            IpAddr::V4(a) => {
                d.push(4);
                d.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                d.push(6);
                d.extend_from_slice(&a.octets());
            }
        }
        d.push(u8::from(t.online));
    }
    sign(key, d)
}

fn push_name(d: &mut Vec<u8>, name: &str) {
    let name = &name.as_bytes()[..name.len().min(255)];
    d.push(name.len() as u8);
    d.extend_from_slice(name);
}

/// `d` followed by its MAC under `key` (also how the fuzz target reaches the parser behind the
/// MAC).
pub fn sign(key: &[u8], mut d: Vec<u8>) -> Vec<u8> {
    let m = mac(key, &d);
    d.extend_from_slice(&m);
    d
}

/// Encode a heartbeat.
pub fn encode(key: &[u8], name: &str, seq: u64, status: NodeStatus, claims: u64) -> Vec<u8> {
    let mut d = MAGIC.to_vec();
    d.extend_from_slice(&seq.to_le_bytes());
    d.push(status_byte(status));
    d.extend_from_slice(&claims.to_le_bytes());
    push_name(&mut d, name);
    sign(key, d)
}

/// Encode connection list `gen` as its pages (one, empty, for an empty list).
pub fn encode_conns(
    key: &[u8],
    name: &str,
    gen: u64,
    claims: u64,
    conns: &[TcpConn],
) -> Vec<Vec<u8>> {
    // A connection whose ends differ in family cannot be sent (and is never listed).
    let conns: Vec<TcpConn> = conns
        .iter()
        .filter(|c| c.client.is_ipv4() == c.public.is_ipv4())
        .copied()
        .collect();
    let mut chunks: Vec<&[TcpConn]> = Vec::new();
    let mut start = 0;
    while start < conns.len() && chunks.len() < 255 {
        let mut end = start;
        let mut bytes = 0;
        while end < conns.len()
            && end - start < 255
            && bytes + conn_len(&conns[end]) <= PAGE_ENTRY_BYTES
        {
            bytes += conn_len(&conns[end]);
            end += 1;
        }
        chunks.push(&conns[start..end]);
        start = end;
    }
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let pages = chunks.len() as u8;
    chunks
        .iter()
        .enumerate()
        .map(|(page, chunk)| {
            let mut d = CONNS_MAGIC.to_vec();
            d.extend_from_slice(&gen.to_le_bytes());
            d.push(page as u8);
            d.push(pages);
            d.extend_from_slice(&claims.to_le_bytes());
            push_name(&mut d, name);
            d.push(chunk.len() as u8);
            for c in *chunk {
                d.push(if c.client.is_ipv4() { 4 } else { 6 });
                for a in [c.client, c.public] {
                    match a.ip() {
                        IpAddr::V4(ip) => d.extend_from_slice(&ip.octets()),
                        IpAddr::V6(ip) => d.extend_from_slice(&ip.octets()),
                    }
                    d.extend_from_slice(&a.port().to_be_bytes());
                }
            }
            sign(key, d)
        })
        .collect()
}

/// A socket address of `family` (4 or 6) as sent between nodes: the address bytes, then the
/// port big-endian.
fn read_addr(r: &mut ByteReader<'_>, family: u8) -> Option<SocketAddr> {
    let ip = match family {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
        _ => return None,
    };
    let port: [u8; 2] = r.array()?;
    Some(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

/// Decode and verify a datagram from a peer.
pub fn decode(key: &[u8], d: &[u8]) -> Option<PeerMessage> {
    if d.len() < 4 + MAC_LEN {
        return None;
    }
    let (body, tag) = d.split_at(d.len() - MAC_LEN);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    m.update(body);
    m.verify_slice(tag).ok()?;
    let mut r = ByteReader::new(body);
    let magic = r.take(4)?;
    let msg = if magic == MAGIC {
        let seq = r.u64()?;
        let status = match r.u8()? {
            0 => NodeStatus::Up,
            1 => NodeStatus::Draining,
            2 => NodeStatus::Isolated,
            _ => return None,
        };
        let claims = r.u64()?;
        let name = r.str_u8_len()?;
        PeerMessage::Heartbeat(Heartbeat {
            name,
            seq,
            status,
            claims,
        })
    } else if magic == CONNS_MAGIC {
        let gen = r.u64()?;
        let page = r.u8()?;
        let pages = r.u8()?;
        let claims = r.u64()?;
        let name = r.str_u8_len()?;
        let count = usize::from(r.u8()?);
        if page >= pages {
            return None;
        }
        let mut conns = Vec::with_capacity(count);
        let mut bytes = 0;
        for _ in 0..count {
            let family = r.u8()?;
            let c = TcpConn {
                client: read_addr(&mut r, family)?,
                public: read_addr(&mut r, family)?,
            };
            bytes += conn_len(&c);
            conns.push(c);
        }
        if bytes > PAGE_ENTRY_BYTES {
            return None;
        }
        PeerMessage::Conns(ConnsPage {
            name,
            gen,
            page,
            pages,
            claims,
            conns,
        })
    } else if magic == MOVE_MAGIC {
        let seq = r.u64()?;
        let name = r.str_u8_len()?;
        let share = r.str_u8_len()?;
        let count = usize::from(r.u8()?);
        if count == 0 || count > MAX_SHARE_MOVE_TARGETS {
            return None;
        }
        let mut targets = Vec::with_capacity(count);
        for _ in 0..count {
            let addr = match r.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                _ => return None,
            };
            let online = match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            targets.push(IpAddrInfo { addr, online });
        }
        PeerMessage::ShareMove(ShareMove {
            name,
            seq,
            share,
            targets,
        })
    } else {
        return None;
    };
    // Nothing may follow the fields.
    r.is_empty().then_some(msg)
}

/// The heartbeat socket (with more than one node) and the control socket, bound at start so
/// that a bind failure stops smbd and the sockets exist once smbd reports it is listening.
pub struct PeerSockets {
    udp: Option<(UdpSocket, Vec<u8>)>,
    control: Option<UnixListener>,
}

impl PeerSockets {
    pub fn bind(state: &WitnessState, key: Option<Vec<u8>>) -> std::io::Result<Self> {
        let cfg = state.config();
        let udp = match (cfg.peer_listen, key) {
            (Some(listen), Some(key)) => {
                let sock = UdpSocket::bind(listen)?;
                sock.set_read_timeout(Some(Duration::from_millis(cfg.heartbeat_ms)))?;
                Some((sock, key))
            }
            _ => None,
        };
        let control = match &cfg.control_socket {
            Some(path) => {
                // A socket file left by a previous run would make bind fail.
                let _ = std::fs::remove_file(path);
                let listener = UnixListener::bind(path)?;
                // Only root (smbd's user) may drain the node.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                listener.set_nonblocking(true)?;
                Some(listener)
            }
            None => None,
        };
        Ok(Self { udp, control })
    }

    /// Start the heartbeat and control threads. `lease_live` says whether this node holds a
    /// lock manager lease at a given time (asked every heartbeat period: a node without one
    /// is isolated, [`NodeStatus::Isolated`]).
    pub fn spawn(
        self,
        state: Arc<WitnessState>,
        shutdown: Arc<AtomicBool>,
        lease_live: LeaseCheck,
    ) -> std::io::Result<()> {
        if let Some((sock, key)) = self.udp {
            let st = state.clone();
            let stop = shutdown.clone();
            std::thread::Builder::new()
                .name("smbd-witness-peers".into())
                .spawn(move || heartbeats(sock, st, key, stop, lease_live))?;
        }
        if let Some(listener) = self.control {
            std::thread::Builder::new()
                .name("smbd-witness-ctl".into())
                .spawn(move || control(listener, state, shutdown))?;
        }
        Ok(())
    }
}

/// Whether this node holds a lock manager lease at the given time.
pub type LeaseCheck = Box<dyn Fn(Instant) -> bool + Send>;

fn heartbeats(
    sock: UdpSocket,
    state: Arc<WitnessState>,
    key: Vec<u8>,
    shutdown: Arc<AtomicBool>,
    lease_live: LeaseCheck,
) {
    let cfg = state.config().clone();
    let period = Duration::from_millis(cfg.heartbeat_ms);
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut counter = 0u64;
    let mut next_send = Instant::now();
    let mut last_sent = state.local_heartbeat();
    let mut conns_sent_gen = None;
    let mut beats_since_conns = 0u32;
    // Forwarded share moves still to be sent again, and how many more times.
    let mut moves: Vec<(Vec<u8>, u8)> = Vec::new();
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let send_all = |d: &[u8]| {
        for n in cfg.nodes.iter().filter(|n| n.name != cfg.node) {
            if let Err(e) = sock.send_to(d, n.peer) {
                tracing::debug!(%e, peer = %n.peer, "witness heartbeat");
            }
        }
    };
    while !shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        state.set_lease_live(lease_live(now));
        let (status, claims) = state.local_heartbeat();
        let gen = state.local_conns_gen();
        // A status change (a drain) or a taken / released address goes out at once rather
        // than at the next period.
        if now >= next_send || (status, claims) != last_sent {
            counter += 1;
            send_all(&encode(
                &key,
                &cfg.node,
                base.wrapping_mul(1000) + counter,
                status,
                claims,
            ));
            next_send = now + period;
            last_sent = (status, claims);
            beats_since_conns += 1;
            for (d, left) in &mut moves {
                send_all(d);
                *left -= 1;
            }
            moves.retain(|(_, left)| *left > 0);
        }
        for (share, targets) in state.take_outgoing_share_moves() {
            counter += 1;
            let d = encode_share_move(
                &key,
                &cfg.node,
                base.wrapping_mul(1000) + counter,
                &share,
                &targets,
            );
            send_all(&d);
            moves.push((d, MOVE_SENDS - 1));
        }
        if !state.public_addresses().is_empty()
            && (conns_sent_gen != Some(gen) || beats_since_conns >= CONNS_RESEND_BEATS)
        {
            let (list_gen, conns, held) = state.local_conns();
            let wire_gen = base.wrapping_mul(1000) + list_gen;
            for page in encode_conns(&key, &cfg.node, wire_gen, held, &conns) {
                send_all(&page);
            }
            conns_sent_gen = Some(list_gen);
            beats_since_conns = 0;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => match decode(&key, &buf[..n]) {
                Some(PeerMessage::Heartbeat(h)) => {
                    state.heard(&h.name, h.seq, h.status, h.claims, Instant::now())
                }
                Some(PeerMessage::Conns(p)) => {
                    state.heard_conns(&p.name, p.gen, p.page, p.pages, p.claims, &p.conns)
                }
                Some(PeerMessage::ShareMove(m)) => {
                    state.heard_share_move(&m.name, m.seq, &m.share, &m.targets)
                }
                None => tracing::debug!(%from, "witness: heartbeat refused"),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => tracing::debug!(%e, "witness heartbeat receive"),
        }
        state.check_liveness(Instant::now());
    }
}

fn control(listener: UnixListener, state: Arc<WitnessState>, shutdown: Arc<AtomicBool>) {
    while !shutdown.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => {
                tracing::warn!(%e, "witness control socket");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(e) = control_one(stream, &state) {
            tracing::debug!(%e, "witness control connection");
        }
    }
}

fn control_one(
    stream: std::os::unix::net::UnixStream,
    state: &WitnessState,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(256)
        .read_line(&mut line)?;
    let answer = match line.trim() {
        "drain" => {
            tracing::info!("witness: draining this node");
            state.set_local(NodeStatus::Draining);
            "ok\n".to_string()
        }
        "undrain" => {
            tracing::info!("witness: node back in service");
            state.set_local(NodeStatus::Up);
            "ok\n".to_string()
        }
        "status" => state.status_text(),
        "ips" => super::public_ip::ips_text(state),
        "connections" => state.conns_text(),
        other => match other.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["share-move", share, targets @ ..] => match state.share_move(share, targets) {
                Ok(told) => format!("ok {told} registrations\n"),
                Err(e) => format!("error: share-move: {e}\n"),
            },
            _ => format!(
                "error: unknown command {other:?} (drain, undrain, status, ips, connections, \
                 share-move SHARE NODE|ADDRESS...)\n"
            ),
        },
    };
    (&stream).write_all(answer.as_bytes())
}

/// Send one command to a node's control socket (`smbd witness`): its answer.
pub fn control_request(path: &Path, command: &str) -> std::io::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.write_all(format!("{command}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef";

    #[test]
    fn heartbeat_round_trip_and_forgery() {
        let d = encode(KEY, "node2", 77, NodeStatus::Draining, 0b101);
        assert_eq!(
            decode(KEY, &d),
            Some(PeerMessage::Heartbeat(Heartbeat {
                name: "node2".into(),
                seq: 77,
                status: NodeStatus::Draining,
                claims: 0b101
            }))
        );
        assert_eq!(decode(b"another key 0123", &d), None);
        let mut bad = d.clone();
        bad[12] = 0;
        assert_eq!(decode(KEY, &bad), None);
        assert_eq!(decode(KEY, &d[..20]), None);
    }

    #[test]
    fn an_ipv6_connection_on_the_wire() {
        // Hand-checked: one IPv6 connection after the page header (MAC aside).
        let c = TcpConn {
            client: "[fd00::7]:51000".parse().unwrap(),
            public: "[fd00::100]:445".parse().unwrap(),
        };
        let page = &encode_conns(KEY, "n", 1, 1, &[c])[0];
        let body = &page[..page.len() - MAC_LEN];
        let mut want = b"SWC2".to_vec();
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[1, b'n', 1, 6]);
        want.extend_from_slice(&[
            0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0xc7, 0x38,
        ]);
        want.extend_from_slice(&[
            0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x01, 0xbd,
        ]);
        assert_eq!(body, &want[..]);
        // An unknown family is refused.
        let mut bad = body.to_vec();
        bad[want.len() - 37] = 5;
        assert_eq!(decode(KEY, &sign(KEY, bad)), None);
    }

    #[test]
    fn share_moves_round_trip_and_are_refused_when_forged_or_malformed() {
        let targets = vec![
            IpAddrInfo {
                addr: "10.0.0.2".parse().unwrap(),
                online: true,
            },
            IpAddrInfo {
                addr: "fd00::2".parse().unwrap(),
                online: false,
            },
        ];
        let d = encode_share_move(KEY, "n1", 7, "data", &targets);
        assert_eq!(
            decode(KEY, &d),
            Some(PeerMessage::ShareMove(ShareMove {
                name: "n1".into(),
                seq: 7,
                share: "data".into(),
                targets: targets.clone(),
            }))
        );
        assert_eq!(decode(b"another key", &d), None);
        // No target, or an online byte other than 0 / 1: refused.
        let empty = encode_share_move(KEY, "n1", 8, "data", &[]);
        assert_eq!(decode(KEY, &empty), None);
        let mut body = d[..d.len() - MAC_LEN].to_vec();
        let last = body.len() - 1;
        body[last] = 2;
        assert_eq!(decode(KEY, &sign(KEY, body)), None);
        // The most targets still fit one unfragmented datagram.
        let many = vec![targets[1]; MAX_SHARE_MOVE_TARGETS];
        let big = encode_share_move(KEY, &"n".repeat(255), 9, &"s".repeat(255), &many);
        assert!(big.len() <= 1472, "{}", big.len());
        assert!(decode(KEY, &big).is_some());
    }

    #[test]
    fn connection_lists_are_paged_and_signed() {
        // 100 IPv4 connections (89 to a page) then 30 IPv6 ones (31 to a page).
        let mut conns: Vec<TcpConn> = (0..100u16)
            .map(|i| TcpConn {
                client: SocketAddr::new("10.0.1.7".parse().unwrap(), 40000 + i),
                public: SocketAddr::new("10.0.0.100".parse().unwrap(), 445),
            })
            .collect();
        conns.extend((0..30u16).map(|i| TcpConn {
            client: SocketAddr::new("fd00::7".parse().unwrap(), 40000 + i),
            public: SocketAddr::new("fd00::100".parse().unwrap(), 445),
        }));
        let long_name = "n".repeat(255);
        let pages = encode_conns(KEY, &long_name, 9, 1, &conns);
        assert_eq!(pages.len(), 3);
        assert!(
            pages.iter().all(|p| p.len() <= 1472),
            "one unfragmented datagram each"
        );
        let mut back = Vec::new();
        for (i, p) in pages.iter().enumerate() {
            match decode(KEY, p) {
                Some(PeerMessage::Conns(c)) => {
                    assert_eq!(
                        (c.name.as_str(), c.gen, c.page, c.pages, c.claims),
                        (long_name.as_str(), 9, i as u8, 3, 1)
                    );
                    back.extend(c.conns);
                }
                other => panic!("page {i}: {other:?}"),
            }
        }
        assert_eq!(back, conns);
        let empty = encode_conns(KEY, "n1", 10, 0, &[]);
        assert_eq!(empty.len(), 1);
        assert!(
            matches!(decode(KEY, &empty[0]), Some(PeerMessage::Conns(c)) if c.conns.is_empty() && c.pages == 1)
        );
        let mut forged = pages[0].clone();
        forged[20] ^= 1;
        assert_eq!(decode(KEY, &forged), None);
    }
}
