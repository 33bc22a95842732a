//! RAII wrappers over the libibverbs objects the transport uses (through `rdma-sys`, bindgen
//! bindings against the system's libibverbs): device context, protection domain, completion
//! channel and completion queue. Memory regions live in [`crate::mr`], queue pairs in
//! [`crate::qp`]; those three modules hold all `unsafe` of the verbs path.
//!
//! Every wrapper owns exactly one verbs object and destroys it on drop. The destruction order
//! libibverbs requires is encoded in ownership, so code that gets it wrong does not compile:
//! each object holds an `Arc` of what it was created from (PD -> context, channel -> context,
//! CQ -> channel and context, MR -> PD, QP -> PD), and a queue pair owns its CQ and MR by value
//! and destroys itself before they drop.

use std::ffi::CStr;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_sys as ib;

use crate::RdmaError;

/// `IBV_LINK_LAYER_INFINIBAND` (an anonymous enum in verbs.h, so not in the bindings).
pub const LINK_LAYER_INFINIBAND: u8 = 1;
/// `IBV_LINK_LAYER_ETHERNET`: RoCE, which needs a GRH (`is_global = 1`) on every packet.
pub const LINK_LAYER_ETHERNET: u8 = 2;

/// Which device, port and GID to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Device name as `ibv_devices` / `rdma link` print it (e.g. `mlx5_0`, `rxe0`); `None` = the
    /// first device.
    pub device: Option<String>,
    /// Port number (1-based).
    pub port: u8,
    /// GID table index. `None` = automatic: on RoCE the first IPv4-mapped GID (RoCEv2 with an
    /// IPv4 address; index 1 on a fresh rxe link), on InfiniBand index 0.
    pub gid_index: Option<u8>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            device: None,
            port: 1,
            gid_index: None,
        }
    }
}

/// What was opened, for logs and for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device name.
    pub name: String,
    /// Port number.
    pub port: u8,
    /// GID index in use.
    pub gid_index: u8,
    /// The GID at that index.
    pub gid: [u8; 16],
    /// Port LID (0 on RoCE).
    pub lid: u16,
    /// Active MTU as the verbs enum value (1 = 256 .. 5 = 4096).
    pub active_mtu: u8,
    /// [`LINK_LAYER_INFINIBAND`] or [`LINK_LAYER_ETHERNET`].
    pub link_layer: u8,
}

impl DeviceInfo {
    /// Whether address handles need a global route header (always on RoCE).
    pub fn needs_grh(&self) -> bool {
        self.link_layer == LINK_LAYER_ETHERNET
    }
}

/// Formats a GID like an IPv6 address (the way `rdma`/`ibv_devinfo -v` show it).
pub fn format_gid(gid: &[u8; 16]) -> String {
    std::net::Ipv6Addr::from(*gid).to_string()
}

fn is_ipv4_mapped(gid: &[u8; 16]) -> bool {
    gid[..10].iter().all(|&b| b == 0) && gid[10] == 0xff && gid[11] == 0xff
}

fn verbs_err(op: &'static str) -> RdmaError {
    RdmaError::Verbs {
        op,
        source: io::Error::last_os_error(),
    }
}

/// Errno values meaning "this machine has no RDMA": no uverbs in the kernel (ENOSYS), device
/// gone (ENODEV), no sysfs class (ENOENT).
fn is_no_rdma_errno(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ENXIO)
    )
}

/// An open device context (`ibv_context`): the root every other verbs object hangs off. Each
/// object created from it holds an `Arc<Context>`, so the context is closed only after the last
/// of them is destroyed.
pub(crate) struct Context {
    ctx: NonNull<ib::ibv_context>,
}

// SAFETY: libibverbs objects may be used from any thread (the library and the kernel serialise
// what needs it); the pointer is owned exclusively by this value.
unsafe impl Send for Context {}
// SAFETY: shared access only passes the pointer to thread-safe verbs calls.
unsafe impl Sync for Context {}

impl Context {
    pub(crate) fn as_ptr(&self) -> *mut ib::ibv_context {
        self.ctx.as_ptr()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: opened by `open`, closed exactly once; every object created from the context
        // holds an `Arc<Context>`, so none is left when this runs.
        unsafe { ib::ibv_close_device(self.ctx.as_ptr()) };
    }
}

/// A protection domain (`ibv_pd`). Memory regions and queue pairs hold an
/// `Arc<ProtectionDomain>`, so it is deallocated after all of them.
pub(crate) struct ProtectionDomain {
    pd: NonNull<ib::ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: as for `Context`: an exclusively owned verbs object, used through thread-safe calls.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as for `Context`.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    fn alloc(ctx: &Arc<Context>) -> Result<ProtectionDomain, RdmaError> {
        // SAFETY: the context is open for as long as `ctx` lives.
        let pd = unsafe { ib::ibv_alloc_pd(ctx.as_ptr()) };
        let pd = NonNull::new(pd).ok_or_else(|| verbs_err("ibv_alloc_pd"))?;
        Ok(ProtectionDomain {
            pd,
            ctx: ctx.clone(),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut ib::ibv_pd {
        self.pd.as_ptr()
    }

    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: allocated in `alloc`, deallocated once; memory regions and queue pairs hold an
        // `Arc<ProtectionDomain>`, so none is left. The context outlives this (`ctx` field).
        unsafe { ib::ibv_dealloc_pd(self.pd.as_ptr()) };
    }
}

/// An opened device: its context, one protection domain, and the chosen port/GID.
pub(crate) struct Device {
    pd: Arc<ProtectionDomain>,
    info: DeviceInfo,
}

/// Frees the device list on every exit path of `open`.
struct DeviceList {
    list: *mut *mut ib::ibv_device,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<DeviceList, RdmaError> {
        let mut n: libc::c_int = 0;
        // SAFETY: `n` is a valid out-pointer; the returned array is freed in `Drop`.
        let list = unsafe { ib::ibv_get_device_list(&mut n) };
        if list.is_null() {
            let e = io::Error::last_os_error();
            if is_no_rdma_errno(&e) {
                return Err(RdmaError::NoDevice(format!(
                    "the kernel offers no RDMA support ({e}); use a host with an InfiniBand/RoCE \
                     NIC, or load rdma_rxe and create a soft-RoCE link \
                     (rdma link add rxe0 type rxe netdev IFACE)"
                )));
            }
            return Err(RdmaError::Verbs {
                op: "ibv_get_device_list",
                source: e,
            });
        }
        let list = DeviceList {
            list,
            len: n.max(0) as usize,
        };
        if list.len == 0 {
            return Err(RdmaError::NoDevice(
                "no RDMA devices found (no InfiniBand/RoCE NIC driver loaded; for soft-RoCE run \
                 `rdma link add rxe0 type rxe netdev IFACE`)"
                    .into(),
            ));
        }
        Ok(list)
    }

    fn devices(&self) -> impl Iterator<Item = (*mut ib::ibv_device, String)> + '_ {
        (0..self.len).map(move |i| {
            // SAFETY: `i < len`, the count libibverbs returned for this array.
            let dev = unsafe { *self.list.add(i) };
            // SAFETY: `dev` is a valid device of the list; the name is a NUL-terminated string
            // owned by the device, copied out immediately.
            let name = unsafe { CStr::from_ptr(ib::ibv_get_device_name(dev)) }
                .to_string_lossy()
                .into_owned();
            (dev, name)
        })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from ibv_get_device_list and is freed once. Opened contexts stay
        // valid after the list is freed (documented libibverbs behaviour).
        unsafe { ib::ibv_free_device_list(self.list) };
    }
}

/// Opens the configured device and port, selects the GID, allocates a protection domain.
pub(crate) fn open(cfg: &DeviceConfig) -> Result<Arc<Device>, RdmaError> {
    if cfg.port == 0 {
        return Err(RdmaError::Config("port numbers start at 1".into()));
    }
    let list = DeviceList::get()?;
    let mut chosen = None;
    let mut names = Vec::new();
    for (dev, name) in list.devices() {
        let matches = cfg.device.as_deref().is_none_or(|want| want == name);
        if matches && chosen.is_none() {
            chosen = Some((dev, name.clone()));
        }
        names.push(name);
    }
    let Some((dev, name)) = chosen else {
        return Err(RdmaError::DeviceNotFound {
            name: cfg.device.clone().unwrap_or_default(),
            available: names.join(", "),
        });
    };
    // SAFETY: `dev` is a live entry of `list`.
    let ctx = unsafe { ib::ibv_open_device(dev) };
    let Some(ctx) = NonNull::new(ctx) else {
        let e = io::Error::last_os_error();
        if is_no_rdma_errno(&e) {
            return Err(RdmaError::NoDevice(format!("cannot open {name}: {e}")));
        }
        return Err(RdmaError::Verbs {
            op: "ibv_open_device",
            source: e,
        });
    };
    // From here on the context closes itself on every error path.
    let ctx = Arc::new(Context { ctx });
    drop(list);

    // SAFETY: all-zero is a valid ibv_port_attr (plain integers).
    let mut port: ib::ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the context is open and `port` is a valid out-pointer of the right type.
    if unsafe { ib::___ibv_query_port(ctx.as_ptr(), cfg.port, &mut port) } != 0 {
        return Err(RdmaError::Config(format!(
            "{name} has no port {} (ibv_query_port failed: {})",
            cfg.port,
            io::Error::last_os_error()
        )));
    }
    if port.state != ib::ibv_port_state::IBV_PORT_ACTIVE {
        tracing::warn!(device = %name, port = cfg.port, state = port.state, "RDMA port is not active");
    }
    let query_gid = |idx: u8| -> Option<[u8; 16]> {
        // SAFETY: all-zero is a valid ibv_gid (16 bytes).
        let mut gid: ib::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open, `gid` is a valid out-pointer.
        let r =
            unsafe { ib::ibv_query_gid(ctx.as_ptr(), cfg.port, libc::c_int::from(idx), &mut gid) };
        if r != 0 {
            return None;
        }
        // SAFETY: every bit pattern is valid for the `raw` view of the union.
        Some(unsafe { gid.raw })
    };
    let link_layer = port.link_layer;
    let (gid_index, gid) = match cfg.gid_index {
        Some(i) => {
            let gid = query_gid(i).ok_or_else(|| {
                RdmaError::Config(format!("{name} port {} has no GID index {i}", cfg.port))
            })?;
            (i, gid)
        }
        None if link_layer == LINK_LAYER_ETHERNET => {
            let len = port.gid_tbl_len.clamp(0, 256) as usize;
            let found = (0..len)
                .filter_map(|i| {
                    let i = i as u8;
                    query_gid(i).map(|g| (i, g))
                })
                .find(|(_, g)| is_ipv4_mapped(g));
            match found {
                Some(x) => x,
                None => {
                    tracing::warn!(device = %name, "no IPv4-mapped RoCE GID; using GID index 0");
                    (0, query_gid(0).unwrap_or([0; 16]))
                }
            }
        }
        None => (0, query_gid(0).unwrap_or([0; 16])),
    };
    if link_layer == LINK_LAYER_ETHERNET && gid.iter().all(|&b| b == 0) {
        return Err(RdmaError::Config(format!(
            "{name} port {} GID index {gid_index} is empty (RoCE needs an IP address on the \
             netdev)",
            cfg.port
        )));
    }
    let pd = Arc::new(ProtectionDomain::alloc(&ctx)?);
    let info = DeviceInfo {
        name,
        port: cfg.port,
        gid_index,
        gid,
        lid: port.lid,
        active_mtu: port.active_mtu as u8,
        link_layer,
    };
    tracing::info!(device = %info.name, port = info.port, gid_index, gid = %format_gid(&gid),
        lid = info.lid, mtu = info.active_mtu, link_layer, "RDMA device opened");
    Ok(Arc::new(Device { pd, info }))
}

impl Device {
    pub(crate) fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub(crate) fn context(&self) -> &Arc<Context> {
        self.pd.context()
    }

    pub(crate) fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }
}

/// A completion channel (`ibv_comp_channel`): the fd a sleeping thread waits on for CQ events.
/// Every completion queue reporting to it holds an `Arc<CompletionChannel>`, so the channel is
/// destroyed only after all of them.
pub(crate) struct CompletionChannel {
    ch: NonNull<ib::ibv_comp_channel>,
    ctx: Arc<Context>,
}

// SAFETY: the channel is a kernel fd wrapper; `ibv_get_cq_event` and `ibv_ack_cq_events` may be
// called from any thread.
unsafe impl Send for CompletionChannel {}
// SAFETY: as above; shared access only reads the fd and calls thread-safe verbs.
unsafe impl Sync for CompletionChannel {}

impl CompletionChannel {
    pub(crate) fn new(ctx: &Arc<Context>) -> Result<Arc<CompletionChannel>, RdmaError> {
        // SAFETY: the context is open for as long as `ctx` lives, and the channel keeps it.
        let ch = unsafe { ib::ibv_create_comp_channel(ctx.as_ptr()) };
        let ch = NonNull::new(ch).ok_or_else(|| verbs_err("ibv_create_comp_channel"))?;
        let ch = CompletionChannel {
            ch,
            ctx: ctx.clone(),
        };
        lockmgr_transport::sys::set_nonblocking(ch.fd())?;
        Ok(Arc::new(ch))
    }

    fn as_ptr(&self) -> *mut ib::ibv_comp_channel {
        self.ch.as_ptr()
    }

    pub(crate) fn fd(&self) -> libc::c_int {
        // SAFETY: `ch` is valid until drop; `fd` is a plain field.
        unsafe { (*self.ch.as_ptr()).fd }
    }

    /// Reads and acknowledges every pending CQ event (non-blocking), so the fd stops being
    /// readable. Acknowledging at once keeps `ibv_destroy_cq` from waiting for unacked events.
    pub(crate) fn drain(&self) {
        loop {
            let mut cq: *mut ib::ibv_cq = ptr::null_mut();
            let mut cq_ctx: *mut libc::c_void = ptr::null_mut();
            // SAFETY: valid channel and out-pointers; the fd is non-blocking so this returns
            // -1/EAGAIN when empty.
            let r = unsafe { ib::ibv_get_cq_event(self.as_ptr(), &mut cq, &mut cq_ctx) };
            if r != 0 || cq.is_null() {
                return;
            }
            // SAFETY: `cq` was just returned by ibv_get_cq_event, so it is still alive (a CQ
            // cannot be destroyed while it has unacknowledged events).
            unsafe { ib::ibv_ack_cq_events(cq, 1) };
        }
    }
}

impl Drop for CompletionChannel {
    fn drop(&mut self) {
        // SAFETY: every CQ using the channel holds an `Arc` of it, so all of them are destroyed
        // already; destroyed once.
        unsafe { ib::ibv_destroy_comp_channel(self.as_ptr()) };
    }
}

/// A completion queue (`ibv_cq`), optionally reporting to a completion channel. Owned by value
/// by the one [`crate::qp::QueuePair`] that uses it, so the QP is destroyed first.
pub(crate) struct CompletionQueue {
    cq: NonNull<ib::ibv_cq>,
    // Held so the channel and context outlive the CQ.
    channel: Option<Arc<CompletionChannel>>,
    ctx: Arc<Context>,
}

// SAFETY: an exclusively owned verbs object; libibverbs allows using it from any thread, and the
// `&mut self` methods serialise polling.
unsafe impl Send for CompletionQueue {}

impl CompletionQueue {
    /// A CQ with room for `entries` completions, signalling `channel` (if any) when armed.
    pub(crate) fn new(
        ctx: &Arc<Context>,
        entries: u32,
        channel: Option<&Arc<CompletionChannel>>,
    ) -> Result<CompletionQueue, RdmaError> {
        if let Some(ch) = channel {
            if !Arc::ptr_eq(&ch.ctx, ctx) {
                return Err(RdmaError::Config(
                    "completion channel belongs to another device context".into(),
                ));
            }
        }
        let cqe = libc::c_int::try_from(entries)
            .map_err(|_| RdmaError::Config("completion queue too large".into()))?;
        let ch = channel.map_or(ptr::null_mut(), |c| c.as_ptr());
        // SAFETY: the context is open (`ctx` is alive); `ch` is null or a live channel of it.
        let cq = unsafe { ib::ibv_create_cq(ctx.as_ptr(), cqe, ptr::null_mut(), ch, 0) };
        let cq = NonNull::new(cq).ok_or_else(|| verbs_err("ibv_create_cq"))?;
        Ok(CompletionQueue {
            cq,
            channel: channel.cloned(),
            ctx: ctx.clone(),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut ib::ibv_cq {
        self.cq.as_ptr()
    }

    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Fetches up to `wcs.len()` work completions into `wcs`; returns how many, or `Err` if the
    /// provider reports a polling failure.
    pub(crate) fn poll(&mut self, wcs: &mut [ib::ibv_wc]) -> Result<usize, ()> {
        let room = i32::try_from(wcs.len()).unwrap_or(i32::MAX);
        // SAFETY: the CQ is live and `wcs` has room for `room` entries.
        let n = unsafe { ib::ibv_poll_cq(self.as_ptr(), room, wcs.as_mut_ptr()) };
        usize::try_from(n).map_err(|_| ())
    }

    /// Arms the CQ so the next completion signals the completion channel.
    pub(crate) fn req_notify(&self) -> io::Result<()> {
        if self.channel.is_none() {
            // Arming a CQ without a channel would raise events nobody can read.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "completion queue has no completion channel",
            ));
        }
        // SAFETY: the CQ is live and was created with a completion channel.
        let r = unsafe { ib::ibv_req_notify_cq(self.as_ptr(), 0) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r.abs()));
        }
        Ok(())
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; the QP using it owns it and is destroyed
        // before its fields drop. The channel and context outlive this (fields).
        unsafe { ib::ibv_destroy_cq(self.as_ptr()) };
    }
}
