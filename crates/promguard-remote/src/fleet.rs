//! Converging every host of a deployment and proving the result through the
//! monitor's Prometheus.
//!
//! A [`Fleet`] holds what a run needs: how to log in ([`Access`]), the
//! run's [`Journal`], what the provider states about its hosts
//! ([`Capabilities`]), where progress goes (an [`Observer`]), the caller's
//! cancellation token, and how many hosts are worked on at once.
//! [`Fleet::converge`] converges every host of a plan over one SSH
//! connection each, the monitor first so that Prometheus' own start-up
//! overlaps the nodes' convergence, replacing injected SSH host keys on the
//! way; [`Fleet::verify`] polls the monitor's Prometheus on the monitor's
//! converge connection until every target is up.
//!
//! Cancelling the token closes the journal and lets hosts whose recipe is
//! running finish it (a remote script cut short can leave a host half
//! configured), for at most [`FINISH_ON_CANCEL`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use promguard_core::plan::PrometheusMode;
use promguard_core::state::GuestRecord;
use promguard_core::state::StateError;
use promguard_core::{
    Capabilities, Event, HostKeys, HostName, HostPlan, HostRecord, Journal, Lifecycle, Observer,
    Outcome, Plan, Port, Programs, Role, SshPublicKey, State, Step,
};
use promguard_wg::files::{host_files, HostFileKind};
use promguard_wg::Secrets;
pub use tokio_util::sync::CancellationToken;

use crate::host_key::{self, HostKeyError};
use crate::prometheus_api::{self, Health, TargetHealth};
use crate::recipe::{self, DesiredFile, DesiredHost, FileKind};
use crate::{ConnectOptions, Connection, Connector, RemoteError, SshTarget};

/// How long a cancelled run waits for recipes in progress to finish.
pub const FINISH_ON_CANCEL: Duration = Duration::from_secs(30);

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The state has no created record of the host.
    #[error("host {host} does not exist yet; run `promguard up`")]
    NotCreated {
        /// The host.
        host: HostName,
    },
    /// The state has no address for the host.
    #[error("host {host} has no public address in the state; run `promguard up`")]
    NoAddress {
        /// The host.
        host: HostName,
    },
    /// The state pins no SSH host key for a host that is only read.
    #[error("host {host} has no pinned SSH host key in the state, and PromGuard never trusts a host key on first use; run `promguard up` to pin it")]
    NotPinned {
        /// The host.
        host: HostName,
    },
    /// A provider that injects host keys knows every key of a host a
    /// recorded run made; this host existed before the state knew it.
    #[error("host {host}: its SSH host key is not known (it existed before the state file recorded one), and PromGuard never connects to a host it cannot verify; restore the state file that pinned its key, or remove the deployment with `promguard down --discover --yes` and run `promguard up` again")]
    UnknownHostKey {
        /// The host.
        host: HostName,
    },
    /// A managed exporter's setting has no value: the caller did not read
    /// the file or environment variable the config names.
    #[error("host {host}: the value of {setting} for exporter {exporter} was not read; the caller reads secret settings (from the file or environment variable the config names) into the plan before converging")]
    UnresolvedSetting {
        /// The host.
        host: HostName,
        /// The exporter.
        exporter: promguard_core::ExporterName,
        /// The variable.
        setting: promguard_core::exporters::EnvName,
    },
    /// The remote_write secret or CA bundle of a monitor has not been
    /// read.
    #[error("host {host}: the remote_write {what} was not read; the caller reads it (from the file or environment variable the config names) into the plan before converging")]
    UnresolvedRemoteWrite {
        /// The monitor.
        host: HostName,
        /// `secret` or `CA bundle`.
        what: &'static str,
    },
    /// A step on one host failed.
    #[error("{source}")]
    Remote {
        /// The step.
        step: Step,
        /// What failed (it names the host).
        source: Box<RemoteError>,
    },
    /// Replacing an injected SSH host key failed.
    #[error(transparent)]
    HostKey(Box<HostKeyError>),
    /// The state could not be saved.
    #[error(transparent)]
    State(#[from] StateError),
    /// The work of one host ended without a result (it panicked).
    #[error("host {host}: its task failed: {message}")]
    Task {
        /// The host.
        host: HostName,
        /// What the runtime said.
        message: String,
    },
    /// Some hosts failed to converge; the others did.
    #[error("{} of {total} host(s) failed to converge (the others did): {}", failures.len(), list(failures))]
    Converge {
        /// Each failed host and why.
        failures: Vec<(HostName, FleetError)>,
        /// How many hosts were converged.
        total: usize,
    },
    /// Injected SSH host keys could not be replaced on some hosts.
    #[error("the injected SSH host key could not be replaced on {} host(s): {}", failures.len(), list(failures))]
    HostKeys {
        /// Each failed host and why.
        failures: Vec<(HostName, FleetError)>,
    },
    /// [`Fleet::leave`] was asked to leave a host PromGuard created.
    #[error("host {host} is not a host of yours that PromGuard is a guest on; it is destroyed with the deployment, not left")]
    NotExisting {
        /// The host.
        host: HostName,
    },
    /// PromGuard could not be removed from some hosts.
    #[error("PromGuard could not be removed from {} host(s) (run the command again to retry; nothing else was changed on them): {}", failures.len(), list(failures))]
    Leave {
        /// Each failed host and why.
        failures: Vec<(HostName, FleetError)>,
    },
    /// The monitor's Prometheus did not answer as expected.
    #[error("host {host}: {reason}")]
    Prometheus {
        /// The monitor.
        host: HostName,
        /// What was wrong.
        reason: String,
    },
    /// Not every target came up in time.
    #[error("not every target was up after {} s: {detail}; run `promguard status` for details", timeout.as_secs())]
    Verify {
        /// How long it waited.
        timeout: Duration,
        /// Which targets are not up, and why.
        detail: String,
    },
    /// A host's answer while reading its status cannot be used.
    #[error("host {host}: {reason}")]
    Status {
        /// The host.
        host: HostName,
        /// What was wrong.
        reason: String,
    },
    /// Exporters the operator runs are not running (their first scrapes
    /// were refused, or timed out through a working tunnel); every other
    /// target is up.
    #[error("every target PromGuard runs is up, but {}", failures.join("; "))]
    ExportersDown {
        /// One sentence per exporter: where nothing listens and what to do.
        failures: Vec<String>,
    },
    /// [`Fleet::verify`] was given no connection to the monitor.
    #[error("the monitor's connection was lost")]
    NoMonitorConnection,
    /// The caller cancelled the run; every state save before is complete.
    #[error("cancelled; every state save before was completed")]
    Cancelled,
}

impl FleetError {
    /// The host this error is about, when it is about one.
    pub fn host(&self) -> Option<&HostName> {
        match self {
            FleetError::NotCreated { host }
            | FleetError::NoAddress { host }
            | FleetError::NotPinned { host }
            | FleetError::UnknownHostKey { host }
            | FleetError::NotExisting { host }
            | FleetError::Task { host, .. }
            | FleetError::Prometheus { host, .. }
            | FleetError::Status { host, .. } => Some(host),
            FleetError::Remote { source, .. } => Some(source.host()),
            FleetError::HostKey(e) => e.host(),
            _ => None,
        }
    }
}

impl From<HostKeyError> for FleetError {
    fn from(e: HostKeyError) -> Self {
        FleetError::HostKey(Box::new(e))
    }
}

/// Wraps a failure of `step`.
fn failed(step: Step) -> impl FnOnce(RemoteError) -> FleetError {
    move |source| FleetError::Remote {
        step,
        source: Box::new(source),
    }
}

/// `host a: why; host b: why`, without saying a host's name twice.
fn list(failures: &[(HostName, FleetError)]) -> String {
    failures
        .iter()
        .map(|(host, e)| {
            let text = e.to_string();
            if text.starts_with(&format!("host {host}")) {
                text
            } else {
                format!("host {host}: {text}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How PromGuard logs in to a deployment's hosts.
#[derive(Clone)]
pub struct Access {
    /// The private key to log in with.
    pub identity: crate::session::Identity,
    /// The SSH port of hosts whose record names none.
    pub default_port: Port,
    /// Opens TCP connections to hosts: a provider's `connect` for the
    /// hosts it made, and a way to reach the user's own hosts (usually a
    /// plain [`crate::tcp_connector`]) for the others.
    pub connector: Connector,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("identity", &self.identity)
            .field("default_port", &self.default_port)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// How to reach `name` according to `state`.
    pub fn target(&self, state: &State, name: &HostName) -> Result<SshTarget, FleetError> {
        let record = state
            .hosts
            .get(name)
            .filter(|r| r.created)
            .ok_or_else(|| FleetError::NotCreated { host: name.clone() })?;
        let address = record
            .public_address
            .ok_or_else(|| FleetError::NoAddress { host: name.clone() })?;
        let port = record.ssh_port.unwrap_or(self.default_port);
        Ok(SshTarget {
            host: name.clone(),
            addr: SocketAddr::new(address, port.get()),
            user: record
                .ssh_user
                .as_ref()
                .map_or_else(|| "root".to_owned(), ToString::to_string),
            expected_host_key: record.ssh_host_key.clone(),
            replacement_host_key: record.ssh_host_key_next.clone(),
            identity: self.identity.clone(),
        })
    }

    /// How to reach `name`, for work that only reads hosts `up` made
    /// (`status`, `tunnel`, `ssh`): fails unless the state pins the host's
    /// SSH host key, as a key accepted on first use could be anyone's.
    pub fn pinned_target(&self, state: &State, name: &HostName) -> Result<SshTarget, FleetError> {
        let target = self.target(state, name)?;
        if target.expected_host_key.is_none() {
            return Err(FleetError::NotPinned { host: name.clone() });
        }
        Ok(target)
    }

    /// Opens a connection to `name`, verified against the host key the
    /// state pins (or the recorded next key of a cut-off replacement).
    /// Blocking.
    pub fn connect(&self, state: &State, name: &HostName) -> Result<Connection, FleetError> {
        let target = self.pinned_target(state, name)?;
        Connection::connect(&target, &self.connector, ConnectOptions::default())
            .map_err(failed(Step::Connecting))
    }
}

/// What the capabilities of `record`'s host are: the provider's for the
/// hosts it made, [`Capabilities::EXISTING`] for the user's own.
pub fn capabilities_of(provider: Capabilities, record: Option<&HostRecord>) -> Capabilities {
    if record.is_some_and(|r| r.existing) {
        Capabilities::EXISTING
    } else {
        provider
    }
}

/// What the recipe converges on `host` of `plan`: its files, rendered with
/// secrets, and on a host PromGuard did not create, what being a guest
/// there takes.
pub fn desired_host(
    plan: &Plan,
    host: &HostPlan,
    programs: Programs,
) -> Result<DesiredHost, FleetError> {
    // The user's own Prometheus is not PromGuard's to run.
    let managed_prometheus = host
        .prometheus
        .as_ref()
        .filter(|p| p.mode == PrometheusMode::Managed);
    let guest = (host.lifecycle == Lifecycle::Existing).then(|| recipe::Guest {
        wireguard_port: host.interface.listen_port,
        scrapers: host.firewall.scrapers.clone(),
        exporter_ports: host
            .exporters
            .iter()
            .filter_map(|e| Port::new(e.listen.port()).ok())
            .collect(),
        probe_ports: host.firewall.probe_ports.clone(),
        comment: promguard_core::prometheus::existing_job_name(&plan.deployment),
    });
    if let Some(rw) = host
        .prometheus
        .as_ref()
        .and_then(|p| p.remote_write.as_ref())
    {
        let missing = if rw.secret_source.is_some() && rw.secret.is_none() {
            Some("secret")
        } else if rw.ca_file.is_some() && rw.ca.is_none() {
            Some("CA bundle")
        } else {
            None
        };
        if let Some(what) = missing {
            return Err(FleetError::UnresolvedRemoteWrite {
                host: host.name.clone(),
                what,
            });
        }
    }
    let mut exporters = Vec::new();
    for e in &host.exporters {
        let Some(packaged) = e.packaged() else {
            continue;
        };
        let mut settings = Vec::new();
        for setting in &packaged.settings {
            let value = setting
                .value
                .clone()
                .ok_or_else(|| FleetError::UnresolvedSetting {
                    host: host.name.clone(),
                    exporter: e.name.clone(),
                    setting: setting.name.clone(),
                })?;
            settings.push((setting.name.clone(), value));
        }
        exporters.push(recipe::ManagedExporter {
            name: e.name.clone(),
            package: packaged.package.clone(),
            listen: e.listen,
            args: packaged.args.clone(),
            settings,
            listen_flag: packaged.listen_flag.clone(),
            data_dir_flag: packaged.data_dir_flag.clone(),
        });
    }
    let node_exporter = host
        .exporters
        .iter()
        .find(|e| e.is_node_exporter())
        .expect("every host runs node_exporter");
    Ok(DesiredHost {
        name: host.name.clone(),
        role: host.role,
        interface: host.interface.name.clone(),
        wireguard_address: host.interface.address,
        files: host_files(host, Secrets::Include)
            .into_iter()
            .map(|f| {
                let kind = match f.kind {
                    HostFileKind::WireGuard => FileKind::WireguardConfig,
                    HostFileKind::Nftables => FileKind::Firewall,
                    HostFileKind::Prometheus => FileKind::PrometheusConfig,
                    HostFileKind::Targets => FileKind::ScrapeTargets,
                    HostFileKind::PeerNames => FileKind::Other,
                    HostFileKind::Rules => FileKind::PrometheusRules,
                    HostFileKind::Alertmanager => FileKind::AlertmanagerConfig,
                    HostFileKind::RemoteWriteSecret | HostFileKind::RemoteWriteCa => {
                        FileKind::PrometheusCredentials
                    }
                };
                DesiredFile::new(kind, f.path, f.mode, f.content.into_bytes())
            })
            .collect(),
        node_exporter_listen: node_exporter.listen,
        exporters,
        prometheus_listen: managed_prometheus.map(|p| p.listen),
        alertmanager_listen: managed_prometheus.map(|_| {
            promguard_core::alerts::ALERTMANAGER_LISTEN
                .parse()
                .expect("a valid socket address")
        }),
        alertmanager_cluster: managed_prometheus.and_then(|p| p.alertmanager_cluster.clone()),
        install_packages: programs == Programs::Packages,
        guest,
    })
}

/// What converging did on one host.
#[derive(Debug, Clone)]
pub struct HostOutcome {
    /// The host.
    pub name: HostName,
    /// Its role.
    pub role: Role,
    /// Files written and actions run.
    pub changed: Vec<String>,
    /// Remote round trips spent (with verification's, on the monitor).
    pub round_trips: u64,
    /// Wall time spent connecting (TCP, SSH handshake, login).
    pub connect_time: Duration,
    /// Wall time spent converging after the connection was up.
    pub converge_time: Duration,
}

/// The result of [`Fleet::converge`].
#[derive(Debug)]
pub struct Converged {
    /// Every host, in plan order.
    pub hosts: Vec<HostOutcome>,
    /// The monitors' connections, kept for verification so that every
    /// host sees exactly one SSH connection per run.
    monitors: BTreeMap<HostName, Connection>,
}

/// The result of [`Fleet::verify`].
#[derive(Debug, Clone)]
pub struct Verified {
    /// Every target of every monitor, sorted by instance and job (a node
    /// that several monitors scrape is listed once per monitor).
    pub targets: Vec<TargetHealth>,
    /// Each monitor's targets, in plan order.
    pub by_monitor: Vec<(HostName, Vec<TargetHealth>)>,
}

/// Counts one host as running its recipe while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything a run over a deployment's hosts needs.
#[derive(Clone)]
pub struct Fleet {
    /// How to log in.
    pub access: Access,
    /// The run's state, saved as it changes.
    pub journal: Arc<Journal>,
    /// What the provider states about its hosts.
    pub capabilities: Capabilities,
    /// Where progress goes.
    pub observer: Arc<dyn Observer>,
    /// The caller's cancellation token.
    pub cancel: CancellationToken,
    /// Hosts worked on at once.
    pub parallel: NonZeroUsize,
    /// How long refused, reset or unreachable SSH connections to one host
    /// are retried before that host counts as unreachable.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("access", &self.access)
            .field("capabilities", &self.capabilities)
            .field("parallel", &self.parallel)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A fleet with no observer, a token nobody cancels, 16 hosts at once
    /// and connections retried for 60 s.
    pub fn new(access: Access, journal: Arc<Journal>, capabilities: Capabilities) -> Self {
        Self {
            access,
            journal,
            capabilities,
            observer: Arc::new(()),
            cancel: CancellationToken::new(),
            parallel: NonZeroUsize::new(16).expect("16 is not zero"),
            connect_timeout: Duration::from_secs(60),
        }
    }

    fn event(&self, event: Event) {
        self.observer.on_event(&event);
    }

    fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            retry_for: self.connect_timeout,
            ..ConnectOptions::default()
        }
    }

    /// Runs `work`; on cancellation closes the journal, waits up to
    /// [`FINISH_ON_CANCEL`] for hosts counted in `busy`, and gives up.
    async fn unless_cancelled<T>(
        &self,
        busy: &Arc<AtomicUsize>,
        work: impl std::future::Future<Output = Result<T, FleetError>>,
    ) -> Result<T, FleetError> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => {
                self.journal.close();
                let count = || busy.load(Ordering::SeqCst);
                if count() > 0 {
                    self.event(Event::Draining { hosts: count(), at_most: FINISH_ON_CANCEL });
                    let deadline = Instant::now() + FINISH_ON_CANCEL;
                    while count() > 0 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(FleetError::Cancelled)
            }
            result = work => result,
        }
    }

    /// Converges every host of `plan` (made against the journal's state,
    /// so that every host exists) concurrently, at most
    /// [`parallel`](Self::parallel) at once, monitor first; records each
    /// host's file digests and pinned host key as it finishes. Hosts that
    /// fail do not stop the others; the error lists every failure.
    pub async fn converge(&self, plan: &Plan) -> Result<Converged, FleetError> {
        let busy = Arc::new(AtomicUsize::new(0));
        self.unless_cancelled(&busy, self.converge_all(plan, &busy))
            .await
    }

    async fn converge_all(
        &self,
        plan: &Plan,
        busy: &Arc<AtomicUsize>,
    ) -> Result<Converged, FleetError> {
        let state = self.journal.snapshot();
        let mut order: Vec<&HostPlan> = plan.hosts.iter().collect();
        // Prometheus' discovery and scrape managers wait seconds before the
        // first scrape: starting it first hides that behind the nodes.
        order.sort_by_key(|h| h.role != Role::Monitor);
        let mut jobs = Vec::new();
        for host in &order {
            self.event(Event::Step {
                host: host.name.clone(),
                step: Step::Waiting,
            });
            let capabilities = capabilities_of(self.capabilities, state.hosts.get(&host.name));
            jobs.push((
                self.access.target(&state, &host.name)?,
                desired_host(plan, host, capabilities.programs)?,
                capabilities,
            ));
        }
        let semaphore = Arc::new(tokio::sync::Semaphore::new(self.parallel.get()));
        let mut checked = self.check_guests(&jobs, &semaphore).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for (index, (target, desired, capabilities)) in jobs.into_iter().enumerate() {
            // Taken in plan order before the task starts, so the monitor
            // really goes first.
            let permit = Arc::clone(&semaphore)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let fleet = self.clone();
            let busy = Arc::clone(busy);
            let rotate = state
                .hosts
                .get(&target.host)
                .is_some_and(|r| r.host_key_needs_replacing(capabilities.host_keys));
            let name = target.host.clone();
            let conn = checked.remove(&name);
            let task = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                fleet.converge_one(&target, &desired, capabilities, rotate, conn, &busy)
            });
            tasks.spawn(async move {
                let result = task.await.unwrap_or_else(|e| {
                    Err(FleetError::Task {
                        host: name.clone(),
                        message: e.to_string(),
                    })
                });
                (name, result.map(|(outcome, conn)| (index, outcome, conn)))
            });
        }
        let mut done = Vec::new();
        let mut monitors = BTreeMap::new();
        let (finished, failures) = join_hosts(&mut tasks).await;
        for (_, (index, outcome, conn)) in finished {
            if outcome.role == Role::Monitor {
                monitors.insert(outcome.name.clone(), conn);
            }
            done.push((index, outcome));
        }
        if !failures.is_empty() {
            return Err(FleetError::Converge {
                failures,
                total: plan.hosts.len(),
            });
        }
        // Plan order, as callers print them.
        let position = |name: &HostName| plan.hosts.iter().position(|h| &h.name == name);
        done.sort_by_key(|(_, h)| position(&h.name));
        Ok(Converged {
            hosts: done.into_iter().map(|(_, h)| h).collect(),
            monitors,
        })
    }

    /// Checks every host PromGuard is a guest on ([`recipe::check`]: its
    /// facts against its plan) before any host changes, so that a
    /// WireGuard interface or port one of them already uses stops the run
    /// with nothing changed anywhere. Returns their connections, for the
    /// converge to go on with: one more round trip on each such host,
    /// none on the others.
    async fn check_guests(
        &self,
        jobs: &[(SshTarget, DesiredHost, Capabilities)],
        semaphore: &Arc<tokio::sync::Semaphore>,
    ) -> Result<BTreeMap<HostName, Connection>, FleetError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (target, desired, capabilities) in jobs.iter().filter(|j| j.1.guest.is_some()) {
            let permit = Arc::clone(semaphore)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let fleet = self.clone();
            let (target, desired, capabilities) = (target.clone(), desired.clone(), *capabilities);
            tasks.spawn_blocking(move || {
                let _permit = permit;
                let result = fleet.check_one(&target, &desired, capabilities);
                if result.is_err() {
                    fleet.event(Event::Finished {
                        host: target.host.clone(),
                        outcome: Outcome::Failed,
                    });
                }
                (target.host, result)
            });
        }
        let (connections, failures) = join_hosts(&mut tasks).await;
        if failures.is_empty() {
            return Ok(connections.into_iter().collect());
        }
        Err(FleetError::Converge {
            failures,
            total: jobs.len(),
        })
    }

    /// Connects to one guest host and checks it. Blocking.
    fn check_one(
        &self,
        target: &SshTarget,
        desired: &DesiredHost,
        capabilities: Capabilities,
    ) -> Result<Connection, FleetError> {
        let conn = self.connect_verified(target, capabilities)?;
        recipe::check(&conn, desired).map_err(failed(Step::Converging))?;
        Ok(conn)
    }

    /// Connects to `target`, refusing a host whose key the state does not
    /// pin when the host's capabilities say it must be. Blocking.
    fn connect_verified(
        &self,
        target: &SshTarget,
        capabilities: Capabilities,
    ) -> Result<Connection, FleetError> {
        let host = &target.host;
        if target.expected_host_key.is_none() {
            match capabilities.host_keys {
                HostKeys::Injected => {
                    return Err(FleetError::UnknownHostKey { host: host.clone() })
                }
                // The user vouches for the keys of their own hosts
                // (config, known_hosts or their yes): never on first use
                // here.
                HostKeys::Vouched => return Err(FleetError::NotPinned { host: host.clone() }),
                _ => {}
            }
        }
        self.event(Event::Step {
            host: host.clone(),
            step: Step::Connecting,
        });
        Connection::connect(target, &self.access.connector, self.connect_options())
            .map_err(failed(Step::Connecting))
    }

    /// One host, on a blocking thread; `checked` is the connection of a
    /// guest host [`Self::check_guests`] checked.
    fn converge_one(
        &self,
        target: &SshTarget,
        desired: &DesiredHost,
        capabilities: Capabilities,
        rotate: bool,
        checked: Option<Connection>,
        busy: &Arc<AtomicUsize>,
    ) -> Result<(HostOutcome, Connection), FleetError> {
        let host = &target.host;
        let step = |step: Step| {
            self.event(Event::Step {
                host: host.clone(),
                step,
            })
        };
        let result = (|| {
            let connecting = Instant::now();
            let conn = match checked {
                Some(conn) => conn,
                None => self.connect_verified(target, capabilities)?,
            };
            let connect_time = connecting.elapsed();
            let converging = Instant::now();
            if rotate {
                step(Step::ReplacingHostKey);
                self.replace_key(&conn, target)?;
            }
            let pinned = (!rotate && target.expected_host_key.is_none())
                .then(|| conn.presented_host_key().clone());
            step(Step::Converging);
            let report = {
                let _busy = Busy::start(busy);
                recipe::converge(&conn, desired).map_err(failed(Step::Converging))?
            };
            let changed: Vec<String> = report
                .changed_files
                .iter()
                .chain(&report.actions)
                .cloned()
                .collect();
            for what in &changed {
                self.event(Event::Changed {
                    host: host.clone(),
                    what: what.clone(),
                });
            }
            self.record_converged(host, desired, pinned, report.guest.clone())?;
            let outcome = HostOutcome {
                name: host.clone(),
                role: desired.role,
                round_trips: conn.round_trips(),
                connect_time,
                converge_time: converging.elapsed(),
                changed,
            };
            Ok((outcome, conn))
        })();
        self.event(Event::Finished {
            host: host.clone(),
            outcome: match &result {
                Ok((o, _)) if o.changed.is_empty() => Outcome::Unchanged,
                Ok((o, _)) => Outcome::Converged {
                    changes: o.changed.len(),
                },
                Err(_) => Outcome::Failed,
            },
        });
        result
    }

    fn record_converged(
        &self,
        host: &HostName,
        desired: &DesiredHost,
        pinned: Option<SshPublicKey>,
        guest: Option<GuestRecord>,
    ) -> Result<(), FleetError> {
        let digests: BTreeMap<String, String> = desired
            .files
            .iter()
            .map(|f| (f.path.clone(), f.sha256()))
            .collect();
        self.journal.update(|state| {
            if let Some(record) = state.hosts.get_mut(host) {
                record.files = digests;
                if let Some(key) = pinned {
                    record.ssh_host_key = Some(key);
                }
                if guest.is_some() {
                    record.guest = guest;
                }
            }
        })?;
        Ok(())
    }

    /// Replaces the injected host key of the host `conn` reaches,
    /// recording each step. Blocking.
    fn replace_key(&self, conn: &Connection, target: &SshTarget) -> Result<(), FleetError> {
        let host = &target.host;
        host_key::replace_injected(
            conn,
            target,
            &self.access.connector,
            |key| {
                self.journal.update(|state| {
                    if let Some(record) = state.hosts.get_mut(host) {
                        record.ssh_host_key_next = Some(key.clone());
                    }
                })
            },
            |key| {
                self.journal.update(|state| {
                    if let Some(record) = state.hosts.get_mut(host) {
                        record.pin_replaced_host_key(key);
                    }
                })
            },
        )?;
        Ok(())
    }

    /// Replaces the injected host key of every created host that still
    /// serves one, concurrently: what a run does when some hosts failed to
    /// come up and it cannot converge. Hosts whose key is not known are
    /// not connected to; every failure is reported.
    pub async fn replace_injected_keys(&self) -> Result<(), FleetError> {
        let busy = Arc::new(AtomicUsize::new(0));
        self.unless_cancelled(&busy, async {
            let state = self.journal.snapshot();
            let mut tasks = tokio::task::JoinSet::new();
            let mut failures = Vec::new();
            for (name, record) in &state.hosts {
                let due = record.created
                    && record.public_address.is_some()
                    && record.host_key_needs_replacing(self.capabilities.host_keys);
                if !due {
                    continue;
                }
                let target = self.access.target(&state, name)?;
                if target.expected_host_key.is_none() {
                    failures.push((
                        name.clone(),
                        FleetError::UnknownHostKey { host: name.clone() },
                    ));
                    continue;
                }
                let fleet = self.clone();
                let name = name.clone();
                tasks.spawn_blocking(move || {
                    fleet.event(Event::Step {
                        host: name.clone(),
                        step: Step::ReplacingHostKey,
                    });
                    let result = Connection::connect(
                        &target,
                        &fleet.access.connector,
                        fleet.connect_options(),
                    )
                    .map_err(failed(Step::Connecting))
                    .and_then(|conn| fleet.replace_key(&conn, &target));
                    fleet.event(Event::Finished {
                        host: name.clone(),
                        outcome: if result.is_ok() {
                            Outcome::HostKeyReplaced
                        } else {
                            Outcome::HostKeyNotReplaced
                        },
                    });
                    (name, result)
                });
            }
            failures.extend(join_hosts(&mut tasks).await.1);
            if failures.is_empty() {
                Ok(())
            } else {
                failures.sort_by(|a, b| a.0.cmp(&b.0));
                Err(FleetError::HostKeys { failures })
            }
        })
        .await
    }

    /// Removes PromGuard from each of `hosts` (hosts of the state that
    /// PromGuard did not create), concurrently: the recipe's leave script
    /// undoes what the host's guest manifest lists, and the record's
    /// files and guest record are cleared. The hosts themselves stay, and
    /// stay in the state: forgetting them is the caller's next step
    /// ([`promguard_cloud`'s `destroy_removed` or `destroy_deployment`]).
    /// Hosts that are not of the user's are refused; every failure is
    /// reported.
    pub async fn leave(&self, hosts: &[HostName]) -> Result<(), FleetError> {
        let busy = Arc::new(AtomicUsize::new(0));
        self.unless_cancelled(&busy, async {
            let state = self.journal.snapshot();
            let mut tasks = tokio::task::JoinSet::new();
            let mut failures = Vec::new();
            for name in hosts {
                let Some(record) = state.hosts.get(name).filter(|r| r.existing) else {
                    failures.push((name.clone(), FleetError::NotExisting { host: name.clone() }));
                    continue;
                };
                if record.public_address.is_none() {
                    // Never reached: nothing of PromGuard's is there.
                    continue;
                }
                let target = match self.access.pinned_target(&state, name) {
                    Ok(t) => t,
                    Err(e) => {
                        failures.push((name.clone(), e));
                        continue;
                    }
                };
                let fleet = self.clone();
                let name = name.clone();
                let busy = Arc::clone(&busy);
                tasks.spawn_blocking(move || {
                    let result = fleet.leave_one(&target, &busy);
                    (name, result)
                });
            }
            failures.extend(join_hosts(&mut tasks).await.1);
            if failures.is_empty() {
                Ok(())
            } else {
                failures.sort_by(|a, b| a.0.cmp(&b.0));
                Err(FleetError::Leave { failures })
            }
        })
        .await
    }

    /// One host of [`Fleet::leave`], on a blocking thread.
    fn leave_one(&self, target: &SshTarget, busy: &Arc<AtomicUsize>) -> Result<(), FleetError> {
        let host = &target.host;
        self.event(Event::Step {
            host: host.clone(),
            step: Step::Leaving,
        });
        let result = (|| {
            let conn = Connection::connect(target, &self.access.connector, self.connect_options())
                .map_err(failed(Step::Connecting))?;
            let output = {
                let _busy = Busy::start(busy);
                conn.exec_root_checked(
                    "removing PromGuard",
                    recipe::guest::leave_script().as_bytes(),
                )
                .map_err(failed(Step::Leaving))?
            };
            recipe::guest::parse_leave(&String::from_utf8_lossy(&output.stdout)).map_err(
                |reason| {
                    failed(Step::Leaving)(RemoteError::Protocol {
                        host: host.clone(),
                        what: "the leave script".into(),
                        reason,
                    })
                },
            )?;
            self.journal.update(|state| {
                if let Some(record) = state.hosts.get_mut(host) {
                    record.files.clear();
                    record.guest = None;
                }
            })?;
            Ok(())
        })();
        self.event(Event::Finished {
            host: host.clone(),
            outcome: if result.is_ok() {
                Outcome::Left
            } else {
                Outcome::Failed
            },
        });
        result
    }

    /// Polls every monitor's Prometheus, on the connections `converged`
    /// kept, all at once, until every target of each is up and no removed
    /// one is left, for at most `timeout`. Adds the round trips to the
    /// monitors' outcomes.
    pub async fn verify(
        &self,
        plan: &Plan,
        converged: &mut Converged,
        timeout: Duration,
    ) -> Result<Verified, FleetError> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut order = Vec::new();
        for monitor in plan.monitors() {
            let conn = converged
                .monitors
                .remove(&monitor.name)
                .ok_or(FleetError::NoMonitorConnection)?;
            let poll = MonitorPoll::of(plan, monitor);
            let name = monitor.name.clone();
            order.push(name.clone());
            self.event(Event::Step {
                host: name.clone(),
                step: Step::Verifying,
            });
            let task = tokio::task::spawn_blocking(move || {
                let before = conn.round_trips();
                let result = poll.run(&conn, timeout);
                (result, conn.round_trips() - before)
            });
            tasks.spawn(async move {
                let joined = task.await.unwrap_or_else(|e| {
                    (
                        Err(FleetError::Task {
                            host: name.clone(),
                            message: e.to_string(),
                        }),
                        0,
                    )
                });
                (name, joined)
            });
        }
        let busy = Arc::new(AtomicUsize::new(0));
        let mut results = self
            .unless_cancelled(&busy, async {
                let mut results = BTreeMap::new();
                while let Some(joined) = tasks.join_next().await {
                    if let Ok((name, result)) = joined {
                        results.insert(name, result);
                    }
                }
                Ok(results)
            })
            .await?;
        let mut by_monitor = Vec::new();
        let mut first_error = None;
        for name in order {
            let (result, round_trips) = results.remove(&name).unwrap_or_else(|| {
                (
                    Err(FleetError::Task {
                        host: name.clone(),
                        message: "the verification task was lost".into(),
                    }),
                    0,
                )
            });
            if let Some(h) = converged.hosts.iter_mut().find(|h| h.name == name) {
                h.round_trips += round_trips;
            }
            self.event(Event::Finished {
                host: name.clone(),
                outcome: if result.is_ok() {
                    Outcome::Verified
                } else {
                    Outcome::VerificationFailed
                },
            });
            match result {
                Ok(targets) => by_monitor.push((name, targets)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let mut targets: Vec<TargetHealth> = by_monitor
            .iter()
            .flat_map(|(_, t)| t.iter().cloned())
            .collect();
        targets.sort_by(|a, b| (&a.instance, &a.job).cmp(&(&b.instance, &b.job)));
        Ok(Verified {
            targets,
            by_monitor,
        })
    }
}

/// What verifying one monitor polls for.
struct MonitorPoll {
    listen: SocketAddr,
    pool: Option<String>,
    expected: Vec<(String, String)>,
    unmanaged: Vec<Unmanaged>,
}

impl MonitorPoll {
    fn of(plan: &Plan, monitor: &HostPlan) -> Self {
        let prometheus = monitor
            .prometheus
            .as_ref()
            .expect("the monitor runs Prometheus");
        // The user's own Prometheus scrapes itself (and more) in jobs of
        // the user's: only PromGuard's job is PromGuard's to check.
        let own_scrape = match &prometheus.mode {
            PrometheusMode::Managed => Some(&prometheus.self_scrape),
            PrometheusMode::Existing { .. } => None,
        };
        // Exporters PromGuard neither installs nor runs: the operator
        // starts them, and a refused scrape is reported at once. Only the
        // hosts this monitor scrapes count.
        let scraped: std::collections::BTreeSet<&str> = prometheus
            .targets
            .iter()
            .map(|t| t.instance.as_str())
            .collect();
        let unmanaged = plan
            .hosts
            .iter()
            .filter(|h| scraped.contains(h.name.as_str()))
            .flat_map(|h| {
                let managed = h
                    .exporters
                    .iter()
                    .find(|e| e.is_node_exporter())
                    .map(|e| format!("http://{}/metrics", e.listen));
                h.exporters
                    .iter()
                    .filter(|e| !e.is_managed())
                    .map(move |e| Unmanaged {
                        job: e.name.to_string(),
                        url: format!("http://{}/metrics", e.listen),
                        instance: h.name.to_string(),
                        listen: e.listen,
                        managed_url: managed.clone(),
                    })
            })
            .collect();
        let expected = prometheus
            .targets
            .iter()
            .chain(own_scrape)
            .map(|t| (t.job.to_string(), format!("http://{}/metrics", t.address)))
            .chain(
                prometheus
                    .probes
                    .iter()
                    .map(|p| (p.job.clone(), probe_scrape_url(p))),
            )
            .collect();
        Self {
            listen: prometheus.listen,
            pool: scrape_pool(prometheus),
            expected,
            unmanaged,
        }
    }

    /// Blocking.
    fn run(&self, conn: &Connection, timeout: Duration) -> Result<Vec<TargetHealth>, FleetError> {
        poll_targets(
            conn,
            self.listen,
            self.pool.as_deref(),
            &self.expected,
            &self.unmanaged,
            timeout,
        )
    }
}

/// The URL Prometheus scrapes for `probe`, as its targets API reports it:
/// the parameters sorted by name and escaped as Go's
/// `url.QueryEscape` does (every byte but letters, digits and `-_.~`).
pub fn probe_scrape_url(probe: &promguard_core::ProbeTarget) -> String {
    fn escape(text: &str) -> String {
        let mut out = String::new();
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else if b == b' ' {
                out.push('+');
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
    format!(
        "http://{}/probe?module={}&target={}",
        probe.prober,
        escape(&probe.module),
        escape(&probe.url)
    )
}

/// The scrape job PromGuard's targets are in on a Prometheus of the
/// user's; `None` when PromGuard runs the Prometheus (every job is its).
pub fn scrape_pool(prometheus: &promguard_core::plan::PrometheusPlan) -> Option<String> {
    match &prometheus.mode {
        PrometheusMode::Managed => None,
        PrometheusMode::Existing { job_name } => Some(job_name.clone()),
    }
}

/// Reads the monitor's targets, sorted by instance and job; only those of
/// scrape job `pool` when given (a Prometheus of the user's). Blocking.
pub fn fetch_targets_of(
    conn: &Connection,
    prometheus: SocketAddr,
    pool: Option<&str>,
) -> Result<Vec<TargetHealth>, FleetError> {
    let mut targets = fetch_targets(conn, prometheus)?;
    if let Some(pool) = pool {
        targets.retain(|t| t.scrape_pool == pool);
    }
    Ok(targets)
}

/// Waits for every per-host task of `tasks`: what finished, and the
/// failures sorted by host (a task that panicked counts as a failure of an
/// `unknown` host, as the runtime does not say whose it was).
async fn join_hosts<T: 'static>(
    tasks: &mut tokio::task::JoinSet<(HostName, Result<T, FleetError>)>,
) -> (Vec<(HostName, T)>, Vec<(HostName, FleetError)>) {
    let mut finished = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, Ok(value))) => finished.push((name, value)),
            Ok((name, Err(e))) => failures.push((name, e)),
            Err(e) => {
                let host = HostName::new("unknown").expect("a valid name");
                failures.push((
                    host.clone(),
                    FleetError::Task {
                        host,
                        message: e.to_string(),
                    },
                ));
            }
        }
    }
    failures.sort_by(|a, b| a.0.cmp(&b.0));
    (finished, failures)
}

/// Reads the monitor's targets, sorted by instance and job. Blocking.
pub fn fetch_targets(
    conn: &Connection,
    prometheus: SocketAddr,
) -> Result<Vec<TargetHealth>, FleetError> {
    let mut targets = prometheus_read(
        conn,
        prometheus,
        prometheus_api::TARGETS_PATH,
        prometheus_api::parse_targets,
    )?;
    targets.sort_by(|a, b| (&a.instance, &a.job).cmp(&(&b.instance, &b.job)));
    Ok(targets)
}

/// A monitor's remote_write queue, read from Prometheus over `conn`;
/// `None` when it writes nowhere.
pub fn fetch_remote_write(
    conn: &Connection,
    prometheus: SocketAddr,
) -> Result<Option<prometheus_api::RemoteWriteQueue>, FleetError> {
    prometheus_read(
        conn,
        prometheus,
        prometheus_api::REMOTE_WRITE_PATH,
        prometheus_api::parse_remote_write,
    )
}

/// The monitor's firing alerts, read from Prometheus over `conn`.
pub fn fetch_alerts(
    conn: &Connection,
    prometheus: SocketAddr,
) -> Result<Vec<prometheus_api::FiringAlert>, FleetError> {
    prometheus_read(
        conn,
        prometheus,
        prometheus_api::ALERTS_PATH,
        prometheus_api::parse_alerts,
    )
}

/// `GET path` from Prometheus at `prometheus` over `conn`, parsed by `parse`.
fn prometheus_read<T>(
    conn: &Connection,
    prometheus: SocketAddr,
    path: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<T, FleetError> {
    let (status, body) = conn
        .http_get(prometheus, path)
        .map_err(failed(Step::Verifying))?;
    let failed = |reason: String| FleetError::Prometheus {
        host: conn.host().clone(),
        reason,
    };
    if status != 200 {
        return Err(failed(format!(
            "Prometheus answered HTTP {status} to {path}"
        )));
    }
    parse(&body).map_err(failed)
}

/// The exporters of `unmanaged` whose scrape in `targets` says they are
/// not running: `(job, url, why)`.
fn unmanaged_failures(
    unmanaged: &[Unmanaged],
    targets: &[TargetHealth],
) -> Vec<(String, String, String)> {
    unmanaged
        .iter()
        .filter_map(|exporter| {
            let target = targets
                .iter()
                .find(|t| t.job == exporter.job && t.scrape_url == exporter.url)?;
            let tunnel_up = targets.iter().any(|t| {
                Some(&t.scrape_url) == exporter.managed_url.as_ref() && t.health == Health::Up
            });
            let why = unmanaged_failure(exporter, target, tunnel_up)?;
            Some((exporter.job.clone(), exporter.url.clone(), why))
        })
        .collect()
}

/// A scrape target of an exporter the operator runs, not PromGuard.
#[derive(Debug, Clone)]
struct Unmanaged {
    job: String,
    url: String,
    instance: String,
    listen: SocketAddr,
    /// The scrape URL of the exporter PromGuard runs on the same host
    /// (node_exporter): when it is up, the tunnel works.
    managed_url: Option<String>,
}

/// Why `target`, an exporter of the operator's, is not up, when its last
/// scrape already tells: nothing listens (refused), or nothing answers
/// although the tunnel to its host works (`tunnel_up`: the host's other
/// targets are up), so waiting longer would not help. `None` while the
/// answer may still change by itself.
fn unmanaged_failure(
    exporter: &Unmanaged,
    target: &TargetHealth,
    tunnel_up: bool,
) -> Option<String> {
    if target.health != Health::Down {
        return None;
    }
    let error = target.last_error.as_str();
    let Unmanaged {
        job,
        instance,
        listen,
        ..
    } = exporter;
    if error.contains("connection refused") {
        return Some(format!(
            "nothing listens on {listen} on {instance}: start the {job} exporter bound to that address"
        ));
    }
    let timed_out = error.contains("deadline exceeded") || error.contains("timeout");
    (timed_out && tunnel_up).then(|| {
        format!(
            "the {job} exporter on {instance} does not answer on {listen} within the scrape timeout, though the tunnel to {instance} works: check that it runs and answers on that address"
        )
    })
}

/// Polls until every `(job, url)` of `expected` is up and nothing else is
/// scraped, or `timeout` passed; an exporter of `unmanaged` whose scrape
/// already says it is not running ([`unmanaged_failure`]) is not waited
/// for: once every other target is up, the poll fails naming it.
/// Blocking.
fn poll_targets(
    conn: &Connection,
    listen: SocketAddr,
    pool: Option<&str>,
    expected: &[(String, String)],
    unmanaged: &[Unmanaged],
    timeout: Duration,
) -> Result<Vec<TargetHealth>, FleetError> {
    let is_expected = |t: &TargetHealth| {
        expected
            .iter()
            .any(|(job, url)| &t.job == job && &t.scrape_url == url)
    };
    let start = Instant::now();
    let mut last: Result<Vec<TargetHealth>, String>;
    let mut delay = Duration::from_millis(100);
    loop {
        match fetch_targets_of(conn, listen, pool) {
            Ok(targets) => {
                let failures = unmanaged_failures(unmanaged, &targets);
                let all_up = expected.iter().all(|(job, url)| {
                    failures.iter().any(|(j, u, _)| j == job && u == url)
                        || targets.iter().any(|t| {
                            &t.job == job && &t.scrape_url == url && t.health == Health::Up
                        })
                });
                // Removed targets must be gone too: Prometheus notices
                // file_sd changes shortly after they are written.
                if all_up && targets.iter().all(is_expected) {
                    if failures.is_empty() {
                        return Ok(targets);
                    }
                    return Err(FleetError::ExportersDown {
                        failures: failures.into_iter().map(|(_, _, why)| why).collect(),
                    });
                }
                last = Ok(targets);
            }
            Err(e) => last = Err(e.to_string()),
        }
        if start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(500));
    }
    let detail = match last {
        Err(e) => format!("Prometheus did not answer: {e}"),
        Ok(targets) => expected
            .iter()
            .filter_map(|(job, url)| {
                match targets
                    .iter()
                    .find(|t| &t.job == job && &t.scrape_url == url)
                {
                    Some(t) if t.health == Health::Up => None,
                    Some(t) => Some(format!(
                        "{} ({job}) at {url} is {}: {}",
                        t.instance,
                        t.health,
                        if t.last_error.is_empty() {
                            "not scraped yet"
                        } else {
                            &t.last_error
                        }
                    )),
                    None => Some(format!("{job} target {url} is not known to Prometheus")),
                }
            })
            .chain(targets.iter().filter(|t| !is_expected(t)).map(|t| {
                format!(
                    "{} ({}) at {} was removed but Prometheus still scrapes it",
                    t.instance, t.job, t.scrape_url
                )
            }))
            .collect::<Vec<_>>()
            .join("; "),
    };
    Err(FleetError::Verify { timeout, detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_urls_are_those_prometheus_reports() {
        let probe = promguard_core::ProbeTarget {
            job: "blackbox_probe".into(),
            prober: "10.0.0.1:9115".parse().unwrap(),
            module: "http_2xx".into(),
            url: "http://[fd00::3]:80/health?x=1".into(),
            instance: HostName::new("web-1").unwrap(),
            region: promguard_core::Region::new("lon1").unwrap(),
            role: Role::Node,
        };
        assert_eq!(
            probe_scrape_url(&probe),
            "http://10.0.0.1:9115/probe?module=http_2xx&target=http%3A%2F%2F%5Bfd00%3A%3A3%5D%3A80%2Fhealth%3Fx%3D1"
        );
    }

    fn target(url: &str, health: Health, error: &str) -> TargetHealth {
        TargetHealth {
            instance: "db-1".into(),
            job: if url.ends_with(":9100/metrics") {
                "node"
            } else {
                "postgres"
            }
            .into(),
            scrape_pool: String::new(),
            scrape_url: url.into(),
            health,
            last_scrape: None,
            last_error: error.into(),
        }
    }

    #[test]
    fn an_exporter_of_the_operators_that_refuses_is_reported_at_once() {
        let exporter = Unmanaged {
            job: "postgres".into(),
            url: "http://[fd00:10::2]:9187/metrics".into(),
            instance: "db-1".into(),
            listen: "[fd00:10::2]:9187".parse().unwrap(),
            managed_url: Some("http://[fd00:10::2]:9100/metrics".into()),
        };
        let refused = target(
            &exporter.url,
            Health::Down,
            "Get \"http://[fd00:10::2]:9187/metrics\": dial tcp [fd00:10::2]:9187: connect: connection refused",
        );
        let node_up = target("http://[fd00:10::2]:9100/metrics", Health::Up, "");
        let node_down = target(
            "http://[fd00:10::2]:9100/metrics",
            Health::Down,
            "context deadline exceeded",
        );
        let failures = unmanaged_failures(
            std::slice::from_ref(&exporter),
            &[refused, node_down.clone()],
        );
        assert_eq!(
            failures[0].2,
            "nothing listens on [fd00:10::2]:9187 on db-1: start the postgres exporter bound to that address"
        );
        // A timeout says little while the tunnel itself may not be up yet.
        let timed_out = target(&exporter.url, Health::Down, "context deadline exceeded");
        assert!(unmanaged_failures(
            std::slice::from_ref(&exporter),
            &[timed_out.clone(), node_down]
        )
        .is_empty());
        let failures = unmanaged_failures(
            std::slice::from_ref(&exporter),
            &[timed_out, node_up.clone()],
        );
        assert!(
            failures[0]
                .2
                .contains("does not answer on [fd00:10::2]:9187"),
            "{failures:?}"
        );
        // Not scraped yet, or up: nothing to say.
        let unknown = target(&exporter.url, Health::Unknown, "");
        assert!(
            unmanaged_failures(std::slice::from_ref(&exporter), &[unknown, node_up.clone()])
                .is_empty()
        );
        let up = target(&exporter.url, Health::Up, "");
        assert!(unmanaged_failures(&[exporter], &[up, node_up]).is_empty());
    }
}
