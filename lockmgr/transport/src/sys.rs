//! Thin wrappers over the Linux system calls std does not expose (eventfd, epoll, memfd, mmap,
//! SCM_RIGHTS). The shm/UDP syscall `unsafe` lives here; the raw-Ethernet modules (`eth`,
//! `afpacket`, `afxdp`, `netns`) keep their socket, ring and bpf(2) `unsafe` next to the
//! structures it manipulates, each block with its `SAFETY:` argument.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::Wake;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `None` = infinite (-1); otherwise milliseconds rounded up so a short timer never turns into a
/// zero-timeout busy loop.
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as libc::c_int
        }
    }
}

/// Non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments; the returned fd is fresh and owned by us.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd counter. A saturated counter (EAGAIN) already wakes the reader.
pub(crate) fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local u64; fd validity is only an error condition.
    let r = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(e);
        }
    }
    Ok(())
}

/// Reset a non-blocking eventfd counter to zero.
pub(crate) fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local u64. Errors (EAGAIN) mean "already zero".
    let _ = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// An eventfd-backed [`Wake`] that costs a syscall only when the waiting thread really sleeps.
pub(crate) struct EventFdWaker {
    fd: OwnedFd,
    /// Set by `wake`; consumed by the waiting thread.
    woken: AtomicBool,
    /// Set by the waiting thread around its blocking syscall.
    sleeping: AtomicBool,
}

impl EventFdWaker {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(EventFdWaker {
            fd: eventfd()?,
            woken: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consume a pending wake-up (busy path check).
    pub(crate) fn take(&self) -> bool {
        self.woken.load(Ordering::Relaxed) && self.woken.swap(false, Ordering::AcqRel)
    }

    /// Announce an imminent sleep; returns false if a wake is already pending (do not sleep).
    /// Dekker-style: store flag, full fence, check the other side's flag; `wake` does the mirror
    /// image, so at least one of the two sees the other and no wake-up is lost.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.woken.load(Ordering::SeqCst) {
            self.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn finish_sleep(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
        eventfd_drain(self.fd.as_raw_fd());
    }
}

impl Wake for EventFdWaker {
    fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            if let Err(e) = eventfd_signal(self.fd.as_raw_fd()) {
                tracing::warn!(error = %e, "waker eventfd write failed");
            }
        }
    }
}

/// Level-triggered epoll instance.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: no memory arguments; the fd is fresh.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fresh fd owned by nobody else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live, initialised epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    pub(crate) fn del(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; failure (fd already gone) is harmless because closing an fd
        // removes it from the interest list anyway.
        let _ = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Returns the ready `(token, events)` pairs in `out` (cleared first).
    pub(crate) fn wait(
        &self,
        out: &mut Vec<(u64, u32)>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        const N: usize = 64;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; N];
        out.clear();
        // SAFETY: `evs` has room for N events and outlives the call.
        let r = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                evs.as_mut_ptr(),
                N as libc::c_int,
                timeout_ms(timeout),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        let n = r as usize;
        for ev in &evs[..n] {
            // Copy out of the (packed on x86-64) struct before use.
            let (token, events) = (ev.u64, ev.events);
            out.push((token, events));
        }
        Ok(n)
    }
}

/// poll(2) on a few fds; EINTR counts as a (spurious) wake-up.
pub(crate) fn poll_fds(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    // SAFETY: `fds` is a live, exclusively borrowed slice of pollfd of the given length.
    let r = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout_ms(timeout),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// Anonymous shared memory of `size` bytes (zero-filled).
pub(crate) fn memfd(name: &std::ffi::CStr, size: u64) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    file.set_len(size)?;
    Ok(OwnedFd::from(file))
}

/// Size of the file behind `fd`.
pub(crate) fn fd_size(fd: &OwnedFd) -> io::Result<u64> {
    let file = std::fs::File::from(fd.try_clone()?);
    Ok(file.metadata()?.len())
}

/// A `MAP_SHARED` read/write mapping, unmapped on drop.
pub(crate) struct MmapRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory with no thread affinity; all concurrent access through it
// goes via atomics or raw-pointer copies whose races are handled by the ring protocol.
unsafe impl Send for MmapRegion {}
// SAFETY: see `Send`; `&MmapRegion` only hands out raw pointers and atomics.
unsafe impl Sync for MmapRegion {}

impl MmapRegion {
    pub(crate) fn map(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL), so no existing memory is
        // affected; the result is checked against MAP_FAILED.
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
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap NULL"))?;
        Ok(MmapRegion { ptr, len })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for MmapRegion {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned and nobody uses the mapping after drop
        // (every user holds an Arc to this region).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

const MAX_FDS: usize = 4;

/// sendmsg with `fds` attached as SCM_RIGHTS.
pub(crate) fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
    }
    // u64 array keeps the control buffer aligned for cmsghdr.
    let mut cbuf = [0u64; 16];
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    if space > std::mem::size_of_val(&cbuf) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cmsg too big"));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `cbuf`, which is large enough (checked above) and aligned,
    // so CMSG_FIRSTHDR/CMSG_DATA stay inside it; we copy exactly `fd_bytes` bytes into it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for cmsg"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fd_bytes);
    }
    // SAFETY: `msg` references `iov` (-> `data`) and `cbuf`, all live across the call.
    cvt_size(unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) })
}

/// recvmsg accepting up to `MAX_FDS` SCM_RIGHTS fds, appended to `fds_out` (owned).
pub(crate) fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    fds_out: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero msghdr is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: `msg` references live buffers `buf` and `cbuf` of the advertised sizes.
    let n = cvt_size(unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    // SAFETY: the kernel filled `cbuf` with msg_controllen bytes of well-formed cmsgs; the CMSG_*
    // macros walk only within that length, and we read fds with unaligned reads.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let hdr_len = data.offset_from(cmsg.cast::<u8>()) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(hdr_len)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    // The kernel installed these fds for us; we are their only owner.
                    fds_out.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("control message truncated"));
    }
    Ok(n)
}

impl MmapRegion {
    /// Checked atomic view of an 8-byte word (for non-hot header fields).
    pub(crate) fn atomic_u64(&self, off: usize) -> Option<&std::sync::atomic::AtomicU64> {
        if off & 7 != 0 || off.checked_add(8)? > self.len {
            return None;
        }
        // SAFETY: in bounds and 8-aligned (the mapping itself is page-aligned); the mapping lives
        // as long as `&self`; shared words are only accessed atomically.
        Some(unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(off)
                .cast::<std::sync::atomic::AtomicU64>()
        })
    }
}

impl Epoll {
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
