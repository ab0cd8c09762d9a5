//! The apply script: one bash script, generated from a [`Decision`], that
//! writes the changed files and runs the actions.
//!
//! Nothing from outside reaches the script unchecked: paths passed
//! [`crate::check_remote_path`] and are quoted, file contents travel as
//! base64 in quoted here-documents, addresses and interface names are
//! typed values and quoted too. The script runs under `bash -s` with its
//! body in a function, so bash has read all of it before the first
//! command runs and no command can swallow the rest of the script from
//! standard input.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use promguard_core::plan::AlertmanagerCluster;

use super::decide::{Action, Decision};
use super::facts::{ALERTMANAGER, NODE_EXPORTER, PROMETHEUS, WG_METRICS};
use super::{DesiredFile, DesiredHost, FileKind};
use crate::quote::shell_quote;

/// node_exporter's binary (Debian's `prometheus-node-exporter`).
pub const NODE_EXPORTER_BIN: &str = "/usr/bin/prometheus-node-exporter";
/// Prometheus' binary.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
/// Prometheus' data directory (Debian's default).
pub const PROMETHEUS_STORAGE: &str = "/var/lib/prometheus/metrics2";
/// Alertmanager's binary (Debian's `prometheus-alertmanager`).
pub const ALERTMANAGER_BIN: &str = "/usr/bin/prometheus-alertmanager";
/// Alertmanager's config (Debian's place for it).
pub const ALERTMANAGER_CONFIG_PATH: &str = "/etc/prometheus/alertmanager.yml";
/// Alertmanager's data directory (Debian's default).
pub const ALERTMANAGER_STORAGE: &str = "/var/lib/prometheus/alertmanager";
/// Alertmanager's flags on systemd hosts.
pub const ALERTMANAGER_DEFAULTS_PATH: &str = "/etc/default/prometheus-alertmanager";
/// Alertmanager's unit (Debian's).
pub const ALERTMANAGER_UNIT: &str = "prometheus-alertmanager.service";
/// Programs only a host with Prometheus or Alertmanager needs.
pub const MONITOR_PROGRAMS: &[&str] = &[PROMETHEUS_BIN, ALERTMANAGER_BIN];
/// The user the monitoring daemons run as, when the host has it.
pub const DAEMON_USER: &str = "prometheus";
/// Where daemons started without systemd keep PID files and logs.
pub const RUN_DIR: &str = "/run/promguard";

/// node_exporter's flags on systemd hosts.
pub const NODE_EXPORTER_DEFAULTS_PATH: &str = "/etc/default/prometheus-node-exporter";
/// Orders node_exporter after the WireGuard interface on systemd hosts.
pub const NODE_EXPORTER_DROPIN_PATH: &str =
    "/etc/systemd/system/prometheus-node-exporter.service.d/promguard.conf";
/// Prometheus' flags on systemd hosts.
pub const PROMETHEUS_DEFAULTS_PATH: &str = "/etc/default/prometheus";
/// Loads PromGuard's ruleset at boot on systemd hosts.
pub const FIREWALL_UNIT_PATH: &str = "/etc/systemd/system/promguard-firewall.service";
/// The firewall unit's name.
pub const FIREWALL_UNIT: &str = "promguard-firewall.service";
/// node_exporter's unit (Debian's).
pub const NODE_EXPORTER_UNIT: &str = "prometheus-node-exporter.service";
/// Prometheus' unit (Debian's).
pub const PROMETHEUS_UNIT: &str = "prometheus.service";
/// Where apt's output goes on a host, so that a cut connection cannot
/// stop an install halfway (apt writing to a closed channel).
pub const APT_LOG_PATH: &str = "/var/log/promguard/apt.log";

/// The WireGuard metrics collector (`sh/wg_metrics.sh`), on every host.
pub const WG_METRICS_SCRIPT_PATH: &str = "/etc/promguard/wg-metrics.sh";
/// The collector's unit on systemd hosts.
pub const WG_METRICS_UNIT_PATH: &str = "/etc/systemd/system/promguard-wg-metrics.service";
/// The collector unit's name.
pub const WG_METRICS_UNIT: &str = "promguard-wg-metrics.service";
/// Seconds between two collections: well inside the stale-metrics alert's
/// threshold, and cheap (four `wg show` and one rename).
pub const WG_METRICS_INTERVAL: u32 = 15;
/// node_exporter's textfile collector directory (Debian's default), where
/// the collector writes `wireguard.prom`.
pub const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
/// The collector itself: reads `wg show` (never keys) and writes metrics.
const WG_METRICS_SCRIPT: &str = include_str!("sh/wg_metrics.sh");

/// Files the recipe itself writes on every host.
pub const COMMON_PATHS: &[&str] = &[WG_METRICS_SCRIPT_PATH];

/// Files the recipe itself writes on systemd hosts.
pub const SYSTEMD_PATHS: &[&str] = &[
    NODE_EXPORTER_DEFAULTS_PATH,
    NODE_EXPORTER_DROPIN_PATH,
    FIREWALL_UNIT_PATH,
    PROMETHEUS_DEFAULTS_PATH,
    WG_METRICS_UNIT_PATH,
    ALERTMANAGER_DEFAULTS_PATH,
];

/// The apply marker: written (atomically, mode 0600) before the apply
/// script writes any file and removed only after its last action
/// succeeded. While it exists, the files it lists may be newer than what
/// runs (a run cut between writing `wg0.conf` and `wg syncconf` leaves a
/// matching digest but old peers), so the next run redoes their actions.
///
/// It lives in `/etc/promguard`, not `/var/lib/promguard`: the local
/// provider gives each host a private `/etc/promguard` (bind-mounted), but
/// `/var/lib/promguard` is the machine's own, shared by every local host
/// (it holds the provider's state).
pub const APPLY_MARKER_PATH: &str = "/etc/promguard/apply-pending";
/// The apply marker's first line; the others are `file <path>`.
pub const APPLY_MARKER_HEADER: &str = "promguard-apply-pending 1";
/// At most this many `file` lines are read back from a marker; a longer
/// one is not ours and counts as unrecognized.
pub const APPLY_MARKER_MAX_FILES: usize = 256;

/// The apply marker's content for `paths` (each checked by
/// [`crate::check_remote_path`]).
pub fn apply_marker_content(paths: &[String]) -> String {
    let mut text = format!("{APPLY_MARKER_HEADER}\n");
    for path in paths {
        let _ = writeln!(text, "file {path}");
    }
    text
}

/// The marker ending each embedded file; base64 never contains `_`.
const EOF_MARKER: &str = "PROMGUARD_EOF";

/// node_exporter's flags: the WireGuard address only, and the textfile
/// collector reading the collector's metrics.
pub fn node_exporter_args(listen: std::net::SocketAddr) -> Vec<String> {
    vec![
        format!("--web.listen-address={listen}"),
        format!("--collector.textfile.directory={TEXTFILE_DIR}"),
    ]
}

/// The collector's command line (binary first).
pub fn wg_metrics_command(host: &DesiredHost) -> Vec<String> {
    vec![
        "/bin/bash".to_owned(),
        WG_METRICS_SCRIPT_PATH.to_owned(),
        host.interface.to_string(),
        TEXTFILE_DIR.to_owned(),
        WG_METRICS_INTERVAL.to_string(),
        promguard_wg::files::PEER_NAMES_PATH.to_owned(),
    ]
}

/// The files the recipe writes itself on every host.
pub fn common_files() -> Vec<DesiredFile> {
    vec![DesiredFile::new(
        FileKind::WgMetricsScript,
        WG_METRICS_SCRIPT_PATH,
        0o755,
        WG_METRICS_SCRIPT,
    )]
}

/// Alertmanager's flags: its API on loopback only; without replicas no
/// cluster listener (its default would gossip on port 9094 of every
/// address), with them the gossip with the other replicas'.
pub fn alertmanager_args(
    listen: std::net::SocketAddr,
    cluster: Option<&AlertmanagerCluster>,
) -> Vec<String> {
    let mut args = vec![
        format!("--config.file={ALERTMANAGER_CONFIG_PATH}"),
        format!("--storage.path={ALERTMANAGER_STORAGE}"),
    ];
    match cluster {
        // Gossip off: nobody to share notifications with.
        None => args.extend([
            format!("--web.listen-address={listen}"),
            "--cluster.listen-address=".to_owned(),
        ]),
        Some(cluster) => {
            // Every address, not the WireGuard one, which may not exist
            // yet when Alertmanager starts at boot (and loopback still
            // answers the tunnel and the recipe); the firewall lets only
            // the other replicas in over WireGuard, and the others are
            // told the WireGuard address.
            let any = |port: u16| {
                let ip: std::net::IpAddr = if cluster.advertise.is_ipv4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                };
                std::net::SocketAddr::new(ip, port)
            };
            args.push(format!("--web.listen-address={}", any(listen.port())));
            args.push(format!(
                "--cluster.listen-address={}",
                any(cluster.advertise.port())
            ));
            args.push(format!("--cluster.advertise-address={}", cluster.advertise));
            args.extend(cluster.peers.iter().map(|p| format!("--cluster.peer={p}")));
        }
    }
    args
}

fn prometheus_args(listen: std::net::SocketAddr) -> Vec<String> {
    vec![
        "--config.file=/etc/prometheus/prometheus.yml".to_owned(),
        format!("--storage.tsdb.path={PROMETHEUS_STORAGE}"),
        format!("--web.listen-address={listen}"),
    ]
}

/// The listeners `ss` shows once Alertmanager's API is up, for
/// `wait_listening` (a space-separated, quoted list): `listen` itself, or
/// with a cluster the wildcard of its port, which Go opens as one
/// dual-stack socket (`*`) where it can.
fn alertmanager_listeners(host: &DesiredHost, listen: std::net::SocketAddr) -> String {
    let port = listen.port();
    let list = match &host.alertmanager_cluster {
        None => listen.to_string(),
        Some(c) if c.advertise.is_ipv4() => format!("0.0.0.0:{port} *:{port}"),
        Some(_) => format!("[::]:{port} *:{port}"),
    };
    shell_quote(&list)
}

/// The files the recipe writes itself on a systemd host.
pub fn systemd_files(host: &DesiredHost) -> Vec<DesiredFile> {
    let wg_unit = format!("wg-quick@{}.service", host.interface);
    let mut files = vec![
        DesiredFile::new(
            FileKind::NodeExporterDefaults,
            NODE_EXPORTER_DEFAULTS_PATH,
            0o644,
            format!(
                "# Managed by PromGuard.\nARGS=\"{}\"\n",
                node_exporter_args(host.node_exporter_listen).join(" ")
            ),
        ),
        DesiredFile::new(
            FileKind::NodeExporterDropIn,
            NODE_EXPORTER_DROPIN_PATH,
            0o644,
            format!(
                "# Managed by PromGuard: node_exporter binds to the WireGuard address.\n\
                 [Unit]\nWants={wg_unit}\nAfter={wg_unit}\n"
            ),
        ),
        DesiredFile::new(
            FileKind::FirewallUnit,
            FIREWALL_UNIT_PATH,
            0o644,
            // As Debian's own nftables.service: no default dependencies
            // (they would order it after sysinit.target, which cloud-init
            // and networking are ordered before: an ordering cycle that
            // systemd breaks by dropping one of them), so the table is in
            // force before any interface comes up.
            format!(
                "# Managed by PromGuard.\n[Unit]\nDescription=PromGuard firewall table\n\
                 DefaultDependencies=no\nWants=network-pre.target\n\
                 Before=network-pre.target shutdown.target\nConflicts=shutdown.target\n\
                 RequiresMountsFor={dir}\n\n\
                 [Service]\nType=oneshot\nRemainAfterExit=yes\nStandardInput=null\n\
                 ExecStart=/usr/sbin/nft -f {path}\nExecReload=/usr/sbin/nft -f {path}\n\n\
                 [Install]\nWantedBy=sysinit.target\n",
                path = promguard_core::nftables::RULESET_PATH,
                dir = "/etc/promguard",
            ),
        ),
    ];
    files.push(DesiredFile::new(
        FileKind::WgMetricsUnit,
        WG_METRICS_UNIT_PATH,
        0o644,
        format!(
            "# Managed by PromGuard: WireGuard health for node_exporter's textfile collector.\n\
             [Unit]\nDescription=PromGuard WireGuard metrics\nAfter={wg_unit}\n\n\
             [Service]\nExecStart={}\nRestart=always\nRestartSec=5\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            wg_metrics_command(host).join(" ")
        ),
    ));
    if let Some(listen) = host.prometheus_listen {
        files.push(DesiredFile::new(
            FileKind::PrometheusDefaults,
            PROMETHEUS_DEFAULTS_PATH,
            0o644,
            format!(
                "# Managed by PromGuard.\nARGS=\"{}\"\n",
                prometheus_args(listen).join(" ")
            ),
        ));
    }
    if let Some(listen) = host.alertmanager_listen {
        files.push(DesiredFile::new(
            FileKind::AlertmanagerDefaults,
            ALERTMANAGER_DEFAULTS_PATH,
            0o644,
            format!(
                "# Managed by PromGuard.\nARGS=\"{}\"\n",
                alertmanager_args(listen, host.alertmanager_cluster.as_ref()).join(" ")
            ),
        ));
    }
    files
}

/// Shell functions every apply script starts with.
pub(crate) const PRELUDE: &str = include_str!("sh/prelude.sh");

/// Functions for hosts without systemd: daemons tracked by PID files.
const SUPERVISOR: &str = include_str!("sh/supervisor.sh");

/// Functions for route upkeep after `wg syncconf`, which (unlike
/// `wg-quick up`) adds no routes for new peers.
const ROUTES: &str = include_str!("sh/routes.sh");

/// Functions that install packages with apt-get, keeping the new services
/// from starting with Debian's defaults.
const APT: &str = include_str!("sh/apt.sh");

/// The apply script for `host` (its facts said `systemd`) carrying out
/// `decision`.
pub fn apply_script(host: &DesiredHost, systemd: bool, decision: &Decision) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# PromGuard apply script for {} ({}), generated; run with bash -s.",
        host.name, host.role
    );
    s.push_str("main() {\n");
    s.push_str(PRELUDE);
    if !systemd {
        s.push_str(SUPERVISOR);
    }
    if decision
        .actions
        .iter()
        .any(|a| matches!(a, Action::WireguardSync { .. }))
    {
        s.push_str(ROUTES);
    }

    if decision.actions.iter().any(|a| {
        matches!(
            a,
            Action::InstallPackages(_) | Action::RetireExporter { purge: true, .. }
        )
    }) {
        s.push_str(APT);
    }
    let guest = host.guest.is_some();
    if guest {
        s.push_str(&super::guest::guest_variables());
        s.push_str(super::guest::GUEST_SH);
        s.push_str("step 'note in the guest manifest'\nguest_begin\n");
    }

    // Packages first, so their files exist before ours replace them.
    for action in &decision.actions {
        if let Action::InstallPackages(packages) = action {
            install_packages(&mut s, host, packages, systemd, guest);
        }
    }
    // The marker goes in before the first file and lists every file whose
    // action this run owes (written now or left pending by a run cut
    // short), so a cut anywhere below makes the next run redo them.
    if !decision.pending_files.is_empty() {
        let marker = DesiredFile::new(
            FileKind::Other,
            APPLY_MARKER_PATH,
            0o600,
            apply_marker_content(&decision.pending_files),
        );
        let _ = writeln!(
            s,
            "step {}",
            shell_quote(&format!("mark {APPLY_MARKER_PATH}"))
        );
        if guest {
            super::guest::note_files(&mut s, &[APPLY_MARKER_PATH]);
        }
        write_embedded(&mut s, &marker);
    }
    for file in &decision.files {
        let _ = writeln!(s, "step {}", shell_quote(&format!("write {}", file.path)));
        if guest {
            super::guest::note_files(&mut s, &[&file.path]);
        }
        write_embedded(&mut s, file);
    }
    for action in &decision.actions {
        if !matches!(action, Action::InstallPackages(_)) {
            let _ = writeln!(s, "step {}", shell_quote(&action.to_string()));
            if guest {
                guest_notes(&mut s, systemd, action);
            }
            if systemd {
                systemd_action(&mut s, host, action);
            } else {
                plain_action(&mut s, host, action);
            }
        }
    }
    // Reached only when every step above succeeded: `fail` exits, so a
    // failed action leaves the marker for the next run to retry.
    if !decision.pending_files.is_empty() || decision.clear_marker {
        let _ = writeln!(
            s,
            "step {}\nrm -f -- {} || fail \"cannot remove {APPLY_MARKER_PATH}\"",
            shell_quote(&format!("clear {APPLY_MARKER_PATH}")),
            shell_quote(APPLY_MARKER_PATH)
        );
    }
    if guest {
        s.push_str("guest_report\n");
    }
    s.push_str("echo 'step done'\n}\nmain </dev/null\n");
    s
}

/// On a guest host, what `action` notes in the manifest before it runs.
fn guest_notes(s: &mut String, systemd: bool, action: &Action) {
    match action {
        Action::WireguardUp(name) | Action::WireguardRecreate(name) if systemd => {
            super::guest::note_units(s, &[format!("wg-quick@{name}.service")]);
        }
        Action::EnableAtBoot(units) if systemd => super::guest::note_units(s, units),
        Action::StartNodeExporter { .. } if systemd => {
            super::guest::note_units(s, &[NODE_EXPORTER_UNIT.to_owned()])
        }
        Action::StartWgMetrics { .. } if systemd => {
            super::guest::note_units(s, &[WG_METRICS_UNIT.to_owned()])
        }
        Action::StartPrometheus { .. } if systemd => {
            super::guest::note_units(s, &[PROMETHEUS_UNIT.to_owned()])
        }
        Action::StartAlertmanager { .. } if systemd => {
            super::guest::note_units(s, &[ALERTMANAGER_UNIT.to_owned()])
        }
        Action::StartExporter { package, .. } if systemd => {
            super::guest::note_units(s, &[package.unit()])
        }
        _ => {}
    }
}

/// `guest_ufw` for each rule (its words are typed values: ports,
/// addresses, interface names, a checked comment).
fn ufw_allow(s: &mut String, rules: &[String]) {
    for rule in rules {
        let words: Vec<String> = rule.split_whitespace().map(shell_quote).collect();
        let _ = writeln!(s, "guest_ufw {}", words.join(" "));
    }
}

/// `write_file` for `file`, its content as base64 in a quoted here-document.
/// Alertmanager's config and Prometheus' credentials may hold a password:
/// 0600, and owned by the daemons' user so that the daemon can read them.
fn write_embedded(s: &mut String, file: &DesiredFile) {
    let path = shell_quote(&file.path);
    let owner = if matches!(
        file.kind,
        FileKind::AlertmanagerConfig | FileKind::PrometheusCredentials
    ) {
        format!(" {DAEMON_USER}")
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "write_file {path} {:04o}{owner} <<'{EOF_MARKER}'",
        file.mode
    );
    let encoded = STANDARD.encode(&file.content);
    for chunk in encoded.as_bytes().chunks(76) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    let _ = writeln!(s, "{EOF_MARKER}");
}

/// Units whose packages would start them with Debian's defaults
/// (node_exporter on every address) before PromGuard's config is in.
pub(crate) const HELD_UNITS: &[&str] = &[NODE_EXPORTER_UNIT, PROMETHEUS_UNIT, ALERTMANAGER_UNIT];

fn install_packages(
    s: &mut String,
    host: &DesiredHost,
    packages: &[String],
    systemd: bool,
    guest: bool,
) {
    let list: Vec<String> = packages.iter().map(|p| shell_quote(p)).collect();
    // An exporter's package would start it on every address with
    // Debian's defaults, as node_exporter's would.
    let held: Vec<String> = HELD_UNITS
        .iter()
        .map(|u| u.to_string())
        .chain(host.exporters.iter().map(|e| e.unit()))
        .map(|u| shell_quote(&u))
        .collect();
    let _ = writeln!(
        s,
        "step {}",
        shell_quote(&format!("apt-get install {}", packages.join(" "))),
    );
    // Before apt_begin makes the log's directory, so that it is noted too.
    if guest {
        let _ = writeln!(
            s,
            "guest_file {}\nguest_packages_before",
            shell_quote(APT_LOG_PATH)
        );
    }
    let _ = writeln!(s, "apt_begin {}", shell_quote(APT_LOG_PATH));
    // The functions of `sh/apt.sh` say why each step is there.
    if systemd {
        let _ = writeln!(s, "hold_units {}", held.join(" "));
    } else {
        s.push_str("hold_services\n");
    }
    let _ = writeln!(s, "apt_install {}", list.join(" "));
    if guest {
        s.push_str("guest_packages_after\n");
    }
    if systemd {
        let _ = writeln!(s, "release_units {}", held.join(" "));
    } else {
        s.push_str("release_services\n");
    }
}

/// Commands for one action on a host without systemd.
fn plain_action(s: &mut String, host: &DesiredHost, action: &Action) {
    let node_listen = shell_quote(&host.node_exporter_listen.to_string());
    match action {
        Action::InstallPackages(_) | Action::DaemonReload | Action::EnableAtBoot(_) => {}
        Action::WireguardUp(name) | Action::WireguardRecreate(name) => {
            let i = shell_quote(name.as_str());
            if matches!(action, Action::WireguardRecreate(_)) {
                delete_interface(s, name);
            }
            // An interface name is lowercase letters, digits and '-' only
            // (checked by its type), so it may appear unquoted in messages.
            let _ = writeln!(
                s,
                "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wg-quick up {i} >&2 || fail \"wg-quick up {name} failed\"\n\
                 wg show {i} >/dev/null || fail \"{name} does not answer after wg-quick up\""
            );
        }
        Action::WireguardSync {
            interface,
            readdress,
        } => wireguard_sync(s, host, interface, *readdress),
        Action::LoadFirewall => load_firewall(s),
        Action::StartNodeExporter { .. } => {
            let args: Vec<String> = node_exporter_args(host.node_exporter_listen)
                .iter()
                .map(|a| shell_quote(a))
                .collect();
            let _ = writeln!(
                s,
                "start_daemon {NODE_EXPORTER} {NODE_EXPORTER_BIN} {}\n\
                 wait_listening node_exporter {node_listen} tail -n 20 {RUN_DIR}/{NODE_EXPORTER}.log",
                args.join(" ")
            );
        }
        Action::StartWgMetrics { .. } => {
            let command: Vec<String> = wg_metrics_command(host)
                .iter()
                .map(|a| shell_quote(a))
                .collect();
            // As root: `wg show` needs it; the script reads no key.
            let _ = writeln!(s, "start_root_daemon {WG_METRICS} {}", command.join(" "));
        }
        Action::StartPrometheus { .. } => {
            let listen = host
                .prometheus_listen
                .expect("Prometheus actions only when it is wanted");
            let args: Vec<String> = prometheus_args(listen)
                .iter()
                .map(|a| shell_quote(a))
                .collect();
            let _ = writeln!(
                s,
                "mkdir -p {PROMETHEUS_STORAGE} || fail \"cannot create {PROMETHEUS_STORAGE}\"\n\
                 if id prometheus >/dev/null 2>&1; then chown prometheus:prometheus {PROMETHEUS_STORAGE}; fi\n\
                 start_daemon {PROMETHEUS} {PROMETHEUS_BIN} {}\n\
                 wait_listening prometheus {} tail -n 20 {RUN_DIR}/{PROMETHEUS}.log",
                args.join(" "),
                shell_quote(&listen.to_string())
            );
        }
        Action::ReloadPrometheus => {
            let _ = writeln!(s, "signal_daemon {PROMETHEUS} {PROMETHEUS_BIN} HUP");
        }
        Action::StartAlertmanager { .. } => {
            let listen = host
                .alertmanager_listen
                .expect("Alertmanager actions only when it is wanted");
            let args: Vec<String> = alertmanager_args(listen, host.alertmanager_cluster.as_ref())
                .iter()
                .map(|a| shell_quote(a))
                .collect();
            let _ = writeln!(
                s,
                "mkdir -p {ALERTMANAGER_STORAGE} || fail \"cannot create {ALERTMANAGER_STORAGE}\"\n\
                 if id {DAEMON_USER} >/dev/null 2>&1; then chown {DAEMON_USER}:{DAEMON_USER} {ALERTMANAGER_STORAGE}; fi\n\
                 start_daemon {ALERTMANAGER} {ALERTMANAGER_BIN} {}\n\
                 wait_listening alertmanager {} tail -n 20 {RUN_DIR}/{ALERTMANAGER}.log",
                args.join(" "),
                alertmanager_listeners(host, listen)
            );
        }
        Action::ReloadAlertmanager => {
            let _ = writeln!(s, "signal_daemon {ALERTMANAGER} {ALERTMANAGER_BIN} HUP");
        }
        Action::StartExporter { package, .. } => {
            let e = exporter_of(host, package);
            let args: Vec<String> = e.args_for(false).iter().map(|a| shell_quote(a)).collect();
            if e.data_dir_flag.is_some() {
                let dir = shell_quote(&e.data_dir(false));
                let _ = writeln!(
                    s,
                    "mkdir -p {dir}\nif id {DAEMON_USER} >/dev/null 2>&1; then chown {DAEMON_USER}:{DAEMON_USER} {dir}; fi"
                );
            }
            let _ = writeln!(
                s,
                "start_env_daemon {d} {env} {bin} {args}\n\
                 wait_listening {d} {listen} tail -n 20 {RUN_DIR}/{d}.log",
                d = shell_quote(e.daemon()),
                env = shell_quote(&e.plain_env_path()),
                bin = shell_quote(&e.binary()),
                args = args.join(" "),
                listen = shell_quote(&e.listen.to_string()),
            );
        }
        Action::RetireExporter { package, purge } => {
            let env = super::exporters::plain_env_path(package);
            let _ = writeln!(
                s,
                "stop_daemon {d} {bin}\nrm -f -- {env_q} || fail \"cannot remove {env}\"",
                d = shell_quote(package.as_str()),
                bin = shell_quote(&package.binary()),
                env_q = shell_quote(&env),
            );
            if *purge {
                apt_purge(s, package);
            }
        }
        Action::UfwAllow(rules) => ufw_allow(s, rules),
    }
}

/// The managed exporter of `package` on `host`: decide names only those.
fn exporter_of<'a>(
    host: &'a DesiredHost,
    package: &promguard_core::exporters::DebianPackage,
) -> &'a super::ManagedExporter {
    host.exporters
        .iter()
        .find(|e| &e.package == package)
        .expect("exporter actions only for the host's own exporters")
}

/// Commands for one action on a systemd host.
fn systemd_action(s: &mut String, host: &DesiredHost, action: &Action) {
    let node_listen = shell_quote(&host.node_exporter_listen.to_string());
    match action {
        Action::InstallPackages(_) => {}
        Action::DaemonReload => {
            s.push_str("systemctl daemon-reload || fail \"systemctl daemon-reload failed\"\n")
        }
        Action::WireguardUp(name) | Action::WireguardRecreate(name) => {
            let unit_name = format!("wg-quick@{name}.service");
            let unit = shell_quote(&unit_name);
            let i = shell_quote(name.as_str());
            if matches!(action, Action::WireguardRecreate(_)) {
                delete_interface(s, name);
            }
            let _ = writeln!(
                s,
                "systemctl enable --quiet {unit} && systemctl restart {unit} || fail \"cannot start {unit_name}\"\n\
                 wg show {i} >/dev/null || fail \"{name} does not answer after starting {unit_name}\""
            );
        }
        Action::WireguardSync {
            interface,
            readdress,
        } => wireguard_sync(s, host, interface, *readdress),
        Action::LoadFirewall => load_firewall(s),
        Action::EnableAtBoot(units) => {
            let quoted: Vec<String> = units.iter().map(|u| shell_quote(u)).collect();
            let _ = writeln!(
                s,
                "systemctl unmask --runtime --quiet {q} && systemctl reenable --quiet {q} || fail \"cannot enable {} at boot\"",
                units.join(" "),
                q = quoted.join(" "),
            );
        }
        Action::StartNodeExporter { .. } => {
            let _ = writeln!(
                s,
                "systemctl unmask --runtime --quiet prometheus-node-exporter.service; systemctl enable --quiet prometheus-node-exporter.service && systemctl restart prometheus-node-exporter.service || fail \"cannot start prometheus-node-exporter.service\"\n\
                 wait_listening node_exporter {node_listen} journalctl -u prometheus-node-exporter.service -n 20 --no-pager"
            );
        }
        Action::StartWgMetrics { .. } => {
            let _ = writeln!(
                s,
                "systemctl enable --quiet {WG_METRICS_UNIT} && systemctl restart {WG_METRICS_UNIT} || fail \"cannot start {WG_METRICS_UNIT}\""
            );
        }
        Action::StartPrometheus { .. } => {
            let listen = host
                .prometheus_listen
                .expect("Prometheus actions only when it is wanted");
            let _ = writeln!(
                s,
                "systemctl unmask --runtime --quiet prometheus.service; systemctl enable --quiet prometheus.service && systemctl restart prometheus.service || fail \"cannot start prometheus.service\"\n\
                 wait_listening prometheus {} journalctl -u prometheus.service -n 20 --no-pager",
                shell_quote(&listen.to_string())
            );
        }
        Action::ReloadPrometheus => {
            s.push_str("systemctl reload prometheus.service || fail \"cannot reload prometheus.service\"\n");
        }
        Action::StartAlertmanager { .. } => {
            let listen = host
                .alertmanager_listen
                .expect("Alertmanager actions only when it is wanted");
            let _ = writeln!(
                s,
                "systemctl unmask --runtime --quiet {ALERTMANAGER_UNIT}; systemctl enable --quiet {ALERTMANAGER_UNIT} && systemctl restart {ALERTMANAGER_UNIT} || fail \"cannot start {ALERTMANAGER_UNIT}\"\n\
                 wait_listening alertmanager {} journalctl -u {ALERTMANAGER_UNIT} -n 20 --no-pager",
                alertmanager_listeners(host, listen)
            );
        }
        Action::ReloadAlertmanager => {
            let _ = writeln!(
                s,
                "systemctl reload {ALERTMANAGER_UNIT} || fail \"cannot reload {ALERTMANAGER_UNIT}\""
            );
        }
        Action::StartExporter { package, .. } => {
            let e = exporter_of(host, package);
            let unit_name = e.unit();
            let unit = shell_quote(&unit_name);
            let _ = writeln!(
                s,
                "systemctl unmask --runtime --quiet {unit}; systemctl enable --quiet {unit} && systemctl restart {unit} || fail \"cannot start {unit_name}\"\n\
                 wait_listening {d} {listen} journalctl -u {unit} -n 20 --no-pager",
                d = shell_quote(e.daemon()),
                listen = shell_quote(&e.listen.to_string()),
            );
        }
        Action::RetireExporter { package, purge } => {
            let dropin = super::exporters::dropin_path(package);
            let dir = dropin.rsplit_once('/').map_or(dropin.as_str(), |(d, _)| d);
            // The unit may be gone already (purged by hand): nothing to stop.
            let _ = writeln!(
                s,
                "systemctl disable --now --quiet {unit} 2>/dev/null || true\n\
                 rm -f -- {dropin_q} || fail \"cannot remove {dropin}\"\n\
                 rmdir -- {dir} 2>/dev/null || true\n\
                 systemctl daemon-reload || fail \"systemctl daemon-reload failed\"",
                unit = shell_quote(&package.unit()),
                dropin_q = shell_quote(&dropin),
                dir = shell_quote(dir),
            );
            if *purge {
                apt_purge(s, package);
            }
        }
        Action::UfwAllow(rules) => ufw_allow(s, rules),
    }
}

/// Purges `package` (`sh/apt.sh`), its output in the apt log.
fn apt_purge(s: &mut String, package: &promguard_core::exporters::DebianPackage) {
    let _ = writeln!(
        s,
        "apt_begin {}\napt_purge {}",
        shell_quote(APT_LOG_PATH),
        shell_quote(package.as_str())
    );
}

/// Deletes a broken interface so that `wg-quick up` can create it anew.
/// Its wireguard-go (if any) exits when its TUN device goes away and then
/// removes its socket by path; waiting for that (at most 5 s) keeps it
/// from removing the socket of the wireguard-go that `wg-quick up` starts
/// next. A socket nobody listens on is left over and removed.
fn delete_interface(s: &mut String, name: &promguard_core::InterfaceName) {
    let i = shell_quote(name.as_str());
    let sock = format!("/run/wireguard/{name}.sock");
    let _ = writeln!(
        s,
        "ip link delete dev {i} 2>/dev/null\n\
         i=0\n\
         while [ -S {q} ] && ss -Hxl | awk '{{print $5}}' | grep -Fxq -e {q} -e {qv} && [ \"$i\" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done\n\
         rm -f {q}\n\
         ! ip link show dev {i} >/dev/null 2>&1 || fail \"cannot delete the broken interface {name}\"",
        q = shell_quote(&sock),
        qv = shell_quote(&format!("/var{sock}")),
    );
}

fn wireguard_sync(
    s: &mut String,
    host: &DesiredHost,
    interface: &promguard_core::InterfaceName,
    readdress: bool,
) {
    let i = shell_quote(interface.as_str());
    if readdress {
        let _ = writeln!(
            s,
            "ip address flush dev {i} scope global && ip address add {} dev {i} || fail \"cannot set the address of {interface}\"",
            shell_quote(&host.wireguard_prefix())
        );
    }
    let _ = writeln!(
        s,
        "wg syncconf {i} <(wg-quick strip {i}) || fail \"wg syncconf {interface} failed\"\nsync_routes {i}"
    );
}

fn load_firewall(s: &mut String) {
    let path = shell_quote(promguard_core::nftables::RULESET_PATH);
    let _ = writeln!(
        s,
        "nft -f {path} || fail \"nft rejected {}\"",
        promguard_core::nftables::RULESET_PATH
    );
}

#[cfg(test)]
mod tests {
    use super::super::decide::decide;
    use super::super::test_support::{monitor, node};
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const HOSTILE: &str = "PROMGUARD_EOF\n$(touch /tmp/promguard-pwned)`id`'\"\\\n\0\u{2603}";

    fn bash_syntax_ok(script: &str) {
        let status = std::process::Command::new("bash")
            .args(["-n", "-c", script])
            .status()
            .expect("bash is needed for this test");
        assert!(status.success(), "bash -n rejected the script:\n{script}");
    }

    #[test]
    fn node_script_snapshot() {
        let mut host = node();
        host.files[0].content = HOSTILE.as_bytes().to_vec();
        let decision = Decision {
            files: host.files.clone(),
            actions: vec![
                Action::WireguardUp(host.interface.clone()),
                Action::LoadFirewall,
                Action::StartNodeExporter { restart: false },
            ],
            pending_files: host.files.iter().map(|f| f.path.clone()).collect(),
            clear_marker: false,
        };
        let script = apply_script(&host, false, &decision);
        bash_syntax_ok(&script);
        assert!(
            !script.contains("touch"),
            "file content must only appear as base64"
        );
        expect_test::expect_file!["snapshots/apply-node.sh"].assert_eq(&script);
    }

    #[test]
    fn monitor_scripts_are_valid_bash() {
        let mut host = monitor();
        let mut exporter = super::super::exporters::tests::postgres();
        exporter.listen = "10.0.0.1:9187".parse().unwrap();
        host.exporters.push(exporter);
        let all = vec![
            Action::InstallPackages(vec!["wireguard-tools".into(), "prometheus".into()]),
            Action::DaemonReload,
            Action::WireguardRecreate(host.interface.clone()),
            Action::WireguardSync {
                interface: host.interface.clone(),
                readdress: true,
            },
            Action::LoadFirewall,
            Action::EnableAtBoot(vec![FIREWALL_UNIT.to_owned()]),
            Action::StartNodeExporter { restart: true },
            Action::StartWgMetrics { restart: true },
            Action::StartAlertmanager { restart: true },
            Action::ReloadAlertmanager,
            Action::StartPrometheus { restart: true },
            Action::ReloadPrometheus,
            Action::StartExporter {
                package: host.exporters[0].package.clone(),
                restart: true,
            },
            Action::RetireExporter {
                package: promguard_core::exporters::DebianPackage::new("prometheus-redis-exporter")
                    .unwrap(),
                purge: true,
            },
        ];
        for systemd in [false, true] {
            let mut files = host.files.clone();
            files.extend(common_files());
            files.extend(systemd_files(&host));
            files.extend(host.exporters[0].files(systemd, &host.interface));
            let decision = Decision {
                pending_files: files.iter().map(|f| f.path.clone()).collect(),
                files,
                actions: all.clone(),
                clear_marker: true,
            };
            let script = apply_script(&host, systemd, &decision);
            bash_syntax_ok(&script);
            // Every action, with and without systemd, as a file that
            // shellcheck checks in `cargo xtask test`.
            let file = if systemd {
                expect_test::expect_file!["snapshots/apply-all-systemd.sh"]
            } else {
                expect_test::expect_file!["snapshots/apply-all-plain.sh"]
            };
            file.assert_eq(&script);
        }
        let decision = Decision {
            files: systemd_files(&host),
            actions: vec![
                Action::StartPrometheus { restart: false },
                Action::ReloadPrometheus,
            ],
            ..Decision::default()
        };
        expect_test::expect_file!["snapshots/apply-monitor-systemd.sh"]
            .assert_eq(&apply_script(&host, true, &decision));
    }

    /// The commands of a recreate, with and without systemd: delete the
    /// link, wait for wireguard-go to let go of its socket, then bring it
    /// up.
    #[test]
    fn recreate_snapshot() {
        let host = node();
        let decision = Decision {
            files: vec![],
            actions: vec![Action::WireguardRecreate(host.interface.clone())],
            ..Decision::default()
        };
        let mut out = String::new();
        for systemd in [false, true] {
            let script = apply_script(&host, systemd, &decision);
            bash_syntax_ok(&script);
            let steps: Vec<&str> = script
                .lines()
                .skip_while(|l| !l.starts_with("step 'recreate"))
                .collect();
            out.push_str(&format!("== systemd: {systemd}\n{}\n", steps.join("\n")));
        }
        expect_test::expect![[r#"
            == systemd: false
            step 'recreate wg0 and wg-quick up wg0'
            ip link delete dev 'wg0' 2>/dev/null
            i=0
            while [ -S '/run/wireguard/wg0.sock' ] && ss -Hxl | awk '{print $5}' | grep -Fxq -e '/run/wireguard/wg0.sock' -e '/var/run/wireguard/wg0.sock' && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
            rm -f '/run/wireguard/wg0.sock'
            ! ip link show dev 'wg0' >/dev/null 2>&1 || fail "cannot delete the broken interface wg0"
            WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wg-quick up 'wg0' >&2 || fail "wg-quick up wg0 failed"
            wg show 'wg0' >/dev/null || fail "wg0 does not answer after wg-quick up"
            echo 'step done'
            }
            main </dev/null
            == systemd: true
            step 'recreate wg0 and wg-quick up wg0'
            ip link delete dev 'wg0' 2>/dev/null
            i=0
            while [ -S '/run/wireguard/wg0.sock' ] && ss -Hxl | awk '{print $5}' | grep -Fxq -e '/run/wireguard/wg0.sock' -e '/var/run/wireguard/wg0.sock' && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
            rm -f '/run/wireguard/wg0.sock'
            ! ip link show dev 'wg0' >/dev/null 2>&1 || fail "cannot delete the broken interface wg0"
            systemctl enable --quiet 'wg-quick@wg0.service' && systemctl restart 'wg-quick@wg0.service' || fail "cannot start wg-quick@wg0.service"
            wg show 'wg0' >/dev/null || fail "wg0 does not answer after starting wg-quick@wg0.service"
            echo 'step done'
            }
            main </dev/null
        "#]].assert_eq(&out);
    }

    #[test]
    fn systemd_files_snapshot() {
        let text: String = systemd_files(&monitor())
            .iter()
            .map(|f| {
                format!(
                    "== {} ({:04o})\n{}\n",
                    f.path,
                    f.mode,
                    String::from_utf8_lossy(&f.content)
                )
            })
            .collect();
        expect_test::expect_file!["snapshots/systemd-files.txt"].assert_eq(&text);
    }

    /// Runs the file-writing part of a real apply script on this machine,
    /// inside a temp dir: hostile content arrives byte for byte, with its
    /// mode, and nothing else runs.
    #[test]
    fn written_files_round_trip_through_bash() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap();
        let mut host = node();
        let binary: Vec<u8> = (0..=255u8).collect();
        host.files = vec![
            DesiredFile::new(
                FileKind::Other,
                format!("{base}/etc/wireguard/wg0.conf"),
                0o600,
                HOSTILE,
            ),
            DesiredFile::new(
                FileKind::Other,
                format!("{base}/etc/promguard/bytes"),
                0o644,
                binary.clone(),
            ),
            DesiredFile::new(FileKind::Other, format!("{base}/empty"), 0o640, ""),
        ];
        // No pending files: the marker's path is absolute and fixed, and
        // this script runs on this machine.
        let decision = Decision {
            files: host.files.clone(),
            ..Decision::default()
        };
        let script = apply_script(&host, false, &decision);
        assert!(!script.contains(APPLY_MARKER_PATH), "{script}");
        let mut child = std::process::Command::new("bash")
            .arg("-s")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("bash is needed for this test");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).ends_with("step done\n"));
        for file in &host.files {
            assert_eq!(
                std::fs::read(&file.path).unwrap(),
                file.content,
                "{}",
                file.path
            );
            let mode = std::fs::metadata(&file.path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, file.mode, "{}", file.path);
        }
        assert!(!std::path::Path::new("/tmp/promguard-pwned").exists());
    }

    /// Runs an apply script on this machine with the marker's path
    /// swapped for one in a temp dir and no actions (they would change
    /// this machine): the marker, mode 0600, lists the pending files
    /// before any of them is written, stays when a later step fails and is
    /// gone after a run that succeeded.
    #[test]
    fn apply_marker_lifecycle_through_bash() {
        assert!(crate::check_remote_path(APPLY_MARKER_PATH).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap();
        let marker = format!("{base}/state/apply-pending");
        let good = DesiredFile::new(FileKind::Other, format!("{base}/etc/a.conf"), 0o644, "a\n");
        // Its directory is a regular file, so writing it fails.
        std::fs::write(format!("{base}/blocker"), "").unwrap();
        let bad = DesiredFile::new(
            FileKind::Other,
            format!("{base}/blocker/b.conf"),
            0o644,
            "b\n",
        );
        let run = |files: Vec<DesiredFile>| -> (bool, String) {
            let decision = Decision {
                pending_files: files.iter().map(|f| f.path.clone()).collect(),
                files,
                ..Decision::default()
            };
            // The temp dir's name is plain (letters, digits, '.'), so a
            // textual swap keeps every quote intact.
            let script =
                apply_script(&node(), false, &decision).replace(APPLY_MARKER_PATH, &marker);
            assert!(!script.contains(APPLY_MARKER_PATH), "{script}");
            let out = std::process::Command::new("bash")
                .args(["-c", &script])
                .output()
                .expect("bash is needed for this test");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };

        let (ok, stdout) = run(vec![good.clone(), bad.clone()]);
        assert!(!ok, "{stdout}");
        assert!(
            stdout.ends_with(&format!("step write {}\n", bad.path)),
            "{stdout}"
        );
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            format!(
                "promguard-apply-pending 1\nfile {}\nfile {}\n",
                good.path, bad.path
            )
        );
        let mode = std::fs::metadata(&marker).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&good.path).unwrap(), good.content);

        let (ok, stdout) = run(vec![good.clone()]);
        assert!(ok, "{stdout}");
        assert!(!std::path::Path::new(&marker).exists(), "{stdout}");
        assert!(
            stdout.ends_with(&format!("step clear {marker}\nstep done\n")),
            "{stdout}"
        );
    }

    /// A host whose marker lists nothing that is still managed: the apply
    /// script only removes the marker.
    #[test]
    fn clearing_a_stale_marker() {
        let decision = Decision {
            clear_marker: true,
            ..Decision::default()
        };
        let script = apply_script(&node(), false, &decision);
        bash_syntax_ok(&script);
        let steps: Vec<&str> = script
            .lines()
            .skip_while(|l| !l.starts_with("step "))
            .collect();
        expect_test::expect![[r#"
            step 'clear /etc/promguard/apply-pending'
            rm -f -- '/etc/promguard/apply-pending' || fail "cannot remove /etc/promguard/apply-pending"
            echo 'step done'
            }
            main </dev/null"#]].assert_eq(&steps.join("\n"));
    }

    #[test]
    fn fresh_node_decision_produces_ordered_script() {
        let host = node();
        let facts = super::super::facts::parse_facts(
            "promguard-facts 8\nsystemd no\nfile missing /etc/wireguard/wg0.conf\n\
             file missing /etc/promguard/nftables.conf\n\
             file missing /etc/default/prometheus-node-exporter\n\
             file missing /etc/systemd/system/prometheus-node-exporter.service.d/promguard.conf\n\
             file missing /etc/systemd/system/promguard-firewall.service\n\
             file missing /etc/default/prometheus\n\
             file missing /etc/systemd/system/promguard-wg-metrics.service\n\
             file missing /etc/promguard/wg-metrics.sh\n\
             file missing /etc/default/prometheus-alertmanager\n\
             program yes /usr/bin/wg\nprogram yes /usr/bin/wg-quick\nprogram yes /usr/sbin/nft\n\
             program yes /usr/bin/prometheus-node-exporter\nprogram yes /usr/bin/prometheus\n\
             program yes /usr/bin/prometheus-alertmanager\n\
             socket absent\ninterface missing\nfirewall missing\nprocess node_exporter stopped\n\
             process prometheus stopped\nprocess wg_metrics stopped\nprocess alertmanager stopped\napply-pending absent\nend\n",
            &super::super::managed_paths(&host),
        )
        .unwrap();
        let decision = decide(&host, &facts).unwrap();
        let script = apply_script(&host, false, &decision);
        let steps: Vec<&str> = script.lines().filter(|l| l.starts_with("step ")).collect();
        assert_eq!(
            steps,
            [
                "step 'mark /etc/promguard/apply-pending'",
                "step 'write /etc/wireguard/wg0.conf'",
                "step 'write /etc/promguard/nftables.conf'",
                "step 'write /etc/promguard/wg-metrics.sh'",
                "step 'wg-quick up wg0'",
                "step 'nft -f /etc/promguard/nftables.conf'",
                "step 'start node_exporter'",
                "step 'start the WireGuard metrics collector'",
                "step 'clear /etc/promguard/apply-pending'",
            ]
        );
    }
}
