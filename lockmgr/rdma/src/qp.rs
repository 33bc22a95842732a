//! A reliable-connected queue pair (`ibv_qp`) with its own completion queue and slot memory,
//! and safe methods for everything the connection code does with it.
//!
//! What makes posting safe: the queue pair owns its [`CompletionQueue`] and [`MemoryRegion`]
//! by value, chooses every `wr_id` itself and records which slots are posted. A slot becomes
//! readable or writable from Rust again only when a completion for it is polled from that
//! exclusive CQ (success or flush error alike: either way the HCA is done with it). The caller
//! cannot hand the HCA memory that Rust still borrows, nor read memory the HCA may still write.
//!
//! Destruction order: `Drop` destroys the QP; then its fields drop: the CQ (then its completion
//! channel, if this was the last user), the MR (deregistered, then its memory freed) and the
//! protection domain reference.

use std::collections::VecDeque;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_sys as ib;

use crate::mr::MemoryRegion;
use crate::slots::{SlotBook, WorkRequest};
use crate::verbs::{CompletionQueue, ProtectionDomain};
use crate::RdmaError;

/// Work completions fetched per `ibv_poll_cq` call.
pub(crate) const POLL_BATCH: usize = 16;

/// How the registered memory is divided: `recv` receive slots followed by `send` send slots,
/// each `size` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotLayout {
    pub recv: u32,
    pub send: u32,
    pub size: usize,
}

impl SlotLayout {
    /// Bytes of registered memory the layout needs.
    pub(crate) fn bytes(&self) -> Option<usize> {
        let slots = (self.recv as usize).checked_add(self.send as usize)?;
        slots.checked_mul(self.size)
    }
}

/// Queue sizes requested at creation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QpCaps {
    /// Send-queue entries.
    pub max_send_wr: u32,
    /// Wanted `max_inline_data`; creation falls back to 0 if the provider refuses it.
    pub max_inline: u32,
}

/// The bits of a work completion the transport needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub request: WorkRequest,
    /// `ibv_wc_status`; 0 is success.
    pub status: u32,
    pub byte_len: u32,
}

impl Completion {
    pub(crate) fn is_success(&self) -> bool {
        self.status == ib::ibv_wc_status::IBV_WC_SUCCESS
    }
}

/// Path attributes for INIT -> RTR.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtrParams {
    pub port: u8,
    /// `ibv_mtu` enum value.
    pub path_mtu: u8,
    pub dest_qpn: u32,
    pub rq_psn: u32,
    pub dlid: u16,
    /// `Some((remote GID, our GID index))`: address with a global route header (RoCE).
    pub global: Option<([u8; 16], u8)>,
    pub hop_limit: u8,
    pub min_rnr_timer: u8,
}

/// Timers and our first PSN for RTR -> RTS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtsParams {
    pub sq_psn: u32,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
}

/// An RC queue pair owning its completion queue and slot memory. See the module docs.
pub(crate) struct QueuePair {
    qp: NonNull<ib::ibv_qp>,
    layout: SlotLayout,
    /// Which slots the HCA owns; only completions polled from `cq` free them.
    slots: SlotBook,
    max_inline: u32,
    // Fields drop after `Drop::drop` destroyed the QP: CQ, then MR, then the PD reference.
    cq: CompletionQueue,
    mr: MemoryRegion,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: the QP, CQ and memory are owned exclusively by this value; libibverbs allows using them
// from any thread, and every method that posts or polls takes `&mut self`.
unsafe impl Send for QueuePair {}

fn zeroed_qp_attr() -> ib::ibv_qp_attr {
    // SAFETY: all-zero is a valid ibv_qp_attr (integers, enums with a 0 variant, no pointers
    // that are dereferenced when zero).
    unsafe { std::mem::zeroed() }
}

impl QueuePair {
    /// Creates an RC queue pair on `pd` whose send and receive completions go to `cq`, with one
    /// receive-queue entry per receive slot of `layout` in `mr`. Asks for `caps.max_inline`
    /// bytes of inline data and retries without if the provider refuses; [`Self::max_inline`]
    /// reports what was granted.
    pub(crate) fn create(
        pd: &Arc<ProtectionDomain>,
        cq: CompletionQueue,
        mr: MemoryRegion,
        layout: SlotLayout,
        caps: QpCaps,
    ) -> Result<QueuePair, RdmaError> {
        if !Arc::ptr_eq(mr.pd(), pd) || !Arc::ptr_eq(cq.context(), pd.context()) {
            return Err(RdmaError::Config(
                "memory region or completion queue belongs to another device".into(),
            ));
        }
        if layout.bytes().is_none_or(|need| need > mr.len()) {
            return Err(RdmaError::Config(
                "slot layout is larger than the memory region".into(),
            ));
        }
        let mut inline = caps.max_inline;
        let qp = loop {
            // SAFETY: all-zero is a valid ibv_qp_init_attr (null pointers, zero counts).
            let mut init: ib::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
            init.send_cq = cq.as_ptr();
            init.recv_cq = cq.as_ptr();
            init.qp_type = ib::ibv_qp_type::IBV_QPT_RC;
            init.sq_sig_all = 0;
            init.cap.max_send_wr = caps.max_send_wr;
            init.cap.max_recv_wr = layout.recv;
            init.cap.max_send_sge = 1;
            init.cap.max_recv_sge = 1;
            init.cap.max_inline_data = inline;
            // SAFETY: the PD and CQ are live (held by `pd` and `cq`); `init` is fully
            // initialised.
            let qp = unsafe { ib::ibv_create_qp(pd.as_ptr(), &mut init) };
            if let Some(qp) = NonNull::new(qp) {
                // The provider reports the inline size it actually granted.
                inline = init.cap.max_inline_data;
                break qp;
            }
            if inline == 0 {
                return Err(RdmaError::Verbs {
                    op: "ibv_create_qp",
                    source: io::Error::last_os_error(),
                });
            }
            tracing::debug!(
                inline,
                "QP creation failed with inline data; retrying without"
            );
            inline = 0;
        };
        Ok(QueuePair {
            qp,
            layout,
            slots: SlotBook::new(layout.recv, layout.send),
            max_inline: inline,
            cq,
            mr,
            _pd: pd.clone(),
        })
    }

    /// The QP number the peer addresses.
    pub(crate) fn qp_num(&self) -> u32 {
        // SAFETY: the QP is live until drop; qp_num is a plain field set at creation.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    /// Largest message (header included) that may be sent inline.
    pub(crate) fn max_inline(&self) -> u32 {
        self.max_inline
    }

    fn modify(
        &mut self,
        attr: &mut ib::ibv_qp_attr,
        mask: ib::ibv_qp_attr_mask,
        op: &'static str,
    ) -> Result<(), RdmaError> {
        // SAFETY: the QP is live and `attr` is a valid, initialised attribute block.
        let r = unsafe { ib::ibv_modify_qp(self.qp.as_ptr(), attr, mask.0 as libc::c_int) };
        if r != 0 {
            // ibv_modify_qp returns the errno value rather than setting errno.
            return Err(RdmaError::Verbs {
                op,
                source: io::Error::from_raw_os_error(r.abs()),
            });
        }
        Ok(())
    }

    /// RESET -> INIT on `port` (no remote access: two-sided SEND/RECV only).
    pub(crate) fn move_to_init(&mut self, port: u8) -> Result<(), RdmaError> {
        use ib::ibv_qp_attr_mask as m;
        let mut attr = zeroed_qp_attr();
        attr.qp_state = ib::ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = port;
        attr.qp_access_flags = 0;
        self.modify(
            &mut attr,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
            "ibv_modify_qp(INIT)",
        )
    }

    /// INIT -> RTR towards the peer described by `p`.
    pub(crate) fn move_to_rtr(&mut self, p: &RtrParams) -> Result<(), RdmaError> {
        use ib::ibv_qp_attr_mask as m;
        let mut attr = zeroed_qp_attr();
        attr.qp_state = ib::ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = u32::from(p.path_mtu);
        attr.dest_qp_num = p.dest_qpn;
        attr.rq_psn = p.rq_psn;
        attr.max_dest_rd_atomic = 1;
        attr.min_rnr_timer = p.min_rnr_timer;
        attr.ah_attr.dlid = p.dlid;
        attr.ah_attr.sl = 0;
        attr.ah_attr.src_path_bits = 0;
        attr.ah_attr.port_num = p.port;
        if let Some((dgid, sgid_index)) = p.global {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid.raw = dgid;
            attr.ah_attr.grh.sgid_index = sgid_index;
            attr.ah_attr.grh.hop_limit = p.hop_limit;
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
        )
    }

    /// RTR -> RTS.
    pub(crate) fn move_to_rts(&mut self, p: &RtsParams) -> Result<(), RdmaError> {
        use ib::ibv_qp_attr_mask as m;
        let mut attr = zeroed_qp_attr();
        attr.qp_state = ib::ibv_qp_state::IBV_QPS_RTS;
        attr.timeout = p.timeout;
        attr.retry_cnt = p.retry_cnt;
        attr.rnr_retry = p.rnr_retry;
        attr.sq_psn = p.sq_psn;
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
        )
    }

    /// Bytes of the slot at region position `index`, the first `len` of them (at most a slot).
    fn slot_range(&self, index: usize, len: usize) -> std::ops::Range<usize> {
        let start = index * self.layout.size;
        start..start + len.min(self.layout.size)
    }

    /// Posts receive slot `slot` (whole slot). Fails for an unknown or already posted slot.
    pub(crate) fn post_recv(&mut self, slot: u32) -> Result<(), RdmaError> {
        let index = self.slots.free_recv(slot).ok_or_else(|| RdmaError::Verbs {
            op: "ibv_post_recv",
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "receive slot unknown or already posted",
            ),
        })?;
        let range = self.slot_range(index, self.layout.size);
        let addr = self.mr.addr(range.start).ok_or_else(|| RdmaError::Verbs {
            op: "ibv_post_recv",
            source: io::Error::new(io::ErrorKind::InvalidInput, "slot outside the region"),
        })?;
        let mut sge = ib::ibv_sge {
            addr,
            length: range.len() as u32,
            lkey: self.mr.lkey(),
        };
        let mut wr = ib::ibv_recv_wr {
            wr_id: SlotBook::recv_wr_id(slot),
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad: *mut ib::ibv_recv_wr = ptr::null_mut();
        // SAFETY: the QP is live; `wr`/`sge` are valid for the call; the slot lies inside the
        // registered region (layout checked at creation) and no Rust borrow of it exists:
        // `received` borrows `self`, and this takes `&mut self`. It is marked posted below, so
        // Rust does not touch it again until its completion is polled.
        let r = unsafe { ib::ibv_post_recv(self.qp.as_ptr(), &mut wr, &mut bad) };
        if r != 0 {
            return Err(RdmaError::Verbs {
                op: "ibv_post_recv",
                source: io::Error::from_raw_os_error(r.abs()),
            });
        }
        self.slots.mark_posted(index);
        Ok(())
    }

    /// The first `len` bytes (at most a slot) of receive slot `slot`, or `None` while a receive
    /// on it is outstanding (or the slot is unknown).
    pub(crate) fn received(&self, slot: u32, len: usize) -> Option<&[u8]> {
        let index = self.slots.free_recv(slot)?;
        // SAFETY: no receive is outstanding on this slot (checked), and none can be posted
        // while the returned borrow of `self` lives (posting takes `&mut self`).
        unsafe { self.mr.bytes(self.slot_range(index, len)) }
    }

    /// Send slot `slot` for writing a message into, or `None` while a send from it is
    /// outstanding (or the slot is unknown).
    pub(crate) fn send_slot_mut(&mut self, slot: u32) -> Option<&mut [u8]> {
        let index = self.slots.free_send(slot)?;
        let range = self.slot_range(index, self.layout.size);
        // SAFETY: no send is outstanding on this slot (checked), and none can be posted while
        // the returned borrow of `self` lives (posting takes `&mut self`).
        unsafe { self.mr.bytes_mut(range) }
    }

    fn post_send_wr(
        &mut self,
        wr_id: u64,
        sge: &mut ib::ibv_sge,
        flags: ib::ibv_send_flags,
    ) -> io::Result<()> {
        // SAFETY: all-zero is a valid ibv_send_wr (null pointers, zero fields).
        let mut wr: ib::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = sge;
        wr.num_sge = 1;
        wr.opcode = ib::ibv_wr_opcode::IBV_WR_SEND;
        wr.send_flags = flags.0;
        let mut bad: *mut ib::ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is live; `wr`/`sge` are valid for the call. The callers guarantee the
        // data: copied by the HCA during the call (inline) or a send slot marked posted until
        // its completion is polled.
        let r = unsafe { ib::ibv_post_send(self.qp.as_ptr(), &mut wr, &mut bad) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r.abs()));
        }
        Ok(())
    }

    /// Posts a signalled SEND of the first `len` bytes of send slot `slot`. Fails for an unknown
    /// or already posted slot, or `len` beyond the slot.
    pub(crate) fn post_send_slot(&mut self, slot: u32, len: usize) -> io::Result<()> {
        let index = self
            .slots
            .free_send(slot)
            .filter(|_| len <= self.layout.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "send slot unknown, busy or too short",
                )
            })?;
        let range = self.slot_range(index, len);
        let addr = self.mr.addr(range.start).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "slot outside the region")
        })?;
        let mut sge = ib::ibv_sge {
            addr,
            length: len as u32,
            lkey: self.mr.lkey(),
        };
        self.post_send_wr(
            SlotBook::send_wr_id(slot),
            &mut sge,
            ib::ibv_send_flags::IBV_SEND_SIGNALED,
        )?;
        // The HCA reads the slot until the send completes: no Rust access until then.
        self.slots.mark_posted(index);
        Ok(())
    }

    /// Posts a signalled inline SEND of `data`: the HCA copies it during the call, so it needs
    /// no registered memory. Fails if `data` exceeds [`Self::max_inline`].
    pub(crate) fn post_send_inline(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() > self.max_inline as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message too long to send inline",
            ));
        }
        let mut sge = ib::ibv_sge {
            addr: data.as_ptr() as u64,
            length: data.len() as u32,
            // Ignored for inline data; any valid key will do.
            lkey: self.mr.lkey(),
        };
        self.post_send_wr(
            SlotBook::inline_wr_id(),
            &mut sge,
            ib::ibv_send_flags::IBV_SEND_SIGNALED | ib::ibv_send_flags::IBV_SEND_INLINE,
        )
    }

    /// Appends up to [`POLL_BATCH`] completions to `out` and returns their number; `Err` if the
    /// provider failed to poll. Each completed slot is usable from Rust again.
    pub(crate) fn poll_batch(&mut self, out: &mut VecDeque<Completion>) -> Result<usize, ()> {
        // SAFETY: all-zero is a valid ibv_wc (integers and a union of integers).
        let mut wcs: [ib::ibv_wc; POLL_BATCH] = unsafe { std::mem::zeroed() };
        let n = self.cq.poll(&mut wcs)?;
        for wc in &wcs[..n] {
            let request = self.slots.complete(wc.wr_id);
            out.push_back(Completion {
                request,
                status: wc.status,
                byte_len: wc.byte_len,
            });
        }
        Ok(n)
    }

    /// Arms the CQ so the next completion signals its completion channel.
    pub(crate) fn req_notify(&self) -> io::Result<()> {
        self.cq.req_notify()
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: created in `create`, destroyed once, before the CQ and MR it uses (fields,
        // dropped after this body).
        unsafe { ib::ibv_destroy_qp(self.qp.as_ptr()) };
    }
}
