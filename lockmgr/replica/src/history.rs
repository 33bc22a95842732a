//! A history checker for byte-range locks (Jepsen-style, offline).
//!
//! A test records what each client saw, with times from one clock that orders all events of
//! the run: when a lock was granted (taken *after* the grant arrived), when the client decided
//! to release it (taken *before* the unlock is sent), unlocks that failed because the lock was
//! not there, and client deaths. [`check`] then reports every pair of conflicting locks held
//! by different clients at overlapping times, and every acknowledged lock that the lock
//! manager no longer had when its holder released it. With the times taken as above, a correct
//! lock manager can never produce either, whatever the schedule.

use std::collections::BTreeMap;

/// One byte range as a lock request names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub offset: u64,
    pub length: u64,
    pub exclusive: bool,
}

impl Range {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// Two locks conflict when their bytes overlap and one of them is exclusive (MS-FSA
    /// 2.1.4.10). Zero-length ranges overlap nothing.
    pub fn conflicts(&self, other: &Range) -> bool {
        (self.exclusive || other.exclusive)
            && self.length > 0
            && other.length > 0
            && self.offset < other.end()
            && other.offset < self.end()
    }
}

/// What a client saw, at time `at` (any unit; one clock for the whole run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The lock was granted (time taken after the grant arrived).
    Acquired {
        at: u64,
        client: u32,
        file: u128,
        range: Range,
    },
    /// The client is about to send the unlock (time taken before it is sent).
    Releasing {
        at: u64,
        client: u32,
        file: u128,
        range: Range,
    },
    /// The unlock of a lock the client held came back "range not locked": the lock manager
    /// lost it.
    ReleaseFailed {
        at: u64,
        client: u32,
        file: u128,
        range: Range,
    },
    /// The client (or its node) died: it holds nothing from now on.
    Died { at: u64, client: u32 },
}

/// A lock held by one client over a time interval `[from, until)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub client: u32,
    pub range: Range,
    pub from: u64,
    pub until: u64,
}

/// What the checker found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two clients held conflicting locks at the same time.
    DoubleGrant {
        file: u128,
        first: Hold,
        second: Hold,
    },
    /// A client released a lock the history never saw it acquire (a broken recorder, or a
    /// grant the client took without being told).
    UnmatchedRelease {
        file: u128,
        client: u32,
        range: Range,
        at: u64,
    },
    /// A granted lock was gone when its holder released it.
    LostLock {
        file: u128,
        client: u32,
        range: Range,
        at: u64,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::DoubleGrant {
                file,
                first,
                second,
            } => write!(
                f,
                "file {file:#x}: client {} held {:?} during [{}, {}) while client {} held {:?} during [{}, {})",
                first.client,
                first.range,
                first.from,
                first.until,
                second.client,
                second.range,
                second.from,
                second.until
            ),
            Violation::UnmatchedRelease {
                file,
                client,
                range,
                at,
            } => write!(
                f,
                "file {file:#x}: client {client} released {range:?} at {at} without holding it"
            ),
            Violation::LostLock {
                file,
                client,
                range,
                at,
            } => write!(
                f,
                "file {file:#x}: client {client}'s lock {range:?} was gone when released at {at}"
            ),
        }
    }
}

/// Checks a run's events (in any order). Returns every violation found; empty means correct.
pub fn check(events: &[Event]) -> Vec<Violation> {
    let mut events = events.to_vec();
    events.sort_by_key(|e| match e {
        Event::Acquired { at, .. }
        | Event::Releasing { at, .. }
        | Event::ReleaseFailed { at, .. }
        | Event::Died { at, .. } => *at,
    });
    let mut violations = Vec::new();
    // Locks currently held, per (client, file, range): a client may hold the same range more
    // than once (stacked shared locks), so a count of start times.
    let mut open: BTreeMap<(u32, u128, Range), Vec<u64>> = BTreeMap::new();
    let mut holds: BTreeMap<u128, Vec<Hold>> = BTreeMap::new();
    for e in &events {
        match *e {
            Event::Acquired {
                at,
                client,
                file,
                range,
            } => open.entry((client, file, range)).or_default().push(at),
            Event::Releasing {
                at,
                client,
                file,
                range,
            } => match open.get_mut(&(client, file, range)).and_then(Vec::pop) {
                Some(from) => holds.entry(file).or_default().push(Hold {
                    client,
                    range,
                    from,
                    until: at,
                }),
                None => violations.push(Violation::UnmatchedRelease {
                    file,
                    client,
                    range,
                    at,
                }),
            },
            Event::ReleaseFailed {
                at,
                client,
                file,
                range,
            } => violations.push(Violation::LostLock {
                file,
                client,
                range,
                at,
            }),
            Event::Died { at, client } => {
                let keys: Vec<_> = open
                    .range((client, 0, Range::MIN)..)
                    .take_while(|((c, _, _), _)| *c == client)
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    for from in open.remove(&key).unwrap_or_default() {
                        holds.entry(key.1).or_default().push(Hold {
                            client,
                            range: key.2,
                            from,
                            until: at,
                        });
                    }
                }
            }
        }
    }
    // Still held at the end of the run.
    for ((client, file, range), starts) in open {
        for from in starts {
            holds.entry(file).or_default().push(Hold {
                client,
                range,
                from,
                until: u64::MAX,
            });
        }
    }
    for (file, mut list) in holds {
        list.sort_by_key(|h| h.from);
        // Sweep by start time: every hold still running when another starts is compared.
        let mut running: Vec<Hold> = Vec::new();
        for h in list {
            running.retain(|r| r.until > h.from);
            for r in &running {
                if r.client != h.client && r.range.conflicts(&h.range) {
                    violations.push(Violation::DoubleGrant {
                        file,
                        first: *r,
                        second: h,
                    });
                }
            }
            running.push(h);
        }
    }
    violations
}

impl Range {
    const MIN: Range = Range {
        offset: 0,
        length: 0,
        exclusive: false,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: Range = Range {
        offset: 0,
        length: 10,
        exclusive: true,
    };
    const S: Range = Range {
        offset: 5,
        length: 10,
        exclusive: false,
    };

    fn acq(at: u64, client: u32, range: Range) -> Event {
        Event::Acquired {
            at,
            client,
            file: 1,
            range,
        }
    }
    fn rel(at: u64, client: u32, range: Range) -> Event {
        Event::Releasing {
            at,
            client,
            file: 1,
            range,
        }
    }

    #[test]
    fn hand_off_in_order_is_clean() {
        let h = [acq(1, 1, X), rel(2, 1, X), acq(3, 2, X), rel(4, 2, X)];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn overlapping_exclusive_holds_are_a_double_grant() {
        let h = [acq(1, 1, X), acq(2, 2, S), rel(3, 1, X), rel(4, 2, S)];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(matches!(v[0], Violation::DoubleGrant { .. }));
    }

    #[test]
    fn shared_locks_may_overlap() {
        let h = [acq(1, 1, S), acq(2, 2, S), rel(3, 1, S), rel(4, 2, S)];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_hold_never_released_conflicts_with_a_later_grant() {
        let h = [acq(1, 1, X), acq(5, 2, X)];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn a_dead_client_holds_nothing_after_its_death() {
        let h = [acq(1, 1, X), Event::Died { at: 2, client: 1 }, acq(3, 2, X)];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_failed_release_is_a_lost_lock() {
        let h = [
            acq(1, 1, X),
            rel(2, 1, X),
            Event::ReleaseFailed {
                at: 3,
                client: 1,
                file: 1,
                range: X,
            },
        ];
        assert!(matches!(check(&h)[..], [Violation::LostLock { .. }]));
    }

    #[test]
    fn a_release_without_a_grant_is_reported() {
        assert!(matches!(
            check(&[rel(1, 1, X)])[..],
            [Violation::UnmatchedRelease { .. }]
        ));
    }

    #[test]
    fn other_files_do_not_conflict() {
        let h = [
            acq(1, 1, X),
            Event::Acquired {
                at: 2,
                client: 2,
                file: 2,
                range: X,
            },
        ];
        assert!(check(&h).is_empty());
    }
}
