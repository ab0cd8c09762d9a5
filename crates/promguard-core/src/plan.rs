//! The plan: what every host of a deployment should look like, and what
//! changes that means against the recorded state.
//!
//! A [`Plan`] is a value, computed without IO by [`crate::planner::plan`].
//! The same value is printed by `promguard plan` and applied by `promguard
//! up`, so what a user reviews is what happens.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::alerts::AlertRules;
use crate::capabilities::Lifecycle;
use crate::config::AlertsConfig;
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::names::{DeploymentName, ExporterName, HostName, InterfaceName, Port, Region, SshUser};
use crate::state::State;

/// What a host is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs Prometheus and peers with the nodes of its shard (every node
    /// without shards), the storage host and the other replicas of its
    /// shard (whose Alertmanagers its own gossips with).
    Monitor,
    /// Runs exporters and peers only with the monitors of its shard.
    Node,
    /// Runs the time-series engine the monitors write to, and peers with
    /// every monitor.
    Storage,
}

impl Role {
    /// `"monitor"` or `"node"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Node => "node",
            Role::Storage => "storage",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole desired deployment plus the changes it means.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The deployment's name.
    pub deployment: DeploymentName,
    /// The WireGuard subnet all addresses come from.
    pub subnet: IpNetwork,
    /// Every host, monitor first, then nodes in config order.
    pub hosts: Vec<HostPlan>,
    /// What differs from the state the plan was made against.
    pub changes: Vec<Change>,
    /// The state to record once the plan is applied: it holds the keys and
    /// addresses of new hosts and drops those of removed ones.
    pub next_state: State,
}

impl Plan {
    /// The host called `name`, if the plan has one.
    pub fn host(&self, name: &HostName) -> Option<&HostPlan> {
        self.hosts.iter().find(|h| &h.name == name)
    }

    /// The first monitor's plan (with several monitors, the first replica
    /// of the first shard). Every plan has at least one monitor.
    pub fn monitor(&self) -> &HostPlan {
        self.hosts
            .iter()
            .find(|h| h.role == Role::Monitor)
            .expect("a plan always has a monitor")
    }

    /// Every monitor's plan, in config order.
    pub fn monitors(&self) -> impl Iterator<Item = &HostPlan> {
        self.hosts.iter().filter(|h| h.role == Role::Monitor)
    }

    /// Hosts the state has and the config no longer names.
    pub fn removed_hosts(&self) -> Vec<HostName> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::RemoveHost { host, .. } => Some(host.clone()),
                _ => None,
            })
            .collect()
    }

    /// The hosts the plan removes whose lifecycle is `lifecycle`: the
    /// disposable ones are destroyed, the existing ones left.
    pub fn removed_hosts_of(&self, lifecycle: Lifecycle) -> Vec<HostName> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::RemoveHost { host, lifecycle: l } if *l == lifecycle => Some(host.clone()),
                _ => None,
            })
            .collect()
    }

    /// The state to record before anything is created: the plan's next
    /// state, still holding the records (and preshared keys) of created
    /// hosts that are to be removed, until they really are destroyed.
    pub fn state_to_record(&self, old: &State) -> State {
        let mut next = self.next_state.clone();
        for (name, record) in &old.hosts {
            if !next.hosts.contains_key(name) && record.created {
                next.hosts.insert(name.clone(), record.clone());
            }
        }
        for pair in &old.preshared_keys {
            if next.preshared_key(&pair.monitor, &pair.node).is_none() {
                next.preshared_keys.push(pair.clone());
            }
        }
        next
    }
}

/// Everything one host should run and contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    /// The host's name.
    pub name: HostName,
    /// Monitor or node.
    pub role: Role,
    /// Cloud region (for the local provider only a label).
    pub region: Region,
    /// Whether a provider created the host ([`Lifecycle::Disposable`]) or
    /// the user runs it already ([`Lifecycle::Existing`]).
    pub lifecycle: Lifecycle,
    /// The host's public (underlay) address, once a provider has reported
    /// it (for an existing host: its address in the config, or what the
    /// caller resolved its DNS name to).
    pub public_address: Option<IpAddr>,
    /// How PromGuard logs in.
    pub ssh: SshLogin,
    /// The WireGuard interface.
    pub interface: InterfacePlan,
    /// WireGuard peers, sorted by name.
    pub peers: Vec<PeerPlan>,
    /// Exporters on this host, all bound to its WireGuard address.
    pub exporters: Vec<ExporterPlan>,
    /// The host firewall.
    pub firewall: FirewallPolicy,
    /// Prometheus, on the monitor only.
    pub prometheus: Option<PrometheusPlan>,
}

/// How PromGuard logs in to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLogin {
    /// The user: root on hosts PromGuard created; on an existing host
    /// root or a user with passwordless sudo.
    pub user: SshUser,
    /// The SSH port.
    pub port: Port,
}

/// A host's WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    /// Interface name, `wg0` by default.
    pub name: InterfaceName,
    /// The host's WireGuard address. It is configured as a single-host
    /// prefix (/32 or /128) so a node has no route to other nodes.
    pub address: IpAddr,
    /// UDP port WireGuard listens on.
    pub listen_port: Port,
    /// The host's private key.
    pub private_key: PrivateKey,
}

impl InterfacePlan {
    /// The public key of [`InterfacePlan::private_key`].
    pub fn public_key(&self) -> PublicKey {
        self.private_key.public_key()
    }
}

/// One WireGuard peer of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    /// The peer host's name (written as a comment in `wg0.conf`).
    pub name: HostName,
    /// The peer's public key.
    pub public_key: PublicKey,
    /// The pair's preshared key, when preshared keys are on.
    pub preshared_key: Option<PresharedKey>,
    /// The peer's WireGuard address; AllowedIPs is exactly this address as a
    /// single-host prefix.
    pub allowed_ip: IpAddr,
    /// Where to send packets, once the peer's public address is known.
    pub endpoint: Option<SocketAddr>,
    /// Keepalive in seconds; nodes keep their tunnel to the monitor open so
    /// the monitor can always reach them.
    pub persistent_keepalive: Option<u16>,
}

impl PeerPlan {
    /// AllowedIPs as a network: the peer's address as /32 or /128.
    pub fn allowed_ips(&self) -> IpNetwork {
        host_network(self.allowed_ip)
    }
}

/// `addr` as a single-host network (/32 or /128).
pub fn host_network(addr: IpAddr) -> IpNetwork {
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(addr, prefix).expect("a full-length prefix is always valid")
}

/// An exporter Prometheus scrapes on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterPlan {
    /// Exporter name, also the Prometheus job name (`node` for
    /// node_exporter).
    pub name: ExporterName,
    /// Where it listens: the host's WireGuard address and the exporter port.
    pub listen: SocketAddr,
    /// Who installs and runs it.
    pub kind: ExporterKind,
}

impl ExporterPlan {
    /// node_exporter, which the recipe runs on every host.
    pub fn is_node_exporter(&self) -> bool {
        matches!(self.kind, ExporterKind::NodeExporter)
    }

    /// PromGuard installs and runs it (node_exporter or a Debian package).
    pub fn is_managed(&self) -> bool {
        !matches!(self.kind, ExporterKind::Unmanaged)
    }

    /// The Debian package PromGuard installs it from, if any.
    pub fn packaged(&self) -> Option<&crate::exporters::PackagedExporter> {
        match &self.kind {
            ExporterKind::Packaged(p) => Some(p),
            _ => None,
        }
    }
}

/// Who installs and runs an exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExporterKind {
    /// node_exporter: the recipe installs and runs it on every host.
    NodeExporter,
    /// An exporter from a Debian package (`package` in the config):
    /// installed, bound to the WireGuard address, ordered after the
    /// interface and restarted on a change of its settings by the recipe.
    Packaged(crate::exporters::PackagedExporter),
    /// The operator runs it; PromGuard only scrapes and firewalls it.
    Unmanaged,
}

/// The firewall of one host: exporters open only to the monitor's
/// WireGuard address on the WireGuard interface; on hosts PromGuard
/// created also SSH and WireGuard open to all and everything else inbound
/// dropped ([`FirewallScope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallPolicy {
    /// How much of the host's inbound traffic the table decides.
    pub scope: FirewallScope,
    /// The SSH port, open to everyone.
    pub ssh_port: Port,
    /// The WireGuard UDP port, open to everyone.
    pub wireguard_port: Port,
    /// The WireGuard interface scrapes arrive on.
    pub interface: InterfaceName,
    /// The only source addresses allowed to reach exporter ports: the
    /// monitors that scrape the host (the host itself on a monitor),
    /// sorted and unique.
    pub scrapers: Vec<IpAddr>,
    /// Exporter TCP ports, sorted and unique.
    pub exporter_ports: Vec<Port>,
    /// TCP ports a prober on the scraper (a blackbox exporter on the
    /// monitor) reaches over the tunnel, sorted and unique: accepted from
    /// the scraper on the WireGuard interface like exporter ports, but
    /// never closed to anyone else (they are the host's own services).
    pub probe_ports: Vec<Port>,
    /// The other replicas of a monitor, sorted and unique: their
    /// Alertmanagers gossip with this one on
    /// [`crate::alerts::ALERTMANAGER_CLUSTER_PORT`] (TCP and UDP), and
    /// their Prometheus servers send alerts to its API
    /// ([`crate::alerts::ALERTMANAGER_API_PORT`], TCP), over the WireGuard
    /// interface. Empty on every other host. Only a host
    /// PromGuard created can be such a monitor, so only
    /// [`FirewallScope::WholeHost`] renders it.
    pub gossip_peers: Vec<IpAddr>,
}

/// How much of a host's inbound traffic PromGuard's table decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallScope {
    /// All of it (hosts PromGuard created): SSH, WireGuard and the exporter
    /// ports from the scraper are accepted, everything else is dropped.
    WholeHost,
    /// Only the exporter ports (hosts the user runs already): connections to
    /// them from anyone but the scraper are dropped, and everything else is
    /// left to the host's own firewall.
    ExporterPorts,
}

/// Whose Prometheus the monitor runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrometheusMode {
    /// PromGuard's: it writes `prometheus.yml`, the rules and Alertmanager.
    Managed,
    /// The user's own: PromGuard writes only the targets files, which the
    /// user's config reads in the scrape job `job_name`.
    Existing {
        /// The scrape job the user adds to their config.
        job_name: String,
    },
}

/// Prometheus on the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusPlan {
    /// PromGuard's own Prometheus, or the user's.
    pub mode: PrometheusMode,
    /// Where Prometheus' API listens on the monitor (loopback for
    /// PromGuard's own; reached through an SSH port forward).
    pub listen: SocketAddr,
    /// Global scrape interval.
    pub scrape_interval: Duration,
    /// Every scrape target, grouped by job when rendered.
    pub targets: Vec<ScrapeTarget>,
    /// Endpoints a blackbox exporter probes, grouped by job when rendered.
    pub probes: Vec<ProbeTarget>,
    /// Prometheus' own metrics at [`Self::listen`], scraped as job
    /// `prometheus` (in `prometheus.yml`, not in a targets file): the rules
    /// about failing rule evaluations and notifications read them.
    pub self_scrape: ScrapeTarget,
    /// The thresholds of the alert rules installed next to the config.
    pub rules: AlertRules,
    /// Where Alertmanager sends notifications (webhooks, email).
    pub alerts: AlertsConfig,
    /// Labels this monitor adds to everything it sends (remote_write,
    /// alerts): `monitor`, `replica` and, with shards, `shard`. Empty for a
    /// single monitor that writes nowhere, whose config stays as before.
    pub external_labels: Vec<(String, String)>,
    /// Where this monitor sends its samples, if anywhere.
    pub remote_write: Option<RemoteWritePlan>,
    /// The Alertmanager cluster of this monitor and the other replicas of
    /// its shard, so that an alert both replicas send is notified once;
    /// `None` for a monitor without replicas.
    pub alertmanager_cluster: Option<AlertmanagerCluster>,
    /// The SMTP password of [`AlertsConfig::email`], when it names one: the
    /// planner leaves it `None` (core reads neither files nor the
    /// environment); the caller resolves it and sets it before rendering
    /// Alertmanager's config.
    pub smtp_password: Option<SmtpPassword>,
}

/// A password or token for a file on the monitor (the SMTP password, the
/// remote_write credentials): shown as `<redacted>` by `Debug`, and out of
/// reach of `Display`, so that it is only ever written into the file that
/// needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// The SMTP password of [`AlertsConfig::email`].
pub type SmtpPassword = Secret;

impl Secret {
    /// Wraps `password`.
    pub fn new(password: String) -> Self {
        Self(password)
    }

    /// The secret itself, for the file on the monitor.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The Alertmanagers of a shard's replicas as one cluster: they gossip,
/// sharing silences and the log of notifications sent, so that only one
/// of them notifies an alert every replica fires; and every replica's
/// Prometheus sends its alerts to all of them, so that they all know the
/// same alerts (one that only knew its own Prometheus' view would notify
/// again what another one resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerCluster {
    /// What this Alertmanager tells the others to reach it at: its
    /// WireGuard address and [`crate::alerts::ALERTMANAGER_CLUSTER_PORT`].
    pub advertise: SocketAddr,
    /// The other replicas' Alertmanagers' gossip, sorted.
    pub peers: Vec<SocketAddr>,
    /// The other replicas' Alertmanagers' APIs (WireGuard address and
    /// [`crate::alerts::ALERTMANAGER_API_PORT`]), sorted: this monitor's
    /// Prometheus sends to them besides its own.
    pub apis: Vec<SocketAddr>,
    /// Labels Prometheus drops from the alerts it sends (the replica's
    /// external labels), so that the replicas' copies of an alert are
    /// identical and the cluster sees one alert.
    pub drop_labels: Vec<String>,
}

/// Prometheus' remote_write on a monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWritePlan {
    /// The engine's write URL.
    pub url: String,
    /// The basic authentication user, when there is one (its password is
    /// [`Self::secret`]).
    pub username: Option<String>,
    /// The password or bearer token: the planner leaves it `None` (core
    /// reads neither files nor the environment); the caller resolves
    /// [`Self::secret_source`] and sets it before rendering.
    pub secret: Option<Secret>,
    /// Where the secret comes from, if there is one.
    pub secret_source: Option<crate::exporters::SettingSource>,
    /// The CA bundle's file on the caller's machine, if the config names
    /// one.
    pub ca_file: Option<std::path::PathBuf>,
    /// The CA bundle's content, set by the caller from [`Self::ca_file`].
    pub ca: Option<String>,
    /// Labels dropped before sending: the replica labels, for an engine
    /// that deduplicates identical series only (the storage host's).
    pub drop_labels: Vec<String>,
}

impl RemoteWritePlan {
    /// The secret is a bearer token rather than a password.
    pub fn is_bearer(&self) -> bool {
        self.secret_source.is_some() && self.username.is_none()
    }
}

impl PrometheusPlan {
    /// Job names in order of first appearance (`node` first).
    pub fn jobs(&self) -> Vec<&ExporterName> {
        let mut jobs: Vec<&ExporterName> = Vec::new();
        for t in &self.targets {
            if !jobs.contains(&&t.job) {
                jobs.push(&t.job);
            }
        }
        jobs
    }

    /// Probe job names in order of first appearance.
    pub fn probe_jobs(&self) -> Vec<&str> {
        let mut jobs: Vec<&str> = Vec::new();
        for p in &self.probes {
            if !jobs.contains(&p.job.as_str()) {
                jobs.push(&p.job);
            }
        }
        jobs
    }
}

/// One target in Prometheus' file_sd files (or Prometheus itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrapeTarget {
    /// The job (exporter name).
    pub job: ExporterName,
    /// WireGuard address and port to scrape.
    pub address: SocketAddr,
    /// `instance` label: the host name.
    pub instance: HostName,
    /// `region` label.
    pub region: Region,
    /// `role` label.
    pub role: Role,
}

/// One endpoint a blackbox exporter probes: Prometheus asks the prober
/// for `/probe?module=<module>&target=<url>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeTarget {
    /// The job: the blackbox exporter's name with `_probe` appended
    /// (its own metrics are the job of its name).
    pub job: String,
    /// Where the blackbox exporter listens.
    pub prober: SocketAddr,
    /// The blackbox module.
    pub module: String,
    /// What is probed: `http://<WireGuard address>:<port><path>`.
    pub url: String,
    /// `instance` label: the probed host's name.
    pub instance: HostName,
    /// `region` label of the probed host.
    pub region: Region,
    /// `role` label of the probed host.
    pub role: Role,
}

/// One difference between the recorded state and the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A host in the config that does not exist yet.
    CreateHost {
        /// Host name.
        host: HostName,
        /// Its role.
        role: Role,
        /// Its region.
        region: Region,
    },
    /// A host the user runs already, which joins the deployment: PromGuard
    /// installs its part there but never creates or destroys it.
    JoinHost {
        /// Host name.
        host: HostName,
        /// Its role.
        role: Role,
        /// Its address, as the config names it.
        address: String,
    },
    /// A host in the state that is no longer in the config.
    RemoveHost {
        /// Host name.
        host: HostName,
        /// Whether the provider destroys it, or PromGuard only removes its
        /// part from a host the user runs.
        lifecycle: Lifecycle,
    },
    /// A peer `peer` appears in `host`'s WireGuard config.
    AddPeer {
        /// The host whose config changes.
        host: HostName,
        /// The new peer.
        peer: HostName,
    },
    /// A peer disappears from `host`'s WireGuard config.
    RemovePeer {
        /// The host whose config changes.
        host: HostName,
        /// The removed peer.
        peer: HostName,
    },
    /// A node changes shard: the monitors of `to` scrape it from now on.
    MoveNode {
        /// The node.
        node: HostName,
        /// Its shard before.
        from: crate::shards::ShardId,
        /// Its shard now.
        to: crate::shards::ShardId,
    },
    /// A file on `host` will be written (new or different content).
    WriteFile {
        /// The host.
        host: HostName,
        /// Absolute path on the host.
        path: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateHost { host, role, region } => {
                write!(f, "+ create {role} {host} in {region}")
            }
            Change::JoinHost {
                host,
                role,
                address,
            } => write!(
                f,
                "+ join existing {role} {host} at {address} (never created or destroyed by PromGuard)"
            ),
            Change::RemoveHost {
                host,
                lifecycle: Lifecycle::Disposable,
            } => write!(f, "- destroy {host}"),
            Change::RemoveHost {
                host,
                lifecycle: Lifecycle::Existing,
            } => write!(
                f,
                "- remove PromGuard from existing host {host} (the host itself stays)"
            ),
            Change::AddPeer { host, peer } => write!(f, "~ {host}: add peer {peer}"),
            Change::RemovePeer { host, peer } => write!(f, "~ {host}: remove peer {peer}"),
            Change::MoveNode { node, from, to } => {
                write!(f, "~ {node}: moves from shard {from} to shard {to}")
            }
            Change::WriteFile { host, path } => write!(f, "~ {host}: write {path}"),
        }
    }
}
