//! File service: the SMB2 commands that work on opens (MS-SMB2 3.3.5.9 - 3.3.5.22).

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use smb_proto::cursor::{string_to_utf16, utf16_to_string, Reader, Writer};
use smb_proto::header::flags as hflags;
use smb_proto::{
    create_action, create_options, ctx as cctx, disposition, fsctl, info_type, lock_flags,
    oplock_level, query_dir_flags, status, BreakAck, ChangeNotifyRequest, CloseRequest,
    CloseResponse, CreateContext, CreateRequest, CreateResponse, FileId, Header, IoctlRequest,
    LeaseContext, LockRequest, QueryDirectoryRequest, QueryInfoRequest, ReadRequest, Response,
    SetInfoRequest, WriteRequest,
};

use crate::beneath::ShareRoot;
use crate::conn::{
    err, ChainCtx, Conn, DirState, FileIo, FileOp, Open, Outcome, PendingKind, Signer,
};
use crate::fs::{self, class, DirEntry, FileInfo, OpenView};
use crate::locking::{
    self, map_generic, ClientGuid, Lease, LeaseKey, LeaseState, LockRange, Notification,
    OpenRequest, OplockGrant, OplockLevel, OplockRequest, Reply, Status,
};
use crate::streams;

/// READs and WRITEs of at least this many bytes (outside compounds) go through the worker's
/// io_uring; smaller ones are cheaper as a synchronous pread/pwrite on the page cache than a
/// dup of the descriptor and a ring round trip.
const RING_IO_MIN: usize = 64 * 1024;
/// Fixed part of the SMB2 READ response body.
const READ_BODY_SIZE: usize = 16;
use smb_proto::header::HEADER_SIZE;

const FILE_ACTION_ADDED: u32 = 1;
const FILE_ACTION_REMOVED: u32 = 2;
const FILE_ACTION_MODIFIED: u32 = 3;
const FILE_ACTION_RENAMED_OLD_NAME: u32 = 4;
const FILE_ACTION_RENAMED_NEW_NAME: u32 = 5;
const ATTR_SPARSE: u32 = 0x200;
/// Largest file offset a write may start at (NTFS MAXFILESIZE, what Windows and Samba enforce).
const MAX_FILE_SIZE: u64 = 0xfff_ffff_0000;
const FSCTL_GET_COMPRESSION: u32 = 0x0009_003C;
const FSCTL_SET_COMPRESSION: u32 = 0x0009_C040;
const INVALID_VIEW_SIZE: u32 = 0xC000_001F;
/// Server-side copy limits advertised on INVALID_PARAMETER (the values Windows and Samba use).
/// One SRV_COPYCHUNK element: (source offset, target offset, length).
type Chunk = (u64, u64, u32);
const COPYCHUNK_MAX_CHUNKS: u32 = 256;
const COPYCHUNK_MAX_CHUNK_SIZE: u32 = 1024 * 1024;
const COPYCHUNK_MAX_TOTAL: u32 = 16 * 1024 * 1024;
const NOT_A_REPARSE_POINT: u32 = 0xC000_0275;
const BAD_IMPERSONATION_LEVEL: u32 = 0xC000_00A5;
const FULL_ACCESS: u32 = 0x001F_01FF;
/// NTFS quota index; opened by clients to manage quotas.
const QUOTA_FAKE_FILE: &str = "$Extend\\$Quota:$Q:$INDEX_ALLOCATION";
const READ_ACCESS: u32 = 0x0012_00A9;
const DELETE: u32 = 0x0001_0000;
const READ_DATA: u32 = 0x1;
const WRITE_DATA: u32 = 0x2;
const APPEND_DATA: u32 = 0x4;
const EXECUTE: u32 = 0x20;
const WRITE_ATTRIBUTES: u32 = 0x100;
const LIST_DIRECTORY: u32 = 0x1;
const READ_ATTRIBUTES: u32 = 0x80;
const READ_CONTROL: u32 = 0x2_0000;

fn io_status(e: &std::io::Error) -> u32 {
    match e.kind() {
        ErrorKind::NotFound => status::OBJECT_NAME_NOT_FOUND,
        ErrorKind::AlreadyExists => status::OBJECT_NAME_COLLISION,
        ErrorKind::PermissionDenied => status::ACCESS_DENIED,
        ErrorKind::DirectoryNotEmpty => status::DIRECTORY_NOT_EMPTY,
        ErrorKind::NotADirectory => status::NOT_A_DIRECTORY,
        ErrorKind::IsADirectory => status::FILE_IS_A_DIRECTORY,
        ErrorKind::StorageFull => status::DISK_FULL,
        _ => match e.raw_os_error() {
            Some(libc::ENOTEMPTY) => status::DIRECTORY_NOT_EMPTY,
            Some(libc::EXDEV) => status::NOT_SAME_DEVICE,
            // Offsets beyond what the filesystem supports (MS-FSA: > MAXLONGLONG).
            Some(libc::EFBIG) | Some(libc::EINVAL) => status::INVALID_PARAMETER,
            Some(libc::EMFILE) | Some(libc::ENFILE) => status::TOO_MANY_OPENED_FILES,
            _ => status::UNSUCCESSFUL,
        },
    }
}

fn parent_and_name(abs: &Path) -> (PathBuf, String) {
    (
        abs.parent().map(Path::to_path_buf).unwrap_or_default(),
        abs.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )
}

fn engine_status(st: Status) -> u32 {
    st.ntstatus()
}

fn oplock_grant_level(g: &OplockGrant) -> u8 {
    match g {
        OplockGrant::None => oplock_level::NONE,
        OplockGrant::Oplock(l) => *l as u8,
        OplockGrant::Lease(_) => oplock_level::LEASE,
    }
}

/// The data file of a named stream chosen by CREATE.
pub(crate) struct StreamTarget {
    /// Stream name with the case it was created with.
    name: String,
    path: PathBuf,
    /// The stream did not exist and was created by this CREATE.
    created: bool,
    /// The base file did not exist and was created for the stream.
    base_created: bool,
}

/// A stream open's size and allocation come from the stream; times, attributes and the
/// file id are the base object's (MS-FSA 2.1.5.11: they are per file, not per stream).
/// A successful CREATE response for a file described by `info` (MS-SMB2 2.2.14).
pub(crate) fn create_response(
    info: &FileInfo,
    oplock_level: u8,
    action: u32,
    file_id: FileId,
    contexts: Vec<CreateContext>,
) -> CreateResponse {
    CreateResponse {
        oplock_level,
        flags: 0,
        action,
        creation_time: info.creation,
        last_access_time: info.access,
        last_write_time: info.write,
        change_time: info.change,
        allocation_size: info.alloc,
        end_of_file: info.size,
        attributes: info.attributes,
        file_id,
        contexts,
    }
}

fn stream_info(mut info: FileInfo, f: &File) -> FileInfo {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = f.metadata() {
        info.size = m.len();
        info.alloc = m.blocks() * 512;
    }
    info.is_dir = false;
    info.attributes &= !fs::attr::DIRECTORY;
    if info.attributes == 0 {
        info.attributes = fs::attr::NORMAL;
    }
    info
}

/// Everything a CREATE needs to finish after the lock service granted (maybe later) the open.
pub(crate) struct CreateCont {
    session_id: u64,
    tree_id: u32,
    share: usize,
    abs: PathBuf,
    rel: PathBuf,
    existed: bool,
    created_now: bool,
    /// Named stream being opened; `abs`/`rel` stay the base object's.
    stream: Option<StreamTarget>,
    is_dir: bool,
    access: u32,
    disposition: u32,
    stable_id: u128,
    lease: Option<LeaseContext>,
    want_mxac: bool,
    want_qfid: bool,
    /// SMB2_CREATE_ALLOCATION_SIZE (AlSi) for new or overwritten files.
    allocation: Option<u64>,
    delete_on_close: bool,
    /// The faked `$Extend\$Quota:$Q:$INDEX_ALLOCATION` (see [`QUOTA_FAKE_FILE`]).
    fake_quota: bool,
    /// DHnQ / DH2Q, granted if the caching allows it.
    durable: Option<crate::durable::DurableKind>,
    share_access: u32,
    /// A new file created with FILE_ATTRIBUTE_READONLY: mode 0444 once its handle is open.
    make_read_only: bool,
}

impl Conn {
    /// Map a request FileId (or the related-chain placeholder) to an open of this session.
    fn resolve_fid(&self, fid: FileId, ctx: &ChainCtx) -> Result<u64, u32> {
        let fid = if fid == FileId::RELATED {
            if !ctx.related {
                return Err(status::FILE_CLOSED);
            }
            // MS-SMB2 3.3.5.2.7.2: without a handle from the chain, a related request fails
            // with the status of a failed CREATE earlier in the compound.
            ctx.file_id
                .ok_or(ctx.create_err.unwrap_or(status::FILE_CLOSED))?
        } else {
            fid
        };
        match self.opens.get(&fid.volatile) {
            // An open belongs to its session and tree connect (MS-SMB2 3.3.5.2.11 and the
            // per-command "Open.TreeConnect" checks; Samba file_fsp_smb2): a FileId used
            // through another tree or session is FILE_CLOSED. Only an oplock break
            // acknowledgment looks the open up by session alone (3.3.5.22.1).
            Some(o)
                if o.session_id == ctx.session_id
                    && (o.tree_id == ctx.tree_id || ctx.any_tree)
                    && fid.persistent == fid.volatile =>
            {
                Ok(fid.volatile)
            }
            _ => Err(status::FILE_CLOSED),
        }
    }

    fn client_guid(&self) -> ClientGuid {
        ClientGuid(u128::from_le_bytes(
            self.neg.as_ref().map(|n| n.client_guid).unwrap_or_default(),
        ))
    }

    fn tree_share(&self, ctx: &ChainCtx) -> Option<Option<usize>> {
        self.sessions
            .get(&ctx.session_id)?
            .trees
            .get(&ctx.tree_id)
            .map(|t| t.share)
    }

    pub(crate) fn create(&mut self, c: CreateRequest, hdr: &Header, ctx: &mut ChainCtx) -> Outcome {
        // Another connection (or node) may create the name between our lookup and our
        // O_EXCL create / mkdir. For OPEN_IF, OVERWRITE_IF and SUPERSEDE that is not an error:
        // the name exists now, so the create runs again as an open of the existing file
        // (smbtorture create.mkdir-dup: one CREATED, one EXISTED).
        let retry = (c.disposition != disposition::CREATE
            && c.disposition != disposition::OPEN
            && c.disposition != disposition::OVERWRITE)
            .then(|| c.clone());
        self.create_raced = false;
        let out = self.create_attempt(c, hdr, ctx);
        match retry {
            Some(c) if std::mem::take(&mut self.create_raced) => self.create_attempt(c, hdr, ctx),
            _ => out,
        }
    }

    fn create_attempt(&mut self, c: CreateRequest, hdr: &Header, ctx: &mut ChainCtx) -> Outcome {
        let Some(share) = self.tree_share(ctx) else {
            return err(status::NETWORK_NAME_DELETED);
        };
        let Some(share) = share else {
            // IPC$: no named pipes are served.
            return err(status::OBJECT_NAME_NOT_FOUND);
        };
        let reconnect = match crate::durable::reconnect_request(&c) {
            Ok(r) => r,
            Err(st) => return err(st),
        };
        if let Some(rc) = reconnect {
            return self.durable_reconnect(&c, rc, ctx.session_id, ctx.tree_id, share);
        }
        let durable = match crate::durable::durable_request(&c, self.dialect()) {
            Ok(d) => d,
            Err(st) => return err(st),
        };
        if c.impersonation_level > 3 {
            return err(BAD_IMPERSONATION_LEVEL);
        }
        if c.options & create_options::DIRECTORY_FILE != 0
            && c.options & create_options::NON_DIRECTORY_FILE != 0
        {
            return err(status::INVALID_PARAMETER);
        }
        if c.disposition > disposition::OVERWRITE_IF {
            return err(status::INVALID_PARAMETER);
        }
        if !matches!(
            c.oplock_level,
            oplock_level::NONE
                | oplock_level::II
                | oplock_level::EXCLUSIVE
                | oplock_level::BATCH
                | oplock_level::LEASE
        ) {
            return err(status::INVALID_PARAMETER);
        }
        // MS-SMB2 3.3.5.9: reserved CreateOptions bits and access bits are rejected.
        if c.options & 0xFF00_0000 != 0 || c.file_attributes & !0x0003_7FB7 != 0 {
            return err(status::INVALID_PARAMETER);
        }
        if c.desired_access & 0x0CE0_FE00 != 0 {
            return err(status::ACCESS_DENIED);
        }
        // MS-SMB2 3.3.5.9: create context names are at least 4 bytes.
        if c.contexts.iter().any(|x| x.name.len() < 4) {
            return err(status::INVALID_PARAMETER);
        }
        if c.context(cctx::TWRP).is_some() {
            // Previous versions (timewarp): this server keeps no snapshots.
            return err(status::OBJECT_NAME_NOT_FOUND);
        }
        // Windows' quota file, which Samba fakes (smbtorture create.quota-fake-file): served
        // as a read-only view of the share root with fixed attributes and zero times.
        let fake_quota = c.name.eq_ignore_ascii_case(QUOTA_FAKE_FILE);
        if fake_quota
            && (!matches!(c.disposition, disposition::OPEN | disposition::OPEN_IF)
                || map_generic(c.desired_access) & !(READ_ACCESS | 0x0010_0000) != 0)
        {
            return err(status::ACCESS_DENIED);
        }
        let sp = match streams::parse(if fake_quota { "" } else { &c.name }) {
            Ok(sp) => sp,
            Err(st) => return err(st),
        };
        let comps = match fs::split_smb_path(sp.base) {
            Ok(c) => c,
            Err(st) => return err(st),
        };
        // The stream depot is server-private.
        if comps.first().is_some_and(|c| streams::is_depot(c)) {
            return err(status::ACCESS_DENIED);
        }
        if sp.stream.is_some() && c.options & create_options::DIRECTORY_FILE != 0 {
            // MS-FSA 2.1.5.1: a named stream is never a directory.
            return err(status::NOT_A_DIRECTORY);
        }
        let sh = &self.shared.shares[share];
        let root = sh.root.clone();
        let share_dir = sh.dir.clone();
        let read_only = sh.read_only;
        let fs_id = sh.fs_id;
        let res = match fs::resolve(&root, &comps) {
            Ok(r) => r,
            Err(st) => return err(st),
        };
        let mut access = map_generic(c.desired_access);
        if c.desired_access & locking::access_bits::MAXIMUM_ALLOWED != 0 {
            access |= FULL_ACCESS;
        }
        if read_only {
            if access & (WRITE_DATA | APPEND_DATA | DELETE | 0x10 | WRITE_ATTRIBUTES) != 0
                && c.desired_access & locking::access_bits::MAXIMUM_ALLOWED == 0
            {
                return err(status::ACCESS_DENIED);
            }
            access &= READ_ACCESS;
        }
        // FILE_CREATE of an existing file fails with a name collision before any access
        // check (smbtorture delete-on-close-perms "CREATE Existing").
        let collides = sp.stream.is_none() && c.disposition == disposition::CREATE;
        if res.exists && !fake_quota && !collides {
            let token = self
                .sessions
                .get(&ctx.session_id)
                .map(|s| s.token())
                .unwrap_or_default();
            match Self::check_stored_acl(&res.abs, access, c.desired_access, &token) {
                Ok(a) => access = a,
                Err(st) => return err(st),
            }
        }
        if res.exists && !fake_quota && sp.stream.is_none() && access & DELETE != 0 {
            // DELETE is only as good as the kernel will let the user unlink (write and search
            // permission on the parent, sticky-bit ownership): refuse it here, when it is
            // asked for, rather than fail silently at close (MS-FSA 2.1.5.1.2.1 checks DELETE
            // at open; Samba's can_delete_file_in_directory does the same).
            if !unix_may_delete(&res.abs) {
                let explicit =
                    map_generic(c.desired_access & !locking::access_bits::MAXIMUM_ALLOWED);
                if explicit & DELETE != 0 {
                    return err(status::ACCESS_DENIED);
                }
                access &= !DELETE;
            }
        }
        let delete_on_close = c.options & create_options::DELETE_ON_CLOSE != 0;
        if delete_on_close && access & DELETE == 0 {
            return err(status::ACCESS_DENIED);
        }
        let dir_req = c.options & create_options::DIRECTORY_FILE != 0;
        let nondir_req = c.options & create_options::NON_DIRECTORY_FILE != 0;
        let mut created_now = false;
        let mut make_read_only = false;
        let is_dir;
        let mut stream = None;
        let mut existed = res.exists;
        if let Some(sname) = &sp.stream {
            let t = match self.open_stream_target(&root, &share_dir, &res, sname, &c, read_only) {
                Ok(t) => t,
                Err(st) => return err(st),
            };
            existed = !t.created;
            created_now = t.created;
            is_dir = false;
            stream = Some(t);
        } else if res.exists {
            let meta = match std::fs::metadata(&res.abs) {
                Ok(m) => m,
                Err(e) => return err(io_status(&e)),
            };
            is_dir = meta.is_dir();
            if c.disposition == disposition::CREATE {
                return err(status::OBJECT_NAME_COLLISION);
            }
            if is_dir && nondir_req {
                return err(status::FILE_IS_A_DIRECTORY);
            }
            if !is_dir && dir_req {
                return err(status::NOT_A_DIRECTORY);
            }
            let overwrite = matches!(
                c.disposition,
                disposition::OVERWRITE | disposition::OVERWRITE_IF | disposition::SUPERSEDE
            );
            if is_dir && overwrite {
                return err(status::INVALID_PARAMETER);
            }
            let ro_attr = meta.permissions().mode() & 0o200 == 0;
            if ro_attr && !is_dir {
                if delete_on_close {
                    return err(status::CANNOT_DELETE);
                }
                if access & (WRITE_DATA | APPEND_DATA) != 0 || overwrite {
                    return err(status::ACCESS_DENIED);
                }
            }
            if read_only && overwrite {
                return err(status::ACCESS_DENIED);
            }
        } else {
            if matches!(c.disposition, disposition::OPEN | disposition::OVERWRITE) {
                return err(status::OBJECT_NAME_NOT_FOUND);
            }
            if read_only {
                return err(status::MEDIA_WRITE_PROTECTED);
            }
            // MS-FSA 2.1.5.1.2.1: a new read-only file cannot be delete-on-close.
            if delete_on_close && c.file_attributes & fs::attr::READONLY != 0 {
                return err(status::CANNOT_DELETE);
            }
            let r = if dir_req {
                share_dir.mkdir(&res.rel, 0o777)
            } else {
                share_dir
                    .open_file(
                        &res.rel,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                        0o666,
                    )
                    .map(|_| ())
            };
            if let Err(e) = r {
                self.create_raced = e.kind() == std::io::ErrorKind::AlreadyExists;
                return err(path_status(&e));
            }
            // READONLY (mode 0444) is applied to the new file once its handle is open
            // (finish_create): the creator's own open may write (MS-FSA 2.1.5.1.1), and the
            // kernel would refuse the user a writable open of a 0444 file.
            make_read_only = c.file_attributes & fs::attr::READONLY != 0 && !dir_req;
            created_now = true;
            is_dir = dir_req;
            // SMB2_CREATE_SD_BUFFER (MS-SMB2 2.2.13.2.2): the new file's descriptor; without
            // one the parent's inheritable ACEs apply.
            let inherited = res
                .abs
                .parent()
                .and_then(|p| crate::sd::load(p).inherit(dir_req));
            if let (None, Some(p)) = (c.context(cctx::SECD), inherited) {
                if let Err(e) = crate::sd::store(&res.abs, &p) {
                    tracing::debug!(%e, "inherited descriptor not stored");
                }
            }
            if let Some(x) = c.context(cctx::SECD) {
                let all = crate::sd::OWNER_SECURITY_INFORMATION
                    | crate::sd::GROUP_SECURITY_INFORMATION
                    | crate::sd::DACL_SECURITY_INFORMATION;
                let stored = crate::sd::parse(&x.data, all)
                    .map_err(|st| std::io::Error::other(format!("{st:#x}")))
                    .and_then(|p| crate::sd::store(&res.abs, &p));
                if let Err(e) = stored {
                    tracing::debug!(%e, "SecD create context not stored");
                }
            }
            if let Ok(m) = std::fs::metadata(&res.abs) {
                use std::os::unix::fs::MetadataExt;
                // An inode number reused after an outside delete must not inherit streams.
                streams::remove_all(&root, m.ino());
            }
            // Sparseness is only set by FSCTL_SET_SPARSE, never by CREATE.
            let attrs = c.file_attributes & !(fs::attr::NORMAL | fs::attr::DIRECTORY | ATTR_SPARSE);
            update_dos(&res.abs, |d, _| {
                d.creation = fs::now_filetime();
                // New files are marked for archiving whatever else was asked (Windows,
                // Samba with "map archive").
                d.attributes = if dir_req {
                    attrs
                } else {
                    attrs | fs::attr::ARCHIVE
                };
            });
            let (parent, n) = parent_and_name(&res.abs);
            self.shared.dir_changed(parent, FILE_ACTION_ADDED, n);
        }
        let ino = std::fs::metadata(&res.abs).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        let ino = match ino {
            Ok(i) => i,
            Err(e) => return err(io_status(&e)),
        };
        // Each stream is its own lock-service file (own share modes, oplocks, leases); the
        // name is case-folded because stream names are case-insensitive.
        let stable_id = fs::stable_file_id(
            fs_id,
            if fake_quota { 0 } else { ino },
            &stream
                .as_ref()
                .map(|t| t.name.to_lowercase())
                .unwrap_or_default(),
        );
        // No directory leases: SMB2_GLOBAL_CAP_DIRECTORY_LEASING is not offered, so a
        // directory open gets neither a lease nor an oplock (MS-SMB2 3.3.5.9.8).
        let requested_lease = if c.oplock_level == oplock_level::LEASE && self.dialect() >= 0x0210 {
            c.context(cctx::RQLS)
                .and_then(|x| LeaseContext::decode(&x.data).ok())
        } else {
            None
        };
        // MS-SMB2 3.3.5.9.8: a lease key already in use for another file is refused (also
        // for a directory, which then would not get the lease anyway).
        if let Some(l) = &requested_lease {
            let clash = self.opens.values().any(|o| {
                o.stable_id != stable_id
                    && matches!(&o.grant, OplockGrant::Lease(g) if g.key.0 == l.key)
            });
            if clash {
                if let Some(t) = &stream {
                    if t.created {
                        let _ = streams::remove_data(&t.path);
                    }
                    if t.base_created {
                        let _ = share_dir.unlink(&res.rel, false);
                    }
                } else if created_now {
                    let _ = share_dir.unlink(&res.rel, is_dir);
                }
                return err(status::INVALID_PARAMETER);
            }
        }
        let lease = if is_dir { None } else { requested_lease };
        let oplock = match (
            if is_dir {
                oplock_level::NONE
            } else {
                c.oplock_level
            },
            &lease,
        ) {
            (oplock_level::LEASE, Some(l)) => OplockRequest::Lease(Lease {
                key: LeaseKey(l.key),
                state: LeaseState((l.state & 0x7) as u8),
                parent_key: l.parent_key.map(LeaseKey),
                epoch: l.epoch,
                breaking: false,
            }),
            (lvl, _) => match OplockLevel::from_wire(lvl) {
                Some(OplockLevel::None) | None => OplockRequest::None,
                Some(l) => OplockRequest::Oplock(l),
            },
        };
        let cont = CreateCont {
            session_id: ctx.session_id,
            tree_id: ctx.tree_id,
            share,
            abs: res.abs.clone(),
            rel: res.rel.clone(),
            existed,
            created_now,
            stream,
            is_dir,
            access,
            disposition: c.disposition,
            stable_id,
            lease,
            want_mxac: c.context(cctx::MXAC).is_some(),
            want_qfid: c.context(cctx::QFID).is_some(),
            allocation: c
                .context(cctx::ALSI)
                .and_then(|x| Reader::new(&x.data).u64().ok()),
            delete_on_close,
            durable,
            share_access: c.share_access & 0x7,
            fake_quota,
            make_read_only,
        };
        crate::durable::purge_conflicting(
            stable_id,
            access,
            c.share_access & 0x7,
            cont.lease.as_ref().map(|l| l.key),
        );
        let req = OpenRequest {
            file: locking::FileId(stable_id),
            access,
            share: c.share_access & 0x7,
            delete_on_close,
            directory: is_dir,
            overwrite: existed
                && matches!(
                    c.disposition,
                    disposition::OVERWRITE | disposition::OVERWRITE_IF | disposition::SUPERSEDE
                ),
            client_guid: self.client_guid(),
            oplock,
        };
        match self
            .shared
            .lock_request(self.id, hdr.message_id, locking::Request::Open(req))
        {
            Reply::Opened { open, grant } => {
                let (out, fid) = self.finish_create(cont, open, grant);
                if let Some(fid) = fid {
                    ctx.file_id = Some(fid);
                }
                out
            }
            Reply::Pending => {
                let aid = self.go_async(hdr, ctx, PendingKind::Create(Box::new(cont)));
                Outcome::Pending(aid)
            }
            Reply::Done(st) => {
                Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                err(engine_status(st))
            }
            other => {
                tracing::warn!(?other, "unexpected lock reply to open");
                Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                err(status::INTERNAL_ERROR)
            }
        }
    }

    fn undo_create(dir: &ShareRoot, cont: &CreateCont) {
        if let Some(t) = &cont.stream {
            if t.created {
                let _ = streams::remove_data(&t.path);
            }
            if t.base_created {
                let _ = dir.unlink(&cont.rel, false);
            }
            return;
        }
        if cont.created_now {
            let _ = dir.unlink(&cont.rel, cont.is_dir);
        }
    }

    /// Access check of an existing object against its stored DACL (MS-FSA 2.1.5.1.2.1,
    /// MS-DTYP 2.5.3.2). DELETE may also come from FILE_DELETE_CHILD on the parent.
    /// Returns the access to grant (MAXIMUM_ALLOWED resolved to what the DACL allows).
    fn check_stored_acl(
        path: &Path,
        access: u32,
        desired: u32,
        token: &crate::sd::Token,
    ) -> Result<u32, u32> {
        const SYNCHRONIZE: u32 = 0x0010_0000;
        const DELETE_CHILD: u32 = 0x40;
        let Some(mut granted) = crate::sd::load(path).granted(token) else {
            return Ok(access);
        };
        granted |= SYNCHRONIZE;
        let parent_grants_delete = || {
            path.parent()
                .map(|p| {
                    crate::sd::load(p)
                        .granted(token)
                        .is_none_or(|g| g & DELETE_CHILD != 0)
                })
                .unwrap_or(false)
        };
        if parent_grants_delete() {
            granted |= DELETE;
        }
        let max = desired & locking::access_bits::MAXIMUM_ALLOWED != 0;
        let explicit = map_generic(desired & !locking::access_bits::MAXIMUM_ALLOWED);
        if explicit & !granted != 0 {
            return Err(status::ACCESS_DENIED);
        }
        Ok(if max {
            explicit | (access & granted)
        } else {
            access
        })
    }

    /// Find or create the data file of named stream `sname` of `res` for CREATE `c`
    /// (MS-FSA 2.1.5.1.2: a missing base file is created when the disposition allows).
    fn open_stream_target(
        &self,
        root: &Path,
        share_dir: &ShareRoot,
        res: &fs::Resolved,
        sname: &str,
        c: &CreateRequest,
        read_only: bool,
    ) -> Result<StreamTarget, u32> {
        use std::os::unix::fs::MetadataExt;
        let may_create = !matches!(c.disposition, disposition::OPEN | disposition::OVERWRITE);
        let mut base_created = false;
        if !res.exists {
            if !may_create {
                return Err(status::OBJECT_NAME_NOT_FOUND);
            }
            if read_only {
                return Err(status::MEDIA_WRITE_PROTECTED);
            }
            share_dir
                .open_file(
                    &res.rel,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o666,
                )
                .map_err(|e| path_status(&e))?;
            base_created = true;
            let attrs = c.file_attributes & !(fs::attr::NORMAL | fs::attr::DIRECTORY | ATTR_SPARSE);
            update_dos(&res.abs, |d, _| {
                d.creation = fs::now_filetime();
                d.attributes = attrs | fs::attr::ARCHIVE;
            });
            let (parent, n) = parent_and_name(&res.abs);
            self.shared.dir_changed(parent, FILE_ACTION_ADDED, n);
        }
        let undo = |base_created: bool| {
            if base_created {
                let _ = share_dir.unlink(&res.rel, false);
            }
        };
        let ino = match std::fs::metadata(&res.abs) {
            Ok(m) => m.ino(),
            Err(e) => {
                undo(base_created);
                return Err(io_status(&e));
            }
        };
        if base_created {
            streams::remove_all(root, ino);
        }
        if let Some(e) = streams::find(root, ino, sname) {
            if c.disposition == disposition::CREATE {
                return Err(status::OBJECT_NAME_COLLISION);
            }
            return Ok(StreamTarget {
                name: e.name,
                path: e.path,
                created: false,
                base_created,
            });
        }
        if !may_create {
            undo(base_created);
            return Err(status::OBJECT_NAME_NOT_FOUND);
        }
        if read_only {
            return Err(status::MEDIA_WRITE_PROTECTED);
        }
        match streams::create(root, ino, sname) {
            Ok(path) => Ok(StreamTarget {
                name: sname.to_string(),
                path,
                created: true,
                base_created,
            }),
            Err(e) => {
                undo(base_created);
                Err(io_status(&e))
            }
        }
    }

    pub(crate) fn finish_create(
        &mut self,
        cont: CreateCont,
        lock_open: locking::OpenId,
        grant: OplockGrant,
    ) -> (Outcome, Option<FileId>) {
        let read_only = self.shared.shares[cont.share].read_only;
        let mut file = None;
        if !cont.is_dir {
            let dir = &self.shared.shares[cont.share].dir;
            let f = match &cont.stream {
                // The user's access is checked on the base file; the stream's data lives in
                // the root-owned depot (streams.rs).
                Some(t) => open_checked(dir, &cont.rel, cont.access, read_only)
                    .and_then(|_| streams::open_data(&t.path, !read_only)),
                None => open_checked(dir, &cont.rel, cont.access, read_only),
            };
            match f {
                Ok(f) => {
                    if cont.make_read_only {
                        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o444));
                    }
                    file = Some(f)
                }
                Err(e) => {
                    let _ = self.shared.lock_request(
                        self.id,
                        0,
                        locking::Request::Close { open: lock_open },
                    );
                    Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                    return (err(path_status(&e)), None);
                }
            }
        }
        let mut action = if cont.created_now {
            create_action::CREATED
        } else {
            create_action::OPENED
        };
        if cont.existed
            && matches!(
                cont.disposition,
                disposition::OVERWRITE | disposition::OVERWRITE_IF | disposition::SUPERSEDE
            )
        {
            if let Some(f) = &file {
                if let Err(e) = f.set_len(0) {
                    return (err(io_status(&e)), None);
                }
            }
            action = if cont.disposition == disposition::SUPERSEDE {
                create_action::SUPERSEDED
            } else {
                create_action::OVERWRITTEN
            };
        }
        if let (Some(alloc), Some(f)) = (cont.allocation, &file) {
            if alloc > 0 && action != create_action::OPENED {
                use std::os::fd::AsRawFd;
                // SAFETY: fallocate on a descriptor owned by `f`; no memory is touched.
                let rc = unsafe {
                    libc::fallocate(
                        f.as_raw_fd(),
                        libc::FALLOC_FL_KEEP_SIZE,
                        0,
                        alloc.min(i64::MAX as u64) as i64,
                    )
                };
                if rc != 0 {
                    tracing::debug!(err = %std::io::Error::last_os_error(), "AlSi fallocate");
                }
            }
        }
        let info = match std::fs::metadata(&cont.abs) {
            Ok(m) => FileInfo::load(&cont.abs, &m),
            Err(e) => return (err(io_status(&e)), None),
        };
        let mut info = match (&cont.stream, &file) {
            (Some(_), Some(f)) => stream_info(info, f),
            _ => info,
        };
        if cont.fake_quota {
            info.attributes =
                fs::attr::HIDDEN | fs::attr::SYSTEM | fs::attr::DIRECTORY | fs::attr::ARCHIVE;
            info.creation = 0;
            info.access = 0;
            info.write = 0;
            info.change = 0;
        }
        self.next_volatile += 1;
        let v = self.next_volatile;
        let fid = FileId {
            persistent: v,
            volatile: v,
        };
        let mut contexts = Vec::new();
        if cont.want_mxac {
            let mut w = Writer::new();
            w.u32(0)
                .u32(if read_only { READ_ACCESS } else { FULL_ACCESS });
            contexts.push(CreateContext {
                name: cctx::MXAC.to_vec(),
                data: w.buf,
            });
        }
        if cont.want_qfid {
            let mut w = Writer::new();
            w.u64(info.ino)
                .u64(self.shared.shares[cont.share].fs_id)
                .zeros(16);
            contexts.push(CreateContext {
                name: cctx::QFID.to_vec(),
                data: w.buf,
            });
        }
        if let (OplockGrant::Lease(l), Some(req)) = (&grant, &cont.lease) {
            // The response takes the shape of the lease as first granted: a v2 request for a
            // key held as a v1 lease gets a v1 context back (smbtorture lease.v2_epoch3).
            let resp = LeaseContext {
                key: l.key.0,
                state: l.state.0 as u32,
                flags: if l.breaking {
                    smb_proto::messages::LEASE_FLAG_BREAK_IN_PROGRESS
                } else {
                    0
                },
                duration: 0,
                parent_key: req.parent_key,
                epoch: l.epoch,
            };
            contexts.push(CreateContext {
                name: cctx::RQLS.to_vec(),
                data: resp.encode(),
            });
        }
        let durable = cont
            .durable
            .clone()
            .filter(|_| !cont.is_dir && crate::durable::grant_allows_durable(&grant))
            .map(|kind| {
                contexts.push(crate::durable::response_context(&kind));
                crate::durable::DurableState {
                    kind,
                    share_access: cont.share_access,
                    lease: cont.lease,
                    client_guid: self.neg.as_ref().map(|n| n.client_guid).unwrap_or_default(),
                    user: self
                        .sessions
                        .get(&cont.session_id)
                        .map(|s| s.user.to_lowercase())
                        .unwrap_or_default(),
                }
            });
        let oplock = if matches!(grant, OplockGrant::Lease(_)) && cont.lease.is_none() {
            oplock_level::NONE
        } else {
            oplock_grant_level(&grant)
        };
        self.opens.insert(
            v,
            Open {
                session_id: cont.session_id,
                tree_id: cont.tree_id,
                share: cont.share,
                abs: cont.abs.clone(),
                rel: cont.rel.clone(),
                stream: cont.stream.as_ref().map(|t| crate::conn::OpenStream {
                    name: t.name.clone(),
                    path: t.path.clone(),
                }),
                file,
                is_dir: cont.is_dir,
                access: cont.access,
                lock_open: Some(lock_open),
                stable_id: cont.stable_id,
                dir: None,
                position: 0,
                mode: 0,
                delete_pending: cont.delete_on_close,
                grant,
                notify_watch: false,
                resilient: false,
                durable,
                locks: Vec::new(),
                lock_seq: [0xFF; 64],
                identity: crate::identity::current(),
            },
        );
        // The lock service keeps the durable state (durable.rs); without it there is none.
        let registered = match self.opens.get(&v) {
            Some(o) if o.durable.is_some() => Some(self.register_durable(v, o)),
            _ => None,
        };
        if registered == Some(false) {
            if let Some(o) = self.opens.get_mut(&v) {
                o.durable = None;
            }
            contexts.retain(|x| x.name != cctx::DHNQ && x.name != cctx::DH2Q);
        }
        let resp = create_response(&info, oplock, action, fid, contexts);
        (
            Outcome::Reply(status::SUCCESS, Response::Create(resp)),
            Some(fid),
        )
    }

    /// Drop an open. Its blocked LOCK requests complete with `lock_status`: Windows answers
    /// RANGE_NOT_LOCKED when the handle is closed, and SUCCESS when the tree or session goes.
    pub(crate) fn close_open(&mut self, v: u64, lock_status: u32) -> Option<Open> {
        let aids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| match &p.kind {
                PendingKind::Notify { volatile, .. } | PendingKind::Lock { volatile } => {
                    *volatile == v
                }
                // A waiting rename of a closed handle fails when its break completes.
                PendingKind::Create(_) | PendingKind::Rename { .. } => false,
            })
            .map(|(a, _)| *a)
            .collect();
        for a in aids {
            let is_notify = matches!(
                self.pending.get(&a).map(|p| &p.kind),
                Some(PendingKind::Notify { .. })
            );
            if is_notify {
                self.cancel_pending(a, status::NOTIFY_CLEANUP);
            } else {
                self.cancel_pending(a, status::CANCELLED);
                let body = if lock_status == status::SUCCESS {
                    Response::Lock
                } else {
                    Response::Error { data: vec![] }
                };
                self.complete_async(a, lock_status, body);
            }
        }
        let o = self.opens.remove(&v)?;
        if let Some(id) = &o.identity {
            // A delete-on-close unlinks with the opener's credentials, also when the close
            // comes from a disconnect rather than from the opener's own request.
            crate::identity::become_user(id);
        }
        if let Some(lo) = o.lock_open {
            if let Reply::Closed { delete_file: true } =
                self.shared
                    .lock_request(self.id, 0, locking::Request::Close { open: lo })
            {
                if let Some(st) = &o.stream {
                    // Deleting a named stream leaves the base file alone.
                    if let Err(e) = streams::remove_data(&st.path) {
                        tracing::debug!(path = ?st.path, %e, "stream delete on close failed");
                    }
                    return Some(o);
                }
                let ino = std::fs::symlink_metadata(&o.abs).ok().map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                });
                let r = self.shared.shares[o.share].dir.unlink(&o.rel, o.is_dir);
                if let (Ok(()), Some(ino)) = (&r, ino) {
                    // The streams go with their file (MS-FSA 2.1.5.4).
                    streams::remove_all(&self.shared.shares[o.share].root, ino);
                }
                match r {
                    Ok(()) => {
                        let (parent, n) = parent_and_name(&o.abs);
                        self.shared.dir_changed(parent, FILE_ACTION_REMOVED, n);
                    }
                    Err(e) => tracing::debug!(path = ?o.abs, %e, "delete on close failed"),
                }
            }
        }
        Some(o)
    }

    pub(crate) fn close(&mut self, c: CloseRequest, ctx: &mut ChainCtx) -> Outcome {
        let v = match self.resolve_fid(c.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let mut resp = CloseResponse::default();
        if c.flags & smb_proto::CLOSE_FLAG_POSTQUERY_ATTRIB != 0 {
            if let Some(o) = self.opens.get(&v) {
                // fstat through the handle: the path may be stale after a rename elsewhere.
                let m = match &o.file {
                    Some(f) => f.metadata(),
                    None => std::fs::metadata(&o.abs),
                };
                if let Ok(m) = m {
                    let i = FileInfo::load(&o.abs, &m);
                    resp = CloseResponse {
                        flags: smb_proto::CLOSE_FLAG_POSTQUERY_ATTRIB,
                        creation_time: i.creation,
                        last_access_time: i.access,
                        last_write_time: i.write,
                        change_time: i.change,
                        allocation_size: i.alloc,
                        end_of_file: i.size,
                        attributes: i.attributes,
                    };
                }
            }
        }
        self.close_open(v, status::RANGE_NOT_LOCKED);
        Outcome::Reply(status::SUCCESS, Response::Close(resp))
    }

    pub(crate) fn flush(&mut self, fid: FileId, ctx: &mut ChainCtx) -> Outcome {
        let v = match self.resolve_fid(fid, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let Some(o) = self.opens.get(&v) else {
            return err(status::FILE_CLOSED);
        };
        if o.access & (WRITE_DATA | APPEND_DATA) == 0 {
            return err(status::ACCESS_DENIED);
        }
        if let Some(f) = &o.file {
            if let Err(e) = f.sync_data() {
                return err(io_status(&e));
            }
        }
        Outcome::Reply(status::SUCCESS, Response::Flush)
    }

    fn check_io(&self, o: &Open, offset: u64, length: u64, write: bool) -> Result<(), u32> {
        let Some(lo) = o.lock_open else {
            return Ok(());
        };
        if length == 0 {
            return Ok(());
        }
        match self.shared.lock_request(
            self.id,
            0,
            locking::Request::CheckIo {
                open: lo,
                offset,
                length,
                write,
            },
        ) {
            Reply::Done(Status::Success) => Ok(()),
            Reply::Done(st) => Err(engine_status(st)),
            _ => Ok(()),
        }
    }

    /// A size change through SET_INFO breaks Level II oplocks and read leases like a write
    /// does (MS-FSA 2.1.4.12 for SET_END_OF_FILE / SET_ALLOCATION; smbtorture oplock.batch11).
    /// The lock engine breaks read caching on a write I/O check; the probe range sits at the
    /// very end of the offset space so it answers no byte-range question anyone asked.
    fn break_read_caching(&self, o: &Open) {
        if let Some(lo) = o.lock_open {
            let _ = self.shared.lock_request(
                self.id,
                0,
                locking::Request::CheckIo {
                    open: lo,
                    offset: u64::MAX - 1,
                    length: 1,
                    write: true,
                },
            );
        }
    }

    pub(crate) fn read(&mut self, r: ReadRequest, ctx: &mut ChainCtx) -> Outcome {
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
        if ctx.single && r.length as usize >= RING_IO_MIN {
            let file = match f.try_clone() {
                Ok(f) => f,
                Err(e) => return err(io_status(&e)),
            };
            let padding = self.read_body_padding;
            let data_off = 4 + HEADER_SIZE + READ_BODY_SIZE + padding as usize;
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
        let mut buf = vec![0u8; r.length as usize];
        let mut n = 0usize;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], r.offset.saturating_add(n as u64)) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return err(io_status(&e)),
            }
        }
        buf.truncate(n);
        if (n == 0 && r.length > 0) || (n as u32) < r.minimum_count {
            return err(status::END_OF_FILE);
        }
        if let Some(o) = self.opens.get_mut(&v) {
            o.position = r.offset + n as u64;
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

    pub(crate) fn write(&mut self, w: WriteRequest, _hdr: &Header, ctx: &mut ChainCtx) -> Outcome {
        let v = match self.resolve_fid(w.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        if w.data.len() as u64 > self.max_io() as u64 {
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
        let Some(f) = &o.file else {
            return err(status::INVALID_DEVICE_REQUEST);
        };
        // Offsets past MAXLONGLONG and writes ending past the largest file size an NTFS volume
        // supports are invalid (MS-FSA 2.1.5.3); empty writes are no-ops.
        let offset = w.offset;
        let end = offset.checked_add(w.data.len() as u64);
        if offset > i64::MAX as u64 || end.is_none_or(|e| e > i64::MAX as u64) {
            return err(status::INVALID_PARAMETER);
        }
        if w.data.is_empty() {
            return Outcome::Reply(status::SUCCESS, Response::Write { count: 0 });
        }
        if offset >= MAX_FILE_SIZE {
            return err(status::INVALID_PARAMETER);
        }
        if let Err(st) = self.check_io(o, offset, w.data.len() as u64, true) {
            return err(st);
        }
        if ctx.single && w.data.len() >= RING_IO_MIN {
            let file = match f.try_clone() {
                Ok(f) => f,
                Err(e) => return err(io_status(&e)),
            };
            return Outcome::Deferred(Box::new(FileIo {
                file,
                offset,
                done: 0,
                volatile: v,
                op: FileOp::Write { data: w.data },
                hdr: Header::default(),
                signer: None,
                enc: None,
            }));
        }
        if let Err(e) = f.write_all_at(&w.data, offset) {
            return err(io_status(&e));
        }
        let (parent, n) = parent_and_name(&o.abs);
        if let Some(o) = self.opens.get_mut(&v) {
            o.position = offset + w.data.len() as u64;
        }
        self.shared.dir_changed(parent, FILE_ACTION_MODIFIED, n);
        Outcome::Reply(
            status::SUCCESS,
            Response::Write {
                count: w.data.len() as u32,
            },
        )
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
                let mut w = Writer::with(Vec::with_capacity(HEADER_SIZE + READ_BODY_SIZE));
                h.encode(&mut w);
                // SMB2 READ response (MS-SMB2 2.2.20): StructureSize 17, DataOffset from the
                // start of the SMB2 header, DataLength, DataRemaining, Reserved2.
                w.u16(17)
                    .u8((HEADER_SIZE + READ_BODY_SIZE + padding as usize) as u8)
                    .u8(0)
                    .u32(n as u32)
                    .u32(0)
                    .u32(0);
                buf[4..4 + w.buf.len()].copy_from_slice(&w.buf);
                self.emit_framed(buf, signer, enc);
            }
            FileOp::Write { data } => {
                let _ = data;
                if let Some(o) = self.opens.get(&volatile) {
                    let (parent, name) = parent_and_name(&o.abs);
                    self.shared.dir_changed(parent, FILE_ACTION_MODIFIED, name);
                }
                if let Some(o) = self.opens.get_mut(&volatile) {
                    o.position = offset + n as u64;
                }
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

    fn deferred_reply(
        &mut self,
        mut h: Header,
        st: u32,
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

    pub(crate) fn lock(&mut self, l: LockRequest, hdr: &Header, ctx: &mut ChainCtx) -> Outcome {
        let v = match self.resolve_fid(l.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let Some(lo) = self.opens.get(&v).and_then(|o| o.lock_open) else {
            return err(status::FILE_CLOSED);
        };
        let Some(first) = l.locks.first() else {
            return err(status::INVALID_PARAMETER);
        };
        let ranges_of = |excl: &dyn Fn(u32) -> bool| -> Vec<LockRange> {
            l.locks
                .iter()
                .map(|e| LockRange {
                    offset: e.offset,
                    length: e.length,
                    exclusive: excl(e.flags),
                })
                .collect()
        };
        // Flag validation as Windows does it (MS-SMB2 3.3.5.14): every element is checked
        // against the kind of the first one.
        let is_unlock = first.flags & lock_flags::UNLOCK != 0;
        let fi = lock_flags::FAIL_IMMEDIATELY;
        for (idx, e) in l.locks.iter().enumerate() {
            let bad = match e.flags {
                f if f == lock_flags::SHARED | fi || f == lock_flags::EXCLUSIVE | fi => is_unlock,
                lock_flags::SHARED | lock_flags::EXCLUSIVE => is_unlock || l.locks.len() > 1,
                lock_flags::UNLOCK => !is_unlock,
                _ => {
                    if is_unlock && idx > 0 {
                        return err(status::RANGE_NOT_LOCKED);
                    }
                    true
                }
            };
            if bad {
                if is_unlock && idx > 0 {
                    // The UNLOCK elements before the bad one still take effect (Windows
                    // and Samba; smbtorture smb2.lock.multiple-unlock).
                    let ranges = l.locks[..idx]
                        .iter()
                        .map(|e| LockRange {
                            offset: e.offset,
                            length: e.length,
                            exclusive: false,
                        })
                        .collect();
                    let r = self.shared.lock_request(
                        self.id,
                        hdr.message_id,
                        locking::Request::Unlock { open: lo, ranges },
                    );
                    tracing::debug!(?r, "partial unlock before invalid element");
                }
                return err(status::INVALID_PARAMETER);
            }
        }
        // Lock sequence replay detection (MS-SMB2 3.3.5.14) for resilient and durable
        // opens; buckets 1..=64, anything else is not checked.
        let bucket = (l.lock_sequence >> 4) as usize;
        let seq = (l.lock_sequence & 0xF) as u8;
        let check_seq = self.dialect() >= 0x0210
            && (1..=64).contains(&bucket)
            && self
                .opens
                .get(&v)
                .is_some_and(|o| o.resilient || o.durable.is_some() || self.lock_seq_all_opens());
        if check_seq {
            if let Some(o) = self.opens.get_mut(&v) {
                if o.lock_seq[bucket - 1] == seq {
                    return Outcome::Reply(status::SUCCESS, Response::Lock);
                }
                o.lock_seq[bucket - 1] = 0xFF;
            }
        }
        let req = if is_unlock {
            locking::Request::Unlock {
                open: lo,
                ranges: ranges_of(&|_| false),
            }
        } else {
            locking::Request::Lock {
                open: lo,
                ranges: ranges_of(&|f| f & lock_flags::EXCLUSIVE != 0),
                fail_immediately: first.flags & fi != 0,
            }
        };
        match self.shared.lock_request(self.id, hdr.message_id, req) {
            Reply::Done(Status::Success) => {
                if let Some(o) = self.opens.get_mut(&v) {
                    if check_seq {
                        o.lock_seq[bucket - 1] = seq;
                    }
                    for e in &l.locks {
                        if is_unlock {
                            if let Some(i) = o
                                .locks
                                .iter()
                                .position(|r| r.offset == e.offset && r.length == e.length)
                            {
                                o.locks.remove(i);
                            }
                        } else {
                            o.locks.push(LockRange {
                                offset: e.offset,
                                length: e.length,
                                exclusive: e.flags & lock_flags::EXCLUSIVE != 0,
                            });
                        }
                    }
                }
                Outcome::Reply(status::SUCCESS, Response::Lock)
            }
            Reply::Done(st) => err(engine_status(st)),
            Reply::Pending => {
                let aid = self.go_async(hdr, ctx, PendingKind::Lock { volatile: v });
                Outcome::Pending(aid)
            }
            other => {
                tracing::warn!(?other, "unexpected lock reply");
                err(status::INTERNAL_ERROR)
            }
        }
    }

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
                let mut r = Reader::new(&i.input);
                let parsed =
                    (|| -> Result<(u32, [u8; 16], u16, Vec<u16>), smb_proto::DecodeError> {
                        let caps = r.u32()?;
                        let guid = r.array16()?;
                        let mode = r.u16()?;
                        let count = r.u16()? as usize;
                        let mut d = Vec::new();
                        for _ in 0..count {
                            d.push(r.u16()?);
                        }
                        Ok((caps, guid, mode, d))
                    })();
                let Ok((caps, guid, mode, dialects)) = parsed else {
                    return err(status::INVALID_PARAMETER);
                };
                if caps != n.client_caps
                    || guid != n.client_guid
                    || mode != n.client_security_mode
                    || dialects != n.client_dialects
                {
                    // MS-SMB2 3.3.5.15.12: a mismatch means tampering: drop the connection.
                    self.closed = true;
                    return Outcome::Nothing;
                }
                if i.max_output_response < 24 {
                    return err(status::INVALID_PARAMETER);
                }
                let mut w = Writer::new();
                w.u32(n.server_caps)
                    .bytes(&self.shared.server_guid)
                    .u16(n.server_security_mode)
                    .u16(n.dialect);
                reply(w.buf, i.file_id)
            }
            fsctl::QUERY_NETWORK_INTERFACE_INFO => {
                // Not a handle-based FSCTL: a real FileId is a client error (Windows,
                // Samba bug 14788), not FILE_CLOSED.
                if i.file_id != FileId::RELATED {
                    return err(status::INVALID_PARAMETER);
                }
                let mut w = Writer::new();
                let (family, ip): (u16, Vec<u8>) = match self.local.map(|a| a.ip()) {
                    Some(std::net::IpAddr::V6(v6)) => (23, v6.octets().to_vec()),
                    Some(std::net::IpAddr::V4(v4)) => (2, v4.octets().to_vec()),
                    None => (2, vec![127, 0, 0, 1]),
                };
                // NETWORK_INTERFACE_INFO (MS-SMB2 2.2.32.5): one interface, no RSS/RDMA.
                w.u32(0).u32(1).u32(0).u32(0).u64(1_000_000_000);
                let start = w.len();
                w.u16(family).u16(0);
                if family == 2 {
                    w.bytes(&ip);
                } else {
                    w.u32(0).bytes(&ip).u32(0);
                }
                while w.len() - start < 128 {
                    w.u8(0);
                }
                if (w.len() as u32) > i.max_output_response {
                    return err(status::BUFFER_TOO_SMALL);
                }
                reply(w.buf, i.file_id)
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
            fsctl::DFS_GET_REFERRALS | fsctl::DFS_GET_REFERRALS_EX => err(status::NOT_FOUND),
            fsctl::PIPE_TRANSCEIVE => err(status::NOT_SUPPORTED),
            fsctl::SRV_REQUEST_RESUME_KEY => {
                let v = match self.resolve_fid(i.file_id, ctx) {
                    Ok(v) => v,
                    Err(st) => return err(st),
                };
                if i.max_output_response < 32 {
                    return err(status::INVALID_PARAMETER);
                }
                let mut w = Writer::new();
                w.u64(v).u64(self.id).u64(0).u32(0).u32(0);
                reply(w.buf, i.file_id)
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
                let mut w = Writer::new();
                w.u128(id).u128(0).u128(id).u128(0);
                reply(w.buf, i.file_id)
            }
            fsctl::SET_SPARSE => {
                let v = match self.resolve_fid(i.file_id, ctx) {
                    Ok(v) => v,
                    Err(st) => return err(st),
                };
                let Some(o) = self.opens.get(&v) else {
                    return err(status::FILE_CLOSED);
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
                // SRV_SNAPSHOT_ARRAY with no snapshots.
                let mut w = Writer::new();
                w.u32(0).u32(0).u32(2).u16(0).u16(0);
                reply(w.buf, i.file_id)
            }
            fsctl::GET_REPARSE_POINT => {
                if let Err(st) = self.resolve_fid(i.file_id, ctx) {
                    return err(st);
                }
                err(NOT_A_REPARSE_POINT)
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
    fn copychunk(&mut self, i: &IoctlRequest, ctx: &ChainCtx) -> Outcome {
        let dst = match self.resolve_fid(i.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let out = |st: u32, a: u32, b: u32, c: u32| {
            let mut w = Writer::new();
            w.u32(a).u32(b).u32(c);
            Outcome::Reply(
                st,
                Response::Ioctl {
                    ctl_code: i.ctl_code,
                    file_id: i.file_id,
                    input: vec![],
                    output: w.buf,
                },
            )
        };
        if i.max_output_response < 12 {
            return err(status::INVALID_PARAMETER);
        }
        let mut r = Reader::new(&i.input);
        let parsed = (|| -> Result<(u64, u64, Vec<Chunk>), smb_proto::DecodeError> {
            let key_v = r.u64()?;
            let key_conn = r.u64()?;
            r.skip(8)?;
            let count = r.u32()?;
            r.skip(4)?;
            let mut chunks = Vec::new();
            for _ in 0..count.min(COPYCHUNK_MAX_CHUNKS + 1) {
                chunks.push((r.u64()?, r.u64()?, r.u32()?));
                r.skip(4)?;
            }
            Ok((key_v, key_conn, chunks))
        })();
        let Ok((key_v, key_conn, chunks)) = parsed else {
            return err(status::INVALID_PARAMETER);
        };
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
                return out(INVALID_VIEW_SIZE, written_chunks, 0, written_total);
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

    fn is_sparse(o: &Open) -> bool {
        crate::dosattr::load(&o.abs).is_some_and(|d| d.attributes & ATTR_SPARSE != 0)
    }

    /// FSCTL_QUERY_ALLOCATED_RANGES (MS-FSCC 2.3.41): data ranges within the requested one,
    /// found with SEEK_DATA/SEEK_HOLE.
    fn query_allocated_ranges(&mut self, i: &IoctlRequest, ctx: &ChainCtx) -> Outcome {
        let v = match self.resolve_fid(i.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let Some(o) = self.opens.get(&v) else {
            return err(status::FILE_CLOSED);
        };
        let mut r = Reader::new(&i.input);
        let (Ok(off), Ok(len)) = (r.u64(), r.u64()) else {
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
                use std::os::fd::AsRawFd;
                let fd = f.as_raw_fd();
                let mut pos = off;
                while pos < end {
                    // SAFETY: lseek on a descriptor owned by `f`; no memory is touched.
                    let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
                    if data < 0 || data as u64 >= end {
                        break;
                    }
                    // SAFETY: as above.
                    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
                    let hole = if hole < 0 {
                        end
                    } else {
                        (hole as u64).min(end)
                    };
                    ranges.push((data as u64, hole - data as u64));
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
        let mut w = Writer::new();
        let mut st = status::SUCCESS;
        for (o, l) in ranges {
            if w.len() + 16 > max {
                st = status::BUFFER_OVERFLOW;
                break;
            }
            w.u64(o).u64(l);
        }
        Outcome::Reply(
            st,
            Response::Ioctl {
                ctl_code: i.ctl_code,
                file_id: i.file_id,
                input: vec![],
                output: w.buf,
            },
        )
    }

    /// FSCTL_SET_ZERO_DATA (MS-FSCC 2.3.67): punch a hole in sparse files, write zeros
    /// otherwise; never extends the file.
    fn set_zero_data(&mut self, i: &IoctlRequest, ctx: &ChainCtx) -> Outcome {
        let v = match self.resolve_fid(i.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let Some(o) = self.opens.get(&v) else {
            return err(status::FILE_CLOSED);
        };
        let mut r = Reader::new(&i.input);
        let (Ok(off), Ok(beyond)) = (r.u64(), r.u64()) else {
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
            use std::os::fd::AsRawFd;
            // SAFETY: fallocate on a descriptor owned by `f`; no memory is touched.
            let rc = unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as i64,
                    (end - off) as i64,
                )
            };
            if rc != 0 {
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

    pub(crate) fn query_directory(
        &mut self,
        q: QueryDirectoryRequest,
        ctx: &mut ChainCtx,
    ) -> Outcome {
        let v = match self.resolve_fid(q.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let max_io = self.max_io();
        let Some(o) = self.opens.get_mut(&v) else {
            return err(status::FILE_CLOSED);
        };
        if !o.is_dir {
            return err(status::INVALID_PARAMETER);
        }
        if o.access & LIST_DIRECTORY == 0 {
            return err(status::ACCESS_DENIED);
        }
        if !matches!(
            q.info_class,
            class::DIRECTORY
                | class::FULL_DIRECTORY
                | class::BOTH_DIRECTORY
                | class::NAMES
                | class::ID_BOTH_DIRECTORY
                | class::ID_FULL_DIRECTORY
        ) {
            return err(status::INVALID_INFO_CLASS);
        }
        if q.output_buffer_length > max_io {
            return err(status::INVALID_PARAMETER);
        }
        let restart = q.flags & (query_dir_flags::RESTART_SCANS | query_dir_flags::REOPEN) != 0;
        let pattern = if q.pattern.is_empty() {
            "*".to_string()
        } else {
            q.pattern.clone()
        };
        if restart || o.dir.is_none() {
            let entries = match list_dir(&o.abs, &pattern) {
                Ok(e) => e,
                Err(st) => return err(st),
            };
            o.dir = Some(DirState {
                entries,
                pos: 0,
                started: false,
            });
        }
        let Some(ds) = o.dir.as_mut() else {
            return err(status::INTERNAL_ERROR);
        };
        let first_call = !ds.started;
        ds.started = true;
        if ds.pos >= ds.entries.len() {
            return err(if first_call && ds.entries.is_empty() {
                status::NO_SUCH_FILE
            } else {
                status::NO_MORE_FILES
            });
        }
        let max = q.output_buffer_length as usize;
        let mut out = Writer::new();
        let mut last_start: Option<usize> = None;
        while ds.pos < ds.entries.len() {
            let e = &ds.entries[ds.pos];
            let Some(enc) = fs::encode_dir_entry(q.info_class, e, 0) else {
                return err(status::INVALID_INFO_CLASS);
            };
            let start = (out.len() + 7) & !7;
            if start + enc.len() > max {
                break;
            }
            out.align(8);
            if let Some(ls) = last_start {
                out.set_u32(ls, (start - ls) as u32);
            }
            out.bytes(&enc);
            last_start = Some(start);
            ds.pos += 1;
            if q.flags & query_dir_flags::RETURN_SINGLE_ENTRY != 0 {
                break;
            }
        }
        if last_start.is_none() {
            return err(status::INFO_LENGTH_MISMATCH);
        }
        Outcome::Reply(status::SUCCESS, Response::QueryDirectory { data: out.buf })
    }

    pub(crate) fn change_notify(
        &mut self,
        c: ChangeNotifyRequest,
        hdr: &Header,
        ctx: &mut ChainCtx,
        _last: bool,
    ) -> Outcome {
        let v = match self.resolve_fid(c.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let Some(o) = self.opens.get_mut(&v) else {
            return err(status::FILE_CLOSED);
        };
        if !o.is_dir {
            return err(status::INVALID_PARAMETER);
        }
        if c.output_buffer_length > MAX_NOTIFY {
            return err(status::INVALID_PARAMETER);
        }
        o.notify_watch = true;
        let dir = o.abs.clone();
        self.shared.watch(self.id, dir.clone());
        let aid = self.go_async(
            hdr,
            ctx,
            PendingKind::Notify {
                volatile: v,
                dir,
                max_out: c.output_buffer_length,
            },
        );
        Outcome::Pending(aid)
    }

    /// A change happened in `dir`: complete the pending CHANGE_NOTIFYs watching it.
    pub(crate) fn notify_fire(&mut self, dir: &Path, action: u32, name: &str) {
        let aids: Vec<(u64, u32)> = self
            .pending
            .iter()
            .filter_map(|(a, p)| match &p.kind {
                PendingKind::Notify {
                    dir: d, max_out, ..
                } if d == dir => Some((*a, *max_out)),
                _ => None,
            })
            .collect();
        for (aid, max_out) in aids {
            self.shared.unwatch(self.id, &dir.to_path_buf());
            let n = string_to_utf16(name);
            let mut w = Writer::new();
            w.u32(0).u32(action).u32(n.len() as u32).bytes(&n);
            if w.len() > max_out as usize {
                self.complete_async(
                    aid,
                    status::NOTIFY_ENUM_DIR,
                    Response::ChangeNotify { data: vec![] },
                );
            } else {
                self.complete_async(aid, status::SUCCESS, Response::ChangeNotify { data: w.buf });
            }
        }
    }

    fn open_view_info(o: &Open) -> Result<FileInfo, u32> {
        if o.stream.is_some() {
            let info = std::fs::metadata(&o.abs)
                .map(|m| FileInfo::load(&o.abs, &m))
                .map_err(|e| io_status(&e))?;
            return Ok(match &o.file {
                Some(f) => stream_info(info, f),
                None => info,
            });
        }
        let m = match &o.file {
            Some(f) => f.metadata(),
            None => std::fs::metadata(&o.abs),
        };
        m.map(|m| FileInfo::load(&o.abs, &m))
            .map_err(|e| io_status(&e))
    }

    /// FileStreamInformation entries of the object `o` belongs to: the unnamed stream of a
    /// non-directory first, then the named streams (MS-FSCC 2.4.43).
    fn stream_list(&self, o: &Open) -> Vec<(String, u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let Ok(m) = std::fs::metadata(&o.abs) else {
            return out;
        };
        if !m.is_dir() {
            let i = FileInfo::from_meta(&m);
            out.push(("::$DATA".to_string(), i.size, i.alloc));
        }
        let root = &self.shared.shares[o.share].root;
        for e in streams::list(root, m.ino()) {
            out.push((format!(":{}:$DATA", e.name), e.size, e.alloc));
        }
        out
    }

    pub(crate) fn query_info(&mut self, q: QueryInfoRequest, ctx: &mut ChainCtx) -> Outcome {
        let v = match self.resolve_fid(q.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let Some(o) = self.opens.get(&v) else {
            return err(status::FILE_CLOSED);
        };
        let max = q.output_buffer_length as usize;
        let data = match q.info_type {
            info_type::FILE => {
                let info = match Self::open_view_info(o) {
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
                let view = OpenView {
                    streams,
                    info,
                    delete_pending: o.delete_pending,
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
                let sd = crate::sd::load(&o.abs).encode(q.additional_information);
                if sd.len() > max {
                    let mut w = Writer::new();
                    w.u32(sd.len() as u32);
                    return Outcome::Reply(
                        status::BUFFER_TOO_SMALL,
                        Response::Error { data: w.buf },
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
        let v = match self.resolve_fid(s.file_id, ctx) {
            Ok(v) => v,
            Err(st) => return err(st),
        };
        let Some(o) = self.opens.get(&v) else {
            return err(status::FILE_CLOSED);
        };
        let read_only = self.shared.shares[o.share].read_only;
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
            if let Some(out) = self.rename_lease_break(v, &s, hdr, ctx) {
                return out;
            }
        }
        let mut r = Reader::new(&s.buffer);
        let st = match s.class {
            class::BASIC => self.set_basic(v, &mut r),
            class::RENAME | class::RENAME_EX => self.set_rename(v, &s.buffer, s.class),
            class::DISPOSITION => match r.u8() {
                Ok(d) => self.set_disposition(v, d & 1 != 0),
                Err(_) => status::INFO_LENGTH_MISMATCH,
            },
            class::DISPOSITION_EX => match r.u32() {
                Ok(f) => self.set_disposition(v, f & 1 != 0),
                Err(_) => status::INFO_LENGTH_MISMATCH,
            },
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
    fn set_security(o: &Open, which: u32, buf: &[u8], read_only: bool) -> u32 {
        use crate::sd;
        const WRITE_DAC: u32 = 0x0004_0000;
        const WRITE_OWNER: u32 = 0x0008_0000;
        let owner_group = sd::OWNER_SECURITY_INFORMATION | sd::GROUP_SECURITY_INFORMATION;
        if (which & owner_group != 0 && o.access & WRITE_OWNER == 0)
            || (which & sd::DACL_SECURITY_INFORMATION != 0 && o.access & WRITE_DAC == 0)
        {
            return status::ACCESS_DENIED;
        }
        if read_only {
            return status::ACCESS_DENIED;
        }
        let given = match sd::parse(buf, which) {
            Ok(p) => p,
            Err(st) => return st,
        };
        let mut cur = sd::load(&o.abs);
        cur.merge(given);
        match sd::store(&o.abs, &cur) {
            Ok(()) => status::SUCCESS,
            Err(e) => io_status(&e),
        }
    }

    fn set_basic(&mut self, v: u64, r: &mut Reader<'_>) -> u32 {
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        let parsed = (|| -> Result<[u64; 5], smb_proto::DecodeError> {
            Ok([r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u32()? as u64])
        })();
        let Ok([create, atime, mtime, change, attrs]) = parsed else {
            return status::INFO_LENGTH_MISMATCH;
        };
        if o.access & WRITE_ATTRIBUTES == 0 {
            return status::ACCESS_DENIED;
        }
        let attrs = attrs as u32;
        if attrs & fs::attr::DIRECTORY != 0 && !o.is_dir {
            return status::INVALID_PARAMETER;
        }
        // MS-FSA 2.1.5.14.2: FILE_ATTRIBUTE_TEMPORARY is invalid on a directory.
        if attrs & 0x100 != 0 && o.is_dir {
            return status::INVALID_PARAMETER;
        }
        let to_time = |ft: u64| -> Option<std::time::SystemTime> {
            // 0 = don't change, -1 = stop updating (MS-FSCC 2.4.7); both leave it alone here.
            if ft == 0 || ft == u64::MAX || ft == u64::MAX - 1 {
                return None;
            }
            let (s, ns) = fs::unix_from_filetime(ft);
            if s < 0 {
                return Some(std::time::UNIX_EPOCH);
            }
            Some(std::time::UNIX_EPOCH + std::time::Duration::new(s as u64, ns as u32))
        };
        let mut times = std::fs::FileTimes::new();
        let mut any = false;
        if let Some(t) = to_time(atime) {
            times = times.set_accessed(t);
            any = true;
        }
        if let Some(t) = to_time(mtime) {
            times = times.set_modified(t);
            any = true;
        }
        if any {
            let f = match &o.file {
                Some(f) => f.try_clone(),
                None => File::open(&o.abs),
            };
            match f.and_then(|f| f.set_times(times)) {
                Ok(()) => {}
                Err(e) => return io_status(&e),
            }
        }
        let settable = |ft: u64| ft != 0 && ft != u64::MAX && ft != u64::MAX - 1;
        if settable(create) || settable(change) || attrs != 0 {
            let path = o.abs.clone();
            update_dos(&path, |d, mtime_now| {
                if settable(create) {
                    d.creation = create;
                }
                if settable(change) {
                    d.change = change;
                    d.mtime_guard = mtime_now;
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
            if let Err(e) = std::fs::set_permissions(&o.abs, std::fs::Permissions::from_mode(mode))
            {
                return io_status(&e);
            }
        }
        status::SUCCESS
    }

    fn set_size(&mut self, v: u64, len: u64, allocation: bool) -> u32 {
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        if o.access & (WRITE_DATA | APPEND_DATA) == 0 {
            return status::ACCESS_DENIED;
        }
        let Some(f) = &o.file else {
            return status::INVALID_PARAMETER;
        };
        self.break_read_caching(o);
        let cur = f.metadata().map(|m| m.len()).unwrap_or(0);
        if allocation {
            // Allocation below EOF truncates (MS-FSA 2.1.5.14.1); above EOF it reserves space
            // without changing the size.
            if len >= cur {
                use std::os::fd::AsRawFd;
                if len > 0 {
                    // SAFETY: plain syscall on a descriptor owned by `f` for the whole call.
                    let rc = unsafe {
                        libc::fallocate(
                            f.as_raw_fd(),
                            libc::FALLOC_FL_KEEP_SIZE,
                            0,
                            len.min(i64::MAX as u64) as i64,
                        )
                    };
                    if rc != 0 {
                        tracing::debug!(err = %std::io::Error::last_os_error(), "fallocate");
                    }
                }
                return status::SUCCESS;
            }
        }
        match f.set_len(len) {
            Ok(()) => status::SUCCESS,
            Err(e) => io_status(&e),
        }
    }

    fn set_disposition(&mut self, v: u64, delete: bool) -> u32 {
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        if o.access & DELETE == 0 {
            return status::ACCESS_DENIED;
        }
        if delete {
            if o.is_dir {
                match std::fs::read_dir(&o.abs) {
                    Ok(mut it) => {
                        if it.next().is_some() {
                            return status::DIRECTORY_NOT_EMPTY;
                        }
                    }
                    Err(e) => return io_status(&e),
                }
            } else if let Ok(m) = std::fs::metadata(&o.abs) {
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

    /// A rename through a lease handle first has the lock service break other leases'
    /// handle caching (MS-FSA 2.1.5.14.11 / 2.1.4.12; smbtorture lease.rename_wait): while
    /// that is outstanding the SET_INFO goes async and the rename happens on completion.
    fn rename_lease_break(
        &mut self,
        v: u64,
        s: &SetInfoRequest,
        hdr: &Header,
        ctx: &ChainCtx,
    ) -> Option<Outcome> {
        let o = self.opens.get(&v)?;
        if !matches!(o.grant, OplockGrant::Lease(_)) {
            return None;
        }
        let lo = o.lock_open?;
        let (reply, own) = self.shared.lock_request_inline(
            self.id,
            hdr.message_id,
            locking::Request::BreakForRename { open: lo },
        );
        for n in own {
            self.on_lock_notification(n);
        }
        match reply {
            Reply::Pending => {
                let aid = self.go_async(
                    hdr,
                    ctx,
                    PendingKind::Rename {
                        volatile: v,
                        buffer: s.buffer.clone(),
                        class: s.class,
                    },
                );
                Some(Outcome::Pending(aid))
            }
            Reply::Done(Status::Success) => None,
            Reply::Done(st) => Some(err(engine_status(st))),
            other => {
                tracing::warn!(?other, "unexpected rename break reply");
                None
            }
        }
    }

    fn set_rename(&mut self, v: u64, buf: &[u8], _cls: u8) -> u32 {
        let mut r = Reader::new(buf);
        let parsed = (|| -> Result<(bool, String), smb_proto::DecodeError> {
            let replace = r.u8()? != 0;
            r.skip(7)?;
            let _root = r.u64()?;
            let len = r.u32()? as usize;
            let name = utf16_to_string(r.bytes(len)?)?;
            Ok((replace, name))
        })();
        let Ok((replace, name)) = parsed else {
            return status::INVALID_PARAMETER;
        };
        let Some(o) = self.opens.get(&v) else {
            return status::FILE_CLOSED;
        };
        if o.stream.is_some() || name.starts_with(':') {
            // Renaming streams (MS-FSA 2.1.5.14.11.1) is not supported.
            return status::NOT_SUPPORTED;
        }
        if o.access & DELETE == 0 {
            return status::ACCESS_DENIED;
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
        // An open of the parent directory with DELETE access blocks renames of its children
        // (Windows and Samba; smbtorture oplock.batch19/20, exclusive6). Only this
        // connection's opens are visible here.
        if let Some(parent) = o.abs.parent() {
            if self
                .opens
                .values()
                .any(|x| x.is_dir && x.abs == parent && x.access & DELETE != 0)
            {
                return status::SHARING_VIOLATION;
            }
        }
        let old = o.abs.clone();
        // The same checks against every open in the cluster: the lock service counts them.
        let fs_id = self.shared.shares[o.share].fs_id;
        let file_id_of = |p: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p)
                .ok()
                .map(|m| locking::FileId(fs::stable_file_id(fs_id, m.ino(), "")))
        };
        let usage = |file| self.shared.file_usage(self.id, file, None);
        // An open of the parent directory that does not share delete, or that holds DELETE
        // access, blocks renames of its children (Windows behaviour: smbtorture smb2.rename,
        // oplock.batch19/20).
        if let Some(pid) = o.abs.parent().and_then(file_id_of) {
            match usage(pid) {
                Ok(u) if u.deny_delete > 0 || u.delete_access > 0 => {
                    return status::SHARING_VIOLATION
                }
                Ok(_) => {}
                Err(st) => return engine_status(st),
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
        for x in self.opens.values_mut() {
            if x.abs == old {
                x.abs = target.abs.clone();
                x.rel = target.rel.clone();
            }
        }
        let (op, on) = parent_and_name(&old);
        let (np, nn) = parent_and_name(&target.abs);
        self.shared
            .dir_changed(op, FILE_ACTION_RENAMED_OLD_NAME, on);
        self.shared
            .dir_changed(np, FILE_ACTION_RENAMED_NEW_NAME, nn);
        status::SUCCESS
    }

    pub(crate) fn break_ack(&mut self, a: BreakAck, ctx: &mut ChainCtx) -> Outcome {
        match a {
            BreakAck::Oplock { level, file_id } => {
                ctx.any_tree = true;
                let v = self.resolve_fid(file_id, ctx);
                ctx.any_tree = false;
                let v = match v {
                    Ok(v) => v,
                    Err(st) => return err(st),
                };
                let Some(lo) = self.opens.get(&v).and_then(|o| o.lock_open) else {
                    return err(status::FILE_CLOSED);
                };
                let Some(level_e) = OplockLevel::from_wire(level) else {
                    return err(status::INVALID_PARAMETER);
                };
                match self.shared.lock_request(
                    self.id,
                    0,
                    locking::Request::OplockBreakAck {
                        open: lo,
                        level: level_e,
                    },
                ) {
                    Reply::Acked { grant } => {
                        let lvl = oplock_grant_level(&grant);
                        if let Some(o) = self.opens.get_mut(&v) {
                            o.grant = grant;
                        }
                        Outcome::Reply(
                            status::SUCCESS,
                            Response::OplockBreak {
                                level: lvl,
                                file_id,
                            },
                        )
                    }
                    Reply::Done(st) => err(engine_status(st)),
                    _ => err(status::INTERNAL_ERROR),
                }
            }
            BreakAck::Lease { key, state, .. } => {
                match self.shared.lock_request(
                    self.id,
                    0,
                    locking::Request::LeaseBreakAck {
                        client_guid: self.client_guid(),
                        key: LeaseKey(key),
                        state: LeaseState((state & 0x7) as u8),
                    },
                ) {
                    Reply::Acked { grant } => {
                        let st = match grant {
                            OplockGrant::Lease(l) => l.state.0 as u32,
                            _ => state,
                        };
                        Outcome::Reply(
                            status::SUCCESS,
                            Response::LeaseBreakAck {
                                flags: 0,
                                key,
                                state: st,
                            },
                        )
                    }
                    Reply::Done(Status::Success) => Outcome::Reply(
                        status::SUCCESS,
                        Response::LeaseBreakAck {
                            flags: 0,
                            key,
                            state,
                        },
                    ),
                    Reply::Done(st) => err(engine_status(st)),
                    _ => err(status::INTERNAL_ERROR),
                }
            }
        }
    }

    /// Send an unsolicited OPLOCK_BREAK notification (MS-SMB2 3.3.4.6 / 3.3.4.7).
    fn send_break(&mut self, session_id: u64, body: Response) {
        let h = Header {
            command: smb_proto::Command::OplockBreak as u16,
            flags: hflags::SERVER_TO_REDIR,
            message_id: u64::MAX,
            ..Default::default()
        };
        let mut w = Writer::new();
        h.encode(&mut w);
        body.encode_body(&mut w, 0);
        let enc = self
            .sessions
            .get(&session_id)
            .is_some_and(|s| s.encrypt || s.trees.values().any(|t| t.encrypt))
            .then_some(session_id);
        self.emit(w.buf, enc);
    }

    pub(crate) fn on_lock_notification(&mut self, n: Notification) {
        match n {
            Notification::OplockBreak { open, new_level } => {
                let Some((v, sid)) = self
                    .opens
                    .iter()
                    .find(|(_, o)| o.lock_open == Some(open))
                    .map(|(v, o)| (*v, o.session_id))
                else {
                    return;
                };
                self.send_break(
                    sid,
                    Response::OplockBreak {
                        level: new_level as u8,
                        file_id: FileId {
                            persistent: v,
                            volatile: v,
                        },
                    },
                );
            }
            Notification::LeaseBreak {
                key,
                current,
                new,
                epoch,
                ack_required,
                ..
            } => {
                let sid = self
                    .opens
                    .values()
                    .find(|o| matches!(&o.grant, OplockGrant::Lease(l) if l.key == key))
                    .map(|o| o.session_id)
                    .unwrap_or(0);
                self.send_break(
                    sid,
                    Response::LeaseBreakNotification {
                        epoch: epoch.unwrap_or(0),
                        flags: ack_required as u32,
                        key: key.0,
                        current: current.0 as u32,
                        new: new.0 as u32,
                    },
                );
            }
            Notification::Completed { request, reply } => {
                let Some(aid) = self
                    .pending
                    .iter()
                    .find(|(_, p)| {
                        p.message_id == request.0
                            && matches!(
                                p.kind,
                                PendingKind::Lock { .. }
                                    | PendingKind::Create(_)
                                    | PendingKind::Rename { .. }
                            )
                    })
                    .map(|(a, _)| *a)
                else {
                    return;
                };
                // The deferred operation continues with its session's credentials.
                if let Some(id) = self
                    .pending
                    .get(&aid)
                    .and_then(|p| self.sessions.get(&p.session_id))
                    .and_then(|s| s.identity.clone())
                {
                    crate::identity::become_user(&id);
                }
                let is_create = matches!(
                    self.pending.get(&aid).map(|p| &p.kind),
                    Some(PendingKind::Create(_))
                );
                let rename = match self.pending.get(&aid).map(|p| &p.kind) {
                    Some(PendingKind::Rename {
                        volatile,
                        buffer,
                        class,
                    }) => Some((*volatile, buffer.clone(), *class)),
                    _ => None,
                };
                if let Some((v, buffer, class)) = rename {
                    let st = match reply {
                        Reply::Done(Status::Success) => self.set_rename(v, &buffer, class),
                        Reply::Done(st) => engine_status(st),
                        _ => status::INTERNAL_ERROR,
                    };
                    tracing::debug!(conn = self.id, st, "rename after lease break");
                    if st == status::SUCCESS {
                        self.complete_async(aid, st, Response::SetInfo);
                    } else {
                        self.complete_async(aid, st, Response::Error { data: vec![] });
                    }
                } else if is_create {
                    let Some(p) = self.pending.get_mut(&aid) else {
                        return;
                    };
                    let PendingKind::Create(cont) =
                        std::mem::replace(&mut p.kind, PendingKind::Lock { volatile: 0 })
                    else {
                        return;
                    };
                    let rest = p.rest.take();
                    let (st, fid) = match reply {
                        Reply::Opened { open, grant } => {
                            // A durable open parked while this one waited for its break is
                            // gone for good (its client could not acknowledge the break).
                            crate::durable::purge_conflicting(
                                cont.stable_id,
                                cont.access,
                                cont.share_access,
                                cont.lease.as_ref().map(|l| l.key),
                            );
                            let (out, fid) = self.finish_create(*cont, open, grant);
                            match out {
                                Outcome::Reply(st, body) => {
                                    self.complete_async(aid, st, body);
                                    (st, fid)
                                }
                                _ => {
                                    self.complete_async(
                                        aid,
                                        status::INTERNAL_ERROR,
                                        Response::Error { data: vec![] },
                                    );
                                    (status::INTERNAL_ERROR, None)
                                }
                            }
                        }
                        Reply::Done(st) => {
                            Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                            let st = engine_status(st);
                            self.complete_async(aid, st, Response::Error { data: vec![] });
                            (st, None)
                        }
                        _ => {
                            Self::undo_create(&self.shared.shares[cont.share].dir, &cont);
                            self.complete_async(
                                aid,
                                status::INTERNAL_ERROR,
                                Response::Error { data: vec![] },
                            );
                            (status::INTERNAL_ERROR, None)
                        }
                    };
                    // The rest of a compound that waited for this CREATE.
                    if let Some((msgs, mut ctx)) = rest {
                        ctx.prev_status = st;
                        ctx.file_id = fid;
                        if st != status::SUCCESS {
                            ctx.create_err = Some(st);
                        }
                        let first = ctx.index + 1;
                        self.run_chain(msgs, first, ctx);
                    }
                } else {
                    match reply {
                        Reply::Done(Status::Success) => {
                            self.complete_async(aid, status::SUCCESS, Response::Lock)
                        }
                        Reply::Done(st) => self.complete_async(
                            aid,
                            engine_status(st),
                            Response::Error { data: vec![] },
                        ),
                        _ => self.complete_async(
                            aid,
                            status::INTERNAL_ERROR,
                            Response::Error { data: vec![] },
                        ),
                    }
                }
            }
            other => tracing::debug!(?other, "unhandled lock notification"),
        }
    }
}

const FSCTL_LMR_REQUEST_RESILIENCY: u32 = 0x0014_01D4;
const FSCTL_SMBTORTURE_GLOBAL_READ_RESPONSE_BODY_PADDING8: u32 = 0x8384_8023;
const FSCTL_SMBTORTURE_FSP_ASYNC_SLEEP: u32 = 0x8384_8043;

const MAX_NOTIFY: u32 = 8 * 1024 * 1024;

/// Size of the fixed part of an info class: a smaller output buffer gets
/// INFO_LENGTH_MISMATCH, a buffer between this and the full size BUFFER_OVERFLOW with
/// truncated data (MS-SMB2 3.3.5.20.1). `None`: fixed-size class.
fn fixed_part(it: u8, cls: u8) -> Option<usize> {
    Some(match (it, cls) {
        (info_type::FILE, class::ALL) => 104,
        (info_type::FILE, class::NAME | class::NORMALIZED_NAME) => 4,
        (info_type::FILE, class::ALTERNATE_NAME) => 8,
        (info_type::FILE, class::STREAM) => 32,
        (info_type::FILESYSTEM, fs::fsclass::VOLUME) => 24,
        (info_type::FILESYSTEM, fs::fsclass::ATTRIBUTE) => 16,
        _ => return None,
    })
}

/// Read-modify-write the stored DOS info of `path`; `f` also gets the current mtime FILETIME.
/// io_status for an operation on a client path: a path the kernel would not resolve beneath
/// the share root (EXDEV from openat2 RESOLVE_BENEATH: a symlink or `..` leading out) is an
/// access denial, not a cross-device error.
fn path_status(e: &std::io::Error) -> u32 {
    if e.raw_os_error() == Some(libc::EXDEV) {
        status::ACCESS_DENIED
    } else {
        io_status(e)
    }
}

/// Whether the calling thread's file-system identity may unlink or rename `path` away: write
/// and search permission on its directory, and with the sticky bit set, ownership of the file
/// or the directory (what the kernel checks at unlink time, asked before the fact).
fn unix_may_delete(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = path.parent() else {
        return false;
    };
    let Ok(c) = std::ffi::CString::new(parent.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is NUL-terminated. AT_EACCESS makes the kernel check with the thread's
    // current (fs) credentials instead of the real uid.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc != 0 {
        return false;
    }
    let Ok(dir) = std::fs::metadata(parent) else {
        return false;
    };
    if dir.mode() & 0o1000 == 0 {
        return true;
    }
    let Some(me) = crate::identity::current() else {
        return true;
    };
    me.uid == 0
        || dir.uid() == me.uid
        || std::fs::symlink_metadata(path).is_ok_and(|m| m.uid() == me.uid)
}

/// Open a file for a CREATE that was granted `access`, with the caller's credentials (the
/// thread runs as the session's user, crate::identity), so the kernel's permission check
/// backs the SMB one: a write-capable handle needs write permission, a read-capable one read
/// permission (else ACCESS_DENIED, as Windows answers at CREATE time rather than at the
/// first WRITE). A handle with neither data right (attributes, delete, security) still opens:
/// with O_PATH when the file is not readable.
fn open_checked(
    dir: &ShareRoot,
    rel: &Path,
    access: u32,
    read_only: bool,
) -> std::io::Result<File> {
    const EXECUTE: u32 = 0x20;
    let want_write = !read_only && access & (WRITE_DATA | APPEND_DATA) != 0;
    let want_read = access & (READ_DATA | EXECUTE) != 0;
    let denied = |e: &std::io::Error| e.raw_os_error() == Some(libc::EACCES);
    if !read_only {
        match dir.open_file(rel, libc::O_RDWR, 0) {
            Ok(f) => return Ok(f),
            Err(e) if want_write && denied(&e) => return Err(e),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return Err(e),
            Err(_) => {}
        }
    }
    match dir.open_file(rel, libc::O_RDONLY, 0) {
        Ok(f) => Ok(f),
        Err(e) if want_read || want_write || !denied(&e) => Err(e),
        Err(_) => dir.open_file(rel, libc::O_PATH, 0),
    }
}

fn update_dos(path: &Path, f: impl FnOnce(&mut crate::dosattr::DosInfo, u64)) {
    let Ok(m) = std::fs::metadata(path) else {
        return;
    };
    let cur = FileInfo::from_meta(&m);
    let mut d = crate::dosattr::load(path).unwrap_or(crate::dosattr::DosInfo {
        attributes: cur.attributes & !(fs::attr::DIRECTORY | fs::attr::READONLY),
        creation: cur.creation,
        change: 0,
        mtime_guard: 0,
    });
    f(&mut d, cur.write);
    if let Err(e) = crate::dosattr::store(path, &d) {
        tracing::debug!(?path, %e, "storing DOS attributes failed");
    }
}

/// Snapshot a directory for QUERY_DIRECTORY: ".", ".." then the matching entries.
fn list_dir(dir: &Path, pattern: &str) -> Result<Vec<DirEntry>, u32> {
    let mut out = Vec::new();
    let dot_info = std::fs::metadata(dir)
        .map(|m| FileInfo::load(dir, &m))
        .map_err(|e| io_status(&e))?;
    let parent_info = dir
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| FileInfo::from_meta(&m))
        .unwrap_or(dot_info);
    for (n, i) in [(".", dot_info), ("..", parent_info)] {
        if fs::wildcard_match(pattern, n) {
            out.push(DirEntry {
                name: n.to_string(),
                info: i,
            });
        }
    }
    let rd = std::fs::read_dir(dir).map_err(|e| io_status(&e))?;
    let mut names: Vec<DirEntry> = Vec::new();
    for e in rd.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if streams::is_depot(&name) || !fs::wildcard_match(pattern, &name) {
            continue;
        }
        let Ok(m) = std::fs::metadata(e.path()) else {
            continue;
        };
        names.push(DirEntry {
            name,
            info: FileInfo::load(&e.path(), &m),
        });
    }
    names.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(names);
    Ok(out)
}
