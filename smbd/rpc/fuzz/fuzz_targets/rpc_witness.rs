#![no_main]

use libfuzzer_sys::fuzz_target;

// Arbitrary client bytes on a witness + endpoint mapper connection: never a panic, every
// answer a whole PDU within the fragment size (checked inside).
fuzz_target!(|data: &[u8]| {
    smb_rpc::fuzzing::witness_bytes(data);
});
