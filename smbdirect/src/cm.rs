//! RDMA connection management (librdmacm) and the verbs objects of one SMB Direct connection,
//! as owning types with safe methods. This is the only module of the crate allowed `unsafe`.
//!
//! Why not lockmgr-rdma's verbs types: with rdma_cm the device context belongs to librdmacm
//! (`cm_id->verbs`, must not be closed by us) and the queue pair is created and moved through
//! INIT/RTR/RTS by `rdma_create_qp`/`rdma_accept`/`rdma_connect`; lockmgr-rdma's `Context`
//! closes the device it opened and its `QueuePair` does the state transitions by hand.
//!
//! Ownership and destruction order (librdmacm and libibverbs refuse, or crash, otherwise): an
//! [`Endpoint`] destroys its QP, then deregisters and frees its buffers, destroys the CQ, the
//! completion channel, the protection domain, the cm_id and finally the cm_id's own event
//! channel. Struct fields drop in declaration order, and partly built endpoints drop their
//! locals in reverse creation order, so both orders are encoded in the types.
//!
//! Buffer safety: every receive and send buffer is a slot of one registered allocation that Rust
//! only reaches through raw pointers; a slot is readable ([`Endpoint::received`]) only after its
//! receive completion was polled and until it is reposted, and a send slot is written only while
//! no send from it is outstanding.

use std::alloc::{self, Layout};
use std::io;
use std::net::SocketAddr;
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::area::Area;

use rdma_sys as ib;
use thiserror::Error;
use tracing::{debug, warn};

/// Failures of the RDMA layer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CmError {
    #[error("{op} failed: {source}")]
    Call {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("unexpected rdma_cm event {got} (status {status}) while waiting for {want}")]
    UnexpectedEvent {
        want: &'static str,
        got: u32,
        status: i32,
    },
    #[error("connection rejected by the peer (status {0})")]
    Rejected(i32),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("invalid endpoint configuration: {0}")]
    Config(&'static str),
}

fn last_err(op: &'static str) -> CmError {
    CmError::Call {
        op,
        source: io::Error::last_os_error(),
    }
}

/// Verbs calls that return the errno value instead of setting errno.
fn ret_err(op: &'static str, r: libc::c_int) -> CmError {
    CmError::Call {
        op,
        source: io::Error::from_raw_os_error(r.abs()),
    }
}

fn set_nonblocking(fd: libc::c_int) -> Result<(), CmError> {
    // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(last_err("fcntl(F_GETFL)"));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(last_err("fcntl(F_SETFL)"));
    }
    Ok(())
}

/// Waits until one of `fds` is readable or `timeout` passes; returns which were readable.
pub fn wait_readable(fds: &[libc::c_int], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures for the call.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect())
}

/// An rdma_cm event channel (`rdma_event_channel`), its fd non-blocking.
struct EventChannel(NonNull<ib::rdma_event_channel>);

impl EventChannel {
    fn new() -> Result<EventChannel, CmError> {
        // SAFETY: no arguments; returns null with errno on failure.
        let ch = unsafe { ib::rdma_create_event_channel() };
        let ch = NonNull::new(ch).ok_or_else(|| {
            let e = io::Error::last_os_error();
            CmError::Call {
                op: "rdma_create_event_channel (is rdma_cm / rdma_ucm loaded?)",
                source: e,
            }
        })?;
        let ch = EventChannel(ch);
        set_nonblocking(ch.fd())?;
        Ok(ch)
    }

    fn fd(&self) -> libc::c_int {
        // SAFETY: the channel is live until drop; `fd` is a plain field.
        unsafe { (*self.0.as_ptr()).fd }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once, after every cm_id on it (a `CmId` owns the
        // channel its events go to and destroys the id first).
        unsafe { ib::rdma_destroy_event_channel(self.0.as_ptr()) };
    }
}

/// What an rdma_cm event said, copied out before the event is acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct CmEvent {
    pub kind: u32,
    pub status: i32,
    /// From the event's connection parameters (meaningful on CONNECT_REQUEST).
    pub initiator_depth: u8,
    pub responder_resources: u8,
}

pub use ib::rdma_cm_event_type as event;

/// An rdma_cm identifier with its own event channel (after migration, for accepted ones).
struct CmId {
    id: NonNull<ib::rdma_cm_id>,
    channel: EventChannel,
    /// A connection request not answered yet: refuse it before destroying the id, so the
    /// client sees REJECTED at once instead of waiting for its connect to time out.
    unanswered: bool,
}

// SAFETY: a cm_id and its channel may be used from any thread; this value owns both
// exclusively and every method that changes state takes `&self` on thread-safe librdmacm calls
// or `&mut self`.
unsafe impl Send for CmId {}

impl CmId {
    fn new() -> Result<CmId, CmError> {
        let channel = EventChannel::new()?;
        let mut id: *mut ib::rdma_cm_id = ptr::null_mut();
        // SAFETY: valid channel and out-pointer; RDMA_PS_TCP is the reliable-connected space.
        let r = unsafe {
            ib::rdma_create_id(
                channel.0.as_ptr(),
                &mut id,
                ptr::null_mut(),
                ib::rdma_port_space::RDMA_PS_TCP,
            )
        };
        if r != 0 {
            return Err(last_err("rdma_create_id"));
        }
        let id = NonNull::new(id).ok_or_else(|| last_err("rdma_create_id"))?;
        Ok(CmId {
            id,
            channel,
            unanswered: false,
        })
    }

    fn as_ptr(&self) -> *mut ib::rdma_cm_id {
        self.id.as_ptr()
    }

    /// Reads one event without blocking, acknowledges it and returns what it said.
    fn try_event(&self) -> Result<Option<(CmEvent, *mut ib::rdma_cm_id)>, CmError> {
        let mut ev: *mut ib::rdma_cm_event = ptr::null_mut();
        // SAFETY: valid channel (non-blocking fd) and out-pointer.
        let r = unsafe { ib::rdma_get_cm_event(self.channel.0.as_ptr(), &mut ev) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(CmError::Call {
                op: "rdma_get_cm_event",
                source: e,
            });
        }
        let Some(ev) = NonNull::new(ev) else {
            return Ok(None);
        };
        // SAFETY: `ev` is a live event until acknowledged below; only plain fields are read
        // (the `conn` view of the param union is the one rdma_cm fills for connection events,
        // and it is plain integers and a pointer we do not follow for the others).
        let (out, id) = unsafe {
            let e = &*ev.as_ptr();
            (
                CmEvent {
                    kind: e.event,
                    status: e.status,
                    initiator_depth: e.param.conn.initiator_depth,
                    responder_resources: e.param.conn.responder_resources,
                },
                e.id,
            )
        };
        // SAFETY: acknowledging the event we got; it is not used afterwards.
        unsafe { ib::rdma_ack_cm_event(ev.as_ptr()) };
        Ok(Some((out, id)))
    }

    /// Waits for the next event until `deadline`.
    fn wait_event(
        &self,
        deadline: Instant,
        want: &'static str,
    ) -> Result<(CmEvent, *mut ib::rdma_cm_id), CmError> {
        loop {
            if let Some(e) = self.try_event()? {
                return Ok(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CmError::Timeout(want));
            }
            wait_readable(&[self.channel.fd()], left)
                .map_err(|source| CmError::Call { op: "poll", source })?;
        }
    }

    fn expect_event(
        &self,
        kind: u32,
        deadline: Instant,
        want: &'static str,
    ) -> Result<CmEvent, CmError> {
        let (e, _) = self.wait_event(deadline, want)?;
        if e.kind == event::RDMA_CM_EVENT_REJECTED && kind != e.kind {
            return Err(CmError::Rejected(e.status));
        }
        if e.kind != kind {
            return Err(CmError::UnexpectedEvent {
                want,
                got: e.kind,
                status: e.status,
            });
        }
        Ok(e)
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        if self.unanswered {
            // SAFETY: live id of a connection request that got neither accept nor reject.
            unsafe { ib::rdma_reject(self.id.as_ptr(), ptr::null(), 0) };
        }
        // SAFETY: created by rdma_create_id (or handed to us by a CONNECT_REQUEST and migrated to
        // `channel`), destroyed once; every event of it was acknowledged when read, and the QP
        // and PD built on it are gone (an `Endpoint` drops them first). The channel drops after.
        unsafe { ib::rdma_destroy_id(self.id.as_ptr()) };
    }
}

fn sockaddr_of(addr: &SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

/// A listening rdma_cm identifier: every RDMA device whose address matches (all of them for
/// an unspecified address).
pub struct Listener {
    id: CmId,
}

impl Listener {
    pub fn bind(addr: SocketAddr, backlog: i32) -> Result<Listener, CmError> {
        let id = CmId::new()?;
        let mut ss = sockaddr_of(&addr);
        // SAFETY: live id; `ss` holds a valid sockaddr of its family for the call.
        if unsafe {
            ib::rdma_bind_addr(id.as_ptr(), (&mut ss as *mut libc::sockaddr_storage).cast())
        } != 0
        {
            return Err(last_err("rdma_bind_addr"));
        }
        // SAFETY: live, bound id.
        if unsafe { ib::rdma_listen(id.as_ptr(), backlog) } != 0 {
            return Err(last_err("rdma_listen"));
        }
        Ok(Listener { id })
    }

    /// The fd that becomes readable when a connection request (or another event) arrives.
    pub fn fd(&self) -> libc::c_int {
        self.id.channel.fd()
    }

    /// The next connection request, without blocking. Other events of the listening id (device
    /// removal, address change) are logged and dropped.
    pub fn next_request(&self) -> Result<Option<ConnectRequest>, CmError> {
        while let Some((ev, id)) = self.id.try_event()? {
            if ev.kind != event::RDMA_CM_EVENT_CONNECT_REQUEST {
                warn!(
                    kind = ev.kind,
                    status = ev.status,
                    "smbdirect: listener event ignored"
                );
                continue;
            }
            let Some(id) = NonNull::new(id) else {
                continue;
            };
            // Give the new id a channel of its own at once, so its events never reach the
            // listener's and the connection's thread owns everything about it.
            let channel = match EventChannel::new() {
                Ok(c) => c,
                Err(e) => {
                    // SAFETY: the request's id is ours (its event is acknowledged); refusing
                    // and destroying it once is the documented way to drop a request.
                    unsafe {
                        ib::rdma_reject(id.as_ptr(), ptr::null(), 0);
                        ib::rdma_destroy_id(id.as_ptr());
                    }
                    return Err(e);
                }
            };
            // SAFETY: live id whose only event was acknowledged; live new channel.
            if unsafe { ib::rdma_migrate_id(id.as_ptr(), channel.0.as_ptr()) } != 0 {
                let e = last_err("rdma_migrate_id");
                // SAFETY: as above: the id is ours and destroyed once.
                unsafe {
                    ib::rdma_reject(id.as_ptr(), ptr::null(), 0);
                    ib::rdma_destroy_id(id.as_ptr());
                }
                return Err(e);
            }
            return Ok(Some(ConnectRequest {
                id: CmId {
                    id,
                    channel,
                    unanswered: true,
                },
                initiator_depth: ev.initiator_depth,
                responder_resources: ev.responder_resources,
            }));
        }
        Ok(None)
    }
}

/// A client's connection request, not answered yet. Dropping it (or failing to accept it)
/// refuses the connection.
pub struct ConnectRequest {
    id: CmId,
    initiator_depth: u8,
    responder_resources: u8,
}

impl ConnectRequest {
    /// Refuses the connection (the peer sees REJECTED).
    pub fn reject(self) {
        // Dropping the unanswered id rejects it (see `CmId::unanswered`).
        drop(self);
    }

    /// Builds the connection's queue pair and buffers, posts every receive slot, accepts and
    /// waits (until `timeout`) for the connection to be established.
    pub fn accept(self, cfg: &EndpointConfig, timeout: Duration) -> Result<Endpoint, CmError> {
        self.accept_with_area(cfg, timeout, None)
    }

    /// [`Self::accept`], the connection built in the protection domain where `area` is
    /// registered for its device (registered there on the device's first connection), so
    /// RDMA READs and WRITEs can use the area ([`Endpoint::post_rdma_area`]).
    pub fn accept_with_area(
        self,
        cfg: &EndpointConfig,
        timeout: Duration,
        area: Option<&AreaRegistry>,
    ) -> Result<Endpoint, CmError> {
        let deadline = Instant::now() + timeout;
        let mut ep = Endpoint::build(self.id, cfg, area)?;
        ep.post_all_receives()?;
        // SAFETY: all-zero is a valid rdma_conn_param (no private data).
        let mut p: ib::rdma_conn_param = unsafe { std::mem::zeroed() };
        // RDMA READ resources for the later READ/WRITE channels: what the client asked for,
        // within a small bound.
        p.responder_resources = self.responder_resources.min(MAX_RD_ATOMIC);
        p.initiator_depth = self.initiator_depth.min(MAX_RD_ATOMIC);
        p.retry_count = 7;
        p.rnr_retry_count = 7;
        // SAFETY: live id with its QP created; `p` is valid for the call.
        if unsafe { ib::rdma_accept(ep.id.as_ptr(), &mut p) } != 0 {
            return Err(last_err("rdma_accept"));
        }
        ep.id.unanswered = false;
        ep.id
            .expect_event(event::RDMA_CM_EVENT_ESTABLISHED, deadline, "ESTABLISHED")?;
        Ok(ep)
    }
}

const MAX_RD_ATOMIC: u8 = 16;

/// Sizes of one endpoint's registered buffers.
#[derive(Debug, Clone, Copy)]
pub struct EndpointConfig {
    /// Receive slots kept posted (the core's receive ring).
    pub recv_slots: u16,
    /// Bytes per receive slot (the core's max receive size).
    pub recv_size: u32,
    /// Send slots (sends in flight at once).
    pub send_slots: u16,
    /// Bytes per send slot (the core's max send size).
    pub send_size: u32,
}

impl EndpointConfig {
    fn bytes(&self) -> Option<usize> {
        let r = usize::from(self.recv_slots).checked_mul(self.recv_size as usize)?;
        let s = usize::from(self.send_slots).checked_mul(self.send_size as usize)?;
        r.checked_add(s)
    }
}

/// A protection domain on a cm_id's device.
struct Pd(NonNull<ib::ibv_pd>);

/// The shared area registered once in a protection domain of one device, which every
/// connection on that device uses: deregistered (then the PD deallocated) when the last
/// holder goes, after the connections' QPs (each endpoint holds an `Arc` in its PD field).
pub struct DeviceArea {
    mr: NonNull<ib::ibv_mr>,
    pd: Pd,
    /// The device context (librdmacm's, one per device) this PD belongs to.
    verbs: usize,
    area: Arc<Area>,
}

// SAFETY: the PD and MR are owned by this value; libibverbs allows using them from any thread
// and nothing here mutates them after creation.
unsafe impl Send for DeviceArea {}
// SAFETY: as above (only the lkey is read after creation).
unsafe impl Sync for DeviceArea {}

impl DeviceArea {
    fn register(verbs: *mut ib::ibv_context, area: Arc<Area>) -> Result<DeviceArea, CmError> {
        // SAFETY: `verbs` is a live device context (an accepted cm_id's).
        let pd = NonNull::new(unsafe { ib::ibv_alloc_pd(verbs) })
            .map(Pd)
            .ok_or_else(|| last_err("ibv_alloc_pd"))?;
        // RDMA READ responses land in it (the HCA writes), RDMA WRITEs read it.
        let access = ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as libc::c_int;
        // SAFETY: live PD; the area's mapping is `len` bytes and outlives the registration
        // (this value holds an `Arc` of it and deregisters in `Drop` before releasing it).
        let mr = NonNull::new(unsafe {
            ib::ibv_reg_mr(pd.0.as_ptr(), area.as_ptr().cast(), area.len(), access)
        })
        .ok_or_else(|| CmError::Call {
            op: "ibv_reg_mr of the shared area (check the locked-memory limit, ulimit -l)",
            source: io::Error::last_os_error(),
        })?;
        Ok(DeviceArea {
            mr,
            pd,
            verbs: verbs as usize,
            area,
        })
    }

    fn lkey(&self) -> u32 {
        // SAFETY: the MR is live while `self` is; lkey is a plain field.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    pub fn area(&self) -> &Arc<Area> {
        &self.area
    }
}

impl Drop for DeviceArea {
    fn drop(&mut self) {
        // SAFETY: registered in `register`, deregistered once; every QP that posted work
        // requests on it held an `Arc` of this value and was destroyed before the last one
        // went. The PD (field) is deallocated after this, the area unmapped after that.
        unsafe { ib::ibv_dereg_mr(self.mr.as_ptr()) };
    }
}

/// The shared area and its registration on each device connections came in on: one
/// registration per device (protection domain) for the daemon's lifetime.
pub struct AreaRegistry {
    area: Arc<Area>,
    devices: Mutex<Vec<Arc<DeviceArea>>>,
}

impl AreaRegistry {
    pub fn new(area: Arc<Area>) -> AreaRegistry {
        AreaRegistry {
            area,
            devices: Mutex::new(Vec::new()),
        }
    }

    pub fn area(&self) -> &Arc<Area> {
        &self.area
    }

    fn for_context(&self, verbs: *mut ib::ibv_context) -> Result<Arc<DeviceArea>, CmError> {
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = d.iter().find(|a| a.verbs == verbs as usize) {
            return Ok(a.clone());
        }
        let a = Arc::new(DeviceArea::register(verbs, self.area.clone())?);
        debug!(len = self.area.len(), "shared area registered on a device");
        d.push(a.clone());
        Ok(a)
    }
}

/// An endpoint's protection domain: its own, or a device's shared one with the area.
enum PdRef {
    Own(Pd),
    Shared(Arc<DeviceArea>),
}

impl PdRef {
    fn ptr(&self) -> *mut ib::ibv_pd {
        match self {
            PdRef::Own(p) => p.0.as_ptr(),
            PdRef::Shared(a) => a.pd.0.as_ptr(),
        }
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: allocated in `Endpoint::build`, deallocated once, after the QP and MR using it
        // (fields of `Endpoint` declared before it).
        unsafe { ib::ibv_dealloc_pd(self.0.as_ptr()) };
    }
}

struct CompChannel(NonNull<ib::ibv_comp_channel>);

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: created in `Endpoint::build`, destroyed once after its only CQ.
        unsafe { ib::ibv_destroy_comp_channel(self.0.as_ptr()) };
    }
}

struct Cq(NonNull<ib::ibv_cq>);

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: created in `Endpoint::build`, destroyed once after the QP using it; every CQ
        // event was acknowledged when read (`Endpoint::drain_events`).
        unsafe { ib::ibv_destroy_cq(self.0.as_ptr()) };
    }
}

/// Page-aligned zeroed memory, only reached through raw pointers.
struct Buffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Buffer {
    fn new(len: usize) -> Result<Buffer, CmError> {
        let layout = Layout::from_size_align(len.max(1), 4096)
            .map_err(|_| CmError::Config("buffers too large"))?;
        // SAFETY: `layout` has non-zero size.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or(CmError::Config("out of memory"))?;
        Ok(Buffer { ptr, layout })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once, after the MR covering it was
        // deregistered (`Mr` drops before its `buf` field).
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

struct Mr {
    mr: NonNull<ib::ibv_mr>,
    // Freed after the deregistration in `Drop`.
    buf: Buffer,
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered in `Endpoint::build`, deregistered once, after the QP that posted
        // work requests on it was destroyed (field order of `Endpoint`).
        unsafe { ib::ibv_dereg_mr(self.mr.as_ptr()) };
    }
}

/// The QP rdma_cm created on a cm_id.
struct Qp(NonNull<ib::rdma_cm_id>);

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: `rdma_create_qp` succeeded on this id, which outlives this value (the `id`
        // field of `Endpoint` drops last); destroyed once.
        unsafe { ib::rdma_destroy_qp(self.0.as_ptr()) };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvSlot {
    Free,
    Posted,
    /// Completed with this many bytes; readable until reposted.
    Filled(u32),
}

/// A completion the caller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Receive slot `slot` holds a message of `len` bytes ([`Endpoint::received`]).
    Recv { slot: u16, len: u32 },
    /// A send finished; its slot is free again.
    Send,
    /// A work request failed (`ibv_wc_status`); the QP is in error: the connection is over.
    Failed { status: u32, recv: bool },
    /// An RDMA READ or WRITE posted with [`Endpoint::post_rdma`] finished.
    Rdma,
}

const SEND_BIT: u64 = 1 << 32;
const RDMA_BIT: u64 = 1 << 33;
/// RDMA READ/WRITE work requests in flight at once, beyond the send slots (the send queue is
/// sized for both).
pub const MAX_RDMA_WR: u16 = 16;

/// One RC connection made through rdma_cm: its QP, CQ, completion channel and registered
/// receive and send slots.
pub struct Endpoint {
    // Declaration order = destruction order (see the module documentation).
    _qp: Qp,
    mr: Mr,
    /// The buffer RDMA READs land in and RDMA WRITEs go out from, registered on first use.
    rdma: Option<Mr>,
    rdma_inflight: u16,
    cq: Cq,
    comp: CompChannel,
    _pd: PdRef,
    id: CmId,
    cfg: EndpointConfig,
    recv: Vec<RecvSlot>,
    send_busy: Vec<bool>,
    disconnected: bool,
}

// SAFETY: every verbs object here is owned exclusively by this value and libibverbs/librdmacm
// allow using them from any thread; posting and polling take `&mut self`.
unsafe impl Send for Endpoint {}

impl Endpoint {
    fn build(
        id: CmId,
        cfg: &EndpointConfig,
        area: Option<&AreaRegistry>,
    ) -> Result<Endpoint, CmError> {
        if cfg.recv_slots == 0 || cfg.send_slots == 0 || cfg.recv_size == 0 || cfg.send_size == 0 {
            return Err(CmError::Config("slot counts and sizes must be non-zero"));
        }
        let len = cfg.bytes().ok_or(CmError::Config("buffers too large"))?;
        // SAFETY: live id; after address resolution or a connect request `verbs` is the
        // device context librdmacm opened for it (owned by librdmacm, never closed by us).
        let verbs = unsafe { (*id.as_ptr()).verbs };
        if verbs.is_null() {
            return Err(CmError::Config("cm_id is not bound to an RDMA device"));
        }
        let pd = match area {
            Some(r) => PdRef::Shared(r.for_context(verbs)?),
            // SAFETY: `verbs` is a live device context (above).
            None => PdRef::Own(
                NonNull::new(unsafe { ib::ibv_alloc_pd(verbs) })
                    .map(Pd)
                    .ok_or_else(|| last_err("ibv_alloc_pd"))?,
            ),
        };
        // SAFETY: as above.
        let comp = NonNull::new(unsafe { ib::ibv_create_comp_channel(verbs) })
            .map(CompChannel)
            .ok_or_else(|| last_err("ibv_create_comp_channel"))?;
        // SAFETY: the channel is live until `comp` drops; `fd` is a plain field.
        set_nonblocking(unsafe { (*comp.0.as_ptr()).fd })?;
        let entries = libc::c_int::from(cfg.recv_slots)
            + libc::c_int::from(cfg.send_slots)
            + libc::c_int::from(MAX_RDMA_WR);
        // SAFETY: live context and channel of it.
        let cq = NonNull::new(unsafe {
            ib::ibv_create_cq(verbs, entries, ptr::null_mut(), comp.0.as_ptr(), 0)
        })
        .map(Cq)
        .ok_or_else(|| last_err("ibv_create_cq"))?;
        let buf = Buffer::new(len)?;
        let access = ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as libc::c_int;
        // SAFETY: live PD; `buf` is `len` bytes that outlive the registration (`Mr` owns it and
        // deregisters before freeing).
        let mr =
            NonNull::new(unsafe { ib::ibv_reg_mr(pd.ptr(), buf.ptr.as_ptr().cast(), len, access) })
                .ok_or_else(|| CmError::Call {
                    op: "ibv_reg_mr (check the locked-memory limit, ulimit -l)",
                    source: io::Error::last_os_error(),
                })?;
        let mr = Mr { mr, buf };
        // SAFETY: all-zero is a valid ibv_qp_init_attr.
        let mut init: ib::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.0.as_ptr();
        init.recv_cq = cq.0.as_ptr();
        init.qp_type = ib::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 1;
        init.cap.max_send_wr = u32::from(cfg.send_slots) + u32::from(MAX_RDMA_WR);
        init.cap.max_recv_wr = u32::from(cfg.recv_slots);
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        // SAFETY: live id, PD and CQ; `init` is fully initialised.
        let r = unsafe { ib::rdma_create_qp(id.as_ptr(), pd.ptr(), &mut init) };
        if r != 0 {
            return Err(last_err("rdma_create_qp"));
        }
        let qp = Qp(id.id);
        Ok(Endpoint {
            _qp: qp,
            mr,
            rdma: None,
            rdma_inflight: 0,
            cq,
            comp,
            _pd: pd,
            id,
            cfg: *cfg,
            recv: vec![RecvSlot::Free; usize::from(cfg.recv_slots)],
            send_busy: vec![false; usize::from(cfg.send_slots)],
            disconnected: false,
        })
    }

    /// Connects to an SMB Direct server at `addr` (the initiator), with every receive slot
    /// posted before the connection is up.
    pub fn connect(
        addr: SocketAddr,
        cfg: &EndpointConfig,
        timeout: Duration,
    ) -> Result<Endpoint, CmError> {
        let deadline = Instant::now() + timeout;
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let id = CmId::new()?;
        let mut ss = sockaddr_of(&addr);
        // SAFETY: live id; `ss` holds a valid sockaddr for the call; no source address.
        if unsafe {
            ib::rdma_resolve_addr(
                id.as_ptr(),
                ptr::null_mut(),
                (&mut ss as *mut libc::sockaddr_storage).cast(),
                ms,
            )
        } != 0
        {
            return Err(last_err("rdma_resolve_addr"));
        }
        id.expect_event(
            event::RDMA_CM_EVENT_ADDR_RESOLVED,
            deadline,
            "ADDR_RESOLVED",
        )?;
        // SAFETY: live id with a resolved address.
        if unsafe { ib::rdma_resolve_route(id.as_ptr(), ms) } != 0 {
            return Err(last_err("rdma_resolve_route"));
        }
        id.expect_event(
            event::RDMA_CM_EVENT_ROUTE_RESOLVED,
            deadline,
            "ROUTE_RESOLVED",
        )?;
        let mut ep = Endpoint::build(id, cfg, None)?;
        ep.post_all_receives()?;
        // SAFETY: all-zero is a valid rdma_conn_param (no private data).
        let mut p: ib::rdma_conn_param = unsafe { std::mem::zeroed() };
        p.responder_resources = MAX_RD_ATOMIC;
        p.initiator_depth = MAX_RD_ATOMIC;
        p.retry_count = 7;
        p.rnr_retry_count = 7;
        // SAFETY: live id with its QP; `p` valid for the call.
        if unsafe { ib::rdma_connect(ep.id.as_ptr(), &mut p) } != 0 {
            return Err(last_err("rdma_connect"));
        }
        ep.id
            .expect_event(event::RDMA_CM_EVENT_ESTABLISHED, deadline, "ESTABLISHED")?;
        Ok(ep)
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// The completion channel's fd: readable after a completion once [`Self::arm`] was called.
    pub fn completion_fd(&self) -> libc::c_int {
        // SAFETY: the channel is live until drop; `fd` is a plain field.
        unsafe { (*self.comp.0.as_ptr()).fd }
    }

    /// The cm_id's event channel fd: readable when the peer disconnects.
    pub fn cm_fd(&self) -> libc::c_int {
        self.id.channel.fd()
    }

    fn post_all_receives(&mut self) -> Result<(), CmError> {
        for slot in 0..self.cfg.recv_slots {
            self.post_recv(slot)?;
        }
        Ok(())
    }

    /// Receive slots that are not posted (free, or holding a message already handled).
    pub fn unposted_receives(&self) -> impl Iterator<Item = u16> + '_ {
        self.recv
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != RecvSlot::Posted)
            .map(|(i, _)| i as u16)
    }

    /// Posts receive slot `slot`; its previous contents are no longer readable.
    pub fn post_recv(&mut self, slot: u16) -> Result<(), CmError> {
        let i = usize::from(slot);
        match self.recv.get(i) {
            Some(RecvSlot::Posted) | None => {
                return Err(CmError::Config("receive slot unknown or already posted"))
            }
            Some(_) => {}
        }
        let size = self.cfg.recv_size as usize;
        let mut sge = ib::ibv_sge {
            addr: self.mr.buf.ptr.as_ptr() as u64 + (i * size) as u64,
            length: self.cfg.recv_size,
            // SAFETY: the MR is live; lkey is a plain field.
            lkey: unsafe { (*self.mr.mr.as_ptr()).lkey },
        };
        let mut wr = ib::ibv_recv_wr {
            wr_id: u64::from(slot),
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad: *mut ib::ibv_recv_wr = ptr::null_mut();
        // SAFETY: live QP (created on `id`); the slot is inside the registered buffer and no
        // Rust borrow of it exists (`received` borrows `&self`, this takes `&mut self`); it is
        // marked posted so Rust does not read it until its completion is polled.
        let r = unsafe { ib::ibv_post_recv((*self.id.as_ptr()).qp, &mut wr, &mut bad) };
        if r != 0 {
            return Err(ret_err("ibv_post_recv", r));
        }
        self.recv[i] = RecvSlot::Posted;
        Ok(())
    }

    /// The message in receive slot `slot`, once its completion was polled and until the slot
    /// is reposted.
    pub fn received(&self, slot: u16) -> Option<&[u8]> {
        let RecvSlot::Filled(len) = *self.recv.get(usize::from(slot))? else {
            return None;
        };
        let size = self.cfg.recv_size as usize;
        let len = (len as usize).min(size);
        // SAFETY: the slot is inside the buffer and not posted (checked), so the HCA does not
        // write it, and posting needs `&mut self`, which this borrow excludes.
        Some(unsafe {
            std::slice::from_raw_parts(self.mr.buf.ptr.as_ptr().add(usize::from(slot) * size), len)
        })
    }

    /// Send slots free for [`Self::send`].
    pub fn free_send_slots(&self) -> usize {
        self.send_busy.iter().filter(|b| !**b).count()
    }

    /// Copies `data` into a free send slot and posts a signalled SEND of it.
    pub fn send(&mut self, data: &[u8]) -> Result<(), CmError> {
        self.send_inner(data, None)
    }

    /// Like [`Self::send`], as SEND_WITH_INVALIDATE of the peer's memory `token`
    /// (MS-SMBD 3.1.5.1: the response to an SMB2_CHANNEL_RDMA_V1_INVALIDATE request).
    pub fn send_with_invalidate(&mut self, data: &[u8], token: u32) -> Result<(), CmError> {
        self.send_inner(data, Some(token))
    }

    fn send_inner(&mut self, data: &[u8], invalidate: Option<u32>) -> Result<(), CmError> {
        if data.len() > self.cfg.send_size as usize {
            return Err(CmError::Config("message larger than a send slot"));
        }
        let slot = self
            .send_busy
            .iter()
            .position(|b| !*b)
            .ok_or(CmError::Config("no free send slot"))?;
        let base = usize::from(self.cfg.recv_slots) * self.cfg.recv_size as usize
            + slot * self.cfg.send_size as usize;
        // SAFETY: the slot is inside the buffer and no send from it is outstanding (checked), so
        // the HCA does not read it while we write; `&mut self` excludes Rust borrows.
        unsafe {
            ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.mr.buf.ptr.as_ptr().add(base),
                data.len(),
            )
        };
        let mut sge = ib::ibv_sge {
            addr: self.mr.buf.ptr.as_ptr() as u64 + base as u64,
            length: data.len() as u32,
            // SAFETY: the MR is live; lkey is a plain field.
            lkey: unsafe { (*self.mr.mr.as_ptr()).lkey },
        };
        // SAFETY: all-zero is a valid ibv_send_wr.
        let mut wr: ib::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = SEND_BIT | slot as u64;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = ib::ibv_wr_opcode::IBV_WR_SEND;
        if let Some(token) = invalidate {
            wr.opcode = ib::ibv_wr_opcode::IBV_WR_SEND_WITH_INV;
            wr.imm_data_invalidated_rkey_union = ib::imm_data_invalidated_rkey_union_t {
                invalidated_rkey: token,
            };
        }
        wr.send_flags = ib::ibv_send_flags::IBV_SEND_SIGNALED.0;
        let mut bad: *mut ib::ibv_send_wr = ptr::null_mut();
        // SAFETY: live QP; `wr`/`sge` valid for the call; the slot is marked busy below until
        // its completion is polled.
        let r = unsafe { ib::ibv_post_send((*self.id.as_ptr()).qp, &mut wr, &mut bad) };
        if r != 0 {
            return Err(ret_err("ibv_post_send", r));
        }
        self.send_busy[slot] = true;
        Ok(())
    }

    /// Registers the RDMA buffer of `len` bytes (once; later calls must not ask for more).
    pub fn ensure_rdma_buffer(&mut self, len: usize) -> Result<(), CmError> {
        if let Some(mr) = &self.rdma {
            return if mr.buf.layout.size() >= len {
                Ok(())
            } else {
                Err(CmError::Config("RDMA buffer smaller than the transfer"))
            };
        }
        let buf = Buffer::new(len)?;
        // RDMA READ responses are written into it by the HCA.
        let access = ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as libc::c_int;
        // SAFETY: the PD is live (it outlives the `rdma` field, see the field order); `buf` is
        // `len` bytes that outlive the registration (`Mr` deregisters before freeing).
        let mr = NonNull::new(unsafe {
            ib::ibv_reg_mr(self._pd.ptr(), buf.ptr.as_ptr().cast(), len.max(1), access)
        })
        .ok_or_else(|| CmError::Call {
            op: "ibv_reg_mr of the RDMA buffer (check the locked-memory limit, ulimit -l)",
            source: io::Error::last_os_error(),
        })?;
        self.rdma = Some(Mr { mr, buf });
        Ok(())
    }

    /// RDMA READs/WRITEs posted and not completed.
    pub fn rdma_inflight(&self) -> u16 {
        self.rdma_inflight
    }

    /// The first `len` bytes of the RDMA buffer, while no RDMA operation is in flight.
    pub fn rdma_buffer(&self, len: usize) -> Option<&[u8]> {
        let mr = self.rdma.as_ref()?;
        if self.rdma_inflight != 0 || len > mr.buf.layout.size() {
            return None;
        }
        // SAFETY: inside the buffer; no RDMA operation is in flight (checked), so the HCA does
        // not write it, and posting one needs `&mut self`, which this borrow excludes.
        Some(unsafe { std::slice::from_raw_parts(mr.buf.ptr.as_ptr(), len) })
    }

    /// Copies `data` to the start of the RDMA buffer, while no RDMA operation is in flight.
    pub fn fill_rdma_buffer(&mut self, data: &[u8]) -> Result<(), CmError> {
        let mr = self
            .rdma
            .as_ref()
            .ok_or(CmError::Config("no RDMA buffer registered"))?;
        if self.rdma_inflight != 0 || data.len() > mr.buf.layout.size() {
            return Err(CmError::Config("RDMA buffer busy or too small"));
        }
        // SAFETY: inside the buffer; no RDMA operation reads or writes it now (checked) and
        // `&mut self` excludes Rust borrows.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), mr.buf.ptr.as_ptr(), data.len()) };
        Ok(())
    }

    /// Posts a signalled RDMA READ (`read`) or WRITE of `len` bytes between `local_offset` of
    /// the RDMA buffer and the peer's `remote_addr` under its `rkey`.
    pub fn post_rdma(
        &mut self,
        read: bool,
        local_offset: u32,
        len: u32,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), CmError> {
        let mr = self
            .rdma
            .as_ref()
            .ok_or(CmError::Config("no RDMA buffer registered"))?;
        let end = u64::from(local_offset) + u64::from(len);
        if end > mr.buf.layout.size() as u64 {
            return Err(CmError::Config("RDMA segment outside the RDMA buffer"));
        }
        if self.rdma_inflight >= MAX_RDMA_WR {
            return Err(CmError::Config("too many RDMA operations in flight"));
        }
        let sge = ib::ibv_sge {
            addr: mr.buf.ptr.as_ptr() as u64 + u64::from(local_offset),
            length: len,
            // SAFETY: the MR is live; lkey is a plain field.
            lkey: unsafe { (*mr.mr.as_ptr()).lkey },
        };
        // The segment is inside the registered RDMA buffer, which Rust does not touch while
        // `rdma_inflight` is non-zero.
        self.post_rdma_sge(read, sge, remote_addr, rkey, "ibv_post_send (RDMA)")
    }

    /// Posts one signalled RDMA READ or WRITE of `sge` (inside memory registered with this
    /// endpoint's protection domain, which the caller keeps from Rust accesses until the
    /// completion) to the peer's `remote_addr` under `rkey`.
    fn post_rdma_sge(
        &mut self,
        read: bool,
        mut sge: ib::ibv_sge,
        remote_addr: u64,
        rkey: u32,
        what: &'static str,
    ) -> Result<(), CmError> {
        // SAFETY: all-zero is a valid ibv_send_wr.
        let mut wr: ib::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = RDMA_BIT;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = if read {
            ib::ibv_wr_opcode::IBV_WR_RDMA_READ
        } else {
            ib::ibv_wr_opcode::IBV_WR_RDMA_WRITE
        };
        wr.send_flags = ib::ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr.rdma = ib::rdma_t { remote_addr, rkey };
        let mut bad: *mut ib::ibv_send_wr = ptr::null_mut();
        // SAFETY: live QP; `wr`/`sge` valid for the call; the segment's memory is registered
        // and left alone by the caller until the completion (see the callers).
        let r = unsafe { ib::ibv_post_send((*self.id.as_ptr()).qp, &mut wr, &mut bad) };
        if r != 0 {
            return Err(ret_err(what, r));
        }
        self.rdma_inflight += 1;
        Ok(())
    }

    /// Posts a signalled RDMA READ (`read`) or WRITE of `len` bytes between `offset` of the
    /// shared area (this endpoint was accepted with it) and the peer's `remote_addr` under
    /// its `rkey`. The caller owns that range of the area until the completion.
    pub fn post_rdma_area(
        &mut self,
        read: bool,
        offset: u64,
        len: u32,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), CmError> {
        let PdRef::Shared(da) = &self._pd else {
            return Err(CmError::Config("endpoint has no shared area"));
        };
        if da.area.check(offset, u64::from(len)).is_err() {
            return Err(CmError::Config("RDMA segment outside the shared area"));
        }
        if self.rdma_inflight >= MAX_RDMA_WR {
            return Err(CmError::Config("too many RDMA operations in flight"));
        }
        let sge = ib::ibv_sge {
            addr: da.area.as_ptr() as u64 + offset,
            length: len,
            lkey: da.lkey(),
        };
        // The segment is inside the registered area (checked), which outlives the QP (the
        // `Arc` in `_pd` drops after it).
        self.post_rdma_sge(read, sge, remote_addr, rkey, "ibv_post_send (RDMA, area)")
    }

    /// Appends the completions available now to `out`.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), CmError> {
        loop {
            // SAFETY: all-zero is a valid ibv_wc.
            let mut wcs: [ib::ibv_wc; 16] = unsafe { std::mem::zeroed() };
            // SAFETY: live CQ; `wcs` has room for 16 entries.
            let n = unsafe { ib::ibv_poll_cq(self.cq.0.as_ptr(), 16, wcs.as_mut_ptr()) };
            let n = usize::try_from(n).map_err(|_| ret_err("ibv_poll_cq", n))?;
            for wc in &wcs[..n] {
                let is_send = wc.wr_id & (SEND_BIT | RDMA_BIT) != 0;
                let slot = (wc.wr_id & 0xffff) as usize;
                if wc.wr_id & RDMA_BIT != 0 {
                    self.rdma_inflight = self.rdma_inflight.saturating_sub(1);
                } else if is_send {
                    if let Some(b) = self.send_busy.get_mut(slot) {
                        *b = false;
                    }
                } else if let Some(s) = self.recv.get_mut(slot) {
                    // Flushed or not, the HCA is done with the slot.
                    *s = if wc.status == ib::ibv_wc_status::IBV_WC_SUCCESS {
                        RecvSlot::Filled(wc.byte_len)
                    } else {
                        RecvSlot::Free
                    };
                }
                out.push(if wc.status != ib::ibv_wc_status::IBV_WC_SUCCESS {
                    Completion::Failed {
                        status: wc.status,
                        recv: !is_send,
                    }
                } else if wc.wr_id & RDMA_BIT != 0 {
                    Completion::Rdma
                } else if is_send {
                    Completion::Send
                } else {
                    Completion::Recv {
                        slot: slot as u16,
                        len: wc.byte_len,
                    }
                });
            }
            if n < wcs.len() {
                return Ok(());
            }
        }
    }

    /// Arms the CQ: the next completion makes [`Self::completion_fd`] readable. Poll again after
    /// arming, since a completion may have arrived in between.
    pub fn arm(&mut self) -> Result<(), CmError> {
        // SAFETY: live CQ created with a completion channel.
        let r = unsafe { ib::ibv_req_notify_cq(self.cq.0.as_ptr(), 0) };
        if r != 0 {
            return Err(ret_err("ibv_req_notify_cq", r));
        }
        Ok(())
    }

    /// Reads and acknowledges pending CQ events so the completion fd stops being readable.
    pub fn drain_events(&mut self) {
        loop {
            let mut cq: *mut ib::ibv_cq = ptr::null_mut();
            let mut ctx: *mut libc::c_void = ptr::null_mut();
            // SAFETY: live channel (non-blocking fd) and valid out-pointers.
            let r = unsafe { ib::ibv_get_cq_event(self.comp.0.as_ptr(), &mut cq, &mut ctx) };
            if r != 0 || cq.is_null() {
                return;
            }
            // SAFETY: `cq` was just returned, so it is our live CQ with one unacked event.
            unsafe { ib::ibv_ack_cq_events(cq, 1) };
        }
    }

    /// The next rdma_cm event of this connection (DISCONNECTED, ...), without blocking.
    pub fn cm_event(&self) -> Result<Option<CmEvent>, CmError> {
        Ok(self.id.try_event()?.map(|(e, _)| e))
    }

    /// Starts an orderly disconnect (idempotent); the QP moves to error and flushes.
    pub fn disconnect(&mut self) {
        if self.disconnected {
            return;
        }
        self.disconnected = true;
        // SAFETY: live, connected id.
        let r = unsafe { ib::rdma_disconnect(self.id.as_ptr()) };
        if r != 0 {
            debug!(error = %io::Error::last_os_error(), "smbdirect: rdma_disconnect");
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.disconnect();
        self.drain_events();
        // The fields then drop in declaration order: QP, MR (and buffer), CQ, completion
        // channel, PD, cm_id, event channel.
    }
}
