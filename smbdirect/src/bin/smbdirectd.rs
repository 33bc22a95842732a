//! smbdirectd: the SMB Direct (MS-SMBD) proxy daemon.
//!
//!   smbdirectd [--listen ADDR:PORT ...] [--forward-unix PATH] [--max-connections N]
//!              [--receive-credits N] [--send-slots N] [--max-read-write-size BYTES]
//!
//! Listens with rdma_cm (default 0.0.0.0:445, the InfiniBand/RoCE port, and 0.0.0.0:5445, the
//! iWARP one; an unspecified address listens on every RDMA device), gives each client one RC
//! queue pair with a posted receive ring, runs the SMB Direct protocol core (server role) on
//! its completions, and forwards every reassembled SMB2 message to smbd as a NetBIOS-framed
//! stream (the framing smbd takes on port 445) over smbd's private unix socket (`[server]
//! rdma_proxy_socket`, default `/run/clustersmb/smbdirect.sock`; smbd accepts only root and
//! configured uids there, checked with SO_PEERCRED, because it trusts what this daemon says
//! about its clients' transport), one socket connection per client connection, sending
//! smbd's responses back under the SMB Direct credits. One thread per connection; connections beyond
//! `--max-connections` are rejected before any memory is registered for them.
//!
//! READ and WRITE with RDMA channels (SMB2_CHANNEL_RDMA_V1 / _V1_INVALIDATE): the daemon
//! RDMA-READs a WRITE's buffers and hands smbd the data in a payload frame before the
//! unchanged request; smbd answers an RDMA READ with a payload frame and a response with
//! DataLength 0, and the daemon RDMA-WRITEs the payload into the client's buffers before
//! sending the response (SEND_WITH_INVALIDATE for _V1_INVALIDATE). The protocol logic and
//! why nothing is rewritten (signatures) are in `smbdirect::rw`.
//!
//! The payloads live in one memory area shared with smbd (`--area-size`, default 64 MiB;
//! `smbdirect::area`): a sealed memfd registered once per device's protection domain and
//! passed to smbd with the hello of every stream (SCM_RIGHTS), cut into slots of the largest
//! transfer. A WRITE's data is RDMA-READ into a slot and smbd is told where (area frame
//! `Write`; smbd writes the file from it and then answers `Release`); a READ gets a slot granted
//! ahead of its request (`Grant`), smbd reads the file into it and answers `Read` with the
//! length, and the data is RDMA-WRITTEN to the client from there. Slots are freed only by smbd's `Read` /
//! `Release` or, for a connection that ended, once smbd closed its end of the stream. When no
//! slot is free (or `--area-size 0`), the bytes travel inline in payload frames, through one
//! per-connection registered buffer. Each connection logs its counters when it ends:
//! `rdma_read_bytes=`, `rdma_write_bytes=`, `area_payload_bytes=` and `socket_payload_bytes=`
//! (payload bytes that crossed the stream to smbd: 0 while the area has room).
//!
//! Threads: one per connection, at most `--max-connections` (a request beyond it is rejected
//! before anything is registered for it). An RDMA transfer blocks only its own connection's
//! thread, for one request's data (at most MaxReadWriteSize, given up after 10 s as a dead
//! connection). Meanwhile that connection's next messages wait in its receive ring (under the
//! credits it was granted) and smbd's answers in the socket: one transfer at a time per
//! connection, which caps a single client's throughput (measured under soft-RoCE only) but
//! never stalls another connection, each having its own thread, queue pair and CQ.
//!
//! Prints `smbdirectd listening on ADDR` for each listener once it is ready.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use smb_proto::area_frame::{self, AreaFrame, Op};
use smbdirect::area::{self, Area, Slots};
use smbdirect::cm::{self, AreaRegistry, ConnectRequest, Listener};
use smbdirect::rdma::{endpoint_config, RdmaConnection};
use smbdirect::rw::{self, Limits, Transfers};
use smbdirect::{Config, Output, Role};
use tracing::{debug, error, info, warn};

/// How long an accepted connection may take to become established.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on connecting to smbd and on each write to it.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Opts {
    listen: Vec<SocketAddr>,
    forward: PathBuf,
    max_connections: usize,
    receive_credits: u16,
    send_slots: u16,
    max_read_write_size: u32,
    area_size: u64,
}

fn usage() -> &'static str {
    "usage: smbdirectd [--listen ADDR:PORT ...] [--forward-unix PATH] [--max-connections N] \
     [--receive-credits N] [--send-slots N] [--max-read-write-size BYTES] [--area-size BYTES]"
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Opts, String> {
    let mut o = Opts {
        listen: Vec::new(),
        forward: PathBuf::from(DEFAULT_FORWARD),
        max_connections: 64,
        receive_credits: 32,
        send_slots: 16,
        max_read_write_size: Config::default().max_read_write_size,
        area_size: DEFAULT_AREA,
    };
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => o
                .listen
                .push(val()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--forward-unix" => o.forward = PathBuf::from(val()?),
            "--max-connections" => {
                o.max_connections = val()?
                    .parse()
                    .map_err(|e| format!("--max-connections: {e}"))?
            }
            "--receive-credits" => {
                o.receive_credits = val()?
                    .parse()
                    .map_err(|e| format!("--receive-credits: {e}"))?
            }
            "--max-read-write-size" => {
                o.max_read_write_size = val()?
                    .parse()
                    .map_err(|e| format!("--max-read-write-size: {e}"))?
            }
            "--area-size" => {
                o.area_size = val()?.parse().map_err(|e| format!("--area-size: {e}"))?
            }
            "--send-slots" => {
                o.send_slots = val()?.parse().map_err(|e| format!("--send-slots: {e}"))?
            }
            "-h" | "--help" => return Err(usage().into()),
            _ => return Err(format!("unknown argument {a}\n{}", usage())),
        }
    }
    if o.listen.is_empty() {
        o.listen = vec![
            SocketAddr::from(([0, 0, 0, 0], 445)),
            SocketAddr::from(([0, 0, 0, 0], 5445)),
        ];
    }
    if o.max_connections == 0 || o.send_slots == 0 {
        return Err("--max-connections and --send-slots must be at least 1".into());
    }
    if o.max_read_write_size == 0 || o.max_read_write_size > MAX_READ_WRITE_SIZE {
        return Err(format!(
            "--max-read-write-size must be 1 to {MAX_READ_WRITE_SIZE} (each connection \
             registers a buffer this large)"
        ));
    }
    if o.area_size != 0 && (o.area_size < slot_size(&o) || o.area_size > MAX_AREA) {
        return Err(format!(
            "--area-size must be 0 (no shared area) or {} (one slot of MaxReadWriteSize) to \
             {MAX_AREA}",
            slot_size(&o)
        ));
    }
    Ok(o)
}

/// Default `--area-size`: 64 slots of the default 1 MiB MaxReadWriteSize.
const DEFAULT_AREA: u64 = 64 << 20;
/// Largest `--area-size` (smbd maps at most this much, `smbd::rdma_area::MAX_AREA`).
const MAX_AREA: u64 = 4 << 30;
/// Slots of the area one connection holds at once (smbd holds at most 8 WRITE payloads and
/// 16 ranges per connection).
const SLOTS_PER_CONNECTION: usize = 8;

/// One slot: MaxReadWriteSize rounded up to whole pages.
fn slot_size(o: &Opts) -> u64 {
    u64::from(o.max_read_write_size).next_multiple_of(4096)
}

/// What every connection thread shares: the area, its registrations and its slots.
struct Shared {
    registry: Option<AreaRegistry>,
    slots: Mutex<Slots>,
    next_conn: AtomicU64,
}

impl Shared {
    fn new(o: &Opts) -> Result<Shared, String> {
        let (registry, slots) = if o.area_size == 0 {
            (None, Slots::new(1, 1, 1).map_err(|e| e.to_string())?)
        } else {
            let len = usize::try_from(o.area_size).map_err(|e| e.to_string())?;
            let a = Area::create(len).map_err(|e| e.to_string())?;
            let slots = Slots::new(o.area_size, slot_size(o), SLOTS_PER_CONNECTION)
                .map_err(|e| e.to_string())?;
            (Some(AreaRegistry::new(Arc::new(a))), slots)
        };
        Ok(Shared {
            registry,
            slots: Mutex::new(slots),
            next_conn: AtomicU64::new(1),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn area(&self) -> Option<&Arc<Area>> {
        self.registry.as_ref().map(|r| r.area())
    }
}

/// One connection's use of the area: the slots smbd has (by offset: the MessageId) and the
/// payload byte counters.
#[derive(Default)]
struct Lease {
    conn: u64,
    held: HashMap<u64, u64>,
    area_bytes: u64,
    socket_bytes: u64,
}

impl Lease {
    /// A slot for `message_id`, if the area has one free for this connection.
    fn take(&mut self, sh: &Shared, message_id: u64) -> Option<u64> {
        sh.area()?;
        let off = sh.slots().alloc(self.conn)?;
        self.held.insert(off, message_id);
        Some(off)
    }

    /// smbd gives back the slot at `offset` for `message_id`: checked, then freed.
    fn give_back(&mut self, sh: &Shared, message_id: u64, offset: u64) -> Result<(), String> {
        if self.held.get(&offset) != Some(&message_id) {
            return Err(format!(
                "smbd returned area offset {offset} for MessageId {message_id}, which does not hold it"
            ));
        }
        self.held.remove(&offset);
        sh.slots().free(self.conn, offset);
        Ok(())
    }
}

/// Bound on `--max-read-write-size`: the registered buffer of every connection doing RDMA
/// READ/WRITE channels is this large.
const MAX_READ_WRITE_SIZE: u32 = 16 << 20;

fn core_config(o: &Opts) -> Config {
    Config {
        receive_credit_max: o.receive_credits,
        max_read_write_size: o.max_read_write_size,
        ..Config::default()
    }
}

/// Counts a connection thread for the cap until it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// smbd's `rdma_proxy_socket` unless `--forward-unix` names another.
const DEFAULT_FORWARD: &str = "/run/clustersmb/smbdirect.sock";

/// The stream to smbd (its unix socket), NetBIOS session framing (a zero byte and a 24-bit
/// length) and payload frames.
struct Upstream {
    sock: UnixStream,
    inbuf: Vec<u8>,
    max_frame: usize,
    /// Largest payload frame body smbd may send (MessageId and the negotiated
    /// MaxReadWriteSize).
    max_payload: usize,
}

/// What smbd sends on the stream.
#[derive(Debug, PartialEq, Eq)]
enum FromSmbd {
    /// An SMB2 message for the client.
    Message(Vec<u8>),
    /// A payload frame's body: MessageId and the data of an RDMA-channel READ.
    Payload(Vec<u8>),
    /// An area frame's body (`Read` or `Release` of a slot).
    Area(Vec<u8>),
}

impl Upstream {
    /// Connects and opens the stream with the hello smbd expects first
    /// (`smb_proto::area_frame`).
    fn connect(
        path: &std::path::Path,
        max_frame: usize,
        area: Option<&Area>,
    ) -> std::io::Result<Upstream> {
        let u = Self::over(UnixStream::connect(path)?, max_frame)?;
        area::send_with_fd(
            u.sock.as_fd(),
            &AreaFrame::hello().encode(),
            area.map(|a| a.as_fd()),
        )?;
        Ok(u)
    }

    fn over(sock: UnixStream, max_frame: usize) -> std::io::Result<Upstream> {
        sock.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
        Ok(Upstream {
            sock,
            inbuf: Vec::new(),
            max_frame,
            max_payload: 0,
        })
    }

    fn write_raw(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.sock.write_all(frame)
    }

    fn write_frame(&mut self, msg: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(msg.len())
            .ok()
            .filter(|&l| l < 1 << 24)
            .ok_or_else(|| std::io::Error::other("SMB2 message too long for NetBIOS framing"))?;
        let mut frame = Vec::with_capacity(4 + msg.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(msg);
        self.sock.write_all(&frame)
    }

    /// Reads what smbd sent (the socket is readable, so this does not block) and returns the
    /// complete messages; `Ok(None)` when smbd closed the connection.
    fn read_frames(&mut self) -> std::io::Result<Option<Vec<FromSmbd>>> {
        let mut buf = [0u8; 65536];
        let n = match self.sock.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        self.inbuf.extend_from_slice(&buf[..n]);
        let mut out = Vec::new();
        while self.inbuf.len() >= 4 {
            let kind = self.inbuf[0];
            let max = match kind {
                0 => self.max_frame,
                rw::PAYLOAD_FRAME_KIND => self.max_payload,
                area_frame::KIND => area_frame::BODY_LEN,
                _ => {
                    return Err(std::io::Error::other(
                        "smbd sent a non-session NetBIOS frame",
                    ))
                }
            };
            let len = usize::from(self.inbuf[1]) << 16
                | usize::from(self.inbuf[2]) << 8
                | usize::from(self.inbuf[3]);
            if len > max {
                return Err(std::io::Error::other(format!(
                    "smbd frame of {len} bytes exceeds the client's MaxFragmentedSize or \
                     MaxReadWriteSize"
                )));
            }
            if self.inbuf.len() < 4 + len {
                break;
            }
            let body = self.inbuf[4..4 + len].to_vec();
            out.push(match kind {
                0 => FromSmbd::Message(body),
                area_frame::KIND => FromSmbd::Area(body),
                _ => FromSmbd::Payload(body),
            });
            self.inbuf.drain(..4 + len);
        }
        Ok(Some(out))
    }
}

/// Runs one client connection to its end.
fn serve(req: ConnectRequest, o: &Opts, sh: &Shared) -> Result<(), String> {
    let core = core_config(o);
    let ep = req
        .accept_with_area(
            &endpoint_config(&core, o.send_slots),
            ACCEPT_TIMEOUT,
            sh.registry.as_ref(),
        )
        .map_err(|e| format!("accept: {e}"))?;
    let mut c = RdmaConnection::new(ep, Role::Server, core).map_err(|e| e.to_string())?;
    let mut up: Option<Upstream> = None;
    let mut transfers = Transfers::default();
    let mut lease = Lease {
        conn: sh.next_conn.fetch_add(1, Ordering::Relaxed),
        ..Lease::default()
    };
    let result = run(&mut c, &mut up, &mut transfers, &mut lease, o, sh);
    release_lease(&mut lease, up.take(), sh);
    info!(
        rdma_read_bytes = transfers.rdma_read_bytes,
        rdma_write_bytes = transfers.rdma_write_bytes,
        area_payload_bytes = lease.area_bytes,
        socket_payload_bytes = lease.socket_bytes,
        "smbdirect: connection ended"
    );
    // The counters on stdout too, one line per connection, for tests that check the RDMA
    // channels and the shared area were used (a closed stdout is fine).
    let st = c.connection().stats();
    let _ = writeln!(
        std::io::stdout().lock(),
        "smbdirectd connection ended: rdma_read_bytes={} rdma_write_bytes={} \
         area_payload_bytes={} socket_payload_bytes={} \
         smb2_received={} smb2_sent={} messages_sent={} empty_sent={}",
        transfers.rdma_read_bytes,
        transfers.rdma_write_bytes,
        lease.area_bytes,
        lease.socket_bytes,
        st.upper_messages_received,
        st.upper_messages_sent,
        st.messages_sent,
        st.empty_sent
    );
    result
}

/// How long an ended connection waits for smbd to close its end of the stream before its
/// slots are reused anyway (smbd's ledger refuses a slot another connection still holds, so a
/// late reuse fails that request instead of mixing data).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Frees the slots of an ended connection once smbd is done with them: it closes its end of
/// the stream after its connection (and its holds) went.
fn release_lease(lease: &mut Lease, up: Option<Upstream>, sh: &Shared) {
    if lease.held.is_empty() {
        return;
    }
    if let Some(u) = up {
        let _ = u.sock.shutdown(std::net::Shutdown::Write);
        let _ = u.sock.set_read_timeout(Some(DRAIN_TIMEOUT));
        let mut buf = [0u8; 4096];
        loop {
            match (&u.sock).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "smbdirect: smbd did not close the stream; freeing its slots anyway");
                    break;
                }
            }
        }
    }
    let n = sh.slots().free_conn(lease.conn);
    lease.held.clear();
    debug!(
        slots = n,
        "smbdirect: area slots of an ended connection freed"
    );
}

/// Pulls a WRITE's data from the client into a slot of the shared area and tells smbd where
/// it is, or (no slot free) hands smbd the data in a payload frame.
fn pull_write(
    c: &mut RdmaConnection,
    u: &mut Upstream,
    t: &mut Transfers,
    lease: &mut Lease,
    sh: &Shared,
    p: &rw::WritePull,
) -> Result<(), String> {
    let segs = rw::plan(&p.descriptors, p.length);
    if let Some(off) = lease.take(sh, p.message_id) {
        c.rdma_transfer_area(true, &segs, off)
            .map_err(|e| format!("RDMA READ of a WRITE's data into the area: {e}"))?;
        let f = AreaFrame {
            op: Op::Write,
            message_id: p.message_id,
            offset: off,
            length: p.length,
        };
        u.write_raw(&f.encode())
            .map_err(|e| format!("writing to smbd: {e}"))?;
        lease.area_bytes += u64::from(p.length);
    } else {
        let buf_len = t.limits().max_total as usize;
        c.rdma_transfer(true, &segs, buf_len)
            .map_err(|e| format!("RDMA READ of a WRITE's data: {e}"))?;
        let data = c
            .rdma_data(p.length as usize)
            .ok_or("RDMA buffer unavailable after the READ")?;
        let frame = rw::encode_payload_frame(p.message_id, data).map_err(|e| e.to_string())?;
        u.write_raw(&frame)
            .map_err(|e| format!("writing to smbd: {e}"))?;
        lease.socket_bytes += u64::from(p.length);
    }
    t.rdma_read_bytes += u64::from(p.length);
    debug!(
        message_id = p.message_id,
        len = p.length,
        "smbdirect: WRITE data pulled by RDMA READ"
    );
    Ok(())
}

/// Grants an RDMA-channel READ a slot of the area before its request goes to smbd (none
/// free: smbd answers with a payload frame).
fn grant_read(
    u: &mut Upstream,
    lease: &mut Lease,
    sh: &Shared,
    message_id: u64,
) -> Result<(), String> {
    let Some(off) = lease.take(sh, message_id) else {
        return Ok(());
    };
    let cap = u32::try_from(sh.slots().slot_size()).unwrap_or(u32::MAX);
    let f = AreaFrame {
        op: Op::Grant,
        message_id,
        offset: off,
        length: cap,
    };
    u.write_raw(&f.encode())
        .map_err(|e| format!("writing to smbd: {e}"))
}

/// Puts an RDMA-channel READ's data from smbd into the client's buffers.
fn push_read(
    c: &mut RdmaConnection,
    t: &mut Transfers,
    lease: &mut Lease,
    body: &[u8],
) -> Result<(), String> {
    let (id, data) = rw::decode_payload_body(body).map_err(|e| e.to_string())?;
    let segs = t.on_payload(id, data.len()).map_err(|e| e.to_string())?;
    let buf_len = t.limits().max_total as usize;
    c.fill_rdma_buffer(data, buf_len)
        .map_err(|e| e.to_string())?;
    c.rdma_transfer(false, &segs, buf_len)
        .map_err(|e| format!("RDMA WRITE of a READ's data: {e}"))?;
    t.rdma_write_bytes += data.len() as u64;
    lease.socket_bytes += data.len() as u64;
    debug!(
        message_id = id,
        len = data.len(),
        "smbdirect: READ data pushed by RDMA WRITE"
    );
    Ok(())
}

/// An area frame from smbd: a READ's data in its slot (RDMA-WRITTEN to the client, then the
/// slot is free), or a slot smbd is done with.
fn on_area_frame(
    c: &mut RdmaConnection,
    t: &mut Transfers,
    lease: &mut Lease,
    sh: &Shared,
    body: &[u8],
) -> Result<(), String> {
    let f = AreaFrame::decode_body(body).map_err(|e| e.to_string())?;
    match f.op {
        Op::Read => {
            if lease.held.get(&f.offset) != Some(&f.message_id)
                || u64::from(f.length) > sh.slots().slot_size()
            {
                return Err(format!("smbd named a slot it was not granted: {f:?}"));
            }
            let segs = t
                .on_payload(f.message_id, f.length as usize)
                .map_err(|e| e.to_string())?;
            c.rdma_transfer_area(false, &segs, f.offset)
                .map_err(|e| format!("RDMA WRITE of a READ's data from the area: {e}"))?;
            lease.give_back(sh, f.message_id, f.offset)?;
            t.rdma_write_bytes += u64::from(f.length);
            lease.area_bytes += u64::from(f.length);
            debug!(
                message_id = f.message_id,
                len = f.length,
                "smbdirect: READ data pushed by RDMA WRITE from the area"
            );
            Ok(())
        }
        Op::Release => lease.give_back(sh, f.message_id, f.offset),
        Op::Hello | Op::Write | Op::Grant => Err(format!("unexpected area frame from smbd: {f:?}")),
    }
}

fn run(
    c: &mut RdmaConnection,
    up: &mut Option<Upstream>,
    transfers: &mut Transfers,
    lease: &mut Lease,
    o: &Opts,
    sh: &Shared,
) -> Result<(), String> {
    loop {
        for out in c.progress().map_err(|e| e.to_string())? {
            match out {
                Output::Connected(n) => {
                    info!(?n, "smbdirect: negotiated; connecting to smbd");
                    *transfers = Transfers::new(Limits {
                        max_total: n.max_read_write_size,
                        ..Limits::default()
                    });
                    match Upstream::connect(
                        &o.forward,
                        n.peer_max_fragmented_size as usize,
                        sh.area().map(|a| a.as_ref()),
                    ) {
                        Ok(mut u) => {
                            u.max_payload = 8 + n.max_read_write_size as usize;
                            *up = Some(u)
                        }
                        Err(e) => {
                            c.close();
                            return Err(format!(
                                "connecting to smbd at {}: {e}",
                                o.forward.display()
                            ));
                        }
                    }
                }
                Output::Message(m) => {
                    let Some(u) = up.as_mut() else {
                        c.close();
                        return Err("SMB2 message before negotiation finished".into());
                    };
                    debug!(len = m.len(), "smbdirect: client -> smbd");
                    let (pulls, reads) = match transfers.on_request_with_reads(&m) {
                        Ok(p) => p,
                        Err(e) => {
                            c.close();
                            return Err(format!("refused RDMA channel request: {e}"));
                        }
                    };
                    for p in &pulls {
                        if let Err(e) = pull_write(c, u, transfers, lease, sh, p) {
                            c.close();
                            return Err(e);
                        }
                    }
                    for (id, _) in &reads {
                        if let Err(e) = grant_read(u, lease, sh, *id) {
                            c.close();
                            return Err(e);
                        }
                    }
                    if let Err(e) = u.write_frame(&m) {
                        c.close();
                        return Err(format!("writing to smbd: {e}"));
                    }
                }
                Output::Closed(e) => {
                    info!(reason = %e, stats = ?c.connection().stats(), "smbdirect: connection closed");
                    return Ok(());
                }
            }
        }
        let fds: Vec<_> = up.iter().map(|u| u.sock.as_raw_fd()).collect();
        let ready = c
            .wait(&fds, Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
        if ready.first().copied().unwrap_or(false) {
            if let Some(u) = up.as_mut() {
                match u.read_frames() {
                    Ok(Some(frames)) => {
                        for f in frames {
                            match f {
                                FromSmbd::Message(f) => {
                                    debug!(len = f.len(), "smbdirect: smbd -> client");
                                    let sent = match transfers.on_response(&f) {
                                        Some(token) => c.send_with_invalidate(f, token),
                                        None => c.send(f),
                                    };
                                    if let Err(e) = sent {
                                        warn!(error = %e, "smbdirect: cannot send smbd's response; closing");
                                        c.close();
                                    }
                                }
                                FromSmbd::Payload(body) => {
                                    if let Err(e) = push_read(c, transfers, lease, &body) {
                                        c.close();
                                        return Err(e);
                                    }
                                }
                                FromSmbd::Area(body) => {
                                    if let Err(e) = on_area_frame(c, transfers, lease, sh, &body) {
                                        c.close();
                                        return Err(e);
                                    }
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        info!("smbdirect: smbd closed the connection");
                        c.close();
                        *up = None;
                        // smbd's end is gone with its holds: the slots are free.
                        sh.slots().free_conn(lease.conn);
                        lease.held.clear();
                    }
                    Err(e) => {
                        warn!(error = %e, "smbdirect: reading from smbd; closing");
                        c.close();
                        *up = None;
                    }
                }
            }
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SMBDIRECTD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("smbdirectd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = core_config(&o).validate() {
        eprintln!("smbdirectd: {e}");
        return ExitCode::from(2);
    }
    let mut listeners = Vec::new();
    for a in &o.listen {
        match Listener::bind(*a, 64) {
            Ok(l) => {
                println!("smbdirectd listening on {a}");
                listeners.push(l);
            }
            Err(e) => error!(addr = %a, error = %e, "cannot listen"),
        }
    }
    if listeners.is_empty() {
        eprintln!("smbdirectd: no listener could be started (is there an RDMA device?)");
        return ExitCode::FAILURE;
    }
    let _ = std::io::stdout().flush();
    let shared = match Shared::new(&o) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("smbdirectd: shared area: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        forward = %o.forward.display(),
        max_connections = o.max_connections,
        area_bytes = o.area_size,
        area_slots = shared.slots().total(),
        "smbdirectd ready"
    );
    let active = Arc::new(AtomicUsize::new(0));
    let fds: Vec<_> = listeners.iter().map(|l| l.fd()).collect();
    let o = Arc::new(o);
    loop {
        if let Err(e) = cm::wait_readable(&fds, Duration::from_secs(1)) {
            error!(error = %e, "poll");
            return ExitCode::FAILURE;
        }
        for l in &listeners {
            loop {
                let req = match l.next_request() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "connection request failed");
                        break;
                    }
                };
                if active.load(Ordering::SeqCst) >= o.max_connections {
                    warn!(max = o.max_connections, "connection cap reached; rejecting");
                    req.reject();
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let slot = Slot(active.clone());
                let o = o.clone();
                let sh = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("smbdirect-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(e) = serve(req, &o, &sh) {
                            warn!(error = %e, "connection ended");
                        }
                    });
                if let Err(e) = spawned {
                    // The closure (request and slot) was dropped: the request is refused.
                    error!(error = %e, "cannot start a connection thread");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Result<Opts, String> {
        parse_args(s.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_listen_on_both_smb_direct_ports() {
        let o = args(&[]).unwrap();
        let ports: Vec<u16> = o.listen.iter().map(|a| a.port()).collect();
        assert_eq!(ports, vec![445, 5445]);
        assert_eq!(o.forward, PathBuf::from("/run/clustersmb/smbdirect.sock"));
    }

    #[test]
    fn explicit_options_and_errors() {
        let o = args(&[
            "--listen",
            "10.0.0.1:5445",
            "--forward-unix",
            "/tmp/s.sock",
            "--max-connections",
            "2",
        ])
        .unwrap();
        assert_eq!(o.listen, vec!["10.0.0.1:5445".parse().unwrap()]);
        assert_eq!(o.forward, PathBuf::from("/tmp/s.sock"));
        assert!(
            args(&["--forward", "127.0.0.1:445"]).is_err(),
            "no TCP forwarding"
        );
        assert_eq!(o.max_connections, 2);
        assert!(args(&["--max-connections", "0"]).is_err());
        assert_eq!(
            args(&["--max-read-write-size", "1044480"])
                .unwrap()
                .max_read_write_size,
            1044480
        );
        assert!(args(&["--max-read-write-size", "0"]).is_err());
        assert!(args(&["--max-read-write-size", "16777217"]).is_err());
        assert!(args(&["--listen"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }

    /// An upstream over a socket pair, and smbd's end of it.
    fn upstream_pair(max_frame: usize) -> (Upstream, UnixStream) {
        let (a, smbd) = UnixStream::pair().unwrap();
        (Upstream::over(a, max_frame).unwrap(), smbd)
    }

    /// Reads until `n` frames (or an error or EOF) arrived; blocking reads, no timing.
    fn frames_of(up: &mut Upstream, n: usize) -> std::io::Result<Option<Vec<FromSmbd>>> {
        let mut got = Vec::new();
        while got.len() < n {
            match up.read_frames()? {
                Some(f) => got.extend(f),
                None => return Ok(None),
            }
        }
        Ok(Some(got))
    }

    /// The SMB2 messages of [`frames_of`] (a payload frame fails the test).
    fn frames(up: &mut Upstream, n: usize) -> std::io::Result<Option<Vec<Vec<u8>>>> {
        Ok(frames_of(up, n)?.map(|v| {
            v.into_iter()
                .map(|f| match f {
                    FromSmbd::Message(m) => m,
                    other => panic!("unexpected frame {other:?}"),
                })
                .collect()
        }))
    }

    #[test]
    fn upstream_takes_payload_frames_within_max_read_write_size() {
        let (mut up, mut smbd) = upstream_pair(1024);
        up.max_payload = 8 + 4;
        let f = rw::encode_payload_frame(7, b"data").unwrap();
        smbd.write_all(&f).unwrap();
        smbd.write_all(b"\0\0\0\x01a").unwrap();
        let got = frames_of(&mut up, 2).unwrap().unwrap();
        assert_eq!(got[0], FromSmbd::Payload(f[4..].to_vec()));
        assert_eq!(got[1], FromSmbd::Message(b"a".to_vec()));
        smbd.write_all(&rw::encode_payload_frame(7, b"data!").unwrap())
            .unwrap();
        assert!(
            frames_of(&mut up, 1).is_err(),
            "larger than MaxReadWriteSize"
        );
    }

    #[test]
    fn upstream_takes_area_frames_of_their_size_only() {
        let (mut up, mut smbd) = upstream_pair(1024);
        let f = AreaFrame {
            op: Op::Read,
            message_id: 3,
            offset: 4096,
            length: 10,
        };
        smbd.write_all(&f.encode()).unwrap();
        let got = frames_of(&mut up, 1).unwrap().unwrap();
        assert_eq!(got[0], FromSmbd::Area(f.encode()[4..].to_vec()));
        smbd.write_all(&[area_frame::KIND, 0, 0, 25]).unwrap();
        assert!(frames_of(&mut up, 1).is_err(), "longer than an area frame");
    }

    #[test]
    fn slots_come_back_only_from_the_message_they_were_given_for() {
        let o = args(&["--area-size", "4194304", "--max-read-write-size", "1048576"]).unwrap();
        let sh = Shared::new(&o).unwrap();
        assert_eq!(sh.slots().total(), 4);
        let mut a = Lease {
            conn: 1,
            ..Lease::default()
        };
        let mut b = Lease {
            conn: 2,
            ..Lease::default()
        };
        let off = a.take(&sh, 10).unwrap();
        assert!(a.give_back(&sh, 11, off).is_err(), "other MessageId");
        assert!(b.give_back(&sh, 10, off).is_err(), "other connection");
        a.give_back(&sh, 10, off).unwrap();
        assert!(a.give_back(&sh, 10, off).is_err(), "given back once");
        for i in 0..4 {
            assert!(b.take(&sh, i).is_some());
        }
        assert_eq!(a.take(&sh, 1), None, "area full: inline payloads then");
        release_lease(&mut b, None, &sh);
        assert!(
            a.take(&sh, 1).is_some(),
            "an ended connection's slots are free"
        );
        assert!(
            args(&["--area-size", "4096"]).is_err(),
            "smaller than a slot"
        );
        let none = Shared::new(&args(&["--area-size", "0"]).unwrap()).unwrap();
        assert_eq!(a.take(&none, 1), None, "no area");
    }

    #[test]
    fn upstream_frames_both_ways() {
        let (mut up, mut smbd) = upstream_pair(1024);
        up.write_frame(b"hello").unwrap();
        let mut buf = [0u8; 9];
        smbd.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"\0\0\0\x05hello");
        // Two responses and the start of a third in one write, the rest later.
        smbd.write_all(b"\0\0\0\x01a\0\0\0\x02bc\0\0").unwrap();
        assert_eq!(
            frames(&mut up, 2).unwrap(),
            Some(vec![b"a".to_vec(), b"bc".to_vec()])
        );
        smbd.write_all(b"\0\x03xyz").unwrap();
        assert_eq!(frames(&mut up, 1).unwrap(), Some(vec![b"xyz".to_vec()]));
        drop(smbd);
        assert_eq!(frames(&mut up, 1).unwrap(), None);
    }

    #[test]
    fn upstream_refuses_oversized_and_non_session_frames() {
        let (mut up, mut smbd) = upstream_pair(4);
        smbd.write_all(b"\0\0\0\x05hello").unwrap();
        assert!(frames(&mut up, 1).is_err());
        let (mut up, mut smbd) = upstream_pair(1024);
        smbd.write_all(b"\x85\0\0\0").unwrap();
        assert!(frames(&mut up, 1).is_err());
    }

    #[test]
    fn receive_credits_too_small_is_refused_by_the_core() {
        let o = args(&["--receive-credits", "2"]).unwrap();
        assert!(core_config(&o).validate().is_err());
    }
}
