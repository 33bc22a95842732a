//! Per-session caps ([`SessionLimits`]): one node cannot grow lockmgrd's tables without bound,
//! hitting a cap answers STATUS_INSUFFICIENT_RESOURCES, releasing frees the quota, and other
//! sessions are unaffected.

mod common;

use common::*;
use lockmgr_engine::*;

fn limited() -> H {
    H::with(Config {
        limits: SessionLimits {
            max_opens: 2,
            max_locks: 3,
            max_waiters: 1,
            max_watches: 2,
        },
        ..Config::default()
    })
}

const FULL: Reply = Reply::Done(Status::InsufficientResources);
const OK: Reply = Reply::Done(Status::Success);

#[test]
fn opens_are_capped_per_session() {
    let mut h = limited();
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    assert_eq!(h.open(S1, file_open(F2, RW, SHARE_ALL)), FULL);
    // Another node has its own quota.
    h.open_ok(S2, file_open(F2, RW, SHARE_ALL));
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    h.open_ok(S1, file_open(F2, RW, SHARE_ALL));
}

#[test]
fn locks_are_capped_per_session_over_all_opens() {
    let mut h = limited();
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    let (b, _) = h.open_ok(S1, file_open(F2, RW, SHARE_ALL));
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    assert_eq!(h.lock(S1, a, 10, 10, true, true), OK);
    assert_eq!(h.lock(S1, b, 0, 10, true, true), OK);
    assert_eq!(h.lock(S1, b, 10, 10, true, true), FULL);
    // Several ranges in one request count as several locks.
    assert_eq!(h.unlock(S1, b, 0, 10), OK);
    let two = Request::Lock {
        open: b,
        ranges: vec![
            LockRange {
                offset: 0,
                length: 1,
                exclusive: true,
            },
            LockRange {
                offset: 5,
                length: 1,
                exclusive: true,
            },
        ],
        fail_immediately: true,
    };
    assert_eq!(h.req(S1, two), FULL);
    // Closing an open releases its locks' quota.
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    assert_eq!(h.lock(S1, b, 0, 10, true, true), OK);
    assert_eq!(h.lock(S1, b, 10, 10, true, true), OK);
    let (c, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    assert_eq!(h.lock(S2, c, 0, 10, true, true), OK);
}

#[test]
fn waiting_requests_are_capped_per_session() {
    let mut h = limited();
    let (held, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    assert_eq!(h.lock(S2, held, 0, 100, true, true), OK);
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    let (first, reply) = h.call(
        S1,
        Request::Lock {
            open: a,
            ranges: vec![LockRange {
                offset: 0,
                length: 10,
                exclusive: true,
            }],
            fail_immediately: false,
        },
    );
    assert_eq!(reply, Reply::Pending);
    assert_eq!(h.lock(S1, a, 20, 10, true, false), FULL);
    // A lock that need not wait is still granted.
    assert_eq!(h.lock(S1, a, 200, 10, true, false), OK);
    // The waiter is granted when the holder unlocks, and the quota frees up.
    assert_eq!(h.unlock(S2, held, 0, 100), OK);
    assert_eq!(h.completed(S1, first), Some(OK));
    assert_eq!(h.lock(S2, held, 20, 10, true, true), OK);
    assert_eq!(h.lock(S1, a, 20, 10, true, false), Reply::Pending);
}
