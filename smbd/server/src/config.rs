//! Server configuration (TOML).
//!
//! ```toml
//! [server]
//! # Addresses to listen on; `--listen` on the command line adds more.
//! listen = ["0.0.0.0:445"]
//! # NetBIOS name of this server (used in NTLM target info).
//! netbios_name = "SMBD"
//! # NTLM domain / workgroup name.
//! domain = "WORKGROUP"
//! # Path of the users file: one `user:password` per line, `#` comments.
//! users = "/etc/smbd/users"
//! # Require signing on every session (clients that cannot sign are refused).
//! signing_required = false
//! # Encrypt every session (SMB 3.x only; 2.x clients are refused on encrypted shares).
//! encrypt = false
//! # Allow anonymous (null) sessions.
//! allow_anonymous = true
//! # Number of io_uring worker threads (0 = one per CPU).
//! workers = 0
//! # Cluster-wide filesystem identity used to derive file ids; defaults to statfs f_fsid of the
//! # share root. Set it on every node of a cluster serving the same shared filesystem.
//! # cluster_fs_id = "0x1234"
//!
//! [[share]]
//! name = "data"
//! path = "/srv/data"
//! read_only = false
//! encrypt = false
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    #[serde(default = "default_netbios")]
    pub netbios_name: String,
    #[serde(default = "default_domain")]
    pub domain: String,
    #[serde(default)]
    pub users: Option<PathBuf>,
    #[serde(default)]
    pub signing_required: bool,
    #[serde(default)]
    pub encrypt: bool,
    #[serde(default = "default_true")]
    pub allow_anonymous: bool,
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub cluster_fs_id: Option<String>,
}

fn default_netbios() -> String {
    "SMBD".into()
}
fn default_domain() -> String {
    "WORKGROUP".into()
}
fn default_true() -> bool {
    true
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Vec::new(),
            netbios_name: default_netbios(),
            domain: default_domain(),
            users: None,
            signing_required: false,
            encrypt: false,
            allow_anonymous: true,
            workers: 0,
            cluster_fs_id: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub encrypt: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub share: Vec<ShareConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        for s in &cfg.share {
            if s.name.is_empty() || s.name.contains(['\\', '/']) {
                return Err(ConfigError::Invalid(format!("bad share name {:?}", s.name)));
            }
            if s.name.eq_ignore_ascii_case("IPC$") {
                return Err(ConfigError::Invalid("IPC$ is built in".into()));
            }
        }
        Ok(cfg)
    }

    /// The configured cluster filesystem id, if any (decimal or 0x-hex).
    pub fn cluster_fs_id(&self) -> Result<Option<u64>, ConfigError> {
        let Some(s) = &self.server.cluster_fs_id else {
            return Ok(None);
        };
        let v = if let Some(h) = s.strip_prefix("0x") {
            u64::from_str_radix(h, 16)
        } else {
            s.parse()
        };
        v.map(Some)
            .map_err(|_| ConfigError::Invalid(format!("cluster_fs_id {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example() {
        let c = Config::parse(
            "[server]\nlisten=[\"127.0.0.1:4450\"]\nnetbios_name=\"X\"\n[[share]]\nname=\"s\"\npath=\"/tmp\"\nencrypt=true\n",
        )
        .unwrap();
        assert_eq!(c.share.len(), 1);
        assert!(c.share[0].encrypt);
        assert_eq!(c.server.netbios_name, "X");
    }

    #[test]
    fn example_file_parses() {
        let c = Config::parse(include_str!("../../smbd.example.toml")).unwrap();
        assert_eq!(c.share.len(), 2);
        assert!(c.share[1].read_only);
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(Config::parse("[server]\nbogus=1\n").is_err());
    }
}
