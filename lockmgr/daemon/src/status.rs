//! The operator view (like `ctdb status` / `smbstatus`): what lockmgrd holds, as text.

use std::fmt::Write;

use lockmgr_engine::{BreakHolder, Engine, OplockGrant, SessionId};

use lockmgr_transport::fabric::FabricCounters;

/// Counters of what the server dropped or refused, for the operator view and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounters {
    pub frames_in: u64,
    pub frames_out: u64,
    pub malformed_frames: u64,
    /// Frames whose session id is not the one this peer authenticated (or no session yet).
    pub foreign_session_frames: u64,
    /// A node's frames carrying a replica-set epoch older than the one its session was
    /// accepted in (dropped).
    pub stale_epoch_frames: u64,
    /// Messages not allowed in the peer's state (e.g. a request before authentication).
    pub protocol_violations: u64,
    pub auth_failures: u64,
    pub sessions_accepted: u64,
    pub sessions_expired: u64,
    pub sessions_closed: u64,
}

/// Renders nodes, sessions, open files, byte-range locks, waiters and pending breaks.
pub fn render_status(
    engine: &Engine,
    nodes: &[(SessionId, String)],
    counters: &ServerCounters,
    fabric: Option<&FabricCounters>,
) -> String {
    let snap = engine.snapshot();
    let stats = engine.stats();
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(out, "lockmgrd status");
    let _ = writeln!(
        out,
        "sessions={} files={} opens={} leases={} locks={} lock_waiters={} deferred_opens={} breaks_pending={}",
        stats.sessions,
        stats.files,
        stats.opens,
        stats.leases,
        stats.locks_held,
        stats.lock_waiters,
        stats.deferred_opens,
        stats.breaks_pending
    );
    let _ = writeln!(
        out,
        "requests_total={} sharing_violations_total={} locks_granted_total={} lock_conflicts_total={} breaks_sent_total={} break_timeouts_total={} sessions_ended_total={}",
        stats.requests_total,
        stats.sharing_violations_total,
        stats.locks_granted_total,
        stats.lock_conflicts_total,
        stats.breaks_sent_total,
        stats.break_timeouts_total,
        stats.sessions_ended_total
    );
    let _ = writeln!(
        out,
        "io_grants_held={} io_grants_total={} io_grants_refused_total={} io_recalls_sent_total={} io_recall_acks_total={}",
        stats.io_grants_held,
        stats.io_grants_total,
        stats.io_grants_refused_total,
        stats.io_recalls_total,
        stats.io_recall_acks_total
    );
    let _ = writeln!(
        out,
        "watched_dirs={} dir_changes_total={} dir_changes_forwarded_total={}",
        stats.watched_dirs, stats.dir_changes_total, stats.dir_changes_forwarded_total
    );
    let _ = writeln!(
        out,
        "frames_in={} frames_out={} malformed_frames={} foreign_session_frames={} protocol_violations={} auth_failures={} sessions_expired={} stale_epoch_frames={}",
        counters.frames_in,
        counters.frames_out,
        counters.malformed_frames,
        counters.foreign_session_frames,
        counters.protocol_violations,
        // Wrong cluster keys, whichever layer caught them.
        counters.auth_failures + fabric.map_or(0, |f| f.auth_failures),
        counters.sessions_expired,
        counters.stale_epoch_frames
    );
    if let Some(f) = fabric {
        let _ = writeln!(
            out,
            "fabric: syns={} handshakes={} auth_failures={} stale_handshakes={} rejected_frames={} replaced={}",
            f.syns, f.handshakes, f.auth_failures, f.stale_handshakes, f.rejected_frames, f.replaced
        );
    }
    let _ = writeln!(out, "\nNODES");
    let _ = writeln!(
        out,
        "{:<20} {:<20} {:>6} {:>8} {:>9}",
        "session", "node", "opens", "pending", "io_grants"
    );
    for s in &snap.sessions {
        let name = nodes
            .iter()
            .find(|(id, _)| *id == s.session)
            .map(|(_, n)| n.as_str())
            .unwrap_or("?");
        let _ = writeln!(
            out,
            "{:<20} {:<20} {:>6} {:>8} {:>9}",
            s.session.0, name, s.opens, s.pending_requests, s.io_grants
        );
    }
    let _ = writeln!(out, "\nOPEN FILES");
    let _ = writeln!(
        out,
        "{:<10} {:<20} {:<34} {:>10} {:>5} {:<4} caching",
        "open", "session", "file", "access", "share", "doc"
    );
    for o in &snap.opens {
        let caching = match o.caching {
            OplockGrant::None => "none".to_string(),
            OplockGrant::Oplock(level) => format!("oplock {level:?}"),
            OplockGrant::Lease(lease) => format!("lease {:?} {:?}", lease.key, lease.state),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<20} {:032x}   {:>#10x} {:>5x} {:<4} {}",
            o.open.0,
            o.session.0,
            o.file.0,
            o.access,
            o.share,
            if o.delete_on_close { "yes" } else { "no" },
            caching
        );
    }
    let _ = writeln!(out, "\nBYTE-RANGE LOCKS");
    let _ = writeln!(
        out,
        "{:<34} {:<10} {:>20} {:>20} type",
        "file", "open", "offset", "length"
    );
    for l in &snap.locks {
        let _ = writeln!(
            out,
            "{:032x}   {:<10} {:>20} {:>20} {}",
            l.file.0,
            l.open.0,
            l.offset,
            l.length,
            if l.exclusive { "exclusive" } else { "shared" }
        );
    }
    let _ = writeln!(out, "\nWAITING LOCKS");
    for w in &snap.lock_waiters {
        let _ = writeln!(
            out,
            "session={} request={} file={:032x} open={} offset={} length={} {}",
            w.session.0,
            w.request.0,
            w.file.0,
            w.open.0,
            w.offset,
            w.length,
            if w.exclusive { "exclusive" } else { "shared" }
        );
    }
    let _ = writeln!(out, "\nDEFERRED OPENS");
    for d in &snap.deferred_opens {
        let _ = writeln!(
            out,
            "session={} request={} file={:032x}",
            d.session.0, d.request.0, d.file.0
        );
    }
    let _ = writeln!(out, "\nPENDING BREAKS");
    for b in &snap.breaks {
        let what = match b.holder {
            BreakHolder::Oplock { open, from, to } => {
                format!("oplock open={} {from:?} -> {to:?}", open.0)
            }
            BreakHolder::Lease { key, from, to, .. } => format!("lease {key:?} {from:?} -> {to:?}"),
        };
        let _ = writeln!(
            out,
            "session={} file={:032x} {} deadline={}ms",
            b.session.0,
            b.file.0,
            what,
            b.deadline.0 / 1_000_000
        );
    }
    out
}
