//! A private, single-member etcd on loopback, run from the `etcd` binary (Debian
//! `etcd-server`): for tests, benchmarks and the local demo cluster, which need a real
//! coordination service without touching any shared one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Coordinator;

/// Why a [`LocalEtcd`] did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalEtcdError {
    #[error("etcd is not installed (apt-get install etcd-server)")]
    NotInstalled,
    #[error("cannot pick a free port: {0}")]
    Port(std::io::Error),
    #[error("cannot start etcd: {0}")]
    Spawn(std::io::Error),
    #[error("etcd did not answer within {0:?}")]
    NotReady(Duration),
}

/// An etcd process started by this process; killed (by PID) and its data directory removed
/// on drop.
pub struct LocalEtcd {
    /// `None` while stopped ([`LocalEtcd::stop`]).
    child: Option<Child>,
    dir: PathBuf,
    endpoint: String,
    peer_url: String,
}

/// How long a starting etcd may take to answer (a loaded 2-vCPU machine needs seconds).
const READY_WITHIN: Duration = Duration::from_secs(30);

impl LocalEtcd {
    /// Whether the `etcd` binary is there.
    pub fn installed() -> bool {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Starts etcd on free loopback ports, its data in a fresh directory under the system's
    /// temporary directory, and returns once it answers. Another process may take a port
    /// between choosing and binding it: an etcd that exits at once is started again on
    /// other ports.
    pub fn start() -> Result<LocalEtcd, LocalEtcdError> {
        if !LocalEtcd::installed() {
            return Err(LocalEtcdError::NotInstalled);
        }
        let mut last = LocalEtcdError::NotReady(READY_WITHIN);
        for _ in 0..5 {
            match LocalEtcd::try_start() {
                Ok(etcd) => return Ok(etcd),
                Err(e @ LocalEtcdError::NotReady(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn try_start() -> Result<LocalEtcd, LocalEtcdError> {
        let client = free_port()?;
        let peer = free_port()?;
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let dir =
            std::env::temp_dir().join(format!("clustersmb-etcd-{}-{client}", std::process::id()));
        let child = spawn_etcd(&dir, &endpoint, &peer_url)?;
        let mut etcd = LocalEtcd {
            child: Some(child),
            dir,
            endpoint,
            peer_url,
        };
        // On an error, dropping `etcd` stops the process.
        etcd.wait_ready()?;
        Ok(etcd)
    }

    /// Waits until this etcd answers; an etcd that exits (a port race) or stays silent for
    /// `READY_WITHIN` is an error.
    fn wait_ready(&mut self) -> Result<(), LocalEtcdError> {
        let start = Instant::now();
        loop {
            // Exited: it lost a port race. Answering: make sure it is this one (alive).
            let running = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if !running {
                return Err(LocalEtcdError::NotReady(start.elapsed()));
            }
            let answers = Coordinator::connect(
                std::slice::from_ref(&self.endpoint),
                "probe",
                Duration::from_secs(2),
            )
            .and_then(|mut c| c.read())
            .is_ok();
            if answers {
                return Ok(());
            }
            if start.elapsed() > READY_WITHIN {
                return Err(LocalEtcdError::NotReady(READY_WITHIN));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Kills the etcd process (SIGKILL, by PID), keeping its data: the coordination service
    /// is down until [`LocalEtcd::restart`]. For tests of what a cluster does without it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped etcd again on the same ports and data (so clients reconnect to the
    /// same endpoint and find what was stored), and returns once it answers.
    pub fn restart(&mut self) -> Result<(), LocalEtcdError> {
        self.stop();
        self.child = Some(spawn_etcd(&self.dir, &self.endpoint, &self.peer_url)?);
        self.wait_ready()
    }

    /// A coordinator of `cluster` on this etcd.
    pub fn coordinator(&self, cluster: &str) -> Result<Coordinator, crate::CoordError> {
        Coordinator::connect(
            std::slice::from_ref(&self.endpoint),
            cluster,
            Duration::from_secs(2),
        )
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_etcd(dir: &Path, endpoint: &str, peer_url: &str) -> Result<Child, LocalEtcdError> {
    Command::new("etcd")
        .args(["--name", "local", "--data-dir"])
        .arg(dir)
        .args(["--listen-client-urls", endpoint])
        .args(["--advertise-client-urls", endpoint])
        .args(["--listen-peer-urls", peer_url])
        .args(["--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", &format!("local={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(LocalEtcdError::Spawn)
}

fn free_port() -> Result<u16, LocalEtcdError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(LocalEtcdError::Port)
}
