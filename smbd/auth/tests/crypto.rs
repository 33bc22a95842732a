//! Encryption round trips, tamper detection and input validation for all ciphers.

use smb_auth::encryption::{
    decrypt, encrypt, transform_session_id, CryptoError, TRANSFORM_HEADER_LEN,
};
use smb_auth::keys::{derive, Cipher, Dialect};

const ALL: [Cipher; 4] = [
    Cipher::Aes128Ccm,
    Cipher::Aes128Gcm,
    Cipher::Aes256Ccm,
    Cipher::Aes256Gcm,
];

fn key_for(c: Cipher) -> Vec<u8> {
    (0..c.key_len() as u8).map(|i| i.wrapping_mul(7)).collect()
}

fn sample_message(len: usize) -> Vec<u8> {
    let mut m = vec![0xFE, b'S', b'M', b'B'];
    m.extend((4..len).map(|i| (i * 31 % 251) as u8));
    m
}

#[test]
fn roundtrip_all_ciphers() {
    for c in ALL {
        let key = key_for(c);
        for len in [64usize, 65, 100, 4096, 70_000] {
            let plain = sample_message(len);
            let enc = encrypt(c, &key, 0x1122_3344_5566_7788, &plain).unwrap();
            assert_eq!(enc.len(), TRANSFORM_HEADER_LEN + len);
            assert_eq!(&enc[..4], &[0xFD, b'S', b'M', b'B']);
            assert_ne!(
                &enc[TRANSFORM_HEADER_LEN..],
                &plain[..],
                "{c:?} did not encrypt"
            );
            // Bytes of the nonce field beyond the cipher's nonce length stay zero.
            assert!(enc[20 + c.nonce_len()..36].iter().all(|b| *b == 0));
            assert_eq!(transform_session_id(&enc), Some(0x1122_3344_5566_7788));
            let (sid, dec) = decrypt(c, &key, &enc).unwrap();
            assert_eq!(sid, 0x1122_3344_5566_7788);
            assert_eq!(dec, plain);
        }
    }
}

#[test]
fn nonces_are_fresh() {
    for c in ALL {
        let key = key_for(c);
        let a = encrypt(c, &key, 1, &sample_message(64)).unwrap();
        let b = encrypt(c, &key, 1, &sample_message(64)).unwrap();
        assert_ne!(a[20..36], b[20..36], "{c:?} reused a nonce");
    }
}

#[test]
fn tampering_detected_everywhere() {
    for c in ALL {
        let key = key_for(c);
        let enc = encrypt(c, &key, 42, &sample_message(200)).unwrap();
        // Signature, nonce, OriginalMessageSize-neutral AAD bytes and ciphertext are all covered.
        for i in (4..enc.len()).step_by(7) {
            let mut t = enc.clone();
            t[i] ^= 0x40;
            assert!(decrypt(c, &key, &t).is_err(), "{c:?} byte {i} not covered");
        }
        let mut t = enc.clone();
        t[44] ^= 1; // SessionId is AAD
        assert_eq!(decrypt(c, &key, &t), Err(CryptoError::BadTag));
        let mut wrong = key.clone();
        wrong[0] ^= 1;
        assert_eq!(decrypt(c, &wrong, &enc), Err(CryptoError::BadTag));
    }
}

#[test]
fn cipher_mismatch_fails() {
    let k16 = key_for(Cipher::Aes128Ccm);
    let enc = encrypt(Cipher::Aes128Ccm, &k16, 1, &sample_message(80)).unwrap();
    assert!(decrypt(Cipher::Aes128Gcm, &k16, &enc).is_err());
}

#[test]
fn malformed_inputs_rejected() {
    let c = Cipher::Aes128Gcm;
    let key = key_for(c);
    let enc = encrypt(c, &key, 7, &sample_message(100)).unwrap();
    assert_eq!(
        decrypt(c, &key, &enc[..51]),
        Err(CryptoError::Truncated(51))
    );
    assert!(matches!(
        decrypt(c, &key, &enc[..enc.len() - 1]),
        Err(CryptoError::SizeMismatch { .. })
    ));
    let mut bad = enc.clone();
    bad[0] = 0xFE;
    assert_eq!(decrypt(c, &key, &bad), Err(CryptoError::BadProtocolId));
    assert_eq!(transform_session_id(&bad), None);
    assert_eq!(transform_session_id(&enc[..40]), None);
    let mut bad = enc.clone();
    bad[42] = 2;
    assert_eq!(decrypt(c, &key, &bad), Err(CryptoError::BadFlags(2)));
    assert!(matches!(
        encrypt(c, &key[..15], 1, b"x"),
        Err(CryptoError::KeyLength { got: 15, need: 16 })
    ));
    assert!(matches!(
        decrypt(Cipher::Aes256Gcm, &key, &enc),
        Err(CryptoError::KeyLength { got: 16, need: 32 })
    ));
}

#[test]
fn derived_keys_interoperate_in_both_directions() {
    // What the server encrypts with `encryption` the client opens with its decryption key, which
    // by construction is the same derivation; check the two directions differ.
    let sk = [9u8; 16];
    let pa = [3u8; 64];
    for c in ALL {
        let keys = derive(Dialect::Smb311, &sk, Some(&pa), Some(c));
        assert_eq!(keys.encryption.len(), c.key_len());
        assert_ne!(keys.encryption, keys.decryption);
        let enc = encrypt(c, &keys.encryption, 5, &sample_message(64)).unwrap();
        assert!(decrypt(c, &keys.encryption, &enc).is_ok());
        assert!(decrypt(c, &keys.decryption, &enc).is_err());
    }
}
