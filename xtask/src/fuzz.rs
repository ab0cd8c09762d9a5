//! `cargo xtask fuzz [--seconds N]`: runs every cargo-fuzz target in
//! `fuzz/` for N seconds each, one after the other (the CPU is shared).
//!
//! cargo-fuzz needs nightly compiler flags (`-Zsanitizer`); on a stable
//! toolchain `RUSTC_BOOTSTRAP=1` unlocks them. A crash stops the run and
//! leaves its input in `fuzz/artifacts/<target>/`: turn it into a unit test
//! next to the parser, fix the parser, run again.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// The fuzz targets, as named in `fuzz/Cargo.toml`.
const TARGETS: &[&str] = &[
    "config",
    "wg_quick",
    "wg_dump",
    "state",
    "prometheus_targets",
    "digitalocean_droplets",
];

/// Runs each target for `seconds`.
pub fn run(root: &Path, seconds: u64) -> Result<()> {
    let installed = Command::new(crate::cargo_path())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        crate::run(crate::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = root.join("fuzz");
    for target in TARGETS {
        eprintln!("fuzz: {target} for {seconds} s");
        crate::run(
            crate::cargo()
                .current_dir(&dir)
                .env("RUSTC_BOOTSTRAP", "1")
                .args([
                    "fuzz",
                    "run",
                    target,
                    "--",
                    &format!("-max_total_time={seconds}"),
                ]),
        )
        .with_context(|| {
            format!(
                "fuzz target {target} failed; its crashing input is in fuzz/artifacts/{target}/"
            )
        })?;
    }
    eprintln!("fuzz: every target ran {seconds} s without a crash");
    Ok(())
}
