//! Lost, repeated and forged frames: lockmgrd in-process over real UDP sockets with fault
//! injection, and a raw client that tries to act for another session.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lockmgr_client::{ClientOptions, Event, LockClient};
use lockmgr_engine::{
    access, share, FileId, LockRange, OpenRequest, Reply, Request, RequestId, SessionId, Status,
};
use lockmgr_proto::{
    auth, decode_frame, ClusterKey, FrameWriter, Message, Role, Transcript, VERSION,
};
use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::udp::{FaultConfig, UdpClient, UdpConfig, UdpServer};
use lockmgr_transport::{ClientTransport, SpinConfig};

mod support;
use support::spawn_server;

const KEY: &[u8] = b"fault-test-cluster-key-000000000";
const TIMEOUT: Duration = Duration::from_secs(20);

fn options(name: &str) -> ClientOptions {
    ClientOptions {
        node_name: name.into(),
        key: ClusterKey::new(KEY).unwrap(),
        handshake_timeout: TIMEOUT,
    }
}

fn lossy(seed: u64) -> UdpConfig {
    UdpConfig {
        fabric_key: Some(lockmgr_transport::FabricKey::new(
            lockmgr_proto::ClusterKey::new(KEY).unwrap().fabric_secret(),
        )),
        spin: SpinConfig::never(),
        faults: FaultConfig {
            drop_rate: 0.2,
            dup_rate: 0.2,
            seed,
            on_send: true,
            on_recv: true,
        },
        ..UdpConfig::default()
    }
}

/// With 20% of datagrams dropped and 20% duplicated in both directions, every request is
/// applied exactly once and answered exactly once: a repeated lock would come back
/// LockNotGranted (an exclusive lock conflicts with its own open) and a repeated unlock
/// RangeNotLocked.
#[test]
fn udp_loss_and_duplication_never_lose_or_double_an_operation() {
    let server = UdpServer::bind("127.0.0.1:0".parse().unwrap(), lossy(1)).unwrap();
    let addr = server.local_addr().unwrap();
    let _running = spawn_server(server, KEY);
    let mut c = LockClient::connect(
        UdpClient::connect(addr, lossy(2)).unwrap(),
        &options("lossy"),
    )
    .unwrap();
    let Reply::Opened { open, .. } = c
        .call(
            Request::Open(OpenRequest {
                file: FileId(7),
                access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
                share: share::READ | share::WRITE,
                ..OpenRequest::default()
            }),
            TIMEOUT,
        )
        .unwrap()
    else {
        panic!("open failed")
    };
    let mut expected: HashMap<RequestId, Reply> = HashMap::new();
    // Batches of pipelined requests, so losses hit frames carrying several requests.
    for round in 0..40u64 {
        for i in 0..10u64 {
            let range = LockRange {
                offset: (round * 10 + i) * 100,
                length: 50,
                exclusive: true,
            };
            let lock = c
                .submit(Request::Lock {
                    open,
                    ranges: vec![range],
                    fail_immediately: true,
                })
                .unwrap();
            let unlock = c
                .submit(Request::Unlock {
                    open,
                    ranges: vec![range],
                })
                .unwrap();
            expected.insert(lock, Reply::Done(Status::Success));
            expected.insert(unlock, Reply::Done(Status::Success));
        }
        c.flush().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while !expected.is_empty() {
            let mut got = Vec::new();
            c.poll(&mut |ev| got.push(ev)).unwrap();
            for ev in got {
                match ev {
                    Event::Reply { request, reply } => {
                        let want = expected.remove(&request).unwrap_or_else(|| {
                            panic!(
                                "reply to {request:?} arrived twice or was never asked: {reply:?}"
                            )
                        });
                        assert_eq!(reply, want, "request {request:?}");
                    }
                    other => panic!("unexpected event {other:?}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} replies missing",
                expected.len()
            );
            c.wait(Some(Duration::from_millis(5))).unwrap();
        }
    }
}

fn frame(session: SessionId, msgs: &[Message]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, session);
    for m in msgs {
        w.push(m).unwrap();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn recv_messages(t: &mut ShmClient) -> Vec<(SessionId, Message)> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut out = Vec::new();
        t.poll(&mut |bytes| {
            let f = decode_frame(bytes).unwrap();
            let s = f.session_id();
            for m in f {
                out.push((s, m.unwrap()));
            }
        })
        .unwrap();
        if !out.is_empty() {
            return out;
        }
        assert!(Instant::now() < deadline, "no answer from lockmgrd");
        t.wait(Some(Duration::from_millis(50))).unwrap();
    }
}

/// A node that knows the cluster key still cannot act for another node's session: frames that
/// name a session other than the one it authenticated are dropped and counted.
#[test]
fn frames_for_a_foreign_session_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockmgr.sock");
    let spin = SpinConfig::never();
    let server = ShmServer::bind(
        &path,
        ShmConfig {
            spin,
            ..ShmConfig::default()
        },
    )
    .unwrap();
    let _running = spawn_server(server, KEY);

    let mut victim = LockClient::connect(
        ShmClient::connect(&path, spin, TIMEOUT).unwrap(),
        &options("victim"),
    )
    .unwrap();
    let Reply::Opened {
        open: victim_open, ..
    } = victim
        .call(
            Request::Open(OpenRequest {
                file: FileId(99),
                access: access::FILE_READ_DATA,
                share: share::READ,
                ..OpenRequest::default()
            }),
            TIMEOUT,
        )
        .unwrap()
    else {
        panic!("open failed")
    };

    // The attacker authenticates properly, by hand, to learn the framing.
    let mut raw = ShmClient::connect(&path, spin, TIMEOUT).unwrap();
    let client_nonce = [7u8; 32];
    raw.send(&frame(
        SessionId(0),
        &[Message::ClientHello {
            node_name: "mallory".into(),
            client_nonce,
            min_version: VERSION,
            max_version: VERSION,
        }],
    ))
    .unwrap();
    let (session, server_nonce) = match recv_messages(&mut raw).remove(0).1 {
        Message::ServerChallenge {
            session_id,
            server_nonce,
            ..
        } => (session_id, server_nonce),
        other => panic!("{other:?}"),
    };
    let key = ClusterKey::new(KEY).unwrap();
    let t = Transcript {
        node_name: "mallory",
        client_nonce: &client_nonce,
        server_nonce: &server_nonce,
        session_id: session,
        version: VERSION,
    };
    raw.send(&frame(
        session,
        &[Message::ClientProof {
            proof: auth::client_proof(&key, &t),
        }],
    ))
    .unwrap();
    assert!(matches!(
        recv_messages(&mut raw).remove(0).1,
        Message::SessionAccepted { .. }
    ));
    assert!(auth::verify_proof(
        &key,
        Role::Client,
        &t,
        &auth::client_proof(&key, &t)
    ));

    // Now it names the victim's session and tries to close the victim's open.
    raw.send(&frame(
        victim.session(),
        &[Message::Request {
            request_id: RequestId(1),
            body: Request::Close { open: victim_open },
        }],
    ))
    .unwrap();
    // Under its own session the close is refused by the engine (not its open).
    raw.send(&frame(
        session,
        &[Message::Request {
            request_id: RequestId(2),
            body: Request::Close { open: victim_open },
        }],
    ))
    .unwrap();
    let replies = recv_messages(&mut raw);
    assert_eq!(
        replies,
        vec![(
            session,
            Message::Reply {
                request_id: RequestId(2),
                body: Reply::Done(Status::InvalidHandle)
            }
        )]
    );
    // Garbage is dropped and counted too.
    raw.send(b"definitely not a lockmgr frame").unwrap();
    // Frames of one peer are handled in order: once this heartbeat is answered, the forged and
    // the garbage frames have been handled too.
    raw.send(&frame(session, &[Message::Heartbeat { seq: 9 }]))
        .unwrap();
    assert_eq!(
        recv_messages(&mut raw),
        vec![(session, Message::HeartbeatAck { seq: 9 })]
    );

    let status = victim.status(TIMEOUT).unwrap();
    assert!(status.contains("foreign_session_frames=1"), "{status}");
    assert!(status.contains("malformed_frames=1"), "{status}");
    // The victim's open is intact.
    assert!(matches!(
        victim
            .call(Request::Close { open: victim_open }, TIMEOUT)
            .unwrap(),
        Reply::Closed { .. }
    ));
}
