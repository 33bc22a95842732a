//! Session authentication with a pre-shared cluster key (mutual challenge-response).
//!
//! 1. Client sends `ClientHello { node_name, client_nonce, versions }`.
//! 2. Server sends `ServerChallenge { session_id, version, server_nonce }`.
//! 3. Client sends `ClientProof { proof: client_proof(key, transcript) }`.
//! 4. Server checks it with [`verify_proof`] and answers
//!    `SessionAccepted { server_proof: server_proof(key, transcript), .. }`, which the client
//!    checks in turn, so each side knows the other holds the key.
//!
//! A proof is HMAC-SHA256 over a transcript that binds both nonces (freshness: neither side
//! can replay an old proof into a new handshake), the node name (a proof for one node cannot
//! open a session as another), the session id and the selected version (no downgrade or
//! session swap by a man in the middle). The client and server proofs use different domain
//! labels, so a server cannot be tricked into producing a valid client proof by reflection.
//! Every variable-length field is length-prefixed, so distinct transcripts never produce the
//! same MAC input.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use lockmgr_engine::SessionId;
use sha2::Sha256;

use crate::error::KeyError;
use crate::message::{Nonce, Proof};

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted cluster key: 128 bits.
pub const MIN_KEY_LEN: usize = 16;

const CLIENT_LABEL: &[u8] = b"lockmgr-proto/v1 client proof\0";
const SERVER_LABEL: &[u8] = b"lockmgr-proto/v1 server proof\0";
const FABRIC_LABEL: &[u8] = b"lockmgr fabric v2 secret\0";

/// The cluster's shared secret, keyed once so each proof only hashes the transcript.
#[derive(Clone)]
pub struct ClusterKey {
    mac: HmacSha256,
}

impl ClusterKey {
    /// Keys the MAC. Keys shorter than [`MIN_KEY_LEN`] are refused.
    pub fn new(key: &[u8]) -> Result<ClusterKey, KeyError> {
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                len: key.len(),
                min: MIN_KEY_LEN,
            });
        }
        let mac = <HmacSha256 as Mac>::new_from_slice(key).map_err(|_| KeyError::Invalid)?;
        Ok(ClusterKey { mac })
    }

    /// Reads the key from `path`, a file only its owner may read or write (see
    /// [`crate::private_file`]) holding at least [`MIN_KEY_LEN`] bytes.
    pub fn from_file(path: &Path) -> Result<ClusterKey, KeyError> {
        ClusterKey::new(&read_key_file(path)?)
    }
}

/// The bytes of a cluster-key file, with the checks of [`ClusterKey::from_file`]; for callers
/// that take the key in other forms too and key the MAC themselves.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let file_err = |why: String| KeyError::File {
        path: path.to_owned(),
        why,
    };
    crate::private_file::check_private_file(path).map_err(file_err)?;
    let key = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    if key.len() < MIN_KEY_LEN {
        return Err(file_err(format!(
            "holds {} bytes; at least {MIN_KEY_LEN} needed",
            key.len()
        )));
    }
    Ok(key)
}

impl ClusterKey {
    /// The secret of the datagram fabric (`lockmgr_transport::FabricKey`): HMAC of a fixed
    /// label under the cluster key, so the transport authenticates with a key of its own
    /// (a different label from the proofs: no output of one use is valid in the other).
    pub fn fabric_secret(&self) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(FABRIC_LABEL);
        m.finalize().into_bytes().into()
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// Which side a proof speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Everything both proofs are bound to: the handshake as both sides saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transcript<'a> {
    pub node_name: &'a str,
    pub client_nonce: &'a Nonce,
    pub server_nonce: &'a Nonce,
    pub session_id: SessionId,
    /// The version from `ServerChallenge`.
    pub version: u8,
}

fn mac(key: &ClusterKey, role: Role, t: &Transcript<'_>) -> HmacSha256 {
    let mut m = key.mac.clone();
    m.update(match role {
        Role::Client => CLIENT_LABEL,
        Role::Server => SERVER_LABEL,
    });
    m.update(&[t.version]);
    m.update(&t.session_id.0.to_le_bytes());
    // u64 length prefix: never truncates, so no two names share a prefix encoding.
    m.update(&(t.node_name.len() as u64).to_le_bytes());
    m.update(t.node_name.as_bytes());
    m.update(t.client_nonce);
    m.update(t.server_nonce);
    m
}

/// The proof `role` sends for this handshake.
pub fn proof(key: &ClusterKey, role: Role, t: &Transcript<'_>) -> Proof {
    mac(key, role, t).finalize().into_bytes().into()
}

/// The proof in `ClientProof`.
pub fn client_proof(key: &ClusterKey, t: &Transcript<'_>) -> Proof {
    proof(key, Role::Client, t)
}

/// The proof in `SessionAccepted`.
pub fn server_proof(key: &ClusterKey, t: &Transcript<'_>) -> Proof {
    proof(key, Role::Server, t)
}

/// Checks a proof received from `role` in constant time (no early exit on the first differing
/// byte, so response timing does not leak how much of a forged proof was right).
pub fn verify_proof(key: &ClusterKey, role: Role, t: &Transcript<'_>, candidate: &[u8]) -> bool {
    mac(key, role, t).verify_slice(candidate).is_ok()
}
