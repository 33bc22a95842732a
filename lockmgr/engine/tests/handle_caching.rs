//! Handle caching around deletes, renames and disconnects (issue 12 items 1, 2, 4, 5):
//! MS-FSA 2.1.4.12 (SET_INFORMATION rename / disposition), MS-SMB2 3.3.7.1 (which durable
//! opens outlive their connection), and Samba's scavenging of disconnected durable opens.

mod common;

use common::*;
use lockmgr_engine::*;

const DURABLE_KEY: u64 = 0x0000_0003_0000_0001;

fn make_durable(h: &mut H, s: SessionId, open: OpenId) {
    let r = h.req(
        s,
        Request::SetDurable {
            open,
            key: DURABLE_KEY,
            timeout_ms: 60_000,
            persistent: false,
            blob: b"share\0path".to_vec(),
        },
    );
    assert_eq!(r, Reply::Done(Status::Success));
}

fn lease_break_to(key: u128, current: LeaseState, new: LeaseState) -> Notification {
    Notification::LeaseBreak {
        client_guid: G1,
        key: LeaseKey(key),
        current,
        new,
        epoch: None,
        ack_required: true,
    }
}

fn rh_lease_open(h: &mut H, s: SessionId, key: u128) -> OpenId {
    let (open, g) = h.open_ok(
        s,
        with_lease(
            file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
            G1,
            key,
            LeaseState::RH,
            None,
        ),
    );
    assert_eq!(lease_state(&g), LeaseState::RH);
    open
}

/// Item 1 (smbtorture lease.unlink): a delete through a handle without a lease (what
/// smb2_util_unlink and Linux cifs do) first takes handle caching away from the other leases
/// and waits for the ack, so the file is gone once their client closes the cached handle.
#[test]
fn delete_through_plain_handle_breaks_other_leases_handle_caching() {
    let mut h = H::new();
    rh_lease_open(&mut h, S1, 1);
    let mut unlink = file_open(F1, access::DELETE, SHARE_ALL);
    unlink.delete_on_close = true;
    let (d, _) = h.open_ok(S2, unlink);
    let (id, r) = h.call(S2, Request::BreakForRename { open: d });
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break_to(1, LeaseState::RH, LeaseState::READ)]
    );
    assert_eq!(h.completed(S2, id), None);
    let r = h.req(
        S1,
        Request::LeaseBreakAck {
            client_guid: G1,
            key: LeaseKey(1),
            state: LeaseState::READ,
        },
    );
    assert!(matches!(r, Reply::Acked { .. }), "{r:?}");
    assert_eq!(h.completed(S2, id), Some(Reply::Done(Status::Success)));
}

/// Item 1, second half of lease.unlink: the handle setting delete-pending keeps its own
/// lease; only the other lease is broken.
#[test]
fn delete_through_lease_handle_spares_its_own_lease() {
    let mut h = H::new();
    rh_lease_open(&mut h, S1, 1);
    let (b, g) = h.open_ok(
        S2,
        with_lease(
            file_open(F1, access::FILE_READ_DATA | access::DELETE, SHARE_ALL),
            G2,
            2,
            LeaseState::RH,
            None,
        ),
    );
    assert_eq!(lease_state(&g), LeaseState::RH);
    let (_, r) = h.call(S2, Request::BreakForRename { open: b });
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break_to(1, LeaseState::RH, LeaseState::READ)]
    );
    assert!(h.breaks_for(S2).is_empty(), "own lease broken");
}

/// Item 2: a rename through a plain handle breaks handle caching too (Samba 4.22 breaks H
/// for any renamer), and a batch oplock, the oplock with handle caching, breaks to none.
#[test]
fn rename_through_plain_handle_breaks_batch_oplock() {
    let mut h = H::new();
    let (batch, g) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    assert_eq!(g, OplockGrant::Oplock(OplockLevel::Batch));
    // An attributes-only open leaves the batch oplock in place.
    let (stat, _) = h.open_ok(S2, file_open(F1, access::FILE_READ_ATTRIBUTES, SHARE_ALL));
    assert!(h.breaks_for(S1).is_empty());
    let (id, r) = h.call(S2, Request::BreakForRename { open: stat });
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![Notification::OplockBreak {
            open: batch,
            new_level: OplockLevel::None,
        }]
    );
    let r = h.req(
        S1,
        Request::OplockBreakAck {
            open: batch,
            level: OplockLevel::None,
        },
    );
    assert_eq!(
        r,
        Reply::Acked {
            grant: OplockGrant::None
        }
    );
    assert_eq!(h.completed(S2, id), Some(Reply::Done(Status::Success)));
}

/// Level II oplocks and leases without H have no handle caching to lose: nothing waits.
#[test]
fn rename_leaves_caching_without_handle_alone() {
    let mut h = H::new();
    h.open_ok(
        S1,
        with_oplock(
            file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
            OplockLevel::LevelII,
        ),
    );
    h.open_ok(
        S1,
        with_lease(
            file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
            G1,
            3,
            LeaseState::READ,
            None,
        ),
    );
    let (b, _) = h.open_ok(S2, file_open(F1, access::DELETE, SHARE_ALL));
    h.take_events();
    assert_eq!(
        h.req(S2, Request::BreakForRename { open: b }),
        Reply::Done(Status::Success)
    );
    assert!(h.take_events().is_empty());
}

/// Item 4: a disconnected durable open holding handle caching is purged, not broken, when a
/// delete or rename needs its handle caching gone; nothing waits for an ack nobody can send.
#[test]
fn handle_break_purges_disconnected_durable_holder() {
    let mut h = H::new();
    let open = rh_lease_open(&mut h, S1, 7);
    make_durable(&mut h, S1, open);
    h.e.end_session(h.now, S1);
    assert!(matches!(
        h.req(S2, Request::DurableLookup { key: DURABLE_KEY }),
        Reply::Durable { .. }
    ));
    let (d, _) = h.open_ok(S2, file_open(F1, access::DELETE, SHARE_ALL));
    assert_eq!(
        h.req(S2, Request::BreakForRename { open: d }),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        h.req(S2, Request::DurableLookup { key: DURABLE_KEY }),
        Reply::Done(Status::NotFound)
    );
}

/// Item 4: a write next to a disconnected RH lease would need an acknowledged break; the
/// open is purged instead, so a later create does not wait out the break timeout.
#[test]
fn write_next_to_disconnected_handle_lease_does_not_hold_up_creates() {
    let mut h = H::new();
    let open = rh_lease_open(&mut h, S1, 7);
    make_durable(&mut h, S1, open);
    h.e.end_session(h.now, S1);
    let (w, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    assert_eq!(h.io(S2, w, 0, 1, true), Status::Success);
    assert!(matches!(
        h.open(S3, file_open(F1, access::FILE_READ_DATA, SHARE_ALL)),
        Reply::Opened { .. }
    ));
}

/// Item 5 (MS-SMB2 3.3.7.1): a durable open whose batch oplock was broken to Level II is not
/// kept when its connection goes: it is closed at once, and its byte-range locks with it.
#[test]
fn durable_open_without_handle_caching_closes_on_disconnect() {
    let mut h = H::new();
    let (d, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    make_durable(&mut h, S1, d);
    assert_eq!(
        h.lock(S1, d, 0, 10, true, true),
        Reply::Done(Status::Success)
    );
    // A second opener breaks the batch oplock to Level II.
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    let r = h.req(
        S1,
        Request::OplockBreakAck {
            open: d,
            level: OplockLevel::LevelII,
        },
    );
    assert!(matches!(r, Reply::Acked { .. }), "{r:?}");
    let Some(Reply::Opened { open: o2, .. }) = h.completed(S2, id) else {
        panic!("second open not granted");
    };
    assert_eq!(
        h.req(S1, Request::Disconnect { open: d }),
        Reply::Closed { delete_file: false }
    );
    assert_eq!(
        h.req(S2, Request::DurableLookup { key: DURABLE_KEY }),
        Reply::Done(Status::NotFound)
    );
    assert_eq!(h.io(S2, o2, 0, 1, true), Status::Success);
}

/// Item 5 when the whole node goes away: a durable open with a read-only lease is released
/// with its session, one with RH stays disconnected.
#[test]
fn node_death_keeps_only_durable_opens_with_handle_caching() {
    let mut h = H::new();
    let (r_only, g) = h.open_ok(
        S1,
        with_lease(file_open(F2, RW, SHARE_ALL), G1, 8, LeaseState::READ, None),
    );
    assert_eq!(lease_state(&g), LeaseState::READ);
    make_durable(&mut h, S1, r_only);
    assert_eq!(
        h.lock(S1, r_only, 0, 10, true, true),
        Reply::Done(Status::Success)
    );
    h.e.end_session(h.now, S1);
    assert_eq!(
        h.req(S2, Request::DurableLookup { key: DURABLE_KEY }),
        Reply::Done(Status::NotFound)
    );
    let (w, _) = h.open_ok(S2, file_open(F2, RW, 0));
    assert_eq!(h.io(S2, w, 0, 1, true), Status::Success);
}

fn rwh_lease_request(key: u128) -> OpenRequest {
    with_lease(file_open(F1, RW, SHARE_ALL), G1, key, LeaseState::RWH, None)
}

/// Item 6 (MS-FSA 2.1.5.17.2): a plain open (no oplock, no lease) beside a lease does not
/// take handle caching from it; only write caching goes, since the other open may write.
/// Windows clients ask for a durable handle only with H, so a plain opener (e.g. a backup
/// tool or `cat` through Linux cifs without caching) would otherwise cost them durability.
#[test]
fn lease_keeps_handle_caching_next_to_plain_open() {
    let mut h = H::new();
    h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    let (_, g) = h.open_ok(S2, rwh_lease_request(1));
    assert_eq!(lease_state(&g), LeaseState::RH);
}

/// Item 6, the other direction: a lease granted first keeps H when a plain open arrives
/// (only W is broken), and a second lease requested after that still gets RH.
#[test]
fn plain_open_breaks_only_write_caching_and_later_leases_get_rh() {
    let mut h = H::new();
    let (_, g) = h.open_ok(S1, rwh_lease_request(1));
    assert_eq!(lease_state(&g), LeaseState::RWH);
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break_to(1, LeaseState::RWH, LeaseState::RH)]
    );
    let r = h.req(
        S1,
        Request::LeaseBreakAck {
            client_guid: G1,
            key: LeaseKey(1),
            state: LeaseState::RH,
        },
    );
    assert!(matches!(r, Reply::Acked { .. }), "{r:?}");
    assert!(matches!(h.completed(S2, id), Some(Reply::Opened { .. })));
    let (_, g) = h.open_ok(S3, rwh_lease_request(2));
    assert_eq!(lease_state(&g), LeaseState::RH);
}

/// Item 6: an oplock holder still costs a lease its handle caching (a Level II oplock and an
/// RH lease cannot both be kept consistent by one break).
#[test]
fn lease_loses_handle_caching_next_to_oplock_holder() {
    let mut h = H::new();
    let read_only = file_open(F1, access::FILE_READ_DATA, SHARE_ALL);
    let (_, g) = h.open_ok(S1, with_oplock(read_only, OplockLevel::LevelII));
    assert_eq!(g, OplockGrant::Oplock(OplockLevel::LevelII));
    let (_, g) = h.open_ok(S2, with_lease(read_only, G1, 3, LeaseState::RH, None));
    assert_eq!(lease_state(&g), LeaseState::READ);
}

/// CLOSE of a delete-on-close handle in one request (`BreakAndClose`): with nothing to
/// break it closes at once and says to unlink (the last open of a delete-pending link,
/// MS-FSA 2.1.5.4); with another lease caching the handle it waits for that break, then
/// closes, and the other open's last close is the one that deletes.
#[test]
fn break_and_close_closes_after_the_handle_break() {
    let mut h = H::new();
    let mut unlink = file_open(F2, access::DELETE, SHARE_ALL);
    unlink.delete_on_close = true;
    let (alone, _) = h.open_ok(S2, unlink);
    assert_eq!(
        h.req(S2, Request::BreakAndClose { open: alone }),
        Reply::Closed { delete_file: true }
    );

    let holder = rh_lease_open(&mut h, S1, 1);
    let mut unlink = file_open(F1, access::DELETE, SHARE_ALL);
    unlink.delete_on_close = true;
    let (d, _) = h.open_ok(S2, unlink);
    let (id, r) = h.call(S2, Request::BreakAndClose { open: d });
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.breaks_for(S1),
        vec![lease_break_to(1, LeaseState::RH, LeaseState::READ)]
    );
    assert_eq!(h.completed(S2, id), None);
    h.req(
        S1,
        Request::LeaseBreakAck {
            client_guid: G1,
            key: LeaseKey(1),
            state: LeaseState::READ,
        },
    );
    assert_eq!(
        h.completed(S2, id),
        Some(Reply::Closed { delete_file: false })
    );
    assert_eq!(h.close(S2, d), Reply::Done(Status::InvalidHandle), "closed");
    assert_eq!(h.close(S1, holder), Reply::Closed { delete_file: true });
}
