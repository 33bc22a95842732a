//! Large READ/WRITE through the worker's io_uring (8 MiB multi-credit requests, several in
//! flight): smbclient put/get of files bigger than the largest request, with sizes that are
//! not multiples of it, plain, signed and sealed; contents compared byte for byte. The
//! holdback of other requests behind in-flight I/O is exercised by the commands that follow
//! each transfer in the same connection (rename, rm) seeing the file complete.

mod common;
use common::*;

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn roundtrip(protection: &str, len: usize) {
    if !have("smbclient") {
        missing("smbclient not installed (apt-get install smbclient)");
        return;
    }
    let srv = TestServer::start(Options::default());
    let work = tempfile::tempdir().unwrap();
    let data = pattern(len, len as u32);
    std::fs::write(work.path().join("up.bin"), &data).unwrap();
    let mut extra = vec!["-m", "SMB3_11"];
    let prot = format!("--client-protection={protection}");
    if !protection.is_empty() {
        extra.push(&prot);
    }
    let (ok, out) = srv.smbclient(
        work.path(),
        &extra,
        "put up.bin a.bin; rename a.bin b.bin; get b.bin down.bin; get b.bin down2.bin",
    );
    assert!(ok, "{protection}: {out}\n{}", srv.log());
    assert_eq!(std::fs::read(srv.share.join("b.bin")).unwrap(), data);
    assert!(std::fs::read(work.path().join("down.bin")).unwrap() == data);
    assert!(std::fs::read(work.path().join("down2.bin")).unwrap() == data);
    let (ok, out) = srv.smbclient(work.path(), &extra, "rm b.bin; ls");
    assert!(ok, "{protection}: {out}");
    assert!(!srv.share.join("b.bin").exists());
}

#[test]
fn ring_io_large_plain() {
    roundtrip("", 20 * 1024 * 1024 + 12_345);
}

#[test]
fn ring_io_large_signed() {
    roundtrip("sign", 17 * 1024 * 1024 + 1);
}

#[test]
fn ring_io_large_sealed() {
    roundtrip("encrypt", 9 * 1024 * 1024 + 777);
}

/// Sizes around the ring threshold (64 KiB) and the 8 MiB request limit.
#[test]
fn ring_io_edges() {
    for len in [65_535, 65_536, 65_537, 8 * 1024 * 1024] {
        roundtrip("", len);
    }
}

/// More 8 MiB requests than a connection may have in the ring at once (8): the rest wait in
/// the input buffer and resume as completions arrive.
#[test]
fn ring_io_more_than_the_inflight_limit() {
    roundtrip("", 100 * 1024 * 1024 + 3);
}
