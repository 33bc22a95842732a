//! Resource limits (`[limits]`, documented in [`crate::config`]): what one client may make the
//! server hold, checked where sessions, trees, opens and async requests are created, and the
//! process-wide open-file budget.
//!
//! Status codes for a refused request:
//! * a new session while `sessions_in_setup_per_conn` are in setup, or `sessions_per_conn`
//!   exist: STATUS_REQUEST_NOT_ACCEPTED
//!   (MS-ERREF: "No more connections can be made to this remote computer at this time", what
//!   Windows answers when it has no room for another session);
//! * opens, trees, async requests, change notifications and compound response bytes over
//!   their limits: STATUS_INSUFFICIENT_RESOURCES (Samba's smbXsrv_*_local_allocate_id when its
//!   open/tcon/session table is full; also Samba's answer to a 33rd channel);
//! * one client over all its connections (`ClientUsage`): a SESSION_SETUP on a connection
//!   beyond `connections_per_client` (same source address) or `connections_per_user` gets
//!   STATUS_REQUEST_NOT_ACCEPTED like a session beyond the per-connection limits; an open
//!   beyond `opens_per_client` or `opens_per_user` gets STATUS_INSUFFICIENT_RESOURCES like one
//!   beyond `opens_per_conn`;
//! * an open beyond the process-wide budget: STATUS_TOO_MANY_OPENED_FILES (Samba's
//!   map_nt_error_from_unix(EMFILE)), refused before open(2) would fail, so that accept,
//!   lockmgr and io_uring still get descriptors.
//!
//! The per-connection checks (`conn::limits`) run before each request is dispatched; the
//! compound length limit and the output backpressure live in [`crate::conn`] (chain split)
//! and [`crate::worker`] (RECV paused while output is queued).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::config::LimitsConfig;

/// The most descriptors one open holds ([`crate::open::Open::descriptors`]).
const MAX_DESCRIPTORS_PER_OPEN: usize = 2;

/// The process-wide open-file budget: descriptors held by connections (socket + opens) and
/// by file I/O in flight, against RLIMIT_NOFILE minus headroom.
pub struct FdBudget {
    in_use: AtomicUsize,
    limit: usize,
}

impl FdBudget {
    /// Raise RLIMIT_NOFILE's soft limit to the hard one (as Samba does) and derive the
    /// budget: `open_files` if configured (capped by the limit), else the limit minus an
    /// eighth (at least 64) of headroom.
    pub fn new(cfg: &LimitsConfig) -> FdBudget {
        let nofile = raise_nofile();
        let headroom = (nofile / 8).max(64);
        let auto = nofile.saturating_sub(headroom).max(1);
        let limit = match cfg.open_files {
            0 => auto,
            n => n.min(auto),
        };
        tracing::info!(
            nofile,
            limit,
            "open-file budget (RLIMIT_NOFILE minus headroom)"
        );
        FdBudget {
            in_use: AtomicUsize::new(0),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    pub fn add(&self, n: usize) {
        self.in_use.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(&self, n: usize) {
        // Saturating: accounting must never wrap and refuse every open.
        let _ = self
            .in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Whether one more open fits beside the descriptors `parked_fds` of durable handles
    /// parked after a disconnect (they keep theirs too). Room is kept for the largest open:
    /// a named stream's holds two descriptors (its data and its base file).
    pub fn has_room(&self, parked_fds: usize) -> bool {
        self.in_use() + parked_fds + MAX_DESCRIPTORS_PER_OPEN <= self.limit
    }
}

/// Set the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit.
fn raise_nofile() -> usize {
    let Ok((mut soft, hard)) = crate::sys::nofile_limit() else {
        return 1024;
    };
    if soft < hard && crate::sys::set_nofile_limit(hard, hard).is_ok() {
        soft = hard;
    }
    usize::try_from(soft).unwrap_or(usize::MAX)
}

/// Connections and opens one client holds over all its connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub conns: usize,
    pub opens: usize,
}

/// [`Usage`] by key; an entry goes when it drops to zero, so the table holds only the
/// clients that are connected.
struct UsageTable<K>(Mutex<HashMap<K, Usage>>);

impl<K: Hash + Eq + Clone> Default for UsageTable<K> {
    fn default() -> Self {
        UsageTable(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq + Clone> UsageTable<K> {
    fn get(&self, k: &K) -> Usage {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.get(k).copied().unwrap_or_default()
    }

    /// Move `k`'s counts from `was` (this connection's earlier report) to `now`.
    fn report(&self, k: &K, was: Usage, now: Usage) {
        if was == now {
            return;
        }
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let u = t.entry(k.clone()).or_default();
        // Saturating: accounting must never wrap and refuse everything.
        u.conns = (u.conns + now.conns).saturating_sub(was.conns);
        u.opens = (u.opens + now.opens).saturating_sub(was.opens);
        if *u == Usage::default() {
            t.remove(k);
        }
    }
}

/// What each client holds over all its connections, by source address and by authenticated
/// user: every connection reports its own share ([`ClientShare`]) and the per-client caps
/// (`connections_per_client`, `opens_per_client`, `connections_per_user`, `opens_per_user`)
/// are checked against the sums, so that one client cannot multiply the per-connection
/// limits by opening more connections.
#[derive(Default)]
pub struct ClientUsage {
    by_addr: UsageTable<IpAddr>,
    by_user: UsageTable<String>,
}

impl ClientUsage {
    pub fn of_addr(&self, a: &IpAddr) -> Usage {
        self.by_addr.get(a)
    }

    pub fn of_user(&self, user: &str) -> Usage {
        self.by_user.get(&user.to_string())
    }
}

/// One connection's share of [`ClientUsage`] as last reported.
#[derive(Debug, Default)]
pub struct ClientShare {
    addr: Option<(IpAddr, Usage)>,
    users: HashMap<String, Usage>,
}

impl ClientShare {
    /// Report this connection as holding `opens` for source address `addr` and, per user
    /// (lowercase name), `users` (a connection counts once for every user with a session
    /// on it).
    pub fn report(
        &mut self,
        table: &ClientUsage,
        addr: Option<IpAddr>,
        opens: usize,
        users: HashMap<String, usize>,
    ) {
        let now_addr = addr.map(|a| (a, Usage { conns: 1, opens }));
        match (self.addr, now_addr) {
            (Some((a, was)), Some((b, now))) if a == b => table.by_addr.report(&a, was, now),
            (was, now) => {
                if let Some((a, was)) = was {
                    table.by_addr.report(&a, was, Usage::default());
                }
                if let Some((b, now)) = now {
                    table.by_addr.report(&b, Usage::default(), now);
                }
            }
        }
        self.addr = now_addr;
        let now_users: HashMap<String, Usage> = users
            .into_iter()
            .map(|(u, opens)| (u, Usage { conns: 1, opens }))
            .collect();
        for (u, was) in &self.users {
            let now = now_users.get(u).copied().unwrap_or_default();
            table.by_user.report(u, *was, now);
        }
        for (u, now) in &now_users {
            if !self.users.contains_key(u) {
                table.by_user.report(u, Usage::default(), *now);
            }
        }
        self.users = now_users;
    }

    /// Whether this connection is counted for `user` (lowercase).
    pub fn counts_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The connection is gone: take its share out of the table.
    pub fn release(&mut self, table: &ClientUsage) {
        self.report(table, None, 0, HashMap::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_usage_sums_the_connections_and_forgets_them_when_gone() {
        let t = ClientUsage::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let (mut c1, mut c2) = (ClientShare::default(), ClientShare::default());
        c1.report(&t, Some(a), 0, HashMap::new());
        c2.report(&t, Some(a), 3, HashMap::from([("alice".to_string(), 3)]));
        c1.report(&t, Some(a), 2, HashMap::from([("alice".to_string(), 2)]));
        assert_eq!(t.of_addr(&a), Usage { conns: 2, opens: 5 });
        assert_eq!(t.of_user("alice"), Usage { conns: 2, opens: 5 });
        // alice logs off c2 and bob logs on there.
        c2.report(&t, Some(a), 1, HashMap::from([("bob".to_string(), 1)]));
        assert_eq!(t.of_user("alice"), Usage { conns: 1, opens: 2 });
        assert_eq!(t.of_user("bob"), Usage { conns: 1, opens: 1 });
        c1.release(&t);
        c2.release(&t);
        assert_eq!(t.of_addr(&a), Usage::default());
        assert_eq!(t.of_user("alice"), Usage::default());
        assert!(t.by_addr.0.lock().unwrap().is_empty());
        assert!(t.by_user.0.lock().unwrap().is_empty());
    }
}
