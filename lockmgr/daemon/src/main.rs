//! lockmgrd: serves the lock engine over one transport until SIGTERM/SIGINT.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lockmgr_client::TransportSpec;
use lockmgr_engine::Config as EngineConfig;
use lockmgr_proto::ClusterKey;
use lockmgr_rdma::{format_gid, RdmaServer};
use lockmgr_transport::afpacket::PacketServer;
use lockmgr_transport::afxdp::XdpOptions;
use lockmgr_transport::eth::{EthConfig, MacAddr};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::shm::{ShmConfig, ShmServer};
use lockmgr_transport::udp::UdpServer;
use lockmgr_transport::{FabricKey, ServerTransport};
use lockmgrd::config::{self, Config, SpinModeKind, TransportKind};
use lockmgrd::replication::HaOptions;
use lockmgrd::{Server, ServerOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The cluster lock manager: share modes, byte-range locks, oplocks and leases for every smbd node.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// TOML configuration file (see the crate docs of lockmgrd::config for every key).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Transport (overrides the config file).
    #[arg(long, value_enum)]
    transport: Option<TransportKind>,
    /// shm: unix socket path; udp: ADDR:PORT; rdma: ADDR:PORT of the TCP side channel;
    /// afpacket/afxdp: interface (overrides the config).
    #[arg(long)]
    listen: Option<String>,
    /// afpacket/afxdp: network interface (overrides `listen` and the config file).
    #[arg(long)]
    interface: Option<String>,
    /// afpacket/afxdp: EtherType of lockmgr frames, e.g. 0x88b5 (overrides the config file).
    #[arg(long, value_parser = parse_ethertype)]
    ethertype: Option<u16>,
    /// shm: group (name or gid) allowed to connect to the socket (mode 0660; default: 0600,
    /// lockmgrd's user only).
    #[arg(long)]
    socket_group: Option<String>,
    /// rdma: device name as `ibv_devices` prints it, e.g. mlx5_0 or rxe0 (default: the first).
    #[arg(long)]
    rdma_device: Option<String>,
    /// rdma: HCA port, 1-based.
    #[arg(long)]
    rdma_port: Option<u8>,
    /// rdma: GID table index (default: RoCE: the first IPv4-mapped GID; InfiniBand: 0).
    #[arg(long)]
    gid_index: Option<u8>,
    /// File holding the cluster key (at least 16 bytes; overrides the config file).
    #[arg(long)]
    cluster_key_file: Option<PathBuf>,
    /// Busy-poll budget in microseconds before sleeping (0 = always sleep).
    #[arg(long)]
    spin_us: Option<u64>,
    /// adaptive: spin only while there is traffic (an idle lockmgrd uses no CPU); always:
    /// never sleep, for a core dedicated to lockmgrd (overrides the config file).
    #[arg(long, value_enum)]
    spin_mode: Option<SpinModeKind>,
    /// adaptive: stop spinning after this many quiet milliseconds (overrides the config file).
    #[arg(long)]
    spin_idle_ms: Option<u64>,
    /// A node silent this long is declared dead and its state released.
    #[arg(long)]
    liveness_ms: Option<u64>,
    /// Oplock/lease break acknowledgement timeout.
    #[arg(long)]
    break_timeout_ms: Option<u64>,
    /// Replicated lock manager: this replica's name (with --etcd and --cluster-name; the
    /// config file's [replication] section otherwise).
    #[arg(long)]
    replica_name: Option<String>,
    /// Replicated lock manager: etcd endpoint, e.g. http://127.0.0.1:2379 (repeatable).
    #[arg(long)]
    etcd: Vec<String>,
    /// Replicated lock manager: the cluster's name in etcd.
    #[arg(long)]
    cluster_name: Option<String>,
    /// Replicated lock manager: where nodes and the other replica reach this one (default:
    /// the listen address; afpacket/afxdp: the interface's MAC, aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    advertise: Option<String>,
    /// Replicated lock manager, afpacket/afxdp: the interface this replica reaches its
    /// primary through as standby (afpacket default: the serving interface; afxdp: required,
    /// another one).
    #[arg(long)]
    link_interface: Option<String>,
    /// Replicated lock manager: a partner silent this long is declared dead.
    #[arg(long)]
    failover_ms: Option<u64>,
    /// Serve GET /metrics (Prometheus text format) here, e.g. 127.0.0.1:9750 (overrides
    /// metrics_listen; an address that is not loopback also needs metrics_allow_remote in
    /// the config file).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Do not lock lockmgrd's memory (mlockall) as it does by default (overrides
    /// lock_memory in the config file).
    #[arg(long)]
    no_lock_memory: bool,
    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. info or lockmgrd=debug.
    #[arg(long, default_value = "info")]
    log: String,
}

fn parse_ethertype(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("EtherType {s:?}: {e}"))
}

/// A raw-Ethernet replica's address as recorded in etcd: its MAC.
fn replica_mac(address: &str) -> Result<MacAddr, String> {
    address
        .parse()
        .map_err(|e| format!("replica address {address:?} (afpacket/afxdp: a MAC): {e}"))
}

fn build_config(cli: &Cli) -> Result<Config, config::ConfigError> {
    let mut cfg = match &cli.config {
        Some(path) => Config::load(path)?,
        None => {
            let kind = cli.transport.ok_or(config::ConfigError::Invalid {
                field: "--transport",
                message: "needed when no --config is given".into(),
            })?;
            let listen = match (&cli.listen, &cli.interface) {
                (Some(l), _) => l.clone(),
                (None, Some(_)) if kind.is_ethernet() => String::new(),
                _ => {
                    return Err(config::ConfigError::Invalid {
                        field: "--listen",
                        message: "needed when no --config is given".into(),
                    })
                }
            };
            Config {
                cluster_key_file: None,
                cluster_key_hex: None,
                transport: config::TransportConfig {
                    kind,
                    listen,
                    ..config::TransportConfig::default()
                },
                engine: Default::default(),
                sessions: Default::default(),
                replication: None,
                metrics_listen: None,
                metrics_allow_remote: false,
                lock_memory: true,
            }
        }
    };
    if cli.no_lock_memory {
        cfg.lock_memory = false;
    }
    if let Some(m) = cli.metrics_listen {
        cfg.metrics_listen = Some(m);
    }
    if let Some(kind) = cli.transport {
        cfg.transport.kind = kind;
    }
    if let Some(listen) = &cli.listen {
        cfg.transport.listen = listen.clone();
    }
    if let Some(i) = &cli.interface {
        cfg.transport.interface = Some(i.clone());
    }
    if let Some(t) = cli.ethertype {
        cfg.transport.ethertype = t;
    }
    if let Some(g) = &cli.socket_group {
        cfg.transport.socket_group = Some(g.clone());
    }
    if let Some(d) = &cli.rdma_device {
        cfg.transport.rdma_device = Some(d.clone());
    }
    if let Some(p) = cli.rdma_port {
        cfg.transport.rdma_port = p;
    }
    if let Some(i) = cli.gid_index {
        cfg.transport.gid_index = Some(i);
    }
    if let Some(path) = &cli.cluster_key_file {
        cfg.cluster_key_file = Some(path.clone());
        cfg.cluster_key_hex = None;
    }
    if let Some(v) = cli.spin_us {
        cfg.transport.spin_us = v;
    }
    if let Some(v) = cli.spin_mode {
        cfg.transport.spin_mode = v;
    }
    if let Some(v) = cli.spin_idle_ms {
        cfg.transport.spin_idle_ms = v;
    }
    if let Some(v) = cli.liveness_ms {
        cfg.sessions.liveness_ms = v;
    }
    if let Some(v) = cli.break_timeout_ms {
        cfg.engine.break_timeout_ms = v;
    }
    if let Some(name) = &cli.replica_name {
        cfg.replication = Some(config::ReplicationConfig {
            name: name.clone(),
            etcd: cli.etcd.clone(),
            cluster: cli.cluster_name.clone().unwrap_or_default(),
            advertise: None,
            link_interface: None,
            failover_ms: 100,
        });
    }
    if let Some(r) = &mut cfg.replication {
        if !cli.etcd.is_empty() {
            r.etcd = cli.etcd.clone();
        }
        if let Some(c) = &cli.cluster_name {
            r.cluster = c.clone();
        }
        if let Some(a) = &cli.advertise {
            r.advertise = Some(a.clone());
        }
        if let Some(l) = &cli.link_interface {
            r.link_interface = Some(l.clone());
        }
        if let Some(v) = cli.failover_ms {
            r.failover_ms = v;
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

fn serve<T: ServerTransport>(
    transport: T,
    options: ServerOptions,
    ha: Option<HaOptions>,
    metrics: Option<(std::net::SocketAddr, bool)>,
) -> Result<(), String> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&shutdown))
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    let mut server = match ha {
        None => Server::new(transport, options),
        Some(ha) => lockmgrd::replication::start(transport, options, ha)?,
    };
    if let Some((addr, allow_remote)) = metrics {
        let published = server.enable_metrics();
        clustersmb_metrics::serve(
            addr,
            allow_remote,
            clustersmb_metrics::ServeLimits::default(),
            Arc::new(move || {
                let (snap, stale) = published.scrape(Duration::from_secs(1));
                lockmgrd::metrics::render(snap.as_ref(), stale)
            }),
        )
        .map_err(|e| e.to_string())?;
    }
    server
        .run(&shutdown)
        .map_err(|e| format!("transport failed: {e}"))?;
    tracing::info!(counters = ?server.counters(), "lockmgrd stopped");
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    let cfg = build_config(&cli).map_err(|e| e.to_string())?;
    if cfg.lock_memory {
        match lockmgr_transport::sys::lock_memory() {
            Ok(code) => tracing::info!(code_bytes = code, "memory locked (mlockall)"),
            Err(e) => tracing::warn!(
                %e,
                "cannot lock memory (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK; lock_memory = false \
                 to stop trying): a page-in can now stall replies and failure detection"
            ),
        }
    }
    let key_bytes = cfg.cluster_key().map_err(|e| e.to_string())?;
    let key = ClusterKey::new(&key_bytes).map_err(|e| format!("cluster key: {e}"))?;
    let options = ServerOptions {
        key,
        liveness: Duration::from_millis(cfg.sessions.liveness_ms),
        engine: EngineConfig {
            break_timeout: lockmgr_engine::Duration::from_millis(cfg.engine.break_timeout_ms),
            limits: cfg.sessions.limits(),
        },
    };
    let spin = cfg.transport.spin();
    let metrics = cfg.metrics_listen.map(|a| (a, cfg.metrics_allow_remote));
    let ha = cfg.replication.as_ref().map(|r| {
        let kind = cfg.transport.kind;
        let link_reliable = ReliableConfig {
            spin,
            fabric_key: Some(FabricKey::new(options.key.fabric_secret())),
            ..ReliableConfig::default()
        };
        // Raw Ethernet: the standby reaches its primary's MAC from its link interface (the
        // serving one by default; validate() made afxdp name another).
        let link_eth = EthConfig {
            interface: r
                .link_interface
                .clone()
                .unwrap_or_else(|| cfg.transport.interface().to_owned()),
            ethertype: cfg.transport.ethertype,
        };
        // RDMA: the standby opens a queue pair on this replica's device, set up over the
        // primary's TCP side channel (its address), after proving the cluster key there.
        let link_rdma = lockmgr_rdma::RdmaConfig {
            fabric_key: link_reliable.fabric_key,
            ..cfg.transport.rdma()
        };
        HaOptions {
            name: r.name.clone(),
            // Raw Ethernet without `advertise`: filled in with the interface's MAC once the
            // transport is open (`advertise_mac`).
            address: r
                .advertise
                .clone()
                .unwrap_or_else(|| cfg.transport.listen.clone()),
            etcd: r.etcd.clone(),
            cluster: r.cluster.clone(),
            failover: Duration::from_millis(r.failover_ms),
            etcd_deadline: Duration::from_secs(2),
            link: Box::new(move |address: &str| match kind {
                TransportKind::Udp => Ok(TransportSpec::Udp {
                    server: address
                        .parse()
                        .map_err(|e| format!("replica address {address:?}: {e}"))?,
                    cfg: link_reliable,
                }),
                TransportKind::Shm => Ok(TransportSpec::Shm {
                    path: address.into(),
                    spin,
                    timeout: Duration::from_secs(2),
                }),
                TransportKind::Afpacket => Ok(TransportSpec::Afpacket {
                    eth: link_eth.clone(),
                    server: replica_mac(address)?,
                    cfg: link_reliable,
                }),
                TransportKind::Afxdp => Ok(TransportSpec::Afxdp {
                    eth: link_eth.clone(),
                    xdp: XdpOptions::default(),
                    server: replica_mac(address)?,
                    cfg: link_reliable,
                }),
                TransportKind::Rdma => Ok(TransportSpec::Rdma {
                    server: address
                        .parse()
                        .map_err(|e| format!("replica address {address:?}: {e}"))?,
                    cfg: link_rdma.clone(),
                }),
            }),
        }
    });
    let advertised = cfg
        .replication
        .as_ref()
        .is_some_and(|r| r.advertise.is_some());
    // A raw-Ethernet replica is reached at its interface's MAC unless told otherwise.
    let advertise_mac = |ha: Option<HaOptions>, mac: MacAddr| {
        ha.map(|mut h| {
            if !advertised {
                h.address = mac.to_string();
            }
            h
        })
    };
    // Datagram transports: every peer proves the cluster key in the handshake and every frame
    // carries a MAC under per-session keys (lockmgr_transport::fabric).
    let reliable = ReliableConfig {
        spin,
        fabric_key: Some(FabricKey::new(options.key.fabric_secret())),
        ..ReliableConfig::default()
    };
    match cfg.transport.kind {
        TransportKind::Shm => {
            let socket_group = cfg
                .transport
                .socket_group
                .as_deref()
                .map(lockmgr_transport::shm::resolve_group)
                .transpose()
                .map_err(|e| format!("socket_group: {e}"))?;
            let server = ShmServer::bind(
                &cfg.transport.listen,
                ShmConfig {
                    spin,
                    socket_group,
                    ..ShmConfig::default()
                },
            )
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.transport.listen))?;
            tracing::info!(listen = %cfg.transport.listen, "lockmgrd listening (shm)");
            serve(server, options, ha, metrics)
        }
        TransportKind::Udp => {
            // validate() checked that this parses.
            let addr = cfg
                .transport
                .listen
                .parse()
                .map_err(|e| format!("listen address: {e}"))?;
            let server = UdpServer::bind(addr, reliable)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = server.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(listen = %local, "lockmgrd listening (udp)");
            serve(server, options, ha, metrics)
        }
        TransportKind::Afpacket => {
            let eth = cfg.transport.eth();
            let server = PacketServer::open(&eth, reliable)
                .map_err(|e| format!("cannot listen on {}: {e}", eth.interface))?;
            tracing::info!(interface = %eth.interface, mac = %server.link().mac(),
                ethertype = %format_args!("{:#06x}", eth.ethertype), "lockmgrd listening (afpacket)");
            let ha = advertise_mac(ha, server.link().mac());
            serve(server, options, ha, metrics)
        }
        TransportKind::Rdma => {
            // validate() checked that this parses.
            let addr = cfg
                .transport
                .listen
                .parse()
                .map_err(|e| format!("listen address: {e}"))?;
            // The full RdmaError text matters here: NoDevice explains what is missing and how to
            // get soft-RoCE, which the TransportError conversion would drop.
            let rdma = lockmgr_rdma::RdmaConfig {
                // Clients prove the cluster key on the TCP side channel before any queue pair
                // is set up for them.
                fabric_key: reliable.fabric_key,
                ..cfg.transport.rdma()
            };
            let server = RdmaServer::bind(addr, rdma)
                .map_err(|e| format!("cannot listen on {addr} (rdma): {e}"))?;
            let local = server.local_addr().map_err(|e| e.to_string())?;
            let info = server.device_info();
            tracing::info!(listen = %local, device = %info.name, port = info.port,
                gid_index = info.gid_index, gid = %format_gid(&info.gid), "lockmgrd listening (rdma)");
            serve(server, options, ha, metrics)
        }
        TransportKind::Afxdp => {
            let eth = cfg.transport.eth();
            let server =
                lockmgr_transport::afxdp::XdpServer::open(&eth, &Default::default(), reliable)
                    .map_err(|e| format!("cannot listen on {}: {e}", eth.interface))?;
            tracing::info!(interface = %eth.interface, mac = %server.link().mac(),
                ethertype = %format_args!("{:#06x}", eth.ethertype), "lockmgrd listening (afxdp)");
            let ha = advertise_mac(ha, server.link().mac());
            serve(server, options, ha, metrics)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockmgrd: {e}");
            ExitCode::from(2)
        }
    }
}
