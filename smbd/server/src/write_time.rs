//! When a write moves a file's LastWriteTime, the way Windows does it (smbtorture
//! smb2.timestamps.delayed-*, recorded against Windows 2016; Samba's "delayed write time").
//!
//! A write does not move the time at once. The first write through an open moves it
//! [`DELAYED_UPDATE`] later, or at the first FLUSH, end-of-file or allocation change, or
//! FileBasicInformation set through the open, or at its close, whichever comes first; writes
//! after that move it only at the close (to the close's time). A LastWriteTime set through
//! the open (FileBasicInformation, MS-FSA 2.1.5.14.2: Open.UserSetModificationTime) sticks:
//! writes through that open never move it again; -1 does the same without setting a time,
//! and -2 lets writes move it again. Each open keeps its own state (MS-FSA 2.1.4.17 notes a
//! modification for the open it comes through).
//!
//! The time itself is kept in the file's DOS-attribute xattr in the shared file system
//! (crate::dosattr: Windows' time, the kernel mtime it was recorded with, and a hold), which
//! every query already reads, so every node reports the same one and nothing else has to be
//! told; the kernel mtime moves freely with the writes. Before an open's first write (or
//! size change) the caller takes the file's hold ([`WriteTime::hold`]: the recorded time then
//! stands although the kernel mtime moves), renews it every [`HOLD_RENEW`] while the open
//! lives (the hold is a lease of [`HOLD_LEASE`], so a node that dies holding it stops holding
//! it), and lets it go at the close or a durable handle's disconnect, recording the kernel
//! mtime beside the time then. A write in the steady state costs this struct's checks and
//! nothing else. Only the caller reads clocks: every method takes `now`.

use std::time::{Duration, Instant};

/// How long after an open's first write its LastWriteTime moves (Samba's
/// WRITE_TIME_UPDATE_USEC_DELAY; smbtorture checks it moved 3 s later and not at once).
pub const DELAYED_UPDATE: Duration = Duration::from_secs(2);

/// How long a hold on a file's LastWriteTime lasts unless renewed (crate::dosattr
/// `hold_until`): after a node dies holding it, the kernel mtime (its last write's) becomes
/// the time this long after its last renewal at the latest.
pub const HOLD_LEASE: Duration = Duration::from_secs(60);

/// How often an open renews its hold (well inside [`HOLD_LEASE`], so clock differences of
/// tens of seconds between nodes do not let a live hold lapse).
pub const HOLD_RENEW: Duration = Duration::from_secs(20);

/// An open's part in its file's LastWriteTime.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteTime {
    /// Open.UserSetModificationTime (MS-FSA 2.1.5.14.2): writes through this open leave the
    /// time alone.
    forced: bool,
    /// Something was written through this open (Samba's fsp->modified): FLUSH, SetEOF of
    /// the same size and FileBasicInformation then bring the time up to date.
    modified: bool,
    /// The delayed update was started (or made moot by an update): later writes only
    /// count for the close.
    triggered: bool,
    /// A write has not moved the time yet: the close moves it.
    on_close: bool,
    /// When the delayed update is due, while it is pending.
    due: Option<Instant>,
    /// When the open's hold on the file's time is to be renewed next, while it holds one.
    renew_at: Option<Instant>,
    /// The file the hold is counted under on this node (device, inode), while it holds one.
    hold_key: (u64, u64),
}

impl WriteTime {
    /// A write went through the open at `now`. Returns the deadline of the delayed update
    /// when this write starts one (the caller arms a timer and calls [`WriteTime::timer`]).
    pub fn wrote(&mut self, now: Instant) -> Option<Instant> {
        self.modified = true;
        if self.forced {
            return None;
        }
        self.on_close = true;
        if self.triggered {
            return None;
        }
        self.triggered = true;
        let due = now + DELAYED_UPDATE;
        self.due = Some(due);
        Some(due)
    }

    /// The time is brought up to date now (the caller sets it to the current time when this
    /// returns true): no delayed update is pending any more, and the close has nothing left
    /// to do until the next write.
    fn update_now(&mut self) -> bool {
        if self.forced {
            return false;
        }
        self.due = None;
        self.triggered = true;
        self.on_close = false;
        true
    }

    /// The delayed update's timer fired at `now`: whether to set the time now.
    pub fn timer(&mut self, now: Instant) -> bool {
        match self.due {
            Some(due) if due <= now => self.update_now(),
            _ => false,
        }
    }

    /// FLUSH, or SetEOF that leaves the size, or FileBasicInformation through the open:
    /// whether to set the time now (only after a write through it).
    pub fn flush(&mut self) -> bool {
        self.modified && self.update_now()
    }

    /// SetEOF that changes the size, or an allocation change: like a write that is seen at
    /// once. Whether to set the time now.
    pub fn resized(&mut self) -> bool {
        self.modified = true;
        self.update_now()
    }

    /// FileBasicInformation's LastWriteTime `ft` through this open (MS-FSA 2.1.5.14.2): a
    /// time (not 0) sticks, -1 stops writes through the open from moving it, -2 lets them
    /// again.
    pub fn set_by_client(&mut self, ft: u64) {
        match ft {
            0 => {}
            u64::MAX => self.forced = true,
            x if x == u64::MAX - 1 => self.forced = false,
            _ => self.forced = true,
        }
        if self.forced {
            self.due = None;
            self.on_close = false;
        }
    }

    /// The open closes: whether to set the time to the close's time (a write has not
    /// moved it yet).
    pub fn close(&mut self) -> bool {
        let pending = self.on_close || self.due.is_some();
        pending && self.update_now()
    }

    /// Whether the open holds its file's time: data goes through it without asking anything
    /// (the steady state of a write).
    pub fn holding(&self) -> bool {
        self.renew_at.is_some()
    }

    /// The caller took the hold on the file `key` at `now` (before the open's first write
    /// or size change). Returns when to renew it ([`WriteTime::renew`]).
    pub fn hold(&mut self, now: Instant, key: (u64, u64)) -> Instant {
        let at = now + HOLD_RENEW;
        self.renew_at = Some(at);
        self.hold_key = key;
        at
    }

    /// A timer fired at `now`: when the hold is due for renewal, the next renewal's time (the
    /// caller extends the lease and arms a timer for it).
    pub fn renew(&mut self, now: Instant) -> Option<Instant> {
        match self.renew_at {
            Some(at) if at <= now => {
                let next = now + HOLD_RENEW;
                self.renew_at = Some(next);
                Some(next)
            }
            _ => None,
        }
    }

    /// The open lets its hold go (close, durable disconnect): the file it was counted under,
    /// if it held one.
    pub fn release(&mut self) -> Option<(u64, u64)> {
        self.renew_at.take().map(|_| self.hold_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// smbtorture delayed-2write: the first write moves the time 2 s later, the second only
    /// at the close.
    #[test]
    fn first_write_later_second_at_close() {
        let t0 = Instant::now();
        let mut w = WriteTime::default();
        assert_eq!(w.wrote(t0), Some(t0 + DELAYED_UPDATE));
        assert!(!w.timer(t0 + Duration::from_secs(1)));
        assert!(w.timer(t0 + DELAYED_UPDATE));
        assert!(!w.timer(t0 + Duration::from_secs(5)), "fires once");
        assert_eq!(w.wrote(t0 + Duration::from_secs(6)), None);
        assert!(w.close());
    }

    /// smbtorture delayed-1write: an update that already happened leaves the close nothing.
    #[test]
    fn one_write_updated_leaves_close_alone() {
        let t0 = Instant::now();
        let mut w = WriteTime::default();
        w.wrote(t0);
        assert!(w.timer(t0 + DELAYED_UPDATE));
        assert!(!w.close());
    }

    /// delayed-write-vs-flush / -seteof / -setbasic: the pending update happens at once and
    /// the timer and the close then do nothing.
    #[test]
    fn flush_brings_it_forward() {
        let t0 = Instant::now();
        let mut w = WriteTime::default();
        assert!(!w.flush(), "nothing written yet");
        w.wrote(t0);
        assert!(w.flush());
        assert!(!w.timer(t0 + DELAYED_UPDATE));
        assert!(!w.close());
        // Flushing again after more writes updates again.
        w.wrote(t0 + Duration::from_secs(3));
        assert!(w.flush());
    }

    /// MS-FSA 2.1.5.14.2: a time set through the open sticks; -1 freezes, -2 thaws.
    #[test]
    fn set_time_sticks_for_the_open() {
        let t0 = Instant::now();
        let mut w = WriteTime::default();
        w.wrote(t0);
        w.set_by_client(130_000_000_000_000_000);
        assert!(!w.timer(t0 + DELAYED_UPDATE));
        assert_eq!(w.wrote(t0), None);
        assert!(!w.flush());
        assert!(!w.resized());
        assert!(!w.close());
        // Thawed, writes count again: the delayed update was used up, so the close moves it.
        w.set_by_client(u64::MAX - 1);
        assert_eq!(w.wrote(t0), None);
        let mut thawed = w;
        assert!(thawed.close());
        // Frozen again before the close: the close leaves it.
        w.set_by_client(u64::MAX);
        assert!(!w.close());
        let mut fresh = WriteTime::default();
        fresh.set_by_client(u64::MAX);
        assert_eq!(fresh.wrote(t0), None);
        fresh.set_by_client(u64::MAX - 1);
        assert!(
            fresh.wrote(t0).is_some(),
            "a first write after a thaw starts the delay"
        );
        let mut untouched = WriteTime::default();
        untouched.set_by_client(0);
        assert_eq!(untouched, WriteTime::default());
    }

    /// The hold: taken once, renewed only when due, let go once.
    #[test]
    fn hold_renews_when_due_and_is_released_once() {
        let t0 = Instant::now();
        let mut w = WriteTime::default();
        assert!(!w.holding());
        assert_eq!(w.renew(t0 + HOLD_RENEW), None, "nothing held");
        assert_eq!(w.hold(t0, (1, 2)), t0 + HOLD_RENEW);
        assert!(w.holding());
        assert_eq!(w.renew(t0 + Duration::from_secs(1)), None, "not due yet");
        let t1 = t0 + HOLD_RENEW;
        assert_eq!(w.renew(t1), Some(t1 + HOLD_RENEW));
        assert_eq!(w.release(), Some((1, 2)));
        assert!(!w.holding());
        assert_eq!(w.release(), None);
        assert_eq!(w.renew(t1 + HOLD_RENEW), None);
        const { assert!(HOLD_RENEW.as_secs() * 2 < HOLD_LEASE.as_secs()) };
    }

    #[test]
    fn close_without_writes_changes_nothing() {
        assert!(!WriteTime::default().close());
    }
}
