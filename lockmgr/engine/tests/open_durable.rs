//! `OpenDurable`: a CREATE with a durable request in one step (issue 14), and its rollback
//! rule: the open and its durable record appear together or not at all.

mod common;
use common::*;
use lockmgr_engine::*;

const KEY: u64 = 0x0000_0003_0000_0001;
const BLOB: &[u8] = b"share\0path";

fn durable(key: u64, persistent: bool) -> DurableRequest {
    DurableRequest {
        key,
        timeout_ms: 60_000,
        persistent,
        blob: BLOB.to_vec(),
    }
}

fn open_durable(h: &mut H, s: SessionId, open: OpenRequest, d: DurableRequest) -> Reply {
    h.req(s, Request::OpenDurable { open, durable: d })
}

fn batch(file: FileId) -> OpenRequest {
    with_oplock(file_open(file, RW, share::READ), OplockLevel::Batch)
}

fn lookup(h: &mut H, s: SessionId, key: u64) -> Reply {
    h.req(s, Request::DurableLookup { key })
}

/// The open the reply granted, durable or not.
fn granted(r: &Reply) -> OpenId {
    match r {
        Reply::Opened { open, .. } | Reply::OpenedDurable { open, .. } => *open,
        other => panic!("not granted: {other:?}"),
    }
}

#[test]
fn batch_open_is_made_durable_in_the_same_step() {
    let mut h = H::new();
    let r = open_durable(&mut h, S1, batch(F1), durable(KEY, false));
    let Reply::OpenedDurable { open, grant } = r else {
        panic!("expected a durable open, got {r:?}");
    };
    assert_eq!(grant, OplockGrant::Oplock(OplockLevel::Batch));
    // While its owner has it, the durable open is found but not handed out.
    assert_eq!(
        lookup(&mut h, S2, KEY),
        Reply::Done(Status::InvalidDeviceState)
    );
    // The node dies: the open stays, disconnected, with the blob sent along with the open.
    h.e.end_session(h.now, S1);
    assert_eq!(
        lookup(&mut h, S2, KEY),
        Reply::Durable {
            open,
            blob: BLOB.to_vec()
        }
    );
}

#[test]
fn lease_with_handle_caching_is_made_durable() {
    let mut h = H::new();
    let o = with_lease(
        file_open(F1, RW, SHARE_ALL),
        G1,
        7,
        LeaseState::RWH,
        Some(0),
    );
    let r = open_durable(&mut h, S1, o, durable(KEY, false));
    assert!(matches!(r, Reply::OpenedDurable { .. }), "{r:?}");
}

#[test]
fn open_without_handle_caching_is_granted_without_durability() {
    let mut h = H::new();
    let r = open_durable(
        &mut h,
        S1,
        file_open(F1, RW, share::READ),
        durable(KEY, false),
    );
    assert!(
        matches!(
            r,
            Reply::Opened {
                grant: OplockGrant::None,
                ..
            }
        ),
        "{r:?}"
    );
    // No durable record: the key is unknown, and the node's death closes the open.
    assert_eq!(lookup(&mut h, S2, KEY), Reply::Done(Status::NotFound));
    h.e.end_session(h.now, S1);
    h.open_ok(S2, file_open(F1, RW, 0));
}

#[test]
fn persistent_open_needs_no_caching_but_a_directory_is_never_durable() {
    let mut h = H::new();
    let r = open_durable(&mut h, S1, file_open(F1, RW, SHARE_ALL), durable(KEY, true));
    assert!(
        matches!(
            r,
            Reply::OpenedDurable {
                grant: OplockGrant::None,
                ..
            }
        ),
        "{r:?}"
    );
    let dir = OpenRequest {
        directory: true,
        ..file_open(F2, RW, SHARE_ALL)
    };
    let r = open_durable(&mut h, S1, dir, durable(KEY + 1, true));
    assert!(matches!(r, Reply::Opened { .. }), "{r:?}");
    assert_eq!(lookup(&mut h, S2, KEY + 1), Reply::Done(Status::NotFound));
}

/// Rollback rule, the open fails: no durable record is left behind, and the key stays free.
#[test]
fn failed_open_leaves_no_durable_record() {
    let mut h = H::new();
    h.open_ok(S1, file_open(F1, RW, 0));
    let r = open_durable(&mut h, S2, batch(F1), durable(KEY, false));
    assert_eq!(r, Reply::Done(Status::SharingViolation));
    assert_eq!(lookup(&mut h, S3, KEY), Reply::Done(Status::NotFound));
    let r = open_durable(&mut h, S2, batch(F2), durable(KEY, false));
    assert!(
        matches!(r, Reply::OpenedDurable { .. }),
        "the key is free: {r:?}"
    );
}

/// Rollback rule, the durable part is refused (its key is another open's): the open is
/// granted exactly as `Open` grants it, not durable, and the other open keeps the key.
#[test]
fn taken_key_grants_the_open_without_durability() {
    let mut h = H::new();
    let first = open_durable(&mut h, S1, batch(F1), durable(KEY, false));
    let first = granted(&first);
    let r = open_durable(&mut h, S2, batch(F2), durable(KEY, false));
    assert!(
        matches!(
            r,
            Reply::Opened {
                grant: OplockGrant::Oplock(OplockLevel::Batch),
                ..
            }
        ),
        "{r:?}"
    );
    // S2's open is a plain one: its node's death closes it.
    h.e.end_session(h.now, S2);
    h.open_ok(S3, file_open(F2, RW, 0));
    // S1's open still owns the key.
    h.e.end_session(h.now, S1);
    assert_eq!(
        lookup(&mut h, S3, KEY),
        Reply::Durable {
            open: first,
            blob: BLOB.to_vec()
        }
    );
}

#[test]
fn oversized_blob_grants_the_open_without_durability() {
    let mut h = H::new();
    let mut d = durable(KEY, false);
    d.blob = vec![0; MAX_DURABLE_BLOB + 1];
    let r = open_durable(&mut h, S1, batch(F1), d);
    assert!(matches!(r, Reply::Opened { .. }), "{r:?}");
    assert_eq!(lookup(&mut h, S2, KEY), Reply::Done(Status::NotFound));
}

/// A deferred `OpenDurable` keeps its durable request and applies it with the grant.
#[test]
fn deferred_open_is_made_durable_when_granted() {
    let mut h = H::new();
    let (holder, _) = h.open_ok(
        S1,
        with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch),
    );
    let o = with_oplock(file_open(F1, RW, SHARE_ALL), OplockLevel::Batch);
    let (id, r) = h.call(
        S2,
        Request::OpenDurable {
            open: o,
            durable: durable(KEY, false),
        },
    );
    assert_eq!(r, Reply::Pending);
    assert_eq!(lookup(&mut h, S3, KEY), Reply::Done(Status::NotFound));
    // The holder closes instead of acknowledging: the waiting open gets the batch oplock.
    assert_eq!(h.close(S1, holder), Reply::Closed { delete_file: false });
    let done = h.completed(S2, id).expect("the deferred open completes");
    assert!(
        matches!(
            done,
            Reply::OpenedDurable {
                grant: OplockGrant::Oplock(OplockLevel::Batch),
                ..
            }
        ),
        "{done:?}"
    );
    assert_eq!(
        lookup(&mut h, S3, KEY),
        Reply::Done(Status::InvalidDeviceState)
    );
}

/// `OpenDurable` answers what `Open` then `SetDurable` answered, step for step.
#[test]
fn same_state_as_open_then_set_durable() {
    let run = |folded: bool| {
        let mut h = H::new();
        let o = with_lease(
            file_open(F1, RW, SHARE_ALL),
            G1,
            7,
            LeaseState::RWH,
            Some(0),
        );
        if folded {
            open_durable(&mut h, S1, o, durable(KEY, false));
        } else {
            let (open, _) = h.open_ok(S1, o);
            let r = h.req(
                S1,
                Request::SetDurable {
                    open,
                    key: KEY,
                    timeout_ms: 60_000,
                    persistent: false,
                    blob: BLOB.to_vec(),
                },
            );
            assert_eq!(r, Reply::Done(Status::Success));
        }
        h.e.end_session(h.now, S1);
        (h.e.snapshot(), lookup(&mut h, S2, KEY))
    };
    assert_eq!(run(true), run(false));
}

/// Only handle caching makes a durable handle: an exclusive oplock or an RW lease does not.
#[test]
fn caching_without_handle_is_not_durable() {
    let mut h = H::new();
    let exclusive = with_oplock(file_open(F1, RW, share::READ), OplockLevel::Exclusive);
    let r = open_durable(&mut h, S1, exclusive, durable(KEY, false));
    assert!(
        matches!(
            r,
            Reply::Opened {
                grant: OplockGrant::Oplock(OplockLevel::Exclusive),
                ..
            }
        ),
        "{r:?}"
    );
    let rw = with_lease(file_open(F2, RW, SHARE_ALL), G1, 9, LeaseState::RW, Some(0));
    let r = open_durable(&mut h, S1, rw, durable(KEY + 1, false));
    assert!(matches!(r, Reply::Opened { .. }), "{r:?}");
    assert_eq!(lookup(&mut h, S2, KEY), Reply::Done(Status::NotFound));
    assert_eq!(lookup(&mut h, S2, KEY + 1), Reply::Done(Status::NotFound));
}
