//! `promguard down`.

use std::path::Path;
use std::process::ExitCode;

use crate::commands::{confirm, runtime};
use promguard_cloud::provision::WithoutState;

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
    if !yes && !confirm(&format!("Destroy every host of deployment {name}?")) {
        anyhow::bail!("not confirmed; run `promguard down --yes` to destroy deployment {name}");
    }
    let ctx = Context::new(project, verbose)?;
    let without_state = if discover {
        WithoutState::DestroyWhatIsFound
    } else {
        WithoutState::Refuse
    };
    let count = runtime()?.block_on(deploy::down(&ctx, without_state))?;
    println!("Deployment {name}: destroyed {count} host(s); their keys are gone from the state.");
    Ok(ExitCode::SUCCESS)
}
