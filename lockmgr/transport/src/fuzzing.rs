//! Properties the cargo-fuzz targets (`fuzz/`) check, shared with the corpus regression test
//! (`tests/fuzz_corpus.rs`) so `cargo test` (stable, no libFuzzer) replays every saved input
//! through exactly the same code. Not part of the stable API.
//!
//! Every check returns `Err` only for a violated property (a codec bug), never merely because
//! the input is invalid: malformed input must be rejected, not crash or be misread.

use crate::eth::{Framing, MacAddr, DEFAULT_ETHERTYPE, ETH_HDR_LEN, FRAG_HDR, MIN_MTU};
use crate::fabric::TAG_LEN;
use crate::reliable::{self, Header, Hello, Kind, DGRAM_MAX, HDR_LEN};

/// What a check concluded about one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The decoder refused the input (fine: it is not a valid encoding).
    Rejected,
    /// The input decoded, and re-encoding reproduced it.
    RoundTripped,
}

/// A violated codec property; the message names the input's offending part.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PropertyViolation(String);

/// The checked-in corpus of fuzz target `target` below `crate_dir` (`fuzz/corpus/<target>/`),
/// as (file name, contents) sorted by name: what `cargo test` replays through the checks.
pub fn read_corpus(
    crate_dir: &std::path::Path,
    target: &str,
) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let dir = crate_dir.join("fuzz/corpus").join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let p = entry?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, std::fs::read(&p)?));
    }
    out.sort();
    Ok(out)
}

impl PropertyViolation {
    /// A violation described by `msg` (also used by other transports' fuzz checks).
    pub fn new(msg: impl Into<String>) -> Self {
        PropertyViolation(msg.into())
    }
}

fn violation(msg: impl Into<String>) -> PropertyViolation {
    PropertyViolation::new(msg)
}

/// Key of the fixed test connection whose datagrams the seeds carry (both directions), so the
/// fuzzer reaches the MAC check with inputs that pass it.
const FUZZ_KEY: [u8; 16] = *b"lockmgr-fuzz-key";

fn fuzz_seal() -> reliable::Seal {
    reliable::Seal::new(reliable::FLAG_FRAME_MAC, &FUZZ_KEY, &FUZZ_KEY)
}

/// The reliability-layer datagram parse (shared by UDP, AF_PACKET and AF_XDP) and the frame
/// MAC. Properties: an accepted datagram re-encodes to the same bytes (header and hello
/// encodings are canonical), bodies have the size their kind allows, and a sealed datagram
/// that passes the MAC check under the test key is exactly what sealing its header and payload
/// under that key produces (nothing else authenticates: no forgery, no malleability).
pub fn check_reliable_datagram(data: &[u8]) -> Result<Outcome, PropertyViolation> {
    let Some((h, body)) = reliable::parse(data) else {
        return Ok(Outcome::Rejected);
    };
    let mut again = encode_header(h.kind, h.conn_id, h.pn, h.seq, h.ack).to_vec();
    match h.kind {
        Kind::Syn | Kind::SynAck | Kind::Confirm => {
            let Some(hello) = Hello::parse(body) else {
                return Ok(Outcome::Rejected);
            };
            again.extend_from_slice(&hello.encode());
        }
        Kind::Rst if !body.is_empty() => {
            return Err(violation("RST accepted with a body"));
        }
        Kind::Ack | Kind::Ping | Kind::Fin if !body.is_empty() && body.len() != TAG_LEN => {
            return Err(violation(format!(
                "{:?} accepted with {} body bytes",
                h.kind,
                body.len()
            )));
        }
        _ => again.extend_from_slice(body),
    }
    if again != data {
        return Err(violation(format!("{h:?} re-encodes differently")));
    }
    if h.kind.is_sealed() {
        if let Some(payload) = fuzz_seal().open(&h, data, true) {
            let mut resealed = encode_header(h.kind, h.conn_id, 0, h.seq, h.ack).to_vec();
            resealed.extend_from_slice(payload);
            let mut seal = fuzz_seal();
            seal.set_tx_pn(h.pn);
            seal.seal(&mut resealed);
            if resealed != data {
                return Err(violation(format!(
                    "{h:?} authenticated but is not what was sealed"
                )));
            }
        }
    }
    Ok(Outcome::RoundTripped)
}

fn encode_header(kind: Kind, conn_id: u64, pn: u64, seq: u64, ack: u64) -> [u8; HDR_LEN] {
    reliable::encode_header(&Header {
        kind,
        conn_id,
        pn,
        seq,
        ack,
    })
}

fn sealed(kind: Kind, conn_id: u64, pn: u64, seq: u64, ack: u64, payload: &[u8]) -> Vec<u8> {
    let mut d = encode_header(kind, conn_id, 0, seq, ack).to_vec();
    d.extend_from_slice(payload);
    let mut seal = fuzz_seal();
    seal.set_tx_pn(pn);
    seal.seal(&mut d);
    d
}

/// Real datagrams of every kind (seed corpus of the `reliable_datagram` target): the three
/// handshake hellos, sealed datagrams of the test connection, an unsealed ACK (frame MACs off),
/// an RST, and the largest and smallest DATA.
pub fn reliable_samples() -> Vec<(String, Vec<u8>)> {
    let id = 0x1234_5678_9abc_def1;
    let hello = |kind: Kind, time: u64, sn: u8, proof: u8| {
        let mut d = encode_header(kind, id, 0, 0, 0).to_vec();
        d.extend_from_slice(
            &Hello {
                flags: reliable::FLAG_FRAME_MAC,
                time,
                client_nonce: [0x11; 32],
                server_nonce: [sn; 32],
                proof: [proof; 32],
            }
            .encode(),
        );
        d
    };
    let mut out = vec![
        ("dgram-syn".to_string(), hello(Kind::Syn, 0, 0, 0)),
        ("dgram-synack".into(), hello(Kind::SynAck, 77, 0x22, 0x33)),
        ("dgram-confirm".into(), hello(Kind::Confirm, 77, 0x22, 0x44)),
        (
            "dgram-data".into(),
            sealed(Kind::Data, id, 9, 7, 3, b"lockmgr frame bytes"),
        ),
        ("dgram-ack".into(), sealed(Kind::Ack, id, 10, 0, 3, &[])),
        ("dgram-ping".into(), sealed(Kind::Ping, id, 11, 0, 3, &[])),
        ("dgram-fin".into(), sealed(Kind::Fin, id, 12, 0, 3, &[])),
        (
            "dgram-ack-nomac".into(),
            encode_header(Kind::Ack, id, 13, 0, 3).to_vec(),
        ),
        (
            "dgram-rst".into(),
            encode_header(Kind::Rst, id, 0, 0, 0).to_vec(),
        ),
    ];
    let big = vec![0x5a; crate::MAX_FRAME];
    out.push((
        "dgram-data-max".into(),
        sealed(Kind::Data, u64::MAX, u64::MAX - 1, u64::MAX, 0, &big),
    ));
    out.push((
        "dgram-data-empty".into(),
        sealed(Kind::Data, 1, 1, 0, 0, &[]),
    ));
    out
}

/// The MAC the reassembly check receives on.
const ME: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
/// Sender of the seed frames.
const PEER: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

/// Ethernet fragment header parse + reassembly. `data` is a sequence of received Ethernet
/// frames, each prefixed by its length (u16 little endian; a short tail is one last frame), all
/// fed to one receiver. Properties: a completed datagram lies inside the buffer, is at most
/// [`DGRAM_MAX`] bytes, and survives a fragment/reassemble round trip through a fresh pair of
/// framings at the smallest MTU. Returns how many datagrams completed.
pub fn check_eth_frames(data: &[u8]) -> Result<usize, PropertyViolation> {
    let mut rx = Framing::new(ME, DEFAULT_ETHERTYPE, MIN_MTU);
    let mut buf = vec![0u8; DGRAM_MAX + ETH_HDR_LEN + FRAG_HDR];
    let mut rest = data;
    let mut completed = 0;
    while !rest.is_empty() {
        let frame = match rest {
            [a, b, tail @ ..] => {
                let n = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
                let (frame, next) = tail.split_at(n);
                rest = next;
                frame
            }
            _ => std::mem::take(&mut rest),
        };
        // `receive` needs DGRAM_MAX bytes of room; a longer frame cannot come off the wire
        // (the link's receive buffer is that size), so it is cut like the NIC would drop it.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        // Stale bytes after the frame must not matter: poison them.
        buf[n..].fill(0xee);
        let Some((start, len, src)) = rx.receive(&mut buf, n) else {
            continue;
        };
        let end = start
            .checked_add(len)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| violation(format!("datagram {start}+{len} outside the buffer")))?;
        if len > DGRAM_MAX {
            return Err(violation(format!("datagram of {len} bytes")));
        }
        completed += 1;
        let dgram = buf[start..end].to_vec();
        let again = eth_round_trip(&dgram, src)?;
        if again != dgram {
            return Err(violation(format!(
                "{len}-byte datagram changed in a fragment round trip"
            )));
        }
    }
    Ok(completed)
}

/// Fragments `dgram` (sent by `src` to [`ME`]) at the smallest MTU and reassembles it.
fn eth_round_trip(dgram: &[u8], src: MacAddr) -> Result<Vec<u8>, PropertyViolation> {
    let frames = eth_frames(src, dgram, MIN_MTU);
    let mut rx = Framing::new(ME, DEFAULT_ETHERTYPE, MIN_MTU);
    let mut buf = vec![0u8; DGRAM_MAX + ETH_HDR_LEN + FRAG_HDR];
    let mut got = None;
    for (i, f) in frames.iter().enumerate() {
        buf[..f.len()].copy_from_slice(f);
        if let Some((s, l, from)) = rx.receive(&mut buf, f.len()) {
            if i + 1 != frames.len() || from != src {
                return Err(violation(format!(
                    "completed at fragment {i} of {} from {from}",
                    frames.len()
                )));
            }
            got = Some(buf[s..s + l].to_vec());
        }
    }
    got.ok_or_else(|| violation(format!("{}-byte datagram never completed", dgram.len())))
}

/// The Ethernet frames `src` sends to [`ME`] for one datagram.
fn eth_frames(src: MacAddr, dgram: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let mut tx = Framing::new(src, DEFAULT_ETHERTYPE, mtu);
    let plan = tx.plan(dgram.len());
    (0..plan.count())
        .map(|i| {
            let mut out = vec![0u8; tx.max_frame_len()];
            let n = tx.write(&mut out, ME, &plan, i, dgram);
            out.truncate(n);
            out
        })
        .collect()
}

/// Length-prefixes frames the way [`check_eth_frames`] splits its input.
pub fn eth_input(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let n = u16::try_from(f.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&f[..usize::from(n)]);
    }
    out
}

/// Real fragment sequences (seed corpus of the `eth_frames` target): single-frame datagrams,
/// a full-size datagram fragmented at the smallest MTU in and out of order, with a duplicate,
/// and a lost fragment followed by the next datagram.
pub fn eth_samples() -> Vec<(String, Vec<u8>)> {
    let small = reliable_samples();
    let big: Vec<u8> = (0..DGRAM_MAX).map(|i| (i * 7 % 251) as u8).collect();
    let mut out = Vec::new();
    // Handshake, and a sealed data frame.
    for (name, d) in small.iter().take(4).skip(1) {
        out.push((format!("eth-{name}"), eth_input(&eth_frames(PEER, d, 1500))));
    }
    let frags = eth_frames(PEER, &big, MIN_MTU);
    out.push(("eth-max-in-order".into(), eth_input(&frags)));
    let mut shuffled: Vec<Vec<u8>> = frags.iter().rev().cloned().collect();
    shuffled.insert(2, frags[4].clone());
    out.push(("eth-max-reversed-dup".into(), eth_input(&shuffled)));
    let mut lost: Vec<Vec<u8>> = frags[1..4].to_vec();
    lost.extend(eth_frames(PEER, &big[..3000], 1500));
    out.push(("eth-lost-then-next".into(), eth_input(&lost)));
    let mut padded = eth_frames(PEER, b"short", 1500);
    if let Some(f) = padded.first_mut() {
        f.extend_from_slice(&[0; 40]);
    }
    out.push(("eth-padded".into(), eth_input(&padded)));
    out
}

/// The shm set-up hello a client receives with the ring fds: an accepted hello must announce a
/// valid ring size and re-encode byte for byte (so its region length is the one the server
/// computes for that ring).
pub fn check_shm_hello(data: &[u8]) -> Result<Outcome, PropertyViolation> {
    let Ok(ring) = crate::shm::decode_hello(data) else {
        return Ok(Outcome::Rejected);
    };
    if crate::shm::encode_hello(ring)[..] != *data {
        return Err(violation(format!(
            "hello for a {ring}-byte ring re-encodes differently"
        )));
    }
    Ok(Outcome::RoundTripped)
}

/// Real hellos (seed corpus of the `shm_hello` target): the default ring and both size limits.
pub fn shm_hello_samples() -> Vec<(String, Vec<u8>)> {
    [
        ("default", 256 * 1024),
        ("min", 32 * 1024),
        ("max", 1 << 30),
    ]
    .into_iter()
    .map(|(name, ring)| {
        (
            format!("hello-{name}"),
            crate::shm::encode_hello(ring).to_vec(),
        )
    })
    .collect()
}
