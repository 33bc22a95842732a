//! Entry point shared by the cargo-fuzz target and the corpus replay test.

use crate::pipe::{PipeConfig, RpcPipe};
use crate::srvsvc::{stype, ServerInfo, ShareEntry, Srvsvc};

/// A pipe serving srvsvc over a small share list, as smbd builds one.
pub fn srvsvc_pipe() -> RpcPipe {
    let server = ServerInfo {
        name: "FUZZ".into(),
        comment: "fuzz".into(),
        version_major: 10,
        version_minor: 0,
    };
    let shares = vec![
        ShareEntry {
            name: "data".into(),
            share_type: stype::DISKTREE,
            comment: "a share".into(),
        },
        ShareEntry {
            name: "IPC$".into(),
            share_type: stype::IPC | stype::SPECIAL,
            comment: "IPC Service".into(),
        },
    ];
    RpcPipe::new(
        PipeConfig {
            sec_addr: "\\PIPE\\srvsvc".into(),
            // Small limits so the fuzzer reaches the reassembly and output bounds.
            max_request: 8 * 1024,
            max_output: 64 * 1024,
            ..PipeConfig::default()
        },
        vec![Box::new(Srvsvc::new(server, shares))],
    )
}

/// Feed `data` to a fresh srvsvc pipe. The first byte picks the write size, so PDUs also
/// arrive split across writes and several to a write. Every output PDU must be whole, framed
/// by its own header and within the fragment size. Returns the number of output PDUs.
pub fn pipe_bytes(data: &[u8]) -> usize {
    let Some((&chunk, data)) = data.split_first() else {
        return 0;
    };
    let chunk = usize::from(chunk).max(1) * 16;
    let mut pipe = srvsvc_pipe();
    let mut pdus = 0;
    for part in data.chunks(chunk) {
        if pipe.write(part).is_err() {
            // Broken stays broken.
            assert!(pipe.write(&[]).is_err());
            break;
        }
        while let Some(out) = pipe.read(usize::MAX) {
            assert_eq!(out.message_remaining, 0);
            let hdr = crate::pdu::Header::parse(&out.data).expect("server PDU has a header");
            assert_eq!(usize::from(hdr.frag_len), out.data.len());
            assert!(out.data.len() <= usize::from(crate::pipe::PipeConfig::default().max_frag));
            pdus += 1;
        }
    }
    pdus
}
