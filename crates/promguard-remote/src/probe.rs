//! Reading a server's SSH host key without logging in: the first step of
//! trusting an existing host ([`crate::known_hosts::decide_host_key`]).
//!
//! The probe runs the SSH handshake only. The key it returns is what the
//! server claims; trusting it is the caller's decision, and the later
//! [`crate::Connection`] checks that the server presents the same key
//! again. Like the rest of the SSH layer it blocks: async callers run it
//! on `tokio::task::spawn_blocking`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use promguard_core::SshPublicKey;
use ssh2::{ErrorCode, MethodType, Session};

use crate::known_hosts::HOST_KEY_ALGORITHMS;
use crate::session::Connector;

/// libssh2's `LIBSSH2_ERROR_TIMEOUT`.
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;

/// Why a server's host key could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr} to read its SSH host key: {source}; check that the host is running and its SSH port is reachable")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The connector's error.
        source: io::Error,
    },
    /// The server did not finish the handshake in time.
    #[error("the SSH server at {addr} did not finish the handshake within {after:?}")]
    Timeout {
        /// The address.
        addr: SocketAddr,
        /// The time allowed.
        after: Duration,
    },
    /// The SSH handshake failed (not an SSH server, no common algorithm).
    #[error("SSH handshake with {addr} failed: {reason}")]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// libssh2's message.
        reason: String,
    },
    /// The server's host key could not be read or has an unknown type.
    #[error("cannot read the SSH host key of {addr}: {reason}")]
    HostKey {
        /// The address.
        addr: SocketAddr,
        /// What was wrong with it.
        reason: String,
    },
}

/// The host key the SSH server at `addr` presents, asking for ed25519
/// first (then ECDSA, then RSA). One attempt, no retries: this is for
/// hosts that already run; `timeout` bounds the handshake (the connector
/// has its own limit for the TCP connect).
pub fn probe_host_key(
    addr: SocketAddr,
    connector: &Connector,
    timeout: Duration,
) -> Result<SshPublicKey, ProbeError> {
    probe_host_key_preferring(addr, connector, timeout, &[])
}

/// Like [`probe_host_key`], asking for the key types in `algorithms`
/// first (names as in [`HOST_KEY_ALGORITHMS`]; what
/// [`crate::known_hosts::TrustDecision::Probe`] lists), then the rest
/// in the usual order. A server with several host keys presents the
/// first type of the list it has, so a host recorded in known_hosts with
/// its RSA key is asked for that key, not for a newer ed25519 one it
/// would otherwise present.
pub fn probe_host_key_preferring(
    addr: SocketAddr,
    connector: &Connector,
    timeout: Duration,
    algorithms: &[String],
) -> Result<SshPublicKey, ProbeError> {
    let tcp = connector(addr).map_err(|source| ProbeError::Connect { addr, source })?;
    let handshake_error = |err: ssh2::Error| {
        if err.code() == ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT) {
            ProbeError::Timeout {
                addr,
                after: timeout,
            }
        } else {
            ProbeError::Handshake {
                addr,
                reason: err.message().to_owned(),
            }
        }
    };
    let mut session = Session::new().map_err(handshake_error)?;
    session.set_tcp_stream(tcp);
    // libssh2 counts 0 as "no timeout"; a zero Duration means "at once".
    let millis = u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    session.set_timeout(millis);
    session
        .method_pref(MethodType::HostKey, &method_preference(algorithms))
        .map_err(handshake_error)?;
    session.handshake().map_err(handshake_error)?;
    let key = presented_key(&session).map_err(|reason| ProbeError::HostKey { addr, reason });
    // Say goodbye so the server logs a clean disconnect, not an error;
    // whether it hears it does not matter.
    let _ = session.disconnect(None, "host key probe", None);
    key
}

/// The host key method list for libssh2: `preferred` first, then every
/// algorithm of [`HOST_KEY_ALGORITHMS`] not in it. An RSA key is asked
/// for with its SHA-2 signatures first (what OpenSSH servers offer since
/// 8.8), then the SHA-1 `ssh-rsa`; all three present the same key.
/// libssh2 drops names it does not support and refuses the list only if
/// none is left, which cannot happen with ed25519 and RSA in it.
fn method_preference(preferred: &[String]) -> String {
    let mut names: Vec<&str> = Vec::new();
    let wanted = preferred
        .iter()
        .map(String::as_str)
        .chain(HOST_KEY_ALGORITHMS);
    for algorithm in wanted {
        let methods: &[&str] = match algorithm {
            "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
            other => &[other][..],
        };
        for method in methods {
            // Only names PromGuard can represent, so nothing from the
            // caller's list reaches libssh2 unchecked.
            let known = HOST_KEY_ALGORITHMS.contains(method) || method.starts_with("rsa-sha2-");
            if known && !names.contains(method) {
                names.push(method);
            }
        }
    }
    names.join(",")
}

/// The server's host key as an [`SshPublicKey`], its algorithm read from
/// the blob itself (libssh2's type enum has no name for it).
fn presented_key(session: &Session) -> Result<SshPublicKey, String> {
    let (blob, _kind) = session.host_key().ok_or("the server sent no host key")?;
    let len = u32::from_be_bytes(
        blob.get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("the host key blob is malformed")?,
    ) as usize;
    let algorithm = blob
        .get(4..4usize.saturating_add(len))
        .and_then(|name| std::str::from_utf8(name).ok())
        .ok_or("the host key blob is malformed")?;
    SshPublicKey::from_blob(algorithm, blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_preference_puts_the_wanted_types_first() {
        assert_eq!(
            method_preference(&[]),
            "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa"
        );
        assert_eq!(
            method_preference(&["ssh-rsa".into(), "ecdsa-sha2-nistp384".into()]),
            "rsa-sha2-512,rsa-sha2-256,ssh-rsa,ecdsa-sha2-nistp384,ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp521"
        );
        // Names PromGuard does not know (or a comma smuggling in a list)
        // are dropped.
        assert_eq!(
            method_preference(&["ssh-dss".into(), "ssh-ed25519,ssh-dss".into()]),
            method_preference(&[])
        );
    }
}
