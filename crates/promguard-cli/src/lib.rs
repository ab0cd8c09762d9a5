//! The `promguard` command (`init`, `plan`, `render`, `up`, `status`,
//! `tunnel`, `ssh`, `down`): argument parsing, terminal output, signal
//! handling and reading the environment, around the workflows of the
//! library crates (plan in `promguard-core`, files in `promguard-wg`, hosts
//! in `promguard-cloud`, convergence and verification in
//! `promguard-remote`). Tools that embed PromGuard use those crates, not
//! this one; `examples/embed.rs` shows how.

use std::process::ExitCode;

pub mod cli;
pub mod cloud_setup;
pub mod commands;
pub mod crash;
pub mod deploy;
pub mod progress;
pub mod project;
pub mod trust;

/// Runs one command.
pub fn run(args: cli::Args) -> anyhow::Result<ExitCode> {
    commands::run(args)
}
