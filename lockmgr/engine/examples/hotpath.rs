//! Rough hot-path timing: `cargo run --release -p lockmgr-engine --example hotpath`.
//! Holds 10^6 locks on one file, then on many files, and times uncontended lock/unlock.

use std::time::Instant;

use lockmgr_engine::*;

fn open(e: &mut Engine, s: SessionId, file: FileId, req: u64) -> OpenId {
    let o = OpenRequest {
        file,
        access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
        share: share::READ | share::WRITE,
        ..Default::default()
    };
    e.handle(Time(0), s, RequestId(req), Request::Open(o));
    match e.poll_output() {
        Some(Output::Reply {
            reply: Reply::Opened { open, .. },
            ..
        }) => open,
        other => panic!("{other:?}"),
    }
}

fn lock(e: &mut Engine, s: SessionId, open: OpenId, offset: u64, unlock: bool) {
    let ranges = vec![LockRange {
        offset,
        length: 10,
        exclusive: true,
    }];
    let req = if unlock {
        Request::Unlock { open, ranges }
    } else {
        Request::Lock {
            open,
            ranges,
            fail_immediately: true,
        }
    };
    e.handle(Time(0), s, RequestId(1), req);
    match e.poll_output() {
        Some(Output::Reply {
            reply: Reply::Done(Status::Success),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

fn main() {
    const N: u64 = 1_000_000;
    let s = SessionId(1);

    let mut e = Engine::new(Config::default());
    e.open_session(s);
    let o = open(&mut e, s, FileId(1), 1);
    let t = Instant::now();
    for i in 0..N {
        lock(&mut e, s, o, i * 100, false);
    }
    println!(
        "one file: {:?}/lock while filling to 10^6",
        t.elapsed() / N as u32
    );
    let t = Instant::now();
    for i in 0..N {
        lock(&mut e, s, o, i * 100 + 50, false);
        lock(&mut e, s, o, i * 100 + 50, true);
    }
    println!(
        "one file, 10^6 held: {:?}/(lock+unlock)",
        t.elapsed() / N as u32
    );
    let t = Instant::now();
    e.handle(Time(0), s, RequestId(2), Request::Close { open: o });
    println!("close with 10^6 locks: {:?}", t.elapsed());

    let mut e = Engine::new(Config::default());
    e.open_session(s);
    let opens: Vec<OpenId> = (0..N)
        .map(|i| open(&mut e, s, FileId(i as u128 + 1), i + 10))
        .collect();
    let t = Instant::now();
    for (i, o) in opens.iter().enumerate() {
        lock(&mut e, s, *o, i as u64, false);
    }
    println!("10^6 files: {:?}/lock", t.elapsed() / N as u32);
    let t = Instant::now();
    for (i, o) in opens.iter().enumerate() {
        lock(&mut e, s, *o, i as u64 + 1000, false);
        lock(&mut e, s, *o, i as u64 + 1000, true);
    }
    println!("10^6 files: {:?}/(lock+unlock)", t.elapsed() / N as u32);
}
