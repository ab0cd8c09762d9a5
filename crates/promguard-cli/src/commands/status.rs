//! `promguard status`: tunnels and targets, read from the hosts.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use promguard_core::{HostName, Plan, Role, State};
use promguard_remote::recipe;
use serde::Serialize;

use crate::commands::plan::make_plan;
use crate::commands::{runtime, table};
use crate::deploy::{fetch_targets, Context};
use crate::project::Project;
use crate::prometheus_api::{Health, TargetHealth};

/// The `status --json` contract.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// Every host in the state.
    pub hosts: Vec<HostStatus>,
    /// Every target of the monitor's Prometheus.
    pub targets: Vec<TargetHealth>,
}

/// One host.
#[derive(Debug, Serialize)]
pub struct HostStatus {
    /// Host name.
    pub name: String,
    /// `monitor` or `node`.
    pub role: String,
    /// Region.
    pub region: String,
    /// Public address.
    pub public_address: Option<String>,
    /// WireGuard address.
    pub wireguard_address: String,
    /// WireGuard peers as the host reports them.
    pub peers: Vec<PeerStatus>,
    /// Why the host could not be read, if it could not.
    pub error: Option<String>,
    /// The services PromGuard manages on the host and whether each runs
    /// (empty when the host could not be read).
    pub services: Vec<ServiceStatus>,
    /// What differs from what the last `up` left: stopped services,
    /// missing or hand-edited files. `promguard up` repairs each.
    pub problems: Vec<String>,
}

/// One managed service of a host.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    /// `wireguard`, `node_exporter`, `prometheus` or `firewall`.
    pub name: String,
    /// Whether it runs (for `firewall`: whether PromGuard's table is loaded).
    pub running: bool,
}

/// What one host reported.
struct HostReport {
    peers: Vec<PeerStatus>,
    targets: Option<Vec<TargetHealth>>,
    services: Vec<ServiceStatus>,
    problems: Vec<String>,
}

/// Compares a host's facts with what the last `up` recorded for it. Pure,
/// so every kind of damage is checked without a host.
fn diagnose(
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
#[derive(Debug, Serialize)]
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

fn read_host(
    ctx: &Context,
    state: &State,
    plan: &Plan,
    name: &HostName,
) -> anyhow::Result<HostReport> {
    let conn = ctx.connect(state, name)?;
    let host = plan
        .host(name)
        .ok_or_else(|| anyhow!("host {name} is not in the config"))?;
    // The recorded paths come from the state file, which is input like any
    // other: only plain absolute paths reach the facts script.
    let recorded: BTreeMap<String, String> = state.hosts[name]
        .files
        .iter()
        .filter(|(path, _)| promguard_remote::check_remote_path(path).is_ok())
        .map(|(p, d)| (p.clone(), d.clone()))
        .collect();
    let paths: Vec<String> = recorded.keys().cloned().collect();
    let script = recipe::facts::facts_script(&host.interface.name, &paths);
    let out = conn.exec_checked("gathering facts", "bash -s", script.as_bytes())?;
    let facts = recipe::parse_facts(&String::from_utf8_lossy(&out.stdout), &paths)
        .map_err(|reason| anyhow!("host {name}: unexpected facts output: {reason}"))?;
    let (services, mut problems) =
        diagnose(host.role, host.interface.name.as_str(), &facts, &recorded);
    if !matches!(facts.interface, recipe::InterfaceState::Up { .. }) {
        return Ok(HostReport {
            peers: Vec::new(),
            targets: None,
            services,
            problems,
        });
    }
    let out = conn.exec(&format!("wg show {} dump", host.interface.name), b"")?;
    if out.exit_code != 0 {
        anyhow::bail!(
            "`wg show {} dump` failed ({}): the WireGuard interface is down; run `promguard up` to repair it",
            host.interface.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let dump = promguard_wg::parse_dump(&String::from_utf8_lossy(&out.stdout))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let peers = dump
        .peers
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
    let targets = match &host.prometheus {
        Some(p) if matches!(facts.prometheus, recipe::ProcessState::Running { .. }) => {
            match fetch_targets(&conn, p.listen) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.insert(0, format!("Prometheus does not answer: {e:#}"));
                    None
                }
            }
        }
        _ => None,
    };
    Ok(HostReport {
        peers,
        targets,
        services,
        problems,
    })
}

pub fn run(
    config: Option<&Path>,
    verbose: bool,
    json: bool,
    parallel: usize,
) -> anyhow::Result<ExitCode> {
    if parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let project = Project::load(config)?;
    let state = project.existing_state()?;
    let ctx = Arc::new(Context::new(project, verbose)?);
    let plan = make_plan(&ctx.project, Some(&state))?;
    let state = Arc::new(state);
    let plan = Arc::new(plan);
    let names: Vec<HostName> = state
        .hosts
        .iter()
        .filter(|(_, r)| r.created)
        .map(|(n, _)| n.clone())
        .collect();
    let results = runtime()?.block_on(async {
        // At most `parallel` hosts at once, as `up` converges them: one
        // blocking thread and one SSH connection per host in flight.
        let permits = Arc::new(tokio::sync::Semaphore::new(parallel));
        let mut tasks = Vec::new();
        for name in names.clone() {
            let (ctx, state, plan) = (Arc::clone(&ctx), Arc::clone(&state), Arc::clone(&plan));
            let permits = Arc::clone(&permits);
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| anyhow!("{e}"))?;
                tokio::task::spawn_blocking(move || read_host(&ctx, &state, &plan, &name))
                    .await
                    .map_err(|e| anyhow!("{e}"))?
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.map_err(|e| anyhow!("{e}")).and_then(|r| r));
        }
        out
    });
    let mut hosts = Vec::new();
    let mut targets = Vec::new();
    let mut failed = false;
    for (name, result) in names.iter().zip(results) {
        let record = &state.hosts[name];
        let (peers, services, problems, error) = match result {
            Ok(report) => {
                if let Some(t) = report.targets {
                    targets = t;
                }
                failed |= !report.problems.is_empty();
                (report.peers, report.services, report.problems, None)
            }
            Err(e) => {
                failed = true;
                (Vec::new(), Vec::new(), Vec::new(), Some(format!("{e:#}")))
            }
        };
        hosts.push(HostStatus {
            name: name.to_string(),
            role: record.role.to_string(),
            region: record.region.to_string(),
            public_address: record.public_address.map(|a| a.to_string()),
            wireguard_address: record.wireguard_address.to_string(),
            peers,
            error,
            services,
            problems,
        });
    }
    hosts.sort_by_key(|h| (h.role != Role::Monitor.as_str(), h.name.clone()));
    let down = targets.iter().any(|t| t.health != Health::Up);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&StatusJson { hosts, targets })?
        );
    } else {
        let mut rows = Vec::new();
        for h in &hosts {
            if let Some(e) = &h.error {
                rows.push(vec![
                    h.name.clone(),
                    h.public_address.clone().unwrap_or_default(),
                    h.wireguard_address.clone(),
                    "-".into(),
                    format!("ERROR: {e}"),
                ]);
            }
            for p in &h.peers {
                let hs = p
                    .latest_handshake_age_s
                    .map(|s| format!("{s}s ago"))
                    .unwrap_or_else(|| "never".into());
                rows.push(vec![
                    h.name.clone(),
                    h.public_address.clone().unwrap_or_default(),
                    h.wireguard_address.clone(),
                    p.name.clone(),
                    format!("handshake {hs}, rx {} B, tx {} B", p.rx_bytes, p.tx_bytes),
                ]);
            }
        }
        print!(
            "{}",
            table::format(&["HOST", "PUBLIC", "WIREGUARD", "PEER", "TUNNEL"], &rows)
        );
        let problems: Vec<Vec<String>> = hosts
            .iter()
            .flat_map(|h| h.problems.iter().map(|p| vec![h.name.clone(), p.clone()]))
            .collect();
        if !problems.is_empty() {
            println!();
            print!("{}", table::format(&["HOST", "PROBLEM"], &problems));
        }
        println!();
        let rows: Vec<Vec<String>> = targets
            .iter()
            .map(|t| {
                vec![
                    t.instance.clone(),
                    t.job.clone(),
                    t.scrape_url.clone(),
                    t.health.to_string(),
                    t.last_scrape.clone().unwrap_or_else(|| "never".into()),
                    t.last_error.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table::format(
                &[
                    "INSTANCE",
                    "JOB",
                    "SCRAPE URL",
                    "HEALTH",
                    "LAST SCRAPE",
                    "ERROR"
                ],
                &rows
            )
        );
    }
    Ok(if failed || down {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
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
            programs: BTreeMap::new(),
            enabled: BTreeMap::new(),
            pending: recipe::PendingApply::Clear,
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
            ["wireguard", "node_exporter", "prometheus", "firewall"]
        );
        assert!(services.iter().all(|s| s.running));
        // Nodes run no Prometheus, so its state does not matter there.
        let mut node = healthy();
        node.prometheus = recipe::ProcessState::Stopped;
        let (services, problems) = diagnose(Role::Node, "wg0", &node, &recorded());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(services.len(), 3);
    }

    #[test]
    fn every_kind_of_damage_is_reported() {
        let mut facts = healthy();
        facts.interface = recipe::InterfaceState::Missing;
        facts.node_exporter = recipe::ProcessState::Stopped;
        facts.prometheus = recipe::ProcessState::Stopped;
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
            prometheus is not running
            the nftables table inet promguard is not loaded
            /etc/promguard/nftables.conf is missing
            /etc/wireguard/wg0.conf differs from what promguard wrote (edited by hand?)
            an earlier run stopped before applying /etc/wireguard/wg0.conf (the files may differ from what runs)
            run `promguard up` to repair"#]]
        .assert_eq(&problems.join("\n"));
    }
}
