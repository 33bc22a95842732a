//! Shared-memory transport overhead against the raw baseline, same run, several interleaved
//! repetitions (the machines are noisy: compare only numbers printed by one run).
//!
//! `cargo run --release -p lockmgr-transport --example shmecho -- [rounds] [msg_len] [reps]`
//!
//! * `raw`: [`shm_pingpong`], one cache line each way for small messages.
//! * `busy`: the transport with a minimal busy-polling echo thread (poll, copy, send; never
//!   `wait`) and a busy-polling client: the transport's own cost, nothing else.
//! * `echo`: [`EchoServer`] + [`transport_pingpong`], what lockbench reports as "transport echo"
//!   (adds the echo loop's queueing and the `wait` spin loops).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockmgr_transport::raw::{shm_pingpong, transport_pingpong, EchoServer};
use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::{
    ClientTransport, ServerEvent, ServerTransport, SpinConfig, TransportError, MAX_FRAME,
};

fn p50(mut s: Vec<u64>) -> u64 {
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0)
}

fn sock(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("lmt-shmecho-{name}-{}.sock", std::process::id()))
}

fn cfg() -> ShmConfig {
    ShmConfig {
        spin: SpinConfig::adaptive(Duration::from_millis(1)),
        ..ShmConfig::default()
    }
}

/// Echo thread that only polls and sends.
fn busy(rounds: usize, warmup: usize, len: usize) -> Result<Vec<u64>, TransportError> {
    let path = sock("busy");
    let mut server = ShmServer::bind(&path, cfg())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || -> Result<(), TransportError> {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut pending = None;
        while !stop2.load(Ordering::Relaxed) {
            server.poll(&mut |ev| {
                if let ServerEvent::Frame(p, b) = ev {
                    buf[..b.len()].copy_from_slice(b);
                    pending = Some((p, b.len()));
                }
            })?;
            if let Some((p, n)) = pending.take() {
                server.send(p, &buf[..n])?;
            }
        }
        Ok(())
    });
    let mut client = ShmClient::connect(&path, cfg().spin, Duration::from_secs(5))?;
    let msg = vec![0x5au8; len];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..warmup + rounds {
        let t0 = Instant::now();
        client.send(&msg)?;
        let mut got = 0;
        while got == 0 {
            got = client.poll(&mut |_| {})?;
        }
        let dt = t0.elapsed().as_nanos() as u64;
        if i >= warmup {
            samples.push(dt);
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(client);
    echo.join()
        .map_err(|_| TransportError::Protocol("echo thread panicked"))??;
    Ok(samples)
}

fn echo(rounds: usize, warmup: usize, len: usize) -> Result<Vec<u64>, TransportError> {
    let path = sock("echo");
    let server = EchoServer::spawn(ShmServer::bind(&path, cfg())?);
    let mut c = ShmClient::connect(&path, cfg().spin, Duration::from_secs(5))?;
    let s = transport_pingpong(&mut c, rounds, warmup, len)?;
    drop(c);
    server.stop()?;
    Ok(s)
}

fn main() -> Result<(), TransportError> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let len: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let warmup = rounds / 10;
    println!("p50 round trip in ns, {rounds} rounds of {len} bytes per repetition");
    for _ in 0..reps {
        let raw = p50(shm_pingpong(rounds, warmup, len)?);
        let b = p50(busy(rounds, warmup, len)?);
        let e = p50(echo(rounds, warmup, len)?);
        println!("raw {raw:>5}  busy {b:>5}  echo {e:>5}");
    }
    Ok(())
}
