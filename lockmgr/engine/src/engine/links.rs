//! The names a file is open through and which of them are delete-pending.
//!
//! MS-FSA keeps delete-pending per link, not per file (2.1.5.14.3 sets Open.Link.IsDeleted;
//! 2.1.5.1.2 refuses creates through a deleted link with STATUS_DELETE_PENDING; 2.1.5.4
//! removes the link when its last open closes). A file with two hard links `a` and `b` is
//! therefore still openable as `b` while `a` is delete-pending, and closing the last open of
//! `a` removes the name `a` even while `b` is open. The engine does not know names: the
//! caller names a link by an opaque 64-bit value ([`crate::OpenRequest::link`]) and the
//! engine counts opens per value.
//!
//! An open refers to its link by a serial number that stays the same when the link is
//! renamed ([`crate::Request::Relink`]), so a rename touches one record, not every open.

/// One name of a file with at least one open through it.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct LinkRec {
    /// What the opens of this record hold.
    serial: u32,
    /// The caller's name for the link.
    name: u64,
    opens: u32,
    /// Link.IsDeleted: the name goes when its last open closes.
    deleted: bool,
}

/// The links of one file that have opens. Almost every file has one, kept inline so that
/// the common open needs no allocation.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Links {
    first: Option<LinkRec>,
    more: Vec<LinkRec>,
    next_serial: u32,
}

impl Links {
    fn iter(&self) -> impl Iterator<Item = &LinkRec> {
        self.first.iter().chain(self.more.iter())
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut LinkRec> {
        self.first.iter_mut().chain(self.more.iter_mut())
    }

    fn by_serial(&mut self, serial: u32) -> Option<&mut LinkRec> {
        self.iter_mut().find(|r| r.serial == serial)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Whether the link called `name` is delete-pending.
    pub(super) fn name_deleted(&self, name: u64) -> bool {
        self.iter().any(|r| r.name == name && r.deleted)
    }

    /// Whether the link with `serial` is delete-pending.
    pub(super) fn serial_deleted(&self, serial: u32) -> bool {
        self.iter().any(|r| r.serial == serial && r.deleted)
    }

    /// How many links are delete-pending.
    pub(super) fn deleted_count(&self) -> u32 {
        self.iter().filter(|r| r.deleted).count() as u32
    }

    /// Whether any link is delete-pending.
    pub(super) fn any_deleted(&self) -> bool {
        self.iter().any(|r| r.deleted)
    }

    /// One more open through the link called `name`: its serial.
    pub(super) fn attach(&mut self, name: u64) -> u32 {
        if let Some(r) = self.iter_mut().find(|r| r.name == name) {
            r.opens += 1;
            return r.serial;
        }
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        let rec = LinkRec {
            serial,
            name,
            opens: 1,
            deleted: false,
        };
        if self.first.is_none() {
            self.first = Some(rec);
        } else {
            self.more.push(rec);
        }
        serial
    }

    /// An open through link `serial` goes. Returns whether it was the last one of a
    /// delete-pending link (MS-FSA 2.1.5.4: then the name is removed).
    pub(super) fn detach(&mut self, serial: u32) -> bool {
        let Some(r) = self.by_serial(serial) else {
            return false;
        };
        r.opens = r.opens.saturating_sub(1);
        if r.opens > 0 {
            return false;
        }
        let deleted = r.deleted;
        if self.first.is_some_and(|f| f.serial == serial) {
            self.first = self.more.pop();
        } else {
            self.more.retain(|r| r.serial != serial);
        }
        if self.first.is_none() {
            // No open left: serials start over, which keeps replicated states comparable.
            self.next_serial = 0;
        }
        deleted
    }

    /// Set or clear Link.IsDeleted of link `serial`.
    pub(super) fn set_deleted(&mut self, serial: u32, deleted: bool) {
        if let Some(r) = self.by_serial(serial) {
            r.deleted = deleted;
        }
    }

    /// Link `serial` was renamed to `name` (its opens and its delete-pending mark go with
    /// it). A rename onto another open name of the same file changes nothing on disk
    /// (rename(2) of two links of one inode), so the records are left as they are.
    pub(super) fn rename(&mut self, serial: u32, name: u64) {
        if self.iter().any(|r| r.name == name) {
            return;
        }
        if let Some(r) = self.by_serial(serial) {
            r.name = name;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Links;

    #[test]
    fn last_open_of_a_deleted_link_reports_the_delete_and_other_links_stay() {
        let mut l = Links::default();
        let a1 = l.attach(1);
        let a2 = l.attach(1);
        let b = l.attach(2);
        assert_eq!(a1, a2);
        l.set_deleted(a1, true);
        assert!(l.name_deleted(1));
        assert!(!l.name_deleted(2));
        assert_eq!(l.deleted_count(), 1);
        assert!(!l.detach(a1));
        assert!(l.detach(a2));
        assert!(!l.name_deleted(1));
        assert!(!l.detach(b));
        assert!(l.is_empty());
    }

    #[test]
    fn rename_moves_the_mark_and_keeps_serials() {
        let mut l = Links::default();
        let a = l.attach(1);
        l.set_deleted(a, true);
        l.rename(a, 3);
        assert!(l.name_deleted(3));
        assert!(!l.name_deleted(1));
        assert!(l.serial_deleted(a));
        assert!(l.detach(a));
    }
}
