//! Client side: one RC QP to lockmgrd, set up over TCP.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockmgr_transport::{ClientTransport, TransportError};

use crate::conn::{Conn, ConnStats};
use crate::sys::sock_alive;
use crate::verbs::{self, CompletionChannel, DeviceInfo};
use crate::wire::{Hello, HELLO_LEN};
use crate::{check_frame_len, RdmaConfig, RdmaError, AUTH_LEN, CHANNEL};
use lockmgr_transport::fabric::{channel_proof, verify_channel_proof};
use lockmgr_transport::sys::{Epoll, Spinner, Spun};
use lockmgr_transport::FabricKey;

const TOKEN_SOCK: u64 = 0;
const TOKEN_CHANNEL: u64 = 1;
/// Completions handled per `poll`.
const BUDGET: usize = 1024;
/// The side channel is checked for EOF on every Nth idle `poll`.
const IO_CHECK_INTERVAL: u32 = 64;

/// An smbd node's RDMA connection to lockmgrd.
pub struct RdmaClient {
    /// `Some(server nonce)` while the side channel waits for the cluster key.
    challenge: Option<[u8; AUTH_LEN]>,
    conn: Conn,
    /// Also held by the connection's CQ, which therefore is destroyed first.
    channel: Arc<CompletionChannel>,
    info: DeviceInfo,
    sock: TcpStream,
    /// Watches the completion channel and the side channel, so one fd serves external loops.
    epoll: Epoll,
    events: Vec<(u64, u32)>,
    spinner: Spinner,
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
        let channel = CompletionChannel::new(dev.context())?;
        let conn = Conn::new(&dev, Some(&channel), cfg.slots, cfg.max_inline)?;
        let timeout = cfg.handshake_timeout.max(Duration::from_millis(1));
        let sock = TcpStream::connect_timeout(&server, timeout).map_err(io_to_transport)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        let mut challenge = [0u8; AUTH_LEN];
        (&sock)
            .read_exact(&mut challenge)
            .map_err(io_to_transport)?;
        let epoll = Epoll::new()?;
        epoll.add(sock.as_raw_fd(), TOKEN_SOCK)?;
        epoll.add(channel.fd(), TOKEN_CHANNEL)?;
        tracing::debug!(%server, "RDMA side channel connected");
        let mut client = RdmaClient {
            challenge: Some(challenge),
            conn,
            channel,
            info: dev.info().clone(),
            sock,
            epoll,
            events: Vec::with_capacity(4),
            spinner: Spinner::new(cfg.spin),
            sock_dead: false,
            polls: 0,
        };
        if let Some(key) = &cfg.fabric_key {
            client.finish(key)?;
        }
        Ok(client)
    }

    /// Answers the server's challenge with our nonce, proof and hello; checks the server's
    /// proof before connecting our queue pair to its hello.
    fn finish(&mut self, key: &FabricKey) -> Result<(), TransportError> {
        let Some(server_nonce) = self.challenge else {
            return Ok(());
        };
        let client_nonce: [u8; AUTH_LEN] = rand::random();
        let mut msg = [0u8; 2 * AUTH_LEN + HELLO_LEN];
        msg[..AUTH_LEN].copy_from_slice(&client_nonce);
        msg[AUTH_LEN..2 * AUTH_LEN].copy_from_slice(&channel_proof(
            key,
            false,
            CHANNEL,
            &client_nonce,
            &server_nonce,
        ));
        msg[2 * AUTH_LEN..].copy_from_slice(&self.conn.local_hello().encode());
        (&self.sock).write_all(&msg).map_err(io_to_transport)?;
        let mut answer = [0u8; AUTH_LEN + HELLO_LEN];
        match (&self.sock).read_exact(&mut answer) {
            Ok(()) => {}
            // The server closes the side channel on a bad proof.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(TransportError::AuthRejected)
            }
            Err(e) => return Err(io_to_transport(e)),
        }
        let (proof, hello) = answer.split_at(AUTH_LEN);
        if !verify_channel_proof(key, true, CHANNEL, &client_nonce, &server_nonce, proof) {
            return Err(TransportError::PeerNotAuthenticated);
        }
        let mut hello_bytes = [0u8; HELLO_LEN];
        hello_bytes.copy_from_slice(hello);
        let remote = Hello::decode(&hello_bytes).map_err(|e| {
            tracing::warn!(error = %e, "bad RDMA hello from server");
            TransportError::Protocol("bad RDMA hello from server")
        })?;
        self.conn.connect(&remote).map_err(TransportError::from)?;
        self.sock.set_read_timeout(None)?;
        self.sock.set_nonblocking(true)?;
        self.challenge = None;
        tracing::debug!(
            remote_qpn = remote.qpn,
            "RDMA client connected (authenticated)"
        );
        Ok(())
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

const NOT_AUTHENTICATED: &str =
    "RDMA side channel not authenticated: call ClientTransport::authenticate with the cluster key";

impl ClientTransport for RdmaClient {
    fn authenticate(&mut self, key: &FabricKey) -> Result<(), TransportError> {
        self.finish(key)
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        check_frame_len(frame)?;
        if self.challenge.is_some() {
            return Err(TransportError::Protocol(NOT_AUTHENTICATED));
        }
        if self.dead() {
            return Err(TransportError::Disconnected);
        }
        // A request out means a reply to wait for: worth spinning.
        self.spinner.expect_reply();
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
        if self.challenge.is_some() {
            return Err(TransportError::Protocol(NOT_AUTHENTICATED));
        }
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
        if n > 0 {
            self.spinner.busy();
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.challenge.is_some() || self.dead() || self.conn.has_pending() {
            return Ok(());
        }
        let start = Instant::now();
        let conn = &mut self.conn;
        let spun = self.spinner.spin(start, timeout, |_| {
            Ok::<_, TransportError>(conn.poll_cq() > 0)
        })?;
        let remaining = match spun {
            Spun::Ready => return Ok(()),
            Spun::Sleep(remaining) => remaining,
        };
        if !self.arm()? {
            return Ok(());
        }
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
