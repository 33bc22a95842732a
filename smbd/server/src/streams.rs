//! Alternate data streams (MS-FSCC 2.1.5 "Pathname", MS-FSA 2.1.5.1 stream opens).
//!
//! Storage: a hidden "stream depot" directory at the share root, [`DEPOT`], with one
//! sub-directory per file or directory that has named streams, keyed by the inode number
//! (hex), and one regular file per stream whose name is the hex-encoded UTF-8 stream name.
//! Keying by inode means a rename of the base file keeps its streams without touching the
//! depot; a delete through this server removes the inode's depot entry (and a newly created
//! file clears a stale one left by an inode number reused after an outside delete).
//!
//! Ownership: the depot belongs to root (mode 0700) whatever user the request runs as, and
//! every depot access runs with root's file-system credentials ([`crate::identity::as_root`]):
//! users reach stream data only through SMB, whose access check is made on the base file
//! with the user's own credentials before a stream is opened (`conn::ops::create`,
//! `open_stream_target`).
//!
//! Limits: streams of files deleted or replaced outside this server leak until the inode
//! number is reused by a new file created here; streams live on the share root's
//! filesystem, so a share spanning several filesystems could see inode collisions; the
//! depot is hidden from directory listings and refused as a path component.

use std::path::{Path, PathBuf};

use smb_proto::{status, NtStatus};

/// Name of the stream depot directory at the share root.
pub const DEPOT: &str = ".smbd-streams";

/// A client path split into its file part and an optional named stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPath<'a> {
    /// The file path without any stream suffix.
    pub base: &'a str,
    /// The named stream as the client spelt it, `None` for the unnamed (default) stream.
    pub stream: Option<String>,
}

/// Split `file[:stream[:type]]`. Only the `$DATA` type is supported; `file::$DATA` is the
/// default stream (MS-FSCC 2.1.5.3). Errors are NTSTATUS values.
pub fn parse(name: &str) -> Result<StreamPath<'_>, NtStatus> {
    let Some(colon) = name.find(':') else {
        return Ok(StreamPath {
            base: name,
            stream: None,
        });
    };
    let base = &name[..colon];
    let rest = &name[colon + 1..];
    // A colon is only allowed in the last component.
    if rest.contains('\\') {
        return Err(status::OBJECT_NAME_INVALID);
    }
    let (sname, stype) = match rest.find(':') {
        Some(p) => (&rest[..p], Some(&rest[p + 1..])),
        None => (rest, None),
    };
    if let Some(t) = stype {
        if !t.eq_ignore_ascii_case("$DATA") {
            return Err(status::OBJECT_NAME_INVALID);
        }
    } else if sname.is_empty() {
        // "file:" names no stream at all.
        return Err(status::OBJECT_NAME_INVALID);
    }
    if sname
        .chars()
        // Only the separators and NUL are invalid in a stream name: Windows takes control
        // characters and wildcards (smbtorture smb2.streams.names/names2); the depot stores
        // names hex-encoded, so any character is safe there.
        .any(|c| matches!(c, '/' | '\\' | ':' | '\0'))
    {
        return Err(status::OBJECT_NAME_INVALID);
    }
    if sname.len() > 255 {
        return Err(status::OBJECT_NAME_INVALID);
    }
    Ok(StreamPath {
        base,
        stream: (!sname.is_empty()).then(|| sname.to_string()),
    })
}

fn encode(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The depot directory of the object with inode `ino`.
pub fn depot_dir(root: &Path, ino: u64) -> PathBuf {
    root.join(DEPOT).join(format!("{ino:x}"))
}

/// Whether the depot at `root` is the server's own: a real directory (no symlink), owned by
/// the server's user and closed to everyone else. Anything else under that name (a user put
/// it there outside SMB) is never used: privileged depot access must not follow it.
fn depot_trusted(root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(root.join(DEPOT)) {
        Ok(m) => {
            let ours = m.is_dir() && m.uid() == process_euid();
            if ours && m.mode() & 0o077 != 0 {
                // A depot made by an earlier version (mode 0755): close it.
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(
                    root.join(DEPOT),
                    std::fs::Permissions::from_mode(0o700),
                );
            }
            let ok = ours;
            if !ok {
                tracing::warn!(root = %root.display(), "stream depot is not the server's own; named streams refused");
            }
            ok
        }
        Err(_) => false,
    }
}

fn process_euid() -> u32 {
    // The owner of /proc/self is the process's effective uid (no unsafe needed).
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

fn untrusted() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EACCES)
}

/// One stored stream.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    /// Name with the case it was created with.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub alloc: u64,
}

/// All named streams of inode `ino`, sorted by name.
pub fn list(root: &Path, ino: u64) -> Vec<StreamEntry> {
    crate::identity::as_root(|| list_privileged(root, ino))
}

fn list_privileged(root: &Path, ino: u64) -> Vec<StreamEntry> {
    use std::os::unix::fs::MetadataExt;
    if !depot_trusted(root) {
        return Vec::new();
    }
    let Ok(rd) = std::fs::read_dir(depot_dir(root, ino)) else {
        return Vec::new();
    };
    let mut out: Vec<StreamEntry> = rd
        .flatten()
        .filter_map(|e| {
            let name = decode(e.file_name().to_str()?)?;
            let m = e.metadata().ok()?;
            Some(StreamEntry {
                name,
                path: e.path(),
                size: m.len(),
                alloc: m.blocks() * 512,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Find a stream by name; stream names are case-insensitive like file names.
pub fn find(root: &Path, ino: u64, name: &str) -> Option<StreamEntry> {
    let lower = name.to_lowercase();
    list(root, ino)
        .into_iter()
        .find(|s| s.name.to_lowercase() == lower)
}

/// Create an empty stream; fails with `AlreadyExists` if the exact name exists.
pub fn create(root: &Path, ino: u64, name: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    crate::identity::as_root(|| {
        let depot = root.join(DEPOT);
        match std::fs::DirBuilder::new().mode(0o700).create(&depot) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if !depot_trusted(root) {
            return Err(untrusted());
        }
        let dir = depot_dir(root, ino);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)?;
        let p = dir.join(encode(name));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)?;
        Ok(p)
    })
}

/// Open a stream's data file (privileged: see the module documentation; the caller has
/// checked the access on the base file).
pub fn open_data(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    crate::identity::as_root(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .or_else(|_| std::fs::File::open(path))
    })
}

/// Delete one stream's data file (privileged, as [`open_data`]).
pub fn remove_data(path: &Path) -> std::io::Result<()> {
    crate::identity::as_root(|| std::fs::remove_file(path))
}

/// Rename the stream whose data file is `from` (of inode `ino`) to `name`, replacing the
/// stream of that name (in any case) if there is one: the caller has checked that it may
/// (MS-FSA 2.1.5.15.11.1). Returns the new data file. Privileged, as [`open_data`].
pub fn rename(root: &Path, ino: u64, from: &Path, name: &str) -> std::io::Result<PathBuf> {
    let existing = find(root, ino, name);
    crate::identity::as_root(|| {
        if !depot_trusted(root) {
            return Err(untrusted());
        }
        let to = depot_dir(root, ino).join(encode(name));
        if let Some(e) = existing {
            if e.path != from && e.path != to {
                std::fs::remove_file(&e.path)?;
            }
        }
        std::fs::rename(from, &to)?;
        Ok(to)
    })
}

/// Remove every stream of inode `ino` (the base object is gone or was replaced).
pub fn remove_all(root: &Path, ino: u64) {
    let dir = depot_dir(root, ino);
    if !crate::identity::as_root(|| depot_trusted(root)) {
        return;
    }
    match crate::identity::as_root(|| std::fs::remove_dir_all(&dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::debug!(?dir, %e, "removing stream depot entry"),
    }
}

/// Whether a path component names the depot (refused from clients).
pub fn is_depot(component: &str) -> bool {
    component.eq_ignore_ascii_case(DEPOT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        let p = parse("a\\b:s1:$DATA").unwrap();
        assert_eq!(p.base, "a\\b");
        assert_eq!(p.stream.as_deref(), Some("s1"));
        assert_eq!(parse("f::$dAtA").unwrap().stream, None);
        assert_eq!(parse("f::$dAtA").unwrap().base, "f");
        assert_eq!(parse("f:S").unwrap().stream.as_deref(), Some("S"));
        assert_eq!(parse("f").unwrap().stream, None);
        assert_eq!(parse("f:"), Err(status::OBJECT_NAME_INVALID));
        assert_eq!(parse("f:s:$FOO"), Err(status::OBJECT_NAME_INVALID));
        assert_eq!(parse("d:s\\x"), Err(status::OBJECT_NAME_INVALID));
        assert_eq!(parse("d:s/x"), Err(status::OBJECT_NAME_INVALID));
        assert_eq!(
            parse("f:\x05Stream\n One:$DATA").unwrap().stream.as_deref(),
            Some("\x05Stream\n One")
        );
        assert_eq!(parse("f:?S*").unwrap().stream.as_deref(), Some("?S*"));
    }

    #[test]
    fn create_find_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let p = create(root, 42, "StReAm").unwrap();
        std::fs::write(&p, b"hello").unwrap();
        create(root, 42, "other").unwrap();
        let found = find(root, 42, "stream").unwrap();
        assert_eq!(found.name, "StReAm");
        assert_eq!(found.size, 5);
        assert!(find(root, 43, "stream").is_none());
        let names: Vec<String> = list(root, 42).into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["StReAm".to_string(), "other".to_string()]);
        // A rename replaces a stream of the new name in another case.
        let p = rename(root, 42, &p, "OTHER").unwrap();
        let names: Vec<String> = list(root, 42).into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["OTHER".to_string()]);
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        remove_all(root, 42);
        assert!(list(root, 42).is_empty());
    }

    #[test]
    fn hex_round_trip() {
        for n in ["a", "sTrEaM3", "ü:?", ""] {
            assert_eq!(decode(&encode(n)).as_deref(), Some(n));
        }
        assert_eq!(decode("zz"), None);
    }
}
