//! Persistent opens (continuously available shares, MS-SMB2 3.3.5.9.10, 3.3.5.9.12): kept on
//! disconnect whatever their caching, never purged, and while disconnected every create of
//! their file fails with STATUS_FILE_NOT_AVAILABLE (MS-SMB2 3.3.5.9).

mod common;
use common::*;
use lockmgr_engine::*;

const KEY: u64 = 0x0000_0003_0000_0001;
const TIMEOUT_MS: u32 = 60_000;

fn set_durable(h: &mut H, s: SessionId, open: OpenId, persistent: bool) -> Reply {
    h.req(
        s,
        Request::SetDurable {
            open,
            key: KEY,
            timeout_ms: TIMEOUT_MS,
            persistent,
            blob: b"ca\0file".to_vec(),
        },
    )
}

/// An open with no oplock and no lease, made persistent (or only durable), holding a
/// byte-range lock; then its node dies.
fn orphaned_plain_open(h: &mut H, persistent: bool) -> OpenId {
    let (open, grant) = h.open_ok(S1, file_open(F1, RW, share::READ | share::WRITE));
    assert_eq!(grant, OplockGrant::None);
    assert_eq!(
        set_durable(h, S1, open, persistent),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        h.lock(S1, open, 0, 10, true, true),
        Reply::Done(Status::Success)
    );
    h.e.end_session(h.now, S1);
    open
}

#[test]
fn persistent_open_without_caching_survives_its_node() {
    let mut h = H::new();
    let open = orphaned_plain_open(&mut h, true);
    assert!(matches!(
        h.req(S2, Request::DurableLookup { key: KEY }),
        Reply::Durable { open: o, .. } if o == open
    ));
}

#[test]
fn durable_open_without_caching_does_not() {
    // The control: MS-SMB2 3.3.7.1 keeps a plain durable open only with batch / H caching.
    let mut h = H::new();
    orphaned_plain_open(&mut h, false);
    assert_eq!(
        h.req(S2, Request::DurableLookup { key: KEY }),
        Reply::Done(Status::NotFound)
    );
    let (o2, _) = h.open_ok(S2, file_open(F1, RW, 0));
    assert_eq!(h.io(S2, o2, 0, 1, true), Status::Success);
}

#[test]
fn disconnected_persistent_open_makes_its_file_unavailable() {
    let mut h = H::new();
    orphaned_plain_open(&mut h, true);
    // Even an open that conflicts with nothing (share-all reader, stat open) is refused: a
    // durable open would have been purged or left alone instead.
    for o in [
        file_open(F1, access::FILE_READ_DATA, SHARE_ALL),
        file_open(F1, access::FILE_READ_ATTRIBUTES, SHARE_ALL),
        file_open(F1, RW, 0),
    ] {
        assert_eq!(h.open(S2, o), Reply::Done(Status::FileNotAvailable));
    }
    // Other files are not affected.
    h.open_ok(S2, file_open(F2, RW, 0));
}

#[test]
fn reclaimed_persistent_open_keeps_its_lock_and_frees_the_file() {
    let mut h = H::new();
    let open = orphaned_plain_open(&mut h, true);
    let r = h.req(
        S2,
        Request::Reclaim {
            key: KEY,
            open,
            client_guid: G1,
        },
    );
    assert_eq!(
        r,
        Reply::Opened {
            open,
            grant: OplockGrant::None
        }
    );
    // Owned again: others may open the file (share modes permitting), and the lock holds.
    let (other, _) = h.open_ok(S3, file_open(F1, access::FILE_READ_DATA, SHARE_ALL));
    assert_eq!(h.io(S3, other, 0, 1, false), Status::FileLockConflict);
    assert_eq!(h.io(S2, open, 0, 1, true), Status::Success);
}

#[test]
fn persistent_open_expires_after_its_timeout() {
    let mut h = H::new();
    orphaned_plain_open(&mut h, true);
    h.advance(Duration::from_millis(u64::from(TIMEOUT_MS) - 1));
    assert_eq!(
        h.open(S2, file_open(F1, RW, 0)),
        Reply::Done(Status::FileNotAvailable)
    );
    h.advance(Duration::from_millis(1));
    let (o2, _) = h.open_ok(S2, file_open(F1, RW, 0));
    assert_eq!(h.io(S2, o2, 0, 1, true), Status::Success);
}

#[test]
fn persistent_lease_holder_is_not_scavenged_by_a_break() {
    // A delete through another handle breaks handle caching (MS-FSA 2.1.4.12); a disconnected
    // durable holder would be purged instead of broken, a persistent one stays (its client
    // comes back for it), so its lock still holds.
    let mut h = H::new();
    let o = with_lease(file_open(F1, RW, SHARE_ALL), G1, 7, LeaseState::RH, None);
    let (open, _) = h.open_ok(S1, o);
    assert_eq!(
        set_durable(&mut h, S1, open, true),
        Reply::Done(Status::Success)
    );
    assert_eq!(
        h.lock(S1, open, 0, 10, true, true),
        Reply::Done(Status::Success)
    );
    let (other, _) = h.open_ok(
        S2,
        file_open(F1, access::FILE_READ_DATA | access::DELETE, SHARE_ALL),
    );
    h.e.end_session(h.now, S1);
    // smbd asks for the handle-caching break of a delete or rename with BreakForRename.
    assert_eq!(
        h.req(S2, Request::BreakForRename { open: other }),
        Reply::Pending
    );
    assert!(matches!(
        h.req(S3, Request::DurableLookup { key: KEY }),
        Reply::Durable { .. }
    ));
    assert_eq!(h.io(S2, other, 0, 1, false), Status::FileLockConflict);
}
