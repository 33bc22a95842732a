//! Shared-memory transport tests.
// Raw sockets and poll(2) to attack or watch the transport from outside: test-only unsafe.
#![allow(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::{
    ClientTransport, PeerId, ServerEvent, ServerTransport, SpinConfig, TransportError, MAX_FRAME,
};

/// Only to avoid hanging forever when something is broken; never a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(20);
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

fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lmt-{}-{}.sock", name, std::process::id()))
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

/// Polls (with short waits) until `pred` holds for the collected events.
fn server_until(s: &mut dyn ServerTransport, out: &mut Vec<Ev>, pred: impl Fn(&[Ev]) -> bool) {
    let start = Instant::now();
    while !pred(out) {
        assert!(start.elapsed() < HANG_GUARD, "timed out; events: {out:?}");
        if poll_events(s, out) == 0 {
            s.wait(Some(Duration::from_millis(10))).unwrap();
        }
    }
}

fn connect_pair(name: &str, cfg: ShmConfig) -> (ShmServer, ShmClient, PeerId) {
    let path = sock_path(name);
    let mut server = ShmServer::bind(&path, cfg).unwrap();
    // connect() blocks until the server's poll accepts, so connect from another thread.
    let p2 = path.clone();
    let t = std::thread::spawn(move || ShmClient::connect(&p2, cfg.spin, HANG_GUARD).unwrap());
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| !e.is_empty());
    let client = t.join().unwrap();
    let Ev::Connected(peer) = evs[0] else {
        panic!("expected Connected, got {evs:?}")
    };
    (server, client, peer)
}

fn frame(i: u32, len: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; len.max(4)];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

#[test]
fn shm_many_frames_both_ways_in_order() {
    let (mut server, mut client, peer) = connect_pair("order", ShmConfig::default());
    const N: u32 = 20_000;
    let (mut sent_c, mut sent_s) = (0u32, 0u32);
    let (mut got_s, mut got_c) = (0u32, 0u32);
    let start = Instant::now();
    while got_s < N || got_c < N {
        assert!(start.elapsed() < HANG_GUARD);
        while sent_c < N {
            match client.send(&frame(sent_c, (sent_c as usize * 7) % 300)) {
                Ok(()) => sent_c += 1,
                Err(TransportError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        while sent_s < N {
            match server.send(peer, &frame(sent_s, (sent_s as usize * 13) % 500)) {
                Ok(()) => sent_s += 1,
                Err(TransportError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        server
            .poll(&mut |ev| match ev {
                ServerEvent::Frame(p, b) => {
                    assert_eq!(p, peer);
                    assert_eq!(b, &frame(got_s, (got_s as usize * 7) % 300)[..]);
                    got_s += 1;
                }
                other => panic!("unexpected {other:?}"),
            })
            .unwrap();
        client
            .poll(&mut |b| {
                assert_eq!(b, &frame(got_c, (got_c as usize * 13) % 500)[..]);
                got_c += 1;
            })
            .unwrap();
    }
}

#[test]
fn shm_large_frames_and_too_large() {
    let (mut server, mut client, peer) = connect_pair("large", ShmConfig::default());
    let big: Vec<u8> = (0..MAX_FRAME).map(|i| (i * 31 % 256) as u8).collect();
    for _ in 0..10 {
        client.send(&big).unwrap();
    }
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| e.len() >= 10);
    for e in &evs {
        assert_eq!(e, &Ev::Frame(peer, big.clone()));
    }
    server.send(peer, &big).unwrap();
    server.send(peer, &[]).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 2 {
        assert!(start.elapsed() < HANG_GUARD);
        client.poll(&mut |b| got.push(b.to_vec())).unwrap();
    }
    assert_eq!(got[0], big);
    assert!(got[1].is_empty());
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
fn shm_ring_full_backpressure() {
    let cfg = ShmConfig {
        ring_bytes: 32 * 1024,
        ..ShmConfig::default()
    };
    let (mut server, mut client, peer) = connect_pair("full", cfg);
    let mut sent = 0u32;
    loop {
        match client.send(&frame(sent, 1000)) {
            Ok(()) => sent += 1,
            Err(TransportError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 1000, "ring never filled");
    }
    // 32 KiB of 1008-byte records.
    assert_eq!(sent, 32);
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| e.len() >= sent as usize);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e, &Ev::Frame(peer, frame(i as u32, 1000)));
    }
    client.send(&frame(sent, 1000)).unwrap();

    let mut n = 0;
    while server.send(peer, &frame(n, 1000)).is_ok() {
        n += 1;
        assert!(n < 1000);
    }
    assert!(matches!(
        server.send(peer, &frame(n, 1000)),
        Err(TransportError::Full)
    ));
    let mut got = 0;
    client
        .poll(&mut |b| {
            assert_eq!(b, &frame(got, 1000)[..]);
            got += 1;
        })
        .unwrap();
    assert_eq!(got, n);
    server.send(peer, &frame(n, 1000)).unwrap();
}

#[test]
fn shm_disconnect_detected_both_ways_in_process() {
    let (mut server, client, peer) = connect_pair("disc1", ShmConfig::default());
    drop(client);
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| {
        e.contains(&Ev::Disconnected(peer))
    });
    assert!(matches!(
        server.send(peer, b"x"),
        Err(TransportError::UnknownPeer(_))
    ));

    let (server, mut client, _peer) = connect_pair("disc2", ShmConfig::default());
    client.send(b"hello").unwrap();
    drop(server);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < HANG_GUARD);
        match client.poll(&mut |_| {}) {
            Err(TransportError::Disconnected) => break,
            Ok(_) => client.wait(Some(Duration::from_millis(10))).unwrap(),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(
        client.send(b"x"),
        Err(TransportError::Disconnected)
    ));
}

#[test]
fn shm_frames_sent_before_close_are_delivered_before_disconnect() {
    let (mut server, mut client, peer) = connect_pair("drain", ShmConfig::default());
    for i in 0..100 {
        client.send(&frame(i, 64)).unwrap();
    }
    drop(client);
    let mut evs = Vec::new();
    server_until(&mut server, &mut evs, |e| {
        e.contains(&Ev::Disconnected(peer))
    });
    assert_eq!(evs.len(), 101);
    for (i, e) in evs[..100].iter().enumerate() {
        assert_eq!(e, &Ev::Frame(peer, frame(i as u32, 64)));
    }
}

#[test]
fn shm_client_process_killed() {
    let path = sock_path("kill");
    let mut server = ShmServer::bind(&path, ShmConfig::default()).unwrap();
    let mut child = Command::new(CHILD_EXE)
        .arg("shm-client")
        .arg(&path)
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
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    server_until(&mut server, &mut evs, |e| {
        e.contains(&Ev::Disconnected(peer))
    });
    assert_eq!(evs.last(), Some(&Ev::Disconnected(peer)));
}

#[test]
fn shm_sleep_and_wake_with_zero_spin() {
    let cfg = ShmConfig {
        spin: SpinConfig::never(),
        ..ShmConfig::default()
    };
    let (mut server, mut client, peer) = connect_pair("sleep", cfg);
    // The server thread blocks with no timeout, so only the client's doorbell can wake it.
    let srv = std::thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < 50 {
            let n = server
                .poll(&mut |ev| {
                    if let ServerEvent::Frame(_, b) = ev {
                        got.push(b.to_vec());
                    }
                })
                .unwrap();
            if n == 0 {
                wait_no_timeout(&mut server);
            }
            for f in &got[got.len().saturating_sub(n)..] {
                server.send(peer, f).unwrap();
            }
        }
        (server, got)
    });
    for i in 0..50u32 {
        client.send(&frame(i, 16)).unwrap();
        // The client sleeps too (no timeout): the server's doorbell must wake it.
        let mut got = Vec::new();
        while got.is_empty() {
            client.poll(&mut |b| got.push(b.to_vec())).unwrap();
            if got.is_empty() {
                let t = Instant::now();
                client.wait(Some(LOST_WAKEUP)).unwrap();
                assert!(t.elapsed() < LOST_WAKEUP, "lost wake-up");
            }
        }
        assert_eq!(got, vec![frame(i, 16)]);
        if i % 10 == 0 {
            // Give the server time to go to sleep for real.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let (_server, got) = srv.join().unwrap();
    assert_eq!(got.len(), 50);
}

#[test]
fn shm_waker_interrupts_wait() {
    let cfg = ShmConfig {
        spin: SpinConfig::adaptive(Duration::from_micros(50)),
        ..ShmConfig::default()
    };
    let mut server = ShmServer::bind(sock_path("waker"), cfg).unwrap();
    server.poll(&mut |_| {}).unwrap();
    let waker = server.waker();
    let t = std::thread::spawn(move || {
        wait_no_timeout(&mut server);
        server
    });
    std::thread::sleep(Duration::from_millis(20));
    waker.wake();
    let server = t.join().unwrap();
    // A wake before wait makes the next wait return at once.
    let mut server = server;
    server.waker().wake();
    wait_no_timeout(&mut server);
}

fn fd_readable(fd: std::os::fd::RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    r == 1
}

#[test]
fn shm_external_event_loop_fd() {
    let cfg = ShmConfig::default();
    let (mut server, mut client, peer) = connect_pair("extfd", cfg);
    let fd = client.as_raw_fd().unwrap();
    assert!(client.arm().unwrap());
    assert!(!fd_readable(fd, 0));
    server.send(peer, b"wake").unwrap();
    // Generous bound only to avoid a hang if the doorbell is lost.
    assert!(fd_readable(fd, 20_000));
    let mut got = Vec::new();
    client.poll(&mut |b| got.push(b.to_vec())).unwrap();
    assert_eq!(got, vec![b"wake".to_vec()]);
    // Already-pending data: arm refuses so the caller polls instead of sleeping.
    server.send(peer, b"more").unwrap();
    assert!(!client.arm().unwrap());
    // Server death also makes the fd readable.
    client.poll(&mut |_| {}).unwrap();
    assert!(client.arm().unwrap());
    drop(server);
    assert!(fd_readable(fd, 20_000));
}

#[test]
fn shm_server_process_killed() {
    let path = sock_path("srvkill");
    let _ = std::fs::remove_file(&path);
    let mut child = Command::new(CHILD_EXE)
        .arg("shm-server")
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut client = loop {
        assert!(start.elapsed() < HANG_GUARD, "child server never came up");
        match ShmClient::connect(&path, SpinConfig::default(), HANG_GUARD) {
            Ok(c) => break c,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    client.send(b"echo me").unwrap();
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(start.elapsed() < HANG_GUARD);
        client.poll(&mut |b| got.push(b.to_vec())).unwrap();
        client.wait(Some(Duration::from_millis(10))).unwrap();
    }
    assert_eq!(got, vec![b"echo me".to_vec()]);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    loop {
        assert!(start.elapsed() < HANG_GUARD, "server death not detected");
        match client.poll(&mut |_| {}) {
            Err(TransportError::Disconnected) => break,
            Ok(_) => client.wait(Some(Duration::from_millis(10))).unwrap(),
            Err(e) => panic!("{e}"),
        }
    }
    let _ = std::fs::remove_file(&path);
}
