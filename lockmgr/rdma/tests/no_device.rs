//! On a machine without RDMA (the development host: `ibv_get_device_list` fails with ENOSYS)
//! every entry point must fail with the typed, explanatory `NoDevice` error, not a panic or an
//! opaque errno. On a machine that does have a device, the probe must succeed instead.

use std::net::SocketAddr;

use lockmgr_rdma::{probe, DeviceConfig, RdmaClient, RdmaConfig, RdmaError, RdmaServer};
use lockmgr_transport::TransportError;

fn host_has_rdma() -> bool {
    std::fs::read_dir("/sys/class/infiniband")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

#[test]
fn entry_points_report_no_device_clearly() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    if host_has_rdma() {
        let info = probe(&DeviceConfig::default()).expect("device present, probe must work");
        assert!(!info.name.is_empty());
        return;
    }
    match probe(&DeviceConfig::default()) {
        Err(RdmaError::NoDevice(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected NoDevice, got {other:?}"),
    }
    // A complete configuration: the device is what is missing.
    let cfg = RdmaConfig {
        fabric_key: Some(lockmgr_transport::FabricKey::new([7; 32])),
        ..RdmaConfig::default()
    };
    let err = RdmaServer::bind(addr, cfg.clone())
        .err()
        .expect("bind must fail without RDMA");
    let text = err.to_string();
    assert!(text.starts_with("no RDMA device: "), "{text}");
    assert!(matches!(err, RdmaError::NoDevice(_)));
    let err = RdmaClient::connect(addr, &cfg)
        .err()
        .expect("connect must fail without RDMA");
    assert!(matches!(err, RdmaError::NoDevice(_)), "{err}");
    let t: TransportError = err.into();
    assert!(matches!(t, TransportError::Config(m) if m.starts_with("no RDMA device")));
}

#[test]
fn unknown_device_name_is_reported() {
    let cfg = DeviceConfig {
        device: Some("no-such-hca".into()),
        ..DeviceConfig::default()
    };
    match probe(&cfg) {
        // No RDMA at all wins over the name check.
        Err(RdmaError::NoDevice(_)) => assert!(!host_has_rdma()),
        Err(RdmaError::DeviceNotFound { name, .. }) => assert_eq!(name, "no-such-hca"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn raw_pingpong_reports_no_device() {
    let r = lockmgr_rdma::raw::verbs_pingpong(&RdmaConfig::default(), 10, 1, 64);
    if host_has_rdma() {
        assert_eq!(r.expect("device present, ping-pong must work").len(), 10);
        return;
    }
    match r {
        Err(RdmaError::NoDevice(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected NoDevice, got {other:?}"),
    }
}
