//! Asynchronous operations: going async with an interim response, completing, CANCEL
//! (MS-SMB2 3.3.4.2, 3.3.5.16).

use smb_proto::header::flags;
use smb_proto::NtStatus;
use smb_proto::{status, Command, Header, Response, Writer};

use crate::locking::{self};

use super::state::{AuthState, ChainCtx, Outcome, PendingKind, PendingOp};
use super::Conn;

impl Conn {
    pub(crate) fn go_async(&mut self, hdr: &Header, ctx: &ChainCtx, kind: PendingKind) -> u64 {
        self.next_async += 1;
        let id = self.next_async;
        self.pending.insert(
            id,
            PendingOp {
                channel: self.cur_channel,
                rest: None,
                message_id: hdr.message_id,
                session_id: hdr.session_id,
                tree_id: hdr.tree_id,
                command: Command::from_u16(hdr.command).unwrap_or(Command::Echo),
                encrypted: ctx.encrypted,
                signed: hdr.flags & flags::SIGNED != 0,
                kind,
            },
        );
        id
    }

    /// Send the final response of an async operation.
    pub(crate) fn complete_async(&mut self, async_id: u64, st: NtStatus, body: Response) {
        let Some(p) = self.pending.remove(&async_id) else {
            return;
        };
        let h = Header {
            status: st,
            command: p.command as u16,
            credits: 0,
            flags: flags::SERVER_TO_REDIR | flags::ASYNC_COMMAND,
            message_id: p.message_id,
            async_id,
            session_id: p.session_id,
            ..Default::default()
        };
        let mut w = Writer::new();
        h.encode(&mut w);
        body.encode_body(&mut w, 0);
        let mut msg = w.buf;
        let enc = (p.encrypted || self.session_wants_encryption(p.session_id, p.tree_id))
            .then_some(p.session_id);
        // The answer goes out on the connection the request came in on.
        let outer = self.cur_channel;
        let mut saved = std::mem::take(&mut self.channel_out);
        self.cur_channel = p.channel;
        if enc.is_none() {
            if let Some((alg, key)) = self.signer_for(p.session_id, p.signed) {
                smb_proto::header::mark_signed(&mut msg);
                let _ = smb_auth::signing::sign(alg, &key, &mut msg);
            }
        }
        self.emit(msg, enc);
        self.cur_channel = outer;
        if let Some(ch) = p.channel.filter(|ch| Some(*ch) != outer) {
            self.flush_channel_out(ch, false);
        }
        saved.append(&mut self.channel_out);
        self.channel_out = saved;
    }

    /// MS-SMB2 3.3.5.2.4 applies to CANCEL too: on a session that signs, an unsigned or badly
    /// signed CANCEL must not abort a request the client sent signed (a blocking lock, a
    /// waiting create, a notify). Sealed CANCELs were authenticated by decryption.
    pub(super) fn cancel_allowed(&self, hdr: &Header, ctx: &ChainCtx, m: &[u8]) -> bool {
        if ctx.encrypted || hdr.session_id == 0 {
            // Session 0 names no session, so it matches no pending request (see `cancel`).
            return true;
        }
        let Some(s) = self.sessions.get(&hdr.session_id) else {
            return true;
        };
        if !matches!(s.state, AuthState::Valid) || s.anonymous {
            return true;
        }
        if s.encrypt && s.keys.as_ref().is_some_and(|k| !k.decryption.is_empty()) {
            tracing::debug!(
                conn = self.id,
                "unsealed CANCEL on an encrypted session ignored"
            );
            return false;
        }
        if hdr.flags & flags::SIGNED != 0 {
            if let Some((alg, key)) = self.signing_pair(hdr.session_id) {
                if !smb_auth::signing::verify(alg, &key, m) {
                    tracing::info!(conn = self.id, "CANCEL with a bad signature ignored");
                    return false;
                }
            }
        } else if s.signing_required {
            tracing::info!(
                conn = self.id,
                "unsigned CANCEL on a signing session ignored"
            );
            return false;
        }
        true
    }

    pub(super) fn cancel(&mut self, hdr: &Header) -> Outcome {
        let found = self
            .pending
            .iter()
            .find(|(aid, p)| {
                // Only the session that sent a request can cancel it, on the connection it
                // came in on (MessageIds are per connection).
                if p.session_id != hdr.session_id || p.channel != self.cur_channel {
                    return false;
                }
                if hdr.is_async() {
                    **aid == hdr.async_id
                } else {
                    p.message_id == hdr.message_id
                }
            })
            .map(|(aid, _)| *aid);
        if let Some(aid) = found {
            self.cancel_pending(aid, status::CANCELLED);
        }
        Outcome::Nothing
    }

    pub(crate) fn cancel_pending(&mut self, aid: u64, st: NtStatus) {
        let Some(p) = self.pending.get(&aid) else {
            return;
        };
        match &p.kind {
            // The handle keeps watching (its watch ends when it is closed).
            PendingKind::Notify { .. } => {
                if st == status::INTERNAL_ERROR {
                    self.pending.remove(&aid);
                } else {
                    self.complete_async(aid, st, Response::Error { data: vec![] });
                }
            }
            PendingKind::DurableReconnect(t) => {
                self.shared
                    .stop_waiting_for_durable(t.rc.file_id.persistent, self.id);
                self.complete_async(aid, st, Response::Error { data: vec![] });
            }
            // Nothing was asked of the lock service yet; a later HangupDone finds no waiter.
            PendingKind::AfterHangup(_) => {
                self.complete_async(aid, st, Response::Error { data: vec![] });
            }
            PendingKind::Lock { .. }
            | PendingKind::Create(_)
            | PendingKind::Rename { .. }
            | PendingKind::Disposition { .. }
            | PendingKind::Close { .. } => {
                // The lock service answers with Completed{Done(Cancelled)}, which finishes it.
                let mid = p.message_id;
                let r = self.shared.lock_request(
                    self.id,
                    0,
                    locking::Request::Cancel {
                        request: locking::RequestId(mid),
                    },
                );
                tracing::debug!(conn = self.id, ?r, "cancel sent to lock service");
            }
        }
    }
}
