//! The raw sockets of a public address takeover, each behind a safe function: a gratuitous
//! ARP or an IPv6 Neighbor Advertisement on AF_PACKET, and a hand-built TCP segment on a raw
//! IPv4 or IPv6 socket. The packets are built by `public_ip` (no `unsafe` there); this module
//! only hands bytes to the kernel. All need CAP_NET_RAW.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes plain integers; a non-negative result is a new descriptor that
    // nothing else owns.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sent(rc: isize, len: usize) -> io::Result<()> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc as usize != len {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// The index and MAC address of interface `name`.
pub fn interface(name: &str) -> io::Result<(i32, [u8; 6])> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: `cname` is NUL-terminated and outlives the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name (NUL-terminated: shorter than IFNAMSIZ, rest
    // zero) and writes ifr_hwaddr inside `req`, which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFHWADDR the union holds ifr_hwaddr.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    let index = i32::try_from(index)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "interface index"))?;
    Ok((index, mac))
}

/// EtherType of IPv6 (for [`send_link`]).
pub const ETH_P_IPV6: u16 = libc::ETH_P_IPV6 as u16;

/// Broadcast each ARP packet of `arps` (28-byte ARP bodies; the kernel adds the Ethernet
/// header) on interface `ifindex`.
pub fn broadcast_arp(ifindex: i32, arps: &[[u8; 28]]) -> io::Result<()> {
    for arp in arps {
        send_link(ifindex, libc::ETH_P_ARP as u16, [0xff; 6], arp)?;
    }
    Ok(())
}

/// Send `payload` on interface `ifindex` in one Ethernet frame of `ethertype` to `dst` (the
/// kernel adds the header with the interface's own address as the source).
pub fn send_link(ifindex: i32, ethertype: u16, dst: [u8; 6], payload: &[u8]) -> io::Result<()> {
    let proto = ethertype.to_be();
    let sock = socket(libc::AF_PACKET, libc::SOCK_DGRAM, libc::c_int::from(proto))?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = proto;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&dst);
    // SAFETY: `payload` and `to` are valid for the lengths passed and live across the call.
    let rc = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    sent(rc, payload.len())
}

/// A raw IPv4 or IPv6 socket that sends whole IP packets (IPPROTO_RAW: the header is ours;
/// on an AF_INET6 socket IPPROTO_RAW implies IPV6_HDRINCL, raw(7), ipv6(7)).
pub struct RawIp(OwnedFd);

impl RawIp {
    pub fn open(v4: bool) -> io::Result<RawIp> {
        let domain = if v4 { libc::AF_INET } else { libc::AF_INET6 };
        socket(domain, libc::SOCK_RAW, libc::IPPROTO_RAW).map(RawIp)
    }

    /// Send one IP packet (header included) to `dst`, of the socket's family.
    pub fn send(&self, packet: &[u8], dst: IpAddr) -> io::Result<()> {
        let rc = match dst {
            IpAddr::V4(dst) => {
                let to = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(dst.octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: `packet` and `to` are valid for the lengths passed and live across
                // the call.
                unsafe {
                    libc::sendto(
                        self.0.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&to as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
            }
            IpAddr::V6(dst) => {
                // Port 0: on a raw socket it would name the protocol (raw(7)).
                let to = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: 0,
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: dst.octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: as above.
                unsafe {
                    libc::sendto(
                        self.0.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&to as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
        };
        sent(rc, packet.len())
    }
}
