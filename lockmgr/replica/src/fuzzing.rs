//! Properties the fuzz targets check, in the library so `cargo test` replays the corpus on
//! stable (`tests/fuzz_corpus.rs`) and the fuzz targets stay one line each.

use lockmgr_engine::{Config, LockRange, OpenRequest, Request, RequestId, SessionId, Time};

use crate::{Configuration, Epoch, Input, Replica};

/// A configuration record: never panics; an accepted record is canonical (encoding it again
/// gives the same bytes).
pub fn check_config(data: &[u8]) -> Result<bool, String> {
    match Configuration::decode(data) {
        Err(_) => Ok(false),
        Ok(c) => {
            if c.encode().as_bytes() != data {
                return Err(format!("accepted a non-canonical record: {c:?}"));
            }
            Ok(true)
        }
    }
}

/// A standby snapshot: decoding arbitrary bytes never panics; an accepted snapshot gives a
/// standby whose own snapshot decodes to the same state.
pub fn check_snapshot(data: &[u8]) -> Result<bool, String> {
    match Replica::standby_from_snapshot(data, Epoch(1)) {
        Err(_) => Ok(false),
        Ok(r) => {
            let again = r.snapshot().map_err(|e| e.to_string())?;
            let r2 = Replica::standby_from_snapshot(&again, Epoch(1)).map_err(|e| e.to_string())?;
            if r2.snapshot().map_err(|e| e.to_string())? != again {
                return Err("snapshot does not round-trip".into());
            }
            Ok(true)
        }
    }
}

/// Seed inputs: (file name, bytes).
pub fn samples() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, text) in [
        ("cfg-alone", "epoch 1\nprimary lm-a udp:10.0.0.1:7000 0123456789abcdef\n"),
        (
            "cfg-two-standbys",
            "epoch 42\nprimary lm-a shm:/run/lm.sock 0000000000000001\nstandby lm-b udp:10.0.0.2:7000 00000000000000ff\nstandby lm-c afxdp:veth0 ffffffffffffffff\n",
        ),
    ] {
        out.push((name.to_string(), text.as_bytes().to_vec()));
    }
    // A primary with a session, an open and a byte-range lock.
    let mut p = Replica::primary(Config::default(), Epoch(1), false);
    let session = SessionId(7);
    p.submit(
        Time(1),
        Input::OpenSession {
            session,
            node: "node1".into(),
        },
    );
    p.submit(
        Time(2),
        Input::Request {
            session,
            request: RequestId(1),
            req: Request::Open(OpenRequest {
                file: lockmgr_engine::FileId(0xF1),
                access: 0x0012_019F,
                share: 7,
                ..OpenRequest::default()
            }),
        },
    );
    p.submit(
        Time(3),
        Input::Request {
            session,
            request: RequestId(2),
            req: Request::Lock {
                open: lockmgr_engine::OpenId(1),
                ranges: vec![LockRange {
                    offset: 0,
                    length: 10,
                    exclusive: true,
                }],
                fail_immediately: true,
            },
        },
    );
    // And a change-notify registration (snapshot format 6).
    p.submit(
        Time(4),
        Input::Request {
            session,
            request: RequestId(3),
            req: Request::WatchDir {
                dir: lockmgr_engine::FileId(0xD1),
                tree: true,
                path: "share\\d1".into(),
            },
        },
    );
    if let Ok(bytes) = p.snapshot() {
        out.push(("snap-one-lock".to_string(), bytes));
    }
    if let Ok(bytes) = Replica::primary(Config::default(), Epoch(1), false).snapshot() {
        out.push(("snap-empty".to_string(), bytes));
    }
    out
}
