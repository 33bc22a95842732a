//! smbbench: smbtorture's SMB2 benchmarks against our smbd and Samba (one node and CTDB), all
//! started by this program in one run on free loopback ports with private temp dirs; and the
//! shared-counter workload (clients taking turns on one exclusive byte-range lock) on one of our
//! nodes against two (`--shared-counter`, see `lockbench::smb::counter`).
//!
//! ```text
//! smbbench --suite echo|path-contention-shared|oplock1 [--targets samba,smbd,samba-ctdb,cluster]
//!          [--duration S] [--nprocs N] [--procs P] [--json] [--smbd-bin PATH] [--lockmgrd-bin PATH]
//! smbbench --shared-counter [--targets smbd,cluster] [--handoffs N] [--clients C] [--creates N]
//!          [--python PATH] [--json]
//! ```
//!
//! Needs Debian packages samba, samba-testsuite (smbtorture), libnss-wrapper and, for
//! samba-ctdb, ctdb; and our smbd/lockmgrd built (`cargo build --release -p smbd -p lockmgrd`).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lockbench::smb::counter::CounterOptions;
use lockbench::smb::{self, BenchConfig, Suite, TargetKind};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "smbtorture smb2.bench.* against smbd, Samba and Samba+CTDB"
)]
struct Cli {
    /// Benchmark to run.
    #[arg(long, value_enum, required_unless_present = "shared_counter")]
    suite: Option<Suite>,
    /// Targets in order; ratios are relative to the first (default samba,smbd; with
    /// --shared-counter smbd,cluster).
    #[arg(long, value_enum, value_delimiter = ',')]
    targets: Option<Vec<TargetKind>>,
    /// Run the shared-counter workload over SMB instead of smbtorture: clients take turns on
    /// one exclusive byte-range lock (blocking LOCK, READ, WRITE, UNLOCK); prints hand-off and
    /// cross-node CREATE percentiles per target.
    #[arg(long, conflicts_with = "suite")]
    shared_counter: bool,
    /// --shared-counter: hand-offs per target.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    handoffs: u64,
    /// --shared-counter: clients, spread over the target's nodes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    clients: u64,
    /// --shared-counter: cross-node CREATEs measured per target.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    creates: u64,
    /// --shared-counter: a Python with smbprotocol (default $SMBD_PYTHON, the project venv,
    /// python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Seconds each smbtorture process runs (torture:timelimit).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Connections per smbtorture process (torture:nprocs).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    nprocs: u32,
    /// smbtorture processes run at the same time, spread over the target's nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    procs: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Our smbd binary (default: next to smbbench, then PATH).
    #[arg(long)]
    smbd_bin: Option<PathBuf>,
    /// Our lockmgrd binary (default: next to smbbench, then PATH).
    #[arg(long)]
    lockmgrd_bin: Option<PathBuf>,
    /// Keep each target's temp dir (configs and server logs) for inspection.
    #[arg(long)]
    keep_temp: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = smb::process::install_interrupt_handler() {
        tracing::error!(%e, "interrupt handler");
        return ExitCode::FAILURE;
    }
    let default_targets = if cli.shared_counter {
        vec![TargetKind::Smbd, TargetKind::Cluster]
    } else {
        vec![TargetKind::Samba, TargetKind::Smbd]
    };
    let mut targets = Vec::new();
    for t in cli.targets.unwrap_or(default_targets) {
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    if cli.shared_counter {
        return shared_counter(
            CounterOptions {
                targets,
                clients: usize::try_from(cli.clients).unwrap_or(usize::MAX),
                handoffs: cli.handoffs,
                creates: cli.creates,
                python: cli.python,
                smbd_bin: cli.smbd_bin,
                lockmgrd_bin: cli.lockmgrd_bin,
                keep_temp: cli.keep_temp,
            },
            cli.json,
        );
    }
    let Some(suite) = cli.suite else {
        eprintln!("smbbench: --suite or --shared-counter is needed");
        return ExitCode::from(2);
    };
    let cfg = BenchConfig {
        suite,
        targets,
        duration_s: cli.duration,
        nprocs: cli.nprocs,
        procs: usize::try_from(cli.procs).unwrap_or(usize::MAX),
        smbd_bin: cli.smbd_bin,
        lockmgrd_bin: cli.lockmgrd_bin,
        keep_temp: cli.keep_temp,
    };
    let report = match smb::run_all(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smbbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    if smb::process::interrupted() {
        ExitCode::from(130)
    } else if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn shared_counter(opts: CounterOptions, json: bool) -> ExitCode {
    match smb::counter::run(&opts) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smbbench: {e}");
            if smb::process::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
