//! lockmgrctl: operator and test tool for lockmgrd.
//!
//! `lockmgrctl --transport shm --connect PATH --cluster-key-file KEY status` prints what lockmgrd
//! holds (nodes, sessions, open files, byte-range locks, waiters, pending breaks), like
//! `ctdb status` / `smbstatus`. `hold` opens a file, takes a byte-range lock and keeps the
//! session alive until killed: the multi-process failure tests use it as a node that dies while
//! holding locks.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use lockmgr_client::{ClientOptions, ClusterKey, LockClient, TransportSpec};
use lockmgr_engine::{access, share, FileId, LockRange, OpenRequest, Reply, Request, Status};
use lockmgr_rdma::{DeviceConfig, RdmaConfig};
use lockmgr_transport::eth::{EthConfig, MacAddr};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::{ClientTransport, SpinConfig};
use lockmgrd::config::TransportKind;

#[derive(Parser, Debug)]
#[command(version, about = "Operator view and test tool for lockmgrd")]
struct Cli {
    #[arg(long, value_enum)]
    transport: TransportKind,
    /// shm: lockmgrd's unix socket path; udp: ADDR:PORT; rdma: ADDR:PORT of lockmgrd's TCP
    /// side channel; afpacket/afxdp: lockmgrd's MAC (or use --peer-mac).
    #[arg(long, default_value = "")]
    connect: String,
    /// afpacket/afxdp: local network interface towards lockmgrd.
    #[arg(long)]
    interface: Option<String>,
    /// afpacket/afxdp: lockmgrd's MAC address (aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    peer_mac: Option<String>,
    /// afpacket/afxdp: EtherType of lockmgr frames (decimal or 0x hex).
    #[arg(long, default_value = "0x88b5")]
    ethertype: String,
    /// rdma: local device name, e.g. mlx5_0 or rxe0 (default: the first device).
    #[arg(long)]
    rdma_device: Option<String>,
    /// rdma: HCA port, 1-based.
    #[arg(long, default_value_t = 1)]
    rdma_port: u8,
    /// rdma: GID table index (default: RoCE: the first IPv4-mapped GID; InfiniBand: 0).
    #[arg(long)]
    gid_index: Option<u8>,
    #[arg(long)]
    cluster_key_file: PathBuf,
    /// Node name to announce.
    #[arg(long, default_value = "lockmgrctl")]
    node: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print nodes, sessions, open files, byte-range locks, waiters and pending breaks.
    Status,
    /// Open FILE (hex id), lock [offset, offset+length) exclusively, print LOCKED, then keep the
    /// session alive until killed.
    Hold {
        #[arg(long, value_parser = parse_file_id)]
        file: FileId,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        length: u64,
    },
}

fn parse_file_id(s: &str) -> Result<FileId, String> {
    u128::from_str_radix(s.trim_start_matches("0x"), 16)
        .map(FileId)
        .map_err(|e| format!("file id must be hex: {e}"))
}

fn run_with<T: ClientTransport>(transport: T, cli: &Cli, key: ClusterKey) -> Result<(), String> {
    let options = ClientOptions {
        node_name: cli.node.clone(),
        key,
        handshake_timeout: Duration::from_secs(5),
    };
    let mut client =
        LockClient::connect(transport, &options).map_err(|e| format!("connect: {e}"))?;
    match &cli.command {
        Command::Status => {
            let text = client
                .status(Duration::from_secs(5))
                .map_err(|e| format!("status: {e}"))?;
            print!("{text}");
            let _ = client.goodbye();
            Ok(())
        }
        Command::Hold {
            file,
            offset,
            length,
        } => {
            let open = match client
                .call(
                    Request::Open(OpenRequest {
                        file: *file,
                        access: access::FILE_READ_DATA | access::FILE_WRITE_DATA,
                        share: share::READ | share::WRITE | share::DELETE,
                        ..OpenRequest::default()
                    }),
                    Duration::from_secs(5),
                )
                .map_err(|e| format!("open: {e}"))?
            {
                Reply::Opened { open, .. } => open,
                other => return Err(format!("open refused: {other:?}")),
            };
            let reply = client
                .call(
                    Request::Lock {
                        open,
                        ranges: vec![LockRange {
                            offset: *offset,
                            length: *length,
                            exclusive: true,
                        }],
                        fail_immediately: true,
                    },
                    Duration::from_secs(5),
                )
                .map_err(|e| format!("lock: {e}"))?;
            if reply != Reply::Done(Status::Success) {
                return Err(format!("lock refused: {reply:?}"));
            }
            println!("LOCKED open={}", open.0);
            let _ = std::io::stdout().flush();
            loop {
                let now = Instant::now();
                client.tick(now).map_err(|e| format!("session lost: {e}"))?;
                let _ = client.poll(&mut |_| {});
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn eth_target(cli: &Cli) -> Result<(EthConfig, MacAddr), String> {
    let interface = cli
        .interface
        .clone()
        .ok_or("afpacket/afxdp need --interface")?;
    let mac_text = cli.peer_mac.as_deref().unwrap_or(&cli.connect);
    if mac_text.is_empty() {
        return Err("afpacket/afxdp need --peer-mac (lockmgrd's MAC)".into());
    }
    let mac: MacAddr = mac_text.parse().map_err(|e| format!("{e}"))?;
    let et = &cli.ethertype;
    let ethertype = match et.strip_prefix("0x").or_else(|| et.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => et.parse(),
    }
    .map_err(|e| format!("--ethertype {et}: {e}"))?;
    Ok((
        EthConfig {
            interface,
            ethertype,
        },
        mac,
    ))
}

fn transport_spec(cli: &Cli) -> Result<TransportSpec, String> {
    // A tool, not a hot path: never spin.
    let spin = SpinConfig::never();
    let reliable = ReliableConfig {
        spin,
        ..ReliableConfig::default()
    };
    let socket_addr = || {
        cli.connect
            .parse()
            .map_err(|e| format!("--connect {}: {e}", cli.connect))
    };
    Ok(match cli.transport {
        TransportKind::Shm => TransportSpec::Shm {
            path: cli.connect.clone().into(),
            spin,
            timeout: Duration::from_secs(5),
        },
        TransportKind::Afpacket => {
            let (eth, server) = eth_target(cli)?;
            TransportSpec::Afpacket {
                eth,
                server,
                cfg: reliable,
            }
        }
        TransportKind::Afxdp => {
            let (eth, server) = eth_target(cli)?;
            TransportSpec::Afxdp {
                eth,
                xdp: Default::default(),
                server,
                cfg: reliable,
            }
        }
        TransportKind::Rdma => TransportSpec::Rdma {
            server: socket_addr()?,
            cfg: RdmaConfig {
                device: DeviceConfig {
                    device: cli.rdma_device.clone(),
                    port: cli.rdma_port,
                    gid_index: cli.gid_index,
                },
                spin,
                ..RdmaConfig::default()
            },
        },
        TransportKind::Udp => TransportSpec::Udp {
            server: socket_addr()?,
            cfg: reliable,
        },
    })
}

fn run(cli: Cli) -> Result<(), String> {
    let key = ClusterKey::from_file(&cli.cluster_key_file).map_err(|e| e.to_string())?;
    let transport = lockmgr_client::connect(&transport_spec(&cli)?).map_err(|e| e.to_string())?;
    run_with(transport, &cli, key)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockmgrctl: {e}");
            ExitCode::from(2)
        }
    }
}
