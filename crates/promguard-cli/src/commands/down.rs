//! `promguard down`.

use std::path::Path;
use std::process::ExitCode;

use crate::commands::{confirm, runtime};
use promguard_cloud::provision::WithoutState;
use promguard_remote::CancellationToken;

use crate::deploy::{self, Context};
use crate::project::Project;

pub fn run(
    config: Option<&Path>,
    verbose: bool,
    yes: bool,
    discover: bool,
) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let name = project.config.deployment.clone();
    let question = if project.config.creates_hosts() {
        format!("Destroy every host PromGuard created for deployment {name}, and remove PromGuard from the hosts you run (they stay)?")
    } else {
        format!("Remove PromGuard from every host of deployment {name}? (They are yours: none is destroyed.)")
    };
    if !yes && !confirm(&question) {
        anyhow::bail!("not confirmed; run `promguard down --yes` to take deployment {name} down");
    }
    let ctx = Context::new(project, verbose)?;
    let without_state = if discover {
        WithoutState::DestroyWhatIsFound
    } else {
        WithoutState::Refuse
    };
    let cancel = CancellationToken::new();
    let report = runtime()?.block_on(deploy::down(&ctx, without_state, &cancel))?;
    if !report.left.is_empty() {
        let names: Vec<String> = report.left.iter().map(ToString::to_string).collect();
        println!(
            "Deployment {name}: removed PromGuard from {} host(s) you run ({}); they were not destroyed and are as PromGuard found them.",
            names.len(),
            names.join(", ")
        );
    }
    if report.destroyed > 0 || report.left.is_empty() {
        println!(
            "Deployment {name}: destroyed {} host(s) PromGuard created; their keys are gone from the state.",
            report.destroyed
        );
    }
    Ok(ExitCode::SUCCESS)
}
