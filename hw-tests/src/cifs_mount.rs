//! The Linux kernel's SMB client (cifs.ko built with CONFIG_CIFS_SMB_DIRECT, see
//! `hw-tests/build-cifs-rdma.sh`) mounting smbd through smbdirectd with `-o rdma`, in the
//! soft-RoCE guest: an 8 MiB file (beyond the client's 4 KiB RDMA read/write threshold)
//! written and read back with its content compared, a directory listed, unmounted; smbdirectd's
//! counters must show the data moved by RDMA READ (the writes) and RDMA WRITE (the reads).
//! The same I/O through a TCP mount of the same smbd gives the throughput ratio (printed, not
//! judged). `cache=none` sends every read and write to the server, so the read-back is not
//! served from the client's page cache. An encrypted session (a share with `encrypt = true`,
//! mounted with `seal`) writes and reads a smaller file through SMB Direct too, its payloads
//! inside SMB2_TRANSFORM messages.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use smbd::passwd::{update_users_file, PasswdAction};

/// Size of the file written and read back.
const FILE_SIZE: usize = 8 << 20;
/// Chunk of each write/read call, half the client's rsize/wsize. With cache=none each call
/// becomes one READ/WRITE, and the 6.1 client registers its (unaligned) user buffer for it
/// with one page more than the I/O size in pages: an I/O of the full MaxReadWriteSize fails
/// (`smbd_register_mr: num_pages=257 max_frmr_depth=256`, retried forever) on rxe, whose
/// fast-registration depth (256 pages) is what caps the client's rsize/wsize at 1 MiB.
const CHUNK: usize = 512 << 10;
/// The client's page size. Writes go out from page-aligned buffers: Debian 6.1's client sends
/// the data of an inline (not RDMA) WRITE page by page, and for each piece of a page it takes
/// the length of what is left of the whole message instead of what is left of the page
/// (smbd_send: `size = min(max_iov_size, remaining_data_length)`). An inline write whose data
/// spans two pages thus sends bytes from beyond the first page's end in place of the second
/// page's: silent corruption on any SMB Direct server, a bad AES tag (smbd drops the
/// connection) on an encrypted session. Seen here as "read back differs at byte 2272" for
/// 1 KiB writes from an unaligned buffer, and as every encrypted 512 KiB WRITE failing.
/// Unsigned, unencrypted writes of 4 KiB or more go by RDMA READ and are not affected;
/// upstream's iov_iter rewrite of smbd_send (6.3) has no such split.
const PAGE: usize = 4096;
/// smbd's port for the TCP mount.
const TCP_PORT: u16 = 4450;
pub(crate) const USER: &str = "sduser";
pub(crate) const PASSWORD: &str = "rdma-Test-pw1";
/// How long smbdirectd may take to log a connection's end after the unmount.
const COUNTER_WAIT: Duration = Duration::from_secs(30);

/// smbd in this process, listening for smbdirectd on its unix socket (`dir`/run/smbdirect.sock)
/// and for TCP clients on `ip`.
pub(crate) struct Smbd {
    stopper: smbd::server::Stopper,
    /// `GET /metrics`, when the configuration set `metrics_listen`.
    metrics: Option<SocketAddr>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// smbd's `rdma_proxy_socket` in the test's directory.
fn proxy_socket(dir: &Path) -> PathBuf {
    dir.join("run").join("smbdirect.sock")
}

impl Smbd {
    fn start(ip: IpAddr, dir: &Path) -> Result<Smbd, String> {
        let share = dir.join("share");
        std::fs::create_dir_all(&share).map_err(|e| format!("{}: {e}", share.display()))?;
        let users = write_users(dir)?;
        // Signing off: the Linux client uses RDMA channels only on unsigned, unencrypted
        // sessions (smb3_use_rdma_offload).
        let toml = format!(
            "[server]\nnetbios_name = \"SDTEST\"\nworkers = 1\nsigning_required = false\n\
             users = \"{}\"\nlisten = [\"{}\"]\nrdma_proxy_socket = \"{}\"\n\
             metrics_listen = \"127.0.0.1:0\"\n\
             [[share]]\nname = \"data\"\npath = \"{}\"\n\
             [[share]]\nname = \"sealed\"\npath = \"{}\"\nencrypt = true\n",
            users.display(),
            SocketAddr::new(ip, TCP_PORT),
            proxy_socket(dir).display(),
            share.display(),
            share.display()
        );
        Smbd::from_toml(&toml)
    }

    /// smbd with configuration `toml`, run on a thread of this process.
    pub(crate) fn from_toml(toml: &str) -> Result<Smbd, String> {
        let config = smbd::config::Config::parse(toml).map_err(|e| format!("smbd config: {e}"))?;
        let server =
            smbd::server::Server::bind(config, &[]).map_err(|e| format!("smbd bind: {e}"))?;
        let stopper = server.stopper();
        let metrics = server.metrics_addr();
        let thread = std::thread::spawn(move || {
            if let Err(e) = server.run() {
                eprintln!("smbd: {e}");
            }
        });
        Ok(Smbd {
            stopper,
            metrics,
            thread: Some(thread),
        })
    }

    /// smbd's `smbd_rdma_payload_bytes_total` for `op` (write/read) and `via` (area/stream):
    /// how RDMA-channel payloads moved between the files and smbdirectd.
    fn rdma_payload_bytes(&self, op: &str, via: &str) -> Result<u64, String> {
        let addr = self.metrics.ok_or("smbd serves no metrics")?;
        let mut c = std::net::TcpStream::connect(addr).map_err(|e| format!("metrics: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        write!(c, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut resp = String::new();
        c.read_to_string(&mut resp)
            .map_err(|e| format!("metrics: {e}"))?;
        let sample = format!("smbd_rdma_payload_bytes_total{{op=\"{op}\",via=\"{via}\"}}");
        resp.lines()
            .find_map(|l| l.strip_prefix(sample.as_str())?.trim().parse().ok())
            .ok_or_else(|| format!("no {sample} in smbd's metrics"))
    }
}

/// The users file (`dir`/users) with the test user, mapped to root (the guest has no others).
pub(crate) fn write_users(dir: &Path) -> Result<PathBuf, String> {
    let users = dir.join("users");
    let _ = std::fs::remove_file(&users);
    update_users_file(
        &users,
        USER,
        PasswdAction::Set {
            password: PASSWORD.into(),
            uid: Some(0),
            gid: Some(0),
            groups: Some(Vec::new()),
        },
    )
    .map_err(|e| format!("users file: {e}"))?;
    Ok(users)
}

impl Drop for Smbd {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// smbdirectd as a child, its stdout lines collected by a thread; SIGKILLed on drop.
struct Proxy {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proxy {
    fn start(
        bin: &Path,
        listen: SocketAddr,
        forward: &Path,
        extra: &[&str],
    ) -> Result<Proxy, String> {
        let mut child = Command::new(bin)
            .args(["--listen", &listen.to_string()])
            .arg("--forward-unix")
            .arg(forward)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let p = Proxy { child, lines };
        let first = p
            .lines
            .recv_timeout(COUNTER_WAIT)
            .map_err(|_| "smbdirectd printed nothing".to_string())?;
        if !first.starts_with("smbdirectd listening on") {
            return Err(format!("smbdirectd did not start: {first:?}"));
        }
        Ok(p)
    }

    /// The RDMA READ and WRITE byte counters of the next connection that ends.
    /// Also returns the whole line (SMB Direct message counts, printed by the test).
    fn next_connection_counters(&self) -> Result<(u64, u64, String), String> {
        let deadline = Instant::now() + COUNTER_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self
                .lines
                .recv_timeout(left)
                .map_err(|_| "smbdirectd reported no connection end after the unmount")?;
            if let Some((r, w)) = parse_counters(&l) {
                return Ok((r, w, l));
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `smbdirectd connection ended: rdma_read_bytes=N rdma_write_bytes=M`.
fn parse_counters(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("smbdirectd connection ended: ")?;
    let mut read = None;
    let mut write = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=')? {
            ("rdma_read_bytes", v) => read = v.parse().ok(),
            ("rdma_write_bytes", v) => write = v.parse().ok(),
            _ => {}
        }
    }
    Some((read?, write?))
}

/// The value of `name=N` in a counter line.
fn counter(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {} {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Deterministic file content (xorshift), so a misplaced chunk shows as a mismatch.
fn content() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v = Vec::with_capacity(FILE_SIZE);
    while v.len() < FILE_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(FILE_SIZE);
    v
}

/// MiB/s of `bytes` in `d`.
fn mibps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

/// Mounts, writes the file, reads it back and compares, lists the directory, unmounts.
/// Returns the write and read durations.
fn io_round(
    source: &str,
    options: &str,
    mnt: &Path,
    name: &str,
    data: &[u8],
) -> Result<(Duration, Duration), String> {
    io_round_in(source, options, mnt, name, data, CHUNK, CHUNK)
}

/// [`io_round`] with `write_chunk` bytes per write call and `read_chunk` per read call.
fn io_round_in(
    source: &str,
    options: &str,
    mnt: &Path,
    name: &str,
    data: &[u8],
    write_chunk: usize,
    read_chunk: usize,
) -> Result<(Duration, Duration), String> {
    std::fs::create_dir_all(mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
    let m = mnt.to_str().ok_or("mount point not UTF-8")?;
    run("mount", &["-t", "cifs", source, m, "-o", options])?;
    let result = (|| {
        let path = mnt.join(name);
        // Every write from a page-aligned buffer, so that one smaller than a page stays in
        // one page: see [`PAGE`] on the 6.1 client's inline writes.
        let mut staging = vec![0u8; write_chunk + PAGE];
        let aligned = staging.as_ptr().align_offset(PAGE);
        let t = Instant::now();
        let mut f = std::fs::File::create(&path).map_err(|e| format!("create {name}: {e}"))?;
        for c in data.chunks(write_chunk) {
            let buf = &mut staging[aligned..aligned + c.len()];
            buf.copy_from_slice(c);
            f.write_all(buf).map_err(|e| format!("write {name}: {e}"))?;
        }
        f.sync_all().map_err(|e| format!("fsync {name}: {e}"))?;
        drop(f);
        let wrote = t.elapsed();
        let t = Instant::now();
        let mut back = Vec::with_capacity(data.len());
        let mut f = std::fs::File::open(&path).map_err(|e| format!("open {name}: {e}"))?;
        let mut buf = vec![0u8; read_chunk];
        loop {
            let n = f.read(&mut buf).map_err(|e| format!("read {name}: {e}"))?;
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        let read = t.elapsed();
        if back.len() != data.len() {
            return Err(format!("read back {} bytes of {}", back.len(), data.len()));
        }
        if let Some(at) = back.iter().zip(data).position(|(a, b)| a != b) {
            return Err(format!("read back differs at byte {at}"));
        }
        let names: Vec<String> = std::fs::read_dir(mnt)
            .map_err(|e| format!("list {}: {e}", mnt.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !names.iter().any(|n| n == name) {
            return Err(format!("{name} missing from the listing {names:?}"));
        }
        Ok((wrote, read))
    })();
    let unmounted = run("umount", &[m]);
    let r = result?;
    unmounted?;
    Ok(r)
}

/// The test (see the module documentation).
pub fn test_kernel_client_mount(ip: IpAddr, smbdirectd: &Path) -> Result<(), String> {
    let dir = std::env::temp_dir().join("cifs-mount-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let smbd = Smbd::start(ip, &dir)?;
    let proxy = Proxy::start(
        smbdirectd,
        SocketAddr::new(ip, crate::smbdirect::PORT),
        &proxy_socket(&dir),
        &[],
    )?;
    let data = content();
    let mnt: PathBuf = dir.join("mnt");
    let source = format!("//{ip}/data");
    let creds = format!("username={USER},password={PASSWORD}");
    let (rw, rr) = io_round(
        &source,
        &format!("rdma,vers=3.1.1,cache=none,{creds}"),
        &mnt,
        "over-rdma.bin",
        &data,
    )
    .map_err(|e| format!("over SMB Direct: {e}"))?;
    let (read_bytes, write_bytes, line) = proxy.next_connection_counters()?;
    println!("    {line}");
    // ... and their payloads went through the area shared with smbd, none through the
    // stream (the area has room for every transfer of one client).
    let area = counter(&line, "area_payload_bytes");
    let socket = counter(&line, "socket_payload_bytes");
    if area < Some(2 * FILE_SIZE as u64) || socket != Some(0) {
        return Err(format!(
            "payloads not (only) through the shared area: area_payload_bytes={area:?} \
             socket_payload_bytes={socket:?} for {FILE_SIZE} bytes written and read"
        ));
    }
    // smbd wrote the files straight from the area and read them straight into it (no copy
    // in smbd: its own counters).
    let from_area = smbd.rdma_payload_bytes("write", "area")?;
    let into_area = smbd.rdma_payload_bytes("read", "area")?;
    let streamed =
        smbd.rdma_payload_bytes("write", "stream")? + smbd.rdma_payload_bytes("read", "stream")?;
    println!(
        "    smbd: {from_area} B written to files from the area, {into_area} B read into it, \
         {streamed} B on the stream"
    );
    if from_area < FILE_SIZE as u64 || into_area < FILE_SIZE as u64 || streamed != 0 {
        return Err(format!(
            "smbd did not write from / read into the area: write via area {from_area}, \
             read via area {into_area}, via stream {streamed} for {FILE_SIZE} bytes"
        ));
    }
    // The client's writes come in by RDMA READ and its reads go out by RDMA WRITE.
    if read_bytes < FILE_SIZE as u64 || write_bytes < FILE_SIZE as u64 {
        return Err(format!(
            "RDMA channels not used for the {FILE_SIZE}-byte file: smbdirectd moved \
             {read_bytes} bytes by RDMA READ and {write_bytes} by RDMA WRITE"
        ));
    }
    let (tw, tr) = io_round(
        &source,
        &format!("vers=3.1.1,port={TCP_PORT},cache=none,{creds}"),
        &mnt,
        "over-tcp.bin",
        &data,
    )
    .map_err(|e| format!("over TCP: {e}"))?;
    // 64 KiB in 1 KiB writes, read back in 64 KiB reads (`rsize` bounding them), through
    // `share` mounted with `extra` options; what the connection moved is printed.
    let small_round = |share: &str, extra: &str, name: &str, what: &str| {
        let (w, r) = io_round_in(
            &format!("//{ip}/{share}"),
            &format!("rdma,vers=3.1.1,cache=none,{extra}rsize=65536,{creds}"),
            &mnt,
            name,
            &data[..64 << 10],
            1 << 10,
            64 << 10,
        )
        .map_err(|e| format!("over SMB Direct, {what}: {e}"))?;
        let (_, _, line) = proxy.next_connection_counters()?;
        println!("    {line}");
        println!(
            "    kernel cifs over SMB Direct, {what}: 64 KiB in 1 KiB WRITEs {:.1} ms, read back \
             in 64 KiB READs {:.1} ms",
            w.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
        );
        Ok::<(), String>(())
    };
    // Small writes go inline (below the client's 4 KiB RDMA threshold): SMB2 WRITE messages
    // whose data the client sends in fragments beside their header.
    small_round("data", "", "over-rdma-small.bin", "1 KiB writes inline")?;
    // Encrypted over SMB Direct: a share that requires encryption (smbd refuses its
    // unencrypted requests), mounted with `seal`, the same small writes and reads. The Linux
    // client does not use RDMA channels on encrypted sessions (smb3_use_rdma_offload): every
    // payload travels inside SMB2_TRANSFORM messages (a WRITE's in fragments, see [`PAGE`];
    // a corrupted one fails smbd's AES tag check). `rsize` bounds the READ responses: with
    // `seal` the 6.1 client does not cap rsize by its own reassembly limit (173,910 bytes).
    small_round("sealed", "seal,", "over-rdma-sealed.bin", "encrypted")?;
    // The same once more through an smbdirectd without the shared area (payloads inline on
    // the stream), for a same-run baseline of what the area changes.
    drop(proxy);
    let inline = Proxy::start(
        smbdirectd,
        SocketAddr::new(ip, crate::smbdirect::PORT),
        &proxy_socket(&dir),
        &["--area-size", "0"],
    )?;
    let (iw, ir) = io_round(
        &source,
        &format!("rdma,vers=3.1.1,cache=none,{creds}"),
        &mnt,
        "over-rdma-inline.bin",
        &data,
    )
    .map_err(|e| format!("over SMB Direct without the area: {e}"))?;
    let (_, _, line) = inline.next_connection_counters()?;
    println!("    {line}");
    if counter(&line, "socket_payload_bytes") < Some(2 * FILE_SIZE as u64) {
        return Err(format!(
            "--area-size 0 did not send the payloads inline: {line}"
        ));
    }
    println!(
        "    kernel cifs over SMB Direct without the shared area (payloads inline): 8 MiB write \
         {:.1} MiB/s, read {:.1} MiB/s",
        mibps(FILE_SIZE, iw),
        mibps(FILE_SIZE, ir),
    );
    println!(
        "    kernel cifs over SMB Direct: RDMA READ {read_bytes} B, RDMA WRITE {write_bytes} B; \
         8 MiB write {:.1} MiB/s, read {:.1} MiB/s; over TCP write {:.1} MiB/s, read {:.1} MiB/s; \
         ratio (RDMA/TCP) write {:.2} read {:.2}",
        mibps(FILE_SIZE, rw),
        mibps(FILE_SIZE, rr),
        mibps(FILE_SIZE, tw),
        mibps(FILE_SIZE, tr),
        tw.as_secs_f64() / rw.as_secs_f64().max(1e-9),
        tr.as_secs_f64() / rr.as_secs_f64().max(1e-9),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_line_parses() {
        assert_eq!(
            parse_counters(
                "smbdirectd connection ended: rdma_read_bytes=8 rdma_write_bytes=9 empty_sent=3"
            ),
            Some((8, 9))
        );
        assert_eq!(
            parse_counters("smbdirectd listening on 10.0.0.1:5445"),
            None
        );
        assert_eq!(
            parse_counters("smbdirectd connection ended: rdma_read_bytes=8"),
            None
        );
    }

    #[test]
    fn named_counters_parse() {
        let l = "smbdirectd connection ended: rdma_read_bytes=8 area_payload_bytes=16 \
                 socket_payload_bytes=0";
        assert_eq!(counter(l, "area_payload_bytes"), Some(16));
        assert_eq!(counter(l, "socket_payload_bytes"), Some(0));
        assert_eq!(counter(l, "rdma_write_bytes"), None);
    }

    #[test]
    fn content_is_deterministic_and_not_periodic_by_chunk() {
        let a = content();
        assert_eq!(a.len(), FILE_SIZE);
        assert_eq!(a, content());
        assert_ne!(a[..CHUNK], a[CHUNK..2 * CHUNK]);
    }
}
