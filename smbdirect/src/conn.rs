//! One SMB Direct connection without I/O (MS-SMBD 3.1): negotiation, send and receive
//! credits, fragmentation and reassembly, keep-alive and the idle timeout.
//!
//! The caller owns the queue pair. It posts receive buffers when [`Connection::receive_deficit`]
//! says so and reports them with [`Event::ReceivesPosted`], hands every receive completion to
//! [`Event::Received`], sends whatever [`Connection::poll_transmit`] yields (one RDMA SEND each),
//! and calls [`Event::Timeout`] at [`Connection::poll_timeout`]. Upper-layer (SMB2) messages go
//! in with [`Connection::send`] and come out of [`Connection::poll_output`].
//!
//! Credits are granted only for receives the caller has *reported* posted: a grant for a
//! buffer that is still being reposted lets the peer send into nothing (the credit-grant race
//! ksmbd had). The last send credit is only spent by a message that grants credits back
//! (3.1.5.1), so both ends can never sit on zero credits each waiting for the other.

use std::collections::VecDeque;
use std::ops::Add;
use std::time::Duration;

use thiserror::Error;
use tracing::{debug, trace};

use crate::codec::{
    DataHeader, DataMessage, DecodeError, NegotiateRequest, NegotiateResponse, DATA_OFFSET,
    MIN_FRAGMENTED_SIZE, MIN_RECEIVE_SIZE, SMBD_VERSION_1, SMB_DIRECT_RESPONSE_REQUESTED,
    STATUS_NOT_SUPPORTED,
};

/// A point in the caller's clock (simulated or monotonic): the time since an epoch the caller
/// chooses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub Duration);

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

/// Which end of the RDMA connection this is: the initiator sends the Negotiate Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Local limits. The defaults are the Linux client's and ksmbd's sizes (1364-byte sends and
/// receives, 255 credits) with a 1 MiB reassembly limit.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest message we send, header included (PreferredSendSize).
    pub max_send_size: u32,
    /// Size of each receive buffer we post (MaxReceiveSize).
    pub max_receive_size: u32,
    /// Largest upper-layer message we reassemble (MaxFragmentedSize).
    pub max_fragmented_size: u32,
    /// Receive buffers we keep posted (one more while stuck on the last send credit), and
    /// so the most credits the peer can hold. At least 3.
    pub receive_credit_max: u16,
    /// Send credits we ask the peer to keep us at (CreditsRequested).
    pub send_credit_target: u16,
    /// MaxReadWriteSize we offer for RDMA READ/WRITE through buffer descriptors.
    pub max_read_write_size: u32,
    /// Silence from the peer after which we ask it for a response (keep-alive).
    pub keepalive_interval: Duration,
    /// How long a keep-alive may go unanswered before the connection ends.
    pub keepalive_timeout: Duration,
    /// How long negotiation may take.
    pub negotiate_timeout: Duration,
    /// How long queued data may wait for send credits before the peer counts as stuck.
    pub credit_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_send_size: 1364,
            max_receive_size: 1364,
            max_fragmented_size: 1 << 20,
            receive_credit_max: 255,
            send_credit_target: 255,
            max_read_write_size: 1 << 20,
            keepalive_interval: Duration::from_secs(120),
            keepalive_timeout: Duration::from_secs(5),
            negotiate_timeout: Duration::from_secs(5),
            credit_timeout: Duration::from_secs(10),
        }
    }
}

/// A configuration the protocol cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("max_send_size and max_receive_size must be at least 128")]
    SizeTooSmall,
    #[error("max_fragmented_size must be at least 131072")]
    FragmentedSizeTooSmall,
    #[error("receive_credit_max must be at least 3 (see Connection::credit_goal)")]
    TooFewReceiveCredits,
    #[error("send_credit_target must be at least 1")]
    ZeroSendCreditTarget,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_send_size < MIN_RECEIVE_SIZE || self.max_receive_size < MIN_RECEIVE_SIZE {
            return Err(ConfigError::SizeTooSmall);
        }
        if self.max_fragmented_size < MIN_FRAGMENTED_SIZE {
            return Err(ConfigError::FragmentedSizeTooSmall);
        }
        if self.receive_credit_max < 3 {
            return Err(ConfigError::TooFewReceiveCredits);
        }
        if self.send_credit_target == 0 {
            return Err(ConfigError::ZeroSendCreditTarget);
        }
        Ok(())
    }
}

/// What the caller tells the connection.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A receive completed with this message (one posted receive is used up).
    Received(&'a [u8]),
    /// The caller posted this many more receive buffers of `max_receive_size` bytes.
    ReceivesPosted(u16),
    /// `now` has reached (or passed) [`Connection::poll_timeout`].
    Timeout,
}

/// The sizes both ends agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Largest message we may send (header included).
    pub max_send_size: u32,
    /// Largest message we accept.
    pub max_receive_size: u32,
    /// Largest upper-layer message the peer reassembles: the limit of [`Connection::send`].
    pub peer_max_fragmented_size: u32,
    pub max_read_write_size: u32,
}

/// What the connection tells the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Negotiation finished; upper-layer messages may flow.
    Connected(Negotiated),
    /// A whole upper-layer message, reassembled.
    Message(Vec<u8>),
    /// The connection ended; the caller disconnects the queue pair. Always the last output.
    Closed(ConnectionError),
}

/// Why a connection ended. Every protocol violation of the peer is one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectionError {
    #[error("invalid message: {0}")]
    Decode(#[from] DecodeError),
    #[error("message of {len} bytes exceeds our receive size {max}")]
    MessageTooLong { len: usize, max: u32 },
    #[error("peer sent without a receive credit")]
    NoCredit,
    #[error("peer granted more than 65535 send credits")]
    CreditOverflow,
    #[error("message received before negotiation allows one")]
    UnexpectedMessage,
    #[error("fragment of {length} bytes with {remaining} remaining does not continue a message expecting {expected} more")]
    FragmentMismatch {
        expected: u32,
        length: u32,
        remaining: u32,
    },
    #[error("message without payload claims {0} remaining bytes")]
    EmptyFragment(u32),
    #[error("negotiation did not finish in time")]
    NegotiateTimeout,
    #[error("peer did not answer a keep-alive")]
    IdleTimeout,
    #[error("queued data got no send credit in time (peer stopped granting)")]
    SendCreditTimeout,
    #[error("closed locally")]
    LocallyClosed,
}

/// Why [`Connection::send`] refused a message (the connection itself is unaffected).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("connection not established")]
    NotConnected,
    #[error("connection closed")]
    Closed,
    #[error("empty message")]
    Empty,
    #[error("message of {len} bytes exceeds the peer's MaxFragmentedSize {max}")]
    TooLarge { len: usize, max: u32 },
}

/// One RDMA SEND for the caller to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub bytes: Vec<u8>,
    /// Post it as SEND_WITH_INVALIDATE of this memory token (MS-SMBD 3.1.5.1): set on the
    /// last fragment of a message queued with [`Connection::send_with_invalidate`], so the
    /// peer's buffer is invalid before its upper layer sees the whole response. An RDMA
    /// provider without remote invalidation may post a plain SEND.
    pub invalidate: Option<u32>,
}

impl Transmit {
    fn plain(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            invalidate: None,
        }
    }
}

/// An upper-layer message waiting to be sent.
#[derive(Debug)]
struct Outgoing {
    data: Vec<u8>,
    invalidate: Option<u32>,
}

/// Counters for tests and the daemon's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Data Transfer messages without payload (credit grants and keep-alive answers).
    pub empty_sent: u64,
    pub keepalives_sent: u64,
    pub credits_granted: u64,
    pub upper_messages_sent: u64,
    pub upper_messages_received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Client: the Negotiate Request goes out once a receive for the response is posted.
    ClientStart,
    ClientAwaitResponse,
    ServerAwaitRequest,
    /// Server: the request was good; the response goes out once receives are posted to grant.
    ServerRespond,
    /// Server: the version range was refused; the failure response goes out, then close.
    ServerRefuse,
    Established,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keepalive {
    Idle,
    /// The idle timer fired: the next message carries SMB_DIRECT_RESPONSE_REQUESTED.
    Pending,
    /// Asked; the peer must send something before the idle timer fires again.
    Sent,
}

/// One SMB Direct connection (see the module documentation).
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Config,
    state: State,
    error: Option<ConnectionError>,
    negotiated: Negotiated,
    negotiate_deadline: Option<Time>,
    idle_deadline: Option<Time>,
    blocked_since: Option<Time>,
    /// The latest time the caller gave us: when a transmit finds itself out of credits,
    /// the wait counts from here (transmits carry no clock of their own).
    last_now: Time,
    keepalive: Keepalive,
    /// The peer asked for a prompt message (its keep-alive).
    respond_requested: bool,

    /// Send credits: messages we may send before the peer grants more.
    send_credits: u16,
    /// Credits we granted that the peer has not used: the peer's send credits.
    receive_credits: u16,
    /// How many credits the peer wants to hold (its CreditsRequested, at most our maximum).
    receive_credit_target: u16,
    /// Receives posted and not yet completed. Always at least `receive_credits`.
    posted: u16,

    send_queue: VecDeque<Outgoing>,
    /// The upper-layer message being fragmented and how much of it has gone out. Nothing
    /// else is fragmented until it is done: fragments of two messages never interleave.
    sending: Option<(Outgoing, usize)>,

    reassembly: Vec<u8>,
    /// Bytes still to come for the message in `reassembly`.
    expected_remaining: Option<u32>,
    /// The response to a refused negotiate, kept for the one transmit before closing.
    refusal: Option<DecodeError>,

    outputs: VecDeque<Output>,
    stats: Stats,
}

impl Connection {
    /// A connection whose queue pair is connected (client) or accepted (server) at `now`.
    pub fn new(role: Role, config: Config, now: Time) -> Result<Self, ConfigError> {
        config.validate()?;
        let negotiated = Negotiated {
            max_send_size: config.max_send_size,
            max_receive_size: config.max_receive_size,
            peer_max_fragmented_size: MIN_FRAGMENTED_SIZE,
            max_read_write_size: config.max_read_write_size,
        };
        Ok(Self {
            role,
            state: match role {
                Role::Client => State::ClientStart,
                Role::Server => State::ServerAwaitRequest,
            },
            error: None,
            negotiated,
            negotiate_deadline: Some(now + config.negotiate_timeout),
            idle_deadline: None,
            blocked_since: None,
            last_now: now,
            keepalive: Keepalive::Idle,
            respond_requested: false,
            send_credits: 0,
            receive_credits: 0,
            receive_credit_target: 1,
            posted: 0,
            send_queue: VecDeque::new(),
            sending: None,
            reassembly: Vec::new(),
            expected_remaining: None,
            refusal: None,
            outputs: VecDeque::new(),
            stats: Stats::default(),
            config,
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Why the connection ended, once it has.
    pub fn error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    /// The agreed sizes (meaningful once established).
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn send_credits(&self) -> u16 {
        self.send_credits
    }

    /// Credits granted to the peer and not used yet.
    pub fn receive_credits(&self) -> u16 {
        self.receive_credits
    }

    pub fn posted_receives(&self) -> u16 {
        self.posted
    }

    /// Receive buffers the caller should post now (and then report with
    /// [`Event::ReceivesPosted`]).
    pub fn receive_deficit(&self) -> u16 {
        if self.state == State::Closed {
            return 0;
        }
        let ring = self
            .config
            .receive_credit_max
            .saturating_add(u16::from(self.stuck_on_last_credit()));
        ring.saturating_sub(self.posted)
    }

    /// Upper-layer messages queued or partly sent.
    pub fn queued_messages(&self) -> usize {
        self.send_queue.len() + usize::from(self.sending.is_some())
    }

    /// Queues an upper-layer message. It is fragmented if it does not fit one send.
    pub fn send(&mut self, now: Time, msg: Vec<u8>) -> Result<(), SendError> {
        self.queue(now, msg, None)
    }

    /// Queues an upper-layer message whose last fragment invalidates the peer's memory
    /// `token` (an SMB2 READ/WRITE response for SMB2_CHANNEL_RDMA_V1_INVALIDATE).
    pub fn send_with_invalidate(
        &mut self,
        now: Time,
        msg: Vec<u8>,
        token: u32,
    ) -> Result<(), SendError> {
        self.queue(now, msg, Some(token))
    }

    fn queue(&mut self, now: Time, msg: Vec<u8>, invalidate: Option<u32>) -> Result<(), SendError> {
        match self.state {
            State::Established => {}
            State::Closed => return Err(SendError::Closed),
            _ => return Err(SendError::NotConnected),
        }
        if msg.is_empty() {
            return Err(SendError::Empty);
        }
        let max = self.negotiated.peer_max_fragmented_size;
        if msg.len() as u64 > u64::from(max) {
            return Err(SendError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        self.send_queue.push_back(Outgoing {
            data: msg,
            invalidate,
        });
        self.last_now = self.last_now.max(now);
        self.refresh_blocked(now);
        Ok(())
    }

    /// Ends the connection from this side.
    pub fn close(&mut self) {
        self.fail(ConnectionError::LocallyClosed);
    }

    pub fn handle(&mut self, now: Time, event: Event<'_>) {
        if self.state == State::Closed {
            return;
        }
        self.last_now = self.last_now.max(now);
        let result = match event {
            Event::Received(bytes) => self.on_receive(now, bytes),
            Event::ReceivesPosted(n) => {
                self.posted = self.posted.saturating_add(n);
                Ok(())
            }
            Event::Timeout => self.on_timeout(now),
        };
        if let Err(e) = result {
            self.fail(e);
            return;
        }
        self.refresh_blocked(now);
    }

    /// The earliest time the caller must call [`Event::Timeout`].
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.state == State::Closed {
            return None;
        }
        let credit = self.blocked_since.map(|t| t + self.config.credit_timeout);
        [self.negotiate_deadline, self.idle_deadline, credit]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next message to send, if credits allow one.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        match self.state {
            State::ClientStart => {
                // The response needs a posted receive to land in.
                if self.posted == 0 {
                    return None;
                }
                self.state = State::ClientAwaitResponse;
                self.stats.messages_sent += 1;
                Some(Transmit::plain(
                    NegotiateRequest {
                        min_version: SMBD_VERSION_1,
                        max_version: SMBD_VERSION_1,
                        credits_requested: self.config.send_credit_target,
                        preferred_send_size: self.config.max_send_size,
                        max_receive_size: self.config.max_receive_size,
                        max_fragmented_size: self.config.max_fragmented_size,
                    }
                    .encode(),
                ))
            }
            State::ServerRespond => self.negotiate_response().map(Transmit::plain),
            State::ServerRefuse => {
                let msg = self.response(0, STATUS_NOT_SUPPORTED);
                let e = self
                    .refusal
                    .take()
                    .unwrap_or(DecodeError::UnsupportedVersion { min: 0, max: 0 });
                self.fail(ConnectionError::Decode(e));
                Some(Transmit::plain(msg))
            }
            State::Established => {
                let msg = self.next_data_message();
                self.refresh_blocked(self.last_now);
                msg
            }
            State::ClientAwaitResponse | State::ServerAwaitRequest | State::Closed => None,
        }
    }

    fn response(&self, credits_granted: u16, status: u32) -> Vec<u8> {
        NegotiateResponse {
            min_version: SMBD_VERSION_1,
            max_version: SMBD_VERSION_1,
            negotiated_version: SMBD_VERSION_1,
            credits_requested: self.config.send_credit_target,
            credits_granted,
            status,
            max_read_write_size: self.negotiated.max_read_write_size,
            preferred_send_size: self.negotiated.max_send_size,
            max_receive_size: self.negotiated.max_receive_size,
            max_fragmented_size: self.config.max_fragmented_size,
        }
        .encode()
    }

    fn negotiate_response(&mut self) -> Option<Vec<u8>> {
        // 3.1.5.7 refuses a response granting nothing: wait until receives are posted.
        let grant = self.posted.min(self.receive_credit_target);
        if grant == 0 {
            return None;
        }
        let msg = self.response(grant, 0);
        self.receive_credits = grant;
        self.stats.credits_granted += u64::from(grant);
        self.stats.messages_sent += 1;
        self.establish();
        Some(msg)
    }

    fn establish(&mut self) {
        debug!(role = ?self.role, negotiated = ?self.negotiated, "smbdirect: established");
        self.state = State::Established;
        self.negotiate_deadline = None;
        self.outputs.push_back(Output::Connected(self.negotiated));
    }

    /// Credits we could grant with the receives posted now.
    fn grantable(&self) -> u16 {
        self.posted - self.receive_credits
    }

    /// How many credits we keep the peer at: its target, but never under three. A peer
    /// left with one or two credits spends one on every grant it sends us, and two ends that
    /// each hold one or two credits would trade grant messages forever.
    fn credit_goal(&self) -> u16 {
        self.receive_credit_target.max(3)
    }

    /// The grant a message carries: the peer back up to its goal (3.1.5.9), and at least one
    /// on our last credit (3.1.5.1: the last credit must bring credits back).
    fn grant_for_next(&self) -> u16 {
        let wanted = self.credit_goal().saturating_sub(self.receive_credits);
        let wanted = if self.send_credits == 1 {
            wanted.max(1)
        } else {
            wanted
        };
        wanted.min(self.grantable())
    }

    /// A payload-less message is worth a credit when the peer is down to its last credit
    /// (it can only send if it has something to grant, which we cannot know) or has used
    /// two or more of its target. One message from the peer, which uses one of our credits,
    /// must not trigger one back: see [`Connection::credit_goal`].
    fn grant_only_needed(&self) -> bool {
        self.grantable() > 0
            && (self.receive_credits <= 1
                || u32::from(self.receive_credits) + 2 <= u32::from(self.receive_credit_target))
    }

    /// On our last credit with data waiting and every posted receive already granted, we
    /// cannot send: 3.1.5.9 says to post one more receive so the message can grant it.
    fn stuck_on_last_credit(&self) -> bool {
        self.state == State::Established
            && self.send_credits == 1
            && self.grantable() == 0
            && self.has_pending_send()
    }

    fn has_pending_send(&self) -> bool {
        self.sending.is_some()
            || !self.send_queue.is_empty()
            || self.respond_requested
            || self.keepalive == Keepalive::Pending
    }

    fn can_send_now(&self) -> bool {
        self.send_credits > 1 || (self.send_credits == 1 && self.grant_for_next() > 0)
    }

    fn refresh_blocked(&mut self, now: Time) {
        if self.state == State::Established && self.has_pending_send() && !self.can_send_now() {
            self.blocked_since.get_or_insert(now);
        } else {
            self.blocked_since = None;
        }
    }

    fn next_data_message(&mut self) -> Option<Transmit> {
        if !self.has_pending_send() && !self.grant_only_needed() {
            return None;
        }
        if !self.can_send_now() {
            return None;
        }
        let grant = self.grant_for_next();
        let mut flags = 0;
        if self.keepalive == Keepalive::Pending {
            flags |= SMB_DIRECT_RESPONSE_REQUESTED;
            self.keepalive = Keepalive::Sent;
            self.stats.keepalives_sent += 1;
        }
        if self.sending.is_none() {
            if let Some(m) = self.send_queue.pop_front() {
                self.sending = Some((m, 0));
            }
        }
        let per_message = self.negotiated.max_send_size as usize - DATA_OFFSET;
        let (payload, remaining) = match &mut self.sending {
            Some((msg, sent)) => {
                let n = per_message.min(msg.data.len() - *sent);
                let start = *sent;
                *sent += n;
                (&msg.data[start..*sent], msg.data.len() - *sent)
            }
            None => (&[][..], 0),
        };
        let header = DataHeader {
            credits_requested: self.config.send_credit_target,
            credits_granted: grant,
            flags,
            // Bounded by the peer's MaxFragmentedSize, a u32.
            remaining_data_length: remaining as u32,
        };
        let bytes = header.encode(payload);
        if payload.is_empty() {
            self.stats.empty_sent += 1;
        }
        let mut invalidate = None;
        if remaining == 0 {
            if let Some((done, _)) = self.sending.take() {
                self.stats.upper_messages_sent += 1;
                invalidate = done.invalidate;
            }
        }
        self.send_credits -= 1;
        self.receive_credits += grant;
        self.stats.credits_granted += u64::from(grant);
        self.stats.messages_sent += 1;
        // Any message answers the peer's keep-alive.
        self.respond_requested = false;
        self.blocked_since = None;
        trace!(
            grant,
            remaining,
            len = bytes.len(),
            credits = self.send_credits,
            "smbdirect: send"
        );
        Some(Transmit { bytes, invalidate })
    }

    fn on_timeout(&mut self, now: Time) -> Result<(), ConnectionError> {
        if self.negotiate_deadline.is_some_and(|t| t <= now) {
            return Err(ConnectionError::NegotiateTimeout);
        }
        if self
            .blocked_since
            .is_some_and(|t| t + self.config.credit_timeout <= now)
        {
            return Err(ConnectionError::SendCreditTimeout);
        }
        if self.idle_deadline.is_some_and(|t| t <= now) {
            if self.keepalive != Keepalive::Idle {
                return Err(ConnectionError::IdleTimeout);
            }
            self.keepalive = Keepalive::Pending;
            self.idle_deadline = Some(now + self.config.keepalive_timeout);
        }
        Ok(())
    }

    fn on_receive(&mut self, now: Time, bytes: &[u8]) -> Result<(), ConnectionError> {
        if bytes.len() as u64 > u64::from(self.negotiated.max_receive_size) {
            return Err(ConnectionError::MessageTooLong {
                len: bytes.len(),
                max: self.negotiated.max_receive_size,
            });
        }
        self.stats.messages_received += 1;
        match self.state {
            State::ClientAwaitResponse => self.on_negotiate_response(now, bytes),
            State::ServerAwaitRequest => self.on_negotiate_request(now, bytes),
            State::Established => self.on_data(now, bytes),
            _ => Err(ConnectionError::UnexpectedMessage),
        }
    }

    fn take_posted(&mut self) -> Result<(), ConnectionError> {
        self.posted = self
            .posted
            .checked_sub(1)
            .ok_or(ConnectionError::UnexpectedMessage)?;
        Ok(())
    }

    fn on_negotiate_request(&mut self, now: Time, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.take_posted()?;
        let req = NegotiateRequest::decode(bytes)?;
        if let Err(e) = req.check_version() {
            debug!(error = %e, "smbdirect: refusing negotiate");
            self.refusal = Some(e);
            self.state = State::ServerRefuse;
            return Ok(());
        }
        req.validate()?;
        // 3.1.5.6: receive at most what the peer prefers to send (but never under 128).
        self.negotiated.max_receive_size = self
            .config
            .max_receive_size
            .min(req.preferred_send_size)
            .max(MIN_RECEIVE_SIZE);
        self.negotiated.max_send_size = self.config.max_send_size.min(req.max_receive_size);
        self.negotiated.peer_max_fragmented_size = req.max_fragmented_size;
        self.receive_credit_target = req.credits_requested.min(self.config.receive_credit_max);
        self.idle_deadline = Some(now + self.config.keepalive_interval);
        self.state = State::ServerRespond;
        Ok(())
    }

    fn on_negotiate_response(&mut self, now: Time, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.take_posted()?;
        let resp = NegotiateResponse::decode(bytes)?;
        resp.validate(self.config.max_receive_size)?;
        self.negotiated.max_receive_size = self
            .config
            .max_receive_size
            .min(resp.preferred_send_size)
            .max(MIN_RECEIVE_SIZE);
        self.negotiated.max_send_size = self.config.max_send_size.min(resp.max_receive_size);
        self.negotiated.peer_max_fragmented_size = resp.max_fragmented_size;
        self.negotiated.max_read_write_size = self
            .config
            .max_read_write_size
            .min(resp.max_read_write_size);
        self.receive_credit_target = resp.credits_requested.min(self.config.receive_credit_max);
        self.send_credits = resp.credits_granted;
        self.idle_deadline = Some(now + self.config.keepalive_interval);
        self.establish();
        Ok(())
    }

    fn on_data(&mut self, now: Time, bytes: &[u8]) -> Result<(), ConnectionError> {
        if self.receive_credits == 0 {
            return Err(ConnectionError::NoCredit);
        }
        let msg = DataMessage::decode(bytes, self.config.max_fragmented_size)?;
        self.receive_credits -= 1;
        self.posted -= 1;
        self.receive_credit_target = msg
            .header
            .credits_requested
            .min(self.config.receive_credit_max);
        self.send_credits = self
            .send_credits
            .checked_add(msg.header.credits_granted)
            .ok_or(ConnectionError::CreditOverflow)?;
        if msg.header.flags & SMB_DIRECT_RESPONSE_REQUESTED != 0 {
            self.respond_requested = true;
        }
        // Anything from the peer shows it is alive.
        self.keepalive = Keepalive::Idle;
        self.idle_deadline = Some(now + self.config.keepalive_interval);

        let length = msg.payload.len() as u32;
        let remaining = msg.header.remaining_data_length;
        if length == 0 {
            // A credit grant or keep-alive: it must not end (or extend) a fragmented message.
            if remaining != 0 {
                return Err(ConnectionError::EmptyFragment(remaining));
            }
            return Ok(());
        }
        match self.expected_remaining {
            Some(expected) if u64::from(length) + u64::from(remaining) != u64::from(expected) => {
                return Err(ConnectionError::FragmentMismatch {
                    expected,
                    length,
                    remaining,
                });
            }
            Some(_) => self.reassembly.extend_from_slice(msg.payload),
            None if remaining == 0 => {
                self.stats.upper_messages_received += 1;
                self.outputs
                    .push_back(Output::Message(msg.payload.to_vec()));
                return Ok(());
            }
            None => {
                self.reassembly.clear();
                self.reassembly.extend_from_slice(msg.payload);
            }
        }
        if remaining == 0 {
            self.expected_remaining = None;
            self.stats.upper_messages_received += 1;
            let whole = std::mem::take(&mut self.reassembly);
            self.outputs.push_back(Output::Message(whole));
        } else {
            self.expected_remaining = Some(remaining);
        }
        Ok(())
    }

    fn fail(&mut self, e: ConnectionError) {
        if self.state == State::Closed {
            return;
        }
        debug!(role = ?self.role, error = %e, "smbdirect: connection ends");
        self.state = State::Closed;
        self.send_queue.clear();
        self.sending = None;
        self.reassembly = Vec::new();
        self.negotiate_deadline = None;
        self.idle_deadline = None;
        self.blocked_since = None;
        self.error = Some(e.clone());
        self.outputs.push_back(Output::Closed(e));
    }
}
