//! lockmgr transports: shared-memory rings, UDP, raw Ethernet, RDMA.
//!
//! A transport moves opaque frames (at most [`MAX_FRAME`] bytes) between smbd nodes (clients) and
//! lockmgrd (server). Every implementation sits behind [`ServerTransport`] / [`ClientTransport`]:
//!
//! * [`shm`]: SPSC byte rings in a memfd shared with a client process; set-up and death detection
//!   over a unix stream socket, eventfd doorbells only when the other side sleeps.
//! * [`udp`]: reliable, in-order, duplicate-free frames over UDP (sequence numbers, cumulative
//!   acks, retransmission with exponential backoff, connect handshake with a random connection id).
//! * [`reliable`]: the medium-independent reliability layer shared by UDP and raw Ethernet,
//!   authenticated by the cluster key and MAC'd per frame ([`fabric`]).
//! * [`afpacket`] / `afxdp`: the same protocol in raw Ethernet frames with their own EtherType
//!   (AF_PACKET socket, or an AF_XDP socket behind an EtherType-filtering XDP program).
//! * [`netns`]: throw-away network namespace pairs joined by veth, for tests and benchmarks.
//! * [`raw`]: protocol-free ping-pong baselines and echo helpers for the benchmark harness.
//!
//! Latency is the product: all hot paths busy-poll without syscalls; `wait` spins for
//! [`SpinConfig::spin`] and then sleeps in the kernel, and stops spinning altogether once the
//! traffic stops ([`SpinMode::Adaptive`]), so an idle cluster burns no CPU.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
// An I/O layer: raw sockets, rings, mmap, verbs. `unsafe` is allowed here (the workspace denies it)
// and every block carries a `// SAFETY:` comment (clippy::undocumented_unsafe_blocks is denied).
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

pub use fabric::FabricKey;

pub mod afpacket;
#[cfg(feature = "afxdp")]
pub mod afxdp;
pub mod cpu_pressure;
pub mod eth;
pub mod fabric;
#[doc(hidden)]
pub mod fuzzing;
pub mod netns;
pub mod raw;
pub mod reliable;
pub mod shm;
pub mod sys;
pub mod udp;

/// Largest frame any transport carries.
pub const MAX_FRAME: usize = 8192;

/// Server-side handle of one connected client. Never reused within one server instance, so a
/// reconnecting client always gets a fresh id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// What [`ServerTransport::poll`] reports. For one peer, `Connected` comes before any of its
/// frames and `Disconnected` after all of them; nothing about a peer follows `Disconnected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent<'a> {
    /// A new client finished the handshake.
    Connected(PeerId),
    /// One frame from a client; the slice is only valid during the callback.
    Frame(PeerId, &'a [u8]),
    /// The client went away (closed, died, timed out, or violated the protocol).
    Disconnected(PeerId),
}

/// Errors of every transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer is gone (closed, killed, timed out, or sent something invalid).
    #[error("peer disconnected")]
    Disconnected,
    /// The server has no (longer a) peer with this id.
    #[error("unknown peer {0:?}")]
    UnknownPeer(PeerId),
    /// Frames are limited to [`MAX_FRAME`] bytes.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    FrameTooLarge {
        /// Length of the rejected frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Send ring / window is full: poll (so the peer's progress is seen) and retry.
    #[error("send buffer full, retry later")]
    Full,
    /// Connection set-up did not complete in time.
    #[error("timed out")]
    Timeout,
    /// The other side sent something that is not this protocol (handshake stage).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The server refused our proof of the cluster key (the keys differ).
    #[error("the server refused our cluster-key proof (cluster key mismatch?)")]
    AuthRejected,
    /// The server could not prove it holds the cluster key (the keys differ, or an impostor).
    #[error("the server could not prove the cluster key (cluster key mismatch or impostor)")]
    PeerNotAuthenticated,
    /// Bad configuration value.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// Raw-Ethernet set-up problem (interface, MAC, EtherType, MTU, XDP).
    #[error(transparent)]
    Ethernet(#[from] eth::EthError),
    /// Underlying system call failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// How long `wait` busy-polls before it sleeps in the kernel.
///
/// Waking an idle vCPU costs ~50 us, so spinning a little longer than that after the last
/// activity keeps the hot path syscall-free; with only two vCPUs more than two concurrent
/// spinners starve each other, hence `spin = 0` (always sleep) must work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinConfig {
    /// Busy-poll budget per `wait` call; `Duration::ZERO` sleeps immediately.
    pub spin: Duration,
    /// When the budget applies.
    pub mode: SpinMode,
}

/// When [`SpinConfig::spin`] is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpinMode {
    /// Spin only while there is traffic: once nothing was received or sent for `idle_after`,
    /// `wait` sleeps at once, so an idle endpoint costs no CPU however large the budget
    /// (and at most `idle_after` of spinning follows the last frame).
    Adaptive {
        /// Quiet time after which spinning stops.
        idle_after: Duration,
        /// Also stop while the kernel reports CPU contention ([`cpu_pressure`]): the spin
        /// would take a CPU another runnable thread waits for. Off for an endpoint that owns
        /// its core.
        yield_to_cpu_pressure: bool,
    },
    /// Never sleep: `wait` busy-polls until something arrives or its timeout passes, whatever
    /// the traffic. For deployments that give the endpoint a core of its own.
    Always,
}

/// Quiet time after which an adaptive spinner stops spinning.
pub const DEFAULT_SPIN_IDLE_AFTER: Duration = Duration::from_millis(10);

impl Default for SpinMode {
    fn default() -> Self {
        SpinMode::Adaptive {
            idle_after: DEFAULT_SPIN_IDLE_AFTER,
            yield_to_cpu_pressure: true,
        }
    }
}

impl SpinConfig {
    /// Adaptive spinning with budget `spin` per `wait`.
    pub fn adaptive(spin: Duration) -> Self {
        SpinConfig {
            spin,
            mode: SpinMode::default(),
        }
    }

    /// Never spin: every `wait` sleeps in the kernel at once.
    pub fn never() -> Self {
        Self::adaptive(Duration::ZERO)
    }
}

impl Default for SpinConfig {
    fn default() -> Self {
        Self::adaptive(Duration::from_micros(100))
    }
}

/// Something that can interrupt a thread blocked in a transport's `wait`.
pub trait Wake: Send + Sync {
    /// Make the current or next `wait` return promptly.
    fn wake(&self);
}

/// Cloneable, thread-safe handle that interrupts [`ServerTransport::wait`].
#[derive(Clone)]
pub struct Waker(Arc<dyn Wake>);

impl Waker {
    /// Wrap a transport-specific wake mechanism.
    pub fn new(inner: Arc<dyn Wake>) -> Self {
        Waker(inner)
    }

    /// Interrupt the waiting thread (or make its next `wait` return immediately).
    pub fn wake(&self) {
        self.0.wake();
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

/// Server side of a transport: many peers, one thread.
///
/// `poll` borrows the transport, so replies produced while handling events are queued by the
/// caller and sent after `poll` returns. Typical loop:
/// `loop { if t.poll(&mut handle)? == 0 { t.wait(None)? } flush_replies(&mut t)?; }`.
pub trait ServerTransport: Send {
    /// Non-blocking: deliver every event available now to `f`; returns how many were delivered.
    fn poll(&mut self, f: &mut dyn FnMut(ServerEvent<'_>)) -> Result<usize, TransportError>;
    /// Queue one frame to `peer`. `Err(Full)` means retry after `poll`; `Err(Disconnected)` or
    /// `Err(UnknownPeer)` mean the peer is gone (a `Disconnected` event follows if not yet sent).
    fn send(&mut self, peer: PeerId, frame: &[u8]) -> Result<(), TransportError>;
    /// Block until events may be available, `timeout` passes, or the [`Waker`] fires. Spins first
    /// per [`SpinConfig`], then sleeps. Spurious returns are allowed.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError>;
    /// Handle for other threads to interrupt `wait` (e.g. for shutdown).
    fn waker(&self) -> Waker;
    /// Drop a peer (e.g. misbehaving). No `Disconnected` event is reported for it.
    fn close_peer(&mut self, peer: PeerId);
    /// Handshake and frame-authentication counters, for transports that authenticate
    /// (the datagram fabric).
    fn fabric_counters(&self) -> Option<fabric::FabricCounters> {
        None
    }
}

/// Client side of a transport: one connection to one server.
pub trait ClientTransport: Send {
    /// Finishes the transport's own authentication with the cluster's fabric secret, for
    /// transports whose `connect` could not (the datagram transports when their config had no
    /// `fabric_key`). `lockmgr-client` calls it before its handshake. Local or separately
    /// authenticated transports (shm, RDMA) have nothing to do.
    fn authenticate(&mut self, key: &FabricKey) -> Result<(), TransportError> {
        let _ = key;
        Ok(())
    }
    /// Queue one frame to the server. `Err(Full)`: retry after `poll`.
    fn send(&mut self, frame: &[u8]) -> Result<(), TransportError>;
    /// Non-blocking: deliver every frame available now to `f`; returns how many. Returns
    /// `Err(Disconnected)` once the server is gone and every frame it sent was delivered.
    fn poll(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<usize, TransportError>;
    /// Block until frames may be available or `timeout` passes (spins first per [`SpinConfig`]).
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError>;
    /// For an external io_uring/epoll loop: an fd that becomes readable when frames may be
    /// waiting, if the transport has one. Call [`ClientTransport::arm`] before sleeping on it.
    fn as_raw_fd(&self) -> Option<RawFd>;
    /// Prepare to sleep on [`ClientTransport::as_raw_fd`]: returns `Ok(false)` if frames are
    /// already waiting (then poll instead of sleeping). Busy-polling transports only signal the
    /// fd while armed; the next `poll` disarms.
    fn arm(&mut self) -> Result<bool, TransportError> {
        Ok(true)
    }
    /// Longest an external loop may sleep on the fd before calling `poll` again (retransmission
    /// and keepalive timers); `None` = no limit.
    fn poll_timeout(&self) -> Option<Duration> {
        None
    }
}

/// Lets code pick a transport at run time (`Box<dyn ClientTransport>`).
impl<T: ClientTransport + ?Sized> ClientTransport for Box<T> {
    fn authenticate(&mut self, key: &FabricKey) -> Result<(), TransportError> {
        (**self).authenticate(key)
    }
    fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        (**self).send(frame)
    }
    fn poll(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<usize, TransportError> {
        (**self).poll(f)
    }
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        (**self).wait(timeout)
    }
    fn as_raw_fd(&self) -> Option<RawFd> {
        (**self).as_raw_fd()
    }
    fn arm(&mut self) -> Result<bool, TransportError> {
        (**self).arm()
    }
    fn poll_timeout(&self) -> Option<Duration> {
        (**self).poll_timeout()
    }
}

/// Lets code pick a transport at run time (`Box<dyn ServerTransport>`).
impl<T: ServerTransport + ?Sized> ServerTransport for Box<T> {
    fn poll(&mut self, f: &mut dyn FnMut(ServerEvent<'_>)) -> Result<usize, TransportError> {
        (**self).poll(f)
    }
    fn send(&mut self, peer: PeerId, frame: &[u8]) -> Result<(), TransportError> {
        (**self).send(peer, frame)
    }
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        (**self).wait(timeout)
    }
    fn waker(&self) -> Waker {
        (**self).waker()
    }
    fn close_peer(&mut self, peer: PeerId) {
        (**self).close_peer(peer)
    }
    fn fabric_counters(&self) -> Option<fabric::FabricCounters> {
        (**self).fabric_counters()
    }
}

fn check_frame_len(frame: &[u8]) -> Result<(), TransportError> {
    if frame.len() > MAX_FRAME {
        return Err(TransportError::FrameTooLarge {
            len: frame.len(),
            max: MAX_FRAME,
        });
    }
    Ok(())
}
