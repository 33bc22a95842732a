//! The all-active cluster end to end: one lockmgrd process (shared memory) and two smbd
//! processes serving one directory, with a real SMB client (Python smbprotocol) connected to
//! each node. Every scenario makes node 2's client hold something and checks that node 1's
//! client sees it (tests/cluster_common/cluster_client.py).
//!
//! `separate_lock_managers_fail_the_scenarios` runs the same scenarios against two nodes that
//! do NOT share a lockmgrd and requires them to fail: it shows the scenarios can tell a cluster
//! from two independent servers.

mod cluster_common;
use cluster_common::*;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn run_scenario(cluster: &Cluster, py: &str, scenario: &str) -> (bool, String) {
    let out = cluster
        .client_command(py)
        .arg(client_script())
        .args([
            &format!("{},{}", cluster.host(0), cluster.host(1)),
            &cluster.port(0).to_string(),
            &cluster.port(1).to_string(),
            USER,
            PASS,
            scenario,
        ])
        .env("NOTIFY_SHARE_DIR", &cluster.share)
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let ok = out.status.success() && text.contains(&format!("PASS {scenario}"));
    (ok, text)
}

fn scenario(name: &str) {
    scenario_with(name, |_| {});
}

/// `scenario` with `setup` run on the shared directory before the clients start.
fn scenario_with(name: &str, setup: impl FnOnce(&std::path::Path)) {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let cluster = Cluster::start(ClusterOptions::default());
    setup(&cluster.share);
    let (ok, text) = run_scenario(&cluster, &py, name);
    assert!(ok, "{name}:\n{text}\n{}", cluster.logs());
}

/// Issue 12, change notify: node 1's client watching a directory gets the creates, renames and
/// deletes node 2's client makes there, filtered by its CompletionFilter, and a file created
/// directly in the directory (not through SMB), each exactly once.
#[test]
fn cross_node_change_notify() {
    scenario("notify");
}

/// A counter of `lockmgrctl status` ("name=value").
fn status_counter(status: &str, name: &str) -> Option<u64> {
    status
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// Issue 12, change notify through lockmgrd: both nodes without inotify
/// (`change_notify = "lockmgr"`), `scenario` in
/// cluster_client.py; then lockmgrd's counters must show exactly `changes` changes received
/// and forwarded: none for the changes made in directories nobody watches.
fn notify_through_lockmgrd(scenario: &str, changes: u64) {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let cluster = Cluster::start(ClusterOptions {
        server_extra: "change_notify = \"lockmgr\"".into(),
        ..ClusterOptions::default()
    });
    let (ok, text) = run_scenario(&cluster, &py, scenario);
    assert!(ok, "{scenario}:\n{text}\n{}", cluster.logs());
    let st = cluster.status().expect("lockmgrctl status");
    assert_eq!(
        (
            status_counter(&st, "dir_changes_total"),
            status_counter(&st, "dir_changes_forwarded_total")
        ),
        (Some(changes), Some(changes)),
        "{st}"
    );
}

/// Node 2's create, write, rename, delete and move-in reach node 1's watcher through
/// lockmgrd, exactly. lockmgrd sees 8 changes: those 6 and the MODIFIED (ATTRIBUTES |
/// CREATION) each file rename also reports (outside the watcher's filter: node 1 drops them);
/// the 3 changes in the unwatched directory (a file's creation, write and move out) cause no
/// lockmgrd traffic.
#[test]
fn cross_node_change_notify_through_lockmgrd() {
    notify_through_lockmgrd("notifylm", 8);
}

/// A watched directory deleted by a client of the other node ends the watcher's waiting
/// CHANGE_NOTIFY with STATUS_DELETE_PENDING, as on one node: one change through lockmgrd
/// (the directory's delete-pending; its removal at the watcher's close is in a directory
/// nobody watches).
#[test]
fn cross_node_change_notify_ends_when_the_directory_is_deleted() {
    notify_through_lockmgrd("notifylmrmdir", 1);
}

/// WATCH_TREE through lockmgrd: changes one and two levels below the watched directory
/// reach the tree watcher under their path from it; the flat watcher gets only its own.
#[test]
fn cross_node_change_notify_tree_through_lockmgrd() {
    notify_through_lockmgrd("notifylmtree", 5);
}

/// Issue 12, delayed write time (MS-FSA 2.1.5.14.2): the LastWriteTime node 1's writes,
/// FLUSH and FileBasicInformation make is what node 2 reports; a time set through node 1's
/// handle sticks over its later writes and its close.
#[test]
fn cross_node_write_time() {
    scenario("writetime");
}

/// Issue 12: LastWriteTime lives in the DOS xattr beside the kernel mtime it was recorded
/// with; a local process's `touch -d` or plain write makes both nodes report the kernel's
/// time again, and SMB writes after that are delayed from it.
#[test]
fn cross_node_outside_change_moves_write_time() {
    scenario("outsidetime");
}

/// Issue 12: node 2's close does not end node 1's hold on a file both wrote: node 1's later
/// write still does not move the LastWriteTime either node reports (each node counts once
/// in the holders kept in the DOS xattr).
#[test]
fn cross_node_one_close_leaves_the_other_nodes_hold() {
    scenario("twowriters");
}

/// Issue 12: a write to a named stream moves its file's LastWriteTime by the delayed rule
/// (not at once; at the stream open's FLUSH and close), seen on both nodes.
#[test]
fn cross_node_stream_write_moves_file_write_time() {
    scenario("streamtime");
}

/// Issue 12: a delayed LastWriteTime update pending when a durable handle's transport drops
/// is applied at the disconnect, and node 2 sees it.
#[test]
fn cross_node_durable_disconnect_applies_write_time() {
    scenario("durabletime");
}

#[test]
fn cross_node_share_mode_conflict() {
    scenario("sharemode");
}

#[test]
fn cross_node_byte_range_conflict() {
    scenario("brl");
}

/// I/O grants across nodes: node 1's writes go without a lockmgrd round trip, node 2's
/// lock recalls the grant first, and node 1's next write into the range conflicts. Fails
/// if lockmgrd granted the lock without the recall, or if the node kept using a recalled
/// grant.
#[test]
fn cross_node_io_grant_recalled_before_lock() {
    scenario("iogrant");
}

#[test]
fn cross_node_blocking_lock_granted_on_unlock() {
    scenario("blocking");
}

#[test]
fn cross_node_batch_oplock_break() {
    scenario("oplock");
}

/// A dead client on node 2 (its TCP stops acknowledging) holding a batch oplock: node 2 drops
/// its channel once the break relayed by lockmgrd goes unacknowledged, its open is closed in
/// lockmgrd, and node 1's open goes on without the 35 s break timeout.
#[test]
fn cross_node_dead_client_loses_its_oplock_when_its_break_goes_unacknowledged() {
    scenario("deadclient");
}

#[test]
fn cross_node_lease_break() {
    scenario("lease");
}

/// Rename conflicts across nodes (MS-FSA 2.1.5.14.11, and the sharing check of the open of the
/// new name's directory that Windows makes for a rename): an open of that directory on node 2
/// that does not share write, or that holds DELETE, and an open of the replaced target on
/// node 2, stop node 1's renames; an open of the directory sharing read and write does not;
/// both succeed once node 2 closes.
#[test]
fn cross_node_rename_conflicts() {
    scenario("rename");
}

#[test]
fn cross_node_delete_on_close() {
    scenario("doc");
}

/// Issue 12 item 6: node 2's plain open leaves node 1's lease its handle caching (RH, with a
/// durable handle); node 2's Level II oplock takes it (R).
#[test]
fn cross_node_lease_keeps_handle_caching_next_to_plain_open() {
    scenario("leaseh");
}

/// Issue 12 item 3: node 2's stream open without FILE_SHARE_DELETE stops node 1's DELETE
/// open of the file; the file delete-pending through node 1 refuses node 2's stream opens.
#[test]
fn cross_node_stream_shares_its_file_delete_state() {
    scenario("streams");
}

/// Issue 12 item 9: node 1 makes one hard link delete-pending; node 2's handle of that link
/// reports it, its handle of the other link does not, and the other link stays openable.
#[test]
fn cross_node_delete_pending_belongs_to_the_link() {
    scenario_with("links", |share| {
        std::fs::write(share.join("links-a.txt"), b"links").unwrap();
        std::fs::hard_link(share.join("links-a.txt"), share.join("links-b.txt")).unwrap();
    });
}

#[test]
fn killed_node_releases_its_locks_to_waiters_on_other_nodes() {
    kill_scenario(ClusterOptions::default());
}

/// Over UDP lockmgrd learns of the death when the node's liveness lease (1 s) runs out.
#[test]
fn udp_killed_node_releases_its_locks_to_waiters_on_other_nodes() {
    kill_scenario(ClusterOptions {
        transport: LockTransportKind::Udp,
        ..ClusterOptions::default()
    });
}

#[test]
fn udp_cross_node_blocking_lock_and_oplock_break() {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let cluster = Cluster::start(ClusterOptions {
        transport: LockTransportKind::Udp,
        ..ClusterOptions::default()
    });
    for name in ["blocking", "oplock", "lease", "sharemode"] {
        let (ok, text) = run_scenario(&cluster, &py, name);
        assert!(ok, "{name} over udp:\n{text}\n{}", cluster.logs());
    }
}

/// The scenarios with lockmgrd and each node in its own network namespace on one bridge: the
/// lock traffic is raw Ethernet frames (AF_PACKET or AF_XDP sockets in smbd and lockmgrd), the
/// SMB traffic TCP over the same bridge.
fn eth_scenarios(transport: LockTransportKind) {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let Some(cluster) = Cluster::try_start(ClusterOptions {
        transport,
        ..ClusterOptions::default()
    }) else {
        return;
    };
    for name in ["sharemode", "brl", "blocking", "oplock", "lease", "doc"] {
        let (ok, text) = run_scenario(&cluster, &py, name);
        assert!(ok, "{name} over {transport:?}:\n{text}\n{}", cluster.logs());
    }
}

#[test]
fn afpacket_cross_node_scenarios() {
    eth_scenarios(LockTransportKind::AfPacket);
}

#[test]
fn afxdp_cross_node_scenarios() {
    eth_scenarios(LockTransportKind::AfXdp);
}

/// Over AF_XDP, as over UDP, lockmgrd learns of the death from the liveness lease.
#[test]
fn afxdp_killed_node_releases_its_locks_to_waiters_on_other_nodes() {
    kill_scenario(ClusterOptions {
        transport: LockTransportKind::AfXdp,
        ..ClusterOptions::default()
    });
}

/// A client's durable handle (with its lease and byte-range lock) outlives its node: after
/// node 2 is SIGKILLed the lock still holds against another client on node 1, and the client
/// reclaims the handle through node 1 with DH2C (tests/cluster_common/durable_client.py).
#[test]
fn durable_handle_reclaimed_through_another_node_after_node_death() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cluster_common/durable_client.py");
    kill_scenario_with(ClusterOptions::default(), &script, "durable");
}

/// A persistent handle on a continuously available share (MS-SMB2 3.3.5.9.10) outlives both
/// its node and the lock manager's primary, which die together: with no oplock and no lease
/// (a durable handle would be dropped), the file is unavailable to others while the open is
/// disconnected, and the client reclaims handle, data and byte-range lock through node 1
/// (tests/cluster_common/durable_client.py, scenario "persistent").
#[test]
fn persistent_handle_survives_node_and_lockmgrd_primary_death() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cluster_common/durable_client.py");
    interactive_scenario(
        ClusterOptions {
            replicated: true,
            share_extra: "continuous_availability = true".into(),
            ..ClusterOptions::default()
        },
        &script,
        "persistent",
        "KILL-NODE2",
        |cluster| {
            cluster.nodes[1].kill();
            cluster.kill_lockmgrd();
        },
    );
}

fn kill_scenario(opts: ClusterOptions) {
    kill_scenario_with(opts, &client_script(), "kill");
}

/// `scenario` of `script` prints KILL-NODE2 when node 2 should die (SIGKILL).
fn kill_scenario_with(opts: ClusterOptions, script: &std::path::Path, scenario: &str) {
    interactive_scenario(opts, script, scenario, "KILL-NODE2", |cluster| {
        // Node 2's lock must be visible in lockmgrd before the kill...
        if let Some(st) = cluster.status() {
            assert!(
                st.contains("node2"),
                "node2 missing from lockmgrd status:\n{st}"
            );
        }
        cluster.nodes[1].kill();
    });
}

/// lockmgrd is SIGKILLed while node 1's client holds a byte-range lock, and restarted: node 1
/// drops that client's connection (the lock is enforced nowhere any more; keeping the handle
/// would let node 2 be granted a conflicting lock behind the client's back), and node 2's
/// client gets the range once its node has reconnected.
#[test]
fn lockmgrd_restart_drops_connections_whose_locks_were_lost() {
    interactive_scenario(
        ClusterOptions::default(),
        &client_script(),
        "lmrestart",
        "RESTART-LOCKMGRD",
        |cluster| {
            cluster.kill_lockmgrd();
            cluster.start_lockmgrd();
        },
    );
}

/// A replicated lock manager (primary + standby, epochs in etcd): the primary is SIGKILLed
/// while node 1's client holds a byte-range lock. The standby takes over, both nodes resume
/// their sessions on it, and node 1's client keeps its handle and its lock: node 2's client
/// still conflicts with it until node 1 unlocks (compare the restart test above, where the
/// lock is lost and the connection must go).
#[test]
fn lockmgrd_failover_keeps_every_lock_and_connection() {
    interactive_scenario(
        ClusterOptions {
            replicated: true,
            ..ClusterOptions::default()
        },
        &client_script(),
        "lmfailover",
        "FAILOVER-LOCKMGRD",
        |cluster| cluster.kill_lockmgrd(),
    );
}

/// Issue 12: change-notify registrations are replicated lockmgrd state. Node 1's watch,
/// registered with the primary, is the standby's after the primary's SIGKILL: node 2's
/// change after the failover still reaches node 1's watcher (both nodes without inotify).
#[test]
fn change_notify_through_lockmgrd_survives_failover() {
    interactive_scenario(
        ClusterOptions {
            replicated: true,
            server_extra: "change_notify = \"lockmgr\"".into(),
            ..ClusterOptions::default()
        },
        &client_script(),
        "notifylmfailover",
        "FAILOVER-LOCKMGRD",
        |cluster| cluster.kill_lockmgrd(),
    );
}

/// Issue 12, change notify on a cluster filesystem: each node serves the share through its own
/// FUSE mount (bindfs) of one directory, so each node's inotify sees only its own machine's
/// side, as on NFS or CephFS; `change_notify` is left at "auto", which must pick "cluster" for
/// FUSE. Another process's create, rename and delete through node 2's mount reach node 1's
/// watcher through node 2 and lockmgrd; node 2's client's create arrives once, not again from
/// node 2's inotify; a create through node 1's own mount arrives from node 1's inotify.
#[test]
fn change_notify_on_a_cluster_filesystem_sees_every_nodes_processes() {
    interactive_scenario(
        ClusterOptions {
            node_mounts: true,
            log_filter: Some("info,smbd::shared=debug".into()),
            ..ClusterOptions::default()
        },
        &client_script(),
        "notifycfs",
        "WATCHING",
        |cluster| {
            // lockmgrd tells node 2 of node 1's watch asynchronously: what a process does
            // through node 2's mount before node 2 watches the directory is not seen (as with
            // any change made before a watch starts).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !cluster.nodes[1]
                .log()
                .contains("watching for other nodes: changes made here outside SMB are passed on")
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        },
    );
}

/// Runs `scenario` of `script` (cluster_client.py or a sibling with the same command line),
/// which prints `marker` and then waits for one line on stdin; `act` runs at that point (kill
/// a node, restart lockmgrd).
fn interactive_scenario(
    opts: ClusterOptions,
    script: &std::path::Path,
    scenario: &str,
    marker: &str,
    act: impl FnOnce(&mut Cluster),
) {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let Some(mut cluster) = Cluster::try_start(opts) else {
        return;
    };
    let child = cluster
        .client_command(&py)
        .arg(script)
        .args([
            &format!("{},{}", cluster.host(0), cluster.host(1)),
            &cluster.port(0).to_string(),
            &cluster.port(1).to_string(),
            USER,
            PASS,
            scenario,
        ])
        .env("NOTIFY_SHARE_DIR", &cluster.share)
        .env(
            "NODE_MOUNTS",
            std::env::join_paths(&cluster.mounts).expect("mount paths"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let run = drive_marked_script(child, marker, || act(&mut cluster));
    assert!(
        run.status.success() && run.stdout.contains(&format!("PASS {scenario}")),
        "{}{}\n{}",
        run.stdout,
        run.stderr,
        cluster.logs()
    );
    if scenario == "kill" {
        // ...and gone from it afterwards.
        if let Some(st) = cluster.status() {
            assert!(
                !st.lines().any(|l| l.contains("node2")),
                "the killed node still holds state:\n{st}"
            );
        }
    }
}

#[test]
fn separate_lock_managers_fail_the_scenarios() {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    let cluster = Cluster::start(ClusterOptions {
        shared_lockmgr: false,
        ..ClusterOptions::default()
    });
    for name in ["sharemode", "brl", "blocking", "oplock", "lease", "rename"] {
        let (ok, text) = run_scenario(&cluster, &py, name);
        assert!(
            !ok,
            "{name} passed on two nodes without a shared lock manager:\n{text}"
        );
    }
}

#[test]
fn smbclient_lists_through_both_nodes() {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default());
    std::fs::write(cluster.share.join("hello.txt"), b"hi").unwrap();
    for i in 0..2 {
        let out = Command::new("smbclient")
            .arg(format!("//127.0.0.1/{SHARE}"))
            .args(["-p", &cluster.port(i).to_string()])
            .arg("-s")
            .arg(&cluster.client_conf)
            .args(["-U", &format!("{USER}%{PASS}"), "-c", "ls"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("hello.txt"),
            "node {i}:\n{text}\n{}",
            cluster.logs()
        );
    }
    let st = cluster.status().expect("lockmgrctl next to lockmgrd");
    assert!(st.contains("node1") && st.contains("node2"), "{st}");
}

/// lockmgrd down: the nodes keep serving sessions but refuse lock-dependent operations with a
/// clean status; once lockmgrd is back (restarted, empty) they reconnect and work again.
#[test]
fn nodes_refuse_cleanly_while_lockmgrd_is_down_and_recover() {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions::default());
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("up.txt"), b"payload").unwrap();
    let (ok, text) = cluster.smbclient(0, local.path(), "put up.txt a.txt");
    assert!(ok, "{text}\n{}", cluster.logs());
    cluster.kill_lockmgrd();
    let (ok, text) = cluster.smbclient(0, local.path(), "put up.txt b.txt");
    assert!(!ok, "a create succeeded without a lock manager:\n{text}");
    assert!(
        text.contains("NT_STATUS_REQUEST_NOT_ACCEPTED"),
        "unexpected failure:\n{text}"
    );
    assert!(cluster.nodes[0]
        .child
        .as_mut()
        .unwrap()
        .try_wait()
        .unwrap()
        .is_none());
    cluster.start_lockmgrd();
    // The node retries every 500 ms; allow a generous while for a loaded machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (ok, text) = cluster.smbclient(0, local.path(), "put up.txt c.txt");
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node did not recover:\n{text}\n{}",
            cluster.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read(cluster.share.join("c.txt")).unwrap(),
        b"payload"
    );
}

/// The shared-counter workload across two nodes (four clients, two per node, taking turns on
/// one exclusive byte-range lock: blocking LOCK, READ, WRITE, UNLOCK; the client is smbbench's,
/// bench/scripts/smb_handoff.py). Every hand-off between nodes is a blocking LOCK completed
/// through the waiting node's lockmgr pump, so each one depends on the pump being woken. The
/// pump logs a "lost wake-up" warning each time its safety-net timeout finds frames from
/// lockmgrd that nothing announced: there must be none (the workers' 1 s timer tick used to
/// disarm the shared-memory doorbell under the sleeping pump). The counter must equal the
/// number of turns (the lock serialised every update).
#[test]
fn shared_counter_hand_offs_lose_no_pump_wake_up() {
    let Some(py) = python() else {
        missing(
            "no python with smbprotocol (set SMBD_PYTHON; scripts/install-deps.sh makes a venv)",
        );
        return;
    };
    const CLIENTS: usize = 4;
    // Enough turns to span several of the workers' 1 s timer ticks on both nodes.
    const TURNS: usize = 1500;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/scripts/smb_handoff.py");
    let cluster = Cluster::start(ClusterOptions::default());
    let go = cluster.dir.path().join("go");
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let node = i % 2;
        let child = cluster
            .client_command(&py)
            .arg(&script)
            .args([
                "turns",
                &cluster.host(node),
                &cluster.port(node).to_string(),
                USER,
                PASS,
                "counter.bin",
                &TURNS.to_string(),
            ])
            .arg(&go)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python");
        clients.push(child);
    }
    let mut outputs = Vec::new();
    for c in &mut clients {
        let mut out = BufReader::new(c.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read client");
        assert_eq!(
            line.trim(),
            "READY",
            "client did not connect\n{}",
            cluster.logs()
        );
        outputs.push(out);
    }
    std::fs::write(&go, b"").unwrap();
    let mut turns = 0;
    for (c, mut out) in clients.into_iter().zip(outputs) {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out, &mut text).expect("read client");
        let res = c.wait_with_output().expect("wait for client");
        assert!(
            res.status.success() && text.contains(&format!("DONE {TURNS}")),
            "client failed: {text}{}\n{}",
            String::from_utf8_lossy(&res.stderr),
            cluster.logs()
        );
        turns += text.lines().filter(|l| l.starts_with("T ")).count();
    }
    assert_eq!(turns, CLIENTS * TURNS);
    let out = cluster
        .client_command(&py)
        .arg(&script)
        .args([
            "counter",
            &cluster.host(0),
            &cluster.port(0).to_string(),
            USER,
            PASS,
            "counter.bin",
        ])
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("COUNTER {}", CLIENTS * TURNS)),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in &cluster.nodes {
        let log = n.log();
        assert_eq!(
            log.matches("lost wake-up").count(),
            0,
            "{}'s lockmgr pump lost wake-ups:\n{log}",
            n.name
        );
    }
}
