//! Shared-memory transport: one memfd per client holding two SPSC byte rings.
//!
//! Set-up: the client connects to the server's unix stream socket; the server creates a memfd
//! with both rings plus two eventfd doorbells and passes all three with `SCM_RIGHTS`. After that
//! the socket carries nothing; it exists so that either side sees EOF/HUP promptly when the other
//! process dies (even by SIGKILL).
//!
//! Rings carry records `[header: u64][payload, padded to 8]`. The header is the publication
//! flag: `tag << 32 | len`, where `tag` (never zero) is derived from the record's byte position,
//! and an all-zero header means "nothing here yet". The producer keeps free space ahead of its
//! position cleared (a chunk at a time), so the slot after each record reads as empty until
//! the next record is published there. The consumer thus polls exactly one word, the header at
//! its own `tail`, and that word shares a cache line with the start of the payload: a small
//! frame costs one line transfer each way, like the raw ping-pong baseline, instead of one for a
//! separate `head` counter plus one for the record. The consumer publishes its `tail` byte
//! counter (on its own 128-byte line, so the adjacent-line prefetcher creates no false sharing)
//! once per `poll`; the producer reads it only when its cached copy says the ring is full. The
//! payload may wrap around the ring end; the header never does because records are 8-aligned
//! and the capacity is a power of two.
//!
//! Sleeping: a consumer about to block sets `sleeping` in its ring and re-checks the header at
//! its tail; a producer publishes the header and only then checks `sleeping`. All four accesses
//! are `SeqCst` (the publishing store is a `swap`, on x86 one locked `xchg` instead of a store
//! plus `mfence`), so in the single total order of `SeqCst` operations at least one side sees
//! the other's store: no wake-up is lost and the busy path makes no syscalls.
//!
//! Trust: the peer can scribble anything into the shared region, concurrently with our reads.
//! Each side keeps its own counters locally, never re-reads them from shared memory, and
//! validates every counter, tag and length it reads from the peer; a violation is treated as a
//! disconnect. Every read is masked into the ring, so no value the peer writes can move a read
//! out of bounds.
//!
//! Frames are copied out of the ring into a private buffer before being handed to the caller,
//! even when they are contiguous in the ring. Handing out a `&[u8]` into the shared mapping would
//! promise the compiler that the bytes do not change while the slice lives, which a hostile peer
//! can break at will: a decoder that checks a tag or length and then re-reads it (the compiler
//! may legally re-load instead of keeping a register copy) could then act on an unchecked value.
//! The copy is what makes every decoder safe against a concurrently writing peer; for lock
//! requests (tens of bytes, mostly in the line the header already brought in) it is a few
//! instructions, and the raw baseline copies its payload words too.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::{self, Epoll, EventFdWaker, MmapRegion, Spinner, Spun};
use crate::{
    check_frame_len, ClientTransport, PeerId, ServerEvent, ServerTransport, SpinConfig,
    TransportError, Waker, MAX_FRAME,
};

const MAGIC: u64 = 0x314d_4853_474d_4b4c; // "LKMGSHM1" little-endian
/// 2: header-flagged records (version 1 published a separate `head` counter).
const VERSION: u32 = 2;
const LINE: usize = 128;
/// Ring control blocks: consumer `tail` at +LINE, consumer `sleeping` at +2*LINE (+0 unused).
const C2S_CTRL: usize = LINE;
const S2C_CTRL: usize = 4 * LINE;
const DATA_OFF: usize = 8 * LINE;
const HDR: usize = 8;
const MIN_RING: usize = 32 * 1024;
const MAX_RING: usize = 1 << 30;
const HELLO_LEN: usize = 24;
/// Frames drained from one peer per `poll`, so one chatty peer cannot starve the rest.
const PEER_BUDGET: usize = 1024;
/// Bytes of free ring space the producer clears at a time (see `Producer::zero_ahead`).
const ZERO_AHEAD: u64 = 2048;
/// The server checks sockets (accept, EOF) on every Nth `poll` even when nobody sleeps, and the
/// client checks its socket on every Nth empty `poll` (N must be a power of two). Each check is
/// a syscall, so it must be rare on the busy path; connects and deaths are not latency critical,
/// and a sleeping side notices them at once through epoll anyway.
const IO_CHECK_INTERVAL: u32 = 1024;
/// Peer ids are `serial << SLOT_BITS | slot`: the slot indexes the peer table directly (no
/// hashing on `send`), the serial makes ids unique for the life of the server.
const SLOT_BITS: u32 = 32;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

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

/// Upper half of the header of the record at byte position `pos`: never zero (so a published
/// header is never mistaken for an empty slot) and different for neighbouring records, so a
/// header written for another position is detected as corruption.
fn header_tag(pos: u64) -> u32 {
    0x8000_0000 | ((pos >> 3) as u32 & 0x7fff_ffff)
}

fn encode_header(pos: u64, len: usize) -> u64 {
    (u64::from(header_tag(pos)) << 32) | len as u64
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

    fn tail(&self) -> &AtomicU64 {
        self.u64_at(self.ctrl + LINE)
    }

    fn sleeping(&self) -> &AtomicU32 {
        self.u32_at(self.ctrl + 2 * LINE)
    }

    fn header(&self, pos: u64) -> &AtomicU64 {
        // Records are 8-aligned (positions only ever advance by `record_len`), so the masked
        // offset is 8-aligned and at most `cap - 8`: the header never wraps.
        self.u64_at(self.data + (pos as usize & (self.cap - 1)))
    }

    #[inline]
    fn write(&self, pos: u64, src: &[u8]) {
        let off = pos as usize & (self.cap - 1);
        let base = self.region.as_ptr();
        if src.len() <= self.cap - off {
            // SAFETY: `off + src.len() <= cap`, so the copy stays inside the data area of the
            // mapping; `src` is a separate process-local buffer, so the ranges do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(self.data + off), src.len())
            };
            return;
        }
        let first = self.cap - off;
        // SAFETY: `off + first == cap` and `src.len() - first <= cap` (frames are far smaller
        // than the ring), so both copies stay inside the data area; no overlap as above.
        unsafe {
            let data = base.add(self.data);
            std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(off), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }

    #[inline]
    fn read(&self, pos: u64, dst: &mut [u8]) {
        let off = pos as usize & (self.cap - 1);
        let base = self.region.as_ptr();
        if dst.len() <= self.cap - off {
            // SAFETY: as in `write`, with source and destination swapped. A malicious peer may
            // write these bytes concurrently; we only copy them into a private buffer and never
            // form a reference to the shared bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    base.add(self.data + off),
                    dst.as_mut_ptr(),
                    dst.len(),
                )
            };
            return;
        }
        let first = self.cap - off;
        // SAFETY: as in the wrapping half of `write`, source and destination swapped.
        unsafe {
            let data = base.add(self.data);
            std::ptr::copy_nonoverlapping(data.add(off), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }
}

impl RingView {
    /// Zeroes `len <= cap` bytes from the 8-aligned position `pos`, wrapping at the ring end.
    ///
    /// Whole 64-byte lines use fixed-size stores rather than `memset`, whose `rep stosb` path
    /// is cheap on hardware but counts one instruction per byte under callgrind, which would
    /// drown the instruction counts used to compare hot-path changes.
    fn zero(&self, pos: u64, len: usize) {
        debug_assert!(len <= self.cap && pos & 7 == 0 && len & 7 == 0);
        let mut off = pos as usize & (self.cap - 1);
        let mut left = len;
        while left > 0 {
            if off & 63 == 0 && left >= 64 && off + 64 <= self.cap {
                // SAFETY: `off + 64 <= cap`, so the line is inside the data area of the
                // mapping; plain bytes, no reference into shared memory is formed.
                unsafe { std::ptr::write_bytes(self.region.as_ptr().add(self.data + off), 0, 64) };
                off = (off + 64) & (self.cap - 1);
                left -= 64;
            } else {
                self.u64_at(self.data + off).store(0, Ordering::Relaxed);
                off = (off + 8) & (self.cap - 1);
                left -= 8;
            }
        }
    }
}

struct Producer {
    ring: RingView,
    head: u64,
    tail_cache: u64,
    /// Every byte in `[head, zeroed)` is zero and `zeroed <= tail_cache + cap`: the header slot
    /// after each record is known empty without a store per record.
    zeroed: u64,
}

impl Producer {
    fn new(ring: RingView) -> Self {
        Producer {
            ring,
            head: 0,
            tail_cache: 0,
            zeroed: 0,
        }
    }

    /// Returns whether the consumer was asleep and must be signalled.
    #[inline]
    fn push(&mut self, frame: &[u8]) -> Result<bool, PushError> {
        let rec = record_len(frame.len()) as u64;
        // The record and the header slot after it must lie in zeroed space, so that the
        // consumer, once past this record, sees "empty" rather than an earlier lap's bytes.
        let end = self.head + rec + HDR as u64;
        if end > self.zeroed {
            self.zero_ahead(end)?;
        }
        self.ring.write(self.head + HDR as u64, frame);
        // Publishing store: releases the payload; SeqCst for the sleep handshake (module docs).
        self.ring
            .header(self.head)
            .swap(encode_header(self.head, frame.len()), Ordering::SeqCst);
        self.head += rec;
        let sleeping = self.ring.sleeping();
        if sleeping.load(Ordering::SeqCst) != 0 {
            sleeping.store(0, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    /// Clears free space ahead of `head` up to at least `end`, in chunks of [`ZERO_AHEAD`].
    ///
    /// Why in chunks: clearing only the next header slot in each push puts a store to the
    /// *next* cache line (the one the consumer polls next, often already in its cache) in front
    /// of the publishing store; with x86's in-order store commit, the record's line then only
    /// becomes visible after an extra cache-line round trip. Clearing well ahead keeps each
    /// push to the record's own lines.
    #[cold]
    fn zero_ahead(&mut self, end: u64) -> Result<(), PushError> {
        let cap = self.ring.cap as u64;
        if end > self.tail_cache + cap {
            let t = self.ring.tail().load(Ordering::Acquire);
            if t < self.tail_cache || t > self.head || t & 7 != 0 {
                return Err(PushError::Corrupt(Corrupt("ring tail out of range")));
            }
            self.tail_cache = t;
            if end > t + cap {
                return Err(PushError::Full);
            }
        }
        // Line-aligned, so later chunks are whole lines.
        let target = ((end.max(self.zeroed) + ZERO_AHEAD) & !63).min(self.tail_cache + cap);
        // `zeroed >= head >= tail_cache`, so at most `cap` bytes, all consumed already.
        self.ring.zero(self.zeroed, (target - self.zeroed) as usize);
        self.zeroed = target;
        Ok(())
    }
}

struct Consumer {
    ring: RingView,
    tail: u64,
    /// Last `tail` stored to shared memory.
    published: u64,
    armed: bool,
}

impl Consumer {
    fn new(ring: RingView) -> Self {
        Consumer {
            ring,
            tail: 0,
            published: 0,
            armed: false,
        }
    }

    #[inline]
    fn has_data(&self) -> bool {
        self.ring.header(self.tail).load(Ordering::Acquire) != 0
    }

    /// Copies the next frame into `buf`; `Ok(None)` when empty. The space is handed back to
    /// the producer only by [`Consumer::publish`].
    #[inline]
    fn pop(&mut self, buf: &mut [u8; MAX_FRAME]) -> Result<Option<usize>, Corrupt> {
        let h = self.ring.header(self.tail).load(Ordering::Acquire);
        if h == 0 {
            return Ok(None);
        }
        if (h >> 32) as u32 != header_tag(self.tail) {
            return Err(Corrupt("record header out of sequence"));
        }
        let len = (h & 0xffff_ffff) as usize;
        if len > MAX_FRAME {
            return Err(Corrupt("record length exceeds MAX_FRAME"));
        }
        // No check against the producer's position is needed: `len <= MAX_FRAME` keeps the
        // record far smaller than the ring, the read is masked into it, and the bytes go to a
        // private buffer. An honest producer published them before the header; a hostile one
        // can only make us deliver garbage, which decoders reject.
        self.ring.read(self.tail + HDR as u64, &mut buf[..len]);
        self.tail += record_len(len) as u64;
        Ok(Some(len))
    }

    /// Hands the space of every popped record back to the producer. Once per poll rather than
    /// per record: the store dirties a line the producer reads when it runs out of space.
    #[inline]
    fn publish(&mut self) {
        if self.published != self.tail {
            self.published = self.tail;
            self.ring.tail().store(self.tail, Ordering::Release);
        }
    }

    /// Announce sleep; false if data arrived meanwhile (then do not sleep).
    fn arm(&mut self) -> bool {
        self.publish();
        self.armed = true;
        self.ring.sleeping().store(1, Ordering::SeqCst);
        if self.ring.header(self.tail).load(Ordering::SeqCst) != 0 {
            self.disarm();
            return false;
        }
        true
    }

    #[inline]
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
    /// Group allowed to connect besides the server's own user (and root): `None` = mode
    /// 0600 (owner only), `Some(gid)` = mode 0660 with this group. The socket is the only
    /// access control of the shm transport (no MAC: memory shared on one host).
    pub socket_group: Option<u32>,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            ring_bytes: 256 * 1024,
            spin: SpinConfig::default(),
            socket_group: None,
        }
    }
}

/// The gid of a group given by name or number (for [`ShmConfig::socket_group`]).
pub fn resolve_group(group: &str) -> Result<u32, TransportError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)
        .map_err(|_| TransportError::Config("group name contains NUL"))?;
    // SAFETY: all-zero is a valid `group` (null pointers, zero gid); getgrnam_r only writes
    // into it and into `buf`, both live and of the sizes passed.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: see above; `name` is NUL-terminated.
    let r = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if r != 0 || found.is_null() {
        return Err(TransportError::Config("no such group"));
    }
    Ok(grp.gr_gid)
}

/// Binds a unix listener at `path` whose mode (and group) is final before anyone can connect:
/// it is bound in a fresh 0700 directory next to `path`, given its mode there, then renamed into
/// place (rename is atomic). Binding at `path` and chmod-ing after would leave a window in
/// which the umask decides who may connect.
fn bind_private(path: &Path, group: Option<u32>) -> Result<UnixListener, TransportError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp_dir = parent.join(format!(
        ".lockmgr-bind-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&tmp_dir)?;
    let tmp = tmp_dir.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&tmp)?;
        let mode = if let Some(gid) = group {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
            0o660
        } else {
            0o600
        };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        Ok::<_, std::io::Error>(listener)
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&tmp_dir);
    result.map_err(TransportError::from)
}

/// Hello sent with the fds: magic, version, ring_bytes, region_len.
pub(crate) fn encode_hello(ring_bytes: usize) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(ring_bytes as u32).to_le_bytes());
    b[16..24].copy_from_slice(&(region_len(ring_bytes) as u64).to_le_bytes());
    b
}

/// Validates a received hello (exactly the bytes that arrived) and returns the ring size it
/// announces; the region length must agree with it, so a peer cannot make us map less than
/// the rings span. Separate from `connect` so the fuzz target reaches it without a socket.
pub(crate) fn decode_hello(hello: &[u8]) -> Result<usize, TransportError> {
    if hello.len() != HELLO_LEN || le_u64(&hello[0..8]) != MAGIC || le_u32(&hello[8..12]) != VERSION
    {
        return Err(TransportError::Protocol("bad shm hello"));
    }
    let ring = le_u32(&hello[12..16]) as usize;
    let len = le_u64(&hello[16..24]);
    if !valid_ring_bytes(ring) || len != region_len(ring) as u64 {
        return Err(TransportError::Protocol("bad shm ring size"));
    }
    Ok(ring)
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
    /// The full [`PeerId`] value, checked on every lookup by slot.
    id: u64,
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
    /// Peer table indexed by the slot bits of [`PeerId`]; freed slots are reused (the serial
    /// keeps ids unique), so the table stays as small as the peak number of peers.
    slots: Vec<Option<ShmPeer>>,
    free: Vec<u32>,
    peers: usize,
    next_serial: u64,
    cfg: ShmConfig,
    scratch: Box<[u8; MAX_FRAME]>,
    events: Vec<(u64, u32)>,
    spinner: Spinner,
    polls: u32,
    io_due: bool,
}

impl ShmServer {
    /// Listen at `path` (a unix socket path; a stale socket file there is replaced). The socket
    /// is created 0600, or 0660 with [`ShmConfig::socket_group`].
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
        let listener = bind_private(&path, cfg.socket_group)?;
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
            slots: Vec::new(),
            free: Vec::new(),
            peers: 0,
            next_serial: 1,
            scratch: Box::new([0u8; MAX_FRAME]),
            events: Vec::with_capacity(64),
            spinner: Spinner::new(cfg.spin),
            cfg,
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
        self.peers
    }

    #[inline]
    fn peer_mut(&mut self, id: u64) -> Option<&mut ShmPeer> {
        let slot = usize::try_from(id & SLOT_MASK).ok()?;
        self.slots.get_mut(slot)?.as_mut().filter(|p| p.id == id)
    }

    fn setup_peer(&mut self, sock: UnixStream) -> Result<u64, TransportError> {
        let ring = self.cfg.ring_bytes;
        let len = region_len(ring);
        let slot = match self.free.last() {
            Some(&s) => s,
            None => u32::try_from(self.slots.len())
                .map_err(|_| TransportError::Config("too many shm peers"))?,
        };
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
        // Epoll tokens carry the slot only: a slot is reused only after `remove_peer` took
        // its fds out of the interest list, and `process_io` never removes peers, so a token
        // in one batch of events cannot refer to a newer peer in the same slot.
        let token = u64::from(slot) << 1;
        self.epoll.add(sock.as_raw_fd(), token)?;
        if let Err(e) = self.epoll.add(rx_bell.as_raw_fd(), token | 1) {
            self.epoll.del(sock.as_raw_fd());
            return Err(e.into());
        }
        let id = (self.next_serial << SLOT_BITS) | u64::from(slot);
        self.next_serial += 1;
        let peer = ShmPeer {
            id,
            sock,
            rx: Consumer::new(c2s),
            tx: Producer::new(s2c),
            rx_bell,
            tx_bell,
            dead: false,
        };
        if self.free.last() == Some(&slot) {
            self.free.pop();
            self.slots[slot as usize] = Some(peer);
        } else {
            self.slots.push(Some(peer));
        }
        self.peers += 1;
        Ok(id)
    }

    fn remove_peer(&mut self, id: u64) -> bool {
        if self.peer_mut(id).is_none() {
            return false;
        }
        let slot = (id & SLOT_MASK) as usize;
        let Some(p) = self.slots.get_mut(slot).and_then(Option::take) else {
            return false;
        };
        // Explicit removal: the client holds duplicates of the eventfd, so closing our fd
        // would not drop it from the epoll interest list.
        self.epoll.del(p.sock.as_raw_fd());
        self.epoll.del(p.rx_bell.as_raw_fd());
        self.free.push(slot as u32);
        self.peers -= 1;
        true
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
                                f(ServerEvent::Connected(PeerId(id)));
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
                t => {
                    let slot = usize::try_from(t >> 1).unwrap_or(usize::MAX);
                    if let Some(Some(p)) = self.slots.get_mut(slot) {
                        if t & 1 == 1 {
                            sys::eventfd_drain(p.rx_bell.as_raw_fd());
                        } else if !sock_alive(&p.sock) {
                            p.dead = true;
                        }
                    }
                }
            }
        }
        self.events = events;
        Ok(n)
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
        for peer in self.slots.iter_mut().flatten() {
            // A peer whose socket closed is still drained: its last frames come before its
            // `Disconnected`.
            for _ in 0..PEER_BUDGET {
                match peer.rx.pop(&mut self.scratch) {
                    Ok(Some(len)) => {
                        f(ServerEvent::Frame(PeerId(peer.id), &self.scratch[..len]));
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(Corrupt(why)) => {
                        tracing::warn!(peer = peer.id, why, "corrupt shm ring; dropping peer");
                        peer.dead = true;
                        break;
                    }
                }
            }
            peer.rx.publish();
            any_dead |= peer.dead;
        }
        if any_dead {
            let dead: Vec<u64> = self
                .slots
                .iter()
                .flatten()
                .filter(|p| p.dead)
                .map(|p| p.id)
                .collect();
            for id in dead {
                self.remove_peer(id);
                tracing::debug!(peer = id, "shm peer disconnected");
                f(ServerEvent::Disconnected(PeerId(id)));
                n += 1;
            }
        }
        if n > 0 {
            self.spinner.busy();
        }
        Ok(n)
    }

    fn send(&mut self, peer: PeerId, frame: &[u8]) -> Result<(), TransportError> {
        check_frame_len(frame)?;
        let Some(p) = self.peer_mut(peer.0) else {
            return Err(TransportError::UnknownPeer(peer));
        };
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
        let spun = self.spinner.spin(start, timeout, |i| {
            if self
                .slots
                .iter()
                .flatten()
                .any(|p| p.rx.has_data() || p.dead)
                || self.waker.take()
            {
                return Ok::<_, TransportError>(true);
            }
            if i % 4096 == 0 {
                // Connects and deaths are not latency critical but must not wait for the
                // whole spin budget when it is long.
                let r = self.epoll.wait(&mut self.events, Some(Duration::ZERO));
                if r? > 0 {
                    self.io_due = true;
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        let remaining = match spun {
            Spun::Ready => return Ok(()),
            Spun::Sleep(remaining) => remaining,
        };
        if !self.waker.prepare_sleep() {
            self.waker.take();
            return Ok(());
        }
        let mut ready = false;
        for p in self.slots.iter_mut().flatten() {
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
        for p in self.slots.iter_mut().flatten() {
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

    fn close_peer(&mut self, peer: PeerId) {
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
    spinner: Spinner,
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
        let ring = decode_hello(hello.get(..n).unwrap_or(&[]))?;
        let len = region_len(ring) as u64;
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
            spinner: Spinner::new(spin),
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
        // A request out means a reply to wait for: worth spinning.
        self.spinner.expect_reply();
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
        self.rx.publish();
        if n == 0 {
            // Only empty polls count: a busy client needs no liveness check, and counting them
            // all could keep skipping the check when busy and idle polls alternate.
            self.polls = self.polls.wrapping_add(1);
            if self.polls & (IO_CHECK_INTERVAL - 1) == 0 {
                self.check_alive();
            }
            if self.dead {
                return Err(TransportError::Disconnected);
            }
        }
        if n > 0 {
            self.spinner.busy();
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.dead {
            return Ok(());
        }
        let start = Instant::now();
        let rx = &self.rx;
        let spun = self
            .spinner
            .spin(start, timeout, |_| Ok::<_, TransportError>(rx.has_data()))?;
        let remaining = match spun {
            Spun::Ready => return Ok(()),
            Spun::Sleep(remaining) => remaining,
        };
        if !self.rx.arm() {
            return Ok(());
        }
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

    #[test]
    fn socket_is_private_or_group_only_from_the_start() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // A directory of its own: the leftover check below must not see the temporary bind
        // directories of other tests binding at the same time in this process.
        let dir = std::env::temp_dir().join(format!("lmt-u-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let server = ShmServer::bind(&path, ShmConfig::default()).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        drop(server);
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        let cfg = ShmConfig {
            socket_group: Some(gid),
            ..ShmConfig::default()
        };
        let server = ShmServer::bind(&path, cfg).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.permissions().mode() & 0o777, m.gid()), (0o660, gid));
        drop(server);
        // No temporary directory is left behind.
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!(".lockmgr-bind-{}-", std::process::id()))
            })
            .count();
        assert_eq!(leftovers, 0);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(resolve_group("no-such-group-lockmgr").is_err());
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
            .store(encode_header(0, MAX_FRAME + 1), Ordering::Release);
        expect_disconnect(&mut server, peer);
        assert!(matches!(
            server.send(peer, b"x"),
            Err(TransportError::UnknownPeer(_))
        ));
    }

    #[test]
    fn header_for_another_position_disconnects() {
        let (mut server, mut client, _peer) = pair("tag");
        client.send(b"first").unwrap();
        let ring = &client.tx.ring;
        // The second record starts at 16; a header tagged for 8 (or for the same offset one lap
        // earlier) must not be taken as published.
        ring.header(16)
            .store(encode_header(8, 4), Ordering::Release);
        let mut frames = Vec::new();
        let mut gone = false;
        for _ in 0..10 {
            server
                .poll(&mut |ev| match ev {
                    ServerEvent::Frame(_, b) => frames.push(b.to_vec()),
                    ServerEvent::Disconnected(_) => gone = true,
                    ServerEvent::Connected(_) => panic!("unexpected connect"),
                })
                .unwrap();
        }
        assert_eq!(frames, vec![b"first".to_vec()]);
        assert!(gone);
        let stale = encode_header(16 + ring.cap as u64, 4);
        assert_ne!(stale >> 32, encode_header(16, 4) >> 32);
    }

    #[test]
    fn records_stay_in_sequence_across_laps() {
        // Small frames with varying sizes, one at a time, so the consumer is always caught up
        // and polls the slot right after the last record: after the first lap that slot holds
        // an old header or payload unless the producer cleared it.
        let (mut server, mut client, peer) = pair("laps");
        let cap = client.tx.ring.cap;
        let mut sent_bytes = 0;
        let mut i = 0u32;
        while sent_bytes < 4 * cap {
            let len = (i as usize * 37) % 700;
            let frame: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
            client.send(&frame).unwrap();
            sent_bytes += record_len(len);
            let mut got = Vec::new();
            server
                .poll(&mut |ev| match ev {
                    ServerEvent::Frame(p, b) => {
                        assert_eq!(p, peer);
                        got.push(b.to_vec());
                    }
                    other => panic!("unexpected {other:?}"),
                })
                .unwrap();
            assert_eq!(got, vec![frame], "frame {i}");
            assert_eq!(
                client
                    .tx
                    .ring
                    .header(client.tx.head)
                    .load(Ordering::Relaxed),
                0
            );
            i += 1;
        }
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
    fn peer_ids_are_slot_indexed_and_never_reused() {
        let (mut server, client, first) = pair("ids");
        drop(client);
        let mut gone = false;
        let start = Instant::now();
        while !gone {
            assert!(start.elapsed() < Duration::from_secs(20));
            server
                .poll(&mut |ev| gone |= ev == ServerEvent::Disconnected(first))
                .unwrap();
            server.wait(Some(Duration::from_millis(10))).unwrap();
        }
        let path = server.path().to_path_buf();
        let t = std::thread::spawn(move || {
            ShmClient::connect(&path, SpinConfig::default(), Duration::from_secs(20)).unwrap()
        });
        let mut second = None;
        let start = Instant::now();
        while second.is_none() {
            assert!(start.elapsed() < Duration::from_secs(20));
            server
                .poll(&mut |ev| {
                    if let ServerEvent::Connected(p) = ev {
                        second = Some(p);
                    }
                })
                .unwrap();
        }
        let _client = t.join().unwrap();
        let second = second.unwrap();
        // Same slot, new id: the old id must not reach the new peer.
        assert_eq!(second.0 & SLOT_MASK, first.0 & SLOT_MASK);
        assert_ne!(second, first);
        assert!(matches!(
            server.send(first, b"x"),
            Err(TransportError::UnknownPeer(_))
        ));
        server.send(second, b"x").unwrap();
        assert!(matches!(
            server.send(PeerId(second.0 + 1), b"x"),
            Err(TransportError::UnknownPeer(_))
        ));
        assert_eq!(server.peer_count(), 1);
    }

    #[test]
    fn random_garbage_never_panics_server() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for case in 0..50 {
            let (mut server, mut client, peer) = pair(&format!("fuzz{case}"));
            for i in 0..rng.gen_range(0..20) {
                let _ = client.send(&vec![i as u8; rng.gen_range(0..3000)]);
            }
            let ring = &client.tx.ring;
            for _ in 0..rng.gen_range(1..8) {
                let pos = rng.gen_range(0..ring.cap as u64 / 8) * 8;
                let word: u64 = match rng.gen_range(0..4) {
                    0 => rng.gen(),
                    1 => rng.gen_range(0..2 * MAX_FRAME as u64),
                    2 => encode_header(pos, rng.gen_range(0..MAX_FRAME + 2)),
                    _ => rng.gen_range(0..ring.cap as u64),
                };
                match rng.gen_range(0..4) {
                    0 => ring.header(pos).store(word, Ordering::Release),
                    1 => ring.header(client.tx.head).store(word, Ordering::Release),
                    2 => ring.sleeping().store(word as u32, Ordering::Release),
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
                let _ = server.send(peer, &[1u8; 4000]);
            }
        }
    }
}
