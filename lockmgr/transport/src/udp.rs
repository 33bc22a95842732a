//! Reliable, in-order, duplicate-free frames over UDP: the [`crate::reliable`] protocol on a
//! UDP socket (one datagram per frame; see that module for the wire format and the rules).

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use crate::reliable::{Link, ReliableClient, ReliableServer};
use crate::TransportError;

pub use crate::reliable::{
    FaultConfig, ReliableConfig as UdpConfig, ReliableStats as UdpStats, HDR_LEN,
};

/// A non-blocking UDP socket as a [`Link`].
pub struct UdpLink {
    sock: UdpSocket,
}

impl UdpLink {
    /// Wrap a bound socket (made non-blocking).
    pub fn new(sock: UdpSocket) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(UdpLink { sock })
    }

    /// Bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
}

impl Link for UdpLink {
    type Addr = SocketAddr;

    fn send_to(&mut self, buf: &[u8], addr: SocketAddr) -> io::Result<()> {
        self.sock.send_to(buf, addr).map(|_| ())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, usize, SocketAddr)>> {
        loop {
            match self.sock.recv_from(buf) {
                Ok((n, from)) => return Ok(Some((0, n, from))),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP port unreachable etc. from an earlier send: the peer may be restarting;
                // timers decide whether it is dead.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// UDP server: one socket for all peers.
pub type UdpServer = ReliableServer<UdpLink>;

/// UDP client: one socket, one connection.
pub type UdpClient = ReliableClient<UdpLink>;

impl ReliableServer<UdpLink> {
    /// Bind to `addr` (port 0 picks a free port; see [`UdpServer::local_addr`]).
    pub fn bind(addr: SocketAddr, cfg: UdpConfig) -> Result<Self, TransportError> {
        Self::with_link(UdpLink::new(UdpSocket::bind(addr)?)?, cfg)
    }

    /// Bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.link().local_addr()?)
    }
}

impl ReliableClient<UdpLink> {
    /// Handshake with the server at `server` (blocks up to `cfg.connect_timeout`).
    pub fn connect(server: SocketAddr, cfg: UdpConfig) -> Result<Self, TransportError> {
        let local: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Self::connect_with(UdpLink::new(UdpSocket::bind(local)?)?, server, cfg)
    }

    /// Local socket address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.link().local_addr()?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::reliable::{encode_header, parse, Header, Kind};
    use crate::ServerTransport;

    fn collect(server: &mut UdpServer) -> Vec<String> {
        let mut out = Vec::new();
        let start = Instant::now();
        // A few rounds so loopback datagrams have arrived; never a timing assertion.
        while start.elapsed() < Duration::from_millis(50) {
            server.poll(&mut |ev| out.push(format!("{ev:?}"))).unwrap();
        }
        out
    }

    fn dgram(kind: Kind, conn_id: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = encode_header(&Header {
            kind,
            conn_id,
            seq,
            ack: 0,
        })
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn reconnect_with_new_conn_id_gets_fresh_peer() {
        let mut server =
            UdpServer::bind("127.0.0.1:0".parse().unwrap(), UdpConfig::default()).unwrap();
        let addr = server.local_addr().unwrap();
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(&dgram(Kind::Syn, 11, 0, &[]), addr).unwrap();
        raw.send_to(&dgram(Kind::Data, 11, 0, b"a"), addr).unwrap();
        // Duplicate SYN: same peer, no new event.
        raw.send_to(&dgram(Kind::Syn, 11, 0, &[]), addr).unwrap();
        assert_eq!(
            collect(&mut server),
            vec!["Connected(PeerId(1))", "Frame(PeerId(1), [97])"]
        );
        // Restarted client process on the same address: new id, fresh sequence space.
        raw.send_to(&dgram(Kind::Syn, 22, 0, &[]), addr).unwrap();
        raw.send_to(&dgram(Kind::Data, 22, 0, b"b"), addr).unwrap();
        // Late traffic of the old connection is answered with RST, not delivered.
        raw.send_to(&dgram(Kind::Data, 11, 1, b"c"), addr).unwrap();
        assert_eq!(
            collect(&mut server),
            vec![
                "Disconnected(PeerId(1))",
                "Connected(PeerId(2))",
                "Frame(PeerId(2), [98])"
            ]
        );
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let mut saw_rst = false;
        while let Ok(n) = raw.recv(&mut buf) {
            if let Some((h, _)) = parse(&buf[..n]) {
                if h.kind == Kind::Rst && h.conn_id == 11 {
                    saw_rst = true;
                    break;
                }
            }
        }
        assert!(saw_rst);
    }

    #[test]
    fn garbage_datagrams_are_ignored() {
        let mut server =
            UdpServer::bind("127.0.0.1:0".parse().unwrap(), UdpConfig::default()).unwrap();
        let addr = server.local_addr().unwrap();
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(b"", addr).unwrap();
        raw.send_to(b"hello world, definitely not a header", addr)
            .unwrap();
        let mut bad_kind = dgram(Kind::Syn, 5, 0, &[]);
        bad_kind[3] = 99;
        raw.send_to(&bad_kind, addr).unwrap();
        raw.send_to(&dgram(Kind::Syn, 0, 0, &[]), addr).unwrap();
        raw.send_to(&dgram(Kind::Ack, 5, 0, b"payload on ack"), addr)
            .unwrap();
        assert!(collect(&mut server).is_empty());
        // Bogus acks (beyond anything sent) do not disturb a live connection.
        raw.send_to(&dgram(Kind::Syn, 5, 0, &[]), addr).unwrap();
        let mut ack = dgram(Kind::Ack, 5, 0, &[]);
        ack[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        raw.send_to(&ack, addr).unwrap();
        raw.send_to(&dgram(Kind::Data, 5, 0, b"ok"), addr).unwrap();
        assert_eq!(
            collect(&mut server),
            vec!["Connected(PeerId(1))", "Frame(PeerId(1), [111, 107])"]
        );
    }
}
