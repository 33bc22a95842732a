//! Where the daemon's lock state lives: a bare engine (a lock manager without replicas), or a
//! replica of the engine's input log (primary or standby of a replicated lock manager).
//!
//! The server loop talks to this one type, so the node protocol is the same either way; only
//! the fast path differs (a bare engine takes lock ranges borrowed from the frame, a replica
//! logs an owned request).

use lockmgr_engine::{Engine, LockRange, OpenId, Output, Request, RequestId, SessionId, Time};
use lockmgr_replica::{Input, Replica, Submitted};

pub(crate) enum LockState {
    Alone(Box<Engine>),
    Replicated(Box<Replica>),
}

impl LockState {
    pub(crate) fn engine(&self) -> &Engine {
        match self {
            LockState::Alone(e) => e,
            LockState::Replicated(r) => r.engine(),
        }
    }

    pub(crate) fn replica(&self) -> Option<&Replica> {
        match self {
            LockState::Alone(_) => None,
            LockState::Replicated(r) => Some(r),
        }
    }

    pub(crate) fn replica_mut(&mut self) -> Option<&mut Replica> {
        match self {
            LockState::Alone(_) => None,
            LockState::Replicated(r) => Some(r),
        }
    }

    fn submit(r: &mut Replica, now: Time, input: Input) {
        match r.submit(now, input) {
            Submitted::Logged(_) | Submitted::Duplicate => {}
            other => tracing::debug!(?other, "input not logged"),
        }
    }

    pub(crate) fn open_session(&mut self, now: Time, session: SessionId, node: &str) {
        match self {
            LockState::Alone(e) => e.open_session(session),
            LockState::Replicated(r) => Self::submit(
                r,
                now,
                Input::OpenSession {
                    session,
                    node: node.to_owned(),
                },
            ),
        }
    }

    pub(crate) fn end_session(&mut self, now: Time, session: SessionId) {
        match self {
            LockState::Alone(e) => e.end_session(now, session),
            LockState::Replicated(r) => Self::submit(r, now, Input::EndSession { session }),
        }
    }

    pub(crate) fn handle(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        req: Request,
    ) {
        match self {
            LockState::Alone(e) => e.handle(now, session, request, req),
            LockState::Replicated(r) => Self::submit(
                r,
                now,
                Input::Request {
                    session,
                    request,
                    req,
                },
            ),
        }
    }

    pub(crate) fn handle_lock(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        ranges: &[LockRange],
        fail_immediately: bool,
    ) {
        match self {
            LockState::Alone(e) => {
                e.handle_lock(now, session, request, open, ranges, fail_immediately)
            }
            LockState::Replicated(_) => self.handle(
                now,
                session,
                request,
                Request::Lock {
                    open,
                    ranges: ranges.to_vec(),
                    fail_immediately,
                },
            ),
        }
    }

    pub(crate) fn handle_unlock(
        &mut self,
        now: Time,
        session: SessionId,
        request: RequestId,
        open: OpenId,
        ranges: &[LockRange],
    ) {
        match self {
            LockState::Alone(e) => e.handle_unlock(now, session, request, open, ranges),
            LockState::Replicated(_) => self.handle(
                now,
                session,
                request,
                Request::Unlock {
                    open,
                    ranges: ranges.to_vec(),
                },
            ),
        }
    }

    /// The node holds every output of `session` up to `seq` (only replicas keep outputs).
    pub(crate) fn outputs_received(&mut self, now: Time, session: SessionId, seq: u64) {
        if let LockState::Replicated(r) = self {
            Self::submit(r, now, Input::OutputsReceived { session, seq });
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        match self {
            LockState::Alone(e) => e.poll_timeout(),
            LockState::Replicated(r) => r.poll_timeout(),
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Time) {
        match self {
            LockState::Alone(e) => e.handle_timeout(now),
            LockState::Replicated(r) => Self::submit(r, now, Input::Timeout),
        }
    }

    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        match self {
            LockState::Alone(e) => e.poll_output(),
            LockState::Replicated(r) => r.poll_output().map(|s| s.output),
        }
    }
}
