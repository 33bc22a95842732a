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
//! The per-connection checks (`conn::limits`) run before each request is dispatched; the
//! compound length limit and the output backpressure live in [`crate::conn`] (chain split)
//! and [`crate::worker`] (RECV paused while output is queued).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::LimitsConfig;

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

    /// Whether one more open fits beside `parked` durable handles parked after a disconnect
    /// (they keep their descriptor too).
    pub fn has_room(&self, parked: usize) -> bool {
        self.in_use() + parked < self.limit
    }
}

/// Set the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit.
fn raise_nofile() -> usize {
    let Ok((mut soft, hard)) = crate::sys::nofile_limit() else {
        return 1024;
    };
    if soft < hard && crate::sys::set_nofile_limit(hard, hard).is_ok() {
        soft = hard;
    }
    usize::try_from(soft).unwrap_or(usize::MAX)
}
