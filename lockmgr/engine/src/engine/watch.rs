//! Change notify across nodes (MS-SMB2 3.3.5.19, MS-FSA 2.1.4.1 / 2.1.5.11): which sessions
//! watch which directories, and the fan-out of one node's changes to the others.
//!
//! A node registers a directory (`WatchDir`) on its first CHANGE_NOTIFY watcher of it and
//! unregisters it (`UnwatchDir`) on its last. Every session is told, per directory, whether
//! *other* sessions watch it (`Notification::DirWatched`, sent when that changes and for every
//! watched directory when the session opens), so a node sends a change (`DirChange`) only for
//! directories someone else watches: unwatched directories cost lockmgrd nothing. A change is
//! forwarded to the other watching sessions as `Notification::DirChanged`; the receiving node
//! applies its own watchers' CompletionFilter, WATCH_TREE and overflow rules.
//!
//! Registrations are engine state: the replica log carries the requests and the snapshot the
//! table, so a standby that takes over has them and a resumed session keeps its watches.

use std::collections::BTreeMap;

use super::Engine;
use crate::types::{
    watched, DirChange, FileId, Notification, Reply, RequestId, SessionId, Status,
    MAX_DIR_CHANGE_NAME,
};

/// Who watches one directory: session -> watching its tree.
pub(super) type Watchers = BTreeMap<SessionId, bool>;

/// One watched directory: where it is (the first non-empty path it was registered with, for
/// the nodes that watch the filesystem themselves) and who watches it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct WatchedDir {
    path: String,
    watchers: Watchers,
}

/// What sessions other than `me` watching with `w` means to `me` ([`watched`] bits).
fn seen_by(w: Option<&Watchers>, me: SessionId) -> u8 {
    let mut state = 0;
    for (s, tree) in w.into_iter().flatten() {
        if *s != me {
            state |= watched::DIR;
            if *tree {
                state |= watched::TREE;
            }
        }
    }
    state
}

impl Engine {
    pub(super) fn do_watch_dir(
        &mut self,
        session: SessionId,
        request: RequestId,
        dir: FileId,
        tree: bool,
        path: String,
    ) {
        if path.len() > MAX_DIR_CHANGE_NAME {
            self.reply(session, request, Reply::Done(Status::InvalidParameter));
            return;
        }
        let known = self
            .watches
            .get(&dir)
            .is_some_and(|w| w.watchers.contains_key(&session));
        if !known {
            let held = self.sessions.get(&session).map_or(0, |s| s.watches);
            if held >= self.config.limits.max_watches {
                self.reply(session, request, Reply::Done(Status::InsufficientResources));
                return;
            }
            if let Some(s) = self.sessions.get_mut(&session) {
                s.watches += 1;
            }
        }
        self.change_watchers(dir, |w| {
            if w.path.is_empty() {
                w.path = path;
            }
            w.watchers.insert(session, tree);
        });
        self.reply(session, request, Reply::Done(Status::Success));
    }

    pub(super) fn do_unwatch_dir(&mut self, session: SessionId, request: RequestId, dir: FileId) {
        self.drop_watch(session, dir);
        self.reply(session, request, Reply::Done(Status::Success));
    }

    /// `session` no longer watches `dir` (unregistered, or the session ended).
    pub(super) fn drop_watch(&mut self, session: SessionId, dir: FileId) {
        if !self
            .watches
            .get(&dir)
            .is_some_and(|w| w.watchers.contains_key(&session))
        {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.watches = s.watches.saturating_sub(1);
        }
        self.change_watchers(dir, |w| {
            w.watchers.remove(&session);
        });
    }

    /// Every directory `session` watches (for the end of the session).
    pub(super) fn watched_by(&self, session: SessionId) -> Vec<FileId> {
        self.watches
            .iter()
            .filter(|(_, w)| w.watchers.contains_key(&session))
            .map(|(d, _)| *d)
            .collect()
    }

    /// Apply `edit` to the watchers of `dir` and tell each session whose view of it changed.
    fn change_watchers(&mut self, dir: FileId, edit: impl FnOnce(&mut WatchedDir)) {
        let before = self.watches.get(&dir).map(|w| w.watchers.clone());
        let w = self.watches.entry(dir).or_default();
        edit(w);
        if w.watchers.is_empty() {
            self.watches.remove(&dir);
        }
        let (after, path) = match self.watches.get(&dir) {
            Some(w) => (Some(&w.watchers), w.path.clone()),
            None => (None, String::new()),
        };
        let mut told = Vec::new();
        for s in self.sessions.keys() {
            let (old, new) = (seen_by(before.as_ref(), *s), seen_by(after, *s));
            if old != new {
                told.push((*s, new));
            }
        }
        told.sort_unstable();
        for (s, state) in told {
            let path = if state == 0 {
                String::new()
            } else {
                path.clone()
            };
            self.notify(s, Notification::DirWatched { dir, state, path });
        }
    }

    /// A new session learns the directories others watch.
    pub(super) fn tell_watched(&mut self, session: SessionId) {
        let dirs: Vec<(FileId, u8, String)> = self
            .watches
            .iter()
            .map(|(d, w)| (*d, seen_by(Some(&w.watchers), session), w.path.clone()))
            .filter(|(_, st, _)| *st != 0)
            .collect();
        for (dir, state, path) in dirs {
            self.notify(session, Notification::DirWatched { dir, state, path });
        }
    }

    pub(super) fn do_dir_change(&mut self, session: SessionId, request: RequestId, c: DirChange) {
        if c.name.len() > MAX_DIR_CHANGE_NAME {
            self.reply(session, request, Reply::Done(Status::InvalidParameter));
            return;
        }
        self.stats.dir_changes_total += 1;
        let targets: Vec<SessionId> = self
            .watches
            .get(&c.dir)
            .into_iter()
            .flat_map(|w| w.watchers.iter())
            .filter(|(s, tree)| **s != session && (**tree || !c.subtree))
            .map(|(s, _)| *s)
            .collect();
        for s in targets {
            self.stats.dir_changes_forwarded_total += 1;
            self.notify(s, Notification::DirChanged(c.clone()));
        }
        self.reply(session, request, Reply::Done(Status::Success));
    }
}
