//! Connection.CommandSequenceWindow (MS-SMB2 3.3.1.1, 3.3.5.2.3): which MessageIds a client
//! may still use on a connection, and the credits granted to it (3.3.1.2).
//!
//! The window starts as { 0 }. Every credit granted appends the next MessageId; a request
//! consumes its MessageId (and, with multi-credit, `CreditCharge` consecutive ones). Ids may
//! arrive out of order; an id below the window, beyond it, or already seen is a protocol
//! violation and the server drops the connection (3.3.5.2.3 <258>: Windows and Samba do).
//!
//! The window spans at most [`SEQ_SPAN`] ids, counting ids a client skipped (a hole at the
//! bottom keeps the ids above it in the window): a client that never uses an id stops getting
//! credits once the span is full instead of growing the bitmap without bound (Samba does the
//! same with its "smb2 max credits" sized bitmap).

use std::sync::{Arc, Mutex, MutexGuard};

/// The credit window a client may hold (Samba's default "smb2 max credits").
pub const MAX_CREDITS: u32 = 8192;

/// A connection's window, shared with the owner of a session bound on it: the owner checks and
/// grants for the requests it answers on the connection's behalf (multichannel).
#[derive(Debug, Clone, Default)]
pub struct SeqHandle(Arc<Mutex<SeqWindow>>);

impl SeqHandle {
    pub fn lock(&self) -> MutexGuard<'_, SeqWindow> {
        // The window stays consistent even if a holder panicked (every update is complete
        // before the next call).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Largest number of ids between the lowest unused MessageId and the highest granted one.
/// Twice the credit limit: smbtorture `credits.skipped_mid` leaves one id unused and then uses
/// 8191 more while holding 8192 credits.
pub const SEQ_SPAN: u64 = 2 * MAX_CREDITS as u64;

/// Why a MessageId was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeqError {
    /// Below the window: already used (a replay).
    Used,
    /// Beyond the ids granted so far (or the 64-bit sequence would wrap).
    Beyond,
    /// Inside the window but already received (a replay of an out-of-order id).
    Duplicate,
}

#[derive(Debug)]
pub struct SeqWindow {
    /// Lowest MessageId not received yet.
    low: u64,
    /// Ids `[low, low + span)` have been granted.
    span: u64,
    /// Ids of the window received out of order (bit `id % SEQ_SPAN`).
    seen: Vec<u64>,
    /// Number of bits set in `seen`.
    seen_count: u64,
}

impl Default for SeqWindow {
    fn default() -> Self {
        SeqWindow::new()
    }
}

impl SeqWindow {
    /// The window of a new connection: { 0 }.
    pub fn new() -> SeqWindow {
        SeqWindow {
            low: 0,
            span: 1,
            seen: vec![0; (SEQ_SPAN as usize).div_ceil(64)],
            seen_count: 0,
        }
    }

    fn bit(&self, id: u64) -> bool {
        let i = (id % SEQ_SPAN) as usize;
        self.seen
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, id: u64, on: bool) {
        let i = (id % SEQ_SPAN) as usize;
        if let Some(w) = self.seen.get_mut(i / 64) {
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    /// Credits the client holds: granted ids not used yet.
    pub fn outstanding(&self) -> u64 {
        self.span - self.seen_count
    }

    /// Lowest MessageId not used yet.
    pub fn low(&self) -> u64 {
        self.low
    }

    /// Consume `charge` (at least 1) consecutive ids from `mid` (MS-SMB2 3.3.5.2.3).
    pub fn consume(&mut self, mid: u64, charge: u16) -> Result<(), SeqError> {
        let charge = u64::from(charge.max(1));
        if mid < self.low {
            return Err(SeqError::Used);
        }
        let end = mid.checked_add(charge).ok_or(SeqError::Beyond)?;
        if end > self.low + self.span {
            return Err(SeqError::Beyond);
        }
        if (mid..end).any(|id| self.bit(id)) {
            return Err(SeqError::Duplicate);
        }
        for id in mid..end {
            self.set(id, true);
        }
        self.seen_count += charge;
        // Slide the window over the ids received at its bottom.
        while self.span > 0 && self.bit(self.low) {
            self.set(self.low, false);
            self.seen_count -= 1;
            self.low += 1;
            self.span -= 1;
        }
        Ok(())
    }

    /// Grant up to `requested` credits (MS-SMB2 3.3.1.2): the client holds at most
    /// [`MAX_CREDITS`], the window spans at most [`SEQ_SPAN`] ids, and a client is never left
    /// without a credit. Returns the number granted; their ids join the window.
    pub fn grant(&mut self, requested: u16) -> u16 {
        let room = (u64::from(MAX_CREDITS).saturating_sub(self.outstanding()))
            .min(SEQ_SPAN.saturating_sub(self.span))
            // 3.3.1.1: the 64-bit sequence must not wrap.
            .min(u64::MAX - (self.low + self.span));
        let mut g = u64::from(requested).min(room);
        if g == 0 && self.outstanding() == 0 && room > 0 {
            g = 1;
        }
        self.span += g;
        g as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_zero_only() {
        let mut w = SeqWindow::new();
        assert_eq!(w.consume(1, 1), Err(SeqError::Beyond));
        assert_eq!(w.consume(0, 1), Ok(()));
        assert_eq!(w.consume(0, 1), Err(SeqError::Used));
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn out_of_order_and_replay() {
        let mut w = SeqWindow::new();
        w.consume(0, 1).unwrap();
        assert_eq!(w.grant(4), 4); // ids 1..=4
        w.consume(3, 1).unwrap();
        assert_eq!(w.consume(3, 1), Err(SeqError::Duplicate));
        w.consume(1, 1).unwrap();
        w.consume(2, 1).unwrap();
        assert_eq!(w.low(), 4);
        assert_eq!(w.consume(2, 1), Err(SeqError::Used));
        assert_eq!(w.consume(5, 1), Err(SeqError::Beyond));
        w.consume(4, 1).unwrap();
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn multi_credit_range() {
        let mut w = SeqWindow::new();
        w.consume(0, 1).unwrap();
        w.grant(8);
        assert_eq!(w.consume(6, 4), Err(SeqError::Beyond)); // 6..=9 but only 1..=8 granted
        w.consume(1, 4).unwrap();
        assert_eq!(w.consume(4, 2), Err(SeqError::Used));
        w.consume(5, 4).unwrap();
        assert_eq!(w.low(), 9);
    }

    #[test]
    fn credit_limits_and_never_zero() {
        let mut w = SeqWindow::new();
        assert_eq!(w.grant(60000), (MAX_CREDITS - 1) as u16);
        assert_eq!(w.grant(1), 0);
        let mut w = SeqWindow::new();
        w.consume(0, 1).unwrap();
        assert_eq!(w.grant(0), 1);
    }

    #[test]
    fn skipped_mid_like_smbtorture() {
        // 8192 credits, id `m` skipped, 8191 requests above it each granting one back.
        let mut w = SeqWindow::new();
        w.consume(0, 1).unwrap();
        w.grant(8192);
        let m = 1;
        for id in m + 1..m + 8192 {
            w.consume(id, 1).unwrap();
            w.grant(1);
        }
        w.consume(m, 1).unwrap();
        assert_eq!(w.outstanding() + u64::from(w.grant(8192)), 8192);
        // A hole kept forever stops the grants at the span instead of growing the bitmap.
        let mut w = SeqWindow::new();
        w.consume(0, 1).unwrap();
        w.grant(100);
        let mut id = 2;
        while w.outstanding() > 1 {
            w.consume(id, 1).unwrap();
            id += 1;
            w.grant(1);
        }
        assert!(id <= 1 + SEQ_SPAN);
        assert_eq!(w.grant(10), 0);
    }
}
