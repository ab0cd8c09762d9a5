//! `promguard plan`: hosts and changes, without changing anything.

use std::path::Path;
use std::process::ExitCode;

use promguard_core::Change;
use serde::Serialize;

use crate::commands::table;
use crate::deploy::make_plan;
use crate::project::Project;

/// The `plan --json` contract.
#[derive(Debug, Serialize)]
pub struct PlanJson {
    /// Every host of the plan.
    pub hosts: Vec<PlanHostJson>,
    /// What `up` would change.
    pub changes: Vec<Change>,
}

/// One host in `plan --json`.
#[derive(Debug, Serialize)]
pub struct PlanHostJson {
    /// Host name.
    pub name: String,
    /// `monitor` or `node`.
    pub role: String,
    /// Region.
    pub region: String,
    /// `created` (a provider makes it) or `existing` (the user runs it).
    pub origin: String,
    /// WireGuard address.
    pub wireguard_address: String,
    /// WireGuard public key; `None` while the key is new: each run
    /// generates new keys until `up` saves them in the state.
    pub public_key: Option<String>,
    /// The monitors whose Prometheus scrapes the host (a monitor scrapes
    /// itself).
    pub scraped_by: Vec<String>,
}

/// The monitors that scrape `host`: its peers, or itself on a monitor.
fn scraped_by(host: &promguard_core::HostPlan) -> Vec<String> {
    match host.role {
        promguard_core::Role::Monitor => vec![host.name.to_string()],
        _ => host.peers.iter().map(|p| p.name.to_string()).collect(),
    }
}

/// Runs `promguard plan`.
pub fn run(config: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let state = project.load_state()?;
    let plan = make_plan(&project, state.as_ref())?;
    // Keys not in the state are thrown away at the end of this run: showing
    // them would invite copying a key that is never used.
    let saved_key = |h: &promguard_core::HostPlan| {
        let key = h.interface.public_key();
        state
            .as_ref()
            .and_then(|s| s.hosts.get(&h.name))
            .is_some_and(|r| r.public_key == key)
            .then(|| key.to_string())
    };
    if json {
        let out = PlanJson {
            hosts: plan
                .hosts
                .iter()
                .map(|h| PlanHostJson {
                    name: h.name.to_string(),
                    role: h.role.to_string(),
                    region: h.region.to_string(),
                    origin: table::origin(h.lifecycle).to_owned(),
                    wireguard_address: h.interface.address.to_string(),
                    public_key: saved_key(h),
                    scraped_by: scraped_by(h),
                })
                .collect(),
            changes: plan.changes.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let source = match &project.config_path {
        Some(p) => p.display().to_string(),
        None => "built-in default (no promguard.toml)".to_owned(),
    };
    let provider = match project.config.creates_hosts() {
        true => format!("on the {} provider", project.config.provider),
        false => "of existing hosts only (no provider)".to_owned(),
    };
    println!(
        "Deployment {} {provider}, subnet {} ({source})\n",
        plan.deployment, plan.subnet
    );
    // Which monitor scrapes which node matters only with several.
    let several = plan.monitors().count() > 1;
    let rows: Vec<Vec<String>> = plan
        .hosts
        .iter()
        .map(|h| {
            let mut row = vec![
                h.name.to_string(),
                h.role.to_string(),
                h.region.to_string(),
                table::origin(h.lifecycle).to_owned(),
                h.interface.address.to_string(),
                saved_key(h).unwrap_or_else(|| "(new: made by `up`)".to_owned()),
            ];
            if several {
                row.push(scraped_by(h).join(", "));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "HOST",
        "ROLE",
        "REGION",
        "ORIGIN",
        "WIREGUARD",
        "PUBLIC KEY",
    ];
    if several {
        headers.push("SCRAPED BY");
    }
    print!("{}", table::format(&headers, &rows));
    println!();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let limit = project.config.rotate_after_days;
    let old: Vec<String> = state
        .iter()
        .flat_map(|s| s.hosts.iter())
        .filter(|(_, r)| r.created)
        .filter_map(|(name, r)| {
            let days = now.saturating_sub(r.key_created?) / 86_400;
            (days >= u64::from(limit)).then(|| format!("{name} ({days} days)"))
        })
        .collect();
    if !old.is_empty() {
        println!(
            "Warning: WireGuard keys older than {limit} days (wireguard.rotate_after_days): {}; run `promguard rotate`.\n",
            old.join(", ")
        );
    }
    if plan.changes.is_empty() {
        println!("No changes.");
    } else {
        println!("Changes ({}):", plan.changes.len());
        for change in &plan.changes {
            println!("  {change}");
        }
    }
    if let Some(note) = crate::trust::scrape_job_note(&plan) {
        println!("\n{note}");
    }
    Ok(ExitCode::SUCCESS)
}
