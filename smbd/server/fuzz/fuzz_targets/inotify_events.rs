#![no_main]

use libfuzzer_sys::fuzz_target;

// What read(2) of smbd's inotify descriptor returned: any bytes must parse or be refused
// without a panic, and parsed events must account for every byte.
fuzz_target!(|data: &[u8]| {
    if let Ok(events) = smbd::dirwatch::parse_events(data) {
        let bytes: usize = events.iter().map(|e| 16 + e.name.len()).sum();
        assert!(bytes <= data.len());
    }
});
