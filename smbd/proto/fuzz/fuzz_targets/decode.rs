//! Feed arbitrary bytes to every decoder of smb-proto; none may panic, and a payload frame's
//! body and an area frame's body re-encode to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smb_proto::fuzz_decode(data);
    if let Err(property) = smb_proto::payload_frame::check_round_trip(data) {
        panic!("payload frame property violated: {property}");
    }
    if let Err(property) = smb_proto::area_frame::check_round_trip(data) {
        panic!("area frame property violated: {property}");
    }
});
