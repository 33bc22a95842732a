//! A replicated lock manager as real processes: two lockmgrd replicas over UDP on loopback,
//! epochs in a real etcd. The primary is SIGKILLed while nodes hold locks; the standby must
//! take over through etcd, and the nodes must resume their sessions on it with every lock
//! they held (and nothing granted twice).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockmgr_client::{ClientError, ClientOptions, LockClient, ResumePoint};
use lockmgr_coord::{Coordinator, LocalEtcd, LocalEtcdError};
use lockmgr_engine::{
    access, share, FileId, LockRange, OpenId, OpenRequest, Reply, Request, Status,
};
use lockmgr_proto::{ClusterKey, RejectReason};
use lockmgr_transport::udp::{UdpClient, UdpConfig};
use lockmgr_transport::SpinConfig;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A step of a failover, as seen by one of its actors (for the per-phase timings of the
/// repeated-kill test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A standby concluded that its primary is gone and asked etcd to promote it.
    StandbySuspects,
    /// etcd's compare-and-swap made the standby primary: it serves from now on.
    StandbyPromoted,
    /// A node stopped waiting for its replica (no reply in time, or the connection failed).
    NodeSuspects,
    /// A node's session continues on another replica.
    NodeResumed,
}

/// When the test started, the origin of every phase timestamp.
fn test_clock() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn since_start() -> u64 {
    test_clock().elapsed().as_nanos() as u64
}

fn phases() -> &'static std::sync::Mutex<Vec<(u64, Phase)>> {
    static PHASES: std::sync::Mutex<Vec<(u64, Phase)>> = std::sync::Mutex::new(Vec::new());
    &PHASES
}

/// What nodes did, in words, for the slowest failovers' story.
fn node_log() -> &'static std::sync::Mutex<Vec<(u64, String)>> {
    static LOG: std::sync::Mutex<Vec<(u64, String)>> = std::sync::Mutex::new(Vec::new());
    &LOG
}

fn note(what: String) {
    let at = since_start();
    node_log()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((at, what));
}

fn mark(phase: Phase) {
    let at = since_start();
    phases()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((at, phase));
}

/// Lines of lockmgrd's log that mark a failover phase (see `replication.rs` in the daemon).
const LOG_PHASES: [(&str, Phase); 2] = [
    ("primary lost: asking to be primary", Phase::StandbySuspects),
    ("promoted: this replica is primary", Phase::StandbyPromoted),
];

/// Copies a replica's log to the test's stderr and time-stamps the phase lines as they come.
fn follow_log(name: &str, stderr: std::process::ChildStderr) {
    use std::io::BufRead;
    let name = name.to_owned();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            for (text, phase) in LOG_PHASES {
                if line.contains(text) {
                    mark(phase);
                }
            }
            eprintln!("[{name}] {line}");
        }
    });
}

fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} (CI=true: missing capabilities fail instead of skipping)");
    }
    eprintln!("SKIPPED: {what}");
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.local_addr().expect("addr").port()
}

/// A child process of this test, killed (by PID) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private etcd for this test, and the cluster name the test's replicas use in it.
struct Etcd {
    local: LocalEtcd,
    cluster: String,
}

fn start_etcd() -> Option<Etcd> {
    match LocalEtcd::start() {
        Ok(local) => {
            let cluster = format!(
                "hatest-{}",
                local.endpoint().rsplit(':').next().unwrap_or("0")
            );
            Some(Etcd { local, cluster })
        }
        Err(LocalEtcdError::NotInstalled) => {
            missing("etcd not installed (apt-get install etcd-server)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn coordinator(etcd: &Etcd) -> Result<Coordinator, lockmgr_coord::CoordError> {
    etcd.local.coordinator(&etcd.cluster)
}

struct Replica {
    proc: Proc,
    addr: String,
}

fn start_replica(etcd: &Etcd, name: &str, key_file: &std::path::Path) -> Replica {
    start_replica_at(
        etcd,
        name,
        key_file,
        format!("127.0.0.1:{}", free_udp_port()),
        "info",
    )
}

fn start_replica_at(
    etcd: &Etcd,
    name: &str,
    key_file: &std::path::Path,
    addr: String,
    log: &str,
) -> Replica {
    start_replica_with(etcd, name, key_file, addr, log, 100)
}

fn start_replica_with(
    etcd: &Etcd,
    name: &str,
    key_file: &std::path::Path,
    addr: String,
    log: &str,
    failover_ms: u64,
) -> Replica {
    // REPLICA_LOG (a tracing filter) overrides the test's level, to read a failover's story.
    let log = std::env::var("REPLICA_LOG").unwrap_or_else(|_| log.to_owned());
    let log = log.as_str();
    let child = Command::new(env!("CARGO_BIN_EXE_lockmgrd"))
        .args([
            "--transport",
            "udp",
            "--listen",
            &addr,
            "--cluster-key-file",
        ])
        .arg(key_file)
        .args(["--spin-us", "0", "--liveness-ms", "2000"])
        .args(["--replica-name", name, "--etcd", etcd.local.endpoint()])
        .args(["--cluster-name", &etcd.cluster, "--failover-ms"])
        .arg(failover_ms.to_string())
        .args(["--log", log])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockmgrd");
    let mut child = child;
    if let Some(stderr) = child.stderr.take() {
        follow_log(name, stderr);
    }
    Replica {
        proc: Proc(child),
        addr,
    }
}

/// Waits until etcd's configuration satisfies `ok`; returns its epoch.
fn wait_config(etcd: &Etcd, what: &str, ok: impl Fn(&lockmgr_coord::Configuration) -> bool) -> u64 {
    let mut c = coordinator(etcd).expect("etcd");
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = c.read() {
            if ok(&s.config) {
                return s.config.epoch;
            }
        }
        assert!(start.elapsed() < TIMEOUT * 3, "etcd never showed {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn options(name: &str) -> ClientOptions {
    ClientOptions {
        node_name: name.into(),
        key: ClusterKey::new(KEY).expect("key"),
        handshake_timeout: Duration::from_secs(2),
    }
}

/// How often a node's transport pings a silent replica. A request the dead primary took in
/// (and acknowledged) without answering leaves the node with nothing to retransmit: the ping
/// meets the closed port, and the refusal ends the connection, long before `SUSPECT_AFTER`.
const NODE_PROBE: Duration = Duration::from_millis(5);

fn udp(addr: &str) -> Result<UdpClient, ClientError> {
    Ok(UdpClient::connect(
        addr.parse().expect("addr"),
        UdpConfig {
            spin: SpinConfig::never(),
            connect_timeout: Duration::from_millis(500),
            keepalive: Some(NODE_PROBE),
            ..UdpConfig::default()
        },
    )?)
}

fn connect(addr: &str, name: &str) -> LockClient<UdpClient> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match udp(addr).and_then(|t| LockClient::connect(t, &options(name))) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect {name} to {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{name} cannot connect to {addr}: {e}"),
        }
    }
}

fn resume(addr: &str, name: &str, old: &LockClient<UdpClient>) -> LockClient<UdpClient> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match udp(addr).and_then(|t| LockClient::resume(t, &options(name), old.resume_point())) {
            Ok(c) => return c,
            Err(ClientError::Rejected(RejectReason::NotPrimary))
            | Err(ClientError::Transport(_))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{name} cannot resume on {addr}: {e}"),
        }
    }
}

fn open(c: &mut LockClient<UdpClient>, file: FileId) -> OpenId {
    match c.call(
        Request::Open(OpenRequest {
            file,
            access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
            share: share::READ | share::WRITE,
            ..OpenRequest::default()
        }),
        TIMEOUT,
    ) {
        Ok(Reply::Opened { open, .. }) => open,
        other => panic!("open failed: {other:?}"),
    }
}

fn lock(c: &mut LockClient<UdpClient>, open: OpenId, range: LockRange) -> Reply {
    c.call(
        Request::Lock {
            open,
            ranges: vec![range],
            fail_immediately: true,
        },
        TIMEOUT,
    )
    .expect("lock call")
}

fn key_file(dir: &tempfile::TempDir) -> PathBuf {
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, KEY).expect("key");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    key_file
}

#[test]
fn standby_takes_over_and_nodes_resume_with_their_locks() {
    let Some(etcd) = start_etcd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = key_file(&dir);

    let mut a = start_replica(&etcd, "lm-a", &key_file);
    wait_config(&etcd, "lm-a primary", |c| c.primary.name == "lm-a");
    let b = start_replica(&etcd, "lm-b", &key_file);
    let recorded = wait_config(&etcd, "lm-b recorded as standby", |c| {
        c.primary.name == "lm-a" && c.standbys.iter().any(|m| m.name == "lm-b")
    });

    // A standby takes no node sessions.
    match udp(&b.addr).and_then(|t| LockClient::connect(t, &options("early"))) {
        Err(ClientError::Rejected(RejectReason::NotPrimary)) => {}
        other => panic!("standby accepted a node: {:?}", other.map(|c| c.session())),
    }

    let file = FileId(0xfeed);
    let range = LockRange {
        offset: 0,
        length: 100,
        exclusive: true,
    };
    let mut n1 = connect(&a.addr, "node1");
    let mut n2 = connect(&a.addr, "node2");
    let o1 = open(&mut n1, file);
    let o2 = open(&mut n2, file);
    assert_eq!(lock(&mut n1, o1, range), Reply::Done(Status::Success));
    assert_eq!(
        lock(&mut n2, o2, range),
        Reply::Done(Status::LockNotGranted)
    );

    // Kill the primary without warning.
    let killed = Instant::now();
    let _ = a.proc.0.kill();
    let _ = a.proc.0.wait();
    let epoch = wait_config(&etcd, "lm-b promoted", |c| c.primary.name == "lm-b");
    let promoted = killed.elapsed();
    assert!(epoch > recorded);

    // Both nodes continue their sessions on the new primary.
    let mut n1 = resume(&b.addr, "node1", &n1);
    let mut n2 = resume(&b.addr, "node2", &n2);
    let resumed = killed.elapsed();
    let status = n1.status(TIMEOUT).expect("status");
    assert!(
        status.contains(&format!("replica lm-b role primary epoch {epoch}")),
        "{status}"
    );
    eprintln!(
        "failover: etcd names the standby primary {promoted:?} after SIGKILL; both nodes resumed after {resumed:?}"
    );
    // node1's lock survived: node2 still cannot have it, nor can a new node.
    assert_eq!(
        lock(&mut n2, o2, range),
        Reply::Done(Status::LockNotGranted)
    );
    let mut n3 = connect(&b.addr, "node3");
    let o3 = open(&mut n3, file);
    assert_eq!(
        lock(&mut n3, o3, range),
        Reply::Done(Status::LockNotGranted)
    );
    // node1 still holds it under its open: it can release it, then node2 gets it.
    assert_eq!(
        n1.call(
            Request::Unlock {
                open: o1,
                ranges: vec![range],
            },
            TIMEOUT
        )
        .expect("unlock"),
        Reply::Done(Status::Success)
    );
    assert_eq!(lock(&mut n2, o2, range), Reply::Done(Status::Success));
    assert_eq!(
        lock(&mut n3, o3, range),
        Reply::Done(Status::LockNotGranted)
    );

    // Another node cannot steal node1's session by naming it.
    let stolen = ResumePoint {
        received: 0,
        ..n1.resume_point()
    };
    match udp(&b.addr).and_then(|t| LockClient::resume(t, &options("thief"), stolen)) {
        Err(ClientError::Rejected(RejectReason::SessionLost)) => {}
        other => panic!(
            "a foreign node resumed node1's session: {:?}",
            other.map(|c| c.session())
        ),
    }
    drop(a);
    drop(b);
}

/// A node that follows the lock manager across failovers: a request whose reply does not come
/// (or whose connection fails) is resent after resuming the session on whichever replica
/// accepts it.
struct FailoverNode {
    name: String,
    addrs: Vec<String>,
    client: LockClient<UdpClient>,
    /// Index in `addrs` of the replica the session is on.
    current: usize,
    resumes: u32,
    /// For the node log: the session moved and no reply came since.
    resumed_since_reply: bool,
}

/// How long a node waits for a reply before it suspects the lock manager and resumes
/// elsewhere (a healthy round trip is well under a millisecond here).
const SUSPECT_AFTER: Duration = Duration::from_millis(50);

impl FailoverNode {
    fn call(&mut self, req: Request) -> Reply {
        let id = match self.client.submit(req.clone()) {
            Ok(id) => id,
            // The replica this session was on has gone (fenced, or its connection ended).
            Err(_) => {
                mark(Phase::NodeSuspects);
                self.resume();
                self.client
                    .submit(req.clone())
                    .expect("submit after resume")
            }
        };
        let deadline = Instant::now() + TIMEOUT * 3;
        let mut healthy = self.client.flush().is_ok();
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: no reply to {req:?}",
                self.name
            );
            if healthy {
                let wait_until = Instant::now() + SUSPECT_AFTER;
                let mut reply = None;
                while reply.is_none() && Instant::now() < wait_until {
                    match self.client.poll(&mut |ev| {
                        if let lockmgr_client::Event::Reply { request, reply: r } = ev {
                            if request == id {
                                reply = Some(r);
                            }
                        }
                    }) {
                        Ok(_) => {}
                        Err(_) => break,
                    }
                    if reply.is_none() {
                        let _ = self.client.tick(Instant::now());
                        let _ = self.client.wait(Some(Duration::from_millis(5)));
                    }
                }
                if let Some(r) = reply {
                    if self.resumed_since_reply {
                        note(format!("{} first reply after resuming", self.name));
                        self.resumed_since_reply = false;
                    }
                    return r;
                }
            }
            note(format!("{} suspects (healthy {healthy})", self.name));
            self.resumed_since_reply = true;
            mark(Phase::NodeSuspects);
            self.resume();
            // Applied already (the log holds it): the new primary resends its reply and drops
            // this copy; not applied: this copy is the request.
            healthy = self.client.resubmit(id, req.clone()).is_ok() && self.client.flush().is_ok();
        }
    }

    fn resume(&mut self) {
        let from = self.client.resume_point();
        let deadline = Instant::now() + TIMEOUT * 3;
        loop {
            // The replica that served last is the likely dead one: the others first.
            for k in 1..=self.addrs.len() {
                let i = (self.current + k) % self.addrs.len();
                let t = UdpClient::connect(
                    self.addrs[i].parse().expect("addr"),
                    UdpConfig {
                        spin: SpinConfig::never(),
                        connect_timeout: SUSPECT_AFTER,
                        keepalive: Some(NODE_PROBE),
                        ..UdpConfig::default()
                    },
                );
                match t
                    .map_err(ClientError::from)
                    .and_then(|t| LockClient::resume(t, &options(&self.name), from))
                {
                    Ok(c) => {
                        self.client = c;
                        self.current = i;
                        self.resumes += 1;
                        mark(Phase::NodeResumed);
                        note(format!("{} resumed on {i}", self.name));
                        return;
                    }
                    Err(ClientError::Rejected(RejectReason::SessionLost)) => {
                        panic!("{}: session lost on {}", self.name, self.addrs[i])
                    }
                    Err(e) => note(format!("{} resume on {i}: {e}", self.name)),
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: no replica took the session back",
                self.name
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Nodes take turns on one exclusive lock while the primary is SIGKILLed again and again (the
/// dead replica restarts and rejoins as standby each time). Every grant and release goes into
/// a history that the checker of lockmgr-replica reads: no lock may be granted twice and no
/// acknowledged lock may vanish. `FAILOVERS` sets the number of kills (default 3; the long-run
/// script asks for 100).
#[test]
fn repeated_primary_kills_never_grant_a_lock_twice() {
    use lockmgr_replica::history::{self, Event as H, Range as HRange};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let failovers: usize = std::env::var("FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let failover_ms: u64 = std::env::var("FAILOVER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let Some(etcd) = start_etcd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = key_file(&dir);
    let names = ["lm-a", "lm-b"];
    let addrs: Vec<String> = names
        .iter()
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let mut replicas: Vec<Option<Replica>> = vec![None, None];
    replicas[0] = Some(start_replica_with(
        &etcd,
        names[0],
        &key_file,
        addrs[0].clone(),
        "warn",
        failover_ms,
    ));
    wait_config(&etcd, "lm-a primary", |c| c.primary.name == "lm-a");
    replicas[1] = Some(start_replica_with(
        &etcd,
        names[1],
        &key_file,
        addrs[1].clone(),
        "warn",
        failover_ms,
    ));
    wait_config(&etcd, "lm-b recorded", |c| {
        c.standbys.iter().any(|m| m.name == "lm-b")
    });

    let file = FileId(0xabcd);
    let range = LockRange {
        offset: 0,
        length: 10,
        exclusive: true,
    };
    let start = test_clock();
    let events: Arc<Mutex<Vec<H>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for client in 0..3u32 {
        let addrs = addrs.clone();
        let events = Arc::clone(&events);
        let stop = Arc::clone(&stop);
        workers.push(std::thread::spawn(move || {
            let name = format!("node{client}");
            let first = connect(&addrs[0], &name);
            let mut node = FailoverNode {
                name,
                addrs,
                client: first,
                current: 0,
                resumes: 0,
                resumed_since_reply: false,
            };
            let open = match node.call(Request::Open(OpenRequest {
                file,
                access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
                share: share::READ | share::WRITE,
                ..OpenRequest::default()
            })) {
                Reply::Opened { open, .. } => open,
                other => panic!("open: {other:?}"),
            };
            let h = HRange {
                offset: range.offset,
                length: range.length,
                exclusive: range.exclusive,
            };
            let now = || start.elapsed().as_nanos() as u64;
            let mut grants = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let reply = node.call(Request::Lock {
                    open,
                    ranges: vec![range],
                    fail_immediately: true,
                });
                match reply {
                    Reply::Done(Status::Success) => {
                        grants += 1;
                        events.lock().expect("events").push(H::Acquired {
                            at: now(),
                            client,
                            file: file.0,
                            range: h,
                        });
                        std::thread::sleep(Duration::from_micros(200));
                        events.lock().expect("events").push(H::Releasing {
                            at: now(),
                            client,
                            file: file.0,
                            range: h,
                        });
                        let r = node.call(Request::Unlock {
                            open,
                            ranges: vec![range],
                        });
                        if r != Reply::Done(Status::Success) {
                            events.lock().expect("events").push(H::ReleaseFailed {
                                at: now(),
                                client,
                                file: file.0,
                                range: h,
                            });
                        }
                    }
                    // Not a busy loop: the lock managers need the CPUs more than we do.
                    Reply::Done(Status::LockNotGranted) => {
                        std::thread::sleep(Duration::from_micros(50))
                    }
                    other => panic!("lock: {other:?}"),
                }
            }
            (grants, node.resumes)
        }));
    }

    let mut takeovers = Vec::new();
    let mut kills = Vec::new();
    // A replica fenced because its partner falsely looked dead (a stall on this loaded
    // machine) exits; it is restarted and counted.
    let mut spurious = 0;
    let restart = |replicas: &mut Vec<Option<Replica>>, i: usize| {
        replicas[i] = Some(start_replica_with(
            &etcd,
            names[i],
            &key_file,
            addrs[i].clone(),
            "warn",
            failover_ms,
        ));
    };
    let ensure_both = |replicas: &mut Vec<Option<Replica>>, spurious: &mut u32| loop {
        let mut c = coordinator(&etcd).expect("etcd");
        let current = c.read().expect("read").expect("config").config;
        let epoch_before = current.epoch;
        let mut restarted = false;
        for i in 0..2 {
            let exited = replicas[i]
                .as_mut()
                .is_none_or(|r| !matches!(r.proc.0.try_wait(), Ok(None)));
            if exited {
                *spurious += u32::from(replicas[i].is_some());
                restart(replicas, i);
                restarted = true;
            }
        }
        let recorded = |c: &lockmgr_coord::Configuration| {
            c.standbys.len() == 1 && names.contains(&c.primary.name.as_str())
        };
        if !restarted && recorded(&current) {
            return current;
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // A record made after the restart (the old one may name the dead process).
            let now = c.read().ok().flatten().map(|s| s.config);
            if now
                .as_ref()
                .is_some_and(|c| c.epoch > epoch_before && recorded(c))
            {
                break;
            }
            let dead = replicas.iter_mut().any(|r| {
                r.as_mut()
                    .is_some_and(|r| !matches!(r.proc.0.try_wait(), Ok(None)))
            });
            if dead || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut round = 0;
    while round < failovers {
        std::thread::sleep(Duration::from_millis(300));
        let current = ensure_both(&mut replicas, &mut spurious);
        let victim = names
            .iter()
            .position(|n| *n == current.primary.name)
            .expect("primary is one of ours");
        let survivor = 1 - victim;
        // The record may predate a false suspicion that has just fenced the standby (it was
        // catching up, say): killing the primary now would kill the whole lock manager.
        let standby_running = replicas[survivor]
            .as_mut()
            .is_some_and(|r| matches!(r.proc.0.try_wait(), Ok(None)));
        if !standby_running {
            eprintln!("failover {round}: the standby is gone before the kill; starting again");
            continue;
        }
        let killed = Instant::now();
        kills.push(start.elapsed().as_nanos() as u64);
        drop(replicas[victim].take());
        wait_config(&etcd, "the survivor promoted", |c| {
            c.primary.name == names[survivor]
        });
        takeovers.push(killed.elapsed());
        eprintln!("failover {round}: promoted after {:?}", killed.elapsed());
        round += 1;
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut grants = 0;
    let mut resumes = 0;
    for w in workers {
        let (g, r) = w.join().expect("worker");
        grants += g;
        resumes += r;
    }
    let events = events.lock().expect("events").clone();
    let violations = history::check(&events);
    takeovers.sort();
    // The longest time no client got the lock: what the kills cost the workload.
    let mut grant_times: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            H::Acquired { at, .. } => Some(*at),
            _ => None,
        })
        .collect();
    grant_times.sort_unstable();
    let longest_gap = grant_times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .map(Duration::from_nanos);
    // From each SIGKILL to the first lock granted to any node after it.
    let mut to_first_grant: Vec<u64> = kills
        .iter()
        .filter_map(|k| {
            let i = grant_times.partition_point(|t| t <= k);
            grant_times.get(i).map(|t| t - k)
        })
        .collect();
    to_first_grant.sort_unstable();
    let pct = |v: &[u64], p: f64| {
        v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|n| Duration::from_nanos(*n))
    };
    eprintln!(
        "{failovers} primary kills (failover_ms {failover_ms}, nodes suspect after {SUSPECT_AFTER:?}): \
         {grants} grants, {resumes} session resumes, {spurious} replicas fenced by a false suspicion; \
         takeover (kill -> etcd names the standby) p50 {:?} max {:?}; \
         kill -> first lock granted p50 {:?} p99 {:?} max {:?}; longest pause between grants {:?}; \
         history violations: {}",
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1],
        pct(&to_first_grant, 0.5),
        pct(&to_first_grant, 0.99),
        to_first_grant.last().map(|n| Duration::from_nanos(*n)),
        longest_gap,
        violations.len()
    );
    print_phases(&kills, &to_first_grant_by_kill(&kills, &grant_times));
    assert!(violations.is_empty(), "history violations: {violations:?}");
    assert!(grants > 0);
}

/// For each kill, the time to the first grant after it (`None` if there was none).
fn to_first_grant_by_kill(kills: &[u64], grant_times: &[u64]) -> Vec<Option<u64>> {
    kills
        .iter()
        .map(|k| {
            let i = grant_times.partition_point(|t| t <= k);
            grant_times.get(i).map(|t| t - k)
        })
        .collect()
}

/// Where the time of each failover went: for every kill, when each phase was first (and for
/// nodes, last) reached after it, as percentiles over the kills. A phase belongs to the kill
/// before it (the next kill comes only after a full recovery and a pause).
fn print_phases(kills: &[u64], first_grant: &[Option<u64>]) {
    let recorded = phases().lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ms = |ns: u64| ns as f64 / 1e6;
    let summary = |name: &str, mut v: Vec<u64>| {
        if v.is_empty() {
            eprintln!("  {name:<34} (never)");
            return;
        }
        v.sort_unstable();
        let pct = |p: f64| v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1)];
        eprintln!(
            "  {name:<34} n {:>4}  p50 {:>7.1} ms  p90 {:>7.1}  p99 {:>7.1}  max {:>7.1}",
            v.len(),
            ms(pct(0.5)),
            ms(pct(0.9)),
            ms(pct(0.99)),
            ms(v[v.len() - 1])
        );
    };
    let window = |i: usize| (kills[i], kills.get(i + 1).copied().unwrap_or(u64::MAX));
    let first_of = |i: usize, phase: Phase| {
        let (from, to) = window(i);
        recorded
            .iter()
            .filter(|(t, p)| *p == phase && *t >= from && *t < to)
            .map(|(t, _)| t - from)
            .min()
    };
    let last_of = |i: usize, phase: Phase| {
        let (from, to) = window(i);
        recorded
            .iter()
            .filter(|(t, p)| *p == phase && *t >= from && *t < to)
            .map(|(t, _)| t - from)
            .max()
    };
    let per_kill = |f: &dyn Fn(usize) -> Option<u64>| (0..kills.len()).filter_map(f).collect();
    eprintln!("failover phases, from SIGKILL of the primary (per kill):");
    summary(
        "standby suspects the primary",
        per_kill(&|i| first_of(i, Phase::StandbySuspects)),
    );
    summary(
        "standby promoted (etcd CAS done)",
        per_kill(&|i| first_of(i, Phase::StandbyPromoted)),
    );
    summary(
        "first node suspects its replica",
        per_kill(&|i| first_of(i, Phase::NodeSuspects)),
    );
    summary(
        "first node resumed",
        per_kill(&|i| first_of(i, Phase::NodeResumed)),
    );
    summary(
        "last node resumed",
        per_kill(&|i| last_of(i, Phase::NodeResumed)),
    );
    summary("first lock granted", per_kill(&|i| first_grant[i]));
    summary(
        "promoted -> first node resumed",
        per_kill(&|i| {
            let p = first_of(i, Phase::StandbyPromoted)?;
            first_of(i, Phase::NodeResumed).map(|r| r.saturating_sub(p))
        }),
    );
    summary(
        "last node resumed -> first grant",
        per_kill(&|i| {
            let r = last_of(i, Phase::NodeResumed)?;
            first_grant[i].map(|g| g.saturating_sub(r))
        }),
    );
    let slowest: Vec<String> = {
        let mut idx: Vec<usize> = (0..kills.len()).collect();
        idx.sort_by_key(|&i| std::cmp::Reverse(first_grant[i]));
        idx.iter()
            .take(5)
            .map(|&i| {
                let f = |p| first_of(i, p).map_or("-".into(), |t| format!("{:.0}", ms(t)));
                format!(
                    "kill {i}: suspect {} promoted {} node-suspect {} resumed {}..{} grant {}",
                    f(Phase::StandbySuspects),
                    f(Phase::StandbyPromoted),
                    f(Phase::NodeSuspects),
                    f(Phase::NodeResumed),
                    last_of(i, Phase::NodeResumed).map_or("-".into(), |t| format!("{:.0}", ms(t))),
                    first_grant[i].map_or("-".into(), |t| format!("{:.0}", ms(t)))
                )
            })
            .collect()
    };
    eprintln!("  slowest kills (ms after SIGKILL): {}", slowest.join("; "));
    let log = node_log().lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut idx: Vec<usize> = (0..kills.len()).collect();
    idx.sort_by_key(|&i| std::cmp::Reverse(first_grant[i]));
    for &i in idx.iter().take(3) {
        let (from, to) = window(i);
        let story: Vec<String> = log
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .take(40)
            .map(|(t, w)| format!("{:.1} {w}", ms(t - from)))
            .collect();
        eprintln!("  kill {i}, what the nodes did: {}", story.join(" | "));
    }
}

/// What smbd does with a replicated lock manager: each node's session (shared by its SMB
/// connections, `SharedNodeSessions`) lists every replica, and resumes on whichever is primary
/// when its lockmgrd stops answering. Across a SIGKILL of the primary, a node keeps its open
/// and its lock (another node still conflicts with it), and no SMB connection is dropped.
#[test]
fn node_sessions_resume_across_a_failover() {
    use lockmgr_client::mux::SharedNodeSessions;
    use lockmgr_client::ResumePoint;

    let Some(etcd) = start_etcd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = key_file(&dir);
    let mut a = start_replica_with(
        &etcd,
        "lm-a",
        &key_file,
        format!("127.0.0.1:{}", free_udp_port()),
        "warn",
        100,
    );
    wait_config(&etcd, "lm-a primary", |c| c.primary.name == "lm-a");
    let b = start_replica_with(
        &etcd,
        "lm-b",
        &key_file,
        format!("127.0.0.1:{}", free_udp_port()),
        "warn",
        100,
    );
    wait_config(&etcd, "lm-b recorded", |c| {
        c.standbys.iter().any(|m| m.name == "lm-b")
    });
    let failover = Duration::from_millis(300);
    let addrs = vec![a.addr.clone(), b.addr.clone()];
    let node = |name: &'static str| {
        let udp_cfg = UdpConfig {
            spin: SpinConfig::never(),
            connect_timeout: failover / 2,
            keepalive: Some(failover / 4),
            peer_timeout: failover,
            ..UdpConfig::default()
        };
        let addrs = addrs.clone();
        // As smbd does: after a failure, the replica that took the session last goes last.
        let current = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connect_any = move |resume: Option<ResumePoint>| {
            use std::sync::atomic::Ordering::Relaxed;
            let mut last = ClientError::SessionEnded;
            let start = current.load(Relaxed) + usize::from(resume.is_some());
            for i in (0..addrs.len()).map(|k| (start + k) % addrs.len()) {
                let r = UdpClient::connect(addrs[i].parse().expect("addr"), udp_cfg)
                    .map_err(ClientError::from)
                    .and_then(|t| match resume {
                        None => LockClient::connect(t, &options(name)),
                        Some(p) => LockClient::resume(t, &options(name), p),
                    });
                match r {
                    Ok(c) => {
                        current.store(i, Relaxed);
                        return Ok(c);
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        let first = connect_any.clone();
        let sessions =
            SharedNodeSessions::new(Box::new(move || first(None)), failover, Duration::ZERO)
                .expect("node sessions");
        sessions
            .lock()
            .set_resumer(Box::new(move |point, lease_end| {
                // Never past the node's lease: the session's state may be another node's by then.
                let deadline = (Instant::now() + TIMEOUT).min(lease_end);
                loop {
                    match connect_any(Some(point)) {
                        Ok(c) => return Ok(c),
                        Err(e @ ClientError::Rejected(RejectReason::SessionLost)) => return Err(e),
                        Err(e) if Instant::now() >= deadline => return Err(e),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        sessions
    };
    let n1 = node("node1");
    let n2 = node("node2");
    let conn = lockmgr_engine::SessionId(1);
    let mut next = 0u64;
    let mut call = |n: &SharedNodeSessions<UdpClient>, req: Request| {
        next += 1;
        n.request(conn, lockmgr_engine::RequestId(next), req)
    };
    let file = FileId(0x5e55);
    let open_req = Request::Open(OpenRequest {
        file,
        access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
        share: share::READ | share::WRITE,
        ..OpenRequest::default()
    });
    let Reply::Opened { open: o1, .. } = call(&n1, open_req.clone()) else {
        panic!("node1 open")
    };
    let Reply::Opened { open: o2, .. } = call(&n2, open_req) else {
        panic!("node2 open")
    };
    let range = LockRange {
        offset: 0,
        length: 100,
        exclusive: true,
    };
    let lock = |open| Request::Lock {
        open,
        ranges: vec![range],
        fail_immediately: true,
    };
    assert_eq!(call(&n1, lock(o1)), Reply::Done(Status::Success));
    assert_eq!(call(&n2, lock(o2)), Reply::Done(Status::LockNotGranted));

    let _ = a.proc.0.kill();
    let _ = a.proc.0.wait();
    let killed = Instant::now();
    // node2's next request finds the primary gone, resumes on lm-b once it is primary, and
    // still conflicts with node1's lock.
    assert_eq!(call(&n2, lock(o2)), Reply::Done(Status::LockNotGranted));
    let first_answer = killed.elapsed();
    assert_eq!(
        call(
            &n1,
            Request::Unlock {
                open: o1,
                ranges: vec![range],
            }
        ),
        Reply::Done(Status::Success)
    );
    assert_eq!(call(&n2, lock(o2)), Reply::Done(Status::Success));
    assert!(n1.take_lost_connections().is_empty());
    assert!(n2.take_lost_connections().is_empty());
    eprintln!("first answer after the primary's SIGKILL: {first_answer:?}");
    drop(b);
}
