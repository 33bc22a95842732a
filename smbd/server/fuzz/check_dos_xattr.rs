// The DOS-attribute xattr's check, shared by the `dos_xattr` fuzz target and the corpus replay
// in `tests/fuzz_corpus.rs`.

use smbd::dosattr::{decode_value, encode_value};

/// Any value decodes or is refused; a version-2 value re-encodes to the same bytes, a
/// version-1 one to version 2 with its fields kept; the reporting rule and the hold
/// arithmetic never panic, whatever the stored numbers. True when the value decoded.
pub fn check_dos_xattr(data: &[u8]) -> bool {
    let Some(mut d) = decode_value(data) else {
        return false;
    };
    let again = encode_value(&d);
    if data.len() == again.len() {
        assert_eq!(again, data);
    } else {
        assert_eq!(decode_value(&again), Some(d));
    }
    for (kernel, now) in [(0, 0), (d.write_guard, d.hold_until), (u64::MAX, u64::MAX)] {
        let _ = d.reported_write(kernel, now);
    }
    d.take_hold(d.hold_until, u64::MAX);
    d.renew_hold(u64::MAX);
    d.release_hold();
    true
}
