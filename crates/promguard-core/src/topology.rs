//! Several monitors and where their samples go: the monitors' replicas and
//! shards (`[monitor] replicas`, `shards`), the storage host
//! (`[storage]`) and `[remote_write]`.
//!
//! Replicas each scrape the same nodes, for availability; shards split the
//! nodes between them by rendezvous hashing ([`crate::shards`]). Monitor
//! `r` of shard `s` is called `<name_prefix>-<s>-<r>` (without shards
//! `<name_prefix>-<r>`, so that the single monitor `promguard-monitor-1`
//! stays the first replica when replicas are added). A node peers with,
//! and lets in, only the monitors of its shard; the storage host peers with
//! every monitor and lets in only them.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{HostSpec, WebhookUrl};
use crate::exporters::SettingSource;
use crate::names::HostName;
use crate::shards::{ShardId, Shards};

/// How many monitors a deployment has and how they split the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorTopology {
    /// Monitors per shard, each scraping every node of the shard.
    pub replicas: u16,
    /// The shards, when the nodes are split; `None` for one shard of all
    /// nodes.
    pub shards: Option<Shards>,
}

impl Default for MonitorTopology {
    fn default() -> Self {
        Self {
            replicas: 1,
            shards: None,
        }
    }
}

impl MonitorTopology {
    /// More than one monitor.
    pub fn is_several(&self) -> bool {
        self.replicas > 1 || self.shards.is_some()
    }

    /// The shard `node` belongs to (`None` without shards).
    pub fn shard_of(&self, node: &HostName) -> Option<&ShardId> {
        self.shards.as_ref().map(|s| s.assign(node))
    }
}

/// One monitor with its place in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorSlot<'a> {
    /// The host.
    pub host: &'a HostSpec,
    /// Its shard (`None` without shards).
    pub shard: Option<&'a ShardId>,
    /// Its replica number within the shard, from 1.
    pub replica: u16,
}

/// The largest number of replicas per shard.
pub const MAX_REPLICAS: u16 = 9;

/// The external labels that tell a shard's replicas apart: dropped where
/// the replicas' copies must be one (writes to the storage host, alerts to
/// the Alertmanager cluster).
pub const REPLICA_LABELS: [&str; 2] = ["monitor", "replica"];

/// The name of replica `replica` of `shard`.
pub fn monitor_name(prefix: &str, shard: Option<&ShardId>, replica: u16) -> String {
    match shard {
        Some(s) => format!("{prefix}-{s}-{replica}"),
        None => format!("{prefix}-{replica}"),
    }
}

/// The storage host (`[storage]`): a host PromGuard creates, running
/// [`crate::exporters::STORAGE_ENGINE`] as its exporter of that name (so
/// the monitors scrape the engine's own metrics too, and the host's
/// firewall lets only them reach its port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageHost {
    /// The host, its exporters being node_exporter's and the engine's.
    pub host: HostSpec,
    /// How many days the engine keeps samples.
    pub retention_days: u32,
}

/// The job (exporter name) of the storage engine.
pub const STORAGE_JOB: &str = "victoriametrics";

/// Where every monitor sends its samples with Prometheus' remote_write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWriteConfig {
    /// The engine's write URL; `None` means the deployment's storage host.
    pub url: Option<WebhookUrl>,
    /// How the monitors authenticate.
    pub auth: RemoteWriteAuth,
    /// A CA bundle (relative to the config's directory) that signs the
    /// engine's certificate, when it is not a public one.
    pub ca_file: Option<PathBuf>,
}

/// How the monitors authenticate to the engine. The secrets come from a
/// file or the environment of `promguard` (never from the config itself)
/// and are stored 0600 on the monitors, where Prometheus reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteWriteAuth {
    /// No authentication (the storage host, reached over WireGuard).
    None,
    /// HTTP basic authentication.
    Basic {
        /// The user name (not a secret).
        username: String,
        /// Where the password comes from.
        password: SettingSource,
    },
    /// A bearer token.
    Bearer {
        /// Where the token comes from.
        token: SettingSource,
    },
}

impl RemoteWriteAuth {
    /// Where the secret comes from, if there is one.
    pub fn secret_source(&self) -> Option<&SettingSource> {
        match self {
            RemoteWriteAuth::None => None,
            RemoteWriteAuth::Basic { password, .. } => Some(password),
            RemoteWriteAuth::Bearer { token } => Some(token),
        }
    }
}

/// The file name of the remote_write secret on a monitor, in
/// [`crate::prometheus::TARGETS_DIR`] (0600, owned by Prometheus' user;
/// `prometheus.yml` names it, so it never holds the secret itself).
pub const REMOTE_WRITE_SECRET_FILE: &str = "remote-write.secret";
/// The file name of the remote_write CA bundle on a monitor, in
/// [`crate::prometheus::TARGETS_DIR`].
pub const REMOTE_WRITE_CA_FILE: &str = "remote-write-ca.pem";

/// The write path of the storage engine.
pub const STORAGE_WRITE_PATH: &str = "/api/v1/write";

/// The remote_write URL of the storage engine listening at `listen`.
pub fn storage_write_url(listen: SocketAddr) -> String {
    // SocketAddr brackets an IPv6 address, as a URL wants.
    format!("http://{listen}{STORAGE_WRITE_PATH}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_the_single_monitor_as_the_first_replica() {
        assert_eq!(
            monitor_name("promguard-monitor", None, 1),
            "promguard-monitor-1"
        );
        let a = ShardId::new("a").unwrap();
        assert_eq!(
            monitor_name("promguard-monitor", Some(&a), 2),
            "promguard-monitor-a-2"
        );
    }

    #[test]
    fn the_storage_url_brackets_ipv6() {
        assert_eq!(
            storage_write_url("[fd00::5]:8428".parse().unwrap()),
            "http://[fd00::5]:8428/api/v1/write"
        );
        assert_eq!(
            storage_write_url("10.0.0.5:8428".parse().unwrap()),
            "http://10.0.0.5:8428/api/v1/write"
        );
    }
}
