//! Rough hot-path timing: encode + decode of a one-range lock request, one message per frame.
//!
//! `cargo run --release -p lockmgr-proto --example codec_bench`
//! (a measurement tool, not a test: machine load changes the numbers).

use std::hint::black_box;
use std::time::Instant;

use lockmgr_engine::SessionId;
use lockmgr_proto::{decode_frame, samples, FrameWriter, Message};

fn main() {
    let lock = samples::lock_request();
    let reply = Message::Reply {
        request_id: lockmgr_engine::RequestId(42),
        body: lockmgr_engine::Reply::Done(lockmgr_engine::Status::Success),
    };
    let only = std::env::args().nth(2);
    for (name, msg) in [("lock request", &lock), ("done reply", &reply)] {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        let mut buf = Vec::with_capacity(lockmgr_proto::MAX_FRAME);
        let iters: u32 = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(5_000_000);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..iters {
                buf.clear();
                let mut w = FrameWriter::new(&mut buf, SessionId(1));
                if w.push(black_box(msg)).is_err() {
                    return;
                }
                let n = w.finish();
                let mut f = match decode_frame(black_box(&buf[..n])) {
                    Ok(f) => f,
                    Err(e) => panic!("{e}"),
                };
                black_box(f.next());
            }
            best = best.min(start.elapsed().as_nanos() as f64 / f64::from(iters));
        }
        println!("{name}: encode+decode {best:.1} ns/op (best of 5)");
    }
}
