//! Trusting the SSH host keys of existing hosts (hosts the user runs,
//! named by `address` in the config) before anything logs in to them, and
//! resolving their DNS names.
//!
//! PromGuard made no key for such a host, so before the converge connects
//! [`review_host_keys`] decides, for every existing host of the state,
//! which key it must present: the config's `host_key`, the key an earlier
//! run pinned, or the one the user's `known_hosts` records for it (the
//! server is probed for the key it presents, without logging in). A host
//! known nowhere is reported as new with its fingerprint, for the caller
//! to ask the user about; a key that differs from a known one, or one
//! known_hosts revokes, is an error. The caller pins what it accepts with
//! [`pin_host_key`].
//!
//! The decision itself is [`crate::known_hosts::decide_host_key`]; this
//! module gathers its facts and runs the probes (blocking, on tokio's
//! blocking pool, several hosts at once).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use promguard_core::config::{Config, HostAddress};
use promguard_core::{HostName, Lifecycle, Plan, SshPublicKey, State};
use tokio::sync::Semaphore;

use crate::known_hosts::{
    decide_host_key, KeySource, KnownHosts, KnownHostsError, SkippedLine, TrustDecision,
    TrustError, TrustFacts,
};
use crate::probe::{probe_host_key_preferring, ProbeError};
use crate::session::Connector;

/// How [`review_host_keys`] reads what it needs.
#[derive(Clone)]
pub struct TrustOptions {
    /// The user's known_hosts file (`~/.ssh/known_hosts`,
    /// [`crate::known_hosts::default_known_hosts_path`]); `None`: none is
    /// consulted, so only `host_key` and pinned keys are known.
    pub known_hosts: Option<PathBuf>,
    /// Opens the TCP connection of a probe. Existing hosts are reached
    /// directly ([`crate::tcp_connector`]), not through a provider.
    pub connector: Connector,
    /// Bound on each probe's SSH handshake.
    pub timeout: Duration,
    /// Hosts probed at once.
    pub parallel: NonZeroUsize,
}

impl std::fmt::Debug for TrustOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustOptions")
            .field("known_hosts", &self.known_hosts)
            .field("timeout", &self.timeout)
            .field("parallel", &self.parallel)
            .finish_non_exhaustive()
    }
}

/// The key of one existing host whose key the state does not pin yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyCheck {
    /// The host.
    pub host: HostName,
    /// Its address as the config names it (DNS name or IP address), as
    /// the user knows it.
    pub address: String,
    /// Where its SSH server was (or will be) reached.
    pub ssh: SocketAddr,
    /// What is known about its key.
    pub verdict: HostKeyVerdict,
}

impl HostKeyCheck {
    /// The key to pin, if the caller accepts it.
    pub fn key(&self) -> &SshPublicKey {
        match &self.verdict {
            HostKeyVerdict::Trusted { key, .. } | HostKeyVerdict::New { key, .. } => key,
        }
    }
}

/// What is known about an existing host's key ([`HostKeyCheck::verdict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyVerdict {
    /// The key is known (the config's `host_key`, or known_hosts records
    /// the key the server presented): pin it.
    Trusted {
        /// The key.
        key: SshPublicKey,
        /// Where it is known from.
        source: KeySource,
    },
    /// Nothing knows the host: the server presented `key`, which only the
    /// user can accept (after checking `fingerprint` on the host itself).
    New {
        /// The key the server presented.
        key: SshPublicKey,
        /// Its `SHA256:` fingerprint, as `ssh-keygen -lf` prints it.
        fingerprint: String,
    },
}

/// What [`review_host_keys`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostKeyReview {
    /// Every existing host whose key is not pinned yet, by name. Hosts
    /// whose pinned key still agrees with the config and known_hosts are
    /// not listed: there is nothing to do for them.
    pub hosts: Vec<HostKeyCheck>,
    /// Lines of known_hosts that could not be read and were skipped (as
    /// OpenSSH skips them), for the caller to show.
    pub skipped: Vec<SkippedLine>,
}

impl HostKeyReview {
    /// The hosts whose key is known: to pin without asking.
    pub fn trusted(&self) -> impl Iterator<Item = &HostKeyCheck> {
        self.hosts
            .iter()
            .filter(|h| matches!(h.verdict, HostKeyVerdict::Trusted { .. }))
    }

    /// The hosts seen for the first time: to pin only on the user's word.
    pub fn new_hosts(&self) -> impl Iterator<Item = &HostKeyCheck> {
        self.hosts
            .iter()
            .filter(|h| matches!(h.verdict, HostKeyVerdict::New { .. }))
    }
}

/// Why the keys of existing hosts could not be reviewed, or must not be
/// trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostKeyTrustError {
    /// The user's known_hosts file exists but cannot be read.
    #[error(transparent)]
    KnownHosts(#[from] KnownHostsError),
    /// The state has no address for an existing host (provision records
    /// it from the plan, where the caller resolved DNS names).
    #[error("existing host {host} has no address in the state to read its SSH host key from")]
    NoAddress {
        /// The host.
        host: HostName,
    },
    /// The server's key could not be read.
    #[error("cannot read the SSH host key of existing host {host} ({address})")]
    Probe {
        /// The host.
        host: HostName,
        /// Its address as the config names it.
        address: String,
        /// Why.
        source: ProbeError,
    },
    /// The key differs from the one known, or is revoked: never trusted.
    /// The message names the host and both fingerprints.
    #[error(transparent)]
    Untrusted(#[from] TrustError),
    /// A probe's thread ended without a result (it panicked).
    #[error("reading the SSH host key of existing host {host} failed: {message}")]
    Task {
        /// The host.
        host: HostName,
        /// What the runtime said.
        message: String,
    },
}

impl HostKeyTrustError {
    /// The host the error is about, when it is about one.
    pub fn host(&self) -> Option<&HostName> {
        match self {
            HostKeyTrustError::KnownHosts(_) => None,
            HostKeyTrustError::NoAddress { host }
            | HostKeyTrustError::Probe { host, .. }
            | HostKeyTrustError::Task { host, .. } => Some(host),
            HostKeyTrustError::Untrusted(e) => Some(e.host()),
        }
    }
}

/// Reads a server's key: `probe(addr, algorithms)` asks for the
/// algorithms first. Blocking.
type Probe = Arc<dyn Fn(SocketAddr, &[String]) -> Result<SshPublicKey, ProbeError> + Send + Sync>;

/// Decides the key of every existing host of `state` (hosts `record.existing`,
/// recorded by provision) against the `host_key`s of `config`, the keys
/// `state` pins and the user's known_hosts, probing the servers whose key
/// only known_hosts can vouch for, or that nothing knows (at most
/// `options.parallel` at once). Changes nothing: the caller pins what it
/// accepts with [`pin_host_key`].
///
/// Hosts a provider created are not looked at (their keys are the
/// provider's business). The known_hosts file is read only when the state
/// has an existing host. The first error, in host name order, is returned.
pub async fn review_host_keys(
    config: &Config,
    state: &State,
    options: &TrustOptions,
) -> Result<HostKeyReview, HostKeyTrustError> {
    let candidates = candidates(config, state)?;
    if candidates.is_empty() {
        return Ok(HostKeyReview::default());
    }
    // A small local file, read at once (bounded by MAX_KNOWN_HOSTS_BYTES).
    let known = match &options.known_hosts {
        Some(path) => KnownHosts::load(path)?,
        None => KnownHosts::default(),
    };
    let connector = options.connector.clone();
    let timeout = options.timeout;
    let probe: Probe = Arc::new(move |addr, algorithms| {
        probe_host_key_preferring(addr, &connector, timeout, algorithms)
    });
    review(candidates, &known, probe, options.parallel).await
}

/// Pins `key` as `host`'s SSH host key in `state`: the key the host made
/// itself, so it is never one to replace (as a provider's injected key
/// would be). Does nothing for a host the state does not know.
pub fn pin_host_key(state: &mut State, host: &HostName, key: &SshPublicKey) {
    if let Some(record) = state.hosts.get_mut(host) {
        record.pin_replaced_host_key(key);
    }
}

/// An existing host's DNS name that does not resolve
/// ([`resolve_existing_addresses`]).
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve the address {name:?} of existing host {host}; check the name, or give its IP address as address in the config")]
pub struct ResolveError {
    /// The host.
    pub host: HostName,
    /// The DNS name.
    pub name: String,
    /// What the resolver said (no address at all is `NotFound`).
    pub source: io::Error,
}

/// Sets the public address of every existing host of `plan` from its
/// `address` in `config`, resolving DNS names (with the system resolver,
/// every name at once; the first address it returns is used, as its
/// order already prefers what this machine can reach). The config's
/// address wins over one an earlier run recorded, so that a host whose
/// address changed is reached at the new one.
pub async fn resolve_existing_addresses(
    config: &Config,
    plan: &mut Plan,
) -> Result<(), ResolveError> {
    let mut lookups = Vec::new();
    for host in plan
        .hosts
        .iter()
        .filter(|h| h.lifecycle == Lifecycle::Existing)
    {
        let Some(existing) = config
            .hosts()
            .find(|spec| spec.name == host.name)
            .and_then(|spec| spec.existing())
        else {
            continue;
        };
        let lookup = match &existing.address {
            HostAddress::Ip(ip) => Lookup::Done(*ip),
            HostAddress::Name(name) => {
                let target = (name.clone(), host.ssh.port.get());
                Lookup::Pending(
                    name.clone(),
                    tokio::spawn(async move {
                        tokio::net::lookup_host(target).await.and_then(|mut addrs| {
                            addrs.next().map(|a| a.ip()).ok_or_else(|| {
                                io::Error::new(io::ErrorKind::NotFound, "the name has no address")
                            })
                        })
                    }),
                )
            }
        };
        lookups.push((host.name.clone(), lookup));
    }
    for (name, lookup) in lookups {
        let ip = match lookup {
            Lookup::Done(ip) => ip,
            Lookup::Pending(dns, task) => {
                let result = task
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                result.map_err(|source| ResolveError {
                    host: name.clone(),
                    name: dns,
                    source,
                })?
            }
        };
        if let Some(host) = plan.hosts.iter_mut().find(|h| h.name == name) {
            host.public_address = Some(ip);
        }
    }
    Ok(())
}

/// An address known at once, or a DNS lookup under way.
enum Lookup {
    Done(IpAddr),
    Pending(String, tokio::task::JoinHandle<io::Result<IpAddr>>),
}

/// One existing host of the state, with everything known about its key.
#[derive(Debug, Clone)]
struct Candidate {
    host: HostName,
    address: String,
    ssh: SocketAddr,
    config_key: Option<SshPublicKey>,
    pinned_key: Option<SshPublicKey>,
}

/// The existing hosts of `state`, in name order. A host the config no
/// longer names (removed, PromGuard still to leave it) is looked up in
/// known_hosts by its recorded IP address.
fn candidates(config: &Config, state: &State) -> Result<Vec<Candidate>, HostKeyTrustError> {
    state
        .hosts
        .iter()
        .filter(|(_, record)| record.existing)
        .map(|(name, record)| {
            let spec = config.hosts().find(|spec| &spec.name == name);
            let existing = spec.and_then(|spec| spec.existing());
            let ip = record
                .public_address
                .ok_or_else(|| HostKeyTrustError::NoAddress { host: name.clone() })?;
            let port = record
                .ssh_port
                .or_else(|| spec.map(|spec| config.ssh_port_of(spec)))
                .unwrap_or(config.ssh.port);
            Ok(Candidate {
                host: name.clone(),
                address: existing
                    .map(|e| e.address.to_string())
                    .unwrap_or_else(|| ip.to_string()),
                ssh: SocketAddr::new(ip, port.get()),
                config_key: existing.and_then(|e| e.host_key.clone()),
                pinned_key: record.ssh_host_key.clone(),
            })
        })
        .collect()
}

/// Decides every candidate, probing where the decision asks for it.
async fn review(
    candidates: Vec<Candidate>,
    known: &KnownHosts,
    probe: Probe,
    parallel: NonZeroUsize,
) -> Result<HostKeyReview, HostKeyTrustError> {
    let permits = Arc::new(Semaphore::new(parallel.get()));
    let mut decided = Vec::new();
    for candidate in candidates {
        let lookup = known.lookup(&candidate.address, candidate.ssh.port());
        let facts = TrustFacts {
            host: &candidate.host,
            address: &candidate.address,
            port: candidate.ssh.port(),
            config_key: candidate.config_key.as_ref(),
            pinned_key: candidate.pinned_key.as_ref(),
            known_hosts: &lookup,
            presented_key: None,
        };
        let step = match decide_host_key(&facts) {
            // A pinned key that still agrees: nothing to do.
            Ok(TrustDecision::Trusted { .. }) if candidate.pinned_key.is_some() => continue,
            Ok(TrustDecision::Trusted { key, source }) => {
                Step::Decided(Ok(HostKeyVerdict::Trusted { key, source }))
            }
            Ok(TrustDecision::New { key, fingerprint }) => {
                Step::Decided(Ok(HostKeyVerdict::New { key, fingerprint }))
            }
            Ok(TrustDecision::Probe { algorithms }) => {
                let probe = Arc::clone(&probe);
                let permits = Arc::clone(&permits);
                let addr = candidate.ssh;
                Step::Probing(tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await.expect("never closed");
                    tokio::task::spawn_blocking(move || probe(addr, &algorithms))
                        .await
                        .map_err(|e| e.to_string())
                }))
            }
            Err(e) => Step::Decided(Err(e.into())),
        };
        decided.push((candidate, lookup, step));
    }
    let mut hosts = Vec::new();
    for (candidate, lookup, step) in decided {
        let verdict = match step {
            Step::Decided(verdict) => verdict?,
            Step::Probing(task) => {
                let presented = task
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
                    .map_err(|message| HostKeyTrustError::Task {
                        host: candidate.host.clone(),
                        message,
                    })?
                    .map_err(|source| HostKeyTrustError::Probe {
                        host: candidate.host.clone(),
                        address: candidate.address.clone(),
                        source,
                    })?;
                let facts = TrustFacts {
                    host: &candidate.host,
                    address: &candidate.address,
                    port: candidate.ssh.port(),
                    config_key: candidate.config_key.as_ref(),
                    pinned_key: candidate.pinned_key.as_ref(),
                    known_hosts: &lookup,
                    presented_key: Some(&presented),
                };
                match decide_host_key(&facts)? {
                    TrustDecision::Trusted { key, source } => {
                        HostKeyVerdict::Trusted { key, source }
                    }
                    TrustDecision::New { key, fingerprint } => {
                        HostKeyVerdict::New { key, fingerprint }
                    }
                    TrustDecision::Probe { .. } => {
                        unreachable!("a decision with the presented key never asks to probe")
                    }
                }
            }
        };
        hosts.push(HostKeyCheck {
            host: candidate.host,
            address: candidate.address,
            ssh: candidate.ssh,
            verdict,
        });
    }
    Ok(HostKeyReview {
        hosts,
        skipped: known.skipped().to_vec(),
    })
}

/// Where one host's decision stands.
enum Step {
    Decided(Result<HostKeyVerdict, HostKeyTrustError>),
    /// The probe, on the blocking pool; `Err` when its thread panicked.
    Probing(tokio::task::JoinHandle<Result<Result<SshPublicKey, ProbeError>, String>>),
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use expect_test::{expect, Expect};
    use promguard_cloud::none::NoProvider;
    use promguard_cloud::provision::provision;
    use promguard_core::{Journal, MemoryStore};

    use super::*;
    use crate::CancellationToken;

    // Throwaway keys (those of tests/data/known_hosts/mixed).
    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBz2LKTIJHVMT2WS1LueK4THd/2bD75IH43SLrgRXDoj";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPod/UrQIKkRhXbIUC9Z/lPO90XTW47myjqyxqnBOjRd";

    fn key(text: &str) -> SshPublicKey {
        SshPublicKey::parse(text).unwrap()
    }

    fn config(toml: &str) -> Config {
        Config::from_toml(toml, Path::new("promguard.toml")).unwrap()
    }

    /// The state provision records for `config` (no provider: every host
    /// here exists already).
    async fn recorded(config: &Config) -> State {
        let plan = promguard_core::planner::plan(config, None).unwrap();
        let journal = Journal::new(
            Arc::new(MemoryStore::default()),
            State::new(config.deployment.clone()),
        );
        let provider = NoProvider::new(config.deployment.clone());
        provision(
            &provider,
            &plan,
            &journal,
            None,
            &(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        journal.snapshot()
    }

    /// A monitor at 192.0.2.1 (its key in the config) and node db-1 at
    /// 192.0.2.7 with `node` added to its entry.
    fn deployment(node: &str) -> Config {
        config(&format!(
            "[monitor]\naddress = \"192.0.2.1\"\nhost_key = \"{KEY_A}\"\n\n\
             [[nodes.host]]\nname = \"db-1\"\naddress = \"192.0.2.7\"\n{node}\n"
        ))
    }

    /// A probe that answers from `keys` (by address) and logs each call.
    fn fake_probe(keys: Vec<(SocketAddr, &'static str)>, log: Arc<Mutex<Vec<String>>>) -> Probe {
        Arc::new(move |addr, algorithms| {
            log.lock()
                .unwrap()
                .push(format!("probed {addr} for {}", algorithms.join(",")));
            keys.iter()
                .find(|(a, _)| *a == addr)
                .map(|(_, k)| key(k))
                .ok_or(ProbeError::Connect {
                    addr,
                    source: io::ErrorKind::ConnectionRefused.into(),
                })
        })
    }

    fn show(result: &Result<HostKeyReview, HostKeyTrustError>, log: &[String]) -> String {
        let mut out = String::new();
        for line in log {
            writeln!(out, "{line}").unwrap();
        }
        match result {
            Ok(review) => {
                for h in &review.hosts {
                    let verdict = match &h.verdict {
                        HostKeyVerdict::Trusted { key, source } => {
                            format!("trusted from {source}: {}", key.fingerprint())
                        }
                        HostKeyVerdict::New { fingerprint, .. } => format!("new: {fingerprint}"),
                    };
                    writeln!(out, "{} ({}, {}) {verdict}", h.host, h.address, h.ssh).unwrap();
                }
                for s in &review.skipped {
                    writeln!(out, "{s}").unwrap();
                }
            }
            Err(e) => {
                write!(out, "error ({:?}): {e}", e.host().map(|h| h.as_str())).unwrap();
                let mut source = std::error::Error::source(e);
                while let Some(cause) = source {
                    write!(out, ": {cause}").unwrap();
                    source = cause.source();
                }
                writeln!(out).unwrap();
            }
        }
        out
    }

    /// Reviews `state` of `config` with `known_hosts` and servers that
    /// present `keys`, and compares what was probed and decided.
    async fn check(
        config: &Config,
        state: &State,
        known_hosts: &str,
        keys: Vec<(SocketAddr, &'static str)>,
        expected: Expect,
    ) {
        let known = KnownHosts::parse(Path::new("known_hosts"), known_hosts.as_bytes());
        let log = Arc::new(Mutex::new(Vec::new()));
        let candidates = candidates(config, state);
        let result = match candidates {
            Ok(c) => {
                review(
                    c,
                    &known,
                    fake_probe(keys, Arc::clone(&log)),
                    NonZeroUsize::new(4).unwrap(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let mut log = log.lock().unwrap().clone();
        log.sort();
        expected.assert_eq(&show(&result, &log));
    }

    fn db1() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 7], 22))
    }

    #[tokio::test]
    async fn a_host_known_nowhere_is_new_and_a_configured_key_is_trusted_unprobed() {
        let config = deployment("");
        let state = recorded(&config).await;
        check(
            &config,
            &state,
            "",
            vec![(db1(), KEY_B)],
            expect![[r#"
                probed 192.0.2.7:22 for ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-rsa
                db-1 (192.0.2.7, 192.0.2.7:22) new: SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE
                promguard-monitor-1 (192.0.2.1, 192.0.2.1:22) trusted from the config's host_key: SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k
            "#]],
        )
        .await;
    }

    #[tokio::test]
    async fn known_hosts_vouches_for_the_key_it_records_and_refuses_another() {
        let config = deployment("");
        let state = recorded(&config).await;
        let known = format!("192.0.2.7 {KEY_B}\n192.0.2.7 ssh-rsa not-base64!\n");
        check(
            &config,
            &state,
            &known,
            vec![(db1(), KEY_B)],
            expect![[r#"
                probed 192.0.2.7:22 for ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-rsa
                db-1 (192.0.2.7, 192.0.2.7:22) trusted from known_hosts: SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE
                promguard-monitor-1 (192.0.2.1, 192.0.2.1:22) trusted from the config's host_key: SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k
                known_hosts:2: the key data is not base64; line skipped
            "#]],
        )
        .await;
        check(
            &config,
            &state,
            &known,
            vec![(db1(), KEY_A)],
            expect![[r#"
                probed 192.0.2.7:22 for ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-rsa
                error (Some("db-1")): the host key of db-1 (192.0.2.7) has changed: known_hosts records ssh-ed25519 SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE, the server presented ssh-ed25519 SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k; if the host was reinstalled, check the new key on the host itself, remove the old entry with `ssh-keygen -R '192.0.2.7' -f 'known_hosts'` (or set host_key in the config) and run again; otherwise someone may be intercepting the connection
            "#]],
        )
        .await;
    }

    #[tokio::test]
    async fn a_dns_name_and_port_are_looked_up_as_ssh_writes_them() {
        // The address as the user knows it, not the IP it resolved to.
        let config = config(&format!(
            "[monitor]\naddress = \"192.0.2.1\"\nhost_key = \"{KEY_A}\"\n\n\
             [[nodes.host]]\nname = \"db-1\"\naddress = \"db.example.com\"\nssh_port = 2222\n"
        ));
        let mut plan = promguard_core::planner::plan(&config, None).unwrap();
        plan.hosts[1].public_address = Some(IpAddr::from([192, 0, 2, 7]));
        let journal = Journal::new(
            Arc::new(MemoryStore::default()),
            State::new(config.deployment.clone()),
        );
        let provider = NoProvider::new(config.deployment.clone());
        let cancel = CancellationToken::new();
        provision(&provider, &plan, &journal, None, &(), &cancel)
            .await
            .unwrap();
        let state = journal.snapshot();
        let at_2222 = SocketAddr::from(([192, 0, 2, 7], 2222));
        check(
            &config,
            &state,
            &format!("[db.example.com]:2222 {KEY_B}\ndb.example.com {KEY_A}\n"),
            vec![(at_2222, KEY_B)],
            expect![[r#"
                probed 192.0.2.7:2222 for ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-rsa
                db-1 (db.example.com, 192.0.2.7:2222) trusted from known_hosts: SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE
                promguard-monitor-1 (192.0.2.1, 192.0.2.1:22) trusted from the config's host_key: SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k
            "#]],
        )
        .await;
    }

    #[tokio::test]
    async fn revoked_keys_are_refused_wherever_they_come_from() {
        let config = deployment(&format!("host_key = \"{KEY_B}\""));
        let state = recorded(&config).await;
        check(
            &config,
            &state,
            &format!("@revoked 192.0.2.7 {KEY_B}\n"),
            Vec::new(),
            expect![[r#"
                error (Some("db-1")): the host key ssh-ed25519 SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE of db-1 (192.0.2.7) is revoked by line 1 of known_hosts; PromGuard never trusts a revoked key: give the host a new key and check its fingerprint on the host itself
            "#]],
        )
        .await;
    }

    #[tokio::test]
    async fn pinned_keys_are_left_alone_unless_the_config_disagrees() {
        let config = deployment("");
        let mut state = recorded(&config).await;
        let db = HostName::new("db-1").unwrap();
        pin_host_key(&mut state, &db, &key(KEY_B));
        let record = &state.hosts[&db];
        assert!(
            record.ssh_host_key_rotated,
            "an existing host's key is never replaced"
        );
        // Nothing to do for db-1, nothing probed.
        check(&config, &state, "", Vec::new(), expect![[r#"
            promguard-monitor-1 (192.0.2.1, 192.0.2.1:22) trusted from the config's host_key: SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k
        "#]]).await;
        let config = deployment(&format!("host_key = \"{KEY_A}\""));
        check(&config, &state, "", Vec::new(), expect![[r#"
            error (Some("db-1")): the host_key of db-1 in the config (ssh-ed25519 SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k) differs from the key pinned in the state (ssh-ed25519 SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE); say which is right: if the host was reinstalled and host_key is its new key, forget the key pinned in the state, otherwise set host_key back to the pinned key
        "#]]).await;
    }

    #[tokio::test]
    async fn hosts_a_provider_made_are_not_looked_at_and_probe_errors_name_the_host() {
        let config = config(
            "[monitor]\naddress = \"192.0.2.1\"\n\n[[nodes.host]]\nname = \"db-1\"\naddress = \"192.0.2.7\"\n",
        );
        let mut state = recorded(&config).await;
        // As if a provider had made db-1: its key is not this module's business.
        let db = HostName::new("db-1").unwrap();
        state.hosts.get_mut(&db).unwrap().existing = false;
        check(&config, &state, "", Vec::new(), expect![[r#"
            probed 192.0.2.1:22 for ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-rsa
            error (Some("promguard-monitor-1")): cannot read the SSH host key of existing host promguard-monitor-1 (192.0.2.1): cannot connect to 192.0.2.1:22 to read its SSH host key: connection refused; check that the host is running and its SSH port is reachable: connection refused
        "#]]).await;
    }

    #[tokio::test]
    async fn known_hosts_is_read_only_when_there_is_an_existing_host() {
        let dir = tempfile::tempdir().unwrap();
        let options = TrustOptions {
            // A directory: reading it fails.
            known_hosts: Some(dir.path().to_owned()),
            connector: crate::tcp_connector(Duration::from_secs(1)),
            timeout: Duration::from_secs(1),
            parallel: NonZeroUsize::new(1).unwrap(),
        };
        let created = Config::default();
        let state = promguard_core::planner::plan(&created, None)
            .unwrap()
            .next_state;
        let review = review_host_keys(&created, &state, &options).await.unwrap();
        assert_eq!(review, HostKeyReview::default());
        let config = deployment(&format!("host_key = \"{KEY_B}\""));
        let err = review_host_keys(&config, &recorded(&config).await, &options)
            .await
            .unwrap_err();
        assert!(matches!(err, HostKeyTrustError::KnownHosts(_)), "{err}");
        // With a file, both keys come from the config: no probe.
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, "").unwrap();
        let options = TrustOptions {
            known_hosts: Some(path),
            ..options
        };
        let review = review_host_keys(&config, &recorded(&config).await, &options)
            .await
            .unwrap();
        assert_eq!(review.trusted().count(), 2);
        assert_eq!(review.new_hosts().count(), 0);
    }

    #[tokio::test]
    async fn probes_run_at_once_up_to_the_bound() {
        let nodes: String = (1..=6)
            .map(|i| format!("[[nodes.host]]\nname = \"db-{i}\"\naddress = \"192.0.2.{i}0\"\n"))
            .collect();
        let config = config(&format!(
            "[monitor]\naddress = \"192.0.2.1\"\nhost_key = \"{KEY_A}\"\n\n{nodes}"
        ));
        let state = recorded(&config).await;
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let probe: Probe = {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            Arc::new(move |_, _| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(key(KEY_B))
            })
        };
        let review = review(
            candidates(&config, &state).unwrap(),
            &KnownHosts::default(),
            probe,
            NonZeroUsize::new(3).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(review.new_hosts().count(), 6);
        let most = most.load(Ordering::SeqCst);
        assert!((2..=3).contains(&most), "{most} probes at once");
    }

    #[tokio::test]
    async fn addresses_come_from_the_config_and_dns_names_are_resolved() {
        let config = config(
            "[monitor]\naddress = \"localhost\"\n\n\
             [[nodes.host]]\nname = \"db-1\"\naddress = \"192.0.2.7\"\n\n\
             [[nodes.host]]\nname = \"web-1\"\nregion = \"tor1\"\n",
        );
        let mut plan = promguard_core::planner::plan(&config, None).unwrap();
        assert_eq!(plan.hosts[0].public_address, None);
        // An address an earlier run recorded gives way to the config's.
        plan.hosts[1].public_address = Some(IpAddr::from([192, 0, 2, 99]));
        resolve_existing_addresses(&config, &mut plan)
            .await
            .unwrap();
        let monitor = plan.hosts[0].public_address.unwrap();
        assert!(monitor.is_loopback(), "{monitor}");
        assert_eq!(
            plan.hosts[1].public_address,
            Some(IpAddr::from([192, 0, 2, 7]))
        );
        // A created host is the provider's business.
        assert_eq!(plan.hosts[2].public_address, None);

        let unknown = self::config(
            "[monitor]\naddress = \"192.0.2.1\"\n\n\
             [[nodes.host]]\nname = \"db-1\"\naddress = \"no-such-host.invalid\"\n",
        );
        let mut plan = promguard_core::planner::plan(&unknown, None).unwrap();
        let err = resolve_existing_addresses(&unknown, &mut plan)
            .await
            .unwrap_err();
        assert_eq!(err.host.as_str(), "db-1");
        let message = err.to_string();
        assert!(message.contains("\"no-such-host.invalid\""), "{message}");
    }
}
