use lockmgr_engine::SessionId;
use lockmgr_proto::auth::MIN_KEY_LEN;
use lockmgr_proto::{
    client_proof, server_proof, verify_proof, ClusterKey, KeyError, Role, Transcript,
};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn transcript<'a>(cn: &'a [u8; 32], sn: &'a [u8; 32]) -> Transcript<'a> {
    Transcript {
        node_name: "node-a",
        client_nonce: cn,
        server_nonce: sn,
        session_id: SessionId(0x1234),
        version: 1,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn proofs_match_known_answers() {
    // Pins the transcript layout: computed independently with Python's hmac module over
    // label || version || session_id u64le || name_len u64le || name || client_nonce || server_nonce.
    let key = ClusterKey::new(KEY).unwrap();
    let t = transcript(&[1; 32], &[2; 32]);
    assert_eq!(
        hex(&client_proof(&key, &t)),
        "358bd623da69778f0d7766bb55c96f50a2f34f4adb44731fc99257cb6293ba1c"
    );
    assert_eq!(
        hex(&server_proof(&key, &t)),
        "a9a4c30c10b5b545dd1433bc6b7c9c2ed5026956f2b48594efded6a26fa00f7b"
    );
}

#[test]
fn valid_proofs_verify_for_their_role() {
    let key = ClusterKey::new(KEY).unwrap();
    let t = transcript(&[1; 32], &[2; 32]);
    assert!(verify_proof(
        &key,
        Role::Client,
        &t,
        &client_proof(&key, &t)
    ));
    assert!(verify_proof(
        &key,
        Role::Server,
        &t,
        &server_proof(&key, &t)
    ));
}

#[test]
fn proof_fails_with_wrong_key() {
    let key = ClusterKey::new(KEY).unwrap();
    let other = ClusterKey::new(b"0123456789abcdef0123456789abcdeF").unwrap();
    let t = transcript(&[1; 32], &[2; 32]);
    let p = client_proof(&other, &t);
    assert!(!verify_proof(&key, Role::Client, &t, &p));
    assert!(!verify_proof(
        &key,
        Role::Server,
        &t,
        &server_proof(&other, &t)
    ));
}

#[test]
fn proof_fails_with_wrong_nonces() {
    let key = ClusterKey::new(KEY).unwrap();
    let p = client_proof(&key, &transcript(&[1; 32], &[2; 32]));
    let mut cn = [1; 32];
    cn[31] ^= 1;
    assert!(!verify_proof(
        &key,
        Role::Client,
        &transcript(&cn, &[2; 32]),
        &p
    ));
    let mut sn = [2; 32];
    sn[0] ^= 0x80;
    assert!(!verify_proof(
        &key,
        Role::Client,
        &transcript(&[1; 32], &sn),
        &p
    ));
    // Swapping the nonces must not produce the same transcript.
    assert!(!verify_proof(
        &key,
        Role::Client,
        &transcript(&[2; 32], &[1; 32]),
        &p
    ));
}

#[test]
fn proof_fails_with_other_node_session_or_version() {
    let key = ClusterKey::new(KEY).unwrap();
    let (cn, sn) = ([1; 32], [2; 32]);
    let t = transcript(&cn, &sn);
    let p = client_proof(&key, &t);
    for changed in [
        Transcript {
            node_name: "node-b",
            ..t
        },
        Transcript {
            session_id: SessionId(0x1235),
            ..t
        },
        Transcript { version: 2, ..t },
    ] {
        assert!(
            !verify_proof(&key, Role::Client, &changed, &p),
            "{changed:?}"
        );
    }
}

#[test]
fn client_proof_is_not_a_server_proof() {
    // Reflection: a server's answer must never be usable as the client's proof or vice versa.
    let key = ClusterKey::new(KEY).unwrap();
    let t = transcript(&[1; 32], &[2; 32]);
    let c = client_proof(&key, &t);
    let s = server_proof(&key, &t);
    assert_ne!(c, s);
    assert!(!verify_proof(&key, Role::Server, &t, &c));
    assert!(!verify_proof(&key, Role::Client, &t, &s));
}

#[test]
fn truncated_or_extended_proof_fails() {
    let key = ClusterKey::new(KEY).unwrap();
    let t = transcript(&[1; 32], &[2; 32]);
    let p = client_proof(&key, &t);
    assert!(!verify_proof(&key, Role::Client, &t, &p[..31]));
    assert!(!verify_proof(&key, Role::Client, &t, &[]));
    let mut long = p.to_vec();
    long.push(0);
    assert!(!verify_proof(&key, Role::Client, &t, &long));
}

#[test]
fn short_key_is_refused_and_debug_redacts() {
    assert_eq!(
        ClusterKey::new(&KEY[..MIN_KEY_LEN - 1]).unwrap_err(),
        KeyError::TooShort {
            len: MIN_KEY_LEN - 1,
            min: MIN_KEY_LEN
        }
    );
    let key = ClusterKey::new(KEY).unwrap();
    let dbg = format!("{key:?}");
    assert!(!dbg.contains("0123"), "{dbg}");
}

/// The whole handshake through encoded frames, as client and server would run it.
#[test]
fn handshake_through_frames_authenticates_both_sides() {
    use lockmgr_proto::{decode_frame, FrameWriter, Message, VERSION};

    fn send(session: SessionId, m: Message) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf, session);
        w.push(&m).unwrap();
        w.finish();
        buf
    }
    fn recv(buf: &[u8]) -> Message {
        decode_frame(buf).unwrap().next().unwrap().unwrap()
    }

    let client_key = ClusterKey::new(KEY).unwrap();
    let server_key = ClusterKey::new(KEY).unwrap();

    let hello = send(
        SessionId(0),
        Message::ClientHello {
            node_name: "node-a".into(),
            client_nonce: [7; 32],
            min_version: VERSION,
            max_version: VERSION,
        },
    );
    let Message::ClientHello {
        node_name,
        client_nonce,
        ..
    } = recv(&hello)
    else {
        panic!("expected hello")
    };
    let challenge = send(
        SessionId(0),
        Message::ServerChallenge {
            session_id: SessionId(99),
            version: VERSION,
            server_nonce: [9; 32],
        },
    );
    let Message::ServerChallenge {
        session_id,
        version,
        server_nonce,
    } = recv(&challenge)
    else {
        panic!("expected challenge")
    };
    let client_t = Transcript {
        node_name: "node-a",
        client_nonce: &[7; 32],
        server_nonce: &server_nonce,
        session_id,
        version,
    };
    let proof_frame = send(
        session_id,
        Message::ClientProof {
            proof: client_proof(&client_key, &client_t),
        },
    );
    let Message::ClientProof { proof } = recv(&proof_frame) else {
        panic!("expected proof")
    };
    let server_t = Transcript {
        node_name: &node_name,
        client_nonce: &client_nonce,
        server_nonce: &[9; 32],
        session_id: SessionId(99),
        version: VERSION,
    };
    assert!(verify_proof(&server_key, Role::Client, &server_t, &proof));
    let accepted = send(
        SessionId(99),
        Message::SessionAccepted {
            session_id: SessionId(99),
            liveness_lease_ms: 2000,
            server_proof: server_proof(&server_key, &server_t),
        },
    );
    let Message::SessionAccepted { server_proof, .. } = recv(&accepted) else {
        panic!("expected accept")
    };
    assert!(verify_proof(
        &client_key,
        Role::Server,
        &client_t,
        &server_proof
    ));
    // An impostor server without the key is caught by the client.
    let impostor = ClusterKey::new(b"not the cluster key at all......").unwrap();
    let forged = lockmgr_proto::server_proof(&impostor, &server_t);
    assert!(!verify_proof(&client_key, Role::Server, &client_t, &forged));
}
