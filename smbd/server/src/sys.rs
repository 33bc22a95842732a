//! The plain system calls smbd makes outside the io_uring worker, each behind a safe function:
//! the only place (with the worker) where the crate uses `unsafe`. The callers keep the
//! policy (which flags, which identity, what an error means); these functions only turn a
//! libc call into `io::Result` and own the descriptors the kernel returns.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// Bytes in a TCP socket's send queue that the peer has not acknowledged yet, sent or not
/// (SIOCOUTQ, tcp(7)).
pub(crate) fn tcp_unacked_bytes(sock: impl AsFd) -> io::Result<u64> {
    let mut value: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, which points at a live
    // local of that type; a bad descriptor only yields an error.
    check(unsafe {
        libc::ioctl(
            sock.as_fd().as_raw_fd(),
            libc::TIOCOUTQ,
            &mut value as *mut libc::c_int,
        )
    })?;
    u64::try_from(value).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// The TCP retransmission timeout the kernel currently uses for the socket (TCP_INFO's
/// tcpi_rto).
pub(crate) fn tcp_rto(sock: impl AsFd) -> io::Result<std::time::Duration> {
    // SAFETY: tcp_info is plain data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, a live local of that size,
    // and updates `len`; a bad descriptor only yields an error.
    check(unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(std::time::Duration::from_micros(u64::from(info.tcpi_rto)))
}

/// shutdown(2) of both directions of a socket (a listener that must refuse connections now,
/// which `TcpListener` has no method for).
pub(crate) fn shutdown_socket(sock: impl AsFd) -> io::Result<()> {
    // SAFETY: shutdown on a descriptor the borrow keeps open for the call; it only changes the
    // socket's state and touches no memory of ours.
    check(unsafe { libc::shutdown(sock.as_fd().as_raw_fd(), libc::SHUT_RDWR) })
}

/// Which of the sockets `fds` no longer have a peer to read from: poll(2) with no wait, one
/// call for all, true where the kernel reports the read side shut (POLLRDHUP: the client sent
/// its FIN), a hangup or an error. A closed descriptor reports POLLNVAL, which counts as gone.
pub(crate) fn hung_up(fds: &[RawFd]) -> Vec<bool> {
    let mut set: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    // SAFETY: `set` is a live, exclusively borrowed array of `set.len()` pollfd structs; a
    // zero timeout never blocks. poll only writes the `revents` fields.
    let n = unsafe { libc::poll(set.as_mut_ptr(), set.len() as libc::nfds_t, 0) };
    if n < 0 {
        return vec![false; fds.len()];
    }
    set.iter()
        .map(|p| {
            p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
        })
        .collect()
}

/// The local IP address of socket `fd` (getsockname), None for a socket that is not TCP/IP
/// (smbdirectd's unix socket) or on error. IPv4-mapped IPv6 addresses come back as IPv4.
/// The caller keeps `fd` open for the call (see `crate::hangup`).
pub(crate) fn socket_local_ip(fd: RawFd) -> Option<std::net::IpAddr> {
    // SAFETY: an all-zero sockaddr_storage is a valid value of that plain C struct.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is a live, exclusively borrowed sockaddr_storage of `len` bytes, the
    // largest address getsockname can write; it writes at most `len` bytes and updates `len`.
    let r = unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote an AF_INET address, so the storage holds a sockaddr_in
            // (sockaddr_storage is large and aligned enough for every address type).
            let sin =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for an AF_INET6 address and sockaddr_in6.
            let sin6 =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(
                std::net::IpAddr::from(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                    .to_canonical(),
            )
        }
        _ => None,
    }
}

/// [`shutdown_socket`] of a descriptor another thread owns: the peer gets a FIN now, and the
/// worker that owns the socket sees its end (RECV returns 0) and tears the connection down as
/// on a client's disconnect. The caller keeps `fd` from being closed for the call (see
/// `crate::hangup`).
pub(crate) fn shutdown_raw_socket(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller guarantees `fd` stays open (not closed, not reused) for the call,
    // which is all borrow_raw asks for the borrow's lifetime, this function's body.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    shutdown_socket(borrowed)
}

/// Whether `fd` has something to read within `timeout_ms` (poll(2) for POLLIN).
pub(crate) fn readable_within(fd: impl AsFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live, exclusively borrowed pollfd; the descriptor is kept open by the
    // borrow for the call. poll only writes `revents`.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// The credentials of a unix socket's peer as the kernel recorded them at connect(2)
/// (SO_PEERCRED, unix(7)): a process cannot change them afterwards by changing its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// getsockopt(SO_PEERCRED) of a connected unix stream socket.
pub(crate) fn peer_cred(sock: impl AsFd) -> io::Result<PeerCred> {
    // SAFETY: ucred is plain data; all zeroes is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the borrow keeps the descriptor open for the call; the kernel writes at most
    // `len` bytes (the size of `cred`, a local it may write) and updates `len`.
    check(unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("SO_PEERCRED returned a short ucred"));
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

// ---- smbdirectd's shared area (crate::rdma_area) --------------------------------------------

/// A MAP_SHARED mapping of the memory area smbdirectd passed (a sealed memfd), unmapped on
/// drop. smbdirectd writes and reads it concurrently (its RDMA READs and WRITEs), so no Rust
/// reference to the memory is ever made: bytes move in and out only by the kernel (pread(2)
/// into it, pwrite(2) from it, and io_uring READ/WRITE on ranges given by `raw_range`), each
/// range bounds-checked here. Its callers (crate::rdma_area) decide
/// which ranges this process may use.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; every access goes through
// `&self` methods that copy with raw pointers (no references into it), which is sound from any
// thread.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; concurrent copies of the same bytes race only on the data, never on
// Rust-visible state.
unsafe impl Sync for SharedMapping {}

/// F_SEAL_SHRINK (fcntl(2)): the file cannot become shorter, so a mapping of it never faults
/// past its end (SIGBUS).
const F_SEAL_SHRINK: libc::c_int = 0x0002;

/// Maps all of `fd`, a memfd that must carry F_SEAL_SHRINK (so its owner cannot truncate it
/// under the mapping) and be 1 byte to `max` bytes long.
pub(crate) fn map_shared_area(fd: &OwnedFd, max: u64) -> io::Result<SharedMapping> {
    // SAFETY: fcntl F_GET_SEALS on a descriptor the borrow keeps open; no memory involved.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::other(format!(
            "not a sealable memfd ({})",
            io::Error::last_os_error()
        )));
    }
    if seals & F_SEAL_SHRINK == 0 {
        return Err(io::Error::other(
            "the memfd is not sealed against shrinking",
        ));
    }
    // SAFETY: stat is plain data; fstat writes it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a local the kernel may write; the descriptor is open.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size == 0 || size > max {
        return Err(io::Error::other(format!(
            "area of {size} bytes (1 to {max})"
        )));
    }
    let len = usize::try_from(size).map_err(|_| io::Error::other("area too large"))?;
    // SAFETY: a fresh mapping chosen by the kernel (no fixed address), of a file at least
    // `len` bytes long that cannot shrink (sealed, checked above).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap"))?;
    Ok(SharedMapping { ptr, len })
}

impl SharedMapping {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn range(&self, off: usize, len: usize) -> io::Result<*mut u8> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => {
                // SAFETY: `off` is inside the mapping (checked), so the result is too.
                Ok(unsafe { self.ptr.as_ptr().add(off) })
            }
            _ => Err(io::Error::from_raw_os_error(libc::EFAULT)),
        }
    }

    /// pread(2) of up to `len` bytes of `file` at `file_off` straight into the area at `off`
    /// (the READ data smbdirectd then RDMA-WRITEs from there): one call; returns the count.
    pub(crate) fn pread_into(
        &self,
        file: &File,
        file_off: u64,
        off: usize,
        len: usize,
    ) -> io::Result<usize> {
        let dst = self.range(off, len)?;
        let pos = libc::off_t::try_from(file_off).map_err(|_| io::Error::other("offset"))?;
        // SAFETY: the kernel writes at most `len` bytes at `dst`, inside the mapping
        // (checked); the file's descriptor is borrowed for the call.
        let n = unsafe { libc::pread(file.as_raw_fd(), dst.cast(), len, pos) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl SharedMapping {
    /// pwrite(2) of up to `len` bytes from the area at `off` to `file` at `file_off` (a
    /// WRITE's data that smbdirectd RDMA-READ into the area, written to the file without a
    /// copy in this process): one call; returns the count.
    pub(crate) fn pwrite_from(
        &self,
        file: &File,
        file_off: u64,
        off: usize,
        len: usize,
    ) -> io::Result<usize> {
        let src = self.range(off, len)?;
        let pos = libc::off_t::try_from(file_off).map_err(|_| io::Error::other("offset"))?;
        // SAFETY: the kernel reads at most `len` bytes at `src`, inside the mapping (checked);
        // the file's descriptor is borrowed for the call. No Rust reference to the bytes.
        let n = unsafe { libc::pwrite(file.as_raw_fd(), src.cast(), len, pos) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// The address of `off..off+len` in the mapping (bounds-checked), for an io_uring READ or
    /// WRITE whose buffer is that range. The caller keeps the mapping alive (and the range
    /// reserved, crate::rdma_area::AreaRange) until the kernel has completed the operation;
    /// nothing in this process dereferences the pointer.
    pub(crate) fn raw_range(&self, off: usize, len: usize) -> io::Result<*mut u8> {
        self.range(off, len)
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `map_shared_area` with this length, unmapped once; no references
        // into it exist (see the type's documentation).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// recvmsg(2) without blocking of up to `buf.len()` bytes and at most one descriptor passed
/// with them (SCM_RIGHTS; received close-on-exec): `Ok(None)` when nothing is there yet,
/// `Ok(Some((0, None)))` at end of stream. Descriptors beyond the first, if a peer sent more,
/// are closed.
pub(crate) fn recv_with_fd(
    sock: impl AsFd,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for a few descriptors' control message, aligned as cmsghdr needs.
    let mut cbuf = [0u64; 16];
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `msg` points at `iov` (over `buf`) and `cbuf`, live locals the kernel may write
    // within their stated lengths; the socket is borrowed for the call.
    let n = unsafe {
        libc::recvmsg(
            sock.as_fd().as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    let mut first: Option<OwnedFd> = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `cbuf`; CMSG_FIRSTHDR/NXTHDR stay
    // within them, and each SCM_RIGHTS message's data holds (cmsg_len - CMSG_LEN(0)) / 4
    // descriptors, now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if first.is_none() {
                        first = Some(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "control data truncated (too many descriptors)",
        ));
    }
    Ok(Some((n as usize, first)))
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

/// statfs(2)'s `f_type` of `path`: the filesystem's magic number (statfs(2) lists them).
pub(crate) fn statfs_type(path: &CStr) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `st` points to writable memory of the right type;
    // statfs only writes into it.
    check(unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    // f_type is a signed word on some targets; magic numbers are 32-bit patterns.
    Ok(st.f_type as u64 & 0xffff_ffff)
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

/// fgetxattr(2) of the object `fd` holds (not an O_PATH descriptor: EBADF): like [`getxattr`]
/// without a path to resolve.
pub(crate) fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `name` is NUL-terminated; `buf` is writable for buf.len() bytes (a null pointer
    // is never passed: an empty `buf` gives a zero-length valid pointer), and the kernel writes
    // at most that many; `fd` is open for the call.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// fsetxattr(2) with flags 0 of the object `fd` holds (not an O_PATH descriptor), as the
/// calling thread's current file-system identity.
pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `value` holds value.len() readable bytes; `fd` is open
    // for the call.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
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
    fn peer_credentials_of_a_unix_socket_pair_are_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = peer_cred(&a).unwrap();
        assert_eq!(c.uid, geteuid());
        assert_eq!(c.pid, std::process::id() as i32);
        let f = File::open("/dev/null").unwrap();
        assert!(peer_cred(&f).is_err(), "not a socket");
    }

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
