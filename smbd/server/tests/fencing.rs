//! Node fencing (issue 10 item 5) with the real processes: lockmgrd and two smbd nodes, each
//! in its own network namespace on one bridge, the lock fabric over UDP. Node A's client holds
//! an exclusive open with an RWH lease and a byte-range lock on a file; node A is cut off from
//! lockmgrd (its bridge port set down: silent loss both ways, where `tc netem` needs a kernel
//! module this machine lacks; node A's own client still reaches it over its namespace's
//! loopback); node B's client then opens the file and takes the lock.
//!
//! The check is the ORDER of three CLOCK_MONOTONIC stamps from three processes on one host:
//! node A dropped its client (smbd's log) before lockmgrd expired node A's session (lockmgrd's
//! log), and that before node B's client was granted the lock (the client's own clock). Then
//! the partition heals and node A serves its client again (a new lockmgrd session).
//!
//! Without the node's lease (lockmgr_client::LEASE_DRIFT_PPM) node A learns of the partition
//! only when its UDP transport gives up on lockmgrd (5 s of silence), long after lockmgrd
//! expired it (1 s) and granted node B: the first assertion fails.

mod cluster_common;
use cluster_common::*;

use lockmgr_replica::history;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

fn fence_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster_common/fence_client.py")
}

/// A client process whose stdout lines arrive on a channel.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Client {
    fn spawn(mut cmd: Command) -> Client {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Client {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `word`; returns the rest of it.
    fn expect(&mut self, word: &str, within: Duration, logs: &dyn Fn() -> String) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(word) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let mut err = String::new();
                    if let Some(e) = self.child.stderr.as_mut() {
                        let _ = std::io::Read::read_to_string(e, &mut err);
                    }
                    panic!(
                        "no {word} from the client; it said {:?}\n{err}\n{}",
                        self.seen,
                        logs()
                    );
                }
            }
        }
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("tell the client");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CLOCK_MONOTONIC stamp (`monotonic_ns=N`) of the first log line containing `message`.
fn stamp(log: &str, message: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let at = line.find("monotonic_ns=")? + "monotonic_ns=".len();
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Sets bridge port `port` (node A's cable) of the lockmgrd namespace down or up. Down, the
/// partition is silent both ways: the veth peer in node A's namespace loses its carrier but
/// keeps its address and route, so node A's datagrams are dropped without an error (as with a
/// cable pulled further away), and the bridge drops what goes to node A.
fn set_port(ns: &str, port: &str, state: &str) {
    let st = Command::new("ip")
        .args(["-n", ns, "link", "set", port, state])
        .status()
        .expect("run ip");
    assert!(st.success(), "ip -n {ns} link set {port} {state} failed");
}

#[test]
fn partitioned_node_fences_itself_before_lockmgrd_hands_its_locks_to_another_node() {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let Some(cluster) = Cluster::try_start(ClusterOptions {
        transport: LockTransportKind::UdpNetns,
        ..ClusterOptions::default()
    }) else {
        return;
    };
    let logs = || cluster.logs();
    let star = &cluster.eth.as_ref().expect("namespaces").star;
    let (ns_a, ns_server) = (star.clients[0].clone(), star.server.clone());
    let client = |ns: &str, role: &str, node: usize| {
        let mut cmd = lockmgr_transport::netns::NetnsPair::command_in(ns, &py);
        cmd.arg(fence_script()).args([
            role,
            &cluster.host(node),
            &cluster.port(node).to_string(),
            USER,
            PASS,
        ]);
        Client::spawn(cmd)
    };
    // Node A's client runs in node A's namespace: the partition leaves it connected.
    let mut holder = client(&ns_a, "hold", 0);
    let held: u64 = holder
        .expect("HELD", Duration::from_secs(30), &logs)
        .parse()
        .expect("HELD stamp");
    let mut taker = client(&ns_server, "take", 1);
    taker.expect("READY", Duration::from_secs(30), &logs);

    // Partition node A from lockmgrd (and node B): every frame either way is lost, silently.
    let port_a = "p0";
    set_port(&ns_server, port_a, "down");
    taker.go();
    let granted: u64 = taker
        .expect("GRANTED", Duration::from_secs(40), &logs)
        .parse()
        .expect("GRANTED stamp");
    let releasing: u64 = taker
        .expect("RELEASING", Duration::from_secs(10), &logs)
        .parse()
        .expect("RELEASING stamp");
    let dropped = holder.expect("DROPPED", Duration::from_secs(40), &logs);

    let node_a = cluster.nodes[0].log();
    let lockmgrd =
        std::fs::read_to_string(cluster.dir.path().join("lockmgrd.log")).unwrap_or_default();
    let fenced = stamp(&node_a, "lockmgrd session fenced");
    let disconnected = stamp(&node_a, "lock state lost with lockmgrd; disconnecting");
    let expired = stamp(&lockmgrd, "peer silent past its liveness lease");
    let report = format!(
        "node A fenced at {fenced:?}, dropped its client at {disconnected:?}; lockmgrd expired \
         node A at {expired:?}; node B's client granted at {granted} (client saw: {dropped})\n{}",
        logs()
    );
    let (Some(disconnected), Some(expired)) = (disconnected, expired) else {
        panic!("missing events: {report}");
    };
    assert!(
        disconnected < expired,
        "node A still served its client after lockmgrd expired it: {report}"
    );
    assert!(
        fenced.is_some(),
        "node A dropped its client, but not by fencing: {report}"
    );
    assert!(
        expired <= granted,
        "node B was granted before lockmgrd expired node A: {report}"
    );
    // The same run through the lock history checker of the failover tests: node A's client
    // holds its lock until its node dropped it (it "died" then, as far as the lock goes).
    let range = history::Range {
        offset: 0,
        length: 10,
        exclusive: true,
    };
    let file = 1;
    let events = [
        history::Event::Acquired {
            at: held,
            client: 1,
            file,
            range,
        },
        history::Event::Died {
            at: disconnected,
            client: 1,
        },
        history::Event::Acquired {
            at: granted,
            client: 2,
            file,
            range,
        },
        history::Event::Releasing {
            at: releasing,
            client: 2,
            file,
            range,
        },
    ];
    let violations = history::check(&events);
    assert!(
        violations.is_empty(),
        "history checker: {}: {report}",
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    eprintln!(
        "fenced {} ms before lockmgrd expired the node; node B granted {} ms after the expiry",
        (expired - disconnected) / 1_000_000,
        (granted - expired) / 1_000_000
    );

    // The partition heals: node A attaches a new session and serves its client again.
    set_port(&ns_server, port_a, "up");
    holder.expect("WORKS", Duration::from_secs(40), &logs);
}
