//! Transport conformance scenarios: the same engine-level behaviour checked against an
//! in-process lockmgrd [`Server`] over any transport.
//!
//! A transport takes part by providing two closures: one that makes the server transport (run
//! on the server thread, or on a thread the caller spawns, e.g. inside a network namespace) and
//! one that connects client node `i` (`i < `[`NODES`]). [`Env`] runs the server and hands out
//! authenticated [`LockClient`]s; every entry of [`SCENARIOS`] is a plain function of an
//! [`Env`] that returns an error instead of panicking, so one binary can run all of them and
//! report `N passed, M failed` (hw-tests' `rdma-suite` does that over RDMA), while
//! `tests/conformance.rs` turns each into a `#[test]` per transport.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lockmgr_client::{ClientError, ClientOptions, Event, LockClient};
use lockmgr_engine::{
    access, share, FileId, LockRange, Notification, OpenId, OpenRequest, OplockGrant, OplockLevel,
    OplockRequest, Reply, Request, Status,
};
use lockmgr_proto::ClusterKey;
use lockmgr_transport::{ClientTransport, ServerTransport, Waker};
use thiserror::Error;

use crate::{Server, ServerOptions};

/// The cluster key the scenario server and nodes share.
pub const KEY: &[u8] = b"conformance-cluster-key-00000000";
/// A key of the right length that is not [`KEY`].
pub const WRONG_KEY: &[u8] = b"not-the-cluster-key-000000000000";
/// Client nodes a scenario uses at most (`i` passed to the client factory is below this).
pub const NODES: usize = 3;

/// Why a scenario failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The server or a client transport could not be created.
    #[error("set-up: {0}")]
    Setup(String),
    /// A client call failed (transport, timeout, rejection).
    #[error("{step}: {source}")]
    Client {
        /// What the scenario was doing.
        step: &'static str,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// lockmgrd answered, but not as the specification requires.
    #[error("{step}: expected {expected}, got {got}")]
    Unexpected {
        /// What the scenario was doing.
        step: &'static str,
        /// The required answer.
        expected: String,
        /// The actual answer.
        got: String,
    },
    /// The server loop stopped with an error.
    #[error("server loop: {0}")]
    Server(String),
}

/// A scenario: passes (`Ok`) or says which step went wrong.
pub type Scenario = fn(&Env) -> Result<(), ScenarioError>;

/// Every scenario, by name (the test names of `tests/conformance.rs`).
pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("share_mode_conflict", share_mode_conflict),
    (
        "byte_range_conflict_and_blocking_grant",
        byte_range_conflict_and_blocking_grant,
    ),
    ("client_death_releases_locks", client_death_releases_locks),
    ("oplock_break_and_ack", oplock_break_and_ack),
    ("wrong_cluster_key_rejected", wrong_cluster_key_rejected),
];

/// Connects client node `i` (`i < NODES`) to the server; errors are reported as set-up failures.
pub type ClientFactory = dyn Fn(usize) -> Result<Box<dyn ClientTransport>, String>;

/// The server thread's work, for [`Env::start_on`]'s spawner.
pub type ServerBody = Box<dyn FnOnce() + Send>;

/// A scenario node: a lockmgr client over a run-time chosen transport.
pub type Node = LockClient<Box<dyn ClientTransport>>;

/// Timing of an [`Env`].
#[derive(Debug, Clone, Copy)]
pub struct EnvOptions {
    /// lockmgrd's liveness lease. Longer than `timeout`, so a release within `timeout` after a
    /// client vanished shows the transport's death detection at work.
    pub liveness: Duration,
    /// Limit of every call and wait in a scenario (generous: emulated RDMA is slow).
    pub timeout: Duration,
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            liveness: Duration::from_secs(10),
            timeout: Duration::from_secs(20),
        }
    }
}

/// A running in-process lockmgrd and the way to reach it.
pub struct Env {
    stop: Arc<AtomicBool>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
    server_error: Arc<Mutex<Option<String>>>,
    connect: Box<ClientFactory>,
    timeout: Duration,
}

impl Env {
    /// Runs lockmgrd over the transport `make_server` creates, on a new thread.
    pub fn start<S, F, C>(
        make_server: F,
        connect: C,
        opts: EnvOptions,
    ) -> Result<Env, ScenarioError>
    where
        S: ServerTransport + 'static,
        F: FnOnce() -> Result<S, String> + Send + 'static,
        C: Fn(usize) -> Result<Box<dyn ClientTransport>, String> + 'static,
    {
        Env::start_on(std::thread::spawn, make_server, connect, opts)
    }

    /// Like [`Env::start`], but `spawn` starts the server thread (e.g. inside a network
    /// namespace, so the transport is created there). It must run the body it is given.
    pub fn start_on<S, F, C, P>(
        spawn: P,
        make_server: F,
        connect: C,
        opts: EnvOptions,
    ) -> Result<Env, ScenarioError>
    where
        S: ServerTransport + 'static,
        F: FnOnce() -> Result<S, String> + Send + 'static,
        C: Fn(usize) -> Result<Box<dyn ClientTransport>, String> + 'static,
        P: FnOnce(ServerBody) -> JoinHandle<()>,
    {
        let options = ServerOptions {
            key: ClusterKey::new(KEY).map_err(|e| ScenarioError::Setup(format!("key: {e}")))?,
            liveness: opts.liveness,
            engine: Default::default(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let server_error = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel::<Result<Waker, String>>();
        let body: ServerBody = {
            let stop = stop.clone();
            let server_error = server_error.clone();
            Box::new(move || {
                let transport = match make_server() {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(transport.waker()));
                let mut server = Server::new(transport, options);
                if let Err(e) = server.run(&stop) {
                    if let Ok(mut slot) = server_error.lock() {
                        *slot = Some(e.to_string());
                    }
                }
            })
        };
        let thread = spawn(body);
        let waker = match rx.recv() {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(ScenarioError::Setup(format!("server transport: {e}")));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ScenarioError::Setup(
                    "the server thread ended before creating its transport".into(),
                ));
            }
        };
        Ok(Env {
            stop,
            waker,
            thread: Some(thread),
            server_error,
            connect: Box::new(connect),
            timeout: opts.timeout,
        })
    }

    /// The per-call limit scenarios use.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A fresh transport of client node `i`.
    pub fn transport(&self, i: usize) -> Result<Box<dyn ClientTransport>, ScenarioError> {
        (self.connect)(i).map_err(|e| ScenarioError::Setup(format!("client node {i}: {e}")))
    }

    /// Client node `i`, authenticated with [`KEY`].
    pub fn node(&self, i: usize) -> Result<Node, ScenarioError> {
        LockClient::connect(self.transport(i)?, &self.options(&format!("node{i}"), KEY)?).map_err(
            |source| ScenarioError::Client {
                step: "connect",
                source,
            },
        )
    }

    fn options(&self, name: &str, key: &[u8]) -> Result<ClientOptions, ScenarioError> {
        Ok(ClientOptions {
            node_name: name.into(),
            key: ClusterKey::new(key).map_err(|e| ScenarioError::Setup(format!("key: {e}")))?,
            handshake_timeout: self.timeout,
        })
    }

    /// Stops the server and reports an error of its loop. Idempotent; also done on drop.
    pub fn stop(&mut self) -> Result<(), ScenarioError> {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| ScenarioError::Server("the server thread panicked".into()))?;
        }
        match self.server_error.lock().map(|mut e| e.take()) {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(ScenarioError::Server(e)),
            Err(_) => Err(ScenarioError::Server("poisoned error slot".into())),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `Ok` if `got == want`, else the step's [`ScenarioError::Unexpected`].
fn check<T: PartialEq + Debug>(step: &'static str, got: T, want: T) -> Result<(), ScenarioError> {
    if got == want {
        Ok(())
    } else {
        Err(unexpected(step, want, got))
    }
}

fn unexpected(step: &'static str, expected: impl Debug, got: impl Debug) -> ScenarioError {
    ScenarioError::Unexpected {
        step,
        expected: format!("{expected:?}"),
        got: format!("{got:?}"),
    }
}

fn client(step: &'static str) -> impl FnOnce(ClientError) -> ScenarioError {
    move |source| ScenarioError::Client { step, source }
}

fn call(env: &Env, c: &mut Node, step: &'static str, req: Request) -> Result<Reply, ScenarioError> {
    c.call(req, env.timeout()).map_err(client(step))
}

/// Submits without waiting and flushes, for requests expected to pend.
fn submit(
    c: &mut Node,
    step: &'static str,
    req: Request,
) -> Result<lockmgr_engine::RequestId, ScenarioError> {
    let id = c.submit(req).map_err(client(step))?;
    c.flush().map_err(client(step))?;
    Ok(id)
}

fn next_event(env: &Env, c: &mut Node, step: &'static str) -> Result<Event, ScenarioError> {
    c.next_event(env.timeout()).map_err(client(step))
}

fn open_req(file: u128, acc: u32, sh: u32, oplock: OplockRequest) -> Request {
    Request::Open(OpenRequest {
        file: FileId(file),
        access: acc,
        share: sh,
        oplock,
        ..OpenRequest::default()
    })
}

fn opened(step: &'static str, r: Reply) -> Result<OpenId, ScenarioError> {
    match r {
        Reply::Opened { open, .. } => Ok(open),
        other => Err(unexpected(step, "Opened", other)),
    }
}

fn open(
    env: &Env,
    c: &mut Node,
    step: &'static str,
    file: u128,
    acc: u32,
    sh: u32,
) -> Result<OpenId, ScenarioError> {
    let r = call(env, c, step, open_req(file, acc, sh, OplockRequest::None))?;
    opened(step, r)
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
const OK: Reply = Reply::Done(Status::Success);

/// MS-FSA 2.1.5.1.2.2: a second open whose access the first open's share mode excludes fails
/// with STATUS_SHARING_VIOLATION; a compatible one succeeds.
pub fn share_mode_conflict(env: &Env) -> Result<(), ScenarioError> {
    let mut a = env.node(0)?;
    let mut b = env.node(1)?;
    open(env, &mut a, "A opens (share READ)", 1, RW, share::READ)?;
    let r = call(
        env,
        &mut b,
        "B opens for write",
        open_req(1, access::FILE_WRITE_DATA, ALL, OplockRequest::None),
    )?;
    check(
        "B opens for write",
        r,
        Reply::Done(Status::SharingViolation),
    )?;
    open(
        env,
        &mut b,
        "B opens for read",
        1,
        access::FILE_READ_DATA,
        ALL,
    )?;
    Ok(())
}

/// MS-FSA 2.1.5.8 / MS-SMB2 3.3.5.14: a conflicting FAIL_IMMEDIATELY lock is refused; a
/// blocking one pends and is granted (as a Completed notification) when the holder unlocks.
pub fn byte_range_conflict_and_blocking_grant(env: &Env) -> Result<(), ScenarioError> {
    let mut a = env.node(0)?;
    let mut b = env.node(1)?;
    let oa = open(env, &mut a, "A opens", 2, RW, ALL)?;
    let ob = open(env, &mut b, "B opens", 2, RW, ALL)?;
    let r = call(env, &mut a, "A locks", lock(oa, 0, 100, true))?;
    check("A locks", r, OK)?;
    let r = call(env, &mut b, "B try-locks", lock(ob, 50, 10, true))?;
    check("B try-locks", r, Reply::Done(Status::LockNotGranted))?;
    let req = submit(&mut b, "B blocking lock", lock(ob, 50, 10, false))?;
    check(
        "B blocking lock",
        next_event(env, &mut b, "B blocking lock")?,
        Event::Reply {
            request: req,
            reply: Reply::Pending,
        },
    )?;
    let unlock = Request::Unlock {
        open: oa,
        ranges: vec![LockRange {
            offset: 0,
            length: 100,
            exclusive: true,
        }],
    };
    let r = call(env, &mut a, "A unlocks", unlock)?;
    check("A unlocks", r, OK)?;
    check(
        "B granted",
        next_event(env, &mut b, "B granted")?,
        Event::Notify(Notification::Completed {
            request: req,
            reply: OK,
        }),
    )
}

/// A node whose transport goes away (process death closes it) loses its opens and locks; the
/// blocked waiter on another node is granted.
pub fn client_death_releases_locks(env: &Env) -> Result<(), ScenarioError> {
    let mut a = env.node(0)?;
    let mut b = env.node(1)?;
    let oa = open(env, &mut a, "A opens", 3, RW, ALL)?;
    let ob = open(env, &mut b, "B opens", 3, RW, ALL)?;
    let r = call(env, &mut a, "A locks", lock(oa, 0, 10, true))?;
    check("A locks", r, OK)?;
    let req = submit(&mut b, "B blocking lock", lock(ob, 0, 10, false))?;
    check(
        "B blocking lock",
        next_event(env, &mut b, "B blocking lock")?,
        Event::Reply {
            request: req,
            reply: Reply::Pending,
        },
    )?;
    drop(a); // no goodbye: only the transport's disconnect tells lockmgrd
    check(
        "B granted after A vanished",
        next_event(env, &mut b, "B granted after A vanished")?,
        Event::Notify(Notification::Completed {
            request: req,
            reply: OK,
        }),
    )
}

/// MS-SMB2 3.3.4.6 / MS-FSA 2.1.5.17: a create conflicting with a batch oplock waits while the
/// holder is told to break to Level II; the holder's ack completes the create.
pub fn oplock_break_and_ack(env: &Env) -> Result<(), ScenarioError> {
    let mut a = env.node(0)?;
    let mut b = env.node(1)?;
    let ra = call(
        env,
        &mut a,
        "A opens with a batch oplock",
        open_req(4, RW, ALL, OplockRequest::Oplock(OplockLevel::Batch)),
    )?;
    let Reply::Opened { open: oa, grant } = ra else {
        return Err(unexpected("A opens with a batch oplock", "Opened", ra));
    };
    check("A's oplock", grant, OplockGrant::Oplock(OplockLevel::Batch))?;
    let req = submit(
        &mut b,
        "B opens",
        open_req(4, access::FILE_READ_DATA, ALL, OplockRequest::None),
    )?;
    check(
        "B's open pends",
        next_event(env, &mut b, "B's open pends")?,
        Event::Reply {
            request: req,
            reply: Reply::Pending,
        },
    )?;
    let level = match next_event(env, &mut a, "A's break")? {
        Event::Notify(Notification::OplockBreak { open, new_level }) => {
            check("break names A's open", open, oa)?;
            new_level
        }
        other => return Err(unexpected("A's break", "OplockBreak", other)),
    };
    check("break level", level, OplockLevel::LevelII)?;
    match call(
        env,
        &mut a,
        "A acks",
        Request::OplockBreakAck { open: oa, level },
    )? {
        Reply::Acked { grant } => check(
            "A's new oplock",
            grant,
            OplockGrant::Oplock(OplockLevel::LevelII),
        )?,
        other => return Err(unexpected("A acks", "Acked", other)),
    }
    match next_event(env, &mut b, "B's deferred open")? {
        Event::Notify(Notification::Completed {
            request,
            reply: Reply::Opened { .. },
        }) => check("B's deferred open", request, req),
        other => Err(unexpected("B's deferred open", "Completed(Opened)", other)),
    }
}

/// The challenge-response fails without the cluster key; the right key still works after.
pub fn wrong_cluster_key_rejected(env: &Env) -> Result<(), ScenarioError> {
    let opts = env.options("intruder", WRONG_KEY)?;
    match LockClient::connect(env.transport(0)?, &opts) {
        Err(ClientError::Rejected(_)) => {}
        Err(other) => return Err(unexpected("intruder connects", "Rejected", other)),
        Ok(_) => {
            return Err(unexpected(
                "intruder connects",
                "Rejected",
                "an authenticated session",
            ))
        }
    }
    let mut b = env.node(1)?;
    open(env, &mut b, "B opens after the intruder", 5, RW, ALL)?;
    Ok(())
}
