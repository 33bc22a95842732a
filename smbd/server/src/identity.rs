//! Whose credentials file operations run with.
//!
//! Every SMB session maps to a Unix identity (uid, gid, supplementary groups): from the users
//! file, or from NSS (`getpwnam`/`getgrouplist`) when the users file leaves the ids empty.
//! Before a worker thread touches the share filesystem for a request it takes on that
//! identity with `setfsuid`/`setfsgid` and a thread-local `setgroups`, so the kernel's
//! permission checks, file ownership of new files and quotas are those of the SMB user, never
//! root's. The switch is per thread (Linux credentials are per task; the raw `setgroups`
//! syscall, unlike glibc's wrapper, does not broadcast to the other threads) and is skipped
//! when the thread already has the identity, so a connection's steady stream of requests
//! costs nothing. A switch costs three syscalls, two of them credential commits: about 10 us
//! on these 2-vCPU VMs (setgroups ~5 us, setfsuid ~4-7 us, measured alternating two users),
//! which is why READ/WRITE/LOCK/FLUSH, which only use descriptors opened as the user, do not
//! switch at all (conn).
//!
//! Why not io_uring registered personalities: the server's file operations are synchronous
//! path calls on the worker thread (open, stat, rename, unlink, xattrs); io_uring only carries
//! socket I/O and READ/WRITE on file descriptors that were opened, and access-checked, under
//! the user's identity. A personality would cover exactly the operations that need no check.
//!
//! A few metadata updates run privileged on purpose, after the SMB access check of the handle
//! allowed them (as Samba does with `become_root` for DOS attributes): the DOS attribute and
//! security descriptor xattrs (a read-only file's owner may still change its attributes) and
//! the stream depot, which lives in a root-owned directory the users cannot reach otherwise.
//! Those call sites use [`as_root`].

use std::cell::Cell;
use std::ffi::CString;
use std::sync::Arc;

/// A Unix identity file operations run as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnixIdentity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary gid included or not; the kernel does not care).
    pub groups: Vec<u32>,
}

impl UnixIdentity {
    /// Whether this identity is a member of `gid` (primary or supplementary).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Errors resolving an identity at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("user `{0}` has no uid in the users file and is unknown to the system (NSS)")]
    UnknownUser(String),
    #[error("group `{0}` is unknown to the system (NSS)")]
    UnknownGroup(String),
    #[error("switching credentials: {0}")]
    Switch(std::io::Error),
}

thread_local! {
    /// The identity this thread runs file operations as; `None` = the process's own (root).
    static HELD: std::cell::RefCell<Option<Arc<UnixIdentity>>> = const { std::cell::RefCell::new(None) };
    /// Whether this thread saw setfsuid/setfsgid take effect once (they cannot report
    /// failure; the capability they need does not come and go).
    static VERIFIED: Cell<bool> = const { Cell::new(false) };
}

/// Take on `id` for this thread's file operations (no-op when it already has it: the same
/// Arc, the common case, or an equal identity).
pub fn become_user(id: &Arc<UnixIdentity>) {
    let same = HELD.with(|h| {
        h.borrow()
            .as_ref()
            .is_some_and(|held| Arc::ptr_eq(held, id) || **held == **id)
    });
    if same {
        return;
    }
    if let Err(e) = switch_to(id.uid, id.gid, &id.groups) {
        // Failing to drop privileges must not leave the thread running as someone else:
        // abort rather than serve a request with the wrong credentials.
        tracing::error!(%e, uid = id.uid, "cannot switch file-system identity; aborting");
        std::process::abort();
    }
    HELD.with(|h| *h.borrow_mut() = Some(id.clone()));
}

/// Run `f` with the process's own (root) file-system credentials, then return to the
/// identity the thread had. Only for the privileged metadata updates listed in the module
/// documentation, after the request's access check succeeded.
pub fn as_root<T>(f: impl FnOnce() -> T) -> T {
    let prev = HELD.with(|h| h.borrow().clone());
    let Some(prev) = prev else {
        return f();
    };
    let euid = current_euid();
    let egid = current_egid();
    if let Err(e) = switch_to(euid, egid, &[]) {
        tracing::error!(%e, "cannot regain file-system credentials; aborting");
        std::process::abort();
    }
    let out = f();
    if let Err(e) = switch_to(prev.uid, prev.gid, &prev.groups) {
        tracing::error!(%e, uid = prev.uid, "cannot switch file-system identity; aborting");
        std::process::abort();
    }
    out
}

/// The identity the calling thread currently runs file operations as (`None`: the process's).
pub fn current() -> Option<Arc<UnixIdentity>> {
    HELD.with(|h| h.borrow().clone())
}

fn current_euid() -> u32 {
    crate::sys::geteuid()
}

fn current_egid() -> u32 {
    crate::sys::getegid()
}

/// Whether the process can switch identities at all (runs as root / holds CAP_SETUID).
pub fn can_switch() -> bool {
    current_euid() == 0
}

fn switch_to(uid: u32, gid: u32, groups: &[u32]) -> std::io::Result<()> {
    if !can_switch() {
        // An unprivileged smbd (tests, a personal server) runs everything as itself.
        return Ok(());
    }
    // Groups first: setgroups needs CAP_SETGID, which setfsuid to a non-zero uid does not
    // drop, but do it while fsuid is still whatever it was to keep the order obvious.
    // Only this thread's credentials change (crate::sys::set_thread_groups).
    crate::sys::set_thread_groups(groups)?;
    crate::sys::set_fs_ids(uid, gid);
    if !VERIFIED.with(Cell::get) {
        // setfsuid/setfsgid return the previous value and cannot report failure: calling
        // them again with -1 returns the current value, which must be the one asked for.
        let (u, g) = crate::sys::fs_ids();
        if u != uid || g != gid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "setfsuid/setfsgid refused",
            ));
        }
        VERIFIED.with(|v| v.set(true));
    }
    Ok(())
}

/// Look a user up through NSS: (uid, primary gid, all groups).
pub fn lookup_user(name: &str) -> Result<UnixIdentity, IdentityError> {
    let cname = CString::new(name).map_err(|_| IdentityError::UnknownUser(name.into()))?;
    let (uid, gid) =
        crate::sys::user_ids(&cname).ok_or_else(|| IdentityError::UnknownUser(name.into()))?;
    let mut groups = vec![0u32; 64];
    while let Err(needed) = crate::sys::group_list(&cname, gid, &mut groups) {
        if groups.len() >= 65536 {
            groups.truncate(0);
            break;
        }
        let want = needed.max(groups.len() * 2);
        groups.resize(want, 0);
    }
    Ok(UnixIdentity { uid, gid, groups })
}

/// A group's gid through NSS; a numeric name is taken as the gid itself.
pub fn lookup_group(name: &str) -> Result<u32, IdentityError> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let cname = CString::new(name).map_err(|_| IdentityError::UnknownGroup(name.into()))?;
    crate::sys::group_id(&cname).ok_or_else(|| IdentityError::UnknownGroup(name.into()))
}

/// The Unix identity of every configured user and of the guest account, resolved at start
/// so that a user NSS does not know is a configuration error, not a failed logon later.
#[derive(Debug, Clone)]
pub struct Identities {
    /// Keyed by the upper-cased user name (NTLM names are case-insensitive).
    by_user: std::collections::HashMap<String, Arc<UnixIdentity>>,
    /// What anonymous sessions run as on guest_ok shares.
    pub guest: Arc<UnixIdentity>,
}

/// uid/gid of the traditional `nobody` account, for a system whose NSS lacks it.
const NOBODY: u32 = 65534;

impl Identities {
    /// Resolve every user of `users` (ids from the file, else NSS) and the guest account.
    pub fn resolve(
        users: &smb_auth::users::UserDb,
        guest_account: &str,
    ) -> Result<Identities, IdentityError> {
        let mut by_user = std::collections::HashMap::new();
        for name in users.names() {
            let ids = users.unix_ids(name).cloned().unwrap_or_default();
            let id = match (ids.uid, ids.gid) {
                (Some(uid), Some(gid)) => {
                    let mut groups = ids.groups.clone();
                    if !groups.contains(&gid) {
                        groups.insert(0, gid);
                    }
                    UnixIdentity { uid, gid, groups }
                }
                _ => {
                    let mut id = lookup_user(name)?;
                    for g in &ids.groups {
                        if !id.groups.contains(g) {
                            id.groups.push(*g);
                        }
                    }
                    id
                }
            };
            if id.uid == 0 {
                tracing::warn!(user = name, "users file maps an SMB user to uid 0 (root)");
            }
            by_user.insert(name.to_uppercase(), Arc::new(id));
        }
        let guest = match lookup_user(guest_account) {
            Ok(id) => id,
            Err(_) => {
                tracing::warn!(guest_account, "guest account unknown to NSS; using 65534");
                UnixIdentity {
                    uid: NOBODY,
                    gid: NOBODY,
                    groups: vec![NOBODY],
                }
            }
        };
        Ok(Identities {
            by_user,
            guest: Arc::new(guest),
        })
    }

    /// The identity of a configured user.
    pub fn of_user(&self, name: &str) -> Option<Arc<UnixIdentity>> {
        self.by_user.get(&name.to_uppercase()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_through_nss() {
        let id = lookup_user("root").expect("root exists");
        assert_eq!(id.uid, 0);
        assert_eq!(lookup_group("0").unwrap(), 0);
        assert!(lookup_user("no-such-user-here-xyz").is_err());
    }

    #[test]
    fn files_created_after_a_switch_belong_to_the_identity() {
        if !can_switch() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let id = Arc::new(UnixIdentity {
            uid: 54321,
            gid: 54322,
            groups: vec![54322],
        });
        let handle = std::thread::spawn({
            let p = dir.path().to_path_buf();
            move || {
                become_user(&id);
                std::fs::write(p.join("f"), b"x").unwrap();
                // Root's files are out of reach for the identity...
                let denied = std::fs::read("/etc/shadow").is_err();
                // ...but not for a privileged metadata update.
                let allowed = as_root(|| std::fs::metadata("/etc/shadow").is_ok());
                (denied, allowed)
            }
        });
        let (denied, allowed) = handle.join().unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir.path().join("f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (54321, 54322));
        assert!(denied, "the switched thread read /etc/shadow");
        assert!(allowed);
        // The test thread itself stayed root.
        assert!(std::fs::metadata("/etc/shadow").is_ok());
    }
}
