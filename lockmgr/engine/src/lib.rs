//! The lock engine: all SMB state the cluster shares, with no I/O and no clock.
//!
//! Driven like quinn's protocol state machines: the caller feeds requests with
//! [`Engine::handle`] (passing the current [`Time`]), fires timers with
//! [`Engine::handle_timeout`] when [`Engine::poll_timeout`] says so, and drains replies and
//! notifications with [`Engine::poll_output`].
#![forbid(unsafe_code)]

pub mod types;

pub use types::*;

/// Engine tunables.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a holder has to acknowledge an oplock or lease break before the engine completes
    /// the break as if acknowledged to None (Samba and ksmbd use 35 s).
    pub break_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            break_timeout: Duration::from_secs(35),
        }
    }
}
