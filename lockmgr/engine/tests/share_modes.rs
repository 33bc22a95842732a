//! Share modes, delete-pending and session isolation.

mod common;

use common::*;
use lockmgr_engine::*;

/// MS-FSA 2.1.5.1.2.2: an existing open that does not share write denies a new writer.
#[test]
fn sharing_violation_when_existing_open_denies_write_share() {
    let mut h = H::new();
    h.open_ok(S1, file_open(F1, access::FILE_READ_DATA, share::READ));
    assert_eq!(
        h.open(S2, file_open(F1, access::FILE_WRITE_DATA, SHARE_ALL)),
        Reply::Done(Status::SharingViolation)
    );
    // Readers are still welcome.
    h.open_ok(S2, file_open(F1, access::FILE_READ_DATA, SHARE_ALL));
}

/// MS-FSA 2.1.5.1.2.2: the new open's share access must allow every existing open's access.
#[test]
fn sharing_violation_when_new_share_denies_existing_access() {
    let mut h = H::new();
    h.open_ok(S1, file_open(F1, access::FILE_WRITE_DATA, SHARE_ALL));
    assert_eq!(
        h.open(S2, file_open(F1, access::FILE_READ_DATA, share::READ)),
        Reply::Done(Status::SharingViolation)
    );
    // Delete is its own axis.
    h.open_ok(
        S2,
        file_open(F1, access::FILE_READ_DATA, share::READ | share::WRITE),
    );
    assert_eq!(
        h.open(S3, file_open(F1, access::DELETE, SHARE_ALL)),
        Reply::Done(Status::SharingViolation)
    );
}

/// MS-FSA 2.1.5.1.2.2: opens without READ/WRITE/APPEND/EXECUTE/DELETE access take no part.
#[test]
fn attribute_only_opens_do_not_take_part_in_sharing() {
    let mut h = H::new();
    h.open_ok(S1, file_open(F1, RW | access::DELETE, 0));
    h.open_ok(
        S2,
        file_open(F1, access::FILE_READ_ATTRIBUTES | access::SYNCHRONIZE, 0),
    );
    let mut h = H::new();
    h.open_ok(S1, file_open(F1, access::FILE_READ_ATTRIBUTES, 0));
    h.open_ok(S2, file_open(F1, RW, 0));
}

/// MS-SMB2 3.3.5.9 / MS-FSA 2.1.5.1.2.2: GENERIC_* bits are mapped before the check
/// (GENERIC_WRITE -> WRITE_DATA | APPEND_DATA, GENERIC_ALL / MAXIMUM_ALLOWED -> everything).
#[test]
fn generic_access_is_mapped_before_share_check() {
    let mut h = H::new();
    h.open_ok(S1, file_open(F1, access::FILE_READ_DATA, share::READ));
    assert_eq!(
        h.open(S2, file_open(F1, access::GENERIC_WRITE, SHARE_ALL)),
        Reply::Done(Status::SharingViolation)
    );
    assert_eq!(
        h.open(S2, file_open(F1, access::MAXIMUM_ALLOWED, SHARE_ALL)),
        Reply::Done(Status::SharingViolation)
    );
    h.open_ok(S2, file_open(F1, access::GENERIC_READ, SHARE_ALL));
    assert_eq!(
        map_generic(access::GENERIC_ALL) & access::DELETE,
        access::DELETE
    );
    assert_eq!(
        map_generic(access::GENERIC_WRITE) & (access::FILE_WRITE_DATA | access::FILE_APPEND_DATA),
        access::FILE_WRITE_DATA | access::FILE_APPEND_DATA
    );
    assert_eq!(map_generic(access::GENERIC_READ) & access::GENERIC_READ, 0);
}

/// MS-FSA 2.1.5.1.2 / 2.1.5.14.3: once DeletePending is set, new opens fail with
/// STATUS_DELETE_PENDING; clearing it lets them in again.
#[test]
fn delete_pending_file_refuses_new_opens() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, file_open(F1, access::DELETE, SHARE_ALL));
    assert_eq!(
        h.req(
            S1,
            Request::SetDeletePending {
                open: a,
                delete: true
            }
        ),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        h.open(S2, file_open(F1, access::FILE_READ_DATA, SHARE_ALL)),
        Reply::Done(Status::DeletePending)
    );
    assert_eq!(h.e.snapshot().delete_pending, vec![F1]);
    h.req(
        S1,
        Request::SetDeletePending {
            open: a,
            delete: false,
        },
    );
    h.open_ok(S2, file_open(F1, access::FILE_READ_DATA, SHARE_ALL));
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
}

/// MS-FSA 2.1.5.4: closing an open with DeleteOnClose sets DeletePending; the last close of
/// a delete-pending file deletes it.
#[test]
fn delete_on_close_deletes_on_last_close() {
    let mut h = H::new();
    let mut o = file_open(F1, access::DELETE | access::FILE_READ_DATA, SHARE_ALL);
    o.delete_on_close = true;
    let (a, _) = h.open_ok(S1, o);
    let (b, _) = h.open_ok(S2, file_open(F1, access::FILE_READ_DATA, SHARE_ALL));
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    // Now delete-pending: new opens are refused.
    assert_eq!(
        h.open(S3, file_open(F1, access::FILE_READ_DATA, SHARE_ALL)),
        Reply::Done(Status::DeletePending)
    );
    assert_eq!(h.close(S2, b), Reply::Closed { delete_file: true });
    // The node unlinked it: a new create starts afresh.
    h.open_ok(S3, file_open(F1, access::FILE_READ_DATA, SHARE_ALL));
}

/// MS-FSA 2.1.5.4: if the last open vanishes with its session, the deletion is recorded as
/// orphaned for the daemon to carry out.
#[test]
fn end_session_with_last_delete_pending_open_records_orphan() {
    let mut h = H::new();
    let mut o = file_open(F1, access::DELETE, SHARE_ALL);
    o.delete_on_close = true;
    h.open_ok(S1, o);
    h.e.end_session(h.now, S1);
    assert_eq!(h.e.snapshot().orphaned_deletes, vec![F1]);
    assert_eq!(h.e.stats().orphaned_deletes, 1);
    assert_eq!(
        h.open(S2, file_open(F1, access::FILE_READ_DATA, SHARE_ALL)),
        Reply::Done(Status::DeletePending)
    );
    assert_eq!(h.e.take_orphaned_deletes(), vec![F1]);
    h.open_ok(S2, file_open(F1, access::FILE_READ_DATA, SHARE_ALL));
}

/// MS-SMB2 3.3.5.9 (and the brief): no session can touch another session's opens; unknown
/// sessions are refused.
#[test]
fn other_sessions_open_is_invalid_handle() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, file_open(F1, RW, SHARE_ALL));
    assert_eq!(h.close(S2, a), Reply::Done(Status::InvalidHandle));
    assert_eq!(
        h.lock(S2, a, 0, 1, true, true),
        Reply::Done(Status::InvalidHandle)
    );
    assert_eq!(h.io(S2, a, 0, 1, false), Status::InvalidHandle);
    assert_eq!(
        h.req(
            S2,
            Request::SetDeletePending {
                open: a,
                delete: true
            }
        ),
        Reply::Done(Status::InvalidHandle)
    );
    assert_eq!(h.close(S1, OpenId(999)), Reply::Done(Status::InvalidHandle));
    assert_eq!(
        h.req(SessionId(77), Request::Close { open: a }),
        Reply::Done(Status::RequestNotAccepted)
    );
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
}

/// End of session releases every open (share modes included), lets other sessions' deferred
/// creates proceed and drops the outputs queued for the dead session.
#[test]
fn end_session_releases_everything_and_drops_its_outputs() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, with_oplock(file_open(F1, RW, 0), OplockLevel::Batch));
    assert_eq!(
        h.lock(S1, a, 0, 10, true, true),
        Reply::Done(Status::Success)
    );
    // S2's create waits for the batch break addressed to S1.
    let (id, r) = h.call(S2, Request::Open(file_open(F1, RW, 0)));
    assert_eq!(r, Reply::Pending);
    // A reply to S1 still queued when S1 dies is dropped.
    h.e.handle(
        h.now,
        S1,
        RequestId(5000),
        Request::Close {
            open: OpenId(12345),
        },
    );
    h.e.end_session(h.now, S1);
    let outs: Vec<Output> = std::iter::from_fn(|| h.e.poll_output()).collect();
    assert!(outs.iter().all(|o| match o {
        Output::Reply { session, .. } | Output::Notify { session, .. } => *session != S1,
    }));
    h.events.retain(|o| match o {
        Output::Reply { session, .. } | Output::Notify { session, .. } => *session != S1,
    });
    h.events.extend(outs);
    assert!(matches!(h.completed(S2, id), Some(Reply::Opened { .. })));
    let snap = h.e.snapshot();
    assert!(snap.opens.iter().all(|o| o.session != S1));
    assert!(snap.locks.is_empty());
    assert!(snap.breaks.is_empty());
    assert!(snap.sessions.iter().all(|s| s.session != S1));
    assert_eq!(h.e.poll_timeout(), None);
}

fn usage(h: &mut H, s: SessionId, file: FileId, except: Option<OpenId>) -> FileUsage {
    match h.req(s, Request::QueryUsage { file, except }) {
        Reply::Usage(u) => u,
        other => panic!("usage: {other:?}"),
    }
}

/// MS-FSA 2.1.5.14.11 and the Windows rules smbtorture checks: an open of the parent directory
/// with data access that does not share delete, or one holding DELETE access, blocks renames of
/// its children; a replaced target must not be open at all. The caller's own open never counts,
/// and opens without data access are counted as opens but never deny.
#[test]
fn usage_counts_other_opens() {
    let mut h = H::new();
    let (mine, _) = h.open_ok(S1, file_open(F1, access::DELETE | RW, SHARE_ALL));
    assert_eq!(usage(&mut h, S1, F1, Some(mine)), FileUsage::default());
    let (stat, _) = h.open_ok(S2, file_open(F1, access::FILE_READ_ATTRIBUTES, 0));
    let u = usage(&mut h, S1, F1, Some(mine));
    assert_eq!((u.opens, u.deny_delete, u.delete_access), (1, 0, 0));
    // Another node asks without an open of its own: the DELETE open counts.
    let u = usage(&mut h, S3, F1, None);
    assert_eq!((u.opens, u.deny_delete, u.delete_access), (2, 0, 1));
    // The parent directory F2: a lister that does not share delete, and a DELETE holder.
    h.open_ok(S2, file_open(F2, access::FILE_READ_DATA, share::READ));
    let u = usage(&mut h, S3, F2, None);
    assert_eq!((u.opens, u.deny_delete, u.delete_access), (1, 1, 0));
    // An `except` naming an open of another file is ignored.
    assert_eq!(usage(&mut h, S3, F2, Some(mine)), u);
    h.close(S2, stat);
    assert_eq!(usage(&mut h, S1, F1, Some(mine)), FileUsage::default());
}
