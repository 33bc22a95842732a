//! File-system control codes on the wire (MS-FSCC): file attributes, the QUERY_INFO file and
//! filesystem information classes, the QUERY_DIRECTORY entry classes, and their encoders.
//!
//! The server gathers the facts ([`FileInfo`], [`OpenView`], [`FsStats`]) from its filesystem;
//! everything about how they look on the wire lives here.

use crate::cursor::{string_to_utf16, utf16_to_string, DecodeError, Reader, Writer};
use crate::status::{self, NtStatus};

/// File attributes (MS-FSCC 2.6).
pub mod attr {
    pub const READONLY: u32 = 0x01;
    pub const HIDDEN: u32 = 0x02;
    pub const SYSTEM: u32 = 0x04;
    pub const DIRECTORY: u32 = 0x10;
    pub const ARCHIVE: u32 = 0x20;
    pub const NORMAL: u32 = 0x80;
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

/// Filesystem size figures, as statvfs(3) reports them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsStats {
    pub fsid: u64,
    pub block_size: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
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
pub fn query_file_info(cls: u8, v: &OpenView<'_>) -> Result<Vec<u8>, NtStatus> {
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
/// Encode a QUERY_INFO filesystem class for a filesystem of `st` (block counts in
/// `block_size` units) whose volume serial and object id derive from `fs_id`.
pub fn query_fs_info(cls: u8, st: &FsStats, fs_id: u64) -> Result<Vec<u8>, NtStatus> {
    let mut w = Writer::new();
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

/// The output buffer of a QUERY_DIRECTORY response: entries 8-byte aligned, each one's
/// NextEntryOffset pointing at the next, the last one's 0 (MS-FSCC 2.4, MS-SMB2 3.3.5.18).
#[derive(Debug)]
pub struct DirListing {
    out: Writer,
    last_start: Option<usize>,
    max_len: usize,
}

impl DirListing {
    /// An empty listing that may grow to `max_len` bytes (the request's OutputBufferLength).
    pub fn new(max_len: usize) -> DirListing {
        DirListing {
            out: Writer::new(),
            last_start: None,
            max_len,
        }
    }

    /// Append one entry encoded by [`encode_dir_entry`] (its NextEntryOffset still 0).
    /// Returns `false`, appending nothing, when it would not fit.
    pub fn push(&mut self, entry: &[u8]) -> bool {
        let start = (self.out.len() + 7) & !7;
        if start + entry.len() > self.max_len {
            return false;
        }
        self.out.align(8);
        if let Some(prev) = self.last_start {
            self.out.set_u32(prev, (start - prev) as u32);
        }
        self.out.bytes(entry);
        self.last_start = Some(start);
        true
    }

    /// Whether no entry has been appended.
    pub fn is_empty(&self) -> bool {
        self.last_start.is_none()
    }

    /// The response's output buffer.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out.buf
    }
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

/// One FILE_NOTIFY_INFORMATION entry (MS-FSCC 2.7.1), the only one of its response: its
/// NextEntryOffset is 0.
pub fn notify_entry(action: u32, name: &str) -> Vec<u8> {
    let n = string_to_utf16(name);
    let mut w = Writer::new();
    w.u32(0).u32(action).u32(n.len() as u32).bytes(&n);
    w.buf
}

/// FILE_NOTIFY_INFORMATION Action values (MS-FSCC 2.7.1).
pub mod notify_action {
    pub const ADDED: u32 = 1;
    pub const REMOVED: u32 = 2;
    pub const MODIFIED: u32 = 3;
    pub const RENAMED_OLD_NAME: u32 = 4;
    pub const RENAMED_NEW_NAME: u32 = 5;
}

/// CHANGE_NOTIFY CompletionFilter bits (MS-SMB2 2.2.35): which kinds of change a watch
/// reports. A change carries the bits it matches; a watch reports it when they intersect.
pub mod notify_filter {
    pub const FILE_NAME: u32 = 0x0001;
    pub const DIR_NAME: u32 = 0x0002;
    pub const ATTRIBUTES: u32 = 0x0004;
    pub const SIZE: u32 = 0x0008;
    pub const LAST_WRITE: u32 = 0x0010;
    pub const LAST_ACCESS: u32 = 0x0020;
    pub const CREATION: u32 = 0x0040;
    pub const EA: u32 = 0x0080;
    pub const SECURITY: u32 = 0x0100;
    pub const STREAM_NAME: u32 = 0x0200;
    pub const STREAM_SIZE: u32 = 0x0400;
    pub const STREAM_WRITE: u32 = 0x0800;

    /// FILE_NAME or DIR_NAME, as the entry named is a file or a directory.
    pub const fn name(is_dir: bool) -> u32 {
        if is_dir {
            DIR_NAME
        } else {
            FILE_NAME
        }
    }
}

/// FILE_NOTIFY_INFORMATION entries (MS-FSCC 2.7.1) of one response, each starting on a
/// 4-byte boundary and linked by NextEntryOffset (0 in the last).
pub fn notify_entries<'a>(changes: impl IntoIterator<Item = (u32, &'a str)>) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut last_start = None;
    for (action, name) in changes {
        if let Some(prev) = last_start {
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
            let next = (out.len() - prev) as u32;
            out[prev..prev + 4].copy_from_slice(&next.to_le_bytes());
        }
        last_start = Some(out.len());
        out.extend_from_slice(&notify_entry(action, name));
    }
    out
}

/// FileBasicInformation as SET_INFO sends it (MS-FSCC 2.4.7): times as FILETIMEs (0 = leave
/// unchanged, -1/-2 = stop/resume updating) and the file attributes (0 = unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BasicInformation {
    pub creation: u64,
    pub access: u64,
    pub write: u64,
    pub change: u64,
    pub attributes: u32,
}

impl BasicInformation {
    pub fn decode(buf: &[u8]) -> Result<BasicInformation, DecodeError> {
        let mut r = Reader::new(buf);
        Ok(BasicInformation {
            creation: r.u64()?,
            access: r.u64()?,
            write: r.u64()?,
            change: r.u64()?,
            attributes: r.u32()?,
        })
    }
}

/// FileRenameInformation as SMB2 SET_INFO sends it (MS-FSCC 2.4.37.2, the 64-bit layout):
/// ReplaceIfExists, 7 reserved bytes, RootDirectory (always 0 over SMB2), the new name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenameInformation {
    pub replace_if_exists: bool,
    pub file_name: String,
}

impl RenameInformation {
    pub fn decode(buf: &[u8]) -> Result<RenameInformation, DecodeError> {
        let mut r = Reader::new(buf);
        let replace_if_exists = r.u8()? != 0;
        r.skip(7)?;
        let _root_directory = r.u64()?;
        let len = r.u32()? as usize;
        let file_name = utf16_to_string(r.bytes(len)?)?;
        Ok(RenameInformation {
            replace_if_exists,
            file_name,
        })
    }
}

/// The DeletePending / FILE_DISPOSITION_DELETE bit of a FileDispositionInformation(Ex)
/// buffer (MS-FSCC 2.4.11, 2.4.12); `None` for another class or a short buffer.
pub fn disposition_delete(cls: u8, buffer: &[u8]) -> Option<bool> {
    let mut r = Reader::new(buffer);
    match cls {
        class::DISPOSITION => r.u8().ok().map(|d| d & 1 != 0),
        class::DISPOSITION_EX => r.u32().ok().map(|f| f & 1 != 0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_info_inputs_decode() {
        let mut w = Writer::new();
        w.u64(1).u64(2).u64(3).u64(4).u32(attr::HIDDEN).u32(0);
        let b = BasicInformation::decode(&w.buf).unwrap();
        assert_eq!((b.creation, b.access, b.write, b.change), (1, 2, 3, 4));
        assert_eq!(b.attributes, attr::HIDDEN);
        assert_eq!(
            BasicInformation::decode(&w.buf[..35]),
            Err(DecodeError::Truncated)
        );

        let name = string_to_utf16("dir\\new.txt");
        let mut w = Writer::new();
        w.u8(1).zeros(7).u64(0).u32(name.len() as u32).bytes(&name);
        let r = RenameInformation::decode(&w.buf).unwrap();
        assert_eq!(
            (r.replace_if_exists, r.file_name.as_str()),
            (true, "dir\\new.txt")
        );
        assert!(RenameInformation::decode(&w.buf[..w.buf.len() - 1]).is_err());

        assert_eq!(disposition_delete(class::DISPOSITION, &[1]), Some(true));
        assert_eq!(disposition_delete(class::DISPOSITION, &[2]), Some(false));
        assert_eq!(disposition_delete(class::DISPOSITION_EX, &[1, 0]), None);
        assert_eq!(
            disposition_delete(class::DISPOSITION_EX, &[3, 0, 0, 0]),
            Some(true)
        );
        assert_eq!(disposition_delete(class::BASIC, &[1]), None);
    }

    #[test]
    fn notify_entries_are_aligned_and_linked() {
        let data = notify_entries([(1, "a"), (2, "bc")]);
        // 12-byte header + 2 bytes of name, padded to 16; then 12 + 4.
        assert_eq!(data.len(), 32);
        assert_eq!(u32::from_le_bytes(data[0..4].try_into().unwrap()), 16);
        assert_eq!(u32::from_le_bytes(data[4..8].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(data[16..20].try_into().unwrap()), 0);
        assert_eq!(u32::from_le_bytes(data[20..24].try_into().unwrap()), 2);
        assert_eq!(notify_entries([(3, "x")]), notify_entry(3, "x"));
    }

    fn info() -> FileInfo {
        FileInfo {
            creation: 1,
            access: 2,
            write: 3,
            change: 4,
            size: 5,
            alloc: 4096,
            attributes: attr::ARCHIVE,
            ino: 0x77,
            nlink: 2,
            is_dir: false,
        }
    }

    fn view(name: &str) -> OpenView<'_> {
        OpenView {
            info: info(),
            delete_pending: false,
            access: 0x12_019f,
            position: 9,
            mode: 0,
            name,
            streams: Vec::new(),
        }
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
    }

    #[test]
    fn basic_standard_and_network_open_layouts() {
        let v = view("\\a.txt");
        let basic = query_file_info(class::BASIC, &v).expect("basic");
        assert_eq!(basic.len(), 40);
        assert_eq!(u64_at(&basic, 0), 1);
        assert_eq!(u64_at(&basic, 24), 4);
        assert_eq!(u32_at(&basic, 32), attr::ARCHIVE);

        let std = query_file_info(class::STANDARD, &v).expect("standard");
        assert_eq!(std.len(), 24);
        assert_eq!(u64_at(&std, 0), 4096);
        assert_eq!(u64_at(&std, 8), 5);
        assert_eq!(u32_at(&std, 16), 2);
        let mut pending = view("\\a.txt");
        pending.delete_pending = true;
        let std = query_file_info(class::STANDARD, &pending).expect("standard");
        // One link fewer and the DeletePending byte set.
        assert_eq!(u32_at(&std, 16), 1);
        assert_eq!(std[20], 1);

        let net = query_file_info(class::NETWORK_OPEN, &v).expect("network open");
        assert_eq!(net.len(), 56);
        assert_eq!(u64_at(&net, 40), 5);
        assert_eq!(u32_at(&net, 48), attr::ARCHIVE);
    }

    #[test]
    fn all_information_ends_with_the_name() {
        let v = view("\\dir\\a");
        let all = query_file_info(class::ALL, &v).expect("all");
        // Basic 40 + standard 24 + internal 8 + EA 4 + access 4 + position 8 + mode 4 +
        // alignment 4 + name length 4 + name.
        assert_eq!(all.len(), 100 + 12);
        assert_eq!(u64_at(&all, 64), 0x77);
        assert_eq!(u32_at(&all, 76), 0x12_019f);
        assert_eq!(u64_at(&all, 80), 9);
        assert_eq!(u32_at(&all, 96), 12);
        let normalized = query_file_info(class::NORMALIZED_NAME, &v).expect("normalized");
        assert_eq!(u32_at(&normalized, 0), 10, "no leading backslash");
    }

    #[test]
    fn stream_entries_are_aligned_and_the_last_has_no_next() {
        let mut v = view("\\f");
        v.streams = vec![("::$DATA".into(), 5, 8), (":s:$DATA".into(), 1, 8)];
        let b = query_file_info(class::STREAM, &v).expect("streams");
        let first = 24 + 14;
        let padded = (first + 7) & !7;
        assert_eq!(u32_at(&b, 0) as usize, padded);
        assert_eq!(u32_at(&b, padded), 0);
        assert_eq!(b.len(), padded + 24 + 16);
    }

    #[test]
    fn unknown_and_unsupported_classes_are_statuses() {
        let v = view("\\f");
        assert_eq!(query_file_info(200, &v), Err(status::INVALID_INFO_CLASS));
        assert_eq!(
            query_file_info(class::FULL_EA, &v),
            Err(status::EAS_NOT_SUPPORTED)
        );
        let st = FsStats::default();
        assert_eq!(query_fs_info(200, &st, 1), Err(status::INVALID_INFO_CLASS));
    }

    #[test]
    fn fs_size_counts_sectors_per_unit() {
        let st = FsStats {
            fsid: 0,
            block_size: 4096,
            blocks: 100,
            bfree: 50,
            bavail: 40,
        };
        let b = query_fs_info(fsclass::FULL_SIZE, &st, 7).expect("full size");
        assert_eq!(b.len(), 32);
        assert_eq!(u64_at(&b, 0), 100);
        assert_eq!(u64_at(&b, 8), 40);
        assert_eq!(u64_at(&b, 16), 50);
        assert_eq!(u32_at(&b, 24), 8);
        assert_eq!(u32_at(&b, 28), 512);
        let vol = query_fs_info(fsclass::VOLUME, &st, 0x1_0000_0007).expect("volume");
        assert_eq!(u32_at(&vol, 8), 7, "serial is the low 32 bits of the fs id");
    }

    #[test]
    fn directory_entries_by_class() {
        let e = DirEntry {
            name: "a.txt".into(),
            info: info(),
        };
        let names = encode_dir_entry(class::NAMES, &e, 3).expect("names");
        assert_eq!(names.len(), 12 + 10);
        assert_eq!(u32_at(&names, 4), 3);
        let both = encode_dir_entry(class::ID_BOTH_DIRECTORY, &e, 0).expect("id both");
        // 64 fixed + EA size 4 + short length 1 + reserved 1 + short name 24 + reserved 2
        // + file id 8 + name.
        assert_eq!(both.len(), 104 + 10);
        assert_eq!(both[68], 10, "A.TXT as the short name");
        assert_eq!(u64_at(&both, 96), 0x77);
        assert_eq!(encode_dir_entry(200, &e, 0), None);
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name("a.txt"), "A.TXT");
        let long = short_name("a long file name.text");
        assert!(long.starts_with("ALONG~"), "{long}");
        assert!(long.ends_with(".TEX"), "{long}");
        assert_eq!(long, short_name("a long file name.text"), "deterministic");
    }

    #[test]
    fn directory_listing_links_aligned_entries() {
        let mut l = DirListing::new(40);
        assert!(l.is_empty());
        assert!(l.push(&[0xAA; 13]));
        assert!(l.push(&[0xBB; 12]));
        // A third entry would start at 32 and end past 40.
        assert!(!l.push(&[0xCC; 9]));
        let b = l.into_bytes();
        assert_eq!(b.len(), 16 + 12);
        assert_eq!(u32_at(&b, 0), 16, "NextEntryOffset of the first entry");
        assert_eq!(&b[13..16], &[0, 0, 0], "padding to 8 bytes");
        assert_eq!(
            &b[16..20],
            &[0xBB; 4],
            "the last entry keeps its own offset field"
        );
    }

    #[test]
    fn notify_entry_layout() {
        let b = notify_entry(1, "x");
        assert_eq!(b, [0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'x', 0]);
    }
}
