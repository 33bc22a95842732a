//! The [`crate::reliable`] protocol in raw Ethernet frames over an AF_PACKET socket.
//!
//! A `SOCK_RAW` packet socket bound to one interface and the lockmgr EtherType (so the kernel
//! only queues our frames to it), non-blocking: the reliability layer busy-polls `recvfrom` and
//! falls back to `poll(2)` after its spin budget. Peers are MAC addresses on that interface; the
//! server learns client MACs from their SYN. Framing, fragmentation and MTU policy: see
//! [`crate::eth`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::eth::{
    check_ethertype, interface_info, EthConfig, Framing, IfInfo, MacAddr, ETH_HDR_LEN,
};
use crate::reliable::{Link, ReliableClient, ReliableConfig, ReliableServer, DGRAM_MAX};
use crate::TransportError;

/// `setsockopt(SOL_PACKET)`: do not loop our own transmissions back to this socket (Linux 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// Socket receive buffer we ask for.
const RCVBUF: libc::c_int = 4 << 20;

/// A bound AF_PACKET socket as a [`Link`].
pub struct PacketLink {
    fd: OwnedFd,
    info: IfInfo,
    ethertype: u16,
    framing: Framing,
    tx: Box<[u8]>,
}

impl std::fmt::Debug for PacketLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketLink")
            .field("info", &self.info)
            .field("ethertype", &self.ethertype)
            .finish()
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl PacketLink {
    /// Open and bind in the calling thread's network namespace. Needs CAP_NET_RAW.
    pub fn open(cfg: &EthConfig) -> Result<Self, TransportError> {
        check_ethertype(cfg.ethertype)?;
        let info = interface_info(&cfg.interface)?;
        let proto = cfg.ethertype.to_be();
        // SAFETY: plain socket(2) call without pointers.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        })?;
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: passes a pointer to a live c_int and its exact size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            // Older kernels: outgoing copies are filtered by pkttype in `recv` anyway.
            tracing::debug!(error = %io::Error::last_os_error(), "PACKET_IGNORE_OUTGOING unsupported");
        }
        // A full window of fragmented frames arrives as a burst; the default receive buffer
        // (~200 KiB) would drop part of it. Best effort: FORCE needs CAP_NET_ADMIN.
        let rcvbuf: libc::c_int = RCVBUF;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: passes a pointer to a live c_int and its exact size.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&rcvbuf as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = info.index;
        // SAFETY: `sll` is a live sockaddr_ll and the length passed is its size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        tracing::debug!(interface = %cfg.interface, mac = %info.mac, mtu = info.mtu,
            ethertype = cfg.ethertype, "af_packet link open");
        let framing = Framing::new(info.mac, cfg.ethertype, info.mtu);
        Ok(PacketLink {
            fd,
            info,
            ethertype: cfg.ethertype,
            tx: vec![0u8; framing.max_frame_len()].into_boxed_slice(),
            framing,
        })
    }

    /// Our interface's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.info.mac
    }

    /// Interface details (index, MAC, MTU).
    pub fn info(&self) -> IfInfo {
        self.info
    }
}

impl Link for PacketLink {
    type Addr = MacAddr;
    const ADDR_IS_PROCESS: bool = false;
    // Our frames are at most MTU + header; the MTU may grow after open, so allow jumbo size.
    const RX_BUF: usize = ETH_HDR_LEN + DGRAM_MAX + 64;

    fn send_to(&mut self, buf: &[u8], addr: MacAddr) -> io::Result<()> {
        let plan = self.framing.plan(buf.len());
        for i in 0..plan.count() {
            let n = self.framing.write(&mut self.tx, addr, &plan, i, buf);
            loop {
                // SAFETY: sends `n` initialised bytes of our own buffer; the bound socket
                // supplies the interface, so no address is needed.
                let r = unsafe { libc::send(self.fd.as_raw_fd(), self.tx.as_ptr().cast(), n, 0) };
                if r >= 0 {
                    break;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, usize, MacAddr)>> {
        loop {
            // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `sll` are live and exclusively borrowed; lengths are theirs.
            let r = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut sl,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            let n = r as usize;
            if n > buf.len() || sll.sll_pkttype != libc::PACKET_HOST {
                // Truncated (oversized), our own transmission, or not addressed to us.
                continue;
            }
            if let Some(d) = self.framing.receive(buf, n) {
                return Ok(Some(d));
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// lockmgr server over AF_PACKET.
pub type PacketServer = ReliableServer<PacketLink>;
/// lockmgr client over AF_PACKET.
pub type PacketClient = ReliableClient<PacketLink>;

impl ReliableServer<PacketLink> {
    /// Serve on `eth.interface` (clients address us by that interface's MAC).
    pub fn open(eth: &EthConfig, cfg: ReliableConfig) -> Result<Self, TransportError> {
        Self::with_link(PacketLink::open(eth)?, cfg)
    }
}

impl ReliableClient<PacketLink> {
    /// Connect to the server with MAC `server` reachable through `eth.interface`.
    pub fn connect(
        eth: &EthConfig,
        server: MacAddr,
        cfg: ReliableConfig,
    ) -> Result<Self, TransportError> {
        Self::connect_with(PacketLink::open(eth)?, server, cfg)
    }
}
