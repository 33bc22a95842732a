//! Medium-independent reliability layer: reliable, in-order, duplicate-free, authenticated
//! frames over any unreliable datagram [`Link`] (UDP, AF_PACKET, AF_XDP). Every medium shares
//! this one implementation of the protocol; a link only moves datagrams and names peers.
//!
//! One datagram carries one frame behind a 36-byte header (wire version 2, little endian):
//! `magic u16 | version u8 | kind u8 | conn_id u64 | pn u64 | seq u64 | ack u64`, then the
//! payload, then (DATA, ACK, PING, FIN) a 16-byte MAC tag over everything before it.
//!
//! * Handshake (the "fabric" handshake; crypto in [`crate::fabric`]): the client picks a
//!   random non-zero `conn_id` and a nonce and sends `SYN` until `SYNACK`. The server answers
//!   statelessly: its nonce is a cookie (HMAC of the client's address, id, nonce and a cookie
//!   time under a per-process secret) and the SYNACK carries its proof of the cluster's fabric
//!   secret. The client checks that proof and sends `CONFIRM` (echoing the cookie, with its own
//!   proof) until an authenticated datagram arrives. Only a CONFIRM with a fresh, valid cookie
//!   and a valid proof creates server state, so half-open handshakes cost no memory at all and
//!   a SYN flood (any number of spoofed sources) cannot crowd out real nodes; it costs one HMAC
//!   per SYN. SYN and SYNACK have the same size (no reflection amplification).
//! * Frame MAC: both sides derive one AES-128 key per direction from the fabric secret and
//!   both nonces (HKDF-SHA256) and MAC every DATA, ACK, PING and FIN with AES-GMAC; the nonce is
//!   the per-direction packet number `pn`, which every datagram (retransmissions included) gets
//!   anew. A 64-entry window refuses replayed packet numbers. Header fields (`seq`, `ack`,
//!   `conn_id`) are under the MAC, so nothing can be injected, replayed or re-sequenced; an
//!   on-path attacker can only drop traffic, which looks like loss and is handled like loss
//!   (retransmission, then `give_up` / `peer_timeout`). Datagrams that fail the check change no
//!   state (not even liveness) and are counted ([`FabricCounters`]).
//! * Peers: the server keys peers by (address, conn_id), so a restarted client (new random id)
//!   gets a fresh [`PeerId`] and sequence space. A new connection from a known address retires
//!   the old peer only once it has completed an authenticated handshake, and only if its
//!   cookie time is newer than the old connection's (a replayed CONFIRM of a connection that is
//!   gone cannot retire the live one).
//! * Data: per-direction sequence numbers from 0; `ack` is cumulative (next sequence number
//!   expected) and rides on every datagram. Standalone `ACK`s go out after `ack_delay` unless a
//!   data frame carried the ack first (request/response traffic then needs no extra datagrams),
//!   and immediately for duplicates and gaps.
//! * Loss: every unacknowledged frame is retransmitted after its RTO (initially `rto_initial`,
//!   doubling per retransmission up to `rto_max`); if a frame stays unacknowledged for `give_up`
//!   the peer is declared dead. Out-of-order frames within the window are buffered.
//! * Liveness: after `keepalive` of silence a side sends `PING` (answered by an immediate ACK);
//!   after `peer_timeout` of silence the peer is declared dead. `FIN` (authenticated) announces
//!   a close. `RST` answers traffic for an unknown connection (e.g. after a server restart); it
//!   cannot be authenticated (the server lost the keys), so it only makes the client probe with
//!   PINGs: no authenticated answer within `2 * rto_max` (at least 50 ms), and the connection
//!   is dead. A forged RST costs a round trip, never a connection.
//! * `insecure_no_frame_mac` ([`ReliableConfig`]) drops the tags (handshake still
//!   authenticated) for benchmark baselines only; lockmgrd has no setting for it.
//! * Fault injection ([`FaultConfig`]) drops/duplicates datagrams at the link boundary, so tests
//!   of every medium exercise the same recovery paths.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use crate::fabric::FabricCounters;
use crate::fabric::{self, CookieJar, FabricKey, Gmac, ReplayWindow, Side, NONCE_LEN, TAG_LEN};
use crate::sys::{self, EventFdWaker, Spinner, Spun};
use crate::{
    check_frame_len, ClientTransport, PeerId, ServerEvent, ServerTransport, SpinConfig,
    TransportError, Waker, MAX_FRAME,
};

pub(crate) const MAGIC: u16 = 0x4d4c;
/// Wire version 2: packet numbers, the authenticated handshake and frame MACs.
const VERSION: u8 = 2;
/// Wire header length.
pub const HDR_LEN: usize = 36;
/// Body of SYN, SYNACK and CONFIRM: `flags u8 | 7 zero bytes | time u64 | client_nonce [32] |
/// server_nonce [32] | proof [32]`. One size for all three, so a SYNACK is never larger than
/// the SYN it answers (no reflection amplification).
pub const HELLO_LEN: usize = 16 + 3 * NONCE_LEN;
/// Largest datagram (header, [`MAX_FRAME`] payload, MAC tag) a [`Link`] must carry.
pub const DGRAM_MAX: usize = HDR_LEN + MAX_FRAME + TAG_LEN;
const RECV_BUDGET: usize = 1024;
/// Hello flag: frames carry an AES-GMAC tag (always set except in benchmark baselines).
pub(crate) const FLAG_FRAME_MAC: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Syn = 1,
    SynAck = 2,
    Data = 3,
    Ack = 4,
    Ping = 5,
    Fin = 6,
    Rst = 7,
    Confirm = 8,
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
            8 => Kind::Confirm,
            _ => return None,
        })
    }

    /// Kinds exchanged within an established connection, and so MAC'd.
    pub(crate) fn is_sealed(self) -> bool {
        matches!(self, Kind::Data | Kind::Ack | Kind::Ping | Kind::Fin)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) conn_id: u64,
    /// Packet number: per direction, never repeats (the GMAC nonce and the anti-replay key).
    pub(crate) pn: u64,
    pub(crate) seq: u64,
    pub(crate) ack: u64,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

pub(crate) fn encode_header(h: &Header) -> [u8; HDR_LEN] {
    let mut b = [0u8; HDR_LEN];
    b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    b[2] = VERSION;
    b[3] = h.kind as u8;
    b[4..12].copy_from_slice(&h.conn_id.to_le_bytes());
    b[12..20].copy_from_slice(&h.pn.to_le_bytes());
    b[20..28].copy_from_slice(&h.seq.to_le_bytes());
    b[28..36].copy_from_slice(&h.ack.to_le_bytes());
    b
}

const PN_AT: usize = 12;
const ACK_AT: usize = 28;

/// Structural parse: header plus body (for sealed kinds the body still ends in the tag, which
/// only the connection can check). Bodies have the exact size their kind allows.
pub(crate) fn parse(b: &[u8]) -> Option<(Header, &[u8])> {
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
        pn: le_u64(&b[12..20]),
        seq: le_u64(&b[20..28]),
        ack: le_u64(&b[28..36]),
    };
    let body = &b[HDR_LEN..];
    let ok = match kind {
        Kind::Syn | Kind::SynAck | Kind::Confirm => body.len() == HELLO_LEN,
        Kind::Rst => body.is_empty(),
        // Tag, or nothing when frame MACs are off (benchmark baselines).
        Kind::Ack | Kind::Ping | Kind::Fin => body.is_empty() || body.len() == TAG_LEN,
        Kind::Data => true,
    };
    ok.then_some((h, body))
}

/// The body of SYN (time, server nonce and proof zero), SYNACK (server proof) and CONFIRM
/// (client proof).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) flags: u8,
    pub(crate) time: u64,
    pub(crate) client_nonce: [u8; NONCE_LEN],
    pub(crate) server_nonce: [u8; NONCE_LEN],
    pub(crate) proof: [u8; NONCE_LEN],
}

impl Hello {
    pub(crate) fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0] = self.flags;
        b[8..16].copy_from_slice(&self.time.to_le_bytes());
        b[16..48].copy_from_slice(&self.client_nonce);
        b[48..80].copy_from_slice(&self.server_nonce);
        b[80..112].copy_from_slice(&self.proof);
        b
    }

    pub(crate) fn parse(b: &[u8]) -> Option<Hello> {
        if b.len() != HELLO_LEN || b[1..8].iter().any(|&x| x != 0) {
            return None;
        }
        let arr = |r: std::ops::Range<usize>| -> [u8; NONCE_LEN] {
            let mut a = [0u8; NONCE_LEN];
            a.copy_from_slice(&b[r]);
            a
        };
        Some(Hello {
            flags: b[0],
            time: le_u64(&b[8..16]),
            client_nonce: arr(16..48),
            server_nonce: arr(48..80),
            proof: arr(80..112),
        })
    }

    #[cfg(test)]
    pub(crate) fn transcript_for_tests(&self, conn_id: u64) -> fabric::Transcript<'_> {
        self.transcript(conn_id)
    }

    fn transcript(&self, conn_id: u64) -> fabric::Transcript<'_> {
        fabric::Transcript {
            conn_id,
            flags: self.flags,
            time: self.time,
            client_nonce: &self.client_nonce,
            server_nonce: &self.server_nonce,
        }
    }
}

fn hello_dgram(kind: Kind, conn_id: u64, hello: &Hello) -> [u8; HDR_LEN + HELLO_LEN] {
    let mut d = [0u8; HDR_LEN + HELLO_LEN];
    d[..HDR_LEN].copy_from_slice(&encode_header(&Header {
        kind,
        conn_id,
        pn: 0,
        seq: 0,
        ack: 0,
    }));
    d[HDR_LEN..].copy_from_slice(&hello.encode());
    d
}

/// Link addresses as bytes, for the SYN cookie (binds a handshake to the address it ran from).
pub trait CookieAddr {
    /// A canonical byte encoding of the address.
    fn cookie_bytes(&self) -> Vec<u8>;
}

impl CookieAddr for SocketAddr {
    fn cookie_bytes(&self) -> Vec<u8> {
        let mut v = match self.ip() {
            std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
            std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
        };
        v.extend_from_slice(&self.port().to_le_bytes());
        v
    }
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

/// Configuration of the reliability layer, shared by every [`Link`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReliableConfig {
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
    /// The cluster's fabric secret (see [`crate::fabric`]). Servers refuse to start without
    /// it; a client without it stops after the SYN exchange in `connect`, and
    /// [`ClientTransport::authenticate`] (which `lockmgr-client` calls with the cluster key)
    /// finishes the handshake.
    pub fabric_key: Option<FabricKey>,
    /// How long a server accepts the CONFIRM for a SYNACK it sent (SYN cookie lifetime).
    /// Handshakes hold no server memory, so this only bounds how long a captured CONFIRM could
    /// be replayed (into a connection nobody can use: the keys need the fabric secret).
    pub cookie_lifetime: Duration,
    /// INSECURE, for benchmark baselines only: authenticate the handshake but send frames
    /// without a MAC, so anyone on the path can inject, replay or reset. Both sides must agree
    /// (the handshake carries the choice under its proofs). Never set in production: lockmgrd
    /// has no setting for it.
    pub insecure_no_frame_mac: bool,
    /// Fault injection (tests).
    pub faults: FaultConfig,
}

impl Default for ReliableConfig {
    fn default() -> Self {
        ReliableConfig {
            spin: SpinConfig::default(),
            rto_initial: Duration::from_millis(2),
            rto_max: Duration::from_millis(200),
            give_up: Duration::from_secs(5),
            ack_delay: Duration::from_micros(200),
            window: 256,
            keepalive: Some(Duration::from_secs(1)),
            peer_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            fabric_key: None,
            cookie_lifetime: Duration::from_secs(10),
            insecure_no_frame_mac: false,
            faults: FaultConfig::default(),
        }
    }
}

impl ReliableConfig {
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

    fn flags(&self) -> u8 {
        if self.insecure_no_frame_mac {
            0
        } else {
            FLAG_FRAME_MAC
        }
    }
}

/// A datagram medium: unreliable, unordered, may duplicate; the reliability layer above it adds
/// everything else. Implementations: UDP sockets, AF_PACKET and AF_XDP raw Ethernet.
pub trait Link: Send {
    /// How a peer is addressed on this medium.
    type Addr: Copy + Eq + Hash + Debug + Send + CookieAddr;
    /// Receive buffer size the link needs (datagram plus any medium header).
    const RX_BUF: usize = DGRAM_MAX + 1;
    /// Best effort send of one datagram (at most [`DGRAM_MAX`] bytes). Errors are loss.
    fn send_to(&mut self, buf: &[u8], addr: Self::Addr) -> io::Result<()>;
    /// Non-blocking receive into `buf` (at least [`Link::RX_BUF`] bytes): `(start, len, from)`
    /// where the datagram is `buf[start..start + len]`; `None` when nothing is pending.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, usize, Self::Addr)>>;
    /// Readable when datagrams may be pending (for `poll(2)`).
    fn raw_fd(&self) -> RawFd;
    /// Whether one address belongs to one client process (UDP: a socket's ip:port). Then a SYN
    /// with a new connection id from a known address means that process restarted, and the
    /// old peer is retired at once. Not so for MAC addresses: every client on a host shares
    /// the interface's MAC, so old peers there are only retired by FIN or liveness timeout.
    const ADDR_IS_PROCESS: bool = true;
    /// Largest frame (payload, without the reliability header) this link can carry; a medium
    /// with a small MTU lowers it below [`MAX_FRAME`] and `send` reports
    /// [`TransportError::FrameTooLarge`] with this limit.
    fn max_frame(&self) -> usize {
        MAX_FRAME
    }
}

fn check_link_frame_len<L: Link>(link: &L, frame: &[u8]) -> Result<(), TransportError> {
    check_frame_len(frame)?;
    let max = link.max_frame();
    if frame.len() > max {
        return Err(TransportError::FrameTooLarge {
            len: frame.len(),
            max,
        });
    }
    Ok(())
}

/// Link plus fault injection.
pub(crate) struct Sock<L: Link> {
    pub(crate) link: L,
    rng: StdRng,
    faults: FaultConfig,
    /// The link reported that nobody listens at the peer's address any more (a connected UDP
    /// socket: an ICMP port unreachable comes back as ECONNREFUSED on the next send or
    /// receive). The peer's socket is closed, so its process is gone or restarted: a definite
    /// signal, unlike silence. Only clients look at it (a server's socket is not connected and
    /// never sees one).
    refused: bool,
}

impl<L: Link> Sock<L> {
    pub(crate) fn new(link: L, faults: FaultConfig) -> Self {
        Sock {
            link,
            rng: StdRng::seed_from_u64(faults.seed),
            faults,
            refused: false,
        }
    }

    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen::<f64>() < p
    }

    /// Best effort: a full socket buffer or an ICMP error is just loss, which retransmission
    /// handles.
    pub(crate) fn send_to(&mut self, buf: &[u8], addr: L::Addr) {
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
            if let Err(e) = self.link.send_to(buf, addr) {
                self.refused |= e.kind() == io::ErrorKind::ConnectionRefused;
                tracing::trace!(error = %e, ?addr, "send failed (treated as loss)");
            }
        }
    }

    /// Next datagram; `copies > 1` simulates duplication on receive.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<Rx<L::Addr>>> {
        loop {
            let (start, len, from) = match self.link.recv(buf) {
                Ok(Some(got)) => got,
                Ok(None) => return Ok(None),
                // The error is the socket's, reported once; datagrams may still be queued.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    self.refused = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.faults.on_recv {
                if self.roll(self.faults.drop_rate) {
                    continue;
                }
                if self.roll(self.faults.dup_rate) {
                    return Ok(Some((start, len, from, 2)));
                }
            }
            return Ok(Some((start, len, from, 1)));
        }
    }
}

/// A received datagram: `(start, len, from, copies)`.
type Rx<A> = (usize, usize, A, u8);

struct Pending {
    seq: u64,
    /// The datagram as last sent, tag included (retransmission rewrites ack, pn and tag).
    dgram: Vec<u8>,
    sent: Instant,
    first: Instant,
    rto: Duration,
}

/// Frame MAC state of one connection.
pub(crate) struct Seal {
    /// `None`: frame MACs off (benchmark baseline), the handshake was still authenticated.
    macs: Option<(Gmac, Gmac)>,
    /// Next packet number to send (from 1; never reused under one key).
    tx_pn: u64,
    replay: ReplayWindow,
}

impl Seal {
    pub(crate) fn new(flags: u8, tx_key: &[u8; 16], rx_key: &[u8; 16]) -> Self {
        Seal {
            macs: (flags & FLAG_FRAME_MAC != 0).then(|| (Gmac::new(tx_key), Gmac::new(rx_key))),
            tx_pn: 1,
            replay: ReplayWindow::default(),
        }
    }

    /// Stamps a fresh packet number into `dgram` (header + body, no tag) and appends the tag.
    pub(crate) fn seal(&mut self, dgram: &mut Vec<u8>) {
        let pn = self.tx_pn;
        self.tx_pn += 1;
        dgram[PN_AT..PN_AT + 8].copy_from_slice(&pn.to_le_bytes());
        if let Some((tx, _)) = &self.macs {
            let tag = tx.tag(pn, dgram);
            dgram.extend_from_slice(&tag);
        }
    }

    /// Next packet number to send (fuzzing seeds and checks).
    pub(crate) fn set_tx_pn(&mut self, pn: u64) {
        self.tx_pn = pn;
    }

    fn tag_len(&self) -> usize {
        if self.macs.is_some() {
            TAG_LEN
        } else {
            0
        }
    }

    /// Checks the tag of a received sealed datagram; returns its payload. `record` marks the
    /// packet number as seen (replays of it are refused from then on).
    pub(crate) fn open<'d>(
        &mut self,
        h: &Header,
        dgram: &'d [u8],
        record: bool,
    ) -> Option<&'d [u8]> {
        let body_end = dgram.len().checked_sub(self.tag_len())?;
        if body_end < HDR_LEN || !self.replay.fresh(h.pn) {
            return None;
        }
        if let Some((_, rx)) = &self.macs {
            if !rx.verify(h.pn, &dgram[..body_end], &dgram[body_end..]) {
                return None;
            }
        }
        if h.kind != Kind::Data && body_end != HDR_LEN {
            return None;
        }
        if record {
            self.replay.accept(h.pn);
        }
        Some(&dgram[HDR_LEN..body_end])
    }
}

/// Reliability state of one connection (either side).
struct Conn<A> {
    conn_id: u64,
    addr: A,
    /// `None` until the handshake completed (a client between `connect` and `authenticate`).
    seal: Option<Seal>,
    /// The server's cookie time of this connection's handshake: a newer handshake from the same
    /// address may retire this connection, an older (replayed) one may not.
    hs_time: u64,
    /// The server nonce of the handshake (recognises a retransmitted CONFIRM).
    server_nonce: [u8; NONCE_LEN],
    next_seq: u64,
    unacked: VecDeque<Pending>,
    expected: u64,
    ooo: BTreeMap<u64, Vec<u8>>,
    ack_due: Option<Instant>,
    last_rx: Instant,
    last_ping: Instant,
    /// Set by an (unauthenticated, so possibly forged) RST: the peer must show it is alive with
    /// an authenticated datagram by then, or it is declared dead.
    probe_until: Option<Instant>,
    pool: Vec<Vec<u8>>,
    dead: bool,
    stats: ReliableStats,
}

/// Counters of one UDP connection (or summed over a server's live peers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReliableStats {
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
    /// Datagrams of this connection dropped because their MAC did not verify or their packet
    /// number was replayed (forgeries, replays, corruption).
    pub rejected: u64,
}

impl ReliableStats {
    fn add(&mut self, o: &ReliableStats) {
        self.frames_sent += o.frames_sent;
        self.frames_delivered += o.frames_delivered;
        self.retransmits += o.retransmits;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.rejected += o.rejected;
    }
}

impl<A: Copy + Debug> Conn<A> {
    fn new(conn_id: u64, addr: A, now: Instant) -> Self {
        Conn {
            conn_id,
            addr,
            seal: None,
            hs_time: 0,
            server_nonce: [0; NONCE_LEN],
            next_seq: 0,
            unacked: VecDeque::new(),
            expected: 0,
            ooo: BTreeMap::new(),
            ack_due: None,
            last_rx: now,
            last_ping: now,
            probe_until: None,
            pool: Vec::new(),
            dead: false,
            stats: ReliableStats::default(),
        }
    }

    fn header(&self, kind: Kind, seq: u64) -> [u8; HDR_LEN] {
        encode_header(&Header {
            kind,
            conn_id: self.conn_id,
            pn: 0,
            seq,
            ack: self.expected,
        })
    }

    fn send_ctrl<L: Link<Addr = A>>(&mut self, sock: &mut Sock<L>, kind: Kind) {
        let Some(seal) = self.seal.as_mut() else {
            // Nothing can be said before the handshake: an unsealed datagram would be ignored.
            return;
        };
        let mut d = [0u8; HDR_LEN + TAG_LEN];
        d[..HDR_LEN].copy_from_slice(&encode_header(&Header {
            kind,
            conn_id: self.conn_id,
            pn: 0,
            seq: 0,
            ack: self.expected,
        }));
        let pn = seal.tx_pn;
        seal.tx_pn += 1;
        d[PN_AT..PN_AT + 8].copy_from_slice(&pn.to_le_bytes());
        let len = match &seal.macs {
            Some((tx, _)) => {
                let tag = tx.tag(pn, &d[..HDR_LEN]);
                d[HDR_LEN..].copy_from_slice(&tag);
                HDR_LEN + TAG_LEN
            }
            None => HDR_LEN,
        };
        sock.send_to(&d[..len], self.addr);
        if kind == Kind::Ack {
            self.ack_due = None;
        }
    }

    fn send_data<L: Link<Addr = A>>(
        &mut self,
        sock: &mut Sock<L>,
        frame: &[u8],
        cfg: &ReliableConfig,
        now: Instant,
    ) -> Result<(), TransportError> {
        if self.dead {
            return Err(TransportError::Disconnected);
        }
        if self.unacked.len() >= cfg.window {
            return Err(TransportError::Full);
        }
        let header = self.header(Kind::Data, self.next_seq);
        let Some(seal) = self.seal.as_mut() else {
            return Err(TransportError::Protocol(NOT_AUTHENTICATED));
        };
        let mut dgram = self.pool.pop().unwrap_or_default();
        dgram.clear();
        dgram.extend_from_slice(&header);
        dgram.extend_from_slice(frame);
        seal.seal(&mut dgram);
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

    /// Authenticates a received sealed datagram of this connection and applies what every
    /// kind carries (liveness, cumulative ack). `None`: forged, replayed or corrupt, dropped
    /// without touching any state.
    fn open<'d>(&mut self, h: &Header, dgram: &'d [u8], now: Instant) -> Option<&'d [u8]> {
        let Some(payload) = self.seal.as_mut().and_then(|s| s.open(h, dgram, true)) else {
            self.stats.rejected += 1;
            tracing::trace!(addr = ?self.addr, kind = ?h.kind, pn = h.pn, "unauthenticated datagram dropped");
            return None;
        };
        self.last_rx = now;
        self.probe_until = None;
        self.on_ack(h.ack);
        Some(payload)
    }

    /// An RST names this connection. It cannot be authenticated (the sender may have lost our
    /// keys by restarting), so it only makes us ask: a PING now, and death unless an
    /// authenticated answer arrives within the probe time. A forged RST thus costs one round
    /// trip, never the connection.
    fn on_rst<L: Link<Addr = A>>(
        &mut self,
        sock: &mut Sock<L>,
        cfg: &ReliableConfig,
        now: Instant,
    ) {
        if self.probe_until.is_none() {
            self.probe_until = Some(now + probe_time(cfg));
            self.last_ping = now;
            self.send_ctrl(sock, Kind::Ping);
        }
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
        cfg: &ReliableConfig,
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
    fn on_timers<L: Link<Addr = A>>(
        &mut self,
        sock: &mut Sock<L>,
        cfg: &ReliableConfig,
        now: Instant,
    ) {
        if self.dead {
            return;
        }
        if self.probe_until.is_some_and(|t| t <= now) {
            tracing::debug!(addr = ?self.addr, "peer reset the connection and did not answer the probe");
            self.dead = true;
            return;
        }
        let ack = self.expected;
        let mut resent = false;
        let Some(seal) = self.seal.as_mut() else {
            return;
        };
        let tag_len = seal.tag_len();
        for p in self.unacked.iter_mut() {
            if now < p.sent + p.rto {
                continue;
            }
            if now.duration_since(p.first) >= cfg.give_up {
                tracing::debug!(addr = ?self.addr, seq = p.seq, "peer gave up: no ack");
                self.dead = true;
                return;
            }
            // A new packet number (GMAC nonces never repeat) and the current ack: re-seal.
            p.dgram.truncate(p.dgram.len() - tag_len);
            p.dgram[ACK_AT..ACK_AT + 8].copy_from_slice(&ack.to_le_bytes());
            seal.seal(&mut p.dgram);
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
                tracing::debug!(addr = ?self.addr, "peer timed out");
                self.dead = true;
                return;
            }
            if now.duration_since(self.last_rx) >= k && now.duration_since(self.last_ping) >= k {
                self.last_ping = now;
                self.send_ctrl(sock, Kind::Ping);
            }
        }
        // While probing after an RST, ask again every initial RTO (a PING may be lost).
        if self.probe_until.is_some() && now.duration_since(self.last_ping) >= cfg.rto_initial {
            self.last_ping = now;
            self.send_ctrl(sock, Kind::Ping);
        }
    }

    fn next_deadline(&self, cfg: &ReliableConfig) -> Option<Instant> {
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
        if let Some(t) = self.probe_until {
            min(t);
            min(self.last_ping + cfg.rto_initial);
        }
        d
    }
}

/// How long a peer named by an RST has to prove it is alive.
fn probe_time(cfg: &ReliableConfig) -> Duration {
    (cfg.rto_max * 2).max(Duration::from_millis(50))
}

const NOT_AUTHENTICATED: &str =
    "fabric handshake not finished: call ClientTransport::authenticate with the cluster key";

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Spin phase shared by client and server `wait`: `Ready` when a datagram is pending, a wake-up
/// came or a timer is due; otherwise how long the caller may sleep.
#[allow(clippy::too_many_arguments)]
fn spin_recv<L: Link>(
    spinner: &mut Spinner,
    sock: &mut Sock<L>,
    rxbuf: &mut [u8],
    pending: &mut Option<Rx<L::Addr>>,
    start: Instant,
    timeout: Option<Duration>,
    timer_at: Option<Instant>,
    mut woken: impl FnMut() -> bool,
) -> Result<Spun, TransportError> {
    if pending.is_some() {
        return Ok(Spun::Ready);
    }
    spinner.spin(start, timeout, |_| {
        if let Some(p) = sock.recv(rxbuf)? {
            *pending = Some(p);
            return Ok(true);
        }
        // A recv is a syscall, so a clock read per round costs nothing noticeable.
        Ok(sock.refused || woken() || timer_at.is_some_and(|t| t <= Instant::now()))
    })
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

/// Server side over any [`Link`]: one link for all peers.
pub struct ReliableServer<L: Link> {
    pub(crate) sock: Sock<L>,
    cfg: ReliableConfig,
    key: FabricKey,
    cookies: CookieJar,
    /// Origin of cookie times.
    epoch: Instant,
    /// Last cookie time handed out: cookie times strictly increase, so of two handshakes from
    /// one address the later SYN always has the larger time.
    last_hs_time: u64,
    counters: FabricCounters,
    conns: HashMap<u64, Conn<L::Addr>>,
    by_key: HashMap<(L::Addr, u64), u64>,
    by_addr: HashMap<L::Addr, u64>,
    next_id: u64,
    rxbuf: Box<[u8]>,
    pending: Option<Rx<L::Addr>>,
    waker: Arc<EventFdWaker>,
    spinner: Spinner,
    timer_at: Option<Instant>,
}

impl<L: Link> ReliableServer<L> {
    /// Serve on `link`. `cfg.fabric_key` is required: every peer must prove the cluster key.
    pub fn with_link(link: L, cfg: ReliableConfig) -> Result<Self, TransportError> {
        cfg.validate()?;
        let key = cfg.fabric_key.ok_or(TransportError::Config(
            "a datagram server needs the fabric key (ReliableConfig::fabric_key)",
        ))?;
        let sock = Sock::new(link, cfg.faults);
        let spinner = Spinner::new(cfg.spin);
        Ok(ReliableServer {
            sock,
            cfg,
            key,
            cookies: CookieJar::new(),
            epoch: Instant::now(),
            last_hs_time: 0,
            counters: FabricCounters::default(),
            conns: HashMap::new(),
            by_key: HashMap::new(),
            by_addr: HashMap::new(),
            next_id: 1,
            rxbuf: vec![0u8; L::RX_BUF].into_boxed_slice(),
            pending: None,
            waker: Arc::new(EventFdWaker::new()?),
            spinner,
            timer_at: None,
        })
    }

    /// The underlying medium.
    pub fn link(&self) -> &L {
        &self.sock.link
    }

    /// Counters summed over the live peers.
    pub fn stats(&self) -> ReliableStats {
        let mut s = ReliableStats::default();
        for c in self.conns.values() {
            s.add(&c.stats);
        }
        s
    }

    /// Handshake and authentication counters.
    pub fn fabric_counters(&self) -> FabricCounters {
        self.counters
    }

    /// Number of peers (including ones whose death is not yet reported). Only authenticated
    /// peers exist: a handshake in progress holds no memory.
    pub fn peer_count(&self) -> usize {
        self.conns.len()
    }

    fn forget(&mut self, id: u64) -> Option<Conn<L::Addr>> {
        let c = self.conns.remove(&id)?;
        self.by_key.remove(&(c.addr, c.conn_id));
        if self.by_addr.get(&c.addr) == Some(&id) {
            self.by_addr.remove(&c.addr);
        }
        Some(c)
    }

    fn hs_clock(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// SYN: answer with a SYNACK whose server nonce is a cookie; remember nothing.
    fn on_syn(&mut self, h: &Header, body: &[u8], from: L::Addr, now: Instant) {
        let Some(syn) = Hello::parse(body) else {
            return;
        };
        if h.conn_id == 0 || syn.flags != self.cfg.flags() {
            tracing::trace!(?from, flags = syn.flags, "SYN refused (flags differ)");
            return;
        }
        self.counters.syns += 1;
        let time = self.hs_clock(now).max(self.last_hs_time + 1);
        self.last_hs_time = time;
        let server_nonce = self.cookies.server_nonce(
            &from.cookie_bytes(),
            h.conn_id,
            syn.flags,
            time,
            &syn.client_nonce,
        );
        let mut synack = Hello {
            flags: syn.flags,
            time,
            client_nonce: syn.client_nonce,
            server_nonce,
            proof: [0; NONCE_LEN],
        };
        synack.proof = fabric::proof(&self.key, Side::Server, &synack.transcript(h.conn_id));
        self.sock
            .send_to(&hello_dgram(Kind::SynAck, h.conn_id, &synack), from);
    }

    /// CONFIRM: check cookie and client proof; only then does the connection exist.
    /// An RST for `conn_id` (unauthenticated by design: it only makes the peer probe, or tells
    /// a client with the wrong key at once).
    fn send_rst(&mut self, conn_id: u64, to: L::Addr) {
        let rst = encode_header(&Header {
            kind: Kind::Rst,
            conn_id,
            pn: 0,
            seq: 0,
            ack: 0,
        });
        self.sock.send_to(&rst, to);
    }

    fn on_confirm(
        &mut self,
        h: &Header,
        body: &[u8],
        from: L::Addr,
        now: Instant,
        f: &mut dyn FnMut(ServerEvent<'_>),
    ) -> usize {
        let Some(hello) = Hello::parse(body) else {
            return 0;
        };
        if hello.flags != self.cfg.flags() {
            return 0;
        }
        if let Some(&id) = self.by_key.get(&(from, h.conn_id)) {
            // A retransmitted CONFIRM: our ack was lost. Ack again (authenticated).
            if let Some(c) = self.conns.get_mut(&id) {
                if fabric::ct_eq(&c.server_nonce, &hello.server_nonce) {
                    c.send_ctrl(&mut self.sock, Kind::Ack);
                }
            }
            return 0;
        }
        let age = self.hs_clock(now).checked_sub(hello.time);
        let lifetime = u64::try_from(self.cfg.cookie_lifetime.as_nanos()).unwrap_or(u64::MAX);
        let cookie = self.cookies.server_nonce(
            &from.cookie_bytes(),
            h.conn_id,
            hello.flags,
            hello.time,
            &hello.client_nonce,
        );
        if age.is_none_or(|a| a > lifetime) || !fabric::ct_eq(&cookie, &hello.server_nonce) {
            self.counters.stale_handshakes += 1;
            tracing::debug!(?from, "CONFIRM with an expired or foreign cookie dropped");
            return 0;
        }
        let transcript = hello.transcript(h.conn_id);
        if !fabric::verify_proof(&self.key, Side::Client, &transcript, &hello.proof) {
            self.counters.auth_failures += 1;
            tracing::warn!(?from, "fabric handshake: bad cluster-key proof");
            // Tells a misconfigured client at once; forging it needs the (random) conn id and
            // only aborts a handshake, which an on-path attacker could do by dropping anyway.
            self.send_rst(h.conn_id, from);
            return 0;
        }
        let mut n = 0;
        // See `Link::ADDR_IS_PROCESS` for why MAC-addressed links skip this.
        let old = if L::ADDR_IS_PROCESS {
            self.by_addr.get(&from).copied()
        } else {
            None
        };
        if let Some(old) = old {
            if self
                .conns
                .get(&old)
                .is_some_and(|c| c.hs_time >= hello.time)
            {
                // Older than the live connection: a replayed CONFIRM of a connection that is
                // gone. It must not retire the live one.
                self.counters.stale_handshakes += 1;
                tracing::debug!(?from, "CONFIRM older than the live connection dropped");
                return 0;
            }
            // Same address, newer authenticated handshake: the client process restarted, so
            // the old peer will never speak again.
            if self.forget(old).is_some() {
                self.counters.replaced += 1;
                tracing::debug!(peer = old, ?from, "peer replaced by reconnect");
                f(ServerEvent::Disconnected(PeerId(old)));
                n += 1;
            }
        }
        let keys = fabric::session_keys(&self.key, &transcript);
        let cfg = self.cfg;
        let id = self.next_id;
        self.next_id += 1;
        let mut c = Conn::new(h.conn_id, from, now);
        c.seal = Some(Seal::new(
            hello.flags,
            &keys.server_to_client,
            &keys.client_to_server,
        ));
        c.hs_time = hello.time;
        c.server_nonce = hello.server_nonce;
        // The client waits for an authenticated datagram before it sends data.
        c.send_ctrl(&mut self.sock, Kind::Ack);
        self.timer_at = min_opt(self.timer_at, c.next_deadline(&cfg));
        self.conns.insert(id, c);
        self.by_key.insert((from, h.conn_id), id);
        self.by_addr.insert(from, id);
        self.counters.handshakes += 1;
        tracing::debug!(peer = id, ?from, "peer connected (authenticated)");
        f(ServerEvent::Connected(PeerId(id)));
        n + 1
    }

    fn process(
        &mut self,
        start: usize,
        len: usize,
        from: L::Addr,
        now: Instant,
        f: &mut dyn FnMut(ServerEvent<'_>),
    ) -> usize {
        let Some((h, body)) = parse(&self.rxbuf[start..start + len]) else {
            tracing::trace!(?from, len, "ignoring malformed datagram");
            return 0;
        };
        match h.kind {
            Kind::Syn => {
                // `parse` borrowed the receive buffer; the SYN body is small, copy it out.
                let body: [u8; HELLO_LEN] = body.try_into().unwrap_or([0; HELLO_LEN]);
                self.on_syn(&h, &body, from, now);
                return 0;
            }
            Kind::Confirm => {
                let body: [u8; HELLO_LEN] = body.try_into().unwrap_or([0; HELLO_LEN]);
                return self.on_confirm(&h, &body, from, now, f);
            }
            // Servers never receive these from an honest peer.
            Kind::SynAck | Kind::Rst => return 0,
            Kind::Data | Kind::Ack | Kind::Ping | Kind::Fin => {}
        }
        let cfg = self.cfg;
        let Some(&id) = self.by_key.get(&(from, h.conn_id)) else {
            if matches!(h.kind, Kind::Data | Kind::Ping) {
                // A hint for a client whose connection we lost (e.g. we restarted); it only
                // makes the client probe us, so it may as well be unauthenticated.
                self.send_rst(h.conn_id, from);
            }
            return 0;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return 0;
        };
        if c.dead {
            return 0;
        }
        let Some(payload) = c.open(&h, &self.rxbuf[start..start + len], now) else {
            self.counters.rejected_frames += 1;
            return 0;
        };
        let mut n = 0;
        match h.kind {
            Kind::Data => {
                let peer = PeerId(id);
                n += c.on_data(h.seq, payload, &cfg, now, &mut |b| {
                    f(ServerEvent::Frame(peer, b))
                });
            }
            Kind::Ping => c.send_ctrl(&mut self.sock, Kind::Ack),
            Kind::Fin => c.dead = true,
            _ => {}
        }
        self.timer_at = min_opt(self.timer_at, c.next_deadline(&cfg));
        n
    }
}

impl<L: Link> Drop for ReliableServer<L> {
    fn drop(&mut self) {
        for c in self.conns.values_mut() {
            c.send_ctrl(&mut self.sock, Kind::Fin);
        }
    }
}

impl<L: Link> ServerTransport for ReliableServer<L> {
    fn poll(&mut self, f: &mut dyn FnMut(ServerEvent<'_>)) -> Result<usize, TransportError> {
        // One socket for every peer: a refusal does not say which peer is gone (and an
        // unconnected socket does not get any); liveness timers decide.
        self.sock.refused = false;
        let mut n = 0;
        let mut now = Instant::now();
        if let Some((start, len, from, copies)) = self.pending.take() {
            for _ in 0..copies {
                n += self.process(start, len, from, now, f);
            }
        }
        for _ in 0..RECV_BUDGET {
            let Some((start, len, from, copies)) = self.sock.recv(&mut self.rxbuf)? else {
                break;
            };
            now = Instant::now();
            for _ in 0..copies {
                n += self.process(start, len, from, now, f);
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
                tracing::debug!(peer = id, "peer disconnected");
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
        check_link_frame_len(&self.sock.link, frame)?;
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
        let waker = &self.waker;
        let spun = spin_recv(
            &mut self.spinner,
            &mut self.sock,
            &mut self.rxbuf,
            &mut self.pending,
            start,
            timeout,
            self.timer_at,
            || waker.take(),
        )?;
        if spun == Spun::Ready {
            return Ok(());
        }
        if !self.waker.prepare_sleep() {
            self.waker.take();
            return Ok(());
        }
        let mut fds = [pollfd(self.sock.link.raw_fd()), pollfd(self.waker.fd())];
        let r = sys::poll_fds(&mut fds, sleep_timeout(timeout, start, self.timer_at));
        self.waker.finish_sleep();
        self.waker.take();
        r?;
        Ok(())
    }

    fn waker(&self) -> Waker {
        Waker::new(self.waker.clone())
    }

    fn fabric_counters(&self) -> Option<FabricCounters> {
        Some(self.counters)
    }

    fn close_peer(&mut self, peer: PeerId) {
        if let Some(mut c) = self.forget(peer.0) {
            c.send_ctrl(&mut self.sock, Kind::Fin);
        }
    }
}

/// Client side over any [`Link`]: one connection to one server.
pub struct ReliableClient<L: Link> {
    pub(crate) sock: Sock<L>,
    cfg: ReliableConfig,
    conn: Conn<L::Addr>,
    /// The SYNACK (with our nonce in it) while the handshake waits for the key.
    synack: Option<Hello>,
    rxbuf: Box<[u8]>,
    pending: Option<Rx<L::Addr>>,
    spinner: Spinner,
    timer_at: Option<Instant>,
}

impl<L: Link> ReliableClient<L> {
    /// Handshake with the server at `server` over `link` (blocks up to `cfg.connect_timeout`).
    /// With `cfg.fabric_key` the connection is ready on return; without it only the SYN
    /// exchange ran and [`ClientTransport::authenticate`] must finish the handshake.
    pub fn connect_with(
        link: L,
        server: L::Addr,
        cfg: ReliableConfig,
    ) -> Result<Self, TransportError> {
        cfg.validate()?;
        let mut sock = Sock::new(link, cfg.faults);
        // Independent of the (deterministic) fault seed: a restarted client must not reuse ids.
        let conn_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        let syn = Hello {
            flags: cfg.flags(),
            time: 0,
            client_nonce: rand::random(),
            server_nonce: [0; NONCE_LEN],
            proof: [0; NONCE_LEN],
        };
        let syn_dgram = hello_dgram(Kind::Syn, conn_id, &syn);
        let start = Instant::now();
        let mut rxbuf = vec![0u8; L::RX_BUF].into_boxed_slice();
        let mut rto = cfg.rto_initial;
        let mut bad_proof = false;
        let synack = 'syn: loop {
            sock.send_to(&syn_dgram, server);
            let deadline = Instant::now() + rto;
            loop {
                while let Some((off, len, from, _)) = sock.recv(&mut rxbuf)? {
                    if from != server {
                        continue;
                    }
                    let Some((h, body)) = parse(&rxbuf[off..off + len]) else {
                        continue;
                    };
                    if h.conn_id != conn_id || h.kind != Kind::SynAck {
                        continue;
                    }
                    let Some(synack) = Hello::parse(body) else {
                        continue;
                    };
                    if synack.flags != syn.flags || synack.client_nonce != syn.client_nonce {
                        continue;
                    }
                    if let Some(key) = &cfg.fabric_key {
                        let t = synack.transcript(conn_id);
                        if !fabric::verify_proof(key, Side::Server, &t, &synack.proof) {
                            // Forged, or a server with another key: keep waiting (a forgery
                            // must not abort the handshake), report it if nothing better comes.
                            bad_proof = true;
                            continue;
                        }
                    }
                    break 'syn synack;
                }
                if sock.refused {
                    // Nobody listens there: no point waiting for the timeout.
                    return Err(TransportError::Disconnected);
                }
                let now = Instant::now();
                if now.duration_since(start) >= cfg.connect_timeout {
                    return Err(if bad_proof {
                        TransportError::PeerNotAuthenticated
                    } else {
                        TransportError::Timeout
                    });
                }
                if now >= deadline {
                    break;
                }
                let mut fds = [pollfd(sock.link.raw_fd())];
                sys::poll_fds(&mut fds, Some(deadline - now))?;
            }
            rto = (rto * 2).min(cfg.rto_max);
        };
        tracing::debug!(?server, conn_id, "SYNACK received");
        let mut client = ReliableClient {
            sock,
            cfg,
            conn: Conn::new(conn_id, server, start),
            synack: Some(synack),
            rxbuf,
            pending: None,
            spinner: Spinner::new(cfg.spin),
            timer_at: None,
        };
        if let Some(key) = cfg.fabric_key {
            client.finish_handshake(&key)?;
        }
        Ok(client)
    }

    /// Checks the server's proof, derives the frame keys and sends CONFIRM until an
    /// authenticated datagram shows the server accepted it.
    fn finish_handshake(&mut self, key: &FabricKey) -> Result<(), TransportError> {
        let Some(synack) = self.synack else {
            return Ok(());
        };
        let conn_id = self.conn.conn_id;
        let server = self.conn.addr;
        let transcript = synack.transcript(conn_id);
        // With a failed server proof the CONFIRM still goes out, never to connect but to learn
        // from the server's RST that the keys differ (what the lockmgr-level handshake reports
        // too: the server refuses our proof); silence means an impostor.
        let server_ok = fabric::verify_proof(key, Side::Server, &transcript, &synack.proof);
        let confirm = Hello {
            proof: fabric::proof(key, Side::Client, &transcript),
            ..synack
        };
        let confirm = hello_dgram(Kind::Confirm, conn_id, &confirm);
        if server_ok {
            let keys = fabric::session_keys(key, &transcript);
            self.conn.seal = Some(Seal::new(
                synack.flags,
                &keys.client_to_server,
                &keys.server_to_client,
            ));
        }
        self.conn.hs_time = synack.time;
        let start = Instant::now();
        let mut rto = self.cfg.rto_initial;
        loop {
            self.sock.send_to(&confirm, server);
            let deadline = Instant::now() + rto;
            loop {
                while let Some(rx) = self.sock.recv(&mut self.rxbuf)? {
                    let (off, len, from, _) = rx;
                    if from != server {
                        continue;
                    }
                    let Some((h, _)) = parse(&self.rxbuf[off..off + len]) else {
                        continue;
                    };
                    if h.conn_id != conn_id {
                        continue;
                    }
                    if h.kind == Kind::Rst {
                        self.conn.seal = None;
                        return Err(TransportError::AuthRejected);
                    }
                    if !h.kind.is_sealed() {
                        continue;
                    }
                    let Some(seal) = self.conn.seal.as_mut() else {
                        continue;
                    };
                    if seal.open(&h, &self.rxbuf[off..off + len], false).is_none() {
                        continue;
                    }
                    // Accepted. Whatever it was, poll() handles it like any later datagram.
                    self.synack = None;
                    let now = Instant::now();
                    self.conn.last_rx = now;
                    self.conn.last_ping = now;
                    self.pending = Some(rx);
                    self.timer_at = self.conn.next_deadline(&self.cfg);
                    tracing::debug!(?server, conn_id, "connected (authenticated)");
                    return Ok(());
                }
                if self.sock.refused {
                    self.conn.seal = None;
                    return Err(TransportError::Disconnected);
                }
                let now = Instant::now();
                if now.duration_since(start) >= self.cfg.connect_timeout {
                    self.conn.seal = None;
                    return Err(if server_ok {
                        TransportError::Timeout
                    } else {
                        TransportError::PeerNotAuthenticated
                    });
                }
                if now >= deadline {
                    break;
                }
                let mut fds = [pollfd(self.sock.link.raw_fd())];
                sys::poll_fds(&mut fds, Some(deadline - now))?;
            }
            rto = (rto * 2).min(self.cfg.rto_max);
        }
    }

    /// Connection counters.
    pub fn stats(&self) -> ReliableStats {
        self.conn.stats
    }

    /// The connection id (in every datagram's header; attack tests forge datagrams with it).
    #[doc(hidden)]
    pub fn conn_id(&self) -> u64 {
        self.conn.conn_id
    }

    /// The underlying medium.
    pub fn link(&self) -> &L {
        &self.sock.link
    }

    /// The link said nobody listens at the server's address: the server's process is gone
    /// (see `Sock::refused`), so the connection is dead now rather than after `peer_timeout`.
    fn note_refusal(&mut self) {
        if self.sock.refused && !self.conn.dead {
            tracing::debug!(server = ?self.conn.addr, "server's port refused: connection dead");
            self.conn.dead = true;
        }
    }

    fn process(
        &mut self,
        start: usize,
        len: usize,
        from: L::Addr,
        now: Instant,
        f: &mut dyn FnMut(&[u8]),
    ) -> usize {
        if from != self.conn.addr || self.synack.is_some() {
            return 0;
        }
        let dgram = &self.rxbuf[start..start + len];
        let Some((h, _)) = parse(dgram) else {
            return 0;
        };
        if h.conn_id != self.conn.conn_id || self.conn.dead {
            return 0;
        }
        match h.kind {
            Kind::Rst => {
                self.conn.on_rst(&mut self.sock, &self.cfg, now);
                self.timer_at = min_opt(self.timer_at, self.conn.next_deadline(&self.cfg));
                return 0;
            }
            // Late handshake duplicates.
            Kind::Syn | Kind::SynAck | Kind::Confirm => return 0,
            Kind::Data | Kind::Ack | Kind::Ping | Kind::Fin => {}
        }
        let Some(payload) = self.conn.open(&h, dgram, now) else {
            return 0;
        };
        let mut n = 0;
        match h.kind {
            Kind::Data => n = self.conn.on_data(h.seq, payload, &self.cfg, now, f),
            Kind::Ping => self.conn.send_ctrl(&mut self.sock, Kind::Ack),
            Kind::Fin => {
                tracing::debug!("server closed the connection");
                self.conn.dead = true;
            }
            _ => {}
        }
        self.timer_at = min_opt(self.timer_at, self.conn.next_deadline(&self.cfg));
        n
    }
}

impl<L: Link> Drop for ReliableClient<L> {
    fn drop(&mut self) {
        if !self.conn.dead {
            self.conn.send_ctrl(&mut self.sock, Kind::Fin);
        }
    }
}

impl<L: Link> ClientTransport for ReliableClient<L> {
    fn authenticate(&mut self, key: &FabricKey) -> Result<(), TransportError> {
        self.finish_handshake(key)
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        check_link_frame_len(&self.sock.link, frame)?;
        let now = Instant::now();
        // A request out means a reply to wait for: worth spinning.
        self.spinner.expect_reply();
        self.note_refusal();
        self.conn.send_data(&mut self.sock, frame, &self.cfg, now)?;
        let rto = now + self.cfg.rto_initial;
        self.timer_at = Some(self.timer_at.map_or(rto, |t| t.min(rto)));
        Ok(())
    }

    fn poll(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<usize, TransportError> {
        if self.synack.is_some() {
            return Err(TransportError::Protocol(NOT_AUTHENTICATED));
        }
        let mut n = 0;
        let mut now = Instant::now();
        if let Some((start, len, from, copies)) = self.pending.take() {
            for _ in 0..copies {
                n += self.process(start, len, from, now, f);
            }
        }
        for _ in 0..RECV_BUDGET {
            let Some((start, len, from, copies)) = self.sock.recv(&mut self.rxbuf)? else {
                break;
            };
            now = Instant::now();
            for _ in 0..copies {
                n += self.process(start, len, from, now, f);
            }
        }
        now = Instant::now();
        if self.timer_at.is_some_and(|t| t <= now) {
            self.conn.on_timers(&mut self.sock, &self.cfg, now);
            self.timer_at = self.conn.next_deadline(&self.cfg);
        }
        self.note_refusal();
        if n == 0 && self.conn.dead {
            return Err(TransportError::Disconnected);
        }
        if n > 0 {
            self.spinner.busy();
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.conn.dead || self.sock.refused {
            return Ok(());
        }
        let start = Instant::now();
        let spun = spin_recv(
            &mut self.spinner,
            &mut self.sock,
            &mut self.rxbuf,
            &mut self.pending,
            start,
            timeout,
            self.timer_at,
            || false,
        )?;
        // A refusal read during the spin consumed the socket error: poll(2) would not see it.
        if spun == Spun::Ready || self.sock.refused {
            return Ok(());
        }
        let mut fds = [pollfd(self.sock.link.raw_fd())];
        sys::poll_fds(&mut fds, sleep_timeout(timeout, start, self.timer_at))?;
        Ok(())
    }

    fn as_raw_fd(&self) -> Option<RawFd> {
        Some(self.sock.link.raw_fd())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        self.timer_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_reorders_and_dedups() {
        let cfg = ReliableConfig::default();
        let now = Instant::now();
        let mut c = Conn::new(1, 1u32, now);
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
