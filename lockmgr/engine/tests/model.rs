//! Random operations from several sessions, checked against a small Vec-based reference model.
//!
//! The model predicts byte-range lock outcomes exactly (grants, conflicts, FIFO waiters,
//! rollback, unlock matching, I/O checks, cancels) and checks invariants for the parts that
//! depend on oplock/lease timing: no two granted opens conflict in share mode, write caching is
//! exclusive, every deferred create waits on a break in flight, every request gets exactly one
//! reply and every Pending exactly one completion, and ending a session releases everything.

use std::collections::{BTreeMap, BTreeSet};

use lockmgr_engine::*;
use proptest::prelude::*;

const SESSIONS: u64 = 3;
const FILES: [FileId; 2] = [FileId(10), FileId(20)];
const ACCESSES: [u32; 5] = [
    access::FILE_READ_DATA,
    access::FILE_WRITE_DATA,
    access::FILE_READ_DATA | access::FILE_WRITE_DATA,
    access::DELETE,
    access::FILE_READ_ATTRIBUTES,
];
const SHARES: [u32; 4] = [
    0,
    share::READ,
    share::READ | share::WRITE,
    share::READ | share::WRITE | share::DELETE,
];
const OFFSETS: [u64; 6] = [0, 1, 3, 5, 8, u64::MAX - 1];
const LENGTHS: [u64; 5] = [0, 1, 2, 5, u64::MAX];

#[derive(Clone, Debug)]
enum Op {
    Open {
        s: u64,
        file: usize,
        access: usize,
        share: usize,
        caching: u8,
        key: u8,
        doc: bool,
    },
    SetDelete {
        s: u64,
        open: usize,
        delete: bool,
    },
    Close {
        s: u64,
        open: usize,
    },
    Lock {
        s: u64,
        open: usize,
        off: usize,
        len: usize,
        excl: bool,
        fail: bool,
    },
    Lock2 {
        s: u64,
        open: usize,
        a: (usize, usize, bool),
        b: (usize, usize, bool),
    },
    Unlock {
        s: u64,
        open: usize,
        off: usize,
        len: usize,
    },
    Io {
        s: u64,
        open: usize,
        off: usize,
        len: usize,
        write: bool,
    },
    Cancel {
        s: u64,
        pending: usize,
    },
    OplockAck {
        s: u64,
        open: usize,
        level: u8,
    },
    LeaseAck {
        s: u64,
        key: u8,
        state: u8,
    },
    /// `BreakForRename`: waits for other leases' handle-caching breaks.
    Rename {
        s: u64,
        open: usize,
    },
    EndSession {
        s: u64,
    },
    Advance {
        secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let s = 1..=SESSIONS;
    prop_oneof![
        4 => (s.clone(), 0..2usize, 0..ACCESSES.len(), 0..SHARES.len(), 0..5u8, 0..2u8, prop::bool::weighted(0.1))
            .prop_map(|(s, file, access, share, caching, key, doc)| Op::Open { s, file, access, share, caching, key, doc }),
        1 => (s.clone(), 0..8usize, prop::bool::weighted(0.7)).prop_map(|(s, open, delete)| Op::SetDelete { s, open, delete }),
        2 => (s.clone(), 0..8usize).prop_map(|(s, open)| Op::Close { s, open }),
        6 => (s.clone(), 0..8usize, 0..OFFSETS.len(), 0..LENGTHS.len(), any::<bool>(), any::<bool>())
            .prop_map(|(s, open, off, len, excl, fail)| Op::Lock { s, open, off, len, excl, fail }),
        1 => (s.clone(), 0..8usize, (0..OFFSETS.len(), 0..LENGTHS.len(), any::<bool>()), (0..OFFSETS.len(), 0..LENGTHS.len(), any::<bool>()))
            .prop_map(|(s, open, a, b)| Op::Lock2 { s, open, a, b }),
        3 => (s.clone(), 0..8usize, 0..OFFSETS.len(), 0..LENGTHS.len())
            .prop_map(|(s, open, off, len)| Op::Unlock { s, open, off, len }),
        2 => (s.clone(), 0..8usize, 0..OFFSETS.len(), 0..LENGTHS.len(), any::<bool>())
            .prop_map(|(s, open, off, len, write)| Op::Io { s, open, off, len, write }),
        2 => (s.clone(), 0..4usize).prop_map(|(s, pending)| Op::Cancel { s, pending }),
        1 => (s.clone(), 0..8usize, 0..3u8).prop_map(|(s, open, level)| Op::OplockAck { s, open, level }),
        1 => (s.clone(), 0..2u8, 0..3u8).prop_map(|(s, key, state)| Op::LeaseAck { s, key, state }),
        1 => (s.clone(), 0..8usize).prop_map(|(s, open)| Op::Rename { s, open }),
        1 => s.prop_map(|s| Op::EndSession { s }),
        1 => (0..40u64).prop_map(|secs| Op::Advance { secs }),
    ]
}

// ----- the reference model ------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct MLock {
    file: FileId,
    open: OpenId,
    off: u64,
    len: u64,
    excl: bool,
}

#[derive(Clone, Debug)]
struct MWaiter {
    session: SessionId,
    request: RequestId,
    lock: MLock,
}

#[derive(Clone, Debug)]
struct MOpen {
    id: OpenId,
    session: SessionId,
    file: FileId,
    access: u32,
    share: u32,
    doc: bool,
}

/// A create the engine answered Pending: (session, request, file, access, share, doc).
type PendingOpen = (SessionId, RequestId, FileId, u32, u32, bool);

#[derive(Default)]
struct Model {
    opens: Vec<MOpen>,
    /// Every open a session ever got, so ops can also aim at closed ones.
    handles: BTreeMap<SessionId, Vec<OpenId>>,
    locks: Vec<MLock>,
    waiters: Vec<MWaiter>,
    pending_opens: Vec<PendingOpen>,
    /// File.DeletePending (MS-FSA 2.1.5.4, 2.1.5.14.3).
    delete_pending: BTreeSet<FileId>,
    /// Files whose last open vanished with a session while delete-pending.
    orphans: BTreeSet<FileId>,
}

/// MS-FSA 2.1.4.10, written out on i128 so nothing wraps.
fn m_overlap(a_off: u64, a_len: u64, b_off: u64, b_len: u64) -> bool {
    if (a_off == 0 && a_len == 0) || (b_off == 0 && b_len == 0) {
        return false;
    }
    let (a1, a2) = (a_off as i128, a_off as i128 + a_len as i128 - 1);
    let (b1, b2) = (b_off as i128, b_off as i128 + b_len as i128 - 1);
    a1 <= b2 && a2 >= b1
}

fn m_blocks(held: &MLock, open: OpenId, off: u64, len: u64, excl: bool, lock_intent: bool) -> bool {
    if !m_overlap(held.off, held.len, off, len) {
        return false;
    }
    if held.excl {
        held.open != open || (excl && lock_intent)
    } else {
        excl
    }
}

fn m_valid(off: u64, len: u64) -> bool {
    len == 0 || off as u128 + len as u128 - 1 <= u64::MAX as u128
}

fn m_share_conflict(a_acc: u32, a_sh: u32, b_acc: u32, b_sh: u32) -> bool {
    let data = access::FILE_READ_DATA
        | access::FILE_WRITE_DATA
        | access::FILE_APPEND_DATA
        | access::FILE_EXECUTE
        | access::DELETE;
    if a_acc & data == 0 || b_acc & data == 0 {
        return false;
    }
    let reads = |acc: u32| acc & (access::FILE_READ_DATA | access::FILE_EXECUTE) != 0;
    let writes = |acc: u32| acc & (access::FILE_WRITE_DATA | access::FILE_APPEND_DATA) != 0;
    let deletes = |acc: u32| acc & access::DELETE != 0;
    let denied = |acc: u32, sh: u32| {
        (reads(acc) && sh & share::READ == 0)
            || (writes(acc) && sh & share::WRITE == 0)
            || (deletes(acc) && sh & share::DELETE == 0)
    };
    denied(a_acc, b_sh) || denied(b_acc, a_sh)
}

impl Model {
    fn open_of(&self, s: SessionId, id: OpenId) -> Option<&MOpen> {
        self.opens.iter().find(|o| o.id == id && o.session == s)
    }

    /// MS-FSA 2.1.5.7: only granted locks block a request; waiting ones do not.
    fn lock_blocked(&self, l: &MLock) -> bool {
        self.locks
            .iter()
            .filter(|h| h.file == l.file)
            .any(|h| m_blocks(h, l.open, l.off, l.len, l.excl, true))
    }

    /// Grants every grantable waiter in FIFO order; returns their (session, request).
    fn grant_waiters(&mut self) -> Vec<(SessionId, RequestId)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.waiters.len() {
            if self.lock_blocked(&self.waiters[i].lock.clone()) {
                i += 1;
            } else {
                let w = self.waiters.remove(i);
                self.locks.push(w.lock);
                out.push((w.session, w.request));
            }
        }
        out
    }

    fn doomed(&self, f: FileId) -> bool {
        self.delete_pending.contains(&f) || self.orphans.contains(&f)
    }

    /// MS-FSA 2.1.5.4: closing a delete-on-close open sets DeletePending; the last close of
    /// a delete-pending file deletes it. Returns whether this close deletes the file.
    fn close_deletes(&mut self, id: OpenId) -> bool {
        let Some(o) = self.opens.iter().find(|o| o.id == id).cloned() else {
            return false;
        };
        if o.doc {
            self.delete_pending.insert(o.file);
        }
        let last = !self.opens.iter().any(|x| x.file == o.file && x.id != id);
        last && self.delete_pending.remove(&o.file)
    }

    /// Removes an open, its locks and waiters; returns the cancelled waiters.
    fn close(&mut self, id: OpenId) -> Vec<(SessionId, RequestId)> {
        self.opens.retain(|o| o.id != id);
        self.locks.retain(|l| l.open != id);
        let cancelled = self
            .waiters
            .iter()
            .filter(|w| w.lock.open == id)
            .map(|w| (w.session, w.request))
            .collect();
        self.waiters.retain(|w| w.lock.open != id);
        cancelled
    }
}

// ----- the harness --------------------------------------------------------------------------

struct Run {
    e: Engine,
    m: Model,
    now: Time,
    next_req: u64,
    /// Requests answered Pending and not completed yet.
    pending: BTreeSet<(SessionId, RequestId)>,
    /// Completions expected by the model in this step (lock waiters granted or cancelled).
    expected: BTreeMap<(SessionId, RequestId), Reply>,
    /// Renames answered Pending: they complete with Success once the handle-caching breaks
    /// they wait for settle (acked, timed out, or the lease closed).
    renames: BTreeSet<(SessionId, RequestId)>,
}

fn lease_state_of(i: u8) -> LeaseState {
    [LeaseState::READ, LeaseState::RH, LeaseState::RWH][i as usize % 3]
}

impl Run {
    fn new() -> Run {
        let mut e = Engine::new(Config::default());
        for s in 1..=SESSIONS {
            e.open_session(SessionId(s));
        }
        Run {
            e,
            m: Model::default(),
            now: Time::from_secs(1),
            next_req: 0,
            pending: BTreeSet::new(),
            expected: BTreeMap::new(),
            renames: BTreeSet::new(),
        }
    }

    fn handle_of(&self, s: SessionId, i: usize) -> OpenId {
        self.m
            .handles
            .get(&s)
            .filter(|v| !v.is_empty())
            .map_or(OpenId(999_999), |v| v[i % v.len()])
    }

    #[allow(clippy::too_many_arguments)]
    fn record_open(
        &mut self,
        s: SessionId,
        open: OpenId,
        file: FileId,
        access: u32,
        share: u32,
        doc: bool,
    ) {
        assert!(
            !self.m.doomed(file),
            "open granted on a delete-pending file"
        );
        for o in self.m.opens.iter().filter(|o| o.file == file) {
            assert!(
                !m_share_conflict(o.access, o.share, access, share),
                "granted open {open:?} conflicts with {o:?}"
            );
        }
        self.m.opens.push(MOpen {
            id: open,
            session: s,
            file,
            access,
            share,
            doc,
        });
        self.m.handles.entry(s).or_default().push(open);
    }

    fn check_violation(&self, file: FileId, access: u32, share: u32) {
        assert!(
            self.m
                .opens
                .iter()
                .any(|o| o.file == file && m_share_conflict(o.access, o.share, access, share)),
            "sharing violation without a conflicting open"
        );
    }

    /// Drain outputs: exactly one reply to `request` (if any), completions matched to pending.
    fn drain(&mut self, reply_to: Option<(SessionId, RequestId)>) -> Option<Reply> {
        let mut reply = None;
        let mut completions = Vec::new();
        while let Some(o) = self.e.poll_output() {
            match o {
                Output::Reply {
                    session,
                    request,
                    reply: r,
                } => {
                    assert_eq!(Some((session, request)), reply_to, "unexpected reply {r:?}");
                    assert!(reply.is_none(), "two replies for one request");
                    reply = Some(r);
                }
                Output::Notify {
                    session,
                    notification: Notification::Completed { request, reply },
                } => {
                    completions.push((session, request, reply));
                }
                Output::Notify { .. } => {}
            }
        }
        if let Some(r) = &reply {
            if *r == Reply::Pending {
                let (s, id) = reply_to.unwrap_or_default();
                self.pending.insert((s, id));
            }
        }
        for (session, request, r) in completions {
            // A request may be answered Pending and completed within the same step only if
            // its reply came first, which `drain` cannot see in order; accept both orders.
            if reply_to == Some((session, request)) && reply == Some(Reply::Pending) {
                self.pending.insert((session, request));
            }
            assert!(
                self.pending.remove(&(session, request)),
                "completion without pending: {request:?} {r:?}"
            );
            if self.renames.remove(&(session, request)) {
                assert_eq!(r, Reply::Done(Status::Success), "rename completion");
                continue;
            }
            if let Some(exp) = self.expected.remove(&(session, request)) {
                assert_eq!(r, exp, "lock waiter completion");
                continue;
            }
            // Not a lock waiter the model expected: must be a deferred open.
            let pos = self
                .m
                .pending_opens
                .iter()
                .position(|p| p.0 == session && p.1 == request);
            let Some(pos) = pos else {
                panic!("unexpected completion {request:?} {r:?}");
            };
            let (s, _, file, access, share, doc) = self.m.pending_opens.remove(pos);
            match r {
                Reply::Opened { open, .. } => self.record_open(s, open, file, access, share, doc),
                Reply::Done(Status::DeletePending) => assert!(self.m.doomed(file)),
                Reply::Done(Status::SharingViolation) => self.check_violation(file, access, share),
                Reply::Done(Status::Cancelled) => panic!("open cancelled without Cancel"),
                other => panic!("deferred open completed with {other:?}"),
            }
        }
        assert!(
            self.expected.is_empty(),
            "model expected completions: {:?}",
            self.expected
        );
        reply
    }

    fn call(&mut self, s: SessionId, req: Request) -> (RequestId, Reply) {
        self.next_req += 1;
        let id = RequestId(self.next_req);
        self.e.handle(self.now, s, id, req);
        (
            id,
            self.drain(Some((s, id)))
                .unwrap_or(Reply::Done(Status::Unsuccessful)),
        )
    }

    fn expect_grants(&mut self) {
        for (s, r) in self.m.grant_waiters() {
            self.expected.insert((s, r), Reply::Done(Status::Success));
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Open {
                s,
                file,
                access: a,
                share: sh,
                caching,
                key,
                doc,
            } => {
                let s = SessionId(s);
                let file = FILES[file];
                let (access, share) = (ACCESSES[a], SHARES[sh]);
                let mut o = OpenRequest {
                    file,
                    access,
                    share,
                    delete_on_close: doc,
                    ..Default::default()
                };
                o.client_guid = ClientGuid(s.0 as u128);
                o.oplock = match caching {
                    0 => OplockRequest::None,
                    1 => OplockRequest::Oplock(OplockLevel::LevelII),
                    2 => OplockRequest::Oplock(OplockLevel::Batch),
                    c => OplockRequest::Lease(Lease {
                        key: LeaseKey(key as u128 + 100 * file.0),
                        state: lease_state_of(c + key),
                        parent_key: None,
                        epoch: Some(1),
                        breaking: false,
                    }),
                };
                let doomed = self.m.doomed(file);
                let (id, r) = self.call(s, Request::Open(o));
                match r {
                    Reply::Done(Status::DeletePending) => assert!(doomed),
                    _ if doomed => panic!("open of a delete-pending file: {r:?}"),
                    Reply::Opened { open, .. } => {
                        self.record_open(s, open, file, access, share, doc)
                    }
                    Reply::Done(Status::SharingViolation) => {
                        self.check_violation(file, access, share)
                    }
                    Reply::Pending => self.m.pending_opens.push((s, id, file, access, share, doc)),
                    other => panic!("open: {other:?}"),
                }
            }
            Op::SetDelete { s, open, delete } => {
                let s = SessionId(s);
                let h = self.handle_of(s, open);
                let expect = match self.m.open_of(s, h).map(|o| o.file) {
                    Some(f) => {
                        if delete {
                            self.m.delete_pending.insert(f);
                        } else {
                            self.m.delete_pending.remove(&f);
                        }
                        Status::Success
                    }
                    None => Status::InvalidHandle,
                };
                let (_, r) = self.call(s, Request::SetDeletePending { open: h, delete });
                assert_eq!(r, Reply::Done(expect));
            }
            Op::Close { s, open } => {
                let s = SessionId(s);
                let h = self.handle_of(s, open);
                let known = self.m.open_of(s, h).is_some();
                let delete_file = known && self.m.close_deletes(h);
                let cancelled = if known { self.m.close(h) } else { Vec::new() };
                for c in cancelled {
                    self.expected.insert(c, Reply::Done(Status::Cancelled));
                }
                self.expect_grants();
                let (_, r) = self.call(s, Request::Close { open: h });
                if known {
                    assert_eq!(r, Reply::Closed { delete_file });
                } else {
                    assert_eq!(r, Reply::Done(Status::InvalidHandle));
                }
            }
            Op::Lock {
                s,
                open,
                off,
                len,
                excl,
                fail,
            } => {
                let s = SessionId(s);
                let h = self.handle_of(s, open);
                let (off, len) = (OFFSETS[off], LENGTHS[len]);
                let expect = self.model_lock(s, h, &[(off, len, excl)], fail);
                let (id, r) = self.call(
                    s,
                    Request::Lock {
                        open: h,
                        ranges: vec![LockRange {
                            offset: off,
                            length: len,
                            exclusive: excl,
                        }],
                        fail_immediately: fail,
                    },
                );
                assert_eq!(r, expect, "lock {off} {len} {excl} {fail}");
                if r == Reply::Pending {
                    let file = self.m.open_of(s, h).map(|o| o.file).unwrap_or_default();
                    self.m.waiters.push(MWaiter {
                        session: s,
                        request: id,
                        lock: MLock {
                            file,
                            open: h,
                            off,
                            len,
                            excl,
                        },
                    });
                }
            }
            Op::Lock2 { s, open, a, b } => {
                let s = SessionId(s);
                let h = self.handle_of(s, open);
                let ranges = [
                    (OFFSETS[a.0], LENGTHS[a.1], a.2),
                    (OFFSETS[b.0], LENGTHS[b.1], b.2),
                ];
                let expect = self.model_lock(s, h, &ranges, true);
                let (_, r) = self.call(
                    s,
                    Request::Lock {
                        open: h,
                        ranges: ranges
                            .iter()
                            .map(|&(offset, length, exclusive)| LockRange {
                                offset,
                                length,
                                exclusive,
                            })
                            .collect(),
                        fail_immediately: true,
                    },
                );
                assert_eq!(r, expect);
            }
            Op::Unlock { s, open, off, len } => {
                let s = SessionId(s);
                let h = self.handle_of(s, open);
                let (off, len) = (OFFSETS[off], LENGTHS[len]);
                let expect = match self.m.open_of(s, h) {
                    None => Reply::Done(Status::InvalidHandle),
                    Some(_) if !m_valid(off, len) => Reply::Done(Status::InvalidLockRange),
                    Some(_) => {
                        let mut pick = None;
                        for (i, l) in self.m.locks.iter().enumerate() {
                            if l.open == h && l.off == off && l.len == len {
                                pick = Some(i);
                                if l.excl {
                                    break;
                                }
                            }
                        }
                        match pick {
                            Some(i) => {
                                self.m.locks.remove(i);
                                self.expect_grants();
                                Reply::Done(Status::Success)
                            }
                            None => Reply::Done(Status::RangeNotLocked),
                        }
                    }
                };
                let (_, r) = self.call(
                    s,
                    Request::Unlock {
                        open: h,
                        ranges: vec![LockRange {
                            offset: off,
                            length: len,
                            exclusive: false,
                        }],
                    },
                );
                assert_eq!(r, expect);
            }
            Op::Io {
                s,
                open,
                off,
                len,
                write,
            } => {
                let s = SessionId(s);
                let h = self.handle_of(s, open);
                let (off, len) = (OFFSETS[off], LENGTHS[len]);
                let expect = match self.m.open_of(s, h) {
                    None => Status::InvalidHandle,
                    Some(_) if !m_valid(off, len) => Status::InvalidParameter,
                    Some(o) => {
                        let f = o.file;
                        if self
                            .m
                            .locks
                            .iter()
                            .filter(|l| l.file == f)
                            .any(|l| m_blocks(l, h, off, len, write, false))
                        {
                            Status::FileLockConflict
                        } else {
                            Status::Success
                        }
                    }
                };
                let (_, r) = self.call(
                    s,
                    Request::CheckIo {
                        open: h,
                        offset: off,
                        length: len,
                        write,
                    },
                );
                assert_eq!(r, Reply::Done(expect));
            }
            Op::Cancel { s, pending } => {
                let s = SessionId(s);
                let mine: Vec<RequestId> = self
                    .pending
                    .iter()
                    .filter(|p| p.0 == s)
                    .map(|p| p.1)
                    .collect();
                let target = if mine.is_empty() {
                    RequestId(888_888)
                } else {
                    mine[pending % mine.len()]
                };
                let expect = if self.renames.remove(&(s, target)) {
                    self.expected
                        .insert((s, target), Reply::Done(Status::Cancelled));
                    Reply::Done(Status::Success)
                } else if let Some(i) = self
                    .m
                    .waiters
                    .iter()
                    .position(|w| w.session == s && w.request == target)
                {
                    self.m.waiters.remove(i);
                    self.expected
                        .insert((s, target), Reply::Done(Status::Cancelled));
                    self.expect_grants();
                    Reply::Done(Status::Success)
                } else if let Some(i) = self
                    .m
                    .pending_opens
                    .iter()
                    .position(|p| p.0 == s && p.1 == target)
                {
                    self.m.pending_opens.remove(i);
                    self.expected
                        .insert((s, target), Reply::Done(Status::Cancelled));
                    Reply::Done(Status::Success)
                } else {
                    Reply::Done(Status::NotFound)
                };
                let (_, r) = self.call(s, Request::Cancel { request: target });
                assert_eq!(r, expect);
            }
            Op::OplockAck { s, open, level } => {
                let s = SessionId(s);
                let h = self.handle_of(s, open);
                let level =
                    [OplockLevel::None, OplockLevel::LevelII, OplockLevel::Batch][level as usize];
                self.call(s, Request::OplockBreakAck { open: h, level });
            }
            Op::LeaseAck { s, key, state } => {
                let s = SessionId(s);
                for f in FILES {
                    let req = Request::LeaseBreakAck {
                        client_guid: ClientGuid(s.0 as u128),
                        key: LeaseKey(key as u128 + 100 * f.0),
                        state: [LeaseState::NONE, LeaseState::READ, LeaseState::RH][state as usize],
                    };
                    self.call(s, req);
                }
            }
            Op::Rename { s, open } => {
                let s = SessionId(s);
                let h = self.handle_of(s, open);
                let (id, r) = self.call(s, Request::BreakForRename { open: h });
                match r {
                    Reply::Pending => {
                        self.renames.insert((s, id));
                    }
                    Reply::Done(Status::Success) => self.check_no_other_handle_caching(h),
                    Reply::Done(Status::InvalidHandle) => {}
                    other => panic!("rename break: {other:?}"),
                }
            }
            Op::EndSession { s } => {
                let s = SessionId(s);
                self.renames.retain(|p| p.0 != s);
                let mine: Vec<OpenId> = self
                    .m
                    .opens
                    .iter()
                    .filter(|o| o.session == s)
                    .map(|o| o.id)
                    .collect();
                self.m.waiters.retain(|w| w.session != s);
                self.m.pending_opens.retain(|p| p.0 != s);
                self.pending.retain(|p| p.0 != s);
                for id in mine {
                    let f = self.m.opens.iter().find(|o| o.id == id).map(|o| o.file);
                    if self.m.close_deletes(id) {
                        self.m.orphans.extend(f);
                    }
                    self.m.close(id);
                }
                self.expect_grants();
                self.e.end_session(self.now, s);
                self.drain(None);
                let snap = self.e.snapshot();
                assert!(snap.opens.iter().all(|o| o.session != s));
                assert!(snap.lock_waiters.iter().all(|w| w.session != s));
                assert!(snap.deferred_opens.iter().all(|d| d.session != s));
                let orphans: Vec<FileId> = self.m.orphans.iter().copied().collect();
                assert_eq!(snap.orphaned_deletes, orphans);
                self.e.open_session(s);
                self.m.handles.remove(&s);
            }
            Op::Advance { secs } => {
                self.now = self.now.saturating_add(Duration::from_secs(secs));
                self.e.handle_timeout(self.now);
                self.drain(None);
                // The daemon collects orphaned deletions now and then.
                if secs % 2 == 0 {
                    let want: Vec<FileId> =
                        std::mem::take(&mut self.m.orphans).into_iter().collect();
                    assert_eq!(self.e.take_orphaned_deletes(), want);
                }
            }
        }
        self.check_invariants();
    }

    fn model_lock(
        &mut self,
        s: SessionId,
        h: OpenId,
        ranges: &[(u64, u64, bool)],
        fail: bool,
    ) -> Reply {
        let Some(file) = self.m.open_of(s, h).map(|o| o.file) else {
            return Reply::Done(Status::InvalidHandle);
        };
        if !fail && ranges.len() != 1 {
            return Reply::Done(Status::InvalidParameter);
        }
        if ranges.iter().any(|&(o, l, _)| !m_valid(o, l)) {
            return Reply::Done(Status::InvalidLockRange);
        }
        let before = self.m.locks.len();
        for &(off, len, excl) in ranges {
            let l = MLock {
                file,
                open: h,
                off,
                len,
                excl,
            };
            if self.m.lock_blocked(&l) {
                self.m.locks.truncate(before);
                return if fail {
                    Reply::Done(Status::LockNotGranted)
                } else {
                    Reply::Pending
                };
            }
            self.m.locks.push(l);
        }
        Reply::Done(Status::Success)
    }

    /// MS-FSA 2.1.4.12 (rename, delete): a rename or delete through `open` that need not
    /// wait leaves no other open of the file with handle caching, whatever `open` caches
    /// itself; only its own lease may keep H.
    fn check_no_other_handle_caching(&self, open: OpenId) {
        let snap = self.e.snapshot();
        let Some(me) = snap.opens.iter().find(|o| o.open == open) else {
            return;
        };
        let own_key = match me.caching {
            OplockGrant::Lease(l) => Some(l.key),
            _ => None,
        };
        for o in snap
            .opens
            .iter()
            .filter(|o| o.file == me.file && o.open != open)
        {
            let handle = match o.caching {
                OplockGrant::Lease(l) => {
                    Some(l.key) != own_key && l.state.contains(LeaseState::HANDLE)
                }
                OplockGrant::Oplock(level) => level == OplockLevel::Batch,
                OplockGrant::None => false,
            };
            assert!(
                !handle,
                "rename/delete went ahead next to handle caching: {o:?}"
            );
        }
    }

    fn check_invariants(&self) {
        let snap = self.e.snapshot();
        // Locks equal the model's, as multisets.
        let mut got: Vec<MLock> = snap
            .locks
            .iter()
            .map(|l| MLock {
                file: l.file,
                open: l.open,
                off: l.offset,
                len: l.length,
                excl: l.exclusive,
            })
            .collect();
        let mut want = self.m.locks.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "held locks differ from the model");
        // Waiters equal the model's, in FIFO order per file.
        for f in FILES {
            let got: Vec<RequestId> = snap
                .lock_waiters
                .iter()
                .filter(|w| w.file == f)
                .map(|w| w.request)
                .collect();
            let want: Vec<RequestId> = self
                .m
                .waiters
                .iter()
                .filter(|w| w.lock.file == f)
                .map(|w| w.request)
                .collect();
            assert_eq!(got, want, "waiters differ from the model");
        }
        // No two held locks conflict: an exclusive lock overlaps nothing of another open and no
        // other exclusive lock.
        for (i, a) in got.iter().enumerate() {
            for b in &got[i + 1..] {
                if a.file == b.file && m_overlap(a.off, a.len, b.off, b.len) && (a.excl || b.excl) {
                    assert!(
                        a.open == b.open && !(a.excl && b.excl),
                        "conflicting locks {a:?} {b:?}"
                    );
                }
            }
        }
        // Opens equal the model's; share modes hold pairwise.
        let got: BTreeSet<OpenId> = snap.opens.iter().map(|o| o.open).collect();
        let want: BTreeSet<OpenId> = self.m.opens.iter().map(|o| o.id).collect();
        assert_eq!(got, want, "opens differ from the model");
        for (i, a) in snap.opens.iter().enumerate() {
            for b in &snap.opens[i + 1..] {
                if a.file == b.file {
                    assert!(!m_share_conflict(a.access, a.share, b.access, b.share));
                }
            }
            // Write caching is exclusive: any other open on the file shares the lease or is a
            // stat open.
            let writes = match a.caching {
                OplockGrant::Oplock(l) => matches!(l, OplockLevel::Batch | OplockLevel::Exclusive),
                OplockGrant::Lease(l) => l.state.contains(LeaseState::WRITE),
                OplockGrant::None => false,
            };
            if writes {
                for b in snap
                    .opens
                    .iter()
                    .filter(|b| b.file == a.file && b.open != a.open)
                {
                    let same_lease = matches!((a.caching, b.caching), (OplockGrant::Lease(x), OplockGrant::Lease(y)) if x.key == y.key && a.session == b.session);
                    assert!(
                        same_lease || b.access == access::FILE_READ_ATTRIBUTES,
                        "W caching with other open"
                    );
                }
            }
        }
        // A deferred create waits only while a break is in flight on its file.
        for d in &snap.deferred_opens {
            assert!(
                snap.breaks.iter().any(|b| b.file == d.file),
                "deferred open without a break"
            );
        }
        // A waiter that nothing blocks would have been granted.
        for w in &self.m.waiters {
            assert!(self.m.lock_blocked(&w.lock));
        }
        assert_eq!(
            snap.lock_waiters.len() + snap.deferred_opens.len() + self.renames.len(),
            self.pending.len()
        );
    }

    /// Release everything and check every pending request completed.
    fn finish(&mut self) {
        self.now = self.now.saturating_add(Duration::from_secs(100));
        self.e.handle_timeout(self.now);
        self.drain(None);
        self.check_invariants();
        for _ in 0..10 {
            if self.m.opens.is_empty() && self.pending.is_empty() {
                break;
            }
            let opens: Vec<(SessionId, OpenId)> =
                self.m.opens.iter().map(|o| (o.session, o.id)).collect();
            for (s, id) in opens {
                let delete_file = self.m.close_deletes(id);
                for c in self.m.close(id) {
                    self.expected.insert(c, Reply::Done(Status::Cancelled));
                }
                self.expect_grants();
                let (_, r) = self.call(s, Request::Close { open: id });
                assert_eq!(r, Reply::Closed { delete_file });
                self.check_invariants();
            }
            self.now = self.now.saturating_add(Duration::from_secs(100));
            self.e.handle_timeout(self.now);
            self.drain(None);
        }
        assert!(
            self.pending.is_empty(),
            "requests never completed: {:?}",
            self.pending
        );
        assert!(self.m.opens.is_empty());
        let want: Vec<FileId> = std::mem::take(&mut self.m.orphans).into_iter().collect();
        assert_eq!(self.e.take_orphaned_deletes(), want);
        assert!(self.m.delete_pending.is_empty());
        let st = self.e.stats();
        assert_eq!(
            (st.opens, st.locks_held, st.lock_waiters, st.deferred_opens),
            (0, 0, 0, 0)
        );
        assert_eq!(st.files, 0, "idle file state is dropped");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises it for the long runs (scripts/long-runs.sh).
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut run = Run::new();
        for op in &ops {
            run.step(op);
        }
        run.finish();
    }
}
