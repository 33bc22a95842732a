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

use lockmgr_engine::{LockRange, Notification, OpenId, Reply, Request, RequestId, SessionId};
use lockmgr_proto::{
    decode_frame, DecodeError, EncodeError, FrameBuf, Message, Output, RejectReason,
};
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
    /// The node's lease ran out (see [`LockClient::lease_expiry`]): the lock manager may
    /// hand this session's state to other nodes, so nothing granted in it may be used.
    #[error("the node's lease with the lock manager ran out: fenced")]
    Fenced,
    /// A replica accepted the session in an epoch older than one the node has already seen:
    /// it is a deposed primary, whose answers must not count.
    #[error("lockmgrd answered in epoch {epoch}, older than epoch {seen} seen before: a deposed primary")]
    DeposedPrimary { epoch: u32, seen: u32 },
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
    /// Whether the lock manager holds a session for `node` (the answer to
    /// [`LockClient::has_session`]).
    MemberState { node: String, has_session: bool },
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
    /// The newest replica-set epoch the session has seen: a replica that accepts the resumed
    /// session in an older one is a deposed primary and is refused.
    pub epoch: u32,
}

/// How many outputs a session receives before it reports them without waiting for the next
/// heartbeat (bounds the replicas' outboxes on a busy session).
const OUTPUTS_REPORT_BATCH: u64 = 1024;

/// The node's lease rule (FaRM / Chubby style): lockmgrd expires a session whose node it has
/// not heard from for `liveness` (measured on lockmgrd's clock from the *arrival* of the last
/// frame). A frame lockmgrd acknowledged arrived after the node sent it, so on the node's clock
/// the session cannot expire before `send time of the last acknowledged frame + liveness`,
/// provided the two clocks run at the same rate. Clock rates may differ by `LEASE_DRIFT`
/// (a generous bound: quartz is 100 ppm or better, and on one host there is one clock), and the
/// node needs time to act on the expiry (its pump may be descheduled): `LEASE_MARGIN` of the
/// lease, at least `LEASE_MIN_MARGIN`. The node stops using the session's grants at
/// `sent + liveness * (1 - LEASE_DRIFT) - margin`, before any replica may expire it.
/// A promoted standby counts the lease of the sessions it took over from its promotion, which is
/// after any acknowledgement the old primary gave, so the rule holds across a failover too.
pub const LEASE_DRIFT_PPM: u32 = 10_000;
/// Share of the lease kept in reserve for the node to fence itself (see [`LEASE_DRIFT_PPM`]).
pub const LEASE_MARGIN_PERCENT: u32 = 10;
/// Smallest reserve, for very short leases.
pub const LEASE_MIN_MARGIN: Duration = Duration::from_millis(20);

/// How long a node may use its grants after sending a frame that lockmgrd acknowledged (see
/// [`LEASE_DRIFT_PPM`]).
pub fn node_lease(liveness: Duration) -> Duration {
    let drift = liveness * LEASE_DRIFT_PPM / 1_000_000;
    let margin = (liveness * LEASE_MARGIN_PERCENT / 100).max(LEASE_MIN_MARGIN);
    liveness.saturating_sub(drift).saturating_sub(margin)
}

/// Heartbeats whose acknowledgement is awaited; older ones are forgotten (an acknowledgement
/// of a newer one renews the lease further anyway).
const HEARTBEATS_TRACKED: usize = 16;

/// One smbd node's authenticated session with lockmgrd.
pub struct LockClient<T: ClientTransport> {
    transport: T,
    session: SessionId,
    liveness: Duration,
    next_request: u64,
    next_heartbeat_seq: u64,
    last_sent: Instant,
    /// Send time of the newest frame lockmgrd acknowledged (at first: when the handshake
    /// began). The node's lease runs from here (see [`LEASE_DRIFT_PPM`]).
    acked_sent_at: Instant,
    /// Heartbeats sent and not yet acknowledged, oldest first, with their send times.
    heartbeats_in_flight: VecDeque<(u64, Instant)>,
    /// When the last heartbeat was sent: heartbeats go out every `heartbeat_interval` even
    /// on a busy session, since they are what renews the lease.
    last_heartbeat: Instant,
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
    /// The newest replica-set epoch lockmgrd's frames carried: the node's frames carry it,
    /// and frames of an older epoch (a deposed primary's) are dropped.
    epoch_seen: u32,
    /// Frames dropped for an epoch older than `epoch_seen`.
    stale_epoch_frames: u64,
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
        if client.epoch_seen < from.epoch {
            return Err(ClientError::DeposedPrimary {
                epoch: client.epoch_seen,
                seen: from.epoch,
            });
        }
        client.next_request = from.next_request.max(1);
        Ok(client)
    }

    /// Where this session stands, for [`resume`](Self::resume) on another connection.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            session: self.session,
            received: self.received,
            next_request: self.next_request,
            epoch: self.epoch_seen,
        }
    }

    fn establish(
        mut transport: T,
        options: &ClientOptions,
        resume: Option<(SessionId, u64)>,
    ) -> Result<LockClient<T>, ClientError> {
        // The acceptance acknowledges the handshake, so the lease starts no later than here.
        let handshake_began = Instant::now();
        let (accepted, early) = handshake::run_keeping(&mut transport, options, resume)?;
        let session = accepted.session;
        let now = Instant::now();
        let mut out = FrameBuf::new(session);
        out.set_epoch(accepted.epoch);
        Ok(LockClient {
            transport,
            session,
            liveness: accepted.liveness,
            next_request: 1,
            next_heartbeat_seq: 1,
            last_sent: now,
            acked_sent_at: handshake_began,
            heartbeats_in_flight: VecDeque::new(),
            last_heartbeat: now,
            out,
            backlog: VecDeque::new(),
            stashed: VecDeque::new(),
            ended: false,
            received: resume.map_or(0, |(_, r)| r),
            reported: resume.map_or(0, |(_, r)| r),
            early,
            epoch_seen: accepted.epoch,
            stale_epoch_frames: 0,
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

    /// When the node's lease runs out unless lockmgrd acknowledges another frame: from then on
    /// lockmgrd may be about to expire the session, and nothing granted in it may be used
    /// (see [`LEASE_DRIFT_PPM`] for the rule).
    pub fn lease_expiry(&self) -> Instant {
        self.acked_sent_at + node_lease(self.liveness)
    }

    /// Whether the node's lease has run out at `now`.
    pub fn lease_expired(&self, now: Instant) -> bool {
        now >= self.lease_expiry()
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The newest replica-set epoch seen from lockmgrd (0: unreplicated).
    pub fn epoch(&self) -> u32 {
        self.epoch_seen
    }

    /// Frames dropped because they carried an epoch older than one seen before (a deposed
    /// primary's).
    pub fn stale_epoch_frames(&self) -> u64 {
        self.stale_epoch_frames
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

    /// [`submit`](Self::submit) of `Request::Lock { open, ranges, fail_immediately }` without
    /// building the request: the ranges are encoded straight into the frame being built, so
    /// nothing is allocated per request.
    pub fn submit_lock(
        &mut self,
        open: OpenId,
        ranges: &[LockRange],
        fail_immediately: bool,
    ) -> Result<RequestId, ClientError> {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.push_with(|out| out.push_lock(id, open, ranges, fail_immediately))?;
        Ok(id)
    }

    /// [`submit`](Self::submit) of `Request::Unlock { open, ranges }` without building the
    /// request (see [`submit_lock`](Self::submit_lock)).
    pub fn submit_unlock(
        &mut self,
        open: OpenId,
        ranges: &[LockRange],
    ) -> Result<RequestId, ClientError> {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.push_with(|out| out.push_unlock(id, open, ranges))?;
        Ok(id)
    }

    fn push(&mut self, msg: &Message) -> Result<(), ClientError> {
        self.push_with(|out| out.push(msg))
    }

    /// Encodes one message with `encode` into the frame being built; when the frame is full,
    /// sends it and encodes into the next.
    #[inline]
    fn push_with(
        &mut self,
        encode: impl Fn(&mut FrameBuf) -> Result<(), EncodeError>,
    ) -> Result<(), ClientError> {
        if self.ended {
            return Err(ClientError::SessionEnded);
        }
        match encode(&mut self.out) {
            Ok(()) => Ok(()),
            // Sending a full frame at once keeps at most one frame buffered for callers that
            // submit thousands of requests between flushes.
            Err(EncodeError::FrameFull) => {
                self.send_frame()?;
                Ok(encode(&mut self.out)?)
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
        let mut heartbeat_acked = None;
        let mut epoch_seen = self.epoch_seen;
        let mut stale_epoch_frames = 0u64;
        let early = std::mem::take(&mut self.early);
        let mut take_frame = |bytes: &[u8]| {
            let mut frame = match decode_frame(bytes) {
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
            // A frame from an older epoch than one already seen comes from a deposed primary:
            // whatever it says may have been overtaken by its successor.
            if frame.epoch() < epoch_seen {
                stale_epoch_frames += 1;
                return;
            }
            epoch_seen = frame.epoch();
            while let Some(out) = frame.next_output() {
                let msg = match out {
                    // Nearly every reply: no `Message` built.
                    Ok(Output::Done { request_id, status }) => {
                        received += 1;
                        n += 1;
                        f(Event::Reply {
                            request: request_id,
                            reply: Reply::Done(status),
                        });
                        continue;
                    }
                    Ok(Output::Message(m)) => m,
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
                    Message::HeartbeatAck { seq } => {
                        heartbeat_acked = heartbeat_acked.max(Some(seq));
                        continue;
                    }
                    Message::StatusText { more, text } => Event::StatusText { more, text },
                    Message::MemberState { node, has_session } => {
                        Event::MemberState { node, has_session }
                    }
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
        if stale_epoch_frames > 0 {
            self.stale_epoch_frames += stale_epoch_frames;
            tracing::warn!(
                dropped = stale_epoch_frames,
                epoch = epoch_seen,
                "frames of an older epoch (a deposed primary) dropped"
            );
        }
        if epoch_seen != self.epoch_seen {
            self.epoch_seen = epoch_seen;
            // The frame being built may already hold messages: it carries the new epoch too.
            self.out.set_epoch(epoch_seen);
        }
        if let Some(seq) = heartbeat_acked {
            self.heartbeat_acknowledged(seq);
        }
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

    /// lockmgrd answered heartbeat `seq`: it heard the node after that heartbeat left, so the
    /// lease runs from the heartbeat's send time.
    fn heartbeat_acknowledged(&mut self, seq: u64) {
        while let Some(&(sent_seq, sent_at)) = self.heartbeats_in_flight.front() {
            if sent_seq > seq {
                break;
            }
            self.heartbeats_in_flight.pop_front();
            if sent_seq == seq {
                self.acked_sent_at = self.acked_sent_at.max(sent_at);
            }
        }
    }

    /// Blocks until events may be available or `timeout` passes.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        if !self.stashed.is_empty() || !self.early.is_empty() {
            return Ok(());
        }
        self.transport.wait(timeout)?;
        Ok(())
    }

    /// Keeps the session alive and the node's lease renewed: sends a heartbeat every third of
    /// the liveness lease (on a busy session too: its acknowledgement is what renews the
    /// lease). Call it from the event loop's timer.
    pub fn tick(&mut self, now: Instant) -> Result<(), ClientError> {
        let interval = self.heartbeat_interval();
        let heartbeat_due = now.duration_since(self.last_sent) >= interval
            || now.duration_since(self.last_heartbeat) >= interval;
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
            // Taken before the send, never after: lockmgrd must not have heard the heartbeat
            // before this time (a frame queued behind a full transport only shortens the lease).
            let sent_at = Instant::now();
            self.push(&Message::Heartbeat { seq })?;
            self.flush()?;
            self.last_heartbeat = sent_at;
            if self.heartbeats_in_flight.len() == HEARTBEATS_TRACKED {
                self.heartbeats_in_flight.pop_front();
            }
            self.heartbeats_in_flight.push_back((seq, sent_at));
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

    /// Whether the lock manager holds a session for node `node`: connected, or detached within
    /// its lease (`Message::MemberQuery`). A node without one holds nothing: it is fenced.
    pub fn has_session(&mut self, node: &str, timeout: Duration) -> Result<bool, ClientError> {
        self.push(&Message::MemberQuery {
            node: node.to_owned(),
        })?;
        self.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            match self.next_event(deadline - now)? {
                Event::MemberState {
                    node: n,
                    has_session,
                } if n == node => return Ok(has_session),
                // The answer to an earlier query that timed out: nobody waits for it.
                Event::MemberState { .. } => {}
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
        frame_in_epoch(0, session, msgs)
    }

    fn frame_in_epoch(epoch: u32, session: SessionId, msgs: &[Message]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf, session);
        w.set_epoch(epoch);
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
        /// The replica-set epoch of every frame it sends.
        epoch: u32,
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
                        self.inbox
                            .push_back(challenge_frame(challenge_session, server_nonce));
                    }
                    Message::ClientProof { .. } => {
                        let client_nonce = self.client_nonce.expect("hello first");
                        let server_proof = server_proof_for(
                            &self.key,
                            &self.node,
                            &client_nonce,
                            &server_nonce,
                            challenge_session,
                        );
                        self.inbox.push_back(frame_in_epoch(
                            self.epoch,
                            self.session,
                            &[Message::SessionAccepted {
                                session_id: self.session,
                                liveness_lease_ms: 1000,
                                server_proof,
                            }],
                        ));
                        self.inbox.push_back(frame_in_epoch(
                            self.epoch,
                            self.session,
                            std::slice::from_ref(&self.missed),
                        ));
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

    /// The fake lock managers' half of the handshake: the challenge naming `session`.
    fn challenge_frame(session: SessionId, server_nonce: [u8; 32]) -> Vec<u8> {
        frame_of(
            SessionId(0),
            Message::ServerChallenge {
                session_id: session,
                version: VERSION,
                server_nonce,
            },
        )
    }

    /// The proof a real lock manager sends with SessionAccepted for that challenge.
    fn server_proof_for(
        key: &ClusterKey,
        node: &str,
        client_nonce: &[u8; 32],
        server_nonce: &[u8; 32],
        session: SessionId,
    ) -> [u8; 32] {
        let t = Transcript {
            node_name: node,
            client_nonce,
            server_nonce,
            session_id: session,
            version: VERSION,
        };
        auth::server_proof(key, &t)
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
            epoch: 0,
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
            epoch: 0,
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

    /// A lock manager that answers the handshake, heartbeats and opens while `up`, and drops
    /// everything while partitioned (the transport itself never reports an error, as over
    /// UDP during a partition). Records when it last heard the session, as lockmgrd does.
    #[derive(Default)]
    struct LeaseState {
        up: bool,
        last_heard: Option<Instant>,
        next_open: u64,
    }

    struct LeaseServer {
        key: ClusterKey,
        node: String,
        liveness_ms: u32,
        client_nonce: Option<[u8; 32]>,
        inbox: VecDeque<Vec<u8>>,
        state: std::sync::Arc<std::sync::Mutex<LeaseState>>,
    }

    const LEASE_SESSION: SessionId = SessionId(11);

    impl ClientTransport for LeaseServer {
        fn send(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
            let mut st = self.state.lock().expect("state");
            if !st.up {
                return Ok(());
            }
            let mut frame = decode_frame(bytes).expect("client frame");
            if frame.session_id() == LEASE_SESSION {
                st.last_heard = Some(Instant::now());
            }
            // A new session keeps the id the challenge named.
            let challenge_session = LEASE_SESSION;
            let server_nonce = [4u8; 32];
            for m in frame.by_ref() {
                let reply = match m.expect("client message") {
                    Message::ClientHello { client_nonce, .. } => {
                        self.client_nonce = Some(client_nonce);
                        challenge_frame(challenge_session, server_nonce)
                    }
                    Message::ClientProof { .. } => {
                        let client_nonce = self.client_nonce.expect("hello first");
                        let server_proof = server_proof_for(
                            &self.key,
                            &self.node,
                            &client_nonce,
                            &server_nonce,
                            challenge_session,
                        );
                        st.last_heard = Some(Instant::now());
                        frame_of(
                            LEASE_SESSION,
                            Message::SessionAccepted {
                                session_id: LEASE_SESSION,
                                liveness_lease_ms: self.liveness_ms,
                                server_proof,
                            },
                        )
                    }
                    Message::Heartbeat { seq } => {
                        frame_of(LEASE_SESSION, Message::HeartbeatAck { seq })
                    }
                    Message::Request {
                        request_id,
                        body: Request::Open(_),
                    } => {
                        st.next_open += 1;
                        frame_of(
                            LEASE_SESSION,
                            Message::Reply {
                                request_id,
                                body: Reply::Opened {
                                    open: lockmgr_engine::OpenId(st.next_open),
                                    grant: lockmgr_engine::OplockGrant::None,
                                },
                            },
                        )
                    }
                    _ => continue,
                };
                self.inbox.push_back(reply);
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

        fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
            if self.inbox.is_empty() {
                if let Some(t) = timeout {
                    std::thread::sleep(t.min(Duration::from_millis(5)));
                }
            }
            Ok(())
        }

        fn as_raw_fd(&self) -> Option<RawFd> {
            None
        }
    }

    fn open_request() -> Request {
        Request::Open(lockmgr_engine::OpenRequest {
            stream_base: None,
            file: lockmgr_engine::FileId(7),
            access: 0x0001_0001,
            share: 0x1,
            delete_on_close: false,
            directory: false,
            overwrite: false,
            client_guid: lockmgr_engine::ClientGuid(1),
            oplock: lockmgr_engine::OplockRequest::None,
            link: 0,
            io_grant: false,
        })
    }

    /// Issue 10 item 5: a node cut off from lockmgrd (no transport error, only silence) fences
    /// itself: the connection holding an open is handed over to be dropped, the fence epoch
    /// moves, and lock requests fail; at every point the node's lease ends before lockmgrd's
    /// expiry of the session (`last heard + liveness`). Once lockmgrd answers again the node
    /// attaches a new session and requests work. Without the lease the session would stay
    /// "up" through the partition and the connection would keep its handles.
    #[test]
    fn silent_lock_manager_fences_the_node_before_its_lease_ends() {
        let key = ClusterKey::new(KEY).expect("key");
        let state = std::sync::Arc::new(std::sync::Mutex::new(LeaseState {
            up: true,
            ..LeaseState::default()
        }));
        let liveness_ms = 200;
        let connector = {
            let key = key.clone();
            let state = std::sync::Arc::clone(&state);
            Box::new(move || {
                let options = ClientOptions {
                    node_name: "node1".into(),
                    key: key.clone(),
                    handshake_timeout: Duration::from_millis(50),
                };
                let server = LeaseServer {
                    key: key.clone(),
                    node: "node1".into(),
                    liveness_ms,
                    client_nonce: None,
                    inbox: VecDeque::new(),
                    state: std::sync::Arc::clone(&state),
                };
                LockClient::connect(server, &options)
            })
        };
        let mut node = crate::mux::NodeSessions::new(connector, Duration::from_secs(1));
        let fence_epoch = node.fence_epoch();
        let conn = SessionId(1);
        let reply = node.request(conn, RequestId(1), open_request());
        assert!(matches!(reply, Reply::Opened { .. }), "{reply:?}");
        let liveness = Duration::from_millis(u64::from(liveness_ms));
        let lease_within_lockmgrd_expiry = |node: &crate::mux::NodeSessions<LeaseServer>| {
            let heard = state.lock().expect("state").last_heard.expect("heard");
            if let Some(end) = node.lease_expiry() {
                assert!(
                    end < heard + liveness,
                    "the node's lease outlives lockmgrd's expiry of the session"
                );
            }
        };
        // Heartbeats renew the lease while lockmgrd answers.
        let until = Instant::now() + 3 * liveness;
        while Instant::now() < until && fence_epoch.load(std::sync::atomic::Ordering::Acquire) == 0
        {
            node.tick();
            lease_within_lockmgrd_expiry(&node);
            std::thread::sleep(node.poll_timeout().min(Duration::from_millis(10)));
        }
        // Partition: lockmgrd hears nothing and says nothing.
        state.lock().expect("state").up = false;
        let give_up = Instant::now() + 50 * liveness;
        while fence_epoch.load(std::sync::atomic::Ordering::Acquire) == 0 {
            assert!(
                Instant::now() < give_up,
                "the node never fenced itself while cut off from lockmgrd"
            );
            node.tick();
            lease_within_lockmgrd_expiry(&node);
            std::thread::sleep(node.poll_timeout().min(Duration::from_millis(10)));
        }
        assert_eq!(node.take_lost_connections(), vec![conn]);
        assert!(!node.is_connected());
        assert_eq!(
            node.request(conn, RequestId(2), open_request()),
            Reply::Done(Status::RequestNotAccepted)
        );
        // The partition heals: a new session, and requests work again.
        state.lock().expect("state").up = true;
        let give_up = Instant::now() + 50 * liveness;
        while !node.is_connected() {
            assert!(Instant::now() < give_up, "the node never re-attached");
            node.tick();
            std::thread::sleep(Duration::from_millis(10));
        }
        let reply = node.request(SessionId(2), RequestId(3), open_request());
        assert!(matches!(reply, Reply::Opened { .. }), "{reply:?}");
    }

    /// The node's lease is the liveness lease less the drift bound and the reserve, and never
    /// negative.
    #[test]
    fn node_lease_keeps_a_margin_below_the_liveness_lease() {
        let l = Duration::from_millis(1000);
        assert_eq!(node_lease(l), Duration::from_millis(1000 - 10 - 100));
        let short = Duration::from_millis(100);
        assert_eq!(node_lease(short), Duration::from_millis(100 - 1 - 20));
        assert_eq!(node_lease(Duration::from_millis(10)), Duration::ZERO);
    }

    fn resuming_server(key: &ClusterKey, epoch: u32) -> ResumingServer {
        ResumingServer {
            key: key.clone(),
            session: SessionId(7),
            node: "node1".into(),
            client_nonce: None,
            inbox: VecDeque::new(),
            missed: Message::Reply {
                request_id: RequestId(5),
                body: Reply::Done(Status::Success),
            },
            epoch,
        }
    }

    /// Issue 10 item 2: a replica that takes the session back in an epoch older than one the
    /// node has seen is a deposed primary: the resume is refused (the node's resumer tries the
    /// other replicas), and once a session has seen an epoch, frames of an older one are
    /// dropped, not delivered.
    #[test]
    fn deposed_primary_replies_are_refused() {
        let key = ClusterKey::new(KEY).expect("key");
        let options = ClientOptions {
            node_name: "node1".into(),
            key: key.clone(),
            handshake_timeout: Duration::from_secs(5),
        };
        let from = ResumePoint {
            session: SessionId(7),
            received: 4,
            next_request: 6,
            epoch: 5,
        };
        match LockClient::resume(resuming_server(&key, 3), &options, from) {
            Err(ClientError::DeposedPrimary { epoch: 3, seen: 5 }) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a deposed primary (epoch 3) took back a session that saw epoch 5"),
        }
        // The current primary takes it; then a frame of the old epoch comes in.
        let mut client =
            LockClient::resume(resuming_server(&key, 5), &options, from).expect("resume");
        assert_eq!(client.epoch(), 5);
        client.transport.inbox.push_back(frame_in_epoch(
            4,
            SessionId(7),
            &[Message::Reply {
                request_id: RequestId(6),
                body: Reply::Done(Status::LockNotGranted),
            }],
        ));
        client.transport.inbox.push_back(frame_in_epoch(
            6,
            SessionId(7),
            &[Message::Reply {
                request_id: RequestId(7),
                body: Reply::Done(Status::Success),
            }],
        ));
        let mut events = Vec::new();
        client.poll(&mut |ev| events.push(ev)).expect("poll");
        assert_eq!(
            events,
            vec![
                // Resent by the epoch-5 primary behind its acceptance.
                Event::Reply {
                    request: RequestId(5),
                    reply: Reply::Done(Status::Success),
                },
                Event::Reply {
                    request: RequestId(7),
                    reply: Reply::Done(Status::Success),
                },
            ]
        );
        assert_eq!(client.stale_epoch_frames(), 1);
        // The node's own frames now carry the newest epoch it saw.
        assert_eq!(client.epoch(), 6);
        assert_eq!(client.resume_point().epoch, 6);
    }
}
