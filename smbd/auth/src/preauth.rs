//! SMB 3.1.1 preauthentication integrity hash (MS-SMB2 3.2.5.2, 3.3.5.4): a running SHA-512 over
//! NEGOTIATE and SESSION_SETUP messages, `H(i) = SHA512(H(i-1) || message)`, starting from zeros.

use sha2::{Digest, Sha512};

/// Running SHA-512 preauth integrity hash value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreauthHash {
    value: [u8; 64],
}

impl Default for PreauthHash {
    fn default() -> Self {
        Self::new()
    }
}

impl PreauthHash {
    /// The initial value: 64 zero bytes.
    pub fn new() -> Self {
        PreauthHash { value: [0u8; 64] }
    }

    /// Fold one whole SMB2 message (header included, no transport framing) into the hash.
    pub fn update(&mut self, message: &[u8]) {
        let mut h = Sha512::new();
        h.update(self.value);
        h.update(message);
        self.value.copy_from_slice(&h.finalize());
    }

    /// The current hash value.
    pub fn value(&self) -> [u8; 64] {
        self.value
    }
}
