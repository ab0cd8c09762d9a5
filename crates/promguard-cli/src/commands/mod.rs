//! One module per subcommand.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{Args, Command};

mod down;
mod init;
mod plan;
mod render;
mod ssh;
mod status;
pub mod table;
mod tunnel;
mod up;

/// Dispatches a parsed command line.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.as_deref();
    let verbose = args.verbose > 0;
    init_logging(args.verbose);
    match args.command {
        Command::Init { provider, nodes } => init::run(config, provider, nodes),
        Command::Plan { json } => plan::run(config, json),
        Command::Render {
            host,
            what,
            show_secrets,
        } => render::run(config, &host, what, show_secrets),
        Command::Up {
            yes,
            parallel,
            verify_timeout,
            connect_timeout,
            report,
            trust_new_host_keys,
        } => up::run(
            config,
            verbose,
            report.as_deref(),
            crate::deploy::UpOptions {
                yes,
                parallel,
                verify_timeout: Duration::from_secs(verify_timeout),
                connect_timeout: Duration::from_secs(connect_timeout),
                new_host_keys: if trust_new_host_keys {
                    crate::trust::NewHostKeys::Trust
                } else {
                    crate::trust::NewHostKeys::Ask
                },
            },
        ),
        Command::Rotate {
            psk,
            hosts,
            parallel,
            verify_timeout,
            connect_timeout,
        } => up::rotate(
            config,
            verbose,
            &hosts,
            psk,
            crate::deploy::UpOptions {
                yes: false,
                parallel,
                verify_timeout: Duration::from_secs(verify_timeout),
                connect_timeout: Duration::from_secs(connect_timeout),
                new_host_keys: crate::trust::NewHostKeys::Ask,
            },
        ),
        Command::Status { json, parallel } => status::run(config, json, parallel),
        Command::Tunnel {
            port,
            alertmanager,
            storage,
            monitor,
        } => {
            let target = if storage {
                tunnel::Target::Storage
            } else if alertmanager {
                tunnel::Target::Alertmanager
            } else {
                tunnel::Target::Prometheus
            };
            tunnel::run(config, verbose, target, monitor.as_deref(), port)
        }
        Command::Ssh { host, command } => ssh::run(config, args.config.as_deref(), &host, &command),
        Command::Proxy { host } => ssh::proxy(config, &host),
        Command::Down { yes, discover } => down::run(config, verbose, yes, discover),
    }
}

fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROMGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}

/// A tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(256)
        .build()?)
}

/// Asks a yes/no question on the terminal; `false` when there is none.
pub fn confirm(question: &str) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}
