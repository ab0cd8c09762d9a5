//! What differs between the places hosts come from, stated by the provider
//! that makes them and read by the workflows that converge them: whether
//! PromGuard installs its programs, where a host's SSH host key comes from,
//! and whether PromGuard may destroy the host. Workflows never compare
//! provider names.

/// How a provider's hosts get the programs PromGuard runs (WireGuard,
/// nftables, node_exporter, Prometheus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Programs {
    /// Already installed where the hosts run (the local provider's
    /// namespace hosts share this machine's programs).
    Preinstalled,
    /// Installed by the recipe with apt (cloud images, systemd hosts).
    Packages,
}

/// Where the SSH host key a host presents comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostKeys {
    /// The host made it, and the provider reports it when the host appears
    /// (local hosts).
    FromHost,
    /// The provider made it and put it into the host through user data,
    /// which stays readable from the host's metadata: every key is known
    /// before the first connection, a host without a recorded key is never
    /// connected to, and the injected key is replaced by one the host makes
    /// right after the first verified connection.
    Injected,
    /// The host made it long before PromGuard knew the host, and the user
    /// vouches for it: it is named in the config or in `known_hosts`, or
    /// the user accepted its fingerprint (existing hosts).
    Vouched,
}

/// Whether PromGuard owns the hosts' lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Lifecycle {
    /// PromGuard creates the hosts and destroys them when they leave the
    /// config or the deployment goes down.
    Disposable,
    /// The hosts existed before PromGuard and outlive it: they are never
    /// created or destroyed, only forgotten.
    Existing,
}

/// Everything a provider states about its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// How hosts get PromGuard's programs.
    pub programs: Programs,
    /// Where their SSH host keys come from.
    pub host_keys: HostKeys,
    /// Whether PromGuard may destroy them.
    pub lifecycle: Lifecycle,
}

impl Capabilities {
    /// What holds for hosts the user runs already, whoever made them:
    /// PromGuard installs its programs with apt, trusts only a host key the
    /// user vouches for, and never destroys them.
    pub const EXISTING: Capabilities = Capabilities {
        programs: Programs::Packages,
        host_keys: HostKeys::Vouched,
        lifecycle: Lifecycle::Existing,
    };
}
