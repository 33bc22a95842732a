//! Oplock and lease breaks: notifications from the lock service and the client's
//! acknowledgments (MS-SMB2 3.3.4.6, 3.3.4.7, 3.3.5.22).

use smb_proto::cursor::Writer;
use smb_proto::header::flags as hflags;
use smb_proto::{status, BreakAck, FileId, Header, Response};

use super::{engine_status, oplock_grant_level};
use crate::break_delivery::{BreakDelivery, ChannelPolicy};
use crate::conn::{err, ChainCtx, Conn, Outcome, PendingKind};
use crate::locking::{
    self, LeaseKey, LeaseState, Notification, OplockGrant, OplockLevel, Reply, Status,
};
use crate::shared::Event;

impl Conn {
    pub(crate) fn break_ack(&mut self, a: BreakAck, ctx: &mut ChainCtx) -> Outcome {
        match a {
            BreakAck::Oplock { level, file_id } => {
                ctx.any_tree = true;
                let v = self.resolve_fid(file_id, ctx);
                ctx.any_tree = false;
                let v = match v {
                    Ok(v) => v,
                    Err(st) => return err(st),
                };
                let Some(lo) = self.opens.get(&v).and_then(|o| o.lock_open) else {
                    return err(status::FILE_CLOSED);
                };
                let Some(level_e) = OplockLevel::from_wire(level) else {
                    return err(status::INVALID_PARAMETER);
                };
                match self.shared.lock_request(
                    self.id,
                    0,
                    locking::Request::OplockBreakAck {
                        open: lo,
                        level: level_e,
                    },
                ) {
                    Reply::Acked { grant } => {
                        let lvl = oplock_grant_level(&grant);
                        if let Some(o) = self.opens.get_mut(&v) {
                            o.grant = grant;
                        }
                        Outcome::Reply(
                            status::SUCCESS,
                            Response::OplockBreak {
                                level: lvl,
                                file_id,
                            },
                        )
                    }
                    Reply::Done(st) => err(engine_status(st)),
                    _ => err(status::INTERNAL_ERROR),
                }
            }
            BreakAck::Lease { key, state, .. } => {
                match self.shared.lock_request(
                    self.id,
                    0,
                    locking::Request::LeaseBreakAck {
                        client_guid: self.client_guid(),
                        key: LeaseKey(key),
                        state: LeaseState((state & 0x7) as u8),
                    },
                ) {
                    Reply::Acked { grant } => {
                        let st = match grant {
                            OplockGrant::Lease(l) => l.state.0 as u32,
                            _ => state,
                        };
                        Outcome::Reply(
                            status::SUCCESS,
                            Response::LeaseBreakAck {
                                flags: 0,
                                key,
                                state: st,
                            },
                        )
                    }
                    Reply::Done(Status::Success) => Outcome::Reply(
                        status::SUCCESS,
                        Response::LeaseBreakAck {
                            flags: 0,
                            key,
                            state,
                        },
                    ),
                    Reply::Done(st) => err(engine_status(st)),
                    _ => err(status::INTERNAL_ERROR),
                }
            }
        }
    }

    /// Send an unsolicited OPLOCK_BREAK notification (MS-SMB2 3.3.4.6 / 3.3.4.7).
    pub(super) fn send_break(&mut self, session_id: u64, body: Response) {
        let policy = match body {
            Response::LeaseBreakNotification { .. } => {
                self.shared.metrics.lease_breaks.inc();
                ChannelPolicy::Each
            }
            _ => {
                self.shared.metrics.oplock_breaks.inc();
                self.shared.config.server.oplock_break_channels
            }
        };
        let h = Header {
            command: smb_proto::Command::OplockBreak as u16,
            flags: hflags::SERVER_TO_REDIR,
            message_id: u64::MAX,
            ..Default::default()
        };
        let mut w = Writer::new();
        h.encode(&mut w);
        body.encode_body(&mut w, 0);
        let enc = self
            .sessions
            .get(&session_id)
            .is_some_and(|s| s.encrypt || s.trees.values().any(|t| t.encrypt))
            .then_some(session_id);
        if let Some(frame) = self.seal(w.buf, enc) {
            self.deliver_break(BreakDelivery::new(self.id, session_id, frame, policy));
        }
    }

    /// Send a break on the next channel of its session that has not had it
    /// (crate::break_delivery): this connection's own transport while it lives, then the
    /// bound channels in the order they were bound. Called again, through
    /// [`crate::shared::Event::BreakUndelivered`], each time a channel fails before the
    /// client's TCP acknowledged the break.
    pub(crate) fn deliver_break(&mut self, mut d: BreakDelivery) {
        if d.session_id != 0 && !self.sessions.contains_key(&d.session_id) {
            // The session ended: its opens and leases went with it.
            return;
        }
        let own = (!self.transport_lost).then_some(self.id);
        let mut bound: Vec<u64> = self
            .channels
            .keys()
            .filter(|(_, s)| d.session_id != 0 && *s == d.session_id)
            .map(|(ch, _)| *ch)
            .collect();
        bound.sort_unstable();
        let retry = !d.tried.is_empty();
        while let Some(ch) = d.next_channel(own.into_iter().chain(bound.iter().copied())) {
            d.tried.push(ch);
            if retry {
                self.shared.metrics.break_retries.inc();
                tracing::info!(
                    conn = self.id,
                    session_id = d.session_id,
                    channel = ch,
                    attempt = d.tried.len(),
                    "break not acknowledged on its channel; sending it on the next one"
                );
            }
            if ch == self.id {
                // Straight to this transport, also while answering a bound channel's request.
                self.queue_break(d);
                return;
            }
            if self.shared.post_event(ch, Event::SendBreak(d.clone())) {
                return;
            }
            // That channel is gone already: the next one.
        }
        tracing::info!(
            conn = self.id,
            session_id = d.session_id,
            tried = d.tried.len(),
            "break not delivered: no channel of the session is left to carry it"
        );
    }

    /// Queue break `d` on this connection's transport; the worker watches for its TCP
    /// acknowledgement (`breaks_out`).
    pub(crate) fn queue_break(&mut self, d: BreakDelivery) {
        self.out.push(d.frame.clone());
        self.breaks_out.push(d);
    }

    /// A lock-service request whose notifications for this connection (the breaks it
    /// causes) are sent before its reply is acted on ([`crate::shared::Shared::lock_request_inline`]).
    pub(super) fn lock_request_breaks_first(
        &mut self,
        id: u64,
        req: crate::locking::Request,
    ) -> Reply {
        let (reply, own) = self.shared.lock_request_inline(self.id, id, req);
        for n in own {
            self.on_lock_notification(n);
        }
        reply
    }

    pub(crate) fn on_lock_notification(&mut self, n: Notification) {
        match n {
            Notification::OplockBreak { open, new_level } => {
                let Some((v, sid)) = self
                    .opens
                    .iter()
                    .find(|(_, o)| o.lock_open == Some(open))
                    .map(|(v, o)| (*v, o.session_id))
                else {
                    return;
                };
                self.send_break(
                    sid,
                    Response::OplockBreak {
                        level: new_level as u8,
                        file_id: FileId {
                            persistent: v,
                            volatile: v,
                        },
                    },
                );
            }
            Notification::LeaseBreak {
                key,
                current,
                new,
                epoch,
                ack_required,
                ..
            } => {
                let sid = self
                    .opens
                    .values()
                    .find(|o| matches!(&o.grant, OplockGrant::Lease(l) if l.key == key))
                    .map(|o| o.session_id)
                    .unwrap_or(0);
                self.send_break(
                    sid,
                    Response::LeaseBreakNotification {
                        epoch: epoch.unwrap_or(0),
                        flags: ack_required as u32,
                        key: key.0,
                        current: current.0 as u32,
                        new: new.0 as u32,
                    },
                );
            }
            Notification::Completed { request, reply } => {
                let Some(aid) = self
                    .pending
                    .iter()
                    .find(|(_, p)| {
                        p.message_id == request.0
                            && matches!(
                                p.kind,
                                PendingKind::Lock { .. }
                                    | PendingKind::Create(_)
                                    | PendingKind::Rename { .. }
                                    | PendingKind::Disposition { .. }
                                    | PendingKind::Close { .. }
                            )
                    })
                    .map(|(a, _)| *a)
                else {
                    // Nobody waits for it (a share-check open cancelled after its grant was
                    // on the way, `Shared::share_check_open`): an open granted anyway is
                    // given back.
                    if let Reply::Opened { open, .. }
                    | Reply::OpenedIo { open, .. }
                    | Reply::OpenedDurable { open, .. } = reply
                    {
                        let _ =
                            self.shared
                                .lock_request(self.id, 0, locking::Request::Close { open });
                    }
                    return;
                };
                // The deferred operation continues with its session's credentials.
                if let Some(id) = self
                    .pending
                    .get(&aid)
                    .and_then(|p| self.sessions.get(&p.session_id))
                    .and_then(|s| s.identity.clone())
                {
                    crate::identity::become_user(&id);
                }
                let is_create = matches!(
                    self.pending.get(&aid).map(|p| &p.kind),
                    Some(PendingKind::Create(_))
                );
                let after_break = match self.pending.get(&aid).map(|p| &p.kind) {
                    Some(PendingKind::Rename {
                        volatile,
                        buffer,
                        class,
                    }) => Some(AfterBreak::Rename(*volatile, buffer.clone(), *class)),
                    Some(PendingKind::Disposition { volatile, delete }) => {
                        Some(AfterBreak::Disposition(*volatile, *delete))
                    }
                    Some(PendingKind::Close { volatile, flags }) => {
                        Some(AfterBreak::Close(*volatile, *flags))
                    }
                    _ => None,
                };
                if let Some(AfterBreak::Close(v, flags)) = after_break {
                    // The close happens whatever became of the breaks: a CLOSE cannot fail.
                    // `BreakAndClose` closed it already unless cancelled (then it closes now).
                    let closed = matches!(reply, Reply::Closed { .. } | Reply::ClosedDeleteBase)
                        .then_some(reply);
                    let resp = self.finish_close_with(v, flags, closed);
                    self.complete_async(aid, status::SUCCESS, Response::Close(resp));
                } else if let Some(next) = after_break {
                    let st = match (reply, next) {
                        (Reply::Done(Status::Success), AfterBreak::Rename(v, buffer, class)) => {
                            self.set_rename(v, &buffer, class)
                        }
                        (Reply::Done(Status::Success), AfterBreak::Disposition(v, delete)) => {
                            self.set_disposition(v, delete)
                        }
                        (Reply::Done(st), _) => engine_status(st),
                        _ => status::INTERNAL_ERROR,
                    };
                    tracing::debug!(conn = self.id, ?st, "set-info after handle-caching break");
                    if st == status::SUCCESS {
                        self.complete_async(aid, st, Response::SetInfo);
                    } else {
                        self.complete_async(aid, st, Response::Error { data: vec![] });
                    }
                } else if is_create {
                    let Some(p) = self.pending.get_mut(&aid) else {
                        return;
                    };
                    let PendingKind::Create(cont) =
                        std::mem::replace(&mut p.kind, PendingKind::Lock { volatile: 0 })
                    else {
                        return;
                    };
                    let rest = p.rest.take();
                    let durable = matches!(
                        reply,
                        Reply::OpenedDurable { .. } | Reply::OpenedIo { durable: true, .. }
                    );
                    let (st, fid) = match reply {
                        // An I/O grant was recorded when the completion was routed (`Shared`).
                        Reply::Opened { open, grant }
                        | Reply::OpenedDurable { open, grant }
                        | Reply::OpenedIo { open, grant, .. } => {
                            // A durable open parked while this one waited for its break is
                            // gone for good (its client could not acknowledge the break).
                            self.shared.parked.purge_conflicting(
                                cont.stable_id,
                                cont.access,
                                cont.share_access,
                                cont.lease.as_ref().map(|l| l.key),
                                self.now,
                            );
                            let (out, fid) = self.finish_create(*cont, open, grant, durable);
                            match out {
                                Outcome::Reply(st, body) => {
                                    self.complete_async(aid, st, body);
                                    (st, fid)
                                }
                                _ => {
                                    self.complete_async(
                                        aid,
                                        status::INTERNAL_ERROR,
                                        Response::Error { data: vec![] },
                                    );
                                    (status::INTERNAL_ERROR, None)
                                }
                            }
                        }
                        Reply::Done(st) => {
                            Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                            let st = engine_status(st);
                            self.complete_async(aid, st, Response::Error { data: vec![] });
                            (st, None)
                        }
                        _ => {
                            Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                            self.complete_async(
                                aid,
                                status::INTERNAL_ERROR,
                                Response::Error { data: vec![] },
                            );
                            (status::INTERNAL_ERROR, None)
                        }
                    };
                    self.resume_chain_after_create(rest, st, fid);
                } else {
                    match reply {
                        Reply::Done(Status::Success) => {
                            self.complete_async(aid, status::SUCCESS, Response::Lock)
                        }
                        Reply::Done(st) => self.complete_async(
                            aid,
                            engine_status(st),
                            Response::Error { data: vec![] },
                        ),
                        _ => self.complete_async(
                            aid,
                            status::INTERNAL_ERROR,
                            Response::Error { data: vec![] },
                        ),
                    }
                }
            }
            other => tracing::debug!(?other, "unhandled lock notification"),
        }
    }
}

/// What a request that waited for handle-caching breaks does once they are resolved.
enum AfterBreak {
    /// SET_INFO FileRenameInformation: open, buffer, information class.
    Rename(u64, Vec<u8>, u8),
    /// SET_INFO FileDispositionInformation: open, delete.
    Disposition(u64, bool),
    /// CLOSE of a delete-on-close handle: open, CLOSE flags.
    Close(u64, u16),
}
