//! Stored security descriptors (MS-DTYP 2.4.6, self-relative form).
//!
//! A descriptor set by SET_INFO SECURITY or the SecD create context is kept in the
//! `user.smbd.sd` xattr as owner, group and DACL parts; parts never set fall back to the
//! built-in default (owner and group Everyone, DACL "Everyone: full control"). The stored
//! DACL is returned as set; it is not evaluated for access checks (see STATUS.md).

use smb_proto::NtStatus;
use std::ffi::CString;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use smb_proto::status;

const NAME: &std::ffi::CStr = c"user.smbd.sd";
/// Largest descriptor accepted (what fits one xattr comfortably; Samba's limit is similar).
const MAX_LEN: usize = 64 * 1024;

pub const OWNER_SECURITY_INFORMATION: u32 = 1;
pub const GROUP_SECURITY_INFORMATION: u32 = 2;
pub const DACL_SECURITY_INFORMATION: u32 = 4;

const SE_DACL_PRESENT: u16 = 0x0004;
const SE_SELF_RELATIVE: u16 = 0x8000;
const EVERYONE: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];

/// The parts of a descriptor this server keeps. `dacl: Some(None)` is a NULL DACL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts {
    pub owner: Option<Vec<u8>>,
    pub group: Option<Vec<u8>>,
    pub dacl: Option<Option<Vec<u8>>>,
}

fn sid_at(b: &[u8], off: usize) -> Result<Vec<u8>, NtStatus> {
    let n = *b.get(off + 1).ok_or(status::INVALID_PARAMETER)? as usize;
    if *b.get(off).ok_or(status::INVALID_PARAMETER)? != 1 || n > 15 {
        return Err(status::INVALID_SID);
    }
    b.get(off..off + 8 + 4 * n)
        .map(<[u8]>::to_vec)
        .ok_or(status::INVALID_PARAMETER)
}

fn acl_at(b: &[u8], off: usize) -> Result<Vec<u8>, NtStatus> {
    let hdr = b.get(off..off + 8).ok_or(status::INVALID_PARAMETER)?;
    let len = u16::from_le_bytes([hdr[2], hdr[3]]) as usize;
    if !matches!(hdr[0], 2 | 4) || len < 8 {
        return Err(status::INVALID_ACL);
    }
    b.get(off..off + len)
        .map(<[u8]>::to_vec)
        .ok_or(status::INVALID_PARAMETER)
}

/// Parse a self-relative descriptor, keeping the parts selected by `which`
/// (OWNER/GROUP/DACL_SECURITY_INFORMATION). Errors are NTSTATUS values.
pub fn parse(b: &[u8], which: u32) -> Result<Parts, NtStatus> {
    if b.len() < 20 || b[0] != 1 {
        return Err(status::INVALID_PARAMETER);
    }
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let control = u16::from_le_bytes([b[2], b[3]]);
    let (oo, og, od) = (u32_at(4), u32_at(8), u32_at(16));
    let mut p = Parts::default();
    if which & OWNER_SECURITY_INFORMATION != 0 && oo != 0 {
        p.owner = Some(sid_at(b, oo)?);
    }
    if which & GROUP_SECURITY_INFORMATION != 0 && og != 0 {
        p.group = Some(sid_at(b, og)?);
    }
    if which & DACL_SECURITY_INFORMATION != 0 && control & SE_DACL_PRESENT != 0 {
        p.dacl = Some(if od == 0 { None } else { Some(acl_at(b, od)?) });
    }
    Ok(p)
}

impl Parts {
    /// Overlay the parts present in `other`.
    pub fn merge(&mut self, other: Parts) {
        if other.owner.is_some() {
            self.owner = other.owner;
        }
        if other.group.is_some() {
            self.group = other.group;
        }
        if other.dacl.is_some() {
            self.dacl = other.dacl;
        }
    }

    /// Encode the parts selected by `which` as a self-relative descriptor, filling
    /// unset parts with the defaults.
    pub fn encode(&self, which: u32) -> Vec<u8> {
        let mut out = vec![0u8; 20];
        out[0] = 1;
        let mut control = SE_SELF_RELATIVE;
        let put_u32 = |out: &mut Vec<u8>, at: usize, v: usize| {
            out[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
        };
        if which & OWNER_SECURITY_INFORMATION != 0 {
            let o = out.len();
            put_u32(&mut out, 4, o);
            out.extend_from_slice(self.owner.as_deref().unwrap_or(&EVERYONE));
        }
        if which & GROUP_SECURITY_INFORMATION != 0 {
            let o = out.len();
            put_u32(&mut out, 8, o);
            out.extend_from_slice(self.group.as_deref().unwrap_or(&EVERYONE));
        }
        if which & DACL_SECURITY_INFORMATION != 0 {
            control |= SE_DACL_PRESENT;
            match &self.dacl {
                Some(None) => {}
                Some(Some(acl)) => {
                    let o = out.len();
                    put_u32(&mut out, 16, o);
                    out.extend_from_slice(acl);
                }
                None => {
                    let o = out.len();
                    put_u32(&mut out, 16, o);
                    out.extend_from_slice(&default_dacl());
                }
            }
        }
        out[2..4].copy_from_slice(&control.to_le_bytes());
        out
    }
}

/// ACL with one ACCESS_ALLOWED ACE: Everyone, full control.
fn default_dacl() -> Vec<u8> {
    let ace_size = 8 + EVERYONE.len() as u16;
    let mut a = Vec::new();
    a.extend_from_slice(&[2, 0]);
    a.extend_from_slice(&(8 + ace_size).to_le_bytes());
    a.extend_from_slice(&1u16.to_le_bytes());
    a.extend_from_slice(&0u16.to_le_bytes());
    a.extend_from_slice(&[0, 0]);
    a.extend_from_slice(&ace_size.to_le_bytes());
    a.extend_from_slice(&0x001F_01FFu32.to_le_bytes());
    a.extend_from_slice(&EVERYONE);
    a
}

/// The stored parts of `path` (all unset when nothing was stored).
pub fn load(path: &Path) -> Parts {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Parts::default();
    };
    load_with(|buf| crate::sys::lgetxattr(&c, NAME, buf))
}

/// [`load`] for the object an open holds (`fd`, possibly O_PATH), not for a name.
pub fn load_fd(fd: BorrowedFd<'_>) -> Parts {
    let Ok(via) = crate::beneath::fd_path(fd) else {
        return Parts::default();
    };
    load_with(|buf| crate::sys::getxattr(&via, NAME, buf))
}

/// Read and parse the stored descriptor with `get` (an xattr read: length with an empty
/// buffer, else the bytes).
fn load_with(get: impl Fn(&mut [u8]) -> std::io::Result<usize>) -> Parts {
    // Size probe first: most files have no stored descriptor, and this runs on every open.
    let len = get(&mut []).unwrap_or(0);
    if len == 0 || len > MAX_LEN {
        return Parts::default();
    }
    let mut buf = vec![0u8; len];
    // ERANGE if the value grew meanwhile.
    let n = get(&mut buf).unwrap_or(0);
    if n == 0 {
        return Parts::default();
    }
    buf.truncate(n);
    let all = OWNER_SECURITY_INFORMATION | GROUP_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION;
    // Stored descriptors always carry every part that was ever set; a part that was not
    // set is absent (offset 0) and, for the DACL, the DACL_PRESENT bit is clear.
    parse(&buf, all).unwrap_or_default()
}

/// Store `p` for `path`.
pub fn store(path: &Path, p: &Parts) -> std::io::Result<()> {
    crate::dosattr::set_xattr_privileged(path, NAME, &encode(p)?)
}

/// [`store`] for the object an open holds (`fd`, possibly O_PATH), not for a name.
pub fn store_fd(fd: BorrowedFd<'_>, p: &Parts) -> std::io::Result<()> {
    crate::dosattr::set_xattr_privileged_fd(fd, NAME, &encode(p)?)
}

fn encode(p: &Parts) -> std::io::Result<Vec<u8>> {
    // Only the parts that were set are written, so defaults stay defaults.
    let mut buf = vec![0u8; 20];
    buf[0] = 1;
    let mut control = SE_SELF_RELATIVE;
    if let Some(o) = &p.owner {
        let at = buf.len() as u32;
        buf[4..8].copy_from_slice(&at.to_le_bytes());
        buf.extend_from_slice(o);
    }
    if let Some(g) = &p.group {
        let at = buf.len() as u32;
        buf[8..12].copy_from_slice(&at.to_le_bytes());
        buf.extend_from_slice(g);
    }
    if let Some(d) = &p.dacl {
        control |= SE_DACL_PRESENT;
        if let Some(acl) = d {
            let at = buf.len() as u32;
            buf[16..20].copy_from_slice(&at.to_le_bytes());
            buf.extend_from_slice(acl);
        }
    }
    buf[2..4].copy_from_slice(&control.to_le_bytes());
    if buf.len() > MAX_LEN {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    Ok(buf)
}

const EVERYONE_SID: &[u8] = &EVERYONE;
/// S-1-5-11, Authenticated Users.
const AUTHENTICATED_USERS: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 5, 11, 0, 0, 0];
const ACE_OBJECT_INHERIT: u8 = 0x01;
const ACE_CONTAINER_INHERIT: u8 = 0x02;
const ACE_NO_PROPAGATE: u8 = 0x04;
const ACE_INHERIT_ONLY: u8 = 0x08;
const ACE_INHERITED: u8 = 0x10;
const READ_CONTROL: u32 = 0x0002_0000;
const WRITE_DAC: u32 = 0x0004_0000;

/// One ACE of an ACL (MS-DTYP 2.4.4).
struct Ace<'a> {
    ty: u8,
    flags: u8,
    mask: u32,
    sid: &'a [u8],
    raw: &'a [u8],
}

fn aces(acl: &[u8]) -> Vec<Ace<'_>> {
    let mut out = Vec::new();
    let count = acl
        .get(4..6)
        .map_or(0, |c| u16::from_le_bytes([c[0], c[1]])) as usize;
    let mut off = 8;
    for _ in 0..count {
        let Some(h) = acl.get(off..off + 8) else {
            break;
        };
        let size = u16::from_le_bytes([h[2], h[3]]) as usize;
        let Some(raw) = acl.get(off..off + size).filter(|_| size >= 8) else {
            break;
        };
        let mask = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        out.push(Ace {
            ty: h[0],
            flags: h[1],
            mask,
            sid: &raw[8..],
            raw,
        });
        off += size;
    }
    out
}

/// A SID of Samba's Unix mapping: S-1-22-1-uid for users, S-1-22-2-gid for groups.
fn unix_sid(kind: u32, id: u32) -> Vec<u8> {
    let mut v = vec![1, 2, 0, 0, 0, 0, 0, 22];
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&id.to_le_bytes());
    v
}

/// S-1-22-1-uid: the SID a Unix user appears as (Samba's mapping of unmapped Unix users).
pub fn unix_user_sid(uid: u32) -> Vec<u8> {
    unix_sid(1, uid)
}

/// S-1-22-2-gid: the SID a Unix group appears as.
pub fn unix_group_sid(gid: u32) -> Vec<u8> {
    unix_sid(2, gid)
}

/// The caller's security token (MS-DTYP 2.5.2): who an access check is made for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Token {
    /// An anonymous (null) session: holds Everyone only, never Authenticated Users
    /// (MS-DTYP 2.4.2.4: S-1-5-11 is for authenticated logons; Windows leaves the anonymous
    /// token out of Everyone too unless EveryoneIncludesAnonymous, Samba keeps it in).
    pub anonymous: bool,
    /// The user's SID (S-1-22-1-uid), when known.
    pub user: Option<Vec<u8>>,
    /// Group SIDs (S-1-22-2-gid).
    pub groups: Vec<Vec<u8>>,
}

impl Token {
    /// The token of a Unix identity.
    pub fn of_unix(uid: u32, gids: impl IntoIterator<Item = u32>, anonymous: bool) -> Token {
        Token {
            anonymous,
            user: Some(unix_user_sid(uid)),
            groups: gids.into_iter().map(unix_group_sid).collect(),
        }
    }

    /// Whether the token holds `sid` (CREATOR OWNER never matches on an object itself).
    fn holds(&self, sid: &[u8]) -> bool {
        sid == EVERYONE_SID
            || (sid == AUTHENTICATED_USERS && !self.anonymous)
            || self.user.as_deref() == Some(sid)
            || self.groups.iter().any(|g| g == sid)
    }
}

impl Parts {
    /// Access the DACL grants `token` (MS-DTYP 2.5.3.2, simplified: ACCESS_ALLOWED and
    /// ACCESS_DENIED ACEs in order; the owner always gets READ_CONTROL and WRITE_DAC). The
    /// owner is the stored owner SID; without one (or with the default owner Everyone) every
    /// authenticated caller counts as owner, the kernel's own checks on the file then decide.
    /// `None` when there is no stored DACL or a NULL DACL: then nothing is restricted.
    pub fn granted(&self, token: &Token) -> Option<u32> {
        let acl = self.dacl.as_ref()?.as_ref()?;
        let is_owner = match &self.owner {
            Some(o) if o.as_slice() != EVERYONE_SID => token.holds(o),
            _ => !token.anonymous,
        };
        let mut granted = if is_owner {
            READ_CONTROL | WRITE_DAC
        } else {
            0
        };
        let mut denied = 0u32;
        for a in aces(acl) {
            if a.flags & ACE_INHERIT_ONLY != 0 || !token.holds(a.sid) {
                continue;
            }
            match a.ty {
                0 => granted |= a.mask & !denied,
                1 => denied |= a.mask & !granted,
                _ => {}
            }
        }
        Some(granted & !denied)
    }

    /// The descriptor a new child of a directory with these parts gets (MS-DTYP 2.5.3.4,
    /// simplified): the inheritable ACEs of the parent's DACL. `None` when the parent has
    /// no stored DACL (the child then keeps the default).
    pub fn inherit(&self, child_is_dir: bool) -> Option<Parts> {
        let acl = self.dacl.as_ref()?.as_ref()?;
        let mut body = Vec::new();
        let mut n = 0u16;
        for Ace { flags, raw, .. } in aces(acl) {
            let oi = flags & ACE_OBJECT_INHERIT != 0;
            let ci = flags & ACE_CONTAINER_INHERIT != 0;
            let new_flags = if child_is_dir {
                if ci && flags & ACE_NO_PROPAGATE == 0 {
                    (flags & !ACE_INHERIT_ONLY) | ACE_INHERITED
                } else if ci {
                    ACE_INHERITED
                } else if oi && flags & ACE_NO_PROPAGATE == 0 {
                    flags | ACE_INHERIT_ONLY | ACE_INHERITED
                } else {
                    continue;
                }
            } else if oi {
                ACE_INHERITED
            } else {
                continue;
            };
            let mut ace = raw.to_vec();
            ace[1] = new_flags;
            body.extend_from_slice(&ace);
            n += 1;
        }
        let mut out = vec![2u8, 0];
        out.extend_from_slice(&((8 + body.len()) as u16).to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&body);
        Some(Parts {
            owner: self.owner.clone(),
            group: self.group.clone(),
            dacl: Some(Some(out)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u32 =
        OWNER_SECURITY_INFORMATION | GROUP_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION;

    #[test]
    fn default_round_trips() {
        let d = Parts::default().encode(ALL);
        let p = parse(&d, ALL).unwrap();
        assert_eq!(p.owner.as_deref(), Some(&EVERYONE[..]));
        assert_eq!(p.dacl, Some(Some(default_dacl())));
    }

    #[test]
    fn merge_replaces_only_given_parts() {
        let mut acl = default_dacl();
        acl[8 + 4] = 0x89; // a different access mask
        let mut stored = Parts::default();
        stored.merge(Parts {
            dacl: Some(Some(acl.clone())),
            ..Default::default()
        });
        let out = stored.encode(ALL);
        let p = parse(&out, ALL).unwrap();
        assert_eq!(p.dacl, Some(Some(acl)));
        assert_eq!(p.owner.as_deref(), Some(&EVERYONE[..]));
        // Only the owner requested: no DACL in the answer.
        let o = parse(&stored.encode(OWNER_SECURITY_INFORMATION), ALL).unwrap();
        assert_eq!(o.dacl, None);
    }

    #[test]
    fn null_dacl_and_garbage() {
        let p = Parts {
            dacl: Some(None),
            ..Default::default()
        };
        let b = p.encode(DACL_SECURITY_INFORMATION);
        assert_eq!(parse(&b, ALL).unwrap().dacl, Some(None));
        assert_eq!(parse(&[1, 0, 0], ALL), Err(status::INVALID_PARAMETER));
    }

    fn acl(entries: &[(u8, u8, u32, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (ty, fl, mask, sid) in entries {
            body.extend_from_slice(&[*ty, *fl]);
            body.extend_from_slice(&((8 + sid.len()) as u16).to_le_bytes());
            body.extend_from_slice(&mask.to_le_bytes());
            body.extend_from_slice(sid);
        }
        let mut a = vec![2u8, 0];
        a.extend_from_slice(&((8 + body.len()) as u16).to_le_bytes());
        a.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        a.extend_from_slice(&[0, 0]);
        a.extend_from_slice(&body);
        a
    }

    fn user() -> Token {
        Token::of_unix(1000, [1000], false)
    }

    #[test]
    fn anonymous_is_not_an_authenticated_user() {
        let p = Parts {
            dacl: Some(Some(acl(&[(0, 0, 0x1_0003, &AUTHENTICATED_USERS)]))),
            ..Default::default()
        };
        assert_eq!(
            p.granted(&user()),
            Some(0x1_0003 | READ_CONTROL | WRITE_DAC)
        );
        let anon = Token::of_unix(65534, [65534], true);
        assert_eq!(p.granted(&anon), Some(0));
        // A user's own SID and group SIDs match; another user's do not, and only the stored
        // owner gets the owner rights.
        let mine = Parts {
            owner: Some(unix_user_sid(1000)),
            dacl: Some(Some(acl(&[
                (0, 0, 0x1, &unix_user_sid(1000)),
                (0, 0, 0x2, &unix_group_sid(1000)),
                (0, 0, 0x4, &unix_user_sid(1001)),
            ]))),
            ..Default::default()
        };
        assert_eq!(mine.granted(&user()), Some(0x3 | READ_CONTROL | WRITE_DAC));
        assert_eq!(mine.granted(&Token::of_unix(1001, [5], false)), Some(0x4));
    }

    #[test]
    fn access_evaluation() {
        let creator_owner: &[u8] = &[1, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0];
        assert_eq!(Parts::default().granted(&user()), None);
        let p = Parts {
            dacl: Some(Some(acl(&[(0, 0, 0x1_0003, EVERYONE_SID)]))),
            ..Default::default()
        };
        assert_eq!(
            p.granted(&user()),
            Some(0x1_0003 | READ_CONTROL | WRITE_DAC)
        );
        // Deny before allow wins; CREATOR OWNER and inherit-only ACEs do not apply.
        let p = Parts {
            dacl: Some(Some(acl(&[
                (1, 0, 0x2, EVERYONE_SID),
                (0, 0, 0x3, EVERYONE_SID),
                (0, 0, 0x4, creator_owner),
                (0, ACE_INHERIT_ONLY, 0x8, EVERYONE_SID),
            ]))),
            ..Default::default()
        };
        assert_eq!(p.granted(&user()), Some(0x1 | READ_CONTROL | WRITE_DAC));
    }

    #[test]
    fn inheritance() {
        let parent = Parts {
            dacl: Some(Some(acl(&[
                (0, ACE_OBJECT_INHERIT, 0x1, EVERYONE_SID),
                (0, ACE_CONTAINER_INHERIT, 0x2, EVERYONE_SID),
                (0, 0, 0x4, EVERYONE_SID),
            ]))),
            ..Default::default()
        };
        let file = parent.inherit(false).unwrap();
        assert_eq!(file.granted(&user()), Some(0x1 | READ_CONTROL | WRITE_DAC));
        let dir = parent.inherit(true).unwrap();
        assert_eq!(dir.granted(&user()), Some(0x2 | READ_CONTROL | WRITE_DAC));
        assert_eq!(Parts::default().inherit(false), None);
    }

    #[test]
    fn xattr_store_load() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"").unwrap();
        let p = Parts {
            dacl: Some(Some(default_dacl())),
            ..Default::default()
        };
        if store(&f, &p).is_err() {
            eprintln!("filesystem without user xattrs; skipping");
            return;
        }
        assert_eq!(load(&f), p);
    }
}
