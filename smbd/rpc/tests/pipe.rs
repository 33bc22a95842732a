//! The RPC pipe state machine with srvsvc, driven the way smbclient and Windows drive it.

mod common;

use common::*;
use smb_rpc::pdu::{
    self, fault, nak, pfc, ptype, Bind, ContextElem, ContextResult, Header, SyntaxId, HEADER_LEN,
    NDR20, REJECT_ABSTRACT_SYNTAX, REJECT_TRANSFER_SYNTAXES,
};
use smb_rpc::srvsvc::{opnum, stype, werror, SRVSVC};
use smb_rpc::{
    CallId, CallResult, NdrReader, PipeConfig, PipeError, RpcInterface, RpcPipe, ServerInfo,
    ShareEntry, Srvsvc,
};

fn shares(n: usize) -> Vec<ShareEntry> {
    let mut v: Vec<ShareEntry> = (0..n)
        .map(|i| ShareEntry {
            name: format!("share{i}"),
            share_type: stype::DISKTREE,
            comment: format!("comment of share number {i}, long enough to need fragments"),
        })
        .collect();
    v.push(ShareEntry {
        name: "IPC$".into(),
        share_type: stype::IPC | stype::SPECIAL,
        comment: "IPC Service".into(),
    });
    v
}

fn pipe_with(n: usize) -> RpcPipe {
    let server = ServerInfo {
        name: "NODE1".into(),
        comment: "test server".into(),
        version_major: 10,
        version_minor: 0,
    };
    RpcPipe::new(
        PipeConfig {
            sec_addr: "\\PIPE\\srvsvc".into(),
            max_request: 4096,
            ..PipeConfig::default()
        },
        vec![Box::new(Srvsvc::new(server, shares(n)))],
    )
}

fn bound(n: usize, max_recv_frag: u16) -> RpcPipe {
    let mut p = pipe_with(n);
    p.write(&windows_bind(1, max_recv_frag)).unwrap();
    let out = drain(&mut p);
    assert_eq!(out.len(), 1);
    p
}

#[test]
fn bind_accepts_ndr20_rejects_ndr64_and_answers_feature_negotiation() {
    let mut p = pipe_with(1);
    p.write(&windows_bind(1, 4280)).unwrap();
    let out = drain(&mut p);
    assert_eq!(out.len(), 1);
    let a = ack(&out[0]);
    assert_eq!(a.sec_addr, "\\PIPE\\srvsvc");
    assert_eq!(a.max_xmit_frag, 4280);
    assert_ne!(a.assoc_group_id, 0);
    assert_eq!(
        a.results,
        vec![
            ContextResult::Accept(NDR20),
            ContextResult::Reject(REJECT_TRANSFER_SYNTAXES),
            // Client asked for bits 1|2; only keep-connection-on-orphan is offered.
            ContextResult::NegotiateAck(2),
        ]
    );
}

#[test]
fn unknown_interface_is_rejected_per_context_and_requests_to_it_fault() {
    let mut p = pipe_with(1);
    let other = SyntaxId {
        major: 1,
        ..SyntaxId::default()
    };
    let bind = Bind {
        max_xmit_frag: 4280,
        max_recv_frag: 4280,
        assoc_group_id: 7,
        contexts: vec![
            ContextElem {
                id: 0,
                abstract_syntax: other,
                transfer_syntaxes: vec![NDR20],
            },
            ContextElem {
                id: 1,
                // srvsvc 2.0: the version is part of the syntax.
                abstract_syntax: SyntaxId { major: 2, ..SRVSVC },
                transfer_syntaxes: vec![NDR20],
            },
        ],
    };
    p.write(&bind.encode(ptype::BIND, 1)).unwrap();
    let a = ack(&drain(&mut p)[0]);
    assert_eq!(a.assoc_group_id, 7);
    assert_eq!(
        a.results,
        vec![
            ContextResult::Reject(REJECT_ABSTRACT_SYNTAX),
            ContextResult::Reject(REJECT_ABSTRACT_SYNTAX)
        ]
    );
    p.write(&request(
        2,
        0,
        opnum::NETR_SHARE_ENUM,
        &share_enum_stub(1, None),
    ))
    .unwrap();
    let (st, flags) = fault_of(&drain(&mut p)[0]);
    assert_eq!(st, fault::NCA_S_UNK_IF);
    assert_ne!(flags & pfc::DID_NOT_EXECUTE, 0);

    // alter_context adds the context and the same call then works.
    let alter = Bind {
        contexts: vec![ContextElem {
            id: 0,
            abstract_syntax: SRVSVC,
            transfer_syntaxes: vec![NDR20],
        }],
        ..bind
    };
    p.write(&alter.encode(ptype::ALTER_CONTEXT, 3)).unwrap();
    let out = drain(&mut p);
    assert_eq!(
        Header::parse(&out[0]).unwrap().ptype,
        ptype::ALTER_CONTEXT_RESP
    );
    let a = ack(&out[0]);
    assert_eq!(a.sec_addr, "");
    assert_eq!(a.results, vec![ContextResult::Accept(NDR20)]);
    p.write(&request(
        4,
        0,
        opnum::NETR_SHARE_ENUM,
        &share_enum_stub(1, None),
    ))
    .unwrap();
    let l = decode_share_enum(&response_stub(&drain(&mut p), 4));
    assert_eq!(l.werror, werror::OK);
}

#[test]
fn share_enum_levels_0_and_1_list_every_share() {
    let mut p = bound(2, 4280);
    p.write(&request(
        2,
        0,
        opnum::NETR_SHARE_ENUM,
        &share_enum_stub(1, Some(0)),
    ))
    .unwrap();
    let l = decode_share_enum(&response_stub(&drain(&mut p), 2));
    assert_eq!(l.werror, werror::OK);
    assert_eq!(l.total, 3);
    assert_eq!(
        l.shares,
        vec![
            ("share0".into(), Some((0, shares(2)[0].comment.clone()))),
            ("share1".into(), Some((0, shares(2)[1].comment.clone()))),
            ("IPC$".into(), Some((0x8000_0003, "IPC Service".into()))),
        ]
    );
    p.write(&request(
        3,
        0,
        opnum::NETR_SHARE_ENUM,
        &share_enum_stub(0, None),
    ))
    .unwrap();
    let l = decode_share_enum(&response_stub(&drain(&mut p), 3));
    assert_eq!(l.level, 0);
    let names: Vec<_> = l.shares.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["share0", "share1", "IPC$"]);
    assert!(l.shares.iter().all(|s| s.1.is_none()));

    p.write(&request(
        4,
        0,
        opnum::NETR_SHARE_ENUM,
        &share_enum_stub(502, None),
    ))
    .unwrap();
    let l = decode_share_enum(&response_stub(&drain(&mut p), 4));
    assert_eq!(l.werror, werror::INVALID_LEVEL);
    assert!(l.shares.is_empty());
}

#[test]
fn share_get_info_finds_shares_case_insensitively() {
    let mut p = bound(1, 4280);
    p.write(&request(
        2,
        0,
        opnum::NETR_SHARE_GET_INFO,
        &share_get_info_stub("ipc$", 1),
    ))
    .unwrap();
    let stub = response_stub(&drain(&mut p), 2);
    let mut r = NdrReader::new(&stub);
    assert_eq!(r.u32().unwrap(), 1);
    assert!(r.unique_ptr().unwrap());
    assert!(r.unique_ptr().unwrap());
    assert_eq!(r.u32().unwrap(), stype::IPC | stype::SPECIAL);
    assert!(r.unique_ptr().unwrap());
    assert_eq!(r.conformant_varying_string().unwrap(), "IPC$");
    assert_eq!(r.conformant_varying_string().unwrap(), "IPC Service");
    assert_eq!(r.u32().unwrap(), werror::OK);
    assert_eq!(r.remaining(), 0);

    p.write(&request(
        3,
        0,
        opnum::NETR_SHARE_GET_INFO,
        &share_get_info_stub("nosuch", 1),
    ))
    .unwrap();
    let stub = response_stub(&drain(&mut p), 3);
    let mut r = NdrReader::new(&stub);
    assert_eq!(r.u32().unwrap(), 1);
    assert!(!r.unique_ptr().unwrap());
    assert_eq!(r.u32().unwrap(), werror::NERR_NET_NAME_NOT_FOUND);
}

#[test]
fn server_get_info_101() {
    let mut p = bound(1, 4280);
    p.write(&request(
        2,
        0,
        opnum::NETR_SERVER_GET_INFO,
        &server_get_info_stub(101),
    ))
    .unwrap();
    let stub = response_stub(&drain(&mut p), 2);
    let mut r = NdrReader::new(&stub);
    assert_eq!(r.u32().unwrap(), 101);
    assert!(r.unique_ptr().unwrap());
    assert_eq!(r.u32().unwrap(), 500);
    assert!(r.unique_ptr().unwrap());
    assert_eq!(r.u32().unwrap(), 10);
    assert_eq!(r.u32().unwrap(), 0);
    let ty = r.u32().unwrap();
    assert_ne!(ty & 0x2, 0, "SV_TYPE_SERVER");
    assert!(r.unique_ptr().unwrap());
    assert_eq!(r.conformant_varying_string().unwrap(), "NODE1");
    assert_eq!(r.conformant_varying_string().unwrap(), "test server");
    assert_eq!(r.u32().unwrap(), werror::OK);
}

#[test]
fn unknown_opnum_and_bad_stub_fault_without_executing() {
    let mut p = bound(1, 4280);
    p.write(&request(2, 0, 99, &[])).unwrap();
    let (st, flags) = fault_of(&drain(&mut p)[0]);
    assert_eq!(st, fault::NCA_S_OP_RNG_ERROR);
    assert_ne!(flags & pfc::DID_NOT_EXECUTE, 0);
    p.write(&request(3, 0, opnum::NETR_SHARE_ENUM, &[1, 2, 3]))
        .unwrap();
    assert_eq!(fault_of(&drain(&mut p)[0]).0, fault::BAD_STUB_DATA);
    // The pipe goes on serving.
    p.write(&request(
        4,
        0,
        opnum::NETR_SHARE_ENUM,
        &share_enum_stub(0, None),
    ))
    .unwrap();
    assert_eq!(
        decode_share_enum(&response_stub(&drain(&mut p), 4)).total,
        2
    );
}

#[test]
fn request_before_bind_faults_with_proto_error() {
    let mut p = pipe_with(1);
    p.write(&request(
        1,
        0,
        opnum::NETR_SHARE_ENUM,
        &share_enum_stub(0, None),
    ))
    .unwrap();
    assert_eq!(fault_of(&drain(&mut p)[0]).0, fault::NCA_S_PROTO_ERROR);
}

#[test]
fn binds_with_auth_other_versions_or_twice_get_bind_nak() {
    let nak_reason = |pdu: &[u8]| {
        let h = Header::parse(pdu).unwrap();
        assert_eq!(h.ptype, ptype::BIND_NAK);
        assert_eq!(usize::from(h.frag_len), pdu.len());
        u16::from_le_bytes([pdu[16], pdu[17]])
    };
    // An NTLMSSP bind: auth_len set, an 8-byte auth trailer and a token behind the body.
    let mut p = pipe_with(1);
    let mut b = windows_bind(1, 4280);
    b.extend_from_slice(&[10, 2, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(b"NTLMSSP\0\x01\0\0\0");
    b[10..12].copy_from_slice(&12u16.to_le_bytes());
    let len = b.len() as u16;
    b[8..10].copy_from_slice(&len.to_le_bytes());
    p.write(&b).unwrap();
    assert_eq!(
        nak_reason(&drain(&mut p)[0]),
        nak::AUTHENTICATION_TYPE_NOT_RECOGNIZED
    );

    let mut b = windows_bind(1, 4280);
    b[0] = 4;
    p.write(&b).unwrap();
    assert_eq!(
        nak_reason(&drain(&mut p)[0]),
        nak::PROTOCOL_VERSION_NOT_SUPPORTED
    );

    let mut p = bound(1, 4280);
    p.write(&windows_bind(2, 4280)).unwrap();
    assert_eq!(nak_reason(&drain(&mut p)[0]), nak::REASON_NOT_SPECIFIED);
}

#[test]
fn large_responses_are_fragmented_by_the_clients_max_recv_frag() {
    let mut p = bound(200, 1432);
    p.write(&request(
        2,
        0,
        opnum::NETR_SHARE_ENUM,
        &share_enum_stub(1, None),
    ))
    .unwrap();
    let frags = drain(&mut p);
    assert!(frags.len() > 5, "{} fragments", frags.len());
    assert!(frags.iter().all(|f| f.len() <= 1432));
    let l = decode_share_enum(&response_stub(&frags, 2));
    assert_eq!(l.shares.len(), 201);
    assert_eq!(l.shares[199].0, "share199");
}

#[test]
fn fragmented_requests_are_reassembled() {
    let stub = share_get_info_stub("share0", 1);
    let whole = {
        let mut p = bound(1, 4280);
        p.write(&request(2, 0, opnum::NETR_SHARE_GET_INFO, &stub))
            .unwrap();
        drain(&mut p)
    };
    let mut p = bound(1, 4280);
    let parts = [&stub[..8], &stub[8..16], &stub[16..]];
    for (i, part) in parts.iter().enumerate() {
        let mut flags = 0;
        if i == 0 {
            flags |= pfc::FIRST_FRAG;
        }
        if i == 2 {
            flags |= pfc::LAST_FRAG;
        }
        p.write(&pdu::request(2, flags, 0, opnum::NETR_SHARE_GET_INFO, part))
            .unwrap();
        if i < 2 {
            assert!(
                p.read(usize::MAX).is_none(),
                "answered before the last fragment"
            );
        }
    }
    assert_eq!(drain(&mut p), whole);
}

#[test]
fn oversized_requests_fault_once_and_the_pipe_recovers() {
    let mut p = bound(1, 4280);
    let chunk = vec![0u8; 1500];
    for i in 0..4 {
        let mut flags = 0;
        if i == 0 {
            flags |= pfc::FIRST_FRAG;
        }
        if i == 3 {
            flags |= pfc::LAST_FRAG;
        }
        p.write(&pdu::request(2, flags, 0, opnum::NETR_SHARE_ENUM, &chunk))
            .unwrap();
    }
    let out = drain(&mut p);
    assert_eq!(out.len(), 1, "one fault for the whole call");
    assert_eq!(fault_of(&out[0]).0, fault::NCA_S_PROTO_ERROR);
    p.write(&request(
        3,
        0,
        opnum::NETR_SHARE_ENUM,
        &share_enum_stub(0, None),
    ))
    .unwrap();
    assert_eq!(
        decode_share_enum(&response_stub(&drain(&mut p), 3)).total,
        2
    );
}

#[test]
fn byte_at_a_time_writes_and_short_reads_give_the_same_stream() {
    let input: Vec<u8> = [
        windows_bind(1, 4280),
        request(2, 0, opnum::NETR_SHARE_ENUM, &share_enum_stub(1, None)),
        request(3, 0, 42, &[]),
    ]
    .concat();
    let mut whole = pipe_with(3);
    whole.write(&input).unwrap();
    let expected: Vec<u8> = drain(&mut whole).concat();

    let mut p = pipe_with(3);
    for b in &input {
        p.write(std::slice::from_ref(b)).unwrap();
    }
    let mut got = Vec::new();
    while let Some(r) = p.read(100) {
        // Short reads return a PDU in pieces, saying how much of it is left.
        if r.message_remaining > 0 {
            assert_eq!(r.data.len(), 100);
        }
        got.extend_from_slice(&r.data);
    }
    assert_eq!(got, expected);
    assert_eq!(p.output_len(), 0);
}

#[test]
fn garbage_breaks_the_pipe_for_good() {
    let mut p = bound(1, 4280);
    let mut bad = request(2, 0, 0, &[]);
    bad[4] = 0; // big-endian data representation
    assert!(matches!(p.write(&bad), Err(PipeError::Protocol(_))));
    assert!(p.is_broken());
    assert!(p
        .write(&request(3, 0, 15, &share_enum_stub(0, None)))
        .is_err());

    let mut p = bound(1, 4280);
    let mut short = request(2, 0, 0, &[]);
    short[8] = 8; // frag_len below the header
    short[9] = 0;
    assert!(p.write(&short).is_err());

    let mut p = bound(1, 4280);
    let mut resp = request(2, 0, 0, &[]);
    resp[2] = ptype::RESPONSE;
    assert!(p.write(&resp).is_err());
    let _ = HEADER_LEN;
}

/// An interface whose opnum 0 answers later, as the witness' AsyncNotify will.
struct Deferred;

impl RpcInterface for Deferred {
    fn syntax(&self) -> SyntaxId {
        SyntaxId {
            major: 1,
            ..SyntaxId::default()
        }
    }

    fn call(&mut self, _call: CallId, opnum: u16, _stub: &[u8]) -> CallResult {
        match opnum {
            0 => CallResult::Pending,
            _ => CallResult::Fault(fault::NCA_S_OP_RNG_ERROR),
        }
    }
}

#[test]
fn pending_calls_are_answered_when_completed_and_cancels_fault_them() {
    let mut p = RpcPipe::new(PipeConfig::default(), vec![Box::new(Deferred)]);
    let syntax = Deferred.syntax();
    let bind = Bind {
        max_xmit_frag: 4280,
        max_recv_frag: 4280,
        assoc_group_id: 0,
        contexts: vec![ContextElem {
            id: 5,
            abstract_syntax: syntax,
            transfer_syntaxes: vec![NDR20],
        }],
    };
    p.write(&bind.encode(ptype::BIND, 1)).unwrap();
    drain(&mut p);
    p.write(&request(2, 5, 0, &[])).unwrap();
    p.write(&request(3, 5, 0, &[])).unwrap();
    assert!(p.read(usize::MAX).is_none());
    p.complete(
        CallId {
            call_id: 2,
            context_id: 5,
        },
        CallResult::Reply(vec![1, 2, 3, 4]),
    );
    assert_eq!(response_stub(&drain(&mut p), 2), [1, 2, 3, 4]);
    // Completing it twice does nothing.
    p.complete(
        CallId {
            call_id: 2,
            context_id: 5,
        },
        CallResult::Reply(vec![]),
    );
    assert!(p.read(usize::MAX).is_none());
    let mut cancel = request(3, 5, 0, &[]);
    cancel[2] = ptype::CO_CANCEL;
    cancel.truncate(HEADER_LEN);
    cancel[8..10].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    p.write(&cancel).unwrap();
    assert_eq!(fault_of(&drain(&mut p)[0]).0, fault::NCA_S_FAULT_CANCEL);
}
