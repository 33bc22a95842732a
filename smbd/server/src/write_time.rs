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
//! The time itself is the file's mtime in the shared file system, so every node reports
//! the same one and nothing else has to be told. Linux moves the mtime on every write, so the
//! caller puts it back after each write ([`crate::sys::keep_mtime`]) and sets it when this
//! state machine says so. Only the caller reads clocks: every method takes `now`.

use std::time::{Duration, Instant};

/// How long after an open's first write its LastWriteTime moves (Samba's
/// WRITE_TIME_UPDATE_USEC_DELAY; smbtorture checks it moved 3 s later and not at once).
pub const DELAYED_UPDATE: Duration = Duration::from_secs(2);

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

    #[test]
    fn close_without_writes_changes_nothing() {
        assert!(!WriteTime::default().close());
    }
}
