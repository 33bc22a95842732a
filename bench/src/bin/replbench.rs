//! replbench: what replication costs the lock path, measured in one run.
//!
//! Three measurements over the same transport (`--transport udp`: UDP on loopback, the
//! default; `shm`: shared-memory rings, the replicas' link too):
//! 1. the transport's own round trip (an echo server): the "one raw round trip" baseline;
//! 2. lockmgrd without replication (a bare engine);
//! 3. a replicated lockmgrd: primary + standby (two in-process replicas, epochs in a private
//!    etcd started for the run), every reply held until the standby acknowledged its input.
//!
//! For each: lock+unlock latency percentiles (one request per frame, closed loop) and batched
//! throughput (`--batch` requests per frame, `--depth` frames in flight). Printed: the added
//! latency of replication against one transport round trip, and the throughput ratio, which
//! the HA issue targets (<= 1.2x and >= 0.7x).
//!
//!     cargo build --release -p lockbench
//!     target/release/replbench [--transport udp|shm] [--duration 3] [--batch 64] [--depth 4] [--json]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use lockbench::lockload::{self, LoadSpec, Op, Pattern};
use lockbench::report::{new_histogram, record, Percentiles};
use lockmgr_client::{AnyTransport, ClientOptions, LockClient, TransportSpec};
use lockmgr_coord::{Coordinator, LocalEtcd};
use lockmgr_proto::ClusterKey;
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::shm::{ShmConfig, ShmServer};
use lockmgr_transport::udp::UdpServer;
use lockmgr_transport::{raw, FabricKey, ServerTransport, SpinConfig};
use lockmgrd::config::SpinModeKind;
use lockmgrd::replication::HaOptions;
use lockmgrd::{Server, ServerOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &[u8] = b"replbench-cluster-key-0123456789";

#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The transport of the nodes and of the replicas' link.
    #[arg(long, value_enum, default_value_t = Kind::Udp)]
    transport: Kind,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Requests per frame in the throughput runs.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Frames in flight in the throughput runs.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Busy-poll budget of every endpoint, microseconds (adaptive).
    #[arg(long, default_value_t = 50)]
    spin_us: u64,
    /// lockmgrd's `spin_mode` for every endpoint: whether spinning also stops under CPU
    /// pressure (`adaptive`, the default), follows traffic alone (`traffic`) or never stops
    /// (`always`).
    #[arg(long, value_enum, default_value_t = SpinModeKind::Adaptive)]
    spin_mode: SpinModeKind,
    /// Round trips of the transport baseline.
    #[arg(long, default_value_t = 50_000)]
    raw_rounds: usize,
    /// Standby failure timeout (only matters if a replica stalls).
    #[arg(long, default_value_t = 1000)]
    failover_ms: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Udp,
    Shm,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Udp => "udp",
            Kind::Shm => "shm",
        }
    }
}

/// How a client (a node, or the standby's link) reaches the server at `address` (udp:
/// ADDR:PORT, shm: the unix socket's path).
fn spec(kind: Kind, address: &str, spin: SpinConfig) -> Result<TransportSpec, String> {
    Ok(match kind {
        Kind::Udp => TransportSpec::Udp {
            server: address.parse().map_err(|e| format!("{address:?}: {e}"))?,
            cfg: reliable(spin),
        },
        Kind::Shm => TransportSpec::Shm {
            path: PathBuf::from(address),
            spin,
            timeout: Duration::from_secs(2),
        },
    })
}

fn connect(kind: Kind, address: &str, spin: SpinConfig) -> Result<AnyTransport, String> {
    lockmgr_client::connect(&spec(kind, address, spin)?).map_err(|e| e.to_string())
}

#[derive(serde::Serialize)]
struct Row {
    setup: &'static str,
    latency_p50_ns: u64,
    latency_p99_ns: u64,
    latency_max_ns: u64,
    throughput_ops_per_s: f64,
}

#[derive(serde::Serialize)]
struct Report {
    transport: &'static str,
    batch: usize,
    depth: usize,
    transport_echo_p50_ns: u64,
    transport_echo_p99_ns: u64,
    rows: Vec<Row>,
    /// (replicated p50 - alone p50) / transport echo p50. Target <= 1.2.
    added_latency_in_round_trips: f64,
    /// replicated / alone batched throughput. Target >= 0.7.
    throughput_ratio: f64,
}

fn key() -> ClusterKey {
    // A constant of sufficient length.
    ClusterKey::new(KEY).expect("constant key is long enough")
}

fn reliable(spin: SpinConfig) -> ReliableConfig {
    ReliableConfig {
        spin,
        fabric_key: Some(FabricKey::new(key().fabric_secret())),
        ..ReliableConfig::default()
    }
}

fn server_options() -> ServerOptions {
    ServerOptions {
        key: key(),
        liveness: Duration::from_secs(30),
        engine: Default::default(),
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn coordinator(etcd: &LocalEtcd) -> Result<Coordinator, lockmgr_coord::CoordError> {
    etcd.coordinator("replbench")
}

/// A lockmgrd server on its own thread; stopped on drop.
struct Running {
    stop: Arc<AtomicBool>,
    waker: lockmgr_transport::Waker,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn<T: ServerTransport + 'static>(
        server: impl FnOnce() -> Result<Server<T>, String> + Send + 'static,
        waker: lockmgr_transport::Waker,
    ) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || match server() {
            Ok(mut s) => {
                if let Err(e) = s.run(&flag) {
                    eprintln!("replbench: server stopped: {e}");
                }
            }
            Err(e) => eprintln!("replbench: server did not start: {e}"),
        });
        Running {
            stop,
            waker,
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn measure(cli: &Cli, addr: &str, spin: SpinConfig, setup: &'static str) -> Result<Row, String> {
    let run = |batch: usize, depth: usize, index: usize| -> Result<lockload::LoadResult, String> {
        let t = connect(cli.transport, addr, spin)?;
        let mut c = LockClient::connect(
            t,
            &ClientOptions {
                node_name: format!("replbench-{index}"),
                key: key(),
                handshake_timeout: Duration::from_secs(10),
            },
        )
        .map_err(|e| format!("connect: {e}"))?;
        let spec = LoadSpec {
            client_index: index,
            pattern: Pattern::Uncontended,
            op: Op::Lock,
            duration: Duration::from_secs_f64(cli.duration),
            batch,
            depth,
            rate: None,
            seed: 0x5eed + index as u64,
        };
        let ws = lockload::setup_workset(&mut c, &spec)?;
        lockload::run_closed(&mut c, &ws, &spec)
    };
    let latency = run(1, 1, 0)?;
    let throughput = run(cli.batch.max(1), cli.depth.max(1), 1)?;
    let p = Percentiles::of(&latency.hist);
    Ok(Row {
        setup,
        latency_p50_ns: p.p50_ns,
        latency_p99_ns: p.p99_ns,
        latency_max_ns: p.max_ns,
        throughput_ops_per_s: throughput.ops as f64 / throughput.elapsed.as_secs_f64().max(1e-9),
    })
}

fn run(cli: &Cli) -> Result<Report, String> {
    let spin = SpinConfig {
        spin: Duration::from_micros(cli.spin_us),
        mode: cli
            .spin_mode
            .mode(lockmgr_transport::DEFAULT_SPIN_IDLE_AFTER),
    };
    match cli.transport {
        Kind::Udp => run_with(cli, spin, &|_: &str| {
            let loopback = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let server = UdpServer::bind(loopback, reliable(spin)).map_err(|e| e.to_string())?;
            let addr = server.local_addr().map_err(|e| e.to_string())?;
            Ok((server, addr.to_string()))
        }),
        Kind::Shm => {
            let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
            let base = dir.path().to_owned();
            run_with(cli, spin, &move |name: &str| {
                let path = base.join(format!("{name}.sock"));
                let cfg = ShmConfig {
                    spin,
                    ..ShmConfig::default()
                };
                let server = ShmServer::bind(&path, cfg).map_err(|e| e.to_string())?;
                Ok((server, path.display().to_string()))
            })
        }
    }
}

/// A server of `T` named `name` and its address, for [`run_with`].
type Bind<'a, T> = dyn Fn(&str) -> Result<(T, String), String> + 'a;

/// The three measurements over servers `bind` makes.
fn run_with<T: ServerTransport + 'static>(
    cli: &Cli,
    spin: SpinConfig,
    bind: &Bind<'_, T>,
) -> Result<Report, String> {
    let kind = cli.transport;
    // 1. One transport round trip.
    let (echo_server, echo_addr) = bind("echo")?;
    let echo = raw::EchoServer::spawn(echo_server);
    let mut tc = connect(kind, &echo_addr, spin)?;
    tc.authenticate(&FabricKey::new(key().fabric_secret()))
        .map_err(|e| e.to_string())?;
    let samples = raw::transport_pingpong(
        tc.as_mut(),
        cli.raw_rounds,
        cli.raw_rounds / 10,
        lockload::lock_frame_len(),
    )
    .map_err(|e| e.to_string())?;
    drop(tc);
    echo.stop().map_err(|e| e.to_string())?;
    let mut h = new_histogram();
    for s in samples {
        record(&mut h, s);
    }
    let echo_p = Percentiles::of(&h);

    // 2. lockmgrd without replication.
    let (alone_server, alone_addr) = bind("alone")?;
    let alone_waker = alone_server.waker();
    let alone = Running::spawn(
        move || Ok(Server::new(alone_server, server_options())),
        alone_waker,
    );
    let alone_row = measure(cli, &alone_addr, spin, "lockmgrd alone")?;
    drop(alone);

    // 3. Primary + standby.
    let etcd = LocalEtcd::start().map_err(|e| e.to_string())?;
    let ha = |name: &str, addr: &str| HaOptions {
        name: name.into(),
        address: addr.to_owned(),
        etcd: vec![etcd.endpoint().to_owned()],
        cluster: "replbench".into(),
        failover: Duration::from_millis(cli.failover_ms),
        etcd_deadline: Duration::from_secs(2),
        link: Box::new(move |a: &str| spec(kind, a, spin)),
    };
    let (a_server, pa) = bind("bench-a")?;
    let a_waker = a_server.waker();
    let a_opts = ha("bench-a", &pa);
    let primary = Running::spawn(
        move || lockmgrd::replication::start(a_server, server_options(), a_opts),
        a_waker,
    );
    wait_for(&etcd, |c| c.primary.name == "bench-a")?;
    // The replica's own cost (input log, outboxes) before any standby is attached.
    let solo_row = measure(cli, &pa, spin, "primary, no standby")?;
    let (b_server, pb) = bind("bench-b")?;
    let b_waker = b_server.waker();
    let b_opts = ha("bench-b", &pb);
    let standby = Running::spawn(
        move || lockmgrd::replication::start(b_server, server_options(), b_opts),
        b_waker,
    );
    wait_for(&etcd, |c| c.standbys.iter().any(|m| m.name == "bench-b"))?;
    let repl_row = measure(cli, &pa, spin, "primary + standby")?;
    drop(standby);
    drop(primary);
    drop(etcd);

    let added = repl_row
        .latency_p50_ns
        .saturating_sub(alone_row.latency_p50_ns) as f64
        / echo_p.p50_ns.max(1) as f64;
    let ratio = repl_row.throughput_ops_per_s / alone_row.throughput_ops_per_s.max(1e-9);
    Ok(Report {
        transport: kind.name(),
        batch: cli.batch,
        depth: cli.depth,
        transport_echo_p50_ns: echo_p.p50_ns,
        transport_echo_p99_ns: echo_p.p99_ns,
        rows: vec![alone_row, solo_row, repl_row],
        added_latency_in_round_trips: added,
        throughput_ratio: ratio,
    })
}

fn wait_for(
    etcd: &LocalEtcd,
    ok: impl Fn(&lockmgr_coord::Configuration) -> bool,
) -> Result<(), String> {
    let mut c = coordinator(etcd).map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = c.read() {
            if ok(&s.config) {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err("replicas did not form within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    match run(&cli) {
        Ok(r) if cli.json => match serde_json::to_string(&r) {
            Ok(s) => {
                println!("{s}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("replbench: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Ok(r) => {
            let us = |ns: u64| ns as f64 / 1000.0;
            println!(
                "replbench transport={} (same run) batch={} depth={}",
                r.transport, r.batch, r.depth
            );
            println!(
                "  transport echo          p50 {:>8.2} us  p99 {:>8.2} us",
                us(r.transport_echo_p50_ns),
                us(r.transport_echo_p99_ns)
            );
            for row in &r.rows {
                println!(
                    "  {:<22}  p50 {:>8.2} us  p99 {:>8.2} us  max {:>9.2} us  batched {:>10.0} ops/s",
                    row.setup,
                    us(row.latency_p50_ns),
                    us(row.latency_p99_ns),
                    us(row.latency_max_ns),
                    row.throughput_ops_per_s
                );
            }
            println!(
                "  replication adds {:.2} transport round trips at p50 (target <= 1.2); batched throughput {:.2}x (target >= 0.7)",
                r.added_latency_in_round_trips, r.throughput_ratio
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("replbench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
