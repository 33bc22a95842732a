//! SMB2 message signing (MS-SMB2 3.1.4.1).
//!
//! The caller passes exactly one SMB2 message: for a compound chain, the bytes from this message's
//! header up to its NextCommand offset (padding included), or to the end for the last one. The
//! caller is responsible for setting SMB2_FLAGS_SIGNED in the header before signing, because the
//! flags are covered by the signature.

use aes::Aes128;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use cmac::Cmac;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::keys::SigningAlgorithm;

/// Size of the SMB2 sync/async header.
pub const SMB2_HEADER_LEN: usize = 64;
/// Byte range of the Signature field inside the SMB2 header.
pub const SIGNATURE_RANGE: std::ops::Range<usize> = 48..64;

const FLAGS_SERVER_TO_REDIR: u32 = 0x0000_0001;
const SMB2_CANCEL: u16 = 0x000C;

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignError {
    /// The message is shorter than an SMB2 header.
    #[error("message of {0} bytes is shorter than the 64-byte SMB2 header")]
    MessageTooShort(usize),
    /// The key has the wrong length for the algorithm (AES needs 16 bytes).
    #[error("signing key of {0} bytes is not valid for this algorithm")]
    KeyLength(usize),
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Computes the 16-byte signature of `message`, whose Signature field must already be zero.
fn compute(alg: SigningAlgorithm, key: &[u8], message: &[u8]) -> Result<[u8; 16], SignError> {
    if message.len() < SMB2_HEADER_LEN {
        return Err(SignError::MessageTooShort(message.len()));
    }
    let mut sig = [0u8; 16];
    match alg {
        SigningAlgorithm::HmacSha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                .map_err(|_| SignError::KeyLength(key.len()))?;
            mac.update(message);
            sig.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        }
        SigningAlgorithm::AesCmac => {
            let mut mac = <Cmac<Aes128> as Mac>::new_from_slice(key)
                .map_err(|_| SignError::KeyLength(key.len()))?;
            mac.update(message);
            sig.copy_from_slice(&mac.finalize().into_bytes());
        }
        SigningAlgorithm::AesGmac => {
            let cipher =
                Aes128Gcm::new_from_slice(key).map_err(|_| SignError::KeyLength(key.len()))?;
            // MS-SMB2 3.1.4.1: the nonce is MessageId followed by a 32-bit field whose bit 0 is
            // the role (set when the sender is the server, i.e. SMB2_FLAGS_SERVER_TO_REDIR) and
            // bit 1 marks a CANCEL request (which reuses the MessageId of the request it cancels).
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&message[24..32]);
            let flags = le_u32(message, 16);
            let command = u16::from_le_bytes([message[12], message[13]]);
            let mut role = 0u32;
            if flags & FLAGS_SERVER_TO_REDIR != 0 {
                role |= 1;
            }
            if command == SMB2_CANCEL {
                role |= 2;
            }
            nonce[8..].copy_from_slice(&role.to_le_bytes());
            // GMAC is GCM with an empty plaintext: the whole message is additional data.
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), message, &mut [])
                .map_err(|_| SignError::KeyLength(key.len()))?;
            sig.copy_from_slice(&tag);
        }
    }
    Ok(sig)
}

/// Sign an SMB2 message in place: zero the 16-byte Signature field (header bytes 48..64), compute, write.
/// GMAC nonce per MS-SMB2 3.1.4.1: MessageId (8 bytes) + 4 bytes where bit 0 = server/response flag and
/// bit 1 = CANCEL command.
pub fn sign(alg: SigningAlgorithm, key: &[u8], message: &mut [u8]) -> Result<(), SignError> {
    if message.len() < SMB2_HEADER_LEN {
        return Err(SignError::MessageTooShort(message.len()));
    }
    message[SIGNATURE_RANGE].fill(0);
    let sig = compute(alg, key, message)?;
    message[SIGNATURE_RANGE].copy_from_slice(&sig);
    Ok(())
}

/// Verify the signature of an SMB2 message; constant-time compare. False on any error.
pub fn verify(alg: SigningAlgorithm, key: &[u8], message: &[u8]) -> bool {
    if message.len() < SMB2_HEADER_LEN {
        return false;
    }
    let mut copy = message.to_vec();
    copy[SIGNATURE_RANGE].fill(0);
    match compute(alg, key, &copy) {
        Ok(sig) => bool::from(sig.ct_eq(&message[SIGNATURE_RANGE])),
        Err(e) => {
            tracing::debug!(error = %e, "signature verification failed");
            false
        }
    }
}
