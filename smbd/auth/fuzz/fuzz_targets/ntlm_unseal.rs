#![no_main]

use libfuzzer_sys::fuzz_target;

// A peer's NTLM-protected message (DCE/RPC packet integrity / privacy): never a panic.
fuzz_target!(|data: &[u8]| {
    let _ = smb_auth::fuzzing::ntlm_unseal(data);
});
