//! Primary/standby replication of the lock engine, with no I/O and no clock.
//!
//! The lock engine is deterministic: the same inputs, stamped with the same times, give the same
//! state and the same outputs in the same order. So a standby does not copy state; it replays the
//! primary's *input log* into its own engine (state-machine replication, primary-backup). The
//! primary appends every engine input to the log as it applies it, and holds back every reply or
//! notification the input produced until the standby has acknowledged the entry: nothing a node
//! can observe is ever missing on the standby ("every state change that a reply depends on
//! reaches the standby before the reply leaves the primary").
//!
//! # Epochs and fencing (Vertical Paxos / FaRM style)
//!
//! Who is primary and who is standby is a *configuration*, numbered by an [`Epoch`] that only an
//! external coordination service (etcd) changes, by compare-and-swap; the fast path never
//! touches it. Every [`Append`] and [`Ack`] carries the epoch, and a standby refuses appends of
//! any other epoch. A primary that cannot reach its standby therefore cannot commit (and so
//! cannot reply) in its epoch; it may only go on alone after the coordination service has
//! recorded a new epoch in which it serves alone ([`Replica::serve_alone`]), and the standby may
//! only take over after recording a new epoch in which it is primary ([`Replica::promote`]). At
//! most one of the two compare-and-swaps succeeds, so at most one of them ever grants again.
//!
//! # What nodes see across a failover
//!
//! Each session's outputs carry a sequence number ([`Sequenced::seq`]), assigned identically on
//! every replica because the engine is deterministic. Every replica keeps a session's outputs
//! in an outbox until the node acknowledges them ([`Input::OutputsReceived`], replicated lazily:
//! a late trim only means a resend the node drops as a duplicate). After a failover a node
//! re-attaches to the new primary with the last sequence number it received
//! ([`Replica::resume`]), gets everything after it, and resends the requests it has no reply
//! for; requests the log already holds are recognised by request id ([`Submitted::Duplicate`])
//! and not applied twice (request ids of a session increase, and one session's requests arrive
//! in order over one transport connection).
//!
//! The [`history`] module checks runs of this protocol (and of the real daemons) for the two
//! failures replication exists to prevent: two conflicting byte-range locks held at once, and
//! an acknowledged lock that vanished.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]

mod config;
pub mod fuzzing;
pub mod history;
mod replica;

pub use config::{ConfigError, Configuration, Member, MAX_STANDBYS};

pub use replica::{
    AppendError, EpochError, Replica, ResumeError, Role, SnapshotError, Submitted, MAX_OUTBOX,
    SNAPSHOT_FORMAT,
};

use lockmgr_engine::{Output, Request, RequestId, SessionId, Time};

/// A configuration number. Only the coordination service issues new ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

/// One input of the engine, as the log records it. Exhaustive on purpose: the log codec
/// (`lockmgr-proto`) must be updated with every new input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// A node's session was established ([`lockmgr_engine::Engine::open_session`]). `node` is
    /// the authenticated node name: only that node may resume the session elsewhere.
    OpenSession { session: SessionId, node: String },
    /// A node's session ended: its non-durable state is released
    /// ([`lockmgr_engine::Engine::end_session`]).
    EndSession { session: SessionId },
    /// A request of a session ([`lockmgr_engine::Engine::handle`]).
    Request {
        session: SessionId,
        request: RequestId,
        req: Request,
    },
    /// Due timers fired ([`lockmgr_engine::Engine::handle_timeout`]).
    Timeout,
    /// The daemon took the orphaned deletes ([`lockmgr_engine::Engine::take_orphaned_deletes`]);
    /// taking them changes what later opens of those files get, so it is an input too.
    TakeOrphanedDeletes,
    /// The node has received every output of `session` up to and including `seq`: replicas may
    /// drop them from the outbox. No effect on the engine.
    OutputsReceived { session: SessionId, seq: u64 },
}

/// One log entry: the input, the engine time it was applied at, and its position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub index: u64,
    pub now: Time,
    pub input: Input,
}

/// An engine output with its per-session sequence number (from 1).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sequenced {
    pub seq: u64,
    pub output: Output,
}

impl Sequenced {
    pub fn session(&self) -> SessionId {
        match &self.output {
            Output::Reply { session, .. } | Output::Notify { session, .. } => *session,
        }
    }
}

/// Primary to standby: consecutive log entries of `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    pub epoch: Epoch,
    pub entries: Vec<Entry>,
}

/// Standby to primary: every entry below `next_index` of `epoch` is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub epoch: Epoch,
    pub next_index: u64,
}
