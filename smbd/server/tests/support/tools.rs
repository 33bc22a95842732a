// Helpers shared by the single-server harness (tests/common) and the cluster harness
// (tests/cluster_common): `include!`d by both, because test binaries that use both modules
// cannot declare one shared module twice. Paths are spelled out so the including module's own
// `use` lines do not clash.

/// A tool the test needs is missing: on a user's machine the test is skipped with a message;
/// in CI (`CI=true`) a missing capability is a failure, never a silent skip.
pub fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} (CI=true: missing capabilities fail instead of skipping)");
    }
    eprintln!("SKIPPED: {what}");
}

/// True if `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A Python interpreter that has smbprotocol (and its smbclient module): $SMBD_PYTHON, else
/// /tmp/venv/bin/python.
pub fn python() -> Option<String> {
    let candidates = [
        std::env::var("SMBD_PYTHON").unwrap_or_default(),
        "/tmp/venv/bin/python".to_string(),
    ];
    candidates.into_iter().filter(|p| !p.is_empty()).find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import smbprotocol, smbclient"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// Results of one smbtorture run, from its subunit output.
#[derive(Debug, Default)]
pub struct TortureResults {
    pub success: Vec<String>,
    pub failure: Vec<String>,
    pub skip: Vec<String>,
}

/// A subtest that started (`test:`) and has no result (smbtorture died in it, e.g. an
/// assertion of its own on an answer it did not expect) counts as a failure: otherwise the
/// rest of the suite would vanish from the results unnoticed.
pub fn parse_subunit(text: &str) -> TortureResults {
    let mut r = TortureResults::default();
    let mut started: Vec<String> = Vec::new();
    for line in text.lines() {
        let (kind, rest) = match line.split_once(": ") {
            Some(x) => x,
            None => continue,
        };
        let name = rest
            .trim_end_matches('[')
            .trim()
            .trim_end_matches(" [")
            .to_string();
        match kind {
            "test" | "testing" => started.push(name),
            "success" | "successful" => r.success.push(name),
            "failure" | "error" | "fail" => r.failure.push(name),
            "skip" => r.skip.push(name),
            _ => {}
        }
    }
    for name in started {
        let decided = [&r.success, &r.failure, &r.skip]
            .iter()
            .any(|v| v.contains(&name));
        if !decided {
            r.failure.push(name);
        }
    }
    r
}

/// `smbd/tests/<file>`: `suite.test  # reason` lines.
pub fn read_known_failures(file: &str) -> Vec<String> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests")
        .join(file);
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Subtests that may fail in a suite run for a reason outside smbd and are then run once more
/// on their own, each with that reason: (full subtest name, reason). Any other failure not in
/// the known-failures file fails the suite at once, so a new load-dependent failure is seen
/// rather than absorbed. Empty: smb2.dir.sorted, the one subtest seen failing under load
/// (dir.modify leaks a directory handle; dir.sorted's next connection met it before the
/// server had torn the old connection down), was fixed in smbd (crate::hangup).
pub const RERUN_ALLOWED: &[(&str, &str)] = &[];

/// Compare a suite's results with the known failures: any failure not listed fails the test
/// (with `logs()` in the message), unless it is in `rerun_allowed` and passes when run once
/// more on its own through `rerun` (the subtest's full name -> its results); listed tests
/// that pass now are reported. `list` names the known-failures file for the report.
#[allow(clippy::too_many_arguments)]
pub fn check_suite(
    name: &str,
    res: &TortureResults,
    raw: &str,
    known: &[String],
    list: &str,
    rerun_allowed: &[(&str, &str)],
    rerun: impl Fn(&str) -> TortureResults,
    logs: impl FnOnce() -> String,
) {
    let listed = |t: &&String| known.iter().any(|k| k == *t);
    let mut unexpected: Vec<&String> = res.failure.iter().filter(|f| !listed(f)).collect();
    unexpected.retain(|t| {
        let Some((_, why)) = rerun_allowed.iter().find(|(n, _)| *n == t.as_str()) else {
            return true;
        };
        let again = rerun(t);
        // A subtest that skips itself when run alone (smb2.ioctl.trim_simple) did not fail.
        let passed_alone = again.failure.is_empty()
            && again.success.iter().chain(&again.skip).any(|s| s == *t);
        if passed_alone {
            eprintln!("{name}: {t} failed in the suite run and passed alone (allowed: {why})");
        }
        !passed_alone
    });
    let fixed: Vec<&String> = res.success.iter().filter(listed).collect();
    eprintln!(
        "{name}: {} passed, {} failed, {} skipped",
        res.success.len(),
        res.failure.len(),
        res.skip.len()
    );
    if !fixed.is_empty() {
        eprintln!("{name}: now passing, remove from {list}: {fixed:?}");
    }
    assert!(
        !res.success.is_empty() || !res.failure.is_empty(),
        "{name}: smbtorture produced no results:\n{raw}"
    );
    assert!(
        unexpected.is_empty(),
        "{name}: unexpected failures {unexpected:?}\n--- subunit ---\n{raw}\n{}",
        logs()
    );
}

/// The Unix ids the test users are mapped to (not root: files created over SMB must belong
/// to them). Both users share one uid so smbtorture's two-user tests can open each other's
/// files as they can on the reference Samba setup's shared test directory.
pub const TEST_UID: u32 = 30001;
pub const TEST_GID: u32 = 30000;

/// The users file text for `users` (name, password), all mapped to TEST_UID/TEST_GID.
pub fn users_file_text(users: &[(&str, &str)]) -> String {
    let mut db = smb_auth::users::UserDb::new();
    for (u, p) in users {
        let ids = smb_auth::users::UnixIds {
            uid: Some(TEST_UID),
            gid: Some(TEST_GID),
            groups: Vec::new(),
        };
        db.add_entry(u, smb_auth::users::nt_hash_of_password(p), ids);
    }
    db.to_file_text()
}

/// Write a private users file (smbd refuses one that group or others can read).
pub fn write_users_file(path: &std::path::Path, users: &[(&str, &str)]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, users_file_text(users)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Make `share` (inside the test's temporary directory `top`) usable by the test users: the
/// temporary directory traversable, the share owned by them.
pub fn give_share_to_test_users(top: &std::path::Path, share: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(share, Some(TEST_UID), Some(TEST_GID)).unwrap();
    std::fs::set_permissions(share, std::fs::Permissions::from_mode(0o775)).unwrap();
}
