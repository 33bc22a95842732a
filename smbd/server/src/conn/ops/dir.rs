//! QUERY_DIRECTORY and CHANGE_NOTIFY (MS-SMB2 3.3.5.18, 3.3.5.19).

use std::path::Path;

use smb_proto::fscc::DirListing;
use smb_proto::{
    query_dir_flags, status, ChangeNotifyRequest, Header, QueryDirectoryRequest, Response,
};

use super::{list_dir, LIST_DIRECTORY, MAX_NOTIFY};
use crate::conn::{err, ChainCtx, Conn, DirState, Outcome, PendingKind};
use crate::fs::{self, class};

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
            let entries = match list_dir(&o.abs, &pattern) {
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
        if c.output_buffer_length > MAX_NOTIFY {
            return err(status::INVALID_PARAMETER);
        }
        o.notify_watch = true;
        let dir = o.abs.clone();
        self.shared.watch(self.id, dir.clone());
        let aid = self.go_async(
            hdr,
            ctx,
            PendingKind::Notify {
                volatile: v,
                dir,
                max_out: c.output_buffer_length,
            },
        );
        Outcome::Pending(aid)
    }

    /// A change happened in `dir`: complete the pending CHANGE_NOTIFYs watching it.
    pub(crate) fn notify_fire(&mut self, dir: &Path, action: u32, name: &str) {
        let aids: Vec<(u64, u32)> = self
            .pending
            .iter()
            .filter_map(|(a, p)| match &p.kind {
                PendingKind::Notify {
                    dir: d, max_out, ..
                } if d == dir => Some((*a, *max_out)),
                _ => None,
            })
            .collect();
        for (aid, max_out) in aids {
            self.shared.unwatch(self.id, &dir.to_path_buf());
            let entry = smb_proto::fscc::notify_entry(action, name);
            if entry.len() > max_out as usize {
                self.complete_async(
                    aid,
                    status::NOTIFY_ENUM_DIR,
                    Response::ChangeNotify { data: vec![] },
                );
            } else {
                self.complete_async(aid, status::SUCCESS, Response::ChangeNotify { data: entry });
            }
        }
    }
}
