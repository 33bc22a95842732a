//! Baseline and echo helpers: functional checks only (no timing assertions).

use std::time::Duration;

use lockmgr_transport::raw::{
    shm_pingpong, transport_pingpong, udp_pingpong, EchoServer, SHM_LINE_PAYLOAD,
};
use lockmgr_transport::shm::{ShmClient, ShmConfig, ShmServer};
use lockmgr_transport::udp::{UdpClient, UdpConfig, UdpServer};
use lockmgr_transport::{SpinConfig, TransportError, MAX_FRAME};

/// The test cluster's fabric secret (every datagram server needs one).
fn keyed() -> UdpConfig {
    UdpConfig {
        fabric_key: Some(lockmgr_transport::FabricKey::new([7; 32])),
        ..UdpConfig::default()
    }
}

#[test]
fn raw_shm_pingpong_returns_samples() {
    for len in [0, 8, SHM_LINE_PAYLOAD, 1000, MAX_FRAME] {
        let s = shm_pingpong(200, 20, len).unwrap();
        assert_eq!(s.len(), 200);
        assert!(s.iter().all(|&ns| ns > 0));
    }
    assert!(matches!(
        shm_pingpong(1, 0, MAX_FRAME + 1),
        Err(TransportError::FrameTooLarge { .. })
    ));
}

#[test]
fn raw_udp_pingpong_returns_samples() {
    for len in [1, 64, MAX_FRAME] {
        let s = udp_pingpong(100, 10, len).unwrap();
        assert_eq!(s.len(), 100);
    }
}

#[test]
fn echo_server_over_shm() {
    let path = std::env::temp_dir().join(format!("lmt-echo-{}.sock", std::process::id()));
    let server = ShmServer::bind(&path, ShmConfig::default()).unwrap();
    let echo = EchoServer::spawn(server);
    let mut client =
        ShmClient::connect(&path, SpinConfig::default(), Duration::from_secs(20)).unwrap();
    for len in [0, 64, MAX_FRAME] {
        let s = transport_pingpong(&mut client, 100, 10, len).unwrap();
        assert_eq!(s.len(), 100);
    }
    assert_eq!(echo.stop().unwrap(), 330);
}

#[test]
fn echo_server_over_udp() {
    let server = UdpServer::bind("127.0.0.1:0".parse().unwrap(), keyed()).unwrap();
    let addr = server.local_addr().unwrap();
    let echo = EchoServer::spawn(server);
    let mut client = UdpClient::connect(addr, keyed()).unwrap();
    let s = transport_pingpong(&mut client, 100, 10, 64).unwrap();
    assert_eq!(s.len(), 100);
    assert_eq!(echo.stop().unwrap(), 110);
}
