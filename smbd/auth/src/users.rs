//! Local user database: user name -> NT hash (MD4 of the UTF-16LE password, MS-NLMP 3.3.1).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use md4::{Digest, Md4};

/// Errors loading or parsing a user file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserDbError {
    /// The file could not be read.
    #[error("cannot read user file {path}: {source}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A line is not `name:uid:gid:NT-hash[:groups]`.
    #[error("user file line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// NT hash (NTOWFv1 input of NTLMv2): MD4(UTF-16LE(password)).
pub fn nt_hash_of_password(password: &str) -> [u8; 16] {
    let mut h = Md4::new();
    for unit in password.encode_utf16() {
        h.update(unit.to_le_bytes());
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize());
    out
}

/// The Unix identity a user's file operations run as, as written in the users file. Empty
/// fields are resolved by the server through NSS (the system's user database).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixIds {
    /// Unix user id; `None`: look the name up through NSS.
    pub uid: Option<u32>,
    /// Primary group id; `None`: the NSS user's primary group.
    pub gid: Option<u32>,
    /// Supplementary groups named in the file (NSS adds the user's own when uid is empty).
    pub groups: Vec<u32>,
}

#[derive(Clone)]
struct Entry {
    name: String,
    nt_hash: [u8; 16],
    unix: UnixIds,
}

/// Users known to the server. Only NT hashes are kept, never the passwords.
///
/// The users file holds one user a line, `#` comments and blank lines ignored:
///
/// ```text
/// # name:uid:gid:NT-hash[:supplementary-gids]
/// alice:1001:1001:8846F7EAEE8FB117AD06BDD830B7586C
/// bob:::0CB6948805F797BF2A82807973B89537
/// carol:1003:100:1C0F23E6D2D4D2C2A4C6C0A9E8B3A1F2:27,1010
/// ```
///
/// The NT hash is MD4 of the UTF-16LE password (MS-NLMP 3.3.1 NTOWFv1), as 32 hex digits:
/// what NTLMv2 needs, and not the password itself. Empty uid/gid mean "ask NSS for this
/// name". Every node of a cluster must use the same file (or the same NSS source) so a user
/// has the same uid/gid everywhere. `smbd passwd` writes the file (mode 0600).
#[derive(Clone, Default)]
pub struct UserDb {
    // Keyed by the upper-cased name: NTLM user names are case-insensitive (NTOWFv2 upper-cases them).
    users: HashMap<String, Entry>,
}

impl std::fmt::Debug for UserDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserDb")
            .field("users", &self.users.len())
            .finish()
    }
}

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn parse_id(s: &str, what: &str, line: usize) -> Result<Option<u32>, UserDbError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<u32>()
        .ok()
        .filter(|&v| v != u32::MAX)
        .map(Some)
        .ok_or_else(|| UserDbError::Parse {
            line,
            reason: format!("{what} `{s}` is not a number"),
        })
}

impl UserDb {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace a user (identity resolved through NSS).
    pub fn add(&mut self, user: &str, password: &str) {
        self.add_hash(user, nt_hash_of_password(password));
    }

    /// Add or replace a user by NT hash (identity resolved through NSS).
    pub fn add_hash(&mut self, user: &str, nt_hash: [u8; 16]) {
        self.add_entry(user, nt_hash, UnixIds::default());
    }

    /// Add or replace a user with its NT hash and Unix identity.
    pub fn add_entry(&mut self, user: &str, nt_hash: [u8; 16], unix: UnixIds) {
        self.users.insert(
            user.to_uppercase(),
            Entry {
                name: user.to_string(),
                nt_hash,
                unix,
            },
        );
    }

    /// Remove a user; whether it existed.
    pub fn remove(&mut self, user: &str) -> bool {
        self.users.remove(&user.to_uppercase()).is_some()
    }

    /// Read a users file (format in the type's documentation); clear errors with line numbers.
    pub fn load(path: &Path) -> Result<Self, UserDbError> {
        let text = std::fs::read_to_string(path).map_err(|source| UserDbError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parse the text of a users file (see [`UserDb`]). Surrounding whitespace of the name is
    /// ignored. A line in the old `user:password` form is refused with a hint: passwords are
    /// not stored.
    pub fn parse(text: &str) -> Result<Self, UserDbError> {
        let mut db = UserDb::new();
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split(':').collect();
            if !(4..=5).contains(&fields.len()) || parse_hex16(fields[3].trim()).is_none() {
                return Err(UserDbError::Parse {
                    line: line_no,
                    reason: "expected `name:uid:gid:NT-hash[:groups]` (a plaintext \
                             `user:password` line is no longer accepted: add the user with \
                             `smbd passwd`)"
                        .into(),
                });
            }
            let user = fields[0].trim();
            if user.is_empty() {
                return Err(UserDbError::Parse {
                    line: line_no,
                    reason: "empty user name".into(),
                });
            }
            if db.users.contains_key(&user.to_uppercase()) {
                return Err(UserDbError::Parse {
                    line: line_no,
                    reason: format!("duplicate user `{user}`"),
                });
            }
            let uid = parse_id(fields[1], "uid", line_no)?;
            let gid = parse_id(fields[2], "gid", line_no)?;
            if uid.is_some() != gid.is_some() {
                return Err(UserDbError::Parse {
                    line: line_no,
                    reason: "give both uid and gid, or neither (NSS)".into(),
                });
            }
            let mut groups = Vec::new();
            if let Some(g) = fields.get(4) {
                for part in g.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    if let Some(v) = parse_id(part, "group id", line_no)? {
                        groups.push(v);
                    }
                }
            }
            let Some(nt_hash) = parse_hex16(fields[3].trim()) else {
                continue;
            };
            db.add_entry(user, nt_hash, UnixIds { uid, gid, groups });
        }
        Ok(db)
    }

    /// The users file text for this database (sorted by name), as `parse` reads it.
    pub fn to_file_text(&self) -> String {
        let mut entries: Vec<&Entry> = self.users.values().collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::from("# name:uid:gid:NT-hash[:groups] (written by `smbd passwd`)\n");
        for e in entries {
            let id = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
            let hash: String = e.nt_hash.iter().map(|b| format!("{b:02X}")).collect();
            out.push_str(&format!(
                "{}:{}:{}:{hash}",
                e.name,
                id(e.unix.uid),
                id(e.unix.gid)
            ));
            if !e.unix.groups.is_empty() {
                let g: Vec<String> = e.unix.groups.iter().map(u32::to_string).collect();
                out.push(':');
                out.push_str(&g.join(","));
            }
            out.push('\n');
        }
        out
    }

    /// The Unix identity configured for a user (case-insensitive lookup).
    pub fn unix_ids(&self, user: &str) -> Option<&UnixIds> {
        self.users.get(&user.to_uppercase()).map(|e| &e.unix)
    }

    /// Configured user names (case preserved).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.values().map(|e| e.name.as_str())
    }

    /// NT hash of a user; lookup is case-insensitive.
    pub fn nt_hash(&self, user: &str) -> Option<[u8; 16]> {
        self.users.get(&user.to_uppercase()).map(|e| e.nt_hash)
    }

    /// The user name as it was configured (case preserved), for a case-insensitive lookup.
    pub fn canonical_name(&self, user: &str) -> Option<&str> {
        self.users
            .get(&user.to_uppercase())
            .map(|e| e.name.as_str())
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no users are configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "8846F7EAEE8FB117AD06BDD830B7586C"; // NT hash of "password"

    #[test]
    fn parses_hashes_and_ids() {
        let db = UserDb::parse(&format!(
            "# c\n\nalice:1001:1002:{H}\nBob:::{}\ncarol:7:8:{H}:27, 1010\n",
            H.to_lowercase()
        ))
        .unwrap();
        assert_eq!(db.len(), 3);
        assert_eq!(db.nt_hash("ALICE"), Some(nt_hash_of_password("password")));
        assert_eq!(db.canonical_name("bob"), Some("Bob"));
        assert_eq!(
            db.unix_ids("alice"),
            Some(&UnixIds {
                uid: Some(1001),
                gid: Some(1002),
                groups: vec![]
            })
        );
        assert_eq!(db.unix_ids("bob"), Some(&UnixIds::default()));
        assert_eq!(db.unix_ids("carol").unwrap().groups, vec![27, 1010]);
    }

    #[test]
    fn plaintext_and_malformed_lines_are_refused() {
        for (text, needle) in [
            ("alice:secret\n", "smbd passwd"),
            ("alice:1:1:nothex\n", "NT-hash"),
            (&format!("alice:x:1:{H}\n") as &str, "uid"),
            (&format!("alice:1::{H}\n"), "both"),
            (&format!(":1:1:{H}\n"), "empty user"),
            (&format!("a:1:1:{H}\nA:2:2:{H}\n"), "duplicate"),
        ] {
            let e = UserDb::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn file_text_round_trips() {
        let mut db = UserDb::new();
        db.add_entry(
            "alice",
            nt_hash_of_password("pw"),
            UnixIds {
                uid: Some(5),
                gid: Some(6),
                groups: vec![7],
            },
        );
        db.add("bob", "other");
        let text = db.to_file_text();
        assert!(!text.contains("pw"));
        let back = UserDb::parse(&text).unwrap();
        assert_eq!(back.nt_hash("alice"), db.nt_hash("alice"));
        assert_eq!(back.unix_ids("alice"), db.unix_ids("alice"));
        assert_eq!(back.unix_ids("bob"), Some(&UnixIds::default()));
        assert!(db.remove("ALICE"));
        assert_eq!(db.len(), 1);
    }
}
