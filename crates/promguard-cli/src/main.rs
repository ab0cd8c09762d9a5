//! The `promguard` binary: parses arguments and hands them to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // First, so no panic, not even in argument parsing, prints a secret.
    promguard_cli::crash::install();
    let args = promguard_cli::cli::Args::parse();
    if args.command.only_prints() {
        // Rust ignores SIGPIPE, so `promguard plan | head` would panic in
        // println! once head exits; a command that only prints may end
        // quietly instead, like any Unix filter. Commands that change hosts
        // keep it ignored: a reader dying to the same Ctrl-C (`up | tee`)
        // must not kill a run before it stops gracefully.
        // SAFETY: single-threaded here, and SIG_DFL installs no handler.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    match promguard_cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // One paragraph: the error and its causes, outermost first.
            let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
