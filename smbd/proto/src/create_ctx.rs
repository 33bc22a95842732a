//! CREATE contexts (MS-SMB2 2.2.13.2, 2.2.14.2): the durable handle requests and reconnects
//! (DHnQ, DH2Q, DHnC, DH2C) with their combination rules, and the response contexts the
//! server sends (durable grants, maximal access, on-disk id, lease). The lease context itself
//! is [`crate::LeaseContext`].
//!
//! Errors are NTSTATUS values, as the CREATE must fail with them.

use crate::cursor::{Reader, Writer};
use crate::messages::{ctx as cctx, CreateContext, CreateRequest, FileId, LeaseContext};
use crate::status::{self, NtStatus};

/// How a durable handle was requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurableKind {
    /// SMB2_CREATE_DURABLE_HANDLE_REQUEST (DHnQ).
    V1,
    /// SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2 (DH2Q) with its CreateGuid.
    V2 {
        create_guid: [u8; 16],
        timeout_ms: u32,
        /// SMB2_DHANDLE_FLAG_PERSISTENT: asked for in a request; in a grant, the open is
        /// persistent (MS-SMB2 3.3.5.9.10: only on a continuously available share).
        persistent: bool,
    },
}

impl DurableKind {
    /// A persistent handle (DH2Q with SMB2_DHANDLE_FLAG_PERSISTENT).
    pub fn is_persistent(&self) -> bool {
        matches!(
            self,
            DurableKind::V2 {
                persistent: true,
                ..
            }
        )
    }
}

/// SMB2_DHANDLE_FLAG_PERSISTENT (MS-SMB2 2.2.13.2.11, 2.2.13.2.12, 2.2.14.2.12).
pub const DHANDLE_FLAG_PERSISTENT: u32 = 0x2;

/// DH2Q timeout granted for a requested one (MS-SMB2 3.3.5.9.10; Samba caps at 300 s and
/// defaults to 60 s like Windows Server 2012).
pub fn v2_timeout(requested: u32) -> u32 {
    if requested == 0 {
        60_000
    } else {
        requested.min(300_000)
    }
}

/// A durable handle reconnect request found in a CREATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    pub file_id: FileId,
    /// DH2C: CreateGuid.
    pub v2: Option<[u8; 16]>,
    /// DH2C with SMB2_DHANDLE_FLAG_PERSISTENT.
    pub persistent: bool,
}

/// Parse DHnC / DH2C, with MS-SMB2 3.3.5.9.7 / 3.3.5.9.12 context-combination rules.
pub fn reconnect_request(c: &CreateRequest) -> Result<Option<Reconnect>, NtStatus> {
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
    let fid = |data: &[u8]| -> Result<FileId, NtStatus> {
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
            persistent: false,
        }));
    }
    if let Some(x) = dh2c {
        if x.data.len() != 36 {
            return Err(status::INVALID_PARAMETER);
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&x.data[16..32]);
        let mut flags = [0u8; 4];
        flags.copy_from_slice(&x.data[32..36]);
        return Ok(Some(Reconnect {
            file_id: fid(&x.data)?,
            v2: Some(guid),
            persistent: u32::from_le_bytes(flags) & DHANDLE_FLAG_PERSISTENT != 0,
        }));
    }
    Ok(None)
}

/// The durable request of a CREATE (DHnQ / DH2Q), if any.
pub fn durable_request(c: &CreateRequest, dialect: u16) -> Result<Option<DurableKind>, NtStatus> {
    if let Some(x) = c.context(cctx::DH2Q) {
        if dialect < 0x0300 {
            return Ok(None);
        }
        if x.data.len() != 32 {
            return Err(status::INVALID_PARAMETER);
        }
        let mut r = Reader::new(&x.data);
        let timeout = r.u32().map_err(|_| status::INVALID_PARAMETER)?;
        let flags = r.u32().map_err(|_| status::INVALID_PARAMETER)?;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&x.data[16..32]);
        return Ok(Some(DurableKind::V2 {
            create_guid: guid,
            timeout_ms: v2_timeout(timeout),
            persistent: flags & DHANDLE_FLAG_PERSISTENT != 0,
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

/// The response context announcing a granted durable handle.
pub fn durable_response(kind: &DurableKind) -> CreateContext {
    match kind {
        DurableKind::V1 => CreateContext {
            name: cctx::DHNQ.to_vec(),
            data: vec![0; 8],
        },
        DurableKind::V2 {
            timeout_ms,
            persistent,
            ..
        } => {
            let mut data = timeout_ms.to_le_bytes().to_vec();
            let flags = if *persistent {
                DHANDLE_FLAG_PERSISTENT
            } else {
                0
            };
            data.extend_from_slice(&flags.to_le_bytes());
            CreateContext {
                name: cctx::DH2Q.to_vec(),
                data,
            }
        }
    }
}

/// The MxAc response: query status SUCCESS and the maximal access the caller may be granted.
pub fn maximal_access_response(maximal_access: u32) -> CreateContext {
    let mut w = Writer::new();
    w.u32(0).u32(maximal_access);
    CreateContext {
        name: cctx::MXAC.to_vec(),
        data: w.buf,
    }
}

/// The QFid response: the on-disk file id (the inode) and the volume id, then 16 reserved
/// bytes.
pub fn on_disk_id_response(file_id: u64, volume_id: u64) -> CreateContext {
    let mut w = Writer::new();
    w.u64(file_id).u64(volume_id).zeros(16);
    CreateContext {
        name: cctx::QFID.to_vec(),
        data: w.buf,
    }
}

/// The RqLs response carrying `lease`.
pub fn lease_response(lease: &LeaseContext) -> CreateContext {
    CreateContext {
        name: cctx::RQLS.to_vec(),
        data: lease.encode(),
    }
}

/// The lease request of a CREATE, if it carries a decodable RqLs context.
pub fn lease_request(c: &CreateRequest) -> Option<LeaseContext> {
    c.context(cctx::RQLS)
        .and_then(|x| LeaseContext::decode(&x.data).ok())
}

/// The AllocationSize of a CREATE's AlSi context (MS-SMB2 2.2.13.2.6), if it carries one
/// that decodes.
pub fn allocation_size_request(c: &CreateRequest) -> Option<u64> {
    c.context(cctx::ALSI)
        .and_then(|x| Reader::new(&x.data).u64().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_size_context() {
        let with = |data: Vec<u8>| CreateRequest {
            contexts: vec![CreateContext {
                name: cctx::ALSI.to_vec(),
                data,
            }],
            ..Default::default()
        };
        assert_eq!(
            allocation_size_request(&with(4096u64.to_le_bytes().to_vec())),
            Some(4096)
        );
        assert_eq!(allocation_size_request(&with(vec![1, 2, 3])), None);
        assert_eq!(allocation_size_request(&CreateRequest::default()), None);
    }

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
                persistent: false,
                ..
            }))
        ));
        let mut persistent = req(&[(cctx::DH2Q, 32)]);
        persistent.contexts[0].data[4] = DHANDLE_FLAG_PERSISTENT as u8;
        assert!(matches!(
            durable_request(&persistent, 0x0300),
            Ok(Some(DurableKind::V2 {
                persistent: true,
                ..
            }))
        ));
        let mut dh2c = req(&[(cctx::DH2C, 36)]);
        dh2c.contexts[0].data[32] = DHANDLE_FLAG_PERSISTENT as u8;
        assert!(matches!(
            reconnect_request(&dh2c),
            Ok(Some(Reconnect {
                persistent: true,
                ..
            }))
        ));
    }

    #[test]
    fn response_contexts() {
        assert_eq!(durable_response(&DurableKind::V1).data, [0; 8]);
        let v2 = durable_response(&DurableKind::V2 {
            create_guid: [1; 16],
            timeout_ms: 0x0102_0304,
            persistent: false,
        });
        assert_eq!(v2.name, cctx::DH2Q);
        assert_eq!(v2.data, [4, 3, 2, 1, 0, 0, 0, 0]);
        let ca = durable_response(&DurableKind::V2 {
            create_guid: [1; 16],
            timeout_ms: 60_000,
            persistent: true,
        });
        assert_eq!(ca.data[4..], [2, 0, 0, 0]);
        let mxac = maximal_access_response(0x001f_01ff);
        assert_eq!(mxac.data, [0, 0, 0, 0, 0xff, 0x01, 0x1f, 0]);
        let qfid = on_disk_id_response(5, 6);
        assert_eq!(qfid.data.len(), 32);
        assert_eq!(qfid.data[0], 5);
        assert_eq!(qfid.data[8], 6);
    }

    #[test]
    fn lease_request_needs_a_decodable_context() {
        assert_eq!(lease_request(&req(&[])), None);
        assert_eq!(lease_request(&req(&[(cctx::RQLS, 3)])), None);
        let lease = LeaseContext {
            key: 9,
            state: 7,
            ..Default::default()
        };
        let mut c = req(&[]);
        c.contexts.push(lease_response(&lease));
        assert_eq!(lease_request(&c).map(|l| (l.key, l.state)), Some((9, 7)));
    }
}
