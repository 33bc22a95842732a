//! The authenticated handshake with lockmgrd, shared by node sessions ([`crate::LockClient`])
//! and by a standby lockmgrd attaching to its primary.
//!
//! Client `ClientHello` -> server `ServerChallenge` -> client [`ResumeSession`] (only when
//! continuing a session) and `ClientProof` in one frame -> server `SessionAccepted` (with the
//! server's own proof) or `SessionRejected`.
//!
//! [`ResumeSession`]: lockmgr_proto::Message::ResumeSession

use std::time::{Duration, Instant};

use lockmgr_engine::SessionId;
use lockmgr_proto::{
    auth, decode_frame, FrameWriter, Message, Nonce, RejectReason, Role, Transcript, VERSION,
};
use lockmgr_transport::{ClientTransport, FabricKey, TransportError};
use rand::RngCore;

use crate::{ClientError, ClientOptions};

/// What the server granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The session: a new one, or the resumed one.
    pub session: SessionId,
    /// The liveness lease: send something at least this often.
    pub liveness: Duration,
    /// The replica-set epoch in the acceptance's frame header (0: an unreplicated lockmgrd).
    pub epoch: u32,
}

/// Runs the handshake over `transport`; `resume` names a session to continue and the number
/// of its outputs already received. Blocks up to `options.handshake_timeout`. Frames that
/// arrive behind the acceptance are dropped: use [`run_keeping`] where there can be any.
pub fn run<T: ClientTransport + ?Sized>(
    transport: &mut T,
    options: &ClientOptions,
    resume: Option<(SessionId, u64)>,
) -> Result<Accepted, ClientError> {
    run_keeping(transport, options, resume).map(|(accepted, _)| accepted)
}

/// [`run`], also returning the frames that came in the same poll as the acceptance, in
/// order. A resumed session's lock manager sends the outputs the node missed right behind
/// `SessionAccepted`; they often arrive together, and the reply to the request the node
/// waits for is among them.
pub fn run_keeping<T: ClientTransport + ?Sized>(
    transport: &mut T,
    options: &ClientOptions,
    resume: Option<(SessionId, u64)>,
) -> Result<(Accepted, Vec<Vec<u8>>), ClientError> {
    let deadline = Instant::now() + options.handshake_timeout;
    // The datagram transports authenticate (and from then on MAC every frame) below the
    // lockmgr handshake; the others have nothing to do here.
    match transport.authenticate(&FabricKey::new(options.key.fabric_secret())) {
        Ok(()) => {}
        Err(TransportError::AuthRejected) => {
            return Err(ClientError::Rejected(RejectReason::BadProof))
        }
        Err(TransportError::PeerNotAuthenticated) => {
            return Err(ClientError::ServerNotAuthenticated)
        }
        Err(e) => return Err(e.into()),
    }
    let mut client_nonce: Nonce = [0; 32];
    rand::thread_rng().fill_bytes(&mut client_nonce);
    send(
        transport,
        SessionId(0),
        0,
        &[Message::ClientHello {
            node_name: options.node_name.clone(),
            client_nonce,
            min_version: VERSION,
            max_version: VERSION,
        }],
    )?;
    let mut behind = Vec::new();
    let (challenge_session, version, server_nonce) =
        match recv_one(transport, deadline, &mut behind)?.0 {
            Message::ServerChallenge {
                session_id,
                version,
                server_nonce,
            } => (session_id, version, server_nonce),
            Message::SessionRejected { reason } => return Err(ClientError::Rejected(reason)),
            _ => return Err(ClientError::Handshake),
        };
    let transcript = Transcript {
        node_name: &options.node_name,
        client_nonce: &client_nonce,
        server_nonce: &server_nonce,
        session_id: challenge_session,
        version,
    };
    let proof = auth::client_proof(&options.key, &transcript);
    let mut msgs = Vec::with_capacity(2);
    if let Some((session_id, received)) = resume {
        // Before the proof: the server decides what the proof opens when it checks it.
        msgs.push(Message::ResumeSession {
            session_id,
            received,
        });
    }
    msgs.push(Message::ClientProof { proof });
    send(transport, challenge_session, 0, &msgs)?;
    // A resumed session keeps its id; the server's proof still covers the challenge's.
    let expected = resume.map_or(challenge_session, |(s, _)| s);
    // Nothing follows a challenge before our proof: only the acceptance can have company.
    behind.clear();
    let (accepted, epoch) = recv_one(transport, deadline, &mut behind)?;
    match accepted {
        Message::SessionAccepted {
            session_id,
            liveness_lease_ms,
            server_proof,
        } => {
            if session_id != expected
                || !auth::verify_proof(&options.key, Role::Server, &transcript, &server_proof)
            {
                return Err(ClientError::ServerNotAuthenticated);
            }
            Ok((
                Accepted {
                    session: session_id,
                    liveness: Duration::from_millis(u64::from(liveness_lease_ms)),
                    epoch,
                },
                behind,
            ))
        }
        Message::SessionRejected { reason } => Err(ClientError::Rejected(reason)),
        _ => Err(ClientError::Handshake),
    }
}

/// Sends `msgs` in one frame of `session` and replica-set `epoch` (after the handshake: the
/// acceptance's, [`Accepted::epoch`], or lockmgrd drops the frame as one of an older epoch).
pub fn send<T: ClientTransport + ?Sized>(
    t: &mut T,
    session: SessionId,
    epoch: u32,
    msgs: &[Message],
) -> Result<(), ClientError> {
    let mut buf = Vec::new();
    let mut w = FrameWriter::new(&mut buf, session);
    w.set_epoch(epoch);
    for msg in msgs {
        w.push(msg)?;
    }
    let len = w.finish();
    t.send(&buf[..len])?;
    Ok(())
}

/// The first message of the next frame (the handshake has one message per frame) and the
/// frame's epoch; frames after it that the same poll delivered are appended to `behind`.
fn recv_one<T: ClientTransport + ?Sized>(
    t: &mut T,
    deadline: Instant,
    behind: &mut Vec<Vec<u8>>,
) -> Result<(Message, u32), ClientError> {
    loop {
        let mut got: Option<Result<(Message, u32), ClientError>> = None;
        t.poll(&mut |bytes| {
            if got.is_some() {
                behind.push(bytes.to_vec());
                return;
            }
            got = Some(match decode_frame(bytes) {
                Ok(mut frame) => match frame.next() {
                    Some(Ok(m)) => Ok((m, frame.epoch())),
                    Some(Err(e)) => Err(e.into()),
                    None => Err(ClientError::Handshake),
                },
                Err(e) => Err(e.into()),
            });
        })?;
        if let Some(r) = got {
            return r;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout);
        }
        t.wait(Some(deadline - now))?;
    }
}
