//! All lock decisions (share modes, delete-pending, byte-range locks, oplocks, leases) go
//! through [`LockService`], so the in-process implementation can be swapped for a client of a
//! remote lockmgrd without touching the SMB code.
//!
//! The vocabulary is the lock manager's (`lockmgr_engine::types`). Each SMB connection is one
//! lock session ([`SessionId`] = the connection's global id). Immediate answers are returned
//! from [`LockService::request`]; unsolicited notifications (oplock/lease breaks) and the
//! completions of deferred requests are drained with [`LockService::poll_event`] and routed by
//! the server to the owning connection's event loop.

use std::collections::{HashMap, VecDeque};

pub use lockmgr_engine::types::access as access_bits;
pub use lockmgr_engine::types::{
    ClientGuid, FileId, FileUsage, Lease, LeaseKey, LeaseState, LockRange, Notification, OpenId,
    OpenRequest, OplockGrant, OplockLevel, OplockRequest, Reply, Request, RequestId, SessionId,
    Status,
};

/// The lock authority as seen by smbd.
pub trait LockService: Send {
    /// A new SMB connection (lock session) starts.
    fn open_session(&mut self, session: SessionId);
    /// The connection ended: release everything it held.
    fn end_session(&mut self, session: SessionId);
    /// One request; the answer may be `Reply::Pending`, completed later through `poll_event`.
    fn request(&mut self, session: SessionId, id: RequestId, req: Request) -> Reply;
    /// Next notification for some session (breaks, deferred completions).
    fn poll_event(&mut self) -> Option<(SessionId, Notification)>;
    /// Fire due timers (break timeouts).
    fn tick(&mut self) {}
    /// Connections whose lock state was lost (a remote lock manager's session dropped): the
    /// server drops them so their clients reconnect and reopen. In-process services never lose
    /// state.
    fn take_lost_connections(&mut self) -> Vec<SessionId> {
        Vec::new()
    }
}

fn denies_delete(access: u32, share: u32) -> bool {
    access & DATA_BITS != 0 && share & lockmgr_engine::types::share::DELETE == 0
}

struct LocalOpen {
    session: SessionId,
    file: FileId,
    access: u32,
    share: u32,
    delete_on_close: bool,
}

struct LocalLock {
    open: OpenId,
    range: LockRange,
}

#[derive(Default)]
struct LocalFile {
    opens: Vec<OpenId>,
    delete_pending: bool,
    locks: Vec<LocalLock>,
}

/// A minimal in-process lock service: share modes, delete-on-close and byte-range locks
/// without waiting or caching (no oplocks or leases are granted; blocking locks fail at once).
/// It exists so smbd works without the full engine and as a reference for tests.
#[derive(Default)]
pub struct LocalLocks {
    next_open: u64,
    opens: HashMap<OpenId, LocalOpen>,
    files: HashMap<FileId, LocalFile>,
    events: VecDeque<(SessionId, Notification)>,
}

const DATA_BITS: u32 = 0x1 | 0x2 | 0x4 | 0x20 | 0x1_0000;

/// Generic mapping of MS-SMB2 2.2.13.1.1 restricted to the bits sharing looks at.
pub fn map_generic(access: u32) -> u32 {
    use lockmgr_engine::types::access::*;
    let mut a = access;
    if a & GENERIC_READ != 0 {
        a |= FILE_READ_DATA | FILE_READ_EA | FILE_READ_ATTRIBUTES | READ_CONTROL | FILE_EXECUTE;
    }
    if a & GENERIC_WRITE != 0 {
        a |= FILE_WRITE_DATA | FILE_APPEND_DATA | FILE_WRITE_EA | FILE_WRITE_ATTRIBUTES;
    }
    if a & GENERIC_EXECUTE != 0 {
        a |= FILE_EXECUTE | FILE_READ_ATTRIBUTES;
    }
    if a & (GENERIC_ALL | MAXIMUM_ALLOWED) != 0 {
        a |= 0x001F_01FF;
    }
    a & !(GENERIC_READ | GENERIC_WRITE | GENERIC_EXECUTE | GENERIC_ALL | MAXIMUM_ALLOWED)
}

fn ranges_overlap(a: &LockRange, b: &LockRange) -> bool {
    // Zero-length ranges never conflict (MS-FSA 2.1.5.8.1: a zero-length range locks nothing).
    if a.length == 0 || b.length == 0 {
        return false;
    }
    let a_end = a.offset.saturating_add(a.length - 1);
    let b_end = b.offset.saturating_add(b.length - 1);
    a.offset <= b_end && b.offset <= a_end
}

impl LocalLocks {
    pub fn new() -> Self {
        Self::default()
    }

    fn share_conflict(&self, f: &LocalFile, access: u32, share: u32) -> bool {
        // MS-FSA 2.1.5.1.2.2: only opens with data access take part.
        if access & DATA_BITS == 0 {
            return false;
        }
        f.opens.iter().filter_map(|o| self.opens.get(o)).any(|o| {
            if o.access & DATA_BITS == 0 {
                return false;
            }
            let denies = |acc: u32, sh: u32| {
                (acc & (0x1 | 0x20) != 0 && sh & 1 == 0)
                    || (acc & (0x2 | 0x4) != 0 && sh & 2 == 0)
                    || (acc & 0x1_0000 != 0 && sh & 4 == 0)
            };
            denies(access, o.share) || denies(o.access, share)
        })
    }

    fn lock_conflicts(&self, f: &LocalFile, open: OpenId, r: &LockRange) -> bool {
        f.locks.iter().any(|l| {
            ranges_overlap(&l.range, r) && (r.exclusive || (l.range.exclusive && l.open != open))
        })
    }
}

impl LockService for LocalLocks {
    fn open_session(&mut self, _session: SessionId) {}

    fn end_session(&mut self, session: SessionId) {
        let ids: Vec<OpenId> = self
            .opens
            .iter()
            .filter(|(_, o)| o.session == session)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.request(session, RequestId(0), Request::Close { open: id });
        }
    }

    fn request(&mut self, session: SessionId, _id: RequestId, req: Request) -> Reply {
        match req {
            Request::Open(o) => {
                let access = map_generic(o.access);
                if let Some(f) = self.files.get(&o.file) {
                    if f.delete_pending {
                        return Reply::Done(Status::DeletePending);
                    }
                    if self.share_conflict(f, access, o.share) {
                        return Reply::Done(Status::SharingViolation);
                    }
                }
                self.next_open += 1;
                let id = OpenId(self.next_open);
                self.opens.insert(
                    id,
                    LocalOpen {
                        session,
                        file: o.file,
                        access,
                        share: o.share,
                        delete_on_close: o.delete_on_close,
                    },
                );
                self.files.entry(o.file).or_default().opens.push(id);
                Reply::Opened {
                    open: id,
                    grant: OplockGrant::None,
                }
            }
            Request::Close { open } => {
                let Some(o) = self.opens.remove(&open) else {
                    return Reply::Done(Status::InvalidHandle);
                };
                let mut delete_file = false;
                if let Some(f) = self.files.get_mut(&o.file) {
                    f.opens.retain(|x| *x != open);
                    f.locks.retain(|l| l.open != open);
                    if o.delete_on_close {
                        f.delete_pending = true;
                    }
                    if f.opens.is_empty() {
                        delete_file = f.delete_pending;
                        self.files.remove(&o.file);
                    }
                }
                Reply::Closed { delete_file }
            }
            Request::SetDeletePending { open, delete } => {
                let Some(o) = self.opens.get(&open) else {
                    return Reply::Done(Status::InvalidHandle);
                };
                if let Some(f) = self.files.get_mut(&o.file) {
                    f.delete_pending = delete;
                }
                Reply::Done(Status::Success)
            }
            Request::Lock {
                open,
                ranges,
                fail_immediately: _,
            } => {
                let Some(o) = self.opens.get(&open) else {
                    return Reply::Done(Status::InvalidHandle);
                };
                let file = o.file;
                let Some(f) = self.files.get(&file) else {
                    return Reply::Done(Status::InvalidHandle);
                };
                for r in &ranges {
                    if r.length > 0 && r.offset.checked_add(r.length - 1).is_none() {
                        return Reply::Done(Status::InvalidLockRange);
                    }
                }
                let mut granted: Vec<LocalLock> = Vec::new();
                for r in &ranges {
                    let conflict = self.lock_conflicts(f, open, r)
                        || granted.iter().any(|l| {
                            ranges_overlap(&l.range, r) && (r.exclusive || l.range.exclusive)
                        });
                    if conflict {
                        return Reply::Done(Status::LockNotGranted);
                    }
                    granted.push(LocalLock { open, range: *r });
                }
                if let Some(f) = self.files.get_mut(&file) {
                    f.locks.extend(granted);
                }
                Reply::Done(Status::Success)
            }
            Request::Unlock { open, ranges } => {
                let Some(o) = self.opens.get(&open) else {
                    return Reply::Done(Status::InvalidHandle);
                };
                let file = o.file;
                let Some(f) = self.files.get_mut(&file) else {
                    return Reply::Done(Status::InvalidHandle);
                };
                for r in &ranges {
                    let pos = f.locks.iter().position(|l| {
                        l.open == open && l.range.offset == r.offset && l.range.length == r.length
                    });
                    match pos {
                        Some(p) => {
                            f.locks.remove(p);
                        }
                        None => return Reply::Done(Status::RangeNotLocked),
                    }
                }
                Reply::Done(Status::Success)
            }
            Request::CheckIo {
                open,
                offset,
                length,
                write,
            } => {
                let Some(o) = self.opens.get(&open) else {
                    return Reply::Done(Status::InvalidHandle);
                };
                let Some(f) = self.files.get(&o.file) else {
                    return Reply::Done(Status::Success);
                };
                let r = LockRange {
                    offset,
                    length,
                    exclusive: write,
                };
                // MS-FSA 2.1.4.10: reads conflict with others' exclusive locks, writes with
                // others' locks of any kind and with our own shared locks.
                let conflict = f.locks.iter().any(|l| {
                    ranges_overlap(&l.range, &r)
                        && if write {
                            l.open != open || !l.range.exclusive
                        } else {
                            l.range.exclusive && l.open != open
                        }
                });
                Reply::Done(if conflict {
                    Status::FileLockConflict
                } else {
                    Status::Success
                })
            }
            Request::Cancel { .. } => Reply::Done(Status::Success),
            // No leases here, so nothing to break before a rename.
            Request::BreakForRename { .. } => Reply::Done(Status::Success),
            Request::QueryUsage { file, except } => {
                let mut u = FileUsage::default();
                for (id, o) in &self.opens {
                    if o.file != file || Some(*id) == except {
                        continue;
                    }
                    u.opens += 1;
                    if o.access & DATA_BITS != 0 {
                        u.deny_delete += u32::from(denies_delete(o.access, o.share));
                        u.delete_access +=
                            u32::from(o.access & lockmgr_engine::types::access::DELETE != 0);
                    }
                }
                Reply::Usage(u)
            }
            Request::OplockBreakAck { .. } | Request::LeaseBreakAck { .. } => {
                Reply::Done(Status::Unsuccessful)
            }
            _ => Reply::Done(Status::RequestNotAccepted),
        }
    }

    fn poll_event(&mut self) -> Option<(SessionId, Notification)> {
        self.events.pop_front()
    }
}

/// The in-process lock engine (`lockmgr_engine::Engine`) behind [`LockService`].
pub struct EngineLocks {
    engine: lockmgr_engine::Engine,
    epoch: std::time::Instant,
    events: VecDeque<(SessionId, Notification)>,
}

impl EngineLocks {
    pub fn new(config: lockmgr_engine::Config) -> Self {
        EngineLocks {
            engine: lockmgr_engine::Engine::new(config),
            epoch: std::time::Instant::now(),
            events: VecDeque::new(),
        }
    }

    fn now(&self) -> lockmgr_engine::Time {
        lockmgr_engine::Time(self.epoch.elapsed().as_nanos() as u64)
    }

    /// Move engine outputs to the event queue, returning the reply to (session, id) if seen.
    fn drain(&mut self, want: Option<(SessionId, RequestId)>) -> Option<Reply> {
        let mut mine = None;
        while let Some(out) = self.engine.poll_output() {
            match out {
                lockmgr_engine::Output::Reply {
                    session,
                    request,
                    reply,
                } => {
                    if mine.is_none() && want == Some((session, request)) {
                        mine = Some(reply);
                    } else {
                        self.events
                            .push_back((session, Notification::Completed { request, reply }));
                    }
                }
                lockmgr_engine::Output::Notify {
                    session,
                    notification,
                } => self.events.push_back((session, notification)),
            }
        }
        mine
    }
}

impl LockService for EngineLocks {
    fn open_session(&mut self, session: SessionId) {
        self.engine.open_session(session);
    }

    fn end_session(&mut self, session: SessionId) {
        let now = self.now();
        self.engine.end_session(now, session);
        self.drain(None);
        let orphans = self.engine.take_orphaned_deletes();
        if !orphans.is_empty() {
            tracing::warn!(?orphans, "delete-pending files whose last open vanished");
        }
    }

    fn request(&mut self, session: SessionId, id: RequestId, req: Request) -> Reply {
        let now = self.now();
        self.engine.handle(now, session, id, req);
        self.drain(Some((session, id)))
            .unwrap_or(Reply::Done(Status::Unsuccessful))
    }

    fn poll_event(&mut self) -> Option<(SessionId, Notification)> {
        self.events.pop_front()
    }

    fn tick(&mut self) {
        let now = self.now();
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
            self.drain(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(l: &mut LocalLocks, s: u64, access: u32, share: u32) -> Reply {
        l.request(
            SessionId(s),
            RequestId(1),
            Request::Open(OpenRequest {
                file: FileId(9),
                access,
                share,
                ..Default::default()
            }),
        )
    }

    #[test]
    fn sharing_violation_when_share_denies_write() {
        let mut l = LocalLocks::new();
        assert!(matches!(open(&mut l, 1, 0x1, 0x1), Reply::Opened { .. }));
        assert_eq!(
            open(&mut l, 2, 0x2, 0x7),
            Reply::Done(Status::SharingViolation)
        );
        assert!(matches!(open(&mut l, 2, 0x1, 0x7), Reply::Opened { .. }));
    }

    #[test]
    fn delete_on_close_reported_on_last_close() {
        let mut l = LocalLocks::new();
        let Reply::Opened { open: a, .. } = l.request(
            SessionId(1),
            RequestId(1),
            Request::Open(OpenRequest {
                file: FileId(3),
                access: 0x1_0000,
                share: 7,
                delete_on_close: true,
                ..Default::default()
            }),
        ) else {
            panic!()
        };
        assert_eq!(
            l.request(SessionId(1), RequestId(2), Request::Close { open: a }),
            Reply::Closed { delete_file: true }
        );
    }
}
