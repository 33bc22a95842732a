//! One io_uring event loop per worker thread (thread-per-core; no thread per connection).
//!
//! Every worker arms a multishot ACCEPT on each (shared) listening socket, so the kernel
//! spreads new connections over the workers. Each connection has one multishot RECV drawing
//! from a per-worker pool of provided buffers, and at most one SEND in flight. Events from
//! other threads (lock notifications, directory changes) arrive through the worker's
//! [`Mailbox`](crate::shared::Mailbox) eventfd, polled with a multishot POLL_ADD.

use std::collections::VecDeque;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::conn::Conn;
use crate::shared::Shared;

const BUF_SIZE: usize = 64 * 1024;
const NUM_BUFS: u16 = 256;
const BUF_GROUP: u16 = 7;

const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_EVENT: u64 = 4;
const K_TIMER: u64 = 5;
const K_PROVIDE: u64 = 6;

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
    stream: TcpStream,
    conn: Conn,
    inbuf: Vec<u8>,
    outq: VecDeque<Vec<u8>>,
    /// The buffer of the SEND in flight and how much of it was already sent.
    sending: Option<(Vec<u8>, usize)>,
    send_inflight: bool,
    recv_armed: bool,
    closing: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("io_uring setup: {0}")]
    Setup(std::io::Error),
    #[error("io_uring submit: {0}")]
    Submit(std::io::Error),
}

pub struct Worker {
    idx: usize,
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    conn_ids: Arc<AtomicU64>,
    ring: IoUring,
    pool: Vec<u8>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    next_gen: u32,
    timespec: types::Timespec,
}

impl Worker {
    pub fn new(
        idx: usize,
        shared: Arc<Shared>,
        listeners: Vec<TcpListener>,
        conn_ids: Arc<AtomicU64>,
    ) -> Result<Worker, WorkerError> {
        let ring = IoUring::new(4096).map_err(WorkerError::Setup)?;
        Ok(Worker {
            idx,
            shared,
            listeners,
            conn_ids,
            ring,
            pool: vec![0u8; BUF_SIZE * NUM_BUFS as usize],
            slots: Vec::new(),
            free: Vec::new(),
            next_gen: 1,
            timespec: types::Timespec::new().sec(1),
        })
    }

    fn push(&mut self, e: squeue::Entry) -> Result<(), WorkerError> {
        loop {
            // SAFETY: every buffer referenced by an entry we push (the provided-buffer pool,
            // send buffers held in `Slot::sending`, the timespec) lives in `self` and is
            // neither moved nor freed until the corresponding completion has been reaped.
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
        if s.closing || s.recv_armed {
            return Ok(());
        }
        s.recv_armed = true;
        let e = opcode::RecvMulti::new(types::Fd(s.stream.as_raw_fd()), BUF_GROUP)
            .build()
            .user_data(ud(K_RECV, slot, s.gen));
        self.push(e)
    }

    fn arm_accept(&mut self, li: usize) -> Result<(), WorkerError> {
        let fd = self.listeners[li].as_raw_fd();
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(K_ACCEPT, li, 0));
        self.push(e)
    }

    fn arm_timer(&mut self) -> Result<(), WorkerError> {
        let ts = &self.timespec as *const types::Timespec;
        let e = opcode::Timeout::new(ts)
            .build()
            .user_data(ud(K_TIMER, 0, 0));
        self.push(e)
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
        self.provide(0, NUM_BUFS)?;
        for li in 0..self.listeners.len() {
            self.arm_accept(li)?;
        }
        self.arm_events()?;
        if self.idx == 0 {
            self.arm_timer()?;
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
            for &(u, res, fl) in &cqes {
                match ud_kind(u) {
                    K_ACCEPT => self.on_accept(ud_slot(u), res, fl, &mut touched)?,
                    K_RECV => self.on_recv(ud_slot(u), ud_gen(u), res, fl, &mut touched)?,
                    K_SEND => self.on_send(ud_slot(u), ud_gen(u), res, &mut touched),
                    K_EVENT => {
                        if !cqueue::more(fl) {
                            self.arm_events()?;
                        }
                        self.on_events(&mut touched);
                    }
                    K_TIMER => {
                        self.shared.lock_tick();
                        self.arm_timer()?;
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
            if self.shared.shutdown.load(Ordering::Relaxed) {
                break;
            }
        }
        for i in 0..self.slots.len() {
            if let Some(mut s) = self.slots[i].take() {
                let _ = s.stream.shutdown(Shutdown::Both);
                s.conn.shutdown();
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
        // SAFETY: a successful ACCEPT returns a new descriptor that we exclusively own.
        let stream = unsafe { TcpStream::from_raw_fd(res) };
        let _ = stream.set_nodelay(true);
        let id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
        let conn = Conn::new(
            id,
            self.shared.clone(),
            stream.local_addr().ok(),
            stream.peer_addr().ok(),
        );
        self.shared.register_conn(id, self.idx);
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
        self.arm_recv(idx)?;
        touched.push(idx);
        Ok(())
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
                let data = self.pool[start..start + res as usize].to_vec();
                if let Some(s) = self.slot_mut(slot, gen) {
                    s.inbuf.extend_from_slice(&data);
                    Self::process_input(s);
                }
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
        if res == 0 || (res < 0 && res != -libc::ENOBUFS) {
            s.closing = true;
        } else if !more {
            self.arm_recv(slot)?;
        }
        Ok(())
    }

    /// Split the input into NetBIOS session messages (RFC 1002 4.3.1) and feed them.
    fn process_input(s: &mut Slot) {
        let mut pos = 0usize;
        while s.inbuf.len() - pos >= 4 && !s.conn.closed {
            let h = &s.inbuf[pos..pos + 4];
            let len = ((h[1] as usize) << 16) | ((h[2] as usize) << 8) | h[3] as usize;
            match h[0] {
                0x00 => {
                    if s.inbuf.len() - pos < 4 + len {
                        break;
                    }
                    let msg = s.inbuf[pos + 4..pos + 4 + len].to_vec();
                    pos += 4 + len;
                    s.conn.on_message(&msg);
                }
                0x85 => pos += 4 + len, // keepalive
                0x81 => {
                    // Session request (port 139): answer positively.
                    if s.inbuf.len() - pos < 4 + len {
                        break;
                    }
                    pos += 4 + len;
                    s.outq.push_back(vec![0x82, 0, 0, 0]);
                }
                _ => {
                    s.conn.closed = true;
                }
            }
        }
        s.inbuf.drain(..pos);
        s.outq.extend(s.conn.take_output());
        if s.conn.closed {
            s.closing = true;
        }
    }

    fn on_events(&mut self, touched: &mut Vec<usize>) {
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
                s.conn.on_event(ev);
                s.outq.extend(s.conn.take_output());
                if s.conn.closed {
                    s.closing = true;
                }
                touched.push(i);
            }
        }
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
        let off = off + res as usize;
        if off < buf.len() {
            s.sending = Some((buf, off));
        }
    }

    /// Start a SEND if output is queued and none is in flight; finish closing connections.
    fn flush(&mut self, slot: usize) -> Result<(), WorkerError> {
        let Some(s) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return Ok(());
        };
        if s.closing {
            s.outq.clear();
            if !s.send_inflight && !s.recv_armed {
                if let Some(mut s) = self.slots[slot].take() {
                    tracing::debug!(conn = s.conn.id, "connection closed");
                    s.conn.shutdown();
                    self.free.push(slot);
                }
            } else {
                // Wake the multishot RECV so it terminates.
                let _ = s.stream.shutdown(Shutdown::Both);
            }
            return Ok(());
        }
        if s.send_inflight {
            return Ok(());
        }
        if s.sending.is_none() && !s.outq.is_empty() {
            let mut buf = s.outq.pop_front().unwrap_or_default();
            while let Some(b) = s.outq.pop_front() {
                buf.extend_from_slice(&b);
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
