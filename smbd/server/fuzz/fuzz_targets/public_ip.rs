#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check_public_ip.rs"]
mod check_public_ip;

// /proc/net/tcp(6) text, and addresses for the IPv6 tickle and Neighbor Advertisement
// builders (see check_public_ip.rs).
fuzz_target!(|data: &[u8]| {
    check_public_ip::check_public_ip(data);
});
