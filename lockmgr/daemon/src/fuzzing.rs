//! Properties the cargo-fuzz target (`fuzz/`, target `lockmgrd_config`) checks, shared with
//! the corpus regression test (`tests/fuzz_corpus.rs`) so `cargo test` replays every saved
//! input through exactly the same code. Not part of the stable API.
//!
//! Arbitrary text must never panic the config parser; `Err` means a violated property.

use crate::config::{parse_key_hex, Config, TransportKind};

/// What [`check_config`] concluded about one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not UTF-8 (`Config::load` refuses such files before parsing).
    NotText,
    /// The parser refused it.
    Rejected,
    /// A valid configuration.
    Accepted,
}

/// A violated config-parser property.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PropertyViolation(String);

/// Parses `data` as a lockmgrd config. An accepted config must validate again, parse the same
/// a second time, and have every derived setting (interface, MAC, RDMA settings, inline key)
/// computable without panicking; an accepted inline key must be exactly the hex digits given.
/// `cluster_key_file` is never read: fuzz input must not choose files to open.
pub fn check_config(data: &[u8]) -> Result<Outcome, PropertyViolation> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(Outcome::NotText);
    };
    let Ok(cfg) = Config::parse(text) else {
        return Ok(Outcome::Rejected);
    };
    let fail = |what: String| Err(PropertyViolation(what));
    if let Err(e) = cfg.validate() {
        return fail(format!("accepted config fails validate(): {e}"));
    }
    match Config::parse(text) {
        Ok(again) if again == cfg => {}
        other => return fail(format!("second parse differs: {other:?}")),
    }
    let t = &cfg.transport;
    if t.kind.is_ethernet() {
        if t.interface().is_empty() {
            return fail("raw-Ethernet config without an interface".into());
        }
        if let Err(e) = t.peer_mac() {
            return fail(format!("validated peer_mac does not parse: {e}"));
        }
        let _ = t.eth();
    }
    if t.kind == TransportKind::Rdma {
        let r = t.rdma();
        let slots = lockmgr_rdma::wire::MIN_SLOTS..=lockmgr_rdma::wire::MAX_SLOTS;
        if r.device.port == 0 || !slots.contains(&r.slots) {
            return fail(format!("accepted RDMA settings out of range: {r:?}"));
        }
    }
    if let Some(hex) = &cfg.cluster_key_hex {
        check_key_hex(hex)?;
    }
    Ok(Outcome::Accepted)
}

/// An accepted hex key must re-encode to the (trimmed, lower-cased) text it came from: no
/// signs, spaces or other characters `from_str_radix` might tolerate inside the digits.
pub fn check_key_hex(hex: &str) -> Result<(), PropertyViolation> {
    let Ok(key) = parse_key_hex(hex) else {
        return Ok(());
    };
    let again: String = key.iter().map(|b| format!("{b:02x}")).collect();
    if again != hex.trim().to_ascii_lowercase() {
        return Err(PropertyViolation(format!(
            "key hex {hex:?} accepted as {again}"
        )));
    }
    Ok(())
}

/// Real configurations (seed corpus): every transport kind with its options.
pub fn samples() -> Vec<(String, String)> {
    const KEY: &str = "cluster_key_hex = \"000102030405060708090a0b0c0d0e0f\"\n";
    let s = |name: &str, body: &str| (format!("cfg-{name}.toml"), format!("{KEY}{body}"));
    vec![
        s(
            "shm",
            "[transport]\nkind = \"shm\"\nlisten = \"/run/clustersmb/lockmgr.sock\"\nspin_us = 50\n\n\
             [engine]\nbreak_timeout_ms = 35000\n\n[sessions]\nliveness_ms = 1000\n",
        ),
        s("udp", "[transport]\nkind = \"udp\"\nlisten = \"127.0.0.1:7500\"\n"),
        s(
            "udp6",
            "[transport]\nkind = \"udp\"\nlisten = \"[::1]:7500\"\nspin_us = 0\n",
        ),
        s(
            "afpacket",
            "[transport]\nkind = \"afpacket\"\nlisten = \"eth1\"\nethertype = 0x88B5\n",
        ),
        s(
            "afxdp",
            "[transport]\nkind = \"afxdp\"\ninterface = \"veth0\"\nethertype = 0x88B6\n\
             peer_mac = \"02:00:00:00:00:01\"\n",
        ),
        s(
            "rdma",
            "[transport]\nkind = \"rdma\"\nlisten = \"10.0.0.1:7501\"\nrdma_device = \"mlx5_0\"\n\
             rdma_port = 2\ngid_index = 3\nrdma_slots = 64\n",
        ),
        // The same settings in TOML's other spellings: inline table, dotted keys, literal and
        // multi-line strings.
        s(
            "inline-table",
            "transport = { kind = \"udp\", listen = '127.0.0.1:7500', spin_us = 1_000 }\n\
             engine = { break_timeout_ms = 0x10 }\n",
        ),
        s(
            "dotted-keys",
            "transport.kind = \"shm\"\ntransport.listen = \"\"\"\n/run/l.sock\"\"\"\n\
             sessions.liveness_ms = 1\n",
        ),
        (
            "cfg-keyfile.toml".into(),
            "# comment\ncluster_key_file = \"/etc/clustersmb/cluster.key\"\n\n[transport]\n\
             kind = \"shm\"\nlisten = \"/tmp/l.sock\"\n"
                .into(),
        ),
    ]
}
