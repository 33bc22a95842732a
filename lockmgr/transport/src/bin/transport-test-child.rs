//! The other process of lockmgr-transport's multi-process tests (a client or server that the
//! test kills with SIGKILL). Not a tool: the integration tests start it through
//! `CARGO_BIN_EXE_transport-test-child`, so the child side is an ordinary program instead of
//! a `#[test]` that re-executes the test binary.
//!
//! ```text
//! transport-test-child shm-client PATH     connect, send "child-hello", echo until killed
//! transport-test-child shm-server PATH     echo server until killed (or a timeout)
//! transport-test-child udp-client ADDR     as shm-client, over UDP
//! transport-test-child udp-server          echo server on 127.0.0.1, prints "ADDR <addr>"
//! transport-test-child eth-client MEDIUM   as shm-client over afpacket|afxdp on the netns
//!                                          veth, towards netns::MAC_A
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::process::ExitCode;
use std::time::Duration;

use lockmgr_transport::eth::EthConfig;
use lockmgr_transport::netns::{IFACE, MAC_A};
use lockmgr_transport::reliable::ReliableConfig;
use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::udp::{UdpClient, UdpServer};
use lockmgr_transport::{ClientTransport, FabricKey, SpinConfig, TransportError};

/// The fabric key every test of this crate uses.
const TEST_FABRIC_SECRET: [u8; 32] = [7; 32];
/// A server child stops by itself after this long, should its test die without killing it.
const LIFETIME: Duration = Duration::from_secs(90);

fn keyed() -> ReliableConfig {
    ReliableConfig {
        fabric_key: Some(FabricKey::new(TEST_FABRIC_SECRET)),
        ..ReliableConfig::default()
    }
}

/// Sends "child-hello", then echoes every frame until the connection fails (exit 3) or the
/// process is killed.
fn echo_client(mut c: Box<dyn ClientTransport>) -> Result<ExitCode, TransportError> {
    c.send(b"child-hello")?;
    loop {
        let mut frames = Vec::new();
        if c.poll(&mut |b| frames.push(b.to_vec())).is_err() {
            return Ok(ExitCode::from(3));
        }
        for f in frames {
            while let Err(TransportError::Full) = c.send(&f) {}
        }
        c.wait(Some(Duration::from_millis(100)))?;
    }
}

fn run(args: &[String]) -> Result<ExitCode, TransportError> {
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .ok_or(TransportError::Config("missing argument"))
    };
    match arg(0)? {
        "shm-client" => {
            let c = ShmClient::connect(arg(1)?, SpinConfig::default(), Duration::from_secs(20))?;
            echo_client(Box::new(c))
        }
        "shm-server" => {
            let server = ShmServer::bind(arg(1)?, ShmConfig::default())?;
            let echo = lockmgr_transport::raw::EchoServer::spawn(server);
            std::thread::sleep(LIFETIME);
            drop(echo);
            Ok(ExitCode::SUCCESS)
        }
        "udp-client" => {
            let addr = arg(1)?
                .parse()
                .map_err(|_| TransportError::Config("udp-client needs ADDR:PORT"))?;
            echo_client(Box::new(UdpClient::connect(addr, keyed())?))
        }
        "udp-server" => {
            let localhost = "127.0.0.1:0".parse().expect("constant address");
            let server = UdpServer::bind(localhost, keyed())?;
            println!("ADDR {}", server.local_addr()?);
            let echo = lockmgr_transport::raw::EchoServer::spawn(server);
            std::thread::sleep(LIFETIME);
            drop(echo);
            Ok(ExitCode::SUCCESS)
        }
        "eth-client" => {
            let eth = EthConfig::new(IFACE);
            let c: Box<dyn ClientTransport> = match arg(1)? {
                "afpacket" => Box::new(lockmgr_transport::afpacket::PacketClient::connect(
                    &eth,
                    MAC_A,
                    keyed(),
                )?),
                #[cfg(feature = "afxdp")]
                "afxdp" => Box::new(lockmgr_transport::afxdp::XdpClient::connect(
                    &eth,
                    &Default::default(),
                    MAC_A,
                    keyed(),
                )?),
                _ => return Err(TransportError::Config("unknown medium")),
            };
            echo_client(c)
        }
        _ => Err(TransportError::Config("unknown role")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("transport-test-child {args:?}: {e}");
            ExitCode::from(2)
        }
    }
}
