//! One RC connection's protocol: framing, credits, send-queue accounting, over a
//! [`QueuePair`] that owns the verbs objects and the registered slot memory (no `unsafe` here).
//!
//! Memory layout of the registered region: `recv_slots` receive slots followed by `send_slots`
//! send slots, each [`SLOT_SIZE`] bytes. Every receive slot is posted to the QP at all times
//! except between its completion being polled and the frame being handed to the caller; only
//! then does Rust read it. Send slots are written only while not posted (tracked by the free
//! list) and handed to the HCA until their send completion. The queue pair enforces both: it
//! lends a slot's bytes out only while no work request on it is outstanding.
//!
//! Small messages (header + payload <= the QP's `max_inline_data`) are sent with
//! `IBV_SEND_INLINE`: the HCA copies them at post time, so they need no slot and no registered
//! memory. Every send is signalled; completions free slots and send-queue entries.

use std::collections::VecDeque;
use std::sync::Arc;

use lockmgr_transport::TransportError;

use crate::credit::Credits;
use crate::mr::MemoryRegion;
use crate::qp::{Completion, QpCaps, QueuePair, RtrParams, RtsParams, SlotLayout};
use crate::slots::WorkRequest;
use crate::verbs::{CompletionChannel, CompletionQueue, Device, LINK_LAYER_ETHERNET};
use crate::wire::{Header, Hello, Kind, HDR_LEN, SLOT_SIZE};
use crate::RdmaError;

/// Extra send-queue entries beyond the peer's credits, for credit-only messages.
const SQ_SPARE: u32 = 4;
/// 12 = 0.64 ms: how long the peer backs off on an RNR NAK (never expected with credits).
const MIN_RNR_TIMER: u8 = 12;
/// 14 = 67 ms local ACK timeout, 7 retries: a vanished peer surfaces as a RETRY_EXC_ERR
/// completion within about half a second even without the TCP channel.
const ACK_TIMEOUT: u8 = 14;
const RETRY_COUNT: u8 = 7;
/// 7 = retry RNR NAKs forever: credits make RNR impossible, so one can only come from a transient
/// peer stall, which must not kill the connection.
const RNR_RETRY_FOREVER: u8 = 7;
/// GRH hop limit on RoCE.
const HOP_LIMIT: u8 = 64;

/// The protocol state of one connection over its queue pair (which owns the verbs objects and
/// the slot memory; see [`crate::qp`]).
pub(crate) struct Conn {
    qp: QueuePair,
    dev: Arc<Device>,
    recv_slots: u16,
    free_send: Vec<u32>,
    sq_depth: u32,
    sq_outstanding: u32,
    psn: u32,
    credits: Credits,
    pending: VecDeque<Completion>,
    /// QP error, failed post or protocol violation: nothing more is delivered.
    broken: bool,
    /// Header + payload staging for inline sends (copied by the HCA at post time).
    inline_buf: Vec<u8>,
    frames_in: u64,
    frames_out: u64,
    credit_updates_out: u64,
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Data frames received.
    pub frames_in: u64,
    /// Data frames sent.
    pub frames_out: u64,
    /// Explicit credit-only messages sent.
    pub credit_updates_out: u64,
    /// Send credits currently held.
    pub credits: u32,
    /// Largest message sent inline.
    pub max_inline: u32,
}

impl Conn {
    /// Creates CQ, QP (moved to INIT) and the slot region, and posts every receive slot.
    pub(crate) fn new(
        dev: &Arc<Device>,
        channel: Option<&Arc<CompletionChannel>>,
        recv_slots: u16,
        want_inline: u32,
    ) -> Result<Conn, RdmaError> {
        // The peer's ring size is not known yet; a send queue (and send slots) of our own ring
        // size is enough for a symmetric set-up, and a bigger peer ring merely makes `send`
        // report `Full` until completions free entries.
        let sq_depth = u32::from(recv_slots) + SQ_SPARE;
        let send_slots = sq_depth;
        let cq = CompletionQueue::new(dev.context(), sq_depth + u32::from(recv_slots), channel)?;
        let layout = SlotLayout {
            recv: u32::from(recv_slots),
            send: send_slots,
            size: SLOT_SIZE,
        };
        let total = layout
            .bytes()
            .ok_or_else(|| RdmaError::Config("slot region too large".into()))?;
        let mr = MemoryRegion::register(dev.pd(), total)?;
        let mut qp = QueuePair::create(
            dev.pd(),
            cq,
            mr,
            layout,
            QpCaps {
                max_send_wr: sq_depth,
                max_inline: want_inline,
            },
        )?;
        qp.move_to_init(dev.info().port)?;
        let inline = qp.max_inline();
        let mut conn = Conn {
            qp,
            dev: dev.clone(),
            recv_slots,
            free_send: (0..send_slots).rev().collect(),
            sq_depth,
            sq_outstanding: 0,
            psn: rand::random::<u32>() & 0x00ff_ffff,
            credits: Credits::new(0, recv_slots),
            pending: VecDeque::with_capacity(64),
            broken: false,
            inline_buf: Vec::with_capacity(inline as usize),
            frames_in: 0,
            frames_out: 0,
            credit_updates_out: 0,
        };
        for slot in 0..u32::from(recv_slots) {
            conn.qp.post_recv(slot)?;
        }
        Ok(conn)
    }

    /// Our coordinates for the peer.
    pub(crate) fn local_hello(&self) -> Hello {
        let info = self.dev.info();
        Hello {
            qpn: self.qp.qp_num(),
            psn: self.psn,
            lid: info.lid,
            mtu: info.active_mtu,
            link_layer: info.link_layer,
            gid: info.gid,
            slots: self.recv_slots,
            slot_size: SLOT_SIZE as u32,
        }
    }

    /// Moves the QP to RTR and RTS towards `remote`. Receives are already posted, so the peer may
    /// send as soon as it has our hello.
    pub(crate) fn connect(&mut self, remote: &Hello) -> Result<(), RdmaError> {
        let info = self.dev.info();
        if remote.link_layer != info.link_layer {
            return Err(RdmaError::Transport(TransportError::Protocol(
                "peer is on a different link layer (InfiniBand vs RoCE)",
            )));
        }
        // RoCE has no LIDs: every packet carries a GRH addressed by GID, so the address handle
        // must be global with our GID index as source.
        let global =
            (info.link_layer == LINK_LAYER_ETHERNET).then_some((remote.gid, info.gid_index));
        let rtr = RtrParams {
            port: info.port,
            path_mtu: info.active_mtu.min(remote.mtu),
            dest_qpn: remote.qpn,
            rq_psn: remote.psn,
            dlid: remote.lid,
            global,
            hop_limit: HOP_LIMIT,
            min_rnr_timer: MIN_RNR_TIMER,
        };
        self.qp.move_to_rtr(&rtr)?;
        self.qp.move_to_rts(&RtsParams {
            sq_psn: self.psn,
            timeout: ACK_TIMEOUT,
            retry_cnt: RETRY_COUNT,
            rnr_retry: RNR_RETRY_FOREVER,
        })?;
        self.credits = Credits::new(remote.slots, self.recv_slots);
        Ok(())
    }

    /// Queues a data frame. `Err(Full)`: no credit, send-queue entry or send slot free now.
    pub(crate) fn send_data(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Disconnected);
        }
        if !self.credits.can_send_data() || !self.has_send_room(payload.len()) {
            return Err(TransportError::Full);
        }
        let grant = self.credits.take_data().ok_or(TransportError::Full)?;
        self.post_send(Kind::Data, grant, payload)?;
        self.frames_out += 1;
        Ok(())
    }

    fn has_send_room(&self, payload_len: usize) -> bool {
        self.sq_outstanding < self.sq_depth
            && (HDR_LEN + payload_len <= self.qp.max_inline() as usize
                || !self.free_send.is_empty())
    }

    /// Sends an explicit credit update if the credit rules call for one.
    fn maybe_send_credit_update(&mut self) {
        if self.broken || !self.credits.update_due() || !self.has_send_room(0) {
            return;
        }
        if let Some(grant) = self.credits.take_update() {
            if self.post_send(Kind::Credit, grant, &[]).is_ok() {
                self.credit_updates_out += 1;
            }
        }
    }

    fn post_send(&mut self, kind: Kind, grant: u16, payload: &[u8]) -> Result<(), TransportError> {
        let mut hdr = [0u8; HDR_LEN];
        Header {
            kind,
            grant,
            len: payload.len() as u32,
        }
        .encode(&mut hdr);
        let total = HDR_LEN + payload.len();
        let (posted, slot) = if total <= self.qp.max_inline() as usize {
            self.inline_buf.clear();
            self.inline_buf.extend_from_slice(&hdr);
            self.inline_buf.extend_from_slice(payload);
            (self.qp.post_send_inline(&self.inline_buf), None)
        } else {
            let Some(slot) = self.free_send.pop() else {
                return Err(TransportError::Full);
            };
            let posted = match self.qp.send_slot_mut(slot) {
                // SLOT_SIZE >= HDR_LEN + MAX_FRAME >= total.
                Some(buf) if buf.len() >= total => {
                    buf[..HDR_LEN].copy_from_slice(&hdr);
                    buf[HDR_LEN..total].copy_from_slice(payload);
                    self.qp.post_send_slot(slot, total)
                }
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "free-list send slot is busy or too short",
                )),
            };
            (posted, Some(slot))
        };
        if let Err(error) = posted {
            if let Some(slot) = slot {
                self.free_send.push(slot);
            }
            tracing::warn!(%error, "ibv_post_send failed; connection lost");
            self.broken = true;
            return Err(TransportError::Disconnected);
        }
        self.sq_outstanding += 1;
        Ok(())
    }

    /// Moves every available work completion into the pending queue; returns how many.
    pub(crate) fn poll_cq(&mut self) -> usize {
        let mut total = 0;
        loop {
            let Ok(n) = self.qp.poll_batch(&mut self.pending) else {
                tracing::warn!("ibv_poll_cq failed; connection lost");
                self.broken = true;
                return total;
            };
            total += n;
            if n < crate::qp::POLL_BATCH {
                return total;
            }
        }
    }

    /// Whether polled completions wait to be processed.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// QP error, failed post or protocol violation seen.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Processes up to `budget` pending completions: frees send resources, hands data frames to
    /// `f` (in order), re-posts receive slots, and sends a credit update if one is due.
    /// Returns the number of frames delivered.
    pub(crate) fn process(&mut self, budget: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut delivered = 0;
        let mut steps = 0;
        while steps < budget {
            let Some(c) = self.pending.pop_front() else {
                break;
            };
            steps += 1;
            if !c.is_success() {
                if !self.broken {
                    tracing::info!(
                        status = c.status,
                        send = matches!(c.request, WorkRequest::Send { .. }),
                        "RDMA work request failed; connection lost"
                    );
                }
                self.broken = true;
                continue;
            }
            let slot = match c.request {
                WorkRequest::Send { slot } => {
                    self.sq_outstanding = self.sq_outstanding.saturating_sub(1);
                    if let Some(slot) = slot {
                        self.free_send.push(slot);
                    }
                    continue;
                }
                _ if self.broken => continue,
                WorkRequest::Unknown => {
                    self.broken = true;
                    continue;
                }
                WorkRequest::Recv { slot } => slot,
            };
            let len = (c.byte_len as usize).min(SLOT_SIZE);
            // The slot's receive has completed, so the queue pair lends it out until the
            // re-post below (which the borrow checker orders after the last use of `msg`).
            let Some(msg) = self.qp.received(slot, len) else {
                self.broken = true;
                continue;
            };
            let hdr = match Header::decode(msg) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed RDMA message; dropping connection");
                    self.broken = true;
                    continue;
                }
            };
            if let Err(e) = self.credits.on_message(hdr.grant) {
                tracing::warn!(error = %e, "RDMA peer broke flow control; dropping connection");
                self.broken = true;
                continue;
            }
            if hdr.kind == Kind::Data {
                f(&msg[HDR_LEN..]);
                delivered += 1;
                self.frames_in += 1;
            }
            match self.qp.post_recv(slot) {
                Ok(()) => self.credits.on_reposted(),
                Err(e) => {
                    tracing::warn!(error = %e, "re-posting a receive failed; connection lost");
                    self.broken = true;
                }
            }
        }
        self.maybe_send_credit_update();
        delivered
    }

    /// Arms the CQ so the next completion signals the completion channel.
    pub(crate) fn req_notify(&mut self) -> Result<(), TransportError> {
        self.qp.req_notify().map_err(TransportError::Io)
    }

    pub(crate) fn stats(&self) -> ConnStats {
        ConnStats {
            frames_in: self.frames_in,
            frames_out: self.frames_out,
            credit_updates_out: self.credit_updates_out,
            credits: self.credits.available(),
            max_inline: self.qp.max_inline(),
        }
    }
}
