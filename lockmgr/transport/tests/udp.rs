//! UDP transport tests.
// Raw sockets and poll(2) to attack or watch the transport from outside: test-only unsafe.
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockmgr_transport::udp::{FaultConfig, UdpClient, UdpConfig, UdpServer};
use lockmgr_transport::{
    ClientTransport, PeerId, ServerEvent, ServerTransport, SpinConfig, TransportError, MAX_FRAME,
};

/// The test cluster's fabric secret (every datagram server needs one).
fn keyed() -> UdpConfig {
    UdpConfig {
        fabric_key: Some(lockmgr_transport::FabricKey::new([7; 32])),
        ..UdpConfig::default()
    }
}

/// Only to avoid hanging forever when something is broken; never a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);
/// The other process of the multi-process tests.
const CHILD_EXE: &str = env!("CARGO_BIN_EXE_transport-test-child");

/// A `wait` that lasts this long while a frame is in flight means a lost wake-up. Only a guard
/// against hanging; normal wake-ups are microseconds.
const LOST_WAKEUP: Duration = Duration::from_secs(30);

fn wait_no_timeout(s: &mut dyn ServerTransport) {
    let t = Instant::now();
    s.wait(Some(LOST_WAKEUP)).unwrap();
    assert!(t.elapsed() < LOST_WAKEUP, "lost wake-up");
}

#[derive(Debug, PartialEq, Eq, Clone)]
enum Ev {
    Connected(PeerId),
    Frame(PeerId, Vec<u8>),
    Disconnected(PeerId),
}

fn poll_events(s: &mut dyn ServerTransport, out: &mut Vec<Ev>) -> usize {
    s.poll(&mut |ev| {
        out.push(match ev {
            ServerEvent::Connected(p) => Ev::Connected(p),
            ServerEvent::Frame(p, b) => Ev::Frame(p, b.to_vec()),
            ServerEvent::Disconnected(p) => Ev::Disconnected(p),
        })
    })
    .unwrap()
}

fn server_until(s: &mut dyn ServerTransport, out: &mut Vec<Ev>, pred: impl Fn(&[Ev]) -> bool) {
    let start = Instant::now();
    while !pred(out) {
        assert!(start.elapsed() < HANG_GUARD, "timed out; events: {out:?}");
        if poll_events(s, out) == 0 {
            s.wait(Some(Duration::from_millis(5))).unwrap();
        }
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn connect_pair(server_cfg: UdpConfig, client_cfg: UdpConfig) -> (UdpServer, UdpClient, PeerId) {
    let mut server = UdpServer::bind(localhost(), server_cfg).unwrap();
    let addr = server.local_addr().unwrap();
    // connect() blocks on the handshake, which needs the server polling.
    let t = std::thread::spawn(move || UdpClient::connect(addr, client_cfg).unwrap());
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| !e.is_empty());
    let client = t.join().unwrap();
    let Ev::Connected(peer) = evs[0] else {
        panic!("{evs:?}")
    };
    (server, client, peer)
}

fn frame(i: u32, len: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; len.max(4)];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

/// Both directions at once, single thread; checks exactly-once in-order delivery.
fn exchange(server: &mut UdpServer, client: &mut UdpClient, peer: PeerId, n: u32) {
    let (mut sent_c, mut sent_s, mut got_s, mut got_c) = (0u32, 0u32, 0u32, 0u32);
    let start = Instant::now();
    while got_s < n || got_c < n {
        assert!(
            start.elapsed() < HANG_GUARD,
            "stuck: sent_c={sent_c} got_s={got_s} sent_s={sent_s} got_c={got_c}"
        );
        while sent_c < n {
            match client.send(&frame(sent_c, (sent_c as usize * 7) % 1400)) {
                Ok(()) => sent_c += 1,
                Err(TransportError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        while sent_s < n {
            match server.send(peer, &frame(sent_s, (sent_s as usize * 13) % 1400)) {
                Ok(()) => sent_s += 1,
                Err(TransportError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let a = server
            .poll(&mut |ev| match ev {
                ServerEvent::Frame(p, b) => {
                    assert_eq!(p, peer);
                    assert_eq!(b, &frame(got_s, (got_s as usize * 7) % 1400)[..]);
                    got_s += 1;
                }
                other => panic!("unexpected {other:?}"),
            })
            .unwrap();
        let b = client
            .poll(&mut |b| {
                assert_eq!(b, &frame(got_c, (got_c as usize * 13) % 1400)[..]);
                got_c += 1;
            })
            .unwrap();
        if a == 0 && b == 0 {
            // Let retransmission timers run without burning the CPU.
            client.wait(Some(Duration::from_micros(200))).unwrap();
        }
    }
}

#[test]
fn udp_many_frames_both_ways_in_order() {
    let (mut server, mut client, peer) = connect_pair(keyed(), keyed());
    exchange(&mut server, &mut client, peer, 5000);
}

#[test]
fn udp_lossy_and_duplicating_delivers_exactly_once_in_order() {
    let faulty = |seed| UdpConfig {
        faults: FaultConfig {
            drop_rate: 0.2,
            dup_rate: 0.2,
            seed,
            on_send: true,
            on_recv: true,
        },
        give_up: Duration::from_secs(20),
        ..keyed()
    };
    let (mut server, mut client, peer) = connect_pair(faulty(1), faulty(2));
    exchange(&mut server, &mut client, peer, 2000);
}

#[test]
fn udp_large_frames_and_too_large() {
    let (mut server, mut client, peer) = connect_pair(keyed(), keyed());
    let big: Vec<u8> = (0..MAX_FRAME).map(|i| (i * 31 % 256) as u8).collect();
    for _ in 0..10 {
        client.send(&big).unwrap();
    }
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| e.len() >= 10);
    assert!(evs.iter().all(|e| e == &Ev::Frame(peer, big.clone())));
    server.send(peer, &big).unwrap();
    server.send(peer, &[]).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 2 {
        assert!(start.elapsed() < HANG_GUARD);
        client.poll(&mut |b| got.push(b.to_vec())).unwrap();
        server.poll(&mut |_| {}).unwrap();
    }
    assert_eq!(got, vec![big, Vec::new()]);
    let too_big = vec![0u8; MAX_FRAME + 1];
    assert!(matches!(
        client.send(&too_big),
        Err(TransportError::FrameTooLarge { .. })
    ));
    assert!(matches!(
        server.send(peer, &too_big),
        Err(TransportError::FrameTooLarge { .. })
    ));
}

#[test]
fn udp_window_full_backpressure() {
    let cfg = UdpConfig {
        window: 8,
        ..keyed()
    };
    let (mut server, mut client, peer) = connect_pair(cfg, cfg);
    for i in 0..8 {
        client.send(&frame(i, 10)).unwrap();
    }
    assert!(matches!(
        client.send(&frame(8, 10)),
        Err(TransportError::Full)
    ));
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| e.len() >= 8);
    // Acks flow back (delayed ack timer), so the window opens again.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < HANG_GUARD);
        server.poll(&mut |_| {}).unwrap();
        client.poll(&mut |_| {}).unwrap();
        match client.send(&frame(8, 10)) {
            Ok(()) => break,
            Err(TransportError::Full) => client.wait(Some(Duration::from_millis(1))).unwrap(),
            Err(e) => panic!("{e}"),
        }
    }
    server_until(&mut server, &mut evs, |e| e.len() >= 9);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e, &Ev::Frame(peer, frame(i as u32, 10)));
    }
}

#[test]
fn udp_close_detected_both_ways() {
    let (mut server, client, peer) = connect_pair(keyed(), keyed());
    drop(client); // sends FIN
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| {
        e.contains(&Ev::Disconnected(peer))
    });

    let (server, mut client, _) = connect_pair(keyed(), keyed());
    drop(server);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < HANG_GUARD);
        match client.poll(&mut |_| {}) {
            Err(TransportError::Disconnected) => break,
            Ok(_) => client.wait(Some(Duration::from_millis(5))).unwrap(),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(
        client.send(b"x"),
        Err(TransportError::Disconnected)
    ));
}

#[test]
fn udp_unresponsive_server_gives_up() {
    let cfg = UdpConfig {
        give_up: Duration::from_millis(100),
        keepalive: None,
        ..keyed()
    };
    let (server, mut client, _) = connect_pair(keyed(), cfg);
    // Keep the socket bound but never read it, and send no FIN: a hung server.
    std::mem::forget(server);
    client.send(b"anyone?").unwrap();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < HANG_GUARD);
        match client.poll(&mut |_| {}) {
            Err(TransportError::Disconnected) => break,
            Ok(_) => client.wait(Some(Duration::from_millis(5))).unwrap(),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn udp_client_process_killed() {
    let cfg = UdpConfig {
        keepalive: Some(Duration::from_millis(20)),
        peer_timeout: Duration::from_millis(300),
        ..keyed()
    };
    let mut server = UdpServer::bind(localhost(), cfg).unwrap();
    let mut child = Command::new(CHILD_EXE)
        .arg("udp-client")
        .arg(server.local_addr().unwrap().to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| {
        e.iter()
            .any(|e| matches!(e, Ev::Frame(_, b) if b == b"child-hello"))
    });
    let Ev::Connected(peer) = evs[0] else {
        panic!("{evs:?}")
    };
    server.send(peer, b"ping").unwrap();
    server_until(&mut server, &mut evs, |e| {
        e.contains(&Ev::Frame(peer, b"ping".to_vec()))
    });
    child.kill().unwrap(); // SIGKILL: no FIN, only the liveness timeout can tell
    child.wait().unwrap();
    server_until(&mut server, &mut evs, |e| {
        e.contains(&Ev::Disconnected(peer))
    });
    assert_eq!(evs.last(), Some(&Ev::Disconnected(peer)));
}

#[test]
fn udp_sleep_and_wake_with_zero_spin() {
    let cfg = UdpConfig {
        spin: SpinConfig::never(),
        ..keyed()
    };
    let (mut server, mut client, peer) = connect_pair(cfg, cfg);
    let srv = std::thread::spawn(move || {
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 50 {
            let before = got.len();
            let n = server
                .poll(&mut |ev| {
                    if let ServerEvent::Frame(_, b) = ev {
                        got.push(b.to_vec());
                    }
                })
                .unwrap();
            for f in &got[before..] {
                server.send(peer, f).unwrap();
            }
            if n == 0 {
                wait_no_timeout(&mut server);
            }
        }
        // Keep serving acks until the client has everything.
        let stop = Instant::now();
        while stop.elapsed() < Duration::from_millis(200) {
            server.poll(&mut |_| {}).unwrap();
            server.wait(Some(Duration::from_millis(10))).unwrap();
        }
        got
    });
    for i in 0..50u32 {
        client.send(&frame(i, 16)).unwrap();
        let mut got = Vec::new();
        let start = Instant::now();
        while got.is_empty() {
            assert!(start.elapsed() < HANG_GUARD);
            client.poll(&mut |b| got.push(b.to_vec())).unwrap();
            if got.is_empty() {
                let t = Instant::now();
                client.wait(Some(LOST_WAKEUP)).unwrap();
                assert!(t.elapsed() < LOST_WAKEUP, "lost wake-up");
            }
        }
        assert_eq!(got, vec![frame(i, 16)]);
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let got = srv.join().unwrap();
    assert_eq!(got.len(), 50);
}

#[test]
fn udp_waker_interrupts_wait() {
    let cfg = UdpConfig {
        keepalive: None,
        ..keyed()
    };
    let mut server = UdpServer::bind(localhost(), cfg).unwrap();
    let waker = server.waker();
    let t = std::thread::spawn(move || {
        wait_no_timeout(&mut server);
        server
    });
    std::thread::sleep(Duration::from_millis(20));
    waker.wake();
    let mut server = t.join().unwrap();
    server.waker().wake();
    wait_no_timeout(&mut server);
}

#[test]
fn udp_external_event_loop_fd() {
    let (mut server, mut client, peer) = connect_pair(keyed(), keyed());
    let fd = client.as_raw_fd().unwrap();
    assert!(client.arm().unwrap());
    server.send(peer, b"wake").unwrap();
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack; generous timeout only against hangs.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 20_000) }, 1);
    let mut got = Vec::new();
    client.poll(&mut |b| got.push(b.to_vec())).unwrap();
    assert_eq!(got, vec![b"wake".to_vec()]);
    // Keepalive/ack timers exist, so the client asks to be polled again eventually.
    assert!(client.poll_timeout().is_some());
}

/// A server in a child process and a client (with `cfg`) that has exchanged one echo with it.
fn client_of_child_server(cfg: UdpConfig) -> (std::process::Child, UdpClient, Instant) {
    use std::io::BufRead;
    let mut child = Command::new(CHILD_EXE)
        .arg("udp-server")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let addr: SocketAddr = std::io::BufReader::new(stdout)
        .lines()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("ADDR ").map(|a| a.parse().unwrap()))
        .unwrap();
    let mut client = UdpClient::connect(addr, cfg).unwrap();
    client.send(b"echo me").unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(start.elapsed() < HANG_GUARD);
        client.poll(&mut |b| got.push(b.to_vec())).unwrap();
        client.wait(Some(Duration::from_millis(10))).unwrap();
    }
    assert_eq!(got, vec![b"echo me".to_vec()]);
    (child, client, start)
}

/// Polls until the client reports its peer gone (`what` names the signal on a hang).
fn wait_disconnected(client: &mut UdpClient, start: Instant, what: &str) {
    loop {
        assert!(start.elapsed() < HANG_GUARD, "{what} not noticed");
        match client.poll(&mut |_| {}) {
            Err(TransportError::Disconnected) => break,
            Ok(_) => client.wait(Some(Duration::from_millis(10))).unwrap(),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn udp_server_process_killed() {
    let cfg = UdpConfig {
        keepalive: Some(Duration::from_millis(20)),
        peer_timeout: Duration::from_millis(300),
        ..keyed()
    };
    let (mut child, mut client, start) = client_of_child_server(cfg);
    child.kill().unwrap(); // SIGKILL: no FIN; keepalive timeout must notice
    child.wait().unwrap();
    wait_disconnected(&mut client, start, "server death");
}

/// A killed server's port answers with ICMP port unreachable: the client's connected socket
/// reports it, and the connection ends at the next datagram, with no liveness timer armed
/// (keepalive off, `give_up` beyond the hang guard).
#[test]
fn udp_server_process_killed_is_refused_at_once() {
    let cfg = UdpConfig {
        keepalive: None,
        give_up: HANG_GUARD * 4,
        ..keyed()
    };
    let (mut child, mut client, start) = client_of_child_server(cfg);
    child.kill().unwrap(); // SIGKILL: no FIN
    child.wait().unwrap();
    // Sent after the death: its retransmission (or the first copy) meets the closed port.
    let _ = client.send(b"anyone?");
    wait_disconnected(&mut client, start, "closed port");
}

/// Connecting to a port nobody listens on fails with `Disconnected` as soon as the ICMP
/// answer is in, not with `Timeout` after the connect timeout.
#[test]
fn udp_connect_to_closed_port_is_refused() {
    let port = std::net::UdpSocket::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = UdpConfig {
        connect_timeout: Duration::from_secs(5),
        ..keyed()
    };
    match UdpClient::connect(port, cfg) {
        Err(TransportError::Disconnected) => {}
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

/// A SYN as a flooding (possibly spoofed) source sends it: a fresh connection id and client
/// nonce, the frame-MAC flag the server asks for, no proof (there is nothing to prove yet).
fn flood_syn(conn_id: u64) -> Vec<u8> {
    let mut d = vec![0x4c, 0x4d, 2, 1];
    d.extend_from_slice(&conn_id.to_le_bytes());
    d.extend_from_slice(&[0; 24]); // pn, seq, ack
    let mut hello = [0u8; 112];
    hello[0] = 1; // frame MACs on, as the server's configuration says
    hello[16..24].copy_from_slice(&conn_id.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    d.extend_from_slice(&hello);
    d
}

/// Half-open handshakes hold no state, so a SYN flood cannot exhaust the server: 20,000 SYNs
/// with fresh connection ids from 50 source ports are each answered (counted in
/// `FabricCounters::syns`), none creates a peer, and a real client then connects and
/// exchanges frames. A server with a half-open table would show peers here (or, bounded,
/// refuse the real client once the flood filled it).
#[test]
fn udp_syn_flood_leaves_no_half_open_state() {
    let mut server = UdpServer::bind(localhost(), keyed()).unwrap();
    let addr = server.local_addr().unwrap();
    let sources: Vec<std::net::UdpSocket> = (0..50)
        .map(|_| std::net::UdpSocket::bind(localhost()).unwrap())
        .collect();
    let mut evs = Vec::new();
    let mut sent = 0u64;
    let start = Instant::now();
    for batch in 0..200u64 {
        for i in 0..100u64 {
            let id = batch * 100 + i + 1;
            sources[(id % 50) as usize]
                .send_to(&flood_syn(id), addr)
                .unwrap();
        }
        sent += 100;
        // Small batches, each taken in before the next, so that no SYN is lost to the socket
        // buffer and the count below is exact.
        while server.fabric_counters().syns < sent {
            assert!(start.elapsed() < HANG_GUARD, "SYNs not answered");
            if poll_events(&mut server, &mut evs) == 0 {
                server.wait(Some(Duration::from_millis(5))).unwrap();
            }
        }
    }
    assert_eq!(server.fabric_counters().syns, 20_000);
    assert_eq!(server.fabric_counters().handshakes, 0);
    assert_eq!(server.peer_count(), 0, "SYNs created peers");
    assert!(evs.is_empty(), "{evs:?}");
    // A real node still gets in.
    let t = std::thread::spawn(move || UdpClient::connect(addr, keyed()).unwrap());
    server_until(&mut server, &mut evs, |e| !e.is_empty());
    let mut client = t.join().unwrap();
    let Ev::Connected(peer) = evs[0] else {
        panic!("{evs:?}")
    };
    assert_eq!(server.peer_count(), 1);
    exchange(&mut server, &mut client, peer, 10);
}
