//! Local user database: user name -> NT hash (MD4 of the UTF-16LE password, MS-NLMP 3.3.1).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use md4::{Digest, Md4};

/// Errors loading or parsing a user file.
#[derive(Debug, thiserror::Error)]
pub enum UserDbError {
    /// The file could not be read.
    #[error("cannot read user file {path}: {source}")]
    Io {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A line is not `user:password`.
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

#[derive(Clone)]
struct Entry {
    name: String,
    nt_hash: [u8; 16],
}

/// Users known to the server. Only NT hashes are kept, never the passwords.
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

impl UserDb {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace a user.
    pub fn add(&mut self, user: &str, password: &str) {
        self.add_hash(user, nt_hash_of_password(password));
    }

    /// Add or replace a user by NT hash.
    pub fn add_hash(&mut self, user: &str, nt_hash: [u8; 16]) {
        self.users.insert(
            user.to_uppercase(),
            Entry {
                name: user.to_string(),
                nt_hash,
            },
        );
    }

    /// File format: one `user:password` per line, '#' comments, blank lines ignored; clear errors with line no.
    pub fn load(path: &Path) -> Result<Self, UserDbError> {
        let text = std::fs::read_to_string(path).map_err(|source| UserDbError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parse the text of a user file (see [`UserDb::load`]). The password is everything after the
    /// first ':' (so it may itself contain ':'); surrounding whitespace of the user name is ignored.
    pub fn parse(text: &str) -> Result<Self, UserDbError> {
        let mut db = UserDb::new();
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((user, password)) = trimmed.split_once(':') else {
                return Err(UserDbError::Parse {
                    line: line_no,
                    reason: "expected `user:password`".into(),
                });
            };
            let user = user.trim();
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
            db.add(user, password);
        }
        Ok(db)
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
