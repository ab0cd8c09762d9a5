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
    /// WireGuard address.
    pub wireguard_address: String,
    /// WireGuard public key.
    pub public_key: String,
}

/// Runs `promguard plan`.
pub fn run(config: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let state = project.load_state()?;
    let plan = make_plan(&project, state.as_ref())?;
    if json {
        let out = PlanJson {
            hosts: plan
                .hosts
                .iter()
                .map(|h| PlanHostJson {
                    name: h.name.to_string(),
                    role: h.role.to_string(),
                    region: h.region.to_string(),
                    wireguard_address: h.interface.address.to_string(),
                    public_key: h.interface.public_key().to_string(),
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
    println!(
        "Deployment {} on the {} provider, subnet {} ({source})\n",
        plan.deployment, project.config.provider, plan.subnet
    );
    let rows: Vec<Vec<String>> = plan
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.name.to_string(),
                h.role.to_string(),
                h.region.to_string(),
                h.interface.address.to_string(),
                h.interface.public_key().to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::format(
            &["HOST", "ROLE", "REGION", "WIREGUARD", "PUBLIC KEY"],
            &rows
        )
    );
    println!();
    if plan.changes.is_empty() {
        println!("No changes.");
    } else {
        println!("Changes ({}):", plan.changes.len());
        for change in &plan.changes {
            println!("  {change}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
