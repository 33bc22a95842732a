//! Hardware tests: soft-RoCE under qemu
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod ca_failover;
pub mod cifs_mount;
pub mod guest;
pub mod lock_calls;
pub mod replication_rdma;
pub mod smbdirect;
