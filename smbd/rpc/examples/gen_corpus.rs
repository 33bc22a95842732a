//! Writes the seed corpus of the `rpc_pipe` fuzz target (fuzz/corpus/rpc_pipe/): client
//! conversations with a srvsvc pipe, each prefixed with the write-size byte the target reads.
//!
//!     cargo run -p smb-rpc --example gen_corpus

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use smb_rpc::pdu::{self, pfc, ptype, Bind, ContextElem, SyntaxId, NDR20};
use smb_rpc::srvsvc::{opnum, SRVSVC};

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rpc_pipe");
    std::fs::create_dir_all(&dir)?;
    let bind = windows_bind(1, 4280);
    let enum1 = request(2, 0, opnum::NETR_SHARE_ENUM, &share_enum_stub(1, Some(0)));
    let stub = share_get_info_stub("data", 1);
    let fragmented: Vec<u8> = [
        pdu::request(
            5,
            pfc::FIRST_FRAG,
            0,
            opnum::NETR_SHARE_GET_INFO,
            &stub[..8],
        ),
        pdu::request(5, 0, 0, opnum::NETR_SHARE_GET_INFO, &stub[8..16]),
        pdu::request(
            5,
            pfc::LAST_FRAG,
            0,
            opnum::NETR_SHARE_GET_INFO,
            &stub[16..],
        ),
    ]
    .concat();
    let oversized: Vec<u8> = (0..8)
        .flat_map(|i| {
            let flags = match i {
                0 => pfc::FIRST_FRAG,
                7 => pfc::LAST_FRAG,
                _ => 0,
            };
            pdu::request(6, flags, 0, opnum::NETR_SHARE_ENUM, &[0x41; 1400])
        })
        .collect();
    let unknown_then_alter = {
        let b = Bind {
            max_xmit_frag: 4280,
            max_recv_frag: 1432,
            assoc_group_id: 0,
            contexts: vec![ContextElem {
                id: 3,
                abstract_syntax: SyntaxId {
                    major: 1,
                    ..SyntaxId::default()
                },
                transfer_syntaxes: vec![NDR20],
            }],
        };
        let alter = Bind {
            contexts: vec![ContextElem {
                id: 4,
                abstract_syntax: SRVSVC,
                transfer_syntaxes: vec![NDR20],
            }],
            ..b.clone()
        };
        [
            b.encode(ptype::BIND, 1),
            request(2, 3, opnum::NETR_SHARE_ENUM, &share_enum_stub(1, None)),
            alter.encode(ptype::ALTER_CONTEXT, 3),
            request(4, 4, opnum::NETR_SHARE_ENUM, &share_enum_stub(0, None)),
        ]
        .concat()
    };
    let mut auth_bind = windows_bind(1, 4280);
    auth_bind.extend_from_slice(&[10, 2, 0, 0, 0, 0, 0, 0]);
    auth_bind.extend_from_slice(b"NTLMSSP\0\x01\0\0\0");
    auth_bind[10..12].copy_from_slice(&12u16.to_le_bytes());
    let len = auth_bind.len() as u16;
    auth_bind[8..10].copy_from_slice(&len.to_le_bytes());

    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("share-enum", 255, [bind.clone(), enum1.clone()].concat()),
        (
            "share-enum-split",
            1,
            [
                bind.clone(),
                enum1.clone(),
                request(3, 0, 15, &share_enum_stub(0, None)),
            ]
            .concat(),
        ),
        (
            "get-info",
            255,
            [
                bind.clone(),
                request(2, 0, opnum::NETR_SHARE_GET_INFO, &stub),
                request(
                    3,
                    0,
                    opnum::NETR_SERVER_GET_INFO,
                    &server_get_info_stub(101),
                ),
                request(
                    4,
                    0,
                    opnum::NETR_SERVER_GET_INFO,
                    &server_get_info_stub(100),
                ),
            ]
            .concat(),
        ),
        ("fragmented", 255, [bind.clone(), fragmented].concat()),
        ("oversized", 255, [bind.clone(), oversized].concat()),
        ("alter-context", 255, unknown_then_alter),
        (
            "faults",
            255,
            [
                request(1, 0, 15, &[]),
                bind.clone(),
                request(2, 0, 99, &[]),
                request(3, 0, opnum::NETR_SHARE_ENUM, &[1, 2, 3]),
                request(4, 9, opnum::NETR_SHARE_ENUM, &share_enum_stub(1, None)),
                windows_bind(5, 4280),
            ]
            .concat(),
        ),
        ("auth-bind", 255, auth_bind),
    ];
    for (name, chunk, data) in seeds {
        let mut bytes = vec![chunk];
        bytes.extend_from_slice(&data);
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    write_witness_auth_seed()
}

/// `fuzz/corpus/rpc_witness/seed-ntlm-privacy`: an NTLMSSP bind at packet privacy, an AUTH3
/// whose AUTHENTICATE cannot verify, then a protected GetInterfaceList (refused), and the same
/// call without auth (refused too on the authenticated pipe; answered on the plain one).
fn write_witness_auth_seed() -> std::io::Result<()> {
    use smb_rpc::pdu::{auth_level, auth_type, Header, SecTrailer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rpc_witness");
    std::fs::create_dir_all(&dir)?;
    let trailer = SecTrailer {
        auth_type: auth_type::NTLMSSP,
        auth_level: auth_level::PRIVACY,
        pad_len: 0,
        context_id: 1,
    };
    let bind = Bind {
        max_xmit_frag: 5840,
        max_recv_frag: 5840,
        assoc_group_id: 0,
        contexts: vec![ContextElem {
            id: 0,
            abstract_syntax: smb_rpc::witness::WITNESS,
            transfer_syntaxes: vec![NDR20],
        }],
    };
    let mut negotiate = b"NTLMSSP\0\x01\0\0\0".to_vec();
    negotiate.extend_from_slice(&0xe208_8297u32.to_le_bytes());
    negotiate.extend_from_slice(&[0; 16]);
    let mut authenticate = b"NTLMSSP\0\x03\0\0\0".to_vec();
    authenticate.extend_from_slice(&[0; 80]);
    let mut auth3 = Vec::new();
    Header {
        rpc_vers: 5,
        rpc_vers_minor: 0,
        ptype: ptype::AUTH3,
        flags: pfc::FIRST_FRAG | pfc::LAST_FRAG,
        drep: pdu::DREP_LE,
        frag_len: 0,
        auth_len: 0,
        call_id: 2,
    }
    .write(&mut auth3);
    auth3.extend_from_slice(&[0; 4]);
    let call = pdu::request(3, pfc::FIRST_FRAG | pfc::LAST_FRAG, 0, 0, &[]);
    let data = [
        pdu::with_auth(bind.encode(ptype::BIND, 1), trailer, &negotiate),
        pdu::with_auth(auth3, trailer, &authenticate),
        pdu::with_auth(call.clone(), trailer, &[0; 16]),
        pdu::request(4, pfc::FIRST_FRAG | pfc::LAST_FRAG, 0, 0, &[]),
    ]
    .concat();
    let mut bytes = vec![255];
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("seed-ntlm-privacy"), bytes)
}
