//! Every file PromGuard installs on a host, rendered from its plan: the
//! wg-quick config (this crate), the nftables ruleset and, on the monitor,
//! Prometheus' config and file_sd targets, the probe jobs' included
//! (core's renderers).

use std::fmt;

use promguard_core::plan::PrometheusMode;
use promguard_core::{alerts, nftables, prometheus, topology, Change, HostPlan, Plan, State};
use sha2::{Digest, Sha256};

use crate::Secrets;

/// Which kind of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFileKind {
    /// The wg-quick config.
    WireGuard,
    /// prometheus.yml.
    Prometheus,
    /// A file_sd targets file.
    Targets,
    /// The nftables ruleset.
    Nftables,
    /// The alert rules Prometheus loads.
    Rules,
    /// Alertmanager's config (may hold the SMTP password).
    Alertmanager,
    /// The remote_write password or bearer token (0600).
    RemoteWriteSecret,
    /// The CA bundle that signs the remote_write engine's certificate.
    RemoteWriteCa,
    /// Peers' public keys and host names, for the WireGuard metrics
    /// collector's `peer` label ([`PEER_NAMES_PATH`]).
    PeerNames,
}

/// Where the peers' names are on a host: one `PUBLIC_KEY NAME` line per
/// peer. Public keys only, so the collector that labels its metrics with
/// them never opens a file that holds a private key.
pub const PEER_NAMES_PATH: &str = "/etc/promguard/wg-peers";

/// One rendered file.
#[derive(Clone, PartialEq, Eq)]
pub struct HostFile {
    /// What it is.
    pub kind: HostFileKind,
    /// Absolute path on the host.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Content.
    pub content: String,
}

impl HostFile {
    /// SHA-256 of the content, hex: what the state records per file.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.content.as_bytes()))
    }
}

impl fmt::Debug for HostFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The content may hold keys.
        f.debug_struct("HostFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("bytes", &self.content.len())
            .finish()
    }
}

/// Renders every file of `host`.
pub fn host_files(host: &HostPlan, secrets: Secrets) -> Vec<HostFile> {
    let mut files = vec![HostFile {
        kind: HostFileKind::WireGuard,
        path: crate::config_path(&host.interface.name),
        mode: 0o600,
        content: crate::render(host, secrets),
    }];
    if let Some(p) = &host.prometheus {
        // The user's own Prometheus gets only the targets its scrape job
        // reads.
        let managed = p.mode == PrometheusMode::Managed;
        if managed {
            files.push(HostFile {
                kind: HostFileKind::Prometheus,
                path: prometheus::CONFIG_PATH.to_owned(),
                mode: 0o644,
                content: prometheus::render_config(p),
            });
        }
        // The probe jobs' targets are file_sd files like the exporters'
        // (none on the user's own Prometheus, which cannot have probes).
        let targets = prometheus::render_targets(p)
            .into_iter()
            .chain(prometheus::render_probe_targets(p));
        for (path, content) in targets {
            files.push(HostFile {
                kind: HostFileKind::Targets,
                path,
                mode: 0o644,
                content,
            });
        }
    }
    if let Some(p) = host
        .prometheus
        .as_ref()
        .filter(|p| p.mode == PrometheusMode::Managed)
    {
        files.push(HostFile {
            kind: HostFileKind::Rules,
            path: alerts::RULES_PATH.to_owned(),
            mode: 0o644,
            content: alerts::render_rules(&p.rules),
        });
        let password = match secrets {
            Secrets::Include => p.smtp_password.as_ref().map(|s| s.expose().to_owned()),
            Secrets::Redact => p.smtp_password.as_ref().map(|_| crate::REDACTED.to_owned()),
        };
        if let Some(rw) = &p.remote_write {
            if rw.secret_source.is_some() {
                let content = match secrets {
                    Secrets::Include => rw
                        .secret
                        .as_ref()
                        .map(|s| s.expose().to_owned())
                        .unwrap_or_default(),
                    Secrets::Redact => crate::REDACTED.to_owned(),
                };
                files.push(HostFile {
                    kind: HostFileKind::RemoteWriteSecret,
                    path: format!(
                        "{}/{}",
                        prometheus::TARGETS_DIR,
                        topology::REMOTE_WRITE_SECRET_FILE
                    ),
                    mode: 0o600,
                    content,
                });
            }
            if rw.ca_file.is_some() {
                files.push(HostFile {
                    kind: HostFileKind::RemoteWriteCa,
                    path: format!(
                        "{}/{}",
                        prometheus::TARGETS_DIR,
                        topology::REMOTE_WRITE_CA_FILE
                    ),
                    mode: 0o644,
                    content: rw.ca.clone().unwrap_or_default(),
                });
            }
        }
        files.push(HostFile {
            kind: HostFileKind::Alertmanager,
            path: alerts::ALERTMANAGER_CONFIG_PATH.to_owned(),
            mode: 0o600,
            content: alerts::render_alertmanager(&p.alerts, password.as_deref()),
        });
    }
    files.push(HostFile {
        kind: HostFileKind::Nftables,
        path: nftables::RULESET_PATH.to_owned(),
        mode: 0o600,
        content: nftables::render(&host.firewall),
    });
    let mut names = String::from("# Managed by PromGuard: WireGuard peers by public key.\n");
    for peer in &host.peers {
        names.push_str(&format!("{} {}\n", peer.public_key, peer.name));
    }
    files.push(HostFile {
        kind: HostFileKind::PeerNames,
        path: PEER_NAMES_PATH.to_owned(),
        mode: 0o644,
        content: names,
    });
    files
}

/// Adds to `plan` a [`Change::WriteFile`] for every file of a created host
/// whose content differs from what `state` records the last run wrote.
pub fn add_file_changes(plan: &mut Plan, state: &State) {
    let mut changes = Vec::new();
    for host in &plan.hosts {
        let Some(record) = state.hosts.get(&host.name).filter(|r| r.created) else {
            continue;
        };
        for file in host_files(host, Secrets::Include) {
            if record.files.get(&file.path) != Some(&file.digest()) {
                changes.push(Change::WriteFile {
                    host: host.name.clone(),
                    path: file.path,
                });
            }
        }
    }
    plan.changes.extend(changes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use promguard_core::{config::Config, planner};

    #[test]
    fn the_monitor_gets_prometheus_and_every_host_a_tunnel_and_a_firewall() {
        let plan = planner::plan(&Config::default(), None).unwrap();
        let kinds = |h: &HostPlan| -> Vec<HostFileKind> {
            host_files(h, Secrets::Redact)
                .iter()
                .map(|f| f.kind)
                .collect()
        };
        assert_eq!(
            kinds(plan.monitor()),
            [
                HostFileKind::WireGuard,
                HostFileKind::Prometheus,
                HostFileKind::Targets,
                HostFileKind::Rules,
                HostFileKind::Alertmanager,
                HostFileKind::Nftables,
                HostFileKind::PeerNames
            ]
        );
        let node = plan
            .hosts
            .iter()
            .find(|h| h.role != plan.monitor().role)
            .unwrap();
        assert_eq!(
            kinds(node),
            [
                HostFileKind::WireGuard,
                HostFileKind::Nftables,
                HostFileKind::PeerNames
            ]
        );
        // The peers' names hold public keys only.
        let names = host_files(plan.monitor(), Secrets::Include).pop().unwrap();
        assert_eq!(names.path, PEER_NAMES_PATH);
        for peer in &plan.monitor().peers {
            assert!(names
                .content
                .contains(&format!("{} {}\n", peer.public_key, peer.name)));
            if let Some(psk) = &peer.preshared_key {
                assert!(!names.content.contains(&psk.expose_base64()));
            }
        }
        assert!(!names
            .content
            .contains(&plan.monitor().interface.private_key.expose_base64()));
        let wg = &host_files(node, Secrets::Include)[0];
        assert_eq!(wg.mode, 0o600);
        assert!(!format!("{wg:?}").contains(&node.interface.private_key.expose_base64()));
    }

    #[test]
    fn the_monitor_gets_the_probe_jobs_targets() {
        let config = Config::from_toml(
            "[monitor]\nexporters = [{ name = \"blackbox\", package = \"prometheus-blackbox-exporter\", probes = [{ host = \"promguard-node-2\", port = 80 }] }]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let plan = planner::plan(&config, None).unwrap();
        let targets: Vec<(String, u32)> = host_files(plan.monitor(), Secrets::Redact)
            .into_iter()
            .filter(|f| f.kind == HostFileKind::Targets)
            .map(|f| (f.path, f.mode))
            .collect();
        assert_eq!(
            targets,
            [
                ("/etc/prometheus/promguard/node.json".to_owned(), 0o644),
                ("/etc/prometheus/promguard/blackbox.json".to_owned(), 0o644),
                (
                    "/etc/prometheus/promguard/blackbox_probe.json".to_owned(),
                    0o644
                ),
            ]
        );
        let probes = host_files(plan.monitor(), Secrets::Include)
            .into_iter()
            .find(|f| f.path.ends_with("/blackbox_probe.json"))
            .unwrap();
        assert!(
            probes.content.contains("\"http://10.0.0.3:80/\""),
            "{}",
            probes.content
        );
        // The probed node's firewall lets the monitor in on the port.
        let probed = &plan.hosts[2];
        let ruleset = host_files(probed, Secrets::Include)
            .into_iter()
            .find(|f| f.kind == HostFileKind::Nftables)
            .unwrap();
        assert!(
            ruleset.content.contains("tcp dport { 80 } accept"),
            "{}",
            ruleset.content
        );

        // A change of the probes changes the targets file.
        let mut state = plan.next_state.clone();
        let monitor = config.monitor.name.clone();
        let record = state.hosts.get_mut(&monitor).unwrap();
        record.created = true;
        for f in host_files(plan.monitor(), Secrets::Include) {
            record.files.insert(f.path.clone(), f.digest());
        }
        let moved = Config::from_toml(
            "[monitor]\nexporters = [{ name = \"blackbox\", package = \"prometheus-blackbox-exporter\", probes = [{ host = \"promguard-node-2\", port = 8080 }] }]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let mut plan = planner::plan(&moved, Some(&state)).unwrap();
        let before = plan.changes.len();
        add_file_changes(&mut plan, &state);
        assert_eq!(
            plan.changes[before..],
            [Change::WriteFile {
                host: monitor,
                path: "/etc/prometheus/promguard/blackbox_probe.json".to_owned()
            }]
        );
    }

    #[test]
    fn only_files_that_differ_from_the_record_are_changes() {
        let config = Config::default();
        let mut state = planner::plan(&config, None).unwrap().next_state;
        let monitor = config.monitor.name.clone();
        state.hosts.get_mut(&monitor).unwrap().created = true;
        let mut plan = planner::plan(&config, Some(&state)).unwrap();
        let before = plan.changes.len();
        let files = host_files(plan.monitor(), Secrets::Include);
        let record = state.hosts.get_mut(&monitor).unwrap();
        for f in &files[1..] {
            record.files.insert(f.path.clone(), f.digest());
        }
        add_file_changes(&mut plan, &state);
        assert_eq!(
            plan.changes[before..],
            [Change::WriteFile {
                host: monitor,
                path: files[0].path.clone()
            }]
        );
    }
}
