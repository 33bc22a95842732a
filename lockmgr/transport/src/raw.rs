//! Protocol-free ping-pong baselines and transport echo helpers for the benchmark harness.
//!
//! The raw baselines use the same mechanism as the transports without any of the protocol:
//! [`shm_pingpong`] bounces a sequence number plus payload through two cache-line-aligned
//! mailboxes (one 64-byte line each way for payloads up to [`SHM_LINE_PAYLOAD`] bytes) between two
//! busy-polling threads, [`udp_pingpong`] bounces datagrams between two non-blocking loopback
//! sockets, [`link_pingpong`] bounces datagrams between two raw-Ethernet links (AF_PACKET or
//! AF_XDP, typically in two network namespaces). [`EchoServer`] + [`transport_pingpong`] measure the same round trip through a real
//! [`ServerTransport`] / [`ClientTransport`] pair, so the bench can report transport overhead.
//!
//! Every sample is one round trip in nanoseconds. Both sides busy-poll, i.e. each run occupies
//! two CPUs for its duration.

use std::collections::VecDeque;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::reliable::Link;
use crate::{
    ClientTransport, PeerId, ServerEvent, ServerTransport, TransportError, Waker, MAX_FRAME,
};

/// Payload bytes that share the 64-byte line with the sequence number.
pub const SHM_LINE_PAYLOAD: usize = 56;
const WORDS: usize = MAX_FRAME / 8;
const STOP: u64 = u64::MAX;

/// Sequence word followed by payload words, all atomics so no `unsafe` is needed; the first
/// seven payload words share the sequence word's cache line.
#[repr(C, align(128))]
struct Mailbox {
    seq: AtomicU64,
    words: [AtomicU64; WORDS],
}

impl Mailbox {
    fn new() -> Box<Self> {
        Box::new(Mailbox {
            seq: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        })
    }
}

fn words_for(len: usize) -> usize {
    len.div_ceil(8)
}

fn check_len(len: usize) -> Result<(), TransportError> {
    if len > MAX_FRAME {
        return Err(TransportError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(())
}

/// The CPUs the two sides of every baseline run on: the echo (server) side and the measuring
/// (client) side. Two busy-polling threads on one CPU take turns by time slice, which shows as
/// bimodal ~ms round trips, so a benchmark pins them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinning {
    /// CPU of echo threads and servers.
    pub server: usize,
    /// CPU of the measuring thread.
    pub client: usize,
}

static PINNING: std::sync::OnceLock<Pinning> = std::sync::OnceLock::new();

/// Pins every later baseline's threads as `p` says (once per process; false if already set).
pub fn set_pinning(p: Pinning) -> bool {
    PINNING.set(p).is_ok()
}

/// Pins the calling thread to the server CPU of [`set_pinning`] (nothing if unset).
pub fn pin_server_side() {
    if let Some(p) = PINNING.get() {
        pin(p.server);
    }
}

/// Pins the calling thread to the client CPU of [`set_pinning`] (nothing if unset).
pub fn pin_client_side() {
    if let Some(p) = PINNING.get() {
        pin(p.client);
    }
}

fn pin(cpu: usize) {
    if let Err(e) = crate::sys::pin_current_thread(cpu) {
        tracing::warn!(cpu, error = %e, "cannot pin thread");
    }
}

/// Stops a busy echo thread even if the measuring side panics.
struct StopOnDrop<'a>(&'a Mailbox);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.seq.store(STOP, Ordering::Release);
    }
}

/// Raw shared-memory ping-pong between two threads: `warmup` unmeasured then `rounds` measured
/// round trips of `msg_len` bytes. Returns nanoseconds per round trip.
pub fn shm_pingpong(
    rounds: usize,
    warmup: usize,
    msg_len: usize,
) -> Result<Vec<u64>, TransportError> {
    check_len(msg_len)?;
    let ping: Arc<Mailbox> = Arc::from(Mailbox::new());
    let pong: Arc<Mailbox> = Arc::from(Mailbox::new());
    let nwords = words_for(msg_len);
    let (p2, q2) = (ping.clone(), pong.clone());
    pin_client_side();
    let echo = std::thread::spawn(move || {
        pin_server_side();
        let mut last = 0;
        loop {
            let s = p2.seq.load(Ordering::Acquire);
            if s == last {
                std::hint::spin_loop();
                continue;
            }
            if s == STOP {
                return;
            }
            for i in 0..nwords {
                q2.words[i].store(p2.words[i].load(Ordering::Relaxed), Ordering::Relaxed);
            }
            q2.seq.store(s, Ordering::Release);
            last = s;
        }
    });
    let guard = StopOnDrop(&ping);
    let mut samples = Vec::with_capacity(rounds);
    let mut sink = 0u64;
    for i in 1..=(warmup + rounds) as u64 {
        let t0 = Instant::now();
        for w in 0..nwords {
            ping.words[w].store(i ^ w as u64, Ordering::Relaxed);
        }
        ping.seq.store(i, Ordering::Release);
        while pong.seq.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        for w in 0..nwords {
            sink = sink.wrapping_add(pong.words[w].load(Ordering::Relaxed));
        }
        let dt = t0.elapsed().as_nanos() as u64;
        if i > warmup as u64 {
            samples.push(dt);
        }
    }
    std::hint::black_box(sink);
    drop(guard);
    let _ = echo.join();
    Ok(samples)
}

/// Raw UDP loopback ping-pong: two non-blocking sockets, both sides busy-poll `recv`.
pub fn udp_pingpong(
    rounds: usize,
    warmup: usize,
    msg_len: usize,
) -> Result<Vec<u64>, TransportError> {
    check_len(msg_len)?;
    let echo_sock = UdpSocket::bind("127.0.0.1:0")?;
    echo_sock.set_nonblocking(true)?;
    let echo_addr = echo_sock.local_addr()?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(echo_addr)?;
    sock.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    pin_client_side();
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        pin_server_side();
        let mut buf = vec![0u8; MAX_FRAME + 1];
        while !stop2.load(Ordering::Relaxed) {
            match echo_sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    echo_sock.send_to(&buf[..n], from)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    let result = (|| {
        let msg = vec![0x5au8; msg_len];
        let mut buf = vec![0u8; MAX_FRAME + 1];
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..warmup + rounds {
            let t0 = Instant::now();
            sock.send(&msg)?;
            loop {
                match sock.recv(&mut buf) {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                    Err(e) => return Err(TransportError::Io(e)),
                }
            }
            let dt = t0.elapsed().as_nanos() as u64;
            if i >= warmup {
                samples.push(dt);
            }
        }
        Ok(samples)
    })();
    stop.store(true, Ordering::Relaxed);
    match echo.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "udp echo thread failed"),
        Err(_) => tracing::warn!("udp echo thread panicked"),
    }
    result
}

/// Raw ping-pong over two [`Link`]s (e.g. AF_PACKET or AF_XDP endpoints in two network
/// namespaces): the medium's own framing, none of the reliability protocol. `echo` answers
/// every datagram to its sender from a busy-polling thread; `client` sends `msg_len` bytes to
/// `echo_addr` and busy-polls for the answer. Nanoseconds per round trip. A lost datagram
/// (none expected on veth) is resent after `RESEND`, so it shows as one slow sample.
pub fn link_pingpong<L: Link + 'static>(
    mut echo: L,
    mut client: L,
    echo_addr: L::Addr,
    rounds: usize,
    warmup: usize,
    msg_len: usize,
) -> Result<Vec<u64>, TransportError> {
    const RESEND: Duration = Duration::from_millis(100);
    check_len(msg_len)?;
    if msg_len > client.max_frame() {
        return Err(TransportError::FrameTooLarge {
            len: msg_len,
            max: client.max_frame(),
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    pin_client_side();
    let handle = std::thread::spawn(move || -> std::io::Result<()> {
        pin_server_side();
        let mut buf = vec![0u8; L::RX_BUF];
        let mut out = vec![0u8; L::RX_BUF];
        while !stop2.load(Ordering::Relaxed) {
            match echo.recv(&mut buf)? {
                Some((start, len, from)) => {
                    out[..len].copy_from_slice(&buf[start..start + len]);
                    echo.send_to(&out[..len], from)?;
                }
                None => std::hint::spin_loop(),
            }
        }
        Ok(())
    });
    let result = (|| {
        let mut msg = vec![0x5au8; msg_len.max(8)];
        msg.truncate(msg_len);
        let mut buf = vec![0u8; L::RX_BUF];
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..warmup + rounds {
            // A round number in the payload so a late answer to a resent ping is not
            // mistaken for the current one.
            let tag = (i as u64).to_le_bytes();
            let n = msg_len.min(8);
            msg[..n].copy_from_slice(&tag[..n]);
            let t0 = Instant::now();
            client.send_to(&msg, echo_addr)?;
            let mut sent = t0;
            loop {
                match client.recv(&mut buf)? {
                    Some((start, len, _))
                        if len == msg_len && buf[start..start + n] == tag[..n] =>
                    {
                        break
                    }
                    Some(_) => {}
                    None => {
                        if sent.elapsed() >= RESEND {
                            client.send_to(&msg, echo_addr)?;
                            sent = Instant::now();
                        }
                        std::hint::spin_loop()
                    }
                }
            }
            let dt = t0.elapsed().as_nanos() as u64;
            if i >= warmup {
                samples.push(dt);
            }
        }
        Ok(samples)
    })();
    stop.store(true, Ordering::Relaxed);
    match handle.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "link echo thread failed"),
        Err(_) => tracing::warn!("link echo thread panicked"),
    }
    result
}

/// A thread that echoes every frame a [`ServerTransport`] receives back to its sender.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    waker: Waker,
    handle: Option<JoinHandle<Result<u64, TransportError>>>,
}

impl EchoServer {
    /// Start echoing on `transport` in a new thread.
    pub fn spawn<T: ServerTransport + 'static>(mut transport: T) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let waker = transport.waker();
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            pin_server_side();
            echo_loop(&mut transport, &stop2)
        });
        EchoServer {
            stop,
            waker,
            handle: Some(handle),
        }
    }

    /// Stop the thread; returns how many frames it echoed.
    pub fn stop(mut self) -> Result<u64, TransportError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<u64, TransportError> {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| TransportError::Protocol("echo thread panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if self.handle.is_some() {
            let _ = self.shutdown();
        }
    }
}

fn echo_loop(t: &mut dyn ServerTransport, stop: &AtomicBool) -> Result<u64, TransportError> {
    let mut queue: VecDeque<(PeerId, Vec<u8>)> = VecDeque::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut echoed = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = t.poll(&mut |ev| match ev {
            ServerEvent::Frame(p, b) => {
                let mut v = pool.pop().unwrap_or_default();
                v.clear();
                v.extend_from_slice(b);
                queue.push_back((p, v));
            }
            ServerEvent::Disconnected(p) => queue.retain(|(q, _)| *q != p),
            ServerEvent::Connected(_) => {}
        })?;
        let mut progressed = n > 0;
        while let Some((p, v)) = queue.front() {
            match t.send(*p, v) {
                Ok(()) => {
                    echoed += 1;
                    progressed = true;
                    if let Some((_, v)) = queue.pop_front() {
                        pool.push(v);
                    }
                }
                Err(TransportError::Full) => break,
                Err(TransportError::Disconnected | TransportError::UnknownPeer(_)) => {
                    queue.pop_front();
                }
                Err(e) => return Err(e),
            }
        }
        if !progressed {
            t.wait(Some(Duration::from_millis(100)))?;
        }
    }
    Ok(echoed)
}

/// Round trips of `msg_len`-byte frames through `client` to an [`EchoServer`] (or any echoing
/// peer): `warmup` unmeasured, then `rounds` measured; nanoseconds per round trip.
pub fn transport_pingpong(
    client: &mut dyn ClientTransport,
    rounds: usize,
    warmup: usize,
    msg_len: usize,
) -> Result<Vec<u64>, TransportError> {
    check_len(msg_len)?;
    pin_client_side();
    let msg = vec![0xa5u8; msg_len];
    let mut samples = Vec::with_capacity(rounds);
    // Counted across rounds so a reply picked up while retrying a full send is not lost.
    let mut replies = 0usize;
    for i in 0..warmup + rounds {
        let t0 = Instant::now();
        loop {
            match client.send(&msg) {
                Ok(()) => break,
                Err(TransportError::Full) => {
                    client.poll(&mut |_| replies += 1)?;
                }
                Err(e) => return Err(e),
            }
        }
        while replies <= i {
            if client.poll(&mut |_| replies += 1)? == 0 {
                client.wait(Some(Duration::from_millis(100)))?;
            }
        }
        let dt = t0.elapsed().as_nanos() as u64;
        if i >= warmup {
            samples.push(dt);
        }
    }
    Ok(samples)
}
