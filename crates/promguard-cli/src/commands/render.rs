//! `promguard render HOST [what]`: print what `up` would install.

use std::path::Path;
use std::process::ExitCode;

use promguard_core::HostName;
use promguard_wg::Secrets;

use crate::cli::RenderWhat;
use crate::deploy::make_plan;
use crate::project::Project;
use promguard_wg::files::{host_files as render_host, HostFileKind as FileKind};

pub fn run(
    config: Option<&Path>,
    host: &str,
    what: Option<RenderWhat>,
    show_secrets: bool,
) -> anyhow::Result<ExitCode> {
    let name = HostName::new(host)?;
    let project = Project::load(config)?;
    let state = project.load_state()?;
    let plan = make_plan(&project, state.as_ref())?;
    let Some(host) = plan.host(&name) else {
        let names: Vec<String> = plan.hosts.iter().map(|h| h.name.to_string()).collect();
        anyhow::bail!(
            "no host {name} in the plan; hosts are: {}",
            names.join(", ")
        );
    };
    let secrets = if show_secrets {
        Secrets::Include
    } else {
        Secrets::Redact
    };
    let wanted = what.map(|w| match w {
        RenderWhat::Wg => FileKind::WireGuard,
        RenderWhat::Prometheus => FileKind::Prometheus,
        RenderWhat::Targets => FileKind::Targets,
        RenderWhat::Nftables => FileKind::Nftables,
    });
    let files: Vec<_> = render_host(host, secrets)
        .into_iter()
        .filter(|f| wanted.is_none_or(|k| f.kind == k))
        .collect();
    if files.is_empty() {
        anyhow::bail!(
            "host {name} is a {} and has no such file; Prometheus files exist only on the monitor",
            host.role
        );
    }
    let many = files.len() > 1;
    for file in files {
        if many {
            println!("# ==> {} (mode {:o}) <==", file.path, file.mode);
        }
        print!("{}", file.content);
        if many {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}
