//! The host recipe: converge one host to its desired state in at most two
//! round trips.
//!
//! 1. **Facts** ([`facts`]): one fixed script reports the SHA-256 of every
//!    managed file, whether systemd runs, the WireGuard interface, the
//!    firewall table and the daemons.
//! 2. **Decision** ([`mod@decide`]): pure code compares the facts with the
//!    [`DesiredHost`] and picks the files to write and the actions to run.
//!    Nothing to do means the run ends here, after one round trip.
//! 3. **Apply** ([`script`]): one generated script writes the changed files
//!    atomically, runs the actions in order and checks that the daemons
//!    listen before it exits.
//!
//! A run can be cut anywhere (dropped connection, SIGKILL). Files are
//! written atomically, and an apply marker
//! ([`script::APPLY_MARKER_PATH`]), written before the first file and
//! removed after the last action, lists the files whose actions are still
//! owed; the next run's facts report it and [`decide()`] redoes those
//! actions even though the digests already match.
//!
//! The recipe does not know which cloud made the host. Hosts with systemd
//! (cloud images) get units and `/etc/default` files; hosts without (the
//! local provider's namespaces) get daemons started with `setsid` and
//! tracked by PID files in `/run/promguard`.

pub mod decide;
pub mod exporters;
pub mod facts;
pub mod guest;
pub mod script;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use promguard_core::plan::AlertmanagerCluster;
use promguard_core::{HostName, InterfaceName, Role};
use sha2::{Digest, Sha256};

use crate::error::{tail, RemoteError};
use crate::quote::check_remote_path;
use crate::session::Connection;

pub use decide::{decide, Action, Decision};
pub use exporters::ManagedExporter;
pub use facts::{parse_facts, Facts, GuestFacts, InterfaceState, PendingApply, ProcessState};
pub use guest::Guest;

/// Everything one host should contain and run. The caller renders the
/// files; the recipe only installs them and starts what uses them.
#[derive(Debug, Clone)]
pub struct DesiredHost {
    /// The host's name (for errors and the script's header).
    pub name: HostName,
    /// Monitor or node.
    pub role: Role,
    /// The WireGuard interface (`wg0`); its config is
    /// `/etc/wireguard/<interface>.conf`.
    pub interface: InterfaceName,
    /// The host's WireGuard address, configured as a /32 or /128.
    pub wireguard_address: IpAddr,
    /// Every managed file with its content: the WireGuard config (0600),
    /// the nftables ruleset and, on the monitor, `prometheus.yml` and the
    /// file_sd targets files.
    pub files: Vec<DesiredFile>,
    /// Where node_exporter listens (the WireGuard address, port 9100).
    pub node_exporter_listen: SocketAddr,
    /// Exporters installed from Debian packages, besides node_exporter.
    pub exporters: Vec<ManagedExporter>,
    /// Where Prometheus listens (`127.0.0.1:9090`); `None` on hosts
    /// without Prometheus.
    pub prometheus_listen: Option<SocketAddr>,
    /// Where Alertmanager listens (`127.0.0.1:9093`); `None` on hosts
    /// without it. Its config is the file of kind
    /// [`FileKind::AlertmanagerConfig`].
    pub alertmanager_listen: Option<SocketAddr>,
    /// Alertmanager's gossip with the other replicas' Alertmanagers;
    /// `None` on a monitor without replicas (gossip off).
    pub alertmanager_cluster: Option<AlertmanagerCluster>,
    /// Install missing packages with apt-get (cloud hosts). When false, a
    /// missing program is an error.
    pub install_packages: bool,
    /// On a host PromGuard did not create, what being a guest there takes
    /// ([`guest`]); `None` on hosts a provider created.
    pub guest: Option<Guest>,
}

impl DesiredHost {
    /// Path of the WireGuard config: `/etc/wireguard/<interface>.conf`.
    pub fn wireguard_config_path(&self) -> String {
        format!("/etc/wireguard/{}.conf", self.interface)
    }

    /// The WireGuard address as a single-host prefix, as `ip address`
    /// prints it (`10.0.0.2/32`).
    pub fn wireguard_prefix(&self) -> String {
        let bits = if self.wireguard_address.is_ipv4() {
            32
        } else {
            128
        };
        format!("{}/{bits}", self.wireguard_address)
    }
}

/// What a managed file is for, which decides what a change of it calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileKind {
    /// The WireGuard config at [`DesiredHost::wireguard_config_path`]: `wg
    /// syncconf` (or `wg-quick up`).
    WireguardConfig,
    /// The nftables ruleset at [`promguard_core::nftables::RULESET_PATH`]:
    /// `nft -f`.
    Firewall,
    /// `prometheus.yml` at [`promguard_core::prometheus::CONFIG_PATH`]: a
    /// Prometheus reload.
    PrometheusConfig,
    /// A file_sd targets file, which Prometheus re-reads by itself.
    ScrapeTargets,
    /// A Prometheus rules file: a Prometheus reload.
    PrometheusRules,
    /// Alertmanager's config at [`script::ALERTMANAGER_CONFIG_PATH`]
    /// (it may hold an SMTP password: written 0600, owned by the
    /// daemons' user): an Alertmanager reload.
    AlertmanagerConfig,
    /// A file `prometheus.yml` names that may hold a secret (the
    /// remote_write password or token, its CA bundle): written owned by
    /// the daemons' user so that Prometheus can read it at 0600; a
    /// Prometheus reload.
    PrometheusCredentials,
    /// Anything else: written, nothing to run.
    Other,
    /// The recipe's own: node_exporter's flags (`/etc/default`).
    NodeExporterDefaults,
    /// The recipe's own: node_exporter's unit drop-in.
    NodeExporterDropIn,
    /// The recipe's own: the unit that loads the firewall at boot.
    FirewallUnit,
    /// The recipe's own: Prometheus' flags (`/etc/default`).
    PrometheusDefaults,
    /// The recipe's own, on every host: the WireGuard metrics collector
    /// ([`script::WG_METRICS_SCRIPT_PATH`]).
    WgMetricsScript,
    /// The recipe's own: the collector's unit.
    WgMetricsUnit,
    /// The recipe's own: Alertmanager's flags (`/etc/default`).
    AlertmanagerDefaults,
    /// The recipe's own: a managed exporter's environment file (its
    /// arguments and settings; 0600 when it holds a secret).
    ExporterEnv,
    /// The recipe's own: a managed exporter's unit drop-in.
    ExporterDropIn,
}

impl FileKind {
    /// Kinds only the recipe itself writes (the collector on every host,
    /// the others on systemd hosts).
    pub fn is_recipes_own(self) -> bool {
        matches!(
            self,
            FileKind::NodeExporterDefaults
                | FileKind::NodeExporterDropIn
                | FileKind::FirewallUnit
                | FileKind::PrometheusDefaults
                | FileKind::WgMetricsScript
                | FileKind::WgMetricsUnit
                | FileKind::AlertmanagerDefaults
                | FileKind::ExporterEnv
                | FileKind::ExporterDropIn
        )
    }

    /// A systemd unit file or drop-in: systemd must reload after a change.
    pub fn is_unit_file(self) -> bool {
        matches!(
            self,
            FileKind::NodeExporterDropIn
                | FileKind::FirewallUnit
                | FileKind::WgMetricsUnit
                | FileKind::ExporterDropIn
        )
    }
}

/// One file to install.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredFile {
    /// What it is for.
    pub kind: FileKind,
    /// Absolute path (checked by [`check_remote_path`]).
    pub path: String,
    /// Permission bits, e.g. `0o600`.
    pub mode: u32,
    /// The content.
    pub content: Vec<u8>,
}

impl DesiredFile {
    /// A file of `kind` with `content` at `path` with `mode`.
    pub fn new(
        kind: FileKind,
        path: impl Into<String>,
        mode: u32,
        content: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            kind,
            path: path.into(),
            mode,
            content: content.into(),
        }
    }

    /// Hex SHA-256 of the content, as `sha256sum` prints it.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.content))
    }
}

// The content may hold private keys: never print it.
impl std::fmt::Debug for DesiredFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredFile")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("mode", &format_args!("{:04o}", self.mode))
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .finish()
    }
}

/// What [`converge`] did on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Paths written, in the order written.
    pub changed_files: Vec<String>,
    /// Actions run, in order (`wg-quick up wg0`, `wg syncconf wg0`,
    /// `nft -f /etc/promguard/nftables.conf`, `restart node_exporter`,
    /// `reload prometheus`, ...).
    pub actions: Vec<String>,
    /// SSH round trips used: 1 when nothing changed, 2 otherwise.
    pub round_trips: u64,
    /// On a guest host, what PromGuard has added to it so far (its guest
    /// manifest), for the state.
    pub guest: Option<promguard_core::state::GuestRecord>,
}

impl Report {
    /// True when the host was already converged.
    pub fn is_noop(&self) -> bool {
        self.changed_files.is_empty() && self.actions.is_empty()
    }
}

/// Brings `host` to its desired state over `conn`: one round trip to read
/// facts and, only if something differs, one to apply the changes. A
/// failing step becomes [`RemoteError::CommandFailed`] naming the step.
pub fn converge(conn: &Connection, host: &DesiredHost) -> Result<Report, RemoteError> {
    let before = conn.round_trips();
    let (facts, decision) = facts_and_decision(conn, host)?;
    apply(conn, host, &facts, &decision, before)
}

/// Reads `host`'s facts over `conn` and decides, changing nothing: one
/// round trip. Fails as [`converge`] would before it changes anything
/// (an interface or port a guest host already uses, a missing program).
pub fn check(conn: &Connection, host: &DesiredHost) -> Result<(), RemoteError> {
    facts_and_decision(conn, host).map(|_| ())
}

fn facts_and_decision(
    conn: &Connection,
    host: &DesiredHost,
) -> Result<(Facts, Decision), RemoteError> {
    validate(host)?;
    let managed = managed_paths(host);
    let facts_script = facts::facts_script_for(host, &managed);
    let output = conn.exec_root_checked("gathering facts", facts_script.as_bytes())?;
    let facts = facts::parse_facts_for(
        &String::from_utf8_lossy(&output.stdout),
        &managed,
        &host.exporters,
    )
    .map_err(|reason| RemoteError::Protocol {
        host: host.name.clone(),
        what: "the facts script".into(),
        reason,
    })?;
    let decision = decide(host, &facts)?;
    Ok((facts, decision))
}

fn apply(
    conn: &Connection,
    host: &DesiredHost,
    facts: &Facts,
    decision: &Decision,
    before: u64,
) -> Result<Report, RemoteError> {
    if decision.clear_marker {
        tracing::warn!(
            host = %host.name,
            pending = ?decision.pending_files,
            "an earlier apply stopped before its actions ran; running them again"
        );
    }
    let mut report = Report {
        changed_files: decision.files.iter().map(|f| f.path.clone()).collect(),
        actions: decision.actions.iter().map(ToString::to_string).collect(),
        round_trips: 0,
        guest: facts.guest.as_ref().map(|g| g.manifest.to_record()),
    };
    if !decision.is_empty() {
        tracing::info!(host = %host.name, files = ?report.changed_files, actions = ?report.actions, "applying changes");
        let apply = script::apply_script(host, facts.systemd, decision);
        let output = conn.exec_root("the apply script", apply.as_bytes())?;
        if host.guest.is_some() {
            // `down` undoes the manifest on the host; the state keeps a
            // copy so that the user can see what PromGuard added.
            let manifest = guest::manifest_from_output(&String::from_utf8_lossy(&output.stdout))
                .map_err(|reason| RemoteError::Protocol {
                    host: host.name.clone(),
                    what: "the apply script".into(),
                    reason,
                })?;
            if let Some(m) = manifest {
                report.guest = Some(m.to_record());
            }
        }
        if !output.success() {
            let stdout = String::from_utf8_lossy(&output.stdout);
            let step = stdout
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("step "))
                .unwrap_or("the apply script");
            return Err(RemoteError::CommandFailed {
                host: host.name.clone(),
                what: step.to_owned(),
                exit_code: output.exit_code,
                stderr_tail: tail(&output.stderr, 2000),
            });
        }
    }
    report.round_trips = conn.round_trips() - before;
    Ok(report)
}

/// The Debian packages the recipe installs on a host of `role`, for a
/// cloud that installs them on first boot (cloud-init's `packages`).
pub fn packages_for(role: Role) -> Vec<String> {
    let mut packages: Vec<String> = Vec::new();
    for (program, package) in facts::PROGRAMS {
        let needed = !script::MONITOR_PROGRAMS.contains(program) || role == Role::Monitor;
        if needed && !packages.iter().any(|p| p == package) {
            packages.push(package.to_string());
        }
    }
    packages
}

/// The units a first-boot install must keep from starting until the
/// recipe has configured them (Debian's node_exporter listens on every
/// address by default).
pub fn held_units() -> Vec<String> {
    script::HELD_UNITS.iter().map(|u| u.to_string()).collect()
}

/// Checks every value of `host` that will reach a remote shell.
pub fn validate(host: &DesiredHost) -> Result<(), RemoteError> {
    let invalid = |what: String, reason: String| RemoteError::InvalidInput {
        host: host.name.clone(),
        what,
        reason,
    };
    let mut seen = BTreeSet::new();
    let mut packages = BTreeSet::new();
    for e in &host.exporters {
        if !packages.insert(&e.package) {
            return Err(invalid(
                format!("exporter {}", e.name),
                format!("package {} is listed twice", e.package),
            ));
        }
        if e.listen.ip() != host.wireguard_address {
            return Err(invalid(
                format!("exporter {}", e.name),
                format!(
                    "it must listen on the WireGuard address {}, not {}",
                    host.wireguard_address,
                    e.listen.ip()
                ),
            ));
        }
        if let Some(reason) = e
            .args
            .iter()
            .find_map(|a| promguard_core::exporters::check_arg(a).err())
        {
            return Err(invalid(format!("exporter {}", e.name), reason));
        }
    }
    let exporter_paths: BTreeSet<String> = host.exporters.iter().flat_map(|e| e.paths()).collect();
    for file in &host.files {
        if exporter_paths.contains(&file.path) {
            return Err(invalid(
                format!("file {}", file.path),
                "the recipe writes this file itself".into(),
            ));
        }
        check_remote_path(&file.path).map_err(|r| invalid(format!("file {:?}", file.path), r))?;
        if file.mode > 0o7777 {
            return Err(invalid(
                format!("mode {:o} of {}", file.mode, file.path),
                "a file mode is at most 7777 (octal)".into(),
            ));
        }
        if !seen.insert(file.path.as_str()) {
            return Err(invalid(
                format!("file {}", file.path),
                "it is listed twice".into(),
            ));
        }
        if file.kind.is_recipes_own()
            || script::SYSTEMD_PATHS.contains(&file.path.as_str())
            || script::COMMON_PATHS.contains(&file.path.as_str())
            || file.path == script::APPLY_MARKER_PATH
        {
            return Err(invalid(
                format!("file {}", file.path),
                "the recipe writes this file itself".into(),
            ));
        }
        // The programs read these files from fixed places.
        let fixed = match file.kind {
            FileKind::WireguardConfig => Some(host.wireguard_config_path()),
            FileKind::Firewall => Some(promguard_core::nftables::RULESET_PATH.to_owned()),
            FileKind::PrometheusConfig => Some(promguard_core::prometheus::CONFIG_PATH.to_owned()),
            FileKind::AlertmanagerConfig => Some(script::ALERTMANAGER_CONFIG_PATH.to_owned()),
            _ => None,
        };
        if file.kind == FileKind::AlertmanagerConfig && host.alertmanager_listen.is_none() {
            return Err(invalid(
                format!("file {}", file.path),
                "an Alertmanager config for a host without Alertmanager".into(),
            ));
        }
        if let Some(expected) = fixed.filter(|p| p != &file.path) {
            return Err(invalid(
                format!("file {}", file.path),
                format!("a file of kind {:?} must be at {expected}", file.kind),
            ));
        }
    }
    if host.alertmanager_listen.is_some()
        && !host
            .files
            .iter()
            .any(|f| f.kind == FileKind::AlertmanagerConfig)
    {
        return Err(invalid(
            "Alertmanager".into(),
            "it is wanted but no file of kind AlertmanagerConfig is given".into(),
        ));
    }
    Ok(())
}

/// Every path the facts script hashes: the caller's files, then the files
/// the recipe writes itself on every host and on systemd hosts (hashed
/// everywhere, so one facts round trip is enough before systemd is known).
pub fn managed_paths(host: &DesiredHost) -> Vec<String> {
    host.files
        .iter()
        .map(|f| f.path.clone())
        .chain(script::COMMON_PATHS.iter().map(|p| p.to_string()))
        .chain(script::SYSTEMD_PATHS.iter().map(|p| p.to_string()))
        .chain(host.exporters.iter().flat_map(|e| e.paths()))
        .collect()
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A node as the CLI would describe it, with placeholder file contents.
    pub fn node() -> DesiredHost {
        DesiredHost {
            name: HostName::new("node-1").unwrap(),
            role: Role::Node,
            interface: InterfaceName::new("wg0").unwrap(),
            wireguard_address: "10.0.0.2".parse().unwrap(),
            files: vec![
                DesiredFile::new(
                    FileKind::WireguardConfig,
                    "/etc/wireguard/wg0.conf",
                    0o600,
                    "[Interface]\nPrivateKey = secret\n",
                ),
                DesiredFile::new(
                    FileKind::Firewall,
                    "/etc/promguard/nftables.conf",
                    0o644,
                    "table inet promguard {}\n",
                ),
            ],
            node_exporter_listen: "10.0.0.2:9100".parse().unwrap(),
            exporters: Vec::new(),
            prometheus_listen: None,
            alertmanager_listen: None,
            alertmanager_cluster: None,
            install_packages: false,
            guest: None,
        }
    }

    /// The monitor, with Prometheus files.
    pub fn monitor() -> DesiredHost {
        let mut host = node();
        host.name = HostName::new("monitor").unwrap();
        host.role = Role::Monitor;
        host.wireguard_address = "10.0.0.1".parse().unwrap();
        host.node_exporter_listen = "10.0.0.1:9100".parse().unwrap();
        host.prometheus_listen = Some("127.0.0.1:9090".parse().unwrap());
        host.alertmanager_listen = Some("127.0.0.1:9093".parse().unwrap());
        host.files.push(DesiredFile::new(
            FileKind::AlertmanagerConfig,
            "/etc/prometheus/alertmanager.yml",
            0o600,
            "route: {receiver: promguard}\nreceivers: [{name: promguard}]\n",
        ));
        host.files.push(DesiredFile::new(
            FileKind::PrometheusConfig,
            "/etc/prometheus/prometheus.yml",
            0o644,
            "global: {}\n",
        ));
        host.files.push(DesiredFile::new(
            FileKind::ScrapeTargets,
            "/etc/prometheus/promguard/node.json",
            0o644,
            "[]\n",
        ));
        host
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn first_boot_packages_by_role() {
        assert_eq!(
            packages_for(Role::Node),
            ["wireguard-tools", "nftables", "prometheus-node-exporter"]
        );
        assert_eq!(
            packages_for(Role::Monitor)[3..],
            ["prometheus", "prometheus-alertmanager"]
        );
    }

    #[test]
    fn file_kinds_must_be_where_their_programs_read_them() {
        let mut host = node();
        host.files[0].path = "/etc/wireguard/wg1.conf".into();
        let err = validate(&host).unwrap_err().to_string();
        assert!(err.contains("must be at /etc/wireguard/wg0.conf"), "{err}");
        let mut host = node();
        host.files.push(DesiredFile::new(
            FileKind::FirewallUnit,
            "/etc/systemd/system/other.service",
            0o644,
            "",
        ));
        let err = validate(&host).unwrap_err().to_string();
        assert!(err.contains("writes this file itself"), "{err}");
    }

    #[test]
    fn debug_hides_file_content() {
        let host = node();
        let debug = format!("{host:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("<32 bytes>"), "{debug}");
        assert!(debug.contains("0600"), "{debug}");
    }

    #[test]
    fn validation_refuses_unsafe_files() {
        assert!(validate(&monitor()).is_ok());
        let cases = [
            (
                "/etc/../etc/shadow",
                0o600,
                "has an empty, '.' or '..' component",
            ),
            ("/etc/x;reboot", 0o600, "contains ';'"),
            ("etc/x", 0o600, "must be absolute"),
            ("/etc/x", 0o10000, "at most 7777"),
            ("/etc/wireguard/wg0.conf", 0o600, "listed twice"),
            ("/etc/default/prometheus", 0o644, "writes this file itself"),
            (
                "/etc/promguard/apply-pending",
                0o600,
                "writes this file itself",
            ),
        ];
        for (path, mode, reason) in cases {
            let mut host = node();
            host.files
                .push(DesiredFile::new(FileKind::Other, path, mode, "x"));
            let err = validate(&host).unwrap_err().to_string();
            assert!(err.contains(reason), "{path}: {err}");
            assert!(err.contains("node-1"), "{err}");
        }
    }

    // Regression: files written on hosts were renamed into place without an
    // fsync, though the docs said they are written like the state file.
    #[test]
    fn files_on_hosts_are_flushed_before_and_after_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("etc/wg0.conf");
        let log = dir.path().join("sync.log");
        // `sync` is shadowed by a function that logs what it is asked to
        // flush and whether the file is in place yet.
        let script = format!(
            "{}\nsync() {{ for f in \"$@\"; do [ \"$f\" = -- ] && continue; if [ -e {t} ]; then echo \"$f after\"; else echo \"$f before\"; fi; done >> {l}; }}\necho aGVsbG8K | write_file {t} 600\n",
            include_str!("sh/prelude.sh"),
            t = target.display(),
            l = log.display(),
        );
        let status = std::process::Command::new("bash")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "hello\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let synced = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = synced.lines().collect();
        assert_eq!(lines.len(), 2, "{synced}");
        assert!(
            lines[0].contains("/etc/.promguard.") && lines[0].ends_with(" before"),
            "{synced}"
        );
        assert_eq!(
            lines[1],
            format!("{} after", dir.path().join("etc").display())
        );
    }
}
