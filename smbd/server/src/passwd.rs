//! `smbd passwd`: manage the users file (NT hashes and Unix ids, never passwords).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use smb_auth::users::{nt_hash_of_password, UnixIds, UserDb};

/// What to do to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswdAction {
    /// Add the user or set its password; ids: `None` keeps what the file has (new users: NSS).
    Set {
        password: String,
        uid: Option<u32>,
        gid: Option<u32>,
        groups: Option<Vec<u32>>,
    },
    /// Remove the user.
    Delete,
}

/// Errors of `smbd passwd`, each with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswdError {
    #[error("{0}")]
    Users(#[from] smb_auth::users::UserDbError),
    #[error("{0}")]
    NotPrivate(String),
    #[error("no user `{0}` in the users file")]
    NoSuchUser(String),
    #[error("user name `{0}` is not valid (empty, or contains ':' or a line break)")]
    BadName(String),
    #[error("an empty password is not allowed")]
    EmptyPassword,
    #[error("give both --uid and --gid, or neither")]
    HalfIds,
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Apply `action` for `user` to the users file at `path` (created 0600 when missing; an
/// existing file must already be private). The file is replaced atomically.
pub fn update_users_file(path: &Path, user: &str, action: PasswdAction) -> Result<(), PasswdError> {
    if user.is_empty() || user.contains([':', '\n', '\r']) || user.trim() != user {
        return Err(PasswdError::BadName(user.into()));
    }
    let mut db = if path.exists() {
        lockmgr_proto::private_file::check_private_file(path).map_err(PasswdError::NotPrivate)?;
        UserDb::load(path)?
    } else {
        UserDb::new()
    };
    match action {
        PasswdAction::Delete => {
            if !db.remove(user) {
                return Err(PasswdError::NoSuchUser(user.into()));
            }
        }
        PasswdAction::Set {
            password,
            uid,
            gid,
            groups,
        } => {
            if password.is_empty() {
                return Err(PasswdError::EmptyPassword);
            }
            if uid.is_some() != gid.is_some() {
                return Err(PasswdError::HalfIds);
            }
            let old = db.unix_ids(user).cloned().unwrap_or_default();
            let name = db.canonical_name(user).unwrap_or(user).to_string();
            let ids = UnixIds {
                uid: uid.or(old.uid),
                gid: gid.or(old.gid),
                groups: groups.unwrap_or(old.groups),
            };
            db.add_entry(&name, nt_hash_of_password(&password), ids);
        }
    }
    write_private(path, db.to_file_text().as_bytes())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), PasswdError> {
    let werr = |source| PasswdError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr)?;
    let res = f
        .write_all(data)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_change_delete() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("users");
        let set = |pw: &str, uid, gid| PasswdAction::Set {
            password: pw.into(),
            uid,
            gid,
            groups: None,
        };
        update_users_file(&f, "alice", set("pw1", Some(10), Some(20))).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains("pw1"), "password stored in clear: {text}");
        // A new password keeps the ids.
        update_users_file(&f, "ALICE", set("pw2", None, None)).unwrap();
        let db = UserDb::load(&f).unwrap();
        assert_eq!(db.nt_hash("alice"), Some(nt_hash_of_password("pw2")));
        assert_eq!(db.unix_ids("alice").unwrap().uid, Some(10));
        assert_eq!(db.canonical_name("alice"), Some("alice"));
        assert!(matches!(
            update_users_file(&f, "bob", set("x", Some(1), None)),
            Err(PasswdError::HalfIds)
        ));
        assert!(matches!(
            update_users_file(&f, "a:b", set("x", None, None)),
            Err(PasswdError::BadName(_))
        ));
        update_users_file(&f, "alice", PasswdAction::Delete).unwrap();
        assert!(UserDb::load(&f).unwrap().is_empty());
        assert!(matches!(
            update_users_file(&f, "alice", PasswdAction::Delete),
            Err(PasswdError::NoSuchUser(_))
        ));
        // A users file others can read is not touched.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            update_users_file(&f, "carol", set("x", None, None)),
            Err(PasswdError::NotPrivate(_))
        ));
    }
}
