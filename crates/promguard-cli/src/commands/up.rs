//! `promguard up`: SIGINT and SIGTERM cancel the run between state saves.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use promguard_remote::CancellationToken;
use std::process::ExitCode;

use crate::commands::{runtime, table};
use crate::deploy::{self, Context, UpOptions};
use crate::project::Project;

/// `up` stopped because of SIGINT or SIGTERM. Every state save before the
/// signal is complete; none happens after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    /// The signal's number (2 for SIGINT, 15 for SIGTERM).
    pub signal: i32,
}

impl Interrupted {
    /// The conventional exit code of a run ended by this signal.
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.signal {
            2 => "SIGINT",
            15 => "SIGTERM",
            _ => "a signal",
        };
        write!(
            f,
            "interrupted by {name}; the state file records every host and key made so far: run `promguard up` again to finish, or `promguard down` to remove everything"
        )
    }
}

/// Cancels `cancel` on SIGINT or SIGTERM and keeps the signal's number.
fn cancel_on_signals(cancel: CancellationToken, signal: Arc<AtomicI32>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal as handle, SignalKind};
    let mut int = handle(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = handle(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::spawn(async move {
        let number = tokio::select! {
            _ = int.recv() => 2,
            _ = term.recv() => 15,
        };
        signal.store(number, Ordering::SeqCst);
        cancel.cancel();
    });
    Ok(())
}

/// Runs `work` with SIGINT and SIGTERM wired to its cancellation token;
/// `Err(code)` when a signal ended it (the message is printed).
fn with_signals<T, F>(
    work: impl FnOnce(CancellationToken) -> F,
) -> anyhow::Result<Result<T, ExitCode>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let runtime = runtime()?;
    let cancel = CancellationToken::new();
    let signal = Arc::new(AtomicI32::new(0));
    let result = runtime.block_on(async {
        cancel_on_signals(cancel.clone(), Arc::clone(&signal))?;
        work(cancel).await
    });
    // After SIGINT or SIGTERM, threads that create hosts or run remote
    // scripts may still be busy; they can no longer save state, and waiting
    // for them would make the signal useless.
    runtime.shutdown_background();
    match result {
        Ok(done) => Ok(Ok(done)),
        Err(err) => match signal.load(Ordering::SeqCst) {
            0 => Err(err),
            signal => {
                let interrupted = Interrupted { signal };
                eprintln!("{interrupted}");
                Ok(Err(ExitCode::from(interrupted.exit_code())))
            }
        },
    }
}

pub fn run(
    config: Option<&Path>,
    verbose: bool,
    report_path: Option<&Path>,
    options: UpOptions,
) -> anyhow::Result<ExitCode> {
    let project = Project::load(config)?;
    let ctx = Context::new(project, verbose)?;
    match with_signals(|cancel| async move { deploy::up(&ctx, &options, &cancel).await })? {
        Ok(report) => print(&report, report_path),
        Err(code) => Ok(code),
    }
}

/// `promguard rotate`.
pub fn rotate(
    config: Option<&Path>,
    verbose: bool,
    hosts: &[String],
    psk: bool,
    options: UpOptions,
) -> anyhow::Result<ExitCode> {
    let hosts = hosts
        .iter()
        .map(|h| promguard_core::HostName::new(h).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let preshared = if psk {
        promguard_core::state::Preshared::Rotate
    } else {
        promguard_core::state::Preshared::Keep
    };
    let project = Project::load(config)?;
    let ctx = Context::new(project, verbose)?;
    let done = with_signals(|cancel| async move {
        deploy::rotate(&ctx, &options, &hosts, preshared, &cancel).await
    })?;
    match done {
        Ok((rotated, report)) => {
            let names: Vec<&str> = rotated.iter().map(|h| h.as_str()).collect();
            println!(
                "New WireGuard keys{} for {}; every tunnel switched.\n",
                if psk { " and preshared keys" } else { "" },
                names.join(", ")
            );
            print(&report, None)
        }
        Err(code) => Ok(code),
    }
}

/// Prints what `up` did (and writes the `--report` JSON).
fn print(report: &deploy::UpReport, report_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    if let Some(path) = report_path {
        let json = serde_json::json!({
            "phases_ms": report
                .phases
                .iter()
                .map(|(name, d)| (name.clone(), serde_json::json!(d.as_secs_f64() * 1000.0)))
                .collect::<serde_json::Map<_, _>>(),
            "hosts": report.hosts.iter().map(|h| serde_json::json!({
                "name": h.outcome.name.as_str(),
                "role": h.outcome.role.as_str(),
                "ssh_connections": 1,
                "round_trips": h.outcome.round_trips,
                "connect_ms": h.outcome.connect_time.as_secs_f64() * 1000.0,
                "converge_ms": h.outcome.converge_time.as_secs_f64() * 1000.0,
                "changed": h.outcome.changed,
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
                h.outcome.name.to_string(),
                h.outcome.role.to_string(),
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
    let several = report.by_monitor.len() > 1;
    for (monitor, targets) in &report.by_monitor {
        if several {
            println!("\nPrometheus targets of {monitor} (scraped over WireGuard):");
        } else {
            println!("\nPrometheus targets (scraped over WireGuard):");
        }
        print!("{}", table::targets(targets, table::TargetColumns::Health));
    }
    Ok(ExitCode::SUCCESS)
}
