//! Replays the checked-in fuzz corpus (`fuzz/corpus/metrics_http_request/`) through the
//! fuzz target's property, with every truncation of each input.

use std::path::Path;

#[test]
fn http_request_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/metrics_http_request");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        for cut in 0..=data.len() {
            clustersmb_metrics::check_request(&data[..cut])
                .unwrap_or_else(|e| panic!("{}[..{cut}]: {e}", p.display()));
        }
        n += 1;
    }
    assert!(n >= 10, "corpus has {n} inputs");
    // The seeds mean what their names say.
    let get = std::fs::read(dir.join("get-metrics")).unwrap();
    let r = clustersmb_metrics::parse_request(&get, 8192)
        .unwrap()
        .unwrap();
    assert_eq!((r.method, r.path), ("GET", "/metrics"));
}
