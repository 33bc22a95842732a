//! Resource limits (`[limits]`, documented in [`crate::config`]): what one client may make the
//! server hold, checked where sessions, trees, opens and async requests are created, and the
//! process-wide open-file budget.
//!
//! Status codes for a refused request:
//! * a new session while `sessions_in_setup_per_conn` are in setup, or `sessions_per_conn`
//!   exist: STATUS_REQUEST_NOT_ACCEPTED
//!   (MS-ERREF: "No more connections can be made to this remote computer at this time", what
//!   Windows answers when it has no room for another session);
//! * opens, trees, async requests, change notifications and compound response bytes over
//!   their limits: STATUS_INSUFFICIENT_RESOURCES (Samba's smbXsrv_*_local_allocate_id when its
//!   open/tcon/session table is full; also Samba's answer to a 33rd channel);
//! * an open beyond the process-wide budget: STATUS_TOO_MANY_OPENED_FILES (Samba's
//!   map_nt_error_from_unix(EMFILE)), refused before open(2) would fail, so that accept,
//!   lockmgr and io_uring still get descriptors.
//!
//! The compound length limit and the output backpressure live in [`crate::conn`] (chain
//! split) and [`crate::worker`] (RECV paused while output is queued).

use std::sync::atomic::{AtomicUsize, Ordering};

use smb_proto::{lock_flags, status, Header, Request};

use crate::config::LimitsConfig;
use crate::conn::{AuthState, ChainCtx, Conn, PendingKind};

/// The process-wide open-file budget: descriptors held by connections (socket + opens) and
/// by file I/O in flight, against RLIMIT_NOFILE minus headroom.
pub struct FdBudget {
    in_use: AtomicUsize,
    limit: usize,
}

impl FdBudget {
    /// Raise RLIMIT_NOFILE's soft limit to the hard one (as Samba does) and derive the
    /// budget: `open_files` if configured (capped by the limit), else the limit minus an
    /// eighth (at least 64) of headroom.
    pub fn new(cfg: &LimitsConfig) -> FdBudget {
        let nofile = raise_nofile();
        let headroom = (nofile / 8).max(64);
        let auto = nofile.saturating_sub(headroom).max(1);
        let limit = match cfg.open_files {
            0 => auto,
            n => n.min(auto),
        };
        tracing::info!(
            nofile,
            limit,
            "open-file budget (RLIMIT_NOFILE minus headroom)"
        );
        FdBudget {
            in_use: AtomicUsize::new(0),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    pub fn add(&self, n: usize) {
        self.in_use.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(&self, n: usize) {
        // Saturating: accounting must never wrap and refuse every open.
        let _ = self
            .in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Whether one more open fits. Durable handles parked after a disconnect keep their
    /// descriptor and count too.
    pub fn has_room(&self) -> bool {
        self.in_use() + crate::durable::parked_count() < self.limit
    }
}

/// Set the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit.
fn raise_nofile() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
}

/// Header, fixed body and padding of one response, beyond its variable data.
const RESPONSE_OVERHEAD: usize = 1024;

/// The most variable data the answer to `req` may carry (the client's own bound on it).
fn max_response(req: &Request) -> usize {
    let n = match req {
        Request::Read(r) => r.length,
        Request::QueryDirectory(q) => q.output_buffer_length,
        Request::QueryInfo(q) => q.output_buffer_length,
        Request::Ioctl(i) => i.max_output_response,
        Request::ChangeNotify(c) => c.output_buffer_length,
        _ => 0,
    };
    n as usize
}

/// Which limit refused a request (logged once per connection and kind).
#[derive(Clone, Copy, Debug)]
enum Kind {
    SessionsInSetup = 0,
    Sessions,
    Trees,
    OpensPerSession,
    OpensPerConn,
    OpenFiles,
    PendingAsync,
    NotifyWatches,
    ResponseBytes,
    Locks,
}

/// Per-connection limit bookkeeping.
#[derive(Default)]
pub(crate) struct ConnLimits {
    /// Descriptors of this connection counted in [`FdBudget`] (socket + opens).
    fds_reported: usize,
    /// Limits already reported in the log for this connection (bit per [`Kind`]).
    warned: u16,
}

impl Conn {
    /// Bring this connection's share of the open-file budget up to date.
    pub(crate) fn sync_fds(&mut self) {
        let now = 1 + self.opens.len();
        let was = std::mem::replace(&mut self.limits.fds_reported, now);
        if now > was {
            self.shared.fds.add(now - was);
        } else {
            self.shared.fds.sub(was - now);
        }
    }

    /// The connection is gone: return its descriptors to the budget.
    pub(crate) fn release_fds(&mut self) {
        let was = std::mem::take(&mut self.limits.fds_reported);
        self.shared.fds.sub(was);
    }

    fn refuse(&mut self, kind: Kind, st: u32, limit: usize) -> Option<u32> {
        let bit = 1u16 << kind as u16;
        if self.limits.warned & bit == 0 {
            self.limits.warned |= bit;
            tracing::warn!(conn = self.id, peer = ?self.peer, ?kind, limit, "limit reached; refusing requests over it");
        } else {
            tracing::debug!(conn = self.id, ?kind, limit, "limit reached");
        }
        Some(st)
    }

    fn pending_full(&self) -> bool {
        self.pending.len() >= self.shared.config.limits.pending_async_per_conn
    }

    /// The status refusing `req` because a limit is reached, or `None` to process it.
    /// Called before every request is dispatched.
    pub(crate) fn request_limit(
        &mut self,
        req: &Request,
        hdr: &Header,
        ctx: &ChainCtx,
    ) -> Option<u32> {
        let l = self.shared.config.limits.clone();
        // The whole chain goes out as one NetBIOS message, whose length field has 24 bits:
        // a request whose answer could take the chain over the budget is refused up front.
        if ctx.response_bytes + max_response(req) + RESPONSE_OVERHEAD > l.max_response_bytes {
            return self.refuse(
                Kind::ResponseBytes,
                status::INSUFFICIENT_RESOURCES,
                l.max_response_bytes,
            );
        }
        let async_limit = l.pending_async_per_conn;
        match req {
            Request::SessionSetup(s)
                if hdr.session_id == 0 && s.flags & smb_proto::SESSION_FLAG_BINDING == 0 =>
            {
                let in_setup = self
                    .sessions
                    .values()
                    .filter(|s| matches!(s.state, AuthState::InProgress(_)))
                    .count();
                if in_setup >= l.sessions_in_setup_per_conn {
                    return self.refuse(
                        Kind::SessionsInSetup,
                        status::REQUEST_NOT_ACCEPTED,
                        l.sessions_in_setup_per_conn,
                    );
                }
                if self.sessions.len() >= l.sessions_per_conn {
                    return self.refuse(
                        Kind::Sessions,
                        status::REQUEST_NOT_ACCEPTED,
                        l.sessions_per_conn,
                    );
                }
            }
            Request::TreeConnect(_) => {
                let trees = self
                    .sessions
                    .get(&hdr.session_id)
                    .map_or(0, |s| s.trees.len());
                if trees >= l.trees_per_session {
                    return self.refuse(
                        Kind::Trees,
                        status::INSUFFICIENT_RESOURCES,
                        l.trees_per_session,
                    );
                }
            }
            Request::Create(_) => {
                // A CREATE may wait for an oplock/lease break.
                if self.pending_full() {
                    return self.refuse(
                        Kind::PendingAsync,
                        status::INSUFFICIENT_RESOURCES,
                        async_limit,
                    );
                }
                if self.opens.len() >= l.opens_per_conn {
                    return self.refuse(
                        Kind::OpensPerConn,
                        status::INSUFFICIENT_RESOURCES,
                        l.opens_per_conn,
                    );
                }
                let sid = ctx.session_id;
                if self.opens.values().filter(|o| o.session_id == sid).count()
                    >= l.opens_per_session
                {
                    return self.refuse(
                        Kind::OpensPerSession,
                        status::INSUFFICIENT_RESOURCES,
                        l.opens_per_session,
                    );
                }
                self.sync_fds();
                if !self.shared.fds.has_room() {
                    let limit = self.shared.fds.limit();
                    return self.refuse(Kind::OpenFiles, status::TOO_MANY_OPENED_FILES, limit);
                }
            }
            Request::ChangeNotify(_) => {
                if self.pending_full() {
                    return self.refuse(
                        Kind::PendingAsync,
                        status::INSUFFICIENT_RESOURCES,
                        async_limit,
                    );
                }
                let watches = self
                    .pending
                    .values()
                    .filter(|p| matches!(p.kind, PendingKind::Notify { .. }))
                    .count();
                if watches >= l.notify_watches_per_conn {
                    return self.refuse(
                        Kind::NotifyWatches,
                        status::INSUFFICIENT_RESOURCES,
                        l.notify_watches_per_conn,
                    );
                }
            }
            // Locks held by this connection (in the node's lockmgrd session, shared by every
            // client of the node).
            Request::Lock(lr)
                if lr.locks.iter().all(|e| e.flags & lock_flags::UNLOCK == 0)
                    && self.opens.values().map(|o| o.locks.len()).sum::<usize>()
                        + lr.locks.len()
                        > l.locks_per_conn =>
            {
                return self.refuse(
                    Kind::Locks,
                    status::INSUFFICIENT_RESOURCES,
                    l.locks_per_conn,
                );
            }
            // Requests that may go async: a blocking lock, a rename waiting for lease breaks.
            Request::Lock(lr)
                if lr.locks.iter().any(|e| {
                    e.flags & (lock_flags::FAIL_IMMEDIATELY | lock_flags::UNLOCK) == 0
                }) && self.pending_full() =>
            {
                return self.refuse(
                    Kind::PendingAsync,
                    status::INSUFFICIENT_RESOURCES,
                    async_limit,
                );
            }
            Request::SetInfo(si)
                if si.info_type == smb_proto::info_type::FILE
                    && matches!(
                        si.class,
                        crate::fs::class::RENAME | crate::fs::class::RENAME_EX
                    )
                    && self.pending_full() =>
            {
                return self.refuse(
                    Kind::PendingAsync,
                    status::INSUFFICIENT_RESOURCES,
                    async_limit,
                );
            }
            _ => {}
        }
        None
    }
}
