//! The lockmgrd event loop: one thread, one transport, one engine.
//!
//! The loop is thin on purpose (quinn-style): frames come in through a
//! [`ServerTransport`], are decoded, authenticated and fed to the [`Engine`]; the engine's
//! outputs are batched per peer into as few frames as possible and sent back. All lock logic
//! lives in the engine; everything here is plumbing, session bookkeeping and liveness.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockmgr_engine::{Config as EngineConfig, Engine, Output, SessionId, Time};
use lockmgr_proto::{
    auth, decode_frame, split_status_text, ClusterKey, EncodeError, FrameWriter, Message, Nonce,
    RejectReason, Role, Transcript, VERSION,
};
use lockmgr_transport::{PeerId, ServerEvent, ServerTransport, TransportError};
use rand::RngCore;
use rustc_hash::FxHashMap as HashMap;

use crate::status::render_status;

/// Settings of one server instance.
#[derive(Clone)]
pub struct ServerOptions {
    pub key: ClusterKey,
    /// A session that sends nothing for this long is expired and its state released.
    pub liveness: Duration,
    pub engine: EngineConfig,
}

/// Counters of what the server dropped or refused, for the operator view and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounters {
    pub frames_in: u64,
    pub frames_out: u64,
    pub malformed_frames: u64,
    /// Frames whose session id is not the one this peer authenticated (or no session yet).
    pub foreign_session_frames: u64,
    /// Messages not allowed in the peer's state (e.g. a request before authentication).
    pub protocol_violations: u64,
    pub auth_failures: u64,
    pub sessions_accepted: u64,
    pub sessions_expired: u64,
    pub sessions_closed: u64,
}

enum PeerState {
    /// Connected at the transport level; nothing heard yet.
    New,
    Challenged {
        node_name: String,
        client_nonce: Nonce,
        server_nonce: Nonce,
        session: SessionId,
    },
    Live {
        session: SessionId,
        node_name: String,
    },
}

struct Peer {
    state: PeerState,
    last_heard: Instant,
    /// Messages waiting to be encoded into the next frame(s) to this peer.
    outbox: Vec<Message>,
    /// Encoded frames the transport refused with `Full`; resent before anything newer.
    backlog: VecDeque<Vec<u8>>,
}

/// Everything but the transport, so the transport's poll callback can borrow it mutably.
struct Core {
    engine: Engine,
    key: ClusterKey,
    liveness: Duration,
    started: Instant,
    peers: HashMap<PeerId, Peer>,
    sessions: HashMap<SessionId, PeerId>,
    next_session: u64,
    /// Peers with something in their outbox.
    dirty: Vec<PeerId>,
    /// Peers to drop after this poll round (e.g. failed authentication).
    to_close: Vec<PeerId>,
    counters: ServerCounters,
}

/// A running lock manager over one transport.
pub struct Server<T: ServerTransport> {
    transport: T,
    core: Core,
    scratch: Vec<u8>,
    last_liveness_scan: Instant,
}

impl<T: ServerTransport> Server<T> {
    pub fn new(transport: T, options: ServerOptions) -> Server<T> {
        let now = Instant::now();
        // Session ids start at a random point so a restarted lockmgrd does not hand out ids a
        // stale client might still be using.
        let next_session = (rand::thread_rng().next_u64() >> 16).max(1);
        Server {
            transport,
            core: Core {
                engine: Engine::new(options.engine),
                key: options.key,
                liveness: options.liveness,
                started: now,
                peers: HashMap::default(),
                sessions: HashMap::default(),
                next_session,
                dirty: Vec::new(),
                to_close: Vec::new(),
                counters: ServerCounters::default(),
            },
            scratch: Vec::with_capacity(lockmgr_proto::MAX_FRAME),
            last_liveness_scan: now,
        }
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub fn counters(&self) -> ServerCounters {
        self.core.counters
    }

    pub fn engine(&self) -> &Engine {
        &self.core.engine
    }

    /// Runs until `shutdown` is set (check interval: at most 100 ms, or at once through the
    /// transport's waker).
    pub fn run(&mut self, shutdown: &Arc<AtomicBool>) -> Result<(), TransportError> {
        while !shutdown.load(Ordering::Acquire) {
            let progressed = self.turn()?;
            if !progressed {
                let timeout = self.next_wakeup(Instant::now());
                self.transport.wait(Some(timeout))?;
            }
        }
        self.shutdown();
        Ok(())
    }

    /// One round: take in everything the transport has, run due timers, send everything the
    /// engine produced. Returns whether anything happened.
    pub fn turn(&mut self) -> Result<bool, TransportError> {
        let core = &mut self.core;
        // One clock read per round: every frame of the round is stamped with it.
        let polled_at = Instant::now();
        let events = self
            .transport
            .poll(&mut |event| core.on_event(event, polled_at))?;
        let now = if events > 0 {
            Instant::now()
        } else {
            polled_at
        };
        let mut progressed = events > 0;
        let engine_now = self.core.engine_time(now);
        if self
            .core
            .engine
            .poll_timeout()
            .is_some_and(|t| t <= engine_now)
        {
            self.core.engine.handle_timeout(engine_now);
            progressed = true;
        }
        if now.duration_since(self.last_liveness_scan) >= self.core.liveness / 4 {
            self.last_liveness_scan = now;
            self.core.expire_silent_sessions(now);
        }
        self.core.route_engine_outputs();
        for peer in std::mem::take(&mut self.core.to_close) {
            self.flush_peer(peer);
            self.transport.close_peer(peer);
            self.core.forget_peer(peer, now);
            self.core.route_engine_outputs();
        }
        let dirty = std::mem::take(&mut self.core.dirty);
        for &peer in &dirty {
            self.flush_peer(peer);
        }
        // Peers whose backlog could not drain stay dirty for the next round.
        for peer in dirty {
            if self
                .core
                .peers
                .get(&peer)
                .is_some_and(|p| !p.backlog.is_empty())
            {
                self.core.dirty.push(peer);
                progressed = true;
            }
        }
        Ok(progressed)
    }

    fn next_wakeup(&self, now: Instant) -> Duration {
        let mut timeout = (self.core.liveness / 4).min(Duration::from_millis(100));
        if let Some(t) = self.core.engine.poll_timeout() {
            let engine_now = self.core.engine_time(now);
            timeout = timeout.min(Duration::from_nanos(t.0.saturating_sub(engine_now.0)));
        }
        if !self.core.dirty.is_empty() {
            timeout = Duration::ZERO;
        }
        timeout
    }

    /// Encodes the peer's outbox into frames and hands them to the transport.
    fn flush_peer(&mut self, peer_id: PeerId) {
        let Some(peer) = self.core.peers.get_mut(&peer_id) else {
            return;
        };
        let session = match &peer.state {
            PeerState::Live { session, .. } | PeerState::Challenged { session, .. } => *session,
            PeerState::New => SessionId(0),
        };
        // Older refused frames go first so the peer sees replies in order.
        while let Some(frame) = peer.backlog.front() {
            match self.transport.send(peer_id, frame) {
                Ok(()) => {
                    self.core.counters.frames_out += 1;
                    peer.backlog.pop_front();
                }
                Err(TransportError::Full) => break,
                Err(_) => {
                    peer.backlog.clear();
                    peer.outbox.clear();
                    return;
                }
            }
        }
        let mut messages = std::mem::take(&mut peer.outbox).into_iter().peekable();
        while messages.peek().is_some() {
            self.scratch.clear();
            let mut writer = FrameWriter::new(&mut self.scratch, session);
            while let Some(msg) = messages.peek() {
                match writer.push(msg) {
                    Ok(()) => {
                        messages.next();
                    }
                    Err(EncodeError::FrameFull) if !writer.is_empty() => break,
                    Err(e) => {
                        // A single message that cannot be encoded is a bug in this process, not
                        // input from outside: log it and drop that message only.
                        tracing::error!(?e, peer = peer_id.0, "cannot encode message; dropped");
                        messages.next();
                    }
                }
            }
            if writer.is_empty() {
                continue;
            }
            let len = writer.finish();
            let frame = &self.scratch[..len];
            if !peer.backlog.is_empty() {
                peer.backlog.push_back(frame.to_vec());
                continue;
            }
            match self.transport.send(peer_id, frame) {
                Ok(()) => self.core.counters.frames_out += 1,
                Err(TransportError::Full) => peer.backlog.push_back(frame.to_vec()),
                Err(e) => {
                    tracing::debug!(peer = peer_id.0, %e, "send failed; peer is going away");
                    peer.backlog.clear();
                    return;
                }
            }
        }
    }

    /// Orderly stop: end every session so that a restarted server starts clean.
    fn shutdown(&mut self) {
        let now = Instant::now();
        let peers: Vec<PeerId> = self.core.peers.keys().copied().collect();
        for peer in peers {
            self.core.push(peer, Message::Goodbye);
            self.flush_peer(peer);
            self.transport.close_peer(peer);
            self.core.forget_peer(peer, now);
        }
    }
}

impl Core {
    fn engine_time(&self, now: Instant) -> Time {
        Time(now.duration_since(self.started).as_nanos() as u64)
    }

    fn push(&mut self, peer_id: PeerId, msg: Message) {
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            if peer.outbox.is_empty() && peer.backlog.is_empty() {
                self.dirty.push(peer_id);
            }
            peer.outbox.push(msg);
        }
    }

    fn on_event(&mut self, event: ServerEvent<'_>, now: Instant) {
        match event {
            ServerEvent::Connected(peer) => {
                tracing::debug!(peer = peer.0, "transport peer connected");
                self.peers.insert(
                    peer,
                    Peer {
                        state: PeerState::New,
                        last_heard: now,
                        outbox: Vec::new(),
                        backlog: VecDeque::new(),
                    },
                );
            }
            ServerEvent::Disconnected(peer) => {
                tracing::info!(peer = peer.0, "transport peer disconnected");
                self.forget_peer(peer, now);
            }
            ServerEvent::Frame(peer, bytes) => {
                self.counters.frames_in += 1;
                self.on_frame(peer, bytes, now);
            }
        }
    }

    fn on_frame(&mut self, peer_id: PeerId, bytes: &[u8], now: Instant) {
        let frame = match decode_frame(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.counters.malformed_frames += 1;
                tracing::debug!(peer = peer_id.0, %e, "malformed frame dropped");
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let expected = match &peer.state {
            PeerState::New => SessionId(0),
            PeerState::Challenged { session, .. } | PeerState::Live { session, .. } => *session,
        };
        if frame.session_id() != expected {
            // Never act on a frame that names another session: no peer can touch another
            // node's state, even by replaying its session id.
            self.counters.foreign_session_frames += 1;
            tracing::debug!(peer = peer_id.0, "frame for a foreign session dropped");
            return;
        }
        peer.last_heard = now;
        for msg in frame {
            match msg {
                Ok(msg) => self.on_message(peer_id, msg, now),
                Err(e) => {
                    // Messages before the bad one were already applied; the rest of the
                    // frame cannot be trusted.
                    self.counters.malformed_frames += 1;
                    tracing::debug!(peer = peer_id.0, %e, "malformed message; rest of frame dropped");
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, peer_id: PeerId, msg: Message, now: Instant) {
        // Fast path first: requests of a live session are nearly all the traffic.
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let live_session = match &peer.state {
            PeerState::Live { session, .. } => Some(*session),
            _ => None,
        };
        let msg = match (live_session, msg) {
            (Some(session), Message::Request { request_id, body }) => {
                let t = self.engine_time(now);
                self.engine.handle(t, session, request_id, body);
                return;
            }
            (Some(_), Message::StatusQuery) => {
                let text = render_status(&self.engine, &self.node_names(), &self.counters);
                let chunks: Vec<Message> = split_status_text(&text).collect();
                for m in chunks {
                    self.push(peer_id, m);
                }
                return;
            }
            (_, other) => other,
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let state = std::mem::replace(&mut peer.state, PeerState::New);
        let next = self.on_control_message(peer_id, state, msg, now);
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            peer.state = next;
        }
    }

    /// Handshake, heartbeats, goodbye and status: everything but lock requests. Returns the
    /// peer's next state.
    fn on_control_message(
        &mut self,
        peer_id: PeerId,
        state: PeerState,
        msg: Message,
        _now: Instant,
    ) -> PeerState {
        match (state, msg) {
            (
                PeerState::New,
                Message::ClientHello {
                    node_name,
                    client_nonce,
                    min_version,
                    max_version,
                },
            ) => {
                if !(min_version..=max_version).contains(&VERSION) {
                    self.reject(peer_id, RejectReason::UnsupportedVersion);
                    return PeerState::New;
                }
                let session = SessionId(self.next_session);
                self.next_session = self.next_session.wrapping_add(1).max(1);
                let mut server_nonce: Nonce = [0; 32];
                rand::thread_rng().fill_bytes(&mut server_nonce);
                self.push(
                    peer_id,
                    Message::ServerChallenge {
                        session_id: session,
                        version: VERSION,
                        server_nonce,
                    },
                );
                PeerState::Challenged {
                    node_name,
                    client_nonce,
                    server_nonce,
                    session,
                }
            }
            (
                PeerState::Challenged {
                    node_name,
                    client_nonce,
                    server_nonce,
                    session,
                },
                Message::ClientProof { proof },
            ) => {
                let transcript = Transcript {
                    node_name: &node_name,
                    client_nonce: &client_nonce,
                    server_nonce: &server_nonce,
                    session_id: session,
                    version: VERSION,
                };
                if !auth::verify_proof(&self.key, Role::Client, &transcript, &proof) {
                    self.counters.auth_failures += 1;
                    tracing::warn!(peer = peer_id.0, node = %node_name, "bad cluster-key proof");
                    self.reject(peer_id, RejectReason::BadProof);
                    return PeerState::New;
                }
                let server_proof = auth::server_proof(&self.key, &transcript);
                tracing::info!(peer = peer_id.0, node = %node_name, session = session.0, "session accepted");
                self.sessions.insert(session, peer_id);
                self.engine.open_session(session);
                self.counters.sessions_accepted += 1;
                let liveness_lease_ms =
                    u32::try_from(self.liveness.as_millis()).unwrap_or(u32::MAX);
                self.push(
                    peer_id,
                    Message::SessionAccepted {
                        session_id: session,
                        liveness_lease_ms,
                        server_proof,
                    },
                );
                PeerState::Live { session, node_name }
            }
            (live @ PeerState::Live { .. }, Message::Heartbeat { seq }) => {
                self.push(peer_id, Message::HeartbeatAck { seq });
                live
            }
            (live @ PeerState::Live { .. }, Message::Goodbye) => {
                self.counters.sessions_closed += 1;
                self.to_close.push(peer_id);
                live
            }
            (state, other) => {
                self.counters.protocol_violations += 1;
                tracing::debug!(
                    peer = peer_id.0,
                    tag = other.tag(),
                    "message not allowed now"
                );
                if !matches!(state, PeerState::Live { .. }) {
                    self.reject(peer_id, RejectReason::ProtocolError);
                }
                state
            }
        }
    }

    fn node_names(&self) -> Vec<(SessionId, String)> {
        let mut v: Vec<(SessionId, String)> = self
            .peers
            .values()
            .filter_map(|p| match &p.state {
                PeerState::Live { session, node_name } => Some((*session, node_name.clone())),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn reject(&mut self, peer_id: PeerId, reason: RejectReason) {
        self.push(peer_id, Message::SessionRejected { reason });
        self.to_close.push(peer_id);
    }

    /// Drops a peer and, if it had a session, releases everything the session held.
    fn forget_peer(&mut self, peer_id: PeerId, now: Instant) {
        if let Some(peer) = self.peers.remove(&peer_id) {
            if let PeerState::Live { session, node_name } = peer.state {
                tracing::info!(node = %node_name, session = session.0, "session ended; releasing its state");
                self.sessions.remove(&session);
                let t = self.engine_time(now);
                self.engine.end_session(t, session);
            }
        }
    }

    fn expire_silent_sessions(&mut self, now: Instant) {
        let expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_heard) > self.liveness)
            .map(|(id, _)| *id)
            .collect();
        for peer in expired {
            tracing::warn!(
                peer = peer.0,
                "peer silent past its liveness lease; expiring"
            );
            self.counters.sessions_expired += 1;
            self.to_close.push(peer);
        }
    }

    fn route_engine_outputs(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            let (session, msg) = match out {
                Output::Reply {
                    session,
                    request,
                    reply,
                } => (
                    session,
                    Message::Reply {
                        request_id: request,
                        body: reply,
                    },
                ),
                Output::Notify {
                    session,
                    notification,
                } => (session, Message::Notify { body: notification }),
            };
            if let Some(&peer) = self.sessions.get(&session) {
                self.push(peer, msg);
            }
        }
    }
}
