//! I/O grants: letting an open READ and WRITE without a `CheckIo` round trip.
//!
//! `CheckIo` answers two questions for an I/O (MS-FSA 2.1.5.2, 2.1.5.3): does a byte-range
//! lock of another open conflict with it (2.1.4.10), and, for a write, which other opens'
//! read caching it breaks (2.1.4.12: Level II oplocks and leases with R but not W, other
//! than the writer's own lease). An open is granted I/O (`CheckIoGrant` answered
//! [`Reply::IoGranted`]) only when both answers are "none" for every I/O it could make:
//!
//! * the file has no byte-range locks, lock waiters or locks queued for a recall;
//! * no caching holder but the open's own lease caches reads without writes (the open's own
//!   Level II oplock counts: a write breaks it too), and no holder is being broken (its
//!   acknowledgement could leave it caching reads);
//! * no create is deferred, no rename waits and no recall is in flight on the file.
//!
//! The grant then stays true until one of these changes, and each change goes through a
//! recall first. A session's own lock request ends that session's grants on the file
//! without one (a node drops its grants on a file before it sends a lock for it, so a node
//! locking a file only it does I/O on pays no recall). A byte-range lock request on a file
//! with other sessions' grants queues (`Pending`, even
//! with fail-immediately) behind an [`Notification::IoRecall`] to every session holding a
//! grant; a create that asks for caching, or could break some (it is not a stat open and
//! the file has holders), is deferred the same way, and so is a rename or delete that breaks
//! handle caching (a lease may acknowledge less than asked, down to R). Only when every
//! recalled session acknowledged (`IoRecallAck`) or ended (a dead or fenced node: its
//! session's end, like the breaks its clients can no longer acknowledge) do the queued
//! locks, deferred creates and renames go on, in that order. A recall revokes every grant of
//! the file at once, so after it the next I/O of each open sends `CheckIo` again.
//!
//! A grant belongs to an open and dies with it (close, disconnect of a durable open, end of
//! its session). The generation in grants and recalls orders them for a node that handles
//! replies and notifications on different threads: a grant whose generation is not above
//! the last recall of its file is stale.

use super::*;

/// A byte-range lock request waiting for an I/O recall (`FileState::io_queued_locks`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct QueuedLock {
    pub(super) session: SessionId,
    pub(super) request: RequestId,
    pub(super) open: OpenId,
    ranges: Vec<LockRange>,
    fail_immediately: bool,
}

impl Engine {
    /// The open asks for caching that could be granted (an oplock level or a lease with R).
    pub(super) fn asks_caching(req: &OpenRequest) -> bool {
        match req.oplock {
            OplockRequest::None => false,
            OplockRequest::Oplock(level) => level != OplockLevel::None,
            OplockRequest::Lease(l) => l.state.contains(LeaseState::READ),
        }
    }

    pub(super) fn io_recall_pending(&self, f: FileId) -> bool {
        self.files
            .get(&f)
            .is_some_and(|file| !file.io_recalling.is_empty())
    }

    /// A lock request on `f` must wait for a recall (started now, or in flight), or for the
    /// locks queued before it.
    pub(super) fn io_recall_blocks_lock(&self, f: FileId) -> bool {
        self.files.get(&f).is_some_and(|file| {
            !file.io_granted.is_empty()
                || !file.io_recalling.is_empty()
                || !file.io_queued_locks.is_empty()
        })
    }

    /// Queue a checked lock request behind the file's recall, starting the recall if grants
    /// are still out. Replies `Pending`, or `InsufficientResources` if the session may not
    /// wait any more (`SessionLimits::max_waiters`).
    pub(super) fn queue_lock_for_recall(
        &mut self,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        f: FileId,
        ranges: &[LockRange],
        fail_immediately: bool,
    ) {
        let max_waiters = self.config.limits.max_waiters;
        if self
            .sessions
            .get(&session)
            .is_none_or(|s| s.pending.len() >= max_waiters)
        {
            self.reply(session, request, Reply::Done(Status::InsufficientResources));
            return;
        }
        self.recall_io(f);
        if let Some(file) = self.files.get_mut(&f) {
            file.io_queued_locks.push_back(QueuedLock {
                session,
                request,
                open,
                ranges: ranges.to_vec(),
                fail_immediately,
            });
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.pending.insert(request, PendingRef::QueuedLock(f));
        }
        self.reply(session, request, Reply::Pending);
    }

    /// A session asking for a byte-range lock has stopped using its own grants on the file
    /// (a node drops them before it sends the lock): only other sessions' need a recall.
    pub(super) fn drop_own_io_grants(&mut self, session: SessionId, f: FileId) {
        let Some(file) = self.files.get_mut(&f) else {
            return;
        };
        if file.io_granted.is_empty() {
            return;
        }
        let opens = &mut self.opens;
        file.io_granted.retain(|o| match opens.get_mut(o) {
            Some(state) if state.session == session => {
                state.io_grant = false;
                false
            }
            _ => true,
        });
    }

    /// Revoke every I/O grant of `f`, and ask each session that held one to acknowledge.
    /// Nothing to do when no grant is out (a recall in flight already revoked them all).
    pub(super) fn recall_io(&mut self, f: FileId) {
        let granted = match self.files.get_mut(&f) {
            Some(file) if !file.io_granted.is_empty() => std::mem::take(&mut file.io_granted),
            _ => return,
        };
        let generation = self.next_seq;
        self.next_seq += 1;
        let mut sessions: Vec<SessionId> = Vec::new();
        for open in granted {
            if let Some(o) = self.opens.get_mut(&open) {
                o.io_grant = false;
                if !sessions.contains(&o.session) {
                    sessions.push(o.session);
                }
            }
        }
        for session in sessions {
            // Grants die with disconnects, so a grant's owner is a live session; the check
            // keeps a recall from waiting for an ack nobody would send.
            let Some(state) = self.sessions.get_mut(&session) else {
                continue;
            };
            state.io_recalls.push(f);
            if let Some(file) = self.files.get_mut(&f) {
                file.io_recalling.push(session);
            }
            self.stats.io_recalls_total += 1;
            self.notify(
                session,
                Notification::IoRecall {
                    file: f,
                    generation,
                },
            );
        }
    }

    pub(super) fn do_io_recall_ack(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        f: FileId,
    ) {
        let awaited = self.sessions.get_mut(&session).is_some_and(|s| {
            let at = s.io_recalls.iter().position(|x| *x == f);
            if let Some(i) = at {
                s.io_recalls.swap_remove(i);
            }
            at.is_some()
        });
        if awaited {
            self.stats.io_recall_acks_total += 1;
            if let Some(file) = self.files.get_mut(&f) {
                file.io_recalling.retain(|s| *s != session);
            }
        }
        self.reply(session, request, Reply::Done(Status::Success));
        if awaited {
            self.after_release(now, f);
        }
    }

    /// Once the recall of `f` is complete: the locks queued behind it, in order. What they
    /// do not settle immediately becomes an ordinary lock waiter. (Deferred creates and
    /// renames follow in `after_release`.)
    pub(super) fn run_queued_locks(&mut self, now: Time, f: FileId) {
        loop {
            let next = match self.files.get_mut(&f) {
                Some(file) if file.io_recalling.is_empty() => file.io_queued_locks.pop_front(),
                _ => None,
            };
            let Some(q) = next else {
                return;
            };
            if let Some(s) = self.sessions.get_mut(&q.session) {
                s.pending.remove(&q.request);
            }
            let outcome = self.lock_granted_or_waiting(
                now,
                q.session,
                q.request,
                q.open,
                f,
                &q.ranges,
                q.fail_immediately,
            );
            if outcome != Reply::Pending {
                self.complete(q.session, q.request, outcome);
            }
        }
    }

    /// The answer to a `CheckIoGrant` that found no conflict: a grant if the file allows one
    /// (see the module documentation), plain `Success` otherwise.
    pub(super) fn try_grant_io(&mut self, f: FileId, open: OpenId) -> Reply {
        match self.grant_io(f, open) {
            Some(generation) => Reply::IoGranted { generation },
            None => Reply::Done(Status::Success),
        }
    }

    /// A just granted open whose create asked for an I/O grant ([`OpenRequest::io_grant`])
    /// gets one with its reply if the file allows it now: `Opened` / `OpenedDurable` become
    /// [`Reply::OpenedIo`]. `others_deferred`: creates of the file still wait (a deferred
    /// create retried with others behind it), which rules a grant out like a queued one.
    pub(super) fn attach_io_grant(
        &mut self,
        reply: Reply,
        req: &OpenRequest,
        others_deferred: bool,
    ) -> Reply {
        if !req.io_grant {
            return reply;
        }
        let (open, grant, durable) = match reply {
            Reply::Opened { open, grant } => (open, grant, false),
            Reply::OpenedDurable { open, grant } => (open, grant, true),
            other => return other,
        };
        let generation = if others_deferred {
            self.stats.io_grants_refused_total += 1;
            None
        } else {
            self.grant_io(req.file, open)
        };
        match generation {
            Some(generation) => Reply::OpenedIo {
                open,
                grant,
                durable,
                generation,
            },
            None if durable => Reply::OpenedDurable { open, grant },
            None => Reply::Opened { open, grant },
        }
    }

    /// Give `open` an I/O grant of its file `f` if the file allows one: the grant's
    /// generation, or `None` (counted as refused).
    fn grant_io(&mut self, f: FileId, open: OpenId) -> Option<u64> {
        if !self.io_grantable(f, open) {
            self.stats.io_grants_refused_total += 1;
            return None;
        }
        let generation = self.next_seq;
        let newly = self
            .opens
            .get_mut(&open)
            .is_some_and(|o| !std::mem::replace(&mut o.io_grant, true));
        if newly {
            if let Some(file) = self.files.get_mut(&f) {
                file.io_granted.push(open);
            }
            self.stats.io_grants_total += 1;
        }
        Some(generation)
    }

    fn io_grantable(&self, f: FileId, open: OpenId) -> bool {
        let Some(file) = self.files.get(&f) else {
            return false;
        };
        let quiet = file.locks.is_empty()
            && file.lock_waiters.is_empty()
            && file.io_queued_locks.is_empty()
            && file.io_recalling.is_empty()
            && file.deferred.is_empty()
            && file.rename_waiters.is_empty();
        if !quiet {
            return false;
        }
        // The holders `break_read_holders` would look at for a write through `open`.
        let own_lease = self.opens.get(&open).and_then(|o| o.lease);
        self.holders(f, None, own_lease).into_iter().all(|h| {
            let cur = self.holder_state(h);
            !self.holder_breaking(h)
                && (!cur.contains(LeaseState::READ) || cur.contains(LeaseState::WRITE))
        })
    }
}
