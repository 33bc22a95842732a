//! One RC connection: queue pair, completion queue, registered slot memory, credits.
//!
//! Memory layout of the registered region: `recv_slots` receive slots followed by `send_slots`
//! send slots, each [`SLOT_SIZE`] bytes. Every receive slot is posted to the QP at all times
//! except between its completion being polled and the frame being handed to the caller; only
//! then does Rust read it. Send slots are written only while not posted (tracked by the free
//! list) and handed to the HCA until their send completion.
//!
//! Small messages (header + payload <= the QP's `max_inline_data`) are sent with
//! `IBV_SEND_INLINE`: the HCA copies them at post time, so they need no slot and no registered
//! memory. Every send is signalled; completions free slots and send-queue entries.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use lockmgr_transport::TransportError;
use rdma_sys as ib;

use crate::credit::Credits;
use crate::verbs::{CompChannel, Device, LINK_LAYER_ETHERNET};
use crate::wire::{Header, Hello, Kind, HDR_LEN, SLOT_SIZE};
use crate::RdmaError;

/// `wr_id` bit marking send work requests (receives carry the bare slot index).
const SEND_BIT: u64 = 1 << 63;
/// Slot index of inline sends (no slot to free).
const INLINE_SLOT: u32 = u32::MAX;
/// Extra send-queue entries beyond the peer's credits, for credit-only messages.
const SQ_SPARE: u32 = 4;
/// Work completions fetched per `ibv_poll_cq` call.
const POLL_BATCH: usize = 16;

/// The bits of a work completion the transport needs (so they can be stashed between the
/// spin loop in `wait` and the next `poll`).
#[derive(Debug, Clone, Copy)]
struct Completion {
    wr_id: u64,
    status: u32,
    byte_len: u32,
}

/// Page-aligned heap memory that the HCA reads and writes; never exposed as a Rust reference
/// while any part of it may be posted.
struct DmaBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl DmaBuf {
    fn new(len: usize) -> Result<DmaBuf, RdmaError> {
        let layout = Layout::from_size_align(len.max(1), 4096)
            .map_err(|_| RdmaError::Config("slot region too large".into()))?;
        // SAFETY: `layout` has non-zero size.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or_else(|| RdmaError::Config("out of memory".into()))?;
        Ok(DmaBuf { ptr, layout })
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; freed once, after the MR covering it was
        // deregistered (field order in `Conn` plus its `Drop`).
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Ownership of the verbs objects of one connection. Destroyed in dependency order: QP, CQ,
/// MR, then the memory and the device reference.
pub(crate) struct Conn {
    qp: *mut ib::ibv_qp,
    cq: *mut ib::ibv_cq,
    mr: *mut ib::ibv_mr,
    buf: DmaBuf,
    dev: Arc<Device>,
    lkey: u32,
    recv_slots: u16,
    send_slots: u32,
    free_send: Vec<u32>,
    sq_depth: u32,
    sq_outstanding: u32,
    max_inline: u32,
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

// SAFETY: the raw pointers are verbs objects and memory owned exclusively by this `Conn`;
// libibverbs allows using them from any thread, and `&mut self` methods serialise access.
unsafe impl Send for Conn {}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: each object was created in `new`, is destroyed exactly once, and in an order
        // the verbs API requires: the QP before its CQ, both before the MR is deregistered, and
        // the MR before its memory is freed (`buf` drops after this body).
        unsafe {
            ib::ibv_destroy_qp(self.qp);
            ib::ibv_destroy_cq(self.cq);
            ib::ibv_dereg_mr(self.mr);
        }
    }
}

fn verbs_err(op: &'static str) -> RdmaError {
    RdmaError::Verbs {
        op,
        source: std::io::Error::last_os_error(),
    }
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
        channel: Option<&CompChannel>,
        recv_slots: u16,
        want_inline: u32,
    ) -> Result<Conn, RdmaError> {
        // The peer's ring size is not known yet; a send queue (and send slots) of our own ring
        // size is enough for a symmetric set-up, and a bigger peer ring merely makes `send`
        // report `Full` until completions free entries.
        let sq_depth = u32::from(recv_slots) + SQ_SPARE;
        let send_slots = sq_depth;
        let cqe = (sq_depth + u32::from(recv_slots)) as libc::c_int;
        let ch = channel.map_or(ptr::null_mut(), |c| c.raw());
        // SAFETY: the context is open (`dev` is alive); `ch` is null or a live channel of it.
        let cq = unsafe { ib::ibv_create_cq(dev.ctx(), cqe, ptr::null_mut(), ch, 0) };
        if cq.is_null() {
            return Err(verbs_err("ibv_create_cq"));
        }
        let total = (usize::from(recv_slots) + send_slots as usize) * SLOT_SIZE;
        let buf = match DmaBuf::new(total) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: created above, not yet owned by a `Conn`.
                unsafe { ib::ibv_destroy_cq(cq) };
                return Err(e);
            }
        };
        let access = ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as libc::c_int;
        // SAFETY: `buf` is `total` bytes of live memory that outlives the MR (see `Drop`).
        let mr = unsafe { ib::ibv_reg_mr(dev.pd(), buf.ptr.as_ptr().cast(), total, access) };
        if mr.is_null() {
            let e = verbs_err("ibv_reg_mr (check the locked-memory limit, ulimit -l)");
            // SAFETY: as above.
            unsafe { ib::ibv_destroy_cq(cq) };
            return Err(e);
        }
        let mut inline = want_inline;
        let qp = loop {
            // SAFETY: all-zero is a valid ibv_qp_init_attr (null pointers, zero counts).
            let mut init: ib::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
            init.send_cq = cq;
            init.recv_cq = cq;
            init.qp_type = ib::ibv_qp_type::IBV_QPT_RC;
            init.sq_sig_all = 0;
            init.cap.max_send_wr = sq_depth;
            init.cap.max_recv_wr = u32::from(recv_slots);
            init.cap.max_send_sge = 1;
            init.cap.max_recv_sge = 1;
            init.cap.max_inline_data = inline;
            // SAFETY: `pd` and `cq` are live; `init` is fully initialised.
            let qp = unsafe { ib::ibv_create_qp(dev.pd(), &mut init) };
            if !qp.is_null() {
                // The provider reports the inline size it actually granted.
                inline = init.cap.max_inline_data;
                break qp;
            }
            if inline == 0 {
                let e = verbs_err("ibv_create_qp");
                // SAFETY: created above, destroyed once on this error path.
                unsafe {
                    ib::ibv_dereg_mr(mr);
                    ib::ibv_destroy_cq(cq);
                }
                return Err(e);
            }
            tracing::debug!(
                inline,
                "QP creation failed with inline data; retrying without"
            );
            inline = 0;
        };
        // SAFETY: `mr` is live; lkey is a plain field.
        let lkey = unsafe { (*mr).lkey };
        let mut conn = Conn {
            qp,
            cq,
            mr,
            buf,
            dev: dev.clone(),
            lkey,
            recv_slots,
            send_slots,
            free_send: (0..send_slots).rev().collect(),
            sq_depth,
            sq_outstanding: 0,
            max_inline: inline,
            psn: rand::random::<u32>() & 0x00ff_ffff,
            credits: Credits::new(0, recv_slots),
            pending: VecDeque::with_capacity(64),
            broken: false,
            inline_buf: Vec::with_capacity(inline as usize),
            frames_in: 0,
            frames_out: 0,
            credit_updates_out: 0,
        };
        conn.init_state()?;
        for slot in 0..u32::from(recv_slots) {
            conn.post_recv(slot)?;
        }
        Ok(conn)
    }

    fn modify(
        &mut self,
        attr: &mut ib::ibv_qp_attr,
        mask: ib::ibv_qp_attr_mask,
        op: &'static str,
    ) -> Result<(), RdmaError> {
        // SAFETY: `qp` is live and `attr` is a valid, initialised attribute block.
        let r = unsafe { ib::ibv_modify_qp(self.qp, attr, mask.0 as libc::c_int) };
        if r != 0 {
            // ibv_modify_qp returns the errno value rather than setting errno.
            return Err(RdmaError::Verbs {
                op,
                source: std::io::Error::from_raw_os_error(r.abs()),
            });
        }
        Ok(())
    }

    fn init_state(&mut self) -> Result<(), RdmaError> {
        use ib::ibv_qp_attr_mask as m;
        // SAFETY: all-zero is a valid ibv_qp_attr.
        let mut attr: ib::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ib::ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = self.dev.info().port;
        attr.qp_access_flags = 0;
        self.modify(
            &mut attr,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
            "ibv_modify_qp(INIT)",
        )
    }

    /// Our coordinates for the peer.
    pub(crate) fn local_hello(&self) -> Hello {
        let info = self.dev.info();
        Hello {
            // SAFETY: `qp` is live; qp_num is a plain field.
            qpn: unsafe { (*self.qp).qp_num },
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
        use ib::ibv_qp_attr_mask as m;
        let info = self.dev.info().clone();
        if remote.link_layer != info.link_layer {
            return Err(RdmaError::Transport(TransportError::Protocol(
                "peer is on a different link layer (InfiniBand vs RoCE)",
            )));
        }
        // SAFETY: all-zero is a valid ibv_qp_attr.
        let mut attr: ib::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ib::ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = u32::from(info.active_mtu.min(remote.mtu));
        attr.dest_qp_num = remote.qpn;
        attr.rq_psn = remote.psn;
        attr.max_dest_rd_atomic = 1;
        // 12 = 0.64 ms: how long the peer backs off on an RNR NAK (never expected with credits).
        attr.min_rnr_timer = 12;
        attr.ah_attr.dlid = remote.lid;
        attr.ah_attr.sl = 0;
        attr.ah_attr.src_path_bits = 0;
        attr.ah_attr.port_num = info.port;
        // RoCE has no LIDs: every packet carries a GRH addressed by GID, so the address handle
        // must be global with our GID index as source.
        if info.link_layer == LINK_LAYER_ETHERNET {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid.raw = remote.gid;
            attr.ah_attr.grh.sgid_index = info.gid_index;
            attr.ah_attr.grh.hop_limit = 64;
        }
        self.modify(
            &mut attr,
            m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER,
            "ibv_modify_qp(RTR)",
        )?;
        // SAFETY: as above.
        let mut attr: ib::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ib::ibv_qp_state::IBV_QPS_RTS;
        // 14 = 67 ms local ACK timeout, 7 retries: a vanished peer surfaces as a
        // RETRY_EXC_ERR completion within about half a second even without the TCP channel.
        attr.timeout = 14;
        attr.retry_cnt = 7;
        // 7 = retry RNR NAKs forever: credits make RNR impossible, so one can only come from a
        // transient peer stall, which must not kill the connection.
        attr.rnr_retry = 7;
        attr.sq_psn = self.psn;
        attr.max_rd_atomic = 1;
        self.modify(
            &mut attr,
            m::IBV_QP_STATE
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_MAX_QP_RD_ATOMIC,
            "ibv_modify_qp(RTS)",
        )?;
        self.credits = Credits::new(remote.slots, self.recv_slots);
        Ok(())
    }

    fn slot_ptr(&self, slot: u32) -> *mut u8 {
        debug_assert!((slot as usize) < usize::from(self.recv_slots) + self.send_slots as usize);
        // SAFETY: slot indices are below recv_slots + send_slots, so the offset stays inside
        // the allocation.
        unsafe { self.buf.ptr.as_ptr().add(slot as usize * SLOT_SIZE) }
    }

    fn post_recv(&mut self, slot: u32) -> Result<(), RdmaError> {
        let mut sge = ib::ibv_sge {
            addr: self.slot_ptr(slot) as u64,
            length: SLOT_SIZE as u32,
            lkey: self.lkey,
        };
        let mut wr = ib::ibv_recv_wr {
            wr_id: u64::from(slot),
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad: *mut ib::ibv_recv_wr = ptr::null_mut();
        // SAFETY: `qp` is live; `wr`/`sge` are valid for the call; the slot lies inside the
        // registered region and is not read by Rust until its completion is polled.
        let r = unsafe { ib::ibv_post_recv(self.qp, &mut wr, &mut bad) };
        if r != 0 {
            return Err(RdmaError::Verbs {
                op: "ibv_post_recv",
                source: std::io::Error::from_raw_os_error(r.abs()),
            });
        }
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
            && (HDR_LEN + payload_len <= self.max_inline as usize || !self.free_send.is_empty())
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
        let mut flags = ib::ibv_send_flags::IBV_SEND_SIGNALED;
        let (addr, slot) = if total <= self.max_inline as usize {
            flags |= ib::ibv_send_flags::IBV_SEND_INLINE;
            self.inline_buf.clear();
            self.inline_buf.extend_from_slice(&hdr);
            self.inline_buf.extend_from_slice(payload);
            (self.inline_buf.as_ptr() as u64, INLINE_SLOT)
        } else {
            let Some(slot) = self.free_send.pop() else {
                return Err(TransportError::Full);
            };
            let idx = u32::from(self.recv_slots) + slot;
            let p = self.slot_ptr(idx);
            // SAFETY: the slot is free (not posted), SLOT_SIZE >= HDR_LEN + MAX_FRAME >= total,
            // and `hdr`/`payload` are separate buffers.
            unsafe {
                ptr::copy_nonoverlapping(hdr.as_ptr(), p, HDR_LEN);
                ptr::copy_nonoverlapping(payload.as_ptr(), p.add(HDR_LEN), payload.len());
            }
            (p as u64, slot)
        };
        let mut sge = ib::ibv_sge {
            addr,
            length: total as u32,
            lkey: self.lkey,
        };
        // SAFETY: all-zero is a valid ibv_send_wr (null pointers, zero fields).
        let mut wr: ib::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = SEND_BIT | u64::from(slot);
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = ib::ibv_wr_opcode::IBV_WR_SEND;
        wr.send_flags = flags.0;
        let mut bad: *mut ib::ibv_send_wr = ptr::null_mut();
        // SAFETY: `qp` is live; `wr`/`sge` are valid for the call; the data is either copied by
        // the HCA now (inline) or lives in a registered slot that stays untouched until the
        // send completion returns it to the free list.
        let r = unsafe { ib::ibv_post_send(self.qp, &mut wr, &mut bad) };
        if r != 0 {
            if slot != INLINE_SLOT {
                self.free_send.push(slot);
            }
            tracing::warn!(error = %std::io::Error::from_raw_os_error(r.abs()), "ibv_post_send failed; connection lost");
            self.broken = true;
            return Err(TransportError::Disconnected);
        }
        self.sq_outstanding += 1;
        Ok(())
    }

    /// Moves every available work completion into the pending queue; returns how many.
    pub(crate) fn poll_cq(&mut self) -> usize {
        let mut total = 0;
        // SAFETY: all-zero is a valid ibv_wc.
        let mut wcs: [ib::ibv_wc; POLL_BATCH] = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `cq` is live and `wcs` has room for POLL_BATCH entries.
            let n = unsafe { ib::ibv_poll_cq(self.cq, POLL_BATCH as i32, wcs.as_mut_ptr()) };
            if n < 0 {
                tracing::warn!("ibv_poll_cq failed; connection lost");
                self.broken = true;
                return total;
            }
            for wc in &wcs[..n as usize] {
                self.pending.push_back(Completion {
                    wr_id: wc.wr_id,
                    status: wc.status,
                    byte_len: wc.byte_len,
                });
            }
            total += n as usize;
            if (n as usize) < POLL_BATCH {
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
            if c.status != ib::ibv_wc_status::IBV_WC_SUCCESS {
                if !self.broken {
                    tracing::info!(
                        status = c.status,
                        send = c.wr_id & SEND_BIT != 0,
                        "RDMA work request failed; connection lost"
                    );
                }
                self.broken = true;
                continue;
            }
            if c.wr_id & SEND_BIT != 0 {
                self.sq_outstanding = self.sq_outstanding.saturating_sub(1);
                let slot = c.wr_id as u32;
                if slot != INLINE_SLOT && slot < self.send_slots {
                    self.free_send.push(slot);
                }
                continue;
            }
            if self.broken {
                continue;
            }
            let slot = c.wr_id as u32;
            if slot >= u32::from(self.recv_slots) {
                self.broken = true;
                continue;
            }
            let len = (c.byte_len as usize).min(SLOT_SIZE);
            // SAFETY: the slot's receive has completed and is not re-posted until after this
            // borrow ends, so the HCA does not write it; `len <= SLOT_SIZE` keeps the slice
            // inside the slot.
            let msg = unsafe { std::slice::from_raw_parts(self.slot_ptr(slot), len) };
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
            match self.post_recv(slot) {
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
        // SAFETY: `cq` is live and was created with a completion channel (callers only arm
        // connections that have one).
        let r = unsafe { ib::ibv_req_notify_cq(self.cq, 0) };
        if r != 0 {
            return Err(TransportError::Io(std::io::Error::from_raw_os_error(
                r.abs(),
            )));
        }
        Ok(())
    }

    pub(crate) fn stats(&self) -> ConnStats {
        ConnStats {
            frames_in: self.frames_in,
            frames_out: self.frames_out,
            credit_updates_out: self.credit_updates_out,
            credits: self.credits.available(),
            max_inline: self.max_inline,
        }
    }
}
