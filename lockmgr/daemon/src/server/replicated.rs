//! The event loop's part in a replicated lock manager ([`crate::replication`] starts one and
//! describes the design): as primary, a standby attaching, its acknowledgements and failure
//! detection, the appends of every round; as standby, the link to the primary; on both, the
//! epoch changes through the coordination service. `Server::run` and `Server::turn` call in
//! here; nothing here is called from outside the loop but [`with_test_faults`].

use std::time::{Duration, Instant};

use lockmgr_coord::{Configuration, Member, Swap};
use lockmgr_engine::SessionId;
use lockmgr_proto::{decode_frame, EncodeError, Message, MAX_SNAPSHOT, MAX_SNAPSHOT_CHUNK};
use lockmgr_replica::{Append, AppendError, Epoch, Replica, Role as ReplicaRole};
use lockmgr_transport::{PeerId, ServerTransport, TransportError};

use super::{Clock, Core, PeerState, Server};
use crate::coordination::CoordEvent;
use crate::ha::{Ha, Intent, StandbyPeer, Upstream};
use crate::state::LockState;

/// Longest a standby stays silent towards its primary. A dead primary's socket answers the
/// next datagram with a definite "nobody listens here" (ICMP port unreachable on UDP, EOF on
/// shm), so the standby learns of the death one probe after it, whatever `failover` (the
/// silence timeout for deaths that leave no such trace) is. Acknowledgements count as probes;
/// an idle link costs a heartbeat and its answer every few milliseconds.
const PROBE_INTERVAL_MAX: Duration = Duration::from_millis(5);

/// How long a standby that lost its primary waits for the record naming it standby (the
/// primary's last configuration change, possibly still in the watch) before it gives up.
const RECORD_GRACE: Duration = Duration::from_secs(1);

/// The environment variable that breaks a lockmgrd built with the `test-faults` feature.
#[cfg(feature = "test-faults")]
const REPLY_BEFORE_COMMIT_ENV: &str = "LOCKMGRD_TEST_REPLY_BEFORE_COMMIT";

/// Test-only fault, compiled in only with the `test-faults` cargo feature (enabled by
/// lockmgrd's own tests, never by a production build): with `LOCKMGRD_TEST_REPLY_BEFORE_COMMIT`
/// set, the replica releases replies before its standby has acknowledged their log entries.
/// Such a lock manager loses acknowledged locks across failovers; the history-checked tests
/// run it to prove they notice. Applied to every replica this process builds (a standby's
/// replica becomes the primary on promotion).
pub(crate) fn with_test_faults(replica: Replica) -> Replica {
    #[cfg(feature = "test-faults")]
    let replica = {
        let mut replica = replica;
        if std::env::var_os(REPLY_BEFORE_COMMIT_ENV).is_some() {
            tracing::warn!("test fault: replies leave before the standby acknowledges");
            replica.set_reply_before_commit(true);
        }
        replica
    };
    replica
}

/// How often a standby must send to its primary (see [`PROBE_INTERVAL_MAX`]).
fn probe_interval(failover: Duration) -> Duration {
    (failover / 4).min(PROBE_INTERVAL_MAX)
}

impl Core {
    /// Whether this replica may acknowledge a node's heartbeat, which renews the node's lease
    /// on its grants (lockmgr_client::LEASE_DRIFT_PPM). Not when deposed, and not while its
    /// standby has been silent for the failover timeout: the standby may then be promoting
    /// itself, and a node whose heartbeats a cut-off primary still answered would go on using
    /// grants the new primary counts down from its promotion. Both sides of a cut stop hearing
    /// each other within a few ms (each sends at least every 5 ms), which the node's reserve
    /// covers. (A one-way cut, standby deaf but primary hearing, is not covered by this rule.)
    /// Real time, not `stalls`' observed silence: a stall of this process is no reason to
    /// believe the standby still follows it.
    pub(crate) fn may_renew_node_leases(&self, now: Instant) -> bool {
        let Some(ha) = &self.ha else {
            return true;
        };
        // Deposed, or lost the partner and asking etcd whether to go on: the partner may be
        // winning the same compare-and-swap.
        if ha.deposed || matches!(ha.pending, Some(Intent::ServeAlone | Intent::Promote)) {
            return false;
        }
        match &ha.standby {
            None => true,
            Some(standby) => self
                .peers
                .get(&standby.peer)
                .is_some_and(|p| now.duration_since(p.last_heard) <= ha.failover),
        }
    }

    /// Primary: a standby asks for the log (it authenticated like a node).
    pub(crate) fn on_replica_attach(
        &mut self,
        peer_id: PeerId,
        session: SessionId,
        name: String,
        (epoch, incarnation, address): (Epoch, u64, String),
        clock: Clock,
    ) -> PeerState {
        let my_epoch = self.state.replica().map(|r| r.epoch());
        let primary = self.serving() && my_epoch.is_some();
        let busy = self
            .ha
            .as_ref()
            .is_some_and(|h| h.standby.is_some() || h.pending.is_some());
        if !primary || busy || my_epoch != Some(epoch) {
            tracing::warn!(peer = peer_id.0, standby = %name, epoch = epoch.0, ?my_epoch, busy,
                "standby attach refused");
            let refusal = AppendError::EpochMismatch {
                sent: epoch,
                mine: my_epoch.unwrap_or_default(),
            };
            self.push(peer_id, Message::AppendRefused { refusal });
            self.to_close.push(peer_id);
            return PeerState::Live {
                session,
                node_name: name,
            };
        }
        // The handshake opened a node session for it: a standby holds no locks.
        self.state.end_session(clock.engine, session);
        let Some(replica) = self.state.replica_mut() else {
            return PeerState::New;
        };
        let (snapshot, ready_at) = match replica.attach_standby() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%e, "cannot snapshot the lock state for a standby");
                self.to_close.push(peer_id);
                return PeerState::New;
            }
        };
        tracing::info!(standby = %name, address = %address, bytes = snapshot.len(), ready_at,
            "standby attaching: sending snapshot");
        let total = snapshot.len() as u64;
        let mut offset = 0usize;
        loop {
            let end = (offset + MAX_SNAPSHOT_CHUNK).min(snapshot.len());
            self.push(
                peer_id,
                Message::Snapshot {
                    epoch,
                    total,
                    offset: offset as u64,
                    chunk: snapshot[offset..end].to_vec(),
                },
            );
            offset = end;
            if offset >= snapshot.len() {
                break;
            }
        }
        if let Some(ha) = &mut self.ha {
            ha.standby = Some(StandbyPeer {
                peer: peer_id,
                member: Member::new(name.clone(), address, incarnation),
                ready_at,
                acked: 0,
                recorded: false,
            });
        }
        PeerState::Standby { session, name }
    }

    /// Primary: a message from the attached standby.
    pub(crate) fn on_standby_message(&mut self, peer_id: PeerId, msg: Message, now: Instant) {
        match msg {
            Message::AppendAck { epoch, next_index } => {
                if let Some(r) = self.state.replica_mut() {
                    r.on_ack(lockmgr_replica::Ack { epoch, next_index });
                }
                if let Some(s) = self.ha.as_mut().and_then(|h| h.standby.as_mut()) {
                    s.acked = s.acked.max(next_index);
                }
                self.maybe_record_standby(next_index, now);
            }
            Message::AppendRefused { refusal } => {
                tracing::debug!(?refusal, "standby refused an append");
                // The standby saw our own epoch change (recording it) in etcd before we got
                // the answer: not a newer primary, just appends to send again in a moment.
                let my_epoch = self.state.replica().map_or(0, |r| r.epoch().0);
                let own_change_in_flight = matches!(
                    (&refusal, self.ha.as_ref().and_then(|h| h.pending.as_ref())),
                    (AppendError::EpochMismatch { mine, .. }, Some(Intent::RecordStandby { .. }))
                        if mine.0 == my_epoch + 1
                );
                if own_change_in_flight {
                    if let Some(ha) = &mut self.ha {
                        ha.rewind_at = Some(Instant::now() + Duration::from_millis(2));
                    }
                    return;
                }
                // The standby is still in the epoch before the one that records it: it has
                // not had the record yet (the `Recorded` sent after the change was lost, or
                // overtaken by these appends). Send it again; the appends follow the rewind.
                let recorded = self
                    .ha
                    .as_ref()
                    .and_then(|h| h.standby.as_ref())
                    .is_some_and(|s| s.peer == peer_id && s.recorded);
                if let (true, AppendError::EpochMismatch { mine, .. }) = (recorded, &refusal) {
                    if mine.0 + 1 == my_epoch {
                        if let Some(config) = self.ha.as_ref().map(|h| h.config.clone()) {
                            self.push(peer_id, Message::Recorded { config });
                        }
                    }
                }
                let deposed = self
                    .state
                    .replica_mut()
                    .is_some_and(|r| r.on_append_refused(refusal));
                if let Some(ha) = &mut self.ha {
                    if deposed {
                        tracing::error!("standby is in a newer epoch: this primary is fenced");
                        ha.deposed = true;
                    } else {
                        // Most likely the standby has not yet seen the epoch we moved to.
                        ha.rewind_at = Some(Instant::now() + Duration::from_millis(2));
                    }
                }
            }
            Message::Heartbeat { seq } => self.push(peer_id, Message::HeartbeatAck { seq }),
            Message::Goodbye => self.to_close.push(peer_id),
            other => {
                self.counters.protocol_violations += 1;
                tracing::debug!(tag = other.tag(), "message not allowed from a standby");
            }
        }
    }

    fn maybe_record_standby(&mut self, acked: u64, now: Instant) {
        let Some(ha) = &mut self.ha else { return };
        let Some(s) = &ha.standby else { return };
        if s.recorded
            || ha.pending.is_some()
            || acked < s.ready_at
            || !ha.change_retry.may_change(now)
        {
            return;
        }
        let Some(r) = self.state.replica() else {
            return;
        };
        let next = Configuration {
            epoch: r.epoch().0 + 1,
            primary: ha.me(),
            standbys: vec![s.member.clone()],
        };
        tracing::info!(standby = %s.member.name, epoch = next.epoch, "standby caught up; recording it");
        ha.coord.advance(r.epoch().0, &ha.config, next);
        ha.pending = Some(Intent::RecordStandby {
            peer: s.peer,
            member: s.member.clone(),
        });
    }

    /// Primary: the standby's connection is gone.
    pub(crate) fn standby_gone(&mut self, name: &str, now: Instant) {
        let Some(ha) = &mut self.ha else { return };
        if ha.standby.take().is_none() {
            return;
        }
        tracing::warn!(standby = %name, "standby lost");
        ha.partner_lost_at = Some(now);
        self.request_serve_alone(now);
    }

    fn request_serve_alone(&mut self, now: Instant) {
        let Some(ha) = &mut self.ha else { return };
        let Some(r) = self.state.replica() else {
            return;
        };
        if ha.pending.is_some() || r.role() != ReplicaRole::Primary {
            return;
        }
        if !ha.change_retry.may_change(now) {
            // A failed change is being paced: `replicate` asks again when it is due, for
            // this change (a standby that was to be recorded is gone now).
            ha.change_retry.failed = Some(Intent::ServeAlone);
            return;
        }
        // Outputs wait for acknowledgements nobody will send: only a new epoch in which this
        // primary serves alone lets them out (and fences the old standby).
        let next = Configuration {
            epoch: r.epoch().0 + 1,
            primary: ha.me(),
            standbys: Vec::new(),
        };
        tracing::warn!(
            epoch = next.epoch,
            "recording that this primary serves alone"
        );
        ha.coord.advance(r.epoch().0, &ha.config, next);
        ha.pending = Some(Intent::ServeAlone);
    }

    /// Primary: a configuration change that failed is asked for again once its pacing delay
    /// is over ([`crate::ha::ChangeRetry`]).
    fn retry_failed_change(&mut self, now: Instant) {
        let Some(ha) = &mut self.ha else { return };
        if ha.pending.is_some() || ha.change_retry.not_before.is_none_or(|t| now < t) {
            return;
        }
        ha.change_retry.not_before = None;
        match ha.change_retry.failed.take() {
            Some(Intent::ServeAlone) => self.request_serve_alone(now),
            // A standby's promotion is retried by its own round (`poll_upstream`).
            Some(Intent::Promote) => {}
            Some(Intent::RecordStandby { .. }) | None => {
                if let Some(acked) = ha.standby.as_ref().map(|s| s.acked) {
                    self.maybe_record_standby(acked, now);
                }
            }
        }
    }

    /// Primary, once per round: failure detection of the standby, and the appends it needs.
    pub(crate) fn replicate(&mut self, now: Instant) {
        self.retry_failed_change(now);
        let Some(ha) = &mut self.ha else { return };
        let failover = ha.failover;
        if let Some(at) = ha.rewind_at {
            if now >= at {
                ha.rewind_at = None;
                if let Some(r) = self.state.replica_mut() {
                    r.rewind_append();
                }
            }
        }
        let Some(ha) = &self.ha else { return };
        let Some(standby) = ha.standby.as_ref().map(|s| s.peer) else {
            return;
        };
        let silent = self
            .peers
            .get(&standby)
            .is_none_or(|p| self.stalls.observed_silence(p.last_heard, now) > failover);
        if silent {
            tracing::warn!("standby silent past the failover timeout");
            self.to_close.push(standby);
            return;
        }
        let budget = MAX_SNAPSHOT_CHUNK - 16;
        loop {
            let Some(r) = self.state.replica_mut() else {
                return;
            };
            let mut used = 0usize;
            let Some(append) = r.poll_append_bounded(|e| {
                let len = lockmgr_proto::replication::entry_len(e).unwrap_or(budget);
                used += len;
                used <= budget
            }) else {
                break;
            };
            let Append { epoch, entries } = append;
            self.push(standby, Message::Append { epoch, entries });
        }
    }
}

impl<T: ServerTransport> Server<T> {
    /// Everything replication needs besides the node protocol: etcd events, the standby's
    /// link to its primary, failure detection on the standby side. Returns whether anything
    /// happened.
    pub(crate) fn ha_turn(&mut self) -> Result<bool, TransportError> {
        let mut progressed = false;
        let now = Instant::now();
        while let Some(ev) = self.core.ha.as_ref().and_then(|h| h.coord.try_event()) {
            progressed = true;
            self.on_coord_event(ev, now);
        }
        progressed |= self.poll_upstream(now);
        Ok(progressed)
    }

    /// Sleeps on the standby link instead of the node transport while this is a standby
    /// (nodes do not talk to a standby; the primary does, and its appends must be
    /// acknowledged at once). Returns false when the caller should sleep on the transport.
    pub(crate) fn ha_wait(&mut self, timeout: Duration) -> Result<bool, TransportError> {
        let Some(ha) = &mut self.core.ha else {
            return Ok(false);
        };
        let slice = timeout.min(probe_interval(ha.failover));
        match &mut ha.upstream {
            Some(up) => {
                up.transport.wait(Some(slice))?;
                Ok(true)
            }
            // A primary sleeps on its transport as usual: the coordination thread wakes it,
            // and the caller's timeout already covers the failure-detection interval.
            None => Ok(false),
        }
    }

    fn on_coord_event(&mut self, ev: CoordEvent, now: Instant) {
        let core = &mut self.core;
        let Some(ha) = &mut core.ha else { return };
        match ev {
            CoordEvent::Changed(stored) => {
                let mine = core.state.replica().map_or(0, |r| r.epoch().0);
                let c = stored.config;
                if c.epoch <= mine {
                    return;
                }
                if records_me(ha, &core.state, &c) {
                    adopt_record(ha, &mut core.state, c, "the coordination service");
                    return;
                }
                if ha.pending.is_some() && c.primary.is(&ha.name, ha.incarnation) {
                    // Our own change; its answer follows.
                    return;
                }
                tracing::error!(epoch = c.epoch, primary = %c.primary.name,
                    "a newer configuration does not need this replica: fenced");
                ha.deposed = true;
            }
            CoordEvent::Advanced(Ok(Swap::Installed(stored))) => {
                let intent = ha.pending.take();
                ha.change_retry.succeeded();
                let mut tell_standby = None;
                let epoch = Epoch(stored.config.epoch);
                let lost_for = ha.partner_lost_at.take().map(|t| now.duration_since(t));
                ha.config = stored.config;
                let Some(r) = core.state.replica_mut() else {
                    return;
                };
                match intent {
                    Some(Intent::RecordStandby { peer, member }) => {
                        if let Err(e) = r.advance_epoch(epoch) {
                            tracing::error!(%e, "cannot move to the recorded epoch");
                            ha.deposed = true;
                            return;
                        }
                        match &mut ha.standby {
                            Some(s) if s.peer == peer => {
                                s.recorded = true;
                                tell_standby = Some((peer, ha.config.clone()));
                            }
                            _ => {
                                // The standby left while its record was written: the next
                                // epoch must drop it again.
                                tracing::warn!(standby = %member.name, "standby gone after being recorded");
                                core.request_serve_alone(now);
                            }
                        }
                        tracing::info!(epoch = epoch.0, standby = %member.name, "standby recorded");
                    }
                    Some(Intent::ServeAlone) => {
                        if let Err(e) = r.serve_alone(epoch) {
                            tracing::error!(%e, "cannot serve alone");
                            ha.deposed = true;
                            return;
                        }
                        core.failovers += 1;
                        tracing::warn!(epoch = epoch.0, after = ?lost_for, "serving alone");
                    }
                    Some(Intent::Promote) => {
                        if let Err(e) = r.promote(epoch, false) {
                            tracing::error!(%e, "cannot promote");
                            ha.deposed = true;
                            return;
                        }
                        let last = r.last_now();
                        ha.upstream = None;
                        core.continue_time_from(last, now);
                        core.detach_all_sessions(now);
                        core.failovers += 1;
                        tracing::warn!(epoch = epoch.0, after = ?lost_for,
                            "promoted: this replica is primary (serving alone)");
                    }
                    None => {}
                }
                // The standby learns the record from us too, before the appends of the new
                // epoch (see `Message::Recorded`).
                if let Some((peer, config)) = tell_standby {
                    core.push(peer, Message::Recorded { config });
                }
                // A standby that caught up while this change was in flight is recorded now.
                let unrecorded = core.ha.as_ref().and_then(|h| h.standby.as_ref());
                if let Some(acked) = unrecorded.filter(|s| !s.recorded).map(|s| s.acked) {
                    core.maybe_record_standby(acked, now);
                }
            }
            CoordEvent::Advanced(Ok(Swap::Lost(other))) => {
                let intent = ha.pending.take();
                tracing::error!(?intent, current = ?other.map(|s| s.config),
                    "another replica changed the configuration first: fenced");
                ha.deposed = true;
            }
            CoordEvent::Advanced(Err(e)) => {
                // Not retried at once: an unreachable etcd would make that a tight loop.
                // The primary's round (`retry_failed_change`) or the standby's
                // (`poll_upstream`) asks again when the pacing delay is over.
                let intent = ha.pending.take();
                tracing::warn!(%e, ?intent, "configuration change failed");
                let wait = ha.change_retry.failed(intent, now);
                tracing::info!(retry_in = ?wait, "configuration change will be retried");
            }
        }
    }

    /// Standby: reads the primary's snapshot and appends, acknowledges, sends heartbeats, and
    /// asks for promotion when the primary is gone.
    fn poll_upstream(&mut self, now: Instant) -> bool {
        let core = &mut self.core;
        let Some(ha) = &mut core.ha else { return false };
        let failover = ha.failover;
        let Some(up) = &mut ha.upstream else {
            if ha.pending.is_none()
                && core
                    .state
                    .replica()
                    .is_some_and(|r| r.role() == ReplicaRole::Standby)
            {
                request_promotion(ha, &core.state, now);
            }
            return false;
        };
        let mut msgs = Vec::new();
        let session = up.session;
        let polled = up.transport.poll(&mut |bytes| {
            let Ok(frame) = decode_frame(bytes) else {
                tracing::warn!("malformed frame from the primary dropped");
                return;
            };
            if frame.session_id() != session {
                return;
            }
            for m in frame {
                match m {
                    Ok(m) => msgs.push(m),
                    Err(e) => {
                        tracing::warn!(%e, "malformed message from the primary");
                        break;
                    }
                }
            }
        });
        // Why the primary is considered gone (for the log: definite signals versus silence).
        let mut cause = polled.as_ref().err().map(|e| e.to_string());
        let mut lost = polled.is_err();
        if !msgs.is_empty() {
            up.last_heard = now;
        }
        let progressed = !msgs.is_empty();
        let mut replies = Vec::new();
        let mut recorded = None;
        for m in msgs {
            match m {
                Message::Snapshot {
                    epoch,
                    total,
                    offset,
                    chunk,
                } => {
                    if up.installed || offset != up.snapshot.len() as u64 || total > MAX_SNAPSHOT {
                        tracing::error!("snapshot chunks out of order");
                        lost = true;
                        break;
                    }
                    up.snapshot.extend_from_slice(&chunk);
                    if up.snapshot.len() as u64 >= total {
                        match Replica::standby_from_snapshot(&up.snapshot, epoch) {
                            Ok(r) => {
                                tracing::info!(
                                    bytes = total,
                                    next_index = r.next_index(),
                                    "snapshot installed; following the primary's log"
                                );
                                replies.push(Message::AppendAck {
                                    epoch,
                                    next_index: r.next_index(),
                                });
                                core.state = LockState::Replicated(Box::new(with_test_faults(r)));
                                up.installed = true;
                                up.snapshot = Vec::new();
                            }
                            Err(e) => {
                                tracing::error!(%e, "snapshot from the primary refused");
                                lost = true;
                                break;
                            }
                        }
                    }
                }
                Message::Append { epoch, entries } if up.installed => {
                    let Some(r) = core.state.replica_mut() else {
                        break;
                    };
                    match r.on_append(&Append { epoch, entries }) {
                        Ok(()) => {
                            if let Some(ack) = r.poll_ack() {
                                replies.push(Message::AppendAck {
                                    epoch: ack.epoch,
                                    next_index: ack.next_index,
                                });
                            }
                        }
                        Err(refusal) => replies.push(Message::AppendRefused { refusal }),
                    }
                }
                // Taken after this round's messages (below), before a loss is acted on.
                Message::Recorded { config } => recorded = Some(config),
                Message::HeartbeatAck { .. } => {}
                Message::AppendRefused { refusal } => {
                    tracing::error!(?refusal, "the primary refused this standby");
                    ha.deposed = true;
                    return true;
                }
                Message::Goodbye | Message::SessionRejected { .. } => {
                    cause = Some("the primary ended the link".into());
                    lost = true;
                    break;
                }
                other => tracing::debug!(tag = other.tag(), "unexpected message from the primary"),
            }
        }
        // Coalesce acknowledgements: only the last one matters.
        let mut last_ack = None;
        for m in replies {
            match m {
                Message::AppendAck { .. } => last_ack = Some(m),
                other => push_upstream(up, &other),
            }
        }
        if let Some(ack) = last_ack {
            push_upstream(up, &ack);
        }
        if now.duration_since(up.last_sent) >= probe_interval(failover) {
            let seq = up.next_heartbeat;
            up.next_heartbeat += 1;
            push_upstream(up, &Message::Heartbeat { seq });
        }
        if !up.out.is_empty() {
            let frame = up.out.finish();
            match up.transport.send(frame) {
                Ok(()) => up.last_sent = now,
                Err(TransportError::Full) => {}
                Err(e) => {
                    cause = Some(e.to_string());
                    lost = true;
                }
            }
            up.out.clear();
        }
        if !lost && core.stalls.observed_silence(up.last_heard, now) > failover {
            cause = Some(format!("silent for {failover:?}"));
            lost = true;
        }
        let (installed, last_heard) = (up.installed, up.last_heard);
        // A primary that dies right after recording this standby may have told it only: the
        // record must be adopted before the loss is handled, so that the promotion can start
        // from it.
        if let Some(config) = recorded {
            if records_me(ha, &core.state, &config) {
                adopt_record(ha, &mut core.state, config, "the primary");
            } else {
                tracing::debug!(
                    epoch = config.epoch,
                    "record from the primary not for this epoch"
                );
            }
        }
        if lost {
            ha.partner_lost_at = Some(last_heard);
            ha.upstream = None;
            if !installed {
                tracing::error!("lost the primary before the snapshot arrived; cannot take over");
                ha.deposed = true;
                return true;
            }
            tracing::warn!(
                cause = cause.as_deref().unwrap_or("snapshot"),
                "primary lost"
            );
            request_promotion(ha, &core.state, now);
            return true;
        }
        progressed
    }
}

/// Standby: whether `c` is the configuration that records this replica as standby of its
/// primary, in the epoch after its own (what the primary installs once the standby holds
/// everything).
fn records_me(ha: &Ha, state: &LockState, c: &Configuration) -> bool {
    let Some(r) = state.replica() else {
        return false;
    };
    r.role() == ReplicaRole::Standby
        && c.epoch == r.epoch().0 + 1
        && ha.names_me_standby(c)
        && c.primary == ha.config.primary
}

/// Standby: moves to the epoch of `c` (which [`records_me`]), learnt from the coordination
/// service's watch or from the primary, whichever comes first. Either source is enough: the
/// record exists only because the primary's compare-and-swap installed it, and the primary
/// tells its standby only after that, over the authenticated link. `ha.config` then is
/// exactly the stored record, which a later promotion compares against.
fn adopt_record(ha: &mut Ha, state: &mut LockState, c: Configuration, from: &str) {
    let Some(r) = state.replica_mut() else { return };
    match r.adopt_epoch(Epoch(c.epoch)) {
        Ok(()) => {
            tracing::info!(epoch = c.epoch, from, "recorded as standby");
            ha.config = c;
        }
        Err(e) => tracing::warn!(%e, "cannot adopt epoch"),
    }
}

/// Standby: the primary is gone; ask to become primary of the next epoch (only a standby the
/// coordination service names may). Called again every round until it asks.
fn request_promotion(ha: &mut Ha, state: &LockState, now: Instant) {
    if ha.pending.is_some() || !ha.change_retry.may_change(now) {
        return;
    }
    let Some(r) = state.replica() else { return };
    if !ha.names_me_standby(&ha.config) || ha.config.epoch != r.epoch().0 {
        // The primary may have recorded us just before it died, and the record be on its way
        // through the watch (a death is seen within milliseconds now): wait for it a while.
        // Nothing is lost by waiting: without us nobody can serve anyway.
        let since = *ha.unrecorded_since.get_or_insert(now);
        if now.duration_since(since) < RECORD_GRACE {
            return;
        }
        tracing::error!("primary lost before this standby was recorded; cannot take over");
        ha.deposed = true;
        return;
    }
    let next = Configuration {
        epoch: r.epoch().0 + 1,
        primary: ha.me(),
        standbys: Vec::new(),
    };
    tracing::warn!(epoch = next.epoch, "primary lost: asking to be primary");
    ha.coord.advance(r.epoch().0, &ha.config, next);
    ha.pending = Some(Intent::Promote);
}

fn push_upstream(up: &mut Upstream, msg: &Message) {
    match up.out.push(msg) {
        Ok(()) => {}
        Err(EncodeError::FrameFull) => {
            let frame = up.out.finish();
            if let Err(e) = up.transport.send(frame) {
                tracing::debug!(%e, "standby link send failed");
            }
            up.out.clear();
            if let Err(e) = up.out.push(msg) {
                tracing::error!(?e, "cannot encode a message to the primary");
            }
        }
        Err(e) => tracing::error!(?e, "cannot encode a message to the primary"),
    }
}
