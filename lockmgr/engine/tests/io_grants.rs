//! I/O grants (`CheckIoGrant` / `IoGranted`, `IoRecall` / `IoRecallAck`): an open may skip
//! `CheckIo` while nothing could make it answer anything but Success with no side effect,
//! and the engine recalls the grant before granting a byte-range lock or caching a write
//! would break.

mod common;
use common::*;
use lockmgr_engine::*;

const OK: Reply = Reply::Done(Status::Success);

fn check_grant(h: &mut H, s: SessionId, open: OpenId, write: bool) -> Reply {
    h.req(
        s,
        Request::CheckIoGrant {
            open,
            offset: 0,
            length: 10,
            write,
        },
    )
}

fn granted(h: &mut H, s: SessionId, open: OpenId, write: bool) -> u64 {
    match check_grant(h, s, open, write) {
        Reply::IoGranted { generation } => generation,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// The recalls addressed to `s` (removed from the harness' events).
fn recalls_for(h: &mut H, s: SessionId) -> Vec<(FileId, u64)> {
    h.take_events_back();
    h.breaks_for(s)
        .into_iter()
        .filter_map(|n| match n {
            Notification::IoRecall { file, generation } => Some((file, generation)),
            _ => None,
        })
        .collect()
}

trait TakeBack {
    fn take_events_back(&mut self);
}
impl TakeBack for H {
    /// Drain the engine into `events` (breaks_for only looks there).
    fn take_events_back(&mut self) {
        let mut ev = self.take_events();
        self.events.append(&mut ev);
    }
}

fn ack(h: &mut H, s: SessionId, file: FileId) -> Reply {
    h.req(s, Request::IoRecallAck { file })
}

fn two_opens(h: &mut H) -> (OpenId, OpenId) {
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    let (b, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    (a, b)
}

/// A file without locks or read caching gets a grant for reads and writes alike; plain
/// `CheckIo` never grants (nodes that do not know grants see no change).
#[test]
fn grant_on_a_quiet_file() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    assert_eq!(h.io(S1, a, 0, 10, true), Status::Success);
    granted(&mut h, S1, a, false);
    granted(&mut h, S2, b, true);
    assert_eq!(h.e.stats().io_grants_total, 2);
    // Asking again while holding one is answered with a grant and counts nothing new.
    granted(&mut h, S1, a, true);
    assert_eq!(h.e.stats().io_grants_total, 2);
    assert!(recalls_for(&mut h, S1).is_empty());
}

/// A lock request on a granted file waits for the recall of every node's grant, even a
/// fail-immediately one, and is decided only when the last node acknowledged.
#[test]
fn lock_waits_for_recall_acks() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    let (a2, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    let ga = granted(&mut h, S1, a, true);
    granted(&mut h, S1, a2, true);
    granted(&mut h, S2, b, false);
    let (lock, reply) = h.call(
        S2,
        Request::Lock {
            open: b,
            ranges: vec![LockRange {
                offset: 0,
                length: 10,
                exclusive: true,
            }],
            fail_immediately: true,
        },
    );
    assert_eq!(reply, Reply::Pending);
    // One recall per session, however many of its opens held a grant; none to the locking
    // session, whose own grant ends with its lock request.
    let r1 = recalls_for(&mut h, S1);
    assert_eq!(r1.len(), 1);
    assert!(recalls_for(&mut h, S2).is_empty());
    assert_eq!(r1[0].0, F1);
    assert!(r1[0].1 >= ga, "the recall covers the grant");
    assert_eq!(h.e.stats().io_recalls_total, 1);
    // No grant while the recall is in flight, and the lock waits for the ack.
    assert_eq!(check_grant(&mut h, S2, b, false), OK);
    assert_eq!(ack(&mut h, S2, F1), OK);
    assert_eq!(h.completed(S2, lock), None);
    assert_eq!(ack(&mut h, S1, F1), OK);
    assert_eq!(h.completed(S2, lock), Some(OK));
    // The lock is in force for the first node's I/O, which asks again.
    assert_eq!(
        check_grant(&mut h, S1, a, true),
        Reply::Done(Status::FileLockConflict)
    );
    // And no grant while a lock exists, not even outside its range.
    assert_eq!(
        h.req(
            S1,
            Request::CheckIoGrant {
                open: a,
                offset: 100,
                length: 10,
                write: true
            }
        ),
        OK
    );
    // Unlocked, the file is quiet again.
    assert_eq!(h.unlock(S2, b, 0, 10), OK);
    let g = granted(&mut h, S1, a, true);
    assert!(g > r1[0].1, "a grant after a recall is newer than it");
}

/// Without grants a lock is decided at once, as before.
#[test]
fn lock_without_grants_is_immediate() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    granted(&mut h, S1, a, true);
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    // The grant died with its open: nothing to recall.
    assert_eq!(h.lock(S2, b, 0, 10, true, true), OK);
    assert!(recalls_for(&mut h, S1).is_empty());
}

/// Locks queued behind a recall keep their order and their fail-immediately semantics.
#[test]
fn queued_locks_in_order() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    granted(&mut h, S1, a, true);
    let lock = |open, fail| Request::Lock {
        open,
        ranges: vec![LockRange {
            offset: 0,
            length: 10,
            exclusive: true,
        }],
        fail_immediately: fail,
    };
    let (l1, r1) = h.call(S2, lock(b, true));
    let (l2, r2) = h.call(S1, lock(a, true));
    let (l3, r3) = h.call(S1, lock(a, false));
    assert_eq!(
        (r1, r2, r3),
        (Reply::Pending, Reply::Pending, Reply::Pending)
    );
    assert_eq!(recalls_for(&mut h, S1).len(), 1);
    assert_eq!(ack(&mut h, S1, F1), OK);
    assert_eq!(h.completed(S2, l1), Some(OK));
    assert_eq!(
        h.completed(S1, l2),
        Some(Reply::Done(Status::LockNotGranted))
    );
    // The blocking one became an ordinary waiter.
    assert_eq!(h.completed(S1, l3), None);
    assert_eq!(h.unlock(S2, b, 0, 10), OK);
    h.take_events_back();
    assert_eq!(h.completed(S1, l3), Some(OK));
}

/// A create asking for caching on a granted file is deferred until the recall is acked,
/// then granted its Level II oplock; a write through the old grant's open then asks again
/// and breaks it (MS-FSA 2.1.4.12).
#[test]
fn read_caching_waits_for_recall() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    granted(&mut h, S1, a, true);
    let (create, reply) = h.call(
        S2,
        Request::Open(with_oplock(
            file_open(F1, RW, SHARE_ALL),
            OplockLevel::LevelII,
        )),
    );
    assert_eq!(reply, Reply::Pending);
    assert_eq!(recalls_for(&mut h, S1).len(), 1);
    assert_eq!(ack(&mut h, S1, F1), OK);
    let b = match h.completed(S2, create) {
        Some(Reply::Opened {
            open,
            grant: OplockGrant::Oplock(OplockLevel::LevelII),
        }) => open,
        other => panic!("expected a Level II open, got {other:?}"),
    };
    // A Level II holder keeps every other open from a grant for reads...
    assert_eq!(check_grant(&mut h, S1, a, false), OK);
    h.take_events_back();
    assert!(h.breaks_for(S2).is_empty());
    // ...and a write breaks it, after which the file is quiet and the writer gets one.
    granted(&mut h, S1, a, true);
    h.take_events_back();
    assert_eq!(
        h.breaks_for(S2),
        vec![Notification::OplockBreak {
            open: b,
            new_level: OplockLevel::None
        }]
    );
}

/// A create that asks for no caching next to no holder needs no recall: grants stay.
#[test]
fn plain_open_keeps_grants() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    granted(&mut h, S1, a, true);
    let (b, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    assert!(recalls_for(&mut h, S1).is_empty());
    granted(&mut h, S2, b, true);
}

/// An open holding its own R lease gets a grant (its writes do not break its own lease);
/// another open's R lease, or the open's own Level II oplock, keeps it from one.
#[test]
fn grant_rule_for_read_caching() {
    let mut h = H::new();
    let (a, g) = h.open_ok(
        S1,
        with_lease(file_open(F1, RW, SHARE_ALL), G1, 1, LeaseState::RH, None),
    );
    assert_eq!(lease_state(&g), LeaseState::RH);
    granted(&mut h, S1, a, true);
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_lease(file_open(F1, RW, SHARE_ALL), G1, 1, LeaseState::RH, None),
    );
    let (b, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    assert_eq!(check_grant(&mut h, S2, b, false), OK);
    granted(&mut h, S1, a, false);
    let mut h = H::new();
    let (c, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    let (d, g) = h.open_ok(
        S2,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    assert_eq!(g, OplockGrant::Oplock(OplockLevel::LevelII));
    // oplock.batch1's self break: a write through d breaks d's own Level II.
    assert_eq!(check_grant(&mut h, S2, d, false), OK);
    assert_eq!(check_grant(&mut h, S1, c, false), OK);
}

/// A sole writer's RWH lease does not stand in the way; another client's create breaking it
/// to RH waits for the recall before the break is even sent.
#[test]
fn break_waits_for_recall() {
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_lease(file_open(F1, RW, SHARE_ALL), G1, 1, LeaseState::RWH, None),
    );
    granted(&mut h, S1, a, true);
    let (create, reply) = h.call(
        S2,
        Request::Open(with_lease(
            file_open(F1, RW, SHARE_ALL),
            G2,
            2,
            LeaseState::RH,
            None,
        )),
    );
    assert_eq!(reply, Reply::Pending);
    h.take_events_back();
    let notes = h.breaks_for(S1);
    assert!(
        notes
            .iter()
            .all(|n| matches!(n, Notification::IoRecall { .. })),
        "no lease break before the recall: {notes:?}"
    );
    assert_eq!(ack(&mut h, S1, F1), OK);
    h.take_events_back();
    assert!(matches!(
        h.breaks_for(S1).as_slice(),
        [Notification::LeaseBreak {
            new: LeaseState::RH,
            ..
        }]
    ));
    assert_eq!(
        h.req(
            S1,
            Request::LeaseBreakAck {
                client_guid: G1,
                key: LeaseKey(1),
                state: LeaseState::RH
            }
        ),
        Reply::Acked {
            grant: OplockGrant::Lease(Lease {
                key: LeaseKey(1),
                state: LeaseState::RH,
                parent_key: None,
                epoch: None,
                breaking: false
            })
        }
    );
    assert!(matches!(
        h.completed(S2, create),
        Some(Reply::Opened { .. })
    ));
}

/// A node that dies with a recall outstanding is resolved by its session's end, never by
/// a guess: until then the lock waits, however long.
#[test]
fn dead_node_resolved_by_session_end() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    granted(&mut h, S1, a, true);
    let (lock, reply) = h.call(
        S2,
        Request::Lock {
            open: b,
            ranges: vec![LockRange {
                offset: 0,
                length: 10,
                exclusive: true,
            }],
            fail_immediately: true,
        },
    );
    assert_eq!(reply, Reply::Pending);
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.completed(S2, lock), None);
    let now = h.now;
    h.e.end_session(now, S1);
    h.take_events_back();
    assert_eq!(h.completed(S2, lock), Some(OK));
}

/// A queued lock can be cancelled; a queued lock of an open that closes is cancelled; an ack
/// nobody waits for is harmless.
#[test]
fn cancel_close_and_stray_ack() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    granted(&mut h, S1, a, true);
    let (lock, reply) = h.call(
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
    assert_eq!(reply, Reply::Pending);
    assert_eq!(h.req(S2, Request::Cancel { request: lock }), OK);
    assert_eq!(h.completed(S2, lock), Some(Reply::Done(Status::Cancelled)));
    let (lock2, _) = h.call(
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
    assert_eq!(h.close(S2, b), Reply::Closed { delete_file: false });
    assert_eq!(h.completed(S2, lock2), Some(Reply::Done(Status::Cancelled)));
    assert_eq!(ack(&mut h, S1, F1), OK);
    assert_eq!(ack(&mut h, S1, F1), OK);
    assert_eq!(ack(&mut h, S3, F2), OK);
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    assert_eq!(h.e.stats().files, 0, "nothing left behind");
}

/// A rename that breaks another lease's handle caching waits for the recall too (the lease
/// may acknowledge down to R, which a write through a grant would not break).
#[test]
fn rename_break_waits_for_recall() {
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_lease(file_open(F1, RW, SHARE_ALL), G1, 1, LeaseState::RWH, None),
    );
    let (b, _) = h.open_ok(
        S1,
        with_lease(file_open(F1, RW, SHARE_ALL), G1, 1, LeaseState::RWH, None),
    );
    granted(&mut h, S1, a, true);
    // b shares a's lease: nothing to break, no recall.
    assert_eq!(h.req(S1, Request::BreakForRename { open: b }), OK);
    assert!(recalls_for(&mut h, S1).is_empty());
    // A stat open (the engine does not check the rename's own access) breaks nothing.
    let (c, _) = h.open_ok(S2, file_open(F1, access::FILE_READ_ATTRIBUTES, SHARE_ALL));
    let (rename, reply) = h.call(S2, Request::BreakForRename { open: c });
    assert_eq!(reply, Reply::Pending);
    assert_eq!(recalls_for(&mut h, S1).len(), 1);
    assert_eq!(ack(&mut h, S1, F1), OK);
    assert_eq!(
        h.req(
            S1,
            Request::LeaseBreakAck {
                client_guid: G1,
                key: LeaseKey(1),
                state: LeaseState::READ
            }
        ),
        Reply::Acked {
            grant: OplockGrant::Lease(Lease {
                key: LeaseKey(1),
                state: LeaseState::READ,
                parent_key: None,
                epoch: None,
                breaking: false
            })
        }
    );
    assert_eq!(h.completed(S2, rename), Some(OK));
}

/// A session's own lock ends its own grants on the file without a recall: a node locking a
/// file only it does I/O on waits for nobody. Other sessions' grants are still recalled.
#[test]
fn own_lock_needs_no_recall() {
    let mut h = H::new();
    let (a, b) = two_opens(&mut h);
    let (a2, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    granted(&mut h, S1, a, true);
    granted(&mut h, S1, a2, true);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), OK);
    assert!(recalls_for(&mut h, S1).is_empty());
    // Both of the session's grants are gone: a2 asks again and sees the lock.
    assert_eq!(
        check_grant(&mut h, S1, a2, false),
        Reply::Done(Status::FileLockConflict)
    );
    assert_eq!(h.unlock(S1, a, 0, 10), OK);
    granted(&mut h, S1, a, true);
    granted(&mut h, S2, b, true);
    assert_eq!(h.lock(S1, a, 0, 10, true, true), Reply::Pending);
    assert_eq!(recalls_for(&mut h, S2).len(), 1);
    assert!(recalls_for(&mut h, S1).is_empty());
}

fn with_io_grant(o: OpenRequest) -> OpenRequest {
    OpenRequest {
        io_grant: true,
        ..o
    }
}

/// A create asking for an I/O grant (`OpenRequest::io_grant`) gets one with its reply when
/// the grant rule holds, so its first READ/WRITE needs no `CheckIoGrant`; the grant is
/// recalled like any other. Not asking, or a file with byte-range locks, answers `Opened`.
#[test]
fn open_carries_the_grant() {
    let mut h = H::new();
    let (plain, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    let a = match h.open(S1, with_io_grant(file_open(F1, RW, SHARE_ALL))) {
        Reply::OpenedIo {
            open,
            grant: OplockGrant::None,
            durable: false,
            ..
        } => open,
        other => panic!("expected an open with an I/O grant, got {other:?}"),
    };
    assert_eq!(h.e.stats().io_grants_total, 1);
    assert_eq!(h.e.stats().io_grants_held, 1);
    assert_eq!(h.e.snapshot().sessions[0].io_grants, 1);
    // Persistent durability rides along: `durable` says so.
    let reply = h.req(
        S1,
        Request::OpenDurable {
            open: with_io_grant(file_open(F1, RW, SHARE_ALL)),
            durable: DurableRequest {
                key: 7,
                timeout_ms: 1000,
                persistent: true,
                blob: Vec::new(),
            },
        },
    );
    assert!(
        matches!(reply, Reply::OpenedIo { durable: true, .. }),
        "{reply:?}"
    );
    // Another session's lock recalls the grants the opens came with.
    let (lock, r) = h.call(
        S2,
        Request::Lock {
            open: plain,
            ranges: vec![LockRange {
                offset: 0,
                length: 10,
                exclusive: true,
            }],
            fail_immediately: true,
        },
    );
    assert_eq!(r, Reply::Pending);
    assert_eq!(recalls_for(&mut h, S1).len(), 1);
    assert_eq!(ack(&mut h, S1, F1), OK);
    assert_eq!(h.completed(S2, lock), Some(OK));
    assert_eq!(h.e.stats().io_recall_acks_total, 1);
    // With a byte-range lock on the file the create gets no grant; `io_grant` unset never.
    let refused_before = h.e.stats().io_grants_refused_total;
    h.open_ok(S1, with_io_grant(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(h.e.stats().io_grants_refused_total, refused_before + 1);
    assert_eq!(
        check_grant(&mut h, S1, a, true),
        Reply::Done(Status::FileLockConflict)
    );
    assert_eq!(h.close(S2, plain), Reply::Closed { delete_file: false });
    assert!(matches!(
        h.open(S2, file_open(F1, RW, SHARE_ALL)),
        Reply::Opened { .. }
    ));
}

/// A create deferred behind a break gets its grant with its completion, when the rule
/// holds then (the batch holder closed instead of keeping Level II).
#[test]
fn deferred_open_carries_the_grant() {
    let mut h = H::new();
    let (holder, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    let (create, reply) = h.call(
        S2,
        Request::Open(with_io_grant(file_open(F1, RW, SHARE_ALL))),
    );
    assert_eq!(reply, Reply::Pending);
    assert_eq!(h.close(S1, holder), Reply::Closed { delete_file: false });
    let done = h.completed(S2, create);
    assert!(
        matches!(done, Some(Reply::OpenedIo { durable: false, .. })),
        "{done:?}"
    );
    assert_eq!(h.e.stats().io_grants_held, 1);
}
