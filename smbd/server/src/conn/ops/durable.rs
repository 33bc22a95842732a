//! The connection's side of durable handles (see [`crate::durable`]): the durable half of a
//! CREATE's lock request, parking the open when the connection or session goes away, and
//! reclaiming it on a DHnC / DH2C reconnect.

use smb_proto::NtStatus;
use std::path::{Path, PathBuf};
use std::time::Duration;

use smb_proto::{create_action, status, CreateRequest, FileId, Header, LeaseContext, Response};

use super::create::create_response;
use crate::conn::{err, ChainCtx, Conn, CreateCont, Open, Outcome, PendingKind, ReconnectTarget};
use crate::durable::{DurableBlob, DurableKind, DurableState, Reconnect, ReconnectCheck};
use crate::locking::{self, OplockGrant, Reply};

impl Conn {
    /// The durable half of a CREATE's lock request ([`locking::Request::OpenDurable`]): the
    /// lock service makes the open durable in the same step as it grants it, if the caching
    /// it grants allows (the CREATE costs one round trip, not an `Open` and a `SetDurable`).
    /// `key` is the SMB persistent file id the client will reconnect with. `None` when the
    /// blob a node needs to reopen the file does not fit: the open is then not durable.
    pub(crate) fn durable_request(
        &self,
        cont: &CreateCont,
        kind: &DurableKind,
        key: u64,
    ) -> Option<locking::DurableRequest> {
        let blob = DurableBlob {
            kind: kind.clone(),
            share: self.shared.shares[cont.share].name.clone(),
            rel: cont.rel.to_string_lossy().into_owned(),
            stream: cont
                .stream
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            is_dir: cont.is_dir,
            access: cont.access,
            share_access: cont.share_access,
            stable_id: cont.stable_id,
            client_guid: self.client_guid_bytes(),
            user: self.session_user(cont.session_id),
            lease: cont.lease,
        };
        let timeout = DurableState::timeout_of(kind);
        Some(locking::DurableRequest {
            key,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            persistent: kind.is_persistent(),
            blob: blob.encode()?,
        })
    }

    /// The ClientGuid of the connection's NEGOTIATE (zero before it).
    pub(crate) fn client_guid_bytes(&self) -> [u8; 16] {
        self.neg.as_ref().map(|n| n.client_guid).unwrap_or_default()
    }

    /// The (lowercased) user of session `session_id`, empty if it is gone.
    pub(crate) fn session_user(&self, session_id: u64) -> String {
        self.sessions
            .get(&session_id)
            .map(|s| s.user.to_lowercase())
            .unwrap_or_default()
    }

    /// DHnC / DH2C: reclaim a disconnected durable open (MS-SMB2 3.3.5.9.7, 3.3.5.9.12). Most
    /// CREATE fields are ignored; only the name, the reconnect context and a lease request
    /// matter. A client may reconnect faster than the server notices that its old connection
    /// is gone (another worker thread, or another node, still holds the open): the CREATE
    /// then goes async and waits for that connection to let the open go, for
    /// [`RECONNECT_WAIT`] at most ([`Conn::durable_wait_over`] finishes it).
    pub(crate) fn durable_reconnect(
        &mut self,
        c: &CreateRequest,
        rc: Reconnect,
        hdr: &Header,
        ctx: &ChainCtx,
        share: usize,
    ) -> Outcome {
        let target = ReconnectTarget {
            request: c.clone(),
            rc,
            session_id: ctx.session_id,
            tree_id: ctx.tree_id,
            share,
        };
        match self.try_reconnect(&target, true) {
            Attempt::Done(out) => out,
            Attempt::Wait => {
                let aid = self.go_async(hdr, ctx, PendingKind::DurableReconnect(Box::new(target)));
                Outcome::Pending(aid)
            }
        }
    }

    /// The wait of the durable reconnects for `persistent` is over (Event::DurableWaitOver):
    /// each asks once more and completes, whatever the answer.
    pub(crate) fn durable_wait_over(&mut self, persistent: u64) {
        let aids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                matches!(&p.kind, PendingKind::DurableReconnect(t)
                    if t.rc.file_id.persistent == persistent)
            })
            .map(|(a, _)| *a)
            .collect();
        for aid in aids {
            let Some(p) = self.pending.get_mut(&aid) else {
                continue;
            };
            let rest = p.rest.take();
            let PendingKind::DurableReconnect(target) = &p.kind else {
                continue;
            };
            let target = target.clone();
            // The reconnect continues with its session's credentials.
            if let Some(id) = self
                .sessions
                .get(&target.session_id)
                .and_then(|s| s.identity.clone())
            {
                crate::identity::become_user(&id);
            }
            let out = match self.try_reconnect(&target, false) {
                Attempt::Done(out) => out,
                Attempt::Wait => err(status::OBJECT_NAME_NOT_FOUND),
            };
            let (st, fid) = match out {
                Outcome::Reply(st, body) => {
                    self.complete_async(aid, st, body);
                    let fid = FileId {
                        persistent,
                        volatile: persistent,
                    };
                    (st, (st == status::SUCCESS).then_some(fid))
                }
                _ => {
                    self.complete_async(
                        aid,
                        status::INTERNAL_ERROR,
                        Response::Error { data: vec![] },
                    );
                    (status::INTERNAL_ERROR, None)
                }
            };
            self.resume_chain_after_create(rest, st, fid);
        }
    }

    /// One attempt at a reconnect. With `may_wait`, an open its old connection still holds
    /// makes this connection wait for it (registered in `Shared` before asking, so that a
    /// release in between is not missed); otherwise it is not found.
    fn try_reconnect(&mut self, t: &ReconnectTarget, may_wait: bool) -> Attempt {
        let c = &t.request;
        let rc = t.rc;
        let (session_id, tree_id, share) = (t.session_id, t.tree_id, t.share);
        let user = self
            .sessions
            .get(&session_id)
            .map(|s| s.user.to_lowercase())
            .unwrap_or_default();
        let client_guid = self.neg.as_ref().map(|n| n.client_guid).unwrap_or_default();
        let lease_req = if self.dialect() >= 0x0210 {
            smb_proto::create_ctx::lease_request(c)
        } else {
            None
        };
        let persistent = rc.file_id.persistent;
        if self.opens.contains_key(&persistent) {
            // The handle is open on this connection (not disconnected).
            return Attempt::Done(err(status::OBJECT_NAME_NOT_FOUND));
        }
        if may_wait {
            self.shared
                .wait_for_durable(persistent, self.id, self.now + RECONNECT_WAIT);
        }
        let (lock_open, blob) = match self.lookup_disconnected(persistent) {
            Lookup::Found(open, blob) => (open, blob),
            Lookup::Held if may_wait => return Attempt::Wait,
            Lookup::Held | Lookup::Gone => {
                self.shared.stop_waiting_for_durable(persistent, self.id);
                return Attempt::Done(err(status::OBJECT_NAME_NOT_FOUND));
            }
        };
        self.shared.stop_waiting_for_durable(persistent, self.id);
        Attempt::Done(self.reclaim(
            c,
            rc,
            lock_open,
            &blob,
            (session_id, tree_id, share),
            (&user, client_guid, lease_req.map(|l| l.key)),
        ))
    }

    /// Reclaim the disconnected open `lock_open` found for `rc`: check the blob against the
    /// request, take the open over in the lock service and answer the CREATE.
    fn reclaim(
        &mut self,
        c: &CreateRequest,
        rc: Reconnect,
        lock_open: locking::OpenId,
        blob: &[u8],
        (session_id, tree_id, share): (u64, u32, usize),
        (user, client_guid, lease_key): (&str, [u8; 16], Option<u128>),
    ) -> Outcome {
        let persistent = rc.file_id.persistent;
        let Some(blob) = DurableBlob::decode(blob) else {
            tracing::warn!(persistent, "undecodable durable blob");
            return err(status::OBJECT_NAME_NOT_FOUND);
        };
        let check = ReconnectCheck {
            create_guid: rc.v2,
            persistent: rc.persistent,
            share: &self.shared.shares[share].name,
            name: c.name.as_str(),
            lease_key,
            client_guid,
            user,
        };
        if let Err(st) = blob.check(&check) {
            return err(st);
        }
        let grant = match self.shared.lock_request(
            self.id,
            0,
            locking::Request::Reclaim {
                key: persistent,
                open: lock_open,
                client_guid: locking::ClientGuid(u128::from_le_bytes(client_guid)),
            },
        ) {
            Reply::Opened { grant, .. } => grant,
            other => {
                tracing::debug!(?other, "durable reclaim refused by the lock service");
                return err(status::OBJECT_NAME_NOT_FOUND);
            }
        };
        let mut open = match self.shared.parked.take(persistent, lock_open, self.now) {
            Some(o) => o,
            None => match self.reopen(&blob, share) {
                Ok(o) => o,
                Err(st) => {
                    tracing::debug!(persistent, ?st, "durable open cannot be reopened");
                    let _ = self.shared.lock_request(
                        self.id,
                        0,
                        locking::Request::Close { open: lock_open },
                    );
                    return err(st);
                }
            },
        };
        let info = match crate::fs::file_info(&open.abs, self.shared.clock.filetime()) {
            Ok(info) => info,
            Err(_) => {
                let _ = self.shared.lock_request(
                    self.id,
                    0,
                    locking::Request::Close { open: lock_open },
                );
                return err(status::OBJECT_NAME_NOT_FOUND);
            }
        };
        let mut contexts = Vec::new();
        let oplock_level = match &grant {
            OplockGrant::Lease(l) => {
                let r = blob.lease.unwrap_or_default();
                contexts.push(smb_proto::create_ctx::lease_response(&LeaseContext {
                    key: l.key.0,
                    state: l.state.0 as u32,
                    flags: 0,
                    duration: 0,
                    parent_key: r.parent_key,
                    epoch: l.epoch.or(r.epoch.map(|_| 0)),
                }));
                smb_proto::oplock_level::LEASE
            }
            OplockGrant::Oplock(l) => *l as u8,
            OplockGrant::None => smb_proto::oplock_level::NONE,
        };
        open.session_id = session_id;
        open.tree_id = tree_id;
        open.lock_open = Some(lock_open);
        open.grant = grant;
        let fid = FileId {
            persistent,
            volatile: persistent,
        };
        // A replayed DH2Q (see `replayed_create`) gets the original CREATE's action; a DH2C
        // reconnect opens what exists.
        let action = match open.replay {
            Some(r) if c.context(smb_proto::ctx::DH2Q).is_some() => {
                // ... and its durable (persistent) context, as the first answer had.
                if let Some(d) = &open.durable {
                    contexts.insert(0, smb_proto::create_ctx::durable_response(&d.kind));
                }
                r.create_action
            }
            _ => create_action::OPENED,
        };
        self.add_open(persistent, open);
        tracing::debug!(conn = self.id, persistent, "durable open reconnected");
        Outcome::Reply(
            status::SUCCESS,
            Response::Create(create_response(&info, oplock_level, action, fid, contexts)),
        )
    }

    /// MS-SMB2 3.3.5.9.10: a DH2Q whose CreateGuid names an open of this client that is still
    /// here is a replay (SMB2_FLAGS_REPLAY_OPERATION: answered with that open, so a client
    /// that resends a CREATE after a lost response gets the handle it already has) or, without
    /// the flag, STATUS_DUPLICATE_OBJECTID. `None`: no such open, the create proceeds.
    pub(crate) fn replayed_create(
        &mut self,
        c: &CreateRequest,
        create_guid: [u8; 16],
        hdr: &smb_proto::Header,
        ctx: &ChainCtx,
        share: usize,
    ) -> Option<Outcome> {
        let client_guid = self.neg.as_ref().map(|n| n.client_guid).unwrap_or_default();
        let replaying = hdr.flags & smb_proto::header::flags::REPLAY_OPERATION != 0;
        // The CREATE being replayed may still wait for a break (a conflicting oplock or lease
        // holder has not answered yet): the replay is refused at once with
        // STATUS_FILE_NOT_AVAILABLE, and the original completes as it would have. Windows
        // answers ACCESS_DENIED or lets the replay wait and fail with SHARING_VIOLATION;
        // Samba's answer (bug 14449, smbtorture smb2.replay.dhv2-pending*-sane) tells the
        // client to retry, which is what it must do. Pending creates are this connection's,
        // so this client's.
        let pending = self.pending.values().any(|p| {
            matches!(&p.kind, PendingKind::Create(cont)
                if matches!(cont.durable, Some(DurableKind::V2 { create_guid: g, .. }) if g == create_guid))
        });
        if pending {
            return Some(err(if replaying {
                status::FILE_NOT_AVAILABLE
            } else {
                status::DUPLICATE_OBJECTID
            }));
        }
        let found = self
            .opens
            .iter()
            .find(|(_, o)| o.replay.is_some_and(|r| r.names(create_guid, client_guid)));
        let Some((&v, o)) = found else {
            // A persistent open of this client that lost its connection (smbtorture
            // smb2.replay.replay5): the replay reclaims it, as a DH2C for its FileId would
            // (MS-SMB2 3.3.5.9.12 also finds persistent opens by CreateGuid).
            let persistent = self
                .shared
                .parked
                .find_replay(create_guid, client_guid, self.now)?;
            if !replaying {
                return Some(err(status::DUPLICATE_OBJECTID));
            }
            let rc = Reconnect {
                file_id: FileId {
                    persistent,
                    volatile: persistent,
                },
                v2: Some(create_guid),
                persistent: true,
            };
            return Some(self.durable_reconnect(c, rc, hdr, ctx, share));
        };
        if !replaying {
            return Some(err(status::DUPLICATE_OBJECTID));
        }
        let create_action = o.replay.map_or(create_action::OPENED, |r| r.create_action);
        let durable_state = o.durable.as_ref();
        let info = match crate::fs::file_info(&o.abs, self.shared.clock.filetime()) {
            Ok(info) => info,
            Err(_) => return Some(err(status::OBJECT_NAME_NOT_FOUND)),
        };
        // The replay is answered with the caching it asks for, as far as the open has it
        // (smbtorture smb2.replay, like Windows): the open itself is left as it is, and the
        // durable context comes back only if that caching would have earned one. A lease
        // request must name the open's lease.
        let lease_req = smb_proto::create_ctx::lease_request(c);
        let mut contexts = Vec::new();
        let (oplock_level, durable_ok) = match (&o.grant, lease_req) {
            (OplockGrant::Lease(l), req) if req.is_none_or(|r| r.key == l.key.0) => {
                // The lease as it is now: a later open of this client with the same key may
                // have upgraded it (smbtorture replay-dhv2-lease1/2).
                let state = self
                    .opens
                    .iter()
                    .filter_map(|(id, x)| match &x.grant {
                        OplockGrant::Lease(y) if y.key == l.key => Some((*id, y.state.0)),
                        _ => None,
                    })
                    .max()
                    .map_or(l.state.0, |(_, st)| st);
                let r = durable_state.and_then(|d| d.lease).unwrap_or_default();
                contexts.push(smb_proto::create_ctx::lease_response(&LeaseContext {
                    key: l.key.0,
                    state: state as u32,
                    flags: 0,
                    duration: 0,
                    parent_key: r.parent_key,
                    epoch: l.epoch,
                }));
                (
                    smb_proto::oplock_level::LEASE,
                    state & locking::LeaseState::HANDLE.0 != 0,
                )
            }
            (OplockGrant::Lease(_), _) | (_, Some(_)) => return Some(err(status::ACCESS_DENIED)),
            (_, None) => {
                let level = if c.oplock_level == smb_proto::oplock_level::LEASE {
                    smb_proto::oplock_level::NONE
                } else {
                    c.oplock_level
                };
                (level, level == smb_proto::oplock_level::BATCH)
            }
        };
        if let Some(d) = durable_state.filter(|d| durable_ok || d.is_persistent()) {
            contexts.insert(0, smb_proto::create_ctx::durable_response(&d.kind));
        }
        tracing::debug!(
            conn = self.id,
            volatile = v,
            "replayed CREATE answered with its open"
        );
        Some(Outcome::Reply(
            status::SUCCESS,
            Response::Create(create_response(
                &info,
                oplock_level,
                create_action,
                FileId {
                    persistent: v,
                    volatile: v,
                },
                contexts,
            )),
        ))
    }

    /// The disconnected durable open `persistent` and its blob, or whether a connection (here
    /// or on another node) still holds it.
    fn lookup_disconnected(&self, persistent: u64) -> Lookup {
        match self.shared.lock_request(
            self.id,
            0,
            locking::Request::DurableLookup { key: persistent },
        ) {
            Reply::Durable { open, blob } => Lookup::Found(open, blob),
            Reply::Done(locking::Status::InvalidDeviceState) => Lookup::Held,
            _ => Lookup::Gone,
        }
    }

    /// Open the file of a durable open another node (or an earlier run of this one) had.
    fn reopen(&self, b: &DurableBlob, share: usize) -> Result<Open, NtStatus> {
        use std::os::unix::fs::MetadataExt;
        let sh = &self.shared.shares[share];
        let rel = PathBuf::from(&b.rel);
        if !b.stream.is_empty() || !crate::fs::rel_is_safe(&rel) {
            // Named streams are only resumed on the node that had them.
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        let abs = sh.root.join(&rel);
        let meta = crate::fs::symlink_metadata(&abs).map_err(|_| status::OBJECT_NAME_NOT_FOUND)?;
        // The same file, not another one created under the name since (Samba compares the
        // file id too).
        if crate::fs::stable_file_id(sh.fs_id, meta.ino(), "") != b.stable_id
            || meta.is_dir() != b.is_dir
        {
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        // A directory is held by an O_PATH descriptor (open.rs, Open::pin).
        let pin = if b.is_dir {
            Some(
                sh.dir
                    .open_file(&rel, libc::O_PATH, 0)
                    .map_err(|_| status::OBJECT_NAME_NOT_FOUND)?,
            )
        } else {
            None
        };
        let file = if b.is_dir {
            None
        } else {
            Some(
                open_data(&sh.dir, &rel, sh.read_only)
                    .map_err(|_| status::OBJECT_NAME_NOT_FOUND)?,
            )
        };
        // The check above went by name: the name may have been swapped for another object
        // before the open. What counts is the object the descriptor holds.
        let held = file.as_ref().or(pin.as_ref()).map(|f| f.metadata());
        if !matches!(held, Some(Ok(m)) if m.is_dir() == b.is_dir
            && crate::fs::stable_file_id(sh.fs_id, m.ino(), "") == b.stable_id)
        {
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        Ok(Open {
            session_id: 0,
            tree_id: 0,
            share,
            abs,
            rel,
            stream: None,
            file,
            pin,
            is_dir: b.is_dir,
            access: b.access,
            share_access: b.share_access & 0x7,
            lock_open: None,
            stable_id: b.stable_id,
            dir: None,
            position: 0,
            mode: 0,
            delete_pending: false,
            grant: OplockGrant::None,
            notify: None,
            resilient: false,
            durable: Some(DurableState {
                kind: b.kind.clone(),
                share_access: b.share_access,
                lease: b.lease,
            }),
            replay: match b.kind {
                DurableKind::V2 { create_guid, .. } => Some(crate::open::ReplayRecord {
                    create_guid,
                    client_guid: b.client_guid,
                    create_action: create_action::OPENED,
                }),
                DurableKind::V1 => None,
            },
            channel_sequence: 0,
            locks: Vec::new(),
            lock_seq: [0xFF; 64],
            write_time: Default::default(),
            identity: crate::identity::current(),
        })
    }

    /// The connection or one of its sessions is going away: durable opens become disconnected
    /// in the lock service (MS-SMB2 3.3.7.1) and their handle state is parked here.
    pub(crate) fn park_durable_opens(&mut self, session: Option<u64>) {
        let ids: Vec<u64> = self
            .opens
            .iter()
            .filter(|(_, o)| {
                o.durable.is_some()
                    && !o.delete_pending
                    && session.is_none_or(|s| o.session_id == s)
            })
            .map(|(v, _)| *v)
            .collect();
        for v in ids {
            // A LastWriteTime update the open's writes still owe happens now rather than
            // never (its timer and close go with the connection), and its hold goes
            // (crate::write_time; a reconnect starts afresh).
            self.settle_write_time(v);
            let Some(mut o) = self.take_open(v) else {
                continue;
            };
            // A parked handle watches nothing (a reconnect asks again).
            self.end_notify_watch(&o);
            o.notify = None;
            let Some(lo) = o.lock_open else {
                continue;
            };
            let r = self
                .shared
                .lock_request(self.id, 0, locking::Request::Disconnect { open: lo });
            match r {
                Reply::Done(locking::Status::Success) => self.shared.parked.park(v, o, self.now),
                Reply::Closed { delete_file } => {
                    // Not kept (a break was in flight, or delete-on-close): closed instead.
                    o.lock_open = None;
                    if delete_file {
                        if let Some(st) = &o.stream {
                            // A named stream's own delete leaves its file alone.
                            let _ = crate::streams::remove_data(&st.path);
                        } else {
                            // With the opener's credentials, as close_open does.
                            if let Some(id) = &o.identity {
                                crate::identity::become_user(id);
                            }
                            let _ = self.shared.shares[o.share].dir.unlink(&o.rel, o.is_dir);
                        }
                    }
                }
                Reply::ClosedDeleteBase => {
                    // The stream's file was delete-pending and this was its last open.
                    o.lock_open = None;
                    if let Some(id) = &o.identity {
                        crate::identity::become_user(id);
                    }
                    let _ = self.shared.shares[o.share].dir.unlink(&o.rel, false);
                }
                other => tracing::debug!(?other, "durable open not disconnected"),
            }
            // A reconnect may be waiting for this connection to let the open go.
            self.shared.durable_released(v);
        }
    }
}

/// Open a file's data (beneath the share root, crate::beneath) read-write if the share allows,
/// read-only otherwise.
fn open_data(
    dir: &crate::beneath::ShareRoot,
    rel: &Path,
    read_only: bool,
) -> std::io::Result<std::fs::File> {
    if !read_only {
        if let Ok(f) = dir.open_file(rel, libc::O_RDWR, 0) {
            return Ok(f);
        }
    }
    dir.open_file(rel, libc::O_RDONLY, 0)
}

/// How long a durable reconnect waits for the connection that still holds its open (worker
/// 0's timer is armed for the deadline, crate::worker).
const RECONNECT_WAIT: Duration = Duration::from_millis(200);

/// The result of one reconnect attempt.
enum Attempt {
    Done(Outcome),
    /// The open's old connection still holds it: wait.
    Wait,
}

/// What the lock service knows of a durable open.
enum Lookup {
    /// Disconnected: its lock-service open and the blob stored with it.
    Found(locking::OpenId, Vec<u8>),
    /// Still held by a connection.
    Held,
    Gone,
}
