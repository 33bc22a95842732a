//! One error type for the SMB benchmark harness.

use std::path::PathBuf;

/// Everything that can go wrong while deploying a target or running smbtorture against it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmbBenchError {
    /// A required program or library is not installed.
    #[error(
        "{tool} not found: install the Debian package `{package}` (apt-get install {package})"
    )]
    MissingTool { tool: String, package: &'static str },
    /// One of our own binaries (smbd, lockmgrd) was not found.
    #[error("{binary} binary not found (looked at {looked}): build it with `cargo build --release -p {package}` or pass --{binary}-bin PATH")]
    MissingBinary {
        binary: &'static str,
        package: &'static str,
        looked: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {secs} s{detail}")]
    NotReady {
        what: String,
        secs: u64,
        detail: String,
    },
    #[error("{what} exited during start-up ({status}){detail}")]
    EarlyExit {
        what: String,
        status: String,
        detail: String,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("smbtorture {suite}: {detail}")]
    Torture { suite: String, detail: String },
    #[error("cannot parse smbtorture output: {0}")]
    Parse(String),
    /// The target cannot run here (e.g. smbd does not accept the `[lockmgr]` section yet).
    #[error("{0}")]
    Unavailable(String),
    #[error("interrupted")]
    Interrupted,
    #[error("no free loopback address for {0}")]
    NoAddress(String),
    #[error("log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SmbBenchError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SmbBenchError::Io {
            what: what.into(),
            source,
        }
    }

    /// True when the target could not be set up on this machine (as opposed to a benchmark
    /// that started and then failed).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            SmbBenchError::MissingTool { .. }
                | SmbBenchError::MissingBinary { .. }
                | SmbBenchError::Unavailable(_)
        )
    }
}

pub type Result<T> = std::result::Result<T, SmbBenchError>;
