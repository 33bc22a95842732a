//! DFS referral requests (plain and _EX) and responses from arbitrary bytes: decoding never
//! panics, and whatever decodes survives encode -> decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(property) = smb_proto::dfs::check_round_trip(data) {
        panic!("round-trip property violated: {property}");
    }
});
