//! The per-connection side of the resource limits ([`crate::limits`] describes them and the
//! status codes): counting this connection's descriptors in the process-wide budget and
//! refusing a request that would take the connection over a limit.

use smb_proto::{lock_flags, status, Header, NtStatus, Request};

use super::{AuthState, ChainCtx, Conn, Open, PendingKind};

/// Header, fixed body and padding of one response, beyond its variable data.
const RESPONSE_OVERHEAD: usize = 1024;

/// The most variable data the answer to `req` may carry (the client's own bound on it).
fn max_response(req: &Request) -> usize {
    let n = match req {
        Request::Read(r) => r.length,
        Request::QueryDirectory(q) => q.output_buffer_length,
        Request::QueryInfo(q) => q.output_buffer_length,
        Request::Ioctl(i) => i.max_output_response,
        Request::ChangeNotify(c) => c.output_buffer_length,
        _ => 0,
    };
    n as usize
}

/// Which limit refused a request (logged once per connection and kind).
#[derive(Clone, Copy, Debug)]
enum Kind {
    SessionsInSetup = 0,
    Sessions,
    Trees,
    OpensPerSession,
    OpensPerConn,
    OpenFiles,
    PendingAsync,
    NotifyWatches,
    ResponseBytes,
    Locks,
    ClientConnections,
    UserConnections,
    ClientOpens,
    UserOpens,
}

/// Per-connection limit bookkeeping.
#[derive(Default)]
pub(crate) struct ConnLimits {
    /// Descriptors of this connection counted in [`FdBudget`] (socket + opens).
    fds_reported: usize,
    /// Descriptors held by this connection's opens (kept by [`Conn::add_open`] and
    /// [`Conn::take_open`], so counting them costs nothing per request).
    open_fds: usize,
    /// Opens of this connection by session id (kept with `open_fds`): the per-session and
    /// per-user counts cost one lookup per request instead of a walk over every open.
    opens_by_session: std::collections::HashMap<u64, usize>,
    /// Limits already reported in the log for this connection (bit per [`Kind`]).
    warned: u16,
    /// This connection's share of [`crate::limits::ClientUsage`].
    client: crate::limits::ClientShare,
    /// (opens, sessions, established sessions) at the last client-usage report: nothing to
    /// recount while they stay the same.
    client_reported: Option<(usize, usize, usize)>,
    /// The connection came when its source address already had `connections_per_client`:
    /// it gets no session while the address is still over the limit.
    beyond_client_conns: bool,
    /// Byte-range lock changes on this connection (the locks are recounted for the metrics
    /// only after one, or after an open came or went).
    lock_changes: u64,
    /// (opens, lock changes) at the last metrics report, and the report.
    metrics_sig: (usize, u64),
    metrics_reported: crate::metrics::ConnShare,
}

impl Conn {
    /// Whether a session was established on this connection (or it is bound to one as a
    /// channel): until then it is an unauthenticated peer and its frames are kept small.
    pub(crate) fn has_established_session(&self) -> bool {
        !self.bound.is_empty()
            || self
                .sessions
                .values()
                .any(|s| matches!(s.state, AuthState::Valid))
    }

    /// Bring this connection's share of the open-file budget, and of its client's usage
    /// (source address and users, [`crate::limits::ClientUsage`]), up to date.
    pub(crate) fn sync_fds(&mut self) {
        let now = 1 + self.limits.open_fds;
        let was = std::mem::replace(&mut self.limits.fds_reported, now);
        if was == 0 {
            self.shared.metrics.connections.inc();
            self.shared.metrics.connections_total.inc();
        }
        self.sync_metrics();
        if now > was {
            self.shared.fds.add(now - was);
        } else {
            self.shared.fds.sub(was - now);
        }
        self.sync_client_usage();
    }

    /// A LOCK changed this connection's byte-range locks.
    pub(crate) fn locks_changed(&mut self) {
        self.limits.lock_changes += 1;
    }

    /// Bring this connection's share of the session, tree, open and lock gauges up to date
    /// (crate::metrics). Walks the sessions (few) each time, the opens only when one came or
    /// went or a lock changed.
    fn sync_metrics(&mut self) {
        let mut now = self.limits.metrics_reported;
        now.sessions = 0;
        now.trees = 0;
        for s in self.sessions.values() {
            if matches!(s.state, AuthState::Valid) {
                now.sessions += 1;
            }
            now.trees += s.trees.len() as i64;
        }
        now.opens = self.opens.len() as i64;
        let sig = (self.opens.len(), self.limits.lock_changes);
        if sig != self.limits.metrics_sig {
            self.limits.metrics_sig = sig;
            now.locks = self.opens.values().map(|o| o.locks.len() as i64).sum();
        }
        let was = std::mem::replace(&mut self.limits.metrics_reported, now);
        self.shared.metrics.report(was, now);
    }

    fn sync_client_usage(&mut self) {
        let established = self
            .sessions
            .values()
            .filter(|s| matches!(s.state, AuthState::Valid))
            .count();
        let signature = (self.opens.len(), self.sessions.len(), established);
        if self.limits.client_reported == Some(signature) {
            return;
        }
        let first = self.limits.client_reported.is_none();
        self.limits.client_reported = Some(signature);
        // Opens by the (lowercase) user of their session; anonymous sessions count for
        // their address only.
        let user_of = |sid: u64| {
            self.sessions
                .get(&sid)
                .filter(|s| matches!(s.state, AuthState::Valid) && !s.anonymous)
                .map(|s| s.user.to_lowercase())
        };
        let mut users: std::collections::HashMap<String, usize> = Default::default();
        for sid in self.sessions.keys() {
            if let Some(u) = user_of(*sid) {
                *users.entry(u).or_default() += self.opens_of_session(*sid);
            }
        }
        let addr = self.peer.map(|p| p.ip());
        let opens = self.opens.len();
        self.limits
            .client
            .report(&self.shared.clients, addr, opens, users);
        if first {
            let cap = self.shared.config.limits.connections_per_client;
            if let Some(a) = addr {
                self.limits.beyond_client_conns = self.shared.clients.of_addr(&a).conns > cap;
            }
        }
    }

    /// Put an open in this connection's table, counting its descriptors.
    pub(crate) fn add_open(&mut self, volatile: u64, open: Open) {
        self.limits.open_fds += open.descriptors();
        *self
            .limits
            .opens_by_session
            .entry(open.session_id)
            .or_default() += 1;
        if let Some(replaced) = self.opens.insert(volatile, open) {
            self.forget_counted(&replaced);
        }
    }

    /// Take an open out of this connection's table (and out of its counts).
    pub(crate) fn take_open(&mut self, volatile: u64) -> Option<Open> {
        let open = self.opens.remove(&volatile)?;
        self.forget_counted(&open);
        Some(open)
    }

    fn forget_counted(&mut self, open: &Open) {
        self.limits.open_fds = self.limits.open_fds.saturating_sub(open.descriptors());
        if let Some(n) = self.limits.opens_by_session.get_mut(&open.session_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.limits.opens_by_session.remove(&open.session_id);
            }
        }
    }

    /// Opens of this connection in session `sid`.
    fn opens_of_session(&self, sid: u64) -> usize {
        self.limits.opens_by_session.get(&sid).copied().unwrap_or(0)
    }

    /// The connection is gone: return its descriptors to the budget and its share of its
    /// client's usage.
    pub(crate) fn release_fds(&mut self) {
        let was = std::mem::take(&mut self.limits.fds_reported);
        if was > 0 {
            self.shared.metrics.connections.dec();
        }
        let reported = std::mem::take(&mut self.limits.metrics_reported);
        self.shared.metrics.report(reported, Default::default());
        self.shared.fds.sub(was);
        self.limits.client.release(&self.shared.clients);
    }

    /// The status refusing a new session of `user` on this connection because the user
    /// already has `connections_per_user` other connections, or `None`.
    pub(crate) fn user_connections_refusal(&mut self, user: &str) -> Option<NtStatus> {
        let user = user.to_lowercase();
        let cap = self.shared.config.limits.connections_per_user;
        let this_one = usize::from(!self.limits.client.counts_user(&user));
        if self.shared.clients.of_user(&user).conns + this_one > cap {
            return self.refuse(Kind::UserConnections, status::REQUEST_NOT_ACCEPTED, cap);
        }
        None
    }

    fn refuse(&mut self, kind: Kind, st: NtStatus, limit: usize) -> Option<NtStatus> {
        let bit = 1u16 << kind as u16;
        if self.limits.warned & bit == 0 {
            self.limits.warned |= bit;
            tracing::warn!(conn = self.id, peer = ?self.peer, ?kind, limit, "limit reached; refusing requests over it");
        } else {
            tracing::debug!(conn = self.id, ?kind, limit, "limit reached");
        }
        Some(st)
    }

    fn pending_full(&self) -> bool {
        self.pending.len() >= self.shared.config.limits.pending_async_per_conn
    }

    /// The status refusing `req` because a limit is reached, or `None` to process it.
    /// Called before every request is dispatched.
    pub(crate) fn request_limit(
        &mut self,
        req: &Request,
        hdr: &Header,
        ctx: &ChainCtx,
    ) -> Option<NtStatus> {
        let l = self.shared.config.limits.clone();
        // The whole chain goes out as one NetBIOS message, whose length field has 24 bits:
        // a request whose answer could take the chain over the budget is refused up front.
        if ctx.response_bytes + max_response(req) + RESPONSE_OVERHEAD > l.max_response_bytes {
            return self.refuse(
                Kind::ResponseBytes,
                status::INSUFFICIENT_RESOURCES,
                l.max_response_bytes,
            );
        }
        let async_limit = l.pending_async_per_conn;
        match req {
            // A connection beyond its address's limit gets no session (new or bound) while
            // the address stays over it.
            Request::SessionSetup(_)
                if self.limits.beyond_client_conns
                    && self.peer.is_some_and(|p| {
                        self.shared.clients.of_addr(&p.ip()).conns > l.connections_per_client
                    }) =>
            {
                return self.refuse(
                    Kind::ClientConnections,
                    status::REQUEST_NOT_ACCEPTED,
                    l.connections_per_client,
                );
            }
            Request::SessionSetup(s)
                if hdr.session_id == 0 && s.flags & smb_proto::SESSION_FLAG_BINDING == 0 =>
            {
                let in_setup = self
                    .sessions
                    .values()
                    .filter(|s| matches!(s.state, AuthState::InProgress(_)))
                    .count();
                if in_setup >= l.sessions_in_setup_per_conn {
                    return self.refuse(
                        Kind::SessionsInSetup,
                        status::REQUEST_NOT_ACCEPTED,
                        l.sessions_in_setup_per_conn,
                    );
                }
                if self.sessions.len() >= l.sessions_per_conn {
                    return self.refuse(
                        Kind::Sessions,
                        status::REQUEST_NOT_ACCEPTED,
                        l.sessions_per_conn,
                    );
                }
            }
            Request::TreeConnect(_) => {
                let trees = self
                    .sessions
                    .get(&hdr.session_id)
                    .map_or(0, |s| s.trees.len());
                if trees >= l.trees_per_session {
                    return self.refuse(
                        Kind::Trees,
                        status::INSUFFICIENT_RESOURCES,
                        l.trees_per_session,
                    );
                }
            }
            Request::Create(_) => {
                // A CREATE may wait for an oplock/lease break.
                if self.pending_full() {
                    return self.refuse(
                        Kind::PendingAsync,
                        status::INSUFFICIENT_RESOURCES,
                        async_limit,
                    );
                }
                if self.opens.len() >= l.opens_per_conn {
                    return self.refuse(
                        Kind::OpensPerConn,
                        status::INSUFFICIENT_RESOURCES,
                        l.opens_per_conn,
                    );
                }
                let sid = ctx.session_id;
                if self.opens_of_session(sid) >= l.opens_per_session {
                    return self.refuse(
                        Kind::OpensPerSession,
                        status::INSUFFICIENT_RESOURCES,
                        l.opens_per_session,
                    );
                }
                self.sync_fds();
                // One client over all its connections (crate::limits::ClientUsage).
                if self.peer.is_some_and(|p| {
                    self.shared.clients.of_addr(&p.ip()).opens >= l.opens_per_client
                }) {
                    return self.refuse(
                        Kind::ClientOpens,
                        status::INSUFFICIENT_RESOURCES,
                        l.opens_per_client,
                    );
                }
                let user = self
                    .sessions
                    .get(&sid)
                    .filter(|s| !s.anonymous)
                    .map(|s| s.user.to_lowercase());
                if user.is_some_and(|u| self.shared.clients.of_user(&u).opens >= l.opens_per_user) {
                    return self.refuse(
                        Kind::UserOpens,
                        status::INSUFFICIENT_RESOURCES,
                        l.opens_per_user,
                    );
                }
                if !self
                    .shared
                    .fds
                    .has_room(self.shared.parked.descriptors(self.now))
                {
                    let limit = self.shared.fds.limit();
                    return self.refuse(Kind::OpenFiles, status::TOO_MANY_OPENED_FILES, limit);
                }
            }
            Request::ChangeNotify(_) => {
                if self.pending_full() {
                    return self.refuse(
                        Kind::PendingAsync,
                        status::INSUFFICIENT_RESOURCES,
                        async_limit,
                    );
                }
                let watches = self
                    .pending
                    .values()
                    .filter(|p| matches!(p.kind, PendingKind::Notify { .. }))
                    .count();
                if watches >= l.notify_watches_per_conn {
                    return self.refuse(
                        Kind::NotifyWatches,
                        status::INSUFFICIENT_RESOURCES,
                        l.notify_watches_per_conn,
                    );
                }
            }
            // Locks held by this connection (in the node's lockmgrd session, shared by every
            // client of the node).
            Request::Lock(lr)
                if lr.locks.iter().all(|e| e.flags & lock_flags::UNLOCK == 0)
                    && self.opens.values().map(|o| o.locks.len()).sum::<usize>()
                        + lr.locks.len()
                        > l.locks_per_conn =>
            {
                return self.refuse(
                    Kind::Locks,
                    status::INSUFFICIENT_RESOURCES,
                    l.locks_per_conn,
                );
            }
            // Requests that may go async: a blocking lock, a rename waiting for lease breaks.
            Request::Lock(lr)
                if lr.locks.iter().any(|e| {
                    e.flags & (lock_flags::FAIL_IMMEDIATELY | lock_flags::UNLOCK) == 0
                }) && self.pending_full() =>
            {
                return self.refuse(
                    Kind::PendingAsync,
                    status::INSUFFICIENT_RESOURCES,
                    async_limit,
                );
            }
            Request::SetInfo(si)
                if si.info_type == smb_proto::info_type::FILE
                    && matches!(
                        si.class,
                        crate::fs::class::RENAME | crate::fs::class::RENAME_EX
                    )
                    && self.pending_full() =>
            {
                return self.refuse(
                    Kind::PendingAsync,
                    status::INSUFFICIENT_RESOURCES,
                    async_limit,
                );
            }
            _ => {}
        }
        None
    }
}
