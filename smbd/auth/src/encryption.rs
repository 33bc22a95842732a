//! SMB 3.x message encryption with the SMB2 TRANSFORM_HEADER (MS-SMB2 2.2.41, 3.1.4.3).
//!
//! Layout of the 52-byte transform header:
//! `ProtocolId(4) Signature(16) Nonce(16) OriginalMessageSize(4) Reserved(2) Flags(2) SessionId(8)`.
//! The AEAD tag is the Signature, and the additional data is bytes 20..52 (Nonce .. SessionId).

use aes::{Aes128, Aes256};
use aes_gcm::aead::consts::{U11, U16};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit};
use ccm::Ccm;
use rand::RngCore;

use crate::keys::Cipher;

/// Length of the SMB2 TRANSFORM_HEADER.
pub const TRANSFORM_HEADER_LEN: usize = 52;
/// ProtocolId of the TRANSFORM_HEADER.
pub const TRANSFORM_PROTOCOL_ID: [u8; 4] = [0xFD, b'S', b'M', b'B'];
/// Flags value meaning "Encrypted" (3.1.1) / EncryptionAlgorithm AES-128-CCM (3.0.x): both are 1.
const FLAGS_ENCRYPTED: u16 = 0x0001;

type Aes128Ccm = Ccm<Aes128, U16, U11>;
type Aes256Ccm = Ccm<Aes256, U16, U11>;

/// Encryption / decryption failures. None of them reveal which check failed beyond the variant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// Key of the wrong size for the cipher.
    #[error("key of {got} bytes, cipher needs {need}")]
    KeyLength {
        /// Bytes supplied.
        got: usize,
        /// Bytes the cipher needs.
        need: usize,
    },
    /// Message shorter than the transform header.
    #[error("transform message truncated ({0} bytes)")]
    Truncated(usize),
    /// ProtocolId is not 0xFD 'S' 'M' 'B'.
    #[error("not a TRANSFORM_HEADER")]
    BadProtocolId,
    /// OriginalMessageSize does not match the bytes following the header.
    #[error("OriginalMessageSize {declared} does not match {actual} payload bytes")]
    SizeMismatch {
        /// Size in the header.
        declared: u32,
        /// Bytes present.
        actual: usize,
    },
    /// Flags / EncryptionAlgorithm is not 1.
    #[error("unsupported transform flags {0:#06x}")]
    BadFlags(u16),
    /// Plaintext too large for the 32-bit OriginalMessageSize.
    #[error("plaintext too large")]
    TooLarge,
    /// Authentication tag mismatch (tampered message or wrong key).
    #[error("decryption failed: bad authentication tag")]
    BadTag,
}

fn check_key(cipher: Cipher, key: &[u8]) -> Result<(), CryptoError> {
    if key.len() != cipher.key_len() {
        return Err(CryptoError::KeyLength {
            got: key.len(),
            need: cipher.key_len(),
        });
    }
    Ok(())
}

/// Runs the AEAD over `buf` in place; returns the tag.
fn seal(
    cipher: Cipher,
    key: &[u8],
    nonce: &[u8; 16],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; 16], CryptoError> {
    check_key(cipher, key)?;
    let n = &nonce[..cipher.nonce_len()];
    let bad_key = |_| CryptoError::KeyLength {
        got: key.len(),
        need: cipher.key_len(),
    };
    // The AEAD crates only fail encryption for oversize inputs, which MS-SMB2 sizes never reach.
    let tag = match cipher {
        Cipher::Aes128Ccm => Aes128Ccm::new_from_slice(key)
            .map_err(bad_key)?
            .encrypt_in_place_detached(n.into(), aad, buf)
            .map_err(|_| CryptoError::TooLarge)?,
        Cipher::Aes256Ccm => Aes256Ccm::new_from_slice(key)
            .map_err(bad_key)?
            .encrypt_in_place_detached(n.into(), aad, buf)
            .map_err(|_| CryptoError::TooLarge)?,
        Cipher::Aes128Gcm => Aes128Gcm::new_from_slice(key)
            .map_err(bad_key)?
            .encrypt_in_place_detached(n.into(), aad, buf)
            .map_err(|_| CryptoError::TooLarge)?,
        Cipher::Aes256Gcm => Aes256Gcm::new_from_slice(key)
            .map_err(bad_key)?
            .encrypt_in_place_detached(n.into(), aad, buf)
            .map_err(|_| CryptoError::TooLarge)?,
    };
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag);
    Ok(out)
}

fn open(
    cipher: Cipher,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), CryptoError> {
    check_key(cipher, key)?;
    let n = &nonce[..cipher.nonce_len()];
    let bad_key = |_| CryptoError::KeyLength {
        got: key.len(),
        need: cipher.key_len(),
    };
    let res = match cipher {
        Cipher::Aes128Ccm => Aes128Ccm::new_from_slice(key)
            .map_err(bad_key)?
            .decrypt_in_place_detached(n.into(), aad, buf, tag.into()),
        Cipher::Aes256Ccm => Aes256Ccm::new_from_slice(key)
            .map_err(bad_key)?
            .decrypt_in_place_detached(n.into(), aad, buf, tag.into()),
        Cipher::Aes128Gcm => Aes128Gcm::new_from_slice(key)
            .map_err(bad_key)?
            .decrypt_in_place_detached(n.into(), aad, buf, tag.into()),
        Cipher::Aes256Gcm => Aes256Gcm::new_from_slice(key)
            .map_err(bad_key)?
            .decrypt_in_place_detached(n.into(), aad, buf, tag.into()),
    };
    res.map_err(|_| CryptoError::BadTag)
}

/// Build SMB2 TRANSFORM_HEADER (0xFD 'S' 'M' 'B', signature, nonce 11 (CCM) / 12 (GCM) bytes random,
/// OriginalMessageSize, Flags/EncryptionAlgorithm = 1, SessionId) + ciphertext. AAD = header bytes 20..52.
///
/// Random nonces: with 96-bit (GCM) or 88-bit (CCM) random values the collision probability stays
/// negligible for the message counts of one session key.
pub fn encrypt(
    cipher: Cipher,
    key: &[u8],
    session_id: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce[..cipher.nonce_len()]);
    encrypt_with_nonce(cipher, key, session_id, &nonce, plaintext)
}

/// Like [`encrypt`] with a caller-chosen Nonce field (only the first 11 (CCM) / 12 (GCM) bytes are
/// used; the rest is written as given, normally zero). For known-answer tests and for callers that
/// prefer counter nonces. Never reuse a nonce with the same key.
pub fn encrypt_with_nonce(
    cipher: Cipher,
    key: &[u8],
    session_id: u64,
    nonce: &[u8; 16],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let size = u32::try_from(plaintext.len()).map_err(|_| CryptoError::TooLarge)?;
    let mut out = Vec::with_capacity(TRANSFORM_HEADER_LEN + plaintext.len());
    out.extend_from_slice(&TRANSFORM_PROTOCOL_ID);
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&FLAGS_ENCRYPTED.to_le_bytes());
    out.extend_from_slice(&session_id.to_le_bytes());
    out.extend_from_slice(plaintext);
    let (header, body) = out.split_at_mut(TRANSFORM_HEADER_LEN);
    let tag = seal(cipher, key, nonce, &header[20..52], body)?;
    out[4..20].copy_from_slice(&tag);
    Ok(out)
}

/// Returns (session_id, plaintext). Errors on bad tag / truncated / wrong sizes, never panics.
pub fn decrypt(cipher: Cipher, key: &[u8], message: &[u8]) -> Result<(u64, Vec<u8>), CryptoError> {
    if message.len() < TRANSFORM_HEADER_LEN {
        return Err(CryptoError::Truncated(message.len()));
    }
    if message[..4] != TRANSFORM_PROTOCOL_ID {
        return Err(CryptoError::BadProtocolId);
    }
    let (header, body) = message.split_at(TRANSFORM_HEADER_LEN);
    let declared = u32::from_le_bytes([header[36], header[37], header[38], header[39]]);
    if usize::try_from(declared).ok() != Some(body.len()) {
        return Err(CryptoError::SizeMismatch {
            declared,
            actual: body.len(),
        });
    }
    let flags = u16::from_le_bytes([header[42], header[43]]);
    if flags != FLAGS_ENCRYPTED {
        return Err(CryptoError::BadFlags(flags));
    }
    let mut sid = [0u8; 8];
    sid.copy_from_slice(&header[44..52]);
    let session_id = u64::from_le_bytes(sid);
    let mut plain = body.to_vec();
    open(
        cipher,
        key,
        &header[20..36],
        &header[20..52],
        &mut plain,
        &header[4..20],
    )?;
    Ok((session_id, plain))
}

/// SessionId of a TRANSFORM_HEADER message, to look up the key before decrypting.
pub fn transform_session_id(message: &[u8]) -> Option<u64> {
    if message.len() < TRANSFORM_HEADER_LEN || message[..4] != TRANSFORM_PROTOCOL_ID {
        return None;
    }
    let mut sid = [0u8; 8];
    sid.copy_from_slice(&message[44..52]);
    Some(u64::from_le_bytes(sid))
}
