//! HDR-histogram summaries and their text / JSON rendering.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histogram in nanoseconds: 1 ns .. 100 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants known to be valid for hdrhistogram, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Percentiles of one histogram, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            mean_ns: h.mean(),
        }
    }

    /// One human-readable line, microseconds with 3 decimals.
    pub fn line(&self, label: &str) -> String {
        let us = |ns: u64| ns as f64 / 1000.0;
        format!(
            "{label:<28} n={:<10} p50={:>9.3}us p90={:>9.3}us p99={:>9.3}us p99.9={:>9.3}us max={:>10.3}us",
            self.count,
            us(self.p50_ns),
            us(self.p90_ns),
            us(self.p99_ns),
            us(self.p999_ns),
            us(self.max_ns)
        )
    }
}

/// Records a latency, clamping into the histogram's range instead of failing.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let v = ns.clamp(1, h.high());
    // saturating_record never fails for in-range values.
    h.saturating_record(v);
}

/// Records a latency measured in open-loop mode with coordinated-omission correction: when a
/// response comes back later than the next scheduled send, the requests that would have been sent
/// meanwhile are accounted for as having waited too (HdrHistogram's expected-interval correction).
pub fn record_corrected(h: &mut Histogram<u64>, ns: u64, expected_interval_ns: u64) {
    let v = ns.clamp(1, h.high());
    if expected_interval_ns == 0 || h.record_correct(v, expected_interval_ns).is_err() {
        h.saturating_record(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_distribution() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            record(&mut h, v * 1000);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((499_000..=501_000).contains(&p.p50_ns), "{p:?}");
        assert!((989_000..=991_000).contains(&p.p99_ns), "{p:?}");
        assert!(p.max_ns >= 999_000);
    }

    #[test]
    fn coordinated_omission_correction_adds_missed_samples() {
        let mut h = new_histogram();
        // One response took 10 intervals: 9 more virtual samples are added.
        record_corrected(&mut h, 10_000, 1_000);
        assert_eq!(h.len(), 10);
        let mut plain = new_histogram();
        record_corrected(&mut plain, 10_000, 0);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn empty_histogram_gives_zeroes() {
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }
}
