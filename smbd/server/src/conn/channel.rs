//! Multichannel: binding a session owned by another connection (MS-SMB2 3.3.5.5.2) and
//! forwarding the bound channel's requests to the owner.

use smb_auth::keys::SigningAlgorithm;
use smb_auth::ntlm::NtlmServer;
use smb_proto::header::flags;
use smb_proto::{dialect, status, Command, Header, Request, Response, SessionSetupRequest};

use crate::shared::Event;

use super::session::{auth_status, ntlm_leg, NtlmLeg};
use super::state::{err, Binding, BoundChannel, ChainCtx, Outcome, Signer};
use super::Conn;

impl Conn {
    /// SESSION_SETUP with SMB2_SESSION_FLAG_BINDING (MS-SMB2 3.3.5.5.2): checks in the order
    /// Windows and Samba apply them, then an authentication of the session's user on this
    /// connection. Refusals are signed with the session's key (the client verifies them with
    /// it); the final response with the new Channel.SigningKey (3.3.5.5.3).
    pub(super) fn bind_session(
        &mut self,
        req: &SessionSetupRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
        m: &[u8],
    ) -> Outcome {
        let sid = hdr.session_id;
        ctx.session_id = sid;
        if let Some(b) = self.bound.get(&sid) {
            // Already a channel of this session: only a request signed with the channel key
            // gets the real answer.
            let signer = b.signer.clone();
            if !self.signed_request {
                return err(status::INVALID_PARAMETER);
            }
            let ok = smb_auth::signing::verify(signer.0, &signer.1, m);
            self.override_signer = Some(signer);
            if !ok {
                return err(status::ACCESS_DENIED);
            }
            return err(status::REQUEST_NOT_ACCEPTED);
        }
        if !self.binding.contains_key(&sid) {
            let rec = match self.binding_checks(sid) {
                Ok(rec) => rec,
                Err(o) => return o,
            };
            let ntlm = NtlmServer::new(
                self.shared.users.clone(),
                &self.shared.config.server.netbios_name,
                &self.shared.config.server.domain,
            );
            self.binding.insert(
                sid,
                Binding {
                    ntlm: Box::new(ntlm),
                    preauth: self.conn_preauth.clone(),
                    rec,
                },
            );
        }
        let is311 = self.dialect() == dialect::SMB311;
        let dial = self.auth_dialect();
        let Some(n) = self.neg.as_ref() else {
            return err(status::INVALID_PARAMETER);
        };
        let (cur_alg, cipher) = (n.signing_alg, n.cipher);
        let Some(b) = self.binding.get_mut(&sid) else {
            return err(status::USER_SESSION_DELETED);
        };
        // The client signs binding requests with the session's signing key and algorithm.
        let session_signer = (b.rec.signing_alg, b.rec.signing_key.clone());
        self.override_signer = Some(session_signer.clone());
        if !self.signed_request
            || !(smb_auth::signing::verify(session_signer.0, &session_signer.1, m)
                || smb_auth::signing::verify(cur_alg, &session_signer.1, m))
        {
            self.binding.remove(&sid);
            return err(status::ACCESS_DENIED);
        }
        if is311 {
            b.preauth.update(m);
        }
        match ntlm_leg(&mut b.ntlm, &req.buffer) {
            NtlmLeg::More(reply) => reply,
            NtlmLeg::Done(auth) => {
                let Some(b) = self.binding.remove(&sid) else {
                    return err(status::USER_SESSION_DELETED);
                };
                if auth.anonymous || auth.user.to_lowercase() != b.rec.user {
                    // MS-SMB2 3.3.5.5.2: the binding user must be the session's user.
                    tracing::info!(conn = self.id, sid, user = %auth.user, "binding by another user refused");
                    return err(status::ACCESS_DENIED);
                }
                let keys = auth.keys(dial, &b.preauth, cipher);
                let signer: Signer = (cur_alg, keys.signing.clone());
                if self.shared.session_record(sid).is_none() {
                    return err(status::USER_SESSION_DELETED);
                }
                if !self.shared.channel_added(sid) {
                    return err(status::INSUFFICIENT_RESOURCES);
                }
                let delivered = self.shared.post_event(
                    b.rec.conn,
                    Event::ChannelBound {
                        session_id: sid,
                        channel: self.id,
                        signing_alg: signer.0,
                        signing_key: crate::shared::ChannelKey(signer.1.clone()),
                    },
                );
                if !delivered {
                    self.shared.channel_removed(sid);
                    return err(status::USER_SESSION_DELETED);
                }
                tracing::info!(conn = self.id, sid, owner = b.rec.conn, "session bound");
                self.bound.insert(
                    sid,
                    BoundChannel {
                        owner: b.rec.conn,
                        signer: signer.clone(),
                    },
                );
                self.override_signer = Some(signer);
                Outcome::Reply(
                    status::SUCCESS,
                    Response::SessionSetup {
                        flags: 0,
                        buffer: auth.token,
                    },
                )
            }
            NtlmLeg::Failed(e) => {
                tracing::info!(conn = self.id, sid, %e, "binding authentication failed");
                self.binding.remove(&sid);
                err(auth_status(&e))
            }
        }
    }

    /// MS-SMB2 3.3.5.5.2 checks of a new binding, in Samba's order (which matches what
    /// smbtorture expects from Windows): the session's record, or the refusal to send.
    pub(super) fn binding_checks(
        &mut self,
        sid: u64,
    ) -> Result<crate::shared::SessionRecord, Outcome> {
        let Some(rec) = (sid != 0)
            .then(|| self.shared.session_record(sid))
            .flatten()
        else {
            return Err(err(if sid == 0 {
                status::INVALID_PARAMETER
            } else {
                status::USER_SESSION_DELETED
            }));
        };
        let Some(n) = self.neg.as_ref() else {
            return Err(err(status::INVALID_PARAMETER));
        };
        let cur = n.signing_alg;
        let st = if rec.signing_alg == SigningAlgorithm::AesGmac && cur != rec.signing_alg {
            status::REQUEST_OUT_OF_SEQUENCE
        } else if cur == SigningAlgorithm::AesGmac && cur != rec.signing_alg {
            status::NOT_SUPPORTED
        } else if n.dialect < dialect::SMB300 || !self.shared.config.server.multichannel {
            status::REQUEST_NOT_ACCEPTED
        } else if !self.signed_request || rec.dialect != n.dialect || rec.cipher != n.cipher {
            status::INVALID_PARAMETER
        } else if rec.conn == self.id {
            // The session's own connection is already one of its channels.
            status::REQUEST_NOT_ACCEPTED
        } else {
            return Ok(rec);
        };
        // The refusal is signed with the session's key; across an SMB 2.x / 3.x mix the
        // client verifies it with the session's own algorithm (HMAC-SHA256 vs AES-CMAC).
        let alg = if rec.dialect < dialect::SMB300 || n.dialect < dialect::SMB300 {
            rec.signing_alg
        } else {
            cur
        };
        if self.signed_request {
            self.override_signer = Some((alg, rec.signing_key));
        }
        Err(err(st))
    }

    pub(super) fn remember_ended(&mut self, sid: u64, signer: Signer) {
        if self.unbound.len() >= 64 {
            self.unbound.clear();
        }
        self.unbound.insert(sid, signer);
    }

    /// Send what was produced for bound connection `channel` back to it.
    pub(super) fn flush_channel_out(&mut self, channel: u64, close: bool) {
        let frames = std::mem::take(&mut self.channel_out);
        if frames.is_empty() && !close {
            return;
        }
        self.shared
            .post_event(channel, Event::ChannelOutput { frames, close });
    }

    /// Session `sid` ended: its bound channels forget it.
    pub(super) fn end_channels(&mut self, sid: u64) {
        let gone: Vec<u64> = self
            .channels
            .keys()
            .filter(|(_, s)| *s == sid)
            .map(|(ch, _)| *ch)
            .collect();
        for ch in gone {
            self.channels.remove(&(ch, sid));
            self.shared
                .post_event(ch, Event::ChannelGone { session_id: sid });
        }
    }

    /// A message for a session this connection is bound to goes to the session's owner,
    /// which holds its trees and opens (MS-SMB2 3.3.5.2.9: the session is found in the
    /// global table). Returns false when it is to be processed here.
    pub(super) fn forward_to_owner(&mut self, msg: &[u8]) -> bool {
        if self.bound.is_empty() {
            return false;
        }
        let sid = if msg[0] == 0xFD {
            smb_auth::encryption::transform_session_id(msg)
        } else {
            Header::decode(msg).ok().map(|h| h.session_id)
        };
        let Some(sid) = sid else {
            return false;
        };
        let Some(b) = self.bound.get(&sid) else {
            return false;
        };
        if msg[0] == 0xFE {
            let Ok(h) = Header::decode(msg) else {
                return false;
            };
            if h.command == Command::SessionSetup as u16 {
                // Binding again, or an unverifiable reauthentication, is answered here.
                let first = smb_proto::split_compound(msg)
                    .ok()
                    .and_then(|v| v.first().map(|m| m.to_vec()))
                    .unwrap_or_default();
                let binding = matches!(
                    Request::decode_body(Command::SessionSetup, &first),
                    Ok(Request::SessionSetup(ref r)) if r.flags & smb_proto::SESSION_FLAG_BINDING != 0
                );
                // A reauthentication goes to the owner (the client signs it only when the
                // session requires signing; the owner checks that).
                if binding
                    || (h.flags & flags::SIGNED != 0
                        && !smb_auth::signing::verify(b.signer.0, &b.signer.1, &first))
                {
                    return false;
                }
            }
        }
        let owner = b.owner;
        if self.shared.session_record(sid).is_none()
            || !self.shared.post_event(
                owner,
                Event::ChannelMessage {
                    channel: self.id,
                    msg: msg.to_vec(),
                    seq: self.seq.clone(),
                },
            )
        {
            self.bound.remove(&sid);
            return false;
        }
        true
    }
}
