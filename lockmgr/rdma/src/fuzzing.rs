//! Properties the cargo-fuzz targets (`fuzz/`) check, shared with the corpus regression test
//! (`tests/fuzz_corpus.rs`) so `cargo test` (stable, no libFuzzer, no RDMA device) replays
//! every saved input through exactly the same code. Not part of the stable API.
//!
//! `Err` means a violated property (a codec bug), never merely invalid input.

use crate::wire::{Header, Hello, Kind, HDR_LEN, HELLO_LEN, MAX_SLOTS, MIN_SLOTS, SLOT_SIZE};
use lockmgr_transport::MAX_FRAME;

/// The same outcome and violation types as the other transports' checks.
pub use lockmgr_transport::fuzzing::{Outcome, PropertyViolation};

/// `data` is one received SEND (header plus payload, as long as the completion's `byte_len`).
/// An accepted message must have a payload of exactly `len` bytes within [`MAX_FRAME`], none
/// for credit updates, and re-encode to the same header bytes.
pub fn check_header(data: &[u8]) -> Result<Outcome, PropertyViolation> {
    let Ok(h) = Header::decode(data) else {
        return Ok(Outcome::Rejected);
    };
    let payload = data.len() - HDR_LEN;
    if h.len as usize != payload || payload > MAX_FRAME {
        return Err(PropertyViolation::new(format!(
            "{h:?} accepted with {payload} payload bytes"
        )));
    }
    if h.kind == Kind::Credit && payload != 0 {
        return Err(PropertyViolation::new(format!(
            "{h:?} accepted with payload"
        )));
    }
    let mut again = [0u8; HDR_LEN];
    h.encode(&mut again);
    if again[..] != data[..HDR_LEN] {
        return Err(PropertyViolation::new(format!(
            "{h:?} re-encodes differently"
        )));
    }
    Ok(Outcome::RoundTripped)
}

/// `data` is what arrived on the TCP side channel; the hello is its first [`HELLO_LEN`] bytes
/// (the connection code reads exactly that many). An accepted hello must have every field in
/// range and re-encode to the same bytes.
pub fn check_hello(data: &[u8]) -> Result<Outcome, PropertyViolation> {
    let Some(Ok(bytes)) = data.get(..HELLO_LEN).map(<[u8; HELLO_LEN]>::try_from) else {
        return Ok(Outcome::Rejected);
    };
    let Ok(h) = Hello::decode(&bytes) else {
        return Ok(Outcome::Rejected);
    };
    let in_range = (MIN_SLOTS..=MAX_SLOTS).contains(&h.slots)
        && (1..=0x00ff_ffff).contains(&h.qpn)
        && h.psn <= 0x00ff_ffff
        && (1..=5).contains(&h.mtu)
        && h.slot_size as usize >= HDR_LEN + MAX_FRAME;
    if !in_range {
        return Err(PropertyViolation::new(format!(
            "{h:?} accepted out of range"
        )));
    }
    if h.encode() != bytes {
        return Err(PropertyViolation::new(format!(
            "{h:?} re-encodes differently"
        )));
    }
    Ok(Outcome::RoundTripped)
}

/// Real messages (seed corpus of the `rdma_header` target).
pub fn header_samples() -> Vec<(String, Vec<u8>)> {
    let msg = |kind, grant, payload: &[u8]| {
        let mut hdr = [0u8; HDR_LEN];
        Header {
            kind,
            grant,
            len: payload.len() as u32,
        }
        .encode(&mut hdr);
        let mut v = hdr.to_vec();
        v.extend_from_slice(payload);
        v
    };
    vec![
        ("hdr-data".into(), msg(Kind::Data, 16, b"lockmgr frame")),
        ("hdr-data-empty".into(), msg(Kind::Data, 0, b"")),
        (
            "hdr-data-max".into(),
            msg(Kind::Data, 1, &[0xa5; MAX_FRAME]),
        ),
        ("hdr-credit".into(), msg(Kind::Credit, 31, b"")),
    ]
}

/// Real hellos (seed corpus of the `rdma_hello` target): RoCE and InfiniBand, ring-size limits.
pub fn hello_samples() -> Vec<(String, Vec<u8>)> {
    let roce = Hello {
        qpn: 0x11,
        psn: 0x00ab_cdef,
        lid: 0,
        mtu: 3,
        link_layer: 2,
        gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1],
        slots: 32,
        slot_size: SLOT_SIZE as u32,
    };
    let ib = Hello {
        qpn: 0x00ff_ffff,
        psn: 0,
        lid: 7,
        mtu: 5,
        link_layer: 1,
        gid: [0; 16],
        slots: MAX_SLOTS,
        slot_size: u32::MAX,
    };
    let small = Hello {
        slots: MIN_SLOTS,
        mtu: 1,
        ..roce
    };
    vec![
        ("hello-roce".into(), roce.encode().to_vec()),
        ("hello-ib".into(), ib.encode().to_vec()),
        ("hello-min-ring".into(), small.encode().to_vec()),
    ]
}
