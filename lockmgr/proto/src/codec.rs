//! Encoding of the engine vocabulary (`lockmgr_engine::types`).
//!
//! All integers little-endian; ids are their inner integer (`FileId`, `ClientGuid`,
//! `LeaseKey`: u128; `OpenId`, `RequestId`: u64). Booleans are one byte, 0 or 1.
//!
//! | Type | Encoding |
//! |------|----------|
//! | `OplockLevel` | u8 wire value (0x00, 0x01, 0x08, 0x09) |
//! | `LeaseState` | u8, bits above RWH (0x07) rejected |
//! | `Status` | u16 (the engine's discriminant) |
//! | `Lease` | key u128, state u8, flags u8 (bit0 parent_key present, bit1 epoch present, bit2 breaking), (parent_key u128 if bit0), (epoch u16 if bit1) |
//! | `OplockRequest` / `OplockGrant` | kind u8 (0 None, 1 Oplock, 2 Lease), then level u8 or `Lease` |
//! | `LockRange` | offset u64, length u64, exclusive bool (17 bytes) |
//! | `OpenRequest` | file u128, access u32, share u32, flags u8 (bit0 delete_on_close, bit1 directory, bit2 overwrite, bit3 stream_base, bit4 link, bit5 io_grant), client_guid u128, oplock `OplockRequest`, stream_base u128 if bit3, link u64 if bit4 (absent means 0) |
//!
//! `Request` is kind u8 then fields:
//!
//! | Kind | Variant | Fields |
//! |------|---------|--------|
//! | 1 | Open | `OpenRequest` |
//! | 2 | Close | open u64 |
//! | 3 | SetDeletePending | open u64, delete bool |
//! | 4 | Lock | open u64, fail_immediately bool, count u16 (<= 64), count x `LockRange` |
//! | 5 | Unlock | open u64, count u16 (<= 64), count x `LockRange` |
//! | 6 | Cancel | request u64 |
//! | 7 | CheckIo | open u64, offset u64, length u64, write bool |
//! | 8 | OplockBreakAck | open u64, level u8 |
//! | 9 | LeaseBreakAck | client_guid u128, key u128, state u8 |
//! | 10 | SetDurable | open u64, key u64, timeout_ms u32, persistent bool, blob `Blob` |
//! | 11 | Disconnect | open u64 |
//! | 12 | DurableLookup | key u64 |
//! | 13 | Reclaim | key u64, open u64, client_guid u128 |
//! | 16 | BreakForRename | open u64 |
//! | 20 | QueryUsage | file u128, except u64 (0 = none) |
//! | 21 | OpenDurable | `OpenRequest`, key u64, timeout_ms u32, persistent bool, blob `Blob` |
//! | 25 | Relink | open u64, link u64 |
//! | 26 | CheckIoGrant | open u64, offset u64, length u64, write bool |
//! | 27 | IoRecallAck | file u128 |
//! | 28 | BreakAndClose | open u64 |
//! | 29 | WatchDir | dir u128, tree bool |
//! | 30 | UnwatchDir | dir u128 |
//! | 31 | DirChange | `DirChange` |
//!
//! `DirChange` is dir u128, action u32, filter u32, subtree bool, name length u16
//! (<= `MAX_DIR_CHANGE_NAME`) then that many bytes of UTF-8.
//!
//! `Blob` is length u16 (<= `MAX_DURABLE_BLOB`) then that many bytes.
//!
//! `Reply` is kind u8 then fields: 1 Opened (open u64, grant `OplockGrant`), 2 Pending,
//! 3 Done (status u16), 4 Closed (delete_file bool), 5 Acked (grant `OplockGrant`),
//! 6 Durable (open u64, blob `Blob`), 20 Usage (opens u32, deny_delete u32, delete_access u32,
//! deleted_links u32, except_deleted bool), 21 OpenedDurable (open u64, grant `OplockGrant`),
//! 22 IoGranted (generation u64), 23 OpenedIo (open u64, grant `OplockGrant`, durable bool,
//! generation u64).
//!
//! `Notification` is kind u8 then fields: 1 OplockBreak (open u64, new_level u8),
//! 2 LeaseBreak (client_guid u128, key u128, current u8, new u8, flags u8 (bit0 epoch present,
//! bit1 ack_required), (epoch u16 if bit0)), 3 Completed (request u64, `Reply`),
//! 4 IoRecall (file u128, generation u64), 5 DirWatched (dir u128, state u8, bits above
//! `watched::DIR | watched::TREE` rejected), 6 DirChanged (`DirChange`).

use lockmgr_engine::{
    watched, ClientGuid, DirChange, DurableRequest, FileId, FileUsage, Lease, LeaseKey, LeaseState,
    LockRange, Notification, OpenId, OpenRequest, OplockGrant, OplockLevel, OplockRequest, Reply,
    Request, RequestId, Status, MAX_DIR_CHANGE_NAME, MAX_DURABLE_BLOB,
};

use crate::error::{DecodeError, EncodeError};
use crate::wire::{Reader, Sink};
use crate::MAX_LOCK_RANGES;

/// Encoded size of one `LockRange`.
pub(crate) const LOCK_RANGE_LEN: usize = 17;

fn invalid(field: &'static str, value: impl Into<u64>) -> DecodeError {
    DecodeError::InvalidEnumValue {
        field,
        value: value.into(),
    }
}

// ---- small enums ----

fn put_lease_state(
    s: &mut Sink<'_>,
    field: &'static str,
    v: LeaseState,
) -> Result<(), EncodeError> {
    if v.0 & !LeaseState::RWH.0 != 0 {
        return Err(EncodeError::InvalidValue {
            field,
            value: u64::from(v.0),
        });
    }
    s.u8(v.0);
    Ok(())
}

fn get_lease_state(r: &mut Reader<'_>, field: &'static str) -> Result<LeaseState, DecodeError> {
    // Carried faithfully even if not a valid *file* lease state (e.g. H alone): whether a state
    // is acceptable is the engine's call (MS-SMB2 3.3.5.9.8), the wire only bounds the bits.
    let v = r.u8()?;
    if v & !LeaseState::RWH.0 != 0 {
        return Err(invalid(field, v));
    }
    Ok(LeaseState(v))
}

fn get_oplock_level(r: &mut Reader<'_>, field: &'static str) -> Result<OplockLevel, DecodeError> {
    let v = r.u8()?;
    OplockLevel::from_wire(v).ok_or_else(|| invalid(field, v))
}

pub(crate) fn status_to_wire(st: Status) -> u16 {
    st as u16
}

fn get_status(r: &mut Reader<'_>) -> Result<Status, DecodeError> {
    let v = r.u16()?;
    Status::from_wire(v).ok_or_else(|| invalid("status", v))
}

// ---- leases and oplocks ----

const LEASE_HAS_PARENT: u8 = 0x01;
const LEASE_HAS_EPOCH: u8 = 0x02;
/// The lease is breaking (grants only): SMB2_LEASE_FLAG_BREAK_IN_PROGRESS for the client.
const LEASE_BREAKING: u8 = 0x04;

fn put_lease(s: &mut Sink<'_>, l: &Lease) -> Result<(), EncodeError> {
    s.u128(l.key.0);
    put_lease_state(s, "lease.state", l.state)?;
    let mut flags = 0;
    if l.parent_key.is_some() {
        flags |= LEASE_HAS_PARENT;
    }
    if l.epoch.is_some() {
        flags |= LEASE_HAS_EPOCH;
    }
    if l.breaking {
        flags |= LEASE_BREAKING;
    }
    s.u8(flags);
    if let Some(p) = l.parent_key {
        s.u128(p.0);
    }
    if let Some(e) = l.epoch {
        s.u16(e);
    }
    Ok(())
}

fn get_lease(r: &mut Reader<'_>) -> Result<Lease, DecodeError> {
    let key = LeaseKey(r.u128()?);
    let state = get_lease_state(r, "lease.state")?;
    let flags = r.u8()?;
    if flags & !(LEASE_HAS_PARENT | LEASE_HAS_EPOCH | LEASE_BREAKING) != 0 {
        return Err(invalid("lease.flags", flags));
    }
    let parent_key = if flags & LEASE_HAS_PARENT != 0 {
        Some(LeaseKey(r.u128()?))
    } else {
        None
    };
    let epoch = if flags & LEASE_HAS_EPOCH != 0 {
        Some(r.u16()?)
    } else {
        None
    };
    Ok(Lease {
        key,
        state,
        parent_key,
        epoch,
        breaking: flags & LEASE_BREAKING != 0,
    })
}

const CACHING_NONE: u8 = 0;
const CACHING_OPLOCK: u8 = 1;
const CACHING_LEASE: u8 = 2;

/// `OplockRequest` and `OplockGrant` share one encoding; this is their common shape.
enum Caching<'l> {
    None,
    Oplock(OplockLevel),
    Lease(&'l Lease),
}

fn put_caching(s: &mut Sink<'_>, c: Caching<'_>) -> Result<(), EncodeError> {
    match c {
        Caching::None => s.u8(CACHING_NONE),
        Caching::Oplock(level) => {
            s.u8(CACHING_OPLOCK);
            s.u8(level as u8);
        }
        Caching::Lease(l) => {
            s.u8(CACHING_LEASE);
            put_lease(s, l)?;
        }
    }
    Ok(())
}

enum CachingOwned {
    None,
    Oplock(OplockLevel),
    Lease(Lease),
}

fn get_caching(r: &mut Reader<'_>, field: &'static str) -> Result<CachingOwned, DecodeError> {
    match r.u8()? {
        CACHING_NONE => Ok(CachingOwned::None),
        CACHING_OPLOCK => Ok(CachingOwned::Oplock(get_oplock_level(r, "oplock.level")?)),
        CACHING_LEASE => Ok(CachingOwned::Lease(get_lease(r)?)),
        v => Err(invalid(field, v)),
    }
}

fn put_oplock_request(s: &mut Sink<'_>, o: &OplockRequest) -> Result<(), EncodeError> {
    put_caching(
        s,
        match o {
            OplockRequest::None => Caching::None,
            OplockRequest::Oplock(l) => Caching::Oplock(*l),
            OplockRequest::Lease(l) => Caching::Lease(l),
        },
    )
}

fn get_oplock_request(r: &mut Reader<'_>) -> Result<OplockRequest, DecodeError> {
    Ok(match get_caching(r, "oplock_request.kind")? {
        CachingOwned::None => OplockRequest::None,
        CachingOwned::Oplock(l) => OplockRequest::Oplock(l),
        CachingOwned::Lease(l) => OplockRequest::Lease(l),
    })
}

fn put_grant(s: &mut Sink<'_>, g: &OplockGrant) -> Result<(), EncodeError> {
    put_caching(
        s,
        match g {
            OplockGrant::None => Caching::None,
            OplockGrant::Oplock(l) => Caching::Oplock(*l),
            OplockGrant::Lease(l) => Caching::Lease(l),
        },
    )
}

fn get_grant(r: &mut Reader<'_>) -> Result<OplockGrant, DecodeError> {
    Ok(match get_caching(r, "oplock_grant.kind")? {
        CachingOwned::None => OplockGrant::None,
        CachingOwned::Oplock(l) => OplockGrant::Oplock(l),
        CachingOwned::Lease(l) => OplockGrant::Lease(l),
    })
}

// ---- open ----

const OPEN_DELETE_ON_CLOSE: u8 = 0x01;
const OPEN_DIRECTORY: u8 = 0x02;
const OPEN_OVERWRITE: u8 = 0x04;
/// A named-stream open: its base file's id follows the oplock request.
const OPEN_STREAM_BASE: u8 = 0x08;
/// A link other than 0: its u64 follows (after the base file's id).
const OPEN_LINK: u8 = 0x10;
/// The opener takes an I/O grant with the open if the file allows one.
const OPEN_IO_GRANT: u8 = 0x20;

fn put_open_request(s: &mut Sink<'_>, o: &OpenRequest) -> Result<(), EncodeError> {
    s.u128(o.file.0);
    s.u32(o.access);
    s.u32(o.share);
    let mut flags = 0;
    if o.delete_on_close {
        flags |= OPEN_DELETE_ON_CLOSE;
    }
    if o.directory {
        flags |= OPEN_DIRECTORY;
    }
    if o.overwrite {
        flags |= OPEN_OVERWRITE;
    }
    if o.stream_base.is_some() {
        flags |= OPEN_STREAM_BASE;
    }
    if o.link != 0 {
        flags |= OPEN_LINK;
    }
    if o.io_grant {
        flags |= OPEN_IO_GRANT;
    }
    s.u8(flags);
    s.u128(o.client_guid.0);
    put_oplock_request(s, &o.oplock)?;
    if let Some(base) = o.stream_base {
        s.u128(base.0);
    }
    if o.link != 0 {
        s.u64(o.link);
    }
    Ok(())
}

fn get_open_request(r: &mut Reader<'_>) -> Result<OpenRequest, DecodeError> {
    let file = FileId(r.u128()?);
    let access = r.u32()?;
    let share = r.u32()?;
    let flags = r.u8()?;
    if flags
        & !(OPEN_DELETE_ON_CLOSE
            | OPEN_DIRECTORY
            | OPEN_OVERWRITE
            | OPEN_STREAM_BASE
            | OPEN_LINK
            | OPEN_IO_GRANT)
        != 0
    {
        return Err(invalid("open.flags", flags));
    }
    let client_guid = ClientGuid(r.u128()?);
    let oplock = get_oplock_request(r)?;
    let stream_base = if flags & OPEN_STREAM_BASE != 0 {
        Some(FileId(r.u128()?))
    } else {
        None
    };
    let link = if flags & OPEN_LINK != 0 {
        // Link 0 is sent by leaving the flag clear, so each request has one encoding.
        match r.u64()? {
            0 => return Err(invalid("open.link", 0u64)),
            l => l,
        }
    } else {
        0
    };
    Ok(OpenRequest {
        file,
        access,
        share,
        delete_on_close: flags & OPEN_DELETE_ON_CLOSE != 0,
        directory: flags & OPEN_DIRECTORY != 0,
        overwrite: flags & OPEN_OVERWRITE != 0,
        client_guid,
        oplock,
        stream_base,
        link,
        io_grant: flags & OPEN_IO_GRANT != 0,
    })
}

// ---- lock ranges ----

fn put_ranges(s: &mut Sink<'_>, ranges: &[LockRange]) -> Result<(), EncodeError> {
    if ranges.len() > MAX_LOCK_RANGES {
        return Err(EncodeError::TooManyRanges {
            count: ranges.len(),
            max: MAX_LOCK_RANGES,
        });
    }
    // Cannot truncate: bounded by MAX_LOCK_RANGES above.
    s.u16(ranges.len() as u16);
    for rg in ranges {
        let mut b = [0u8; LOCK_RANGE_LEN];
        b[..8].copy_from_slice(&rg.offset.to_le_bytes());
        b[8..16].copy_from_slice(&rg.length.to_le_bytes());
        b[16] = u8::from(rg.exclusive);
        s.put(&b);
    }
    Ok(())
}

fn get_ranges(r: &mut Reader<'_>) -> Result<Vec<LockRange>, DecodeError> {
    let mut out = Vec::new();
    get_ranges_into(r, &mut out)?;
    Ok(out)
}

/// Decodes a range list into `out` (cleared first), so a caller can reuse one buffer.
fn get_ranges_into(r: &mut Reader<'_>, out: &mut Vec<LockRange>) -> Result<(), DecodeError> {
    out.clear();
    let count = usize::from(r.u16()?);
    if count > MAX_LOCK_RANGES {
        return Err(DecodeError::TooManyRanges {
            count,
            max: MAX_LOCK_RANGES,
        });
    }
    // Check the bytes are there before allocating, so the capacity is bounded by the input.
    let raw = r.bytes(count * LOCK_RANGE_LEN)?;
    out.reserve(count);
    for chunk in raw.chunks_exact(LOCK_RANGE_LEN) {
        let mut cr = Reader::new(chunk);
        let offset = cr.u64()?;
        let length = cr.u64()?;
        let exclusive = cr.bool("lock_range.exclusive")?;
        out.push(LockRange {
            offset,
            length,
            exclusive,
        });
    }
    Ok(())
}

/// The body of a `Request` message holding a lock or unlock, decoded with its ranges in
/// `ranges`: `Ok(None)` if the request is of another kind (nothing is consumed then).
/// Applies exactly the checks of [`get_request`] for these two kinds.
pub(crate) fn get_lock_request_into(
    r: &mut Reader<'_>,
    ranges: &mut Vec<LockRange>,
) -> Result<Option<LockRequestHead>, DecodeError> {
    let kind = match r.peek_u8() {
        Some(k @ (REQ_LOCK | REQ_UNLOCK)) => k,
        _ => return Ok(None),
    };
    r.u8()?;
    let open = OpenId(r.u64()?);
    let fail_immediately = if kind == REQ_LOCK {
        Some(r.bool("lock.fail_immediately")?)
    } else {
        None
    };
    get_ranges_into(r, ranges)?;
    Ok(Some(LockRequestHead {
        open,
        fail_immediately,
    }))
}

/// The body of `Request::Lock` (`fail_immediately` is `Some`) or `Request::Unlock` (`None`)
/// from borrowed ranges: what [`put_request`] writes for them (it calls this), so a node can
/// encode a lock request without building a `Request` (and its `Vec`).
pub(crate) fn put_lock_request(
    s: &mut Sink<'_>,
    open: OpenId,
    ranges: &[LockRange],
    fail_immediately: Option<bool>,
) -> Result<(), EncodeError> {
    match fail_immediately {
        Some(fail) => {
            s.u8(REQ_LOCK);
            s.u64(open.0);
            s.bool(fail);
        }
        None => {
            s.u8(REQ_UNLOCK);
            s.u64(open.0);
        }
    }
    put_ranges(s, ranges)
}

/// Encoded length of what [`put_lock_request`] writes ([`request_len`] of the same request).
pub(crate) fn lock_request_len(
    ranges: &[LockRange],
    fail_immediately: Option<bool>,
) -> Result<usize, EncodeError> {
    Ok(1 + 8 + usize::from(fail_immediately.is_some()) + ranges_len(ranges)?)
}

/// Encoded length of a lock request with one range (kind, open, fail flag, count, range).
pub(crate) const ONE_RANGE_LOCK_LEN: usize = 1 + 8 + 1 + 2 + LOCK_RANGE_LEN;

/// The encoding of `Request::Lock { open, ranges: vec![range], fail_immediately }`, exactly
/// what [`put_request`] writes for it.
#[inline]
pub(crate) fn one_range_lock(
    open: OpenId,
    range: &LockRange,
    fail_immediately: bool,
) -> [u8; ONE_RANGE_LOCK_LEN] {
    let mut b = [0u8; ONE_RANGE_LOCK_LEN];
    b[0] = REQ_LOCK;
    b[1..9].copy_from_slice(&open.0.to_le_bytes());
    b[9] = u8::from(fail_immediately);
    b[10..12].copy_from_slice(&1u16.to_le_bytes());
    b[12..20].copy_from_slice(&range.offset.to_le_bytes());
    b[20..28].copy_from_slice(&range.length.to_le_bytes());
    b[28] = u8::from(range.exclusive);
    b
}

/// Encoded length of an unlock request with one range (kind, open, count, range).
pub(crate) const ONE_RANGE_UNLOCK_LEN: usize = ONE_RANGE_LOCK_LEN - 1;

/// The encoding of `Request::Unlock { open, ranges: vec![range] }`, exactly what
/// [`put_request`] writes for it.
#[inline]
pub(crate) fn one_range_unlock(open: OpenId, range: &LockRange) -> [u8; ONE_RANGE_UNLOCK_LEN] {
    let mut b = [0u8; ONE_RANGE_UNLOCK_LEN];
    b[0] = REQ_UNLOCK;
    b[1..9].copy_from_slice(&open.0.to_le_bytes());
    b[9..11].copy_from_slice(&1u16.to_le_bytes());
    b[11..19].copy_from_slice(&range.offset.to_le_bytes());
    b[19..27].copy_from_slice(&range.length.to_le_bytes());
    b[27] = u8::from(range.exclusive);
    b
}

/// The status of a `Reply::Done` body that is exactly the done encoding (kind byte and
/// status, nothing else): `Ok(None)` if `body` is any other reply, so the caller decodes it
/// the general way (which then reports the same errors [`get_reply`] would).
#[inline]
pub(crate) fn get_done_reply(body: &[u8]) -> Result<Option<Status>, DecodeError> {
    match *body {
        [REPLY_DONE, a, b] => {
            let v = u16::from_le_bytes([a, b]);
            Status::from_wire(v)
                .map(Some)
                .ok_or_else(|| invalid("status", v))
        }
        _ => Ok(None),
    }
}

/// Fixed fields of a lock (`fail_immediately` is `Some`) or unlock (`None`) request.
pub(crate) struct LockRequestHead {
    pub open: OpenId,
    pub fail_immediately: Option<bool>,
}

// ---- request / reply / notification ----

const REQ_OPEN: u8 = 1;
const REQ_CLOSE: u8 = 2;
const REQ_SET_DELETE_PENDING: u8 = 3;
const REQ_LOCK: u8 = 4;
const REQ_UNLOCK: u8 = 5;
const REQ_CANCEL: u8 = 6;
const REQ_CHECK_IO: u8 = 7;
const REQ_OPLOCK_BREAK_ACK: u8 = 8;
const REQ_LEASE_BREAK_ACK: u8 = 9;
const REQ_SET_DURABLE: u8 = 10;
const REQ_DISCONNECT: u8 = 11;
const REQ_DURABLE_LOOKUP: u8 = 12;
const REQ_RECLAIM: u8 = 13;
const REQ_BREAK_FOR_RENAME: u8 = 16;
const REQ_QUERY_USAGE: u8 = 20;
const REQ_OPEN_DURABLE: u8 = 21;
const REQ_RELINK: u8 = 25;
const REQ_CHECK_IO_GRANT: u8 = 26;
const REQ_IO_RECALL_ACK: u8 = 27;
const REQ_BREAK_AND_CLOSE: u8 = 28;
const REQ_WATCH_DIR: u8 = 29;
const REQ_UNWATCH_DIR: u8 = 30;
const REQ_DIR_CHANGE: u8 = 31;

/// The encoded length of a change-notify name or path (`u16` length, UTF-8 bytes), at most
/// [`MAX_DIR_CHANGE_NAME`] bytes.
fn dir_path_len(field: &'static str, p: &str) -> Result<usize, EncodeError> {
    if p.len() > MAX_DIR_CHANGE_NAME {
        return Err(EncodeError::StringTooLong {
            field,
            len: p.len(),
            max: MAX_DIR_CHANGE_NAME,
        });
    }
    Ok(2 + p.len())
}

fn put_dir_path(s: &mut Sink<'_>, field: &'static str, p: &str) -> Result<(), EncodeError> {
    dir_path_len(field, p)?;
    // Cannot truncate: bounded by MAX_DIR_CHANGE_NAME < u16::MAX in dir_path_len.
    s.u16(p.len() as u16);
    s.put(p.as_bytes());
    Ok(())
}

fn get_dir_path(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    let len = usize::from(r.u16()?);
    if len > MAX_DIR_CHANGE_NAME {
        return Err(DecodeError::StringTooLong {
            field,
            len,
            max: MAX_DIR_CHANGE_NAME,
        });
    }
    Ok(std::str::from_utf8(r.bytes(len)?)
        .map_err(|_| DecodeError::InvalidUtf8 { field })?
        .to_owned())
}

fn dir_change_len(c: &DirChange) -> Result<usize, EncodeError> {
    Ok(16 + 4 + 4 + 1 + dir_path_len("dir_change.name", &c.name)?)
}

fn put_dir_change(s: &mut Sink<'_>, c: &DirChange) -> Result<(), EncodeError> {
    dir_change_len(c)?;
    s.u128(c.dir.0);
    s.u32(c.action);
    s.u32(c.filter);
    s.bool(c.subtree);
    put_dir_path(s, "dir_change.name", &c.name)
}

fn get_dir_change(r: &mut Reader<'_>) -> Result<DirChange, DecodeError> {
    let dir = FileId(r.u128()?);
    let action = r.u32()?;
    let filter = r.u32()?;
    let subtree = r.bool("dir_change.subtree")?;
    let name = get_dir_path(r, "dir_change.name")?;
    Ok(DirChange {
        dir,
        action,
        filter,
        name,
        subtree,
    })
}

fn put_blob(s: &mut Sink<'_>, blob: &[u8]) -> Result<(), EncodeError> {
    let len = blob_len(blob)?;
    // Cannot truncate: blob_len bounds it by MAX_DURABLE_BLOB < u16::MAX.
    s.u16((len - 2) as u16);
    s.put(blob);
    Ok(())
}

fn get_blob(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<u8>, DecodeError> {
    let len = usize::from(r.u16()?);
    if len > MAX_DURABLE_BLOB {
        return Err(DecodeError::StringTooLong {
            field,
            len,
            max: MAX_DURABLE_BLOB,
        });
    }
    Ok(r.bytes(len)?.to_vec())
}

fn blob_len(blob: &[u8]) -> Result<usize, EncodeError> {
    if blob.len() > MAX_DURABLE_BLOB {
        return Err(EncodeError::StringTooLong {
            field: "durable.blob",
            len: blob.len(),
            max: MAX_DURABLE_BLOB,
        });
    }
    Ok(2 + blob.len())
}

pub(crate) fn put_request(s: &mut Sink<'_>, req: &Request) -> Result<(), EncodeError> {
    match req {
        Request::Open(o) => {
            s.u8(REQ_OPEN);
            put_open_request(s, o)?;
        }
        Request::OpenDurable { open, durable } => {
            s.u8(REQ_OPEN_DURABLE);
            put_open_request(s, open)?;
            s.u64(durable.key);
            s.u32(durable.timeout_ms);
            s.bool(durable.persistent);
            put_blob(s, &durable.blob)?;
        }
        Request::Close { open } => {
            s.u8(REQ_CLOSE);
            s.u64(open.0);
        }
        Request::SetDeletePending { open, delete } => {
            s.u8(REQ_SET_DELETE_PENDING);
            s.u64(open.0);
            s.bool(*delete);
        }
        Request::Lock {
            open,
            ranges,
            fail_immediately,
        } => put_lock_request(s, *open, ranges, Some(*fail_immediately))?,
        Request::Unlock { open, ranges } => put_lock_request(s, *open, ranges, None)?,
        Request::Cancel { request } => {
            s.u8(REQ_CANCEL);
            s.u64(request.0);
        }
        Request::CheckIo {
            open,
            offset,
            length,
            write,
        } => {
            s.u8(REQ_CHECK_IO);
            s.u64(open.0);
            s.u64(*offset);
            s.u64(*length);
            s.bool(*write);
        }
        Request::CheckIoGrant {
            open,
            offset,
            length,
            write,
        } => {
            s.u8(REQ_CHECK_IO_GRANT);
            s.u64(open.0);
            s.u64(*offset);
            s.u64(*length);
            s.bool(*write);
        }
        Request::IoRecallAck { file } => {
            s.u8(REQ_IO_RECALL_ACK);
            s.u128(file.0);
        }
        Request::OplockBreakAck { open, level } => {
            s.u8(REQ_OPLOCK_BREAK_ACK);
            s.u64(open.0);
            s.u8(*level as u8);
        }
        Request::LeaseBreakAck {
            client_guid,
            key,
            state,
        } => {
            s.u8(REQ_LEASE_BREAK_ACK);
            s.u128(client_guid.0);
            s.u128(key.0);
            put_lease_state(s, "lease_break_ack.state", *state)?;
        }
        Request::BreakForRename { open } => {
            s.u8(REQ_BREAK_FOR_RENAME);
            s.u64(open.0);
        }
        Request::BreakAndClose { open } => {
            s.u8(REQ_BREAK_AND_CLOSE);
            s.u64(open.0);
        }
        Request::WatchDir { dir, tree, path } => {
            s.u8(REQ_WATCH_DIR);
            s.u128(dir.0);
            s.bool(*tree);
            put_dir_path(s, "watch_dir.path", path)?;
        }
        Request::UnwatchDir { dir } => {
            s.u8(REQ_UNWATCH_DIR);
            s.u128(dir.0);
        }
        Request::DirChange(c) => {
            s.u8(REQ_DIR_CHANGE);
            put_dir_change(s, c)?;
        }
        Request::QueryUsage { file, except } => {
            s.u8(REQ_QUERY_USAGE);
            s.u128(file.0);
            // OpenId 0 is never granted: it stands for "no exception".
            s.u64(except.map_or(0, |o| o.0));
        }
        Request::Relink { open, link } => {
            s.u8(REQ_RELINK);
            s.u64(open.0);
            s.u64(*link);
        }
        Request::SetDurable {
            open,
            key,
            timeout_ms,
            persistent,
            blob,
        } => {
            s.u8(REQ_SET_DURABLE);
            s.u64(open.0);
            s.u64(*key);
            s.u32(*timeout_ms);
            s.bool(*persistent);
            put_blob(s, blob)?;
        }
        Request::Disconnect { open } => {
            s.u8(REQ_DISCONNECT);
            s.u64(open.0);
        }
        Request::DurableLookup { key } => {
            s.u8(REQ_DURABLE_LOOKUP);
            s.u64(*key);
        }
        Request::Reclaim {
            key,
            open,
            client_guid,
        } => {
            s.u8(REQ_RECLAIM);
            s.u64(*key);
            s.u64(open.0);
            s.u128(client_guid.0);
        }
        _ => return Err(EncodeError::UnsupportedVariant("Request")),
    }
    Ok(())
}

pub(crate) fn get_request(r: &mut Reader<'_>) -> Result<Request, DecodeError> {
    Ok(match r.u8()? {
        REQ_OPEN => Request::Open(get_open_request(r)?),
        REQ_OPEN_DURABLE => Request::OpenDurable {
            open: get_open_request(r)?,
            durable: DurableRequest {
                key: r.u64()?,
                timeout_ms: r.u32()?,
                persistent: r.bool("open_durable.persistent")?,
                blob: get_blob(r, "open_durable.blob")?,
            },
        },
        REQ_CLOSE => Request::Close {
            open: OpenId(r.u64()?),
        },
        REQ_SET_DELETE_PENDING => Request::SetDeletePending {
            open: OpenId(r.u64()?),
            delete: r.bool("set_delete_pending.delete")?,
        },
        REQ_LOCK => Request::Lock {
            open: OpenId(r.u64()?),
            fail_immediately: r.bool("lock.fail_immediately")?,
            ranges: get_ranges(r)?,
        },
        REQ_UNLOCK => Request::Unlock {
            open: OpenId(r.u64()?),
            ranges: get_ranges(r)?,
        },
        REQ_CANCEL => Request::Cancel {
            request: RequestId(r.u64()?),
        },
        REQ_CHECK_IO => Request::CheckIo {
            open: OpenId(r.u64()?),
            offset: r.u64()?,
            length: r.u64()?,
            write: r.bool("check_io.write")?,
        },
        REQ_CHECK_IO_GRANT => Request::CheckIoGrant {
            open: OpenId(r.u64()?),
            offset: r.u64()?,
            length: r.u64()?,
            write: r.bool("check_io_grant.write")?,
        },
        REQ_IO_RECALL_ACK => Request::IoRecallAck {
            file: FileId(r.u128()?),
        },
        REQ_OPLOCK_BREAK_ACK => Request::OplockBreakAck {
            open: OpenId(r.u64()?),
            level: get_oplock_level(r, "oplock_break_ack.level")?,
        },
        REQ_LEASE_BREAK_ACK => Request::LeaseBreakAck {
            client_guid: ClientGuid(r.u128()?),
            key: LeaseKey(r.u128()?),
            state: get_lease_state(r, "lease_break_ack.state")?,
        },
        REQ_BREAK_FOR_RENAME => Request::BreakForRename {
            open: OpenId(r.u64()?),
        },
        REQ_BREAK_AND_CLOSE => Request::BreakAndClose {
            open: OpenId(r.u64()?),
        },
        REQ_WATCH_DIR => Request::WatchDir {
            dir: FileId(r.u128()?),
            tree: r.bool("watch_dir.tree")?,
            path: get_dir_path(r, "watch_dir.path")?,
        },
        REQ_UNWATCH_DIR => Request::UnwatchDir {
            dir: FileId(r.u128()?),
        },
        REQ_DIR_CHANGE => Request::DirChange(get_dir_change(r)?),
        REQ_QUERY_USAGE => Request::QueryUsage {
            file: FileId(r.u128()?),
            except: match r.u64()? {
                0 => None,
                o => Some(OpenId(o)),
            },
        },
        REQ_RELINK => Request::Relink {
            open: OpenId(r.u64()?),
            link: r.u64()?,
        },
        REQ_SET_DURABLE => Request::SetDurable {
            open: OpenId(r.u64()?),
            key: r.u64()?,
            timeout_ms: r.u32()?,
            persistent: r.bool("set_durable.persistent")?,
            blob: get_blob(r, "set_durable.blob")?,
        },
        REQ_DISCONNECT => Request::Disconnect {
            open: OpenId(r.u64()?),
        },
        REQ_DURABLE_LOOKUP => Request::DurableLookup { key: r.u64()? },
        REQ_RECLAIM => Request::Reclaim {
            key: r.u64()?,
            open: OpenId(r.u64()?),
            client_guid: ClientGuid(r.u128()?),
        },
        v => return Err(invalid("request.kind", v)),
    })
}

const REPLY_OPENED: u8 = 1;
const REPLY_PENDING: u8 = 2;
const REPLY_DONE: u8 = 3;

/// Encoded length of a `Reply::Done` body (kind byte + status).
pub(crate) const DONE_REPLY_LEN: usize = 3;

/// The encoding of `Reply::Done(st)`, exactly what [`put_reply`] writes for it.
#[inline]
pub(crate) fn done_reply(st: Status) -> [u8; DONE_REPLY_LEN] {
    let [a, b] = status_to_wire(st).to_le_bytes();
    [REPLY_DONE, a, b]
}
const REPLY_CLOSED: u8 = 4;
const REPLY_ACKED: u8 = 5;
const REPLY_DURABLE: u8 = 6;
const REPLY_USAGE: u8 = 20;
const REPLY_OPENED_DURABLE: u8 = 21;
const REPLY_IO_GRANTED: u8 = 22;
const REPLY_OPENED_IO: u8 = 23;
const REPLY_CLOSED_DELETE_BASE: u8 = 24;

pub(crate) fn put_reply(s: &mut Sink<'_>, rep: &Reply) -> Result<(), EncodeError> {
    match rep {
        Reply::Opened { open, grant } => {
            s.u8(REPLY_OPENED);
            s.u64(open.0);
            put_grant(s, grant)?;
        }
        Reply::OpenedDurable { open, grant } => {
            s.u8(REPLY_OPENED_DURABLE);
            s.u64(open.0);
            put_grant(s, grant)?;
        }
        Reply::IoGranted { generation } => {
            s.u8(REPLY_IO_GRANTED);
            s.u64(*generation);
        }
        Reply::OpenedIo {
            open,
            grant,
            durable,
            generation,
        } => {
            s.u8(REPLY_OPENED_IO);
            s.u64(open.0);
            put_grant(s, grant)?;
            s.bool(*durable);
            s.u64(*generation);
        }
        Reply::Pending => s.u8(REPLY_PENDING),
        Reply::Done(st) => {
            s.u8(REPLY_DONE);
            s.u16(status_to_wire(*st));
        }
        Reply::Closed { delete_file } => {
            s.u8(REPLY_CLOSED);
            s.bool(*delete_file);
        }
        Reply::ClosedDeleteBase => s.u8(REPLY_CLOSED_DELETE_BASE),
        Reply::Acked { grant } => {
            s.u8(REPLY_ACKED);
            put_grant(s, grant)?;
        }
        Reply::Durable { open, blob } => {
            s.u8(REPLY_DURABLE);
            s.u64(open.0);
            put_blob(s, blob)?;
        }
        Reply::Usage(u) => {
            s.u8(REPLY_USAGE);
            s.u32(u.opens);
            s.u32(u.deny_delete);
            s.u32(u.delete_access);
            s.u32(u.deleted_links);
            s.bool(u.except_deleted);
        }
        _ => return Err(EncodeError::UnsupportedVariant("Reply")),
    }
    Ok(())
}

pub(crate) fn get_reply(r: &mut Reader<'_>) -> Result<Reply, DecodeError> {
    Ok(match r.u8()? {
        REPLY_OPENED => Reply::Opened {
            open: OpenId(r.u64()?),
            grant: get_grant(r)?,
        },
        REPLY_OPENED_DURABLE => Reply::OpenedDurable {
            open: OpenId(r.u64()?),
            grant: get_grant(r)?,
        },
        REPLY_IO_GRANTED => Reply::IoGranted {
            generation: r.u64()?,
        },
        REPLY_OPENED_IO => Reply::OpenedIo {
            open: OpenId(r.u64()?),
            grant: get_grant(r)?,
            durable: r.bool("opened_io.durable")?,
            generation: r.u64()?,
        },
        REPLY_PENDING => Reply::Pending,
        REPLY_DONE => Reply::Done(get_status(r)?),
        REPLY_CLOSED => Reply::Closed {
            delete_file: r.bool("closed.delete_file")?,
        },
        REPLY_CLOSED_DELETE_BASE => Reply::ClosedDeleteBase,
        REPLY_ACKED => Reply::Acked {
            grant: get_grant(r)?,
        },
        REPLY_DURABLE => Reply::Durable {
            open: OpenId(r.u64()?),
            blob: get_blob(r, "durable.blob")?,
        },
        REPLY_USAGE => Reply::Usage(FileUsage {
            opens: r.u32()?,
            deny_delete: r.u32()?,
            delete_access: r.u32()?,
            deleted_links: r.u32()?,
            except_deleted: r.bool("usage.except_deleted")?,
        }),
        v => return Err(invalid("reply.kind", v)),
    })
}

const NOTIFY_OPLOCK_BREAK: u8 = 1;
const NOTIFY_LEASE_BREAK: u8 = 2;
const NOTIFY_COMPLETED: u8 = 3;
const NOTIFY_IO_RECALL: u8 = 4;
const NOTIFY_DIR_WATCHED: u8 = 5;
const NOTIFY_DIR_CHANGED: u8 = 6;

const BREAK_HAS_EPOCH: u8 = 0x01;
const BREAK_ACK_REQUIRED: u8 = 0x02;

pub(crate) fn put_notification(s: &mut Sink<'_>, n: &Notification) -> Result<(), EncodeError> {
    match n {
        Notification::OplockBreak { open, new_level } => {
            s.u8(NOTIFY_OPLOCK_BREAK);
            s.u64(open.0);
            s.u8(*new_level as u8);
        }
        Notification::LeaseBreak {
            client_guid,
            key,
            current,
            new,
            epoch,
            ack_required,
        } => {
            s.u8(NOTIFY_LEASE_BREAK);
            s.u128(client_guid.0);
            s.u128(key.0);
            put_lease_state(s, "lease_break.current", *current)?;
            put_lease_state(s, "lease_break.new", *new)?;
            let mut flags = 0;
            if epoch.is_some() {
                flags |= BREAK_HAS_EPOCH;
            }
            if *ack_required {
                flags |= BREAK_ACK_REQUIRED;
            }
            s.u8(flags);
            if let Some(e) = epoch {
                s.u16(*e);
            }
        }
        Notification::Completed { request, reply } => {
            s.u8(NOTIFY_COMPLETED);
            s.u64(request.0);
            put_reply(s, reply)?;
        }
        Notification::IoRecall { file, generation } => {
            s.u8(NOTIFY_IO_RECALL);
            s.u128(file.0);
            s.u64(*generation);
        }
        Notification::DirWatched { dir, state, path } => {
            if state & !(watched::DIR | watched::TREE) != 0 {
                return Err(EncodeError::InvalidValue {
                    field: "dir_watched.state",
                    value: u64::from(*state),
                });
            }
            s.u8(NOTIFY_DIR_WATCHED);
            s.u128(dir.0);
            s.u8(*state);
            put_dir_path(s, "dir_watched.path", path)?;
        }
        Notification::DirChanged(c) => {
            s.u8(NOTIFY_DIR_CHANGED);
            put_dir_change(s, c)?;
        }
        _ => return Err(EncodeError::UnsupportedVariant("Notification")),
    }
    Ok(())
}

pub(crate) fn get_notification(r: &mut Reader<'_>) -> Result<Notification, DecodeError> {
    Ok(match r.u8()? {
        NOTIFY_OPLOCK_BREAK => Notification::OplockBreak {
            open: OpenId(r.u64()?),
            new_level: get_oplock_level(r, "oplock_break.new_level")?,
        },
        NOTIFY_LEASE_BREAK => {
            let client_guid = ClientGuid(r.u128()?);
            let key = LeaseKey(r.u128()?);
            let current = get_lease_state(r, "lease_break.current")?;
            let new = get_lease_state(r, "lease_break.new")?;
            let flags = r.u8()?;
            if flags & !(BREAK_HAS_EPOCH | BREAK_ACK_REQUIRED) != 0 {
                return Err(invalid("lease_break.flags", flags));
            }
            let epoch = if flags & BREAK_HAS_EPOCH != 0 {
                Some(r.u16()?)
            } else {
                None
            };
            Notification::LeaseBreak {
                client_guid,
                key,
                current,
                new,
                epoch,
                ack_required: flags & BREAK_ACK_REQUIRED != 0,
            }
        }
        NOTIFY_COMPLETED => Notification::Completed {
            request: RequestId(r.u64()?),
            reply: get_reply(r)?,
        },
        NOTIFY_IO_RECALL => Notification::IoRecall {
            file: FileId(r.u128()?),
            generation: r.u64()?,
        },
        NOTIFY_DIR_WATCHED => {
            let dir = FileId(r.u128()?);
            let state = r.u8()?;
            if state & !(watched::DIR | watched::TREE) != 0 {
                return Err(invalid("dir_watched.state", state));
            }
            let path = get_dir_path(r, "dir_watched.path")?;
            Notification::DirWatched { dir, state, path }
        }
        NOTIFY_DIR_CHANGED => Notification::DirChanged(get_dir_change(r)?),
        v => return Err(invalid("notification.kind", v)),
    })
}

// ---- exact encoded lengths ----
//
// The frame writer sizes each message before writing it, so that a message that does not fit
// is refused without touching the frame and the writes themselves need no capacity checks
// beyond the slice's own. Each function mirrors the `put_*` function of the same type; the
// property tests compare them against actual encodings.

fn lease_len(l: &Lease) -> usize {
    16 + 1 + 1 + if l.parent_key.is_some() { 16 } else { 0 } + if l.epoch.is_some() { 2 } else { 0 }
}

fn caching_len(c: Caching<'_>) -> usize {
    1 + match c {
        Caching::None => 0,
        Caching::Oplock(_) => 1,
        Caching::Lease(l) => lease_len(l),
    }
}

fn oplock_request_len(o: &OplockRequest) -> usize {
    caching_len(match o {
        OplockRequest::None => Caching::None,
        OplockRequest::Oplock(l) => Caching::Oplock(*l),
        OplockRequest::Lease(l) => Caching::Lease(l),
    })
}

fn grant_len(g: &OplockGrant) -> usize {
    caching_len(match g {
        OplockGrant::None => Caching::None,
        OplockGrant::Oplock(l) => Caching::Oplock(*l),
        OplockGrant::Lease(l) => Caching::Lease(l),
    })
}

fn ranges_len(ranges: &[LockRange]) -> Result<usize, EncodeError> {
    if ranges.len() > MAX_LOCK_RANGES {
        return Err(EncodeError::TooManyRanges {
            count: ranges.len(),
            max: MAX_LOCK_RANGES,
        });
    }
    Ok(2 + ranges.len() * LOCK_RANGE_LEN)
}

fn open_request_len(o: &OpenRequest) -> usize {
    16 + 4
        + 4
        + 1
        + 16
        + oplock_request_len(&o.oplock)
        + o.stream_base.map_or(0, |_| 16)
        + if o.link != 0 { 8 } else { 0 }
}

pub(crate) fn request_len(req: &Request) -> Result<usize, EncodeError> {
    Ok(1 + match req {
        Request::Open(o) => open_request_len(o),
        Request::OpenDurable { open, durable } => {
            open_request_len(open) + 8 + 4 + 1 + blob_len(&durable.blob)?
        }
        Request::Close { .. } => 8,
        Request::SetDeletePending { .. } => 8 + 1,
        Request::Lock { ranges, .. } => 8 + 1 + ranges_len(ranges)?,
        Request::Unlock { ranges, .. } => 8 + ranges_len(ranges)?,
        Request::Cancel { .. } => 8,
        Request::CheckIo { .. } | Request::CheckIoGrant { .. } => 8 + 8 + 8 + 1,
        Request::IoRecallAck { .. } => 16,
        Request::OplockBreakAck { .. } => 8 + 1,
        Request::LeaseBreakAck { .. } => 16 + 16 + 1,
        Request::BreakForRename { .. } | Request::BreakAndClose { .. } => 8,
        Request::QueryUsage { .. } => 16 + 8,
        Request::Relink { .. } => 8 + 8,
        Request::SetDurable { blob, .. } => 8 + 8 + 4 + 1 + blob_len(blob)?,
        Request::Disconnect { .. } => 8,
        Request::DurableLookup { .. } => 8,
        Request::Reclaim { .. } => 8 + 8 + 16,
        Request::WatchDir { path, .. } => 16 + 1 + dir_path_len("watch_dir.path", path)?,
        Request::UnwatchDir { .. } => 16,
        Request::DirChange(c) => dir_change_len(c)?,
        _ => return Err(EncodeError::UnsupportedVariant("Request")),
    })
}

pub(crate) fn reply_len(rep: &Reply) -> Result<usize, EncodeError> {
    Ok(1 + match rep {
        Reply::Opened { grant, .. } | Reply::OpenedDurable { grant, .. } => 8 + grant_len(grant),
        Reply::Pending => 0,
        Reply::Done(_) => 2,
        Reply::Closed { .. } => 1,
        Reply::ClosedDeleteBase => 0,
        Reply::Acked { grant } => grant_len(grant),
        Reply::Durable { blob, .. } => 8 + blob_len(blob)?,
        Reply::Usage(_) => 4 + 4 + 4 + 4 + 1,
        Reply::IoGranted { .. } => 8,
        Reply::OpenedIo { grant, .. } => 8 + grant_len(grant) + 1 + 8,
        _ => return Err(EncodeError::UnsupportedVariant("Reply")),
    })
}

pub(crate) fn notification_len(n: &Notification) -> Result<usize, EncodeError> {
    Ok(1 + match n {
        Notification::OplockBreak { .. } => 8 + 1,
        Notification::LeaseBreak { epoch, .. } => {
            16 + 16 + 1 + 1 + 1 + if epoch.is_some() { 2 } else { 0 }
        }
        Notification::Completed { reply, .. } => 8 + reply_len(reply)?,
        Notification::IoRecall { .. } => 16 + 8,
        Notification::DirWatched { path, .. } => 16 + 1 + dir_path_len("dir_watched.path", path)?,
        Notification::DirChanged(c) => dir_change_len(c)?,
        _ => return Err(EncodeError::UnsupportedVariant("Notification")),
    })
}

/// Longest node name in a `ClientHello`, in bytes.
pub const MAX_NODE_NAME: usize = 64;

/// Encoded size of a node name (length byte + UTF-8), or the error if it is too long.
pub(crate) fn node_name_len(name: &str) -> Result<usize, EncodeError> {
    if name.len() > MAX_NODE_NAME {
        return Err(EncodeError::StringTooLong {
            field: "node_name",
            len: name.len(),
            max: MAX_NODE_NAME,
        });
    }
    Ok(1 + name.len())
}

/// Writes a node name already checked by [`node_name_len`].
pub(crate) fn put_node_name(s: &mut Sink<'_>, name: &str) {
    // Cannot truncate: bounded by MAX_NODE_NAME in node_name_len.
    s.u8(name.len() as u8);
    s.put(name.as_bytes());
}

pub(crate) fn get_node_name(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let len = usize::from(r.u8()?);
    if len > MAX_NODE_NAME {
        return Err(DecodeError::StringTooLong {
            field: "node_name",
            len,
            max: MAX_NODE_NAME,
        });
    }
    Ok(std::str::from_utf8(r.bytes(len)?)
        .map_err(|_| DecodeError::InvalidUtf8 { field: "node_name" })?
        .to_owned())
}
