//! The memory area smbdirectd shares with smbd for READ/WRITE payloads of RDMA channels
//! (`smb_proto::area_frame` describes the frames that name ranges of it).
//!
//! smbdirectd passes the area (a sealed memfd) with the hello that opens each connection's
//! stream; all its connections share one mapping here ([`attach`], by the file's identity).
//! Every range smbdirectd names is checked before smbd touches it, in a ledger per area:
//! inside the area, not empty, not overlapping a range that any connection holds (another
//! connection's: [`AreaError::HeldByOther`]; its own: [`AreaError::DoubleUse`]), and given
//! back only by the connection that holds it. A connection's holds end with it
//! ([`AreaHandle`]'s drop), so a dead connection frees its ranges and a restarted smbdirectd
//! brings a new area (the old one goes when the last mapping of it does).
//!
//! What each hold means: a WRITE's data stays in the area until the WRITE has written the file
//! from it (the file I/O's buffer is the range itself, no copy in smbd), then the range goes
//! back (`Release`); a READ's grant is held until the READ reads the file into it (`Read`
//! gives it back) or fails (`Release`).
//!
//! While the kernel reads or writes a range for a file I/O (synchronously or in the worker's
//! io_uring), the range is *taken* ([`AreaHandle::take`], giving an [`AreaRange`]): nobody
//! releases it but the I/O's end (the [`AreaRange`] dropping), not the message's end and not
//! the connection's, so no other connection can be given it while the kernel may still touch
//! it, and the mapping stays (the range holds the area) until then.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::sys::SharedMapping;

/// Largest area smbd maps (smbdirectd's `--area-size` is bounded below this).
pub const MAX_AREA: u64 = 4 << 30;

/// Why a range smbdirectd named is refused (the connection is closed: smbdirectd is broken
/// or hostile, and nothing of the area is touched).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AreaError {
    #[error("area frame on a connection without a shared area")]
    NoArea,
    #[error("cannot map the area: {0}")]
    Map(String),
    #[error("empty range at {offset}")]
    Empty { offset: u64 },
    #[error("range {offset}+{length} outside the {size}-byte area")]
    OutOfBounds { offset: u64, length: u32, size: u64 },
    #[error("range {offset}+{length} overlaps one connection {owner} holds")]
    HeldByOther {
        offset: u64,
        length: u32,
        owner: u64,
    },
    #[error("range {offset}+{length} overlaps one this connection already holds")]
    DoubleUse { offset: u64, length: u32 },
    #[error("range at {offset} is not held by this connection")]
    NotHeld { offset: u64 },
    #[error("{0} ranges held at once (at most {MAX_HOLDS_PER_CONN})")]
    TooMany(usize),
}

/// Ranges one connection may hold at once (READ grants waiting for their requests, a WRITE's
/// data between its frame and its copy).
pub const MAX_HOLDS_PER_CONN: usize = 16;

/// A range held by a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub conn: u64,
    pub message_id: u64,
    pub offset: u64,
    pub length: u32,
    /// A file I/O uses the range now ([`Ledger::take`]).
    pub taken: bool,
}

/// Who holds which ranges of one area (no I/O).
#[derive(Debug)]
pub struct Ledger {
    size: u64,
    /// By start offset; the ranges never overlap.
    held: BTreeMap<u64, Hold>,
}

impl Ledger {
    pub fn new(size: u64) -> Ledger {
        Ledger {
            size,
            held: BTreeMap::new(),
        }
    }

    /// Checks `offset+length` and records it as held by `conn` for `message_id`.
    pub fn hold(
        &mut self,
        conn: u64,
        message_id: u64,
        offset: u64,
        length: u32,
    ) -> Result<Hold, AreaError> {
        if length == 0 {
            return Err(AreaError::Empty { offset });
        }
        let end = offset
            .checked_add(u64::from(length))
            .filter(|&e| e <= self.size)
            .ok_or(AreaError::OutOfBounds {
                offset,
                length,
                size: self.size,
            })?;
        // The held ranges do not overlap, so only the last one starting before `end` can
        // reach into the new one.
        if let Some((_, h)) = self.held.range(..end).next_back() {
            if h.offset + u64::from(h.length) > offset {
                return Err(if h.conn == conn {
                    AreaError::DoubleUse { offset, length }
                } else {
                    AreaError::HeldByOther {
                        offset,
                        length,
                        owner: h.conn,
                    }
                });
            }
        }
        let mine = self.held.values().filter(|h| h.conn == conn).count();
        if mine >= MAX_HOLDS_PER_CONN {
            return Err(AreaError::TooMany(mine + 1));
        }
        let h = Hold {
            conn,
            message_id,
            offset,
            length,
            taken: false,
        };
        self.held.insert(offset, h);
        Ok(h)
    }

    /// Ends `conn`'s hold of the range starting at `offset` (not one a file I/O has taken:
    /// only [`Ledger::release_taken`] ends that).
    pub fn release(&mut self, conn: u64, offset: u64) -> Result<Hold, AreaError> {
        match self.held.get(&offset).copied() {
            Some(h) if h.conn == conn && !h.taken => {
                self.held.remove(&offset);
                Ok(h)
            }
            _ => Err(AreaError::NotHeld { offset }),
        }
    }

    /// Marks `conn`'s hold at `offset` as used by a file I/O from now on.
    pub fn take(&mut self, conn: u64, offset: u64) -> Result<Hold, AreaError> {
        match self.held.get_mut(&offset) {
            Some(h) if h.conn == conn && !h.taken => {
                h.taken = true;
                Ok(*h)
            }
            _ => Err(AreaError::NotHeld { offset }),
        }
    }

    /// Ends a taken hold (its file I/O is over).
    pub fn release_taken(&mut self, conn: u64, offset: u64) -> Result<Hold, AreaError> {
        match self.held.get(&offset).copied() {
            Some(h) if h.conn == conn && h.taken => {
                self.held.remove(&offset);
                Ok(h)
            }
            _ => Err(AreaError::NotHeld { offset }),
        }
    }

    /// Ends every hold of `conn` (it went away) but the taken ones: the kernel may still be
    /// reading or writing those, and their I/O's end releases them.
    pub fn release_conn(&mut self, conn: u64) -> usize {
        let before = self.held.len();
        self.held.retain(|_, h| h.conn != conn || h.taken);
        before - self.held.len()
    }

    /// `conn`'s hold for `message_id` not taken by a file I/O, if any.
    pub fn find(&self, conn: u64, message_id: u64) -> Option<Hold> {
        self.held
            .values()
            .find(|h| h.conn == conn && h.message_id == message_id && !h.taken)
            .copied()
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// One area as smbd sees it: the mapping and its ledger.
#[derive(Debug)]
pub struct Area {
    pub map: SharedMapping,
    ledger: Mutex<Ledger>,
    /// (st_dev, st_ino) of the memfd: its identity for [`attach`].
    key: (u64, u64),
}

impl Area {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The areas mapped now, by file identity: connections of one smbdirectd share one mapping
/// and one ledger.
type AreaMap = HashMap<(u64, u64), Weak<Area>>;

fn areas() -> &'static Mutex<AreaMap> {
    static AREAS: OnceLock<Mutex<AreaMap>> = OnceLock::new();
    AREAS.get_or_init(Default::default)
}

/// A connection's use of an area: its holds end when this drops.
#[derive(Debug)]
pub struct AreaHandle {
    area: Arc<Area>,
    conn: u64,
}

/// Maps (or finds mapped) the area smbdirectd passed for connection `conn`.
pub fn attach(fd: OwnedFd, conn: u64) -> Result<AreaHandle, AreaError> {
    let meta = std::fs::File::from(fd);
    let st = meta.metadata().map_err(|e| AreaError::Map(e.to_string()))?;
    let key = {
        use std::os::unix::fs::MetadataExt;
        (st.dev(), st.ino())
    };
    let mut all = areas().lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|_, w| w.strong_count() > 0);
    if let Some(a) = all.get(&key).and_then(Weak::upgrade) {
        return Ok(AreaHandle { area: a, conn });
    }
    let fd = OwnedFd::from(meta);
    let map =
        crate::sys::map_shared_area(&fd, MAX_AREA).map_err(|e| AreaError::Map(e.to_string()))?;
    // The mapping keeps the memory; the descriptor is not needed any more.
    drop(fd);
    let size = map.len() as u64;
    let area = Arc::new(Area {
        map,
        ledger: Mutex::new(Ledger::new(size)),
        key,
    });
    all.insert(key, Arc::downgrade(&area));
    Ok(AreaHandle { area, conn })
}

impl AreaHandle {
    /// Records a range smbdirectd handed this connection.
    pub fn hold(&self, message_id: u64, offset: u64, length: u32) -> Result<Hold, AreaError> {
        self.area
            .ledger()
            .hold(self.conn, message_id, offset, length)
    }

    /// Gives a range back.
    pub fn release(&self, offset: u64) -> Result<Hold, AreaError> {
        self.area.ledger().release(self.conn, offset)
    }

    /// This connection's hold for `message_id` (a READ's grant).
    pub fn find(&self, message_id: u64) -> Option<Hold> {
        self.area.ledger().find(self.conn, message_id)
    }

    pub fn map(&self) -> &SharedMapping {
        &self.area.map
    }

    /// Takes the hold at `offset` for a file I/O: the returned range keeps it (and the
    /// mapping) until it drops, whatever happens to this connection meanwhile.
    pub fn take(&self, offset: u64) -> Result<AreaRange, AreaError> {
        let h = self.area.ledger().take(self.conn, offset)?;
        Ok(AreaRange {
            area: Arc::clone(&self.area),
            hold: h,
        })
    }

    /// The area's size in bytes.
    pub fn size(&self) -> u64 {
        self.area.map.len() as u64
    }

    /// Whether two handles use the same mapping.
    pub fn same_area(&self, other: &AreaHandle) -> bool {
        self.area.key == other.area.key && Arc::ptr_eq(&self.area, &other.area)
    }
}

/// A range of the area a file I/O uses (the kernel reads a WRITE's data from it or writes a
/// READ's data into it): the hold ends, and the mapping may go, only when this drops.
#[derive(Debug)]
pub struct AreaRange {
    area: Arc<Area>,
    hold: Hold,
}

impl AreaRange {
    pub fn offset(&self) -> u64 {
        self.hold.offset
    }

    pub fn len(&self) -> usize {
        self.hold.length as usize
    }

    pub fn is_empty(&self) -> bool {
        self.hold.length == 0
    }

    pub fn message_id(&self) -> u64 {
        self.hold.message_id
    }

    /// The mapping the range is in.
    pub fn map(&self) -> &SharedMapping {
        &self.area.map
    }

    /// The address of the range's bytes from `at` on (for the ring's READ/WRITE): valid while
    /// this value lives, and only for the kernel (see `SharedMapping::raw_range`).
    pub fn ptr_from(&self, at: usize) -> std::io::Result<*mut u8> {
        let len = self
            .len()
            .checked_sub(at)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFAULT))?;
        self.area.map.raw_range(self.hold.offset as usize + at, len)
    }
}

impl Drop for AreaRange {
    fn drop(&mut self) {
        let _ = self
            .area
            .ledger()
            .release_taken(self.hold.conn, self.hold.offset);
    }
}

impl Drop for AreaHandle {
    fn drop(&mut self) {
        let n = self.area.ledger().release_conn(self.conn);
        if n > 0 {
            tracing::debug!(
                conn = self.conn,
                ranges = n,
                "area ranges freed with the connection"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_inside_the_area_and_not_empty() {
        let mut l = Ledger::new(4096);
        assert_eq!(l.hold(1, 1, 0, 0), Err(AreaError::Empty { offset: 0 }));
        assert!(matches!(
            l.hold(1, 1, 4000, 97),
            Err(AreaError::OutOfBounds { .. })
        ));
        assert!(matches!(
            l.hold(1, 1, u64::MAX - 1, 2),
            Err(AreaError::OutOfBounds { .. })
        ));
        assert!(l.hold(1, 1, 4000, 96).is_ok());
        assert_eq!(l.held(), 1);
    }

    #[test]
    fn overlaps_are_double_use_or_another_connections() {
        let mut l = Ledger::new(1 << 20);
        l.hold(1, 10, 4096, 4096).unwrap();
        assert_eq!(
            l.hold(1, 11, 4096, 4096),
            Err(AreaError::DoubleUse {
                offset: 4096,
                length: 4096
            })
        );
        assert_eq!(
            l.hold(2, 11, 8191, 10),
            Err(AreaError::HeldByOther {
                offset: 8191,
                length: 10,
                owner: 1
            })
        );
        assert!(matches!(
            l.hold(2, 11, 0, 4097),
            Err(AreaError::HeldByOther { owner: 1, .. })
        ));
        // Adjacent ranges are fine.
        l.hold(2, 11, 0, 4096).unwrap();
        l.hold(2, 12, 8192, 4096).unwrap();
        assert_eq!(l.find(2, 12).map(|h| h.offset), Some(8192));
    }

    #[test]
    fn only_the_holder_releases_and_a_dead_connection_frees_its_ranges() {
        let mut l = Ledger::new(1 << 20);
        l.hold(1, 1, 0, 100).unwrap();
        l.hold(1, 2, 100, 100).unwrap();
        l.hold(2, 3, 200, 100).unwrap();
        assert_eq!(l.release(2, 0), Err(AreaError::NotHeld { offset: 0 }));
        assert_eq!(l.release(1, 50), Err(AreaError::NotHeld { offset: 50 }));
        assert_eq!(l.release(1, 0).map(|h| h.message_id), Ok(1));
        assert_eq!(l.release(1, 0), Err(AreaError::NotHeld { offset: 0 }));
        assert_eq!(l.release_conn(1), 1);
        assert_eq!(l.held(), 1);
        // Freed: another connection may use it now.
        l.hold(2, 4, 0, 200).unwrap();
    }

    #[test]
    fn a_taken_range_outlives_its_message_and_its_connection() {
        let mut l = Ledger::new(1 << 20);
        l.hold(1, 5, 0, 100).unwrap();
        assert_eq!(l.take(2, 0), Err(AreaError::NotHeld { offset: 0 }));
        assert!(l.take(1, 0).unwrap().taken);
        assert_eq!(l.take(1, 0), Err(AreaError::NotHeld { offset: 0 }));
        // Neither the message's end (find/release) nor the connection's frees it.
        assert_eq!(l.find(1, 5), None);
        assert_eq!(l.release(1, 0), Err(AreaError::NotHeld { offset: 0 }));
        assert_eq!(l.release_conn(1), 0);
        assert!(matches!(
            l.hold(2, 6, 50, 10),
            Err(AreaError::HeldByOther { owner: 1, .. })
        ));
        // The I/O's end does.
        assert_eq!(l.release_taken(1, 0).map(|h| h.message_id), Ok(5));
        assert_eq!(l.release_taken(1, 0), Err(AreaError::NotHeld { offset: 0 }));
        l.hold(2, 6, 50, 10).unwrap();
    }

    #[test]
    fn holds_per_connection_are_bounded() {
        let mut l = Ledger::new(1 << 20);
        for i in 0..MAX_HOLDS_PER_CONN as u64 {
            l.hold(1, i, i * 10, 10).unwrap();
        }
        assert!(matches!(
            l.hold(1, 99, 10_000, 10),
            Err(AreaError::TooMany(_))
        ));
        l.hold(2, 99, 10_000, 10).unwrap();
    }
}
