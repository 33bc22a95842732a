//! The SMB witness service (MS-SWN) of one node: registrations, the cluster's node states,
//! and the notifications a state change produces. `tcp` serves it (and the endpoint mapper)
//! on ncacn_ip_tcp; `peers` keeps the node states (heartbeats between the smbd nodes, the
//! drain command on a local control socket).
//!
//! Where node state comes from: every node sends every other node an authenticated UDP
//! heartbeat (`peers`) carrying its state (up, draining or isolated). lockmgrd's session view
//! (`lockmgrctl status`) would tell which nodes hold a session, but reading it means a
//! control-socket client of lockmgrd on every node and a name mapping from lockmgr node names
//! to client-facing addresses, and it says nothing of a drain; the heartbeat channel needs no
//! change in lockmgr and carries the drain at once. A node silent for `dead_after_ms` is dead:
//! its registered clients get RESOURCE_CHANGE(unavailable); a node that drains gets its
//! clients CLIENT_MOVE to the nodes still up, from every node's witness (a client's witness
//! connection is to another node than its SMB connection, MS-SWN 3.2.4.1).
//!
//! A node that loses its lock manager lease calls itself isolated in its heartbeats
//! ([`NodeStatus::Isolated`]): its clients are moved as on a drain, and its public addresses go
//! to the nodes still up, until it holds a lease again.
//!
//! RPC connections made to a public address end when this node releases that address
//! ([`WitnessState::end_rpc_on_public`]); a registration told to go elsewhere ends
//! `reregister_after_ms` later, so that its client registers again ([`sends_elsewhere`]).
//!
//! Authentication: callers bind with NTLMSSP (raw, or inside SPNEGO as Windows does) as a user
//! of `[server] users`, at the level `[witness] auth_level` asks (privacy by default; see
//! `tcp` and smb-rpc's security provider). The endpoint mapper stays open, as on Windows. What
//! one caller can hold is bounded: at most `max_registrations_per_conn` registrations on at
//! most `max_connections` connections, all dropped with its connection.

pub mod peers;
pub mod public_ip;
#[allow(unsafe_code)]
mod rawnet;
pub mod tcp;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smb_rpc::pdu::Uuid;
use smb_rpc::witness::{
    iface_state, resource_state, werror, ContextHandle, InterfaceInfo, IpAddrInfo, Notification,
    NotifyOutcome, RegisterRequest, WitnessBackend, REGISTER_IP_NOTIFICATION, VERSION_1, VERSION_2,
};
use smb_rpc::CallId;

use crate::config::WitnessConfig;

/// What a node is doing, as far as this node knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Up,
    /// An administrator asked its clients to move away.
    Draining,
    /// It has no lock manager lease: lockmgrd has not heard from it within its liveness
    /// lease (a partition between the node and the lock manager), so it can grant nothing and
    /// its clients' state may already be another node's. It says so itself in its heartbeats,
    /// hands its public addresses over and sends its witness clients elsewhere, as a drain
    /// does, until it holds a lease again.
    Isolated,
    /// Not heard from within `dead_after_ms`.
    Dead,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Draining => "draining",
            NodeStatus::Isolated => "isolated",
            NodeStatus::Dead => "dead",
        }
    }
}

struct Node {
    name: String,
    address: IpAddr,
    status: NodeStatus,
    last_heard: Instant,
    /// Highest heartbeat sequence accepted (replays of older ones are ignored).
    last_seq: u64,
    /// The public addresses (bit i: `[public_addresses]` entry i) it said it holds in its
    /// last heartbeat; for this node, what it holds.
    claims: u64,
    /// Generation of its last complete connection list (older pages are ignored).
    conns_gen: u64,
    /// Sequence of the last share move it forwarded (repeats and replays are ignored).
    last_move_seq: u64,
    /// A connection list arriving page by page.
    assembly: Option<Assembly>,
}

/// One client TCP connection to a public address (what a survivor tickles); both ends of
/// the same family (an IPv4 client of a dual-stack socket is listed with its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpConn {
    pub client: SocketAddr,
    pub public: SocketAddr,
}

/// The pages of one connection list received so far.
struct Assembly {
    gen: u64,
    pages: u8,
    got: Vec<bool>,
    conns: Vec<TcpConn>,
}

/// The last connections published for one public address, and by whom: kept after the
/// holder releases or dies, for whoever takes the address next (CTDB's tickle list).
#[derive(Default)]
struct AddrConns {
    owner: Option<usize>,
    conns: Vec<TcpConn>,
}

/// What the public address manager needs to know of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView {
    pub status: NodeStatus,
    /// Time since it was last heard (zero for this node).
    pub silent_for: Duration,
    pub claims: u64,
}

/// What a registration's IpAddress names: a node's own address, or a public address that
/// moves between the nodes (`[public_addresses]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    /// Index into `Inner::nodes`: it hears that node's state changes.
    Node(usize),
    /// Index into the public addresses: it hears the address changing holder.
    Public(usize),
}

struct Registration {
    conn: u64,
    watched: Watched,
    /// Its IpAddress (what `watched` names).
    ip: IpAddr,
    /// When it ends by itself: set when it was told to go elsewhere ([`sends_elsewhere`]).
    ends_at: Option<Instant>,
    /// RegisterEx's KeepAliveTimeout (MS-SWN 3.1.4.5): a pending AsyncNotify answers
    /// ERROR_TIMEOUT after it.
    keep_alive: Option<Duration>,
    pending: Option<(CallId, Instant)>,
    queued: VecDeque<Notification>,
    /// RegisterEx's ShareName: the registration hears SHARE_MOVE for it (MS-SWN 3.1.4.5
    /// ShareNameNotificationRequired).
    share: Option<String>,
    /// RegisterEx with WITNESS_REGISTER_IP_NOTIFICATION: the registration hears IP_CHANGE
    /// (MS-SWN 3.1.4.5 IPNotificationRequired).
    ip_notify: bool,
    /// PendingIPNotification (MS-SWN 3.1.1.7, 3.1.6.4): the address changes not yet told,
    /// one entry per address (a later change of the same address overwrites it).
    pending_ip: Vec<IpAddrInfo>,
}

impl Registration {
    /// The next notification to hand out: the queued state changes first, then the IP
    /// changes gathered since the last one.
    fn next_notification(&mut self) -> Option<Notification> {
        if let Some(n) = self.queued.pop_front() {
            return Some(n);
        }
        if self.pending_ip.is_empty() {
            return None;
        }
        Some(Notification::IpChange(std::mem::take(&mut self.pending_ip)))
    }

    /// [`Registration::next_notification`], handed to the client at `now`: one that sends
    /// it elsewhere ends the registration `reregister_after` later.
    fn hand_out(&mut self, now: Instant, reregister_after: Duration) -> Option<Notification> {
        let n = self.next_notification()?;
        if sends_elsewhere(&n, self.ip) {
            // Counted from the latest such notification, as Samba restarts its timer.
            self.ends_at = Some(now + reregister_after);
        }
        Some(n)
    }

    fn ended(&self, now: Instant) -> bool {
        self.ends_at.is_some_and(|t| now >= t)
    }
}

/// Whether `n`, told to a registration for `ip`, sends the client elsewhere: its resource
/// is unavailable (RESOURCE_CHANGE other than AVAILABLE), or it is to move its connection
/// (CLIENT_MOVE, MS-SWN 3.1.6.2) or its share (SHARE_MOVE, 3.1.6.3) to another address.
/// Such a registration ends a little later (`[witness] reregister_after_ms`), as Samba's
/// rpcd_witness does (5 s). MS-SWN has the client register for the address it connects to
/// next (3.2.4.1), but nothing in the protocol retires the old registration on the server:
/// 3.1.5.1's unused-registration timer spares one with an AsyncNotify pending, and clients
/// keep one pending. Left alone, it lingers on the old witness, hears about a place the
/// client left, and the client, whose registration still works, does not register where
/// its address is served now (Windows Server 2022 registers again only once its
/// registration fails, as Samba found). Ended, its pending AsyncNotify fails with
/// ERROR_NOT_FOUND (3.1.4.4: no matching registration), an UnRegister too (3.1.4.3), and the
/// client calls GetInterfaceList and registers again. The delay lets it hear what follows
/// first (a moving public address's AVAILABLE right after its UNAVAILABLE). IP_CHANGE
/// (3.1.6.4) only reports the server's addresses and sends nobody away.
fn sends_elsewhere(n: &Notification, ip: IpAddr) -> bool {
    match n {
        Notification::ResourceChange(list) => list
            .iter()
            .any(|(_, state)| *state != resource_state::AVAILABLE),
        Notification::ClientMove(to) => to.iter().any(|a| *a != ip),
        Notification::ShareMove(to) => to.iter().any(|a| a.addr != ip),
        Notification::IpChange(_) => false,
    }
}

/// One RPC (endpoint mapper or witness) connection as [`WitnessState`] knows it: the
/// address it was made to and a handle to end it with.
struct RpcConn {
    local: IpAddr,
    stream: TcpStream,
}

struct Inner {
    nodes: Vec<Node>,
    /// This node's client connections to the addresses it holds, and their generation
    /// (bumped on every change, sent as the list's generation).
    local_conns: Vec<TcpConn>,
    local_conns_gen: u64,
    /// What this node held when it took that list (sent with it).
    local_conns_claims: u64,
    /// Per public address (config order).
    addr_conns: Vec<AddrConns>,
    registrations: HashMap<Uuid, Registration>,
    /// Answers for calls whose registration is gone (UnRegister with an AsyncNotify pending).
    orphaned: HashMap<u64, Vec<(CallId, NotifyOutcome)>>,
    /// Whether this node held a lock manager lease when last told
    /// ([`WitnessState::set_lease_live`]).
    lease_live: bool,
    /// The cluster's addresses (node addresses, then public addresses) and whether each was
    /// online when last looked at: what IP_CHANGE notifications are the difference of.
    ip_states: Vec<IpAddrInfo>,
    /// Per public address, the node holding it when last looked at ([`holder`]): what the
    /// RESOURCE_CHANGE of registrations for a public address follows.
    public_holders: Vec<Option<usize>>,
    /// Share moves given on this node's control socket, for the heartbeat thread to forward
    /// to the other nodes (`peers`).
    outgoing_moves: Vec<(String, Vec<IpAddrInfo>)>,
    /// The open RPC connections (`tcp`), by connection id.
    rpc_conns: HashMap<u64, RpcConn>,
    /// The public addresses (bit i: address i) RPC is served on: set before this node adds
    /// one, cleared before it deletes one ([`WitnessState::end_rpc_on_public`]).
    rpc_public: u64,
}

/// The witness state of this node, shared by its RPC connections and the peer thread.
pub struct WitnessState {
    cfg: WitnessConfig,
    net_names: Vec<String>,
    local: usize,
    /// `[public_addresses]` addresses, in config order (bit i of a claim set).
    public: Vec<IpAddr>,
    inner: Mutex<Inner>,
}

impl WitnessState {
    pub fn new(cfg: WitnessConfig, netbios_name: &str) -> Arc<Self> {
        Self::with_public_addresses(cfg, netbios_name, Vec::new())
    }

    /// As [`WitnessState::new`], for a cluster with `public` addresses (config order).
    pub fn with_public_addresses(
        cfg: WitnessConfig,
        netbios_name: &str,
        public: Vec<IpAddr>,
    ) -> Arc<Self> {
        let now = Instant::now();
        let nodes = cfg
            .nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                address: n.address,
                status: NodeStatus::Up,
                last_heard: now,
                last_seq: 0,
                claims: 0,
                conns_gen: 0,
                last_move_seq: 0,
                assembly: None,
            })
            .collect();
        let local = cfg
            .nodes
            .iter()
            .position(|n| n.name == cfg.node)
            .unwrap_or(0);
        let mut net_names = vec![netbios_name.to_string()];
        net_names.extend(cfg.net_name.clone());
        let addr_conns = public.iter().map(|_| AddrConns::default()).collect();
        let mut inner = Inner {
            nodes,
            local_conns: Vec::new(),
            local_conns_gen: 0,
            local_conns_claims: 0,
            addr_conns,
            registrations: HashMap::new(),
            orphaned: HashMap::new(),
            lease_live: true,
            ip_states: Vec::new(),
            public_holders: vec![None; public.len()],
            outgoing_moves: Vec::new(),
            rpc_conns: HashMap::new(),
            rpc_public: 0,
        };
        inner.ip_states = ip_states(&inner, &public);
        Arc::new(Self {
            cfg,
            net_names,
            local,
            public,
            inner: Mutex::new(inner),
        })
    }

    /// Queue IP_CHANGE for the registrations that asked for it (MS-SWN 3.1.6.4) when an
    /// address of the cluster went online or offline since the last look: a node address
    /// with its node's state (up, or draining / isolated / dead), a public address when the
    /// last live node holding it lets it go or a node takes it.
    fn note_ip_changes(&self, inner: &mut Inner) {
        note_public_moves(inner, &self.public);
        let now = ip_states(inner, &self.public);
        if now == inner.ip_states {
            return;
        }
        let changed: Vec<IpAddrInfo> = now
            .iter()
            .filter(|a| !inner.ip_states.contains(a))
            .copied()
            .collect();
        inner.ip_states = now;
        for c in &changed {
            tracing::info!(address = %c.addr, online = c.online, "witness: address state");
        }
        for r in inner.registrations.values_mut().filter(|r| r.ip_notify) {
            for c in &changed {
                match r.pending_ip.iter_mut().find(|p| p.addr == c.addr) {
                    Some(p) => *p = *c,
                    None => r.pending_ip.push(*c),
                }
            }
        }
    }

    /// SHARE_MOVE (MS-SWN 3.1.6.3) to the registrations for `share` (RegisterEx with that
    /// ShareName, case-insensitive), naming `targets` (node names or addresses) as where it
    /// is now served; replaces a share move not yet told. This node's registrations hear it
    /// at once; the move is queued for the heartbeat thread, which forwards it to every other
    /// node (a client's witness may be any node; Samba's `net witness share-move` reaches
    /// every node's registrations through CTDB messaging). The number of this node's
    /// registrations told, or what was wrong with a target.
    pub fn share_move(&self, share: &str, targets: &[&str]) -> Result<usize, String> {
        let mut inner = self.lock();
        let mut list = Vec::new();
        for t in targets {
            let addr = match inner.nodes.iter().find(|n| n.name == *t) {
                Some(n) => n.address,
                None => t
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{t:?} is neither a node name nor an address"))?,
            };
            // Online unless the cluster knows the address and has it offline (Samba sends
            // an unavailable interface as OFFLINE too).
            let online = !inner.ip_states.iter().any(|a| a.addr == addr && !a.online);
            list.push(IpAddrInfo { addr, online });
        }
        if list.is_empty() {
            return Err("no target".into());
        }
        if list.len() > MAX_SHARE_MOVE_TARGETS {
            return Err(format!("at most {MAX_SHARE_MOVE_TARGETS} targets"));
        }
        if share.len() > 255 {
            return Err("share name longer than 255 bytes".into());
        }
        if inner.nodes.len() > 1 {
            inner.outgoing_moves.push((share.to_string(), list.clone()));
        }
        Ok(apply_share_move(&mut inner, share, &list))
    }

    /// Share moves given here since the last call, to forward to the other nodes.
    pub fn take_outgoing_share_moves(&self) -> Vec<(String, Vec<IpAddrInfo>)> {
        std::mem::take(&mut self.lock().outgoing_moves)
    }

    /// A verified share move forwarded by node `name` with sequence `seq`: this node's
    /// registrations for `share` hear it (once: a repeat or a replay is ignored).
    pub fn heard_share_move(&self, name: &str, seq: u64, share: &str, targets: &[IpAddrInfo]) {
        let mut inner = self.lock();
        let Some(i) = inner.nodes.iter().position(|n| n.name == name) else {
            return;
        };
        if i == self.local || seq <= inner.nodes[i].last_move_seq || targets.is_empty() {
            return;
        }
        inner.nodes[i].last_move_seq = seq;
        let told = apply_share_move(&mut inner, share, targets);
        tracing::info!(
            from = name,
            share,
            told,
            "witness: share move forwarded by a peer"
        );
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock aborts smbd (main.rs), so poisoning is never seen
        // by a running server; the data is still consistent field by field.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &WitnessConfig {
        &self.cfg
    }

    pub fn local_status(&self) -> NodeStatus {
        self.lock().nodes[self.local].status
    }

    /// `name status` lines for every node (the control socket's `status`).
    pub fn status_text(&self) -> String {
        let inner = self.lock();
        let mut s = String::new();
        for n in &inner.nodes {
            s.push_str(&format!("{} {} {}\n", n.name, n.address, n.status.as_str()));
        }
        s.push_str(&format!("registrations {}\n", inner.registrations.len()));
        s
    }

    /// Set this node's own status (drain / undrain from the control socket). A node without
    /// a lock manager lease that is undrained stays isolated until it has one again.
    pub fn set_local(&self, status: NodeStatus) {
        let mut inner = self.lock();
        let local = self.local;
        inner.nodes[local].last_heard = Instant::now();
        let status = match status {
            NodeStatus::Up if !inner.lease_live => NodeStatus::Isolated,
            s => s,
        };
        transition(&mut inner, local, status);
        self.note_ip_changes(&mut inner);
    }

    /// Whether this node holds a lock manager lease now (the heartbeat thread asks the lock
    /// service every period). Losing it isolates an up node; getting it back returns an
    /// isolated node to service. A drain is the administrator's and stays as it is.
    pub fn set_lease_live(&self, live: bool) {
        let mut inner = self.lock();
        if inner.lease_live == live {
            return;
        }
        inner.lease_live = live;
        let local = self.local;
        let next = match (inner.nodes[local].status, live) {
            (NodeStatus::Up, false) => NodeStatus::Isolated,
            (NodeStatus::Isolated, true) => NodeStatus::Up,
            _ => return,
        };
        if live {
            tracing::info!("witness: lock manager lease held again, node back in service");
        } else {
            tracing::warn!(
                "witness: no lock manager lease, node isolated (addresses and witness clients move away)"
            );
        }
        transition(&mut inner, local, next);
        self.note_ip_changes(&mut inner);
    }

    /// A verified heartbeat from node `name` with sequence `seq`, `status` and the public
    /// addresses it holds (`claims`).
    pub fn heard(&self, name: &str, seq: u64, status: NodeStatus, claims: u64, now: Instant) {
        let mut inner = self.lock();
        let Some(i) = inner.nodes.iter().position(|n| n.name == name) else {
            return;
        };
        if i == self.local || seq <= inner.nodes[i].last_seq {
            return;
        }
        inner.nodes[i].last_seq = seq;
        inner.nodes[i].last_heard = now;
        inner.nodes[i].claims = claims;
        transition(&mut inner, i, status);
        self.note_ip_changes(&mut inner);
    }

    /// This node's index in `[witness] nodes`.
    pub fn local_index(&self) -> usize {
        self.local
    }

    /// The public addresses, config order.
    pub fn public_addresses(&self) -> &[IpAddr] {
        &self.public
    }

    /// Every node as the public address manager sees it (`now` measures silences).
    pub fn node_views(&self, now: Instant) -> Vec<NodeView> {
        let inner = self.lock();
        inner
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeView {
                status: n.status,
                silent_for: if i == self.local {
                    Duration::ZERO
                } else {
                    now.saturating_duration_since(n.last_heard)
                },
                claims: n.claims,
            })
            .collect()
    }

    /// Node names, config order.
    pub fn node_names(&self) -> Vec<String> {
        self.lock().nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The public addresses this node holds (bit i = address i).
    pub fn local_claims(&self) -> u64 {
        self.lock().nodes[self.local].claims
    }

    /// What this node holds (set by the public address manager, sent in heartbeats).
    pub fn set_local_claims(&self, claims: u64) {
        let local = self.local;
        let mut inner = self.lock();
        inner.nodes[local].claims = claims;
        self.note_ip_changes(&mut inner);
    }

    /// This node's status and held addresses, read together for one heartbeat.
    pub fn local_heartbeat(&self) -> (NodeStatus, u64) {
        let inner = self.lock();
        (
            inner.nodes[self.local].status,
            inner.nodes[self.local].claims,
        )
    }

    /// Replace this node's published connection list, found while it held `claims` (a new
    /// generation when either changed).
    pub fn set_local_conns(&self, conns: Vec<TcpConn>, claims: u64) {
        let mut inner = self.lock();
        if inner.local_conns != conns || inner.local_conns_claims != claims {
            inner.local_conns = conns;
            inner.local_conns_claims = claims;
            inner.local_conns_gen += 1;
        }
    }

    /// The generation of this node's connection list.
    pub fn local_conns_gen(&self) -> u64 {
        self.lock().local_conns_gen
    }

    /// This node's connection list, its generation and what the node held then.
    pub fn local_conns(&self) -> (u64, Vec<TcpConn>, u64) {
        let inner = self.lock();
        (
            inner.local_conns_gen,
            inner.local_conns.clone(),
            inner.local_conns_claims,
        )
    }

    /// One verified page of node `name`'s connection list `gen` (page `page` of `pages`),
    /// taken while it held `claims`. A complete list replaces what that node published for
    /// the addresses it held then; the lists of addresses it no longer held stay for their
    /// next holder.
    pub fn heard_conns(
        &self,
        name: &str,
        gen: u64,
        page: u8,
        pages: u8,
        claims: u64,
        conns: &[TcpConn],
    ) {
        let mut inner = self.lock();
        let Some(i) = inner.nodes.iter().position(|n| n.name == name) else {
            return;
        };
        if i == self.local || gen <= inner.nodes[i].conns_gen || page >= pages {
            return;
        }
        let node = &mut inner.nodes[i];
        match &node.assembly {
            Some(a) if a.gen > gen => return,
            Some(a) if a.gen == gen && a.pages == pages => {}
            _ => {
                node.assembly = Some(Assembly {
                    gen,
                    pages,
                    got: vec![false; usize::from(pages)],
                    conns: Vec::new(),
                })
            }
        }
        let Some(a) = node.assembly.as_mut() else {
            return;
        };
        if a.got[usize::from(page)] {
            return;
        }
        a.got[usize::from(page)] = true;
        a.conns.extend_from_slice(conns);
        if !a.got.iter().all(|g| *g) {
            return;
        }
        let Some(done) = node.assembly.take() else {
            return;
        };
        node.conns_gen = done.gen;
        for (k, addr) in self.public.iter().enumerate() {
            let mine: Vec<TcpConn> = done
                .conns
                .iter()
                .filter(|c| c.public.ip() == *addr)
                .copied()
                .collect();
            let slot = &mut inner.addr_conns[k];
            if !mine.is_empty() {
                *slot = AddrConns {
                    owner: Some(i),
                    conns: mine,
                };
            } else if slot.owner == Some(i) && claims & (1 << k) != 0 {
                // (`claims` of the last page: every page of a list carries the same.)
                // It still holds the address and has no connections to it any more.
                slot.conns.clear();
            }
        }
    }

    /// Take the connections last published for public address `k` by another node: the
    /// ones to tickle when this node takes the address over.
    pub fn take_conns(&self, k: usize) -> Vec<TcpConn> {
        let mut inner = self.lock();
        let local = self.local;
        match inner.addr_conns.get_mut(k) {
            Some(slot) if slot.owner != Some(local) => {
                slot.owner = Some(local);
                std::mem::take(&mut slot.conns)
            }
            _ => Vec::new(),
        }
    }

    /// `ADDRESS published-by count` lines (the control socket's `connections`).
    pub fn conns_text(&self) -> String {
        let inner = self.lock();
        let mut s = String::new();
        for (k, slot) in inner.addr_conns.iter().enumerate() {
            let owner = slot
                .owner
                .map_or("-", |o| inner.nodes[o].name.as_str())
                .to_string();
            s.push_str(&format!(
                "{} {} {}",
                self.public[k],
                owner,
                slot.conns.len()
            ));
            for c in &slot.conns {
                s.push_str(&format!(" {}", c.client));
            }
            s.push('\n');
        }
        s
    }

    /// Mark nodes silent for `dead_after_ms` as dead.
    pub fn check_liveness(&self, now: Instant) {
        let dead_after = Duration::from_millis(self.cfg.dead_after_ms);
        let mut inner = self.lock();
        for i in 0..inner.nodes.len() {
            if i != self.local
                && inner.nodes[i].status != NodeStatus::Dead
                && now.duration_since(inner.nodes[i].last_heard) > dead_after
            {
                tracing::warn!(node = %inner.nodes[i].name, "witness: node is silent, marking it dead");
                transition(&mut inner, i, NodeStatus::Dead);
            }
        }
        self.note_ip_changes(&mut inner);
    }

    /// Answers ready for connection `conn`'s pending AsyncNotify calls.
    pub fn take_ready(&self, conn: u64, now: Instant) -> Vec<(CallId, NotifyOutcome)> {
        let mut inner = self.lock();
        end_registrations(&mut inner, conn, now);
        let reregister_after = self.reregister_after();
        let mut out = inner.orphaned.remove(&conn).unwrap_or_default();
        for r in inner.registrations.values_mut() {
            if r.conn != conn {
                continue;
            }
            let Some((call, since)) = r.pending else {
                continue;
            };
            if let Some(n) = r.hand_out(now, reregister_after) {
                r.pending = None;
                out.push((call, NotifyOutcome::Notification(n)));
            } else if r.keep_alive.is_some_and(|k| now.duration_since(since) >= k) {
                r.pending = None;
                out.push((call, NotifyOutcome::Error(werror::TIMEOUT)));
            }
        }
        out
    }

    /// Whether connection `conn` has an AsyncNotify waiting.
    pub fn has_pending(&self, conn: u64) -> bool {
        self.lock()
            .registrations
            .values()
            .any(|r| r.conn == conn && r.pending.is_some())
    }

    /// The connection closed: its context handles run down (C706 context handle rundown),
    /// so its registrations go.
    pub fn drop_connection(&self, conn: u64) {
        let mut inner = self.lock();
        inner.registrations.retain(|_, r| r.conn != conn);
        inner.orphaned.remove(&conn);
        inner.rpc_conns.remove(&conn);
    }

    fn reregister_after(&self) -> Duration {
        Duration::from_millis(self.cfg.reregister_after_ms)
    }

    /// RPC connection `conn` was made to `local` over `stream` (a handle to the connection's
    /// socket). False when `local` is a public address this node is letting go or no longer
    /// holds (the connection raced its release): the caller ends it at once.
    pub fn add_rpc_conn(&self, conn: u64, local: IpAddr, stream: TcpStream) -> bool {
        // An IPv4 client of a dual-stack socket reached an IPv4-mapped address.
        let local = local.to_canonical();
        let mut inner = self.lock();
        let released = self
            .public
            .iter()
            .position(|a| *a == local)
            .is_some_and(|k| inner.rpc_public & (1 << k) == 0);
        if released {
            return false;
        }
        inner.rpc_conns.insert(conn, RpcConn { local, stream });
        true
    }

    /// This node is about to add public address `k`: RPC connections to it are served.
    pub fn serve_rpc_on_public(&self, k: usize) {
        self.lock().rpc_public |= 1 << k;
    }

    /// This node is about to delete public address `k`: end the RPC connections made to it
    /// (shut down while the address is still here, so the client gets the FIN and knows at
    /// once) and drop their witness registrations; refuse any that arrive before it is gone.
    /// How many were ended.
    ///
    /// Without this, a witness client that reached this node through the address would keep
    /// its connection to a node that no longer answers there (nothing sent on it can leave
    /// once the address is gone, and a client waiting on AsyncNotify sends nothing), and
    /// would never learn to register with the new holder. Samba does the same: rpcd_witness
    /// ends its connections to an address CTDB releases (CTDB_SRVID_RELEASE_IP), after CTDB's
    /// releaseip event killed the TCP connections to it while it was still configured.
    pub fn end_rpc_on_public(&self, k: usize) -> usize {
        let Some(addr) = self.public.get(k).copied() else {
            return 0;
        };
        let mut inner = self.lock();
        inner.rpc_public &= !(1 << k);
        let ended: Vec<u64> = inner
            .rpc_conns
            .iter()
            .filter(|(_, c)| c.local == addr)
            .map(|(id, _)| *id)
            .collect();
        for id in &ended {
            if let Some(c) = inner.rpc_conns.remove(id) {
                // The connection's thread sees the end of its stream and leaves.
                if let Err(e) = c.stream.shutdown(std::net::Shutdown::Both) {
                    tracing::debug!(conn = id, %e, "RPC connection shutdown");
                }
            }
            inner.orphaned.remove(id);
        }
        if ended.is_empty() {
            return 0;
        }
        let before = inner.registrations.len();
        inner.registrations.retain(|_, r| !ended.contains(&r.conn));
        tracing::info!(
            address = %addr,
            connections = ended.len(),
            registrations = before - inner.registrations.len(),
            "witness: RPC connections to a released public address ended"
        );
        ended.len()
    }

    /// Every node's address, then every public address (MS-SWN 3.1.4.1: the interfaces a
    /// client may name in Register / RegisterEx, 3.1.4.2 / 3.1.4.5). Samba's rpcd_witness
    /// lists CTDB's public addresses the same way: AVAILABLE while a node hosts the address,
    /// UNAVAILABLE while none does. A public address's InterfaceGroupName is its holder's
    /// node name, so a client connected to it picks another node's interface for its witness
    /// connection (MS-SWN 3.2.4.1). Public addresses do not carry INTERFACE_WITNESS: the
    /// witness listens where `[witness] listen` says, which need not include them; the node
    /// addresses are the witness interfaces.
    fn interface_list(&self) -> Vec<InterfaceInfo> {
        let inner = self.lock();
        let public = self.public.iter().enumerate().map(|(k, a)| {
            let held = holder(&inner, k);
            InterfaceInfo {
                group_name: held.map_or_else(
                    || self.net_names[0].clone(),
                    |i| inner.nodes[i].name.clone(),
                ),
                version: VERSION_2,
                state: if held.is_some() {
                    iface_state::AVAILABLE
                } else {
                    iface_state::UNAVAILABLE
                },
                ipv4: match a {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                },
                ipv6: match a {
                    IpAddr::V6(a) => Some(*a),
                    IpAddr::V4(_) => None,
                },
                witness: false,
            }
        });
        let nodes: Vec<InterfaceInfo> = inner
            .nodes
            .iter()
            .map(|n| {
                let up = n.status == NodeStatus::Up;
                InterfaceInfo {
                    group_name: n.name.clone(),
                    version: VERSION_2,
                    state: if up {
                        iface_state::AVAILABLE
                    } else {
                        iface_state::UNAVAILABLE
                    },
                    ipv4: match n.address {
                        IpAddr::V4(a) => Some(a),
                        IpAddr::V6(_) => None,
                    },
                    ipv6: match n.address {
                        IpAddr::V6(a) => Some(a),
                        IpAddr::V4(_) => None,
                    },
                    witness: up,
                }
            })
            .collect();
        nodes.into_iter().chain(public).collect()
    }

    fn register(&self, conn: u64, req: &RegisterRequest) -> Result<ContextHandle, u32> {
        // MS-SWN 3.1.4.2 / 3.1.4.5: the version first, then the parameters.
        let want = if req.ex { VERSION_2 } else { VERSION_1 };
        if req.version != want {
            return Err(werror::REVISION_MISMATCH);
        }
        let (Some(net_name), Some(ip), Some(_client)) = (
            req.net_name.as_deref(),
            req.ip_address.as_deref(),
            req.client_computer_name.as_deref(),
        ) else {
            return Err(werror::INVALID_PARAMETER);
        };
        if !self
            .net_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(net_name))
        {
            return Err(werror::INVALID_PARAMETER);
        }
        // MS-SWN 3.1.4.2 / 3.1.4.5: the server looks IpAddress up among the interfaces of
        // its InterfaceList (what GetInterfaceList returns: the node addresses and the public
        // addresses, 3.1.4.1) and fails with ERROR_INVALID_STATE only when none matches. A
        // public address is an interface whoever holds it, and also while none does (it is
        // moving): the client connected to it and wants to hear where it goes.
        let ip: IpAddr = ip.parse().map_err(|_| werror::INVALID_STATE)?;
        let mut inner = self.lock();
        let watched = match inner.nodes.iter().position(|n| n.address == ip) {
            Some(i) => Watched::Node(i),
            None => Watched::Public(
                self.public
                    .iter()
                    .position(|a| *a == ip)
                    .ok_or(werror::INVALID_STATE)?,
            ),
        };
        let of_conn = inner
            .registrations
            .values()
            .filter(|r| r.conn == conn)
            .count();
        if of_conn >= self.cfg.max_registrations_per_conn
            || inner.registrations.len() >= self.cfg.max_registrations
        {
            tracing::debug!(conn, "witness: registration limit");
            return Err(werror::NOT_ENOUGH_MEMORY);
        }
        let uuid = Uuid(rand::random());
        inner.registrations.insert(
            uuid,
            Registration {
                conn,
                watched,
                ip,
                ends_at: None,
                keep_alive: (req.ex && req.keep_alive_timeout != 0)
                    .then(|| Duration::from_secs(u64::from(req.keep_alive_timeout))),
                pending: None,
                queued: VecDeque::new(),
                share: req.share_name.clone().filter(|_| req.ex),
                ip_notify: req.ex && req.flags & REGISTER_IP_NOTIFICATION != 0,
                pending_ip: Vec::new(),
            },
        );
        tracing::info!(conn, net_name, %ip, ?watched, "witness: registered");
        Ok(ContextHandle {
            attributes: 0,
            uuid,
        })
    }

    fn unregister(&self, conn: u64, handle: ContextHandle) -> u32 {
        let mut inner = self.lock();
        end_registrations(&mut inner, conn, Instant::now());
        match inner.registrations.get(&handle.uuid) {
            Some(r) if r.conn == conn => {}
            // MS-SWN 3.1.4.3: no matching registration is ERROR_NOT_FOUND; another
            // connection's handle is not this connection's to use.
            _ => return werror::NOT_FOUND,
        }
        remove_registration(&mut inner, conn, &handle.uuid);
        werror::OK
    }

    fn async_notify(
        &self,
        conn: u64,
        handle: ContextHandle,
        call: CallId,
    ) -> Result<Option<NotifyOutcome>, u32> {
        let now = Instant::now();
        let reregister_after = self.reregister_after();
        let mut inner = self.lock();
        end_registrations(&mut inner, conn, now);
        let r = match inner.registrations.get_mut(&handle.uuid) {
            Some(r) if r.conn == conn => r,
            _ => return Err(werror::NOT_FOUND),
        };
        if r.pending.is_some() {
            // One outstanding AsyncNotify per registration.
            return Err(werror::INVALID_STATE);
        }
        if let Some(n) = r.hand_out(now, reregister_after) {
            return Ok(Some(NotifyOutcome::Notification(n)));
        }
        r.pending = Some((call, now));
        Ok(None)
    }
}

/// The cluster's addresses as IP_CHANGE reports them: every node's address, online while the
/// node is up (what GetInterfaceList calls AVAILABLE), then every public address, online
/// while a node not dead claims it.
fn ip_states(inner: &Inner, public: &[IpAddr]) -> Vec<IpAddrInfo> {
    let nodes = inner.nodes.iter().map(|n| IpAddrInfo {
        addr: n.address,
        online: n.status == NodeStatus::Up,
    });
    let public = public.iter().enumerate().map(|(k, a)| IpAddrInfo {
        addr: *a,
        online: inner
            .nodes
            .iter()
            .any(|n| n.status != NodeStatus::Dead && n.claims & (1 << k) != 0),
    });
    nodes.chain(public).collect()
}

/// Remove connection `conn`'s registrations whose time ran out ([`sends_elsewhere`]); a
/// pending AsyncNotify of one is answered ERROR_NOT_FOUND, as if the client had unregistered
/// (MS-SWN 3.1.4.4: its registration is no longer in the list).
fn end_registrations(inner: &mut Inner, conn: u64, now: Instant) {
    let ended: Vec<Uuid> = inner
        .registrations
        .iter()
        .filter(|(_, r)| r.conn == conn && r.ended(now))
        .map(|(uuid, _)| *uuid)
        .collect();
    for uuid in ended {
        if let Some(ip) = remove_registration(inner, conn, &uuid) {
            tracing::info!(conn, %ip, "witness: registration ended after a move; the client registers again");
        }
    }
}

/// Remove registration `uuid` of connection `conn`; its pending AsyncNotify, if any, is
/// answered ERROR_NOT_FOUND (MS-SWN 3.1.4.4: no such registration any more). Returns the
/// address it was for.
fn remove_registration(inner: &mut Inner, conn: u64, uuid: &Uuid) -> Option<IpAddr> {
    let r = inner.registrations.remove(uuid)?;
    if let Some((call, _)) = r.pending {
        inner
            .orphaned
            .entry(conn)
            .or_default()
            .push((call, NotifyOutcome::Error(werror::NOT_FOUND)));
    }
    Some(r.ip)
}

/// The most targets one share move names (it then fits one unfragmented datagram).
pub const MAX_SHARE_MOVE_TARGETS: usize = 32;

/// SHARE_MOVE to `list` for the registrations for `share`: how many.
fn apply_share_move(inner: &mut Inner, share: &str, list: &[IpAddrInfo]) -> usize {
    let mut told = 0;
    for r in inner.registrations.values_mut() {
        if r.share
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(share))
        {
            r.queued
                .retain(|n| !matches!(n, Notification::ShareMove(_)));
            if r.queued.len() >= 8 {
                r.queued.pop_front();
            }
            r.queued.push_back(Notification::ShareMove(list.to_vec()));
            told += 1;
        }
    }
    tracing::info!(share, ?list, told, "witness: share move");
    told
}

/// Node `i` changes to `status`: queue what its registered clients must hear.
fn transition(inner: &mut Inner, i: usize, status: NodeStatus) {
    let old = inner.nodes[i].status;
    if old == status {
        return;
    }
    inner.nodes[i].status = status;
    tracing::info!(node = %inner.nodes[i].name, from = old.as_str(), to = status.as_str(), "witness: node state");
    let resource = inner.nodes[i].address.to_string();
    let note = match status {
        // A planned move, or a node that can no longer serve while its peers can: tell the
        // clients where to go (the nodes still up; MS-SWN 3.1.4.5 CLIENT_MOVE).
        NodeStatus::Draining | NodeStatus::Isolated => {
            let targets: Vec<IpAddr> = inner
                .nodes
                .iter()
                .filter(|n| n.status == NodeStatus::Up)
                .map(|n| n.address)
                .collect();
            if targets.is_empty() {
                // Nowhere to move to: report the resource going away instead.
                Notification::ResourceChange(vec![(resource, resource_state::UNAVAILABLE)])
            } else {
                Notification::ClientMove(targets)
            }
        }
        NodeStatus::Dead => {
            Notification::ResourceChange(vec![(resource, resource_state::UNAVAILABLE)])
        }
        NodeStatus::Up if matches!(old, NodeStatus::Dead | NodeStatus::Isolated) => {
            Notification::ResourceChange(vec![(resource, resource_state::AVAILABLE)])
        }
        NodeStatus::Up => return,
    };
    queue_for(inner, Watched::Node(i), &[note]);
}

/// Queue `notes` for the registrations watching `watched`.
fn queue_for(inner: &mut Inner, watched: Watched, notes: &[Notification]) {
    for r in inner.registrations.values_mut() {
        if r.watched == watched {
            for note in notes {
                // Bounded: a client that never asks keeps at most a few state changes.
                if r.queued.len() >= 8 {
                    r.queued.pop_front();
                }
                r.queued.push_back(note.clone());
            }
        }
    }
}

/// The node holding public address `k`: the first that claims it and is not dead (a dead
/// node's claim is its last word, not a holding; as `ip_states`).
fn holder(inner: &Inner, k: usize) -> Option<usize> {
    inner
        .nodes
        .iter()
        .position(|n| n.status != NodeStatus::Dead && n.claims & (1 << k) != 0)
}

/// Public addresses that changed holder since the last look: their registrations hear
/// RESOURCE_CHANGE (MS-SWN 3.1.6.1 / 2.2.2.1). The address's resource is UNAVAILABLE once the
/// node that served the client's connection lets it go or dies (the connection is gone;
/// the client reconnects to the same address, as it does after a tickle ACK), and AVAILABLE
/// once a node holds it again. A drained or isolated node releases its addresses, so its
/// clients of a public address hear this rather than the node's CLIENT_MOVE: the address
/// stays where they connected, only its server changes. Samba's rpcd_witness does the same
/// for CTDB's public addresses (a registration hears UNAVAILABLE when its address changes
/// node).
fn note_public_moves(inner: &mut Inner, public: &[IpAddr]) {
    for (k, addr) in public.iter().enumerate().take(inner.public_holders.len()) {
        let now = holder(inner, k);
        let was = inner.public_holders[k];
        if now == was {
            continue;
        }
        inner.public_holders[k] = now;
        let name = addr.to_string();
        let resource = |s| Notification::ResourceChange(vec![(name.clone(), s)]);
        let mut notes = Vec::new();
        if was.is_some() {
            notes.push(resource(resource_state::UNAVAILABLE));
        }
        if now.is_some() {
            notes.push(resource(resource_state::AVAILABLE));
        }
        tracing::info!(
            address = %addr,
            from = ?was.map(|i| inner.nodes[i].name.as_str()),
            to = ?now.map(|i| inner.nodes[i].name.as_str()),
            "witness: public address holder"
        );
        queue_for(inner, Watched::Public(k), &notes);
    }
}

/// The witness backend of one RPC connection.
pub(crate) struct ConnWitness {
    pub state: Arc<WitnessState>,
    pub conn: u64,
}

impl WitnessBackend for ConnWitness {
    fn interface_list(&mut self) -> Result<Vec<InterfaceInfo>, u32> {
        Ok(self.state.interface_list())
    }

    fn register(&mut self, req: &RegisterRequest) -> Result<ContextHandle, u32> {
        self.state.register(self.conn, req)
    }

    fn unregister(&mut self, handle: ContextHandle) -> u32 {
        self.state.unregister(self.conn, handle)
    }

    fn async_notify(
        &mut self,
        handle: ContextHandle,
        call: CallId,
    ) -> Result<Option<NotifyOutcome>, u32> {
        self.state.async_notify(self.conn, handle, call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WitnessNode;

    /// The [`state`] cluster, named CLUSTER, serving `public` addresses.
    fn with_public(public: &[&str]) -> Arc<WitnessState> {
        WitnessState::with_public_addresses(
            state().config().clone(),
            "CLUSTER",
            public.iter().map(|a| a.parse().unwrap()).collect(),
        )
    }

    fn state() -> Arc<WitnessState> {
        let cfg = WitnessConfig {
            enabled: true,
            node: "n1".into(),
            nodes: (1..=3)
                .map(|i| WitnessNode {
                    name: format!("n{i}"),
                    address: format!("10.0.0.{i}").parse().unwrap(),
                    peer: format!("10.0.0.{i}:5135").parse().unwrap(),
                    lockmgr_node: None,
                })
                .collect(),
            max_registrations_per_conn: 2,
            ..WitnessConfig::default()
        };
        WitnessState::new(cfg, "CLUSTER")
    }

    fn reg(ip: &str) -> RegisterRequest {
        RegisterRequest {
            version: VERSION_1,
            net_name: Some("cluster".into()),
            share_name: None,
            ip_address: Some(ip.into()),
            client_computer_name: Some("c".into()),
            flags: 0,
            keep_alive_timeout: 0,
            ex: false,
        }
    }

    const CALL: CallId = CallId {
        call_id: 9,
        context_id: 0,
    };

    #[test]
    fn register_checks_version_names_addresses_and_limits() {
        let s = state();
        let mut bad = reg("10.0.0.2");
        bad.version = VERSION_2;
        assert_eq!(s.register(1, &bad), Err(werror::REVISION_MISMATCH));
        let mut bad = reg("10.0.0.2");
        bad.net_name = Some("OTHER".into());
        assert_eq!(s.register(1, &bad), Err(werror::INVALID_PARAMETER));
        bad.net_name = None;
        assert_eq!(s.register(1, &bad), Err(werror::INVALID_PARAMETER));
        assert_eq!(s.register(1, &reg("10.9.9.9")), Err(werror::INVALID_STATE));
        s.register(1, &reg("10.0.0.2")).unwrap();
        s.register(1, &reg("10.0.0.3")).unwrap();
        assert_eq!(
            s.register(1, &reg("10.0.0.2")),
            Err(werror::NOT_ENOUGH_MEMORY)
        );
        // Another connection has its own budget; dropping a connection frees its slots.
        s.register(2, &reg("10.0.0.2")).unwrap();
        s.drop_connection(1);
        s.register(1, &reg("10.0.0.2")).unwrap();
    }

    #[test]
    fn drain_moves_clients_of_that_node_only() {
        let s = state();
        let h2 = s.register(1, &reg("10.0.0.2")).unwrap();
        let h3 = s.register(1, &reg("10.0.0.3")).unwrap();
        assert_eq!(s.async_notify(1, h2, CALL), Ok(None));
        assert_eq!(s.async_notify(1, h2, CALL), Err(werror::INVALID_STATE));
        assert!(s.take_ready(1, Instant::now()).is_empty());
        s.heard("n2", 1, NodeStatus::Draining, 0, Instant::now());
        let ready = s.take_ready(1, Instant::now());
        assert_eq!(
            ready,
            vec![(
                CALL,
                NotifyOutcome::Notification(Notification::ClientMove(vec![
                    "10.0.0.1".parse().unwrap(),
                    "10.0.0.3".parse().unwrap()
                ]))
            )]
        );
        // n3's client heard nothing.
        assert_eq!(s.async_notify(1, h3, CALL), Ok(None));
        assert!(s.take_ready(1, Instant::now()).is_empty());
        // A replayed older heartbeat changes nothing.
        s.heard("n2", 1, NodeStatus::Up, 0, Instant::now());
        assert!(s.status_text().contains("n2 10.0.0.2 draining"));
    }

    #[test]
    fn a_node_without_a_lock_manager_lease_is_isolated_until_it_has_one() {
        let s = state();
        // This node's own witness clients are told to move (as on a drain) when it loses
        // its lease; undrain cannot put it back in service while it has none.
        let h1 = s.register(1, &reg("10.0.0.1")).unwrap();
        s.set_lease_live(true);
        assert_eq!(s.local_status(), NodeStatus::Up);
        s.set_lease_live(false);
        assert_eq!(s.local_status(), NodeStatus::Isolated);
        assert_eq!(
            s.async_notify(1, h1, CALL),
            Ok(Some(NotifyOutcome::Notification(Notification::ClientMove(
                vec!["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()]
            ))))
        );
        s.set_local(NodeStatus::Up);
        assert_eq!(s.local_status(), NodeStatus::Isolated);
        // A drain stays a drain whatever the lease does.
        s.set_local(NodeStatus::Draining);
        s.set_lease_live(true);
        assert_eq!(s.local_status(), NodeStatus::Draining);
        s.set_local(NodeStatus::Up);
        // A client registered now hears the isolation, then the return.
        let h = s.register(3, &reg("10.0.0.1")).unwrap();
        s.set_lease_live(false);
        s.set_lease_live(true);
        assert_eq!(s.local_status(), NodeStatus::Up);
        assert!(matches!(
            s.async_notify(3, h, CALL),
            Ok(Some(NotifyOutcome::Notification(Notification::ClientMove(
                _
            ))))
        ));
        assert_eq!(
            s.async_notify(3, h, CALL),
            Ok(Some(NotifyOutcome::Notification(
                Notification::ResourceChange(vec![("10.0.0.1".into(), resource_state::AVAILABLE)])
            )))
        );
        // A peer that says it is isolated is not a place to move clients to.
        s.heard("n3", 1, NodeStatus::Isolated, 0, Instant::now());
        let h2 = s.register(1, &reg("10.0.0.2")).unwrap();
        s.heard("n2", 1, NodeStatus::Draining, 0, Instant::now());
        assert_eq!(
            s.async_notify(1, h2, CALL),
            Ok(Some(NotifyOutcome::Notification(Notification::ClientMove(
                vec!["10.0.0.1".parse().unwrap()]
            ))))
        );
        assert!(s.status_text().contains("n3 10.0.0.3 isolated"));
    }

    #[test]
    fn silence_is_death_and_unregister_answers_the_pending_call() {
        let s = state();
        let h = s.register(1, &reg("10.0.0.3")).unwrap();
        // Queued before the AsyncNotify arrives: answered at once.
        s.check_liveness(Instant::now() + Duration::from_secs(10));
        assert_eq!(
            s.async_notify(1, h, CALL),
            Ok(Some(NotifyOutcome::Notification(
                Notification::ResourceChange(vec![(
                    "10.0.0.3".into(),
                    resource_state::UNAVAILABLE
                )])
            )))
        );
        assert_eq!(s.async_notify(2, h, CALL), Err(werror::NOT_FOUND));
        assert_eq!(s.async_notify(1, h, CALL), Ok(None));
        assert_eq!(s.unregister(2, h), werror::NOT_FOUND);
        assert_eq!(s.unregister(1, h), werror::OK);
        assert_eq!(
            s.take_ready(1, Instant::now()),
            vec![(CALL, NotifyOutcome::Error(werror::NOT_FOUND))]
        );
        assert_eq!(s.unregister(1, h), werror::NOT_FOUND);
    }

    #[test]
    fn published_connections_wait_for_the_next_holder_of_their_address() {
        let s = with_public(&["10.0.0.100", "10.0.0.101"]);
        let conn = |port, public: &str| TcpConn {
            client: SocketAddr::new("10.0.1.7".parse().unwrap(), port),
            public: SocketAddr::new(public.parse().unwrap(), 445),
        };
        let a = conn(40000, "10.0.0.100");
        let b = conn(40001, "10.0.0.101");
        // n2 holds both; its list comes in two pages, complete only with both.
        s.heard_conns("n2", 5, 1, 2, 0b11, &[b]);
        assert!(s.conns_text().starts_with("10.0.0.100 - 0"));
        s.heard_conns("n2", 5, 0, 2, 0b11, &[a]);
        assert_eq!(
            s.conns_text(),
            "10.0.0.100 n2 1 10.0.1.7:40000\n10.0.0.101 n2 1 10.0.1.7:40001\n"
        );
        // An older list is ignored; a newer one taken after n2 released address 0 (and whose
        // client of address 1 left) keeps address 0's list and empties address 1's.
        s.heard_conns("n2", 4, 0, 1, 0b11, &[]);
        s.heard_conns("n2", 6, 0, 1, 0b10, &[]);
        assert_eq!(
            s.conns_text(),
            "10.0.0.100 n2 1 10.0.1.7:40000\n10.0.0.101 n2 0\n"
        );
        // This node takes address 0: those are its tickles, once.
        assert_eq!(s.take_conns(0), vec![a]);
        assert_eq!(s.take_conns(0), vec![]);
        assert!(s.conns_text().starts_with("10.0.0.100 n1 0"));
    }

    fn reg_ex(ip: &str, share: Option<&str>, flags: u32) -> RegisterRequest {
        RegisterRequest {
            version: VERSION_2,
            share_name: share.map(str::to_string),
            flags,
            ex: true,
            ..reg(ip)
        }
    }

    fn ip(addr: &str, online: bool) -> IpAddrInfo {
        IpAddrInfo {
            addr: addr.parse().unwrap(),
            online,
        }
    }

    fn ip_change(list: Vec<IpAddrInfo>) -> Result<Option<NotifyOutcome>, u32> {
        Ok(Some(NotifyOutcome::Notification(Notification::IpChange(
            list,
        ))))
    }

    #[test]
    fn ip_change_goes_to_registrations_that_asked_for_it() {
        let s = state();
        let asked = s
            .register(1, &reg_ex("10.0.0.3", None, REGISTER_IP_NOTIFICATION))
            .unwrap();
        let plain = s.register(2, &reg_ex("10.0.0.3", None, 0)).unwrap();
        // n2 drains: its address goes offline (MS-SWN 3.1.6.4); a pending call hears it.
        assert_eq!(s.async_notify(1, asked, CALL), Ok(None));
        s.heard("n2", 1, NodeStatus::Draining, 0, Instant::now());
        assert_eq!(
            s.take_ready(1, Instant::now()),
            vec![(
                CALL,
                NotifyOutcome::Notification(Notification::IpChange(vec![ip("10.0.0.2", false)]))
            )]
        );
        s.heard("n2", 2, NodeStatus::Up, 0, Instant::now());
        assert_eq!(
            s.async_notify(1, asked, CALL),
            ip_change(vec![ip("10.0.0.2", true)])
        );
        // Changes before the client asks gather in one notification, one entry per address,
        // the last state winning.
        s.heard("n2", 3, NodeStatus::Draining, 0, Instant::now());
        s.heard("n3", 1, NodeStatus::Isolated, 0, Instant::now());
        s.heard("n2", 4, NodeStatus::Up, 0, Instant::now());
        // (n3 isolated is this registration's own node: its CLIENT_MOVE comes first.)
        assert_eq!(
            s.async_notify(1, asked, CALL),
            Ok(Some(NotifyOutcome::Notification(Notification::ClientMove(
                vec!["10.0.0.1".parse().unwrap()]
            ))))
        );
        assert_eq!(
            s.async_notify(1, asked, CALL),
            ip_change(vec![ip("10.0.0.2", true), ip("10.0.0.3", false)])
        );
        // n3's client without the flag heard only its own node's CLIENT_MOVE.
        assert!(matches!(
            s.async_notify(2, plain, CALL),
            Ok(Some(NotifyOutcome::Notification(Notification::ClientMove(
                _
            ))))
        ));
        assert_eq!(s.async_notify(2, plain, CALL), Ok(None));
    }

    #[test]
    fn ip_change_follows_public_addresses_across_a_takeover() {
        let s = with_public(&["10.0.0.100"]);
        let h = s
            .register(
                1,
                &reg_ex("10.0.0.1", Some("data"), REGISTER_IP_NOTIFICATION),
            )
            .unwrap();
        let t0 = Instant::now();
        s.heard("n2", 1, NodeStatus::Up, 0b1, t0);
        assert_eq!(
            s.async_notify(1, h, CALL),
            ip_change(vec![ip("10.0.0.100", true)])
        );
        // n2 falls silent: its address and the public address it held go offline together;
        // this node takes the public address over: online again.
        s.heard("n3", 1, NodeStatus::Up, 0, t0 + Duration::from_secs(10));
        s.check_liveness(t0 + Duration::from_secs(10));
        assert_eq!(
            s.async_notify(1, h, CALL),
            ip_change(vec![ip("10.0.0.2", false), ip("10.0.0.100", false)])
        );
        s.set_local_claims(0b1);
        assert_eq!(
            s.async_notify(1, h, CALL),
            ip_change(vec![ip("10.0.0.100", true)])
        );
    }

    fn resource(addr: &str, state: u32) -> Result<Option<NotifyOutcome>, u32> {
        Ok(Some(NotifyOutcome::Notification(
            Notification::ResourceChange(vec![(addr.into(), state)]),
        )))
    }

    #[test]
    fn a_public_address_registration_follows_the_address_from_node_to_node() {
        let s = with_public(&["10.0.0.100", "10.0.0.101"]);
        // Accepted while no node holds it (moving), as the interface list names it.
        let h = s.register(1, &reg("10.0.0.100")).unwrap();
        assert_eq!(
            s.register(1, &reg("10.0.0.102")),
            Err(werror::INVALID_STATE)
        );
        let t0 = Instant::now();
        s.heard("n2", 1, NodeStatus::Up, 0b1, t0);
        let list = s.interface_list();
        assert_eq!(list.len(), 5);
        assert_eq!(
            (list[3].group_name.as_str(), list[3].state, list[3].witness),
            ("n2", iface_state::AVAILABLE, false)
        );
        assert_eq!(list[3].ipv4, Some("10.0.0.100".parse().unwrap()));
        assert_eq!(
            (list[4].group_name.as_str(), list[4].state),
            ("CLUSTER", iface_state::UNAVAILABLE)
        );
        assert_eq!(
            s.async_notify(1, h, CALL),
            resource("10.0.0.100", resource_state::AVAILABLE)
        );
        // n2 drains: its own clients move, the address's hear nothing while n2 still
        // holds it, then UNAVAILABLE when it lets it go (the pending call is answered) and
        // AVAILABLE once this node takes it.
        let node_client = s.register(2, &reg("10.0.0.2")).unwrap();
        s.heard("n2", 2, NodeStatus::Draining, 0b1, t0);
        assert!(matches!(
            s.async_notify(2, node_client, CALL),
            Ok(Some(NotifyOutcome::Notification(Notification::ClientMove(
                _
            ))))
        ));
        assert_eq!(s.async_notify(1, h, CALL), Ok(None));
        s.heard("n2", 3, NodeStatus::Draining, 0, t0);
        assert_eq!(
            s.take_ready(1, t0),
            vec![(
                CALL,
                NotifyOutcome::Notification(Notification::ResourceChange(vec![(
                    "10.0.0.100".into(),
                    resource_state::UNAVAILABLE
                )]))
            )]
        );
        s.set_local_claims(0b1);
        assert_eq!(
            s.async_notify(1, h, CALL),
            resource("10.0.0.100", resource_state::AVAILABLE)
        );
        assert_eq!(s.interface_list()[3].group_name, "n1");
        // n3 holds the other address and dies: UNAVAILABLE, then AVAILABLE when taken. A
        // direct change of holder is both.
        let h2 = s.register(3, &reg("10.0.0.101")).unwrap();
        s.heard("n3", 1, NodeStatus::Up, 0b10, t0);
        assert_eq!(
            s.async_notify(3, h2, CALL),
            resource("10.0.0.101", resource_state::AVAILABLE)
        );
        let later = t0 + Duration::from_secs(10);
        s.heard("n2", 4, NodeStatus::Up, 0, later);
        s.check_liveness(later);
        assert_eq!(
            s.async_notify(3, h2, CALL),
            resource("10.0.0.101", resource_state::UNAVAILABLE)
        );
        s.heard("n2", 5, NodeStatus::Up, 0b10, later);
        assert_eq!(
            s.async_notify(3, h2, CALL),
            resource("10.0.0.101", resource_state::AVAILABLE)
        );
        s.set_local_claims(0b11);
        s.heard("n2", 6, NodeStatus::Up, 0, later);
        assert_eq!(
            s.async_notify(3, h2, CALL),
            resource("10.0.0.101", resource_state::UNAVAILABLE)
        );
        assert_eq!(
            s.async_notify(3, h2, CALL),
            resource("10.0.0.101", resource_state::AVAILABLE)
        );
        // The first address's client heard none of that.
        assert_eq!(s.async_notify(1, h, CALL), Ok(None));
    }

    #[test]
    fn share_move_goes_to_registrations_for_that_share() {
        let s = state();
        let data = s.register(1, &reg_ex("10.0.0.2", Some("data"), 0)).unwrap();
        let other = s
            .register(2, &reg_ex("10.0.0.2", Some("other"), 0))
            .unwrap();
        let v1 = s.register(3, &reg("10.0.0.2")).unwrap();
        s.heard("n3", 1, NodeStatus::Draining, 0, Instant::now());
        assert_eq!(s.share_move("DATA", &["n3", "fd00::7"]), Ok(1));
        assert_eq!(
            s.async_notify(1, data, CALL),
            Ok(Some(NotifyOutcome::Notification(Notification::ShareMove(
                vec![ip("10.0.0.3", false), ip("fd00::7", true)]
            ))))
        );
        // A newer move replaces one not yet told.
        s.share_move("data", &["n1"]).unwrap();
        s.share_move("data", &["10.0.0.2"]).unwrap();
        assert_eq!(
            s.async_notify(1, data, CALL),
            Ok(Some(NotifyOutcome::Notification(Notification::ShareMove(
                vec![ip("10.0.0.2", true)]
            ))))
        );
        assert_eq!(s.async_notify(1, data, CALL), Ok(None));
        assert_eq!(s.async_notify(2, other, CALL), Ok(None));
        assert_eq!(s.async_notify(3, v1, CALL), Ok(None));
        assert!(s.share_move("data", &["nowhere"]).is_err());
        assert!(s.share_move("data", &[]).is_err());
    }

    /// The answer a pending AsyncNotify of connection `conn` gets at `at`, if any.
    fn answer_at(s: &WitnessState, conn: u64, at: Instant) -> Option<NotifyOutcome> {
        let mut ready = s.take_ready(conn, at);
        assert!(ready.len() <= 1, "{ready:?}");
        ready.pop().map(|(call, outcome)| {
            assert_eq!(call, CALL);
            outcome
        })
    }

    #[test]
    fn a_registration_sent_elsewhere_ends_so_its_client_registers_again() {
        let s = state();
        let grace = Duration::from_millis(s.config().reregister_after_ms);
        let moved = s.register(1, &reg("10.0.0.2")).unwrap();
        let ip_only = s
            .register(2, &reg_ex("10.0.0.3", None, REGISTER_IP_NOTIFICATION))
            .unwrap();
        let share_here = s.register(3, &reg_ex("10.0.0.1", Some("data"), 0)).unwrap();
        for (conn, h) in [(1, moved), (2, ip_only), (3, share_here)] {
            assert_eq!(s.async_notify(conn, h, CALL), Ok(None));
        }
        // n2 drains: CLIENT_MOVE for its client, IP_CHANGE for the other; a share move to
        // the address the third client already uses.
        s.heard("n2", 1, NodeStatus::Draining, 0, Instant::now());
        s.share_move("data", &["n1"]).unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            answer_at(&s, 1, t0),
            Some(NotifyOutcome::Notification(Notification::ClientMove(_)))
        ));
        assert!(matches!(
            answer_at(&s, 2, t0),
            Some(NotifyOutcome::Notification(Notification::IpChange(_)))
        ));
        assert!(matches!(
            answer_at(&s, 3, t0),
            Some(NotifyOutcome::Notification(Notification::ShareMove(_)))
        ));
        // The moved client may still ask within the grace; then its registration ends: the
        // pending call fails with ERROR_NOT_FOUND (MS-SWN 3.1.4.4), as do later calls.
        for (conn, h) in [(1, moved), (2, ip_only), (3, share_here)] {
            assert_eq!(s.async_notify(conn, h, CALL), Ok(None));
        }
        assert_eq!(answer_at(&s, 1, t0 + grace / 2), None);
        let late = Instant::now() + grace;
        assert_eq!(
            answer_at(&s, 1, late),
            Some(NotifyOutcome::Error(werror::NOT_FOUND))
        );
        assert_eq!(s.async_notify(1, moved, CALL), Err(werror::NOT_FOUND));
        assert_eq!(s.unregister(1, moved), werror::NOT_FOUND);
        // The others were not sent elsewhere: still registered, still waiting.
        assert_eq!(answer_at(&s, 2, late), None);
        assert_eq!(answer_at(&s, 3, late), None);
        assert!(s.status_text().contains("registrations 2"));
        // A share move to another address ends that registration too.
        s.share_move("data", &["n3"]).unwrap();
        let t1 = Instant::now();
        assert!(matches!(
            answer_at(&s, 3, t1),
            Some(NotifyOutcome::Notification(Notification::ShareMove(_)))
        ));
        assert_eq!(s.unregister(3, share_here), werror::OK);
        // The client registers again and hears the next change.
        let again = s.register(1, &reg("10.0.0.2")).unwrap();
        s.heard("n2", 2, NodeStatus::Up, 0, Instant::now());
        s.heard("n2", 3, NodeStatus::Draining, 0, Instant::now());
        assert!(matches!(
            s.async_notify(1, again, CALL),
            Ok(Some(NotifyOutcome::Notification(Notification::ClientMove(
                _
            ))))
        ));
    }

    #[test]
    fn a_moving_public_address_is_unavailable_then_available_then_its_registration_ends() {
        let s = with_public(&["10.0.0.100"]);
        let grace = Duration::from_millis(s.config().reregister_after_ms);
        let h = s.register(1, &reg("10.0.0.100")).unwrap();
        let t0 = Instant::now();
        s.heard("n2", 1, NodeStatus::Up, 0b1, t0);
        assert_eq!(
            s.async_notify(1, h, CALL),
            resource("10.0.0.100", resource_state::AVAILABLE)
        );
        // AVAILABLE sends nobody away.
        assert_eq!(s.async_notify(1, h, CALL), Ok(None));
        assert_eq!(answer_at(&s, 1, Instant::now() + 2 * grace), None);
        // n2 lets it go and this node takes it: both heard, within the grace.
        s.heard("n2", 2, NodeStatus::Draining, 0, t0);
        let t1 = Instant::now();
        assert_eq!(
            answer_at(&s, 1, t1),
            Some(NotifyOutcome::Notification(Notification::ResourceChange(
                vec![("10.0.0.100".into(), resource_state::UNAVAILABLE)]
            )))
        );
        s.set_local_claims(0b1);
        assert_eq!(
            s.async_notify(1, h, CALL),
            resource("10.0.0.100", resource_state::AVAILABLE)
        );
        assert_eq!(s.async_notify(1, h, CALL), Ok(None));
        assert_eq!(
            answer_at(&s, 1, t1 + grace),
            Some(NotifyOutcome::Error(werror::NOT_FOUND))
        );
        assert!(s.status_text().contains("registrations 0"));
    }

    #[test]
    fn releasing_a_public_address_ends_the_rpc_connections_made_to_it() {
        use std::io::Read;
        let s = with_public(&["127.0.0.1"]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let public: IpAddr = "127.0.0.1".parse().unwrap();
        let clone = || server.try_clone().unwrap();
        // Not (yet, or any more) this node's address: refused.
        assert!(!s.add_rpc_conn(1, public, clone()));
        s.serve_rpc_on_public(0);
        assert!(s.add_rpc_conn(1, public, clone()));
        // A connection to a node address, and one from an IPv4 client of a dual-stack socket.
        assert!(s.add_rpc_conn(2, "10.0.0.1".parse().unwrap(), clone()));
        s.register(1, &reg("127.0.0.1")).unwrap();
        s.register(2, &reg("10.0.0.2")).unwrap();
        assert_eq!(s.end_rpc_on_public(0), 1);
        // The client sees its connection end; its registration is gone, the other stays.
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 0);
        assert!(s.status_text().contains("registrations 1"));
        assert!(!s.add_rpc_conn(3, public, clone()));
        s.serve_rpc_on_public(0);
        assert!(s.add_rpc_conn(4, "::ffff:127.0.0.1".parse().unwrap(), clone()));
        s.drop_connection(4);
        assert!(s.add_rpc_conn(5, "::ffff:127.0.0.1".parse().unwrap(), clone()));
        assert_eq!(s.end_rpc_on_public(0), 1);
    }

    #[test]
    fn keep_alive_times_out_a_pending_notify() {
        let s = state();
        let mut r = reg("10.0.0.2");
        r.ex = true;
        r.version = VERSION_2;
        r.keep_alive_timeout = 5;
        let h = s.register(1, &r).unwrap();
        let t0 = Instant::now();
        assert_eq!(s.async_notify(1, h, CALL), Ok(None));
        assert!(s.take_ready(1, t0).is_empty());
        assert_eq!(
            s.take_ready(1, t0 + Duration::from_secs(6)),
            vec![(CALL, NotifyOutcome::Error(werror::TIMEOUT))]
        );
    }
}
