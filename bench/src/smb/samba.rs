//! Private Samba servers: one standalone smbd, or CTDB nodes in test mode with one clustered smbd
//! per node. Nothing outside the target's temp dir is touched: Samba gets its own smb.conf with
//! private/lock/state/cache/pid/ncalrpc directories under it, a private tdbsam passdb, and sees
//! the benchmark users through nss_wrapper (so /etc/passwd is left alone).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::error::{Result, SmbBenchError};
use super::process::{accepts, find_program, free_port, run_short, wait_until, ManagedProcess};
use super::{Deployment, Endpoint, SHARE, USERS};

/// Samba programs and libraries, located once.
#[derive(Clone, Debug)]
pub struct SambaTools {
    pub smbd: PathBuf,
    pub smbpasswd: PathBuf,
    pub nss_wrapper: PathBuf,
}

/// CTDB programs.
#[derive(Clone, Debug)]
pub struct CtdbTools {
    pub ctdbd: PathBuf,
    pub ctdb: PathBuf,
}

impl SambaTools {
    /// Locate Samba's programs; Samba also needs root here (smbd switches to the benchmark
    /// users' uids for file access, and smbpasswd writes its passdb as root).
    pub fn find() -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Err(SmbBenchError::Unavailable(
                "the Samba targets need root (Samba's smbd switches to the benchmark users' uids)"
                    .into(),
            ));
        }
        Ok(SambaTools {
            smbd: find_samba_smbd()?,
            smbpasswd: find_program("smbpasswd", &["/usr/bin", "/usr/local/samba/bin"]).ok_or(
                SmbBenchError::MissingTool {
                    tool: "smbpasswd".into(),
                    package: "samba-common-bin",
                },
            )?,
            nss_wrapper: find_nss_wrapper().ok_or(SmbBenchError::MissingTool {
                tool: "libnss_wrapper.so".into(),
                package: "libnss-wrapper",
            })?,
        })
    }
}

impl CtdbTools {
    pub fn find() -> Result<Self> {
        let missing = |tool: &str| SmbBenchError::MissingTool {
            tool: tool.into(),
            package: "ctdb",
        };
        Ok(CtdbTools {
            ctdbd: find_program("ctdbd", &["/usr/sbin", "/usr/local/samba/sbin"])
                .ok_or_else(|| missing("ctdbd"))?,
            ctdb: find_program("ctdb", &["/usr/bin", "/usr/local/samba/bin"])
                .ok_or_else(|| missing("ctdb"))?,
        })
    }
}

/// Samba's smbd, not ours: our smbd may well be first on PATH, so check what answers
/// `--version` ("Version 4.17.12-Debian").
fn find_samba_smbd() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = ["/usr/sbin", "/usr/local/sbin", "/usr/local/samba/sbin"]
        .iter()
        .map(|d| Path::new(d).join("smbd"))
        .collect();
    if let Some(p) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&p).map(|d| d.join("smbd")));
    }
    for c in candidates {
        if !super::process::is_executable(&c) {
            continue;
        }
        let is_samba = Command::new(&c)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).starts_with("Version "))
            .unwrap_or(false);
        if is_samba {
            return Ok(c);
        }
    }
    Err(SmbBenchError::MissingTool {
        tool: "Samba smbd".into(),
        package: "samba",
    })
}

fn find_nss_wrapper() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec![
        "/usr/lib/x86_64-linux-gnu".into(),
        "/usr/lib/aarch64-linux-gnu".into(),
        "/usr/lib64".into(),
        "/usr/lib".into(),
        "/usr/local/lib".into(),
    ];
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        dirs.extend(
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with("-linux-gnu")),
        );
    }
    dirs.into_iter()
        .map(|d| d.join("libnss_wrapper.so"))
        .find(|p| p.exists())
}

fn mkdirs(dirs: &[&Path]) -> Result<()> {
    for d in dirs {
        std::fs::create_dir_all(d)
            .map_err(|e| SmbBenchError::io(format!("creating {}", d.display()), e))?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)
        .map_err(|e| SmbBenchError::io(format!("writing {}", path.display()), e))
}

/// Share directory everyone may write: Samba switches to the benchmark user's uid for file
/// access, so the directories above it must be traversable too.
pub(crate) fn make_share(root: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let share = root.join("share");
    mkdirs(&[&share])?;
    for (p, mode) in [(root, 0o755), (share.as_path(), 0o777)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| SmbBenchError::io(format!("chmod {}", p.display()), e))?;
    }
    Ok(share)
}

/// First uid of the benchmark users (one each, in `USERS` order) and their common gid: Samba
/// (through nss_wrapper) and our smbd (through its users file) run file access as the same ids.
pub(crate) const BENCH_UID0: u32 = 60001;
pub(crate) const BENCH_GID: u32 = 60000;

/// nss_wrapper passwd/group files with the benchmark users (uids well away from real ones).
fn write_nss_files(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let passwd = root.join("passwd");
    let group = root.join("group");
    let mut pw = String::from(
        "root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    let mut members = Vec::new();
    for (i, (u, _)) in USERS.iter().enumerate() {
        pw.push_str(&format!(
            "{u}:x:{}:{BENCH_GID}:{u}:/nonexistent:/bin/false\n",
            BENCH_UID0 + i as u32
        ));
        members.push(*u);
    }
    write(&passwd, &pw)?;
    write(
        &group,
        &format!(
            "root:x:0:\nnogroup:x:65534:\nsmbbench:x:{BENCH_GID}:{}\n",
            members.join(",")
        ),
    )?;
    Ok((passwd, group))
}

struct NssEnv {
    passwd: PathBuf,
    group: PathBuf,
    preload: PathBuf,
}

impl NssEnv {
    fn apply(&self, c: &mut Command) {
        c.env("NSS_WRAPPER_PASSWD", &self.passwd)
            .env("NSS_WRAPPER_GROUP", &self.group)
            .env("LD_PRELOAD", &self.preload);
    }
}

/// Settings from /work/shared/reference/smb-testing.md, so figures compare with the reference.
fn smb_conf(dir: &Path, port: u16, share: &Path, ctdb_socket: Option<&Path>) -> String {
    let d = dir.display();
    let cluster = match ctdb_socket {
        Some(s) => format!("\tclustering = yes\n\tctdbd socket = {}\n", s.display()),
        None => String::new(),
    };
    format!(
        "[global]
\tnetbios name = SMBBENCH
\tworkgroup = WORKGROUP
\tserver role = standalone server
{cluster}\tsmb ports = {port}
\tinterfaces = 127.0.0.1
\tbind interfaces only = yes
\tprivate dir = {d}/private
\tlock directory = {d}/lock
\tstate directory = {d}/state
\tcache directory = {d}/cache
\tpid directory = {d}/pid
\tncalrpc dir = {d}/ncalrpc
\tlog file = {d}/log.%m
\tmax log size = 0
\tlog level = 0
\tpassdb backend = tdbsam:{d}/private/passdb.tdb
\tdisable spoolss = yes
\tload printers = no
\tprinting = bsd
\tprintcap name = /dev/null
\tpanic action =
\tserver signing = mandatory
\tkernel oplocks = no
\tkernel share modes = no
\tposix locking = no
\tsmb2 leases = yes
\tdurable handles = yes
\tserver multi channel support = yes
\tea support = yes
\tstore dos attributes = yes
\tvfs objects = acl_xattr xattr_tdb streams_depot

[{SHARE}]
\tpath = {share}
\tread only = no
",
        share = share.display()
    )
}

/// Configure and start one Samba smbd in `dir` serving `share` on 127.0.0.1:`port`.
fn start_samba_node(
    tools: &SambaTools,
    nss: &NssEnv,
    name: &str,
    dir: &Path,
    share: &Path,
    ctdb_socket: Option<&Path>,
) -> Result<(ManagedProcess, Endpoint)> {
    let port = free_port()?;
    let subdirs: Vec<PathBuf> = ["private", "lock", "state", "cache", "pid", "ncalrpc"]
        .iter()
        .map(|s| dir.join(s))
        .collect();
    let refs: Vec<&Path> = subdirs.iter().map(|p| p.as_path()).collect();
    mkdirs(&refs)?;
    let conf = dir.join("smb.conf");
    write(&conf, &smb_conf(dir, port, share, ctdb_socket))?;
    for (user, pass) in USERS {
        let mut c = Command::new(&tools.smbpasswd);
        c.arg("-c").arg(&conf).arg("-s").arg("-a").arg(user);
        nss.apply(&mut c);
        let out = run_short(
            "smbpasswd",
            c,
            Some(&format!("{pass}\n{pass}\n")),
            Duration::from_secs(30),
        )?;
        if !out.status.success() {
            return Err(SmbBenchError::Command {
                what: format!("smbpasswd -a {user} ({name})"),
                detail: format!("{}: {}{}", out.status, out.stdout, out.stderr),
            });
        }
    }
    let mut c = Command::new(&tools.smbd);
    // Foreground and in the process group we gave it, so stopping the group stops its children.
    c.arg("--foreground")
        .arg("--no-process-group")
        .arg("-s")
        .arg(&conf);
    nss.apply(&mut c);
    let mut p = ManagedProcess::spawn(name, c, &dir.join("smbd.stdout.log"))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    wait_until(
        &format!("{name} on port {port}"),
        Duration::from_secs(60),
        &mut [&mut p],
        || accepts(addr),
    )?;
    Ok((p, Endpoint::local(port)))
}

/// One standalone Samba smbd.
pub fn deploy_samba(root: &Path) -> Result<Deployment> {
    let tools = SambaTools::find()?;
    let share = make_share(root)?;
    let (passwd, group) = write_nss_files(root)?;
    let nss = NssEnv {
        passwd,
        group,
        preload: tools.nss_wrapper.clone(),
    };
    let dir = root.join("samba");
    let (p, ep) = start_samba_node(&tools, &nss, "samba smbd", &dir, &share, None)?;
    let mut d = Deployment::new();
    d.push_process(p);
    d.endpoints.push(ep);
    Ok(d)
}

/// Default CTDB port; all nodes use it, each on its own loopback address.
const CTDB_PORT: u16 = 4379;

/// Pick `n` loopback addresses 127.X.Y.1..n on which the CTDB port is free, so this run does not
/// collide with another CTDB (test mode binds every node to the same port).
fn pick_ctdb_addresses(n: u8) -> Result<Vec<Ipv4Addr>> {
    let seed = std::process::id();
    for attempt in 0..64u32 {
        let v = seed.wrapping_add(attempt.wrapping_mul(7919));
        let x = 100 + (v % 100) as u8;
        let y = ((v / 100) % 250) as u8;
        let addrs: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(127, x, y, i)).collect();
        let all_free = addrs
            .iter()
            .all(|a| TcpListener::bind(SocketAddr::from((*a, CTDB_PORT))).is_ok());
        if all_free {
            return Ok(addrs);
        }
    }
    Err(SmbBenchError::NoAddress("CTDB nodes".into()))
}

fn ctdb_cmd(tools: &CtdbTools, base: &Path) -> Command {
    let mut c = Command::new(&tools.ctdb);
    c.env("CTDB_TEST_MODE", "yes").env("CTDB_BASE", base);
    c
}

/// CTDB in test mode (CTDB_TEST_MODE=yes, one CTDB_BASE per node, no public addresses, failover
/// disabled), then one clustered Samba smbd per node on the shared share directory.
pub fn deploy_samba_ctdb(root: &Path, nodes: u8) -> Result<Deployment> {
    let tools = SambaTools::find()?;
    let ctdb = CtdbTools::find()?;
    let share = make_share(root)?;
    let (passwd, group) = write_nss_files(root)?;
    let nss = NssEnv {
        passwd,
        group,
        preload: tools.nss_wrapper.clone(),
    };
    let addrs = pick_ctdb_addresses(nodes)?;
    let nodes_list: String = addrs.iter().map(|a| format!("{a}\n")).collect();
    let reclock = root.join("ctdb.reclock");
    let mut d = Deployment::new();
    let mut bases = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let base = root.join(format!("ctdb{i}"));
        let db = base.join("db");
        mkdirs(&[
            &db.join("volatile"),
            &db.join("persistent"),
            &db.join("state"),
            &base.join("events").join("legacy"),
            &base.join("run"),
        ])?;
        write(&base.join("nodes"), &nodes_list)?;
        write(&base.join("public_addresses"), "")?;
        write(
            &base.join("ctdb.conf"),
            &format!(
                "[logging]\n\tlocation = file:{b}/log.ctdb\n\tlog level = NOTICE\n\
[cluster]\n\trecovery lock = {r}\n\tnode address = {addr}\n\
[database]\n\tvolatile database directory = {db}/volatile\n\
\tpersistent database directory = {db}/persistent\n\
\tstate database directory = {db}/state\n\
[failover]\n\tdisabled = true\n",
                b = base.display(),
                r = reclock.display(),
                db = db.display(),
            ),
        )?;
        let mut c = Command::new(&ctdb.ctdbd);
        c.arg("--interactive")
            .env("CTDB_TEST_MODE", "yes")
            .env("CTDB_BASE", &base);
        let p = ManagedProcess::spawn(
            format!("ctdbd node {i} ({addr})"),
            c,
            &base.join("ctdbd.stderr.log"),
        )?;
        d.push_process(p);
        bases.push(base);
    }
    // Healthy means: every node answers and `ctdb nodestatus all` (exit status = OR of node
    // flags) is 0, i.e. recovery finished and all nodes are OK.
    let check = |base: &Path| -> bool {
        let mut c = ctdb_cmd(&ctdb, base);
        c.arg("nodestatus").arg("all");
        matches!(run_short("ctdb nodestatus", c, None, Duration::from_secs(10)),
            Ok(o) if o.status.success())
    };
    {
        let mut procs: Vec<&mut ManagedProcess> = d.processes_mut().collect();
        wait_until(
            "CTDB cluster (all nodes OK)",
            Duration::from_secs(120),
            &mut procs,
            || bases.iter().all(|b| check(b)),
        )?;
    }
    for (i, base) in bases.iter().enumerate() {
        let socket = base.join("run").join("ctdbd.socket");
        let (p, ep) = start_samba_node(
            &tools,
            &nss,
            &format!("samba smbd (ctdb node {i})"),
            &root.join(format!("samba{i}")),
            &share,
            Some(&socket),
        )?;
        d.push_process(p);
        d.endpoints.push(ep);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_has_reference_settings_and_private_dirs() {
        let c = smb_conf(Path::new("/t/x"), 4455, Path::new("/t/share"), None);
        for s in [
            "smb ports = 4455",
            "bind interfaces only = yes",
            "private dir = /t/x/private",
            "lock directory = /t/x/lock",
            "kernel oplocks = no",
            "server signing = mandatory",
            "kernel share modes = no",
            "posix locking = no",
            "smb2 leases = yes",
            "durable handles = yes",
            "path = /t/share",
        ] {
            assert!(c.contains(s), "missing {s}:\n{c}");
        }
        assert!(!c.contains("clustering"));
        let c = smb_conf(
            Path::new("/t/x"),
            1,
            Path::new("/t/share"),
            Some(Path::new("/t/ctdb0/run/ctdbd.socket")),
        );
        assert!(c.contains("clustering = yes"));
        assert!(c.contains("ctdbd socket = /t/ctdb0/run/ctdbd.socket"));
    }

    #[test]
    fn ctdb_addresses_are_distinct_loopback() {
        let a = pick_ctdb_addresses(2).unwrap();
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        assert!(a.iter().all(|x| x.is_loopback()));
    }
}
