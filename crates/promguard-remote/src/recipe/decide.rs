//! The decision: which files to write and which actions to run, from the
//! desired host and its facts. Pure code, so every combination is a table
//! test.

use std::fmt;

use promguard_core::InterfaceName;

use super::facts::{Facts, InterfaceState, PendingApply, ProcessState, PROGRAMS};
use super::script::{self, NODE_EXPORTER_BIN, PROMETHEUS_BIN};
use super::{DesiredFile, DesiredHost, FileKind};
use crate::error::RemoteError;

/// One thing the apply script does besides writing files. They run in the
/// order [`decide`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `apt-get install` these packages (before any file is written, with
    /// services kept from starting until their config is in place).
    InstallPackages(Vec<String>),
    /// `systemctl daemon-reload`, after a unit file changed.
    DaemonReload,
    /// Bring the interface up: it does not exist yet.
    WireguardUp(InterfaceName),
    /// Delete the broken interface (it does not answer `wg show`, or it is
    /// down after a `wg-quick up` cut short), wait for its wireguard-go to
    /// let go of the control socket, remove a stale socket and bring it up
    /// again.
    WireguardRecreate(InterfaceName),
    /// `wg syncconf` from the config (keeps every other tunnel up), then
    /// routes for the peers' AllowedIPs; `readdress` also replaces the
    /// interface's address.
    WireguardSync {
        /// The interface.
        interface: InterfaceName,
        /// The interface's address differs from the desired one.
        readdress: bool,
    },
    /// `nft -f` the ruleset (replaces only PromGuard's table).
    LoadFirewall,
    /// `systemctl reenable` these units, so the host comes back by itself
    /// after a reboot: the firewall unit when it changed, and whichever of
    /// the boot units the facts found disabled (systemd only).
    EnableAtBoot(Vec<String>),
    /// Start node_exporter, or restart it when `restart`.
    StartNodeExporter {
        /// It runs already, with other arguments or config.
        restart: bool,
    },
    /// Start the WireGuard metrics collector, or restart it when
    /// `restart` (its script or unit changed).
    StartWgMetrics {
        /// It runs already, an older version or with other arguments.
        restart: bool,
    },
    /// Start Prometheus, or restart it when `restart`.
    StartPrometheus {
        /// It runs already, with other arguments.
        restart: bool,
    },
    /// Make Prometheus reread `prometheus.yml` (SIGHUP or `systemctl
    /// reload`).
    ReloadPrometheus,
    /// Start Alertmanager, or restart it when `restart`.
    StartAlertmanager {
        /// It runs already, with other arguments.
        restart: bool,
    },
    /// Make Alertmanager reread its config.
    ReloadAlertmanager,
    /// Start the managed exporter of this package, or restart it when
    /// `restart` (its arguments or settings changed).
    StartExporter {
        /// The exporter's package ([`super::ManagedExporter::package`]).
        package: promguard_core::exporters::DebianPackage,
        /// It runs already, with other arguments or settings.
        restart: bool,
    },
    /// Stop and disable the exporter of this package, which the config no
    /// longer names, and remove PromGuard's files for it; `purge` also
    /// purges the package (PromGuard installed it, on a host it created),
    /// with its defaults file, which may hold a secret.
    RetireExporter {
        /// The exporter's package.
        package: promguard_core::exporters::DebianPackage,
        /// Purge the package too.
        purge: bool,
    },
    /// Add these ufw rules (each the arguments of `ufw`), noted in the
    /// guest manifest first: the host's ufw is active and would drop
    /// WireGuard and the scrapes.
    UfwAllow(Vec<String>),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::InstallPackages(packages) => {
                write!(f, "apt-get install {}", packages.join(" "))
            }
            Action::DaemonReload => f.write_str("systemctl daemon-reload"),
            Action::WireguardUp(i) => write!(f, "wg-quick up {i}"),
            Action::WireguardRecreate(i) => write!(f, "recreate {i} and wg-quick up {i}"),
            Action::WireguardSync {
                interface,
                readdress: false,
            } => write!(f, "wg syncconf {interface}"),
            Action::WireguardSync {
                interface,
                readdress: true,
            } => {
                write!(f, "set address of {interface} and wg syncconf {interface}")
            }
            Action::LoadFirewall => write!(f, "nft -f {}", promguard_core::nftables::RULESET_PATH),
            Action::EnableAtBoot(units) => write!(f, "enable {} at boot", units.join(" ")),
            Action::StartNodeExporter { restart: false } => f.write_str("start node_exporter"),
            Action::StartNodeExporter { restart: true } => f.write_str("restart node_exporter"),
            Action::StartWgMetrics { restart: false } => {
                f.write_str("start the WireGuard metrics collector")
            }
            Action::StartWgMetrics { restart: true } => {
                f.write_str("restart the WireGuard metrics collector")
            }
            Action::StartPrometheus { restart: false } => f.write_str("start prometheus"),
            Action::StartPrometheus { restart: true } => f.write_str("restart prometheus"),
            Action::ReloadPrometheus => f.write_str("reload prometheus"),
            Action::StartAlertmanager { restart: false } => f.write_str("start alertmanager"),
            Action::StartAlertmanager { restart: true } => f.write_str("restart alertmanager"),
            Action::ReloadAlertmanager => f.write_str("reload alertmanager"),
            Action::StartExporter {
                package,
                restart: false,
            } => write!(f, "start {package}"),
            Action::StartExporter {
                package,
                restart: true,
            } => write!(f, "restart {package}"),
            Action::RetireExporter {
                package,
                purge: false,
            } => write!(f, "stop {package}, no longer in the config"),
            Action::RetireExporter {
                package,
                purge: true,
            } => write!(f, "stop and purge {package}, no longer in the config"),
            Action::UfwAllow(rules) => write!(f, "ufw {}", rules.join("; ufw ")),
        }
    }
}

/// Files to write and actions to run on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Files whose content differs or that are missing.
    pub files: Vec<DesiredFile>,
    /// Actions, in order.
    pub actions: Vec<Action>,
    /// Files whose actions this run owes: those in [`Decision::files`] and
    /// those an earlier apply left pending (it was cut after writing them,
    /// before their actions ran). The apply script lists them in the apply
    /// marker ([`super::script::APPLY_MARKER_PATH`]) before writing any
    /// file and removes the marker after the last action; every rule that
    /// reacts to a written file reacts to these.
    pub pending_files: Vec<String>,
    /// The host has an apply marker, so the apply script removes it at the
    /// end even when no file is pending any more (a marker left by a run
    /// cut short whose files are no longer managed).
    pub clear_marker: bool,
}

impl Decision {
    /// True when the host is converged: nothing to write or run, and no
    /// apply marker to remove.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.actions.is_empty() && !self.clear_marker
    }
}

/// The kinds of the files whose actions a run owes (written now or left
/// pending by an earlier run): every rule that reacts to a file reacts to
/// its kind, never to its path.
struct Touched(Vec<FileKind>);

impl Touched {
    fn any(&self, kind: FileKind) -> bool {
        self.0.contains(&kind)
    }
}

/// Decides what to do on `host` given its `facts`. Fails only when a
/// program is missing and the host is not one where packages are
/// installed.
///
/// A file counts as changed when its digest differs *or* the host's apply
/// marker lists it (an earlier apply wrote it and was cut before its
/// actions ran): matching digests alone do not prove that WireGuard,
/// nftables or Prometheus took the file in.
pub fn decide(host: &DesiredHost, facts: &Facts) -> Result<Decision, RemoteError> {
    let mut decision = Decision::default();
    let wants_prometheus = host.prometheus_listen.is_some();
    let wants_alertmanager = host.alertmanager_listen.is_some();
    let guest = match (&host.guest, &facts.guest) {
        (None, _) => None,
        (Some(guest), Some(facts_of_guest)) => {
            refuse_clash(host, guest, facts, facts_of_guest)?;
            let prometheus_config = promguard_core::prometheus::CONFIG_PATH;
            let hosts_own_prometheus = facts.programs.get(PROMETHEUS_BIN).copied() == Some(true)
                && !facts_of_guest.manifest.has_file(prometheus_config)
                && !super::guest::packages(&facts_of_guest.manifest).contains("prometheus");
            if wants_prometheus && hosts_own_prometheus {
                return Err(RemoteError::HostsOwnPrometheus {
                    host: host.name.clone(),
                });
            }
            Some((guest, facts_of_guest))
        }
        (Some(_), None) => {
            return Err(RemoteError::Protocol {
                host: host.name.clone(),
                what: "the facts script".into(),
                reason: "it did not report what a guest host reports".into(),
            })
        }
    };

    let mut packages: Vec<String> = Vec::new();
    for (program, package) in PROGRAMS {
        let needed = match *program {
            PROMETHEUS_BIN => wants_prometheus,
            script::ALERTMANAGER_BIN => wants_alertmanager,
            _ => true,
        };
        if needed && !facts.programs.get(*program).copied().unwrap_or(false) {
            if !host.install_packages {
                return Err(RemoteError::MissingProgram {
                    host: host.name.clone(),
                    program: program.to_string(),
                    package: package.to_string(),
                });
            }
            if !packages.iter().any(|p| p == package) {
                packages.push(package.to_string());
            }
        }
    }
    for e in &host.exporters {
        let binary = e.binary();
        if !facts.programs.get(&binary).copied().unwrap_or(false) {
            if !host.install_packages {
                return Err(RemoteError::MissingProgram {
                    host: host.name.clone(),
                    program: binary,
                    package: e.package.to_string(),
                });
            }
            if !packages.iter().any(|p| p == e.package.as_str()) {
                packages.push(e.package.to_string());
            }
        }
    }
    if !packages.is_empty() {
        decision.actions.push(Action::InstallPackages(packages));
    }

    let mut all_files = host.files.clone();
    all_files.extend(script::common_files());
    if facts.systemd {
        all_files.extend(script::systemd_files(host));
    }
    for e in &host.exporters {
        all_files.extend(e.files(facts.systemd, &host.interface));
    }
    let left_pending = |path: &str| match &facts.pending {
        PendingApply::Clear => false,
        PendingApply::Files(paths) => paths.contains(path),
        // Not a marker this version wrote: assume the worst.
        PendingApply::Unrecognized => true,
    };
    for file in &all_files {
        let written = facts.files.get(&file.path).cloned().flatten() != Some(file.sha256());
        if written || left_pending(&file.path) {
            decision.pending_files.push(file.path.clone());
        }
        if written {
            decision.files.push(file.clone());
        }
    }
    decision.clear_marker = facts.pending != PendingApply::Clear;
    // A pending path the host reports is known by the file of that path
    // this run manages; one no longer managed calls for nothing.
    let touched = Touched(
        decision
            .pending_files
            .iter()
            .filter_map(|p| all_files.iter().find(|f| &f.path == p).map(|f| f.kind))
            .collect(),
    );

    if facts.systemd && touched.0.iter().any(|k| k.is_unit_file()) {
        decision.actions.push(Action::DaemonReload);
    }

    let interface = host.interface.clone();
    match &facts.interface {
        InterfaceState::Missing => decision.actions.push(Action::WireguardUp(interface)),
        InterfaceState::Broken => decision.actions.push(Action::WireguardRecreate(interface)),
        InterfaceState::Up { addresses } => {
            let readdress = !addresses.contains(&host.wireguard_prefix());
            if readdress || touched.any(FileKind::WireguardConfig) {
                decision.actions.push(Action::WireguardSync {
                    interface,
                    readdress,
                });
            }
        }
    }

    if !facts.firewall_loaded || touched.any(FileKind::Firewall) {
        decision.actions.push(Action::LoadFirewall);
    }
    if let Some((guest, facts_of_guest)) = guest {
        if facts_of_guest.ufw_active {
            let missing: Vec<String> = guest
                .ufw_rules(&host.interface)
                .into_iter()
                .filter(|r| !facts_of_guest.manifest.has_ufw(r))
                .collect();
            if !missing.is_empty() {
                decision.actions.push(Action::UfwAllow(missing));
            }
        }
    }
    if facts.systemd {
        let units: Vec<String> = super::facts::boot_units(&host.interface)
            .into_iter()
            .chain(host.exporters.iter().map(|e| e.unit()))
            .filter(|unit| wants_prometheus || unit != script::PROMETHEUS_UNIT)
            .filter(|unit| wants_alertmanager || unit != script::ALERTMANAGER_UNIT)
            .filter(|unit| {
                let changed = unit == script::FIREWALL_UNIT && touched.any(FileKind::FirewallUnit);
                changed || !facts.enabled.get(unit).copied().unwrap_or(false)
            })
            .collect();
        if !units.is_empty() {
            decision.actions.push(Action::EnableAtBoot(units));
        }
    }

    let node_config_changed = facts.systemd
        && (touched.any(FileKind::NodeExporterDefaults)
            || touched.any(FileKind::NodeExporterDropIn));
    if let Some(restart) = daemon_start(
        facts.systemd,
        &facts.node_exporter,
        NODE_EXPORTER_BIN,
        &script::node_exporter_args(host.node_exporter_listen),
        node_config_changed,
    ) {
        decision.actions.push(Action::StartNodeExporter { restart });
    }

    // The collector runs a script the recipe writes: a new version of it
    // (or of its unit) means a restart, whatever the host's init.
    let collector = script::wg_metrics_command(host);
    let collector_changed = touched.any(FileKind::WgMetricsScript)
        || (facts.systemd && touched.any(FileKind::WgMetricsUnit));
    let start = daemon_start(
        facts.systemd,
        &facts.wg_metrics,
        &collector[0],
        &collector[1..],
        collector_changed,
    );
    let start = match (start, &facts.wg_metrics) {
        (None, ProcessState::Running { .. }) if collector_changed => Some(true),
        (start, _) => start,
    };
    if let Some(restart) = start {
        decision.actions.push(Action::StartWgMetrics { restart });
    }

    alertmanager_actions(host, facts, &touched, &mut decision);
    exporter_actions(host, facts, &mut decision);
    retire_exporters(host, facts, &mut decision);

    if let Some(listen) = host.prometheus_listen {
        let flag = [format!("--web.listen-address={listen}")];
        let defaults_changed = facts.systemd && touched.any(FileKind::PrometheusDefaults);
        match daemon_start(
            facts.systemd,
            &facts.prometheus,
            PROMETHEUS_BIN,
            &flag,
            defaults_changed,
        ) {
            Some(restart) => decision.actions.push(Action::StartPrometheus { restart }),
            None if touched.any(FileKind::PrometheusConfig)
                || touched.any(FileKind::PrometheusRules)
                || touched.any(FileKind::PrometheusCredentials) =>
            {
                decision.actions.push(Action::ReloadPrometheus)
            }
            // Targets files are picked up by file_sd without a reload.
            None => {}
        }
    }
    Ok(decision)
}

/// Fails when the host already has a WireGuard interface of the desired
/// name, a config file for it or something on the desired UDP port that
/// PromGuard did not put there: a guest never takes over the host's own.
fn refuse_clash(
    host: &DesiredHost,
    guest: &super::Guest,
    facts: &Facts,
    facts_of_guest: &super::GuestFacts,
) -> Result<(), RemoteError> {
    let config = host.wireguard_config_path();
    if facts_of_guest.manifest.has_file(&config) {
        return Ok(());
    }
    let interface = &host.interface;
    let mut found = Vec::new();
    if facts.interface != InterfaceState::Missing {
        found.push(format!("a network interface {interface}"));
    }
    if facts.files.get(&config).is_some_and(Option::is_some) {
        found.push(format!("a WireGuard config {config}"));
    }
    if facts_of_guest.port_used {
        found.push(format!(
            "a program listening on UDP port {}",
            guest.wireguard_port
        ));
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(RemoteError::WireguardClash {
        host: host.name.clone(),
        interface: interface.clone(),
        port: guest.wireguard_port,
        found: found.join(" and "),
    })
}

/// Alertmanager's actions, when the host has it.
fn alertmanager_actions(
    host: &DesiredHost,
    facts: &Facts,
    touched: &Touched,
    decision: &mut Decision,
) {
    let Some(listen) = host.alertmanager_listen else {
        return;
    };
    let flags = script::alertmanager_args(listen, host.alertmanager_cluster.as_ref());
    let defaults_changed = facts.systemd && touched.any(FileKind::AlertmanagerDefaults);
    match daemon_start(
        facts.systemd,
        &facts.alertmanager,
        script::ALERTMANAGER_BIN,
        &flags,
        defaults_changed,
    ) {
        Some(restart) => decision.actions.push(Action::StartAlertmanager { restart }),
        None if touched.any(FileKind::AlertmanagerConfig) => {
            decision.actions.push(Action::ReloadAlertmanager)
        }
        None => {}
    }
}

/// The managed exporters' actions: each is started when it does not run
/// and restarted only when one of its own files changed (its arguments or
/// settings) or, without systemd, it runs with other arguments.
fn exporter_actions(host: &DesiredHost, facts: &Facts, decision: &mut Decision) {
    for e in &host.exporters {
        let paths = e.paths();
        let changed = decision.pending_files.iter().any(|p| paths.contains(p));
        let state = facts
            .exporters
            .get(e.daemon())
            .unwrap_or(&ProcessState::Stopped);
        let start = match daemon_start(
            facts.systemd,
            state,
            &e.binary(),
            &e.args_for(facts.systemd),
            changed,
        ) {
            // Without systemd the settings are in the environment, which
            // the command line does not show.
            None if changed => Some(true),
            start => start,
        };
        if let Some(restart) = start {
            decision.actions.push(Action::StartExporter {
                package: e.package.clone(),
                restart,
            });
        }
    }
}

/// Retires each exporter PromGuard set up on a host it created that the
/// config no longer names. On a host PromGuard is a guest on, the guest
/// manifest holds what it added and `down` undoes it exactly; a dropped
/// exporter stays there until then, its port closed by the firewall.
fn retire_exporters(host: &DesiredHost, facts: &Facts, decision: &mut Decision) {
    if host.guest.is_some() {
        return;
    }
    for package in &facts.exporter_configs {
        if !host.exporters.iter().any(|e| &e.package == package) {
            decision.actions.push(Action::RetireExporter {
                package: package.clone(),
                purge: host.install_packages,
            });
        }
    }
}

/// Whether a daemon must be started (`Some(false)`) or restarted
/// (`Some(true)`). Without systemd its command line must be ours (binary
/// first, with every one of `flags`); with systemd its arguments live in a
/// managed file, so `config_changed` decides.
fn daemon_start(
    systemd: bool,
    state: &ProcessState,
    binary: &str,
    flags: &[String],
    config_changed: bool,
) -> Option<bool> {
    match state {
        ProcessState::Stopped => Some(false),
        ProcessState::Running { .. } if systemd => config_changed.then_some(true),
        ProcessState::Running { args } => {
            let ours = args.first().map(String::as_str) == Some(binary)
                && flags.iter().all(|flag| args.contains(flag));
            (!ours).then_some(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{monitor, node};
    use super::*;

    /// Facts of a host where everything of `host` is already in place.
    fn converged(host: &DesiredHost, systemd: bool) -> Facts {
        let mut files: std::collections::BTreeMap<_, _> = host
            .files
            .iter()
            .map(|f| (f.path.clone(), Some(f.sha256())))
            .collect();
        for f in script::common_files() {
            files.insert(f.path.clone(), Some(f.sha256()));
        }
        for f in script::systemd_files(host) {
            files.insert(f.path.clone(), systemd.then(|| f.sha256()));
        }
        for e in &host.exporters {
            for path in e.paths() {
                files.insert(path, None);
            }
            for f in e.files(systemd, &host.interface) {
                files.insert(f.path.clone(), Some(f.sha256()));
            }
        }
        let running_with = |args: Vec<String>| ProcessState::Running {
            args: if systemd { vec![] } else { args },
        };
        let running = |bin: &str, listen: String| {
            let mut args = vec![bin.to_owned()];
            if bin == NODE_EXPORTER_BIN {
                args.extend(script::node_exporter_args(listen.parse().unwrap()));
            } else {
                args.push(format!("--web.listen-address={listen}"));
            }
            running_with(args)
        };
        Facts {
            systemd,
            files,
            interface: InterfaceState::Up {
                addresses: vec![host.wireguard_prefix(), "fe80::1/64".into()],
            },
            firewall_loaded: true,
            node_exporter: running(NODE_EXPORTER_BIN, host.node_exporter_listen.to_string()),
            prometheus: match host.prometheus_listen {
                Some(listen) => running(PROMETHEUS_BIN, listen.to_string()),
                None => ProcessState::Stopped,
            },
            wg_metrics: running_with(script::wg_metrics_command(host)),
            alertmanager: match host.alertmanager_listen {
                Some(listen) => {
                    let mut args = vec![script::ALERTMANAGER_BIN.to_owned()];
                    args.extend(script::alertmanager_args(
                        listen,
                        host.alertmanager_cluster.as_ref(),
                    ));
                    running_with(args)
                }
                None => ProcessState::Stopped,
            },
            exporters: host
                .exporters
                .iter()
                .map(|e| {
                    let mut args = vec![e.binary()];
                    args.extend(e.args_for(systemd));
                    (e.daemon().to_owned(), running_with(args))
                })
                .collect(),
            programs: PROGRAMS
                .iter()
                .map(|(p, _)| (p.to_string(), true))
                .chain(host.exporters.iter().map(|e| (e.binary(), true)))
                .collect(),
            enabled: if systemd {
                super::super::facts::boot_units(&host.interface)
                    .into_iter()
                    .chain(host.exporters.iter().map(|e| e.unit()))
                    .map(|u| (u, true))
                    .collect()
            } else {
                Default::default()
            },
            pending: PendingApply::Clear,
            guest: None,
            exporter_configs: host.exporters.iter().map(|e| e.package.clone()).collect(),
        }
    }

    /// A marker listing `paths`, as a run cut after writing them leaves.
    fn marker(paths: &[&str]) -> PendingApply {
        PendingApply::Files(paths.iter().map(|p| p.to_string()).collect())
    }

    /// Runs `decide` and prints files, actions and the marker's fate on
    /// one line each.
    fn check(host: &DesiredHost, facts: &Facts) -> String {
        match decide(host, facts) {
            Ok(d) => {
                let files: Vec<&str> = d.files.iter().map(|f| f.path.as_str()).collect();
                let actions: Vec<String> = d.actions.iter().map(ToString::to_string).collect();
                let marker = match (d.pending_files.is_empty(), d.clear_marker) {
                    (true, false) => "none".to_owned(),
                    (true, true) => "remove the old one".to_owned(),
                    (false, old) => format!(
                        "[{}]{}",
                        d.pending_files.join(", "),
                        if old { ", replacing the old one" } else { "" }
                    ),
                };
                format!(
                    "write: [{}]\nrun: [{}]\nmarker: {marker}",
                    files.join(", "),
                    actions.join(", ")
                )
            }
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn decisions() {
        type Tweak = fn(&mut DesiredHost, &mut Facts);
        let cases: Vec<(&str, DesiredHost, bool, Tweak)> = vec![
            ("converged node", node(), false, |_, _| {}),
            ("converged monitor", monitor(), false, |_, _| {}),
            ("converged systemd monitor", monitor(), true, |_, _| {}),
            ("fresh local node", node(), false, |h, f| {
                for v in f.files.values_mut() {
                    *v = None;
                }
                f.interface = InterfaceState::Missing;
                f.firewall_loaded = false;
                f.node_exporter = ProcessState::Stopped;
                f.wg_metrics = ProcessState::Stopped;
                let _ = h;
            }),
            ("new peer on the monitor", monitor(), false, |h, _| {
                h.files[0].content.extend_from_slice(b"[Peer]\n");
            }),
            ("address changed", node(), false, |h, _| {
                h.wireguard_address = "10.0.0.7".parse().unwrap();
                h.node_exporter_listen = "10.0.0.7:9100".parse().unwrap();
                h.files[0].content.extend_from_slice(b"# moved\n");
            }),
            ("interface broken or down", node(), false, |_, f| {
                f.interface = InterfaceState::Broken
            }),
            (
                "interface broken or down while a peer is added",
                monitor(),
                false,
                |h, f| {
                    h.files[0].content.extend_from_slice(b"[Peer]\n");
                    f.interface = InterfaceState::Broken;
                },
            ),
            ("interface up without its address", node(), false, |_, f| {
                f.interface = InterfaceState::Up { addresses: vec![] }
            }),
            ("firewall flushed by someone", node(), false, |_, f| {
                f.firewall_loaded = false
            }),
            ("ruleset changed", node(), false, |h, _| {
                h.files[1].content.push(b'\n')
            }),
            (
                "pid file points at another program",
                node(),
                false,
                |_, f| {
                    f.node_exporter = ProcessState::Running {
                        args: vec!["/usr/sbin/sshd".into(), "-D".into()],
                    };
                },
            ),
            ("prometheus.yml changed", monitor(), false, |h, _| {
                h.files[2].content.push(b'\n')
            }),
            ("only targets changed", monitor(), false, |h, _| {
                h.files[3].content = b"[{}]\n".to_vec()
            }),
            ("prometheus down", monitor(), false, |_, f| {
                f.prometheus = ProcessState::Stopped
            }),
            (
                "prometheus.yml changed while down",
                monitor(),
                false,
                |h, f| {
                    h.files[2].content.push(b'\n');
                    f.prometheus = ProcessState::Stopped;
                },
            ),
            (
                "systemd node whose units were disabled by hand",
                node(),
                true,
                |_, f| {
                    f.enabled.insert("wg-quick@wg0.service".into(), false);
                    f.enabled.remove("prometheus-node-exporter.service");
                },
            ),
            (
                "fresh systemd monitor with packages",
                monitor(),
                true,
                |h, f| {
                    h.install_packages = true;
                    for v in f.files.values_mut() {
                        *v = None;
                    }
                    for v in f.programs.values_mut() {
                        *v = false;
                    }
                    f.interface = InterfaceState::Missing;
                    f.firewall_loaded = false;
                    f.node_exporter = ProcessState::Stopped;
                    f.prometheus = ProcessState::Stopped;
                    f.wg_metrics = ProcessState::Stopped;
                    f.alertmanager = ProcessState::Stopped;
                },
            ),
            (
                "systemd node exporter address changed",
                node(),
                true,
                |h, _| {
                    h.node_exporter_listen = "10.0.0.2:9101".parse().unwrap();
                },
            ),
            ("missing program on a local host", node(), false, |_, f| {
                f.programs.insert("/usr/sbin/nft".into(), false);
            }),
            ("prometheus not needed on a node", node(), false, |_, f| {
                f.programs.insert("/usr/bin/prometheus".into(), false);
            }),
            (
                "interrupted after writing wg0.conf",
                node(),
                false,
                |_, f| f.pending = marker(&["/etc/wireguard/wg0.conf"]),
            ),
            (
                "interrupted after writing every monitor file",
                monitor(),
                false,
                |h, f| {
                    let paths: Vec<&str> = h.files.iter().map(|f| f.path.as_str()).collect();
                    f.pending = marker(&paths);
                },
            ),
            (
                "interrupted, and a new peer since",
                monitor(),
                false,
                |h, f| {
                    h.files[0].content.extend_from_slice(b"[Peer]\n");
                    f.pending = marker(&["/etc/promguard/nftables.conf"]);
                },
            ),
            (
                "interrupted after writing wg0.conf, interface broken",
                node(),
                false,
                |_, f| {
                    f.pending = marker(&["/etc/wireguard/wg0.conf"]);
                    f.interface = InterfaceState::Broken;
                },
            ),
            (
                "interrupted after writing systemd files",
                monitor(),
                true,
                |_, f| {
                    f.pending = marker(&[
                        script::NODE_EXPORTER_DROPIN_PATH,
                        script::FIREWALL_UNIT_PATH,
                        script::PROMETHEUS_DEFAULTS_PATH,
                    ])
                },
            ),
            (
                "systemd file pending on a host without systemd",
                node(),
                false,
                |_, f| f.pending = marker(&[script::NODE_EXPORTER_DEFAULTS_PATH]),
            ),
            (
                "interrupted with only the targets file pending",
                monitor(),
                false,
                |_, f| f.pending = marker(&["/etc/prometheus/promguard/node.json"]),
            ),
            (
                "marker lists a file no longer managed",
                node(),
                false,
                |_, f| f.pending = marker(&["/etc/prometheus/prometheus.yml"]),
            ),
            ("empty marker of ours", node(), false, |_, f| {
                f.pending = marker(&[])
            }),
            (
                "unrecognized marker on a monitor",
                monitor(),
                false,
                |_, f| f.pending = PendingApply::Unrecognized,
            ),
            (
                "unrecognized marker on a systemd monitor",
                monitor(),
                true,
                |_, f| f.pending = PendingApply::Unrecognized,
            ),
        ];
        let mut out = String::new();
        for (name, mut host, systemd, tweak) in cases {
            let mut facts = converged(&host, systemd);
            tweak(&mut host, &mut facts);
            out.push_str(&format!("## {name}\n{}\n\n", check(&host, &facts)));
        }
        expect_test::expect_file!["snapshots/decisions.txt"].assert_eq(&out);
    }

    /// The bug this pins: a run cut between writing `wg0.conf` (and the
    /// ruleset, and `prometheus.yml`) and running their actions left
    /// matching digests, so the next run did nothing and the live peers,
    /// firewall and Prometheus config stayed old for good.
    #[test]
    fn interrupted_apply_reruns_actions_although_digests_match() {
        let host = monitor();
        let mut facts = converged(&host, false);
        assert!(decide(&host, &facts).unwrap().is_empty());

        facts.pending = marker(&[
            "/etc/wireguard/wg0.conf",
            "/etc/promguard/nftables.conf",
            "/etc/prometheus/prometheus.yml",
        ]);
        let decision = decide(&host, &facts).unwrap();
        assert!(decision.files.is_empty(), "digests match: nothing to write");
        assert_eq!(
            decision.actions,
            [
                Action::WireguardSync {
                    interface: host.interface.clone(),
                    readdress: false
                },
                Action::LoadFirewall,
                Action::ReloadPrometheus,
            ]
        );
        assert!(decision.clear_marker);
        assert!(!decision.is_empty());

        // The marker's mere presence costs the second round trip even with
        // nothing left to redo, so that it goes away.
        facts.pending = marker(&[]);
        let decision = decide(&host, &facts).unwrap();
        assert!(decision.actions.is_empty() && decision.files.is_empty());
        assert!(!decision.is_empty());
    }

    fn guest_node() -> (DesiredHost, Facts) {
        use promguard_core::Port;
        let mut host = node();
        host.guest = Some(super::super::Guest {
            wireguard_port: Port::new(51820).unwrap(),
            scrapers: vec!["10.0.0.1".parse().unwrap()],
            exporter_ports: vec![Port::new(9100).unwrap()],
            probe_ports: Vec::new(),
            comment: "promguard-prod".into(),
        });
        let mut facts = converged(&host, true);
        facts.guest = Some(super::super::GuestFacts {
            ufw_active: false,
            port_used: true,
            manifest: super::super::guest::Manifest {
                entries: vec![super::super::guest::Entry::Created(
                    "/etc/wireguard/wg0.conf".into(),
                )],
            },
        });
        (host, facts)
    }

    #[test]
    fn a_guest_never_takes_over_the_hosts_own_wireguard() {
        let (host, mut facts) = guest_node();
        // PromGuard's own interface holds the port: converged.
        assert!(decide(&host, &facts).unwrap().is_empty());
        // The host's own: refused before anything changes.
        facts.guest.as_mut().unwrap().manifest = Default::default();
        let err = decide(&host, &facts).unwrap_err().to_string();
        for part in [
            "node-1 already has a network interface wg0",
            "a WireGuard config /etc/wireguard/wg0.conf",
            "a program listening on UDP port 51820",
            "wireguard.interface and wireguard.port",
            "wireguard = { interface = \"wg1\", port = 51821 }",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
        // Only the port taken.
        facts.interface = InterfaceState::Missing;
        facts.files.insert("/etc/wireguard/wg0.conf".into(), None);
        let err = decide(&host, &facts).unwrap_err().to_string();
        assert!(
            err.contains("already has a program listening on UDP port 51820, which"),
            "{err}"
        );
        facts.guest.as_mut().unwrap().port_used = false;
        assert!(decide(&host, &facts).is_ok());
    }

    #[test]
    fn an_active_ufw_gets_the_rules_once() {
        let (host, mut facts) = guest_node();
        facts.guest.as_mut().unwrap().ufw_active = true;
        let decision = decide(&host, &facts).unwrap();
        assert_eq!(
            decision.actions,
            [Action::UfwAllow(vec![
                "allow 51820/udp comment promguard-prod".into(),
                "allow in on wg0 from 10.0.0.1 to any port 9100 proto tcp comment promguard-prod"
                    .into(),
            ])]
        );
        let manifest = &mut facts.guest.as_mut().unwrap().manifest;
        for rule in host.guest.as_ref().unwrap().ufw_rules(&host.interface) {
            manifest.entries.push(super::super::guest::Entry::Ufw(rule));
        }
        assert!(decide(&host, &facts).unwrap().is_empty());
        // A guest host that does not report guest facts is an error.
        facts.guest = None;
        assert!(decide(&host, &facts).is_err());
    }

    #[test]
    fn a_guest_never_takes_over_the_hosts_own_prometheus() {
        let (mut host, mut facts) = guest_node();
        host.prometheus_listen = Some("127.0.0.1:9090".parse().unwrap());
        facts.programs.insert(PROMETHEUS_BIN.into(), true);
        let err = decide(&host, &facts).unwrap_err().to_string();
        assert!(
            err.contains("node-1 already has a Prometheus")
                && err.contains("prometheus = \"existing\""),
            "{err}"
        );
        // One PromGuard installed is its own.
        facts
            .guest
            .as_mut()
            .unwrap()
            .manifest
            .entries
            .push(super::super::guest::Entry::Package("prometheus".into()));
        assert!(decide(&host, &facts).is_ok());
    }

    fn with_postgres(mut host: DesiredHost) -> DesiredHost {
        host.exporters
            .push(super::super::exporters::tests::postgres());
        host
    }

    /// A new managed exporter on a converged host: installed (with
    /// packages allowed), its files written, systemd reloaded for the
    /// drop-in, started; on a host without packages a clear error.
    #[test]
    fn a_new_managed_exporter_is_installed_configured_and_started() {
        let host = with_postgres(node());
        let mut facts = converged(&node(), true);
        let binary = "/usr/bin/prometheus-postgres-exporter";
        let err = {
            let mut f = facts.clone();
            f.exporters
                .insert("prometheus-postgres-exporter".into(), ProcessState::Stopped);
            f.programs.insert(binary.into(), false);
            for path in host.exporters[0].paths() {
                f.files.insert(path, None);
            }
            decide(&host, &f).unwrap_err().to_string()
        };
        assert!(
            err.contains("node-1 has no /usr/bin/prometheus-postgres-exporter")
                && err.contains("prometheus-postgres-exporter"),
            "{err}"
        );

        let mut host = host;
        host.install_packages = true;
        facts
            .exporters
            .insert("prometheus-postgres-exporter".into(), ProcessState::Stopped);
        facts.programs.insert(binary.into(), false);
        for path in host.exporters[0].paths() {
            facts.files.insert(path, None);
        }
        facts
            .enabled
            .insert("prometheus-postgres-exporter.service".into(), false);
        let d = decide(&host, &facts).unwrap();
        let paths: Vec<&str> = d.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/default/prometheus-postgres-exporter",
                "/etc/systemd/system/prometheus-postgres-exporter.service.d/promguard.conf"
            ]
        );
        assert_eq!(
            d.files[0].mode, 0o600,
            "it holds the data source's password"
        );
        let actions: Vec<String> = d.actions.iter().map(ToString::to_string).collect();
        assert_eq!(
            actions,
            [
                "apt-get install prometheus-postgres-exporter",
                "systemctl daemon-reload",
                "enable prometheus-postgres-exporter.service at boot",
                "start prometheus-postgres-exporter",
            ]
        );
    }

    /// Converged, nothing happens; a changed setting restarts that
    /// exporter only, with or without systemd.
    #[test]
    fn a_managed_exporter_restarts_only_when_its_settings_change() {
        for systemd in [true, false] {
            let host = with_postgres(node());
            let facts = converged(&host, systemd);
            assert!(
                decide(&host, &facts).unwrap().is_empty(),
                "systemd {systemd}"
            );

            let mut changed = host.clone();
            changed.exporters[0].settings[0].1 = promguard_core::exporters::SettingValue::new(
                "postgresql://pg:other@127.0.0.1/postgres".into(),
                true,
            )
            .unwrap();
            let d = decide(&changed, &facts).unwrap();
            let actions: Vec<String> = d.actions.iter().map(ToString::to_string).collect();
            assert_eq!(
                actions,
                ["restart prometheus-postgres-exporter"],
                "systemd {systemd}"
            );
            assert_eq!(d.files.len(), 1);

            // Stopped (crashed, or stopped by hand): started again.
            let mut stopped = facts.clone();
            stopped
                .exporters
                .insert("prometheus-postgres-exporter".into(), ProcessState::Stopped);
            let actions: Vec<String> = decide(&host, &stopped)
                .unwrap()
                .actions
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(actions, ["start prometheus-postgres-exporter"]);
        }
    }

    /// A second replica makes the first one's Alertmanager gossip: it
    /// restarts with the cluster flags (a reload rereads only its config),
    /// and once it runs them nothing more happens.
    #[test]
    fn alertmanager_restarts_to_join_the_replicas_cluster() {
        for systemd in [true, false] {
            let host = monitor();
            let facts = converged(&host, systemd);
            assert!(decide(&host, &facts).unwrap().is_empty());

            let mut clustered = host.clone();
            clustered.alertmanager_cluster = Some(promguard_core::plan::AlertmanagerCluster {
                advertise: "10.0.0.1:9094".parse().unwrap(),
                peers: vec!["10.0.0.2:9094".parse().unwrap()],
                apis: vec!["10.0.0.2:9093".parse().unwrap()],
                drop_labels: vec!["monitor".into(), "replica".into()],
            });
            let d = decide(&clustered, &facts).unwrap();
            let actions: Vec<String> = d.actions.iter().map(ToString::to_string).collect();
            assert_eq!(actions, ["restart alertmanager"], "systemd {systemd}");
            let flags = script::alertmanager_args(
                "127.0.0.1:9093".parse().unwrap(),
                clustered.alertmanager_cluster.as_ref(),
            );
            for flag in [
                "--web.listen-address=0.0.0.0:9093",
                "--cluster.listen-address=0.0.0.0:9094",
                "--cluster.advertise-address=10.0.0.1:9094",
                "--cluster.peer=10.0.0.2:9094",
            ] {
                assert!(flags.contains(&flag.to_owned()), "{flags:?}");
            }
            assert!(decide(&clustered, &converged(&clustered, systemd))
                .unwrap()
                .is_empty());
        }
    }

    /// An exporter PromGuard set up that the config no longer names is
    /// stopped, and purged where PromGuard installs packages; on a guest
    /// host it waits for `down`, which undoes the manifest exactly; once
    /// its files are gone the host is converged again.
    #[test]
    fn an_exporter_dropped_from_the_config_is_retired() {
        for systemd in [true, false] {
            let facts = converged(&with_postgres(node()), systemd);
            let mut host = node();
            for (install, action) in [
                (
                    false,
                    "stop prometheus-postgres-exporter, no longer in the config",
                ),
                (
                    true,
                    "stop and purge prometheus-postgres-exporter, no longer in the config",
                ),
            ] {
                host.install_packages = install;
                let actions: Vec<String> = decide(&host, &facts)
                    .unwrap()
                    .actions
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                assert_eq!(actions, [action], "systemd {systemd}");
            }
            let mut retired = facts.clone();
            retired.exporter_configs.clear();
            assert!(decide(&host, &retired).unwrap().is_empty());
        }
        let (host, mut facts) = guest_node();
        facts.exporter_configs.insert(
            promguard_core::exporters::DebianPackage::new("prometheus-postgres-exporter").unwrap(),
        );
        assert!(!decide(&host, &facts)
            .unwrap()
            .actions
            .iter()
            .any(|a| matches!(a, Action::RetireExporter { .. })));
    }
}
