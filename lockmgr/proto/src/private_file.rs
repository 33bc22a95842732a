//! Secret files (the cluster key, smbd's users file) must be private to their owner.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Refuse a secret file that its group or others may read or write (like ssh refuses a
/// private key with such modes): a key readable by every local user is no secret. The
/// message says what to do. Symlinks are followed (the target's mode counts).
pub fn check_private_file(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by group or others (mode {mode:04o}); it holds secrets: \
             chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_world_access_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k");
        std::fs::write(&f, b"secret").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_private_file(&f).is_ok(), ok, "{mode:o}");
        }
        assert!(check_private_file(&d.path().join("missing")).is_err());
    }
}
