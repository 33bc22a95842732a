//! Shared-memory transport: one memfd per client holding two SPSC byte rings.
//!
//! Set-up: the client connects to the server's unix stream socket; the server creates a memfd
//! with both rings plus two eventfd doorbells and passes all three with `SCM_RIGHTS`. After that
//! the socket carries nothing; it exists so that either side sees EOF/HUP promptly when the other
//! process dies (even by SIGKILL).
//!
//! Rings carry records `[len: u64][payload, padded to 8]`; `head` (producer) and `tail`
//! (consumer) are monotonically increasing byte counters on separate 128-byte lines (two lines so
//! the adjacent-line prefetcher does not create false sharing). The payload may wrap around the
//! ring end; the 8-byte header never does because records are 8-aligned and the capacity is a
//! power of two.
//!
//! Sleeping: a consumer about to block sets `sleeping` in its ring, issues a full fence and
//! re-checks `head`; a producer publishes `head`, fences and only then checks `sleeping`. With a
//! SeqCst fence on both sides at least one sees the other's store, so no wake-up is lost and the
//! busy path makes no syscalls.
//!
//! Trust: the peer can scribble anything into the shared region. Each side keeps its own
//! counters locally, never re-reads them from shared memory, and validates every counter and
//! length it reads from the peer; a violation is treated as a disconnect. Frames are copied out
//! of the ring before being handed to the caller so the peer cannot change them underneath.

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::{self, Epoll, EventFdWaker, MmapRegion};
use crate::{
    check_frame_len, ClientTransport, ServerEvent, ServerTransport, SpinConfig, TransportError,
    Waker, MAX_FRAME,
};

const MAGIC: u64 = 0x314d_4853_474d_4b4c; // "LKMGSHM1" little-endian
const VERSION: u32 = 1;
const LINE: usize = 128;
/// Ring control blocks: `head` at +0, `tail` at +LINE, consumer `sleeping` at +2*LINE.
const C2S_CTRL: usize = LINE;
const S2C_CTRL: usize = 4 * LINE;
const DATA_OFF: usize = 8 * LINE;
const HDR: usize = 8;
const MIN_RING: usize = 32 * 1024;
const MAX_RING: usize = 1 << 30;
const HELLO_LEN: usize = 24;
/// Frames drained from one peer per `poll`, so one chatty peer cannot starve the rest.
const PEER_BUDGET: usize = 1024;
/// The server checks sockets (accept, EOF) on every Nth `poll` even when nobody sleeps (N must
/// be a power of two).
const IO_CHECK_INTERVAL: u32 = 64;

const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_WAKER: u64 = u64::MAX - 1;

fn record_len(len: usize) -> usize {
    HDR + ((len + 7) & !7)
}

fn region_len(ring_bytes: usize) -> usize {
    DATA_OFF + 2 * ring_bytes
}

fn valid_ring_bytes(n: usize) -> bool {
    n.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&n)
}

/// The peer wrote something impossible into shared memory.
#[derive(Debug)]
struct Corrupt(&'static str);

enum PushError {
    Full,
    Corrupt(Corrupt),
}

/// One direction's ring inside a shared region.
struct RingView {
    region: Arc<MmapRegion>,
    ctrl: usize,
    data: usize,
    cap: usize,
}

impl RingView {
    /// `ctrl`/`data`/`cap` must describe memory inside `region`, which the constructors
    /// guarantee by checking `region.len() >= region_len(cap)`.
    fn new(region: Arc<MmapRegion>, ctrl: usize, data: usize, cap: usize) -> Option<Self> {
        if !valid_ring_bytes(cap) || region.len() < region_len(cap) || data + cap > region.len() {
            return None;
        }
        Some(RingView {
            region,
            ctrl,
            data,
            cap,
        })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off & 7 == 0 && off + 8 <= self.region.len());
        // SAFETY: every caller passes an 8-aligned offset inside the mapping (control offsets are
        // constants below DATA_OFF; data offsets are masked by `cap - 1` and 8-aligned); the
        // mapping is page-aligned, lives as long as `self.region`, and is only ever accessed
        // atomically at these offsets.
        unsafe { &*self.region.as_ptr().add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off & 3 == 0 && off + 4 <= self.region.len());
        // SAFETY: as for `u64_at`.
        unsafe { &*self.region.as_ptr().add(off).cast::<AtomicU32>() }
    }

    fn head(&self) -> &AtomicU64 {
        self.u64_at(self.ctrl)
    }

    fn tail(&self) -> &AtomicU64 {
        self.u64_at(self.ctrl + LINE)
    }

    fn sleeping(&self) -> &AtomicU32 {
        self.u32_at(self.ctrl + 2 * LINE)
    }

    fn header(&self, pos: u64) -> &AtomicU64 {
        self.u64_at(self.data + (pos as usize & (self.cap - 1)))
    }

    fn write(&self, pos: u64, src: &[u8]) {
        let off = pos as usize & (self.cap - 1);
        let first = src.len().min(self.cap - off);
        // SAFETY: `off + first <= cap` and `src.len() - first <= cap` (frames are far smaller
        // than the ring), so both copies stay inside the data area of the mapping; `src` is a
        // separate process-local buffer, so the ranges do not overlap.
        unsafe {
            let base = self.region.as_ptr().add(self.data);
            std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(off), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), base, src.len() - first);
        }
    }

    fn read(&self, pos: u64, dst: &mut [u8]) {
        let off = pos as usize & (self.cap - 1);
        let first = dst.len().min(self.cap - off);
        // SAFETY: as in `write`, with source and destination swapped. A malicious peer may write
        // these bytes concurrently; we only copy them into a private buffer and never form a
        // reference to the shared bytes.
        unsafe {
            let base = self.region.as_ptr().add(self.data);
            std::ptr::copy_nonoverlapping(base.add(off), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(base, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }
}

struct Producer {
    ring: RingView,
    head: u64,
    tail_cache: u64,
}

impl Producer {
    fn new(ring: RingView) -> Self {
        Producer {
            ring,
            head: 0,
            tail_cache: 0,
        }
    }

    /// Returns whether the consumer was asleep and must be signalled.
    fn push(&mut self, frame: &[u8]) -> Result<bool, PushError> {
        let rec = record_len(frame.len()) as u64;
        let cap = self.ring.cap as u64;
        if self.head - self.tail_cache + rec > cap {
            let t = self.ring.tail().load(Ordering::Acquire);
            if t < self.tail_cache || t > self.head || t & 7 != 0 {
                return Err(PushError::Corrupt(Corrupt("ring tail out of range")));
            }
            self.tail_cache = t;
            if self.head - t + rec > cap {
                return Err(PushError::Full);
            }
        }
        self.ring
            .header(self.head)
            .store(frame.len() as u64, Ordering::Relaxed);
        self.ring.write(self.head + HDR as u64, frame);
        self.head += rec;
        self.ring.head().store(self.head, Ordering::Release);
        // Pairs with the fence in `Consumer::arm` (see module docs).
        fence(Ordering::SeqCst);
        let sleeping = self.ring.sleeping();
        if sleeping.load(Ordering::Relaxed) != 0 {
            sleeping.store(0, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }
}

struct Consumer {
    ring: RingView,
    tail: u64,
    head_cache: u64,
    armed: bool,
}

impl Consumer {
    fn new(ring: RingView) -> Self {
        Consumer {
            ring,
            tail: 0,
            head_cache: 0,
            armed: false,
        }
    }

    fn has_data(&self) -> bool {
        self.head_cache != self.tail || self.ring.head().load(Ordering::Acquire) != self.tail
    }

    /// Copies the next frame into `buf`; `Ok(None)` when empty.
    fn pop(&mut self, buf: &mut [u8; MAX_FRAME]) -> Result<Option<usize>, Corrupt> {
        if self.tail == self.head_cache {
            let h = self.ring.head().load(Ordering::Acquire);
            if h < self.tail || h - self.tail > self.ring.cap as u64 || h & 7 != 0 {
                return Err(Corrupt("ring head out of range"));
            }
            self.head_cache = h;
            if h == self.tail {
                return Ok(None);
            }
        }
        let avail = self.head_cache - self.tail;
        if avail < HDR as u64 {
            return Err(Corrupt("truncated record header"));
        }
        let len = self.ring.header(self.tail).load(Ordering::Relaxed);
        if len > MAX_FRAME as u64 {
            return Err(Corrupt("record length exceeds MAX_FRAME"));
        }
        let len = len as usize;
        let rec = record_len(len) as u64;
        if rec > avail {
            return Err(Corrupt("record extends past head"));
        }
        self.ring.read(self.tail + HDR as u64, &mut buf[..len]);
        self.tail += rec;
        self.ring.tail().store(self.tail, Ordering::Release);
        Ok(Some(len))
    }

    /// Announce sleep; false if data arrived meanwhile (then do not sleep).
    fn arm(&mut self) -> bool {
        self.armed = true;
        self.ring.sleeping().store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.ring.head().load(Ordering::SeqCst) != self.tail {
            self.disarm();
            return false;
        }
        true
    }

    fn disarm(&mut self) {
        if self.armed {
            self.armed = false;
            self.ring.sleeping().store(0, Ordering::Relaxed);
        }
    }
}

/// Configuration of the shared-memory server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmConfig {
    /// Bytes per ring direction; power of two in 32 KiB ..= 1 GiB.
    pub ring_bytes: usize,
    /// Busy-poll budget of `wait`.
    pub spin: SpinConfig,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            ring_bytes: 256 * 1024,
            spin: SpinConfig::default(),
        }
    }
}

/// Hello sent with the fds: magic, version, ring_bytes, region_len.
fn encode_hello(ring_bytes: usize) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(ring_bytes as u32).to_le_bytes());
    b[16..24].copy_from_slice(&(region_len(ring_bytes) as u64).to_le_bytes());
    b
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Reads the (non-blocking) control socket: `true` while the peer is alive. The peer never sends
/// anything after set-up, so data counts as a protocol violation.
fn sock_alive(sock: &UnixStream) -> bool {
    let mut b = [0u8; 16];
    match (&*sock).read(&mut b) {
        Ok(0) => false,
        Ok(_) => {
            tracing::warn!("unexpected data on shm control socket");
            false
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => true,
        Err(_) => false,
    }
}

struct ShmPeer {
    sock: UnixStream,
    rx: Consumer,
    tx: Producer,
    /// Client -> server doorbell (we wait on it).
    rx_bell: OwnedFd,
    /// Server -> client doorbell (we signal it).
    tx_bell: OwnedFd,
    dead: bool,
}

/// Shared-memory server listening on a unix socket path.
pub struct ShmServer {
    listener: UnixListener,
    path: PathBuf,
    epoll: Epoll,
    waker: Arc<EventFdWaker>,
    peers: HashMap<u64, ShmPeer>,
    next_id: u64,
    cfg: ShmConfig,
    scratch: Box<[u8; MAX_FRAME]>,
    events: Vec<(u64, u32)>,
    polls: u32,
    io_due: bool,
}

impl ShmServer {
    /// Listen at `path` (a unix socket path; a stale socket file there is replaced).
    pub fn bind(path: impl AsRef<Path>, cfg: ShmConfig) -> Result<Self, TransportError> {
        if !valid_ring_bytes(cfg.ring_bytes) {
            return Err(TransportError::Config(
                "ring_bytes must be a power of two in 32 KiB..=1 GiB",
            ));
        }
        let path = path.as_ref().to_path_buf();
        // Replace a stale socket left by a dead server, but never delete anything else.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(TransportError::Config(
                    "shm path exists and is not a socket",
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let waker = Arc::new(EventFdWaker::new()?);
        epoll.add(listener.as_raw_fd(), TOKEN_LISTENER)?;
        epoll.add(waker.fd(), TOKEN_WAKER)?;
        tracing::debug!(path = %path.display(), "shm server listening");
        Ok(ShmServer {
            listener,
            path,
            epoll,
            waker,
            peers: HashMap::new(),
            next_id: 1,
            cfg,
            scratch: Box::new([0u8; MAX_FRAME]),
            events: Vec::with_capacity(64),
            polls: 0,
            io_due: true,
        })
    }

    /// The socket path clients connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of connected peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    fn setup_peer(&mut self, sock: UnixStream) -> Result<u64, TransportError> {
        let ring = self.cfg.ring_bytes;
        let len = region_len(ring);
        let memfd = sys::memfd(c"lockmgr-shm", len as u64)?;
        let region = Arc::new(MmapRegion::map(&memfd, len)?);
        let magic = region
            .atomic_u64(0)
            .ok_or(TransportError::Protocol("region too small"))?;
        let rx_bell = sys::eventfd()?;
        let tx_bell = sys::eventfd()?;
        let c2s = RingView::new(region.clone(), C2S_CTRL, DATA_OFF, ring)
            .ok_or(TransportError::Config("bad ring layout"))?;
        let s2c = RingView::new(region.clone(), S2C_CTRL, DATA_OFF + ring, ring)
            .ok_or(TransportError::Config("bad ring layout"))?;
        magic.store(MAGIC, Ordering::Release);
        // The accepted socket is blocking and empty, so this small sendmsg cannot stall.
        sock.set_nonblocking(false)?;
        sys::send_with_fds(
            sock.as_raw_fd(),
            &encode_hello(ring),
            &[memfd.as_raw_fd(), rx_bell.as_raw_fd(), tx_bell.as_raw_fd()],
        )?;
        sock.set_nonblocking(true)?;
        let id = self.next_id;
        self.next_id += 1;
        self.epoll.add(sock.as_raw_fd(), id << 1)?;
        if let Err(e) = self.epoll.add(rx_bell.as_raw_fd(), (id << 1) | 1) {
            self.epoll.del(sock.as_raw_fd());
            return Err(e.into());
        }
        self.peers.insert(
            id,
            ShmPeer {
                sock,
                rx: Consumer::new(c2s),
                tx: Producer::new(s2c),
                rx_bell,
                tx_bell,
                dead: false,
            },
        );
        Ok(id)
    }

    fn remove_peer(&mut self, id: u64) -> bool {
        match self.peers.remove(&id) {
            Some(p) => {
                // Explicit removal: the client holds duplicates of the eventfd, so closing our fd
                // would not drop it from the epoll interest list.
                self.epoll.del(p.sock.as_raw_fd());
                self.epoll.del(p.rx_bell.as_raw_fd());
                true
            }
            None => false,
        }
    }

    /// Accepts, notices dead sockets and drains doorbells.
    fn process_io(&mut self, f: &mut dyn FnMut(ServerEvent<'_>)) -> Result<usize, TransportError> {
        let mut n = 0;
        let mut events = std::mem::take(&mut self.events);
        let r = self.epoll.wait(&mut events, Some(Duration::ZERO));
        if let Err(e) = r {
            self.events = events;
            return Err(e.into());
        }
        for &(token, _ev) in &events {
            match token {
                TOKEN_LISTENER => loop {
                    match self.listener.accept() {
                        Ok((sock, _)) => match self.setup_peer(sock) {
                            Ok(id) => {
                                tracing::debug!(peer = id, "shm peer connected");
                                f(ServerEvent::Connected(crate::PeerId(id)));
                                n += 1;
                            }
                            Err(e) => tracing::warn!(error = %e, "shm peer set-up failed"),
                        },
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "shm accept failed");
                            break;
                        }
                    }
                },
                TOKEN_WAKER => sys::eventfd_drain(self.waker.fd()),
                t if t & 1 == 1 => {
                    if let Some(p) = self.peers.get(&(t >> 1)) {
                        sys::eventfd_drain(p.rx_bell.as_raw_fd());
                    }
                }
                t => {
                    if let Some(p) = self.peers.get_mut(&(t >> 1)) {
                        if !sock_alive(&p.sock) {
                            p.dead = true;
                        }
                    }
                }
            }
        }
        self.events = events;
        Ok(n)
    }

    fn any_rx_data(&self) -> bool {
        self.peers.values().any(|p| p.rx.has_data() || p.dead)
    }
}

impl Drop for ShmServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ServerTransport for ShmServer {
    fn poll(&mut self, f: &mut dyn FnMut(ServerEvent<'_>)) -> Result<usize, TransportError> {
        let mut n = 0;
        self.polls = self.polls.wrapping_add(1);
        if self.io_due || self.polls & (IO_CHECK_INTERVAL - 1) == 0 {
            self.io_due = false;
            n += self.process_io(f)?;
        }
        let mut any_dead = false;
        for (&id, peer) in self.peers.iter_mut() {
            for _ in 0..PEER_BUDGET {
                match peer.rx.pop(&mut self.scratch) {
                    Ok(Some(len)) => {
                        f(ServerEvent::Frame(crate::PeerId(id), &self.scratch[..len]));
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(Corrupt(why)) => {
                        tracing::warn!(peer = id, why, "corrupt shm ring; dropping peer");
                        peer.dead = true;
                        break;
                    }
                }
            }
            any_dead |= peer.dead;
        }
        if any_dead {
            let dead: Vec<u64> = self
                .peers
                .iter()
                .filter(|(_, p)| p.dead)
                .map(|(&id, _)| id)
                .collect();
            for id in dead {
                self.remove_peer(id);
                tracing::debug!(peer = id, "shm peer disconnected");
                f(ServerEvent::Disconnected(crate::PeerId(id)));
                n += 1;
            }
        }
        Ok(n)
    }

    fn send(&mut self, peer: crate::PeerId, frame: &[u8]) -> Result<(), TransportError> {
        check_frame_len(frame)?;
        let p = self
            .peers
            .get_mut(&peer.0)
            .ok_or(TransportError::UnknownPeer(peer))?;
        if p.dead {
            return Err(TransportError::Disconnected);
        }
        match p.tx.push(frame) {
            Ok(false) => Ok(()),
            Ok(true) => {
                sys::eventfd_signal(p.tx_bell.as_raw_fd())?;
                Ok(())
            }
            Err(PushError::Full) => {
                // A dead client never drains; make the next poll look at the sockets.
                self.io_due = true;
                Err(TransportError::Full)
            }
            Err(PushError::Corrupt(Corrupt(why))) => {
                tracing::warn!(peer = peer.0, why, "corrupt shm ring; dropping peer");
                p.dead = true;
                Err(TransportError::Disconnected)
            }
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.io_due || self.waker.take() {
            return Ok(());
        }
        let start = Instant::now();
        let spin = match timeout {
            Some(t) => t.min(self.cfg.spin.spin),
            None => self.cfg.spin.spin,
        };
        if !spin.is_zero() {
            let mut i: u32 = 0;
            loop {
                if self.any_rx_data() || self.waker.take() {
                    return Ok(());
                }
                i = i.wrapping_add(1);
                if i & 63 == 0 && start.elapsed() >= spin {
                    break;
                }
                if i & 4095 == 0 {
                    // Connects and deaths are not latency critical but must not wait for the
                    // whole spin budget when it is long.
                    let mut events = std::mem::take(&mut self.events);
                    let r = self.epoll.wait(&mut events, Some(Duration::ZERO));
                    self.events = events;
                    if r? > 0 {
                        self.io_due = true;
                        return Ok(());
                    }
                }
                std::hint::spin_loop();
            }
        }
        let remaining = timeout.map(|t| t.saturating_sub(start.elapsed()));
        if !self.waker.prepare_sleep() {
            self.waker.take();
            return Ok(());
        }
        let mut ready = false;
        for p in self.peers.values_mut() {
            if !p.rx.arm() || p.dead {
                ready = true;
                break;
            }
        }
        let mut r = Ok(0);
        if !ready {
            let mut events = std::mem::take(&mut self.events);
            r = self.epoll.wait(&mut events, remaining);
            self.events = events;
        }
        for p in self.peers.values_mut() {
            p.rx.disarm();
        }
        self.waker.finish_sleep();
        self.waker.take();
        if r? > 0 {
            self.io_due = true;
        }
        Ok(())
    }

    fn waker(&self) -> Waker {
        Waker::new(self.waker.clone())
    }

    fn close_peer(&mut self, peer: crate::PeerId) {
        if self.remove_peer(peer.0) {
            tracing::debug!(peer = peer.0, "shm peer closed by server");
        }
    }
}

/// Shared-memory client (normally in another process than the server).
pub struct ShmClient {
    sock: UnixStream,
    tx: Producer,
    rx: Consumer,
    /// Client -> server doorbell (we signal it).
    tx_bell: OwnedFd,
    /// Server -> client doorbell (we wait on it).
    rx_bell: OwnedFd,
    /// Watches `rx_bell` and `sock`, so one fd serves external event loops.
    epoll: Epoll,
    events: Vec<(u64, u32)>,
    spin: SpinConfig,
    scratch: Box<[u8; MAX_FRAME]>,
    dead: bool,
    polls: u32,
}

impl ShmClient {
    /// Connect to a [`ShmServer`] at `path`; waits up to `timeout` for the set-up message.
    pub fn connect(
        path: impl AsRef<Path>,
        spin: SpinConfig,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let sock = UnixStream::connect(path.as_ref())?;
        sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut hello = [0u8; HELLO_LEN + 8];
        let mut fds = Vec::new();
        let n = match sys::recv_with_fds(sock.as_raw_fd(), &mut hello, &mut fds) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return Err(TransportError::Timeout)
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(TransportError::Disconnected);
        }
        if n != HELLO_LEN || le_u64(&hello[0..8]) != MAGIC || le_u32(&hello[8..12]) != VERSION {
            return Err(TransportError::Protocol("bad shm hello"));
        }
        let ring = le_u32(&hello[12..16]) as usize;
        let len = le_u64(&hello[16..24]);
        if !valid_ring_bytes(ring) || len != region_len(ring) as u64 {
            return Err(TransportError::Protocol("bad shm ring size"));
        }
        let mut fds = fds.into_iter();
        let (Some(memfd), Some(tx_bell), Some(rx_bell), None) =
            (fds.next(), fds.next(), fds.next(), fds.next())
        else {
            return Err(TransportError::Protocol("shm hello must carry three fds"));
        };
        if sys::fd_size(&memfd)? < len {
            return Err(TransportError::Protocol(
                "shm region smaller than announced",
            ));
        }
        let region = Arc::new(MmapRegion::map(&memfd, len as usize)?);
        let magic_ok = region
            .atomic_u64(0)
            .is_some_and(|m| m.load(Ordering::Acquire) == MAGIC);
        if !magic_ok {
            return Err(TransportError::Protocol("bad shm region magic"));
        }
        let bad = || TransportError::Protocol("bad shm ring layout");
        let c2s = RingView::new(region.clone(), C2S_CTRL, DATA_OFF, ring).ok_or_else(bad)?;
        let s2c = RingView::new(region, S2C_CTRL, DATA_OFF + ring, ring).ok_or_else(bad)?;
        sock.set_read_timeout(None)?;
        sock.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.add(rx_bell.as_raw_fd(), 1)?;
        epoll.add(sock.as_raw_fd(), 0)?;
        Ok(ShmClient {
            sock,
            tx: Producer::new(c2s),
            rx: Consumer::new(s2c),
            tx_bell,
            rx_bell,
            epoll,
            events: Vec::with_capacity(4),
            spin,
            scratch: Box::new([0u8; MAX_FRAME]),
            dead: false,
            polls: 0,
        })
    }

    fn check_alive(&mut self) {
        if !self.dead && !sock_alive(&self.sock) {
            tracing::debug!("shm server went away");
            self.dead = true;
        }
    }
}

impl ClientTransport for ShmClient {
    fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        check_frame_len(frame)?;
        if self.dead {
            return Err(TransportError::Disconnected);
        }
        match self.tx.push(frame) {
            Ok(false) => Ok(()),
            Ok(true) => {
                sys::eventfd_signal(self.tx_bell.as_raw_fd())?;
                Ok(())
            }
            Err(PushError::Full) => {
                self.check_alive();
                if self.dead {
                    Err(TransportError::Disconnected)
                } else {
                    Err(TransportError::Full)
                }
            }
            Err(PushError::Corrupt(Corrupt(why))) => {
                tracing::warn!(why, "corrupt shm ring; disconnecting");
                self.dead = true;
                Err(TransportError::Disconnected)
            }
        }
    }

    fn poll(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<usize, TransportError> {
        self.rx.disarm();
        self.polls = self.polls.wrapping_add(1);
        let mut n = 0;
        for _ in 0..PEER_BUDGET {
            match self.rx.pop(&mut self.scratch) {
                Ok(Some(len)) => {
                    f(&self.scratch[..len]);
                    n += 1;
                }
                Ok(None) => break,
                Err(Corrupt(why)) => {
                    tracing::warn!(why, "corrupt shm ring; disconnecting");
                    self.dead = true;
                    break;
                }
            }
        }
        if n == 0 {
            if self.polls & (IO_CHECK_INTERVAL - 1) == 0 {
                self.check_alive();
            }
            if self.dead {
                return Err(TransportError::Disconnected);
            }
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.dead {
            return Ok(());
        }
        let start = Instant::now();
        let spin = match timeout {
            Some(t) => t.min(self.spin.spin),
            None => self.spin.spin,
        };
        if !spin.is_zero() {
            let mut i: u32 = 0;
            loop {
                if self.rx.has_data() {
                    return Ok(());
                }
                i = i.wrapping_add(1);
                if i & 63 == 0 && start.elapsed() >= spin {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        if !self.rx.arm() {
            return Ok(());
        }
        let remaining = timeout.map(|t| t.saturating_sub(start.elapsed()));
        let mut events = std::mem::take(&mut self.events);
        let r = self.epoll.wait(&mut events, remaining);
        self.rx.disarm();
        let mut sock_ready = false;
        for &(token, _) in &events {
            if token == 1 {
                sys::eventfd_drain(self.rx_bell.as_raw_fd());
            } else {
                sock_ready = true;
            }
        }
        self.events = events;
        r?;
        if sock_ready {
            self.check_alive();
        }
        Ok(())
    }

    fn as_raw_fd(&self) -> Option<RawFd> {
        Some(self.epoll_fd())
    }

    fn arm(&mut self) -> Result<bool, TransportError> {
        sys::eventfd_drain(self.rx_bell.as_raw_fd());
        if self.dead {
            return Ok(false);
        }
        Ok(self.rx.arm())
    }
}

impl ShmClient {
    fn epoll_fd(&self) -> RawFd {
        self.epoll.raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn pair(name: &str) -> (ShmServer, ShmClient, crate::PeerId) {
        let path = std::env::temp_dir().join(format!("lmt-u-{name}-{}.sock", std::process::id()));
        let mut server = ShmServer::bind(&path, ShmConfig::default()).unwrap();
        let p2 = path.clone();
        let t = std::thread::spawn(move || {
            ShmClient::connect(&p2, SpinConfig::default(), Duration::from_secs(20)).unwrap()
        });
        let mut peer = None;
        let start = Instant::now();
        while peer.is_none() {
            assert!(start.elapsed() < Duration::from_secs(20));
            server
                .poll(&mut |ev| {
                    if let ServerEvent::Connected(p) = ev {
                        peer = Some(p);
                    }
                })
                .unwrap();
        }
        (server, t.join().unwrap(), peer.unwrap())
    }

    /// Polls until the peer is reported gone; every frame seen must be a valid length.
    fn expect_disconnect(server: &mut ShmServer, peer: crate::PeerId) {
        let mut gone = false;
        for _ in 0..10 {
            server
                .poll(&mut |ev| match ev {
                    ServerEvent::Disconnected(p) => {
                        assert_eq!(p, peer);
                        gone = true;
                    }
                    ServerEvent::Frame(_, b) => assert!(b.len() <= MAX_FRAME),
                    ServerEvent::Connected(_) => panic!("unexpected connect"),
                })
                .unwrap();
            if gone {
                return;
            }
        }
        panic!("corrupt peer not disconnected");
    }

    #[test]
    fn oversized_length_in_ring_disconnects() {
        let (mut server, client, peer) = pair("len");
        let ring = &client.tx.ring;
        ring.header(0)
            .store(MAX_FRAME as u64 + 1, Ordering::Relaxed);
        ring.head()
            .store(record_len(MAX_FRAME) as u64, Ordering::Release);
        expect_disconnect(&mut server, peer);
        assert!(matches!(
            server.send(peer, b"x"),
            Err(TransportError::UnknownPeer(_))
        ));
    }

    #[test]
    fn length_past_head_disconnects() {
        let (mut server, client, peer) = pair("past");
        let ring = &client.tx.ring;
        ring.header(0).store(100, Ordering::Relaxed);
        ring.head().store(16, Ordering::Release);
        expect_disconnect(&mut server, peer);
    }

    #[test]
    fn head_beyond_capacity_disconnects() {
        let (mut server, client, peer) = pair("head");
        client.tx.ring.head().store(u64::MAX - 7, Ordering::Release);
        expect_disconnect(&mut server, peer);
    }

    #[test]
    fn bogus_tail_from_client_disconnects_on_send() {
        let (mut server, client, peer) = pair("tail");
        client.rx.ring.tail().store(1 << 40, Ordering::Release);
        let frame = [7u8; 1000];
        let mut result = Ok(());
        for _ in 0..1000 {
            result = server.send(peer, &frame);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(TransportError::Disconnected)));
        expect_disconnect(&mut server, peer);
    }

    #[test]
    fn random_garbage_never_panics_server() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for case in 0..50 {
            let (mut server, mut client, _peer) = pair(&format!("fuzz{case}"));
            for i in 0..rng.gen_range(0..20) {
                let _ = client.send(&vec![i as u8; rng.gen_range(0..3000)]);
            }
            let ring = &client.tx.ring;
            for _ in 0..rng.gen_range(1..8) {
                let word: u64 = match rng.gen_range(0..3) {
                    0 => rng.gen(),
                    1 => rng.gen_range(0..2 * MAX_FRAME as u64),
                    _ => rng.gen_range(0..ring.cap as u64),
                };
                match rng.gen_range(0..3) {
                    0 => ring.head().store(word, Ordering::Release),
                    1 => ring
                        .header(rng.gen_range(0..ring.cap as u64 / 8) * 8)
                        .store(word, Ordering::Relaxed),
                    _ => client.rx.ring.tail().store(word, Ordering::Release),
                }
            }
            for _ in 0..5 {
                server
                    .poll(&mut |ev| {
                        if let ServerEvent::Frame(_, b) = ev {
                            assert!(b.len() <= MAX_FRAME);
                        }
                    })
                    .unwrap();
                let _ = server.send(_peer, &[1u8; 4000]);
            }
        }
    }
}
