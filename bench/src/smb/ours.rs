//! Our servers: one smbd with its in-process lock engine, or lockmgrd plus two smbd nodes
//! sharing one directory through it (the `[lockmgr]` section of smbd's TOML config).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::RngCore;

use super::error::{Result, SmbBenchError};
use super::process::{accepts, free_port, wait_until, ManagedProcess};
use super::samba::make_share;
use super::{Deployment, Endpoint, SHARE, USERS};

/// Same file-id namespace on every node of the cluster (they serve one directory).
const CLUSTER_FS_ID: &str = "0x534d4242";

/// Find one of our binaries: the explicit path, else next to the running executable (cargo puts
/// `smbd`, `lockmgrd` and `smbbench` in the same target dir), else on PATH.
pub fn find_our_binary(
    explicit: Option<&Path>,
    binary: &'static str,
    package: &'static str,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if super::process::is_executable(p) {
            return Ok(p.to_path_buf());
        }
        return Err(SmbBenchError::MissingBinary {
            binary,
            package,
            looked: p.display().to_string(),
        });
    }
    let mut looked = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Integration tests run from target/<profile>/deps; binaries sit one level up.
        for dir in exe.ancestors().skip(1).take(2) {
            let c = dir.join(binary);
            if super::process::is_executable(&c) {
                return Ok(c);
            }
            looked.push(c.display().to_string());
        }
    }
    looked.push("PATH".into());
    // On PATH a `smbd` may be Samba's: only accept ours (it takes --config).
    super::process::find_program(binary, &[])
        .filter(|p| binary != "smbd" || is_our_smbd(p))
        .ok_or(SmbBenchError::MissingBinary {
            binary,
            package,
            looked: looked.join(", "),
        })
}

fn is_our_smbd(p: &Path) -> bool {
    // Samba's smbd has `--configfile`; ours (clap) documents `--config <CONFIG>`.
    Command::new(p)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--config <CONFIG>"))
        .unwrap_or(false)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)
        .map_err(|e| SmbBenchError::io(format!("writing {}", path.display()), e))
}

/// smbd's users file: the benchmark users with the uids Samba's targets use (so both run
/// file access as the same unprivileged users), private as smbd requires.
fn users_file(root: &Path) -> Result<PathBuf> {
    use smb_auth::users::{nt_hash_of_password, UnixIds, UserDb};
    use std::os::unix::fs::PermissionsExt;
    let p = root.join("users");
    let mut db = UserDb::new();
    for (i, (u, pw)) in USERS.iter().enumerate() {
        let ids = UnixIds {
            uid: Some(super::samba::BENCH_UID0 + i as u32),
            gid: Some(super::samba::BENCH_GID),
            groups: Vec::new(),
        };
        db.add_entry(u, nt_hash_of_password(pw), ids);
    }
    write(&p, &db.to_file_text())?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| SmbBenchError::io(format!("chmod {}", p.display()), e))?;
    Ok(p)
}

/// The `[lockmgr]` section smbd takes to use a remote lockmgrd.
#[derive(Clone, Debug)]
pub struct LockmgrSection {
    pub socket: PathBuf,
    pub key_file: PathBuf,
    pub node_name: String,
}

/// smbd's TOML configuration for one node.
pub fn smbd_toml(users: &Path, share: &Path, lockmgr: Option<&LockmgrSection>) -> String {
    let mut s = format!(
        "[server]\nnetbios_name = \"SMBBENCH\"\nusers = \"{}\"\n",
        users.display()
    );
    if lockmgr.is_some() {
        s.push_str(&format!("cluster_fs_id = \"{CLUSTER_FS_ID}\"\n"));
    }
    // A/B experiments on server settings (e.g. `workers = 1`) without a rebuild.
    if let Ok(extra) = std::env::var("SMBBENCH_SMBD_SERVER_EXTRA") {
        for line in extra.split(';') {
            s.push_str(line.trim());
            s.push('\n');
        }
    }
    s.push_str(&format!(
        "\n[[share]]\nname = \"{SHARE}\"\npath = \"{}\"\n",
        share.display()
    ));
    if let Some(l) = lockmgr {
        s.push_str(&format!(
            "\n[lockmgr]\ntransport = \"shm\"\nconnect = \"{}\"\ncluster_key_file = \"{}\"\nnode_name = \"{}\"\n",
            l.socket.display(),
            l.key_file.display(),
            l.node_name
        ));
        // A/B experiments on the nodes' lock-manager settings (e.g. `spin_us = 20`).
        if let Ok(extra) = std::env::var("SMBBENCH_LOCKMGR_EXTRA") {
            for line in extra.split(';') {
                s.push_str(line.trim());
                s.push('\n');
            }
        }
    }
    s
}

fn start_smbd_node(
    smbd: &Path,
    name: &str,
    dir: &Path,
    config: &str,
) -> Result<(ManagedProcess, Endpoint)> {
    std::fs::create_dir_all(dir)
        .map_err(|e| SmbBenchError::io(format!("creating {}", dir.display()), e))?;
    let port = free_port()?;
    let cfg = dir.join("smbd.toml");
    write(&cfg, config)?;
    let mut c = Command::new(smbd);
    c.arg("--config")
        .arg(&cfg)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env(
            "RUST_LOG",
            std::env::var("SMBBENCH_SMBD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("NO_COLOR", "1");
    let mut p = ManagedProcess::spawn(name, c, &dir.join("smbd.log"))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    wait_until(
        &format!("{name} on port {port}"),
        Duration::from_secs(30),
        &mut [&mut p],
        || accepts(addr),
    )?;
    Ok((p, Endpoint::local(port)))
}

/// Our smbd, one node.
pub fn deploy_smbd(root: &Path, smbd_bin: Option<&Path>) -> Result<Deployment> {
    let smbd = find_our_binary(smbd_bin, "smbd", "smbd")?;
    let share = make_share(root)?;
    let users = users_file(root)?;
    let (p, ep) = start_smbd_node(
        &smbd,
        "smbd",
        &root.join("smbd"),
        &smbd_toml(&users, &share, None),
    )?;
    let mut d = Deployment::new();
    d.push_process(p);
    d.endpoints.push(ep);
    Ok(d)
}

/// lockmgrd over shared memory plus `nodes` smbd nodes on one share directory.
pub fn deploy_cluster(
    root: &Path,
    nodes: usize,
    smbd_bin: Option<&Path>,
    lockmgrd_bin: Option<&Path>,
) -> Result<Deployment> {
    let smbd = find_our_binary(smbd_bin, "smbd", "smbd")?;
    let lockmgrd = find_our_binary(lockmgrd_bin, "lockmgrd", "lockmgrd")?;
    let share = make_share(root)?;
    let users = users_file(root)?;
    let key_file = root.join("cluster.key");
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    std::fs::write(&key_file, key)
        .map_err(|e| SmbBenchError::io(format!("writing {}", key_file.display()), e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| SmbBenchError::io("chmod cluster key", e))?;
    }
    let socket = root.join("lockmgr.sock");
    let mut c = Command::new(&lockmgrd);
    c.arg("--transport")
        .arg("shm")
        .arg("--listen")
        .arg(&socket)
        .arg("--cluster-key-file")
        .arg(&key_file)
        .arg("--log")
        .arg("warn")
        .env("NO_COLOR", "1");
    // A/B experiments on lockmgrd's settings (e.g. `--spin-us 0`).
    if let Ok(extra) = std::env::var("SMBBENCH_LOCKMGRD_ARGS") {
        c.args(extra.split_whitespace());
    }
    let mut lm = ManagedProcess::spawn("lockmgrd", c, &root.join("lockmgrd.log"))?;
    wait_until(
        "lockmgrd socket",
        Duration::from_secs(30),
        &mut [&mut lm],
        || socket.exists(),
    )?;
    let mut d = Deployment::new();
    d.push_process(lm);
    for i in 0..nodes {
        let section = LockmgrSection {
            socket: socket.clone(),
            key_file: key_file.clone(),
            node_name: format!("node{i}"),
        };
        let name = format!("smbd node {i}");
        match start_smbd_node(
            &smbd,
            &name,
            &root.join(format!("smbd{i}")),
            &smbd_toml(&users, &share, Some(&section)),
        ) {
            Ok((p, ep)) => {
                d.push_process(p);
                d.endpoints.push(ep);
            }
            Err(SmbBenchError::EarlyExit { status, detail, .. }) if rejects_lockmgr(&detail) => {
                return Err(SmbBenchError::Unavailable(format!(
                    "smbd does not accept the [lockmgr] config section yet ({name} exited with {status}){}",
                    first_error_line(&detail)
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default()
                )));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(d)
}

/// smbd refused the configuration because of the `[lockmgr]` section (serde names the unknown
/// field; smbd exits with status 2 on configuration errors).
fn rejects_lockmgr(log: &str) -> bool {
    log.contains("lockmgr") && (log.contains("unknown field") || log.contains("configuration"))
}

fn first_error_line(log: &str) -> Option<String> {
    // serde's "unknown field `lockmgr`" line says it best; the ERROR line only gives a position.
    let lines: Vec<String> = log.lines().map(strip_ansi).collect();
    lines
        .iter()
        .find(|l| l.contains("unknown field"))
        .or_else(|| lines.iter().find(|l| l.contains("ERROR")))
        .map(|l| l.trim().to_string())
}

/// Remove terminal colour sequences (ESC [ ... letter) from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_without_and_with_lockmgr() {
        let t = smbd_toml(Path::new("/u"), Path::new("/s"), None);
        assert!(t.contains("users = \"/u\""));
        assert!(t.contains("path = \"/s\""));
        assert!(!t.contains("[lockmgr]"));
        let l = LockmgrSection {
            socket: "/r/lockmgr.sock".into(),
            key_file: "/r/key".into(),
            node_name: "node1".into(),
        };
        let t = smbd_toml(Path::new("/u"), Path::new("/s"), Some(&l));
        for line in [
            "[lockmgr]",
            "transport = \"shm\"",
            "connect = \"/r/lockmgr.sock\"",
            "cluster_key_file = \"/r/key\"",
            "node_name = \"node1\"",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line}:\n{t}");
        }
        // The section must come after [[share]] so its keys do not land in the share table.
        assert!(t.find("[lockmgr]") > t.find("[[share]]"));
    }

    #[test]
    fn recognises_rejected_section() {
        let log = "\u{1b}[31mERROR\u{1b}[0m smbd: configuration e=parsing /x/smbd.toml: TOML parse error at line 10, column 2\n  |\n10 | [lockmgr]\nunknown field `lockmgr`, expected `server` or `share`\n";
        assert!(rejects_lockmgr(log));
        assert_eq!(
            first_error_line(log).unwrap(),
            "unknown field `lockmgr`, expected `server` or `share`"
        );
        assert_eq!(strip_ansi("\u{1b}[31mERROR\u{1b}[0m x"), "ERROR x");
        assert!(!rejects_lockmgr("ERROR startup: address in use"));
    }

    #[test]
    fn explicit_missing_binary_names_the_package() {
        let e = find_our_binary(Some(Path::new("/nonexistent/smbd")), "smbd", "smbd").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("cargo build --release -p smbd"), "{m}");
        assert!(e.is_unavailable());
    }
}
