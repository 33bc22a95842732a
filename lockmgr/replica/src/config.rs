//! The replica set of one epoch (what the coordination service stores) and its text encoding.
//!
//! ```text
//! epoch 7
//! primary lm-a udp:10.0.0.1:7000 5f0c3a9e12d4b781
//! standby lm-b udp:10.0.0.2:7000 0a9e44d2c1f3b605
//! ```
//!
//! The last word is the member's incarnation (16 hex digits, random per process start): a
//! replica that restarted is another incarnation and can neither promote itself nor be
//! appended to on the strength of a record that names its previous life.
//!
//! One `epoch` line first, one `primary` line, then at most [`MAX_STANDBYS`] `standby` lines;
//! names are unique. Every value has one encoding, so decode-then-encode gives the input back.

/// Most standbys a configuration names.
pub const MAX_STANDBYS: usize = 4;
const MAX_NAME: usize = 64;
const MAX_ADDRESS: usize = 256;
const MAX_RECORD: usize = 4096;

/// A lockmgrd replica: its name, the address nodes and replicas reach it at (as the
/// transport spells it, e.g. `udp:10.0.0.1:7000` or `shm:/run/lockmgr.sock`), and the
/// incarnation of the process (random per start).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub name: String,
    pub address: String,
    pub incarnation: u64,
}

/// Who serves the cluster's lock state in one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Configuration {
    pub epoch: u64,
    pub primary: Member,
    pub standbys: Vec<Member>,
}

/// Why a stored configuration could not be read. Not exhaustive.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("configuration record is {0} bytes (at most 4096)")]
    TooLong(usize),
    #[error("configuration record is not UTF-8")]
    NotUtf8,
    #[error("line {line}: {what}")]
    Line { line: usize, what: &'static str },
    #[error("{0}")]
    Invalid(&'static str),
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_address(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ADDRESS && s.bytes().all(|b| b.is_ascii_graphic())
}

impl Member {
    pub fn new(name: impl Into<String>, address: impl Into<String>, incarnation: u64) -> Member {
        Member {
            name: name.into(),
            address: address.into(),
            incarnation,
        }
    }

    /// Whether this record names exactly this process (name and incarnation).
    pub fn is(&self, name: &str, incarnation: u64) -> bool {
        self.name == name && self.incarnation == incarnation
    }
}

impl Configuration {
    /// Checks the rules the text encoding enforces (for configurations built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.epoch == 0 {
            return Err(ConfigError::Invalid("epoch 0 is not a configuration"));
        }
        if self.standbys.len() > MAX_STANDBYS {
            return Err(ConfigError::Invalid("too many standbys"));
        }
        let members = std::iter::once(&self.primary).chain(&self.standbys);
        let mut names = std::collections::BTreeSet::new();
        for m in members {
            if !valid_name(&m.name) {
                return Err(ConfigError::Invalid(
                    "member name must be 1-64 of [A-Za-z0-9._-]",
                ));
            }
            if !valid_address(&m.address) {
                return Err(ConfigError::Invalid(
                    "member address must be 1-256 printable ASCII characters without spaces",
                ));
            }
            if !names.insert(m.name.as_str()) {
                return Err(ConfigError::Invalid("member names must be unique"));
            }
        }
        Ok(())
    }

    /// The text record stored in etcd.
    pub fn encode(&self) -> String {
        let mut s = format!(
            "epoch {}\nprimary {} {} {:016x}\n",
            self.epoch, self.primary.name, self.primary.address, self.primary.incarnation
        );
        for m in &self.standbys {
            s.push_str(&format!(
                "standby {} {} {:016x}\n",
                m.name, m.address, m.incarnation
            ));
        }
        s
    }

    /// Parses a stored record. Never panics; rejects anything [`Configuration::encode`]
    /// would not produce.
    pub fn decode(bytes: &[u8]) -> Result<Configuration, ConfigError> {
        if bytes.len() > MAX_RECORD {
            return Err(ConfigError::TooLong(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8)?;
        let Some(body) = text.strip_suffix('\n') else {
            return Err(ConfigError::Invalid("record must end with a newline"));
        };
        let mut epoch = None;
        let mut primary = None;
        let mut standbys = Vec::new();
        for (i, line) in body.split('\n').enumerate() {
            let line_no = i + 1;
            let bad = |what| ConfigError::Line {
                line: line_no,
                what,
            };
            let mut words = line.split(' ');
            let keyword = words.next().unwrap_or_default();
            match (keyword, line_no) {
                ("epoch", 1) => {
                    let value = words.next().ok_or(bad("epoch needs a value"))?;
                    if value.starts_with('0') || value.starts_with('+') {
                        return Err(bad("epoch must be a decimal number without leading zeros"));
                    }
                    epoch = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| bad("epoch is not a number"))?,
                    );
                }
                ("epoch", _) => return Err(bad("epoch must be the first line, once")),
                (_, 1) => return Err(bad("the first line must be the epoch")),
                ("primary", 2) | ("standby", 3..) => {
                    let name = words.next().ok_or(bad("member needs a name"))?;
                    let address = words.next().ok_or(bad("member needs an address"))?;
                    let inc = words.next().ok_or(bad("member needs an incarnation"))?;
                    if inc.len() != 16
                        || !inc
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    {
                        return Err(bad("incarnation must be 16 lower-case hex digits"));
                    }
                    let incarnation =
                        u64::from_str_radix(inc, 16).map_err(|_| bad("incarnation is not hex"))?;
                    let member = Member::new(name, address, incarnation);
                    if keyword == "primary" {
                        primary = Some(member);
                    } else {
                        standbys.push(member);
                    }
                }
                ("primary", _) => return Err(bad("primary must be the second line, once")),
                _ => return Err(bad("unknown line")),
            }
            if words.next().is_some() {
                return Err(bad("trailing words"));
            }
        }
        let config = Configuration {
            epoch: epoch.ok_or(ConfigError::Invalid("no epoch"))?,
            primary: primary.ok_or(ConfigError::Invalid("no primary"))?,
            standbys,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Configuration {
        Configuration {
            epoch: 7,
            primary: Member::new("lm-a", "udp:10.0.0.1:7000", 0x5f0c_3a9e_12d4_b781),
            standbys: vec![Member::new("lm-b", "shm:/run/lockmgr.sock", 7)],
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let text = c.encode();
        assert_eq!(
            text,
            "epoch 7\nprimary lm-a udp:10.0.0.1:7000 5f0c3a9e12d4b781\n\
             standby lm-b shm:/run/lockmgr.sock 0000000000000007\n"
        );
        assert_eq!(Configuration::decode(text.as_bytes()), Ok(c));
    }

    #[test]
    fn rejects_what_encode_never_writes() {
        for bad in [
            "",
            "epoch 7\n",
            "epoch 7\nprimary a b\n",
            "epoch 7\nprimary a b 5F0C3A9E12D4B781\n",
            "epoch 7\nprimary a b 5f0c3a9e12d4b78\n",
            "epoch 7\nprimary a b 5f0c3a9e12d4b781 x\n",
            "epoch 07\nprimary a b\n",
            "epoch 0\nprimary a b\n",
            "epoch 7\nprimary a b",
            "primary a b\nepoch 7\n",
            "epoch 7\nprimary a b\nprimary c d\n",
            "epoch 7\nprimary a b\nstandby a c\n",
            "epoch 7\nprimary a b c\n",
            "epoch 7\nprimary a\n",
            "epoch 7\nprimary a  b\n",
            "epoch 7\nprimary a/b c\n",
            "epoch 7\nprimary a b\n\n",
            "epoch 7\nprimary a b\nwitness c d\n",
            "epoch 18446744073709551616\nprimary a b\n",
        ] {
            assert!(
                Configuration::decode(bad.as_bytes()).is_err(),
                "accepted {bad:?}"
            );
        }
        assert!(Configuration::decode(&[0xff, 0xfe]).is_err());
        assert!(Configuration::decode(&vec![b'a'; 5000]).is_err());
    }

    #[test]
    fn standbys_are_capped() {
        let mut c = sample();
        c.standbys = (0..=MAX_STANDBYS)
            .map(|i| Member::new(format!("s{i}"), "udp:1.2.3.4:5", i as u64))
            .collect();
        assert!(c.validate().is_err());
        assert!(Configuration::decode(c.encode().as_bytes()).is_err());
    }
}
