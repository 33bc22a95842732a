//! Summing the smbtorture processes of a target and printing one table (or one JSON object).

use std::fmt::Write as _;

/// What every target of a run is configured with (Samba in samba.rs, ours in ours.rs): signing
/// required on every session, file access as unprivileged benchmark users (uids 60001.., gid
/// 60000), no encryption, leases and durable handles on, no kernel oplocks/share modes.
pub const SETTINGS: &str = "signing required; file access as unprivileged users (uid 60001.., gid 60000); no encryption; leases and durable handles on";

use serde::Serialize;

use super::torture::ProcessStats;
use super::{BenchConfig, Suite, TargetKind};

/// How a target's run ended.
#[derive(Clone, Debug)]
pub enum TargetStatus {
    /// The smbtorture processes' figures and the CPU time (user + system, seconds) the
    /// target's server processes used while smbtorture ran, if /proc could tell.
    Measured {
        processes: Vec<ProcessStats>,
        server_cpu_s: Option<f64>,
    },
    /// Could not be set up here (missing package or binary, unsupported configuration).
    Unavailable(String),
    /// Started but the benchmark failed.
    Failed(String),
}

/// One target's line in the report. Latencies in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    pub target: TargetKind,
    /// "ok", "partial" (some smbtorture process failed part-way; its last progress figures are
    /// used), "unavailable" or "failed".
    pub status: &'static str,
    pub message: Option<String>,
    /// The suite's primary operation (echo, open, ops).
    pub op: &'static str,
    /// Sum over the smbtorture processes.
    pub ops_per_s: Option<f64>,
    /// Average over all operations of all processes (weighted by each process's count).
    pub avg_latency_us: Option<f64>,
    pub max_latency_us: Option<f64>,
    /// ops_per_s divided by the first target's.
    pub ratio_to_first: Option<f64>,
    /// CPU time of the target's server processes (smbd, lockmgrd, ctdbd; clients excluded)
    /// per primary operation, in microseconds: the "CPU per operation" of a clustering cost.
    pub server_cpu_us_per_op: Option<f64>,
    /// server_cpu_us_per_op divided by the first target's.
    pub cpu_ratio_to_first: Option<f64>,
    pub processes: Vec<ProcessStats>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub suite: Suite,
    pub duration_s: u64,
    pub nprocs: u32,
    pub procs: usize,
    pub results: Vec<TargetResult>,
}

fn summarise(
    suite: Suite,
    duration_s: u64,
    target: TargetKind,
    status: TargetStatus,
) -> TargetResult {
    let mut r = TargetResult {
        target,
        status: "ok",
        message: None,
        op: suite.primary_op(),
        ops_per_s: None,
        avg_latency_us: None,
        max_latency_us: None,
        ratio_to_first: None,
        server_cpu_us_per_op: None,
        cpu_ratio_to_first: None,
        processes: Vec::new(),
    };
    match status {
        TargetStatus::Unavailable(m) => {
            r.status = "unavailable";
            r.message = Some(m);
        }
        TargetStatus::Failed(m) => {
            r.status = "failed";
            r.message = Some(m);
        }
        TargetStatus::Measured {
            processes: procs,
            server_cpu_s,
        } => {
            let prim: Vec<_> = procs.iter().filter_map(|p| p.primary()).collect();
            let total: f64 = prim.iter().map(|o| o.ops_per_s).sum();
            r.ops_per_s = Some(total);
            let ops = total * duration_s as f64;
            r.server_cpu_us_per_op = server_cpu_s
                .filter(|_| ops > 0.0)
                .map(|cpu| cpu * 1e6 / ops);
            // Every process ran for the same time limit, so its rate stands in for its count.
            let weighted: Option<f64> = prim
                .iter()
                .map(|o| o.avg_latency_s.map(|a| a * o.ops_per_s))
                .sum();
            r.avg_latency_us = weighted.filter(|_| total > 0.0).map(|w| w / total * 1e6);
            r.max_latency_us = prim
                .iter()
                .filter_map(|o| o.max_latency_s)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
                .map(|s| s * 1e6);
            let errors: Vec<&str> = procs.iter().filter_map(|p| p.error.as_deref()).collect();
            if !errors.is_empty() {
                r.status = "partial";
                r.message = Some(format!(
                    "smbtorture failed before its final summary; figures are its last progress output: {}",
                    errors.join("; ")
                ));
            }
            r.processes = procs;
        }
    }
    r
}

impl BenchReport {
    pub fn new(cfg: &BenchConfig, results: Vec<(TargetKind, TargetStatus)>) -> Self {
        let mut results: Vec<TargetResult> = results
            .into_iter()
            .map(|(t, s)| summarise(cfg.suite, cfg.duration_s, t, s))
            .collect();
        let ratio = |x: Option<f64>, first: Option<f64>| match (x, first) {
            (Some(x), Some(f)) if f > 0.0 => Some(x / f),
            _ => None,
        };
        let first = results.first().and_then(|r| r.ops_per_s);
        let first_cpu = results.first().and_then(|r| r.server_cpu_us_per_op);
        for r in &mut results {
            r.ratio_to_first = ratio(r.ops_per_s, first);
            r.cpu_ratio_to_first = ratio(r.server_cpu_us_per_op, first_cpu);
        }
        BenchReport {
            suite: cfg.suite,
            duration_s: cfg.duration_s,
            nprocs: cfg.nprocs,
            procs: cfg.procs,
            results,
        }
    }

    /// True if at least one target was measured and none failed after starting.
    pub fn success(&self) -> bool {
        self.results
            .iter()
            .any(|r| r.status == "ok" || r.status == "partial")
            && !self.results.iter().any(|r| r.status == "failed")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human-readable table, per-process figures and messages for targets that did not run.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>, prec: usize| match v {
            Some(x) => format!("{x:.prec$}"),
            None => "-".into(),
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "smb2.bench.{}: {} s, {} smbtorture process(es) x nprocs={} (ops/s = {} per second, summed over processes; latencies in us)",
            self.suite.name(),
            self.duration_s,
            self.procs,
            self.nprocs,
            self.suite.primary_op()
        );
        let _ = writeln!(s, "settings (every target): {SETTINGS}");
        let _ = writeln!(
            s,
            "{:<12} {:<24} {:<12} {:>12} {:>12} {:>12} {:>8} {:>12} {:>9}",
            "target",
            "suite",
            "status",
            "ops/s",
            "avg lat",
            "max lat",
            "ratio",
            "cpu us/op",
            "cpu ratio"
        );
        for r in &self.results {
            let _ = writeln!(
                s,
                "{:<12} {:<24} {:<12} {:>12} {:>12} {:>12} {:>8} {:>12} {:>9}",
                r.target.name(),
                self.suite.name(),
                r.status,
                opt(r.ops_per_s, 0),
                opt(r.avg_latency_us, 1),
                opt(r.max_latency_us, 0),
                opt(r.ratio_to_first, 3),
                opt(r.server_cpu_us_per_op, 1),
                opt(r.cpu_ratio_to_first, 3)
            );
        }
        for r in &self.results {
            for p in &r.processes {
                let ops: Vec<String> = p
                    .ops
                    .iter()
                    .map(|o| {
                        format!(
                            "{} {:.0}/s avg {} max {}",
                            o.op,
                            o.ops_per_s,
                            opt(o.avg_latency_s.map(|x| x * 1e6), 1),
                            opt(o.max_latency_s.map(|x| x * 1e6), 0)
                        )
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "  {} process {} (port {}): {}",
                    r.target.name(),
                    p.process,
                    p.port,
                    ops.join("; ")
                );
            }
        }
        for r in &self.results {
            if let Some(m) = &r.message {
                let _ = writeln!(s, "{} {}: {}", r.target.name(), r.status, m);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smb::OpStats;

    fn cfg() -> BenchConfig {
        BenchConfig {
            suite: Suite::PathContentionShared,
            targets: vec![],
            duration_s: 10,
            nprocs: 2,
            procs: 2,
            smbd_bin: None,
            lockmgrd_bin: None,
            keep_temp: false,
        }
    }

    fn proc_stats(i: usize, rate: f64, avg: f64, max: f64) -> ProcessStats {
        ProcessStats {
            process: i,
            port: 1000 + i as u16,
            ops: vec![OpStats {
                op: "open".into(),
                ops_per_s: rate,
                avg_latency_s: Some(avg),
                min_latency_s: Some(avg / 2.0),
                max_latency_s: Some(max),
            }],
            error: None,
        }
    }

    #[test]
    fn sums_weights_and_ratios() {
        let rep = BenchReport::new(
            &cfg(),
            vec![
                (
                    TargetKind::Samba,
                    TargetStatus::Measured {
                        processes: vec![
                            proc_stats(0, 3000.0, 0.001, 0.010),
                            proc_stats(1, 1000.0, 0.002, 0.040),
                        ],
                        // 4000 ops/s for 10 s: 40,000 operations.
                        server_cpu_s: Some(2.0),
                    },
                ),
                (
                    TargetKind::Smbd,
                    TargetStatus::Measured {
                        processes: vec![proc_stats(0, 8000.0, 0.0005, 0.002)],
                        server_cpu_s: Some(6.0),
                    },
                ),
                (
                    TargetKind::Cluster,
                    TargetStatus::Unavailable("smbd does not accept [lockmgr]".into()),
                ),
            ],
        );
        let r0 = &rep.results[0];
        assert_eq!(r0.ops_per_s, Some(4000.0));
        // (3000*1000us + 1000*2000us) / 4000 = 1250us
        assert!((r0.avg_latency_us.unwrap() - 1250.0).abs() < 1e-6);
        assert!((r0.max_latency_us.unwrap() - 40000.0).abs() < 1e-6);
        assert_eq!(r0.ratio_to_first, Some(1.0));
        assert_eq!(rep.results[1].ratio_to_first, Some(2.0));
        // 2 s / 40,000 ops = 50 us; 6 s / 80,000 ops = 75 us.
        assert!((r0.server_cpu_us_per_op.unwrap() - 50.0).abs() < 1e-9);
        assert!((rep.results[1].server_cpu_us_per_op.unwrap() - 75.0).abs() < 1e-9);
        assert!((rep.results[1].cpu_ratio_to_first.unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(rep.results[2].server_cpu_us_per_op, None);
        assert_eq!(rep.results[2].status, "unavailable");
        assert_eq!(rep.results[2].ratio_to_first, None);
        assert!(rep.success());
        let t = rep.table();
        assert!(
            t.contains("cluster unavailable: smbd does not accept [lockmgr]"),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
        assert_eq!(v["results"][0]["target"], "samba");
        assert_eq!(v["results"][0]["ops_per_s"], 4000.0);
        assert_eq!(v["suite"], "path-contention-shared");
    }

    #[test]
    fn process_error_makes_the_target_partial() {
        let mut p = proc_stats(1, 50.0, 0.01, 0.02);
        p.error = Some("process 1 (port 1001): failure: oplock1".into());
        let rep = BenchReport::new(
            &cfg(),
            vec![(
                TargetKind::SambaCtdb,
                TargetStatus::Measured {
                    processes: vec![proc_stats(0, 100.0, 0.01, 0.02), p],
                    server_cpu_s: None,
                },
            )],
        );
        let r = &rep.results[0];
        assert_eq!(r.status, "partial");
        assert_eq!(r.ops_per_s, Some(150.0));
        assert!(r.message.as_deref().unwrap().contains("failure: oplock1"));
    }

    #[test]
    fn failed_target_makes_the_run_fail() {
        let rep = BenchReport::new(
            &cfg(),
            vec![
                (TargetKind::Samba, TargetStatus::Failed("boom".into())),
                (
                    TargetKind::Smbd,
                    TargetStatus::Measured {
                        processes: vec![proc_stats(0, 1.0, 0.1, 0.1)],
                        server_cpu_s: None,
                    },
                ),
            ],
        );
        assert!(!rep.success());
        assert_eq!(rep.results[1].ratio_to_first, None);
    }
}
