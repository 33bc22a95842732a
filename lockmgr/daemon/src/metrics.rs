//! lockmgrd's Prometheus metrics. The loop owns every counter (plain integers, one thread);
//! a scrape asks the loop for a copy ([`Published::scrape`] sets a flag the loop checks once
//! per round, at most 100 ms apart) and renders it on the HTTP thread, so serving
//! `/metrics` adds one relaxed load per round to the loop and nothing per request. The
//! numbers are the operator view's (`status.rs`, `lockmgrctl status`) as series.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use clustersmb_metrics::{Exposition, HistogramSnapshot, Kind};
use lockmgr_engine::Stats;
use lockmgr_transport::fabric::FabricCounters;

use crate::status::ServerCounters;

/// Lock-manager request kinds counted by the loop (the `kind` label).
pub const REQUEST_KINDS: [&str; 10] = [
    "lock",
    "unlock",
    "open",
    "close",
    "set_delete_pending",
    "cancel",
    "check_io",
    "break_ack",
    "io_grant",
    "other",
];

/// The replica's place in a replicated lock manager.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaView {
    pub role: &'static str,
    pub epoch: u64,
    /// Log entries appended and not yet acknowledged by the standby.
    pub lag: u64,
    pub standby_attached: bool,
}

/// What the loop hands to a scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub stats: Stats,
    pub counters: ServerCounters,
    pub fabric: Option<FabricCounters>,
    /// Nodes with a live session over a connected transport.
    pub nodes_connected: usize,
    pub requests: [u64; REQUEST_KINDS.len()],
    pub replies: u64,
    pub notifications: u64,
    pub replica: Option<ReplicaView>,
    /// Epoch changes this replica made to take over (promoted, or serving alone after its
    /// standby died).
    pub failovers: u64,
    /// How long the loop did not run when it meant to (descheduled, paused), one
    /// observation per stall past the round allowance.
    pub loop_stalls: Option<HistogramSnapshot>,
}

/// The rendezvous between the loop and the HTTP thread.
#[derive(Debug, Default)]
pub struct Published {
    want: AtomicBool,
    latest: Mutex<(u64, Option<Snapshot>)>,
    fresh: Condvar,
}

impl Published {
    /// Whether a scrape waits for a snapshot (checked by the loop once per round).
    #[inline]
    pub fn wanted(&self) -> bool {
        self.want.load(Ordering::Relaxed)
    }

    pub fn publish(&self, snap: Snapshot) {
        let mut g = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        g.1 = Some(snap);
        self.want.store(false, Ordering::Relaxed);
        self.fresh.notify_all();
    }

    /// A snapshot taken after this call, or (if the loop does not answer within `wait`) the
    /// last one, flagged stale.
    pub fn scrape(&self, wait: Duration) -> (Option<Snapshot>, bool) {
        let g = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = g.0;
        self.want.store(true, Ordering::Relaxed);
        let (g, timeout) = self
            .fresh
            .wait_timeout_while(g, wait, |g| g.0 == seen)
            .unwrap_or_else(|p| p.into_inner());
        (g.1.clone(), timeout.timed_out())
    }
}

/// The scrape as Prometheus text.
pub fn render(snap: Option<&Snapshot>, stale: bool) -> String {
    let mut e = Exposition::new();
    e.family(
        "lockmgrd_scrape_stale",
        "1 when the loop did not answer the scrape within 1 s (the values are older)",
        Kind::Gauge,
    );
    e.sample("lockmgrd_scrape_stale", &[], i64::from(stale));
    let Some(s) = snap else {
        return e.finish();
    };
    let st = &s.stats;
    let c = &s.counters;
    e.family(
        "lockmgrd_requests_total",
        "Lock-manager requests from nodes, by kind",
        Kind::Counter,
    );
    for (kind, n) in REQUEST_KINDS.iter().zip(s.requests) {
        e.sample("lockmgrd_requests_total", &[("kind", kind)], n);
    }
    let counters: [(&str, &str, u64); 24] = [
        ("lockmgrd_replies_total", "Replies sent to nodes", s.replies),
        (
            "lockmgrd_notifications_total",
            "Notifications (breaks, recalls, completions) sent to nodes",
            s.notifications,
        ),
        (
            "lockmgrd_engine_requests_total",
            "Requests the engine processed",
            st.requests_total,
        ),
        ("lockmgrd_opens_total", "Opens processed", st.opens_total),
        (
            "lockmgrd_sharing_violations_total",
            "Opens refused for a sharing violation",
            st.sharing_violations_total,
        ),
        (
            "lockmgrd_locks_granted_total",
            "Byte-range locks granted",
            st.locks_granted_total,
        ),
        (
            "lockmgrd_lock_conflicts_total",
            "Byte-range lock requests that conflicted",
            st.lock_conflicts_total,
        ),
        (
            "lockmgrd_breaks_sent_total",
            "Oplock and lease breaks sent",
            st.breaks_sent_total,
        ),
        (
            "lockmgrd_breaks_acked_total",
            "Oplock and lease breaks acknowledged",
            st.breaks_acked_total,
        ),
        (
            "lockmgrd_break_timeouts_total",
            "Breaks not acknowledged in time",
            st.break_timeouts_total,
        ),
        (
            "lockmgrd_io_grants_total",
            "I/O grants given",
            st.io_grants_total,
        ),
        (
            "lockmgrd_io_grants_refused_total",
            "I/O grants asked for and refused",
            st.io_grants_refused_total,
        ),
        (
            "lockmgrd_io_recalls_total",
            "I/O grant recalls sent",
            st.io_recalls_total,
        ),
        (
            "lockmgrd_io_recall_acks_total",
            "I/O grant recalls acknowledged",
            st.io_recall_acks_total,
        ),
        (
            "lockmgrd_dir_changes_total",
            "Change-notify changes nodes reported in directories other nodes watch",
            st.dir_changes_total,
        ),
        (
            "lockmgrd_dir_changes_forwarded_total",
            "Change-notify changes forwarded to watching nodes",
            st.dir_changes_forwarded_total,
        ),
        ("lockmgrd_frames_in_total", "Frames received", c.frames_in),
        ("lockmgrd_frames_out_total", "Frames sent", c.frames_out),
        (
            "lockmgrd_malformed_frames_total",
            "Frames dropped as malformed",
            c.malformed_frames,
        ),
        (
            "lockmgrd_auth_failures_total",
            "Wrong cluster keys, whichever layer caught them",
            c.auth_failures + s.fabric.as_ref().map_or(0, |f| f.auth_failures),
        ),
        (
            "lockmgrd_sessions_accepted_total",
            "Node sessions accepted",
            c.sessions_accepted,
        ),
        (
            "lockmgrd_sessions_expired_total",
            "Node sessions expired (liveness lease ran out)",
            c.sessions_expired,
        ),
        (
            "lockmgrd_sessions_ended_total",
            "Node sessions ended, their state released",
            st.sessions_ended_total,
        ),
        (
            "lockmgrd_failovers_total",
            "Epoch changes this replica made to take over",
            s.failovers,
        ),
    ];
    for (name, help, v) in counters {
        e.family(name, help, Kind::Counter);
        e.sample(name, &[], v);
    }
    let gauges: [(&str, &str, usize); 11] = [
        (
            "lockmgrd_nodes_connected",
            "Nodes with a live session",
            s.nodes_connected,
        ),
        (
            "lockmgrd_sessions",
            "Node sessions held (live or awaiting resumption)",
            st.sessions,
        ),
        ("lockmgrd_files", "Files with state", st.files),
        ("lockmgrd_opens", "Opens held", st.opens),
        ("lockmgrd_leases", "Leases held", st.leases),
        ("lockmgrd_locks", "Byte-range locks held", st.locks_held),
        (
            "lockmgrd_lock_waiters",
            "Blocking lock requests waiting",
            st.lock_waiters,
        ),
        (
            "lockmgrd_deferred_opens",
            "Opens waiting for a break",
            st.deferred_opens,
        ),
        (
            "lockmgrd_breaks_pending",
            "Breaks awaiting acknowledgement",
            st.breaks_pending,
        ),
        ("lockmgrd_io_grants", "I/O grants held", st.io_grants_held),
        (
            "lockmgrd_watched_dirs",
            "Directories with change-notify watchers registered",
            st.watched_dirs,
        ),
    ];
    for (name, help, v) in gauges {
        e.family(name, help, Kind::Gauge);
        e.sample(name, &[], v as u64);
    }
    if let Some(h) = &s.loop_stalls {
        e.family(
            "lockmgrd_loop_stall_seconds",
            "Times the loop did not run when it meant to (descheduled or paused), by length",
            Kind::Histogram,
        );
        e.histogram("lockmgrd_loop_stall_seconds", &[], h);
    }
    if let Some(r) = &s.replica {
        e.family(
            "lockmgrd_replica_role",
            "This replica's role (1 for the role it has)",
            Kind::Gauge,
        );
        for role in ["primary", "standby", "deposed"] {
            e.sample(
                "lockmgrd_replica_role",
                &[("role", role)],
                i64::from(r.role == role),
            );
        }
        e.family(
            "lockmgrd_replica_epoch",
            "The replica-set epoch",
            Kind::Gauge,
        );
        e.sample("lockmgrd_replica_epoch", &[], r.epoch);
        e.family(
            "lockmgrd_standby_lag",
            "Log entries appended and not yet acknowledged by the standby",
            Kind::Gauge,
        );
        e.sample("lockmgrd_standby_lag", &[], r.lag);
        e.family(
            "lockmgrd_standby_attached",
            "1 while a standby is attached",
            Kind::Gauge,
        );
        e.sample(
            "lockmgrd_standby_attached",
            &[],
            i64::from(r.standby_attached),
        );
    }
    e.finish()
}
