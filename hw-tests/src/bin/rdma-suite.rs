//! End-to-end tests of lockmgrd over the RDMA transport, for real RDMA hardware or soft-RoCE
//! (rdma_rxe) in a qemu guest (see `hw-tests/run-softroce.sh`).
//!
//! One process runs `lockmgrd::Server` over `RdmaServer` on a thread, and the tests connect
//! `LockClient<RdmaClient>`s to it; the kill test spawns this binary again (`hold`
//! sub-command) as the lock holder and SIGKILLs it. Then every transport conformance scenario
//! of `lockmgrd::conformance` (the ones `lockmgr/daemon/tests/conformance.rs` runs over shm,
//! UDP, AF_PACKET and AF_XDP) runs over RDMA, each against a fresh lockmgrd, and finally the
//! `lockbench` binary runs a short `--transport rdma` benchmark (functional check: it must
//! finish and report operations; the numbers mean nothing under emulation). Prints one line
//! per test and `N passed, M failed` at the end; exits 0 only if everything passed, 77 if
//! there is no RDMA device at all (so wrappers can tell "skipped" from "failed").
//!
//! Usage:
//!   rdma-suite [--addr IP] [--device NAME] [--port N] [--gid-index N] [--bench-ops N]
//!              [--lockbench PATH] [--smbdirectd PATH] [--cifs]
//!              [--ca-failover LOCKMGRD,ETCD,PING_PONG] [--replication LOCKMGRD,ETCD]
//!   rdma-suite hold --server IP:PORT --file HEX [device options]   (internal)
//!   rdma-suite sd-hold --server IP:PORT   (internal: an SMB Direct client that waits to be killed)
//!
//! `--lockbench`: the lockbench binary to run (then it is required); by default a `lockbench`
//! next to this binary is used if there is one, and the test is skipped otherwise. `--smbdirectd`
//! likewise for the SMB Direct proxy test ([`hw_tests::smbdirect`]: smbd in this process,
//! smbdirectd as a child, an rdma_cm initiator negotiating SMB Direct and SMB2 through it).
//! `--cifs`: also mount smbd through smbdirectd with the kernel's SMB client (`mount -t cifs
//! -o rdma`; needs root, `mount`/`umount` and a cifs.ko with SMB Direct loaded, as the soft-RoCE
//! guest has; [`hw_tests::cifs_mount`]) and fail if that is impossible. `--ca-failover`: the
//! kernel client's ping_pong on a continuously available share across the SIGKILL of the
//! primary lockmgrd ([`hw_tests::ca_failover`]; needs root and cifs.ko). `--replication`: a
//! primary and a standby lockmgrd replicating over RDMA, the primary SIGKILLed while nodes
//! hold locks ([`hw_tests::replication_rdma`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lockmgr_client::{ClientOptions, Event, LockClient};
use lockmgr_engine::{
    access, share, FileId, LockRange, Notification, OpenId, OpenRequest, Reply, Request, Status,
};
use lockmgr_proto::ClusterKey;
use lockmgr_rdma::{
    format_gid, probe, DeviceConfig, RdmaClient, RdmaConfig, RdmaError, RdmaServer,
};
use lockmgr_transport::ClientTransport;
use lockmgr_transport::{ServerTransport, SpinConfig};
use lockmgrd::conformance::{self, Env, EnvOptions};
use lockmgrd::{Server, ServerOptions};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
/// Generous: TCG emulation is 10-50x slower than hardware.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Far longer than TIMEOUT, so a lock released within TIMEOUT after a SIGKILL proves the
/// transport noticed the death (side-channel EOF), not the liveness lease.
const LIVENESS: Duration = Duration::from_secs(120);
const EXIT_NO_DEVICE: u8 = 77;

type Client = LockClient<RdmaClient>;
type TestResult = Result<(), String>;
type TestFn<'a> = Box<dyn Fn(&Daemon) -> TestResult + 'a>;

#[derive(Clone)]
struct Args {
    addr: Option<IpAddr>,
    device: DeviceConfig,
    bench_ops: u32,
    lockbench: Option<PathBuf>,
    smbdirectd: Option<PathBuf>,
    /// Run the kernel cifs client test (the guest has cifs.ko with SMB Direct loaded).
    cifs: bool,
    /// Run the kernel cifs ping_pong test across a lockmgrd failover: lockmgrd, etcd and
    /// ping_pong binaries, comma-separated.
    ca_failover: Option<String>,
    /// Run the replica pair over RDMA: lockmgrd and etcd binaries, comma-separated.
    replication: Option<String>,
    // `hold` sub-command only.
    server: Option<SocketAddr>,
    file: u128,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<(bool, Args), String> {
    let mut hold = false;
    let mut a = Args {
        addr: None,
        device: DeviceConfig::default(),
        bench_ops: 1000,
        lockbench: None,
        smbdirectd: None,
        ca_failover: None,
        replication: None,
        cifs: false,
        server: None,
        file: 0,
    };
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "hold" => hold = true,
            "--addr" => a.addr = Some(val("--addr")?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--device" => a.device.device = Some(val("--device")?),
            "--port" => {
                a.device.port = val("--port")?.parse().map_err(|e| format!("--port: {e}"))?
            }
            "--gid-index" => {
                a.device.gid_index = Some(
                    val("--gid-index")?
                        .parse()
                        .map_err(|e| format!("--gid-index: {e}"))?,
                )
            }
            "--bench-ops" => {
                a.bench_ops = val("--bench-ops")?
                    .parse()
                    .map_err(|e| format!("--bench-ops: {e}"))?
            }
            "--lockbench" => a.lockbench = Some(PathBuf::from(val("--lockbench")?)),
            "--smbdirectd" => a.smbdirectd = Some(PathBuf::from(val("--smbdirectd")?)),
            "--cifs" => a.cifs = true,
            "--ca-failover" => a.ca_failover = Some(val("--ca-failover")?),
            "--replication" => a.replication = Some(val("--replication")?),
            "--server" => {
                a.server = Some(
                    val("--server")?
                        .parse()
                        .map_err(|e| format!("--server: {e}"))?,
                )
            }
            "--file" => {
                a.file =
                    u128::from_str_radix(&val("--file")?, 16).map_err(|e| format!("--file: {e}"))?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((hold, a))
}

fn device_args(d: &DeviceConfig) -> Vec<String> {
    let mut v = vec!["--port".to_string(), d.port.to_string()];
    if let Some(name) = &d.device {
        v.extend(["--device".to_string(), name.clone()]);
    }
    if let Some(i) = d.gid_index {
        v.extend(["--gid-index".to_string(), i.to_string()]);
    }
    v
}

/// A lockmgr RDMA server on `ip`, any port, polling 50 us before it sleeps, and its address.
fn bind_server(ip: IpAddr, dev: &DeviceConfig) -> Result<(RdmaServer, SocketAddr), RdmaError> {
    let server = RdmaServer::bind(
        SocketAddr::new(ip, 0),
        rdma_config(dev, Duration::from_micros(50)),
    )?;
    let addr = server.local_addr()?;
    Ok((server, addr))
}

fn rdma_config(device: &DeviceConfig, spin: Duration) -> RdmaConfig {
    RdmaConfig {
        device: device.clone(),
        spin: SpinConfig::adaptive(spin),
        handshake_timeout: TIMEOUT,
        // Servers need the side channel's key; clients prove it before any queue pair exists.
        fabric_key: ClusterKey::new(KEY)
            .ok()
            .map(|k| lockmgr_transport::FabricKey::new(k.fabric_secret())),
        ..RdmaConfig::default()
    }
}

fn options(name: &str) -> Result<ClientOptions, String> {
    Ok(ClientOptions {
        node_name: name.into(),
        key: ClusterKey::new(KEY).map_err(|e| format!("{e}"))?,
        handshake_timeout: TIMEOUT,
    })
}

fn connect(server: SocketAddr, device: &DeviceConfig, name: &str) -> Result<Client, String> {
    let t = RdmaClient::connect(server, &rdma_config(device, Duration::ZERO))
        .map_err(|e| format!("RDMA connect: {e}"))?;
    LockClient::connect(t, &options(name)?).map_err(|e| format!("lockmgr handshake: {e}"))
}

fn call(c: &mut Client, req: Request) -> Result<Reply, String> {
    hw_tests::lock_calls::call(c, req, TIMEOUT)
}

fn open(c: &mut Client, file: FileId) -> Result<OpenId, String> {
    hw_tests::lock_calls::open_read_write(c, file, TIMEOUT)
}

fn expect(what: &str, got: Reply, want: Reply) -> TestResult {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want:?}, got {got:?}"))
    }
}

fn lock(open: OpenId, range: LockRange, fail_immediately: bool) -> Request {
    Request::Lock {
        open,
        ranges: vec![range],
        fail_immediately,
    }
}

fn unlock(open: OpenId, range: LockRange) -> Request {
    Request::Unlock {
        open,
        ranges: vec![range],
    }
}

fn wait_granted(c: &mut Client) -> TestResult {
    match c
        .next_event(TIMEOUT)
        .map_err(|e| format!("waiting for the lock grant: {e}"))?
    {
        Event::Notify(Notification::Completed { reply, .. }) => {
            expect("deferred lock", reply, Reply::Done(Status::Success))
        }
        other => Err(format!("expected the lock grant, got {other:?}")),
    }
}

const RANGE: LockRange = LockRange {
    offset: 0,
    length: 100,
    exclusive: true,
};

/// smbd's own cluster lock service (`[lockmgr] transport = "rdma"`, the code path a real smbd
/// node takes) for two nodes: node B's lock conflicts with node A's, B's blocking lock waits
/// and is granted when A unlocks, and A's session ending releases its open.
fn test_smbd_nodes(d: &Daemon, dev: &DeviceConfig) -> TestResult {
    use smbd::locking::{LockService, RequestId, SessionId};
    use smbd::server::cluster::ClusterLocks;

    let key_file = std::env::temp_dir().join(format!("rdma-suite-{}.key", std::process::id()));
    std::fs::write(&key_file, KEY).map_err(|e| format!("writing the key file: {e}"))?;
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| format!("chmod the key file: {e}"))?;
    let node = |name: &str| -> Result<ClusterLocks, String> {
        let cfg = smbd::config::LockmgrConfig {
            transport: smbd::config::LockTransport::Rdma,
            connect: Some(d.addr.to_string()),
            cluster_key_file: Some(key_file.clone()),
            node_name: Some(name.into()),
            request_timeout_ms: TIMEOUT.as_millis() as u64,
            rdma_device: dev.device.clone(),
            rdma_port: dev.port,
            gid_index: dev.gid_index,
            ..smbd::config::LockmgrConfig::default()
        };
        let (locks, _pump) = ClusterLocks::from_config(&cfg).map_err(|e| e.to_string())?;
        Ok(locks)
    };
    let result = (|| {
        let a = node("smbd-a")?;
        let b = node("smbd-b")?;
        let (conn_a, conn_b) = (SessionId(1), SessionId(1));
        let file = FileId(0x5a5a);
        let open_req = || {
            Request::Open(OpenRequest {
                file,
                access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
                share: share::READ | share::WRITE,
                ..OpenRequest::default()
            })
        };
        let opened = |r: Reply| match r {
            Reply::Opened { open, .. } => Ok(open),
            other => Err(format!("open: {other:?}")),
        };
        let oa = opened(a.request(conn_a, RequestId(1), open_req()))?;
        let ob = opened(b.request(conn_b, RequestId(1), open_req()))?;
        expect(
            "node A locks",
            a.request(conn_a, RequestId(2), lock(oa, RANGE, true)),
            Reply::Done(Status::Success),
        )?;
        expect(
            "node B's conflicting lock",
            b.request(conn_b, RequestId(2), lock(ob, RANGE, true)),
            Reply::Done(Status::LockNotGranted),
        )?;
        expect(
            "node B's blocking lock",
            b.request(conn_b, RequestId(3), lock(ob, RANGE, false)),
            Reply::Pending,
        )?;
        expect(
            "node A unlocks",
            a.request(conn_a, RequestId(4), unlock(oa, RANGE)),
            Reply::Done(Status::Success),
        )?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            b.tick();
            if let Some((s, n)) = b.poll_event() {
                match n {
                    Notification::Completed { request, reply } if s == conn_b => {
                        expect(
                            "node B's deferred lock",
                            reply,
                            Reply::Done(Status::Success),
                        )?;
                        if request != RequestId(3) {
                            return Err(format!("completion for {request:?}, expected 3"));
                        }
                        break;
                    }
                    other => return Err(format!("unexpected event {other:?}")),
                }
            }
            if Instant::now() > deadline {
                return Err("node B's blocking lock was not granted".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Node A's connection ends: its open goes, so an exclusive open from B succeeds.
        // end_session is sent, not awaited, and A's and B's queue pairs are not ordered with
        // each other, so B's open may reach lockmgrd before A's session end: until then it
        // is a sharing violation (as a client of another node would see), after it a grant.
        a.end_session(conn_a);
        b.end_session(conn_b);
        let excl = || {
            Request::Open(OpenRequest {
                file,
                access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
                share: 0,
                ..OpenRequest::default()
            })
        };
        let deadline = Instant::now() + TIMEOUT;
        let mut id = 5;
        loop {
            match b.request(SessionId(2), RequestId(id), excl()) {
                Reply::Done(Status::SharingViolation) if Instant::now() < deadline => {
                    id += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => return opened(other).map(|_| ()),
            }
        }
    })();
    let _ = std::fs::remove_file(&key_file);
    result
}

/// The daemon side: lockmgrd's server loop over RDMA on a thread.
struct Daemon {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    waker: lockmgr_transport::Waker,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Daemon {
    fn start(ip: IpAddr, device: &DeviceConfig) -> Result<Daemon, RdmaError> {
        let (transport, addr) = bind_server(ip, device)?;
        let waker = transport.waker();
        let key =
            ClusterKey::new(KEY).map_err(|_| RdmaError::Config("cluster key rejected".into()))?;
        let options = ServerOptions {
            key,
            liveness: LIVENESS,
            engine: lockmgr_engine::Config::default(),
        };
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let mut server = Server::new(transport, options);
            server.run(&flag).map_err(|e| format!("server loop: {e}"))
        });
        Ok(Daemon {
            addr,
            shutdown,
            waker,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) -> TestResult {
        self.shutdown.store(true, Ordering::Release);
        self.waker.wake();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("server thread panicked".into()),
            None => Ok(()),
        }
    }
}

/// Kills the child on drop so a failing test leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn test_connect(d: &Daemon, dev: &DeviceConfig) -> TestResult {
    let mut c = connect(d.addr, dev, "node-connect")?;
    let status = c.status(TIMEOUT).map_err(|e| format!("status: {e}"))?;
    if !status.contains("node-connect") {
        return Err(format!("status does not list the node:\n{status}"));
    }
    let s = c.transport().stats();
    println!(
        "    connected over {} (inline up to {} bytes, {} send credits)",
        c.transport().device_info().name,
        s.max_inline,
        s.credits
    );
    c.goodbye().map_err(|e| format!("goodbye: {e}"))
}

fn test_lock_unlock(d: &Daemon, dev: &DeviceConfig) -> TestResult {
    let mut c = connect(d.addr, dev, "node-lock")?;
    let o = open(&mut c, FileId(0x1001))?;
    expect(
        "lock",
        call(&mut c, lock(o, RANGE, true))?,
        Reply::Done(Status::Success),
    )?;
    expect(
        "conflicting second lock",
        call(&mut c, lock(o, RANGE, true))?,
        Reply::Done(Status::LockNotGranted),
    )?;
    expect(
        "unlock",
        call(&mut c, unlock(o, RANGE))?,
        Reply::Done(Status::Success),
    )?;
    expect(
        "unlock of an unlocked range",
        call(&mut c, unlock(o, RANGE))?,
        Reply::Done(Status::RangeNotLocked),
    )?;
    expect(
        "relock",
        call(&mut c, lock(o, RANGE, true))?,
        Reply::Done(Status::Success),
    )?;
    match call(&mut c, Request::Close { open: o })? {
        Reply::Closed { .. } => Ok(()),
        other => Err(format!("close: {other:?}")),
    }
}

fn test_contention(d: &Daemon, dev: &DeviceConfig) -> TestResult {
    let mut a = connect(d.addr, dev, "node-a")?;
    let mut b = connect(d.addr, dev, "node-b")?;
    let file = FileId(0x2002);
    let oa = open(&mut a, file)?;
    let ob = open(&mut b, file)?;
    expect(
        "A locks",
        call(&mut a, lock(oa, RANGE, true))?,
        Reply::Done(Status::Success),
    )?;
    expect(
        "B try-lock",
        call(&mut b, lock(ob, RANGE, true))?,
        Reply::Done(Status::LockNotGranted),
    )?;
    expect(
        "B blocking lock",
        call(&mut b, lock(ob, RANGE, false))?,
        Reply::Pending,
    )?;
    // B must still be waiting: nothing may arrive for it before A unlocks.
    if let Ok(ev) = b.next_event(Duration::from_millis(300)) {
        return Err(format!("B got {ev:?} while A still held the lock"));
    }
    expect(
        "A unlocks",
        call(&mut a, unlock(oa, RANGE))?,
        Reply::Done(Status::Success),
    )?;
    wait_granted(&mut b)?;
    expect(
        "A try-lock after handover",
        call(&mut a, lock(oa, RANGE, true))?,
        Reply::Done(Status::LockNotGranted),
    )?;
    Ok(())
}

fn test_killed_holder(d: &Daemon, dev: &DeviceConfig) -> TestResult {
    let file = FileId(0x3003);
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .arg("hold")
        .args(["--server", &d.addr.to_string()])
        .args(["--file", &format!("{:x}", file.0)])
        .args(device_args(dev))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn holder: {e}"))?;
    let stdout = child.stdout.take().ok_or("holder has no stdout")?;
    let mut holder = Proc(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading holder: {e}"))?;
    if !line.starts_with("LOCKED") {
        return Err(format!("holder said {line:?}"));
    }
    let mut w = connect(d.addr, dev, "survivor")?;
    let o = open(&mut w, file)?;
    expect(
        "try-lock while holder lives",
        call(&mut w, lock(o, RANGE, true))?,
        Reply::Done(Status::LockNotGranted),
    )?;
    expect(
        "blocking lock",
        call(&mut w, lock(o, RANGE, false))?,
        Reply::Pending,
    )?;
    holder.0.kill().map_err(|e| format!("kill: {e}"))?;
    holder.0.wait().map_err(|e| format!("wait: {e}"))?;
    wait_granted(&mut w)?;
    let status = w.status(TIMEOUT).map_err(|e| format!("status: {e}"))?;
    if status.contains("doomed-node") {
        return Err(format!("killed node still listed:\n{status}"));
    }
    Ok(())
}

/// Many requests in flight at once: frames bigger than the inline limit, send-queue and credit
/// exhaustion on both sides, credit returns piggy-backed and explicit.
fn test_pipelined_flood(d: &Daemon, dev: &DeviceConfig) -> TestResult {
    let mut c = connect(d.addr, dev, "node-flood")?;
    let o = open(&mut c, FileId(0x4004))?;
    const N: u64 = 20_000;
    let mut sent = 0u64;
    let mut replies = 0u64;
    let deadline = Instant::now() + TIMEOUT * 3;
    while replies < N {
        if Instant::now() > deadline {
            return Err(format!("only {replies} of {N} replies arrived"));
        }
        // Keep a deep pipeline: up to 2000 requests outstanding, flushed in batches.
        while sent < N && sent - replies < 2000 {
            c.submit(Request::CheckIo {
                open: o,
                offset: sent,
                length: 1,
                write: false,
            })
            .map_err(|e| format!("submit: {e}"))?;
            sent += 1;
            // Small frames, many of them: far more frames than credits are in flight.
            if sent.is_multiple_of(5) {
                c.flush().map_err(|e| format!("flush: {e}"))?;
            }
        }
        c.flush().map_err(|e| format!("flush: {e}"))?;
        let mut bad = None;
        c.poll(&mut |ev| match ev {
            Event::Reply {
                reply: Reply::Done(Status::Success),
                ..
            } => replies += 1,
            other => bad = Some(other),
        })
        .map_err(|e| format!("poll: {e}"))?;
        if let Some(ev) = bad {
            return Err(format!("unexpected event {ev:?}"));
        }
        if replies < sent {
            c.wait(Some(Duration::from_millis(50)))
                .map_err(|e| format!("wait: {e}"))?;
        }
    }
    let s = c.transport().stats();
    println!(
        "    {N} requests: {} frames out, {} frames in, {} explicit credit updates",
        s.frames_out, s.frames_in, s.credit_updates_out
    );
    Ok(())
}

/// A short lockbench-like run: lock/unlock round trips with percentiles. Under TCG the numbers
/// are functional only.
fn test_bench(d: &Daemon, dev: &DeviceConfig, ops: u32) -> TestResult {
    // A short spin catches fast replies; longer spins starve the 2 vCPUs of a TCG guest.
    let t = RdmaClient::connect(d.addr, &rdma_config(dev, Duration::from_micros(20)))
        .map_err(|e| format!("RDMA connect: {e}"))?;
    let mut c =
        LockClient::connect(t, &options("node-bench")?).map_err(|e| format!("handshake: {e}"))?;
    let o = open(&mut c, FileId(0x5005))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let start = Instant::now();
    for i in 0..ops {
        let r = LockRange {
            offset: u64::from(i) * 10,
            length: 10,
            exclusive: true,
        };
        let t0 = Instant::now();
        expect(
            "bench lock",
            call(&mut c, lock(o, r, true))?,
            Reply::Done(Status::Success),
        )?;
        expect(
            "bench unlock",
            call(&mut c, unlock(o, r))?,
            Reply::Done(Status::Success),
        )?;
        let us = (t0.elapsed().as_nanos() / 2000).max(1) as u64;
        hist.saturating_record(us);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "    lockbench: {} round trips in {:.2}s ({:.0}/s); per round trip us: p50={} p90={} p99={} p99.9={} max={}",
        2 * u64::from(ops),
        secs,
        2.0 * f64::from(ops) / secs.max(1e-9),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
    Ok(())
}

/// The side channel refuses a client without the cluster key before any queue pair exists
/// (issue 9): the server counts one failed proof and holds no peer for it, and a client with
/// the key is still served afterwards. The server's own counters decide: the refused client
/// also fails on its side (it cannot verify the server's proof), so its error alone would not
/// show that the server checked.
fn test_wrong_key_refused(ip: IpAddr, dev: &DeviceConfig) -> TestResult {
    let (mut server, addr) = bind_server(ip, dev).map_err(|e| format!("RDMA bind: {e}"))?;
    let wrong = RdmaConfig {
        fabric_key: Some(lockmgr_transport::FabricKey::new([0x5a; 32])),
        ..rdma_config(dev, Duration::ZERO)
    };
    let bad = std::thread::spawn(move || RdmaClient::connect(addr, &wrong).is_ok());
    let deadline = Instant::now() + TIMEOUT;
    while !(bad.is_finished() && server.auth_failures() > 0) && Instant::now() < deadline {
        server.poll(&mut |_| {}).map_err(|e| format!("poll: {e}"))?;
        server
            .wait(Some(Duration::from_millis(5)))
            .map_err(|e| format!("wait: {e}"))?;
    }
    let bad_connected = bad
        .join()
        .map_err(|_| "wrong-key client panicked".to_string())?;
    let (failures, peers) = (server.auth_failures(), server.peer_count());
    if bad_connected || failures != 1 || peers != 0 {
        return Err(format!(
            "wrong key: client connected {bad_connected}, server auth failures {failures} \
             (want 1), peers {peers} (want 0)"
        ));
    }
    let good_cfg = rdma_config(dev, Duration::ZERO);
    let good = std::thread::spawn(move || {
        RdmaClient::connect(addr, &good_cfg)
            .map(|_client| std::thread::sleep(Duration::from_millis(200)))
            .map_err(|e| format!("RDMA connect with the key: {e}"))
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut peak = 0;
    while !good.is_finished() && Instant::now() < deadline {
        server.poll(&mut |_| {}).map_err(|e| format!("poll: {e}"))?;
        peak = peak.max(server.peer_count());
        server
            .wait(Some(Duration::from_millis(5)))
            .map_err(|e| format!("wait: {e}"))?;
    }
    good.join()
        .map_err(|_| "client with the key panicked".to_string())??;
    if peak != 1 {
        return Err(format!(
            "the client with the key: server peers {peak} (want 1)"
        ));
    }
    println!(
        "    wrong key refused by the server (1 failed proof, no queue pair); right key served"
    );
    Ok(())
}

/// One `lockmgrd::conformance` scenario over RDMA against a fresh lockmgrd (like each
/// `#[test]` of tests/conformance.rs for the other transports).
fn test_conformance(ip: IpAddr, dev: &DeviceConfig, scenario: conformance::Scenario) -> TestResult {
    let (server, addr) = bind_server(ip, dev).map_err(|e| format!("RDMA bind: {e}"))?;
    // Clients sleep rather than spin: the scenarios run up to three nodes plus the server on
    // two vCPUs.
    let cfg = rdma_config(dev, Duration::ZERO);
    let connect = move |_node: usize| -> Result<Box<dyn ClientTransport>, String> {
        RdmaClient::connect(addr, &cfg)
            .map(|c| Box::new(c) as Box<dyn ClientTransport>)
            .map_err(|e| format!("RDMA connect: {e}"))
    };
    let opts = EnvOptions {
        timeout: TIMEOUT,
        ..EnvOptions::default()
    };
    let mut env = Env::start(move || Ok(server), connect, opts).map_err(|e| e.to_string())?;
    let r = scenario(&env).map_err(|e| e.to_string());
    let stopped = env.stop().map_err(|e| e.to_string());
    r.and(stopped)
}

/// Where a helper binary is: the path given with `--NAME`, else `NAME` next to this binary.
/// `Ok(None)`: not required and not found (skip).
fn find_helper(given: &Option<PathBuf>, name: &str) -> Result<Option<PathBuf>, String> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(Some(p.clone()))
        } else {
            Err(format!("--{name} {}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    Ok(exe.parent().map(|d| d.join(name)).filter(|p| p.is_file()))
}

/// Runs `lockbench --transport rdma` briefly: it must exit 0 and report the raw verbs
/// baseline, the transport echo and a non-zero number of lockmgr operations.
fn test_lockbench_cli(bin: &PathBuf, ip: IpAddr, dev: &DeviceConfig) -> TestResult {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--transport",
        "rdma",
        "--duration",
        "1",
        "--raw-rounds",
        "200",
    ])
    // Short spins: server, client and the echo thread share the guest's two vCPUs.
    .args(["--spin-us", "20", "--clients", "1"])
    .args(["--listen-ip", &ip.to_string()])
    .args(["--rdma-port", &dev.port.to_string()]);
    if let Some(name) = &dev.device {
        cmd.args(["--rdma-device", name]);
    }
    if let Some(i) = dev.gid_index {
        cmd.args(["--gid-index", &i.to_string()]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout.lines() {
        println!("    {line}");
    }
    if !out.status.success() {
        return Err(format!("lockbench exited with {}: {stderr}", out.status));
    }
    for want in ["raw Rdma ping-pong", "transport echo", "lockmgr operation"] {
        if !stdout.contains(want) {
            return Err(format!("lockbench output lacks {want:?}"));
        }
    }
    let ops = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ops="))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or("lockbench output has no ops=N")?;
    if ops == 0 {
        return Err("lockbench measured no lock operations".into());
    }
    Ok(())
}

/// Child process of the kill test: take the lock, say so, then wait to be killed.
fn hold(a: &Args) -> ExitCode {
    let Some(server) = a.server else {
        eprintln!("hold: --server is required");
        return ExitCode::from(2);
    };
    let run = || -> TestResult {
        let mut c = connect(server, &a.device, "doomed-node")?;
        let o = open(&mut c, FileId(a.file))?;
        expect(
            "holder lock",
            call(&mut c, lock(o, RANGE, true))?,
            Reply::Done(Status::Success),
        )?;
        println!("LOCKED");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        loop {
            // Answer nothing, just stay connected (and keep the session alive) until SIGKILL.
            let _ = c.next_event(Duration::from_secs(1));
            let _ = c.tick(Instant::now());
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("ERROR {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RDMA_SUITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if std::env::args().nth(1).as_deref() == Some("sd-hold") {
        let server = std::env::args().skip(2).collect::<Vec<_>>();
        let addr = match server.as_slice() {
            [flag, a] if flag == "--server" => a.parse().map_err(|e| format!("--server: {e}")),
            _ => Err("usage: rdma-suite sd-hold --server IP:PORT".to_string()),
        };
        let r = addr.and_then(hw_tests::smbdirect::hold);
        if let Err(e) = r {
            println!("ERROR {e}");
        }
        return ExitCode::from(1);
    }
    let (is_hold, args) = match parse_args(std::env::args().skip(1)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("rdma-suite: {e}");
            return ExitCode::from(2);
        }
    };
    if is_hold {
        return hold(&args);
    }
    let info = match probe(&args.device) {
        Ok(i) => i,
        Err(e @ RdmaError::NoDevice(_)) => {
            println!("rdma-suite: {e}");
            return ExitCode::from(EXIT_NO_DEVICE);
        }
        Err(e) => {
            println!("rdma-suite: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "device {} port {} gid[{}] {} lid {} link_layer {} mtu enum {}",
        info.name,
        info.port,
        info.gid_index,
        format_gid(&info.gid),
        info.lid,
        info.link_layer,
        info.active_mtu
    );
    // RoCEv2 GIDs of IPv4 addresses are IPv4-mapped: the side channel can use that address.
    let ip = args.addr.unwrap_or_else(|| {
        let v6 = std::net::Ipv6Addr::from(info.gid);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::from([127, 0, 0, 1]),
        }
    });
    let mut daemon = match Daemon::start(ip, &args.device) {
        Ok(d) => d,
        Err(e) => {
            println!("rdma-suite: cannot start lockmgrd over RDMA on {ip}: {e}");
            println!("0 passed, 1 failed");
            return ExitCode::from(1);
        }
    };
    println!("lockmgrd listening on {} (RDMA side channel)", daemon.addr);
    let dev = args.device.clone();
    let tests: Vec<(&str, TestFn)> = vec![
        ("connect", Box::new(|d| test_connect(d, &dev))),
        ("lock_unlock", Box::new(|d| test_lock_unlock(d, &dev))),
        ("contention", Box::new(|d| test_contention(d, &dev))),
        (
            "killed_holder_releases_lock",
            Box::new(|d| test_killed_holder(d, &dev)),
        ),
        (
            "pipelined_flood",
            Box::new(|d| test_pipelined_flood(d, &dev)),
        ),
        (
            "smbd_nodes_share_locks",
            Box::new(|d| test_smbd_nodes(d, &dev)),
        ),
        (
            "lockbench",
            Box::new(|d| test_bench(d, &dev, args.bench_ops)),
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    let mut report = |name: &str, start: Instant, r: TestResult| match r {
        Ok(()) => {
            passed += 1;
            println!("test {name} ... ok ({:.2}s)", start.elapsed().as_secs_f64());
        }
        Err(e) => {
            failed += 1;
            println!("test {name} ... FAILED: {e}");
        }
    };
    for (name, t) in &tests {
        let start = Instant::now();
        report(name, start, t(&daemon));
    }
    if let Err(e) = daemon.stop() {
        report("server_shutdown", Instant::now(), Err(e));
    }
    let start = Instant::now();
    report(
        "wrong_key_refused_before_any_queue_pair",
        start,
        test_wrong_key_refused(ip, &args.device),
    );
    for (name, scenario) in conformance::SCENARIOS {
        let start = Instant::now();
        let r = test_conformance(ip, &args.device, *scenario);
        report(&format!("conformance::{name}"), start, r);
    }
    match find_helper(&args.smbdirectd, "smbdirectd") {
        Ok(Some(bin)) => {
            let start = Instant::now();
            let r = std::env::current_exe()
                .map_err(|e| format!("current_exe: {e}"))
                .and_then(|exe| hw_tests::smbdirect::test_negotiate_through_proxy(ip, &bin, &exe));
            report("smbdirectd_negotiate_through_proxy", start, r);
        }
        Ok(None) => println!(
            "test smbdirectd_negotiate_through_proxy ... skipped (no smbdirectd next to rdma-suite)"
        ),
        Err(e) => report("smbdirectd_negotiate_through_proxy", Instant::now(), Err(e)),
    }
    if args.cifs {
        let start = Instant::now();
        let r = match find_helper(&args.smbdirectd, "smbdirectd") {
            Ok(Some(bin)) => hw_tests::cifs_mount::test_kernel_client_mount(ip, &bin),
            Ok(None) => Err("--cifs needs smbdirectd".into()),
            Err(e) => Err(e),
        };
        report("kernel_cifs_mount_over_smbdirect", start, r);
    }
    if let Some(tools) = &args.ca_failover {
        let start = Instant::now();
        let r = match tools.split(',').map(PathBuf::from).collect::<Vec<_>>()[..] {
            [ref lockmgrd, ref etcd, ref ping_pong] => {
                hw_tests::ca_failover::test_ping_pong_across_lockmgrd_failover(
                    &hw_tests::ca_failover::Tools {
                        lockmgrd: lockmgrd.clone(),
                        etcd: etcd.clone(),
                        ping_pong: ping_pong.clone(),
                    },
                )
            }
            _ => Err(format!(
                "--ca-failover wants LOCKMGRD,ETCD,PING_PONG, got {tools:?}"
            )),
        };
        report("kernel_cifs_ping_pong_across_lockmgrd_failover", start, r);
    }
    if let Some(tools) = &args.replication {
        let start = Instant::now();
        let r = match tools.split(',').map(PathBuf::from).collect::<Vec<_>>()[..] {
            [ref lockmgrd, ref etcd] => hw_tests::replication_rdma::test_replica_pair_over_rdma(
                &hw_tests::replication_rdma::Tools {
                    lockmgrd: lockmgrd.clone(),
                    etcd: etcd.clone(),
                },
                ip,
                &args.device,
            ),
            _ => Err(format!("--replication wants LOCKMGRD,ETCD, got {tools:?}")),
        };
        report("replica_pair_over_rdma_survives_a_primary_kill", start, r);
    }
    match find_helper(&args.lockbench, "lockbench") {
        Ok(Some(bin)) => {
            let start = Instant::now();
            let r = test_lockbench_cli(&bin, ip, &args.device);
            report("lockbench_cli", start, r);
        }
        Ok(None) => println!("test lockbench_cli ... skipped (no lockbench next to rdma-suite)"),
        Err(e) => report("lockbench_cli", Instant::now(), Err(e)),
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
