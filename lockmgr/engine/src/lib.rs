//! The lock engine: all SMB state the cluster shares, with no I/O and no clock.
//!
//! Driven like quinn's protocol state machines: the caller feeds requests with
//! [`Engine::handle`] (passing the current [`Time`]), fires timers with
//! [`Engine::handle_timeout`] when [`Engine::poll_timeout`] says so, and drains replies and
//! notifications with [`Engine::poll_output`].
//!
//! What it keeps, per file (a [`FileId`]):
//! * share modes (MS-FSA 2.1.5.1.2.2) as O(1) counters, and File.DeletePending;
//! * oplocks and leases (MS-SMB2 3.3.5.9, MS-FSA 2.1.4.12), with deferred creates waiting
//!   for breaks;
//! * byte-range locks (MS-FSA 2.1.4.10, 2.1.5.8) in an offset-ordered table bucketed by
//!   length, with FIFO waiters;
//! * I/O grants: opens allowed to READ/WRITE without a `CheckIo` round trip while the file has
//!   no byte-range locks and no caching a write would break, recalled from their sessions
//!   (and acknowledged) before either appears (`engine/io_grant.rs`).
//!
//! Contract with the daemon:
//! * every [`Engine::handle`] call yields exactly one [`Output::Reply`] for its request id;
//!   a [`Reply::Pending`] is later followed by exactly one [`Notification::Completed`] with
//!   the same id, unless the session ends first;
//! * request ids of a session's pending requests must be unique (a duplicate gets
//!   `InvalidParameter`), except for `Cancel`, which may reuse the id it cancels;
//! * unknown sessions get `RequestNotAccepted`; opens of other sessions `InvalidHandle`;
//! * when a session's last open of a delete-pending file vanishes in
//!   [`Engine::end_session`], nobody was told to unlink it: the daemon must collect such
//!   files with [`Engine::take_orphaned_deletes`] (new opens get `DeletePending` until then).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]

mod brl;
mod engine;
mod hash;
mod sharing;
pub mod snapshot;
pub mod types;

pub use engine::Engine;
pub use sharing::{map_generic, pair_conflicts};
pub use snapshot::*;
pub use types::*;

/// Engine tunables.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// How long a holder has to acknowledge an oplock or lease break before the engine completes
    /// the break as if acknowledged to None (Samba and ksmbd use 35 s).
    pub break_timeout: Duration,
    /// What one session (one smbd node) may hold; beyond it requests fail with
    /// [`Status::InsufficientResources`].
    pub limits: SessionLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            break_timeout: Duration::from_secs(35),
            limits: SessionLimits::default(),
        }
    }
}

/// Per-session caps, so one node (compromised, or buggy) cannot exhaust lockmgrd's memory at
/// the expense of the others. The engine knows sessions (nodes), not the SMB connections
/// inside them, so the caps are per node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionLimits {
    /// Opens held at once.
    pub max_opens: usize,
    /// Byte-range locks held at once (over all the session's opens). Locks granted to waiters
    /// that were queued before the cap was reached may exceed it by at most `max_waiters`.
    pub max_locks: usize,
    /// Requests waiting at once: blocking byte-range locks and deferred opens.
    pub max_waiters: usize,
    /// Directories with change-notify watchers registered at once (`Request::WatchDir`).
    pub max_watches: usize,
}

impl Default for SessionLimits {
    /// Generous for a node serving thousands of clients (Windows' own per-handle lock limits
    /// are far lower), small enough that a few nodes' worth fits in memory: about 100 bytes
    /// per lock and a few hundred per open.
    fn default() -> Self {
        SessionLimits {
            max_opens: 1 << 20,
            max_locks: 1 << 22,
            max_waiters: 1 << 16,
            max_watches: 1 << 16,
        }
    }
}
