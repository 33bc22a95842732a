//! Fabric authentication: the cryptography behind the datagram transports' handshake and the
//! per-frame MAC (see the [`crate::reliable`] module docs for the protocol).
//!
//! * [`FabricKey`]: a 32-byte secret derived from the cluster key (`lockmgr-proto`'s
//!   `ClusterKey::fabric_secret`), so the transport never sees the cluster key itself.
//! * Handshake proofs: HMAC-SHA256 over a transcript binding both nonces, the connection id, the
//!   negotiated flags and the server's cookie time; client and server proofs carry different
//!   labels so neither can be reflected.
//! * Session keys: HKDF-SHA256 (RFC 5869) from the fabric secret, salted with both nonces, one
//!   AES-128 key per direction.
//! * Frame MAC: AES-128-GMAC (GCM with an empty plaintext, NIST SP 800-38D), the same primitive
//!   SMB 3.1.1 signs with. GMAC needs a nonce that never repeats under one key: the per-direction
//!   packet number `pn` in every header (retransmissions get a new one). With AES-NI and
//!   PCLMULQDQ (detected at run time by the `aes`/`polyval` crates) a tag over a lock request's
//!   ~100 bytes costs ~0.1 us.
//! * SYN cookies: the server nonce is an HMAC of the client's SYN under a per-process secret, so a
//!   half-open handshake holds no server memory at all.

use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Length of a frame MAC tag.
pub const TAG_LEN: usize = 16;
/// Length of handshake nonces and proofs.
pub const NONCE_LEN: usize = 32;

const CLIENT_PROOF_LABEL: &[u8] = b"lockmgr fabric v2 client proof\0";
const SERVER_PROOF_LABEL: &[u8] = b"lockmgr fabric v2 server proof\0";
const KEYS_LABEL: &[u8] = b"lockmgr fabric v2 frame keys\0";
const COOKIE_LABEL: &[u8] = b"lockmgr fabric v2 cookie\0";
const CHANNEL_CLIENT_LABEL: &[u8] = b"lockmgr fabric v2 channel client proof\0";
const CHANNEL_SERVER_LABEL: &[u8] = b"lockmgr fabric v2 channel server proof\0";

/// The secret every datagram endpoint of a cluster shares: proves membership in the handshake
/// and keys the per-session frame MACs. Derive it from the cluster key (never use the cluster
/// key itself: one key, one purpose).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FabricKey([u8; 32]);

impl FabricKey {
    /// Wraps a secret derived from the cluster key.
    pub const fn new(secret: [u8; 32]) -> Self {
        FabricKey(secret)
    }

    fn hmac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC accepts 32-byte keys")
    }
}

impl fmt::Debug for FabricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FabricKey(<redacted>)")
    }
}

/// Server-wide handshake and authentication counters (never reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FabricCounters {
    /// SYNs answered (each costs one HMAC and no memory).
    pub syns: u64,
    /// Handshakes completed (authenticated connections created).
    pub handshakes: u64,
    /// CONFIRMs whose client proof did not verify (wrong cluster key).
    pub auth_failures: u64,
    /// CONFIRMs refused for an expired or foreign cookie, or older than the live connection
    /// from the same address (replays).
    pub stale_handshakes: u64,
    /// Sealed datagrams dropped for a bad MAC or a replayed packet number, including those of
    /// connections that are gone.
    pub rejected_frames: u64,
    /// Peers retired because the same address completed a newer authenticated handshake.
    pub replaced: u64,
}

/// Which side of the handshake a proof speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// What both proofs and the session keys are bound to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transcript<'a> {
    pub(crate) conn_id: u64,
    pub(crate) flags: u8,
    pub(crate) time: u64,
    pub(crate) client_nonce: &'a [u8; NONCE_LEN],
    pub(crate) server_nonce: &'a [u8; NONCE_LEN],
}

impl Transcript<'_> {
    fn feed(&self, m: &mut HmacSha256) {
        m.update(&self.conn_id.to_le_bytes());
        m.update(&[self.flags]);
        m.update(&self.time.to_le_bytes());
        m.update(self.client_nonce);
        m.update(self.server_nonce);
    }
}

fn proof_mac(key: &FabricKey, side: Side, t: &Transcript<'_>) -> HmacSha256 {
    let mut m = key.hmac();
    m.update(match side {
        Side::Client => CLIENT_PROOF_LABEL,
        Side::Server => SERVER_PROOF_LABEL,
    });
    t.feed(&mut m);
    m
}

/// The proof `side` sends (SYNACK: server, CONFIRM: client).
pub(crate) fn proof(key: &FabricKey, side: Side, t: &Transcript<'_>) -> [u8; NONCE_LEN] {
    proof_mac(key, side, t).finalize().into_bytes().into()
}

/// Constant-time check of a proof received from `side`.
pub(crate) fn verify_proof(key: &FabricKey, side: Side, t: &Transcript<'_>, got: &[u8]) -> bool {
    proof_mac(key, side, t).verify_slice(got).is_ok()
}

fn channel_mac(
    key: &FabricKey,
    server: bool,
    channel: &[u8],
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> HmacSha256 {
    let mut m = key.hmac();
    m.update(if server {
        CHANNEL_SERVER_LABEL
    } else {
        CHANNEL_CLIENT_LABEL
    });
    m.update(&(channel.len() as u64).to_le_bytes());
    m.update(channel);
    m.update(client_nonce);
    m.update(server_nonce);
    m
}

/// Mutual challenge-response for stream side channels (RDMA's TCP set-up): the server sends a
/// nonce, the client answers with its nonce and this proof (`server = false`), the server with
/// its own (`server = true`). `channel` names the protocol, so a proof never serves another.
/// Both nonces are fresh per connection, so a proof cannot be replayed.
pub fn channel_proof(
    key: &FabricKey,
    server: bool,
    channel: &[u8],
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> [u8; NONCE_LEN] {
    channel_mac(key, server, channel, client_nonce, server_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a [`channel_proof`].
pub fn verify_channel_proof(
    key: &FabricKey,
    server: bool,
    channel: &[u8],
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    got: &[u8],
) -> bool {
    channel_mac(key, server, channel, client_nonce, server_nonce)
        .verify_slice(got)
        .is_ok()
}

/// Per-process secret of the stateless SYN cookies.
pub(crate) struct CookieJar(HmacSha256);

impl CookieJar {
    pub(crate) fn new() -> Self {
        let secret: [u8; 32] = rand::random();
        CookieJar(<HmacSha256 as Mac>::new_from_slice(&secret).expect("HMAC accepts 32-byte keys"))
    }

    /// The server nonce for a SYN: unpredictable to the client, recomputable by the server from
    /// the CONFIRM alone, and bound to the client's address (a captured CONFIRM cannot be
    /// replayed from elsewhere).
    pub(crate) fn server_nonce(
        &self,
        addr: &[u8],
        conn_id: u64,
        flags: u8,
        time: u64,
        client_nonce: &[u8; NONCE_LEN],
    ) -> [u8; NONCE_LEN] {
        let mut m = self.0.clone();
        m.update(COOKIE_LABEL);
        m.update(&(addr.len() as u64).to_le_bytes());
        m.update(addr);
        m.update(&conn_id.to_le_bytes());
        m.update(&[flags]);
        m.update(&time.to_le_bytes());
        m.update(client_nonce);
        m.finalize().into_bytes().into()
    }
}

/// Constant-time equality of two byte strings (cookies).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The two directions' frame keys of one connection.
pub(crate) struct SessionKeys {
    pub(crate) client_to_server: [u8; 16],
    pub(crate) server_to_client: [u8; 16],
}

/// HKDF-SHA256: IKM = fabric secret, salt = both nonces, info = label and the rest of the
/// transcript. Fresh nonces on both sides make every connection's keys independent.
pub(crate) fn session_keys(key: &FabricKey, t: &Transcript<'_>) -> SessionKeys {
    let mut salt = [0u8; 2 * NONCE_LEN];
    salt[..NONCE_LEN].copy_from_slice(t.client_nonce);
    salt[NONCE_LEN..].copy_from_slice(t.server_nonce);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), &key.0);
    let mut info = Vec::with_capacity(KEYS_LABEL.len() + 17);
    info.extend_from_slice(KEYS_LABEL);
    info.extend_from_slice(&t.conn_id.to_le_bytes());
    info.push(t.flags);
    info.extend_from_slice(&t.time.to_le_bytes());
    let mut okm = [0u8; 32];
    hk.expand(&info, &mut okm)
        .expect("32 bytes is within HKDF-SHA256's output limit");
    let mut keys = SessionKeys {
        client_to_server: [0; 16],
        server_to_client: [0; 16],
    };
    keys.client_to_server.copy_from_slice(&okm[..16]);
    keys.server_to_client.copy_from_slice(&okm[16..]);
    keys
}

/// AES-128-GMAC of one direction.
pub(crate) struct Gmac(Aes128Gcm);

impl Gmac {
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        Gmac(Aes128Gcm::new(key.into()))
    }

    fn nonce(pn: u64) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&pn.to_le_bytes());
        n.into()
    }

    /// The tag over `msg` under packet number `pn` (which must never repeat for this key).
    pub(crate) fn tag(&self, pn: u64, msg: &[u8]) -> [u8; TAG_LEN] {
        match self
            .0
            .encrypt_in_place_detached(&Self::nonce(pn), msg, &mut [])
        {
            Ok(t) => t.into(),
            // Only reachable for AAD beyond 2^36 bytes; datagrams are at most a few KB.
            Err(_) => [0; TAG_LEN],
        }
    }

    /// Whether `tag` authenticates `msg` under `pn` (constant time).
    pub(crate) fn verify(&self, pn: u64, msg: &[u8], tag: &[u8]) -> bool {
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else {
            return false;
        };
        self.0
            .decrypt_in_place_detached(&Self::nonce(pn), msg, &mut [], (&tag).into())
            .is_ok()
    }
}

/// Anti-replay window over packet numbers (RFC 4303 section 3.4.3 style): accepts each `pn`
/// at most once and nothing older than 64 behind the newest seen.
#[derive(Default)]
pub(crate) struct ReplayWindow {
    /// Highest packet number accepted (0: none yet; packet numbers start at 1).
    top: u64,
    /// Bit i set: `top - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Whether `pn` would be fresh (does not record it).
    pub(crate) fn fresh(&self, pn: u64) -> bool {
        if pn == 0 {
            return false;
        }
        if pn > self.top {
            return true;
        }
        let back = self.top - pn;
        back < 64 && self.seen & (1 << back) == 0
    }

    /// Records an authenticated `pn`; returns false (and records nothing) for a replay.
    pub(crate) fn accept(&mut self, pn: u64) -> bool {
        if !self.fresh(pn) {
            return false;
        }
        if pn > self.top {
            let shift = pn - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = pn;
        } else {
            self.seen |= 1 << (self.top - pn);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_accepts_each_pn_once() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(1));
        assert!(!w.accept(1));
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(100));
        assert!(!w.accept(5), "too old");
        assert!(w.accept(99));
        assert!(!w.accept(99));
    }

    #[test]
    fn gmac_rejects_changes() {
        let g = Gmac::new(&[1; 16]);
        let msg = b"header and payload";
        let t = g.tag(7, msg);
        assert!(g.verify(7, msg, &t));
        assert!(!g.verify(8, msg, &t));
        assert!(!g.verify(7, b"header and paylaod", &t));
        assert!(!Gmac::new(&[2; 16]).verify(7, msg, &t));
    }

    #[test]
    fn proofs_are_side_and_transcript_bound() {
        let k = FabricKey::new([9; 32]);
        let (cn, sn) = ([1; 32], [2; 32]);
        let t = Transcript {
            conn_id: 5,
            flags: 1,
            time: 10,
            client_nonce: &cn,
            server_nonce: &sn,
        };
        let p = proof(&k, Side::Client, &t);
        assert!(verify_proof(&k, Side::Client, &t, &p));
        assert!(!verify_proof(&k, Side::Server, &t, &p));
        assert!(!verify_proof(
            &k,
            Side::Client,
            &Transcript { time: 11, ..t },
            &p
        ));
        assert!(!verify_proof(
            &FabricKey::new([8; 32]),
            Side::Client,
            &t,
            &p
        ));
        let a = session_keys(&k, &t);
        let b = session_keys(&k, &Transcript { conn_id: 6, ..t });
        assert_ne!(a.client_to_server, a.server_to_client);
        assert_ne!(a.client_to_server, b.client_to_server);
    }
}
