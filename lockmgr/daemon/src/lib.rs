//! lockmgrd: the cluster lock manager daemon.
//!
//! [`server::Server`] runs the [`lockmgr_engine::Engine`] behind any
//! [`lockmgr_transport::ServerTransport`]; [`config`] reads the TOML configuration.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod conformance;
mod coordination;
#[doc(hidden)]
pub mod fuzzing;
mod ha;
pub mod metrics;
pub mod replication;
pub mod server;
mod stalls;
mod state;
pub mod status;

pub use server::{Server, ServerOptions};
pub use status::ServerCounters;
