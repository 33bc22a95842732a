#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check_dos_xattr.rs"]
mod check_dos_xattr;

// The `user.smbd.dos` xattr as read from a file (see check_dos_xattr.rs).
fuzz_target!(|data: &[u8]| {
    check_dos_xattr::check_dos_xattr(data);
});
