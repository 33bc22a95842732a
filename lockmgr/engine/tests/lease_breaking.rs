//! Leases in the Breaking state (MS-SMB2 3.3.1.4 Lease.Breaking / BreakToLeaseState,
//! 3.3.4.7, 3.3.5.9.8, 3.3.5.22.2), checked against what Windows and Samba do in smbtorture's
//! smb2.lease.breaking* tests.

mod common;

use common::*;
use lockmgr_engine::*;

const KEY: u128 = 1;

fn lease_open(s: SessionId, h: &mut H, state: LeaseState, epoch: Option<u16>) -> OplockGrant {
    let (_, g) = h.open_ok(
        s,
        with_lease(file_open(F1, RW, SHARE_ALL), G1, KEY, state, epoch),
    );
    g
}

fn ack(h: &mut H, state: LeaseState) -> Reply {
    h.req(
        S1,
        Request::LeaseBreakAck {
            client_guid: G1,
            key: LeaseKey(KEY),
            state,
        },
    )
}

fn lease_break(
    current: LeaseState,
    new: LeaseState,
    epoch: Option<u16>,
    ack: bool,
) -> Notification {
    Notification::LeaseBreak {
        client_guid: G1,
        key: LeaseKey(KEY),
        current,
        new,
        epoch,
        ack_required: ack,
    }
}

fn overwrite(o: OpenRequest) -> OpenRequest {
    OpenRequest {
        overwrite: true,
        ..o
    }
}

/// MS-SMB2 3.3.5.9.8: an open with the key of a breaking lease succeeds with the lease's
/// current state and SMB2_LEASE_FLAG_BREAK_IN_PROGRESS (lease.breaking1).
#[test]
fn same_key_open_during_break_reports_breaking() {
    let mut h = H::new();
    let g = lease_open(S1, &mut h, LeaseState::RWH, None);
    assert!(matches!(
        g,
        OplockGrant::Lease(Lease {
            breaking: false,
            ..
        })
    ));
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break(LeaseState::RWH, LeaseState::RH, None, true)]
    );
    let g = lease_open(S1, &mut h, LeaseState::RWH, None);
    assert!(matches!(
        g,
        OplockGrant::Lease(Lease {
            state: LeaseState::RWH,
            breaking: true,
            ..
        })
    ));
    assert_eq!(h.completed(S2, id), None);
    assert!(matches!(
        ack(&mut h, LeaseState::RH),
        Reply::Acked {
            grant: OplockGrant::Lease(Lease {
                state: LeaseState::RH,
                breaking: false,
                ..
            })
        }
    ));
    assert!(matches!(h.completed(S2, id), Some(Reply::Opened { .. })));
    assert!(h.breaks_for(S1).is_empty());
}

/// MS-SMB2 3.3.5.22.2: the ack may not keep more than the break asked for; a second ack
/// after the break ended is STATUS_UNSUCCESSFUL (lease.breaking2).
#[test]
fn ack_above_break_to_is_refused_and_second_ack_unsuccessful() {
    let mut h = H::new();
    lease_open(S1, &mut h, LeaseState::RWH, None);
    let (id, r) = h.call(S2, Request::Open(overwrite(file_open(F1, RW, SHARE_ALL))));
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break(LeaseState::RWH, LeaseState::NONE, None, true)]
    );
    for s in [
        LeaseState::RWH,
        LeaseState::RW,
        LeaseState::RH,
        LeaseState::READ,
    ] {
        assert_eq!(ack(&mut h, s), Reply::Done(Status::RequestNotAccepted));
    }
    assert_eq!(h.completed(S2, id), None);
    assert!(matches!(ack(&mut h, LeaseState::NONE), Reply::Acked { .. }));
    assert_eq!(
        ack(&mut h, LeaseState::NONE),
        Reply::Done(Status::Unsuccessful)
    );
    assert!(matches!(h.completed(S2, id), Some(Reply::Opened { .. })));
}

/// A conflicting open that arrives while the lease breaks sends no second break; it lowers
/// what the ack may keep, and the ack is followed by another break, one step at a time (W/H
/// first, then R), all in the same epoch (lease.breaking3, v2_breaking3).
#[test]
fn second_conflict_during_break_is_followed_up_after_ack() {
    let mut h = H::new();
    lease_open(S1, &mut h, LeaseState::RWH, Some(0x11));
    let (id2, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break(
            LeaseState::RWH,
            LeaseState::RH,
            Some(0x13),
            true
        )]
    );
    let (id3, r) = h.call(S3, Request::Open(overwrite(file_open(F1, RW, SHARE_ALL))));
    assert_eq!(r, Reply::Pending);
    assert!(h.breaks_for(S1).is_empty());

    assert!(matches!(
        ack(&mut h, LeaseState::RH),
        Reply::Acked {
            grant: OplockGrant::Lease(Lease {
                state: LeaseState::RH,
                ..
            })
        }
    ));
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break(
            LeaseState::RH,
            LeaseState::READ,
            Some(0x13),
            true
        )]
    );
    assert_eq!(h.completed(S2, id2), None);
    assert_eq!(h.completed(S3, id3), None);
    let g = lease_open(S1, &mut h, LeaseState::NONE, Some(0x11));
    assert!(matches!(
        g,
        OplockGrant::Lease(Lease {
            state: LeaseState::RH,
            breaking: true,
            epoch: Some(0x13),
            ..
        })
    ));

    assert!(matches!(ack(&mut h, LeaseState::READ), Reply::Acked { .. }));
    // From R the rest needs no ack.
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break(
            LeaseState::READ,
            LeaseState::NONE,
            Some(0x13),
            false
        )]
    );
    assert!(matches!(h.completed(S2, id2), Some(Reply::Opened { .. })));
    assert!(matches!(h.completed(S3, id3), Some(Reply::Opened { .. })));
    assert_eq!(h.e.poll_timeout(), None);
}

/// An overwrite next to an RH lease needs only the lease's read caching gone: it breaks RH to
/// none and proceeds at once, also while that break is still unacknowledged (lease.breaking4).
#[test]
fn overwrite_next_to_rh_does_not_wait_for_the_ack() {
    let mut h = H::new();
    lease_open(S1, &mut h, LeaseState::RH, None);
    let r = h.open(S2, overwrite(file_open(F1, RW, SHARE_ALL)));
    assert!(matches!(r, Reply::Opened { .. }), "{r:?}");
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break(LeaseState::RH, LeaseState::NONE, None, true)]
    );
    let r = h.open(S3, overwrite(file_open(F1, RW, SHARE_ALL)));
    assert!(matches!(r, Reply::Opened { .. }), "{r:?}");
    assert!(h.breaks_for(S1).is_empty());
    let g = lease_open(S1, &mut h, LeaseState::NONE, None);
    assert!(matches!(
        g,
        OplockGrant::Lease(Lease {
            state: LeaseState::RH,
            breaking: true,
            ..
        })
    ));
    assert!(matches!(ack(&mut h, LeaseState::NONE), Reply::Acked { .. }));
    assert!(h.breaks_for(S1).is_empty());
}

/// An ack may give up more than asked (RH asked, none acked): the break ends there with no
/// follow-up (lease.breaking6).
#[test]
fn ack_below_break_to_ends_the_break() {
    let mut h = H::new();
    lease_open(S1, &mut h, LeaseState::RWH, None);
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    h.breaks_for(S1);
    assert!(matches!(
        ack(&mut h, LeaseState::NONE),
        Reply::Acked {
            grant: OplockGrant::Lease(Lease {
                state: LeaseState::NONE,
                ..
            })
        }
    ));
    assert!(h.breaks_for(S1).is_empty());
    assert!(matches!(h.completed(S2, id), Some(Reply::Opened { .. })));
}

/// A follow-up break that is never acknowledged times out like any other (MS-SMB2 3.3.6.5):
/// the lease drops to none and the waiting opens proceed.
#[test]
fn follow_up_break_times_out() {
    let mut h = H::new();
    lease_open(S1, &mut h, LeaseState::RWH, None);
    let (id2, _) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    let (id3, _) = h.call(S3, Request::Open(overwrite(file_open(F1, RW, SHARE_ALL))));
    h.breaks_for(S1);
    assert!(matches!(ack(&mut h, LeaseState::RH), Reply::Acked { .. }));
    assert_eq!(h.breaks_for(S1).len(), 1);
    h.advance(Duration::from_secs(36));
    assert!(matches!(h.completed(S2, id2), Some(Reply::Opened { .. })));
    assert!(matches!(h.completed(S3, id3), Some(Reply::Opened { .. })));
    assert_eq!(h.e.poll_timeout(), None);
}

/// MS-FSA 2.1.5.14.11 / 2.1.4.12: a rename through a lease handle breaks the handle caching
/// of the file's other leases and waits for the ack (lease.rename_wait); so does a rename
/// through a handle without a lease.
#[test]
fn rename_through_lease_handle_waits_for_handle_break() {
    let mut h = H::new();
    let (a, _) = h.open_ok(
        S1,
        with_lease(file_open(F1, RW, SHARE_ALL), G1, KEY, LeaseState::RH, None),
    );
    let (_, g) = h.open_ok(
        S1,
        with_lease(
            file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
            G1,
            2,
            LeaseState::RH,
            None,
        ),
    );
    assert_eq!(lease_state(&g), LeaseState::RH);
    let (id, r) = h.call(S1, Request::BreakForRename { open: a });
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![Notification::LeaseBreak {
            client_guid: G1,
            key: LeaseKey(2),
            current: LeaseState::RH,
            new: LeaseState::READ,
            epoch: None,
            ack_required: true,
        }]
    );
    assert_eq!(h.completed(S1, id), None);
    let r = h.req(
        S1,
        Request::LeaseBreakAck {
            client_guid: G1,
            key: LeaseKey(2),
            state: LeaseState::READ,
        },
    );
    assert!(matches!(r, Reply::Acked { .. }), "{r:?}");
    assert_eq!(h.completed(S1, id), Some(Reply::Done(Status::Success)));
    // Nothing left with handle caching: the next rename proceeds at once.
    assert_eq!(
        h.req(S1, Request::BreakForRename { open: a }),
        Reply::Done(Status::Success)
    );
    // A rename through a handle without a lease breaks handle caching too (issue 12 item 2;
    // Samba 4.22): here the renamer's own lease above still holds RH.
    let (b, _) = h.open_ok(S2, file_open(F1, access::FILE_READ_DATA, SHARE_ALL));
    assert_eq!(
        h.req(S2, Request::BreakForRename { open: b }),
        Reply::Pending
    );
}
