//! The metric kinds. Every update is one relaxed atomic operation: no lock, no allocation.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (nanoseconds) of the latency buckets: 10 µs to 10 s, roughly 1-2.5-5 per
/// decade. Requests of a few microseconds (lockmgr round trips over shm, cached READs) and
/// break waits of seconds both land in a bucket that says something.
pub const LATENCY_BUCKETS: &[u64] = &[
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// A histogram over fixed buckets (upper bounds in nanoseconds, ascending; the `+Inf`
/// bucket is implicit). Each observation adds to one bucket and to the sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Non-cumulative counts, one per bound plus the overflow (`+Inf`) bucket.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A histogram read out: cumulative bucket counts (Prometheus `le` semantics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub bounds_ns: &'static [u64],
    /// `cumulative[i]` = observations <= `bounds_ns[i]`; the last entry is `+Inf` (= count).
    pub cumulative: Vec<u64>,
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// The number of observations (the `+Inf` bucket).
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Adds another snapshot over the same bounds (per-shard histograms summed for output).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.cumulative.iter_mut().zip(&other.cumulative) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }
}

impl Histogram {
    /// `bounds` must be strictly ascending (checked in debug builds).
    pub fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation of `ns` nanoseconds.
    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        // A linear scan: 18 bounds, most observations stop in the first few.
        let i = self
            .bounds
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Reads the buckets. The count is the sum of the buckets as read, so `_count` always
    /// equals the `+Inf` bucket even while other threads observe.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0u64;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            bounds_ns: self.bounds,
            cumulative,
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_is_inf() {
        let h = Histogram::new(LATENCY_BUCKETS);
        h.observe_ns(5_000); // <= 10 µs
        h.observe_ns(10_000); // <= 10 µs (le is inclusive)
        h.observe_ns(30_000); // <= 50 µs
        h.observe_ns(20_000_000_000); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[2], 3);
        assert_eq!(s.cumulative[LATENCY_BUCKETS.len() - 1], 3);
        assert_eq!(s.count(), 4);
        assert_eq!(s.sum_ns, 5_000 + 10_000 + 30_000 + 20_000_000_000);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
    }
}
