//! Feed arbitrary bytes to every decoder of smb-proto; none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smb_proto::fuzz_decode(data);
});
