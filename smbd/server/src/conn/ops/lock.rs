//! LOCK (MS-SMB2 3.3.5.14): byte-range locks through the lock service.

use smb_proto::{lock_flags, status, Header, LockRequest, Response};

use super::engine_status;
use crate::conn::{err, ChainCtx, Conn, Outcome, PendingKind};
use crate::locking::{self, LockRange, Reply, Status};

impl Conn {
    pub(crate) fn lock(&mut self, l: LockRequest, hdr: &Header, ctx: &mut ChainCtx) -> Outcome {
        let v = match self.resolve_fid(l.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let Some(lo) = self.opens.get(&v).and_then(|o| o.lock_open) else {
            return err(status::FILE_CLOSED);
        };
        let Some(first) = l.locks.first() else {
            return err(status::INVALID_PARAMETER);
        };
        let ranges_of = |excl: &dyn Fn(u32) -> bool| -> Vec<LockRange> {
            l.locks
                .iter()
                .map(|e| LockRange {
                    offset: e.offset,
                    length: e.length,
                    exclusive: excl(e.flags),
                })
                .collect()
        };
        // Flag validation as Windows does it (MS-SMB2 3.3.5.14): every element is checked
        // against the kind of the first one.
        let is_unlock = first.flags & lock_flags::UNLOCK != 0;
        let fi = lock_flags::FAIL_IMMEDIATELY;
        for (idx, e) in l.locks.iter().enumerate() {
            let bad = match e.flags {
                f if f == lock_flags::SHARED | fi || f == lock_flags::EXCLUSIVE | fi => is_unlock,
                lock_flags::SHARED | lock_flags::EXCLUSIVE => is_unlock || l.locks.len() > 1,
                lock_flags::UNLOCK => !is_unlock,
                _ => {
                    if is_unlock && idx > 0 {
                        return err(status::RANGE_NOT_LOCKED);
                    }
                    true
                }
            };
            if bad {
                if is_unlock && idx > 0 {
                    // The UNLOCK elements before the bad one still take effect (Windows
                    // and Samba; smbtorture smb2.lock.multiple-unlock).
                    let ranges = l.locks[..idx]
                        .iter()
                        .map(|e| LockRange {
                            offset: e.offset,
                            length: e.length,
                            exclusive: false,
                        })
                        .collect();
                    let r = self.shared.lock_request(
                        self.id,
                        hdr.message_id,
                        locking::Request::Unlock { open: lo, ranges },
                    );
                    tracing::debug!(?r, "partial unlock before invalid element");
                }
                return err(status::INVALID_PARAMETER);
            }
        }
        // Lock sequence replay detection (MS-SMB2 3.3.5.14) for resilient and durable
        // opens; buckets 1..=64, anything else is not checked.
        let bucket = (l.lock_sequence >> 4) as usize;
        let seq = (l.lock_sequence & 0xF) as u8;
        let check_seq = self.dialect() >= 0x0210
            && (1..=64).contains(&bucket)
            && self
                .opens
                .get(&v)
                .is_some_and(|o| o.resilient || o.durable.is_some() || self.lock_seq_all_opens());
        if check_seq {
            if let Some(o) = self.opens.get_mut(&v) {
                if o.lock_seq[bucket - 1] == seq {
                    return Outcome::Reply(status::SUCCESS, Response::Lock);
                }
                o.lock_seq[bucket - 1] = 0xFF;
            }
        }
        let req = if is_unlock {
            locking::Request::Unlock {
                open: lo,
                ranges: ranges_of(&|_| false),
            }
        } else {
            locking::Request::Lock {
                open: lo,
                ranges: ranges_of(&|f| f & lock_flags::EXCLUSIVE != 0),
                fail_immediately: first.flags & fi != 0,
            }
        };
        if !is_unlock {
            // The lock service ends this node's grants on the file with the lock request
            // (only other nodes' are recalled): stop using them first.
            if let Some(o) = self.opens.get(&v) {
                self.shared
                    .drop_io_grants(locking::FileId(o.stable_id), self.id);
            }
        }
        match self.shared.lock_request(self.id, hdr.message_id, req) {
            Reply::Done(Status::Success) => {
                if let Some(o) = self.opens.get_mut(&v) {
                    if check_seq {
                        o.lock_seq[bucket - 1] = seq;
                    }
                    for e in &l.locks {
                        if is_unlock {
                            if let Some(i) = o
                                .locks
                                .iter()
                                .position(|r| r.offset == e.offset && r.length == e.length)
                            {
                                o.locks.remove(i);
                            }
                        } else {
                            o.locks.push(LockRange {
                                offset: e.offset,
                                length: e.length,
                                exclusive: e.flags & lock_flags::EXCLUSIVE != 0,
                            });
                        }
                    }
                }
                self.locks_changed();
                Outcome::Reply(status::SUCCESS, Response::Lock)
            }
            Reply::Done(st) => err(engine_status(st)),
            Reply::Pending => {
                let aid = self.go_async(hdr, ctx, PendingKind::Lock { volatile: v });
                Outcome::Pending(aid)
            }
            other => {
                tracing::warn!(?other, "unexpected lock reply");
                err(status::INTERNAL_ERROR)
            }
        }
    }
}
