//! NTLM message integrity and confidentiality with extended session security (MS-NLMP 3.4.3,
//! 3.4.4.2): what DCE/RPC's packet integrity and packet privacy levels use (MS-RPCE 3.3.1.5.2)
//! once an NTLM exchange has finished.
//!
//! Each direction has its own signing key, sealing key and sequence number; the RC4 handle of a
//! direction is set up once and runs on across messages (connection-oriented NTLM, MS-NLMP
//! 3.4.3). Sealing a message: the MAC is computed over the plaintext of the signed region, then
//! the data is encrypted, then (with key exchange) the MAC's checksum, in that order on the same
//! RC4 stream. Without extended session security there is no protection here: the acceptor
//! refuses such a context.

use subtle::ConstantTimeEq;

use crate::ntlm::flags::{NEGOTIATE_EXTENDED_SESSIONSECURITY, NEGOTIATE_KEY_EXCH};
use crate::ntlm::{hmac_md5, seal_key, sign_key};
use crate::rc4::Rc4;

/// Length of an NTLMSSP_MESSAGE_SIGNATURE (MS-NLMP 2.2.2.9.1).
pub const SIGNATURE_LEN: usize = 16;

/// Why a protected message was refused. Not exhaustive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtectionError {
    #[error("NTLM message protection needs extended session security")]
    NoExtendedSessionSecurity,
    #[error("message signature has the wrong length")]
    BadSignatureLength,
    #[error("message signature does not verify")]
    BadSignature,
    #[error("protected data lies outside the message")]
    BadRange,
}

struct Direction {
    sign_key: [u8; 16],
    rc4: Rc4,
    seq: u32,
}

impl Direction {
    fn new(exported: &[u8; 16], flags: u32, client_to_server: bool) -> Self {
        Direction {
            sign_key: sign_key(exported, client_to_server),
            rc4: Rc4::new(&seal_key(exported, flags, client_to_server)),
            seq: 0,
        }
    }

    /// The checksum of `signed` (plaintext) under this direction's next sequence number
    /// (MS-NLMP 3.4.4.2: the first 8 bytes of the HMAC).
    fn checksum(&self, signed: &[u8]) -> [u8; 8] {
        let mac = hmac_md5(&self.sign_key, &[&self.seq.to_le_bytes(), signed]);
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(&mac[..8]);
        checksum
    }

    /// The signature around `checksum`, RC4-encrypted when keys were exchanged (on the
    /// direction's stream, after whatever data was sealed with it). Advances the sequence
    /// number.
    fn finish(&mut self, flags: u32, mut checksum: [u8; 8]) -> [u8; SIGNATURE_LEN] {
        if flags & NEGOTIATE_KEY_EXCH != 0 {
            self.rc4.apply(&mut checksum);
        }
        let mut out = [0u8; SIGNATURE_LEN];
        out[..4].copy_from_slice(&1u32.to_le_bytes());
        out[4..12].copy_from_slice(&checksum);
        out[12..].copy_from_slice(&self.seq.to_le_bytes());
        self.seq = self.seq.wrapping_add(1);
        out
    }

    /// The signature of `signed` (plaintext) alone, nothing sealed.
    fn signature(&mut self, flags: u32, signed: &[u8]) -> [u8; SIGNATURE_LEN] {
        let checksum = self.checksum(signed);
        self.finish(flags, checksum)
    }
}

/// Message protection of one side of a finished NTLM exchange.
pub struct NtlmProtection {
    flags: u32,
    send: Direction,
    recv: Direction,
}

impl std::fmt::Debug for NtlmProtection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmProtection")
            .field("flags", &format_args!("{:#010x}", self.flags))
            .finish_non_exhaustive()
    }
}

impl NtlmProtection {
    /// The acceptor's side: it sends server-to-client and receives client-to-server.
    /// `exported` is the ExportedSessionKey, `flags` the negotiated flags
    /// ([`crate::NtlmServer::negotiated_flags`]).
    pub fn server(exported: &[u8; 16], flags: u32) -> Result<Self, ProtectionError> {
        Self::new(exported, flags, false)
    }

    /// The initiator's side (for tests and tools).
    pub fn client(exported: &[u8; 16], flags: u32) -> Result<Self, ProtectionError> {
        Self::new(exported, flags, true)
    }

    fn new(exported: &[u8; 16], flags: u32, client: bool) -> Result<Self, ProtectionError> {
        if flags & NEGOTIATE_EXTENDED_SESSIONSECURITY == 0 {
            return Err(ProtectionError::NoExtendedSessionSecurity);
        }
        Ok(NtlmProtection {
            flags,
            send: Direction::new(exported, flags, client),
            recv: Direction::new(exported, flags, !client),
        })
    }

    /// After SPNEGO's mechListMICs, which used sequence number 0 in each direction with the
    /// RC4 handles the protection then resets (MS-SPNG 3.3.5.1): messages continue at 1.
    pub fn after_mech_list_mic(mut self) -> Self {
        self.send.seq = 1;
        self.recv.seq = 1;
        self
    }

    /// Integrity: the signature of `message` (MS-NLMP 3.4.4.2 MAC).
    pub fn sign(&mut self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.send.signature(self.flags, message)
    }

    /// Checks the signature of a received `message`.
    pub fn verify(&mut self, message: &[u8], signature: &[u8]) -> Result<(), ProtectionError> {
        let expected = self.recv.signature(self.flags, message);
        compare(&expected, signature)
    }

    /// Privacy: signs `message` (the plaintext as a whole), then encrypts its bytes in `data`
    /// in place (MS-NLMP 3.4.3 SEAL). `data` must lie inside `message`.
    pub fn seal(
        &mut self,
        message: &mut [u8],
        data: std::ops::Range<usize>,
    ) -> Result<[u8; SIGNATURE_LEN], ProtectionError> {
        if data.start > data.end || data.end > message.len() {
            return Err(ProtectionError::BadRange);
        }
        // The MAC covers the plaintext; the data is encrypted on the RC4 stream before the
        // checksum is.
        let checksum = self.send.checksum(message);
        self.send.rc4.apply(&mut message[data]);
        Ok(self.send.finish(self.flags, checksum))
    }

    /// Decrypts the bytes of `data` in `message` in place, then checks the signature over the
    /// whole plaintext `message`. On an error the message must be dropped (and, for a
    /// connection-oriented protocol, the connection: the RC4 stream has moved on).
    pub fn unseal(
        &mut self,
        message: &mut [u8],
        data: std::ops::Range<usize>,
        signature: &[u8],
    ) -> Result<(), ProtectionError> {
        if data.start > data.end || data.end > message.len() {
            return Err(ProtectionError::BadRange);
        }
        if signature.len() != SIGNATURE_LEN {
            return Err(ProtectionError::BadSignatureLength);
        }
        self.recv.rc4.apply(&mut message[data]);
        let expected = self.recv.signature(self.flags, message);
        compare(&expected, signature)
    }
}

fn compare(expected: &[u8; SIGNATURE_LEN], got: &[u8]) -> Result<(), ProtectionError> {
    if got.len() != SIGNATURE_LEN {
        return Err(ProtectionError::BadSignatureLength);
    }
    if bool::from(expected.ct_eq(got)) {
        Ok(())
    } else {
        Err(ProtectionError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ntlm::flags::*;

    const FLAGS: u32 = NEGOTIATE_EXTENDED_SESSIONSECURITY
        | NEGOTIATE_KEY_EXCH
        | NEGOTIATE_128
        | NEGOTIATE_SEAL
        | NEGOTIATE_SIGN;

    fn h(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// MS-NLMP 4.2.4.4 (NTLMv2 with extended session security): RandomSessionKey 0x55 * 16,
    /// the client seals "Plaintext" (UTF-16) under sequence number 0.
    #[test]
    fn client_seal_matches_ms_nlmp_example() {
        let flags = 0xe28a_8233;
        let mut c = NtlmProtection::client(&[0x55; 16], flags).unwrap();
        let mut msg: Vec<u8> = "Plaintext"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let len = msg.len();
        let sig = c.seal(&mut msg, 0..len).unwrap();
        assert_eq!(msg, h("54e50165bf1936dc996020c1811b0f06fb5f"));
        assert_eq!(sig.to_vec(), h("010000007fb38ec5c55d497600000000"));
    }

    #[test]
    fn sealed_messages_round_trip_both_ways_and_tampering_is_caught() {
        let key = [7u8; 16];
        let mut client = NtlmProtection::client(&key, FLAGS).unwrap();
        let mut server = NtlmProtection::server(&key, FLAGS).unwrap();
        for i in 0..3u8 {
            let plain = vec![i; 40];
            let mut m = plain.clone();
            let sig = client.seal(&mut m, 8..40).unwrap();
            assert_ne!(m[8..], plain[8..]);
            server.unseal(&mut m, 8..40, &sig).unwrap();
            assert_eq!(m, plain);
            let mut r = plain.clone();
            let sig = server.seal(&mut r, 0..16).unwrap();
            client.unseal(&mut r, 0..16, &sig).unwrap();
            assert_eq!(r, plain);
        }
        // A flipped bit in the signed but unencrypted part.
        let mut m = vec![9u8; 40];
        let sig = client.seal(&mut m, 8..40).unwrap();
        m[0] ^= 1;
        assert_eq!(
            server.unseal(&mut m, 8..40, &sig),
            Err(ProtectionError::BadSignature)
        );
    }

    #[test]
    fn a_replayed_message_fails_its_sequence_number() {
        let key = [3u8; 16];
        let mut client = NtlmProtection::client(&key, FLAGS).unwrap();
        let mut server = NtlmProtection::server(&key, FLAGS).unwrap();
        let m = b"integrity only".to_vec();
        let sig = client.sign(&m);
        server.verify(&m, &sig).unwrap();
        assert_eq!(server.verify(&m, &sig), Err(ProtectionError::BadSignature));
    }

    #[test]
    fn no_protection_without_extended_session_security() {
        assert_eq!(
            NtlmProtection::server(&[0; 16], NEGOTIATE_128 | NEGOTIATE_SEAL).unwrap_err(),
            ProtectionError::NoExtendedSessionSecurity
        );
    }
}
