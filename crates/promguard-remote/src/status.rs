//! What `status` reads from each host: which services run, what differs
//! from what the last `up` left, the WireGuard peers and, on the monitor,
//! Prometheus' targets. Fanned out like [`Fleet::converge`](crate::fleet::Fleet::converge):
//! bounded, one connection and as few round trips per host as possible.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use promguard_core::{Event, HostName, Observer, Outcome, Plan, Role, State, Step};
use serde::Serialize;

use crate::fleet::{fetch_alerts, fetch_targets_of, Access, FleetError};
use crate::prometheus_api::{FiringAlert, TargetHealth};
use crate::recipe;

/// What one host reported.
#[derive(Debug)]
pub struct HostHealth {
    /// WireGuard peers as the host reports them.
    pub peers: Vec<PeerStatus>,
    /// The monitor's targets, when this is the monitor and Prometheus answered.
    pub targets: Option<Vec<TargetHealth>>,
    /// The monitor's firing alerts, when this is the monitor and Prometheus
    /// answered.
    pub alerts: Option<Vec<FiringAlert>>,
    /// The monitor's remote_write queue, when it writes somewhere and
    /// Prometheus answered.
    pub remote_write: Option<crate::prometheus_api::RemoteWriteQueue>,
    /// The services PromGuard manages on the host and whether each runs.
    pub services: Vec<ServiceStatus>,
    /// What differs from what the last `up` left: stopped services,
    /// missing or hand-edited files. `promguard up` repairs each.
    pub problems: Vec<String>,
}

/// One managed service of a host.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// `wireguard`, `node_exporter`, `wg_metrics`, `prometheus` or `firewall`.
    pub name: String,
    /// Whether it runs (for `firewall`: whether PromGuard's table is loaded).
    pub running: bool,
}

/// Compares a host's facts with what the last `up` recorded for it. Pure,
/// so every kind of damage is checked without a host.
pub fn diagnose(
    role: Role,
    interface: &str,
    facts: &recipe::Facts,
    recorded: &BTreeMap<String, String>,
) -> (Vec<ServiceStatus>, Vec<String>) {
    let mut services = Vec::new();
    let mut problems = Vec::new();
    let wireguard = matches!(facts.interface, recipe::InterfaceState::Up { .. });
    services.push(ServiceStatus {
        name: "wireguard".into(),
        running: wireguard,
    });
    match facts.interface {
        recipe::InterfaceState::Up { .. } => {}
        recipe::InterfaceState::Missing => problems.push(format!(
            "WireGuard interface {interface} is missing (wireguard-go is not running)"
        )),
        recipe::InterfaceState::Broken => problems.push(format!(
            "WireGuard interface {interface} is down or does not answer (wireguard-go died, or an interrupted run left it half configured); `promguard up` rebuilds it"
        )),
    }
    let running = |p: &recipe::ProcessState| matches!(p, recipe::ProcessState::Running { .. });
    services.push(ServiceStatus {
        name: "node_exporter".into(),
        running: running(&facts.node_exporter),
    });
    if !running(&facts.node_exporter) {
        problems.push("node_exporter is not running".into());
    }
    services.push(ServiceStatus {
        name: "wg_metrics".into(),
        running: running(&facts.wg_metrics),
    });
    if !running(&facts.wg_metrics) {
        problems.push(
            "the WireGuard metrics collector is not running (its metrics go stale); `promguard up` starts it".into(),
        );
    }
    if role == Role::Monitor {
        services.push(ServiceStatus {
            name: "prometheus".into(),
            running: running(&facts.prometheus),
        });
        if !running(&facts.prometheus) {
            problems.push("prometheus is not running".into());
        }
    }
    services.push(ServiceStatus {
        name: "firewall".into(),
        running: facts.firewall_loaded,
    });
    if !facts.firewall_loaded {
        problems.push("the nftables table inet promguard is not loaded".into());
    }
    for (path, digest) in recorded {
        match facts.files.get(path) {
            Some(Some(found)) if found == digest => {}
            Some(Some(_)) => problems.push(format!(
                "{path} differs from what promguard wrote (edited by hand?)"
            )),
            Some(None) => problems.push(format!("{path} is missing")),
            None => {}
        }
    }
    match &facts.pending {
        recipe::PendingApply::Clear => {}
        recipe::PendingApply::Files(paths) => {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            problems.push(format!(
                "an earlier run stopped before applying {} (the files may differ from what runs)",
                paths.join(", ")
            ));
        }
        recipe::PendingApply::Unrecognized => problems.push(
            "an earlier run stopped before applying its changes (the files may differ from what runs)".into(),
        ),
    }
    if !problems.is_empty() {
        problems.push("run `promguard up` to repair".into());
    }
    (services, problems)
}

/// One peer of a host.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// The peer's host name (`unknown` for a key PromGuard did not plan).
    pub name: String,
    /// Its public key.
    pub public_key: String,
    /// Seconds since the latest handshake; `None` when there was none.
    pub latest_handshake_age_s: Option<u64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Separates the facts from the `wg show` output in `read_host`'s answer.
const WG_MARK: &str = "@promguard-wg-show";

/// Reads one host. Blocking.
pub fn read_host(
    access: &Access,
    state: &State,
    plan: &Plan,
    name: &HostName,
) -> Result<HostHealth, FleetError> {
    let conn = access.connect(state, name)?;
    let failed = |reason: String| FleetError::Status {
        host: name.clone(),
        reason,
    };
    let host = plan
        .host(name)
        .ok_or_else(|| failed("the host is not in the config".into()))?;
    // The recorded paths come from the state file, which is input like any
    // other: only plain absolute paths reach the facts script.
    let recorded: BTreeMap<String, String> = state.hosts[name]
        .files
        .iter()
        .filter(|(path, _)| crate::check_remote_path(path).is_ok())
        .map(|(p, d)| (p.clone(), d.clone()))
        .collect();
    let paths: Vec<String> = recorded.keys().cloned().collect();
    let remote = |step| {
        move |source| FleetError::Remote {
            step,
            source: Box::new(source),
        }
    };
    // One round trip, as a no-op `up`: the facts, then the peers'
    // handshakes, transfer and endpoints (never `wg show <if> dump`, which
    // would copy the private and preshared keys to this machine).
    let interface = crate::shell_quote(host.interface.name.as_str());
    let script = format!(
        "{}echo {WG_MARK}\nif wg show {interface} latest-handshakes; then echo @; wg show {interface} transfer; echo @; wg show {interface} endpoints; fi\n",
        recipe::facts::facts_script(&host.interface.name, &paths)
    );
    let out = conn
        .exec_root_checked("gathering facts", script.as_bytes())
        .map_err(remote(Step::Reading))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (facts_text, wg_text) = text
        .split_once(&format!("{WG_MARK}\n"))
        .ok_or_else(|| failed("the facts script stopped early".into()))?;
    let facts = recipe::parse_facts(facts_text, &paths)
        .map_err(|reason| failed(format!("unexpected facts output: {reason}")))?;
    let (services, mut problems) =
        diagnose(host.role, host.interface.name.as_str(), &facts, &recorded);
    if !matches!(facts.interface, recipe::InterfaceState::Up { .. }) {
        return Ok(HostHealth {
            peers: Vec::new(),
            targets: None,
            alerts: None,
            remote_write: None,
            services,
            problems,
        });
    }
    let sections: Vec<&str> = wg_text.split("@\n").collect();
    let [handshakes, transfer, endpoints] = sections[..] else {
        return Err(failed(format!(
            "`wg show {}` failed: the WireGuard interface is down; run `promguard up` to repair it",
            host.interface.name
        )));
    };
    let activity = promguard_wg::parse_activity(handshakes, transfer, endpoints)
        .map_err(|e| failed(e.to_string()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let peers = activity
        .iter()
        .map(|p| PeerStatus {
            name: plan
                .hosts
                .iter()
                .find(|h| h.interface.public_key() == p.public_key)
                .map(|h| h.name.to_string())
                .unwrap_or_else(|| "unknown".to_owned()),
            public_key: p.public_key.to_string(),
            latest_handshake_age_s: p.latest_handshake.map(|t| now.saturating_sub(t)),
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
        })
        .collect();
    let (targets, alerts) = match &host.prometheus {
        Some(p) if matches!(facts.prometheus, recipe::ProcessState::Running { .. }) => {
            let pool = crate::fleet::scrape_pool(p);
            match fetch_targets_of(&conn, p.listen, pool.as_deref()) {
                // The alerts of the user's own Prometheus are the user's:
                // PromGuard's rules are not loaded there.
                Ok(t) if pool.is_some() => (Some(t), None),
                Ok(t) => (Some(t), fetch_alerts(&conn, p.listen).ok()),
                Err(e) => {
                    problems.insert(0, format!("Prometheus does not answer: {e}"));
                    (None, None)
                }
            }
        }
        _ => (None, None),
    };
    let remote_write = match &host.prometheus {
        Some(p) if p.remote_write.is_some() && targets.is_some() => {
            match crate::fleet::fetch_remote_write(&conn, p.listen) {
                Ok(queue) => queue,
                Err(e) => {
                    problems.push(format!("the remote_write queue cannot be read: {e}"));
                    None
                }
            }
        }
        _ => None,
    };
    Ok(HostHealth {
        peers,
        targets,
        alerts,
        remote_write,
        services,
        problems,
    })
}

/// Reads every created host of `state`, at most `parallel` at once, in the
/// state's order.
pub async fn read_all(
    access: &Access,
    state: &State,
    plan: &Plan,
    parallel: NonZeroUsize,
    observer: Arc<dyn Observer>,
) -> Vec<(HostName, Result<HostHealth, FleetError>)> {
    let names: Vec<HostName> = state
        .hosts
        .iter()
        .filter(|(_, r)| r.created)
        .map(|(n, _)| n.clone())
        .collect();
    let shared = Arc::new((access.clone(), state.clone(), plan.clone()));
    let results = crate::for_each_host(names.clone(), parallel.get(), move |name: HostName| {
        let (access, state, plan) = &*shared;
        observer.on_event(&Event::Step {
            host: name.clone(),
            step: Step::Reading,
        });
        let result = read_host(access, state, plan, &name);
        observer.on_event(&Event::Finished {
            host: name,
            outcome: if result.is_ok() {
                Outcome::Read
            } else {
                Outcome::Failed
            },
        });
        result
    })
    .await;
    names.into_iter().zip(results).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    const OTHER: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn healthy() -> recipe::Facts {
        recipe::Facts {
            systemd: false,
            files: [
                ("/etc/wireguard/wg0.conf".to_owned(), Some(HASH.to_owned())),
                (
                    "/etc/promguard/nftables.conf".to_owned(),
                    Some(HASH.to_owned()),
                ),
            ]
            .into(),
            interface: recipe::InterfaceState::Up {
                addresses: vec!["10.0.0.1/32".into()],
            },
            firewall_loaded: true,
            node_exporter: recipe::ProcessState::Running { args: vec![] },
            prometheus: recipe::ProcessState::Running { args: vec![] },
            wg_metrics: recipe::ProcessState::Running { args: vec![] },
            exporters: Default::default(),
            alertmanager: recipe::ProcessState::Running { args: vec![] },
            programs: BTreeMap::new(),
            enabled: BTreeMap::new(),
            pending: recipe::PendingApply::Clear,
            guest: None,
            exporter_configs: Default::default(),
        }
    }

    fn recorded() -> BTreeMap<String, String> {
        [
            ("/etc/wireguard/wg0.conf".to_owned(), HASH.to_owned()),
            ("/etc/promguard/nftables.conf".to_owned(), HASH.to_owned()),
        ]
        .into()
    }

    #[test]
    fn a_healthy_host_has_no_problems() {
        let (services, problems) = diagnose(Role::Monitor, "wg0", &healthy(), &recorded());
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "wireguard",
                "node_exporter",
                "wg_metrics",
                "prometheus",
                "firewall"
            ]
        );
        assert!(services.iter().all(|s| s.running));
        // Nodes run no Prometheus, so its state does not matter there.
        let mut node = healthy();
        node.prometheus = recipe::ProcessState::Stopped;
        let (services, problems) = diagnose(Role::Node, "wg0", &node, &recorded());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(services.len(), 4);
    }

    #[test]
    fn every_kind_of_damage_is_reported() {
        let mut facts = healthy();
        facts.interface = recipe::InterfaceState::Missing;
        facts.node_exporter = recipe::ProcessState::Stopped;
        facts.prometheus = recipe::ProcessState::Stopped;
        facts.wg_metrics = recipe::ProcessState::Stopped;
        facts.firewall_loaded = false;
        facts
            .files
            .insert("/etc/wireguard/wg0.conf".into(), Some(OTHER.into()));
        facts
            .files
            .insert("/etc/promguard/nftables.conf".into(), None);
        facts.pending = recipe::PendingApply::Files(["/etc/wireguard/wg0.conf".to_owned()].into());
        let (services, problems) = diagnose(Role::Monitor, "wg0", &facts, &recorded());
        assert!(services.iter().all(|s| !s.running));
        expect_test::expect![[r#"
            WireGuard interface wg0 is missing (wireguard-go is not running)
            node_exporter is not running
            the WireGuard metrics collector is not running (its metrics go stale); `promguard up` starts it
            prometheus is not running
            the nftables table inet promguard is not loaded
            /etc/promguard/nftables.conf is missing
            /etc/wireguard/wg0.conf differs from what promguard wrote (edited by hand?)
            an earlier run stopped before applying /etc/wireguard/wg0.conf (the files may differ from what runs)
            run `promguard up` to repair"#]]
        .assert_eq(&problems.join("\n"));
    }
}
