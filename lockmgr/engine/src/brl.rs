//! Byte-range lock table of one stream (MS-FSA 2.1.4.10, 2.1.5.8, 2.1.5.9).
//!
//! Locks are bucketed by the bit length of their length (`class = 64 - lzcnt(len)`), and each
//! bucket is ordered by offset (a sorted `VecDeque` while small, a `BTreeMap` when large, see
//! [`SMALL_MAX`]). A lock of class `c` is at most `2^c - 1` bytes
//! long, so every lock of that class overlapping a range starting at `first` has its offset
//! in `[first - (2^c - 1), last]`: an overlap query is one range scan per non-empty class,
//! i.e. `O(classes * log n + k)` where `k` is the number of locks inspected. Uniform workloads
//! (all locks of similar length) touch one or two classes.

use std::collections::{BTreeMap, VecDeque};

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

/// A lock's key in its class: (offset, insertion sequence).
type Key = (u64, u64);

/// Classes with at most this many locks are a sorted `VecDeque`, larger ones a `BTreeMap`.
/// The usual table (a few locks per file, or a node's window of locks in flight that it takes
/// and releases roughly in offset order) is then a binary search plus an append or a pop at
/// either end: no B-tree descents, node splits and merges (node allocations) per lock.
/// A lock in the middle shifts the shorter side, at most `SMALL_MAX / 2` entries.
const SMALL_MAX: usize = 256;
/// A `BTreeMap` class that shrinks to this many locks becomes a `VecDeque` again (below
/// `SMALL_MAX`, so a table hovering around the limit does not convert back and forth).
const SMALL_AGAIN: usize = 64;

/// Locks of one length class, ordered by [`Key`]. Serialized exactly like the
/// `BTreeMap<Key, HeldLock>` it replaces (a map in key order), so replica snapshots are
/// unchanged.
#[derive(Clone, Debug)]
enum ClassMap {
    Small(VecDeque<(Key, HeldLock)>),
    Large(BTreeMap<Key, HeldLock>),
}

/// Iterator over a [`ClassMap`] (or a part of it), in key order.
enum ClassIter<'a> {
    Small(std::collections::vec_deque::Iter<'a, (Key, HeldLock)>),
    Large(std::collections::btree_map::Range<'a, Key, HeldLock>),
}

impl<'a> Iterator for ClassIter<'a> {
    type Item = (&'a Key, &'a HeldLock);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            ClassIter::Small(it) => it.next().map(|(k, v)| (k, v)),
            ClassIter::Large(it) => it.next(),
        }
    }
}

impl ClassMap {
    fn new() -> ClassMap {
        ClassMap::Small(VecDeque::new())
    }

    fn len(&self) -> usize {
        match self {
            ClassMap::Small(v) => v.len(),
            ClassMap::Large(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries with key `>= from`, in key order.
    #[inline]
    fn range_from(&self, from: Key) -> ClassIter<'_> {
        match self {
            ClassMap::Small(v) => {
                let i = v.partition_point(|(k, _)| *k < from);
                ClassIter::Small(v.range(i..))
            }
            ClassMap::Large(m) => ClassIter::Large(m.range(from..)),
        }
    }

    fn iter(&self) -> ClassIter<'_> {
        self.range_from((0, 0))
    }

    /// Inserts a lock under a key not present yet.
    #[inline]
    fn insert(&mut self, key: Key, held: HeldLock) {
        match self {
            ClassMap::Small(v) => {
                // New sequence numbers are the largest: usually this is the end.
                let i = match v.back() {
                    Some((last, _)) if *last < key => v.len(),
                    _ => v.partition_point(|(k, _)| *k < key),
                };
                v.insert(i, (key, held));
                if v.len() > SMALL_MAX {
                    // Sorted input: the B-tree is built in one pass.
                    *self = ClassMap::Large(v.drain(..).collect());
                }
            }
            ClassMap::Large(m) => {
                m.insert(key, held);
            }
        }
    }

    #[inline]
    fn remove(&mut self, key: Key) -> Option<HeldLock> {
        match self {
            ClassMap::Small(v) => {
                let i = v.binary_search_by(|(k, _)| k.cmp(&key)).ok()?;
                v.remove(i).map(|(_, held)| held)
            }
            ClassMap::Large(m) => {
                let held = m.remove(&key)?;
                if m.len() <= SMALL_AGAIN {
                    *self = ClassMap::Small(std::mem::take(m).into_iter().collect());
                }
                Some(held)
            }
        }
    }

    fn contains_key(&self, key: Key) -> bool {
        match self {
            ClassMap::Small(v) => v.binary_search_by(|(k, _)| k.cmp(&key)).is_ok(),
            ClassMap::Large(m) => m.contains_key(&key),
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&HeldLock) -> bool) {
        match self {
            ClassMap::Small(v) => v.retain(|(_, held)| keep(held)),
            ClassMap::Large(m) => {
                m.retain(|_, held| keep(held));
                if m.len() <= SMALL_AGAIN {
                    *self = ClassMap::Small(std::mem::take(m).into_iter().collect());
                }
            }
        }
    }
}

impl serde::Serialize for ClassMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // What `BTreeMap`'s own implementation does: a map of known length (postcard
        // writes the length first and refuses maps without one), in key order.
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for ClassMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<Key, HeldLock>::deserialize(deserializer)?;
        Ok(if m.len() <= SMALL_MAX {
            ClassMap::Small(m.into_iter().collect())
        } else {
            ClassMap::Large(m)
        })
    }
}

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
            // Open-ended range, stopped by hand past `hi`: one search for the lower end only.
            for (&(offset, _), held) in map.range_from((lo, 0)) {
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
                self.classes.insert(i, (class, ClassMap::new()));
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
        let held = self.classes[idx].1.remove((r.offset, r.seq))?;
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
            .is_ok_and(|i| self.classes[i].1.contains_key((r.offset, r.seq)))
    }

    /// Drops every lock of `open` in one O(n) pass: cheaper than n removals when the open
    /// holds a large share of the table.
    pub fn remove_all_of(&mut self, open: OpenId) {
        for (_, map) in &mut self.classes {
            map.retain(|held| held.open != open);
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
        for (&(off, seq), held) in self.classes[idx].1.range_from((offset, 0)) {
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

    /// The table against a plain list of locks (the MS-FSA 2.1.4.10 definitions applied to
    /// every lock), through enough locks in one class to go from `VecDeque` to `BTreeMap` and
    /// back, with a snapshot round trip (postcard, as replicas use) on the way.
    #[test]
    fn table_matches_a_plain_list_across_representations() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut t = LockTable::default();
        // (offset, length, exclusive, open, handle)
        let mut model: Vec<(u64, u64, bool, OpenId, LockRef)> = Vec::new();
        let mut was_large = false;
        for step in 0..20_000u64 {
            // Grow to ~600 locks, shrink to ~20, grow again: crosses both thresholds.
            let grow = (step / 2_500) % 2 == 0;
            let r = next(100);
            if (grow && r < 65) || (!grow && r < 35) || model.is_empty() {
                // Mostly class 7 (64..127 bytes), sometimes zero-length or long ones.
                let length = match next(20) {
                    0 => 0,
                    1 => 1 << 20,
                    _ => 64 + next(64),
                };
                let offset = next(1 << 16);
                let (exclusive, open) = (next(2) == 0, OpenId(next(4)));
                let h = t.insert(offset, length, exclusive, open);
                model.push((offset, length, exclusive, open, h));
            } else {
                let i = next(model.len() as u64) as usize;
                let (offset, length, _, open, h) = model.swap_remove(i);
                let found = t.find_exact(offset, length, open).expect("lock is held");
                assert!(t.contains(found));
                assert!(t.remove(h).is_some());
                assert!(!t.contains(h));
                assert!(t.remove(h).is_none());
            }
            was_large |= t
                .classes
                .iter()
                .any(|(_, m)| matches!(m, ClassMap::Large(_)));
            assert_eq!(t.len(), model.len());
            for _ in 0..2 {
                let (qo, ql) = (next(1 << 16), next(256));
                let (open, exclusive) = (OpenId(next(4)), next(2) == 0);
                let q = Span::of(qo, ql);
                let expected = q.is_some_and(|q| {
                    model.iter().any(|&(o, l, x, owner, _)| {
                        Span::of(o, l).is_some_and(|s| s.overlaps(q))
                            && blocks(owner, x, open, exclusive, true)
                    })
                });
                assert_eq!(
                    t.conflicts(q, open, exclusive, true),
                    expected,
                    "step {step}"
                );
            }
            if step % 5_000 == 4_999 {
                // The snapshot bytes are those of the B-tree-only table this one replaced.
                let bytes = postcard::to_stdvec(&t).unwrap();
                let old: Vec<(u8, BTreeMap<Key, HeldLock>)> = t
                    .classes
                    .iter()
                    .map(|(c, m)| (*c, m.iter().map(|(k, v)| (*k, *v)).collect()))
                    .collect();
                let old_bytes = postcard::to_stdvec(&(old, t.len, t.next_seq)).unwrap();
                assert_eq!(bytes, old_bytes);
                let back: LockTable = postcard::from_bytes(&bytes).unwrap();
                assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes);
                t = back;
            }
        }
        assert!(
            was_large,
            "the test never reached the B-tree representation"
        );
        let mut listed: Vec<u64> = t.iter().map(|(o, _)| o).collect();
        let mut expected: Vec<u64> = model.iter().map(|m| m.0).collect();
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected);
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
