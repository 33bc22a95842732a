//! The plumbing every transport shares (lockmgr-rdma included): thin RAII wrappers over the
//! Linux system calls std does not expose (eventfd, epoll, memfd, mmap, SCM_RIGHTS) and the
//! spin-then-sleep loop of every `wait` ([`Spinner`]).
//!
//! The shm/UDP/RDMA syscall `unsafe` lives here; the raw-Ethernet modules (`eth`, `afpacket`,
//! `afxdp`, `netns`) and the verbs layer keep their socket, ring, bpf(2) and verbs `unsafe` next
//! to the structures it manipulates, each block with its `SAFETY:` argument.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{SpinConfig, SpinMode, Wake};

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
pub fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as libc::c_int
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `Instant` reads, as a number other processes on
/// the same host (network namespaces included) can compare, e.g. in logs that tests order
/// events of several processes by.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local; CLOCK_MONOTONIC always
    // exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments; the returned fd is fresh and owned by us.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd counter. A saturated counter (EAGAIN) already wakes the reader.
pub fn eventfd_signal(fd: RawFd) -> io::Result<()> {
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
pub fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local u64. Errors (EAGAIN) mean "already zero".
    let _ = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// An eventfd-backed [`Wake`] that costs a syscall only when the waiting thread really sleeps.
pub struct EventFdWaker {
    fd: OwnedFd,
    /// Set by `wake`; consumed by the waiting thread.
    woken: AtomicBool,
    /// Set by the waiting thread around its blocking syscall.
    sleeping: AtomicBool,
}

impl EventFdWaker {
    /// A waker with its own eventfd; register [`EventFdWaker::fd`] with the sleeping side's
    /// epoll or poll set.
    pub fn new() -> io::Result<Self> {
        Ok(EventFdWaker {
            fd: eventfd()?,
            woken: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
        })
    }

    /// The eventfd that becomes readable when `wake` hits a sleeping thread.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consume a pending wake-up (busy path check).
    pub fn take(&self) -> bool {
        self.woken.load(Ordering::Relaxed) && self.woken.swap(false, Ordering::AcqRel)
    }

    /// Announce an imminent sleep; returns false if a wake is already pending (do not sleep).
    /// Dekker-style: store flag, full fence, check the other side's flag; `wake` does the mirror
    /// image, so at least one of the two sees the other and no wake-up is lost.
    pub fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.woken.load(Ordering::SeqCst) {
            self.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// End of the sleep announced by [`EventFdWaker::prepare_sleep`]: clears the eventfd so the
    /// next sleep blocks again. The wake-up flag stays for [`EventFdWaker::take`].
    pub fn finish_sleep(&self) {
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
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// A fresh, close-on-exec epoll instance.
    pub fn new() -> io::Result<Self> {
        // SAFETY: no memory arguments; the fd is fresh.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    /// Watch `fd` for input and peer hang-up, reporting it as `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live, initialised epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Stop watching `fd`.
    pub fn del(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; failure (fd already gone) is harmless because closing an fd
        // removes it from the interest list anyway.
        let _ = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Returns the ready `(token, events)` pairs in `out` (cleared first).
    pub fn wait(&self, out: &mut Vec<(u64, u32)>, timeout: Option<Duration>) -> io::Result<usize> {
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
pub fn poll_fds(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
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
pub fn memfd(name: &std::ffi::CStr, size: u64) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    file.set_len(size)?;
    Ok(OwnedFd::from(file))
}

/// Size of the file behind `fd`.
pub fn fd_size(fd: &OwnedFd) -> io::Result<u64> {
    let file = std::fs::File::from(fd.try_clone()?);
    Ok(file.metadata()?.len())
}

/// A `MAP_SHARED` read/write mapping, unmapped on drop.
pub struct MmapRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory with no thread affinity; all concurrent access through it
// goes via atomics or raw-pointer copies whose races are handled by the ring protocol.
unsafe impl Send for MmapRegion {}
// SAFETY: see `Send`; `&MmapRegion` only hands out raw pointers and atomics.
unsafe impl Sync for MmapRegion {}

impl MmapRegion {
    /// Maps the first `len` bytes of `fd` shared and read/write.
    pub fn map(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        Self::mmap(len, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    }

    /// Maps `len` bytes of `fd` at `offset` shared, read/write and pre-faulted (kernel rings
    /// such as AF_XDP's, whose offsets select the ring).
    pub fn map_at(fd: RawFd, len: usize, offset: libc::off_t) -> io::Result<Self> {
        Self::mmap(len, libc::MAP_SHARED | libc::MAP_POPULATE, fd, offset)
    }

    /// `len` bytes of private, zero-filled, pre-faulted memory (e.g. an AF_XDP UMEM).
    pub fn anonymous(len: usize) -> io::Result<Self> {
        Self::mmap(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    }

    fn mmap(len: usize, flags: libc::c_int, fd: RawFd, offset: libc::off_t) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL), so no existing memory is
        // affected; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap NULL"))?;
        Ok(MmapRegion { ptr, len })
    }

    /// Start of the mapping (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (mmap refuses empty mappings); for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
    pub fn atomic_u64(&self, off: usize) -> Option<&std::sync::atomic::AtomicU64> {
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
    /// The epoll fd itself, for callers that nest it in their own event loop.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Puts `fd` into non-blocking mode (e.g. an RDMA completion channel, so that draining its
/// events never blocks).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments has no memory-safety preconditions; an invalid fd
    // only yields EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// The CPUs the calling thread may run on (its affinity mask), ascending.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 = the calling thread.
    cvt(unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) })?;
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET only reads the set; every index is below CPU_SETSIZE.
    Ok((0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the calling thread to `cpu` (so two busy-polling threads never share a CPU).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu out of range",
        ));
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` was checked against the set's capacity above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 = the calling thread.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })?;
    Ok(())
}

/// Outcome of [`Spinner::spin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spun {
    /// The readiness check succeeded while spinning: return from `wait` without sleeping.
    Ready,
    /// The spin budget ran out: sleep in the kernel for at most this long (`None` = no limit).
    Sleep(Option<Duration>),
}

/// The spin phase of every transport's `wait`: busy-poll a readiness check for the spin budget,
/// then tell the caller how long it may sleep.
///
/// One implementation so that every transport spins by the same rules ([`SpinMode`]). The
/// endpoint reports traffic with [`Spinner::busy`] (frames received) and
/// [`Spinner::expect_reply`] (a request sent), each a flag store without a clock read; the next
/// `spin` stamps them with its start time.
///
/// Adaptive spinning is "hot" after a request was sent (its reply comes within microseconds)
/// or when frames keep arriving (two stamps within `idle_after`), and only for `idle_after`
/// after that. A lone frame after a quiet spell (a heartbeat) does not make it hot, so the
/// heartbeats of idle nodes cost no spinning.
#[derive(Debug, Clone)]
pub struct Spinner {
    cfg: SpinConfig,
    /// Frames received since the last `spin`.
    received: bool,
    /// A request sent since the last `spin`.
    sent: bool,
    /// Start of the last `spin` that followed received frames.
    last_received: Option<Instant>,
    /// Start of the last `spin` that found the traffic hot.
    hot_at: Option<Instant>,
    /// Whether the CPUs have room for a spin now ([`crate::cpu_pressure::spinning_allowed`];
    /// tests put their own).
    cpu_gate: fn(Instant) -> bool,
}

impl Spinner {
    /// Reading the clock costs about as much as a cheap readiness check, so the budget is
    /// checked every this many iterations (a power of two minus one, used as a mask).
    const CLOCK_EVERY: u32 = 15;

    /// A spinner with the given budget and mode. It starts as if traffic had just happened,
    /// so a fresh connection's first replies are awaited spinning.
    pub fn new(cfg: SpinConfig) -> Self {
        Spinner {
            cfg,
            received: false,
            sent: true,
            last_received: None,
            hot_at: None,
            cpu_gate: crate::cpu_pressure::spinning_allowed,
        }
    }

    /// The same spinner asking `gate` instead of the kernel's CPU pressure.
    pub fn with_cpu_gate(mut self, gate: fn(Instant) -> bool) -> Self {
        self.cpu_gate = gate;
        self
    }

    /// The configuration this spinner was built with.
    pub fn config(&self) -> SpinConfig {
        self.cfg
    }

    /// Frames were received: spin for a while if they keep coming.
    #[inline]
    pub fn busy(&mut self) {
        self.received = true;
    }

    /// A request went out: its reply is worth spinning for.
    #[inline]
    pub fn expect_reply(&mut self) {
        self.sent = true;
    }

    /// How long a `wait` starting at `start` may spin.
    pub fn budget(&mut self, start: Instant, timeout: Option<Duration>) -> Duration {
        let (idle_after, yield_to_cpu_pressure) = match self.cfg.mode {
            SpinMode::Always => return timeout.unwrap_or(Duration::MAX),
            SpinMode::Adaptive {
                idle_after,
                yield_to_cpu_pressure,
            } => (idle_after, yield_to_cpu_pressure),
        };
        if std::mem::take(&mut self.received) {
            if self
                .last_received
                .is_some_and(|t| start.saturating_duration_since(t) <= idle_after)
            {
                self.hot_at = Some(start);
            }
            self.last_received = Some(start);
        }
        if std::mem::take(&mut self.sent) {
            self.hot_at = Some(start);
        }
        let quiet = self
            .hot_at
            .map_or(Duration::MAX, |t| start.saturating_duration_since(t));
        let mut budget = self.cfg.spin.min(idle_after.saturating_sub(quiet));
        // Asked only when the traffic would have us spin: an idle endpoint reads nothing.
        if !budget.is_zero() && yield_to_cpu_pressure && !(self.cpu_gate)(start) {
            budget = Duration::ZERO;
        }
        timeout.map_or(budget, |t| t.min(budget))
    }

    /// Calls `ready(iteration)` until it returns true or the spin budget (see
    /// [`Spinner::budget`], counted from `start`) is spent. `iteration` counts from 1, so a
    /// caller can run slower checks (sockets, epoll) every N-th round with `iteration % N == 0`.
    pub fn spin<E>(
        &mut self,
        start: Instant,
        timeout: Option<Duration>,
        mut ready: impl FnMut(u32) -> Result<bool, E>,
    ) -> Result<Spun, E> {
        let budget = self.budget(start, timeout);
        let mut now = start;
        if !budget.is_zero() {
            let mut i: u32 = 0;
            loop {
                i = i.wrapping_add(1);
                if ready(i)? {
                    return Ok(Spun::Ready);
                }
                if i & Self::CLOCK_EVERY == 0 {
                    now = Instant::now();
                    if now.duration_since(start) >= budget {
                        break;
                    }
                }
                std::hint::spin_loop();
            }
        }
        Ok(Spun::Sleep(
            timeout.map(|t| t.saturating_sub(now.duration_since(start))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpinMode;

    const SPIN: Duration = Duration::from_micros(200);
    const IDLE: Duration = Duration::from_millis(10);

    fn adaptive_with(yield_to_cpu_pressure: bool) -> Spinner {
        Spinner::new(SpinConfig {
            spin: SPIN,
            mode: SpinMode::Adaptive {
                idle_after: IDLE,
                yield_to_cpu_pressure,
            },
        })
    }

    /// Adaptive, on CPUs with room to spare (the host's own pressure kept out of the tests).
    fn adaptive() -> Spinner {
        adaptive_with(true).with_cpu_gate(|_| true)
    }

    #[test]
    fn adaptive_does_not_spin_while_the_cpus_are_contended() {
        let mut s = adaptive_with(true).with_cpu_gate(|_| false);
        let t0 = Instant::now();
        s.expect_reply();
        assert_eq!(s.budget(t0, None), Duration::ZERO);
        let spun = s
            .spin(
                t0,
                Some(Duration::from_millis(3)),
                |_| -> io::Result<bool> { panic!("a contended CPU must not be spun on") },
            )
            .expect("no error");
        assert_eq!(spun, Spun::Sleep(Some(Duration::from_millis(3))));
        // An endpoint that owns its core spins whatever the others do.
        let mut own_core = adaptive_with(false).with_cpu_gate(|_| false);
        own_core.expect_reply();
        assert_eq!(own_core.budget(t0, None), SPIN);
    }

    #[test]
    fn adaptive_spins_after_traffic_and_stops_when_quiet() {
        let mut s = adaptive();
        let t0 = Instant::now();
        // A fresh spinner awaits its first replies spinning.
        assert_eq!(s.budget(t0, None), SPIN);
        // No traffic: the window closes `idle_after` after the last hot wait.
        assert_eq!(s.budget(t0 + IDLE / 2, None), SPIN);
        assert_eq!(s.budget(t0 + IDLE - SPIN / 2, None), SPIN / 2);
        assert_eq!(s.budget(t0 + IDLE, None), Duration::ZERO);
        assert_eq!(s.budget(t0 + 10 * IDLE, None), Duration::ZERO);
        // A lone frame after the quiet spell (a heartbeat) does not reopen it...
        s.busy();
        assert_eq!(s.budget(t0 + 11 * IDLE, None), Duration::ZERO);
        // ...a second one soon after does.
        s.busy();
        assert_eq!(s.budget(t0 + 11 * IDLE + IDLE / 2, None), SPIN);
        // The wait's own timeout caps the budget.
        assert_eq!(
            s.budget(t0 + 11 * IDLE + IDLE / 2, Some(Duration::from_micros(5))),
            Duration::from_micros(5)
        );
        // Frames further apart than `idle_after` never make it hot.
        s.busy();
        assert_eq!(s.budget(t0 + 20 * IDLE, None), Duration::ZERO);
        s.busy();
        assert_eq!(s.budget(t0 + 22 * IDLE, None), Duration::ZERO);
    }

    #[test]
    fn a_request_sent_makes_it_hot_at_once() {
        let mut s = adaptive();
        let t0 = Instant::now();
        assert_eq!(s.budget(t0, None), SPIN);
        assert_eq!(s.budget(t0 + 5 * IDLE, None), Duration::ZERO);
        s.expect_reply();
        assert_eq!(s.budget(t0 + 6 * IDLE, None), SPIN);
    }

    #[test]
    fn always_spins_for_the_whole_timeout_even_when_quiet() {
        let mut s = Spinner::new(SpinConfig {
            spin: SPIN,
            mode: SpinMode::Always,
        });
        let t0 = Instant::now();
        let long = Some(Duration::from_secs(1));
        assert_eq!(s.budget(t0 + 100 * IDLE, long), Duration::from_secs(1));
        assert_eq!(s.budget(t0 + 100 * IDLE, None), Duration::MAX);
    }

    #[test]
    fn zero_budget_never_calls_ready() {
        let mut s = Spinner::new(SpinConfig::never());
        let t0 = Instant::now();
        let spun = s
            .spin(
                t0,
                Some(Duration::from_millis(3)),
                |_| -> io::Result<bool> { panic!("a zero budget must not poll") },
            )
            .expect("no error");
        assert_eq!(spun, Spun::Sleep(Some(Duration::from_millis(3))));
    }
}

/// Keeps this process's memory resident, as corosync and ctdbd do: a lock manager that waits
/// for a page-in (its code evicted from the page cache, which proactive reclaim such as DAMON
/// does to idle-looking pages) stalls its failure detection and its replies. Every page is
/// locked once touched (`MCL_ONFAULT`, so address space that is only reserved, such as the
/// allocator's arenas and thread stacks, does not become resident), and the file-backed
/// executable mappings (this program's code and its libraries') are faulted in and locked
/// now, so that a path first run during a failover does not wait for the disk either.
/// Returns the bytes of code locked. Needs CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK.
pub fn lock_memory() -> io::Result<usize> {
    // SAFETY: mlockall takes flags only; it changes which pages stay resident, never what
    // any address maps to.
    cvt(unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) })?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut locked = 0;
    for (start, end) in executable_file_mappings(&maps) {
        // SAFETY: [start, end) is a mapping of this process as the kernel listed it; mlock
        // only faults its pages in and pins them (a range unmapped meanwhile fails ENOMEM).
        if unsafe { libc::mlock(start as *const libc::c_void, end - start) } == 0 {
            locked += end - start;
        }
    }
    Ok(locked)
}

/// The `(start, end)` of every executable, file-backed mapping in a `/proc/PID/maps` text.
fn executable_file_mappings(maps: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    maps.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let perms = fields.next()?;
        // offset, device, inode, then the path (absent for anonymous mappings).
        let path = fields.nth(3)?;
        if !perms.contains('x') || !path.starts_with('/') {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        (end > start).then_some((start, end))
    })
}

#[cfg(test)]
mod lock_memory_tests {
    use super::executable_file_mappings;

    #[test]
    fn only_executable_file_mappings_are_listed() {
        let maps = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 fd:01 123 /usr/bin/lockmgrd
55d0c0b00000-55d0c0f00000 r-xp 00100000 fd:01 123 /usr/bin/lockmgrd
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000200000-7f0000300000 r-xp 00000000 00:00 0 [vdso]
7f0000400000-7f0000500000 r-xp 00028000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
garbage line
";
        let got: Vec<_> = executable_file_mappings(maps).collect();
        assert_eq!(
            got,
            vec![
                (0x55d0c0b00000, 0x55d0c0f00000),
                (0x7f0000400000, 0x7f0000500000)
            ]
        );
    }
}
