//! SMB Direct through smbdirectd, end to end over real RDMA (soft-RoCE in the suite's guest):
//! smbd runs in this process on a loopback TCP port, smbdirectd (a child process) listens with
//! rdma_cm and forwards to it, and a small initiator built on the smbdirect core (client role)
//! connects, negotiates SMB Direct and exchanges an SMB2 NEGOTIATE with smbd through the proxy.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smbdirect::cm::Endpoint;
use smbdirect::rdma::{endpoint_config, RdmaConnection};
use smbdirect::{Config, Output, Role};

/// Generous: TCG emulation is 10-50x slower than hardware.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The SMB Direct port the test listens on (the iWARP one; the Linux client tries it first).
pub const PORT: u16 = 5445;

const NEGOTIATE: u16 = 0;
const ECHO: u16 = 0x0d;

/// A 64-byte SMB2 request header without session or tree.
fn header(command: u16, message_id: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"\xfeSMB");
    m.extend_from_slice(&64u16.to_le_bytes()); // StructureSize
    m.extend_from_slice(&0u16.to_le_bytes()); // CreditCharge
    m.extend_from_slice(&0u32.to_le_bytes()); // Status
    m.extend_from_slice(&command.to_le_bytes());
    m.extend_from_slice(&1u16.to_le_bytes()); // CreditRequest
    m.extend_from_slice(&0u32.to_le_bytes()); // Flags
    m.extend_from_slice(&0u32.to_le_bytes()); // NextCommand
    m.extend_from_slice(&message_id.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // Reserved (ProcessId)
    m.extend_from_slice(&0u32.to_le_bytes()); // TreeId
    m.extend_from_slice(&0u64.to_le_bytes()); // SessionId
    m.extend_from_slice(&[0; 16]); // Signature
    m
}

/// An SMB2 ECHO request (allowed before a session exists).
pub fn echo_request(message_id: u64) -> Vec<u8> {
    let mut m = header(ECHO, message_id);
    m.extend_from_slice(&4u16.to_le_bytes()); // StructureSize
    m.extend_from_slice(&0u16.to_le_bytes()); // Reserved
    m
}

/// An SMB2 NEGOTIATE request offering 2.0.2 to 3.0.2 (no 3.1.1, which needs negotiate
/// contexts), with signing enabled.
pub fn negotiate_request() -> Vec<u8> {
    let mut m = header(NEGOTIATE, 0);
    let dialects: [u16; 4] = [0x0202, 0x0210, 0x0300, 0x0302];
    m.extend_from_slice(&36u16.to_le_bytes()); // StructureSize
    m.extend_from_slice(&(dialects.len() as u16).to_le_bytes());
    m.extend_from_slice(&1u16.to_le_bytes()); // SecurityMode: signing enabled
    m.extend_from_slice(&0u16.to_le_bytes()); // Reserved
    m.extend_from_slice(&0u32.to_le_bytes()); // Capabilities
    m.extend_from_slice(&[0x5d; 16]); // ClientGuid
    m.extend_from_slice(&0u64.to_le_bytes()); // ClientStartTime
    for d in dialects {
        m.extend_from_slice(&d.to_le_bytes());
    }
    m
}

/// Checks an SMB2 NEGOTIATE response: success, and returns the dialect chosen.
pub fn check_negotiate_response(m: &[u8]) -> Result<u16, String> {
    check_response(m, NEGOTIATE, 65)?;
    m.get(68..70)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| "short NEGOTIATE response".into())
}

/// Checks an SMB2 ECHO response.
pub fn check_echo_response(m: &[u8]) -> Result<(), String> {
    check_response(m, ECHO, 4)
}

/// Checks that `m` is a successful response to `want` whose body has `body_size`.
fn check_response(m: &[u8], want: u16, body_size: u16) -> Result<(), String> {
    let u16_at = |o: usize| m.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        m.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if m.get(..4) != Some(b"\xfeSMB") {
        return Err(format!("not an SMB2 message ({} bytes)", m.len()));
    }
    let status = u32_at(8).ok_or("short header")?;
    let command = u16_at(12).ok_or("short header")?;
    let flags = u32_at(16).ok_or("short header")?;
    if command != want || flags & 1 == 0 {
        return Err(format!(
            "command {command} flags {flags:#x}: not a response to command {want}"
        ));
    }
    if status != 0 {
        return Err(format!("command {want} failed with status {status:#010x}"));
    }
    if u16_at(64) != Some(body_size) {
        return Err(format!("response body StructureSize is not {body_size}"));
    }
    Ok(())
}

/// A connected initiator (client role).
pub struct Initiator {
    conn: RdmaConnection,
}

impl Initiator {
    /// Connects to `addr` and finishes SMB Direct negotiation.
    pub fn connect(addr: SocketAddr) -> Result<Initiator, String> {
        let core = Config {
            receive_credit_max: 16,
            send_credit_target: 16,
            ..Config::default()
        };
        let ep = Endpoint::connect(addr, &endpoint_config(&core, 8), TIMEOUT)
            .map_err(|e| format!("rdma connect to {addr}: {e}"))?;
        let mut conn = RdmaConnection::new(ep, Role::Client, core).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // Negotiation's outcome is the first output; nothing else can precede it.
            match conn
                .progress()
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
            {
                Some(Output::Connected(_)) => return Ok(Initiator { conn }),
                Some(Output::Closed(e)) => return Err(format!("SMB Direct negotiation: {e}")),
                Some(Output::Message(_)) => return Err("message before negotiation".into()),
                None => {}
            }
            if Instant::now() > deadline {
                return Err("SMB Direct negotiation timed out".into());
            }
            conn.wait(&[], Duration::from_millis(200))
                .map_err(|e| e.to_string())?;
        }
    }

    /// Sends one SMB2 message and waits for one back.
    pub fn round_trip(&mut self, msg: Vec<u8>) -> Result<Vec<u8>, String> {
        self.conn.send(msg).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            for o in self.conn.progress().map_err(|e| e.to_string())? {
                match o {
                    Output::Message(m) => return Ok(m),
                    Output::Closed(e) => return Err(format!("connection closed: {e}")),
                    Output::Connected(_) => {}
                }
            }
            if Instant::now() > deadline {
                return Err("no SMB2 response in time".into());
            }
            self.conn
                .wait(&[], Duration::from_millis(200))
                .map_err(|e| e.to_string())?;
        }
    }

    /// Services the connection (credits, keep-alives) for about `d` without sending anything.
    pub fn idle(&mut self, d: Duration) -> Result<(), String> {
        for o in self.conn.progress().map_err(|e| e.to_string())? {
            if let Output::Closed(e) = o {
                return Err(format!("connection closed: {e}"));
            }
        }
        self.conn.wait(&[], d).map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn stats(&self) -> smbdirect::Stats {
        self.conn.connection().stats()
    }
}

/// A child process (smbdirectd, or the `sd-hold` client), SIGKILLed and reaped on drop.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_proxy(bin: &Path, listen: SocketAddr, forward: &Path) -> Result<Proxy, String> {
    let mut child = Command::new(bin)
        .args(["--listen", &listen.to_string()])
        .arg("--forward-unix")
        .arg(forward)
        .args(["--max-connections", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let proxy = Proxy(child);
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| format!("reading smbdirectd's output: {e}"))?;
    if !line.starts_with("smbdirectd listening on") {
        return Err(format!("smbdirectd did not start: {line:?}"));
    }
    Ok(proxy)
}

/// smbd in this process on a loopback port (TCP clients) and a unix socket (smbdirectd),
/// stopped on drop.
struct Smbd {
    addr: SocketAddr,
    proxy_socket: PathBuf,
    stopper: smbd::server::Stopper,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Smbd {
    fn start() -> Result<Smbd, String> {
        let share = std::env::temp_dir().join("smbdirect-share");
        std::fs::create_dir_all(&share).map_err(|e| format!("{}: {e}", share.display()))?;
        let proxy_socket = std::env::temp_dir()
            .join("smbdirect-run")
            .join("smbdirect.sock");
        let toml = format!(
            "[server]\nnetbios_name = \"SDTEST\"\nworkers = 1\nrdma_proxy_socket = \"{}\"\n\
             [[share]]\nname = \"data\"\npath = \"{}\"\n",
            proxy_socket.display(),
            share.display()
        );
        let config = smbd::config::Config::parse(&toml).map_err(|e| format!("smbd config: {e}"))?;
        let server = smbd::server::Server::bind(config, &[SocketAddr::from(([127, 0, 0, 1], 0))])
            .map_err(|e| format!("smbd bind: {e}"))?;
        let addr = *server
            .local_addrs()
            .iter()
            .find(|a| a.ip().is_loopback())
            .ok_or("smbd has no loopback listener")?;
        let stopper = server.stopper();
        let thread = std::thread::spawn(move || {
            if let Err(e) = server.run() {
                eprintln!("smbd: {e}");
            }
        });
        Ok(Smbd {
            addr,
            proxy_socket,
            stopper,
            thread: Some(thread),
        })
    }
}

impl Drop for Smbd {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The test: SMB Direct negotiation with smbdirectd, an SMB2 NEGOTIATE answered by smbd through
/// the proxy, the connection cap (1) refusing a second client while the first is up, and an
/// SMB2 ECHO on the first connection afterwards, a new client admitted once the first left,
/// and again once a client process holding the only slot was SIGKILLed; then ECHO round trips through the proxy and
/// straight to smbd over TCP, printed side by side.
pub fn test_negotiate_through_proxy(
    ip: IpAddr,
    smbdirectd: &Path,
    suite_exe: &Path,
) -> Result<(), String> {
    let smbd = Smbd::start()?;
    let listen = SocketAddr::new(ip, PORT);
    let _proxy = start_proxy(smbdirectd, listen, &smbd.proxy_socket)?;
    let mut first = Initiator::connect(listen)?;
    let resp = first.round_trip(negotiate_request())?;
    let dialect = check_negotiate_response(&resp)?;
    if dialect != 0x0302 {
        return Err(format!(
            "smbd chose dialect {dialect:#06x}, expected 0x0302"
        ));
    }
    println!(
        "    smbd answered NEGOTIATE through smbdirectd: dialect {dialect:#06x}, {} bytes; client stats {:?}",
        resp.len(),
        first.stats()
    );
    match Initiator::connect(listen) {
        Ok(_) => return Err("a second connection was accepted beyond --max-connections 1".into()),
        Err(e) if e.contains("rejected") => {}
        Err(e) => {
            return Err(format!(
                "second connection failed otherwise than rejected: {e}"
            ))
        }
    }
    // The first connection is unaffected by the refused one (a second NEGOTIATE would make
    // smbd disconnect, MS-SMB2 3.3.5.3; ECHO needs no session).
    check_echo_response(&first.round_trip(echo_request(1))?)?;

    // The same SMB2 ECHO round trip through smbdirectd and straight to smbd over TCP, in the same
    // run: reported as a ratio (under TCG emulation absolute numbers mean nothing), not judged.
    let mut rdma = Vec::with_capacity(ECHO_ROUNDS);
    for i in 0..ECHO_ROUNDS as u64 {
        let t = Instant::now();
        let r = first.round_trip(echo_request(2 + i))?;
        rdma.push(t.elapsed());
        check_echo_response(&r)?;
    }
    // The client goes away: smbdirectd's connection thread must see the disconnect and free its
    // slot under the cap of 1, so a new client gets in (retried while the old one winds down).
    drop(first);
    let mut next = connect_retrying(listen)
        .map_err(|e| format!("reconnecting after the first client left: {e}"))?;
    check_negotiate_response(&next.round_trip(negotiate_request())?)?;
    drop(next);

    // A client process killed with SIGKILL (no disconnect of its own; the kernel tears its
    // cm_id down): its slot must come free too.
    let mut holder = Proxy(
        Command::new(suite_exe)
            .args(["sd-hold", "--server", &listen.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning sd-hold: {e}"))?,
    );
    let mut line = String::new();
    if let Some(out) = holder.0.stdout.take() {
        // The child retries while the previous client is still winding down.
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("reading sd-hold: {e}"))?;
    }
    if !line.starts_with("NEGOTIATED") {
        return Err(format!("sd-hold said {line:?}"));
    }
    match Initiator::connect(listen) {
        Ok(_) => return Err("a client was admitted beside the holder beyond the cap".into()),
        Err(e) if e.contains("rejected") => {}
        Err(e) => return Err(format!("connect beside the holder: {e}")),
    }
    drop(holder); // SIGKILL and reap
    let mut after_kill = connect_retrying(listen)
        .map_err(|e| format!("reconnecting after the holder was killed: {e}"))?;
    check_negotiate_response(&after_kill.round_trip(negotiate_request())?)?;
    drop(after_kill);
    let mut tcp = tcp_echo_rounds(smbd.addr)?;
    let (r50, r99) = percentiles(&mut rdma);
    let (t50, t99) = percentiles(&mut tcp);
    println!(
        "    SMB2 ECHO x{ECHO_ROUNDS}: smbdirectd p50={r50:?} p99={r99:?}; TCP to smbd p50={t50:?} \
         p99={t99:?}; p50 ratio {:.2}",
        r50.as_secs_f64() / t50.as_secs_f64().max(1e-9)
    );
    Ok(())
}

const ECHO_ROUNDS: usize = 200;

/// Connects, retrying while smbdirectd rejects us because its one connection slot is still
/// taken by a client that is going away.
pub fn connect_retrying(addr: SocketAddr) -> Result<Initiator, String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match Initiator::connect(addr) {
            Ok(c) => return Ok(c),
            Err(e) if e.contains("rejected") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The `sd-hold` child of the test: connect, negotiate SMB Direct and SMB2, say `NEGOTIATED`,
/// then stay connected until killed.
pub fn hold(server: SocketAddr) -> Result<(), String> {
    use std::io::Write;
    let mut c = connect_retrying(server)?;
    check_negotiate_response(&c.round_trip(negotiate_request())?)?;
    println!("NEGOTIATED");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        // Keep answering keep-alives and credits until SIGKILL.
        c.idle(Duration::from_secs(1))?;
    }
}

fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// NEGOTIATE then [`ECHO_ROUNDS`] ECHOs over a plain TCP connection to smbd (NetBIOS framing).
fn tcp_echo_rounds(addr: SocketAddr) -> Result<Vec<Duration>, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("tcp connect to smbd: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut rt = |m: Vec<u8>| -> Result<Vec<u8>, String> {
        let mut f = (m.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&m);
        s.write_all(&f).map_err(|e| format!("tcp write: {e}"))?;
        let mut h = [0u8; 4];
        s.read_exact(&mut h).map_err(|e| format!("tcp read: {e}"))?;
        let mut r = vec![0u8; u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize];
        s.read_exact(&mut r).map_err(|e| format!("tcp read: {e}"))?;
        Ok(r)
    };
    check_negotiate_response(&rt(negotiate_request())?)?;
    let mut out = Vec::with_capacity(ECHO_ROUNDS);
    for i in 0..ECHO_ROUNDS as u64 {
        let t = Instant::now();
        let r = rt(echo_request(1 + i))?;
        out.push(t.elapsed());
        check_echo_response(&r)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_request_is_well_formed() {
        let m = negotiate_request();
        assert_eq!(m.len(), 64 + 36 + 8);
        assert_eq!(&m[..4], b"\xfeSMB");
        assert_eq!(u16::from_le_bytes([m[66], m[67]]), 4);
    }

    #[test]
    fn response_checks() {
        let mut r = vec![0u8; 64 + 65];
        r[..4].copy_from_slice(b"\xfeSMB");
        r[16] = 1; // SERVER_TO_REDIR
        r[64] = 65;
        r[68..70].copy_from_slice(&0x0302u16.to_le_bytes());
        assert_eq!(check_negotiate_response(&r), Ok(0x0302));
        r[8] = 0x22; // a failure status
        assert!(check_negotiate_response(&r).is_err());
        r[8] = 0;
        r[16] = 0; // a request, not a response
        assert!(check_negotiate_response(&r).is_err());
        assert!(check_negotiate_response(b"\xffSMB").is_err());
        // A NEGOTIATE response is not an ECHO response.
        r[16] = 1;
        assert!(check_echo_response(&r).is_err());
        let e = echo_request(1);
        assert_eq!(e.len(), 68);
        assert_eq!(u16::from_le_bytes([e[12], e[13]]), ECHO);
    }
}
