//! The one error type of this crate. Every variant names the host it is
//! about, so a run over many hosts reports which one failed.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use promguard_core::{HostName, InterfaceName, Port};

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
    #[error("cannot log in to {host} as {user} with {identity}: {source}; check that its public key is in the user's authorized_keys")]
    Auth {
        /// The host.
        host: HostName,
        /// The remote user.
        user: String,
        /// The private key file used.
        identity: crate::session::Identity,
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
    /// A guest host already uses the WireGuard interface or port the plan
    /// gives it.
    #[error("{host} already has {found}, which PromGuard does not take over; nothing was changed. Give PromGuard another interface and port on this host with the config keys wireguard.interface and wireguard.port of its entry, for example wireguard = {{ interface = \"{}\", port = {} }}", next_interface(interface), port.get().saturating_add(1))]
    WireguardClash {
        /// The host.
        host: HostName,
        /// The interface the plan gives it.
        interface: InterfaceName,
        /// The UDP port the plan gives it.
        port: Port,
        /// What is there already.
        found: String,
    },
    /// A monitor host of the user's runs its own Prometheus, and the
    /// config asks PromGuard to install and manage one.
    #[error("{host} already has a Prometheus that PromGuard did not install, and PromGuard does not take it over; nothing was changed. To scrape through it, set prometheus = \"existing\" (and prometheus_api, if it does not listen on 127.0.0.1:9090) in [monitor] and add the scrape job `promguard plan` prints to its config")]
    HostsOwnPrometheus {
        /// The host.
        host: HostName,
    },
    /// The login user may not run commands as root without a password.
    #[error("{host}: user {user} cannot run commands as root without a password ({reason}); PromGuard runs every privileged step through `sudo -n`: grant it with a line `{user} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/promguard on the host, or log in as root (ssh_user)")]
    Sudo {
        /// The host.
        host: HostName,
        /// The login user.
        user: String,
        /// What sudo said.
        reason: String,
    },
}

/// An interface name after `name` (`wg0` -> `wg1`), for suggestions.
fn next_interface(name: &InterfaceName) -> String {
    let text = name.as_str();
    let digits = text.len() - text.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    match text[text.len() - digits..].parse::<u32>() {
        Ok(n) if digits > 0 => format!("{}{}", &text[..text.len() - digits], n + 1),
        _ => format!("{text}1"),
    }
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
            | RemoteError::Protocol { host, .. }
            | RemoteError::WireguardClash { host, .. }
            | RemoteError::Sudo { host, .. }
            | RemoteError::HostsOwnPrometheus { host } => host,
        }
    }
}

/// The last `max` bytes of `bytes` as lossy UTF-8, trimmed, for error
/// messages.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}
