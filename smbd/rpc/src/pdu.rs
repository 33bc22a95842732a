//! Connection-oriented DCE/RPC PDUs (C706 chapter 12.6, MS-RPCE 2.2.2): the common header,
//! bind / alter_context and their answers, request, response and fault.

use std::fmt;

use crate::ndr::DecodeError;

pub const RPC_VERS: u8 = 5;
pub const HEADER_LEN: usize = 16;
/// Request / response / fault header: common header, alloc_hint, p_cont_id and opnum or
/// cancel_count + reserved.
pub const REQUEST_HEADER_LEN: usize = HEADER_LEN + 8;
/// Every implementation must receive fragments this large (C706 12.6.3.1 MustRecvFragSize).
pub const MIN_FRAG: u16 = 1432;
/// Little-endian integers, ASCII characters, IEEE floats: the only data representation spoken.
pub const DREP_LE: [u8; 4] = [0x10, 0, 0, 0];

pub mod ptype {
    pub const REQUEST: u8 = 0;
    pub const RESPONSE: u8 = 2;
    pub const FAULT: u8 = 3;
    pub const BIND: u8 = 11;
    pub const BIND_ACK: u8 = 12;
    pub const BIND_NAK: u8 = 13;
    pub const ALTER_CONTEXT: u8 = 14;
    pub const ALTER_CONTEXT_RESP: u8 = 15;
    pub const AUTH3: u8 = 16;
    pub const SHUTDOWN: u8 = 17;
    pub const CO_CANCEL: u8 = 18;
    pub const ORPHANED: u8 = 19;
}

pub mod pfc {
    pub const FIRST_FRAG: u8 = 0x01;
    pub const LAST_FRAG: u8 = 0x02;
    pub const PENDING_CANCEL: u8 = 0x04;
    pub const CONC_MPX: u8 = 0x10;
    pub const DID_NOT_EXECUTE: u8 = 0x20;
    pub const MAYBE: u8 = 0x40;
    pub const OBJECT_UUID: u8 = 0x80;
}

/// Fault status codes (C706 appendix E, MS-RPCE 2.2.2.12 / 3.1.1.5.5).
pub mod fault {
    pub const ACCESS_DENIED: u32 = 0x0000_0005;
    /// RPC_X_BAD_STUB_DATA: what Windows and Samba answer for undecodable stub data.
    pub const BAD_STUB_DATA: u32 = 0x0000_06F7;
    pub const NCA_S_OP_RNG_ERROR: u32 = 0x1C01_0002;
    pub const NCA_S_UNK_IF: u32 = 0x1C01_0003;
    pub const NCA_S_PROTO_ERROR: u32 = 0x1C01_000B;
    pub const NCA_S_FAULT_CANCEL: u32 = 0x1C00_000D;
}

/// bind_nak provider_reject_reason (C706 12.6.3.8, MS-RPCE 2.2.2.5).
pub mod nak {
    pub const REASON_NOT_SPECIFIED: u16 = 0;
    pub const LOCAL_LIMIT_EXCEEDED: u16 = 2;
    pub const PROTOCOL_VERSION_NOT_SUPPORTED: u16 = 4;
    pub const AUTHENTICATION_TYPE_NOT_RECOGNIZED: u16 = 8;
}

/// Authentication services (MS-RPCE 2.2.1.1.7).
pub mod auth_type {
    pub const NONE: u8 = 0;
    /// RPC_C_AUTHN_GSS_NEGOTIATE (SPNEGO).
    pub const SPNEGO: u8 = 9;
    /// RPC_C_AUTHN_WINNT (NTLMSSP).
    pub const NTLMSSP: u8 = 10;
}

/// Authentication levels (MS-RPCE 2.2.1.1.8).
pub mod auth_level {
    pub const NONE: u8 = 1;
    pub const CONNECT: u8 = 2;
    pub const CALL: u8 = 3;
    pub const PKT: u8 = 4;
    pub const INTEGRITY: u8 = 5;
    pub const PRIVACY: u8 = 6;
}

/// Length of the sec_trailer (auth_verifier_co_t without its auth_value, MS-RPCE 2.2.2.11).
pub const SEC_TRAILER_LEN: usize = 8;
/// Stub data is padded to this alignment before the sec_trailer of a protected request or
/// response (MS-RPCE 2.2.2.11: the trailer follows 16-byte aligned data).
pub const AUTH_PAD_ALIGN: usize = 16;

/// The sec_trailer of an authenticated PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecTrailer {
    pub auth_type: u8,
    pub auth_level: u8,
    pub pad_len: u8,
    pub context_id: u32,
}

impl SecTrailer {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.auth_type, self.auth_level, self.pad_len, 0]);
        out.extend_from_slice(&self.context_id.to_le_bytes());
    }
}

/// The parts of an authenticated PDU (`frag`, whose header is `hdr`, with `auth_len > 0`):
/// where the body before the padding ends, the sec_trailer and the auth_value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthParts<'a> {
    /// Offset of the sec_trailer; the padding (`trailer.pad_len` bytes) ends here.
    pub trailer_at: usize,
    pub trailer: SecTrailer,
    pub auth_value: &'a [u8],
}

/// Splits the auth verifier off an authenticated PDU. The header's `frag_len` must be the
/// fragment's length (checked by the caller's framing).
pub fn split_auth<'a>(hdr: &Header, frag: &'a [u8]) -> Result<AuthParts<'a>, DecodeError> {
    let auth_len = usize::from(hdr.auth_len);
    let trailer_at = frag
        .len()
        .checked_sub(auth_len + SEC_TRAILER_LEN)
        .filter(|at| *at >= HEADER_LEN)
        .ok_or(DecodeError::Truncated {
            at: frag.len(),
            needed: HEADER_LEN + SEC_TRAILER_LEN + auth_len,
        })?;
    let t = &frag[trailer_at..trailer_at + SEC_TRAILER_LEN];
    Ok(AuthParts {
        trailer_at,
        trailer: SecTrailer {
            auth_type: t[0],
            auth_level: t[1],
            pad_len: t[2],
            context_id: le32(&t[4..]),
        },
        auth_value: &frag[trailer_at + SEC_TRAILER_LEN..],
    })
}

/// Appends an auth verifier to a finished PDU without one (a bind_ack answering an
/// authenticated bind): pads the body to 4 bytes, adds the sec_trailer and `auth_value`, and
/// fixes `frag_len` and `auth_len`.
pub fn with_auth(mut pdu: Vec<u8>, trailer: SecTrailer, auth_value: &[u8]) -> Vec<u8> {
    let pad = (4 - pdu.len() % 4) % 4;
    pdu.resize(pdu.len() + pad, 0);
    SecTrailer {
        pad_len: pad as u8,
        ..trailer
    }
    .write(&mut pdu);
    pdu.extend_from_slice(auth_value);
    let auth_len = u16::try_from(auth_value.len()).unwrap_or(u16::MAX);
    pdu[10..12].copy_from_slice(&auth_len.to_le_bytes());
    finish(pdu)
}

/// A UUID in its NDR wire order (first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Self([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02x}"))
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An interface or transfer syntax: UUID and version (major in the low 16 bits on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SyntaxId {
    pub uuid: Uuid,
    pub major: u16,
    pub minor: u16,
}

pub const SYNTAX_LEN: usize = 20;

impl SyntaxId {
    fn parse(b: &[u8]) -> Self {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[..16]);
        Self {
            uuid: Uuid(uuid),
            major: u16::from_le_bytes([b[16], b[17]]),
            minor: u16::from_le_bytes([b[18], b[19]]),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.uuid.0);
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
    }
}

/// NDR 2.0, the transfer syntax served.
pub const NDR20: SyntaxId = SyntaxId {
    uuid: Uuid::from_fields(
        0x8a88_5d04,
        0x1ceb,
        0x11c9,
        [0x9f, 0xe8, 0x08, 0x00, 0x2b, 0x10, 0x48, 0x60],
    ),
    major: 2,
    minor: 0,
};

/// NDR64: recognised only to be refused per context.
pub const NDR64: SyntaxId = SyntaxId {
    uuid: Uuid::from_fields(
        0x7171_0533,
        0xbeba,
        0x4937,
        [0x83, 0x19, 0xb5, 0xdb, 0xef, 0x9c, 0xcc, 0x36],
    ),
    major: 1,
    minor: 0,
};

/// Bind time feature negotiation (MS-RPCE 3.3.1.5.3): a transfer syntax whose UUID starts
/// with 6cb71c2c-9812-4540 and carries the client's feature bitmask in its ninth byte.
const BIND_TIME_FEATURE_PREFIX: [u8; 8] = [0x2c, 0x1c, 0xb7, 0x6c, 0x12, 0x98, 0x40, 0x45];

/// The feature bitmask of a bind time feature negotiation syntax, if `s` is one.
pub fn bind_time_features(s: &SyntaxId) -> Option<u16> {
    (s.uuid.0[..8] == BIND_TIME_FEATURE_PREFIX)
        .then(|| u16::from_le_bytes([s.uuid.0[8], s.uuid.0[9]]))
}

/// The common header of every connection-oriented PDU (C706 12.6.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub rpc_vers: u8,
    pub rpc_vers_minor: u8,
    pub ptype: u8,
    pub flags: u8,
    pub drep: [u8; 4],
    pub frag_len: u16,
    pub auth_len: u16,
    pub call_id: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                at: b.len(),
                needed: HEADER_LEN,
            });
        }
        Ok(Self {
            rpc_vers: b[0],
            rpc_vers_minor: b[1],
            ptype: b[2],
            flags: b[3],
            drep: [b[4], b[5], b[6], b[7]],
            frag_len: u16::from_le_bytes([b[8], b[9]]),
            auth_len: u16::from_le_bytes([b[10], b[11]]),
            call_id: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        })
    }

    /// A server header; `frag_len` is patched by [`finish`].
    fn server(ptype: u8, flags: u8, call_id: u32) -> Self {
        Self {
            rpc_vers: RPC_VERS,
            rpc_vers_minor: 0,
            ptype,
            flags,
            drep: DREP_LE,
            frag_len: 0,
            auth_len: 0,
            call_id,
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.rpc_vers, self.rpc_vers_minor, self.ptype, self.flags]);
        out.extend_from_slice(&self.drep);
        out.extend_from_slice(&self.frag_len.to_le_bytes());
        out.extend_from_slice(&self.auth_len.to_le_bytes());
        out.extend_from_slice(&self.call_id.to_le_bytes());
    }
}

/// Patch the fragment length into a PDU built with a zero one.
fn finish(mut pdu: Vec<u8>) -> Vec<u8> {
    let len = u16::try_from(pdu.len()).unwrap_or(u16::MAX);
    pdu[8..10].copy_from_slice(&len.to_le_bytes());
    pdu
}

fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], DecodeError> {
    let s = at
        .checked_add(n)
        .and_then(|end| b.get(*at..end))
        .ok_or(DecodeError::Truncated { at: *at, needed: n })?;
    *at += n;
    Ok(s)
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// One presentation context a client proposes (p_cont_elem_t).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextElem {
    pub id: u16,
    pub abstract_syntax: SyntaxId,
    pub transfer_syntaxes: Vec<SyntaxId>,
}

/// The body of a bind or alter_context PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub max_xmit_frag: u16,
    pub max_recv_frag: u16,
    pub assoc_group_id: u32,
    pub contexts: Vec<ContextElem>,
}

impl Bind {
    /// `body`: the PDU after the common header, without any auth trailer.
    pub fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        let mut at = 0;
        let f = take(body, &mut at, 12)?;
        let n = f[8];
        let mut contexts = Vec::with_capacity(n.into());
        for _ in 0..n {
            let e = take(body, &mut at, 4 + SYNTAX_LEN)?;
            let n_transfer = e[2];
            let mut transfer_syntaxes = Vec::with_capacity(n_transfer.into());
            for _ in 0..n_transfer {
                transfer_syntaxes.push(SyntaxId::parse(take(body, &mut at, SYNTAX_LEN)?));
            }
            contexts.push(ContextElem {
                id: le16(e),
                abstract_syntax: SyntaxId::parse(&e[4..]),
                transfer_syntaxes,
            });
        }
        Ok(Self {
            max_xmit_frag: le16(f),
            max_recv_frag: le16(&f[2..]),
            assoc_group_id: le32(&f[4..]),
            contexts,
        })
    }

    pub fn encode(&self, ptype: u8, call_id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        Header::server(ptype, pfc::FIRST_FRAG | pfc::LAST_FRAG, call_id).write(&mut out);
        out.extend_from_slice(&self.max_xmit_frag.to_le_bytes());
        out.extend_from_slice(&self.max_recv_frag.to_le_bytes());
        out.extend_from_slice(&self.assoc_group_id.to_le_bytes());
        out.extend_from_slice(&[self.contexts.len() as u8, 0, 0, 0]);
        for c in &self.contexts {
            out.extend_from_slice(&c.id.to_le_bytes());
            out.extend_from_slice(&[c.transfer_syntaxes.len() as u8, 0]);
            c.abstract_syntax.write(&mut out);
            c.transfer_syntaxes.iter().for_each(|t| t.write(&mut out));
        }
        finish(out)
    }
}

/// The answer to one proposed presentation context (p_result_t).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextResult {
    Accept(SyntaxId),
    /// provider_rejection with its reason (1 abstract syntax, 2 transfer syntaxes).
    Reject(u16),
    /// Bind time feature negotiation answered with the features the server supports.
    NegotiateAck(u16),
}

pub const REJECT_ABSTRACT_SYNTAX: u16 = 1;
pub const REJECT_TRANSFER_SYNTAXES: u16 = 2;

/// bind_ack / alter_context_resp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindAck {
    pub max_xmit_frag: u16,
    pub max_recv_frag: u16,
    pub assoc_group_id: u32,
    /// Secondary address; empty in alter_context_resp.
    pub sec_addr: String,
    pub results: Vec<ContextResult>,
}

impl BindAck {
    pub fn encode(&self, ptype: u8, call_id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        Header::server(ptype, pfc::FIRST_FRAG | pfc::LAST_FRAG, call_id).write(&mut out);
        out.extend_from_slice(&self.max_xmit_frag.to_le_bytes());
        out.extend_from_slice(&self.max_recv_frag.to_le_bytes());
        out.extend_from_slice(&self.assoc_group_id.to_le_bytes());
        if self.sec_addr.is_empty() {
            out.extend_from_slice(&0u16.to_le_bytes());
        } else {
            // port_any_t: length includes the terminating NUL.
            out.extend_from_slice(&(self.sec_addr.len() as u16 + 1).to_le_bytes());
            out.extend_from_slice(self.sec_addr.as_bytes());
            out.push(0);
        }
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(&[self.results.len() as u8, 0, 0, 0]);
        for r in &self.results {
            let (result, reason, syntax) = match r {
                ContextResult::Accept(s) => (0u16, 0u16, *s),
                ContextResult::Reject(reason) => (2, *reason, SyntaxId::default()),
                ContextResult::NegotiateAck(features) => (3, *features, SyntaxId::default()),
            };
            out.extend_from_slice(&result.to_le_bytes());
            out.extend_from_slice(&reason.to_le_bytes());
            syntax.write(&mut out);
        }
        finish(out)
    }

    /// Parse a bind_ack or alter_context_resp body (for tests and clients).
    pub fn parse(body: &[u8]) -> Result<Self, DecodeError> {
        let mut at = 0;
        let f = take(body, &mut at, 10)?;
        let addr_len = le16(&f[8..]) as usize;
        let addr = take(body, &mut at, addr_len)?;
        let sec_addr = String::from_utf8_lossy(addr.strip_suffix(&[0]).unwrap_or(addr)).into();
        // Results start 4-aligned relative to the PDU, whose header is 16 bytes.
        at = at.next_multiple_of(4);
        let n = take(body, &mut at, 4)?[0];
        let mut results = Vec::new();
        for _ in 0..n {
            let r = take(body, &mut at, 4 + SYNTAX_LEN)?;
            let reason = le16(&r[2..]);
            results.push(match le16(r) {
                0 => ContextResult::Accept(SyntaxId::parse(&r[4..])),
                3 => ContextResult::NegotiateAck(reason),
                _ => ContextResult::Reject(reason),
            });
        }
        Ok(Self {
            max_xmit_frag: le16(f),
            max_recv_frag: le16(&f[2..]),
            assoc_group_id: le32(&f[4..]),
            sec_addr,
            results,
        })
    }
}

/// bind_nak offering protocol version 5.0.
pub fn bind_nak(call_id: u32, reason: u16) -> Vec<u8> {
    let mut out = Vec::new();
    Header::server(ptype::BIND_NAK, pfc::FIRST_FRAG | pfc::LAST_FRAG, call_id).write(&mut out);
    out.extend_from_slice(&reason.to_le_bytes());
    out.extend_from_slice(&[1, RPC_VERS, 0]);
    out.resize(out.len().next_multiple_of(4), 0);
    finish(out)
}

/// A request fragment's fields after the common header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFrag<'a> {
    pub alloc_hint: u32,
    pub context_id: u16,
    pub opnum: u16,
    pub object: Option<Uuid>,
    pub stub: &'a [u8],
}

impl<'a> RequestFrag<'a> {
    pub fn parse(flags: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut at = 0;
        let f = take(body, &mut at, 8)?;
        let object = if flags & pfc::OBJECT_UUID != 0 {
            let mut u = [0u8; 16];
            u.copy_from_slice(take(body, &mut at, 16)?);
            Some(Uuid(u))
        } else {
            None
        };
        Ok(Self {
            alloc_hint: le32(f),
            context_id: le16(&f[4..]),
            opnum: le16(&f[6..]),
            object,
            stub: &body[at..],
        })
    }
}

/// A request PDU (one fragment), as a client sends it.
pub fn request(call_id: u32, flags: u8, context_id: u16, opnum: u16, stub: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Header {
        ptype: ptype::REQUEST,
        ..Header::server(ptype::REQUEST, flags, call_id)
    }
    .write(&mut out);
    out.extend_from_slice(&(stub.len() as u32).to_le_bytes());
    out.extend_from_slice(&context_id.to_le_bytes());
    out.extend_from_slice(&opnum.to_le_bytes());
    out.extend_from_slice(stub);
    finish(out)
}

/// The response to a call, cut into fragments of at most `max_xmit_frag` bytes. Every
/// fragment's stub but the last is a multiple of 8 bytes, so NDR alignment survives the cut
/// (C706 12.6.3.2).
pub fn response_fragments(
    call_id: u32,
    context_id: u16,
    stub: &[u8],
    max_xmit_frag: u16,
) -> Vec<Vec<u8>> {
    fragments(call_id, context_id, stub, max_xmit_frag, None)
        .into_iter()
        .map(|(f, _)| f)
        .collect()
}

/// The protected response to a call (packet integrity or privacy), one fragment at a time
/// before its signature: the PDU up to and including the sec_trailer (`frag_len` and
/// `auth_len` already set for a `sig_len`-byte signature), and the range of its stub data and
/// padding (what packet privacy encrypts). Stubs are padded to 16 bytes (MS-RPCE 2.2.2.11).
pub fn protected_response_fragments(
    call_id: u32,
    context_id: u16,
    stub: &[u8],
    max_xmit_frag: u16,
    trailer: SecTrailer,
    sig_len: usize,
) -> Vec<(Vec<u8>, std::ops::Range<usize>)> {
    fragments(
        call_id,
        context_id,
        stub,
        max_xmit_frag,
        Some((trailer, sig_len)),
    )
}

/// The fragments of a response, each with the range of its stub data and padding; with
/// `auth`, each carries the sec_trailer and room (in its lengths) for the signature.
fn fragments(
    call_id: u32,
    context_id: u16,
    stub: &[u8],
    max_xmit_frag: u16,
    auth: Option<(SecTrailer, usize)>,
) -> Vec<(Vec<u8>, std::ops::Range<usize>)> {
    let (align, overhead) = match auth {
        Some((_, sig_len)) => (AUTH_PAD_ALIGN, SEC_TRAILER_LEN + sig_len),
        None => (8, 0),
    };
    let room = usize::from(max_xmit_frag.max(MIN_FRAG)) - REQUEST_HEADER_LEN - overhead;
    let per_frag = (room / align) * align;
    let mut frags = Vec::new();
    let mut at = 0;
    loop {
        let chunk = (stub.len() - at).min(per_frag);
        let pad = match auth {
            Some(_) => (align - chunk % align) % align,
            None => 0,
        };
        let mut flags = 0;
        if at == 0 {
            flags |= pfc::FIRST_FRAG;
        }
        if at + chunk == stub.len() {
            flags |= pfc::LAST_FRAG;
        }
        let frag_len = REQUEST_HEADER_LEN + chunk + pad + overhead;
        let mut out = Vec::with_capacity(frag_len);
        Header {
            frag_len: u16::try_from(frag_len).unwrap_or(u16::MAX),
            auth_len: u16::try_from(auth.map_or(0, |(_, sig_len)| sig_len)).unwrap_or(u16::MAX),
            ..Header::server(ptype::RESPONSE, flags, call_id)
        }
        .write(&mut out);
        // alloc_hint: the stub bytes still to come, this fragment's included.
        out.extend_from_slice(&((stub.len() - at) as u32).to_le_bytes());
        out.extend_from_slice(&context_id.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&stub[at..at + chunk]);
        out.resize(out.len() + pad, 0);
        let data = REQUEST_HEADER_LEN..out.len();
        if let Some((trailer, _)) = auth {
            SecTrailer {
                pad_len: pad as u8,
                ..trailer
            }
            .write(&mut out);
        }
        frags.push((out, data));
        at += chunk;
        if at == stub.len() {
            return frags;
        }
    }
}

/// A fault PDU (C706 12.6.4.7; MS-RPCE 2.2.2.12 adds four reserved bytes).
pub fn fault_pdu(call_id: u32, context_id: u16, status: u32, did_not_execute: bool) -> Vec<u8> {
    let mut flags = pfc::FIRST_FRAG | pfc::LAST_FRAG;
    if did_not_execute {
        flags |= pfc::DID_NOT_EXECUTE;
    }
    let mut out = Vec::new();
    Header::server(ptype::FAULT, flags, call_id).write(&mut out);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&context_id.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_prints_in_canonical_form() {
        assert_eq!(
            NDR20.uuid.to_string(),
            "8a885d04-1ceb-11c9-9fe8-08002b104860"
        );
    }

    #[test]
    fn large_response_is_cut_at_eight_byte_boundaries() {
        let stub: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let frags = response_fragments(7, 1, &stub, 4280);
        assert!(frags.len() > 2);
        let mut joined = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            let h = Header::parse(f).unwrap();
            assert!(f.len() <= 4280);
            assert_eq!(usize::from(h.frag_len), f.len());
            assert_eq!(h.flags & pfc::FIRST_FRAG != 0, i == 0);
            assert_eq!(h.flags & pfc::LAST_FRAG != 0, i == frags.len() - 1);
            let data = &f[REQUEST_HEADER_LEN..];
            if i + 1 < frags.len() {
                assert_eq!(data.len() % 8, 0);
            }
            assert_eq!(le32(&f[16..]) as usize, stub.len() - joined.len());
            joined.extend_from_slice(data);
        }
        assert_eq!(joined, stub);
    }

    #[test]
    fn empty_response_is_one_fragment() {
        let frags = response_fragments(1, 0, &[], 4280);
        assert_eq!(frags.len(), 1);
        assert_eq!(frags[0].len(), REQUEST_HEADER_LEN);
        assert_eq!(frags[0][3], pfc::FIRST_FRAG | pfc::LAST_FRAG);
    }

    #[test]
    fn bind_ack_round_trip() {
        let ack = BindAck {
            max_xmit_frag: 4280,
            max_recv_frag: 4280,
            assoc_group_id: 0x1234,
            sec_addr: "\\PIPE\\srvsvc".into(),
            results: vec![
                ContextResult::Accept(NDR20),
                ContextResult::Reject(REJECT_TRANSFER_SYNTAXES),
                ContextResult::NegotiateAck(2),
            ],
        };
        let pdu = ack.encode(ptype::BIND_ACK, 3);
        assert_eq!(pdu.len() % 4, 0);
        assert_eq!(BindAck::parse(&pdu[HEADER_LEN..]).unwrap(), ack);
    }
}
