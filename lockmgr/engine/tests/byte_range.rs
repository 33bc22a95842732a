//! Byte-range locks: MS-FSA 2.1.4.10, 2.1.5.8, 2.1.5.9; MS-SMB2 3.3.5.14.

mod common;

use common::*;
use lockmgr_engine::*;

fn two_opens(h: &mut H) -> (OpenId, OpenId) {
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    let (b, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    (a, b)
}

const OK: Reply = Reply::Done(Status::Success);
const NOT_GRANTED: Reply = Reply::Done(Status::LockNotGranted);

/// MS-FSA 2.1.4.10: overlapping exclusive locks are not allowed even for the same open.
#[test]
fn exclusive_lock_conflicts_even_with_same_open() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    assert_eq!(h.lock(S1, a, 5, 10, true, true), NOT_GRANTED);
    assert_eq!(h.lock(S2, b, 9, 1, false, true), NOT_GRANTED);
    assert_eq!(h.lock(S2, b, 10, 1, true, true), OK);
}

/// MS-FSA 2.1.4.10: a shared request conflicts only with another open's exclusive lock;
/// shared locks stack, and an open may take a shared lock inside its own exclusive one.
#[test]
fn shared_locks_stack_and_fit_inside_own_exclusive() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, false, true), OK);
    assert_eq!(h.lock(S2, b, 5, 10, false, true), OK);
    assert_eq!(h.lock(S2, b, 5, 10, false, true), OK);
    // Shared locks block exclusive requests, the owner's included.
    assert_eq!(h.lock(S1, a, 0, 1, true, true), NOT_GRANTED);
    assert_eq!(h.lock(S1, a, 100, 10, true, true), OK);
    assert_eq!(h.lock(S1, a, 100, 10, false, true), OK);
    assert_eq!(h.lock(S2, b, 105, 1, false, true), NOT_GRANTED);
}

/// MS-FSA 2.1.4.10: the {0,0} range conflicts with nothing; a zero-length range at X > 0
/// covers "[X, X-1]", so it conflicts only with a lock strictly containing the point
/// (starting before X and reaching X); two zero-length ranges never conflict.
#[test]
fn zero_length_ranges() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 0, true, true), OK);
    assert_eq!(h.lock(S2, b, 0, 0, true, true), OK);
    assert_eq!(h.lock(S2, b, 0, 100, true, true), OK);
    assert_eq!(h.unlock(S2, b, 0, 100), OK);
    assert_eq!(h.lock(S1, a, 10, 0, true, true), OK);
    assert_eq!(
        h.lock(S2, b, 10, 0, true, true),
        OK,
        "zero-length never overlaps zero-length"
    );
    assert_eq!(
        h.lock(S2, b, 10, 5, true, true),
        OK,
        "range starting at the point"
    );
    assert_eq!(
        h.lock(S2, b, 5, 5, true, true),
        OK,
        "range ending before the point"
    );
    assert_eq!(h.lock(S1, a, 50, 0, true, true), OK);
    assert_eq!(
        h.lock(S2, b, 49, 2, true, true),
        NOT_GRANTED,
        "range containing the point"
    );
    assert_eq!(h.lock(S2, b, 60, 10, true, true), OK);
    assert_eq!(
        h.lock(S1, a, 65, 0, false, true),
        NOT_GRANTED,
        "point inside another's lock"
    );
    assert_eq!(
        h.lock(S1, a, 60, 0, false, true),
        OK,
        "point at the start of another's lock"
    );
    // Zero-length locks must be unlocked with zero length.
    assert_eq!(h.unlock(S1, a, 50, 1), Reply::Done(Status::RangeNotLocked));
    assert_eq!(h.unlock(S1, a, 50, 0), OK);
    assert_eq!(h.lock(S2, b, 49, 2, true, true), OK);
}

/// MS-FSA 2.1.5.8: offset + length - 1 past 2^64 - 1 is STATUS_INVALID_LOCK_RANGE; a range
/// ending exactly at the last byte is fine.
#[test]
fn wrap_is_invalid_lock_range() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(
        h.lock(S1, a, u64::MAX, 2, true, true),
        Reply::Done(Status::InvalidLockRange)
    );
    assert_eq!(h.lock(S1, a, 1, u64::MAX, true, true), OK);
    assert_eq!(h.lock(S2, b, u64::MAX, 1, false, true), NOT_GRANTED);
    assert_eq!(
        h.lock(S2, b, u64::MAX, 0, false, true),
        NOT_GRANTED,
        "point between the last two bytes"
    );
    assert_eq!(
        h.lock(S2, b, 1, 0, false, true),
        OK,
        "point at the first locked byte"
    );
    assert_eq!(
        h.unlock(S1, a, u64::MAX, 2),
        Reply::Done(Status::InvalidLockRange)
    );
    assert_eq!(h.unlock(S1, a, 1, u64::MAX), OK);
}

/// MS-FSA 2.1.5.9: unlock needs a lock of the same open with the same offset and length.
#[test]
fn unlock_must_match_exactly() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    assert_eq!(h.unlock(S1, a, 0, 5), Reply::Done(Status::RangeNotLocked));
    assert_eq!(h.unlock(S1, a, 0, 11), Reply::Done(Status::RangeNotLocked));
    assert_eq!(h.unlock(S2, b, 0, 10), Reply::Done(Status::RangeNotLocked));
    assert_eq!(h.unlock(S1, a, 0, 10), OK);
    assert_eq!(h.unlock(S1, a, 0, 10), Reply::Done(Status::RangeNotLocked));
}

/// MS-SMB2 3.3.5.14.2: elements are applied in order and, if one fails, those this request
/// already granted are released again.
#[test]
fn rollback_of_multi_element_lock() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S2, b, 100, 10, true, true), OK);
    let ranges = vec![
        LockRange {
            offset: 0,
            length: 10,
            exclusive: true,
        },
        LockRange {
            offset: 20,
            length: 10,
            exclusive: false,
        },
        LockRange {
            offset: 105,
            length: 1,
            exclusive: true,
        },
    ];
    assert_eq!(
        h.req(
            S1,
            Request::Lock {
                open: a,
                ranges: ranges.clone(),
                fail_immediately: true
            }
        ),
        NOT_GRANTED
    );
    assert_eq!(h.e.snapshot().locks.len(), 1);
    assert_eq!(h.lock(S2, b, 0, 30, true, true), OK);
    assert_eq!(h.unlock(S2, b, 0, 30), OK);
    // Elements of one request conflict with each other too.
    let overlapping = vec![
        LockRange {
            offset: 0,
            length: 10,
            exclusive: true,
        },
        LockRange {
            offset: 5,
            length: 1,
            exclusive: true,
        },
    ];
    assert_eq!(
        h.req(
            S1,
            Request::Lock {
                open: a,
                ranges: overlapping,
                fail_immediately: true
            }
        ),
        NOT_GRANTED
    );
    assert_eq!(h.unlock(S2, b, 100, 10), OK);
    assert_eq!(
        h.req(
            S1,
            Request::Lock {
                open: a,
                ranges,
                fail_immediately: true
            }
        ),
        OK
    );
    assert_eq!(h.e.snapshot().locks.len(), 3);
}

/// MS-SMB2 3.3.5.14: a lock that may wait must have exactly one element; an empty lock or
/// unlock is invalid; directories cannot be locked (MS-FSA 2.1.5.8).
#[test]
fn invalid_lock_requests() {
    let mut h = H::new();
    let (a, _) = two_opens(&mut h);
    let two = vec![
        LockRange {
            offset: 0,
            length: 1,
            exclusive: true
        };
        2
    ];
    assert_eq!(
        h.req(
            S1,
            Request::Lock {
                open: a,
                ranges: two,
                fail_immediately: false
            }
        ),
        Reply::Done(Status::InvalidParameter)
    );
    assert_eq!(
        h.req(
            S1,
            Request::Lock {
                open: a,
                ranges: vec![],
                fail_immediately: true
            }
        ),
        Reply::Done(Status::InvalidParameter)
    );
    assert_eq!(
        h.req(
            S1,
            Request::Unlock {
                open: a,
                ranges: vec![]
            }
        ),
        Reply::Done(Status::InvalidParameter)
    );
    let mut d = file_open(F2, access::FILE_READ_DATA, SHARE_ALL);
    d.directory = true;
    let (dir, _) = h.open_ok(S1, d);
    assert_eq!(
        h.lock(S1, dir, 0, 1, true, true),
        Reply::Done(Status::InvalidParameter)
    );
}

/// MS-FSA 2.1.5.8: a blocking request waits and is granted when the conflicting lock is
/// unlocked (MS-SMB2 3.3.5.14.2 completes it asynchronously).
#[test]
fn waiter_granted_on_unlock() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    let (id, r) = h.call(
        S2,
        Request::Lock {
            open: b,
            ranges: vec![LockRange {
                offset: 5,
                length: 10,
                exclusive: false,
            }],
            fail_immediately: false,
        },
    );
    assert_eq!(r, Reply::Pending);
    assert_eq!(h.e.stats().lock_waiters, 1);
    assert_eq!(h.completed(S2, id), None);
    assert_eq!(h.unlock(S1, a, 0, 10), OK);
    assert_eq!(h.completed(S2, id), Some(OK));
    assert_eq!(h.e.snapshot().locks.len(), 1);
    assert_eq!(h.e.stats().lock_waiters, 0);
}

/// MS-FSA 2.1.5.4: closing the holder releases its locks and the waiter is granted.
#[test]
fn waiter_granted_on_close() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    let (id, r) = h.call(
        S2,
        Request::Lock {
            open: b,
            ranges: vec![LockRange {
                offset: 0,
                length: 1,
                exclusive: true,
            }],
            fail_immediately: false,
        },
    );
    assert_eq!(r, Reply::Pending);
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    assert_eq!(h.completed(S2, id), Some(OK));
}

/// The holder's session ends: its locks go and other sessions' waiters are granted.
#[test]
fn waiter_granted_on_end_session() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    let (id, r) = h.call(
        S2,
        Request::Lock {
            open: b,
            ranges: vec![LockRange {
                offset: 0,
                length: 1,
                exclusive: true,
            }],
            fail_immediately: false,
        },
    );
    assert_eq!(r, Reply::Pending);
    h.e.end_session(h.now, S1);
    h.events = h.take_events();
    assert_eq!(h.completed(S2, id), Some(OK));
    assert_eq!(h.e.snapshot().locks.len(), 1);
}

/// SMB2 CANCEL of a blocking lock completes it with STATUS_CANCELLED (MS-SMB2 3.3.5.16).
#[test]
fn cancel_of_blocking_lock() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    let (id, r) = h.call(
        S2,
        Request::Lock {
            open: b,
            ranges: vec![LockRange {
                offset: 0,
                length: 1,
                exclusive: true,
            }],
            fail_immediately: false,
        },
    );
    assert_eq!(r, Reply::Pending);
    assert_eq!(h.req(S2, Request::Cancel { request: id }), OK);
    assert_eq!(h.completed(S2, id), Some(Reply::Done(Status::Cancelled)));
    assert_eq!(
        h.req(S2, Request::Cancel { request: id }),
        Reply::Done(Status::NotFound)
    );
    // Another session cannot cancel it.
    let (id2, _) = h.call(
        S2,
        Request::Lock {
            open: b,
            ranges: vec![LockRange {
                offset: 0,
                length: 1,
                exclusive: true,
            }],
            fail_immediately: false,
        },
    );
    assert_eq!(
        h.req(S1, Request::Cancel { request: id2 }),
        Reply::Done(Status::NotFound)
    );
    assert_eq!(h.unlock(S1, a, 0, 10), OK);
    assert_eq!(h.completed(S2, id2), Some(OK));
    assert_eq!(
        h.completed(S2, id),
        None,
        "a cancelled waiter is never granted"
    );
}

/// Closing an open cancels its own waiting lock requests.
#[test]
fn close_cancels_own_waiters() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    let (id, _) = h.call(
        S2,
        Request::Lock {
            open: b,
            ranges: vec![LockRange {
                offset: 0,
                length: 1,
                exclusive: true,
            }],
            fail_immediately: false,
        },
    );
    assert_eq!(h.close(S2, b), Reply::Closed { delete_file: false });
    assert_eq!(h.completed(S2, id), Some(Reply::Done(Status::Cancelled)));
    assert!(h.e.snapshot().lock_waiters.is_empty());
}

/// MS-FSA 2.1.5.7: a new request is checked against granted locks only. A shared lock that
/// the held shared lock allows is granted even while an exclusive request waits for the same
/// bytes (Windows, and Samba since 4.22); the waiter gets the range once every conflicting
/// granted lock is gone.
#[test]
fn waiters_do_not_block_compatible_new_requests() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    let (c, _) = h.open_ok(S3, file_open(F1, RW, SHARE_ALL));
    assert_eq!(h.lock(S1, a, 0, 10, false, true), OK);
    let (wb, r) = h.call(
        S2,
        Request::Lock {
            open: b,
            ranges: vec![LockRange {
                offset: 0,
                length: 10,
                exclusive: true,
            }],
            fail_immediately: false,
        },
    );
    assert_eq!(r, Reply::Pending);
    // Compatible with the granted shared lock: granted, waiter or not.
    assert_eq!(h.lock(S3, c, 5, 1, false, true), OK);
    // The owner may stack another shared lock on its own range too.
    assert_eq!(h.lock(S1, a, 0, 10, false, true), OK);
    // An exclusive request still conflicts with the granted shared locks.
    assert_eq!(h.lock(S3, c, 0, 1, true, true), NOT_GRANTED);
    assert_eq!(h.unlock(S1, a, 0, 10), OK);
    assert_eq!(h.unlock(S1, a, 0, 10), OK);
    assert_eq!(
        h.completed(S2, wb),
        None,
        "c's shared lock still holds byte 5"
    );
    assert_eq!(h.unlock(S3, c, 5, 1), OK);
    assert_eq!(h.completed(S2, wb), Some(OK));
}

/// MS-FSA 2.1.4.10 for I/O: another open's exclusive lock blocks reads and writes; a shared
/// lock blocks every write, the owner's own included; the owner's exclusive lock does not
/// block the owner.
#[test]
fn check_io_against_locks() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    assert_eq!(h.io(S1, a, 0, 10, false), Status::Success);
    assert_eq!(h.io(S1, a, 0, 10, true), Status::Success);
    assert_eq!(h.io(S2, b, 9, 5, false), Status::FileLockConflict);
    assert_eq!(h.io(S2, b, 9, 5, true), Status::FileLockConflict);
    assert_eq!(h.io(S2, b, 10, 5, true), Status::Success);
    assert_eq!(h.lock(S2, b, 20, 10, false, true), OK);
    assert_eq!(h.io(S2, b, 25, 1, true), Status::FileLockConflict);
    assert_eq!(h.io(S1, a, 25, 1, true), Status::FileLockConflict);
    assert_eq!(h.io(S1, a, 25, 1, false), Status::Success);
    assert_eq!(h.io(S1, a, 0, 0, true), Status::Success);
}

/// Many locks on one file stay correct (the table buckets by length class).
#[test]
fn many_locks_mixed_lengths() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    for i in 0..1000u64 {
        assert_eq!(h.lock(S1, a, i * 100, 1 + (i % 7) * 10, true, true), OK);
    }
    assert_eq!(h.lock(S1, a, 1_000_000, 1 << 40, true, true), OK);
    assert_eq!(
        h.lock(S2, b, 1_000_000 + (1 << 39), 1, false, true),
        NOT_GRANTED
    );
    assert_eq!(h.lock(S2, b, 550, 1, false, true), NOT_GRANTED);
    assert_eq!(h.lock(S2, b, 590, 1, false, true), OK);
    assert_eq!(h.e.stats().locks_held, 1002);
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    assert_eq!(h.e.stats().locks_held, 1);
}

/// Long-lived opens cycling lock/unlock keep exact bookkeeping: close drops precisely the
/// locks still held (MS-FSA 2.1.5.4) and nothing of other opens.
#[test]
fn lock_unlock_cycles_then_close() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    for i in 0..500u64 {
        assert_eq!(h.lock(S1, a, i, 1, true, true), OK);
        if i % 10 != 0 {
            assert_eq!(h.unlock(S1, a, i, 1), OK);
        }
    }
    assert_eq!(h.lock(S2, b, 1000, 1, true, true), OK);
    assert_eq!(h.e.stats().locks_held, 51);
    assert_eq!(h.lock(S2, b, 20, 1, false, true), NOT_GRANTED);
    assert_eq!(h.lock(S2, b, 21, 1, false, true), OK);
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    assert_eq!(h.e.stats().locks_held, 2);
    assert_eq!(h.lock(S2, b, 20, 1, false, true), OK);
}

/// The operator view lists opens with their caching, locks, waiters and breaks.
#[test]
fn snapshot_and_stats_describe_state() {
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    let (c, _) = h.open_ok(S2, file_open(F2, RW, SHARE_ALL));
    let (d, _) = h.open_ok(S3, file_open(F2, RW, SHARE_ALL));
    assert_eq!(h.lock(S2, c, 0, 10, true, true), OK);
    let (w, _) = h.call(
        S3,
        Request::Lock {
            open: d,
            ranges: vec![LockRange {
                offset: 0,
                length: 1,
                exclusive: true,
            }],
            fail_immediately: false,
        },
    );
    let (x, _) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    let snap = h.e.snapshot();
    assert_eq!(snap.sessions.len(), 3);
    assert_eq!(snap.opens.len(), 3);
    assert_eq!(
        snap.opens[0].caching,
        OplockGrant::Oplock(OplockLevel::Batch)
    );
    assert_eq!(snap.locks.len(), 2);
    assert_eq!(snap.lock_waiters.len(), 1);
    assert_eq!(snap.lock_waiters[0].request, w);
    assert_eq!(snap.deferred_opens.len(), 1);
    assert_eq!(snap.deferred_opens[0].request, x);
    assert_eq!(snap.breaks.len(), 1);
    assert!(matches!(
        snap.breaks[0].holder,
        BreakHolder::Oplock {
            from: OplockLevel::Batch,
            to: OplockLevel::LevelII,
            ..
        }
    ));
    let st = h.e.stats();
    assert_eq!(
        (st.opens, st.files, st.locks_held, st.lock_waiters),
        (3, 2, 2, 1)
    );
    assert_eq!(
        (st.deferred_opens, st.breaks_pending, st.breaks_sent_total),
        (1, 1, 1)
    );
    assert_eq!(st.lock_conflicts_total, 1);
}

/// A request id that is still pending cannot be reused (its Completed would be ambiguous),
/// except by the Cancel for it: SMB2 CANCEL reuses the MessageId (MS-SMB2 3.3.5.16).
#[test]
fn pending_request_id_reuse() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    let id = RequestId(4242);
    let blocking = Request::Lock {
        open: b,
        ranges: vec![LockRange {
            offset: 0,
            length: 1,
            exclusive: true,
        }],
        fail_immediately: false,
    };
    h.e.handle(h.now, S2, id, blocking.clone());
    h.e.handle(h.now, S2, id, blocking);
    h.e.handle(h.now, S2, id, Request::Cancel { request: id });
    let outs = h.take_events();
    assert_eq!(
        outs,
        vec![
            Output::Reply {
                session: S2,
                request: id,
                reply: Reply::Pending
            },
            Output::Reply {
                session: S2,
                request: id,
                reply: Reply::Done(Status::InvalidParameter)
            },
            Output::Notify {
                session: S2,
                notification: Notification::Completed {
                    request: id,
                    reply: Reply::Done(Status::Cancelled)
                }
            },
            Output::Reply {
                session: S2,
                request: id,
                reply: Reply::Done(Status::Success)
            },
        ]
    );
}
