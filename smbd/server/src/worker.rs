//! One io_uring event loop per worker thread (thread-per-core; no thread per connection).
//!
//! Every worker arms a single-shot ACCEPT on each (shared) listening socket and re-arms it
//! after each connection, so the kernel hands connections to the workers in turn. Each
//! connection has one multishot RECV drawing from a per-worker pool of provided buffers, and
//! at most one SEND in flight (queued small responses are coalesced into it). Events from
//! other threads (lock notifications, directory changes) arrive through the worker's
//! [`Mailbox`](crate::shared::Mailbox) eventfd, polled with a multishot POLL_ADD.
//!
//! Large READs and WRITEs outside compounds go through the ring too (IORING_OP_READ/WRITE on
//! a dup of the file's descriptor, see [`FileIo`]): a READ lands directly in the response
//! frame after the headers, and its response is sent when the completion arrives. While a
//! connection has file I/O in flight, only further lone READs/WRITEs are processed; other
//! requests wait so they observe the I/O as completed (as they would with synchronous I/O).
//!
//! Backpressure (`[limits] output_bytes_per_conn`): while a connection's queued responses
//! exceed the limit, its requests are left unprocessed and its RECV is cancelled, so a client
//! that sends without reading its answers makes the server hold at most about that much
//! output (plus what the kernel's socket buffers hold), not everything it asked for. Reading
//! resumes once the queue has drained to half the limit. A request frame larger than any a
//! client may send ([`MAX_FRAME`]; before a session is established [`MAX_PREAUTH_FRAME`], and
//! [`MAX_CONTROL_FRAME`] for NetBIOS keepalives) closes the connection at its header instead of
//! being buffered.
//!
//! A panic in a worker thread is never silent: the binary's panic hook logs it and aborts
//! the process (see `main.rs`), so that a supervisor restarts smbd and lockmgrd releases the
//! node's lock state; used as a library, [`PanicGuard`] stops every other worker and
//! [`crate::server::Server::run`] returns an error.
//!
//! Tuning knobs for A/B measurements (environment, read at worker start):
//! `SMBD_RING=plain|coop` (default: DEFER_TASKRUN + SINGLE_ISSUER) and `SMBD_ACCEPT_MULTI=1`
//! (one multishot ACCEPT per worker: in practice every connection lands on one worker).

use std::collections::VecDeque;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use smb_proto::netbios::{self, kind, PacketHeader, HEADER_LEN};
use smb_proto::payload_frame;

use crate::break_delivery::BreakDelivery;
use crate::conn::{Conn, FileIo, FileOp};
use crate::shared::{Event, Shared};

/// Headers, compound padding and the encryption transform around a max-size WRITE payload.
const MAX_FRAME_OVERHEAD: usize = 64 * 1024;
/// The largest request frame accepted (NetBIOS header, a max-size WRITE at any dialect, its
/// headers and the encryption transform); a longer one disconnects the client.
const MAX_FRAME: usize = 4 + crate::conn::MAX_IO as usize + MAX_FRAME_OVERHEAD;
/// The largest request frame of a connection without an established session. Before that a
/// client only sends NEGOTIATE and SESSION_SETUP, whose security blobs stay below 64 KiB
/// (Windows' MaxTokenSize is at most 65535); without this bound, every connection that never
/// authenticates could make smbd hold a partial 8 MiB frame.
const MAX_PREAUTH_FRAME: usize = 4 + 64 * 1024 + MAX_FRAME_OVERHEAD;
/// The largest NetBIOS control packet (keepalive: empty; session request: two 34-byte
/// names). They are buffered whole before being skipped, so they must not be large either.
const MAX_CONTROL_FRAME: usize = 4 + 1024;
const BUF_SIZE: usize = 64 * 1024;
const NUM_BUFS: u16 = 256;
const BUF_GROUP: u16 = 7;
/// Sent buffers of this size range are kept (at most POOL_BUFS) for READ data.
const POOL_BUF_MIN: usize = 64 * 1024;
const POOL_BUF_MAX: usize = 9 * 1024 * 1024;
const POOL_BUFS: usize = 8;
/// File I/Os one connection may have in the ring; more requests wait in `inbuf`. Bounds the
/// READ buffers a client can make us hold (8 x 8 MiB) whatever credits it was granted.
const MAX_IO_INFLIGHT: usize = 8;
/// Queued responses are coalesced into one SEND up to this size.
const COALESCE_MAX: usize = 256 * 1024;

const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_EVENT: u64 = 4;
const K_TIMER: u64 = 5;
const K_PROVIDE: u64 = 6;
const K_FILE: u64 = 7;
const K_CANCEL: u64 = 8;
/// smbdirectd's hello (with the shared area's descriptor) is readable on a new connection.
const K_HELLO: u64 = 9;

/// Ring setup flags (experiment knob SMBD_RING: "defer", "coop" or "plain").
///
/// DEFER_TASKRUN + SINGLE_ISSUER (the default): completions of this worker's sockets run as
/// task work only when the worker itself enters the kernel to wait, so a busy worker is not
/// interrupted for every packet and wakes once for a batch. The ring is created disabled and
/// enabled by the worker thread in [`Worker::run`], which makes that thread the single issuer.
fn new_ring() -> Result<IoUring, WorkerError> {
    let mode = std::env::var("SMBD_RING").unwrap_or_default();
    let mut b = IoUring::builder();
    match mode.as_str() {
        "plain" => {}
        "coop" => {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        _ => {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_r_disabled();
        }
    }
    b.setup_submit_all();
    match b.build(4096) {
        Ok(r) => Ok(r),
        Err(e) => {
            // Older kernels lack some flags: fall back to a plain ring.
            tracing::debug!(%e, "io_uring flags refused; plain ring");
            IoUring::new(4096).map_err(WorkerError::Setup)
        }
    }
}

/// Period of worker 0's timer (lock service timers, durable reconnect deadlines).
const TICK: Duration = crate::shared::TIMER_TICK;

/// How long worker 0's timer sleeps: one period, or until the nearest durable reconnect
/// deadline if that is sooner (a failing reclaim is answered at its deadline, not up to a
/// period later).
fn timer_wait(now: Instant, next_deadline: Option<Instant>) -> Duration {
    next_deadline.map_or(TICK, |d| d.saturating_duration_since(now).min(TICK))
}

fn ud(kind: u64, slot: usize, gen: u32) -> u64 {
    kind | ((slot as u64 & 0xFF_FFFF) << 8) | ((gen as u64) << 32)
}
fn ud_kind(u: u64) -> u64 {
    u & 0xFF
}
fn ud_slot(u: u64) -> usize {
    ((u >> 8) & 0xFF_FFFF) as usize
}
fn ud_gen(u: u64) -> u32 {
    (u >> 32) as u32
}

struct Slot {
    gen: u32,
    stream: Stream,
    conn: Conn,
    inbuf: Vec<u8>,
    outq: VecDeque<Vec<u8>>,
    /// The buffer of the SEND in flight and how much of it was already sent.
    sending: Option<(Vec<u8>, usize)>,
    send_inflight: bool,
    recv_armed: bool,
    closing: bool,
    /// The client's transport is gone but other connections are bound as channels of
    /// sessions this connection established (MS-SMB2 3.3.5.5.2): it lives on, without a
    /// socket, until the last of them closes (see [`Conn::lose_transport`]).
    headless: bool,
    /// READs/WRITEs of this connection in the ring. While any is in flight, only further
    /// plain READs/WRITEs are processed; anything else (FLUSH, CLOSE, LOCK, SET_INFO...)
    /// waits in `inbuf` so that it sees every earlier I/O done, as with synchronous I/O.
    io_inflight: usize,
    /// Bytes in `outq` and `sending` not yet sent (backpressure, see the module docs).
    out_bytes: usize,
    /// Input is not read (RECV cancelled, not re-armed) until the output drains.
    recv_paused: bool,
    /// Bytes ever queued for this socket and bytes the kernel took (SEND results): with the
    /// socket's unacknowledged bytes they tell how far the client's TCP acknowledged.
    queued_total: u64,
    sent_total: u64,
    /// Breaks waiting for the client's TCP acknowledgement: the byte count (in `queued_total`
    /// terms) that must be acknowledged, and by when ([`AckWait`]).
    ack_waits: VecDeque<AckWait>,
}

/// A break sent on a TCP channel: its bytes must be acknowledged by the client's TCP by
/// `deadline`, or the channel is taken for dead. Samba does the same (smbd_smb2_break_send:
/// six retransmission timeouts, the RTO clamped to 0.2-1 s): a client that died or lost its
/// link holding an oplock or lease otherwise keeps every other opener waiting for the break
/// timeout (35 s, MS-SMB2 3.3.2.1), and a multichannel client's break never moves to a channel
/// that works. A live client's TCP acknowledges within one round trip, whatever its SMB layer
/// does with the break.
#[derive(Debug)]
struct AckWait {
    end: u64,
    deadline: Instant,
    /// The breaks among those bytes, handed back to their sessions' owners if the channel
    /// fails first (crate::break_delivery).
    breaks: Vec<BreakDelivery>,
}

/// How long a break may go unacknowledged by TCP: six times the retransmission timeout, which
/// counts as at least 0.2 s and at most 1 s (Samba's bounds), i.e. 1.2-6 s.
fn ack_timeout(rto: Option<Duration>) -> Duration {
    let rto = rto
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(200), Duration::from_secs(1));
    rto * 6
}

/// A listening socket the workers accept on.
pub enum Listener {
    /// Clients (port 445 and `--listen`).
    Tcp(TcpListener),
    /// smbdirectd (`[server] rdma_proxy_socket`): peers are checked by uid on accept.
    RdmaProxy(UnixListener),
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::RdmaProxy(l) => l.as_fd(),
        }
    }
}

/// A connection's socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// A file READ/WRITE in the ring, owned here (not by the slot) so that its buffer outlives
/// a connection that goes away before the completion arrives.
struct InFlightIo {
    slot: usize,
    gen: u32,
    io: FileIo,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    #[error("io_uring setup: {0}")]
    Setup(std::io::Error),
    #[error("io_uring submit: {0}")]
    Submit(std::io::Error),
}

pub struct Worker {
    idx: usize,
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    conn_ids: Arc<AtomicU64>,
    ring: IoUring,
    pool: Vec<u8>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    ios: Vec<Option<InFlightIo>>,
    io_free: Vec<usize>,
    /// Large buffers whose SEND finished, reused for READ data: a fresh 8 MiB buffer must
    /// be zeroed (or faulted in) first, which cost as much as the read itself.
    buf_pool: Vec<Vec<u8>>,
    next_gen: u32,
    /// Worker 0's timer: the relative timeout of the armed TIMEOUT entry (read by the kernel
    /// when the entry is submitted), its generation and when it fires.
    timespec: types::Timespec,
    timer_gen: u32,
    timer_due: Option<Instant>,
}

impl Worker {
    pub fn new(
        idx: usize,
        shared: Arc<Shared>,
        listeners: Vec<Listener>,
        conn_ids: Arc<AtomicU64>,
    ) -> Result<Worker, WorkerError> {
        let ring = new_ring()?;
        Ok(Worker {
            idx,
            shared,
            listeners,
            conn_ids,
            ring,
            pool: vec![0u8; BUF_SIZE * NUM_BUFS as usize],
            slots: Vec::new(),
            free: Vec::new(),
            ios: Vec::new(),
            io_free: Vec::new(),
            buf_pool: Vec::new(),
            next_gen: 1,
            timespec: types::Timespec::new().sec(1),
            timer_gen: 0,
            timer_due: None,
        })
    }

    fn push(&mut self, e: squeue::Entry) -> Result<(), WorkerError> {
        loop {
            // SAFETY: every buffer referenced by an entry we push (the provided-buffer pool,
            // send buffers held in `Slot::sending`, file I/O buffers held in `self.ios`, the
            // timespec) lives in `self` and is neither moved nor freed until the
            // corresponding completion has been reaped (moving a Vec does not move its heap
            // buffer).
            let r = unsafe { self.ring.submission().push(&e) };
            match r {
                Ok(()) => return Ok(()),
                Err(_) => {
                    self.ring.submit().map_err(WorkerError::Submit)?;
                }
            }
        }
    }

    fn provide(&mut self, bid: u16, count: u16) -> Result<(), WorkerError> {
        let addr = self.pool[bid as usize * BUF_SIZE..].as_mut_ptr();
        let e = opcode::ProvideBuffers::new(addr, BUF_SIZE as i32, count, BUF_GROUP, bid)
            .build()
            .user_data(ud(K_PROVIDE, 0, 0));
        self.push(e)
    }

    fn arm_recv(&mut self, slot: usize) -> Result<(), WorkerError> {
        let Some(s) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return Ok(());
        };
        if s.closing || s.recv_armed || s.recv_paused {
            return Ok(());
        }
        s.recv_armed = true;
        let e = opcode::RecvMulti::new(types::Fd(s.stream.as_raw_fd()), BUF_GROUP)
            .build()
            .user_data(ud(K_RECV, slot, s.gen));
        self.push(e)
    }

    /// A single-shot ACCEPT, re-armed after every connection: the kernel wakes the first
    /// waiter of the listening socket's (exclusive) wait queue, and a re-armed accept joins
    /// at the tail, so connections go round-robin over the workers. A multishot ACCEPT
    /// would stay at the head and send every connection to the same worker.
    fn arm_accept(&mut self, li: usize) -> Result<(), WorkerError> {
        let fd = self.listeners[li].as_fd().as_raw_fd();
        let e = if std::env::var_os("SMBD_ACCEPT_MULTI").is_some() {
            opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        self.push(e.user_data(ud(K_ACCEPT, li, 0)))
    }

    /// Arms worker 0's timer for the next tick: the periodic one, or the nearest durable
    /// reconnect deadline if that comes first. A newer arming supersedes older ones (their
    /// completions carry an older generation and are ignored).
    fn arm_timer(&mut self, now: Instant) -> Result<(), WorkerError> {
        let wait = timer_wait(now, self.shared.next_durable_deadline());
        self.timespec = types::Timespec::new()
            .sec(wait.as_secs())
            .nsec(wait.subsec_nanos());
        self.timer_gen = self.timer_gen.wrapping_add(1);
        self.timer_due = Some(now + wait);
        let ts = &self.timespec as *const types::Timespec;
        let e = opcode::Timeout::new(ts)
            .build()
            .user_data(ud(K_TIMER, 0, self.timer_gen));
        self.push(e)
    }

    /// Worker 0: a durable reconnect started waiting with a deadline before the armed timer.
    fn rearm_timer_if_late(&mut self) -> Result<(), WorkerError> {
        let due = self.shared.next_durable_deadline();
        if self.idx == 0 && due.is_some_and(|d| self.timer_due.is_some_and(|armed| d < armed)) {
            self.arm_timer(Instant::now())?;
        }
        Ok(())
    }

    fn arm_events(&mut self) -> Result<(), WorkerError> {
        let fd = self.shared.mailboxes[self.idx].fd();
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ud(K_EVENT, 0, 0));
        self.push(e)
    }

    /// Run until shutdown is requested.
    pub fn run(mut self) -> Result<(), WorkerError> {
        crate::metrics::set_worker(self.idx);
        let _guard = PanicGuard {
            shared: self.shared.clone(),
            idx: self.idx,
        };
        match self.ring.submitter().register_enable_rings() {
            Ok(()) => {}
            // EBADFD: the ring was not created disabled (fallback or other mode).
            Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {}
            Err(e) => return Err(WorkerError::Setup(e)),
        }
        self.provide(0, NUM_BUFS)?;
        for li in 0..self.listeners.len() {
            self.arm_accept(li)?;
        }
        self.arm_events()?;
        if self.idx == 0 {
            self.arm_timer(Instant::now())?;
        }
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(256);
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(WorkerError::Submit(e)),
            }
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let mut touched: Vec<usize> = Vec::new();
            // A pass that may change the file system and report it (crate::dirwatch).
            self.shared.work_begin(self.idx);
            for &(u, res, fl) in &cqes {
                match ud_kind(u) {
                    K_ACCEPT => self.on_accept(ud_slot(u), res, fl, &mut touched)?,
                    K_RECV => self.on_recv(ud_slot(u), ud_gen(u), res, fl, &mut touched)?,
                    K_HELLO => self.on_hello(ud_slot(u), ud_gen(u), res, &mut touched)?,
                    K_SEND => self.on_send(ud_slot(u), ud_gen(u), res, &mut touched),
                    K_FILE => self.on_file(ud_slot(u), res, &mut touched)?,
                    K_EVENT => {
                        if !cqueue::more(fl) {
                            self.arm_events()?;
                        }
                        self.on_events(&mut touched)?;
                    }
                    // Only the latest arming ticks and re-arms; a superseded one is ignored.
                    K_TIMER if ud_gen(u) == self.timer_gen => {
                        let now = Instant::now();
                        self.shared.tick(now);
                        self.arm_timer(now)?;
                    }
                    K_PROVIDE if res < 0 => {
                        tracing::warn!(res, "provide buffers failed");
                    }
                    _ => {}
                }
            }
            touched.sort_unstable();
            touched.dedup();
            for slot in touched {
                self.flush(slot)?;
            }
            self.shared.work_end(self.idx);
            self.rearm_timer_if_late()?;
            if self.shared.shutdown.load(Ordering::Relaxed) {
                break;
            }
        }
        // Stop listening now, not when the kernel's asynchronous ring teardown drops the
        // accept SQEs' file references after exit: a stopped smbd must refuse connections at once.
        for listener in &self.listeners {
            if let Err(e) = crate::sys::shutdown_socket(listener) {
                tracing::debug!(%e, "listener shutdown failed");
            }
        }
        for i in 0..self.slots.len() {
            if let Some(mut s) = self.slots[i].take() {
                let _ = s.stream.shutdown(Shutdown::Both);
                s.conn.shutdown(Instant::now());
                s.conn.release_fds();
            }
        }
        Ok(())
    }

    fn on_accept(
        &mut self,
        li: usize,
        res: i32,
        fl: u32,
        touched: &mut Vec<usize>,
    ) -> Result<(), WorkerError> {
        if !cqueue::more(fl) {
            self.arm_accept(li)?;
        }
        if res < 0 {
            tracing::debug!(res, "accept failed");
            return Ok(());
        }
        let id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
        let (stream, mut conn) = match self.listeners.get(li) {
            Some(Listener::RdmaProxy(_)) => {
                // SAFETY: a successful ACCEPT returns a new descriptor that we exclusively own.
                let stream = unsafe { UnixStream::from_raw_fd(res) };
                if !self.proxy_peer_allowed(&stream) {
                    return Ok(());
                }
                let mut conn = Conn::new(id, self.shared.clone(), None, None, Instant::now());
                conn.set_via_rdma_proxy();
                (Stream::Unix(stream), conn)
            }
            _ => {
                // SAFETY: a successful ACCEPT returns a new descriptor that we exclusively own.
                let stream = unsafe { TcpStream::from_raw_fd(res) };
                let _ = stream.set_nodelay(true);
                let conn = Conn::new(
                    id,
                    self.shared.clone(),
                    stream.local_addr().ok(),
                    stream.peer_addr().ok(),
                    Instant::now(),
                );
                (Stream::Tcp(stream), conn)
            }
        };
        conn.sync_fds();
        self.shared.register_conn(id, self.idx);
        // Removed by `Conn::shutdown` (or the transport's loss) before the slot closes it.
        self.shared
            .register_transport(id, stream.as_fd().as_raw_fd());
        tracing::debug!(conn = id, peer = ?conn.peer, worker = self.idx, "connection accepted");
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let slot = Slot {
            gen: self.next_gen,
            stream,
            conn,
            inbuf: Vec::new(),
            outq: VecDeque::new(),
            sending: None,
            send_inflight: false,
            recv_armed: false,
            closing: false,
            headless: false,
            io_inflight: 0,
            out_bytes: 0,
            recv_paused: false,
            queued_total: 0,
            sent_total: 0,
            ack_waits: VecDeque::new(),
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        if matches!(self.listeners.get(li), Some(Listener::RdmaProxy(_))) {
            self.arm_hello(idx)?;
        } else {
            self.arm_recv(idx)?;
        }
        touched.push(idx);
        Ok(())
    }

    /// Waits for smbdirectd's hello on a new proxy connection: it comes first, with the
    /// shared area's descriptor (SCM_RIGHTS), which the multishot RECV could not take, so
    /// it is read with recvmsg once the socket is readable. Counted as the armed RECV (so a
    /// closing connection waits for it to end).
    fn arm_hello(&mut self, slot: usize) -> Result<(), WorkerError> {
        let Some(s) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return Ok(());
        };
        s.recv_armed = true;
        let e = opcode::PollAdd::new(types::Fd(s.stream.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(ud(K_HELLO, slot, s.gen));
        self.push(e)
    }

    /// smbdirectd's hello (`smb_proto::area_frame`, op Hello) is readable: maps the area it
    /// brings, then starts reading the connection's frames. Anything else closes it.
    fn on_hello(
        &mut self,
        slot: usize,
        gen: u32,
        res: i32,
        touched: &mut Vec<usize>,
    ) -> Result<(), WorkerError> {
        use smb_proto::area_frame::{AreaFrame, Op, FRAME_LEN, KIND};
        let Some(s) = self.slot_mut(slot, gen) else {
            return Ok(());
        };
        touched.push(slot);
        s.recv_armed = false;
        if res < 0 || s.closing {
            s.closing = true;
            return Ok(());
        }
        let mut buf = [0u8; FRAME_LEN];
        let refused = match crate::sys::recv_with_fd(&s.stream, &mut buf) {
            Ok(None) => return self.arm_hello(slot),
            Ok(Some((0, _))) => Some("closed before its hello".to_string()),
            Ok(Some((n, fd))) => {
                let hello = (n == FRAME_LEN && buf[0] == KIND)
                    .then(|| AreaFrame::decode_body(&buf[netbios::HEADER_LEN..]).ok())
                    .flatten()
                    .filter(|f| {
                        f.op == Op::Hello
                            && PacketHeader::peek(&buf).is_some_and(|h| h.packet_len() == FRAME_LEN)
                    });
                match (hello, fd) {
                    (None, _) => Some("its first frame is not a hello".into()),
                    (Some(_), None) => None,
                    (Some(_), Some(fd)) => s.conn.attach_rdma_area(fd).err().map(|e| e.to_string()),
                }
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = refused {
            tracing::warn!(
                conn = s.conn.id,
                why,
                "smbdirectd connection refused at its hello"
            );
            s.closing = true;
            return Ok(());
        }
        tracing::debug!(
            conn = s.conn.id,
            area = s.conn.rdma_area.is_some(),
            "smbdirectd hello"
        );
        self.arm_recv(slot)
    }

    /// Whether the process at the other end of an `rdma_proxy_socket` connection may speak
    /// for SMB Direct clients: its uid at connect(2) (SO_PEERCRED) is root's or one of
    /// `rdma_proxy_uids`. A refused one is logged and counted; dropping it closes it.
    fn proxy_peer_allowed(&self, stream: &UnixStream) -> bool {
        let allowed = &self.shared.config.server.rdma_proxy_uids;
        match crate::sys::peer_cred(stream) {
            Ok(c) if c.uid == 0 || allowed.contains(&c.uid) => {
                tracing::debug!(pid = c.pid, uid = c.uid, "rdma proxy connected");
                true
            }
            Ok(c) => {
                self.shared.metrics.rdma_proxy_refused.inc();
                tracing::warn!(
                    pid = c.pid,
                    uid = c.uid,
                    gid = c.gid,
                    refused_total = self.shared.metrics.rdma_proxy_refused.get(),
                    "rdma_proxy_socket: connection refused (uid is neither root nor in \
                     rdma_proxy_uids)"
                );
                false
            }
            Err(e) => {
                self.shared.metrics.rdma_proxy_refused.inc();
                tracing::warn!(error = %e, "rdma_proxy_socket: no peer credentials; refused");
                false
            }
        }
    }

    fn slot_mut(&mut self, slot: usize, gen: u32) -> Option<&mut Slot> {
        self.slots
            .get_mut(slot)
            .and_then(|s| s.as_mut())
            .filter(|s| s.gen == gen)
    }

    fn on_recv(
        &mut self,
        slot: usize,
        gen: u32,
        res: i32,
        fl: u32,
        touched: &mut Vec<usize>,
    ) -> Result<(), WorkerError> {
        let bid = cqueue::buffer_select(fl);
        let more = cqueue::more(fl);
        if res > 0 {
            if let Some(b) = bid {
                let start = b as usize * BUF_SIZE;
                let data = &self.pool[start..start + res as usize];
                if let Some(s) = self
                    .slots
                    .get_mut(slot)
                    .and_then(|s| s.as_mut())
                    .filter(|s| s.gen == gen)
                {
                    Self::process_input(s, data);
                }
                self.submit_file_io(slot, gen)?;
            }
        }
        if let Some(b) = bid {
            self.provide(b, 1)?;
        }
        touched.push(slot);
        let Some(s) = self.slot_mut(slot, gen) else {
            return Ok(());
        };
        if !more {
            s.recv_armed = false;
        }
        // ECANCELED: the RECV was cancelled to pause reading (backpressure).
        if res == 0 || (res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED) {
            s.closing = true;
        } else if !more && !s.headless {
            self.arm_recv(slot)?;
        }
        Ok(())
    }

    /// Feed received bytes: whole messages are handled straight from `data` when nothing is
    /// buffered (the common case: one request per segment), the rest is buffered.
    fn process_input(s: &mut Slot, data: &[u8]) {
        if s.inbuf.is_empty() {
            let used = Self::feed_frames(s, data);
            s.inbuf.extend_from_slice(&data[used..]);
        } else {
            s.inbuf.extend_from_slice(data);
            let mut inbuf = std::mem::take(&mut s.inbuf);
            let used = Self::feed_frames(s, &inbuf);
            inbuf.drain(..used);
            s.inbuf = inbuf;
        }
        // Make room for the whole pending frame at once, so that a large WRITE arriving in
        // 64 KiB pieces is not copied again by every reallocation.
        // The length is the peer's word, so the reservation is capped at the largest frame a
        // client of this connection may legitimately send (a max-size WRITE plus headers and
        // the encryption transform); a bigger frame is refused when complete.
        if let Some(h) = PacketHeader::peek(&s.inbuf) {
            let need = h.packet_len();
            let limit = frame_limit(
                h.kind,
                s.conn.has_established_session(),
                s.conn.via_rdma_proxy,
            );
            if need > limit {
                // Larger than any frame this client may send now: refused at its header
                // rather than buffered up to 16 MiB first.
                tracing::debug!(
                    conn = s.conn.id,
                    kind = h.kind,
                    need,
                    limit,
                    "request frame too large; disconnecting"
                );
                s.conn.closed = true;
            } else if h.kind == kind::SESSION_MESSAGE {
                let cap = 4 + s.conn.max_io() as usize + MAX_FRAME_OVERHEAD;
                s.inbuf.reserve(need.min(cap).saturating_sub(s.inbuf.len()));
            }
        }
        let out = s.conn.take_output();
        Self::queue_out(s, out);
        if s.conn.closed {
            s.closing = true;
        }
    }

    /// Queue response frames for sending. A break among them must be acknowledged by the
    /// client's TCP in time ([`AckWait`]).
    fn queue_out(s: &mut Slot, frames: Vec<Vec<u8>>) {
        for f in frames {
            s.out_bytes += f.len();
            s.queued_total += f.len() as u64;
            s.outq.push_back(f);
        }
        let breaks = std::mem::take(&mut s.conn.breaks_out);
        if breaks.is_empty() {
            return;
        }
        if s.closing || s.headless {
            // Queued behind a failure: they never leave on this transport.
            Self::give_back_breaks(&s.conn.shared, breaks);
            return;
        }
        // Only a TCP socket has acknowledgements to watch (smbdirectd's stream is local;
        // its client's liveness is the RDMA connection's business).
        if let Stream::Tcp(tcp) = &s.stream {
            let now = Instant::now();
            let deadline = now + ack_timeout(crate::sys::tcp_rto(tcp).ok());
            s.ack_waits.push_back(AckWait {
                end: s.queued_total,
                deadline,
                breaks,
            });
            s.conn.shared.arm_ack_check(s.conn.id, deadline, now);
        }
    }

    /// Breaks whose channel failed before the client's TCP acknowledged them go back to the
    /// connection owning their session, which sends them on its next channel.
    fn give_back_breaks(shared: &Shared, breaks: Vec<BreakDelivery>) {
        for d in breaks {
            let owner = d.owner;
            shared.post_event(owner, Event::BreakUndelivered(d));
        }
    }

    /// How far the client's TCP acknowledged this connection's output, in `queued_total`
    /// terms; None when the socket cannot tell (not TCP, or broken: its RECV/SEND errors close
    /// it). Under smbtorture's channel-failure hook nothing counts as acknowledged.
    fn acked_bytes(s: &Slot) -> Option<u64> {
        let Stream::Tcp(tcp) = &s.stream else {
            return None;
        };
        if s.conn.force_unacked_timeout {
            return Some(0);
        }
        let unacked = crate::sys::tcp_unacked_bytes(tcp).ok()?;
        Some(s.sent_total.saturating_sub(unacked))
    }

    /// Forget the breaks whose bytes the client's TCP acknowledged (up to `acked`).
    fn forget_acked(s: &mut Slot, acked: u64) {
        while s.ack_waits.front().is_some_and(|w| w.end <= acked) {
            s.ack_waits.pop_front();
        }
    }

    /// Hand back every break still waiting for its acknowledgement
    /// ([`Worker::give_back_breaks`]).
    fn give_back_waiting(s: &mut Slot) {
        let breaks = s.ack_waits.drain(..).flat_map(|w| w.breaks).collect();
        Self::give_back_breaks(&s.conn.shared, breaks);
    }

    /// The transport is going away: the breaks it still holds unacknowledged are handed back;
    /// those the client's TCP did acknowledge are done.
    fn give_back_unacked_breaks(s: &mut Slot) {
        if s.ack_waits.is_empty() {
            return;
        }
        if let Some(acked) = Self::acked_bytes(s) {
            Self::forget_acked(s, acked);
        }
        Self::give_back_waiting(s);
    }

    /// The ack check of a channel's breaks is due ([`Event::AckCheck`]): forget the breaks the
    /// client's TCP acknowledged; if one is past its deadline unacknowledged, the channel
    /// failed: drop the transport (its sessions go on through other channels, where the
    /// client replays). Otherwise check again at the next deadline.
    fn check_acks(s: &mut Slot, now: Instant) {
        if s.closing || s.headless {
            return;
        }
        let Some(acked) = Self::acked_bytes(s) else {
            return;
        };
        Self::forget_acked(s, acked);
        let Some((end, deadline)) = s.ack_waits.front().map(|w| (w.end, w.deadline)) else {
            return;
        };
        if deadline <= now {
            tracing::warn!(
                conn = s.conn.id,
                peer = ?s.conn.peer,
                unacked = end.saturating_sub(acked),
                "a break was not acknowledged by the client's TCP in time: channel failed, dropping it"
            );
            s.conn.shared.metrics.channel_failures.inc();
            Self::give_back_waiting(s);
            s.closing = true;
        } else {
            s.conn.shared.arm_ack_check(s.conn.id, deadline, now);
        }
    }

    /// Whether the connection's input must wait: too much output queued (the client does not
    /// read its answers), or more than a maximal frame of requests held back behind file I/O
    /// (then the first frame is complete, as a longer one closes the connection, so reading
    /// resumes once the I/O completes).
    fn input_blocked(s: &Slot) -> bool {
        s.out_bytes >= s.conn.shared.config.limits.output_bytes_per_conn
            || s.inbuf.len() > MAX_FRAME
    }

    /// Split `buf` into NetBIOS session messages (RFC 1002 4.3.1) and handle the complete
    /// ones; returns how many bytes were consumed.
    fn feed_frames(s: &mut Slot, buf: &[u8]) -> usize {
        let mut pos = 0usize;
        while !s.conn.closed {
            let Some(h) = PacketHeader::peek(&buf[pos..]) else {
                break;
            };
            let whole = buf.len() - pos >= h.packet_len();
            let payload = pos + HEADER_LEN..pos + h.packet_len();
            match h.kind {
                kind::SESSION_MESSAGE => {
                    if !whole {
                        break;
                    }
                    let msg = &buf[payload];
                    let io = s.io_inflight + s.conn.file_io_count();
                    if io >= MAX_IO_INFLIGHT || (io > 0 && !is_plain_io(msg)) {
                        break;
                    }
                    if s.out_bytes >= s.conn.shared.config.limits.output_bytes_per_conn {
                        // Backpressure: the rest waits until the client reads its answers.
                        break;
                    }
                    s.conn.on_message(msg, Instant::now());
                    let out = s.conn.take_output();
                    Self::queue_out(s, out);
                    pos += h.packet_len();
                }
                payload_frame::KIND if s.conn.via_rdma_proxy => {
                    if !whole {
                        break;
                    }
                    s.conn.on_rdma_payload(&buf[payload]);
                    pos += h.packet_len();
                }
                smb_proto::area_frame::KIND if s.conn.via_rdma_proxy => {
                    if !whole {
                        break;
                    }
                    s.conn.on_area_frame(&buf[payload]);
                    let out = s.conn.take_output();
                    Self::queue_out(s, out);
                    pos += h.packet_len();
                }
                kind::KEEPALIVE => {
                    // Keepalive: skip it whole.
                    if !whole {
                        break;
                    }
                    #[cfg(debug_assertions)]
                    debug_panic_trigger(&buf[payload]);
                    pos += h.packet_len();
                }
                kind::SESSION_REQUEST => {
                    // Session request (port 139): answer positively.
                    if !whole {
                        break;
                    }
                    pos += h.packet_len();
                    Self::queue_out(s, vec![netbios::positive_response()]);
                }
                _ => {
                    s.conn.closed = true;
                }
            }
        }
        pos
    }

    /// Hand the READs/WRITEs a connection produced to the ring.
    fn submit_file_io(&mut self, slot: usize, gen: u32) -> Result<(), WorkerError> {
        let Some(s) = self.slot_mut(slot, gen) else {
            return Ok(());
        };
        let ios = s.conn.take_file_io();
        s.io_inflight += ios.len();
        // Each holds a dup of the open's descriptor until it completes.
        self.shared.fds.add(ios.len());
        for mut io in ios {
            if let FileOp::Read {
                buf, data_off, len, ..
            } = &mut io.op
            {
                let need = *data_off + *len;
                if buf.len() < need {
                    let mut b = self.buf_pool.pop().unwrap_or_default();
                    // Only the growth is zeroed; stale bytes beyond what the read returns are
                    // cut off on completion, and the header part is rewritten then.
                    if b.len() >= need {
                        b.truncate(need);
                    } else {
                        b.resize(need, 0);
                    }
                    b[..*data_off].fill(0);
                    *buf = b;
                }
            }
            let idx = match self.io_free.pop() {
                Some(i) => i,
                None => {
                    self.ios.push(None);
                    self.ios.len() - 1
                }
            };
            self.ios[idx] = Some(InFlightIo { slot, gen, io });
            self.push_file_io(idx)?;
        }
        Ok(())
    }

    /// Submit (the rest of) the transfer of `self.ios[idx]`.
    fn push_file_io(&mut self, idx: usize) -> Result<(), WorkerError> {
        let Some(f) = self.ios.get_mut(idx).and_then(|f| f.as_mut()) else {
            return Ok(());
        };
        let io = &mut f.io;
        let fd = types::Fd(io.file.as_raw_fd());
        let off = io.offset + io.done as u64;
        let want = io.remaining().min(u32::MAX as usize) as u32;
        let done = io.done;
        let e = match &mut io.op {
            // The buffer is the area range itself (crate::rdma_area): `range` is owned by this
            // in-flight I/O until its completion is handled, which keeps both the mapping and
            // the ledger's hold on the range (no other connection can be given it meanwhile);
            // nothing in this process touches those bytes while the kernel does.
            FileOp::AreaRead { range, .. } => match range.ptr_from(done) {
                Ok(p) => opcode::Read::new(fd, p, want).offset(off).build(),
                // Not reached: the ledger checked the range against the mapping.
                Err(_) => opcode::Nop::new().build(),
            },
            FileOp::AreaWrite {
                range,
                write_through,
            } => match range.ptr_from(done) {
                Ok(p) => opcode::Write::new(fd, p.cast_const(), want)
                    .offset(off)
                    .rw_flags(if *write_through { libc::RWF_DSYNC } else { 0 })
                    .build(),
                Err(_) => opcode::Nop::new().build(),
            },
            FileOp::Read { buf, data_off, .. } => {
                let start = *data_off + done;
                opcode::Read::new(fd, buf[start..].as_mut_ptr(), want)
                    .offset(off)
                    .build()
            }
            FileOp::Write {
                data,
                write_through,
                ..
            } => opcode::Write::new(fd, data[done..].as_ptr(), want)
                .offset(off)
                .rw_flags(if *write_through { libc::RWF_DSYNC } else { 0 })
                .build(),
        };
        self.push(e.user_data(ud(K_FILE, idx, 0)))
    }

    fn on_file(
        &mut self,
        idx: usize,
        res: i32,
        touched: &mut Vec<usize>,
    ) -> Result<(), WorkerError> {
        let Some(f) = self.ios.get_mut(idx).and_then(|f| f.as_mut()) else {
            return Ok(());
        };
        if res > 0 {
            f.io.done += res as usize;
            if f.io.remaining() > 0 {
                // A short transfer (end of file for a READ, or a signal/full disk on the way)
                // is retried for the rest; a READ that then returns 0 is at end of file.
                return self.push_file_io(idx);
            }
        }
        let Some(f) = self.ios.get_mut(idx).and_then(|f| f.take()) else {
            return Ok(());
        };
        self.io_free.push(idx);
        self.shared.fds.sub(1);
        // A READ that fails after partial progress returns what it read; a WRITE that fails
        // part way reports the error, as the synchronous path (write_all_at) does: the client
        // must not take a short count for a full disk.
        let is_write = matches!(f.io.op, FileOp::Write { .. } | FileOp::AreaWrite { .. });
        let result = if res < 0 && (f.io.done == 0 || is_write) {
            Err(-res)
        } else {
            Ok(f.io.done)
        };
        let Some(s) = self.slot_mut(f.slot, f.gen) else {
            return Ok(());
        };
        s.io_inflight = s.io_inflight.saturating_sub(1);
        s.conn.complete_file_io(f.io, result);
        if !s.inbuf.is_empty() {
            // Requests held back behind the I/O may go on now (feed_frames decides).
            Self::process_input(s, &[]);
        } else {
            let out = s.conn.take_output();
            Self::queue_out(s, out);
            if s.conn.closed {
                s.closing = true;
            }
        }
        touched.push(f.slot);
        self.submit_file_io(f.slot, f.gen)
    }

    fn on_events(&mut self, touched: &mut Vec<usize>) -> Result<(), WorkerError> {
        let mb = &self.shared.mailboxes[self.idx];
        mb.clear_counter();
        let evs = mb.drain();
        for (conn_id, ev) in evs {
            let found = self
                .slots
                .iter_mut()
                .enumerate()
                .find_map(|(i, s)| s.as_mut().filter(|s| s.conn.id == conn_id).map(|s| (i, s)));
            if let Some((i, s)) = found {
                if matches!(ev, crate::shared::Event::AckCheck) {
                    Self::check_acks(s, Instant::now());
                    touched.push(i);
                    continue;
                }
                s.conn.on_event(ev, Instant::now());
                let out = s.conn.take_output();
                Self::queue_out(s, out);
                if s.conn.closed {
                    s.closing = true;
                }
                let gen = s.gen;
                touched.push(i);
                self.submit_file_io(i, gen)?;
            }
        }
        Ok(())
    }

    fn on_send(&mut self, slot: usize, gen: u32, res: i32, touched: &mut Vec<usize>) {
        let Some(s) = self.slot_mut(slot, gen) else {
            return;
        };
        touched.push(slot);
        s.send_inflight = false;
        let Some((buf, off)) = s.sending.take() else {
            return;
        };
        if res < 0 {
            s.closing = true;
            return;
        }
        s.out_bytes = s.out_bytes.saturating_sub(res as usize);
        s.sent_total += res as u64;
        let off = off + res as usize;
        if off < buf.len() {
            s.sending = Some((buf, off));
            return;
        }
        if (POOL_BUF_MIN..=POOL_BUF_MAX).contains(&buf.capacity())
            && self.buf_pool.len() < POOL_BUFS
        {
            self.buf_pool.push(buf);
        }
    }

    /// Start a SEND if output is queued and none is in flight; finish closing connections.
    fn flush(&mut self, slot: usize) -> Result<(), WorkerError> {
        let Some(s) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return Ok(());
        };
        if s.closing {
            Self::give_back_unacked_breaks(s);
        }
        if s.closing && !s.conn.closed && s.conn.lose_transport() {
            // The socket is done with, the sessions are not: their other channels go on.
            s.closing = false;
            if !s.headless {
                s.headless = true;
                let _ = s.stream.shutdown(Shutdown::Both);
            }
        }
        if s.headless && !s.closing {
            // Output for the lost transport (async completions, breaks) has nowhere to go.
            s.outq.clear();
            s.sending = None;
            s.out_bytes = 0;
            return Ok(());
        }
        if s.closing {
            s.outq.clear();
            // smbdirectd frees a connection's slots of the shared area once this end of its
            // stream closes; while the kernel may still read (a WRITE's data) or write (a
            // READ's) an area range for this connection's file I/O, the stream stays open, so
            // that a slot is not handed to another client under that I/O (crate::rdma_area).
            // The last completion touches the slot again and closing goes on.
            if s.io_inflight > 0 && s.conn.rdma_area.is_some() {
                return Ok(());
            }
            // Pending file I/O holds no reference to the slot (see `InFlightIo`).
            if !s.send_inflight && !s.recv_armed {
                if let Some(mut s) = self.slots[slot].take() {
                    tracing::debug!(conn = s.conn.id, "connection closed");
                    s.conn.shutdown(Instant::now());
                    s.conn.release_fds();
                    self.free.push(slot);
                }
            } else {
                // Wake the multishot RECV so it terminates.
                let _ = s.stream.shutdown(Shutdown::Both);
            }
            return Ok(());
        }
        s.conn.sync_fds();
        self.backpressure(slot)?;
        let Some(s) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return Ok(());
        };
        if s.send_inflight {
            return Ok(());
        }
        if s.sending.is_none() && !s.outq.is_empty() {
            let mut buf = s.outq.pop_front().unwrap_or_default();
            // Small frames share one SEND; a large one (READ data) goes alone, uncopied.
            while s
                .outq
                .front()
                .is_some_and(|b| buf.len() + b.len() <= COALESCE_MAX)
            {
                if let Some(b) = s.outq.pop_front() {
                    buf.extend_from_slice(&b);
                }
            }
            s.sending = Some((buf, 0));
        }
        let Some((buf, off)) = &s.sending else {
            return Ok(());
        };
        let rest = &buf[*off..];
        let e = opcode::Send::new(
            types::Fd(s.stream.as_raw_fd()),
            rest.as_ptr(),
            rest.len().min(u32::MAX as usize) as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(ud(K_SEND, slot, s.gen));
        s.send_inflight = true;
        self.push(e)
    }
}

impl Worker {
    /// Pause reading a connection whose input must wait ([`Worker::input_blocked`]) by
    /// cancelling its RECV; resume (requests buffered meanwhile first) once its output has
    /// drained to half the limit.
    fn backpressure(&mut self, slot: usize) -> Result<(), WorkerError> {
        let Some(s) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return Ok(());
        };
        if s.closing {
            return Ok(());
        }
        let gen = s.gen;
        if !s.recv_paused {
            if Self::input_blocked(s) {
                tracing::debug!(
                    conn = s.conn.id,
                    out = s.out_bytes,
                    inbuf = s.inbuf.len(),
                    "pausing input"
                );
                s.recv_paused = true;
                if s.recv_armed {
                    let e = opcode::AsyncCancel::new(ud(K_RECV, slot, gen))
                        .build()
                        .user_data(ud(K_CANCEL, slot, gen));
                    self.push(e)?;
                }
            }
            return Ok(());
        }
        let limit = s.conn.shared.config.limits.output_bytes_per_conn;
        if s.out_bytes > limit / 2 {
            return Ok(());
        }
        if !s.inbuf.is_empty() {
            Self::process_input(s, &[]);
            self.submit_file_io(slot, gen)?;
        }
        let Some(s) = self.slot_mut(slot, gen) else {
            return Ok(());
        };
        if !s.closing && !Self::input_blocked(s) {
            tracing::debug!(conn = s.conn.id, "resuming input");
            s.recv_paused = false;
            self.arm_recv(slot)?;
        }
        Ok(())
    }
}

/// Stops the whole server when a worker thread unwinds from a panic (a library user without
/// the binary's aborting panic hook): every other worker exits, and `Server::run` reports it.
struct PanicGuard {
    shared: Arc<Shared>,
    idx: usize,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(worker = self.idx, "worker panicked; stopping the server");
            self.shared.worker_panicked.store(true, Ordering::Relaxed);
            self.shared.shutdown.store(true, Ordering::Relaxed);
            for m in &self.shared.mailboxes {
                m.wake();
            }
        }
    }
}

/// Test hook (debug builds only, and only with `SMBD_TEST_PANIC_KEEPALIVE=1` in the
/// environment): a NetBIOS keepalive carrying "PANIC" panics the worker, to test that a
/// panicking worker takes the process down.
#[cfg(debug_assertions)]
fn debug_panic_trigger(payload: &[u8]) {
    if payload == b"PANIC" && std::env::var_os("SMBD_TEST_PANIC_KEEPALIVE").is_some() {
        panic!("test panic requested by a keepalive (SMBD_TEST_PANIC_KEEPALIVE)");
    }
}

/// The longest packet of type `packet_kind` a connection may send: whole messages once it has
/// a session, less before; smbdirectd's payload frames (a WRITE's data, as long as the
/// message) only on its own connections and only once a session exists; keepalives and
/// session requests small.
fn frame_limit(packet_kind: u8, established: bool, via_rdma_proxy: bool) -> usize {
    match packet_kind {
        kind::SESSION_MESSAGE if established => MAX_FRAME,
        kind::SESSION_MESSAGE => MAX_PREAUTH_FRAME,
        payload_frame::KIND if established && via_rdma_proxy => MAX_FRAME,
        _ => MAX_CONTROL_FRAME,
    }
}

/// Whether a message is a lone (non-compound, unencrypted) READ or WRITE, which may run
/// concurrently with other READs/WRITEs of the connection in the ring.
fn is_plain_io(msg: &[u8]) -> bool {
    matches!(smb_proto::header::peek_command(msg), Some((cmd, 0))
        if cmd == smb_proto::Command::Read as u16 || cmd == smb_proto::Command::Write as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_sleeps_until_the_nearest_durable_deadline() {
        let now = Instant::now();
        assert_eq!(timer_wait(now, None), TICK);
        let soon = Duration::from_millis(30);
        assert_eq!(timer_wait(now, Some(now + soon)), soon);
        assert_eq!(timer_wait(now, Some(now + TICK * 5)), TICK);
        // A deadline already passed fires at once.
        assert_eq!(timer_wait(now + soon, Some(now)), Duration::ZERO);
    }

    fn msg(command: u16, next_command: u32) -> Vec<u8> {
        let mut w = smb_proto::Writer::new();
        smb_proto::Header {
            command,
            next_command,
            ..Default::default()
        }
        .encode(&mut w);
        w.zeros(49);
        w.buf
    }

    #[test]
    fn plain_io_is_a_lone_read_or_write() {
        assert!(is_plain_io(&msg(smb_proto::Command::Read as u16, 0)));
        assert!(is_plain_io(&msg(smb_proto::Command::Write as u16, 0)));
        // Anything else waits for in-flight I/O: FLUSH, CLOSE, a compound, sealed messages.
        assert!(!is_plain_io(&msg(smb_proto::Command::Flush as u16, 0)));
        assert!(!is_plain_io(&msg(smb_proto::Command::Close as u16, 0)));
        assert!(!is_plain_io(&msg(smb_proto::Command::Read as u16, 120)));
        let mut sealed = msg(smb_proto::Command::Read as u16, 0);
        sealed[..4].copy_from_slice(&smb_proto::header::TRANSFORM_PROTOCOL_ID);
        assert!(!is_plain_io(&sealed));
        assert!(!is_plain_io(&[0xFE, b'S', b'M', b'B']));
    }

    #[test]
    fn rdma_payload_frames_of_a_max_write_pass_only_from_an_authenticated_proxy_connection() {
        // The Linux client's 512 KiB WRITE through smbdirectd: its data arrives in one
        // payload frame (4-byte header, MessageId, data).
        let frame = 4 + 8 + (512 << 10);
        let payload = payload_frame::KIND;
        assert!(frame_limit(payload, true, true) >= frame);
        assert!(frame_limit(payload, true, true) >= 4 + 8 + crate::conn::MAX_IO as usize);
        // Not before a session, and never off the proxy's listener.
        assert_eq!(frame_limit(payload, false, true), MAX_CONTROL_FRAME);
        assert_eq!(frame_limit(payload, true, false), MAX_CONTROL_FRAME);
        assert_eq!(frame_limit(kind::SESSION_MESSAGE, true, false), MAX_FRAME);
        assert_eq!(
            frame_limit(kind::SESSION_MESSAGE, false, true),
            MAX_PREAUTH_FRAME
        );
        assert_eq!(frame_limit(kind::KEEPALIVE, true, true), MAX_CONTROL_FRAME);
    }

    #[test]
    fn a_break_may_go_unacknowledged_for_six_clamped_retransmission_timeouts() {
        let ms = Duration::from_millis;
        // Loopback's 200 ms minimum RTO (and anything below it) gives 1.2 s.
        assert_eq!(ack_timeout(Some(ms(200))), ms(1200));
        assert_eq!(ack_timeout(Some(ms(5))), ms(1200));
        assert_eq!(ack_timeout(Some(ms(500))), ms(3000));
        // A long RTO (a lossy path in backoff) is capped: 6 s at most.
        assert_eq!(ack_timeout(Some(Duration::from_secs(30))), ms(6000));
        // RTO unknown: the cap.
        assert_eq!(ack_timeout(None), ms(6000));
    }

    #[test]
    fn user_data_round_trips() {
        let u = ud(K_FILE, 0x12_3456, 0xDEAD_BEEF);
        assert_eq!(ud_kind(u), K_FILE);
        assert_eq!(ud_slot(u), 0x12_3456);
        assert_eq!(ud_gen(u), 0xDEAD_BEEF);
    }
}
