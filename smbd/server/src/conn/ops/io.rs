//! READ, WRITE and FLUSH (MS-SMB2 3.3.5.11 - 3.3.5.13), synchronously or through the
//! worker's io_uring.

use smb_proto::NtStatus;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;

use smb_proto::cursor::Writer;
use smb_proto::header::flags as hflags;
use smb_proto::header::HEADER_SIZE;
use smb_proto::{
    netbios, payload_frame, status, write_read_response_head, FileId, Header, ReadRequest,
    Response, WriteRequest, READ_RESPONSE_HEAD,
};

use super::{
    engine_status, io_status, parent_and_name, update_dos_fd, APPEND_DATA, EXECUTE,
    FILE_ACTION_MODIFIED, MAX_FILE_SIZE, READ_DATA, RING_IO_MIN, WRITE_CHANGE, WRITE_DATA,
};
use crate::conn::{err, ChainCtx, Conn, FileIo, FileOp, Open, Outcome, RdmaPayload, Signer};
use crate::metrics::RdmaPayload as Moved;
use crate::rdma_area::AreaRange;

/// [`crate::write_time::HOLD_LEASE`] in FILETIME units (100 ns).
fn hold_lease_ft() -> u64 {
    crate::write_time::HOLD_LEASE.as_secs() * 10_000_000
}

/// Channel values of READ/WRITE requests (MS-SMB2 2.2.19).
const SMB2_CHANNEL_RDMA_V1: u32 = 1;
const SMB2_CHANNEL_RDMA_V1_INVALIDATE: u32 = 2;
use crate::locking::{self, Reply, Status};

impl Conn {
    /// The answer to a READ whose `n` bytes went on an RDMA channel (MS-SMB2 2.2.20): no
    /// inline data, the count in DataRemaining (smbdirectd has written the data first).
    fn rdma_read_reply(&self, n: u32) -> Outcome {
        Outcome::Reply(
            status::SUCCESS,
            Response::Read {
                data: Vec::new(),
                data_remaining: n,
                padding: self.read_body_padding,
            },
        )
    }

    pub(crate) fn flush(&mut self, fid: FileId, ctx: &mut ChainCtx) -> Outcome {
        let (_, o) = match self.open_for(fid, ctx) {
            Ok(found) => found,
            Err(st) => return err(st),
        };
        if o.access & (WRITE_DATA | APPEND_DATA) == 0 {
            return err(status::ACCESS_DENIED);
        }
        if let Some(f) = &o.file {
            if let Err(e) = f.sync_data() {
                return err(io_status(&e));
            }
        }
        // A FLUSH brings a write's pending LastWriteTime update forward (smbtorture
        // smb2.timestamps.delayed-write-vs-flush; crate::write_time).
        if let Ok(v) = self.resolve_fid(fid, ctx) {
            if self.opens.get_mut(&v).is_some_and(|o| o.write_time.flush()) {
                self.touch_write_time(v);
            }
        }
        Outcome::Reply(status::SUCCESS, Response::Flush)
    }

    /// Before data goes through the open `v` (a write, a size change): the open takes its
    /// file's LastWriteTime hold unless it holds it already (crate::write_time,
    /// crate::dosattr), so the kernel mtime the data moves is not reported. In the steady
    /// state this is one check of the open's state, no system call.
    pub(crate) fn hold_write_time(&mut self, v: u64) {
        use std::os::unix::fs::MetadataExt;
        let Some(o) = self.opens.get(&v) else {
            return;
        };
        if o.write_time.holding() || o.is_dir {
            return;
        }
        // The file's own object (a named stream's base file: times are per file).
        let Some(obj) = o.object() else {
            return;
        };
        let now_ft = self.shared.clock.filetime();
        let until = now_ft.saturating_add(hold_lease_ft());
        let key = match obj.metadata() {
            Ok(m) => (m.dev(), m.ino()),
            Err(e) => {
                tracing::debug!(conn = self.id, %e, "taking the LastWriteTime hold");
                return;
            }
        };
        // This node counts once in the file's holders (crate::dosattr).
        let first_here = self.shared.take_write_hold(key);
        update_dos_fd(obj, now_ft, |d, reported, kernel| {
            d.write = reported;
            d.write_guard = kernel;
            if first_here {
                d.take_hold(now_ft, until);
            } else {
                d.renew_hold(until);
            }
        });
        let now = self.now;
        if let Some(at) = self.opens.get_mut(&v).map(|o| o.write_time.hold(now, key)) {
            self.shared.arm_write_time(self.id, v, at, now);
        }
    }

    /// A timer of the open `v` fired at `now`: its hold on the file's LastWriteTime is
    /// extended when due (crate::write_time::HOLD_RENEW).
    pub(crate) fn renew_write_hold(&mut self, v: u64, now: std::time::Instant) {
        let Some(next) = self.opens.get_mut(&v).and_then(|o| o.write_time.renew(now)) else {
            return;
        };
        if let Some(obj) = self.opens.get(&v).and_then(|o| o.object()) {
            let now_ft = self.shared.clock.filetime();
            let until = now_ft.saturating_add(hold_lease_ft());
            update_dos_fd(obj, now_ft, |d, _, _| d.renew_hold(until));
        }
        self.shared.arm_write_time(self.id, v, next, now);
    }

    /// The open `v` closes or its durable handle disconnects: a LastWriteTime update its
    /// writes still owe happens now, and its hold goes (the file's, when no other open of
    /// this node holds it), the kernel mtime recorded beside the time (crate::dosattr).
    pub(crate) fn settle_write_time(&mut self, v: u64) {
        let Some(o) = self.opens.get_mut(&v) else {
            return;
        };
        let update = o.write_time.close();
        let released = o.write_time.release();
        if !update && released.is_none() {
            return;
        }
        let last = released.is_some_and(|k| self.shared.drop_write_hold(k));
        let Some(obj) = self.opens.get(&v).and_then(|o| o.object()) else {
            return;
        };
        let now_ft = self.shared.clock.filetime();
        update_dos_fd(obj, now_ft, |d, reported, kernel| {
            d.write = if update { now_ft } else { reported };
            d.write_guard = kernel;
            if last {
                d.release_hold();
            }
        });
    }

    /// A write went through the open `v`: its first starts the delayed LastWriteTime update
    /// (MS-FSA 2.1.4.17; crate::write_time).
    pub(crate) fn note_write(&mut self, v: u64) {
        let now = self.now;
        let due = self.opens.get_mut(&v).and_then(|o| o.write_time.wrote(now));
        if let Some(due) = due {
            self.shared.arm_write_time(self.id, v, due, now);
        }
    }

    /// Set the LastWriteTime of the open `v`'s file to the current time (the server's
    /// WallClock): a delayed update, or one a FLUSH, SetEOF, FileBasicInformation or the
    /// close brings forward. Recorded with the kernel mtime it stands for (crate::dosattr).
    pub(crate) fn touch_write_time(&self, v: u64) {
        let Some(obj) = self.opens.get(&v).and_then(|o| o.object()) else {
            return;
        };
        let now_ft = self.shared.clock.filetime();
        update_dos_fd(obj, now_ft, |d, _, kernel| {
            d.write = now_ft;
            d.write_guard = kernel;
        });
    }

    pub(super) fn check_io(
        &self,
        o: &Open,
        offset: u64,
        length: u64,
        write: bool,
    ) -> Result<(), NtStatus> {
        let Some(lo) = o.lock_open else {
            return Ok(());
        };
        if length == 0 {
            return Ok(());
        }
        // An I/O grant says this check would answer Success and break nothing: no round trip.
        if self.shared.io_granted(lo) {
            return Ok(());
        }
        match self.shared.check_io_with_grant(
            self.id,
            lo,
            locking::FileId(o.stable_id),
            locking::Request::CheckIoGrant {
                open: lo,
                offset,
                length,
                write,
            },
        ) {
            Reply::IoGranted { .. } | Reply::Done(Status::Success) => Ok(()),
            Reply::Done(st) => Err(engine_status(st)),
            _ => Ok(()),
        }
    }

    /// A size change through SET_INFO breaks Level II oplocks and read leases like a write
    /// does (MS-FSA 2.1.4.12 for SET_END_OF_FILE / SET_ALLOCATION; smbtorture oplock.batch11).
    /// The lock engine breaks read caching on a write I/O check; the probe range sits at the
    /// very end of the offset space so it answers no byte-range question anyone asked. Like
    /// a WRITE it uses the open's I/O grant (no read caching a write would break: nothing to
    /// ask) or asks for one.
    pub(super) fn break_read_caching(&self, o: &Open) {
        if let Some(lo) = o.lock_open {
            if self.shared.io_granted(lo) {
                return;
            }
            let _ = self.shared.check_io_with_grant(
                self.id,
                lo,
                locking::FileId(o.stable_id),
                locking::Request::CheckIoGrant {
                    open: lo,
                    offset: u64::MAX - 1,
                    length: 1,
                    write: true,
                },
            );
        }
    }

    /// Whether a READ/WRITE's Channel moves its data by RDMA (MS-SMB2 2.2.19, 2.2.21). Only
    /// smbdirectd's connections may ask (3.3.5.12/13: INVALID_PARAMETER otherwise), and not
    /// in an encrypted request, whose channel info smbdirectd cannot see, nor on a bound
    /// channel, whose payload frames arrive on another connection.
    fn rdma_channel(&self, channel: u32, ctx: &ChainCtx) -> Result<bool, NtStatus> {
        match channel {
            SMB2_CHANNEL_RDMA_V1 | SMB2_CHANNEL_RDMA_V1_INVALIDATE => {
                if self.via_rdma_proxy
                    && !ctx.encrypted
                    && ctx.seq.is_none()
                    && self.cur_channel.is_none()
                {
                    Ok(true)
                } else {
                    Err(status::INVALID_PARAMETER)
                }
            }
            // Other values (SMB2_CHANNEL_NONE, RDMA_TRANSFORM) read and write inline, as before.
            _ => Ok(false),
        }
    }

    pub(crate) fn read(&mut self, r: ReadRequest, hdr: &Header, ctx: &mut ChainCtx) -> Outcome {
        let rdma = match self.rdma_channel(r.channel, ctx) {
            Ok(rdma) => rdma,
            Err(st) => return err(st),
        };
        let v = match self.resolve_fid(r.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        if r.length > self.max_io() {
            return err(status::INVALID_PARAMETER);
        }
        let Some(o) = self.opens.get(&v) else {
            return err(status::FILE_CLOSED);
        };
        if o.is_dir {
            return err(status::INVALID_DEVICE_REQUEST);
        }
        if o.access & (READ_DATA | EXECUTE) == 0 {
            return err(status::ACCESS_DENIED);
        }
        if r.offset > i64::MAX as u64 || r.offset.saturating_add(r.length as u64) > i64::MAX as u64
        {
            return err(status::INVALID_PARAMETER);
        }
        if let Err(st) = self.check_io(o, r.offset, r.length as u64, false) {
            return err(st);
        }
        let Some(f) = &o.file else {
            return err(status::INVALID_DEVICE_REQUEST);
        };
        // An RDMA READ's data goes out in a payload frame ahead of the response, which the
        // ring's in-place response buffer does not build: it is read here.
        if ctx.single && r.length as usize >= RING_IO_MIN && !rdma {
            let file = match f.try_clone() {
                Ok(f) => f,
                Err(e) => return err(io_status(&e)),
            };
            let padding = self.read_body_padding;
            let data_off = netbios::HEADER_LEN + READ_RESPONSE_HEAD + padding as usize;
            return Outcome::Deferred(Box::new(FileIo {
                file,
                offset: r.offset,
                done: 0,
                volatile: v,
                op: FileOp::Read {
                    // The worker supplies a (recycled) buffer on submission.
                    buf: Vec::new(),
                    data_off,
                    len: r.length as usize,
                    minimum: r.minimum_count,
                    padding,
                },
                hdr: Header::default(),
                signer: None,
                enc: None,
            }));
        }
        // smbdirectd's shared area: the data is read straight into the slot it granted for
        // this READ, and only the slot's descriptor goes back on the stream.
        let grant = match (&self.rdma_area, rdma) {
            (Some(a), true) => a.find(hdr.message_id),
            _ => None,
        };
        if let Some(g) = grant {
            if r.length > g.length {
                // smbdirectd grants MaxReadWriteSize, which bounds every READ: not reached
                // with a working proxy.
                tracing::warn!(
                    conn = self.id,
                    len = r.length,
                    grant = g.length,
                    "READ larger than its area grant"
                );
                return err(status::INVALID_PARAMETER);
            }
            let range = match self.rdma_area.as_ref().map(|a| a.take(g.offset)) {
                Some(Ok(range)) => range,
                // Not reached: `find` only returns holds this connection may take.
                _ => return err(status::INTERNAL_ERROR),
            };
            // Large lone READs go through the ring like any other (FileOp::AreaRead): the
            // kernel reads the file into the range itself.
            if ctx.single && r.length as usize >= RING_IO_MIN {
                let file = match f.try_clone() {
                    Ok(f) => f,
                    Err(e) => {
                        self.give_back(range);
                        return err(io_status(&e));
                    }
                };
                return Outcome::Deferred(Box::new(FileIo {
                    file,
                    offset: r.offset,
                    done: 0,
                    volatile: v,
                    op: FileOp::AreaRead {
                        range,
                        len: r.length as usize,
                        minimum: r.minimum_count,
                        padding: self.read_body_padding,
                    },
                    hdr: Header::default(),
                    signer: None,
                    enc: None,
                }));
            }
            let mut n = 0usize;
            let mut failed = None;
            while n < r.length as usize {
                match range.map().pread_into(
                    f,
                    r.offset.saturating_add(n as u64),
                    range.offset() as usize + n,
                    r.length as usize - n,
                ) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                self.give_back(range);
                return err(io_status(&e));
            }
            if (n == 0 && r.length > 0) || (n as u32) < r.minimum_count {
                self.give_back(range);
                return err(status::END_OF_FILE);
            }
            if let Some(o) = self.opens.get_mut(&v) {
                o.position = r.offset + n as u64;
            }
            self.area_read_done(range, n);
            return self.rdma_read_reply(n as u32);
        }
        // An RDMA READ's data is read behind the room for its payload frame's header.
        let head = if rdma { payload_frame::HEADER_LEN } else { 0 };
        let mut buf = vec![0u8; head + r.length as usize];
        let mut n = 0usize;
        while head + n < buf.len() {
            match f.read_at(&mut buf[head + n..], r.offset.saturating_add(n as u64)) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return err(io_status(&e)),
            }
        }
        buf.truncate(head + n);
        if (n == 0 && r.length > 0) || (n as u32) < r.minimum_count {
            return err(status::END_OF_FILE);
        }
        if let Some(o) = self.opens.get_mut(&v) {
            o.position = r.offset + n as u64;
        }
        if rdma {
            // smbdirectd RDMA-WRITEs the payload into the client's buffers before it sends
            // the response, which carries DataLength 0 and the count sent on the channel in
            // DataRemaining (MS-SMB2 2.2.20).
            self.rdma_inline_bytes += n as u64;
            self.shared
                .metrics
                .rdma_payload(Moved::ReadStream, n as u64);
            if let Err(e) = payload_frame::write_header(&mut buf, hdr.message_id) {
                // Not reached: max_io() keeps READs far below a frame's 16 MiB.
                tracing::warn!(conn = self.id, "RDMA READ payload: {e}");
                return err(status::INVALID_PARAMETER);
            }
            self.push_out(buf);
            return self.rdma_read_reply(n as u32);
        }
        Outcome::Reply(
            status::SUCCESS,
            Response::Read {
                data: buf,
                data_remaining: 0,
                padding: self.read_body_padding,
            },
        )
    }

    pub(crate) fn write(
        &mut self,
        mut w: WriteRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
    ) -> Outcome {
        let mut area = None;
        match self.rdma_channel(w.channel, ctx) {
            Ok(false) => {}
            Ok(true) => {
                // The data smbdirectd RDMA-READ from the client's buffers, sent just before
                // this request (in the shared area or on the stream); its length is
                // RemainingBytes (Length is 0, MS-SMB2 2.2.21).
                let at = self
                    .rdma_payloads
                    .iter()
                    .position(|(id, _)| *id == hdr.message_id);
                let Some((_, payload)) = at.map(|i| self.rdma_payloads.swap_remove(i)) else {
                    return err(status::INVALID_PARAMETER);
                };
                let len = match &payload {
                    RdmaPayload::Inline(d) => d.len(),
                    RdmaPayload::Area(r) => r.len(),
                };
                if !w.data.is_empty() || len != w.remaining_bytes as usize {
                    if let RdmaPayload::Area(r) = payload {
                        self.give_back(r);
                    }
                    return err(status::INVALID_PARAMETER);
                }
                match payload {
                    RdmaPayload::Inline(d) => w.data = d,
                    RdmaPayload::Area(r) => area = Some(r),
                }
            }
            Err(st) => return err(st),
        }
        let out = self.write_data(w, &mut area, ctx);
        // A WRITE from the area that did not go to the ring is over (written, or refused
        // before): the range goes back now. One in the ring goes back when it completes.
        if let Some(r) = area.take() {
            self.give_back(r);
        }
        out
    }

    /// The WRITE with its data: `w.data`, or the area range in `area` (smbdirectd's shared
    /// area), which this takes when it hands the write to the ring.
    fn write_data(
        &mut self,
        w: WriteRequest,
        area: &mut Option<AreaRange>,
        ctx: &mut ChainCtx,
    ) -> Outcome {
        let len = area.as_ref().map_or(w.data.len(), |r| r.len());
        let v = match self.resolve_fid(w.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        if len as u64 > self.max_io() as u64 {
            return err(status::INVALID_PARAMETER);
        }
        let Some(o) = self.opens.get(&v) else {
            return err(status::FILE_CLOSED);
        };
        if o.is_dir {
            return err(status::INVALID_DEVICE_REQUEST);
        }
        if o.access & (WRITE_DATA | APPEND_DATA) == 0 {
            return err(status::ACCESS_DENIED);
        }
        if o.file.is_none() {
            return err(status::INVALID_DEVICE_REQUEST);
        }
        // Offsets past MAXLONGLONG and writes ending past the largest file size an NTFS volume
        // supports are invalid (MS-FSA 2.1.5.3); empty writes are no-ops.
        let offset = w.offset;
        let end = offset.checked_add(len as u64);
        if offset > i64::MAX as u64 || end.is_none_or(|e| e > i64::MAX as u64) {
            return err(status::INVALID_PARAMETER);
        }
        if len == 0 {
            return Outcome::Reply(status::SUCCESS, Response::Write { count: 0 });
        }
        if offset >= MAX_FILE_SIZE {
            return err(status::INVALID_PARAMETER);
        }
        if let Err(st) = self.check_io(o, offset, len as u64, true) {
            return err(st);
        }
        // A write acknowledged on a persistent handle must survive the host, not only this
        // process (the client will not resend it after a failover); a client may also ask
        // for write-through itself (MS-SMB2 2.2.21, SMB 2.1 and later).
        let write_through = o.durable.as_ref().is_some_and(|d| d.is_persistent())
            || (w.flags & smb_proto::write_flags::WRITE_THROUGH != 0
                && self.dialect() >= smb_proto::dialect::SMB210);
        // The kernel mtime this write moves is not the LastWriteTime (crate::write_time).
        if !o.write_time.holding() {
            self.hold_write_time(v);
        }
        let Some(f) = self.opens.get(&v).and_then(|o| o.file.as_ref()) else {
            return err(status::FILE_CLOSED);
        };
        if ctx.single && len >= RING_IO_MIN {
            let file = match f.try_clone() {
                Ok(f) => f,
                Err(e) => return err(io_status(&e)),
            };
            // From the area, the ring's WRITE reads the range itself (FileOp::AreaWrite).
            let op = match area.take() {
                Some(range) => FileOp::AreaWrite {
                    range,
                    write_through,
                },
                None => FileOp::Write {
                    data: w.data,
                    write_through,
                },
            };
            return Outcome::Deferred(Box::new(FileIo {
                file,
                offset,
                done: 0,
                volatile: v,
                op,
                hdr: Header::default(),
                signer: None,
                enc: None,
            }));
        }
        let written = match area.as_ref() {
            Some(r) => write_all_from_area(f, r, offset),
            None => f.write_all_at(&w.data, offset),
        };
        self.note_write(v);
        if let Err(e) = written {
            return err(io_status(&e));
        }
        if area.is_some() {
            self.rdma_area_bytes += len as u64;
            self.shared
                .metrics
                .rdma_payload(Moved::WriteArea, len as u64);
        }
        let Some(o) = self.opens.get(&v) else {
            return err(status::FILE_CLOSED);
        };
        if write_through {
            if let Some(Err(e)) = o.file.as_ref().map(|f| f.sync_data()) {
                return err(io_status(&e));
            }
        }
        self.wrote(v, offset, len);
        Outcome::Reply(status::SUCCESS, Response::Write { count: len as u32 })
    }

    /// A write of `n` bytes at `offset` through the open `v` succeeded: change notification
    /// and the open's position.
    fn wrote(&mut self, v: u64, offset: u64, n: usize) {
        if let Some(o) = self.opens.get_mut(&v) {
            o.position = offset + n as u64;
            let (parent, name) = parent_and_name(&o.abs);
            self.shared
                .dir_changed(parent, FILE_ACTION_MODIFIED, WRITE_CHANGE, name);
        }
    }

    /// A READ read `n` bytes into its area range: smbdirectd gets the range back with the
    /// count (`Read`), RDMA-WRITEs those bytes to the client and then sends the response.
    fn area_read_done(&mut self, range: AreaRange, n: usize) {
        self.rdma_area_bytes += n as u64;
        self.shared.metrics.rdma_payload(Moved::ReadArea, n as u64);
        let back = smb_proto::area_frame::AreaFrame {
            op: smb_proto::area_frame::Op::Read,
            message_id: range.message_id(),
            offset: range.offset(),
            length: n as u32,
        };
        // The ledger's hold ends with the range; smbdirectd frees the slot on `Read`.
        drop(range);
        self.push_out(back.encode().to_vec());
    }

    /// Answer a READ/WRITE the ring finished: `res` is the byte count or an errno.
    pub(crate) fn complete_file_io(&mut self, io: FileIo, res: Result<usize, i32>) {
        let FileIo {
            offset,
            volatile,
            op,
            hdr,
            signer,
            enc,
            ..
        } = io;
        let n = match res {
            Ok(n) => n,
            Err(errno) => {
                if let FileOp::AreaRead { range, .. } | FileOp::AreaWrite { range, .. } = op {
                    self.give_back(range);
                }
                let st = io_status(&std::io::Error::from_raw_os_error(errno));
                self.deferred_reply(hdr, st, Response::Error { data: vec![] }, signer, enc);
                return;
            }
        };
        match op {
            FileOp::Read {
                mut buf,
                data_off,
                minimum,
                padding,
                ..
            } => {
                // The ring only gets READs of RING_IO_MIN or more bytes, so nothing read is
                // end of file (MS-SMB2 3.3.5.12), like a short read under MinimumCount.
                if n == 0 || (n as u32) < minimum {
                    self.deferred_reply(
                        hdr,
                        status::END_OF_FILE,
                        Response::Error { data: vec![] },
                        signer,
                        enc,
                    );
                    return;
                }
                if let Some(o) = self.opens.get_mut(&volatile) {
                    o.position = offset + n as u64;
                }
                buf.truncate(data_off + n);
                let mut h = hdr;
                if signer.is_some() && enc.is_none() {
                    h.flags |= hflags::SIGNED;
                }
                // The header and fixed body go in front of the data the ring read in place
                // (the NetBIOS header before them is emit_framed's).
                let msg = buf.get_mut(netbios::HEADER_LEN..).unwrap_or_default();
                if let Err(e) = write_read_response_head(msg, &h, 0, padding) {
                    // Not reached: the worker gives the ring a buffer of data_off + len bytes.
                    tracing::warn!(conn = self.id, "READ response in place: {e}");
                    let st = status::INTERNAL_ERROR;
                    self.deferred_reply(hdr, st, Response::Error { data: vec![] }, signer, enc);
                    return;
                }
                self.emit_framed(buf, signer, enc);
            }
            FileOp::AreaRead {
                range,
                minimum,
                padding,
                ..
            } => {
                // As for FileOp::Read: nothing read, or less than MinimumCount, is end of file.
                if n == 0 || (n as u32) < minimum {
                    self.give_back(range);
                    let st = status::END_OF_FILE;
                    self.deferred_reply(hdr, st, Response::Error { data: vec![] }, signer, enc);
                    return;
                }
                if let Some(o) = self.opens.get_mut(&volatile) {
                    o.position = offset + n as u64;
                }
                // The area frame goes first: smbdirectd RDMA-WRITEs the data, then sends the
                // response (DataLength 0, the count in DataRemaining: MS-SMB2 2.2.20).
                self.area_read_done(range, n);
                let body = Response::Read {
                    data: Vec::new(),
                    data_remaining: n as u32,
                    padding,
                };
                self.deferred_reply(hdr, status::SUCCESS, body, signer, enc);
            }
            FileOp::AreaWrite { range, .. } => {
                self.note_write(volatile);
                self.wrote(volatile, offset, n);
                self.rdma_area_bytes += n as u64;
                self.shared.metrics.rdma_payload(Moved::WriteArea, n as u64);
                // Written: the range is smbdirectd's again.
                self.give_back(range);
                self.deferred_reply(
                    hdr,
                    status::SUCCESS,
                    Response::Write { count: n as u32 },
                    signer,
                    enc,
                );
            }
            FileOp::Write { .. } => {
                self.note_write(volatile);
                self.wrote(volatile, offset, n);
                self.deferred_reply(
                    hdr,
                    status::SUCCESS,
                    Response::Write { count: n as u32 },
                    signer,
                    enc,
                );
            }
        }
    }

    pub(super) fn deferred_reply(
        &mut self,
        mut h: Header,
        st: NtStatus,
        body: Response,
        signer: Option<Signer>,
        enc: Option<u64>,
    ) {
        h.status = st;
        let mut w = Writer::with(Vec::with_capacity(4 + HEADER_SIZE + 16));
        w.bytes(&[0; 4]);
        h.encode(&mut w);
        body.encode_body(&mut w, 4);
        self.emit_framed(w.buf, signer, enc);
    }
}

/// pwrite(2) of all of `r`'s bytes to `f` at `offset`, straight from the shared area
/// (retried on EINTR and short writes, like `write_all_at`).
fn write_all_from_area(f: &std::fs::File, r: &AreaRange, offset: u64) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < r.len() {
        match r.map().pwrite_from(
            f,
            offset + done as u64,
            r.offset() as usize + done,
            r.len() - done,
        ) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(k) => done += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
