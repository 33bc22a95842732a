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
//! why nothing is rewritten (signatures) are in `smbdirect::rw`. The data goes through one
//! per-connection registered buffer of the negotiated MaxReadWriteSize, registered on the
//! first RDMA-channel request; each connection logs its RDMA READ/WRITE byte counters when it
//! ends (`rdma_read_bytes=`, `rdma_write_bytes=`).
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

use smbdirect::cm::{self, ConnectRequest, Listener};
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
}

fn usage() -> &'static str {
    "usage: smbdirectd [--listen ADDR:PORT ...] [--forward-unix PATH] [--max-connections N] \
     [--receive-credits N] [--send-slots N] [--max-read-write-size BYTES]"
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Opts, String> {
    let mut o = Opts {
        listen: Vec::new(),
        forward: PathBuf::from(DEFAULT_FORWARD),
        max_connections: 64,
        receive_credits: 32,
        send_slots: 16,
        max_read_write_size: Config::default().max_read_write_size,
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
    Ok(o)
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
}

impl Upstream {
    /// Connects and opens the stream with the hello smbd expects first
    /// (`smb_proto::area_frame`).
    fn connect(path: &std::path::Path, max_frame: usize) -> std::io::Result<Upstream> {
        let mut u = Self::over(UnixStream::connect(path)?, max_frame)?;
        u.write_raw(&smb_proto::area_frame::AreaFrame::hello().encode())?;
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
            out.push(if kind == 0 {
                FromSmbd::Message(body)
            } else {
                FromSmbd::Payload(body)
            });
            self.inbuf.drain(..4 + len);
        }
        Ok(Some(out))
    }
}

/// Runs one client connection to its end.
fn serve(req: ConnectRequest, o: &Opts) -> Result<(), String> {
    let core = core_config(o);
    let ep = req
        .accept(&endpoint_config(&core, o.send_slots), ACCEPT_TIMEOUT)
        .map_err(|e| format!("accept: {e}"))?;
    let mut c = RdmaConnection::new(ep, Role::Server, core).map_err(|e| e.to_string())?;
    let mut up: Option<Upstream> = None;
    let mut transfers = Transfers::default();
    let result = run(&mut c, &mut up, &mut transfers, o);
    info!(
        rdma_read_bytes = transfers.rdma_read_bytes,
        rdma_write_bytes = transfers.rdma_write_bytes,
        "smbdirect: connection ended"
    );
    // The counters on stdout too, one line per connection, for tests that check the RDMA
    // channels were used (a closed stdout is fine).
    let st = c.connection().stats();
    let _ = writeln!(
        std::io::stdout().lock(),
        "smbdirectd connection ended: rdma_read_bytes={} rdma_write_bytes={} \
         smb2_received={} smb2_sent={} messages_sent={} empty_sent={}",
        transfers.rdma_read_bytes,
        transfers.rdma_write_bytes,
        st.upper_messages_received,
        st.upper_messages_sent,
        st.messages_sent,
        st.empty_sent
    );
    result
}

/// Pulls a WRITE's data from the client and hands it to smbd as a payload frame.
fn pull_write(
    c: &mut RdmaConnection,
    u: &mut Upstream,
    t: &mut Transfers,
    p: &rw::WritePull,
) -> Result<(), String> {
    let segs = rw::plan(&p.descriptors, p.length);
    let buf_len = t.limits().max_total as usize;
    c.rdma_transfer(true, &segs, buf_len)
        .map_err(|e| format!("RDMA READ of a WRITE's data: {e}"))?;
    let data = c
        .rdma_data(p.length as usize)
        .ok_or("RDMA buffer unavailable after the READ")?;
    let frame = rw::encode_payload_frame(p.message_id, data).map_err(|e| e.to_string())?;
    u.write_raw(&frame)
        .map_err(|e| format!("writing to smbd: {e}"))?;
    t.rdma_read_bytes += u64::from(p.length);
    debug!(
        message_id = p.message_id,
        len = p.length,
        "smbdirect: WRITE data pulled by RDMA READ"
    );
    Ok(())
}

/// Puts an RDMA-channel READ's data from smbd into the client's buffers.
fn push_read(c: &mut RdmaConnection, t: &mut Transfers, body: &[u8]) -> Result<(), String> {
    let (id, data) = rw::decode_payload_body(body).map_err(|e| e.to_string())?;
    let segs = t.on_payload(id, data.len()).map_err(|e| e.to_string())?;
    let buf_len = t.limits().max_total as usize;
    c.fill_rdma_buffer(data, buf_len)
        .map_err(|e| e.to_string())?;
    c.rdma_transfer(false, &segs, buf_len)
        .map_err(|e| format!("RDMA WRITE of a READ's data: {e}"))?;
    t.rdma_write_bytes += data.len() as u64;
    debug!(
        message_id = id,
        len = data.len(),
        "smbdirect: READ data pushed by RDMA WRITE"
    );
    Ok(())
}

fn run(
    c: &mut RdmaConnection,
    up: &mut Option<Upstream>,
    transfers: &mut Transfers,
    o: &Opts,
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
                    match Upstream::connect(&o.forward, n.peer_max_fragmented_size as usize) {
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
                    let pulls = match transfers.on_request(&m) {
                        Ok(p) => p,
                        Err(e) => {
                            c.close();
                            return Err(format!("refused RDMA channel request: {e}"));
                        }
                    };
                    for p in &pulls {
                        if let Err(e) = pull_write(c, u, transfers, p) {
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
                                    if let Err(e) = push_read(c, transfers, &body) {
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
    info!(forward = %o.forward.display(), max_connections = o.max_connections, "smbdirectd ready");
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
                let spawned = std::thread::Builder::new()
                    .name("smbdirect-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(e) = serve(req, &o) {
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
                    FromSmbd::Payload(_) => panic!("unexpected payload frame"),
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
