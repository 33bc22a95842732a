//! lockmgr client library for smbd nodes.
//!
//! Built for an io_uring / epoll event loop: [`LockClient::submit`] never blocks (requests are
//! batched into the next frame until [`LockClient::flush`]), and replies, deferred completions
//! and break notifications come out of [`LockClient::poll`] as [`Event`]s. Only
//! [`LockClient::connect`] (the authenticated handshake) and the convenience
//! [`LockClient::call`] wait.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod connect;
pub mod handshake;
pub mod mux;

pub use connect::{connect, AnyTransport, ConnectError, TransportSpec};
pub use lockmgr_proto::ClusterKey;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use lockmgr_engine::{Notification, Reply, Request, RequestId, SessionId};
use lockmgr_proto::{decode_frame, DecodeError, EncodeError, FrameBuf, Message, RejectReason};
use lockmgr_transport::{ClientTransport, TransportError};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("lockmgrd rejected the session: {0:?}")]
    Rejected(RejectReason),
    #[error("lockmgrd could not prove it holds the cluster key")]
    ServerNotAuthenticated,
    #[error("malformed frame from lockmgrd: {0}")]
    Decode(#[from] DecodeError),
    #[error("encoding: {0}")]
    Encode(#[from] EncodeError),
    #[error("unexpected message during handshake")]
    Handshake,
    #[error("timed out")]
    Timeout,
    #[error("the lock manager ended the session")]
    SessionEnded,
}

/// What the lock manager said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The immediate answer to a request.
    Reply { request: RequestId, reply: Reply },
    /// A break to deliver to an SMB client, or a deferred request's completion.
    Notify(Notification),
    /// A chunk of the operator view.
    StatusText { more: bool, text: String },
}

/// Settings for one node's session.
#[derive(Clone)]
pub struct ClientOptions {
    pub node_name: String,
    pub key: ClusterKey,
    pub handshake_timeout: Duration,
}

/// What a node needs to continue its session on another connection or replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    pub session: SessionId,
    /// Outputs (replies and notifications) received so far, counted from 1.
    pub received: u64,
    /// The id the next request will get.
    pub next_request: u64,
}

/// How many outputs a session receives before it reports them without waiting for the next
/// heartbeat (bounds the replicas' outboxes on a busy session).
const OUTPUTS_REPORT_BATCH: u64 = 1024;

/// One smbd node's authenticated session with lockmgrd.
pub struct LockClient<T: ClientTransport> {
    transport: T,
    session: SessionId,
    liveness: Duration,
    next_request: u64,
    next_heartbeat_seq: u64,
    last_sent: Instant,
    /// The frame being built: requests are encoded into it as they are submitted (no
    /// per-message queue, no allocation once the buffer has grown), and it is sent on flush or
    /// as soon as the next message does not fit.
    out: FrameBuf,
    /// Frames refused with `Full`.
    backlog: VecDeque<Vec<u8>>,
    /// Events received while `call` waited for a different reply.
    stashed: VecDeque<Event>,
    ended: bool,
    /// Outputs (replies and notifications) received in this session, counted from 1 since it
    /// began: what a resumed session tells the lock manager it has.
    received: u64,
    /// The `received` count last reported with `OutputsReceived`.
    reported: u64,
    /// Frames that arrived with the handshake's last message (a resumed session's resent
    /// outputs), read before the transport by the first `poll`.
    early: Vec<Vec<u8>>,
}

impl<T: ClientTransport> LockClient<T> {
    /// Runs the cluster-key challenge-response over `transport` (mutual: the server proves the
    /// key too) and starts a new session. Blocks up to `options.handshake_timeout`.
    pub fn connect(transport: T, options: &ClientOptions) -> Result<LockClient<T>, ClientError> {
        LockClient::establish(transport, options, None)
    }

    /// Like [`connect`](Self::connect), but continues the session `from` names (kept by the
    /// lock manager's replicas across a failover, or across a lost connection) instead of
    /// starting a new one: every output after the ones already received is sent again, and
    /// request ids continue where the session left them. The caller resends the requests it
    /// has no reply for ([`resubmit`](Self::resubmit)); the lock manager recognises those it
    /// already applied. Fails with `Rejected(SessionLost)` when the session cannot continue.
    pub fn resume(
        transport: T,
        options: &ClientOptions,
        from: ResumePoint,
    ) -> Result<LockClient<T>, ClientError> {
        let mut client =
            LockClient::establish(transport, options, Some((from.session, from.received)))?;
        client.next_request = from.next_request.max(1);
        Ok(client)
    }

    /// Where this session stands, for [`resume`](Self::resume) on another connection.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            session: self.session,
            received: self.received,
            next_request: self.next_request,
        }
    }

    fn establish(
        mut transport: T,
        options: &ClientOptions,
        resume: Option<(SessionId, u64)>,
    ) -> Result<LockClient<T>, ClientError> {
        let (accepted, early) = handshake::run_keeping(&mut transport, options, resume)?;
        let session = accepted.session;
        Ok(LockClient {
            transport,
            session,
            liveness: accepted.liveness,
            next_request: 1,
            next_heartbeat_seq: 1,
            last_sent: Instant::now(),
            out: FrameBuf::new(session),
            backlog: VecDeque::new(),
            stashed: VecDeque::new(),
            ended: false,
            received: resume.map_or(0, |(_, r)| r),
            reported: resume.map_or(0, |(_, r)| r),
            early,
        })
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The liveness lease the server granted: send something at least this often.
    pub fn liveness(&self) -> Duration {
        self.liveness
    }

    /// How often the session must show liveness: a third of the lease, so one lost heartbeat
    /// never expires it.
    pub fn heartbeat_interval(&self) -> Duration {
        self.liveness / 3
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Submits a request under an id it had before (a resend after [`LockClient::resume`]).
    pub fn resubmit(&mut self, id: RequestId, request: Request) -> Result<(), ClientError> {
        self.push(&Message::Request {
            request_id: id,
            body: request,
        })
    }

    /// Queues a request into the current frame and returns its id. Never blocks; call
    /// [`flush`](Self::flush) to send (a full frame is sent automatically).
    pub fn submit(&mut self, request: Request) -> Result<RequestId, ClientError> {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.push(&Message::Request {
            request_id: id,
            body: request,
        })?;
        Ok(id)
    }

    fn push(&mut self, msg: &Message) -> Result<(), ClientError> {
        if self.ended {
            return Err(ClientError::SessionEnded);
        }
        match self.out.push(msg) {
            Ok(()) => Ok(()),
            // Sending a full frame at once keeps at most one frame buffered for callers that
            // submit thousands of requests between flushes.
            Err(EncodeError::FrameFull) => {
                self.send_frame()?;
                Ok(self.out.push(msg)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends the frame being built (behind any backlog) and starts a new one.
    fn send_frame(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let frame = self.out.finish();
        let result = if !self.backlog.is_empty() {
            self.backlog.push_back(frame.to_vec());
            Ok(())
        } else {
            match self.transport.send(frame) {
                Ok(()) => {
                    self.last_sent = Instant::now();
                    Ok(())
                }
                Err(TransportError::Full) => {
                    self.backlog.push_back(frame.to_vec());
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        };
        self.out.clear();
        result
    }

    fn drain_backlog(&mut self) -> Result<(), ClientError> {
        while let Some(frame) = self.backlog.front() {
            match self.transport.send(frame) {
                Ok(()) => {
                    self.last_sent = Instant::now();
                    self.backlog.pop_front();
                }
                Err(TransportError::Full) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sends everything submitted so far.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.drain_backlog()?;
        if self.out.is_empty() {
            return Ok(());
        }
        self.send_frame()?;
        self.drain_backlog()
    }

    /// Whether frames wait for room in the transport (call `poll` then `flush` again).
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Non-blocking: delivers every event available now. Returns how many.
    pub fn poll(&mut self, f: &mut dyn FnMut(Event)) -> Result<usize, ClientError> {
        let mut n = 0;
        while let Some(ev) = self.stashed.pop_front() {
            f(ev);
            n += 1;
        }
        let mut ended = false;
        let mut decode_error = None;
        let session = self.session;
        let mut received = self.received;
        let early = std::mem::take(&mut self.early);
        let mut take_frame = |bytes: &[u8]| {
            let frame = match decode_frame(bytes) {
                Ok(f) => f,
                Err(e) => {
                    decode_error = Some(e);
                    return;
                }
            };
            if frame.session_id() != session {
                tracing::debug!("frame for another session dropped");
                return;
            }
            for msg in frame {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        decode_error = Some(e);
                        return;
                    }
                };
                let ev = match msg {
                    Message::Reply { request_id, body } => {
                        received += 1;
                        Event::Reply {
                            request: request_id,
                            reply: body,
                        }
                    }
                    Message::Notify { body } => {
                        received += 1;
                        Event::Notify(body)
                    }
                    // Liveness is the library's business, not the caller's.
                    Message::HeartbeatAck { .. } => continue,
                    Message::StatusText { more, text } => Event::StatusText { more, text },
                    Message::Goodbye | Message::SessionRejected { .. } => {
                        ended = true;
                        continue;
                    }
                    _ => continue,
                };
                n += 1;
                f(ev);
            }
        };
        for frame in &early {
            take_frame(frame);
        }
        let res = self.transport.poll(&mut take_frame);
        self.received = received;
        if ended {
            self.ended = true;
        }
        if let Some(e) = decode_error {
            tracing::warn!(%e, "malformed frame from lockmgrd dropped");
        }
        match res {
            Ok(_) => {}
            Err(TransportError::Disconnected) => {
                self.ended = true;
                if n == 0 {
                    return Err(ClientError::SessionEnded);
                }
            }
            Err(e) => return Err(e.into()),
        }
        if self.ended && n == 0 {
            return Err(ClientError::SessionEnded);
        }
        if !self.backlog.is_empty() {
            self.drain_backlog()?;
        }
        Ok(n)
    }

    /// Blocks until events may be available or `timeout` passes.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        if !self.stashed.is_empty() || !self.early.is_empty() {
            return Ok(());
        }
        self.transport.wait(timeout)?;
        Ok(())
    }

    /// Keeps the session alive: sends a heartbeat when nothing was sent for a third of the
    /// liveness lease. Call it from the event loop's timer.
    pub fn tick(&mut self, now: Instant) -> Result<(), ClientError> {
        let heartbeat_due = now.duration_since(self.last_sent) >= self.heartbeat_interval();
        // Tell the replicas which outputs arrived, so they can drop them from the session's
        // outbox: with every heartbeat, and sooner on a busy session.
        if self.received > self.reported
            && (heartbeat_due || self.received - self.reported >= OUTPUTS_REPORT_BATCH)
        {
            self.push(&Message::OutputsReceived { seq: self.received })?;
            self.reported = self.received;
            self.flush()?;
        }
        if heartbeat_due {
            let seq = self.next_heartbeat_seq;
            self.next_heartbeat_seq += 1;
            self.push(&Message::Heartbeat { seq })?;
            self.flush()?;
        }
        Ok(())
    }

    /// An fd that becomes readable when events may be waiting (see
    /// [`ClientTransport::as_raw_fd`]); call [`arm`](Self::arm) before sleeping on it.
    pub fn as_raw_fd(&self) -> Option<RawFd> {
        self.transport.as_raw_fd()
    }

    pub fn arm(&mut self) -> Result<bool, ClientError> {
        if !self.stashed.is_empty() || !self.early.is_empty() {
            return Ok(false);
        }
        Ok(self.transport.arm()?)
    }

    /// Submits one request and waits for its immediate reply; other events that arrive meanwhile
    /// are kept for the next `poll`. For tools and tests; smbd's event loop uses submit/poll.
    pub fn call(&mut self, request: Request, timeout: Duration) -> Result<Reply, ClientError> {
        let id = self.submit(request)?;
        self.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            let mut found = None;
            let mut others = Vec::new();
            self.poll_transport_only(&mut |ev| match ev {
                Event::Reply { request, reply } if request == id => found = Some(reply),
                other => others.push(other),
            })?;
            self.stashed.extend(others);
            if let Some(reply) = found {
                return Ok(reply);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            self.tick(now)?;
            self.transport
                .wait(Some((deadline - now).min(self.heartbeat_interval())))?;
        }
    }

    /// Waits for the next event (for tools and tests).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        if let Some(ev) = self.stashed.pop_front() {
            return Ok(ev);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut got = Vec::new();
            self.poll_transport_only(&mut |ev| got.push(ev))?;
            self.stashed.extend(got);
            if let Some(ev) = self.stashed.pop_front() {
                return Ok(ev);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            self.tick(now)?;
            self.transport
                .wait(Some((deadline - now).min(self.heartbeat_interval())))?;
        }
    }

    fn poll_transport_only(&mut self, f: &mut dyn FnMut(Event)) -> Result<usize, ClientError> {
        let stashed = std::mem::take(&mut self.stashed);
        let res = self.poll(f);
        self.stashed = stashed;
        res
    }

    /// Asks lockmgrd for its operator view (nodes, sessions, opens, locks, breaks).
    pub fn status(&mut self, timeout: Duration) -> Result<String, ClientError> {
        self.push(&Message::StatusQuery)?;
        self.flush()?;
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            match self.next_event(deadline - now)? {
                Event::StatusText { more, text: chunk } => {
                    text.push_str(&chunk);
                    if !more {
                        return Ok(text);
                    }
                }
                other => self.stashed.push_back(other),
            }
        }
    }

    /// Ends the session in order: lockmgrd releases everything it held.
    pub fn goodbye(mut self) -> Result<(), ClientError> {
        self.push(&Message::Goodbye)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use lockmgr_engine::Status;
    use lockmgr_proto::{auth, FrameWriter, Transcript, VERSION};

    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn frame(session: SessionId, msgs: &[Message]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf, session);
        for m in msgs {
            w.push(m).expect("encode");
        }
        let len = w.finish();
        buf.truncate(len);
        buf
    }

    /// A lock manager that has taken a resumed session back: it answers the handshake, and
    /// the frame with the acceptance comes in the same poll as the output the node missed
    /// (the transport had both when the node looked).
    struct ResumingServer {
        key: ClusterKey,
        session: SessionId,
        node: String,
        client_nonce: Option<[u8; 32]>,
        inbox: VecDeque<Vec<u8>>,
        missed: Message,
    }

    impl ClientTransport for ResumingServer {
        fn send(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
            let mut frame = decode_frame(bytes).expect("client frame");
            let challenge_session = SessionId(99);
            let server_nonce = [3u8; 32];
            for m in frame.by_ref() {
                match m.expect("client message") {
                    Message::ClientHello { client_nonce, .. } => {
                        self.client_nonce = Some(client_nonce);
                        self.inbox.push_back(frame_of(
                            SessionId(0),
                            Message::ServerChallenge {
                                session_id: challenge_session,
                                version: VERSION,
                                server_nonce,
                            },
                        ));
                    }
                    Message::ClientProof { .. } => {
                        let client_nonce = self.client_nonce.expect("hello first");
                        let t = Transcript {
                            node_name: &self.node,
                            client_nonce: &client_nonce,
                            server_nonce: &server_nonce,
                            session_id: challenge_session,
                            version: VERSION,
                        };
                        self.inbox.push_back(frame_of(
                            self.session,
                            Message::SessionAccepted {
                                session_id: self.session,
                                liveness_lease_ms: 1000,
                                server_proof: auth::server_proof(&self.key, &t),
                            },
                        ));
                        self.inbox
                            .push_back(frame_of(self.session, self.missed.clone()));
                    }
                    _ => {}
                }
            }
            Ok(())
        }

        fn poll(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<usize, TransportError> {
            let n = self.inbox.len();
            for b in self.inbox.drain(..) {
                f(&b);
            }
            Ok(n)
        }

        fn wait(&mut self, _timeout: Option<Duration>) -> Result<(), TransportError> {
            Ok(())
        }

        fn as_raw_fd(&self) -> Option<RawFd> {
            None
        }
    }

    fn frame_of(session: SessionId, msg: Message) -> Vec<u8> {
        frame(session, &[msg])
    }

    /// The reply the old primary never delivered comes right behind `SessionAccepted`: the
    /// resumed client must hand it out (and count it), not drop it with the handshake.
    #[test]
    fn output_behind_the_acceptance_of_a_resume_is_delivered() {
        let key = ClusterKey::new(KEY).expect("key");
        let session = SessionId(7);
        let missed = Message::Reply {
            request_id: RequestId(5),
            body: Reply::Done(Status::Success),
        };
        let server = ResumingServer {
            key: key.clone(),
            session,
            node: "node1".into(),
            client_nonce: None,
            inbox: VecDeque::new(),
            missed,
        };
        let options = ClientOptions {
            node_name: "node1".into(),
            key,
            handshake_timeout: Duration::from_secs(5),
        };
        let from = ResumePoint {
            session,
            received: 4,
            next_request: 6,
        };
        let mut client = LockClient::resume(server, &options, from).expect("resume");
        let mut events = Vec::new();
        client.poll(&mut |ev| events.push(ev)).expect("poll");
        assert_eq!(
            events,
            vec![Event::Reply {
                request: RequestId(5),
                reply: Reply::Done(Status::Success),
            }]
        );
        assert_eq!(client.resume_point().received, 5);
    }
}
