//! Share-mode checking (MS-FSA 2.1.5.1.2.2, MS-SMB2 3.3.5.9) with Windows-style counters so
//! the check is O(1) in the number of opens of a file.

use crate::types::{access, share};

/// FILE_ALL_ACCESS (STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | 0x1FF).
const FILE_ALL_ACCESS: u32 = 0x001F_01FF;

/// Access bits that make an open take part in sharing (MS-FSA 2.1.5.1.2.2).
pub(crate) const DATA_ACCESS: u32 = access::FILE_READ_DATA
    | access::FILE_WRITE_DATA
    | access::FILE_APPEND_DATA
    | access::FILE_EXECUTE
    | access::DELETE;

const READISH: u32 = access::FILE_READ_DATA | access::FILE_EXECUTE;
const WRITEISH: u32 = access::FILE_WRITE_DATA | access::FILE_APPEND_DATA;

/// Maps GENERIC_* and MAXIMUM_ALLOWED to specific file rights, using the Windows file-object
/// generic mapping (FILE_GENERIC_READ / WRITE / EXECUTE, FILE_ALL_ACCESS):
///
/// * GENERIC_READ    -> READ_DATA | READ_EA | READ_ATTRIBUTES | READ_CONTROL | SYNCHRONIZE
/// * GENERIC_WRITE   -> WRITE_DATA | APPEND_DATA | WRITE_EA | WRITE_ATTRIBUTES | READ_CONTROL | SYNCHRONIZE
/// * GENERIC_EXECUTE -> EXECUTE | READ_ATTRIBUTES | READ_CONTROL | SYNCHRONIZE
/// * GENERIC_ALL and MAXIMUM_ALLOWED -> FILE_ALL_ACCESS (every data bit, DELETE included):
///   the engine cannot know what the ACL would have granted, so it assumes the most.
///
/// The generic bits themselves are cleared.
pub fn map_generic(mask: u32) -> u32 {
    let mut out = mask
        & !(access::GENERIC_READ
            | access::GENERIC_WRITE
            | access::GENERIC_EXECUTE
            | access::GENERIC_ALL
            | access::MAXIMUM_ALLOWED);
    if mask & access::GENERIC_READ != 0 {
        out |= access::FILE_READ_DATA
            | access::FILE_READ_EA
            | access::FILE_READ_ATTRIBUTES
            | access::READ_CONTROL
            | access::SYNCHRONIZE;
    }
    if mask & access::GENERIC_WRITE != 0 {
        out |= access::FILE_WRITE_DATA
            | access::FILE_APPEND_DATA
            | access::FILE_WRITE_EA
            | access::FILE_WRITE_ATTRIBUTES
            | access::READ_CONTROL
            | access::SYNCHRONIZE;
    }
    if mask & access::GENERIC_EXECUTE != 0 {
        out |= access::FILE_EXECUTE
            | access::FILE_READ_ATTRIBUTES
            | access::READ_CONTROL
            | access::SYNCHRONIZE;
    }
    if mask & (access::GENERIC_ALL | access::MAXIMUM_ALLOWED) != 0 {
        out |= FILE_ALL_ACCESS;
    }
    out
}

/// An open asking only for attributes (a "stat open") does not break oplocks or leases, as in
/// Windows and Samba: it can neither see nor change cached data.
pub(crate) fn is_stat_open(mapped_access: u32) -> bool {
    mapped_access
        & !(access::FILE_READ_ATTRIBUTES | access::FILE_WRITE_ATTRIBUTES | access::SYNCHRONIZE)
        == 0
}

/// Counters over the opens of one file that take part in sharing: like the Windows
/// SHARE_ACCESS structure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ShareCounters {
    opens: u32,
    readers: u32,
    writers: u32,
    deleters: u32,
    shared_read: u32,
    shared_write: u32,
    shared_delete: u32,
}

impl ShareCounters {
    /// MS-FSA 2.1.5.1.2.2: conflict if an existing open's share access does not allow the new
    /// access, or the new share access does not allow an existing open's access. Opens without
    /// data access neither conflict nor are conflicted with.
    pub fn conflicts(&self, mapped_access: u32, share_access: u32) -> bool {
        if mapped_access & DATA_ACCESS == 0 || self.opens == 0 {
            return false;
        }
        (mapped_access & READISH != 0 && self.shared_read < self.opens)
            || (mapped_access & WRITEISH != 0 && self.shared_write < self.opens)
            || (mapped_access & access::DELETE != 0 && self.shared_delete < self.opens)
            || (share_access & share::READ == 0 && self.readers > 0)
            || (share_access & share::WRITE == 0 && self.writers > 0)
            || (share_access & share::DELETE == 0 && self.deleters > 0)
    }

    /// (opens with data access that do not share delete, opens with DELETE access).
    pub fn delete_usage(&self) -> (u32, u32) {
        (self.opens.saturating_sub(self.shared_delete), self.deleters)
    }

    /// What one open adds to [`ShareCounters::delete_usage`].
    pub fn delete_usage_of(mapped_access: u32, share_access: u32) -> (u32, u32) {
        if mapped_access & DATA_ACCESS == 0 {
            return (0, 0);
        }
        (
            u32::from(share_access & share::DELETE == 0),
            u32::from(mapped_access & access::DELETE != 0),
        )
    }

    pub fn add(&mut self, mapped_access: u32, share_access: u32) {
        self.apply(mapped_access, share_access, true);
    }

    pub fn remove(&mut self, mapped_access: u32, share_access: u32) {
        self.apply(mapped_access, share_access, false);
    }

    fn apply(&mut self, mapped_access: u32, share_access: u32, add: bool) {
        if mapped_access & DATA_ACCESS == 0 {
            return;
        }
        let step = |c: &mut u32, on: bool| {
            if on {
                *c = if add {
                    c.saturating_add(1)
                } else {
                    c.saturating_sub(1)
                };
            }
        };
        step(&mut self.opens, true);
        step(&mut self.readers, mapped_access & READISH != 0);
        step(&mut self.writers, mapped_access & WRITEISH != 0);
        step(&mut self.deleters, mapped_access & access::DELETE != 0);
        step(&mut self.shared_read, share_access & share::READ != 0);
        step(&mut self.shared_write, share_access & share::WRITE != 0);
        step(&mut self.shared_delete, share_access & share::DELETE != 0);
    }
}

/// Pairwise form of the same rule, used by tests and the reference model.
pub fn pair_conflicts(a_access: u32, a_share: u32, b_access: u32, b_share: u32) -> bool {
    if a_access & DATA_ACCESS == 0 || b_access & DATA_ACCESS == 0 {
        return false;
    }
    let denies = |acc: u32, sh: u32| {
        (acc & READISH != 0 && sh & share::READ == 0)
            || (acc & WRITEISH != 0 && sh & share::WRITE == 0)
            || (acc & access::DELETE != 0 && sh & share::DELETE == 0)
    };
    denies(a_access, b_share) || denies(b_access, a_share)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file-object generic mapping of MS-DTYP 2.4.3 (used by MS-SMB2 2.2.13.1.1 through
    /// MS-FSA), with the values Windows' winnt.h gives: FILE_GENERIC_READ 0x120089,
    /// FILE_GENERIC_WRITE 0x120116, FILE_GENERIC_EXECUTE 0x1200A0, FILE_ALL_ACCESS 0x1F01FF.
    /// Each includes READ_CONTROL (STANDARD_RIGHTS_READ/WRITE/EXECUTE) and SYNCHRONIZE; only
    /// GENERIC_EXECUTE gives FILE_EXECUTE.
    #[test]
    fn generic_mapping_is_the_windows_file_mapping() {
        assert_eq!(map_generic(access::GENERIC_READ), 0x0012_0089);
        assert_eq!(map_generic(access::GENERIC_WRITE), 0x0012_0116);
        assert_eq!(map_generic(access::GENERIC_EXECUTE), 0x0012_00A0);
        assert_eq!(map_generic(access::GENERIC_ALL), 0x001F_01FF);
        // MAXIMUM_ALLOWED: the engine cannot see the ACL and assumes the most.
        assert_eq!(map_generic(access::MAXIMUM_ALLOWED), 0x001F_01FF);
        assert_eq!(map_generic(access::GENERIC_READ) & access::FILE_EXECUTE, 0);
        assert_eq!(
            map_generic(access::GENERIC_READ | access::GENERIC_WRITE),
            0x0012_0089 | 0x0012_0116
        );
        // Specific rights pass through unchanged, next to mapped generic ones.
        assert_eq!(map_generic(access::DELETE), access::DELETE);
        assert_eq!(
            map_generic(access::GENERIC_READ | access::DELETE | access::WRITE_DAC),
            0x0012_0089 | access::DELETE | access::WRITE_DAC
        );
        assert_eq!(map_generic(0), 0);
    }
}
