//! File system calls that the kernel keeps beneath a share root.
//!
//! Client paths are resolved by name (fs::resolve) and checked against the share root, but
//! a path is only a name: between that check and the open, rename or unlink, a local user
//! or another client can swap a directory for a symlink to `/etc` (the window is widest for a
//! CREATE deferred on an oplock break, which opens again by path when the break completes).
//! So every operation that acts on a client-named object goes through a [`ShareRoot`]:
//! `openat2(root_fd, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` for opens, and for the
//! operations on a name (mkdir, unlink, rename) the parent directory opened that way and
//! the `*at` call on the last component, which the kernel never follows as a symlink.
//! Symlinks inside the share keep working; one that leads out fails with EXDEV, which the
//! server answers with STATUS_ACCESS_DENIED.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use crate::sys;

/// A share root held open; every call resolves its relative path beneath it.
#[derive(Debug)]
pub struct ShareRoot {
    fd: OwnedFd,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The path relative to the root as the kernel wants it ("." for the root itself).
fn rel_cstr(rel: &Path) -> io::Result<CString> {
    if rel.as_os_str().is_empty() {
        return Ok(CString::from(c"."));
    }
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    cstr(rel)
}

/// RESOLVE_BENEATH: no `..` or absolute symlink may leave the root; magic links
/// (/proc/self/fd/N) are refused outright.
const BENEATH: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;

impl ShareRoot {
    /// Open the share root directory.
    pub fn open(path: &Path) -> io::Result<ShareRoot> {
        let fd = sys::open(
            &cstr(path)?,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )?;
        Ok(ShareRoot { fd })
    }

    /// Open `rel` beneath the root with open(2) `flags` (O_CREAT uses `mode`).
    pub fn open_file(&self, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
        let fd = sys::openat2(&self.fd, &rel_cstr(rel)?, flags, mode, BENEATH)?;
        Ok(File::from(fd))
    }

    /// Open `rel` beneath the root with no symlink at all on the way (for the server's own
    /// private trees, e.g. the stream depot).
    pub fn open_file_no_symlinks(&self, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
        let fd = sys::openat2(
            &self.fd,
            &rel_cstr(rel)?,
            flags,
            mode,
            BENEATH | libc::RESOLVE_NO_SYMLINKS,
        )?;
        Ok(File::from(fd))
    }

    /// The parent directory of `rel` (opened beneath the root) and the last component.
    fn parent(&self, rel: &Path) -> io::Result<(OwnedFd, CString)> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = sys::openat2(
            &self.fd,
            &rel_cstr(parent)?,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            BENEATH,
        )?;
        Ok((fd, cstr(Path::new(name))?))
    }

    /// mkdir `rel` (mode before umask).
    pub fn mkdir(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        sys::mkdirat(&dir, &name, mode)
    }

    /// Remove the file (or, with `dir`, the empty directory) `rel`; a symlink named `rel`
    /// is removed itself, never followed.
    pub fn unlink(&self, rel: &Path, dir: bool) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        sys::unlinkat(&parent, &name, flags)
    }

    /// [`ShareRoot::unlink`] of `rel` only while that name still leads to the object `pinned`
    /// holds (an open's descriptor): after a directory on the way was swapped, or the object
    /// renamed elsewhere, the name may lead to another file, which must not go in its place
    /// (ESTALE then). A symlink named `rel` that leads to the object is removed itself.
    pub fn unlink_if_same(&self, rel: &Path, dir: bool, pinned: &File) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let m = pinned.metadata()?;
        let (parent, name) = self.parent(rel)?;
        if sys::fstatat_id(&parent, &name, 0)? != (m.dev(), m.ino()) {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        sys::unlinkat(&parent, &name, flags)
    }

    /// Rename `from` to `to` (both beneath the root), replacing `to` like rename(2).
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fdir, fname) = self.parent(from)?;
        let (tdir, tname) = self.parent(to)?;
        sys::renameat(&fdir, &fname, &tdir, &tname)
    }
}

/// The /proc/self/fd/N name of `fd`. For calls that only take a path (chmod, utimensat,
/// xattrs on an O_PATH descriptor): the kernel follows this magic link to the object the
/// descriptor holds, not to whatever now has its old name, so a directory swapped for a
/// symlink after the open cannot redirect the call.
pub fn fd_path(fd: BorrowedFd<'_>) -> io::Result<CString> {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_leading_out_are_refused_inside_ones_work() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("share");
        let outside = top.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::fs::write(root.join("d/f"), b"in").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink("d", root.join("in")).unwrap();
        let r = ShareRoot::open(&root).unwrap();
        let exdev = |e: io::Error| e.raw_os_error() == Some(libc::EXDEV);
        assert!(exdev(
            r.open_file(Path::new("out/secret"), libc::O_RDONLY, 0)
                .unwrap_err()
        ));
        assert!(exdev(
            r.open_file(Path::new("../outside/secret"), libc::O_RDONLY, 0)
                .unwrap_err()
        ));
        assert!(r.mkdir(Path::new("out/new"), 0o755).is_err());
        assert!(r.rename(Path::new("d/f"), Path::new("out/stolen")).is_err());
        assert!(r.unlink(Path::new("out/secret"), false).is_err());
        assert!(outside.join("secret").exists() && !outside.join("new").exists());
        // Inside the share symlinks resolve; unlink removes the link, not its target.
        let mut s = String::new();
        use std::io::Read;
        r.open_file(Path::new("in/f"), libc::O_RDONLY, 0)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "in");
        r.unlink(Path::new("in"), false).unwrap();
        assert!(root.join("d/f").exists());
        assert!(r
            .open_file_no_symlinks(Path::new("out"), libc::O_RDONLY, 0)
            .is_err());
        r.mkdir(Path::new("d/sub"), 0o755).unwrap();
        r.rename(Path::new("d/f"), Path::new("d/sub/g")).unwrap();
        r.unlink(Path::new("d/sub/g"), false).unwrap();
        r.unlink(Path::new("d/sub"), true).unwrap();
        r.open_file(Path::new(""), libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .unwrap();
    }
}
