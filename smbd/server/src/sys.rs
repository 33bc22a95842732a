//! The plain system calls smbd makes outside the io_uring worker, each behind a safe function:
//! the only place (with the worker) where the crate uses `unsafe`. The callers keep the
//! policy (which flags, which identity, what an error means); these functions only turn a
//! libc call into `io::Result` and own the descriptors the kernel returns.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A descriptor the kernel just returned (or the error it reported).
fn owned(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---- paths beneath a directory descriptor (crate::beneath) ---------------------------------

/// openat2(2) of `path` relative to `dir` with `flags` (O_CLOEXEC added), `mode` (used with
/// O_CREAT / O_TMPFILE) and RESOLVE_* `resolve` flags; retried while a concurrent rename
/// makes the kernel answer EAGAIN.
pub(crate) fn openat2(
    dir: impl AsFd,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; zeroed is a valid value for its reserved fields.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = resolve;
    let dir = dir.as_fd().as_raw_fd();
    loop {
        // SAFETY: `path` is NUL-terminated, `how` is a valid open_how of the size passed;
        // `dir` is borrowed for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match owned(rc) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            r => return r,
        }
    }
}

/// open(2) of an absolute or cwd-relative `path`.
pub(crate) fn open(path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; no mode is read without O_CREAT.
    let rc = unsafe { libc::open(path.as_ptr(), flags) };
    owned(rc.into())
}

/// mkdirat(2).
pub(crate) fn mkdirat(dir: impl AsFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: a borrowed directory descriptor and a NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_fd().as_raw_fd(), name.as_ptr(), mode) })
}

/// unlinkat(2) (`flags`: 0 or AT_REMOVEDIR).
pub(crate) fn unlinkat(dir: impl AsFd, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: a borrowed directory descriptor and a NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_fd().as_raw_fd(), name.as_ptr(), flags) })
}

/// renameat(2).
pub(crate) fn renameat(
    from_dir: impl AsFd,
    from: &CStr,
    to_dir: impl AsFd,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: borrowed directory descriptors and NUL-terminated names.
    check(unsafe {
        libc::renameat(
            from_dir.as_fd().as_raw_fd(),
            from.as_ptr(),
            to_dir.as_fd().as_raw_fd(),
            to.as_ptr(),
        )
    })
}

/// The (device, inode) of `name` in `dir` (fstatat(2) with `flags`, e.g.
/// AT_SYMLINK_NOFOLLOW).
pub(crate) fn fstatat_id(dir: impl AsFd, name: &CStr, flags: i32) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated, `dir` is borrowed for the call and `st` is writable
    // for one struct stat.
    check(unsafe {
        libc::fstatat(
            dir.as_fd().as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            flags,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

// ---- open files --------------------------------------------------------------------------

/// The first offset at or after `from` holding data (lseek SEEK_DATA); ENXIO past the data.
pub(crate) fn seek_data(f: &File, from: u64) -> io::Result<u64> {
    lseek(f, from, libc::SEEK_DATA)
}

/// The first hole at or after `from` (lseek SEEK_HOLE; EOF counts as a hole).
pub(crate) fn seek_hole(f: &File, from: u64) -> io::Result<u64> {
    lseek(f, from, libc::SEEK_HOLE)
}

fn lseek(f: &File, from: u64, whence: i32) -> io::Result<u64> {
    let from = i64::try_from(from).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a descriptor `f` keeps open for the call; no memory is touched.
    let pos = unsafe { libc::lseek(f.as_raw_fd(), from, whence) };
    u64::try_from(pos).map_err(|_| io::Error::last_os_error())
}

/// fallocate(2) with `mode` (FALLOC_FL_*) over `len` bytes at `offset` (both clamped to the
/// kernel's signed range).
pub(crate) fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    // SAFETY: fallocate on a descriptor `f` keeps open for the call; no memory is touched.
    check(unsafe { libc::fallocate(f.as_raw_fd(), mode, clamp(offset), clamp(len)) })
}

/// The mtime of the file `f` holds (seconds, nanoseconds), to put back after a write moved
/// it (crate::write_time: a write does not move LastWriteTime at once).
pub(crate) fn keep_mtime(f: &File) -> Option<(i64, u32)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata()
        .ok()
        .map(|m| (m.mtime(), m.mtime_nsec().clamp(0, 999_999_999) as u32))
}

/// futimens(2) of the mtime only (the access time is left alone) of the file `f` holds.
pub(crate) fn set_mtime(f: &File, (secs, nsec): (i64, u32)) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nsec as libc::c_long,
        },
    ];
    // SAFETY: futimens on a descriptor `f` keeps open for the call; `times` holds the two
    // timespecs it reads.
    check(unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) })
}

/// shutdown(2) of both directions of a socket (a listener that must refuse connections now,
/// which `TcpListener` has no method for).
pub(crate) fn shutdown_socket(sock: impl AsFd) -> io::Result<()> {
    // SAFETY: shutdown on a descriptor the borrow keeps open for the call; it only changes the
    // socket's state and touches no memory of ours.
    check(unsafe { libc::shutdown(sock.as_fd().as_raw_fd(), libc::SHUT_RDWR) })
}

// ---- metadata ------------------------------------------------------------------------------

/// faccessat(2) with AT_EACCESS: whether the thread's current file-system credentials may
/// access `path` with `mode` (W_OK, X_OK, ...).
pub(crate) fn access_as_caller(path: &CStr, mode: i32) -> bool {
    // SAFETY: `path` is NUL-terminated. AT_EACCESS makes the kernel check with the thread's
    // current (fs) credentials instead of the real uid.
    unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), mode, libc::AT_EACCESS) == 0 }
}

/// statvfs(3) of `path`.
pub(crate) fn statvfs(path: &CStr) -> io::Result<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `st` points to writable memory of the right type;
    // statvfs only writes into it.
    check(unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statvfs returned 0, so it initialised the struct.
    Ok(unsafe { st.assume_init() })
}

/// lgetxattr(2): the value's length when `buf` is empty, else the bytes read into `buf`.
pub(crate) fn lgetxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let ptr = if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: `path` and `name` are NUL-terminated; `ptr` is null with size 0 (a length
    // query) or writable for buf.len() bytes, and the kernel writes at most that many.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr, buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// getxattr(2): like [`lgetxattr`] but follows a final symlink; for /proc/self/fd/N names
/// of descriptors the server pinned (the magic link leads to the open object itself).
pub(crate) fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let ptr = if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: `path` and `name` are NUL-terminated; `ptr` is null with size 0 (a length
    // query) or writable for buf.len() bytes, and the kernel writes at most that many.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), ptr, buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// utimensat(2) on `path` (following symlinks: callers pass /proc/self/fd/N of a pinned
/// object); `None` leaves that time unchanged (UTIME_OMIT).
pub(crate) fn set_times(
    path: &CStr,
    atime: Option<(i64, u32)>,
    mtime: Option<(i64, u32)>,
) -> io::Result<()> {
    let ts = |t: Option<(i64, u32)>| match t {
        Some((s, ns)) => libc::timespec {
            tv_sec: s as libc::time_t,
            tv_nsec: ns as libc::c_long,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    };
    let times = [ts(atime), ts(mtime)];
    // SAFETY: `path` is NUL-terminated and `times` holds the two timespecs utimensat reads.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })
}

/// setxattr(2) with flags 0 (create or replace); follows symlinks, so callers pass a path they
/// pinned (e.g. /proc/self/fd/N of an O_PATH descriptor).
pub(crate) fn setxattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `path` and `name` are NUL-terminated; `value` holds value.len() readable bytes.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

// ---- inotify (crate::dirwatch) ---------------------------------------------------------------

/// A close-on-exec inotify instance; blocking, read by one thread.
pub(crate) fn inotify_init() -> io::Result<OwnedFd> {
    // SAFETY: inotify_init1 has no memory-safety preconditions; the result is checked by `owned`.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    owned(fd.into())
}

/// inotify_add_watch(2) of directory `path` for the events in `mask`: the watch descriptor.
pub(crate) fn inotify_add_watch(fd: BorrowedFd<'_>, path: &CStr, mask: u32) -> io::Result<i32> {
    // SAFETY: `path` is a NUL-terminated string that outlives the call; `fd` is open.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wd)
}

/// inotify_rm_watch(2).
pub(crate) fn inotify_rm_watch(fd: BorrowedFd<'_>, wd: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments; `fd` is open.
    check(unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) })
}

// ---- descriptors and limits ------------------------------------------------------------------

/// A non-blocking, close-on-exec eventfd with counter 0.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory-safety preconditions; the result is checked by `owned`.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    owned(fd.into())
}

/// RLIMIT_NOFILE: (soft, hard).
pub(crate) fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by pointer.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) })?;
    Ok((rl.rlim_cur, rl.rlim_max))
}

/// Set RLIMIT_NOFILE's soft limit (the hard one stays `hard`).
pub(crate) fn set_nofile_limit(soft: u64, hard: u64) -> io::Result<()> {
    let want = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct passed by pointer.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) })
}

// ---- credentials (crate::identity) ---------------------------------------------------------

pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub(crate) fn getegid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// The raw setgroups system call: it changes only the calling thread's supplementary groups
/// (glibc's setgroups() would broadcast to every thread of the process).
pub(crate) fn set_thread_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: `groups` holds groups.len() gids and outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// setfsuid(2)/setfsgid(2) for the calling thread; they cannot report failure (see
/// [`fs_ids`]).
pub(crate) fn set_fs_ids(uid: u32, gid: u32) {
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
    }
}

/// The calling thread's current (fsuid, fsgid): setfsuid/setfsgid with -1 only query.
pub(crate) fn fs_ids() -> (u32, u32) {
    // SAFETY: plain syscalls; -1 changes nothing and returns the current value.
    let (u, g) = unsafe { (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)) };
    (u as u32, g as u32)
}

/// getpwnam_r: (uid, primary gid) of user `name`, `None` if unknown.
pub(crate) fn user_ids(name: &CStr) -> Option<(u32, u32)> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain old data; getpwnam_r writes into pw and buf (of the given
    // length) and sets result to &pw or null.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        Some((pw.pw_uid, pw.pw_gid))
    }
}

/// getgrouplist: the groups of user `name` whose primary group is `gid`, into `groups`;
/// `Err(n)` if it needs room for `n` entries.
pub(crate) fn group_list(name: &CStr, gid: u32, groups: &mut Vec<u32>) -> Result<(), usize> {
    let mut n = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: groups has room for n entries; getgrouplist writes at most n and updates n.
    let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    let n = usize::try_from(n).unwrap_or(0);
    if rc >= 0 {
        groups.truncate(n);
        return Ok(());
    }
    Err(n)
}

/// getgrnam_r: the gid of group `name`, `None` if unknown.
pub(crate) fn group_id(name: &CStr) -> Option<u32> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: as for getpwnam_r in `user_ids`.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            name.as_ptr(),
            &mut gr,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(gr.gr_gid)
    }
}

// ---- signals (the smbd binary) ---------------------------------------------------------------

fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Block SIGINT and SIGTERM in the calling thread (and the threads it spawns afterwards), so
/// that [`wait_shutdown_signal`] receives them.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_signals();
    // SAFETY: pthread_sigmask only affects this thread's mask and reads `set`.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Wait for SIGINT or SIGTERM (blocked by [`block_shutdown_signals`]); returns its number.
pub fn wait_shutdown_signal() -> i32 {
    let set = shutdown_signals();
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads `set` and writes the received signal number into `sig`.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn eventfd_counts_and_does_not_block() {
        let mut efd = File::from(eventfd().unwrap());
        let mut b = [0u8; 8];
        assert_eq!(
            efd.read(&mut b).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        efd.write_all(&2u64.to_ne_bytes()).unwrap();
        efd.write_all(&3u64.to_ne_bytes()).unwrap();
        efd.read_exact(&mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 5);
    }

    #[test]
    fn errors_come_back_as_io_errors() {
        let missing = c"/nonexistent-smbd-sys-test/x";
        assert_eq!(
            open(missing, libc::O_RDONLY).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(statvfs(missing).is_err());
        assert!(lgetxattr(missing, c"user.x", &mut []).is_err());
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft <= hard);
    }

    #[test]
    fn data_and_holes_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"data", 0).unwrap();
        assert_eq!(seek_data(&f, 0).unwrap(), 0);
        // Past the last data: ENXIO, whatever the file system's hole granularity.
        assert_eq!(
            seek_data(&f, 4).unwrap_err().raw_os_error(),
            Some(libc::ENXIO)
        );
        assert_eq!(seek_hole(&f, 0).unwrap(), 4);
    }
}
