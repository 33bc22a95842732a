//! Vocabulary shared by the engine, the wire protocol and the daemons.
//!
//! These types are plain data: the wire codec (`lockmgr-proto`) encodes exactly these, and the
//! engine consumes and produces exactly these, so there is one definition of each concept.

use std::fmt;

/// Time as the engine sees it: nanoseconds on a monotonic clock chosen by the caller.
///
/// The engine never reads a clock; every entry point takes `now`, which makes it deterministic
/// and testable in simulated time.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    pub const fn from_secs(s: u64) -> Time {
        Time(s.saturating_mul(1_000_000_000))
    }
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1_000_000))
    }
    pub const fn saturating_add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d.0))
    }
}

/// A span of engine time in nanoseconds.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Duration(pub u64);

impl Duration {
    pub const fn from_secs(s: u64) -> Duration {
        Duration(s.saturating_mul(1_000_000_000))
    }
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(ms.saturating_mul(1_000_000))
    }
}

/// Cluster-wide identity of one stream of one file (128 bits).
///
/// Every smbd node must derive the same id for the same stream: a hash of the filesystem's
/// identity (not `st_dev`, which differs between nodes), the inode number and the stream name.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct FileId(pub u128);

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({:032x})", self.0)
    }
}

/// One authenticated lock-manager session: one smbd node's connection to lockmgrd.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct SessionId(pub u64);

/// An open granted by the engine (the lock manager's half of an SMB2 FileId).
/// Allocated by the engine, unique for the engine's lifetime, never 0.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct OpenId(pub u64);

/// Request id chosen by the client; echoed in the response and in any later completion of a
/// deferred request (a create waiting for a break, a blocking byte-range lock).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct RequestId(pub u64);

/// SMB2 ClientGuid (MS-SMB2 2.2.3). Leases are keyed by (ClientGuid, LeaseKey).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct ClientGuid(pub u128);

impl fmt::Debug for ClientGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientGuid({:032x})", self.0)
    }
}

/// SMB2 lease key (MS-SMB2 2.2.13.2.8), 128 bits.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct LeaseKey(pub u128);

impl fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseKey({:032x})", self.0)
    }
}

/// Access mask bits that matter for sharing (MS-SMB2 2.2.13.1, MS-FSA 2.1.5.1.2.2).
pub mod access {
    pub const FILE_READ_DATA: u32 = 0x0000_0001;
    pub const FILE_WRITE_DATA: u32 = 0x0000_0002;
    pub const FILE_APPEND_DATA: u32 = 0x0000_0004;
    pub const FILE_READ_EA: u32 = 0x0000_0008;
    pub const FILE_WRITE_EA: u32 = 0x0000_0010;
    pub const FILE_EXECUTE: u32 = 0x0000_0020;
    pub const FILE_READ_ATTRIBUTES: u32 = 0x0000_0080;
    pub const FILE_WRITE_ATTRIBUTES: u32 = 0x0000_0100;
    pub const DELETE: u32 = 0x0001_0000;
    pub const READ_CONTROL: u32 = 0x0002_0000;
    pub const WRITE_DAC: u32 = 0x0004_0000;
    pub const WRITE_OWNER: u32 = 0x0008_0000;
    pub const SYNCHRONIZE: u32 = 0x0010_0000;
    pub const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
    pub const GENERIC_ALL: u32 = 0x1000_0000;
    pub const GENERIC_EXECUTE: u32 = 0x2000_0000;
    pub const GENERIC_WRITE: u32 = 0x4000_0000;
    pub const GENERIC_READ: u32 = 0x8000_0000;
}

/// Share access bits (MS-SMB2 2.2.13 ShareAccess).
pub mod share {
    pub const READ: u32 = 0x1;
    pub const WRITE: u32 = 0x2;
    pub const DELETE: u32 = 0x4;
}

/// Lease state bits (MS-SMB2 2.2.13.2.8): the wire values of SMB2_LEASE_*_CACHING.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct LeaseState(pub u8);

impl LeaseState {
    pub const NONE: LeaseState = LeaseState(0);
    pub const READ: LeaseState = LeaseState(0x1);
    pub const HANDLE: LeaseState = LeaseState(0x2);
    pub const WRITE: LeaseState = LeaseState(0x4);
    pub const RH: LeaseState = LeaseState(0x3);
    pub const RW: LeaseState = LeaseState(0x5);
    pub const RWH: LeaseState = LeaseState(0x7);

    pub const fn contains(self, other: LeaseState) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: LeaseState) -> LeaseState {
        LeaseState(self.0 | other.0)
    }
    pub const fn intersection(self, other: LeaseState) -> LeaseState {
        LeaseState(self.0 & other.0)
    }
    /// Only R, RH, RW, RWH (and none) are valid lease states for files (MS-SMB2 3.3.5.9.8).
    pub const fn is_valid(self) -> bool {
        matches!(self.0, 0 | 0x1 | 0x3 | 0x5 | 0x7)
    }
}

impl fmt::Debug for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return write!(f, "LeaseState(NONE)");
        }
        let r = if self.contains(Self::READ) { "R" } else { "" };
        let w = if self.contains(Self::WRITE) { "W" } else { "" };
        let h = if self.contains(Self::HANDLE) { "H" } else { "" };
        write!(f, "LeaseState({r}{w}{h})")
    }
}

/// Oplock levels (MS-SMB2 2.2.13 RequestedOplockLevel, without LEASE which is `OplockRequest::Lease`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[repr(u8)]
pub enum OplockLevel {
    #[default]
    None = 0x00,
    LevelII = 0x01,
    Exclusive = 0x08,
    Batch = 0x09,
}

impl OplockLevel {
    pub fn from_wire(v: u8) -> Option<OplockLevel> {
        match v {
            0x00 => Some(OplockLevel::None),
            0x01 => Some(OplockLevel::LevelII),
            0x08 => Some(OplockLevel::Exclusive),
            0x09 => Some(OplockLevel::Batch),
            _ => None,
        }
    }
}

/// A lease request or grant (MS-SMB2 2.2.13.2.8 v1 / 2.2.13.2.10 v2).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Lease {
    pub key: LeaseKey,
    pub state: LeaseState,
    /// v2 only: the parent directory's lease key, if the client set it.
    pub parent_key: Option<LeaseKey>,
    /// v2 only: the lease epoch. `None` means a v1 lease.
    pub epoch: Option<u16>,
    /// Grants only (ignored in requests): a break of this lease is outstanding, so the
    /// CREATE response carries SMB2_LEASE_FLAG_BREAK_IN_PROGRESS (MS-SMB2 2.2.14.2.10,
    /// 3.3.5.9.8: "If Lease.Breaking is TRUE ...").
    pub breaking: bool,
}

/// What caching the opener asks for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum OplockRequest {
    #[default]
    None,
    Oplock(OplockLevel),
    Lease(Lease),
}

/// What caching the engine granted.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum OplockGrant {
    #[default]
    None,
    Oplock(OplockLevel),
    Lease(Lease),
}

/// One element of a byte-range lock or unlock request (MS-SMB2 2.2.26.1).
/// `length == 0` is a valid zero-length range; `offset + length` must not wrap past 2^64.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct LockRange {
    pub offset: u64,
    pub length: u64,
    pub exclusive: bool,
}

/// Outcome codes. The engine speaks these; the SMB server maps them to NTSTATUS at the edge.
/// `#[non_exhaustive]`: match with a fallback arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
#[repr(u16)]
pub enum Status {
    Success = 0,
    /// STATUS_SHARING_VIOLATION (0xC0000043).
    SharingViolation = 1,
    /// STATUS_DELETE_PENDING (0xC0000056).
    DeletePending = 2,
    /// STATUS_LOCK_NOT_GRANTED (0xC0000055).
    LockNotGranted = 3,
    /// STATUS_FILE_LOCK_CONFLICT (0xC0000054).
    FileLockConflict = 4,
    /// STATUS_RANGE_NOT_LOCKED (0xC000007E).
    RangeNotLocked = 5,
    /// STATUS_INVALID_PARAMETER (0xC000000D).
    InvalidParameter = 6,
    /// STATUS_INVALID_HANDLE (0xC0000008): unknown open id, or an open of another session.
    InvalidHandle = 7,
    /// STATUS_CANCELLED (0xC0000120): a waiting request was cancelled.
    Cancelled = 8,
    /// STATUS_CANNOT_DELETE (0xC0000121).
    CannotDelete = 9,
    /// STATUS_INVALID_OPLOCK_PROTOCOL (0xC00000E3): a break ack that matches no break.
    InvalidOplockProtocol = 10,
    /// STATUS_OBJECT_NAME_NOT_FOUND (0xC0000034): e.g. lease ack for an unknown lease.
    NotFound = 11,
    /// STATUS_REQUEST_NOT_ACCEPTED (0xC00000D0): the engine refuses the request in this state.
    RequestNotAccepted = 12,
    /// STATUS_INVALID_DEVICE_STATE (0xC0000184): lease key reused for another file, etc.
    InvalidDeviceState = 13,
    /// STATUS_INVALID_LOCK_RANGE (0xC00001A1): offset + length wraps past 2^64.
    InvalidLockRange = 14,
    /// STATUS_UNSUCCESSFUL (0xC0000001): e.g. a break ack when no break is in progress.
    Unsuccessful = 15,
    /// STATUS_INSUFFICIENT_RESOURCES (0xC000009A): the session reached a cap
    /// ([`crate::SessionLimits`]).
    InsufficientResources = 16,
    /// STATUS_FILE_NOT_AVAILABLE (0xC0000467): the file has a disconnected persistent open
    /// (MS-SMB2 3.3.5.9); the client may retry once its owner reclaimed it or it expired.
    FileNotAvailable = 17,
}

impl Status {
    /// The NTSTATUS value an SMB server puts on the wire for this outcome.
    pub const fn ntstatus(self) -> u32 {
        match self {
            Status::Success => 0x0000_0000,
            Status::SharingViolation => 0xC000_0043,
            Status::DeletePending => 0xC000_0056,
            Status::LockNotGranted => 0xC000_0055,
            Status::FileLockConflict => 0xC000_0054,
            Status::RangeNotLocked => 0xC000_007E,
            Status::InvalidParameter => 0xC000_000D,
            Status::InvalidHandle => 0xC000_0008,
            Status::Cancelled => 0xC000_0120,
            Status::CannotDelete => 0xC000_0121,
            Status::InvalidOplockProtocol => 0xC000_00E3,
            Status::NotFound => 0xC000_0034,
            Status::RequestNotAccepted => 0xC000_00D0,
            Status::InvalidDeviceState => 0xC000_0184,
            Status::InvalidLockRange => 0xC000_01A1,
            Status::Unsuccessful => 0xC000_0001,
            Status::InsufficientResources => 0xC000_009A,
            Status::FileNotAvailable => 0xC000_0467,
        }
    }

    pub fn from_wire(v: u16) -> Option<Status> {
        use Status::*;
        Some(match v {
            0 => Success,
            1 => SharingViolation,
            2 => DeletePending,
            3 => LockNotGranted,
            4 => FileLockConflict,
            5 => RangeNotLocked,
            6 => InvalidParameter,
            7 => InvalidHandle,
            8 => Cancelled,
            9 => CannotDelete,
            10 => InvalidOplockProtocol,
            11 => NotFound,
            12 => RequestNotAccepted,
            13 => InvalidDeviceState,
            14 => InvalidLockRange,
            15 => Unsuccessful,
            16 => InsufficientResources,
            17 => FileNotAvailable,
            _ => return None,
        })
    }
}

/// CREATE parameters the engine needs (a subset of MS-SMB2 2.2.13).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct OpenRequest {
    pub file: FileId,
    /// Granted access mask after generic mapping (see `access`).
    pub access: u32,
    /// Share access (see `share`).
    pub share: u32,
    /// FILE_DELETE_ON_CLOSE was in CreateOptions (the caller has already checked DELETE access).
    pub delete_on_close: bool,
    /// The file is a directory: no oplocks; leases only R/RH.
    pub directory: bool,
    /// The create overwrites/supersedes the file (dispositions OVERWRITE, OVERWRITE_IF,
    /// SUPERSEDE): breaks all caching to NONE rather than to Level II / R.
    pub overwrite: bool,
    pub client_guid: ClientGuid,
    pub oplock: OplockRequest,
    /// For an open of a named stream (`file:stream`), the FileId of its file's unnamed
    /// stream. MS-FSA 2.1.5.1.2.1: streams share their file's delete state, so a
    /// delete-pending file refuses opens of its streams (DELETE_PENDING), and an open of the
    /// unnamed stream asking for DELETE conflicts with stream opens that do not share delete.
    pub stream_base: Option<FileId>,
    /// The name (link) the file is opened through, as the caller identifies it; 0 when the
    /// caller does not tell links apart. Delete-pending belongs to a link (MS-FSA
    /// 2.1.5.14.3 Open.Link.IsDeleted): a create through a delete-pending link fails with
    /// DELETE_PENDING, one through another hard link of the same file does not, and the
    /// close of the last open through a delete-pending link deletes that name. A named
    /// stream's open names its file's link (a stream's own delete-pending is the stream's).
    pub link: u64,
    /// The opener takes an I/O grant with the open if the file allows one at grant time:
    /// the answer is then [`Reply::OpenedIo`], and the open's first READ/WRITE need not ask
    /// (`CheckIoGrant`). Only a node that records and honours recalls may ask.
    pub io_grant: bool,
}

/// Requests a session sends to the engine.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// CREATE: share-mode check, then oplock/lease grant. May be deferred while breaks resolve.
    Open(OpenRequest),
    /// CLOSE: drops the open, its byte-range locks and its oplock; may delete-on-close.
    Close { open: OpenId },
    /// SET_INFO FileDispositionInformation (MS-FSA 2.1.5.14.3): set or clear delete-pending.
    SetDeletePending { open: OpenId, delete: bool },
    /// LOCK with lock flags (MS-SMB2 3.3.5.14). Several elements are applied in order and all
    /// rolled back if one fails. A request that does not fail immediately must have one element.
    Lock {
        open: OpenId,
        ranges: Vec<LockRange>,
        fail_immediately: bool,
    },
    /// LOCK with SMB2_LOCKFLAG_UNLOCK: each range must match a held lock exactly.
    Unlock {
        open: OpenId,
        ranges: Vec<LockRange>,
    },
    /// SMB2 CANCEL of a waiting request (a blocking lock or a deferred open) of this session.
    Cancel { request: RequestId },
    /// The mandatory byte-range-lock check for READ/WRITE (MS-FSA 2.1.4.10).
    CheckIo {
        open: OpenId,
        offset: u64,
        length: u64,
        write: bool,
    },
    /// OPLOCK_BREAK acknowledgement (MS-SMB2 3.3.5.22.1).
    OplockBreakAck { open: OpenId, level: OplockLevel },
    /// LEASE_BREAK acknowledgement (MS-SMB2 3.3.5.22.2).
    LeaseBreakAck {
        client_guid: ClientGuid,
        key: LeaseKey,
        state: LeaseState,
    },
    /// `open` is about to rename its file (SET_INFO FileRenameInformation), to make it
    /// delete-pending (FileDispositionInformation), or to close as a delete-on-close handle
    /// (MS-FSA 2.1.5.14.11, 2.1.5.14.3, 2.1.4.12): every other open loses handle caching
    /// first (leases drop H, batch oplocks break to none), whatever `open` itself caches.
    /// `Done(Success)` when nothing needs breaking; otherwise `Pending`, completed with
    /// `Done(Success)` once those breaks are acknowledged or timed out. The caller renames,
    /// sets delete-pending or closes after that. (The name predates the delete use; it is
    /// the wire protocol's.)
    BreakForRename { open: OpenId },
    /// Who else has `file` open, for the checks a rename or replace makes against every open
    /// in the cluster (MS-FSA 2.1.5.14.11: another open without FILE_SHARE_DELETE fails the
    /// rename; an open target cannot be replaced; a parent directory open with DELETE access
    /// blocks renames of its children). `except` (the caller's own open) is not counted.
    /// The answer also says which links are delete-pending, for FileStandardInformation.
    /// Answered with [`Reply::Usage`].
    QueryUsage {
        file: FileId,
        except: Option<OpenId>,
    },
    /// Make an open durable (MS-SMB2 3.3.5.9.6, 3.3.5.9.10): when its owner goes away
    /// (`Disconnect`, or the whole session ends) it stays in force, disconnected, for
    /// `timeout_ms`. `key` is the SMB persistent file id the client will reconnect with; it must
    /// be unique among durable opens (InvalidParameter otherwise). `blob` is what a node needs
    /// to reopen the file (at most [`MAX_DURABLE_BLOB`] bytes); the engine does not read it.
    /// A `persistent` open (MS-SMB2 3.3.5.9.10, a continuously available share) is kept on
    /// disconnect whatever its caching, is never purged by another create, and makes every
    /// create of its file fail with `FileNotAvailable` while it is disconnected (3.3.5.9).
    SetDurable {
        open: OpenId,
        key: u64,
        timeout_ms: u32,
        persistent: bool,
        blob: Vec<u8>,
    },
    /// The open's SMB connection went away (MS-SMB2 3.3.7.1): a durable open is disconnected
    /// (`Done(Success)`), any other is closed (answered like `Close`).
    Disconnect { open: OpenId },
    /// Find a disconnected durable open by key: `Durable { open, blob }`, `Done(NotFound)`, or
    /// `Done(InvalidDeviceState)` while its owner still has it.
    DurableLookup { key: u64 },
    /// Attach the disconnected durable open `open` (found by `DurableLookup`) to this session
    /// with its share mode, byte-range locks and caching (MS-SMB2 3.3.5.9.7, 3.3.5.9.12):
    /// `Opened` with its current grant, or `Done(NotFound)` if it is gone, was reclaimed
    /// already, or holds a lease of another client (a lease belongs to its ClientGuid).
    Reclaim {
        key: u64,
        open: OpenId,
        client_guid: ClientGuid,
    },
    // New variants go last: replica snapshots and logs (postcard) encode variants by index.
    /// CREATE with a durable request (DHnQ / DH2Q) in one round trip: `Open` and, in the same
    /// engine step, `SetDurable` for the open it grants, if durability is allowed. It is
    /// allowed for a file (not a directory) whose grant is a batch oplock or a lease with
    /// handle caching, or whatever the grant if `durable.persistent` (MS-SMB2 3.3.5.9.6,
    /// 3.3.5.9.10), with a blob of at most [`MAX_DURABLE_BLOB`] bytes and a key no other
    /// open uses. Answered [`Reply::OpenedDurable`] when the open is durable, `Opened` when
    /// it is granted without durability (an SMB client then gets no durable context: the
    /// create itself succeeds), a status when the open fails; a deferred one (`Pending`)
    /// keeps its durable request and applies it when it is granted.
    ///
    /// Rollback rule: the open and its durable record appear in the same step or not at
    /// all. An open that fails leaves no durable record (its key stays free); a durable part
    /// that is not allowed leaves the open exactly as `Open` would have granted it.
    OpenDurable {
        open: OpenRequest,
        durable: DurableRequest,
    },
    /// `open`'s file was renamed through it (SET_INFO FileRenameInformation succeeded): the
    /// link it was opened through is now called `link`, for every open through that link,
    /// with its delete-pending mark (MS-FSA 2.1.5.14.11 moves the Link). `Done(Success)`.
    Relink { open: OpenId, link: u64 },
    /// `CheckIo` that may also grant the open an I/O grant: answered like `CheckIo`, or with
    /// [`Reply::IoGranted`] (which means `Success`) when nothing would make a later `CheckIo`
    /// of this open answer anything but `Success` with no side effect (see [`Reply::IoGranted`]).
    CheckIoGrant {
        open: OpenId,
        offset: u64,
        length: u64,
        write: bool,
    },
    /// Answer to [`Notification::IoRecall`]: this session no longer uses any I/O grant on
    /// `file` (its later READ/WRITE send `CheckIo` again). Always `Done(Success)`; an ack of a
    /// recall the engine is not waiting for changes nothing.
    IoRecallAck { file: FileId },
    /// CLOSE of a delete-on-close (or delete-pending) handle in one request:
    /// `BreakForRename` for `open`, then, once nothing is left to wait for, `Close`. Answered
    /// [`Reply::Closed`] (at once, or as the completion of `Pending`) saying whether the
    /// node must unlink the name (MS-FSA 2.1.5.4: the last close of a delete-pending link);
    /// `Done(InvalidHandle)` if the open is gone by then, `Done(Cancelled)` if cancelled
    /// (the open stays: the node closes it with `Close`).
    BreakAndClose { open: OpenId },
    /// Change notify across nodes (MS-SMB2 3.3.5.19, MS-FSA 2.1.4.1): this session has
    /// CHANGE_NOTIFY watchers on directory `dir` (its [`FileId`], the id an open of the
    /// directory names: every node derives the same one), watching its tree (SMB2_WATCH_TREE)
    /// if `tree`. Sent on the node's first watch of the directory and when `tree` changes;
    /// registering again replaces `tree`. `Done(Success)`, or `Done(InsufficientResources)`
    /// for a new directory beyond [`crate::SessionLimits::max_watches`]. Every other session
    /// hears of the change of the watched set through [`Notification::DirWatched`].
    /// `path` says where the directory is, for nodes that watch their own part of the
    /// filesystem for changes made outside SMB (inotify sees only what this machine does on a
    /// cluster filesystem): the share's name, then the path below its root, `\`-separated
    /// (`share\a\b`; the same on every node of one cluster); empty if unknown. At most
    /// [`MAX_DIR_CHANGE_NAME`] bytes (longer: `Done(InvalidParameter)`). The first non-empty
    /// path a directory is registered with is the one other sessions are told.
    WatchDir {
        dir: FileId,
        tree: bool,
        path: String,
    },
    /// The session's last watcher of `dir` is gone. `Done(Success)` (also when it was not
    /// registered).
    UnwatchDir { dir: FileId },
    /// The session changed something in (or, `subtree`, below) directory `dir`, which another
    /// session watches ([`Notification::DirWatched`] told it so): forwarded as
    /// [`Notification::DirChanged`] to every other session watching `dir` (its tree, for a
    /// `subtree` change). `Done(Success)`; `Done(InvalidParameter)` for a name longer than
    /// [`MAX_DIR_CHANGE_NAME`].
    DirChange(DirChange),
}

/// One change reported to a directory's watchers (MS-FSCC 2.7.1 FILE_NOTIFY_INFORMATION and
/// the CompletionFilter bits it matches, MS-SMB2 2.2.35).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DirChange {
    /// The watched directory.
    pub dir: FileId,
    /// FILE_ACTION_* (MS-FSCC 2.7.1), or [`DIR_CHANGES_LOST`]: changes were dropped, the
    /// watchers must enumerate the directory again (STATUS_NOTIFY_ENUM_DIR).
    pub action: u32,
    /// FILE_NOTIFY_CHANGE_* bits the change matches.
    pub filter: u32,
    /// The entry's name relative to `dir` ('\\'-separated below it), UTF-8.
    pub name: String,
    /// The entry is below `dir`, not in it: only watchers of the tree see it.
    pub subtree: bool,
}

/// [`DirChange::action`] saying that changes were lost (STATUS_NOTIFY_ENUM_DIR at the
/// watchers, MS-SMB2 3.3.5.19); FILE_ACTION_* values start at 1.
pub const DIR_CHANGES_LOST: u32 = 0;

/// [`DirChange::action`] saying that `dir` itself became delete-pending while the watchers'
/// nodes hold it open (its entry `name` is empty): their waiting CHANGE_NOTIFYs end with
/// STATUS_DELETE_PENDING as on one node (MS-FSA 2.1.5.4; smbtorture smb2.notify.rmdir*).
/// No FILE_ACTION_* value is this large.
pub const DIR_DELETE_PENDING: u32 = u32::MAX;

/// Longest [`DirChange::name`], in UTF-8 bytes. A longer path is reported as
/// [`DIR_CHANGES_LOST`] by the node.
pub const MAX_DIR_CHANGE_NAME: usize = 2048;

/// [`Notification::DirWatched`] state bits.
pub mod watched {
    /// Some other session watches the directory.
    pub const DIR: u8 = 0x1;
    /// Some other session watches the directory's tree (SMB2_WATCH_TREE).
    pub const TREE: u8 = 0x2;
}

/// The durable half of [`Request::OpenDurable`]: the fields of [`Request::SetDurable`]
/// but the open, which the engine grants in the same step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DurableRequest {
    pub key: u64,
    pub timeout_ms: u32,
    pub persistent: bool,
    pub blob: Vec<u8>,
}

/// Largest [`Request::SetDurable`] blob.
pub const MAX_DURABLE_BLOB: usize = 2048;

/// The immediate or deferred answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// The open was granted.
    Opened { open: OpenId, grant: OplockGrant },
    /// The request waits (a create waiting for breaks; a blocking lock). A later `Completed`
    /// event with the same request id carries the final reply. Maps to SMB2 STATUS_PENDING.
    Pending,
    /// The request finished with this status (and nothing else to say).
    Done(Status),
    /// Answer to `Close`: whether the close deleted the file (delete-on-close / delete-pending
    /// and this was the last open), so the smbd node must unlink it.
    Closed { delete_file: bool },
    /// Answer to `Close` (or `BreakAndClose`, `Disconnect`) of a named-stream open that was
    /// the last open of its file while the file's name it was opened through is
    /// delete-pending: the node unlinks that name, and the file's streams go with it. MS-FSA
    /// 2.1.1.3 File.OpenList holds the opens of every stream, and 2.1.5.4 deletes the file
    /// when it empties (smbtorture smb2.streams.delete).
    ClosedDeleteBase,
    /// Answer to `LeaseBreakAck` / `OplockBreakAck` carrying the resulting state.
    Acked { grant: OplockGrant },
    /// Answer to `DurableLookup`: the disconnected open and the blob stored with it.
    Durable { open: OpenId, blob: Vec<u8> },
    /// Answer to `QueryUsage`.
    Usage(FileUsage),
    /// Answer to [`Request::OpenDurable`]: the open was granted and is durable.
    OpenedDurable { open: OpenId, grant: OplockGrant },
    /// Answer to [`Request::CheckIoGrant`]: `Success`, and the open may do any READ or WRITE
    /// without asking until its session receives a [`Notification::IoRecall`] of its file
    /// with a generation at least `generation`. While the grant stands the file has no
    /// byte-range locks and no other caching a write would break (MS-FSA 2.1.4.10,
    /// 2.1.4.12), so every `CheckIo` of the open would answer `Success` and change nothing.
    IoGranted { generation: u64 },
    /// Answer to an `Open` / `OpenDurable` whose [`OpenRequest::io_grant`] asked for an I/O
    /// grant and got one: `Opened` (or `OpenedDurable` if `durable`) and, for the new open,
    /// `IoGranted { generation }` as if its first `CheckIoGrant` had answered it.
    OpenedIo {
        open: OpenId,
        grant: OplockGrant,
        durable: bool,
        generation: u64,
    },
}

/// The other opens of a file, as counts ([`Request::QueryUsage`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct FileUsage {
    /// Opens of the file (any access), not counting disconnected durable opens.
    pub opens: u32,
    /// Opens with data access (read, write, append, execute, delete) that do not share delete.
    pub deny_delete: u32,
    /// Opens holding DELETE access.
    pub delete_access: u32,
    /// Links of the file that are delete-pending (Link.IsDeleted), whoever set it.
    pub deleted_links: u32,
    /// The link `except` was opened through is delete-pending (for a named-stream open: the
    /// stream is): FileStandardInformation.DeletePending of that open (MS-FSA 2.1.5.11.27).
    pub except_deleted: bool,
}

/// What the engine asks of a session without being asked: addressed by `SessionId`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Notification {
    /// Break an oplock (MS-SMB2 2.2.23.1): the holder's node sends OPLOCK_BREAK to its client.
    OplockBreak {
        open: OpenId,
        new_level: OplockLevel,
    },
    /// Break a lease (MS-SMB2 2.2.23.2).
    LeaseBreak {
        client_guid: ClientGuid,
        key: LeaseKey,
        current: LeaseState,
        new: LeaseState,
        /// v2 leases: the new epoch.
        epoch: Option<u16>,
        /// SMB2_NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED.
        ack_required: bool,
    },
    /// A deferred request (reply was `Pending`) has finished.
    Completed { request: RequestId, reply: Reply },
    /// Stop using the I/O grants (`Reply::IoGranted` with a generation at most `generation`)
    /// of every open of `file`, then answer [`Request::IoRecallAck`]. The engine sends it
    /// before it grants a byte-range lock on the file or caching a write would have to break,
    /// and holds that back until every recalled session acknowledged (or ended).
    IoRecall { file: FileId, generation: u64 },
    /// What the session should know to report its changes cheaply: whether sessions other
    /// than it watch `dir` now (`state`, [`watched`] bits; 0: nobody else does). Sent when
    /// that changes, and for every watched directory when the session opens. `path` is where
    /// the directory is ([`Request::WatchDir`]'s `path`; empty if unknown or `state` is 0).
    DirWatched {
        dir: FileId,
        state: u8,
        path: String,
    },
    /// A change another session made ([`Request::DirChange`]) in a directory this session
    /// watches.
    DirChanged(DirChange),
}

/// An output of the engine: a reply or notification for one session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Output {
    Reply {
        session: SessionId,
        request: RequestId,
        reply: Reply,
    },
    Notify {
        session: SessionId,
        notification: Notification,
    },
}
