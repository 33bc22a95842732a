//! The engine state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::hash::{IdMap, IdSet};

use crate::brl::{range_is_valid, LockRef, LockTable, Span};
use crate::sharing::{is_stat_open, map_generic, ShareCounters};
use crate::snapshot::{
    BreakHolder, BreakInfo, DeferredOpenInfo, LockInfo, LockWaiterInfo, OpenInfo, SessionInfo,
    Snapshot, Stats,
};
use crate::types::{
    ClientGuid, DurableRequest, FileId, FileUsage, Lease, LeaseKey, LeaseState, LockRange,
    Notification, OpenId, OpenRequest, OplockGrant, OplockLevel, OplockRequest, Output, Reply,
    Request, RequestId, SessionId, Status, Time,
};
use crate::Config;

mod durable;
mod io_grant;
mod links;
mod watch;
use durable::{DurableParams, DISCONNECTED};
use io_grant::QueuedLock;
use links::Links;

/// The link name under which a named stream's opens keep the stream's own delete state: a
/// stream is one object whichever hard link of its file it was opened through.
const STREAM_LINK: u64 = 0;

type LeaseId = (ClientGuid, LeaseKey);

/// Something holding caching state on a file: an open's oplock or a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
enum Holder {
    Oplock(OpenId),
    Lease(LeaseId),
}

/// A break sent with ack required, not yet acknowledged.
///
/// For leases this is MS-SMB2 3.3.1.4's Lease.Breaking / Lease.BreakToLeaseState, split the
/// way Windows and Samba behave: `to` is the state the client was told to break to (the most
/// its ack may keep), `required` the state every conflicting open since then needs (a later
/// open may need less than the break in flight asks for; it tightens `required` without a new
/// notification, and the ack then triggers a follow-up break). Oplocks keep `required == to`.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Break {
    to: LeaseState,
    required: LeaseState,
    deadline: Time,
    seq: u64,
}

/// Oplocks expressed as caching bits so oplocks and leases share one break algorithm:
/// Batch = RWH, Exclusive = RW, Level II = R (MS-SMB2 3.3.1.4 maps them the same way).
fn oplock_state(level: OplockLevel) -> LeaseState {
    match level {
        OplockLevel::None => LeaseState::NONE,
        OplockLevel::LevelII => LeaseState::READ,
        OplockLevel::Exclusive => LeaseState::RW,
        OplockLevel::Batch => LeaseState::RWH,
    }
}

/// Samba's is_lease_stat_open: besides attributes, READ_CONTROL neither breaks leases nor
/// keeps other opens from getting one (smbtorture lease.statopen4).
fn is_lease_stat_open(access: u32) -> bool {
    is_stat_open(access & !crate::types::access::READ_CONTROL)
}

/// The strongest oplock level within `state` (an oplock cannot express RH: it becomes Level II).
fn oplock_level(state: LeaseState) -> OplockLevel {
    if state.contains(LeaseState::RWH) {
        OplockLevel::Batch
    } else if state.contains(LeaseState::RW) {
        OplockLevel::Exclusive
    } else if state.contains(LeaseState::READ) {
        OplockLevel::LevelII
    } else {
        OplockLevel::None
    }
}

const fn without(state: LeaseState, bits: LeaseState) -> LeaseState {
    LeaseState(state.0 & !bits.0)
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
enum PendingRef {
    Lock(FileId),
    Open(FileId),
    Rename(FileId),
    /// A byte-range lock queued until an I/O recall of the file completes.
    QueuedLock(FileId),
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct SessionState {
    #[serde(serialize_with = "crate::hash::sorted::set")]
    opens: IdSet<OpenId>,
    #[serde(serialize_with = "crate::hash::sorted::map")]
    pending: IdMap<RequestId, PendingRef>,
    /// Byte-range locks held by the session's opens (for `SessionLimits::max_locks`).
    locks: usize,
    /// Files whose I/O recall waits for this session's `IoRecallAck`.
    io_recalls: Vec<FileId>,
    /// Directories the session registered change-notify watchers on (for
    /// `SessionLimits::max_watches`).
    watches: usize,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct OpenState {
    session: SessionId,
    file: FileId,
    access: u32,
    share: u32,
    delete_on_close: bool,
    directory: bool,
    lease: Option<LeaseId>,
    /// Oplock held by this open (as caching bits); always NONE for lease opens.
    oplock: LeaseState,
    oplock_break: Option<Break>,
    /// Handles of this open's locks so close need not scan other opens' locks. Unlock leaves
    /// stale entries behind (sequence numbers are never reused, so a stale handle matches
    /// nothing); they are dropped when the open's last lock goes, or compacted away once they
    /// outnumber the live ones by a margin (see `do_unlock`), which keeps the hot path to an
    /// append.
    locks: Vec<LockRef>,
    live_locks: usize,
    /// A stat open that asked for no caching: counted in `FileState::stat_opens`.
    plain_stat: bool,
    /// A named-stream open that does not share delete: counted in its base file's
    /// `FileState::streams_denying_delete`.
    denies_base_delete: Option<FileId>,
    /// The link of `FileState::links` this open goes through.
    link: u32,
    /// For a named-stream open: its base file and the serial of the base file's link it was
    /// opened through. The open holds that link like an open of the unnamed stream does
    /// (MS-FSA 2.1.1.3: File.OpenList holds the opens of every stream of the file), so a
    /// delete-pending file stays until its stream opens are closed too (2.1.5.4;
    /// smbtorture smb2.streams.delete).
    base_link: Option<(FileId, u32)>,
    /// The open holds an I/O grant (listed in `FileState::io_granted`).
    io_grant: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct LeaseRec {
    file: FileId,
    state: LeaseState,
    /// `Some` for v2 leases.
    epoch: Option<u16>,
    parent_key: Option<LeaseKey>,
    opens: Vec<OpenId>,
    breaking: Option<Break>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct LockWaiter {
    session: SessionId,
    request: RequestId,
    open: OpenId,
    offset: u64,
    length: u64,
    exclusive: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct DeferredOpen {
    session: SessionId,
    request: RequestId,
    req: OpenRequest,
    /// The durable half of an `OpenDurable`, applied when the open is granted.
    durable: Option<DurableRequest>,
    /// Breaks this create waits for; it is retried when none of them is in flight any more.
    waiting: Vec<Holder>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct RenameWaiter {
    session: SessionId,
    request: RequestId,
    /// A `BreakAndClose`: the open to close once the breaks are done.
    close: Option<OpenId>,
    /// Leases whose handle-caching break this rename waits for.
    waiting: Vec<Holder>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct FileState {
    open_count: usize,
    /// Opens among `open_count` without data access (attributes, SYNCHRONIZE, READ_CONTROL)
    /// that asked for no caching: they never stand in the way of a caching grant (Samba
    /// keeps no share-mode entry for them; smbtorture lease.statopen2/3/4). A stat open that
    /// holds a lease or oplock does count (lease.statopen, oplock.batch9).
    stat_opens: usize,
    counters: ShareCounters,
    /// The names the file is open through, and which are delete-pending.
    links: Links,
    locks: LockTable,
    lock_waiters: VecDeque<LockWaiter>,
    deferred: VecDeque<DeferredOpen>,
    /// Renames waiting for other leases to give up handle caching (`BreakForRename`).
    rename_waiters: Vec<RenameWaiter>,
    /// Opens holding (or breaking) a non-NONE oplock.
    oplock_holders: Vec<OpenId>,
    /// Leases with at least one open on this file.
    leases: Vec<LeaseId>,
    /// Opens of this file's named streams that take part in sharing without sharing delete:
    /// an open of this (unnamed) stream asking for DELETE conflicts with them (MS-FSA
    /// 2.1.5.1.2.1; smbtorture smb2.streams.delete).
    streams_denying_delete: u32,
    /// Opens holding an I/O grant (`Reply::IoGranted`): their READ/WRITE skip `CheckIo`.
    io_granted: Vec<OpenId>,
    /// Sessions whose `IoRecallAck` a recall of this file still waits for. While it is not
    /// empty, nothing that the grants stood in the way of happens: byte-range locks queue in
    /// `io_queued_locks`, creates and renames stay deferred, and no grant is given.
    io_recalling: Vec<SessionId>,
    /// Byte-range lock requests waiting for the recall, in arrival order.
    io_queued_locks: VecDeque<QueuedLock>,
}

impl FileState {
    fn has_holders(&self) -> bool {
        !self.oplock_holders.is_empty() || !self.leases.is_empty()
    }

    fn is_idle(&self) -> bool {
        self.open_count == 0
            && self.links.is_empty()
            && self.locks.is_empty()
            && self.lock_waiters.is_empty()
            && self.deferred.is_empty()
            && self.rename_waiters.is_empty()
            && self.oplock_holders.is_empty()
            && self.leases.is_empty()
            && self.streams_denying_delete == 0
            && self.io_recalling.is_empty()
            && self.io_queued_locks.is_empty()
    }
}

/// What the close of an open leaves its node to unlink (MS-FSA 2.1.5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unlink {
    Nothing,
    /// The open's own object: the last open of a delete-pending link, or of a
    /// delete-pending named stream.
    Own,
    /// The named-stream open was the last open of its delete-pending base file.
    Base(FileId),
}

impl Unlink {
    fn reply(self) -> Reply {
        match self {
            Unlink::Nothing => Reply::Closed { delete_file: false },
            Unlink::Own => Reply::Closed { delete_file: true },
            Unlink::Base(_) => Reply::ClosedDeleteBase,
        }
    }

    /// The file to delete, `f` being the open's own.
    fn file(self, f: FileId) -> Option<FileId> {
        match self {
            Unlink::Nothing => None,
            Unlink::Own => Some(f),
            Unlink::Base(base) => Some(base),
        }
    }
}

enum Attempt {
    Done(Reply),
    Wait(Vec<Holder>),
}

/// The lock engine. See the crate documentation for how to drive it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Engine {
    config: Config,
    #[serde(serialize_with = "crate::hash::sorted::map")]
    sessions: IdMap<SessionId, SessionState>,
    #[serde(serialize_with = "crate::hash::sorted::map")]
    opens: IdMap<OpenId, OpenState>,
    #[serde(serialize_with = "crate::hash::sorted::map")]
    files: IdMap<FileId, FileState>,
    #[serde(serialize_with = "crate::hash::sorted::map")]
    leases: IdMap<LeaseId, LeaseRec>,
    timers: BTreeMap<(Time, u64), Holder>,
    outputs: VecDeque<Output>,
    orphaned_deletes: BTreeSet<FileId>,
    durable: durable::DurableTable,
    /// Change-notify registrations: directory -> where it is and who watches it
    /// (`engine/watch.rs`).
    watches: BTreeMap<FileId, watch::WatchedDir>,
    next_open: u64,
    next_seq: u64,
    scratch: Vec<LockRef>,
    stats: Stats,
}

impl Engine {
    pub fn new(config: Config) -> Engine {
        Engine {
            config,
            sessions: IdMap::default(),
            opens: IdMap::default(),
            files: IdMap::default(),
            leases: IdMap::default(),
            timers: BTreeMap::new(),
            outputs: VecDeque::new(),
            orphaned_deletes: BTreeSet::new(),
            durable: durable::DurableTable::default(),
            watches: BTreeMap::new(),
            next_open: 1,
            next_seq: 0,
            scratch: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Register a session (one smbd node's connection). Ids are chosen by the daemon.
    /// Registering a live session again changes nothing.
    pub fn open_session(&mut self, session: SessionId) {
        if self.sessions.contains_key(&session) {
            return;
        }
        self.sessions.insert(session, SessionState::default());
        self.tell_watched(session);
    }

    /// The session ended: release all its opens, byte-range locks, oplocks, leases and waiting
    /// requests; other sessions' waiters proceed. Outputs addressed to it are dropped.
    ///
    /// If the session held the last open of a delete-pending file, nobody is left to unlink
    /// it: the file is recorded in [`Engine::take_orphaned_deletes`] (and the snapshot), and
    /// new opens of it fail with DeletePending until the daemon takes it.
    pub fn end_session(&mut self, now: Time, session: SessionId) {
        let Some(state) = self.sessions.remove(&session) else {
            return;
        };
        self.stats.sessions_ended_total += 1;
        if state.watches > 0 {
            for dir in self.watched_by(session) {
                self.drop_watch(session, dir);
            }
        }
        let mut touched = BTreeSet::new();
        for (request, pending) in state.pending {
            match pending {
                PendingRef::Lock(f) => {
                    if let Some(file) = self.files.get_mut(&f) {
                        file.lock_waiters
                            .retain(|w| !(w.session == session && w.request == request));
                    }
                    touched.insert(f);
                }
                PendingRef::Open(f) => {
                    if let Some(file) = self.files.get_mut(&f) {
                        file.deferred
                            .retain(|d| !(d.session == session && d.request == request));
                    }
                    touched.insert(f);
                }
                PendingRef::Rename(f) => {
                    if let Some(file) = self.files.get_mut(&f) {
                        file.rename_waiters
                            .retain(|w| !(w.session == session && w.request == request));
                    }
                    touched.insert(f);
                }
                PendingRef::QueuedLock(f) => {
                    if let Some(file) = self.files.get_mut(&f) {
                        file.io_queued_locks
                            .retain(|q| !(q.session == session && q.request == request));
                    }
                    touched.insert(f);
                }
            }
        }
        // A node that is gone uses no grant: its session's end answers its recalls, the way
        // it ends the breaks its clients could no longer acknowledge.
        for f in state.io_recalls {
            if let Some(file) = self.files.get_mut(&f) {
                file.io_recalling.retain(|s| *s != session);
            }
            touched.insert(f);
        }
        let mut opens: Vec<OpenId> = state.opens.into_iter().collect();
        opens.sort_unstable();
        for open in opens {
            // MS-SMB2 3.3.7.1: durable opens of a node that went away stay, disconnected,
            // for another node to reclaim.
            if self.try_disconnect(now, open) {
                continue;
            }
            if let Some((f, unlink)) = self.remove_open(open) {
                if let Some(gone) = unlink.file(f) {
                    self.orphaned_deletes.insert(gone);
                }
                touched.insert(f);
            }
        }
        for f in touched {
            self.after_release(now, f);
        }
        self.outputs.retain(|o| match o {
            Output::Reply { session: s, .. } | Output::Notify { session: s, .. } => *s != session,
        });
    }

    /// Files whose last open disappeared with its session while delete-pending; the daemon
    /// should have one node unlink them. Taking them lets new opens of those ids proceed.
    pub fn take_orphaned_deletes(&mut self) -> Vec<FileId> {
        std::mem::take(&mut self.orphaned_deletes)
            .into_iter()
            .collect()
    }

    /// One request of a session. Exactly one `Output::Reply` results for it.
    pub fn handle(&mut self, now: Time, session: SessionId, request: RequestId, req: Request) {
        if !self.admit(session, request, matches!(req, Request::Cancel { .. })) {
            return;
        }
        match req {
            Request::Open(o) => self.do_open(now, session, request, o, None),
            Request::OpenDurable { open, durable } => {
                self.do_open(now, session, request, open, Some(durable))
            }
            Request::Close { open } => self.do_close(now, session, request, open),
            Request::SetDeletePending { open, delete } => {
                let status = match self.owned(session, open) {
                    Some(o) => {
                        let (f, link) = (o.file, o.link);
                        if let Some(file) = self.files.get_mut(&f) {
                            file.links.set_deleted(link, delete);
                        }
                        Status::Success
                    }
                    None => Status::InvalidHandle,
                };
                self.reply(session, request, Reply::Done(status));
            }
            Request::Lock {
                open,
                ranges,
                fail_immediately,
            } => self.do_lock(now, session, request, open, &ranges, fail_immediately),
            Request::Unlock { open, ranges } => {
                self.do_unlock(now, session, request, open, &ranges)
            }
            Request::Cancel { request: target } => self.do_cancel(now, session, request, target),
            Request::CheckIo {
                open,
                offset,
                length,
                write,
            } => self.do_check_io(now, session, request, open, offset, length, write, false),
            Request::CheckIoGrant {
                open,
                offset,
                length,
                write,
            } => self.do_check_io(now, session, request, open, offset, length, write, true),
            Request::IoRecallAck { file } => self.do_io_recall_ack(now, session, request, file),
            Request::OplockBreakAck { open, level } => {
                self.do_oplock_ack(now, session, request, open, level)
            }
            Request::LeaseBreakAck {
                client_guid,
                key,
                state,
            } => self.do_lease_ack(now, session, request, (client_guid, key), state),
            Request::BreakForRename { open } => {
                self.do_break_for_rename(now, session, request, open, false)
            }
            Request::BreakAndClose { open } => {
                self.do_break_for_rename(now, session, request, open, true)
            }
            Request::Relink { open, link } => {
                let status = match self.owned(session, open) {
                    Some(o) => {
                        let (f, serial) = (o.file, o.link);
                        if let Some(file) = self.files.get_mut(&f) {
                            file.links.rename(serial, link);
                        }
                        Status::Success
                    }
                    None => Status::InvalidHandle,
                };
                self.reply(session, request, Reply::Done(status));
            }
            Request::QueryUsage { file, except } => {
                let usage = self.file_usage(file, except);
                self.reply(session, request, Reply::Usage(usage));
            }
            Request::SetDurable {
                open,
                key,
                timeout_ms,
                persistent,
                blob,
            } => self.do_set_durable(
                session,
                request,
                open,
                DurableParams {
                    key,
                    timeout_ms,
                    persistent,
                },
                blob,
            ),
            Request::Disconnect { open } => self.do_disconnect(now, session, request, open),
            Request::DurableLookup { key } => self.do_durable_lookup(session, request, key),
            Request::Reclaim {
                key,
                open,
                client_guid,
            } => self.do_reclaim(session, request, key, open, client_guid),
            Request::WatchDir { dir, tree, path } => {
                self.do_watch_dir(session, request, dir, tree, path)
            }
            Request::UnwatchDir { dir } => self.do_unwatch_dir(session, request, dir),
            Request::DirChange(c) => self.do_dir_change(session, request, c),
        }
    }

    /// `handle(now, session, request, Request::Lock { open, ranges, fail_immediately })` with
    /// the ranges borrowed, so a daemon can decode them into a reused buffer instead of
    /// allocating a `Vec` per request.
    pub fn handle_lock(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        ranges: &[LockRange],
        fail_immediately: bool,
    ) {
        if self.admit(session, request, false) {
            self.do_lock(now, session, request, open, ranges, fail_immediately);
        }
    }

    /// `handle(now, session, request, Request::Unlock { open, ranges })` with the ranges
    /// borrowed (see [`Engine::handle_lock`]).
    pub fn handle_unlock(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        ranges: &[LockRange],
    ) {
        if self.admit(session, request, false) {
            self.do_unlock(now, session, request, open, ranges);
        }
    }

    /// Common checks of every request; false if it was answered already.
    fn admit(&mut self, session: SessionId, request: RequestId, is_cancel: bool) -> bool {
        self.stats.requests_total += 1;
        let Some(state) = self.sessions.get(&session) else {
            self.reply(session, request, Reply::Done(Status::RequestNotAccepted));
            return false;
        };
        // A request id must be unambiguous for Cancel and for the later Completed. Cancel is
        // exempt: SMB2 CANCEL carries the MessageId of the request it cancels (MS-SMB2
        // 3.3.5.16), so a daemon using message ids as request ids reuses the id there.
        if !is_cancel && !state.pending.is_empty() && state.pending.contains_key(&request) {
            self.reply(session, request, Reply::Done(Status::InvalidParameter));
            return false;
        }
        true
    }

    /// Fire due timers: unacknowledged breaks complete as if acknowledged to None
    /// (MS-SMB2 3.3.6.3 oplock break and 3.3.6.5 lease break acknowledgment timers).
    pub fn handle_timeout(&mut self, now: Time) {
        self.expire_durable(now);
        while let Some((&(deadline, seq), &holder)) = self.timers.first_key_value() {
            if deadline > now {
                break;
            }
            self.timers.remove(&(deadline, seq));
            let file = match holder {
                Holder::Oplock(o) => match self.opens.get_mut(&o) {
                    Some(open) if open.oplock_break.is_some_and(|b| b.seq == seq) => {
                        open.oplock_break = None;
                        open.oplock = LeaseState::NONE;
                        let f = open.file;
                        if let Some(file) = self.files.get_mut(&f) {
                            file.oplock_holders.retain(|x| *x != o);
                        }
                        Some(f)
                    }
                    _ => None,
                },
                Holder::Lease(id) => match self.leases.get_mut(&id) {
                    Some(rec) if rec.breaking.is_some_and(|b| b.seq == seq) => {
                        rec.breaking = None;
                        rec.state = LeaseState::NONE;
                        Some(rec.file)
                    }
                    _ => None,
                },
            };
            if let Some(f) = file {
                self.stats.break_timeouts_total += 1;
                self.run_deferred(now, f);
            }
        }
    }

    /// Earliest time [`Engine::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Time> {
        let breaks = self.timers.first_key_value().map(|(&(t, _), _)| t);
        match (breaks, self.durable.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Next reply or notification to send.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for (id, s) in &self.sessions {
            snap.sessions.push(SessionInfo {
                session: *id,
                opens: s.opens.len(),
                pending_requests: s.pending.len(),
                io_grants: s
                    .opens
                    .iter()
                    .filter(|o| self.opens.get(o).is_some_and(|o| o.io_grant))
                    .count(),
            });
        }
        snap.sessions.sort_by_key(|s| s.session);
        for (id, o) in &self.opens {
            snap.opens.push(OpenInfo {
                open: *id,
                session: o.session,
                file: o.file,
                access: o.access,
                share: o.share,
                delete_on_close: o.delete_on_close,
                directory: o.directory,
                caching: self.grant_of(o),
            });
            if let Some(b) = o.oplock_break {
                snap.breaks.push(BreakInfo {
                    session: o.session,
                    file: o.file,
                    holder: BreakHolder::Oplock {
                        open: *id,
                        from: oplock_level(o.oplock),
                        to: oplock_level(b.to),
                    },
                    deadline: b.deadline,
                });
            }
        }
        snap.opens.sort_by_key(|o| o.open);
        for (id, rec) in &self.leases {
            if let Some(b) = rec.breaking {
                snap.breaks.push(BreakInfo {
                    session: self.lease_session(rec).unwrap_or_default(),
                    file: rec.file,
                    holder: BreakHolder::Lease {
                        client_guid: id.0,
                        key: id.1,
                        from: rec.state,
                        to: b.to,
                    },
                    deadline: b.deadline,
                });
            }
        }
        snap.breaks.sort_by_key(|b| (b.deadline, b.file));
        for (f, file) in &self.files {
            for (offset, held) in file.locks.iter() {
                snap.locks.push(LockInfo {
                    file: *f,
                    open: held.open,
                    offset,
                    length: held.length,
                    exclusive: held.exclusive,
                });
            }
            for w in &file.lock_waiters {
                snap.lock_waiters.push(LockWaiterInfo {
                    session: w.session,
                    request: w.request,
                    file: *f,
                    open: w.open,
                    offset: w.offset,
                    length: w.length,
                    exclusive: w.exclusive,
                });
            }
            for d in &file.deferred {
                snap.deferred_opens.push(DeferredOpenInfo {
                    session: d.session,
                    request: d.request,
                    file: *f,
                });
            }
            if file.links.any_deleted() {
                snap.delete_pending.push(*f);
            }
        }
        snap.locks
            .sort_by_key(|l| (l.file, l.offset, l.length, l.open, l.exclusive));
        // Waiters keep their FIFO order within a file; files are ordered by id.
        snap.lock_waiters.sort_by_key(|w| w.file);
        snap.deferred_opens.sort_by_key(|d| d.file);
        snap.delete_pending.sort_unstable();
        snap.orphaned_deletes = self.orphaned_deletes.iter().copied().collect();
        snap
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.sessions = self.sessions.len();
        s.files = self.files.len();
        s.opens = self.opens.len();
        s.leases = self.leases.len();
        s.locks_held = self.files.values().map(|f| f.locks.len()).sum();
        s.lock_waiters = self.files.values().map(|f| f.lock_waiters.len()).sum();
        s.deferred_opens = self.files.values().map(|f| f.deferred.len()).sum();
        s.breaks_pending = self.timers.len();
        s.orphaned_deletes = self.orphaned_deletes.len();
        s.io_grants_held = self.files.values().map(|f| f.io_granted.len()).sum();
        s.watched_dirs = self.watches.len();
        s
    }

    // ----- helpers -------------------------------------------------------------------------

    fn reply(&mut self, session: SessionId, request: RequestId, reply: Reply) {
        self.outputs.push_back(Output::Reply {
            session,
            request,
            reply,
        });
    }

    fn notify(&mut self, session: SessionId, notification: Notification) {
        if session == DISCONNECTED {
            return;
        }
        self.outputs.push_back(Output::Notify {
            session,
            notification,
        });
    }

    fn complete(&mut self, session: SessionId, request: RequestId, reply: Reply) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.pending.remove(&request);
        }
        self.notify(session, Notification::Completed { request, reply });
    }

    /// The open, if it exists and belongs to `session`: no session can touch another's state.
    /// The link an open's own delete state lives under: the link it names, except for a
    /// named stream, whose delete state is the stream's.
    fn own_link(req: &OpenRequest) -> u64 {
        if req.stream_base.is_some() {
            STREAM_LINK
        } else {
            req.link
        }
    }

    fn owned(&self, session: SessionId, open: OpenId) -> Option<&OpenState> {
        self.opens.get(&open).filter(|o| o.session == session)
    }

    fn lease_session(&self, rec: &LeaseRec) -> Option<SessionId> {
        // An owner that is still connected hears the break for the whole lease.
        let mut owners = rec
            .opens
            .iter()
            .filter_map(|o| self.opens.get(o))
            .map(|o| o.session);
        let first = owners.next()?;
        Some(
            std::iter::once(first)
                .chain(owners)
                .find(|s| *s != DISCONNECTED)
                .unwrap_or(first),
        )
    }

    fn lease_grant(id: LeaseId, rec: &LeaseRec) -> OplockGrant {
        OplockGrant::Lease(Lease {
            key: id.1,
            state: rec.state,
            parent_key: rec.parent_key,
            epoch: rec.epoch,
            breaking: rec.breaking.is_some(),
        })
    }

    fn grant_of(&self, o: &OpenState) -> OplockGrant {
        match o.lease {
            Some(id) => match self.leases.get(&id) {
                Some(rec) => Self::lease_grant(id, rec),
                None => OplockGrant::None,
            },
            None if o.oplock == LeaseState::NONE => OplockGrant::None,
            None => OplockGrant::Oplock(oplock_level(o.oplock)),
        }
    }

    fn holder_state(&self, h: Holder) -> LeaseState {
        match h {
            Holder::Oplock(o) => self.opens.get(&o).map_or(LeaseState::NONE, |o| o.oplock),
            Holder::Lease(id) => self.leases.get(&id).map_or(LeaseState::NONE, |r| r.state),
        }
    }

    fn holder_breaking(&self, h: Holder) -> bool {
        match h {
            Holder::Oplock(o) => self.opens.get(&o).is_some_and(|o| o.oplock_break.is_some()),
            Holder::Lease(id) => self.leases.get(&id).is_some_and(|r| r.breaking.is_some()),
        }
    }

    /// Caching holders of a file other than `except_lease` / `except_open`.
    fn holders(
        &self,
        f: FileId,
        except_open: Option<OpenId>,
        except_lease: Option<LeaseId>,
    ) -> Vec<Holder> {
        let Some(file) = self.files.get(&f) else {
            return Vec::new();
        };
        if file.oplock_holders.is_empty() && file.leases.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(file.oplock_holders.len() + file.leases.len());
        out.extend(
            file.oplock_holders
                .iter()
                .filter(|o| Some(**o) != except_open)
                .map(|o| Holder::Oplock(*o)),
        );
        out.extend(
            file.leases
                .iter()
                .filter(|l| Some(**l) != except_lease)
                .map(|l| Holder::Lease(*l)),
        );
        out
    }

    /// Send a break of `h` to `to`. With `ack` the holder keeps its state until it acks or the
    /// break times out; without, the new state applies at once (MS-SMB2 3.3.4.6/3.3.4.7:
    /// breaks from Level II / R-only need no acknowledgment).
    fn send_break(&mut self, now: Time, h: Holder, to: LeaseState, ack: bool) {
        // A break that needs an ack is never sent to a disconnected durable holder: nobody
        // can acknowledge it, and whoever waits for it would wait out the break timeout.
        if ack && self.purge_disconnected_holder(now, h) {
            return;
        }
        let deadline = now.saturating_add(self.config.break_timeout);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.breaks_sent_total += 1;
        match h {
            Holder::Oplock(o) => {
                let Some(open) = self.opens.get_mut(&o) else {
                    return;
                };
                let session = open.session;
                let f = open.file;
                if ack {
                    open.oplock_break = Some(Break {
                        to,
                        required: to,
                        deadline,
                        seq,
                    });
                    self.timers.insert((deadline, seq), h);
                } else {
                    open.oplock = to;
                    if to == LeaseState::NONE {
                        if let Some(file) = self.files.get_mut(&f) {
                            file.oplock_holders.retain(|x| *x != o);
                        }
                    }
                }
                self.notify(
                    session,
                    Notification::OplockBreak {
                        open: o,
                        new_level: oplock_level(to),
                    },
                );
            }
            // MS-SMB2 3.3.4.7: a v2 lease's epoch is incremented with each (new) break.
            Holder::Lease(id) => self.send_lease_break(now, id, to, to, ack, true, seq),
        }
    }

    /// Break lease `id` to `to` (see [`Engine::send_break`]); `required` is the least the
    /// waiting opens need (a follow-up break keeps its predecessor's), `new_epoch` bumps a v2
    /// lease's epoch (a follow-up break carries the same epoch). `seq` orders the timer.
    #[allow(clippy::too_many_arguments)]
    fn send_lease_break(
        &mut self,
        now: Time,
        id: LeaseId,
        to: LeaseState,
        required: LeaseState,
        ack: bool,
        new_epoch: bool,
        seq: u64,
    ) {
        let deadline = now.saturating_add(self.config.break_timeout);
        let session = match self.leases.get(&id) {
            Some(rec) => self.lease_session(rec).unwrap_or_default(),
            None => return,
        };
        let Some(rec) = self.leases.get_mut(&id) else {
            return;
        };
        let current = rec.state;
        if new_epoch {
            rec.epoch = rec.epoch.map(|e| e.wrapping_add(1));
        }
        let epoch = rec.epoch;
        if ack {
            rec.breaking = Some(Break {
                to,
                required,
                deadline,
                seq,
            });
            self.timers.insert((deadline, seq), Holder::Lease(id));
        } else {
            rec.state = to;
        }
        self.notify(
            session,
            Notification::LeaseBreak {
                client_guid: id.0,
                key: id.1,
                current,
                new: to,
                epoch,
                ack_required: ack,
            },
        );
    }

    /// A lease already breaking is asked to break further: the outstanding break's ack may
    /// keep no more than `to` now (Samba's breaking_to_required). Oplocks have nothing like
    /// it: a second break of a breaking oplock is simply not sent.
    fn tighten_break(&mut self, h: Holder, to: LeaseState) {
        if let Holder::Lease(id) = h {
            if let Some(rec) = self.leases.get_mut(&id) {
                let cur = rec.state;
                if let Some(b) = rec.breaking.as_mut() {
                    b.required = b.required.intersection(to).intersection(cur);
                }
            }
        }
    }

    /// MS-FSA 2.1.4.12 for WRITE and LOCK_CONTROL: Level II oplocks and read-caching leases of
    /// other opens (other lease keys) break to none. Nobody waits for these: without H no ack
    /// is required; a lease holding H is asked to ack, but the I/O proceeds.
    fn break_read_holders(&mut self, now: Time, f: FileId, requester: OpenId) {
        // The writer's own Level II oplock breaks too (smbtorture oplock.batch1 "self break");
        // only the writer's own lease is spared.
        let except_lease = self.opens.get(&requester).and_then(|o| o.lease);
        for h in self.holders(f, None, except_lease) {
            let cur = self.holder_state(h);
            if !cur.contains(LeaseState::READ)
                || cur.contains(LeaseState::WRITE)
                || self.holder_breaking(h)
            {
                continue;
            }
            let ack = cur.contains(LeaseState::HANDLE);
            self.send_break(now, h, LeaseState::NONE, ack);
        }
    }

    fn gc_file(&mut self, f: FileId) {
        if self.files.get(&f).is_some_and(FileState::is_idle) {
            self.files.remove(&f);
        }
    }

    /// After locks or opens went away: grant waiters, retry deferred creates, drop idle state.
    fn after_release(&mut self, now: Time, f: FileId) {
        self.run_queued_locks(now, f);
        self.process_lock_waiters(now, f);
        self.run_deferred(now, f);
        self.gc_file(f);
    }

    // ----- opens -----------------------------------------------------------------------------

    fn do_open(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        mut req: OpenRequest,
        durable: Option<DurableRequest>,
    ) {
        req.access = map_generic(req.access);
        let limits = self.config.limits;
        if self.sessions.get(&session).is_some_and(|s| {
            s.opens.len() >= limits.max_opens || s.pending.len() >= limits.max_waiters
        }) {
            self.reply(session, request, Reply::Done(Status::InsufficientResources));
            return;
        }
        match self.try_open(now, session, &req, true) {
            Attempt::Done(reply) => {
                let reply = self.attach_durable(reply, &req, durable);
                let reply = self.attach_io_grant(reply, &req, false);
                self.reply(session, request, reply)
            }
            Attempt::Wait(waiting) => {
                let f = req.file;
                self.files
                    .entry(f)
                    .or_default()
                    .deferred
                    .push_back(DeferredOpen {
                        session,
                        request,
                        req,
                        durable,
                        waiting,
                    });
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.pending.insert(request, PendingRef::Open(f));
                }
                self.reply(session, request, Reply::Pending);
            }
        }
    }

    /// One attempt at a CREATE (MS-FSA 2.1.5.1.2): delete-pending check, oplock/lease breaks,
    /// share-mode check, then the oplock/lease grant (MS-SMB2 3.3.5.9).
    fn try_open(
        &mut self,
        now: Time,
        session: SessionId,
        req: &OpenRequest,
        first: bool,
    ) -> Attempt {
        let lease_id = match req.oplock {
            OplockRequest::Lease(l) => Some((req.client_guid, l.key)),
            _ => None,
        };
        if let Some(id) = lease_id {
            // MS-SMB2 3.3.5.9.8: a lease key in use for another file cannot be reused.
            if self.leases.get(&id).is_some_and(|r| r.file != req.file) {
                return Attempt::Done(Reply::Done(Status::InvalidParameter));
            }
        }
        // MS-SMB2 3.3.5.9: a file with a disconnected persistent open is not available to
        // anybody but the open's owner, who reclaims it (a reconnect is not a create).
        if self.has_disconnected_persistent(req.file) {
            return Attempt::Done(Reply::Done(Status::FileNotAvailable));
        }
        self.purge_disconnected(now, req);
        if self.orphaned_deletes.contains(&req.file) {
            return Attempt::Done(Reply::Done(Status::DeletePending));
        }
        if let Some(base) = req.stream_base {
            // A stream of a delete-pending file cannot be opened through the deleted name
            // (MS-FSA 2.1.5.1.2.1).
            let base_pending = self.orphaned_deletes.contains(&base)
                || self
                    .files
                    .get(&base)
                    .is_some_and(|b| b.links.name_deleted(req.link));
            if base_pending {
                return Attempt::Done(Reply::Done(Status::DeletePending));
            }
        }
        let file = self.files.entry(req.file).or_default();
        if file.links.name_deleted(Self::own_link(req)) {
            return Attempt::Done(Reply::Done(Status::DeletePending));
        }
        let share_conflict = file.counters.conflicts(req.access, req.share)
            || (req.stream_base.is_none()
                && req.access & crate::types::access::DELETE != 0
                && file.streams_denying_delete > 0);
        // An open that may get caching or break someone's waits until the I/O grants of the
        // file are recalled: a write through a grant would not break caching granted or
        // downgraded meanwhile (MS-FSA 2.1.4.12).
        let may_break = (!is_stat_open(req.access) || req.overwrite) && file.has_holders();
        if (may_break || Self::asks_caching(req))
            && (!file.io_granted.is_empty() || !file.io_recalling.is_empty())
        {
            self.recall_io(req.file);
            return Attempt::Wait(Vec::new());
        }

        // Breaks before the grant, the way Windows and Samba order them (MS-FSA 2.1.5.1.2,
        // 2.1.4.12): an open that will fail the sharing check only breaks handle caching
        // (the holder may be keeping a handle its application already closed) and waits for
        // that; an open that passes breaks write caching. Overwrite/supersede break to NONE.
        // A holder whose caching this open does not touch is left alone, so e.g. an exclusive
        // oplock survives a sharing violation without a break (smbtorture oplock.exclusive1).
        // Stat opens break nothing; lease holders also ignore READ_CONTROL-only opens.
        let mut waiting = Vec::new();
        // An overwrite truncates, so even an attributes-only open then counts as a writer
        // (smbtorture oplock.batch13/14/16, exclusive5).
        if !is_stat_open(req.access) || req.overwrite {
            let delay_mask = if share_conflict {
                LeaseState::HANDLE
            } else {
                LeaseState::WRITE
            };
            let lease_stat_open = is_lease_stat_open(req.access);
            for h in self.holders(req.file, None, lease_id) {
                let is_lease = matches!(h, Holder::Lease(_));
                if is_lease && lease_stat_open && !req.overwrite {
                    continue;
                }
                // A breaking lease still holds its current state until the ack (MS-SMB2
                // 3.3.1.4): that is what this open has to take away.
                let cur = self.holder_state(h);
                let breaking = self.holder_breaking(h);
                let mut target = without(cur, delay_mask);
                if req.overwrite {
                    target = LeaseState::NONE;
                }
                if without(cur, target) == LeaseState::NONE {
                    // Nothing to take away, but a break in flight still settles first.
                    if breaking {
                        waiting.push(h);
                    }
                    continue;
                }
                if !is_lease {
                    // Oplocks only break to Level II or none.
                    target = target.intersection(LeaseState::READ);
                }
                if breaking {
                    // No second notification while one is outstanding (MS-SMB2 3.3.4.7 sends
                    // one break per Breaking period): the ack is followed by another break
                    // if it keeps more than this open allows (smbtorture lease.breaking3).
                    self.tighten_break(h, target);
                } else {
                    let ack = cur.contains(LeaseState::WRITE) || cur.contains(LeaseState::HANDLE);
                    self.send_break(now, h, target, ack);
                }
                // Wait for the caching this open conflicts with; an open that was already
                // deferred also waits out any break still in flight, while a first attempt
                // that only needs read/handle caching gone (an overwrite next to RH) proceeds
                // at once (smbtorture lease.breaking4; Samba's delay_for_oplock).
                let delays =
                    cur.intersection(delay_mask) != LeaseState::NONE && self.holder_breaking(h);
                if delays || (breaking && !first) {
                    waiting.push(h);
                }
            }
        }
        if !waiting.is_empty() {
            return Attempt::Wait(waiting);
        }
        if share_conflict {
            self.stats.sharing_violations_total += 1;
            self.gc_file(req.file);
            return Attempt::Done(Reply::Done(Status::SharingViolation));
        }

        let open_id = OpenId(self.next_open);
        self.next_open += 1;
        let others_hold_write = self
            .holders(req.file, None, lease_id)
            .into_iter()
            .any(|h| self.holder_state(h).contains(LeaseState::WRITE));
        let (open_count, has_locks) = self
            .files
            .get(&req.file)
            .map_or((0, false), |f| (f.open_count, !f.locks.is_empty()));
        // Grant rules (MS-FSA 2.1.5.17.2, Samba's delay_for_oplock): an oplock is not granted
        // next to a lease with handle caching, and a lease gets no handle caching next to
        // an oplock holder (its Level II could not coexist with RH). A plain open without
        // any caching leaves H alone (issue 12 item 6): it neither caches nor needs telling
        // to close, and taking H away would deny Windows clients a durable handle.
        let other_lease_has_handle = self.holders(req.file, None, lease_id).into_iter().any(|h| {
            matches!(h, Holder::Lease(_)) && self.holder_state(h).contains(LeaseState::HANDLE)
        });
        let other_oplocks = self
            .files
            .get(&req.file)
            .is_some_and(|f| !f.oplock_holders.is_empty());
        let stat_opens = self.files.get(&req.file).map_or(0, |f| f.stat_opens);
        let open_count = open_count.saturating_sub(stat_opens);
        let mut oplock = LeaseState::NONE;
        let mut lease = None;
        let grant = match req.oplock {
            OplockRequest::None => OplockGrant::None,
            OplockRequest::Oplock(level) => {
                // Directories get no oplocks. Exclusive/Batch only for the sole open; otherwise
                // Level II (what Windows grants the second opener) unless someone still
                // caches writes, or the file has byte-range locks (Windows grants no Level II
                // then, KB 306981; Samba does the same).
                let granted = match level {
                    _ if req.directory || other_lease_has_handle => OplockLevel::None,
                    OplockLevel::None => OplockLevel::None,
                    OplockLevel::Exclusive | OplockLevel::Batch if open_count == 0 => level,
                    _ if others_hold_write || has_locks => OplockLevel::None,
                    _ => OplockLevel::LevelII,
                };
                oplock = oplock_state(granted);
                if granted == OplockLevel::None {
                    OplockGrant::None
                } else {
                    OplockGrant::Oplock(granted)
                }
            }
            OplockRequest::Lease(l) => {
                let id = (req.client_guid, l.key);
                let mut requested = if l.state.is_valid() {
                    l.state
                } else {
                    LeaseState::NONE
                };
                if req.directory {
                    // MS-SMB2 3.3.5.9.11: directory leases are at most RH.
                    requested = requested.intersection(LeaseState::RH);
                }
                let same_key_opens = self.leases.get(&id).map_or(0, |r| r.opens.len());
                let mut allowed = LeaseState::RWH;
                if open_count > same_key_opens {
                    allowed = without(allowed, LeaseState::WRITE);
                }
                if others_hold_write {
                    allowed = LeaseState::NONE;
                }
                if other_oplocks {
                    allowed = without(allowed, LeaseState::HANDLE);
                }
                if has_locks {
                    allowed = without(allowed, LeaseState::READ);
                }
                let mut granted = requested.intersection(allowed);
                // Only R, RH, RW and RWH make sense; anything without R is no lease at all.
                if !granted.contains(LeaseState::READ) {
                    granted = LeaseState::NONE;
                }
                let rec = self.leases.entry(id).or_insert_with(|| LeaseRec {
                    file: req.file,
                    state: granted,
                    // MS-SMB2 3.3.5.9.11: a new v2 lease starts one past the client's epoch.
                    epoch: l.epoch.map(|e| e.wrapping_add(1)),
                    parent_key: l.parent_key,
                    opens: Vec::new(),
                    breaking: None,
                });
                let new_lease = rec.opens.is_empty();
                // An existing lease is upgraded only if the request covers its current state
                // and no break is in progress (MS-SMB2 3.3.5.9.8); otherwise it is unchanged.
                // Samba upgrades only when everything asked for can be granted.
                if !new_lease
                    && rec.breaking.is_none()
                    && requested.contains(rec.state)
                    && granted == requested
                    && granted != rec.state
                {
                    rec.state = granted;
                    rec.epoch = rec.epoch.map(|e| e.wrapping_add(1));
                }
                rec.opens.push(open_id);
                let grant = Self::lease_grant(id, rec);
                lease = Some(id);
                if new_lease {
                    if let Some(file) = self.files.get_mut(&req.file) {
                        file.leases.push(id);
                    }
                }
                grant
            }
        };
        let Some(file) = self.files.get_mut(&req.file) else {
            // Unreachable: the entry was created above and nothing removed it since.
            return Attempt::Done(Reply::Done(Status::Unsuccessful));
        };
        file.open_count += 1;
        let plain_stat = is_lease_stat_open(req.access) && req.oplock == OplockRequest::None;
        if plain_stat {
            file.stat_opens += 1;
        }
        file.counters.add(req.access, req.share);
        if oplock != LeaseState::NONE {
            file.oplock_holders.push(open_id);
        }
        let denies_base_delete = req
            .stream_base
            .filter(|_| ShareCounters::delete_usage_of(req.access, req.share).0 > 0);
        let link = file.links.attach(Self::own_link(req));
        if let Some(base) = denies_base_delete {
            let b = self.files.entry(base).or_default();
            b.streams_denying_delete = b.streams_denying_delete.saturating_add(1);
        }
        let base_link = req.stream_base.map(|base| {
            (
                base,
                self.files.entry(base).or_default().links.attach(req.link),
            )
        });
        self.opens.insert(
            open_id,
            OpenState {
                session,
                file: req.file,
                access: req.access,
                share: req.share,
                delete_on_close: req.delete_on_close,
                directory: req.directory,
                lease,
                oplock,
                oplock_break: None,
                locks: Vec::new(),
                live_locks: 0,
                plain_stat,
                denies_base_delete,
                link,
                base_link,
                io_grant: false,
            },
        );
        if let Some(s) = self.sessions.get_mut(&session) {
            s.opens.insert(open_id);
        }
        self.stats.opens_total += 1;
        Attempt::Done(Reply::Opened {
            open: open_id,
            grant,
        })
    }

    /// Retry the deferred creates of a file whose awaited breaks are all resolved, in FIFO order.
    fn run_deferred(&mut self, now: Time, f: FileId) {
        if self.io_recall_pending(f) {
            // Retried when the recall completes (`after_recall`).
            return;
        }
        self.run_rename_waiters(now, f);
        let queue = match self.files.get_mut(&f) {
            Some(file) if !file.deferred.is_empty() => std::mem::take(&mut file.deferred),
            _ => return,
        };
        let mut keep = VecDeque::new();
        let mut queue = queue.into_iter().peekable();
        while let Some(d) = queue.next() {
            if d.waiting.iter().any(|h| self.holder_breaking(*h)) {
                keep.push_back(d);
                continue;
            }
            match self.try_open(now, d.session, &d.req, false) {
                Attempt::Done(reply) => {
                    let reply = self.attach_durable(reply, &d.req, d.durable);
                    // Creates still deferred (kept or not retried yet) rule the grant out.
                    let others = !keep.is_empty() || queue.peek().is_some();
                    let reply = self.attach_io_grant(reply, &d.req, others);
                    self.complete(d.session, d.request, reply)
                }
                Attempt::Wait(waiting) => keep.push_back(DeferredOpen { waiting, ..d }),
            }
        }
        if !keep.is_empty() {
            let file = self.files.entry(f).or_default();
            keep.append(&mut file.deferred);
            file.deferred = keep;
        }
    }

    fn do_close(&mut self, now: Time, session: SessionId, request: RequestId, open: OpenId) {
        if self.owned(session, open).is_none() {
            self.reply(session, request, Reply::Done(Status::InvalidHandle));
            return;
        }
        match self.remove_open(open) {
            Some((f, unlink)) => {
                self.reply(session, request, unlink.reply());
                self.after_release(now, f);
            }
            None => self.reply(session, request, Reply::Done(Status::InvalidHandle)),
        }
    }

    /// Drop an open with its locks, lock waiters and caching. Returns its file and whether it
    /// was the last open of a delete-pending file (MS-FSA 2.1.5.4: then the file is deleted).
    fn remove_open(&mut self, open: OpenId) -> Option<(FileId, Unlink)> {
        let o = self.opens.remove(&open)?;
        self.forget_durable(open, o.file);
        if let Some(s) = self.sessions.get_mut(&o.session) {
            s.opens.remove(&open);
            s.locks = s.locks.saturating_sub(o.live_locks);
        }
        if let Some(base) = o.denies_base_delete {
            if let Some(b) = self.files.get_mut(&base) {
                b.streams_denying_delete = b.streams_denying_delete.saturating_sub(1);
            }
            self.gc_file(base);
        }
        // The last open of a delete-pending file may be one of its named streams (MS-FSA
        // 2.1.5.4): then the file's name goes, and its streams with it.
        let mut base_deleted = None;
        if let Some((base, serial)) = o.base_link {
            if self
                .files
                .get_mut(&base)
                .is_some_and(|b| b.links.detach(serial))
            {
                base_deleted = Some(base);
            }
            self.gc_file(base);
        }
        let f = o.file;
        let Some(file) = self.files.get_mut(&f) else {
            return Some((f, base_deleted.map_or(Unlink::Nothing, Unlink::Base)));
        };
        let mut cancelled = Vec::new();
        file.lock_waiters.retain(|w| {
            if w.open == open {
                cancelled.push((w.session, w.request));
                false
            } else {
                true
            }
        });
        file.io_queued_locks.retain(|q| {
            if q.open == open {
                cancelled.push((q.session, q.request));
                false
            } else {
                true
            }
        });
        if o.io_grant {
            file.io_granted.retain(|x| *x != open);
        }
        if o.live_locks >= 64 && o.live_locks * 4 >= file.locks.len() {
            file.locks.remove_all_of(open);
        } else {
            for r in &o.locks {
                file.locks.remove(*r);
            }
        }
        file.counters.remove(o.access, o.share);
        file.open_count = file.open_count.saturating_sub(1);
        if o.plain_stat {
            file.stat_opens = file.stat_opens.saturating_sub(1);
        }
        if o.delete_on_close {
            file.links.set_deleted(o.link, true);
        }
        // The last open of a delete-pending link: the closing node unlinks that name, and a
        // later create through it finds a fresh file (MS-FSA 2.1.5.4).
        let delete = file.links.detach(o.link);
        match o.lease {
            None => {
                file.oplock_holders.retain(|x| *x != open);
                if let Some(b) = o.oplock_break {
                    self.timers.remove(&(b.deadline, b.seq));
                }
            }
            Some(id) => {
                let mut gone = None;
                if let Some(rec) = self.leases.get_mut(&id) {
                    rec.opens.retain(|x| *x != open);
                    if rec.opens.is_empty() {
                        gone = Some(rec.breaking);
                    }
                }
                if let Some(breaking) = gone {
                    self.leases.remove(&id);
                    file.leases.retain(|x| *x != id);
                    if let Some(b) = breaking {
                        self.timers.remove(&(b.deadline, b.seq));
                    }
                }
            }
        }
        for (s, r) in cancelled {
            self.complete(s, r, Reply::Done(Status::Cancelled));
        }
        let unlink = match (base_deleted, delete) {
            (Some(base), _) => Unlink::Base(base),
            (None, true) => Unlink::Own,
            (None, false) => Unlink::Nothing,
        };
        Some((f, unlink))
    }

    fn do_cancel(&mut self, now: Time, session: SessionId, request: RequestId, target: RequestId) {
        let pending = self
            .sessions
            .get_mut(&session)
            .and_then(|s| s.pending.remove(&target));
        let Some(pending) = pending else {
            self.reply(session, request, Reply::Done(Status::NotFound));
            return;
        };
        self.stats.cancels_total += 1;
        match pending {
            PendingRef::Lock(f) => {
                if let Some(file) = self.files.get_mut(&f) {
                    file.lock_waiters
                        .retain(|w| !(w.session == session && w.request == target));
                }
                self.complete(session, target, Reply::Done(Status::Cancelled));
                self.reply(session, request, Reply::Done(Status::Success));
                // A cancelled waiter no longer holds back younger overlapping waiters.
                self.after_release(now, f);
            }
            PendingRef::Open(f) => {
                if let Some(file) = self.files.get_mut(&f) {
                    file.deferred
                        .retain(|d| !(d.session == session && d.request == target));
                }
                self.complete(session, target, Reply::Done(Status::Cancelled));
                self.reply(session, request, Reply::Done(Status::Success));
                self.gc_file(f);
            }
            PendingRef::Rename(f) => {
                if let Some(file) = self.files.get_mut(&f) {
                    file.rename_waiters
                        .retain(|w| !(w.session == session && w.request == target));
                }
                self.complete(session, target, Reply::Done(Status::Cancelled));
                self.reply(session, request, Reply::Done(Status::Success));
                self.gc_file(f);
            }
            PendingRef::QueuedLock(f) => {
                if let Some(file) = self.files.get_mut(&f) {
                    file.io_queued_locks
                        .retain(|q| !(q.session == session && q.request == target));
                }
                self.complete(session, target, Reply::Done(Status::Cancelled));
                self.reply(session, request, Reply::Done(Status::Success));
                self.gc_file(f);
            }
        }
    }

    // ----- renames ---------------------------------------------------------------------------

    /// MS-FSA 2.1.4.12 for SET_INFORMATION FileRenameInformation and FileDispositionInformation
    /// (delete): before a file is renamed or made delete-pending through `open` (or a
    /// delete-on-close handle is closed), every other open loses handle caching, and the
    /// operation waits for those breaks (Windows; Samba 4.22's delay_for_handle_lease_break;
    /// smbtorture lease.rename_wait, v2_rename, lease.unlink). This holds whatever `open`
    /// caches itself, a lease, an oplock or nothing: Linux cifs and Explorer rename and delete
    /// through plain handles, and a client caching a handle its application already closed
    /// must let go before the name can go. Leases drop H (RH -> R, RWH -> RW); a batch oplock,
    /// which has no state with write but without handle caching, breaks to none. `open`'s own
    /// lease and oplock are spared. Disconnected durable holders are purged rather than broken.
    fn do_break_for_rename(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        close: bool,
    ) {
        let Some((f, own)) = self.owned(session, open).map(|o| (o.file, o.lease)) else {
            self.reply(session, request, Reply::Done(Status::InvalidHandle));
            return;
        };
        // A lease broken here may acknowledge less than it is asked for, down to R, which a
        // write through an I/O grant would not break: the grants go first.
        let breaks_handle = self
            .holders(f, Some(open), own)
            .into_iter()
            .any(|h| self.holder_state(h).contains(LeaseState::HANDLE));
        if breaks_handle {
            self.recall_io(f);
        }
        let mut waiting = Vec::new();
        for h in self.holders(f, Some(open), own) {
            let cur = self.holder_state(h);
            if !cur.contains(LeaseState::HANDLE) {
                continue;
            }
            let to = match h {
                Holder::Lease(_) => without(cur, LeaseState::HANDLE),
                Holder::Oplock(_) => LeaseState::NONE,
            };
            if self.holder_breaking(h) {
                self.tighten_break(h, to);
            } else {
                self.send_break(now, h, to, true);
            }
            // A disconnected holder was purged instead of broken: nothing to wait for.
            if self.holder_breaking(h) {
                waiting.push(h);
            }
        }
        if waiting.is_empty() && !self.io_recall_pending(f) {
            if close {
                self.do_close(now, session, request, open);
            } else {
                self.reply(session, request, Reply::Done(Status::Success));
            }
            return;
        }
        self.files
            .entry(f)
            .or_default()
            .rename_waiters
            .push(RenameWaiter {
                session,
                request,
                close: close.then_some(open),
                waiting,
            });
        if let Some(s) = self.sessions.get_mut(&session) {
            s.pending.insert(request, PendingRef::Rename(f));
        }
        self.reply(session, request, Reply::Pending);
    }

    /// The other opens of `file` (see [`Request::QueryUsage`]). Any session may ask: the
    /// answer names no opens, only counts.
    fn file_usage(&self, file: FileId, except: Option<OpenId>) -> FileUsage {
        let Some(f) = self.files.get(&file) else {
            return FileUsage::default();
        };
        let (mut deny_delete, mut delete_access) = f.counters.delete_usage();
        let mut opens = u32::try_from(f.open_count).unwrap_or(u32::MAX);
        // Disconnected durable opens do not stand in the way of replacing the file (their
        // client would find a different file on reconnect and be refused).
        let disconnected = self.disconnected_opens_of(file);
        opens = opens.saturating_sub(u32::try_from(disconnected).unwrap_or(u32::MAX));
        if let Some(o) = except
            .and_then(|e| self.opens.get(&e))
            .filter(|o| o.file == file)
        {
            let (d, del) = ShareCounters::delete_usage_of(o.access, o.share);
            opens = opens.saturating_sub(1);
            deny_delete = deny_delete.saturating_sub(d);
            delete_access = delete_access.saturating_sub(del);
        }
        let except_deleted = except
            .and_then(|e| self.opens.get(&e))
            .filter(|o| o.file == file)
            .is_some_and(|o| f.links.serial_deleted(o.link));
        FileUsage {
            opens,
            deny_delete,
            delete_access,
            deleted_links: f.links.deleted_count(),
            except_deleted,
        }
    }

    /// Complete the renames whose awaited lease breaks have all been acknowledged (or timed
    /// out, or whose leases went away).
    fn run_rename_waiters(&mut self, now: Time, f: FileId) {
        let waiters = match self.files.get_mut(&f) {
            Some(file) if !file.rename_waiters.is_empty() => {
                std::mem::take(&mut file.rename_waiters)
            }
            _ => return,
        };
        let mut keep = Vec::new();
        let mut closed = false;
        for w in waiters {
            if w.waiting.iter().any(|h| self.holder_breaking(*h)) {
                keep.push(w);
                continue;
            }
            let reply = match w.close {
                None => Reply::Done(Status::Success),
                Some(open) if self.owned(w.session, open).is_some() => {
                    closed = true;
                    let unlink = self.remove_open(open).map_or(Unlink::Nothing, |(_, u)| u);
                    unlink.reply()
                }
                Some(_) => Reply::Done(Status::InvalidHandle),
            };
            self.complete(w.session, w.request, reply);
        }
        if let Some(file) = self.files.get_mut(&f) {
            keep.append(&mut file.rename_waiters);
            file.rename_waiters = keep;
        }
        if closed {
            // What the closed opens held (locks, share modes) is released: the waiters for
            // it go on (the deferred creates follow in `run_deferred`).
            self.run_queued_locks(now, f);
            self.process_lock_waiters(now, f);
        }
    }

    // ----- acks ------------------------------------------------------------------------------

    fn do_oplock_ack(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        level: OplockLevel,
    ) {
        if self.owned(session, open).is_none() {
            self.reply(session, request, Reply::Done(Status::InvalidHandle));
            return;
        }
        let Some(o) = self.opens.get_mut(&open) else {
            self.reply(session, request, Reply::Done(Status::InvalidHandle));
            return;
        };
        let Some(b) = o.oplock_break else {
            // MS-SMB2 3.3.5.22.1: an ack when no break is in progress.
            self.reply(session, request, Reply::Done(Status::InvalidOplockProtocol));
            return;
        };
        let mut acked = oplock_state(level);
        // MS-SMB2 3.3.5.22.1: an acknowledged level above the level broken to completes the
        // break to NONE and fails the acknowledgment with STATUS_INVALID_OPLOCK_PROTOCOL (the
        // break must not stay outstanding, or later creates wait out the break timeout).
        let above = !b.to.contains(acked);
        if above {
            acked = LeaseState::NONE;
        }
        o.oplock_break = None;
        o.oplock = acked;
        let f = o.file;
        self.timers.remove(&(b.deadline, b.seq));
        if acked == LeaseState::NONE {
            if let Some(file) = self.files.get_mut(&f) {
                file.oplock_holders.retain(|x| *x != open);
            }
        }
        self.stats.breaks_acked_total += 1;
        if above {
            self.reply(session, request, Reply::Done(Status::InvalidOplockProtocol));
        } else {
            let grant = if level == OplockLevel::None {
                OplockGrant::None
            } else {
                OplockGrant::Oplock(level)
            };
            self.reply(session, request, Reply::Acked { grant });
        }
        self.run_deferred(now, f);
    }

    fn do_lease_ack(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        id: LeaseId,
        state: LeaseState,
    ) {
        // MS-SMB2 3.3.5.22.2 finds the lease by (Connection.ClientGuid, LeaseKey) alone: a
        // client may acknowledge on any of its connections, i.e. from another lock session
        // than the one holding the lease's opens (smbtorture lease.v2_complex2). The client
        // guid is the one the caller negotiated with, so this reaches only that client's
        // leases.
        let Some(rec) = self.leases.get_mut(&id) else {
            self.reply(session, request, Reply::Done(Status::NotFound));
            return;
        };
        let Some(b) = rec.breaking else {
            self.reply(session, request, Reply::Done(Status::Unsuccessful));
            return;
        };
        // MS-SMB2 3.3.5.22.2: the acknowledged state must be within the state broken to.
        if !b.to.contains(state) {
            self.reply(session, request, Reply::Done(Status::RequestNotAccepted));
            return;
        }
        self.timers.remove(&(b.deadline, b.seq));
        rec.breaking = None;
        rec.state = state;
        let f = rec.file;
        let grant = Self::lease_grant(id, rec);
        self.stats.breaks_acked_total += 1;
        self.reply(session, request, Reply::Acked { grant });
        // Opens that arrived during the break may need less than the client kept: break
        // again, one step at a time as Windows does (W/H first, keeping R; smbtorture
        // lease.breaking3, v2_breaking3). The follow-up carries the epoch of the break it
        // continues: it is still the same Breaking period (MS-SMB2 3.3.4.7 bumps the epoch
        // when a break starts).
        if without(state, b.required) != LeaseState::NONE {
            let mut next = b.required;
            if state.intersection(LeaseState::WRITE.union(LeaseState::HANDLE)) != LeaseState::NONE {
                next = next.union(LeaseState::READ);
            }
            self.continue_lease_break(now, id, next, b.required);
        }
        self.run_deferred(now, f);
    }

    /// A follow-up break of a lease whose previous break was just acknowledged with more
    /// than the opens waiting since then allow. Like any break it needs an ack unless the
    /// lease only caches reads (MS-SMB2 3.3.4.7). `required` stays what the waiting opens
    /// need, so an ack of `to` that keeps R can be followed by the last step to none.
    fn continue_lease_break(
        &mut self,
        now: Time,
        id: LeaseId,
        to: LeaseState,
        required: LeaseState,
    ) {
        let Some(current) = self.leases.get(&id).map(|rec| rec.state) else {
            return;
        };
        let ack =
            current.intersection(LeaseState::WRITE.union(LeaseState::HANDLE)) != LeaseState::NONE;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.breaks_sent_total += 1;
        self.send_lease_break(now, id, to, required, ack, false, seq);
    }

    // ----- byte-range locks ------------------------------------------------------------------

    fn do_lock(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        ranges: &[LockRange],
        fail_immediately: bool,
    ) {
        let Some((f, directory)) = self.owned(session, open).map(|o| (o.file, o.directory)) else {
            self.reply(session, request, Reply::Done(Status::InvalidHandle));
            return;
        };
        // MS-FSA 2.1.5.8: no byte-range locks on directories. MS-SMB2 3.3.5.14: a request that
        // may wait must carry exactly one element.
        if directory || ranges.is_empty() || (!fail_immediately && ranges.len() != 1) {
            self.reply(session, request, Reply::Done(Status::InvalidParameter));
            return;
        }
        if ranges.iter().any(|r| !range_is_valid(r.offset, r.length)) {
            self.reply(session, request, Reply::Done(Status::InvalidLockRange));
            return;
        }
        self.drop_own_io_grants(session, f);
        if self.io_recall_blocks_lock(f) {
            self.queue_lock_for_recall(session, request, open, f, ranges, fail_immediately);
            return;
        }
        let outcome =
            self.lock_granted_or_waiting(now, session, request, open, f, ranges, fail_immediately);
        self.reply(session, request, outcome);
    }

    /// The lock request after its parameters were checked: granted, refused, or queued as a
    /// waiter (`Pending`). Used by `do_lock` and by locks that waited for an I/O recall.
    #[allow(clippy::too_many_arguments)]
    fn lock_granted_or_waiting(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        f: FileId,
        ranges: &[LockRange],
        fail_immediately: bool,
    ) -> Reply {
        let limits = self.config.limits;
        // One session lookup for both limits (this is the hot path of every lock request).
        let (may_wait, over_limit) = self.sessions.get(&session).map_or((false, false), |s| {
            (
                s.pending.len() < limits.max_waiters,
                s.locks.saturating_add(ranges.len()) > limits.max_locks,
            )
        });
        if over_limit {
            return Reply::Done(Status::InsufficientResources);
        }
        let holders = match self.files.get(&f) {
            Some(file) => file.has_holders(),
            None => return Reply::Done(Status::InvalidHandle),
        };
        if holders {
            self.break_read_holders(now, f, open);
        }
        let Some(file) = self.files.get_mut(&f) else {
            return Reply::Done(Status::InvalidHandle);
        };
        let mut granted = std::mem::take(&mut self.scratch);
        granted.clear();
        let mut outcome = Reply::Done(Status::Success);
        for r in ranges {
            let span = Span::of(r.offset, r.length);
            // MS-FSA 2.1.5.7: a new request is checked against granted locks only; waiting
            // requests do not stand in its way (Windows grants it, Samba too since 4.22).
            let blocked = file.locks.conflicts(span, open, r.exclusive, true);
            if !blocked {
                granted.push(file.locks.insert(r.offset, r.length, r.exclusive, open));
                continue;
            }
            self.stats.lock_conflicts_total += 1;
            if fail_immediately || !may_wait {
                for g in granted.drain(..) {
                    file.locks.remove(g);
                }
                outcome = Reply::Done(if fail_immediately {
                    Status::LockNotGranted
                } else {
                    Status::InsufficientResources
                });
            } else {
                file.lock_waiters.push_back(LockWaiter {
                    session,
                    request,
                    open,
                    offset: r.offset,
                    length: r.length,
                    exclusive: r.exclusive,
                });
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.pending.insert(request, PendingRef::Lock(f));
                }
                outcome = Reply::Pending;
            }
            break;
        }
        self.stats.locks_granted_total += granted.len() as u64;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.locks += granted.len();
        }
        if let Some(o) = self.opens.get_mut(&open) {
            o.live_locks += granted.len();
            o.locks.append(&mut granted);
        }
        self.scratch = granted;
        outcome
    }

    fn do_unlock(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        ranges: &[LockRange],
    ) {
        // One lookup for the open (what `owned` checks) and one for its file; the open and
        // file tables are separate fields, so both can be borrowed at once.
        let Some(o) = self.opens.get_mut(&open).filter(|o| o.session == session) else {
            self.reply(session, request, Reply::Done(Status::InvalidHandle));
            return;
        };
        if ranges.is_empty() {
            self.reply(session, request, Reply::Done(Status::InvalidParameter));
            return;
        }
        let f = o.file;
        let Some(file) = self.files.get_mut(&f) else {
            self.reply(session, request, Reply::Done(Status::InvalidHandle));
            return;
        };
        // MS-SMB2 3.3.5.14.1: unlocks apply in order; the first failure ends the request
        // without restoring the ones already released.
        let mut status = Status::Success;
        let mut count = 0;
        for r in ranges {
            if !range_is_valid(r.offset, r.length) {
                status = Status::InvalidLockRange;
                break;
            }
            match file.locks.find_exact(r.offset, r.length, open) {
                Some(lr) => {
                    file.locks.remove(lr);
                    o.live_locks = o.live_locks.saturating_sub(1);
                    count += 1;
                }
                None => {
                    status = Status::RangeNotLocked;
                    break;
                }
            }
        }
        if o.live_locks == 0 {
            // Every handle left is stale: dropping them needs no lookups.
            o.locks.clear();
        } else if o.locks.len() > 2 * o.live_locks + 256 {
            // Compaction looks up every handle: with enough slack that an open whose locks
            // come and go in batches (up to ~256 at a time) empties its list by the `clear`
            // above instead, and a compaction's cost is spread over at least 256 unlocks.
            o.locks.retain(|r| file.locks.contains(*r));
        }
        // Waiters can only be granted when something was released.
        let wake_waiters = count > 0 && !file.lock_waiters.is_empty();
        if count > 0 {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.locks = s.locks.saturating_sub(count);
            }
        }
        self.reply(session, request, Reply::Done(status));
        if wake_waiters {
            self.process_lock_waiters(now, f);
        }
    }

    /// Grant every waiter, in FIFO order, that no granted lock blocks (MS-FSA 2.1.5.7; the
    /// locks granted to earlier waiters in this pass count). One pass suffices: granting only
    /// adds locks, which cannot unblock an earlier waiter.
    fn process_lock_waiters(&mut self, now: Time, f: FileId) {
        let Some(file) = self.files.get_mut(&f) else {
            return;
        };
        if file.lock_waiters.is_empty() {
            return;
        }
        let mut granted = Vec::new();
        let mut i = 0;
        while i < file.lock_waiters.len() {
            let w = &file.lock_waiters[i];
            let span = Span::of(w.offset, w.length);
            let blocked = file.locks.conflicts(span, w.open, w.exclusive, true);
            if blocked {
                i += 1;
                continue;
            }
            if let Some(w) = file.lock_waiters.remove(i) {
                let r = file.locks.insert(w.offset, w.length, w.exclusive, w.open);
                granted.push((w, r));
            }
        }
        for (w, r) in granted {
            if let Some(o) = self.opens.get_mut(&w.open) {
                o.locks.push(r);
                o.live_locks += 1;
            }
            if let Some(s) = self.sessions.get_mut(&w.session) {
                s.locks += 1;
            }
            self.stats.locks_granted_total += 1;
            self.complete(w.session, w.request, Reply::Done(Status::Success));
            self.break_read_holders(now, f, w.open);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn do_check_io(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        offset: u64,
        length: u64,
        write: bool,
        grant: bool,
    ) {
        let Some(f) = self.owned(session, open).map(|o| o.file) else {
            self.reply(session, request, Reply::Done(Status::InvalidHandle));
            return;
        };
        if !range_is_valid(offset, length) {
            self.reply(session, request, Reply::Done(Status::InvalidParameter));
            return;
        }
        if write {
            self.break_read_holders(now, f, open);
        }
        // MS-FSA 2.1.4.10 with LockIntent FALSE and IsExclusive = write.
        let conflict = self.files.get(&f).is_some_and(|file| {
            file.locks
                .conflicts(Span::of(offset, length), open, write, false)
        });
        let reply = if conflict {
            Reply::Done(Status::FileLockConflict)
        } else if grant {
            self.try_grant_io(f, open)
        } else {
            Reply::Done(Status::Success)
        };
        self.reply(session, request, reply);
    }
}
