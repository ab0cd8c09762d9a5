//! The one error type of this crate. Every variant names the host it is
//! about, so a run over many hosts reports which one failed.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use promguard_core::HostName;

/// Why a remote operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The TCP connection or the SSH handshake did not succeed before the
    /// retry deadline.
    #[error("cannot connect to {host} at {addr}: {source}; check that the host is running and its SSH port is reachable")]
    Connect {
        /// The host.
        host: HostName,
        /// The address dialled.
        addr: SocketAddr,
        /// The last error seen.
        source: io::Error,
    },
    /// The server presented a host key other than the pinned one. This is
    /// never retried.
    #[error("host key of {host} does not match: expected {expected}, the server presented {presented}; if the host was rebuilt on purpose, forget its pinned key, otherwise someone may be intercepting the connection")]
    HostKeyMismatch {
        /// The host.
        host: HostName,
        /// Fingerprint (`SHA256:...`) of the pinned key.
        expected: String,
        /// Fingerprint (`SHA256:...`) of the key the server presented.
        presented: String,
    },
    /// The server's host key could not be read or has an unknown type.
    #[error("cannot read the host key of {host}: {reason}")]
    HostKeyUnusable {
        /// The host.
        host: HostName,
        /// What was wrong with it.
        reason: String,
    },
    /// Public key authentication was refused.
    #[error("cannot log in to {host} as {user} with key {}: {source}; check that its public key is in the user's authorized_keys", identity.display())]
    Auth {
        /// The host.
        host: HostName,
        /// The remote user.
        user: String,
        /// The private key file used.
        identity: PathBuf,
        /// The SSH library's error.
        source: io::Error,
    },
    /// The SSH session failed while running a command or moving data.
    #[error("SSH error on {host} during {what}: {source}")]
    Exec {
        /// The host.
        host: HostName,
        /// A short description of the operation (a command summary, an
        /// upload, a forward).
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A remote command ran and exited with a failure.
    #[error("{what} failed on {host} with exit code {exit_code}: {stderr_tail}")]
    CommandFailed {
        /// The host.
        host: HostName,
        /// Which step failed.
        what: String,
        /// The command's exit code (-1 when it was killed by a signal).
        exit_code: i32,
        /// The end of its standard error.
        stderr_tail: String,
    },
    /// An operation took longer than allowed.
    #[error("{what} on {host} did not finish within {after:?}")]
    Timeout {
        /// The host.
        host: HostName,
        /// The operation.
        what: String,
        /// The time allowed.
        after: Duration,
    },
    /// A caller passed a value that must not reach a remote shell (a path
    /// with `..`, a mode out of range, ...).
    #[error("refusing {what} for {host}: {reason}")]
    InvalidInput {
        /// The host.
        host: HostName,
        /// What was refused (usually the offending value).
        what: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A program the recipe needs is not installed and the host is not one
    /// where PromGuard installs packages.
    #[error("{host} has no {program}; install the Debian package {package} on it")]
    MissingProgram {
        /// The host.
        host: HostName,
        /// The program's path.
        program: String,
        /// The package that provides it.
        package: String,
    },
    /// The host answered something this crate cannot understand.
    #[error("unexpected answer from {host} to {what}: {reason}")]
    Protocol {
        /// The host.
        host: HostName,
        /// The request.
        what: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

impl RemoteError {
    /// The host this error is about.
    pub fn host(&self) -> &HostName {
        match self {
            RemoteError::Connect { host, .. }
            | RemoteError::HostKeyMismatch { host, .. }
            | RemoteError::HostKeyUnusable { host, .. }
            | RemoteError::Auth { host, .. }
            | RemoteError::Exec { host, .. }
            | RemoteError::CommandFailed { host, .. }
            | RemoteError::Timeout { host, .. }
            | RemoteError::InvalidInput { host, .. }
            | RemoteError::MissingProgram { host, .. }
            | RemoteError::Protocol { host, .. } => host,
        }
    }
}

/// The last `max` bytes of `bytes` as lossy UTF-8, trimmed, for error
/// messages.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}
