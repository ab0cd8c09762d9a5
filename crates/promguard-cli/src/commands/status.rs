//! `promguard status`: tunnels and targets, read from the hosts.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use promguard_core::{HostName, Plan, Role, State};
use serde::Serialize;

use crate::commands::plan::make_plan;
use crate::commands::{runtime, table};
use crate::deploy::{fetch_targets, Context};
use crate::project::Project;
use crate::prometheus_api::TargetHealth;

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
) -> anyhow::Result<(Vec<PeerStatus>, Option<Vec<TargetHealth>>)> {
    let conn = ctx.connect(state, name)?;
    let host = plan
        .host(name)
        .ok_or_else(|| anyhow!("host {name} is not in the config"))?;
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
        Some(p) => Some(fetch_targets(&conn, p.listen)?),
        None => None,
    };
    Ok((peers, targets))
}

pub fn run(config: Option<&Path>, verbose: bool, json: bool) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let state = project
        .load_state()?
        .filter(|s| s.hosts.values().any(|h| h.created))
        .ok_or_else(|| {
            anyhow!(
                "deployment {} has no hosts; run `promguard up` first",
                project.config.deployment
            )
        })?;
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
        let mut tasks = Vec::new();
        for name in names.clone() {
            let (ctx, state, plan) = (Arc::clone(&ctx), Arc::clone(&state), Arc::clone(&plan));
            tasks.push(tokio::task::spawn_blocking(move || {
                read_host(&ctx, &state, &plan, &name)
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
        let (peers, error) = match result {
            Ok((peers, t)) => {
                if let Some(t) = t {
                    targets = t;
                }
                (peers, None)
            }
            Err(e) => {
                failed = true;
                (Vec::new(), Some(format!("{e:#}")))
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
        });
    }
    hosts.sort_by_key(|h| (h.role != Role::Monitor.as_str(), h.name.clone()));
    let down = targets.iter().any(|t| t.health != "up");
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
        println!();
        let rows: Vec<Vec<String>> = targets
            .iter()
            .map(|t| {
                vec![
                    t.instance.clone(),
                    t.job.clone(),
                    t.scrape_url.clone(),
                    t.health.clone(),
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
