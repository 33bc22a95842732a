//! The replication state the server loop holds (see [`crate::replication`] for the driver).
//!
//! It lives below both the server and the replication driver so that the server names it
//! without importing the module that builds on the server.

use std::time::{Duration, Instant};

use lockmgr_client::AnyTransport;
use lockmgr_coord::{Configuration, Member};
use lockmgr_engine::SessionId;
use lockmgr_proto::FrameBuf;
use lockmgr_replica::Role as ReplicaRole;
use lockmgr_transport::PeerId;

use crate::coordination::CoordThread;
use crate::state::LockState;

/// The epoch change this replica asked the coordination service for.
#[derive(Debug)]
pub(crate) enum Intent {
    /// Record the attached standby (epoch + 1 names it).
    RecordStandby { peer: PeerId, member: Member },
    /// The standby is gone: serve alone in epoch + 1.
    ServeAlone,
    /// The primary is gone: be primary of epoch + 1.
    Promote,
}

/// A standby that attached to this primary.
pub(crate) struct StandbyPeer {
    pub(crate) peer: PeerId,
    pub(crate) member: Member,
    /// The log index its snapshot ends at: once it acknowledges this, it holds everything.
    pub(crate) ready_at: u64,
    /// The highest log index it acknowledged: an acknowledgement that arrives while another
    /// configuration change is in flight cannot record it, so recording is retried from this
    /// when that change completes (an idle primary sends no more appends to be acknowledged).
    pub(crate) acked: u64,
    /// Whether the coordination service names it (else it is still catching up).
    pub(crate) recorded: bool,
}

/// A standby's connection to its primary.
pub(crate) struct Upstream {
    pub(crate) transport: AnyTransport,
    pub(crate) session: SessionId,
    pub(crate) out: FrameBuf,
    pub(crate) last_heard: Instant,
    pub(crate) last_sent: Instant,
    pub(crate) next_heartbeat: u64,
    /// The snapshot being received, until it is complete.
    pub(crate) snapshot: Vec<u8>,
    pub(crate) installed: bool,
}

/// Replication state of the daemon (see the module docs).
pub(crate) struct Ha {
    pub(crate) name: String,
    pub(crate) incarnation: u64,
    pub(crate) address: String,
    pub(crate) failover: Duration,
    pub(crate) coord: CoordThread,
    /// The configuration this replica is in (as last installed or adopted).
    pub(crate) config: Configuration,
    pub(crate) pending: Option<Intent>,
    pub(crate) standby: Option<StandbyPeer>,
    pub(crate) upstream: Option<Upstream>,
    pub(crate) deposed: bool,
    /// When the partner was last heard of, for the failover time in the log.
    pub(crate) partner_lost_at: Option<Instant>,
    /// Standby: since when the primary is gone while the configuration does not name this
    /// replica yet (see `request_promotion`).
    pub(crate) unrecorded_since: Option<Instant>,
    /// Appends were refused (the standby lags behind an epoch change): send again then.
    pub(crate) rewind_at: Option<Instant>,
    /// Pacing of configuration changes after a failed one ([`ChangeRetry`]).
    pub(crate) change_retry: ChangeRetry,
}

/// After a configuration change fails (etcd unreachable, no quorum), the next attempt waits:
/// first [`ChangeRetry::FIRST`], doubling with each failure up to [`ChangeRetry::MAX`], back to
/// the first after a change succeeds. Without it a replica whose etcd refuses connections
/// retries in a tight loop, a core spent on log lines while the nodes need the CPU.
#[derive(Debug)]
pub(crate) struct ChangeRetry {
    /// No change is asked for before this; the primary's round retries the failed one then.
    pub(crate) not_before: Option<Instant>,
    /// The change that failed, for the primary to retry (a standby's promotion is retried by
    /// its own round).
    pub(crate) failed: Option<Intent>,
    delay: Duration,
}

impl Default for ChangeRetry {
    fn default() -> Self {
        ChangeRetry {
            not_before: None,
            failed: None,
            delay: Self::FIRST,
        }
    }
}

impl ChangeRetry {
    pub(crate) const FIRST: Duration = Duration::from_millis(10);
    pub(crate) const MAX: Duration = Duration::from_millis(500);

    /// `intent` failed at `now`: returns how long until the next attempt.
    pub(crate) fn failed(&mut self, intent: Option<Intent>, now: Instant) -> Duration {
        let wait = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        self.not_before = Some(now + wait);
        self.failed = intent;
        wait
    }

    /// A change succeeded (or was decided otherwise): the next failure waits the first delay.
    pub(crate) fn succeeded(&mut self) {
        *self = ChangeRetry::default();
    }

    /// Whether a change may be asked for at `now`.
    pub(crate) fn may_change(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }
}

impl Ha {
    pub(crate) fn deposed(&self) -> bool {
        self.deposed
    }

    pub(crate) fn failover(&self) -> Duration {
        self.failover
    }

    pub(crate) fn me(&self) -> Member {
        Member::new(self.name.clone(), self.address.clone(), self.incarnation)
    }

    pub(crate) fn names_me_standby(&self, config: &Configuration) -> bool {
        config
            .standbys
            .iter()
            .any(|m| m.is(&self.name, self.incarnation))
    }

    /// Lines for the operator view.
    pub(crate) fn status(&self, state: &LockState) -> String {
        let mut out = String::from("\nreplication:\n");
        if let Some(r) = state.replica() {
            let role = match r.role() {
                ReplicaRole::Primary => "primary",
                ReplicaRole::Standby => "standby",
                _ => "deposed",
            };
            out.push_str(&format!(
                "  replica {} role {role} epoch {} log {} committed {} lag {}\n",
                self.name,
                r.epoch().0,
                r.next_index(),
                r.committed(),
                r.replication_lag()
            ));
        }
        match &self.standby {
            Some(s) => out.push_str(&format!(
                "  standby {} at {} ({})\n",
                s.member.name,
                s.member.address,
                if s.recorded {
                    "recorded"
                } else {
                    "catching up"
                }
            )),
            None if self.upstream.is_none() => out.push_str("  standby none (serving alone)\n"),
            None => {}
        }
        out
    }
}
