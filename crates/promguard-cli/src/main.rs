//! The `promguard` binary: parses arguments and hands them to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // First, so no panic, not even in argument parsing, prints a secret.
    promguard_cli::crash::install();
    let args = promguard_cli::cli::Args::parse();
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
