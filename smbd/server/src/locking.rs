//! All lock decisions (share modes, delete-pending, byte-range locks, oplocks, leases) go
//! through [`LockService`], so the in-process implementation can be swapped for a client of a
//! remote lockmgrd without touching the SMB code.
//!
//! The vocabulary is the lock manager's (`lockmgr_engine::types`). Each SMB connection is one
//! lock session ([`SessionId`] = the connection's global id). Immediate answers are returned
//! from [`LockService::request`]; unsolicited notifications (oplock/lease breaks) and the
//! completions of deferred requests are drained with [`LockService::poll_event`] and routed by
//! the server to the owning connection's event loop.

use std::collections::VecDeque;

/// The one GENERIC_* mapping (the file-object generic mapping of MS-DTYP 2.4.3), the engine's:
/// smbd's access checks and lockmgrd's sharing checks see the same rights.
pub use lockmgr_engine::map_generic;
pub use lockmgr_engine::types::access as access_bits;
pub use lockmgr_engine::types::share as share_bits;
pub use lockmgr_engine::types::{
    watched, ClientGuid, DirChange, DurableRequest, FileId, FileUsage, Lease, LeaseKey, LeaseState,
    LockRange, Notification, OpenId, OpenRequest, OplockGrant, OplockLevel, OplockRequest, Reply,
    Request, RequestId, SessionId, Status, DIR_CHANGES_LOST, DIR_DELETE_PENDING,
    MAX_DIR_CHANGE_NAME,
};

/// Another node's standing with the lock manager ([`LockService::node_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSession {
    /// No lock manager to ask (the in-process service).
    NoLockManager,
    /// It holds a session: connected, or detached within its lease.
    Held,
    /// It holds none: fenced; what it was granted is gone.
    Gone,
    /// The lock manager did not answer.
    Unknown,
}

/// The lock authority as seen by smbd. Called by all workers at once: an implementation
/// synchronises itself, and one whose requests take a round trip lets other requests run
/// meanwhile.
pub trait LockService: Send + Sync {
    /// A new SMB connection (lock session) starts.
    fn open_session(&self, session: SessionId);
    /// The connection ended: release everything it held.
    fn end_session(&self, session: SessionId);
    /// One request; the answer may be `Reply::Pending`, completed later through `poll_event`.
    fn request(&self, session: SessionId, id: RequestId, req: Request) -> Reply;
    /// Next notification for some session (breaks, deferred completions).
    fn poll_event(&self) -> Option<(SessionId, Notification)>;
    /// Fire due timers (break timeouts).
    fn tick(&self) {}
    /// Connections whose lock state was lost (a remote lock manager's session dropped): the
    /// server drops them so their clients reconnect and reopen. In-process services never lose
    /// state.
    fn take_lost_connections(&self) -> Vec<SessionId> {
        Vec::new()
    }
    /// The fence epoch: bumped whenever grants made to this node stop counting (a remote lock
    /// manager's session fenced because the node's lease ran out, or lost). Whatever smbd caches
    /// on the strength of a grant (oplock / lease state, a "no byte-range locks on this file"
    /// answer) records the epoch it was granted in and is used only while this still returns
    /// it. In-process services are never fenced: always 0.
    fn fence_epoch(&self) -> u64 {
        0
    }
    /// Whether this node holds a lock manager lease at `now`: a remote lock manager heard from
    /// it within its liveness lease, so what it grants still counts. A node without one can
    /// grant nothing (its clients' state may be another node's already) and must not attract
    /// clients (the witness isolates it). In-process services: always.
    fn lease_live(&self, _now: std::time::Instant) -> bool {
        true
    }
    /// What the lock manager knows of node `node` (its `[lockmgr] node_name`): whether it
    /// still holds a session, so whether it could still serve what it served. In-process
    /// services have no other nodes: [`NodeSession::NoLockManager`].
    fn node_session(&self, _node: &str) -> NodeSession {
        NodeSession::NoLockManager
    }
    /// The service sees the whole node as one session (lockmgrd), rather than one session
    /// per connection (`EngineLocks`): per-session state such as I/O grants is the node's.
    fn one_session_per_node(&self) -> bool {
        false
    }
    /// A remote lock manager's session history for the metrics: (sessions started,
    /// sessions resumed on another replica, fencings). `None` in process.
    fn session_counts(&self) -> Option<(u64, u64, u64)> {
        None
    }
}

/// The lock service smbd uses when no lockmgrd is configured: the in-process lock engine.
pub fn default_lock_service() -> Box<dyn LockService> {
    Box::new(EngineLocks::new(lockmgr_engine::Config::default()))
}

/// The in-process lock engine (`lockmgr_engine::Engine`) behind [`LockService`]. A request
/// takes no round trip, so the engine is simply behind a mutex.
pub struct EngineLocks {
    state: std::sync::Mutex<EngineState>,
}

struct EngineState {
    engine: lockmgr_engine::Engine,
    clock: EngineClock,
    events: VecDeque<(SessionId, Notification)>,
}

/// Where [`EngineLocks`] reads the engine's time.
enum EngineClock {
    /// Nanoseconds since the service started.
    System(std::time::Instant),
    /// Nanoseconds set by the owner (simulated-time tests step it by hand).
    Manual(std::sync::Arc<std::sync::atomic::AtomicU64>),
}

impl EngineLocks {
    pub fn new(config: lockmgr_engine::Config) -> Self {
        Self::with_clock(config, EngineClock::System(std::time::Instant::now()))
    }

    /// An engine whose clock is `nanos`, moved by the caller (simulated-time tests).
    pub fn with_manual_clock(
        config: lockmgr_engine::Config,
        nanos: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Self::with_clock(config, EngineClock::Manual(nanos))
    }

    fn with_clock(config: lockmgr_engine::Config, clock: EngineClock) -> Self {
        EngineLocks {
            state: std::sync::Mutex::new(EngineState {
                engine: lockmgr_engine::Engine::new(config),
                clock,
                events: VecDeque::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EngineState> {
        // A panic while holding the lock leaves plain data that stays consistent between calls,
        // so recover it rather than poisoning every later request.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EngineState {
    fn now(&self) -> lockmgr_engine::Time {
        match &self.clock {
            EngineClock::System(start) => lockmgr_engine::Time(start.elapsed().as_nanos() as u64),
            EngineClock::Manual(nanos) => {
                lockmgr_engine::Time(nanos.load(std::sync::atomic::Ordering::SeqCst))
            }
        }
    }

    /// Move engine outputs to the event queue, returning the reply to (session, id) if seen.
    fn drain(&mut self, want: Option<(SessionId, RequestId)>) -> Option<Reply> {
        let mut mine = None;
        while let Some(out) = self.engine.poll_output() {
            match out {
                lockmgr_engine::Output::Reply {
                    session,
                    request,
                    reply,
                } => {
                    if mine.is_none() && want == Some((session, request)) {
                        mine = Some(reply);
                    } else {
                        self.events
                            .push_back((session, Notification::Completed { request, reply }));
                    }
                }
                lockmgr_engine::Output::Notify {
                    session,
                    notification,
                } => self.events.push_back((session, notification)),
            }
        }
        mine
    }
}

impl LockService for EngineLocks {
    fn open_session(&self, session: SessionId) {
        self.state().engine.open_session(session);
    }

    fn end_session(&self, session: SessionId) {
        let mut s = self.state();
        let now = s.now();
        s.engine.end_session(now, session);
        s.drain(None);
        let orphans = s.engine.take_orphaned_deletes();
        if !orphans.is_empty() {
            tracing::warn!(?orphans, "delete-pending files whose last open vanished");
        }
    }

    fn request(&self, session: SessionId, id: RequestId, req: Request) -> Reply {
        let mut s = self.state();
        let now = s.now();
        s.engine.handle(now, session, id, req);
        s.drain(Some((session, id)))
            .unwrap_or(Reply::Done(Status::Unsuccessful))
    }

    fn poll_event(&self) -> Option<(SessionId, Notification)> {
        self.state().events.pop_front()
    }

    fn tick(&self) {
        let mut s = self.state();
        let now = s.now();
        if s.engine.poll_timeout().is_some_and(|t| t <= now) {
            s.engine.handle_timeout(now);
            s.drain(None);
        }
    }
}

/// Lock-service requests by kind, counted where smbd makes them ([`crate::shared::Shared`]):
/// with a remote lockmgrd each one is a round trip, so these say how many round trips each
/// SMB operation costs. Logged when the server stops ([`RequestCounts::summary`]).
#[derive(Default)]
pub struct RequestCounts {
    counts: [std::sync::atomic::AtomicU64; RequestCounts::KINDS.len()],
}

impl RequestCounts {
    /// The request kinds, in the order of the counters.
    pub const KINDS: [&'static str; 20] = [
        "open",
        "open_durable",
        "close",
        "set_delete_pending",
        "lock",
        "unlock",
        "cancel",
        "check_io",
        "oplock_break_ack",
        "lease_break_ack",
        "break_for_rename",
        "query_usage",
        "set_durable",
        "disconnect",
        "durable_lookup",
        "reclaim",
        "watch_dir",
        "unwatch_dir",
        "dir_change",
        "other",
    ];

    fn index(req: &Request) -> usize {
        match req {
            Request::Open(_) => 0,
            Request::OpenDurable { .. } => 1,
            // A delete-on-close handle's CLOSE breaks handle caching and closes in one.
            Request::Close { .. } | Request::BreakAndClose { .. } => 2,
            Request::SetDeletePending { .. } => 3,
            Request::Lock { .. } => 4,
            Request::Unlock { .. } => 5,
            Request::Cancel { .. } => 6,
            // With or without asking for an I/O grant: the round trip of a READ/WRITE check.
            Request::CheckIo { .. } | Request::CheckIoGrant { .. } => 7,
            Request::OplockBreakAck { .. } => 8,
            Request::LeaseBreakAck { .. } => 9,
            Request::BreakForRename { .. } => 10,
            Request::QueryUsage { .. } => 11,
            Request::SetDurable { .. } => 12,
            Request::Disconnect { .. } => 13,
            Request::DurableLookup { .. } => 14,
            Request::Reclaim { .. } => 15,
            Request::WatchDir { .. } => 16,
            Request::UnwatchDir { .. } => 17,
            Request::DirChange(_) => 18,
            // `Request` is non_exhaustive: a kind added later is counted, if not by name.
            #[allow(unreachable_patterns)]
            _ => 19,
        }
    }

    pub fn count(&self, req: &Request) {
        self.counts[Self::index(req)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// (kind, requests so far) for every kind.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Self::KINDS
            .iter()
            .zip(&self.counts)
            .map(|(k, c)| (*k, c.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }

    /// The total, and "kind=n" for the kinds that were asked, for the stop log.
    pub fn summary(&self) -> (u64, String) {
        let s = self.snapshot();
        let total = s.iter().map(|(_, n)| n).sum();
        let kinds = s
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        (total, kinds)
    }
}
