//! `promguard tunnel`: a local port forwarded to a monitor's Prometheus
//! (or its Alertmanager), or to the storage host's VictoriaMetrics.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::commands::runtime;
use crate::deploy::{make_plan, Context};
use crate::project::Project;

/// What the tunnel reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A monitor's Prometheus (local port 9090 by default).
    Prometheus,
    /// A monitor's Alertmanager (local port 9093 by default).
    Alertmanager,
    /// The storage host's VictoriaMetrics (local port 8428 by default).
    Storage,
}

pub fn run(
    config: Option<&Path>,
    verbose: bool,
    target: Target,
    monitor: Option<&str>,
    port: Option<u16>,
) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let state = project.existing_state()?;
    let ctx = Context::new(project, verbose)?;
    let plan = make_plan(&ctx.project, Some(&state))?;
    let host = match (target, monitor) {
        (Target::Storage, _) => plan
            .hosts
            .iter()
            .find(|h| h.role == promguard_core::Role::Storage)
            .context("the deployment has no storage host; add [storage] to the config")?,
        (_, None) => plan.monitor(),
        (_, Some(name)) => plan
            .monitors()
            .find(|m| m.name.as_str() == name)
            .with_context(|| {
                let names: Vec<&str> = plan.monitors().map(|m| m.name.as_str()).collect();
                format!(
                    "{name:?} is not a monitor of the deployment; its monitors are {}",
                    names.join(", ")
                )
            })?,
    };
    let (remote, what, port) = match target {
        Target::Prometheus => (
            host.prometheus
                .as_ref()
                .expect("a monitor runs Prometheus")
                .listen,
            "Prometheus",
            port.unwrap_or(9090),
        ),
        Target::Alertmanager => (
            promguard_core::alerts::ALERTMANAGER_LISTEN
                .parse()
                .expect("a valid socket address"),
            "Alertmanager",
            port.unwrap_or(9093),
        ),
        Target::Storage => {
            let engine = host
                .exporters
                .iter()
                .find(|e| e.packaged().is_some())
                .expect("the storage host runs its engine");
            (engine.listen, "VictoriaMetrics", port.unwrap_or(8428))
        }
    };
    let monitor = host;
    let conn = ctx.connect(&state, &monitor.name)?;
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let name = monitor.name.clone();
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(local)
            .await
            .with_context(|| format!("cannot listen on {local}; choose another port with --port"))?;
        println!("{what} of {name} is at http://{local}/ (Ctrl-C to stop)");
        tokio::select! {
            served = promguard_remote::serve_forward(std::sync::Arc::new(conn), listener, remote) => served?,
            _ = tokio::signal::ctrl_c() => println!("Tunnel closed."),
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
