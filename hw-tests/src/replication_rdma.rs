//! A replicated lock manager over RDMA, in the soft-RoCE guest: a primary and a standby
//! lockmgrd on the one rxe device, epochs in etcd. The standby reaches its primary as a node
//! does (the TCP side channel, the cluster key proven there, then an RC queue pair), receives
//! the snapshot and the log over it, and is recorded in etcd. Two nodes (`LockClient`s over
//! RDMA in this process) lock; the primary is SIGKILLed; the standby must promote, and the
//! nodes must resume their sessions on it with their locks: node2 still cannot take node1's
//! range until node1 releases it. The times from the kill to the promotion (the standby's
//! log) and to the first lock granted are printed (measured, not judged: TCG emulation).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::guest::{random_key_file, spawn_logged, start_etcd, wait_log, STEP};

use lockmgr_client::{ClientError, ClientOptions, LockClient};
use lockmgr_engine::{FileId, LockRange, OpenId, Reply, Request, Status};
use lockmgr_proto::{ClusterKey, RejectReason};
use lockmgr_rdma::{DeviceConfig, RdmaClient, RdmaConfig};
use lockmgr_transport::SpinConfig;

/// etcd's ports in the guest (the ping_pong failover test's etcd uses 23790-23791).
const ETCD_CLIENT: u16 = 23794;
/// The replicas' TCP side channels.
const PORT_A: u16 = 7611;
const PORT_B: u16 = 7612;

/// The programs the test starts.
pub struct Tools {
    pub lockmgrd: PathBuf,
    pub etcd: PathBuf,
}

type Client = LockClient<RdmaClient>;

fn rdma_config(device: &DeviceConfig, key: &[u8]) -> RdmaConfig {
    RdmaConfig {
        device: device.clone(),
        spin: SpinConfig::never(),
        handshake_timeout: STEP,
        fabric_key: ClusterKey::new(key)
            .ok()
            .map(|k| lockmgr_transport::FabricKey::new(k.fabric_secret())),
        ..RdmaConfig::default()
    }
}

fn options(name: &str, key: &[u8]) -> Result<ClientOptions, String> {
    Ok(ClientOptions {
        node_name: name.into(),
        key: ClusterKey::new(key).map_err(|e| format!("{e}"))?,
        handshake_timeout: STEP,
    })
}

fn connect(
    server: SocketAddr,
    device: &DeviceConfig,
    key: &[u8],
    name: &str,
) -> Result<Client, String> {
    let t = RdmaClient::connect(server, &rdma_config(device, key))
        .map_err(|e| format!("{name}: RDMA connect to {server}: {e}"))?;
    LockClient::connect(t, &options(name, key)?).map_err(|e| format!("{name}: handshake: {e}"))
}

/// Resumes `old`'s session on the replica at `server`, retrying while it is not primary yet.
fn resume(
    server: SocketAddr,
    device: &DeviceConfig,
    key: &[u8],
    name: &str,
    old: Client,
) -> Result<Client, String> {
    let point = old.resume_point();
    drop(old);
    let deadline = Instant::now() + STEP;
    loop {
        let r = RdmaClient::connect(server, &rdma_config(device, key))
            .map_err(|e| format!("RDMA connect to {server}: {e}"))
            .and_then(|t| {
                LockClient::resume(t, &options(name, key)?, point).map_err(|e| match e {
                    ClientError::Rejected(RejectReason::NotPrimary) => "not primary yet".into(),
                    e => format!("resume: {e}"),
                })
            });
        match r {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(node = name, error = %e, "resume: retrying");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("{name} cannot resume on {server}: {e}")),
        }
    }
}

fn call(c: &mut Client, req: Request) -> Result<Reply, String> {
    crate::lock_calls::call(c, req, STEP)
}

fn open(c: &mut Client, file: FileId) -> Result<OpenId, String> {
    crate::lock_calls::open_read_write(c, file, STEP)
}

fn lock(c: &mut Client, open: OpenId, range: LockRange) -> Result<Reply, String> {
    call(
        c,
        Request::Lock {
            open,
            ranges: vec![range],
            fail_immediately: true,
        },
    )
}

fn expect(what: &str, got: Reply, want: Reply) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got:?}, expected {want:?}"))
    }
}

fn device_args(d: &DeviceConfig) -> Vec<String> {
    let mut v = vec!["--rdma-port".to_string(), d.port.to_string()];
    if let Some(name) = &d.device {
        v.extend(["--rdma-device".to_string(), name.clone()]);
    }
    if let Some(i) = d.gid_index {
        v.extend(["--gid-index".to_string(), i.to_string()]);
    }
    v
}

/// See the module documentation.
pub fn test_replica_pair_over_rdma(
    tools: &Tools,
    ip: IpAddr,
    device: &DeviceConfig,
) -> Result<(), String> {
    let dir = std::env::temp_dir().join("replication-rdma-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key_file = dir.join("cluster.key");
    let key = random_key_file(&key_file)?;

    let (etcd, etcd_url) = start_etcd(&tools.etcd, &dir, ETCD_CLIENT)?;

    let addr_a = SocketAddr::new(ip, PORT_A);
    let addr_b = SocketAddr::new(ip, PORT_B);
    let replica = |name: &str, addr: SocketAddr, log: &Path| {
        spawn_logged(
            Command::new(&tools.lockmgrd)
                .args(["--transport", "rdma", "--listen", &addr.to_string()])
                .args(device_args(device))
                .arg("--cluster-key-file")
                .arg(&key_file)
                .args(["--spin-us", "0"])
                .args(["--replica-name", name, "--etcd", &etcd_url])
                .args(["--cluster-name", "rdma-guest", "--failover-ms", "300"])
                // A lease sized for the emulated guest, whose etcd takes most of a second to
                // record a promotion (see `ca_failover`).
                .args(["--liveness-ms", "5000"])
                .env("NO_COLOR", "1"),
            log,
        )
    };
    let log_a = dir.join("lm-a.log");
    let log_b = dir.join("lm-b.log");
    let mut primary = replica("lm-a", addr_a, &log_a)?;
    wait_log(
        &mut primary,
        &log_a,
        "first replica: primary",
        "the primary lockmgrd",
    )?;
    let mut standby = replica("lm-b", addr_b, &log_b)?;
    // The standby attached over RDMA, installed the snapshot and caught up: only then does
    // the primary record it.
    wait_log(
        &mut standby,
        &log_b,
        "recorded as standby",
        "the standby lockmgrd",
    )?;

    let file = FileId(0x4d4a);
    let range = LockRange {
        offset: 0,
        length: 100,
        exclusive: true,
    };
    let later = LockRange {
        offset: 1000,
        length: 100,
        exclusive: true,
    };
    let mut n1 = connect(addr_a, device, &key, "node1")?;
    let mut n2 = connect(addr_a, device, &key, "node2")?;
    let o1 = open(&mut n1, file)?;
    let o2 = open(&mut n2, file)?;
    expect(
        "node1 locks",
        lock(&mut n1, o1, range)?,
        Reply::Done(Status::Success),
    )?;
    expect(
        "node2 meets node1's lock",
        lock(&mut n2, o2, range)?,
        Reply::Done(Status::LockNotGranted),
    )?;

    let killed = Instant::now();
    let _ = primary.0.kill();
    let _ = primary.0.wait();
    let promoted = wait_log(
        &mut standby,
        &log_b,
        "promoted: this replica is primary",
        "the standby lockmgrd",
    )?
    .saturating_duration_since(killed);
    let mut n1 = resume(addr_b, device, &key, "node1", n1)?;
    expect(
        "node1's first lock after the failover",
        lock(&mut n1, o1, later)?,
        Reply::Done(Status::Success),
    )?;
    let first_grant = killed.elapsed();
    let mut n2 = resume(addr_b, device, &key, "node2", n2)?;
    let status = n1.status(STEP).map_err(|e| format!("status: {e}"))?;
    if !status.contains("replica lm-b role primary") {
        return Err(format!("lm-b is not primary after the failover:\n{status}"));
    }
    println!(
        "replication over rdma: SIGKILL of the primary to the standby's promotion (its log, \
         polled every 5 ms) {promoted:?}, to the first lock granted {first_grant:?} (TCG)"
    );
    // node1's locks survived the failover.
    for r in [range, later] {
        expect(
            "node2 after the failover",
            lock(&mut n2, o2, r)?,
            Reply::Done(Status::LockNotGranted),
        )?;
    }
    expect(
        "node1 unlocks",
        call(
            &mut n1,
            Request::Unlock {
                open: o1,
                ranges: vec![range],
            },
        )?,
        Reply::Done(Status::Success),
    )?;
    expect(
        "node2 after node1's unlock",
        lock(&mut n2, o2, range)?,
        Reply::Done(Status::Success),
    )?;
    drop((n1, n2, standby, etcd));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
