//! Local filesystem side of a share: safe path resolution, metadata, info-class encoding.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use smb_proto::cursor::{string_to_utf16, Writer};
use smb_proto::status;

pub mod attr {
    pub const READONLY: u32 = 0x01;
    pub const HIDDEN: u32 = 0x02;
    pub const SYSTEM: u32 = 0x04;
    pub const DIRECTORY: u32 = 0x10;
    pub const ARCHIVE: u32 = 0x20;
    pub const NORMAL: u32 = 0x80;
}

/// Seconds between 1601-01-01 and 1970-01-01.
const EPOCH_DIFF: u64 = 11_644_473_600;

pub fn filetime_from_unix(secs: i64, nsec: i64) -> u64 {
    let s = (secs + EPOCH_DIFF as i64).max(0) as u64;
    s.saturating_mul(10_000_000)
        .saturating_add((nsec.max(0) as u64) / 100)
}

pub fn now_filetime() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    filetime_from_unix(d.as_secs() as i64, d.subsec_nanos() as i64)
}

/// FILETIME -> (secs, nsec) since the Unix epoch.
pub fn unix_from_filetime(ft: u64) -> (i64, i64) {
    let secs = (ft / 10_000_000) as i64 - EPOCH_DIFF as i64;
    let nsec = ((ft % 10_000_000) * 100) as i64;
    (secs, nsec)
}

/// Characters Windows forbids in names (MS-FSCC 2.1.5.2).
fn bad_char(c: char) -> bool {
    matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*' | '/') || (c as u32) < 0x20
}

/// Validate an SMB path relative to the share root and split it into components.
/// Errors are NTSTATUS values.
pub fn split_smb_path(name: &str) -> Result<Vec<String>, u32> {
    if name.starts_with('\\') {
        return Err(status::INVALID_PARAMETER);
    }
    let mut out = Vec::new();
    let parts: Vec<&str> = name.split('\\').collect();
    let n = parts.len();
    for (i, p) in parts.into_iter().enumerate() {
        if p.is_empty() {
            // A trailing backslash is tolerated; "a\\\\b" is not.
            if i + 1 == n && i > 0 {
                continue;
            }
            if n == 1 {
                continue;
            }
            return Err(status::OBJECT_NAME_INVALID);
        }
        if p == "." {
            continue;
        }
        if p == ".." {
            return Err(status::OBJECT_PATH_SYNTAX_BAD);
        }
        if p.chars().any(bad_char) {
            return Err(if i + 1 == n {
                status::OBJECT_NAME_INVALID
            } else {
                status::OBJECT_PATH_NOT_FOUND
            });
        }
        if p.len() > 255 {
            return Err(status::OBJECT_NAME_INVALID);
        }
        out.push(p.to_string());
    }
    Ok(out)
}

/// Find `name` in `dir`: exact match first, then a case-insensitive match (Windows clients
/// expect case-insensitive names).
fn lookup_component(dir: &Path, name: &str) -> Option<String> {
    let exact = dir.join(name);
    if std::fs::symlink_metadata(&exact).is_ok() {
        return Some(name.to_string());
    }
    let lower = name.to_lowercase();
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let n = e.file_name().into_string().ok()?;
        (n.to_lowercase() == lower).then_some(n)
    })
}

/// Result of resolving a path under a share root.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Path relative to the root with on-disk casing ("" = the root).
    pub rel: PathBuf,
    /// Absolute path.
    pub abs: PathBuf,
    pub exists: bool,
}

/// Resolve components under `root` (canonical). Symlinks pointing outside the share are
/// refused: every existing prefix is canonicalized and must stay under the root.
pub fn resolve(root: &Path, comps: &[String]) -> Result<Resolved, u32> {
    let mut rel = PathBuf::new();
    let n = comps.len();
    for (i, c) in comps.iter().enumerate() {
        let dir = root.join(&rel);
        match lookup_component(&dir, c) {
            Some(found) => {
                rel.push(&found);
                let abs = root.join(&rel);
                let canon = abs
                    .canonicalize()
                    .map_err(|_| status::OBJECT_PATH_NOT_FOUND)?;
                if !canon.starts_with(root) {
                    return Err(status::ACCESS_DENIED);
                }
                if i + 1 < n && !canon.is_dir() {
                    return Err(status::OBJECT_PATH_NOT_FOUND);
                }
            }
            None => {
                if i + 1 < n {
                    return Err(status::OBJECT_PATH_NOT_FOUND);
                }
                rel.push(c);
                return Ok(Resolved {
                    abs: root.join(&rel),
                    rel,
                    exists: false,
                });
            }
        }
    }
    Ok(Resolved {
        abs: root.join(&rel),
        rel,
        exists: true,
    })
}

/// Ensure a lexical relative path from a client contains no escape (used for rename targets).
pub fn rel_is_safe(rel: &Path) -> bool {
    rel.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Stable cluster-wide 128-bit id of a stream (see `lockmgr_engine::types::FileId`).
pub fn stable_file_id(fs_id: u64, ino: u64, stream: &str) -> u128 {
    let mut h = Sha256::new();
    h.update(fs_id.to_le_bytes());
    h.update(ino.to_le_bytes());
    h.update(stream.as_bytes());
    let d = h.finalize();
    let mut a = [0u8; 16];
    a.copy_from_slice(&d[..16]);
    u128::from_le_bytes(a)
}

/// The filesystem id of the filesystem holding `path` (statfs f_fsid).
pub fn statfs_fsid(path: &Path) -> Option<u64> {
    let st = statvfs(path)?;
    Some(st.fsid)
}

pub struct FsStats {
    pub fsid: u64,
    pub block_size: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
}

pub fn statvfs(path: &Path) -> Option<FsStats> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let st = crate::sys::statvfs(&c).ok()?;
    Some(FsStats {
        fsid: st.f_fsid,
        block_size: st.f_frsize,
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
    })
}

/// The file attributes and times of an object as SMB sees them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileInfo {
    pub creation: u64,
    pub access: u64,
    pub write: u64,
    pub change: u64,
    pub size: u64,
    pub alloc: u64,
    pub attributes: u32,
    pub ino: u64,
    pub nlink: u32,
    pub is_dir: bool,
}

impl FileInfo {
    /// Metadata of `path` overlaid with its stored DOS attributes and times.
    pub fn load(path: &Path, m: &Metadata) -> FileInfo {
        let mut i = FileInfo::from_meta(m);
        if let Some(d) = crate::dosattr::load(path) {
            let keep = i.attributes & (attr::DIRECTORY | attr::READONLY);
            let stored = d.attributes & !(attr::DIRECTORY | attr::READONLY | attr::NORMAL);
            i.attributes = keep | stored;
            if !i.is_dir && i.attributes == 0 {
                i.attributes = attr::NORMAL;
            }
            if i.is_dir {
                i.attributes |= attr::DIRECTORY;
            }
            if d.creation != 0 {
                i.creation = d.creation;
            }
            if d.change != 0 && d.mtime_guard == i.write {
                i.change = d.change;
            }
        }
        i
    }

    pub fn from_meta(m: &Metadata) -> FileInfo {
        let is_dir = m.is_dir();
        let mut attributes = if is_dir {
            attr::DIRECTORY
        } else {
            attr::ARCHIVE
        };
        if m.mode() & 0o200 == 0 {
            attributes |= attr::READONLY;
        }
        let write = filetime_from_unix(m.mtime(), m.mtime_nsec());
        // Like Samba, report the last data change (mtime) as ChangeTime: the inode ctime also
        // moves on metadata-only updates Windows would not count.
        let change = write;
        // Linux has no birth time via std::os::unix; use the older of mtime/ctime as creation.
        let creation = match m.created() {
            Ok(t) => {
                let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                filetime_from_unix(d.as_secs() as i64, d.subsec_nanos() as i64)
            }
            Err(_) => write.min(change),
        };
        let size = if is_dir { 0 } else { m.size() };
        FileInfo {
            creation,
            access: filetime_from_unix(m.atime(), m.atime_nsec()),
            write,
            change,
            size,
            alloc: if is_dir { 0 } else { m.blocks() * 512 },
            attributes,
            ino: m.ino(),
            nlink: m.nlink() as u32,
            is_dir,
        }
    }
}

// File information classes (MS-FSCC 2.4).
pub mod class {
    pub const DIRECTORY: u8 = 1;
    pub const FULL_DIRECTORY: u8 = 2;
    pub const BOTH_DIRECTORY: u8 = 3;
    pub const BASIC: u8 = 4;
    pub const STANDARD: u8 = 5;
    pub const INTERNAL: u8 = 6;
    pub const EA: u8 = 7;
    pub const ACCESS: u8 = 8;
    pub const NAME: u8 = 9;
    pub const RENAME: u8 = 10;
    pub const LINK: u8 = 11;
    pub const NAMES: u8 = 12;
    pub const DISPOSITION: u8 = 13;
    pub const POSITION: u8 = 14;
    pub const FULL_EA: u8 = 15;
    pub const MODE: u8 = 16;
    pub const ALIGNMENT: u8 = 17;
    pub const ALL: u8 = 18;
    pub const ALLOCATION: u8 = 19;
    pub const END_OF_FILE: u8 = 20;
    pub const ALTERNATE_NAME: u8 = 21;
    pub const STREAM: u8 = 22;
    pub const COMPRESSION: u8 = 28;
    pub const NETWORK_OPEN: u8 = 34;
    pub const ATTRIBUTE_TAG: u8 = 35;
    pub const ID_BOTH_DIRECTORY: u8 = 37;
    pub const ID_FULL_DIRECTORY: u8 = 38;
    pub const NORMALIZED_NAME: u8 = 48;
    pub const DISPOSITION_EX: u8 = 64;
    pub const RENAME_EX: u8 = 65;
}

pub mod fsclass {
    pub const VOLUME: u8 = 1;
    pub const SIZE: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const ATTRIBUTE: u8 = 5;
    pub const CONTROL: u8 = 6;
    pub const FULL_SIZE: u8 = 7;
    pub const OBJECT_ID: u8 = 8;
    pub const SECTOR_SIZE: u8 = 11;
}

pub fn write_basic(w: &mut Writer, i: &FileInfo) {
    w.u64(i.creation)
        .u64(i.access)
        .u64(i.write)
        .u64(i.change)
        .u32(i.attributes)
        .u32(0);
}

pub fn write_standard(w: &mut Writer, i: &FileInfo, delete_pending: bool) {
    w.u64(i.alloc)
        .u64(i.size)
        // A delete-pending file reports one link fewer, as Windows and Samba do.
        .u32(i.nlink.max(1) - delete_pending as u32)
        .u8(delete_pending as u8)
        .u8(i.is_dir as u8)
        .u16(0);
}

pub fn write_network_open(w: &mut Writer, i: &FileInfo) {
    w.u64(i.creation)
        .u64(i.access)
        .u64(i.write)
        .u64(i.change)
        .u64(i.alloc)
        .u64(i.size)
        .u32(i.attributes)
        .u32(0);
}

/// Per-open state the info classes need besides metadata.
pub struct OpenView<'a> {
    pub info: FileInfo,
    pub delete_pending: bool,
    pub access: u32,
    pub position: u64,
    pub mode: u32,
    /// Name as the client sees it, with a leading backslash.
    pub name: &'a str,
    /// FileStreamInformation entries (name as `:NAME:$DATA`, size, allocation); only
    /// filled for that class.
    pub streams: Vec<(String, u64, u64)>,
}

/// Encode a QUERY_INFO file class. Errors are NTSTATUS values.
pub fn query_file_info(cls: u8, v: &OpenView<'_>) -> Result<Vec<u8>, u32> {
    let mut w = Writer::new();
    let i = &v.info;
    match cls {
        class::BASIC => write_basic(&mut w, i),
        class::STANDARD => write_standard(&mut w, i, v.delete_pending),
        class::INTERNAL => {
            w.u64(i.ino);
        }
        class::EA => {
            w.u32(0);
        }
        class::ACCESS => {
            w.u32(v.access);
        }
        class::POSITION => {
            w.u64(v.position);
        }
        class::MODE => {
            w.u32(v.mode);
        }
        class::ALIGNMENT => {
            w.u32(0);
        }
        class::NORMALIZED_NAME => {
            let n = string_to_utf16(v.name.trim_start_matches('\\'));
            w.u32(n.len() as u32).bytes(&n);
        }
        class::NAME => {
            let n = string_to_utf16(v.name);
            w.u32(n.len() as u32).bytes(&n);
        }
        class::ALL => {
            write_basic(&mut w, i);
            write_standard(&mut w, i, v.delete_pending);
            w.u64(i.ino)
                .u32(0)
                .u32(v.access)
                .u64(v.position)
                .u32(v.mode)
                .u32(0);
            let n = string_to_utf16(v.name);
            w.u32(n.len() as u32).bytes(&n);
        }
        class::NETWORK_OPEN => write_network_open(&mut w, i),
        class::ATTRIBUTE_TAG => {
            w.u32(i.attributes).u32(0);
        }
        class::STREAM => {
            // Entries are 8-byte aligned; the last has NextEntryOffset 0 (MS-FSCC 2.4.43).
            let k = v.streams.len();
            for (idx, (name, size, alloc)) in v.streams.iter().enumerate() {
                let n = string_to_utf16(name);
                let len = 24 + n.len();
                let padded = (len + 7) & !7;
                let next = if idx + 1 < k { padded as u32 } else { 0 };
                w.u32(next)
                    .u32(n.len() as u32)
                    .u64(*size)
                    .u64(*alloc)
                    .bytes(&n);
                if idx + 1 < k {
                    w.zeros(padded - len);
                }
            }
        }
        class::COMPRESSION => {
            w.u64(i.size).u16(0).u8(0).u8(0).u8(0).zeros(3);
        }
        class::FULL_EA => return Err(status::EAS_NOT_SUPPORTED),
        class::ALTERNATE_NAME => {
            let base = v.name.rsplit('\\').next().unwrap_or("");
            let n = string_to_utf16(&short_name(base));
            w.u32(n.len() as u32).bytes(&n);
        }
        _ => return Err(status::INVALID_INFO_CLASS),
    }
    Ok(w.buf)
}

/// Encode a QUERY_INFO filesystem class.
pub fn query_fs_info(cls: u8, root: &Path, fs_id: u64) -> Result<Vec<u8>, u32> {
    let mut w = Writer::new();
    let st = statvfs(root).unwrap_or(FsStats {
        fsid: 0,
        block_size: 4096,
        blocks: 0,
        bfree: 0,
        bavail: 0,
    });
    let bsize = st.block_size.max(512);
    let sectors_per_unit = (bsize / 512) as u32;
    match cls {
        fsclass::VOLUME => {
            let label = string_to_utf16("share");
            w.u64(0)
                .u32(fs_id as u32)
                .u32(label.len() as u32)
                .u8(0)
                .u8(0)
                .bytes(&label);
        }
        fsclass::SIZE => {
            w.u64(st.blocks)
                .u64(st.bavail)
                .u32(sectors_per_unit)
                .u32(512);
        }
        fsclass::FULL_SIZE => {
            w.u64(st.blocks)
                .u64(st.bavail)
                .u64(st.bfree)
                .u32(sectors_per_unit)
                .u32(512);
        }
        fsclass::DEVICE => {
            // FILE_DEVICE_DISK, no special characteristics.
            w.u32(7).u32(0x20);
        }
        fsclass::ATTRIBUTE => {
            let name = string_to_utf16("NTFS");
            // CASE_SENSITIVE_SEARCH | CASE_PRESERVED_NAMES | UNICODE_ON_DISK | PERSISTENT_ACLS
            // | SUPPORTS_SPARSE_FILES | NAMED_STREAMS
            w.u32(
                0x0000_0001 | 0x0000_0002 | 0x0000_0004 | 0x0000_0008 | 0x0000_0040 | 0x0004_0000,
            )
            .u32(255)
            .u32(name.len() as u32)
            .bytes(&name);
        }
        fsclass::SECTOR_SIZE => {
            w.u32(512).u32(512).u32(512).u32(512).u32(0x3).u32(0).u32(0);
        }
        fsclass::OBJECT_ID => {
            w.u128(fs_id as u128).zeros(48);
        }
        fsclass::CONTROL => {
            // FileFsControlInformation: no quotas; thresholds "none" (-1).
            w.u64(0)
                .u64(0)
                .u64(0)
                .u64(u64::MAX)
                .u64(u64::MAX)
                .u32(0)
                .u32(0);
        }
        _ => return Err(status::INVALID_INFO_CLASS),
    }
    Ok(w.buf)
}

/// One directory entry for QUERY_DIRECTORY.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub info: FileInfo,
}

/// Encode one entry of a directory info class; `None` for an unsupported class.
pub fn encode_dir_entry(cls: u8, e: &DirEntry, index: u32) -> Option<Vec<u8>> {
    let mut w = Writer::new();
    let name = string_to_utf16(&e.name);
    let i = &e.info;
    w.u32(0).u32(index);
    if cls == class::NAMES {
        w.u32(name.len() as u32).bytes(&name);
        return Some(w.buf);
    }
    w.u64(i.creation)
        .u64(i.access)
        .u64(i.write)
        .u64(i.change)
        .u64(i.size)
        .u64(i.alloc)
        .u32(i.attributes)
        .u32(name.len() as u32);
    match cls {
        class::DIRECTORY => {}
        class::FULL_DIRECTORY => {
            w.u32(0);
        }
        class::BOTH_DIRECTORY | class::ID_BOTH_DIRECTORY => {
            let short = if e.name == "." || e.name == ".." {
                Vec::new()
            } else {
                string_to_utf16(&short_name(&e.name))
            };
            let mut field = [0u8; 24];
            let n = short.len().min(24);
            field[..n].copy_from_slice(&short[..n]);
            w.u32(0).u8(n as u8).u8(0).bytes(&field);
            if cls == class::ID_BOTH_DIRECTORY {
                w.u16(0).u64(i.ino);
            }
        }
        class::ID_FULL_DIRECTORY => {
            w.u32(0).u32(0).u64(i.ino);
        }
        _ => return None,
    }
    w.bytes(&name);
    Some(w.buf)
}

/// The 8.3 alias of a long name: the name itself (upper-cased) when it already is a valid
/// 8.3 name, else a deterministic hash-mangled alias (like Samba's "mangled names").
pub fn short_name(name: &str) -> String {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'()-@^_`{}~".contains(c);
    let (base, ext) = match name.rfind('.') {
        Some(p) if p > 0 => (&name[..p], &name[p + 1..]),
        _ => (name, ""),
    };
    let fits = !base.is_empty()
        && base.len() <= 8
        && ext.len() <= 3
        && base.chars().all(valid_char)
        && ext.chars().all(valid_char);
    if fits {
        return name.to_ascii_uppercase();
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let prefix: String = base
        .chars()
        .filter(|c| valid_char(*c))
        .take(5)
        .collect::<String>()
        .to_ascii_uppercase();
    let tag: String = [h % 36, (h / 36) % 36]
        .iter()
        .map(|d| DIGITS[*d as usize] as char)
        .collect();
    let ext: String = ext
        .chars()
        .filter(|c| valid_char(*c))
        .take(3)
        .collect::<String>()
        .to_ascii_uppercase();
    let mut out = format!(
        "{}~{}",
        if prefix.is_empty() {
            "_".into()
        } else {
            prefix
        },
        tag
    );
    if !ext.is_empty() {
        out.push('.');
        out.push_str(&ext);
    }
    out
}

/// Windows wildcard match, case-insensitive (MS-FSA 2.1.4.4, FsRtlIsNameInExpression): `*`,
/// `?`, and the DOS wildcards `<` (DOS_STAR), `>` (DOS_QM), `"` (DOS_DOT), with Samba's
/// `ms_fnmatch` semantics where the specification is vague.
///
/// Runs in O(name x pattern) time and O(pattern) space whatever the pattern: the old
/// backtracking matcher took exponential time on patterns such as 25 `*` then `b` against a
/// 200-character name, pinning a worker thread (and every connection on it) for ever.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    wildcard_match_counted(pattern, name).0
}

/// [`wildcard_match`], also returning the number of (name position, pattern position) steps
/// taken, so tests can check the bound.
fn wildcard_match_counted(pattern: &str, name: &str) -> (bool, u64) {
    if pattern.is_empty() || pattern == "*" || pattern == "*.*" {
        return (true, 0);
    }
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    let m = p.len();
    // The last dot of the name: DOS_STAR does not match past it.
    let last_dot = n.iter().rposition(|&c| c == '.');
    // NFA simulation: `cur[j]` = "pattern[j..] may match name[i..]" for the current name
    // position i. Every transition goes from j to j or j + 1, so one forward pass over j
    // closes the set under the zero-width (epsilon) moves.
    let mut cur = vec![false; m + 1];
    let mut next = vec![false; m + 1];
    cur[0] = true;
    let mut steps: u64 = 0;
    for i in 0..=n.len() {
        let ch = n.get(i).copied();
        // Zero-width moves at position i.
        for j in 0..m {
            steps += 1;
            if !cur[j] {
                continue;
            }
            let empty_ok = match p[j] {
                '*' | '<' => true,
                // DOS_QM matches nothing at a dot or at the end of the name.
                '>' => ch.is_none_or(|c| c == '.'),
                // DOS_DOT matches nothing at the end of the name.
                '"' => ch.is_none(),
                _ => false,
            };
            if empty_ok {
                cur[j + 1] = true;
            }
        }
        let Some(c) = ch else {
            return (cur[m], steps);
        };
        // Moves consuming name[i].
        next.iter_mut().for_each(|b| *b = false);
        let mut any = false;
        for j in 0..m {
            steps += 1;
            if !cur[j] {
                continue;
            }
            let (stay, advance) = match p[j] {
                '*' => (true, false),
                // DOS_STAR consumes characters up to the last dot, then the last dot itself
                // ends it; after the last dot (or without one) it is a plain `*`.
                '<' => match last_dot {
                    Some(d) if i == d => (false, true),
                    _ => (true, false),
                },
                '?' => (false, true),
                // DOS_QM consumes one character that is not a dot; a dot only when it is
                // the last character of the name (Samba ms_fnmatch).
                '>' => (false, c != '.' || i + 1 == n.len()),
                '"' => (false, c == '.'),
                lit => (false, lit == c),
            };
            if stay {
                next[j] = true;
                any = true;
            }
            if advance {
                next[j + 1] = true;
                any = true;
            }
        }
        if !any {
            return (false, steps);
        }
        std::mem::swap(&mut cur, &mut next);
    }
    (cur[m], steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", "abc"));
        assert!(wildcard_match("a?c", "ABC"));
        assert!(!wildcard_match("a?c", "abbc"));
        assert!(wildcard_match("*.txt", "x.TXT"));
        assert!(wildcard_match("<.txt", "x.txt"));
        assert!(wildcard_match("abc\"", "abc"));
        assert!(wildcard_match("ab>", "ab"));
        assert!(!wildcard_match("*.txt", "x.doc"));
    }

    /// The previous backtracking matcher, kept as the reference for the semantics (it is
    /// exponential, so only short inputs are compared).
    fn reference(p: &[char], n: &[char], full: &[char]) -> bool {
        let Some((&c, rest)) = p.split_first() else {
            return n.is_empty();
        };
        let at = full.len() - n.len();
        let last_dot = full.iter().rposition(|&ch| ch == '.');
        match c {
            '*' => (0..=n.len()).any(|k| reference(rest, &n[k..], full)),
            '?' => !n.is_empty() && reference(rest, &n[1..], full),
            '>' => {
                if n.is_empty() {
                    reference(rest, n, full)
                } else if n[0] == '.' {
                    reference(rest, n, full) || (n.len() == 1 && reference(rest, &n[1..], full))
                } else {
                    reference(rest, &n[1..], full)
                }
            }
            '"' => {
                if n.is_empty() {
                    reference(rest, n, full)
                } else {
                    n[0] == '.' && reference(rest, &n[1..], full)
                }
            }
            '<' => {
                // Samba ms_fnmatch_core: from a position at or before the last dot, up to
                // and including that dot; after it (or without a dot), anything.
                let limit = match last_dot {
                    Some(d) if d >= at => d + 1 - at,
                    _ => n.len(),
                };
                (0..=limit).any(|k| reference(rest, &n[k..], full))
            }
            _ => !n.is_empty() && n[0] == c && reference(rest, &n[1..], full),
        }
    }

    fn check(p: &str, n: &str, want: bool) {
        assert_eq!(wildcard_match(p, n), want, "pattern {p:?} name {n:?}");
    }

    /// MS-FSA 2.1.4.4 / Samba ms_fnmatch cases, including the DOS wildcards as Windows
    /// clients send them (`*.` becomes `<"`, `?` before a dot becomes `>`).
    #[test]
    fn wildcards_dos_semantics() {
        // DOS_STAR stops at the last dot.
        check("<.txt", "a.b.txt", true);
        check("<", "abc", true);
        check("<", "a.b", false);
        check("<.", "a.", true);
        check("<\"", "abc", true);
        check("<\"", "abc.d", false);
        check("<.<", "a.b.c", true);
        check("a.<", "a.b", true);
        check("<b", "ab", true);
        check("<b", "a.b", true);
        check("<b", "a.xb", false);
        check("*b", "a.xb", true);
        // DOS_QM: one char, nothing at a dot or the end; a trailing dot only at the end.
        check(">>>.txt", "ab.txt", true);
        check(">>>.txt", "abcd.txt", false);
        check("a>", "a.", true);
        check("a>.b", "a.b", true);
        check(">", "", true);
        // DOS_DOT: a dot, or nothing at the end.
        check("a\"b", "a.b", true);
        check("a\"b", "ab", false);
        check("a\"", "a", true);
        check("a\"", "a.", true);
        // Case-insensitive, non-ASCII included.
        check("Ä*", "äbc", true);
        check("*B", "aab", true);
        check("*b", "aaa", false);
    }

    /// Compare with the reference matcher on every short pattern over a small alphabet.
    #[test]
    fn wildcards_agree_with_reference() {
        let alpha = ['a', '.', '*', '?', '<', '>', '"'];
        let names = [
            "", "a", ".", "a.", ".a", "aa", "a.a", "a..", "aa.a.", "a.a.a", "..a",
        ];
        let mut pats = vec![String::new()];
        for _ in 0..4 {
            let mut more = Vec::new();
            for p in &pats {
                for c in alpha {
                    more.push(format!("{p}{c}"));
                }
            }
            pats.extend(more);
        }
        pats.sort();
        pats.dedup();
        for p in &pats {
            if p == "*" || p == "*.*" || p.is_empty() {
                continue;
            }
            let pc: Vec<char> = p.chars().collect();
            for n in names {
                let nc: Vec<char> = n.chars().collect();
                assert_eq!(
                    wildcard_match(p, n),
                    reference(&pc, &nc, &nc),
                    "pattern {p:?} name {n:?}"
                );
            }
        }
    }

    /// The matcher is linear in name x pattern: count its steps on patterns that made the
    /// backtracking matcher exponential.
    #[test]
    fn wildcards_linear_in_name_times_pattern() {
        let name200 = "a".repeat(200);
        let dotted = "a.".repeat(100);
        let cases = [
            ("*".repeat(25) + "b", name200.clone()),
            ("*a".repeat(40) + "b", name200.clone()),
            ("<>".repeat(50) + "b", dotted.clone()),
            (
                "<".repeat(30) + "\"" + &">".repeat(30) + "b",
                dotted.clone(),
            ),
            ("*?".repeat(60) + "x", name200.clone()),
        ];
        for (p, n) in &cases {
            let (matched, steps) = wildcard_match_counted(p, n);
            assert!(!matched, "{p} {n}");
            let bound = 2 * (n.chars().count() as u64 + 1) * (p.chars().count() as u64 + 1);
            assert!(steps <= bound, "{p:?}: {steps} steps > {bound}");
        }
        // And a match at the end of the same work.
        let (matched, steps) = wildcard_match_counted(&("*".repeat(25) + "b"), &(name200 + "b"));
        assert!(matched);
        assert!(steps <= 2 * 202 * 27);
    }

    #[test]
    fn path_validation() {
        assert_eq!(split_smb_path("a\\b").unwrap(), vec!["a", "b"]);
        assert_eq!(split_smb_path("").unwrap(), Vec::<String>::new());
        assert_eq!(split_smb_path("..\\x"), Err(status::OBJECT_PATH_SYNTAX_BAD));
        assert_eq!(split_smb_path("a|b"), Err(status::OBJECT_NAME_INVALID));
        assert_eq!(split_smb_path("\\a"), Err(status::INVALID_PARAMETER));
    }

    #[test]
    fn symlink_out_of_share_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("esc")).unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(
            resolve(&root, &["esc".into(), "passwd".into()]).err(),
            Some(status::ACCESS_DENIED)
        );
    }

    #[test]
    fn stable_ids_depend_on_inputs() {
        assert_eq!(stable_file_id(1, 2, ""), stable_file_id(1, 2, ""));
        assert_ne!(stable_file_id(1, 2, ""), stable_file_id(1, 3, ""));
    }
}
