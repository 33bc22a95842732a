//! Against a real, single-member etcd started on loopback for the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockmgr_coord::{Configuration, Coordinator, Member, Swap};

fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} (CI=true: missing capabilities fail instead of skipping)");
    }
    eprintln!("SKIPPED: {what}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An etcd process of this test; killed (by PID) and its data removed on drop.
struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    endpoint: String,
}

impl Etcd {
    fn start() -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            missing("etcd not installed (apt-get install etcd-server)");
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("coord-etcd-{}-{}", std::process::id(), free_port()));
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("test=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        Some(Etcd {
            child,
            dir,
            endpoint,
        })
    }

    fn connect(&self, cluster: &str) -> Coordinator {
        let start = Instant::now();
        loop {
            match Coordinator::connect(
                std::slice::from_ref(&self.endpoint),
                cluster,
                Duration::from_secs(2),
            ) {
                Ok(mut c) => {
                    if c.read().is_ok() {
                        return c;
                    }
                }
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    panic!("etcd at {} never answered: {e}", self.endpoint)
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(epoch: u64, primary: &str, standby: Option<&str>) -> Configuration {
    Configuration {
        epoch,
        primary: Member::new(primary, format!("udp:127.0.0.1:{}", 7000 + epoch), 1),
        standbys: standby
            .map(|s| vec![Member::new(s, "udp:127.0.0.1:7999", 2)])
            .unwrap_or_default(),
    }
}

#[test]
fn bootstrap_swap_and_watch() {
    let Some(etcd) = Etcd::start() else { return };
    let mut a = etcd.connect("c1");
    let mut b = etcd.connect("c1");
    assert_eq!(a.read().expect("read"), None);

    // The first configuration is installed once; a second bootstrap finds it.
    let first = a
        .bootstrap(&config(1, "lm-a", Some("lm-b")))
        .expect("bootstrap");
    assert_eq!(first.config, config(1, "lm-a", Some("lm-b")));
    let again = b
        .bootstrap(&config(1, "lm-b", None))
        .expect("bootstrap again");
    assert_eq!(again, first);

    // Primary and standby race to replace epoch 1: exactly one wins, the loser sees the
    // winner's configuration.
    let alone = config(2, "lm-a", None);
    let promoted = config(2, "lm-b", None);
    let won_a = a.swap(&first, &alone).expect("swap a");
    let won_b = b.swap(&first, &promoted).expect("swap b");
    let installed = match (&won_a, &won_b) {
        (Swap::Installed(s), Swap::Lost(Some(seen))) => {
            assert_eq!(s.config, seen.config);
            s.clone()
        }
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert_eq!(installed.config, alone);
    assert_eq!(
        b.read().expect("read").map(|s| s.config),
        Some(alone.clone())
    );

    // A replica that missed the change cannot undo it: `advance` compares its own epoch.
    assert!(matches!(
        b.advance(1, &config(2, "lm-b", None)).expect("advance"),
        Swap::Lost(Some(ref s)) if s.config == alone
    ));

    // An epoch that is not the next one is refused before etcd is asked.
    assert!(a.swap(&installed, &config(4, "lm-a", None)).is_err());

    // A watcher sees the next change; with none it times out empty.
    assert_eq!(
        b.wait_change(installed.mod_revision, Duration::from_millis(300))
            .expect("watch"),
        None
    );
    let next = config(3, "lm-a", Some("lm-c"));
    let Swap::Installed(stored) = a.swap(&installed, &next).expect("swap") else {
        panic!("uncontended swap lost");
    };
    let seen = b
        .wait_change(installed.mod_revision, Duration::from_secs(5))
        .expect("watch")
        .expect("a change");
    assert_eq!(seen, stored);

    // Another cluster's key is independent.
    let mut other = etcd.connect("c2");
    assert_eq!(other.read().expect("read"), None);
}

#[test]
fn a_garbled_record_is_an_error_not_a_panic() {
    let Some(etcd) = Etcd::start() else { return };
    let mut c = etcd.connect("garbled");
    let key = c.key().to_string();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint, "put", &key, "epoch x"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        _ => {
            missing("etcdctl not installed (apt-get install etcd-client)");
            return;
        }
    }
    assert!(c.read().is_err());
}

#[test]
fn an_unreachable_etcd_fails_within_the_deadline() {
    let port = free_port();
    let r = Coordinator::connect(
        &[format!("http://127.0.0.1:{port}")],
        "nobody",
        Duration::from_millis(500),
    )
    .and_then(|mut c| c.read());
    assert!(r.is_err());
}
