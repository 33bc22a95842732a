//! Throw-away network namespace pairs joined by a veth pair, for tests and benchmarks.
//!
//! [`NetnsPair::new`] creates `lmtest-<pid>-<n>-a` and `-b` (via `ip netns`, i.e. bind mounts
//! under `/var/run/netns`), disables IPv6 in both *before* the veth exists (so no router
//! solicitations or DAD frames appear on the wire), creates `veth0` in each with fixed MACs and
//! the requested MTU, and deletes both namespaces on drop, including during a panic unwind.
//! Namespaces left behind by killed processes (their pid no longer exists) are removed on the
//! next `new`.
//!
//! Code runs inside a namespace with [`NetnsPair::run_in`]: a fresh thread `setns(2)`s into it
//! (only that thread moves), so sockets it creates live in that namespace and may then be used
//! from any thread. Child processes use `ip netns exec NAME ...` ([`NetnsPair::command_in`]).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::eth::MacAddr;

/// Interface name inside both namespaces.
pub const IFACE: &str = "veth0";
/// MAC of `veth0` in namespace a.
pub const MAC_A: MacAddr = MacAddr([0x02, 0x6c, 0x6d, 0x00, 0x00, 0x0a]);
/// MAC of `veth0` in namespace b.
pub const MAC_B: MacAddr = MacAddr([0x02, 0x6c, 0x6d, 0x00, 0x00, 0x0b]);
const PREFIX: &str = "lmtest-";
const NETNS_DIR: &str = "/var/run/netns";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Why namespaces could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// Not root (network namespaces and raw sockets need CAP_SYS_ADMIN / CAP_NET_RAW).
    #[error("network namespaces need root (running as uid {0})")]
    NotRoot(u32),
    /// `ip` (iproute2) missing.
    #[error("`ip` (iproute2) not found: {0}")]
    NoIpTool(io::Error),
    /// An `ip` command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its stderr.
        stderr: String,
    },
    /// setns(2) or opening the namespace failed.
    #[error("entering namespace {name}: {source}")]
    Enter {
        /// Namespace name.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// The thread running inside the namespace panicked.
    #[error("thread in namespace {0} panicked")]
    Panicked(String),
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(NetnsError::NoIpTool)?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Two namespaces `a` and `b`, each with `veth0`, cabled together. Removed on drop.
#[derive(Debug)]
pub struct NetnsPair {
    /// Name of namespace a.
    pub a: String,
    /// Name of namespace b.
    pub b: String,
}

impl NetnsPair {
    /// Create the pair; `mtu` for both veth ends (9000 carries full 8192-byte frames).
    pub fn new(mtu: usize) -> Result<Self, NetnsError> {
        // SAFETY: geteuid has no arguments and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(NetnsError::NotRoot(uid));
        }
        cleanup_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let pair = NetnsPair {
            a: format!("{PREFIX}{pid}-{n}-a"),
            b: format!("{PREFIX}{pid}-{n}-b"),
        };
        // From here on, drop removes whatever was created.
        pair.setup(mtu)?;
        Ok(pair)
    }

    fn setup(&self, mtu: usize) -> Result<(), NetnsError> {
        let mtu = mtu.to_string();
        for ns in [&self.a, &self.b] {
            ip(&["netns", "add", ns])?;
            for key in ["all", "default"] {
                let k = format!("net.ipv6.conf.{key}.disable_ipv6=1");
                ip(&["netns", "exec", ns, "sysctl", "-qw", &k])?;
            }
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n", &self.a, "link", "add", IFACE, "type", "veth", "peer", "name", IFACE, "netns",
            &self.b,
        ])?;
        for (ns, mac) in [(&self.a, MAC_A), (&self.b, MAC_B)] {
            let m = mac.to_string();
            ip(&["-n", ns, "link", "set", IFACE, "address", &m, "mtu", &mtu])?;
            ip(&["-n", ns, "link", "set", IFACE, "up"])?;
        }
        Ok(())
    }

    /// Run `f` on a new thread inside namespace `ns` (`&self.a` or `&self.b`) and return its
    /// result. Sockets created by `f` stay in that namespace.
    pub fn run_in<R: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, NetnsError> {
        let name = ns.to_string();
        let path = Path::new(NETNS_DIR).join(ns);
        let h = std::thread::spawn(move || -> Result<R, NetnsError> {
            enter(&path).map_err(|source| NetnsError::Enter {
                name: path.display().to_string(),
                source,
            })?;
            Ok(f())
        });
        h.join().map_err(|_| NetnsError::Panicked(name))?
    }

    /// Spawn-on-a-thread variant of [`NetnsPair::run_in`] for long-running code (servers).
    pub fn spawn_in<R: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<Result<R, NetnsError>> {
        let path = Path::new(NETNS_DIR).join(ns);
        std::thread::spawn(move || -> Result<R, NetnsError> {
            enter(&path).map_err(|source| NetnsError::Enter {
                name: path.display().to_string(),
                source,
            })?;
            Ok(f())
        })
    }

    /// `ip netns exec ns program` as a [`Command`] to add arguments to.
    pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(ns).arg(program);
        c
    }
}

/// Interface of the server namespace of a [`NetnsStar`].
pub const BRIDGE: &str = "br0";

/// MAC of `veth0` in client namespace `i` of a [`NetnsStar`].
pub fn client_mac(i: usize) -> MacAddr {
    MacAddr([0x02, 0x6c, 0x6d, 0x00, 0x01, i as u8])
}

/// A server namespace with bridge `br0` (MAC [`MAC_A`]) and `n` client namespaces, each with
/// `veth0` (MAC [`client_mac`]) cabled to a port of the bridge: several hosts on one switch.
/// Needed where one client per interface is the limit (AF_XDP binds a whole interface queue).
/// Removed on drop.
#[derive(Debug)]
pub struct NetnsStar {
    /// Server namespace (interface [`BRIDGE`]).
    pub server: String,
    /// Client namespaces (interface [`IFACE`] each).
    pub clients: Vec<String>,
}

impl NetnsStar {
    /// Create the star with `n` clients (at most 250) and `mtu` on every link.
    pub fn new(n: usize, mtu: usize) -> Result<Self, NetnsError> {
        // SAFETY: geteuid has no arguments and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(NetnsError::NotRoot(uid));
        }
        cleanup_stale();
        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let star = NetnsStar {
            server: format!("{PREFIX}{pid}-{k}-s"),
            clients: (0..n.min(250))
                .map(|i| format!("{PREFIX}{pid}-{k}-c{i}"))
                .collect(),
        };
        star.setup(mtu)?;
        Ok(star)
    }

    fn setup(&self, mtu: usize) -> Result<(), NetnsError> {
        let mtu = mtu.to_string();
        for ns in std::iter::once(&self.server).chain(&self.clients) {
            ip(&["netns", "add", ns])?;
            for key in ["all", "default"] {
                let k = format!("net.ipv6.conf.{key}.disable_ipv6=1");
                ip(&["netns", "exec", ns, "sysctl", "-qw", &k])?;
            }
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let s = &self.server;
        let mac_a = MAC_A.to_string();
        ip(&[
            "-n",
            s,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
        ])?;
        ip(&["-n", s, "link", "set", BRIDGE, "address", &mac_a])?;
        for (i, c) in self.clients.iter().enumerate() {
            let port = format!("p{i}");
            ip(&[
                "-n", s, "link", "add", &port, "type", "veth", "peer", "name", IFACE, "netns", c,
            ])?;
            ip(&[
                "-n", s, "link", "set", &port, "mtu", &mtu, "master", BRIDGE, "up",
            ])?;
            let m = client_mac(i).to_string();
            ip(&[
                "-n", c, "link", "set", IFACE, "address", &m, "mtu", &mtu, "up",
            ])?;
        }
        ip(&["-n", s, "link", "set", BRIDGE, "mtu", &mtu, "up"])?;
        Ok(())
    }

    /// Cable one more interface `iface` (MAC `mac`, `mtu`) of client namespace `client` to a
    /// port of the bridge: a host with two interfaces on the switch (AF_XDP needs one per
    /// endpoint, e.g. a lockmgrd replica that serves on one and reaches its primary on the
    /// other).
    pub fn add_port(
        &self,
        client: usize,
        iface: &str,
        mac: MacAddr,
        mtu: usize,
    ) -> Result<(), NetnsError> {
        let Some(c) = self.clients.get(client) else {
            return Err(NetnsError::Command {
                cmd: format!("add_port {client}"),
                stderr: format!("the star has {} client namespaces", self.clients.len()),
            });
        };
        let (s, mtu) = (&self.server, mtu.to_string());
        let port = format!("x{client}-{iface}");
        ip(&[
            "-n", s, "link", "add", &port, "type", "veth", "peer", "name", iface, "netns", c,
        ])?;
        ip(&[
            "-n", s, "link", "set", &port, "mtu", &mtu, "master", BRIDGE, "up",
        ])?;
        let m = mac.to_string();
        ip(&[
            "-n", c, "link", "set", iface, "address", &m, "mtu", &mtu, "up",
        ])?;
        Ok(())
    }
}

impl Drop for NetnsStar {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.server).chain(&self.clients) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                tracing::warn!(netns = %ns, error = %e, "could not remove test namespace");
            }
        }
    }
}

/// For tests: like [`pair_or_skip`] for a [`NetnsStar`].
pub fn star_or_skip(test: &str, n: usize, mtu: usize) -> Option<NetnsStar> {
    match NetnsStar::new(n, mtu) {
        Ok(p) => Some(p),
        Err(e) => {
            let msg = format!("{test}: network namespaces unavailable: {e}");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg} (CI=true: required capability missing)");
            }
            eprintln!("SKIPPED {msg}");
            None
        }
    }
}

/// Move the calling thread into the network namespace bound at `path`.
pub fn enter(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: setns on an fd we own; it only changes this thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                tracing::warn!(netns = %ns, error = %e, "could not remove test namespace");
            }
        }
    }
}

/// Remove `lmtest-<pid>-*` namespaces whose process is gone (killed test runs).
fn cleanup_stale() {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// For tests: `Some(pair)` if namespaces work here; otherwise prints why and returns `None`
/// (skip), except that with `CI=true` a missing capability is a failure (panics).
pub fn pair_or_skip(test: &str, mtu: usize) -> Option<NetnsPair> {
    match NetnsPair::new(mtu) {
        Ok(p) => Some(p),
        Err(e) => {
            let msg = format!("{test}: network namespaces unavailable: {e}");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg} (CI=true: required capability missing)");
            }
            eprintln!("SKIPPED {msg}");
            None
        }
    }
}
