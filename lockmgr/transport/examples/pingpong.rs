//! Quick latency comparison of raw baselines and the transports (same process, two threads).
//!
//! `cargo run --release -p lockmgr-transport --example pingpong -- [rounds] [msg_len]`

use std::time::Duration;

use lockmgr_transport::raw::{shm_pingpong, transport_pingpong, udp_pingpong, EchoServer};
use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::udp::{UdpClient, UdpConfig, UdpServer};
use lockmgr_transport::{SpinConfig, TransportError};

fn report(name: &str, mut s: Vec<u64>) {
    s.sort_unstable();
    let pct = |p: f64| s[((s.len() as f64 - 1.0) * p) as usize];
    println!(
        "{name:>14}: p50 {:>7} ns  p99 {:>7} ns  p99.9 {:>7} ns  (n={})",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        s.len()
    );
}

fn main() -> Result<(), TransportError> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let warmup = rounds / 10;
    let spin = SpinConfig::adaptive(Duration::from_millis(1));

    report("raw shm", shm_pingpong(rounds, warmup, len)?);

    let path = std::env::temp_dir().join(format!("lmt-bench-{}.sock", std::process::id()));
    let cfg = ShmConfig {
        spin,
        ..ShmConfig::default()
    };
    let echo = EchoServer::spawn(ShmServer::bind(&path, cfg)?);
    let mut c = ShmClient::connect(&path, spin, Duration::from_secs(5))?;
    report(
        "shm transport",
        transport_pingpong(&mut c, rounds, warmup, len)?,
    );
    drop(c);
    echo.stop()?;

    report("raw udp", udp_pingpong(rounds, warmup, len)?);

    let cfg = UdpConfig {
        spin,
        // A throw-away secret: the example's server and client are one process.
        fabric_key: Some(lockmgr_transport::FabricKey::new(rand::random())),
        ..UdpConfig::default()
    };
    let server = UdpServer::bind(
        "127.0.0.1:0"
            .parse()
            .map_err(|_| TransportError::Config("addr"))?,
        cfg,
    )?;
    let addr = server.local_addr()?;
    let echo = EchoServer::spawn(server);
    let mut c = UdpClient::connect(addr, cfg)?;
    report(
        "udp transport",
        transport_pingpong(&mut c, rounds, warmup, len)?,
    );
    println!("{:>14}: {:?}", "udp client", c.stats());
    drop(c);
    echo.stop()?;
    Ok(())
}
