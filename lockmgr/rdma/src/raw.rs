//! Protocol-free RDMA baseline for the benchmark harness: an RC SEND/RECV ping-pong between
//! two queue pairs of one device (the HCA loops the traffic back, as it does for a lockmgrd and
//! an smbd on the same host).
//!
//! Compared with [`crate::RdmaServer`]/[`crate::RdmaClient`] it leaves out everything but the
//! verbs data path: no TCP side channel, no epoll or completion channel (both sides busy-poll
//! their CQ), no lockmgr framing and no transport trait. What remains is one SEND into a
//! pre-posted receive each way, plus the 8-byte [`crate::wire::Header`] that carries the
//! credit return (so the receive ring never runs dry). `lockbench --transport rdma` prints it
//! as the raw baseline next to the transport echo and lockmgrd measured in the same run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockmgr_transport::{TransportError, MAX_FRAME};

use crate::conn::Conn;
use crate::{verbs, RdmaConfig, RdmaError};

/// Longest a single round trip may take before the run is abandoned (a lost peer, not a slow
/// one: emulated soft-RoCE round trips take milliseconds at worst).
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(10);
/// Completions processed per poll.
const BUDGET: usize = 64;
/// Nap after the spin budget ran out without progress.
const NAP: Duration = Duration::from_micros(20);

/// Busy-polls for the configured spin budget, then naps between polls. With a hardware HCA a
/// reply lands well within any sensible budget, so the measured path stays pure busy-polling;
/// with soft-RoCE the kernel's rxe work runs on the same CPUs, and two endless spinners on a
/// two-CPU machine would starve it (round trips of milliseconds instead of microseconds).
struct Backoff {
    spin: Duration,
    idle_since: Instant,
}

impl Backoff {
    fn new(spin: Duration) -> Backoff {
        Backoff {
            spin,
            idle_since: Instant::now(),
        }
    }

    fn progress(&mut self) {
        self.idle_since = Instant::now();
    }

    fn idle(&self) {
        if self.idle_since.elapsed() >= self.spin {
            std::thread::sleep(NAP);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Stops the echo thread however the measuring side leaves.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Sends `frame`, polling for send completions and credit returns while the queue is full.
fn send_blocking(conn: &mut Conn, frame: &[u8], deadline: Instant) -> Result<(), RdmaError> {
    loop {
        match conn.send_data(frame) {
            Ok(()) => return Ok(()),
            Err(TransportError::Full) => {
                if Instant::now() > deadline {
                    return Err(TransportError::Timeout.into());
                }
                conn.poll_cq();
                // Frames cannot arrive here in a strict ping-pong; completions only free room.
                conn.process(BUDGET, &mut |_| {});
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `warmup` unmeasured then `rounds` measured RC SEND/RECV round trips of `msg_len` bytes
/// between two QPs on `cfg.device`, both sides busy-polling (for `cfg.spin` without progress,
/// then napping between polls). Returns nanoseconds per round trip.
///
/// Fails with [`RdmaError::NoDevice`] when the machine has no RDMA.
pub fn verbs_pingpong(
    cfg: &RdmaConfig,
    rounds: usize,
    warmup: usize,
    msg_len: usize,
) -> Result<Vec<u64>, RdmaError> {
    cfg.validate()?;
    if msg_len > MAX_FRAME {
        return Err(TransportError::FrameTooLarge {
            len: msg_len,
            max: MAX_FRAME,
        }
        .into());
    }
    let dev = verbs::open(&cfg.device)?;
    let mut ping = Conn::new(&dev, None, cfg.slots, cfg.max_inline)?;
    let mut pong = Conn::new(&dev, None, cfg.slots, cfg.max_inline)?;
    // Both QPs get each other's coordinates directly: same process, no side channel needed.
    let ping_hello = ping.local_hello();
    ping.connect(&pong.local_hello())?;
    pong.connect(&ping_hello)?;

    let stop = Arc::new(AtomicBool::new(false));
    let spin = cfg.spin.spin;
    lockmgr_transport::raw::pin_client_side();
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<u64, RdmaError> {
            lockmgr_transport::raw::pin_server_side();
            let mut echoed = 0u64;
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let mut backoff = Backoff::new(spin);
            while !stop.load(Ordering::Acquire) {
                pong.poll_cq();
                pong.process(BUDGET, &mut |f| frames.push(f.to_vec()));
                if frames.is_empty() {
                    backoff.idle();
                } else {
                    backoff.progress();
                }
                for f in frames.drain(..) {
                    send_blocking(&mut pong, &f, Instant::now() + ROUND_TRIP_LIMIT)?;
                    echoed += 1;
                }
                if pong.is_broken() {
                    return Err(TransportError::Disconnected.into());
                }
            }
            Ok(echoed)
        })
    };
    let _stop = StopOnDrop(stop.clone());

    let msg: Vec<u8> = (0..msg_len).map(|i| i as u8).collect();
    let mut samples = Vec::with_capacity(rounds);
    let mut measure = || -> Result<(), RdmaError> {
        for i in 0..warmup + rounds {
            let t0 = Instant::now();
            let deadline = t0 + ROUND_TRIP_LIMIT;
            send_blocking(&mut ping, &msg, deadline)?;
            let mut got = None;
            let backoff = Backoff::new(spin);
            while got.is_none() {
                ping.poll_cq();
                ping.process(BUDGET, &mut |f| got = Some(f.len()));
                if ping.is_broken() {
                    return Err(TransportError::Disconnected.into());
                }
                if got.is_none() {
                    if Instant::now() > deadline {
                        return Err(TransportError::Timeout.into());
                    }
                    backoff.idle();
                }
            }
            let elapsed = t0.elapsed().as_nanos() as u64;
            if got != Some(msg_len) {
                return Err(TransportError::Protocol("echo returned a different length").into());
            }
            if i >= warmup {
                samples.push(elapsed);
            }
        }
        Ok(())
    };
    let measured = measure();
    stop.store(true, Ordering::Release);
    let echoed = echo
        .join()
        .map_err(|_| RdmaError::Transport(TransportError::Protocol("echo thread panicked")))?;
    measured?;
    let echoed = echoed?;
    tracing::debug!(echoed, rounds, "RDMA raw ping-pong done");
    Ok(samples)
}
