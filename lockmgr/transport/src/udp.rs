//! Reliable, in-order, duplicate-free frames over UDP.
//!
//! One datagram carries one frame behind a 28-byte header:
//! `magic u16 | version u8 | kind u8 | conn_id u64 | seq u64 | ack u64` (little endian).
//!
//! * Handshake: the client picks a random non-zero `conn_id` and sends `SYN` until `SYNACK`.
//!   The server keys peers by (address, conn_id), so a restarted client (new random id) gets a
//!   fresh [`PeerId`] and sequence space; a `SYN` with a new id from a known address retires the
//!   old peer (it cannot come back: its process restarted).
//! * Data: per-direction sequence numbers from 0; `ack` is cumulative (next sequence number
//!   expected) and rides on every datagram. Standalone `ACK`s go out after `ack_delay` unless a
//!   data frame carried the ack first (request/response traffic then needs no extra datagrams),
//!   and immediately for duplicates and gaps.
//! * Loss: every unacknowledged frame is retransmitted after its RTO (initially `rto_initial`,
//!   doubling per retransmission up to `rto_max`); if a frame stays unacknowledged for `give_up`
//!   the peer is declared dead. Out-of-order frames within the window are buffered.
//! * Liveness: after `keepalive` of silence a side sends `PING` (answered by an immediate ACK);
//!   after `peer_timeout` of silence the peer is declared dead. `FIN` announces a close, `RST`
//!   answers traffic for an unknown connection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::sys::{self, EventFdWaker};
use crate::{
    check_frame_len, ClientTransport, PeerId, ServerEvent, ServerTransport, SpinConfig,
    TransportError, Waker, MAX_FRAME,
};

const MAGIC: u16 = 0x4d4c;
const VERSION: u8 = 1;
/// Wire header length.
pub const HDR_LEN: usize = 28;
const DGRAM_MAX: usize = HDR_LEN + MAX_FRAME;
const RECV_BUDGET: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Syn = 1,
    SynAck = 2,
    Data = 3,
    Ack = 4,
    Ping = 5,
    Fin = 6,
    Rst = 7,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Kind::Syn,
            2 => Kind::SynAck,
            3 => Kind::Data,
            4 => Kind::Ack,
            5 => Kind::Ping,
            6 => Kind::Fin,
            7 => Kind::Rst,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Header {
    kind: Kind,
    conn_id: u64,
    seq: u64,
    ack: u64,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn encode_header(h: &Header) -> [u8; HDR_LEN] {
    let mut b = [0u8; HDR_LEN];
    b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    b[2] = VERSION;
    b[3] = h.kind as u8;
    b[4..12].copy_from_slice(&h.conn_id.to_le_bytes());
    b[12..20].copy_from_slice(&h.seq.to_le_bytes());
    b[20..28].copy_from_slice(&h.ack.to_le_bytes());
    b
}

fn parse(b: &[u8]) -> Option<(Header, &[u8])> {
    if b.len() < HDR_LEN || b.len() > DGRAM_MAX {
        return None;
    }
    if u16::from_le_bytes([b[0], b[1]]) != MAGIC || b[2] != VERSION {
        return None;
    }
    let kind = Kind::from_u8(b[3])?;
    let h = Header {
        kind,
        conn_id: le_u64(&b[4..12]),
        seq: le_u64(&b[12..20]),
        ack: le_u64(&b[20..28]),
    };
    let payload = &b[HDR_LEN..];
    if kind != Kind::Data && !payload.is_empty() {
        return None;
    }
    Some((h, payload))
}

/// Test-only fault injection, applied per datagram with a seeded RNG.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultConfig {
    /// Probability a datagram is dropped.
    pub drop_rate: f64,
    /// Probability a datagram is duplicated.
    pub dup_rate: f64,
    /// RNG seed (reproducible runs).
    pub seed: u64,
    /// Apply on transmission.
    pub on_send: bool,
    /// Apply on reception.
    pub on_recv: bool,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            drop_rate: 0.0,
            dup_rate: 0.0,
            seed: 0,
            on_send: true,
            on_recv: true,
        }
    }
}

/// Configuration shared by [`UdpServer`] and [`UdpClient`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpConfig {
    /// Busy-poll budget of `wait`.
    pub spin: SpinConfig,
    /// First retransmission timeout.
    pub rto_initial: Duration,
    /// Backoff cap.
    pub rto_max: Duration,
    /// A frame unacknowledged for this long kills the connection.
    pub give_up: Duration,
    /// Delay of standalone acks (data in the other direction carries acks for free).
    pub ack_delay: Duration,
    /// Frames in flight per peer before `send` returns `Full`.
    pub window: usize,
    /// Send PING after this much silence from the peer; `None` disables liveness checking.
    pub keepalive: Option<Duration>,
    /// Declare the peer dead after this much silence (only with `keepalive`).
    pub peer_timeout: Duration,
    /// Client handshake limit.
    pub connect_timeout: Duration,
    /// Fault injection (tests).
    pub faults: FaultConfig,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            spin: SpinConfig::default(),
            rto_initial: Duration::from_millis(2),
            rto_max: Duration::from_millis(200),
            give_up: Duration::from_secs(5),
            ack_delay: Duration::from_micros(200),
            window: 256,
            keepalive: Some(Duration::from_secs(1)),
            peer_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            faults: FaultConfig::default(),
        }
    }
}

impl UdpConfig {
    fn validate(&self) -> Result<(), TransportError> {
        let rate_ok = |r: f64| (0.0..1.0).contains(&r);
        if !rate_ok(self.faults.drop_rate) || !rate_ok(self.faults.dup_rate) {
            return Err(TransportError::Config("fault rates must be in [0, 1)"));
        }
        if self.window == 0 || self.rto_initial.is_zero() || self.rto_max < self.rto_initial {
            return Err(TransportError::Config("window and RTOs must be positive"));
        }
        Ok(())
    }
}

/// Socket plus fault injection.
struct Sock {
    sock: UdpSocket,
    rng: StdRng,
    faults: FaultConfig,
}

impl Sock {
    fn new(sock: UdpSocket, faults: FaultConfig) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Sock {
            sock,
            rng: StdRng::seed_from_u64(faults.seed),
            faults,
        })
    }

    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen::<f64>() < p
    }

    /// Best effort: a full socket buffer or an ICMP error is just loss, which retransmission
    /// handles.
    fn send_to(&mut self, buf: &[u8], addr: SocketAddr) {
        let mut copies = 1;
        if self.faults.on_send {
            if self.roll(self.faults.drop_rate) {
                return;
            }
            if self.roll(self.faults.dup_rate) {
                copies = 2;
            }
        }
        for _ in 0..copies {
            if let Err(e) = self.sock.send_to(buf, addr) {
                tracing::trace!(error = %e, %addr, "udp send failed (treated as loss)");
            }
        }
    }

    /// Next datagram: `(len, from, copies)`, where copies > 1 simulates duplication on receive.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr, u8)>> {
        loop {
            match self.sock.recv_from(buf) {
                Ok((n, from)) => {
                    if self.faults.on_recv {
                        if self.roll(self.faults.drop_rate) {
                            continue;
                        }
                        if self.roll(self.faults.dup_rate) {
                            return Ok(Some((n, from, 2)));
                        }
                    }
                    return Ok(Some((n, from, 1)));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP port unreachable etc. from an earlier send: the peer may be restarting;
                // timers decide whether it is dead.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

struct Pending {
    seq: u64,
    dgram: Vec<u8>,
    sent: Instant,
    first: Instant,
    rto: Duration,
}

/// Reliability state of one connection (either side).
struct Conn {
    conn_id: u64,
    addr: SocketAddr,
    next_seq: u64,
    unacked: VecDeque<Pending>,
    expected: u64,
    ooo: BTreeMap<u64, Vec<u8>>,
    ack_due: Option<Instant>,
    last_rx: Instant,
    last_ping: Instant,
    pool: Vec<Vec<u8>>,
    dead: bool,
    stats: UdpStats,
}

/// Counters of one UDP connection (or summed over a server's live peers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Data frames sent (first transmissions).
    pub frames_sent: u64,
    /// Data frames delivered to the application.
    pub frames_delivered: u64,
    /// Retransmitted data datagrams.
    pub retransmits: u64,
    /// Duplicate data datagrams received (already delivered).
    pub duplicates: u64,
    /// Out-of-order data datagrams buffered.
    pub out_of_order: u64,
}

impl UdpStats {
    fn add(&mut self, o: &UdpStats) {
        self.frames_sent += o.frames_sent;
        self.frames_delivered += o.frames_delivered;
        self.retransmits += o.retransmits;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
    }
}

impl Conn {
    fn new(conn_id: u64, addr: SocketAddr, now: Instant) -> Self {
        Conn {
            conn_id,
            addr,
            next_seq: 0,
            unacked: VecDeque::new(),
            expected: 0,
            ooo: BTreeMap::new(),
            ack_due: None,
            last_rx: now,
            last_ping: now,
            pool: Vec::new(),
            dead: false,
            stats: UdpStats::default(),
        }
    }

    fn header(&self, kind: Kind, seq: u64) -> [u8; HDR_LEN] {
        encode_header(&Header {
            kind,
            conn_id: self.conn_id,
            seq,
            ack: self.expected,
        })
    }

    fn send_ctrl(&mut self, sock: &mut Sock, kind: Kind) {
        let h = self.header(kind, 0);
        sock.send_to(&h, self.addr);
        if kind == Kind::Ack {
            self.ack_due = None;
        }
    }

    fn send_data(
        &mut self,
        sock: &mut Sock,
        frame: &[u8],
        cfg: &UdpConfig,
        now: Instant,
    ) -> Result<(), TransportError> {
        if self.dead {
            return Err(TransportError::Disconnected);
        }
        if self.unacked.len() >= cfg.window {
            return Err(TransportError::Full);
        }
        let mut dgram = self.pool.pop().unwrap_or_default();
        dgram.clear();
        dgram.extend_from_slice(&self.header(Kind::Data, self.next_seq));
        dgram.extend_from_slice(frame);
        sock.send_to(&dgram, self.addr);
        self.ack_due = None;
        self.unacked.push_back(Pending {
            seq: self.next_seq,
            dgram,
            sent: now,
            first: now,
            rto: cfg.rto_initial,
        });
        self.next_seq += 1;
        self.stats.frames_sent += 1;
        Ok(())
    }

    fn on_ack(&mut self, ack: u64) {
        // An ack beyond what we sent is bogus; ignore it rather than corrupt our state.
        if ack > self.next_seq {
            return;
        }
        while self.unacked.front().is_some_and(|p| p.seq < ack) {
            if let Some(p) = self.unacked.pop_front() {
                self.pool.push(p.dgram);
            }
        }
    }

    /// Delivers in-order frames; returns how many.
    fn on_data(
        &mut self,
        seq: u64,
        payload: &[u8],
        cfg: &UdpConfig,
        now: Instant,
        f: &mut dyn FnMut(&[u8]),
    ) -> usize {
        if seq < self.expected {
            // Duplicate: our ack was probably lost; repeat it soon.
            self.stats.duplicates += 1;
            self.ack_due = Some(now);
            return 0;
        }
        if seq != self.expected {
            if seq - self.expected < cfg.window as u64 && !self.ooo.contains_key(&seq) {
                self.stats.out_of_order += 1;
                let mut b = self.pool.pop().unwrap_or_default();
                b.clear();
                b.extend_from_slice(payload);
                self.ooo.insert(seq, b);
            }
            // A gap: tell the sender at once where we are.
            self.ack_due = Some(now);
            return 0;
        }
        f(payload);
        self.expected += 1;
        let mut n = 1;
        while let Some(b) = self.ooo.remove(&self.expected) {
            f(&b);
            self.pool.push(b);
            self.expected += 1;
            n += 1;
        }
        // Stale entries can only be below `expected` if the peer misbehaved; drop them.
        while self
            .ooo
            .first_key_value()
            .is_some_and(|(&s, _)| s < self.expected)
        {
            self.ooo.pop_first();
        }
        self.stats.frames_delivered += n as u64;
        let due = now + cfg.ack_delay;
        self.ack_due = Some(self.ack_due.map_or(due, |d| d.min(due)));
        n
    }

    /// Retransmissions, delayed acks, keepalive; marks `dead` when the peer is gone.
    fn on_timers(&mut self, sock: &mut Sock, cfg: &UdpConfig, now: Instant) {
        if self.dead {
            return;
        }
        let ack = self.expected;
        let mut resent = false;
        for p in self.unacked.iter_mut() {
            if now < p.sent + p.rto {
                continue;
            }
            if now.duration_since(p.first) >= cfg.give_up {
                tracing::debug!(addr = %self.addr, seq = p.seq, "udp peer gave up: no ack");
                self.dead = true;
                return;
            }
            p.dgram[20..28].copy_from_slice(&ack.to_le_bytes());
            sock.send_to(&p.dgram, self.addr);
            p.sent = now;
            p.rto = (p.rto * 2).min(cfg.rto_max);
            resent = true;
            self.stats.retransmits += 1;
        }
        if resent {
            self.ack_due = None;
        }
        if self.ack_due.is_some_and(|d| d <= now) {
            self.send_ctrl(sock, Kind::Ack);
        }
        if let Some(k) = cfg.keepalive {
            if now.duration_since(self.last_rx) >= cfg.peer_timeout {
                tracing::debug!(addr = %self.addr, "udp peer timed out");
                self.dead = true;
                return;
            }
            if now.duration_since(self.last_rx) >= k && now.duration_since(self.last_ping) >= k {
                self.last_ping = now;
                self.send_ctrl(sock, Kind::Ping);
            }
        }
    }

    fn next_deadline(&self, cfg: &UdpConfig) -> Option<Instant> {
        if self.dead {
            return None;
        }
        let mut d = self.ack_due;
        let mut min = |t: Instant| d = Some(d.map_or(t, |x: Instant| x.min(t)));
        for p in &self.unacked {
            min(p.sent + p.rto);
        }
        if let Some(k) = cfg.keepalive {
            min(self.last_rx + cfg.peer_timeout);
            min((self.last_rx + k).max(self.last_ping + k));
        }
        d
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Spin phase shared by client and server `wait`: returns true when something is ready.
fn spin_recv(
    sock: &mut Sock,
    rxbuf: &mut [u8],
    pending: &mut Option<(usize, SocketAddr, u8)>,
    spin: Duration,
    start: Instant,
    timer_at: Option<Instant>,
    mut woken: impl FnMut() -> bool,
) -> Result<bool, TransportError> {
    if pending.is_some() {
        return Ok(true);
    }
    loop {
        if let Some(p) = sock.recv(rxbuf)? {
            *pending = Some(p);
            return Ok(true);
        }
        if woken() {
            return Ok(true);
        }
        let now = Instant::now();
        if timer_at.is_some_and(|t| t <= now) {
            return Ok(true);
        }
        if now.duration_since(start) >= spin {
            return Ok(false);
        }
        std::hint::spin_loop();
    }
}

fn sleep_timeout(
    timeout: Option<Duration>,
    start: Instant,
    timer_at: Option<Instant>,
) -> Option<Duration> {
    let now = Instant::now();
    let remaining = timeout.map(|t| t.saturating_sub(now.duration_since(start)));
    let timer = timer_at.map(|t| t.saturating_duration_since(now));
    match (remaining, timer) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// UDP server: one socket for all peers.
pub struct UdpServer {
    sock: Sock,
    cfg: UdpConfig,
    conns: HashMap<u64, Conn>,
    by_key: HashMap<(SocketAddr, u64), u64>,
    by_addr: HashMap<SocketAddr, u64>,
    next_id: u64,
    rxbuf: Box<[u8]>,
    pending: Option<(usize, SocketAddr, u8)>,
    waker: Arc<EventFdWaker>,
    timer_at: Option<Instant>,
}

impl UdpServer {
    /// Bind to `addr` (port 0 picks a free port; see [`UdpServer::local_addr`]).
    pub fn bind(addr: SocketAddr, cfg: UdpConfig) -> Result<Self, TransportError> {
        cfg.validate()?;
        let sock = Sock::new(UdpSocket::bind(addr)?, cfg.faults)?;
        Ok(UdpServer {
            sock,
            cfg,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            by_addr: HashMap::new(),
            next_id: 1,
            rxbuf: vec![0u8; DGRAM_MAX + 1].into_boxed_slice(),
            pending: None,
            waker: Arc::new(EventFdWaker::new()?),
            timer_at: None,
        })
    }

    /// Bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.sock.sock.local_addr()?)
    }

    /// Counters summed over the live peers.
    pub fn stats(&self) -> UdpStats {
        let mut s = UdpStats::default();
        for c in self.conns.values() {
            s.add(&c.stats);
        }
        s
    }

    /// Number of peers (including ones whose death is not yet reported).
    pub fn peer_count(&self) -> usize {
        self.conns.len()
    }

    fn forget(&mut self, id: u64) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        self.by_key.remove(&(c.addr, c.conn_id));
        if self.by_addr.get(&c.addr) == Some(&id) {
            self.by_addr.remove(&c.addr);
        }
        Some(c)
    }

    fn process(
        &mut self,
        len: usize,
        from: SocketAddr,
        now: Instant,
        f: &mut dyn FnMut(ServerEvent<'_>),
    ) -> usize {
        let Some((h, payload)) = parse(&self.rxbuf[..len]) else {
            tracing::trace!(%from, len, "ignoring malformed datagram");
            return 0;
        };
        let cfg = self.cfg;
        let mut n = 0;
        if h.kind == Kind::Syn {
            if h.conn_id == 0 {
                return 0;
            }
            if let Some(&id) = self.by_key.get(&(from, h.conn_id)) {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.send_ctrl(&mut self.sock, Kind::SynAck);
                }
                return 0;
            }
            if let Some(&old) = self.by_addr.get(&from) {
                // Same address, new connection id: the client restarted, so the old peer
                // will never speak again.
                if self.forget(old).is_some() {
                    tracing::debug!(peer = old, %from, "udp peer replaced by reconnect");
                    f(ServerEvent::Disconnected(PeerId(old)));
                    n += 1;
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            let mut c = Conn::new(h.conn_id, from, now);
            c.send_ctrl(&mut self.sock, Kind::SynAck);
            self.timer_at = min_opt(self.timer_at, c.next_deadline(&cfg));
            self.conns.insert(id, c);
            self.by_key.insert((from, h.conn_id), id);
            self.by_addr.insert(from, id);
            tracing::debug!(peer = id, %from, "udp peer connected");
            f(ServerEvent::Connected(PeerId(id)));
            return n + 1;
        }
        let Some(&id) = self.by_key.get(&(from, h.conn_id)) else {
            if matches!(h.kind, Kind::Data | Kind::Ping) {
                let rst = encode_header(&Header {
                    kind: Kind::Rst,
                    conn_id: h.conn_id,
                    seq: 0,
                    ack: 0,
                });
                self.sock.send_to(&rst, from);
            }
            return 0;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return 0;
        };
        if c.dead {
            return 0;
        }
        c.last_rx = now;
        c.on_ack(h.ack);
        match h.kind {
            Kind::Data => {
                let peer = PeerId(id);
                n += c.on_data(h.seq, payload, &cfg, now, &mut |b| {
                    f(ServerEvent::Frame(peer, b))
                });
            }
            Kind::Ping => c.send_ctrl(&mut self.sock, Kind::Ack),
            Kind::Fin | Kind::Rst => c.dead = true,
            Kind::Ack | Kind::Syn | Kind::SynAck => {}
        }
        self.timer_at = min_opt(self.timer_at, c.next_deadline(&cfg));
        n
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        for c in self.conns.values_mut() {
            c.send_ctrl(&mut self.sock, Kind::Fin);
        }
    }
}

impl ServerTransport for UdpServer {
    fn poll(&mut self, f: &mut dyn FnMut(ServerEvent<'_>)) -> Result<usize, TransportError> {
        let mut n = 0;
        let mut now = Instant::now();
        if let Some((len, from, copies)) = self.pending.take() {
            for _ in 0..copies {
                n += self.process(len, from, now, f);
            }
        }
        for _ in 0..RECV_BUDGET {
            let Some((len, from, copies)) = self.sock.recv(&mut self.rxbuf)? else {
                break;
            };
            now = Instant::now();
            for _ in 0..copies {
                n += self.process(len, from, now, f);
            }
        }
        now = Instant::now();
        if self.timer_at.is_some_and(|t| t <= now) {
            let cfg = self.cfg;
            let mut next = None;
            for c in self.conns.values_mut() {
                c.on_timers(&mut self.sock, &cfg, now);
                next = min_opt(next, c.next_deadline(&cfg));
            }
            self.timer_at = next;
        }
        if self.conns.values().any(|c| c.dead) {
            let dead: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.dead)
                .map(|(&id, _)| id)
                .collect();
            for id in dead {
                self.forget(id);
                tracing::debug!(peer = id, "udp peer disconnected");
                f(ServerEvent::Disconnected(PeerId(id)));
                n += 1;
            }
        }
        Ok(n)
    }

    fn send(&mut self, peer: PeerId, frame: &[u8]) -> Result<(), TransportError> {
        check_frame_len(frame)?;
        let c = self
            .conns
            .get_mut(&peer.0)
            .ok_or(TransportError::UnknownPeer(peer))?;
        let now = Instant::now();
        c.send_data(&mut self.sock, frame, &self.cfg, now)?;
        let rto = now + self.cfg.rto_initial;
        self.timer_at = Some(self.timer_at.map_or(rto, |t| t.min(rto)));
        Ok(())
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.waker.take() || self.conns.values().any(|c| c.dead) {
            return Ok(());
        }
        let start = Instant::now();
        let spin = timeout.map_or(self.cfg.spin.spin, |t| t.min(self.cfg.spin.spin));
        let waker = self.waker.clone();
        if spin_recv(
            &mut self.sock,
            &mut self.rxbuf,
            &mut self.pending,
            spin,
            start,
            self.timer_at,
            || waker.take(),
        )? {
            return Ok(());
        }
        if !self.waker.prepare_sleep() {
            self.waker.take();
            return Ok(());
        }
        let mut fds = [pollfd(self.sock.sock.as_raw_fd()), pollfd(self.waker.fd())];
        let r = sys::poll_fds(&mut fds, sleep_timeout(timeout, start, self.timer_at));
        self.waker.finish_sleep();
        self.waker.take();
        r?;
        Ok(())
    }

    fn waker(&self) -> Waker {
        Waker::new(self.waker.clone())
    }

    fn close_peer(&mut self, peer: PeerId) {
        if let Some(mut c) = self.forget(peer.0) {
            c.send_ctrl(&mut self.sock, Kind::Fin);
        }
    }
}

/// UDP client: one socket, one connection.
pub struct UdpClient {
    sock: Sock,
    cfg: UdpConfig,
    conn: Conn,
    rxbuf: Box<[u8]>,
    pending: Option<(usize, SocketAddr, u8)>,
    timer_at: Option<Instant>,
}

impl UdpClient {
    /// Handshake with the server at `server` (blocks up to `cfg.connect_timeout`).
    pub fn connect(server: SocketAddr, cfg: UdpConfig) -> Result<Self, TransportError> {
        cfg.validate()?;
        let local: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut sock = Sock::new(UdpSocket::bind(local)?, cfg.faults)?;
        // Independent of the (deterministic) fault seed: a restarted client must not reuse ids.
        let conn_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        let start = Instant::now();
        let mut conn = Conn::new(conn_id, server, start);
        let mut rxbuf = vec![0u8; DGRAM_MAX + 1].into_boxed_slice();
        let mut rto = cfg.rto_initial;
        loop {
            conn.send_ctrl(&mut sock, Kind::Syn);
            let deadline = Instant::now() + rto;
            loop {
                while let Some((len, from, _)) = sock.recv(&mut rxbuf)? {
                    if from != server {
                        continue;
                    }
                    match parse(&rxbuf[..len]) {
                        Some((h, _)) if h.conn_id == conn_id && h.kind == Kind::SynAck => {
                            let now = Instant::now();
                            conn.last_rx = now;
                            conn.last_ping = now;
                            tracing::debug!(%server, conn_id, "udp connected");
                            let timer_at = conn.next_deadline(&cfg);
                            return Ok(UdpClient {
                                sock,
                                cfg,
                                conn,
                                rxbuf,
                                pending: None,
                                timer_at,
                            });
                        }
                        Some((h, _)) if h.conn_id == conn_id && h.kind == Kind::Rst => {
                            return Err(TransportError::Disconnected);
                        }
                        _ => {}
                    }
                }
                let now = Instant::now();
                if now.duration_since(start) >= cfg.connect_timeout {
                    return Err(TransportError::Timeout);
                }
                if now >= deadline {
                    break;
                }
                let mut fds = [pollfd(sock.sock.as_raw_fd())];
                sys::poll_fds(&mut fds, Some(deadline - now))?;
            }
            rto = (rto * 2).min(cfg.rto_max);
        }
    }

    /// Connection counters.
    pub fn stats(&self) -> UdpStats {
        self.conn.stats
    }

    /// Local socket address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.sock.sock.local_addr()?)
    }

    fn process(
        &mut self,
        len: usize,
        from: SocketAddr,
        now: Instant,
        f: &mut dyn FnMut(&[u8]),
    ) -> usize {
        if from != self.conn.addr {
            return 0;
        }
        let Some((h, payload)) = parse(&self.rxbuf[..len]) else {
            return 0;
        };
        if h.conn_id != self.conn.conn_id || self.conn.dead {
            return 0;
        }
        self.conn.last_rx = now;
        self.conn.on_ack(h.ack);
        let mut n = 0;
        match h.kind {
            Kind::Data => n = self.conn.on_data(h.seq, payload, &self.cfg, now, f),
            Kind::Ping => self.conn.send_ctrl(&mut self.sock, Kind::Ack),
            Kind::Fin | Kind::Rst => {
                tracing::debug!("udp server closed the connection");
                self.conn.dead = true;
            }
            Kind::Ack | Kind::Syn | Kind::SynAck => {}
        }
        self.timer_at = min_opt(self.timer_at, self.conn.next_deadline(&self.cfg));
        n
    }
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        if !self.conn.dead {
            self.conn.send_ctrl(&mut self.sock, Kind::Fin);
        }
    }
}

impl ClientTransport for UdpClient {
    fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        check_frame_len(frame)?;
        let now = Instant::now();
        self.conn.send_data(&mut self.sock, frame, &self.cfg, now)?;
        let rto = now + self.cfg.rto_initial;
        self.timer_at = Some(self.timer_at.map_or(rto, |t| t.min(rto)));
        Ok(())
    }

    fn poll(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<usize, TransportError> {
        let mut n = 0;
        let mut now = Instant::now();
        if let Some((len, from, copies)) = self.pending.take() {
            for _ in 0..copies {
                n += self.process(len, from, now, f);
            }
        }
        for _ in 0..RECV_BUDGET {
            let Some((len, from, copies)) = self.sock.recv(&mut self.rxbuf)? else {
                break;
            };
            now = Instant::now();
            for _ in 0..copies {
                n += self.process(len, from, now, f);
            }
        }
        now = Instant::now();
        if self.timer_at.is_some_and(|t| t <= now) {
            self.conn.on_timers(&mut self.sock, &self.cfg, now);
            self.timer_at = self.conn.next_deadline(&self.cfg);
        }
        if n == 0 && self.conn.dead {
            return Err(TransportError::Disconnected);
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.conn.dead {
            return Ok(());
        }
        let start = Instant::now();
        let spin = timeout.map_or(self.cfg.spin.spin, |t| t.min(self.cfg.spin.spin));
        if spin_recv(
            &mut self.sock,
            &mut self.rxbuf,
            &mut self.pending,
            spin,
            start,
            self.timer_at,
            || false,
        )? {
            return Ok(());
        }
        let mut fds = [pollfd(self.sock.sock.as_raw_fd())];
        sys::poll_fds(&mut fds, sleep_timeout(timeout, start, self.timer_at))?;
        Ok(())
    }

    fn as_raw_fd(&self) -> Option<RawFd> {
        Some(self.sock.sock.as_raw_fd())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        self.timer_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(server: &mut UdpServer) -> Vec<String> {
        let mut out = Vec::new();
        let start = Instant::now();
        // A few rounds so loopback datagrams have arrived; never a timing assertion.
        while start.elapsed() < Duration::from_millis(50) {
            server.poll(&mut |ev| out.push(format!("{ev:?}"))).unwrap();
        }
        out
    }

    fn dgram(kind: Kind, conn_id: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = encode_header(&Header {
            kind,
            conn_id,
            seq,
            ack: 0,
        })
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn reconnect_with_new_conn_id_gets_fresh_peer() {
        let mut server =
            UdpServer::bind("127.0.0.1:0".parse().unwrap(), UdpConfig::default()).unwrap();
        let addr = server.local_addr().unwrap();
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(&dgram(Kind::Syn, 11, 0, &[]), addr).unwrap();
        raw.send_to(&dgram(Kind::Data, 11, 0, b"a"), addr).unwrap();
        // Duplicate SYN: same peer, no new event.
        raw.send_to(&dgram(Kind::Syn, 11, 0, &[]), addr).unwrap();
        assert_eq!(
            collect(&mut server),
            vec!["Connected(PeerId(1))", "Frame(PeerId(1), [97])"]
        );
        // Restarted client process on the same address: new id, fresh sequence space.
        raw.send_to(&dgram(Kind::Syn, 22, 0, &[]), addr).unwrap();
        raw.send_to(&dgram(Kind::Data, 22, 0, b"b"), addr).unwrap();
        // Late traffic of the old connection is answered with RST, not delivered.
        raw.send_to(&dgram(Kind::Data, 11, 1, b"c"), addr).unwrap();
        assert_eq!(
            collect(&mut server),
            vec![
                "Disconnected(PeerId(1))",
                "Connected(PeerId(2))",
                "Frame(PeerId(2), [98])"
            ]
        );
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let mut saw_rst = false;
        while let Ok(n) = raw.recv(&mut buf) {
            if let Some((h, _)) = parse(&buf[..n]) {
                if h.kind == Kind::Rst && h.conn_id == 11 {
                    saw_rst = true;
                    break;
                }
            }
        }
        assert!(saw_rst);
    }

    #[test]
    fn garbage_datagrams_are_ignored() {
        let mut server =
            UdpServer::bind("127.0.0.1:0".parse().unwrap(), UdpConfig::default()).unwrap();
        let addr = server.local_addr().unwrap();
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(b"", addr).unwrap();
        raw.send_to(b"hello world, definitely not a header", addr)
            .unwrap();
        let mut bad_kind = dgram(Kind::Syn, 5, 0, &[]);
        bad_kind[3] = 99;
        raw.send_to(&bad_kind, addr).unwrap();
        raw.send_to(&dgram(Kind::Syn, 0, 0, &[]), addr).unwrap();
        raw.send_to(&dgram(Kind::Ack, 5, 0, b"payload on ack"), addr)
            .unwrap();
        assert!(collect(&mut server).is_empty());
        // Bogus acks (beyond anything sent) do not disturb a live connection.
        raw.send_to(&dgram(Kind::Syn, 5, 0, &[]), addr).unwrap();
        let mut ack = dgram(Kind::Ack, 5, 0, &[]);
        ack[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        raw.send_to(&ack, addr).unwrap();
        raw.send_to(&dgram(Kind::Data, 5, 0, b"ok"), addr).unwrap();
        assert_eq!(
            collect(&mut server),
            vec!["Connected(PeerId(1))", "Frame(PeerId(1), [111, 107])"]
        );
    }

    #[test]
    fn conn_reorders_and_dedups() {
        let cfg = UdpConfig::default();
        let now = Instant::now();
        let mut c = Conn::new(1, "127.0.0.1:1".parse().unwrap(), now);
        let mut got = Vec::new();
        for seq in [2u64, 0, 0, 3, 1, 2, 5, 4, 1] {
            c.on_data(seq, &[seq as u8], &cfg, now, &mut |b| got.push(b[0]));
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(c.expected, 6);
        assert!(c.ooo.is_empty());
        // Far beyond the window: dropped, not buffered.
        c.on_data(6 + cfg.window as u64, b"x", &cfg, now, &mut |_| panic!());
        assert!(c.ooo.is_empty());
    }
}
