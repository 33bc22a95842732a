//! How the witness of each node learns the state of the others: an authenticated UDP
//! heartbeat from every node to every node, and the local control socket an administrator
//! drains the node through (`smbd witness drain`).
//!
//! A heartbeat is `"SWN1" | seq u64 | status u8 | name_len u8 | name | HMAC-SHA256` over
//! everything before the MAC, keyed with the cluster key. `seq` is the sender's wall clock in
//! milliseconds plus a counter, so it grows across restarts; a receiver keeps the highest it
//! accepted per node and drops anything not above it (a recorded "up" replayed after the node
//! died does not bring it back).

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

use super::{NodeStatus, WitnessState};

const MAGIC: &[u8; 4] = b"SWN1";
const MAC_LEN: usize = 32;
const MAX_DATAGRAM: usize = 4 + 8 + 1 + 1 + 255 + MAC_LEN;

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
        // A node never says it is dead.
        NodeStatus::Dead => 0xff,
    }
}

/// Encode a heartbeat.
pub fn encode(key: &[u8], name: &str, seq: u64, status: NodeStatus) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(255)];
    let mut d = MAGIC.to_vec();
    d.extend_from_slice(&seq.to_le_bytes());
    d.push(status_byte(status));
    d.push(name.len() as u8);
    d.extend_from_slice(name);
    let m = mac(key, &d);
    d.extend_from_slice(&m);
    d
}

/// Decode and verify a heartbeat: `(name, seq, status)`.
pub fn decode(key: &[u8], d: &[u8]) -> Option<(String, u64, NodeStatus)> {
    if d.len() < 14 + MAC_LEN || &d[..4] != MAGIC {
        return None;
    }
    let (body, tag) = d.split_at(d.len() - MAC_LEN);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    m.update(body);
    m.verify_slice(tag).ok()?;
    let seq = u64::from_le_bytes(body[4..12].try_into().ok()?);
    let status = match body[12] {
        0 => NodeStatus::Up,
        1 => NodeStatus::Draining,
        _ => return None,
    };
    let name_len = usize::from(body[13]);
    let name = body
        .get(14..14 + name_len)
        .filter(|_| body.len() == 14 + name_len)?;
    Some((String::from_utf8(name.to_vec()).ok()?, seq, status))
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

    /// Start the heartbeat and control threads.
    pub fn spawn(self, state: Arc<WitnessState>, shutdown: Arc<AtomicBool>) -> std::io::Result<()> {
        if let Some((sock, key)) = self.udp {
            let st = state.clone();
            let stop = shutdown.clone();
            std::thread::Builder::new()
                .name("smbd-witness-peers".into())
                .spawn(move || heartbeats(sock, st, key, stop))?;
        }
        if let Some(listener) = self.control {
            std::thread::Builder::new()
                .name("smbd-witness-ctl".into())
                .spawn(move || control(listener, state, shutdown))?;
        }
        Ok(())
    }
}

fn heartbeats(sock: UdpSocket, state: Arc<WitnessState>, key: Vec<u8>, shutdown: Arc<AtomicBool>) {
    let cfg = state.config().clone();
    let period = Duration::from_millis(cfg.heartbeat_ms);
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut counter = 0u64;
    let mut next_send = Instant::now();
    let mut last_status = state.local_status();
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    while !shutdown.load(Ordering::Relaxed) {
        let now = Instant::now();
        let status = state.local_status();
        // A status change (a drain) goes out at once rather than at the next period.
        if now >= next_send || status != last_status {
            counter += 1;
            let d = encode(&key, &cfg.node, base.wrapping_mul(1000) + counter, status);
            for n in cfg.nodes.iter().filter(|n| n.name != cfg.node) {
                if let Err(e) = sock.send_to(&d, n.peer) {
                    tracing::debug!(%e, peer = %n.peer, "witness heartbeat");
                }
            }
            next_send = now + period;
            last_status = status;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => match decode(&key, &buf[..n]) {
                Some((name, seq, status)) => state.heard(&name, seq, status, Instant::now()),
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
        other => format!("error: unknown command {other:?} (drain, undrain, status)\n"),
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

    #[test]
    fn heartbeat_round_trip_and_forgery() {
        let d = encode(b"0123456789abcdef", "node2", 77, NodeStatus::Draining);
        assert_eq!(
            decode(b"0123456789abcdef", &d),
            Some(("node2".into(), 77, NodeStatus::Draining))
        );
        assert_eq!(decode(b"another key 0123", &d), None);
        let mut bad = d.clone();
        bad[12] = 0;
        assert_eq!(decode(b"0123456789abcdef", &bad), None);
        assert_eq!(decode(b"0123456789abcdef", &d[..20]), None);
    }
}
