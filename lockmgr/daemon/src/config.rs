//! lockmgrd configuration: a TOML file, overridable from the command line.
//!
//! ```toml
//! # Secret shared by lockmgrd and every smbd node: a file holding at least 16 bytes
//! # (e.g. `head -c 32 /dev/urandom > cluster.key`), or inline hex.
//! cluster_key_file = "/etc/clustersmb/cluster.key"
//! # cluster_key_hex = "00112233..."
//!
//! [transport]
//! kind = "shm"                          # shm | udp | afpacket | afxdp
//! listen = "/run/clustersmb/lockmgr.sock"  # shm: unix socket path; udp: ADDR:PORT;
//!                                        # afpacket/afxdp: interface name (or use `interface`)
//! spin_us = 50                           # busy-poll this long before sleeping (0 = always sleep)
//! # Raw Ethernet only (afpacket, afxdp):
//! # interface = "eth1"                   # overrides `listen`
//! # ethertype = 0x88B5                   # lockmgr frames' EtherType (default: IEEE local experimental)
//! # peer_mac = "02:00:00:00:00:01"       # clients: lockmgrd's MAC (the server learns client MACs)
//!
//! [engine]
//! break_timeout_ms = 35000               # oplock/lease break acknowledgement timeout
//!
//! [sessions]
//! liveness_ms = 1000                     # a node silent this long (or whose transport dropped) is dead
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cluster key: {0}")]
    Key(String),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Shm,
    Udp,
    /// Raw Ethernet frames over an AF_PACKET socket.
    Afpacket,
    /// Raw Ethernet frames over AF_XDP (copy mode, generic XDP).
    Afxdp,
}

impl TransportKind {
    /// Raw-Ethernet kinds address peers by interface + MAC.
    pub fn is_ethernet(self) -> bool {
        matches!(self, TransportKind::Afpacket | TransportKind::Afxdp)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    pub kind: TransportKind,
    #[serde(default)]
    pub listen: String,
    #[serde(default = "default_spin_us")]
    pub spin_us: u64,
    /// afpacket/afxdp: interface name (defaults to `listen`).
    #[serde(default)]
    pub interface: Option<String>,
    /// afpacket/afxdp: EtherType of lockmgr frames.
    #[serde(default = "default_ethertype")]
    pub ethertype: u16,
    /// afpacket/afxdp clients: the server's MAC address.
    #[serde(default)]
    pub peer_mac: Option<String>,
}

fn default_ethertype() -> u16 {
    lockmgr_transport::eth::DEFAULT_ETHERTYPE
}

impl TransportConfig {
    /// Interface for the raw-Ethernet kinds: `interface`, else `listen`.
    pub fn interface(&self) -> &str {
        self.interface.as_deref().unwrap_or(&self.listen)
    }

    /// Raw-Ethernet settings for the transport crate.
    pub fn eth(&self) -> lockmgr_transport::eth::EthConfig {
        lockmgr_transport::eth::EthConfig {
            interface: self.interface().to_string(),
            ethertype: self.ethertype,
        }
    }

    /// `peer_mac`, parsed (`None` if unset).
    pub fn peer_mac(&self) -> Result<Option<lockmgr_transport::eth::MacAddr>, ConfigError> {
        self.peer_mac
            .as_deref()
            .map(|m| {
                m.parse().map_err(|e| ConfigError::Invalid {
                    field: "transport.peer_mac",
                    message: format!("{e}"),
                })
            })
            .transpose()
    }
}

fn default_spin_us() -> u64 {
    50
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(default = "default_break_timeout_ms")]
    pub break_timeout_ms: u64,
}

fn default_break_timeout_ms() -> u64 {
    35_000
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            break_timeout_ms: default_break_timeout_ms(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    #[serde(default = "default_liveness_ms")]
    pub liveness_ms: u64,
}

fn default_liveness_ms() -> u64 {
    1000
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            liveness_ms: default_liveness_ms(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cluster_key_file: Option<PathBuf>,
    pub cluster_key_hex: Option<String>,
    pub transport: TransportConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub sessions: SessionConfig,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sessions.liveness_ms == 0 {
            return Err(ConfigError::Invalid {
                field: "sessions.liveness_ms",
                message: "must be at least 1".into(),
            });
        }
        if self.transport.kind.is_ethernet() {
            if self.transport.interface().is_empty() {
                return Err(ConfigError::Invalid {
                    field: "transport.interface",
                    message: "afpacket/afxdp need an interface (interface = or listen =)".into(),
                });
            }
            if self.transport.ethertype < 0x0600 {
                return Err(ConfigError::Invalid {
                    field: "transport.ethertype",
                    message: format!(
                        "{:#06x} is a length, not an EtherType",
                        self.transport.ethertype
                    ),
                });
            }
            self.transport.peer_mac()?;
        } else if self.transport.listen.is_empty() {
            return Err(ConfigError::Invalid {
                field: "transport.listen",
                message: "empty".into(),
            });
        }
        if self.transport.kind == TransportKind::Udp
            && self
                .transport
                .listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(ConfigError::Invalid {
                field: "transport.listen",
                message: format!("{:?} is not ADDR:PORT", self.transport.listen),
            });
        }
        Ok(())
    }

    /// The cluster key from `cluster_key_file` or `cluster_key_hex` (exactly one must be set).
    pub fn cluster_key(&self) -> Result<Vec<u8>, ConfigError> {
        match (&self.cluster_key_file, &self.cluster_key_hex) {
            (Some(path), None) => read_key_file(path),
            (None, Some(hex)) => parse_key_hex(hex),
            (Some(_), Some(_)) => Err(ConfigError::Key(
                "set cluster_key_file or cluster_key_hex, not both".into(),
            )),
            (None, None) => Err(ConfigError::Key(
                "no cluster_key_file or cluster_key_hex".into(),
            )),
        }
    }
}

/// Minimum key size: a shorter secret is too easy to guess for a challenge-response proof.
pub const MIN_KEY_BYTES: usize = 16;

pub fn read_key_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let key = std::fs::read(path)
        .map_err(|e| ConfigError::Key(format!("cannot read {}: {e}", path.display())))?;
    if key.len() < MIN_KEY_BYTES {
        return Err(ConfigError::Key(format!(
            "{} holds {} bytes; at least {MIN_KEY_BYTES} needed",
            path.display(),
            key.len()
        )));
    }
    Ok(key)
}

pub fn parse_key_hex(hex: &str) -> Result<Vec<u8>, ConfigError> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return Err(ConfigError::Key(
            "hex key has an odd number of digits".into(),
        ));
    }
    let mut key = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(2) {
        let byte = hex
            .get(i..i + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .ok_or_else(|| ConfigError::Key(format!("invalid hex digit near offset {i}")))?;
        key.push(byte);
    }
    if key.len() < MIN_KEY_BYTES {
        return Err(ConfigError::Key(format!(
            "hex key holds {} bytes; at least {MIN_KEY_BYTES} needed",
            key.len()
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster_key_hex = "000102030405060708090a0b0c0d0e0f"
[transport]
kind = "udp"
listen = "127.0.0.1:7500"
"#;

    #[test]
    fn parses_minimal_config_with_defaults() {
        let cfg = Config::parse(GOOD).unwrap();
        assert_eq!(cfg.transport.kind, TransportKind::Udp);
        assert_eq!(cfg.transport.spin_us, 50);
        assert_eq!(cfg.engine.break_timeout_ms, 35_000);
        assert_eq!(cfg.sessions.liveness_ms, 1000);
        assert_eq!(cfg.cluster_key().unwrap().len(), 16);
    }

    #[test]
    fn rejects_unknown_field() {
        let err = Config::parse(&format!("{GOOD}\nbogus = 1\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn rejects_bad_udp_address() {
        let text = GOOD.replace("127.0.0.1:7500", "localhost");
        assert!(matches!(
            Config::parse(&text),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn parses_raw_ethernet_transports() {
        let text = GOOD.replace("kind = \"udp\"", "kind = \"afxdp\"").replace(
            "listen = \"127.0.0.1:7500\"",
            "interface = \"veth0\"\nethertype = 0x88B6\npeer_mac = \"02:00:00:00:00:01\"",
        );
        let cfg = Config::parse(&text).unwrap();
        assert_eq!(cfg.transport.kind, TransportKind::Afxdp);
        assert_eq!(cfg.transport.eth().interface, "veth0");
        assert_eq!(cfg.transport.ethertype, 0x88b6);
        assert_eq!(
            cfg.transport.peer_mac().unwrap().unwrap().to_string(),
            "02:00:00:00:00:01"
        );
        let text = GOOD
            .replace("kind = \"udp\"", "kind = \"afpacket\"")
            .replace("127.0.0.1:7500", "eth1");
        let cfg = Config::parse(&text).unwrap();
        assert_eq!(cfg.transport.eth().interface, "eth1");
        assert_eq!(cfg.transport.ethertype, 0x88b5);
        let bad_mac = format!("{text}peer_mac = \"02:00:00\"\n");
        assert!(matches!(
            Config::parse(&bad_mac),
            Err(ConfigError::Invalid {
                field: "transport.peer_mac",
                ..
            })
        ));
        let bad_type = format!("{text}ethertype = 100\n");
        assert!(Config::parse(&bad_type).is_err());
        let no_if = GOOD
            .replace("kind = \"udp\"", "kind = \"afpacket\"")
            .replace("listen = \"127.0.0.1:7500\"", "");
        assert!(Config::parse(&no_if).is_err());
    }

    #[test]
    fn rejects_short_or_malformed_keys() {
        assert!(parse_key_hex("0011").is_err());
        assert!(parse_key_hex("zz0102030405060708090a0b0c0d0e0f").is_err());
        assert!(parse_key_hex("0").is_err());
        assert!(parse_key_hex("é0102030405060708090a0b0c0d0e0f0").is_err());
    }

    #[test]
    fn rejects_both_or_no_key() {
        let both = GOOD.replace(
            "cluster_key_hex",
            "cluster_key_file = \"/nonexistent\"\ncluster_key_hex",
        );
        assert!(Config::parse(&both).unwrap().cluster_key().is_err());
        let none = GOOD.replace("cluster_key_hex = \"000102030405060708090a0b0c0d0e0f\"", "");
        assert!(Config::parse(&none).unwrap().cluster_key().is_err());
    }
}
