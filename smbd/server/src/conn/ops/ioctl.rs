//! IOCTL/FSCTL (MS-SMB2 3.3.5.15).

use std::os::unix::fs::FileExt;

use smb_proto::{fsctl, fsctl_buf, status, FileId, Header, IoctlRequest, NtStatus, Response};

use super::{
    io_status, update_dos, APPEND_DATA, ATTR_SPARSE, COPYCHUNK_MAX_CHUNKS,
    COPYCHUNK_MAX_CHUNK_SIZE, COPYCHUNK_MAX_TOTAL, EXECUTE, FSCTL_GET_COMPRESSION,
    FSCTL_LMR_REQUEST_RESILIENCY, FSCTL_SET_COMPRESSION, FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT,
    FSCTL_SMBTORTURE_FSP_ASYNC_SLEEP, FSCTL_SMBTORTURE_GLOBAL_READ_RESPONSE_BODY_PADDING8,
    READ_DATA, WRITE_ATTRIBUTES, WRITE_DATA,
};
use crate::conn::{err, ChainCtx, Conn, Open, Outcome};
use crate::sys;

impl Conn {
    pub(crate) fn ioctl(&mut self, i: IoctlRequest, _hdr: &Header, ctx: &mut ChainCtx) -> Outcome {
        if i.flags != smb_proto::IOCTL_IS_FSCTL {
            return err(status::NOT_SUPPORTED);
        }
        if i.max_output_response > self.max_io() || i.input.len() as u32 > self.max_io() {
            return err(status::INVALID_PARAMETER);
        }
        let reply = |output: Vec<u8>, fid: FileId| {
            Outcome::Reply(
                status::SUCCESS,
                Response::Ioctl {
                    ctl_code: i.ctl_code,
                    file_id: fid,
                    input: vec![],
                    output,
                },
            )
        };
        match i.ctl_code {
            fsctl::VALIDATE_NEGOTIATE_INFO => {
                let Some(n) = self.neg.as_ref() else {
                    return err(status::ACCESS_DENIED);
                };
                if n.dialect == smb_proto::dialect::SMB311 {
                    // 3.1.1 relies on preauth integrity instead; Windows drops the connection.
                    self.closed = true;
                    return Outcome::Nothing;
                }
                let Ok(v) = fsctl_buf::ValidateNegotiateInfo::decode(&i.input) else {
                    return err(status::INVALID_PARAMETER);
                };
                if v.capabilities != n.client_caps
                    || v.guid != n.client_guid
                    || v.security_mode != n.client_security_mode
                    || v.dialects != n.client_dialects
                {
                    // MS-SMB2 3.3.5.15.12: a mismatch means tampering: drop the connection.
                    self.closed = true;
                    return Outcome::Nothing;
                }
                if i.max_output_response < fsctl_buf::ValidateNegotiateResponse::SIZE {
                    return err(status::INVALID_PARAMETER);
                }
                let out = fsctl_buf::ValidateNegotiateResponse {
                    capabilities: n.server_caps,
                    guid: self.shared.server_guid,
                    security_mode: n.server_security_mode,
                    dialect: n.dialect,
                };
                reply(out.encode(), i.file_id)
            }
            fsctl::QUERY_NETWORK_INTERFACE_INFO => {
                // Not a handle-based FSCTL: a real FileId is a client error (Windows,
                // Samba bug 14788), not FILE_CLOSED.
                if i.file_id != FileId::RELATED {
                    return err(status::INVALID_PARAMETER);
                }
                // The address the client reached (loopback for a connection without one,
                // as in the simulated-time tests); 1 Gbit/s.
                let ip = self
                    .local
                    .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip());
                let out = fsctl_buf::network_interface_info(ip, 1_000_000_000);
                if (out.len() as u32) > i.max_output_response {
                    return err(status::BUFFER_TOO_SMALL);
                }
                reply(out, i.file_id)
            }
            FSCTL_LMR_REQUEST_RESILIENCY => {
                // MS-SMB2 3.3.5.15.9: NETWORK_RESILIENCY_REQUEST is Timeout + Reserved.
                let v = match self.resolve_fid(i.file_id, ctx) {
                    Ok(v) => v,
                    Err(st) => return err(st),
                };
                if self.dialect() < 0x0210 {
                    return err(status::INVALID_DEVICE_REQUEST);
                }
                if i.input.len() < 8 {
                    return err(status::INVALID_PARAMETER);
                }
                if let Some(o) = self.opens.get_mut(&v) {
                    o.resilient = true;
                }
                reply(Vec::new(), i.file_id)
            }
            // Test hooks smbtorture uses (Samba's `smbd:FSCTL_SMBTORTURE`).
            FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT => {
                // From now on this channel's breaks count as never acknowledged by TCP, so the
                // channel fails as a dead client's would (crate::worker's ack tracking). Only
                // the caller's own channel is affected, which it could drop itself anyway.
                if !i.input.is_empty() {
                    return err(status::INVALID_PARAMETER);
                }
                self.force_unacked_timeout = true;
                reply(Vec::new(), i.file_id)
            }
            FSCTL_SMBTORTURE_GLOBAL_READ_RESPONSE_BODY_PADDING8 => {
                if !i.input.is_empty() {
                    return err(status::INVALID_PARAMETER);
                }
                self.read_body_padding = 8;
                reply(Vec::new(), i.file_id)
            }
            FSCTL_SMBTORTURE_FSP_ASYNC_SLEEP => {
                // Asks the server to hold the handle busy for a while so that a following
                // CLOSE must wait for it (Samba bug 14769). Requests on a connection are
                // processed in order here, so completing at once gives the same ordering.
                if i.input.len() != 1 {
                    return err(status::INVALID_PARAMETER);
                }
                if let Err(st) = self.resolve_fid(i.file_id, ctx) {
                    return err(st);
                }
                reply(Vec::new(), i.file_id)
            }
            fsctl::DFS_GET_REFERRALS | fsctl::DFS_GET_REFERRALS_EX => {
                // MS-SMB2 3.3.5.15.2: on any tree (IPC$ or a share), answered by the DFS
                // service (MS-DFSC 3.2.5.5). Without a DFS root nothing is known: NOT_FOUND.
                let req = if i.ctl_code == fsctl::DFS_GET_REFERRALS {
                    smb_proto::dfs::ReferralRequest::decode(&i.input)
                } else {
                    smb_proto::dfs::ReferralRequest::decode_ex(&i.input)
                };
                let Ok(req) = req else {
                    let no_root = !self.shared.shares.iter().any(|s| s.dfs_root);
                    return err(if no_root {
                        status::NOT_FOUND
                    } else {
                        status::INVALID_PARAMETER
                    });
                };
                let resp = match crate::dfs::referral(&self.shared.shares, &req) {
                    Ok(r) => r,
                    Err(st) => {
                        tracing::debug!(conn = self.id, path = %req.file_name, status = %st,
                            "dfs referral refused");
                        return err(st);
                    }
                };
                let Some(out) = resp.encode() else {
                    return err(status::INVALID_PARAMETER);
                };
                // A response larger than the client's buffer: the first MaxOutputResponse
                // bytes with STATUS_BUFFER_OVERFLOW (MS-SMB2 3.3.5.15; what Samba sends).
                let max = i.max_output_response as usize;
                if out.len() > max {
                    let mut out = out;
                    out.truncate(max);
                    return Outcome::Reply(
                        status::BUFFER_OVERFLOW,
                        Response::Ioctl {
                            ctl_code: i.ctl_code,
                            file_id: i.file_id,
                            input: vec![],
                            output: out,
                        },
                    );
                }
                reply(out, i.file_id)
            }
            fsctl::PIPE_TRANSCEIVE => err(status::NOT_SUPPORTED),
            fsctl::SRV_REQUEST_RESUME_KEY => {
                let v = match self.resolve_fid(i.file_id, ctx) {
                    Ok(v) => v,
                    Err(st) => return err(st),
                };
                if i.max_output_response < 32 {
                    return err(status::INVALID_PARAMETER);
                }
                reply(fsctl_buf::resume_key(v, self.id), i.file_id)
            }
            fsctl::CREATE_OR_GET_OBJECT_ID => {
                let v = match self.resolve_fid(i.file_id, ctx) {
                    Ok(v) => v,
                    Err(st) => return err(st),
                };
                if i.max_output_response < 64 {
                    return err(status::INVALID_PARAMETER);
                }
                // FILE_OBJECTID_BUFFER (MS-FSCC 2.1.3): derived from the stable file id.
                let id = self.opens.get(&v).map_or(0, |o| o.stable_id);
                reply(fsctl_buf::object_id(id), i.file_id)
            }
            fsctl::SET_SPARSE => {
                let (_, o) = match self.open_for(i.file_id, ctx) {
                    Ok(found) => found,
                    Err(st) => return err(st),
                };
                if o.is_dir {
                    return err(status::INVALID_PARAMETER);
                }
                if o.access & (WRITE_DATA | APPEND_DATA | WRITE_ATTRIBUTES) == 0 {
                    return err(status::ACCESS_DENIED);
                }
                // FILE_SET_SPARSE_BUFFER is optional; absent means "set" (MS-FSCC 2.3.64).
                let set = i.input.first().is_none_or(|b| *b != 0);
                update_dos(&o.abs, |d, _| {
                    if set {
                        d.attributes |= ATTR_SPARSE;
                    } else {
                        d.attributes &= !ATTR_SPARSE;
                    }
                });
                reply(Vec::new(), i.file_id)
            }
            fsctl::SRV_COPYCHUNK | fsctl::SRV_COPYCHUNK_WRITE => self.copychunk(&i, ctx),
            fsctl::SRV_ENUMERATE_SNAPSHOTS => {
                if let Err(st) = self.resolve_fid(i.file_id, ctx) {
                    return err(st);
                }
                if i.max_output_response < 16 {
                    return err(status::INVALID_PARAMETER);
                }
                reply(fsctl_buf::no_snapshots(), i.file_id)
            }
            fsctl::GET_REPARSE_POINT => {
                if let Err(st) = self.resolve_fid(i.file_id, ctx) {
                    return err(st);
                }
                err(status::NOT_A_REPARSE_POINT)
            }
            fsctl::QUERY_ALLOCATED_RANGES => self.query_allocated_ranges(&i, ctx),
            fsctl::SET_ZERO_DATA => self.set_zero_data(&i, ctx),
            FSCTL_GET_COMPRESSION => {
                if let Err(st) = self.resolve_fid(i.file_id, ctx) {
                    return err(st);
                }
                if i.max_output_response < 2 {
                    return err(status::INVALID_PARAMETER);
                }
                // COMPRESSION_FORMAT_NONE: files are never compressed here.
                reply(vec![0, 0], i.file_id)
            }
            FSCTL_SET_COMPRESSION => {
                if let Err(st) = self.resolve_fid(i.file_id, ctx) {
                    return err(st);
                }
                match i.input.get(..2) {
                    Some([0, 0]) => reply(Vec::new(), i.file_id),
                    Some(_) => err(status::NOT_SUPPORTED),
                    None => err(status::INVALID_PARAMETER),
                }
            }
            fsctl::FILE_LEVEL_TRIM => {
                if let Err(st) = self.resolve_fid(i.file_id, ctx) {
                    return err(st);
                }
                err(status::NOT_SUPPORTED)
            }
            _ => err(status::NOT_SUPPORTED),
        }
    }

    /// FSCTL_SRV_COPYCHUNK(_WRITE), MS-SMB2 3.3.5.15.6: copy ranges from the open named by
    /// the resume key into this open.
    pub(super) fn copychunk(&mut self, i: &IoctlRequest, ctx: &ChainCtx) -> Outcome {
        let dst = match self.resolve_fid(i.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let out = |st: NtStatus, a: u32, b: u32, c: u32| {
            Outcome::Reply(
                st,
                Response::Ioctl {
                    ctl_code: i.ctl_code,
                    file_id: i.file_id,
                    input: vec![],
                    output: fsctl_buf::copychunk_response(a, b, c),
                },
            )
        };
        if i.max_output_response < 12 {
            return err(status::INVALID_PARAMETER);
        }
        let Ok(copy) = fsctl_buf::CopyChunkCopy::decode(&i.input, COPYCHUNK_MAX_CHUNKS) else {
            return err(status::INVALID_PARAMETER);
        };
        let (key_v, key_conn, chunks) = (copy.source_volatile, copy.source_conn, copy.chunks);
        let limits = || {
            out(
                status::INVALID_PARAMETER,
                COPYCHUNK_MAX_CHUNKS,
                COPYCHUNK_MAX_CHUNK_SIZE,
                COPYCHUNK_MAX_TOTAL,
            )
        };
        let total: u64 = chunks.iter().map(|c| c.2 as u64).sum();
        if chunks.len() as u32 > COPYCHUNK_MAX_CHUNKS
            || chunks
                .iter()
                .any(|c| c.2 == 0 || c.2 > COPYCHUNK_MAX_CHUNK_SIZE)
            || total > COPYCHUNK_MAX_TOTAL as u64
        {
            return limits();
        }
        if key_conn != self.id || !self.opens.contains_key(&key_v) {
            return err(status::OBJECT_NAME_NOT_FOUND);
        }
        let (Some(src), Some(d)) = (self.opens.get(&key_v), self.opens.get(&dst)) else {
            return err(status::OBJECT_NAME_NOT_FOUND);
        };
        // MS-SMB2 3.3.5.15.6: the source must be readable (execute counts); COPYCHUNK also
        // needs read access on the target, COPYCHUNK_WRITE only write access.
        if src.access & (READ_DATA | EXECUTE) == 0 || d.access & WRITE_DATA == 0 {
            return err(status::ACCESS_DENIED);
        }
        // Unlike the source, the target of COPYCHUNK needs FILE_READ_DATA itself; EXECUTE
        // does not stand in for it (MS-SMB2 3.3.5.15.6).
        if i.ctl_code == fsctl::SRV_COPYCHUNK && d.access & READ_DATA == 0 {
            return err(status::ACCESS_DENIED);
        }
        let (Some(sf), Some(df)) = (&src.file, &d.file) else {
            return err(status::INVALID_PARAMETER);
        };
        let src_len = sf.metadata().map(|m| m.len()).unwrap_or(0);
        let mut written_chunks = 0u32;
        let mut written_total = 0u32;
        for &(so, to, len) in &chunks {
            if so.saturating_add(len as u64) > src_len {
                return out(status::INVALID_VIEW_SIZE, written_chunks, 0, written_total);
            }
            if let Err(st) = self.check_io(src, so, len as u64, false) {
                return out(st, written_chunks, 0, written_total);
            }
            if let Err(st) = self.check_io(d, to, len as u64, true) {
                return out(st, written_chunks, 0, written_total);
            }
            let mut buf = vec![0u8; len as usize];
            if let Err(e) = sf.read_exact_at(&mut buf, so) {
                return err(io_status(&e));
            }
            if let Err(e) = df.write_all_at(&buf, to) {
                return err(io_status(&e));
            }
            written_chunks += 1;
            written_total += len;
        }
        out(status::SUCCESS, written_chunks, 0, written_total)
    }

    pub(super) fn is_sparse(o: &Open) -> bool {
        crate::dosattr::load(&o.abs).is_some_and(|d| d.attributes & ATTR_SPARSE != 0)
    }

    /// FSCTL_QUERY_ALLOCATED_RANGES (MS-FSCC 2.3.41): data ranges within the requested one,
    /// found with SEEK_DATA/SEEK_HOLE.
    pub(super) fn query_allocated_ranges(&mut self, i: &IoctlRequest, ctx: &ChainCtx) -> Outcome {
        let (_, o) = match self.open_for(i.file_id, ctx) {
            Ok(found) => found,
            Err(st) => return err(st),
        };
        let Ok((off, len)) = fsctl_buf::decode_offset_pair(&i.input) else {
            return err(status::INVALID_PARAMETER);
        };
        if (off as i64) < 0
            || (len as i64) < 0
            || off.checked_add(len).is_none_or(|e| e > i64::MAX as u64)
        {
            return err(status::INVALID_PARAMETER);
        }
        if o.access & (READ_DATA | EXECUTE) == 0 {
            return err(status::ACCESS_DENIED);
        }
        let Some(f) = &o.file else {
            return err(status::INVALID_PARAMETER);
        };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let end = off.saturating_add(len).min(size);
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        if off < end {
            if Self::is_sparse(o) {
                let mut pos = off;
                while pos < end {
                    let Ok(data) = sys::seek_data(f, pos) else {
                        break;
                    };
                    if data >= end {
                        break;
                    }
                    let hole = sys::seek_hole(f, data).map_or(end, |h| h.min(end));
                    ranges.push((data, hole - data));
                    pos = hole;
                }
            } else {
                ranges.push((off, end - off));
            }
        }
        let max = i.max_output_response as usize;
        if max < 16 && !ranges.is_empty() {
            return err(status::BUFFER_TOO_SMALL);
        }
        let (output, overflow) = fsctl_buf::allocated_ranges(&ranges, max);
        let st = if overflow {
            status::BUFFER_OVERFLOW
        } else {
            status::SUCCESS
        };
        Outcome::Reply(
            st,
            Response::Ioctl {
                ctl_code: i.ctl_code,
                file_id: i.file_id,
                input: vec![],
                output,
            },
        )
    }

    /// FSCTL_SET_ZERO_DATA (MS-FSCC 2.3.67): punch a hole in sparse files, write zeros
    /// otherwise; never extends the file.
    pub(super) fn set_zero_data(&mut self, i: &IoctlRequest, ctx: &ChainCtx) -> Outcome {
        let (_, o) = match self.open_for(i.file_id, ctx) {
            Ok(found) => found,
            Err(st) => return err(st),
        };
        let Ok((off, beyond)) = fsctl_buf::decode_offset_pair(&i.input) else {
            return err(status::INVALID_PARAMETER);
        };
        if (off as i64) < 0 || (beyond as i64) < 0 || off > beyond {
            return err(status::INVALID_PARAMETER);
        }
        if o.access & WRITE_DATA == 0 {
            return err(status::ACCESS_DENIED);
        }
        let Some(f) = &o.file else {
            return err(status::INVALID_PARAMETER);
        };
        if let Err(st) = self.check_io(o, off, beyond - off, true) {
            return err(st);
        }
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let end = beyond.min(size);
        if off < end {
            let punched = sys::fallocate(
                f,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                end - off,
            );
            if punched.is_err() {
                let zeros = vec![0u8; (end - off).min(1 << 20) as usize];
                let mut pos = off;
                while pos < end {
                    let n = (end - pos).min(zeros.len() as u64) as usize;
                    if let Err(e) = f.write_all_at(&zeros[..n], pos) {
                        return err(io_status(&e));
                    }
                    pos += n as u64;
                }
            }
        }
        Outcome::Reply(
            status::SUCCESS,
            Response::Ioctl {
                ctl_code: i.ctl_code,
                file_id: i.file_id,
                input: vec![],
                output: vec![],
            },
        )
    }
}
