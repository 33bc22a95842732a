//! What the guest tests that run lockmgrd replicas share: child processes with their output in
//! a log file, waiting for a line of that log, a random cluster key file, and a one-member etcd
//! on loopback.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one step may take under emulation (etcd's start, a promotion, a call).
pub const STEP: Duration = Duration::from_secs(90);

/// A child process SIGKILLed and reaped on drop (by its own handle: only what we started).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stdout and stderr going to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Proc, String> {
    let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let f2 = f
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .spawn()
        .map(Proc)
        .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))
}

/// Waits until `log` contains `pattern` while `p` runs; returns when it was seen.
pub fn wait_log(p: &mut Proc, log: &Path, pattern: &str, what: &str) -> Result<Instant, String> {
    let deadline = Instant::now() + STEP;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(pattern) {
            return Ok(Instant::now());
        }
        if let Ok(Some(st)) = p.0.try_wait() {
            return Err(format!("{what} exited ({st}):\n{text}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: no {pattern:?} in {STEP:?}:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes 32 random bytes to `path`, mode 0600 (a cluster key as lockmgrd wants it), and
/// returns them.
pub fn random_key_file(path: &Path) -> Result<[u8; 32], String> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    std::fs::write(path, key).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

/// A one-member etcd serving clients on 127.0.0.1:`client_port` (peers on the next port), its
/// data and log under `dir`, once it is ready; returns it and its client URL.
pub fn start_etcd(etcd: &Path, dir: &Path, client_port: u16) -> Result<(Proc, String), String> {
    let etcd_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{}", client_port + 1);
    let etcd_log = dir.join("etcd.log");
    let mut p = spawn_logged(
        Command::new(etcd)
            .args(["--name", "guest", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("guest={peer_url}")]),
        &etcd_log,
    )?;
    wait_log(&mut p, &etcd_log, "ready to serve client requests", "etcd")?;
    Ok((p, etcd_url))
}
