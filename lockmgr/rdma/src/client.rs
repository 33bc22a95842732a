//! Client side: one RC QP to lockmgrd, set up over TCP.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use lockmgr_transport::{ClientTransport, SpinConfig, TransportError};

use crate::conn::{Conn, ConnStats};
use crate::sys::{sock_alive, Epoll};
use crate::verbs::{self, CompChannel, DeviceInfo};
use crate::wire::{Hello, HELLO_LEN};
use crate::{check_frame_len, RdmaConfig, RdmaError};

const TOKEN_SOCK: u64 = 0;
const TOKEN_CHANNEL: u64 = 1;
/// Completions handled per `poll`.
const BUDGET: usize = 1024;
/// The side channel is checked for EOF on every Nth idle `poll`.
const IO_CHECK_INTERVAL: u32 = 64;

/// An smbd node's RDMA connection to lockmgrd.
pub struct RdmaClient {
    // Before `channel`: the CQ must be destroyed before its completion channel.
    conn: Conn,
    channel: CompChannel,
    info: DeviceInfo,
    sock: TcpStream,
    /// Watches the completion channel and the side channel, so one fd serves external loops.
    epoll: Epoll,
    events: Vec<(u64, u32)>,
    spin: SpinConfig,
    sock_dead: bool,
    polls: u32,
}

fn io_to_transport(e: std::io::Error) -> TransportError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TransportError::Timeout,
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            TransportError::Disconnected
        }
        _ => TransportError::Io(e),
    }
}

impl RdmaClient {
    /// Opens the RDMA device, connects to an [`crate::RdmaServer`] listening on `server` (TCP),
    /// exchanges queue-pair coordinates and brings the QP to RTS. Blocks up to
    /// `cfg.handshake_timeout` for the TCP part.
    ///
    /// Fails with [`RdmaError::NoDevice`] when the machine has no RDMA.
    pub fn connect(server: SocketAddr, cfg: &RdmaConfig) -> Result<RdmaClient, RdmaError> {
        cfg.validate()?;
        let dev = verbs::open(&cfg.device)?;
        let channel = CompChannel::new(&dev)?;
        let mut conn = Conn::new(&dev, Some(&channel), cfg.slots, cfg.max_inline)?;
        let timeout = cfg.handshake_timeout.max(Duration::from_millis(1));
        let sock = TcpStream::connect_timeout(&server, timeout).map_err(io_to_transport)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        (&sock)
            .write_all(&conn.local_hello().encode())
            .map_err(io_to_transport)?;
        let mut buf = [0u8; HELLO_LEN];
        (&sock).read_exact(&mut buf).map_err(io_to_transport)?;
        let remote = Hello::decode(&buf).map_err(|e| {
            tracing::warn!(error = %e, "bad RDMA hello from server");
            TransportError::Protocol("bad RDMA hello from server")
        })?;
        conn.connect(&remote)?;
        sock.set_read_timeout(None)?;
        sock.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.add(sock.as_raw_fd(), TOKEN_SOCK)?;
        epoll.add(channel.fd(), TOKEN_CHANNEL)?;
        tracing::debug!(%server, remote_qpn = remote.qpn, "RDMA client connected");
        Ok(RdmaClient {
            conn,
            channel,
            info: dev.info().clone(),
            sock,
            epoll,
            events: Vec::with_capacity(4),
            spin: cfg.spin,
            sock_dead: false,
            polls: 0,
        })
    }

    /// The device in use.
    pub fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Connection counters.
    pub fn stats(&self) -> ConnStats {
        self.conn.stats()
    }

    fn dead(&self) -> bool {
        self.sock_dead || self.conn.is_broken()
    }

    fn check_alive(&mut self) {
        if !self.sock_dead && !sock_alive(&self.sock) {
            tracing::debug!("lockmgrd's RDMA side channel closed");
            self.sock_dead = true;
        }
    }
}

impl ClientTransport for RdmaClient {
    fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        check_frame_len(frame)?;
        if self.dead() {
            return Err(TransportError::Disconnected);
        }
        match self.conn.send_data(frame) {
            Err(TransportError::Full) => {
                self.check_alive();
                if self.dead() {
                    Err(TransportError::Disconnected)
                } else {
                    Err(TransportError::Full)
                }
            }
            r => r,
        }
    }

    fn poll(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<usize, TransportError> {
        self.polls = self.polls.wrapping_add(1);
        self.conn.poll_cq();
        let n = self.conn.process(BUDGET, f);
        if n == 0 {
            if self.polls & (IO_CHECK_INTERVAL - 1) == 0 {
                self.check_alive();
            }
            if self.dead() && !self.conn.has_pending() {
                return Err(TransportError::Disconnected);
            }
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.dead() || self.conn.has_pending() {
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
                if self.conn.poll_cq() > 0 {
                    return Ok(());
                }
                i = i.wrapping_add(1);
                if i & 15 == 0 && start.elapsed() >= spin {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        if !self.arm()? {
            return Ok(());
        }
        let remaining = timeout.map(|t| t.saturating_sub(start.elapsed()));
        let mut events = std::mem::take(&mut self.events);
        let r = self.epoll.wait(&mut events, remaining);
        let mut sock_ready = false;
        for &(token, _) in &events {
            match token {
                TOKEN_CHANNEL => self.channel.drain(),
                _ => sock_ready = true,
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
        Some(self.epoll.raw_fd())
    }

    fn arm(&mut self) -> Result<bool, TransportError> {
        // Consume old events first so the fd only turns readable for new completions.
        self.channel.drain();
        if self.dead() || self.conn.has_pending() {
            return Ok(false);
        }
        self.conn.req_notify()?;
        // A completion that arrived before arming raises no event: look once more.
        if self.conn.poll_cq() > 0 {
            return Ok(false);
        }
        Ok(true)
    }
}
