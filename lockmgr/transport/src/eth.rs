//! Shared pieces of the raw-Ethernet transports ([`crate::afpacket`], `afxdp`).
//!
//! Wire format: one Ethernet II frame per reliability-layer datagram,
//! `dst MAC | src MAC | EtherType (BE, default 0x88B5) | len u16 LE | datagram`.
//! The explicit length is needed because NICs pad frames shorter than 60 bytes, and padding would
//! otherwise look like payload (the reliability layer rejects control datagrams with payload).
//!
//! MTU policy (no fragmentation): one frame = one Ethernet frame, so a frame may be at most
//! `MTU - 2 - 28` bytes. Full [`MAX_FRAME`] (8192-byte) frames need an MTU of at least
//! [`MTU_FOR_MAX_FRAME`] (jumbo frames; veth supports 9000). On a 1500-byte MTU the transports
//! still work for frames up to 1470 bytes and `send` fails with
//! [`TransportError::FrameTooLarge`] naming that limit. Fragmentation was rejected because a lost
//! fragment costs a whole-frame retransmission and the lock protocol's frames are small.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;

use crate::reliable::HDR_LEN;
use crate::{TransportError, MAX_FRAME};

/// IEEE 802 "local experimental" EtherType 1, the default for lockmgr frames.
pub const DEFAULT_ETHERTYPE: u16 = 0x88B5;
/// Ethernet II header: two MACs and the EtherType.
pub const ETH_HDR_LEN: usize = 14;
/// Our length field after the Ethernet header.
pub const LEN_FIELD: usize = 2;
/// Bytes of Ethernet payload our framing adds to a frame.
pub const OVERHEAD: usize = LEN_FIELD + HDR_LEN;
/// Interface MTU needed for [`MAX_FRAME`]-byte frames.
pub const MTU_FOR_MAX_FRAME: usize = MAX_FRAME + OVERHEAD;
/// Smallest MTU we accept at all (IPv4's minimum; lock requests are smaller).
pub const MIN_MTU: usize = 576;

/// A 48-bit MAC address; parses and prints as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = EthError;

    fn from_str(s: &str) -> Result<Self, EthError> {
        let bad = || EthError::BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// Raw-Ethernet configuration errors (wrapped in [`TransportError::Ethernet`]).
#[derive(Debug, thiserror::Error)]
pub enum EthError {
    /// No interface of this name in the current network namespace.
    #[error("network interface {0:?} does not exist (in this network namespace)")]
    NoSuchInterface(String),
    /// The interface exists but is administratively down.
    #[error("network interface {0:?} is down (ip link set dev {0} up)")]
    InterfaceDown(String),
    /// Not `aa:bb:cc:dd:ee:ff`.
    #[error("malformed MAC address {0:?} (expected aa:bb:cc:dd:ee:ff)")]
    BadMac(String),
    /// Values below 0x0600 are lengths (802.3), not EtherTypes.
    #[error("EtherType {0:#06x} is invalid (must be >= 0x0600)")]
    BadEtherType(u16),
    /// The interface MTU cannot carry even small frames.
    #[error("interface {interface:?} MTU {mtu} is below the minimum {min}")]
    MtuTooSmall {
        /// Interface name.
        interface: String,
        /// Its MTU.
        mtu: usize,
        /// Required minimum.
        min: usize,
    },
    /// AF_XDP / eBPF set-up failed.
    #[error("AF_XDP: {0}")]
    Xdp(String),
}

/// Where a raw-Ethernet transport runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthConfig {
    /// Interface name (e.g. `eth0`).
    pub interface: String,
    /// EtherType of lockmgr frames.
    pub ethertype: u16,
}

impl EthConfig {
    /// `interface` with the default EtherType.
    pub fn new(interface: impl Into<String>) -> Self {
        EthConfig {
            interface: interface.into(),
            ethertype: DEFAULT_ETHERTYPE,
        }
    }
}

/// What we need to know about an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfInfo {
    /// Kernel interface index.
    pub index: i32,
    /// Hardware address.
    pub mac: MacAddr,
    /// MTU (Ethernet payload bytes).
    pub mtu: usize,
}

impl IfInfo {
    /// Largest frame our framing fits into this MTU.
    pub fn max_frame(&self) -> usize {
        self.mtu.saturating_sub(OVERHEAD).min(MAX_FRAME)
    }
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

fn ifreq(name: &str) -> Result<IfReq, EthError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(EthError::NoSuchInterface(name.to_string()));
    }
    let mut r = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: [0; 24],
    };
    for (d, s) in r.name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(r)
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, r: &mut IfReq) -> io::Result<()> {
    // SAFETY: `r` is a live, exclusively borrowed struct laid out like the kernel's `struct
    // ifreq` (16-byte name + 24-byte union); these SIOCGIF* requests write at most that much.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, r as *mut IfReq) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Index, MAC and MTU of `name` in the calling thread's network namespace; typed errors for a
/// missing or down interface.
pub fn interface_info(name: &str) -> Result<IfInfo, TransportError> {
    // SAFETY: plain socket(2) call without pointers; the fd is fresh and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let missing = |e: io::Error| -> TransportError {
        if e.raw_os_error() == Some(libc::ENODEV) {
            EthError::NoSuchInterface(name.to_string()).into()
        } else {
            e.into()
        }
    };
    let mut r = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFINDEX, &mut r).map_err(missing)?;
    let index = i32::from_ne_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]);
    let mut r = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFFLAGS, &mut r).map_err(missing)?;
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) as libc::c_int;
    if flags & libc::IFF_UP == 0 {
        return Err(EthError::InterfaceDown(name.to_string()).into());
    }
    if flags & libc::IFF_RUNNING == 0 {
        tracing::debug!(interface = name, "interface has no carrier (yet?)");
    }
    let mut r = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFHWADDR, &mut r).map_err(missing)?;
    // struct sockaddr: 2-byte family, then the hardware address.
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&r.data[2..8]);
    let mut r = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFMTU, &mut r).map_err(missing)?;
    let mtu = i32::from_ne_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]).max(0) as usize;
    if mtu < MIN_MTU {
        return Err(EthError::MtuTooSmall {
            interface: name.to_string(),
            mtu,
            min: MIN_MTU,
        }
        .into());
    }
    Ok(IfInfo {
        index,
        mac: MacAddr(mac),
        mtu,
    })
}

pub(crate) fn check_ethertype(et: u16) -> Result<(), EthError> {
    if et < 0x0600 {
        return Err(EthError::BadEtherType(et));
    }
    Ok(())
}

/// Write the Ethernet header plus length field for a `dgram_len`-byte datagram into
/// `out[..ETH_HDR_LEN + LEN_FIELD]`.
pub(crate) fn write_header(
    out: &mut [u8],
    dst: MacAddr,
    src: MacAddr,
    ethertype: u16,
    dgram_len: usize,
) {
    out[0..6].copy_from_slice(&dst.0);
    out[6..12].copy_from_slice(&src.0);
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
    out[14..16].copy_from_slice(&(dgram_len as u16).to_le_bytes());
}

/// Validate a received Ethernet frame addressed to `me`: `(start, len, src)` of the datagram.
pub(crate) fn parse_frame(
    frame: &[u8],
    me: MacAddr,
    ethertype: u16,
) -> Option<(usize, usize, MacAddr)> {
    if frame.len() < ETH_HDR_LEN + LEN_FIELD {
        return None;
    }
    if frame[0..6] != me.0 || u16::from_be_bytes([frame[12], frame[13]]) != ethertype {
        return None;
    }
    let mut src = [0u8; 6];
    src.copy_from_slice(&frame[6..12]);
    let len = u16::from_le_bytes([frame[14], frame[15]]) as usize;
    let start = ETH_HDR_LEN + LEN_FIELD;
    if len > frame.len() - start {
        return None;
    }
    Some((start, len, MacAddr(src)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_print() {
        let m: MacAddr = "02:00:0A:bc:de:f0".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0x0a, 0xbc, 0xde, 0xf0]);
        assert_eq!(m.to_string(), "02:00:0a:bc:de:f0");
        assert_eq!("02-00-0a-bc-de-f0".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "02:00:0a:bc:de",
            "02:00:0a:bc:de:f0:11",
            "2:00:0a:bc:de:f0",
            "zz:00:0a:bc:de:f0",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(EthError::BadMac(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn frame_roundtrip_and_rejects() {
        let me = MacAddr([2, 0, 0, 0, 0, 1]);
        let peer = MacAddr([2, 0, 0, 0, 0, 2]);
        let mut f = vec![0u8; 16 + 5];
        write_header(&mut f, me, peer, DEFAULT_ETHERTYPE, 5);
        f[16..].copy_from_slice(b"hello");
        // Padding (short frames on real NICs) is not payload.
        f.extend_from_slice(&[0; 40]);
        let (s, l, src) = parse_frame(&f, me, DEFAULT_ETHERTYPE).unwrap();
        assert_eq!((&f[s..s + l], src), (&b"hello"[..], peer));
        assert!(parse_frame(&f, peer, DEFAULT_ETHERTYPE).is_none());
        assert!(parse_frame(&f, me, 0x0800).is_none());
        assert!(parse_frame(&f[..15], me, DEFAULT_ETHERTYPE).is_none());
        let mut lying = f[..21].to_vec();
        lying[14] = 200;
        assert!(parse_frame(&lying, me, DEFAULT_ETHERTYPE).is_none());
    }

    #[test]
    fn missing_interface_is_typed() {
        let e = interface_info("lmnosuchif0").unwrap_err();
        assert!(
            matches!(e, TransportError::Ethernet(EthError::NoSuchInterface(ref n)) if n == "lmnosuchif0"),
            "{e:?}"
        );
        assert!(check_ethertype(0x05dc).is_err());
        assert!(check_ethertype(DEFAULT_ETHERTYPE).is_ok());
    }
}
