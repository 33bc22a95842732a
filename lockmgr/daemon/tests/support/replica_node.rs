//! A node's side of the replication tests, whatever the medium (`replication.rs` over UDP,
//! `replication_eth.rs` over AF_PACKET and AF_XDP): the cluster key, connecting and resuming
//! with retries while replicas start or fail over, and the open and lock every scenario makes.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lockmgr_client::{ClientError, ClientOptions, LockClient, ResumePoint};
use lockmgr_engine::{access, share, FileId, LockRange, OpenId, OpenRequest, Reply, Request};
use lockmgr_proto::{ClusterKey, RejectReason};
use lockmgr_transport::ClientTransport;

pub const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn options(name: &str) -> ClientOptions {
    ClientOptions {
        node_name: name.into(),
        key: ClusterKey::new(KEY).expect("key"),
        handshake_timeout: Duration::from_secs(2),
    }
}

/// Node `name`'s session on the replica at `to`, over transports `transport` opens, retried
/// until [`TIMEOUT`] (the replica may still be starting).
pub fn connect_with<T: ClientTransport>(
    name: &str,
    to: impl Display,
    mut transport: impl FnMut() -> Result<T, ClientError>,
) -> LockClient<T> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match transport().and_then(|t| LockClient::connect(t, &options(name))) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect {name} to {to}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{name} cannot connect to {to}: {e}"),
        }
    }
}

/// Node `name`'s session resumed from `point` on the replica at `to`, retried while that
/// replica is not primary yet (or not reachable) until [`TIMEOUT`].
pub fn resume_with<T: ClientTransport>(
    name: &str,
    to: impl Display,
    point: ResumePoint,
    mut transport: impl FnMut() -> Result<T, ClientError>,
) -> LockClient<T> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match transport().and_then(|t| LockClient::resume(t, &options(name), point)) {
            Ok(c) => return c,
            Err(ClientError::Rejected(RejectReason::NotPrimary))
            | Err(ClientError::Transport(_))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{name} cannot resume on {to}: {e}"),
        }
    }
}

pub fn open<T: ClientTransport>(c: &mut LockClient<T>, file: FileId) -> OpenId {
    match c.call(
        Request::Open(OpenRequest {
            file,
            access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
            share: share::READ | share::WRITE,
            ..OpenRequest::default()
        }),
        TIMEOUT,
    ) {
        Ok(Reply::Opened { open, .. }) => open,
        other => panic!("open failed: {other:?}"),
    }
}

pub fn lock<T: ClientTransport>(c: &mut LockClient<T>, open: OpenId, range: LockRange) -> Reply {
    c.call(
        Request::Lock {
            open,
            ranges: vec![range],
            fail_immediately: true,
        },
        TIMEOUT,
    )
    .expect("lock call")
}

pub fn unlock<T: ClientTransport>(c: &mut LockClient<T>, open: OpenId, range: LockRange) -> Reply {
    c.call(
        Request::Unlock {
            open,
            ranges: vec![range],
        },
        TIMEOUT,
    )
    .expect("unlock call")
}

/// The cluster key in a 0600 file under `dir`, as lockmgrd wants it.
pub fn key_file(dir: &tempfile::TempDir) -> PathBuf {
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, KEY).expect("key");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    key_file
}
