//! `promguard tunnel`: a local port forwarded to the monitor's Prometheus.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::commands::runtime;
use crate::deploy::{make_plan, Context};
use crate::project::Project;

pub fn run(config: Option<&Path>, verbose: bool, port: u16) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let state = project.existing_state()?;
    let ctx = Context::new(project, verbose)?;
    let plan = make_plan(&ctx.project, Some(&state))?;
    let monitor = plan.monitor();
    let remote = monitor
        .prometheus
        .as_ref()
        .expect("the monitor runs Prometheus")
        .listen;
    let conn = ctx.connect(&state, &monitor.name)?;
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let name = monitor.name.clone();
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(local)
            .await
            .with_context(|| format!("cannot listen on {local}; choose another port with --port"))?;
        println!("Prometheus of {name} is at http://{local}/ (Ctrl-C to stop)");
        tokio::select! {
            served = promguard_remote::serve_forward(std::sync::Arc::new(conn), listener, remote) => served?,
            _ = tokio::signal::ctrl_c() => println!("Tunnel closed."),
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
