#![no_main]

use libfuzzer_sys::fuzz_target;

// The users file: arbitrary text must never panic, accepted files must hold exactly their users.
fuzz_target!(|data: &[u8]| {
    if let Err(e) = smb_auth::fuzzing::user_db(data) {
        panic!("{e}");
    }
});
