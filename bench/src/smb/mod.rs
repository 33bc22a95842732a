//! smbbench: smbtorture's `smb2.bench.*` benchmarks against our smbd and against Samba (one node,
//! and two CTDB nodes), every server started by the harness in the same run on free loopback
//! ports with private temp dirs, so the figures compare like with like on a noisy machine.
//!
//! Flow per target: deploy (start servers, create users) → run P smbtorture processes at once,
//! spread over the target's nodes → parse each process's final summary → stop the servers by
//! process group (also on error and Ctrl-C). Timing figures are reported, never judged.

pub mod counter;
pub mod error;
pub mod handoff;
pub mod ours;
pub mod process;
pub mod report;
pub mod samba;
pub mod torture;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use error::{Result, SmbBenchError};
pub use report::{BenchReport, TargetResult, TargetStatus};
pub use torture::{OpStats, ProcessStats, Suite};

use process::ManagedProcess;

/// Name of the share every target exports.
pub const SHARE: &str = "data";
/// Benchmark users (smbtorture needs a second user for some suites).
pub const USERS: [(&str, &str); 2] = [("user1", "pass1"), ("user2", "pass2")];

/// What smbbench can benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// One private Samba smbd.
    Samba,
    /// Our smbd, one node with its in-process lock engine.
    Smbd,
    /// Two CTDB nodes (test mode) with one clustered Samba smbd each.
    SambaCtdb,
    /// lockmgrd plus two of our smbd nodes sharing one directory.
    Cluster,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Samba => "samba",
            TargetKind::Smbd => "smbd",
            TargetKind::SambaCtdb => "samba-ctdb",
            TargetKind::Cluster => "cluster",
        }
    }
}

/// Where an smbtorture process connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub share: String,
    pub user: String,
    pub password: String,
    pub user2: String,
    pub password2: String,
}

impl Endpoint {
    /// 127.0.0.1:`port`, the benchmark share and users.
    pub fn local(port: u16) -> Self {
        Endpoint {
            host: "127.0.0.1".into(),
            port,
            share: SHARE.into(),
            user: USERS[0].0.into(),
            password: USERS[0].1.into(),
            user2: USERS[1].0.into(),
            password2: USERS[1].1.into(),
        }
    }
}

/// Running servers of one target. Dropping it stops them, last started first (smbd before the
/// ctdbd or lockmgrd it depends on).
#[derive(Debug, Default)]
pub struct Deployment {
    pub endpoints: Vec<Endpoint>,
    procs: Vec<ManagedProcess>,
}

impl Deployment {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push_process(&mut self, p: ManagedProcess) {
        self.procs.push(p);
    }

    pub fn processes_mut(&mut self) -> impl Iterator<Item = &mut ManagedProcess> {
        self.procs.iter_mut()
    }

    /// PIDs of the server processes (for the report).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .map(|p| (p.name().to_string(), p.pid()))
            .collect()
    }

    /// Process groups of the server processes (CPU accounting).
    pub fn pgids(&self) -> Vec<i32> {
        self.procs.iter().map(|p| p.pgid()).collect()
    }

    /// Stop every server now.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop();
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A whole smbbench run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub suite: Suite,
    pub targets: Vec<TargetKind>,
    pub duration_s: u64,
    pub nprocs: u32,
    pub procs: usize,
    pub smbd_bin: Option<PathBuf>,
    pub lockmgrd_bin: Option<PathBuf>,
    /// Keep each target's temp dir (configs, logs) instead of removing it.
    pub keep_temp: bool,
}

/// Start `target`'s servers under `root`.
pub fn deploy(target: TargetKind, root: &Path, cfg: &BenchConfig) -> Result<Deployment> {
    match target {
        TargetKind::Samba => samba::deploy_samba(root),
        TargetKind::SambaCtdb => samba::deploy_samba_ctdb(root, 2),
        TargetKind::Smbd => ours::deploy_smbd(root, cfg.smbd_bin.as_deref()),
        TargetKind::Cluster => ours::deploy_cluster(
            root,
            2,
            cfg.smbd_bin.as_deref(),
            cfg.lockmgrd_bin.as_deref(),
        ),
    }
}

fn make_root(target: TargetKind, keep: bool) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("smbbench-{}-", target.name()))
        .tempdir()
        .map_err(|e| SmbBenchError::io("creating a temp dir", e))?;
    let path = dir.path().to_path_buf();
    if keep {
        tracing::info!(dir = %path.display(), "keeping temp dir");
    }
    Ok((dir, path))
}

/// Deploy one target, run the suite against it, stop it.
pub fn run_target(
    target: TargetKind,
    cfg: &BenchConfig,
    smbtorture: &Path,
) -> Result<(Vec<ProcessStats>, Option<f64>)> {
    let (dir, root) = make_root(target, cfg.keep_temp)?;
    let result = (|| {
        tracing::info!(target = target.name(), "starting servers");
        let mut dep = deploy(target, &root, cfg)?;
        tracing::info!(target = target.name(), servers = ?dep.pids(), "servers up");
        let client_dir = root.join("client");
        std::fs::create_dir_all(&client_dir)
            .map_err(|e| SmbBenchError::io("creating the client dir", e))?;
        let run = torture::TortureRun {
            smbtorture: smbtorture.to_path_buf(),
            suite: cfg.suite,
            duration_s: cfg.duration_s,
            nprocs: cfg.nprocs,
            procs: cfg.procs,
            client_conf: torture::write_client_conf(&client_dir)?,
            work_dir: client_dir,
        };
        let pgids = dep.pgids();
        let cpu_before = process::group_cpu_seconds(&pgids);
        let r = run.run(&dep.endpoints);
        // Samba's per-connection children end with smbtorture's connections; give their parent
        // a moment to reap them so their time shows in its cutime/cstime.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let cpu = match (cpu_before, process::group_cpu_seconds(&pgids)) {
            (Some(a), Some(b)) => Some((b - a).max(0.0)),
            _ => None,
        };
        dep.stop();
        r.map(|p| (p, cpu))
    })();
    if cfg.keep_temp {
        let kept = dir.keep();
        tracing::info!(dir = %kept.display(), "temp dir kept");
    }
    result
}

/// Run every configured target in turn; a target that cannot run is reported, not fatal.
pub fn run_all(cfg: &BenchConfig) -> Result<BenchReport> {
    let smbtorture = torture::find_smbtorture()?;
    let mut results = Vec::new();
    for &target in &cfg.targets {
        let status = if process::interrupted() {
            TargetStatus::Failed("interrupted".into())
        } else {
            match run_target(target, cfg, &smbtorture) {
                Ok((processes, server_cpu_s)) => TargetStatus::Measured {
                    processes,
                    server_cpu_s,
                },
                Err(e) if e.is_unavailable() => TargetStatus::Unavailable(e.to_string()),
                Err(e) => TargetStatus::Failed(e.to_string()),
            }
        };
        match &status {
            TargetStatus::Measured { .. } => {}
            TargetStatus::Unavailable(m) => {
                tracing::warn!(target = target.name(), "unavailable: {m}")
            }
            TargetStatus::Failed(m) => tracing::error!(target = target.name(), "failed: {m}"),
        }
        results.push((target, status));
    }
    Ok(BenchReport::new(cfg, results))
}
