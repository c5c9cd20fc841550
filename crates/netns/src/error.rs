//! Error type of the `netns` crate: every failure names the command or object it concerns.

use std::io;
use std::time::Duration;

/// Why a namespace, link or process operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command ran but exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the reader.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
        /// What it printed on stdout (trimmed).
        stdout: String,
    },
    /// A command could not be started at all (missing binary, ...).
    #[error(
        "could not start `{cmd}`: {source} (is the package installed? see scripts/test-all.sh)"
    )]
    Spawn {
        /// The command line.
        cmd: String,
        /// The error from `execve`/`fork`.
        source: io::Error,
    },
    /// An address outside the ranges the project may use was refused.
    #[error(
        "address `{0}` refused: only 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, \
         198.18.0.0/15, 169.254.21.0/24 and 169.254.22.0/24 may be used (project safety rule)"
    )]
    AddressNotAllowed(String),
    /// A string that should be an IPv4 address or prefix is not one.
    #[error("invalid IPv4 address or prefix `{0}`")]
    InvalidAddress(String),
    /// A namespace prefix, interface or sysctl name is malformed.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An I/O error on a file or socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The errno.
        source: nix::Error,
    },
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// How long was waited.
        after: Duration,
        /// What was waited for.
        what: String,
    },
    /// The kernel lacks a feature (for example `sch_netem`).
    #[error("not supported by this kernel: {0}")]
    Unsupported(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
