//! Local filesystem side of a share: safe path resolution, metadata, and the facts the
//! info-class encoders of `smb_proto::fscc` turn into bytes.

use smb_proto::NtStatus;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};
use smb_proto::status;

// The wire side of file information lives in smb-proto; the server fills it in.
use smb_proto::fscc;
pub use smb_proto::fscc::{
    attr, class, encode_dir_entry, fsclass, query_file_info, DirEntry, FileInfo, FsStats, OpenView,
};

/// Seconds between 1601-01-01 and 1970-01-01.
const EPOCH_DIFF: u64 = 11_644_473_600;

pub fn filetime_from_unix(secs: i64, nsec: i64) -> u64 {
    let s = (secs + EPOCH_DIFF as i64).max(0) as u64;
    s.saturating_mul(10_000_000)
        .saturating_add((nsec.max(0) as u64) / 100)
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
pub fn split_smb_path(name: &str) -> Result<Vec<String>, NtStatus> {
    if name.starts_with('\\') {
        return Err(status::INVALID_PARAMETER);
    }
    let mut out = Vec::new();
    // '/' separates components like '\\' (Samba's IS_PATH_SEP for non-POSIX clients; smbtorture
    // smb2.timestamps.test_close_not_attrib creates "smb2-timestamps/testfile.dat" and expects
    // it to succeed). No component can contain '/' either way.
    let parts: Vec<&str> = name.split(['\\', '/']).collect();
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
            // `..` takes back the component before it, by name alone (no file system lookup:
            // `zqy\..` is its parent whether or not `zqy` exists or is a symbolic link), as
            // Windows does for SMB2 names (smbtorture smb2.notify.tree opens BASEDIR\zqy\..
            // as BASEDIR) and Samba's check_path_syntax. With nothing to take back the name
            // would leave the share: OBJECT_PATH_SYNTAX_BAD (smbtorture smb2.mkdir
            // "..\..\.."). So no component of the result is ever `..`.
            if out.pop().is_none() {
                return Err(status::OBJECT_PATH_SYNTAX_BAD);
            }
            continue;
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
pub fn resolve(root: &Path, comps: &[String]) -> Result<Resolved, NtStatus> {
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

/// Cluster-wide name of the link (directory entry) `path` of a filesystem `fs_id`, for the
/// lock service's per-link delete-pending (`OpenRequest::link`): the parent directory's
/// inode and the on-disk name, so every node and every share over the same directory agree,
/// and two hard links of one file differ. Never 0 (0 is "links not told apart"); 1 when the
/// parent cannot be read (then the link's opens share that one name, as before links), and
/// for a directory, which has exactly one link: its opens need no parent lookup (a `stat` on
/// every directory CREATE, smbtorture's path-contention opens nothing else).
pub fn link_id(fs_id: u64, path: &Path, is_dir: bool) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let (false, Some(parent), Some(name)) = (is_dir, path.parent(), path.file_name()) else {
        return 1;
    };
    let Ok(pm) = std::fs::metadata(parent) else {
        return 1;
    };
    let mut h = Sha256::new();
    h.update(b"link");
    h.update(fs_id.to_le_bytes());
    h.update(pm.ino().to_le_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut a = [0u8; 8];
    a.copy_from_slice(&d[..8]);
    u64::from_le_bytes(a).max(1)
}

/// The filesystem id of the filesystem holding `path` (statfs f_fsid).
pub fn statfs_fsid(path: &Path) -> Option<u64> {
    let st = statvfs(path)?;
    Some(st.fsid)
}

/// Filesystems whose every user is on this machine, so that inotify here sees every change
/// to them (statfs(2) magic numbers): ext2/3/4, XFS, Btrfs, tmpfs, ZFS, F2FS, bcachefs,
/// overlayfs. Everything else (NFS, CIFS, CephFS, GPFS, Lustre, GFS2, OCFS2, FUSE...) may be
/// changed by other machines without an inotify event here.
const MACHINE_LOCAL_FILESYSTEMS: &[u64] = &[
    0xEF53,      // ext2/3/4
    0x5846_5342, // XFS
    0x9123_683E, // Btrfs
    0x0102_1994, // tmpfs
    0x2FC1_2FC1, // ZFS
    0xF2F5_2010, // F2FS
    0xCA45_1A4E, // bcachefs
    0x794C_7630, // overlayfs
];

/// Whether every change to the filesystem holding `path` is made on this machine (a local
/// disk: inotify sees them all), as opposed to a shared or network filesystem other machines
/// change too. `None` when statfs fails.
pub fn machine_local_filesystem(path: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let magic = crate::sys::statfs_type(&c).ok()?;
    Some(MACHINE_LOCAL_FILESYSTEMS.contains(&magic))
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
// The file service (conn::ops) reaches the filesystem through the functions below rather
// than calling std::fs itself, so the core's filesystem I/O is in this one module.

/// Metadata of `path`, following symlinks.
pub fn metadata(path: &Path) -> std::io::Result<Metadata> {
    std::fs::metadata(path)
}

/// Metadata of `path` itself (a symlink is not followed).
pub fn symlink_metadata(path: &Path) -> std::io::Result<Metadata> {
    std::fs::symlink_metadata(path)
}

/// What SMB sees of `path` at `now` (a FILETIME, for the LastWriteTime hold, see
/// crate::dosattr): its metadata overlaid with the stored DOS attributes and times.
pub fn file_info(path: &Path, now: u64) -> std::io::Result<FileInfo> {
    metadata(path).map(|m| load_info(path, &m, now))
}

/// The entries of directory `dir`, unsorted, without "." and "..".
pub fn read_dir(dir: &Path) -> std::io::Result<std::fs::ReadDir> {
    std::fs::read_dir(dir)
}

/// Clears every write bit of an open file (a file created with FILE_ATTRIBUTE_READONLY).
pub fn make_read_only(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o444))
}

/// Metadata of `path` overlaid with its stored DOS attributes and times, at `now` (FILETIME).
pub fn load_info(path: &Path, m: &Metadata, now: u64) -> FileInfo {
    merge_dos(info_from_meta(m), crate::dosattr::load(path), now)
}

/// [`load_info`] for the object an open holds (`fd`, possibly O_PATH), not for a name.
pub fn load_info_fd(fd: std::os::fd::BorrowedFd<'_>, m: &Metadata, now: u64) -> FileInfo {
    merge_dos(info_from_meta(m), crate::dosattr::load_fd(fd), now)
}

/// The metadata `i` with the stored DOS attributes and times `dos` over it, at `now`.
pub fn merge_dos(mut i: FileInfo, dos: Option<crate::dosattr::DosInfo>, now: u64) -> FileInfo {
    if let Some(d) = dos {
        let keep = i.attributes & (attr::DIRECTORY | attr::READONLY);
        // A file's READONLY is its mode (no write bit), which the kernel enforces; a
        // directory's is only a mark (Windows does not refuse creates in it, and mode 0555
        // would), kept with the other stored attributes (smbtorture smb2.winattr).
        let from_mode = if i.is_dir { 0 } else { attr::READONLY };
        let stored = d.attributes & !(attr::DIRECTORY | from_mode | attr::NORMAL);
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
        // Windows' LastWriteTime, and the ChangeTime with it (info_from_meta reports the
        // last data change as both), crate::dosattr.
        i.write = d.reported_write(i.write, now);
        i.change = i.write;
        if d.change != 0 && d.mtime_guard == i.write {
            i.change = d.change;
        }
    }
    i
}

/// Metadata of an object as SMB sees it, without stored DOS attributes.
pub fn info_from_meta(m: &Metadata) -> FileInfo {
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

/// Encode a QUERY_INFO filesystem class for the share rooted at `root`.
pub fn query_fs_info(cls: u8, root: &Path, fs_id: u64) -> Result<Vec<u8>, NtStatus> {
    let st = statvfs(root).unwrap_or(FsStats {
        fsid: 0,
        block_size: 4096,
        blocks: 0,
        bfree: 0,
        bavail: 0,
    });
    fscc::query_fs_info(cls, &st, fs_id)
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
        assert_eq!(split_smb_path("a/b").unwrap(), vec!["a", "b"]);
        assert_eq!(split_smb_path("").unwrap(), Vec::<String>::new());
        assert_eq!(split_smb_path("..\\x"), Err(status::OBJECT_PATH_SYNTAX_BAD));
        assert_eq!(split_smb_path(".."), Err(status::OBJECT_PATH_SYNTAX_BAD));
        assert_eq!(
            split_smb_path("..\\..\\.."),
            Err(status::OBJECT_PATH_SYNTAX_BAD)
        );
        assert_eq!(
            split_smb_path("a\\..\\..\\x"),
            Err(status::OBJECT_PATH_SYNTAX_BAD)
        );
        assert_eq!(
            split_smb_path("a\\b\\..\\..\\..\\x"),
            Err(status::OBJECT_PATH_SYNTAX_BAD)
        );
        assert_eq!(split_smb_path("zqy\\..").unwrap(), Vec::<String>::new());
        assert_eq!(split_smb_path("a\\zqy\\..").unwrap(), vec!["a"]);
        assert_eq!(split_smb_path("a/b/../c").unwrap(), vec!["a", "c"]);
        assert_eq!(split_smb_path("a\\.\\b\\..\\").unwrap(), vec!["a"]);
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
    fn link_ids_tell_hard_links_apart() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        std::fs::hard_link(&a, d.path().join("b")).unwrap();
        let (la, lb) = (
            link_id(7, &a, false),
            link_id(7, &d.path().join("b"), false),
        );
        assert_ne!(la, lb);
        assert_eq!(la, link_id(7, &d.path().join("a"), false));
        assert_ne!(la, link_id(8, &a, false));
        assert_ne!(la, 0);
        // A directory's one link needs no name: the same id wherever it was opened from or
        // renamed to.
        assert_eq!(
            link_id(7, d.path(), true),
            link_id(7, &d.path().join("x"), true)
        );
        assert_ne!(link_id(7, d.path(), true), 0);
    }

    #[test]
    fn stable_ids_depend_on_inputs() {
        assert_eq!(stable_file_id(1, 2, ""), stable_file_id(1, 2, ""));
        assert_ne!(stable_file_id(1, 2, ""), stable_file_id(1, 3, ""));
    }
}
