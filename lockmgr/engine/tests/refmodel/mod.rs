//! A reference model of the MS-FSA / MS-SMB2 locking rules the engine implements, written from
//! the specifications (and, where they leave a choice, from what Windows and smbtorture
//! expect), independently of `lockmgr/engine/src`.
//!
//! It is deliberately naive: a `Vec` of opens, a `Vec` of leases, a `Vec` of byte-range locks,
//! and straight-line rules with the spec section next to each. Performance is irrelevant.
//!
//! Scope (what the differential test drives): opens with access/share/overwrite/stat access,
//! directories, named streams, oplocks and leases with their breaks, break acknowledgements
//! (always to the level asked; the driver answers every ack-requiring break before the next
//! operation, or closes the holder instead), delete-pending and delete-on-close, the
//! handle-caching break before a rename or delete, byte-range locks with blocking waiters and
//! cancel, the mandatory I/O check, durable opens, disconnect and reclaim, orphaned deletes.
//! Not modelled: timeouts, persistent opens, session end, lease epochs and parent keys, acks to a
//! wrong level, NTFS's cross-stream batch breaks for overwrites, what a lock does to a
//! write-caching lease, cancels of deferred creates.
//!
//! Rules settled against the engine where the specifications are silent or ambiguous (each is
//! commented where it is applied, with its source): stat opens take no part in share modes or
//! grants; zero-length ranges overlap only what strictly contains them; an overwrite breaks
//! leases to none without waiting unless W goes (smbtorture lease.breaking3); leases upgrade only
//! to supersets; no read caching next to byte-range locks; disconnected durable holders are
//! closed rather than broken.
#![forbid(unsafe_code)]

use lockmgr_engine::{access, share, OplockLevel, Status};

/// A model handle: the n-th open the model granted (the driver maps engine OpenIds to these).
pub type Handle = usize;
/// A lease is named by (ClientGuid, LeaseKey) (MS-SMB2 3.3.1.4).
pub type LeaseId = (u128, u128);

pub const R: u8 = 0x1;
pub const H: u8 = 0x2;
pub const W: u8 = 0x4;

/// Where the spec leaves a choice that the engine documents as not (yet) made the Windows way;
/// the differential test lists each with its reason instead of skipping cases silently.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// MS-FSA 2.1.5.7 / 2.1.4.12 (and the IFS oplock tables, IRP_MJ_LOCK_CONTROL): a byte-range
    /// lock request breaks Level II oplocks to None (no ack).
    pub lock_breaks_level2: bool,
    /// MS-FSA 2.1.5.1.2 checks sharing before the oplock-break check of 2.1.4.12, so an
    /// overwrite that fails with a sharing violation (and has no handle caching to break)
    /// breaks nobody; Samba's open path sends the overwrite's breaks (to None) anyway and
    /// fails the open without waiting for them. With this rule the handle-caching break for a
    /// sharing violation of an overwrite also takes R and W at once (Samba: RH -> None, where
    /// MS-FSA's BreakCacheState = HANDLE_CACHING gives RH -> R and the overwrite's R break
    /// comes only if the open then succeeds).
    pub failed_overwrite_breaks_caching: bool,
    /// MS-SMB2 3.3.5.9.8: a lease upgrade that cannot get all it asks for still gets what can
    /// be granted (the W-less retry); with this rule the lease keeps its old state instead.
    pub lease_upgrade_all_or_nothing: bool,
    /// MS-FSA 2.1.5.1.2 fails an open of a delete-pending file before any sharing check, so a
    /// disconnected durable open in its way survives; with this rule the create closes it first
    /// (and then fails with STATUS_DELETE_PENDING anyway).
    pub purge_before_delete_pending_check: bool,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            lock_breaks_level2: true,
            failed_overwrite_breaks_caching: false,
            lease_upgrade_all_or_nothing: false,
            purge_before_delete_pending_check: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grant {
    None,
    Oplock(OplockLevel),
    Lease(u8),
}

impl Grant {
    /// An oplock grant; no oplock is no caching at all.
    pub fn of_oplock(level: OplockLevel) -> Grant {
        match level {
            OplockLevel::None => Grant::None,
            level => Grant::Oplock(level),
        }
    }
}

/// A reply, in handle terms.
/// What a close leaves to unlink.
enum Unlink {
    Nothing,
    /// The open's own stream or file.
    Own,
    /// The named stream's delete-pending base file.
    Base,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rep {
    Opened {
        h: Handle,
        grant: Grant,
    },
    Pending,
    Done(Status),
    Closed {
        delete_file: bool,
    },
    /// The closed named-stream open was its delete-pending file's last open: the file goes.
    ClosedDeleteBase,
    Acked(Grant),
    Durable {
        h: Handle,
    },
    Usage {
        opens: u32,
        deny_delete: u32,
        delete_access: u32,
    },
}

/// A notification, in handle terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    OplockBreak {
        session: u64,
        h: Handle,
        to: OplockLevel,
    },
    LeaseBreak {
        session: u64,
        lease: LeaseId,
        current: u8,
        new: u8,
        ack_required: bool,
    },
    Completed {
        session: u64,
        request: u64,
        reply: Rep,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenParams {
    pub file: u128,
    /// For a named stream: its file's unnamed stream.
    pub base: Option<u128>,
    pub access: u32,
    pub share: u32,
    pub doc: bool,
    pub directory: bool,
    pub overwrite: bool,
    pub guid: u128,
    pub oplock: OplockLevel,
    /// Requested lease (key, state); wins over `oplock`.
    pub lease: Option<(u128, u8)>,
}

#[derive(Clone, Debug)]
pub struct MOpen {
    pub h: Handle,
    pub session: u64,
    pub p: OpenParams,
    pub oplock: OplockLevel,
    /// Target of an outstanding oplock break that needs an ack.
    pub oplock_breaking: Option<OplockLevel>,
    pub lease: Option<LeaseId>,
    pub durable: Option<u64>,
    pub disconnected: bool,
}

#[derive(Clone, Debug)]
pub struct MLease {
    pub id: LeaseId,
    pub file: u128,
    pub state: u8,
    /// Target of an outstanding break that needs an ack.
    pub breaking_to: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MLock {
    pub h: Handle,
    pub off: u64,
    pub len: u64,
    pub excl: bool,
}

#[derive(Clone, Debug)]
struct Waiter {
    session: u64,
    request: u64,
    lock: MLock,
}

#[derive(Clone, Debug)]
enum Deferred {
    Open {
        session: u64,
        request: u64,
        p: OpenParams,
    },
    BreakForRename {
        session: u64,
        request: u64,
        file: u128,
        h: Handle,
    },
}

/// A break the driver must answer (ack or close) before the next operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outstanding {
    Oplock { h: Handle, to: OplockLevel },
    Lease { lease: LeaseId, to: u8 },
}

#[derive(Default)]
pub struct Model {
    pub rules: Rules,
    pub opens: Vec<MOpen>,
    pub leases: Vec<MLease>,
    pub locks: Vec<MLock>,
    waiters: Vec<Waiter>,
    deferred: Vec<Deferred>,
    /// File.PendingDelete (MS-FSA 2.1.1.3), by stream id (a named stream's own flag is its
    /// Stream's; the unnamed stream's is the file's).
    delete_pending: Vec<u128>,
    /// Delete-pending files whose last open was purged, not closed by a client.
    orphans: Vec<u128>,
    next_h: Handle,
    /// Notifications produced since the last `take_notes`.
    pub notes: Vec<Note>,
}

/// MS-FSA 2.1.5.1.2.2 (sharing check): the accesses that take part in share modes.
const READ_ACCESS: u32 = access::FILE_READ_DATA | access::FILE_EXECUTE;
const WRITE_ACCESS: u32 = access::FILE_WRITE_DATA | access::FILE_APPEND_DATA;
const DATA_ACCESS: u32 = READ_ACCESS | WRITE_ACCESS | access::DELETE;

/// IFS "Checking the oplock state of an IRP_MJ_CREATE" / MS-FSA 2.1.4.12: an open asking for
/// nothing but FILE_READ_ATTRIBUTES, FILE_WRITE_ATTRIBUTES or SYNCHRONIZE breaks no oplock.
pub fn is_stat_open(access_mask: u32) -> bool {
    access_mask
        & !(access::FILE_READ_ATTRIBUTES | access::FILE_WRITE_ATTRIBUTES | access::SYNCHRONIZE)
        == 0
}

/// MS-FSA 2.1.5.1.2.2: does a new open (access `a1`, share `s1`) conflict with an existing one?
/// Opens without read, write or delete access take no part in share modes on either side.
fn share_conflict(a1: u32, s1: u32, a2: u32, s2: u32) -> bool {
    if a1 & DATA_ACCESS == 0 || a2 & DATA_ACCESS == 0 {
        return false;
    }
    let wants = |a: u32, bits: u32| a & bits != 0;
    (wants(a1, READ_ACCESS) && s2 & share::READ == 0)
        || (wants(a1, WRITE_ACCESS) && s2 & share::WRITE == 0)
        || (wants(a1, access::DELETE) && s2 & share::DELETE == 0)
        || (wants(a2, READ_ACCESS) && s1 & share::READ == 0)
        || (wants(a2, WRITE_ACCESS) && s1 & share::WRITE == 0)
        || (wants(a2, access::DELETE) && s1 & share::DELETE == 0)
}

/// MS-FSA 2.1.5.7 / 2.1.4.10: two ranges overlap if they share a byte, and a zero-length range
/// "overlaps" a range it lies strictly inside (so a zero-length lock conflicts with neither
/// another zero-length lock nor a range starting at its offset; as Samba's brl_overlap and
/// smbtorture's zero-length lock tests expect).
fn overlaps(a_off: u64, a_len: u64, b_off: u64, b_len: u64) -> bool {
    let (a0, a1) = (a_off as u128, a_off as u128 + a_len as u128);
    let (b0, b1) = (b_off as u128, b_off as u128 + b_len as u128);
    a0 < b1 && b0 < a1
}

fn range_fits(off: u64, len: u64) -> bool {
    off as u128 + len as u128 <= 1u128 << 64
}

enum Attempt {
    Granted(Handle, Grant),
    Failed(Status),
    Wait,
}

impl Model {
    pub fn new(rules: Rules) -> Model {
        Model {
            rules,
            ..Model::default()
        }
    }

    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    pub fn open(&self, h: Handle) -> Option<&MOpen> {
        self.opens.iter().find(|o| o.h == h)
    }

    fn open_mut(&mut self, h: Handle) -> Option<&mut MOpen> {
        self.opens.iter_mut().find(|o| o.h == h)
    }

    fn lease(&self, id: LeaseId) -> Option<&MLease> {
        self.leases.iter().find(|l| l.id == id)
    }

    fn lease_mut(&mut self, id: LeaseId) -> Option<&mut MLease> {
        self.leases.iter_mut().find(|l| l.id == id)
    }

    pub fn has_waiter(&self, h: Handle) -> bool {
        self.waiters.iter().any(|w| w.lock.h == h)
    }

    /// Pending blocking locks of `session`, oldest first (their request ids).
    pub fn waiters_of(&self, session: u64) -> Vec<u64> {
        self.waiters
            .iter()
            .filter(|w| w.session == session)
            .map(|w| w.request)
            .collect()
    }

    /// Breaks still waiting for an ack, oldest open / lease first.
    pub fn outstanding(&self) -> Vec<Outstanding> {
        let mut out = Vec::new();
        for o in &self.opens {
            if let Some(to) = o.oplock_breaking {
                out.push(Outstanding::Oplock { h: o.h, to });
            }
        }
        for l in &self.leases {
            if let Some(to) = l.breaking_to {
                out.push(Outstanding::Lease { lease: l.id, to });
            }
        }
        out
    }

    /// The session a lease's notifications go to: its first connected open's.
    fn lease_session(&self, id: LeaseId) -> Option<u64> {
        self.opens
            .iter()
            .find(|o| o.lease == Some(id) && !o.disconnected)
            .map(|o| o.session)
    }

    fn lease_all_disconnected(&self, id: LeaseId) -> bool {
        self.lease_session(id).is_none()
    }

    fn grant_of(&self, o: &MOpen) -> Grant {
        match o.lease {
            Some(id) => Grant::Lease(self.lease(id).map_or(0, |l| l.state)),
            None => Grant::of_oplock(o.oplock),
        }
    }

    fn breaks_in_flight(&self, file: u128) -> bool {
        self.opens
            .iter()
            .any(|o| o.p.file == file && o.oplock_breaking.is_some())
            || self
                .leases
                .iter()
                .any(|l| l.file == file && l.breaking_to.is_some())
    }

    // ----- breaks --------------------------------------------------------------------------

    /// Send an oplock break. Breaks that need an ack (from Exclusive/Batch, MS-SMB2 3.3.4.6)
    /// stay outstanding; a Level II break to None takes effect at once.
    fn break_oplock(&mut self, h: Handle, to: OplockLevel) {
        let Some(o) = self.open_mut(h) else { return };
        let needs_ack = matches!(o.oplock, OplockLevel::Exclusive | OplockLevel::Batch);
        let session = o.session;
        if needs_ack {
            o.oplock_breaking = Some(to);
        } else {
            o.oplock = to;
        }
        self.notes.push(Note::OplockBreak { session, h, to });
    }

    /// Send a lease break. MS-SMB2 3.3.4.7: an ack is required unless the lease only had R.
    fn break_lease(&mut self, id: LeaseId, to: u8) {
        let session = self.lease_session(id);
        let Some(l) = self.lease_mut(id) else { return };
        let current = l.state;
        let ack_required = current & (W | H) != 0;
        if ack_required {
            l.breaking_to = Some(to);
        } else {
            l.state = to;
        }
        if let Some(session) = session {
            self.notes.push(Note::LeaseBreak {
                session,
                lease: id,
                current,
                new: to,
                ack_required,
            });
        }
    }

    /// A disconnected durable open can never answer a break: instead of breaking it, the
    /// server closes it (MS-SMB2 3.3.7.1 keeps it only to be reclaimed; Samba and the issue's
    /// item 4: disconnected holders are scavenged, not broken).
    fn purge(&mut self, h: Handle) {
        let _ = self.remove_open(h, true);
    }

    // ----- open (MS-FSA 2.1.5.1.2, MS-SMB2 3.3.5.9) -----------------------------------------

    pub fn request_open(&mut self, session: u64, request: u64, p: OpenParams) -> Rep {
        match self.try_open(session, &p) {
            Attempt::Granted(h, grant) => Rep::Opened { h, grant },
            Attempt::Failed(st) => Rep::Done(st),
            Attempt::Wait => {
                self.deferred.push(Deferred::Open {
                    session,
                    request,
                    p,
                });
                Rep::Pending
            }
        }
    }

    /// Does `o` belong to the same oplock key as the opener (its own lease)?
    fn same_key(o: &MOpen, p: &OpenParams) -> bool {
        match (o.lease, p.lease) {
            (Some((g, k)), Some((pk, _))) => g == p.guid && k == pk,
            _ => false,
        }
    }

    fn try_open(&mut self, session: u64, p: &OpenParams) -> Attempt {
        if self.rules.purge_before_delete_pending_check {
            // Disconnected opens the create conflicts with, or whose caching it would break
            // (an exclusive/batch oplock, a write-caching lease of another key).
            while let Some(gone) = self
                .opens
                .iter()
                .find(|o| {
                    let breaks = !is_stat_open(p.access)
                        && !Self::same_key(o, p)
                        && (matches!(o.oplock, OplockLevel::Exclusive | OplockLevel::Batch)
                            || o.lease.is_some_and(|id| {
                                self.lease(id).is_some_and(|l| l.state & W != 0)
                            }));
                    o.disconnected
                        && o.p.file == p.file
                        && (breaks || share_conflict(p.access, p.share, o.p.access, o.p.share))
                })
                .map(|o| o.h)
            {
                self.purge(gone);
            }
        }
        // MS-FSA 2.1.5.1.2: an open of a delete-pending file fails with STATUS_DELETE_PENDING;
        // 2.1.5.1.2.1: a named stream shares its file's delete state.
        if self.delete_pending.contains(&p.file)
            || p.base.is_some_and(|b| self.delete_pending.contains(&b))
        {
            return Attempt::Failed(Status::DeletePending);
        }
        // MS-FSA 2.1.4.12: an operation that would break an oplock already breaking waits for
        // that break (the driver answers breaks at once, so this is only a retry point).
        if self.breaks_in_flight(p.file) {
            return Attempt::Wait;
        }
        'restart: loop {
            // MS-FSA 2.1.5.1.2.2: sharing check against every open of the stream;
            // 2.1.5.1.2.1: an open of the unnamed stream asking for DELETE also conflicts with
            // opens of the file's named streams that do not share delete.
            let conflicting: Vec<Handle> = self
                .opens
                .iter()
                .filter(|o| {
                    let same_stream = o.p.file == p.file
                        && share_conflict(p.access, p.share, o.p.access, o.p.share);
                    let stream_of_me = p.base.is_none()
                        && o.p.base == Some(p.file)
                        && p.access & access::DELETE != 0
                        && o.p.access & DATA_ACCESS != 0
                        && o.p.share & share::DELETE == 0;
                    same_stream || stream_of_me
                })
                .map(|o| o.h)
                .collect();
            // A disconnected durable open in the way is closed rather than broken (it cannot
            // ack; MS-SMB2 3.3.4.7 closes opens whose break cannot be sent), also when it
            // holds the opener's own lease key (the client chose a new open over a reconnect).
            // Only on the stream being opened: like the breaks, a conflict with another stream
            // of the file resolves nothing.
            if let Some(&gone) = conflicting.iter().find(|&&h| {
                self.open(h)
                    .is_some_and(|o| o.disconnected && o.p.file == p.file)
            }) {
                self.purge(gone);
                continue 'restart;
            }
            if !conflicting.is_empty() {
                // MS-FSA 2.1.4.12 with BREAKING_FOR_SHARING_VIOLATION (2.1.5.1.2): break handle
                // caching of the stream so the holders may close: a batch oplock breaks to
                // Level II (None for an overwrite), a lease loses H only (BreakCacheState =
                // HANDLE_CACHING); then the check runs again. Only the stream being opened is
                // broken: a conflict with another stream of the file (2.1.5.1.2.1) breaks
                // nothing (NTFS breaks other streams' batch oplocks only for overwrites, see the
                // IFS IRP_MJ_CREATE notes; not modelled).
                let streams = [p.file];
                let mut oplock_breaks = Vec::new();
                let mut lease_breaks = Vec::new();
                for o in &self.opens {
                    if !streams.contains(&o.p.file) || Self::same_key(o, p) {
                        continue;
                    }
                    if o.lease.is_none() && o.oplock == OplockLevel::Batch {
                        let to = if p.overwrite {
                            OplockLevel::None
                        } else {
                            OplockLevel::LevelII
                        };
                        oplock_breaks.push((o.h, o.disconnected, to));
                    }
                    if let Some(id) = o.lease {
                        let state = self.lease(id).map_or(0, |l| l.state);
                        let to = if p.overwrite && self.rules.failed_overwrite_breaks_caching {
                            state & !(H | R | W)
                        } else {
                            state & !H
                        };
                        if state & H != 0 && !lease_breaks.iter().any(|(l, _, _)| *l == id) {
                            lease_breaks.push((id, self.lease_all_disconnected(id), to));
                        }
                    }
                }
                if oplock_breaks.is_empty() && lease_breaks.is_empty() {
                    if p.overwrite && self.rules.failed_overwrite_breaks_caching {
                        self.break_for_failed_overwrite(p);
                    }
                    return Attempt::Failed(Status::SharingViolation);
                }
                if let Some(h) = self.first_disconnected(&oplock_breaks, &lease_breaks) {
                    self.purge(h);
                    continue 'restart;
                }
                for (h, _, to) in oplock_breaks {
                    self.break_oplock(h, to);
                }
                for (id, _, to) in lease_breaks {
                    self.break_lease(id, to);
                }
                if p.overwrite && self.rules.failed_overwrite_breaks_caching {
                    self.break_for_failed_overwrite(p);
                }
                return Attempt::Wait;
            }
            // MS-FSA 2.1.4.12, Operation OPEN (and the IFS IRP_MJ_CREATE table): a stat open
            // breaks nothing; otherwise Exclusive/Batch break to Level II (None when the create
            // overwrites) and the open waits for the ack; Level II breaks to None on overwrite
            // only; a lease loses W, or everything for an overwrite (smbtorture
            // lease.breaking3/v2_breaking3: RH breaks to none and the overwrite does not wait).
            if !is_stat_open(p.access) {
                let mut oplock_breaks = Vec::new();
                let mut lease_breaks = Vec::new();
                for o in &self.opens {
                    if o.p.file != p.file || Self::same_key(o, p) {
                        continue;
                    }
                    if o.lease.is_none() {
                        match o.oplock {
                            OplockLevel::Exclusive | OplockLevel::Batch => {
                                let to = if p.overwrite {
                                    OplockLevel::None
                                } else {
                                    OplockLevel::LevelII
                                };
                                oplock_breaks.push((o.h, o.disconnected, to));
                            }
                            OplockLevel::LevelII if p.overwrite => {
                                oplock_breaks.push((o.h, o.disconnected, OplockLevel::None));
                            }
                            _ => {}
                        }
                    }
                    if let Some(id) = o.lease {
                        let state = self.lease(id).map_or(0, |l| l.state);
                        let to = if p.overwrite { 0 } else { state & !W };
                        if to != state && !lease_breaks.iter().any(|(l, _, _)| *l == id) {
                            lease_breaks.push((id, self.lease_all_disconnected(id), to));
                        }
                    }
                }
                if let Some(h) = self.first_disconnected_acked(&oplock_breaks, &lease_breaks) {
                    self.purge(h);
                    continue 'restart;
                }
                let mut wait = false;
                for (h, _, to) in oplock_breaks {
                    let from = self.open(h).map_or(OplockLevel::None, |o| o.oplock);
                    wait |= matches!(from, OplockLevel::Exclusive | OplockLevel::Batch);
                    self.break_oplock(h, to);
                }
                for (id, _, to) in lease_breaks {
                    let from = self.lease(id).map_or(0, |l| l.state);
                    // The open waits when write caching goes (the holder must flush first);
                    // an RH lease broken by an overwrite does not hold it up (smbtorture
                    // lease.breaking3: "a conflicting open is *not* blocked").
                    wait |= from & W != 0;
                    self.break_lease(id, to);
                }
                if wait {
                    return Attempt::Wait;
                }
            }
            break;
        }
        let (h, grant) = self.grant(session, p);
        Attempt::Granted(h, grant)
    }

    /// Samba's order (see `Rules::failed_overwrite_breaks_caching`): the overwrite's breaks
    /// (oplocks and leases to None) go out although the open fails, and
    /// the open does not wait for their acks.
    fn break_for_failed_overwrite(&mut self, p: &OpenParams) {
        let oplocks: Vec<Handle> = self
            .opens
            .iter()
            .filter(|o| {
                o.p.file == p.file
                    && o.lease.is_none()
                    && o.oplock != OplockLevel::None
                    && o.oplock_breaking.is_none()
            })
            .map(|o| o.h)
            .collect();
        for h in oplocks {
            self.break_oplock(h, OplockLevel::None);
        }
        let leases: Vec<(LeaseId, u8)> = self
            .leases
            .iter()
            .filter(|l| l.file == p.file && l.state != 0 && l.breaking_to.is_none())
            .filter(|l| !(l.id.0 == p.guid && p.lease.is_some_and(|(k, _)| k == l.id.1)))
            .map(|l| (l.id, 0))
            .collect();
        for (id, to) in leases {
            self.break_lease(id, to);
        }
    }

    /// A disconnected open among the holders that would be broken (any break).
    fn first_disconnected(
        &self,
        oplocks: &[(Handle, bool, OplockLevel)],
        leases: &[(LeaseId, bool, u8)],
    ) -> Option<Handle> {
        if let Some((h, _, _)) = oplocks.iter().find(|(_, d, _)| *d) {
            return Some(*h);
        }
        let (id, _, _) = leases.iter().find(|(_, d, _)| *d)?;
        self.opens
            .iter()
            .find(|o| o.lease == Some(*id) && o.disconnected)
            .map(|o| o.h)
    }

    /// Like `first_disconnected`, but only for breaks that need an ack (a Level II or R-only
    /// break to a disconnected holder is simply applied).
    fn first_disconnected_acked(
        &self,
        oplocks: &[(Handle, bool, OplockLevel)],
        leases: &[(LeaseId, bool, u8)],
    ) -> Option<Handle> {
        let oplocks: Vec<_> = oplocks
            .iter()
            .copied()
            .filter(|(h, _, _)| {
                self.open(*h).is_some_and(|o| {
                    matches!(o.oplock, OplockLevel::Exclusive | OplockLevel::Batch)
                })
            })
            .collect();
        let leases: Vec<_> = leases
            .iter()
            .copied()
            .filter(|(id, _, _)| self.lease(*id).is_some_and(|l| l.state & (W | H) != 0))
            .collect();
        self.first_disconnected(&oplocks, &leases)
    }

    /// MS-SMB2 3.3.5.9 / 3.3.5.9.8 and MS-FSA 2.1.5.17: what caching the new open gets, once
    /// the breaks it caused are through.
    fn grant(&mut self, session: u64, p: &OpenParams) -> (Handle, Grant) {
        let h = self.next_h;
        self.next_h += 1;
        // A stat open neither breaks caching nor stands in the way of a grant (Samba counts
        // only non-stat opens; the IFS notes treat attribute-only opens as invisible to
        // oplocks).
        let others: Vec<&MOpen> = self
            .opens
            .iter()
            .filter(|o| o.p.file == p.file && !Self::same_key(o, p) && !is_stat_open(o.p.access))
            .collect();
        let other_oplock = others
            .iter()
            .any(|o| o.lease.is_none() && o.oplock != OplockLevel::None);
        let other_exclusive = others.iter().any(|o| {
            matches!(o.oplock, OplockLevel::Exclusive | OplockLevel::Batch)
                || o.lease
                    .is_some_and(|id| self.lease(id).is_some_and(|l| l.state & W != 0))
        });
        // MS-FSA 2.1.5.17.2: Level II oplocks and handle-caching leases do not mix (the mirror
        // of "a lease gets no H next to an oplock"): Level II is refused next to an H lease.
        let other_handle_lease = others.iter().any(|o| {
            o.lease
                .is_some_and(|id| self.lease(id).is_some_and(|l| l.state & H != 0))
        });
        // MS-FSA 2.1.5.17.2: no read caching (Level II, a lease with R) while the stream has
        // byte-range locks (Samba's grant_fsp_oplock_type likewise drops R next to brlocks).
        let locked = self
            .locks
            .iter()
            .any(|l| self.open(l.h).is_some_and(|o| o.p.file == p.file));
        let mut open = MOpen {
            h,
            session,
            p: *p,
            oplock: OplockLevel::None,
            oplock_breaking: None,
            lease: None,
            durable: None,
            disconnected: false,
        };
        let grant = if let Some((key, requested)) = p.lease {
            // MS-SMB2 3.3.5.9.8: a directory lease caches at most RH.
            let requested = if p.directory {
                requested & (R | H)
            } else {
                requested
            };
            let id = (p.guid, key);
            let existing = self.lease(id).map(|l| l.state);
            // 3.3.5.9.8: an existing lease is upgraded only to a superset of its state, if that
            // can be granted; otherwise it stays as it is (smbtorture lease.upgrade: RW asked
            // for RH stays RW).
            let wanted = match existing {
                Some(e) if requested & e == e => requested,
                Some(e) => e,
                None => requested,
            };
            let mut state = wanted;
            // MS-FSA 2.1.5.17.1: write caching only when no open with another key exists.
            if !others.is_empty() {
                state &= !W;
            }
            // MS-FSA 2.1.5.17.2: handle caching is refused next to Level II / exclusive
            // oplocks (not next to plain opens, nor next to other leases).
            if other_oplock {
                state &= !H;
            }
            if other_exclusive {
                state = 0;
            }
            if locked {
                state &= !R;
            }
            // W alone or WH are no lease states (MS-SMB2 2.2.13.2.8): no R, nothing.
            if state & R == 0 {
                state = 0;
            }
            // An upgrade never loses what the lease had; MS-SMB2 3.3.5.9.8 retries a refused
            // write-caching request without W, so a partial upgrade (R asking RWH next to other
            // opens: RH) is granted.
            let state = match existing {
                Some(e) if state & e != e => e,
                Some(e) if state != wanted && self.rules.lease_upgrade_all_or_nothing => e,
                _ => state,
            };
            match self.lease_mut(id) {
                Some(l) => l.state = state,
                None => self.leases.push(MLease {
                    id,
                    file: p.file,
                    state,
                    breaking_to: None,
                }),
            }
            open.lease = Some(id);
            Grant::Lease(state)
        } else if p.directory {
            // MS-SMB2 3.3.5.9: no oplocks on directories.
            Grant::None
        } else {
            // MS-FSA 2.1.5.17.1: Exclusive/Batch only for the stream's only open; MS-SMB2
            // 3.3.5.9: the server then retries Level II, which fails next to an exclusive
            // holder (write-caching lease or exclusive oplock).
            let level = match p.oplock {
                OplockLevel::None => OplockLevel::None,
                OplockLevel::Exclusive | OplockLevel::Batch if others.is_empty() => p.oplock,
                _ if other_exclusive || locked || other_handle_lease => OplockLevel::None,
                _ => OplockLevel::LevelII,
            };
            open.oplock = level;
            Grant::of_oplock(level)
        };
        self.opens.push(open);
        (h, grant)
    }

    /// Retry deferred requests of `file` now that a break finished (FIFO).
    fn wake(&mut self, file: u128) {
        loop {
            if self.breaks_in_flight(file) {
                return;
            }
            let Some(pos) = self.deferred.iter().position(|d| match d {
                Deferred::Open { p, .. } => p.file == file,
                Deferred::BreakForRename { file: f, .. } => *f == file,
            }) else {
                return;
            };
            let d = self.deferred.remove(pos);
            match d {
                Deferred::Open {
                    session,
                    request,
                    p,
                } => {
                    let reply = match self.try_open(session, &p) {
                        Attempt::Granted(h, grant) => Rep::Opened { h, grant },
                        Attempt::Failed(st) => Rep::Done(st),
                        Attempt::Wait => {
                            self.deferred.insert(
                                pos,
                                Deferred::Open {
                                    session,
                                    request,
                                    p,
                                },
                            );
                            return;
                        }
                    };
                    self.notes.push(Note::Completed {
                        session,
                        request,
                        reply,
                    });
                }
                Deferred::BreakForRename {
                    session, request, ..
                } => self.notes.push(Note::Completed {
                    session,
                    request,
                    reply: Rep::Done(Status::Success),
                }),
            }
        }
    }

    // ----- close, delete ---------------------------------------------------------------------

    /// Remove an open with its locks and its share of a lease; returns whether it was the
    /// last open of a delete-pending stream (the caller unlinks it). A `purged` open has no
    /// caller to tell: the file stays delete-pending, an orphan for the daemon to collect
    /// (`take_orphans`).
    fn remove_open(&mut self, h: Handle, purged: bool) -> Unlink {
        let Some(pos) = self.opens.iter().position(|o| o.h == h) else {
            return Unlink::Nothing;
        };
        let o = self.opens.remove(pos);
        let file = o.p.file;
        // A rename/delete waiting for breaks is moot once its open is gone: it is dropped
        // without an answer (its connection closed the handle).
        self.deferred
            .retain(|d| !matches!(d, Deferred::BreakForRename { h: x, .. } if *x == h));
        // MS-FSA 2.1.5.4: closing a delete-on-close open makes the file delete-pending.
        if o.p.doc && !self.delete_pending.contains(&file) {
            self.delete_pending.push(file);
        }
        if let Some(id) = o.lease {
            if !self.opens.iter().any(|x| x.lease == Some(id)) {
                self.leases.retain(|l| l.id != id);
            } else if self.lease(id).is_some_and(|l| l.breaking_to.is_some())
                && self.lease_all_disconnected(id)
            {
                // Only disconnected opens are left to ack the break: they are closed.
                let rest: Vec<Handle> = self
                    .opens
                    .iter()
                    .filter(|x| x.lease == Some(id))
                    .map(|x| x.h)
                    .collect();
                for x in rest {
                    let _ = self.remove_open(x, true);
                }
            }
        }
        self.locks.retain(|l| l.h != h);
        // MS-FSA 2.1.1.3: File.OpenList holds the opens of all the file's streams, and
        // 2.1.5.4 deletes a delete-pending file when it empties: an open named stream keeps
        // its file (delete-pending) after the last open of the unnamed stream is closed.
        let unused =
            |opens: &[MOpen], f: u128| !opens.iter().any(|x| x.p.file == f || x.p.base == Some(f));
        let last = unused(&self.opens, file);
        let delete = last && self.delete_pending.contains(&file);
        if delete && purged {
            self.orphans.push(file);
        } else if last {
            self.delete_pending.retain(|f| *f != file);
        }
        let base_delete =
            o.p.base
                .filter(|b| self.delete_pending.contains(b) && unused(&self.opens, *b));
        if let Some(b) = base_delete {
            if purged {
                self.orphans.push(b);
            } else {
                self.delete_pending.retain(|f| *f != b);
            }
        }
        self.run_waiters(file);
        self.wake(file);
        if let Some(b) = base_delete {
            self.run_waiters(b);
            self.wake(b);
        }
        match (purged, base_delete.is_some(), delete) {
            (true, _, _) => Unlink::Nothing,
            (false, true, _) => Unlink::Base,
            (false, false, true) => Unlink::Own,
            (false, false, false) => Unlink::Nothing,
        }
    }

    /// Delete-pending files whose last open was purged (the engine's take_orphaned_deletes):
    /// the daemon unlinks them, after which the name is free again.
    pub fn take_orphans(&mut self) -> Vec<u128> {
        let orphans = std::mem::take(&mut self.orphans);
        self.delete_pending.retain(|f| !orphans.contains(f));
        orphans
    }

    pub fn close(&mut self, h: Handle) -> Rep {
        if self.has_waiter(h) {
            panic!("driver closes no open with a waiting lock");
        }
        match self.remove_open(h, false) {
            Unlink::Nothing => Rep::Closed { delete_file: false },
            Unlink::Own => Rep::Closed { delete_file: true },
            Unlink::Base => Rep::ClosedDeleteBase,
        }
    }

    /// SET_INFO FileDispositionInformation (MS-FSA 2.1.5.14.3).
    pub fn set_delete_pending(&mut self, h: Handle, delete: bool) -> Rep {
        let Some(o) = self.open(h) else {
            return Rep::Done(Status::InvalidHandle);
        };
        let file = o.p.file;
        if delete {
            if !self.delete_pending.contains(&file) {
                self.delete_pending.push(file);
            }
        } else {
            self.delete_pending.retain(|f| *f != file);
        }
        Rep::Done(Status::Success)
    }

    /// Before a rename or delete through `h` (MS-FSA 2.1.5.14.11, 2.1.5.14.3 via 2.1.4.12):
    /// every other open of the stream loses handle caching: leases drop H
    /// (BreakCacheState = HANDLE_CACHING), batch oplocks break to None; the caller waits for
    /// the acks. A disconnected holder is purged instead.
    pub fn break_for_rename(&mut self, session: u64, request: u64, h: Handle) -> Rep {
        let Some(me) = self.open(h).cloned() else {
            return Rep::Done(Status::InvalidHandle);
        };
        let file = me.p.file;
        loop {
            let mut oplock_breaks = Vec::new();
            let mut lease_breaks: Vec<(LeaseId, bool, u8)> = Vec::new();
            for o in &self.opens {
                if o.p.file != file || o.h == h || (o.lease.is_some() && o.lease == me.lease) {
                    continue;
                }
                if o.lease.is_none() && o.oplock == OplockLevel::Batch {
                    oplock_breaks.push((o.h, o.disconnected, OplockLevel::None));
                }
                if let Some(id) = o.lease {
                    let state = self.lease(id).map_or(0, |l| l.state);
                    if state & H != 0 && !lease_breaks.iter().any(|(l, _, _)| *l == id) {
                        lease_breaks.push((id, self.lease_all_disconnected(id), state & !H));
                    }
                }
            }
            if let Some(d) = self.first_disconnected(&oplock_breaks, &lease_breaks) {
                self.purge(d);
                continue;
            }
            if oplock_breaks.is_empty() && lease_breaks.is_empty() {
                return Rep::Done(Status::Success);
            }
            for (x, _, to) in oplock_breaks {
                self.break_oplock(x, to);
            }
            for (id, _, to) in lease_breaks {
                self.break_lease(id, to);
            }
            self.deferred.push(Deferred::BreakForRename {
                session,
                request,
                file,
                h,
            });
            return Rep::Pending;
        }
    }

    /// QueryUsage: the other opens of `file` a rename checks (MS-FSA 2.1.5.14.11).
    pub fn query_usage(&self, file: u128, except: Option<Handle>) -> Rep {
        // A disconnected durable open still holds its share mode and access (it may be
        // reclaimed), so it blocks a rename; it is just not counted as an open in use.
        let others = self
            .opens
            .iter()
            .filter(|o| o.p.file == file && Some(o.h) != except);
        let (mut opens, mut deny_delete, mut delete_access) = (0, 0, 0);
        for o in others {
            if !o.disconnected {
                opens += 1;
            }
            if o.p.access & DATA_ACCESS != 0 && o.p.share & share::DELETE == 0 {
                deny_delete += 1;
            }
            if o.p.access & access::DELETE != 0 {
                delete_access += 1;
            }
        }
        Rep::Usage {
            opens,
            deny_delete,
            delete_access,
        }
    }

    // ----- acks (MS-SMB2 3.3.5.22) ---------------------------------------------------------

    pub fn oplock_ack(&mut self, h: Handle, level: OplockLevel) -> Rep {
        let Some(o) = self.open_mut(h) else {
            return Rep::Done(Status::InvalidHandle);
        };
        let Some(to) = o.oplock_breaking.take() else {
            return Rep::Done(Status::InvalidOplockProtocol);
        };
        assert_eq!(level, to, "the driver acks to the level asked");
        o.oplock = to;
        let file = o.p.file;
        self.wake(file);
        Rep::Acked(Grant::of_oplock(to))
    }

    pub fn lease_ack(&mut self, id: LeaseId, state: u8) -> Rep {
        let Some(l) = self.lease_mut(id) else {
            return Rep::Done(Status::NotFound);
        };
        let Some(to) = l.breaking_to.take() else {
            return Rep::Done(Status::Unsuccessful);
        };
        assert_eq!(state, to, "the driver acks to the state asked");
        l.state = to;
        let file = l.file;
        self.wake(file);
        Rep::Acked(Grant::Lease(to))
    }

    // ----- byte-range locks (MS-FSA 2.1.5.7, 2.1.5.8, 2.1.4.10) ------------------------------

    /// MS-FSA 2.1.5.7: a new lock conflicts with a granted overlapping lock when either is
    /// exclusive, except that a shared lock may stack on its own open's exclusive lock.
    fn lock_conflicts(&self, file: u128, n: &MLock) -> bool {
        self.locks.iter().any(|e| {
            self.open(e.h).is_some_and(|o| o.p.file == file)
                && overlaps(e.off, e.len, n.off, n.len)
                && (e.excl || n.excl)
                && !Self::stacks_on_own_exclusive(e, n)
        })
    }

    /// MS-FSA 2.1.4.12 for WRITE and byte-range LOCK: Level II oplocks break to None (no
    /// ack), the requester's own included (traditional oplocks have no key to exempt it);
    /// shared read-caching leases (R, RH) of other keys break to None as well (Samba's
    /// contend_level2_oplocks); the requester's own lease stays, and a write-caching lease
    /// (whose holder a stat open can sit next to) is left alone.
    fn contend_read_caching(&mut self, h: Handle, file: u128) {
        let level2: Vec<Handle> = self
            .opens
            .iter()
            .filter(|o| o.p.file == file && o.lease.is_none() && o.oplock == OplockLevel::LevelII)
            .map(|o| o.h)
            .collect();
        for x in level2 {
            self.break_oplock(x, OplockLevel::None);
        }
        let my_lease = self.open(h).and_then(|o| o.lease);
        let read_leases: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|l| {
                l.file == file && l.state & R != 0 && l.state & W == 0 && Some(l.id) != my_lease
            })
            .map(|l| l.id)
            .collect();
        for id in read_leases {
            let needs_ack = self.lease(id).is_some_and(|l| l.state & H != 0);
            if needs_ack && self.lease_all_disconnected(id) {
                // Nobody could ack: the disconnected holders are closed instead.
                let holders: Vec<Handle> = self
                    .opens
                    .iter()
                    .filter(|o| o.lease == Some(id))
                    .map(|o| o.h)
                    .collect();
                for x in holders {
                    self.purge(x);
                }
            } else {
                self.break_lease(id, 0);
            }
        }
    }

    /// A shared lock inside its own open's exclusive lock is allowed (MS-FSA 2.1.5.7).
    fn stacks_on_own_exclusive(existing: &MLock, new: &MLock) -> bool {
        existing.excl && !new.excl && existing.h == new.h
    }

    pub fn lock(
        &mut self,
        session: u64,
        request: u64,
        h: Handle,
        ranges: &[(u64, u64, bool)],
        fail_immediately: bool,
    ) -> Rep {
        let Some(o) = self.open(h) else {
            return Rep::Done(Status::InvalidHandle);
        };
        let file = o.p.file;
        // MS-FSA 2.1.5.7: byte-range locks on a directory are an invalid parameter.
        if o.p.directory {
            return Rep::Done(Status::InvalidParameter);
        }
        // MS-FSA 2.1.5.7 / MS-SMB2 3.3.5.14: a range whose last byte lies beyond 2^64 - 1 is
        // invalid (one ending exactly at 2^64 is fine).
        if ranges.iter().any(|(off, len, _)| !range_fits(*off, *len)) {
            return Rep::Done(Status::InvalidLockRange);
        }
        if !fail_immediately && ranges.len() != 1 {
            return Rep::Done(Status::InvalidParameter);
        }
        if self.rules.lock_breaks_level2 {
            self.contend_read_caching(h, file);
        }
        // 3.3.5.14.2: the elements are applied in order; a failure releases those granted.
        let before = self.locks.len();
        for &(off, len, excl) in ranges {
            let n = MLock { h, off, len, excl };
            if self.lock_conflicts(file, &n) {
                self.locks.truncate(before);
                if fail_immediately {
                    return Rep::Done(Status::LockNotGranted);
                }
                self.waiters.push(Waiter {
                    session,
                    request,
                    lock: n,
                });
                return Rep::Pending;
            }
            self.locks.push(n);
        }
        Rep::Done(Status::Success)
    }

    /// MS-FSA 2.1.5.8: each range must match a lock of this open exactly.
    pub fn unlock(&mut self, h: Handle, off: u64, len: u64) -> Rep {
        let Some(o) = self.open(h) else {
            return Rep::Done(Status::InvalidHandle);
        };
        // (A directory has no locks, so an unlock there finds no match.)
        let file = o.p.file;
        // MS-SMB2 3.3.5.14: the range check applies to unlock elements too.
        if !range_fits(off, len) {
            return Rep::Done(Status::InvalidLockRange);
        }
        let Some(pos) = self
            .locks
            .iter()
            .position(|l| l.h == h && l.off == off && l.len == len)
        else {
            return Rep::Done(Status::RangeNotLocked);
        };
        self.locks.remove(pos);
        self.run_waiters(file);
        Rep::Done(Status::Success)
    }

    /// Waiters are granted in arrival order once no granted lock conflicts (MS-FSA 2.1.5.7:
    /// the check is against granted locks only, so a waiter never blocks a new request and a
    /// later waiter may go before an earlier one that still conflicts).
    fn run_waiters(&mut self, file: u128) {
        let mut i = 0;
        while i < self.waiters.len() {
            let w = self.waiters[i].clone();
            let same_file = self.open(w.lock.h).is_some_and(|o| o.p.file == file);
            if same_file && !self.lock_conflicts(file, &w.lock) {
                self.waiters.remove(i);
                // The read-caching contention of 2.1.4.12 is applied when the lock is granted
                // too: a Level II oplock granted while the lock waited is broken now (the
                // engine's and Samba's choice; MS-FSA checks at the request only).
                if self.rules.lock_breaks_level2 {
                    self.contend_read_caching(w.lock.h, file);
                }
                self.locks.push(w.lock);
                self.notes.push(Note::Completed {
                    session: w.session,
                    request: w.request,
                    reply: Rep::Done(Status::Success),
                });
                // A grant can only block others, so the scan continues from here.
                continue;
            }
            i += 1;
        }
    }

    /// SMB2 CANCEL of a waiting lock (MS-SMB2 3.3.5.16).
    pub fn cancel(&mut self, session: u64, request: u64) -> Rep {
        let Some(pos) = self
            .waiters
            .iter()
            .position(|w| w.session == session && w.request == request)
        else {
            return Rep::Done(Status::NotFound);
        };
        self.waiters.remove(pos);
        self.notes.push(Note::Completed {
            session,
            request,
            reply: Rep::Done(Status::Cancelled),
        });
        Rep::Done(Status::Success)
    }

    /// MS-FSA 2.1.4.10: a read conflicts with other opens' exclusive locks; a write with any
    /// lock of another open and with shared locks of its own.
    pub fn check_io(&mut self, h: Handle, off: u64, len: u64, write: bool) -> Rep {
        let Some(file) = self.open(h).map(|o| o.p.file) else {
            return Rep::Done(Status::InvalidHandle);
        };
        if write {
            self.contend_read_caching(h, file);
        }
        let conflict = self.locks.iter().any(|l| {
            self.open(l.h).is_some_and(|o| o.p.file == file)
                && overlaps(l.off, l.len, off, len)
                && if write {
                    l.h != h || !l.excl
                } else {
                    l.h != h && l.excl
                }
        });
        Rep::Done(if conflict {
            Status::FileLockConflict
        } else {
            Status::Success
        })
    }

    // ----- durable handles (MS-SMB2 3.3.5.9.6, 3.3.7.1, 3.3.5.9.7) ---------------------------

    pub fn set_durable(&mut self, h: Handle, key: u64) -> Rep {
        if self
            .opens
            .iter()
            .any(|o| o.durable == Some(key) && o.h != h)
        {
            return Rep::Done(Status::InvalidParameter);
        }
        let Some(o) = self.open_mut(h) else {
            return Rep::Done(Status::InvalidHandle);
        };
        o.durable = Some(key);
        Rep::Done(Status::Success)
    }

    /// MS-SMB2 3.3.7.1: a durable open survives its connection only while it holds a batch
    /// oplock or a lease with H; anything else is closed.
    pub fn disconnect(&mut self, h: Handle) -> Rep {
        let Some(o) = self.open(h) else {
            return Rep::Done(Status::InvalidHandle);
        };
        // A delete-pending file (or a delete-on-close open) is not kept for a reconnect:
        // MS-SMB2 3.3.5.9.6 grants no durability with delete-on-close, and Samba's durable
        // disconnect refuses a file whose delete is pending, closing the open instead.
        let deleting = o.p.doc || self.delete_pending.contains(&o.p.file);
        let keep = o.durable.is_some()
            && !deleting
            && match o.lease {
                Some(id) => self.lease(id).is_some_and(|l| l.state & H != 0),
                None => o.oplock == OplockLevel::Batch,
            };
        if keep {
            if let Some(o) = self.open_mut(h) {
                o.disconnected = true;
            }
            Rep::Done(Status::Success)
        } else {
            self.close(h)
        }
    }

    pub fn durable_lookup(&self, key: u64) -> Rep {
        match self.opens.iter().find(|o| o.durable == Some(key)) {
            Some(o) if o.disconnected => Rep::Durable { h: o.h },
            Some(_) => Rep::Done(Status::InvalidDeviceState),
            None => Rep::Done(Status::NotFound),
        }
    }

    /// MS-SMB2 3.3.5.9.7 / 3.3.5.9.12: the reconnecting client gets the open back with its
    /// share mode, locks and caching; a lease belongs to its ClientGuid.
    pub fn reclaim(&mut self, session: u64, key: u64, h: Handle, guid: u128) -> Rep {
        let Some(o) = self.open(h) else {
            return Rep::Done(Status::NotFound);
        };
        if o.durable != Some(key) || !o.disconnected || o.lease.is_some_and(|(g, _)| g != guid) {
            return Rep::Done(Status::NotFound);
        }
        let Some(o) = self.open_mut(h) else {
            return Rep::Done(Status::NotFound);
        };
        o.disconnected = false;
        o.session = session;
        let o = o.clone();
        Rep::Opened {
            h,
            grant: self.grant_of(&o),
        }
    }
}
