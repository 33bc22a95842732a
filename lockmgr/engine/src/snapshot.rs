//! Operator view of the engine (like `smbstatus`) and counters.

use crate::types::{
    ClientGuid, FileId, LeaseKey, LeaseState, OpenId, OplockGrant, OplockLevel, RequestId,
    SessionId, Time,
};

/// Everything the engine holds, as plain data. Ordered by id so two snapshots of the same
/// state compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub sessions: Vec<SessionInfo>,
    pub opens: Vec<OpenInfo>,
    pub locks: Vec<LockInfo>,
    pub lock_waiters: Vec<LockWaiterInfo>,
    pub deferred_opens: Vec<DeferredOpenInfo>,
    pub breaks: Vec<BreakInfo>,
    /// Files with File.DeletePending set and still open.
    pub delete_pending: Vec<FileId>,
    /// Files whose last open vanished with [`crate::Engine::end_session`] while delete-pending:
    /// nobody was told to unlink them. See [`crate::Engine::take_orphaned_deletes`].
    pub orphaned_deletes: Vec<FileId>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub session: SessionId,
    pub opens: usize,
    pub pending_requests: usize,
    /// Opens of the session holding an I/O grant.
    pub io_grants: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenInfo {
    pub open: OpenId,
    pub session: SessionId,
    pub file: FileId,
    /// Access after generic mapping.
    pub access: u32,
    pub share: u32,
    pub delete_on_close: bool,
    pub directory: bool,
    /// Current oplock level or lease state of this open.
    pub caching: OplockGrant,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockInfo {
    pub file: FileId,
    pub open: OpenId,
    pub offset: u64,
    pub length: u64,
    pub exclusive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockWaiterInfo {
    pub session: SessionId,
    pub request: RequestId,
    pub file: FileId,
    pub open: OpenId,
    pub offset: u64,
    pub length: u64,
    pub exclusive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeferredOpenInfo {
    pub session: SessionId,
    pub request: RequestId,
    pub file: FileId,
}

/// Who holds a caching state being broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BreakHolder {
    Oplock {
        open: OpenId,
        from: OplockLevel,
        to: OplockLevel,
    },
    Lease {
        client_guid: ClientGuid,
        key: LeaseKey,
        from: LeaseState,
        to: LeaseState,
    },
}

/// A break sent with ack required and not yet acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BreakInfo {
    pub session: SessionId,
    pub file: FileId,
    pub holder: BreakHolder,
    pub deadline: Time,
}

/// Counters. Gauges describe the current state; `*_total` count events since creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub sessions: usize,
    pub files: usize,
    pub opens: usize,
    pub leases: usize,
    pub locks_held: usize,
    pub lock_waiters: usize,
    pub deferred_opens: usize,
    pub breaks_pending: usize,
    pub orphaned_deletes: usize,
    pub requests_total: u64,
    pub opens_total: u64,
    pub sharing_violations_total: u64,
    pub locks_granted_total: u64,
    pub lock_conflicts_total: u64,
    pub breaks_sent_total: u64,
    pub breaks_acked_total: u64,
    pub break_timeouts_total: u64,
    pub cancels_total: u64,
    pub sessions_ended_total: u64,
    /// I/O grants given (`Reply::IoGranted` to an open that had none).
    pub io_grants_total: u64,
    /// `Notification::IoRecall`s sent (one per session and recall).
    pub io_recalls_total: u64,
    /// I/O grants asked for (`CheckIoGrant`, or a create with `io_grant`) and not given: the
    /// file had byte-range locks, caching a write would break, or something waiting.
    pub io_grants_refused_total: u64,
    /// `IoRecallAck`s received that answered a recall the engine was waiting for.
    pub io_recall_acks_total: u64,
    /// I/O grants held now (opens with a grant).
    pub io_grants_held: usize,
    /// Directories some session has change-notify watchers on.
    pub watched_dirs: usize,
    /// `DirChange`s received (changes a node made in a directory another node watches).
    pub dir_changes_total: u64,
    /// `Notification::DirChanged`s sent (one per watching session and change).
    pub dir_changes_forwarded_total: u64,
}
