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
    if what == Some(RenderWhat::Exporters) {
        return exporters(&plan, host, show_secrets);
    }
    let wanted = what.map(|w| match w {
        RenderWhat::Wg => FileKind::WireGuard,
        RenderWhat::Prometheus => FileKind::Prometheus,
        RenderWhat::Targets => FileKind::Targets,
        RenderWhat::Nftables => FileKind::Nftables,
        RenderWhat::Exporters => unreachable!("handled above"),
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

/// `render HOST exporters`: each exporter of `host`, and for those
/// PromGuard installs, the files a systemd host gets (the environment
/// file with secrets redacted unless `show_secrets`).
fn exporters(
    plan: &promguard_core::Plan,
    host: &promguard_core::HostPlan,
    show_secrets: bool,
) -> anyhow::Result<ExitCode> {
    let desired =
        promguard_remote::fleet::desired_host(plan, host, promguard_core::Programs::Packages)?;
    for e in &host.exporters {
        match desired.exporters.iter().find(|m| m.name == e.name) {
            Some(m) => {
                println!(
                    "# ==> exporter {}: Debian package {}, listening on {} <==",
                    e.name, m.package, m.listen
                );
                for file in m.files(true, &desired.interface) {
                    println!("# {} (mode {:o})", file.path, file.mode);
                    if file.kind == promguard_remote::recipe::FileKind::ExporterEnv {
                        print!("{}", m.env_file_content(!show_secrets));
                    } else {
                        print!("{}", String::from_utf8_lossy(&file.content));
                    }
                }
            }
            None if e.is_node_exporter() => println!(
                "# ==> exporter {}: node_exporter, run by PromGuard on {} <==",
                e.name, e.listen
            ),
            None => println!(
                "# ==> exporter {}: run by you; start it bound to {} <==",
                e.name, e.listen
            ),
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
