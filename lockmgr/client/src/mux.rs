//! One lockmgrd session shared by all SMB connections of a node.
//!
//! lockmgrd knows nodes, not SMB connections: each smbd node holds one authenticated session and
//! the engine's owner of an open is the open itself. [`NodeSessions`] keeps the node-local half
//! of the bookkeeping: which connection owns which open, lease and waiting request, so that
//! breaks and deferred completions reach the right connection, CANCEL finds its request, and a
//! dropped connection releases exactly what it held.
//!
//! Requests are synchronous here (one lock-manager round trip, microseconds over shared memory):
//! that keeps the SMB code's lock calls simple. Waiting SMB requests never block: the lock manager
//! answers `Pending` at once and completes them later through [`NodeSessions::poll_event`].
//!
//! [`NodeSessions`] serves one thread. [`SharedNodeSessions`] lets all worker threads of a node
//! use the session at once: each sends its request and lets go of the session while it waits,
//! so a node has as many requests in flight as it has waiting workers. One waiter at a time
//! (the reader) reads the transport and hands every reply to its own waiter; the others sleep
//! on their own slot until their reply or the reader role comes to them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lockmgr_engine::{
    ClientGuid, LeaseKey, Notification, OpenId, OplockGrant, Reply, Request, RequestId, SessionId,
    Status,
};
use lockmgr_transport::{sys, ClientTransport};

use crate::{ClientError, Event, LockClient, ResumePoint};

/// Opens a new lockmgrd session (used at start and to reconnect after lockmgrd restarts).
pub type Connector<T> = Box<dyn FnMut() -> Result<LockClient<T>, ClientError> + Send>;

/// Continues the node's session on whichever lock-manager replica takes it (a replicated
/// lockmgrd after a failover, or the same lockmgrd over a new connection). The `Instant` is the
/// end of the node's lease ([`LockClient::lease_expiry`]): a resumer must give up by then, since
/// from then on the lock manager may have handed the session's state to other nodes.
pub type Resumer<T> =
    Box<dyn FnMut(ResumePoint, Instant) -> Result<LockClient<T>, ClientError> + Send>;

/// How many times one request may be carried over to a resumed session before it fails.
const MAX_RESUMES_PER_REQUEST: u32 = 3;

/// The connection id under which node-level notifications ([`Notification::IoRecall`]) are
/// handed to the node: no SMB connection has it.
pub const NODE_EVENTS: SessionId = SessionId(0);

/// What a deferred request was, so its completion can be booked like an immediate reply.
struct Deferred {
    conn: SessionId,
    conn_request: RequestId,
    lease: Option<(ClientGuid, LeaseKey)>,
    /// A `BreakAndClose`: the open its `Closed` completion ends.
    closing: Option<OpenId>,
}

/// The request `pump_until` waits for and how to book its reply.
#[derive(Clone)]
struct Booking {
    id: RequestId,
    conn: SessionId,
    conn_request: RequestId,
    lease: Option<(ClientGuid, LeaseKey)>,
    closing: Option<OpenId>,
    /// `Disconnect`: a durable open answers `Done(Success)` and leaves the node too.
    disconnecting: bool,
    /// `Reclaim`: the client whose lease (if the grant is one) the connection now holds.
    reclaim_guid: Option<ClientGuid>,
    /// The request itself, kept only when the session can be resumed: it is sent again on the
    /// resumed session (the lock manager drops it if its log already holds it).
    resend: Option<Request>,
}

/// A request some thread of [`SharedNodeSessions`] waits for: how to book its reply and where
/// to leave it.
struct Waiter {
    booking: Booking,
    slot: Arc<Slot>,
}

/// Where the reply of one waiting request is left, and the doorbell of the thread waiting for it.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    rung: Condvar,
}

#[derive(Default)]
struct SlotState {
    reply: Option<Reply>,
    /// This waiter is the reader now: it must read the transport for everyone.
    lead: bool,
}

/// Why a waiter woke.
enum Woken {
    Reply(Reply),
    /// The reply was there when the wait timed out: nobody rang.
    LateReply(Reply),
    Lead,
    TimedOut,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(&self, reply: Reply) {
        self.lock().reply = Some(reply);
        self.rung.notify_one();
    }

    fn make_lead(&self) {
        self.lock().lead = true;
        self.rung.notify_one();
    }

    fn take_reply(&self) -> Option<Reply> {
        self.lock().reply.take()
    }

    /// Sleeps until the reply arrives, this waiter becomes the reader, or `deadline`.
    fn wait(&self, deadline: Instant) -> Woken {
        let mut st = self.lock();
        loop {
            if let Some(r) = st.reply.take() {
                return Woken::Reply(r);
            }
            if st.lead {
                return Woken::Lead;
            }
            let now = Instant::now();
            if now >= deadline {
                return Woken::TimedOut;
            }
            let (next, waited) = self
                .rung
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner());
            st = next;
            if waited.timed_out() {
                if let Some(r) = st.reply.take() {
                    return Woken::LateReply(r);
                }
            }
        }
    }
}

/// The node's view of its lock-manager session, multiplexed over its SMB connections.
pub struct NodeSessions<T: ClientTransport> {
    connect: Connector<T>,
    resume: Option<Resumer<T>>,
    /// Bodies of the fire-and-forget requests (only when the session can be resumed).
    fire_and_forget_bodies: HashMap<RequestId, Request>,
    client: Option<LockClient<T>>,
    timeout: Duration,
    /// When the last connection attempt failed (reconnects are spaced out).
    last_attempt: Option<Instant>,
    conn_opens: HashMap<SessionId, HashSet<OpenId>>,
    open_conn: HashMap<OpenId, SessionId>,
    lease_conn: HashMap<(ClientGuid, LeaseKey), SessionId>,
    deferred: HashMap<RequestId, Deferred>,
    conn_deferred: HashMap<(SessionId, RequestId), RequestId>,
    /// Requests sent without waiting for the reply (closes of a dropped connection).
    fire_and_forget: HashSet<RequestId>,
    events: VecDeque<(SessionId, Notification)>,
    /// Opens of a lost lockmgrd session that the SMB side has not closed yet.
    stale_opens: HashMap<OpenId, SessionId>,
    /// Connections that held lock state in a lost session, for the server to drop.
    lost_conns: Vec<SessionId>,
    /// Requests of [`SharedNodeSessions`] threads waiting for their reply.
    waiting: HashMap<RequestId, Waiter>,
    /// The waiting request whose thread reads the transport for all waiters.
    reader: Option<RequestId>,
    /// The reader sleeps on the session fd and [`NodeSessions::reader_bell`]: whoever else reads
    /// the transport (which disarms the fd) or answers the reader must ring the bell.
    reader_sleeping: bool,
    /// Wakes the reader (created by [`SharedNodeSessions`]).
    reader_bell: Option<OwnedFd>,
    /// The bell was rung since the reader last reset it.
    reader_rung: bool,
    /// Bumped whenever the grants of this node's session stop counting (see
    /// [`NodeSessions::fence_epoch`]).
    fence_epoch: Arc<AtomicU64>,
}

/// How long to wait between attempts to reach a lockmgrd that is down.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

impl<T: ClientTransport> NodeSessions<T> {
    /// Connects at once; if lockmgrd is not reachable yet, later calls retry.
    pub fn new(mut connect: Connector<T>, timeout: Duration) -> NodeSessions<T> {
        let client = match connect() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(%e, "cannot reach lockmgrd; lock requests fail until it is back");
                None
            }
        };
        NodeSessions {
            last_attempt: client.is_none().then(Instant::now),
            connect,
            resume: None,
            fire_and_forget_bodies: HashMap::new(),
            client,
            timeout,
            conn_opens: HashMap::new(),
            open_conn: HashMap::new(),
            lease_conn: HashMap::new(),
            deferred: HashMap::new(),
            conn_deferred: HashMap::new(),
            fire_and_forget: HashSet::new(),
            events: VecDeque::new(),
            stale_opens: HashMap::new(),
            lost_conns: Vec::new(),
            waiting: HashMap::new(),
            reader: None,
            reader_sleeping: false,
            reader_bell: None,
            reader_rung: false,
            fence_epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The fence epoch: a counter bumped every time the node's session is fenced (its lease ran
    /// out, see [`crate::LEASE_DRIFT_PPM`]) or lost. Anything the node caches on the strength of
    /// a grant (oplock and lease state, "no byte-range locks on this file" answers) must record
    /// the epoch it was granted in and count only while the counter still holds it: after a
    /// fence the lock manager may give the same state to another node. Readable without the
    /// session lock (an atomic), so a hot path can check it.
    pub fn fence_epoch(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.fence_epoch)
    }

    /// Lets a lost session be continued instead of dropped (a replicated lock manager): on a
    /// transport failure or a request timeout, `resume` is asked for a connection that
    /// continues the session, every request still waiting is sent again on it, and nothing
    /// the SMB side holds is lost.
    pub fn set_resumer(&mut self, resume: Resumer<T>) {
        self.resume = Some(resume);
    }

    /// Tries to continue the session elsewhere; `current` is a request the caller itself waits
    /// for (the others wait in `waiting`). Returns whether the session goes on.
    fn try_resume(&mut self, current: Option<&Booking>) -> bool {
        let Some(resume) = self.resume.as_mut() else {
            return false;
        };
        // Past the lease the session's state may belong to others already: no resuming it.
        if self
            .client
            .as_ref()
            .is_none_or(|c| c.lease_expired(Instant::now()))
        {
            return false;
        }
        let Some(old) = self.client.take() else {
            return false;
        };
        let point = old.resume_point();
        let lease_end = old.lease_expiry();
        drop(old);
        let mut client = match resume(point, lease_end) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%e, session = point.session.0, "cannot resume the lockmgrd session");
                return false;
            }
        };
        // Requests of one session must reach the lock manager in id order (it recognises a
        // resent one by its id being at most the last it logged).
        let mut resend: Vec<(RequestId, Request)> = current
            .into_iter()
            .chain(self.waiting.values().map(|w| &w.booking))
            .filter_map(|b| b.resend.clone().map(|r| (b.id, r)))
            .collect();
        resend.extend(
            self.fire_and_forget_bodies
                .iter()
                .map(|(id, r)| (*id, r.clone())),
        );
        resend.sort_by_key(|(id, _)| *id);
        resend.dedup_by_key(|(id, _)| *id);
        let count = resend.len();
        let sent = resend
            .into_iter()
            .try_for_each(|(id, req)| client.resubmit(id, req))
            .and_then(|()| client.flush());
        if let Err(e) = sent {
            tracing::error!(%e, "resumed lockmgrd session failed at once");
            return false;
        }
        tracing::warn!(
            session = point.session.0,
            resent = count,
            "lockmgrd session resumed"
        );
        self.client = Some(client);
        // The reader sleeps on the old connection's fd.
        self.ring_reader();
        true
    }

    /// Whether a lockmgrd session is up.
    pub fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// When the node's lease on its grants runs out unless lockmgrd acknowledges another
    /// heartbeat (`None` without a session). See [`LockClient::lease_expiry`].
    pub fn lease_expiry(&self) -> Option<Instant> {
        self.client.as_ref().map(|c| c.lease_expiry())
    }

    /// The fd a pump thread can sleep on (readable when lockmgrd sent something).
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.client.as_ref().and_then(|c| c.as_raw_fd())
    }

    /// Longest a pump thread may sleep on [`NodeSessions::raw_fd`] before calling
    /// [`NodeSessions::tick`] again: the transport's own timers (retransmission, keepalive), the
    /// session heartbeat, or the reconnect interval while lockmgrd is unreachable.
    pub fn poll_timeout(&self) -> Duration {
        match &self.client {
            Some(c) => {
                // The pump must be awake when the lease runs out, to fence the node at once.
                let lease_left = c.lease_expiry().saturating_duration_since(Instant::now());
                let heartbeat = c.heartbeat_interval().min(lease_left);
                c.transport()
                    .poll_timeout()
                    .map_or(heartbeat, |t| t.min(heartbeat))
            }
            None => RECONNECT_INTERVAL,
        }
    }

    /// Blocks until lockmgrd may have sent something or `timeout` passes (the transport's own
    /// wait: its spin budget, then sleep). For a pump thread that has no event loop of its own;
    /// follow with [`NodeSessions::tick`] and [`NodeSessions::poll_event`].
    pub fn wait(&mut self, timeout: Duration) {
        if !self.events.is_empty() {
            return;
        }
        match self.client.as_mut() {
            Some(c) => {
                if let Err(e) = c.wait(Some(timeout)) {
                    self.lost_session(&e);
                }
            }
            None => std::thread::sleep(timeout.min(RECONNECT_INTERVAL)),
        }
    }

    /// Prepares the fd for sleeping; false means events are already waiting.
    pub fn arm(&mut self) -> bool {
        match self.client.as_mut() {
            Some(c) => c.arm().unwrap_or(false),
            None => true,
        }
    }

    fn ensure_client(&mut self) -> Option<&mut LockClient<T>> {
        if self.client.is_none() {
            let due = self
                .last_attempt
                .is_none_or(|t| t.elapsed() >= RECONNECT_INTERVAL);
            if due {
                self.last_attempt = Some(Instant::now());
                match (self.connect)() {
                    Ok(c) => {
                        tracing::info!(session = c.session().0, "lockmgrd session established");
                        self.client = Some(c);
                    }
                    Err(e) => tracing::warn!(%e, "lockmgrd still unreachable"),
                }
            }
        }
        self.client.as_mut()
    }

    /// The lock manager is gone: everything it held for us is gone with it. Waiting requests
    /// fail, and the open ids we hold mean nothing to the next lockmgrd.
    /// Returns true when the session was resumed instead (see [`NodeSessions::set_resumer`]).
    fn lost_session(&mut self, why: &ClientError) -> bool {
        tracing::error!(%why, "lockmgrd session lost");
        if self.try_resume(None) {
            return true;
        }
        let fenced = matches!(why, ClientError::Fenced)
            || self
                .client
                .as_ref()
                .is_some_and(|c| c.lease_expired(Instant::now()));
        // Before anything else: cached grants stop counting now.
        let epoch = self.fence_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if fenced {
            tracing::warn!(
                fence_epoch = epoch,
                monotonic_ns = sys::monotonic_ns(),
                "lockmgrd session fenced: the node's lease ran out"
            );
        }
        self.client = None;
        self.last_attempt = Some(Instant::now());
        for (_, d) in self.deferred.drain() {
            self.events.push_back((
                d.conn,
                Notification::Completed {
                    request: d.conn_request,
                    reply: Reply::Done(Status::RequestNotAccepted),
                },
            ));
        }
        self.conn_deferred.clear();
        self.fire_and_forget.clear();
        self.fire_and_forget_bodies.clear();
        // Requests other threads wait for get the answer the failed request got (they are
        // not retried: lockmgrd may or may not have acted on them).
        for (_, w) in self.waiting.drain() {
            w.slot.deliver(Reply::Done(Status::RequestNotAccepted));
        }
        self.ring_reader();
        // The opens, locks and leases this node's connections hold are gone with the session.
        // A connection that keeps its SMB handles would believe in locks nobody enforces any
        // more, and its open ids could name other opens in the next lockmgrd: such
        // connections are handed to the server to drop (`take_lost_connections`), and until
        // then requests naming their opens are refused here without reaching lockmgrd.
        let mut lost: HashSet<SessionId> = self.conn_opens.keys().copied().collect();
        lost.extend(self.lease_conn.values().copied());
        self.stale_opens.extend(self.open_conn.drain());
        self.conn_opens.clear();
        self.lease_conn.clear();
        self.lost_conns.extend(lost);
        false
    }

    /// Connections whose lock state was lost with the lockmgrd session (see `lost_session`):
    /// the server must drop them so their clients reopen (and re-lock) through the new
    /// session.
    pub fn take_lost_connections(&mut self) -> Vec<SessionId> {
        std::mem::take(&mut self.lost_conns)
    }

    /// A request naming an open granted by a previous lockmgrd session.
    fn names_stale_open(&self, req: &Request) -> bool {
        if self.stale_opens.is_empty() {
            return false;
        }
        let open = match req {
            Request::Close { open }
            | Request::Disconnect { open }
            | Request::SetDeletePending { open, .. }
            | Request::Lock { open, .. }
            | Request::Unlock { open, .. }
            | Request::CheckIo { open, .. }
            | Request::CheckIoGrant { open, .. }
            | Request::OplockBreakAck { open, .. }
            | Request::BreakForRename { open }
            | Request::Relink { open, .. }
            | Request::SetDurable { open, .. } => open,
            Request::QueryUsage {
                except: Some(open), ..
            } => open,
            _ => return false,
        };
        self.stale_opens.contains_key(open)
    }

    /// One request of SMB connection `conn` (its own request id `conn_request`, used again by
    /// CANCEL). Returns the immediate reply; `Pending` ones complete through `poll_event`.
    pub fn request(&mut self, conn: SessionId, conn_request: RequestId, req: Request) -> Reply {
        let booking = match self.send_request(conn, conn_request, req) {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        for _ in 0..=MAX_RESUMES_PER_REQUEST {
            let deadline = Instant::now() + self.timeout;
            let why = match self.pump_until(Some(booking.clone()), deadline) {
                Ok(Some(reply)) => return reply,
                Ok(None) => {
                    tracing::error!(request = booking.id.0, "lockmgrd did not answer in time");
                    ClientError::Timeout
                }
                Err(e) => e,
            };
            if !self.try_resume(Some(&booking)) {
                self.lost_session(&why);
                break;
            }
        }
        Reply::Done(Status::RequestNotAccepted)
    }

    /// The deadline of waiting request `id` passed with no reply: resume the session (the
    /// request is sent again on it) and return the new deadline, or give the request up (the
    /// reading, if this waiter had it, goes to another waiter).
    fn deadline_passed(&mut self, id: RequestId, resumes: &mut u32) -> Option<Instant> {
        if *resumes < MAX_RESUMES_PER_REQUEST && self.request_timed_out(id) {
            *resumes += 1;
            return Some(Instant::now() + self.timeout);
        }
        self.waiting.remove(&id);
        self.hand_off_reading(id);
        None
    }

    /// lockmgrd did not answer request `id` within the request timeout. Returns whether the
    /// session was resumed (the request was sent again: wait for it again).
    fn request_timed_out(&mut self, id: RequestId) -> bool {
        tracing::error!(request = id.0, "lockmgrd did not answer in time");
        self.lost_session(&ClientError::Timeout)
    }

    /// Sends a request and returns how to book its reply, or the answer given without asking
    /// lockmgrd (stale opens, unknown cancels, no session).
    fn send_request(
        &mut self,
        conn: SessionId,
        conn_request: RequestId,
        req: Request,
    ) -> Result<Booking, Reply> {
        if self.names_stale_open(&req) {
            return Err(match req {
                Request::Close { open } | Request::Disconnect { open } => {
                    self.stale_opens.remove(&open);
                    Reply::Closed { delete_file: false }
                }
                _ => Reply::Done(Status::RequestNotAccepted),
            });
        }
        let req = match req {
            Request::Cancel { request } => match self.conn_deferred.get(&(conn, request)) {
                Some(&id) => Request::Cancel { request: id },
                None => return Err(Reply::Done(Status::NotFound)),
            },
            other => other,
        };
        let lease = match &req {
            Request::Open(o) | Request::OpenDurable { open: o, .. } => match o.oplock {
                lockmgr_engine::OplockRequest::Lease(l) => Some((o.client_guid, l.key)),
                _ => None,
            },
            _ => None,
        };
        let closing = match &req {
            Request::Close { open }
            | Request::Disconnect { open }
            | Request::BreakAndClose { open } => Some(*open),
            _ => None,
        };
        let disconnecting = matches!(req, Request::Disconnect { .. });
        let reclaim_guid = match &req {
            Request::Reclaim { client_guid, .. } => Some(*client_guid),
            _ => None,
        };
        let resend = self.resume.is_some().then(|| req.clone());
        let Some(client) = self.ensure_client() else {
            return Err(Reply::Done(Status::RequestNotAccepted));
        };
        let sent = client
            .submit(req)
            .and_then(|id| client.flush().map(|()| id));
        let id = match sent {
            Ok(id) => id,
            Err(e) => {
                self.lost_session(&e);
                return Err(Reply::Done(Status::RequestNotAccepted));
            }
        };
        Ok(Booking {
            id,
            conn,
            conn_request,
            lease,
            closing,
            disconnecting,
            reclaim_guid,
            resend,
        })
    }

    /// Records what an immediate reply means for the node-local bookkeeping. Runs as soon as
    /// the reply is read, before the events that follow it in the same batch are routed: a
    /// break of a just-granted oplock, or the completion of a request that just went
    /// `Pending`, can arrive right behind the reply when this thread was slow to read it.
    fn book_reply(&mut self, b: &Booking, reply: &Reply) {
        match reply {
            Reply::Opened { open, grant }
            | Reply::OpenedDurable { open, grant }
            | Reply::OpenedIo { open, grant, .. } => {
                let lease = b.lease.or(match (b.reclaim_guid, grant) {
                    (Some(g), OplockGrant::Lease(l)) => Some((g, l.key)),
                    _ => None,
                });
                self.book_open(b.conn, *open, *grant, lease)
            }
            Reply::Pending => {
                self.deferred.insert(
                    b.id,
                    Deferred {
                        conn: b.conn,
                        conn_request: b.conn_request,
                        lease: b.lease,
                        closing: b.closing,
                    },
                );
                self.conn_deferred.insert((b.conn, b.conn_request), b.id);
            }
            Reply::Closed { .. } | Reply::ClosedDeleteBase => {
                if let Some(open) = b.closing {
                    self.forget_open(open);
                }
            }
            // A durable open disconnected: lockmgrd keeps it for any node to reclaim; this
            // node no longer routes anything for it.
            Reply::Done(Status::Success) if b.disconnecting => {
                if let Some(open) = b.closing {
                    self.forget_open(open);
                }
            }
            _ => {}
        }
    }

    fn book_open(
        &mut self,
        conn: SessionId,
        open: OpenId,
        grant: OplockGrant,
        lease: Option<(ClientGuid, LeaseKey)>,
    ) {
        self.open_conn.insert(open, conn);
        self.conn_opens.entry(conn).or_default().insert(open);
        if let (OplockGrant::Lease(_), Some(key)) = (grant, lease) {
            self.lease_conn.insert(key, conn);
        }
    }

    fn forget_open(&mut self, open: OpenId) {
        if let Some(conn) = self.open_conn.remove(&open) {
            if let Some(set) = self.conn_opens.get_mut(&conn) {
                set.remove(&open);
                if set.is_empty() {
                    self.conn_opens.remove(&conn);
                }
            }
        }
    }

    /// Reads what lockmgrd sent until the reply to `want` arrives (or, with `want == None`, until
    /// nothing more is waiting). Notifications are translated and queued for `poll_event`, in
    /// the order they arrived relative to the reply (see [`NodeSessions::book_reply`]).
    fn pump_until(
        &mut self,
        want: Option<Booking>,
        deadline: Instant,
    ) -> Result<Option<Reply>, ClientError> {
        let mut reader_answered = false;
        let r = self.pump_until_inner(want, deadline, &mut reader_answered);
        // A failed read loses the session, which wakes every waiter.
        if r.is_ok() && self.reader_sleeping {
            // This read disarmed the session fd the reader sleeps on: arm it again, unless the
            // reader's reply was among what was read or more frames are waiting (then the
            // reader must come and look).
            let rearmed = !reader_answered
                && self
                    .client
                    .as_mut()
                    .is_some_and(|c| c.arm().unwrap_or(false));
            if !rearmed {
                self.ring_reader();
            }
        }
        r
    }

    fn pump_until_inner(
        &mut self,
        want: Option<Booking>,
        deadline: Instant,
        reader_answered: &mut bool,
    ) -> Result<Option<Reply>, ClientError> {
        let mut found = None;
        loop {
            let Some(client) = self.client.as_mut() else {
                return Err(ClientError::SessionEnded);
            };
            let mut got = Vec::new();
            let n = client.poll(&mut |ev| got.push(ev))?;
            // Checked after the poll: an acknowledgement that was waiting renews the lease.
            if client.lease_expired(Instant::now()) {
                return Err(ClientError::Fenced);
            }
            for ev in got {
                match ev {
                    Event::Reply { request, reply }
                        if found.is_none() && want.as_ref().is_some_and(|b| b.id == request) =>
                    {
                        if let Some(b) = &want {
                            self.book_reply(b, &reply);
                        }
                        found = Some(reply);
                    }
                    Event::Reply { request, reply } => match self.waiting.remove(&request) {
                        Some(w) => {
                            *reader_answered |= self.reader == Some(request);
                            self.book_reply(&w.booking, &reply);
                            w.slot.deliver(reply);
                        }
                        None => {
                            self.fire_and_forget.remove(&request);
                            self.fire_and_forget_bodies.remove(&request);
                        }
                    },
                    Event::Notify(n) => self.route(n),
                    Event::StatusText { .. } | Event::MemberState { .. } => {}
                }
            }
            if found.is_some() {
                return Ok(found);
            }
            if want.is_none() && n == 0 {
                return Ok(None);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if n == 0 {
                if let Some(client) = self.client.as_mut() {
                    client.wait(Some((deadline - now).min(Duration::from_millis(50))))?;
                }
            }
        }
    }

    /// Wakes the reader if it sleeps: the session fd it sleeps on was disarmed by someone
    /// else's read, or the reader's own reply was taken in by someone else.
    fn ring_reader(&mut self) {
        if !self.reader_sleeping {
            return;
        }
        self.reader_sleeping = false;
        self.reader_rung = true;
        if let Some(bell) = &self.reader_bell {
            // Fails only when the counter is saturated: the bell is already ringing.
            let _ = sys::eventfd_signal(bell.as_raw_fd());
        }
    }

    /// Reader `id` got its reply: another waiting thread, if any, reads from now on. Nothing
    /// to do if `id` is not the reader.
    fn hand_off_reading(&mut self, id: RequestId) {
        if self.reader != Some(id) {
            return;
        }
        self.reader = None;
        self.reader_sleeping = false;
        if let Some((&id, w)) = self.waiting.iter().next() {
            self.reader = Some(id);
            w.slot.make_lead();
        }
    }

    fn route(&mut self, n: Notification) {
        let target = match &n {
            Notification::OplockBreak { open, .. } => self.open_conn.get(open).copied(),
            Notification::LeaseBreak {
                client_guid, key, ..
            } => self.lease_conn.get(&(*client_guid, *key)).copied(),
            Notification::Completed { request, reply } => {
                let Some(d) = self.deferred.remove(request) else {
                    // A completion of a request the node already forgot (its connection
                    // dropped and cancelled it).
                    return;
                };
                self.conn_deferred.remove(&(d.conn, d.conn_request));
                if let Reply::Opened { open, grant }
                | Reply::OpenedDurable { open, grant }
                | Reply::OpenedIo { open, grant, .. } = reply
                {
                    self.book_open(d.conn, *open, *grant, d.lease);
                }
                if let (Reply::Closed { .. } | Reply::ClosedDeleteBase, Some(open)) =
                    (reply, d.closing)
                {
                    self.forget_open(open);
                }
                self.events.push_back((
                    d.conn,
                    Notification::Completed {
                        request: d.conn_request,
                        reply: reply.clone(),
                    },
                ));
                return;
            }
            // A recall is for the node, not for one of its connections: it goes out under
            // `NODE_EVENTS`, and the node acknowledges it through any connection id.
            Notification::IoRecall { .. } => Some(NODE_EVENTS),
            // Change notify across nodes: the node's watch table finds the connections.
            Notification::DirWatched { .. } | Notification::DirChanged(_) => Some(NODE_EVENTS),
            _ => None,
        };
        match target {
            Some(conn) => self.events.push_back((conn, n)),
            None => tracing::debug!(?n, "notification for no known connection dropped"),
        }
    }

    /// SMB connection `conn` is gone: cancel what it waits for and disconnect what it still
    /// holds (lockmgrd closes plain opens and keeps durable ones, disconnected, for a
    /// reconnect through any node: MS-SMB2 3.3.7.1).
    pub fn end_connection(&mut self, conn: SessionId) {
        if !self.stale_opens.is_empty() {
            self.stale_opens.retain(|_, c| *c != conn);
        }
        let opens = self.conn_opens.remove(&conn).unwrap_or_default();
        let waiting: Vec<RequestId> = self
            .conn_deferred
            .iter()
            .filter(|((c, _), _)| *c == conn)
            .map(|(_, id)| *id)
            .collect();
        for open in &opens {
            self.open_conn.remove(open);
        }
        self.lease_conn.retain(|_, c| *c != conn);
        for id in &waiting {
            if let Some(d) = self.deferred.remove(id) {
                self.conn_deferred.remove(&(d.conn, d.conn_request));
            }
        }
        if opens.is_empty() && waiting.is_empty() {
            return;
        }
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let mut sent = Vec::new();
        let res = (|| {
            for id in waiting {
                let req = Request::Cancel { request: id };
                sent.push((client.submit(req.clone())?, req));
            }
            for open in opens {
                let req = Request::Disconnect { open };
                sent.push((client.submit(req.clone())?, req));
            }
            client.flush()
        })();
        match res {
            Ok(()) => {
                let keep = self.resume.is_some();
                for (id, req) in sent {
                    self.fire_and_forget.insert(id);
                    if keep {
                        self.fire_and_forget_bodies.insert(id, req);
                    }
                }
            }
            Err(e) => {
                self.lost_session(&e);
            }
        }
    }

    /// Non-blocking: takes in what lockmgrd sent, keeps the session alive, reconnects if needed.
    pub fn tick(&mut self) {
        if self.ensure_client().is_none() {
            return;
        }
        let now = Instant::now();
        if let Err(e) = self.pump_until(None, now) {
            self.lost_session(&e);
            return;
        }
        if let Some(client) = self.client.as_mut() {
            if let Err(e) = client.tick(now) {
                self.lost_session(&e);
            }
        }
    }

    /// Next break or completion, addressed to the SMB connection it belongs to.
    pub fn poll_event(&mut self) -> Option<(SessionId, Notification)> {
        self.events.pop_front()
    }

    /// The lock manager's operator view, through this node's session.
    pub fn status(&mut self) -> Result<String, ClientError> {
        let timeout = self.timeout;
        let status = match self.ensure_client() {
            Some(c) => c.status(timeout),
            None => Err(ClientError::SessionEnded),
        };
        // Replies read while waiting for the text are kept in the client for the next poll:
        // the reader must make that poll.
        self.ring_reader();
        status
    }

    /// Whether the lock manager holds a session for `node` ([`LockClient::has_session`]).
    pub fn has_session(&mut self, node: &str) -> Result<bool, ClientError> {
        let timeout = self.timeout;
        let answer = match self.ensure_client() {
            Some(c) => c.has_session(node, timeout),
            None => Err(ClientError::SessionEnded),
        };
        // As for `status`: what was read meanwhile waits in the client for the reader.
        self.ring_reader();
        answer
    }
}

/// Longest the reader sleeps before it looks at the session again (the deadline of its own
/// request and the transport's timers are nearer most of the time).
const READER_MAX_SLEEP: Duration = Duration::from_millis(50);

/// A node's [`NodeSessions`] for all its threads at once: requests of different threads are in
/// flight together instead of one after the other (see the module documentation).
///
/// Wake-ups: a reply is left in its waiter's [`Slot`] and the slot's condvar is signalled,
/// under the slot's mutex, so a waiter that is about to sleep cannot miss it. The reader sleeps
/// on the session fd and an eventfd of its own; every read of the transport by another thread
/// while it sleeps (which may take in its reply or disarm the fd) rings that eventfd.
pub struct SharedNodeSessions<T: ClientTransport> {
    inner: Mutex<NodeSessions<T>>,
    /// The reader's eventfd, owned by `inner`.
    reader_bell: RawFd,
    /// How long the reader polls the transport before it sleeps.
    spin: Duration,
    /// Waiters whose request timed out with the reply already in their slot (see
    /// [`SharedNodeSessions::lost_wakeups`]).
    lost_wakeups: AtomicU64,
    /// Most requests in flight at once (see [`SharedNodeSessions::in_flight_peak`]).
    in_flight_peak: AtomicU64,
}

impl<T: ClientTransport> SharedNodeSessions<T> {
    /// Connects at once (see [`NodeSessions::new`]). The reader busy-polls up to `spin` before
    /// sleeping: zero unless lockmgrd has cores to spare.
    pub fn new(
        connect: Connector<T>,
        timeout: Duration,
        spin: Duration,
    ) -> std::io::Result<SharedNodeSessions<T>> {
        let bell = sys::eventfd()?;
        let reader_bell = bell.as_raw_fd();
        let mut sessions = NodeSessions::new(connect, timeout);
        sessions.reader_bell = Some(bell);
        Ok(SharedNodeSessions {
            inner: Mutex::new(sessions),
            reader_bell,
            spin,
            lost_wakeups: AtomicU64::new(0),
            in_flight_peak: AtomicU64::new(0),
        })
    }

    /// The most requests that were in flight at once: above 1 only if threads overlapped.
    pub fn in_flight_peak(&self) -> u64 {
        self.in_flight_peak.load(Ordering::Relaxed)
    }

    /// Times a waiting thread slept until its request timed out although its reply had come:
    /// a lost wake-up (the reply is still returned, late). Stays 0 while the hand-over holds.
    pub fn lost_wakeups(&self) -> u64 {
        self.lost_wakeups.load(Ordering::Relaxed)
    }

    /// The session itself, for the calls that do not wait for lockmgrd (a panic of another
    /// thread leaves the bookkeeping consistent between calls: recover it).
    pub fn lock(&self) -> MutexGuard<'_, NodeSessions<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`NodeSessions::request`] from any thread: the session is free for other requests while
    /// this one waits for its reply.
    pub fn request(&self, conn: SessionId, conn_request: RequestId, req: Request) -> Reply {
        let slot = Arc::new(Slot::default());
        let (id, deadline) = {
            let mut n = self.lock();
            let booking = match n.send_request(conn, conn_request, req) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            let id = booking.id;
            if n.reader.is_none() {
                n.reader = Some(id);
                slot.lock().lead = true;
            }
            n.waiting.insert(
                id,
                Waiter {
                    booking,
                    slot: Arc::clone(&slot),
                },
            );
            self.in_flight_peak
                .fetch_max(n.waiting.len() as u64, Ordering::Relaxed);
            (id, Instant::now() + n.timeout)
        };
        let mut deadline = deadline;
        let mut resumes = 0;
        let reply = loop {
            break match slot.wait(deadline) {
                Woken::Reply(reply) => reply,
                Woken::LateReply(reply) => {
                    let lost = self.lost_wakeups.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        request = id.0,
                        lost_wakeups = lost,
                        "lockmgr reply waited in its slot until the request timed out"
                    );
                    reply
                }
                Woken::Lead => return self.read_until_answered(id, &slot, deadline),
                Woken::TimedOut => {
                    let mut n = self.lock();
                    // The reply may have come in between the timeout and the lock.
                    if let Some(reply) = slot.take_reply() {
                        n.hand_off_reading(id);
                        return reply;
                    }
                    match n.deadline_passed(id, &mut resumes) {
                        Some(next) => {
                            deadline = next;
                            continue;
                        }
                        None => return Reply::Done(Status::RequestNotAccepted),
                    }
                }
            };
        };
        // The reading was handed to this waiter, and its reply was taken in by someone else
        // before it woke: someone must read for the others. (Once its reply is in, a waiter is
        // no longer in `waiting` and cannot be handed the reading any more.)
        if slot.lock().lead {
            self.lock().hand_off_reading(id);
        }
        reply
    }

    /// No request waits and nobody reads for waiters (for tests: nothing was left behind).
    pub fn is_idle(&self) -> bool {
        let n = self.lock();
        n.waiting.is_empty() && n.reader.is_none()
    }

    /// The reader's loop: takes in everything lockmgrd sends (replies go to their waiters)
    /// until request `id` is answered, then hands the reading on.
    fn read_until_answered(&self, id: RequestId, slot: &Slot, deadline: Instant) -> Reply {
        let mut deadline = deadline;
        let mut resumes = 0;
        let spin_until = Instant::now() + self.spin;
        loop {
            let mut n = self.lock();
            n.reader_sleeping = false;
            // Before reading: a ring that comes later wakes the next sleep.
            if n.reader_rung {
                n.reader_rung = false;
                sys::eventfd_drain(self.reader_bell);
            }
            if n.client.is_some() {
                if let Err(e) = n.pump_until(None, Instant::now()) {
                    n.lost_session(&e);
                }
            }
            if let Some(reply) = slot.take_reply() {
                n.hand_off_reading(id);
                return reply;
            }
            let now = Instant::now();
            if now >= deadline {
                match n.deadline_passed(id, &mut resumes) {
                    Some(next) => {
                        deadline = next;
                        continue;
                    }
                    None => {
                        return slot
                            .take_reply()
                            .unwrap_or(Reply::Done(Status::RequestNotAccepted))
                    }
                }
            }
            if now < spin_until {
                drop(n);
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                continue;
            }
            if !n.arm() {
                continue;
            }
            let fd = n.raw_fd();
            let sleep = (deadline - now).min(n.poll_timeout()).min(READER_MAX_SLEEP);
            n.reader_sleeping = true;
            drop(n);
            sleep_readable(fd, self.reader_bell, sleep);
        }
    }

    /// SMB connection `conn` is gone (see [`NodeSessions::end_connection`]).
    pub fn end_connection(&self, conn: SessionId) {
        self.lock().end_connection(conn);
    }

    /// See [`NodeSessions::tick`].
    pub fn tick(&self) {
        self.lock().tick();
    }

    /// See [`NodeSessions::poll_event`].
    pub fn poll_event(&self) -> Option<(SessionId, Notification)> {
        self.lock().poll_event()
    }

    /// See [`NodeSessions::take_lost_connections`].
    pub fn take_lost_connections(&self) -> Vec<SessionId> {
        self.lock().take_lost_connections()
    }

    /// See [`NodeSessions::status`] (the session is held until the text is in).
    pub fn status(&self) -> Result<String, ClientError> {
        self.lock().status()
    }

    /// Whether the lock manager holds a session for `node` ([`NodeSessions::has_session`]).
    pub fn has_session(&self, node: &str) -> Result<bool, ClientError> {
        self.lock().has_session(node)
    }
}

/// Sleeps until `session` (if any) or `bell` is readable, or `timeout`.
fn sleep_readable(session: Option<RawFd>, bell: RawFd, timeout: Duration) {
    // A negative fd is ignored by poll.
    let mut fds = [pollin(session.unwrap_or(-1)), pollin(bell)];
    if sys::poll_fds(&mut fds, Some(timeout)).is_err() {
        // EINTR or a transient failure: the caller looks at the session and comes back.
        std::thread::yield_now();
    }
}

fn pollin(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
