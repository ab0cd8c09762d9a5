//! `promguard status`: tunnels and targets, read from the hosts.

use std::num::NonZeroUsize;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use promguard_core::Role;
use promguard_remote::status::{self, PeerStatus, ServiceStatus};
use promguard_remote::{FiringAlert, Health, RemoteWriteQueue, TargetHealth};
use serde::Serialize;

use crate::commands::{runtime, table};
use crate::deploy::{make_plan, Context};
use crate::project::Project;

/// The `status --json` contract.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// Every host in the state.
    pub hosts: Vec<HostStatus>,
    /// Every target of every monitor's Prometheus (a target several
    /// monitors scrape is listed once per monitor).
    pub targets: Vec<TargetHealth>,
    /// The alerts firing in the monitors' Prometheus, each once.
    pub alerts: Vec<FiringAlert>,
    /// Each monitor: its targets and its remote_write queue.
    pub monitors: Vec<MonitorStatus>,
}

/// One monitor.
#[derive(Debug, Serialize)]
pub struct MonitorStatus {
    /// Host name.
    pub name: String,
    /// Its Prometheus' targets (empty when it did not answer).
    pub targets: Vec<TargetHealth>,
    /// Its remote_write queue, when it writes somewhere and answered.
    pub remote_write: Option<RemoteWriteQueue>,
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
    /// `created` (a provider made it) or `existing` (the user runs it).
    pub origin: String,
    /// Public address.
    pub public_address: Option<String>,
    /// WireGuard address.
    pub wireguard_address: String,
    /// Age of the host's WireGuard key in days (`None` when the state does
    /// not know when it was made); `promguard rotate` replaces it.
    pub key_age_days: Option<u64>,
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

pub fn run(config: Option<&Path>, json: bool, parallel: NonZeroUsize) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let state = project.existing_state()?;
    let ctx = Context::new(project, false)?;
    let plan = make_plan(&ctx.project, Some(&state))?;
    let results = runtime()?.block_on(status::read_all(
        &ctx.access(),
        &state,
        &plan,
        parallel,
        Arc::new(()),
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut hosts = Vec::new();
    let mut targets = Vec::new();
    let mut alerts: Vec<FiringAlert> = Vec::new();
    let mut monitors = Vec::new();
    let mut failed = false;
    for (name, result) in results {
        let record = &state.hosts[&name];
        let (peers, services, problems, error) = match result {
            Ok(report) => {
                if record.role == Role::Monitor {
                    monitors.push(MonitorStatus {
                        name: name.to_string(),
                        targets: report.targets.clone().unwrap_or_default(),
                        remote_write: report.remote_write,
                    });
                }
                if let Some(t) = report.targets {
                    targets.extend(t);
                }
                if let Some(a) = report.alerts {
                    alerts.extend(a);
                }
                failed |= !report.problems.is_empty();
                (report.peers, report.services, report.problems, None)
            }
            Err(e) => {
                failed = true;
                (Vec::new(), Vec::new(), Vec::new(), Some(e.to_string()))
            }
        };
        hosts.push(HostStatus {
            name: name.to_string(),
            role: record.role.to_string(),
            region: record.region.to_string(),
            origin: table::origin(match record.existing {
                true => promguard_core::Lifecycle::Existing,
                false => promguard_core::Lifecycle::Disposable,
            })
            .to_owned(),
            public_address: record.public_address.map(|a| a.to_string()),
            wireguard_address: record.wireguard_address.to_string(),
            key_age_days: record.key_created.map(|t| now.saturating_sub(t) / 86_400),
            peers,
            error,
            services,
            problems,
        });
    }
    hosts.sort_by_key(|h| (h.role != Role::Monitor.as_str(), h.name.clone()));
    targets.sort_by(|a, b| (&a.instance, &a.job).cmp(&(&b.instance, &b.job)));
    // Replicas fire the same alerts.
    alerts.sort_by(|a, b| (&a.name, &a.instance).cmp(&(&b.name, &b.instance)));
    alerts.dedup_by(|a, b| a.name == b.name && a.instance == b.instance);
    monitors.sort_by(|a, b| a.name.cmp(&b.name));
    let down = targets.iter().any(|t| t.health != Health::Up);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&StatusJson {
                hosts,
                targets,
                alerts,
                monitors,
            })?
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
        let keys: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    h.origin.clone(),
                    h.key_age_days
                        .map(|d| format!("{d} day(s)"))
                        .unwrap_or_else(|| "unknown".into()),
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table::format(&["HOST", "ORIGIN", "WIREGUARD KEY AGE"], &keys)
        );
        let problems: Vec<Vec<String>> = hosts
            .iter()
            .flat_map(|h| h.problems.iter().map(|p| vec![h.name.clone(), p.clone()]))
            .collect();
        if !problems.is_empty() {
            println!();
            print!("{}", table::format(&["HOST", "PROBLEM"], &problems));
        }
        let several = monitors.len() > 1;
        let sections: Vec<(Option<&str>, &[TargetHealth])> = if several {
            monitors
                .iter()
                .map(|m| (Some(m.name.as_str()), m.targets.as_slice()))
                .collect()
        } else {
            vec![(None, targets.as_slice())]
        };
        for (monitor, targets) in sections {
            println!();
            if let Some(monitor) = monitor {
                println!("Targets of {monitor}:");
            }
            print!(
                "{}",
                table::targets(targets, table::TargetColumns::LastScrape)
            );
        }
        let queues: Vec<Vec<String>> = monitors
            .iter()
            .filter_map(|m| {
                let q = m.remote_write?;
                Some(vec![
                    m.name.clone(),
                    q.samples_pending.to_string(),
                    q.samples_failed.to_string(),
                ])
            })
            .collect();
        if !queues.is_empty() {
            println!();
            print!(
                "{}",
                table::format(
                    &["MONITOR", "REMOTE WRITE PENDING", "FAILED SAMPLES"],
                    &queues
                )
            );
        }
        if !alerts.is_empty() {
            let rows: Vec<Vec<String>> = alerts
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.instance.clone(),
                        a.severity.clone(),
                        a.since.clone(),
                        a.summary.clone(),
                    ]
                })
                .collect();
            println!();
            print!(
                "{}",
                table::format(
                    &["FIRING ALERT", "INSTANCE", "SEVERITY", "SINCE", "SUMMARY"],
                    &rows
                )
            );
        }
    }
    Ok(if failed || down {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
