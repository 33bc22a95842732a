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
