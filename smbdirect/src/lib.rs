//! SMB Direct (MS-SMBD): SMB2 over RDMA send/receive.
//!
//! This crate is the protocol without I/O: [`codec`] parses and builds the three MS-SMBD
//! messages and the SMB2 RDMA buffer descriptors, [`conn`] is the per-connection state
//! machine (negotiation, credits, fragmentation, keep-alive) driven by the caller's clock and
//! completions, [`sim`] steps a client and a server core against each other in simulated
//! time for tests, and [`fuzzing`] holds the properties the fuzz targets check. [`cm`] wraps
//! rdma_cm and the verbs objects of one connection (the only module with `unsafe`), and
//! [`rdma`] drives a [`conn::Connection`] with that endpoint's real completions: the
//! smbdirectd binary (`src/bin/smbdirectd.rs`) and the soft-RoCE tests' initiator use it.
// `unsafe` stays denied (workspace lint) everywhere but `cm`, the RAII layer over librdmacm and
// libibverbs, and `area`, the memfd shared with smbd; every unsafe block there carries a
// `// SAFETY:` comment.
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

#[allow(unsafe_code)]
pub mod area;
#[allow(unsafe_code)]
pub mod cm;
pub mod codec;
pub mod conn;
pub mod fuzzing;
pub mod rdma;
pub mod rw;
pub mod sim;

pub use codec::{BufferDescriptorV1, Channel, DecodeError, RdmaChannel};
pub use conn::{
    Config, ConfigError, Connection, ConnectionError, Event, Negotiated, Output, Role, SendError,
    Stats, Time, Transmit,
};
