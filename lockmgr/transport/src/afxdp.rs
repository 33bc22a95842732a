//! The [`crate::reliable`] protocol in raw Ethernet frames over an AF_XDP socket.
//!
//! Self-contained (no libxdp/libbpf): one UMEM of [`FRAME_SIZE`]-byte chunks, fill / completion
//! / RX / TX rings mapped from the socket, copy mode (veth has no zero-copy), bound to one
//! interface queue. Frames reach the socket through a 16-instruction XDP program loaded with
//! `bpf(2)` that redirects only our EtherType into an XSKMAP and passes everything else
//! (`XDP_PASS`) to the kernel stack, so ARP/IP on the same interface keep working.
//!
//! The program is attached with a BPF *link* (`BPF_LINK_CREATE`, generic/SKB mode): the kernel
//! detaches it when the last fd closes, including when the process is killed, so nothing stale
//! is left behind. A stale *netlink*-attached program (e.g. left by a killed libxdp user) makes
//! the attach fail with EBUSY; with [`XdpOptions::detach_stale`] we then remove it (RTM_SETLINK,
//! IFLA_XDP fd -1, like `ip link set dev X xdpgeneric off`) and retry.
//!
//! Busy-poll: the reliability layer spins on the RX ring (no syscall); TX in copy mode needs a
//! `sendto` kick per frame. Limits: one UMEM chunk per Ethernet frame (no multi-buffer), so
//! datagrams longer than [`MAX_XDP_ETH_FRAME`] are sent as several frames by the shared
//! fragmentation of [`crate::eth`], whatever the MTU; one AF_XDP endpoint per interface queue
//! (several clients on one host need one interface each, e.g. behind a bridge). On a multi-queue
//! NIC only frames the NIC steers to [`XdpOptions::queue`] reach the socket (others fall back to
//! `XDP_PASS` and are dropped by the stack as an unknown protocol): steer the EtherType there
//! (`ethtool -N IF flow-type ether proto 0x88b5 action 0`) or use one combined channel.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::eth::{
    check_ethertype, interface_info, EthConfig, EthError, Framing, IfInfo, MacAddr, ETH_HDR_LEN,
};
use crate::reliable::{Link, ReliableClient, ReliableConfig, ReliableServer, DGRAM_MAX};
use crate::sys::MmapRegion;
use crate::TransportError;

/// UMEM chunk size (the kernel limits aligned chunks to one page).
pub const FRAME_SIZE: usize = 4096;
/// Headroom the kernel reserves in front of received data in each chunk (XDP_PACKET_HEADROOM).
const KERNEL_HEADROOM: usize = 256;
/// Longest Ethernet frame one UMEM chunk receives (the kernel's RX headroom comes first);
/// longer datagrams are fragmented to fit (see [`crate::eth`]).
pub const MAX_XDP_ETH_FRAME: usize = FRAME_SIZE - KERNEL_HEADROOM;
const RING: u32 = 256;
const NUM_FRAMES: usize = 2 * RING as usize;
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// AF_XDP options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpOptions {
    /// Interface RX queue to bind (veth: 0).
    pub queue: u32,
    /// Remove a netlink-attached XDP program found on the interface (a stale one from a killed
    /// process) instead of failing.
    pub detach_stale: bool,
}

impl Default for XdpOptions {
    fn default() -> Self {
        XdpOptions {
            queue: 0,
            detach_stale: true,
        }
    }
}

fn xdp_err(what: &str, e: io::Error) -> TransportError {
    EthError::Xdp(format!("{what}: {e}")).into()
}

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

// ---- bpf(2) -------------------------------------------------------------------------------

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_PASS: i32 = 2;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XSKMAP_ENTRIES: u32 = 64;

/// `union bpf_attr` as raw bytes: each command uses a prefix; the rest must be zero.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(mut self, off: usize, v: u32) -> Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, off: usize, v: u64) -> Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a live 128-byte buffer laid out as the prefix of `union bpf_attr` this
    // command reads; pointers stored in it (insns, license, key, value) outlive the call.
    let r = cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    })?;
    // SAFETY: these commands return a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn bpf_noret(cmd: libc::c_long, attr: &mut Attr) -> io::Result<()> {
    // SAFETY: as in `bpf`; this command returns 0 rather than an fd.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    })?;
    Ok(())
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    // struct bpf_insn { u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm } (little endian).
    (code as u64)
        | (((dst & 0xf) | ((src & 0xf) << 4)) as u64) << 8
        | ((off as u16) as u64) << 16
        | ((imm as u32) as u64) << 32
}

/// `if eth.type == ethertype { return bpf_redirect_map(xsks, rx_queue_index, XDP_PASS) }
/// return XDP_PASS` — the `XDP_PASS` flag makes a queue without a socket fall back to the stack.
fn filter_program(map_fd: RawFd, ethertype: u16) -> Vec<u64> {
    // The 16-bit load reads the big-endian field as little endian.
    let et = ethertype.swap_bytes() as i32;
    vec![
        insn(0xbf, 6, 1, 0, 0),                     // 0: r6 = ctx
        insn(0x61, 2, 1, 0, 0),                     // 1: r2 = ctx->data
        insn(0x61, 3, 1, 4, 0),                     // 2: r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),                     // 3: r4 = r2
        insn(0x07, 4, 0, 0, ETH_HDR_LEN as i32),    // 4: r4 += 14
        insn(0x2d, 4, 3, 8, 0),                     // 5: if r4 > r3 goto 14
        insn(0x69, 5, 2, 12, 0),                    // 6: r5 = *(u16 *)(r2 + 12)
        insn(0x55, 5, 0, 6, et),                    // 7: if r5 != type goto 14
        insn(0x61, 2, 6, 16, 0),                    // 8: r2 = ctx->rx_queue_index
        insn(0x18, 1, 1, 0, map_fd),                // 9: r1 = map (BPF_PSEUDO_MAP_FD)
        0,                                          // 10: (second half of ld_imm64)
        insn(0xb7, 3, 0, 0, XDP_PASS),              // 11: r3 = XDP_PASS
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP), // 12: call bpf_redirect_map
        insn(0x95, 0, 0, 0, 0),                     // 13: exit
        insn(0xb7, 0, 0, 0, XDP_PASS),              // 14: r0 = XDP_PASS
        insn(0x95, 0, 0, 0, 0),                     // 15: exit
    ]
}

/// The XSKMAP, program and link; dropping the link fd detaches the program.
struct XdpProg {
    _map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

fn load_and_attach(
    info: &IfInfo,
    interface: &str,
    ethertype: u16,
    queue: u32,
    xsk: RawFd,
    opts: &XdpOptions,
) -> Result<XdpProg, TransportError> {
    let map = bpf(
        BPF_MAP_CREATE,
        &mut Attr::new()
            .u32(0, BPF_MAP_TYPE_XSKMAP)
            .u32(4, 4)
            .u32(8, 4)
            .u32(12, XSKMAP_ENTRIES),
    )
    .map_err(|e| xdp_err("create XSKMAP", e))?;
    let key = queue;
    let value = xsk as u32;
    bpf_noret(
        BPF_MAP_UPDATE_ELEM,
        &mut Attr::new()
            .u32(0, map.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64)
            .u64(16, &value as *const u32 as u64),
    )
    .map_err(|e| xdp_err("insert socket into XSKMAP", e))?;
    let prog = filter_program(map.as_raw_fd(), ethertype);
    let license = b"GPL\0";
    let mut log = vec![0u8; 4096];
    let mut attr = Attr::new()
        .u32(0, BPF_PROG_TYPE_XDP)
        .u32(4, prog.len() as u32)
        .u64(8, prog.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, BPF_XDP);
    attr.0[48..56].copy_from_slice(b"lockmgr\0");
    let prog_fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        xdp_err(
            &format!(
                "load XDP program (verifier: {})",
                String::from_utf8_lossy(&log[..end]).trim()
            ),
            e,
        )
    })?;
    let attach = || {
        bpf(
            BPF_LINK_CREATE,
            &mut Attr::new()
                .u32(0, prog_fd.as_raw_fd() as u32)
                .u32(4, info.index as u32)
                .u32(8, BPF_XDP)
                .u32(12, XDP_FLAGS_SKB_MODE),
        )
    };
    let link = match attach() {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) && opts.detach_stale => {
            tracing::warn!(interface, "detaching a stale XDP program");
            netlink_detach_xdp(info.index).map_err(|e| xdp_err("detach stale XDP program", e))?;
            attach().map_err(|e| xdp_err("attach XDP program after detach", e))?
        }
        Err(e) => {
            return Err(xdp_err(
                &format!(
                    "attach XDP program (another program attached? `ip link set dev {interface} xdpgeneric off`)"
                ),
                e,
            ))
        }
    };
    Ok(XdpProg {
        _map: map,
        _prog: prog_fd,
        _link: link,
    })
}

/// RTM_SETLINK with IFLA_XDP { IFLA_XDP_FD = -1, IFLA_XDP_FLAGS = SKB_MODE }.
fn netlink_detach_xdp(ifindex: i32) -> io::Result<()> {
    netlink_set_xdp(ifindex, -1)
}

/// RTM_SETLINK with IFLA_XDP { IFLA_XDP_FD = prog_fd, IFLA_XDP_FLAGS = SKB_MODE }: the legacy
/// attachment that outlives its process (`-1` detaches).
fn netlink_set_xdp(ifindex: i32, prog_fd: RawFd) -> io::Result<()> {
    const RTM_SETLINK: u16 = 19;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const IFLA_XDP: u16 = 43;
    const NLA_F_NESTED: u16 = 1 << 15;
    const IFLA_XDP_FD: u16 = 1;
    const IFLA_XDP_FLAGS: u16 = 3;
    let mut m = Vec::with_capacity(64);
    // nlmsghdr (16) + ifinfomsg (16) + nested attr (4 + 8 + 8).
    let total: u32 = 16 + 16 + 4 + 8 + 8;
    m.extend_from_slice(&total.to_ne_bytes());
    m.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    m.push(libc::AF_UNSPEC as u8);
    m.push(0);
    m.extend_from_slice(&0u16.to_ne_bytes()); // type
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // change
    m.extend_from_slice(&20u16.to_ne_bytes());
    m.extend_from_slice(&(IFLA_XDP | NLA_F_NESTED).to_ne_bytes());
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&IFLA_XDP_FD.to_ne_bytes());
    m.extend_from_slice(&prog_fd.to_ne_bytes());
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&IFLA_XDP_FLAGS.to_ne_bytes());
    m.extend_from_slice(&XDP_FLAGS_SKB_MODE.to_ne_bytes());
    // SAFETY: plain socket(2) call without pointers.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    } as libc::c_long)?;
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: sends our initialised message buffer; the kernel is the implicit destination.
    cvt(unsafe { libc::send(fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) } as libc::c_long)?;
    let mut buf = [0u8; 512];
    // SAFETY: receives into a live local buffer of the given length.
    let n = cvt(
        unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) }
            as libc::c_long,
    )? as usize;
    // NLMSG_ERROR (2) carries errno at offset 16 (0 = the ack).
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if err != 0 {
            return Err(io::Error::from_raw_os_error(-err));
        }
    }
    Ok(())
}

// ---- AF_XDP socket and rings ----------------------------------------------------------------

/// One single-producer/single-consumer ring shared with the kernel.
struct Ring {
    map: MmapRegion,
    producer: usize,
    consumer: usize,
    desc: usize,
    mask: u32,
}

impl Ring {
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, entry: usize, pgoff: u64) -> io::Result<Self> {
        let len = off.desc as usize + RING as usize * entry;
        Ok(Ring {
            map: MmapRegion::map_at(fd, len, pgoff as libc::off_t)?,
            producer: off.producer as usize,
            consumer: off.consumer as usize,
            desc: off.desc as usize,
            mask: RING - 1,
        })
    }

    fn idx(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is a kernel-provided offset of a 4-byte-aligned u32 inside the mapping,
        // which lives as long as `self`; the kernel updates it concurrently, hence atomics.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }

    fn prod(&self) -> &AtomicU32 {
        self.idx(self.producer)
    }

    fn cons(&self) -> &AtomicU32 {
        self.idx(self.consumer)
    }

    /// Pointer to descriptor slot `i` (entries of `size` bytes).
    fn slot(&self, i: u32, size: usize) -> *mut u8 {
        // SAFETY: `(i & mask) * size` is within the RING entries mapped after `desc`.
        unsafe {
            self.map
                .as_ptr()
                .add(self.desc + (i & self.mask) as usize * size)
        }
    }

    fn read_addr(&self, i: u32) -> u64 {
        // SAFETY: fill/completion entries are u64s; the slot is in bounds (see `slot`) and was
        // published by the producer before the index we acquired.
        unsafe { std::ptr::read_volatile(self.slot(i, 8) as *const u64) }
    }

    fn write_addr(&self, i: u32, addr: u64) {
        // SAFETY: in bounds (see `slot`); the slot is ours until we publish the producer index.
        unsafe { std::ptr::write_volatile(self.slot(i, 8) as *mut u64, addr) }
    }

    fn read_desc(&self, i: u32) -> libc::xdp_desc {
        // SAFETY: RX entries are `struct xdp_desc`; in bounds and published (see `read_addr`).
        unsafe { std::ptr::read_volatile(self.slot(i, 16) as *const libc::xdp_desc) }
    }

    fn write_desc(&self, i: u32, d: libc::xdp_desc) {
        // SAFETY: TX entries are `struct xdp_desc`; the slot is ours until published.
        unsafe { std::ptr::write_volatile(self.slot(i, 16) as *mut libc::xdp_desc, d) }
    }
}

/// An AF_XDP socket with its UMEM, rings and filter program, as a [`Link`].
pub struct XdpLink {
    // Field order = drop order: detach the program, close the socket, then unmap.
    _prog: XdpProg,
    fd: OwnedFd,
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    umem: MmapRegion,
    tx_free: Vec<u64>,
    info: IfInfo,
    ethertype: u16,
    framing: Framing,
}

// SAFETY: the raw pointers inside the mappings refer to memory owned exclusively by this link
// (and the kernel); nothing else aliases it, so moving the link to another thread is sound.
unsafe impl Send for XdpLink {}

impl std::fmt::Debug for XdpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpLink")
            .field("info", &self.info)
            .field("ethertype", &self.ethertype)
            .finish()
    }
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl XdpLink {
    /// Create the socket, UMEM and rings on `eth.interface` queue `opts.queue` in the calling
    /// thread's network namespace, and attach the EtherType filter. Needs root.
    pub fn open(eth: &EthConfig, opts: &XdpOptions) -> Result<Self, TransportError> {
        check_ethertype(eth.ethertype)?;
        let info = interface_info(&eth.interface)?;
        // SAFETY: plain socket(2) call without pointers.
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(xdp_err("socket(AF_XDP)", io::Error::last_os_error()));
        }
        // SAFETY: fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let umem = MmapRegion::anonymous(NUM_FRAMES * FRAME_SIZE)
            .map_err(|e| xdp_err("allocate UMEM", e))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.as_ptr() as u64,
            len: umem.len() as u64,
            chunk_size: FRAME_SIZE as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(&fd, libc::XDP_UMEM_REG, &reg).map_err(|e| xdp_err("register UMEM", e))?;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            setsockopt(&fd, opt, &RING).map_err(|e| xdp_err("size rings", e))?;
        }
        // SAFETY: xdp_mmap_offsets is plain old data; all-zero is valid.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut ol = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` and `ol` are live and exclusively borrowed; `ol` holds off's size.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut ol,
            )
        };
        if r < 0 {
            return Err(xdp_err("ring offsets", io::Error::last_os_error()));
        }
        let raw = fd.as_raw_fd();
        let map_err = |e| xdp_err("map rings", e);
        let rx = Ring::map(raw, &off.rx, 16, libc::XDP_PGOFF_RX_RING as u64).map_err(map_err)?;
        let tx = Ring::map(raw, &off.tx, 16, libc::XDP_PGOFF_TX_RING as u64).map_err(map_err)?;
        let fill = Ring::map(raw, &off.fr, 8, libc::XDP_UMEM_PGOFF_FILL_RING).map_err(map_err)?;
        let comp =
            Ring::map(raw, &off.cr, 8, libc::XDP_UMEM_PGOFF_COMPLETION_RING).map_err(map_err)?;
        // First half of the UMEM receives, second half transmits.
        let p = fill.prod().load(Ordering::Relaxed);
        for i in 0..RING {
            fill.write_addr(p.wrapping_add(i), i as u64 * FRAME_SIZE as u64);
        }
        fill.prod().store(p.wrapping_add(RING), Ordering::Release);
        let tx_free = (RING as usize..NUM_FRAMES)
            .map(|i| (i * FRAME_SIZE) as u64)
            .collect();
        let sxdp = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: info.index as u32,
            sxdp_queue_id: opts.queue,
            sxdp_shared_umem_fd: 0,
        };
        // The kernel releases a closed socket's hold on the queue from a workqueue, so a
        // just-closed predecessor (restart, test) can make bind fail with EBUSY for a moment.
        let start = std::time::Instant::now();
        loop {
            // SAFETY: `sxdp` is a live sockaddr_xdp and the length passed is its size.
            let r = unsafe {
                libc::bind(
                    raw,
                    (&sxdp as *const libc::sockaddr_xdp).cast(),
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) || start.elapsed() >= BIND_RETRY {
                return Err(xdp_err(
                    &format!("bind to {} queue {}", eth.interface, opts.queue),
                    e,
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let prog = load_and_attach(&info, &eth.interface, eth.ethertype, opts.queue, raw, opts)?;
        tracing::debug!(interface = %eth.interface, mac = %info.mac, queue = opts.queue,
            ethertype = eth.ethertype, "af_xdp link open (copy mode, generic XDP)");
        Ok(XdpLink {
            _prog: prog,
            fd,
            rx,
            tx,
            fill,
            comp,
            umem,
            tx_free,
            info,
            ethertype: eth.ethertype,
            framing: Framing::new(
                info.mac,
                eth.ethertype,
                info.mtu.min(MAX_XDP_ETH_FRAME - ETH_HDR_LEN),
            ),
        })
    }

    /// Our interface's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.info.mac
    }

    fn reap_completions(&mut self) {
        let prod = self.comp.prod().load(Ordering::Acquire);
        let mut cons = self.comp.cons().load(Ordering::Relaxed);
        while cons != prod {
            self.tx_free.push(self.comp.read_addr(cons));
            cons = cons.wrapping_add(1);
        }
        self.comp.cons().store(cons, Ordering::Release);
    }

    /// `len` bytes of the UMEM at `addr`, if in bounds.
    fn chunk(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(addr).ok()?;
        if off.checked_add(len)? > self.umem.len() {
            return None;
        }
        // SAFETY: in bounds (checked); the chunk was just consumed from the RX ring, so the
        // kernel does not write it until we return it to the fill ring.
        Some(unsafe { std::slice::from_raw_parts(self.umem.as_ptr().add(off), len) })
    }
}

impl Link for XdpLink {
    type Addr = MacAddr;
    const ADDR_IS_PROCESS: bool = false;
    const RX_BUF: usize = DGRAM_MAX + 64;

    fn send_to(&mut self, buf: &[u8], addr: MacAddr) -> io::Result<()> {
        let plan = self.framing.plan(buf.len());
        if self.tx_free.len() < plan.count() {
            self.reap_completions();
        }
        if self.tx_free.len() < plan.count() {
            // The TX chunks are still in flight: treat as loss, retransmission recovers.
            return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        let mut p = self.tx.prod().load(Ordering::Relaxed);
        for i in 0..plan.count() {
            let Some(chunk) = self.tx_free.pop() else {
                break;
            };
            let max = self.framing.max_frame_len();
            // Split borrows: the framing writes into the chunk.
            let off = chunk as usize;
            if off + max > self.umem.len() {
                return Err(io::Error::from_raw_os_error(libc::EFAULT));
            }
            // SAFETY: `chunk` is the base of one of our TX chunks (in bounds, checked above),
            // owned by user space until its descriptor is published below.
            let f = unsafe { std::slice::from_raw_parts_mut(self.umem.as_ptr().add(off), max) };
            let n = self.framing.write(f, addr, &plan, i, buf);
            self.tx.write_desc(
                p,
                libc::xdp_desc {
                    addr: chunk,
                    len: n as u32,
                    options: 0,
                },
            );
            p = p.wrapping_add(1);
        }
        self.tx.prod().store(p, Ordering::Release);
        // Copy mode transmits only inside a syscall: kick it for every datagram.
        // SAFETY: zero-length sendto with no buffer or address; only triggers TX processing.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN)
            ) {
                return Err(e);
            }
        }
        self.reap_completions();
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, usize, MacAddr)>> {
        loop {
            let prod = self.rx.prod().load(Ordering::Acquire);
            let cons = self.rx.cons().load(Ordering::Relaxed);
            if prod == cons {
                return Ok(None);
            }
            let d = self.rx.read_desc(cons);
            let base = d.addr & !(FRAME_SIZE as u64 - 1);
            // The kernel only hands back our chunks; stay inside this one regardless.
            let in_chunk = (base + FRAME_SIZE as u64).saturating_sub(d.addr) as usize;
            let len = (d.len as usize).min(in_chunk).min(buf.len());
            if let Some(data) = self.chunk(d.addr, len) {
                buf[..len].copy_from_slice(data);
            }
            self.rx
                .cons()
                .store(cons.wrapping_add(1), Ordering::Release);
            // Give the chunk straight back to the kernel; the fill ring always has room for
            // it since it held it before.
            let fp = self.fill.prod().load(Ordering::Relaxed);
            self.fill.write_addr(fp, base);
            self.fill
                .prod()
                .store(fp.wrapping_add(1), Ordering::Release);
            if let Some(r) = self.framing.receive(buf, len) {
                return Ok(Some(r));
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// lockmgr server over AF_XDP.
pub type XdpServer = ReliableServer<XdpLink>;
/// lockmgr client over AF_XDP.
pub type XdpClient = ReliableClient<XdpLink>;

impl ReliableServer<XdpLink> {
    /// Serve on `eth.interface` (clients address us by that interface's MAC).
    pub fn open(
        eth: &EthConfig,
        opts: &XdpOptions,
        cfg: ReliableConfig,
    ) -> Result<Self, TransportError> {
        Self::with_link(XdpLink::open(eth, opts)?, cfg)
    }
}

impl ReliableClient<XdpLink> {
    /// Connect to the server with MAC `server` reachable through `eth.interface`.
    pub fn connect(
        eth: &EthConfig,
        opts: &XdpOptions,
        server: MacAddr,
        cfg: ReliableConfig,
    ) -> Result<Self, TransportError> {
        Self::connect_with(XdpLink::open(eth, opts)?, server, cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{pair_or_skip, NetnsPair, IFACE};

    /// Leaves a legacy (netlink) XDP program on `veth0` in `ns`, as a killed libxdp user would.
    fn leave_stale_program(ns: &str) {
        NetnsPair::run_in(ns, || {
            let info = interface_info(IFACE).unwrap();
            let map = bpf(
                BPF_MAP_CREATE,
                &mut Attr::new()
                    .u32(0, BPF_MAP_TYPE_XSKMAP)
                    .u32(4, 4)
                    .u32(8, 4)
                    .u32(12, 1),
            )
            .unwrap();
            let prog = filter_program(map.as_raw_fd(), 0x88b5);
            let license = b"GPL\0";
            let prog = bpf(
                BPF_PROG_LOAD,
                &mut Attr::new()
                    .u32(0, BPF_PROG_TYPE_XDP)
                    .u32(4, prog.len() as u32)
                    .u64(8, prog.as_ptr() as u64)
                    .u64(16, license.as_ptr() as u64),
            )
            .unwrap();
            netlink_set_xdp(info.index, prog.as_raw_fd()).unwrap();
        })
        .unwrap();
    }

    #[test]
    fn stale_netlink_program_is_detached_or_reported() {
        let Some(pair) = pair_or_skip("stale_xdp", 1500) else {
            return;
        };
        leave_stale_program(&pair.a);
        let keep = XdpOptions {
            detach_stale: false,
            ..XdpOptions::default()
        };
        let e = NetnsPair::run_in(&pair.a, move || {
            XdpLink::open(&EthConfig::new(IFACE), &keep).err()
        })
        .unwrap();
        assert!(
            matches!(e, Some(TransportError::Ethernet(EthError::Xdp(ref m))) if m.contains("xdpgeneric off")),
            "{e:?}"
        );
        let ok = NetnsPair::run_in(&pair.a, || {
            XdpLink::open(&EthConfig::new(IFACE), &XdpOptions::default()).map(|_| ())
        })
        .unwrap();
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn program_encoding() {
        let p = filter_program(7, 0x88b5);
        assert_eq!(p.len(), 16);
        // ld_imm64 of the map fd with BPF_PSEUDO_MAP_FD in src_reg.
        assert_eq!(p[9] & 0xff, 0x18);
        assert_eq!((p[9] >> 12) & 0xf, 1);
        assert_eq!(p[9] >> 32, 7);
        // EtherType compared in load order (bytes swapped).
        assert_eq!(p[7] >> 32, 0xb588);
        // Both jumps land on the XDP_PASS tail at instruction 14.
        assert_eq!(5 + 1 + ((p[5] >> 16) & 0xffff) as usize, 14);
        assert_eq!(7 + 1 + ((p[7] >> 16) & 0xffff) as usize, 14);
    }
}
