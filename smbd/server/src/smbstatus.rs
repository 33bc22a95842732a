//! The per-node operator view, like Samba's `smbstatus`: sessions (user, client address,
//! dialect, signing and encryption), open files (share, path, access, share mode, oplock or
//! lease) and byte-range locks of this node. Served on `[server] status_socket` and printed by
//! `smbd status --socket PATH`; `lockmgrctl status` is the cluster-wide view of the same opens
//! and locks (by file id).
//!
//! Each connection answers for itself on its worker (`Event::Status`), so the view reads no
//! connection state from another thread.

use std::fmt::Write;
use std::net::SocketAddr;

/// One connection's part of the view.
#[derive(Clone, Debug, Default)]
pub struct ConnStatus {
    pub conn: u64,
    pub client: Option<SocketAddr>,
    /// The negotiated dialect (MS-SMB2 2.2.4 DialectRevision), 0 before NEGOTIATE.
    pub dialect: u16,
    pub sessions: Vec<SessionStatus>,
    pub opens: Vec<OpenStatus>,
}

#[derive(Clone, Debug, Default)]
pub struct SessionStatus {
    pub id: u64,
    pub user: String,
    pub anonymous: bool,
    /// Authenticated (not still in SESSION_SETUP).
    pub established: bool,
    pub signing_required: bool,
    pub encrypted: bool,
    /// Share names of its tree connects.
    pub trees: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct OpenStatus {
    pub session: u64,
    pub share: String,
    pub path: String,
    pub is_dir: bool,
    /// Granted access mask (MS-SMB2 2.2.13.1).
    pub access: u32,
    /// FILE_SHARE_READ/WRITE/DELETE (MS-SMB2 2.2.13 ShareAccess).
    pub share_access: u32,
    /// "none", "oplock LEVEL" or "lease STATE".
    pub caching: String,
    pub durable: bool,
    /// (offset, length, exclusive)
    pub locks: Vec<(u64, u64, bool)>,
}

/// "3.1.1" and so on.
pub fn dialect_name(d: u16) -> String {
    match d {
        0 => "-".into(),
        0x0202 => "2.0.2".into(),
        0x0210 => "2.1".into(),
        0x0300 => "3.0".into(),
        0x0302 => "3.0.2".into(),
        0x0311 => "3.1.1".into(),
        d => format!("{d:#06x}"),
    }
}

fn share_mode(s: u32) -> String {
    let mut out = String::new();
    for (bit, c) in [(1, 'R'), (2, 'W'), (4, 'D')] {
        out.push(if s & bit != 0 { c } else { '-' });
    }
    out
}

/// The view as text. `missing`: connections that did not answer in time (busy workers).
pub fn render(node: &str, conns: &[ConnStatus], missing: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "smbd status: node {node}");
    if missing > 0 {
        let _ = writeln!(out, "({missing} connections did not answer in time)");
    }
    let _ = writeln!(out, "\nSESSIONS");
    let _ = writeln!(
        out,
        "{:<18} {:<10} {:<20} {:<28} {:<7} {:<8} {:<9} shares",
        "session", "conn", "user", "client", "dialect", "signing", "encrypted"
    );
    for c in conns {
        let client = c.client.map_or("-".to_string(), |a| a.to_string());
        for s in &c.sessions {
            let user = match (s.established, s.anonymous) {
                (false, _) => "(in setup)".to_string(),
                (true, true) => "(anonymous)".to_string(),
                (true, false) => s.user.clone(),
            };
            let _ = writeln!(
                out,
                "{:<#18x} {:<10} {:<20} {:<28} {:<7} {:<8} {:<9} {}",
                s.id,
                c.conn,
                user,
                client,
                dialect_name(c.dialect),
                if s.signing_required {
                    "required"
                } else {
                    "optional"
                },
                if s.encrypted { "yes" } else { "no" },
                s.trees.join(",")
            );
        }
    }
    let _ = writeln!(out, "\nOPEN FILES");
    let _ = writeln!(
        out,
        "{:<18} {:<12} {:<10} {:<5} {:<7} {:<20} path",
        "session", "share", "access", "share", "durable", "caching"
    );
    for c in conns {
        for o in &c.opens {
            let _ = writeln!(
                out,
                "{:<#18x} {:<12} {:<#10x} {:<5} {:<7} {:<20} {}{}",
                o.session,
                o.share,
                o.access,
                share_mode(o.share_access),
                if o.durable { "yes" } else { "no" },
                o.caching,
                o.path,
                if o.is_dir { "/" } else { "" }
            );
        }
    }
    let _ = writeln!(out, "\nBYTE-RANGE LOCKS");
    let _ = writeln!(
        out,
        "{:<18} {:<12} {:>20} {:>20} {:<9} path",
        "session", "share", "offset", "length", "type"
    );
    for c in conns {
        for o in &c.opens {
            for &(offset, length, exclusive) in &o.locks {
                let _ = writeln!(
                    out,
                    "{:<#18x} {:<12} {:>20} {:>20} {:<9} {}",
                    o.session,
                    o.share,
                    offset,
                    length,
                    if exclusive { "exclusive" } else { "shared" },
                    o.path
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sessions_opens_and_locks() {
        let c = ConnStatus {
            conn: 7,
            client: Some("127.0.0.1:5000".parse().unwrap()),
            dialect: 0x0311,
            sessions: vec![SessionStatus {
                id: 0x10,
                user: "alice".into(),
                established: true,
                encrypted: true,
                trees: vec!["data".into()],
                ..Default::default()
            }],
            opens: vec![OpenStatus {
                session: 0x10,
                share: "data".into(),
                path: "a.txt".into(),
                access: 0x12019f,
                share_access: 1,
                caching: "none".into(),
                locks: vec![(0, 10, true)],
                ..Default::default()
            }],
        };
        let text = render("N1", &[c], 0);
        assert!(text.contains("alice"), "{text}");
        assert!(text.contains("3.1.1"), "{text}");
        assert!(text.contains("127.0.0.1:5000"), "{text}");
        assert!(text.contains("R--"), "{text}");
        assert!(text.contains("exclusive"), "{text}");
    }
}
