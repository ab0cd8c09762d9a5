//! Where hosts come from. The [`CloudProvider`] trait creates, lists and
//! destroys a deployment's hosts; providers implement it: [`local`] (hosts
//! on this machine: namespaces, or Debian booted with systemd-nspawn) and
//! [`digitalocean`]. [`provision`] makes the hosts a plan needs in an order
//! that survives being cut off anywhere, recording each step in a
//! [`Journal`](promguard_core::Journal).
//!
//! This crate knows nothing about what runs on a host: it hands back
//! addresses, SSH endpoints and SSH host keys, and a way to open a TCP
//! connection to a host's SSH port.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use promguard_cloud::local::{LocalOptions, LocalProvider};
//! use promguard_cloud::provision::{provision, CancellationToken};
//! use promguard_core::{config::Config, planner, Journal, MemoryStore, State, SshPublicKey};
//!
//! let config = Config::default();
//! let provider = LocalProvider::new(config.deployment.clone(), LocalOptions::default());
//! let journal = Journal::new(Arc::new(MemoryStore::default()), State::new(config.deployment.clone()));
//! let plan = planner::plan(&config, None)?;
//! let login = SshPublicKey::parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob")?;
//! let made = provision(&provider, &plan, &journal, Some(&login), &(), &CancellationToken::new()).await?;
//! println!("created {:?}", made.created);
//! # Ok(()) }
//! ```

use std::net::{IpAddr, SocketAddr, TcpStream};

use async_trait::async_trait;
pub use promguard_core::SshPublicKey;
use promguard_core::{Capabilities, DeploymentName, HostName, Region, Role};

pub mod digitalocean;
#[cfg(feature = "fake-digitalocean")]
pub mod fake_digitalocean;
pub mod local;
pub mod none;
pub mod provision;

/// Errors of a provider.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudError {
    /// Something this machine lacks (root, a program, a kernel feature).
    #[error("the {provider} provider cannot run here: {what}; {fix}")]
    Missing {
        /// Provider name.
        provider: &'static str,
        /// What is missing.
        what: String,
        /// How to fix it.
        fix: String,
    },
    /// A host could not be created, started or destroyed.
    #[error("host {host}: {message}")]
    Host {
        /// The host.
        host: HostName,
        /// What went wrong.
        message: String,
    },
    /// A failure that concerns the whole deployment.
    #[error("deployment {deployment}: {message}")]
    Deployment {
        /// The deployment.
        deployment: DeploymentName,
        /// What went wrong.
        message: String,
    },
    /// A host did not become ready in time.
    #[error("host {host} did not become ready within {seconds} s: {message}")]
    Timeout {
        /// The host.
        host: HostName,
        /// How long we waited.
        seconds: u64,
        /// Last thing observed.
        message: String,
    },
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRequest {
    /// Host name.
    pub name: HostName,
    /// Monitor or node.
    pub role: Role,
    /// Region.
    pub region: Region,
}

/// A host that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Host name.
    pub name: HostName,
    /// Monitor or node, as tagged.
    pub role: Option<Role>,
    /// Region.
    pub region: Region,
    /// The provider's id.
    pub id: String,
    /// Public (underlay) address.
    pub public_address: IpAddr,
    /// SSH endpoint.
    pub ssh: SocketAddr,
    /// The SSH host key, where the provider knows it.
    pub ssh_host_key: Option<SshPublicKey>,
}

/// A cloud that makes hosts.
#[async_trait]
pub trait CloudProvider: Send + Sync {
    /// Short name for messages (`local`, `digitalocean`).
    fn name(&self) -> &'static str;

    /// What this provider's hosts are like: whether the recipe installs
    /// PromGuard's programs with apt (cloud images, the local provider's
    /// systemd hosts) or finds them installed (namespace hosts); whether
    /// their SSH host keys are injected through user data (see
    /// [`CloudProvider::prepare_host_keys`]) or made by the host; whether
    /// PromGuard may destroy them. Required, not defaulted, so that a
    /// wrapping provider cannot drop it.
    fn capabilities(&self) -> Capabilities;

    /// How this provider finds a deployment's hosts without a state file
    /// (`down --discover`), for messages: "their tags", "their namespaces".
    fn discovery_hint(&self) -> &'static str;

    /// Checks that the provider can work here (root, programs, token) and
    /// says exactly what is missing otherwise.
    async fn preflight(&self) -> Result<(), CloudError>;

    /// Brings the deployment's resources that are no host (DigitalOcean's
    /// Cloud Firewall) in line with the provider's settings, such as a
    /// changed SSH or WireGuard port. `up` calls it on runs that create no
    /// host (creating hosts does it too). Required, not defaulted, so that
    /// a wrapping provider cannot drop it.
    async fn reconcile_deployment(&self) -> Result<(), CloudError>;

    /// Makes `key` an authorized login key for hosts created afterwards.
    async fn register_ssh_key(&self, key: &SshPublicKey) -> Result<(), CloudError>;

    /// Makes now the SSH host keys this provider will install on `requests`
    /// when it creates them, so the caller can record them before any host
    /// exists: a run cut off after the create request still knows which key
    /// each new host must present. Requests whose host exists already (an
    /// interrupted run made it, and it may still be booting) get no key:
    /// the caller keeps the one it recorded then. Empty when the provider
    /// learns a host's key another way (local hosts report the key they
    /// generated).
    /// Required, not defaulted, so that a wrapping provider cannot drop
    /// the keys by forgetting to forward the call.
    async fn prepare_host_keys(
        &self,
        requests: &[HostRequest],
    ) -> Result<Vec<(HostName, SshPublicKey)>, CloudError>;

    /// Creates hosts in one batch and waits until each is reachable on SSH.
    async fn create_hosts(&self, requests: &[HostRequest]) -> Result<Vec<Host>, CloudError>;

    /// Lists the deployment's hosts.
    async fn list_hosts(&self) -> Result<Vec<Host>, CloudError>;

    /// Destroys the named hosts; names that do not exist are ignored.
    async fn destroy_hosts(&self, names: &[HostName]) -> Result<(), CloudError>;

    /// Destroys every host and every other resource of the deployment. A
    /// second call is a no-op.
    async fn destroy_deployment(&self) -> Result<(), CloudError>;

    /// Opens a TCP connection to `addr` (a host's SSH endpoint) from where
    /// the hosts are reachable. Blocking; called from a blocking thread.
    fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
    }
}
