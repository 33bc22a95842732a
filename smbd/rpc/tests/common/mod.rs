//! A tiny DCE/RPC client for the tests and the corpus generator: PDU builders and decoders
//! of the srvsvc answers.
#![allow(dead_code)]

use smb_rpc::pdu::{
    self, pfc, ptype, Bind, BindAck, ContextElem, Header, SyntaxId, HEADER_LEN, NDR20, NDR64,
    REQUEST_HEADER_LEN,
};
use smb_rpc::srvsvc::SRVSVC;
use smb_rpc::{NdrReader, NdrWriter, RpcPipe};

pub fn bind_time_feature_syntax(bits: u8) -> SyntaxId {
    let mut uuid = [
        0x2c, 0x1c, 0xb7, 0x6c, 0x12, 0x98, 0x40, 0x45, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    uuid[8] = bits;
    SyntaxId {
        uuid: smb_rpc::pdu::Uuid(uuid),
        major: 1,
        minor: 0,
    }
}

/// The bind smbclient and Windows send: srvsvc over NDR20, NDR64 and feature negotiation.
pub fn windows_bind(call_id: u32, max_recv_frag: u16) -> Vec<u8> {
    Bind {
        max_xmit_frag: 4280,
        max_recv_frag,
        assoc_group_id: 0,
        contexts: vec![
            ContextElem {
                id: 0,
                abstract_syntax: SRVSVC,
                transfer_syntaxes: vec![NDR20],
            },
            ContextElem {
                id: 1,
                abstract_syntax: SRVSVC,
                transfer_syntaxes: vec![NDR64],
            },
            ContextElem {
                id: 2,
                abstract_syntax: SRVSVC,
                transfer_syntaxes: vec![bind_time_feature_syntax(3)],
            },
        ],
    }
    .encode(ptype::BIND, call_id)
}

pub fn share_enum_stub(level: u32, resume: Option<u32>) -> Vec<u8> {
    let mut w = NdrWriter::new();
    w.referent_id();
    w.conformant_varying_string("\\\\127.0.0.1");
    w.u32(level);
    w.u32(level);
    w.referent_id();
    w.u32(0);
    w.null_ptr();
    w.u32(u32::MAX);
    match resume {
        Some(r) => {
            w.referent_id();
            w.u32(r);
        }
        None => w.null_ptr(),
    }
    w.into_bytes()
}

pub fn share_get_info_stub(name: &str, level: u32) -> Vec<u8> {
    let mut w = NdrWriter::new();
    w.null_ptr();
    w.conformant_varying_string(name);
    w.u32(level);
    w.into_bytes()
}

pub fn server_get_info_stub(level: u32) -> Vec<u8> {
    let mut w = NdrWriter::new();
    w.referent_id();
    w.conformant_varying_string("srv");
    w.u32(level);
    w.into_bytes()
}

/// Everything the pipe has to say, split into PDUs.
pub fn drain(pipe: &mut RpcPipe) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(r) = pipe.read(usize::MAX) {
        assert_eq!(r.message_remaining, 0);
        out.push(r.data);
    }
    out
}

pub fn ack(pdu: &[u8]) -> BindAck {
    let h = Header::parse(pdu).unwrap();
    assert!(h.ptype == ptype::BIND_ACK || h.ptype == ptype::ALTER_CONTEXT_RESP);
    BindAck::parse(&pdu[HEADER_LEN..]).unwrap()
}

/// (status, flags) of a fault PDU.
pub fn fault_of(pdu: &[u8]) -> (u32, u8) {
    let h = Header::parse(pdu).unwrap();
    assert_eq!(h.ptype, ptype::FAULT, "not a fault: {pdu:?}");
    (u32::from_le_bytes(pdu[24..28].try_into().unwrap()), h.flags)
}

/// The stub of a (possibly fragmented) response, checking its framing.
pub fn response_stub(frags: &[Vec<u8>], call_id: u32) -> Vec<u8> {
    let mut stub = Vec::new();
    for (i, f) in frags.iter().enumerate() {
        let h = Header::parse(f).unwrap();
        assert_eq!(h.ptype, ptype::RESPONSE, "not a response: {f:?}");
        assert_eq!(h.call_id, call_id);
        assert_eq!(h.flags & pfc::FIRST_FRAG != 0, i == 0);
        assert_eq!(h.flags & pfc::LAST_FRAG != 0, i + 1 == frags.len());
        stub.extend_from_slice(&f[REQUEST_HEADER_LEN..]);
    }
    stub
}

#[derive(Debug, PartialEq, Eq)]
pub struct Listed {
    pub level: u32,
    pub shares: Vec<(String, Option<(u32, String)>)>,
    pub total: u32,
    pub werror: u32,
}

/// Decode a NetrShareEnum response at level 0 or 1.
pub fn decode_share_enum(stub: &[u8]) -> Listed {
    let mut r = NdrReader::new(stub);
    let level = r.u32().unwrap();
    assert_eq!(r.u32().unwrap(), level);
    let mut shares = Vec::new();
    if r.unique_ptr().unwrap() {
        let n = r.u32().unwrap();
        assert!(r.unique_ptr().unwrap());
        assert_eq!(r.u32().unwrap(), n);
        let mut types = Vec::new();
        for _ in 0..n {
            assert!(r.unique_ptr().unwrap());
            types.push((level == 1).then(|| {
                let ty = r.u32().unwrap();
                assert!(r.unique_ptr().unwrap());
                ty
            }));
        }
        for ty in types {
            let name = r.conformant_varying_string().unwrap();
            let extra = ty.map(|t| (t, r.conformant_varying_string().unwrap()));
            shares.push((name, extra));
        }
    }
    let total = r.u32().unwrap();
    if r.unique_ptr().unwrap() {
        r.u32().unwrap();
    }
    let werror = r.u32().unwrap();
    assert_eq!(r.remaining(), 0);
    Listed {
        level,
        shares,
        total,
        werror,
    }
}

pub fn request(call_id: u32, context_id: u16, opnum: u16, stub: &[u8]) -> Vec<u8> {
    pdu::request(
        call_id,
        pfc::FIRST_FRAG | pfc::LAST_FRAG,
        context_id,
        opnum,
        stub,
    )
}
