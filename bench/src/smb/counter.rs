//! The shared-counter workload over SMB, one node against two in the same run: C clients take
//! turns on one exclusive byte-range lock of one file (blocking LOCK, READ the counter, WRITE it
//! plus one, UNLOCK). On two nodes every hand-off between clients of different nodes goes
//! through lockmgrd (the blocking LOCK pends, the other node's UNLOCK completes it through the
//! waiting node's lockmgr pump), so a lost pump wake-up shows as a pause of the pump's
//! safety-net sleep (100 ms).
//!
//! Reported per target: HDR percentiles of the turn (the interval between two consecutive
//! grants of the lock, any clients: one hand-off), its maximum (the longest pause), the blocking
//! LOCK's wait, and of a cross-node CREATE (node 2 opens a file node 1 holds open: a share-mode
//! check through lockmgrd). The counter's final value is checked (a broken lock loses updates)
//! and the nodes' logs are searched for the pump's lost-wake-up warnings.
//!
//! The clients are Python smbprotocol processes (`bench/scripts/smb_handoff.py`, embedded in
//! this binary): their per-call cost is the same on one node and two, and far below the pauses
//! this looks for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::error::{Result, SmbBenchError};
use super::process::{wait_until, ManagedProcess};
use super::{ours, Deployment, Endpoint, TargetKind};

/// The client script, written into each run's temp dir.
const SCRIPT: &str = include_str!("../../scripts/smb_handoff.py");
/// The pump's warning for a lost wake-up (smbd/server/src/cluster.rs).
const LOST_WAKEUP_MARK: &str = "lost wake-up";
const COUNTER_FILE: &str = "counter.bin";
const CREATE_FILE: &str = "create.bin";
/// Turns at least this long are counted as pauses (half the pump's 100 ms safety-net sleep,
/// well above any turn's normal spread on a loaded machine).
const PAUSE_NS: u64 = 50_000_000;

#[derive(Clone, Debug)]
pub struct CounterOptions {
    /// Targets in order: `smbd` (one node) and/or `cluster` (lockmgrd + two nodes).
    pub targets: Vec<TargetKind>,
    pub clients: usize,
    /// Hand-offs in total (split evenly over the clients).
    pub handoffs: u64,
    /// Cross-node CREATEs measured.
    pub creates: u64,
    pub python: Option<PathBuf>,
    pub smbd_bin: Option<PathBuf>,
    pub lockmgrd_bin: Option<PathBuf>,
    pub keep_temp: bool,
}

/// Percentiles in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.5),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CounterResult {
    pub target: TargetKind,
    pub nodes: usize,
    pub clients: usize,
    /// Grant-to-grant interval: one hand-off (LOCK grant, READ, WRITE, UNLOCK, next grant).
    pub turn: Percentiles,
    /// Turns of at least 50 ms.
    pub pauses: u64,
    /// Blocking LOCK request to grant, per client.
    pub lock_wait: Percentiles,
    /// CREATE of a file another node (one node: another connection) holds open.
    pub create: Percentiles,
    /// Final counter value (must equal the number of turns).
    pub counter: u64,
    /// The nodes' "lost wake-up" warnings (0 without a lost wake-up, or with an smbd too old to
    /// count them).
    pub lost_wakeup_warnings: usize,
}

#[derive(Debug, Serialize)]
pub struct CounterReport {
    pub handoffs: u64,
    pub results: Vec<CounterResult>,
}

impl CounterReport {
    pub fn table(&self) -> String {
        let us = |ns: u64| ns as f64 / 1000.0;
        let mut s = format!(
            "shared counter: {} hand-offs per target (clients take turns on one exclusive byte-range lock)\n",
            self.handoffs
        );
        s.push_str(&format!(
            "{:<8} {:>5} {:>7} | {:>9} {:>9} {:>10} {:>11} {:>7} | {:>9} {:>9} | {:>9} {:>9} | {:>7}\n",
            "target",
            "nodes",
            "clients",
            "turn p50",
            "turn p99",
            "turn p99.9",
            "max pause",
            ">=50ms",
            "wait p50",
            "wait p99",
            "CREATE50",
            "CREATE99",
            "lostwk"
        ));
        for r in &self.results {
            s.push_str(&format!(
                "{:<8} {:>5} {:>7} | {:>9.1} {:>9.1} {:>10.1} {:>11.1} {:>7} | {:>9.1} {:>9.1} | {:>9.1} {:>9.1} | {:>7}\n",
                r.target.name(),
                r.nodes,
                r.clients,
                us(r.turn.p50_ns),
                us(r.turn.p99_ns),
                us(r.turn.p999_ns),
                us(r.turn.max_ns),
                r.pauses,
                us(r.lock_wait.p50_ns),
                us(r.lock_wait.p99_ns),
                us(r.create.p50_ns),
                us(r.create.p99_ns),
                r.lost_wakeup_warnings,
            ));
        }
        s.push_str("(microseconds; turn = grant-to-grant interval, max pause = its maximum)\n");
        if let (Some(one), Some(two)) = (
            self.results.iter().find(|r| r.target == TargetKind::Smbd),
            self.results
                .iter()
                .find(|r| r.target == TargetKind::Cluster),
        ) {
            if one.turn.max_ns > 0 && one.turn.p50_ns > 0 && one.create.p50_ns > 0 {
                s.push_str(&format!(
                    "cluster / single node: longest pause {:.2}x, turn p50 {:.2}x, CREATE p50 {:.2}x\n",
                    two.turn.max_ns as f64 / one.turn.max_ns as f64,
                    two.turn.p50_ns as f64 / one.turn.p50_ns as f64,
                    two.create.p50_ns as f64 / one.create.p50_ns as f64,
                ));
            }
        }
        s
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// A Python that has smbprotocol: the explicit one, $SMBD_PYTHON, the project's venv, python3.
pub fn find_python(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("SMBD_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push("/opt/clustersmb-venv/bin/python".into());
    candidates.push("/tmp/venv/bin/python".into());
    candidates.push("python3".into());
    candidates
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import smbprotocol"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            SmbBenchError::Unavailable(
                "no python with smbprotocol (pass --python or set SMBD_PYTHON)".into(),
            )
        })
}

fn hist() -> Result<Histogram<u64>> {
    Histogram::new(3).map_err(|e| SmbBenchError::Parse(e.to_string()))
}

/// The numbers after `tag` on the lines of a client's log that start with it.
fn tagged(log: &str, tag: &str) -> Result<Vec<Vec<u64>>> {
    log.lines()
        .filter_map(|l| l.strip_prefix(tag))
        .map(|rest| {
            rest.split_whitespace()
                .map(|n| {
                    n.parse::<u64>()
                        .map_err(|_| SmbBenchError::Parse(format!("client line {tag}{rest:?}")))
                })
                .collect()
        })
        .collect()
}

/// Grant-to-grant intervals of all clients' grant times.
fn turn_intervals(mut grants: Vec<u64>) -> Vec<u64> {
    grants.sort_unstable();
    grants.windows(2).map(|w| w[1] - w[0]).collect()
}

struct Client<'a> {
    python: &'a Path,
    script: &'a Path,
    dir: &'a Path,
}

impl Client<'_> {
    fn spawn(&self, name: &str, args: &[String]) -> Result<ManagedProcess> {
        let mut c = Command::new(self.python);
        c.arg(self.script).args(args);
        ManagedProcess::spawn(name, c, &self.dir.join(format!("{name}.log")))
    }

    fn finish(&self, p: &mut ManagedProcess, timeout: Duration) -> Result<String> {
        let st = p.wait_timeout(timeout)?;
        let log = p.log_text();
        if !st.success() {
            return Err(SmbBenchError::Command {
                what: p.name().to_string(),
                detail: format!("{st}: {}", p.log_tail(2000)),
            });
        }
        Ok(log)
    }
}

fn ep_args(ep: &Endpoint) -> [String; 4] {
    [
        ep.host.clone(),
        ep.port.to_string(),
        ep.user.clone(),
        ep.password.clone(),
    ]
}

fn measure(
    target: TargetKind,
    dep: &mut Deployment,
    root: &Path,
    python: &Path,
    opts: &CounterOptions,
) -> Result<CounterResult> {
    let client_dir = root.join("clients");
    std::fs::create_dir_all(&client_dir)
        .map_err(|e| SmbBenchError::io("creating the client dir", e))?;
    let script = client_dir.join("smb_handoff.py");
    std::fs::write(&script, SCRIPT).map_err(|e| SmbBenchError::io("writing the client", e))?;
    let client = Client {
        python,
        script: &script,
        dir: &client_dir,
    };
    let eps = dep.endpoints.clone();
    if eps.is_empty() {
        return Err(SmbBenchError::Unavailable("no endpoints".into()));
    }
    let clients = opts.clients.max(1);
    let per_client = opts.handoffs.div_ceil(clients as u64).max(1);
    let go = client_dir.join("go");
    let mut procs = Vec::new();
    for i in 0..clients {
        let mut args = vec!["turns".to_string()];
        args.extend(ep_args(&eps[i % eps.len()]));
        args.extend([
            COUNTER_FILE.to_string(),
            per_client.to_string(),
            go.display().to_string(),
        ]);
        procs.push(client.spawn(&format!("client{i}"), &args)?);
    }
    {
        let mut refs: Vec<&mut ManagedProcess> = procs.iter_mut().collect();
        let logs: Vec<PathBuf> = refs.iter().map(|p| p.log_path().to_path_buf()).collect();
        wait_until(
            "SMB clients connected",
            Duration::from_secs(60),
            &mut refs,
            || {
                logs.iter().all(|l| {
                    std::fs::read_to_string(l).is_ok_and(|t| t.lines().any(|x| x == "READY"))
                })
            },
        )?;
    }
    tracing::info!(target = target.name(), clients, per_client, "clients go");
    std::fs::write(&go, b"").map_err(|e| SmbBenchError::io("writing the go file", e))?;
    // Generous: a few ms per turn in Python, plus the pauses this is looking for.
    let budget = Duration::from_secs(120 + per_client * clients as u64 / 100);
    let mut grants = Vec::new();
    let mut waits = hist()?;
    for p in &mut procs {
        let log = client.finish(p, budget)?;
        for t in tagged(&log, "T ")? {
            if let [grant, wait] = t[..] {
                grants.push(grant);
                let _ = waits.record(wait.max(1));
            }
        }
    }
    let turns = grants.len() as u64;
    let mut turn = hist()?;
    let mut pauses = 0;
    for d in turn_intervals(grants) {
        pauses += u64::from(d >= PAUSE_NS);
        let _ = turn.record(d.max(1));
    }
    let mut args = vec!["counter".to_string()];
    args.extend(ep_args(&eps[0]));
    args.push(COUNTER_FILE.into());
    let mut p = client.spawn("counter", &args)?;
    let log = client.finish(&mut p, Duration::from_secs(60))?;
    let counter = tagged(&log, "COUNTER ")?
        .first()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| SmbBenchError::Parse("no COUNTER line".into()))?;
    if counter != turns {
        return Err(SmbBenchError::Command {
            what: format!("{} shared counter", target.name()),
            detail: format!("counter {counter} after {turns} turns: the lock let updates race"),
        });
    }
    let mut args = vec!["create".to_string()];
    let (first, last) = (&eps[0], &eps[eps.len() - 1]);
    args.extend([first.host.clone(), first.port.to_string()]);
    args.extend([last.host.clone(), last.port.to_string()]);
    args.extend([first.user.clone(), first.password.clone()]);
    args.extend([CREATE_FILE.to_string(), opts.creates.max(1).to_string()]);
    let mut p = client.spawn("create", &args)?;
    let log = client.finish(&mut p, budget)?;
    let mut create = hist()?;
    for v in tagged(&log, "C ")? {
        if let [ns] = v[..] {
            let _ = create.record(ns.max(1));
        }
    }
    let lost_wakeup_warnings = dep
        .processes_mut()
        .map(|p| p.log_text().matches(LOST_WAKEUP_MARK).count())
        .sum();
    Ok(CounterResult {
        target,
        nodes: eps.len(),
        clients,
        turn: Percentiles::of(&turn),
        pauses,
        lock_wait: Percentiles::of(&waits),
        create: Percentiles::of(&create),
        counter,
        lost_wakeup_warnings,
    })
}

fn run_target(target: TargetKind, python: &Path, opts: &CounterOptions) -> Result<CounterResult> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("smbbench-counter-{}-", target.name()))
        .tempdir()
        .map_err(|e| SmbBenchError::io("creating a temp dir", e))?;
    let root = dir.path().to_path_buf();
    let result = (|| {
        let mut dep = match target {
            TargetKind::Smbd => ours::deploy_smbd(&root, opts.smbd_bin.as_deref())?,
            TargetKind::Cluster => ours::deploy_cluster(
                &root,
                2,
                opts.smbd_bin.as_deref(),
                opts.lockmgrd_bin.as_deref(),
            )?,
            other => {
                return Err(SmbBenchError::Unavailable(format!(
                    "the shared-counter workload runs on smbd and cluster, not {}",
                    other.name()
                )))
            }
        };
        let r = measure(target, &mut dep, &root, python, opts);
        dep.stop();
        r
    })();
    if opts.keep_temp {
        let kept = dir.keep();
        tracing::info!(dir = %kept.display(), "temp dir kept");
    }
    result
}

/// Runs the workload on every target in turn.
pub fn run(opts: &CounterOptions) -> Result<CounterReport> {
    let python = find_python(opts.python.as_deref())?;
    let mut results = Vec::new();
    for &t in &opts.targets {
        tracing::info!(target = t.name(), "shared counter");
        results.push(run_target(t, &python, opts)?);
    }
    Ok(CounterReport {
        handoffs: opts.handoffs,
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_intervals_merge_clients() {
        // Two clients' grant times interleave: the intervals are between neighbours in time.
        assert_eq!(turn_intervals(vec![10, 30, 20, 45]), vec![10, 10, 15]);
        assert!(turn_intervals(vec![5]).is_empty());
    }

    #[test]
    fn tagged_lines_are_parsed_and_bad_ones_refused() {
        let log = "READY\nT 100 7\nnoise\nT 130 9\nDONE 2\n";
        assert_eq!(tagged(log, "T ").unwrap(), vec![vec![100, 7], vec![130, 9]]);
        assert!(tagged("T 1 x\n", "T ").is_err());
    }

    #[test]
    fn table_gives_the_cluster_ratio() {
        let r = |target, max_ns| CounterResult {
            target,
            nodes: 1,
            clients: 4,
            turn: Percentiles {
                count: 10,
                p50_ns: 1000,
                p99_ns: 2000,
                p999_ns: 3000,
                max_ns,
            },
            pauses: 0,
            lock_wait: Percentiles::default(),
            create: Percentiles {
                p50_ns: 500,
                ..Percentiles::default()
            },
            counter: 10,
            lost_wakeup_warnings: 0,
        };
        let report = CounterReport {
            handoffs: 10,
            results: vec![r(TargetKind::Smbd, 4000), r(TargetKind::Cluster, 12_000)],
        };
        let t = report.table();
        assert!(t.contains("longest pause 3.00x"), "{t}");
    }
}
