//! The workflows that touch hosts: `up` (create, converge, verify), `down`,
//! and the connections `status`, `tunnel` and `ssh` need.
//!
//! Data flows one way: config -> plan (core) -> hosts (cloud) -> converge
//! each host (remote) -> verify through the monitor -> state (core). The
//! state is saved after every step that changes what exists, so an
//! interrupted run never forgets a host or a key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_cloud::{CloudProvider, Host, HostRequest};
use promguard_core::config::ProviderKind;
use promguard_core::{Change, HostName, HostPlan, Plan, Role, SshPublicKey, State};
use promguard_remote::recipe::{self, DesiredFile, DesiredHost};
use promguard_remote::{ConnectOptions, Connection, Connector, SshTarget};
use promguard_wg::Secrets;

use crate::commands::plan::make_plan;
use crate::files::{render_host, FileKind};
use crate::progress::Progress;
use crate::project::Project;
use crate::prometheus_api::{self, Health, TargetHealth};

/// Everything a run that talks to hosts needs.
pub struct Context {
    /// Config and paths.
    pub project: Project,
    /// Where hosts come from.
    pub provider: Arc<dyn CloudProvider>,
    /// Private key to log in with.
    pub identity: PathBuf,
    /// Progress display.
    pub progress: Progress,
}

impl Context {
    /// Builds the provider the config names and finds (or, for the local
    /// provider, makes) the login key.
    pub fn new(project: Project, verbose: bool) -> anyhow::Result<Self> {
        let provider: Arc<dyn CloudProvider> = match project.config.provider {
            ProviderKind::Local => Arc::new(LocalProvider::new(
                project.config.deployment.clone(),
                LocalOptions {
                    ssh_port: project.config.ssh.port,
                    hosts: project.config.local.hosts,
                    ..LocalOptions::default()
                },
            )),
            ProviderKind::DigitalOcean => crate::cloud_setup::digitalocean(&project.config)?,
        };
        let identity = match &project.config.ssh.private_key {
            Some(path) => expand_home(path),
            None if project.config.provider == ProviderKind::DigitalOcean => {
                crate::cloud_setup::default_identity(&project.data_dir())
            }
            None => project.data_dir().join("id_ed25519"),
        };
        Ok(Self {
            project,
            provider,
            identity,
            progress: Progress::new(verbose),
        })
    }

    /// The login key's public half, generating the key pair with
    /// `ssh-keygen` when it is PromGuard's own and missing.
    pub fn login_public_key(&self) -> anyhow::Result<SshPublicKey> {
        let public =
            crate::cloud_setup::login_public_key_path(&self.project.config, &self.identity);
        if !self.identity.exists() {
            if self.project.config.ssh.private_key.is_some() {
                bail!(
                    "SSH private key {} (ssh.private_key) does not exist",
                    self.identity.display()
                );
            }
            let dir = self.identity.parent().expect("a file in a directory");
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            set_mode(dir, 0o700)?;
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C"])
                .arg(format!("promguard-{}", self.project.config.deployment))
                .arg("-f")
                .arg(&self.identity)
                .status()
                .context("cannot run ssh-keygen (install openssh-client)")?;
            if !status.success() {
                bail!("ssh-keygen failed to create {}", self.identity.display());
            }
        }
        let text = std::fs::read_to_string(&public)
            .with_context(|| format!("cannot read SSH public key {}", public.display()))?;
        SshPublicKey::parse(&text).map_err(|e| anyhow!("SSH public key {}: {e}", public.display()))
    }

    fn connector(&self) -> Connector {
        let provider = Arc::clone(&self.provider);
        Arc::new(move |addr: SocketAddr| provider.connect(addr))
    }

    /// How to reach `name` according to `state`.
    pub fn target(&self, state: &State, name: &HostName) -> anyhow::Result<SshTarget> {
        let record = state
            .hosts
            .get(name)
            .filter(|r| r.created)
            .ok_or_else(|| anyhow!("host {name} does not exist yet; run `promguard up`"))?;
        let address = record.public_address.ok_or_else(|| {
            anyhow!("host {name} has no public address in the state; run `promguard up`")
        })?;
        let port = record.ssh_port.unwrap_or(self.project.config.ssh.port);
        let expected_host_key = record.ssh_host_key.clone();
        let replacement_host_key = record.ssh_host_key_next.clone();
        Ok(SshTarget {
            host: name.clone(),
            addr: SocketAddr::new(address, port.get()),
            user: "root".to_owned(),
            expected_host_key,
            replacement_host_key,
            identity: self.identity.clone(),
        })
    }

    /// How to reach `name` according to `state`, for commands that only
    /// talk to hosts `up` made (`status`, `tunnel`, `ssh`): fails unless
    /// the state pins the host's SSH host key, as a key accepted on first
    /// use could be anyone's.
    pub fn pinned_target(&self, state: &State, name: &HostName) -> anyhow::Result<SshTarget> {
        let target = self.target(state, name)?;
        if target.expected_host_key.is_none() {
            bail!(
                "host {name} has no pinned SSH host key in the state file {}, and PromGuard never trusts a host key on first use; run `promguard up` to pin it",
                self.project.state_path().display()
            );
        }
        Ok(target)
    }

    /// Opens a connection to `name`, verified against the host key the
    /// state pins (or the recorded next key of a cut-off replacement).
    pub fn connect(&self, state: &State, name: &HostName) -> anyhow::Result<Connection> {
        let target = self.pinned_target(state, name)?;
        Ok(Connection::connect(
            &target,
            &self.connector(),
            ConnectOptions::default(),
        )?)
    }
}

fn expand_home(path: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(rest))
            .unwrap_or_else(|| path.to_owned()),
        Err(_) => path.to_owned(),
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set permissions of {}", path.display()))
}

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Destroying removed hosts was confirmed.
    pub yes: bool,
    /// Hosts converged at once.
    pub parallel: usize,
    /// Bound on waiting for targets.
    pub verify_timeout: Duration,
    /// How long refused, reset or unreachable SSH connections to one host
    /// are retried before that host counts as unreachable.
    pub connect_timeout: Duration,
}

/// What `up` did, per host.
#[derive(Debug, Clone)]
pub struct UpHost {
    /// Host name.
    pub name: HostName,
    /// Role.
    pub role: Role,
    /// Region.
    pub region: String,
    /// Public address.
    pub public_address: String,
    /// WireGuard address.
    pub wireguard_address: String,
    /// Files written and actions taken.
    pub changed: Vec<String>,
    /// Remote round trips spent.
    pub round_trips: u64,
    /// Wall time spent connecting (TCP, SSH handshake, login).
    pub connect_time: Duration,
    /// Wall time spent converging after the connection was up.
    pub converge_time: Duration,
    /// Health of this host's targets (`up`, or the error).
    pub health: String,
}

/// The result of `up`.
#[derive(Debug, Clone)]
pub struct UpReport {
    /// Changes the plan listed.
    pub changes: Vec<Change>,
    /// Per host.
    pub hosts: Vec<UpHost>,
    /// Every target of the monitor.
    pub targets: Vec<TargetHealth>,
    /// Wall time of each phase (plan, create, converge, destroy, verify).
    pub phases: Vec<(String, Duration)>,
}

/// Shared, saved-as-it-changes state of a run.
struct Recorder {
    path: PathBuf,
    state: Mutex<State>,
    saves: Arc<SaveGate>,
}

impl Recorder {
    fn update(&self, f: impl FnOnce(&mut State)) -> anyhow::Result<()> {
        let mut state = self
            .state
            .lock()
            .expect("no panics while holding the state");
        f(&mut state);
        let open = self.saves.open.lock().expect("no panics while saving");
        if !*open {
            bail!("the run was interrupted; the state was not saved again");
        }
        state.save(&self.path)?;
        Ok(())
    }

    fn snapshot(&self) -> State {
        self.state
            .lock()
            .expect("no panics while holding the state")
            .clone()
    }
}

/// Lets state saves happen until a signal closes it; closing waits for a
/// save in progress, so an interrupted run never stops halfway through one.
struct SaveGate {
    open: Mutex<bool>,
    /// Hosts whose recipe is running now. A signal lets them finish: a
    /// remote script cut short can leave a host half configured.
    converging: std::sync::atomic::AtomicUsize,
}

/// Counts one host as converging while it lives.
struct Converging<'a>(&'a SaveGate);

impl<'a> Converging<'a> {
    fn start(gate: &'a SaveGate) -> Self {
        gate.converging
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(gate)
    }
}

impl Drop for Converging<'_> {
    fn drop(&mut self) {
        self.0
            .converging
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How long a signal waits for recipes in progress to finish.
const FINISH_ON_SIGNAL: Duration = Duration::from_secs(30);

/// `up` stopped because of SIGINT or SIGTERM. Every state save before the
/// signal is complete; none happens after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    /// The signal's number (2 for SIGINT, 15 for SIGTERM).
    pub signal: i32,
}

impl Interrupted {
    /// The conventional exit code of a run ended by this signal.
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.signal {
            2 => "SIGINT",
            15 => "SIGTERM",
            _ => "a signal",
        };
        write!(
            f,
            "interrupted by {name}; the state file records every host and key made so far: run `promguard up` again to finish, or `promguard down` to remove everything"
        )
    }
}

impl std::error::Error for Interrupted {}

/// Waits for SIGINT or SIGTERM and returns its number.
async fn termination_signal() -> anyhow::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(tokio::select! {
        _ = int.recv() => 2,
        _ = term.recv() => 15,
    })
}

/// `promguard up`. SIGINT and SIGTERM stop it between state saves and
/// return [`Interrupted`]; blocking work it started (host creation, remote
/// scripts) may still be running, so the caller should exit soon after.
pub async fn up(ctx: &Context, options: &UpOptions) -> anyhow::Result<UpReport> {
    let _lock = ctx.project.lock()?;
    let saves = Arc::new(SaveGate {
        open: Mutex::new(true),
        converging: Default::default(),
    });
    let signals = termination_signal();
    tokio::pin!(signals);
    tokio::select! {
        result = up_locked(ctx, options, &saves) => result,
        signal = &mut signals => {
            let signal = signal?;
            *saves.open.lock().expect("no panics while saving") = false;
            let busy = || saves.converging.load(std::sync::atomic::Ordering::SeqCst);
            if busy() > 0 {
                ctx.progress.note(&format!(
                    "Interrupted: letting {} host(s) finish the step in progress (at most {} s)",
                    busy(),
                    FINISH_ON_SIGNAL.as_secs()
                ));
                let deadline = Instant::now() + FINISH_ON_SIGNAL;
                while busy() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(Interrupted { signal }.into())
        }
    }
}

async fn up_locked(
    ctx: &Context,
    options: &UpOptions,
    saves: &Arc<SaveGate>,
) -> anyhow::Result<UpReport> {
    let mut phases = Phases::start();
    let old_state = ctx.project.load_state()?;
    ctx.provider.preflight().await?;
    let login_key = ctx.login_public_key()?;

    // Hosts the state does not know were made by a run whose state is lost:
    // creating the config's hosts again would duplicate them. Hosts it
    // knows but has not marked created were made by an interrupted run,
    // after their keys were saved: they are adopted below.
    let listed = ctx.provider.list_hosts().await?;
    let unknown: Vec<String> = listed
        .iter()
        .filter(|h| {
            old_state
                .as_ref()
                .is_none_or(|s| !s.hosts.contains_key(&h.name))
        })
        .map(|h| h.name.to_string())
        .collect();
    if !unknown.is_empty() {
        bail!(
            "deployment {} already has host(s) {} that the state file {} does not know; they were made by a run whose state is lost: remove them with `promguard down --discover --yes` (the provider finds them by {}), or adopt them by restoring the state file (it holds their WireGuard keys and pinned SSH host keys)",
            ctx.project.config.deployment,
            unknown.join(", "),
            ctx.project.state_path().display(),
            ctx.provider.discovery_hint(),
        );
    }

    let plan = make_plan(&ctx.project, old_state.as_ref())?;
    let removed: Vec<HostName> = plan
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::RemoveHost { host } => Some(host.clone()),
            _ => None,
        })
        .collect();
    if !removed.is_empty() && !options.yes {
        let names: Vec<String> = removed.iter().map(|h| h.to_string()).collect();
        bail!(
            "this run would destroy {} (no longer in the config); run `promguard plan` to review, then `promguard up --yes`",
            names.join(", ")
        );
    }
    let changes = plan.changes.clone();

    // Record new keys and addresses before anything is created, so nothing
    // made from here on can be forgotten.
    let recorder = Arc::new(Recorder {
        path: ctx.project.state_path(),
        state: Mutex::new(merge_removed(&plan, old_state.as_ref())),
        saves: Arc::clone(saves),
    });
    recorder.update(|_| ())?;
    let adopted: Vec<&Host> = {
        let recorded = recorder.snapshot();
        listed
            .iter()
            .filter(|h| recorded.hosts.get(&h.name).is_some_and(|r| !r.created))
            .collect()
    };
    if !adopted.is_empty() {
        let names: Vec<String> = adopted.iter().map(|h| h.name.to_string()).collect();
        ctx.progress.note(&format!(
            "Adopting {} host(s) an interrupted run created: {}",
            adopted.len(),
            names.join(", ")
        ));
        recorder.update(|state| {
            for host in adopted {
                record_host(state, host);
            }
        })?;
    }
    phases.end("plan");

    // Create what is missing.
    let recorded = recorder.snapshot();
    let to_create: Vec<HostRequest> = plan
        .hosts
        .iter()
        .filter(|h| !recorded.hosts[&h.name].created)
        .map(|h| HostRequest {
            name: h.name.clone(),
            role: h.role,
            region: h.region.clone(),
        })
        .collect();
    if !to_create.is_empty() {
        ctx.progress.note(&format!(
            "Creating {} host(s) on the {} provider",
            to_create.len(),
            ctx.provider.name()
        ));
        // The keys the new hosts will present are recorded before they are
        // requested: a run cut off after the request still verifies them.
        let injected = ctx.provider.prepare_host_keys(&to_create).await?;
        if !injected.is_empty() {
            recorder.update(|state| {
                for (name, key) in &injected {
                    if let Some(record) = state.hosts.get_mut(name).filter(|r| !r.created) {
                        record.ssh_host_key = Some(key.clone());
                        record.ssh_host_key_rotated = false;
                        record.ssh_host_key_next = None;
                    }
                }
            })?;
        }
        ctx.provider.register_ssh_key(&login_key).await?;
        let created = ctx.provider.create_hosts(&to_create).await;
        // Whatever exists now is recorded, even when some creations failed.
        let listed = ctx.provider.list_hosts().await.unwrap_or_default();
        recorder.update(|state| {
            for host in listed
                .iter()
                .chain(created.as_ref().map(|v| v.as_slice()).unwrap_or(&[]))
            {
                record_host(state, host);
            }
        })?;
        if let Err(error) = created {
            // The run stops here, but the hosts that did come up serve a
            // host key whose private half every droplet of their batch can
            // read from the metadata service: replace it on each of them
            // now rather than leave it until a later run.
            let error = anyhow::Error::from(error);
            return Err(match replace_injected_keys(ctx, &recorder, options).await {
                Ok(()) => error,
                Err(also) => anyhow!("{error:#}; also, {also:#}"),
            });
        }
    }
    if to_create.is_empty() {
        // Creating hosts did this; a run that creates none still carries
        // changed ports to the provider's firewall.
        ctx.provider.reconcile_deployment().await?;
    }
    phases.end("create");

    // Plan again: public addresses are known now, so peers get endpoints.
    let state = recorder.snapshot();
    let plan = make_plan(&ctx.project, Some(&state))?;

    // Converge every host concurrently.
    let (hosts, monitor_conn) = converge_all(ctx, &plan, &recorder, options).await?;
    phases.end("converge");

    // Removed hosts go last: the monitor has dropped their peers by now.
    if !removed.is_empty() {
        ctx.progress
            .note(&format!("Destroying {} removed host(s)", removed.len()));
        ctx.provider.destroy_hosts(&removed).await?;
        recorder.update(|state| {
            for name in &removed {
                state.hosts.remove(name);
                state
                    .preshared_keys
                    .retain(|p| &p.node != name && &p.monitor != name);
            }
        })?;
    }
    phases.end("destroy");

    // Verify through the monitor, on the connection converge used.
    let conn = monitor_conn.ok_or_else(|| anyhow!("the monitor's connection was lost"))?;
    let (targets, verify_round_trips) = verify(ctx, &plan, conn, options.verify_timeout).await?;
    phases.end("verify");
    let hosts = hosts
        .into_iter()
        .map(|mut h| {
            if h.role == Role::Monitor {
                h.round_trips += verify_round_trips;
            }
            let mine: Vec<&TargetHealth> = targets
                .iter()
                .filter(|t| t.instance == h.name.as_str())
                .collect();
            h.health = if mine.iter().all(|t| t.health == Health::Up) && !mine.is_empty() {
                "up".to_owned()
            } else {
                mine.iter()
                    .map(|t| format!("{} {}", t.job, t.health))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            h
        })
        .collect();
    Ok(UpReport {
        changes,
        hosts,
        targets,
        phases: phases.done,
    })
}

/// Wall time per phase of a run, for `--report` and benchmarks.
struct Phases {
    last: Instant,
    done: Vec<(String, Duration)>,
}

impl Phases {
    fn start() -> Self {
        Self {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    fn end(&mut self, name: &str) {
        let now = Instant::now();
        self.done.push((name.to_owned(), now - self.last));
        self.last = now;
    }
}

/// The plan's next state, keeping records of hosts that are to be removed
/// until they are really destroyed.
fn merge_removed(plan: &Plan, old: Option<&State>) -> State {
    let mut next = plan.next_state.clone();
    if let Some(old) = old {
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
    }
    next
}

fn record_host(state: &mut State, host: &Host) {
    if let Some(record) = state.hosts.get_mut(&host.name) {
        record.created = true;
        record.provider_id = Some(host.id.clone());
        record.public_address = Some(host.public_address);
        record.ssh_port = promguard_core::Port::new(host.ssh.port()).ok();
        if let Some(key) = &host.ssh_host_key {
            match &record.ssh_host_key {
                // A pinned key is never replaced by what a provider reports.
                Some(_) => {}
                None => record.ssh_host_key = Some(key.clone()),
            }
        }
    }
}

/// What the recipe needs to converge `host`.
pub fn desired_host(ctx: &Context, host: &HostPlan) -> DesiredHost {
    let node_exporter = host
        .exporters
        .iter()
        .find(|e| e.managed)
        .expect("every host runs node_exporter");
    DesiredHost {
        name: host.name.clone(),
        role: host.role,
        interface: host.interface.name.clone(),
        wireguard_address: host.interface.address,
        files: render_host(host, Secrets::Include)
            .into_iter()
            .map(|f| {
                let kind = match f.kind {
                    FileKind::WireGuard => recipe::FileKind::WireguardConfig,
                    FileKind::Nftables => recipe::FileKind::Firewall,
                    FileKind::Prometheus => recipe::FileKind::PrometheusConfig,
                    FileKind::Targets => recipe::FileKind::ScrapeTargets,
                };
                DesiredFile::new(kind, f.path, f.mode, f.content.into_bytes())
            })
            .collect(),
        node_exporter_listen: node_exporter.listen,
        prometheus_listen: host.prometheus.as_ref().map(|p| p.listen),
        install_packages: ctx.provider.hosts_need_packages(),
    }
}

async fn converge_all(
    ctx: &Context,
    plan: &Plan,
    recorder: &Arc<Recorder>,
    options: &UpOptions,
) -> anyhow::Result<(Vec<UpHost>, Option<Connection>)> {
    let parallel = options.parallel;
    let connect_options = ConnectOptions {
        retry_for: options.connect_timeout,
        ..ConnectOptions::default()
    };
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let state = recorder.snapshot();
    for (index, host) in plan.hosts.iter().enumerate() {
        let line = ctx.progress.host(host.name.as_str());
        line.phase("waiting");
        let target = ctx.target(&state, &host.name)?;
        let connector = ctx.connector();
        let desired = desired_host(ctx, host);
        let digests: BTreeMap<String, String> = render_host(host, Secrets::Include)
            .iter()
            .map(|f| (f.path.clone(), f.digest()))
            .collect();
        let semaphore = Arc::clone(&semaphore);
        let recorder = Arc::clone(recorder);
        let connect_options = connect_options.clone();
        let saves = Arc::clone(&recorder.saves);
        // A provider that injects host keys knows every key of a host a
        // recorded run made; a host without one existed before the state
        // knew it, and is never connected to unverified.
        let unknown_key = target.expected_host_key.is_none() && ctx.provider.injects_host_keys();
        // A host key the provider injected is replaced once, right after
        // the first (verified) connection.
        let rotate = state
            .hosts
            .get(&host.name)
            .is_some_and(|r| crate::host_key::needs_rotation(ctx.provider.as_ref(), r))
            .then(|| Arc::clone(&recorder));
        let summary = UpHost {
            name: host.name.clone(),
            role: host.role,
            region: host.region.to_string(),
            public_address: host
                .public_address
                .map(|a| a.to_string())
                .unwrap_or_default(),
            wireguard_address: host.interface.address.to_string(),
            changed: Vec::new(),
            round_trips: 0,
            connect_time: Duration::ZERO,
            converge_time: Duration::ZERO,
            health: String::new(),
        };
        tasks.spawn(async move {
            let _permit = semaphore
                .acquire_owned()
                .await
                .expect("semaphore never closes");
            let name = target.host.clone();
            let result = tokio::task::spawn_blocking(
                move || -> anyhow::Result<(UpHost, Option<SshPublicKey>, Connection)> {
                    if unknown_key {
                        bail!("{}", unknown_host_key(&target.host));
                    }
                    line.phase("connecting");
                    let connecting = Instant::now();
                    let conn = Connection::connect(&target, &connector, connect_options)?;
                    let connect_time = connecting.elapsed();
                    let converging = Instant::now();
                    if let Some(recorder) = &rotate {
                        line.phase("replacing the injected SSH host key");
                        replace_key(recorder, &conn, &target, &connector)?;
                    }
                    let pinned = (rotate.is_none() && target.expected_host_key.is_none())
                        .then(|| conn.presented_host_key().clone());
                    line.phase("converging");
                    let report = {
                        let _converging = Converging::start(&saves);
                        recipe::converge(&conn, &desired)?
                    };
                    for action in report.changed_files.iter().chain(&report.actions) {
                        line.detail(action);
                    }
                    let mut summary = summary;
                    summary.changed = report
                        .changed_files
                        .iter()
                        .chain(&report.actions)
                        .cloned()
                        .collect();
                    summary.round_trips = conn.round_trips();
                    summary.connect_time = connect_time;
                    summary.converge_time = converging.elapsed();
                    line.finish(&if summary.changed.is_empty() {
                        "unchanged".to_owned()
                    } else {
                        format!("converged ({} change(s))", summary.changed.len())
                    });
                    Ok((summary, pinned, conn))
                },
            )
            .await
            .map_err(|e| anyhow!("host {name}: task failed: {e}"))
            .and_then(|r| r);
            match result {
                Ok((summary, pinned, conn)) => {
                    let name = summary.name.clone();
                    recorder.update(|state| {
                        if let Some(record) = state.hosts.get_mut(&name) {
                            record.files = digests;
                            if let Some(key) = pinned {
                                record.ssh_host_key = Some(key);
                            }
                        }
                    })?;
                    // The monitor's connection is kept for verification, so
                    // every host sees exactly one SSH connection per run.
                    let conn = (summary.role == Role::Monitor).then_some(conn);
                    Ok((index, summary, conn))
                }
                Err(e) => Err(e.context(format!("host {name}"))),
            }
        });
    }
    let mut done: Vec<(usize, UpHost)> = Vec::new();
    let mut monitor_conn = None;
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((index, summary, conn))) => {
                done.push((index, summary));
                monitor_conn = monitor_conn.or(conn);
            }
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(format!("a host task failed: {e}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} host(s) failed to converge (the others did): {}",
            failures.len(),
            plan.hosts.len(),
            failures.join("; ")
        );
    }
    done.sort_by_key(|(i, _)| *i);
    Ok((done.into_iter().map(|(_, h)| h).collect(), monitor_conn))
}

/// Why a host whose SSH host key is not known is not connected to.
fn unknown_host_key(name: &HostName) -> String {
    format!(
        "host {name}: its SSH host key is not known (it existed before the state file recorded one), and PromGuard never connects to a host it cannot verify; restore the state file that pinned its key, or remove the deployment with `promguard down --discover --yes` and run `promguard up` again"
    )
}

/// Replaces the injected host key of the host `conn` reaches, recording
/// each step in the state. Blocking.
fn replace_key(
    recorder: &Recorder,
    conn: &Connection,
    target: &SshTarget,
    connector: &Connector,
) -> anyhow::Result<()> {
    crate::host_key::replace_injected(
        conn,
        target,
        connector,
        |key| recorder.update(|state| crate::host_key::pin_next(state, &target.host, key)),
        |key| recorder.update(|state| crate::host_key::pin(state, &target.host, key)),
    )
}

/// Replaces the injected host key of every created host that still serves
/// one, concurrently: what `up` does when some hosts failed to come up and
/// the run cannot converge. Hosts whose key is not known are not connected
/// to; every failure is reported.
async fn replace_injected_keys(
    ctx: &Context,
    recorder: &Arc<Recorder>,
    options: &UpOptions,
) -> anyhow::Result<()> {
    let state = recorder.snapshot();
    let connect_options = ConnectOptions {
        retry_for: options.connect_timeout,
        ..ConnectOptions::default()
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut failures = Vec::new();
    for (name, record) in &state.hosts {
        let due = record.created
            && record.public_address.is_some()
            && crate::host_key::needs_rotation(ctx.provider.as_ref(), record);
        if !due {
            continue;
        }
        let target = ctx.target(&state, name)?;
        if target.expected_host_key.is_none() {
            failures.push(unknown_host_key(name));
            continue;
        }
        let line = ctx.progress.host(name.as_str());
        let connector = ctx.connector();
        let recorder = Arc::clone(recorder);
        let connect_options = connect_options.clone();
        tasks.spawn_blocking(move || -> anyhow::Result<()> {
            line.phase("replacing the injected SSH host key");
            let result = Connection::connect(&target, &connector, connect_options)
                .map_err(anyhow::Error::from)
                .and_then(|conn| replace_key(&recorder, &conn, &target, &connector));
            match &result {
                Ok(()) => line.finish("SSH host key replaced"),
                Err(_) => line.finish("SSH host key not replaced"),
            }
            result.with_context(|| format!("host {}", target.host))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(format!("a host task failed: {e}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "the injected SSH host key could not be replaced on {} host(s): {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

/// Reads the monitor's targets.
pub fn fetch_targets(
    conn: &Connection,
    prometheus: SocketAddr,
) -> anyhow::Result<Vec<TargetHealth>> {
    let (status, body) = conn.http_get(prometheus, prometheus_api::TARGETS_PATH)?;
    if status != 200 {
        bail!(
            "Prometheus answered HTTP {status} to {}",
            prometheus_api::TARGETS_PATH
        );
    }
    let mut targets = prometheus_api::parse_targets(&body).map_err(|e| anyhow!(e))?;
    targets.sort_by(|a, b| (&a.instance, &a.job).cmp(&(&b.instance, &b.job)));
    Ok(targets)
}

async fn verify(
    ctx: &Context,
    plan: &Plan,
    conn: Connection,
    timeout: Duration,
) -> anyhow::Result<(Vec<TargetHealth>, u64)> {
    let monitor = plan.monitor();
    let prometheus = monitor
        .prometheus
        .as_ref()
        .expect("the monitor runs Prometheus");
    let expected: Vec<(String, String)> = prometheus
        .targets
        .iter()
        .map(|t| (t.job.to_string(), format!("http://{}/metrics", t.address)))
        .collect();
    let line = ctx.progress.host(monitor.name.as_str());
    line.phase("verifying targets");
    let listen = prometheus.listen;
    let result =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<TargetHealth>, u64)> {
            let before = conn.round_trips();
            let start = Instant::now();
            let mut last: Result<Vec<TargetHealth>, String>;
            let mut delay = Duration::from_millis(100);
            loop {
                match fetch_targets(&conn, listen) {
                    Ok(targets) => {
                        let all_up = expected.iter().all(|(job, url)| {
                            targets.iter().any(|t| {
                                &t.job == job && &t.scrape_url == url && t.health == Health::Up
                            })
                        });
                        // Removed targets must be gone too: Prometheus notices
                        // file_sd changes shortly after they are written.
                        let expected_target = |t: &TargetHealth| {
                            expected
                                .iter()
                                .any(|(job, url)| &t.job == job && &t.scrape_url == url)
                        };
                        if all_up && targets.iter().all(expected_target) {
                            return Ok((targets, conn.round_trips() - before));
                        }
                        last = Ok(targets);
                    }
                    Err(e) => last = Err(format!("{e:#}")),
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
                        let found = targets
                            .iter()
                            .find(|t| &t.job == job && &t.scrape_url == url);
                        match found {
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
                    .chain(
                        targets
                            .iter()
                            .filter(|t| {
                                !expected
                                    .iter()
                                    .any(|(job, url)| &t.job == job && &t.scrape_url == url)
                            })
                            .map(|t| {
                                format!(
                                    "{} ({}) at {} was removed but Prometheus still scrapes it",
                                    t.instance, t.job, t.scrape_url
                                )
                            }),
                    )
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            bail!(
                "not every target was up after {} s: {detail}; run `promguard status` for details",
                timeout.as_secs()
            )
        })
        .await
        .map_err(|e| anyhow!("verification task failed: {e}"))?;
    match &result {
        Ok(_) => line.finish("every target is up"),
        Err(_) => line.finish("verification failed"),
    }
    result
}

/// `promguard down`: destroys every host of the deployment and forgets
/// them. The provider finds the hosts itself (by tag on a cloud, by its
/// namespace records on the local provider), so hosts an interrupted `up`
/// made before recording them are removed too. Without a state file it
/// refuses unless `discover` is set: destroying what a provider finds under
/// a deployment name nobody has state for must be asked for explicitly.
pub async fn down(ctx: &Context, discover: bool) -> anyhow::Result<usize> {
    let _lock = ctx.project.lock()?;
    let state = ctx.project.load_state()?;
    if state.is_none() && !discover {
        bail!(
            "there is no state file {}; to destroy the hosts the {} provider finds for deployment {} anyway, run `promguard down --discover --yes`",
            ctx.project.state_path().display(),
            ctx.provider.name(),
            ctx.project.config.deployment
        );
    }
    ctx.provider.preflight().await?;
    // The listing only counts hosts; it fails when a host never got an
    // address, and that host must go too.
    let listed = match ctx.provider.list_hosts().await {
        Ok(listed) => listed,
        Err(e) => {
            ctx.progress.note(&format!(
                "Cannot list every host ({e}); destroying the deployment anyway"
            ));
            Vec::new()
        }
    };
    ctx.provider.destroy_deployment().await?;
    if let Some(mut state) = state {
        let count = state
            .hosts
            .values()
            .filter(|h| h.created)
            .count()
            .max(listed.len());
        state.hosts.clear();
        state.preshared_keys.clear();
        state.save(&ctx.project.state_path())?;
        return Ok(count);
    }
    Ok(listed.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use promguard_cloud::CloudError;
    use promguard_core::config::{Config, ProviderKind};
    use std::net::{IpAddr, Ipv4Addr};

    const MONITOR_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob";
    const NODE_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMTtFHcdteJUlDWqgVsR8q4qyEICcbkii8PR2OH/JJiI";

    /// A provider that injects keys like DigitalOcean, scripted per test,
    /// and records every address `up` dials instead of reaching it.
    struct Scripted {
        /// Requests `prepare_host_keys` gives a key (the others exist).
        keys: Vec<(&'static str, &'static str)>,
        /// What `create_hosts` reports; `None`: node-1 fails to start.
        created: Option<Vec<Host>>,
        /// What `list_hosts` shows once `create_hosts` ran.
        after_create: Vec<Host>,
        create_ran: Mutex<bool>,
        dialed: Mutex<Vec<SocketAddr>>,
    }

    fn host(name: &str, last_octet: u8, key: Option<&str>) -> Host {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet));
        Host {
            name: HostName::new(name).unwrap(),
            role: None,
            region: promguard_core::Region::new("tor1").unwrap(),
            id: last_octet.to_string(),
            public_address: ip,
            ssh: SocketAddr::new(ip, 22),
            ssh_host_key: key.map(|k| SshPublicKey::parse(k).unwrap()),
        }
    }

    #[async_trait::async_trait]
    impl CloudProvider for Scripted {
        // A name no code may look at: only the capabilities below count.
        fn name(&self) -> &'static str {
            "scripted"
        }

        fn hosts_need_packages(&self) -> bool {
            true
        }

        fn injects_host_keys(&self) -> bool {
            true
        }

        fn discovery_hint(&self) -> &'static str {
            "their tags"
        }

        async fn preflight(&self) -> Result<(), CloudError> {
            Ok(())
        }
        async fn reconcile_deployment(&self) -> Result<(), CloudError> {
            Ok(())
        }

        async fn register_ssh_key(&self, _key: &SshPublicKey) -> Result<(), CloudError> {
            Ok(())
        }
        async fn prepare_host_keys(
            &self,
            requests: &[HostRequest],
        ) -> Result<Vec<(HostName, SshPublicKey)>, CloudError> {
            Ok(requests
                .iter()
                .filter_map(|r| {
                    self.keys
                        .iter()
                        .find(|(name, _)| *name == r.name.as_str())
                        .map(|(_, key)| (r.name.clone(), SshPublicKey::parse(key).unwrap()))
                })
                .collect())
        }
        async fn create_hosts(&self, _requests: &[HostRequest]) -> Result<Vec<Host>, CloudError> {
            *self.create_ran.lock().unwrap() = true;
            self.created.clone().ok_or_else(|| CloudError::Timeout {
                host: HostName::new("promguard-node-1").unwrap(),
                seconds: 1,
                message: "its status is still \"new\"".into(),
            })
        }
        async fn list_hosts(&self) -> Result<Vec<Host>, CloudError> {
            Ok(if *self.create_ran.lock().unwrap() {
                self.after_create.clone()
            } else {
                Vec::new()
            })
        }
        async fn destroy_hosts(&self, _names: &[HostName]) -> Result<(), CloudError> {
            Ok(())
        }
        async fn destroy_deployment(&self) -> Result<(), CloudError> {
            Ok(())
        }
        fn connect(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
            self.dialed.lock().unwrap().push(addr);
            Err(std::io::ErrorKind::ConnectionRefused.into())
        }
    }

    /// Runs `up` for a monitor and one node against `provider`; returns
    /// the error and the addresses dialed.
    async fn up_with(provider: Scripted) -> (String, Vec<SocketAddr>) {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("promguard.toml");
        std::fs::write(
            &config_path,
            Config::template(ProviderKind::DigitalOcean, 1),
        )
        .unwrap();
        let identity = dir.path().join("id_ed25519");
        std::fs::write(&identity, "not read by these tests").unwrap();
        std::fs::write(dir.path().join("id_ed25519.pub"), MONITOR_KEY).unwrap();
        let provider = Arc::new(provider);
        let ctx = Context {
            project: Project::load(Some(&config_path)).unwrap(),
            provider: provider.clone(),
            identity,
            progress: Progress::new(false),
        };
        let options = UpOptions {
            yes: false,
            parallel: 4,
            verify_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(100),
        };
        let error = up(&ctx, &options).await.unwrap_err();
        let dialed = provider.dialed.lock().unwrap().clone();
        (format!("{error:#}"), dialed)
    }

    // Regression: when one droplet failed to become active, `up` stopped
    // before replacing the injected host key of the ones that came up.
    #[tokio::test]
    async fn a_failed_host_does_not_keep_the_others_on_their_injected_key() {
        let monitor = host("promguard-monitor-1", 1, Some(MONITOR_KEY));
        let (error, dialed) = up_with(Scripted {
            keys: vec![
                ("promguard-monitor-1", MONITOR_KEY),
                ("promguard-node-1", NODE_KEY),
            ],
            created: None,
            after_create: vec![monitor.clone()],
            create_ran: Mutex::new(false),
            dialed: Mutex::new(Vec::new()),
        })
        .await;
        assert!(error.contains("promguard-node-1"), "{error}");
        assert!(error.contains("could not be replaced"), "{error}");
        assert!(dialed.contains(&monitor.ssh), "{dialed:?}: {error}");
    }

    // Regression: a droplet that existed before the state knew it (it had
    // no address yet when `up` checked) was adopted without a host key and
    // connected to unverified.
    #[tokio::test]
    async fn a_host_whose_key_is_unknown_is_never_connected_to() {
        let monitor = host("promguard-monitor-1", 1, Some(MONITOR_KEY));
        let node = host("promguard-node-1", 2, None);
        let (error, dialed) = up_with(Scripted {
            keys: vec![("promguard-monitor-1", MONITOR_KEY)],
            created: Some(vec![monitor.clone(), node.clone()]),
            after_create: vec![monitor.clone(), node.clone()],
            create_ran: Mutex::new(false),
            dialed: Mutex::new(Vec::new()),
        })
        .await;
        assert!(
            error.contains("promguard-node-1: its SSH host key is not known"),
            "{error}"
        );
        assert!(!dialed.contains(&node.ssh), "{dialed:?}");
        assert!(dialed.contains(&monitor.ssh), "{dialed:?}");
    }
}
