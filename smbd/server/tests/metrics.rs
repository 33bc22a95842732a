//! The Prometheus endpoints of lockmgrd and of each smbd node, scraped over HTTP while a real
//! client (Python smbprotocol, `cluster_common/metrics_client.py`) holds an open and a
//! byte-range lock on node 1: every scrape is parsed (names, types, label sets, histogram
//! buckets) and checked by `promtool check metrics` (Debian `prometheus`; missing is a
//! failure), and the counters must move by exactly the requests the client sent.

mod cluster_common;
use cluster_common::*;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Labels = BTreeMap<String, String>;

/// One parsed scrape.
#[derive(Debug, Default)]
struct Scrape {
    text: String,
    types: HashMap<String, String>,
    samples: Vec<(String, Labels, f64)>,
}

impl Scrape {
    /// The value of `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} missing in\n{}", self.text))
    }
}

/// A label value up to its closing quote, unescaping `\\`, `\"` and `\n`.
fn parse_label_value(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (out, &s[i + 1..]),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, c @ ('\\' | '"'))) => out.push(c),
                other => panic!("bad escape {other:?} in {s:?}"),
            },
            c => out.push(c),
        }
    }
    panic!("unterminated label value {s:?}");
}

/// Parses the text format (0.0.4): every family's HELP and TYPE come before its samples, and
/// every sample belongs to a typed family (a histogram's `_bucket`, `_sum`, `_count`).
fn parse(text: &str) -> Scrape {
    let mut s = Scrape {
        text: text.to_string(),
        ..Default::default()
    };
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name.to_string()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            assert!(
                s.types.insert(name.into(), kind.into()).is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "line {line:?}");
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Labels::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                let (k, r) = rest.split_once("=\"").expect("label");
                let (v, r) = parse_label_value(r);
                assert!(labels.insert(k.to_string(), v).is_none(), "label {k} twice");
                if let Some(r) = r.strip_prefix(',') {
                    rest = r;
                    continue;
                }
                rest = r.strip_prefix('}').expect("closing brace");
                break;
            }
        }
        let value = rest.trim();
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("value {v:?}: {e}")),
        };
        let family = if s.types.contains_key(name) {
            name
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| name.strip_suffix(suf))
                .filter(|f| s.types.get(*f).is_some_and(|t| t == "histogram"))
                .unwrap_or_else(|| panic!("sample {name} of no typed family"))
        };
        assert!(s.types.contains_key(family));
        s.samples.push((name.to_string(), labels, v));
    }
    s
}

/// Every histogram series: buckets ascending in `le`, counts monotonic, ending in `+Inf`
/// equal to `_count`; every label set of a family has the same label names.
fn check_histograms_and_labels(s: &Scrape) {
    let mut label_names: HashMap<String, Vec<String>> = HashMap::new();
    for (name, labels, _) in &s.samples {
        let mut keys: Vec<String> = labels.keys().filter(|k| *k != "le").cloned().collect();
        keys.sort();
        let prev = label_names
            .entry(name.clone())
            .or_insert_with(|| keys.clone());
        assert_eq!(*prev, keys, "label names of {name} differ between series");
    }
    for (family, _) in s.types.iter().filter(|(_, t)| *t == "histogram") {
        let bucket = format!("{family}_bucket");
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for (name, labels, v) in &s.samples {
            if *name == bucket {
                let mut l = labels.clone();
                let le = l.remove("le").expect("le label");
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                series.entry(l).or_default().push((le, *v));
            }
        }
        assert!(!series.is_empty(), "{family} has no buckets");
        for (labels, buckets) in series {
            for w in buckets.windows(2) {
                assert!(w[0].0 < w[1].0, "{family}{labels:?} le not ascending");
                assert!(w[0].1 <= w[1].1, "{family}{labels:?} counts not monotonic");
            }
            let (le, inf) = *buckets.last().unwrap();
            assert!(le.is_infinite(), "{family}{labels:?} lacks +Inf");
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(
                s.value(&format!("{family}_count"), &l),
                inf,
                "{family}{labels:?}"
            );
            assert!(s.get(&format!("{family}_sum"), &l).is_some());
        }
    }
}

/// `promtool check metrics` on the scrape: it must be installed (scripts/install-deps.sh).
fn promtool(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, scripts/install-deps.sh) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics on {what}: {report}\n{text}"
    );
}

/// GET `path` over HTTP/1.1; returns (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn scrape(addr: SocketAddr, what: &str) -> Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{what}");
    promtool(&body, what);
    let s = parse(&body);
    check_histograms_and_labels(&s);
    s
}

/// The endpoint a process logged (`metrics endpoint listening ... bound=ADDR`).
fn bound_in_log(path: &std::path::Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("metrics endpoint listening"))
        {
            let addr = line.split("bound=").nth(1).expect("bound=").trim();
            return addr.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}"));
        }
        assert!(Instant::now() < deadline, "no metrics endpoint in {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

const COUNTED: [&str; 4] = ["CREATE", "WRITE", "LOCK", "CLOSE"];

#[test]
fn metrics_endpoints_count_a_real_clients_requests() {
    let Some(py) = python() else {
        missing("python with smbprotocol (SMBD_PYTHON)");
        return;
    };
    let sockets = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(ClusterOptions {
        server_extra: format!(
            "metrics_listen = \"127.0.0.1:0\"\nstatus_socket = \"{}/{{node}}.sock\"\n",
            sockets.path().display()
        ),
        lockmgrd_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..ClusterOptions::default()
    });
    let lm_addr = bound_in_log(&cluster.dir.path().join("lockmgrd.log"));
    let n1_addr = bound_in_log(&cluster.nodes[0].log);
    let n2_addr = bound_in_log(&cluster.nodes[1].log);
    assert!(lm_addr.ip().is_loopback() && n1_addr.ip().is_loopback());
    assert!(http_get(n1_addr, "/other").0.starts_with("HTTP/1.1 404"));

    let lm0 = scrape(lm_addr, "lockmgrd");
    let n1_0 = scrape(n1_addr, "node1");
    let n2_0 = scrape(n2_addr, "node2");
    assert_eq!(lm0.value("lockmgrd_nodes_connected", &[]), 2.0);
    assert_eq!(lm0.types["lockmgrd_requests_total"], "counter");
    assert_eq!(n1_0.types["smbd_request_duration_seconds"], "histogram");
    assert_eq!(n1_0.types["smbd_opens"], "gauge");
    assert_eq!(n1_0.value("smbd_lockmgr_sessions_started_total", &[]), 1.0);
    assert_eq!(n1_0.value("smbd_connections", &[]), 0.0);

    let mut client = cluster
        .client_command(&py)
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/cluster_common/metrics_client.py"),
        )
        .args([
            &cluster.host(0),
            &cluster.port(0).to_string(),
            USER,
            PASS,
            "counted.txt",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "HELD", "{}", cluster.logs());

    // While the client holds its open and lock.
    let n1_h = scrape(n1_addr, "node1 holding");
    let lm_h = scrape(lm_addr, "lockmgrd holding");
    for (g, v) in [
        ("smbd_connections", 1.0),
        ("smbd_sessions", 1.0),
        ("smbd_tree_connects", 1.0),
        ("smbd_opens", 1.0),
        ("smbd_byte_range_locks", 1.0),
    ] {
        assert_eq!(n1_h.value(g, &[]), v, "{g}\n{}", n1_h.text);
    }
    assert_eq!(lm_h.value("lockmgrd_locks", &[]), 1.0);
    assert_eq!(lm_h.value("lockmgrd_opens", &[]), 1.0);
    assert_eq!(
        scrape(n2_addr, "node2 holding").value("smbd_opens", &[]),
        0.0
    );
    // The smbstatus-like view of each node.
    let status = |node: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_smbd"))
            .args(["status", "--socket"])
            .arg(sockets.path().join(format!("{node}.sock")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let st1 = status("node1");
    let session = st1
        .lines()
        .skip_while(|l| !l.starts_with("SESSIONS"))
        .nth(2)
        .unwrap_or_default();
    for want in [USER, "127.0.0.1:", "3.1.1", "required", SHARE] {
        assert!(session.contains(want), "{want} in {session:?}\n{st1}");
    }
    let open = st1
        .lines()
        .find(|l| l.ends_with("counted.txt") && !l.contains("exclusive"))
        .unwrap_or_else(|| panic!("no open file in\n{st1}"));
    // GENERIC_READ | GENERIC_WRITE mapped (MS-SMB2 2.2.13.1.1), FILE_SHARE_READ only.
    for want in [SHARE, " R-- ", "0x12019f"] {
        assert!(open.contains(want), "{want} in {open:?}");
    }
    let lock = st1
        .lines()
        .find(|l| l.contains("exclusive"))
        .unwrap_or_else(|| panic!("no lock in\n{st1}"));
    let fields: Vec<&str> = lock.split_whitespace().collect();
    assert_eq!(
        fields[2..],
        ["0", "10", "exclusive", "counted.txt"],
        "{lock}"
    );
    let st2 = status("node2");
    assert!(!st2.contains("counted.txt") && !st2.contains(USER), "{st2}");

    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "DONE");
    assert!(client.wait().unwrap().success());

    // The connection's end is processed by its worker after the client left.
    let deadline = Instant::now() + Duration::from_secs(30);
    let n1_1 = loop {
        let s = scrape(n1_addr, "node1 after");
        if s.value("smbd_connections", &[]) == 0.0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for g in [
        "smbd_connections",
        "smbd_sessions",
        "smbd_tree_connects",
        "smbd_opens",
        "smbd_byte_range_locks",
    ] {
        assert_eq!(n1_1.value(g, &[]), 0.0, "{g}");
    }
    assert_eq!(delta(&n1_0, &n1_1, "smbd_connections_total", &[]), 1.0);
    // Exactly what the client sent: CREATE, WRITE, LOCK + unlock, CLOSE.
    for (cmd, n) in COUNTED.iter().zip([1.0, 1.0, 2.0, 1.0]) {
        let l = [("command", *cmd)];
        assert_eq!(
            delta(&n1_0, &n1_1, "smbd_requests_total", &l),
            n,
            "{cmd}\n{}",
            n1_1.text
        );
        assert_eq!(
            delta(&n1_0, &n1_1, "smbd_request_duration_seconds_count", &l),
            n,
            "{cmd}"
        );
    }
    for cmd in ["TREE_CONNECT", "TREE_DISCONNECT", "LOGOFF"] {
        assert_eq!(
            delta(&n1_0, &n1_1, "smbd_requests_total", &[("command", cmd)]),
            1.0,
            "{cmd}"
        );
    }
    // Node 2 served nothing.
    let n2_1 = scrape(n2_addr, "node2 after");
    for cmd in COUNTED {
        assert_eq!(
            delta(&n2_0, &n2_1, "smbd_requests_total", &[("command", cmd)]),
            0.0
        );
    }
    // The lock and the unlock crossed to lockmgrd once each, seen at both ends.
    let lm1 = scrape(lm_addr, "lockmgrd after");
    for kind in ["lock", "unlock"] {
        let node = delta(
            &n1_0,
            &n1_1,
            "smbd_lockmgr_requests_total",
            &[("kind", kind)],
        );
        let lm = delta(&lm0, &lm1, "lockmgrd_requests_total", &[("kind", kind)]);
        assert_eq!(node, 1.0, "{kind}");
        assert_eq!(lm, 1.0, "{kind}");
    }
    assert!(delta(&lm0, &lm1, "lockmgrd_locks_granted_total", &[]) >= 1.0);
    assert!(
        delta(
            &n1_0,
            &n1_1,
            "smbd_lockmgr_request_duration_seconds_count",
            &[]
        ) >= 2.0
    );
    assert_eq!(lm1.value("lockmgrd_locks", &[]), 0.0);
    assert_eq!(lm1.value("lockmgrd_opens", &[]), 0.0);

    // Breaks: in each scenario node 2's client holds a batch oplock / an RWH lease and node 1's
    // client opens the file, so node 2 sends exactly one break of each kind.
    for scenario in ["oplock", "lease"] {
        let out = cluster
            .client_command(&py)
            .arg(client_script())
            .args([
                &format!("{},{}", cluster.host(0), cluster.host(1)),
                &cluster.port(0).to_string(),
                &cluster.port(1).to_string(),
                USER,
                PASS,
                scenario,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(&format!("PASS {scenario}")), "{text}");
    }
    let n1_2 = scrape(n1_addr, "node1 after breaks");
    let n2_2 = scrape(n2_addr, "node2 after breaks");
    let lm2 = scrape(lm_addr, "lockmgrd after breaks");
    for kind in ["oplock", "lease"] {
        let l = [("kind", kind)];
        assert_eq!(
            delta(&n2_1, &n2_2, "smbd_breaks_sent_total", &l),
            1.0,
            "{kind}"
        );
        assert_eq!(
            delta(&n1_1, &n1_2, "smbd_breaks_sent_total", &l),
            0.0,
            "{kind}"
        );
    }
    assert_eq!(delta(&lm1, &lm2, "lockmgrd_breaks_sent_total", &[]), 2.0);
    assert_eq!(delta(&lm1, &lm2, "lockmgrd_breaks_acked_total", &[]), 2.0);
}

/// Metrics are unauthenticated: a non-loopback address is refused unless the configuration
/// says `metrics_allow_remote = true`, by smbd and by lockmgrd. The address is TEST-NET-1
/// (RFC 5737), which this host does not have: without the check the bind fails with another
/// message, and nothing ever listens beyond loopback.
#[test]
fn non_loopback_metrics_address_needs_explicit_config() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let run_smbd = |extra: &str| {
        let cfg = dir.path().join("smbd.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n{extra}\n[[share]]\nname = \"d\"\npath = \"{}\"\n",
                share.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_smbd"))
            .arg("--config")
            .arg(&cfg)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        (first, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (first, err) = run_smbd("metrics_listen = \"192.0.2.1:0\"\n");
    assert!(first.is_empty(), "smbd started: {first}");
    assert!(err.contains("metrics_allow_remote"), "{err}");
    // (metrics_allow_remote = true is checked without binding a public address: the
    // config unit test and clustersmb_metrics' check_listen test.)
    let (first, err) = run_smbd("metrics_listen = \"127.0.0.1:0\"\n");
    assert!(first.starts_with("smbd listening on"), "{first}{err}");

    let key = dir.path().join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new(lockmgrd_bin())
        .args(["--transport", "udp", "--listen", "127.0.0.1:0"])
        .arg("--cluster-key-file")
        .arg(&key)
        .args(["--metrics-listen", "192.0.2.1:0"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("metrics_allow_remote"), "{text}");
}

/// A replicated lock manager: the primary reports its role, epoch and standby; when it is
/// SIGKILLed, the node's session resumes on the standby and the node counts one failover.
#[test]
fn replicated_lockmgrd_role_and_node_failover_are_reported() {
    let Some(mut cluster) = Cluster::try_start(ClusterOptions {
        nodes: 1,
        replicated: true,
        server_extra: "metrics_listen = \"127.0.0.1:0\"\n".into(),
        lockmgrd_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..ClusterOptions::default()
    }) else {
        return;
    };
    let lm_addr = bound_in_log(&cluster.dir.path().join("lockmgrd.log"));
    let n1_addr = bound_in_log(&cluster.nodes[0].log);
    let lm = scrape(lm_addr, "primary");
    assert_eq!(
        lm.value("lockmgrd_replica_role", &[("role", "primary")]),
        1.0
    );
    assert_eq!(
        lm.value("lockmgrd_replica_role", &[("role", "standby")]),
        0.0
    );
    // Epoch 1 named this replica alone; recording the standby made epoch 2.
    assert!(
        lm.value("lockmgrd_replica_epoch", &[]) >= 2.0,
        "{}",
        lm.text
    );
    assert_eq!(lm.value("lockmgrd_standby_attached", &[]), 1.0);
    assert!(lm.get("lockmgrd_standby_lag", &[]).is_some());
    assert_eq!(lm.value("lockmgrd_failovers_total", &[]), 0.0);
    let n1 = scrape(n1_addr, "node before");
    assert_eq!(n1.value("smbd_lockmgr_failovers_total", &[]), 0.0);
    assert_eq!(n1.value("smbd_lockmgr_sessions_started_total", &[]), 1.0);

    cluster.kill_lockmgrd();
    // The node notices the silence and resumes on the standby, on its own schedule.
    let deadline = Instant::now() + Duration::from_secs(60);
    let n1 = loop {
        let s = scrape(n1_addr, "node after");
        if s.value("smbd_lockmgr_failovers_total", &[]) >= 1.0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        n1.value("smbd_lockmgr_failovers_total", &[]),
        1.0,
        "{}",
        cluster.logs()
    );
    assert_eq!(n1.value("smbd_lockmgr_sessions_started_total", &[]), 1.0);
    assert_eq!(n1.value("smbd_lockmgr_fencings_total", &[]), 0.0);
}
