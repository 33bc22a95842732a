//! A fast hasher for the engine's id-keyed maps.
//!
//! Keys are ids chosen by the daemon or by authenticated smbd nodes (open ids, session ids,
//! request ids, file ids that are already hashes), so SipHash's flooding resistance buys
//! little and costs a good share of the hot path. This is a multiply-rotate hash in the style
//! of FxHash, with a final avalanche so sequential ids spread across buckets.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl IdHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes the top 7 bits as tag and low bits as index: mix both ends.
        let x = self.0;
        x ^ (x >> 29) ^ (x << 17)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub(crate) type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Serde helpers that write an id map or set in key order, so that two engines holding the
/// same state encode to the same bytes whatever order their entries were inserted in (a
/// snapshot is compared byte for byte between replicas, and a hash table's iteration order
/// depends on its insertion history and capacity). Decoding uses the default impls.
pub(crate) mod sorted {
    use super::{IdMap, IdSet};
    use serde::Serializer;

    pub(crate) fn map<K, V, S>(map: &IdMap<K, V>, serializer: S) -> Result<S::Ok, S::Error>
    where
        K: Ord + serde::Serialize,
        V: serde::Serialize,
        S: Serializer,
    {
        let mut entries: Vec<(&K, &V)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        serializer.collect_map(entries)
    }

    pub(crate) fn set<K, S>(set: &IdSet<K>, serializer: S) -> Result<S::Ok, S::Error>
    where
        K: Ord + serde::Serialize,
        S: Serializer,
    {
        let mut keys: Vec<&K> = set.iter().collect();
        keys.sort_unstable();
        serializer.collect_seq(keys)
    }
}
