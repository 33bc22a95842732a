//! Transport conformance: the scenarios of `lockmgrd::conformance` against an in-process
//! lockmgrd `Server` over every transport this machine can run (shm, UDP, AF_PACKET, AF_XDP);
//! `conformance_tests!` instantiates all of them per transport. RDMA runs the same scenarios
//! in hw-tests' `rdma-suite` (soft-RoCE in qemu: `bash hw-tests/run-softroce.sh`), since the
//! machines that run `cargo test` usually have no RDMA device.
//!
//! The raw-Ethernet environments run the server in its own network namespace on a bridge and
//! every client node in its own namespace (one "host" each), so nodes really are separate
//! stations; they need root and are skipped with a message otherwise (a failure with CI=true).

use lockmgr_transport::afpacket::{PacketClient, PacketServer};
use lockmgr_transport::eth::EthConfig;
use lockmgr_transport::netns::{self, NetnsPair, NetnsStar, BRIDGE, IFACE, MAC_A};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::udp::{UdpClient, UdpConfig, UdpServer};
use lockmgr_transport::{ClientTransport, ServerTransport, SpinConfig};
use lockmgrd::conformance::{Env, EnvOptions, ServerBody, NODES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Shm,
    Udp,
    AfPacket,
    AfXdp,
}

fn spin() -> SpinConfig {
    // Several busy pollers on two vCPUs starve each other; sleeping keeps the tests robust.
    SpinConfig::never()
}

fn rcfg() -> ReliableConfig {
    ReliableConfig {
        spin: spin(),
        fabric_key: Some(lockmgr_transport::FabricKey::new(
            lockmgr_proto::ClusterKey::new(lockmgrd::conformance::KEY)
                .unwrap()
                .fabric_secret(),
        )),
        ..ReliableConfig::default()
    }
}

fn boxed<T: ClientTransport + 'static>(t: T) -> Box<dyn ClientTransport> {
    Box::new(t)
}

/// The scenario environment plus what its transport needs to stay alive. `env` is declared
/// first so the server stops before the namespaces / socket directory go away.
struct TestEnv {
    env: Env,
    _star: Option<NetnsStar>,
    _dir: Option<tempfile::TempDir>,
}

/// `None`: this transport cannot run here (reason printed); panics with CI=true.
fn start(kind: Kind) -> Option<TestEnv> {
    let opts = EnvOptions::default();
    let timeout = opts.timeout;
    let started = match kind {
        Kind::Shm => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("lockmgr.sock");
            let server = ShmServer::bind(
                &path,
                ShmConfig {
                    spin: spin(),
                    ..ShmConfig::default()
                },
            )
            .unwrap();
            let env = Env::start(
                move || Ok(server),
                move |_| {
                    ShmClient::connect(&path, spin(), timeout)
                        .map(boxed)
                        .map_err(|e| e.to_string())
                },
                opts,
            );
            env.map(|env| TestEnv {
                env,
                _star: None,
                _dir: Some(dir),
            })
        }
        Kind::Udp => {
            let server = UdpServer::bind("127.0.0.1:0".parse().unwrap(), rcfg()).unwrap();
            let addr = server.local_addr().unwrap();
            let env = Env::start(
                move || Ok(server),
                move |_| {
                    let cfg = UdpConfig {
                        spin: spin(),
                        ..UdpConfig::default()
                    };
                    UdpClient::connect(addr, cfg)
                        .map(boxed)
                        .map_err(|e| e.to_string())
                },
                opts,
            );
            env.map(|env| TestEnv {
                env,
                _star: None,
                _dir: None,
            })
        }
        Kind::AfPacket | Kind::AfXdp => {
            let star = netns::star_or_skip("conformance", NODES, 9000)?;
            let server_ns = star.server.clone();
            let clients = star.clients.clone();
            // The server transport is created and run inside the server's namespace.
            let spawn = move |body: ServerBody| {
                let h = NetnsPair::spawn_in(&server_ns, body);
                std::thread::spawn(move || {
                    h.join().unwrap().unwrap();
                })
            };
            let make_server = move || -> Result<Box<dyn ServerTransport>, String> {
                let eth = EthConfig::new(BRIDGE);
                if kind == Kind::AfPacket {
                    let t = PacketServer::open(&eth, rcfg()).map_err(|e| e.to_string())?;
                    Ok(Box::new(t))
                } else {
                    let t = lockmgr_transport::afxdp::XdpServer::open(
                        &eth,
                        &Default::default(),
                        rcfg(),
                    )
                    .map_err(|e| e.to_string())?;
                    Ok(Box::new(t))
                }
            };
            let connect = move |i: usize| -> Result<Box<dyn ClientTransport>, String> {
                let ns = clients.get(i).ok_or("no such client namespace")?;
                NetnsPair::run_in(ns, move || -> Result<Box<dyn ClientTransport>, String> {
                    let eth = EthConfig::new(IFACE);
                    if kind == Kind::AfPacket {
                        PacketClient::connect(&eth, MAC_A, rcfg())
                            .map(boxed)
                            .map_err(|e| e.to_string())
                    } else {
                        lockmgr_transport::afxdp::XdpClient::connect(
                            &eth,
                            &Default::default(),
                            MAC_A,
                            rcfg(),
                        )
                        .map(boxed)
                        .map_err(|e| e.to_string())
                    }
                })
                .map_err(|e| e.to_string())?
            };
            let env = Env::start_on(spawn, make_server, connect, opts);
            env.map(|env| TestEnv {
                env,
                _star: Some(star),
                _dir: None,
            })
        }
    };
    match started {
        Ok(t) => Some(t),
        Err(e) => panic!("{kind:?}: {e}"),
    }
}

macro_rules! conformance_tests {
    ($modname:ident, $kind:expr) => {
        mod $modname {
            use super::*;

            fn with_env(f: lockmgrd::conformance::Scenario) {
                if let Some(mut t) = start($kind) {
                    if let Err(e) = f(&t.env) {
                        panic!("{:?}: {e}", $kind);
                    }
                    if let Err(e) = t.env.stop() {
                        panic!("{:?}: {e}", $kind);
                    }
                }
            }

            #[test]
            fn share_mode_conflict() {
                with_env(lockmgrd::conformance::share_mode_conflict);
            }
            #[test]
            fn byte_range_conflict_and_blocking_grant() {
                with_env(lockmgrd::conformance::byte_range_conflict_and_blocking_grant);
            }
            #[test]
            fn client_death_releases_locks() {
                with_env(lockmgrd::conformance::client_death_releases_locks);
            }
            #[test]
            fn oplock_break_and_ack() {
                with_env(lockmgrd::conformance::oplock_break_and_ack);
            }
            #[test]
            fn wrong_cluster_key_rejected() {
                with_env(lockmgrd::conformance::wrong_cluster_key_rejected);
            }
        }
    };
}

conformance_tests!(shm, Kind::Shm);
conformance_tests!(udp, Kind::Udp);
conformance_tests!(afpacket, Kind::AfPacket);
conformance_tests!(afxdp, Kind::AfXdp);

/// Every library scenario has a `#[test]` above (the macro lists them by hand so test names
/// stay stable); a scenario added to the library without one fails here.
#[test]
fn every_scenario_is_instantiated() {
    let instantiated = [
        "share_mode_conflict",
        "byte_range_conflict_and_blocking_grant",
        "client_death_releases_locks",
        "oplock_break_and_ack",
        "wrong_cluster_key_rejected",
    ];
    let names: Vec<&str> = lockmgrd::conformance::SCENARIOS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(names, instantiated);
}
