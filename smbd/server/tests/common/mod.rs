//! Test harness: start the real `smbd` binary on a free loopback port with a temporary share
//! and users file, and helpers to drive real clients against it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const USER: &str = "alice";
pub const PASS: &str = "secret";
pub const USER2: &str = "bob";
pub const PASS2: &str = "pass2";
pub struct TestServer {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub share: PathBuf,
    pub client_conf: PathBuf,
}

#[derive(Default, Clone)]
pub struct Options {
    pub encrypt_share: bool,
    pub global_encrypt: bool,
    pub signing_required: bool,
    /// Extra `[server]` lines.
    pub server_extra: String,
    /// Extra lines of the `data` share.
    pub share_extra: String,
    /// Text appended to the configuration (e.g. a `[limits]` section).
    pub config_extra: String,
    /// Environment variables for smbd.
    pub env: Vec<(String, String)>,
    /// RLIMIT_NOFILE (soft and hard) for smbd.
    pub nofile: Option<u64>,
    /// The address smbd listens on (default `127.0.0.1:0`, a free port).
    pub listen: Option<String>,
}

include!("../support/tools.rs");

impl TestServer {
    pub fn start(opts: Options) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        give_share_to_test_users(dir.path(), &share);
        let users = dir.path().join("users");
        write_users_file(&users, &[(USER, PASS), (USER2, PASS2)]);
        let cfg = dir.path().join("smbd.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nnetbios_name = \"TESTSRV\"\nusers = \"{}\"\nencrypt = {}\nsigning_required = {}\n{}\n[[share]]\nname = \"data\"\npath = \"{}\"\nencrypt = {}\n{}\n{}\n",
                users.display(),
                opts.global_encrypt,
                opts.signing_required,
                opts.server_extra,
                share.display(),
                opts.encrypt_share,
                opts.share_extra,
                opts.config_extra,
            ),
        )
        .unwrap();
        let client_conf = dir.path().join("client.conf");
        std::fs::write(
            &client_conf,
            "[global]\nclient min protocol = SMB2_02\nclient max protocol = SMB3_11\n",
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("smbd.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smbd"));
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("--config")
            .arg(&cfg)
            .arg("--listen")
            .arg(opts.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .env(
                "RUST_LOG",
                std::env::var("SMBD_TEST_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected smbd output {line:?}"));
        TestServer {
            child: Some(child),
            port,
            dir,
            share,
            client_conf,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("smbd.log")).unwrap_or_default()
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    /// Run smbclient as the test user with `-c cmds` from `cwd`; returns (success, combined
    /// output).
    pub fn smbclient(&self, cwd: &Path, extra: &[&str], cmds: &str) -> (bool, String) {
        let user = format!("{USER}%{PASS}");
        let mut args = vec!["-U", user.as_str()];
        args.extend_from_slice(extra);
        self.smbclient_with(cwd, &args, cmds)
    }

    /// Run smbclient against the `data` share with `args` (authentication included, e.g.
    /// `-N` or `-U user%pw`) and `-c cmds` from `cwd`; returns (success, combined output).
    pub fn smbclient_with(&self, cwd: &Path, args: &[&str], cmds: &str) -> (bool, String) {
        let out = Command::new("smbclient")
            .current_dir(cwd)
            .arg("//127.0.0.1/data")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-s")
            .arg(&self.client_conf)
            .args(args)
            .arg("-c")
            .arg(cmds)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // smbclient exits 0 even when a command in -c failed; look for NT_STATUS errors too.
        (out.status.success() && !text.contains("NT_STATUS_"), text)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Known failures of the single-server suites.
pub fn known_failures() -> Vec<String> {
    read_known_failures("smbtorture-known-failures.txt")
}

pub fn run_smbtorture(srv: &TestServer, suite: &str) -> (TortureResults, String) {
    let out = Command::new("smbtorture")
        .arg("//127.0.0.1/data")
        .arg("-p")
        .arg(srv.port.to_string())
        .arg("-s")
        .arg(&srv.client_conf)
        .arg("-U")
        .arg(format!("{USER}%{PASS}"))
        .arg("--target=samba3")
        .arg("--format=subunit")
        .arg("--fullname")
        .arg(format!("--option=torture:user2name={USER2}"))
        .arg(format!("--option=torture:user2password={PASS2}"))
        .arg(suite)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // SMBTORTURE_DUMP_DIR keeps each run's whole output (comments included), to read a
    // subtest's story when it passes or fails unexpectedly.
    if let Ok(dir) = std::env::var("SMBTORTURE_DUMP_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            std::path::Path::new(&dir).join(format!("{suite}.subunit")),
            &text,
        );
        let stderr = format!("{}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::write(
            std::path::Path::new(&dir).join(format!("{suite}.stderr")),
            stderr,
        );
        let _ = std::fs::write(
            std::path::Path::new(&dir).join(format!("{suite}.smbd.log")),
            srv.log(),
        );
    }
    (parse_subunit(&text), text)
}
