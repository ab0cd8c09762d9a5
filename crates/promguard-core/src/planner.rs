//! Turns a config and the recorded state into a [`Plan`]: addresses, keys,
//! peers, exporters, firewall and scrape targets for every host, plus the
//! list of changes.
//!
//! Addresses and keys are sticky: a host name that is in the state keeps its
//! WireGuard address and key pair; a removed host's address becomes free
//! again, but no other host is renumbered.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::IpNetwork;

use crate::alerts::{AlertRules, ALERTMANAGER_API_PORT, ALERTMANAGER_CLUSTER_PORT};
use crate::capabilities::Lifecycle;
use crate::config::{
    usable_addresses, Config, ExistingHost, ExporterSpec, HostAddress, HostOrigin,
    MonitorPrometheus,
};
use crate::exporters::ProbeSpec;
use crate::keys::{PresharedKey, PrivateKey};
use crate::names::{ExporterName, HostName, Port, SshUser};
use crate::plan::{
    AlertmanagerCluster, Change, ExporterKind, ExporterPlan, FirewallPolicy, FirewallScope,
    HostPlan, InterfacePlan, PeerPlan, Plan, ProbeTarget, PrometheusMode, PrometheusPlan,
    RemoteWritePlan, Role, ScrapeTarget, SshLogin,
};
use crate::shards::{ShardId, Shards};
use crate::state::{HostRecord, PairKey, State};
use crate::topology::{MonitorSlot, RemoteWriteAuth, REPLICA_LABELS};

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The state belongs to another deployment.
    #[error("the state belongs to deployment {found:?} but the config names {expected:?}; use the matching config or state file")]
    WrongDeployment {
        /// Deployment in the state.
        found: String,
        /// Deployment in the config.
        expected: String,
    },
    /// A host in the state has an address outside the configured subnet.
    #[error("host {host} has WireGuard address {address}, which is outside the configured subnet {subnet}; changing the subnet of a running deployment is not supported: restore the old subnet or run `promguard down` first")]
    AddressOutsideSubnet {
        /// The host.
        host: HostName,
        /// Its recorded address.
        address: IpAddr,
        /// The configured subnet.
        subnet: IpNetwork,
    },
    /// An existing host would change role or region.
    #[error("host {host} exists as {was}, but the config asks for {now}; a host cannot be moved: give the new host another name, or remove it from the config and run `up` to destroy it first")]
    HostChanged {
        /// The host.
        host: HostName,
        /// Role and region in the state.
        was: String,
        /// Role and region in the config.
        now: String,
    },
    /// A host that exists was reached on another SSH port than the config
    /// names now. Its firewall would open only the new port while sshd
    /// still listens on the old one: every later connection would be cut.
    #[error("host {host} serves SSH on port {recorded} (recorded when it was made), but ssh.port is now {configured}; PromGuard does not move sshd on running hosts, and a firewall for port {configured} would lock you out: set ssh.port back to {recorded}, or run `promguard down` and `up` to make the hosts anew")]
    SshPortChanged {
        /// The host.
        host: HostName,
        /// The port its record names.
        recorded: Port,
        /// The port the config names.
        configured: Port,
    },
    /// There are not enough free addresses.
    #[error("subnet {subnet} has no free address left for host {host}; use a larger subnet")]
    SubnetFull {
        /// The subnet.
        subnet: IpNetwork,
        /// The first host without an address.
        host: HostName,
    },
}

/// Keepalive nodes send to the monitor, in seconds.
pub const NODE_KEEPALIVE: u16 = 25;

/// Where Prometheus listens on the monitor.
pub const PROMETHEUS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9090);

/// Plans `config` against `state` (`None` for a new deployment). New hosts
/// get fresh keys from the OS RNG and the lowest free addresses.
pub fn plan(config: &Config, state: Option<&State>) -> Result<Plan, PlanError> {
    let empty;
    let old = match state {
        Some(s) => s,
        None => {
            empty = State::new(config.deployment.clone());
            &empty
        }
    };
    if old.deployment != config.deployment {
        return Err(PlanError::WrongDeployment {
            found: old.deployment.to_string(),
            expected: config.deployment.to_string(),
        });
    }

    let slots: HashMap<&HostName, MonitorSlot<'_>> = config
        .monitors()
        .into_iter()
        .map(|m| (&m.host.name, m))
        .collect();
    let specs: Vec<(Role, &crate::config::HostSpec)> = config
        .monitors()
        .into_iter()
        .map(|m| (Role::Monitor, m.host))
        .chain(config.storage.iter().map(|s| (Role::Storage, &s.host)))
        .chain(config.nodes.iter().map(|n| (Role::Node, n)))
        .collect();
    let wanted: BTreeSet<&HostName> = specs.iter().map(|(_, s)| &s.name).collect();

    // Existing hosts keep their records; check they still fit.
    let mut next = State::new(config.deployment.clone());
    next.provider = old.provider.clone();
    let mut used: HashSet<IpAddr> = HashSet::new();
    for (role, spec) in &specs {
        if let Some(record) = old.hosts.get(&spec.name) {
            if record.role != *role || record.region != spec.region {
                return Err(PlanError::HostChanged {
                    host: spec.name.clone(),
                    was: format!("{} in {}", record.role, record.region),
                    now: format!("{} in {}", role, spec.region),
                });
            }
            if !config.subnet.contains(record.wireguard_address)
                || !is_host_address(config.subnet, record.wireguard_address)
            {
                return Err(PlanError::AddressOutsideSubnet {
                    host: spec.name.clone(),
                    address: record.wireguard_address,
                    subnet: config.subnet,
                });
            }
            if record.existing != spec.existing().is_some() {
                let what = |existing: bool| {
                    if existing {
                        "a host you run (with an address)"
                    } else {
                        "a host the provider creates"
                    }
                };
                return Err(PlanError::HostChanged {
                    host: spec.name.clone(),
                    was: what(record.existing).to_owned(),
                    now: what(!record.existing).to_owned(),
                });
            }
            if let Some(recorded) = record
                .ssh_port
                .filter(|p| record.created && !record.existing && *p != config.ssh.port)
            {
                return Err(PlanError::SshPortChanged {
                    host: spec.name.clone(),
                    recorded,
                    configured: config.ssh.port,
                });
            }
            used.insert(record.wireguard_address);
            next.hosts.insert(spec.name.clone(), record.clone());
        }
    }

    // New hosts: lowest free address, monitor first.
    let mut allocator = Allocator::new(config.subnet);
    for (role, spec) in &specs {
        if next.hosts.contains_key(&spec.name) {
            continue;
        }
        let address = allocator
            .next_free(&used)
            .ok_or_else(|| PlanError::SubnetFull {
                subnet: config.subnet,
                host: spec.name.clone(),
            })?;
        used.insert(address);
        let private_key = PrivateKey::generate();
        next.hosts.insert(
            spec.name.clone(),
            HostRecord {
                role: *role,
                region: spec.region.clone(),
                wireguard_address: address,
                public_key: private_key.public_key(),
                private_key,
                created: false,
                provider_id: None,
                public_address: None,
                ssh_port: None,
                ssh_host_key: None,
                ssh_host_key_rotated: false,
                ssh_host_key_next: None,
                files: BTreeMap::new(),
                key_created: None,
                previous_private_key: None,
                existing: spec.existing().is_some(),
                ssh_user: None,
                guest: None,
                shard: None,
            },
        );
    }
    for (name, slot) in &slots {
        if let Some(record) = next.hosts.get_mut(*name) {
            record.shard = slot.shard.cloned();
        }
    }

    let star = Star::of_config(config);

    // Preshared keys per pair of peers: a monitor and a node of its shard,
    // a monitor and the storage host, or two replicas (recorded once, the
    // name that sorts first as `monitor`).
    if config.preshared_keys {
        // Indexed: a lookup per node in the list would be quadratic.
        let old_pairs: HashMap<(&HostName, &HostName), &PairKey> = old
            .preshared_keys
            .iter()
            .map(|p| ((&p.monitor, &p.node), p))
            .collect();
        for (monitor, _) in &star.monitors {
            for other in star.peers_of(monitor, Role::Monitor) {
                if *other < **monitor && star.is_monitor(other) {
                    continue;
                }
                let kept = old_pairs.get(&(*monitor, other)).map(|&p| p.clone());
                next.preshared_keys.push(kept.unwrap_or_else(|| PairKey {
                    monitor: (*monitor).clone(),
                    node: other.clone(),
                    key: PresharedKey::generate(),
                    created: None,
                    previous: None,
                }));
            }
        }
    }

    let pairs = pair_index(&next);
    let by_name: HashMap<&HostName, &crate::config::HostSpec> =
        specs.iter().map(|(_, s)| (&s.name, *s)).collect();
    let cx = Context {
        config,
        state: &next,
        pairs: &pairs,
        star: &star,
        specs: &by_name,
        slots: &slots,
    };
    let hosts: Vec<HostPlan> = specs
        .iter()
        .map(|(role, spec)| host_plan(&cx, *role, spec))
        .collect();

    let mut changes = Vec::new();
    for (role, spec) in &specs {
        let existed = old.hosts.get(&spec.name).is_some_and(|r| r.created);
        if existed {
            continue;
        }
        changes.push(match spec.existing() {
            Some(existing) => Change::JoinHost {
                host: spec.name.clone(),
                role: *role,
                address: existing.address.to_string(),
            },
            None => Change::CreateHost {
                host: spec.name.clone(),
                role: *role,
                region: spec.region.clone(),
            },
        });
    }
    for (name, record) in &old.hosts {
        if !wanted.contains(name) {
            changes.push(Change::RemoveHost {
                host: name.clone(),
                lifecycle: lifecycle(record.existing),
            });
        }
    }
    // Nodes that change shard, and peer changes on hosts that already
    // exist.
    let star_before = Star::of_state(old);
    if let (Some(before), Some(now)) = (&star_before.shards, &config.topology.shards) {
        for node in &config.nodes {
            if !old.hosts.get(&node.name).is_some_and(|r| r.created) {
                continue;
            }
            let (from, to) = (before.assign(&node.name), now.assign(&node.name));
            if from != to {
                changes.push(Change::MoveNode {
                    node: node.name.clone(),
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
    }
    for host in &hosts {
        let Some(record) = old.hosts.get(&host.name).filter(|r| r.created) else {
            continue;
        };
        let before: BTreeSet<&HostName> = star_before
            .peers_of(&host.name, record.role)
            .into_iter()
            .collect();
        let after: BTreeSet<&HostName> = host.peers.iter().map(|p| &p.name).collect();
        for peer in after.difference(&before) {
            changes.push(Change::AddPeer {
                host: host.name.clone(),
                peer: (*peer).clone(),
            });
        }
        for peer in before.difference(&after) {
            changes.push(Change::RemovePeer {
                host: host.name.clone(),
                peer: (*peer).clone(),
            });
        }
    }

    Ok(Plan {
        deployment: config.deployment.clone(),
        subnet: config.subnet,
        hosts,
        changes,
        next_state: next,
    })
}

/// The lifecycle of a host that is existing or not.
fn lifecycle(existing: bool) -> Lifecycle {
    if existing {
        Lifecycle::Existing
    } else {
        Lifecycle::Disposable
    }
}

/// Who peers with whom: every monitor with the nodes of its shard and the
/// storage host; a node with the monitors of its shard; the storage host
/// with every monitor.
struct Star<'a> {
    /// The monitors with their shards.
    monitors: Vec<(&'a HostName, Option<&'a ShardId>)>,
    /// The shards, when the nodes are split.
    shards: Option<Shards>,
    /// The nodes with their shards.
    nodes: Vec<(&'a HostName, Option<ShardId>)>,
    /// Where each node is in [`Self::nodes`]: a lookup per node would be
    /// quadratic otherwise.
    node_index: HashMap<&'a HostName, usize>,
    /// The storage host.
    storage: Option<&'a HostName>,
}

impl<'a> Star<'a> {
    fn of_config(config: &'a Config) -> Self {
        let shards = config.topology.shards.clone();
        let nodes = config
            .nodes
            .iter()
            .map(|n| (&n.name, shards.as_ref().map(|s| s.assign(&n.name).clone())))
            .collect();
        Self::new(
            config
                .monitors()
                .into_iter()
                .map(|m| (&m.host.name, m.shard))
                .collect(),
            shards,
            nodes,
            config.storage.as_ref().map(|s| &s.host.name),
        )
    }

    fn new(
        monitors: Vec<(&'a HostName, Option<&'a ShardId>)>,
        shards: Option<Shards>,
        nodes: Vec<(&'a HostName, Option<ShardId>)>,
        storage: Option<&'a HostName>,
    ) -> Self {
        let node_index = nodes
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (*n, i))
            .collect();
        Self {
            monitors,
            shards,
            nodes,
            node_index,
            storage,
        }
    }

    /// The star the recorded hosts form: the shards are those the monitors
    /// record.
    fn of_state(state: &'a State) -> Self {
        let recorded: BTreeSet<&ShardId> = state
            .hosts
            .values()
            .filter_map(|r| r.shard.as_ref())
            .collect();
        let shards = Shards::new(recorded.into_iter().cloned()).ok();
        let of_role = |role: Role| state.hosts.iter().filter(move |(_, r)| r.role == role);
        let nodes = of_role(Role::Node)
            .map(|(name, _)| (name, shards.as_ref().map(|s| s.assign(name).clone())))
            .collect();
        Self::new(
            of_role(Role::Monitor)
                .map(|(name, r)| (name, r.shard.as_ref()))
                .collect(),
            shards,
            nodes,
            of_role(Role::Storage).map(|(name, _)| name).next(),
        )
    }

    /// The monitors that scrape a node of `shard`: all of them without
    /// shards.
    fn monitors_of_shard<'s>(
        &'s self,
        shard: Option<&'s ShardId>,
    ) -> impl Iterator<Item = &'a HostName> + 's {
        self.monitors
            .iter()
            .filter(move |(_, s)| shard.is_none() || *s == shard)
            .map(|(name, _)| *name)
    }

    /// The other replicas of the monitor `name` of `shard`: the monitors
    /// of the same shard (every other monitor without shards), whose
    /// Alertmanagers form one cluster.
    fn replicas_of<'s>(
        &'s self,
        name: &'s HostName,
        shard: Option<&'s ShardId>,
    ) -> impl Iterator<Item = &'a HostName> + 's {
        self.monitors
            .iter()
            .filter(move |(m, s)| *m != name && *s == shard)
            .map(|(m, _)| *m)
    }

    /// Whether `name` is one of the monitors.
    fn is_monitor(&self, name: &HostName) -> bool {
        self.monitors.iter().any(|(m, _)| *m == name)
    }

    /// The peers of the host called `name`, whose role is `role`.
    fn peers_of(&self, name: &HostName, role: Role) -> Vec<&'a HostName> {
        match role {
            Role::Monitor => {
                let shard = self
                    .monitors
                    .iter()
                    .find(|(m, _)| *m == name)
                    .and_then(|(_, s)| *s);
                self.nodes
                    .iter()
                    .filter(|(_, s)| shard.is_none() || s.as_ref() == shard)
                    .map(|(n, _)| *n)
                    .chain(self.storage)
                    .chain(self.replicas_of(name, shard))
                    .collect()
            }
            Role::Node => {
                let shard = self
                    .node_index
                    .get(name)
                    .and_then(|&i| self.nodes[i].1.as_ref());
                self.monitors_of_shard(shard).collect()
            }
            Role::Storage => self.monitors.iter().map(|(m, _)| *m).collect(),
        }
    }
}

/// Preshared keys by (monitor, node), so planning stays linear in the
/// number of hosts.
type PairIndex<'a> = HashMap<(&'a HostName, &'a HostName), &'a PresharedKey>;

fn pair_index(state: &State) -> PairIndex<'_> {
    state
        .preshared_keys
        .iter()
        .map(|p| ((&p.monitor, &p.node), &p.key))
        .collect()
}

/// What every host's plan is made from.
struct Context<'a> {
    config: &'a Config,
    state: &'a State,
    pairs: &'a PairIndex<'a>,
    star: &'a Star<'a>,
    specs: &'a HashMap<&'a HostName, &'a crate::config::HostSpec>,
    /// Each monitor's shard and replica number.
    slots: &'a HashMap<&'a HostName, MonitorSlot<'a>>,
}

fn host_plan(cx: &Context<'_>, role: Role, spec: &crate::config::HostSpec) -> HostPlan {
    let Context {
        config,
        state,
        pairs,
        star,
        specs,
        slots,
    } = *cx;
    let record = &state.hosts[&spec.name];

    let peer = |other_spec: &crate::config::HostSpec| {
        let name = &other_spec.name;
        let other = &state.hosts[name];
        let (m, n) = match (role, other.role) {
            (Role::Monitor, Role::Monitor) => (name.min(&spec.name), name.max(&spec.name)),
            (Role::Monitor, _) => (&spec.name, name),
            _ => (name, &spec.name),
        };
        PeerPlan {
            name: name.clone(),
            public_key: other.public_key,
            preshared_key: pairs.get(&(m, n)).map(|&k| k.clone()),
            allowed_ip: other.wireguard_address,
            // A peer behind NAT cannot be sent to first: it keeps the
            // tunnel open itself, and WireGuard learns where it is from
            // its packets.
            endpoint: other
                .public_address
                .filter(|_| other_spec.wireguard.inbound)
                .map(|a| SocketAddr::new(a, config.wireguard_port_of(other_spec).get())),
            // Nodes and the storage host keep their tunnels to the
            // monitors open so that the monitors can always reach them.
            persistent_keepalive: (role != Role::Monitor).then_some(NODE_KEEPALIVE),
        }
    };
    let peer_names = star.peers_of(&spec.name, role);
    let mut peers: Vec<PeerPlan> = peer_names.iter().map(|n| peer(specs[n])).collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    let monitor_address = record.wireguard_address;
    let mut scrapers: Vec<IpAddr> = match role {
        Role::Monitor => vec![record.wireguard_address],
        Role::Node | Role::Storage => peers.iter().map(|p| p.allowed_ip).collect(),
    };
    scrapers.sort();
    scrapers.dedup();
    // A monitor's peers that are monitors, its other replicas: there for
    // Alertmanager's gossip, not scraped (each replica watches the same
    // nodes, not the others).
    let replicas: Vec<&HostName> = match role {
        Role::Monitor => peer_names
            .iter()
            .copied()
            .filter(|p| state.hosts[*p].role == Role::Monitor)
            .collect(),
        Role::Node | Role::Storage => Vec::new(),
    };
    let mut gossip_peers: Vec<IpAddr> = replicas
        .iter()
        .map(|r| state.hosts[*r].wireguard_address)
        .collect();
    gossip_peers.sort();
    gossip_peers.dedup();
    // What a monitor scrapes: itself and its peers but the replicas.
    let scraped: HashSet<&HostName> = std::iter::once(&spec.name)
        .chain(peer_names.iter().copied().filter(|p| !replicas.contains(p)))
        .collect();

    let host_exporters = exporters(config, record.wireguard_address, spec);
    let mut exporter_ports: Vec<Port> = host_exporters
        .iter()
        .map(|e| Port::new(e.listen.port()).expect("nonzero"))
        .collect();
    exporter_ports.sort();
    exporter_ports.dedup();
    let mut probe_ports: Vec<Port> = probes(config)
        .filter(|(_, p)| p.host == spec.name)
        .map(|(_, p)| p.port)
        .collect();
    probe_ports.sort();
    probe_ports.dedup();

    let (mode, listen) = match config.prometheus {
        MonitorPrometheus::Managed => (PrometheusMode::Managed, PROMETHEUS_LISTEN),
        MonitorPrometheus::Existing { api } => (
            PrometheusMode::Existing {
                job_name: crate::prometheus::existing_job_name(&config.deployment),
            },
            api,
        ),
    };
    let slot = slots.get(&spec.name);
    let external_labels = match slot {
        Some(slot) if config.topology.is_several() || config.remote_write.is_some() => {
            let mut labels = vec![
                (REPLICA_LABELS[0].to_owned(), spec.name.to_string()),
                (REPLICA_LABELS[1].to_owned(), slot.replica.to_string()),
            ];
            if let Some(shard) = slot.shard {
                labels.push(("shard".to_owned(), shard.to_string()));
            }
            labels
        }
        _ => Vec::new(),
    };
    let remote_write = config.remote_write.as_ref().map(|rw| {
        let storage = config
            .storage
            .as_ref()
            .filter(|_| rw.url.is_none())
            .map(|s| {
                let address = state.hosts[&s.host.name].wireguard_address;
                let port = s.host.exporters[0].port.get();
                crate::topology::storage_write_url(SocketAddr::new(address, port))
            });
        RemoteWritePlan {
            url: match (&rw.url, storage.clone()) {
                (Some(url), _) => url.as_str().to_owned(),
                (None, Some(url)) => url,
                (None, None) => unreachable!("the config names a URL or a storage host"),
            },
            username: match &rw.auth {
                RemoteWriteAuth::Basic { username, .. } => Some(username.clone()),
                _ => None,
            },
            secret: None,
            secret_source: rw.auth.secret_source().cloned(),
            ca_file: rw.ca_file.clone(),
            ca: None,
            // The storage engine keeps one of identical series' samples
            // per interval: the replicas' series must be identical.
            drop_labels: if storage.is_some() {
                REPLICA_LABELS.map(str::to_owned).to_vec()
            } else {
                Vec::new()
            },
        }
    });
    let alertmanager_cluster =
        (mode == PrometheusMode::Managed && !gossip_peers.is_empty()).then(|| {
            AlertmanagerCluster {
                advertise: SocketAddr::new(record.wireguard_address, ALERTMANAGER_CLUSTER_PORT),
                peers: gossip_peers
                    .iter()
                    .map(|&a| SocketAddr::new(a, ALERTMANAGER_CLUSTER_PORT))
                    .collect(),
                apis: gossip_peers
                    .iter()
                    .map(|&a| SocketAddr::new(a, ALERTMANAGER_API_PORT))
                    .collect(),
                // `shard` is the same for all of them.
                drop_labels: REPLICA_LABELS.map(str::to_owned).to_vec(),
            }
        });
    let prometheus = (role == Role::Monitor).then(|| PrometheusPlan {
        mode,
        listen,
        scrape_interval: config.scrape_interval,
        targets: config
            .hosts()
            .filter(|h| scraped.contains(&h.name))
            .flat_map(|h| {
                let r = &state.hosts[&h.name];
                exporters(config, r.wireguard_address, h)
                    .into_iter()
                    .map(move |e| ScrapeTarget {
                        job: e.name,
                        address: e.listen,
                        instance: h.name.clone(),
                        region: h.region.clone(),
                        role: r.role,
                    })
            })
            .collect(),
        probes: probes(config)
            .filter(|(_, probe)| scraped.contains(&probe.host))
            .filter_map(|(prober, probe)| {
                // Only a Config built by hand can probe a host it does not
                // have (from_toml refuses it): such a probe probes nothing.
                let host = config.hosts().find(|h| h.name == probe.host)?;
                let r = &state.hosts[&host.name];
                Some(ProbeTarget {
                    job: crate::exporters::probe_job(&prober.name),
                    prober: SocketAddr::new(monitor_address, prober.port.get()),
                    module: probe.module.clone(),
                    // SocketAddr brackets an IPv6 address, as a URL wants.
                    url: format!(
                        "http://{}{}",
                        SocketAddr::new(r.wireguard_address, probe.port.get()),
                        probe.path
                    ),
                    instance: host.name.clone(),
                    region: host.region.clone(),
                    role: r.role,
                })
            })
            .collect(),
        self_scrape: ScrapeTarget {
            job: ExporterName::new("prometheus").expect("a valid exporter name"),
            address: listen,
            instance: spec.name.clone(),
            region: spec.region.clone(),
            role,
        },
        rules: AlertRules::from_config(&config.alerts),
        alerts: config.alerts.clone(),
        external_labels,
        remote_write,
        alertmanager_cluster,
        smtp_password: None,
    });

    HostPlan {
        name: spec.name.clone(),
        role,
        region: spec.region.clone(),
        lifecycle: lifecycle(spec.existing().is_some()),
        // The config says where an existing host is: a changed address
        // wins over the recorded one (a DNS name is resolved by the caller).
        public_address: match spec.existing() {
            Some(ExistingHost {
                address: HostAddress::Ip(ip),
                ..
            }) => Some(*ip),
            _ => record.public_address,
        },
        ssh: SshLogin {
            user: spec
                .existing()
                .map(|e| e.ssh_user.clone())
                .unwrap_or_else(|| SshUser::new("root").expect("a valid user")),
            port: config.ssh_port_of(spec),
        },
        interface: InterfacePlan {
            name: config.interface_of(spec).clone(),
            address: record.wireguard_address,
            listen_port: config.wireguard_port_of(spec),
            private_key: record.private_key.clone(),
        },
        peers,
        exporters: host_exporters,
        firewall: FirewallPolicy {
            scope: match spec.origin {
                HostOrigin::Created => FirewallScope::WholeHost,
                HostOrigin::Existing(_) => FirewallScope::ExporterPorts,
            },
            ssh_port: config.ssh_port_of(spec),
            wireguard_port: config.wireguard_port_of(spec),
            interface: config.interface_of(spec).clone(),
            scrapers,
            exporter_ports,
            probe_ports,
            gossip_peers,
        },
        prometheus,
    }
}

/// Every probe of the monitor's exporters, with the exporter that probes.
fn probes(config: &Config) -> impl Iterator<Item = (&ExporterSpec, &ProbeSpec)> {
    config.monitor.exporters.iter().flat_map(|e| {
        e.managed
            .iter()
            .flat_map(move |m| m.probes.iter().map(move |p| (e, p)))
    })
}

fn exporters(
    config: &Config,
    address: IpAddr,
    spec: &crate::config::HostSpec,
) -> Vec<ExporterPlan> {
    std::iter::once(ExporterPlan {
        name: ExporterName::new("node").expect("valid"),
        listen: SocketAddr::new(address, config.node_exporter_port.get()),
        kind: ExporterKind::NodeExporter,
    })
    .chain(spec.exporters.iter().map(|e| ExporterPlan {
        name: e.name.clone(),
        listen: SocketAddr::new(address, e.port.get()),
        kind: match &e.managed {
            Some(m) => ExporterKind::Packaged(crate::exporters::packaged(m)),
            None => ExporterKind::Unmanaged,
        },
    }))
    .collect()
}

fn is_host_address(subnet: IpNetwork, addr: IpAddr) -> bool {
    match subnet {
        IpNetwork::V4(n) if n.prefix() <= 30 => {
            addr != IpAddr::V4(n.network()) && addr != IpAddr::V4(n.broadcast())
        }
        IpNetwork::V4(_) => false,
        IpNetwork::V6(n) => addr != IpAddr::V6(n.network()),
    }
}

/// Hands out host addresses of a subnet in ascending order.
struct Allocator {
    base: u128,
    offset: u128,
    usable: u128,
    v4: bool,
}

impl Allocator {
    fn new(subnet: IpNetwork) -> Self {
        let (base, v4) = match subnet.network() {
            IpAddr::V4(a) => (u128::from(u32::from(a)), true),
            IpAddr::V6(a) => (u128::from(a), false),
        };
        Self {
            base,
            offset: 0,
            usable: usable_addresses(subnet),
            v4,
        }
    }

    fn next_free(&mut self, used: &HashSet<IpAddr>) -> Option<IpAddr> {
        while self.offset < self.usable {
            self.offset += 1;
            let n = self.base + self.offset;
            let addr = if self.v4 {
                IpAddr::V4(Ipv4Addr::from(n as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(n))
            };
            if !used.contains(&addr) {
                return Some(addr);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, Path::new("t.toml")).unwrap()
    }

    /// Marks every host of a plan as created, as `up` would.
    fn applied(plan: &Plan) -> State {
        let mut s = plan.next_state.clone();
        for r in s.hosts.values_mut() {
            r.created = true;
        }
        s
    }

    #[test]
    fn default_plan_is_the_original_star() {
        let plan = plan(&Config::default(), None).unwrap();
        let addrs: Vec<String> = plan
            .hosts
            .iter()
            .map(|h| h.interface.address.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        let monitor = plan.monitor();
        assert_eq!(monitor.peers.len(), 3);
        assert!(monitor.peers.iter().all(|p| p.name != monitor.name));
        for node in plan.hosts.iter().filter(|h| h.role == Role::Node) {
            assert_eq!(node.peers.len(), 1);
            assert_eq!(node.peers[0].name, monitor.name);
            assert_eq!(node.peers[0].allowed_ips().to_string(), "10.0.0.1/32");
            assert_eq!(node.peers[0].persistent_keepalive, Some(NODE_KEEPALIVE));
            assert_eq!(node.firewall.scrapers, [monitor.interface.address]);
        }
        for p in &monitor.peers {
            assert_eq!(p.allowed_ips().prefix(), 32);
            assert!(p.preshared_key.is_some());
        }
        let prom = monitor.prometheus.as_ref().unwrap();
        assert_eq!(prom.targets.len(), 4, "three nodes and the monitor itself");
        assert_eq!(prom.targets[0].address.to_string(), "10.0.0.1:9100");
        assert_eq!(plan.changes.len(), 4);
        assert!(plan
            .changes
            .iter()
            .all(|c| matches!(c, Change::CreateHost { .. })));
    }

    #[test]
    fn preshared_keys_match_on_both_ends() {
        let plan = plan(&Config::default(), None).unwrap();
        let monitor = plan.monitor();
        for node in &plan.hosts[1..] {
            let from_monitor = monitor.peers.iter().find(|p| p.name == node.name).unwrap();
            assert_eq!(from_monitor.preshared_key, node.peers[0].preshared_key);
            assert_eq!(from_monitor.public_key, node.interface.public_key());
        }
    }

    #[test]
    fn adding_a_node_keeps_addresses_and_keys() {
        let first = plan(&Config::default(), None).unwrap();
        let state = applied(&first);
        let second = plan(&config("[nodes]\ncount = 4\n"), Some(&state)).unwrap();
        for old in &first.hosts {
            let new = second.host(&old.name).unwrap();
            assert_eq!(new.interface.address, old.interface.address);
            assert_eq!(new.interface.private_key, old.interface.private_key);
        }
        for (old, new) in first.monitor().peers.iter().zip(&second.monitor().peers) {
            assert_eq!(old, new, "existing peers are unchanged");
        }
        assert_eq!(second.hosts[4].interface.address.to_string(), "10.0.0.5");
        let changes: Vec<String> = second.changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            changes,
            [
                "+ create node promguard-node-4 in lon1",
                "~ promguard-monitor-1: add peer promguard-node-4"
            ]
        );
    }

    #[test]
    fn removing_a_node_frees_its_address_without_renumbering() {
        let first = plan(&Config::default(), None).unwrap();
        let state = applied(&first);
        let c = config(
            "[[nodes.host]]\nname = \"promguard-node-1\"\nregion = \"lon1\"\n[[nodes.host]]\nname = \"promguard-node-3\"\nregion = \"sgp1\"\n",
        );
        let second = plan(&c, Some(&state)).unwrap();
        let addrs: Vec<String> = second
            .hosts
            .iter()
            .map(|h| h.interface.address.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "10.0.0.4"]);
        assert!(second.changes.contains(&Change::RemoveHost {
            lifecycle: Lifecycle::Disposable,
            host: HostName::new("promguard-node-2").unwrap()
        }));
        assert!(second.changes.contains(&Change::RemovePeer {
            host: HostName::new("promguard-monitor-1").unwrap(),
            peer: HostName::new("promguard-node-2").unwrap()
        }));
        assert!(!second
            .next_state
            .hosts
            .contains_key(&HostName::new("promguard-node-2").unwrap()));
        // The freed address goes to the next new host.
        let third = plan(&Config::default(), Some(&applied(&second))).unwrap();
        assert_eq!(third.hosts[2].interface.address.to_string(), "10.0.0.3");
    }

    #[test]
    fn replanning_a_converged_state_changes_nothing() {
        let first = plan(&Config::default(), None).unwrap();
        let second = plan(&Config::default(), Some(&applied(&first))).unwrap();
        assert!(second.changes.is_empty(), "{:?}", second.changes);
        assert_eq!(second.hosts, first.hosts);
    }

    #[test]
    fn ipv6_addresses() {
        let plan = plan(&config("[deployment]\nsubnet = \"fd00:10::/64\"\n"), None).unwrap();
        assert_eq!(plan.hosts[0].interface.address.to_string(), "fd00:10::1");
        assert_eq!(
            plan.monitor().peers[0].allowed_ips().to_string(),
            "fd00:10::2/128"
        );
    }

    #[test]
    fn moving_a_host_is_refused() {
        let state = applied(&plan(&Config::default(), None).unwrap());
        let err = plan(&config("[monitor]\nregion = \"nyc1\"\n"), Some(&state)).unwrap_err();
        assert!(
            err.to_string().contains("exists as monitor in tor1"),
            "{err}"
        );
    }

    #[test]
    fn state_of_another_deployment_is_refused() {
        let state = State::new(crate::DeploymentName::new("other").unwrap());
        assert!(matches!(
            plan(&Config::default(), Some(&state)),
            Err(PlanError::WrongDeployment { .. })
        ));
    }

    #[test]
    fn subnet_change_is_refused() {
        let state = applied(&plan(&Config::default(), None).unwrap());
        let err = plan(
            &config("[deployment]\nsubnet = \"10.9.0.0/24\"\n"),
            Some(&state),
        )
        .unwrap_err();
        assert!(matches!(err, PlanError::AddressOutsideSubnet { .. }));
    }

    #[test]
    fn public_addresses_become_endpoints() {
        let mut state = applied(&plan(&Config::default(), None).unwrap());
        for (i, r) in state.hosts.values_mut().enumerate() {
            r.public_address = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + i as u8)));
        }
        let plan = plan(&Config::default(), Some(&state)).unwrap();
        assert!(plan
            .monitor()
            .peers
            .iter()
            .all(|p| p.endpoint.is_some_and(|e| e.port() == 51820)));
    }

    /// An IPv6 deployment whose monitor probes two nodes' web servers with
    /// a blackbox exporter, and a node with packaged exporters.
    const PROBES: &str = r#"
[deployment]
subnet = "fd00:10::/64"
[monitor]
exporters = [
  { name = "blackbox", package = "prometheus-blackbox-exporter", probes = [{ host = "web-1", port = 443, path = "/health", module = "http-tls" }, { host = "web-1", port = 80 }, { host = "web-2", port = 80 }, { host = "web-1", port = 80, path = "/x" }] },
]
[[nodes.host]]
name = "db-1"
region = "lon1"
exporters = [
  { name = "postgres", package = "prometheus-postgres-exporter", env = { DATA_SOURCE_NAME = { env = "PG_DSN" } } },
  { name = "redis", package = "prometheus-redis-exporter", args = ["--redis.addr=redis://127.0.0.1:6379"], env = { REDIS_USER = "default" } },
  { name = "mysql", port = 9104 },
]
[[nodes.host]]
name = "web-1"
region = "fra1"
[[nodes.host]]
name = "web-2"
region = "sfo2"
"#;

    #[test]
    fn packaged_exporters_get_their_base_args_and_plain_values() {
        let plan = plan(&config(PROBES), None).unwrap();
        let db = plan.host(&HostName::new("db-1").unwrap()).unwrap();
        let kinds: Vec<(&str, &str)> = db
            .exporters
            .iter()
            .map(|e| {
                let kind = match &e.kind {
                    ExporterKind::NodeExporter => "node_exporter",
                    ExporterKind::Packaged(p) => p.package.as_str(),
                    ExporterKind::Unmanaged => "unmanaged",
                };
                (e.name.as_str(), kind)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("node", "node_exporter"),
                ("postgres", "prometheus-postgres-exporter"),
                ("redis", "prometheus-redis-exporter"),
                ("mysql", "unmanaged"),
            ]
        );
        assert_eq!(db.exporters[1].listen.to_string(), "[fd00:10::2]:9187");
        let postgres = db.exporters[1].packaged().unwrap();
        assert!(postgres.has_secrets());
        assert_eq!(
            postgres
                .unresolved()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["DATA_SOURCE_NAME"],
            "the caller reads secrets"
        );
        let redis = db.exporters[2].packaged().unwrap();
        assert!(!redis.has_secrets() && redis.unresolved().next().is_none());
        assert_eq!(
            redis.settings[0].value.as_ref().unwrap().expose(),
            "default"
        );
        let blackbox = plan.monitor().exporters[1].packaged().unwrap();
        assert_eq!(
            blackbox.args,
            ["--config.file=/etc/prometheus/blackbox.yml"]
        );
        assert_eq!(
            plan.monitor().firewall.exporter_ports,
            [Port::new(9100).unwrap(), Port::new(9115).unwrap()]
        );
    }

    #[test]
    fn probes_become_targets_on_the_monitor_and_ports_on_the_probed_hosts() {
        let probed = plan(&config(PROBES), None).unwrap();
        let probes: Vec<(String, String, &str, &str, &str, &str)> = probed
            .monitor()
            .prometheus
            .as_ref()
            .unwrap()
            .probes
            .iter()
            .map(|p| {
                (
                    p.job.clone(),
                    p.prober.to_string(),
                    p.url.as_str(),
                    p.module.as_str(),
                    p.instance.as_str(),
                    p.region.as_str(),
                )
            })
            .collect();
        let prober = "[fd00:10::1]:9115".to_owned();
        let job = "blackbox_probe".to_owned();
        assert_eq!(
            probes,
            [
                (
                    job.clone(),
                    prober.clone(),
                    "http://[fd00:10::3]:443/health",
                    "http-tls",
                    "web-1",
                    "fra1"
                ),
                (
                    job.clone(),
                    prober.clone(),
                    "http://[fd00:10::3]:80/",
                    "http_2xx",
                    "web-1",
                    "fra1"
                ),
                (
                    job.clone(),
                    prober.clone(),
                    "http://[fd00:10::4]:80/",
                    "http_2xx",
                    "web-2",
                    "sfo2"
                ),
                (
                    job.clone(),
                    prober.clone(),
                    "http://[fd00:10::3]:80/x",
                    "http_2xx",
                    "web-1",
                    "fra1"
                ),
            ]
        );
        assert!(probed
            .monitor()
            .prometheus
            .as_ref()
            .unwrap()
            .probes
            .iter()
            .all(|p| p.role == Role::Node));
        let ports = |name: &str| -> Vec<u16> {
            probed
                .host(&HostName::new(name).unwrap())
                .unwrap()
                .firewall
                .probe_ports
                .iter()
                .map(|p| p.get())
                .collect()
        };
        assert_eq!(ports("web-1"), [80, 443], "sorted and unique");
        assert_eq!(ports("web-2"), [80]);
        assert!(ports("db-1").is_empty());
        assert!(probed.monitor().firewall.probe_ports.is_empty());
        // Probes are no scrape targets, and the IPv4 URL has no brackets.
        let v4 = plan(
            &config(&PROBES.replace("subnet = \"fd00:10::/64\"", "subnet = \"10.0.0.0/24\"")),
            None,
        )
        .unwrap();
        let prom = v4.monitor().prometheus.clone().unwrap();
        assert_eq!(prom.probes[0].url, "http://10.0.0.3:443/health");
        assert_eq!(prom.probes[0].prober.to_string(), "10.0.0.1:9115");
        assert!(prom
            .targets
            .iter()
            .all(|t| t.job.as_str() != "blackbox_probe"));
        let default = plan(&Config::default(), None).unwrap();
        assert!(default
            .monitor()
            .prometheus
            .as_ref()
            .unwrap()
            .probes
            .is_empty());
        assert!(default
            .hosts
            .iter()
            .all(|h| h.firewall.probe_ports.is_empty()));
    }

    // Regression: editing ssh.port from 22 to 2222 made `up` load a
    // firewall that closed port 22 while sshd kept listening there.
    #[test]
    fn a_changed_ssh_port_is_refused_for_hosts_that_exist() {
        let config = Config::default();
        let mut state = plan(&config, None).unwrap().next_state;
        for record in state.hosts.values_mut() {
            record.created = true;
            record.ssh_port = Some(config.ssh.port);
        }
        assert!(plan(&config, Some(&state)).is_ok());
        let moved =
            Config::from_toml("[ssh]\nport = 2222\n", std::path::Path::new("t.toml")).unwrap();
        let err = plan(&moved, Some(&state)).unwrap_err();
        assert!(matches!(err, PlanError::SshPortChanged { .. }), "{err}");
        assert!(err.to_string().contains("set ssh.port back to 22"), "{err}");
        // Hosts not made yet take the new port.
        for record in state.hosts.values_mut() {
            record.created = false;
        }
        assert!(plan(&moved, Some(&state)).is_ok());
    }

    fn names<'a>(peers: impl IntoIterator<Item = &'a PeerPlan>) -> Vec<String> {
        peers.into_iter().map(|p| p.name.to_string()).collect()
    }

    #[test]
    fn replicas_each_scrape_every_node_and_write_to_the_storage_host() {
        let plan = plan(
            &config("[prometheus]\nscrape_interval = \"5s\"\n[monitor]\nreplicas = 2\n[storage]\n"),
            None,
        )
        .unwrap();
        let roles: Vec<(String, Role, String)> = plan
            .hosts
            .iter()
            .map(|h| (h.name.to_string(), h.role, h.interface.address.to_string()))
            .collect();
        assert_eq!(
            roles[..3],
            [
                (
                    "promguard-monitor-1".into(),
                    Role::Monitor,
                    "10.0.0.1".into()
                ),
                (
                    "promguard-monitor-2".into(),
                    Role::Monitor,
                    "10.0.0.2".into()
                ),
                (
                    "promguard-storage-1".into(),
                    Role::Storage,
                    "10.0.0.3".into()
                ),
            ]
        );
        let monitors: Vec<IpAddr> = plan.monitors().map(|m| m.interface.address).collect();
        for node in plan.hosts.iter().filter(|h| h.role == Role::Node) {
            assert_eq!(
                names(&node.peers),
                ["promguard-monitor-1", "promguard-monitor-2"]
            );
            assert_eq!(node.firewall.scrapers, monitors);
            assert!(node.peers.iter().all(|p| p.preshared_key.is_some()));
        }
        let storage = plan.hosts.iter().find(|h| h.role == Role::Storage).unwrap();
        assert_eq!(
            names(&storage.peers),
            ["promguard-monitor-1", "promguard-monitor-2"]
        );
        assert_eq!(storage.firewall.scrapers, monitors);
        assert_eq!(
            storage.firewall.exporter_ports,
            [Port::new(8428).unwrap(), Port::new(9100).unwrap()]
        );
        let engine = storage.exporters[1].packaged().unwrap();
        assert_eq!(engine.listen_flag, "-httpListenAddr");
        assert!(engine
            .args
            .contains(&"-dedup.minScrapeInterval=5s".to_owned()));
        for (i, monitor) in plan.monitors().enumerate() {
            // Every node, the storage host and the other replica, which it
            // gossips with but does not scrape.
            let other = &plan.monitors().nth(1 - i).unwrap();
            assert_eq!(monitor.peers.len(), 5);
            let replicas: Vec<&PeerPlan> = monitor
                .peers
                .iter()
                .filter(|p| p.name.as_str().contains("monitor"))
                .collect();
            assert_eq!(names(replicas.iter().copied()), [other.name.as_str()]);
            assert_eq!(replicas[0].persistent_keepalive, None);
            assert_eq!(monitor.firewall.scrapers, [monitor.interface.address]);
            assert_eq!(monitor.firewall.gossip_peers, [other.interface.address]);
            let prom = monitor.prometheus.as_ref().unwrap();
            let cluster = prom.alertmanager_cluster.as_ref().unwrap();
            assert_eq!(
                cluster.advertise,
                SocketAddr::new(monitor.interface.address, ALERTMANAGER_CLUSTER_PORT)
            );
            assert_eq!(
                cluster.peers,
                [SocketAddr::new(
                    other.interface.address,
                    ALERTMANAGER_CLUSTER_PORT
                )]
            );
            assert_eq!(
                cluster.apis,
                [SocketAddr::new(
                    other.interface.address,
                    ALERTMANAGER_API_PORT
                )]
            );
            assert_eq!(cluster.drop_labels, ["monitor", "replica"]);
            let instances: BTreeSet<&str> =
                prom.targets.iter().map(|t| t.instance.as_str()).collect();
            assert_eq!(
                instances.len(),
                5,
                "itself, the storage host and three nodes"
            );
            assert!(instances.contains(monitor.name.as_str()));
            assert_eq!(
                prom.external_labels,
                [
                    ("monitor".to_owned(), monitor.name.to_string()),
                    ("replica".to_owned(), (i + 1).to_string())
                ]
            );
            let rw = prom.remote_write.as_ref().unwrap();
            assert_eq!(rw.url, "http://10.0.0.3:8428/api/v1/write");
            assert_eq!(rw.drop_labels, ["monitor", "replica"]);
            assert!(rw.secret_source.is_none());
        }
        // The replicas share one preshared key, recorded once.
        let [m1, m2] = [0, 1].map(|i| plan.monitors().nth(i).unwrap());
        let key = |from: &HostPlan, to: &HostPlan| {
            from.peers
                .iter()
                .find(|p| p.name == to.name)
                .and_then(|p| p.preshared_key.clone())
                .unwrap()
        };
        assert!(key(m1, m2) == key(m2, m1));
        let recorded: Vec<&PairKey> = plan
            .next_state
            .preshared_keys
            .iter()
            .filter(|p| p.node.as_str().contains("monitor"))
            .collect();
        assert_eq!(recorded.len(), 1);
        assert_eq!(
            (recorded[0].monitor.as_str(), recorded[0].node.as_str()),
            ("promguard-monitor-1", "promguard-monitor-2")
        );
        // A single monitor keeps its config as it was: no labels, no writes,
        // no cluster, no gossip port.
        let single = super::plan(&Config::default(), None).unwrap();
        let prom = single.monitor().prometheus.as_ref().unwrap();
        assert!(prom.external_labels.is_empty() && prom.remote_write.is_none());
        assert!(prom.alertmanager_cluster.is_none());
        assert!(single.monitor().firewall.gossip_peers.is_empty());
    }

    fn plan_of(text: &str) -> Plan {
        plan(&config(text), None).unwrap()
    }

    #[test]
    fn replicas_gossip_within_their_shard_only() {
        let plan = plan(
            &config("[monitor]\nreplicas = 2\nshards = [\"a\", \"b\"]\n[nodes]\ncount = 6\n"),
            None,
        )
        .unwrap();
        for monitor in plan.monitors() {
            let sibling = monitor
                .name
                .as_str()
                .trim_end_matches(|c: char| c.is_ascii_digit())
                .to_owned();
            let replicas: Vec<&str> = monitor
                .peers
                .iter()
                .map(|p| p.name.as_str())
                .filter(|p| p.contains("monitor"))
                .collect();
            assert_eq!(replicas.len(), 1, "{}: {replicas:?}", monitor.name);
            assert!(replicas[0].starts_with(&sibling) && replicas[0] != monitor.name.as_str());
            let prom = monitor.prometheus.as_ref().unwrap();
            assert_eq!(prom.alertmanager_cluster.as_ref().unwrap().peers.len(), 1);
            assert!(prom
                .targets
                .iter()
                .all(|t| !t.instance.as_str().contains("monitor") || t.instance == monitor.name));
        }
        // One shard of one monitor each: nobody to gossip with.
        let plan = plan_of("[monitor]\nshards = [\"a\", \"b\"]\n");
        for monitor in plan.monitors() {
            assert!(monitor.firewall.gossip_peers.is_empty());
            assert!(monitor
                .prometheus
                .as_ref()
                .unwrap()
                .alertmanager_cluster
                .is_none());
        }
    }

    #[test]
    fn a_replica_added_later_keeps_every_address_and_key() {
        let one = config("");
        let before = applied(&plan(&one, None).unwrap());
        let two = plan(&config("[monitor]\nreplicas = 2\n"), Some(&before)).unwrap();
        for (name, record) in &before.hosts {
            let now = &two.next_state.hosts[name];
            assert_eq!(now.wireguard_address, record.wireguard_address);
            assert_eq!(now.public_key, record.public_key);
        }
        let new = two
            .host(&HostName::new("promguard-monitor-2").unwrap())
            .unwrap();
        assert_eq!(new.interface.address.to_string(), "10.0.0.5");
        assert!(two.changes.contains(&Change::CreateHost {
            host: new.name.clone(),
            role: Role::Monitor,
            region: new.region.clone(),
        }));
        for node in ["promguard-node-1", "promguard-node-2", "promguard-node-3"] {
            assert!(two.changes.contains(&Change::AddPeer {
                host: HostName::new(node).unwrap(),
                peer: new.name.clone(),
            }));
        }
        // The first monitor now gossips with the new one.
        assert!(two.changes.contains(&Change::AddPeer {
            host: HostName::new("promguard-monitor-1").unwrap(),
            peer: new.name.clone(),
        }));
    }

    fn sharded(shards: &[&str], nodes: usize) -> Config {
        let list: Vec<String> = shards.iter().map(|s| format!("{s:?}")).collect();
        config(&format!(
            "[deployment]\nsubnet = \"10.0.0.0/16\"\npreshared_keys = false\n[monitor]\nshards = [{}]\n[nodes]\ncount = {nodes}\n",
            list.join(", ")
        ))
    }

    fn moves(plan: &Plan) -> Vec<(&HostName, &ShardId, &ShardId)> {
        plan.changes
            .iter()
            .filter_map(|c| match c {
                Change::MoveNode { node, from, to } => Some((node, from, to)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_fourth_shard_takes_a_quarter_of_the_nodes_and_nothing_moves_between_the_others() {
        let three = plan(&sharded(&["a", "b", "c"], 10_000), None).unwrap();
        let state = applied(&three);
        let four = plan(&sharded(&["a", "b", "c", "d"], 10_000), Some(&state)).unwrap();
        let moved = moves(&four);
        let fraction = moved.len() as f64 / 10_000.0;
        assert!((0.22..=0.28).contains(&fraction), "{fraction}");
        assert!(moved.iter().all(|(_, _, to)| to.as_str() == "d"));
        // Every moved node now peers with the new shard's monitor only.
        for (node, _, _) in &moved {
            let host = four.host(node).unwrap();
            assert_eq!(names(&host.peers), ["promguard-monitor-d-1"]);
        }
        // Removing a shard moves only its own nodes.
        let two = plan(&sharded(&["a", "c", "d"], 10_000), Some(&applied(&four))).unwrap();
        let moved = moves(&two);
        assert!(!moved.is_empty());
        assert!(moved.iter().all(|(_, from, _)| from.as_str() == "b"));
        assert_eq!(
            two.removed_hosts(),
            [HostName::new("promguard-monitor-b-1").unwrap()]
        );
    }

    #[test]
    fn every_node_peers_with_exactly_the_monitors_of_its_shard() {
        let config = config(
            "[monitor]\nshards = [\"eu\", \"us\"]\nreplicas = 2\n[nodes]\ncount = 20\n[storage]\n",
        );
        let plan = plan(&config, None).unwrap();
        let shards = config.topology.shards.as_ref().unwrap();
        let mut scraped: BTreeMap<String, usize> = BTreeMap::new();
        for node in plan.hosts.iter().filter(|h| h.role == Role::Node) {
            let shard = shards.assign(&node.name);
            assert_eq!(
                names(&node.peers),
                [
                    format!("promguard-monitor-{shard}-1"),
                    format!("promguard-monitor-{shard}-2")
                ]
            );
            let addresses: Vec<IpAddr> = node.peers.iter().map(|p| p.allowed_ip).collect();
            assert_eq!(node.firewall.scrapers, addresses);
        }
        for monitor in plan.monitors() {
            let prom = monitor.prometheus.as_ref().unwrap();
            for t in prom.targets.iter().filter(|t| t.role == Role::Node) {
                *scraped.entry(t.instance.to_string()).or_default() += 1;
            }
            let shard = monitor.name.as_str().split('-').nth(2).unwrap();
            assert!(prom
                .external_labels
                .contains(&("shard".to_owned(), shard.to_owned())));
            assert_eq!(
                monitor.peers.len(),
                prom.targets
                    .iter()
                    .filter(|t| t.job.as_str() == "node")
                    .count(),
                "a monitor peers with what it scrapes but itself, and with its other replica"
            );
        }
        // Each node job target: by the two replicas of its shard only.
        assert_eq!(scraped.len(), 20);
        assert!(scraped.values().all(|&n| n == 2), "{scraped:?}");
        let storage = plan.hosts.iter().find(|h| h.role == Role::Storage).unwrap();
        assert_eq!(storage.peers.len(), 4);
    }
}
