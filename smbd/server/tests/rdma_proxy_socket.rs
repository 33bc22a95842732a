//! smbd's private channel for smbdirectd (`[server] rdma_proxy_socket`): a unix socket created
//! 0600 in a 0700 directory, on which only root and the configured `rdma_proxy_uids` are
//! served. The peer-credential check is tested on its own by opening the file permissions up
//! (as an operator's mistake would) and connecting from a child process that runs as
//! `nobody` (setuid before exec, so SO_PEERCRED records uid 65534 at connect).

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const NOBODY: u32 = 65534;

/// smbdirectd's hello without a shared area (`smb_proto::area_frame`), then a NetBIOS-framed
/// SMB2 NEGOTIATE offering SMB 2.0.2 (MS-SMB2 2.2.3).
fn negotiate_frame() -> Vec<u8> {
    let mut f = smb_proto::area_frame::AreaFrame::hello().encode().to_vec();
    let mut m = Vec::new();
    m.extend_from_slice(b"\xfeSMB");
    m.extend_from_slice(&64u16.to_le_bytes()); // StructureSize
    m.extend_from_slice(&[0; 2]); // CreditCharge
    m.extend_from_slice(&[0; 4]); // Status
    m.extend_from_slice(&0u16.to_le_bytes()); // Command: NEGOTIATE
    m.extend_from_slice(&1u16.to_le_bytes()); // CreditRequest
    m.extend_from_slice(&[0; 4 + 4 + 8 + 4 + 4 + 8 + 16]); // Flags .. Signature
    m.extend_from_slice(&36u16.to_le_bytes()); // StructureSize
    m.extend_from_slice(&1u16.to_le_bytes()); // DialectCount
    m.extend_from_slice(&1u16.to_le_bytes()); // SecurityMode: signing enabled
    m.extend_from_slice(&[0; 2 + 4]); // Reserved, Capabilities
    m.extend_from_slice(&[0x11; 16]); // ClientGuid
    m.extend_from_slice(&[0; 8]); // ClientStartTime
    m.extend_from_slice(&0x0202u16.to_le_bytes());
    f.extend_from_slice(&(m.len() as u32).to_be_bytes());
    f.extend_from_slice(&m);
    f
}

/// Sends a NEGOTIATE as this (root) process and returns the response's NTSTATUS.
fn negotiate_as_root(path: &Path) -> u32 {
    let mut s = UnixStream::connect(path).expect("root connects");
    s.write_all(&negotiate_frame()).expect("send");
    let mut head = [0u8; 4 + 64];
    s.read_exact(&mut head).expect("a response");
    assert_eq!(&head[4..8], b"\xfeSMB");
    u32::from_le_bytes(head[12..16].try_into().expect("4"))
}

/// Connects as `nobody` from a child process, sends a NEGOTIATE and reports what came back:
/// "answered" or "closed".
fn negotiate_as_nobody(path: &Path) -> String {
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  try:\n    s.sendall(bytes.fromhex(sys.argv[2]))\n    d = s.recv(4096)\n\
                  except (ConnectionResetError, BrokenPipeError):\n    d = b''\n\
                  print('answered' if d else 'closed')\n";
    let hex: String = negotiate_frame()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .arg(hex)
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "client as nobody failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Opens the directory and the socket to everyone, so only the uid check stands between
/// `nobody` and smbd.
fn open_permissions(path: &Path) {
    let dir = path.parent().expect("dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).expect("chmod dir");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod sock");
}

fn start(run: &Path, uids: &str) -> (TestServer, PathBuf) {
    let sock = run.join("clustersmb").join("smbdirect.sock");
    let srv = TestServer::start(Options {
        server_extra: format!(
            "rdma_proxy_socket = \"{}\"\nrdma_proxy_uids = [{uids}]",
            sock.display()
        ),
        ..Default::default()
    });
    (srv, sock)
}

/// The log without its colour escapes (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for c in it.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::geteuid() };
    uid == 0
}

#[test]
fn rdma_proxy_socket_serves_root_and_refuses_other_uids() {
    if !is_root() {
        missing("not root: cannot run a client as nobody");
        return;
    }
    let run = tempfile::tempdir().unwrap();
    let (mut srv, sock) = start(run.path(), "");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode(sock.parent().unwrap()),
        0o700,
        "directory created 0700"
    );
    assert_eq!(mode(&sock), 0o600, "socket created 0600");
    assert_eq!(negotiate_as_root(&sock), 0, "root is served");

    open_permissions(&sock);
    assert_eq!(negotiate_as_nobody(&sock), "closed", "{}", srv.log());
    assert_eq!(negotiate_as_nobody(&sock), "closed");
    let log = strip_ansi(&srv.log());
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rdma_proxy_socket: connection refused"))
        .collect();
    assert_eq!(refused.len(), 2, "each refusal logged:\n{log}");
    assert!(refused[0].contains("uid=65534"), "{}", refused[0]);
    assert!(
        refused[1].contains("refused_total=2"),
        "counted: {}",
        refused[1]
    );
    // Root still is.
    assert_eq!(negotiate_as_root(&sock), 0);

    // A restart finds the socket file of the stopped smbd and replaces it (the directory's
    // mode set back: smbd refuses to start with a directory others may enter).
    srv.stop();
    std::fs::set_permissions(
        sock.parent().unwrap(),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    assert!(sock.exists(), "the stale socket is still there");
    let (_srv2, sock2) = start(run.path(), "");
    assert_eq!(negotiate_as_root(&sock2), 0, "stale socket replaced");
}

#[test]
fn rdma_proxy_uids_admit_a_configured_uid() {
    if !is_root() {
        missing("not root: cannot run a client as nobody");
        return;
    }
    let run = tempfile::tempdir().unwrap();
    let (srv, sock) = start(run.path(), &NOBODY.to_string());
    open_permissions(&sock);
    assert_eq!(negotiate_as_nobody(&sock), "answered", "{}", srv.log());
}

// ---- the shared area passed with the hello (SCM_RIGHTS) -------------------------------------

use smb_proto::area_frame::{AreaFrame, Op};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// A memfd of `len` bytes, sealed against shrinking (as smbdirectd makes its area) or not.
fn memfd(len: u64, seal: bool) -> std::fs::File {
    // SAFETY: a NUL-terminated name and valid flags; the descriptor is fresh and ours; fcntl
    // on it touches no memory.
    #[allow(unsafe_code)]
    let f = unsafe {
        let fd = libc::memfd_create(
            c"test-area".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        );
        assert!(fd >= 0, "memfd_create");
        std::fs::File::from(OwnedFd::from_raw_fd(fd))
    };
    f.set_len(len).expect("size");
    if seal {
        // SAFETY: fcntl on our descriptor.
        #[allow(unsafe_code)]
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(r, 0, "seal");
    }
    f
}

/// Connects as smbdirectd does: the hello with `area` attached (SCM_RIGHTS), in one sendmsg.
fn connect_with_area(path: &Path, area: &std::fs::File) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    let hello = AreaFrame::hello().encode();
    let mut iov = libc::iovec {
        iov_base: hello.as_ptr() as *mut libc::c_void,
        iov_len: hello.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: plain data structures filled below; CMSG_* stay inside `cbuf` (64 bytes, room
    // for one descriptor's control message); sendmsg reads the live locals they point at.
    #[allow(unsafe_code)]
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), area.as_raw_fd());
        libc::sendmsg(s.as_raw_fd(), &msg, 0)
    };
    assert_eq!(n, hello.len() as isize, "sendmsg");
    s
}

/// Whether smbd closed the connection (EOF or reset) rather than sending something or
/// keeping it open (the timeout only turns a hang into a failure; no timing is asserted).
fn closed_by_smbd(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn area_passed_with_the_hello_is_mapped_and_its_descriptors_checked() {
    if !is_root() {
        missing("not root: smbd's proxy socket is root's");
        return;
    }
    let run = tempfile::tempdir().unwrap();
    let (srv, sock) = start(run.path(), "");
    let area = memfd(1 << 20, true);
    area.write_all_at(b"0123456789", 0).unwrap();

    let mut s = connect_with_area(&sock, &area);
    // The NEGOTIATE of negotiate_frame() after its own (area-less) hello is not what a second
    // hello is for: send only the SMB2 part.
    let neg = negotiate_frame();
    s.write_all(&neg[smb_proto::area_frame::FRAME_LEN..])
        .unwrap();
    let mut head = [0u8; 4 + 64];
    s.read_exact(&mut head)
        .expect("NEGOTIATE answered after a hello with an area");
    let rest = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize - 64;
    let mut body = vec![0u8; rest];
    s.read_exact(&mut body).unwrap();

    // A WRITE's data in the area: smbd holds the range for the request of its MessageId and
    // gives it back at that message's end when the request does not use it (an ECHO here).
    let w = AreaFrame {
        op: Op::Write,
        message_id: 1,
        offset: 0,
        length: 10,
    };
    s.write_all(&w.encode()).unwrap();
    s.write_all(&framed(&conn_harness::request(
        cmd::ECHO,
        1,
        0,
        0,
        &[4, 0, 0, 0],
    )))
    .unwrap();

    let (kind, echo) = read_frame(&mut s);
    assert_eq!(
        (kind, Header::decode(&echo).unwrap().command),
        (0, cmd::ECHO)
    );
    let (kind, back) = read_frame(&mut s);
    assert_eq!(kind, smb_proto::area_frame::KIND);
    assert_eq!(
        AreaFrame::decode_body(&back).unwrap(),
        AreaFrame {
            op: Op::Release,
            ..w
        }
    );
    // Outside the area: the connection is closed.
    let bad = AreaFrame {
        op: Op::Grant,
        message_id: 6,
        offset: (1 << 20) - 5,
        length: 10,
    };
    s.write_all(&bad.encode()).unwrap();
    assert!(closed_by_smbd(&mut s), "out-of-range descriptor");

    // An area that is not sealed against shrinking is refused at the hello.
    let mut s = connect_with_area(&sock, &memfd(1 << 20, false));
    s.write_all(&neg[smb_proto::area_frame::FRAME_LEN..])
        .unwrap();
    assert!(closed_by_smbd(&mut s), "unsealed area");

    let log = strip_ansi(&srv.log());
    assert!(
        log.contains("bad area frame from smbdirectd") && log.contains("outside the"),
        "{log}"
    );
    assert!(
        log.contains("smbdirectd connection refused at its hello") && log.contains("sealed"),
        "{log}"
    );
}

#[path = "../fuzz/conn_harness.rs"]
mod conn_harness;

use conn_harness::{
    body_create, body_negotiate, body_session_setup, body_tree_connect, cmd,
    ntlm_anonymous_authenticate, ntlm_negotiate,
};
use smb_proto::header::Header;
use smb_proto::Writer;

/// `msg` with its NetBIOS session message header.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut f = (msg.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(msg);
    f
}

/// The next frame smbd sends: its kind byte (0: an SMB2 message; area and payload frames have
/// their own) and its body.
fn read_frame(s: &mut UnixStream) -> (u8, Vec<u8>) {
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).expect("a frame");
    let len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("its body");
    (head[0], body)
}

/// Sends one request and returns the header and message of its SMB2 response.
fn call(
    s: &mut UnixStream,
    command: u16,
    mid: u64,
    sid: u64,
    tid: u32,
    body: &[u8],
) -> (Header, Vec<u8>) {
    s.write_all(&framed(&conn_harness::request(
        command, mid, sid, tid, body,
    )))
    .unwrap();
    let (kind, msg) = read_frame(s);
    assert_eq!(kind, 0, "an SMB2 response to command {command}");
    (Header::decode(&msg).expect("header"), msg)
}

/// Bytes of smbd's `/metrics` sample `name{labels}` (the endpoint it logged).
fn metric(srv: &TestServer, sample: &str) -> u64 {
    let log = strip_ansi(&srv.log());
    let addr = log
        .lines()
        .find(|l| l.contains("metrics endpoint listening"))
        .and_then(|l| l.split("bound=").nth(1))
        .expect("metrics endpoint in the log")
        .trim()
        .to_string();
    let mut c = std::net::TcpStream::connect(addr.as_str()).expect("metrics");
    write!(c, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    resp.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in {resp}"))
}

/// Through the real worker and its io_uring: a 64 KiB WRITE whose data smbdirectd left in the
/// area is written to the file from the area range itself (smbd's counter of bytes written
/// from the area, not copied out of it), its range given back only after the write, and a
/// 64 KiB READ lands in the granted range (MS-SMB2 2.2.19-2.2.21 with SMB2_CHANNEL_RDMA_V1).
#[test]
fn area_write_and_read_go_straight_between_the_file_and_the_area() {
    if !is_root() {
        missing("not root: smbd's proxy socket is root's");
        return;
    }
    let run = tempfile::tempdir().unwrap();
    let sock = run.path().join("clustersmb").join("smbdirect.sock");
    let srv = TestServer::start(Options {
        server_extra: format!(
            "rdma_proxy_socket = \"{}\"\nallow_anonymous = true\nguest_account = \"root\"\n\
             metrics_listen = \"127.0.0.1:0\"",
            sock.display()
        ),
        share_extra: "guest_ok = true".into(),
        ..Default::default()
    });
    const LEN: u32 = 64 * 1024;
    let area = memfd(1 << 20, true);
    let data: Vec<u8> = (0..LEN).map(|i| (i * 7 % 253) as u8).collect();
    area.write_all_at(&data, 4096).unwrap();

    let mut s = connect_with_area(&sock, &area);
    let (h, _) = call(&mut s, cmd::NEGOTIATE, 0, 0, 0, &body_negotiate(&[0x0302]));
    assert_eq!(h.status, smb_proto::status::SUCCESS);
    let (h, _) = call(
        &mut s,
        cmd::SESSION_SETUP,
        1,
        0,
        0,
        &body_session_setup(&ntlm_negotiate()),
    );
    let sid = h.session_id;
    let (h, _) = call(
        &mut s,
        cmd::SESSION_SETUP,
        2,
        sid,
        0,
        &body_session_setup(&ntlm_anonymous_authenticate()),
    );
    assert_eq!(h.status, smb_proto::status::SUCCESS, "anonymous session");
    let (h, _) = call(
        &mut s,
        cmd::TREE_CONNECT,
        3,
        sid,
        0,
        &body_tree_connect("\\\\sim\\data"),
    );
    assert_eq!(h.status, smb_proto::status::SUCCESS, "tree connect");
    let tid = h.tree_id;
    let (h, m) = call(
        &mut s,
        cmd::CREATE,
        4,
        sid,
        tid,
        &body_create("ring.bin", 5, 0x40),
    );
    assert_eq!(h.status, smb_proto::status::SUCCESS, "CREATE");
    let u = |o: usize| u64::from_le_bytes(m[64 + o..64 + o + 8].try_into().unwrap());
    let f = (u(64), u(72));

    // WRITE: Length 0, RemainingBytes 64 KiB, one buffer descriptor (MS-SMB2 2.2.21).
    let w = AreaFrame {
        op: Op::Write,
        message_id: 5,
        offset: 4096,
        length: LEN,
    };
    s.write_all(&w.encode()).unwrap();
    let mut b = Writer::new();
    b.u16(49).u16(0).u32(0).u64(0).u64(f.0).u64(f.1);
    b.u32(1).u32(LEN).u16(64 + 48).u16(16).u32(0);
    b.u64(0x1000).u32(0x77).u32(LEN);
    s.write_all(&framed(&conn_harness::request(
        cmd::WRITE,
        5,
        sid,
        tid,
        &b.buf,
    )))
    .unwrap();
    // The range goes back after the write, then the response.
    let (kind, back) = read_frame(&mut s);
    assert_eq!(
        kind,
        smb_proto::area_frame::KIND,
        "Release before the response"
    );
    assert_eq!(
        AreaFrame::decode_body(&back).unwrap(),
        AreaFrame {
            op: Op::Release,
            ..w
        }
    );
    let (kind, msg) = read_frame(&mut s);
    assert_eq!(kind, 0);
    assert_eq!(
        Header::decode(&msg).unwrap().status,
        smb_proto::status::SUCCESS,
        "WRITE"
    );
    assert_eq!(
        u32::from_le_bytes(msg[64 + 4..64 + 8].try_into().unwrap()),
        LEN,
        "Count"
    );
    assert!(
        std::fs::read(srv.share.join("ring.bin")).unwrap() == data,
        "file content"
    );

    // READ into a grant at 512 KiB.
    let g = AreaFrame {
        op: Op::Grant,
        message_id: 6,
        offset: 512 * 1024,
        length: 1 << 17,
    };
    s.write_all(&g.encode()).unwrap();
    let mut b = Writer::new();
    b.u16(49).u8(0).u8(0).u32(LEN).u64(0).u64(f.0).u64(f.1);
    b.u32(0).u32(1).u32(0).u16(64 + 48).u16(16);
    b.u64(0x2000).u32(0x78).u32(LEN);
    s.write_all(&framed(&conn_harness::request(
        cmd::READ,
        6,
        sid,
        tid,
        &b.buf,
    )))
    .unwrap();
    let (kind, back) = read_frame(&mut s);
    assert_eq!(
        kind,
        smb_proto::area_frame::KIND,
        "Read before the response"
    );
    assert_eq!(
        AreaFrame::decode_body(&back).unwrap(),
        AreaFrame {
            op: Op::Read,
            length: LEN,
            ..g
        }
    );
    let (_, msg) = read_frame(&mut s);
    assert_eq!(
        Header::decode(&msg).unwrap().status,
        smb_proto::status::SUCCESS,
        "READ"
    );
    assert_eq!(
        u32::from_le_bytes(msg[64 + 8..64 + 12].try_into().unwrap()),
        LEN,
        "DataRemaining"
    );
    let mut got = vec![0u8; LEN as usize];
    area.read_exact_at(&mut got, 512 * 1024).unwrap();
    assert!(got == data, "READ data in the granted range");

    let n = u64::from(LEN);
    assert_eq!(
        metric(
            &srv,
            "smbd_rdma_payload_bytes_total{op=\"write\",via=\"area\"}"
        ),
        n
    );
    assert_eq!(
        metric(
            &srv,
            "smbd_rdma_payload_bytes_total{op=\"read\",via=\"area\"}"
        ),
        n
    );
    assert_eq!(
        metric(
            &srv,
            "smbd_rdma_payload_bytes_total{op=\"write\",via=\"stream\"}"
        ),
        0
    );
    assert_eq!(
        metric(
            &srv,
            "smbd_rdma_payload_bytes_total{op=\"read\",via=\"stream\"}"
        ),
        0
    );
}
