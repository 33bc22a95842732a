//! Connection-oriented DCE/RPC (C706 chapter 12, MS-RPCE 2.2.2) with NDR 2.0 marshalling,
//! sans I/O, and the srvsvc interface (MS-SRVS share enumeration).
//!
//! The transport hands an [`RpcPipe`] the client's bytes ([`RpcPipe::write`]) and sends what
//! [`RpcPipe::read`] returns: smbd does so for named pipes on IPC$ (WRITE / READ /
//! FSCTL_PIPE_TRANSCEIVE), and for the witness service (MS-SWN, [`witness`]) and the endpoint
//! mapper ([`epm`]) on TCP connections (ncacn_ip_tcp).
//! No security provider is implemented: on a named pipe the SMB session authenticates and
//! signs, and binds carrying an auth verifier get a bind_nak (on TCP too: see smbd's
//! witness module for what that means for the witness).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]

pub mod epm;
pub mod ndr;
pub mod pdu;
pub mod pipe;
pub mod srvsvc;
pub mod witness;

#[doc(hidden)]
pub mod fuzzing;

pub use ndr::{DecodeError, NdrReader, NdrWriter};
pub use pdu::SyntaxId;
pub use pipe::{CallId, CallResult, PipeConfig, PipeError, PipeRead, RpcInterface, RpcPipe};
pub use srvsvc::{ServerInfo, ShareEntry, Srvsvc};
pub use witness::{Witness, WitnessBackend};
