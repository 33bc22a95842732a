//! QUERY_DIRECTORY and CHANGE_NOTIFY (MS-SMB2 3.3.5.18, 3.3.5.19).

use std::path::Path;

use smb_proto::fscc::DirListing;
use smb_proto::{
    query_dir_flags, status, ChangeNotifyRequest, Header, NtStatus, QueryDirectoryRequest, Response,
};

use super::{list_dir, LIST_DIRECTORY, MAX_NOTIFY};
use crate::conn::{err, ChainCtx, Conn, DirState, Open, Outcome, PendingKind};
use crate::fs::{self, class};
use crate::locking;
use crate::open::NotifyWatch;

impl Conn {
    pub(crate) fn query_directory(
        &mut self,
        q: QueryDirectoryRequest,
        ctx: &mut ChainCtx,
    ) -> Outcome {
        let v = match self.resolve_fid(q.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let max_io = self.max_io();
        let Some(o) = self.opens.get_mut(&v) else {
            return err(status::FILE_CLOSED);
        };
        if !o.is_dir {
            return err(status::INVALID_PARAMETER);
        }
        if o.access & LIST_DIRECTORY == 0 {
            return err(status::ACCESS_DENIED);
        }
        if !matches!(
            q.info_class,
            class::DIRECTORY
                | class::FULL_DIRECTORY
                | class::BOTH_DIRECTORY
                | class::NAMES
                | class::ID_BOTH_DIRECTORY
                | class::ID_FULL_DIRECTORY
        ) {
            return err(status::INVALID_INFO_CLASS);
        }
        if q.output_buffer_length > max_io {
            return err(status::INVALID_PARAMETER);
        }
        let restart = q.flags & (query_dir_flags::RESTART_SCANS | query_dir_flags::REOPEN) != 0;
        let pattern = if q.pattern.is_empty() {
            "*".to_string()
        } else {
            q.pattern.clone()
        };
        if restart || o.dir.is_none() {
            let entries = match list_dir(&o.abs, &pattern, self.shared.clock.filetime()) {
                Ok(e) => e,
                Err(st) => return err(st),
            };
            o.dir = Some(DirState {
                entries,
                pos: 0,
                started: false,
            });
        }
        let Some(ds) = o.dir.as_mut() else {
            return err(status::INTERNAL_ERROR);
        };
        let first_call = !ds.started;
        ds.started = true;
        if ds.pos >= ds.entries.len() {
            return err(if first_call && ds.entries.is_empty() {
                status::NO_SUCH_FILE
            } else {
                status::NO_MORE_FILES
            });
        }
        let mut listing = DirListing::new(q.output_buffer_length as usize);
        while ds.pos < ds.entries.len() {
            let e = &ds.entries[ds.pos];
            let Some(enc) = fs::encode_dir_entry(q.info_class, e, 0) else {
                return err(status::INVALID_INFO_CLASS);
            };
            if !listing.push(&enc) {
                break;
            }
            ds.pos += 1;
            if q.flags & query_dir_flags::RETURN_SINGLE_ENTRY != 0 {
                break;
            }
        }
        if listing.is_empty() {
            return err(status::INFO_LENGTH_MISMATCH);
        }
        Outcome::Reply(
            status::SUCCESS,
            Response::QueryDirectory {
                data: listing.into_bytes(),
            },
        )
    }

    pub(crate) fn change_notify(
        &mut self,
        c: ChangeNotifyRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
        _last: bool,
    ) -> Outcome {
        let (v, o) = match self.open_for_mut(c.file_id, ctx) {
            Ok(found) => found,
            Err(st) => return err(st),
        };
        if !o.is_dir {
            return err(status::INVALID_PARAMETER);
        }
        // MS-SMB2 3.3.5.19: watching needs FILE_LIST_DIRECTORY on the handle.
        if o.access & LIST_DIRECTORY == 0 {
            return err(status::ACCESS_DENIED);
        }
        if c.output_buffer_length > MAX_NOTIFY {
            return err(status::INVALID_PARAMETER);
        }
        let first = o.notify.is_none();
        let abs = o.abs.clone();
        let watch = o.notify.get_or_insert_with(|| NotifyWatch {
            dir: abs,
            buffer_size: c.output_buffer_length,
            filter: c.completion_filter,
            tree: c.flags & WATCH_TREE != 0,
            ..Default::default()
        });
        let (dir, tree) = (watch.dir.clone(), watch.tree);
        let (stable_id, lock_open) = (o.stable_id, o.lock_open);
        let buffered = (!watch.changes.is_empty() || watch.overflowed).then(|| {
            watch.changes_bytes = 0;
            let overflowed = std::mem::take(&mut watch.overflowed);
            (std::mem::take(&mut watch.changes), overflowed)
        });
        if first {
            self.shared.watch(self.id, dir, tree);
        }
        if let Some((changes, overflowed)) = buffered {
            let (st, body) = notify_response(&changes, overflowed, c.output_buffer_length);
            return Outcome::Reply(st, body);
        }
        // Asked after the directory became delete-pending (another connection's delete may
        // have come before this watch existed): no change can come any more.
        if self.dir_delete_pending(stable_id, lock_open) {
            return err(status::DELETE_PENDING);
        }
        let aid = self.go_async(
            hdr,
            ctx,
            PendingKind::Notify {
                volatile: v,
                max_out: c.output_buffer_length,
            },
        );
        Outcome::Pending(aid)
    }

    /// A change happened in `dir` (below it if `subtree`): every handle of this connection
    /// watching it for a kind of change in `filter` (and, below it, watching the tree) gets
    /// it, in its oldest waiting CHANGE_NOTIFY or, if none waits, kept for the next one.
    pub(crate) fn notify_fire(
        &mut self,
        dir: &Path,
        action: u32,
        filter: u32,
        name: &str,
        subtree: bool,
    ) {
        let watchers: Vec<u64> = self
            .opens
            .iter()
            .filter(|(_, o)| {
                o.notify
                    .as_ref()
                    .is_some_and(|w| w.dir == dir && w.filter & filter != 0 && (w.tree || !subtree))
            })
            .map(|(v, _)| *v)
            .collect();
        for v in watchers {
            if let Some((aid, max_out)) = self.oldest_waiting_notify(v) {
                let (st, body) = notify_response(&[(action, name.to_string())], false, max_out);
                self.complete_async(aid, st, body);
            } else if let Some(w) = self.opens.get_mut(&v).and_then(|o| o.notify.as_mut()) {
                // FILE_NOTIFY_INFORMATION: 12 bytes and the UTF-16 name; the entries before
                // it are padded to 4 bytes (`changes_bytes` counts them padded).
                let size = 12 + 2 * name.encode_utf16().count();
                if w.overflowed {
                    continue;
                }
                if w.changes.len() >= MAX_BUFFERED_CHANGES
                    || w.changes_bytes + size > w.buffer_size as usize
                {
                    w.overflow();
                } else {
                    w.changes.push((action, name.to_string()));
                    w.changes_bytes += (size + 3) & !3;
                }
            }
        }
    }

    /// The handles of this connection watching `dir` itself.
    fn watchers_of(&self, dir: &Path) -> Vec<u64> {
        self.opens
            .iter()
            .filter(|(_, o)| o.notify.as_ref().is_some_and(|w| w.dir == dir))
            .map(|(v, _)| *v)
            .collect()
    }

    /// The CHANGE_NOTIFY of handle `v` that waits longest (async id, OutputBufferLength):
    /// requests on one handle complete in the order they came, and async ids grow.
    fn oldest_waiting_notify(&self, v: u64) -> Option<(u64, u32)> {
        self.pending
            .iter()
            .filter_map(|(a, p)| match &p.kind {
                PendingKind::Notify {
                    volatile, max_out, ..
                } if *volatile == v => Some((*a, *max_out)),
                _ => None,
            })
            .min_by_key(|(a, _)| *a)
    }

    /// Changes of `dir` were lost (the kernel's inotify queue overflowed): its watchers are
    /// told to enumerate it again, STATUS_NOTIFY_ENUM_DIR now or with their next request
    /// (MS-SMB2 3.3.5.19, as when their own buffer overflows).
    pub(crate) fn notify_overflow(&mut self, dir: &Path) {
        let watchers = self.watchers_of(dir);
        for v in watchers {
            if let Some((aid, max_out)) = self.oldest_waiting_notify(v) {
                let (st, body) = notify_response(&[], true, max_out);
                self.complete_async(aid, st, body);
            } else if let Some(w) = self.opens.get_mut(&v).and_then(|o| o.notify.as_mut()) {
                w.overflow();
            }
        }
    }

    /// Directory `dir` became delete-pending: the CHANGE_NOTIFYs waiting on it end with
    /// STATUS_DELETE_PENDING (Windows; smbtorture smb2.notify.rmdir1-4), since no change can
    /// come any more.
    pub(crate) fn notify_delete_pending(&mut self, dir: &Path) {
        let watchers = self.watchers_of(dir);
        let aids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                matches!(p.kind, PendingKind::Notify { volatile, .. } if watchers.contains(&volatile))
            })
            .map(|(a, _)| *a)
            .collect();
        for aid in aids {
            self.complete_async(
                aid,
                status::DELETE_PENDING,
                Response::Error { data: vec![] },
            );
        }
    }

    /// Whether the lock service holds directory `stable_id` delete-pending, cluster wide,
    /// through the name this handle (`lock_open`) opened it by.
    fn dir_delete_pending(&self, stable_id: u128, lock_open: Option<locking::OpenId>) -> bool {
        let Some(lo) = lock_open else {
            return false;
        };
        self.shared
            .file_usage(self.id, locking::FileId(stable_id), Some(lo))
            .is_ok_and(|u| u.except_deleted)
    }

    /// The handle's change-notify watch ends with it.
    pub(crate) fn end_notify_watch(&self, o: &Open) {
        if let Some(w) = &o.notify {
            self.shared.unwatch(self.id, &w.dir, w.tree);
        }
    }
}

/// CHANGE_NOTIFY Flags: SMB2_WATCH_TREE (MS-SMB2 2.2.35), watch the whole subtree.
const WATCH_TREE: u16 = 0x0001;

/// Changes kept for a handle between CHANGE_NOTIFYs; past this the client is told to
/// enumerate the directory instead (STATUS_NOTIFY_ENUM_DIR), as Windows does when its buffer
/// overflows.
const MAX_BUFFERED_CHANGES: usize = 1024;

/// A CHANGE_NOTIFY response carrying `changes`, or STATUS_NOTIFY_ENUM_DIR with no data if
/// they overflowed or do not fit the client's OutputBufferLength (MS-SMB2 3.3.5.19).
fn notify_response(
    changes: &[(u32, String)],
    overflowed: bool,
    max_out: u32,
) -> (NtStatus, Response) {
    let data = smb_proto::fscc::notify_entries(changes.iter().map(|(a, n)| (*a, n.as_str())));
    if overflowed || data.len() > max_out as usize {
        (
            status::NOTIFY_ENUM_DIR,
            Response::ChangeNotify { data: vec![] },
        )
    } else {
        (status::SUCCESS, Response::ChangeNotify { data })
    }
}
