//! Server side: a TCP listener for set-up, one RC QP + CQ per client, one completion channel
//! shared by every CQ so a single epoll set covers all sleeping.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockmgr_transport::{PeerId, ServerEvent, ServerTransport, TransportError, Waker};

use crate::conn::{Conn, ConnStats};
use crate::sys::sock_alive;
use crate::verbs::{self, CompletionChannel, Device, DeviceInfo};
use crate::wire::{Hello, HELLO_LEN};
use crate::{check_frame_len, RdmaConfig, RdmaError, AUTH_LEN, CHANNEL};
use lockmgr_transport::fabric::{channel_proof, verify_channel_proof};
use lockmgr_transport::sys::{Epoll, EventFdWaker, Spinner, Spun};
use lockmgr_transport::FabricKey;

const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_WAKER: u64 = u64::MAX - 1;
const TOKEN_CHANNEL: u64 = u64::MAX - 2;
/// Completions handled per peer per `poll`, so one chatty peer cannot starve the rest.
const PEER_BUDGET: usize = 256;
/// Sockets (accepts, EOFs) are checked on every Nth `poll` even when nobody sleeps.
const IO_CHECK_INTERVAL: u32 = 64;

/// A side-channel connection in set-up: the client's nonce, proof and hello arrive in `buf`.
struct PendingConn {
    sock: TcpStream,
    server_nonce: [u8; AUTH_LEN],
    buf: [u8; 2 * AUTH_LEN + HELLO_LEN],
    got: usize,
    since: Instant,
}

struct ServerPeer {
    conn: Conn,
    sock: TcpStream,
    sock_dead: bool,
}

impl ServerPeer {
    fn dead(&self) -> bool {
        self.sock_dead || self.conn.is_broken()
    }
}

/// lockmgrd's RDMA transport endpoint.
pub struct RdmaServer {
    peers: HashMap<u64, ServerPeer>,
    pending: HashMap<u64, PendingConn>,
    /// Shared by every peer's CQ; each CQ holds it, so it is destroyed after the last of them.
    channel: Arc<CompletionChannel>,
    dev: Arc<Device>,
    listener: TcpListener,
    epoll: Epoll,
    waker: Arc<EventFdWaker>,
    cfg: RdmaConfig,
    key: FabricKey,
    /// Side-channel clients that failed the cluster-key proof.
    auth_failures: u64,
    next_id: u64,
    polls: u32,
    io_due: bool,
    events: Vec<(u64, u32)>,
    spinner: Spinner,
}

impl RdmaServer {
    /// Opens the RDMA device and listens for set-up connections on `addr` (TCP).
    ///
    /// Fails with [`RdmaError::NoDevice`] when the machine has no RDMA.
    pub fn bind(addr: SocketAddr, cfg: RdmaConfig) -> Result<RdmaServer, RdmaError> {
        cfg.validate()?;
        let key = cfg.fabric_key.ok_or_else(|| {
            RdmaError::Config("an RDMA server needs the fabric key (RdmaConfig::fabric_key)".into())
        })?;
        let dev = verbs::open(&cfg.device)?;
        let channel = CompletionChannel::new(dev.context())?;
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let waker = Arc::new(EventFdWaker::new()?);
        let spinner = Spinner::new(cfg.spin);
        epoll.add(listener.as_raw_fd(), TOKEN_LISTENER)?;
        epoll.add(waker.fd(), TOKEN_WAKER)?;
        epoll.add(channel.fd(), TOKEN_CHANNEL)?;
        tracing::info!(%addr, device = %dev.info().name, "RDMA server listening");
        Ok(RdmaServer {
            peers: HashMap::new(),
            pending: HashMap::new(),
            channel,
            dev,
            listener,
            epoll,
            waker,
            cfg,
            key,
            auth_failures: 0,
            next_id: 1,
            polls: 0,
            io_due: true,
            events: Vec::with_capacity(64),
            spinner,
        })
    }

    /// The TCP address clients connect to (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The device in use.
    pub fn device_info(&self) -> &DeviceInfo {
        self.dev.info()
    }

    /// Number of connected peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Side-channel clients refused for a bad cluster-key proof.
    pub fn auth_failures(&self) -> u64 {
        self.auth_failures
    }

    /// Counters of one peer's connection.
    pub fn peer_stats(&self, peer: PeerId) -> Option<ConnStats> {
        self.peers.get(&peer.0).map(|p| p.conn.stats())
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, from)) => {
                    if let Err(e) = sock.set_nonblocking(true) {
                        tracing::warn!(error = %e, "cannot configure accepted socket");
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    // The challenge. 32 bytes into a fresh socket's empty send buffer do not
                    // block; a short write means the socket is unusable.
                    let server_nonce: [u8; AUTH_LEN] = rand::random();
                    if !matches!((&sock).write(&server_nonce), Ok(AUTH_LEN)) {
                        continue;
                    }
                    if self.pending.len() >= self.cfg.max_pending {
                        // Unauthenticated connections cost bounded memory: the oldest goes.
                        let oldest = self
                            .pending
                            .iter()
                            .min_by_key(|(_, p)| p.since)
                            .map(|(&id, _)| id);
                        if let Some(p) = oldest.and_then(|id| self.pending.remove(&id)) {
                            self.epoll.del(p.sock.as_raw_fd());
                            tracing::debug!("RDMA set-up connections at the limit; oldest dropped");
                        }
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    if let Err(e) = self.epoll.add(sock.as_raw_fd(), (id << 1) | 1) {
                        tracing::warn!(error = %e, "epoll add failed");
                        continue;
                    }
                    tracing::debug!(%from, id, "RDMA set-up connection accepted");
                    self.pending.insert(
                        id,
                        PendingConn {
                            sock,
                            server_nonce,
                            buf: [0; 2 * AUTH_LEN + HELLO_LEN],
                            got: 0,
                            since: Instant::now(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    /// Reads hello bytes of a pending connection; sets the peer up once complete. Returns
    /// whether a peer connected.
    fn advance_pending(&mut self, id: u64) -> bool {
        let Some(p) = self.pending.get_mut(&id) else {
            return false;
        };
        let mut failed = false;
        loop {
            match (&p.sock).read(&mut p.buf[p.got..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    p.got += n;
                    if p.got == p.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed && p.got < p.buf.len() {
            return false;
        }
        let Some(p) = self.pending.remove(&id) else {
            return false;
        };
        self.epoll.del(p.sock.as_raw_fd());
        if failed {
            tracing::debug!(id, "RDMA set-up connection closed before hello");
            return false;
        }
        match self.setup_peer(id, p) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(id, error = %e, "RDMA peer set-up failed");
                false
            }
        }
    }

    fn setup_peer(&mut self, id: u64, p: PendingConn) -> Result<(), RdmaError> {
        let (client_nonce, rest) = p.buf.split_at(AUTH_LEN);
        let (proof, hello) = rest.split_at(AUTH_LEN);
        let mut cn = [0u8; AUTH_LEN];
        cn.copy_from_slice(client_nonce);
        // Authentication first: no queue pair, no pinned memory for a client without the key.
        if !verify_channel_proof(&self.key, false, CHANNEL, &cn, &p.server_nonce, proof) {
            self.auth_failures += 1;
            tracing::warn!(id, "RDMA side channel: bad cluster-key proof; closed");
            return Err(TransportError::AuthRejected.into());
        }
        let mut hello_bytes = [0u8; HELLO_LEN];
        hello_bytes.copy_from_slice(hello);
        let remote = Hello::decode(&hello_bytes).map_err(|e| {
            tracing::warn!(error = %e, "bad RDMA hello");
            RdmaError::Transport(TransportError::Protocol("bad RDMA hello"))
        })?;
        let mut conn = Conn::new(
            &self.dev,
            Some(&self.channel),
            self.cfg.slots,
            self.cfg.max_inline,
        )?;
        conn.connect(&remote)?;
        // Our QP is in RTS with every receive posted, so the client may send the moment it has
        // this. Our proof and hello (~80 bytes) into a socket's empty send buffer do not block.
        let mut answer = [0u8; AUTH_LEN + HELLO_LEN];
        answer[..AUTH_LEN].copy_from_slice(&channel_proof(
            &self.key,
            true,
            CHANNEL,
            &cn,
            &p.server_nonce,
        ));
        answer[AUTH_LEN..].copy_from_slice(&conn.local_hello().encode());
        match (&p.sock).write(&answer) {
            Ok(n) if n == answer.len() => {}
            Ok(_) => return Err(TransportError::Protocol("short hello write").into()),
            Err(e) => return Err(e.into()),
        }
        self.epoll.add(p.sock.as_raw_fd(), id << 1)?;
        tracing::debug!(id, remote_qpn = remote.qpn, "RDMA peer connected");
        self.peers.insert(
            id,
            ServerPeer {
                conn,
                sock: p.sock,
                sock_dead: false,
            },
        );
        Ok(())
    }

    /// Accepts, advances handshakes, notices dead sockets, drains CQ events.
    fn process_io(&mut self, f: &mut dyn FnMut(ServerEvent<'_>)) -> Result<usize, TransportError> {
        let mut n = 0;
        let mut events = std::mem::take(&mut self.events);
        let r = self.epoll.wait(&mut events, Some(Duration::ZERO));
        if let Err(e) = r {
            self.events = events;
            return Err(e.into());
        }
        for &(token, _) in &events {
            match token {
                TOKEN_LISTENER => self.accept_all(),
                TOKEN_WAKER => {}
                TOKEN_CHANNEL => self.channel.drain(),
                t if t & 1 == 1 => {
                    if self.advance_pending(t >> 1) {
                        f(ServerEvent::Connected(PeerId(t >> 1)));
                        n += 1;
                    }
                }
                t => {
                    if let Some(p) = self.peers.get_mut(&(t >> 1)) {
                        if !p.sock_dead && !sock_alive(&p.sock) {
                            tracing::debug!(peer = t >> 1, "RDMA peer's side channel closed");
                            p.sock_dead = true;
                        }
                    }
                }
            }
        }
        self.events = events;
        let limit = self.cfg.handshake_timeout;
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() > limit)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            if let Some(p) = self.pending.remove(&id) {
                self.epoll.del(p.sock.as_raw_fd());
                tracing::debug!(id, "RDMA hello timed out");
            }
        }
        Ok(n)
    }

    fn remove_peer(&mut self, id: u64) -> bool {
        match self.peers.remove(&id) {
            Some(p) => {
                self.epoll.del(p.sock.as_raw_fd());
                true
            }
            None => false,
        }
    }

    fn anything_ready(&self) -> bool {
        self.peers
            .values()
            .any(|p| p.conn.has_pending() || p.dead())
    }

    /// Polls every CQ once; true if any had completions.
    fn poll_cqs(&mut self) -> bool {
        let mut any = false;
        for p in self.peers.values_mut() {
            any |= p.conn.poll_cq() > 0;
        }
        any
    }
}

impl ServerTransport for RdmaServer {
    fn poll(&mut self, f: &mut dyn FnMut(ServerEvent<'_>)) -> Result<usize, TransportError> {
        let mut n = 0;
        self.polls = self.polls.wrapping_add(1);
        if self.io_due || self.polls & (IO_CHECK_INTERVAL - 1) == 0 {
            self.io_due = false;
            n += self.process_io(f)?;
        }
        let mut any_dead = false;
        for (&id, peer) in self.peers.iter_mut() {
            peer.conn.poll_cq();
            n += peer.conn.process(PEER_BUDGET, &mut |frame| {
                f(ServerEvent::Frame(PeerId(id), frame))
            });
            // Frames that arrived before the death are delivered first (trait contract).
            any_dead |= peer.dead() && !peer.conn.has_pending();
        }
        if any_dead {
            let dead: Vec<u64> = self
                .peers
                .iter()
                .filter(|(_, p)| p.dead() && !p.conn.has_pending())
                .map(|(&id, _)| id)
                .collect();
            for id in dead {
                self.remove_peer(id);
                tracing::debug!(peer = id, "RDMA peer disconnected");
                f(ServerEvent::Disconnected(PeerId(id)));
                n += 1;
            }
        }
        if n > 0 {
            self.spinner.busy();
        }
        Ok(n)
    }

    fn send(&mut self, peer: PeerId, frame: &[u8]) -> Result<(), TransportError> {
        check_frame_len(frame)?;
        let p = self
            .peers
            .get_mut(&peer.0)
            .ok_or(TransportError::UnknownPeer(peer))?;
        if p.dead() {
            return Err(TransportError::Disconnected);
        }
        match p.conn.send_data(frame) {
            Err(TransportError::Full) => {
                // A dead client never returns credits; make the next poll look at the sockets.
                self.io_due = true;
                Err(TransportError::Full)
            }
            r => r,
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.io_due || self.waker.take() || self.anything_ready() {
            return Ok(());
        }
        let start = Instant::now();
        let spun = self.spinner.spin(start, timeout, |i| {
            let mut completions = false;
            for p in self.peers.values_mut() {
                completions |= p.conn.poll_cq() > 0;
            }
            if completions || self.waker.take() {
                return Ok::<_, TransportError>(true);
            }
            if i % 256 == 0 {
                // Connects and deaths are not latency critical but must not wait for the
                // whole spin budget when it is long.
                if self.epoll.wait(&mut self.events, Some(Duration::ZERO))? > 0 {
                    self.io_due = true;
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        let remaining = match spun {
            Spun::Ready => return Ok(()),
            Spun::Sleep(remaining) => remaining,
        };
        // Arm every CQ, then look once more: a completion that landed between the last poll and
        // the arming would otherwise not raise an event.
        for p in self.peers.values_mut() {
            p.conn.req_notify()?;
        }
        if self.poll_cqs() {
            return Ok(());
        }
        // The waker writes its eventfd only to a thread that announced its sleep.
        if !self.waker.prepare_sleep() {
            self.waker.take();
            return Ok(());
        }
        let mut events = std::mem::take(&mut self.events);
        let r = self.epoll.wait(&mut events, remaining);
        let mut io = false;
        for &(token, _) in &events {
            match token {
                TOKEN_CHANNEL => self.channel.drain(),
                TOKEN_WAKER => {}
                _ => io = true,
            }
        }
        self.events = events;
        self.waker.finish_sleep();
        self.waker.take();
        r?;
        if io {
            self.io_due = true;
        }
        Ok(())
    }

    fn waker(&self) -> Waker {
        Waker::new(self.waker.clone())
    }

    fn close_peer(&mut self, peer: PeerId) {
        if self.remove_peer(peer.0) {
            tracing::debug!(peer = peer.0, "RDMA peer closed by server");
        }
    }
}
