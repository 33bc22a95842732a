//! A [`Connection`] driven by a real RDMA [`Endpoint`]: receive completions go into the core,
//! the core's transmits go out as SENDs (only while a send slot is free, so a transmit the
//! core has already charged a credit for always has somewhere to go), receive slots are
//! reposted when the core's deficit asks for them, and the core's timers run on a monotonic
//! clock. Used by smbdirectd (server role) and by the soft-RoCE tests' initiator (client role).

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, trace};

use crate::cm::{self, CmError, Completion, Endpoint};
use crate::conn::{Config, ConfigError, Connection, Event, Output, Role, SendError, Time};
use crate::rw::Segment;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RdmaError {
    #[error(transparent)]
    Cm(#[from] CmError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the endpoint's slots do not fit the protocol sizes: {0}")]
    Slots(&'static str),
    #[error("RDMA {op} failed (work completion status {status})")]
    Transfer { op: &'static str, status: u32 },
    #[error("RDMA {0} did not complete in time")]
    TransferTimeout(&'static str),
}

/// How long one READ/WRITE channel transfer may take before the connection counts as dead.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint sizes a core configuration needs: a receive ring one larger than the credits we
/// grant (the core asks for one more receive while it sits on its last send credit) and slots
/// of the core's receive and send sizes. `send_slots` bounds the SENDs in flight (the peer's
/// credits bound them too, but may be up to 65535).
pub fn endpoint_config(core: &Config, send_slots: u16) -> cm::EndpointConfig {
    cm::EndpointConfig {
        recv_slots: core.receive_credit_max.saturating_add(1),
        recv_size: core.max_receive_size,
        send_slots: send_slots.max(1),
        send_size: core.max_send_size,
    }
}

/// One SMB Direct connection over RDMA.
pub struct RdmaConnection {
    ep: Endpoint,
    conn: Connection,
    epoch: Instant,
    /// Completions polled by [`Self::wait`] and not yet handed to the core.
    pending: Vec<Completion>,
    /// The peer disconnected or the QP failed: nothing more will complete successfully.
    dead: bool,
}

impl RdmaConnection {
    /// Wraps an established endpoint whose receive slots are all posted (as
    /// [`cm::ConnectRequest::accept`] and [`Endpoint::connect`] leave them).
    pub fn new(ep: Endpoint, role: Role, config: Config) -> Result<Self, RdmaError> {
        let ec = *ep.config();
        if ec.recv_size < config.max_receive_size {
            return Err(RdmaError::Slots(
                "receive slots smaller than max_receive_size",
            ));
        }
        if ec.send_size < config.max_send_size {
            return Err(RdmaError::Slots("send slots smaller than max_send_size"));
        }
        let epoch = Instant::now();
        let mut conn = Connection::new(role, config, Time(Duration::ZERO))?;
        conn.handle(Time(Duration::ZERO), Event::ReceivesPosted(ec.recv_slots));
        Ok(Self {
            ep,
            conn,
            epoch,
            pending: Vec::new(),
            dead: false,
        })
    }

    fn now(&self) -> Time {
        Time(self.epoch.elapsed())
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Queues an upper-layer (SMB2) message.
    pub fn send(&mut self, msg: Vec<u8>) -> Result<(), SendError> {
        let now = self.now();
        self.conn.send(now, msg)
    }

    /// Queues an SMB2 response whose last fragment invalidates the peer's `token`.
    pub fn send_with_invalidate(&mut self, msg: Vec<u8>, token: u32) -> Result<(), SendError> {
        let now = self.now();
        self.conn.send_with_invalidate(now, msg, token)
    }

    /// Runs the RDMA READs (`read`) or WRITEs of `segments` between the registered RDMA
    /// buffer (at least `buffer_len` bytes, registered on first use) and the peer's memory,
    /// and returns once all completed. Other completions meanwhile are kept for
    /// [`Self::progress`]. A failed or timed-out transfer leaves the QP unusable: the caller
    /// ends the connection.
    pub fn rdma_transfer(
        &mut self,
        read: bool,
        segments: &[Segment],
        buffer_len: usize,
    ) -> Result<(), RdmaError> {
        self.ep.ensure_rdma_buffer(buffer_len)?;
        self.transfer(read, segments, None)
    }

    /// [`Self::rdma_transfer`] between the shared area, from its byte `base` on (the
    /// segments' local offsets count from there), and the peer's memory: the endpoint was
    /// accepted with the area ([`cm::ConnectRequest::accept_with_area`]).
    pub fn rdma_transfer_area(
        &mut self,
        read: bool,
        segments: &[Segment],
        base: u64,
    ) -> Result<(), RdmaError> {
        self.transfer(read, segments, Some(base))
    }

    fn transfer(
        &mut self,
        read: bool,
        segments: &[Segment],
        base: Option<u64>,
    ) -> Result<(), RdmaError> {
        let op = if read { "READ" } else { "WRITE" };
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        let mut next = 0usize;
        let mut done = 0usize;
        let mut got = Vec::new();
        while done < segments.len() {
            while next < segments.len() && self.ep.rdma_inflight() < cm::MAX_RDMA_WR {
                let s = segments[next];
                match base {
                    Some(b) => self.ep.post_rdma_area(
                        read,
                        b + u64::from(s.local_offset),
                        s.len,
                        s.remote_addr,
                        s.token,
                    )?,
                    None => {
                        self.ep
                            .post_rdma(read, s.local_offset, s.len, s.remote_addr, s.token)?
                    }
                }
                next += 1;
            }
            got.clear();
            self.ep.poll(&mut got)?;
            done += self.absorb_completions(&mut got, op)?;
            if done == segments.len() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RdmaError::TransferTimeout(op));
            }
            self.ep.arm()?;
            self.ep.poll(&mut got)?;
            if !got.is_empty() {
                // Handled on the next round, without sleeping.
                done += self.absorb_completions(&mut got, op)?;
                continue;
            }
            cm::wait_readable(&[self.ep.completion_fd()], deadline - now)
                .map_err(|source| CmError::Call { op: "poll", source })?;
            self.ep.drain_events();
        }
        Ok(())
    }

    /// Takes `got` in during an RDMA transfer: returns how many RDMA work requests completed;
    /// other completions are kept for [`Self::progress`]; a failed one ends the connection.
    fn absorb_completions(
        &mut self,
        got: &mut Vec<Completion>,
        op: &'static str,
    ) -> Result<usize, RdmaError> {
        let mut done = 0;
        for c in got.drain(..) {
            match c {
                Completion::Rdma => done += 1,
                Completion::Failed { status, .. } => {
                    self.dead = true;
                    self.conn.close();
                    return Err(RdmaError::Transfer { op, status });
                }
                other => self.pending.push(other),
            }
        }
        Ok(done)
    }

    /// The RDMA buffer's first `len` bytes after an RDMA READ.
    pub fn rdma_data(&self, len: usize) -> Option<&[u8]> {
        self.ep.rdma_buffer(len)
    }

    /// Copies what an RDMA WRITE sends into the RDMA buffer (registered on first use, at
    /// least `buffer_len` bytes).
    pub fn fill_rdma_buffer(&mut self, data: &[u8], buffer_len: usize) -> Result<(), RdmaError> {
        self.ep.ensure_rdma_buffer(buffer_len)?;
        self.ep.fill_rdma_buffer(data)?;
        Ok(())
    }

    /// Ends the connection from this side.
    pub fn close(&mut self) {
        self.conn.close();
        self.ep.disconnect();
    }

    /// Whether the connection is over (all outputs may still be drained with
    /// [`Self::progress`]).
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Does all the work possible now: completions into the core, timers, receives reposted,
    /// transmits posted. Returns the core's outputs.
    pub fn progress(&mut self) -> Result<Vec<Output>, RdmaError> {
        let mut completions = std::mem::take(&mut self.pending);
        self.ep.poll(&mut completions)?;
        for c in completions {
            let now = self.now();
            match c {
                Completion::Recv { slot, .. } => {
                    if let Some(bytes) = self.ep.received(slot) {
                        trace!(len = bytes.len(), "smbdirect: receive");
                        self.conn.handle(now, Event::Received(bytes));
                    }
                }
                Completion::Send | Completion::Rdma => {}
                Completion::Failed { status, recv } => {
                    if !self.dead {
                        debug!(status, recv, "smbdirect: work request failed; closing");
                    }
                    self.dead = true;
                    self.conn.close();
                }
            }
        }
        while let Some(ev) = self.ep.cm_event()? {
            debug!(kind = ev.kind, status = ev.status, "smbdirect: cm event");
            if ev.kind == cm::event::RDMA_CM_EVENT_DISCONNECTED
                || ev.kind == cm::event::RDMA_CM_EVENT_DEVICE_REMOVAL
            {
                self.dead = true;
                self.conn.close();
            }
        }
        let now = self.now();
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle(now, Event::Timeout);
        }
        if !self.dead {
            self.repost()?;
            self.transmit()?;
        }
        let mut out = Vec::new();
        while let Some(o) = self.conn.poll_output() {
            out.push(o);
        }
        if self.conn.is_closed() {
            self.ep.disconnect();
        }
        Ok(out)
    }

    fn repost(&mut self) -> Result<(), RdmaError> {
        let mut deficit = self.conn.receive_deficit();
        let free: Vec<u16> = self.ep.unposted_receives().collect();
        let mut posted = 0u16;
        for slot in free {
            if deficit == 0 {
                break;
            }
            self.ep.post_recv(slot)?;
            deficit -= 1;
            posted += 1;
        }
        if posted > 0 {
            let now = self.now();
            self.conn.handle(now, Event::ReceivesPosted(posted));
        }
        Ok(())
    }

    fn transmit(&mut self) -> Result<(), RdmaError> {
        while self.ep.free_send_slots() > 0 {
            let Some(t) = self.conn.poll_transmit() else {
                break;
            };
            match t.invalidate {
                Some(token) => self.ep.send_with_invalidate(&t.bytes, token)?,
                None => self.ep.send(&t.bytes)?,
            }
        }
        Ok(())
    }

    /// Sleeps until a completion, an rdma_cm event, one of `extra` fds becomes readable, the
    /// core's next timer, or `max`; returns which of `extra` are readable.
    pub fn wait(&mut self, extra: &[RawFd], max: Duration) -> Result<Vec<bool>, RdmaError> {
        self.ep.arm()?;
        // A completion that arrived before arming raises no event: look once more, and only
        // check the fds without sleeping if there was one.
        self.ep.poll(&mut self.pending)?;
        let mut timeout = if self.pending.is_empty() {
            max
        } else {
            Duration::ZERO
        };
        if let Some(t) = self.conn.poll_timeout() {
            timeout = timeout.min(t.0.saturating_sub(self.epoch.elapsed()));
        }
        let mut fds = vec![self.ep.completion_fd(), self.ep.cm_fd()];
        fds.extend_from_slice(extra);
        let ready = cm::wait_readable(&fds, timeout)
            .map_err(|source| CmError::Call { op: "poll", source })?;
        if ready[0] {
            self.ep.drain_events();
        }
        Ok(ready[2..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_has_one_receive_beyond_the_credits_and_core_sized_slots() {
        let core = Config {
            receive_credit_max: 32,
            max_receive_size: 1364,
            max_send_size: 1000,
            ..Config::default()
        };
        let e = endpoint_config(&core, 0);
        assert_eq!(e.recv_slots, 33);
        assert_eq!(e.recv_size, 1364);
        assert_eq!(e.send_size, 1000);
        assert_eq!(e.send_slots, 1, "at least one send slot");
        assert_eq!(endpoint_config(&core, 16).send_slots, 16);
    }
}
