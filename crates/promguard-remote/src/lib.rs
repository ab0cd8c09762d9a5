//! Remote execution over SSH (ssh2, blocking, driven from tokio), the host
//! recipe that converges one host to its plan, and the fleet workflows that
//! converge, verify and read every host of a deployment.
//!
//! ```no_run
//! # async fn demo(plan: promguard_core::Plan, journal: std::sync::Arc<promguard_core::Journal>)
//! # -> Result<(), promguard_remote::FleetError> {
//! use std::time::Duration;
//! use promguard_core::{Capabilities, HostKeys, Lifecycle, Port, Programs};
//! use promguard_remote::{tcp_connector, Access, Fleet};
//!
//! let access = Access {
//!     identity: std::path::PathBuf::from("/root/.ssh/id_ed25519").into(),
//!     default_port: Port::new(22).unwrap(),
//!     connector: tcp_connector(Duration::from_secs(10)),
//! };
//! let hosts = Capabilities {
//!     programs: Programs::Packages,
//!     host_keys: HostKeys::FromHost,
//!     lifecycle: Lifecycle::Existing,
//! };
//! let fleet = Fleet::new(access, journal, hosts);
//! let mut converged = fleet.converge(&plan).await?;
//! let verified = fleet.verify(&plan, &mut converged, Duration::from_secs(120)).await?;
//! println!("{} targets up", verified.targets.len());
//! # Ok(()) }
//! ```
//!
//! `crates/promguard-cli/examples/embed.rs` puts the crates together: a
//! whole deployment provisioned, converged, verified and torn down.
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
//! - [`fleet`]: [`Fleet::converge`] every host of a plan (bounded,
//!   cancellable, monitor first, recording each host in the run's
//!   journal), [`Fleet::verify`] through the monitor's Prometheus.
//! - [`host_key`]: replacing an SSH host key a provider injected.
//! - [`known_hosts`]: the user's `known_hosts`, and whether a host's key
//!   is trusted ([`decide_host_key`]); [`probe`]: reading a server's host
//!   key without logging in.
//! - [`trust`]: the keys of existing hosts reviewed before the converge
//!   logs in ([`review_host_keys`], [`pin_host_key`]), and their DNS
//!   names resolved ([`resolve_existing_addresses`]).
//! - [`status`]: what `status` reads from each host.
//! - [`prometheus_api`]: Prometheus' targets API, parsed.
//! - [`quote`]: shell quoting and the checks on paths and owners.

pub mod error;
pub mod fleet;
pub mod host_key;
pub mod known_hosts;
pub mod probe;
pub mod prometheus_api;
pub mod quote;
pub mod recipe;
pub mod session;
pub mod status;
pub mod trust;

pub use fleet::{Access, CancellationToken, Converged, Fleet, FleetError, HostOutcome, Verified};
pub use known_hosts::{
    decide_host_key, KeySource, KnownHosts, KnownHostsError, Lookup, TrustDecision, TrustError,
    TrustFacts,
};
pub use probe::{probe_host_key, probe_host_key_preferring, ProbeError};
pub use prometheus_api::{FiringAlert, Health, RemoteWriteQueue, TargetHealth};
pub use trust::{
    pin_host_key, resolve_existing_addresses, review_host_keys, HostKeyCheck, HostKeyReview,
    HostKeyTrustError, HostKeyVerdict, ResolveError, TrustOptions,
};

pub use recipe::{converge, DesiredFile, DesiredHost, FileKind, Report};

pub use error::RemoteError;
pub use quote::{check_owner, check_remote_path, shell_quote};

pub use session::{
    for_each_host, serve_forward, tcp_connector, ConnectOptions, Connection, Connector, Identity,
    Output, SshTarget, Tunnel,
};
