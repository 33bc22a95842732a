//! SMB authentication and crypto: SPNEGO/NTLMv2, signing, encryption, key derivation.
//!
//! This crate performs no I/O (apart from [`users::UserDb::load`], which reads the user file) and holds
//! no connection state beyond what a single authentication exchange needs. The SMB server feeds it
//! SESSION_SETUP security buffers ([`ntlm::NtlmServer::step`]) and whole SMB2 messages
//! ([`signing`], [`encryption`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![forbid(unsafe_code)]

pub mod encryption;
pub mod kdf;
pub mod keys;
pub mod ntlm;
pub mod ntlm_seal;
pub mod preauth;
pub mod signing;
pub mod spnego;
pub mod users;

#[doc(hidden)]
pub mod fuzzing;

mod der;
mod rc4;

pub use encryption::CryptoError;
pub use keys::{Cipher, Dialect, SessionKeys, SigningAlgorithm};
pub use ntlm::{AuthError, AuthStep, NtlmServer};
pub use signing::SignError;
pub use users::{UserDb, UserDbError};
