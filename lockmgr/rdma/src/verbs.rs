//! RAII wrappers over the libibverbs objects the transport uses (through `rdma-sys`, bindgen
//! bindings against the system's libibverbs). All `unsafe` of the crate lives here and in
//! [`crate::conn`]; every wrapper owns exactly one verbs object and destroys it on drop.

use std::ffi::CStr;
use std::io;
use std::ptr;
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

/// An opened device: context, one protection domain, and the chosen port/GID.
pub(crate) struct Device {
    ctx: *mut ib::ibv_context,
    pd: *mut ib::ibv_pd,
    info: DeviceInfo,
}

// SAFETY: libibverbs objects may be used from any thread (the library locks internally where
// needed); `Device` only hands out the raw pointers to code in this crate, which uses each
// connection from one thread at a time.
unsafe impl Send for Device {}
// SAFETY: see `Send`; shared access only reads the immutable `info` and passes `ctx`/`pd` to
// thread-safe verbs calls.
unsafe impl Sync for Device {}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: `pd` and `ctx` were created by `open` and are destroyed exactly once, after
        // every object allocated from them (those hold an `Arc<Device>`).
        unsafe {
            ib::ibv_dealloc_pd(self.pd);
            ib::ibv_close_device(self.ctx);
        }
    }
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
    if ctx.is_null() {
        let e = io::Error::last_os_error();
        if is_no_rdma_errno(&e) {
            return Err(RdmaError::NoDevice(format!("cannot open {name}: {e}")));
        }
        return Err(RdmaError::Verbs {
            op: "ibv_open_device",
            source: e,
        });
    }
    drop(list);
    // Close the context on the error paths below.
    struct Ctx(*mut ib::ibv_context);
    impl Drop for Ctx {
        fn drop(&mut self) {
            if !self.0.is_null() {
                // SAFETY: opened above, closed once (ownership moves to `Device` on success by
                // nulling the pointer).
                unsafe { ib::ibv_close_device(self.0) };
            }
        }
    }
    let mut guard = Ctx(ctx);

    // SAFETY: all-zero is a valid ibv_port_attr (plain integers).
    let mut port: ib::ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `ctx` is open and `port` is a valid out-pointer of the right type.
    if unsafe { ib::___ibv_query_port(ctx, cfg.port, &mut port) } != 0 {
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
        // SAFETY: `ctx` is open, `gid` is a valid out-pointer.
        let r = unsafe { ib::ibv_query_gid(ctx, cfg.port, libc::c_int::from(idx), &mut gid) };
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
    // SAFETY: `ctx` is open.
    let pd = unsafe { ib::ibv_alloc_pd(ctx) };
    if pd.is_null() {
        return Err(verbs_err("ibv_alloc_pd"));
    }
    guard.0 = ptr::null_mut();
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
    Ok(Arc::new(Device { ctx, pd, info }))
}

impl Device {
    pub(crate) fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub(crate) fn ctx(&self) -> *mut ib::ibv_context {
        self.ctx
    }

    pub(crate) fn pd(&self) -> *mut ib::ibv_pd {
        self.pd
    }
}

/// A completion channel: the fd a sleeping thread waits on for CQ events.
pub(crate) struct CompChannel {
    ch: *mut ib::ibv_comp_channel,
    _dev: Arc<Device>,
}

// SAFETY: the channel is a kernel fd wrapper; it is used by one thread at a time.
unsafe impl Send for CompChannel {}

impl CompChannel {
    pub(crate) fn new(dev: &Arc<Device>) -> Result<CompChannel, RdmaError> {
        // SAFETY: the context is open for as long as `dev` lives, which `_dev` guarantees.
        let ch = unsafe { ib::ibv_create_comp_channel(dev.ctx()) };
        if ch.is_null() {
            return Err(verbs_err("ibv_create_comp_channel"));
        }
        let ch = CompChannel {
            ch,
            _dev: dev.clone(),
        };
        lockmgr_transport::sys::set_nonblocking(ch.fd())?;
        Ok(ch)
    }

    pub(crate) fn raw(&self) -> *mut ib::ibv_comp_channel {
        self.ch
    }

    pub(crate) fn fd(&self) -> libc::c_int {
        // SAFETY: `ch` is valid until drop; `fd` is a plain field.
        unsafe { (*self.ch).fd }
    }

    /// Reads and acknowledges every pending CQ event (non-blocking), so the fd stops being
    /// readable. Acknowledging at once keeps `ibv_destroy_cq` from waiting for unacked events.
    pub(crate) fn drain(&self) {
        loop {
            let mut cq: *mut ib::ibv_cq = ptr::null_mut();
            let mut cq_ctx: *mut libc::c_void = ptr::null_mut();
            // SAFETY: valid channel and out-pointers; the fd is non-blocking so this returns
            // -1/EAGAIN when empty.
            let r = unsafe { ib::ibv_get_cq_event(self.ch, &mut cq, &mut cq_ctx) };
            if r != 0 || cq.is_null() {
                return;
            }
            // SAFETY: `cq` was just returned by ibv_get_cq_event, so it is still alive (a CQ
            // cannot be destroyed while it has unacknowledged events).
            unsafe { ib::ibv_ack_cq_events(cq, 1) };
        }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: every CQ using the channel is destroyed before it (the owners drop their
        // connections first); destroyed once.
        unsafe { ib::ibv_destroy_comp_channel(self.ch) };
    }
}
