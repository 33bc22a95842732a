//! Two smbd nodes, each one lockmgrd session multiplexed over its SMB connections
//! (`lockmgr_client::mux::NodeSessions`), against an in-process lockmgrd over shared memory:
//! breaks and deferred completions reach the right connection on the right node. The node's
//! threads share its session (`SharedNodeSessions`) with several requests in flight, over
//! shared memory and UDP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockmgr_client::mux::{NodeSessions, SharedNodeSessions};
use lockmgr_client::{ClientOptions, LockClient};
use lockmgr_engine::{
    access, share, ClientGuid, FileId, Lease, LeaseKey, LeaseState, LockRange, Notification,
    OpenId, OpenRequest, OplockGrant, OplockLevel, OplockRequest, Reply, Request, RequestId,
    SessionId, Status,
};
use lockmgr_proto::ClusterKey;
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::udp::{UdpClient, UdpServer};
use lockmgr_transport::{ClientTransport, FabricKey, ServerTransport, SpinConfig};
use lockmgrd::{Server, ServerOptions};

const KEY: &[u8] = b"node-sessions-test-key-000000000";
const TIMEOUT: Duration = Duration::from_secs(10);

struct Running {
    stop: Arc<AtomicBool>,
    waker: lockmgr_transport::Waker,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(break_timeout: Duration) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockmgr.sock");
    start_at(Some(dir), path, break_timeout)
}

fn start_at(
    dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
    break_timeout: Duration,
) -> Running {
    start_full(dir, path, break_timeout, Duration::from_secs(10))
}

fn start_full(
    dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
    break_timeout: Duration,
    liveness: Duration,
) -> Running {
    let spin = SpinConfig::never();
    let transport = ShmServer::bind(
        &path,
        ShmConfig {
            spin,
            ..ShmConfig::default()
        },
    )
    .unwrap();
    serve(transport, dir, path, break_timeout, liveness)
}

/// Runs an in-process lockmgrd on `transport` until the returned handle is dropped.
fn serve<S: ServerTransport + Send + 'static>(
    transport: S,
    dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
    break_timeout: Duration,
    liveness: Duration,
) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let waker = transport.waker();
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut s = Server::new(
            transport,
            ServerOptions {
                key: ClusterKey::new(KEY).unwrap(),
                liveness,
                engine: lockmgr_engine::Config {
                    break_timeout: lockmgr_engine::Duration(break_timeout.as_nanos() as u64),
                    ..Default::default()
                },
            },
        );
        s.run(&flag).unwrap();
    });
    Running {
        stop,
        waker,
        thread: Some(thread),
        _dir: dir,
        path,
    }
}

fn node(r: &Running, name: &str) -> NodeSessions<ShmClient> {
    let path = r.path.clone();
    let name = name.to_string();
    NodeSessions::new(
        Box::new(move || {
            let t = ShmClient::connect(&path, SpinConfig::never(), TIMEOUT)?;
            LockClient::connect(
                t,
                &ClientOptions {
                    node_name: name.clone(),
                    key: ClusterKey::new(KEY).unwrap(),
                    handshake_timeout: TIMEOUT,
                },
            )
        }),
        TIMEOUT,
    )
}

fn next_event(n: &mut NodeSessions<ShmClient>) -> (SessionId, Notification) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        n.tick();
        if let Some(ev) = n.poll_event() {
            return ev;
        }
        assert!(Instant::now() < deadline, "no event arrived");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn open_req(file: FileId, oplock: OplockRequest, guid: u128) -> Request {
    Request::Open(OpenRequest {
        file,
        access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
        share: share::READ | share::WRITE,
        client_guid: ClientGuid(guid),
        oplock,
        ..OpenRequest::default()
    })
}

/// Node A's connection 1 holds a batch oplock; node B's connection 7 opens the file: the
/// break goes to node A, connection 1 (not to A's other connection), B's create waits, and the
/// ack completes it on B under B's own request id.
#[test]
fn oplock_break_crosses_nodes_and_completes_the_waiting_create() {
    let r = start(Duration::from_secs(35));
    let mut a = node(&r, "node-a");
    let mut b = node(&r, "node-b");
    let file = FileId(0xabc);
    // A second connection on A with an unrelated open: must not receive the break.
    let Reply::Opened { .. } = a.request(
        SessionId(2),
        RequestId(1),
        open_req(FileId(0xdef), OplockRequest::None, 2),
    ) else {
        panic!()
    };
    let Reply::Opened {
        open: a_open,
        grant,
    } = a.request(
        SessionId(1),
        RequestId(1),
        open_req(file, OplockRequest::Oplock(OplockLevel::Batch), 1),
    )
    else {
        panic!("open on A failed")
    };
    assert_eq!(grant, OplockGrant::Oplock(OplockLevel::Batch));
    assert_eq!(
        b.request(
            SessionId(7),
            RequestId(40),
            open_req(file, OplockRequest::None, 7)
        ),
        Reply::Pending
    );
    let (conn, n) = next_event(&mut a);
    assert_eq!(conn, SessionId(1));
    assert_eq!(
        n,
        Notification::OplockBreak {
            open: a_open,
            new_level: OplockLevel::LevelII
        }
    );
    let ack = a.request(
        SessionId(1),
        RequestId(2),
        Request::OplockBreakAck {
            open: a_open,
            level: OplockLevel::LevelII,
        },
    );
    assert!(
        matches!(ack, Reply::Acked { .. } | Reply::Done(Status::Success)),
        "{ack:?}"
    );
    let (conn, n) = next_event(&mut b);
    assert_eq!(conn, SessionId(7));
    match n {
        Notification::Completed {
            request,
            reply: Reply::Opened { .. },
        } => assert_eq!(request, RequestId(40)),
        other => panic!("{other:?}"),
    }
}

/// A blocking lock of a connection on node B is granted when the connection on node A that
/// held the range goes away (end_connection closes its opens); CANCEL finds a waiting request by
/// the connection's own request id.
#[test]
fn dropped_connection_releases_locks_and_cancel_maps_request_ids() {
    let r = start(Duration::from_secs(35));
    let mut a = node(&r, "node-a");
    let mut b = node(&r, "node-b");
    let file = FileId(0x10c);
    let Reply::Opened { open: oa, .. } = a.request(
        SessionId(1),
        RequestId(1),
        open_req(file, OplockRequest::None, 1),
    ) else {
        panic!()
    };
    let Reply::Opened { open: ob, .. } = b.request(
        SessionId(3),
        RequestId(1),
        open_req(file, OplockRequest::None, 3),
    ) else {
        panic!()
    };
    let range = LockRange {
        offset: 0,
        length: 10,
        exclusive: true,
    };
    let lock = |open: OpenId| Request::Lock {
        open,
        ranges: vec![range],
        fail_immediately: false,
    };
    assert_eq!(
        a.request(SessionId(1), RequestId(2), lock(oa)),
        Reply::Done(Status::Success)
    );
    // Two waiters on B; the first is cancelled by its SMB request id.
    assert_eq!(
        b.request(SessionId(3), RequestId(10), lock(ob)),
        Reply::Pending
    );
    assert_eq!(
        b.request(
            SessionId(3),
            RequestId(11),
            Request::Cancel {
                request: RequestId(10)
            }
        ),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        next_event(&mut b),
        (
            SessionId(3),
            Notification::Completed {
                request: RequestId(10),
                reply: Reply::Done(Status::Cancelled)
            }
        )
    );
    assert_eq!(
        b.request(
            SessionId(3),
            RequestId(12),
            Request::Cancel {
                request: RequestId(99)
            }
        ),
        Reply::Done(Status::NotFound)
    );
    assert_eq!(
        b.request(SessionId(3), RequestId(13), lock(ob)),
        Reply::Pending
    );
    a.end_connection(SessionId(1));
    assert_eq!(
        next_event(&mut b),
        (
            SessionId(3),
            Notification::Completed {
                request: RequestId(13),
                reply: Reply::Done(Status::Success)
            }
        )
    );
}

/// lockmgrd dies: requests fail cleanly (no hang, no panic), waiting requests are completed with
/// an error, and the node reconnects when a lockmgrd is back.
#[test]
fn lost_lock_manager_fails_requests_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockmgr.sock");
    let r = start_at(None, path.clone(), Duration::from_secs(35));
    let mut a = node(&r, "node-a");
    let mut b = node(&r, "node-b");
    let file = FileId(0x1);
    let Reply::Opened { open: oa, .. } = a.request(
        SessionId(1),
        RequestId(1),
        open_req(file, OplockRequest::None, 1),
    ) else {
        panic!()
    };
    let Reply::Opened { open: ob, .. } = b.request(
        SessionId(2),
        RequestId(1),
        open_req(file, OplockRequest::None, 2),
    ) else {
        panic!()
    };
    let range = LockRange {
        offset: 0,
        length: 1,
        exclusive: true,
    };
    assert_eq!(
        a.request(
            SessionId(1),
            RequestId(2),
            Request::Lock {
                open: oa,
                ranges: vec![range],
                fail_immediately: true
            }
        ),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        b.request(
            SessionId(2),
            RequestId(5),
            Request::Lock {
                open: ob,
                ranges: vec![range],
                fail_immediately: false
            }
        ),
        Reply::Pending
    );
    drop(r);
    assert_eq!(
        next_event(&mut b),
        (
            SessionId(2),
            Notification::Completed {
                request: RequestId(5),
                reply: Reply::Done(Status::RequestNotAccepted)
            }
        )
    );
    assert_eq!(
        a.request(
            SessionId(1),
            RequestId(3),
            open_req(file, OplockRequest::None, 1)
        ),
        Reply::Done(Status::RequestNotAccepted)
    );
    assert!(!a.is_connected());
    // A new lockmgrd at the same path: the node reconnects on its own.
    let _r2 = start_at(None, path, Duration::from_secs(35));
    let deadline = Instant::now() + TIMEOUT;
    while !a.is_connected() {
        assert!(Instant::now() < deadline, "node did not reconnect");
        a.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(
        a.request(
            SessionId(1),
            RequestId(4),
            open_req(file, OplockRequest::None, 1)
        ),
        Reply::Opened { .. }
    ));
}

fn lease_req(file: FileId, guid: u128, key: u128, access_mask: u32) -> Request {
    Request::Open(OpenRequest {
        file,
        access: access_mask,
        share: share::READ | share::WRITE,
        client_guid: ClientGuid(guid),
        oplock: OplockRequest::Lease(Lease {
            key: LeaseKey(key),
            state: LeaseState::RH,
            ..Lease::default()
        }),
        ..OpenRequest::default()
    })
}

/// Asks node `n` (connection `conn`) for the disconnected durable open `key` until lockmgrd
/// has one: a node death is only noticed when its liveness lease lapses.
fn wait_disconnected(
    n: &mut NodeSessions<ShmClient>,
    conn: SessionId,
    key: u64,
) -> (OpenId, Vec<u8>) {
    let deadline = Instant::now() + TIMEOUT;
    let mut id = 1000;
    loop {
        id += 1;
        match n.request(conn, RequestId(id), Request::DurableLookup { key }) {
            Reply::Durable { open, blob } => return (open, blob),
            // Still owned by the dead node until lockmgrd notices.
            Reply::Done(Status::InvalidDeviceState) => {}
            other => panic!("lookup: {other:?}"),
        }
        assert!(Instant::now() < deadline, "durable open never disconnected");
        n.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Node A dies (no close, no disconnect: its lockmgrd session lapses) while one of its
/// connections holds a durable open with a byte-range lock. The open stays, disconnected, with
/// its lock in force for node B's clients; node B reclaims it for the same client (MS-SMB2
/// 3.3.7.1, 3.3.5.9.7) and the lease's breaks then reach B's connection.
#[test]
fn durable_open_of_dead_node_is_reclaimed_through_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockmgr.sock");
    let r = start_full(
        Some(dir),
        path,
        Duration::from_secs(35),
        Duration::from_millis(300),
    );
    let mut a = node(&r, "node-a");
    let mut b = node(&r, "node-b");
    let file = FileId(0xd0);
    let rw = access::FILE_READ_DATA | access::FILE_WRITE_DATA;
    let Reply::Opened { open, grant } =
        a.request(SessionId(1), RequestId(1), lease_req(file, 0x77, 5, rw))
    else {
        panic!("open on A failed")
    };
    assert!(matches!(grant, OplockGrant::Lease(l) if l.state == LeaseState::RH));
    let durable = Request::SetDurable {
        open,
        key: 42,
        timeout_ms: 60_000,
        persistent: false,
        blob: b"data\0f.txt".to_vec(),
    };
    assert_eq!(
        a.request(SessionId(1), RequestId(2), durable),
        Reply::Done(Status::Success)
    );
    let lock = Request::Lock {
        open,
        ranges: vec![LockRange {
            offset: 0,
            length: 10,
            exclusive: true,
        }],
        fail_immediately: true,
    };
    assert_eq!(
        a.request(SessionId(1), RequestId(3), lock),
        Reply::Done(Status::Success)
    );
    drop(a);

    let (found, blob) = wait_disconnected(&mut b, SessionId(3), 42);
    assert_eq!((found, blob.as_slice()), (open, b"data\0f.txt".as_slice()));
    // The lock is still in force for another client on B.
    let Reply::Opened { open: other, .. } = b.request(
        SessionId(3),
        RequestId(1),
        lease_req(file, 0x99, 6, access::FILE_READ_DATA),
    ) else {
        panic!("reader on B failed")
    };
    let read = |o: OpenId| Request::CheckIo {
        open: o,
        offset: 0,
        length: 1,
        write: false,
    };
    assert_eq!(
        b.request(SessionId(3), RequestId(2), read(other)),
        Reply::Done(Status::FileLockConflict)
    );
    // The lease is the client's: another ClientGuid cannot reclaim the open.
    let reclaim = |guid: u128| Request::Reclaim {
        key: 42,
        open,
        client_guid: ClientGuid(guid),
    };
    assert_eq!(
        b.request(SessionId(4), RequestId(1), reclaim(0x99)),
        Reply::Done(Status::NotFound)
    );
    let Reply::Opened { open: got, grant } = b.request(SessionId(4), RequestId(2), reclaim(0x77))
    else {
        panic!("reclaim failed")
    };
    assert_eq!(got, open);
    assert!(matches!(grant, OplockGrant::Lease(l) if l.state == LeaseState::RH));
    assert_eq!(
        b.request(SessionId(4), RequestId(3), read(open)),
        Reply::Done(Status::Success)
    );
    // A write by another client breaks the reclaimed lease's read caching (MS-FSA 2.1.4.12):
    // the break reaches B's connection 4.
    let Reply::Opened { open: writer, .. } =
        b.request(SessionId(3), RequestId(3), lease_req(file, 0x99, 7, rw))
    else {
        panic!("writer on B failed")
    };
    let write = Request::CheckIo {
        open: writer,
        offset: 100,
        length: 1,
        write: true,
    };
    assert_eq!(
        b.request(SessionId(3), RequestId(4), write),
        Reply::Done(Status::Success)
    );
    let (conn, n) = next_event(&mut b);
    assert_eq!(conn, SessionId(4));
    assert!(
        matches!(n, Notification::LeaseBreak { key, .. } if key == LeaseKey(5)),
        "{n:?}"
    );
}

/// A connection that goes away leaves its durable open disconnected (not closed).
#[test]
fn dropped_connection_disconnects_durable_open() {
    let r = start(Duration::from_secs(35));
    let mut a = node(&r, "node-a");
    let mut b = node(&r, "node-b");
    let rw = access::FILE_READ_DATA | access::FILE_WRITE_DATA;
    let Reply::Opened { open, .. } = a.request(
        SessionId(1),
        RequestId(1),
        lease_req(FileId(0xd1), 0x77, 5, rw),
    ) else {
        panic!()
    };
    let durable = Request::SetDurable {
        open,
        key: 43,
        timeout_ms: 60_000,
        persistent: false,
        blob: Vec::new(),
    };
    assert_eq!(
        a.request(SessionId(1), RequestId(2), durable),
        Reply::Done(Status::Success)
    );
    a.end_connection(SessionId(1));
    assert_eq!(wait_disconnected(&mut b, SessionId(3), 43).0, open);
}

/// A node whose threads share one session (as smbd's workers do), over any transport.
fn shared_node(
    connect: impl Fn() -> Box<dyn ClientTransport> + Send + 'static,
) -> Arc<SharedNodeSessions<Box<dyn ClientTransport>>> {
    let n = SharedNodeSessions::new(
        Box::new(move || {
            LockClient::connect(
                connect(),
                &ClientOptions {
                    node_name: "node-shared".into(),
                    key: ClusterKey::new(KEY).unwrap(),
                    handshake_timeout: TIMEOUT,
                },
            )
        }),
        TIMEOUT,
        Duration::ZERO,
    )
    .unwrap();
    assert!(n.lock().is_connected());
    Arc::new(n)
}

const THREADS: u64 = 4;
const ROUNDS: u64 = 150;

/// Each thread of one node (its own SMB connection, its own file) opens its file a number of
/// times that differs between threads and rounds, asks lockmgrd how many opens the file has,
/// and closes them again, all while the other threads do the same through the same session.
/// A reply handed to the wrong waiter shows as a wrong open count (or a reply of the wrong
/// kind), and a waiter that is never woken as a request that times out (`RequestNotAccepted`).
fn threads_get_their_own_replies(node: Arc<SharedNodeSessions<Box<dyn ClientTransport>>>) {
    // Like smbd's pump: another reader of the session, which takes in replies that waiters
    // (the one reading for the others among them) wait for.
    let done = Arc::new(AtomicBool::new(false));
    let pump = {
        let node = Arc::clone(&node);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                node.tick();
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let node = Arc::clone(&node);
            std::thread::spawn(move || {
                let conn = SessionId(100 + t);
                let file = FileId(0x5000 + u128::from(t));
                let mut id = 0;
                let mut next_id = || {
                    id += 1;
                    RequestId(id)
                };
                for round in 0..ROUNDS {
                    let k = (round + t) % 4 + 1;
                    let mut opens = Vec::new();
                    for _ in 0..k {
                        let req = open_req(file, OplockRequest::None, 100 + u128::from(t));
                        match node.request(conn, next_id(), req) {
                            Reply::Opened { open, .. } => opens.push(open),
                            other => panic!("thread {t} round {round}: open answered {other:?}"),
                        }
                    }
                    let usage =
                        node.request(conn, next_id(), Request::QueryUsage { file, except: None });
                    match usage {
                        Reply::Usage(u) => assert_eq!(
                            u64::from(u.opens),
                            k,
                            "thread {t} round {round}: another thread's usage reply"
                        ),
                        other => panic!("thread {t} round {round}: usage answered {other:?}"),
                    }
                    for open in opens {
                        assert_eq!(
                            node.request(conn, next_id(), Request::Close { open }),
                            Reply::Closed { delete_file: false },
                            "thread {t} round {round}"
                        );
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    done.store(true, Ordering::Release);
    pump.join().unwrap();
    // Nobody is left reading for waiters that are gone (the next request would wait for it).
    assert!(node.is_idle(), "a reader or a waiter was left behind");
    // Every open was booked to its connection and forgotten at its close: ending the
    // connections sends nothing, and the session is still up.
    for t in 0..THREADS {
        node.end_connection(SessionId(100 + t));
    }
    assert!(node.lock().is_connected());
    // A waiter whose reply came but who was not woken finds it only when its request times
    // out: that is counted, never silently absorbed.
    assert_eq!(
        node.lost_wakeups(),
        0,
        "waiters slept through their replies"
    );
}

#[test]
fn threads_of_a_node_get_their_own_replies_over_shm() {
    let r = start(Duration::from_secs(35));
    let path = r.path.clone();
    let node = shared_node(move || {
        Box::new(ShmClient::connect(&path, SpinConfig::never(), TIMEOUT).unwrap())
    });
    threads_get_their_own_replies(node);
}

#[test]
fn threads_of_a_node_get_their_own_replies_over_udp() {
    let fabric = FabricKey::new(ClusterKey::new(KEY).unwrap().fabric_secret());
    let server = UdpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        ReliableConfig {
            spin: SpinConfig::never(),
            fabric_key: Some(fabric),
            ..ReliableConfig::default()
        },
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let _r = serve(
        server,
        None,
        std::path::PathBuf::new(),
        Duration::from_secs(35),
        Duration::from_secs(10),
    );
    let node = shared_node(move || {
        let cfg = ReliableConfig {
            spin: SpinConfig::never(),
            ..ReliableConfig::default()
        };
        Box::new(UdpClient::connect(addr, cfg).unwrap())
    });
    threads_get_their_own_replies(node);
}
