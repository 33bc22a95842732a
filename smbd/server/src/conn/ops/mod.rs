//! File service: the SMB2 commands that work on opens (MS-SMB2 3.3.5.9 - 3.3.5.22), one
//! file per command family (`create`, `close`, `io`, `lock`, `ioctl`, `dir`, `info`, `oplock`,
//! `durable`). Here: what they share, above all [`Conn::open_for`], the one way from a
//! request's FileId to its open.

use smb_proto::NtStatus;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use smb_proto::{info_type, oplock_level, status, FileId};

use crate::beneath::ShareRoot;
use crate::conn::{ChainCtx, Conn, Open};
use crate::fs::{self, class, DirEntry};
use crate::locking::{ClientGuid, OplockGrant, Status};
use crate::streams;

mod close;
mod create;
mod dir;
mod durable;
mod info;
mod io;
mod ioctl;
mod lock;
mod oplock;
mod pipe;

pub(crate) use pipe::PipeOpen;

/// READs and WRITEs of at least this many bytes (outside compounds) go through the worker's
/// io_uring; smaller ones are cheaper as a synchronous pread/pwrite on the page cache than a
/// dup of the descriptor and a ring round trip.
const RING_IO_MIN: usize = 64 * 1024;

const FILE_ACTION_ADDED: u32 = 1;
const FILE_ACTION_REMOVED: u32 = 2;
const FILE_ACTION_MODIFIED: u32 = 3;
const FILE_ACTION_RENAMED_OLD_NAME: u32 = 4;
const FILE_ACTION_RENAMED_NEW_NAME: u32 = 5;
/// The CompletionFilter bits a WRITE's MODIFIED matches: the data and the size may change
/// (MS-FSA 2.1.5.3; FILE_NOTIFY_CHANGE_SIZE / LAST_WRITE, MS-SMB2 2.2.35).
const WRITE_CHANGE: u32 =
    smb_proto::fscc::notify_filter::SIZE | smb_proto::fscc::notify_filter::LAST_WRITE;
const ATTR_SPARSE: u32 = 0x200;
/// Largest file offset a write may start at (NTFS MAXFILESIZE, what Windows and Samba enforce).
const MAX_FILE_SIZE: u64 = 0xfff_ffff_0000;
const FSCTL_GET_COMPRESSION: u32 = 0x0009_003C;
const FSCTL_SET_COMPRESSION: u32 = 0x0009_C040;
/// Server-side copy limits advertised on INVALID_PARAMETER (the values Windows and Samba use).
const COPYCHUNK_MAX_CHUNKS: u32 = 256;
const COPYCHUNK_MAX_CHUNK_SIZE: u32 = 1024 * 1024;
const COPYCHUNK_MAX_TOTAL: u32 = 16 * 1024 * 1024;
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

fn io_status(e: &std::io::Error) -> NtStatus {
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

fn engine_status(st: Status) -> NtStatus {
    NtStatus(st.ntstatus())
}

fn oplock_grant_level(g: &OplockGrant) -> u8 {
    match g {
        OplockGrant::None => oplock_level::NONE,
        OplockGrant::Oplock(l) => *l as u8,
        OplockGrant::Lease(_) => oplock_level::LEASE,
    }
}

/// A 3.x request's ChannelSequence: the low 16 bits of the header's Status field
/// (MS-SMB2 2.2.1.2).
pub(crate) fn channel_sequence(hdr: &smb_proto::Header) -> u16 {
    (hdr.status.0 & 0xFFFF) as u16
}

impl Conn {
    /// Bookkeeping every request on a handle does before its own processing.
    ///
    /// MS-SMB2 3.3.5.2.10: a request on a handle whose ChannelSequence is newer than the
    /// open's (in 16-bit serial arithmetic) moves the open to it; a WRITE, SET_INFO or IOCTL
    /// with an older one is refused with STATUS_FILE_NOT_AVAILABLE, so a write a client sent
    /// before it failed over to another channel cannot land after the ones it sent since.
    /// Other requests with an older sequence proceed (reads are harmless). The spec's
    /// outstanding-request counts (which also refuse a replay while requests of the previous
    /// sequence are in flight) are not kept: a handle's requests are executed in arrival
    /// order by its connection, and a replay is only sent after the original's channel failed.
    pub(crate) fn on_handle_request(
        &mut self,
        req: &smb_proto::Request,
        hdr: &smb_proto::Header,
        ctx: &ChainCtx,
    ) -> Result<(), NtStatus> {
        use smb_proto::{dialect, Request};
        let d = self.dialect();
        if d < dialect::SMB300 {
            return Ok(());
        }
        let (fid, modifying) = match req {
            Request::Write(w) => (w.file_id, true),
            Request::SetInfo(s) => (s.file_id, true),
            Request::Ioctl(i) => (i.file_id, true),
            Request::Read(r) => (r.file_id, false),
            Request::Lock(l) => (l.file_id, false),
            Request::Flush { file_id } => (*file_id, false),
            Request::QueryInfo(q) => (q.file_id, false),
            Request::QueryDirectory(q) => (q.file_id, false),
            Request::ChangeNotify(c) => (c.file_id, false),
            _ => return Ok(()),
        };
        let Ok(v) = self.resolve_fid(fid, ctx) else {
            // No open: the handler answers for the FileId itself.
            return Ok(());
        };
        let Some(o) = self.opens.get_mut(&v) else {
            return Ok(());
        };
        // Open.IsReplayEligible goes FALSE with the first request on a non-persistent
        // handle (MS-SMB2 3.3.5.20, 3.3.5.21 and the other per-command sections): the client
        // has seen the CREATE succeed, so a later replay of it is a new create (smbtorture
        // smb2.replay.replay6).
        if !o.durable.as_ref().is_some_and(|d| d.is_persistent()) {
            o.replay = None;
        }
        let seq = channel_sequence(hdr);
        let ahead = seq.wrapping_sub(o.channel_sequence);
        if ahead == 0 {
            Ok(())
        } else if ahead <= 0x7FFF {
            o.channel_sequence = seq;
            Ok(())
        } else if modifying {
            Err(status::FILE_NOT_AVAILABLE)
        } else {
            Ok(())
        }
    }

    /// Map a request FileId (or the related-chain placeholder) to an open of this session.
    fn resolve_fid(&self, fid: FileId, ctx: &ChainCtx) -> Result<u64, NtStatus> {
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

    /// The open a request's FileId names, with its volatile id: the one way a handler gets
    /// from a FileId to its [`Open`] (see [`Conn::resolve_fid`] for the rules).
    fn open_for(&self, fid: FileId, ctx: &ChainCtx) -> Result<(u64, &Open), NtStatus> {
        let v = self.resolve_fid(fid, ctx)?;
        let o = self.opens.get(&v).ok_or(status::FILE_CLOSED)?;
        Ok((v, o))
    }

    /// [`Conn::open_for`], for a handler that changes the open.
    fn open_for_mut(&mut self, fid: FileId, ctx: &ChainCtx) -> Result<(u64, &mut Open), NtStatus> {
        let v = self.resolve_fid(fid, ctx)?;
        let o = self.opens.get_mut(&v).ok_or(status::FILE_CLOSED)?;
        Ok((v, o))
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
}

const FSCTL_LMR_REQUEST_RESILIENCY: u32 = 0x0014_01D4;
pub(super) const FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT: u32 = 0x8384_8003;
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
fn path_status(e: &std::io::Error) -> NtStatus {
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
    // With the thread's current (fs) credentials, not the real uid.
    if !crate::sys::access_as_caller(&c, libc::W_OK | libc::X_OK) {
        return false;
    }
    let Ok(dir) = fs::metadata(parent) else {
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
        || fs::symlink_metadata(path).is_ok_and(|m| m.uid() == me.uid)
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
    let Ok(m) = fs::metadata(path) else {
        return;
    };
    let cur = fs::info_from_meta(&m);
    let mut d = crate::dosattr::load(path).unwrap_or(crate::dosattr::DosInfo {
        attributes: cur.attributes & !(fs::attr::DIRECTORY | fs::attr::READONLY),
        creation: cur.creation,
        ..Default::default()
    });
    f(&mut d, cur.write);
    if let Err(e) = crate::dosattr::store(path, &d) {
        tracing::debug!(?path, %e, "storing DOS attributes failed");
    }
}

/// [`update_dos`] for the object an open holds (`obj`, possibly O_PATH), not for a name, at
/// `now` (FILETIME). `f` gets the stored record, the LastWriteTime reported before the change
/// and the kernel mtime (crate::dosattr).
fn update_dos_fd(obj: &File, now: u64, f: impl FnOnce(&mut crate::dosattr::DosInfo, u64, u64)) {
    use std::os::fd::AsFd;
    let Ok(m) = obj.metadata() else {
        return;
    };
    let cur = fs::info_from_meta(&m);
    let mut d = crate::dosattr::load_fd(obj.as_fd()).unwrap_or(crate::dosattr::DosInfo {
        attributes: cur.attributes & !(fs::attr::DIRECTORY | fs::attr::READONLY),
        creation: cur.creation,
        ..Default::default()
    });
    let reported = d.reported_write(cur.write, now);
    f(&mut d, reported, cur.write);
    if let Err(e) = crate::dosattr::store_fd(obj.as_fd(), &d) {
        tracing::debug!(%e, "storing DOS attributes failed");
    }
}

/// Snapshot a directory for QUERY_DIRECTORY at `now` (FILETIME): ".", ".." then the
/// matching entries.
fn list_dir(dir: &Path, pattern: &str, now: u64) -> Result<Vec<DirEntry>, NtStatus> {
    let mut out = Vec::new();
    let dot_info = fs::metadata(dir)
        .map(|m| fs::load_info(dir, &m, now))
        .map_err(|e| io_status(&e))?;
    let parent_info = dir
        .parent()
        .and_then(|p| fs::metadata(p).ok())
        .map(|m| fs::info_from_meta(&m))
        .unwrap_or(dot_info);
    for (n, i) in [(".", dot_info), ("..", parent_info)] {
        if fs::wildcard_match(pattern, n) {
            out.push(DirEntry {
                name: n.to_string(),
                info: i,
            });
        }
    }
    let rd = fs::read_dir(dir).map_err(|e| io_status(&e))?;
    let mut names: Vec<DirEntry> = Vec::new();
    for e in rd.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if streams::is_depot(&name) || !fs::wildcard_match(pattern, &name) {
            continue;
        }
        let Ok(m) = fs::metadata(&e.path()) else {
            continue;
        };
        names.push(DirEntry {
            name,
            info: fs::load_info(&e.path(), &m, now),
        });
    }
    names.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(names);
    Ok(out)
}
