//! TREE_CONNECT and TREE_DISCONNECT (MS-SMB2 3.3.5.7, 3.3.5.8).

use smb_proto::{dialect, status, Header, Response};

use super::state::{err, Outcome, Tree};
use super::Conn;

impl Conn {
    pub(super) fn tree_connect(&mut self, path: &str, hdr: &Header) -> Outcome {
        let name = path.rsplit('\\').next().unwrap_or("");
        let d = self.dialect();
        let (share, encrypt, read_only) = if name.eq_ignore_ascii_case("IPC$") {
            (None, false, true)
        } else {
            match self
                .shared
                .shares
                .iter()
                .position(|s| s.name.eq_ignore_ascii_case(name))
            {
                Some(i) => (
                    Some(i),
                    self.shared.shares[i].encrypt,
                    self.shared.shares[i].read_only,
                ),
                None => return err(status::BAD_NETWORK_NAME),
            }
        };
        let Some(s) = self.sessions.get_mut(&hdr.session_id) else {
            return err(status::USER_SESSION_DELETED);
        };
        if let Some(i) = share {
            // Who may use the share: anonymous sessions only where guest_ok says so, users
            // per valid_users (MS-SMB2 3.3.5.7: access to the share is checked here and
            // refused with STATUS_ACCESS_DENIED).
            let sh = &self.shared.shares[i];
            if !sh.admits(&s.user, s.anonymous, s.identity.as_deref()) {
                tracing::info!(conn = self.id, user = %s.user, anonymous = s.anonymous,
                    share = %sh.name, "tree connect refused");
                return err(status::ACCESS_DENIED);
            }
        }
        let encrypt = encrypt && !s.anonymous;
        if encrypt && d < dialect::SMB300 {
            return err(status::ACCESS_DENIED);
        }
        self.next_tree += 1;
        let tid = self.next_tree;
        s.trees.insert(tid, Tree { share, encrypt });
        let mut sflags = 0;
        if encrypt {
            sflags |= smb_proto::share_flags::ENCRYPT_DATA;
        }
        let maximal_access = if read_only { 0x0012_00A9 } else { 0x001F_01FF };
        // MS-SMB2 2.2.10: continuous availability is a 3.x share capability.
        let mut capabilities = match share {
            Some(i) if d >= dialect::SMB300 && self.shared.shares[i].continuous_availability => {
                smb_proto::share_caps::CONTINUOUS_AVAILABILITY
            }
            _ => 0,
        };
        // SMB2_SHARE_CAP_CLUSTER: a witness (MS-SWN) is available; Windows clients only
        // register with the witness for such shares.
        if share.is_some() && self.shared.config.witness.enabled {
            capabilities |= smb_proto::share_caps::CLUSTER;
        }
        // MS-SMB2 2.2.10 / 3.3.5.7: a DFS root is SHAREFLAG_DFS | SHAREFLAG_DFS_ROOT with
        // SHARE_CAP_DFS; clients then send its paths with SMB2_FLAGS_DFS_OPERATIONS and ask for
        // referrals where an open fails with STATUS_PATH_NOT_COVERED.
        if share.is_some_and(|i| self.shared.shares[i].dfs_root) {
            sflags |= smb_proto::share_flags::DFS | smb_proto::share_flags::DFS_ROOT;
            capabilities |= smb_proto::share_caps::DFS;
        }
        // The response carries the new TreeId in its header.
        self.pending_tree_id = Some(tid);
        Outcome::Reply(
            status::SUCCESS,
            Response::TreeConnect {
                share_type: if share.is_some() {
                    smb_proto::share_type::DISK
                } else {
                    smb_proto::share_type::PIPE
                },
                flags: sflags,
                capabilities,
                maximal_access,
            },
        )
    }

    pub(super) fn tree_disconnect(&mut self, hdr: &Header) -> Outcome {
        self.close_session_opens(hdr.session_id, Some(hdr.tree_id));
        if let Some(s) = self.sessions.get_mut(&hdr.session_id) {
            s.trees.remove(&hdr.tree_id);
        }
        Outcome::Reply(status::SUCCESS, Response::TreeDisconnect)
    }

    // ---- async ------------------------------------------------------------------------------
}
