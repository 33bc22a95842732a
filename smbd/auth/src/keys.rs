//! Per-session key derivation (MS-SMB2 3.3.5.5.3, 3.2.5.3.1).

use crate::kdf::smb3_kdf;

/// Negotiated SMB2 dialect, as far as key handling cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// 0x0202
    Smb202,
    /// 0x0210
    Smb21,
    /// 0x0300
    Smb30,
    /// 0x0302
    Smb302,
    /// 0x0311
    Smb311,
}

impl Dialect {
    /// Maps the wire DialectRevision to a [`Dialect`]; `None` for wildcard/unknown values.
    pub fn from_revision(rev: u16) -> Option<Self> {
        match rev {
            0x0202 => Some(Dialect::Smb202),
            0x0210 => Some(Dialect::Smb21),
            0x0300 => Some(Dialect::Smb30),
            0x0302 => Some(Dialect::Smb302),
            0x0311 => Some(Dialect::Smb311),
            _ => None,
        }
    }

    /// True for the SMB 3.x family (KDF-derived keys, AES signing, encryption available).
    pub fn is_smb3(self) -> bool {
        matches!(self, Dialect::Smb30 | Dialect::Smb302 | Dialect::Smb311)
    }
}

/// Message signing algorithm (MS-SMB2 3.1.4.1; ids as in SMB2_SIGNING_CAPABILITIES, 2.2.3.1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// HMAC-SHA256 truncated to 16 bytes: dialects 2.0.2 and 2.1.
    HmacSha256,
    /// AES-128-CMAC: 3.0, 3.0.2 and 3.1.1 unless GMAC was negotiated.
    AesCmac,
    /// AES-128-GMAC: 3.1.1 with SMB2_SIGNING_CAPABILITIES selecting it.
    AesGmac,
}

impl SigningAlgorithm {
    /// SigningAlgorithmId from SMB2_SIGNING_CAPABILITIES.
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            0 => Some(SigningAlgorithm::HmacSha256),
            1 => Some(SigningAlgorithm::AesCmac),
            2 => Some(SigningAlgorithm::AesGmac),
            _ => None,
        }
    }

    /// SigningAlgorithmId for SMB2_SIGNING_CAPABILITIES.
    pub fn id(self) -> u16 {
        match self {
            SigningAlgorithm::HmacSha256 => 0,
            SigningAlgorithm::AesCmac => 1,
            SigningAlgorithm::AesGmac => 2,
        }
    }

    /// The algorithm a dialect uses when no signing capability was negotiated.
    pub fn default_for(dialect: Dialect) -> Self {
        if dialect.is_smb3() {
            SigningAlgorithm::AesCmac
        } else {
            SigningAlgorithm::HmacSha256
        }
    }
}

/// Encryption cipher; discriminants are the MS-SMB2 2.2.3.1.2 Cipher ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Cipher {
    /// AES-128-CCM (the only cipher of 3.0 / 3.0.2).
    Aes128Ccm = 1,
    /// AES-128-GCM.
    Aes128Gcm = 2,
    /// AES-256-CCM.
    Aes256Ccm = 3,
    /// AES-256-GCM.
    Aes256Gcm = 4,
}

impl Cipher {
    /// Maps a wire cipher id to a [`Cipher`].
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            1 => Some(Cipher::Aes128Ccm),
            2 => Some(Cipher::Aes128Gcm),
            3 => Some(Cipher::Aes256Ccm),
            4 => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }

    /// The wire cipher id.
    pub fn id(self) -> u16 {
        self as u16
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Ccm | Cipher::Aes128Gcm => 16,
            Cipher::Aes256Ccm | Cipher::Aes256Gcm => 32,
        }
    }

    /// Significant nonce bytes in the 16-byte TRANSFORM_HEADER Nonce field (MS-SMB2 2.2.41).
    pub fn nonce_len(self) -> usize {
        match self {
            Cipher::Aes128Ccm | Cipher::Aes256Ccm => 11,
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => 12,
        }
    }
}

/// The keys of one authenticated session, from the server's point of view.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Session.SigningKey (16 bytes).
    pub signing: Vec<u8>,
    /// Session.EncryptionKey: server -> client ("ServerOut" / SMBS2CCipherKey). Empty before 3.0.
    pub encryption: Vec<u8>,
    /// Session.DecryptionKey: client -> server ("ServerIn " / SMBC2SCipherKey). Empty before 3.0.
    pub decryption: Vec<u8>,
    /// Session.ApplicationKey (16 bytes).
    pub application: Vec<u8>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys must never end up in logs.
        f.debug_struct("SessionKeys").finish_non_exhaustive()
    }
}

fn kdf_vec(key: &[u8], label: &[u8], context: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    smb3_kdf(key, label, context, &mut out);
    out
}

/// Derive the session keys from the GSS session key (MS-SMB2 3.3.5.5.3).
///
/// Labels/contexts per MS-SMB2 3.3.5.5.3 (3.0/3.0.2: "SMB2AESCMAC"/"SmbSign", "SMB2AESCCM"/"ServerOut"
/// "ServerIn ", "SMB2APP"/"SmbRpc"; 3.1.1: "SMBSigningKey", "SMBS2CCipherKey", "SMBC2SCipherKey",
/// "SMBAppKey" with the preauth hash as context; 256-bit ciphers use L=256 and the full session key).
///
/// For 2.0.2 / 2.1 the signing and application keys are the session key itself and there are no
/// encryption keys. For 3.1.1 `preauth` must be the session's preauth integrity hash after the
/// final SESSION_SETUP request; if it is `None` a zero hash is used (and keys will not match the
/// client's), so callers must pass it.
pub fn derive(
    dialect: Dialect,
    session_key: &[u8; 16],
    preauth: Option<&[u8; 64]>,
    cipher: Option<Cipher>,
) -> SessionKeys {
    let enc_len = cipher.map_or(16, Cipher::key_len);
    match dialect {
        Dialect::Smb202 | Dialect::Smb21 => SessionKeys {
            signing: session_key.to_vec(),
            encryption: Vec::new(),
            decryption: Vec::new(),
            application: session_key.to_vec(),
        },
        Dialect::Smb30 | Dialect::Smb302 => SessionKeys {
            signing: kdf_vec(session_key, b"SMB2AESCMAC\0", b"SmbSign\0", 16),
            encryption: kdf_vec(session_key, b"SMB2AESCCM\0", b"ServerOut\0", enc_len),
            decryption: kdf_vec(session_key, b"SMB2AESCCM\0", b"ServerIn \0", enc_len),
            application: kdf_vec(session_key, b"SMB2APP\0", b"SmbRpc\0", 16),
        },
        Dialect::Smb311 => {
            let zero = [0u8; 64];
            let ctx: &[u8] = preauth.unwrap_or(&zero);
            SessionKeys {
                signing: kdf_vec(session_key, b"SMBSigningKey\0", ctx, 16),
                encryption: kdf_vec(session_key, b"SMBS2CCipherKey\0", ctx, enc_len),
                decryption: kdf_vec(session_key, b"SMBC2SCipherKey\0", ctx, enc_len),
                application: kdf_vec(session_key, b"SMBAppKey\0", ctx, 16),
            }
        }
    }
}
