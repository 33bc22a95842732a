//! A private, single-member etcd on loopback, run from the `etcd` binary (Debian
//! `etcd-server`): for tests, benchmarks and the local demo cluster, which need a real
//! coordination service without touching any shared one.

use std::path::PathBuf;
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
    child: Child,
    dir: PathBuf,
    endpoint: String,
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
        let child = Command::new("etcd")
            .args(["--name", "local", "--data-dir"])
            .arg(&dir)
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("local={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(LocalEtcdError::Spawn)?;
        let mut etcd = LocalEtcd {
            child,
            dir,
            endpoint,
        };
        let start = Instant::now();
        loop {
            // Exited: it lost a port race. Answering: make sure it is this one (alive).
            if !matches!(etcd.child.try_wait(), Ok(None)) {
                return Err(LocalEtcdError::NotReady(start.elapsed()));
            }
            let answers = Coordinator::connect(
                std::slice::from_ref(&etcd.endpoint),
                "probe",
                Duration::from_secs(2),
            )
            .and_then(|mut c| c.read())
            .is_ok();
            if answers {
                return Ok(etcd);
            }
            if start.elapsed() > READY_WITHIN {
                // Dropping `etcd` stops the process.
                return Err(LocalEtcdError::NotReady(READY_WITHIN));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, LocalEtcdError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(LocalEtcdError::Port)
}
