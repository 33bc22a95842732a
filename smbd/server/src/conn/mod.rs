//! One SMB2/3 connection: a state machine fed with NetBIOS frames, producing frames to send.
//! No socket I/O here (the io_uring worker owns sockets); file I/O is done synchronously.
//!
//! Where things live: [`state`] holds the types (sessions, trees, opens, pending operations,
//! chain context, handler outcomes); `dispatch` takes requests in (framing, compounds,
//! credits, MessageIds) and routes each command; `signing` frames, signs and seals what goes
//! out; `negotiate`, `session` (SESSION_SETUP/LOGOFF), `tree` and `channel` (multichannel
//! binding) are the connection-level commands; `pending` is async/cancel; [`ops`] is the file
//! service, one file per command family.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use smb_auth::preauth::PreauthHash;
use smb_proto::{payload_frame, status};

pub use crate::config::MAX_IO;
use crate::seqwin::SeqHandle;
use crate::shared::{Event, Shared};

mod channel;
mod dispatch;
mod limits;
mod negotiate;
pub(crate) mod ops;
mod pending;
mod session;
mod signing;
pub(crate) mod state;
mod tree;
mod view;

pub(crate) use state::{
    err, AuthState, Binding, BoundChannel, ChainCtx, CreateCont, DirState, FileIo, FileOp,
    HangupWait, Negotiated, Open, OpenStream, Outcome, PendingKind, PendingOp, ReconnectTarget,
    Session, Signer, StreamTarget,
};

/// SMB 2.0.2 has no multi-credit requests.
const MAX_IO_202: u32 = 65536;
pub const SESSION_FLAG_IS_GUEST: u16 = 0x1;
pub const SESSION_FLAG_IS_NULL: u16 = 0x2;
pub const SESSION_FLAG_ENCRYPT_DATA: u16 = 0x4;

pub struct Conn {
    pub id: u64,
    pub(crate) shared: Arc<Shared>,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub(crate) neg: Option<Negotiated>,
    pub(crate) conn_preauth: PreauthHash,
    pub(crate) sessions: HashMap<u64, Session>,
    pub(crate) opens: HashMap<u64, Open>,
    /// Named pipes open on IPC$, by volatile id (ops/pipe.rs).
    pub(crate) pipes: HashMap<u64, ops::PipeOpen>,
    pub(crate) pending: HashMap<u64, PendingOp>,
    next_session: u64,
    pub(crate) next_tree: u32,
    pub(crate) next_volatile: u64,
    next_async: u64,
    pending_tree_id: Option<u32>,
    /// Connection.CommandSequenceWindow and credits (MS-SMB2 3.3.1.1, 3.3.1.2).
    seq: SeqHandle,
    /// The window of the bound connection whose forwarded request is being processed.
    cur_seq: Option<SeqHandle>,
    /// Signer for the current response when it is not the session's own (binding refusals,
    /// the LOGOFF of a session already gone).
    override_signer: Option<Signer>,
    /// The encryption key of the session the current chain logged off: its LOGOFF response
    /// is sealed with it after the session is gone (MS-SMB2 3.3.4.1.4).
    parting_encryption: Option<(u64, Vec<u8>)>,
    /// Sessions of this connection to tear down once the current chain is answered.
    expire_after: Vec<u64>,
    /// Whether the request being answered was signed.
    signed_request: bool,
    out: Vec<Vec<u8>>,
    /// READs/WRITEs for the worker's ring.
    pub(crate) file_io: Vec<FileIo>,
    /// Zero bytes between a READ response body and its data (smbtorture hook).
    pub(crate) read_body_padding: u8,
    /// Oplock and lease breaks queued on this connection's transport since the worker last
    /// looked: each must be acknowledged by the client's TCP within a few retransmission
    /// timeouts, or the channel is taken for dead and the break handed back to its session's
    /// owner for the next channel (crate::worker's ack tracking, crate::break_delivery).
    pub(crate) breaks_out: Vec<crate::break_delivery::BreakDelivery>,
    /// Treat every break on this channel as never acknowledged by TCP (smbtorture's
    /// FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT: a channel failure without iptables).
    pub(crate) force_unacked_timeout: bool,
    /// Set by `process_one` when a CREATE in the middle of a compound went async.
    suspend_chain: Option<u64>,
    /// Sessions owned here that other connections bound: (channel conn, session) -> signer.
    channels: HashMap<(u64, u64), Signer>,
    /// The bound connection whose forwarded request (or its async completion) is being
    /// answered; output then goes back to it.
    cur_channel: Option<u64>,
    channel_out: Vec<Vec<u8>>,
    /// Sessions of other connections this connection is bound to.
    bound: HashMap<u64, BoundChannel>,
    /// Signers of sessions that ended under the client (a failed reauthentication, here or
    /// on the owner of a bound session): USER_SESSION_DELETED for them stays signed.
    unbound: HashMap<u64, Signer>,
    binding: HashMap<u64, Binding>,
    pub closed: bool,
    /// The client's transport closed while other connections were bound to sessions
    /// established here ([`Conn::lose_transport`]): the connection lives on for them.
    transport_lost: bool,
    /// When the input being handled arrived: the time given to the entry point
    /// (`on_message`, `on_event`, `shutdown`), so the protocol logic never reads the clock.
    now: Instant,
    /// The last create lost a race to create its name (see `Conn::create`).
    pub(crate) create_raced: bool,
    /// Resource-limit bookkeeping (`crate::limits`).
    pub(crate) limits: limits::ConnLimits,
    /// The connection came in through smbdirectd (`rdma_proxy_socket`): READ/WRITE may use
    /// RDMA channels.
    pub(crate) via_rdma_proxy: bool,
    /// RDMA-channel WRITE data smbdirectd sent ahead of its request, by MessageId.
    pub(crate) rdma_payloads: Vec<(u64, RdmaPayload)>,
    /// The memory area smbdirectd shares for RDMA-channel payloads, when its hello passed
    /// one (`crate::rdma_area`): WRITE data arrives there and READ data goes there.
    pub(crate) rdma_area: Option<crate::rdma_area::AreaHandle>,
    /// Payload bytes that arrived or left inline (payload frames on the stream) and through
    /// the shared area, for the log line at the connection's end.
    pub(crate) rdma_inline_bytes: u64,
    pub(crate) rdma_area_bytes: u64,
}

/// Payload frames held for WRITEs not processed yet (a compound has one per RDMA WRITE).
const MAX_RDMA_PAYLOADS: usize = 8;

/// Where an RDMA-channel WRITE's data waits for its request.
#[derive(Debug)]
pub(crate) enum RdmaPayload {
    /// Sent on the stream (a payload frame: smbdirectd without a shared area).
    Inline(Vec<u8>),
    /// In the shared area (an area frame): the WRITE writes the file from the range itself.
    Area(crate::rdma_area::AreaRange),
}

impl Conn {
    pub fn new(
        id: u64,
        shared: Arc<Shared>,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Conn {
        Conn {
            id,
            shared,
            local,
            peer,
            neg: None,
            conn_preauth: PreauthHash::new(),
            sessions: HashMap::new(),
            opens: HashMap::new(),
            pipes: HashMap::new(),
            pending: HashMap::new(),
            next_session: 0,
            next_tree: 0,
            // File ids are unique across connections so that a durable handle can be found
            // again from any connection by its persistent id.
            next_volatile: id << 32,
            next_async: 0,
            pending_tree_id: None,
            seq: SeqHandle::default(),
            cur_seq: None,
            signed_request: false,
            expire_after: Vec::new(),
            override_signer: None,
            parting_encryption: None,
            out: Vec::new(),
            file_io: Vec::new(),
            suspend_chain: None,
            read_body_padding: 0,
            breaks_out: Vec::new(),
            force_unacked_timeout: false,
            channels: HashMap::new(),
            transport_lost: false,
            cur_channel: None,
            channel_out: Vec::new(),
            bound: HashMap::new(),
            unbound: HashMap::new(),
            binding: HashMap::new(),
            closed: false,
            now,
            create_raced: false,
            limits: Default::default(),
            via_rdma_proxy: false,
            rdma_payloads: Vec::new(),
            rdma_area: None,
            rdma_inline_bytes: 0,
            rdma_area_bytes: 0,
        }
    }

    /// Marks a connection accepted on `rdma_proxy_socket` from an allowed peer (the worker
    /// checked its credentials): smbdirectd speaks on it for an SMB Direct client, so its
    /// READ/WRITE requests may use RDMA channels and it may send payload frames.
    pub fn set_via_rdma_proxy(&mut self) {
        self.via_rdma_proxy = true;
    }

    /// A payload frame's body from smbdirectd (only on `via_rdma_proxy` connections; the
    /// worker refuses it elsewhere): kept for the WRITE of its MessageId.
    pub fn on_rdma_payload(&mut self, body: &[u8]) {
        let refused = if !self.via_rdma_proxy {
            "not a connection from smbdirectd"
        } else if self.rdma_payloads.len() >= MAX_RDMA_PAYLOADS {
            "too many payloads held"
        } else {
            match payload_frame::decode_body(body) {
                Ok((id, data)) => {
                    self.rdma_inline_bytes += data.len() as u64;
                    self.shared
                        .metrics
                        .rdma_payload(crate::metrics::RdmaPayload::WriteStream, data.len() as u64);
                    self.rdma_payloads
                        .push((id, RdmaPayload::Inline(data.to_vec())));
                    return;
                }
                Err(_) => "shorter than its MessageId",
            }
        };
        tracing::debug!(
            conn = self.id,
            refused,
            "unexpected RDMA payload frame; disconnecting"
        );
        self.closed = true;
    }

    /// Maps the area smbdirectd passed with the hello of this connection (only on
    /// `via_rdma_proxy` connections).
    pub fn attach_rdma_area(
        &mut self,
        fd: std::os::fd::OwnedFd,
    ) -> Result<(), crate::rdma_area::AreaError> {
        if !self.via_rdma_proxy {
            return Err(crate::rdma_area::AreaError::NoArea);
        }
        self.rdma_area = Some(crate::rdma_area::attach(fd, self.id)?);
        Ok(())
    }

    /// An area frame from smbdirectd (`smb_proto::area_frame`): a WRITE's data in the area
    /// (taken for the WRITE, which writes the file from it and then gives the range back with
    /// `Release`) or a READ's grant (held until the READ uses or releases it). Every range is
    /// checked (`crate::rdma_area`): a bad one closes the connection, and nothing of the area
    /// is touched.
    pub fn on_area_frame(&mut self, body: &[u8]) {
        use smb_proto::area_frame::{AreaFrame, Op};
        let f = match AreaFrame::decode_body(body) {
            Ok(f) => f,
            Err(e) => return self.area_refused(&e.to_string()),
        };
        let Some(area) = self.rdma_area.as_ref().filter(|_| self.via_rdma_proxy) else {
            return self.area_refused(&crate::rdma_area::AreaError::NoArea.to_string());
        };
        match f.op {
            Op::Write => {
                if self.rdma_payloads.len() >= MAX_RDMA_PAYLOADS {
                    return self.area_refused("too many payloads held");
                }
                let range = area
                    .hold(f.message_id, f.offset, f.length)
                    .and_then(|h| area.take(h.offset));
                match range {
                    Ok(r) => self
                        .rdma_payloads
                        .push((f.message_id, RdmaPayload::Area(r))),
                    Err(e) => self.area_refused(&e.to_string()),
                }
            }
            Op::Grant => {
                if let Err(e) = area.hold(f.message_id, f.offset, f.length) {
                    self.area_refused(&e.to_string());
                }
            }
            Op::Hello | Op::Read | Op::Release => {
                self.area_refused("an area frame smbdirectd does not send")
            }
        }
    }

    /// Gives back the area grants of a message's READs that did not use them (the request
    /// failed before reading, or was no RDMA-channel READ after all), and the WRITE data of
    /// its requests that did not take theirs (the same): smbdirectd frees a slot only when
    /// smbd says so.
    fn release_unused_grants(&mut self, msg: &[u8]) {
        let Ok(parts) = smb_proto::split_compound(msg) else {
            return;
        };
        for p in parts {
            let Some(id) = p.get(24..32).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                continue;
            };
            let mid = u64::from_le_bytes(id);
            self.release_grant(mid);
            while let Some(i) = self.rdma_payloads.iter().position(|(m, _)| *m == mid) {
                let (_, p) = self.rdma_payloads.swap_remove(i);
                if let RdmaPayload::Area(r) = p {
                    self.give_back(r);
                }
            }
        }
    }

    /// A range a file I/O took is free again (its I/O completed, or never started): the
    /// ledger's hold ends and smbdirectd is told (`Release`).
    pub(crate) fn give_back(&mut self, r: crate::rdma_area::AreaRange) {
        use smb_proto::area_frame::{AreaFrame, Op};
        let f = AreaFrame {
            op: Op::Release,
            message_id: r.message_id(),
            offset: r.offset(),
            length: r.len() as u32,
        };
        drop(r);
        self.push_out(f.encode().to_vec());
    }

    /// Releases this connection's grant for `mid`, if it still holds one, and tells
    /// smbdirectd.
    pub(crate) fn release_grant(&mut self, mid: u64) {
        use smb_proto::area_frame::{AreaFrame, Op};
        let Some(area) = self.rdma_area.as_ref() else {
            return;
        };
        if let Some(h) = area.find(mid) {
            let _ = area.release(h.offset);
            let f = AreaFrame {
                op: Op::Release,
                message_id: mid,
                offset: h.offset,
                length: h.length,
            };
            self.push_out(f.encode().to_vec());
        }
    }

    fn area_refused(&mut self, why: &str) {
        tracing::warn!(
            conn = self.id,
            refused = why,
            "bad area frame from smbdirectd; disconnecting"
        );
        self.closed = true;
    }

    /// Frames ready to be written to the socket (each with its 4-byte NetBIOS header).
    pub fn take_output(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.out)
    }

    /// READs/WRITEs to submit to the ring.
    pub(crate) fn take_file_io(&mut self) -> Vec<FileIo> {
        std::mem::take(&mut self.file_io)
    }

    /// READs/WRITEs handed out and not yet submitted.
    pub(crate) fn file_io_count(&self) -> usize {
        self.file_io.len()
    }

    /// An event routed to this connection, delivered at `now`.
    pub fn on_event(&mut self, ev: Event, now: Instant) {
        self.now = now;
        match ev {
            Event::DirChanged {
                dir,
                action,
                filter,
                name,
                subtree,
            } => self.notify_fire(&dir, action, filter, &name, subtree),
            Event::DirDeletePending { dir } => self.notify_delete_pending(&dir),
            Event::DirOverflow { dir } => self.notify_overflow(&dir),
            Event::Lock(n) => self.on_lock_notification(n),
            Event::LockStateLost => {
                // Its handles' share modes and locks are no longer enforced anywhere: keeping
                // them would let another node grant conflicting ones. Dropping the connection
                // makes the client reconnect and reopen through the new lockmgrd session.
                // The CLOCK_MONOTONIC stamp lets tests order this against other processes'
                // events (the fencing test: before lockmgrd expires the node).
                tracing::warn!(
                    conn = self.id,
                    monotonic_ns = lockmgr_transport::sys::monotonic_ns(),
                    "lock state lost with lockmgrd; disconnecting"
                );
                self.closed = true;
            }
            Event::ExpireSession { session_id } => {
                tracing::info!(conn = self.id, session_id, "session expired by reconnect");
                // MS-SMB2 3.3.5.5.3: durable opens of the previous session stay reclaimable.
                self.park_durable_opens(Some(session_id));
                self.close_session_opens(session_id, None);
                self.sessions.remove(&session_id);
                self.end_channels(session_id);
            }
            Event::ChannelBound {
                session_id,
                channel,
                signing_alg,
                signing_key,
            } => {
                if self.sessions.contains_key(&session_id) {
                    tracing::info!(conn = self.id, session_id, channel, "channel bound");
                    self.channels
                        .insert((channel, session_id), (signing_alg, signing_key.0));
                } else {
                    self.shared
                        .post_event(channel, Event::ChannelGone { session_id });
                }
            }
            Event::ChannelMessage { channel, msg, seq } => {
                let was_closed = self.closed;
                self.cur_channel = Some(channel);
                self.cur_seq = Some(seq);
                self.on_message(&msg, now);
                self.cur_channel = None;
                self.cur_seq = None;
                // A protocol violation on the channel drops the channel, not this connection.
                let close = self.closed && !was_closed;
                self.closed = was_closed;
                self.flush_channel_out(channel, close);
            }
            Event::ChannelOutput { frames, close } => {
                self.out.extend(frames);
                if close {
                    self.closed = true;
                }
            }
            Event::ChannelGone { session_id } => {
                if let Some(b) = self.bound.remove(&session_id) {
                    self.remember_ended(session_id, b.signer);
                }
            }
            Event::ChannelClosed { channel } => {
                self.channels.retain(|(ch, _), _| *ch != channel);
                if self.transport_lost && self.channels.is_empty() {
                    tracing::info!(conn = self.id, "last channel closed; ending its sessions");
                    self.closed = true;
                }
            }
            Event::SendBreak(d) => self.queue_break(d),
            Event::BreakUndelivered(d) => self.deliver_break(d),
            Event::DurableWaitOver { persistent } => self.durable_wait_over(persistent),
            Event::HangupDone { conn } => self.hangup_done(conn),
            Event::WriteTimeDue { volatile } => {
                let due = self
                    .opens
                    .get_mut(&volatile)
                    .is_some_and(|o| o.write_time.timer(now));
                if due {
                    self.touch_write_time(volatile);
                }
                self.renew_write_hold(volatile, now);
            }
            // The worker handles it (it has the socket); one that reaches here has nothing to do.
            Event::AckCheck => {}
            Event::Status(tx) => {
                // The asker may have given up (timeout): nothing to do then.
                let _ = tx.send(self.status());
            }
        }
    }

    /// The client's transport closed. If other connections are bound to sessions established
    /// here, the sessions live on through them (MS-SMB2 3.3.7.1 ends a session only with its
    /// last channel): their opens, pending creates and durable state stay, so a client that
    /// lost one NIC replays on another (smbtorture smb2.replay.dhv2-pending2*/3*). Returns
    /// whether the connection lives on; it ends when the last channel closes.
    pub fn lose_transport(&mut self) -> bool {
        if self.channels.is_empty() {
            return false;
        }
        if !self.transport_lost {
            tracing::info!(
                conn = self.id,
                channels = self.channels.len(),
                "transport closed; sessions go on through their other channels"
            );
            self.transport_lost = true;
            // As a channel of other connections' sessions it is gone for good.
            self.leave_bound_sessions();
            // A CREATE waiting for this connection's opens decides now: they stay.
            self.shared.transport_done(self.id);
        }
        true
    }

    /// The connection is gone: release everything.
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        // Change-notify watches end with their handles, below.
        for p in self.pending.values() {
            if let PendingKind::DurableReconnect(t) = &p.kind {
                self.shared
                    .stop_waiting_for_durable(t.rc.file_id.persistent, self.id);
            }
        }
        self.pending.clear();
        self.park_durable_opens(None);
        let ids: Vec<u64> = self.opens.keys().copied().collect();
        for v in ids {
            self.close_open(v, status::SUCCESS);
        }
        for sid in self.sessions.keys() {
            self.shared.session_gone(*sid);
        }
        let sids: Vec<u64> = self.sessions.keys().copied().collect();
        for sid in sids {
            self.end_channels(sid);
        }
        self.leave_bound_sessions();
        self.shared.unregister_conn(self.id);
        if self.via_rdma_proxy {
            tracing::info!(
                conn = self.id,
                area = self.rdma_area.is_some(),
                area_payload_bytes = self.rdma_area_bytes,
                socket_payload_bytes = self.rdma_inline_bytes,
                "smbdirectd connection ended"
            );
        }
        // Its ranges of the shared area are free for smbdirectd's other connections (those a
        // file I/O still uses when it completes).
        self.rdma_payloads.clear();
        self.rdma_area = None;
    }

    /// This connection stops being a channel of the sessions it was bound to.
    fn leave_bound_sessions(&mut self) {
        for sid in self.bound.keys() {
            self.shared.channel_removed(*sid);
        }
        let mut owners: Vec<u64> = self.bound.values().map(|b| b.owner).collect();
        owners.sort_unstable();
        owners.dedup();
        for o in owners {
            self.shared
                .post_event(o, Event::ChannelClosed { channel: self.id });
        }
        self.bound.clear();
    }
}
