//! QUERY_INFO and SET_INFO (MS-SMB2 3.3.5.20, 3.3.5.21).

use smb_proto::NtStatus;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use smb_proto::cursor::Reader;
use smb_proto::fscc::notify_filter;
use smb_proto::{info_type, status, Header, QueryInfoRequest, Response, SetInfoRequest};

use super::create::stream_info;
use super::{
    engine_status, fixed_part, io_status, parent_and_name, update_dos_fd, APPEND_DATA, DELETE,
    FILE_ACTION_ADDED, FILE_ACTION_MODIFIED, FILE_ACTION_REMOVED, FILE_ACTION_RENAMED_NEW_NAME,
    FILE_ACTION_RENAMED_OLD_NAME, READ_ATTRIBUTES, READ_CONTROL, WRITE_ATTRIBUTES, WRITE_DATA,
};
use crate::conn::{err, ChainCtx, Conn, Open, Outcome, PendingKind};
use crate::fs::{self, class, FileInfo, OpenView};
use crate::locking::{self, Reply, Status};
use crate::streams;

impl Conn {
    /// What a query through `o` sees at `now` (FILETIME).
    pub(super) fn open_view_info(o: &Open, now: u64) -> Result<FileInfo, NtStatus> {
        // Through the handle's descriptor, never its path (open.rs, Open::pin).
        let obj = o.object().ok_or(status::INVALID_HANDLE)?;
        let info = obj
            .metadata()
            .map(|m| fs::load_info_fd(obj.as_fd(), &m, now))
            .map_err(|e| io_status(&e))?;
        Ok(match (&o.stream, &o.file) {
            (Some(_), Some(f)) => stream_info(info, f),
            _ => info,
        })
    }

    /// FileStreamInformation entries of the object `o` belongs to: the unnamed stream of a
    /// non-directory first, then the named streams (MS-FSCC 2.4.43).
    pub(super) fn stream_list(&self, o: &Open) -> Vec<(String, u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let Some(Ok(m)) = o.object().map(File::metadata) else {
            return out;
        };
        if !m.is_dir() {
            let i = fs::info_from_meta(&m);
            out.push(("::$DATA".to_string(), i.size, i.alloc));
        }
        let root = &self.shared.shares[o.share].root;
        for e in streams::list(root, m.ino()) {
            out.push((format!(":{}:$DATA", e.name), e.size, e.alloc));
        }
        out
    }

    /// FileStandardInformation's DeletePending and NumberOfLinks (MS-FSA 2.1.5.11.27): the
    /// delete-pending of the link the handle was opened through, whichever handle (on
    /// whichever node) set it, and the links not delete-pending. Asked of the lock service;
    /// without an answer the handle's own flag stands.
    fn link_delete_state(&self, o: &Open, mut info: FileInfo) -> (FileInfo, bool) {
        let Some(lo) = o.lock_open else {
            return (info, o.delete_pending);
        };
        match self
            .shared
            .file_usage(self.id, locking::FileId(o.stable_id), Some(lo))
        {
            Ok(u) => {
                // The encoder takes one link off for the handle's own deleted link; the
                // other deleted links come off here.
                let others = u.deleted_links.saturating_sub(u.except_deleted as u32);
                info.nlink = info.nlink.saturating_sub(others);
                (info, u.except_deleted || info.nlink == 0)
            }
            Err(st) => {
                tracing::debug!(?st, "delete state not known to the lock service");
                (info, o.delete_pending)
            }
        }
    }

    pub(crate) fn query_info(&mut self, q: QueryInfoRequest, ctx: &mut ChainCtx) -> Outcome {
        let (_, o) = match self.open_for(q.file_id, ctx) {
            Ok(found) => found,
            Err(st) => return err(st),
        };
        let max = q.output_buffer_length as usize;
        let data = match q.info_type {
            info_type::FILE => {
                let info = match Self::open_view_info(o, self.shared.clock.filetime()) {
                    Ok(i) => i,
                    Err(st) => return err(st),
                };
                let mut name = String::from("\\");
                name.push_str(&o.rel.to_string_lossy().replace('/', "\\"));
                if let Some(st) = &o.stream {
                    name.push(':');
                    name.push_str(&st.name);
                }
                let streams = if q.class == class::STREAM {
                    self.stream_list(o)
                } else {
                    Vec::new()
                };
                let (info, delete_pending) = if matches!(q.class, class::STANDARD | class::ALL) {
                    self.link_delete_state(o, info)
                } else {
                    (info, o.delete_pending)
                };
                let view = OpenView {
                    streams,
                    info,
                    delete_pending,
                    access: o.access,
                    position: o.position,
                    mode: o.mode,
                    name: &name,
                };
                // MS-FSA 2.1.5.12: these classes need FILE_READ_ATTRIBUTES.
                if matches!(
                    q.class,
                    class::BASIC | class::ALL | class::NETWORK_OPEN | class::ATTRIBUTE_TAG
                ) && o.access & READ_ATTRIBUTES == 0
                {
                    return err(status::ACCESS_DENIED);
                }
                if q.class == class::FULL_EA && o.access & 0x8 == 0 {
                    return err(status::ACCESS_DENIED);
                }
                if q.class == class::NORMALIZED_NAME && self.dialect() < smb_proto::dialect::SMB311
                {
                    return err(status::NOT_SUPPORTED);
                }
                match fs::query_file_info(q.class, &view) {
                    Ok(d) => d,
                    Err(st) => return err(st),
                }
            }
            info_type::FILESYSTEM => {
                let sh = &self.shared.shares[o.share];
                match fs::query_fs_info(q.class, &sh.root, sh.fs_id) {
                    Ok(d) => d,
                    Err(st) => return err(st),
                }
            }
            info_type::SECURITY => {
                if q.additional_information & 0x7 != 0 && o.access & READ_CONTROL == 0 {
                    return err(status::ACCESS_DENIED);
                }
                // The descriptor belongs to the file, also for a stream open.
                let Some(obj) = o.object() else {
                    return err(status::INVALID_HANDLE);
                };
                let stored = crate::sd::load_fd(obj.as_fd());
                let sd = crate::sd::for_query(&stored, q.additional_information).encode();
                if sd.len() > max {
                    return Outcome::Reply(
                        status::BUFFER_TOO_SMALL,
                        Response::buffer_too_small(sd.len() as u32),
                    );
                }
                sd
            }
            info_type::QUOTA => return err(status::NOT_SUPPORTED),
            _ => return err(status::INVALID_PARAMETER),
        };
        if data.len() > max {
            if fixed_part(q.info_type, q.class).is_some_and(|f| max >= f) {
                let mut d = data;
                d.truncate(max);
                return Outcome::Reply(status::BUFFER_OVERFLOW, Response::QueryInfo { data: d });
            }
            return err(status::INFO_LENGTH_MISMATCH);
        }
        Outcome::Reply(status::SUCCESS, Response::QueryInfo { data })
    }

    pub(crate) fn set_info(
        &mut self,
        s: SetInfoRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
    ) -> Outcome {
        let (v, o) = match self.open_for(s.file_id, ctx) {
            Ok(found) => found,
            Err(st) => return err(st),
        };
        let read_only = self.shared.shares[o.share].read_only;
        let may_delete = o.access & DELETE != 0;
        match s.info_type {
            info_type::FILE => {}
            info_type::SECURITY => {
                let st = Self::set_security(o, s.additional_information, &s.buffer, read_only);
                return if st == status::SUCCESS {
                    Outcome::Reply(status::SUCCESS, Response::SetInfo)
                } else {
                    err(st)
                };
            }
            info_type::FILESYSTEM | info_type::QUOTA => return err(status::NOT_SUPPORTED),
            _ => return err(status::INVALID_PARAMETER),
        }
        if read_only && !matches!(s.class, class::POSITION | class::MODE) {
            return err(status::ACCESS_DENIED);
        }
        if matches!(s.class, class::RENAME | class::RENAME_EX) {
            let then = PendingKind::Rename {
                volatile: v,
                buffer: s.buffer.clone(),
                class: s.class,
            };
            if let Some(out) = self.break_handle_caching_first(v, hdr, ctx, then, true) {
                return out;
            }
        }
        if let Some(delete) = smb_proto::fscc::disposition_delete(s.class, &s.buffer) {
            // Only a delete the handle may make is worth breaking for; the other checks
            // come with the disposition itself.
            if delete && may_delete {
                let then = PendingKind::Disposition {
                    volatile: v,
                    delete,
                };
                if let Some(out) = self.break_handle_caching_first(v, hdr, ctx, then, ctx.single) {
                    return out;
                }
            }
        }
        let mut r = Reader::new(&s.buffer);
        let st = match s.class {
            class::BASIC => self.set_basic(v, &s.buffer),
            class::RENAME | class::RENAME_EX => self.set_rename(v, &s.buffer, s.class),
            class::DISPOSITION | class::DISPOSITION_EX => {
                match smb_proto::fscc::disposition_delete(s.class, &s.buffer) {
                    Some(delete) => self.set_disposition(v, delete),
                    None => status::INFO_LENGTH_MISMATCH,
                }
            }
            class::POSITION => match r.u64() {
                Ok(p) => {
                    if let Some(o) = self.opens.get_mut(&v) {
                        o.position = p;
                    }
                    status::SUCCESS
                }
                Err(_) => status::INFO_LENGTH_MISMATCH,
            },
            class::MODE => match r.u32() {
                // MS-FSA 2.1.5.14.? FileModeInformation: only these bits may be set.
                Ok(m) if m & !0x3E != 0 => status::INVALID_PARAMETER,
                Ok(m) => {
                    if let Some(o) = self.opens.get_mut(&v) {
                        o.mode = m;
                    }
                    status::SUCCESS
                }
                Err(_) => status::INFO_LENGTH_MISMATCH,
            },
            class::END_OF_FILE | class::ALLOCATION => match r.u64() {
                Ok(len) => self.set_size(v, len, s.class == class::ALLOCATION),
                Err(_) => status::INFO_LENGTH_MISMATCH,
            },
            class::FULL_EA => status::EAS_NOT_SUPPORTED,
            class::LINK => status::NOT_SUPPORTED,
            _ => status::INVALID_INFO_CLASS,
        };
        if st == status::SUCCESS {
            Outcome::Reply(status::SUCCESS, Response::SetInfo)
        } else {
            err(st)
        }
    }

    /// SET_INFO SECURITY (MS-SMB2 3.3.5.21.3): WRITE_OWNER for owner/group, WRITE_DAC for
    /// the DACL; SACLs are ignored (no auditing).
    pub(super) fn set_security(o: &Open, which: u32, buf: &[u8], read_only: bool) -> NtStatus {
        use crate::sd;
        use smb_proto::security_descriptor::{
            DACL_SECURITY_INFORMATION, GROUP_SECURITY_INFORMATION, OWNER_SECURITY_INFORMATION,
        };
        const WRITE_DAC: u32 = 0x0004_0000;
        const WRITE_OWNER: u32 = 0x0008_0000;
        let owner_group = OWNER_SECURITY_INFORMATION | GROUP_SECURITY_INFORMATION;
        if (which & owner_group != 0 && o.access & WRITE_OWNER == 0)
            || (which & DACL_SECURITY_INFORMATION != 0 && o.access & WRITE_DAC == 0)
        {
            return status::ACCESS_DENIED;
        }
        if read_only {
            return status::ACCESS_DENIED;
        }
        let given = match sd::decode(buf, which) {
            Ok(p) => p,
            Err(st) => return st,
        };
        let Some(obj) = o.object() else {
            return status::INVALID_HANDLE;
        };
        let mut cur = sd::load_fd(obj.as_fd());
        sd::overlay(&mut cur, given);
        match sd::store_fd(obj.as_fd(), &cur) {
            Ok(()) => status::SUCCESS,
            Err(e) => io_status(&e),
        }
    }

    pub(super) fn set_basic(&mut self, v: u64, buf: &[u8]) -> NtStatus {
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        let Ok(basic) = smb_proto::fscc::BasicInformation::decode(buf) else {
            return status::INFO_LENGTH_MISMATCH;
        };
        let (create, atime, mtime, change) =
            (basic.creation, basic.access, basic.write, basic.change);
        if o.access & WRITE_ATTRIBUTES == 0 {
            return status::ACCESS_DENIED;
        }
        let attrs = basic.attributes;
        if attrs & fs::attr::DIRECTORY != 0 && !o.is_dir {
            return status::INVALID_PARAMETER;
        }
        // MS-FSA 2.1.5.14.2: FILE_ATTRIBUTE_TEMPORARY is invalid on a directory.
        if attrs & 0x100 != 0 && o.is_dir {
            return status::INVALID_PARAMETER;
        }
        // Every change goes through the handle's descriptor, never its path (open.rs,
        // Open::pin): calls that only take a path get /proc/self/fd/N.
        let Some(obj) = o.object() else {
            return status::INVALID_HANDLE;
        };
        let via = match crate::beneath::fd_path(obj.as_fd()) {
            Ok(p) => p,
            Err(e) => return io_status(&e),
        };
        let to_time = |ft: u64| -> Option<(i64, u32)> {
            // 0 = don't change, -1 = stop updating (MS-FSCC 2.4.7); both leave it alone here.
            if ft == 0 || ft == u64::MAX || ft == u64::MAX - 1 {
                return None;
            }
            // Times before 1970 are kept as given (negative seconds; Windows and smbtorture
            // smb2.timestamps.time_t_-1/-2/1968 read back the time that was set).
            let (s, ns) = fs::unix_from_filetime(ft);
            Some((s, ns as u32))
        };
        let write_ft = mtime;
        let (atime, mtime) = (to_time(atime), to_time(mtime));
        let any = atime.is_some() || mtime.is_some();
        if any {
            if let Err(e) = crate::sys::set_times(&via, atime, mtime) {
                return io_status(&e);
            }
        }
        let settable = |ft: u64| ft != 0 && ft != u64::MAX && ft != u64::MAX - 1;
        let now = self.shared.clock.filetime();
        if settable(create) || settable(change) || attrs != 0 || mtime.is_some() {
            update_dos_fd(obj, now, |d, mut write_now, kernel| {
                // A LastWriteTime set here is Windows' time, with the kernel mtime it was
                // just given (crate::dosattr).
                if mtime.is_some() {
                    d.write = write_ft;
                    d.write_guard = kernel;
                    write_now = write_ft;
                }
                if settable(create) {
                    d.creation = create;
                }
                if settable(change) {
                    d.change = change;
                    d.mtime_guard = write_now;
                }
                if attrs != 0 {
                    d.attributes = attrs & !(fs::attr::NORMAL | fs::attr::DIRECTORY);
                }
            });
        }
        if attrs != 0 && !o.is_dir {
            let mode = if attrs & fs::attr::READONLY != 0 {
                0o444
            } else {
                0o644
            };
            let via = Path::new(OsStr::from_bytes(via.to_bytes()));
            if let Err(e) = std::fs::set_permissions(via, std::fs::Permissions::from_mode(mode)) {
                return io_status(&e);
            }
        }
        // Watchers of the parent see attribute and time changes (smbtorture
        // smb2.notify.basedir), each under its own CompletionFilter bit (smb2.notify.mask:
        // a ChangeTime alone matches none).
        let mut filter = 0;
        for (set, bit) in [
            (attrs != 0, notify_filter::ATTRIBUTES),
            (mtime.is_some(), notify_filter::LAST_WRITE),
            (atime.is_some(), notify_filter::LAST_ACCESS),
            (settable(create), notify_filter::CREATION),
        ] {
            if set {
                filter |= bit;
            }
        }
        let (parent, name) = parent_and_name(&o.abs);
        self.shared
            .dir_changed(parent, FILE_ACTION_MODIFIED, filter, name);
        // A LastWriteTime set here sticks for this open (MS-FSA 2.1.5.14.2
        // Open.UserSetModificationTime; -1 and -2 freeze and thaw it); any FileBasicInformation
        // brings a write's pending update forward, even all zeros (smbtorture
        // smb2.timestamps.delayed-write-vs-setbasic, recorded against Windows 2016).
        let touch = self.opens.get_mut(&v).is_some_and(|o| {
            o.write_time.set_by_client(write_ft);
            o.write_time.flush()
        });
        if touch {
            self.touch_write_time(v);
        }
        status::SUCCESS
    }

    pub(super) fn set_size(&mut self, v: u64, len: u64, allocation: bool) -> NtStatus {
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        if o.access & (WRITE_DATA | APPEND_DATA) == 0 {
            return status::ACCESS_DENIED;
        }
        if o.file.is_none() {
            return status::INVALID_PARAMETER;
        }
        self.break_read_caching(o);
        // Linux moves the mtime on truncate and fallocate; LastWriteTime moves as Windows
        // moves it (crate::write_time, Samba's smb_set_file_size / allocation info): at once
        // when the size or allocation changes, for a SetEOF of the same size only when a
        // write through the open waits for its update (smbtorture
        // smb2.timestamps.delayed-write-vs-seteof), never for an open whose time was set.
        // Like a write, the open holds the time first so the kernel mtime is not reported.
        self.hold_write_time(v);
        let Some(f) = self.opens.get(&v).and_then(|o| o.file.as_ref()) else {
            return status::FILE_CLOSED;
        };
        let cur = f.metadata().map(|m| m.len()).unwrap_or(0);
        let st = if allocation && len >= cur {
            // Allocation below EOF truncates (MS-FSA 2.1.5.14.1); above EOF it reserves space
            // without changing the size.
            if len > 0 {
                if let Err(e) = crate::sys::fallocate(f, libc::FALLOC_FL_KEEP_SIZE, 0, len) {
                    tracing::debug!(err = %e, "fallocate");
                }
            }
            status::SUCCESS
        } else {
            match f.set_len(len) {
                Ok(()) => status::SUCCESS,
                Err(e) => io_status(&e),
            }
        };
        let touch = self.opens.get_mut(&v).is_some_and(|o| {
            if allocation || len != cur {
                o.write_time.resized()
            } else {
                o.write_time.flush()
            }
        });
        if touch {
            self.touch_write_time(v);
        }
        st
    }

    pub(super) fn set_disposition(&mut self, v: u64, delete: bool) -> NtStatus {
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        if o.access & DELETE == 0 {
            return status::ACCESS_DENIED;
        }
        if delete {
            // The handle's object, not whatever has its name now (open.rs, Open::pin).
            let Some(obj) = o.object() else {
                return status::INVALID_HANDLE;
            };
            if o.is_dir {
                let via = match crate::beneath::fd_path(obj.as_fd()) {
                    Ok(p) => p,
                    Err(e) => return io_status(&e),
                };
                match std::fs::read_dir(OsStr::from_bytes(via.to_bytes())) {
                    Ok(mut it) => {
                        if it.next().is_some() {
                            return status::DIRECTORY_NOT_EMPTY;
                        }
                    }
                    Err(e) => return io_status(&e),
                }
            } else if let Ok(m) = obj.metadata() {
                if m.permissions().mode() & 0o200 == 0 {
                    return status::CANNOT_DELETE;
                }
            }
        }
        let Some(lo) = o.lock_open else {
            return status::INVALID_HANDLE;
        };
        match self.shared.lock_request(
            self.id,
            0,
            locking::Request::SetDeletePending { open: lo, delete },
        ) {
            Reply::Done(Status::Success) => {
                if let Some(o) = self.opens.get_mut(&v) {
                    o.delete_pending = delete;
                }
                status::SUCCESS
            }
            Reply::Done(st) => engine_status(st),
            _ => status::INTERNAL_ERROR,
        }
    }

    /// Before a rename, a delete-pending or the close of a delete-on-close handle, the lock
    /// service takes handle caching away from every other open of the file (leases drop H,
    /// batch oplocks break; MS-FSA 2.1.4.12; smbtorture lease.rename_wait, lease.unlink).
    /// While that is outstanding the request goes async as `then` and is carried out on
    /// completion; `None` means go ahead now. Without `wait` (a request in the middle of a
    /// compound, which cannot go async) the breaks are sent and the request goes ahead.
    pub(super) fn break_handle_caching_first(
        &mut self,
        v: u64,
        hdr: &Header,
        ctx: &ChainCtx,
        then: PendingKind,
        wait: bool,
    ) -> Option<Outcome> {
        let lo = self.opens.get(&v)?.lock_open?;
        let reply = self.lock_request_breaks_first(
            hdr.message_id,
            locking::Request::BreakForRename { open: lo },
        );
        match reply {
            Reply::Pending if wait => {
                let aid = self.go_async(hdr, ctx, then);
                Some(Outcome::Pending(aid))
            }
            Reply::Pending | Reply::Done(Status::Success) => None,
            Reply::Done(st) => Some(err(engine_status(st))),
            other => {
                tracing::warn!(?other, "unexpected handle-caching break reply");
                None
            }
        }
    }

    /// FileRenameInformation of a named stream to `:name[:$DATA]`, a stream of the same
    /// file (MS-FSA 2.1.5.15.11.1). The stream's lock-service identity stays the one it was
    /// opened under: other opens of the old name keep their share modes, opens of the new
    /// name (made after the rename) get their own.
    fn rename_stream(&mut self, v: u64, name: &str, replace: bool) -> NtStatus {
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        let Some(cur) = o.stream.clone() else {
            return status::INVALID_PARAMETER;
        };
        // "::$DATA" (the unnamed stream) or ":name[:$DATA]"; a bad name or type is
        // INVALID_PARAMETER here (MS-FSA 2.1.5.15.11.1), not a create's OBJECT_NAME_INVALID.
        let parsed = match streams::parse(&format!("f{name}")) {
            Ok(p) => p.stream,
            Err(_) => return status::INVALID_PARAMETER,
        };
        let Some(obj) = o.object() else {
            return status::INVALID_HANDLE;
        };
        let meta = match obj.metadata() {
            Ok(m) => m,
            Err(e) => return io_status(&e),
        };
        use std::os::unix::fs::MetadataExt;
        let ino = meta.ino();
        let share = o.share;
        let root = self.shared.shares[share].root.clone();
        let fs_id = self.shared.shares[share].fs_id;
        let lock_open = o.lock_open;
        let stable_id = o.stable_id;
        // Every other open of the stream must share delete (MS-FSA 2.1.5.15.11).
        if let Some(lo) = lock_open {
            match self
                .shared
                .file_usage(self.id, locking::FileId(stable_id), Some(lo))
            {
                Ok(u) if u.deny_delete > 0 => return status::SHARING_VIOLATION,
                Ok(_) => {}
                Err(st) => return engine_status(st),
            }
        }
        let Some(new) = parsed else {
            return self.rename_stream_to_default(v, &cur, &meta, replace, fs_id);
        };
        if new == cur.name {
            // Renamed onto itself: nothing changes.
            return status::SUCCESS;
        }
        if new.to_lowercase() != cur.name.to_lowercase() {
            if let Some(t) = streams::find(&root, ino, &new) {
                if !replace {
                    return status::OBJECT_NAME_COLLISION;
                }
                // A replaced stream must not be open anywhere (MS-FSA 2.1.5.15.11.1).
                let tid = locking::FileId(fs::stable_file_id(fs_id, ino, &t.name.to_lowercase()));
                match self.shared.file_usage(self.id, tid, None) {
                    Ok(u) if u.opens > 0 => return status::ACCESS_DENIED,
                    Ok(_) => {}
                    Err(st) => return engine_status(st),
                }
            }
        }
        let to = match streams::rename(&root, ino, &cur.path, &new) {
            Ok(p) => p,
            Err(e) => return io_status(&e),
        };
        for x in self.opens.values_mut() {
            if let Some(st) = x.stream.as_mut().filter(|st| st.path == cur.path) {
                st.name = new.clone();
                st.path = to.clone();
            }
        }
        status::SUCCESS
    }

    /// A named stream renamed to "::$DATA": its data becomes the file's unnamed stream, which
    /// must be empty and not open elsewhere (MS-FSA 2.1.5.15.11.1; smbtorture
    /// smb2.streams.rename2), and the named stream goes. The handle stays the one it was (its
    /// data is the stream's file until it is closed).
    fn rename_stream_to_default(
        &mut self,
        v: u64,
        cur: &crate::open::OpenStream,
        meta: &std::fs::Metadata,
        replace: bool,
        fs_id: u64,
    ) -> NtStatus {
        use std::os::unix::fs::MetadataExt;
        if meta.is_dir() {
            return status::INVALID_PARAMETER;
        }
        if !replace {
            return status::OBJECT_NAME_COLLISION;
        }
        if meta.len() != 0 {
            return status::OBJECT_NAME_COLLISION;
        }
        let base = locking::FileId(fs::stable_file_id(fs_id, meta.ino(), ""));
        match self.shared.file_usage(self.id, base, None) {
            Ok(u) if u.opens > 0 => return status::SHARING_VIOLATION,
            Ok(_) => {}
            Err(st) => return engine_status(st),
        }
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        let data = match streams::open_data(&cur.path, false).and_then(|mut f| {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut buf).map(|_| buf)
        }) {
            Ok(d) => d,
            Err(e) => return io_status(&e),
        };
        let written = self.shared.shares[o.share]
            .dir
            .open_file(&o.rel, libc::O_WRONLY | libc::O_TRUNC, 0)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &data));
        if let Err(e) = written {
            return io_status(&e);
        }
        if let Err(e) = streams::remove_data(&cur.path) {
            tracing::debug!(path = ?cur.path, %e, "renamed stream's data not removed");
        }
        status::SUCCESS
    }

    pub(super) fn set_rename(&mut self, v: u64, buf: &[u8], _cls: u8) -> NtStatus {
        let Ok(smb_proto::fscc::RenameInformation {
            replace_if_exists: replace,
            file_name: name,
        }) = smb_proto::fscc::RenameInformation::decode(buf)
        else {
            return status::INVALID_PARAMETER;
        };
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        if o.access & DELETE == 0 {
            return status::ACCESS_DENIED;
        }
        if o.stream.is_some() && name.starts_with(':') {
            return self.rename_stream(v, &name, replace);
        }
        if o.stream.is_some() {
            // A named stream renamed to a path (`file:stream` included): Windows answers
            // SHARING_VIOLATION (smbtorture smb2.streams.rename2).
            return status::SHARING_VIOLATION;
        }
        if name.starts_with(':') {
            // Renaming the unnamed stream to a named one is not supported.
            return status::NOT_SUPPORTED;
        }
        let name = name.trim_start_matches('\\');
        let comps = match fs::split_smb_path(name) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return status::OBJECT_NAME_INVALID,
            Err(st) => return st,
        };
        // The stream depot is not a name clients can take (streams.rs).
        if comps.first().is_some_and(|c| streams::is_depot(c)) {
            return status::ACCESS_DENIED;
        }
        let root = self.shared.shares[o.share].root.clone();
        let target = match fs::resolve(&root, &comps) {
            Ok(t) => t,
            Err(st) => return st,
        };
        if !fs::rel_is_safe(&target.rel) {
            return status::OBJECT_NAME_INVALID;
        }
        let same = target.abs == o.abs;
        if target.exists && !same {
            if !replace {
                return status::OBJECT_NAME_COLLISION;
            }
            if target.abs.is_dir() {
                return status::ACCESS_DENIED;
            }
            // A target that is open elsewhere cannot be replaced (MS-FSA 2.1.5.14.11).
            if self.opens.values().any(|x| x.abs == target.abs) {
                return status::ACCESS_DENIED;
            }
        }
        // Renaming a directory with open handles below it is refused like Windows does.
        if o.is_dir
            && self
                .opens
                .values()
                .any(|x| x.abs != o.abs && x.abs.starts_with(&o.abs))
        {
            return status::ACCESS_DENIED;
        }
        let old = o.abs.clone();
        let is_dir = o.is_dir;
        // The same checks against every open in the cluster: the lock service counts them.
        let fs_id = self.shared.shares[o.share].fs_id;
        let file_id_of = |p: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p)
                .ok()
                .map(|m| locking::FileId(fs::stable_file_id(fs_id, m.ino(), "")))
        };
        let usage = |file| self.shared.file_usage(self.id, file, None);
        // Windows opens the parent directory of the new name before it renames ("Set File
        // Information processing" in the WDK: for FileRenameInformation the I/O manager opens
        // the target's parent to check that the caller may add a child there): asking
        // FILE_ADD_FILE (FILE_ADD_SUBDIRECTORY for a directory) and sharing read and write,
        // not delete. So an open of that directory, on any connection or node, that holds
        // DELETE access or does not share write makes the rename fail with
        // SHARING_VIOLATION (smbtorture smb2.rename share_delete_and_delete_access,
        // no_share_delete_*, oplock.batch19/20, oplock.exclusive6), and one that shares
        // read and write without DELETE does not (smb2.notify.mask-change and rec rename
        // in a directory another connection holds with FILE_SHARE_READ|WRITE). It is not an
        // MS-FSA 2.1.5.14.11 rule but the open's share-mode check (2.1.5.1.2), so the lock
        // service does exactly that: an open of the directory, given back at once.
        if let Some(dir) = target.abs.parent().and_then(file_id_of) {
            let add_child = if is_dir {
                locking::access_bits::FILE_APPEND_DATA
            } else {
                locking::access_bits::FILE_WRITE_DATA
            };
            let probe = locking::OpenRequest {
                file: dir,
                access: add_child | locking::access_bits::SYNCHRONIZE,
                share: locking::share_bits::READ | locking::share_bits::WRITE,
                delete_on_close: false,
                directory: true,
                overwrite: false,
                client_guid: self.client_guid(),
                oplock: locking::OplockRequest::None,
                stream_base: None,
                link: 0,
                io_grant: false,
            };
            if let Err(st) = self.shared.share_check_open(self.id, probe) {
                return engine_status(st);
            }
        }
        // A replaced target must not be open anywhere (MS-FSA 2.1.5.14.11).
        if target.exists && !same {
            if let Some(tid) = file_id_of(&target.abs) {
                match usage(tid) {
                    Ok(u) if u.opens > 0 => return status::ACCESS_DENIED,
                    Ok(_) => {}
                    Err(st) => return engine_status(st),
                }
            }
        }
        // Every other open of the file must share delete access (MS-FSA 2.1.5.14.11).
        if let Some(lo) = o.lock_open {
            match self
                .shared
                .file_usage(self.id, locking::FileId(o.stable_id), Some(lo))
            {
                Ok(u) if u.deny_delete > 0 => return status::SHARING_VIOLATION,
                Ok(_) => {}
                Err(st) => return engine_status(st),
            }
        }
        let replaced_ino = if target.exists && !same {
            std::fs::symlink_metadata(&target.abs).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino()
            })
        } else {
            None
        };
        let old_rel = o.rel.clone();
        if let Err(e) = self.shared.shares[o.share]
            .dir
            .rename(&old_rel, &target.rel)
        {
            return io_status(&e);
        }
        if let Some(ino) = replaced_ino {
            streams::remove_all(&root, ino);
        }
        // The link moved: the lock service's opens through it, on every node, and its
        // delete-pending mark now belong to the new name.
        if let Some(lo) = self.opens.get(&v).and_then(|o| o.lock_open) {
            let relink = locking::Request::Relink {
                open: lo,
                link: fs::link_id(fs_id, &target.abs, is_dir),
            };
            match self.shared.lock_request(self.id, 0, relink) {
                Reply::Done(Status::Success) => {}
                other => tracing::warn!(?other, "relink after rename refused"),
            }
        }
        for x in self.opens.values_mut() {
            if x.abs == old {
                x.abs = target.abs.clone();
                x.rel = target.rel.clone();
            }
        }
        let (op, on) = parent_and_name(&old);
        let (np, nn) = parent_and_name(&target.abs);
        let names = notify_filter::name(is_dir);
        // A rename inside one directory is OLD_NAME + NEW_NAME there; across directories the
        // old one sees REMOVED and the new one ADDED (Windows; smbtorture smb2.notify.rec).
        if op == np {
            self.shared
                .dir_changed(op, FILE_ACTION_RENAMED_OLD_NAME, names, on);
            self.shared
                .dir_changed(np.clone(), FILE_ACTION_RENAMED_NEW_NAME, names, nn.clone());
        } else {
            self.shared.dir_changed(op, FILE_ACTION_REMOVED, names, on);
            self.shared
                .dir_changed(np.clone(), FILE_ACTION_ADDED, names, nn.clone());
        }
        // Renaming a file (not a directory) also reports the new name MODIFIED under
        // ATTRIBUTES and CREATION (Windows, recorded by Samba's notify_rename; smbtorture
        // smb2.notify.mask-change and the rename-file case of smb2.notify.mask).
        if !is_dir {
            self.shared.dir_changed(
                np,
                FILE_ACTION_MODIFIED,
                notify_filter::ATTRIBUTES | notify_filter::CREATION,
                nn,
            );
        }
        status::SUCCESS
    }
}
