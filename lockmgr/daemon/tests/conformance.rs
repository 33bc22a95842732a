//! Transport conformance: the same engine-level scenarios against an in-process lockmgrd
//! `Server` over every transport (shm, UDP, AF_PACKET, AF_XDP). Each scenario is one generic
//! function taking an [`Env`]; `conformance_tests!` instantiates all of them per transport.
//!
//! The raw-Ethernet environments run the server in its own network namespace on a bridge and
//! every client node in its own namespace (one "host" each), so nodes really are separate
//! stations; they need root and are skipped with a message otherwise (a failure with CI=true).
//!
//! RDMA hook: add a `Kind::Rdma` arm to `Env::new` / `Env::transport` that builds the
//! lockmgr-rdma server/client pair (any `ServerTransport` / `ClientTransport`), then
//! `conformance_tests!(rdma, Kind::Rdma);` — the scenarios need nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use lockmgr_client::{ClientError, ClientOptions, Event, LockClient};
use lockmgr_engine::{
    access, share, FileId, LockRange, Notification, OpenId, OpenRequest, OplockGrant, OplockLevel,
    OplockRequest, Reply, Request, Status,
};
use lockmgr_proto::ClusterKey;
use lockmgr_transport::afpacket::{PacketClient, PacketServer};
use lockmgr_transport::eth::EthConfig;
use lockmgr_transport::netns::{self, NetnsPair, NetnsStar, BRIDGE, IFACE, MAC_A};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::udp::{UdpClient, UdpConfig, UdpServer};
use lockmgr_transport::{ClientTransport, ServerTransport, SpinConfig, Waker};
use lockmgrd::{Server, ServerOptions};

const KEY: &[u8] = b"conformance-cluster-key-00000000";
const WRONG_KEY: &[u8] = b"not-the-cluster-key-000000000000";
const TIMEOUT: Duration = Duration::from_secs(20);
/// Client nodes the scenarios use at most.
const NODES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Shm,
    Udp,
    AfPacket,
    AfXdp,
}

fn spin() -> SpinConfig {
    // Several busy pollers on two vCPUs starve each other; sleeping keeps the tests robust.
    SpinConfig {
        spin: Duration::ZERO,
    }
}

fn rcfg() -> ReliableConfig {
    ReliableConfig {
        spin: spin(),
        ..ReliableConfig::default()
    }
}

/// A running in-process lockmgrd plus whatever its transport needs (socket dir, namespaces).
struct Env {
    kind: Kind,
    stop: Arc<AtomicBool>,
    waker: Option<Waker>,
    thread: Option<JoinHandle<()>>,
    shm_path: Option<std::path::PathBuf>,
    udp_addr: Option<std::net::SocketAddr>,
    star: Option<NetnsStar>,
    _dir: Option<tempfile::TempDir>,
}

fn run_server<T: ServerTransport>(transport: T, stop: &Arc<AtomicBool>) {
    let mut server = Server::new(
        transport,
        ServerOptions {
            key: ClusterKey::new(KEY).unwrap(),
            liveness: Duration::from_secs(10),
            engine: Default::default(),
        },
    );
    server.run(stop).unwrap();
}

impl Env {
    /// `None`: this transport cannot run here (reason printed); panics with CI=true.
    fn new(kind: Kind) -> Option<Env> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut env = Env {
            kind,
            stop: stop.clone(),
            waker: None,
            thread: None,
            shm_path: None,
            udp_addr: None,
            star: None,
            _dir: None,
        };
        let (tx, rx) = mpsc::channel::<Waker>();
        match kind {
            Kind::Shm => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("lockmgr.sock");
                let t = ShmServer::bind(
                    &path,
                    ShmConfig {
                        spin: spin(),
                        ..ShmConfig::default()
                    },
                )
                .unwrap();
                tx.send(t.waker()).unwrap();
                env.thread = Some(std::thread::spawn(move || run_server(t, &stop)));
                env.shm_path = Some(path);
                env._dir = Some(dir);
            }
            Kind::Udp => {
                let t = UdpServer::bind("127.0.0.1:0".parse().unwrap(), rcfg()).unwrap();
                env.udp_addr = Some(t.local_addr().unwrap());
                tx.send(t.waker()).unwrap();
                env.thread = Some(std::thread::spawn(move || run_server(t, &stop)));
            }
            Kind::AfPacket | Kind::AfXdp => {
                let star = netns::star_or_skip("conformance", NODES, 9000)?;
                let h = NetnsPair::spawn_in(&star.server, move || {
                    let eth = EthConfig::new(BRIDGE);
                    if kind == Kind::AfPacket {
                        let t = PacketServer::open(&eth, rcfg()).unwrap();
                        tx.send(t.waker()).unwrap();
                        run_server(t, &stop);
                    } else {
                        let t = afxdp_server(&eth);
                        tx.send(t.waker()).unwrap();
                        run_server(t, &stop);
                    }
                });
                env.thread = Some(std::thread::spawn(move || {
                    h.join().unwrap().unwrap();
                }));
                env.star = Some(star);
            }
        }
        env.waker = Some(rx.recv().expect("server failed to start"));
        Some(env)
    }

    /// Transport of client node `i` (< NODES).
    fn transport(&self, i: usize) -> Box<dyn ClientTransport> {
        match self.kind {
            Kind::Shm => Box::new(
                ShmClient::connect(self.shm_path.as_ref().unwrap(), spin(), TIMEOUT).unwrap(),
            ),
            Kind::Udp => Box::new(
                UdpClient::connect(
                    self.udp_addr.unwrap(),
                    UdpConfig {
                        spin: spin(),
                        ..UdpConfig::default()
                    },
                )
                .unwrap(),
            ),
            Kind::AfPacket | Kind::AfXdp => {
                let ns = &self.star.as_ref().unwrap().clients[i];
                let kind = self.kind;
                NetnsPair::run_in(ns, move || -> Box<dyn ClientTransport> {
                    let eth = EthConfig::new(IFACE);
                    if kind == Kind::AfPacket {
                        Box::new(PacketClient::connect(&eth, MAC_A, rcfg()).unwrap())
                    } else {
                        afxdp_client(&eth)
                    }
                })
                .unwrap()
            }
        }
    }

    fn node(&self, i: usize) -> LockClient<Box<dyn ClientTransport>> {
        LockClient::connect(self.transport(i), &options(&format!("node{i}"), KEY)).unwrap()
    }
}

fn afxdp_server(eth: &EthConfig) -> lockmgr_transport::afxdp::XdpServer {
    lockmgr_transport::afxdp::XdpServer::open(eth, &Default::default(), rcfg()).unwrap()
}

fn afxdp_client(eth: &EthConfig) -> Box<dyn ClientTransport> {
    Box::new(
        lockmgr_transport::afxdp::XdpClient::connect(eth, &Default::default(), MAC_A, rcfg())
            .unwrap(),
    )
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = &self.waker {
            w.wake();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn options(name: &str, key: &[u8]) -> ClientOptions {
    ClientOptions {
        node_name: name.into(),
        key: ClusterKey::new(key).unwrap(),
        handshake_timeout: TIMEOUT,
    }
}

type Node = LockClient<Box<dyn ClientTransport>>;

fn open(c: &mut Node, file: u128, acc: u32, sh: u32, oplock: OplockRequest) -> Reply {
    c.call(
        Request::Open(OpenRequest {
            file: FileId(file),
            access: acc,
            share: sh,
            oplock,
            ..OpenRequest::default()
        }),
        TIMEOUT,
    )
    .unwrap()
}

fn opened(r: Reply) -> OpenId {
    match r {
        Reply::Opened { open, .. } => open,
        other => panic!("open refused: {other:?}"),
    }
}

fn lock(open: OpenId, offset: u64, length: u64, fail_immediately: bool) -> Request {
    Request::Lock {
        open,
        ranges: vec![LockRange {
            offset,
            length,
            exclusive: true,
        }],
        fail_immediately,
    }
}

const RW: u32 = access::FILE_READ_DATA | access::FILE_WRITE_DATA;
const ALL: u32 = share::READ | share::WRITE | share::DELETE;

/// MS-FSA 2.1.5.1.2.2: a second open whose access the first open's share mode excludes fails
/// with STATUS_SHARING_VIOLATION; a compatible one succeeds.
fn share_mode_conflict(env: &Env) {
    let mut a = env.node(0);
    let mut b = env.node(1);
    opened(open(&mut a, 1, RW, share::READ, OplockRequest::None));
    assert_eq!(
        open(&mut b, 1, access::FILE_WRITE_DATA, ALL, OplockRequest::None),
        Reply::Done(Status::SharingViolation)
    );
    opened(open(
        &mut b,
        1,
        access::FILE_READ_DATA,
        ALL,
        OplockRequest::None,
    ));
}

/// MS-FSA 2.1.5.8 / MS-SMB2 3.3.5.14: a conflicting FAIL_IMMEDIATELY lock is refused; a
/// blocking one pends and is granted (as a Completed notification) when the holder unlocks.
fn byte_range_conflict_and_blocking_grant(env: &Env) {
    let mut a = env.node(0);
    let mut b = env.node(1);
    let oa = opened(open(&mut a, 2, RW, ALL, OplockRequest::None));
    let ob = opened(open(&mut b, 2, RW, ALL, OplockRequest::None));
    assert_eq!(
        a.call(lock(oa, 0, 100, true), TIMEOUT).unwrap(),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        b.call(lock(ob, 50, 10, true), TIMEOUT).unwrap(),
        Reply::Done(Status::LockNotGranted)
    );
    let req = b.submit(lock(ob, 50, 10, false)).unwrap();
    b.flush().unwrap();
    assert_eq!(
        b.next_event(TIMEOUT).unwrap(),
        Event::Reply {
            request: req,
            reply: Reply::Pending
        }
    );
    let unlock = Request::Unlock {
        open: oa,
        ranges: vec![LockRange {
            offset: 0,
            length: 100,
            exclusive: true,
        }],
    };
    assert_eq!(
        a.call(unlock, TIMEOUT).unwrap(),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        b.next_event(TIMEOUT).unwrap(),
        Event::Notify(Notification::Completed {
            request: req,
            reply: Reply::Done(Status::Success)
        })
    );
}

/// A node whose transport goes away (process death closes it) loses its opens and locks; the
/// blocked waiter on another node is granted.
fn client_death_releases_locks(env: &Env) {
    let mut a = env.node(0);
    let mut b = env.node(1);
    let oa = opened(open(&mut a, 3, RW, ALL, OplockRequest::None));
    let ob = opened(open(&mut b, 3, RW, ALL, OplockRequest::None));
    assert_eq!(
        a.call(lock(oa, 0, 10, true), TIMEOUT).unwrap(),
        Reply::Done(Status::Success)
    );
    let req = b.submit(lock(ob, 0, 10, false)).unwrap();
    b.flush().unwrap();
    assert_eq!(
        b.next_event(TIMEOUT).unwrap(),
        Event::Reply {
            request: req,
            reply: Reply::Pending
        }
    );
    drop(a); // no goodbye: only the transport's disconnect tells lockmgrd
    assert_eq!(
        b.next_event(TIMEOUT).unwrap(),
        Event::Notify(Notification::Completed {
            request: req,
            reply: Reply::Done(Status::Success)
        })
    );
}

/// MS-SMB2 3.3.4.6 / MS-FSA 2.1.5.17: a create conflicting with a batch oplock waits while the
/// holder is told to break to Level II; the holder's ack completes the create.
fn oplock_break_and_ack(env: &Env) {
    let mut a = env.node(0);
    let mut b = env.node(1);
    let ra = open(
        &mut a,
        4,
        RW,
        ALL,
        OplockRequest::Oplock(OplockLevel::Batch),
    );
    let Reply::Opened { open: oa, grant } = ra else {
        panic!("{ra:?}")
    };
    assert_eq!(grant, OplockGrant::Oplock(OplockLevel::Batch));
    let req = b
        .submit(Request::Open(OpenRequest {
            file: FileId(4),
            access: access::FILE_READ_DATA,
            share: ALL,
            ..OpenRequest::default()
        }))
        .unwrap();
    b.flush().unwrap();
    assert_eq!(
        b.next_event(TIMEOUT).unwrap(),
        Event::Reply {
            request: req,
            reply: Reply::Pending
        }
    );
    let level = match a.next_event(TIMEOUT).unwrap() {
        Event::Notify(Notification::OplockBreak { open, new_level }) => {
            assert_eq!(open, oa);
            new_level
        }
        other => panic!("expected a break, got {other:?}"),
    };
    assert_eq!(level, OplockLevel::LevelII);
    match a
        .call(Request::OplockBreakAck { open: oa, level }, TIMEOUT)
        .unwrap()
    {
        Reply::Acked { grant } => assert_eq!(grant, OplockGrant::Oplock(OplockLevel::LevelII)),
        other => panic!("{other:?}"),
    }
    match b.next_event(TIMEOUT).unwrap() {
        Event::Notify(Notification::Completed {
            request,
            reply: Reply::Opened { .. },
        }) => assert_eq!(request, req),
        other => panic!("expected the deferred open, got {other:?}"),
    }
}

/// The challenge-response fails without the cluster key; the right key still works after.
fn wrong_cluster_key_rejected(env: &Env) {
    match LockClient::connect(env.transport(0), &options("intruder", WRONG_KEY)) {
        Err(ClientError::Rejected(_)) => {}
        Err(other) => panic!("expected a rejection, got {other:?}"),
        Ok(_) => panic!("a wrong cluster key was accepted"),
    }
    let mut b = env.node(1);
    opened(open(&mut b, 5, RW, ALL, OplockRequest::None));
}

macro_rules! conformance_tests {
    ($modname:ident, $kind:expr) => {
        mod $modname {
            use super::*;

            fn with_env(f: fn(&Env)) {
                if let Some(env) = Env::new($kind) {
                    f(&env);
                }
            }

            #[test]
            fn share_mode_conflict() {
                with_env(super::share_mode_conflict);
            }
            #[test]
            fn byte_range_conflict_and_blocking_grant() {
                with_env(super::byte_range_conflict_and_blocking_grant);
            }
            #[test]
            fn client_death_releases_locks() {
                with_env(super::client_death_releases_locks);
            }
            #[test]
            fn oplock_break_and_ack() {
                with_env(super::oplock_break_and_ack);
            }
            #[test]
            fn wrong_cluster_key_rejected() {
                with_env(super::wrong_cluster_key_rejected);
            }
        }
    };
}

conformance_tests!(shm, Kind::Shm);
conformance_tests!(udp, Kind::Udp);
conformance_tests!(afpacket, Kind::AfPacket);
conformance_tests!(afxdp, Kind::AfXdp);
