//! Byte-range lock table of one stream (MS-FSA 2.1.4.10, 2.1.5.8, 2.1.5.9).
//!
//! Locks are bucketed by the bit length of their length (`class = 64 - lzcnt(len)`), and each
//! bucket is a `BTreeMap` ordered by offset. A lock of class `c` is at most `2^c - 1` bytes
//! long, so every lock of that class overlapping a range starting at `first` has its offset
//! in `[first - (2^c - 1), last]`: an overlap query is one range scan per non-empty class,
//! i.e. `O(classes * log n + k)` where `k` is the number of locks inspected. Uniform workloads
//! (all locks of similar length) touch one or two classes.

use std::collections::BTreeMap;

use crate::types::OpenId;

/// The bytes a range covers, as MS-FSA 2.1.4.10 computes them: `last = offset + length - 1`
/// with wrapping arithmetic, so a zero-length range at `X > 0` is `[X, X-1]` and overlaps a
/// range `[a, b]` exactly when `a < X <= b` (it sits strictly inside, between two locked
/// bytes). The `{0, 0}` range overlaps nothing and is represented by `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Span {
    pub first: u64,
    pub last: u64,
}

impl Span {
    /// `None` for the `{0, 0}` range, which MS-FSA 2.1.4.10 defines as conflicting with nothing.
    /// The caller must have validated the range with [`range_is_valid`].
    pub fn of(offset: u64, length: u64) -> Option<Span> {
        if offset == 0 && length == 0 {
            return None;
        }
        Some(Span {
            first: offset,
            last: offset.wrapping_add(length).wrapping_sub(1),
        })
    }

    /// MS-FSA 2.1.4.10: `(ByteOffset <= LastByteOffset2) and (LastByteOffset1 >= LockOffset)`.
    pub fn overlaps(self, other: Span) -> bool {
        self.first <= other.last && self.last >= other.first
    }
}

/// MS-FSA 2.1.5.8 / 2.1.5.9: a range whose last byte lies past 2^64 - 1 is
/// STATUS_INVALID_LOCK_RANGE; zero-length ranges are always valid.
pub(crate) fn range_is_valid(offset: u64, length: u64) -> bool {
    length == 0 || offset.checked_add(length - 1).is_some()
}

/// MS-FSA 2.1.4.10, for two overlapping ranges: does a held lock block the access?
/// Exclusive locks block every other open; they block their own open only for another
/// exclusive lock. Shared locks block every access with exclusive intent (exclusive locks and
/// writes), including the owner's own writes.
pub(crate) fn blocks(
    held_open: OpenId,
    held_exclusive: bool,
    open: OpenId,
    exclusive: bool,
    lock_intent: bool,
) -> bool {
    if held_exclusive {
        held_open != open || (exclusive && lock_intent)
    } else {
        exclusive
    }
}

/// One granted lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct HeldLock {
    pub length: u64,
    pub exclusive: bool,
    pub open: OpenId,
}

/// Handle to one granted lock, kept by its owning open so close can drop its locks without
/// scanning other opens' locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) struct LockRef {
    pub class: u8,
    pub offset: u64,
    pub seq: u64,
}

fn class_of(length: u64) -> u8 {
    // 0 for zero-length, 1 for length 1, ..., 64 for lengths >= 2^63: at most 65 classes.
    (64 - length.leading_zeros()) as u8
}

fn max_len_of(class: u8) -> u64 {
    match class {
        0 => 0,
        64.. => u64::MAX,
        c => (1u64 << c) - 1,
    }
}

/// Locks of one length class, keyed by (offset, insertion sequence).
type ClassMap = BTreeMap<(u64, u64), HeldLock>;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct LockTable {
    /// Classes in use, sorted by class; at most one of them may be empty (see `remove`). Most
    /// files use one or two classes, so a short vector beats a fixed 65-slot array in memory
    /// for millions of files.
    classes: Vec<(u8, ClassMap)>,
    len: usize,
    next_seq: u64,
}

impl LockTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// MS-FSA 2.1.4.10 over every held lock: true if some lock blocks the access.
    pub fn conflicts(
        &self,
        span: Option<Span>,
        open: OpenId,
        exclusive: bool,
        lock_intent: bool,
    ) -> bool {
        let Some(span) = span else {
            return false;
        };
        for (class, map) in &self.classes {
            let lo = span.first.saturating_sub(max_len_of(*class));
            let hi = span.last;
            if hi < lo {
                // Zero-length query at `first` against zero-length locks: nothing to scan.
                continue;
            }
            // Open-ended range, stopped by hand past `hi`: one bounded descent instead of two
            // (the upper end of an unbounded range needs no key comparisons).
            for (&(offset, _), held) in map.range((lo, 0)..) {
                if offset > hi {
                    break;
                }
                let Some(held_span) = Span::of(offset, held.length) else {
                    continue;
                };
                if held_span.overlaps(span)
                    && blocks(held.open, held.exclusive, open, exclusive, lock_intent)
                {
                    return true;
                }
            }
        }
        false
    }

    pub fn insert(&mut self, offset: u64, length: u64, exclusive: bool, open: OpenId) -> LockRef {
        let class = class_of(length);
        let seq = self.next_seq;
        self.next_seq += 1;
        let idx = match self.classes.binary_search_by_key(&class, |(c, _)| *c) {
            Ok(i) => i,
            Err(i) => {
                self.classes.insert(i, (class, BTreeMap::new()));
                i
            }
        };
        self.classes[idx].1.insert(
            (offset, seq),
            HeldLock {
                length,
                exclusive,
                open,
            },
        );
        self.len += 1;
        LockRef { class, offset, seq }
    }

    pub fn remove(&mut self, r: LockRef) -> Option<HeldLock> {
        let idx = self
            .classes
            .binary_search_by_key(&r.class, |(c, _)| *c)
            .ok()?;
        let held = self.classes[idx].1.remove(&(r.offset, r.seq))?;
        // An emptied class is dropped only when other classes exist. The common pattern is
        // lock/unlock of one range on an otherwise idle file, where dropping the last class
        // would free its B-tree node on every unlock and allocate it again on the next lock.
        // Keeping one empty class costs one node per file with locks ever taken, and the
        // file's whole state goes away when it becomes idle.
        if self.classes[idx].1.is_empty() && self.classes.len() > 1 {
            self.classes.remove(idx);
        }
        self.len -= 1;
        Some(held)
    }

    pub fn contains(&self, r: LockRef) -> bool {
        self.classes
            .binary_search_by_key(&r.class, |(c, _)| *c)
            .is_ok_and(|i| self.classes[i].1.contains_key(&(r.offset, r.seq)))
    }

    /// Drops every lock of `open` in one O(n) pass: cheaper than n removals when the open
    /// holds a large share of the table.
    pub fn remove_all_of(&mut self, open: OpenId) {
        for (_, map) in &mut self.classes {
            map.retain(|_, held| held.open != open);
        }
        self.classes.retain(|(_, map)| !map.is_empty());
        self.len = self.classes.iter().map(|(_, map)| map.len()).sum();
    }

    /// MS-FSA 2.1.5.9: the lock of `open` with exactly this offset and length; an exclusive
    /// one is preferred when several match.
    pub fn find_exact(&self, offset: u64, length: u64, open: OpenId) -> Option<LockRef> {
        let class = class_of(length);
        let idx = self
            .classes
            .binary_search_by_key(&class, |(c, _)| *c)
            .ok()?;
        let mut found = None;
        // Open-ended range stopped by hand (see `conflicts`).
        for (&(off, seq), held) in self.classes[idx].1.range((offset, 0)..) {
            if off != offset {
                break;
            }
            if held.length == length && held.open == open {
                found = Some(LockRef {
                    class,
                    offset: off,
                    seq,
                });
                if held.exclusive {
                    break;
                }
            }
        }
        found
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &HeldLock)> + '_ {
        self.classes
            .iter()
            .flat_map(|(_, map)| map.iter().map(|(&(offset, _), held)| (offset, held)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_length_overlap_follows_ms_fsa_arithmetic() {
        let z = Span::of(5, 0);
        assert_eq!(z, Some(Span { first: 5, last: 4 }));
        let z = z.unwrap();
        // [4, 5] strictly contains the point between bytes 4 and 5.
        assert!(z.overlaps(Span::of(4, 2).unwrap()));
        // [5, 9] starts at 5: the point lies before it.
        assert!(!z.overlaps(Span::of(5, 5).unwrap()));
        // [0, 4] ends before it.
        assert!(!z.overlaps(Span::of(0, 5).unwrap()));
        // Zero-length never overlaps zero-length.
        assert!(!z.overlaps(Span::of(5, 0).unwrap()));
        assert_eq!(Span::of(0, 0), None);
    }

    #[test]
    fn table_finds_long_lock_from_far_before() {
        let mut t = LockTable::default();
        t.insert(0, u64::MAX, true, OpenId(1));
        t.insert(1000, 1, true, OpenId(1));
        assert!(t.conflicts(Span::of(u64::MAX - 5, 1), OpenId(2), false, false));
        assert!(!t.conflicts(Span::of(u64::MAX, 1), OpenId(2), false, false));
        let r = t.find_exact(0, u64::MAX, OpenId(1)).unwrap();
        assert!(t.remove(r).is_some());
        assert!(!t.conflicts(Span::of(5, 1), OpenId(2), true, true));
        assert!(t.conflicts(Span::of(1000, 1), OpenId(2), true, true));
        assert_eq!(t.len(), 1);
    }
}
