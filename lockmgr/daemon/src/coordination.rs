//! The coordination service (etcd) seen from lockmgrd's single-threaded loop.
//!
//! etcd calls block for milliseconds and may time out; the lock path must never wait for them.
//! A [`CoordThread`] owns the [`Coordinator`], watches the configuration and runs the
//! compare-and-swaps the loop asks for; the loop picks up the answers between poll rounds
//! (the thread wakes it through the transport's waker).

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use lockmgr_coord::{Configuration, Coordinator, Stored, Swap};
use lockmgr_transport::Waker;

/// What the loop asks for.
pub(crate) enum CoordCommand {
    /// Move the cluster from `my_epoch` to `next` (compare-and-swap).
    Advance { my_epoch: u64, next: Configuration },
}

/// What the thread reports.
#[derive(Debug)]
pub(crate) enum CoordEvent {
    /// The stored configuration changed (or was first read).
    Changed(Stored),
    /// The answer to an `Advance`.
    Advanced(Result<Swap, String>),
}

/// How long one watch waits before the thread checks for commands again.
const WATCH_SLICE: Duration = Duration::from_millis(20);

pub(crate) struct CoordThread {
    commands: Sender<CoordCommand>,
    events: Receiver<CoordEvent>,
    _thread: JoinHandle<()>,
}

impl CoordThread {
    /// Starts the thread; `seen` is the revision of the configuration the loop starts from.
    pub(crate) fn spawn(
        mut coord: Coordinator,
        mut seen: i64,
        waker: Option<Waker>,
    ) -> std::io::Result<CoordThread> {
        let (commands, command_rx) = mpsc::channel::<CoordCommand>();
        let (event_tx, events) = mpsc::channel::<CoordEvent>();
        let thread = std::thread::Builder::new()
            .name("lockmgrd-coord".into())
            .spawn(move || loop {
                let report = |ev: CoordEvent| {
                    let sent = event_tx.send(ev).is_ok();
                    if let Some(w) = &waker {
                        w.wake();
                    }
                    sent
                };
                match command_rx.try_recv() {
                    Ok(CoordCommand::Advance { my_epoch, next }) => {
                        let result = coord.advance(my_epoch, &next);
                        if let Ok(Swap::Installed(s)) = &result {
                            seen = seen.max(s.mod_revision);
                        }
                        if !report(CoordEvent::Advanced(result.map_err(|e| e.to_string()))) {
                            return;
                        }
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => {}
                }
                match coord.wait_change(seen, WATCH_SLICE) {
                    Ok(Some(stored)) => {
                        seen = stored.mod_revision;
                        if !report(CoordEvent::Changed(stored)) {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(%e, "coordination service unreachable; retrying");
                        std::thread::sleep(WATCH_SLICE);
                    }
                }
            })?;
        Ok(CoordThread {
            commands,
            events,
            _thread: thread,
        })
    }

    pub(crate) fn advance(&self, my_epoch: u64, next: Configuration) {
        if self
            .commands
            .send(CoordCommand::Advance { my_epoch, next })
            .is_err()
        {
            tracing::error!("coordination thread is gone");
        }
    }

    pub(crate) fn try_event(&self) -> Option<CoordEvent> {
        self.events.try_recv().ok()
    }
}
