//! The replica state machine: one engine, its input log, the outputs it may release.

use std::collections::{BTreeMap, VecDeque};

use lockmgr_engine::{Config, Engine, FileId, Output, Request, RequestId, SessionId, Time};

use crate::{Ack, Append, Entry, Epoch, Input, Sequenced};

/// Most outputs a session's outbox keeps unacknowledged. A node acknowledges far more often
/// than this in normal operation; one that never does cannot make a replica grow without
/// bound. Resuming past a trimmed output fails ([`ResumeError::OutputsTrimmed`]).
pub const MAX_OUTBOX: usize = 1 << 16;

/// What a replica is in its epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Applies inputs, logs them, releases outputs once committed.
    Primary,
    /// Replays the primary's log; releases nothing until promoted.
    Standby,
    /// Learned that a newer epoch exists without being part of it: applies and releases
    /// nothing any more.
    Deposed,
}

/// The outcome of [`Replica::submit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Logged at this index and applied.
    Logged(u64),
    /// The session already sent this request (it is in the log): not applied again. Its reply
    /// is in the session's outbox, or still to come if it is pending.
    Duplicate,
    /// Not primary: nothing was applied.
    NotPrimary,
    /// The input names a session this replica does not have (never opened, or ended):
    /// nothing was applied; the caller answers the node itself.
    UnknownSession,
}

/// Why a configuration change was not applied to this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EpochError {
    #[error("epoch {to:?} does not follow this replica's epoch {from:?}")]
    NotNext { from: Epoch, to: Epoch },
    #[error("this replica is {0:?}, which cannot take this change")]
    WrongRole(Role),
}

/// Why a standby refused an [`Append`]. Exhaustive: it travels on the wire
/// (`lockmgr-proto`), whose codec must know every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AppendError {
    #[error("append of epoch {sent:?}, but this replica is in epoch {mine:?}")]
    EpochMismatch { sent: Epoch, mine: Epoch },
    #[error("log gap: expected entry {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("not a standby")]
    NotStandby,
}

/// Why a snapshot could not be taken or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot encoding failed: {0}")]
    Encode(postcard::Error),
    #[error("malformed snapshot: {0}")]
    Decode(postcard::Error),
    #[error("snapshot format {0} is not supported (this build speaks {SNAPSHOT_FORMAT})")]
    Format(u32),
    #[error("snapshot has {0} trailing bytes")]
    Trailing(usize),
}

/// Version of the snapshot encoding; a replica refuses snapshots of any other.
/// 2: a deferred open carries the durable request of an `OpenDurable`.
/// 3: I/O grants (opens holding one, recalls awaiting acks, locks queued behind a recall).
/// 4: a deferred open says whether it takes an I/O grant; grant counters; a rename waiter may
/// close its open (`BreakAndClose`).
/// 5: a named-stream open holds its base file's link (a delete-pending file waits for its
/// stream opens to close).
/// 6: change-notify registrations (directory -> watching sessions), a session's watch count,
/// the limit `max_watches` and the change-notify counters.
/// 7: a watched directory's path (share and path below it), for nodes that watch their part of
/// the filesystem for changes made outside SMB.
pub const SNAPSHOT_FORMAT: u32 = 7;

/// Everything a replacement standby needs: the engine and the replication bookkeeping that
/// replaying the log from the start would have produced.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotState {
    format: u32,
    engine: Engine,
    next_index: u64,
    sessions: BTreeMap<SessionId, SessionLog>,
    last_now: Time,
}

/// Why a node could not resume its session on this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    #[error("unknown session")]
    UnknownSession,
    #[error("the node claims output {claimed}, but this replica has produced only {produced}")]
    FromTheFuture { claimed: u64, produced: u64 },
    #[error("outputs after {received} were trimmed from the outbox")]
    OutputsTrimmed { received: u64 },
    #[error("not primary")]
    NotPrimary,
    #[error("the session belongs to another node")]
    WrongNode,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct SessionLog {
    /// Sequence number of the session's next output.
    next_seq: u64,
    /// Highest request id of this session that the log holds (Cancel aside).
    last_request: u64,
    /// Outputs not yet acknowledged by the node, oldest first, with the index of the log
    /// entry that produced each (an output may be sent only once that entry is committed).
    outbox: VecDeque<(u64, Sequenced)>,
    /// The node is connected to this replica and gets outputs as they commit; otherwise they
    /// wait in the outbox for [`Replica::resume`].
    attached: bool,
    /// Outputs below this were dropped unacknowledged because the outbox was full.
    trimmed_below: u64,
    /// The authenticated name of the node that owns the session.
    node: String,
}

/// One replica: an engine, the log of its inputs, the outputs it may release.
#[derive(Clone, Debug)]
pub struct Replica {
    role: Role,
    epoch: Epoch,
    engine: Engine,
    /// Index of the next entry: the next to assign (primary) or to accept (standby).
    next_index: u64,
    /// Entries below this are held by the standby (or need not be: serving alone).
    committed: u64,
    /// Whether this primary replicates to a standby in its epoch.
    replicated: bool,
    /// Primary: logged entries the standby has not acknowledged, oldest first.
    unacked: VecDeque<Entry>,
    /// Primary: entries below this index were handed out by `poll_append` already.
    sent_upto: u64,
    /// Primary: outputs waiting for their entry (the index) to commit.
    held: VecDeque<(u64, Sequenced)>,
    /// Outputs the caller may send now.
    ready: VecDeque<Sequenced>,
    sessions: BTreeMap<SessionId, SessionLog>,
    /// Time of the last applied entry: engine time never goes backwards, also across a
    /// failover to a replica whose clock started elsewhere.
    last_now: Time,
    /// Standby: an acknowledgement is due.
    ack_due: bool,
    /// Primary: orphaned deletes waiting for their entry to commit, then ready to hand out.
    held_deletes: VecDeque<(u64, FileId)>,
    ready_deletes: Vec<FileId>,
    /// Test-only fault: release outputs before the standby has the entry. A replicated
    /// lock manager built like this can lose acknowledged locks; the history checker's tests
    /// use it to show they catch that.
    reply_before_commit: bool,
}

impl Replica {
    /// A primary in `epoch`. `replicated`: whether the epoch names a standby (outputs wait for
    /// its acknowledgement) or this primary serves alone.
    pub fn primary(config: Config, epoch: Epoch, replicated: bool) -> Replica {
        Replica::new(Role::Primary, config, epoch, replicated)
    }

    /// A standby of `epoch`, starting from an empty engine: only for a primary that has
    /// applied nothing yet (its log from index 0) with the same `config`. Anything else joins
    /// through a snapshot ([`Replica::attach_standby`], [`Replica::standby_from_snapshot`]), which
    /// also carries the primary's engine configuration. A restarted replica never rejoins with
    /// an empty engine: the coordination record names replicas by incarnation.
    pub fn standby(config: Config, epoch: Epoch) -> Replica {
        Replica::new(Role::Standby, config, epoch, false)
    }

    fn new(role: Role, config: Config, epoch: Epoch, replicated: bool) -> Replica {
        Replica {
            role,
            epoch,
            engine: Engine::new(config),
            next_index: 0,
            committed: 0,
            replicated,
            unacked: VecDeque::new(),
            sent_upto: 0,
            held: VecDeque::new(),
            ready: VecDeque::new(),
            sessions: BTreeMap::new(),
            last_now: Time(0),
            ack_due: false,
            held_deletes: VecDeque::new(),
            ready_deletes: Vec::new(),
            reply_before_commit: false,
        }
    }

    /// This replica's state as bytes, for [`Replica::standby_from_snapshot`] on another
    /// host. What the primary holds back is in the outboxes already (an outbox takes every
    /// output when it is produced), so the snapshot needs no more.
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        #[derive(serde::Serialize)]
        struct SnapshotRef<'a> {
            format: u32,
            engine: &'a Engine,
            next_index: u64,
            sessions: &'a BTreeMap<SessionId, SessionLog>,
            last_now: Time,
        }
        postcard::to_stdvec(&SnapshotRef {
            format: SNAPSHOT_FORMAT,
            engine: &self.engine,
            next_index: self.next_index,
            sessions: &self.sessions,
            last_now: self.last_now,
        })
        .map_err(SnapshotError::Encode)
    }

    /// A standby of `epoch` whose log continues where the snapshot's primary was.
    pub fn standby_from_snapshot(bytes: &[u8], epoch: Epoch) -> Result<Replica, SnapshotError> {
        let (state, rest): (SnapshotState, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(SnapshotError::Decode)?;
        if state.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format(state.format));
        }
        if !rest.is_empty() {
            return Err(SnapshotError::Trailing(rest.len()));
        }
        let mut sessions = state.sessions;
        for log in sessions.values_mut() {
            // Sessions are attached to the primary, not to us.
            log.attached = false;
        }
        Ok(Replica {
            role: Role::Standby,
            epoch,
            engine: state.engine,
            next_index: state.next_index,
            committed: state.next_index,
            replicated: false,
            unacked: VecDeque::new(),
            sent_upto: state.next_index,
            held: VecDeque::new(),
            ready: VecDeque::new(),
            sessions,
            last_now: state.last_now,
            ack_due: false,
            held_deletes: VecDeque::new(),
            ready_deletes: Vec::new(),
            reply_before_commit: false,
        })
    }

    /// A session's outputs not yet acknowledged by its node, oldest first.
    pub fn outbox(&self, session: SessionId) -> impl Iterator<Item = &Sequenced> + '_ {
        self.sessions
            .get(&session)
            .into_iter()
            .flat_map(|log| log.outbox.iter().map(|(_, s)| s))
    }

    /// Test-only: see the field. Never set in a lock manager.
    #[doc(hidden)]
    pub fn set_reply_before_commit(&mut self, on: bool) {
        self.reply_before_commit = on;
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Index of the next log entry.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Entries below this are committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Engine time of the last applied entry. A promoted replica's daemon continues its clock
    /// from here (its own process started at another time).
    pub fn last_now(&self) -> Time {
        self.last_now
    }

    /// Entries logged but not yet acknowledged by the standby.
    pub fn replication_lag(&self) -> u64 {
        self.next_index - self.committed
    }

    /// Sessions this replica knows, with the sequence number of their last output.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, u64)> + '_ {
        self.sessions
            .iter()
            .map(|(s, log)| (*s, log.next_seq.saturating_sub(1)))
    }

    /// The node that owns `session`.
    pub fn session_node(&self, session: SessionId) -> Option<&str> {
        self.sessions.get(&session).map(|log| log.node.as_str())
    }

    /// Earliest engine time at which [`Input::Timeout`] should be submitted.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.engine.poll_timeout()
    }

    /// Primary: log and apply one input. `now` is clamped so engine time never goes back.
    pub fn submit(&mut self, now: Time, input: Input) -> Submitted {
        if self.role != Role::Primary {
            return Submitted::NotPrimary;
        }
        match &input {
            Input::Request {
                session,
                request,
                req,
            } => {
                let Some(log) = self.sessions.get(session) else {
                    return Submitted::UnknownSession;
                };
                // A Cancel carries the id of the request it cancels, so it cannot be told
                // from a resend by id; a repeated Cancel only earns a second NotFound reply.
                let is_cancel = matches!(req, Request::Cancel { .. });
                if !is_cancel && request.0 <= log.last_request {
                    return Submitted::Duplicate;
                }
            }
            Input::OutputsReceived { session, .. } | Input::EndSession { session }
                if !self.sessions.contains_key(session) =>
            {
                return Submitted::UnknownSession;
            }
            _ => {}
        }
        let now = Time(now.0.max(self.last_now.0));
        let index = self.next_index;
        let entry = Entry { index, now, input };
        self.apply(&entry);
        self.next_index += 1;
        if self.replicated {
            self.unacked.push_back(entry);
        } else {
            self.committed = self.next_index;
        }
        self.release_committed();
        Submitted::Logged(index)
    }

    /// Primary: take the engine's orphaned deletes (logged, so the standby takes them too).
    /// The files come out of [`Replica::poll_orphaned_deletes`] once the entry is committed:
    /// nothing is unlinked on the strength of state a failover could undo.
    pub fn take_orphaned_deletes(&mut self, now: Time) {
        self.submit(now, Input::TakeOrphanedDeletes);
    }

    /// Primary: orphaned deletes whose entry is committed; the daemon has one node unlink them.
    pub fn poll_orphaned_deletes(&mut self) -> Vec<FileId> {
        std::mem::take(&mut self.ready_deletes)
    }

    /// Primary: every entry not yet handed out for the standby, if any.
    pub fn poll_append(&mut self) -> Option<Append> {
        self.poll_append_bounded(|_| true)
    }

    /// Primary: the next entries not yet handed out for the standby, as many as `fits` accepts
    /// in order (the caller's frame budget; the first entry is always taken so that progress
    /// is made). Entries are marked sent only when returned.
    pub fn poll_append_bounded(&mut self, mut fits: impl FnMut(&Entry) -> bool) -> Option<Append> {
        if self.role != Role::Primary || !self.replicated {
            return None;
        }
        let first = self.unacked.front()?.index;
        let skip = self.sent_upto.saturating_sub(first) as usize;
        let mut entries = Vec::new();
        for e in self.unacked.iter().skip(skip) {
            if !entries.is_empty() && !fits(e) {
                break;
            }
            if entries.is_empty() {
                fits(e);
            }
            entries.push(e.clone());
        }
        let last = entries.last()?.index;
        self.sent_upto = last + 1;
        Some(Append {
            epoch: self.epoch,
            entries,
        })
    }

    /// Primary: send every unacknowledged entry again (a new connection to the standby, or
    /// a gap the standby reported).
    pub fn rewind_append(&mut self) {
        self.sent_upto = self.committed;
    }

    /// Primary: the standby's acknowledgement. Acks of other epochs are ignored.
    pub fn on_ack(&mut self, ack: Ack) {
        if self.role != Role::Primary || ack.epoch != self.epoch || !self.replicated {
            return;
        }
        let upto = ack.next_index.min(self.next_index);
        if upto <= self.committed {
            return;
        }
        self.committed = upto;
        while self.unacked.front().is_some_and(|e| e.index < upto) {
            self.unacked.pop_front();
        }
        self.sent_upto = self.sent_upto.max(upto);
        self.release_committed();
    }

    /// Primary: the standby refused an append. A gap is resent; a newer epoch deposes this
    /// primary (returns true: it must stop serving and send its nodes to the new primary).
    pub fn on_append_refused(&mut self, err: AppendError) -> bool {
        match err {
            AppendError::Gap { expected, .. } => {
                self.sent_upto = expected.max(self.committed);
                false
            }
            AppendError::EpochMismatch { mine, .. } if mine > self.epoch => {
                self.depose();
                true
            }
            AppendError::EpochMismatch { sent, .. } if sent < self.epoch => {
                // Sent before this primary moved to its current epoch: send again.
                self.sent_upto = self.committed;
                false
            }
            _ => false,
        }
    }

    /// The coordination service says a newer epoch exists that this replica is not primary
    /// or standby of: stop. Held outputs are dropped: they were never seen by anyone.
    pub fn depose(&mut self) {
        self.role = Role::Deposed;
        self.held.clear();
        self.ready.clear();
        self.unacked.clear();
    }

    fn check_next(&self, epoch: Epoch, role: Role) -> Result<(), EpochError> {
        if self.role != role {
            return Err(EpochError::WrongRole(self.role));
        }
        if self.epoch.0.checked_add(1) != Some(epoch.0) {
            return Err(EpochError::NotNext {
                from: self.epoch,
                to: epoch,
            });
        }
        Ok(())
    }

    /// Primary: the coordination service recorded `epoch` (this epoch + 1), in which this
    /// primary serves alone (its standby is gone). Everything logged is committed now.
    pub fn serve_alone(&mut self, epoch: Epoch) -> Result<(), EpochError> {
        self.check_next(epoch, Role::Primary)?;
        self.epoch = epoch;
        self.replicated = false;
        self.unacked.clear();
        self.committed = self.next_index;
        self.sent_upto = self.next_index;
        self.release_committed();
        Ok(())
    }

    /// Primary: a new standby asked to join. Returns the snapshot it starts from and the
    /// index its log continues at; from now on outputs wait for its acknowledgement (still in
    /// this epoch), so once it has installed the snapshot and acknowledged, it holds
    /// everything any node has seen. Only then may the caller record a configuration that
    /// names it ([`Replica::advance_epoch`]).
    pub fn attach_standby(&mut self) -> Result<(Vec<u8>, u64), SnapshotError> {
        let bytes = self.snapshot()?;
        self.replicated = true;
        self.unacked.clear();
        self.committed = self.next_index;
        self.sent_upto = self.next_index;
        Ok((bytes, self.next_index))
    }

    /// Primary: the coordination service recorded `epoch` (this epoch + 1), which names the
    /// standby attached with [`Replica::attach_standby`]. Every entry not yet acknowledged is
    /// sent again, in the new epoch: an acknowledgement of the old epoch arriving from now on
    /// is ignored by [`Replica::on_ack`], so without a resend entries the standby already
    /// acknowledged would wait for an acknowledgement that only the next logged input would
    /// bring (and their replies with it).
    pub fn advance_epoch(&mut self, epoch: Epoch) -> Result<(), EpochError> {
        self.check_next(epoch, Role::Primary)?;
        self.epoch = epoch;
        self.sent_upto = self.committed;
        Ok(())
    }

    /// Standby: this replica's primary moved to `epoch`, and the caller checked with the
    /// coordination service that `epoch` names this replica (with its incarnation) as standby.
    pub fn adopt_epoch(&mut self, epoch: Epoch) -> Result<(), EpochError> {
        self.check_next(epoch, Role::Standby)?;
        self.epoch = epoch;
        Ok(())
    }

    /// Standby: entries from the primary. Returns an error to send back instead of an ack.
    pub fn on_append(&mut self, append: &Append) -> Result<(), AppendError> {
        if self.role != Role::Standby {
            return Err(AppendError::NotStandby);
        }
        if append.epoch != self.epoch {
            return Err(AppendError::EpochMismatch {
                sent: append.epoch,
                mine: self.epoch,
            });
        }
        for entry in &append.entries {
            if entry.index < self.next_index {
                continue; // a retransmission of what we hold
            }
            if entry.index > self.next_index {
                self.ack_due = true;
                return Err(AppendError::Gap {
                    expected: self.next_index,
                    got: entry.index,
                });
            }
            self.apply(entry);
            self.next_index += 1;
            self.committed = self.next_index;
        }
        self.ack_due = true;
        // A standby releases nothing: outputs stay in the outboxes until promotion.
        self.held.clear();
        self.ready.clear();
        Ok(())
    }

    /// Standby: the acknowledgement to send, if one is due.
    pub fn poll_ack(&mut self) -> Option<Ack> {
        if self.role != Role::Standby || !std::mem::take(&mut self.ack_due) {
            return None;
        }
        Some(Ack {
            epoch: self.epoch,
            next_index: self.next_index,
        })
    }

    /// Standby: the coordination service recorded `epoch` (this epoch + 1), in which this
    /// replica is primary (`replicated`: with a standby of its own). Everything it holds is
    /// committed; nodes get their outputs through [`Replica::resume`].
    pub fn promote(&mut self, epoch: Epoch, replicated: bool) -> Result<(), EpochError> {
        self.check_next(epoch, Role::Standby)?;
        self.role = Role::Primary;
        self.epoch = epoch;
        self.replicated = replicated;
        // Nodes were connected to the old primary: each gets its outputs once it resumes here.
        for log in self.sessions.values_mut() {
            log.attached = false;
        }
        self.committed = self.next_index;
        self.sent_upto = self.next_index;
        self.unacked.clear();
        self.held.clear();
        self.ready.clear();
        Ok(())
    }

    /// Primary: a node (re-)attached `session` having received its outputs up to `received`:
    /// everything after it that is committed is queued for sending again, in order, and the
    /// rest follows as it commits. Until then the session's outputs only wait in its outbox
    /// (after a promotion, or [`Replica::detach`]), so the node never sees them out of order.
    pub fn resume(
        &mut self,
        session: SessionId,
        node: &str,
        received: u64,
    ) -> Result<usize, ResumeError> {
        if self.role != Role::Primary {
            return Err(ResumeError::NotPrimary);
        }
        let log = self
            .sessions
            .get_mut(&session)
            .ok_or(ResumeError::UnknownSession)?;
        if log.node != node {
            // Never let one node take over another's locks by naming its session.
            return Err(ResumeError::WrongNode);
        }
        let produced = log.next_seq.saturating_sub(1);
        if received > produced {
            return Err(ResumeError::FromTheFuture {
                claimed: received,
                produced,
            });
        }
        if received + 1 < log.trimmed_below {
            return Err(ResumeError::OutputsTrimmed { received });
        }
        log.attached = true;
        // Whatever was queued for this session is replaced by the outbox's tail.
        self.ready.retain(|s| s.session() != session);
        self.held.retain(|(_, s)| s.session() != session);
        let mut queued = 0;
        let mut late = false;
        for (index, item) in log.outbox.iter().filter(|(_, s)| s.seq > received) {
            if *index < self.committed && !late {
                self.ready.push_back(item.clone());
            } else {
                late = true;
                self.held.push_back((*index, item.clone()));
            }
            queued += 1;
        }
        if late {
            // Keep `held` in log order (a stable sort keeps each session's order).
            self.held.make_contiguous().sort_by_key(|(index, _)| *index);
        }
        Ok(queued)
    }

    /// Primary: the node's connection is gone but its session stays (it may resume here or
    /// on another replica): its outputs wait in the outbox from now on.
    pub fn detach(&mut self, session: SessionId) {
        if let Some(log) = self.sessions.get_mut(&session) {
            log.attached = false;
        }
        self.ready.retain(|s| s.session() != session);
        self.held.retain(|(_, s)| s.session() != session);
    }

    /// Next output the caller may send (replies and notifications, committed).
    pub fn poll_output(&mut self) -> Option<Sequenced> {
        self.ready.pop_front()
    }

    /// Apply one entry to the engine and sequence what it produced (both roles alike, so
    /// sequence numbers and outboxes agree).
    fn apply(&mut self, entry: &Entry) {
        self.last_now = Time(self.last_now.0.max(entry.now.0));
        let now = entry.now;
        match &entry.input {
            Input::OpenSession { session, node } => {
                self.engine.open_session(*session);
                self.sessions.entry(*session).or_insert_with(|| SessionLog {
                    next_seq: 1,
                    attached: true,
                    node: node.clone(),
                    ..SessionLog::default()
                });
            }
            Input::EndSession { session } => {
                self.engine.end_session(now, *session);
                self.sessions.remove(session);
            }
            Input::Request {
                session,
                request,
                req,
            } => {
                if !matches!(req, Request::Cancel { .. }) {
                    if let Some(log) = self.sessions.get_mut(session) {
                        log.last_request = log.last_request.max(request.0);
                    }
                }
                self.engine
                    .handle(now, *session, RequestId(request.0), req.clone());
            }
            Input::Timeout => self.engine.handle_timeout(now),
            Input::TakeOrphanedDeletes => {
                let taken = self.engine.take_orphaned_deletes();
                if self.role == Role::Primary {
                    for f in taken {
                        self.held_deletes.push_back((entry.index, f));
                    }
                }
            }
            Input::OutputsReceived { session, seq } => {
                if let Some(log) = self.sessions.get_mut(session) {
                    while log.outbox.front().is_some_and(|(_, s)| s.seq <= *seq) {
                        log.outbox.pop_front();
                    }
                }
            }
        }
        while let Some(output) = self.engine.poll_output() {
            let session = match &output {
                Output::Reply { session, .. } | Output::Notify { session, .. } => *session,
            };
            // The engine only addresses sessions it knows, and those are in `sessions`.
            let Some(log) = self.sessions.get_mut(&session) else {
                continue;
            };
            let seq = log.next_seq;
            log.next_seq += 1;
            let item = Sequenced { seq, output };
            if log.outbox.len() >= MAX_OUTBOX {
                if let Some((_, old)) = log.outbox.pop_front() {
                    log.trimmed_below = old.seq + 1;
                }
            }
            log.outbox.push_back((entry.index, item.clone()));
            if self.role == Role::Primary && log.attached {
                self.held.push_back((entry.index, item));
            }
        }
    }

    fn release_committed(&mut self) {
        while self
            .held_deletes
            .front()
            .is_some_and(|(index, _)| *index < self.committed)
        {
            if let Some((_, f)) = self.held_deletes.pop_front() {
                self.ready_deletes.push(f);
            }
        }
        while let Some((index, _)) = self.held.front() {
            if *index >= self.committed && !self.reply_before_commit {
                break;
            }
            if let Some((_, item)) = self.held.pop_front() {
                self.ready.push_back(item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary_with_session() -> (Replica, SessionId) {
        primary_with_session_in(true)
    }

    /// A primary of epoch 1 with one node session; `with_standby`: as in
    /// [`Replica::primary`] (false: it serves alone).
    fn primary_with_session_in(with_standby: bool) -> (Replica, SessionId) {
        let mut p = Replica::primary(Config::default(), Epoch(1), with_standby);
        let session = SessionId(5);
        p.submit(
            Time(1),
            Input::OpenSession {
                session,
                node: "node-a".into(),
            },
        );
        (p, session)
    }

    #[test]
    fn only_the_owning_node_resumes_a_session() {
        let (mut p, session) = primary_with_session();
        assert_eq!(p.resume(session, "node-b", 0), Err(ResumeError::WrongNode));
        assert_eq!(p.resume(session, "node-a", 0), Ok(0));
        assert_eq!(
            p.resume(session, "node-a", 3),
            Err(ResumeError::FromTheFuture {
                claimed: 3,
                produced: 0
            })
        );
        assert_eq!(
            p.resume(SessionId(6), "node-a", 0),
            Err(ResumeError::UnknownSession)
        );
    }

    #[test]
    fn a_standby_refuses_other_epochs_and_gaps() {
        let (mut p, _) = primary_with_session();
        let append = p.poll_append().expect("an append");
        let mut s = Replica::standby(Config::default(), Epoch(2));
        assert_eq!(
            s.on_append(&append),
            Err(AppendError::EpochMismatch {
                sent: Epoch(1),
                mine: Epoch(2)
            })
        );
        // A primary told of a newer epoch by its standby is deposed and releases nothing.
        assert!(p.on_append_refused(AppendError::EpochMismatch {
            sent: Epoch(1),
            mine: Epoch(2)
        }));
        assert_eq!(p.role(), Role::Deposed);
        assert_eq!(p.submit(Time(2), Input::Timeout), Submitted::NotPrimary);

        let mut later = append.clone();
        later.epoch = Epoch(2);
        later.entries[0].index = 3;
        assert_eq!(
            s.on_append(&later),
            Err(AppendError::Gap {
                expected: 0,
                got: 3
            })
        );
    }

    /// A CREATE with a durable request (`OpenDurable`, one request) reaches a standby whole,
    /// by the log and by a snapshot: after a failover the durable open outlives its node.
    #[test]
    fn open_durable_reaches_the_standby_by_append_and_by_snapshot() {
        let (mut p, session) = primary_with_session();
        let open = lockmgr_engine::OpenRequest {
            file: FileId(1),
            access: 3,
            share: 7,
            oplock: lockmgr_engine::OplockRequest::Oplock(lockmgr_engine::OplockLevel::Batch),
            ..Default::default()
        };
        let durable = lockmgr_engine::DurableRequest {
            key: 77,
            timeout_ms: 60_000,
            persistent: false,
            blob: b"share\0f".to_vec(),
        };
        p.submit(
            Time(2),
            Input::Request {
                session,
                request: RequestId(1),
                req: Request::OpenDurable { open, durable },
            },
        );
        let mut by_append = Replica::standby(Config::default(), Epoch(1));
        while let Some(a) = p.poll_append() {
            by_append.on_append(&a).expect("accepted");
        }
        let snapshot = p.snapshot().expect("snapshot");
        let by_snapshot = Replica::standby_from_snapshot(&snapshot, Epoch(1)).expect("decoded");
        for mut s in [by_append, by_snapshot] {
            s.promote(Epoch(2), false).expect("promoted");
            // The node dies; another node finds the disconnected durable open by its key.
            let other = SessionId(6);
            s.submit(Time(3), Input::EndSession { session });
            s.submit(
                Time(4),
                Input::OpenSession {
                    session: other,
                    node: "node-b".into(),
                },
            );
            s.submit(
                Time(5),
                Input::Request {
                    session: other,
                    request: RequestId(1),
                    req: Request::DurableLookup { key: 77 },
                },
            );
            let replies: Vec<lockmgr_engine::Reply> = std::iter::from_fn(|| s.poll_output())
                .filter_map(|o| match o.output {
                    lockmgr_engine::Output::Reply { session, reply, .. } if session == other => {
                        Some(reply)
                    }
                    _ => None,
                })
                .collect();
            assert!(
                matches!(replies.as_slice(), [lockmgr_engine::Reply::Durable { .. }]),
                "{replies:?}"
            );
        }
    }

    /// An open that took an I/O grant with its reply (`OpenRequest::io_grant`) holds it on a
    /// standby too, by the log and by a snapshot: after a failover, another node's lock on
    /// the file still recalls it from the node that opened.
    #[test]
    fn an_open_with_an_io_grant_reaches_the_standby_by_append_and_by_snapshot() {
        let (mut p, session) = primary_with_session_in(false);
        let open = |io_grant| lockmgr_engine::OpenRequest {
            file: FileId(1),
            access: 3,
            share: 7,
            io_grant,
            ..Default::default()
        };
        p.submit(
            Time(2),
            Input::Request {
                session,
                request: RequestId(1),
                req: Request::Open(open(true)),
            },
        );
        let granted = std::iter::from_fn(|| p.poll_output()).any(|o| {
            matches!(
                o.output,
                lockmgr_engine::Output::Reply {
                    reply: lockmgr_engine::Reply::OpenedIo { .. },
                    ..
                }
            )
        });
        assert!(granted, "the primary grants I/O with the open");
        let (snapshot, _) = p.attach_standby().expect("snapshot");
        let by_snapshot = Replica::standby_from_snapshot(&snapshot, Epoch(1)).expect("decoded");
        let mut by_append = Replica::standby(Config::default(), Epoch(1));
        let mut from_start = Replica::primary(Config::default(), Epoch(1), true);
        for (i, input) in [
            Input::OpenSession {
                session,
                node: "node-a".into(),
            },
            Input::Request {
                session,
                request: RequestId(1),
                req: Request::Open(open(true)),
            },
        ]
        .into_iter()
        .enumerate()
        {
            from_start.submit(Time(1 + i as u64), input);
        }
        while let Some(a) = from_start.poll_append() {
            by_append.on_append(&a).expect("accepted");
        }
        for mut s in [by_append, by_snapshot] {
            s.promote(Epoch(2), false).expect("promoted");
            let other = SessionId(6);
            s.submit(
                Time(4),
                Input::OpenSession {
                    session: other,
                    node: "node-b".into(),
                },
            );
            for (n, req) in [
                Request::Open(open(false)),
                Request::Lock {
                    open: lockmgr_engine::OpenId(2),
                    ranges: vec![lockmgr_engine::LockRange {
                        offset: 0,
                        length: 1,
                        exclusive: true,
                    }],
                    fail_immediately: true,
                },
            ]
            .into_iter()
            .enumerate()
            {
                s.submit(
                    Time(5 + n as u64),
                    Input::Request {
                        session: other,
                        request: RequestId(1 + n as u64),
                        req,
                    },
                );
            }
            // The opener's node has not resumed on the new primary yet: its recall waits in
            // the session's outbox.
            while s.poll_output().is_some() {}
            let recalled = s.outbox(session).any(|o| {
                matches!(
                    o.output,
                    lockmgr_engine::Output::Notify {
                        notification: lockmgr_engine::Notification::IoRecall { .. },
                        ..
                    }
                )
            });
            assert!(recalled, "the grant is the standby's too");
        }
    }

    /// Change-notify registrations are engine state: a standby made by append and one made
    /// from a snapshot both have node A's watch, so once promoted they forward node B's change
    /// in the watched directory to node A (into its outbox until it resumes), and tell a node
    /// that opens a session after the failover which directories are watched.
    #[test]
    fn a_watch_registration_survives_failover_by_append_and_by_snapshot() {
        use lockmgr_engine::{DirChange, Notification, Output};
        let (mut p, session) = primary_with_session_in(false);
        let dir = FileId(0xd1);
        let watch = Input::Request {
            session,
            request: RequestId(1),
            req: Request::WatchDir {
                dir,
                tree: true,
                path: "share\\docs".into(),
            },
        };
        p.submit(Time(2), watch.clone());
        while p.poll_output().is_some() {}
        let (snapshot, _) = p.attach_standby().expect("snapshot");
        let by_snapshot = Replica::standby_from_snapshot(&snapshot, Epoch(1)).expect("decoded");
        let mut by_append = Replica::standby(Config::default(), Epoch(1));
        let mut from_start = Replica::primary(Config::default(), Epoch(1), true);
        from_start.submit(
            Time(1),
            Input::OpenSession {
                session,
                node: "node-a".into(),
            },
        );
        from_start.submit(Time(2), watch);
        while let Some(a) = from_start.poll_append() {
            by_append.on_append(&a).expect("accepted");
        }
        for mut s in [by_append, by_snapshot] {
            s.promote(Epoch(2), false).expect("promoted");
            let other = SessionId(6);
            s.submit(
                Time(4),
                Input::OpenSession {
                    session: other,
                    node: "node-b".into(),
                },
            );
            let change = DirChange {
                dir,
                action: 1,
                filter: 1,
                name: "sub\\x.txt".into(),
                subtree: true,
            };
            s.submit(
                Time(5),
                Input::Request {
                    session: other,
                    request: RequestId(1),
                    req: Request::DirChange(change.clone()),
                },
            );
            let to_b: Vec<Output> = std::iter::from_fn(|| s.poll_output())
                .map(|o| o.output)
                .filter(|o| matches!(o, Output::Notify { .. }))
                .collect();
            assert_eq!(
                to_b,
                vec![Output::Notify {
                    session: other,
                    notification: Notification::DirWatched {
                        dir,
                        state: lockmgr_engine::watched::DIR | lockmgr_engine::watched::TREE,
                        path: "share\\docs".into(),
                    },
                }],
                "the node opening a session learns the watched directory"
            );
            let forwarded = s.outbox(session).any(|o| {
                o.output
                    == Output::Notify {
                        session,
                        notification: Notification::DirChanged(change.clone()),
                    }
            });
            assert!(forwarded, "the watch is the standby's too");
        }
    }

    /// Request 1 of `session`: an open of file 1.
    fn open_request(session: SessionId) -> Input {
        Input::Request {
            session,
            request: RequestId(1),
            req: Request::Open(lockmgr_engine::OpenRequest {
                file: FileId(1),
                access: 1,
                share: 7,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn outputs_wait_for_the_standby() {
        let (mut p, session) = primary_with_session();
        let open = open_request(session);
        assert_eq!(p.submit(Time(2), open.clone()), Submitted::Logged(1));
        assert_eq!(p.submit(Time(3), open), Submitted::Duplicate);
        assert!(
            p.poll_output().is_none(),
            "released before the standby had it"
        );
        let mut s = Replica::standby(Config::default(), Epoch(1));
        let append = p.poll_append().expect("an append");
        s.on_append(&append).expect("accepted");
        assert!(s.poll_output().is_none(), "a standby releases nothing");
        p.on_ack(s.poll_ack().expect("an ack"));
        let out = p.poll_output().expect("released after the ack");
        assert_eq!(out.seq, 1);
        assert_eq!(s.outbox(session).next(), Some(&out));
    }

    /// A standby joins a primary that serves alone, and the coordination service records it
    /// (epoch 1 -> 2) while an append of epoch 1 is on its way: the standby takes the entries
    /// in epoch 1, and its acknowledgement reaches the primary only after the primary moved
    /// to epoch 2, which ignores acknowledgements of other epochs. The entries must then be
    /// sent again in the new epoch; otherwise nothing is ever acknowledged again until some
    /// other input is logged, and the reply waits (lockmgrd's nodes stalled for 30 s in the
    /// randomized replication tests, until a lease timeout logged an entry).
    #[test]
    fn entries_acknowledged_in_the_old_epoch_are_sent_again_in_the_recorded_one() {
        let (mut p, session) = primary_with_session_in(false);
        let (snapshot, _ready_at) = p.attach_standby().expect("snapshot");
        let mut s = Replica::standby_from_snapshot(&snapshot, Epoch(1)).expect("installed");
        let open = open_request(session);
        assert_eq!(p.submit(Time(2), open), Submitted::Logged(1));
        let append = p.poll_append().expect("an append");
        assert_eq!(append.epoch, Epoch(1));
        s.on_append(&append).expect("accepted");
        let stale_ack = s.poll_ack().expect("an ack");
        // The record lands at both replicas before the primary reads the acknowledgement.
        s.adopt_epoch(Epoch(2)).expect("standby recorded");
        p.advance_epoch(Epoch(2)).expect("primary recorded");
        p.on_ack(stale_ack);
        // The link carries whatever the primary sends from now on, and the answers back.
        for _ in 0..4 {
            while let Some(append) = p.poll_append() {
                match s.on_append(&append) {
                    Ok(()) => {
                        if let Some(ack) = s.poll_ack() {
                            p.on_ack(ack);
                        }
                    }
                    Err(refusal) => {
                        assert!(!p.on_append_refused(refusal), "deposed by {refusal:?}");
                    }
                }
            }
        }
        let out = p
            .poll_output()
            .expect("the reply is released once the standby acknowledges in the new epoch");
        assert_eq!(out.seq, 1);
        assert_eq!(p.committed(), p.next_index());
    }
}
