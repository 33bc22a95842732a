//! Security descriptors from arbitrary bytes: decoding never panics, and whatever decodes
//! survives encode -> decode unchanged (also its ACEs through Acl::from_aces).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(property) = smb_proto::security_descriptor::check_round_trip(data) {
        panic!("round-trip property violated: {property}");
    }
});
