//! lockbench: latency harness for the lock manager (and, later, smbd).
//!
//! Every figure printed is compared with a baseline measured in the same run (a raw ping-pong over
//! the same transport), because these machines are noisy: an absolute number means little alone.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod lockload;
pub mod report;
pub mod smb;
