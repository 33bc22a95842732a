//! The cluster lock service: every share-mode, byte-range, oplock and lease decision of this
//! node goes to one lockmgrd shared by all nodes ([`ClusterLocks`]), through the node's single
//! lockmgrd session multiplexed over its SMB connections
//! ([`lockmgr_client::mux::NodeSessions`]).
//!
//! Requests are synchronous round trips made by the worker thread that needs the answer, and the
//! node's workers have theirs in flight together ([`SharedNodeSessions`]): a worker lets go of
//! the session while it waits, and whichever waiter reads the transport hands each reply to its
//! own waiter. What lockmgrd sends on its own (breaks caused by other nodes' opens, completions
//! of blocking locks and deferred creates) is picked up by a pump thread ([`Pump`]) that sleeps
//! on the session's fd and runs [`Shared::lock_tick`], so it reaches the owning connection at
//! once rather than on the workers' timer.
//!
//! Wake-ups: the shared-memory transport only rings the session fd while the session is armed,
//! and any read of the session (a worker's request, a worker's timer tick) disarms it. So every
//! use of the session by a thread other than the pump ends with [`rearm`], and when frames keep
//! arriving so that it cannot re-arm, it rings the pump's own doorbell ([`PumpBell`]) instead of
//! leaving the pump asleep on a silent fd. The pump's `PUMP_MAX_SLEEP` is then only a safety
//! net; each time it expires with frames waiting is a lost wake-up, counted in [`PumpStats`] and
//! logged as a warning.
//!
//! While lockmgrd is unreachable the node keeps serving: lock requests are answered with
//! `STATUS_REQUEST_NOT_ACCEPTED` and the session is retried in the background (NodeSessions).
//!
//! Fencing: the node holds a lease on its grants, renewed by every heartbeat lockmgrd
//! acknowledges (rule in `lockmgr_client::LEASE_DRIFT_PPM`). When it runs out, before
//! lockmgrd may expire the session, the session is dropped: every connection holding lock state
//! in it goes (`take_lost_connections`, `Event::LockStateLost`), lock requests fail until a
//! new session is up, [`LockService::fence_epoch`] moves on (cached grants check it), and the
//! pump reconnects when lockmgrd answers again. The pump sleeps no longer than the lease
//! (`NodeSessions::poll_timeout`), so it is awake to fence in time.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockmgr_client::mux::{NodeSessions, SharedNodeSessions};
use lockmgr_client::{
    connect as connect_transport, ClientError, ClientOptions, ClusterKey, LockClient, ResumePoint,
    TransportSpec,
};
use lockmgr_proto::RejectReason;
use lockmgr_rdma::{DeviceConfig, RdmaConfig};
use lockmgr_transport::eth::{EthConfig, MacAddr};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::{sys, ClientTransport, SpinConfig};

use crate::config::{LockTransport, LockmgrConfig};
use crate::locking::{
    LockService, NodeSession, Notification, Reply, Request, RequestId, SessionId,
};
use crate::shared::Shared;

/// Any lockmgr client transport, chosen from the configuration at run time.
pub type Transport = Box<dyn ClientTransport>;

type Nodes = Arc<SharedNodeSessions<Transport>>;

/// Handshake limit of one connection attempt.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pump never sleeps longer than this, so shutdown is noticed promptly. A safety net only:
/// frames from lockmgrd wake the pump through the session fd or its doorbell.
const PUMP_MAX_SLEEP: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("[lockmgr] transport = \"embedded\" needs no cluster lock service")]
    Embedded,
    #[error("[lockmgr] {0}")]
    Config(String),
    #[error("cluster key: {0}")]
    Key(#[from] lockmgr_proto::KeyError),
    #[error("lockmgr pump doorbell: {0}")]
    Bell(std::io::Error),
    #[error("lockmgr reader doorbell: {0}")]
    ReaderBell(std::io::Error),
}

fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "smbd".into())
}

/// [`LockService`] over a remote lockmgrd.
pub struct ClusterLocks {
    nodes: Nodes,
    bell: Arc<PumpBell>,
    stats: Arc<PumpStats>,
    /// The session's fence epoch ([`LockService::fence_epoch`]), read without the session lock.
    fence_epoch: Arc<AtomicU64>,
    /// When the node's lease runs out, as the pump last saw it ([`LockService::lease_live`]).
    lease: Arc<LeaseSeen>,
}

/// The pump's handle on the node session (see the module documentation).
pub struct Pump {
    nodes: Nodes,
    bell: Arc<PumpBell>,
    stats: Arc<PumpStats>,
    lease: Arc<LeaseSeen>,
}

/// The end of the node's lockmgrd lease as last seen, readable without the session lock (the
/// witness asks every heartbeat period, and a worker may hold the session for a round trip).
/// The pump records it on every wake-up; it wakes at least once per lockmgrd heartbeat and
/// when the lease runs out (`NodeSessions::poll_timeout`), so a renewed lease is seen within
/// a heartbeat of its acknowledgement.
struct LeaseSeen {
    base: Instant,
    /// Nanoseconds after `base`; 0: never held one.
    until_ns: AtomicU64,
}

impl LeaseSeen {
    fn new() -> LeaseSeen {
        LeaseSeen {
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
        }
    }

    /// Record what the session says now: its lease's end, when it has a connected session.
    fn record(&self, nodes: &NodeSessions<Transport>) {
        if !nodes.is_connected() {
            return;
        }
        if let Some(end) = nodes.lease_expiry() {
            let ns = end.saturating_duration_since(self.base).as_nanos();
            self.until_ns.store(
                u64::try_from(ns).unwrap_or(u64::MAX).max(1),
                Ordering::Release,
            );
        }
    }

    fn live_at(&self, now: Instant) -> bool {
        match self.until_ns.load(Ordering::Acquire) {
            0 => false,
            ns => self.base + Duration::from_nanos(ns) > now,
        }
    }
}

/// What the pump saw, for logs and tests.
#[derive(Debug, Default)]
pub struct PumpStats {
    /// Times the pump's safety-net timeout expired while frames from lockmgrd were waiting
    /// unannounced: each one is a lost wake-up (a notification delivered up to
    /// `PUMP_MAX_SLEEP` late). Stays 0 when the wake-up protocol holds.
    pub lost_wakeups: AtomicU64,
    /// Times the pump's doorbell was rung: a user of the session could not leave it armed
    /// (frames kept arriving), or a status query left events for the pump to route.
    pub bell_rings: AtomicU64,
    /// lockmgrd sessions started: the first and each new one after the session was lost.
    pub sessions_started: AtomicU64,
    /// Sessions resumed on a replica after the one serving them stopped answering.
    pub resumes: AtomicU64,
}

/// An eventfd the pump sleeps on next to the session fd: rung by a worker that leaves the
/// session unarmed (see [`rearm`]) so the pump takes in what is waiting.
pub struct PumpBell {
    fd: OwnedFd,
}

impl PumpBell {
    fn new() -> std::io::Result<PumpBell> {
        Ok(PumpBell {
            fd: sys::eventfd()?,
        })
    }

    fn ring(&self) {
        // Fails only when the counter is saturated: the bell is already ringing.
        let _ = sys::eventfd_signal(self.fd.as_raw_fd());
    }

    /// Resets the bell; called by the pump before it takes in frames, so a ring that comes
    /// later wakes the next sleep.
    fn drain(&self) {
        sys::eventfd_drain(self.fd.as_raw_fd());
    }
}

impl ClusterLocks {
    /// Builds the node's lockmgrd session from `[lockmgr]`. Configuration errors are returned;
    /// an unreachable lockmgrd is not an error (it is logged and retried).
    pub fn from_config(cfg: &LockmgrConfig) -> Result<(ClusterLocks, Pump), ClusterError> {
        let missing = |what: &str| ClusterError::Config(format!("`{what}` is needed"));
        let connect = cfg.connect.clone().ok_or_else(|| missing("connect"))?;
        let key_file = cfg
            .cluster_key_file
            .clone()
            .ok_or_else(|| missing("cluster_key_file"))?;
        let key = ClusterKey::from_file(&key_file)?;
        let options = ClientOptions {
            node_name: cfg.node_name.clone().unwrap_or_else(default_node_name),
            key,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        let spin = SpinConfig::adaptive(Duration::from_micros(cfg.spin_us));
        // Several addresses: the replicas of a replicated lock manager. The session must move
        // to the new primary within a failover, so dead peers are noticed in fractions of a
        // second instead of the single-lockmgrd defaults.
        let addresses: Vec<String> = connect
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        let replicated = addresses.len() > 1;
        let failover = Duration::from_millis(cfg.failover_timeout_ms);
        let reliable = if replicated {
            ReliableConfig {
                spin,
                connect_timeout: failover / 2,
                // Frequent keepalives: a replica that died is then told by the kernel
                // (ECONNREFUSED on the connected socket) within a few ms, not by silence.
                keepalive: Some((failover / 4).min(Duration::from_millis(5))),
                peer_timeout: failover,
                ..ReliableConfig::default()
            }
        } else {
            ReliableConfig {
                spin,
                connect_timeout: HANDSHAKE_TIMEOUT,
                ..ReliableConfig::default()
            }
        };
        let specs = addresses
            .iter()
            .map(|a| transport_spec(cfg, a, spin, reliable))
            .collect::<Result<Vec<_>, _>>()?;
        if specs.is_empty() {
            return Err(missing("connect"));
        }
        let stats = Arc::new(PumpStats::default());
        let connect_any = {
            let stats = Arc::clone(&stats);
            let specs = specs.clone();
            let options = options.clone();
            // The replica that took the session last; after a failure the others are tried
            // first (it is most likely the one that died).
            let current = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            move |resume: Option<ResumePoint>| -> Result<LockClient<Transport>, ClientError> {
                let mut last = ClientError::SessionEnded;
                let start = current.load(Ordering::Relaxed) + usize::from(resume.is_some());
                for i in (0..specs.len()).map(|k| (start + k) % specs.len()) {
                    let attempt = connect_transport(&specs[i])
                        .map_err(|e| ClientError::Transport(e.into()))
                        .and_then(|t| match resume {
                            None => LockClient::connect(t, &options),
                            Some(point) => LockClient::resume(t, &options, point),
                        });
                    match attempt {
                        Ok(c) => {
                            current.store(i, Ordering::Relaxed);
                            let counter = match resume {
                                None => &stats.sessions_started,
                                Some(_) => &stats.resumes,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            return Ok(c);
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        };
        let first = connect_any.clone();
        let connector: lockmgr_client::mux::Connector<Transport> = Box::new(move || first(None));
        tracing::info!(
            transport = ?cfg.transport,
            connect = cfg.connect.as_deref().unwrap_or(""),
            replicas = addresses.len(),
            "using the cluster lock manager"
        );
        let timeout = if replicated {
            failover.min(Duration::from_millis(cfg.request_timeout_ms))
        } else {
            Duration::from_millis(cfg.request_timeout_ms)
        };
        let (locks, pump) = Self::build_with(connector, timeout, Duration::ZERO, stats)?;
        if replicated {
            let resume_any = connect_any;
            // A failover takes the standby's failure timeout plus an etcd update: keep
            // trying every replica for a few failover periods, but never past the node's
            // lease (from then on the lock manager may give the session's state to others:
            // the node is fenced instead, see lockmgr_client::LEASE_DRIFT_PPM).
            let budget = failover * 8;
            locks
                .nodes
                .lock()
                .set_resumer(Box::new(move |point, lease_end| {
                    // An attempt at a silent replica takes up to `connect_timeout` (failover / 2):
                    // none starts that could end past the lease.
                    let deadline = (std::time::Instant::now() + budget)
                        .min(lease_end.checked_sub(failover / 2).unwrap_or(lease_end));
                    loop {
                        match resume_any(Some(point)) {
                            Ok(c) => return Ok(c),
                            Err(e @ ClientError::Rejected(RejectReason::SessionLost)) => {
                                return Err(e)
                            }
                            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                            // A standby being promoted refuses (NotPrimary) until etcd has
                            // named it: ask again soon.
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                }));
        }
        Ok((locks, pump))
    }

    /// A cluster lock service over any connector (tests use an in-process lockmgrd).
    pub fn with_connector(
        connector: lockmgr_client::mux::Connector<Transport>,
        timeout: Duration,
    ) -> Result<(ClusterLocks, Pump), ClusterError> {
        Self::build(connector, timeout, Duration::ZERO)
    }

    fn build(
        connector: lockmgr_client::mux::Connector<Transport>,
        timeout: Duration,
        spin: Duration,
    ) -> Result<(ClusterLocks, Pump), ClusterError> {
        Self::build_with(connector, timeout, spin, Arc::new(PumpStats::default()))
    }

    fn build_with(
        connector: lockmgr_client::mux::Connector<Transport>,
        timeout: Duration,
        spin: Duration,
        stats: Arc<PumpStats>,
    ) -> Result<(ClusterLocks, Pump), ClusterError> {
        let bell = Arc::new(PumpBell::new().map_err(ClusterError::Bell)?);
        let sessions =
            SharedNodeSessions::new(connector, timeout, spin).map_err(ClusterError::ReaderBell)?;
        if sessions.lock().is_connected() {
            tracing::info!("lockmgrd session established");
        }
        let fence_epoch = sessions.lock().fence_epoch();
        let lease = Arc::new(LeaseSeen::new());
        lease.record(&sessions.lock());
        let nodes = Arc::new(sessions);
        Ok((
            ClusterLocks {
                nodes: Arc::clone(&nodes),
                bell: Arc::clone(&bell),
                stats: Arc::clone(&stats),
                fence_epoch,
                lease: Arc::clone(&lease),
            },
            Pump {
                nodes,
                bell,
                stats,
                lease,
            },
        ))
    }

    /// The pump's counters (shared with the [`Pump`] built with this service).
    pub fn pump_stats(&self) -> Arc<PumpStats> {
        Arc::clone(&self.stats)
    }

    /// The lock manager's operator view, through this node's session.
    pub fn status(&self) -> Result<String, ClientError> {
        let status = self.nodes.status();
        // Events read while waiting for the status text are queued in the session, and this
        // caller does not route them: the pump must.
        rearm(&self.nodes);
        self.ring_pump();
        status
    }

    /// Runs `f` on the node session from a worker and leaves the session so that the pump
    /// hears the next frame: armed, or, when frames keep arriving, with the pump's bell rung.
    fn with_session<R>(&self, f: impl FnOnce(&SharedNodeSessions<Transport>) -> R) -> R {
        let r = f(&self.nodes);
        if !rearm(&self.nodes) {
            self.ring_pump();
        }
        r
    }

    fn ring_pump(&self) {
        self.stats.bell_rings.fetch_add(1, Ordering::Relaxed);
        self.bell.ring();
    }
}

/// Re-arms the session fd after a worker used the session. Reading from the session disarms the
/// shared-memory doorbell; if the pump is asleep it would then not be woken by the next break.
/// When frames are already waiting they are taken in now (and routed by the caller). False when
/// frames kept arriving and the session is left unarmed: the caller must wake the pump.
fn rearm(nodes: &SharedNodeSessions<Transport>) -> bool {
    let mut n = nodes.lock();
    for _ in 0..4 {
        if n.arm() {
            return true;
        }
        if !n.is_connected() {
            // The pump's sleep is bounded by the reconnect interval (`poll_timeout`).
            return true;
        }
        n.tick();
    }
    false
}

impl LockService for ClusterLocks {
    fn open_session(&self, _session: SessionId) {
        // lockmgrd knows nodes, not connections: nothing to announce.
    }

    fn end_session(&self, session: SessionId) {
        self.with_session(|n| n.end_connection(session));
    }

    fn request(&self, session: SessionId, id: RequestId, req: Request) -> Reply {
        self.with_session(|n| n.request(session, id, req))
    }

    fn poll_event(&self) -> Option<(SessionId, Notification)> {
        self.nodes.poll_event()
    }

    fn tick(&self) {
        // Workers tick too (their 1 s timer), and a tick reads the session: without the
        // re-arm the pump would sleep on a disarmed fd until its safety-net timeout.
        self.with_session(|n| n.tick());
    }

    fn take_lost_connections(&self) -> Vec<SessionId> {
        self.nodes.take_lost_connections()
    }

    fn fence_epoch(&self) -> u64 {
        self.fence_epoch.load(Ordering::Acquire)
    }

    fn session_counts(&self) -> Option<(u64, u64, u64)> {
        Some((
            self.stats.sessions_started.load(Ordering::Relaxed),
            self.stats.resumes.load(Ordering::Relaxed),
            // Bumped once per fencing (lockmgr_client::mux::NodeSessions::fence_epoch).
            self.fence_epoch.load(Ordering::Acquire),
        ))
    }

    fn one_session_per_node(&self) -> bool {
        true
    }

    fn lease_live(&self, now: Instant) -> bool {
        self.lease.live_at(now)
    }

    fn node_session(&self, node: &str) -> NodeSession {
        let answer = self.nodes.has_session(node);
        // As for `status`: events read while waiting for the answer are the pump's to route.
        rearm(&self.nodes);
        self.ring_pump();
        match answer {
            Ok(true) => NodeSession::Held,
            Ok(false) => NodeSession::Gone,
            Err(e) => {
                tracing::debug!(node, %e, "lockmgrd did not say whether the node has a session");
                NodeSession::Unknown
            }
        }
    }
}

impl Pump {
    /// Runs until `shared.shutdown`: sleeps on the lockmgrd session's fd and its own doorbell,
    /// and delivers what arrives (breaks, completions) to the connections.
    pub fn run(self, shared: Arc<Shared>) {
        while !shared.shutdown.load(Ordering::Relaxed) {
            let (fd, armed, sleep) = {
                let mut n = self.nodes.lock();
                let armed = n.arm();
                self.lease.record(&n);
                (n.raw_fd(), armed, n.poll_timeout().min(PUMP_MAX_SLEEP))
            };
            if armed {
                let woke = wait_readable(fd, self.bell.fd.as_raw_fd(), sleep);
                // Before the tick: a ring that comes after it is kept for the next sleep.
                self.bell.drain();
                if woke == Wake::Timeout && !self.nodes.lock().arm() {
                    // Frames were waiting and nothing announced them.
                    let lost = self.stats.lost_wakeups.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        lost_wakeups = lost,
                        "lockmgr pump: safety-net timeout found frames waiting (a lost wake-up)"
                    );
                }
            }
            shared.lock_tick();
        }
        tracing::info!(
            lost_wakeups = self.stats.lost_wakeups.load(Ordering::Relaxed),
            bell_rings = self.stats.bell_rings.load(Ordering::Relaxed),
            requests_in_flight_peak = self.nodes.in_flight_peak(),
            reader_lost_wakeups = self.nodes.lost_wakeups(),
            "lockmgr pump stopped"
        );
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// The session fd or the bell is readable (or poll failed: the caller ticks anyway).
    Ready,
    Timeout,
}

/// Sleeps until the session fd (if any) or the pump's bell is readable, or `timeout`.
fn wait_readable(
    session: Option<std::os::fd::RawFd>,
    bell: std::os::fd::RawFd,
    timeout: Duration,
) -> Wake {
    // A negative fd is ignored by poll: no session (lockmgrd unreachable) sleeps on the bell.
    let mut pfds = [
        libc::pollfd {
            fd: session.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: bell,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // A stale session fd (the session was replaced meanwhile) makes poll return at once with
    // POLLNVAL, which only costs one extra loop turn.
    let timeout = timeout.max(Duration::from_millis(1));
    let start = std::time::Instant::now();
    let r = sys::poll_fds(&mut pfds, Some(timeout));
    match r {
        // poll_fds reports EINTR as 0 ready fds too: only a sleep that lasted its whole
        // timeout is a timeout (the caller counts those that find frames as lost wake-ups).
        Ok(0) if start.elapsed() + Duration::from_millis(1) < timeout => Wake::Ready,
        Ok(0) => Wake::Timeout,
        Err(_) => {
            // EINTR or a transient failure: avoid a busy loop, the caller ticks anyway.
            std::thread::sleep(Duration::from_millis(1));
            Wake::Ready
        }
        Ok(_) => Wake::Ready,
    }
}

/// How to reach one lockmgrd address of `[lockmgr] connect`.
fn transport_spec(
    cfg: &LockmgrConfig,
    connect: &str,
    spin: SpinConfig,
    reliable: ReliableConfig,
) -> Result<TransportSpec, ClusterError> {
    let missing = |what: &str| ClusterError::Config(format!("`{what}` is needed"));
    let socket_addr = |what: &str| -> Result<std::net::SocketAddr, ClusterError> {
        connect
            .parse()
            .map_err(|_| ClusterError::Config(format!("connect = {connect:?} is not {what}")))
    };
    let mac = || -> Result<MacAddr, ClusterError> {
        connect.parse().map_err(|_| {
            ClusterError::Config(format!("connect = {connect:?} is not a MAC address"))
        })
    };
    let eth = || -> Result<EthConfig, ClusterError> {
        Ok(EthConfig {
            interface: cfg.interface.clone().ok_or_else(|| missing("interface"))?,
            ethertype: cfg.ethertype,
        })
    };
    Ok(match cfg.transport {
        LockTransport::Embedded => return Err(ClusterError::Embedded),
        LockTransport::Shm => TransportSpec::Shm {
            path: PathBuf::from(connect),
            spin,
            timeout: HANDSHAKE_TIMEOUT,
        },
        LockTransport::Udp => TransportSpec::Udp {
            server: socket_addr("ADDR:PORT")?,
            cfg: reliable,
        },
        LockTransport::Afpacket => TransportSpec::Afpacket {
            eth: eth()?,
            server: mac()?,
            cfg: reliable,
        },
        LockTransport::Afxdp => TransportSpec::Afxdp {
            eth: eth()?,
            xdp: Default::default(),
            server: mac()?,
            cfg: reliable,
        },
        LockTransport::Rdma => TransportSpec::Rdma {
            server: socket_addr("ADDR:PORT")?,
            cfg: RdmaConfig {
                device: DeviceConfig {
                    device: cfg.rdma_device.clone(),
                    port: cfg.rdma_port,
                    gid_index: cfg.gid_index,
                },
                spin,
                handshake_timeout: HANDSHAKE_TIMEOUT,
                ..RdmaConfig::default()
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"short").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let e = ClusterKey::from_file(&p)
            .map_err(ClusterError::from)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [7u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let e = ClusterKey::from_file(&p)
            .map_err(ClusterError::from)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
