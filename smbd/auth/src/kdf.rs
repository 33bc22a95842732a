//! SMB 3.x key derivation (MS-SMB2 3.1.4.2): NIST SP800-108 KDF in counter mode with HMAC-SHA256,
//! r = 32, and a single output block for L = 128 (two blocks for L = 256).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// SP800-108 counter mode, HMAC-SHA256, L = `out.len() * 8` (MS-SMB2 3.1.4.2 uses 128 or 256).
///
/// `label` and `context` are passed exactly as MS-SMB2 spells them, i.e. including their
/// terminating NUL where the spec says "null-terminated" (e.g. `b"SMB2AESCMAC\0"`); this function
/// adds the single 0x00 separator byte that SP800-108 puts between Label and Context.
pub fn smb3_kdf(key: &[u8], label: &[u8], context: &[u8], out: &mut [u8]) {
    let l_bits = (out.len() as u32).wrapping_mul(8);
    for (i, chunk) in out.chunks_mut(32).enumerate() {
        let counter = (i as u32).wrapping_add(1);
        let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(m) => m,
            // HMAC accepts keys of any length, so this arm is unreachable in practice.
            Err(_) => return,
        };
        mac.update(&counter.to_be_bytes());
        mac.update(label);
        mac.update(&[0u8]);
        mac.update(context);
        mac.update(&l_bits.to_be_bytes());
        let block = mac.finalize().into_bytes();
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}
