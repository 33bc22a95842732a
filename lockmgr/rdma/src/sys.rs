//! Thin wrappers over the few Linux calls the transport needs besides verbs: epoll, an eventfd
//! waker and `O_NONBLOCK`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lockmgr_transport::Wake;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Puts `fd` into non-blocking mode (the completion channel's fd, so that draining events never
/// blocks).
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a caller-owned fd with integer arguments has no memory-safety
    // preconditions; an invalid fd only yields EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// An epoll instance; every registration is level-triggered `EPOLLIN` with a `u64` token.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes only flags; the returned fd is checked and owned below.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    pub(crate) fn del(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; failure (fd already closed) is harmless and ignored.
        unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Waits up to `timeout` (`None` = forever); fills `out` with `(token, events)`.
    pub(crate) fn wait(
        &self,
        out: &mut Vec<(u64, u32)>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        const MAX: usize = 64;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let ms: libc::c_int = match timeout {
            None => -1,
            // Round up so a sub-millisecond timeout still sleeps instead of spinning.
            Some(t) => t.as_micros().div_ceil(1000).min(libc::c_int::MAX as u128) as libc::c_int,
        };
        out.clear();
        // SAFETY: `evs` has room for MAX events and outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                evs.as_mut_ptr(),
                MAX as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        for ev in &evs[..n as usize] {
            out.push((ev.u64, ev.events));
        }
        Ok(n as usize)
    }
}

/// Eventfd-based waker for [`lockmgr_transport::Waker`].
pub(crate) struct EventFdWaker {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl EventFdWaker {
    pub(crate) fn new() -> io::Result<EventFdWaker> {
        // SAFETY: eventfd takes only integer arguments; the fd is checked and owned below.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        Ok(EventFdWaker {
            // SAFETY: freshly created fd, owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consumes a pending wake-up; true if there was one.
    pub(crate) fn take(&self) -> bool {
        if self.pending.swap(false, Ordering::AcqRel) {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into `v`; the fd is non-blocking so this cannot hang.
            unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
            return true;
        }
        false
    }
}

impl Wake for EventFdWaker {
    fn wake(&self) {
        self.pending.store(true, Ordering::Release);
        let v: u64 = 1;
        // SAFETY: writes 8 bytes from `v`; an overflowing counter (EAGAIN) still leaves the fd
        // readable, which is all we need.
        unsafe { libc::write(self.fd.as_raw_fd(), (&v as *const u64).cast(), 8) };
    }
}

/// Reads the non-blocking TCP side channel: `true` while the peer is alive. After the hello
/// nothing is sent on it, so any data is a protocol violation and treated as death.
pub(crate) fn sock_alive(sock: &std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut b = [0u8; 16];
    match (&*sock).read(&mut b) {
        Ok(0) => false,
        Ok(_) => {
            tracing::warn!("unexpected data on the RDMA side channel");
            false
        }
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted =>
        {
            true
        }
        Err(_) => false,
    }
}
