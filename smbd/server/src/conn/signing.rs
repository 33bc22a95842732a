//! Outgoing messages: NetBIOS framing, signing and sealing (MS-SMB2 3.3.4.1), and the
//! decryption of sealed requests (3.3.5.2.1).

use smb_auth::keys::{Cipher, SigningAlgorithm};
use smb_proto::header::{self, TRANSFORM_PROTOCOL_ID};
use smb_proto::netbios;

use super::state::{AuthState, Signer};
use super::Conn;

impl Conn {
    /// Queue a complete response frame (4 bytes reserved for the NetBIOS header), signing or
    /// encrypting it as decided at dispatch.
    pub(crate) fn emit_framed(
        &mut self,
        mut buf: Vec<u8>,
        signer: Option<Signer>,
        enc: Option<u64>,
    ) {
        if enc.is_some() {
            self.emit(buf.get(4..).unwrap_or_default().to_vec(), enc);
            return;
        }
        if let Some((alg, key)) = signer {
            if let Some(msg) = buf.get_mut(4..) {
                header::mark_signed(msg);
                if let Err(e) = smb_auth::signing::sign(alg, &key, msg) {
                    tracing::warn!(conn = self.id, %e, "signing failed");
                }
            }
        }
        netbios::write_session_header(&mut buf);
        self.out.push(buf);
    }

    pub(super) fn encrypted_message(&mut self, msg: &[u8]) {
        let Some(sid) = smb_auth::encryption::transform_session_id(msg) else {
            self.closed = true;
            return;
        };
        let cipher = self
            .neg
            .as_ref()
            .and_then(|n| n.cipher)
            .unwrap_or(Cipher::Aes128Ccm);
        let key = match self.sessions.get(&sid).and_then(|s| s.keys.as_ref()) {
            Some(k) if !k.decryption.is_empty() => k.decryption.clone(),
            _ => {
                tracing::debug!(conn = self.id, sid, "transform for unknown session");
                self.closed = true;
                return;
            }
        };
        match smb_auth::encryption::decrypt(cipher, &key, msg) {
            Ok((_, plain)) => {
                if plain.get(..4) == Some(&smb_proto::header::PROTOCOL_ID[..]) {
                    self.process_chain(&plain, Some(sid));
                } else {
                    self.closed = true;
                }
            }
            Err(e) => {
                tracing::debug!(conn = self.id, %e, len = msg.len(), "decryption failed; disconnecting");
                self.closed = true;
            }
        }
    }

    pub(super) fn session_wants_encryption(&self, sid: u64, tree: u32) -> bool {
        self.sessions
            .get(&sid)
            .map(|s| {
                s.keys.as_ref().is_some_and(|k| !k.encryption.is_empty())
                    && (s.encrypt || s.trees.get(&tree).is_some_and(|t| t.encrypt))
            })
            .unwrap_or(false)
    }

    /// Queue a message (or chain), encrypting it for `enc_session` if given.
    pub(crate) fn emit(&mut self, msg: Vec<u8>, enc_session: Option<u64>) {
        if let Some(f) = self.seal(msg, enc_session) {
            self.push_out(f);
        }
    }

    /// A message (or chain) as a transport frame, encrypted for `enc_session` if given; None
    /// when encryption fails (the connection is then closing).
    pub(super) fn seal(&mut self, msg: Vec<u8>, enc_session: Option<u64>) -> Option<Vec<u8>> {
        if let Some(sid) = enc_session {
            let cipher = self
                .neg
                .as_ref()
                .and_then(|n| n.cipher)
                .unwrap_or(Cipher::Aes128Ccm);
            let key = self
                .sessions
                .get(&sid)
                .and_then(|s| s.keys.as_ref())
                .map(|k| k.encryption.clone())
                .or_else(|| {
                    self.parting_encryption
                        .as_ref()
                        .filter(|(s, _)| *s == sid)
                        .map(|(_, k)| k.clone())
                });
            if let Some(key) = key.filter(|k| !k.is_empty()) {
                match smb_auth::encryption::encrypt(cipher, &key, sid, &msg) {
                    Ok(m) => {
                        debug_assert_eq!(m.get(..4), Some(&TRANSFORM_PROTOCOL_ID[..]));
                        return Some(frame(m));
                    }
                    Err(e) => {
                        tracing::warn!(conn = self.id, %e, "encryption failed; disconnecting");
                        self.closed = true;
                        return None;
                    }
                }
            }
        }
        Some(frame(msg))
    }

    pub(super) fn push_out(&mut self, f: Vec<u8>) {
        if self.cur_channel.is_some() {
            self.channel_out.push(f);
        } else {
            self.out.push(f);
        }
    }

    /// Signing algorithm and key of `sid` for the connection the current request came in
    /// on: a bound channel signs with its own Channel.SigningKey (MS-SMB2 3.3.5.5.3).
    pub(crate) fn signing_pair(&self, sid: u64) -> Option<Signer> {
        if let Some(ch) = self.cur_channel {
            if let Some(sig) = self.channels.get(&(ch, sid)) {
                return Some(sig.clone());
            }
        }
        let k = self.sessions.get(&sid)?.keys.as_ref()?;
        Some((self.neg.as_ref()?.signing_alg, k.signing.clone()))
    }

    /// Signing key of a session if responses to `hdr` must be signed.
    pub(crate) fn signer_for(
        &self,
        session_id: u64,
        request_signed: bool,
    ) -> Option<(SigningAlgorithm, Vec<u8>)> {
        let s = self.sessions.get(&session_id)?;
        if !matches!(s.state, AuthState::Valid) || s.anonymous {
            return None;
        }
        s.keys.as_ref()?;
        if request_signed || s.signing_required {
            self.signing_pair(session_id)
        } else {
            None
        }
    }
}
pub(super) fn frame(msg: Vec<u8>) -> Vec<u8> {
    netbios::session_message(&msg)
}
