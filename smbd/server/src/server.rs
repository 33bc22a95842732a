//! Server startup: shares, users, lock service, listeners, worker threads, signal handling.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use smb_auth::users::UserDb;

#[path = "cluster.rs"]
pub mod cluster;

use crate::config::{ChangeNotify, Config, ConfigError, LockTransport};
use crate::locking::{default_lock_service, LockService};
use crate::shared::{Share, Shared};
use crate::worker::{Listener, Worker, WorkerError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("users file: {0}")]
    Users(String),
    #[error("share {name}: {source}")]
    Share {
        name: String,
        source: std::io::Error,
    },
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no listen address configured")]
    NoListen,
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("a worker thread panicked")]
    WorkerPanicked,
    #[error("witness: {0}")]
    Witness(String),
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    #[error("status socket {0}")]
    Status(String),
    #[error("rdma_proxy_socket {0}")]
    RdmaProxySocket(String),
}

/// Whether lockmgrd carries change notifications of share `name` (root `root`) between
/// nodes: `[server] change_notify`, and for "auto" whether another machine can change the
/// share's filesystem without an inotify event here.
fn notify_through_lockmgr(mode: ChangeNotify, name: &str, root: &std::path::Path) -> bool {
    match mode {
        ChangeNotify::Local => false,
        ChangeNotify::Cluster | ChangeNotify::Lockmgr => true,
        ChangeNotify::Auto => match crate::fs::machine_local_filesystem(root) {
            Some(local) => {
                tracing::debug!(
                    share = name,
                    local,
                    "change notify: lockmgrd carries other nodes' changes unless the filesystem is this machine's"
                );
                !local
            }
            None => {
                tracing::warn!(
                    share = name,
                    "statfs of the share root failed: change notify goes through lockmgrd too"
                );
                true
            }
        },
    }
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    /// `[server] rdma_proxy_socket`: smbdirectd's connections.
    proxy_listener: Option<std::os::unix::net::UnixListener>,
    workers: usize,
    pump: Option<cluster::Pump>,
    witness: Option<WitnessParts>,
    /// The bound `GET /metrics` endpoint (`[server] metrics_listen`).
    metrics: Option<SocketAddr>,
}

/// The witness service's bound pieces, started by [`Server::run`].
struct WitnessParts {
    state: Arc<crate::witness::WitnessState>,
    listeners: crate::witness::tcp::RpcListeners,
    peers: crate::witness::peers::PeerSockets,
    /// With `[public_addresses]`.
    public: Option<crate::witness::public_ip::Manager>,
    /// `[witness] auth_level`'s least level with this server's NTLM names, unless `none`.
    auth: Option<(u8, String, String)>,
}

impl Server {
    /// Bind with the lock service `[lockmgr]` names: the in-process engine
    /// ([`crate::locking::default_lock_service`]) or a remote lockmgrd ([`cluster::ClusterLocks`]).
    pub fn bind(config: Config, extra_listen: &[SocketAddr]) -> Result<Server, ServerError> {
        if config.lockmgr.transport == LockTransport::Embedded {
            return Self::bind_with_locks(config, extra_listen, default_lock_service());
        }
        let (locks, pump) = cluster::ClusterLocks::from_config(&config.lockmgr)?;
        let mut server = Self::bind_with_locks(config, extra_listen, Box::new(locks))?;
        server.pump = Some(pump);
        Ok(server)
    }

    /// Bind with a cluster lock service built by the caller (tests: an in-process lockmgrd);
    /// `pump` delivers what lockmgrd sends while the server runs.
    pub fn bind_with_cluster(
        config: Config,
        extra_listen: &[SocketAddr],
        locks: cluster::ClusterLocks,
        pump: cluster::Pump,
    ) -> Result<Server, ServerError> {
        let mut server = Self::bind_with_locks(config, extra_listen, Box::new(locks))?;
        server.pump = Some(pump);
        Ok(server)
    }

    /// Bind with a given lock service (e.g. a client of a remote lockmgrd).
    pub fn bind_with_locks(
        config: Config,
        extra_listen: &[SocketAddr],
        locks: Box<dyn LockService>,
    ) -> Result<Server, ServerError> {
        let users = match &config.server.users {
            Some(p) => {
                lockmgr_proto::private_file::check_private_file(p).map_err(ServerError::Users)?;
                UserDb::load(p).map_err(|e| ServerError::Users(e.to_string()))?
            }
            None => UserDb::new(),
        };
        let cluster_fs_id = config.cluster_fs_id()?;
        let mut shares = Vec::new();
        for s in &config.share {
            let root = s.path.canonicalize().map_err(|source| ServerError::Share {
                name: s.name.clone(),
                source,
            })?;
            let fs_id = cluster_fs_id
                .or_else(|| crate::fs::statfs_fsid(&root))
                .unwrap_or(0);
            let mut valid_users = Vec::new();
            let mut valid_groups = Vec::new();
            for v in &s.valid_users {
                match v.strip_prefix('@') {
                    Some(g) => {
                        valid_groups.push(crate::identity::lookup_group(g).map_err(|e| {
                            ConfigError::Invalid(format!("share {} valid_users: {e}", s.name))
                        })?)
                    }
                    None => valid_users.push(v.clone()),
                }
            }
            let dir =
                crate::beneath::ShareRoot::open(&root).map_err(|source| ServerError::Share {
                    name: s.name.clone(),
                    source,
                })?;
            let notify_through_lockmgr =
                notify_through_lockmgr(config.server.change_notify, &s.name, &root);
            shares.push(Share {
                name: s.name.clone(),
                dir: Arc::new(dir),
                root,
                read_only: s.read_only,
                encrypt: s.encrypt,
                fs_id,
                valid_users,
                valid_groups,
                guest_ok: s.guest_ok,
                continuous_availability: s.continuous_availability,
                dfs_root: s.dfs_root,
                dfs_links: s.dfs_links()?,
                notify_through_lockmgr,
            });
        }
        let mut addrs: Vec<SocketAddr> = config.server.listen.clone();
        addrs.extend_from_slice(extra_listen);
        if addrs.is_empty() && config.server.rdma_proxy_socket.is_none() {
            return Err(ServerError::NoListen);
        }
        let mut listeners = Vec::new();
        for addr in addrs {
            let l =
                TcpListener::bind(addr).map_err(|source| ServerError::Listen { addr, source })?;
            listeners.push(l);
        }
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let witness = if config.witness.enabled {
            Some(bind_witness(&config)?)
        } else {
            None
        };
        let proxy_listener = match &config.server.rdma_proxy_socket {
            Some(path) => Some(bind_proxy_socket(path)?),
            None => None,
        };
        let status_listener = match &config.server.status_socket {
            Some(path) => Some(bind_status_socket(path)?),
            None => None,
        };
        let node_name = config.server.netbios_name.clone();
        let metrics_listen = config
            .server
            .metrics_listen
            .map(|a| (a, config.server.metrics_allow_remote));
        let shared = Arc::new(Shared::new(config, shares, users, locks, workers)?);
        if let Some(l) = status_listener {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("smbd-status".into())
                .spawn(move || status_loop(l, shared, node_name))?;
        }
        let metrics = match metrics_listen {
            Some((addr, allow_remote)) => {
                let witness_state = witness
                    .as_ref()
                    .and_then(|w| w.public.as_ref().map(|_| w.state.clone()));
                let shared = shared.clone();
                let render = move || {
                    let extra = crate::metrics::Extra {
                        lock_requests: shared.lock_requests.snapshot(),
                        lockmgr_sessions: shared.lock_session_counts(),
                        public_addresses_held: witness_state
                            .as_ref()
                            .map(|w| w.local_claims().count_ones()),
                    };
                    crate::metrics::render(&shared.metrics, &extra)
                };
                Some(
                    clustersmb_metrics::serve(
                        addr,
                        allow_remote,
                        clustersmb_metrics::ServeLimits::default(),
                        Arc::new(render),
                    )
                    .map_err(|e| ServerError::Metrics(e.to_string()))?,
                )
            }
            None => None,
        };
        Ok(Server {
            shared,
            listeners,
            proxy_listener,
            workers,
            pump: None,
            witness,
            metrics,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Where `GET /metrics` is served, when `[server] metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The endpoint mapper's and the witness' addresses, when the witness is enabled.
    pub fn witness_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        match self.witness.as_ref()?.listeners.local_addrs() {
            (Some(epm), Some(w)) => Some((epm, w)),
            _ => None,
        }
    }

    /// A handle that stops the server from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Run the workers until [`Stopper::stop`] is called; returns after all workers exited.
    pub fn run(mut self) -> Result<(), ServerError> {
        // Persistent file ids derive from connection ids (see `Conn::new`); with a cluster lock
        // service they name durable opens cluster wide, so each node starts its ids at a
        // random base to keep two nodes' ids apart (lockmgrd refuses a duplicate durable key,
        // which would only cost that open its durability).
        let first_id = if self.pump.is_some() {
            1 + (u64::from(rand::random::<u16>()) << 16)
        } else {
            1
        };
        let conn_ids = Arc::new(AtomicU64::new(first_id));
        let pump = match self.pump.take() {
            Some(p) => {
                let shared = self.shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name("smbd-lockmgr-pump".into())
                        .spawn(move || p.run(shared))?,
                )
            }
            None => None,
        };
        let witness_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut public_ip = None;
        if let Some(w) = self.witness.take() {
            let policy =
                w.auth.map(
                    |(min_level, netbios_name, domain)| smb_rpc::pipe::AuthPolicy {
                        users: self.shared.users.clone(),
                        netbios_name,
                        domain,
                        min_level,
                    },
                );
            w.listeners
                .spawn(w.state.clone(), witness_stop.clone(), policy)?;
            let shared = self.shared.clone();
            w.peers.spawn(
                w.state,
                witness_stop.clone(),
                Box::new(move |now| shared.lock_lease_live(now)),
            )?;
            if let Some(m) = w.public {
                let shared = self.shared.clone();
                public_ip = Some(m.spawn(
                    witness_stop.clone(),
                    Box::new(move |node| shared.lock_node_session(node)),
                    Box::new(ReleasedAddresses(self.shared.clone())),
                )?);
            }
        }
        // Changes made outside this process reach the watchers too (crate::dirwatch).
        if self.shared.config.server.change_notify == ChangeNotify::Lockmgr {
            tracing::info!("change_notify = \"lockmgr\": no inotify; other nodes' changes come through lockmgrd");
        } else {
            self.shared.start_local_watch();
        }
        let mut handles = Vec::new();
        for idx in 0..self.workers {
            let mut ls = Vec::new();
            for l in &self.listeners {
                ls.push(Listener::Tcp(l.try_clone()?));
            }
            if let Some(l) = &self.proxy_listener {
                ls.push(Listener::RdmaProxy(l.try_clone()?));
            }
            let w = Worker::new(idx, self.shared.clone(), ls, conn_ids.clone())?;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("smbd-worker-{idx}"))
                    .spawn(move || w.run())?,
            );
        }
        let mut result = Ok(());
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(%e, "worker failed");
                    result = Err(e.into());
                }
                Err(_) => {
                    tracing::error!("worker panicked");
                    result = Err(ServerError::WorkerPanicked);
                }
            }
        }
        witness_stop.store(true, Ordering::Relaxed);
        // It removes the public addresses this node holds before it returns.
        if let Some(h) = public_ip {
            if h.join().is_err() {
                tracing::error!("public address manager panicked");
            }
        }
        let (lock_requests, by_kind) = self.shared.lock_requests.summary();
        tracing::info!(
            lock_requests,
            by_kind,
            "lock-service requests (lockmgrd round trips in a cluster)"
        );
        if let Some(p) = pump {
            // Workers only exit on shutdown (or failure): make sure the pump sees it too.
            self.shared.shutdown.store(true, Ordering::Relaxed);
            if p.join().is_err() {
                tracing::error!("lockmgr pump panicked");
            }
        }
        result
    }
}

/// The operator view's unix socket (`[server] status_socket`), 0600.
fn bind_status_socket(
    path: &std::path::Path,
) -> Result<std::os::unix::net::UnixListener, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |e: std::io::Error| ServerError::Status(format!("{}: {e}", path.display()));
    // A socket file left by a previous run would make bind fail; anything else stays.
    if std::fs::symlink_metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        let _ = std::fs::remove_file(path);
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bad)?;
    // Only smbd's user (and root) may see who has what open.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bad)?;
    Ok(listener)
}

/// Binds `[server] rdma_proxy_socket`, the channel smbdirectd connects to. The directory is
/// created 0700 if missing; an existing one must be a directory owned by smbd's user that no
/// one else may enter or write (a socket's own mode is not checked by every kernel on
/// connect, the directory's search permission always is). A socket file left by an earlier
/// run is replaced; one a live process still accepts on is not (two smbds on one socket).
/// The socket is made 0600; peers are further checked by uid on accept (worker.rs).
fn bind_proxy_socket(
    path: &std::path::Path,
) -> Result<std::os::unix::net::UnixListener, ServerError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let bad = |what: String| ServerError::RdmaProxySocket(format!("{}: {what}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => {
            return Err(bad(
                "needs an absolute path in a directory of its own".into()
            ))
        }
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
            // The mode given to mkdir is masked by the umask: set it exactly.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| bad(format!("{}: {e}", dir.display())))?;
        }
        Err(e) => return Err(bad(format!("{}: {e}", dir.display()))),
        Ok(m) => {
            if !m.is_dir() {
                return Err(bad(format!("{} is not a directory", dir.display())));
            }
            if m.uid() != crate::sys::geteuid() || m.mode() & 0o077 != 0 {
                return Err(bad(format!(
                    "{} must be owned by smbd's user (uid {}) with mode 0700 (it is uid {}, \
                     mode {:o})",
                    dir.display(),
                    crate::sys::geteuid(),
                    m.uid(),
                    m.mode() & 0o7777
                )));
            }
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(bad("another process is accepting on it".into())),
                Err(_) => {
                    tracing::info!(path = %path.display(), "replacing a stale rdma_proxy_socket");
                    std::fs::remove_file(path).map_err(|e| bad(e.to_string()))?;
                }
            }
        }
        Ok(_) => return Err(bad("exists and is not a socket".into())),
        Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| bad(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| bad(e.to_string()))?;
    Ok(listener)
}

/// Answers `status` on the operator socket, one short-lived connection at a time (each
/// bounded: a 256-byte command read within 5 s).
fn status_loop(listener: std::os::unix::net::UnixListener, shared: Arc<Shared>, node: String) {
    use std::io::{BufRead, Read, Write};
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(5)));
        let mut line = String::new();
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        if std::io::BufReader::new(reader)
            .take(256)
            .read_line(&mut line)
            .is_err()
        {
            continue;
        }
        let answer = match line.trim() {
            "status" => {
                let (conns, missing) = shared.connection_status(std::time::Duration::from_secs(2));
                crate::smbstatus::render(&node, &conns, missing)
            }
            other => format!("error: unknown command {other:?} (status)\n"),
        };
        let _ = (&stream).write_all(answer.as_bytes());
    }
}

/// Bind the witness' listeners and read its key (errors stop smbd at start).
fn bind_witness(config: &Config) -> Result<WitnessParts, ServerError> {
    let wc = &config.witness;
    let public: Vec<std::net::IpAddr> = config
        .public_addresses
        .addresses
        .iter()
        .map(|a| a.address.addr)
        .collect();
    let state = crate::witness::WitnessState::with_public_addresses(
        wc.clone(),
        &config.server.netbios_name,
        public,
    );
    let listeners = crate::witness::tcp::RpcListeners::bind(&state).map_err(|e| {
        ServerError::Witness(format!("listen on {} / {}: {e}", wc.epm_listen, wc.listen))
    })?;
    let key = match wc
        .key_file
        .as_ref()
        .or(config.lockmgr.cluster_key_file.as_ref())
    {
        Some(p) if wc.nodes.len() > 1 => Some(
            lockmgr_proto::auth::read_key_file(p)
                .map_err(|e| ServerError::Witness(format!("key {}: {e}", p.display())))?,
        ),
        _ => None,
    };
    let peers = crate::witness::peers::PeerSockets::bind(&state, key)
        .map_err(|e| ServerError::Witness(format!("peer or control socket: {e}")))?;
    let public = (!config.public_addresses.addresses.is_empty()).then(|| {
        crate::witness::public_ip::Manager::new(state.clone(), config.public_addresses.clone())
    });
    let auth = wc.auth_level.min_level().map(|level| {
        (
            level,
            config.server.netbios_name.clone(),
            config.server.domain.clone(),
        )
    });
    Ok(WitnessParts {
        state,
        listeners,
        peers,
        public,
        auth,
    })
}

#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    pub fn stop(&self) {
        self.0.shutdown.store(true, Ordering::Relaxed);
        for m in &self.0.mailboxes {
            m.wake();
        }
    }
}

/// The release of a public address ends this node's SMB connections to it
/// (`witness::public_ip`, [`Shared::end_connections_to`]).
struct ReleasedAddresses(Arc<Shared>);

impl crate::witness::public_ip::SmbConnections for ReleasedAddresses {
    fn end_to(&self, ip: std::net::IpAddr) -> usize {
        self.0.end_connections_to(ip)
    }

    fn released(&self, ip: std::net::IpAddr) {
        self.0.address_released(ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn err(path: &std::path::Path) -> String {
        match bind_proxy_socket(path) {
            Ok(_) => panic!("{} bound", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn proxy_socket_refuses_a_live_socket_a_file_and_an_open_directory() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("run").join("sd.sock");
        let live = bind_proxy_socket(&path).unwrap();
        assert!(err(&path).contains("another process is accepting"));
        drop(live);
        // Stale now: replaced.
        let _again = bind_proxy_socket(&path).unwrap();

        let file = t.path().join("run").join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(err(&file).contains("not a socket"));

        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(err(&open.join("sd.sock")).contains("mode 0700"));
        assert!(err(&file.join("sd.sock")).contains("not a directory"));
    }
}
