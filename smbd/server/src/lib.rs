//! SMB2/SMB3 file server on io_uring.
//!
//! Layout: [`config`] (TOML), [`shared`] (state shared by worker threads, including the
//! durable opens parked after a disconnect), `worker` (one io_uring event loop per thread,
//! no thread per connection), [`conn`] (per-connection SMB state machine, fed messages, events
//! and the current time; its `ops` submodule serves the file commands, one file per command
//! family), `open` (an open handle, which can outlive its connection), `durable` (durable
//! handle blobs and their checks), `fs` (share filesystem access; the info-class encoders are
//! in `smb_proto::fscc`), [`locking`] (the lock-service seam), `limits` (resource limits),
//! [`sys`] (the plain system calls). All SMB wire encoding and decoding is in `smb-proto`.
//!
//! Only what the daemon binary, the integration tests, the fuzz targets and hw-tests use is
//! public ([`config`], [`conn::Conn`], [`shared`], [`locking`], [`server`], [`beneath`],
//! [`passwd`], [`sys`]); the rest is crate-private so that dead code shows up as a warning.
//!
//! `unsafe` is denied everywhere except [`sys`] and the io_uring `worker`; the lockmgr pump in
//! `server::cluster` waits through lockmgr-transport's plumbing (`sys::poll_fds`, eventfds).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(unsafe_code)]

pub mod beneath;
pub mod break_delivery;
mod byte_reader;
pub mod clock;
pub mod config;
pub mod conn;
mod dfs;
pub mod dirwatch;
pub mod dosattr;
mod durable;
mod fs;
mod hangup;
mod identity;
mod io_grants;
mod limits;
pub mod locking;
pub mod metrics;
mod open;
pub mod passwd;
pub mod rdma_area;
mod sd;
mod seqwin;
pub mod server;
pub mod shared;
pub mod smbstatus;
mod streams;
#[allow(unsafe_code)]
pub mod sys;
pub mod witness;
#[allow(unsafe_code)]
mod worker;
mod write_time;
