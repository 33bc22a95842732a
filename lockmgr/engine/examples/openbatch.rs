//! Rough timing of batched opens and closes of one file (not a test).
use lockmgr_engine::*;
use std::time::Instant;

fn main() {
    let mut e = Engine::new(Config::default());
    let s = SessionId(1);
    e.open_session(s);
    let mut rid = 0u64;
    for batch in [1usize, 8, 64, 256] {
        let rounds = 20_000 / batch;
        let t = Instant::now();
        for _ in 0..rounds {
            let mut opens = Vec::with_capacity(batch);
            for _ in 0..batch {
                rid += 1;
                e.handle(
                    Time(0),
                    s,
                    RequestId(rid),
                    Request::Open(OpenRequest {
                        file: FileId(5),
                        access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
                        share: share::READ | share::WRITE | share::DELETE,
                        ..OpenRequest::default()
                    }),
                );
                while let Some(o) = e.poll_output() {
                    if let Output::Reply {
                        reply: Reply::Opened { open, .. },
                        ..
                    } = o
                    {
                        opens.push(open);
                    }
                }
            }
            for open in opens {
                rid += 1;
                e.handle(Time(0), s, RequestId(rid), Request::Close { open });
                while e.poll_output().is_some() {}
            }
        }
        let per = t.elapsed() / (rounds * batch * 2) as u32;
        println!("batch {batch}: {per:?} per open or close");
    }
}
