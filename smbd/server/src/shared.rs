//! State shared by all worker threads: configuration, shares, users, the lock service and the
//! mailboxes that carry events (lock notifications, directory changes) to the worker owning a
//! connection.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Period of the ticking worker's timer (crate::worker): it sleeps at most this long, so a
/// deadline further away needs no wake-up to be met.
pub(crate) const TIMER_TICK: Duration = Duration::from_secs(1);

use smb_auth::users::UserDb;

use crate::config::Config;
use crate::locking::{LockService, Notification, Reply, Request, RequestId, SessionId};

/// One exported directory.
#[derive(Debug, Clone)]
pub struct Share {
    pub name: String,
    /// Canonical absolute path of the share root.
    pub root: PathBuf,
    pub read_only: bool,
    pub encrypt: bool,
    /// Filesystem identity mixed into stable file ids.
    pub fs_id: u64,
    /// The root held open: operations on client paths resolve beneath it (crate::beneath).
    pub dir: Arc<crate::beneath::ShareRoot>,
    /// Users (upper-cased names) and groups allowed in; both empty: every configured user.
    pub valid_users: Vec<String>,
    pub valid_groups: Vec<u32>,
    /// Anonymous sessions may connect.
    pub guest_ok: bool,
    /// Continuously available: persistent handles, written-through writes.
    pub continuous_availability: bool,
    /// A DFS root (MS-DFSC) with these links (crate::dfs).
    pub dfs_root: bool,
    pub dfs_links: Vec<crate::config::DfsLink>,
    /// Change notify: lockmgrd carries changes in this share between nodes, because this
    /// machine's inotify does not see what other nodes do to its filesystem
    /// ([`crate::config::ChangeNotify`], [`ClusterNotify`]).
    pub notify_through_lockmgr: bool,
}

impl Share {
    /// A read-write share `name` at `dir` with every option off (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str, dir: &std::path::Path) -> Share {
        Share {
            name: name.into(),
            dir: Arc::new(crate::beneath::ShareRoot::open(dir).expect("share root")),
            root: dir.to_path_buf(),
            read_only: false,
            encrypt: false,
            fs_id: 1,
            valid_users: Vec::new(),
            valid_groups: Vec::new(),
            guest_ok: false,
            continuous_availability: false,
            dfs_root: false,
            dfs_links: Vec::new(),
            notify_through_lockmgr: false,
        }
    }

    /// Whether a session may connect to this share.
    pub fn admits(
        &self,
        user: &str,
        anonymous: bool,
        identity: Option<&crate::identity::UnixIdentity>,
    ) -> bool {
        if anonymous {
            return self.guest_ok;
        }
        if self.valid_users.is_empty() && self.valid_groups.is_empty() {
            return true;
        }
        self.valid_users
            .iter()
            .any(|u| u.eq_ignore_ascii_case(user))
            || identity.is_some_and(|id| self.valid_groups.iter().any(|&g| id.in_group(g)))
    }
}

/// Something a connection must react to that did not come from its own socket.
#[derive(Debug, Clone)]
pub enum Event {
    Lock(Notification),
    /// The cluster lock manager lost this connection's opens, locks and leases (its session
    /// with lockmgrd dropped): the connection must go so the client reopens.
    LockStateLost,
    /// A change in directory `dir` (absolute path): FILE_ACTION_*, the CompletionFilter
    /// bits it matches (`smb_proto::fscc::notify_filter`) and the entry name. `subtree`: the
    /// entry is below `dir`, not in it (`name` is then its path from `dir`, '\\'-separated),
    /// for watches with SMB2_WATCH_TREE only.
    DirChanged {
        dir: PathBuf,
        action: u32,
        filter: u32,
        name: String,
        subtree: bool,
    },
    /// Directory `dir` (absolute path) became delete-pending while still open: its waiting
    /// CHANGE_NOTIFYs end with STATUS_DELETE_PENDING.
    DirDeletePending {
        dir: PathBuf,
    },
    /// A client reconnected naming this session as its PreviousSessionId (MS-SMB2
    /// 3.3.5.5.3): tear it down.
    ExpireSession {
        session_id: u64,
    },
    /// The kernel dropped change events of directory `dir` (inotify queue overflow): its
    /// watchers must enumerate it again (STATUS_NOTIFY_ENUM_DIR).
    DirOverflow {
        dir: PathBuf,
    },
    /// Multichannel (MS-SMB2 3.3.5.5.2): connection `channel` bound `session_id`, which
    /// this connection owns; requests arriving there are signed with `signing_key`.
    ChannelBound {
        session_id: u64,
        channel: u64,
        signing_alg: smb_auth::keys::SigningAlgorithm,
        signing_key: ChannelKey,
    },
    /// A message that arrived on bound connection `channel` for a session this connection
    /// owns; the answer goes back as [`Event::ChannelOutput`].
    ChannelMessage {
        channel: u64,
        msg: Vec<u8>,
        /// The channel's CommandSequenceWindow: the MessageId is checked and credits are
        /// granted in the id space of the connection the message arrived on.
        seq: crate::seqwin::SeqHandle,
    },
    /// Frames to send on this (bound) connection on behalf of a session's owner; `close`
    /// asks to drop the connection (a protocol violation seen by the owner).
    ChannelOutput {
        frames: Vec<Vec<u8>>,
        close: bool,
    },
    /// A break for this (bound) connection to send on behalf of its session's owner: it
    /// watches for the break's TCP acknowledgement and hands it back if it fails first
    /// ([`Event::BreakUndelivered`]).
    SendBreak(crate::break_delivery::BreakDelivery),
    /// A break this connection sent, on its own transport or a bound channel, was not
    /// acknowledged by the client's TCP before that channel failed: send it on the session's
    /// next channel (MS-SMB2 3.3.4.6, crate::break_delivery).
    BreakUndelivered(crate::break_delivery::BreakDelivery),
    /// The session this connection was bound to ended.
    ChannelGone {
        session_id: u64,
    },
    /// Bound connection `channel` went away.
    ChannelClosed {
        channel: u64,
    },
    /// The wait of a durable reconnect for the durable open `persistent` is over: the
    /// connection that held the open let it go, or the wait's deadline passed
    /// ([`Shared::wait_for_durable`]). The reconnect asks the lock service once more.
    DurableWaitOver {
        persistent: u64,
    },
    /// Connection `conn`, whose client had hung up, is torn down (its opens are closed) or
    /// lives on only through other channels: a CREATE that waited for it is decided again
    /// ([`Shared::wait_for_hung_up`]).
    HangupDone {
        conn: u64,
    },
    /// The delayed LastWriteTime update of the open `volatile` of this connection may be due
    /// ([`Shared::arm_write_time`], crate::write_time).
    WriteTimeDue {
        volatile: u64,
    },
    /// Time to check whether the client's TCP acknowledged the breaks sent on this channel
    /// ([`Shared::arm_ack_check`]); handled by the connection's worker, which has the socket.
    AckCheck,
    /// The operator view asks every connection for its sessions, opens and locks
    /// (crate::smbstatus).
    Status(std::sync::mpsc::Sender<crate::smbstatus::ConnStatus>),
}

/// A channel signing key; its Debug output is redacted (events are logged).
#[derive(Clone)]
pub struct ChannelKey(pub Vec<u8>);

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

/// A worker's inbox, woken through an eventfd the worker's ring reads.
pub struct Mailbox {
    queue: Mutex<Vec<(u64, Event)>>,
    efd: File,
}

impl Mailbox {
    pub fn new() -> std::io::Result<Mailbox> {
        Ok(Mailbox {
            queue: Mutex::new(Vec::new()),
            efd: File::from(crate::sys::eventfd()?),
        })
    }
    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }
    pub fn post(&self, conn: u64, ev: Event) {
        lock(&self.queue).push((conn, ev));
        self.wake();
    }
    pub fn wake(&self) {
        // A full counter (EAGAIN) still means the reader will wake; nothing to do on error.
        let _ = (&self.efd).write(&1u64.to_ne_bytes());
    }
    /// Reset the eventfd counter (the worker then drains the queue).
    pub fn clear_counter(&self) {
        let mut b = [0u8; 8];
        let _ = (&self.efd).read(&mut b);
    }
    pub fn drain(&self) -> Vec<(u64, Event)> {
        std::mem::take(&mut *lock(&self.queue))
    }
}

/// Lock a mutex, recovering the data if a thread panicked while holding it (the state is plain
/// data that stays consistent between calls).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Shared {
    pub config: Config,
    pub shares: Vec<Share>,
    pub users: Arc<UserDb>,
    /// The Unix identity of every user and of the guest account (crate::identity).
    pub identities: crate::identity::Identities,
    pub server_guid: [u8; 16],
    /// When the server started (a FILETIME from `clock`).
    pub start_time: u64,
    /// The time of day for the SMB core (crate::clock): the system's, or one a test steps.
    pub clock: crate::clock::WallClock,
    pub mailboxes: Vec<Mailbox>,
    /// Called by all workers at once (a cluster lock service has several requests in flight).
    locks: Box<dyn LockService>,
    /// Lock-service requests made so far, by kind (round trips, with a remote lockmgrd).
    pub lock_requests: crate::locking::RequestCounts,
    /// What `/metrics` reports (crate::metrics).
    pub metrics: crate::metrics::SmbMetrics,
    /// Opens whose READ/WRITE need no `CheckIo` (crate::io_grants).
    io_grants: Mutex<crate::io_grants::IoGrants>,
    /// Held while lock-service notifications are taken out and posted, so that they reach the
    /// mailboxes in the order the service queued them, and while a request wants the
    /// notifications for its own connection returned to it ([`Shared::lock_request_inline`]).
    routing: Mutex<()>,
    /// Connection id -> worker index.
    routes: Mutex<HashMap<u64, usize>>,
    /// Watched directory -> connections watching it (with a use count).
    watches: Mutex<HashMap<PathBuf, HashMap<u64, usize>>>,
    /// Watched directory -> how many of its watches watch the tree (SMB2_WATCH_TREE). Locked
    /// after `watches`.
    watch_trees: Mutex<HashMap<PathBuf, usize>>,
    /// Change notify across nodes through the lock service ([`Shared::dir_changed`]).
    cluster_notify: ClusterNotify,
    /// inotify on the watched directories, for changes made outside this smbd process
    /// (`start_local_watch`; unset in unit tests).
    local_watch: std::sync::OnceLock<Arc<crate::dirwatch::LocalWatcher>>,
    pub shutdown: std::sync::atomic::AtomicBool,
    /// A worker thread panicked (the server is stopping; `Server::run` reports it).
    pub worker_panicked: std::sync::atomic::AtomicBool,
    internal_ids: std::sync::atomic::AtomicU64,
    /// SMBD_DUMP_DIR: write every received message there (debugging, corpus building).
    pub dump_dir: Option<PathBuf>,
    /// Established sessions of all connections: session id -> (connection, user).
    sessions: Mutex<HashMap<u64, SessionRecord>>,
    /// The process-wide open-file budget (`[limits] open_files`).
    pub fds: crate::limits::FdBudget,
    /// What each client (source address, user) holds over all its connections.
    pub clients: crate::limits::ClientUsage,
    /// Durable opens of connections that went away, kept for a reconnect (crate::open).
    pub(crate) parked: crate::open::ParkedOpens,
    /// Durable reconnects waiting for the connection that still holds their open to let it
    /// go ([`Shared::wait_for_durable`]).
    durable_waits: Mutex<Vec<DurableWait>>,
    /// Events due to a connection at a deadline ([`Shared::arm_conn_timer`]): delayed
    /// LastWriteTime updates (crate::write_time) and TCP acknowledgement checks of breaks.
    conn_timers: Mutex<Vec<(Instant, u64, Event)>>,
    /// Connections whose client hung up and which are not torn down yet (crate::hangup).
    hangups: crate::hangup::Hangups,
    /// How many of this node's opens hold each file's LastWriteTime, by (device, inode)
    /// (crate::write_time): the hold in the file's xattr goes when the last one lets go.
    write_holds: Mutex<HashMap<(u64, u64), u32>>,
}

/// Change notify across nodes (MS-SMB2 3.3.5.19, MS-FSA 2.1.4.1): on a cluster filesystem a
/// node's inotify does not see what other nodes change, so with a cluster lock service:
/// * a node without inotify (`local_change_notify = false`) registers each directory its
///   clients watch with lockmgrd (`WatchDir` on the first watcher, again when WATCH_TREE
///   appears or goes, `UnwatchDir` after the last), under the directory's lock-service file
///   id (the id an open of it names, the same on every node);
/// * lockmgrd tells every node which directories other nodes watch (`DirWatched`), so a
///   node reports a change it makes (`DirChange`) only for those: the directory it made the
///   change in, and each directory above it up to the share root that another node watches
///   the tree of (under the entry's path from there). An unwatched directory costs nothing:
///   not even a `stat` while no other node watches anything;
/// * lockmgrd forwards each change to the other watching nodes (`DirChanged`), which hand it
///   to their watchers of that directory as their own changes (`Event::DirChanged`, with
///   the same CompletionFilter, WATCH_TREE and overflow rules, `Conn::notify_fire`).
///
/// * on a share whose filesystem other machines change (`change_notify` "cluster", or "auto"
///   on such a filesystem), inotify runs too: it sees this machine's processes only. The
///   node also watches, through inotify, the directories other nodes watch (`DirWatched`
///   says where: the share and the path below its root, `Shared::watch_for_other_nodes`),
///   and passes on what it sees there as it passes on smbd's own changes; smbd's own
///   changes are recorded so that their inotify events are not passed on twice
///   (`crate::dirwatch`). inotify is not recursive: a change made outside SMB below a
///   directory some node watches the tree of is seen only if some node watches the directory
///   it is in;
///
/// Bounds: lockmgrd caps the directories one node registers (`max_watches`; beyond it the
/// node logs and its watchers get only local changes); a node sends a change as one
/// synchronous request of the worker that made it, so a flood of changes is paced by the
/// round trips, not queued; each watcher keeps at most its buffer's worth and then answers
/// STATUS_NOTIFY_ENUM_DIR; a path too long for the wire goes as "changes lost"
/// (`DIR_CHANGES_LOST`, STATUS_NOTIFY_ENUM_DIR at the watchers).
#[derive(Default)]
struct ClusterNotify {
    /// Directories registered with the lock service: path -> (lock-service id, tree). Held
    /// across a registration request, so registrations and unregistrations of one directory
    /// reach lockmgrd in the order of the watch table's changes.
    registered: Mutex<HashMap<PathBuf, (crate::locking::FileId, bool)>>,
    /// The registered paths by id (a directory may be reachable through several shares).
    /// Locked inside `registered`, never held across a request.
    by_id: Mutex<HashMap<crate::locking::FileId, Vec<PathBuf>>>,
    /// Directories other nodes watch (lockmgrd's `DirWatched`): id -> `watched` bits.
    others: Mutex<HashMap<crate::locking::FileId, u8>>,
    /// Of those, the ones this node's inotify watches for them (a share whose filesystem
    /// other machines change, `Share::notify_through_lockmgr`): id -> this node's path. What
    /// this machine's processes change there outside SMB is passed on like smbd's changes.
    for_others: Mutex<HashMap<crate::locking::FileId, PathBuf>>,
}

/// A durable reconnect of connection `conn` waiting for the durable open `persistent`.
struct DurableWait {
    persistent: u64,
    conn: u64,
    deadline: Instant,
}

/// What other connections need to know about an established session: to expire it on
/// reconnect (PreviousSessionId) and to answer binding attempts (MS-SMB2 3.3.5.5.2).
#[derive(Clone)]
pub struct SessionRecord {
    pub conn: u64,
    pub user: String,
    pub dialect: u16,
    pub signing_alg: smb_auth::keys::SigningAlgorithm,
    pub signing_key: Vec<u8>,
    pub cipher: Option<smb_auth::keys::Cipher>,
    /// Connections bound to the session besides its own.
    pub channels: u32,
}

/// Channels a session may have, its own connection included (Samba's limit, which
/// smbtorture's multichannel tests expect: the 33rd gets STATUS_INSUFFICIENT_RESOURCES).
pub const MAX_CHANNELS: u32 = 32;

impl Shared {
    pub fn new(
        config: Config,
        shares: Vec<Share>,
        users: UserDb,
        locks: Box<dyn LockService>,
        workers: usize,
    ) -> std::io::Result<Shared> {
        let mut mailboxes = Vec::new();
        for _ in 0..workers.max(1) {
            mailboxes.push(Mailbox::new()?);
        }
        let identities = crate::identity::Identities::resolve(&users, &config.server.guest_account)
            .map_err(std::io::Error::other)?;
        let fds = crate::limits::FdBudget::new(&config.limits);
        Ok(Shared {
            config,
            shares,
            identities,
            users: Arc::new(users),
            server_guid: rand::random(),
            start_time: crate::clock::WallClock::System.filetime(),
            clock: crate::clock::WallClock::System,
            mailboxes,
            locks,
            lock_requests: crate::locking::RequestCounts::default(),
            metrics: Default::default(),
            io_grants: Mutex::new(Default::default()),
            routing: Mutex::new(()),
            routes: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            watch_trees: Mutex::new(HashMap::new()),
            cluster_notify: ClusterNotify::default(),
            local_watch: std::sync::OnceLock::new(),
            shutdown: std::sync::atomic::AtomicBool::new(false),
            worker_panicked: std::sync::atomic::AtomicBool::new(false),
            internal_ids: std::sync::atomic::AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            dump_dir: std::env::var_os("SMBD_DUMP_DIR").map(PathBuf::from),
            fds,
            clients: Default::default(),
            parked: Default::default(),
            durable_waits: Mutex::new(Vec::new()),
            hangups: Default::default(),
            conn_timers: Mutex::new(Vec::new()),
            write_holds: Mutex::new(HashMap::new()),
        })
    }

    /// The same state reading the time of day from `clock` (simulated-time tests, fuzzing).
    pub fn with_clock(mut self, clock: crate::clock::WallClock) -> Shared {
        self.start_time = clock.filetime();
        self.clock = clock;
        self
    }

    /// Every connection's status (crate::smbstatus), asked of each on its worker; those that
    /// do not answer within `wait` are counted as missing.
    pub fn connection_status(
        &self,
        wait: std::time::Duration,
    ) -> (Vec<crate::smbstatus::ConnStatus>, usize) {
        let conns: Vec<u64> = lock(&self.routes).keys().copied().collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut asked = 0;
        for c in conns {
            if self.post_event(c, Event::Status(tx.clone())) {
                asked += 1;
            }
        }
        drop(tx);
        let deadline = std::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < asked {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => out.push(s),
                // Timed out, or every sender gone (connections that closed meanwhile).
                Err(_) => break,
            }
        }
        out.sort_by_key(|c| c.conn);
        let missing = asked - out.len();
        (out, missing)
    }

    pub fn register_conn(&self, conn: u64, worker: usize) {
        lock(&self.routes).insert(conn, worker);
        self.locks.open_session(SessionId(conn));
    }

    pub fn unregister_conn(&self, conn: u64) {
        self.locks.end_session(SessionId(conn));
        self.route_events();
        lock(&self.io_grants).conn_gone(conn);
        lock(&self.routes).remove(&conn);
        {
            let mut w = lock(&self.watches);
            for m in w.values_mut() {
                m.remove(&conn);
            }
            w.retain(|_, m| !m.is_empty());
        }
        // Last: whoever waited for this connection's opens to go finds them gone.
        self.transport_done(conn);
    }

    /// Connection `conn` talks over the socket `fd`: while it is not torn down, a CREATE of
    /// another connection that meets a conflict waits for it if its client hung up
    /// ([`Shared::wait_for_hung_up`], crate::hangup). The caller calls
    /// [`Shared::unregister_conn`] (or [`Shared::transport_done`]) before closing `fd`.
    pub fn register_transport(&self, conn: u64, fd: std::os::fd::RawFd) {
        self.hangups.register(conn, fd);
    }

    /// This node is releasing public address `ip`: end the client connections made to it,
    /// while it is still here so that their FIN reaches the clients, and those made to it
    /// until [`Shared::address_released`] (see `witness::public_ip`). Returns how many.
    pub fn end_connections_to(&self, ip: std::net::IpAddr) -> usize {
        self.hangups.end_transports_to(ip)
    }

    /// Public address `ip` is gone from this node ([`Shared::end_connections_to`]).
    pub fn address_released(&self, ip: std::net::IpAddr) {
        self.hangups.released(ip);
    }

    /// The end of `conn`'s transport has been processed (its opens are closed, or live on
    /// through its sessions' other channels): connections waiting for that are told
    /// ([`Event::HangupDone`]).
    pub fn transport_done(&self, conn: u64) {
        for w in self.hangups.done(conn) {
            self.post_event(w, Event::HangupDone { conn });
        }
    }

    /// The connections other than `conn` whose client hung up and which are not torn down
    /// yet; `conn` hears of each one's teardown with [`Event::HangupDone`].
    pub fn wait_for_hung_up(&self, conn: u64) -> Vec<u64> {
        self.hangups.wait_for_hung_up(conn)
    }

    fn route_events(&self) {
        let _routing = lock(&self.routing);
        while let Some((s, n)) = self.next_event() {
            self.post(s.0, Event::Lock(n));
        }
        let lost = self.locks.take_lost_connections();
        if !lost.is_empty() {
            lock(&self.io_grants).clear();
        }
        for s in lost {
            self.post(s.0, Event::LockStateLost);
        }
    }

    /// The lock service recalls the I/O grants of `file` (it holds back a byte-range lock or
    /// a caching grant until this node acknowledges): stop using them, then acknowledge from
    /// the lock-service session the recall came to. Called with `routing` held, so the ack
    /// goes to the service directly (what it causes is routed by the caller's loop).
    fn answer_io_recall(&self, session: SessionId, file: crate::locking::FileId, generation: u64) {
        lock(&self.io_grants).recall(file, generation);
        let req = Request::IoRecallAck { file };
        self.lock_requests.count(&req);
        let id = RequestId(self.fresh_internal_id());
        match self.locks.request(session, id, req) {
            Reply::Done(crate::locking::Status::Success) => {}
            other => tracing::warn!(?other, ?file, "I/O recall acknowledgement refused"),
        }
    }

    fn fresh_internal_id(&self) -> u64 {
        (1 << 63)
            | self
                .internal_ids
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The lock service's next notification for a connection. I/O recalls are answered
    /// here and not passed on, and a deferred create's completion records its I/O grant
    /// here, in order with the recalls (a recall that overtook it voids it), not when its
    /// connection gets to it. Called with `routing` held.
    fn next_event(&self) -> Option<(SessionId, Notification)> {
        loop {
            let (s, n) = self.locks.poll_event()?;
            match &n {
                Notification::IoRecall { file, generation } => {
                    self.answer_io_recall(s, *file, *generation);
                    continue;
                }
                Notification::DirWatched { dir, state, path } => {
                    {
                        let mut o = lock(&self.cluster_notify.others);
                        if *state == 0 {
                            o.remove(dir);
                        } else {
                            o.insert(*dir, *state);
                        }
                    }
                    self.watch_for_other_nodes(*dir, *state != 0, path);
                    continue;
                }
                Notification::DirChanged(c) => {
                    self.deliver_other_node_change(c.clone());
                    continue;
                }
                Notification::Completed { request, reply } => {
                    lock(&self.io_grants).opened(
                        s.0,
                        request.0,
                        crate::io_grants::grant_of_open_reply(reply),
                    );
                }
                _ => {}
            }
            return Some((s, n));
        }
    }

    /// Send one request: counted, the I/O grants it ends forgotten, and a create asking
    /// for an I/O grant announced to the grant table first
    /// ([`crate::io_grants::IoGrants::ask_open`]) and its immediate answer recorded after
    /// (a deferred one is recorded by [`Shared::next_event`]).
    fn send_request(&self, conn: u64, id: u64, req: Request) -> Reply {
        self.lock_requests.count(&req);
        self.forget_io_grant_of(&req);
        let asks_grant = match &req {
            Request::Open(o) | Request::OpenDurable { open: o, .. } if o.io_grant => {
                lock(&self.io_grants).ask_open(o.file, conn, id);
                true
            }
            _ => false,
        };
        let timer = crate::metrics::Timer::start();
        let r = self.locks.request(SessionId(conn), RequestId(id), req);
        if r != Reply::Pending {
            timer.stop(&self.metrics.lockmgr_latency);
        }
        if asks_grant && r != Reply::Pending {
            lock(&self.io_grants).opened(conn, id, crate::io_grants::grant_of_open_reply(&r));
        }
        r
    }

    /// The open may READ/WRITE without asking the lock service.
    pub fn io_granted(&self, open: crate::locking::OpenId) -> bool {
        lock(&self.io_grants).is_granted(open)
    }

    /// Ask the lock service for `open`'s I/O check with `request` (a `CheckIoGrant`) on
    /// behalf of connection `conn`, recording the grant if one comes back (and was not
    /// recalled meanwhile).
    pub fn check_io_with_grant(
        &self,
        conn: u64,
        open: crate::locking::OpenId,
        file: crate::locking::FileId,
        request: Request,
    ) -> Reply {
        lock(&self.io_grants).ask(file);
        let reply = self.lock_request(conn, 0, request);
        let grant = match reply {
            Reply::IoGranted { generation } => Some((open, generation, conn)),
            _ => None,
        };
        lock(&self.io_grants).answered(file, grant);
        reply
    }

    /// Connection `conn` is about to ask for a byte-range lock on `file`: the grants of its
    /// lock-service session there end (the service drops them with the request).
    pub fn drop_io_grants(&self, file: crate::locking::FileId, conn: u64) {
        let session_of_conn = (!self.locks.one_session_per_node()).then_some(conn);
        lock(&self.io_grants).drop_file(file, session_of_conn);
    }

    /// A close or disconnect ends the open's grant (the lock service drops it too).
    fn forget_io_grant_of(&self, req: &Request) {
        // A reclaimed durable open asks again: its grant ended with the disconnect.
        if let Request::Close { open }
        | Request::Disconnect { open }
        | Request::Reclaim { open, .. } = req
        {
            lock(&self.io_grants).forget(*open);
        }
    }

    fn post(&self, conn: u64, ev: Event) {
        self.post_event(conn, ev);
    }

    /// Deliver `ev` to the worker owning connection `conn`; false if the connection is gone.
    pub fn post_event(&self, conn: u64, ev: Event) -> bool {
        let worker = lock(&self.routes).get(&conn).copied();
        match worker.and_then(|w| self.mailboxes.get(w)) {
            Some(mb) => {
                mb.post(conn, ev);
                true
            }
            None => {
                tracing::debug!(conn, ?ev, "event for a gone connection dropped");
                false
            }
        }
    }

    /// The lock service's session history for the metrics ([`LockService::session_counts`]).
    pub fn lock_session_counts(&self) -> Option<(u64, u64, u64)> {
        self.locks.session_counts()
    }

    /// What the lock manager knows of node `node` ([`LockService::node_session`]).
    pub fn lock_node_session(&self, node: &str) -> crate::locking::NodeSession {
        self.locks.node_session(node)
    }

    /// Whether this node holds a lock manager lease at `now` ([`LockService::lease_live`]).
    pub fn lock_lease_live(&self, now: std::time::Instant) -> bool {
        self.locks.lease_live(now)
    }

    /// One lock-service request on behalf of connection `conn`. `id` is the SMB MessageId for
    /// requests that may be deferred (CREATE, LOCK) so completions and CANCEL can name them;
    /// 0 asks for a fresh internal id that cannot collide with a MessageId.
    pub fn lock_request(&self, conn: u64, id: u64, req: Request) -> Reply {
        let id = if id == 0 {
            self.fresh_internal_id()
        } else {
            id
        };
        let r = self.send_request(conn, id, req);
        self.route_events();
        r
    }

    /// [`Shared::lock_request`], but notifications for `conn` itself are returned instead of
    /// posted, so the caller can send them before answering later requests of the same
    /// connection (a lease break a rename causes must reach the client before the responses to
    /// what it sends next: smbtorture lease.rename_wait).
    pub fn lock_request_inline(
        &self,
        conn: u64,
        id: u64,
        req: Request,
    ) -> (Reply, Vec<crate::locking::Notification>) {
        // Nobody else takes notifications out until ours are: one that arrived before the reply
        // is still queued when the reply is in.
        let _routing = lock(&self.routing);
        let r = self.send_request(conn, id, req);
        let mut mine = Vec::new();
        while let Some((s, n)) = self.next_event() {
            if s.0 == conn && !matches!(n, crate::locking::Notification::Completed { .. }) {
                mine.push(n);
            } else {
                self.post(s.0, Event::Lock(n));
            }
        }
        (r, mine)
    }

    /// Who else has `file` open, cluster wide (rename and replace checks). `except` is the
    /// caller's own open. Errors carry the lock service's status (lockmgrd unreachable).
    pub fn file_usage(
        &self,
        conn: u64,
        file: crate::locking::FileId,
        except: Option<crate::locking::OpenId>,
    ) -> Result<crate::locking::FileUsage, crate::locking::Status> {
        match self.lock_request(conn, 0, Request::QueryUsage { file, except }) {
            Reply::Usage(u) => Ok(u),
            Reply::Done(st) => Err(st),
            other => {
                tracing::warn!(?other, "unexpected answer to a usage query");
                Err(crate::locking::Status::Unsuccessful)
            }
        }
    }

    /// The sharing check of an open of `req.file` (MS-FSA 2.1.5.1.2) against every open of
    /// it on every node, without keeping the open: granted, it is closed again at once. An
    /// open that would have to wait for a break (a directory lease's handle caching in the
    /// way of a share-mode conflict) is cancelled and counts as the conflict it is.
    pub fn share_check_open(
        &self,
        conn: u64,
        req: crate::locking::OpenRequest,
    ) -> Result<(), crate::locking::Status> {
        use crate::locking::Status;
        let id = self.fresh_internal_id();
        match self.lock_request(conn, id, Request::Open(req)) {
            Reply::Opened { open, .. } | Reply::OpenedIo { open, .. } => {
                match self.lock_request(conn, 0, Request::Close { open }) {
                    Reply::Closed { .. } | Reply::Done(Status::Success) => {}
                    other => tracing::warn!(?other, "closing a share-check open"),
                }
                Ok(())
            }
            Reply::Pending => {
                // A grant that overtakes the cancel reaches the connection as a completion
                // nobody waits for, which gives the open back (conn/ops/oplock.rs).
                self.lock_request(
                    conn,
                    0,
                    Request::Cancel {
                        request: crate::locking::RequestId(id),
                    },
                );
                Err(Status::SharingViolation)
            }
            Reply::Done(st) => Err(st),
            other => {
                tracing::warn!(?other, "unexpected answer to a share-check open");
                Err(Status::Unsuccessful)
            }
        }
    }

    /// Fire lock-service timers (break timeouts).
    pub fn lock_tick(&self) {
        self.locks.tick();
        self.route_events();
    }

    /// Fire every timer due at `now`: the lock service's and the deadlines of waiting durable
    /// reconnects. The worker's timer calls it (simulated-time tests step it by hand).
    pub fn tick(&self, now: Instant) {
        self.lock_tick();
        let due: Vec<DurableWait> = {
            let mut waits = lock(&self.durable_waits);
            let (due, later) = std::mem::take(&mut *waits)
                .into_iter()
                .partition(|w| w.deadline <= now);
            *waits = later;
            due
        };
        for w in due {
            self.post_event(
                w.conn,
                Event::DurableWaitOver {
                    persistent: w.persistent,
                },
            );
        }
        let due: Vec<(Instant, u64, Event)> = {
            let mut timers = lock(&self.conn_timers);
            let (due, later) = std::mem::take(&mut *timers)
                .into_iter()
                .partition(|t| t.0 <= now);
            *timers = later;
            due
        };
        for (_, conn, event) in due {
            self.post_event(conn, event);
        }
    }

    /// Connection `conn` gets `event` at `due`, armed at `now`. The ticking worker is woken
    /// only for a deadline before its next periodic tick ([`TIMER_TICK`]); a later one it
    /// picks up then (its timer is never armed for more than a tick), which spares e.g. an
    /// open's first write the wake-up.
    fn arm_conn_timer(&self, conn: u64, due: Instant, now: Instant, event: Event) {
        lock(&self.conn_timers).push((due, conn, event));
        if due < now + TIMER_TICK {
            if let Some(ticker) = self.mailboxes.first() {
                ticker.wake();
            }
        }
    }

    /// Connection `conn` sent a break that the client's TCP must acknowledge by `due`: its
    /// worker is told then ([`Event::AckCheck`]).
    pub(crate) fn arm_ack_check(&self, conn: u64, due: Instant, now: Instant) {
        self.arm_conn_timer(conn, due, now, Event::AckCheck);
    }

    /// The open `volatile` of connection `conn` moves its file's LastWriteTime (or renews its
    /// hold) at `due`, armed at `now` (crate::write_time): the connection is told with
    /// [`Event::WriteTimeDue`] and checks whether it still has to (a FLUSH or close may have
    /// done it).
    pub(crate) fn arm_write_time(&self, conn: u64, volatile: u64, due: Instant, now: Instant) {
        self.arm_conn_timer(conn, due, now, Event::WriteTimeDue { volatile });
    }

    /// One more open of this node holds the LastWriteTime of the file `key` (crate::write_time):
    /// whether it is the first here (then this node counts itself in the file's xattr).
    pub(crate) fn take_write_hold(&self, key: (u64, u64)) -> bool {
        let mut holds = lock(&self.write_holds);
        let n = holds.entry(key).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// An open of this node let its hold on the file `key` go: whether it was the last one
    /// here (then the hold in the file's xattr goes).
    pub(crate) fn drop_write_hold(&self, key: (u64, u64)) -> bool {
        let mut holds = lock(&self.write_holds);
        match holds.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                holds.remove(&key);
                true
            }
        }
    }

    /// Connection `conn` waits, until `deadline` at the latest, for the durable open
    /// `persistent` to be let go by the connection that still holds it (a client reconnecting
    /// faster than the server notices its old connection is gone). It is told with
    /// [`Event::DurableWaitOver`].
    pub(crate) fn wait_for_durable(&self, persistent: u64, conn: u64, deadline: Instant) {
        lock(&self.durable_waits).push(DurableWait {
            persistent,
            conn,
            deadline,
        });
        // The ticking worker (0) sleeps until its timer: wake it so it arms the timer for
        // this deadline instead of finding it up to a whole tick late.
        if let Some(ticker) = self.mailboxes.first() {
            ticker.wake();
        }
    }

    /// The earliest deadline of a waiting durable reconnect or of a connection timer (a
    /// delayed LastWriteTime update, a break's acknowledgement check): the ticking worker's
    /// timer fires then rather than at its next periodic tick.
    pub fn next_durable_deadline(&self) -> Option<Instant> {
        let durable = lock(&self.durable_waits).iter().map(|w| w.deadline).min();
        let timers = lock(&self.conn_timers).iter().map(|t| t.0).min();
        durable.into_iter().chain(timers).min()
    }

    /// Connection `conn` no longer waits for `persistent`.
    pub(crate) fn stop_waiting_for_durable(&self, persistent: u64, conn: u64) {
        lock(&self.durable_waits).retain(|w| w.persistent != persistent || w.conn != conn);
    }

    /// The durable open `persistent` was let go by its connection (parked or closed): the
    /// reconnects waiting for it try again now.
    pub(crate) fn durable_released(&self, persistent: u64) {
        let waiting: Vec<u64> = {
            let mut waits = lock(&self.durable_waits);
            let conns = waits
                .iter()
                .filter(|w| w.persistent == persistent)
                .map(|w| w.conn)
                .collect();
            waits.retain(|w| w.persistent != persistent);
            conns
        };
        for conn in waiting {
            self.post_event(conn, Event::DurableWaitOver { persistent });
        }
    }

    pub fn session_established(&self, sid: u64, mut rec: SessionRecord) {
        rec.user = rec.user.to_lowercase();
        lock(&self.sessions).insert(sid, rec);
    }

    pub fn session_record(&self, sid: u64) -> Option<SessionRecord> {
        lock(&self.sessions).get(&sid).cloned()
    }

    /// Count a new bound channel of `sid`; false if the session is gone or has
    /// [`MAX_CHANNELS`] already.
    pub fn channel_added(&self, sid: u64) -> bool {
        match lock(&self.sessions).get_mut(&sid) {
            Some(rec) if rec.channels + 1 < MAX_CHANNELS => {
                rec.channels += 1;
                true
            }
            _ => false,
        }
    }

    pub fn channel_removed(&self, sid: u64) {
        if let Some(rec) = lock(&self.sessions).get_mut(&sid) {
            rec.channels = rec.channels.saturating_sub(1);
        }
    }

    pub fn session_gone(&self, sid: u64) {
        lock(&self.sessions).remove(&sid);
    }

    /// Expire `previous` if it belongs to `user` on another connection.
    pub fn expire_previous_session(&self, previous: u64, user: &str, conn: u64) {
        let owner = lock(&self.sessions).get(&previous).cloned();
        if let Some(rec) = owner {
            let c = rec.conn;
            if rec.user == user.to_lowercase() && c != conn {
                lock(&self.sessions).remove(&previous);
                self.post(
                    c,
                    Event::ExpireSession {
                        session_id: previous,
                    },
                );
            }
        }
    }

    /// Connection `conn` has one more handle watching `dir` (its tree if `tree`).
    pub fn watch(&self, conn: u64, dir: PathBuf, tree: bool) {
        {
            let mut w = lock(&self.watches);
            if !w.contains_key(&dir) {
                if let Some(l) = self.local_watch.get() {
                    l.add(&dir);
                }
            }
            if tree {
                *lock(&self.watch_trees).entry(dir.clone()).or_insert(0) += 1;
            }
            *w.entry(dir.clone()).or_default().entry(conn).or_insert(0) += 1;
        }
        self.register_watch(&dir);
    }

    /// Whether this node registers its watchers of `dir` with the lock service
    /// ([`ClusterNotify`]): a cluster lock service, and a share whose changes lockmgrd carries.
    fn registers_watches(&self, dir: &std::path::Path) -> bool {
        self.locks.one_session_per_node()
            && self.share_of(dir).is_some_and(|s| s.notify_through_lockmgr)
    }

    /// Bring the lock service's registration of `dir` in line with this node's watchers of
    /// it ([`ClusterNotify`]).
    fn register_watch(&self, dir: &PathBuf) {
        if !self.registers_watches(dir) {
            return;
        }
        let cn = &self.cluster_notify;
        let mut reg = lock(&cn.registered);
        let want = {
            let w = lock(&self.watches);
            w.get(dir)
                .map(|_| lock(&self.watch_trees).get(dir).is_some_and(|n| *n > 0))
        };
        let have = reg.get(dir).copied();
        if want == have.map(|(_, tree)| tree) {
            return;
        }
        match (want, have) {
            (Some(tree), _) => {
                let Some(id) = have.map(|(id, _)| id).or_else(|| self.dir_file_id(dir)) else {
                    tracing::warn!(
                        ?dir,
                        "watched directory unreadable: other nodes' changes in it are not reported"
                    );
                    return;
                };
                let req = Request::WatchDir {
                    dir: id,
                    tree,
                    path: self.cluster_path_of(dir).unwrap_or_default(),
                };
                self.lock_requests.count(&req);
                match self.lock_request(0, 0, req) {
                    Reply::Done(crate::locking::Status::Success) => {
                        if have.is_none() {
                            lock(&cn.by_id).entry(id).or_default().push(dir.clone());
                        }
                        reg.insert(dir.clone(), (id, tree));
                    }
                    other => tracing::warn!(
                        ?dir,
                        ?other,
                        "lockmgrd refused the change-notify registration: other nodes' changes in this directory are not reported"
                    ),
                }
            }
            (None, Some((id, _))) => {
                reg.remove(dir);
                {
                    let mut by_id = lock(&cn.by_id);
                    if let Some(paths) = by_id.get_mut(&id) {
                        paths.retain(|p| p != dir);
                        if paths.is_empty() {
                            by_id.remove(&id);
                        }
                    }
                }
                let req = Request::UnwatchDir { dir: id };
                self.lock_requests.count(&req);
                match self.lock_request(0, 0, req) {
                    Reply::Done(crate::locking::Status::Success) => {}
                    other => {
                        tracing::debug!(?dir, ?other, "change-notify unregistration not answered")
                    }
                }
            }
            (None, None) => {}
        }
    }

    /// The lock-service id of directory `dir` (absolute path below a share root): the one an
    /// open of it names (`conn/ops/create.rs`), so every node derives the same.
    fn dir_file_id(&self, dir: &std::path::Path) -> Option<crate::locking::FileId> {
        use std::os::unix::fs::MetadataExt;
        let share = self.share_of(dir)?;
        let ino = std::fs::metadata(dir).ok()?.ino();
        Some(crate::locking::FileId(crate::fs::stable_file_id(
            share.fs_id,
            ino,
            "",
        )))
    }

    /// The share `dir` (an absolute path) is in: the one with the longest root above it.
    fn share_of(&self, dir: &std::path::Path) -> Option<&Share> {
        self.shares
            .iter()
            .filter(|s| dir.starts_with(&s.root))
            .max_by_key(|s| s.root.as_os_str().len())
    }

    /// The share root `dir` is below (the top of a WATCH_TREE walk).
    fn share_root_of(&self, dir: &std::path::Path) -> Option<&std::path::Path> {
        self.share_of(dir).map(|s| s.root.as_path())
    }

    /// Where `dir` is for every node: its share's name and the path below the share root,
    /// `\`-separated (`WatchDir`'s `path`; each node has the share at its own root). `None` if
    /// `dir` is in no share, or the path is too long for the wire or not UTF-8.
    fn cluster_path_of(&self, dir: &std::path::Path) -> Option<String> {
        let share = self.share_of(dir)?;
        let mut path = share.name.clone();
        for c in dir.strip_prefix(&share.root).ok()?.components() {
            path.push('\\');
            path.push_str(c.as_os_str().to_str()?);
        }
        (path.len() <= crate::locking::MAX_DIR_CHANGE_NAME).then_some(path)
    }

    /// This node's directory for another node's `path` ([`Shared::cluster_path_of`]): `None`
    /// for a share this node does not have, or a path that would not stay beneath its root.
    fn local_dir_of(&self, path: &str) -> Option<PathBuf> {
        let mut parts = path.split('\\');
        let name = parts.next()?;
        let share = self
            .shares
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))?;
        let mut dir = share.root.clone();
        for p in parts {
            if p.is_empty() || p == "." || p == ".." || p.contains(['/', '\0']) {
                return None;
            }
            dir.push(p);
        }
        Some(dir)
    }

    /// Report a change this node made to the other nodes watching `dir`, or watching the
    /// tree of a directory above it ([`ClusterNotify`]).
    fn report_to_other_nodes(&self, dir: &std::path::Path, action: u32, filter: u32, name: &str) {
        use crate::locking::{watched, DirChange, DIR_CHANGES_LOST, MAX_DIR_CHANGE_NAME};
        if !self.locks.one_session_per_node() {
            return;
        }
        let any_tree = {
            let o = lock(&self.cluster_notify.others);
            if o.is_empty() {
                return;
            }
            o.values().any(|st| st & watched::TREE != 0)
        };
        let Some(root) = self.share_root_of(dir) else {
            return;
        };
        let mut sends = Vec::new();
        let mut at = dir;
        let mut rel = name.to_string();
        let mut subtree = false;
        loop {
            if let Some(id) = self.dir_file_id(at) {
                let st = lock(&self.cluster_notify.others)
                    .get(&id)
                    .copied()
                    .unwrap_or(0);
                let wanted = if subtree {
                    st & watched::TREE != 0
                } else {
                    st & watched::DIR != 0
                };
                if wanted {
                    sends.push(DirChange {
                        dir: id,
                        action,
                        filter,
                        name: rel.clone(),
                        subtree,
                    });
                }
            }
            if !any_tree || at == root {
                break;
            }
            let (Some(up), Some(last)) = (at.parent(), at.file_name()) else {
                break;
            };
            rel = format!("{}\\{rel}", last.to_string_lossy());
            at = up;
            subtree = true;
        }
        for mut c in sends {
            if c.name.len() > MAX_DIR_CHANGE_NAME {
                c.action = DIR_CHANGES_LOST;
                c.name.clear();
            }
            let req = Request::DirChange(c);
            self.lock_requests.count(&req);
            match self.lock_request(0, 0, req) {
                Reply::Done(crate::locking::Status::Success) => {}
                other => tracing::debug!(?dir, ?other, "change not passed to other nodes"),
            }
        }
    }

    /// A change another node made, forwarded by the lock service: to this node's watchers of
    /// that directory, as if made here. Called with `routing` held.
    fn deliver_other_node_change(&self, c: crate::locking::DirChange) {
        let paths = match lock(&self.cluster_notify.by_id).get(&c.dir) {
            Some(p) => p.clone(),
            None => return,
        };
        for dir in paths {
            let conns: Vec<u64> = match lock(&self.watches).get(&dir) {
                Some(m) => m.keys().copied().collect(),
                None => continue,
            };
            for conn in conns {
                let ev = if c.action == crate::locking::DIR_CHANGES_LOST {
                    Event::DirOverflow { dir: dir.clone() }
                } else if c.action == crate::locking::DIR_DELETE_PENDING {
                    if c.subtree {
                        continue;
                    }
                    Event::DirDeletePending { dir: dir.clone() }
                } else {
                    Event::DirChanged {
                        dir: dir.clone(),
                        action: c.action,
                        filter: c.filter,
                        name: c.name.clone(),
                        subtree: c.subtree,
                    }
                };
                self.post(conn, ev);
            }
        }
    }

    /// Start reporting changes made outside this process (another process on this node, a
    /// program writing the share directly) to the watchers of each directory: one inotify
    /// instance and one thread reading it (`crate::dirwatch`). Without it only changes made
    /// through this smbd are reported.
    pub fn start_local_watch(self: &Arc<Self>) {
        let w = match crate::dirwatch::LocalWatcher::new(self.mailboxes.len()) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                tracing::warn!(%e, "inotify unavailable: changes made outside smbd are not notified");
                return;
            }
        };
        if self.local_watch.set(w.clone()).is_err() {
            return;
        }
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("smbd-dirwatch".into())
            .spawn(move || loop {
                let batch = match w.next_batch() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(%e, "reading inotify events failed; outside changes no longer notified");
                        return;
                    }
                };
                let Some(shared) = me.upgrade() else {
                    return;
                };
                for c in batch {
                    match c {
                        crate::dirwatch::Change::Dir {
                            dir,
                            action,
                            filter,
                            name,
                        } => shared.outside_change(dir, action, filter, name),
                        crate::dirwatch::Change::Overflow => shared.dirs_overflowed(),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(%e, "no inotify reader thread: outside changes not notified");
        }
    }

    /// Worker `w` starts a pass of its loop (see `crate::dirwatch`).
    pub(crate) fn work_begin(&self, w: usize) {
        if let Some(l) = self.local_watch.get() {
            l.work_begin(w);
        }
    }

    /// Worker `w` ended the pass.
    pub(crate) fn work_end(&self, w: usize) {
        if let Some(l) = self.local_watch.get() {
            l.work_end(w);
        }
    }

    /// A change made outside smbd on this machine (inotify): to this node's watchers, and, on
    /// a share whose filesystem other machines change, to the other nodes watching
    /// ([`ClusterNotify`]).
    fn outside_change(&self, dir: PathBuf, action: u32, filter: u32, name: String) {
        if self
            .share_of(&dir)
            .is_some_and(|s| s.notify_through_lockmgr)
        {
            self.report_to_other_nodes(&dir, action, filter, &name);
        }
        self.post_dir_changed(dir, action, filter, name);
    }

    /// Watch directory `id` with inotify for the other nodes (`watched`: some other node
    /// watches it; `path`: where, [`Shared::cluster_path_of`]), or stop; only on a share
    /// whose filesystem other machines change ([`ClusterNotify`]). Called with `routing`
    /// held.
    fn watch_for_other_nodes(&self, id: crate::locking::FileId, watched: bool, path: &str) {
        let Some(l) = self.local_watch.get() else {
            return;
        };
        let mut f = lock(&self.cluster_notify.for_others);
        if !watched {
            if let Some(dir) = f.remove(&id) {
                l.remove(&dir);
                tracing::debug!(?dir, "no other node watches the directory any more");
            }
            return;
        }
        if f.contains_key(&id) || path.is_empty() {
            return;
        }
        let Some(dir) = self.local_dir_of(path) else {
            tracing::debug!(
                path,
                "another node watches a directory of a share this node lacks"
            );
            return;
        };
        if !self
            .share_of(&dir)
            .is_some_and(|s| s.notify_through_lockmgr)
        {
            return;
        }
        // The same path names another directory here (renamed or made again since) or none:
        // what happens to it is not what the other node watches.
        if self.dir_file_id(&dir) != Some(id) {
            tracing::debug!(
                ?dir,
                "the directory another node watches is not at its path here"
            );
            return;
        }
        l.add(&dir);
        tracing::debug!(
            ?dir,
            "watching for other nodes: changes made here outside SMB are passed on"
        );
        f.insert(id, dir);
    }

    /// Every watcher of every directory: events were lost.
    fn dirs_overflowed(&self) {
        let all: Vec<(PathBuf, Vec<u64>)> = lock(&self.watches)
            .iter()
            .map(|(d, m)| (d.clone(), m.keys().copied().collect()))
            .collect();
        for (dir, conns) in all {
            for c in conns {
                self.post(c, Event::DirOverflow { dir: dir.clone() });
            }
        }
        // What this machine's processes changed where other nodes watch is lost for them too.
        let for_others: Vec<PathBuf> = lock(&self.cluster_notify.for_others)
            .values()
            .cloned()
            .collect();
        for dir in for_others {
            self.report_to_other_nodes(&dir, crate::locking::DIR_CHANGES_LOST, u32::MAX, "");
        }
    }

    /// One handle of connection `conn` watching `dir` (its tree if `tree`) is gone.
    pub fn unwatch(&self, conn: u64, dir: &PathBuf, tree: bool) {
        {
            let mut w = lock(&self.watches);
            if let Some(m) = w.get_mut(dir) {
                if let Some(c) = m.get_mut(&conn) {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        m.remove(&conn);
                    }
                    if tree {
                        let mut t = lock(&self.watch_trees);
                        if let Some(n) = t.get_mut(dir) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                t.remove(dir);
                            }
                        }
                    }
                }
                if m.is_empty() {
                    w.remove(dir);
                    lock(&self.watch_trees).remove(dir);
                    if let Some(l) = self.local_watch.get() {
                        l.remove(dir);
                    }
                }
            }
        }
        self.register_watch(dir);
    }

    /// Tell every connection watching `dir` that it became delete-pending, here and, through
    /// the lock service, on the other nodes that watch it (their clients hold it open too:
    /// it stays, delete-pending, until they close it).
    pub fn dir_delete_pending(&self, dir: PathBuf) {
        self.report_delete_pending_to_other_nodes(&dir);
        self.post_dir_delete_pending(&dir);
    }

    fn post_dir_delete_pending(&self, dir: &std::path::Path) {
        let conns: Vec<u64> = match lock(&self.watches).get(dir) {
            Some(m) => m.keys().copied().collect(),
            None => return,
        };
        for c in conns {
            self.post(
                c,
                Event::DirDeletePending {
                    dir: dir.to_path_buf(),
                },
            );
        }
    }

    /// [`Shared::dir_delete_pending`] for the other nodes watching `dir`: one `DirChange` of
    /// `dir` itself with the action [`crate::locking::DIR_DELETE_PENDING`].
    fn report_delete_pending_to_other_nodes(&self, dir: &std::path::Path) {
        use crate::locking::{watched, DirChange, DIR_DELETE_PENDING};
        if !self.locks.one_session_per_node() {
            return;
        }
        let Some(id) = self.dir_file_id(dir) else {
            return;
        };
        let st = lock(&self.cluster_notify.others)
            .get(&id)
            .copied()
            .unwrap_or(0);
        if st & watched::DIR == 0 {
            return;
        }
        let req = Request::DirChange(DirChange {
            dir: id,
            action: DIR_DELETE_PENDING,
            filter: 0,
            name: String::new(),
            subtree: false,
        });
        self.lock_requests.count(&req);
        match self.lock_request(0, 0, req) {
            Reply::Done(crate::locking::Status::Success) => {}
            other => tracing::debug!(?dir, ?other, "delete-pending not passed to other nodes"),
        }
    }

    /// Report a change of `name` inside `dir` to every connection watching `dir`; `filter`
    /// holds the FILE_NOTIFY_CHANGE_* bits the change matches (a watch reports it only if its
    /// CompletionFilter shares one, MS-SMB2 3.3.5.19 / MS-FSA 2.1.5.11).
    pub fn dir_changed(&self, dir: PathBuf, action: u32, filter: u32, name: String) {
        if action != smb_proto::fscc::notify_action::MODIFIED {
            // inotify sees this name change too; it is reported here, not there.
            if let Some(l) = self.local_watch.get() {
                l.own_change(&dir, &name);
            }
        }
        if filter != 0 {
            self.report_to_other_nodes(&dir, action, filter, &name);
        }
        self.post_dir_changed(dir, action, filter, name);
    }

    fn post_dir_changed(&self, dir: PathBuf, action: u32, filter: u32, name: String) {
        if filter == 0 {
            return;
        }
        // The watchers of `dir`, then those of each directory above it, which see the change
        // if they watch the tree (SMB2_WATCH_TREE, MS-SMB2 2.2.35), under the entry's path
        // from the watched directory (MS-FSCC 2.7.1: FileName is relative to it).
        let mut posts: Vec<(u64, PathBuf, String, bool)> = Vec::new();
        {
            let w = lock(&self.watches);
            if w.is_empty() {
                return;
            }
            let mut rel = name;
            let mut at: &std::path::Path = &dir;
            let mut subtree = false;
            loop {
                if let Some(m) = w.get(at) {
                    for c in m.keys() {
                        posts.push((*c, at.to_path_buf(), rel.clone(), subtree));
                    }
                }
                let (Some(up), Some(last)) = (at.parent(), at.file_name()) else {
                    break;
                };
                rel = format!("{}\\{rel}", last.to_string_lossy());
                at = up;
                subtree = true;
            }
        }
        for (c, dir, name, subtree) in posts {
            self.post(
                c,
                Event::DirChanged {
                    dir,
                    action,
                    filter,
                    name,
                    subtree,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smb_auth::keys::SigningAlgorithm;

    fn shared() -> Shared {
        Shared::new(
            Config::default(),
            Vec::new(),
            UserDb::new(),
            crate::locking::default_lock_service(),
            1,
        )
        .unwrap()
    }

    #[test]
    fn a_watched_directory_is_named_by_share_and_path_and_found_again_beneath_the_root() {
        let top = tempfile::tempdir().unwrap();
        let (a, b) = (top.path().join("a"), top.path().join("a/sub"));
        std::fs::create_dir_all(b.join("d/e")).unwrap();
        let s = Shared::new(
            Config::default(),
            vec![Share::for_tests("Data", &a), Share::for_tests("inner", &b)],
            UserDb::new(),
            crate::locking::default_lock_service(),
            1,
        )
        .unwrap();
        // The share with the longest root names it; another node may spell the share's name
        // in another case.
        assert_eq!(
            s.cluster_path_of(&b.join("d/e")).as_deref(),
            Some("inner\\d\\e")
        );
        assert_eq!(s.cluster_path_of(&a).as_deref(), Some("Data"));
        assert_eq!(s.cluster_path_of(top.path()), None);
        assert_eq!(s.local_dir_of("INNER\\d\\e"), Some(b.join("d/e")));
        assert_eq!(s.local_dir_of("data"), Some(a.clone()));
        // Nothing another node says leads out of a share or into one this node lacks.
        for bad in [
            "data\\..\\x",
            "data\\.",
            "data\\\\x",
            "data\\a/../..",
            "data\\x\0y",
            "nosuch\\d",
            "",
        ] {
            assert_eq!(s.local_dir_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_durable_wait_wakes_the_ticking_worker_for_its_deadline() {
        let s = shared();
        let now = Instant::now();
        let soon = now + std::time::Duration::from_millis(50);
        s.wait_for_durable(7, 1, now + std::time::Duration::from_secs(3));
        s.wait_for_durable(8, 2, soon);
        assert_eq!(s.next_durable_deadline(), Some(soon));
        // Worker 0's eventfd was written, so it re-arms its timer for that deadline.
        let mut counter = [0u8; 8];
        let read = (&s.mailboxes[0].efd).read(&mut counter);
        assert_eq!(read.ok(), Some(8));
        assert_eq!(u64::from_ne_bytes(counter), 2);
        s.tick(soon);
        assert_eq!(
            s.next_durable_deadline(),
            Some(now + std::time::Duration::from_secs(3))
        );
    }

    fn record(conn: u64) -> SessionRecord {
        SessionRecord {
            conn,
            user: "Alice".into(),
            dialect: 0x0311,
            signing_alg: SigningAlgorithm::AesCmac,
            signing_key: vec![7; 16],
            cipher: None,
            channels: 0,
        }
    }

    #[test]
    fn channels_per_session_are_limited() {
        let s = shared();
        assert!(!s.channel_added(9), "unknown session");
        s.session_established(9, record(1));
        for _ in 1..MAX_CHANNELS {
            assert!(s.channel_added(9));
        }
        assert!(!s.channel_added(9), "the 33rd channel is refused");
        s.channel_removed(9);
        assert!(s.channel_added(9));
        assert_eq!(s.session_record(9).unwrap().user, "alice");
    }

    #[test]
    fn events_reach_registered_connections_only() {
        let s = shared();
        assert!(!s.post_event(5, Event::ChannelGone { session_id: 1 }));
        s.register_conn(5, 0);
        assert!(s.post_event(
            5,
            Event::ChannelBound {
                session_id: 1,
                channel: 6,
                signing_alg: SigningAlgorithm::HmacSha256,
                signing_key: ChannelKey(vec![1; 16]),
            }
        ));
        let got = s.mailboxes[0].drain();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 5);
        // The key stays out of logs.
        assert!(!format!("{:?}", got[0].1).contains("[1, 1"));
        s.unregister_conn(5);
        assert!(!s.post_event(5, Event::ChannelGone { session_id: 1 }));
    }
}
