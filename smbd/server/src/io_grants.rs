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

use crate::locking::{FileId, OpenId, Reply};

#[derive(Default)]
pub struct IoGrants {
    /// Open -> its file, the grant's generation and the connection that holds the open.
    grants: HashMap<OpenId, (FileId, u64, u64)>,
    /// File -> generation of the latest recall seen while a `CheckIoGrant` of that file was
    /// in flight, so a grant reply overtaken by its recall is recognised. Only such a reply
    /// can be overtaken, so the entry goes with the file's last answer: the table holds at
    /// most the files being asked about, not every file ever recalled.
    recalled: HashMap<FileId, u64>,
    /// File -> `CheckIoGrant` requests in flight ([`IoGrants::ask`] .. [`IoGrants::answered`]).
    asking: HashMap<FileId, u32>,
    /// (connection, request id) -> file of a create asking for an I/O grant
    /// ([`IoGrants::ask_open`]) whose answer was not seen yet: the immediate reply, or the
    /// completion of a deferred create, which comes in order with the recalls.
    opening: HashMap<(u64, u64), FileId>,
}

impl IoGrants {
    pub fn is_granted(&self, open: OpenId) -> bool {
        self.grants.contains_key(&open)
    }

    /// A `CheckIoGrant` of `file` is about to be sent; [`IoGrants::answered`] must follow.
    pub fn ask(&mut self, file: FileId) {
        *self.asking.entry(file).or_default() += 1;
    }

    /// The `CheckIoGrant` of `file` announced by [`IoGrants::ask`] was answered, with
    /// `IoGranted { generation }` for `open` of connection `conn` if `grant` is given.
    /// Returns whether a grant was recorded: not if a recall covering it was applied already.
    pub fn answered(&mut self, file: FileId, grant: Option<(OpenId, u64, u64)>) -> bool {
        let recorded = grant.is_some_and(|(open, generation, conn)| {
            let overtaken = self.recalled.get(&file).is_some_and(|r| generation <= *r);
            if !overtaken {
                self.grants.insert(open, (file, generation, conn));
            }
            !overtaken
        });
        if let Some(n) = self.asking.get_mut(&file) {
            *n -= 1;
            if *n == 0 {
                self.asking.remove(&file);
                self.recalled.remove(&file);
            }
        }
        recorded
    }

    /// A create of `file` asking for an I/O grant goes out as request `request` of `conn`;
    /// [`IoGrants::opened`] with its final answer (or [`IoGrants::conn_gone`]) must follow.
    /// Recalls of the file are remembered meanwhile, as for a `CheckIoGrant`.
    pub fn ask_open(&mut self, file: FileId, conn: u64, request: u64) {
        self.ask(file);
        self.opening.insert((conn, request), file);
    }

    /// The final answer to the create announced by [`IoGrants::ask_open`]: `grant` is the
    /// new open and the generation of its I/O grant if the answer carried one. Answers that
    /// match no create in flight (seen already, or not asking) change nothing. Returns
    /// whether a grant was recorded.
    pub fn opened(&mut self, conn: u64, request: u64, grant: Option<(OpenId, u64)>) -> bool {
        match self.opening.remove(&(conn, request)) {
            Some(file) => self.answered(file, grant.map(|(o, g)| (o, g, conn))),
            None => false,
        }
    }

    /// Connection `conn` is gone: the creates it had in flight will not be answered to it.
    pub fn conn_gone(&mut self, conn: u64) {
        let gone: Vec<(u64, u64)> = self
            .opening
            .keys()
            .filter(|(c, _)| *c == conn)
            .copied()
            .collect();
        for key in gone {
            self.opened(key.0, key.1, None);
        }
    }

    /// The open is closing (or disconnecting): its grant dies with it at the lock service.
    pub fn forget(&mut self, open: OpenId) {
        self.grants.remove(&open);
    }

    /// `IoRecall { file, generation }`: every grant of the file stops here.
    pub fn recall(&mut self, file: FileId, generation: u64) {
        if self.asking.contains_key(&file) {
            let latest = self.recalled.entry(file).or_insert(generation);
            *latest = (*latest).max(generation);
        }
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

/// The I/O grant an open reply carries (`Reply::OpenedIo`): the open and its generation.
pub fn grant_of_open_reply(reply: &Reply) -> Option<(OpenId, u64)> {
    match reply {
        Reply::OpenedIo {
            open, generation, ..
        } => Some((*open, *generation)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's whole exchange: ask, then the answer granting `open` at `generation`.
    fn granted(g: &mut IoGrants, open: u64, file: u128, generation: u64, conn: u64) -> bool {
        g.ask(FileId(file));
        g.answered(FileId(file), Some((OpenId(open), generation, conn)))
    }

    #[test]
    fn recall_before_record_voids_the_grant() {
        let mut g = IoGrants::default();
        let (o, f) = (OpenId(1), FileId(7));
        g.ask(f);
        g.recall(f, 5);
        assert!(!g.answered(f, Some((o, 5, 1))));
        assert!(!g.is_granted(o));
        assert!(granted(&mut g, 1, 7, 6, 1));
        assert!(g.is_granted(o));
        g.recall(f, 6);
        assert!(!g.is_granted(o));
    }

    /// Recalls are remembered only while a grant request of their file is in flight, so a
    /// node recalled on a million files does not keep a million entries.
    #[test]
    fn recalls_are_forgotten_with_the_last_answer() {
        let mut g = IoGrants::default();
        for open in 0..1000 {
            let file = u128::from(open);
            assert!(granted(&mut g, open, file, 1, 1));
            g.recall(FileId(file), 1);
        }
        assert!(g.recalled.is_empty() && g.asking.is_empty() && g.grants.is_empty());
        let f = FileId(5);
        g.ask(f);
        g.ask(f);
        g.recall(f, 3);
        assert!(!g.answered(f, Some((OpenId(1), 3, 1))));
        assert_eq!(g.recalled.len(), 1, "a second request is still in flight");
        assert!(!g.answered(f, None));
        assert!(g.recalled.is_empty() && g.asking.is_empty());
    }

    /// A create's grant (immediate or deferred) recalled before it was recorded is void; one
    /// given after the recall stands; a gone connection's creates leave nothing behind.
    #[test]
    fn open_grants_follow_recalls() {
        let mut g = IoGrants::default();
        let f = FileId(9);
        g.ask_open(f, 1, 10);
        g.recall(f, 4);
        assert!(!g.opened(1, 10, Some((OpenId(5), 4))));
        assert!(!g.is_granted(OpenId(5)));
        g.ask_open(f, 1, 11);
        assert!(g.opened(1, 11, Some((OpenId(6), 5))));
        assert!(g.is_granted(OpenId(6)));
        assert!(!g.opened(1, 11, Some((OpenId(6), 5))), "answered once");
        g.ask_open(f, 2, 12);
        g.conn_gone(2);
        assert!(g.opening.is_empty() && g.asking.is_empty() && g.recalled.is_empty());
    }

    #[test]
    fn recall_spares_other_files_and_forget_drops() {
        let mut g = IoGrants::default();
        assert!(granted(&mut g, 1, 1, 1, 1));
        assert!(granted(&mut g, 2, 2, 1, 1));
        assert!(granted(&mut g, 3, 2, 1, 2));
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
