//! Deterministic, single-threaded cost of the lock manager's hot path, for before/after
//! comparisons on a noisy machine:
//!
//! ```text
//! cargo build --release -p lockbench --example hotloop
//! valgrind --tool=callgrind target/release/examples/hotloop --ops 200000
//! target/release/examples/hotloop --ops 2000000 --held 1000000
//! ```
//!
//! One `LockClient` and one `lockmgrd` `Server` talk over the real shared-memory transport, but
//! in one thread: the client submits a batch, the server takes one `turn`, the client polls.
//! Nothing waits on another CPU, so the wall time is pure instruction cost (client encode,
//! ring copy, server decode, engine, reply encode, client decode) and an instruction count
//! under callgrind is reproducible to the instruction. Divide the difference between two
//! `--ops` values by the difference in operations to get instructions per operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbench::lockload;
use lockmgr_client::{ClientOptions, Event, LockClient};
use lockmgr_engine::{LockRange, OpenId};
use lockmgr_proto::ClusterKey;
use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::{ClientTransport, SpinConfig};
use lockmgrd::{Server, ServerOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &[u8] = b"hotloop-cluster-key-0123456789ab";

struct Args {
    ops: u64,
    batch: usize,
    held: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ops: 200_000,
        batch: 1,
        held: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--ops" => args.ops = n,
            "--batch" => args.batch = usize::try_from(n.max(1)).map_err(|e| e.to_string())?,
            "--held" => args.held = n,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// A lock or an unlock of one range.
#[derive(Clone, Copy)]
enum Op {
    Lock(OpenId, LockRange),
    Unlock(OpenId, LockRange),
}

/// Submits everything, lets the server take turns until all replies are back.
fn round<T: ClientTransport>(
    c: &mut LockClient<T>,
    server: &mut Server<ShmServer>,
    requests: impl Iterator<Item = Op>,
) -> Result<usize, String> {
    let mut n = 0;
    for r in requests {
        // As lockbench sends them: encoded straight into the frame, no `Request` built.
        match r {
            Op::Lock(open, range) => c.submit_lock(open, &[range], true),
            Op::Unlock(open, range) => c.submit_unlock(open, &[range]),
        }
        .map_err(|e| e.to_string())?;
        n += 1;
    }
    c.flush().map_err(|e| e.to_string())?;
    let mut got = 0;
    let mut turns = 0;
    while got < n {
        server.turn().map_err(|e| e.to_string())?;
        c.poll(&mut |ev| {
            if matches!(ev, Event::Reply { .. }) {
                got += 1;
            }
        })
        .map_err(|e| e.to_string())?;
        turns += 1;
        if turns > 1_000_000 {
            return Err("no progress".into());
        }
    }
    Ok(n)
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let dir = std::env::temp_dir().join(format!("hotloop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("s.sock");
    let spin = SpinConfig::never();
    let transport = ShmServer::bind(
        &path,
        ShmConfig {
            spin,
            ..ShmConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let key = ClusterKey::new(KEY).map_err(|e| e.to_string())?;
    let mut server = Server::new(
        transport,
        ServerOptions {
            key: key.clone(),
            liveness: Duration::from_secs(3600),
            engine: Default::default(),
        },
    );
    // The handshake blocks in the client, so it runs in a helper thread while this thread turns
    // the server; everything after it is single-threaded.
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let p = path.clone();
    let handle = std::thread::spawn(move || {
        let r = ShmClient::connect(&p, spin, Duration::from_secs(10))
            .map_err(|e| e.to_string())
            .and_then(|t| {
                LockClient::connect(
                    t,
                    &ClientOptions {
                        node_name: "hotloop".into(),
                        key,
                        handshake_timeout: Duration::from_secs(10),
                    },
                )
                .map_err(|e| e.to_string())
            });
        done2.store(true, Ordering::Release);
        r
    });
    while !done.load(Ordering::Acquire) {
        server.turn().map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_micros(50));
    }
    let mut c = handle.join().map_err(|_| "connect thread panicked")??;
    // Open the file with a server turn per step (LockClient::call would block).
    let file = lockload::private_file(0);
    let id = c
        .submit(lockload::open_request(file))
        .map_err(|e| e.to_string())?;
    c.flush().map_err(|e| e.to_string())?;
    let mut open = None;
    while open.is_none() {
        server.turn().map_err(|e| e.to_string())?;
        c.poll(&mut |ev| {
            if let Event::Reply {
                request,
                reply: lockmgr_engine::Reply::Opened { open: o, .. },
            } = ev
            {
                if request == id {
                    open = Some(o);
                }
            }
        })
        .map_err(|e| e.to_string())?;
    }
    let open = open.ok_or("no open")?;
    let mut held = 0;
    while held < args.held {
        let n = (args.held - held).min(256);
        round(
            &mut c,
            &mut server,
            (held..held + n).map(|i| {
                Op::Lock(
                    open,
                    LockRange {
                        offset: (1u64 << 40) + i * 16,
                        length: 8,
                        exclusive: true,
                    },
                )
            }),
        )?;
        held += n;
    }
    let t0 = Instant::now();
    let mut ops = 0u64;
    let mut slot = 0u64;
    while ops < args.ops {
        let ranges: Vec<LockRange> = (0..args.batch as u64)
            .map(|i| LockRange {
                offset: ((slot + i) % 4096) * 64,
                length: 64,
                exclusive: true,
            })
            .collect();
        slot += args.batch as u64;
        ops += round(
            &mut c,
            &mut server,
            ranges.iter().map(|r| Op::Lock(open, *r)),
        )? as u64;
        ops += round(
            &mut c,
            &mut server,
            ranges.iter().map(|r| Op::Unlock(open, *r)),
        )? as u64;
    }
    let dt = t0.elapsed();
    println!(
        "ops={ops} batch={} held={} {:.1} ns/op (single thread: client + server + engine)",
        args.batch,
        args.held,
        dt.as_nanos() as f64 / ops.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
