//! `promguard tunnel`: a local port forwarded to the monitor's Prometheus
//! (or its Alertmanager).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::commands::runtime;
use crate::deploy::{make_plan, Context};
use crate::project::Project;

/// What the tunnel reaches on the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Prometheus (local port 9090 by default).
    Prometheus,
    /// Alertmanager (local port 9093 by default).
    Alertmanager,
}

pub fn run(
    config: Option<&Path>,
    verbose: bool,
    target: Target,
    port: Option<u16>,
) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let state = project.existing_state()?;
    let ctx = Context::new(project, verbose)?;
    let plan = make_plan(&ctx.project, Some(&state))?;
    let monitor = plan.monitor();
    let prometheus = monitor
        .prometheus
        .as_ref()
        .expect("the monitor runs Prometheus")
        .listen;
    let (remote, what, port) = match target {
        Target::Prometheus => (prometheus, "Prometheus", port.unwrap_or(9090)),
        Target::Alertmanager => (
            promguard_core::alerts::ALERTMANAGER_LISTEN
                .parse()
                .expect("a valid socket address"),
            "Alertmanager",
            port.unwrap_or(9093),
        ),
    };
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
