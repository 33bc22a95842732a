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
                // ICMP port unreachable from an earlier send (only a connected socket, i.e. a
                // client, gets it): passed up, the reliability layer treats it as the peer's
                // death (see `Sock::refused` there).
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
        let sock = UdpSocket::bind(local)?;
        // Connected, so that the kernel reports an ICMP port unreachable from the server as
        // ECONNREFUSED: the server's socket is closed, its process gone. That ends the
        // connection (and a handshake) at once instead of after the liveness timeout, which
        // is what lets nodes and standbys of a replicated lock manager fail over fast.
        sock.connect(server)?;
        Self::connect_with(UdpLink::new(sock)?, server, cfg)
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
    use crate::fabric::{self, FabricKey, Side};
    use crate::reliable::{encode_header, parse, FabricCounters, Header, Hello, Kind, Seal};
    use crate::reliable::{FLAG_FRAME_MAC, HELLO_LEN};
    use crate::{ClientTransport, ServerTransport};

    const KEY: FabricKey = FabricKey::new([7; 32]);

    fn keyed() -> UdpConfig {
        UdpConfig {
            fabric_key: Some(KEY),
            ..UdpConfig::default()
        }
    }

    fn collect(server: &mut UdpServer) -> Vec<String> {
        let mut out = Vec::new();
        let start = Instant::now();
        // A few rounds so loopback datagrams have arrived; never a timing assertion.
        while start.elapsed() < Duration::from_millis(50) {
            server.poll(&mut |ev| out.push(format!("{ev:?}"))).unwrap();
        }
        out
    }

    fn hello_dgram(kind: Kind, conn_id: u64, hello: &Hello) -> Vec<u8> {
        let mut v = encode_header(&Header {
            kind,
            conn_id,
            pn: 0,
            seq: 0,
            ack: 0,
        })
        .to_vec();
        v.extend_from_slice(&hello.encode());
        v
    }

    /// A client driven datagram by datagram: the handshake by hand, then sealed datagrams.
    struct RawPeer {
        sock: UdpSocket,
        server: SocketAddr,
        conn_id: u64,
        confirm: Vec<u8>,
        seal: Seal,
    }

    impl RawPeer {
        fn syn(sock: &UdpSocket, server: SocketAddr, conn_id: u64) -> Hello {
            let syn = Hello {
                flags: FLAG_FRAME_MAC,
                time: 0,
                client_nonce: rand::random(),
                server_nonce: [0; 32],
                proof: [0; 32],
            };
            sock.send_to(&hello_dgram(Kind::Syn, conn_id, &syn), server)
                .unwrap();
            syn
        }

        /// SYN, SYNACK, CONFIRM (with `key`'s proof), letting `srv` run in between.
        fn handshake(srv: &mut UdpServer, sock: UdpSocket, conn_id: u64, key: &FabricKey) -> Self {
            let server = srv.local_addr().unwrap();
            Self::syn(&sock, server, conn_id);
            srv.poll(&mut |_| {}).unwrap();
            let synack = Self::recv_kind(&sock, Kind::SynAck, conn_id);
            let synack = Hello::parse(&synack[crate::reliable::HDR_LEN..]).unwrap();
            let t = synack.transcript_for_tests(conn_id);
            let keys = fabric::session_keys(key, &t);
            let confirm = Hello {
                proof: fabric::proof(key, Side::Client, &t),
                ..synack
            };
            let confirm = hello_dgram(Kind::Confirm, conn_id, &confirm);
            sock.send_to(&confirm, server).unwrap();
            RawPeer {
                sock,
                server,
                conn_id,
                confirm,
                seal: Seal::new(
                    FLAG_FRAME_MAC,
                    &keys.client_to_server,
                    &keys.server_to_client,
                ),
            }
        }

        fn recv_kind(sock: &UdpSocket, kind: Kind, conn_id: u64) -> Vec<u8> {
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = vec![0u8; 9000];
            loop {
                let n = sock.recv(&mut buf).expect("no answer from the server");
                if let Some((h, _)) = parse(&buf[..n]) {
                    if h.kind == kind && h.conn_id == conn_id {
                        return buf[..n].to_vec();
                    }
                }
            }
        }

        fn sealed(&mut self, kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
            let mut d = encode_header(&Header {
                kind,
                conn_id: self.conn_id,
                pn: 0,
                seq,
                ack: 0,
            })
            .to_vec();
            d.extend_from_slice(payload);
            self.seal.seal(&mut d);
            d
        }

        fn send(&self, d: &[u8]) {
            self.sock.send_to(d, self.server).unwrap();
        }
    }

    fn bind() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn only_a_newer_authenticated_handshake_replaces_a_peer() {
        let mut server = UdpServer::bind("127.0.0.1:0".parse().unwrap(), keyed()).unwrap();
        let sock = bind();
        let mut a = RawPeer::handshake(&mut server, sock.try_clone().unwrap(), 11, &KEY);
        let d = a.sealed(Kind::Data, 0, b"a");
        a.send(&d);
        assert_eq!(
            collect(&mut server),
            vec!["Connected(PeerId(1))", "Frame(PeerId(1), [97])"]
        );
        // Retransmitted CONFIRM (our ack lost): same peer, no event.
        a.send(&a.confirm.clone());
        assert!(collect(&mut server).is_empty());
        // Restarted client process on the same address: new id, authenticated, fresh peer.
        let mut b = RawPeer::handshake(&mut server, sock, 22, &KEY);
        let d = b.sealed(Kind::Data, 0, b"b");
        b.send(&d);
        assert_eq!(
            collect(&mut server),
            vec![
                "Disconnected(PeerId(1))",
                "Connected(PeerId(2))",
                "Frame(PeerId(2), [98])"
            ]
        );
        // A replay of the old connection's CONFIRM is older than the live connection: it must
        // not bring the old connection back or retire the new one.
        a.send(&a.confirm.clone());
        // Late traffic of the old connection is answered with RST, not delivered.
        let d = a.sealed(Kind::Data, 1, b"c");
        a.send(&d);
        assert!(collect(&mut server).is_empty());
        assert_eq!(server.fabric_counters().stale_handshakes, 1);
        RawPeer::recv_kind(&a.sock, Kind::Rst, 11);
    }

    #[test]
    fn forged_handshakes_and_frames_leave_a_peer_alone() {
        let mut server = UdpServer::bind("127.0.0.1:0".parse().unwrap(), keyed()).unwrap();
        let sock = bind();
        let mut a = RawPeer::handshake(&mut server, sock.try_clone().unwrap(), 11, &KEY);
        assert_eq!(collect(&mut server), vec!["Connected(PeerId(1))"]);
        // SYN with a new id from the peer's address: answered, nothing else.
        RawPeer::syn(&sock, a.server, 99);
        // A whole handshake from the peer's address without the key.
        let wrong = FabricKey::new([8; 32]);
        let _ = RawPeer::handshake(&mut server, sock.try_clone().unwrap(), 98, &wrong);
        // A FIN and a DATA with a made-up tag.
        let mut fin = a.sealed(Kind::Fin, 0, &[]);
        fin[crate::reliable::HDR_LEN] ^= 1;
        a.send(&fin);
        let mut data = a.sealed(Kind::Data, 0, b"forged");
        data[crate::reliable::HDR_LEN] ^= 1;
        a.send(&data);
        // A real frame, then its replay (same packet number) with the next sequence number
        // would be a new frame if it were accepted.
        let real = a.sealed(Kind::Data, 0, b"x");
        a.send(&real);
        a.send(&real);
        let mut bumped = real.clone();
        bumped[20..28].copy_from_slice(&1u64.to_le_bytes());
        a.send(&bumped);
        assert_eq!(collect(&mut server), vec!["Frame(PeerId(1), [120])"]);
        assert_eq!(server.peer_count(), 1);
        let c = server.fabric_counters();
        assert_eq!(c.auth_failures, 1);
        assert_eq!(c.handshakes, 1);
        assert_eq!(c.rejected_frames, 4, "{c:?}");
        // The connection still works.
        let d = a.sealed(Kind::Data, 1, b"y");
        a.send(&d);
        assert_eq!(collect(&mut server), vec!["Frame(PeerId(1), [121])"]);
    }

    #[test]
    fn garbage_datagrams_are_ignored() {
        let mut server = UdpServer::bind("127.0.0.1:0".parse().unwrap(), keyed()).unwrap();
        let addr = server.local_addr().unwrap();
        let raw = bind();
        raw.send_to(b"", addr).unwrap();
        raw.send_to(b"hello world, definitely not a header", addr)
            .unwrap();
        let mut bad_kind = hello_dgram(Kind::Syn, 5, &Hello::parse(&[0; HELLO_LEN]).unwrap());
        bad_kind[3] = 99;
        raw.send_to(&bad_kind, addr).unwrap();
        // Unsealed DATA of an unknown connection (the old wire format's "SYN, then data").
        let mut d = encode_header(&Header {
            kind: Kind::Data,
            conn_id: 5,
            pn: 1,
            seq: 0,
            ack: 0,
        })
        .to_vec();
        d.extend_from_slice(b"ok");
        raw.send_to(&d, addr).unwrap();
        assert!(collect(&mut server).is_empty());
        // Bogus acks (beyond anything sent) do not disturb a live connection.
        let mut a = RawPeer::handshake(&mut server, raw, 5, &KEY);
        let mut ack = encode_header(&Header {
            kind: Kind::Ack,
            conn_id: 5,
            pn: 0,
            seq: 0,
            ack: u64::MAX,
        })
        .to_vec();
        a.seal.seal(&mut ack);
        a.send(&ack);
        let d = a.sealed(Kind::Data, 0, b"ok");
        a.send(&d);
        assert_eq!(
            collect(&mut server),
            vec!["Connected(PeerId(1))", "Frame(PeerId(1), [111, 107])"]
        );
    }

    /// Half-open handshakes cost no memory: a flood of SYNs with fresh connection ids (what a
    /// spoofing attacker can send) leaves no peers behind, and a real client connects during it.
    #[test]
    fn syn_flood_holds_no_state_and_real_clients_still_connect() {
        let mut server = UdpServer::bind("127.0.0.1:0".parse().unwrap(), keyed()).unwrap();
        let addr = server.local_addr().unwrap();
        let flood = bind();
        flood.set_nonblocking(true).unwrap();
        const SYNS: u64 = 20_000;
        let client = std::thread::spawn(move || UdpClient::connect(addr, keyed()));
        let mut sent = 0u64;
        let mut events = Vec::new();
        let start = Instant::now();
        while !client.is_finished() || sent < SYNS {
            assert!(start.elapsed() < Duration::from_secs(60), "stuck");
            for _ in 0..64 {
                if sent < SYNS {
                    RawPeer::syn(&flood, addr, 1_000_000 + sent);
                    sent += 1;
                }
            }
            server
                .poll(&mut |ev| events.push(format!("{ev:?}")))
                .unwrap();
        }
        let mut client = client
            .join()
            .unwrap()
            .expect("real client connects under a flood");
        events.extend(collect(&mut server));
        assert_eq!(events, vec!["Connected(PeerId(1))"]);
        assert_eq!(server.peer_count(), 1);
        let FabricCounters {
            syns, handshakes, ..
        } = server.fabric_counters();
        assert!(syns > SYNS / 2, "the flood reached the server: {syns}");
        assert_eq!(handshakes, 1);
        client.send(b"still works").unwrap();
        let mut got = Vec::new();
        let start = Instant::now();
        while got.is_empty() && start.elapsed() < Duration::from_secs(10) {
            server
                .poll(&mut |ev| {
                    if let crate::ServerEvent::Frame(_, b) = ev {
                        got = b.to_vec();
                    }
                })
                .unwrap();
            client.poll(&mut |_| {}).unwrap();
        }
        assert_eq!(got, b"still works");
    }

    #[test]
    fn a_client_without_the_key_is_refused_clearly() {
        let mut server = UdpServer::bind("127.0.0.1:0".parse().unwrap(), keyed()).unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut c = UdpClient::connect(addr, UdpConfig::default())?;
            c.authenticate(&FabricKey::new([1; 32]))
        });
        while !t.is_finished() {
            server.poll(&mut |_| {}).unwrap();
        }
        let err = t.join().unwrap().unwrap_err();
        assert!(matches!(err, crate::TransportError::AuthRejected), "{err}");
        assert_eq!(server.peer_count(), 0);
        assert!(UdpServer::bind("127.0.0.1:0".parse().unwrap(), UdpConfig::default()).is_err());
    }
}
