//! Is the CPU oversubscribed? The gate that stops adaptive spinning when busy-polling would
//! take a CPU that another runnable thread is waiting for.
//!
//! On a host where lockmgrd, the smbd nodes and their clients share a few CPUs (the 2-vCPU
//! test machines; any small VM), a spinning lockmgrd is not free: measured with smbtorture's
//! path-contention-shared on a 2-node cluster, its 50 us spins were half of lockmgrd's CPU
//! time, and the nodes, which needed that CPU, served fewer requests. On a host with CPUs to
//! spare the same spin saves a wake-up per request. So [`SpinMode::Adaptive`] spins only while
//! the kernel reports no CPU contention.
//!
//! The signal is Linux pressure stall information (PSI, `/proc/pressure/cpu`,
//! Documentation/accounting/psi.rst): the `some` line's `total` is the cumulative time, in
//! microseconds, during which at least one runnable task waited for a CPU. Its growth over a
//! short window is the share of wall time in which some thread could not run. The averages the
//! file also prints (avg10 and up) react over seconds; a window of [`WINDOW`] reacts in
//! tenths of a second.
//!
//! The levels come from measurements on 2 vCPUs: with smbtorture path-contention-shared on two
//! nodes the stall share is well above a quarter with lockmgrd spinning, and stopping there gave
//! 19-21% more opens/s and 17-18% less CPU per open (three alternating rounds); a stop level of
//! 10% also fired in replbench, where two busy-polling endpoints and the coordination service
//! share the CPUs and spinning is what keeps the primary's p50 near 1 us (with spinning off it
//! rose to 48-96 us).
//!
//! Hysteresis: spinning stops when the window's stall share exceeds [`STOP_ABOVE`] and
//! resumes only after a window below [`RESUME_BELOW`], and not before [`HOLD_OFF`] has passed
//! since it stopped: lockmgrd's own spinning is one of the things that make others wait, so
//! without a hold-off it would flap every window.
//!
//! Without PSI (a kernel built without it, or booted with `psi=0`) the gate never closes:
//! spinning follows traffic alone, as before. [`SpinMode::Adaptive`]'s `yield_to_cpu_pressure`
//! turns the gate off for a lockmgrd that owns its core (isolcpus, a cpuset), where contention
//! on the other CPUs is none of its business.
//!
//! [`SpinMode::Adaptive`]: crate::SpinMode::Adaptive

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the pressure file is read (at most; only while some thread wants to spin).
pub const WINDOW: Duration = Duration::from_millis(100);
/// Stall share above which spinning stops.
pub const STOP_ABOVE: f64 = 0.25;
/// Stall share below which spinning may resume.
pub const RESUME_BELOW: f64 = 0.10;
/// Least time spinning stays off once stopped.
pub const HOLD_OFF: Duration = Duration::from_secs(1);

const PSI_CPU: &str = "/proc/pressure/cpu";

/// The `total=` of the `some` line of a PSI file, in microseconds.
pub fn parse_some_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("total="))
        .and_then(|t| t.parse().ok())
}

/// The hysteresis over successive samples of the cumulative stall time; no I/O and no clock
/// of its own, so tests drive it with made-up samples.
#[derive(Debug, Default)]
pub struct Gate {
    last: Option<(Instant, u64)>,
    stopped_at: Option<Instant>,
}

impl Gate {
    /// Feeds the sample `total_us` (cumulative stall time) taken at `now`; returns whether
    /// spinning is allowed from now until the next sample.
    pub fn update(&mut self, now: Instant, total_us: u64) -> bool {
        let share = match self.last.replace((now, total_us)) {
            Some((then, before)) => {
                let wall = now.saturating_duration_since(then).as_micros() as f64;
                if wall <= 0.0 {
                    return self.stopped_at.is_none();
                }
                total_us.saturating_sub(before) as f64 / wall
            }
            // The first sample has nothing to compare with: allow, as before the gate.
            None => return self.stopped_at.is_none(),
        };
        match self.stopped_at {
            None if share > STOP_ABOVE => {
                self.stopped_at = Some(now);
                false
            }
            None => true,
            Some(t) if share < RESUME_BELOW && now.saturating_duration_since(t) >= HOLD_OFF => {
                self.stopped_at = None;
                true
            }
            Some(_) => false,
        }
    }
}

/// The process-wide gate: one sampler shared by every spinning endpoint.
struct Sampler {
    file: Option<std::fs::File>,
    gate: Gate,
}

struct Shared {
    /// Spinning allowed, as of the last sample.
    allowed: AtomicBool,
    /// Nanoseconds since `epoch` when the next sample is due.
    next_sample_ns: AtomicU64,
    epoch: Instant,
    sampler: Mutex<Sampler>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let file = std::fs::File::open(PSI_CPU).ok();
        if file.is_none() {
            tracing::info!(
                path = PSI_CPU,
                "no CPU pressure information: adaptive spinning follows traffic only"
            );
        }
        Shared {
            allowed: AtomicBool::new(true),
            next_sample_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            sampler: Mutex::new(Sampler {
                file,
                gate: Gate::default(),
            }),
        }
    })
}

/// Whether a thread that wants to spin at `now` may, given the CPU pressure. Cheap (two
/// atomic loads) except once per [`WINDOW`], when one caller reads the pressure file.
pub fn spinning_allowed(now: Instant) -> bool {
    let s = shared();
    let at = u64::try_from(now.saturating_duration_since(s.epoch).as_nanos()).unwrap_or(u64::MAX);
    if at >= s.next_sample_ns.load(Ordering::Relaxed) {
        // Whoever gets the lock samples; the others go on with the last answer.
        if let Ok(mut sampler) = s.sampler.try_lock() {
            if at >= s.next_sample_ns.load(Ordering::Relaxed) {
                s.next_sample_ns.store(
                    at.saturating_add(WINDOW.as_nanos() as u64),
                    Ordering::Relaxed,
                );
                let total = sampler.file.as_ref().and_then(|f| {
                    let mut buf = [0u8; 256];
                    let n = f.read_at(&mut buf, 0).ok()?;
                    parse_some_total(std::str::from_utf8(&buf[..n]).ok()?)
                });
                if let Some(total) = total {
                    let allowed = sampler.gate.update(now, total);
                    if allowed != s.allowed.swap(allowed, Ordering::Relaxed) {
                        tracing::debug!(allowed, "adaptive spinning after a CPU pressure sample");
                    }
                }
            }
        }
    }
    s.allowed.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "some avg10=16.69 avg60=27.14 avg300=13.04 total=17763399358\n\
                          full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

    #[test]
    fn parses_the_some_total() {
        assert_eq!(parse_some_total(SAMPLE), Some(17_763_399_358));
        assert_eq!(parse_some_total("full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_some_total("some avg10=1.0 total=x\n"), None);
        assert_eq!(parse_some_total(""), None);
    }

    /// Samples `share` of each 100 ms window as stalled, from `t` on.
    fn feed(g: &mut Gate, t: &mut Instant, total: &mut u64, share: f64) -> bool {
        *t += WINDOW;
        *total += (WINDOW.as_micros() as f64 * share) as u64;
        g.update(*t, *total)
    }

    #[test]
    fn stops_under_pressure_and_resumes_after_the_hold_off() {
        let mut g = Gate::default();
        let mut t = Instant::now();
        let mut total = 1_000;
        assert!(g.update(t, total), "the first sample allows");
        assert!(feed(&mut g, &mut t, &mut total, 0.0));
        assert!(
            feed(&mut g, &mut t, &mut total, 0.05),
            "below the stop level"
        );
        assert!(!feed(&mut g, &mut t, &mut total, 0.30), "contended: stop");
        // Quiet at once, but the hold-off keeps spinning off for a second.
        for _ in 0..9 {
            assert!(!feed(&mut g, &mut t, &mut total, 0.0));
        }
        assert!(
            feed(&mut g, &mut t, &mut total, 0.0),
            "hold-off over, quiet"
        );
    }

    #[test]
    fn stays_off_while_pressure_lasts() {
        let mut g = Gate::default();
        let mut t = Instant::now();
        let mut total = 0;
        g.update(t, total);
        assert!(!feed(&mut g, &mut t, &mut total, 0.5));
        for _ in 0..30 {
            // Between the two levels: not quiet enough to resume.
            assert!(!feed(&mut g, &mut t, &mut total, 0.15));
        }
        assert!(feed(&mut g, &mut t, &mut total, 0.01));
    }

    #[test]
    fn a_counter_that_goes_backwards_counts_as_quiet() {
        let mut g = Gate::default();
        let t = Instant::now();
        g.update(t, 5_000_000);
        assert!(g.update(t + WINDOW, 10));
    }
}
