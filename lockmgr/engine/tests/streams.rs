//! Named streams and their file (issue 12 item 3; MS-FSA 2.1.5.1.2.1): a stream open names
//! its base file (`OpenRequest::stream_base`), so the file's delete state covers its streams.

mod common;

use common::*;
use lockmgr_engine::*;

/// `F1:s` in these tests; F1 is the file (its unnamed stream).
const STREAM: FileId = F2;

fn stream_open(access: u32, share: u32) -> OpenRequest {
    OpenRequest {
        stream_base: Some(F1),
        ..file_open(STREAM, access, share)
    }
}

const SHARE_RW: u32 = share::READ | share::WRITE;

/// smbtorture smb2.streams.delete: with `f:s` open without FILE_SHARE_DELETE, an open of `f`
/// for DELETE (what an unlink does) is a sharing violation; once the stream is closed it
/// succeeds.
#[test]
fn stream_open_without_share_delete_blocks_delete_of_base() {
    let mut h = H::new();
    let (s, _) = h.open_ok(S1, stream_open(access::FILE_READ_DATA, SHARE_RW));
    let r = h.open(S2, file_open(F1, access::DELETE, SHARE_ALL));
    assert_eq!(r, Reply::Done(Status::SharingViolation));
    // Opens of the file without DELETE are unaffected.
    h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    assert_eq!(h.close(S1, s), Reply::Closed { delete_file: false });
    h.open_ok(S2, file_open(F1, access::DELETE, SHARE_ALL));
}

/// A stream open that shares delete, or a stat open of a stream (no data access, so no part
/// in sharing), does not stand in the way of deleting the file.
#[test]
fn stream_open_sharing_delete_or_stat_open_allows_delete_of_base() {
    let mut h = H::new();
    h.open_ok(S1, stream_open(access::FILE_READ_DATA, SHARE_ALL));
    h.open_ok(S1, stream_open(access::FILE_READ_ATTRIBUTES, 0));
    h.open_ok(S2, file_open(F1, access::DELETE, SHARE_ALL));
}

/// The DELETE conflict is about the file only: another stream of the same file may be opened
/// for DELETE next to a stream open that does not share delete.
#[test]
fn delete_open_of_another_stream_is_not_blocked() {
    let mut h = H::new();
    h.open_ok(S1, stream_open(access::FILE_READ_DATA, SHARE_RW));
    let other = OpenRequest {
        stream_base: Some(F1),
        ..file_open(FileId(0x3333), access::DELETE, SHARE_ALL)
    };
    h.open_ok(S2, other);
}

/// A delete-pending file refuses opens of its streams with DELETE_PENDING, like opens of the
/// file itself; after the file is gone (last close) a stream open is no longer refused.
#[test]
fn delete_pending_base_refuses_stream_opens() {
    let mut h = H::new();
    let mut unlink = file_open(F1, access::DELETE, SHARE_ALL);
    unlink.delete_on_close = true;
    let (d, _) = h.open_ok(S1, unlink);
    // delete-on-close is not delete-pending until the handle closes; set it explicitly.
    let r = h.req(
        S1,
        Request::SetDeletePending {
            open: d,
            delete: true,
        },
    );
    assert_eq!(r, Reply::Done(Status::Success));
    let r = h.open(S2, stream_open(access::FILE_READ_DATA, SHARE_ALL));
    assert_eq!(r, Reply::Done(Status::DeletePending));
    assert_eq!(h.close(S1, d), Reply::Closed { delete_file: true });
    h.open_ok(S2, stream_open(access::FILE_READ_DATA, SHARE_ALL));
}

/// The base file's count of stream opens that deny delete follows closes and session ends.
#[test]
fn ended_session_releases_its_stream_opens_hold_on_the_base() {
    let mut h = H::new();
    h.open_ok(S1, stream_open(access::FILE_READ_DATA, SHARE_RW));
    h.open_ok(S1, stream_open(access::FILE_READ_DATA, SHARE_RW));
    assert_eq!(
        h.open(S2, file_open(F1, access::DELETE, SHARE_ALL)),
        Reply::Done(Status::SharingViolation)
    );
    h.e.end_session(h.now, S1);
    h.open_ok(S2, file_open(F1, access::DELETE, SHARE_ALL));
}

/// smbtorture smb2.streams.delete: deleting a file while one of its streams is open (sharing
/// delete) leaves the file delete-pending until the stream is closed (MS-FSA 2.1.1.3:
/// File.OpenList holds every stream's opens; 2.1.5.4 deletes the file when it empties).
/// Meanwhile the file and its streams refuse opens with DELETE_PENDING; the stream's close
/// is the one that tells its node to unlink the file.
#[test]
fn open_stream_keeps_deleted_file_pending_until_its_close() {
    let mut h = H::new();
    let (s, _) = h.open_ok(
        S1,
        stream_open(access::FILE_READ_DATA | access::FILE_WRITE_DATA, SHARE_ALL),
    );
    let mut unlink = file_open(F1, access::DELETE, SHARE_ALL);
    unlink.delete_on_close = true;
    let (d, _) = h.open_ok(S2, unlink);
    assert_eq!(h.close(S2, d), Reply::Closed { delete_file: false });
    assert_eq!(
        h.open(S2, file_open(F1, RW, SHARE_ALL)),
        Reply::Done(Status::DeletePending)
    );
    assert_eq!(
        h.open(S2, stream_open(access::FILE_READ_DATA, SHARE_ALL)),
        Reply::Done(Status::DeletePending)
    );
    assert_eq!(h.close(S1, s), Reply::ClosedDeleteBase);
    // The name is free again.
    let (f, _) = h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
    assert_eq!(h.close(S2, f), Reply::Closed { delete_file: false });
}

/// A stream that is delete-pending itself and the last open of its delete-pending file: the
/// file goes (and the stream with it).
#[test]
fn deleted_stream_of_deleted_file_deletes_the_file() {
    let mut h = H::new();
    let (s, _) = h.open_ok(S1, stream_open(access::DELETE, SHARE_ALL));
    set_delete_pending(&mut h, S1, s);
    let (d, _) = h.open_ok(S2, file_open(F1, access::DELETE, SHARE_ALL));
    set_delete_pending(&mut h, S2, d);
    assert_eq!(h.close(S2, d), Reply::Closed { delete_file: false });
    assert_eq!(h.close(S1, s), Reply::ClosedDeleteBase);
}

/// The last open of a delete-pending file being a stream open whose session ends: nobody is
/// told to unlink, so the file is an orphaned delete, refused until the daemon takes it.
#[test]
fn ended_session_of_last_stream_open_orphans_the_deleted_file() {
    let mut h = H::new();
    h.open_ok(S1, stream_open(access::FILE_READ_DATA, SHARE_ALL));
    let (d, _) = h.open_ok(S2, file_open(F1, access::DELETE, SHARE_ALL));
    set_delete_pending(&mut h, S2, d);
    assert_eq!(h.close(S2, d), Reply::Closed { delete_file: false });
    h.e.end_session(h.now, S1);
    assert_eq!(
        h.open(S2, file_open(F1, RW, SHARE_ALL)),
        Reply::Done(Status::DeletePending)
    );
    assert_eq!(h.e.take_orphaned_deletes(), vec![F1]);
    h.open_ok(S2, file_open(F1, RW, SHARE_ALL));
}

fn set_delete_pending(h: &mut H, s: SessionId, open: OpenId) {
    let r = h.req(s, Request::SetDeletePending { open, delete: true });
    assert_eq!(r, Reply::Done(Status::Success));
}
