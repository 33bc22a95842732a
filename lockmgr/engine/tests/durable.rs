//! Durable opens: disconnect, purge, expiry and reclaim (MS-SMB2 3.3.5.9.7, 3.3.5.9.12,
//! 3.3.7.1).

mod common;
use common::*;
use lockmgr_engine::*;

const KEY: u64 = 0x0000_0002_0000_0001;
const TIMEOUT_MS: u32 = 60_000;

fn make_durable(h: &mut H, s: SessionId, open: OpenId, key: u64) {
    let r = h.req(
        s,
        Request::SetDurable {
            open,
            key,
            timeout_ms: TIMEOUT_MS,
            persistent: false,
            blob: b"share\0path".to_vec(),
        },
    );
    assert_eq!(r, Reply::Done(Status::Success));
}

/// A batch-oplock open with a byte-range lock, made durable, whose session then ends (the node
/// died).
fn orphaned_batch_open(h: &mut H) -> OpenId {
    let (open, grant) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, share::READ), OplockLevel::Batch),
    );
    assert_eq!(grant, OplockGrant::Oplock(OplockLevel::Batch));
    make_durable(h, S1, open, KEY);
    assert_eq!(
        h.lock(S1, open, 0, 10, true, true),
        Reply::Done(Status::Success)
    );
    h.e.end_session(h.now, S1);
    open
}

fn lookup(h: &mut H, s: SessionId, key: u64) -> Reply {
    h.req(s, Request::DurableLookup { key })
}

fn reclaim(h: &mut H, s: SessionId, open: OpenId, guid: ClientGuid) -> Reply {
    h.req(
        s,
        Request::Reclaim {
            key: KEY,
            open,
            client_guid: guid,
        },
    )
}

#[test]
fn node_death_leaves_durable_open_disconnected_with_its_locks() {
    let mut h = H::new();
    // Read-handle caching: another reader takes nothing away from it, so it is not purged.
    let o = with_lease(file_open(F1, RW, SHARE_ALL), G1, 7, LeaseState::RH, None);
    let (open, _) = h.open_ok(S1, o);
    make_durable(&mut h, S1, open, KEY);
    assert_eq!(
        h.lock(S1, open, 0, 10, true, true),
        Reply::Done(Status::Success)
    );
    h.e.end_session(h.now, S1);
    // The byte-range lock and the share mode stay in force (MS-SMB2 3.3.7.1 keeps the open).
    let (other, _) = h.open_ok(S2, file_open(F1, access::FILE_READ_DATA, SHARE_ALL));
    assert_eq!(h.io(S2, other, 0, 1, false), Status::FileLockConflict);
    assert_eq!(
        lookup(&mut h, S2, KEY),
        Reply::Durable {
            open,
            blob: b"share\0path".to_vec()
        }
    );
}

#[test]
fn reclaim_from_another_session_keeps_locks_and_oplock() {
    let mut h = H::new();
    let open = orphaned_batch_open(&mut h);
    let r = reclaim(&mut h, S2, open, G2);
    assert_eq!(
        r,
        Reply::Opened {
            open,
            grant: OplockGrant::Oplock(OplockLevel::Batch)
        }
    );
    // Now owned by S2: its lock is S2's, and I/O through it passes.
    assert_eq!(h.io(S2, open, 0, 1, true), Status::Success);
    assert_eq!(h.unlock(S2, open, 0, 10), Reply::Done(Status::Success));
    // Reclaimed once: a second reclaim or lookup finds nothing.
    assert_eq!(reclaim(&mut h, S3, open, G2), Reply::Done(Status::NotFound));
    assert_eq!(
        lookup(&mut h, S3, KEY),
        Reply::Done(Status::InvalidDeviceState)
    );
    assert_eq!(h.close(S2, open), Reply::Closed { delete_file: false });
}

#[test]
fn connected_durable_open_cannot_be_looked_up_or_reclaimed() {
    let mut h = H::new();
    let (open, _) = h.open_ok(S1, with_oplock(file_open(F1, RW, 0), OplockLevel::Batch));
    make_durable(&mut h, S1, open, KEY);
    assert_eq!(
        lookup(&mut h, S2, KEY),
        Reply::Done(Status::InvalidDeviceState)
    );
    assert_eq!(reclaim(&mut h, S2, open, G1), Reply::Done(Status::NotFound));
    assert_eq!(lookup(&mut h, S2, KEY + 1), Reply::Done(Status::NotFound));
}

#[test]
fn disconnect_of_durable_open_keeps_it_and_other_opens_close() {
    let mut h = H::new();
    let (d, _) = h.open_ok(S1, with_oplock(file_open(F1, RW, 0), OplockLevel::Batch));
    make_durable(&mut h, S1, d, KEY);
    let (plain, _) = h.open_ok(S1, file_open(F2, RW, 0));
    assert_eq!(
        h.req(S1, Request::Disconnect { open: d }),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        h.req(S1, Request::Disconnect { open: plain }),
        Reply::Closed { delete_file: false }
    );
    // The disconnected open is nobody's: its old session cannot close it.
    assert_eq!(h.close(S1, d), Reply::Done(Status::InvalidHandle));
    assert!(matches!(lookup(&mut h, S2, KEY), Reply::Durable { .. }));
}

#[test]
fn conflicting_create_purges_disconnected_open_instead_of_breaking() {
    // MS-SMB2 3.3.5.9: the disconnected client cannot acknowledge a break; Samba purges it.
    let mut h = H::new();
    let open = orphaned_batch_open(&mut h);
    let (o2, grant) = h.open_ok(
        S2,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    assert_eq!(grant, OplockGrant::Oplock(OplockLevel::Batch));
    assert!(
        h.take_events().is_empty(),
        "no break sent for a disconnected open"
    );
    // Its lock went with it.
    assert_eq!(h.io(S2, o2, 0, 1, true), Status::Success);
    assert_eq!(reclaim(&mut h, S3, open, G1), Reply::Done(Status::NotFound));
}

#[test]
fn compatible_create_leaves_disconnected_lease_open_alone() {
    let mut h = H::new();
    let o = with_lease(
        file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
        G1,
        7,
        LeaseState::RH,
        None,
    );
    let (open, g) = h.open_ok(S1, o);
    assert_eq!(lease_state(&g), LeaseState::RH);
    make_durable(&mut h, S1, open, KEY);
    h.e.end_session(h.now, S1);
    // A reader with share-all takes nothing away from RH: the open survives.
    h.open_ok(S2, file_open(F1, access::FILE_READ_DATA, SHARE_ALL));
    assert!(matches!(lookup(&mut h, S3, KEY), Reply::Durable { .. }));
    // A lease belongs to its client: another ClientGuid cannot reclaim it.
    assert_eq!(reclaim(&mut h, S3, open, G2), Reply::Done(Status::NotFound));
    match reclaim(&mut h, S3, open, G1) {
        Reply::Opened { open: o, grant } => {
            assert_eq!(o, open);
            assert_eq!(lease_state(&grant), LeaseState::RH);
        }
        other => panic!("reclaim failed: {other:?}"),
    }
}

#[test]
fn timeout_releases_disconnected_open() {
    let mut h = H::new();
    let open = orphaned_batch_open(&mut h);
    assert!(h.e.poll_timeout().is_some());
    h.advance(Duration::from_millis(u64::from(TIMEOUT_MS) - 1));
    assert!(matches!(lookup(&mut h, S2, KEY), Reply::Durable { .. }));
    h.advance(Duration::from_millis(1));
    assert_eq!(lookup(&mut h, S2, KEY), Reply::Done(Status::NotFound));
    assert_eq!(reclaim(&mut h, S2, open, G1), Reply::Done(Status::NotFound));
    // Share mode and lock are gone with it.
    let (o2, _) = h.open_ok(S2, file_open(F1, RW, 0));
    assert_eq!(h.io(S2, o2, 0, 1, true), Status::Success);
}

#[test]
fn durable_keys_are_unique() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    let (b, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    make_durable(&mut h, S1, a, KEY);
    let r = h.req(
        S2,
        Request::SetDurable {
            open: b,
            key: KEY,
            timeout_ms: 1,
            persistent: false,
            blob: Vec::new(),
        },
    );
    assert_eq!(r, Reply::Done(Status::InvalidParameter));
    // Another session cannot make S1's open durable.
    let r = h.req(
        S2,
        Request::SetDurable {
            open: a,
            key: 5,
            timeout_ms: 1,
            persistent: false,
            blob: Vec::new(),
        },
    );
    assert_eq!(r, Reply::Done(Status::InvalidHandle));
    // Closing frees the key.
    h.close(S1, a);
    make_durable(&mut h, S2, b, KEY);
}

#[test]
fn open_breaking_at_disconnect_is_released() {
    // A break in flight can never be acknowledged by a client that is gone: keeping the open
    // would make the waiting create wait out the break timeout.
    let mut h = H::new();
    let (open, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    make_durable(&mut h, S1, open, KEY);
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, SHARE_ALL)));
    assert_eq!(r, Reply::Pending);
    assert_eq!(
        h.req(S1, Request::Disconnect { open }),
        Reply::Closed { delete_file: false }
    );
    assert!(matches!(h.completed(S2, id), Some(Reply::Opened { .. })));
}

#[test]
fn delete_on_close_open_is_not_kept() {
    // Samba keeps no delete-on-close open durable: once disconnected nobody would unlink it.
    let mut h = H::new();
    let mut o = with_oplock(file_open(F1, RW | access::DELETE, 0), OplockLevel::Batch);
    o.delete_on_close = true;
    let (open, _) = h.open_ok(S1, o);
    make_durable(&mut h, S1, open, KEY);
    assert_eq!(
        h.req(S1, Request::Disconnect { open }),
        Reply::Closed { delete_file: true }
    );
    assert_eq!(lookup(&mut h, S2, KEY), Reply::Done(Status::NotFound));
}

/// A disconnected durable open does not count as an open of the file for a rename that
/// replaces it (MS-FSA 2.1.5.14.11 checks live opens); it is an open again once reclaimed.
#[test]
fn disconnected_open_does_not_count_in_usage() {
    let mut h = H::new();
    let open = orphaned_batch_open(&mut h);
    let usage = |h: &mut H| match h.req(
        S2,
        Request::QueryUsage {
            file: F1,
            except: None,
        },
    ) {
        Reply::Usage(u) => u.opens,
        other => panic!("usage: {other:?}"),
    };
    assert_eq!(usage(&mut h), 0);
    assert!(matches!(
        reclaim(&mut h, S3, open, ClientGuid::default()),
        Reply::Opened { .. }
    ));
    assert_eq!(usage(&mut h), 1);
}
