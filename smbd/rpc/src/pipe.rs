//! One RPC connection's state machine (a named pipe instance on IPC$, or later one TCP
//! connection): bytes in through [`RpcPipe::write`], PDUs out through [`RpcPipe::read`].
//! It negotiates presentation contexts, reassembles fragmented requests, dispatches them to
//! the registered interfaces and fragments their responses.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use smb_auth::ntlm_seal::{NtlmProtection, SIGNATURE_LEN};
use smb_auth::{AuthStep, NtlmServer, UserDb};
use thiserror::Error;

use crate::pdu::{
    self, auth_level, auth_type, bind_time_features, fault, nak, pfc, ptype, Bind, BindAck,
    ContextResult, Header, RequestFrag, SecTrailer, SyntaxId, HEADER_LEN, MIN_FRAG, NDR20,
    REJECT_ABSTRACT_SYNTAX, REJECT_TRANSFER_SYNTAXES, REQUEST_HEADER_LEN, RPC_VERS,
};

/// Who may call: the users an authenticated bind is checked against and the least protection
/// a call must have (MS-RPCE 3.3.1.5.2). NTLMSSP (RPC_C_AUTHN_WINNT) is the security provider.
#[derive(Clone)]
pub struct AuthPolicy {
    pub users: Arc<UserDb>,
    /// Names this server gives in the NTLM CHALLENGE.
    pub netbios_name: String,
    pub domain: String,
    /// [`auth_level::INTEGRITY`] or [`auth_level::PRIVACY`]: calls at a lower level (or
    /// unauthenticated) fault with ACCESS_DENIED.
    pub min_level: u8,
}

impl std::fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthPolicy")
            .field("netbios_name", &self.netbios_name)
            .field("min_level", &self.min_level)
            .finish_non_exhaustive()
    }
}

/// The connection's security context (one per connection: a second authenticated bind or an
/// authenticated alter_context is refused).
enum Security {
    None,
    /// The CHALLENGE went out in the bind_ack; AUTH3 brings AUTHENTICATE.
    Challenged {
        ntlm: Box<NtlmServer>,
        trailer: SecTrailer,
    },
    Established {
        protection: Box<NtlmProtection>,
        trailer: SecTrailer,
        user: String,
    },
    /// Authentication failed: every call faults with ACCESS_DENIED.
    Failed,
}

/// Contexts one bind or alter_context may propose: their results must fit one fragment
/// of the smallest size every peer receives.
const MAX_PROPOSED_CONTEXTS: usize = 48;

/// What an interface's operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// NDR20 stub data of the response.
    Reply(Vec<u8>),
    /// A fault status (see [`crate::pdu::fault`]).
    Fault(u32),
    /// Answered later through [`RpcPipe::complete`] (the witness' AsyncNotify waits for a
    /// cluster event this way).
    Pending,
}

/// The call an operation runs for, so a pending one can be completed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallId {
    pub call_id: u32,
    pub context_id: u16,
}

/// An RPC interface (one abstract syntax) served on a pipe.
pub trait RpcInterface: Send {
    fn syntax(&self) -> SyntaxId;
    /// Run operation `opnum` on NDR20 stub data `stub`. Unknown opnums answer
    /// `CallResult::Fault(fault::NCA_S_OP_RNG_ERROR)`, undecodable stubs
    /// `CallResult::Fault(fault::BAD_STUB_DATA)`.
    fn call(&mut self, call: CallId, opnum: u16, stub: &[u8]) -> CallResult;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeConfig {
    /// The bind_ack secondary address: `\PIPE\srvsvc` on a named pipe, the port on TCP.
    pub sec_addr: String,
    /// Largest fragment this side sends or expects.
    pub max_frag: u16,
    /// Largest reassembled request stub.
    pub max_request: usize,
    /// Unread output beyond which writes are refused until the client reads.
    pub max_output: usize,
    /// Presentation contexts a connection may hold.
    pub max_contexts: usize,
    /// Association group id handed to clients that ask for a new one.
    pub assoc_group_id: u32,
}

impl Default for PipeConfig {
    fn default() -> Self {
        Self {
            sec_addr: String::new(),
            // What Windows and Samba negotiate on named pipes.
            max_frag: 4280,
            max_request: 256 * 1024,
            max_output: 4 * 1024 * 1024,
            max_contexts: 32,
            assoc_group_id: 0x5343,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PipeError {
    /// The byte stream is not DCE/RPC any more; the connection cannot recover.
    #[error("RPC protocol error: {0}")]
    Protocol(&'static str),
    /// The client wrote more while too much output was unread.
    #[error("too much unread output")]
    OutputFull,
}

/// One chunk of output: the data and how much of the same PDU is still unread (a named
/// pipe in message mode answers a short read with STATUS_BUFFER_OVERFLOW).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeRead {
    pub data: Vec<u8>,
    pub message_remaining: usize,
}

/// A request being reassembled from fragments.
struct Reassembly {
    call_id: u32,
    context_id: u16,
    opnum: u16,
    stub: Vec<u8>,
    /// Over the size bound: fragments are dropped until the last one (already faulted).
    discarding: bool,
}

pub struct RpcPipe {
    cfg: PipeConfig,
    interfaces: Vec<Box<dyn RpcInterface>>,
    /// Bound presentation context id -> index into `interfaces`.
    contexts: HashMap<u16, usize>,
    bound: bool,
    broken: Option<&'static str>,
    max_xmit_frag: u16,
    input: Vec<u8>,
    output: VecDeque<Vec<u8>>,
    /// Bytes of `output.front()` already read.
    front_read: usize,
    output_bytes: usize,
    reassembly: Option<Reassembly>,
    pending: Vec<CallId>,
    policy: Option<AuthPolicy>,
    security: Security,
}

impl RpcPipe {
    pub fn new(cfg: PipeConfig, interfaces: Vec<Box<dyn RpcInterface>>) -> Self {
        Self {
            max_xmit_frag: MIN_FRAG,
            cfg,
            interfaces,
            contexts: HashMap::new(),
            bound: false,
            broken: None,
            input: Vec::new(),
            output: VecDeque::new(),
            front_read: 0,
            output_bytes: 0,
            reassembly: None,
            pending: Vec::new(),
            policy: None,
            security: Security::None,
        }
    }

    /// Calls need an authenticated bind (NTLMSSP) at `policy.min_level` or above.
    pub fn require_auth(mut self, policy: AuthPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The user the connection authenticated as, once it has.
    pub fn authenticated_user(&self) -> Option<&str> {
        match &self.security {
            Security::Established { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Feed bytes from the client (any split: PDUs may arrive in pieces or several at once).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), PipeError> {
        if let Some(why) = self.broken {
            return Err(PipeError::Protocol(why));
        }
        if self.output_bytes > self.cfg.max_output {
            return Err(PipeError::OutputFull);
        }
        self.input.extend_from_slice(bytes);
        let mut consumed = 0;
        let result = loop {
            let rest = &self.input[consumed..];
            if rest.len() < HEADER_LEN {
                break Ok(());
            }
            let hdr = match Header::parse(rest) {
                Ok(h) => h,
                Err(_) => break Ok(()),
            };
            if let Err(why) = check_header(&hdr) {
                break Err(why);
            }
            let len = usize::from(hdr.frag_len);
            if rest.len() < len {
                break Ok(());
            }
            let frag = rest[..len].to_vec();
            consumed += len;
            if let Err(why) = self.on_pdu(&hdr, &frag) {
                break Err(why);
            }
        };
        self.input.drain(..consumed);
        if let Err(why) = result {
            tracing::debug!(why, "RPC connection broken");
            self.broken = Some(why);
            self.input.clear();
            self.reassembly = None;
            return Err(PipeError::Protocol(why));
        }
        Ok(())
    }

    /// Take up to `max` bytes of the next output PDU; `None` when nothing is waiting.
    pub fn read(&mut self, max: usize) -> Option<PipeRead> {
        let front = self.output.front()?;
        let end = (self.front_read + max).min(front.len());
        let data = front[self.front_read..end].to_vec();
        let message_remaining = front.len() - end;
        self.output_bytes -= data.len();
        if message_remaining == 0 {
            self.output.pop_front();
            self.front_read = 0;
        } else {
            self.front_read = end;
        }
        Some(PipeRead {
            data,
            message_remaining,
        })
    }

    /// Unread output bytes.
    pub fn output_len(&self) -> usize {
        self.output_bytes
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Answer a call an interface left [`CallResult::Pending`]. Unknown calls are ignored
    /// (the client may have orphaned it).
    pub fn complete(&mut self, call: CallId, result: CallResult) {
        let Some(i) = self.pending.iter().position(|p| *p == call) else {
            return;
        };
        self.pending.swap_remove(i);
        self.answer(call, result);
    }

    fn push(&mut self, pdu: Vec<u8>) {
        self.output_bytes += pdu.len();
        self.output.push_back(pdu);
    }

    fn on_pdu(&mut self, hdr: &Header, frag: &[u8]) -> Result<(), &'static str> {
        // A pipe without an [`AuthPolicy`] offers no security provider (on IPC$ it runs inside
        // an authenticated, signed or sealed SMB session): a PDU carrying an auth verifier gets
        // a clean refusal.
        match hdr.ptype {
            ptype::BIND => {
                self.on_bind(hdr, frag);
                Ok(())
            }
            ptype::ALTER_CONTEXT => {
                self.on_alter_context(hdr, frag);
                Ok(())
            }
            ptype::REQUEST => {
                self.on_protected_request(hdr, frag);
                Ok(())
            }
            ptype::ORPHANED => {
                if self.reassembly.as_ref().map(|r| r.call_id) == Some(hdr.call_id) {
                    self.reassembly = None;
                }
                self.pending.retain(|p| p.call_id != hdr.call_id);
                Ok(())
            }
            // Calls run to completion when their last fragment arrives; a cancel of a
            // pending one faults it.
            ptype::CO_CANCEL => {
                let cancelled: Vec<CallId> = self
                    .pending
                    .iter()
                    .filter(|p| p.call_id == hdr.call_id)
                    .copied()
                    .collect();
                for c in cancelled {
                    self.complete(c, CallResult::Fault(fault::NCA_S_FAULT_CANCEL));
                }
                Ok(())
            }
            // The third leg of NTLMSSP; no answer (MS-RPCE 3.3.1.5.2.2).
            ptype::AUTH3 => {
                self.on_auth3(hdr, frag);
                Ok(())
            }
            _ => Err("PDU type a server does not receive"),
        }
    }

    fn negotiate(&self, bind: &Bind) -> (Vec<ContextResult>, Vec<(u16, usize)>) {
        let mut results = Vec::with_capacity(bind.contexts.len());
        let mut accepted: Vec<(u16, usize)> = Vec::new();
        for c in &bind.contexts {
            if let Some(features) = c.transfer_syntaxes.iter().find_map(bind_time_features) {
                // Keep-connection-on-orphan (2) holds: an orphaned call never closes the
                // connection. Security context multiplexing (1) is moot without auth.
                results.push(ContextResult::NegotiateAck(features & 0x2));
                continue;
            }
            let Some(iface) = self
                .interfaces
                .iter()
                .position(|i| i.syntax() == c.abstract_syntax)
            else {
                results.push(ContextResult::Reject(REJECT_ABSTRACT_SYNTAX));
                continue;
            };
            if !c.transfer_syntaxes.contains(&NDR20) {
                results.push(ContextResult::Reject(REJECT_TRANSFER_SYNTAXES));
                continue;
            }
            let known = self.contexts.contains_key(&c.id)
                || accepted.iter().any(|a: &(u16, usize)| a.0 == c.id);
            if !known && self.contexts.len() + accepted.len() >= self.cfg.max_contexts {
                results.push(ContextResult::Reject(pdu::nak::LOCAL_LIMIT_EXCEEDED));
                continue;
            }
            accepted.push((c.id, iface));
            results.push(ContextResult::Accept(NDR20));
        }
        (results, accepted)
    }

    fn on_bind(&mut self, hdr: &Header, frag: &[u8]) {
        let body = &frag[HEADER_LEN..];
        if hdr.rpc_vers != RPC_VERS {
            self.push(pdu::bind_nak(
                hdr.call_id,
                nak::PROTOCOL_VERSION_NOT_SUPPORTED,
            ));
            return;
        }
        // The NTLM CHALLENGE that goes back in the bind_ack, if the bind is authenticated.
        let mut challenge = None;
        if hdr.auth_len != 0 {
            match self.start_auth(hdr, frag) {
                Ok(c) => challenge = Some(c),
                Err(reason) => {
                    self.push(pdu::bind_nak(hdr.call_id, reason));
                    return;
                }
            }
        }
        if self.bound {
            // One bind per connection; more contexts come through alter_context.
            self.push(pdu::bind_nak(hdr.call_id, nak::REASON_NOT_SPECIFIED));
            return;
        }
        let bind = match Bind::parse(body) {
            // An answer with this many results would not fit one fragment.
            Ok(b) if b.contexts.len() > MAX_PROPOSED_CONTEXTS => {
                self.push(pdu::bind_nak(hdr.call_id, nak::LOCAL_LIMIT_EXCEEDED));
                return;
            }
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(%e, "bad bind");
                self.push(pdu::bind_nak(hdr.call_id, nak::REASON_NOT_SPECIFIED));
                return;
            }
        };
        let (results, accepted) = self.negotiate(&bind);
        self.contexts.extend(accepted);
        self.bound = true;
        self.max_xmit_frag = bind.max_recv_frag.min(self.cfg.max_frag).max(MIN_FRAG);
        let recv = bind.max_xmit_frag.min(self.cfg.max_frag).max(MIN_FRAG);
        let ack = BindAck {
            max_xmit_frag: self.max_xmit_frag,
            max_recv_frag: recv,
            assoc_group_id: if bind.assoc_group_id != 0 {
                bind.assoc_group_id
            } else {
                self.cfg.assoc_group_id
            },
            sec_addr: self.cfg.sec_addr.clone(),
            results,
        };
        let pdu = ack.encode(ptype::BIND_ACK, hdr.call_id);
        match challenge {
            Some((trailer, token)) => self.push(pdu::with_auth(pdu, trailer, &token)),
            None => self.push(pdu),
        }
    }

    /// An authenticated bind: NTLMSSP NEGOTIATE in, CHALLENGE out (for the bind_ack).
    fn start_auth(&mut self, hdr: &Header, frag: &[u8]) -> Result<(SecTrailer, Vec<u8>), u16> {
        let Some(policy) = &self.policy else {
            return Err(nak::AUTHENTICATION_TYPE_NOT_RECOGNIZED);
        };
        // A second bind is refused below; it must not start a security context either.
        if self.bound || !matches!(self.security, Security::None) {
            return Err(nak::REASON_NOT_SPECIFIED);
        }
        let parts = pdu::split_auth(hdr, frag).map_err(|_| nak::REASON_NOT_SPECIFIED)?;
        let t = parts.trailer;
        // NTLMSSP, raw or inside SPNEGO (NtlmServer answers in kind); Kerberos needs a KDC.
        if !matches!(t.auth_type, auth_type::NTLMSSP | auth_type::SPNEGO) {
            tracing::debug!(
                auth_type = t.auth_type,
                "RPC bind with an unsupported auth type"
            );
            return Err(nak::AUTHENTICATION_TYPE_NOT_RECOGNIZED);
        }
        if !matches!(t.auth_level, auth_level::INTEGRITY | auth_level::PRIVACY)
            || t.auth_level < policy.min_level
        {
            tracing::debug!(
                level = t.auth_level,
                "RPC bind below the required auth level"
            );
            return Err(nak::REASON_NOT_SPECIFIED);
        }
        let mut ntlm = Box::new(NtlmServer::new(
            policy.users.clone(),
            &policy.netbios_name,
            &policy.domain,
        ));
        match ntlm.step(parts.auth_value) {
            Ok(AuthStep::Continue { token }) => {
                let trailer = SecTrailer { pad_len: 0, ..t };
                self.security = Security::Challenged { ntlm, trailer };
                Ok((trailer, token))
            }
            Ok(AuthStep::Done { .. }) | Err(_) => Err(nak::REASON_NOT_SPECIFIED),
        }
    }

    /// AUTH3: the NTLMSSP AUTHENTICATE (three legs; nothing is answered).
    fn on_auth3(&mut self, hdr: &Header, frag: &[u8]) {
        let _ = self.finish_auth(hdr, frag);
    }

    /// The client's last authentication leg (AUTH3, or an alter_context for SPNEGO, whose
    /// final token and mechListMIC go back in the alter_context_resp). Success establishes
    /// the security context and returns the token to send back (possibly empty); failure
    /// leaves a connection that can call nothing.
    fn finish_auth(&mut self, hdr: &Header, frag: &[u8]) -> Option<(SecTrailer, Vec<u8>)> {
        let Security::Challenged { mut ntlm, trailer } =
            std::mem::replace(&mut self.security, Security::Failed)
        else {
            return None;
        };
        let parts = match pdu::split_auth(hdr, frag) {
            Ok(p)
                if p.trailer.auth_type == trailer.auth_type
                    && p.trailer.auth_level == trailer.auth_level
                    && p.trailer.context_id == trailer.context_id =>
            {
                p
            }
            _ => {
                tracing::info!("RPC authentication leg does not match the bind's security context");
                return None;
            }
        };
        match ntlm.step(parts.auth_value) {
            Ok(AuthStep::Done {
                token,
                user,
                session_key,
                anonymous: false,
                ..
            }) => {
                // With SPNEGO the mechListMICs used the NTLM keys once in each direction; the
                // RC4 handles then start afresh and sequence numbers go on (MS-SPNG 3.3.5.1).
                let flags = ntlm.negotiated_flags().unwrap_or(0);
                let protection = NtlmProtection::server(&session_key, flags).map(|p| {
                    if ntlm.mech_list_mic_exchanged() {
                        p.after_mech_list_mic()
                    } else {
                        p
                    }
                });
                match protection {
                    Ok(p) => {
                        tracing::debug!(%user, level = trailer.auth_level, "RPC connection authenticated");
                        self.security = Security::Established {
                            protection: Box::new(p),
                            trailer,
                            user,
                        };
                        Some((trailer, token))
                    }
                    Err(e) => {
                        tracing::info!(%e, %user, "RPC authentication refused");
                        None
                    }
                }
            }
            Ok(AuthStep::Done { .. }) => {
                tracing::info!("RPC anonymous authentication refused");
                None
            }
            Ok(AuthStep::Continue { .. }) => {
                tracing::info!("RPC authentication did not finish in its last leg");
                None
            }
            Err(e) => {
                tracing::info!(%e, "RPC authentication failed");
                None
            }
        }
    }

    /// A request PDU: checked and unprotected according to the connection's security context,
    /// then handled like any request.
    fn on_protected_request(&mut self, hdr: &Header, frag: &[u8]) {
        let deny = |pipe: &mut Self, status| {
            pipe.push(pdu::fault_pdu(hdr.call_id, 0, status, true));
        };
        match &mut self.security {
            Security::Established {
                protection,
                trailer,
                ..
            } => {
                let Ok(parts) = pdu::split_auth(hdr, frag) else {
                    return deny(self, fault::ACCESS_DENIED);
                };
                let t = parts.trailer;
                if hdr.auth_len == 0
                    || t.auth_type != trailer.auth_type
                    || t.auth_level != trailer.auth_level
                    || t.context_id != trailer.context_id
                {
                    return deny(self, fault::ACCESS_DENIED);
                }
                let data_start = REQUEST_HEADER_LEN
                    + if hdr.flags & pfc::OBJECT_UUID != 0 {
                        16
                    } else {
                        0
                    };
                let data_end = parts.trailer_at;
                let pad = usize::from(t.pad_len);
                if data_start > data_end || pad > data_end - data_start {
                    return deny(self, fault::NCA_S_PROTO_ERROR);
                }
                let signature = parts.auth_value.to_vec();
                // The signature covers the whole PDU but its auth_value (MS-RPCE 3.3.1.5.2.2).
                let mut plain = frag[..data_end + pdu::SEC_TRAILER_LEN].to_vec();
                let checked = if t.auth_level == auth_level::PRIVACY {
                    protection.unseal(&mut plain, data_start..data_end, &signature)
                } else {
                    protection.verify(&plain, &signature)
                };
                if let Err(e) = checked {
                    // The RC4 stream and sequence numbers cannot recover from a lost or forged
                    // PDU: nothing further on this connection can be trusted.
                    tracing::info!(%e, "RPC request failed its integrity check");
                    self.security = Security::Failed;
                    return deny(self, fault::ACCESS_DENIED);
                }
                plain.truncate(data_end - pad);
                self.on_request(hdr, &plain[HEADER_LEN..]);
            }
            Security::None if self.policy.is_none() => {
                if hdr.auth_len != 0 {
                    return deny(self, fault::NCA_S_PROTO_ERROR);
                }
                self.on_request(hdr, &frag[HEADER_LEN..]);
            }
            Security::None | Security::Challenged { .. } | Security::Failed => {
                deny(self, fault::ACCESS_DENIED)
            }
        }
    }

    fn on_alter_context(&mut self, hdr: &Header, frag: &[u8]) {
        let body = &frag[HEADER_LEN..];
        // SPNEGO's third leg rides on an alter_context (MS-RPCE 3.3.1.5.2.2); any other
        // authenticated alter_context (a second security context) is refused.
        let mut final_token = None;
        if hdr.auth_len != 0 {
            match self.finish_auth(hdr, frag) {
                Some(t) => final_token = Some(t),
                None => {
                    self.push(pdu::fault_pdu(hdr.call_id, 0, fault::ACCESS_DENIED, true));
                    return;
                }
            }
        }
        let bind = match Bind::parse(body) {
            Ok(b) if self.bound && b.contexts.len() <= MAX_PROPOSED_CONTEXTS => b,
            _ => {
                self.push(pdu::fault_pdu(
                    hdr.call_id,
                    0,
                    fault::NCA_S_PROTO_ERROR,
                    true,
                ));
                return;
            }
        };
        let (results, accepted) = self.negotiate(&bind);
        self.contexts.extend(accepted);
        let ack = BindAck {
            max_xmit_frag: self.max_xmit_frag,
            max_recv_frag: bind.max_xmit_frag.min(self.cfg.max_frag).max(MIN_FRAG),
            assoc_group_id: if bind.assoc_group_id != 0 {
                bind.assoc_group_id
            } else {
                self.cfg.assoc_group_id
            },
            sec_addr: String::new(),
            results,
        };
        let pdu = ack.encode(ptype::ALTER_CONTEXT_RESP, hdr.call_id);
        match final_token {
            Some((trailer, token)) if !token.is_empty() => {
                self.push(pdu::with_auth(pdu, trailer, &token))
            }
            _ => self.push(pdu),
        }
    }

    fn on_request(&mut self, hdr: &Header, body: &[u8]) {
        let fault_now = |pipe: &mut Self, context_id, status| {
            pipe.push(pdu::fault_pdu(hdr.call_id, context_id, status, true));
        };
        if !self.bound {
            fault_now(self, 0, fault::NCA_S_PROTO_ERROR);
            return;
        }
        let req = match RequestFrag::parse(hdr.flags, body) {
            Ok(r) => r,
            Err(_) => {
                fault_now(self, 0, fault::NCA_S_PROTO_ERROR);
                return;
            }
        };
        let first = hdr.flags & pfc::FIRST_FRAG != 0;
        let last = hdr.flags & pfc::LAST_FRAG != 0;
        if first {
            if let Some(old) = self.reassembly.take() {
                // A new call before the last fragment of the previous one.
                if !old.discarding {
                    fault_now(self, old.context_id, fault::NCA_S_PROTO_ERROR);
                }
            }
            self.reassembly = Some(Reassembly {
                call_id: hdr.call_id,
                context_id: req.context_id,
                opnum: req.opnum,
                stub: Vec::with_capacity((req.alloc_hint as usize).min(self.cfg.max_request)),
                discarding: false,
            });
        }
        let Some(r) = self
            .reassembly
            .as_mut()
            .filter(|r| r.call_id == hdr.call_id)
        else {
            // A middle or last fragment of no call in progress.
            fault_now(self, req.context_id, fault::NCA_S_PROTO_ERROR);
            return;
        };
        if !r.discarding {
            if r.stub.len() + req.stub.len() > self.cfg.max_request {
                r.discarding = true;
                r.stub = Vec::new();
                let context_id = r.context_id;
                tracing::debug!(
                    call_id = hdr.call_id,
                    limit = self.cfg.max_request,
                    "RPC request too large"
                );
                fault_now(self, context_id, fault::NCA_S_PROTO_ERROR);
            } else {
                r.stub.extend_from_slice(req.stub);
            }
        }
        if !last {
            return;
        }
        let Some(r) = self.reassembly.take() else {
            return;
        };
        if r.discarding {
            return;
        }
        let call = CallId {
            call_id: r.call_id,
            context_id: r.context_id,
        };
        let Some(&iface) = self.contexts.get(&r.context_id) else {
            fault_now(self, r.context_id, fault::NCA_S_UNK_IF);
            return;
        };
        let result = self.interfaces[iface].call(call, r.opnum, &r.stub);
        if result == CallResult::Pending {
            self.pending.push(call);
        } else {
            self.answer(call, result);
        }
    }

    fn answer(&mut self, call: CallId, result: CallResult) {
        match result {
            CallResult::Reply(stub) => {
                if let Security::Established {
                    protection,
                    trailer,
                    ..
                } = &mut self.security
                {
                    let frags = pdu::protected_response_fragments(
                        call.call_id,
                        call.context_id,
                        &stub,
                        self.max_xmit_frag,
                        *trailer,
                        SIGNATURE_LEN,
                    );
                    let privacy = trailer.auth_level == auth_level::PRIVACY;
                    let mut out = Vec::with_capacity(frags.len());
                    for (mut f, data) in frags {
                        let signature = if privacy {
                            match protection.seal(&mut f, data) {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::error!(%e, "cannot seal an RPC response");
                                    return;
                                }
                            }
                        } else {
                            protection.sign(&f)
                        };
                        f.extend_from_slice(&signature);
                        out.push(f);
                    }
                    out.into_iter().for_each(|f| self.push(f));
                    return;
                }
                for f in pdu::response_fragments(
                    call.call_id,
                    call.context_id,
                    &stub,
                    self.max_xmit_frag,
                ) {
                    self.push(f);
                }
            }
            CallResult::Fault(status) => {
                let not_executed = matches!(
                    status,
                    fault::NCA_S_OP_RNG_ERROR | fault::NCA_S_UNK_IF | fault::BAD_STUB_DATA
                );
                self.push(pdu::fault_pdu(
                    call.call_id,
                    call.context_id,
                    status,
                    not_executed,
                ));
            }
            CallResult::Pending => self.pending.push(call),
        }
    }
}

/// The header checks every PDU passes before its length is trusted.
fn check_header(h: &Header) -> Result<(), &'static str> {
    // A big-endian header's frag_len would be read wrongly: nothing after it can be framed.
    if h.drep[0] & 0xF0 != 0x10 {
        return Err("only little-endian data representation is supported");
    }
    if usize::from(h.frag_len) < HEADER_LEN + usize::from(h.auth_len) {
        return Err("fragment length below its header");
    }
    // Version 5 is the only one; a bind of another version still gets its bind_nak.
    if h.rpc_vers != RPC_VERS && h.ptype != ptype::BIND {
        return Err("RPC version");
    }
    Ok(())
}
