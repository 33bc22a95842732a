//! The loop's own stalls: time during which lockmgrd meant to run and did not (descheduled
//! on an oversubscribed machine, a paused VM, SIGSTOP). A replica judges its partner dead
//! after `failover` of silence; silence it could not have observed because it was not
//! running itself is no evidence against the partner. When both replicas of a pair stall
//! together (the usual case on a loaded 2-vCPU machine, where they compete for the same
//! CPUs) each would otherwise wake, find the other silent for the whole stall and fail over
//! for nothing.
//!
//! What counts as unobserved: frames a live partner sent during our stall are still queued
//! when we run again and are read before the partner is judged, so only a partner that was
//! silent *and* overlapped our stall is forgiven, by the overlap. A dead partner is found
//! at most one stall later. Node leases are not judged with this (see
//! `Core::may_renew_node_leases`): a lease is about real time, and our stall is no reason to
//! believe the standby is still there.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clustersmb_metrics::{Histogram, HistogramSnapshot, LATENCY_BUCKETS};

/// How long one round may take on its own (decoding, the engine, sending) before time past
/// it counts as a stall: rounds take microseconds, a scheduler tick is 4 ms.
const ROUND_ALLOWANCE: Duration = Duration::from_millis(5);

/// Stalls remembered for [`StallClock::unobserved`]; older ones are dropped first, which
/// only forgives less.
const REMEMBERED: usize = 64;

/// Stalls older than this are forgotten (longer than any silence a replica judges).
const HORIZON: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct StallClock {
    /// Start of the previous round and how long it then meant to wait.
    last_round: Option<(Instant, Duration)>,
    /// Recent stalls as (start, end), oldest first, not overlapping.
    recent: VecDeque<(Instant, Instant)>,
    /// Every stall's length, for the metrics endpoint.
    lengths: Histogram,
}

impl Default for StallClock {
    fn default() -> Self {
        StallClock {
            last_round: None,
            recent: VecDeque::new(),
            lengths: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl StallClock {
    /// A round starts at `now`; the previous one meant to be followed by a wait of at most
    /// `planned_wait` (zero when it went straight on). Returns the stall just ended, if any.
    pub(crate) fn round_starts(
        &mut self,
        now: Instant,
        planned_wait: Duration,
    ) -> Option<Duration> {
        let previous = self.last_round.replace((now, planned_wait));
        let (started, wait) = previous?;
        let due = started + wait + ROUND_ALLOWANCE;
        let stall = now.checked_duration_since(due).filter(|d| !d.is_zero())?;
        self.lengths.observe(stall);
        while self
            .recent
            .front()
            .is_some_and(|&(_, end)| now.duration_since(end) > HORIZON)
            || self.recent.len() >= REMEMBERED
        {
            self.recent.pop_front();
        }
        self.recent.push_back((due, now));
        Some(stall)
    }

    /// How much of `[since, now]` this loop spent stalled.
    pub(crate) fn unobserved(&self, since: Instant, now: Instant) -> Duration {
        self.recent
            .iter()
            .rev()
            .take_while(|&&(_, end)| end > since)
            .map(|&(start, end)| end.min(now).saturating_duration_since(start.max(since)))
            .sum()
    }

    /// Silence of a partner last heard at `last_heard`, not counting our own stalls.
    pub(crate) fn observed_silence(&self, last_heard: Instant, now: Instant) -> Duration {
        now.saturating_duration_since(last_heard)
            .saturating_sub(self.unobserved(last_heard, now))
    }

    pub(crate) fn lengths(&self) -> HistogramSnapshot {
        self.lengths.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_round_within_its_wait_is_no_stall() {
        let mut c = StallClock::default();
        let t = Instant::now();
        assert_eq!(c.round_starts(t, 25 * MS), None);
        assert_eq!(c.round_starts(t + 25 * MS, Duration::ZERO), None);
        assert_eq!(c.round_starts(t + 29 * MS, Duration::ZERO), None);
        assert_eq!(c.observed_silence(t, t + 29 * MS), 29 * MS);
        assert_eq!(c.lengths().count(), 0);
    }

    #[test]
    fn silence_during_our_own_stall_is_not_counted() {
        let mut c = StallClock::default();
        let t = Instant::now();
        c.round_starts(t, 20 * MS);
        // Due at t+25 ms (wait plus allowance); ran at t+400 ms.
        assert_eq!(c.round_starts(t + 400 * MS, Duration::ZERO), Some(375 * MS));
        // A partner last heard at t: 400 ms ago, of which we observed 25.
        assert_eq!(c.observed_silence(t, t + 400 * MS), 25 * MS);
        // Heard in the middle of the stall (its frame was read then): only the part after.
        assert_eq!(c.observed_silence(t + 300 * MS, t + 410 * MS), 10 * MS);
        // Heard after the stall: nothing to forgive.
        assert_eq!(c.observed_silence(t + 400 * MS, t + 450 * MS), 50 * MS);
        assert_eq!(c.lengths().count(), 1);
    }

    #[test]
    fn several_stalls_add_up_and_old_ones_are_forgotten() {
        let mut c = StallClock::default();
        let t = Instant::now();
        c.round_starts(t, Duration::ZERO);
        c.round_starts(t + 55 * MS, Duration::ZERO); // stall t+5..t+55
        c.round_starts(t + 60 * MS, Duration::ZERO);
        c.round_starts(t + 100 * MS, Duration::ZERO); // stall t+65..t+100
        assert_eq!(c.unobserved(t, t + 100 * MS), 85 * MS);
        assert_eq!(c.observed_silence(t, t + 100 * MS), 15 * MS);
        for i in 0..(REMEMBERED as u32 * 2) {
            c.round_starts(t + 200 * MS + i * 20 * MS, Duration::ZERO);
        }
        assert!(c.recent.len() <= REMEMBERED);
        // The first stalls were dropped: forgiving less is the safe direction.
        assert!(c.unobserved(t, t + 100 * MS) < 85 * MS);
    }
}
