//! Durable handles (MS-SMB2 3.3.5.9.6-3.3.5.9.12): opens that outlive their connection and
//! can be reclaimed by a DHnC / DH2C reconnect on this node.
//!
//! When a connection drops, each durable open leaves the lock service (its share mode,
//! oplock or lease are released) and is parked here with its file descriptor. A later
//! CREATE of the same file that would conflict with the parked open (share modes, or an
//! oplock/lease that would need a break the disconnected client cannot acknowledge) purges
//! it, as Windows and Samba do for disconnected durable opens. A reconnect asks the lock
//! service again for the same access, share mode and caching and adopts the parked open.
//!
//! The table is process wide: one smbd process serves one set of shares.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smb_proto::{
    create_action, ctx as cctx, status, CreateContext, CreateRequest, CreateResponse, FileId,
    LeaseContext, Reader, Response,
};

use crate::conn::{err, Conn, Open, Outcome};
use crate::fs::FileInfo;
use crate::locking::{
    self, access_bits, ClientGuid, Lease, LeaseKey, LeaseState, OpenRequest, OplockGrant,
    OplockLevel, OplockRequest, Reply,
};

/// How a durable handle was requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurableKind {
    /// SMB2_CREATE_DURABLE_HANDLE_REQUEST (DHnQ).
    V1,
    /// SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2 (DH2Q) with its CreateGuid.
    V2 {
        create_guid: [u8; 16],
        timeout_ms: u32,
    },
}

/// What a durable open needs to be re-established on another connection.
#[derive(Debug, Clone)]
pub struct DurableState {
    pub kind: DurableKind,
    pub share_access: u32,
    /// The lease context of the original request (for v2 parent key / epoch).
    pub lease: Option<LeaseContext>,
    pub client_guid: [u8; 16],
    pub user: String,
}

impl DurableState {
    fn timeout(&self) -> Duration {
        match self.kind {
            // Samba's default for v1 (MS-SMB2 leaves it to the implementation).
            DurableKind::V1 => Duration::from_secs(16 * 60),
            DurableKind::V2 { timeout_ms, .. } => Duration::from_millis(timeout_ms as u64),
        }
    }
}

/// DH2Q timeout granted for a requested one (MS-SMB2 3.3.5.9.10; Samba caps at 300 s and
/// defaults to 60 s like Windows Server 2012).
pub fn v2_timeout(requested: u32) -> u32 {
    if requested == 0 {
        60_000
    } else {
        requested.min(300_000)
    }
}

struct Parked {
    open: Open,
    expires: Instant,
}

static TABLE: Mutex<BTreeMap<u64, Parked>> = Mutex::new(BTreeMap::new());

fn table() -> MutexGuard<'static, BTreeMap<u64, Parked>> {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    t.retain(|_, p| p.expires > now);
    t
}

/// Park a durable open of a connection that went away.
pub(crate) fn park(persistent: u64, open: Open) {
    let timeout = open
        .durable
        .as_ref()
        .map_or(Duration::ZERO, |d| d.timeout());
    tracing::debug!(persistent, path = ?open.abs, "durable open parked");
    table().insert(
        persistent,
        Parked {
            open,
            expires: Instant::now() + timeout,
        },
    );
}

/// Whether a new open with `access`/`share` (and lease `key`, if any) conflicts with a parked
/// open: share modes (MS-FSA 2.1.5.1.2) or caching that would have to be broken.
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
        // A batch or exclusive oplock breaks on any other open.
        OplockGrant::Oplock(l) => !matches!(l, OplockLevel::None | OplockLevel::LevelII),
        // Write caching breaks for an open under another lease key.
        OplockGrant::Lease(l) => l.state.0 & 0x4 != 0 && key != Some(l.key.0),
        _ => false,
    }
}

/// Purge parked opens of `file` that a new open would conflict with.
pub fn purge_conflicting(stable_id: u128, access: u32, share: u32, key: Option<u128>) {
    let mut t = table();
    let gone: Vec<u64> = t
        .iter()
        .filter(|(_, p)| p.open.stable_id == stable_id && conflicts(&p.open, access, share, key))
        .map(|(k, _)| *k)
        .collect();
    for k in gone {
        tracing::debug!(
            persistent = k,
            "disconnected durable open purged by a new open"
        );
        t.remove(&k);
    }
}

/// Purge parked opens of a file that is being deleted or renamed.
pub fn purge_file(stable_id: u128) {
    table().retain(|_, p| p.open.stable_id != stable_id);
}

/// Take a parked open if `check` accepts it; a rejected one stays parked.
fn take_if(persistent: u64, check: impl FnOnce(&Open) -> Result<(), u32>) -> Result<Open, u32> {
    let mut t = table();
    let Some(p) = t.get(&persistent) else {
        return Err(status::OBJECT_NAME_NOT_FOUND);
    };
    check(&p.open)?;
    t.remove(&persistent)
        .map(|p| p.open)
        .ok_or(status::OBJECT_NAME_NOT_FOUND)
}

fn put_back(persistent: u64, open: Open) {
    park(persistent, open);
}

/// A durable handle reconnect request found in a CREATE.
pub(crate) struct Reconnect {
    pub file_id: FileId,
    /// DH2C: CreateGuid.
    pub v2: Option<[u8; 16]>,
}

/// Parse DHnC / DH2C, with MS-SMB2 3.3.5.9.7 / 3.3.5.9.12 context-combination rules.
pub(crate) fn reconnect_request(c: &CreateRequest) -> Result<Option<Reconnect>, u32> {
    let dhnq = c.context(cctx::DHNQ).is_some();
    let dh2q = c.context(cctx::DH2Q).is_some();
    let dhnc = c.context(cctx::DHNC);
    let dh2c = c.context(cctx::DH2C);
    if (dhnc.is_some() && (dh2c.is_some() || dh2q))
        || (dh2c.is_some() && (dhnq || dh2q))
        || (dhnq && dh2q)
    {
        return Err(status::INVALID_PARAMETER);
    }
    let fid = |data: &[u8]| -> Result<FileId, u32> {
        let mut r = Reader::new(data);
        let persistent = r.u64().map_err(|_| status::INVALID_PARAMETER)?;
        let volatile = r.u64().map_err(|_| status::INVALID_PARAMETER)?;
        Ok(FileId {
            persistent,
            volatile,
        })
    };
    if let Some(x) = dhnc {
        if x.data.len() != 16 {
            return Err(status::INVALID_PARAMETER);
        }
        // Only an extra DHnQ and a lease request may accompany DHnC.
        let allowed = 1 + dhnq as usize + c.context(cctx::RQLS).is_some() as usize;
        if c.contexts.len() != allowed {
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        return Ok(Some(Reconnect {
            file_id: fid(&x.data)?,
            v2: None,
        }));
    }
    if let Some(x) = dh2c {
        if x.data.len() != 36 {
            return Err(status::INVALID_PARAMETER);
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&x.data[16..32]);
        return Ok(Some(Reconnect {
            file_id: fid(&x.data)?,
            v2: Some(guid),
        }));
    }
    Ok(None)
}

/// The durable request of a CREATE (DHnQ / DH2Q), if any.
pub(crate) fn durable_request(c: &CreateRequest, dialect: u16) -> Result<Option<DurableKind>, u32> {
    if let Some(x) = c.context(cctx::DH2Q) {
        if dialect < 0x0300 {
            return Ok(None);
        }
        if x.data.len() != 32 {
            return Err(status::INVALID_PARAMETER);
        }
        let mut r = Reader::new(&x.data);
        let timeout = r.u32().map_err(|_| status::INVALID_PARAMETER)?;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&x.data[16..32]);
        return Ok(Some(DurableKind::V2 {
            create_guid: guid,
            timeout_ms: v2_timeout(timeout),
        }));
    }
    if let Some(x) = c.context(cctx::DHNQ) {
        if x.data.len() != 16 {
            return Err(status::INVALID_PARAMETER);
        }
        return Ok(Some(DurableKind::V1));
    }
    Ok(None)
}

/// Whether the caching granted allows a durable handle: a batch oplock or a lease with
/// Handle caching (MS-SMB2 3.3.5.9.6, 3.3.5.9.10).
pub fn grant_allows_durable(g: &OplockGrant) -> bool {
    match g {
        OplockGrant::Oplock(l) => *l == OplockLevel::Batch,
        OplockGrant::Lease(l) => l.state.0 & 0x2 != 0,
        OplockGrant::None => false,
    }
}

/// The response context announcing a granted durable handle.
pub fn response_context(kind: &DurableKind) -> CreateContext {
    match kind {
        DurableKind::V1 => CreateContext {
            name: cctx::DHNQ.to_vec(),
            data: vec![0; 8],
        },
        DurableKind::V2 { timeout_ms, .. } => {
            let mut data = timeout_ms.to_le_bytes().to_vec();
            data.extend_from_slice(&0u32.to_le_bytes());
            CreateContext {
                name: cctx::DH2Q.to_vec(),
                data,
            }
        }
    }
}

impl Conn {
    /// DHnC / DH2C: reclaim a parked durable open (MS-SMB2 3.3.5.9.7, 3.3.5.9.12). Most CREATE
    /// fields are ignored; only the reconnect context (and a lease request) matter.
    pub(crate) fn durable_reconnect(
        &mut self,
        c: &CreateRequest,
        rc: Reconnect,
        session_id: u64,
        tree_id: u32,
        share: usize,
    ) -> Outcome {
        let user = self
            .sessions
            .get(&session_id)
            .map(|s| s.user.to_lowercase())
            .unwrap_or_default();
        let client_guid = self.neg.as_ref().map(|n| n.client_guid).unwrap_or_default();
        let lease_req = if self.dialect() >= 0x0210 {
            c.context(cctx::RQLS)
                .and_then(|x| LeaseContext::decode(&x.data).ok())
        } else {
            None
        };
        let persistent = rc.file_id.persistent;
        let name = c.name.as_str();
        let taken = take_if(persistent, |o| {
            let Some(d) = o.durable.as_ref() else {
                return Err(status::OBJECT_NAME_NOT_FOUND);
            };
            match (&d.kind, rc.v2) {
                (DurableKind::V1, None) => {}
                (DurableKind::V2 { create_guid, .. }, Some(g)) => {
                    // Like Samba, only the CreateGuid identifies a v2 handle; clients
                    // reconnect with fresh ClientGuids.
                    if *create_guid != g {
                        return Err(status::OBJECT_NAME_NOT_FOUND);
                    }
                }
                _ => return Err(status::OBJECT_NAME_NOT_FOUND),
            }
            if o.share != share {
                return Err(status::OBJECT_NAME_NOT_FOUND);
            }
            match (&o.grant, &lease_req) {
                (OplockGrant::Lease(l), Some(r)) if l.key.0 == r.key => {
                    // A lease belongs to a file name: reconnecting it under another name is
                    // a client error (MS-SMB2 3.3.5.9.7).
                    let want = name
                        .trim_start_matches('\\')
                        .replace('\\', "/")
                        .to_lowercase();
                    if o.rel.to_string_lossy().to_lowercase() != want {
                        return Err(status::INVALID_PARAMETER);
                    }
                }
                (OplockGrant::Lease(_), _) | (_, Some(_)) => {
                    return Err(status::OBJECT_NAME_NOT_FOUND)
                }
                _ => {}
            }
            if d.user != user {
                return Err(status::ACCESS_DENIED);
            }
            Ok(())
        });
        let mut open = match taken {
            Ok(o) => o,
            Err(st) => return err(st),
        };
        let Some(d) = open.durable.clone() else {
            return err(status::OBJECT_NAME_NOT_FOUND);
        };
        let oplock = match &open.grant {
            OplockGrant::Lease(l) => OplockRequest::Lease(Lease {
                key: LeaseKey(l.key.0),
                state: LeaseState(l.state.0),
                parent_key: l.parent_key,
                epoch: l.epoch,
            }),
            OplockGrant::Oplock(l) => OplockRequest::Oplock(*l),
            OplockGrant::None => OplockRequest::None,
        };
        let req = OpenRequest {
            file: locking::FileId(open.stable_id),
            access: open.access,
            share: d.share_access,
            delete_on_close: false,
            directory: open.is_dir,
            overwrite: false,
            client_guid: ClientGuid(u128::from_le_bytes(client_guid)),
            oplock,
        };
        let (lock_open, grant) =
            match self
                .shared
                .lock_request(self.id, 0, locking::Request::Open(req))
            {
                Reply::Opened { open, grant } => (open, grant),
                Reply::Pending => {
                    // Another open holds caching that must break first; a reconnect does not wait.
                    put_back(persistent, open);
                    return err(status::OBJECT_NAME_NOT_FOUND);
                }
                other => {
                    tracing::debug!(?other, "durable reconnect refused by the lock service");
                    return err(status::OBJECT_NAME_NOT_FOUND);
                }
            };
        if !open.locks.is_empty() {
            let r = self.shared.lock_request(
                self.id,
                0,
                locking::Request::Lock {
                    open: lock_open,
                    ranges: open.locks.clone(),
                    fail_immediately: true,
                },
            );
            if r != Reply::Done(locking::Status::Success) {
                tracing::debug!(?r, "byte-range locks of a durable open not re-established");
                open.locks.clear();
            }
        }
        let info = match std::fs::metadata(&open.abs) {
            Ok(m) => FileInfo::load(&open.abs, &m),
            Err(_) => {
                let _ = self.shared.lock_request(
                    self.id,
                    0,
                    locking::Request::Close { open: lock_open },
                );
                return err(status::OBJECT_NAME_NOT_FOUND);
            }
        };
        let mut contexts = Vec::new();
        let oplock_level = match &grant {
            OplockGrant::Lease(l) => {
                let r = d.lease.unwrap_or_default();
                contexts.push(CreateContext {
                    name: cctx::RQLS.to_vec(),
                    data: LeaseContext {
                        key: l.key.0,
                        state: l.state.0 as u32,
                        flags: 0,
                        duration: 0,
                        parent_key: r.parent_key,
                        epoch: l.epoch.or(r.epoch.map(|_| 0)),
                    }
                    .encode(),
                });
                smb_proto::oplock_level::LEASE
            }
            OplockGrant::Oplock(l) => *l as u8,
            OplockGrant::None => smb_proto::oplock_level::NONE,
        };
        open.session_id = session_id;
        open.tree_id = tree_id;
        open.lock_open = Some(lock_open);
        open.grant = grant;
        let fid = FileId {
            persistent,
            volatile: persistent,
        };
        self.opens.insert(persistent, open);
        tracing::debug!(conn = self.id, persistent, "durable open reconnected");
        Outcome::Reply(
            status::SUCCESS,
            Response::Create(CreateResponse {
                oplock_level,
                flags: 0,
                action: create_action::OPENED,
                creation_time: info.creation,
                last_access_time: info.access,
                last_write_time: info.write,
                change_time: info.change,
                allocation_size: info.alloc,
                end_of_file: info.size,
                attributes: info.attributes,
                file_id: fid,
                contexts,
            }),
        )
    }

    /// Park the durable opens of this connection (or of one of its sessions) instead of
    /// closing them: the connection or session is going away.
    pub(crate) fn park_durable_opens(&mut self, session: Option<u64>) {
        let ids: Vec<u64> = self
            .opens
            .iter()
            .filter(|(_, o)| {
                o.durable.is_some()
                    && !o.delete_pending
                    && session.is_none_or(|s| o.session_id == s)
            })
            .map(|(v, _)| *v)
            .collect();
        for v in ids {
            let Some(mut o) = self.opens.remove(&v) else {
                continue;
            };
            let lock_open = o.lock_open.take();
            // Parked before the lock service lets go, so that an open waiting for this
            // one's break finds it and purges it (see `purge_conflicting`).
            park(v, o);
            if let Some(lo) = lock_open {
                let r = self
                    .shared
                    .lock_request(self.id, 0, locking::Request::Close { open: lo });
                if let Reply::Closed { delete_file: true } = r {
                    // Another handle set delete-pending: the file goes, nothing to reclaim.
                    if let Some(o) = table().remove(&v) {
                        let _ = std::fs::remove_file(&o.open.abs);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ctxs: &[(&[u8], usize)]) -> CreateRequest {
        CreateRequest {
            contexts: ctxs
                .iter()
                .map(|(n, len)| CreateContext {
                    name: n.to_vec(),
                    data: vec![0; *len],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn reconnect_context_combinations() {
        assert!(matches!(reconnect_request(&req(&[])), Ok(None)));
        assert!(matches!(
            reconnect_request(&req(&[(cctx::DHNC, 16)])),
            Ok(Some(Reconnect { v2: None, .. }))
        ));
        // DHnQ next to DHnC is ignored; anything else makes the reconnect fail.
        assert!(reconnect_request(&req(&[(cctx::DHNC, 16), (cctx::DHNQ, 16)])).is_ok());
        assert_eq!(
            reconnect_request(&req(&[(cctx::DHNC, 16), (cctx::MXAC, 0)])).err(),
            Some(status::OBJECT_NAME_NOT_FOUND)
        );
        assert_eq!(
            reconnect_request(&req(&[(cctx::DHNC, 16), (cctx::DH2Q, 32)])).err(),
            Some(status::INVALID_PARAMETER)
        );
        assert_eq!(
            reconnect_request(&req(&[(cctx::DHNC, 15)])).err(),
            Some(status::INVALID_PARAMETER)
        );
        assert!(matches!(
            reconnect_request(&req(&[(cctx::DH2C, 36)])),
            Ok(Some(Reconnect { v2: Some(_), .. }))
        ));
    }

    #[test]
    fn durable_v2_timeouts() {
        assert_eq!(v2_timeout(0), 60_000);
        assert_eq!(v2_timeout(1_000), 1_000);
        assert_eq!(v2_timeout(u32::MAX), 300_000);
        assert!(matches!(
            durable_request(&req(&[(cctx::DH2Q, 32)]), 0x0210),
            Ok(None)
        ));
        assert!(matches!(
            durable_request(&req(&[(cctx::DH2Q, 32)]), 0x0300),
            Ok(Some(DurableKind::V2 {
                timeout_ms: 60_000,
                ..
            }))
        ));
    }

    #[test]
    fn only_handle_caching_allows_durable() {
        assert!(grant_allows_durable(&OplockGrant::Oplock(
            OplockLevel::Batch
        )));
        assert!(!grant_allows_durable(&OplockGrant::Oplock(
            OplockLevel::Exclusive
        )));
        assert!(!grant_allows_durable(&OplockGrant::None));
        let lease = |s| {
            OplockGrant::Lease(Lease {
                key: LeaseKey(1),
                state: LeaseState(s),
                parent_key: None,
                epoch: None,
            })
        };
        assert!(grant_allows_durable(&lease(0x3)));
        assert!(!grant_allows_durable(&lease(0x5)));
    }
}
