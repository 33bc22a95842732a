//! Child processes the harness starts: each in its own process group, registered so that an
//! interrupt (Ctrl-C, SIGTERM) can stop every server we started, and stopped by process-group id
//! when dropped (Samba's smbd and ctdbd fork helpers that must go with them).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::error::{Result, SmbBenchError};

/// Process groups started by this process and not yet stopped.
static REGISTRY: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Grace period between SIGTERM and SIGKILL when stopping a server.
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

fn register(pgid: i32) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.push(pgid);
    }
}

fn unregister(pgid: i32) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.retain(|p| *p != pgid);
    }
}

/// True once an interrupt was received; long waits poll it and give up.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Send SIGTERM to every registered process group. Called from the interrupt handler; the main
/// thread then notices [`interrupted`], drops its guards (which reap the children) and exits.
pub fn terminate_all() {
    let groups: Vec<i32> = REGISTRY.lock().map(|r| r.clone()).unwrap_or_default();
    for pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    }
}

/// Install the Ctrl-C / SIGTERM handler: stop every started server, let the main thread clean
/// up, and force the exit if it has not managed to within a grace period.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // Second interrupt: the user wants out now.
            kill_all();
            std::process::exit(130);
        }
        tracing::warn!("interrupted: stopping the servers");
        terminate_all();
        std::thread::spawn(|| {
            std::thread::sleep(STOP_GRACE + Duration::from_secs(5));
            kill_all();
            std::process::exit(130);
        });
    })
    .map_err(|e| SmbBenchError::Command {
        what: "installing the interrupt handler".into(),
        detail: e.to_string(),
    })
}

fn kill_all() {
    let groups: Vec<i32> = REGISTRY.lock().map(|r| r.clone()).unwrap_or_default();
    for pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// A started child in its own process group, with its output going to a log file.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    pgid: i32,
    log: PathBuf,
    status: Option<ExitStatus>,
    stopped: bool,
}

impl ManagedProcess {
    /// Spawn `cmd` with stdin from /dev/null and stdout+stderr appended to `log`.
    pub fn spawn(name: impl Into<String>, mut cmd: Command, log: &Path) -> Result<Self> {
        let name = name.into();
        let out = File::create(log).map_err(|source| SmbBenchError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| SmbBenchError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| SmbBenchError::io(format!("starting {name} ({cmd:?})"), e))?;
        let pgid = i32::try_from(child.id()).map_err(|_| SmbBenchError::Command {
            what: format!("starting {name}"),
            detail: "pid out of range".into(),
        })?;
        register(pgid);
        tracing::debug!(%name, pid = pgid, log = %log.display(), "started");
        Ok(ManagedProcess {
            name,
            child,
            pgid,
            log: log.to_path_buf(),
            status: None,
            stopped: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process group the server and everything it forks (Samba's per-connection children,
    /// CTDB's helpers) run in.
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Exit status if the process has exited (reaps it).
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| SmbBenchError::io(format!("waiting for {}", self.name), e))?;
        }
        Ok(self.status)
    }

    /// Wait for the process to exit by itself; on `timeout` kill it and report that.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit()? {
                return Ok(st);
            }
            if interrupted() {
                self.stop();
                return Err(SmbBenchError::Interrupted);
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(SmbBenchError::Command {
                    what: self.name.clone(),
                    detail: format!("still running after {} s; killed", timeout.as_secs()),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `max` bytes of the log, for error messages.
    pub fn log_tail(&self, max: u64) -> String {
        log_tail(&self.log, max)
    }

    /// SIGTERM the process group, SIGKILL it after a grace period, reap the leader.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pg = Pid::from_raw(self.pgid);
        let _ = killpg(pg, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) && !group_alive(pg) {
                break;
            }
            std::thread::sleep(POLL);
        }
        if group_alive(pg) {
            tracing::warn!(name = %self.name, pgid = self.pgid, "did not stop on SIGTERM; killing");
            let _ = killpg(pg, Signal::SIGKILL);
        }
        let _ = self.child.wait();
        // Forked helpers are not our children: give them a moment to die after SIGKILL.
        let deadline = Instant::now() + Duration::from_secs(2);
        while group_alive(pg) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        unregister(self.pgid);
        tracing::debug!(name = %self.name, "stopped");
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn group_alive(pg: Pid) -> bool {
    !matches!(killpg(pg, None), Err(Errno::ESRCH))
}

/// The last `max` bytes of a file, lossily decoded.
pub fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max {
        let _ = f.seek(SeekFrom::Start(len - max));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Wait until `ready()` holds, failing early if one of `procs` exits or on interrupt.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    procs: &mut [&mut ManagedProcess],
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        for p in procs.iter_mut() {
            if let Some(st) = p.try_exit()? {
                return Err(SmbBenchError::EarlyExit {
                    what: p.name().to_string(),
                    status: st.to_string(),
                    detail: format!("; log {}:\n{}", p.log_path().display(), p.log_tail(2000)),
                });
            }
        }
        if interrupted() {
            return Err(SmbBenchError::Interrupted);
        }
        if Instant::now() >= deadline {
            let detail = procs
                .iter()
                .map(|p| format!("\n--- {} ---\n{}", p.name(), p.log_tail(1500)))
                .collect::<String>();
            return Err(SmbBenchError::NotReady {
                what: what.to_string(),
                secs: timeout.as_secs(),
                detail,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port free on 127.0.0.1 right now. The port is released before the server binds it, so
/// another process could take it in between; the server then fails to start and says so.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| SmbBenchError::io("finding a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| SmbBenchError::io("finding a free port", e))
}

/// True if something accepts TCP connections at `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Output of a short helper command run to completion.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run a short command (smbpasswd, ctdb) with optional stdin, killing it after `timeout`.
pub fn run_short(
    what: &str,
    mut cmd: Command,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<CmdOutput> {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| SmbBenchError::io(format!("running {what}"), e))?;
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(input.as_bytes())
            .map_err(|e| SmbBenchError::io(format!("writing to {what}"), e))?;
    }
    let readers = [
        child.stdout.take().map(|mut o| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = o.read_to_end(&mut s);
                s
            })
        }),
        child.stderr.take().map(|mut o| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = o.read_to_end(&mut s);
                s
            })
        }),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(SmbBenchError::io(format!("waiting for {what}"), e)),
        }
        if Instant::now() >= deadline || interrupted() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
            if interrupted() {
                return Err(SmbBenchError::Interrupted);
            }
            return Err(SmbBenchError::Command {
                what: what.to_string(),
                detail: format!("no answer within {} s", timeout.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut texts = readers.into_iter().map(|r| {
        r.and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    });
    let stdout = texts.next().unwrap_or_default();
    let stderr = texts.next().unwrap_or_default();
    Ok(CmdOutput {
        status,
        stdout,
        stderr,
    })
}

/// Find an executable: first in `dirs`, then on PATH.
pub fn find_program(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.iter()
        .map(PathBuf::from)
        .chain(path_dirs)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let pidfile = dir.path().join("grandchild.pid");
        let mut cmd = Command::new("sh");
        // The grandchild ignores nothing but is not our child: only a group kill reaches it.
        cmd.arg("-c")
            .arg(format!("sleep 300 & echo $! > {}; wait", pidfile.display()));
        let mut p = ManagedProcess::spawn("sh", cmd, &log).unwrap();
        wait_until("pidfile", Duration::from_secs(10), &mut [&mut p], || {
            std::fs::read_to_string(&pidfile)
                .map(|s| !s.trim().is_empty())
                .unwrap_or(false)
        })
        .unwrap();
        let gc: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        p.stop();
        assert!(p.try_exit().unwrap().is_some());
        // The grandchild was reparented; it must be gone (or a zombie about to be reaped by init).
        let stat = std::fs::read_to_string(format!("/proc/{gc}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        assert!(
            stat.is_empty() || state.starts_with('Z'),
            "grandchild alive: {stat}"
        );
    }

    #[test]
    fn run_short_captures_output_and_status() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("read x; echo out $x; echo err >&2; exit 3");
        let out = run_short("sh", cmd, Some("hello\n"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout.trim(), "out hello");
        assert_eq!(out.stderr.trim(), "err");
    }

    #[test]
    fn run_short_times_out() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let err = run_short("sleep", cmd, None, Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
    }

    #[test]
    fn early_exit_is_reported_with_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo bad config; exit 2");
        let mut p = ManagedProcess::spawn("fake", cmd, &log).unwrap();
        let err =
            wait_until("never", Duration::from_secs(20), &mut [&mut p], || false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("fake exited"), "{msg}");
        assert!(msg.contains("bad config"), "{msg}");
    }
}

/// CPU time (user + system, seconds) used so far by every process in the process groups
/// `pgids`, including their reaped children (cutime/cstime), from /proc/PID/stat
/// (proc(5)). `None` if /proc cannot be read or the clock tick is unknown.
pub fn group_cpu_seconds(pgids: &[i32]) -> Option<f64> {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)?;
    let mut ticks: u64 = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process may exit between the listing and the read; it is then not counted here
        // (its time moves to its parent's cutime/cstime once reaped).
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((pgrp, t)) = parse_stat_cpu(&stat) {
            if pgids.contains(&pgrp) {
                ticks += t;
            }
        }
    }
    Some(ticks as f64 / tick as f64)
}

/// Process group and utime+stime+cutime+cstime (clock ticks) of one /proc/PID/stat line. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after the
/// last ')'.
fn parse_stat_cpu(stat: &str) -> Option<(i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): pgrp is field 5, utime..cstime fields 14..=17.
    let pgrp = fields.get(2)?.parse().ok()?;
    let mut ticks = 0u64;
    for i in 11..=14 {
        ticks += fields.get(i)?.parse::<u64>().ok()?;
    }
    Some((pgrp, ticks))
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn stat_line_with_a_tricky_name() {
        let line = "4242 (smbd: a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 12 3 20 0 9 0 100 1000 10 18446744073709551615";
        assert_eq!(parse_stat_cpu(line), Some((4242, 250 + 75 + 12 + 3)));
        assert_eq!(parse_stat_cpu("1 (x) S 1"), None);
    }

    #[test]
    fn own_group_uses_cpu() {
        let me = nix::unistd::getpgrp().as_raw();
        let spin_until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        let mut x = 0u64;
        while std::time::Instant::now() < spin_until {
            x = x.wrapping_add(1);
        }
        std::hint::black_box(x);
        let cpu = group_cpu_seconds(&[me]).expect("/proc readable");
        assert!(cpu > 0.0, "{cpu}");
        assert_eq!(group_cpu_seconds(&[-7]), Some(0.0));
    }
}
