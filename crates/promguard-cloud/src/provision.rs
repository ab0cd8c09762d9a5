//! Making the hosts a plan needs, in an order that survives being cut off
//! anywhere: the plan's keys and addresses are saved before anything is
//! created; the SSH host keys a provider will inject are saved before the
//! create request; every host is recorded as soon as it exists; hosts an
//! interrupted run created (after saving their keys) are adopted; hosts the
//! state does not know at all stop the run, as creating the config's hosts
//! again would duplicate them.
//!
//! Every step is saved through the caller's [`Journal`]. Cancelling the
//! caller's token closes the journal (a save in progress completes, none
//! starts) and ends the call with [`ProvisionError::Cancelled`].

use std::future::Future;

use promguard_core::{
    Change, Event, HostName, Journal, Lifecycle, Observer, Plan, Port, SshPublicKey, State,
    StateStore,
};
pub use tokio_util::sync::CancellationToken;

use crate::{CloudError, CloudProvider, Host, HostRequest};

/// The provider step an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionStep {
    /// Checking that the provider can work here.
    Preflight,
    /// Listing the deployment's hosts.
    List,
    /// Preparing the SSH host keys to inject.
    PrepareHostKeys,
    /// Registering the login key.
    RegisterLoginKey,
    /// Bringing the deployment's other resources in line (firewall ports).
    Reconcile,
    /// Destroying hosts.
    Destroy,
}

/// Why provisioning stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The provider has hosts of this deployment that the state does not
    /// know: a run whose state is lost made them.
    #[error("deployment {deployment} already has host(s) {} that the {location} does not know; they were made by a run whose state is lost: remove them with `promguard down --discover --yes` (the provider finds them by {hint}), or adopt them by restoring the state file (it holds their WireGuard keys and pinned SSH host keys)", names(hosts))]
    UnknownHosts {
        /// The deployment.
        deployment: promguard_core::DeploymentName,
        /// The hosts nobody knows.
        hosts: Vec<HostName>,
        /// Where the state is.
        location: String,
        /// How the provider finds them ([`CloudProvider::discovery_hint`]).
        hint: &'static str,
    },
    /// A provider call failed.
    #[error("{source}")]
    Provider {
        /// Which step.
        step: ProvisionStep,
        /// The provider's error.
        source: CloudError,
    },
    /// Creating hosts failed; the hosts in `created` did come up and are
    /// recorded (they may still serve an injected SSH host key).
    #[error("{source}")]
    Create {
        /// The provider's error.
        source: CloudError,
        /// Hosts that exist now.
        created: Vec<HostName>,
    },
    /// `down` found no state and was not told to destroy what the provider
    /// finds anyway.
    #[error("there is no {location}; to destroy the hosts the {provider} provider finds for deployment {deployment} anyway, run `promguard down --discover --yes`")]
    NoState {
        /// Where the state would be.
        location: String,
        /// The provider's name.
        provider: &'static str,
        /// The deployment.
        deployment: promguard_core::DeploymentName,
    },
    /// Hosts are to be created, but the caller gave no login key.
    #[error("hosts are to be created but no SSH login key was given")]
    NoLoginKey,
    /// An existing host's address is a DNS name the caller did not
    /// resolve.
    #[error("existing host {host} has no address to connect to: its DNS name was not resolved")]
    NoAddress {
        /// The host.
        host: HostName,
    },
    /// The state could not be saved.
    #[error(transparent)]
    State(#[from] promguard_core::state::StateError),
    /// The caller cancelled the run; every save before is complete.
    #[error("cancelled; every state save before was completed")]
    Cancelled,
}

fn names(hosts: &[HostName]) -> String {
    hosts
        .iter()
        .map(HostName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn step(step: ProvisionStep) -> impl FnOnce(CloudError) -> ProvisionError {
    move |source| ProvisionError::Provider { step, source }
}

/// What [`provision`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provisioned {
    /// Hosts an interrupted run had created, now recorded.
    pub adopted: Vec<HostName>,
    /// Hosts created by this call.
    pub created: Vec<HostName>,
}

/// Runs `work` until `cancel` fires; then closes `journal` and gives up.
pub(crate) async fn unless_cancelled<T>(
    journal: &Journal,
    cancel: &CancellationToken,
    work: impl Future<Output = Result<T, ProvisionError>>,
) -> Result<T, ProvisionError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            journal.close();
            Err(ProvisionError::Cancelled)
        }
        result = work => result,
    }
}

/// Makes every host of `plan` that `journal`'s state has not recorded as
/// created, with `login_key` authorized on it (it may be `None` when
/// every host of the plan is one the user runs), and records the plan's
/// existing hosts. `journal` starts from the
/// state `plan` was made against; its first save is the plan's keys and
/// addresses (keeping the records of hosts the plan removes, until they are
/// destroyed).
pub async fn provision(
    provider: &dyn CloudProvider,
    plan: &Plan,
    journal: &Journal,
    login_key: Option<&SshPublicKey>,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<Provisioned, ProvisionError> {
    unless_cancelled(journal, cancel, async {
        let old = journal.snapshot();
        if let Some(host) = plan
            .hosts
            .iter()
            .find(|h| h.lifecycle == Lifecycle::Existing && h.public_address.is_none())
        {
            return Err(ProvisionError::NoAddress {
                host: host.name.clone(),
            });
        }
        // A deployment of existing hosts only has nothing to ask a
        // provider: it may not even be set up (no token).
        let uses_provider = plan
            .hosts
            .iter()
            .any(|h| h.lifecycle == Lifecycle::Disposable)
            || old.hosts.values().any(|r| !r.existing);
        let listed = if uses_provider {
            provider
                .preflight()
                .await
                .map_err(step(ProvisionStep::Preflight))?;
            provider
                .list_hosts()
                .await
                .map_err(step(ProvisionStep::List))?
        } else {
            Vec::new()
        };
        let unknown: Vec<HostName> = listed
            .iter()
            .filter(|h| !old.hosts.contains_key(&h.name))
            .map(|h| h.name.clone())
            .collect();
        if !unknown.is_empty() {
            return Err(ProvisionError::UnknownHosts {
                deployment: plan.deployment.clone(),
                hosts: unknown,
                location: journal.location(),
                hint: provider.discovery_hint(),
            });
        }
        // Nothing made from here on can be forgotten.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        journal.update(|state| {
            *state = plan.state_to_record(&old);
            state.date_new_keys(now);
            record_existing(state, plan);
        })?;
        let recorded = journal.snapshot();
        let adopted: Vec<&Host> = listed
            .iter()
            .filter(|h| recorded.hosts.get(&h.name).is_some_and(|r| !r.created))
            .collect();
        let mut done = Provisioned::default();
        if !adopted.is_empty() {
            done.adopted = adopted.iter().map(|h| h.name.clone()).collect();
            observer.on_event(&Event::Adopting {
                hosts: done.adopted.clone(),
            });
            journal.update(|state| {
                for host in adopted {
                    record_host(state, host);
                }
            })?;
        }

        let recorded = journal.snapshot();
        let requests: Vec<HostRequest> = plan
            .hosts
            .iter()
            .filter(|h| !recorded.hosts[&h.name].created)
            .map(|h| HostRequest {
                name: h.name.clone(),
                role: h.role,
                region: h.region.clone(),
            })
            .collect();
        if requests.is_empty() {
            // Creating hosts does this; a run that creates none still
            // carries changed ports to the provider's firewall.
            if uses_provider {
                provider
                    .reconcile_deployment()
                    .await
                    .map_err(step(ProvisionStep::Reconcile))?;
            }
            return Ok(done);
        }
        observer.on_event(&Event::Creating {
            hosts: requests.iter().map(|r| r.name.clone()).collect(),
            provider: provider.name(),
        });
        // The keys the new hosts will present are recorded before they are
        // requested: a run cut off after the request still verifies them.
        let injected = provider
            .prepare_host_keys(&requests)
            .await
            .map_err(step(ProvisionStep::PrepareHostKeys))?;
        if !injected.is_empty() {
            journal.update(|state| {
                for (name, key) in &injected {
                    if let Some(record) = state.hosts.get_mut(name).filter(|r| !r.created) {
                        record.pin_injected_host_key(key);
                    }
                }
            })?;
        }
        let login_key = login_key.ok_or(ProvisionError::NoLoginKey)?;
        provider
            .register_ssh_key(login_key)
            .await
            .map_err(step(ProvisionStep::RegisterLoginKey))?;
        let created = provider.create_hosts(&requests).await;
        // Whatever exists now is recorded, even when some creations failed.
        let listed = provider.list_hosts().await.unwrap_or_default();
        let made: Vec<&Host> = listed
            .iter()
            .chain(created.as_ref().map(|v| v.as_slice()).unwrap_or(&[]))
            .collect();
        journal.update(|state| {
            for host in &made {
                record_host(state, host);
            }
        })?;
        let is_new = |name: &HostName| requests.iter().any(|r| &r.name == name);
        let mut new: Vec<HostName> = made
            .iter()
            .map(|h| h.name.clone())
            .filter(|n| is_new(n))
            .collect();
        new.sort();
        new.dedup();
        match created {
            Ok(_) => {
                done.created = new;
                Ok(done)
            }
            Err(source) => Err(ProvisionError::Create {
                source,
                created: new,
            }),
        }
    })
    .await
}

/// Records the existing hosts of `plan` as there: no provider makes them.
/// Their address and login come from the config (the caller resolved DNS
/// names into [`promguard_core::HostPlan::public_address`]); a pinned SSH
/// host key is kept.
fn record_existing(state: &mut State, plan: &Plan) {
    for host in plan
        .hosts
        .iter()
        .filter(|h| h.lifecycle == Lifecycle::Existing)
    {
        if let Some(record) = state.hosts.get_mut(&host.name) {
            record.created = true;
            record.existing = true;
            record.public_address = host.public_address;
            record.ssh_port = Some(host.ssh.port);
            record.ssh_user = (host.ssh.user.as_str() != "root").then(|| host.ssh.user.clone());
        }
    }
}

/// Records what the provider reports about `host` in its state record.
fn record_host(state: &mut State, host: &Host) {
    if let Some(record) = state.hosts.get_mut(&host.name) {
        record.created = true;
        record.provider_id = Some(host.id.clone());
        record.public_address = Some(host.public_address);
        record.ssh_port = Port::new(host.ssh.port()).ok();
        // A pinned key is never replaced by what a provider reports.
        if record.ssh_host_key.is_none() {
            record.ssh_host_key = host.ssh_host_key.clone();
        }
    }
}

/// Destroys the hosts `plan` removes (call it after the monitor dropped
/// their peers) and forgets them and their preshared keys. Existing hosts
/// (a provider's that states [`Lifecycle::Existing`], or hosts the user
/// runs) are only forgotten: the caller removes PromGuard from those
/// first (`promguard_remote::Fleet::leave`).
pub async fn destroy_removed(
    provider: &dyn CloudProvider,
    plan: &Plan,
    journal: &Journal,
    observer: &dyn Observer,
    cancel: &CancellationToken,
) -> Result<Vec<HostName>, ProvisionError> {
    let removed = plan.removed_hosts();
    if removed.is_empty() {
        return Ok(removed);
    }
    unless_cancelled(journal, cancel, async {
        observer.on_event(&Event::Destroying {
            hosts: removed.clone(),
        });
        let disposable: Vec<HostName> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::RemoveHost {
                    host,
                    lifecycle: Lifecycle::Disposable,
                } => Some(host.clone()),
                _ => None,
            })
            .collect();
        if provider.capabilities().lifecycle == Lifecycle::Disposable && !disposable.is_empty() {
            provider
                .destroy_hosts(&disposable)
                .await
                .map_err(step(ProvisionStep::Destroy))?;
        }
        journal.update(|state| {
            for name in &removed {
                state.hosts.remove(name);
                state
                    .preshared_keys
                    .retain(|p| &p.node != name && &p.monitor != name);
            }
        })?;
        Ok(removed.clone())
    })
    .await
}

/// What `down` does without a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutState {
    /// Refuse: nobody has state for what the provider would find.
    Refuse,
    /// Destroy whatever the provider finds under the deployment's name
    /// (`down --discover`).
    DestroyWhatIsFound,
}

/// Destroys every host and resource of the deployment and forgets the
/// hosts in the state (keeping the state file itself). The provider finds
/// the hosts itself (tags, namespace records), so hosts an interrupted run
/// made before recording them go too. Returns how many hosts there were.
pub async fn destroy_deployment(
    provider: &dyn CloudProvider,
    store: &dyn StateStore,
    deployment: &promguard_core::DeploymentName,
    without_state: WithoutState,
    observer: &dyn Observer,
) -> Result<usize, ProvisionError> {
    let state = store.load_for(deployment)?;
    if state.is_none() && without_state == WithoutState::Refuse {
        return Err(ProvisionError::NoState {
            location: store.location(),
            provider: provider.name(),
            deployment: deployment.clone(),
        });
    }
    if let Some(mut state) = state
        .clone()
        .filter(|s| s.hosts.values().all(|r| r.existing))
    {
        // Only hosts the user runs: nothing for a provider to destroy (it
        // may not even be set up), and nothing is destroyed.
        state.hosts.clear();
        state.preshared_keys.clear();
        store.save(&state)?;
        return Ok(0);
    }
    provider
        .preflight()
        .await
        .map_err(step(ProvisionStep::Preflight))?;
    // The listing only counts hosts; it fails when a host never got an
    // address, and that host must go too.
    let listed = match provider.list_hosts().await {
        Ok(listed) => listed.len(),
        Err(e) => {
            observer.on_event(&Event::Warning {
                message: format!("Cannot list every host ({e}); destroying the deployment anyway"),
            });
            0
        }
    };
    if provider.capabilities().lifecycle == Lifecycle::Disposable {
        provider
            .destroy_deployment()
            .await
            .map_err(step(ProvisionStep::Destroy))?;
    }
    let Some(mut state) = state else {
        return Ok(listed);
    };
    let count = state
        .hosts
        .values()
        .filter(|h| h.created && !h.existing)
        .count()
        .max(listed);
    state.hosts.clear();
    state.preshared_keys.clear();
    store.save(&state)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use promguard_core::config::Config;
    use promguard_core::events::EventLog;
    use promguard_core::{planner, Capabilities, HostKeys, MemoryStore, Programs, Region};

    use super::*;

    /// A provider whose hosts appear when asked for; it records the calls.
    struct Scripted {
        lifecycle: Lifecycle,
        hosts: Mutex<Vec<Host>>,
        calls: Mutex<Vec<&'static str>>,
    }

    impl Scripted {
        fn new(lifecycle: Lifecycle, hosts: Vec<Host>) -> Self {
            Self {
                lifecycle,
                hosts: Mutex::new(hosts),
                calls: Mutex::default(),
            }
        }

        fn called(&self, call: &'static str) {
            self.calls.lock().unwrap().push(call);
        }
    }

    fn host(name: &HostName, last_octet: u8) -> Host {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, last_octet));
        Host {
            name: name.clone(),
            role: None,
            region: Region::new("tor1").unwrap(),
            id: last_octet.to_string(),
            public_address: ip,
            ssh: SocketAddr::new(ip, 22),
            ssh_host_key: None,
        }
    }

    #[async_trait]
    impl CloudProvider for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                programs: Programs::Preinstalled,
                host_keys: HostKeys::FromHost,
                lifecycle: self.lifecycle,
            }
        }
        fn discovery_hint(&self) -> &'static str {
            "their labels"
        }
        async fn preflight(&self) -> Result<(), CloudError> {
            Ok(())
        }
        async fn reconcile_deployment(&self) -> Result<(), CloudError> {
            self.called("reconcile");
            Ok(())
        }
        async fn register_ssh_key(&self, _key: &SshPublicKey) -> Result<(), CloudError> {
            Ok(())
        }
        async fn prepare_host_keys(
            &self,
            _requests: &[HostRequest],
        ) -> Result<Vec<(HostName, SshPublicKey)>, CloudError> {
            Ok(Vec::new())
        }
        async fn create_hosts(&self, requests: &[HostRequest]) -> Result<Vec<Host>, CloudError> {
            self.called("create");
            let made: Vec<Host> = requests
                .iter()
                .enumerate()
                .map(|(i, r)| host(&r.name, 10 + i as u8))
                .collect();
            self.hosts.lock().unwrap().extend(made.clone());
            Ok(made)
        }
        async fn list_hosts(&self) -> Result<Vec<Host>, CloudError> {
            Ok(self.hosts.lock().unwrap().clone())
        }
        async fn destroy_hosts(&self, _names: &[HostName]) -> Result<(), CloudError> {
            self.called("destroy");
            Ok(())
        }
        async fn destroy_deployment(&self) -> Result<(), CloudError> {
            self.called("destroy deployment");
            Ok(())
        }
    }

    fn login() -> SshPublicKey {
        SshPublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob",
        )
        .unwrap()
    }

    fn journal(config: &Config) -> (Arc<MemoryStore>, Journal) {
        let store = Arc::new(MemoryStore::default());
        let journal = Journal::new(store.clone(), State::new(config.deployment.clone()));
        (store, journal)
    }

    #[tokio::test]
    async fn creates_what_is_missing_and_records_it_then_does_nothing() {
        let config = Config::default();
        let provider = Scripted::new(Lifecycle::Disposable, Vec::new());
        let (store, journal) = journal(&config);
        let plan = planner::plan(&config, None).unwrap();
        let log = EventLog::default();
        let cancel = CancellationToken::new();
        let made = provision(&provider, &plan, &journal, Some(&login()), &log, &cancel)
            .await
            .unwrap();
        assert_eq!(made.created.len(), plan.hosts.len());
        let saved = store.load().unwrap().unwrap();
        assert!(saved
            .hosts
            .values()
            .all(|r| r.created && r.public_address.is_some()));
        assert!(matches!(log.events()[..], [Event::Creating { .. }]));
        // Against the recorded state nothing is created; the provider's
        // other resources are still brought in line.
        let plan = planner::plan(&config, Some(&saved)).unwrap();
        let again = provision(&provider, &plan, &journal, Some(&login()), &log, &cancel)
            .await
            .unwrap();
        assert_eq!(again, Provisioned::default());
        assert_eq!(*provider.calls.lock().unwrap(), ["create", "reconcile"]);
    }

    #[tokio::test]
    async fn hosts_nobody_knows_stop_the_run_before_anything_is_saved() {
        let config = Config::default();
        let stray = host(&config.monitor.name, 1);
        let provider = Scripted::new(Lifecycle::Disposable, vec![stray]);
        let (store, journal) = journal(&config);
        let plan = planner::plan(&config, None).unwrap();
        let err = provision(
            &provider,
            &plan,
            &journal,
            Some(&login()),
            &(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ProvisionError::UnknownHosts { .. }), "{err}");
        assert!(err.to_string().contains("their labels"), "{err}");
        // Saving the plan's fresh keys would let the next run adopt the
        // stray host with keys it never had.
        assert_eq!(store.load().unwrap(), None);
        assert!(provider.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_run_saves_nothing_more() {
        let config = Config::default();
        let provider = Scripted::new(Lifecycle::Disposable, Vec::new());
        let (store, journal) = journal(&config);
        let plan = planner::plan(&config, None).unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = provision(&provider, &plan, &journal, Some(&login()), &(), &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, ProvisionError::Cancelled), "{err}");
        assert_eq!(store.load().unwrap(), None);
        assert!(journal.update(|_| ()).is_err());
    }

    #[tokio::test]
    async fn existing_hosts_are_forgotten_never_destroyed() {
        let mut config = Config::default();
        let provider = Scripted::new(Lifecycle::Existing, Vec::new());
        let (store, journal) = journal(&config);
        let plan = planner::plan(&config, None).unwrap();
        let cancel = CancellationToken::new();
        provision(&provider, &plan, &journal, Some(&login()), &(), &cancel)
            .await
            .unwrap();
        config.nodes.pop();
        let plan = planner::plan(&config, Some(&journal.snapshot())).unwrap();
        let removed = destroy_removed(&provider, &plan, &journal, &(), &cancel)
            .await
            .unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!journal.snapshot().hosts.contains_key(&removed[0]));
        let count = destroy_deployment(
            &provider,
            &*store,
            &config.deployment,
            WithoutState::Refuse,
            &(),
        )
        .await
        .unwrap();
        // The provider still lists the forgotten host: it was never destroyed.
        assert_eq!(count, plan.hosts.len() + 1);
        assert!(store.load().unwrap().unwrap().hosts.is_empty());
        assert_eq!(*provider.calls.lock().unwrap(), ["create"]);
    }

    #[tokio::test]
    async fn down_without_state_must_be_asked_for() {
        let config = Config::default();
        let provider = Scripted::new(Lifecycle::Disposable, Vec::new());
        let store = MemoryStore::default();
        let err = destroy_deployment(
            &provider,
            &store,
            &config.deployment,
            WithoutState::Refuse,
            &(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("--discover"), "{err}");
        let count = destroy_deployment(
            &provider,
            &store,
            &config.deployment,
            WithoutState::DestroyWhatIsFound,
            &(),
        )
        .await
        .unwrap();
        assert_eq!(count, 0);
        assert_eq!(*provider.calls.lock().unwrap(), ["destroy deployment"]);
    }
}
