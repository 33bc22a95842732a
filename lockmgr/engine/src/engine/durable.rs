//! Durable opens (MS-SMB2 3.3.5.9.6-3.3.5.9.12, 3.3.7.1): opens that outlive their owner.
//!
//! A durable open whose owner goes away (its SMB connection: `Disconnect`; or the whole smbd
//! node: its session ends) is not released but *disconnected*: it belongs to no session, and
//! its share mode, byte-range locks and caching stay in force until its timeout. Nobody can
//! acknowledge a break for it, so a CREATE that would have to break its caching, or that
//! conflicts with its share mode, purges it instead (Samba and Windows do the same for
//! disconnected durable handles). Any session, on any node, can `Reclaim` it by its key (the
//! SMB persistent file id) once the node has checked the blob it stored with it.
//!
//! Persistent opens (continuously available shares, MS-SMB2 3.3.5.9.10) are kept on
//! disconnect whatever their caching, are never purged, and while disconnected make every
//! create of their file fail with `FileNotAvailable` (MS-SMB2 3.3.5.9) until their owner
//! reclaims them or they expire.

use super::*;
use crate::sharing::pair_conflicts;
use crate::types::{Duration, MAX_DURABLE_BLOB};

/// Owner of disconnected opens: no real session has it, so nothing can touch them through
/// `owned`, and notifications to it are dropped.
pub(super) const DISCONNECTED: SessionId = SessionId(u64::MAX);

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct DurableRec {
    key: u64,
    timeout: Duration,
    persistent: bool,
    blob: Vec<u8>,
    /// When the disconnected open expires; `None` while it has an owner.
    deadline: Option<Time>,
}

/// The engine's durable-open bookkeeping (kept apart from `OpenState` so opens that are not
/// durable pay nothing).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct DurableTable {
    #[serde(serialize_with = "crate::hash::sorted::map")]
    recs: IdMap<OpenId, DurableRec>,
    #[serde(serialize_with = "crate::hash::sorted::map")]
    keys: IdMap<u64, OpenId>,
    /// Disconnected opens per file, for the purge check of a create.
    #[serde(serialize_with = "crate::hash::sorted::map")]
    by_file: IdMap<FileId, Vec<OpenId>>,
    timers: BTreeSet<(Time, OpenId)>,
}

impl DurableTable {
    pub(super) fn next_deadline(&self) -> Option<Time> {
        self.timers.first().map(|(t, _)| *t)
    }

    fn detach(&mut self, open: OpenId, f: FileId) {
        if let Some(rec) = self.recs.get_mut(&open) {
            if let Some(d) = rec.deadline.take() {
                self.timers.remove(&(d, open));
            }
        }
        if let Some(v) = self.by_file.get_mut(&f) {
            v.retain(|o| *o != open);
            if v.is_empty() {
                self.by_file.remove(&f);
            }
        }
    }
}

/// The fixed parameters of a `SetDurable` request.
pub(super) struct DurableParams {
    pub(super) key: u64,
    pub(super) timeout_ms: u32,
    pub(super) persistent: bool,
}

impl Engine {
    pub(super) fn do_set_durable(
        &mut self,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        params: DurableParams,
        blob: Vec<u8>,
    ) {
        let DurableParams {
            key,
            timeout_ms,
            persistent,
        } = params;
        let status = if self.owned(session, open).is_none() {
            Status::InvalidHandle
        } else if !self.durable_params_valid(open, key, &blob) {
            Status::InvalidParameter
        } else {
            self.insert_durable(open, key, timeout_ms, persistent, blob);
            Status::Success
        };
        self.reply(session, request, Reply::Done(status));
    }

    /// A blob that fits and a key no other open uses.
    fn durable_params_valid(&self, open: OpenId, key: u64, blob: &[u8]) -> bool {
        blob.len() <= MAX_DURABLE_BLOB && self.durable.keys.get(&key).is_none_or(|o| *o == open)
    }

    fn insert_durable(
        &mut self,
        open: OpenId,
        key: u64,
        timeout_ms: u32,
        persistent: bool,
        blob: Vec<u8>,
    ) {
        if let Some(old) = self.durable.recs.get(&open).map(|r| r.key) {
            self.durable.keys.remove(&old);
        }
        self.durable.keys.insert(key, open);
        self.durable.recs.insert(
            open,
            DurableRec {
                key,
                timeout: Duration::from_millis(u64::from(timeout_ms)),
                persistent,
                blob,
                deadline: None,
            },
        );
    }

    /// The durable half of `OpenDurable`, in the step that produced `reply` (the answer to
    /// its open): an `Opened` whose grant allows durability becomes a durable open and the
    /// answer `OpenedDurable`; anything else is returned unchanged, with no durable record
    /// (see [`Request::OpenDurable`] for the rule).
    pub(super) fn attach_durable(
        &mut self,
        reply: Reply,
        req: &OpenRequest,
        durable: Option<DurableRequest>,
    ) -> Reply {
        let (Some(d), Reply::Opened { open, grant }) = (durable, &reply) else {
            return reply;
        };
        let (open, grant) = (*open, *grant);
        let caching_allows = match grant {
            OplockGrant::Oplock(level) => level == OplockLevel::Batch,
            OplockGrant::Lease(l) => l.state.contains(LeaseState::HANDLE),
            OplockGrant::None => false,
        };
        if req.directory
            || !(d.persistent || caching_allows)
            || !self.durable_params_valid(open, d.key, &d.blob)
        {
            return reply;
        }
        self.insert_durable(open, d.key, d.timeout_ms, d.persistent, d.blob);
        Reply::OpenedDurable { open, grant }
    }

    pub(super) fn do_disconnect(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
    ) {
        let Some(f) = self.owned(session, open).map(|o| o.file) else {
            self.reply(session, request, Reply::Done(Status::InvalidHandle));
            return;
        };
        if self.try_disconnect(now, open) {
            self.reply(session, request, Reply::Done(Status::Success));
            self.after_release(now, f);
        } else {
            self.do_close(now, session, request, open);
        }
    }

    /// Disconnect `open` if it is durable and still caches handles: MS-SMB2 3.3.7.1 keeps a
    /// durable (not persistent) open only while it holds a batch oplock or a lease with
    /// handle caching (Samba too); one whose caching was broken to Level II / R or less is
    /// closed at once, with its byte-range locks. A persistent open is kept regardless
    /// (resilient opens, also kept regardless, are not made durable through this engine).
    /// A durable open whose caching is being broken is not kept either: the break could
    /// never be acknowledged, and the create waiting for it would otherwise wait out the
    /// break timeout.
    pub(super) fn try_disconnect(&mut self, now: Time, open: OpenId) -> bool {
        let Some((timeout, persistent)) = self
            .durable
            .recs
            .get(&open)
            .map(|r| (r.timeout, r.persistent))
        else {
            return false;
        };
        let Some(o) = self.opens.get(&open) else {
            return false;
        };
        let holder = match o.lease {
            Some(id) => Holder::Lease(id),
            None => Holder::Oplock(open),
        };
        // Of the oplock levels only batch includes handle caching.
        if !persistent
            && (!self.holder_state(holder).contains(LeaseState::HANDLE)
                || self.holder_breaking(holder))
        {
            return false;
        }
        // Like Samba, files about to be deleted are not kept: nobody would be left to unlink
        // them when the disconnected open expires.
        if o.delete_on_close
            || self
                .files
                .get(&o.file)
                .is_some_and(|f| f.links.serial_deleted(o.link))
        {
            return false;
        }
        let (old, f, held) = (o.session, o.file, o.live_locks);
        if let Some(s) = self.sessions.get_mut(&old) {
            s.opens.remove(&open);
            s.locks = s.locks.saturating_sub(held);
        }
        let mut had_grant = false;
        if let Some(o) = self.opens.get_mut(&open) {
            o.session = DISCONNECTED;
            had_grant = std::mem::take(&mut o.io_grant);
        }
        // Blocking locks of the open wait no longer: their requester is gone. Nor does its
        // I/O grant stay: a reclaim asks again.
        let mut cancelled = Vec::new();
        if let Some(file) = self.files.get_mut(&f) {
            file.lock_waiters.retain(|w| {
                let mine = w.open == open;
                if mine {
                    cancelled.push((w.session, w.request));
                }
                !mine
            });
            file.io_queued_locks.retain(|q| {
                let mine = q.open == open;
                if mine {
                    cancelled.push((q.session, q.request));
                }
                !mine
            });
            if had_grant {
                file.io_granted.retain(|x| *x != open);
            }
        }
        for (s, r) in cancelled {
            self.complete(s, r, Reply::Done(Status::Cancelled));
        }
        let deadline = now.saturating_add(timeout);
        if let Some(rec) = self.durable.recs.get_mut(&open) {
            rec.deadline = Some(deadline);
        }
        self.durable.timers.insert((deadline, open));
        self.durable.by_file.entry(f).or_default().push(open);
        true
    }

    /// Drop the durable bookkeeping of an open being removed.
    pub(super) fn forget_durable(&mut self, open: OpenId, f: FileId) {
        if self.durable.recs.is_empty() {
            return;
        }
        self.durable.detach(open, f);
        if let Some(rec) = self.durable.recs.remove(&open) {
            self.durable.keys.remove(&rec.key);
        }
    }

    /// Whether `file` has a disconnected persistent open (MS-SMB2 3.3.5.9).
    pub(super) fn has_disconnected_persistent(&self, file: FileId) -> bool {
        self.durable.by_file.get(&file).is_some_and(|list| {
            list.iter().any(|id| {
                self.durable.recs.get(id).is_some_and(|r| r.persistent)
                    && self
                        .opens
                        .get(id)
                        .is_some_and(|o| o.session == DISCONNECTED)
            })
        })
    }

    /// How many opens of `file` are disconnected durable opens.
    pub(super) fn disconnected_opens_of(&self, file: FileId) -> usize {
        self.durable.by_file.get(&file).map_or(0, |list| {
            list.iter()
                .filter(|id| {
                    self.opens
                        .get(id)
                        .is_some_and(|o| o.session == DISCONNECTED)
                })
                .count()
        })
    }

    /// Purge the disconnected opens of `req.file` that the create would conflict with: share
    /// modes (MS-FSA 2.1.5.1.2), or caching it would have to break (MS-SMB2 3.3.5.9: no
    /// client is left to acknowledge the break).
    pub(super) fn purge_disconnected(&mut self, now: Time, req: &OpenRequest) {
        let Some(list) = self.durable.by_file.get(&req.file) else {
            return;
        };
        let own_lease = match req.oplock {
            OplockRequest::Lease(l) => Some((req.client_guid, l.key)),
            _ => None,
        };
        let breaks = !is_stat_open(req.access) || req.overwrite;
        let gone: Vec<OpenId> = list
            .iter()
            .copied()
            .filter(|id| {
                let Some(o) = self.opens.get(id) else {
                    return true;
                };
                if pair_conflicts(o.access, o.share, req.access, req.share) {
                    return true;
                }
                if !breaks || (own_lease.is_some() && o.lease == own_lease) {
                    return false;
                }
                let cur = match o.lease {
                    Some(lid) => self.holder_state(Holder::Lease(lid)),
                    None => o.oplock,
                };
                // Batch/exclusive oplocks and write-caching leases break on any other open;
                // an overwrite breaks every caching level.
                if req.overwrite {
                    cur != LeaseState::NONE
                } else {
                    cur.contains(LeaseState::WRITE)
                }
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in gone {
            self.expire_open(id);
        }
        self.process_lock_waiters(now, req.file);
    }

    /// If every open behind `h` is a disconnected durable open, remove them (Samba scavenges
    /// such opens instead of breaking them) and say so; otherwise leave `h` alone.
    pub(super) fn purge_disconnected_holder(&mut self, now: Time, h: Holder) -> bool {
        let opens = match h {
            Holder::Oplock(o) => vec![o],
            Holder::Lease(id) => match self.leases.get(&id) {
                Some(rec) => rec.opens.clone(),
                None => return false,
            },
        };
        let mut file = None;
        for id in &opens {
            // A persistent open is never scavenged: its client will come back for it (the
            // break goes nowhere and times out like an unanswered one).
            if self.durable.recs.get(id).is_some_and(|r| r.persistent) {
                return false;
            }
            match self.opens.get(id) {
                Some(o) if o.session == DISCONNECTED => file = Some(o.file),
                _ => return false,
            }
        }
        let Some(f) = file else {
            return false;
        };
        for id in opens {
            self.expire_open(id);
        }
        // Its byte-range locks went with it.
        self.process_lock_waiters(now, f);
        true
    }

    /// Remove a disconnected open for good. No node holds it, so if it was the last open of a
    /// delete-pending file the deletion is left to the daemon (`take_orphaned_deletes`).
    fn expire_open(&mut self, open: OpenId) {
        if let Some(gone) = self.remove_open(open).and_then(|(f, u)| u.file(f)) {
            self.orphaned_deletes.insert(gone);
        }
    }

    /// Fire due durable timeouts.
    pub(super) fn expire_durable(&mut self, now: Time) {
        while let Some(&(t, open)) = self.durable.timers.first() {
            if t > now {
                break;
            }
            self.durable.timers.remove(&(t, open));
            let f = self.opens.get(&open).map(|o| o.file);
            self.expire_open(open);
            if let Some(f) = f {
                self.after_release(now, f);
            }
        }
    }

    pub(super) fn do_durable_lookup(&mut self, session: SessionId, request: RequestId, key: u64) {
        let found = self
            .durable
            .keys
            .get(&key)
            .and_then(|o| self.durable.recs.get(o).map(|r| (*o, r)));
        let reply = match found {
            Some((open, rec)) if rec.deadline.is_some() => Reply::Durable {
                open,
                blob: rec.blob.clone(),
            },
            // Still owned: its connection may be going away right now (a client that
            // reconnects at once can be faster than the server noticing the old connection
            // is gone), so the caller may ask again shortly.
            Some(_) => Reply::Done(Status::InvalidDeviceState),
            None => Reply::Done(Status::NotFound),
        };
        self.reply(session, request, reply);
    }

    pub(super) fn do_reclaim(
        &mut self,
        session: SessionId,
        request: RequestId,
        key: u64,
        open: OpenId,
        client_guid: ClientGuid,
    ) {
        let found = self.durable.keys.get(&key) == Some(&open)
            && self
                .durable
                .recs
                .get(&open)
                .is_some_and(|r| r.deadline.is_some())
            && self
                .opens
                .get(&open)
                .is_some_and(|o| o.lease.is_none_or(|(cg, _)| cg == client_guid));
        if !found {
            self.reply(session, request, Reply::Done(Status::NotFound));
            return;
        }
        let Some(o) = self.opens.get_mut(&open) else {
            self.reply(session, request, Reply::Done(Status::NotFound));
            return;
        };
        o.session = session;
        let (f, held) = (o.file, o.live_locks);
        self.durable.detach(open, f);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.opens.insert(open);
            // A reclaimed open brings its locks back; caps do not refuse a reclaim.
            s.locks += held;
        }
        let grant = self
            .opens
            .get(&open)
            .map_or(OplockGrant::None, |o| self.grant_of(o));
        self.reply(session, request, Reply::Opened { open, grant });
    }
}
