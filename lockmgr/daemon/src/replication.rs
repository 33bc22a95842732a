//! A replicated lock manager: this lockmgrd as primary or standby of the cluster's lock state.
//!
//! The replication protocol itself (input log, held outputs, epochs, resumption) is
//! `lockmgr-replica`, with no I/O; this module carries it over the daemon's transports and
//! drives the epoch changes through the coordination service (etcd, [`crate::coordination`]):
//!
//! * Start: the first replica to reach etcd installs epoch 1 naming itself primary. A later
//!   one connects to the primary over the same transport the nodes use, authenticates like a
//!   node, sends `ReplicaAttach`, installs the snapshot it gets and applies the log that
//!   follows, acknowledging every append. Once it holds everything, the primary records it as
//!   standby (epoch + 1) and the standby adopts that epoch when it sees the record.
//! * The primary holds every reply and notification until the standby has acknowledged the log
//!   entry that produced it (`Replica` does that); appends go out at the end of every poll round.
//! * Failure: a partner silent for `failover` (or whose connection dropped) is declared dead.
//!   The primary then records an epoch in which it serves alone; the standby records an epoch
//!   in which it is primary. Both are compare-and-swaps from the same epoch, so at most one
//!   wins; the loser is fenced (its process stops: restarted, it joins again as a standby).
//!   A fenced primary cannot commit anything meanwhile: its standby refuses appends of any
//!   epoch but its own, and outputs wait for the standby's acknowledgement.
//! * Nodes reconnect to whichever address answers and resume their session there
//!   (`ResumeSession`): the new primary resends every output they missed.
//!
//! This module starts a replica ([`start`]); what the event loop does as one lives with the
//! loop, in `server/replicated.rs`.

use std::time::{Duration, Instant};

use lockmgr_client::handshake;
use lockmgr_client::{ClientOptions, TransportSpec};
use lockmgr_coord::{Configuration, Coordinator, Member};
use lockmgr_proto::{FrameBuf, Message};
use lockmgr_replica::{Epoch, Replica};
use lockmgr_transport::ServerTransport;
use rand::RngCore;

use crate::coordination::CoordThread;
use crate::ha::{Ha, Upstream};
use crate::server::replicated::with_test_faults;
use crate::server::{Server, ServerOptions};
use crate::state::LockState;

/// Maps a member's address (as recorded in the coordination service) to a transport.
pub type LinkSpec = Box<dyn Fn(&str) -> Result<TransportSpec, String> + Send>;

/// How this lockmgrd takes part in a replicated lock manager.
pub struct HaOptions {
    /// This replica's name (unique in the cluster; `[A-Za-z0-9._-]`, at most 64 bytes).
    pub name: String,
    /// Where nodes and the other replica reach this one, e.g. `udp:10.0.0.1:7100`.
    pub address: String,
    /// etcd endpoints, e.g. `http://127.0.0.1:2379`.
    pub etcd: Vec<String>,
    /// The cluster's name in etcd (`/clustersmb/<cluster>/lockmgr/config`).
    pub cluster: String,
    /// A partner silent this long is declared dead.
    pub failover: Duration,
    /// Deadline of each etcd call.
    pub etcd_deadline: Duration,
    /// How to reach another replica's address.
    pub link: LinkSpec,
}

/// Starts a replicated lockmgrd over `transport`: the first replica of the cluster becomes
/// primary, a later one joins the primary as standby.
pub fn start<T: ServerTransport>(
    transport: T,
    options: ServerOptions,
    ha: HaOptions,
) -> Result<Server<T>, String> {
    let incarnation = rand::thread_rng().next_u64();
    let me = Member::new(ha.name.clone(), ha.address.clone(), incarnation);
    let mut coord = Coordinator::connect(&ha.etcd, &ha.cluster, ha.etcd_deadline)
        .map_err(|e| format!("coordination service: {e}"))?;
    let stored = coord
        .bootstrap(&Configuration {
            epoch: 1,
            primary: me.clone(),
            standbys: Vec::new(),
        })
        .map_err(|e| format!("coordination service: {e}"))?;
    let (state, upstream) = if stored.config.primary == me {
        tracing::info!(epoch = stored.config.epoch, name = %ha.name, "first replica: primary, serving alone");
        let replica = Replica::primary(options.engine.clone(), Epoch(stored.config.epoch), false);
        (
            LockState::Replicated(Box::new(with_test_faults(replica))),
            None,
        )
    } else {
        let primary = &stored.config.primary;
        tracing::info!(epoch = stored.config.epoch, primary = %primary.name, address = %primary.address,
            "joining the primary as standby");
        let spec = (ha.link)(&primary.address)?;
        let mut link = lockmgr_client::connect(&spec).map_err(|e| format!("standby link: {e}"))?;
        let client = ClientOptions {
            node_name: ha.name.clone(),
            key: options.key.clone(),
            handshake_timeout: Duration::from_secs(5),
        };
        let accepted = handshake::run(link.as_mut(), &client, None)
            .map_err(|e| format!("standby link to {}: {e}", primary.address))?;
        handshake::send(
            link.as_mut(),
            accepted.session,
            accepted.epoch,
            &[Message::ReplicaAttach {
                epoch: Epoch(stored.config.epoch),
                incarnation,
                address: ha.address.clone(),
            }],
        )
        .map_err(|e| format!("standby link: {e}"))?;
        let now = Instant::now();
        // Replaced by the snapshot's state once it has arrived.
        let placeholder = Replica::standby(options.engine.clone(), Epoch(stored.config.epoch));
        (
            LockState::Replicated(Box::new(with_test_faults(placeholder))),
            Some(Upstream {
                transport: link,
                session: accepted.session,
                out: {
                    // Like `ReplicaAttach` above, in the acceptance's epoch: a frame of an older
                    // one is dropped while the primary still counts the link as a node session
                    // (the replication messages carry their own epochs besides).
                    let mut out = FrameBuf::new(accepted.session);
                    out.set_epoch(accepted.epoch);
                    out
                },
                last_heard: now,
                last_sent: now,
                next_heartbeat: 1,
                snapshot: Vec::new(),
                installed: false,
            }),
        )
    };
    // A second connection for the compare-and-swaps (see `crate::coordination`).
    let change = Coordinator::connect(&ha.etcd, &ha.cluster, ha.etcd_deadline)
        .map_err(|e| format!("coordination service: {e}"))?;
    let coord = CoordThread::spawn(coord, change, stored.mod_revision, Some(transport.waker()))
        .map_err(|e| format!("cannot start the coordination threads: {e}"))?;
    let ha = Ha {
        name: ha.name,
        incarnation,
        address: ha.address,
        failover: ha.failover,
        coord,
        config: stored.config,
        pending: None,
        standby: None,
        upstream,
        deposed: false,
        partner_lost_at: None,
        unrecorded_since: None,
        rewind_at: None,
        change_retry: Default::default(),
    };
    Ok(Server::with_state(transport, options, state, Some(ha)))
}
