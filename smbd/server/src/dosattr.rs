//! DOS attributes and the times Linux cannot store (creation time, an explicitly set change
//! time), kept in the `user.smbd.dos` extended attribute of each file.
//!
//! Layout (little endian): version u32 (1), attributes u32, creation FILETIME u64,
//! change FILETIME u64, mtime guard u64. The stored change time is only reported while the
//! file's mtime still equals the guard (a later write makes the real time authoritative).

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const NAME: &std::ffi::CStr = c"user.smbd.dos";
const LEN: usize = 32;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DosInfo {
    pub attributes: u32,
    pub creation: u64,
    pub change: u64,
    pub mtime_guard: u64,
}

fn cpath(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

pub fn load(path: &Path) -> Option<DosInfo> {
    let c = cpath(path)?;
    let mut buf = [0u8; LEN];
    if crate::sys::lgetxattr(&c, NAME, &mut buf).ok() != Some(LEN) {
        return None;
    }
    decode(&buf)
}

/// [`load`] for the object an open holds (`fd`, possibly O_PATH), not for a name.
pub fn load_fd(fd: BorrowedFd<'_>) -> Option<DosInfo> {
    let via = crate::beneath::fd_path(fd).ok()?;
    let mut buf = [0u8; LEN];
    if crate::sys::getxattr(&via, NAME, &mut buf).ok() != Some(LEN) {
        return None;
    }
    decode(&buf)
}

fn decode(buf: &[u8; LEN]) -> Option<DosInfo> {
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(a)
    };
    if u32_at(0) != 1 {
        return None;
    }
    Some(DosInfo {
        attributes: u32_at(4),
        creation: u64_at(8),
        change: u64_at(16),
        mtime_guard: u64_at(24),
    })
}

pub fn store(path: &Path, d: &DosInfo) -> std::io::Result<()> {
    set_xattr_privileged(path, NAME, &encode(d))
}

/// [`store`] for the object an open holds (`fd`, possibly O_PATH), not for a name.
pub fn store_fd(fd: BorrowedFd<'_>, d: &DosInfo) -> std::io::Result<()> {
    set_xattr_privileged_fd(fd, NAME, &encode(d))
}

fn encode(d: &DosInfo) -> Vec<u8> {
    let mut buf = Vec::with_capacity(LEN);
    buf.extend_from_slice(&1u32.to_le_bytes());
    buf.extend_from_slice(&d.attributes.to_le_bytes());
    buf.extend_from_slice(&d.creation.to_le_bytes());
    buf.extend_from_slice(&d.change.to_le_bytes());
    buf.extend_from_slice(&d.mtime_guard.to_le_bytes());
    buf
}

/// Write an xattr with the process's own credentials (crate::identity::as_root): for the
/// server's metadata xattrs (DOS attributes, security descriptors), written after the handle's
/// access check allowed the change; the owner of a read-only file may still change them.
///
/// As root a name is not enough: a client or local user who can write in the share could swap
/// a directory on the way for a symlink to /etc between the check and the write, and root
/// would then write there. So the object is pinned first, as the current (client's) identity,
/// with no symlink anywhere on the path (share roots are canonical paths: a symlink on the way
/// can only come from inside the share; objects reached through one get no stored metadata),
/// and the privileged write goes through that descriptor (/proc/self/fd/N).
pub(crate) fn set_xattr_privileged(
    path: &Path,
    name: &std::ffi::CStr,
    value: &[u8],
) -> std::io::Result<()> {
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let rel = path.strip_prefix("/").map_err(|_| invalid())?;
    let rel = cpath(rel).ok_or_else(invalid)?;
    let root = crate::sys::open(c"/", libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
    let pinned = crate::sys::openat2(
        &root,
        &rel,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )?;
    set_xattr_privileged_fd(pinned.as_fd(), name, value)
}

/// [`set_xattr_privileged`] for an object already pinned by `fd` (an open's descriptor).
pub(crate) fn set_xattr_privileged_fd(
    fd: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    value: &[u8],
) -> std::io::Result<()> {
    let via = crate::beneath::fd_path(fd)?;
    crate::identity::as_root(|| {
        // errno is read (inside setxattr) before the identity switches back.
        crate::sys::setxattr(&via, name, value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let info = DosInfo {
            attributes: 0x22,
            creation: 1234,
            change: 5678,
            mtime_guard: 9,
        };
        if store(&p, &info).is_err() {
            eprintln!("filesystem without user xattrs; skipping");
            return;
        }
        assert_eq!(load(&p), Some(info));
    }

    /// The privileged write never follows a symlink on the way: a directory swapped for a
    /// link to a place outside the share must not get the server's xattr written as root.
    #[test]
    fn privileged_write_does_not_follow_a_swapped_directory() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"x").unwrap();
        let share = d.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(share.join("own"), b"x").unwrap();
        if store(&share.join("own"), &DosInfo::default()).is_err() {
            eprintln!("filesystem without user xattrs; skipping");
            return;
        }
        std::os::unix::fs::symlink(&outside, share.join("dir")).unwrap();
        assert!(store(&share.join("dir/f"), &DosInfo::default()).is_err());
        assert_eq!(
            load(&outside.join("f")),
            None,
            "written through the symlink"
        );
    }
}
