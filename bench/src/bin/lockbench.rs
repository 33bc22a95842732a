//! lockbench: latency and throughput of lockmgrd, next to a raw ping-pong over the same
//! transport measured in the same run.
//!
//! ```text
//! lockbench --transport shm|udp|afpacket|afxdp|rdma [--netns] [--clients N] [--duration S] [--rate R]
//!           [--pattern uncontended|hot|zipf] [--op lock|open|mixed] [--held N] [--batch B] [--json]
//!           [--rdma-device NAME] [--rdma-port N] [--gid-index N] [--listen-ip IP]
//!           [--fabric-mac on|off|both]
//! ```
//!
//! The datagram transports (udp, afpacket, afxdp) MAC every frame (AES-GMAC, see
//! `lockmgr_transport::fabric`). `--fabric-mac both` (the default) measures them with and
//! without the MAC in the same run, alternating `--rounds` times and merging each side's rounds
//! (so a load change on a shared machine hits both alike), and prints the difference; `off` is
//! an INSECURE baseline that exists only here (the in-process servers), never in
//! lockmgrd.
//!
//! `afpacket` / `afxdp` need `--netns` (and root): lockbench creates throw-away network
//! namespaces (one client: two namespaces joined by veth; several clients: a server namespace
//! with a bridge and one namespace per client, since AF_XDP takes a whole interface queue), runs
//! the lockmgrd server side in one and the clients in the others, and removes them at the end.
//! The raw baseline is then a raw AF_PACKET / AF_XDP echo over the same path.
//!
//! `rdma` runs lockmgrd and the clients in this process over one RDMA device (the HCA loops
//! the traffic back); the TCP side channel listens on `--listen-ip` (default: the IPv4 address
//! of the RoCEv2 GID in use, else 127.0.0.1). The raw baseline is an RC SEND/RECV ping-pong
//! between two queue pairs on the same device without side channel or lock protocol
//! (`lockmgr_rdma::raw::verbs_pingpong`). Without an RDMA device it fails with the transport's
//! explanation.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use lockbench::lockload::{self, LoadResult, LoadSpec, Op, Pattern};
use lockbench::report::{new_histogram, record, Percentiles};
use lockmgr_client::{connect, ClientOptions, LockClient, TransportSpec};
use lockmgr_proto::ClusterKey;
use lockmgr_rdma::{format_gid, DeviceConfig, RdmaConfig, RdmaServer};
use lockmgr_transport::afpacket::{PacketLink, PacketServer};
use lockmgr_transport::afxdp::{XdpLink, XdpServer};
use lockmgr_transport::eth::EthConfig;
use lockmgr_transport::netns::{NetnsPair, NetnsStar, BRIDGE, IFACE, MAC_A};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::shm::{ShmConfig, ShmServer};
use lockmgr_transport::udp::{UdpConfig, UdpServer};
use lockmgr_transport::{raw, ClientTransport, FabricKey, ServerTransport, SpinConfig};
use lockmgrd::{Server, ServerOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Frame MACs of the datagram transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MacArg {
    /// As in production.
    On,
    /// INSECURE baseline: authenticated handshake, frames without MAC.
    Off,
    /// Off, then on, in one run.
    Both,
}

impl MacArg {
    /// The runs to make: `true` = MAC on.
    fn runs(self) -> &'static [bool] {
        match self {
            MacArg::On => &[true],
            MacArg::Off => &[false],
            MacArg::Both => &[false, true],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum TransportArg {
    Shm,
    Udp,
    /// Raw Ethernet over AF_PACKET (needs --netns).
    Afpacket,
    /// Raw Ethernet over AF_XDP, copy mode (needs --netns).
    Afxdp,
    /// RDMA verbs, RC SEND/RECV (InfiniBand, RoCE, soft-RoCE).
    Rdma,
    /// Every transport this host has (afpacket/afxdp in network namespaces when allowed, RDMA
    /// when a device exists): a latency run and a batched throughput run each, then a summary.
    All,
}

/// Latency benchmark of the lock manager against a raw transport baseline measured in the same run.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Cli {
    #[arg(long, value_enum, default_value = "shm")]
    transport: TransportArg,
    /// Concurrent clients (each its own session, like smbd nodes).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Open loop: total operations per second over all clients (latency measured from the
    /// scheduled send time: coordinated-omission corrected). Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum, default_value = "uncontended")]
    pattern: Pattern,
    #[arg(long, value_enum, default_value = "lock")]
    op: Op,
    /// Locks held in the engine during the run (table-size sensitivity), e.g. 1000 or 1000000.
    #[arg(long, default_value_t = 0)]
    held: u64,
    /// Requests per frame in closed loop (batching; throughput mode).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Closed loop: batches in flight per client (pipelining; throughput mode).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Busy-poll budget of server and clients, microseconds (0 = always sleep).
    #[arg(long, default_value_t = 200)]
    spin_us: u64,
    /// Round trips of the raw baseline.
    #[arg(long, default_value_t = 200_000)]
    raw_rounds: usize,
    /// afpacket/afxdp: set up network namespaces + veth for the run and remove them after.
    #[arg(long)]
    netns: bool,
    /// rdma: device name as `ibv_devices` prints it (default: the first device).
    #[arg(long)]
    rdma_device: Option<String>,
    /// rdma: HCA port, 1-based.
    #[arg(long, default_value_t = 1)]
    rdma_port: u8,
    /// rdma: GID table index (default: RoCE: the first IPv4-mapped GID; InfiniBand: 0).
    #[arg(long)]
    gid_index: Option<u8>,
    /// rdma: IP the lockmgrd side channel (TCP) listens on.
    #[arg(long)]
    listen_ip: Option<std::net::IpAddr>,
    /// udp/afpacket/afxdp: frame MACs on, off (INSECURE baseline), or both in one run.
    #[arg(long, value_enum, default_value = "both")]
    fabric_mac: MacArg,
    /// With `--fabric-mac both`: alternate off and on this many times (each round gets
    /// `duration / rounds` and `raw_rounds / rounds`), merging each one's rounds.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Print one JSON object per run instead of text.
    #[arg(long)]
    json: bool,
    /// Let the scheduler place threads (default: the server and the clients each get a CPU of
    /// their own as far as there are CPUs; two spinners sharing one CPU take turns by time
    /// slice and produce bimodal ~ms round trips).
    #[arg(long)]
    no_pin: bool,
    /// `--transport all`: requests per frame of the throughput runs.
    #[arg(long, default_value_t = 64)]
    all_batch: usize,
    /// `--transport all`: batches in flight per client in the throughput runs.
    #[arg(long, default_value_t = 4)]
    all_depth: usize,
}

/// The CPUs the benchmark's threads run on.
#[derive(Debug)]
struct Pins {
    server: usize,
    /// Client `i` runs on `clients[i % len]`.
    clients: Vec<usize>,
}

static PINS: std::sync::OnceLock<Pins> = std::sync::OnceLock::new();

/// Gives the server the first allowed CPU and the clients the others (wrapping around when
/// there are more clients than CPUs), also for the raw baselines' threads.
fn plan_pinning(clients: usize) -> Result<(), String> {
    let cpus = lockmgr_transport::sys::allowed_cpus().map_err(|e| format!("affinity: {e}"))?;
    let (server, rest) = match cpus.split_first() {
        Some((s, rest)) if !rest.is_empty() => (*s, rest.to_vec()),
        // One CPU: nothing to separate.
        _ => return Ok(()),
    };
    if clients > rest.len() {
        tracing::warn!(
            clients,
            cpus = cpus.len(),
            "more clients than CPUs besides the server's: clients share CPUs"
        );
    }
    raw::set_pinning(raw::Pinning {
        server,
        client: rest[0],
    });
    let _ = PINS.set(Pins {
        server,
        clients: rest,
    });
    Ok(())
}

fn pin_server_thread() {
    if let Some(p) = PINS.get() {
        if let Err(e) = lockmgr_transport::sys::pin_current_thread(p.server) {
            tracing::warn!(error = %e, "cannot pin the server thread");
        }
    }
}

fn pin_client_thread(i: usize) {
    if let Some(p) = PINS.get() {
        let cpu = p.clients[i % p.clients.len()];
        if let Err(e) = lockmgr_transport::sys::pin_current_thread(cpu) {
            tracing::warn!(error = %e, "cannot pin a client thread");
        }
    }
}

#[derive(serde::Serialize)]
struct JsonReport {
    transport: TransportArg,
    /// Datagram transports: whether frames carried a MAC (`None`: not a datagram transport).
    fabric_mac: Option<bool>,
    op: Op,
    pattern: Pattern,
    clients: usize,
    batch: usize,
    held: u64,
    rate: Option<f64>,
    duration_s: f64,
    ops: u64,
    conflicts: u64,
    throughput_ops_per_s: f64,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
    mean_ns: f64,
    raw_msg_bytes: usize,
    raw_p50_ns: u64,
    raw_p99_ns: u64,
    raw_transport_p50_ns: u64,
    raw_transport_p99_ns: u64,
    ratio_p50: f64,
    ratio_p50_vs_transport: f64,
}

const KEY: &[u8] = b"lockbench-cluster-key-0123456789";

/// The datagram transports' config: the fabric secret of [`KEY`], frame MACs on or off.
fn reliable_config(spin: SpinConfig, mac: bool) -> ReliableConfig {
    ReliableConfig {
        spin,
        fabric_key: Some(FabricKey::new(
            ClusterKey::new(KEY)
                .expect("constant key is long enough")
                .fabric_secret(),
        )),
        insecure_no_frame_mac: !mac,
        ..ReliableConfig::default()
    }
}

/// The size of a frame carrying one lock request: the raw baseline moves messages this big.
fn histogram_of(samples: &[u64]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &s in samples {
        record(&mut h, s);
    }
    h
}

/// One measurement with its histograms, so rounds can be merged.
struct Measured {
    report: JsonReport,
    raw: Histogram<u64>,
    transport: Histogram<u64>,
    load: Histogram<u64>,
}

/// The report of several rounds of one configuration: histograms merged, counts summed.
fn merge(rounds: Vec<Measured>) -> Result<JsonReport, String> {
    let mut it = rounds.into_iter();
    let first = it.next().ok_or("no rounds")?;
    let (mut raw, mut transport, mut load) = (first.raw, first.transport, first.load);
    let mut r = first.report;
    for m in it {
        let add = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
            a.add(b).map_err(|e| format!("merging histograms: {e}"))
        };
        add(&mut raw, &m.raw)?;
        add(&mut transport, &m.transport)?;
        add(&mut load, &m.load)?;
        r.ops += m.report.ops;
        r.conflicts += m.report.conflicts;
        r.duration_s += m.report.duration_s;
    }
    let (p, rp, tp) = (
        Percentiles::of(&load),
        Percentiles::of(&raw),
        Percentiles::of(&transport),
    );
    r.throughput_ops_per_s = r.ops as f64 / r.duration_s.max(1e-9);
    r.p50_ns = p.p50_ns;
    r.p90_ns = p.p90_ns;
    r.p99_ns = p.p99_ns;
    r.p999_ns = p.p999_ns;
    r.max_ns = p.max_ns;
    r.mean_ns = p.mean_ns;
    r.raw_p50_ns = rp.p50_ns;
    r.raw_p99_ns = rp.p99_ns;
    r.raw_transport_p50_ns = tp.p50_ns;
    r.raw_transport_p99_ns = tp.p99_ns;
    r.ratio_p50 = p.p50_ns as f64 / rp.p50_ns.max(1) as f64;
    r.ratio_p50_vs_transport = p.p50_ns as f64 / tp.p50_ns.max(1) as f64;
    Ok(r)
}

/// `--fabric-mac`: the runs to make, each as `measure(mac, cli_of_the_round)`. With both, the
/// two configurations alternate `--rounds` times with a share of the duration each, and each
/// one's rounds are merged: load changes on a shared machine then hit both alike, instead of
/// whichever happened to run second.
fn mac_runs(
    cli: &Cli,
    mut measure: impl FnMut(bool, &Cli) -> Result<Measured, String>,
) -> Result<Vec<JsonReport>, String> {
    let modes = cli.fabric_mac.runs();
    let rounds = if modes.len() > 1 {
        cli.rounds.max(1)
    } else {
        1
    };
    let mut round_cli = cli.clone();
    round_cli.duration = cli.duration / rounds as f64;
    round_cli.raw_rounds = (cli.raw_rounds / rounds).max(1000);
    let mut per_mode: Vec<Vec<Measured>> = modes.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, &mac) in modes.iter().enumerate() {
            per_mode[i].push(measure(mac, &round_cli)?);
        }
    }
    let mut out = Vec::new();
    for (i, rounds) in per_mode.into_iter().enumerate() {
        let mut r = merge(rounds)?;
        r.fabric_mac = Some(modes[i]);
        out.push(r);
    }
    Ok(out)
}

fn server_options() -> ServerOptions {
    ServerOptions {
        // The key is a constant of sufficient length.
        key: ClusterKey::new(KEY).expect("constant key is long enough"),
        liveness: Duration::from_secs(30),
        engine: Default::default(),
    }
}

fn client_options(i: usize) -> ClientOptions {
    ClientOptions {
        node_name: format!("bench-{i}"),
        key: ClusterKey::new(KEY).expect("constant key is long enough"),
        handshake_timeout: Duration::from_secs(10),
    }
}

/// Runs the whole benchmark over one transport kind. `make_server` binds the server;
/// `make_client` connects one client.
fn bench<S, C>(
    cli: &Cli,
    make_server: impl Fn() -> Result<S, String>,
    make_client: impl Fn() -> Result<C, String> + Sync,
    raw_fn: &dyn Fn(usize, usize, usize) -> Result<Vec<u64>, lockmgr_transport::TransportError>,
) -> Result<Measured, String>
where
    S: ServerTransport + 'static,
    C: ClientTransport + 'static,
{
    let msg_len = lockload::lock_frame_len();
    // 1. Baselines: the raw mechanism, then the transport's own framing through an echo server.
    let raw_hist = histogram_of(
        &raw_fn(cli.raw_rounds, cli.raw_rounds / 10, msg_len).map_err(|e| e.to_string())?,
    );
    let echo = raw::EchoServer::spawn(make_server()?);
    let mut tc = make_client()?;
    let transport_hist = histogram_of(
        &raw::transport_pingpong(&mut tc, cli.raw_rounds / 2, cli.raw_rounds / 20, msg_len)
            .map_err(|e| e.to_string())?,
    );
    drop(tc);
    echo.stop().map_err(|e| e.to_string())?;
    let (raw, transport) = (Percentiles::of(&raw_hist), Percentiles::of(&transport_hist));

    // 2. The lock manager in a server thread.
    let shutdown = Arc::new(AtomicBool::new(false));
    let server_transport = make_server()?;
    let waker = server_transport.waker();
    let stop = Arc::clone(&shutdown);
    let server = std::thread::spawn(move || -> Result<(), String> {
        pin_server_thread();
        let mut s = Server::new(server_transport, server_options());
        s.run(&stop).map_err(|e| e.to_string())
    });
    let result = run_clients(cli, &make_client);
    shutdown.store(true, Ordering::Release);
    waker.wake();
    server
        .join()
        .map_err(|_| "server thread panicked".to_string())??;
    let (load, elapsed) = result?;
    let p = Percentiles::of(&load.hist);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let report = JsonReport {
        transport: cli.transport,
        fabric_mac: None,
        op: cli.op,
        pattern: cli.pattern,
        clients: cli.clients,
        batch: cli.batch,
        held: cli.held,
        rate: cli.rate,
        duration_s: secs,
        ops: load.ops,
        conflicts: load.conflicts,
        throughput_ops_per_s: load.ops as f64 / secs,
        p50_ns: p.p50_ns,
        p90_ns: p.p90_ns,
        p99_ns: p.p99_ns,
        p999_ns: p.p999_ns,
        max_ns: p.max_ns,
        mean_ns: p.mean_ns,
        raw_msg_bytes: msg_len,
        raw_p50_ns: raw.p50_ns,
        raw_p99_ns: raw.p99_ns,
        raw_transport_p50_ns: transport.p50_ns,
        raw_transport_p99_ns: transport.p99_ns,
        ratio_p50: p.p50_ns as f64 / raw.p50_ns.max(1) as f64,
        ratio_p50_vs_transport: p.p50_ns as f64 / transport.p50_ns.max(1) as f64,
    };
    Ok(Measured {
        report,
        raw: raw_hist,
        transport: transport_hist,
        load: load.hist,
    })
}

/// Connects the clients, preloads held locks, runs the load in one thread per client, merges.
fn run_clients<C: ClientTransport + 'static>(
    cli: &Cli,
    make_client: &(impl Fn() -> Result<C, String> + Sync),
) -> Result<(LoadResult, Duration), String> {
    if cli.held > 0 {
        let mut c = LockClient::connect(make_client()?, &client_options(usize::MAX))
            .map_err(|e| format!("preload connect: {e}"))?;
        // Held locks go on the files the measurement uses, so the per-file tables are big.
        let files: Vec<_> = match cli.pattern {
            Pattern::Uncontended => (0..cli.clients).map(lockload::private_file).collect(),
            Pattern::Hot => vec![lockload::shared_file(0)],
            Pattern::Zipf => (0..lockload::ZIPF_FILES)
                .map(lockload::shared_file)
                .collect(),
        };
        let mut opens = Vec::new();
        for f in files {
            opens.push(lockload::open_file(&mut c, f)?);
        }
        lockload::preload_locks(&mut c, &opens, cli.held)?;
        // The preloading session stays open (and its locks held) until the run ends.
        std::mem::forget(c);
    }
    let barrier = Barrier::new(cli.clients);
    let duration = Duration::from_secs_f64(cli.duration);
    let started = Instant::now();
    let results: Vec<Result<LoadResult, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cli.clients)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || -> Result<LoadResult, String> {
                    pin_client_thread(i);
                    let mut c = LockClient::connect(make_client()?, &client_options(i))
                        .map_err(|e| format!("client {i} connect: {e}"))?;
                    let spec = LoadSpec {
                        client_index: i,
                        pattern: cli.pattern,
                        op: cli.op,
                        duration,
                        batch: cli.batch.max(1),
                        depth: cli.depth.max(1),
                        rate: cli.rate.map(|r| r / cli.clients as f64),
                        seed: 0x5eed + i as u64,
                    };
                    let ws = lockload::setup_workset(&mut c, &spec)?;
                    barrier.wait();
                    match spec.rate {
                        Some(rate) => lockload::run_open(&mut c, &ws, &spec, rate),
                        None => lockload::run_closed(&mut c, &ws, &spec),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client thread panicked".into()))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let mut merged = LoadResult {
        hist: new_histogram(),
        ops: 0,
        conflicts: 0,
        elapsed,
    };
    let mut longest = Duration::ZERO;
    for r in results {
        let r = r?;
        merged
            .hist
            .add(&r.hist)
            .map_err(|e| format!("merging histograms: {e}"))?;
        merged.ops += r.ops;
        merged.conflicts += r.conflicts;
        longest = longest.max(r.elapsed);
    }
    Ok((merged, longest))
}

fn print_text(r: &JsonReport) {
    let us = |ns: u64| ns as f64 / 1000.0;
    println!(
        "lockbench transport={:?}{} op={:?} pattern={:?} clients={} batch={} held={} rate={}",
        r.transport,
        match r.fabric_mac {
            Some(true) => " fabric-mac=on",
            Some(false) => " fabric-mac=OFF(insecure baseline)",
            None => "",
        },
        r.op,
        r.pattern,
        r.clients,
        r.batch,
        r.held,
        r.rate
            .map_or("closed-loop".to_string(), |v| format!("{v}/s"))
    );
    println!(
        "  raw {:?} ping-pong ({} B)      p50={:.3}us p99={:.3}us",
        r.transport,
        r.raw_msg_bytes,
        us(r.raw_p50_ns),
        us(r.raw_p99_ns)
    );
    println!(
        "  transport echo (framing only)  p50={:.3}us p99={:.3}us",
        us(r.raw_transport_p50_ns),
        us(r.raw_transport_p99_ns)
    );
    println!(
        "  lockmgr operation              p50={:.3}us p90={:.3}us p99={:.3}us p99.9={:.3}us max={:.3}us",
        us(r.p50_ns),
        us(r.p90_ns),
        us(r.p99_ns),
        us(r.p999_ns),
        us(r.max_ns)
    );
    println!(
        "  ops={} conflicts={} throughput={:.0} ops/s  ratio p50 lockmgr/raw={:.2} lockmgr/transport-echo={:.2}",
        r.ops, r.conflicts, r.throughput_ops_per_s, r.ratio_p50, r.ratio_p50_vs_transport
    );
}

fn run(cli: Cli) -> Result<(), String> {
    if cli.clients == 0 || cli.batch == 0 || !(cli.duration > 0.0 && cli.duration.is_finite()) {
        return Err("--clients, --batch and --duration must be positive".into());
    }
    if cli.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be positive".into());
    }
    if !cli.no_pin {
        plan_pinning(cli.clients + usize::from(cli.held > 0))?;
    }
    if cli.transport == TransportArg::All {
        return run_all(&cli);
    }
    let reports = run_one(&cli)?;
    print_reports(&cli, &reports)
}

/// Every transport the host has: latency (batch 1) and batched throughput, then a summary.
fn run_all(cli: &Cli) -> Result<(), String> {
    let is_root = nix::unistd::Uid::effective().is_root();
    let mut summary = Vec::new();
    for transport in [
        TransportArg::Shm,
        TransportArg::Udp,
        TransportArg::Afpacket,
        TransportArg::Afxdp,
        TransportArg::Rdma,
    ] {
        let eth = matches!(transport, TransportArg::Afpacket | TransportArg::Afxdp);
        if eth && !is_root {
            println!("{transport:?}: skipped (network namespaces need root)");
            continue;
        }
        if transport == TransportArg::Rdma {
            let device = DeviceConfig {
                device: cli.rdma_device.clone(),
                port: cli.rdma_port,
                gid_index: cli.gid_index,
            };
            if let Err(e) = lockmgr_rdma::probe(&device) {
                println!("{transport:?}: skipped ({e})");
                continue;
            }
        }
        let latency_cli = Cli {
            transport,
            netns: cli.netns || eth,
            batch: 1,
            depth: 1,
            ..cli.clone()
        };
        let throughput_cli = Cli {
            batch: cli.all_batch.max(1),
            depth: cli.all_depth.max(1),
            ..latency_cli.clone()
        };
        let runs = run_one(&latency_cli).and_then(|lat| {
            print_reports(&latency_cli, &lat)?;
            let thr = run_one(&throughput_cli)?;
            print_reports(&throughput_cli, &thr)?;
            Ok((lat, thr))
        });
        match runs {
            Ok((lat, thr)) => summary.push((lat, thr)),
            Err(e) => println!("{transport:?}: skipped ({e})"),
        }
    }
    if cli.json {
        return Ok(());
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    println!();
    println!(
        "summary (p50/p99 in us; ratio = lockmgr p50 / baseline p50; throughput with batch {} depth {})",
        cli.all_batch, cli.all_depth
    );
    println!(
        "{:<9} {:<4} {:>15} {:>15} {:>15} {:>9} {:>11} {:>14}",
        "transport", "mac", "raw", "transport-echo", "lockmgr", "/raw", "/echo", "batched ops/s"
    );
    for (lat, thr) in &summary {
        for (i, r) in lat.iter().enumerate() {
            let batched = thr
                .iter()
                .find(|t| t.fabric_mac == r.fabric_mac)
                .or_else(|| thr.get(i));
            println!(
                "{:<9} {:<4} {:>7.2}/{:<7.2} {:>7.2}/{:<7.2} {:>7.2}/{:<7.2} {:>8.2}x {:>10.2}x {:>14.0}",
                format!("{:?}", r.transport).to_lowercase(),
                match r.fabric_mac {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "-",
                },
                us(r.raw_p50_ns),
                us(r.raw_p99_ns),
                us(r.raw_transport_p50_ns),
                us(r.raw_transport_p99_ns),
                us(r.p50_ns),
                us(r.p99_ns),
                r.ratio_p50,
                r.ratio_p50_vs_transport,
                batched.map_or(0.0, |t| t.throughput_ops_per_s),
            );
        }
    }
    Ok(())
}

/// One transport's runs (two with `--fabric-mac both` on a datagram transport).
fn run_one(cli: &Cli) -> Result<Vec<JsonReport>, String> {
    let cli = cli.clone();
    let spin = SpinConfig::adaptive(Duration::from_micros(cli.spin_us));
    let mut reports = Vec::new();
    match cli.transport {
        TransportArg::Shm => {
            let dir = std::env::temp_dir().join(format!("lockbench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let counter = std::sync::atomic::AtomicU64::new(0);
            let path = std::sync::Mutex::new(PathBuf::new());
            let make_server = || {
                let p = dir.join(format!("s{}.sock", counter.fetch_add(1, Ordering::Relaxed)));
                let s = ShmServer::bind(
                    &p,
                    ShmConfig {
                        spin,
                        ..ShmConfig::default()
                    },
                )
                .map_err(|e| format!("shm bind: {e}"))?;
                *path.lock().map_err(|_| "poisoned")? = p;
                Ok(s)
            };
            let make_client = || {
                let path = path.lock().map_err(|_| "poisoned".to_string())?.clone();
                let timeout = Duration::from_secs(5);
                connect(&TransportSpec::Shm {
                    path,
                    spin,
                    timeout,
                })
                .map_err(|e| e.to_string())
            };
            let r = bench(&cli, make_server, make_client, &raw::shm_pingpong);
            let _ = std::fs::remove_dir_all(&dir);
            reports.push(r?.report);
        }
        TransportArg::Udp => {
            reports = mac_runs(&cli, |mac, cli| {
                let addr = std::sync::Mutex::new(None);
                let cfg: UdpConfig = reliable_config(spin, mac);
                let make_server = || {
                    let s = UdpServer::bind("127.0.0.1:0".parse().map_err(|_| "addr")?, cfg)
                        .map_err(|e| format!("udp bind: {e}"))?;
                    *addr.lock().map_err(|_| "poisoned")? =
                        Some(s.local_addr().map_err(|e| e.to_string())?);
                    Ok(s)
                };
                let make_client = || {
                    let a = addr
                        .lock()
                        .map_err(|_| "poisoned".to_string())?
                        .ok_or("no server")?;
                    connect(&TransportSpec::Udp { server: a, cfg }).map_err(|e| e.to_string())
                };
                bench(cli, make_server, make_client, &raw::udp_pingpong)
            })?;
        }
        TransportArg::Afpacket | TransportArg::Afxdp => {
            if !cli.netns {
                return Err(format!(
                    "--transport {:?} runs server and clients in one process, so it needs --netns",
                    cli.transport
                )
                .to_lowercase());
            }
            // The preloading session of --held stays connected: it needs its own host.
            let topo = Topo::new(cli.clients + usize::from(cli.held > 0))?;
            let topo = &topo;
            reports = mac_runs(&cli, |mac, cli| {
                let cfg = reliable_config(spin, mac);
                if cli.transport == TransportArg::Afpacket {
                    let raw_fn = |rounds, warmup, len| {
                        let (echo, client) = topo.links(PacketLink::open)?;
                        raw::link_pingpong(echo, client, MAC_A, rounds, warmup, len)
                    };
                    bench(
                        cli,
                        || topo.in_server(move |eth| PacketServer::open(eth, cfg)),
                        || {
                            topo.in_next_client(move |eth| {
                                let eth = eth.clone();
                                let spec = TransportSpec::Afpacket {
                                    eth,
                                    server: MAC_A,
                                    cfg,
                                };
                                connect(&spec).map_err(Into::into)
                            })
                        },
                        &raw_fn,
                    )
                } else {
                    let opts = lockmgr_transport::afxdp::XdpOptions::default();
                    let raw_fn = |rounds, warmup, len| {
                        let (echo, client) = topo.links(move |eth| XdpLink::open(eth, &opts))?;
                        raw::link_pingpong(echo, client, MAC_A, rounds, warmup, len)
                    };
                    bench(
                        cli,
                        || topo.in_server(move |eth| XdpServer::open(eth, &opts, cfg)),
                        || {
                            topo.in_next_client(move |eth| {
                                let eth = eth.clone();
                                let spec = TransportSpec::Afxdp {
                                    eth,
                                    xdp: opts,
                                    server: MAC_A,
                                    cfg,
                                };
                                connect(&spec).map_err(Into::into)
                            })
                        },
                        &raw_fn,
                    )
                }
            })?;
        }
        TransportArg::Rdma => reports.push(bench_rdma(&cli, spin)?),
        TransportArg::All => return Err("--transport all is not one transport".into()),
    }
    Ok(reports)
}

fn print_reports(cli: &Cli, reports: &[JsonReport]) -> Result<(), String> {
    for report in reports {
        if cli.json {
            println!(
                "{}",
                serde_json::to_string(report).map_err(|e| e.to_string())?
            );
        } else {
            print_text(report);
        }
    }
    if let [off, on] = reports {
        if !cli.json && off.fabric_mac == Some(false) && on.fabric_mac == Some(true) {
            let us = |ns: u64| ns as f64 / 1000.0;
            let pct = |a: u64, b: u64| 100.0 * (b as f64 - a as f64) / a.max(1) as f64;
            println!(
                "  fabric MAC cost: lockmgr p50 {:.3} -> {:.3} us ({:+.1}%), p99 {:.3} -> {:.3} us ({:+.1}%); transport echo p50 {:.3} -> {:.3} us",
                us(off.p50_ns),
                us(on.p50_ns),
                pct(off.p50_ns, on.p50_ns),
                us(off.p99_ns),
                us(on.p99_ns),
                pct(off.p99_ns, on.p99_ns),
                us(off.raw_transport_p50_ns),
                us(on.raw_transport_p50_ns),
            );
        }
    }
    Ok(())
}

/// lockmgrd, the transport echo and the raw verbs ping-pong over one RDMA device.
fn bench_rdma(cli: &Cli, spin: SpinConfig) -> Result<JsonReport, String> {
    let device = DeviceConfig {
        device: cli.rdma_device.clone(),
        port: cli.rdma_port,
        gid_index: cli.gid_index,
    };
    // Fails first, with RdmaError's explanation, on machines without RDMA.
    let info = lockmgr_rdma::probe(&device).map_err(|e| format!("--transport rdma: {e}"))?;
    // A RoCEv2 GID of an IPv4 address is IPv4-mapped: that address is on the RDMA netdev.
    let ip = cli.listen_ip.unwrap_or_else(|| {
        match std::net::Ipv6Addr::from(info.gid).to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => std::net::Ipv4Addr::LOCALHOST.into(),
        }
    });
    if !cli.json {
        println!(
            "rdma: device {} port {} gid[{}] {} side channel on {ip}",
            info.name,
            info.port,
            info.gid_index,
            format_gid(&info.gid)
        );
    }
    let cfg = RdmaConfig {
        device,
        spin,
        handshake_timeout: Duration::from_secs(10),
        fabric_key: reliable_config(spin, true).fabric_key,
        ..RdmaConfig::default()
    };
    let addr = std::sync::Mutex::new(None);
    let make_server = || {
        let s = RdmaServer::bind(std::net::SocketAddr::new(ip, 0), cfg.clone())
            .map_err(|e| format!("rdma bind on {ip}: {e}"))?;
        *addr.lock().map_err(|_| "poisoned")? = Some(s.local_addr().map_err(|e| e.to_string())?);
        Ok(s)
    };
    let make_client = || {
        let a = addr
            .lock()
            .map_err(|_| "poisoned".to_string())?
            .ok_or("no server")?;
        let cfg = cfg.clone();
        connect(&TransportSpec::Rdma { server: a, cfg }).map_err(|e| e.to_string())
    };
    let raw_fn = |rounds, warmup, len| {
        lockmgr_rdma::raw::verbs_pingpong(&cfg, rounds, warmup, len).map_err(|e| {
            tracing::error!(error = %e, "raw RDMA ping-pong failed");
            lockmgr_transport::TransportError::from(e)
        })
    };
    bench(cli, make_server, make_client, &raw_fn).map(|m| m.report)
}

/// Namespaces for a raw-Ethernet run; removed on drop.
struct Topo {
    _pair: Option<NetnsPair>,
    _star: Option<NetnsStar>,
    server_ns: String,
    server_if: &'static str,
    clients: Vec<String>,
    /// Calls of `in_next_client` so far: the first (the echo baseline's client) uses client
    /// namespace 0 and is gone before the others start; call k >= 1 uses namespace k - 1.
    calls: std::sync::atomic::AtomicUsize,
}

impl Topo {
    fn new(hosts: usize) -> Result<Topo, String> {
        let err = |e| format!("--netns: {e}");
        if hosts <= 1 {
            let p = NetnsPair::new(9000).map_err(err)?;
            Ok(Topo {
                server_ns: p.a.clone(),
                server_if: IFACE,
                clients: vec![p.b.clone()],
                _pair: Some(p),
                _star: None,
                calls: Default::default(),
            })
        } else {
            let s = NetnsStar::new(hosts, 9000).map_err(err)?;
            Ok(Topo {
                server_ns: s.server.clone(),
                server_if: BRIDGE,
                clients: s.clients.clone(),
                _pair: None,
                _star: Some(s),
                calls: Default::default(),
            })
        }
    }

    fn in_server<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EthConfig) -> Result<T, lockmgr_transport::TransportError> + Send + 'static,
    ) -> Result<T, String> {
        let eth = EthConfig::new(self.server_if);
        NetnsPair::run_in(&self.server_ns, move || f(&eth))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("server on {}: {e}", self.server_if))
    }

    fn in_next_client<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EthConfig) -> Result<T, lockmgr_transport::TransportError> + Send + 'static,
    ) -> Result<T, String> {
        let k = self.calls.fetch_add(1, Ordering::Relaxed);
        let ns = &self.clients[k.saturating_sub(1) % self.clients.len()];
        let eth = EthConfig::new(IFACE);
        NetnsPair::run_in(ns, move || f(&eth))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("client in {ns}: {e}"))
    }

    /// An echo link in the server namespace and a client link in client namespace 0.
    fn links<L: Send + 'static>(
        &self,
        open: impl Fn(&EthConfig) -> Result<L, lockmgr_transport::TransportError>
            + Send
            + Sync
            + Copy
            + 'static,
    ) -> Result<(L, L), lockmgr_transport::TransportError> {
        let proto = |e: lockmgr_transport::netns::NetnsError| {
            lockmgr_transport::TransportError::Io(std::io::Error::other(e.to_string()))
        };
        let server_if = self.server_if;
        let echo = NetnsPair::run_in(&self.server_ns, move || open(&EthConfig::new(server_if)))
            .map_err(proto)??;
        let client = NetnsPair::run_in(&self.clients[0], move || open(&EthConfig::new(IFACE)))
            .map_err(proto)??;
        Ok((echo, client))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockbench: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdma_options_parse() {
        let cli = Cli::try_parse_from([
            "lockbench",
            "--transport",
            "rdma",
            "--rdma-device",
            "mlx5_0",
            "--rdma-port",
            "2",
            "--gid-index",
            "3",
            "--listen-ip",
            "192.0.2.10",
        ])
        .unwrap();
        assert_eq!(cli.transport, TransportArg::Rdma);
        assert_eq!(cli.rdma_device.as_deref(), Some("mlx5_0"));
        assert_eq!(cli.rdma_port, 2);
        assert_eq!(cli.gid_index, Some(3));
        assert_eq!(cli.listen_ip, Some("192.0.2.10".parse().unwrap()));
        assert!(
            Cli::try_parse_from(["lockbench", "--transport", "rdma", "--gid-index", "x"]).is_err()
        );
    }

    /// The development hosts have no RDMA: the run must stop at once with the transport's
    /// explanation (not a panic, a hang or a bare errno).
    #[test]
    fn rdma_without_device_fails_with_explanation() {
        match lockmgr_rdma::probe(&DeviceConfig::default()) {
            Err(lockmgr_rdma::RdmaError::NoDevice(_)) => {}
            other => {
                eprintln!("SKIPPED: this machine has RDMA ({other:?})");
                return;
            }
        }
        let cli =
            Cli::try_parse_from(["lockbench", "--transport", "rdma", "--duration", "0.1"]).unwrap();
        let err = run(cli).unwrap_err();
        assert!(err.contains("no RDMA device"), "{err}");
        assert!(err.contains("rdma link add"), "{err}");
    }
}
