//! `handle_lock` / `handle_unlock` (ranges borrowed) must behave exactly like `handle` with
//! `Request::Lock` / `Request::Unlock`: same outputs, same state, for any sequence.

use lockmgr_engine::*;
use proptest::collection::vec;
use proptest::prelude::*;

const SESSIONS: [SessionId; 2] = [SessionId(1), SessionId(2)];

#[derive(Clone, Debug)]
enum Op {
    Lock {
        session: usize,
        open: usize,
        ranges: Vec<LockRange>,
        fail_immediately: bool,
    },
    Unlock {
        session: usize,
        open: usize,
        ranges: Vec<LockRange>,
    },
    Close {
        open: usize,
    },
    Cancel {
        session: usize,
        back: u64,
    },
}

fn range() -> impl Strategy<Value = LockRange> {
    // Few distinct offsets and lengths so conflicts, exact matches and waiters are common;
    // u64::MAX lengths exercise InvalidLockRange.
    (
        0u64..6,
        prop_oneof![Just(0u64), Just(1), Just(4), Just(u64::MAX)],
        any::<bool>(),
    )
        .prop_map(|(o, length, exclusive)| LockRange {
            offset: o * 2,
            length,
            exclusive,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..2, 0usize..4, vec(range(), 0..3), any::<bool>()).prop_map(
            |(session, open, ranges, fail_immediately)| Op::Lock {
                session,
                open,
                ranges,
                fail_immediately,
            }
        ),
        3 => (0usize..2, 0usize..4, vec(range(), 0..3))
            .prop_map(|(session, open, ranges)| Op::Unlock { session, open, ranges }),
        1 => (0usize..4).prop_map(|open| Op::Close { open }),
        1 => (0usize..2, 1u64..4).prop_map(|(session, back)| Op::Cancel { session, back }),
    ]
}

fn opened(e: &mut Engine, session: SessionId, id: u64) -> OpenId {
    e.handle(
        Time(0),
        session,
        RequestId(id),
        Request::Open(OpenRequest {
            file: FileId(7),
            access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
            share: share::READ | share::WRITE,
            ..OpenRequest::default()
        }),
    );
    match e.poll_output() {
        Some(Output::Reply {
            reply: Reply::Opened { open, .. },
            ..
        }) => open,
        other => panic!("{other:?}"),
    }
}

fn drain(e: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

proptest! {
    #[test]
    fn borrowed_entry_points_match_handle(ops in vec(op(), 1..40)) {
        let mut a = Engine::new(Config::default());
        let mut b = Engine::new(Config::default());
        let mut opens = Vec::new();
        for e in [&mut a, &mut b] {
            opens.clear();
            for s in SESSIONS {
                e.open_session(s);
            }
            // Opens 0, 1 of session 1 and 2, 3 of session 2 (ids equal in both engines).
            for i in 0..4u64 {
                opens.push(opened(e, SESSIONS[(i / 2) as usize], 1000 + i));
            }
        }
        for (i, op) in ops.into_iter().enumerate() {
            let t = Time(i as u64);
            let id = RequestId(i as u64 + 1);
            match op {
                Op::Lock { session, open, ranges, fail_immediately } => {
                    let s = SESSIONS[session];
                    b.handle_lock(t, s, id, opens[open], &ranges, fail_immediately);
                    a.handle(t, s, id, Request::Lock { open: opens[open], ranges, fail_immediately });
                }
                Op::Unlock { session, open, ranges } => {
                    let s = SESSIONS[session];
                    b.handle_unlock(t, s, id, opens[open], &ranges);
                    a.handle(t, s, id, Request::Unlock { open: opens[open], ranges });
                }
                Op::Close { open } => {
                    let s = SESSIONS[open / 2];
                    for e in [&mut a, &mut b] {
                        e.handle(t, s, id, Request::Close { open: opens[open] });
                    }
                }
                Op::Cancel { session, back } => {
                    let target = RequestId((i as u64 + 1).saturating_sub(back));
                    for e in [&mut a, &mut b] {
                        e.handle(t, SESSIONS[session], id, Request::Cancel { request: target });
                    }
                }
            }
            prop_assert_eq!(drain(&mut a), drain(&mut b));
        }
        prop_assert_eq!(a.snapshot(), b.snapshot());
    }
}

/// Lock/unlock of one range on an otherwise idle file, many times: the table must stay
/// correct when its only length class empties and refills (the class is kept for reuse).
#[test]
fn lock_unlock_cycles_on_idle_file() {
    let mut e = Engine::new(Config::default());
    let s = SESSIONS[0];
    e.open_session(s);
    let o = opened(&mut e, s, 1);
    let other = opened(&mut e, s, 2);
    let r = |offset, length| LockRange {
        offset,
        length,
        exclusive: true,
    };
    for i in 0..100u64 {
        let len = if i % 3 == 0 { 1 } else { 64 };
        e.handle_lock(Time(i), s, RequestId(10), o, &[r(i, len)], true);
        // Another open conflicts while the lock is held...
        e.handle_lock(Time(i), s, RequestId(11), other, &[r(i, 1)], true);
        e.handle_unlock(Time(i), s, RequestId(12), o, &[r(i, len)]);
        // ...and not after the unlock.
        e.handle_lock(Time(i), s, RequestId(13), other, &[r(i, 1)], true);
        e.handle_unlock(Time(i), s, RequestId(14), other, &[r(i, 1)]);
        let statuses: Vec<Reply> = drain(&mut e)
            .into_iter()
            .map(|o| match o {
                Output::Reply { reply, .. } => reply,
                other => panic!("{other:?}"),
            })
            .collect();
        let ok = Reply::Done(Status::Success);
        assert_eq!(
            statuses,
            vec![
                ok.clone(),
                Reply::Done(Status::LockNotGranted),
                ok.clone(),
                ok.clone(),
                ok
            ],
            "cycle {i}"
        );
        assert_eq!(e.stats().locks_held, 0);
    }
}
