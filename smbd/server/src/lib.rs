//! SMB2/SMB3 file server on io_uring.
//!
//! Layout: [`config`] (TOML), [`shared`] (state shared by worker threads, including the
//! durable opens parked after a disconnect), [`worker`] (one io_uring event loop per thread,
//! no thread per connection), [`conn`] (per-connection SMB state machine, fed messages, events
//! and the current time; its `ops` submodule serves the file commands, one file per command
//! family), `open` (an open handle, which can outlive its connection), [`durable`] (durable
//! handle contexts and blobs), [`fs`] (share filesystem access and info-class encoding),
//! [`locking`] (the lock-service seam), [`limits`] (resource limits), [`sys`] (the plain
//! system calls).
//!
//! `unsafe` is denied everywhere except [`sys`] and the io_uring [`worker`]; the lockmgr
//! pump in `server::cluster` waits through lockmgr-transport's plumbing (`sys::poll_fds`,
//! eventfds).

#![deny(unsafe_code)]

pub mod beneath;
pub mod config;
pub mod conn;
pub mod dosattr;
pub mod durable;
pub mod fs;
pub mod identity;
pub mod limits;
pub mod locking;
mod open;
pub mod passwd;
pub mod sd;
pub mod seqwin;
pub mod server;
pub mod shared;
pub mod streams;
#[allow(unsafe_code)]
pub mod sys;
#[allow(unsafe_code)]
pub mod worker;
