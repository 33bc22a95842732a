//! Change notify across nodes (MS-SMB2 3.3.5.19, MS-FSA 2.1.4.1): registrations per session,
//! the watched-set notifications every other session gets, the fan-out of a change to the
//! other watching sessions only (tree watches for changes below the directory), the
//! per-session cap, and the end of a session's watches with it.

mod common;

use common::*;
use lockmgr_engine::*;

const D1: FileId = FileId(0xd1);
const D2: FileId = FileId(0xd2);
const OK: Reply = Reply::Done(Status::Success);

fn change(dir: FileId, name: &str, subtree: bool) -> DirChange {
    DirChange {
        dir,
        action: 1,
        filter: 0x1,
        name: name.to_owned(),
        subtree,
    }
}

/// (session, notification) of every notification kept since the last call.
fn notes(h: &mut H) -> Vec<(SessionId, Notification)> {
    h.take_events()
        .into_iter()
        .filter_map(|o| match o {
            Output::Notify {
                session,
                notification,
            } => Some((session, notification)),
            _ => None,
        })
        .collect()
}

/// Where directory `dir` is, as the nodes in these tests register it.
fn path_of(dir: FileId) -> String {
    format!("share\\d{:x}", dir.0)
}

fn watch(dir: FileId, tree: bool) -> Request {
    Request::WatchDir {
        dir,
        tree,
        path: path_of(dir),
    }
}

fn watched(dir: FileId, state: u8) -> Notification {
    let path = if state == 0 {
        String::new()
    } else {
        path_of(dir)
    };
    Notification::DirWatched { dir, state, path }
}

#[test]
fn registering_tells_the_other_sessions_and_only_when_their_view_changes() {
    let mut h = H::new();
    assert_eq!(h.req(S1, watch(D1, false)), OK);
    assert_eq!(
        notes(&mut h),
        vec![
            (S2, watched(D1, watched::DIR)),
            (S3, watched(D1, watched::DIR))
        ]
    );
    // Registering again with the tree: the others learn of the tree; S1 sees nobody else.
    assert_eq!(h.req(S1, watch(D1, true)), OK);
    let tree = watched::DIR | watched::TREE;
    assert_eq!(
        notes(&mut h),
        vec![(S2, watched(D1, tree)), (S3, watched(D1, tree))]
    );
    // A second watcher: only S1's view changes (someone else watches now); S3's is the same.
    assert_eq!(h.req(S2, watch(D1, false)), OK);
    assert_eq!(notes(&mut h), vec![(S1, watched(D1, watched::DIR))]);
    // S1 leaves: S2 now sees nobody else, S3 sees S2 (no tree).
    assert_eq!(h.req(S1, Request::UnwatchDir { dir: D1 }), OK);
    assert_eq!(
        notes(&mut h),
        vec![(S2, watched(D1, 0)), (S3, watched(D1, watched::DIR))]
    );
    assert_eq!(h.req(S2, Request::UnwatchDir { dir: D1 }), OK);
    assert_eq!(
        notes(&mut h),
        vec![(S1, watched(D1, 0)), (S3, watched(D1, 0))]
    );
    assert_eq!(h.e.stats().watched_dirs, 0);
    // Unregistering what is not registered changes nothing.
    assert_eq!(h.req(S2, Request::UnwatchDir { dir: D1 }), OK);
    assert!(notes(&mut h).is_empty());
}

#[test]
fn a_change_goes_to_the_other_watching_sessions_only() {
    let mut h = H::new();
    h.req(S1, watch(D1, false));
    h.req(S2, watch(D1, false));
    h.req(S3, watch(D2, false));
    notes(&mut h);
    let c = change(D1, "a.txt", false);
    assert_eq!(h.req(S2, Request::DirChange(c.clone())), OK);
    // S2 made it (its own watchers heard locally), S3 watches another directory.
    assert_eq!(notes(&mut h), vec![(S1, Notification::DirChanged(c))]);
    // A change in a directory nobody else watches is forwarded to nobody.
    assert_eq!(h.req(S3, Request::DirChange(change(D2, "b", false))), OK);
    assert!(notes(&mut h).is_empty());
    let st = h.e.stats();
    assert_eq!(
        (st.dir_changes_total, st.dir_changes_forwarded_total),
        (2, 1)
    );
}

#[test]
fn a_change_below_the_directory_reaches_tree_watchers_only() {
    let mut h = H::new();
    h.req(S1, watch(D1, true));
    h.req(S2, watch(D1, false));
    notes(&mut h);
    let deep = change(D1, "sub\\x.txt", true);
    h.req(S3, Request::DirChange(deep.clone()));
    assert_eq!(notes(&mut h), vec![(S1, Notification::DirChanged(deep))]);
    let flat = change(D1, "y.txt", false);
    h.req(S3, Request::DirChange(flat.clone()));
    assert_eq!(
        notes(&mut h),
        vec![
            (S1, Notification::DirChanged(flat.clone())),
            (S2, Notification::DirChanged(flat))
        ]
    );
}

#[test]
fn a_new_session_learns_the_watched_directories() {
    let mut h = H::new();
    h.req(S1, watch(D1, true));
    h.req(S2, watch(D2, false));
    notes(&mut h);
    let s4 = SessionId(4);
    h.e.open_session(s4);
    let got: Vec<Output> = std::iter::from_fn(|| h.e.poll_output()).collect();
    assert_eq!(
        got,
        vec![
            Output::Notify {
                session: s4,
                notification: watched(D1, watched::DIR | watched::TREE)
            },
            Output::Notify {
                session: s4,
                notification: watched(D2, watched::DIR)
            },
        ]
    );
}

#[test]
fn an_ended_session_takes_its_watches_with_it() {
    let mut h = H::new();
    h.req(S1, watch(D1, false));
    notes(&mut h);
    h.e.end_session(h.now, S1);
    let got: Vec<Output> = std::iter::from_fn(|| h.e.poll_output()).collect();
    assert_eq!(
        got,
        vec![
            Output::Notify {
                session: S2,
                notification: watched(D1, 0)
            },
            Output::Notify {
                session: S3,
                notification: watched(D1, 0)
            },
        ]
    );
    assert_eq!(h.req(S2, Request::DirChange(change(D1, "a", false))), OK);
    assert!(notes(&mut h).is_empty());
    assert_eq!(h.e.stats().watched_dirs, 0);
}

#[test]
fn registrations_are_capped_per_session() {
    let mut h = H::with(Config {
        limits: SessionLimits {
            max_watches: 2,
            ..SessionLimits::default()
        },
        ..Config::default()
    });
    let full = Reply::Done(Status::InsufficientResources);
    assert_eq!(h.req(S1, watch(D1, false)), OK);
    assert_eq!(h.req(S1, watch(D2, false)), OK);
    assert_eq!(h.req(S1, watch(FileId(3), false)), full);
    // Changing the tree flag of a registered directory is not a new registration.
    assert_eq!(h.req(S1, watch(D2, true)), OK);
    // Another session has its own quota; unregistering frees one.
    assert_eq!(h.req(S2, watch(FileId(3), false)), OK);
    assert_eq!(h.req(S1, Request::UnwatchDir { dir: D1 }), OK);
    assert_eq!(h.req(S1, watch(FileId(3), false)), OK);
    assert_eq!(h.e.stats().watched_dirs, 2);
}

#[test]
fn an_overlong_name_is_refused() {
    let mut h = H::new();
    h.req(S1, watch(D1, false));
    notes(&mut h);
    let long = change(D1, &"x".repeat(MAX_DIR_CHANGE_NAME + 1), false);
    assert_eq!(
        h.req(S2, Request::DirChange(long)),
        Reply::Done(Status::InvalidParameter)
    );
    assert!(notes(&mut h).is_empty());
}

#[test]
fn the_first_path_sticks_and_an_overlong_path_is_refused() {
    let mut h = H::new();
    let at = |p: &str| Request::WatchDir {
        dir: D1,
        tree: false,
        path: p.into(),
    };
    // A node that does not know the path registers without one; the next one's path is the
    // directory's from then on, and a third's different name for it changes nothing.
    assert_eq!(h.req(S1, at("")), OK);
    assert_eq!(
        notes(&mut h),
        vec![
            (
                S2,
                Notification::DirWatched {
                    dir: D1,
                    state: watched::DIR,
                    path: String::new()
                }
            ),
            (
                S3,
                Notification::DirWatched {
                    dir: D1,
                    state: watched::DIR,
                    path: String::new()
                }
            ),
        ]
    );
    assert_eq!(h.req(S2, at("share\\a")), OK);
    assert_eq!(
        notes(&mut h),
        vec![(
            S1,
            Notification::DirWatched {
                dir: D1,
                state: watched::DIR,
                path: "share\\a".into()
            }
        )]
    );
    assert_eq!(h.req(S3, at("other\\b")), OK);
    notes(&mut h);
    assert_eq!(h.req(S1, Request::UnwatchDir { dir: D1 }), OK);
    assert_eq!(
        notes(&mut h),
        Vec::<(SessionId, Notification)>::new(),
        "S2 and S3 still see each other"
    );
    let mut fresh = H::new();
    assert_eq!(
        fresh.req(S1, at(&"x".repeat(MAX_DIR_CHANGE_NAME + 1))),
        Reply::Done(Status::InvalidParameter)
    );
    assert!(notes(&mut fresh).is_empty());
    assert_eq!(fresh.e.stats().watched_dirs, 0);
}
