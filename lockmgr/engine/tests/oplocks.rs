//! Oplocks and leases: MS-SMB2 3.3.5.9, 3.3.4.6/3.3.4.7, 3.3.5.22; MS-FSA 2.1.4.12, 2.1.5.1.2.

mod common;

use common::*;
use lockmgr_engine::*;

fn oplock_break(open: OpenId, new_level: OplockLevel) -> Notification {
    Notification::OplockBreak { open, new_level }
}

/// MS-SMB2 3.3.5.9 / MS-FSA 2.1.5.17.2: the sole open gets the Batch oplock it asked for; a
/// second opener breaks it to Level II (ack required), waits, and then gets Level II itself.
#[test]
fn create_waits_for_batch_break_and_completes_on_ack() {
    let mut h = H::new();
    let (a, g) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    assert_eq!(g, OplockGrant::Oplock(OplockLevel::Batch));
    let (id, r) = h.call(
        S2,
        Request::Open(with_oplock(
            file_open(F1, RW, SHARE_ALL),
            OplockLevel::Batch,
        )),
    );
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![oplock_break(a, OplockLevel::LevelII)]
    );
    assert_eq!(h.e.stats().breaks_pending, 1);
    assert_eq!(h.completed(S2, id), None);
    assert_eq!(
        h.req(
            S1,
            Request::OplockBreakAck {
                open: a,
                level: OplockLevel::LevelII
            }
        ),
        Reply::Acked {
            grant: OplockGrant::Oplock(OplockLevel::LevelII)
        }
    );
    match h.completed(S2, id) {
        Some(Reply::Opened { grant, .. }) => {
            assert_eq!(grant, OplockGrant::Oplock(OplockLevel::LevelII))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.e.poll_timeout(), None);
}

/// MS-SMB2 3.3.6.3: an unacknowledged break completes after the timeout as if acknowledged
/// to None, and the deferred create proceeds (simulated time).
#[test]
fn break_timeout_completes_deferred_create() {
    let mut h = H::with(Config {
        break_timeout: Duration::from_secs(35),
        ..Config::default()
    });
    let (a, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Exclusive),
    );
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![oplock_break(a, OplockLevel::LevelII)]
    );
    assert_eq!(h.e.poll_timeout(), Some(Time::from_secs(36)));
    h.advance(Duration::from_secs(34));
    assert_eq!(h.completed(S2, id), None);
    h.advance(Duration::from_secs(1));
    assert!(matches!(
        h.completed(S2, id),
        Some(Reply::Opened {
            grant: OplockGrant::None,
            ..
        })
    ));
    assert_eq!(h.e.stats().break_timeouts_total, 1);
    let snap = h.e.snapshot();
    assert_eq!(
        snap.opens.iter().find(|o| o.open == a).map(|o| o.caching),
        Some(OplockGrant::None)
    );
    // A late ack finds no break.
    assert_eq!(
        h.req(
            S1,
            Request::OplockBreakAck {
                open: a,
                level: OplockLevel::None
            }
        ),
        Reply::Done(Status::InvalidOplockProtocol)
    );
}

/// MS-FSA 2.1.5.1.2: on a sharing violation a Batch oplock is broken first; if the holder
/// closes, the create succeeds, otherwise it fails with the sharing violation after the ack.
#[test]
fn sharing_violation_with_batch_oplock_breaks_first() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, with_oplock(file_open(F1, RW, 0), OplockLevel::Batch));
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![oplock_break(a, OplockLevel::LevelII)]
    );
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    assert!(matches!(h.completed(S2, id), Some(Reply::Opened { .. })));

    let mut h = H::new();
    let (a, _) = h.open_ok(S1, with_oplock(file_open(F2, RW, 0), OplockLevel::Batch));
    let (id, _) = h.call(S2, Request::Open(file_open(F2, RW, SHARE_ALL)));
    h.req(
        S1,
        Request::OplockBreakAck {
            open: a,
            level: OplockLevel::LevelII,
        },
    );
    assert_eq!(
        h.completed(S2, id),
        Some(Reply::Done(Status::SharingViolation))
    );
    // Without caching to break the violation is immediate.
    assert_eq!(
        h.open(S2, file_open(F2, RW, SHARE_ALL)),
        Reply::Done(Status::SharingViolation)
    );
}

/// MS-FSA 2.1.5.1.2 / MS-SMB2 3.3.4.7: a sharing violation breaks H from other keys' leases
/// (ack required), the holder may close, then the create is retried.
#[test]
fn h_lease_broken_on_sharing_violation() {
    let mut h = H::new();
    let (a, g) = h.open_ok(
        S1,
        with_lease(
            file_open(F1, access::FILE_READ_DATA, share::READ),
            G1,
            1,
            LeaseState::RH,
            None,
        ),
    );
    assert_eq!(lease_state(&g), LeaseState::RH);
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![Notification::LeaseBreak {
            client_guid: G1,
            key: LeaseKey(1),
            current: LeaseState::RH,
            new: LeaseState::READ,
            epoch: None,
            ack_required: true,
        }]
    );
    // A non-conflicting open does not need H broken; it just waits behind the break.
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    assert!(matches!(h.completed(S2, id), Some(Reply::Opened { .. })));
}

/// MS-SMB2 3.3.5.9.8: opens with the same (ClientGuid, LeaseKey) share one lease and never
/// break each other.
#[test]
fn lease_shared_by_same_key_does_not_break() {
    let mut h = H::new();
    let (_, g1) = h.open_ok(
        S1,
        with_lease(file_open(F1, RW, share::READ), G1, 7, LeaseState::RWH, None),
    );
    assert_eq!(lease_state(&g1), LeaseState::RWH);
    // A second open with the same key joins the lease: no break, same state.
    let (_, g2) = h.open_ok(
        S1,
        with_lease(
            file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
            G1,
            7,
            LeaseState::RWH,
            None,
        ),
    );
    assert_eq!(lease_state(&g2), LeaseState::RWH);
    assert!(h.breaks_for(S1).is_empty());
    assert_eq!(h.e.stats().leases, 1);
    assert_eq!(h.e.stats().breaks_sent_total, 0);
    // Same key from another client guid is a different lease and does break.
    let (id, r) = h.call(
        S2,
        Request::Open(with_lease(
            file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
            G2,
            7,
            LeaseState::RWH,
            None,
        )),
    );
    assert_eq!(r, Reply::Pending);
    assert_eq!(h.breaks_for(S1).len(), 1);
    h.req(
        S1,
        Request::LeaseBreakAck {
            client_guid: G1,
            key: LeaseKey(7),
            state: LeaseState::RH,
        },
    );
    match h.completed(S2, id) {
        Some(Reply::Opened { grant, .. }) => assert_eq!(lease_state(&grant), LeaseState::RH),
        other => panic!("{other:?}"),
    }
}

/// MS-SMB2 3.3.5.9.8: a lease key already used for another file is refused.
#[test]
fn lease_key_reused_for_other_file_is_invalid_parameter() {
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_lease(file_open(F1, RW, SHARE_ALL), G1, 9, LeaseState::RWH, None),
    );
    assert_eq!(
        h.open(
            S1,
            with_lease(file_open(F2, RW, SHARE_ALL), G1, 9, LeaseState::RWH, None)
        ),
        Reply::Done(Status::InvalidParameter)
    );
    // Once the lease's last open is gone the key is free again.
    h.close(S1, a);
    h.open_ok(
        S1,
        with_lease(file_open(F2, RW, SHARE_ALL), G1, 9, LeaseState::RWH, None),
    );
}

/// MS-SMB2 3.3.4.7 / MS-FSA 2.1.4.12: another client's open breaks W (RWH -> RH, ack
/// required); the W lease is only granted to the sole open.
#[test]
fn w_lease_broken_to_rh_by_other_client() {
    let mut h = H::new();
    h.open_ok(
        S1,
        with_lease(file_open(F1, RW, SHARE_ALL), G1, 1, LeaseState::RWH, None),
    );
    let (id, r) = h.call(
        S2,
        Request::Open(with_lease(
            file_open(F1, RW, SHARE_ALL),
            G2,
            2,
            LeaseState::RWH,
            None,
        )),
    );
    assert_eq!(r, Reply::Pending);
    let b = h.breaks_for(S1);
    assert!(matches!(
        b.as_slice(),
        [Notification::LeaseBreak {
            current: LeaseState::RWH,
            new: LeaseState::RH,
            ack_required: true,
            ..
        }]
    ));
    // Ack must be a subset of the break-to state.
    assert_eq!(
        h.req(
            S1,
            Request::LeaseBreakAck {
                client_guid: G1,
                key: LeaseKey(1),
                state: LeaseState::RWH
            }
        ),
        Reply::Done(Status::RequestNotAccepted)
    );
    assert!(matches!(
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
                state: LeaseState::RH,
                ..
            })
        }
    ));
    match h.completed(S2, id) {
        Some(Reply::Opened { grant, .. }) => assert_eq!(lease_state(&grant), LeaseState::RH),
        other => panic!("{other:?}"),
    }
    // Ack with no break pending.
    assert_eq!(
        h.req(
            S1,
            Request::LeaseBreakAck {
                client_guid: G1,
                key: LeaseKey(1),
                state: LeaseState::RH
            }
        ),
        Reply::Done(Status::Unsuccessful)
    );
    // MS-SMB2 3.3.5.22.2: the lease is found by (ClientGuid, LeaseKey), whichever session
    // (connection) of that client acks; an unknown pair is NotFound.
    assert_eq!(
        h.req(
            S3,
            Request::LeaseBreakAck {
                client_guid: G1,
                key: LeaseKey(1),
                state: LeaseState::RH
            }
        ),
        Reply::Done(Status::Unsuccessful)
    );
    assert_eq!(
        h.req(
            S3,
            Request::LeaseBreakAck {
                client_guid: ClientGuid(0xdead),
                key: LeaseKey(1),
                state: LeaseState::RH
            }
        ),
        Reply::Done(Status::NotFound)
    );
}

/// MS-SMB2 3.3.5.9.11 / 3.3.4.7: a v2 lease's epoch starts one past the client's and
/// increments with each state change (upgrade or break), carried in LeaseBreak.
#[test]
fn v2_epoch_increments() {
    let mut h = H::new();
    let (_, g) = h.open_ok(
        S1,
        with_lease(
            file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
            G1,
            1,
            LeaseState::READ,
            Some(10),
        ),
    );
    assert!(matches!(
        g,
        OplockGrant::Lease(Lease {
            state: LeaseState::READ,
            epoch: Some(11),
            ..
        })
    ));
    // Upgrade R -> RWH by the same key: one more.
    let (_, g) = h.open_ok(
        S1,
        with_lease(
            file_open(F1, RW, SHARE_ALL),
            G1,
            1,
            LeaseState::RWH,
            Some(11),
        ),
    );
    assert!(matches!(
        g,
        OplockGrant::Lease(Lease {
            state: LeaseState::RWH,
            epoch: Some(12),
            ..
        })
    ));
    // No change: same epoch.
    let (_, g) = h.open_ok(
        S1,
        with_lease(
            file_open(F1, RW, SHARE_ALL),
            G1,
            1,
            LeaseState::RWH,
            Some(12),
        ),
    );
    assert!(matches!(
        g,
        OplockGrant::Lease(Lease {
            epoch: Some(12),
            ..
        })
    ));
    // A break carries the next epoch.
    let (_, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert!(matches!(
        h.breaks_for(S1).as_slice(),
        [Notification::LeaseBreak {
            new: LeaseState::RH,
            epoch: Some(13),
            ..
        }]
    ));
    // v1 leases carry no epoch.
    let (_, g) = h.open_ok(
        S3,
        with_lease(
            file_open(F2, access::FILE_READ_DATA, SHARE_ALL),
            G2,
            5,
            LeaseState::READ,
            None,
        ),
    );
    assert!(matches!(g, OplockGrant::Lease(Lease { epoch: None, .. })));
}

/// MS-SMB2 3.3.5.9.11: directory leases are at most RH; directories get no oplocks.
#[test]
fn directory_lease_at_most_rh() {
    let mut h = H::new();
    let mut d = file_open(F1, access::FILE_READ_DATA, SHARE_ALL);
    d.directory = true;
    let (_, g) = h.open_ok(S1, with_lease(d, G1, 1, LeaseState::RWH, None));
    assert_eq!(lease_state(&g), LeaseState::RH);
    let (_, g) = h.open_ok(S2, with_oplock(d, OplockLevel::Batch));
    assert_eq!(g, OplockGrant::None);
}

/// MS-FSA 2.1.4.12 (WRITE, LOCK_CONTROL): Level II oplocks and R leases of other opens
/// break to None without an ack when another open writes or takes a byte-range lock.
#[test]
fn level_ii_and_r_lease_break_to_none_without_ack() {
    let mut h = H::new();
    let (a, g) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::LevelII),
    );
    assert_eq!(g, OplockGrant::Oplock(OplockLevel::LevelII));
    let (_, g) = h.open_ok(
        S2,
        with_lease(file_open(F1, RW, SHARE_ALL), G2, 3, LeaseState::READ, None),
    );
    assert_eq!(lease_state(&g), LeaseState::READ);
    let (c, _) = h.open_ok(S3, file_open(F1, RW, SHARE_ALL));
    // Reads break nothing.
    assert_eq!(h.io(S3, c, 0, 10, false), Status::Success);
    assert!(h.breaks_for(S1).is_empty() && h.breaks_for(S2).is_empty());
    assert_eq!(h.io(S3, c, 0, 10, true), Status::Success);
    assert_eq!(h.breaks_for(S1), vec![oplock_break(a, OplockLevel::None)]);
    assert!(matches!(
        h.breaks_for(S2).as_slice(),
        [Notification::LeaseBreak {
            new: LeaseState::NONE,
            ack_required: false,
            ..
        }]
    ));
    assert_eq!(h.e.poll_timeout(), None, "no ack expected");

    // Same for a byte-range lock.
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::LevelII),
    );
    let (b, g) = h.open_ok(
        S2,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::LevelII),
    );
    assert_eq!(g, OplockGrant::Oplock(OplockLevel::LevelII));
    assert_eq!(
        h.lock(S2, b, 0, 1, false, true),
        Reply::Done(Status::Success)
    );
    assert_eq!(h.breaks_for(S1), vec![oplock_break(a, OplockLevel::None)]);
    // The locker's own Level II oplock breaks too (Windows and Samba: smbtorture
    // oplock.brl1/batch1 expect this "self break").
    assert_eq!(h.breaks_for(S2), vec![oplock_break(b, OplockLevel::None)]);
}

/// MS-FSA 2.1.5.1.2 / MS-SMB2 3.3.5.9: overwrite and supersede break all caching to None.
#[test]
fn overwrite_breaks_to_none() {
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    let mut o = file_open(F1, RW, SHARE_ALL);
    o.overwrite = true;
    let (id, r) = h.call(S2, Request::Open(o));
    assert_eq!(r, Reply::Pending);
    assert_eq!(h.breaks_for(S1), vec![oplock_break(a, OplockLevel::None)]);
    // Acking to Level II exceeds the break level (MS-SMB2 3.3.5.22.1): the break completes
    // to NONE anyway, the ack fails with INVALID_OPLOCK_PROTOCOL, and the waiting create
    // proceeds at once instead of waiting out the break timeout.
    assert_eq!(
        h.req(
            S1,
            Request::OplockBreakAck {
                open: a,
                level: OplockLevel::LevelII
            }
        ),
        Reply::Done(Status::InvalidOplockProtocol)
    );
    assert!(matches!(h.completed(S2, id), Some(Reply::Opened { .. })));
    // The break is over: another ack finds none in progress.
    assert_eq!(
        h.req(
            S1,
            Request::OplockBreakAck {
                open: a,
                level: OplockLevel::None
            }
        ),
        Reply::Done(Status::InvalidOplockProtocol)
    );
    // An overwrite over a Level II / R holder breaks it at once, no ack, no wait.
    let (_, g) = h.open_ok(
        S3,
        with_lease(
            file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
            G2,
            4,
            LeaseState::READ,
            None,
        ),
    );
    assert_eq!(lease_state(&g), LeaseState::READ);
    h.open_ok(S1, o);
    assert!(matches!(
        h.breaks_for(S3).as_slice(),
        [Notification::LeaseBreak {
            new: LeaseState::NONE,
            ack_required: false,
            ..
        }]
    ));
}

/// Ack rules (MS-SMB2 3.3.5.22.1): an oplock ack with no break pending ->
/// INVALID_OPLOCK_PROTOCOL (smbtorture oplock.levelii500).
#[test]
fn ack_without_break_is_invalid_oplock_protocol() {
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    assert_eq!(
        h.req(
            S1,
            Request::OplockBreakAck {
                open: a,
                level: OplockLevel::None
            }
        ),
        Reply::Done(Status::InvalidOplockProtocol)
    );
    assert_eq!(
        h.req(
            S2,
            Request::OplockBreakAck {
                open: a,
                level: OplockLevel::None
            }
        ),
        Reply::Done(Status::InvalidHandle)
    );
    assert_eq!(
        h.req(
            S1,
            Request::LeaseBreakAck {
                client_guid: G1,
                key: LeaseKey(1),
                state: LeaseState::NONE
            }
        ),
        Reply::Done(Status::NotFound)
    );
}

/// SMB2 CANCEL of a create deferred for a break completes it with STATUS_CANCELLED; the
/// break itself goes on.
#[test]
fn cancel_of_deferred_create() {
    let mut h = H::new();
    h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert_eq!(h.e.snapshot().deferred_opens.len(), 1);
    assert_eq!(
        h.req(S2, Request::Cancel { request: id }),
        Reply::Done(Status::Success)
    );
    assert_eq!(h.completed(S2, id), Some(Reply::Done(Status::Cancelled)));
    assert!(h.e.snapshot().deferred_opens.is_empty());
    assert_eq!(h.e.snapshot().breaks.len(), 1);
    h.advance(Duration::from_secs(100));
    assert_eq!(h.completed(S2, id), None);
}

/// Several creates wait on one break; several breaks are in flight to one holder at once.
#[test]
fn several_waiters_and_breaks_in_flight() {
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    h.open_ok(
        S1,
        with_lease(file_open(F2, RW, SHARE_ALL), G1, 1, LeaseState::RWH, None),
    );
    let (x, _) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    let (y, _) = h.call(
        S3,
        Request::Open(file_open(F1, access::FILE_READ_DATA, SHARE_ALL)),
    );
    let (z, _) = h.call(S2, Request::Open(file_open(F2, RW, SHARE_ALL)));
    // One break per holder, even with two waiters on F1.
    assert_eq!(h.breaks_for(S1).len(), 2);
    assert_eq!(h.e.snapshot().breaks.len(), 2);
    assert_eq!(h.e.snapshot().deferred_opens.len(), 3);
    h.req(
        S1,
        Request::LeaseBreakAck {
            client_guid: G1,
            key: LeaseKey(1),
            state: LeaseState::RH,
        },
    );
    assert!(matches!(h.completed(S2, z), Some(Reply::Opened { .. })));
    assert_eq!(h.completed(S2, x), None);
    h.req(
        S1,
        Request::OplockBreakAck {
            open: a,
            level: OplockLevel::LevelII,
        },
    );
    assert!(matches!(h.completed(S2, x), Some(Reply::Opened { .. })));
    assert!(matches!(h.completed(S3, y), Some(Reply::Opened { .. })));
    assert_eq!(h.e.stats().breaks_acked_total, 2);
}

/// Attribute-only ("stat") opens break nothing (MS-FSA 2.1.5.1.2, as Windows and Samba).
#[test]
fn stat_open_does_not_break() {
    let mut h = H::new();
    h.open_ok(S1, with_oplock(file_open(F1, RW, 0), OplockLevel::Batch));
    h.open_ok(S2, file_open(F1, access::FILE_READ_ATTRIBUTES, 0));
    assert!(h.breaks_for(S1).is_empty());
}

/// MS-FSA 2.1.5.17 as Windows implements it (KB 306981): no Level II oplock on a file with
/// byte-range locks.
#[test]
fn no_level_ii_oplock_while_byte_range_locks_exist() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    assert_eq!(
        h.lock(S1, a, 0, 1, false, true),
        Reply::Done(Status::Success)
    );
    let (_, g) = h.open_ok(
        S2,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::LevelII),
    );
    assert_eq!(g, OplockGrant::None);
    assert_eq!(h.unlock(S1, a, 0, 1), Reply::Done(Status::Success));
    let (_, g) = h.open_ok(
        S2,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    assert_eq!(g, OplockGrant::Oplock(OplockLevel::LevelII));
}

/// MS-FSA 2.1.5.1.2 as Windows and Samba order it: an open that fails the sharing check only
/// breaks handle caching, so an exclusive oplock is not broken at all (smbtorture
/// oplock.exclusive1) while a batch oplock is broken to Level II and the open waits for it.
#[test]
fn sharing_violation_breaks_only_handle_caching() {
    let mut h = H::new();
    h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, 0), OplockLevel::Exclusive),
    );
    let (_, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Done(Status::SharingViolation));
    assert!(
        h.breaks_for(S1).is_empty(),
        "exclusive oplock must not break"
    );

    let (b, _) = h.open_ok(S1, with_oplock(file_open(F2, RW, 0), OplockLevel::Batch));
    let (id, r) = h.call(S2, Request::Open(file_open(F2, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![oplock_break(b, OplockLevel::LevelII)]
    );
    assert!(matches!(
        h.req(
            S1,
            Request::OplockBreakAck {
                open: b,
                level: OplockLevel::LevelII
            }
        ),
        Reply::Acked { .. }
    ));
    assert_eq!(
        h.completed(S2, id),
        Some(Reply::Done(Status::SharingViolation))
    );
}
