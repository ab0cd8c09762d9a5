//! PromGuard's model of a deployment, with no IO but the state file: the
//! config (`promguard.toml`) and its validation, WireGuard address
//! allocation, key generation, the per-host desired state (the [`Plan`]) and
//! the state file that makes runs repeatable.
//!
//! This crate knows nothing about HTTP, SSH or processes. A library user can
//! plan a deployment without any cloud:
//!
//! ```
//! use promguard_core::{config::Config, planner};
//!
//! let config = Config::default();
//! let plan = planner::plan(&config, None).unwrap();
//! assert_eq!(plan.hosts.len(), 4);
//! assert_eq!(plan.monitor().interface.address.to_string(), "10.0.0.1");
//! ```

pub mod alerts;
pub mod capabilities;
pub mod config;
pub mod events;
pub mod exporters;
pub mod journal;
pub mod keys;
pub mod names;
pub mod nftables;
pub mod plan;
pub mod planner;
pub mod prometheus;
pub mod shards;
pub mod ssh;
pub mod state;
pub mod topology;

pub use capabilities::{Capabilities, HostKeys, Lifecycle, Programs};
pub use events::{Event, Observer, Outcome, Step};
pub use journal::{Journal, MemoryStore, StateStore};
pub use keys::{PresharedKey, PrivateKey, PublicKey};
pub use names::{DeploymentName, ExporterName, HostName, InterfaceName, Port, Region, SshUser};
pub use plan::{
    Change, ExporterKind, ExporterPlan, FirewallPolicy, HostPlan, InterfacePlan, PeerPlan, Plan,
    ProbeTarget, PrometheusPlan, Role, ScrapeTarget,
};
pub use ssh::SshPublicKey;
pub use state::{HostRecord, State, StateFile, StateLock};
