//! Remote execution over SSH (ssh2, blocking, driven from tokio) and the
//! host recipe that converges one host to its plan.
//!
//! This crate knows how to reach a host and what a converged host looks
//! like; it does not know which cloud made the host, nor how the files it
//! installs are rendered: the caller renders them (with `promguard-core`
//! and `promguard-wg`) and hands them in as [`recipe::DesiredHost`].
//!
//! - [`session`]: [`Connection`] (connect with host key pinning, `exec`,
//!   atomic `upload`, `direct-tcpip` forwarding, `http_get`),
//!   [`serve_forward`], [`for_each_host`].
//! - [`recipe`]: [`converge`] one host in at most two round trips.
//! - [`quote`]: shell quoting and the checks on paths and owners.

pub mod error;
pub mod quote;
pub mod recipe;
pub mod session;

pub use recipe::{converge, DesiredFile, DesiredHost, FileKind, Report};

pub use error::RemoteError;
pub use quote::{check_owner, check_remote_path, shell_quote};

pub use session::{
    for_each_host, serve_forward, tcp_connector, ConnectOptions, Connection, Connector, Output,
    SshTarget, Tunnel,
};
