//! The wall clock the SMB core takes its FILETIMEs from (NEGOTIATE's SystemTime and
//! ServerStartTime, the creation time recorded for a new file). It is chosen at the edge, when
//! [`crate::shared::Shared`] is built: the daemon reads the system clock, the simulated-time
//! tests and the fuzz target step their own, so no protocol logic reads the time of day itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fs::filetime_from_unix;

/// Where the time of day comes from.
#[derive(Clone, Debug)]
pub enum WallClock {
    /// The system's real-time clock.
    System,
    /// `start` (a FILETIME) plus the nanoseconds in `elapsed`, which the owner steps (the
    /// same counter can drive the in-process lock engine's clock, see
    /// `EngineLocks::with_manual_clock`).
    Stepped { start: u64, elapsed: Arc<AtomicU64> },
}

impl WallClock {
    /// The current time as a FILETIME.
    pub fn filetime(&self) -> u64 {
        match self {
            WallClock::System => {
                let d = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                filetime_from_unix(d.as_secs() as i64, d.subsec_nanos() as i64)
            }
            WallClock::Stepped { start, elapsed } => {
                start.saturating_add(elapsed.load(Ordering::SeqCst) / 100)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::unix_from_filetime;

    #[test]
    fn a_stepped_clock_moves_only_when_stepped() {
        let elapsed = Arc::new(AtomicU64::new(0));
        let clock = WallClock::Stepped {
            start: filetime_from_unix(1_700_000_000, 0),
            elapsed: elapsed.clone(),
        };
        let t0 = clock.filetime();
        assert_eq!(clock.filetime(), t0);
        elapsed.fetch_add(2_500_000_000, Ordering::SeqCst);
        assert_eq!(clock.filetime(), t0 + 25_000_000);
        assert_eq!(
            unix_from_filetime(clock.filetime()),
            (1_700_000_002, 500_000_000)
        );
    }
}
