//! This connection's part of the operator view (crate::smbstatus), built on its worker.

use crate::locking::OplockGrant;
use crate::smbstatus::{ConnStatus, OpenStatus, SessionStatus};

use super::{AuthState, Conn};

impl Conn {
    pub(crate) fn status(&self) -> ConnStatus {
        let share_name = |i: Option<usize>| match i.and_then(|i| self.shared.shares.get(i)) {
            Some(s) => s.name.clone(),
            None => "IPC$".to_string(),
        };
        let mut sessions: Vec<SessionStatus> = self
            .sessions
            .iter()
            .map(|(&id, s)| SessionStatus {
                id,
                user: s.user.clone(),
                anonymous: s.anonymous,
                established: matches!(s.state, AuthState::Valid),
                signing_required: s.signing_required,
                encrypted: s.encrypt || s.trees.values().any(|t| t.encrypt),
                trees: s.trees.values().map(|t| share_name(t.share)).collect(),
            })
            .collect();
        sessions.sort_by_key(|s| s.id);
        let mut opens: Vec<OpenStatus> = self
            .opens
            .values()
            .map(|o| OpenStatus {
                session: o.session_id,
                share: share_name(Some(o.share)),
                path: o.rel.display().to_string()
                    + &o.stream
                        .as_ref()
                        .map_or(String::new(), |s| format!(":{}", s.name)),
                is_dir: o.is_dir,
                access: o.access,
                share_access: o.share_access,
                caching: match o.grant {
                    OplockGrant::None => "none".into(),
                    OplockGrant::Oplock(level) => format!("oplock {level:?}"),
                    OplockGrant::Lease(l) => format!("lease {:?}", l.state),
                },
                durable: o.durable.is_some(),
                locks: o
                    .locks
                    .iter()
                    .map(|l| (l.offset, l.length, l.exclusive))
                    .collect(),
            })
            .collect();
        opens.sort_by(|a, b| (a.session, &a.path).cmp(&(b.session, &b.path)));
        ConnStatus {
            conn: self.id,
            client: self.peer,
            dialect: self.dialect(),
            sessions,
            opens,
        }
    }
}
