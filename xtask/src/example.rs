//! `cargo xtask e2e --example`: runs the embedding example
//! (`crates/promguard-cli/examples/embed.rs`), which uses only the library
//! crates, and checks what it printed: progress from the events, every
//! target up, the deployment torn down, nothing left behind.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use promguard_cloud::CloudProvider;

/// Builds and runs the example and checks its output and what it left.
pub fn run(root: &Path) -> Result<()> {
    let example = crate::example(root)?;
    let output = Command::new(&example)
        .output()
        .with_context(|| format!("cannot run {}", example.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = || format!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    ensure!(output.status.success(), "the example failed:\n{}", said());
    let up: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("target ") && l.ends_with(" up"))
        .collect();
    // Each host's node_exporter, and Prometheus' own metrics.
    ensure!(up.len() == 4, "expected 4 targets up:\n{}", said());
    ensure!(
        up.iter()
            .any(|l| l.contains("http://127.0.0.1:9090/metrics")),
        "Prometheus' own target is not up:\n{}",
        said()
    );
    for line in [
        "promguard-monitor-1: converging",
        "promguard-node-2: converging",
    ] {
        ensure!(
            stdout.contains(line),
            "no progress line {line:?}:\n{}",
            said()
        );
    }
    ensure!(
        stdout.contains("deployment embed torn down"),
        "not torn down:\n{}",
        said()
    );
    let deployment = promguard_core::DeploymentName::new("embed")?;
    let provider = promguard_cloud::local::LocalProvider::new(
        deployment,
        promguard_cloud::local::LocalOptions::default(),
    );
    let left = tokio::runtime::Runtime::new()?.block_on(provider.list_hosts())?;
    ensure!(left.is_empty(), "the example left hosts: {left:?}");
    eprintln!("e2e: the embedding example brought up, verified and tore down 3 hosts");
    Ok(())
}
