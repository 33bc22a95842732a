//! How fast the protocol core alone moves upper-layer messages: a client and a server
//! [`smbdirect::sim::Pair`] in memory, no RDMA. The numbers bound what the core costs per
//! message and per fragment; run with `cargo run --release -p smbdirect --example
//! pair_throughput`.

use std::time::Instant;

use smbdirect::sim::{Pair, Side};
use smbdirect::Config;

fn run(label: &str, size: usize, count: usize) {
    let mut p = Pair::new(Config::default(), Config::default()).expect("config");
    p.run();
    let msg = vec![0xA5u8; size];
    let start = Instant::now();
    for _ in 0..count {
        p.send(Side::Client, msg.clone()).expect("send");
        p.run();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(p.server.received.len(), count);
    let wire = p.server.conn.stats().messages_received;
    println!(
        "{label:>10}: {count} x {size} B in {secs:.3} s: {:.0} msg/s, {:.1} MB/s, {:.0} ns per wire message ({wire} wire messages)",
        count as f64 / secs,
        (count * size) as f64 / secs / 1e6,
        secs * 1e9 / wire as f64,
    );
}

fn main() {
    run("small", 100, 200_000);
    run("4 KiB", 4096, 50_000);
    run("1 MiB", 1 << 20, 200);
}
