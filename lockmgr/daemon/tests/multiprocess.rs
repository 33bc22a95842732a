//! lockmgrd as a separate process with clients over shared memory and UDP, including a client
//! process killed while holding a lock that another client waits for.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockmgr_client::{ClientError, ClientOptions, Event, LockClient};
use lockmgr_engine::{
    access, share, FileId, LockRange, Notification, OpenId, OpenRequest, Reply, Request, Status,
};
use lockmgr_proto::{ClusterKey, RejectReason};
use lockmgr_transport::shm::ShmClient;
use lockmgr_transport::udp::{UdpClient, UdpConfig};
use lockmgr_transport::{ClientTransport, SpinConfig};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Kills the child on drop so a failing test leaves no process behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Daemon {
    _proc: Proc,
    connect: String,
    key_file: PathBuf,
    kind: &'static str,
    _dir: tempfile::TempDir,
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

fn start_daemon(kind: &'static str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, KEY).unwrap();
    // lockmgrd refuses a key file that group or others can read.
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let connect = match kind {
        "shm" => dir.path().join("lockmgr.sock").display().to_string(),
        _ => format!("127.0.0.1:{}", free_udp_port()),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_lockmgrd"))
        .args([
            "--transport",
            kind,
            "--listen",
            &connect,
            "--cluster-key-file",
        ])
        .arg(&key_file)
        .args(["--spin-us", "0", "--liveness-ms", "500", "--log", "warn"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon {
        _proc: Proc(child),
        connect,
        key_file,
        kind,
        _dir: dir,
    };
    if kind == "shm" {
        let deadline = Instant::now() + TIMEOUT;
        while !Path::new(&daemon.connect).exists() {
            assert!(
                Instant::now() < deadline,
                "lockmgrd did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    } else {
        // UDP has no socket file to wait for, and a client's connect to a port nobody has
        // bound yet is refused at once (ECONNREFUSED is a definite signal): a probe session,
        // retried until the daemon answers, says it is ready for the processes the tests
        // spawn.
        drop(crate::connect(&daemon, "readiness-probe", KEY).expect("lockmgrd did not come up"));
    }
    daemon
}

fn options(name: &str, key: &[u8]) -> ClientOptions {
    ClientOptions {
        node_name: name.into(),
        key: ClusterKey::new(key).unwrap(),
        handshake_timeout: TIMEOUT,
    }
}

fn no_spin() -> SpinConfig {
    SpinConfig::never()
}

#[allow(clippy::large_enum_variant)] // test helper; one per test
enum AnyClient {
    Shm(LockClient<ShmClient>),
    Udp(LockClient<UdpClient>),
}

fn connect(d: &Daemon, name: &str, key: &[u8]) -> Result<AnyClient, ClientError> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let res = match d.kind {
            "shm" => ShmClient::connect(&d.connect, no_spin(), TIMEOUT)
                .map_err(ClientError::from)
                .and_then(|t| LockClient::connect(t, &options(name, key)).map(AnyClient::Shm)),
            _ => UdpClient::connect(
                d.connect.parse().unwrap(),
                UdpConfig {
                    spin: no_spin(),
                    connect_timeout: Duration::from_millis(500),
                    ..UdpConfig::default()
                },
            )
            .map_err(ClientError::from)
            .and_then(|t| LockClient::connect(t, &options(name, key)).map(AnyClient::Udp)),
        };
        match res {
            Err(ClientError::Transport(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => return other,
        }
    }
}

impl AnyClient {
    fn call(&mut self, req: Request) -> Reply {
        match self {
            AnyClient::Shm(c) => c.call(req, TIMEOUT).unwrap(),
            AnyClient::Udp(c) => c.call(req, TIMEOUT).unwrap(),
        }
    }
    fn next_event(&mut self) -> Event {
        match self {
            AnyClient::Shm(c) => c.next_event(TIMEOUT).unwrap(),
            AnyClient::Udp(c) => c.next_event(TIMEOUT).unwrap(),
        }
    }
    fn status(&mut self) -> String {
        match self {
            AnyClient::Shm(c) => c.status(TIMEOUT).unwrap(),
            AnyClient::Udp(c) => c.status(TIMEOUT).unwrap(),
        }
    }
    fn has_session(&mut self, node: &str) -> bool {
        match self {
            AnyClient::Shm(c) => c.has_session(node, TIMEOUT).unwrap(),
            AnyClient::Udp(c) => c.has_session(node, TIMEOUT).unwrap(),
        }
    }
}

fn open(c: &mut AnyClient, file: FileId) -> OpenId {
    match c.call(Request::Open(OpenRequest {
        file,
        access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
        share: share::READ | share::WRITE,
        ..OpenRequest::default()
    })) {
        Reply::Opened { open, .. } => open,
        other => panic!("open failed: {other:?}"),
    }
}

fn spawn_holder(d: &Daemon, file: FileId) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockmgrctl"))
        .args([
            "--transport",
            d.kind,
            "--connect",
            &d.connect,
            "--cluster-key-file",
        ])
        .arg(&d.key_file)
        .args([
            "--node",
            "doomed-node",
            "hold",
            "--file",
            &format!("{:x}", file.0),
        ])
        .args(["--offset", "0", "--length", "100"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("LOCKED"), "holder said {line:?}");
    Proc(child)
}

/// A node process killed while holding a byte-range lock: lockmgrd notices (shm: the socket
/// closes; UDP: the liveness lease expires), releases the lock, and the waiter on another node is
/// granted.
fn killed_holder_releases_lock_to_waiter(kind: &'static str) {
    let d = start_daemon(kind);
    let file = FileId(0xfeed_0001);
    let mut holder = spawn_holder(&d, file);
    let mut waiter = connect(&d, "survivor", KEY).unwrap();
    let open = open(&mut waiter, file);
    let range = LockRange {
        offset: 50,
        length: 10,
        exclusive: true,
    };
    // Not granted while the holder lives.
    assert_eq!(
        waiter.call(Request::Lock {
            open,
            ranges: vec![range],
            fail_immediately: true
        }),
        Reply::Done(Status::LockNotGranted)
    );
    assert_eq!(
        waiter.call(Request::Lock {
            open,
            ranges: vec![range],
            fail_immediately: false
        }),
        Reply::Pending
    );
    let status = waiter.status();
    assert!(status.contains("doomed-node"), "{status}");
    assert!(status.contains("WAITING LOCKS"), "{status}");

    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    match waiter.next_event() {
        Event::Notify(Notification::Completed { reply, .. }) => {
            assert_eq!(reply, Reply::Done(Status::Success))
        }
        other => panic!("expected the waiting lock to be granted, got {other:?}"),
    }
    let status = waiter.status();
    assert!(
        !status.contains("doomed-node"),
        "dead node still listed:\n{status}"
    );
    // The lock is ours now: a second exclusive lock on it conflicts even for us.
    assert_eq!(
        waiter.call(Request::Lock {
            open,
            ranges: vec![range],
            fail_immediately: true
        }),
        Reply::Done(Status::LockNotGranted)
    );
    assert_eq!(
        waiter.call(Request::Unlock {
            open,
            ranges: vec![range]
        }),
        Reply::Done(Status::Success)
    );
}

#[test]
fn shm_killed_holder_releases_lock_to_waiter() {
    killed_holder_releases_lock_to_waiter("shm");
}

#[test]
fn udp_killed_holder_releases_lock_to_waiter() {
    killed_holder_releases_lock_to_waiter("udp");
}

fn wrong_key_is_rejected(kind: &'static str) {
    let d = start_daemon(kind);
    match connect(&d, "intruder", b"not-the-cluster-key-at-all!") {
        Err(ClientError::Rejected(RejectReason::BadProof)) => {}
        Err(other) => panic!("expected BadProof, got {other}"),
        Ok(_) => panic!("a client without the cluster key was accepted"),
    }
    let mut ok = connect(&d, "member", KEY).unwrap();
    let status = ok.status();
    assert!(status.contains("auth_failures=1"), "{status}");
}

/// A node asks whether another node still holds a session (what a survivor asks before it
/// takes a silent node's public addresses): yes while it is connected, no once it said goodbye,
/// no for a name that never connected; and a lock request in between is answered as usual.
#[test]
fn member_query_answers_whether_a_node_holds_a_session() {
    for kind in ["shm", "udp"] {
        let d = start_daemon(kind);
        let mut asker = connect(&d, "asker", KEY).unwrap();
        let other = connect(&d, "other-node", KEY).unwrap();
        assert!(asker.has_session("other-node"), "{kind}");
        assert!(asker.has_session("asker"), "{kind}");
        assert!(!asker.has_session("never-connected"), "{kind}");
        match other {
            AnyClient::Shm(c) => c.goodbye().unwrap(),
            AnyClient::Udp(c) => c.goodbye().unwrap(),
        }
        let deadline = Instant::now() + TIMEOUT;
        while asker.has_session("other-node") {
            assert!(
                Instant::now() < deadline,
                "{kind}: goodbye never ended the session"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        open(&mut asker, FileId(0xfeed_0003));
    }
}

/// The kernel's count of a process's locked memory (`VmLck` in /proc/PID/status), in kB.
fn locked_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck in /proc/PID/status")
}

/// lockmgrd keeps its memory resident by default (its code at least: a failover must not
/// wait for a page-in), and does not with --no-lock-memory. The tests run as root
/// (CAP_IPC_LOCK).
#[test]
fn lockmgrd_locks_its_memory_unless_told_not_to() {
    let d = start_daemon("udp");
    let pid = d._proc.0.id();
    let kb = locked_kb(pid);
    assert!(kb >= 1024, "lockmgrd (pid {pid}) has {kb} kB locked");

    let port = free_udp_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let unlocked = Proc(
        Command::new(env!("CARGO_BIN_EXE_lockmgrd"))
            .args(["--transport", "udp", "--listen", &listen])
            .arg("--cluster-key-file")
            .arg(&d.key_file)
            .args(["--spin-us", "0", "--log", "warn", "--no-lock-memory"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let probe = Daemon {
        _proc: unlocked,
        connect: listen,
        key_file: d.key_file.clone(),
        kind: "udp",
        _dir: tempfile::tempdir().unwrap(),
    };
    drop(connect(&probe, "readiness-probe", KEY).expect("lockmgrd did not come up"));
    assert_eq!(
        locked_kb(probe._proc.0.id()),
        0,
        "--no-lock-memory locked memory"
    );
}

/// `lockmgrctl status` shows the I/O grants: held (in total and per node session), given,
/// refused, recalls sent and their acknowledgements.
#[test]
fn shm_status_shows_io_grants() {
    let d = start_daemon("shm");
    let file = FileId(0xfeed_0002);
    let mut a = connect(&d, "granted-node", KEY).unwrap();
    let mut b = connect(&d, "locking-node", KEY).unwrap();
    let req = OpenRequest {
        file,
        access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
        share: share::READ | share::WRITE,
        io_grant: true,
        ..OpenRequest::default()
    };
    let reply = a.call(Request::Open(req));
    assert!(matches!(reply, Reply::OpenedIo { .. }), "{reply:?}");
    let status = a.status();
    assert!(
        status.contains("io_grants_held=1 io_grants_total=1"),
        "{status}"
    );
    let row = status
        .lines()
        .find(|l| l.contains("granted-node"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(row.get(4), Some(&"1"), "io_grants column: {status}");
    // Another node's lock recalls the grant; the acknowledgement lets it through.
    let other = open(&mut b, file);
    let lock = Request::Lock {
        open: other,
        ranges: vec![LockRange {
            offset: 0,
            length: 1,
            exclusive: true,
        }],
        fail_immediately: true,
    };
    assert_eq!(b.call(lock), Reply::Pending);
    match a.next_event() {
        Event::Notify(Notification::IoRecall { file: f, .. }) => assert_eq!(f, file),
        other => panic!("expected a recall, got {other:?}"),
    }
    assert_eq!(
        a.call(Request::IoRecallAck { file }),
        Reply::Done(Status::Success)
    );
    let status = a.status();
    assert!(
        status.contains("io_grants_held=0 io_grants_total=1 io_grants_refused_total=0 io_recalls_sent_total=1 io_recall_acks_total=1"),
        "{status}"
    );
    // With the lock in place a create's grant is refused.
    assert!(matches!(a.call(Request::Open(req)), Reply::Opened { .. }));
    assert!(a.status().contains("io_grants_refused_total=1"));
}

#[test]
fn shm_wrong_key_is_rejected() {
    wrong_key_is_rejected("shm");
}

#[test]
fn udp_wrong_key_is_rejected() {
    wrong_key_is_rejected("udp");
}

fn share_modes_and_locks_across_clients(kind: &'static str) {
    let d = start_daemon(kind);
    let mut a = connect(&d, "node-a", KEY).unwrap();
    let mut b = connect(&d, "node-b", KEY).unwrap();
    let file = FileId(42);
    let exclusive_open = Request::Open(OpenRequest {
        file,
        access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
        share: 0,
        ..OpenRequest::default()
    });
    let Reply::Opened { open: oa, .. } = a.call(exclusive_open.clone()) else {
        panic!("open a")
    };
    assert_eq!(
        b.call(exclusive_open),
        Reply::Done(Status::SharingViolation)
    );
    assert!(matches!(
        a.call(Request::Close { open: oa }),
        Reply::Closed { .. }
    ));
    let oa = open(&mut a, file);
    let ob = open(&mut b, file);
    let r = LockRange {
        offset: 0,
        length: 10,
        exclusive: true,
    };
    assert_eq!(
        a.call(Request::Lock {
            open: oa,
            ranges: vec![r],
            fail_immediately: true
        }),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        b.call(Request::CheckIo {
            open: ob,
            offset: 5,
            length: 1,
            write: false
        }),
        Reply::Done(Status::FileLockConflict)
    );
    assert_eq!(
        b.call(Request::Lock {
            open: ob,
            ranges: vec![r],
            fail_immediately: false
        }),
        Reply::Pending
    );
    assert_eq!(
        a.call(Request::Unlock {
            open: oa,
            ranges: vec![r]
        }),
        Reply::Done(Status::Success)
    );
    match b.next_event() {
        Event::Notify(Notification::Completed { reply, .. }) => {
            assert_eq!(reply, Reply::Done(Status::Success))
        }
        other => panic!("{other:?}"),
    }
    // A client cannot touch another session's open.
    assert_eq!(
        a.call(Request::Close { open: ob }),
        Reply::Done(Status::InvalidHandle)
    );
}

#[test]
fn shm_share_modes_and_locks_across_clients() {
    share_modes_and_locks_across_clients("shm");
}

#[test]
fn udp_share_modes_and_locks_across_clients() {
    share_modes_and_locks_across_clients("udp");
}

#[test]
fn lockmgrd_rejects_bad_command_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_lockmgrd"))
        .args(["--transport", "udp"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_lockmgrd"))
        .args([
            "--transport",
            "udp",
            "--listen",
            "nonsense",
            "--cluster-key-file",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_lockmgrd"))
        .args(["--bogus"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// SIGTERM stops lockmgrd cleanly (exit status 0).
#[test]
fn lockmgrd_exits_cleanly_on_sigterm() {
    let mut d = start_daemon("shm");
    let _c = connect(&d, "node", KEY).unwrap();
    let pid = d._proc.0.id() as i32;
    // SAFETY-free: kill(2) through the command line tool keeps this test free of unsafe code.
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = d._proc.0.try_wait().unwrap() {
            assert!(status.success(), "lockmgrd exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "lockmgrd ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Keep the transport trait in scope for generic helpers above.
#[allow(dead_code)]
fn _assert_transport<T: ClientTransport>() {}
