//! Project automation, run as `cargo xtask <command>` from anywhere in the
//! workspace:
//!
//! - `test`: installs the Debian packages the tests need when missing, then
//!   runs everything CI checks (fmt, clippy, all tests, every end-to-end
//!   scenario below but the real-DigitalOcean one and the fuzzing).
//! - `demo`: installs what is missing, builds, brings up a monitor and three
//!   nodes on the local provider and prints the targets.
//! - `e2e --local`: the local end-to-end scenario on its own.
//! - `e2e --systemd`: the local scenario on systemd hosts (Debian booted
//!   with systemd-nspawn, packages from apt), with reboots and cut-off apt
//!   steps.
//! - `e2e --existing`: PromGuard on servers a user already runs (systemd
//!   hosts the test prepares itself: ufw, a WireGuard interface of their
//!   own, a sudo login, the user's Prometheus, a node behind NAT), left as
//!   they were found by `down`.
//! - `e2e --exporters`: managed exporters (postgres, redis, nginx,
//!   process, blackbox) on systemd hosts running PostgreSQL, redis and
//!   nginx: bound to the tunnel, restarted only on change, back after a
//!   reboot, stopped when dropped.
//! - `e2e --monitors`: two replica monitors writing to VictoriaMetrics on
//!   a storage host (deduplicated, no gap while one is stopped), and shards
//!   that move only the nodes the plan says.
//! - `e2e --faults`: the fault tests on local hosts (unreachable hosts,
//!   signals, a lost state file, healing, hostile input, secrets).
//! - `e2e --attack`: the attacker's-eye suite (port scans over IPv4 and
//!   IPv6, spoofed sources, a DNAT-published port, a node rewriting its
//!   peers, an unknown WireGuard key, secrets in `-vv` output).
//! - `e2e --alerts`: WireGuard on a node killed: the alerts fire and reach
//!   a webhook, `status` lists them, `up` repairs and they resolve.
//! - `e2e --example`: runs the embedding example (library crates only).
//! - `deps`: only the package installation.
//! - `tidy`: the architecture's invariants (which crate may depend on what,
//!   no IO in core, a doc on every module); part of `test`.
//! - `fuzz [--seconds N]`: runs each cargo-fuzz target for N seconds
//!   (default 60); not part of `test`.
//!
//! xtask keeps few dependencies so it builds before the system libraries
//! the workspace needs (libssh2) are installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod attack;
mod bench;
mod deps;
mod e2e;
mod e2e_alerts;
mod e2e_existing;
mod e2e_exporters;
mod e2e_fake;
mod e2e_monitors;
mod e2e_systemd;
mod example;
mod faults;
mod fuzz;
mod tidy;

fn main() -> Result<()> {
    STARTED.get_or_init(std::time::Instant::now);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("test") => test(&root),
        Some("demo") => demo(&root),
        Some("e2e") => {
            let rest: Vec<&str> = args[1..].iter().map(String::as_str).collect();
            match rest.as_slice() {
                ["--local"] => {
                    deps::ensure()?;
                    e2e::local(&root)
                }
                ["--fake"] => {
                    deps::ensure()?;
                    e2e_fake::fake(&root)
                }
                ["--systemd"] => {
                    deps::ensure()?;
                    e2e_systemd::systemd(&root)
                }
                ["--monitors"] => {
                    deps::ensure()?;
                    e2e_monitors::run(&root)
                }
                ["--exporters"] => {
                    deps::ensure()?;
                    e2e_exporters::run(&root)
                }
                ["--existing"] => {
                    deps::ensure()?;
                    e2e_existing::run(&root)
                }
                ["--faults"] => {
                    deps::ensure()?;
                    faults::run(&root)
                }
                ["--alerts"] => {
                    deps::ensure()?;
                    e2e_alerts::run(&root)
                }
                ["--attack"] => {
                    deps::ensure()?;
                    attack::run(&root)
                }
                ["--example"] => {
                    deps::ensure()?;
                    example::run(&root)
                }
                [] => e2e_fake::real(&root),
                other => bail!("unknown e2e arguments {other:?}; use --local, --systemd, --existing, --exporters, --monitors, --fake, --faults, --attack, --alerts, --example or nothing (real DigitalOcean)"),
            }
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("--systemd") => {
            deps::ensure()?;
            bench::run_systemd(&root)
        }
        Some("bench") => {
            let sizes = match args.get(1).map(String::as_str) {
                Some("--sizes") => args
                    .get(2)
                    .context("--sizes needs a list such as 3,20,50")?
                    .split(',')
                    .map(|n| n.trim().parse::<usize>().context("--sizes takes numbers"))
                    .collect::<Result<Vec<_>>>()?,
                None => vec![3, 20, 50, 100, 200],
                Some(other) => bail!("unknown bench argument {other:?}; use --sizes 3,20,50"),
            };
            deps::ensure()?;
            bench::run(&root, &sizes)
        }
        Some("measure") => bench::measure_child(&args[1..]),
        Some("deps") => deps::ensure(),
        Some("tidy") => tidy::run(&root),
        Some("fuzz") => {
            let seconds = match (args.get(1).map(String::as_str), args.get(2)) {
                (None, _) => 60,
                (Some("--seconds"), Some(n)) => n.parse().context("--seconds takes a number")?,
                _ => bail!("usage: cargo xtask fuzz [--seconds N]"),
            };
            fuzz::run(&root, seconds)
        }
        Some(other) => {
            bail!("unknown xtask command {other:?}; use test, demo, e2e --local or deps")
        }
        None => bail!("usage: cargo xtask <test|demo|e2e --local|deps>"),
    }
}

/// The workspace root (the parent of this crate's directory).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Where cargo puts build output (`CARGO_TARGET_DIR` or `target/`).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// What `cargo xtask test` built once for all its scenarios.
#[derive(Debug)]
struct Prebuilt {
    cli: PathBuf,
    example: PathBuf,
}

/// Set by `test`; a scenario run on its own builds what it needs.
static PREBUILT: std::sync::OnceLock<Prebuilt> = std::sync::OnceLock::new();

/// The `promguard` binary a scenario runs: the one `test` built, or else
/// a fresh `cargo build -p promguard-cli`.
fn cli(root: &Path) -> Result<PathBuf> {
    if let Some(prebuilt) = PREBUILT.get() {
        return Ok(prebuilt.cli.clone());
    }
    run(cargo().args(["build", "-q", "-p", "promguard-cli"]))?;
    Ok(target_dir(root).join("debug/promguard"))
}

/// The embedding example's binary, as [`cli`] finds the CLI's.
fn example(root: &Path) -> Result<PathBuf> {
    if let Some(prebuilt) = PREBUILT.get() {
        return Ok(prebuilt.example.clone());
    }
    run(cargo().args(["build", "-q", "-p", "promguard-cli", "--example", "embed"]))?;
    Ok(target_dir(root).join("debug/examples/embed"))
}

/// Runs a command, failing with its command line when it does not succeed.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo_path() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo() -> Command {
    Command::new(cargo_path())
}

fn test(root: &Path) -> Result<()> {
    timed("deps", deps::ensure)?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    tidy::run(root)?;
    timed("clippy", || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    // Doc links are checked too: a public item's docs must not point at
    // nothing or at a private item.
    timed("doc", || {
        run(cargo()
            .args(["doc", "--workspace", "--no-deps", "-q"])
            .env("RUSTDOCFLAGS", "-D warnings"))
    })?;
    // One build for every scenario and the tests. With `--workspace` the
    // CLI and the example get the features the tests' dev-dependencies add
    // to shared crates, so `cargo test` compiles only its test targets on
    // top; a `-p promguard-cli` build would compile most dependencies again.
    timed("build", || {
        run(cargo().args([
            "build",
            "-q",
            "--workspace",
            "--bin",
            "promguard",
            "--example",
            "embed",
        ]))
    })?;
    let debug = target_dir(root).join("debug");
    PREBUILT
        .set(Prebuilt {
            cli: debug.join("promguard"),
            example: debug.join("examples/embed"),
        })
        .expect("test runs once");
    // The monitors scenario, the embedding example, the alerts scenario and
    // the attack suite wait most of their time (a minute of one replica
    // stopped, Prometheus' first scrapes, alerts' thresholds, connect
    // timeouts) on namespace hosts: in two threads, they run beside the
    // workspace's tests, whose time is the compiler's, and always finish
    // (and tear down) before the result counts.
    let tests = in_lanes(
        root,
        &[
            &[("e2e --monitors", e2e_monitors::run)],
            &[
                ("e2e --example", example::run),
                ("e2e --alerts", e2e_alerts::run),
                ("e2e --attack", attack::run),
            ],
        ],
        || timed("cargo test", || run(cargo().args(["test", "--workspace"]))),
    );
    tests?;
    // The rest wait most of their time too (boots, apt, reboots,
    // Prometheus' start-up, timeouts): with one of them running, this
    // machine's two cores are three-quarters idle, so two lanes run at
    // once, each scenario on hosts and names of its own.
    in_lanes(
        root,
        &[
            &[
                ("e2e --fake", e2e_fake::fake),
                ("e2e --existing", e2e_existing::run),
                ("e2e --local", e2e::local),
            ],
            &[
                ("e2e --systemd", e2e_systemd::systemd),
                ("e2e --exporters", e2e_exporters::run),
                ("e2e --faults", faults::run),
            ],
        ],
        || Ok(()),
    )?;
    eprintln!("xtask test: everything passed");
    Ok(())
}

/// A scenario of `cargo xtask test`, by the name it prints.
type Scenario = (&'static str, fn(&Path) -> Result<()>);

/// Runs each lane's scenarios in order, in a thread per lane, beside
/// `beside` on this thread. A lane stops at its first failure; every lane
/// finishes (and its scenarios tear down) before the result counts, which
/// names every failure.
fn in_lanes(root: &Path, lanes: &[&[Scenario]], beside: impl FnOnce() -> Result<()>) -> Result<()> {
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .map(|lane| {
                scope.spawn(move || {
                    lane.iter()
                        .try_for_each(|(what, scenario)| timed(what, || scenario(root)))
                })
            })
            .collect();
        let mut results = vec![beside()];
        for (handle, lane) in handles.into_iter().zip(lanes) {
            results.push(handle.join().unwrap_or_else(|_| {
                let names: Vec<&str> = lane.iter().map(|(what, _)| *what).collect();
                Err(anyhow::anyhow!("a lane of {} panicked", names.join(", ")))
            }));
        }
        results
    });
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    match failures.as_slice() {
        [] => Ok(()),
        [one] => bail!("{one}"),
        many => bail!("{} failures:\n{}", many.len(), many.join("\n")),
    }
}

/// Runs `f`, printing how long it took and when it ended since xtask
/// started: CI's time limit is the sum.
fn timed(what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let started = std::time::Instant::now();
    let result = f();
    eprintln!(
        "xtask test: {what} {} after {:.0?} (at {:.0?})",
        if result.is_ok() { "passed" } else { "failed" },
        started.elapsed(),
        STARTED.get_or_init(std::time::Instant::now).elapsed()
    );
    result
}

/// When xtask started, for [`timed`]'s running total.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn demo(root: &Path) -> Result<()> {
    deps::ensure()?;
    run(cargo().args(["build", "-p", "promguard-cli"]))?;
    let bin = target_dir(root).join("debug/promguard");
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("promguard.toml");
    if !config.exists() {
        run(Command::new(&bin).arg("--config").arg(&config).args([
            "init",
            "--provider",
            "local",
            "--nodes",
            "3",
        ]))?;
    }
    run(Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .args(["up", "--yes"]))?;
    let shown = config
        .strip_prefix(root)
        .unwrap_or(&config)
        .display()
        .to_string();
    println!(
        "\nThe deployment is up. Next:\n  target/debug/promguard --config {shown} status\n  target/debug/promguard --config {shown} tunnel     # then open http://127.0.0.1:9090/ (Prometheus; its targets: /classic/targets)\n  target/debug/promguard --config {shown} tunnel --alertmanager     # then open http://127.0.0.1:9093/\n  target/debug/promguard --config {shown} down --yes"
    );
    Ok(())
}
