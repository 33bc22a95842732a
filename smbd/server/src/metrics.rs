//! smbd's Prometheus metrics (served on `[server] metrics_listen`, see `server.rs`).
//!
//! The request path pays one relaxed atomic add into a per-worker shard (a worker thread
//! writes only its own cache lines, [`set_worker`]) plus one clock read per response chain;
//! the gauges move by the difference a connection reports after each batch of requests
//! (`Conn::sync_fds`), not per request. Everything else is read when scraped, on the HTTP
//! thread.

use std::cell::Cell;
use std::time::{Duration, Instant};

use clustersmb_metrics::LATENCY_BUCKETS;
use clustersmb_metrics::{Counter, Exposition, Gauge, Histogram, HistogramSnapshot, Kind};

/// SMB2 command names by command code (MS-SMB2 2.2.1.2), the `command` label.
pub const COMMANDS: [&str; 19] = [
    "NEGOTIATE",
    "SESSION_SETUP",
    "LOGOFF",
    "TREE_CONNECT",
    "TREE_DISCONNECT",
    "CREATE",
    "CLOSE",
    "FLUSH",
    "READ",
    "WRITE",
    "LOCK",
    "IOCTL",
    "CANCEL",
    "ECHO",
    "QUERY_DIRECTORY",
    "CHANGE_NOTIFY",
    "QUERY_INFO",
    "SET_INFO",
    "OPLOCK_BREAK",
];

/// Shards: workers beyond this share (index modulo).
const SHARDS: usize = 16;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Called once by each worker thread: its requests go to shard `index`.
pub fn set_worker(index: usize) {
    SHARD.with(|s| s.set(index % SHARDS));
}

/// One worker's request histograms, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    requests: [Histogram; COMMANDS.len()],
}

/// What a connection last added to the gauges (`Conn::sync_fds`), taken back when it goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnShare {
    pub sessions: i64,
    pub trees: i64,
    pub opens: i64,
    pub locks: i64,
}

/// The node's metrics.
pub struct SmbMetrics {
    shards: Box<[Shard]>,
    pub connections: Gauge,
    pub connections_total: Counter,
    pub sessions: Gauge,
    pub trees: Gauge,
    pub opens: Gauge,
    pub locks: Gauge,
    pub oplock_breaks: Counter,
    pub lease_breaks: Counter,
    /// Channels dropped because a break sent on them was not acknowledged by TCP in time.
    pub channel_failures: Counter,
    /// Breaks sent again on another channel of their session after their channel failed.
    pub break_retries: Counter,
    /// Connections to `rdma_proxy_socket` refused for their peer credentials.
    pub rdma_proxy_refused: Counter,
    /// Payload bytes of RDMA-channel READs/WRITEs, by [`RdmaPayload`].
    pub rdma_payload_bytes: [Counter; 4],
    /// Lock-service requests that waited for an answer, by their round-trip time.
    pub lockmgr_latency: Histogram,
}

impl Default for SmbMetrics {
    fn default() -> Self {
        SmbMetrics {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    requests: std::array::from_fn(|_| Histogram::new(LATENCY_BUCKETS)),
                })
                .collect(),
            connections: Gauge::new(),
            connections_total: Counter::new(),
            sessions: Gauge::new(),
            trees: Gauge::new(),
            opens: Gauge::new(),
            locks: Gauge::new(),
            oplock_breaks: Counter::new(),
            lease_breaks: Counter::new(),
            channel_failures: Counter::new(),
            break_retries: Counter::new(),
            rdma_proxy_refused: Counter::new(),
            rdma_payload_bytes: std::array::from_fn(|_| Counter::new()),
            lockmgr_latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

/// How the payload of an RDMA-channel READ or WRITE moved between the file and smbdirectd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RdmaPayload {
    /// A WRITE's data written to the file straight from the shared area (the file I/O's
    /// buffer is the area range smbdirectd RDMA-READ into; no copy in smbd).
    WriteArea,
    /// A WRITE's data that came on the stream (a payload frame) and was written from smbd's
    /// heap.
    WriteStream,
    /// A READ's data read from the file straight into the area range smbdirectd granted.
    ReadArea,
    /// A READ's data sent on the stream (a payload frame).
    ReadStream,
}

impl RdmaPayload {
    const ALL: [RdmaPayload; 4] = [
        RdmaPayload::WriteArea,
        RdmaPayload::WriteStream,
        RdmaPayload::ReadArea,
        RdmaPayload::ReadStream,
    ];

    fn labels(self) -> [(&'static str, &'static str); 2] {
        match self {
            RdmaPayload::WriteArea => [("op", "write"), ("via", "area")],
            RdmaPayload::WriteStream => [("op", "write"), ("via", "stream")],
            RdmaPayload::ReadArea => [("op", "read"), ("via", "area")],
            RdmaPayload::ReadStream => [("op", "read"), ("via", "stream")],
        }
    }
}

impl SmbMetrics {
    /// `n` payload bytes of an RDMA-channel READ/WRITE moved as `how` says.
    pub fn rdma_payload(&self, how: RdmaPayload, n: u64) {
        self.rdma_payload_bytes[how as usize].add(n);
    }

    /// The count of [`SmbMetrics::rdma_payload`] bytes moved as `how` says.
    pub fn rdma_payload_total(&self, how: RdmaPayload) -> u64 {
        self.rdma_payload_bytes[how as usize].get()
    }

    /// A response to `command` went out `since` after its message was received.
    #[inline]
    pub fn request_done(&self, command: u16, took: Duration) {
        let shard = SHARD.with(Cell::get);
        if let Some(h) = self
            .shards
            .get(shard)
            .and_then(|s| s.requests.get(usize::from(command)))
        {
            h.observe(took);
        }
    }

    /// Moves the gauges from a connection's last report `was` to `now`.
    pub fn report(&self, was: ConnShare, now: ConnShare) {
        if was == now {
            return;
        }
        self.sessions.add(now.sessions - was.sessions);
        self.trees.add(now.trees - was.trees);
        self.opens.add(now.opens - was.opens);
        self.locks.add(now.locks - was.locks);
    }

    /// Requests by command, summed over the shards.
    pub fn requests(&self) -> Vec<HistogramSnapshot> {
        let mut sums: Vec<HistogramSnapshot> = self.shards[0]
            .requests
            .iter()
            .map(Histogram::snapshot)
            .collect();
        for shard in &self.shards[1..] {
            for (sum, h) in sums.iter_mut().zip(&shard.requests) {
                sum.merge(&h.snapshot());
            }
        }
        sums
    }
}

/// Times a lock-service request (a lockmgrd round trip in a cluster).
pub struct Timer(Instant);

impl Timer {
    #[inline]
    pub fn start() -> Timer {
        Timer(Instant::now())
    }
    #[inline]
    pub fn stop(self, h: &Histogram) {
        h.observe(self.0.elapsed());
    }
}

/// What the scrape reads from elsewhere (the lock service, the witness).
#[derive(Debug, Default)]
pub struct Extra {
    /// Lock-service requests by kind (`crate::locking::RequestCounts::KINDS`).
    pub lock_requests: Vec<(&'static str, u64)>,
    /// Cluster lock service: sessions started (the first and every reconnect), sessions
    /// resumed on another replica (failovers), fencings.
    pub lockmgr_sessions: Option<(u64, u64, u64)>,
    /// Public addresses this node holds, when `[public_addresses]` is configured.
    pub public_addresses_held: Option<u32>,
}

/// The scrape as Prometheus text.
pub fn render(m: &SmbMetrics, extra: &Extra) -> String {
    let mut e = Exposition::new();
    let requests = m.requests();
    e.family(
        "smbd_requests_total",
        "SMB2 requests answered, by command",
        Kind::Counter,
    );
    for (name, h) in COMMANDS.iter().zip(&requests) {
        e.sample("smbd_requests_total", &[("command", name)], h.count());
    }
    e.family(
        "smbd_request_duration_seconds",
        "From receipt of the message to its response (the interim one of a request that goes async) being queued to the socket, by command",
        Kind::Histogram,
    );
    for (name, h) in COMMANDS.iter().zip(&requests) {
        e.histogram("smbd_request_duration_seconds", &[("command", name)], h);
    }
    e.family("smbd_connections", "Client connections open", Kind::Gauge);
    e.sample("smbd_connections", &[], m.connections.get());
    e.family(
        "smbd_connections_total",
        "Client connections accepted",
        Kind::Counter,
    );
    e.sample("smbd_connections_total", &[], m.connections_total.get());
    for (name, help, g) in [
        ("smbd_sessions", "Authenticated sessions", &m.sessions),
        ("smbd_tree_connects", "Tree connects", &m.trees),
        ("smbd_opens", "Open handles", &m.opens),
        ("smbd_byte_range_locks", "Byte-range locks held", &m.locks),
    ] {
        e.family(name, help, Kind::Gauge);
        e.sample(name, &[], g.get());
    }
    e.family(
        "smbd_breaks_sent_total",
        "Oplock and lease break notifications sent",
        Kind::Counter,
    );
    e.sample(
        "smbd_breaks_sent_total",
        &[("kind", "oplock")],
        m.oplock_breaks.get(),
    );
    e.sample(
        "smbd_breaks_sent_total",
        &[("kind", "lease")],
        m.lease_breaks.get(),
    );
    e.family(
        "smbd_channel_failures_total",
        "Client connections dropped because an oplock or lease break sent on them was not acknowledged by TCP within six retransmission timeouts (a dead or unreachable client)",
        Kind::Counter,
    );
    e.sample("smbd_channel_failures_total", &[], m.channel_failures.get());
    e.family(
        "smbd_break_retries_total",
        "Oplock and lease breaks sent again on another channel of their session because the channel they went out on failed before the client's TCP acknowledged them (MS-SMB2 3.3.4.6)",
        Kind::Counter,
    );
    e.sample("smbd_break_retries_total", &[], m.break_retries.get());
    e.family(
        "smbd_rdma_proxy_refused_total",
        "Connections to rdma_proxy_socket refused because the peer's uid (SO_PEERCRED) is neither root nor in rdma_proxy_uids",
        Kind::Counter,
    );
    e.sample(
        "smbd_rdma_proxy_refused_total",
        &[],
        m.rdma_proxy_refused.get(),
    );
    e.family(
        "smbd_rdma_payload_bytes_total",
        "Payload bytes of READ/WRITE with RDMA channels (connections from smbdirectd): via=area is file I/O straight from or into the area shared with smbdirectd, via=stream a payload frame on the socket",
        Kind::Counter,
    );
    for how in RdmaPayload::ALL {
        e.sample(
            "smbd_rdma_payload_bytes_total",
            &how.labels(),
            m.rdma_payload_total(how),
        );
    }
    e.family(
        "smbd_lockmgr_requests_total",
        "Lock-service requests (lockmgrd round trips in a cluster), by kind",
        Kind::Counter,
    );
    for (kind, n) in &extra.lock_requests {
        e.sample("smbd_lockmgr_requests_total", &[("kind", kind)], *n);
    }
    e.family(
        "smbd_lockmgr_request_duration_seconds",
        "Lock-service requests that waited for their answer, by round-trip time",
        Kind::Histogram,
    );
    e.histogram(
        "smbd_lockmgr_request_duration_seconds",
        &[],
        &m.lockmgr_latency.snapshot(),
    );
    if let Some((started, resumed, fenced)) = extra.lockmgr_sessions {
        e.family(
            "smbd_lockmgr_sessions_started_total",
            "lockmgrd sessions started (the first one and every new one after a loss)",
            Kind::Counter,
        );
        e.sample("smbd_lockmgr_sessions_started_total", &[], started);
        e.family(
            "smbd_lockmgr_failovers_total",
            "lockmgrd sessions resumed on a replica after the one serving them stopped answering",
            Kind::Counter,
        );
        e.sample("smbd_lockmgr_failovers_total", &[], resumed);
        e.family(
            "smbd_lockmgr_fencings_total",
            "Times this node fenced itself (its lockmgrd lease ran out)",
            Kind::Counter,
        );
        e.sample("smbd_lockmgr_fencings_total", &[], fenced);
    }
    if let Some(n) = extra.public_addresses_held {
        e.family(
            "smbd_public_addresses_held",
            "Public addresses this node holds",
            Kind::Gauge,
        );
        e.sample("smbd_public_addresses_held", &[], n);
    }
    e.finish()
}
