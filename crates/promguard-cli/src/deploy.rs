//! The glue of the workflows that touch hosts: `up` (provision with
//! `promguard-cloud`, converge and verify with `promguard-remote`, destroy
//! removed hosts) and `down`, plus what only a command line has: the
//! provider and login key chosen from the config and the environment.
//!
//! The libraries do the work and report it as events ([`Progress`] renders
//! them); this module orders the steps, measures their time and turns the
//! result into what `up` prints.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_cloud::none::NoProvider;
use promguard_cloud::provision::{self, ProvisionError, WithoutState};
use promguard_cloud::CloudProvider;
use promguard_core::config::ProviderKind;
use promguard_core::state::Preshared;
use promguard_core::{Change, HostName, Journal, Lifecycle, Plan, SshPublicKey, State, StateStore};
use promguard_remote::fleet::{Access, Fleet};
use promguard_remote::{CancellationToken, Connection, Health, Identity, SshTarget, TargetHealth};

use crate::progress::Progress;
use crate::project::Project;

/// Everything a run that talks to hosts needs.
pub struct Context {
    /// Config and paths.
    pub project: Project,
    /// Where hosts come from.
    pub provider: Arc<dyn CloudProvider>,
    /// PromGuard's login key file (the one the provider authorizes).
    pub identity: PathBuf,
    /// What logs in: that key, or the user's ssh-agent for a deployment
    /// of hosts the user runs without `ssh.private_key`.
    pub login: Identity,
    /// Progress display.
    pub progress: Progress,
}

impl Context {
    /// Builds the provider the config names (none when every host is one
    /// the user runs) and finds (or, for the local provider, makes) the
    /// login key.
    pub fn new(project: Project, verbose: bool) -> anyhow::Result<Self> {
        let provider: Arc<dyn CloudProvider> = match project.config.provider {
            _ if !needs_provider(&project) => {
                Arc::new(NoProvider::new(project.config.deployment.clone()))
            }
            ProviderKind::Local => Arc::new(LocalProvider::new(
                project.config.deployment.clone(),
                LocalOptions {
                    ssh_port: project.config.ssh.port,
                    hosts: project.config.local.hosts,
                    extra_mirror_packages: mirror_packages(&project.config),
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
        let login = if project.config.ssh.private_key.is_none() && !project.config.creates_hosts() {
            Identity::Agent
        } else {
            Identity::File(identity.clone())
        };
        Ok(Self {
            project,
            provider,
            identity,
            login,
            progress: Progress::new(verbose),
        })
    }

    /// The login key's public half, for the provider to authorize on the
    /// hosts it creates, generating the key pair with `ssh-keygen` when it
    /// is PromGuard's own and missing. `None` when the config creates no
    /// host: hosts the user runs already accept the user's own key
    /// (`ssh.private_key`, or the ssh-agent's), so there is nothing to
    /// register and no key of PromGuard's to make.
    pub fn login_public_key(&self) -> anyhow::Result<Option<SshPublicKey>> {
        if !self.project.config.creates_hosts() {
            return Ok(None);
        }
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
        SshPublicKey::parse(&text)
            .map(Some)
            .map_err(|e| anyhow!("SSH public key {}: {e}", public.display()))
    }

    /// How to log in to the deployment's hosts.
    pub fn access(&self) -> Access {
        let provider = Arc::clone(&self.provider);
        Access {
            identity: self.login.clone(),
            default_port: self.project.config.ssh.port,
            connector: Arc::new(move |addr: SocketAddr| provider.connect(addr)),
        }
    }

    /// How to reach `name` according to `state`.
    pub fn target(&self, state: &State, name: &HostName) -> anyhow::Result<SshTarget> {
        Ok(self.access().target(state, name)?)
    }

    /// How to reach `name`, for commands that only talk to hosts `up` made
    /// (`status`, `tunnel`, `ssh`): fails unless the state pins the host's
    /// SSH host key.
    pub fn pinned_target(&self, state: &State, name: &HostName) -> anyhow::Result<SshTarget> {
        self.access()
            .pinned_target(state, name)
            .with_context(|| format!("state file {}", self.project.state_path().display()))
    }

    /// Opens a connection to `name`, verified against the pinned host key.
    pub fn connect(&self, state: &State, name: &HostName) -> anyhow::Result<Connection> {
        Ok(self.access().connect(state, name)?)
    }
}

/// Whether the deployment needs its provider: it creates a host, or the
/// state records a host that is not one the user runs (a provider made
/// it, or an interrupted run may have: only the provider can destroy it).
/// A deployment of existing hosts only needs no cloud token or local
/// namespaces. A state that cannot be read counts as none here; the run
/// reports it when it loads the state.
fn needs_provider(project: &Project) -> bool {
    project.config.creates_hosts()
        || project
            .load_state()
            .ok()
            .flatten()
            .is_some_and(|state| state.hosts.values().any(|record| !record.existing))
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
    pub parallel: NonZeroUsize,
    /// Bound on waiting for targets.
    pub verify_timeout: Duration,
    /// How long refused, reset or unreachable SSH connections to one host
    /// are retried before that host counts as unreachable (also the bound
    /// on reading an existing host's SSH host key).
    pub connect_timeout: Duration,
    /// Whether SSH host keys of existing hosts seen for the first time
    /// are pinned, or the user is asked.
    pub new_host_keys: crate::trust::NewHostKeys,
}

/// What `up` did, per host.
#[derive(Debug, Clone)]
pub struct UpHost {
    /// What converging did.
    pub outcome: promguard_remote::HostOutcome,
    /// Region.
    pub region: String,
    /// Public address.
    pub public_address: String,
    /// WireGuard address.
    pub wireguard_address: String,
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
    /// Every target of every monitor.
    pub targets: Vec<TargetHealth>,
    /// Each monitor's targets, in plan order.
    pub by_monitor: Vec<(HostName, Vec<TargetHealth>)>,
    /// Wall time of each phase (plan, create, converge, destroy, verify).
    pub phases: Vec<(String, Duration)>,
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

/// The packages the local provider's mirror serves besides its own: the
/// managed exporters' and `[local] mirror_packages`, sorted, so that the
/// cached mirror is the same for the same set.
fn mirror_packages(config: &promguard_core::config::Config) -> Vec<String> {
    let mut packages: Vec<String> = config
        .hosts()
        .flat_map(|h| h.exporters.iter())
        .filter_map(|e| e.managed.as_ref().map(|m| m.package.to_string()))
        .chain(config.local.mirror_packages.iter().map(|p| p.to_string()))
        .collect();
    packages.sort();
    packages.dedup();
    packages
}

/// Plans the project against `state` and adds the file changes on hosts
/// that exist.
pub fn make_plan(project: &Project, state: Option<&State>) -> anyhow::Result<Plan> {
    let mut plan = promguard_core::planner::plan(&project.config, state)?;
    // Before the file digests are compared: Alertmanager's config holds it.
    let password = smtp_password(project)?;
    let remote_write = remote_write_secrets(project)?;
    for host in &mut plan.hosts {
        if let Some(p) = &mut host.prometheus {
            p.smtp_password = password.clone();
            if let Some(rw) = &mut p.remote_write {
                rw.secret = remote_write.0.clone();
                rw.ca = remote_write.1.clone();
            }
        }
        resolve_exporter_settings(project, host)?;
    }
    if let Some(state) = state {
        promguard_wg::files::add_file_changes(&mut plan, state);
    }
    Ok(plan)
}

/// Reads the secret settings of `host`'s managed exporters from the files
/// (relative to the config's directory; one trailing newline is not part
/// of the value) and environment variables the config names. Never
/// printed: an error names the source, not the value.
fn resolve_exporter_settings(
    project: &Project,
    host: &mut promguard_core::HostPlan,
) -> anyhow::Result<()> {
    use promguard_core::exporters::{SettingSource, SettingValue};
    for exporter in &mut host.exporters {
        let name = exporter.name.clone();
        let promguard_core::ExporterKind::Packaged(packaged) = &mut exporter.kind else {
            continue;
        };
        for setting in &mut packaged.settings {
            let what = format!("{} of exporter {name} on {}", setting.name, host.name);
            let text = match &setting.source {
                SettingSource::Value(_) => continue,
                SettingSource::Env(var) => std::env::var(var).with_context(|| {
                    format!("{what} comes from ${var}, which is not set (or not UTF-8); set it")
                })?,
                SettingSource::File(file) => read_secret_file(project, file, &what)?,
            };
            let value = SettingValue::new(text, true).map_err(|reason| {
                anyhow::anyhow!("{what} ({}) is refused: {reason}", setting.source)
            })?;
            setting.value = Some(value);
        }
    }
    Ok(())
}

/// The secret in `file` (relative to the config's directory): its text
/// without one trailing newline. `what` names it in the error, which never
/// holds the secret.
fn read_secret_file(
    project: &Project,
    file: &std::path::Path,
    what: &str,
) -> anyhow::Result<String> {
    let path = project.dir.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {what} from {}", path.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

/// The remote_write password or token and CA bundle the config names
/// (files relative to the config's directory; one trailing newline is not
/// part of a secret). Never printed: an error names the source.
fn remote_write_secrets(
    project: &Project,
) -> anyhow::Result<(Option<promguard_core::plan::Secret>, Option<String>)> {
    use promguard_core::exporters::SettingSource;
    let Some(rw) = &project.config.remote_write else {
        return Ok((None, None));
    };
    let secret = match rw.auth.secret_source() {
        None => None,
        Some(SettingSource::Value(_)) => {
            anyhow::bail!("the remote_write secret must come from a file or the environment")
        }
        Some(SettingSource::Env(var)) => Some(std::env::var(var).with_context(|| {
            format!("the remote_write secret comes from ${var}, which is not set (or not UTF-8); set it")
        })?),
        Some(SettingSource::File(file)) => Some(read_secret_file(
            project,
            file,
            "the remote_write secret",
        )?),
    };
    if let Some(secret) = &secret {
        anyhow::ensure!(
            !secret.is_empty() && !secret.contains(['\n', '\r', '\0']),
            "the remote_write secret is empty or spans several lines"
        );
    }
    let ca = match &rw.ca_file {
        None => None,
        Some(file) => {
            let path = project.dir.join(file);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read the remote_write CA bundle {} (remote_write.ca_file)",
                    path.display()
                )
            })?;
            anyhow::ensure!(
                text.contains("-----BEGIN CERTIFICATE-----"),
                "{} (remote_write.ca_file) holds no PEM certificate",
                path.display()
            );
            Some(text)
        }
    };
    Ok((secret.map(promguard_core::plan::Secret::new), ca))
}

/// The SMTP password `alerts.email` names: an environment variable, or a
/// file (relative to the config's directory; one trailing newline is not
/// part of it). Never printed.
fn smtp_password(project: &Project) -> anyhow::Result<Option<promguard_core::plan::SmtpPassword>> {
    let Some(email) = &project.config.alerts.email else {
        return Ok(None);
    };
    let password = if let Some(var) = &email.password_env {
        std::env::var(var).with_context(|| {
            format!("alerts.email.password_env names {var}, which is not set (or not UTF-8); set it to the SMTP password")
        })?
    } else if let Some(file) = &email.password_file {
        read_secret_file(
            project,
            file,
            "the SMTP password (alerts.email.password_file)",
        )?
    } else {
        return Ok(None);
    };
    anyhow::ensure!(
        !password.is_empty() && !password.contains(['\n', '\r', '\0']),
        "the SMTP password (alerts.email) is empty or spans several lines"
    );
    Ok(Some(promguard_core::plan::SmtpPassword::new(password)))
}

/// `promguard up`. Cancelling `cancel` stops it between state saves (hosts
/// whose recipe runs get a moment to finish it); blocking work it started
/// (host creation, remote scripts) may still be running then, so the
/// caller should exit soon after.
pub async fn up(
    ctx: &Context,
    options: &UpOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<UpReport> {
    let _lock = ctx.project.lock()?;
    run_up(ctx, options, cancel).await
}

/// `promguard rotate`: new WireGuard keys for `hosts` (every host when
/// empty), and with [`Preshared::Rotate`] new preshared keys for their
/// pairs, saved before any host changes (each old key is kept beside the
/// new one until its host runs the new one); then the run `up` does
/// switches both ends of every tunnel.
pub async fn rotate(
    ctx: &Context,
    options: &UpOptions,
    hosts: &[HostName],
    preshared: Preshared,
    cancel: &CancellationToken,
) -> anyhow::Result<(Vec<HostName>, UpReport)> {
    let _lock = ctx.project.lock()?;
    let store = ctx.project.store();
    let mut state = ctx.project.existing_state()?;
    if let Some(unknown) = hosts.iter().find(|h| !state.hosts.contains_key(*h)) {
        bail!("there is no host {unknown} in the deployment; `promguard status` lists them");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rotated = state.rotate_keys(hosts, preshared, now);
    store.save(&state)?;
    Ok((rotated, run_up(ctx, options, cancel).await?))
}

async fn run_up(
    ctx: &Context,
    options: &UpOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<UpReport> {
    let mut phases = Phases::start();
    let store: Arc<dyn StateStore> = Arc::new(ctx.project.store());
    let old = store.load_for(&ctx.project.config.deployment)?;
    let login_key = ctx.login_public_key()?;
    let plan = make_plan(&ctx.project, old.as_ref())?;
    let plan = crate::trust::resolve_addresses(ctx, plan).await?;
    let changes = plan.changes.clone();
    if !plan.removed_hosts().is_empty() && !options.yes {
        bail!(
            "this run would {} (no longer in the config); run `promguard plan` to review, then `promguard up --yes`",
            crate::trust::removals(&plan)
        );
    }
    let journal = Arc::new(Journal::new(
        Arc::clone(&store),
        old.unwrap_or_else(|| State::new(ctx.project.config.deployment.clone())),
    ));
    let observer = Arc::new(ctx.progress.clone());
    let fleet = Fleet {
        observer: observer.clone(),
        cancel: cancel.clone(),
        parallel: options.parallel,
        connect_timeout: options.connect_timeout,
        ..Fleet::new(
            ctx.access(),
            Arc::clone(&journal),
            ctx.provider.capabilities(),
        )
    };
    let provider = ctx.provider.as_ref();
    phases.end("plan");
    match provision::provision(
        provider,
        &plan,
        &journal,
        login_key.as_ref(),
        &*observer,
        cancel,
    )
    .await
    {
        Ok(_) => {}
        Err(ProvisionError::Create { source, .. }) => {
            // The run stops here, but the hosts that did come up serve a
            // host key whose private half every droplet of their batch can
            // read from the metadata service: replace it on each of them
            // now rather than leave it until a later run.
            let error = anyhow::Error::from(source);
            return Err(match fleet.replace_injected_keys().await {
                Ok(()) => error,
                Err(also) => anyhow!("{error:#}; also, {also:#}"),
            });
        }
        Err(e) => return Err(e.into()),
    }
    phases.end("create");

    // Plan again: public addresses are known now, so peers get endpoints.
    let plan = make_plan(&ctx.project, Some(&journal.snapshot()))?;
    crate::trust::before_converge(ctx, &journal, &plan, options, cancel).await?;
    let mut converged = fleet.converge(&plan).await?;
    let names: Vec<HostName> = converged.hosts.iter().map(|h| h.name.clone()).collect();
    if journal.snapshot().rotation_pending() {
        // Every host runs its new key now.
        journal.update(|state| state.forget_previous_keys(&names))?;
    }
    phases.end("converge");

    // Removed hosts go last: the monitor has dropped their peers by now.
    // PromGuard leaves the user's own hosts (they stay) before the state
    // forgets them, and destroys the ones it made.
    let leaving = plan.removed_hosts_of(Lifecycle::Existing);
    if !leaving.is_empty() {
        fleet.leave(&leaving).await?;
    }
    provision::destroy_removed(provider, &plan, &journal, &*observer, cancel).await?;
    phases.end("destroy");

    let verified = fleet
        .verify(&plan, &mut converged, options.verify_timeout)
        .await?;
    phases.end("verify");
    let hosts = converged
        .hosts
        .into_iter()
        .filter_map(|outcome| {
            let host = plan.host(&outcome.name)?;
            let mine: Vec<&TargetHealth> = verified
                .targets
                .iter()
                .filter(|t| t.instance == host.name.as_str())
                .collect();
            let health = if mine.iter().all(|t| t.health == Health::Up) && !mine.is_empty() {
                "up".to_owned()
            } else {
                mine.iter()
                    .map(|t| format!("{} {}", t.job, t.health))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Some(UpHost {
                region: host.region.to_string(),
                public_address: host
                    .public_address
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                wireguard_address: host.interface.address.to_string(),
                health,
                outcome,
            })
        })
        .collect();
    Ok(UpReport {
        changes,
        hosts,
        targets: verified.targets,
        by_monitor: verified.by_monitor,
        phases: phases.done,
    })
}

/// What `promguard down` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownReport {
    /// Hosts PromGuard made, destroyed.
    pub destroyed: usize,
    /// Hosts of the user's that PromGuard was removed from; they stay.
    pub left: Vec<HostName>,
}

/// `promguard down`: removes PromGuard from every host of the user's
/// (they stay), then destroys every host it made and forgets them all.
/// Without a state file it refuses unless `without_state` says to destroy
/// what the provider finds.
pub async fn down(
    ctx: &Context,
    without_state: WithoutState,
    cancel: &CancellationToken,
) -> anyhow::Result<DownReport> {
    let _lock = ctx.project.lock()?;
    let store: Arc<dyn StateStore> = Arc::new(ctx.project.store());
    let mut left = Vec::new();
    if let Some(state) = store.load_for(&ctx.project.config.deployment)? {
        left = state
            .hosts
            .iter()
            .filter(|(_, r)| r.existing)
            .map(|(name, _)| name.clone())
            .collect();
        if !left.is_empty() {
            let journal = Arc::new(Journal::new(Arc::clone(&store), state));
            let fleet = Fleet {
                observer: Arc::new(ctx.progress.clone()),
                cancel: cancel.clone(),
                ..Fleet::new(ctx.access(), journal, ctx.provider.capabilities())
            };
            fleet.leave(&left).await?;
        }
    }
    let destroyed = provision::destroy_deployment(
        ctx.provider.as_ref(),
        &ctx.project.store(),
        &ctx.project.config.deployment,
        without_state,
        &ctx.progress,
    )
    .await?;
    Ok(DownReport { destroyed, left })
}

#[cfg(test)]
mod tests {
    use super::*;
    use promguard_cloud::{CloudError, Host, HostRequest};

    fn email_project(dir: &std::path::Path, password: &str) -> Project {
        let path = dir.join("promguard.toml");
        std::fs::write(
            &path,
            format!(
                "[alerts.email]\nto = \"ops@example.com\"\nfrom = \"pg@example.com\"\n\
                 smarthost = \"smtp.example.com:587\"\nusername = \"pg\"\n{password}\n"
            ),
        )
        .unwrap();
        Project::load(Some(&path)).unwrap()
    }

    #[test]
    fn the_smtp_password_comes_from_its_file_beside_the_config_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("smtp-password"), "s3cr3t 'x\n").unwrap();
        let project = email_project(dir.path(), "password_file = \"smtp-password\"");
        let plan = make_plan(&project, None).unwrap();
        let monitor = plan.monitor().prometheus.as_ref().unwrap();
        let password = monitor.smtp_password.as_ref().unwrap();
        assert_eq!(password.expose(), "s3cr3t 'x");
        assert!(!format!("{plan:?}").contains("s3cr3t"));
        let files = promguard_wg::files::host_files(plan.monitor(), promguard_wg::Secrets::Redact);
        assert!(files.iter().all(|f| !f.content.contains("s3cr3t")));
        let files = promguard_wg::files::host_files(plan.monitor(), promguard_wg::Secrets::Include);
        let am = files
            .iter()
            .find(|f| f.path == promguard_core::alerts::ALERTMANAGER_CONFIG_PATH)
            .unwrap();
        assert!(am.content.contains("s3cr3t"), "{}", am.content.len());
        assert_eq!(am.mode, 0o600);
        // A password of several lines is refused.
        std::fs::write(dir.path().join("smtp-password"), "a\nb\n").unwrap();
        let err = make_plan(&project, None).unwrap_err().to_string();
        assert!(err.contains("several lines"), "{err}");
        std::fs::remove_file(dir.path().join("smtp-password")).unwrap();
        let err = make_plan(&project, None).unwrap_err().to_string();
        assert!(err.contains("password_file"), "{err}");
        let project = email_project(dir.path(), "password_env = \"PROMGUARD_TEST_NO_SUCH_VAR\"");
        let err = make_plan(&project, None).unwrap_err().to_string();
        assert!(err.contains("PROMGUARD_TEST_NO_SUCH_VAR"), "{err}");
    }

    #[test]
    fn the_remote_write_secret_and_ca_are_read_beside_the_config_and_the_secret_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("promguard.toml");
        std::fs::write(
            &path,
            "[monitor]\nreplicas = 2\n[remote_write]\nurl = \"https://vm.example.com/api/v1/write\"\n\
             username = \"pg\"\npassword_file = \"rw.pw\"\nca_file = \"ca.pem\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("rw.pw"), "wr1te-s3cret\n").unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let project = Project::load(Some(&path)).unwrap();
        let plan = make_plan(&project, None).unwrap();
        assert!(!format!("{plan:?}").contains("wr1te-s3cret"));
        assert_eq!(plan.monitors().count(), 2);
        for monitor in plan.monitors() {
            let secret_path = format!(
                "{}/{}",
                promguard_core::prometheus::TARGETS_DIR,
                promguard_core::topology::REMOTE_WRITE_SECRET_FILE
            );
            let files = promguard_wg::files::host_files(monitor, promguard_wg::Secrets::Include);
            let secret = files.iter().find(|f| f.path == secret_path).unwrap();
            assert_eq!(
                (secret.content.as_str(), secret.mode),
                ("wr1te-s3cret", 0o600)
            );
            let config = files
                .iter()
                .find(|f| f.path == promguard_core::prometheus::CONFIG_PATH)
                .unwrap();
            assert!(!config.content.contains("wr1te-s3cret"));
            assert!(config
                .content
                .contains(&format!("password_file: \"{secret_path}\"")));
            assert!(config.content.contains("replica: \""));
            assert!(files
                .iter()
                .any(|f| f.content.contains("BEGIN CERTIFICATE")));
            let shown = promguard_wg::files::host_files(monitor, promguard_wg::Secrets::Redact);
            assert!(shown.iter().all(|f| !f.content.contains("wr1te-s3cret")));
        }
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        let err = make_plan(&project, None).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        std::fs::remove_file(dir.path().join("rw.pw")).unwrap();
        let err = format!("{:#}", make_plan(&project, None).unwrap_err());
        assert!(err.contains("rw.pw"), "{err}");
    }

    use promguard_core::config::{Config, ProviderKind};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Mutex;

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

        fn capabilities(&self) -> promguard_core::Capabilities {
            promguard_core::Capabilities {
                programs: promguard_core::Programs::Packages,
                host_keys: promguard_core::HostKeys::Injected,
                lifecycle: promguard_core::Lifecycle::Disposable,
            }
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
            login: Identity::File(identity.clone()),
            identity,
            progress: Progress::new(false),
        };
        let options = UpOptions {
            yes: false,
            parallel: std::num::NonZeroUsize::new(4).unwrap(),
            verify_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(100),
            new_host_keys: crate::trust::NewHostKeys::Ask,
        };
        let error = up(&ctx, &options, &CancellationToken::new())
            .await
            .unwrap_err();
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
