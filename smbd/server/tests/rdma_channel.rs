//! READ/WRITE with RDMA channels (MS-SMB2 2.2.19-2.2.21) on connections that came in through
//! smbdirectd (`rdma_proxy_socket`): the WRITE's data arrives in a payload frame ahead of the
//! request, the READ's data leaves in a payload frame ahead of a response with DataLength 0
//! and DataRemaining = the count. Other connections get INVALID_PARAMETER for RDMA channels.
//! Driven in-process through `Conn::on_message` / `Conn::on_rdma_payload`, as the worker does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use smb_proto::header::Header;
use smb_proto::payload_frame;
use smb_proto::{status, NtStatus, Writer};
use smbd::conn::Conn;
use smbd::locking::EngineLocks;
use smbd::shared::Shared;

#[path = "../fuzz/conn_harness.rs"]
mod conn_harness;

use conn_harness::{
    body_create, body_negotiate, body_read, body_session_setup, body_tree_connect, cmd,
};

const FILE_OVERWRITE_IF: u32 = 5;
const NON_DIRECTORY: u32 = 0x40;
const CHANNEL_RDMA_V1: u32 = 1;
const CHANNEL_RDMA_V1_INVALIDATE: u32 = 2;

fn shared(share: std::path::PathBuf) -> Arc<Shared> {
    let locks = EngineLocks::with_manual_clock(
        lockmgr_engine::Config::default(),
        Arc::new(std::sync::atomic::AtomicU64::new(1)),
    );
    conn_harness::shared_with_config(share, Box::new(locks), smbd::clock::WallClock::System, "")
        .expect("shared")
}

/// One connection, logged on anonymously with the share connected.
struct Client {
    conn: Conn,
    mid: u64,
    sid: u64,
    tid: u32,
}

/// What a request produced: the raw frames (payload frames included).
fn frames(conn: &mut Conn) -> Vec<Vec<u8>> {
    conn.take_output()
}

impl Client {
    /// `proxy`: accepted on `rdma_proxy_socket` from an allowed peer (as the worker marks it).
    fn new(shared: &Arc<Shared>, id: u64, proxy: bool) -> Client {
        shared.register_conn(id, 0);
        let local: Option<SocketAddr> = Some("127.0.0.1:445".parse().expect("addr"));
        let mut conn = Conn::new(id, shared.clone(), local, None, Instant::now());
        if proxy {
            conn.set_via_rdma_proxy();
        }
        let mut c = Client {
            conn,
            mid: 0,
            sid: 0,
            tid: 0,
        };
        let neg = c.call(cmd::NEGOTIATE, body_negotiate(&[0x0302]));
        assert_eq!(neg.0.status, status::SUCCESS);
        let first = c.call(
            cmd::SESSION_SETUP,
            body_session_setup(&conn_harness::ntlm_negotiate()),
        );
        c.sid = first.0.session_id;
        let auth = c.call(
            cmd::SESSION_SETUP,
            body_session_setup(&conn_harness::ntlm_anonymous_authenticate()),
        );
        assert_eq!(auth.0.status, status::SUCCESS);
        let tree = c.call(cmd::TREE_CONNECT, body_tree_connect("\\\\sim\\data"));
        assert_eq!(tree.0.status, status::SUCCESS);
        c.tid = tree.0.tree_id;
        c
    }

    /// Sends a request; returns its MessageId.
    fn send(&mut self, command: u16, body: Vec<u8>) -> u64 {
        let mid = self.mid;
        self.mid += 1;
        let msg = conn_harness::request(command, mid, self.sid, self.tid, &body);
        self.conn.on_message(&msg, Instant::now());
        mid
    }

    /// Sends a request and returns the header and message of its (only) SMB2 response frame.
    fn call(&mut self, command: u16, body: Vec<u8>) -> (Header, Vec<u8>) {
        self.send(command, body);
        let out = frames(&mut self.conn);
        assert_eq!(out.len(), 1, "one response frame");
        let msg = out[0][4..].to_vec();
        (Header::decode(&msg).expect("header"), msg)
    }

    fn create(&mut self, name: &str) -> (u64, u64) {
        let (h, m) = self.call(
            cmd::CREATE,
            body_create(name, FILE_OVERWRITE_IF, NON_DIRECTORY),
        );
        assert_eq!(h.status, status::SUCCESS, "CREATE");
        let b = &m[64..];
        let u = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        (u(64), u(72))
    }
}

fn fid(w: &mut Writer, f: (u64, u64)) {
    w.u64(f.0).u64(f.1);
}

/// A WRITE as the Linux client sends it on an RDMA channel: Length 0, DataOffset 0,
/// RemainingBytes = the count, one buffer descriptor in WriteChannelInfo.
fn body_write_rdma(f: (u64, u64), offset: u64, len: u32, channel: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(49).u16(0).u32(0).u64(offset);
    fid(&mut w, f);
    w.u32(channel).u32(len).u16(64 + 48).u16(16).u32(0);
    w.u64(0x1000).u32(0x77).u32(len);
    w.buf
}

/// A READ on an RDMA channel with one buffer descriptor in ReadChannelInfo.
fn body_read_rdma(f: (u64, u64), offset: u64, len: u32, channel: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u16(49).u8(0).u8(0).u32(len).u64(offset);
    fid(&mut w, f);
    w.u32(0).u32(channel).u32(0).u16(64 + 48).u16(16);
    w.u64(0x2000).u32(0x78).u32(len);
    w.buf
}

fn payload_body(mid: u64, data: &[u8]) -> Vec<u8> {
    let mut b = mid.to_le_bytes().to_vec();
    b.extend_from_slice(data);
    b
}

fn status_of(frame: &[u8]) -> NtStatus {
    Header::decode(&frame[4..]).expect("header").status
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4"))
}

#[test]
fn rdma_write_takes_the_payload_and_rdma_read_sends_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let share = share.canonicalize().expect("canonical");
    let shared = shared(share.clone());
    let mut c = Client::new(&shared, 1, true);
    let f = c.create("rdma.bin");
    // Below the size the worker hands to its io_uring (64 KiB), so the WRITE completes here;
    // an RDMA-channel READ is always read in place.
    let data: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8).collect();

    // WRITE: smbdirectd's payload frame for the next MessageId, then the request.
    c.conn.on_rdma_payload(&payload_body(c.mid, &data));
    c.send(
        cmd::WRITE,
        body_write_rdma(f, 0, data.len() as u32, CHANNEL_RDMA_V1_INVALIDATE),
    );
    let out = frames(&mut c.conn);
    assert_eq!(out.len(), 1);
    assert_eq!(status_of(&out[0]), status::SUCCESS, "RDMA WRITE");
    assert_eq!(u32_at(&out[0][4..], 64 + 4), data.len() as u32, "Count");
    assert_eq!(std::fs::read(share.join("rdma.bin")).expect("file"), data);

    // READ: the payload frame first, then the response with DataLength 0.
    let mid = c.send(cmd::READ, body_read_rdma(f, 1000, 50_000, CHANNEL_RDMA_V1));
    let out = frames(&mut c.conn);
    assert_eq!(out.len(), 2, "payload frame and response");
    assert_eq!(out[0][0], payload_frame::KIND);
    let len = u32::from_be_bytes([0, out[0][1], out[0][2], out[0][3]]) as usize;
    assert_eq!(len, out[0].len() - 4);
    assert_eq!(
        u64::from_le_bytes(out[0][4..12].try_into().expect("8")),
        mid
    );
    assert_eq!(&out[0][12..], &data[1000..51_000]);
    assert_eq!(
        out[0],
        payload_frame::encode(mid, &data[1000..51_000]).expect("frame")
    );
    let resp = &out[1][4..];
    assert_eq!(status_of(&out[1]), status::SUCCESS);
    assert_eq!(u32_at(resp, 64 + 4), 0, "DataLength");
    assert_eq!(u32_at(resp, 64 + 8), 50_000, "DataRemaining");
    // The response ends at DataOffset (80), without the empty-Buffer byte of an inline
    // response: the Linux client reads an RDMA READ response only that far and would take a
    // byte more for the start of the next message.
    assert_eq!(resp[64 + 2], 80, "DataOffset");
    assert_eq!(resp.len(), 80, "nothing after DataOffset");
}

#[test]
fn rdma_channels_are_refused_elsewhere_and_without_payload() {
    let dir = tempfile::tempdir().expect("tmp");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let shared = shared(share.canonicalize().expect("canonical"));

    // A connection that did not come through smbdirectd.
    let mut tcp = Client::new(&shared, 1, false);
    let f = tcp.create("a.bin");
    let (h, _) = tcp.call(cmd::WRITE, body_write_rdma(f, 0, 10, CHANNEL_RDMA_V1));
    assert_eq!(h.status, status::INVALID_PARAMETER);
    let (h, _) = tcp.call(cmd::READ, body_read_rdma(f, 0, 10, CHANNEL_RDMA_V1));
    assert_eq!(h.status, status::INVALID_PARAMETER);
    // Channel NONE still reads inline.
    let (h, _) = tcp.call(cmd::READ, body_read(f, 0, 10));
    assert_eq!(h.status, status::END_OF_FILE);

    // Through smbdirectd, but no payload, or one of the wrong length or MessageId.
    let mut sd = Client::new(&shared, 2, true);
    let f = sd.create("b.bin");
    let (h, _) = sd.call(cmd::WRITE, body_write_rdma(f, 0, 10, CHANNEL_RDMA_V1));
    assert_eq!(h.status, status::INVALID_PARAMETER, "no payload");
    sd.conn.on_rdma_payload(&payload_body(sd.mid, &[1; 9]));
    let (h, _) = sd.call(cmd::WRITE, body_write_rdma(f, 0, 10, CHANNEL_RDMA_V1));
    assert_eq!(h.status, status::INVALID_PARAMETER, "short payload");
    sd.conn.on_rdma_payload(&payload_body(sd.mid + 5, &[1; 10]));
    let (h, _) = sd.call(cmd::WRITE, body_write_rdma(f, 0, 10, CHANNEL_RDMA_V1));
    assert_eq!(h.status, status::INVALID_PARAMETER, "other MessageId");
    sd.conn.on_rdma_payload(&payload_body(sd.mid, &[1; 10]));
    let (h, _) = sd.call(cmd::WRITE, body_write_rdma(f, 0, 10, CHANNEL_RDMA_V1));
    assert_eq!(h.status, status::SUCCESS, "matching payload");
}

#[test]
fn payload_frames_are_bounded_and_refused_off_the_proxy() {
    let dir = tempfile::tempdir().expect("tmp");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let shared = shared(share.canonicalize().expect("canonical"));
    let mut tcp = Client::new(&shared, 1, false);
    tcp.conn.on_rdma_payload(&payload_body(1, b"x"));
    assert!(tcp.conn.closed, "payload frame on a non-proxy connection");
    let mut sd = Client::new(&shared, 2, true);
    for i in 0..8 {
        sd.conn.on_rdma_payload(&payload_body(100 + i, b"x"));
    }
    assert!(!sd.conn.closed);
    sd.conn.on_rdma_payload(&payload_body(200, b"x"));
    assert!(sd.conn.closed, "more payloads held than a compound can use");
}

// ---- the shared area (smb_proto::area_frame, smbd::rdma_area) ------------------------------

use smb_proto::area_frame::{AreaFrame, Op};
use smbd::metrics::RdmaPayload as Moved;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

const AREA: u64 = 1 << 20;

/// A sealed memfd of `len` bytes, as smbdirectd makes its area (`seal`: F_SEAL_SHRINK).
fn memfd(len: u64, seal: bool) -> std::fs::File {
    // SAFETY: a NUL-terminated name and valid flags; the descriptor is fresh and ours.
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
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on our descriptor.
        #[allow(unsafe_code)]
        let r = unsafe {
            libc::fcntl(
                f.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        };
        assert_eq!(r, 0, "seal");
    }
    f
}

fn attach(c: &mut Client, area: &std::fs::File) {
    c.conn
        .attach_rdma_area(OwnedFd::from(area.try_clone().expect("dup")))
        .expect("attach");
}

fn area_body(op: Op, message_id: u64, offset: u64, length: u32) -> Vec<u8> {
    AreaFrame {
        op,
        message_id,
        offset,
        length,
    }
    .encode()[4..]
        .to_vec()
}

fn area_frame_of(frame: &[u8]) -> AreaFrame {
    assert_eq!(frame[0], smb_proto::area_frame::KIND, "an area frame");
    AreaFrame::decode_body(&frame[4..]).expect("area frame")
}

#[test]
fn rdma_write_and_read_through_the_shared_area() {
    let dir = tempfile::tempdir().expect("tmp");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let share = share.canonicalize().expect("canonical");
    let shared = shared(share.clone());
    let area = memfd(AREA, true);
    let mut c = Client::new(&shared, 1, true);
    attach(&mut c, &area);
    let f = c.create("area.bin");
    let data: Vec<u8> = (0..60_000u32).map(|i| (i * 13 % 251) as u8).collect();

    // WRITE: smbdirectd put the data at 4096 and names it; smbd writes the file from the
    // range itself and gives it back only once the write is done.
    area.write_all_at(&data, 4096).expect("fill");
    c.conn
        .on_area_frame(&area_body(Op::Write, c.mid, 4096, data.len() as u32));
    assert!(
        frames(&mut c.conn).is_empty(),
        "the range is held until its WRITE has written it"
    );
    c.send(
        cmd::WRITE,
        body_write_rdma(f, 0, data.len() as u32, CHANNEL_RDMA_V1),
    );
    let out = frames(&mut c.conn);
    assert_eq!(out.len(), 2, "Release and response: {out:?}");
    let rel = area_frame_of(&out[0]);
    assert_eq!((rel.op, rel.offset), (Op::Release, 4096));
    assert_eq!(
        status_of(&out[1]),
        status::SUCCESS,
        "RDMA WRITE from the area"
    );
    assert_eq!(std::fs::read(share.join("area.bin")).expect("file"), data);
    // Written from the area, not from a copy of it (nor from a payload frame).
    assert_eq!(
        shared.metrics.rdma_payload_total(Moved::WriteArea),
        data.len() as u64
    );
    assert_eq!(shared.metrics.rdma_payload_total(Moved::WriteStream), 0);

    // READ: a grant at 65536, the file read straight into it, its descriptor back.
    c.conn
        .on_area_frame(&area_body(Op::Grant, c.mid, 65536, 1 << 16));
    assert!(frames(&mut c.conn).is_empty(), "a grant is only held");
    let mid = c.send(cmd::READ, body_read_rdma(f, 1000, 50_000, CHANNEL_RDMA_V1));
    let out = frames(&mut c.conn);
    assert_eq!(out.len(), 2, "area frame and response");
    assert_eq!(
        area_frame_of(&out[0]),
        AreaFrame {
            op: Op::Read,
            message_id: mid,
            offset: 65536,
            length: 50_000
        }
    );
    let mut got = vec![0u8; 50_000];
    area.read_exact_at(&mut got, 65536).expect("area");
    assert!(got == data[1000..51_000], "READ data in the granted slot");
    let resp = &out[1][4..];
    assert_eq!(status_of(&out[1]), status::SUCCESS);
    assert_eq!(u32_at(resp, 64 + 4), 0, "DataLength");
    assert_eq!(u32_at(resp, 64 + 8), 50_000, "DataRemaining");
    assert_eq!(shared.metrics.rdma_payload_total(Moved::ReadArea), 50_000);
    assert_eq!(shared.metrics.rdma_payload_total(Moved::ReadStream), 0);

    // A WRITE that fails (an unknown handle) gives its range back too, after it failed.
    area.write_all_at(&data[..100], 8192).expect("fill");
    c.conn
        .on_area_frame(&area_body(Op::Write, c.mid, 8192, 100));
    c.send(cmd::WRITE, body_write_rdma((9, 9), 0, 100, CHANNEL_RDMA_V1));
    let out = frames(&mut c.conn);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(area_frame_of(&out[0]).op, Op::Release);
    assert_eq!(status_of(&out[1]), status::FILE_CLOSED);
    // Area data for a request that is no RDMA WRITE goes back at the message's end.
    c.conn
        .on_area_frame(&area_body(Op::Write, c.mid, 8192, 100));
    c.send(cmd::READ, body_read(f, 0, 10));
    let out = frames(&mut c.conn);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(status_of(&out[0]), status::SUCCESS);
    assert_eq!(area_frame_of(&out[1]).op, Op::Release);
    assert_eq!(
        shared.metrics.rdma_payload_total(Moved::WriteArea),
        data.len() as u64
    );

    // A READ that fails gives its grant back (Release), and the slot may be granted again.
    c.conn
        .on_area_frame(&area_body(Op::Grant, c.mid, 65536, 1 << 16));
    c.send(cmd::READ, body_read_rdma((9, 9), 0, 10, CHANNEL_RDMA_V1));
    let out = frames(&mut c.conn);
    assert_eq!(area_frame_of(&out[1]).op, Op::Release, "{out:?}");
    assert_eq!(status_of(&out[0]), status::FILE_CLOSED);
    c.conn
        .on_area_frame(&area_body(Op::Grant, c.mid, 65536, 1 << 16));
    assert!(!c.conn.closed);
}

/// Every descriptor smbd receives is checked before anything of the area is touched: outside
/// the area, inside another connection's range, overlapping one the connection holds already,
/// on a connection without an area, an op smbdirectd does not send, an unsealed memfd.
#[test]
fn bad_area_descriptors_close_the_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let shared = shared(share.canonicalize().expect("canonical"));
    let area = memfd(AREA, true);
    let proxy = |id: u64| {
        let mut c = Client::new(&shared, id, true);
        attach(&mut c, &area);
        c
    };

    let mut c = proxy(1);
    c.conn
        .on_area_frame(&area_body(Op::Write, 1, AREA - 10, 100));
    assert!(c.conn.closed, "out of range");
    let mut c = proxy(2);
    c.conn
        .on_area_frame(&area_body(Op::Grant, 1, u64::MAX - 5, 100));
    assert!(c.conn.closed, "offset overflow");
    let mut c = proxy(3);
    c.conn.on_area_frame(&area_body(Op::Grant, 1, 0, 0));
    assert!(c.conn.closed, "empty range");

    let mut holder = proxy(4);
    holder.conn.on_area_frame(&area_body(Op::Grant, 7, 0, 4096));
    assert!(!holder.conn.closed);
    let mut other = proxy(5);
    other
        .conn
        .on_area_frame(&area_body(Op::Write, 7, 4000, 200));
    assert!(other.conn.closed, "another connection's slot");
    let mut other = proxy(6);
    other.conn.on_area_frame(&area_body(Op::Grant, 8, 0, 10));
    assert!(other.conn.closed, "another connection's slot (grant)");

    holder.conn.on_area_frame(&area_body(Op::Grant, 9, 100, 10));
    assert!(holder.conn.closed, "double use of its own slot");

    let mut plain = Client::new(&shared, 7, true);
    plain.conn.on_area_frame(&area_body(Op::Write, 1, 0, 10));
    assert!(plain.conn.closed, "no area was passed");
    let mut c = proxy(8);
    c.conn.on_area_frame(&area_body(Op::Read, 1, 8192, 10));
    assert!(c.conn.closed, "Read comes from smbd, not to it");
    let mut c = proxy(9);
    let mut bad = area_body(Op::Grant, 1, 8192, 10);
    bad[1] = 1;
    c.conn.on_area_frame(&bad);
    assert!(c.conn.closed, "reserved bytes");

    // The dead holder's ranges are free again.
    holder.conn.shutdown(Instant::now());
    drop(holder);
    let mut c = proxy(10);
    c.conn.on_area_frame(&area_body(Op::Grant, 1, 0, 4096));
    assert!(!c.conn.closed, "freed with its connection");

    let mut c = Client::new(&shared, 11, true);
    let err = c
        .conn
        .attach_rdma_area(OwnedFd::from(memfd(AREA, false)))
        .expect_err("unsealed");
    assert!(err.to_string().contains("sealed"), "{err}");
    let mut tcp = Client::new(&shared, 12, false);
    assert!(tcp
        .conn
        .attach_rdma_area(OwnedFd::from(memfd(AREA, true)))
        .is_err());
}
