//! NEGOTIATE (MS-SMB2 3.3.5.3/3.3.5.4), including the SMB1 multi-protocol upgrade, and the
//! negotiated parameters other commands consult.

use smb_auth::keys::{Cipher, Dialect, SigningAlgorithm};
use smb_proto::header::flags;
use smb_proto::{
    caps, dialect, negctx, security_mode, smb1, status, Command, Header, NegotiateContext,
    NegotiateRequest, NegotiateResponse, Response, Writer,
};

use super::signing::frame;
use super::state::{err, Negotiated, Outcome};
use super::{Conn, MAX_IO, MAX_IO_202};

impl Conn {
    pub(crate) fn dialect(&self) -> u16 {
        self.neg.as_ref().map_or(0, |n| n.dialect)
    }

    pub(crate) fn auth_dialect(&self) -> Dialect {
        Dialect::from_revision(self.dialect()).unwrap_or(Dialect::Smb202)
    }

    /// MS-SMB2 3.3.5.14: at 3.x with SMB2_GLOBAL_CAP_MULTI_CHANNEL, lock sequence numbers
    /// are verified for every open (a request may be replayed on another channel).
    pub(crate) fn lock_seq_all_opens(&self) -> bool {
        self.neg.as_ref().is_some_and(|n| {
            n.dialect >= dialect::SMB300 && n.server_caps & caps::MULTI_CHANNEL != 0
        })
    }

    pub(crate) fn max_io(&self) -> u32 {
        if self.dialect() == dialect::SMB202 {
            MAX_IO_202
        } else {
            MAX_IO
        }
    }

    pub(super) fn smb1_negotiate(&mut self, msg: &[u8]) {
        if self.neg.is_some() {
            self.closed = true;
            return;
        }
        let dialects = match smb1::decode_negotiate(msg) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(conn = self.id, %e, "bad SMB1 negotiate");
                self.closed = true;
                return;
            }
        };
        let Some(d) = smb1::smb2_dialect_for(&dialects) else {
            tracing::info!(conn = self.id, "SMB1-only client refused");
            self.closed = true;
            return;
        };
        if d == dialect::SMB202 {
            self.set_negotiated(d, &NegotiateRequest::default(), None, None);
        }
        // MS-SMB2 3.3.5.2.3: an SMB_COM_NEGOTIATE counts as MessageId 0.
        let credits = {
            let mut w = self.seq.lock();
            if w.consume(0, 1).is_err() {
                drop(w);
                tracing::debug!(conn = self.id, "second SMB1 negotiate; disconnecting");
                self.closed = true;
                return;
            }
            w.grant(1)
        };
        let body = self.negotiate_response_body(d, Vec::new());
        let hdr = Header {
            command: Command::Negotiate as u16,
            credits,
            flags: flags::SERVER_TO_REDIR,
            ..Default::default()
        };
        let mut w = Writer::new();
        hdr.encode(&mut w);
        body.encode_body(&mut w, 0);
        self.out.push(frame(w.buf));
    }

    pub(super) fn set_negotiated(
        &mut self,
        d: u16,
        req: &NegotiateRequest,
        cipher: Option<Cipher>,
        signing: Option<SigningAlgorithm>,
    ) {
        let dial = Dialect::from_revision(d).unwrap_or(Dialect::Smb202);
        let mut server_caps = 0;
        if d >= dialect::SMB210 {
            server_caps |= caps::LEASING | caps::LARGE_MTU;
        }
        if (dialect::SMB300..dialect::SMB311).contains(&d)
            && req.capabilities & caps::ENCRYPTION != 0
        {
            server_caps |= caps::ENCRYPTION;
        }
        // MS-SMB2 3.3.5.4: SMB2_GLOBAL_CAP_DFS when the server hosts a DFS namespace.
        if self.shared.shares.iter().any(|s| s.dfs_root) {
            server_caps |= caps::DFS;
        }
        // MS-SMB2 3.3.5.4: persistent handles are offered from 3.0 on, here only when some
        // share is continuously available (nothing else changes for other servers).
        if d >= dialect::SMB300
            && d != dialect::WILDCARD
            && self.shared.shares.iter().any(|s| s.continuous_availability)
        {
            server_caps |= caps::PERSISTENT_HANDLES;
        }
        if d >= dialect::SMB300 && d != dialect::WILDCARD && self.shared.config.server.multichannel
        {
            server_caps |= caps::MULTI_CHANNEL;
        }
        let mut server_security_mode = security_mode::SIGNING_ENABLED;
        if self.shared.config.server.signing_required {
            server_security_mode |= security_mode::SIGNING_REQUIRED;
        }
        let cipher = if d == dialect::SMB311 {
            cipher
        } else if server_caps & caps::ENCRYPTION != 0 {
            Some(Cipher::Aes128Ccm)
        } else {
            None
        };
        self.neg = Some(Negotiated {
            dialect: d,
            client_guid: req.client_guid,
            client_security_mode: req.security_mode,
            client_caps: req.capabilities,
            server_security_mode,
            server_caps,
            cipher,
            signing_alg: signing.unwrap_or(SigningAlgorithm::default_for(dial)),
            client_dialects: req.dialects.clone(),
        });
    }

    pub(super) fn negotiate_response_body(
        &self,
        d: u16,
        contexts: Vec<NegotiateContext>,
    ) -> Response {
        let (server_security_mode, server_caps) = match &self.neg {
            Some(n) => (n.server_security_mode, n.server_caps),
            None => (
                security_mode::SIGNING_ENABLED
                    | if self.shared.config.server.signing_required {
                        security_mode::SIGNING_REQUIRED
                    } else {
                        0
                    },
                0,
            ),
        };
        let max = if d == dialect::SMB202 || d == dialect::WILDCARD {
            MAX_IO_202
        } else {
            MAX_IO
        };
        Response::Negotiate(NegotiateResponse {
            security_mode: server_security_mode,
            dialect: d,
            server_guid: self.shared.server_guid,
            capabilities: server_caps,
            max_transact: max,
            max_read: max,
            max_write: max,
            system_time: self.shared.clock.filetime(),
            start_time: 0,
            security_buffer: smb_auth::spnego::negotiate_token(),
            contexts,
        })
    }

    pub(super) fn negotiate(&mut self, req: NegotiateRequest) -> Outcome {
        if self
            .neg
            .as_ref()
            .is_some_and(|n| n.dialect != dialect::WILDCARD)
        {
            // A second NEGOTIATE on a connection is a protocol violation (MS-SMB2 3.3.5.3).
            self.closed = true;
            return Outcome::Nothing;
        }
        if req.dialects.is_empty() {
            return err(status::INVALID_PARAMETER);
        }
        const OURS: [u16; 5] = [
            dialect::SMB311,
            dialect::SMB302,
            dialect::SMB300,
            dialect::SMB210,
            dialect::SMB202,
        ];
        let Some(d) = OURS.iter().copied().find(|d| req.dialects.contains(d)) else {
            return err(status::NOT_SUPPORTED);
        };
        tracing::debug!(
            conn = self.id,
            dialects = ?req.dialects,
            contexts = ?req.contexts.iter().map(|c| (c.ctx_type, c.data.len())).collect::<Vec<_>>(),
            "negotiate"
        );
        let mut contexts = Vec::new();
        let mut cipher = None;
        let mut signing = None;
        if d == dialect::SMB311 {
            let mut have_preauth = false;
            for c in &req.contexts {
                match c.ctx_type {
                    negctx::PREAUTH_INTEGRITY => {
                        if let Ok((algs, _)) = c.preauth() {
                            if algs.contains(&negctx::SHA512) {
                                have_preauth = true;
                            }
                        }
                    }
                    negctx::ENCRYPTION => {
                        if let Ok(ids) = c.id_list() {
                            // Prefer GCM (faster), then CCM; 128-bit first like Windows.
                            for pref in [2u16, 1, 4, 3] {
                                if ids.contains(&pref) {
                                    cipher = Cipher::from_id(pref);
                                    break;
                                }
                            }
                        }
                    }
                    negctx::SIGNING => {
                        if let Ok(ids) = c.id_list() {
                            for pref in [2u16, 1, 0] {
                                if ids.contains(&pref) {
                                    signing = SigningAlgorithm::from_id(pref);
                                    break;
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !have_preauth {
                return err(status::INVALID_PARAMETER);
            }
            let salt: [u8; 32] = rand::random();
            contexts.push(NegotiateContext::preauth_response(negctx::SHA512, &salt));
            if req
                .contexts
                .iter()
                .any(|c| c.ctx_type == negctx::ENCRYPTION)
            {
                // Only answer contexts the client sent (MS-SMB2 3.3.5.4); cipher 0 = none.
                contexts.push(NegotiateContext::chosen(
                    negctx::ENCRYPTION,
                    cipher.map_or(0, |c| c.id()),
                ));
            }
            if let Some(s) = signing {
                contexts.push(NegotiateContext::chosen(negctx::SIGNING, s.id()));
            }
        }
        self.set_negotiated(d, &req, cipher, signing);
        Outcome::Reply(status::SUCCESS, self.negotiate_response_body(d, contexts))
    }

    // ---- SESSION_SETUP -------------------------------------------------------------------
}
