//! The coordination service (etcd) seen from lockmgrd's single-threaded loop.
//!
//! etcd calls block for milliseconds and may time out; the lock path must never wait for them.
//! A [`CoordThread`] runs two threads, each with its own [`Coordinator`]: one watches the
//! configuration, the other runs the compare-and-swaps the loop asks for. A swap is on the
//! critical path of a failover, so it must not queue behind a watch that is waiting for a
//! change (it used to, for up to a watch slice); separate threads (and connections) keep it
//! one etcd round trip from the request. The loop picks up the answers between poll rounds
//! (the threads wake it through the transport's waker).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lockmgr_coord::{Configuration, Coordinator, Stored, Swap};
use lockmgr_transport::Waker;

/// What the loop asks for.
pub(crate) enum CoordCommand {
    /// Move the cluster from `my_epoch` (whose configuration the loop believes is `current`)
    /// to `next` (compare-and-swap).
    Advance {
        my_epoch: u64,
        current: Configuration,
        next: Configuration,
    },
}

/// The environment variable that makes the watch of a lockmgrd built with the `test-faults`
/// feature deaf.
#[cfg(feature = "test-faults")]
const DEAF_WATCH_ENV: &str = "LOCKMGRD_TEST_DEAF_WATCH";

/// Test-only fault, compiled in only with the `test-faults` cargo feature (lockmgrd's own
/// tests, never a production build): with `LOCKMGRD_TEST_DEAF_WATCH` set, the watch reports
/// no configuration change, as when etcd stops between a change and the watch delivering it
/// (or a watch lags for long). A replica must then learn what concerns it another way.
fn deaf_watch() -> bool {
    #[cfg(feature = "test-faults")]
    {
        std::env::var_os(DEAF_WATCH_ENV).is_some()
    }
    #[cfg(not(feature = "test-faults"))]
    {
        false
    }
}

/// What the threads report.
#[derive(Debug)]
pub(crate) enum CoordEvent {
    /// The stored configuration changed (or was first read).
    Changed(Stored),
    /// The answer to an `Advance`.
    Advanced(Result<Swap, String>),
}

/// How long one watch waits before the watcher checks whether it should stop. A change ends
/// the wait at once, so this only bounds how long the thread outlives its owner.
const WATCH_SLICE: Duration = Duration::from_millis(100);

/// Back-off of the watcher while etcd is unreachable.
const RETRY_AFTER: Duration = Duration::from_millis(20);

pub(crate) struct CoordThread {
    commands: Sender<CoordCommand>,
    events: Receiver<CoordEvent>,
    /// Ends the watcher (the changer ends when `commands` is dropped).
    stop: Arc<AtomicBool>,
    _watcher: JoinHandle<()>,
    _changer: JoinHandle<()>,
}

/// Sends events to the loop and wakes it.
#[derive(Clone)]
struct Reporter {
    events: Sender<CoordEvent>,
    waker: Option<Waker>,
}

impl Reporter {
    /// False once the loop is gone.
    fn report(&self, ev: CoordEvent) -> bool {
        let sent = self.events.send(ev).is_ok();
        if let Some(w) = &self.waker {
            w.wake();
        }
        sent
    }
}

impl CoordThread {
    /// Starts the threads: `watch` and `change` are two connections to the coordination
    /// service; `seen` is the revision of the configuration the loop starts from.
    pub(crate) fn spawn(
        mut watch: Coordinator,
        mut change: Coordinator,
        seen: i64,
        waker: Option<Waker>,
    ) -> std::io::Result<CoordThread> {
        let (commands, command_rx) = mpsc::channel::<CoordCommand>();
        let (event_tx, events) = mpsc::channel::<CoordEvent>();
        let reporter = Reporter {
            events: event_tx,
            waker,
        };
        // The newest revision the loop knows of: its own swaps are not reported again as
        // changes (the loop learns them from the swap's answer).
        let seen = Arc::new(AtomicI64::new(seen));
        let changer = {
            let reporter = reporter.clone();
            let seen = Arc::clone(&seen);
            std::thread::Builder::new()
                .name("lockmgrd-coord-cas".into())
                .spawn(move || {
                    // Ends when the loop drops its sender.
                    for command in command_rx {
                        let CoordCommand::Advance {
                            my_epoch,
                            current,
                            next,
                        } = command;
                        let result = if current.epoch == my_epoch {
                            change.advance_from(&current, &next)
                        } else {
                            change.advance(my_epoch, &next)
                        };
                        if let Ok(Swap::Installed(s)) = &result {
                            seen.fetch_max(s.mod_revision, Ordering::AcqRel);
                        }
                        if !reporter.report(CoordEvent::Advanced(result.map_err(|e| e.to_string())))
                        {
                            return;
                        }
                    }
                })?
        };
        let stop = Arc::new(AtomicBool::new(false));
        let watcher_stop = Arc::clone(&stop);
        let watcher = std::thread::Builder::new()
            .name("lockmgrd-coord-watch".into())
            .spawn(move || loop {
                if watcher_stop.load(Ordering::Acquire) {
                    return;
                }
                let from = seen.load(Ordering::Acquire);
                match watch.wait_change(from, WATCH_SLICE) {
                    Ok(Some(stored)) => {
                        let newest = seen.fetch_max(stored.mod_revision, Ordering::AcqRel);
                        // Our own swap, installed meanwhile: already answered.
                        if stored.mod_revision <= newest {
                            continue;
                        }
                        if deaf_watch() {
                            tracing::warn!(
                                epoch = stored.config.epoch,
                                "test fault: configuration change not reported"
                            );
                            continue;
                        }
                        if !reporter.report(CoordEvent::Changed(stored)) {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(%e, "coordination service unreachable; retrying");
                        std::thread::sleep(RETRY_AFTER);
                    }
                }
            })?;
        Ok(CoordThread {
            commands,
            events,
            stop,
            _watcher: watcher,
            _changer: changer,
        })
    }

    pub(crate) fn advance(&self, my_epoch: u64, current: &Configuration, next: Configuration) {
        if self
            .commands
            .send(CoordCommand::Advance {
                my_epoch,
                current: current.clone(),
                next,
            })
            .is_err()
        {
            tracing::error!("coordination thread is gone");
        }
    }

    pub(crate) fn try_event(&self) -> Option<CoordEvent> {
        self.events.try_recv().ok()
    }
}

impl Drop for CoordThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
