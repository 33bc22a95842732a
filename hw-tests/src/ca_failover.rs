//! The Linux kernel SMB client keeps CTDB's `ping_pong` running across a lock manager
//! failover, in the soft-RoCE guest (the kernel client needs a kernel of its own; the host's
//! may have no cifs at all).
//!
//! Set-up: etcd, a primary and a standby lockmgrd over shared memory (epochs in etcd, as
//! `scripts/run-local-cluster.sh` starts them), and smbd in this process with a continuously
//! available share. The share is mounted twice with `persistenthandles,nosharesock`: two SMB
//! connections, so the two `ping_pong FILE 3` processes (one per mount, same file) contend
//! through smbd and lockmgrd for every byte-range lock hand-off, not inside the client.
//!
//! Once both report progress, the primary is SIGKILLed and the standby promotes. Both
//! ping_pongs must carry on: still running, new reports after the kill, no `lock ... failed!`
//! line; smbd's LOCK count must grow after the kill and its lockmgr session must have been
//! resumed on the standby (`smbd_lockmgr_failovers_total`), not lost and restarted
//! (`smbd_lockmgr_sessions_started_total` stays 1). The longest gap between two reports
//! spanning the kill is printed: the pause a client saw (measured, not judged).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::guest::{random_key_file, spawn_logged, start_etcd, wait_log, Proc, STEP};

use crate::cifs_mount::{run, write_users, Smbd, PASSWORD, USER};

/// smbd's TCP port for these mounts (the SMB Direct test's smbd uses 4450).
const PORT: u16 = 4451;
/// smbd's metrics endpoint (loopback).
const METRICS: &str = "127.0.0.1:9446";
const ETCD_CLIENT: u16 = 23790;
/// Reports each ping_pong must print before the kill and again after it (about one a second).
const REPORTS: usize = 3;

/// The programs the test starts.
pub struct Tools {
    pub lockmgrd: PathBuf,
    pub etcd: PathBuf,
    pub ping_pong: PathBuf,
}

/// One `ping_pong FILE 3` and what it printed: `N locks/sec` reports end in `\r`, errors
/// (`lock at N failed! - ...`) in `\n`; each piece is kept with the time it was read.
struct PingPong {
    proc: Proc,
    out: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl PingPong {
    fn start(bin: &Path, file: &Path) -> Result<PingPong, String> {
        let mut child = Command::new(bin)
            .arg(file)
            .arg("3")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let out = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&out);
            std::thread::spawn(move || read_pieces(stream, &out));
        }
        Ok(PingPong {
            proc: Proc(child),
            out,
        })
    }

    fn pieces(&self) -> Vec<(Instant, String)> {
        self.out.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Rate reports (`N locks/sec`) read after `since`.
    fn reports_after(&self, since: Instant) -> Vec<(Instant, u64)> {
        self.pieces()
            .into_iter()
            .filter(|(t, _)| *t > since)
            .filter_map(|(t, s)| Some((t, parse_rate(&s)?)))
            .collect()
    }

    fn errors(&self) -> Vec<String> {
        self.pieces()
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| s.contains("failed"))
            .collect()
    }

    fn still_running(&mut self) -> Result<(), String> {
        match self.proc.0.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("ping_pong exited ({st}): {:?}", self.pieces())),
            Err(e) => Err(format!("ping_pong: {e}")),
        }
    }
}

fn read_pieces(mut stream: Box<dyn Read + Send>, out: &Mutex<Vec<(Instant, String)>>) {
    let mut buf = [0u8; 512];
    let mut piece = Vec::new();
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                let s = String::from_utf8_lossy(&piece).trim().to_string();
                if !s.is_empty() {
                    if let Ok(mut o) = out.lock() {
                        o.push((Instant::now(), s));
                    }
                }
                piece.clear();
            } else {
                piece.push(b);
            }
        }
    }
}

/// `"     123 locks/sec"` -> 123.
fn parse_rate(s: &str) -> Option<u64> {
    s.strip_suffix("locks/sec")?.trim().parse().ok()
}

/// The value of an unlabelled or exactly labelled sample in smbd's `/metrics`.
fn metric(name_and_labels: &str) -> Result<u64, String> {
    let mut s = TcpStream::connect(METRICS).map_err(|e| format!("metrics {METRICS}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("metrics: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("metrics: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("metrics: {e}"))?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .ok_or_else(|| format!("no {name_and_labels} in smbd's metrics"))
}

fn lock_requests() -> Result<u64, String> {
    metric("smbd_requests_total{command=\"LOCK\"}")
}

/// Waits until every ping_pong printed `REPORTS` reports after `since`, none stopped and none
/// reported a failure.
fn wait_progress(pps: &mut [PingPong], since: Instant, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + STEP;
    loop {
        for (i, p) in pps.iter_mut().enumerate() {
            p.still_running()
                .map_err(|e| format!("{what}: ping_pong {i}: {e}"))?;
            let errors = p.errors();
            if !errors.is_empty() {
                return Err(format!("{what}: ping_pong {i} reported {errors:?}"));
            }
        }
        if pps.iter().all(|p| {
            p.reports_after(since)
                .iter()
                .filter(|(_, r)| *r > 0)
                .count()
                >= REPORTS
        }) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let seen: Vec<Vec<(Instant, String)>> = pps.iter().map(|p| p.pieces()).collect();
            return Err(format!(
                "{what}: not {REPORTS} reports from each ping_pong in {STEP:?}: {seen:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The test (see the module documentation).
pub fn test_ping_pong_across_lockmgrd_failover(tools: &Tools) -> Result<(), String> {
    let dir = std::env::temp_dir().join("ca-failover-test");
    let _ = std::fs::remove_dir_all(&dir);
    let share = dir.join("share-ca");
    for d in [&share, &dir.join("mnt1"), &dir.join("mnt2")] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let key = dir.join("cluster.key");
    random_key_file(&key)?;

    let (etcd, etcd_url) = start_etcd(&tools.etcd, &dir, ETCD_CLIENT)?;

    let replica = |name: &str, sock: &Path, log: &Path| {
        spawn_logged(
            Command::new(&tools.lockmgrd)
                .args(["--transport", "shm", "--listen"])
                .arg(sock)
                .arg("--cluster-key-file")
                .arg(&key)
                .args(["--replica-name", name, "--etcd", &etcd_url])
                .args(["--cluster-name", "guest", "--failover-ms", "300"])
                // The guest is emulated (TCG): its etcd takes most of a second to record a
                // promotion (855 ms in one run, against a few ms on the host), longer than the
                // default 1 s lease within which a node must resume its session. A lease
                // sized for the machine, as on any slow deployment.
                .args(["--liveness-ms", "5000"])
                .env("NO_COLOR", "1"),
            log,
        )
    };
    let (sock_a, log_a) = (dir.join("lm-a.sock"), dir.join("lm-a.log"));
    let (sock_b, log_b) = (dir.join("lm-b.sock"), dir.join("lm-b.log"));
    let mut primary = replica("lm-a", &sock_a, &log_a)?;
    wait_log(
        &mut primary,
        &log_a,
        "lockmgrd listening",
        "the primary lockmgrd",
    )?;
    let mut standby = replica("lm-b", &sock_b, &log_b)?;
    wait_log(
        &mut standby,
        &log_b,
        "recorded as standby",
        "the standby lockmgrd",
    )?;

    let users = write_users(&dir)?;
    let toml = format!(
        "[server]\nnetbios_name = \"CATEST\"\nworkers = 2\nusers = \"{}\"\n\
         listen = [\"127.0.0.1:{PORT}\"]\nmetrics_listen = \"{METRICS}\"\n\
         [[share]]\nname = \"ca\"\npath = \"{}\"\ncontinuous_availability = true\n\
         [lockmgr]\ntransport = \"shm\"\nconnect = \"{},{}\"\ncluster_key_file = \"{}\"\n\
         node_name = \"guest1\"\n",
        users.display(),
        share.display(),
        sock_a.display(),
        sock_b.display(),
        key.display()
    );
    let smbd = Smbd::from_toml(&toml)?;

    let mounts: Vec<PathBuf> = (1..=2).map(|i| dir.join(format!("mnt{i}"))).collect();
    let options = format!(
        "vers=3.1.1,port={PORT},persistenthandles,nosharesock,username={USER},password={PASSWORD}"
    );
    let mut mounted = Vec::new();
    let result = (|| {
        for m in &mounts {
            let mp = m.to_str().ok_or("mount point not UTF-8")?;
            run(
                "mount",
                &["-t", "cifs", "//127.0.0.1/ca", mp, "-o", &options],
            )?;
            mounted.push(mp.to_string());
        }
        let mut pps = Vec::new();
        for m in &mounts {
            pps.push(PingPong::start(&tools.ping_pong, &m.join("ping_pong.dat"))?);
        }
        let started = Instant::now();
        wait_progress(&mut pps, started, "before the kill")?;
        let locks_before = lock_requests()?;

        // The primary dies; the standby must take over and both clients carry on.
        drop(primary);
        let killed = Instant::now();
        wait_log(&mut standby, &log_b, "promoted", "the standby's takeover")?;
        let promoted = killed.elapsed();
        wait_progress(&mut pps, killed, "after the primary's kill")?;
        let locks_after = lock_requests()?;
        if locks_after <= locks_before {
            return Err(format!(
                "smbd answered no LOCK after the kill ({locks_before} before, {locks_after} after)"
            ));
        }
        let failovers = metric("smbd_lockmgr_failovers_total")?;
        let sessions = metric("smbd_lockmgr_sessions_started_total")?;
        if failovers < 1 || sessions != 1 {
            return Err(format!(
                "smbd's lockmgr session was not resumed on the standby: failovers {failovers}, \
                 sessions started {sessions}"
            ));
        }
        // The pause each client saw: the longest gap between two of its reports around the
        // kill (ping_pong reports about once a second while it makes progress).
        let mut pauses = Vec::new();
        for p in &pps {
            let times: Vec<Instant> = p
                .reports_after(started)
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            let gap = times
                .windows(2)
                .filter(|w| w[1] >= killed)
                .map(|w| w[1].duration_since(w[0]))
                .max()
                .unwrap_or_default();
            let rates: Vec<u64> = p
                .reports_after(killed)
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            pauses.push(format!(
                "longest gap between reports {gap:?}, rates after {rates:?}"
            ));
        }
        println!(
            "    kernel cifs ping_pong x2 on a CA share across a lockmgrd primary kill: standby \
             promoted {promoted:?} after the kill; LOCK requests {locks_before} -> \
             {locks_after}; {}",
            pauses.join("; ")
        );
        drop(pps);
        Ok(())
    })();
    let mut unmounted = Ok(());
    for m in mounted.iter().rev() {
        if let Err(e) = run("umount", &[m]) {
            unmounted = Err(e);
        }
    }
    drop(smbd);
    drop(standby);
    drop(etcd);
    let logs = || {
        [&log_a, &log_b]
            .iter()
            .map(|l| {
                format!(
                    "--- {} ---\n{}",
                    l.display(),
                    std::fs::read_to_string(l).unwrap_or_default()
                )
            })
            .collect::<String>()
    };
    result.map_err(|e| format!("{e}\n{}", logs()))?;
    unmounted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_reports_parse() {
        assert_eq!(parse_rate("     123 locks/sec"), Some(123));
        assert_eq!(parse_rate("lock at 2 failed! - Input/output error"), None);
        assert_eq!(parse_rate("data increment = 1"), None);
    }

    #[test]
    fn output_splits_on_carriage_returns_and_newlines() {
        let out = Mutex::new(Vec::new());
        read_pieces(
            Box::new(std::io::Cursor::new(
                b"      10 locks/sec\r      12 locks/sec\rlock at 1 failed! - x\n".to_vec(),
            )),
            &out,
        );
        let got: Vec<String> = out
            .into_inner()
            .unwrap()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(
            got,
            ["10 locks/sec", "12 locks/sec", "lock at 1 failed! - x"]
        );
    }
}
