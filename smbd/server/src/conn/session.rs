//! SESSION_SETUP (authentication, re-authentication) and LOGOFF (MS-SMB2 3.3.5.5, 3.3.5.6).

use smb_proto::NtStatus;
use std::collections::HashMap;

use smb_auth::keys::{Cipher, Dialect, SessionKeys, SigningAlgorithm};
use smb_auth::ntlm::{AuthError, AuthStep, NtlmServer};
use smb_auth::preauth::PreauthHash;
use smb_proto::header::flags;
use smb_proto::{dialect, security_mode, status, Header, Response, SessionSetupRequest};

use super::state::{err, AuthState, ChainCtx, Outcome, Session};
use super::{Conn, SESSION_FLAG_ENCRYPT_DATA, SESSION_FLAG_IS_NULL};

impl Conn {
    pub(super) fn session_setup(
        &mut self,
        req: SessionSetupRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
        m: &[u8],
    ) -> Outcome {
        let is311 = self.dialect() == dialect::SMB311;
        let mut sid = hdr.session_id;
        if req.flags & smb_proto::SESSION_FLAG_BINDING != 0 {
            return self.bind_session(&req, hdr, ctx, m);
        }
        if let Some(b) = self
            .bound
            .get(&sid)
            .filter(|_| !self.sessions.contains_key(&sid))
        {
            // A reauthentication on a bound channel is forwarded to the session's owner when
            // it verifies with the channel key (see forward_to_owner); this one did not. The
            // client drops a connection whose answer is unsigned when it signed.
            self.override_signer = Some(b.signer.clone());
            return err(status::ACCESS_DENIED);
        }
        if sid == 0 {
            self.next_session += 1;
            sid = (self.id << 32) | self.next_session;
            let ntlm = NtlmServer::new(
                self.shared.users.clone(),
                &self.shared.config.server.netbios_name,
                &self.shared.config.server.domain,
            );
            let mut preauth = PreauthHash::new();
            if is311 {
                preauth = self.conn_preauth.clone();
            }
            self.sessions.insert(
                sid,
                Session {
                    state: AuthState::InProgress(Box::new(ntlm)),
                    reauth: None,
                    user: String::new(),
                    anonymous: false,
                    keys: None,
                    signing_required: false,
                    encrypt: false,
                    preauth,
                    trees: HashMap::new(),
                    identity: None,
                },
            );
        } else if self.sessions.contains_key(&sid) {
            if let Err(st) = self.check_reauth_signature(sid, ctx, m) {
                return err(st);
            }
            let Some(s) = self.sessions.get_mut(&sid) else {
                return err(status::USER_SESSION_DELETED);
            };
            if matches!(s.state, AuthState::Valid) && s.reauth.is_none() {
                s.reauth = Some(Box::new(NtlmServer::new(
                    self.shared.users.clone(),
                    &self.shared.config.server.netbios_name,
                    &self.shared.config.server.domain,
                )));
            }
        } else {
            // A session of another connection: the client signs with that session's key and
            // expects the refusal signed the same way.
            if self.signed_request {
                if let (Some(rec), Some(n)) = (self.shared.session_record(sid), self.neg.as_ref()) {
                    self.override_signer = Some((n.signing_alg, rec.signing_key));
                }
            }
            return err(status::USER_SESSION_DELETED);
        }
        ctx.session_id = sid;
        let dial = self.auth_dialect();
        let cipher = self.neg.as_ref().and_then(|n| n.cipher);
        let client_requires_signing =
            req.security_mode as u16 & security_mode::SIGNING_REQUIRED != 0;
        let server_requires_signing = self.shared.config.server.signing_required;
        let allow_anon = self.shared.config.server.allow_anonymous;
        let global_encrypt = self.shared.config.server.encrypt;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return err(status::USER_SESSION_DELETED);
        };
        if is311 && !matches!(s.state, AuthState::Valid) {
            // MS-SMB2 3.3.5.5: every SESSION_SETUP request goes into the session's preauth hash.
            s.preauth.update(m);
        }
        let step = {
            let ntlm: &mut NtlmServer = match (&mut s.state, &mut s.reauth) {
                (_, Some(r)) => r,
                (AuthState::InProgress(n), None) => n,
                (AuthState::Valid, None) => return err(status::INTERNAL_ERROR),
            };
            ntlm_leg(ntlm, &req.buffer)
        };
        match step {
            NtlmLeg::More(reply) => reply,
            NtlmLeg::Done(auth) => {
                let keys = auth.keys(dial, &s.preauth, cipher);
                let Authenticated {
                    token,
                    user,
                    anonymous,
                    ..
                } = auth;
                let was_valid = matches!(s.state, AuthState::Valid);
                s.reauth = None;
                if was_valid {
                    // Checked before anything of the session changes (its identity included).
                    if let Err(st) = self.check_reauth_user(sid, &user, anonymous, allow_anon) {
                        return err(st);
                    }
                }
                if anonymous && !allow_anon {
                    self.sessions.remove(&sid);
                    return err(status::LOGON_FAILURE);
                }
                // The Unix identity the session's file operations run as: resolved for every
                // configured user at start, so a user without one cannot get here.
                let identity = if anonymous {
                    Some(self.shared.identities.guest.clone())
                } else {
                    self.shared.identities.of_user(&user)
                };
                let Some(identity) = identity else {
                    tracing::warn!(conn = self.id, %user, "no Unix identity for user");
                    self.sessions.remove(&sid);
                    return err(status::LOGON_FAILURE);
                };
                if !was_valid && !anonymous {
                    // One user over all its connections (crate::limits::ClientUsage).
                    if let Some(st) = self.user_connections_refusal(&user) {
                        self.sessions.remove(&sid);
                        return err(st);
                    }
                }
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return err(status::USER_SESSION_DELETED);
                };
                s.identity = Some(identity);
                s.state = AuthState::Valid;
                s.user = user;
                let mut flags = 0;
                if was_valid {
                    // Re-authentication keeps the session's keys and signing state
                    // (MS-SMB2 3.3.5.5.3); Samba also accepts another user here.
                    if anonymous {
                        flags |= SESSION_FLAG_IS_NULL;
                    }
                    return Outcome::Reply(
                        status::SUCCESS,
                        Response::SessionSetup {
                            flags,
                            buffer: token,
                        },
                    );
                }
                s.anonymous = anonymous;
                if anonymous {
                    flags |= SESSION_FLAG_IS_NULL;
                } else {
                    if !was_valid {
                        s.keys = Some(keys);
                    }
                    s.signing_required = client_requires_signing || server_requires_signing;
                    if global_encrypt && dial.is_smb3() {
                        s.encrypt = true;
                        flags |= SESSION_FLAG_ENCRYPT_DATA;
                    }
                }
                tracing::info!(conn = self.id, sid, user = %s.user, anonymous, "session established");
                if !was_valid && !anonymous {
                    let user = s.user.clone();
                    let signing_key = s
                        .keys
                        .as_ref()
                        .map(|k| k.signing.clone())
                        .unwrap_or_default();
                    let (d, signing_alg) = self
                        .neg
                        .as_ref()
                        .map(|n| (n.dialect, n.signing_alg))
                        .unwrap_or((0, SigningAlgorithm::HmacSha256));
                    self.shared.session_established(
                        sid,
                        crate::shared::SessionRecord {
                            conn: self.id,
                            user: user.clone(),
                            dialect: d,
                            signing_alg,
                            signing_key,
                            cipher,
                            channels: 0,
                        },
                    );
                    if req.previous_session_id != 0 && req.previous_session_id != sid {
                        // MS-SMB2 3.3.5.5.3: the previous session of this user goes away, on
                        // whichever connection it lives (this one: after this response).
                        if self.sessions.contains_key(&req.previous_session_id) {
                            self.expire_after.push(req.previous_session_id);
                        } else {
                            self.shared.expire_previous_session(
                                req.previous_session_id,
                                &user,
                                self.id,
                            );
                        }
                    }
                }
                Outcome::Reply(
                    status::SUCCESS,
                    Response::SessionSetup {
                        flags,
                        buffer: token,
                    },
                )
            }
            NtlmLeg::Failed(e) => {
                tracing::info!(conn = self.id, sid, %e, "authentication failed");
                let st = auth_status(&e);
                let was_valid = matches!(s.state, AuthState::Valid);
                if was_valid {
                    // A failed re-authentication ends the session (as Windows and Samba do);
                    // the refusal is still signed with the session's key.
                    if self.signed_request {
                        self.override_signer = self.signer_for(sid, true);
                    }
                    // Later requests of the client on the session get USER_SESSION_DELETED
                    // signed with the session's key (the client insists on it).
                    let own = self
                        .sessions
                        .get(&sid)
                        .and_then(|s| s.keys.as_ref())
                        .zip(self.neg.as_ref())
                        .map(|(k, n)| (n.signing_alg, k.signing.clone()));
                    if let Some(sig) = own {
                        self.remember_ended(sid, sig);
                    }
                    self.close_session_opens(sid, None);
                    self.shared.session_gone(sid);
                    self.end_channels(sid);
                }
                self.sessions.remove(&sid);
                err(st)
            }
        }
    }

    /// MS-SMB2 3.3.5.2.4 for a reauthentication (SESSION_SETUP on a valid session): it is a
    /// request on an established session like any other, so a signature must verify with the
    /// session's (channel's) key, and an unsigned one is refused when the session requires
    /// signing. Otherwise anyone could restart authentication on somebody else's session
    /// without its key. Sealed requests were authenticated by decryption.
    pub(super) fn check_reauth_signature(
        &mut self,
        sid: u64,
        ctx: &ChainCtx,
        m: &[u8],
    ) -> Result<(), NtStatus> {
        let Some(s) = self.sessions.get(&sid) else {
            return Ok(());
        };
        if !matches!(s.state, AuthState::Valid) || s.anonymous || ctx.encrypted {
            return Ok(());
        }
        let required = s.signing_required;
        if self.signed_request {
            let Some((alg, key)) = self.signing_pair(sid) else {
                return Ok(());
            };
            if !smb_auth::signing::verify(alg, &key, m) {
                tracing::info!(conn = self.id, sid, "reauthentication with a bad signature");
                return Err(status::ACCESS_DENIED);
            }
        } else if required {
            tracing::info!(
                conn = self.id,
                sid,
                "unsigned reauthentication of a signing session"
            );
            return Err(status::ACCESS_DENIED);
        }
        Ok(())
    }

    /// Whether a completed reauthentication of valid session `sid` may take effect.
    /// A reauthentication keeps Session.SessionKey, the signing and encryption keys, the tree
    /// connects and the opens (MS-SMB2 3.3.5.5.2); handing them to another user would give
    /// that user what was granted to the first one without any check. MS-SMB 3.3.5.3 lets the
    /// server fail a reauthentication that names another user, and we do (ACCESS_DENIED; the
    /// session goes on unchanged). Reauthenticating as anonymous (the guest identity: fewer
    /// rights; smbtorture session.reauth2-5, written against Windows, expect it) and back to
    /// the session's own user stays allowed where anonymous logons are.
    pub(super) fn check_reauth_user(
        &mut self,
        sid: u64,
        user: &str,
        anonymous: bool,
        allow_anon: bool,
    ) -> Result<(), NtStatus> {
        let refuse = |this: &mut Self, st: NtStatus| {
            if this.signed_request {
                this.override_signer = this.signer_for(sid, true);
            }
            Err(st)
        };
        if anonymous {
            if !allow_anon {
                tracing::info!(conn = self.id, sid, "anonymous reauthentication refused");
                return refuse(self, status::LOGON_FAILURE);
            }
            return Ok(());
        }
        let owner = match self.shared.session_record(sid) {
            Some(r) => r.user,
            None => self
                .sessions
                .get(&sid)
                .map(|s| s.user.clone())
                .unwrap_or_default(),
        };
        if !owner.eq_ignore_ascii_case(user) {
            tracing::warn!(
                conn = self.id,
                sid,
                session_user = %owner,
                new_user = %user,
                "reauthentication as another user refused"
            );
            return refuse(self, status::ACCESS_DENIED);
        }
        Ok(())
    }

    /// The final SESSION_SETUP response is signed for 3.1.1 (MS-SMB2 3.3.5.5.3) and whenever
    /// signing is required, so the client can verify the session key.
    pub(super) fn session_setup_signer(
        &self,
        h: &Header,
        st: NtStatus,
    ) -> Option<(SigningAlgorithm, Vec<u8>)> {
        if let Some(sig) = &self.override_signer {
            return Some(sig.clone());
        }
        if st != status::SUCCESS {
            // Re-authentication and binding attempts arrive signed on a valid session; their
            // answers (errors and interim ones too) are signed with the session's key.
            if h.flags & flags::SIGNED != 0 || self.signed_request {
                return self.signer_for(h.session_id, true);
            }
            return None;
        }
        let s = self.sessions.get(&h.session_id)?;
        if s.anonymous {
            return None;
        }
        s.keys.as_ref()?;
        let n = self.neg.as_ref()?;
        if n.dialect == dialect::SMB311 || s.signing_required || h.flags & flags::SIGNED != 0 {
            self.signing_pair(h.session_id)
        } else {
            None
        }
    }

    pub(super) fn logoff(&mut self, hdr: &Header) -> Outcome {
        let sid = hdr.session_id;
        // The response is signed (MS-SMB2 3.3.4.1.1) or sealed (3.3.4.1.4) with the keys of
        // the session it ends, which is gone by the time it is sent: keep them for it.
        self.override_signer = self.signer_for(sid, self.signed_request);
        self.parting_encryption = self
            .sessions
            .get(&sid)
            .and_then(|s| s.keys.as_ref())
            .filter(|k| !k.encryption.is_empty())
            .map(|k| (sid, k.encryption.clone()));
        // Durable opens survive a logoff like a disconnect (Samba; smbtorture
        // durable-open.reopen4 reclaims one from a new session on the same connection).
        self.park_durable_opens(Some(sid));
        self.close_session_opens(sid, None);
        self.sessions.remove(&sid);
        self.shared.session_gone(sid);
        self.end_channels(sid);
        Outcome::Reply(status::SUCCESS, Response::Logoff)
    }

    pub(crate) fn close_session_opens(&mut self, sid: u64, tree: Option<u32>) {
        self.close_pipes(sid, tree);
        let ids: Vec<u64> = self
            .opens
            .iter()
            .filter(|(_, o)| o.session_id == sid && tree.is_none_or(|t| o.tree_id == t))
            .map(|(k, _)| *k)
            .collect();
        for v in ids {
            self.close_open(v, status::SUCCESS);
        }
    }
}

/// One NTLM leg of a SESSION_SETUP, as a session's own authentication and a channel binding
/// (channel.rs) both answer it.
/// The NTSTATUS a SESSION_SETUP refusal carries for an authentication failure: the logon
/// failure itself, or a token that cannot be parsed or does not fit the exchange.
pub(super) fn auth_status(e: &AuthError) -> NtStatus {
    match e {
        AuthError::LogonFailure => status::LOGON_FAILURE,
        AuthError::Malformed(_) | AuthError::UnexpectedMessage(_) => status::INVALID_PARAMETER,
        AuthError::UnsupportedMechanism => status::NOT_SUPPORTED,
        // A failure smb-auth learns later refuses the logon.
        _ => status::LOGON_FAILURE,
    }
}

pub(super) enum NtlmLeg {
    /// Another round trip: the reply carrying the server's token
    /// (STATUS_MORE_PROCESSING_REQUIRED).
    More(Outcome),
    /// The client authenticated.
    Done(Authenticated),
    /// Authentication failed.
    Failed(AuthError),
}

/// What a completed NTLM exchange established.
pub(super) struct Authenticated {
    /// The final security buffer for the SUCCESS response (may be empty).
    pub token: Vec<u8>,
    pub user: String,
    pub session_key: [u8; 16],
    pub anonymous: bool,
}

impl Authenticated {
    /// The keys of the session (or channel) this authentication keys: derived from the NTLM
    /// session key and, at 3.1.1, the preauth integrity hash of the exchange (MS-SMB2
    /// 3.3.5.5.3).
    pub(super) fn keys(
        &self,
        dialect: Dialect,
        preauth: &PreauthHash,
        cipher: Option<Cipher>,
    ) -> SessionKeys {
        let hash = preauth.value();
        let preauth = (dialect == Dialect::Smb311).then_some(&hash);
        smb_auth::keys::derive(dialect, &self.session_key, preauth, cipher)
    }
}

/// Feed the client's security buffer to `ntlm`.
pub(super) fn ntlm_leg(ntlm: &mut NtlmServer, buffer: &[u8]) -> NtlmLeg {
    match ntlm.step(buffer) {
        Ok(AuthStep::Continue { token }) => NtlmLeg::More(Outcome::Reply(
            status::MORE_PROCESSING_REQUIRED,
            Response::SessionSetup {
                flags: 0,
                buffer: token,
            },
        )),
        Ok(AuthStep::Done {
            token,
            user,
            session_key,
            anonymous,
            ..
        }) => NtlmLeg::Done(Authenticated {
            token,
            user,
            session_key,
            anonymous,
        }),
        Err(e) => NtlmLeg::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statuses clients see for each authentication failure (the values smb-auth returned
    /// before the mapping moved here).
    #[test]
    fn authentication_failures_map_to_their_statuses() {
        assert_eq!(auth_status(&AuthError::LogonFailure), NtStatus(0xC000_006D));
        assert_eq!(
            auth_status(&AuthError::Malformed("x".into())),
            NtStatus(0xC000_000D)
        );
        assert_eq!(
            auth_status(&AuthError::UnexpectedMessage("x")),
            NtStatus(0xC000_000D)
        );
        assert_eq!(
            auth_status(&AuthError::UnsupportedMechanism),
            NtStatus(0xC000_00BB)
        );
    }
}
