// The public address takeover's parser and packet builders, shared by the `public_ip` fuzz
// target and the corpus replay in `tests/fuzz_corpus.rs`.

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};

use smbd::witness::public_ip::{established_to, neighbor_advertisement, tickle_packet_v6};

/// One's-complement sum of `bytes` folded to 16 bits (a correct checksum makes the sum over
/// the covered bytes 0xffff).
fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([
            pair[0],
            pair.get(1).copied().unwrap_or(0),
        ]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IPv6 upper-layer checksum of `packet` (IPv6 header + payload) verifies (RFC 8200 8.1).
fn upper_checksum_ok(packet: &[u8]) -> bool {
    let len = (packet.len() - 40) as u32;
    let mut covered = Vec::new();
    covered.extend_from_slice(&packet[8..40]);
    covered.extend_from_slice(&len.to_be_bytes());
    covered.extend_from_slice(&[0, 0, 0, packet[6]]);
    covered.extend_from_slice(&packet[40..]);
    ones_sum(&covered) == 0xffff
}

/// `data` as /proc/net/tcp(6) text: never a panic, and every connection found is to a held
/// address, both ends of one family. Then, when long enough, two IPv6 addresses, two ports and
/// a MAC from its first 42 bytes: the tickle and the Neighbor Advertisement built from them
/// carry a valid checksum and the addresses given. True when the text gave a connection.
pub fn check_public_ip(data: &[u8]) -> bool {
    let held: [IpAddr; 3] = [
        "10.0.0.100".parse().unwrap(),
        "fd00::100".parse().unwrap(),
        "::".parse().unwrap(),
    ];
    let conns = established_to(&String::from_utf8_lossy(data), &held);
    for c in &conns {
        assert!(held.contains(&c.public.ip()));
        assert_eq!(c.client.is_ipv4(), c.public.is_ipv4());
    }
    if data.len() >= 42 {
        let a = Ipv6Addr::from(<[u8; 16]>::try_from(&data[0..16]).unwrap());
        let b = Ipv6Addr::from(<[u8; 16]>::try_from(&data[16..32]).unwrap());
        let from = SocketAddrV6::new(a, u16::from_be_bytes([data[32], data[33]]), 0, 0);
        let to = SocketAddrV6::new(b, u16::from_be_bytes([data[34], data[35]]), 0, 0);
        let t = tickle_packet_v6(from, to);
        assert!(upper_checksum_ok(&t));
        assert_eq!((&t[8..24], &t[24..40]), (&a.octets()[..], &b.octets()[..]));
        let mac: [u8; 6] = data[36..42].try_into().unwrap();
        let na = neighbor_advertisement(mac, a);
        assert!(upper_checksum_ok(&na));
        assert_eq!(&na[66..72], &mac);
    }
    !conns.is_empty()
}
