//! `promguard up`.

use std::path::Path;

use anyhow::Context as _;
use std::process::ExitCode;

use crate::commands::{runtime, table};
use crate::deploy::{self, Context, UpOptions};
use crate::project::Project;

pub fn run(
    config: Option<&Path>,
    verbose: bool,
    report_path: Option<&Path>,
    options: UpOptions,
) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let ctx = Context::new(project, verbose)?;
    let runtime = runtime()?;
    let result = runtime.block_on(deploy::up(&ctx, &options));
    // After SIGINT or SIGTERM, threads that create hosts or run remote
    // scripts may still be busy; they can no longer save state, and waiting
    // for them would make the signal useless.
    runtime.shutdown_background();
    let report = match result {
        Ok(report) => report,
        Err(err) => match err.downcast_ref::<deploy::Interrupted>() {
            Some(interrupted) => {
                eprintln!("{interrupted}");
                return Ok(ExitCode::from(interrupted.exit_code()));
            }
            None => return Err(err),
        },
    };
    if let Some(path) = report_path {
        let json = serde_json::json!({
            "phases_ms": report
                .phases
                .iter()
                .map(|(name, d)| (name.clone(), serde_json::json!(d.as_secs_f64() * 1000.0)))
                .collect::<serde_json::Map<_, _>>(),
            "hosts": report.hosts.iter().map(|h| serde_json::json!({
                "name": h.name.as_str(),
                "role": h.role.as_str(),
                "ssh_connections": 1,
                "round_trips": h.round_trips,
                "connect_ms": h.connect_time.as_secs_f64() * 1000.0,
                "converge_ms": h.converge_time.as_secs_f64() * 1000.0,
                "changed": h.changed,
            })).collect::<Vec<_>>(),
            "changes": report.changes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    if report.changes.is_empty() {
        println!("No changes to hosts or peers.");
    } else {
        println!("Applied {} change(s):", report.changes.len());
        for c in &report.changes {
            println!("  {c}");
        }
    }
    let rows: Vec<Vec<String>> = report
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.name.to_string(),
                h.role.to_string(),
                h.region.clone(),
                h.public_address.clone(),
                h.wireguard_address.clone(),
                h.health.clone(),
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        table::format(
            &["HOST", "ROLE", "REGION", "PUBLIC", "WIREGUARD", "TARGETS"],
            &rows
        )
    );
    println!("\nPrometheus targets (scraped over WireGuard):");
    let rows: Vec<Vec<String>> = report
        .targets
        .iter()
        .map(|t| {
            vec![
                t.instance.clone(),
                t.job.clone(),
                t.scrape_url.clone(),
                t.health.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::format(&["INSTANCE", "JOB", "SCRAPE URL", "HEALTH"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}
