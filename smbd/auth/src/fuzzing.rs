//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus regression test
//! (`tests/fuzz_corpus.rs`), so both exercise exactly the same code. Not part of the stable API.

use std::sync::Arc;

use crate::keys::Cipher;
use crate::ntlm::{AuthStep, NtlmServer};
use crate::users::UserDb;

/// A typical NTLMSSP NEGOTIATE (UNICODE, NTLM, ESS, 128/56, KEY_EXCH, SIGN/SEAL, VERSION).
pub const NEGOTIATE: &[u8] = &[
    0x4e, 0x54, 0x4c, 0x4d, 0x53, 0x53, 0x50, 0x00, 0x01, 0x00, 0x00, 0x00, 0x37, 0x82, 0x08, 0xe2,
    0x00, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00,
    0x00, 0x0c, 0x04, 0x00, 0x00, 0x00, 0x00, 0x0f,
];

fn server() -> NtlmServer {
    let mut users = UserDb::new();
    users.add("alice", "correct horse");
    NtlmServer::new(Arc::new(users), "SMBD", "WORKGROUP")
}

/// Feeds `data` to a fresh server, to one that answered a raw NEGOTIATE, and to one that answered
/// a SPNEGO NegTokenInit. Must never panic; returns how many steps succeeded.
pub fn ntlm_step(data: &[u8]) -> usize {
    let mut ok = 0;
    ok += usize::from(server().step(data).is_ok());

    let mut raw = server();
    if matches!(raw.step(NEGOTIATE), Ok(AuthStep::Continue { .. })) {
        ok += usize::from(raw.step(data).is_ok());
    }

    let mut sp = server();
    let init = spnego_init(NEGOTIATE);
    if matches!(sp.step(&init), Ok(AuthStep::Continue { .. })) {
        ok += usize::from(sp.step(data).is_ok());
    }
    ok
}

fn spnego_init(mech_token: &[u8]) -> Vec<u8> {
    use crate::der::{ctx, tlv};
    let mech_types = tlv(0x30, &tlv(0x06, crate::spnego::NTLMSSP_OID));
    let mut fields = tlv(ctx(0), &mech_types);
    fields.extend_from_slice(&tlv(ctx(2), &tlv(0x04, mech_token)));
    let mut inner = tlv(0x06, crate::spnego::SPNEGO_OID);
    inner.extend_from_slice(&tlv(ctx(0), &tlv(0x30, &fields)));
    tlv(0x60, &inner)
}

/// Tries to decrypt `data` as a TRANSFORM message with every cipher. Must never panic; returns
/// how many decryptions succeeded (practically always 0 for arbitrary input).
pub fn decrypt(data: &[u8]) -> usize {
    let _ = crate::encryption::transform_session_id(data);
    let mut ok = 0;
    for c in [
        Cipher::Aes128Ccm,
        Cipher::Aes128Gcm,
        Cipher::Aes256Ccm,
        Cipher::Aes256Gcm,
    ] {
        let key = vec![0x42u8; c.key_len()];
        ok += usize::from(crate::encryption::decrypt(c, &key, data).is_ok());
    }
    ok
}

/// Parses `data` as a users file (`UserDb::parse`; non-UTF-8 is refused earlier by `load`).
/// Must never panic. An accepted file must hold exactly its `name:uid:gid:hash[:groups]` lines,
/// each user found case-insensitively (MS-NLMP 3.3.2: NTOWFv2 upper-cases the user name) with
/// the NT hash of its line, and the text `to_file_text` writes must parse back to the same
/// users. Returns how many users were loaded; `Err` describes a violated property.
pub fn user_db(data: &[u8]) -> Result<usize, String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(0);
    };
    let Ok(db) = UserDb::parse(text) else {
        return Ok(0);
    };
    let mut expected = 0;
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line).trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let (Some(user), Some(hash)) = (fields.first(), fields.get(3)) else {
            return Err(format!(
                "accepted a line with fewer than 4 fields: {line:?}"
            ));
        };
        let user = user.trim();
        expected += 1;
        let want: Option<[u8; 16]> = (0..16)
            .map(|i| {
                hash.trim()
                    .get(2 * i..2 * i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .and_then(|v| v.try_into().ok());
        if want.is_none() {
            return Err(format!("accepted a line without a hash: {line:?}"));
        }
        let mut spellings = vec![user.to_string()];
        if user.is_ascii() {
            spellings.push(user.to_ascii_lowercase());
            spellings.push(user.to_ascii_uppercase());
        }
        for name in &spellings {
            if db.nt_hash(name) != want {
                return Err(format!("{name:?} (line {line:?}) not found with its hash"));
            }
            if db.canonical_name(name) != Some(user) {
                return Err(format!("{name:?} canonical name is not {user:?}"));
            }
        }
    }
    let again = UserDb::parse(&db.to_file_text()).map_err(|e| format!("rewritten file: {e}"))?;
    if again.len() != db.len()
        || db
            .names()
            .any(|n| again.nt_hash(n) != db.nt_hash(n) || again.unix_ids(n) != db.unix_ids(n))
    {
        return Err("rewritten file differs".into());
    }
    if db.len() != expected {
        return Err(format!("{} users from {expected} lines", db.len()));
    }
    Ok(expected)
}

/// Unprotects `data` as a peer's NTLM-protected message (MS-NLMP 3.4.3): bytes 0..4 the
/// negotiated flags, 4..6 the start and end (in 8-byte units) of the encrypted range, 6..22
/// the signature, the rest the message; then checks it again as a signed-only message with a
/// fresh context. Must never panic (a range outside the message, any flags); returns how many
/// checks passed (practically always 0: the key is a fixed test key).
pub fn ntlm_unseal(data: &[u8]) -> usize {
    use crate::ntlm_seal::NtlmProtection;
    if data.len() < 22 {
        return 0;
    }
    let flags = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let range = usize::from(data[4]) * 8..usize::from(data[5]) * 8;
    let signature = &data[6..22];
    let mut message = data[22..].to_vec();
    let mut ok = 0;
    if let Ok(mut p) = NtlmProtection::server(&[0x42; 16], flags) {
        ok += usize::from(p.unseal(&mut message, range, signature).is_ok());
    }
    if let Ok(mut p) = NtlmProtection::server(&[0x42; 16], flags) {
        ok += usize::from(p.verify(&data[22..], signature).is_ok());
    }
    ok
}
