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

/// A witness backend for fuzzing: one registration slot, AsyncNotify always pending.
struct FuzzWitness {
    registered: Option<crate::witness::ContextHandle>,
}

impl crate::witness::WitnessBackend for FuzzWitness {
    fn interface_list(&mut self) -> Result<Vec<crate::witness::InterfaceInfo>, u32> {
        Ok(vec![crate::witness::InterfaceInfo {
            group_name: "FUZZ".into(),
            version: crate::witness::VERSION_2,
            state: crate::witness::iface_state::AVAILABLE,
            ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
            ipv6: None,
            witness: true,
        }])
    }

    fn register(
        &mut self,
        req: &crate::witness::RegisterRequest,
    ) -> Result<crate::witness::ContextHandle, u32> {
        if req.net_name.is_none() || self.registered.is_some() {
            return Err(crate::witness::werror::INVALID_PARAMETER);
        }
        let h = crate::witness::ContextHandle {
            attributes: 0,
            uuid: crate::pdu::Uuid([7; 16]),
        };
        self.registered = Some(h);
        Ok(h)
    }

    fn unregister(&mut self, handle: crate::witness::ContextHandle) -> u32 {
        if self.registered == Some(handle) {
            self.registered = None;
            0
        } else {
            crate::witness::werror::NOT_FOUND
        }
    }

    fn async_notify(
        &mut self,
        handle: crate::witness::ContextHandle,
        _call: crate::pipe::CallId,
    ) -> Result<Option<crate::witness::NotifyOutcome>, u32> {
        if self.registered == Some(handle) {
            Ok(None)
        } else {
            Err(crate::witness::werror::NOT_FOUND)
        }
    }
}

/// A TCP-style connection serving the witness and the endpoint mapper, as smbd builds one.
pub fn witness_pipe() -> RpcPipe {
    RpcPipe::new(
        PipeConfig {
            sec_addr: "4135".into(),
            max_request: 8 * 1024,
            max_output: 64 * 1024,
            ..PipeConfig::default()
        },
        vec![
            Box::new(crate::witness::Witness::new(FuzzWitness {
                registered: None,
            })),
            Box::new(crate::epm::Epm {
                endpoints: vec![(crate::witness::WITNESS, 4135)],
                local_ip: std::net::Ipv4Addr::LOCALHOST,
            }),
        ],
    )
}

/// [`witness_pipe`] as smbd serves it by default: calls need an NTLMSSP bind at packet
/// privacy (no user can log on here, so the fuzzer exercises the bind, AUTH3 and protected
/// request paths up to the refusal).
pub fn witness_pipe_with_auth() -> RpcPipe {
    witness_pipe().require_auth(crate::pipe::AuthPolicy {
        users: std::sync::Arc::new(smb_auth::UserDb::new()),
        netbios_name: "FUZZ".into(),
        domain: "FUZZ".into(),
        min_level: crate::pdu::auth_level::PRIVACY,
    })
}

/// [`pipe_bytes`] against [`witness_pipe`] and [`witness_pipe_with_auth`]; after the input,
/// every pending AsyncNotify is completed with a client move so that encoder runs too.
/// Returns the number of PDUs the unauthenticated pipe answered.
pub fn witness_bytes(data: &[u8]) -> usize {
    let Some((&chunk, data)) = data.split_first() else {
        return 0;
    };
    let chunk = usize::from(chunk).max(1) * 16;
    let mut authenticated = witness_pipe_with_auth();
    drive(&mut authenticated, data, chunk);
    let mut pipe = witness_pipe();
    let mut pdus = drive(&mut pipe, data, chunk);
    for call_id in 0..4 {
        let call = crate::pipe::CallId {
            call_id,
            context_id: 0,
        };
        let n =
            crate::witness::Notification::ClientMove(vec![std::net::Ipv4Addr::LOCALHOST.into()]);
        let stub =
            crate::witness::encode_notify_reply(&crate::witness::NotifyOutcome::Notification(n));
        pipe.complete(call, crate::pipe::CallResult::Reply(stub));
    }
    pdus += drain(&mut pipe);
    pdus
}

fn drive(pipe: &mut RpcPipe, data: &[u8], chunk: usize) -> usize {
    let mut pdus = 0;
    for part in data.chunks(chunk) {
        if pipe.write(part).is_err() {
            assert!(pipe.write(&[]).is_err());
            break;
        }
        pdus += drain(pipe);
    }
    pdus
}

fn drain(pipe: &mut RpcPipe) -> usize {
    let mut pdus = 0;
    while let Some(out) = pipe.read(usize::MAX) {
        assert_eq!(out.message_remaining, 0);
        let hdr = crate::pdu::Header::parse(&out.data).expect("server PDU has a header");
        assert_eq!(usize::from(hdr.frag_len), out.data.len());
        assert!(out.data.len() <= usize::from(PipeConfig::default().max_frag));
        pdus += 1;
    }
    pdus
}
