//! Against a real, single-member etcd started on loopback for the test.

use std::process::Command;
use std::time::Duration;

use lockmgr_coord::{Configuration, Coordinator, LocalEtcd, LocalEtcdError, Member, Swap};

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

/// A private etcd for one test (lockmgr_coord::LocalEtcd), or None when etcd is missing.
fn start_etcd() -> Option<LocalEtcd> {
    match LocalEtcd::start() {
        Ok(e) => Some(e),
        Err(LocalEtcdError::NotInstalled) => {
            missing("etcd not installed (apt-get install etcd-server)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn connect(etcd: &LocalEtcd, cluster: &str) -> Coordinator {
    etcd.coordinator(cluster).expect("etcd answers")
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
    let Some(etcd) = start_etcd() else { return };
    let mut a = connect(&etcd, "c1");
    let mut b = connect(&etcd, "c1");
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
    let mut other = connect(&etcd, "c2");
    assert_eq!(other.read().expect("read"), None);
}

/// A change whose answer was lost (etcd stopped between commit and reply) is retried by the
/// replica with the same next configuration: the retry must find its own record and report
/// it installed, not lost to another replica (which would fence a healthy primary).
#[test]
fn retrying_a_change_that_committed_finds_it_installed() {
    let Some(etcd) = start_etcd() else { return };
    let mut a = connect(&etcd, "c1");
    let first = a.bootstrap(&config(1, "lm-a", None)).expect("bootstrap");
    let next = config(2, "lm-a", Some("lm-b"));
    let Swap::Installed(stored) = a.advance_from(&first.config, &next).expect("advance") else {
        panic!("uncontended change lost");
    };
    // The retry, both ways the loop makes it.
    assert_eq!(
        a.advance_from(&first.config, &next).expect("retry"),
        Swap::Installed(stored.clone())
    );
    assert_eq!(
        a.advance(1, &next).expect("retry"),
        Swap::Installed(stored.clone())
    );
    // A different change from the same epoch did not happen: lost, with what is stored.
    assert_eq!(
        a.advance(1, &config(2, "lm-a", None)).expect("other"),
        Swap::Lost(Some(stored))
    );
}

#[test]
fn a_garbled_record_is_an_error_not_a_panic() {
    let Some(etcd) = start_etcd() else { return };
    let mut c = connect(&etcd, "garbled");
    let key = c.key().to_string();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", etcd.endpoint(), "put", &key, "epoch x"])
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

/// A stopped LocalEtcd refuses every call; restarted, it answers on the same endpoint with
/// what was stored before, and a coordinator made before the outage works again.
#[test]
fn a_stopped_etcd_restarts_with_its_data() {
    let Some(mut etcd) = start_etcd() else { return };
    let mut before = connect(&etcd, "c-restart");
    let stored = before
        .bootstrap(&config(1, "lm-a", Some("lm-b")))
        .expect("bootstrap");
    etcd.stop();
    assert!(before.read().is_err(), "a stopped etcd answered");
    etcd.restart().expect("etcd restarts");
    let after = connect(&etcd, "c-restart").read().expect("read");
    assert_eq!(after, Some(stored.clone()));
    // The old client reconnects by itself (the daemons' connections do the same).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match before.read() {
            Ok(seen) => {
                assert_eq!(seen, Some(stored));
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the old coordinator never reconnected: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
