//! Running `smbtorture smb2.bench.<suite>` and reading what it prints.
//!
//! What Samba 4.17's smbtorture prints (source4/torture/smb2/bench.c and oplock.c):
//! - `echo`, `path-contention-shared`: once a second a progress segment ending in `\r`,
//!   `1.00 second: echo[num/s=N,avslat=S,minlat=S,maxlat=S]` (path-contention-shared has two
//!   groups, `open[...] close[...]`), and at the end one segment ending in `\n` whose `num/s` is the
//!   total over the run divided by the time limit and whose latencies (seconds) cover the run.
//! - `oplock1`: `N.NN ops/second` after every round (a running average), `\r`-separated, the
//!   last one `\n`-terminated. No latencies.
//! - Then `success: <test>` or `failure: <test> [ reason ]` / `error: ...`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use super::error::{Result, SmbBenchError};
use super::process::ManagedProcess;
use super::Endpoint;

/// The smbtorture benchmarks this harness knows how to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Suite {
    /// SMB2 ECHO round trips.
    Echo,
    /// CREATE/CLOSE of the share root from every connection: share-mode contention.
    PathContentionShared,
    /// Batch-oplock ping-pong on one file: every open breaks the previous holder's oplock.
    Oplock1,
}

impl Suite {
    /// The smbtorture test name.
    pub fn torture_name(self) -> &'static str {
        match self {
            Suite::Echo => "smb2.bench.echo",
            Suite::PathContentionShared => "smb2.bench.path-contention-shared",
            Suite::Oplock1 => "smb2.bench.oplock1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Suite::Echo => "echo",
            Suite::PathContentionShared => "path-contention-shared",
            Suite::Oplock1 => "oplock1",
        }
    }

    /// The operation whose rate is the headline figure.
    pub fn primary_op(self) -> &'static str {
        match self {
            Suite::Echo => "echo",
            Suite::PathContentionShared => "open",
            Suite::Oplock1 => "ops",
        }
    }
}

/// One operation's figures from one smbtorture process (latencies in seconds).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpStats {
    pub op: String,
    pub ops_per_s: f64,
    pub avg_latency_s: Option<f64>,
    pub min_latency_s: Option<f64>,
    pub max_latency_s: Option<f64>,
}

/// The final summary of one smbtorture run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessStats {
    /// Index of the smbtorture process.
    pub process: usize,
    /// Port it was pointed at.
    pub port: u16,
    /// Every operation reported; the suite's primary operation first.
    pub ops: Vec<OpStats>,
    /// Set when smbtorture failed before its final summary: `ops` is then the last progress
    /// figure it printed (per-second rate for echo/path-contention-shared, running average for
    /// oplock1), and this says why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProcessStats {
    pub fn primary(&self) -> Option<&OpStats> {
        self.ops.first()
    }
}

/// Parse smbtorture's output for `suite`: the final summary, primary operation first. A test
/// that reported `failure:`/`error:` or never printed its final summary is an error.
pub fn parse_output(suite: Suite, text: &str) -> Result<Vec<OpStats>> {
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("failure:") || l.starts_with("error:"))
        .collect();
    if !failed.is_empty() {
        return Err(SmbBenchError::Parse(format!(
            "test failed: {}",
            failed.join(" | ")
        )));
    }
    // The final summary is `\n`-terminated; progress segments end in `\r` and share its line.
    let finals = text
        .split('\n')
        .filter_map(|line| line.rsplit('\r').find(|s| !s.trim().is_empty()));
    let found = finals.rev().find_map(|seg| parse_segment(suite, seg));
    let ops = found.ok_or_else(|| {
        SmbBenchError::Parse(format!(
            "no final summary for {} (test aborted?)",
            suite.torture_name()
        ))
    })?;
    primary_first(suite, ops)
}

/// The last figures smbtorture printed, progress or final, for a run that failed part-way.
pub fn parse_last_progress(suite: Suite, text: &str) -> Option<Vec<OpStats>> {
    let last = text
        .split(['\n', '\r'])
        .rev()
        .find_map(|seg| parse_segment(suite, seg))?;
    primary_first(suite, last).ok()
}

fn parse_segment(suite: Suite, seg: &str) -> Option<Vec<OpStats>> {
    match suite {
        Suite::Oplock1 => parse_ops_per_second(seg).map(|r| {
            vec![OpStats {
                op: "ops".into(),
                ops_per_s: r,
                avg_latency_s: None,
                min_latency_s: None,
                max_latency_s: None,
            }]
        }),
        Suite::Echo | Suite::PathContentionShared => parse_bracket_line(seg),
    }
}

fn primary_first(suite: Suite, mut ops: Vec<OpStats>) -> Result<Vec<OpStats>> {
    let primary = suite.primary_op();
    let Some(idx) = ops.iter().position(|o| o.op == primary) else {
        return Err(SmbBenchError::Parse(format!(
            "summary has no `{primary}` figures"
        )));
    };
    ops.swap(0, idx);
    Ok(ops)
}

/// The last `max_lines` lines of smbtorture output without the `\r`-overwritten progress, for
/// error messages.
pub fn log_summary(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text
        .split('\n')
        .filter_map(|l| l.rsplit('\r').find(|s| !s.trim().is_empty()))
        .collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// `12345.67 ops/second`
fn parse_ops_per_second(seg: &str) -> Option<f64> {
    let rest = seg.trim().strip_suffix("ops/second")?;
    rest.trim().parse().ok()
}

/// `2.00 second: open[num/s=6663,avslat=0.000152,minlat=0.000058,maxlat=0.008439] close[...]`
fn parse_bracket_line(seg: &str) -> Option<Vec<OpStats>> {
    let (head, groups) = seg.split_once("second:")?;
    head.trim().parse::<f64>().ok()?;
    let mut out = Vec::new();
    for tok in groups.split_whitespace() {
        let (name, body) = tok.split_once('[')?;
        let body = body.strip_suffix(']')?;
        let mut st = OpStats {
            op: name.to_string(),
            ops_per_s: f64::NAN,
            avg_latency_s: None,
            min_latency_s: None,
            max_latency_s: None,
        };
        for kv in body.split(',') {
            let (k, v) = kv.split_once('=')?;
            let v: f64 = v.parse().ok()?;
            match k {
                "num/s" => st.ops_per_s = v,
                "avslat" => st.avg_latency_s = Some(v),
                "minlat" => st.min_latency_s = Some(v),
                "maxlat" => st.max_latency_s = Some(v),
                _ => {}
            }
        }
        if st.ops_per_s.is_nan() {
            return None;
        }
        out.push(st);
    }
    (!out.is_empty()).then_some(out)
}

/// The smbtorture binary, or an error naming its Debian package.
pub fn find_smbtorture() -> Result<PathBuf> {
    super::process::find_program("smbtorture", &["/usr/bin", "/usr/local/bin"]).ok_or(
        SmbBenchError::MissingTool {
            tool: "smbtorture".into(),
            package: "samba-testsuite",
        },
    )
}

/// What every smbtorture process of one run gets.
#[derive(Clone, Debug)]
pub struct TortureRun {
    pub smbtorture: PathBuf,
    pub suite: Suite,
    pub duration_s: u64,
    pub nprocs: u32,
    /// Number of smbtorture processes run at the same time.
    pub procs: usize,
    /// Private client smb.conf (Debian's /etc/samba/smb.conf has a panic action that mails root).
    pub client_conf: PathBuf,
    pub work_dir: PathBuf,
}

/// Write the minimal client configuration smbtorture is given with `-s`.
pub fn write_client_conf(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("client.conf");
    std::fs::write(
        &p,
        "[global]\n\tclient min protocol = SMB2_02\n\tclient max protocol = SMB3_11\n",
    )
    .map_err(|e| SmbBenchError::io(format!("writing {}", p.display()), e))?;
    Ok(p)
}

impl TortureRun {
    fn command(&self, ep: &Endpoint) -> Command {
        let mut c = Command::new(&self.smbtorture);
        c.arg(format!("//{}/{}", ep.host, ep.share))
            .arg("-p")
            .arg(ep.port.to_string())
            .arg("-s")
            .arg(&self.client_conf)
            .arg("-U")
            .arg(format!("{}%{}", ep.user, ep.password))
            .arg("--target=samba3")
            .arg(format!("--option=torture:user2name={}", ep.user2))
            .arg(format!("--option=torture:user2password={}", ep.password2))
            .arg(format!("--option=torture:timelimit={}", self.duration_s))
            .arg(format!("--option=torture:nprocs={}", self.nprocs))
            .arg(self.suite.torture_name());
        c
    }

    /// Start `procs` smbtorture processes at once, process i against endpoint i mod n, wait for
    /// all of them and parse each one's summary.
    pub fn run(&self, endpoints: &[Endpoint]) -> Result<Vec<ProcessStats>> {
        if endpoints.is_empty() {
            return Err(SmbBenchError::Torture {
                suite: self.suite.name().into(),
                detail: "no endpoints".into(),
            });
        }
        let mut running = Vec::with_capacity(self.procs);
        for i in 0..self.procs {
            let ep = &endpoints[i % endpoints.len()];
            let log = self.work_dir.join(format!("smbtorture.{i}.log"));
            tracing::info!(
                process = i,
                port = ep.port,
                suite = self.suite.name(),
                "smbtorture"
            );
            let p = ManagedProcess::spawn(format!("smbtorture #{i}"), self.command(ep), &log)?;
            running.push((i, ep.port, p));
        }
        // Generous: connection set-up plus oplock break timeouts against a misbehaving server.
        let limit = Duration::from_secs(self.duration_s + 120);
        let mut out = Vec::with_capacity(running.len());
        let mut errors = Vec::new();
        for (i, port, mut p) in running {
            let status = match p.wait_timeout(limit) {
                Ok(s) => s,
                Err(SmbBenchError::Interrupted) => return Err(SmbBenchError::Interrupted),
                Err(e) => {
                    errors.push(format!("process {i}: {e}"));
                    continue;
                }
            };
            let text = p.log_text();
            match parse_output(self.suite, &text) {
                Ok(ops) if status.success() => out.push(ProcessStats {
                    process: i,
                    port,
                    ops,
                    error: None,
                }),
                res => {
                    let why = match res {
                        Ok(_) => format!("exited with {status}"),
                        Err(e) => e.to_string(),
                    };
                    match parse_last_progress(self.suite, &text) {
                        Some(ops) => out.push(ProcessStats {
                            process: i,
                            port,
                            ops,
                            error: Some(format!("process {i} (port {port}): {why}")),
                        }),
                        None => errors.push(format!(
                            "process {i} (port {port}): {why}\n{}",
                            log_summary(&text, 12)
                        )),
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(SmbBenchError::Torture {
                suite: self.suite.name().into(),
                detail: errors.join("\n"),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: &str = "smbtorture 4.17.12-Debian\nUsing seed 1\ntime: x\ntest: echo\ntime: x\n\
Opening 2 connections\nOpened 2 connections with qdepth=1 => 2 loops\nRunning for 3 seconds\n\
1.00 second: echo[num/s=31125,avslat=0.000065,minlat=0.000027,maxlat=0.009416]      \r\
2.00 second: echo[num/s=30629,avslat=0.000065,minlat=0.000027,maxlat=0.004868]      \r\
3.00 second: echo[num/s=30900,avslat=0.000064,minlat=0.000026,maxlat=0.009500]\n\
3.00 seconds\ntime: x\nsuccess: echo\n";

    #[test]
    fn echo_final_summary_not_progress() {
        let ops = parse_output(Suite::Echo, ECHO).unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].op, "echo");
        assert_eq!(ops[0].ops_per_s, 30900.0);
        assert_eq!(ops[0].avg_latency_s, Some(0.000064));
        assert_eq!(ops[0].min_latency_s, Some(0.000026));
        assert_eq!(ops[0].max_latency_s, Some(0.0095));
    }

    #[test]
    fn path_contention_primary_is_open() {
        let text = "Running for 2 seconds\n\
1.00 second: open[num/s=7798,avslat=0.000132,minlat=0.000058,maxlat=0.008439] close[num/s=7797,avslat=0.000127,minlat=0.000038,maxlat=0.008968]     \r\
2.00 second: open[num/s=6663,avslat=0.000152,minlat=0.000058,maxlat=0.008439] close[num/s=6662,avslat=0.000150,minlat=0.000035,maxlat=0.008968]\n\
2.00 seconds\nsuccess: path-contention-shared\n";
        let ops = parse_output(Suite::PathContentionShared, text).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].op, "open");
        assert_eq!(ops[0].ops_per_s, 6663.0);
        assert_eq!(ops[1].op, "close");
        assert_eq!(ops[1].ops_per_s, 6662.0);
        assert_eq!(ops[1].max_latency_s, Some(0.008968));
    }

    #[test]
    fn oplock1_last_running_average() {
        let text = "test: oplock1\nRunning for 2 seconds\n909.50 ops/second\r1033.32 ops/second\r1323.24 ops/second\ntime: x\nsuccess: oplock1\n";
        let ops = parse_output(Suite::Oplock1, text).unwrap();
        assert_eq!(ops[0].ops_per_s, 1323.24);
        assert_eq!(ops[0].avg_latency_s, None);
    }

    #[test]
    fn aborted_run_without_summary_is_an_error() {
        let text = "Running for 3 seconds\n1.00 second: echo[num/s=31125,avslat=0.000065,minlat=0.000027,maxlat=0.009416]      \rsmb2cli_echo failed NT_STATUS_CONNECTION_RESET\n";
        assert!(parse_output(Suite::Echo, text).is_err());
    }

    #[test]
    fn failure_line_is_an_error() {
        let text = "3.00 second: echo[num/s=1,avslat=0.1,minlat=0.1,maxlat=0.1]\nfailure: echo [\nboom\n]\n";
        let err = parse_output(Suite::Echo, text).unwrap_err().to_string();
        assert!(err.contains("failure: echo"), "{err}");
    }

    #[test]
    fn last_progress_of_a_failed_run() {
        let text = "Running for 20 seconds\n909.50 ops/second\r68.46 ops/second\r67.60 ops/secondtime: x\nfailure: oplock1 [\noplock.c:4332: status was NT_STATUS_SHARING_VIOLATION\n]\n";
        assert!(parse_output(Suite::Oplock1, text).is_err());
        let ops = parse_last_progress(Suite::Oplock1, text).unwrap();
        assert_eq!(ops[0].ops_per_s, 68.46);
        let text = "1.00 second: echo[num/s=31125,avslat=0.000065,minlat=0.000027,maxlat=0.009416]      \rsmb2cli_echo failed\n";
        let ops = parse_last_progress(Suite::Echo, text).unwrap();
        assert_eq!(ops[0].ops_per_s, 31125.0);
        assert!(parse_last_progress(Suite::Echo, "connection refused\n").is_none());
    }

    #[test]
    fn summary_drops_overwritten_progress() {
        let s = log_summary("a\n1 ops/second\r2 ops/second\nfailure: x [\nwhy\n]\n", 3);
        assert_eq!(s, "failure: x [\nwhy\n]");
        assert_eq!(log_summary("x\r1 ops/second\ny\n", 10), "1 ops/second\ny");
    }

    #[test]
    fn wrong_suite_output_is_an_error() {
        assert!(parse_output(Suite::PathContentionShared, ECHO).is_err());
        assert!(parse_output(Suite::Oplock1, ECHO).is_err());
    }
}
