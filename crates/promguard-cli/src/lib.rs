//! The workflows behind the `promguard` command (`init`, `plan`, `render`,
//! `up`, `status`, `tunnel`, `ssh`, `down`), composed from the PromGuard
//! crates: config and plan from `promguard-core`, files from `promguard-wg`
//! and core's renderers, hosts from `promguard-cloud`, convergence over SSH
//! from `promguard-remote`.
//!
//! `main.rs` only parses arguments and maps the result of [`run`] to an exit
//! code; everything else lives here so other tools can reuse the workflows.

use std::process::ExitCode;

pub mod cli;
pub mod cloud_setup;
pub mod commands;
pub mod crash;
pub mod deploy;
pub mod files;
pub mod host_key;
pub mod progress;
pub mod project;
pub mod prometheus_api;

/// Runs one command.
pub fn run(args: cli::Args) -> anyhow::Result<ExitCode> {
    commands::run(args)
}
