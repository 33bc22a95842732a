//! CLOSE (MS-SMB2 3.3.5.10) and the teardown of an open.

use smb_proto::fscc::notify_filter;
use smb_proto::NtStatus;
use smb_proto::{status, CloseRequest, CloseResponse, Header, Response};

use super::{parent_and_name, FILE_ACTION_REMOVED};
use crate::conn::{err, ChainCtx, Conn, Open, Outcome, PendingKind};
use crate::locking::{self, Reply};
use crate::streams;

impl Conn {
    /// Drop an open. Its blocked LOCK requests complete with `lock_status`: Windows answers
    /// RANGE_NOT_LOCKED when the handle is closed, and SUCCESS when the tree or session goes.
    pub(crate) fn close_open(&mut self, v: u64, lock_status: NtStatus) -> Option<Open> {
        self.close_open_with(v, lock_status, None)
    }

    /// [`Conn::close_open`], the lock service's answer to the open's close given if it was
    /// asked already (`BreakAndClose` answered `Closed`).
    fn close_open_with(
        &mut self,
        v: u64,
        lock_status: NtStatus,
        closed: Option<Reply>,
    ) -> Option<Open> {
        self.settle_write_time(v);
        let aids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| match &p.kind {
                PendingKind::Notify { volatile, .. } | PendingKind::Lock { volatile } => {
                    *volatile == v
                }
                // A waiting rename, disposition or close of a closed handle fails when its
                // break completes.
                PendingKind::Create(_)
                | PendingKind::DurableReconnect(_)
                | PendingKind::AfterHangup(_)
                | PendingKind::Rename { .. }
                | PendingKind::Disposition { .. }
                | PendingKind::Close { .. } => false,
            })
            .map(|(a, _)| *a)
            .collect();
        for a in aids {
            let is_notify = matches!(
                self.pending.get(&a).map(|p| &p.kind),
                Some(PendingKind::Notify { .. })
            );
            if is_notify {
                self.cancel_pending(a, status::NOTIFY_CLEANUP);
            } else {
                self.cancel_pending(a, status::CANCELLED);
                let body = if lock_status == status::SUCCESS {
                    Response::Lock
                } else {
                    Response::Error { data: vec![] }
                };
                self.complete_async(a, lock_status, body);
            }
        }
        let o = self.take_open(v)?;
        self.end_notify_watch(&o);
        if let Some(id) = &o.identity {
            // A delete-on-close unlinks with the opener's credentials, also when the close
            // comes from a disconnect rather than from the opener's own request.
            crate::identity::become_user(id);
        }
        if let Some(lo) = o.lock_open {
            let reply = match closed {
                Some(reply) => reply,
                None => self
                    .shared
                    .lock_request(self.id, 0, locking::Request::Close { open: lo }),
            };
            if o.is_dir && o.delete_pending && reply == (Reply::Closed { delete_file: false }) {
                // Other handles keep the directory: it stays, delete-pending, until they go.
                self.shared.dir_delete_pending(o.abs.clone());
            }
            // A named stream's open may be the last open of its delete-pending file (MS-FSA
            // 2.1.5.4): then the file goes, not only the stream.
            let delete_base = reply == Reply::ClosedDeleteBase;
            if delete_base || reply == (Reply::Closed { delete_file: true }) {
                if let (Some(st), false) = (&o.stream, delete_base) {
                    // Deleting a named stream leaves the base file alone.
                    if let Err(e) = streams::remove_data(&st.path) {
                        tracing::debug!(path = ?st.path, %e, "stream delete on close failed");
                    }
                    return Some(o);
                }
                // The name is unavoidable for unlink: it is resolved beneath the share root
                // and must still lead to the handle's object (a directory swapped since the
                // open must not get another file deleted in its place).
                let Some(obj) = o.object() else {
                    tracing::debug!(path = ?o.abs, "delete on close without a descriptor");
                    return Some(o);
                };
                // The streams belong to the file, not to this name: they stay while another
                // hard link keeps the file.
                let meta = obj.metadata().ok();
                let ino = meta.as_ref().and_then(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.nlink() <= 1 || m.is_dir()).then(|| m.ino())
                });
                // A stream open's object is its base file, which may be a directory.
                let is_dir = o.is_dir || meta.as_ref().is_some_and(|m| m.is_dir());
                let r = self.shared.shares[o.share]
                    .dir
                    .unlink_if_same(&o.rel, is_dir, obj);
                if let (Ok(()), Some(ino)) = (&r, ino) {
                    // The streams go with their file (MS-FSA 2.1.5.4).
                    streams::remove_all(&self.shared.shares[o.share].root, ino);
                }
                match r {
                    Ok(()) => {
                        let (parent, n) = parent_and_name(&o.abs);
                        self.shared.dir_changed(
                            parent,
                            FILE_ACTION_REMOVED,
                            notify_filter::name(o.is_dir),
                            n,
                        );
                    }
                    Err(e) => tracing::debug!(path = ?o.abs, %e, "delete on close failed"),
                }
            }
        }
        Some(o)
    }

    pub(crate) fn close(&mut self, c: CloseRequest, hdr: &Header, ctx: &mut ChainCtx) -> Outcome {
        let v = match self.resolve_fid(c.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        // Closing a delete-on-close handle makes the file delete-pending: other opens lose
        // handle caching first (MS-FSA 2.1.4.12; smbtorture lease.unlink), and the CLOSE
        // waits for that unless it sits in the middle of a compound. One lock-service
        // request does both, the break and the close, and says whether to unlink.
        let doomed = self
            .opens
            .get(&v)
            .filter(|o| o.delete_pending)
            .and_then(|o| o.lock_open);
        if let (Some(lo), true) = (doomed, ctx.single) {
            let reply = self.lock_request_breaks_first(
                hdr.message_id,
                locking::Request::BreakAndClose { open: lo },
            );
            return match reply {
                Reply::Pending => {
                    let then = PendingKind::Close {
                        volatile: v,
                        flags: c.flags,
                    };
                    Outcome::Pending(self.go_async(hdr, ctx, then))
                }
                reply => {
                    // Not closed (lockmgrd unreachable...): the plain close tries again.
                    let closed = matches!(reply, Reply::Closed { .. } | Reply::ClosedDeleteBase)
                        .then_some(reply);
                    let resp = self.finish_close_with(v, c.flags, closed);
                    Outcome::Reply(status::SUCCESS, Response::Close(resp))
                }
            };
        }
        if self.opens.get(&v).is_some_and(|o| o.delete_pending) {
            let then = PendingKind::Close {
                volatile: v,
                flags: c.flags,
            };
            if let Some(out) = self.break_handle_caching_first(v, hdr, ctx, then, ctx.single) {
                return out;
            }
        }
        Outcome::Reply(
            status::SUCCESS,
            Response::Close(self.finish_close(v, c.flags)),
        )
    }

    /// The CLOSE itself, once nothing holds it back: the post-query attributes if asked for,
    /// then the teardown.
    pub(crate) fn finish_close(&mut self, v: u64, flags: u16) -> CloseResponse {
        self.finish_close_with(v, flags, None)
    }

    /// [`Conn::finish_close`] with the lock service's `Closed` answer if the open's close
    /// was asked already (`BreakAndClose`).
    pub(crate) fn finish_close_with(
        &mut self,
        v: u64,
        flags: u16,
        closed: Option<Reply>,
    ) -> CloseResponse {
        // The close's own LastWriteTime update comes before the times it reports (a write
        // through the open that has not moved it yet moves it to the close's time:
        // crate::write_time, smbtorture smb2.timestamps.delayed-2write).
        self.settle_write_time(v);
        let mut resp = CloseResponse::default();
        if flags & smb_proto::CLOSE_FLAG_POSTQUERY_ATTRIB != 0 {
            if let Some(o) = self.opens.get(&v) {
                // Through the handle: the path may be stale after a rename elsewhere, or lead
                // elsewhere after a directory was swapped for a symlink.
                let obj = o.object();
                if let Some((obj, Ok(m))) = obj.map(|f| (f, f.metadata())) {
                    use std::os::fd::AsFd;
                    let i = crate::fs::load_info_fd(obj.as_fd(), &m, self.shared.clock.filetime());
                    resp = CloseResponse {
                        flags: smb_proto::CLOSE_FLAG_POSTQUERY_ATTRIB,
                        creation_time: i.creation,
                        last_access_time: i.access,
                        last_write_time: i.write,
                        change_time: i.change,
                        allocation_size: i.alloc,
                        end_of_file: i.size,
                        attributes: i.attributes,
                    };
                }
            }
        }
        self.close_open_with(v, status::RANGE_NOT_LOCKED, closed);
        resp
    }
}
