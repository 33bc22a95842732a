//! Replays the checked-in fuzz corpus (`fuzz/corpus/smbd_config/`) through the same check as
//! the `smbd_config` fuzz target, so `cargo test` on stable guards every input fuzzing found
//! interesting.

use std::path::Path;

#[path = "../fuzz/check_config.rs"]
mod check_config;

#[test]
fn config_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("fuzz/corpus/smbd_config");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        files.push((name, std::fs::read(&p).unwrap()));
    }
    // The shipped example is a seed too, read from where it lives so it cannot go stale.
    files.push((
        "seed-example".into(),
        std::fs::read(root.join("../smbd.example.toml")).unwrap(),
    ));
    let mut accepted = 0;
    for (name, data) in &files {
        let ok = check_config::check_config(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("seed-") {
            assert!(ok, "seed {name} must be a valid config");
            accepted += 1;
        }
        for cut in 0..data.len() {
            check_config::check_config(&data[..cut])
                .unwrap_or_else(|e| panic!("{name}[..{cut}]: {e}"));
        }
    }
    assert!(accepted >= 4, "seed corpus missing: {accepted} seeds");
}

#[path = "../fuzz/conn_harness.rs"]
mod conn_harness;

/// Replays `fuzz/corpus/smbd_conn/` through the `smbd_conn` harness (message sequences fed to
/// one connection), checks the seeds are what `conn_harness::seeds()` generates (set
/// SMBD_WRITE_SEEDS=1 to rewrite them) and that they reach the file operations.
#[test]
fn conn_corpus() {
    use conn_harness::cmd;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("fuzz/corpus/smbd_conn");
    let seeds = conn_harness::seeds();
    if std::env::var_os("SMBD_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in &seeds {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }
    for (name, data) in &seeds {
        let stored = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e} (regenerate with SMBD_WRITE_SEEDS=1)"));
        assert!(
            stored == *data,
            "{name} differs from conn_harness::seeds() (regenerate with SMBD_WRITE_SEEDS=1)"
        );
    }
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let answers = conn_harness::run(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        n += 1;
        let ok = |c: u16| answers.iter().any(|&(cmd, _, st)| cmd == c && st == 0);
        if name.ends_with("-session") || name == "seed-smb1-upgrade" || name == "seed-compound" {
            for c in [
                cmd::SESSION_SETUP,
                cmd::TREE_CONNECT,
                cmd::CREATE,
                cmd::WRITE,
                cmd::READ,
                cmd::CLOSE,
            ] {
                assert!(ok(c), "{name}: no successful command {c:#x}: {answers:x?}");
            }
        }
        if name.ends_with("-session") {
            for c in [
                cmd::QUERY_INFO,
                cmd::QUERY_DIRECTORY,
                cmd::LOCK,
                cmd::FLUSH,
                cmd::LOGOFF,
            ] {
                assert!(ok(c), "{name}: no successful command {c:#x}: {answers:x?}");
            }
        }
        if name == "seed-replay" {
            // The connection drops at the replayed WRITE: the READ after it is not answered.
            assert!(
                ok(cmd::WRITE) && !answers.iter().any(|a| a.0 == cmd::READ),
                "{answers:x?}"
            );
        }
        if name == "seed-ipc-pipe" {
            for c in [cmd::CREATE, cmd::IOCTL, cmd::WRITE, cmd::READ, cmd::CLOSE] {
                assert!(ok(c), "{name}: no successful command {c:#x}: {answers:x?}");
            }
        }
        if name == "seed-dfs" {
            let referrals = answers
                .iter()
                .filter(|a| a.0 == cmd::IOCTL && a.2 == 0)
                .count();
            assert_eq!(referrals, 2, "{answers:x?}");
            assert!(
                answers
                    .iter()
                    .any(|a| a.0 == cmd::IOCTL && a.2 == 0x8000_0005),
                "no BUFFER_OVERFLOW: {answers:x?}"
            );
            assert!(
                answers
                    .iter()
                    .any(|a| a.0 == cmd::CREATE && a.2 == 0xC000_0257),
                "no PATH_NOT_COVERED: {answers:x?}"
            );
        }
        if name == "seed-out-of-window" {
            assert!(!answers.iter().any(|a| a.0 == cmd::ECHO), "{answers:x?}");
        }
        // Every prefix of the sequence and every truncation point is an input too.
        let msgs = conn_harness::split(&data);
        for k in 0..msgs.len() {
            let cut: Vec<Vec<u8>> = msgs[..k].iter().map(|m| m.to_vec()).collect();
            conn_harness::run(&conn_harness::join(&cut))
                .unwrap_or_else(|e| panic!("{name}[..{k} messages]: {e}"));
        }
    }
    assert!(n >= seeds.len(), "corpus has {n} inputs");
}

/// Replays `fuzz/corpus/inotify_events/` through the `inotify_events` target's check: every
/// input and every prefix of it parses or is refused without a panic; the seeds parse.
#[test]
fn inotify_events_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/inotify_events");
    let mut seeds = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        for cut in 0..=data.len() {
            if let Ok(events) = smbd::dirwatch::parse_events(&data[..cut]) {
                let bytes: usize = events.iter().map(|e| 16 + e.name.len()).sum();
                assert!(bytes <= cut, "{name}[..{cut}]");
            }
        }
        if name.starts_with("seed-") && name != "seed-cut" {
            assert!(smbd::dirwatch::parse_events(&data).is_ok(), "{name}");
            seeds += 1;
        }
    }
    assert!(seeds >= 5, "seed corpus missing: {seeds} seeds");
}

#[path = "../fuzz/check_peers.rs"]
mod check_peers;

/// Replays `fuzz/corpus/witness_peers/` (message bodies the check signs) through the
/// `witness_peers` target's check, every prefix too; the seeds parse.
#[test]
fn witness_peers_corpus() {
    replay_with_prefixes("witness_peers", check_peers::check_peers, 4);
}

#[path = "../fuzz/check_public_ip.rs"]
mod check_public_ip;

/// Replays `fuzz/corpus/public_ip/` (/proc/net/tcp and tcp6 text, addresses for the IPv6
/// tickle and Neighbor Advertisement) through the `public_ip` target's check, every prefix
/// too; the seeds give connections.
#[test]
fn public_ip_corpus() {
    replay_with_prefixes("public_ip", check_public_ip::check_public_ip, 2);
}

#[path = "../fuzz/check_dos_xattr.rs"]
mod check_dos_xattr;

/// Replays `fuzz/corpus/dos_xattr/` through the `dos_xattr` target's check, every prefix too;
/// the seeds (a version-1 and version-2 value) decode.
#[test]
fn dos_xattr_corpus() {
    replay_with_prefixes("dos_xattr", check_dos_xattr::check_dos_xattr, 2);
}

/// Runs every input of `fuzz/corpus/<target>/`, and every proper prefix of it, through the
/// target's `check` (true: the input was accepted); inputs named `seed-*` must be accepted,
/// and there must be at least `min_seeds` of them.
fn replay_with_prefixes(target: &str, check: fn(&[u8]) -> bool, min_seeds: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        for cut in 0..data.len() {
            check(&data[..cut]);
        }
        let accepted = check(&data);
        if name.starts_with("seed-") {
            assert!(accepted, "{target}: {name}");
            seeds += 1;
        }
    }
    assert!(
        seeds >= min_seeds,
        "{target}: seed corpus missing: {seeds} seeds"
    );
}
