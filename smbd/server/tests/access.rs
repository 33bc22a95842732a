//! Secure by default (issue: identity and access): who gets in, and with whose credentials
//! file operations run. Real clients (smbclient) against the real smbd binary.
//!
//! Each test fails on a server that lets anonymous users in, ignores `valid_users`, or runs
//! file operations as root.

mod common;
use common::*;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn smbclient(srv: &TestServer, cwd: &Path, auth: &[&str], cmds: &str) -> (bool, String) {
    srv.smbclient_with(cwd, auth, cmds)
}

fn skip_without_smbclient() -> bool {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return true;
    }
    false
}

fn root_file(srv: &TestServer, name: &str, body: &[u8]) {
    let p = srv.share.join(name);
    std::fs::write(&p, body).unwrap();
    std::os::unix::fs::chown(&p, Some(TEST_UID), Some(TEST_GID)).unwrap();
}

#[test]
fn anonymous_gets_nothing_on_a_default_share() {
    if skip_without_smbclient() {
        return;
    }
    let srv = TestServer::start(Options::default());
    root_file(&srv, "README.txt", b"hello");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("x"), b"intruder").unwrap();
    // smbclient -N (null session) and an unknown user (no guest mapping): nothing works.
    for auth in [
        &["-N"][..],
        &["-U", "guest%"][..],
        &["-U", "nobody%nothing"][..],
    ] {
        for cmds in ["ls", "put x", "del README.txt", "mkdir d"] {
            let (ok, out) = smbclient(&srv, work.path(), auth, cmds);
            assert!(!ok, "{auth:?} `{cmds}` was let in: {out}");
        }
    }
    assert_eq!(
        std::fs::read(srv.share.join("README.txt")).unwrap(),
        b"hello"
    );
    assert!(!srv.share.join("x").exists());
    assert!(!srv.share.join("d").exists());
}

#[test]
fn anonymous_sessions_reach_only_guest_ok_shares_and_run_as_the_guest_account() {
    if skip_without_smbclient() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("x"), b"intruder").unwrap();
    // Null sessions allowed, the share not guest_ok: refused at tree connect.
    let srv = TestServer::start(Options {
        server_extra: "allow_anonymous = true".into(),
        ..Default::default()
    });
    let (ok, out) = smbclient(&srv, work.path(), &["-N"], "ls");
    assert!(!ok && out.contains("ACCESS_DENIED"), "{out}");
    drop(srv);
    // A guest_ok share: anonymous may list, but writes run as `nobody`, who cannot write
    // into the users' share directory (mode 0775, owned by the test user).
    let srv = TestServer::start(Options {
        server_extra: "allow_anonymous = true".into(),
        share_extra: "guest_ok = true".into(),
        ..Default::default()
    });
    root_file(&srv, "README.txt", b"hello");
    let (ok, out) = smbclient(&srv, work.path(), &["-N"], "ls");
    assert!(ok && out.contains("README.txt"), "{out}");
    let (ok, out) = smbclient(&srv, work.path(), &["-N"], "put x");
    assert!(!ok && out.contains("ACCESS_DENIED"), "{out}");
    assert!(!srv.share.join("x").exists());
}

/// The same with the Python smbprotocol client (smbd/tests/anonymous_client.py): a raw
/// anonymous NTLM exchange and a "guest" logon are refused on a default server; with
/// `allow_anonymous` the null session gets ACCESS_DENIED at a share without `guest_ok`, and on
/// a `guest_ok` share it may list but not create for writing or delete. README.txt stays.
#[test]
fn anonymous_python_client_gets_nothing() {
    let Some(py) = python() else {
        missing("no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh)");
        return;
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/anonymous_client.py");
    let run = |srv: &TestServer, mode: &str| {
        let out = Command::new(&py)
            .arg(&script)
            .args(["127.0.0.1", &srv.port.to_string(), "data", mode])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains(&format!("PASS {mode}")),
            "{text}\n--- smbd log ---\n{}",
            srv.log()
        );
        assert_eq!(
            std::fs::read(srv.share.join("README.txt")).unwrap(),
            b"hello"
        );
        assert!(!srv.share.join("x").exists());
    };
    let srv = TestServer::start(Options::default());
    root_file(&srv, "README.txt", b"hello");
    run(&srv, "default");
    drop(srv);
    let srv = TestServer::start(Options {
        server_extra: "allow_anonymous = true".into(),
        ..Default::default()
    });
    root_file(&srv, "README.txt", b"hello");
    run(&srv, "not_guest");
    drop(srv);
    let srv = TestServer::start(Options {
        server_extra: "allow_anonymous = true".into(),
        share_extra: "guest_ok = true".into(),
        ..Default::default()
    });
    root_file(&srv, "README.txt", b"hello");
    run(&srv, "guest_ok");
}

#[test]
fn valid_users_restricts_tree_connect() {
    if skip_without_smbclient() {
        return;
    }
    let srv = TestServer::start(Options {
        share_extra: format!("valid_users = [\"{USER}\"]"),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let (ok, out) = smbclient(
        &srv,
        work.path(),
        &["-U", &format!("{USER2}%{PASS2}")],
        "ls",
    );
    assert!(!ok && out.contains("ACCESS_DENIED"), "{USER2}: {out}");
    let (ok, out) = smbclient(&srv, work.path(), &["-U", &format!("{USER}%{PASS}")], "ls");
    assert!(ok, "{USER}: {out}");
}

#[test]
fn valid_users_by_group() {
    if skip_without_smbclient() {
        return;
    }
    let srv = TestServer::start(Options {
        share_extra: format!("valid_users = [\"@{TEST_GID}\"]"),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let (ok, out) = smbclient(&srv, work.path(), &["-U", &format!("{USER}%{PASS}")], "ls");
    assert!(ok, "member of the group: {out}");
    drop(srv);
    let srv = TestServer::start(Options {
        share_extra: "valid_users = [\"@0\"]".into(),
        ..Default::default()
    });
    let (ok, out) = smbclient(&srv, work.path(), &["-U", &format!("{USER}%{PASS}")], "ls");
    assert!(
        !ok && out.contains("ACCESS_DENIED"),
        "not in group 0: {out}"
    );
}

#[test]
fn file_operations_run_as_the_mapped_user() {
    if skip_without_smbclient() {
        return;
    }
    let srv = TestServer::start(Options::default());
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("up"), b"data").unwrap();
    let me = ["-U", &format!("{USER}%{PASS}")].map(str::to_string);
    let me: Vec<&str> = me.iter().map(String::as_str).collect();
    let (ok, out) = smbclient(&srv, work.path(), &me, "put up new; mkdir dir");
    assert!(ok, "{out}\n{}", srv.log());
    for name in ["new", "dir"] {
        let m = std::fs::metadata(srv.share.join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (TEST_UID, TEST_GID), "{name} owner");
    }
    // The kernel checks the user's permissions: a root-only file in the share is out of
    // reach, though root (the daemon) could read and delete it.
    let secret = srv.share.join("root-only");
    std::fs::write(&secret, b"root's").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, out) = smbclient(&srv, work.path(), &me, "get root-only got");
    assert!(!ok && out.contains("ACCESS_DENIED"), "{out}");
    assert!(
        !work.path().join("got").exists()
            || std::fs::read(work.path().join("got")).unwrap().is_empty()
    );
    // A directory the user may not write keeps its entries.
    let locked = srv.share.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("keep"), b"k").unwrap();
    let (ok, out) = smbclient(&srv, work.path(), &me, "del locked\\keep");
    assert!(!ok, "{out}\n{}", srv.log());
    assert!(locked.join("keep").exists());
}

/// Start smbd with `users_text` as its users file at `mode`; the exit status and log when it
/// refuses to start (None when it started).
fn start_with_users_file(users_text: &str, mode: u32) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, users_text).unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(mode)).unwrap();
    let cfg = dir.path().join("smbd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nusers = \"{}\"\n[[share]]\nname = \"data\"\npath = \"{}\"\n",
            users.display(),
            share.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smbd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal exits at once; a server that started keeps running.
    for _ in 0..50 {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return Some(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn users_file_must_be_private_and_hashed() {
    let good = users_file_text(&[(USER, PASS)]);
    let log = start_with_users_file(&good, 0o644).expect("smbd started with a 0644 users file");
    assert!(log.contains("chmod 600"), "{log}");
    let log = start_with_users_file(&format!("{USER}:{PASS}\n"), 0o600)
        .expect("smbd started with a plaintext users file");
    assert!(log.contains("smbd passwd"), "{log}");
    assert!(
        start_with_users_file(&good, 0o600).is_none(),
        "smbd refused a private, hashed users file"
    );
}

#[test]
fn smbd_passwd_writes_hashes_only() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut c = Command::new(env!("CARGO_BIN_EXE_smbd"))
            .arg("passwd")
            .arg("--users")
            .arg(&users)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(
        &["--uid", "1234", "--gid", "99", "--password-stdin", "carol"],
        "correct horse\n",
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(!text.contains("correct horse"), "{text}");
    let hash: String = smb_auth::users::nt_hash_of_password("correct horse")
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert!(text.contains(&format!("carol:1234:99:{hash}")), "{text}");
    assert_eq!(std::fs::metadata(&users).unwrap().mode() & 0o777, 0o600);
    let (ok, err) = run(&["--password-stdin", "dave"], "\n");
    assert!(!ok && err.contains("empty password"), "{err}");
    let (ok, err) = run(&["--delete", "carol"], "");
    assert!(ok, "{err}");
    assert!(!std::fs::read_to_string(&users).unwrap().contains("carol"));
}

/// A CREATE deferred on an oplock break opens the file again when the break completes; a
/// directory swapped for a symlink meanwhile must not lead it out of the share (the kernel
/// resolves beneath the share root: crate::beneath). smbd/tests/symlink_swap.py drives it.
#[test]
fn symlink_swapped_in_during_a_deferred_create_stays_inside_the_share() {
    let Some(py) = python() else {
        missing("no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh)");
        return;
    };
    let srv = TestServer::start(Options::default());
    std::fs::create_dir(srv.share.join("dir")).unwrap();
    root_file(&srv, "dir/f", b"inside");
    std::os::unix::fs::chown(srv.share.join("dir"), Some(TEST_UID), Some(TEST_GID)).unwrap();
    // The outside file is readable by the test user: only the path resolution protects it.
    let outside = srv.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("f"), b"outside secret").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(outside.join("f"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/symlink_swap.py");
    let out = Command::new(py)
        .arg(script)
        .args(["127.0.0.1", &srv.port.to_string(), "data", USER, PASS])
        .arg(&srv.share)
        .arg(&outside)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("swap refused"),
        "{text}\n--- smbd log ---\n{}",
        srv.log()
    );
    assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"outside secret");
}

/// Run a Python smbprotocol snippet with `smbclient` registered for the test user; `ROOT` is
/// the share's UNC path. (success, output)
fn py_snippet(srv: &TestServer, py: &str, body: &str) -> (bool, String) {
    let code = format!(
        "import smbclient\nsmbclient.register_session('127.0.0.1', username='{USER}', password='{PASS}', port={port})\nROOT = r'\\\\127.0.0.1\\data'\nP = {port}\n{body}\n",
        port = srv.port
    );
    let out = Command::new(py).arg("-c").arg(code).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The stream depot belongs to the server: root-owned and closed, not a name a client can
/// take, and a depot a local user planted (a symlink out of the share) is never followed.
#[test]
fn stream_depot_is_the_servers_own() {
    let Some(py) = python() else {
        missing("no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh)");
        return;
    };
    let srv = TestServer::start(Options::default());
    let write_stream = "with smbclient.open_file(ROOT + r'\\f:s', mode='wb', port=P) as f:\n    f.write(b'stream data')";
    let (ok, out) = py_snippet(&srv, &py, write_stream);
    assert!(ok, "{out}\n{}", srv.log());
    let depot = srv.share.join(".smbd-streams");
    let m = std::fs::symlink_metadata(&depot).unwrap();
    assert!(m.is_dir());
    assert_eq!((m.uid(), m.mode() & 0o077), (0, 0), "depot owner/mode");
    // Renaming something onto the depot's name is refused.
    let (ok, out) = py_snippet(
        &srv,
        &py,
        "smbclient.rename(ROOT + r'\\f', ROOT + r'\\.smbd-streams', port=P)",
    );
    assert!(!ok, "rename onto the depot: {out}");
    assert!(srv.share.join("f").exists());
    // A planted depot: a symlink to a directory outside the share.
    std::fs::remove_dir_all(&depot).unwrap();
    let outside = srv.dir.path().join("planted");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, &depot).unwrap();
    let (ok, out) = py_snippet(&srv, &py, write_stream);
    assert!(!ok, "stream written through a planted depot: {out}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

/// QUERY_INFO, SET_INFO (times, attributes) and CLOSE (post-query attributes, delete on
/// close) act on the handle's object: after the open, `dir` is swapped for a symlink to a
/// directory outside the share and `d3` is renamed into `d2`'s place; the handles must keep
/// reaching what they opened. smbd/tests/handle_swap.py drives it; without the fix the
/// server reports and changes the outside directory's time, chmods the outside file and
/// deletes d3's file in place of d2's.
#[test]
fn handles_act_on_their_object_after_a_directory_swap() {
    let Some(py) = python() else {
        missing("no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh)");
        return;
    };
    let srv = TestServer::start(Options::default());
    for d in ["dir", "d2", "d3"] {
        std::fs::create_dir(srv.share.join(d)).unwrap();
        std::os::unix::fs::chown(srv.share.join(d), Some(TEST_UID), Some(TEST_GID)).unwrap();
    }
    root_file(&srv, "dir/f", b"inside");
    root_file(&srv, "d2/g", b"opened with delete on close");
    root_file(&srv, "d3/g", b"other file");
    // Outside the share, owned by the test user: only the handle's object protects it.
    let outside = srv.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("f"), b"outside secret").unwrap();
    std::fs::set_permissions(outside.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    for p in [outside.join("f"), outside.clone()] {
        std::os::unix::fs::chown(&p, Some(TEST_UID), Some(TEST_GID)).unwrap();
    }
    const Y2001: i64 = 978_307_200;
    const Y1999: i64 = 915_148_800;
    let y2001 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(Y2001 as u64);
    std::fs::File::open(&outside)
        .unwrap()
        .set_modified(y2001)
        .unwrap();
    let outside_ft = (Y2001 as u64 + 11_644_473_600) * 10_000_000;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/handle_swap.py");
    let out = Command::new(py)
        .arg(script)
        .args(["127.0.0.1", &srv.port.to_string(), "data", USER, PASS])
        .arg(&srv.share)
        .arg(&outside)
        .arg(outside_ft.to_string())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let ctx = format!("{text}\n--- smbd log ---\n{}", srv.log());
    assert!(out.status.success() && text.contains("done"), "{ctx}");
    // Every check, so that one run shows each call that went astray.
    let mut wrong = Vec::new();
    if !text.contains("query ok") {
        wrong.push("QUERY_INFO read the outside directory");
    }
    if !text.contains("close ok") {
        wrong.push("CLOSE post-query read the outside directory");
    }
    if std::fs::metadata(&outside).unwrap().mtime() != Y2001 {
        wrong.push("SET_INFO times reached outside");
    }
    if std::fs::metadata(outside.join("f")).unwrap().mode() & 0o777 != 0o644 {
        wrong.push("SET_INFO attributes chmodded outside");
    }
    if std::fs::read(srv.share.join("d2/g")).ok().as_deref() != Some(&b"other file"[..]) {
        wrong.push("delete on close removed another file");
    }
    // And the handles' own objects got the changes.
    let orig = srv.share.join("dir.orig");
    if std::fs::metadata(&orig).unwrap().mtime() != Y1999 {
        wrong.push("SET_INFO times missed the handle's directory");
    }
    if std::fs::metadata(orig.join("f")).unwrap().mode() & 0o777 != 0o444 {
        wrong.push("SET_INFO attributes missed the handle's file");
    }
    assert!(wrong.is_empty(), "{wrong:?}\n{ctx}");
}
