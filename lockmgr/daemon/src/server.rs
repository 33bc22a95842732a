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

use lockmgr_engine::{Config as EngineConfig, Engine, LockRange, Output, SessionId, Time};
use lockmgr_proto::{
    auth, decode_frame, split_status_text, ClusterKey, EncodeError, FrameBuf, Incoming, Message,
    Nonce, RejectReason, Role, Transcript, VERSION,
};
use lockmgr_replica::Role as ReplicaRole;
use lockmgr_transport::fabric::FabricCounters;
use lockmgr_transport::{PeerId, ServerEvent, ServerTransport, TransportError};
use rand::RngCore;
use rustc_hash::FxHashMap as HashMap;

use crate::ha::Ha;
use crate::metrics::{Published, ReplicaView, Snapshot};
use crate::stalls::StallClock;
use crate::state::LockState;
use crate::status::{render_status, ServerCounters};

pub(crate) mod replicated;

/// Settings of one server instance.
#[derive(Clone)]
pub struct ServerOptions {
    pub key: ClusterKey,
    /// A session that sends nothing for this long is expired and its state released.
    pub liveness: Duration,
    pub engine: EngineConfig,
}

pub(crate) enum PeerState {
    /// Connected at the transport level; nothing heard yet.
    New,
    Challenged {
        node_name: String,
        client_nonce: Nonce,
        server_nonce: Nonce,
        session: SessionId,
        /// `ResumeSession` came before the proof: the session to continue and how many of
        /// its outputs the node has.
        resume: Option<(SessionId, u64)>,
    },
    Live {
        session: SessionId,
        node_name: String,
    },
    /// A standby lockmgrd that attached to this primary (its session holds no lock state).
    Standby { session: SessionId, name: String },
}

pub(crate) struct Peer {
    pub(crate) state: PeerState,
    pub(crate) last_heard: Instant,
    /// The replica-set epoch this peer's session was accepted in: its frames carry it or a
    /// newer one (the node stamps the newest it has seen), so an older one is not the node's
    /// current word.
    accepted_epoch: u32,
    /// The next frame to this peer: replies are encoded straight into it as the engine
    /// produces them (no per-message queue, no allocation once the buffer has grown).
    out: FrameBuf,
    /// Encoded frames not sent yet, oldest first: frames the transport refused with `Full`,
    /// and frames that filled up before the next flush. Sent before `out`.
    backlog: VecDeque<Vec<u8>>,
}

impl Peer {
    fn session(&self) -> SessionId {
        match &self.state {
            PeerState::Live { session, .. }
            | PeerState::Challenged { session, .. }
            | PeerState::Standby { session, .. } => *session,
            PeerState::New => SessionId(0),
        }
    }

    fn has_output(&self) -> bool {
        !self.out.is_empty() || !self.backlog.is_empty()
    }
}

/// The clock of one poll round, read once: every frame of the round is stamped with it.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: Instant,
    pub(crate) engine: Time,
}

/// Everything but the transport, so the transport's poll callback can borrow it mutably.
pub(crate) struct Core {
    pub(crate) state: LockState,
    /// Added to the local clock's engine time: a promoted standby continues the engine time
    /// of the log it replayed instead of starting again from its own start.
    time_offset: u64,
    /// Replicated lock manager: sessions whose node went away, kept (with their outputs) so
    /// the node can resume them here or on another replica until its liveness lease runs out.
    detached: HashMap<SessionId, Instant>,
    pub(crate) ha: Option<Ha>,
    key: ClusterKey,
    liveness: Duration,
    started: Instant,
    pub(crate) peers: HashMap<PeerId, Peer>,
    sessions: HashMap<SessionId, PeerId>,
    next_session: u64,
    /// Peers with something to send (`Peer::has_output`).
    pub(crate) dirty: Vec<PeerId>,
    /// Reused buffer for the ranges of the lock request being decoded.
    ranges: Vec<LockRange>,
    /// Last session routed to, and its peer: outputs come in runs for one session.
    route_cache: Option<(SessionId, PeerId)>,
    /// Peers to drop after this poll round (e.g. failed authentication).
    pub(crate) to_close: Vec<PeerId>,
    pub(crate) counters: ServerCounters,
    /// The transport's handshake/MAC counters as of the start of the round (status view).
    fabric: Option<FabricCounters>,
    /// Set when a /metrics endpoint runs: scrapes ask the loop for a [`Snapshot`].
    pub(crate) metrics: Option<Arc<Published>>,
    /// Requests by kind (`crate::metrics::REQUEST_KINDS`), replies and notifications sent,
    /// epoch changes made to take over: plain counters, the loop being one thread.
    requests: [u64; crate::metrics::REQUEST_KINDS.len()],
    replies: u64,
    notifications: u64,
    pub(crate) failovers: u64,
    /// When this loop did not run although it meant to: silence of the replica partner
    /// during it is not held against the partner (see `stalls`).
    pub(crate) stalls: StallClock,
}

/// A running lock manager over one transport.
pub struct Server<T: ServerTransport> {
    pub(crate) transport: T,
    pub(crate) core: Core,
    last_liveness_scan: Instant,
    /// How long `run` meant to wait after the last round (zero: it went straight on): the
    /// next round's start tells the stall clock whether this process ran late.
    planned_wait: Duration,
}

impl<T: ServerTransport> Server<T> {
    pub fn new(transport: T, options: ServerOptions) -> Server<T> {
        let engine = Engine::new(options.engine.clone());
        Server::with_state(transport, options, LockState::Alone(Box::new(engine)), None)
    }

    pub(crate) fn with_state(
        transport: T,
        options: ServerOptions,
        state: LockState,
        ha: Option<Ha>,
    ) -> Server<T> {
        let now = Instant::now();
        // Session ids start at a random point so a restarted lockmgrd does not hand out ids a
        // stale client might still be using.
        let next_session = (rand::thread_rng().next_u64() >> 16).max(1);
        Server {
            transport,
            core: Core {
                state,
                time_offset: 0,
                detached: HashMap::default(),
                ha,
                key: options.key,
                liveness: options.liveness,
                started: now,
                peers: HashMap::default(),
                sessions: HashMap::default(),
                next_session,
                dirty: Vec::new(),
                ranges: Vec::with_capacity(lockmgr_proto::MAX_LOCK_RANGES),
                route_cache: None,
                to_close: Vec::new(),
                counters: ServerCounters::default(),
                fabric: None,
                metrics: None,
                requests: [0; crate::metrics::REQUEST_KINDS.len()],
                replies: 0,
                notifications: 0,
                failovers: 0,
                stalls: StallClock::default(),
            },
            last_liveness_scan: now,
            planned_wait: Duration::ZERO,
        }
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub fn counters(&self) -> ServerCounters {
        self.core.counters
    }

    /// Starts publishing snapshots for a metrics endpoint; the returned handle is what the
    /// HTTP thread scrapes.
    pub fn enable_metrics(&mut self) -> Arc<Published> {
        self.core
            .metrics
            .get_or_insert_with(|| Arc::new(Published::default()))
            .clone()
    }

    pub fn engine(&self) -> &Engine {
        self.core.state.engine()
    }

    /// The replica this server runs, when the lock manager is replicated.
    pub fn replica(&self) -> Option<&lockmgr_replica::Replica> {
        self.core.state.replica()
    }

    /// Runs until `shutdown` is set (check interval: at most 100 ms, or at once through the
    /// transport's waker).
    pub fn run(&mut self, shutdown: &Arc<AtomicBool>) -> Result<(), TransportError> {
        while !shutdown.load(Ordering::Acquire) {
            let mut progressed = self.turn()?;
            if self.core.ha.is_some() {
                progressed |= self.ha_turn()?;
                if self.core.ha.as_ref().is_some_and(Ha::deposed) {
                    // Fenced: a newer epoch exists without us. Nodes move to the new primary;
                    // a restarted process rejoins as a standby.
                    self.shutdown();
                    return Err(TransportError::Io(std::io::Error::other(
                        "deposed: another lockmgrd is primary of a newer epoch",
                    )));
                }
            }
            if !progressed {
                let timeout = self.next_wakeup(Instant::now());
                self.planned_wait = timeout;
                if !self.ha_wait(timeout)? {
                    self.transport.wait(Some(timeout))?;
                }
            }
        }
        self.shutdown();
        Ok(())
    }

    /// One round: take in everything the transport has, run due timers, send everything the
    /// engine produced. Returns whether anything happened.
    pub fn turn(&mut self) -> Result<bool, TransportError> {
        let core = &mut self.core;
        // One clock read per round (a vDSO call plus the conversion to engine time is a
        // noticeable share of a ~100 ns request): every frame, timer and liveness check of the
        // round uses it. Timers thus fire at most one round late.
        let now = Instant::now();
        let clock = Clock {
            now,
            engine: core.engine_time(now),
        };
        core.note_round_start(now, std::mem::take(&mut self.planned_wait));
        core.fabric = self.transport.fabric_counters();
        let events = self
            .transport
            .poll(&mut |event| core.on_event(event, clock))?;
        let mut progressed = events > 0;
        let engine_now = clock.engine;
        if self.core.serving()
            && self
                .core
                .state
                .poll_timeout()
                .is_some_and(|t| t <= engine_now)
        {
            self.core.state.handle_timeout(engine_now);
            progressed = true;
        }
        if now.duration_since(self.last_liveness_scan) >= self.core.liveness / 4 {
            self.last_liveness_scan = now;
            self.core.expire_silent_sessions(now);
        }
        if self.core.ha.is_some() {
            self.core.replicate(now);
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
        for &peer in &dirty {
            if self.core.peers.get(&peer).is_some_and(Peer::has_output) {
                self.core.dirty.push(peer);
                progressed = true;
            }
        }
        // Hand the (empty) list back so its capacity is reused.
        if self.core.dirty.is_empty() {
            let mut dirty = dirty;
            dirty.clear();
            self.core.dirty = dirty;
        }
        if let Some(m) = self.core.metrics.as_ref().filter(|m| m.wanted()) {
            m.publish(self.core.metrics_snapshot());
        }
        Ok(progressed)
    }

    fn next_wakeup(&self, now: Instant) -> Duration {
        let mut timeout = (self.core.liveness / 4).min(Duration::from_millis(100));
        if let Some(t) = self
            .core
            .state
            .poll_timeout()
            .filter(|_| self.core.serving())
        {
            let engine_now = self.core.engine_time(now);
            timeout = timeout.min(Duration::from_nanos(t.0.saturating_sub(engine_now.0)));
        }
        if let Some(ha) = &self.core.ha {
            timeout = timeout.min(ha.failover() / 4);
        }
        if !self.core.dirty.is_empty() {
            timeout = Duration::ZERO;
        }
        timeout
    }

    /// Hands the peer's pending frames to the transport: the backlog, then the frame being
    /// built.
    pub(crate) fn flush_peer(&mut self, peer_id: PeerId) {
        let epoch = self.core.frame_epoch();
        let Some(peer) = self.core.peers.get_mut(&peer_id) else {
            return;
        };
        // Older frames go first so the peer sees replies in order.
        while let Some(frame) = peer.backlog.front() {
            match self.transport.send(peer_id, frame) {
                Ok(()) => {
                    self.core.counters.frames_out += 1;
                    peer.backlog.pop_front();
                }
                Err(TransportError::Full) => break,
                Err(_) => {
                    peer.backlog.clear();
                    peer.out.clear();
                    return;
                }
            }
        }
        if peer.out.is_empty() {
            return;
        }
        // The handshake may have assigned (or revoked) the session after the frame was
        // started: frames carry the session as of sending.
        let session = peer.session();
        if peer.out.session_id() != session {
            peer.out.set_session_id(session);
        }
        // Frames carry the epoch as of sending; it only grows, so a peer never sees it go
        // back (frames finished earlier, in the backlog, leave first).
        peer.out.set_epoch(epoch);
        let frame = peer.out.finish();
        if !peer.backlog.is_empty() {
            peer.backlog.push_back(frame.to_vec());
        } else {
            match self.transport.send(peer_id, frame) {
                Ok(()) => self.core.counters.frames_out += 1,
                Err(TransportError::Full) => peer.backlog.push_back(frame.to_vec()),
                Err(e) => {
                    tracing::debug!(peer = peer_id.0, %e, "send failed; peer is going away");
                    peer.backlog.clear();
                }
            }
        }
        peer.out.clear();
    }

    /// Orderly stop: end every session so that a restarted server starts clean.
    pub(crate) fn shutdown(&mut self) {
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
    pub(crate) fn engine_time(&self, now: Instant) -> Time {
        Time((now.duration_since(self.started).as_nanos() as u64).saturating_add(self.time_offset))
    }

    /// Continue engine time from `last` (a promoted standby: the log it replayed was stamped
    /// by the old primary's clock).
    pub(crate) fn continue_time_from(&mut self, last: Time, now: Instant) {
        let local = now.duration_since(self.started).as_nanos() as u64;
        self.time_offset = last.0.saturating_sub(local);
    }

    /// A promoted standby: every session it replayed belongs to a node connected to the old
    /// primary; each is kept for its node to resume here until its liveness lease runs out.
    pub(crate) fn detach_all_sessions(&mut self, now: Instant) {
        let sessions: Vec<SessionId> = self
            .state
            .replica()
            .map(|r| r.sessions().map(|(s, _)| s).collect())
            .unwrap_or_default();
        for s in sessions {
            if !self.sessions.contains_key(&s) {
                self.detached.insert(s, now);
            }
        }
    }

    /// The replica-set epoch frames to nodes carry (0 for a bare engine); the header field
    /// holds its low 32 bits (four billion configuration changes are out of reach).
    pub(crate) fn frame_epoch(&self) -> u32 {
        self.state
            .replica()
            .map_or(0, |r| u32::try_from(r.epoch().0).unwrap_or(u32::MAX))
    }

    /// Whether this server applies inputs itself (a bare engine, or the primary replica).
    pub(crate) fn serving(&self) -> bool {
        match self.state.replica() {
            None => true,
            Some(r) => r.role() == ReplicaRole::Primary,
        }
    }

    pub(crate) fn push(&mut self, peer_id: PeerId, msg: Message) {
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            push_to(&mut self.dirty, peer_id, peer, &msg);
        }
    }

    fn on_event(&mut self, event: ServerEvent<'_>, clock: Clock) {
        let now = clock.now;
        match event {
            ServerEvent::Connected(peer) => {
                tracing::debug!(peer = peer.0, "transport peer connected");
                self.peers.insert(
                    peer,
                    Peer {
                        state: PeerState::New,
                        last_heard: now,
                        accepted_epoch: 0,
                        out: FrameBuf::new(SessionId(0)),
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
                self.on_frame(peer, bytes, clock);
                // Encode the replies while they are hot in cache, rather than letting the
                // engine's queue grow over the whole poll round.
                self.route_engine_outputs();
            }
        }
    }

    fn on_frame(&mut self, peer_id: PeerId, bytes: &[u8], clock: Clock) {
        let now = clock.now;
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
        let expected = peer.session();
        if frame.session_id() != expected {
            // Never act on a frame that names another session: no peer can touch another
            // node's state, even by replaying its session id.
            self.counters.foreign_session_frames += 1;
            tracing::debug!(peer = peer_id.0, "frame for a foreign session dropped");
            return;
        }
        let live_session = match &peer.state {
            PeerState::Live { session, .. } => Some(*session),
            _ => None,
        };
        if live_session.is_some() && frame.epoch() < peer.accepted_epoch {
            self.counters.stale_epoch_frames += 1;
            tracing::debug!(
                peer = peer_id.0,
                epoch = frame.epoch(),
                "frame of an older epoch dropped"
            );
            return;
        }
        peer.last_heard = now;
        let mut frame = frame;
        // Lock and unlock requests borrow their ranges from this reused buffer; taken out of
        // `self` for the loop so the engine can be called meanwhile.
        let mut ranges = std::mem::take(&mut self.ranges);
        while let Some(msg) = frame.next_incoming(&mut ranges) {
            // Fast path first: lock requests of a live session are nearly all the traffic.
            match (live_session, msg) {
                (
                    Some(session),
                    Ok(Incoming::Lock {
                        request_id,
                        open,
                        ranges,
                        fail_immediately,
                    }),
                ) => {
                    self.requests[0] += 1;
                    self.state.handle_lock(
                        clock.engine,
                        session,
                        request_id,
                        open,
                        ranges,
                        fail_immediately,
                    )
                }
                (
                    Some(session),
                    Ok(Incoming::Unlock {
                        request_id,
                        open,
                        ranges,
                    }),
                ) => {
                    self.requests[1] += 1;
                    self.state
                        .handle_unlock(clock.engine, session, request_id, open, ranges)
                }
                (_, Ok(msg)) => self.on_message(peer_id, msg.into_message(), clock),
                (_, Err(e)) => {
                    // Messages before the bad one were already applied; the rest of the
                    // frame cannot be trusted.
                    self.counters.malformed_frames += 1;
                    tracing::debug!(peer = peer_id.0, %e, "malformed message; rest of frame dropped");
                    break;
                }
            }
        }
        self.ranges = ranges;
    }

    fn on_message(&mut self, peer_id: PeerId, msg: Message, clock: Clock) {
        let now = clock.now;
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let live_session = match &peer.state {
            PeerState::Live { session, .. } => Some(*session),
            _ => None,
        };
        if matches!(peer.state, PeerState::Standby { .. }) {
            self.on_standby_message(peer_id, msg, now);
            return;
        }
        let msg = match (live_session, msg) {
            (Some(session), Message::Request { request_id, body }) => {
                self.requests[request_kind(&body)] += 1;
                self.state.handle(clock.engine, session, request_id, body);
                return;
            }
            (Some(session), Message::OutputsReceived { seq }) => {
                self.state.outputs_received(clock.engine, session, seq);
                return;
            }
            (Some(_), Message::MemberQuery { node }) => {
                let has_session = self.has_session(&node);
                self.push(peer_id, Message::MemberState { node, has_session });
                return;
            }
            (Some(_), Message::StatusQuery) => {
                let mut text = render_status(
                    self.state.engine(),
                    &self.node_names(),
                    &self.counters,
                    self.fabric.as_ref(),
                );
                if let Some(ha) = &self.ha {
                    text.push_str(&ha.status(&self.state));
                }
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
        let next = self.on_control_message(peer_id, state, msg, clock);
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
        clock: Clock,
    ) -> PeerState {
        match (state, msg) {
            (PeerState::New, Message::ClientHello { .. }) if !self.serving() => {
                // A standby (or a fenced primary) takes no node sessions: the node tries the
                // next lock-manager address it knows.
                self.reject(peer_id, RejectReason::NotPrimary);
                PeerState::New
            }
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
                    resume: None,
                }
            }
            (
                PeerState::Challenged {
                    node_name,
                    client_nonce,
                    server_nonce,
                    session,
                    resume: None,
                },
                Message::ResumeSession {
                    session_id,
                    received,
                },
            ) => PeerState::Challenged {
                node_name,
                client_nonce,
                server_nonce,
                session,
                resume: Some((session_id, received)),
            },
            (
                PeerState::Challenged {
                    node_name,
                    client_nonce,
                    server_nonce,
                    session,
                    resume,
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
                let session = match resume {
                    None => {
                        tracing::info!(peer = peer_id.0, node = %node_name, session = session.0, "session accepted");
                        self.state.open_session(clock.engine, session, &node_name);
                        session
                    }
                    Some((old, received)) => match self.resume_session(old, &node_name, received) {
                        Ok(queued) => {
                            tracing::info!(peer = peer_id.0, node = %node_name, session = old.0,
                                resent = queued, "session resumed");
                            old
                        }
                        Err(why) => {
                            tracing::warn!(peer = peer_id.0, node = %node_name, session = old.0,
                                %why, "session cannot be resumed");
                            self.reject(peer_id, RejectReason::SessionLost);
                            return PeerState::New;
                        }
                    },
                };
                self.sessions.insert(session, peer_id);
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
                // The acceptance travels alone: the node's handshake reads one message per
                // frame, and a resumed session's resent outputs follow at once.
                let epoch = self.frame_epoch();
                if let Some(peer) = self.peers.get_mut(&peer_id) {
                    peer.accepted_epoch = epoch;
                    peer.out.set_epoch(epoch);
                    peer.out.set_session_id(session);
                    peer.backlog.push_back(peer.out.finish().to_vec());
                    peer.out.clear();
                }
                PeerState::Live { session, node_name }
            }
            (live @ PeerState::Live { .. }, Message::Heartbeat { seq }) => {
                // The acknowledgement renews the node's lease: only from a replica that
                // cannot have been replaced meanwhile.
                if self.may_renew_node_leases(clock.now) {
                    self.push(peer_id, Message::HeartbeatAck { seq });
                }
                live
            }
            (PeerState::Live { session, node_name }, Message::Goodbye) => {
                self.counters.sessions_closed += 1;
                self.to_close.push(peer_id);
                if self.state.replica().is_some() {
                    // An orderly goodbye ends the session at once (a lost connection only
                    // detaches it, for the node to resume).
                    tracing::info!(node = %node_name, session = session.0, "session ended; releasing its state");
                    self.sessions.remove(&session);
                    self.route_cache = None;
                    self.state.end_session(clock.engine, session);
                    return PeerState::New;
                }
                PeerState::Live { session, node_name }
            }
            (
                PeerState::Live { session, node_name },
                Message::ReplicaAttach {
                    epoch,
                    incarnation,
                    address,
                },
            ) => self.on_replica_attach(
                peer_id,
                session,
                node_name,
                (epoch, incarnation, address),
                clock,
            ),
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

    /// Whether node `node` holds a session here: a connected one, or (on a promoted standby)
    /// one detached and still within its lease, which it may resume.
    fn has_session(&self, node: &str) -> bool {
        self.node_names().iter().any(|(_, n)| n == node)
            || self.state.replica().is_some_and(|r| {
                self.detached
                    .keys()
                    .any(|s| r.session_node(*s) == Some(node))
            })
    }

    /// Continues a session of a replicated lock manager for the node that owns it.
    fn resume_session(
        &mut self,
        session: SessionId,
        node_name: &str,
        received: u64,
    ) -> Result<usize, String> {
        if let Some(&old_peer) = self.sessions.get(&session) {
            // The node's old connection is still open here (it noticed the loss first):
            // the new connection replaces it.
            if let Some(old) = self.peers.get_mut(&old_peer) {
                if matches!(&old.state, PeerState::Live { node_name: n, .. } if n == node_name) {
                    old.state = PeerState::New;
                    self.to_close.push(old_peer);
                } else {
                    return Err("session belongs to another connection".into());
                }
            }
            self.sessions.remove(&session);
            self.route_cache = None;
        }
        let Some(replica) = self.state.replica_mut() else {
            return Err("this lock manager keeps no sessions across connections".into());
        };
        let queued = replica
            .resume(session, node_name, received)
            .map_err(|e| e.to_string())?;
        self.detached.remove(&session);
        Ok(queued)
    }

    pub(crate) fn reject(&mut self, peer_id: PeerId, reason: RejectReason) {
        self.push(peer_id, Message::SessionRejected { reason });
        self.to_close.push(peer_id);
    }

    /// Drops a peer and, if it had a session, releases everything the session held.
    fn forget_peer(&mut self, peer_id: PeerId, now: Instant) {
        if let Some(peer) = self.peers.remove(&peer_id) {
            self.route_cache = None;
            match peer.state {
                PeerState::Live { session, node_name } => {
                    self.sessions.remove(&session);
                    if let Some(r) = self.state.replica_mut() {
                        tracing::info!(node = %node_name, session = session.0, "node connection lost; session kept for it to resume");
                        r.detach(session);
                        self.detached.insert(session, now);
                    } else {
                        tracing::info!(node = %node_name, session = session.0, "session ended; releasing its state");
                        let t = self.engine_time(now);
                        self.state.end_session(t, session);
                    }
                }
                PeerState::Standby { session, name } => {
                    self.sessions.remove(&session);
                    self.standby_gone(&name, now);
                }
                _ => {}
            }
        }
    }

    /// A loop round starts at `now`; the previous one meant to wait at most `planned_wait`
    /// after it. Records a stall of this process (see `stalls`).
    fn note_round_start(&mut self, now: Instant, planned_wait: Duration) {
        let Some(stall) = self.stalls.round_starts(now, planned_wait) else {
            return;
        };
        // Worth an operator's attention when it ate a good part of the failure-detection
        // timeout: a stall like it on one replica alone would fail the pair over.
        match &self.ha {
            Some(ha) if stall >= ha.failover() / 4 => tracing::warn!(
                ?stall,
                failover = ?ha.failover(),
                "this lockmgrd did not run for a while (descheduled or paused); the partner's \
                 silence during it is not held against it"
            ),
            _ => tracing::debug!(?stall, "loop stalled"),
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
            // The CLOCK_MONOTONIC stamp orders this against the node's own fencing in tests.
            tracing::warn!(
                peer = peer.0,
                monotonic_ns = lockmgr_transport::sys::monotonic_ns(),
                "peer silent past its liveness lease; expiring"
            );
            self.counters.sessions_expired += 1;
            self.to_close.push(peer);
        }
        // Detached sessions whose node did not come back within its lease.
        let gone: Vec<SessionId> = self
            .detached
            .iter()
            .filter(|(_, since)| now.duration_since(**since) > self.liveness)
            .map(|(s, _)| *s)
            .collect();
        if !gone.is_empty() && self.serving() {
            let t = self.engine_time(now);
            for session in gone {
                tracing::warn!(
                    session = session.0,
                    monotonic_ns = lockmgr_transport::sys::monotonic_ns(),
                    "detached session not resumed within its lease; releasing its state"
                );
                self.detached.remove(&session);
                self.counters.sessions_expired += 1;
                self.state.end_session(t, session);
            }
        }
    }

    /// What a metrics scrape reports (crate::metrics).
    fn metrics_snapshot(&self) -> Snapshot {
        let replica = self.state.replica().map(|r| ReplicaView {
            role: match r.role() {
                ReplicaRole::Primary => "primary",
                ReplicaRole::Standby => "standby",
                _ => "deposed",
            },
            epoch: r.epoch().0,
            lag: r.replication_lag(),
            standby_attached: self.ha.as_ref().is_some_and(|h| h.standby.is_some()),
        });
        Snapshot {
            stats: self.state.engine().stats(),
            counters: self.counters,
            fabric: self.fabric,
            nodes_connected: self
                .peers
                .values()
                .filter(|p| matches!(p.state, PeerState::Live { .. }))
                .count(),
            requests: self.requests,
            replies: self.replies,
            notifications: self.notifications,
            replica,
            failovers: self.failovers,
            loop_stalls: Some(self.stalls.lengths()),
        }
    }

    pub(crate) fn route_engine_outputs(&mut self) {
        while let Some(out) = self.state.poll_output() {
            let session = match &out {
                Output::Reply { session, .. } | Output::Notify { session, .. } => *session,
            };
            let peer_id = match self.route_cache {
                Some((s, p)) if s == session => p,
                _ => match self.sessions.get(&session) {
                    Some(&p) => {
                        self.route_cache = Some((session, p));
                        p
                    }
                    None => continue,
                },
            };
            let Some(peer) = self.peers.get_mut(&peer_id) else {
                continue;
            };
            // Encoded straight from the output: no `Message` to build, move and drop.
            match &out {
                Output::Reply { request, reply, .. } => {
                    self.replies += 1;
                    encode_to(&mut self.dirty, peer_id, peer, |f| {
                        f.push_reply(*request, reply)
                    });
                }
                Output::Notify { notification, .. } => {
                    self.notifications += 1;
                    encode_to(&mut self.dirty, peer_id, peer, |f| {
                        f.push_notify(notification)
                    });
                }
            }
        }
    }
}

/// Encodes `msg` into the peer's next frame (a full frame moves to the backlog) and marks the
/// peer dirty if it had nothing to send.
pub(crate) fn push_to(dirty: &mut Vec<PeerId>, peer_id: PeerId, peer: &mut Peer, msg: &Message) {
    encode_to(dirty, peer_id, peer, |f| f.push(msg));
}

/// [`push_to`] with the encoding step given: `push` appends one message to a frame, and on
/// `FrameFull` is called again on a fresh frame.
#[inline]
fn encode_to(
    dirty: &mut Vec<PeerId>,
    peer_id: PeerId,
    peer: &mut Peer,
    push: impl Fn(&mut FrameBuf) -> Result<(), EncodeError>,
) {
    if !peer.has_output() {
        dirty.push(peer_id);
    }
    match push(&mut peer.out) {
        Ok(()) => {}
        Err(EncodeError::FrameFull) => {
            peer.backlog.push_back(peer.out.finish().to_vec());
            peer.out.clear();
            if let Err(e) = push(&mut peer.out) {
                tracing::error!(?e, peer = peer_id.0, "cannot encode message; dropped");
            }
        }
        Err(e) => {
            // A message that cannot be encoded is a bug in this process, not input from
            // outside: log it and drop that message only.
            tracing::error!(?e, peer = peer_id.0, "cannot encode message; dropped");
        }
    }
}

/// The `kind` label of a request (index into `crate::metrics::REQUEST_KINDS`).
fn request_kind(r: &lockmgr_engine::Request) -> usize {
    use lockmgr_engine::Request as R;
    match r {
        R::Lock { .. } => 0,
        R::Unlock { .. } => 1,
        R::Open(_) => 2,
        R::Close { .. } => 3,
        R::SetDeletePending { .. } => 4,
        R::Cancel { .. } => 5,
        R::CheckIo { .. } => 6,
        R::OplockBreakAck { .. } | R::LeaseBreakAck { .. } => 7,
        R::CheckIoGrant { .. } | R::IoRecallAck { .. } => 8,
        _ => 9,
    }
}
