//! Change notify for changes smbd did not make itself: another process on this node, or a
//! program writing the share's directory directly. One inotify instance per smbd process
//! (`LocalWatcher`), one inotify watch per directory some handle watches (added with the
//! first CHANGE_NOTIFY on it, removed when the last watching handle closes) or, on a cluster
//! filesystem, other nodes watch (their changes seen here are passed on through lockmgrd:
//! `Shared::watch_for_other_nodes`), read by one thread (`Shared::start_local_watch`).
//!
//! What inotify reports: entries created, deleted and renamed (IN_CREATE, IN_DELETE,
//! IN_MOVED_FROM/TO), mapped to FILE_ACTION_ADDED / REMOVED / RENAMED_OLD_NAME and _NEW_NAME
//! (MS-FSCC 2.7.1) with FILE_NOTIFY_CHANGE_FILE_NAME or _DIR_NAME (MS-SMB2 2.2.35). Writes
//! and attribute changes made outside smbd are not reported (IN_MODIFY and IN_ATTRIB are not
//! asked for: smbd's own CREATE writes xattrs and times, which would read as changes).
//!
//! smbd's own changes are reported by the connection that made them, with exact filter bits
//! (`Shared::dir_changed`), and inotify sees them too. They are not reported twice: each
//! name change smbd reports in an inotify-watched directory is recorded (`own_change`), and
//! the inotify event for the same directory and name consumes the record instead of being
//! reported. So that the record always exists before the event is looked at, the reader
//! waits, after each read, for the workers that were busy when the read returned to finish
//! that piece of work (`work_begin` / `work_end` around each pass of a worker's loop): every
//! name change smbd makes is a system call inside such a pass, followed in the same pass by
//! its report.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use smb_proto::fscc::{notify_action, notify_filter};

/// The events asked for on each watched directory.
const WATCH_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;

/// Most directories one smbd process watches through inotify (also bounded by the kernel's
/// fs.inotify.max_user_watches). Past it, changes made through SMB are still reported;
/// changes made outside smbd in the directories beyond the cap are not.
pub const MAX_WATCHED_DIRS: usize = 8192;

/// How long the reader waits for the IN_MOVED_TO of a rename whose IN_MOVED_FROM it has read:
/// inotify(7) does not promise the pair arrives together ("there may be a brief interval
/// where the IN_MOVED_FROM has appeared, but the IN_MOVED_TO has not") and advises a short
/// wait. Only a move out of every watched directory, which has no IN_MOVED_TO, waits it all.
const RENAME_PAIR_WAIT_MS: i32 = 10;

/// Most extra reads for the halves of renames, per batch.
const RENAME_PAIR_READS: usize = 4;

/// Bytes read from the inotify descriptor at once (an event is 16 bytes and a name of at
/// most NAME_MAX + 1 padded).
const READ_BUFFER: usize = 64 * 1024;

/// One event as the kernel wrote it (`struct inotify_event`, inotify(7)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub wd: i32,
    pub mask: u32,
    pub cookie: u32,
    /// The entry's name, without the NUL padding; empty for events on the watched directory.
    pub name: Vec<u8>,
}

/// A read from the inotify descriptor that does not hold whole events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("inotify event header cut at byte {0}")]
    Truncated(usize),
    #[error("inotify event name at byte {0} runs past the buffer")]
    NameTruncated(usize),
}

fn ne32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// The events in one read(2) of an inotify descriptor.
pub fn parse_events(buf: &[u8]) -> Result<Vec<RawEvent>, ParseError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        let h = buf
            .get(at..at.saturating_add(16))
            .ok_or(ParseError::Truncated(at))?;
        let len = ne32(&h[12..16]) as usize;
        let start = at + 16;
        let end = start
            .checked_add(len)
            .ok_or(ParseError::NameTruncated(at))?;
        let padded = buf.get(start..end).ok_or(ParseError::NameTruncated(at))?;
        let name = padded.split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
        out.push(RawEvent {
            wd: ne32(&h[0..4]) as i32,
            mask: ne32(&h[4..8]),
            cookie: ne32(&h[8..12]),
            name,
        });
        at = end;
    }
    Ok(out)
}

/// What the reader found in one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `name` in `dir` changed: FILE_ACTION_* and the CompletionFilter bits it matches.
    Dir {
        dir: PathBuf,
        action: u32,
        filter: u32,
        name: String,
    },
    /// The kernel dropped events (IN_Q_OVERFLOW): every watcher must enumerate again
    /// (STATUS_NOTIFY_ENUM_DIR).
    Overflow,
}

#[derive(Default)]
struct Dirs {
    by_path: HashMap<PathBuf, i32>,
    by_wd: HashMap<i32, PathBuf>,
    /// Name changes smbd made and reported itself, not yet matched by their inotify event.
    own: HashMap<(PathBuf, Vec<u8>), usize>,
    /// Why each directory is watched: one count per reason (this node's watching handles of
    /// it, other nodes' watchers, `Shared::watch_for_other_nodes`). The watch goes with the
    /// last.
    interest: HashMap<PathBuf, u32>,
}

pub struct LocalWatcher {
    file: File,
    dirs: Mutex<Dirs>,
    /// Per worker: odd while it works through a pass of its loop.
    passes: Vec<AtomicU64>,
    waiting: AtomicBool,
    quiet_lock: Mutex<()>,
    quiet: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalWatcher {
    pub fn new(workers: usize) -> std::io::Result<LocalWatcher> {
        let fd: OwnedFd = crate::sys::inotify_init()?;
        Ok(LocalWatcher {
            file: File::from(fd),
            dirs: Mutex::new(Dirs::default()),
            passes: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            waiting: AtomicBool::new(false),
            quiet_lock: Mutex::new(()),
            quiet: Condvar::new(),
        })
    }

    /// Watch `dir` for one more reason (this node's first watching handle of it, or other
    /// nodes watching it); [`LocalWatcher::remove`] takes the reason back.
    pub fn add(&self, dir: &Path) {
        let mut d = lock(&self.dirs);
        *d.interest.entry(dir.to_path_buf()).or_insert(0) += 1;
        // Also with other reasons standing: the directory may have been removed and made
        // again under the same name (IN_IGNORED ended the old watch).
        if d.by_path.contains_key(dir) {
            return;
        }
        if d.by_path.len() >= MAX_WATCHED_DIRS {
            tracing::warn!(
                ?dir,
                "inotify watch cap reached: outside changes not reported"
            );
            return;
        }
        let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
            return;
        };
        match crate::sys::inotify_add_watch(self.file.as_fd(), &c, WATCH_MASK) {
            Ok(wd) => {
                // The same directory under two names (a hard link is impossible for
                // directories, but a bind mount is not) shares one watch descriptor.
                if let Some(other) = d.by_wd.insert(wd, dir.to_path_buf()) {
                    d.by_path.remove(&other);
                }
                d.by_path.insert(dir.to_path_buf(), wd);
            }
            Err(e) => tracing::warn!(?dir, %e, "inotify_add_watch failed"),
        }
    }

    /// One reason to watch `dir` is gone (this node's last watching handle closed, or no
    /// other node watches it any more); the watch ends with the last.
    pub fn remove(&self, dir: &Path) {
        let mut d = lock(&self.dirs);
        match d.interest.get_mut(dir) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return;
            }
            Some(_) => {
                d.interest.remove(dir);
            }
            None => return,
        }
        if let Some(wd) = d.by_path.remove(dir) {
            d.by_wd.remove(&wd);
            d.own.retain(|(p, _), _| p != dir);
            if let Err(e) = crate::sys::inotify_rm_watch(self.file.as_fd(), wd) {
                tracing::debug!(?dir, %e, "inotify_rm_watch failed");
            }
        }
    }

    /// smbd itself added, removed or renamed `name` in `dir` and reports it: the inotify
    /// event for it is not reported again.
    pub fn own_change(&self, dir: &Path, name: &str) {
        let mut d = lock(&self.dirs);
        if d.by_path.contains_key(dir) {
            *d.own
                .entry((dir.to_path_buf(), name.as_bytes().to_vec()))
                .or_insert(0) += 1;
        }
    }

    /// Worker `w` starts a pass of its loop (it may change the file system and report it).
    pub fn work_begin(&self, w: usize) {
        if let Some(p) = self.passes.get(w) {
            p.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Worker `w` finished the pass: its changes are recorded.
    pub fn work_end(&self, w: usize) {
        if let Some(p) = self.passes.get(w) {
            p.fetch_add(1, Ordering::SeqCst);
            if self.waiting.load(Ordering::SeqCst) {
                let _g = lock(&self.quiet_lock);
                self.quiet.notify_all();
            }
        }
    }

    /// Wait until every worker busy now has finished its current pass.
    fn wait_for_busy_workers(&self) {
        let snap: Vec<u64> = self
            .passes
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .collect();
        let mut g = lock(&self.quiet_lock);
        self.waiting.store(true, Ordering::SeqCst);
        while snap
            .iter()
            .zip(&self.passes)
            .any(|(s, p)| s % 2 == 1 && p.load(Ordering::SeqCst) == *s)
        {
            g = self.quiet.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// Block for the next events; return the changes to report.
    pub fn next_batch(&self) -> std::io::Result<Vec<Change>> {
        let mut buf = vec![0u8; READ_BUFFER];
        let n = (&self.file).read(&mut buf)?;
        let mut events = parse_events(&buf[..n]).map_err(std::io::Error::other)?;
        // A rename read half-way: its other half is on its way ([`RENAME_PAIR_WAIT_MS`]).
        for _ in 0..RENAME_PAIR_READS {
            if !has_unpaired_move(&events)
                || !crate::sys::readable_within(self.file.as_fd(), RENAME_PAIR_WAIT_MS)
            {
                break;
            }
            let n = (&self.file).read(&mut buf)?;
            events.extend(parse_events(&buf[..n]).map_err(std::io::Error::other)?);
        }
        self.wait_for_busy_workers();
        let mut d = lock(&self.dirs);
        Ok(d.changes(events))
    }
}

/// Whether `events` hold a rename's IN_MOVED_FROM without its IN_MOVED_TO (same cookie).
fn has_unpaired_move(events: &[RawEvent]) -> bool {
    events.iter().any(|e| {
        e.mask & libc::IN_MOVED_FROM != 0
            && e.cookie != 0
            && !events
                .iter()
                .any(|t| t.mask & libc::IN_MOVED_TO != 0 && t.cookie == e.cookie)
    })
}

impl Dirs {
    /// Map events to changes, dropping the ones smbd reported itself.
    fn changes(&mut self, events: Vec<RawEvent>) -> Vec<Change> {
        let mut kept: Vec<(PathBuf, RawEvent)> = Vec::new();
        for e in events {
            if e.mask & libc::IN_Q_OVERFLOW != 0 {
                // Which of smbd's own changes were dropped is unknown: start afresh.
                self.own.clear();
                return vec![Change::Overflow];
            }
            if e.mask & libc::IN_IGNORED != 0 {
                if let Some(p) = self.by_wd.remove(&e.wd) {
                    self.by_path.remove(&p);
                    self.own.retain(|(q, _), _| *q != p);
                }
                continue;
            }
            let Some(dir) = self.by_wd.get(&e.wd).cloned() else {
                continue;
            };
            if e.name.is_empty() {
                continue;
            }
            let key = (dir, e.name);
            if let Some(c) = self.own.get_mut(&key) {
                *c -= 1;
                if *c == 0 {
                    self.own.remove(&key);
                }
                continue;
            }
            let (dir, name) = key;
            kept.push((
                dir,
                RawEvent {
                    wd: e.wd,
                    mask: e.mask,
                    cookie: e.cookie,
                    name,
                },
            ));
        }
        let mut out = Vec::new();
        // The IN_MOVED_TO events already reported with their IN_MOVED_FROM.
        let mut paired = vec![false; kept.len()];
        for (i, (dir, e)) in kept.iter().enumerate() {
            if paired[i] {
                continue;
            }
            let names = notify_filter::name(e.mask & libc::IN_ISDIR != 0);
            let change = |dir: &Path, action, name: &[u8]| Change::Dir {
                dir: dir.to_path_buf(),
                action,
                filter: names,
                name: String::from_utf8_lossy(name).into_owned(),
            };
            if e.mask & libc::IN_MOVED_FROM != 0 {
                // A rename's two halves share a cookie; other events may come between them
                // (inotify(7)).
                let to = (i + 1..kept.len()).find(|&j| {
                    let t = &kept[j].1;
                    !paired[j]
                        && t.mask & libc::IN_MOVED_TO != 0
                        && t.cookie == e.cookie
                        && e.cookie != 0
                });
                match to {
                    // A rename inside one directory: OLD_NAME and NEW_NAME there (MS-FSCC
                    // 2.7.1); across directories REMOVED in one and ADDED in the other, as
                    // smbd reports its own renames (conn/ops/info.rs).
                    Some(j) if kept[j].0 == *dir => {
                        paired[j] = true;
                        out.push(change(dir, notify_action::RENAMED_OLD_NAME, &e.name));
                        out.push(change(
                            dir,
                            notify_action::RENAMED_NEW_NAME,
                            &kept[j].1.name,
                        ));
                    }
                    _ => out.push(change(dir, notify_action::REMOVED, &e.name)),
                }
            } else if e.mask & (libc::IN_MOVED_TO | libc::IN_CREATE) != 0 {
                out.push(change(dir, notify_action::ADDED, &e.name));
            } else if e.mask & libc::IN_DELETE != 0 {
                out.push(change(dir, notify_action::REMOVED, &e.name));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(wd: i32, mask: u32, cookie: u32, name: &str, pad: usize) -> Vec<u8> {
        let mut n = name.as_bytes().to_vec();
        n.resize(name.len() + pad, 0);
        let mut v = Vec::new();
        v.extend_from_slice(&wd.to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&cookie.to_ne_bytes());
        v.extend_from_slice(&(n.len() as u32).to_ne_bytes());
        v.extend_from_slice(&n);
        v
    }

    #[test]
    fn events_parse_and_cut_ones_are_refused() {
        let mut b = raw(3, libc::IN_CREATE, 0, "a.txt", 3);
        b.extend(raw(3, libc::IN_DELETE | libc::IN_ISDIR, 0, "d", 15));
        let ev = parse_events(&b).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].name, b"a.txt");
        assert_eq!(ev[1].mask, libc::IN_DELETE | libc::IN_ISDIR);
        assert_eq!(ev[1].name, b"d");
        assert_eq!(parse_events(&b[..10]), Err(ParseError::Truncated(0)));
        assert_eq!(
            parse_events(&b[..b.len() - 1]),
            Err(ParseError::NameTruncated(24))
        );
    }

    fn dirs() -> Dirs {
        let mut d = Dirs::default();
        d.by_path.insert(PathBuf::from("/s/a"), 1);
        d.by_wd.insert(1, PathBuf::from("/s/a"));
        d.by_path.insert(PathBuf::from("/s/b"), 2);
        d.by_wd.insert(2, PathBuf::from("/s/b"));
        d
    }

    fn ev(wd: i32, mask: u32, cookie: u32, name: &str) -> RawEvent {
        RawEvent {
            wd,
            mask,
            cookie,
            name: name.as_bytes().to_vec(),
        }
    }

    fn dir_change(dir: &str, action: u32, filter: u32, name: &str) -> Change {
        Change::Dir {
            dir: PathBuf::from(dir),
            action,
            filter,
            name: name.into(),
        }
    }

    #[test]
    fn renames_pair_in_one_directory_and_split_across_two() {
        let mut d = dirs();
        let got = d.changes(vec![
            ev(1, libc::IN_MOVED_FROM, 7, "x"),
            ev(1, libc::IN_MOVED_TO, 7, "y"),
            ev(1, libc::IN_MOVED_FROM | libc::IN_ISDIR, 8, "p"),
            ev(2, libc::IN_MOVED_TO | libc::IN_ISDIR, 8, "q"),
        ]);
        let (f, dn) = (notify_filter::FILE_NAME, notify_filter::DIR_NAME);
        assert_eq!(
            got,
            vec![
                dir_change("/s/a", notify_action::RENAMED_OLD_NAME, f, "x"),
                dir_change("/s/a", notify_action::RENAMED_NEW_NAME, f, "y"),
                dir_change("/s/a", notify_action::REMOVED, dn, "p"),
                dir_change("/s/b", notify_action::ADDED, dn, "q"),
            ]
        );
    }

    #[test]
    fn a_renames_halves_pair_across_other_events_and_a_lone_half_waits_for_its_pair() {
        let mut d = dirs();
        let got = d.changes(vec![
            ev(1, libc::IN_MOVED_FROM, 9, "x"),
            ev(1, libc::IN_CREATE, 0, "n"),
            ev(1, libc::IN_MOVED_TO, 9, "y"),
        ]);
        let f = notify_filter::FILE_NAME;
        assert_eq!(
            got,
            vec![
                dir_change("/s/a", notify_action::RENAMED_OLD_NAME, f, "x"),
                dir_change("/s/a", notify_action::RENAMED_NEW_NAME, f, "y"),
                dir_change("/s/a", notify_action::ADDED, f, "n"),
            ]
        );
        assert!(has_unpaired_move(&[ev(1, libc::IN_MOVED_FROM, 9, "x")]));
        assert!(!has_unpaired_move(&[
            ev(1, libc::IN_MOVED_FROM, 9, "x"),
            ev(2, libc::IN_MOVED_TO, 9, "y"),
        ]));
    }

    #[test]
    fn smbds_own_changes_are_consumed_once() {
        let mut d = dirs();
        d.own.insert((PathBuf::from("/s/a"), b"x".to_vec()), 1);
        let got = d.changes(vec![
            ev(1, libc::IN_CREATE, 0, "x"),
            ev(1, libc::IN_DELETE, 0, "x"),
        ]);
        assert_eq!(
            got,
            vec![dir_change(
                "/s/a",
                notify_action::REMOVED,
                notify_filter::FILE_NAME,
                "x"
            )]
        );
        assert!(d.own.is_empty());
    }

    #[test]
    fn a_directory_stays_watched_until_its_last_reason_goes() {
        let top = tempfile::tempdir().unwrap();
        let w = LocalWatcher::new(1).unwrap();
        let watched = |w: &LocalWatcher| lock(&w.dirs).by_path.contains_key(top.path());
        // This node's handle and another node's watch of the same directory.
        w.add(top.path());
        w.add(top.path());
        w.remove(top.path());
        assert!(watched(&w), "one reason left");
        w.remove(top.path());
        assert!(!watched(&w));
        // A removal with no reason left changes nothing.
        w.remove(top.path());
        w.add(top.path());
        assert!(watched(&w));
    }

    #[test]
    fn overflow_clears_the_record_and_ignored_forgets_the_watch() {
        let mut d = dirs();
        d.own.insert((PathBuf::from("/s/a"), b"x".to_vec()), 1);
        assert_eq!(
            d.changes(vec![ev(-1, libc::IN_Q_OVERFLOW, 0, "")]),
            vec![Change::Overflow]
        );
        assert!(d.own.is_empty());
        assert!(d.changes(vec![ev(2, libc::IN_IGNORED, 0, "")]).is_empty());
        assert!(!d.by_path.contains_key(Path::new("/s/b")));
    }
}
