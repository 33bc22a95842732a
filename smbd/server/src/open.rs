//! An open file handle (MS-SMB2 3.3.1.10 Open) and the table of durable opens that outlived
//! their connection. An [`Open`] is not tied to a connection: a durable one is parked in
//! [`ParkedOpens`] (owned by [`crate::shared::Shared`]) when its connection goes away and is
//! taken over by the connection that reconnects it, so it lives below both.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::durable::DurableState;
use crate::fs::DirEntry;
use crate::locking::{self, access_bits, OplockGrant, OplockLevel};

/// What a replayed CREATE (SMB2_FLAGS_REPLAY_OPERATION with the same CreateGuid, MS-SMB2
/// 3.3.5.9.10) needs of the open it created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplayRecord {
    pub create_guid: [u8; 16],
    /// Connection.ClientGuid of the client that created it: only that client replays it.
    pub client_guid: [u8; 16],
    /// The CREATE's action (created, opened, ...), repeated to the replay.
    pub create_action: u32,
}

impl ReplayRecord {
    /// Whether a CREATE with `create_guid` from client `client_guid` replays this one.
    pub(crate) fn names(&self, create_guid: [u8; 16], client_guid: [u8; 16]) -> bool {
        self.create_guid == create_guid && self.client_guid == client_guid
    }
}

/// A directory open's enumeration (QUERY_DIRECTORY).
pub(crate) struct DirState {
    pub entries: Vec<DirEntry>,
    pub pos: usize,
    pub started: bool,
}

/// The named stream an open refers to.
#[derive(Debug, Clone)]
pub(crate) struct OpenStream {
    /// Name with the case it was created with.
    pub name: String,
    /// Data file in the stream depot.
    pub path: PathBuf,
}

pub(crate) struct Open {
    pub session_id: u64,
    pub tree_id: u32,
    pub share: usize,
    /// Absolute path; updated on rename.
    pub abs: PathBuf,
    /// Path relative to the share root (client view, for FileNameInformation).
    pub rel: PathBuf,
    /// Named stream of an open of `file:stream`; `file` is then the stream's data.
    pub stream: Option<OpenStream>,
    pub file: Option<File>,
    /// O_PATH descriptor of the object itself where `file` is not it: a directory (which
    /// has no `file`) or the base file of a stream open. QUERY_INFO, SET_INFO and CLOSE act
    /// through [`Open::object`], never through `abs`, which a swapped directory could
    /// redirect (outside the share, or onto another file).
    pub pin: Option<File>,
    pub is_dir: bool,
    /// Granted access after generic mapping.
    pub access: u32,
    /// ShareAccess of the CREATE (MS-SMB2 2.2.13), for the operator view.
    pub share_access: u32,
    pub lock_open: Option<locking::OpenId>,
    pub stable_id: u128,
    pub dir: Option<DirState>,
    pub position: u64,
    pub mode: u32,
    pub delete_pending: bool,
    pub grant: OplockGrant,
    /// Set by the handle's first CHANGE_NOTIFY; it watches its directory until closed.
    pub notify: Option<NotifyWatch>,
    /// FSCTL_LMR_REQUEST_RESILIENCY was granted (MS-SMB2 3.3.5.15.9).
    pub resilient: bool,
    /// Durable handle granted (DHnQ/DH2Q); v2 carries the create GUID.
    pub durable: Option<DurableState>,
    /// Open.CreateGuid of a DH2Q create, durable or not (MS-SMB2 3.3.5.9.10 sets it before
    /// durability is decided), while the open is replay-eligible: a replay of that CREATE is
    /// answered with this open until the handle's first request (Open.IsReplayEligible, kept
    /// for persistent opens), after which it is `None`.
    pub replay: Option<ReplayRecord>,
    /// Open.ChannelSequence (MS-SMB2 3.3.5.2.10): the newest ChannelSequence seen in a
    /// request on this handle; modifying requests with an older one are refused.
    pub channel_sequence: u16,
    /// Byte-range locks held, to re-establish them on a durable reconnect.
    pub locks: Vec<locking::LockRange>,
    /// Open.LockSequenceArray (MS-SMB2 3.3.1.10): 0xFF = invalid entry.
    pub lock_seq: [u8; 64],
    /// The identity that opened it: a delete-on-close at teardown unlinks with it.
    pub identity: Option<Arc<crate::identity::UnixIdentity>>,
    /// Its part in when writes move the file's LastWriteTime (crate::write_time).
    pub write_time: crate::write_time::WriteTime,
}

impl Open {
    /// Descriptors this open holds, for the open-file budget: a stream open holds two (the
    /// stream's data and its base file's `pin`), a directory one (`pin`).
    pub(crate) fn descriptors(&self) -> usize {
        usize::from(self.file.is_some()) + usize::from(self.pin.is_some())
    }

    /// The descriptor of the object this open names (the base file of a stream open); `None`
    /// only for an open that was set up without one (callers refuse the request then).
    pub(crate) fn object(&self) -> Option<&File> {
        match (&self.stream, &self.file) {
            (None, Some(f)) => Some(f),
            _ => self.pin.as_ref(),
        }
    }
}

/// A directory handle's change-notify watch (MS-SMB2 3.3.5.19, MS-FSA 2.1.5.11): from its
/// first CHANGE_NOTIFY until it is closed the handle watches its directory, and changes that
/// happen while no CHANGE_NOTIFY is waiting are kept for the next one (smbtorture
/// smb2.notify.dir: a client that asks again after a burst of changes gets them at once
/// rather than waiting for a change that may never come).
#[derive(Debug, Default)]
pub(crate) struct NotifyWatch {
    /// The directory watched, as registered with `Shared::watch`.
    pub dir: PathBuf,
    /// OutputBufferLength of the first CHANGE_NOTIFY: what the changes kept between requests
    /// may take (MS-FSA 2.1.5.11: the buffer is sized by the first request).
    pub buffer_size: u32,
    /// CompletionFilter of the first CHANGE_NOTIFY: the kinds of change this handle reports
    /// until it closes (MS-FSA 2.1.5.11: the ChangeNotifyEntry made by the first request is
    /// kept; later requests' filters are ignored, smbtorture smb2.notify.mask-change).
    pub filter: u32,
    /// SMB2_WATCH_TREE of the first CHANGE_NOTIFY: changes anywhere below the directory are
    /// reported too (kept like the filter).
    pub tree: bool,
    /// Changes (action, name) waiting for the next CHANGE_NOTIFY.
    pub changes: Vec<(u32, String)>,
    /// Encoded size of `changes` (each entry padded to 4 bytes).
    pub changes_bytes: usize,
    /// More changes came than `buffer_size` holds: the next CHANGE_NOTIFY gets
    /// STATUS_NOTIFY_ENUM_DIR (smbtorture smb2.notify.valid-req).
    pub overflowed: bool,
}

impl NotifyWatch {
    /// Changes were lost (its buffer or the kernel's queue overflowed): the ones kept go,
    /// and the next CHANGE_NOTIFY gets STATUS_NOTIFY_ENUM_DIR.
    pub(crate) fn overflow(&mut self) {
        self.overflowed = true;
        self.changes.clear();
        self.changes_bytes = 0;
    }
}

/// A disconnected durable open this node had, kept for a reconnect to this node (its file
/// descriptor, position and other handle state); the lock service holds the durable state.
struct Parked {
    open: Open,
    expires: Instant,
}

/// The durable opens this node parked after their connection went away, by persistent file
/// id. Every method takes the current time: entries past their durable timeout are dropped
/// first (the lock service forgets them at the same time).
#[derive(Default)]
pub(crate) struct ParkedOpens {
    table: Mutex<BTreeMap<u64, Parked>>,
}

impl ParkedOpens {
    fn live(&self, now: Instant) -> MutexGuard<'_, BTreeMap<u64, Parked>> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|_, p| p.expires > now);
        t
    }

    /// Keep a disconnected durable open's handle state for a same-node reconnect.
    pub(crate) fn park(&self, persistent: u64, open: Open, now: Instant) {
        let timeout = open
            .durable
            .as_ref()
            .map_or(Duration::ZERO, |d| d.timeout());
        tracing::debug!(persistent, path = ?open.abs, "durable open parked");
        self.live(now).insert(
            persistent,
            Parked {
                open,
                expires: now + timeout,
            },
        );
    }

    /// Durable opens parked.
    #[cfg(test)]
    pub(crate) fn len(&self, now: Instant) -> usize {
        self.live(now).len()
    }

    /// Descriptors the parked opens still hold (see [`Open::descriptors`] and
    /// [`crate::limits::FdBudget`]).
    pub(crate) fn descriptors(&self, now: Instant) -> usize {
        self.live(now).values().map(|p| p.open.descriptors()).sum()
    }

    /// The parked persistent open a replay of the CREATE `create_guid` of client
    /// `client_guid` names (MS-SMB2 3.3.5.9.10 looks in the whole GlobalOpenTable, so
    /// disconnected persistent opens too): its persistent file id.
    pub(crate) fn find_replay(
        &self,
        create_guid: [u8; 16],
        client_guid: [u8; 16],
        now: Instant,
    ) -> Option<u64> {
        self.live(now).iter().find_map(|(id, p)| {
            p.open
                .replay
                .filter(|r| r.names(create_guid, client_guid))
                .map(|_| *id)
        })
    }

    /// The parked handle state of `persistent`, if it is the same lock-service open.
    pub(crate) fn take(
        &self,
        persistent: u64,
        lock_open: locking::OpenId,
        now: Instant,
    ) -> Option<Open> {
        let mut t = self.live(now);
        if t.get(&persistent)?.open.lock_open != Some(lock_open) {
            return None;
        }
        t.remove(&persistent).map(|p| p.open)
    }

    /// Drop parked handle state of file `stable_id` that a new open with `access`/`share`
    /// (and lease `key`) purges (see [`conflicts`]).
    pub(crate) fn purge_conflicting(
        &self,
        stable_id: u128,
        access: u32,
        share: u32,
        key: Option<u128>,
        now: Instant,
    ) {
        self.live(now).retain(|_, p| {
            !(p.open.stable_id == stable_id && conflicts(&p.open, access, share, key))
        });
    }
}

/// Whether a new open with `access`/`share` (and lease `key`, if any) conflicts with a parked
/// open: share modes (MS-FSA 2.1.5.1.2) or caching that would have to be broken. Such a
/// parked open is gone in the lock service too (it purges conflicting disconnected opens).
fn conflicts(p: &Open, access: u32, share: u32, key: Option<u128>) -> bool {
    use access_bits::{
        DELETE, FILE_APPEND_DATA as APPEND_DATA, FILE_EXECUTE as EXECUTE,
        FILE_READ_DATA as READ_DATA, FILE_WRITE_DATA as WRITE_DATA,
    };
    const SHARE_READ: u32 = 1;
    const SHARE_WRITE: u32 = 2;
    const SHARE_DELETE: u32 = 4;
    let p_share = p.durable.as_ref().map_or(0, |d| d.share_access);
    let denies = |acc: u32, sh: u32| {
        (acc & (READ_DATA | EXECUTE) != 0 && sh & SHARE_READ == 0)
            || (acc & (WRITE_DATA | APPEND_DATA) != 0 && sh & SHARE_WRITE == 0)
            || (acc & DELETE != 0 && sh & SHARE_DELETE == 0)
    };
    if denies(access, p_share) || denies(p.access, share) {
        return true;
    }
    match &p.grant {
        OplockGrant::Oplock(l) => !matches!(l, OplockLevel::None | OplockLevel::LevelII),
        OplockGrant::Lease(l) => l.state.0 & 0x4 != 0 && key != Some(l.key.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::DurableKind;

    const SHARE_ALL: u32 = 7;

    fn parked(lock_open: u64, stable_id: u128, share_access: u32, timeout_ms: u32) -> Open {
        Open {
            session_id: 1,
            tree_id: 1,
            share: 0,
            abs: PathBuf::from("/share/f"),
            rel: PathBuf::from("f"),
            stream: None,
            file: None,
            pin: None,
            is_dir: false,
            access: access_bits::FILE_READ_DATA,
            share_access: 0,
            lock_open: Some(locking::OpenId(lock_open)),
            stable_id,
            dir: None,
            position: 0,
            mode: 0,
            delete_pending: false,
            grant: OplockGrant::Oplock(OplockLevel::Batch),
            notify: None,
            resilient: false,
            durable: Some(DurableState {
                kind: DurableKind::V2 {
                    create_guid: [1; 16],
                    timeout_ms,
                    persistent: false,
                },
                share_access,
                lease: None,
            }),
            replay: None,
            channel_sequence: 0,
            locks: Vec::new(),
            lock_seq: [0xFF; 64],
            write_time: Default::default(),
            identity: None,
        }
    }

    #[test]
    fn parked_opens_expire_with_their_durable_timeout() {
        let t0 = Instant::now();
        let table = ParkedOpens::default();
        table.park(10, parked(1, 5, SHARE_ALL, 1_000), t0);
        table.park(11, parked(2, 6, SHARE_ALL, 5_000), t0);
        assert_eq!(table.len(t0), 2);
        assert_eq!(table.len(t0 + Duration::from_millis(999)), 2);
        assert_eq!(table.len(t0 + Duration::from_millis(1_000)), 1);
        let later = t0 + Duration::from_millis(4_999);
        assert!(table.take(10, locking::OpenId(1), later).is_none());
        assert!(table.take(11, locking::OpenId(2), later).is_some());
        assert_eq!(table.len(later), 0);
    }

    #[test]
    fn only_the_same_lock_service_open_takes_a_parked_open() {
        let t0 = Instant::now();
        let table = ParkedOpens::default();
        table.park(10, parked(1, 5, SHARE_ALL, 1_000), t0);
        assert!(table.take(10, locking::OpenId(99), t0).is_none());
        assert!(table.take(10, locking::OpenId(1), t0).is_some());
        assert!(table.take(10, locking::OpenId(1), t0).is_none());
    }

    #[test]
    fn conflicting_opens_purge_parked_ones_of_the_same_file() {
        let t0 = Instant::now();
        let table = ParkedOpens::default();
        // Sharing read only: a writer conflicts; a batch oplock conflicts with any other open.
        table.park(10, parked(1, 5, 1, 1_000), t0);
        table.park(11, parked(2, 6, SHARE_ALL, 1_000), t0);
        table.purge_conflicting(7, access_bits::FILE_WRITE_DATA, SHARE_ALL, None, t0);
        assert_eq!(table.len(t0), 2, "another file's open purges nothing");
        table.purge_conflicting(5, access_bits::FILE_WRITE_DATA, SHARE_ALL, None, t0);
        assert_eq!(table.len(t0), 1);
        assert!(table.take(11, locking::OpenId(2), t0).is_some());
    }
}
