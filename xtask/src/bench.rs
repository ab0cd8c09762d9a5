//! `cargo xtask bench`: whole-deployment figures on local namespace hosts,
//! plus the criterion figures for planning and rendering 10,000 nodes.
//! It reports; it never fails on a time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Resource use of one `promguard` run.
#[derive(Debug, Clone, Default)]
struct Run {
    wall: Duration,
    cli_cpu: Duration,
    cli_max_rss_kib: u64,
    host_cpu: Duration,
    report: Option<Value>,
}

/// What one deployment size measured.
#[derive(Debug, Clone)]
struct Size {
    nodes: usize,
    fresh: Run,
    noop: Run,
    add: Run,
    status: Run,
}

const CLOCK_TICKS: f64 = 100.0;

/// CPU time (user + system, including reaped children) of every process in
/// the PID namespace of `init`.
fn namespace_cpu(init: u32) -> Duration {
    let Ok(ns) = std::fs::read_link(format!("/proc/{init}/ns/pid")) else {
        return Duration::ZERO;
    };
    let mut ticks: u64 = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .ok()
            .as_ref()
            != Some(&ns)
        {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: state is field 3; utime..cstime are 14..17.
        let rest = stat.rsplit(") ").next().unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for i in 11..15 {
            ticks += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS)
}

fn hosts_cpu(provider: &promguard_cloud::local::LocalProvider, names: &[String]) -> Duration {
    names
        .iter()
        .filter_map(|n| promguard_core::HostName::new(n).ok())
        .filter_map(|n| provider.host_init_pid(&n))
        .map(namespace_cpu)
        .sum()
}

/// Runs `promguard` under `xtask measure` so its own rusage is read.
fn measure(bin: &Path, config: &Path, args: &[&str], report: Option<&Path>) -> Result<Run> {
    let usage = tempfile::NamedTempFile::new()?;
    let me = std::env::current_exe()?;
    let mut cmd = Command::new(me);
    cmd.arg("measure")
        .arg(usage.path())
        .arg(bin)
        .arg("--config")
        .arg(config)
        .args(args);
    if let Some(r) = report {
        cmd.arg("--report").arg(r);
    }
    let started = Instant::now();
    let out = cmd.output()?;
    let wall = started.elapsed();
    if !out.status.success() {
        bail!(
            "promguard {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let usage: Value = serde_json::from_str(&std::fs::read_to_string(usage.path())?)?;
    let report = match report {
        Some(r) => Some(serde_json::from_str(&std::fs::read_to_string(r)?)?),
        None => None,
    };
    Ok(Run {
        wall,
        cli_cpu: Duration::from_secs_f64(usage["cpu_s"].as_f64().unwrap_or(0.0)),
        cli_max_rss_kib: usage["max_rss_kib"].as_u64().unwrap_or(0),
        host_cpu: Duration::ZERO,
        report,
    })
}

/// `xtask measure OUT PROGRAM ARGS...`: runs the program and writes its
/// CPU time and peak memory as JSON to OUT.
pub fn measure_child(args: &[String]) -> Result<()> {
    let [out, program, rest @ ..] = args else {
        bail!("usage: xtask measure OUT PROGRAM [ARGS...]");
    };
    let status = Command::new(program).args(rest).status()?;
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    let cpu = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let json = serde_json::json!({
        "cpu_s": cpu(usage.user_time()) + cpu(usage.system_time()),
        "max_rss_kib": usage.max_rss(),
    });
    std::fs::write(out, json.to_string())?;
    if !status.success() {
        bail!("{program} failed with {status}");
    }
    Ok(())
}

fn write_config(path: &Path, name: &str, nodes: usize) -> Result<()> {
    std::fs::write(
        path,
        format!(
            "[deployment]\nname = \"{name}\"\nprovider = \"local\"\nsubnet = \"10.0.0.0/22\"\n\n[prometheus]\nscrape_interval = \"1s\"\n\n[nodes]\ncount = {nodes}\n"
        ),
    )?;
    Ok(())
}

fn bench_size(bin: &Path, nodes: usize) -> Result<Size> {
    let name = format!("bench{nodes}x{}", std::process::id() % 10000);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("promguard.toml");
    let provider = promguard_cloud::local::LocalProvider::new(
        promguard_core::DeploymentName::new(&name)?,
        promguard_cloud::local::LocalOptions::default(),
    );
    let host_names = |n: usize| -> Vec<String> {
        std::iter::once("promguard-monitor-1".to_owned())
            .chain((1..=n).map(|i| format!("promguard-node-{i}")))
            .collect()
    };
    let result = (|| -> Result<Size> {
        write_config(&config, &name, nodes)?;
        let report = dir.path().join("report.json");
        let mut fresh = measure(bin, &config, &["up", "--yes"], Some(&report))?;
        fresh.host_cpu = hosts_cpu(&provider, &host_names(nodes));
        let before = hosts_cpu(&provider, &host_names(nodes));
        let mut noop = measure(bin, &config, &["up", "--yes"], Some(&report))?;
        noop.host_cpu = hosts_cpu(&provider, &host_names(nodes)).saturating_sub(before);
        let before = hosts_cpu(&provider, &host_names(nodes));
        let mut status = measure(bin, &config, &["status", "--json"], None)?;
        status.host_cpu = hosts_cpu(&provider, &host_names(nodes)).saturating_sub(before);
        write_config(&config, &name, nodes + 1)?;
        let before = hosts_cpu(&provider, &host_names(nodes));
        let mut add = measure(bin, &config, &["up", "--yes"], Some(&report))?;
        add.host_cpu = hosts_cpu(&provider, &host_names(nodes + 1)).saturating_sub(before);
        Ok(Size {
            nodes,
            fresh,
            noop,
            add,
            status,
        })
    })();
    let down = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["down", "--yes"])
        .output();
    if let Ok(o) = &down {
        if !o.status.success() {
            eprintln!("bench: down failed: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    result
}

/// The `count` hosts that took longest (connect + converge), for "where
/// the time goes".
fn slowest_hosts(run: &Run, count: usize) -> String {
    let mut hosts: Vec<(f64, String)> = run
        .report
        .as_ref()
        .and_then(|r| r["hosts"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|h| {
            let connect = h["connect_ms"].as_f64().unwrap_or(0.0);
            let converge = h["converge_ms"].as_f64().unwrap_or(0.0);
            (
                connect + converge,
                format!(
                    "{} (connect {connect:.0} ms, converge {converge:.0} ms, {} round trips)",
                    h["name"].as_str().unwrap_or("?"),
                    h["round_trips"]
                ),
            )
        })
        .collect();
    hosts.sort_by(|a, b| b.0.total_cmp(&a.0));
    hosts
        .into_iter()
        .take(count)
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(", ")
}

fn phase(run: &Run, name: &str) -> f64 {
    run.report
        .as_ref()
        .and_then(|r| r["phases_ms"][name].as_f64())
        .unwrap_or(0.0)
        / 1000.0
}

fn max_round_trips(run: &Run) -> u64 {
    run.report
        .as_ref()
        .and_then(|r| r["hosts"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["round_trips"].as_u64())
        .max()
        .unwrap_or(0)
}

fn node_round_trips(run: &Run) -> u64 {
    run.report
        .as_ref()
        .and_then(|r| r["hosts"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|h| h["role"] == "node")
        .filter_map(|h| h["round_trips"].as_u64())
        .max()
        .unwrap_or(0)
}

fn table(sizes: &[Size]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| nodes | fresh `up` incl. creation | of which: create / converge / verify | fresh `up` without creation | no-op `up` | add one node | `status` | round trips per host, no-op (node / monitor) | round trips per host, fresh | SSH connections per host per run | CLI peak RSS | CPU per host, fresh `up` (CLI + hosts) |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for s in sizes {
        let hosts = (s.nodes + 1) as f64;
        let create = phase(&s.fresh, "create");
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {:.2} / {:.2} / {:.2} s | {:.2} s | {:.3} s | {:.2} s | {:.3} s | {} / {} | {} | 1 | {:.1} MiB | {:.3} CPU-s ({:.3} + {:.3}) |",
            s.nodes,
            s.fresh.wall.as_secs_f64(),
            create,
            phase(&s.fresh, "converge"),
            phase(&s.fresh, "verify"),
            s.fresh.wall.as_secs_f64() - create,
            s.noop.wall.as_secs_f64(),
            s.add.wall.as_secs_f64(),
            s.status.wall.as_secs_f64(),
            node_round_trips(&s.noop),
            max_round_trips(&s.noop),
            max_round_trips(&s.fresh),
            s.fresh.cli_max_rss_kib.max(s.add.cli_max_rss_kib) as f64 / 1024.0,
            (s.fresh.cli_cpu + s.fresh.host_cpu).as_secs_f64() / hosts,
            s.fresh.cli_cpu.as_secs_f64() / hosts,
            s.fresh.host_cpu.as_secs_f64() / hosts,
        );
    }
    out
}

fn criterion(root: &Path) -> Result<String> {
    let out = Command::new(crate::cargo_path())
        .current_dir(root)
        .args([
            "bench",
            "-q",
            "-p",
            "promguard-cli",
            "--bench",
            "plan_render",
            "--",
            "--noplot",
        ])
        .output()
        .context("cannot run cargo bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = String::from("| benchmark (10,000 nodes in a /16) | time (criterion: low / estimate / high) |\n|---|---|\n");
    let mut name = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("10k-nodes/") {
            name = t.split("time:").next().unwrap_or(t).trim().to_owned();
        }
        if let Some(time) = t.split("time:").nth(1) {
            let _ = writeln!(rows, "| {name} | {} |", time.trim());
        }
    }
    Ok(rows)
}

/// What the systemd row measured.
struct SystemdRow {
    nodes: usize,
    fresh: Run,
    noop: Run,
    /// From `systemctl reboot` on every host until the monitor's
    /// Prometheus reports every target up again.
    reboot_to_up: Duration,
    /// Of that, until every host's systemd said `running`.
    reboot_to_booted: Duration,
}

/// A fresh `up` on systemd hosts (boot, apt installs from the deployment's
/// mirror), a no-op `up`, and a reboot of every host until every target is
/// up again with no PromGuard run.
fn bench_systemd(bin: &Path, nodes: usize) -> Result<SystemdRow> {
    let name = format!("bsd{nodes}x{}", std::process::id() % 10000);
    let mut d = crate::e2e::Deployment::local(bin.to_owned(), name.clone())?;
    d.scrape_interval = "1s".to_owned();
    d.extra_config = "\n[local]\nhosts = \"systemd\"\n".to_owned();
    let provider = promguard_cloud::local::LocalProvider::new(
        promguard_core::DeploymentName::new(&name)?,
        promguard_cloud::local::LocalOptions {
            hosts: promguard_core::config::LocalHostKind::Systemd,
            ..promguard_cloud::local::LocalOptions::default()
        },
    );
    // The image and mirror are cached: build them first so that the
    // figures are those of a machine that has them.
    promguard_cloud::local::image::ensure_base_image(
        &promguard_cloud::local::LocalOptions::default().image_cache,
        promguard_cloud::local::image::DEFAULT_DEBIAN_MIRROR,
    )
    .map_err(anyhow::Error::msg)
    .and_then(|image| {
        promguard_cloud::local::image::ensure_mirror(
            &promguard_cloud::local::LocalOptions::default().image_cache,
            &image,
            promguard_cloud::local::image::DEFAULT_DEBIAN_MIRROR,
        )
        .map_err(anyhow::Error::msg)
    })?;
    let names: Vec<String> = (1..=nodes).map(|i| format!("promguard-node-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    d.write_config(&refs)?;
    let config = d.config_path();
    let report = d.dir.path().join("report.json");
    let fresh = measure(bin, &config, &["up", "--yes"], Some(&report))?;
    let noop = measure(bin, &config, &["up", "--yes"], Some(&report))?;
    let (reboot_to_booted, reboot_to_up) =
        crate::e2e_systemd::reboot_all(&d, &provider, nodes + 1, Duration::from_secs(120))?;
    Ok(SystemdRow {
        nodes,
        fresh,
        noop,
        reboot_to_up,
        reboot_to_booted,
    })
}

fn systemd_table(rows: &[SystemdRow]) -> String {
    let mut out = String::from(
        "| nodes | fresh `up` | of which: create (boot) / converge (apt + config) / verify | no-op `up` | reboot of every host: until booted / until every target is up |\n|---:|---:|---|---:|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {:.2} / {:.2} / {:.2} s | {:.3} s | {:.1} s / {:.1} s |",
            r.nodes,
            r.fresh.wall.as_secs_f64(),
            phase(&r.fresh, "create"),
            phase(&r.fresh, "converge"),
            phase(&r.fresh, "verify"),
            r.noop.wall.as_secs_f64(),
            r.reboot_to_booted.as_secs_f64(),
            r.reboot_to_up.as_secs_f64(),
        );
    }
    out
}

const SYSTEMD_BEGIN: &str = "<!-- systemd figures -->";
const SYSTEMD_END: &str = "<!-- end of systemd figures -->";

fn systemd_section(rows: &[SystemdRow]) -> String {
    format!(
        "{SYSTEMD_BEGIN}\n## Systemd hosts\n\nLocal provider with `[local] hosts = \"systemd\"`: Debian 12 booted by its own\nsystemd (systemd-nspawn), packages installed with apt from the deployment's\nmirror; scrape interval 1 s, debug build of the CLI; base image and mirror\nalready cached.\n\n{}\n- *create (boot)*: from creating the namespaces until every host's sshd answers.\n- *converge*: the `apt-get install` of wireguard-tools, nftables,\n  prometheus-node-exporter (and prometheus on the monitor), then PromGuard's files.\n- *verify*: mostly Prometheus' own start-up: its discovery and scrape managers\n  wait up to 5 s before the first scrape.\n- *reboot*: `systemctl reboot` on every host at once; *until every target is\n  up* is read from the monitor's Prometheus, which rebooted too (so it includes\n  Prometheus' start-up again); no PromGuard run is involved.\n{SYSTEMD_END}",
        systemd_table(rows)
    )
}

/// `cargo xtask bench --systemd`: only the systemd row, replacing its
/// section of docs/benchmarks.md.
pub fn run_systemd(root: &Path) -> Result<()> {
    crate::run(crate::cargo().args(["build", "-q", "-p", "promguard-cli"]))?;
    let bin: PathBuf = crate::target_dir(root).join("debug/promguard");
    let row = bench_systemd(&bin, 3)?;
    let section = systemd_section(std::slice::from_ref(&row));
    println!("{section}");
    let doc = root.join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&doc).unwrap_or_default();
    let text = match (old.find(SYSTEMD_BEGIN), old.find(SYSTEMD_END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &old[..a], &old[b + SYSTEMD_END.len()..])
        }
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(&doc, text)?;
    eprintln!("bench: wrote {}", doc.display());
    Ok(())
}

/// Runs the benchmark for `sizes` and writes docs/benchmarks.md.
pub fn run(root: &Path, sizes: &[usize]) -> Result<()> {
    crate::run(crate::cargo().args(["build", "-q", "-p", "promguard-cli"]))?;
    let bin: PathBuf = crate::target_dir(root).join("debug/promguard");
    let mut results = Vec::new();
    for &n in sizes {
        eprintln!("bench: {n} nodes");
        match bench_size(&bin, n) {
            Ok(s) => {
                for (label, run) in [("fresh", &s.fresh), ("no-op", &s.noop), ("add", &s.add)] {
                    eprintln!(
                        "bench: {n} nodes, {label} up: {:.2?}; phases {}; slowest hosts: {}",
                        run.wall,
                        run.report
                            .as_ref()
                            .map(|r| r["phases_ms"].to_string())
                            .unwrap_or_default(),
                        slowest_hosts(run, 3)
                    );
                }
                results.push(s);
            }
            Err(e) => eprintln!("bench: {n} nodes failed: {e:#}"),
        }
    }
    let deployments = table(&results);
    println!("{deployments}");
    eprintln!("bench: criterion (planning and rendering 10,000 nodes)");
    let crit = criterion(root)?;
    println!("{crit}");
    let doc = root.join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&doc).unwrap_or_default();
    // Hand-written sections after the generated part are kept.
    let kept = old
        .split_once("<!-- end of generated figures -->")
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_default();
    let text = format!(
        "# Benchmarks\n\nGenerated by `cargo xtask bench` on this project's 2-core machine; figures are\nmeasurements, not limits. Local provider (namespace hosts), scrape interval 1 s,\ndebug build of the CLI.\n\n## Whole deployments\n\n{deployments}\n- *fresh `up`*: creating the hosts, converging them and waiting until Prometheus\n  reports every target up. *Without creation* subtracts the create phase.\n- *round trips*: SSH commands (exec/upload/HTTP through the tunnel) per host;\n  the monitor's include the Prometheus API polls of verification.\n- *CPU per host*: the CLI's user+system time plus every process on the hosts\n  (sshd sessions, wg, nft, wireguard-go, node_exporter, Prometheus), divided\n  by the number of hosts.\n\n## Planning and rendering\n\n{crit}\n<!-- end of generated figures -->{kept}"
    );
    std::fs::write(&doc, text)?;
    eprintln!("bench: wrote {}", doc.display());
    Ok(())
}
