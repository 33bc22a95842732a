//! A client and a server [`Connection`] stepped against each other in simulated time, the way
//! quinn-proto tests its connections: messages are byte vectors in bounded in-order queues
//! (an RC queue pair), each end has a count of posted receive buffers that the test controls,
//! and delivery can be held back per direction. A message that arrives with no receive
//! posted is what an RDMA NIC reports as receiver-not-ready: the harness counts it in
//! [`Endpoint::rnr`] instead of handing it over, so credit bugs show up as a number.

use std::collections::VecDeque;
use std::time::Duration;

use crate::codec::DataMessage;
use crate::conn::{
    Config, ConfigError, Connection, ConnectionError, Event, Negotiated, Output, Role, Time,
};

/// One end: its connection, what the simulated RDMA layer holds for it, what it delivered.
#[derive(Debug)]
pub struct Endpoint {
    pub conn: Connection,
    /// Messages on the wire towards this end, oldest first.
    pub inbound: VecDeque<Vec<u8>>,
    /// Receive buffers the simulated NIC has posted for this end.
    pub posted: u16,
    /// Post receives as soon as the connection asks for them; when false only
    /// [`Pair::repost`] posts (a reposting path that lags behind).
    pub auto_repost: bool,
    /// Hand inbound messages to this end; when false they wait on the wire.
    pub deliver: bool,
    /// Most messages the wire holds towards this end (the sender's send queue depth).
    pub wire_limit: usize,
    /// Upper-layer messages this end received, in order.
    pub received: Vec<Vec<u8>>,
    pub connected: Option<Negotiated>,
    pub closed: Option<ConnectionError>,
    /// Messages that arrived with no receive posted.
    pub rnr: usize,
    /// Every message this end received from the wire, in order (for tests that inspect them).
    pub wire_log: Vec<Vec<u8>>,
    /// Messages this end sent with its last send credit that granted nothing back
    /// (MS-SMBD 3.1.5.1 forbids them: they can leave both ends without credits).
    pub last_credit_without_grant: usize,
    /// Memory tokens invalidated by messages sent to this end (SEND_WITH_INVALIDATE).
    pub invalidated: Vec<u32>,
}

impl Endpoint {
    fn new(role: Role, config: Config, now: Time) -> Result<Self, ConfigError> {
        Ok(Self {
            conn: Connection::new(role, config, now)?,
            inbound: VecDeque::new(),
            posted: 0,
            auto_repost: true,
            deliver: true,
            wire_limit: 64,
            received: Vec::new(),
            connected: None,
            closed: None,
            rnr: 0,
            wire_log: Vec::new(),
            last_credit_without_grant: 0,
            invalidated: Vec::new(),
        })
    }

    fn drain_outputs(&mut self) {
        while let Some(o) = self.conn.poll_output() {
            match o {
                Output::Connected(n) => self.connected = Some(n),
                Output::Message(m) => self.received.push(m),
                Output::Closed(e) => self.closed = Some(e),
            }
        }
    }

    fn post(&mut self, now: Time, n: u16) {
        if n == 0 {
            return;
        }
        self.posted += n;
        self.conn.handle(now, Event::ReceivesPosted(n));
    }
}

/// Which end of a [`Pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// A client and a server in simulated time.
#[derive(Debug)]
pub struct Pair {
    pub now: Time,
    pub client: Endpoint,
    pub server: Endpoint,
}

/// Steps a [`Pair::run`] may take before it counts as a livelock.
pub const MAX_STEPS: usize = 1_000_000;

impl Pair {
    pub fn new(client: Config, server: Config) -> Result<Self, ConfigError> {
        let now = Time::default();
        Ok(Self {
            now,
            client: Endpoint::new(Role::Client, client, now)?,
            server: Endpoint::new(Role::Server, server, now)?,
        })
    }

    pub fn side(&mut self, side: Side) -> &mut Endpoint {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Posts `n` receives at one end by hand (see [`Endpoint::auto_repost`]).
    pub fn repost(&mut self, side: Side, n: u16) {
        let now = self.now;
        let e = self.side(side);
        let n = n.min(e.conn.receive_deficit());
        e.post(now, n);
        e.drain_outputs();
    }

    /// Puts raw bytes on the wire towards `to`, as a misbehaving peer would send them.
    pub fn inject(&mut self, to: Side, bytes: Vec<u8>) {
        self.side(to).inbound.push_back(bytes);
    }

    /// Queues an upper-layer message at one end.
    pub fn send(&mut self, from: Side, msg: Vec<u8>) -> Result<(), crate::conn::SendError> {
        let now = self.now;
        self.side(from).conn.send(now, msg)
    }

    /// One round: reposts, transmits (bounded by the wire), one delivery per direction.
    /// Returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let now = self.now;
        let mut progress = false;
        for e in [&mut self.client, &mut self.server] {
            if e.auto_repost {
                let n = e.conn.receive_deficit();
                progress |= n > 0;
                e.post(now, n);
            }
        }
        progress |= transmit(&mut self.client, &mut self.server);
        progress |= transmit(&mut self.server, &mut self.client);
        for e in [&mut self.client, &mut self.server] {
            progress |= deliver_one(now, e);
            e.drain_outputs();
        }
        progress
    }

    /// Steps until nothing moves. Panics after [`MAX_STEPS`]: two ends that keep sending
    /// each other messages with nothing to say are a bug too.
    pub fn run(&mut self) -> usize {
        for steps in 0..MAX_STEPS {
            if !self.step() {
                return steps;
            }
        }
        panic!("pair did not quiesce in {MAX_STEPS} steps");
    }

    /// Runs, then moves the clock to the next timer and fires it, until `limit` has passed
    /// or neither end has a timer left.
    pub fn run_for(&mut self, limit: Duration) {
        let end = self.now + limit;
        loop {
            self.run();
            let next = [
                self.client.conn.poll_timeout(),
                self.server.conn.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for e in [&mut self.client, &mut self.server] {
                        if e.conn.poll_timeout().is_some_and(|d| d <= now) {
                            e.conn.handle(now, Event::Timeout);
                        }
                        e.drain_outputs();
                    }
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
    }
}

fn transmit(from: &mut Endpoint, to: &mut Endpoint) -> bool {
    let mut progress = false;
    while to.inbound.len() < to.wire_limit {
        let data_phase = from.conn.is_established();
        match from.conn.poll_transmit() {
            Some(t) => {
                if let Some(token) = t.invalidate {
                    to.invalidated.push(token);
                }
                let m = t.bytes;
                if data_phase && from.conn.send_credits() == 0 {
                    let granted = DataMessage::decode(&m, u32::MAX)
                        .map(|d| d.header.credits_granted)
                        .unwrap_or(0);
                    if granted == 0 {
                        from.last_credit_without_grant += 1;
                    }
                }
                to.inbound.push_back(m);
                progress = true;
            }
            None => break,
        }
    }
    from.drain_outputs();
    progress
}

fn deliver_one(now: Time, e: &mut Endpoint) -> bool {
    if !e.deliver {
        return false;
    }
    let Some(m) = e.inbound.pop_front() else {
        return false;
    };
    if e.posted == 0 {
        e.rnr += 1;
        return true;
    }
    e.posted -= 1;
    e.conn.handle(now, Event::Received(&m));
    e.wire_log.push(m);
    true
}
