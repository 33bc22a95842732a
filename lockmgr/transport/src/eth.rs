//! Shared pieces of the raw-Ethernet transports ([`crate::afpacket`], `afxdp`).
//!
//! Wire format: each reliability-layer datagram travels in one or more Ethernet II frames,
//! `dst MAC | src MAC | EtherType (BE, default 0x88B5) | fragment header | datagram bytes`,
//! with the 8-byte fragment header `msg_id u16 | index u8 | count u8 | total u16 | len u16`
//! (little endian). Explicit lengths are needed anyway because NICs pad frames shorter than 60
//! bytes, and padding would otherwise look like payload.
//!
//! MTU policy: fragmentation, so every interface with an MTU of at least [`MIN_MTU`] carries
//! full [`MAX_FRAME`](crate::MAX_FRAME)-byte frames. A datagram that fits the MTU (lock traffic nearly always;
//! with jumbo frames, every datagram) is one Ethernet frame with `count = 1`. Larger ones are
//! split into `count` equal pieces; the receiver reassembles per source MAC, keeping one
//! partial datagram per peer: a lost fragment loses the datagram, and the reliability layer
//! retransmits it whole (which is why jumbo frames are preferable for big frames). The
//! interface MTU is checked when a link opens ([`EthError::MtuTooSmall`]). AF_XDP additionally
//! limits one frame to a UMEM chunk (see `afxdp`) and fragments at that size.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;

use std::collections::HashMap;

use crate::reliable::{CookieAddr, DGRAM_MAX};
use crate::TransportError;

/// IEEE 802 "local experimental" EtherType 1, the default for lockmgr frames.
pub const DEFAULT_ETHERTYPE: u16 = 0x88B5;
/// Ethernet II header: two MACs and the EtherType.
pub const ETH_HDR_LEN: usize = 14;
/// Our fragment header after the Ethernet header.
pub const FRAG_HDR: usize = 8;
/// Most fragments of one datagram.
const MAX_FRAGMENTS: usize = 32;
/// Peers with a partially received datagram we keep state for (bounds memory against floods
/// of fragments from spoofed MACs; evicting a partial only costs a retransmission).
const MAX_PARTIALS: usize = 1024;
/// Smallest MTU we accept (IPv4's minimum; a [`MAX_FRAME`](crate::MAX_FRAME) datagram is then 15 fragments).
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

// The SYN cookie binds a handshake to the MAC address it ran from.
impl CookieAddr for MacAddr {
    fn cookie_bytes(&self) -> Vec<u8> {
        self.0.to_vec()
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
#[non_exhaustive]
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

/// Ethernet framing of one link: fragments outgoing datagrams and reassembles incoming ones.
#[derive(Debug)]
pub(crate) struct Framing {
    me: MacAddr,
    ethertype: u16,
    /// Datagram bytes per Ethernet frame.
    max_piece: usize,
    next_id: u16,
    partials: HashMap<MacAddr, Partial>,
}

#[derive(Debug)]
struct Partial {
    msg_id: u16,
    count: u8,
    total: usize,
    got: u32,
    buf: Vec<u8>,
}

/// One outgoing datagram's fragmentation plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    msg_id: u16,
    count: usize,
    unit: usize,
}

impl Plan {
    /// Number of Ethernet frames.
    pub(crate) fn count(&self) -> usize {
        self.count
    }
}

impl Framing {
    /// `max_eth_payload`: bytes after the Ethernet header one frame may carry (the MTU, or
    /// less where the medium limits frames).
    pub(crate) fn new(me: MacAddr, ethertype: u16, max_eth_payload: usize) -> Self {
        Framing {
            me,
            ethertype,
            max_piece: max_eth_payload.saturating_sub(FRAG_HDR).max(1),
            next_id: 0,
            partials: HashMap::new(),
        }
    }

    /// Longest Ethernet frame `write` produces.
    pub(crate) fn max_frame_len(&self) -> usize {
        ETH_HDR_LEN + FRAG_HDR + self.max_piece.min(DGRAM_MAX)
    }

    /// Split a `len`-byte datagram into balanced pieces of at most `max_piece` bytes.
    pub(crate) fn plan(&mut self, len: usize) -> Plan {
        let count = len.div_ceil(self.max_piece).max(1);
        self.next_id = self.next_id.wrapping_add(1);
        Plan {
            msg_id: self.next_id,
            count,
            unit: len.div_ceil(count).max(1),
        }
    }

    /// Write Ethernet frame `index` of `plan` for `dgram` to `dst` into `out`; returns its
    /// length. `out` must hold [`Framing::max_frame_len`] bytes.
    pub(crate) fn write(
        &self,
        out: &mut [u8],
        dst: MacAddr,
        plan: &Plan,
        index: usize,
        dgram: &[u8],
    ) -> usize {
        let start = (index * plan.unit).min(dgram.len());
        let end = ((index + 1) * plan.unit).min(dgram.len());
        let piece = &dgram[start..end];
        out[0..6].copy_from_slice(&dst.0);
        out[6..12].copy_from_slice(&self.me.0);
        out[12..14].copy_from_slice(&self.ethertype.to_be_bytes());
        out[14..16].copy_from_slice(&plan.msg_id.to_le_bytes());
        out[16] = index as u8;
        out[17] = plan.count as u8;
        out[18..20].copy_from_slice(&(dgram.len() as u16).to_le_bytes());
        out[20..22].copy_from_slice(&(piece.len() as u16).to_le_bytes());
        let h = ETH_HDR_LEN + FRAG_HDR;
        out[h..h + piece.len()].copy_from_slice(piece);
        h + piece.len()
    }

    /// Handle a received Ethernet frame in `buf[..n]`: `Some((start, len, src))` when it
    /// completes a datagram, which is then `buf[start..start + len]` (`buf` must hold
    /// [`DGRAM_MAX`] bytes). Frames not for us or malformed are dropped.
    pub(crate) fn receive(&mut self, buf: &mut [u8], n: usize) -> Option<(usize, usize, MacAddr)> {
        let h = ETH_HDR_LEN + FRAG_HDR;
        let f = buf.get(..n)?;
        if n < h || f[0..6] != self.me.0 || u16::from_be_bytes([f[12], f[13]]) != self.ethertype {
            return None;
        }
        let mut src = [0u8; 6];
        src.copy_from_slice(&f[6..12]);
        let src = MacAddr(src);
        let msg_id = u16::from_le_bytes([f[14], f[15]]);
        let (index, count) = (f[16] as usize, f[17] as usize);
        let total = u16::from_le_bytes([f[18], f[19]]) as usize;
        let len = u16::from_le_bytes([f[20], f[21]]) as usize;
        if count == 0 || count > MAX_FRAGMENTS || index >= count || total > DGRAM_MAX {
            return None;
        }
        let unit = total.div_ceil(count).max(1);
        let want = (total.min((index + 1) * unit)).saturating_sub(index * unit);
        if len != want || len > n - h {
            return None;
        }
        if count == 1 {
            return Some((h, len, src));
        }
        if !self.partials.contains_key(&src) && self.partials.len() >= MAX_PARTIALS {
            // Evict an arbitrary partial: its datagram will be retransmitted.
            let victim = self.partials.keys().next().copied();
            if let Some(v) = victim {
                self.partials.remove(&v);
            }
        }
        let p = self.partials.entry(src).or_insert_with(|| Partial {
            msg_id,
            count: count as u8,
            total,
            got: 0,
            buf: vec![0u8; DGRAM_MAX],
        });
        if p.msg_id != msg_id || p.count as usize != count || p.total != total {
            // A new datagram from this peer: the previous partial one lost a fragment.
            p.msg_id = msg_id;
            p.count = count as u8;
            p.total = total;
            p.got = 0;
        }
        let off = index * unit;
        p.buf[off..off + len].copy_from_slice(&f[h..h + len]);
        p.got |= 1 << index;
        if p.got.count_ones() as usize != count {
            return None;
        }
        p.got = 0;
        // Reset so a late duplicate fragment cannot complete the datagram a second time.
        p.msg_id = msg_id.wrapping_sub(1);
        buf[..total].copy_from_slice(&p.buf[..total]);
        Some((0, total, src))
    }
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

    fn frames(fr: &mut Framing, dst: MacAddr, d: &[u8]) -> Vec<Vec<u8>> {
        let plan = fr.plan(d.len());
        (0..plan.count())
            .map(|i| {
                let mut out = vec![0u8; fr.max_frame_len()];
                let n = fr.write(&mut out, dst, &plan, i, d);
                out.truncate(n);
                out
            })
            .collect()
    }

    #[test]
    fn small_datagram_is_one_frame_and_padding_ignored() {
        let me = MacAddr([2, 0, 0, 0, 0, 1]);
        let peer = MacAddr([2, 0, 0, 0, 0, 2]);
        let mut tx = Framing::new(peer, DEFAULT_ETHERTYPE, 1500);
        let mut rx = Framing::new(me, DEFAULT_ETHERTYPE, 1500);
        let mut f = frames(&mut tx, me, b"hello").remove(0);
        // Padding (short frames on real NICs) is not payload.
        f.extend_from_slice(&[0; 40]);
        let n = f.len();
        f.resize(DGRAM_MAX + 64, 0);
        let (s, l, src) = rx.receive(&mut f, n).unwrap();
        assert_eq!((&f[s..s + l], src), (&b"hello"[..], peer));
        let mut other = Framing::new(peer, DEFAULT_ETHERTYPE, 1500);
        assert!(other.receive(&mut f, n).is_none(), "not addressed to it");
        let mut ip = Framing::new(me, 0x0800, 1500);
        assert!(ip.receive(&mut f, n).is_none(), "other EtherType");
        assert!(rx.receive(&mut f, 15).is_none(), "truncated");
        f[20] = 200;
        assert!(rx.receive(&mut f, n).is_none(), "length lies");
    }

    #[test]
    fn large_datagram_fragments_and_reassembles_out_of_order_with_duplicates() {
        let me = MacAddr([2, 0, 0, 0, 0, 1]);
        let peer = MacAddr([2, 0, 0, 0, 0, 2]);
        let mut tx = Framing::new(peer, DEFAULT_ETHERTYPE, MIN_MTU);
        let mut rx = Framing::new(me, DEFAULT_ETHERTYPE, MIN_MTU);
        let d: Vec<u8> = (0..DGRAM_MAX).map(|i| (i * 7 % 256) as u8).collect();
        let fs = frames(&mut tx, me, &d);
        assert_eq!(fs.len(), DGRAM_MAX.div_ceil(MIN_MTU - FRAG_HDR));
        assert!(fs.iter().all(|f| f.len() <= ETH_HDR_LEN + MIN_MTU));
        let mut order: Vec<usize> = (0..fs.len()).rev().collect();
        order.insert(3, 5); // a duplicate fragment
        let mut done = Vec::new();
        let mut buf = vec![0u8; DGRAM_MAX + 64];
        for i in order {
            let n = fs[i].len();
            buf[..n].copy_from_slice(&fs[i]);
            if let Some((s, l, src)) = rx.receive(&mut buf, n) {
                assert_eq!(src, peer);
                done.push(buf[s..s + l].to_vec());
            }
        }
        assert_eq!(done, vec![d.clone()]);
        // A late duplicate after completion starts a new partial but completes nothing.
        let n = fs[0].len();
        buf[..n].copy_from_slice(&fs[0]);
        assert!(rx.receive(&mut buf, n).is_none());
        // A lost fragment: the next datagram replaces the partial one.
        let fs2 = frames(&mut tx, me, &d[..3000]);
        for f in &fs[1..3] {
            buf[..f.len()].copy_from_slice(f);
            assert!(rx.receive(&mut buf, f.len()).is_none());
        }
        let mut got = None;
        for f in &fs2 {
            buf[..f.len()].copy_from_slice(f);
            if let Some((s, l, _)) = rx.receive(&mut buf, f.len()) {
                got = Some(buf[s..s + l].to_vec());
            }
        }
        assert_eq!(got.as_deref(), Some(&d[..3000]));
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
