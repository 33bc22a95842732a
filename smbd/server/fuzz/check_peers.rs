// The witness heartbeat port's check, shared by the `witness_peers` fuzz target and the corpus
// replay in `tests/fuzz_corpus.rs`.

use smbd::witness::peers::{decode, encode, encode_conns, encode_share_move, sign, PeerMessage};

const KEY: &[u8] = b"fuzz cluster key";

/// A datagram as received must be refused (the fuzzer cannot forge the MAC) or parse; signed
/// with the key it reaches the parser, which must refuse it or give back a message that encodes
/// to exactly the bytes it came from. True when the signed body parsed.
pub fn check_peers(data: &[u8]) -> bool {
    let _ = decode(KEY, data);
    let signed = sign(KEY, data.to_vec());
    match decode(KEY, &signed) {
        None => false,
        Some(PeerMessage::Heartbeat(h)) => {
            assert_eq!(encode(KEY, &h.name, h.seq, h.status, h.claims), signed);
            true
        }
        Some(PeerMessage::Conns(p)) => {
            assert!(p.page < p.pages);
            if p.pages == 1 {
                let pages = encode_conns(KEY, &p.name, p.gen, p.claims, &p.conns);
                assert_eq!(pages, vec![signed]);
            }
            true
        }
        Some(PeerMessage::ShareMove(m)) => {
            assert_eq!(
                encode_share_move(KEY, &m.name, m.seq, &m.share, &m.targets),
                signed
            );
            true
        }
    }
}
