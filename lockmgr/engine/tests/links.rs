//! Delete-pending per link, not per file (issue 12 item 9; MS-FSA 2.1.5.14.3 sets
//! Open.Link.IsDeleted, 2.1.5.1.2 refuses creates through a deleted link, 2.1.5.4 removes the
//! link when its last open closes, 2.1.5.11.27 reports Open.Link.IsDeleted as
//! FileStandardInformation.DeletePending to every open of that link).

mod common;

use common::*;
use lockmgr_engine::*;

/// Two hard links of F1.
const LINK_A: u64 = 0xa;
const LINK_B: u64 = 0xb;

fn through(link: u64, access: u32) -> OpenRequest {
    OpenRequest {
        link,
        ..file_open(F1, access, SHARE_ALL)
    }
}

fn set_delete(h: &mut H, s: SessionId, open: OpenId, delete: bool) {
    let r = h.req(s, Request::SetDeletePending { open, delete });
    assert_eq!(r, Reply::Done(Status::Success));
}

fn usage(h: &mut H, s: SessionId, except: OpenId) -> FileUsage {
    match h.req(
        s,
        Request::QueryUsage {
            file: F1,
            except: Some(except),
        },
    ) {
        Reply::Usage(u) => u,
        other => panic!("usage: {other:?}"),
    }
}

/// Deleting `a` leaves `b` openable; opens of `a` get DELETE_PENDING. The last close of `a`
/// removes the name `a` although `b` is still open, and closing `b` deletes nothing.
#[test]
fn delete_pending_belongs_to_the_link_it_was_set_through() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, through(LINK_A, access::DELETE));
    let (b, _) = h.open_ok(S2, through(LINK_B, RW));
    set_delete(&mut h, S1, a, true);
    assert_eq!(
        h.open(S3, through(LINK_A, RW)),
        Reply::Done(Status::DeletePending)
    );
    let (b2, _) = h.open_ok(S3, through(LINK_B, RW));
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: true });
    assert_eq!(h.close(S2, b), Reply::Closed { delete_file: false });
    assert_eq!(h.close(S3, b2), Reply::Closed { delete_file: false });
    // The name `a` went with its last open: a new file of that name is no longer refused.
    h.open_ok(S3, through(LINK_A, RW));
}

/// FileStandardInformation.DeletePending is the link's, whoever set it: a second handle of
/// the same link sees it, a handle of the other link does not; the file counts one deleted
/// link. Clearing it through the other handle of the link clears it for both.
#[test]
fn every_open_of_the_link_sees_its_delete_pending() {
    let mut h = H::new();
    let (a1, _) = h.open_ok(S1, through(LINK_A, access::DELETE));
    let (a2, _) = h.open_ok(S2, through(LINK_A, access::DELETE | RW));
    let (b, _) = h.open_ok(S2, through(LINK_B, RW));
    assert!(!usage(&mut h, S2, a2).except_deleted);
    set_delete(&mut h, S1, a1, true);
    let u = usage(&mut h, S2, a2);
    assert!(u.except_deleted);
    assert_eq!(u.deleted_links, 1);
    let u = usage(&mut h, S2, b);
    assert!(!u.except_deleted);
    assert_eq!(u.deleted_links, 1);
    set_delete(&mut h, S2, a2, false);
    assert!(!usage(&mut h, S1, a1).except_deleted);
    assert_eq!(usage(&mut h, S1, a1).deleted_links, 0);
    // Nothing is deleted any more when the link's opens close.
    assert_eq!(h.close(S1, a1), Reply::Closed { delete_file: false });
    assert_eq!(h.close(S2, a2), Reply::Closed { delete_file: false });
}

/// The close of a delete-on-close handle makes its link delete-pending: the file is deleted
/// (that name) by the last close of the link, not of the file.
#[test]
fn delete_on_close_deletes_the_name_at_the_last_close_of_the_link() {
    let mut h = H::new();
    let mut doc = through(LINK_A, access::DELETE);
    doc.delete_on_close = true;
    let (a1, _) = h.open_ok(S1, doc);
    let (a2, _) = h.open_ok(S2, through(LINK_A, RW));
    let (b, _) = h.open_ok(S2, through(LINK_B, RW));
    assert_eq!(h.close(S1, a1), Reply::Closed { delete_file: false });
    assert!(usage(&mut h, S2, a2).except_deleted);
    assert_eq!(h.close(S2, a2), Reply::Closed { delete_file: true });
    assert_eq!(h.close(S2, b), Reply::Closed { delete_file: false });
}

/// A rename moves the link with its opens and its delete-pending mark: a create through the
/// new name is refused, the old name is free, and the last close deletes (the new name).
#[test]
fn rename_carries_the_delete_pending_mark_to_the_new_name() {
    const LINK_C: u64 = 0xc;
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, through(LINK_A, access::DELETE));
    let (a2, _) = h.open_ok(S2, through(LINK_A, RW));
    set_delete(&mut h, S1, a, true);
    let r = h.req(
        S1,
        Request::Relink {
            open: a,
            link: LINK_C,
        },
    );
    assert_eq!(r, Reply::Done(Status::Success));
    assert_eq!(
        h.open(S3, through(LINK_C, RW)),
        Reply::Done(Status::DeletePending)
    );
    // The other handle of the link went with it.
    assert!(usage(&mut h, S2, a2).except_deleted);
    let (fresh, _) = h.open_ok(S3, through(LINK_A, RW));
    assert_eq!(h.close(S3, fresh), Reply::Closed { delete_file: false });
    assert_eq!(h.close(S2, a2), Reply::Closed { delete_file: false });
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: true });
}

/// A named stream opened through a deleted link of its file is refused; through another
/// link it opens. The stream's own delete-pending is the stream's, whatever link it was
/// opened through.
#[test]
fn streams_follow_the_link_of_their_file() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, through(LINK_A, access::DELETE));
    set_delete(&mut h, S1, a, true);
    let stream = |link| OpenRequest {
        stream_base: Some(F1),
        link,
        ..file_open(F2, access::FILE_READ_DATA | access::DELETE, SHARE_ALL)
    };
    assert_eq!(
        h.open(S2, stream(LINK_A)),
        Reply::Done(Status::DeletePending)
    );
    let (sb, _) = h.open_ok(S2, stream(LINK_B));
    set_delete(&mut h, S2, sb, true);
    // The stream is delete-pending through either link of its file.
    assert_eq!(
        h.open(S3, stream(LINK_B)),
        Reply::Done(Status::DeletePending)
    );
    assert_eq!(h.close(S2, sb), Reply::Closed { delete_file: true });
}

/// Callers that do not tell links apart (link 0 everywhere) keep the per-file behaviour.
#[test]
fn link_zero_is_one_name_for_every_open() {
    let mut h = H::new();
    let (a, _) = h.open_ok(S1, file_open(F1, access::DELETE, SHARE_ALL));
    let (b, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    set_delete(&mut h, S1, a, true);
    assert_eq!(
        h.open(S3, file_open(F1, RW, SHARE_ALL)),
        Reply::Done(Status::DeletePending)
    );
    assert_eq!(h.close(S1, a), Reply::Closed { delete_file: false });
    assert_eq!(h.close(S2, b), Reply::Closed { delete_file: true });
}
