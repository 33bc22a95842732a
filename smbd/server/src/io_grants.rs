//! The node's I/O grants (lockmgr-engine's `engine/io_grant.rs` has the rules): opens whose
//! READ and WRITE may skip the lock service's `CheckIo`, until the service recalls them.
//!
//! Workers look grants up and record them; the thread routing lock-service notifications
//! applies recalls, then acknowledges. All of it under one mutex, so once a recall is applied
//! no I/O check starts using the recalled grant. A grant's reply and a recall of the same file
//! can be handled in either order by different threads: the generation tells a grant that
//! was recalled before it was recorded (its generation is not above the recall's) from one
//! given after the recall.

use std::collections::HashMap;

use crate::locking::{FileId, OpenId};

#[derive(Default)]
pub struct IoGrants {
    /// Open -> its file, the grant's generation and the connection that holds the open.
    grants: HashMap<OpenId, (FileId, u64, u64)>,
    /// File -> generation of the latest recall seen. Kept for the files recalled while the
    /// node runs (one entry each), so a grant reply overtaken by its recall is recognised.
    recalled: HashMap<FileId, u64>,
}

impl IoGrants {
    pub fn is_granted(&self, open: OpenId) -> bool {
        self.grants.contains_key(&open)
    }

    /// A `CheckIoGrant` was answered `IoGranted { generation }`; false (and nothing recorded)
    /// if a recall covering it was applied already.
    pub fn record(&mut self, open: OpenId, file: FileId, generation: u64, conn: u64) -> bool {
        if self.recalled.get(&file).is_some_and(|r| generation <= *r) {
            return false;
        }
        self.grants.insert(open, (file, generation, conn));
        true
    }

    /// The open is closing (or disconnecting): its grant dies with it at the lock service.
    pub fn forget(&mut self, open: OpenId) {
        self.grants.remove(&open);
    }

    /// `IoRecall { file, generation }`: every grant of the file stops here.
    pub fn recall(&mut self, file: FileId, generation: u64) {
        let latest = self.recalled.entry(file).or_insert(generation);
        *latest = (*latest).max(generation);
        self.grants
            .retain(|_, (f, g, _)| !(*f == file && *g <= generation));
    }

    /// A byte-range lock request on `file` ends the requesting lock-service session's grants
    /// there: those of connection `conn` when each connection is a session (`Some`), all of
    /// the node's when the node is one (`None`).
    pub fn drop_file(&mut self, file: FileId, conn: Option<u64>) {
        self.grants
            .retain(|_, (f, _, c)| !(*f == file && conn.is_none_or(|conn| conn == *c)));
    }

    /// The lock-service session was lost: whatever it granted is void.
    pub fn clear(&mut self) {
        self.grants.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_before_record_voids_the_grant() {
        let mut g = IoGrants::default();
        let (o, f) = (OpenId(1), FileId(7));
        g.recall(f, 5);
        assert!(!g.record(o, f, 5, 1));
        assert!(!g.is_granted(o));
        assert!(g.record(o, f, 6, 1));
        assert!(g.is_granted(o));
        g.recall(f, 6);
        assert!(!g.is_granted(o));
    }

    #[test]
    fn recall_spares_other_files_and_forget_drops() {
        let mut g = IoGrants::default();
        assert!(g.record(OpenId(1), FileId(1), 1, 1));
        assert!(g.record(OpenId(2), FileId(2), 1, 1));
        assert!(g.record(OpenId(3), FileId(2), 1, 2));
        g.drop_file(FileId(2), Some(2));
        assert!(!g.is_granted(OpenId(3)));
        assert!(g.is_granted(OpenId(2)));
        g.recall(FileId(1), 3);
        assert!(!g.is_granted(OpenId(1)));
        assert!(g.is_granted(OpenId(2)));
        g.forget(OpenId(2));
        assert!(!g.is_granted(OpenId(2)));
    }
}
