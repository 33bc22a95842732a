//! NTSTATUS values (MS-ERREF 2.3.1): the [`NtStatus`] type and the values the server uses.
#![allow(missing_docs)]

use std::fmt;

/// An NTSTATUS code as carried in the SMB2 header's Status field.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct NtStatus(pub u32);

impl NtStatus {
    /// Severity "error" (the two top bits 11).
    pub fn is_error(self) -> bool {
        self.0 >> 30 == 0b11
    }

    /// Severity "success" or "informational": the request did what it was asked.
    pub fn is_success(self) -> bool {
        self.0 >> 30 <= 0b01
    }

    /// The name of a status listed here, for logs.
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|(v, _)| *v == self).map(|(_, n)| *n)
    }
}

impl fmt::Debug for NtStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({:#010x})", self.0),
            None => write!(f, "NtStatus({:#010x})", self.0),
        }
    }
}

impl fmt::Display for NtStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::LowerHex for NtStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl From<NtStatus> for u32 {
    fn from(s: NtStatus) -> u32 {
        s.0
    }
}

impl From<u32> for NtStatus {
    fn from(v: u32) -> NtStatus {
        NtStatus(v)
    }
}

pub const SUCCESS: NtStatus = NtStatus(0x0000_0000);
pub const PENDING: NtStatus = NtStatus(0x0000_0103);
pub const NOTIFY_ENUM_DIR: NtStatus = NtStatus(0x0000_010C);
pub const BUFFER_OVERFLOW: NtStatus = NtStatus(0x8000_0005);
pub const NO_MORE_FILES: NtStatus = NtStatus(0x8000_0006);
pub const UNSUCCESSFUL: NtStatus = NtStatus(0xC000_0001);
pub const NOT_IMPLEMENTED: NtStatus = NtStatus(0xC000_0002);
pub const INVALID_INFO_CLASS: NtStatus = NtStatus(0xC000_0003);
pub const INFO_LENGTH_MISMATCH: NtStatus = NtStatus(0xC000_0004);
pub const INVALID_HANDLE: NtStatus = NtStatus(0xC000_0008);
pub const INVALID_PARAMETER: NtStatus = NtStatus(0xC000_000D);
pub const NO_SUCH_FILE: NtStatus = NtStatus(0xC000_000F);
pub const INVALID_DEVICE_REQUEST: NtStatus = NtStatus(0xC000_0010);
pub const END_OF_FILE: NtStatus = NtStatus(0xC000_0011);
pub const MORE_PROCESSING_REQUIRED: NtStatus = NtStatus(0xC000_0016);
pub const ACCESS_DENIED: NtStatus = NtStatus(0xC000_0022);
pub const BUFFER_TOO_SMALL: NtStatus = NtStatus(0xC000_0023);
pub const OBJECT_NAME_INVALID: NtStatus = NtStatus(0xC000_0033);
pub const OBJECT_NAME_NOT_FOUND: NtStatus = NtStatus(0xC000_0034);
pub const OBJECT_NAME_COLLISION: NtStatus = NtStatus(0xC000_0035);
pub const OBJECT_PATH_INVALID: NtStatus = NtStatus(0xC000_0039);
pub const OBJECT_PATH_NOT_FOUND: NtStatus = NtStatus(0xC000_003A);
pub const OBJECT_PATH_SYNTAX_BAD: NtStatus = NtStatus(0xC000_003B);
pub const SHARING_VIOLATION: NtStatus = NtStatus(0xC000_0043);
pub const EAS_NOT_SUPPORTED: NtStatus = NtStatus(0xC000_004F);
pub const FILE_LOCK_CONFLICT: NtStatus = NtStatus(0xC000_0054);
pub const LOCK_NOT_GRANTED: NtStatus = NtStatus(0xC000_0055);
pub const DELETE_PENDING: NtStatus = NtStatus(0xC000_0056);
pub const PRIVILEGE_NOT_HELD: NtStatus = NtStatus(0xC000_0061);
pub const LOGON_FAILURE: NtStatus = NtStatus(0xC000_006D);
pub const RANGE_NOT_LOCKED: NtStatus = NtStatus(0xC000_007E);
pub const DISK_FULL: NtStatus = NtStatus(0xC000_007F);
pub const FILE_IS_A_DIRECTORY: NtStatus = NtStatus(0xC000_00BA);
pub const NOT_SUPPORTED: NtStatus = NtStatus(0xC000_00BB);
pub const NETWORK_NAME_DELETED: NtStatus = NtStatus(0xC000_00C9);
pub const BAD_NETWORK_NAME: NtStatus = NtStatus(0xC000_00CC);
pub const REQUEST_NOT_ACCEPTED: NtStatus = NtStatus(0xC000_00D0);
pub const INVALID_OPLOCK_PROTOCOL: NtStatus = NtStatus(0xC000_00E3);
pub const INTERNAL_ERROR: NtStatus = NtStatus(0xC000_00E5);
pub const DIRECTORY_NOT_EMPTY: NtStatus = NtStatus(0xC000_0101);
pub const NOT_A_DIRECTORY: NtStatus = NtStatus(0xC000_0103);
pub const CANCELLED: NtStatus = NtStatus(0xC000_0120);
pub const CANNOT_DELETE: NtStatus = NtStatus(0xC000_0121);
pub const FILE_CLOSED: NtStatus = NtStatus(0xC000_0128);
pub const USER_SESSION_DELETED: NtStatus = NtStatus(0xC000_0203);
pub const NETWORK_SESSION_EXPIRED: NtStatus = NtStatus(0xC000_035C);
pub const INVALID_DEVICE_STATE: NtStatus = NtStatus(0xC000_0184);
pub const INVALID_LOCK_RANGE: NtStatus = NtStatus(0xC000_01A1);
pub const NOT_FOUND: NtStatus = NtStatus(0xC000_0225);
pub const FS_DRIVER_REQUIRED: NtStatus = NtStatus(0xC000_019C);
pub const STOPPED_ON_SYMLINK: NtStatus = NtStatus(0x8000_002D);
pub const MEDIA_WRITE_PROTECTED: NtStatus = NtStatus(0xC000_00A2);
pub const TOO_MANY_OPENED_FILES: NtStatus = NtStatus(0xC000_011F);
pub const INSUFFICIENT_RESOURCES: NtStatus = NtStatus(0xC000_009A);
pub const INVALID_NETWORK_RESPONSE: NtStatus = NtStatus(0xC000_00C3);
pub const NOT_SAME_DEVICE: NtStatus = NtStatus(0xC000_00D4);
pub const OBJECT_NAME_EXISTS: NtStatus = NtStatus(0x4000_0000);
pub const FILE_NOT_AVAILABLE: NtStatus = NtStatus(0xC000_0467);
pub const DUPLICATE_OBJECTID: NtStatus = NtStatus(0xC000_022A);
pub const NOTIFY_CLEANUP: NtStatus = NtStatus(0x0000_010B);
pub const USER_SESSION_NOT_FOUND: NtStatus = NtStatus(0xC000_0203);
pub const INVALID_VIEW_SIZE: NtStatus = NtStatus(0xC000_001F);
pub const NOT_A_REPARSE_POINT: NtStatus = NtStatus(0xC000_0275);
pub const BAD_IMPERSONATION_LEVEL: NtStatus = NtStatus(0xC000_00A5);
pub const REQUEST_OUT_OF_SEQUENCE: NtStatus = NtStatus(0xC000_042A);
pub const INVALID_SID: NtStatus = NtStatus(0xC000_0078);
pub const INVALID_ACL: NtStatus = NtStatus(0xC000_0077);
/// The path runs into a DFS link: the client asks for a referral (MS-SMB2 3.3.5.9).
pub const PATH_NOT_COVERED: NtStatus = NtStatus(0xC000_0257);

/// Names for [`NtStatus::name`]; where two names share a value the first listed wins.
const NAMES: &[(NtStatus, &str)] = &[
    (SUCCESS, "SUCCESS"),
    (PENDING, "PENDING"),
    (NOTIFY_ENUM_DIR, "NOTIFY_ENUM_DIR"),
    (BUFFER_OVERFLOW, "BUFFER_OVERFLOW"),
    (NO_MORE_FILES, "NO_MORE_FILES"),
    (UNSUCCESSFUL, "UNSUCCESSFUL"),
    (NOT_IMPLEMENTED, "NOT_IMPLEMENTED"),
    (INVALID_INFO_CLASS, "INVALID_INFO_CLASS"),
    (INFO_LENGTH_MISMATCH, "INFO_LENGTH_MISMATCH"),
    (INVALID_HANDLE, "INVALID_HANDLE"),
    (INVALID_PARAMETER, "INVALID_PARAMETER"),
    (NO_SUCH_FILE, "NO_SUCH_FILE"),
    (INVALID_DEVICE_REQUEST, "INVALID_DEVICE_REQUEST"),
    (END_OF_FILE, "END_OF_FILE"),
    (MORE_PROCESSING_REQUIRED, "MORE_PROCESSING_REQUIRED"),
    (ACCESS_DENIED, "ACCESS_DENIED"),
    (BUFFER_TOO_SMALL, "BUFFER_TOO_SMALL"),
    (OBJECT_NAME_INVALID, "OBJECT_NAME_INVALID"),
    (OBJECT_NAME_NOT_FOUND, "OBJECT_NAME_NOT_FOUND"),
    (OBJECT_NAME_COLLISION, "OBJECT_NAME_COLLISION"),
    (OBJECT_PATH_INVALID, "OBJECT_PATH_INVALID"),
    (OBJECT_PATH_NOT_FOUND, "OBJECT_PATH_NOT_FOUND"),
    (OBJECT_PATH_SYNTAX_BAD, "OBJECT_PATH_SYNTAX_BAD"),
    (SHARING_VIOLATION, "SHARING_VIOLATION"),
    (EAS_NOT_SUPPORTED, "EAS_NOT_SUPPORTED"),
    (FILE_LOCK_CONFLICT, "FILE_LOCK_CONFLICT"),
    (LOCK_NOT_GRANTED, "LOCK_NOT_GRANTED"),
    (DELETE_PENDING, "DELETE_PENDING"),
    (PRIVILEGE_NOT_HELD, "PRIVILEGE_NOT_HELD"),
    (LOGON_FAILURE, "LOGON_FAILURE"),
    (RANGE_NOT_LOCKED, "RANGE_NOT_LOCKED"),
    (DISK_FULL, "DISK_FULL"),
    (FILE_IS_A_DIRECTORY, "FILE_IS_A_DIRECTORY"),
    (NOT_SUPPORTED, "NOT_SUPPORTED"),
    (NETWORK_NAME_DELETED, "NETWORK_NAME_DELETED"),
    (BAD_NETWORK_NAME, "BAD_NETWORK_NAME"),
    (REQUEST_NOT_ACCEPTED, "REQUEST_NOT_ACCEPTED"),
    (INVALID_OPLOCK_PROTOCOL, "INVALID_OPLOCK_PROTOCOL"),
    (INTERNAL_ERROR, "INTERNAL_ERROR"),
    (DIRECTORY_NOT_EMPTY, "DIRECTORY_NOT_EMPTY"),
    (NOT_A_DIRECTORY, "NOT_A_DIRECTORY"),
    (CANCELLED, "CANCELLED"),
    (CANNOT_DELETE, "CANNOT_DELETE"),
    (FILE_CLOSED, "FILE_CLOSED"),
    (USER_SESSION_DELETED, "USER_SESSION_DELETED"),
    (NETWORK_SESSION_EXPIRED, "NETWORK_SESSION_EXPIRED"),
    (INVALID_DEVICE_STATE, "INVALID_DEVICE_STATE"),
    (INVALID_LOCK_RANGE, "INVALID_LOCK_RANGE"),
    (NOT_FOUND, "NOT_FOUND"),
    (PATH_NOT_COVERED, "PATH_NOT_COVERED"),
    (FS_DRIVER_REQUIRED, "FS_DRIVER_REQUIRED"),
    (STOPPED_ON_SYMLINK, "STOPPED_ON_SYMLINK"),
    (MEDIA_WRITE_PROTECTED, "MEDIA_WRITE_PROTECTED"),
    (TOO_MANY_OPENED_FILES, "TOO_MANY_OPENED_FILES"),
    (INSUFFICIENT_RESOURCES, "INSUFFICIENT_RESOURCES"),
    (INVALID_NETWORK_RESPONSE, "INVALID_NETWORK_RESPONSE"),
    (NOT_SAME_DEVICE, "NOT_SAME_DEVICE"),
    (OBJECT_NAME_EXISTS, "OBJECT_NAME_EXISTS"),
    (FILE_NOT_AVAILABLE, "FILE_NOT_AVAILABLE"),
    (DUPLICATE_OBJECTID, "DUPLICATE_OBJECTID"),
    (NOTIFY_CLEANUP, "NOTIFY_CLEANUP"),
    (USER_SESSION_NOT_FOUND, "USER_SESSION_NOT_FOUND"),
    (INVALID_VIEW_SIZE, "INVALID_VIEW_SIZE"),
    (NOT_A_REPARSE_POINT, "NOT_A_REPARSE_POINT"),
    (BAD_IMPERSONATION_LEVEL, "BAD_IMPERSONATION_LEVEL"),
    (REQUEST_OUT_OF_SEQUENCE, "REQUEST_OUT_OF_SEQUENCE"),
    (INVALID_SID, "INVALID_SID"),
    (INVALID_ACL, "INVALID_ACL"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_and_names() {
        assert!(ACCESS_DENIED.is_error());
        assert!(!ACCESS_DENIED.is_success());
        assert!(SUCCESS.is_success() && PENDING.is_success());
        assert!(!BUFFER_OVERFLOW.is_error() && !BUFFER_OVERFLOW.is_success());
        assert_eq!(format!("{:?}", ACCESS_DENIED), "ACCESS_DENIED(0xc0000022)");
        assert_eq!(
            format!("{:?}", NtStatus(0xC000_9999)),
            "NtStatus(0xc0009999)"
        );
        assert_eq!(u32::from(SHARING_VIOLATION), 0xC000_0043);
    }
}
