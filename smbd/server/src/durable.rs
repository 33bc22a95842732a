//! Durable handles (MS-SMB2 3.3.5.9.6-3.3.5.9.12): opens that outlive their connection and
//! can be reclaimed by a DHnC / DH2C reconnect, on this node or, in a cluster, on any node.
//!
//! The lock service owns the durable state. When a durable handle is granted the open is
//! registered there (`SetDurable`) under its persistent file id, with a blob describing how to
//! reopen it ([`DurableBlob`]: share, path, access, lease, client, user). When the connection
//! (or, in a cluster, the whole node) goes away the lock service keeps the open *disconnected*
//! (`Disconnect`): its share mode, byte-range locks and caching stay in force for its timeout,
//! and a conflicting CREATE purges it instead of breaking it (the client cannot acknowledge).
//! A reconnect looks the open up (`DurableLookup`), checks the blob against the request
//! (MS-SMB2 3.3.5.9.7 / 3.3.5.9.12) and re-attaches it (`Reclaim`).
//!
//! Besides, this node keeps the disconnected opens it had with their file descriptors and
//! positions ([`crate::open::ParkedOpens`], in [`crate::shared::Shared`]), so a reconnect to
//! the same node resumes them as they were; another node reopens the file by the stored path.
//! The connection's side (register, park, reconnect) is in `conn::ops::durable`.

use crate::byte_reader::ByteReader;
use smb_proto::NtStatus;
use std::time::Duration;

use smb_proto::{status, LeaseContext};

// The wire side of durable handles (contexts and their rules) lives in smb-proto.
pub use smb_proto::create_ctx::{DurableKind, Reconnect};

/// What a durable open needs to be re-established on another connection.
#[derive(Debug, Clone)]
pub struct DurableState {
    pub kind: DurableKind,
    pub share_access: u32,
    /// The lease context of the original request (for v2 parent key / epoch).
    pub lease: Option<LeaseContext>,
}

impl DurableState {
    /// A persistent open (continuously available share, MS-SMB2 3.3.5.9.10).
    pub(crate) fn is_persistent(&self) -> bool {
        self.kind.is_persistent()
    }

    pub(crate) fn timeout(&self) -> Duration {
        Self::timeout_of(&self.kind)
    }

    /// How long a durable handle of `kind` outlives its connection.
    pub(crate) fn timeout_of(kind: &DurableKind) -> Duration {
        match *kind {
            // Samba's default for v1 (MS-SMB2 leaves it to the implementation).
            DurableKind::V1 => Duration::from_secs(16 * 60),
            DurableKind::V2 { timeout_ms, .. } => Duration::from_millis(timeout_ms as u64),
        }
    }
}

/// What the lock service stores with a durable open: everything a node needs to check a
/// reconnect (MS-SMB2 3.3.5.9.7, 3.3.5.9.12) and to reopen the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableBlob {
    pub kind: DurableKind,
    pub share: String,
    /// Path relative to the share root, `/`-separated.
    pub rel: String,
    /// Named stream, empty for the file's data.
    pub stream: String,
    pub is_dir: bool,
    pub access: u32,
    pub share_access: u32,
    pub stable_id: u128,
    pub client_guid: [u8; 16],
    pub user: String,
    /// The lease of the open (key, parent key, v2).
    pub lease: Option<LeaseContext>,
}

const BLOB_VERSION: u8 = 1;

fn put_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

impl DurableBlob {
    /// `None` if a field does not fit the encoding (a path longer than 64 KiB).
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = vec![BLOB_VERSION];
        match &self.kind {
            DurableKind::V1 => out.push(1),
            DurableKind::V2 {
                create_guid,
                timeout_ms,
                persistent,
            } => {
                out.push(if *persistent { 3 } else { 2 });
                out.extend_from_slice(create_guid);
                out.extend_from_slice(&timeout_ms.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.access.to_le_bytes());
        out.extend_from_slice(&self.share_access.to_le_bytes());
        out.push(u8::from(self.is_dir));
        out.extend_from_slice(&self.stable_id.to_le_bytes());
        out.extend_from_slice(&self.client_guid);
        match &self.lease {
            None => out.push(0),
            Some(l) => {
                out.push(1 | if l.epoch.is_some() { 2 } else { 0 });
                out.extend_from_slice(&l.key.to_le_bytes());
                out.extend_from_slice(&l.parent_key.unwrap_or(0).to_le_bytes());
                out.push(u8::from(l.parent_key.is_some()));
            }
        }
        put_str(&mut out, &self.share)?;
        put_str(&mut out, &self.rel)?;
        put_str(&mut out, &self.stream)?;
        put_str(&mut out, &self.user)?;
        Some(out)
    }

    pub fn decode(b: &[u8]) -> Option<DurableBlob> {
        let mut r = ByteReader::new(b);
        if r.u8()? != BLOB_VERSION {
            return None;
        }
        let kind = match r.u8()? {
            1 => DurableKind::V1,
            tag @ (2 | 3) => DurableKind::V2 {
                create_guid: r.array::<16>()?,
                timeout_ms: r.u32()?,
                persistent: tag == 3,
            },
            _ => return None,
        };
        let access = r.u32()?;
        let share_access = r.u32()?;
        let is_dir = r.u8()? != 0;
        let stable_id = r.u128()?;
        let client_guid = r.array::<16>()?;
        let lease = match r.u8()? {
            0 => None,
            flags => {
                let key = r.u128()?;
                let parent = r.u128()?;
                let has_parent = r.u8()? != 0;
                Some(LeaseContext {
                    key,
                    parent_key: has_parent.then_some(parent),
                    epoch: (flags & 2 != 0).then_some(0),
                    ..LeaseContext::default()
                })
            }
        };
        let blob = DurableBlob {
            kind,
            share: r.str_u16_len()?,
            rel: r.str_u16_len()?,
            stream: r.str_u16_len()?,
            user: r.str_u16_len()?,
            is_dir,
            access,
            share_access,
            stable_id,
            client_guid,
            lease,
        };
        r.is_empty().then_some(blob)
    }

    /// MS-SMB2 3.3.5.9.7 / 3.3.5.9.12 checks of a reconnect against the stored open, with the
    /// statuses Samba answers (smbtorture durable-open / durable-v2-open reopen tests).
    pub(crate) fn check(&self, r: &ReconnectCheck<'_>) -> Result<(), NtStatus> {
        if !reconnect_guid_matches(&self.kind, r.create_guid) {
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        // MS-SMB2 3.3.5.9.12: a persistent open is reclaimed only by a DH2C that says so.
        if self.kind.is_persistent() && !r.persistent {
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        if !self.share.eq_ignore_ascii_case(r.share) {
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        match (&self.lease, r.lease_key) {
            (Some(l), Some(k)) if l.key == k => {
                // A lease belongs to a file name: reconnecting it under another name is a
                // client error (MS-SMB2 3.3.5.9.7).
                if !self.rel.eq_ignore_ascii_case(&client_path(r.name)) {
                    return Err(status::INVALID_PARAMETER);
                }
                // ... and to its ClientGuid (3.3.5.9.7 looks it up in the LeaseTable of the
                // connection's ClientGuid). Oplock opens are not bound to it
                // (smbtorture durable-open.reopen1a vs reopen1a-lease).
                if self.client_guid != r.client_guid {
                    return Err(status::OBJECT_NAME_NOT_FOUND);
                }
            }
            (Some(_), _) | (None, Some(_)) => return Err(status::OBJECT_NAME_NOT_FOUND),
            (None, None) => {}
        }
        // Samba answers a different owner like an unknown handle.
        if self.user != r.user {
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        Ok(())
    }
}

/// What a reconnect request brings to be checked against a [`DurableBlob`].
pub(crate) struct ReconnectCheck<'a> {
    pub create_guid: Option<[u8; 16]>,
    /// DH2C carried SMB2_DHANDLE_FLAG_PERSISTENT.
    pub persistent: bool,
    pub share: &'a str,
    pub name: &'a str,
    pub lease_key: Option<u128>,
    pub client_guid: [u8; 16],
    pub user: &'a str,
}

/// A CREATE name as the `/`-separated relative path durable blobs store.
fn client_path(name: &str) -> String {
    name.trim_start_matches('\\').replace('\\', "/")
}

/// Whether the CreateGuid of a reconnect (`None` for DHnC) names a durable open of `kind`.
///
/// DHnC may reclaim a v2 handle (Samba skips the CreateGuid check for v1 reconnects:
/// smbtorture durable-v2-open.reopen2b); DH2C must carry the open's CreateGuid, which is
/// all zeros for a v1 open (durable-open.reopen2-lease reconnects a DHnQ open with DH2C).
fn reconnect_guid_matches(kind: &DurableKind, v2: Option<[u8; 16]>) -> bool {
    match (kind, v2) {
        (_, None) => true,
        (DurableKind::V1, Some(g)) => g == [0; 16],
        (DurableKind::V2 { create_guid, .. }, Some(g)) => *create_guid == g,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob() -> DurableBlob {
        DurableBlob {
            kind: DurableKind::V2 {
                create_guid: [3; 16],
                timeout_ms: 60_000,
                persistent: true,
            },
            share: "data".into(),
            rel: "dir/File.txt".into(),
            stream: String::new(),
            is_dir: false,
            access: 0x12_019f,
            share_access: 3,
            stable_id: 0x1234_5678_9abc_def0_1122_3344_5566_7788,
            client_guid: [9; 16],
            user: "alice".into(),
            lease: Some(LeaseContext {
                key: 77,
                parent_key: Some(5),
                epoch: Some(0),
                ..LeaseContext::default()
            }),
        }
    }

    fn check<'a>(
        create_guid: Option<[u8; 16]>,
        name: &'a str,
        key: Option<u128>,
    ) -> ReconnectCheck<'a> {
        ReconnectCheck {
            create_guid,
            persistent: true,
            share: "DATA",
            name,
            lease_key: key,
            client_guid: [9; 16],
            user: "alice",
        }
    }

    #[test]
    fn blob_round_trips_and_rejects_garbage() {
        let b = blob();
        let enc = b.encode().unwrap();
        assert_eq!(DurableBlob::decode(&enc), Some(b));
        let v1 = DurableBlob {
            kind: DurableKind::V1,
            lease: None,
            ..blob()
        };
        assert_eq!(DurableBlob::decode(&v1.encode().unwrap()), Some(v1));
        assert_eq!(DurableBlob::decode(&enc[..enc.len() - 1]), None);
        let mut longer = enc.clone();
        longer.push(0);
        assert_eq!(DurableBlob::decode(&longer), None);
        assert_eq!(DurableBlob::decode(&[2]), None);
    }

    #[test]
    fn persistent_open_needs_a_persistent_reconnect() {
        let b = blob();
        let g = Some([3; 16]);
        let mut c = check(g, "dir/File.txt", Some(77));
        assert_eq!(b.check(&c), Ok(()));
        c.persistent = false;
        assert_eq!(b.check(&c), Err(status::OBJECT_NAME_NOT_FOUND));
        let round = DurableBlob::decode(&b.encode().unwrap()).unwrap();
        assert_eq!(round, b);
    }

    #[test]
    fn reconnect_checks_follow_samba() {
        let b = blob();
        let g = Some([3; 16]);
        assert_eq!(b.check(&check(g, "dir\\file.txt", Some(77))), Ok(()));
        // A lease open needs its lease key (MS-SMB2 3.3.5.9.12) ...
        assert_eq!(
            b.check(&check(g, "dir\\file.txt", None)),
            Err(status::OBJECT_NAME_NOT_FOUND)
        );
        assert_eq!(
            b.check(&check(g, "dir\\file.txt", Some(78))),
            Err(status::OBJECT_NAME_NOT_FOUND)
        );
        // ... under its own name (INVALID_PARAMETER, durable-open.reopen2-lease) ...
        assert_eq!(
            b.check(&check(g, "other.txt", Some(77))),
            Err(status::INVALID_PARAMETER)
        );
        // ... from its own client (durable-open.reopen1a-lease).
        let mut other_client = check(g, "dir\\file.txt", Some(77));
        other_client.client_guid = [1; 16];
        assert_eq!(b.check(&other_client), Err(status::OBJECT_NAME_NOT_FOUND));
        // DHnC may reclaim a v2 handle; DH2C needs the CreateGuid.
        assert_eq!(b.check(&check(None, "dir/file.txt", Some(77))), Ok(()));
        assert_eq!(
            b.check(&check(Some([0; 16]), "dir/file.txt", Some(77))),
            Err(status::OBJECT_NAME_NOT_FOUND)
        );
        let mut bob = check(g, "dir/file.txt", Some(77));
        bob.user = "bob";
        assert_eq!(b.check(&bob), Err(status::OBJECT_NAME_NOT_FOUND));
        let mut other_share = check(g, "dir/file.txt", Some(77));
        other_share.share = "tmp";
        assert_eq!(b.check(&other_share), Err(status::OBJECT_NAME_NOT_FOUND));
        // An oplock open is not bound to its ClientGuid (durable-open.reopen1a).
        let oplock = DurableBlob {
            lease: None,
            ..blob()
        };
        let mut c = check(g, "whatever", None);
        c.client_guid = [1; 16];
        assert_eq!(oplock.check(&c), Ok(()));
    }

    #[test]
    fn reconnect_create_guid_rules() {
        let v2 = DurableKind::V2 {
            create_guid: [7; 16],
            timeout_ms: 1,
            persistent: false,
        };
        assert!(reconnect_guid_matches(&DurableKind::V1, None));
        assert!(reconnect_guid_matches(&v2, None));
        assert!(reconnect_guid_matches(&DurableKind::V1, Some([0; 16])));
        assert!(!reconnect_guid_matches(&DurableKind::V1, Some([7; 16])));
        assert!(reconnect_guid_matches(&v2, Some([7; 16])));
        assert!(!reconnect_guid_matches(&v2, Some([0; 16])));
    }
}
