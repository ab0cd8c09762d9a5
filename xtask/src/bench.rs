//! `cargo xtask bench`: whole-deployment figures on local namespace hosts,
//! plus the criterion figures for planning and rendering 10,000 nodes.
//! It reports; it never fails on a time.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Resource use of one `promguard` run.
#[derive(Debug, Clone, Default)]
struct Run {
    /// When it started, in seconds since the epoch.
    started: f64,
    wall: Duration,
    cli_cpu: Duration,
    cli_max_rss_kib: u64,
    host_cpu: Duration,
    /// CPU time of the whole machine during the run (`/proc/stat`).
    machine_cpu: Duration,
    report: Option<Value>,
}

impl Run {
    /// Cores that processes other than this run and the hosts kept busy
    /// during it on average: other work on the machine, which every figure
    /// of the run shares the cores with. Meaningful once `host_cpu` is set.
    fn other_load(&self) -> f64 {
        let other = self.machine_cpu.as_secs_f64()
            - self.cli_cpu.as_secs_f64()
            - self.host_cpu.as_secs_f64();
        (other / self.wall.as_secs_f64()).max(0.0)
    }
}

/// CPU time (user, nice, system, interrupts) of the whole machine since
/// boot.
fn machine_cpu() -> Duration {
    let ticks: u64 = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| {
            let line = text.lines().next()?.to_owned();
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            Some([0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum())
        })
        .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS)
}

/// What one deployment size measured.
#[derive(Debug, Clone)]
struct Size {
    nodes: usize,
    /// The deployment's scrape interval ([`scrape_interval`]).
    scrape_interval: u64,
    fresh: Run,
    noop: Run,
    add: Run,
    status: Run,
    /// When the fresh `up`'s Prometheus started and first scraped each
    /// target; `None` when it could not be read.
    startup: Option<Startup>,
    /// CPU of every process on the hosts per second of wall time while no
    /// PromGuard command runs (Prometheus scraping, the exporters,
    /// wireguard-go), in cores.
    idle_load: f64,
    /// Resident memory of every process on the hosts after the fresh `up`.
    hosts_rss_kib: u64,
    /// What the no-op cost the hosts' sshd and what it ran
    /// ([`noop_host_cpu`]).
    noop_session_cpu: Duration,
    /// The median no-op at [`DEFAULT_INTERVAL`].
    noop_default: Run,
}

/// promguard.toml's default scrape interval, in seconds.
const DEFAULT_INTERVAL: u64 = 30;

/// A size that did not run, and why.
#[derive(Debug, Clone)]
struct Failed {
    nodes: usize,
    reason: String,
}

/// Prometheus' start-up in a fresh `up`, in seconds after the run started
/// (the same clock as its sample timestamps: this machine's).
#[derive(Debug, Clone, Copy)]
struct Startup {
    /// The monitor's Prometheus process started (from `/proc`).
    process_start: f64,
    /// The first sample of `up` = 1 of the target scraped first.
    first_scraped: f64,
    /// The first sample of `up` = 1 of the target scraped last: from here
    /// on every target had been scraped.
    all_scraped: f64,
}

/// The scrape interval of a deployment of `nodes` nodes, in seconds: 1 s
/// up to 50 nodes, then one second more per 50 nodes. A scrape costs the
/// hosts about 16 ms of CPU here (the exporter, wireguard-go at both ends,
/// Prometheus), so at 1 s the idle deployment of 50 nodes already keeps
/// 0.8 of the 2 cores busy, and 200 would need more than both; at 4 s it
/// needs what 50 do at 1 s.
fn scrape_interval(nodes: usize) -> u64 {
    nodes.div_ceil(50).max(1) as u64
}

const CLOCK_TICKS: f64 = 100.0;

/// The processes in the PID namespace of `init`, with the fields of their
/// `/proc/<pid>/stat` after the command name (field 3, the state, first).
fn namespace_processes(init: u32) -> Vec<(u32, Vec<String>)> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{init}/ns/pid")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
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
        let rest = stat.rsplit(") ").next().unwrap_or_default();
        found.push((pid, rest.split_whitespace().map(str::to_owned).collect()));
    }
    found
}

/// Field `n` (1-based, as in proc(5)) of a process's stat fields from
/// [`namespace_processes`].
fn stat_field(fields: &[String], n: usize) -> u64 {
    fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0)
}

/// CPU time (user + system, including reaped children) of every process in
/// the PID namespace of `init`.
fn namespace_cpu(init: u32) -> Duration {
    let ticks: u64 = namespace_processes(init)
        .iter()
        .map(|(_, fields)| (14..=17).map(|n| stat_field(fields, n)).sum::<u64>())
        .sum();
    Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS)
}

/// Resident memory of every process in the PID namespace of `init`.
fn namespace_rss_kib(init: u32) -> u64 {
    namespace_processes(init)
        .iter()
        .filter_map(|(pid, _)| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// CPU time of PID 1 of every host and of the children it reaped: on a
/// namespace host, sshd and every session, command and script it ran.
fn sessions_cpu(provider: &promguard_cloud::local::LocalProvider, names: &[String]) -> Duration {
    let ticks: u64 = host_inits(provider, names)
        .into_iter()
        .filter_map(|init| std::fs::read_to_string(format!("/proc/{init}/stat")).ok())
        .map(|stat| {
            let rest = stat.rsplit(") ").next().unwrap_or_default();
            let fields: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
            (14..=17).map(|n| stat_field(&fields, n)).sum::<u64>()
        })
        .sum();
    Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS)
}

/// Whether root may create the inotify instances `nodes` nodes need:
/// every host's wireguard-go watches its control socket with one (and the
/// monitor's Prometheus its targets files), and `fs.inotify.max_user_instances`
/// limits them per user.
fn inotify_for(nodes: usize) -> Result<(), String> {
    let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(usize::MAX);
    let mut used = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let root = std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next())
                == Some("0")
        });
        if !root {
            continue;
        }
        used += std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify")
            })
            .count();
    }
    // The hosts, the node added later and the monitor's Prometheus.
    let need = nodes + 3;
    if used + need > limit {
        return Err(format!(
            "its {} hosts' wireguard-go each need an inotify instance, and root may have {limit} \
             (fs.inotify.max_user_instances) of which {used} are in use, so the hosts past about \
             the {}th would fail at `wg-quick up`; raising the limit (sysctl \
             fs.inotify.max_user_instances=1024) lets it run",
            nodes + 2,
            limit.saturating_sub(used + 1),
        ));
    }
    Ok(())
}

fn host_inits(provider: &promguard_cloud::local::LocalProvider, names: &[String]) -> Vec<u32> {
    names
        .iter()
        .filter_map(|n| promguard_core::HostName::new(n).ok())
        .filter_map(|n| provider.host_init_pid(&n))
        .collect()
}

fn hosts_cpu(provider: &promguard_cloud::local::LocalProvider, names: &[String]) -> Duration {
    host_inits(provider, names)
        .into_iter()
        .map(namespace_cpu)
        .sum()
}

/// What the idle deployment's hosts cost: cores busy on average over a
/// few seconds in which no PromGuard command runs.
fn idle_load(provider: &promguard_cloud::local::LocalProvider, names: &[String]) -> f64 {
    const WINDOW: Duration = Duration::from_secs(5);
    let before = hosts_cpu(provider, names);
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    let cpu = hosts_cpu(provider, names).saturating_sub(before);
    cpu.as_secs_f64() / started.elapsed().as_secs_f64()
}

/// `MemAvailable` of this machine.
fn mem_available_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Seconds since the Unix epoch, now.
fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// When the monitor's Prometheus process started, in seconds since the
/// epoch: its start time in `/proc/<pid>/stat` counts clock ticks since
/// boot, as `/proc/uptime` counts seconds.
fn prometheus_start(monitor_init: u32) -> Option<f64> {
    let start_ticks = namespace_processes(monitor_init)
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "prometheus")
        })
        .map(|(_, fields)| stat_field(&fields, 22))
        .min()?;
    let now = epoch_now();
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(now - (uptime - start_ticks as f64 / CLOCK_TICKS))
}

/// `GET path` from the monitor's Prometheus on 127.0.0.1:9090, from a
/// thread inside the monitor's network namespace (no PromGuard command,
/// so that only Prometheus' times are read).
fn prometheus_get(provider: &promguard_cloud::local::LocalProvider, path: &str) -> Result<Value> {
    use std::io::{Read, Write};
    let monitor = promguard_core::HostName::new(MONITOR)?;
    let netns = provider
        .host_netns(&monitor)
        .context("the monitor has no network namespace")?;
    let ns = std::fs::File::open(promguard_cloud::local::netns_path(&netns))?;
    let response = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Vec<u8>> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9090));
                let mut stream =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                write!(
                    stream,
                    "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:9090\r\n\r\n"
                )?;
                let mut response = Vec::new();
                stream.read_to_end(&mut response)?;
                Ok(response)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in the monitor's namespace panicked"))?
    })?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("Prometheus' response has no end of headers")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("Prometheus answered {}", head.lines().next().unwrap_or(""));
    }
    serde_json::from_str(body).context("Prometheus' response is not JSON")
}

/// Prometheus' start-up in the fresh `up` that began at `run_start`
/// (seconds since the epoch): its process start, then the first
/// successful scrape of each target, read from the raw samples of `up`.
fn prometheus_startup(
    provider: &promguard_cloud::local::LocalProvider,
    run_start: f64,
) -> Result<Startup> {
    let monitor = promguard_core::HostName::new(MONITOR)?;
    let init = provider
        .host_init_pid(&monitor)
        .context("the monitor is not running")?;
    let process_start = prometheus_start(init).context("no Prometheus process on the monitor")?;
    let window = (epoch_now() - process_start).ceil() as u64 + 5;
    let body = prometheus_get(provider, &format!("/api/v1/query?query=up%5B{window}s%5D"))?;
    let series = body["data"]["result"]
        .as_array()
        .context("the query for `up` returned no series")?;
    let mut firsts = Vec::new();
    for s in series {
        let first = s["values"].as_array().and_then(|values| {
            values
                .iter()
                .find_map(|v| (v[1] == "1").then(|| v[0].as_f64()).flatten())
        });
        firsts.push(first.context("a target has not been scraped successfully")?);
    }
    let min = firsts.iter().copied().fold(f64::INFINITY, f64::min);
    let max = firsts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if firsts.is_empty() {
        bail!("Prometheus has no `up` samples yet");
    }
    Ok(Startup {
        process_start: process_start - run_start,
        first_scraped: min - run_start,
        all_scraped: max - run_start,
    })
}

/// No-op runs per size; the median is reported.
const NOOP_RUNS: usize = 3;

/// The monitor's name in the bench's deployments.
const MONITOR: &str = "promguard-monitor-1";

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
    let started_epoch = epoch_now();
    let machine_before = machine_cpu();
    let started = Instant::now();
    let out = cmd.output()?;
    let wall = started.elapsed();
    let machine = machine_cpu().saturating_sub(machine_before);
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
        started: started_epoch,
        wall,
        cli_cpu: Duration::from_secs_f64(usage["cpu_s"].as_f64().unwrap_or(0.0)),
        cli_max_rss_kib: usage["max_rss_kib"].as_u64().unwrap_or(0),
        host_cpu: Duration::ZERO,
        machine_cpu: machine,
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

fn write_config(path: &Path, name: &str, nodes: usize, scrape_interval: u64) -> Result<()> {
    std::fs::write(
        path,
        format!(
            "[deployment]\nname = \"{name}\"\nprovider = \"local\"\nsubnet = \"10.0.0.0/22\"\n\n[prometheus]\nscrape_interval = \"{scrape_interval}s\"\n\n[nodes]\ncount = {nodes}\n"
        ),
    )?;
    Ok(())
}

fn bench_size(bin: &Path, nodes: usize) -> Result<Size> {
    let name = format!("bench{nodes}x{}", std::process::id() % 10000);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("promguard.toml");
    let interval = scrape_interval(nodes);
    let provider = promguard_cloud::local::LocalProvider::new(
        promguard_core::DeploymentName::new(&name)?,
        promguard_cloud::local::LocalOptions::default(),
    );
    let host_names = |n: usize| -> Vec<String> {
        std::iter::once(MONITOR.to_owned())
            .chain((1..=n).map(|i| format!("promguard-node-{i}")))
            .collect()
    };
    let hosts = host_names(nodes);
    let result = (|| -> Result<Size> {
        write_config(&config, &name, nodes, interval)?;
        let report = dir.path().join("report.json");
        let mut fresh = measure(bin, &config, &["up", "--yes"], Some(&report))?;
        // Read at once, while Prometheus still holds every first sample.
        let startup = prometheus_startup(&provider, fresh.started)
            .map_err(|e| eprintln!("bench: {nodes} nodes: no Prometheus start-up figures: {e:#}"))
            .ok();
        fresh.host_cpu = hosts_cpu(&provider, &hosts);
        let hosts_rss_kib = host_inits(&provider, &hosts)
            .into_iter()
            .map(namespace_rss_kib)
            .sum();
        let idle = idle_load(&provider, &hosts);
        // The median of three no-op runs: one takes a second or two, and
        // one run alone varies by a third with what else the cores do.
        let mut noops = Vec::new();
        for _ in 0..NOOP_RUNS {
            let before = hosts_cpu(&provider, &hosts);
            let sessions_before = sessions_cpu(&provider, &hosts);
            let mut noop = measure(bin, &config, &["up", "--yes"], Some(&report))?;
            noop.host_cpu = hosts_cpu(&provider, &hosts).saturating_sub(before);
            let sessions = sessions_cpu(&provider, &hosts).saturating_sub(sessions_before);
            noops.push((noop, sessions));
        }
        noops.sort_by_key(|(run, _)| run.wall);
        let (noop, noop_session_cpu) = noops.swap_remove(NOOP_RUNS / 2);
        let before = hosts_cpu(&provider, &hosts);
        let mut status = measure(bin, &config, &["status", "--json"], None)?;
        status.host_cpu = hosts_cpu(&provider, &hosts).saturating_sub(before);
        write_config(&config, &name, nodes + 1, interval)?;
        let before = hosts_cpu(&provider, &hosts);
        let mut add = measure(bin, &config, &["up", "--yes"], Some(&report))?;
        add.host_cpu = hosts_cpu(&provider, &host_names(nodes + 1)).saturating_sub(before);
        // Back to `nodes`, scraped at the config's default interval: the
        // no-op as a user's deployment sees it, where the hosts are not
        // also busy scraping every node every second on the same two cores.
        write_config(&config, &name, nodes, DEFAULT_INTERVAL)?;
        measure(bin, &config, &["up", "--yes"], None)?;
        let mut at_default = Vec::new();
        for _ in 0..NOOP_RUNS {
            at_default.push(measure(bin, &config, &["up", "--yes"], None)?);
        }
        at_default.sort_by_key(|run| run.wall);
        let noop_default = at_default.swap_remove(NOOP_RUNS / 2);
        Ok(Size {
            nodes,
            scrape_interval: interval,
            fresh,
            noop,
            add,
            status,
            startup,
            idle_load: idle,
            hosts_rss_kib,
            noop_session_cpu,
            noop_default,
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

/// Whether this machine has the memory for `nodes` nodes, judged by what
/// the hosts of the largest size run so far took per host (64 MiB each
/// before any ran), with a quarter to spare.
fn memory_for(nodes: usize, done: &[Size]) -> Result<(), String> {
    let per_host_kib = done
        .iter()
        .max_by_key(|s| s.nodes)
        .map(|s| s.hosts_rss_kib / (s.nodes as u64 + 1))
        .unwrap_or(64 * 1024);
    let need = per_host_kib * (nodes as u64 + 2) * 5 / 4;
    match mem_available_kib() {
        Some(available) if available < need => Err(format!(
            "it needs about {:.1} GiB for its hosts ({:.0} MiB each, as measured at the largest size run), \
             and {:.1} GiB are available",
            need as f64 / 1048576.0,
            per_host_kib as f64 / 1024.0,
            available as f64 / 1048576.0
        )),
        _ => Ok(()),
    }
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
        "| nodes | fresh `up` incl. creation | of which: create / converge / verify | fresh `up` without creation | no-op `up` | no-op `up`, default 30 s scrape | add one node | `status` | round trips per host, no-op (node / monitor) | round trips per host, fresh | SSH connections per host per run | CLI peak RSS | CPU per host, fresh `up` (CLI + hosts) |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for s in sizes {
        let hosts = (s.nodes + 1) as f64;
        let create = phase(&s.fresh, "create");
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {:.2} / {:.2} / {:.2} s | {:.2} s | {:.3} s | {:.3} s | {:.2} s | {:.3} s | {} / {} | {} | 1 | {:.1} MiB | {:.3} CPU-s ({:.3} + {:.3}) |",
            s.nodes,
            s.fresh.wall.as_secs_f64(),
            create,
            phase(&s.fresh, "converge"),
            phase(&s.fresh, "verify"),
            s.fresh.wall.as_secs_f64() - create,
            s.noop.wall.as_secs_f64(),
            s.noop_default.wall.as_secs_f64(),
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

/// Seconds per host of `value` at each size.
fn per_host(value: f64, s: &Size) -> f64 {
    value / (s.nodes + 1) as f64
}

/// What a no-op `up` cost the hosts: the CPU of their sshd and everything
/// it ran and reaped (sessions, the facts script), which on namespace
/// hosts is PID 1 and its children; the daemons it started long ago are
/// not part of it.
fn noop_host_cpu(s: &Size) -> f64 {
    s.noop_session_cpu.as_secs_f64()
}

/// One figure of a size, as a number.
type Figure = fn(&Size) -> f64;

/// Per-host figures of every size, and what each host added between one
/// size and the next.
fn growth(sizes: &[Size]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| nodes | scrape interval | idle deployment's CPU (cores) | other load on the machine during the no-op (cores) | hosts' memory per host | fresh converge per host | no-op `up` per host | CPU per host, no-op (CLI + sshd and what it ran) | `status` per host |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in sizes {
        let cpu = s.noop.cli_cpu.as_secs_f64() + noop_host_cpu(s);
        let _ = writeln!(
            out,
            "| {} | {} s | {:.2} | {:.2} | {:.1} MiB | {:.1} ms | {:.1} ms | {:.1} ms ({:.1} + {:.1}) | {:.1} ms |",
            s.nodes,
            s.scrape_interval,
            s.idle_load,
            s.noop.other_load(),
            per_host(s.hosts_rss_kib as f64, s) / 1024.0,
            per_host(phase(&s.fresh, "converge"), s) * 1000.0,
            per_host(s.noop.wall.as_secs_f64(), s) * 1000.0,
            per_host(cpu, s) * 1000.0,
            per_host(s.noop.cli_cpu.as_secs_f64(), s) * 1000.0,
            per_host(noop_host_cpu(s), s) * 1000.0,
            per_host(s.status.wall.as_secs_f64(), s) * 1000.0,
        );
    }
    if sizes.len() < 2 {
        return out;
    }
    let figures: [(&str, Figure); 7] = [
        ("fresh `up` without creation", |s| {
            s.fresh.wall.as_secs_f64() - phase(&s.fresh, "create")
        }),
        ("its converge", |s| phase(&s.fresh, "converge")),
        ("no-op `up`", |s| s.noop.wall.as_secs_f64()),
        ("CPU of the no-op (CLI + sshd and what it ran)", |s| {
            s.noop.cli_cpu.as_secs_f64() + noop_host_cpu(s)
        }),
        ("of it the CLI's", |s| s.noop.cli_cpu.as_secs_f64()),
        ("`status`", |s| s.status.wall.as_secs_f64()),
        ("add one node", |s| s.add.wall.as_secs_f64()),
    ];
    let _ = write!(
        out,
        "\nWhat each host added between one size and the next: the difference of a figure divided by the difference in hosts (nodes + 1). A figure that grows linearly adds the same in every row.\n\n| between | {} |\n|---|{}\n",
        figures.map(|(label, _)| label).join(" | "),
        "---:|".repeat(figures.len()),
    );
    for pair in sizes.windows(2) {
        let (small, large) = (&pair[0], &pair[1]);
        let hosts = (large.nodes - small.nodes) as f64;
        let cells: Vec<String> = figures
            .iter()
            .map(|(_, value)| format!("{:.1} ms", (value(large) - value(small)) / hosts * 1000.0))
            .collect();
        let _ = writeln!(
            out,
            "| {} → {} nodes | {} |",
            small.nodes,
            large.nodes,
            cells.join(" | ")
        );
    }
    out
}

/// Prometheus' start-up apart from PromGuard's work, for every fresh `up`.
fn startup_table(sizes: &[Size]) -> String {
    let mut out = String::from(
        "| nodes | fresh `up` | converged (plan + create + converge) | Prometheus started | its start → first / every target scraped | waiting for Prometheus after converge | last first scrape → `up` returned | fresh `up` less the wait for Prometheus |\n|---:|---:|---:|---:|---|---:|---:|---:|\n",
    );
    for s in sizes {
        let wall = s.fresh.wall.as_secs_f64();
        let converged =
            phase(&s.fresh, "plan") + phase(&s.fresh, "create") + phase(&s.fresh, "converge");
        let Some(p) = s.startup else {
            let _ = writeln!(
                out,
                "| {} | {wall:.2} s | {converged:.2} s | (not read) | | | | |",
                s.nodes
            );
            continue;
        };
        let wait = (p.all_scraped - converged).max(0.0);
        let _ = writeln!(
            out,
            "| {} | {wall:.2} s | {converged:.2} s | {:.2} s | {:.2} / {:.2} s | {wait:.2} s | {:.2} s | {:.2} s |",
            s.nodes,
            p.process_start,
            p.first_scraped - p.process_start,
            p.all_scraped - p.process_start,
            wall - p.all_scraped,
            wall - wait,
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
    let bin = crate::cli(root)?;
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
    let bin = crate::cli(root)?;
    let mut results: Vec<Size> = Vec::new();
    let mut failed: Vec<Failed> = Vec::new();
    for &n in sizes {
        if let Err(reason) = memory_for(n, &results).and_then(|()| inotify_for(n)) {
            eprintln!("bench: {n} nodes skipped: {reason}");
            failed.push(Failed {
                nodes: n,
                reason: format!("skipped: {reason}"),
            });
            continue;
        }
        eprintln!(
            "bench: {n} nodes (scrape interval {} s)",
            scrape_interval(n)
        );
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
                eprintln!(
                    "bench: {n} nodes: idle deployment {:.2} cores, other load during fresh/no-op/status/add {:.2}/{:.2}/{:.2}/{:.2} cores, hosts {:.0} MiB, Prometheus start-up {:?}",
                    s.idle_load,
                    s.fresh.other_load(),
                    s.noop.other_load(),
                    s.status.other_load(),
                    s.add.other_load(),
                    s.hosts_rss_kib as f64 / 1024.0,
                    s.startup
                );
                results.push(s);
            }
            Err(e) => {
                eprintln!("bench: {n} nodes failed: {e:#}");
                let reason = format!("{e:#}");
                let reason: String = reason
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect();
                failed.push(Failed {
                    nodes: n,
                    reason: format!("failed: {reason}"),
                });
            }
        }
    }
    let deployments = table(&results);
    println!("{deployments}");
    let growth = growth(&results);
    println!("{growth}");
    let startup = startup_table(&results);
    println!("{startup}");
    let not_run: String = failed
        .iter()
        .map(|f| format!("- *{} nodes did not run*: {}\n", f.nodes, f.reason))
        .collect();
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
    let list: Vec<String> = sizes.iter().map(ToString::to_string).collect();
    let text = format!(
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench --sizes {list}` on this project's 2-core machine;\n\
         figures are measurements, not limits. Local provider (namespace hosts), debug\n\
         build of the CLI, scrape interval 1 s up to 50 nodes and one second more per 50\n\
         nodes above (see *Growth*).\n\n\
         ## Whole deployments\n\n\
         {deployments}\n{not_run}{sep}\
         - *fresh `up`*: creating the hosts, converging them and waiting until Prometheus\n  \
         reports every target up. *Without creation* subtracts the create phase.\n\
         - *no-op `up`*: the median of three runs, and every no-op figure below is that\n  \
         run's. *At the default 30 s scrape*: the same deployment after an `up` that set\n  \
         promguard.toml's default interval, so that the hosts' scraping (which shares\n  \
         these two cores with the CLI and every host) is what a user's would be.\n\
         - *round trips*: SSH commands (exec/upload/HTTP through the tunnel) per host;\n  \
         the monitor's include the Prometheus API polls of verification.\n\
         - *CPU per host*: the CLI's user+system time plus every process on the hosts\n  \
         (sshd sessions, wg, nft, wireguard-go, node_exporter, Prometheus), divided\n  \
         by the number of hosts.\n\n\
         ## Growth with the number of hosts\n\n\
         {growth}\n\
         - *scrape interval*: a scrape costs the hosts about 16 ms of CPU (the exporter,\n  \
         wireguard-go at both ends, Prometheus), so scraping an idle deployment of 50\n  \
         nodes every second keeps about 0.8 of the 2 cores busy, and 200 nodes at 1 s\n  \
         would need more than both cores (scrapes would time out). Above 50 nodes the\n  \
         interval grows with the nodes, so that this background stays about the same\n  \
         at every size.\n\
         - *idle deployment's CPU*: every process on the hosts (Prometheus, the exporters,\n  \
         wireguard-go) over 5 s in which no PromGuard command runs. Every figure above\n  \
         shares the 2 cores with it, so the no-op `up`'s wall time is bounded by what it\n  \
         leaves. *Other load*: the machine's CPU during the no-op less the CLI's and the\n  \
         hosts', that is work of other programs on the machine; figures taken while it\n  \
         is high are slower than the code.\n\
         - *CPU per host, no-op*: the CLI's user+system time, and the CPU of each host's\n  \
         sshd and everything it ran during the run (its PID 1 and the children it\n  \
         reaped: the SSH session, the facts script and its commands), per host.\n\
         - *hosts' memory*: the resident memory of every process on the hosts after the\n  \
         fresh `up`, per host (shared pages counted in each process). A size runs only\n  \
         if the machine's available memory holds its hosts at the largest measured\n  \
         size's memory per host, with a quarter to spare.\n\n\
         ## A fresh `up`: PromGuard's work and Prometheus' start-up\n\n\
         {startup}\n\
         - Times in seconds after the fresh `up` started. *Prometheus started*: the start\n  \
         time of the monitor's Prometheus process (`/proc/<pid>/stat`), which the\n  \
         monitor's converge starts. *First / every target scraped*: the earliest and the\n  \
         latest of each target's first sample of `up` = 1, read from the monitor's\n  \
         Prometheus (`/api/v1/query?query=up[…]`, from inside the monitor's network\n  \
         namespace, so no PromGuard command is involved) right after the `up`.\n\
         - Prometheus' discovery manager hands file_sd targets to the scrape manager on a\n  \
         5 s tick, and the scrape manager applies them on a 5 s tick of its own; the\n  \
         first scrape comes up to one scrape interval later. That start-up is\n  \
         Prometheus' own: *waiting for Prometheus after converge* is the part of it\n  \
         that the `up` spends after PromGuard's last host converged, *last first scrape\n  \
         → `up` returned* the verification's polling and the CLI's exit, and *fresh `up`\n  \
         less the wait for Prometheus* what remains: PromGuard's own work.\n\n\
         ## Planning and rendering\n\n\
         {crit}\n<!-- end of generated figures -->{kept}",
        list = list.join(","),
        sep = if not_run.is_empty() { "" } else { "\n" },
    );
    std::fs::write(&doc, text)?;
    eprintln!("bench: wrote {}", doc.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_interval_is_the_configs_default() {
        let text = "[deployment]\nname = \"d\"\nprovider = \"local\"\n\n[nodes]\ncount = 1\n";
        let config =
            promguard_core::config::Config::from_toml(text, Path::new("promguard.toml")).unwrap();
        assert_eq!(
            config.scrape_interval,
            Duration::from_secs(DEFAULT_INTERVAL)
        );
    }
}
