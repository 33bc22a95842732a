//! DOS attributes and the times Linux cannot store (creation time, an explicitly set change
//! time), kept in the `user.smbd.dos` extended attribute of each file.
//!
//! Layout (little endian): version u32 (2), attributes u32, creation FILETIME u64,
//! change FILETIME u64, mtime guard u64, then (version 2) Windows' LastWriteTime u64, its
//! kernel-mtime guard u64 and the write hold's end u64 (FILETIMEs), and how many nodes hold
//! it u64. Version 1 (the first five fields) is still read. The stored change time is only reported while the reported
//! LastWriteTime still equals its guard (a later write makes the real time authoritative).
//!
//! LastWriteTime (crate::write_time): the kernel's mtime moves on every write, Windows' time
//! does not, so Windows' time is kept here and reported while either the file's kernel mtime
//! still equals `write_guard` (the mtime when the time was recorded: nothing outside smbd has
//! written or touched the file since) or a node holds the time (`hold_until`, a lease an
//! smbd renews while one of its opens has written and not closed: the kernel mtime is then
//! moved by those writes, whose time moves later). Otherwise the kernel mtime is the time: a
//! process outside smbd (or a node that died holding the time, once its lease ran out) changed
//! the file. Each node counts itself in `holders` once, while any of its opens holds the time;
//! the last to let go ends the hold. Two nodes updating the record at the same instant can
//! lose one's count (an xattr has no compare-and-swap): one too many keeps the hold until
//! its lease runs out, one too few ends it early (the kernel mtime, the writes' own time,
//! shows until the holder's next renewal or close).

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const NAME: &std::ffi::CStr = c"user.smbd.dos";
/// Version 1's length (no LastWriteTime).
const LEN_V1: usize = 32;
const LEN: usize = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DosInfo {
    pub attributes: u32,
    pub creation: u64,
    pub change: u64,
    pub mtime_guard: u64,
    /// Windows' LastWriteTime (0: none recorded, the kernel mtime is the time).
    pub write: u64,
    /// The kernel mtime (as a FILETIME) when `write` was recorded.
    pub write_guard: u64,
    /// Until when (FILETIME, wall clock) `write` stands whatever the kernel mtime: an open
    /// on some node has written and its time moves later (0: no hold).
    pub hold_until: u64,
    /// How many nodes hold it (each counts once), while `hold_until` has not passed.
    pub holders: u64,
}

impl DosInfo {
    /// The LastWriteTime to report for a file whose kernel mtime is `kernel` at `now`
    /// (FILETIMEs): the recorded Windows time while the mtime is still the one it was recorded
    /// with or a node holds it, the kernel's otherwise (the module comment says why).
    pub fn reported_write(&self, kernel: u64, now: u64) -> u64 {
        if self.write != 0 && (self.write_guard == kernel || now < self.hold_until) {
            self.write
        } else {
            kernel
        }
    }

    /// A node takes the hold at `now` until `until`: counted afresh when the hold had lapsed
    /// (its holders' counts are stale: nodes that died).
    pub fn take_hold(&mut self, now: u64, until: u64) {
        self.holders = if now < self.hold_until {
            self.holders.saturating_add(1)
        } else {
            1
        };
        self.hold_until = self.hold_until.max(until);
    }

    /// A holding node extends the hold to `until`.
    pub fn renew_hold(&mut self, until: u64) {
        self.holders = self.holders.max(1);
        self.hold_until = self.hold_until.max(until);
    }

    /// A node lets its hold go; the hold ends with the last holder.
    pub fn release_hold(&mut self) {
        self.holders = self.holders.saturating_sub(1);
        if self.holders == 0 {
            self.hold_until = 0;
        }
    }
}

fn cpath(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

pub fn load(path: &Path) -> Option<DosInfo> {
    let c = cpath(path)?;
    let mut buf = [0u8; LEN];
    let n = crate::sys::lgetxattr(&c, NAME, &mut buf).ok()?;
    decode(&buf, n)
}

/// [`load`] for the object an open holds (`fd`, possibly O_PATH), not for a name.
pub fn load_fd(fd: BorrowedFd<'_>) -> Option<DosInfo> {
    let mut buf = [0u8; LEN];
    // The descriptor itself when it is not O_PATH (no /proc path to resolve: this is read
    // at every first write and close of an open, crate::write_time), else through
    // /proc/self/fd/N.
    let n = match crate::sys::fgetxattr(fd, NAME, &mut buf) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
            let via = crate::beneath::fd_path(fd).ok()?;
            crate::sys::getxattr(&via, NAME, &mut buf).ok()?
        }
        Err(_) => return None,
    };
    decode(&buf, n)
}

/// The xattr's value as read (at most 64 bytes reach [`decode`]: a longer one fails the read
/// with ERANGE). A local user who can write the share's files can write this xattr too, so
/// anything must decode or be refused (fuzz target `dos_xattr`).
pub fn decode_value(value: &[u8]) -> Option<DosInfo> {
    let mut buf = [0u8; LEN];
    buf.get_mut(..value.len())?.copy_from_slice(value);
    decode(&buf, value.len())
}

/// The value [`store`] writes for `d`.
pub fn encode_value(d: &DosInfo) -> Vec<u8> {
    encode(d)
}

/// The `n` bytes of `buf` the xattr held: version 1 (32 bytes) or 2 (64).
fn decode(buf: &[u8; LEN], n: usize) -> Option<DosInfo> {
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let v2 = match (u32_at(0), n) {
        (1, LEN_V1) => false,
        (2, LEN) => true,
        _ => return None,
    };
    let later = |i: usize| if v2 { u64_at(i) } else { 0 };
    Some(DosInfo {
        attributes: u32_at(4),
        creation: u64_at(8),
        change: u64_at(16),
        mtime_guard: u64_at(24),
        write: later(32),
        write_guard: later(40),
        hold_until: later(48),
        holders: later(56),
    })
}

pub fn store(path: &Path, d: &DosInfo) -> std::io::Result<()> {
    set_xattr_privileged(path, NAME, &encode(d))
}

/// [`store`] for the object an open holds (`fd`, possibly O_PATH), not for a name. Through
/// the descriptor as the current identity first (no path, no identity switch: the common
/// case of a file the SMB user may write, at every first write and close of an open,
/// crate::write_time); as the server ([`set_xattr_privileged_fd`]) when that is refused
/// (the owner of a read-only file) or `fd` is O_PATH.
pub fn store_fd(fd: BorrowedFd<'_>, d: &DosInfo) -> std::io::Result<()> {
    let value = encode(d);
    match crate::sys::fsetxattr(fd, NAME, &value) {
        Ok(()) => Ok(()),
        Err(_) => set_xattr_privileged_fd(fd, NAME, &value),
    }
}

fn encode(d: &DosInfo) -> Vec<u8> {
    let mut buf = Vec::with_capacity(LEN);
    buf.extend_from_slice(&2u32.to_le_bytes());
    buf.extend_from_slice(&d.attributes.to_le_bytes());
    buf.extend_from_slice(&d.creation.to_le_bytes());
    buf.extend_from_slice(&d.change.to_le_bytes());
    buf.extend_from_slice(&d.mtime_guard.to_le_bytes());
    buf.extend_from_slice(&d.write.to_le_bytes());
    buf.extend_from_slice(&d.write_guard.to_le_bytes());
    buf.extend_from_slice(&d.hold_until.to_le_bytes());
    buf.extend_from_slice(&d.holders.to_le_bytes());
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
            write: 10,
            write_guard: 11,
            hold_until: 12,
            holders: 13,
        };
        if store(&p, &info).is_err() {
            eprintln!("filesystem without user xattrs; skipping");
            return;
        }
        assert_eq!(load(&p), Some(info));
    }

    /// Version 1 (before LastWriteTime was kept here) still reads, with no time recorded;
    /// other lengths and versions do not.
    #[test]
    fn version_1_reads_without_a_write_time() {
        let d = DosInfo {
            attributes: 0x20,
            creation: 1,
            change: 2,
            mtime_guard: 3,
            write: 4,
            write_guard: 5,
            hold_until: 6,
            holders: 7,
        };
        let v2 = encode(&d);
        let mut buf = [0u8; LEN];
        buf.copy_from_slice(&v2);
        assert_eq!(decode(&buf, LEN), Some(d));
        assert_eq!(decode(&buf, LEN_V1), None, "version 2 cut short");
        buf[0] = 1;
        let old = decode(&buf, LEN_V1).unwrap();
        assert_eq!((old.creation, old.write, old.hold_until), (1, 0, 0));
        assert_eq!(decode(&buf, LEN), None, "version 1 with trailing bytes");
    }

    /// Windows' time stands while the kernel mtime is the one recorded with it or a node
    /// holds it; a process outside smbd that moves the mtime makes the kernel's the time.
    #[test]
    fn reported_write_follows_the_kernel_once_something_else_moved_it() {
        let d = DosInfo {
            write: 100,
            write_guard: 50,
            ..Default::default()
        };
        assert_eq!(d.reported_write(50, 0), 100);
        assert_eq!(d.reported_write(70, 0), 70, "mtime moved outside smbd");
        let held = DosInfo {
            hold_until: 1000,
            ..d
        };
        assert_eq!(
            held.reported_write(70, 999),
            100,
            "an open's writes moved it"
        );
        assert_eq!(
            held.reported_write(70, 1000),
            70,
            "the hold ran out (its node died)"
        );
        assert_eq!(
            DosInfo::default().reported_write(70, 0),
            70,
            "nothing recorded"
        );
    }

    /// Two nodes hold the time: the first to let go leaves it held for the other; a hold
    /// whose lease ran out (its node died) is counted afresh by the next taker.
    #[test]
    fn the_last_node_to_let_go_ends_the_hold() {
        let mut d = DosInfo::default();
        d.take_hold(10, 100);
        d.take_hold(20, 110);
        assert_eq!((d.holders, d.hold_until), (2, 110));
        d.release_hold();
        assert_eq!(
            (d.holders, d.hold_until),
            (1, 110),
            "still held by the other"
        );
        d.renew_hold(130);
        assert_eq!(d.hold_until, 130);
        d.release_hold();
        assert_eq!((d.holders, d.hold_until), (0, 0));
        // A dead node's count: the lease ran out, the next taker starts from one.
        let mut stale = DosInfo {
            holders: 3,
            hold_until: 100,
            ..Default::default()
        };
        stale.take_hold(100, 200);
        assert_eq!(stale.holders, 1);
        stale.release_hold();
        assert_eq!(stale.hold_until, 0);
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
