//! The systemd end-to-end scenario: the local scenario on systemd hosts
//! (`[local] hosts = "systemd"`), which boot Debian 12 with their own
//! systemd and install PromGuard's packages with apt, plus what only such
//! hosts have: apt's history, unit files checked by `systemd-analyze
//! verify`, reboots that come back with no PromGuard run, and apt steps cut
//! off by signals.
//!
//! It tears its deployment down also when a check fails, and checks that
//! nothing (namespace, process, mount, overlay) is left.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_core::config::LocalHostKind;
use promguard_core::HostName;

use crate::e2e::{check_targets, Deployment};

/// The scrape interval of this scenario: long enough that Prometheus' own
/// start-up after a reboot fits in two of them. Its discovery and scrape
/// managers wait up to 5 s before the first scrape, and each target is then
/// scraped at its own offset within the interval: up to 5 s + one interval.
const SCRAPE_SECONDS: u64 = 10;

/// The monitor of the scenario.
const MONITOR: &str = "promguard-monitor-1";

/// Runs the scenario.
pub fn systemd(root: &Path) -> Result<()> {
    let bin = crate::cli(root)?;
    let name = format!("sd{}", std::process::id() % 100000);
    let mut d = Deployment::local(bin, name.clone())?;
    d.scrape_interval = format!("{SCRAPE_SECONDS}s");
    d.extra_config = "\n[local]\nhosts = \"systemd\"\n".to_owned();
    let provider = LocalProvider::new(
        promguard_core::DeploymentName::new(&name)?,
        LocalOptions {
            hosts: LocalHostKind::Systemd,
            ..LocalOptions::default()
        },
    );

    // 1-6: the local scenario, on systemd hosts.
    let (fresh, noop) = crate::e2e::scenario(&d, Some(&provider))?;
    let hosts = [
        MONITOR,
        "promguard-node-1",
        "promguard-node-3",
        "promguard-node-4",
    ];

    // 7. apt installed the packages; units pass systemd-analyze verify.
    for host in hosts {
        let history = d.ssh_ok(host, "cat /var/log/apt/history.log")?;
        ensure!(
            history.contains("prometheus-node-exporter")
                && history.contains("wireguard-tools")
                && history.contains("nftables"),
            "apt's history on {host} does not show PromGuard's packages:\n{history}"
        );
        if host == MONITOR {
            ensure!(
                history.contains("prometheus:amd64"),
                "apt's history on the monitor does not show prometheus:\n{history}"
            );
        }
        let mut units =
            "promguard-firewall.service prometheus-node-exporter.service wg-quick@wg0.service"
                .to_owned();
        if host == MONITOR {
            units.push_str(" prometheus.service");
        }
        let out = d.ssh(
            host,
            &format!("systemd-analyze verify --man=no {units} 2>&1"),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.trim().is_empty(),
            "systemd-analyze verify {units} on {host} ({}):\n{text}",
            out.status
        );
        check_boot(&d, &provider, host, "after up")?;
    }
    eprintln!("e2e-systemd: 7. apt installed every package; every unit passes systemd-analyze verify; nothing failed");

    // 8. Every host reboots and comes back with no PromGuard run; right
    // after boot the firewall is already in force.
    let (booted, all_up) = reboot_all(
        &d,
        &provider,
        hosts.len(),
        Duration::from_secs(2 * SCRAPE_SECONDS),
    )?;
    crate::e2e::outsider_checks(&d, &provider, "after-reboot")?;
    check_targets(&d.status()?, &hosts)?;
    for host in hosts {
        firewall_before_network(&d, host)?;
    }
    for host in hosts {
        check_boot(&d, &provider, host, "after the reboot")?;
    }
    // The WireGuard metrics collector came back with every host.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fresh = prometheus_value(
            &provider,
            "count(time() - promguard_wireguard_collector_last_run_timestamp_seconds < 30)",
        )?;
        if fresh == Some(hosts.len() as f64) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "after the reboot, {fresh:?} of {} hosts' WireGuard metrics are fresh",
            hosts.len()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "e2e-systemd: 8. every host rebooted ({booted:.1?} until all were back); every target up again {:.1?} later with no PromGuard run; the firewall held right after boot",
        all_up - booted
    );

    // 9. An apt step cut off by SIGTERM, then by SIGKILL, leaves no
    // policy-rc.d and no masked unit; the next up finishes the host.
    let mut nodes = vec!["promguard-node-1", "promguard-node-3", "promguard-node-4"];
    for (signal, node) in [
        (Signal::SIGTERM, "promguard-node-5"),
        (Signal::SIGKILL, "promguard-node-6"),
    ] {
        nodes.push(node);
        d.write_config(&nodes)?;
        let mut run = d.start(&["up", "--yes", "-v"])?;
        run.wait_for(&format!("{node}: converging"), Duration::from_secs(180))?;
        wait_for_apt(&d, node)?;
        run.signal(signal)?;
        let (status, output) = run.finish(Duration::from_secs(120))?;
        ensure!(
            !status.success(),
            "up cut off by {signal} succeeded:\n{output}"
        );
        let left = d.ssh_ok(
            node,
            "ls /usr/sbin/policy-rc.d 2>/dev/null; ls /run/systemd/system/*.service 2>/dev/null | while read -r u; do [ \"$(readlink \"$u\")\" = /dev/null ] && echo \"masked $u\"; done; true",
        )?;
        // The install may still finish on the host; a mask it left in
        // /run is lifted by the next up at the latest.
        ensure!(
            !left.contains("policy-rc.d"),
            "after {signal}, {node} has /usr/sbin/policy-rc.d"
        );
        d.ok(&["up", "--yes"])?;
        let left = d.ssh_ok(
            node,
            "ls /usr/sbin/policy-rc.d 2>/dev/null; systemctl is-enabled prometheus-node-exporter.service; dpkg --audit",
        )?;
        ensure!(
            left.trim() == "enabled",
            "after {signal} and another up, {node} has: {left}"
        );
        let mut expected = vec![MONITOR];
        expected.extend(&nodes);
        check_targets(&d.status()?, &expected)?;
        check_boot(
            &d,
            &provider,
            node,
            &format!("after {signal} and another up"),
        )?;
    }
    eprintln!("e2e-systemd: 9. apt cut off by SIGTERM and SIGKILL left no policy-rc.d; the next up finished each host");

    // 10. Down of a node: nothing fails on the monitor.
    nodes.retain(|n| *n != "promguard-node-5");
    d.write_config(&nodes)?;
    d.ok(&["up", "--yes"])?;
    check_boot(&d, &provider, MONITOR, "after a node was removed")?;
    eprintln!("e2e-systemd: 10. a node was removed; nothing failed on the monitor");

    // 11. Down leaves nothing behind.
    let hosts: Vec<&str> = std::iter::once(MONITOR)
        .chain(nodes.iter().copied())
        .collect();
    down_leaves_nothing(&d, &provider, &hosts)?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !mounts.contains(&format!("/local/{name}/")),
        "mounts of the deployment remain:\n{mounts}"
    );
    eprintln!("e2e-systemd: 11. down left no namespace, process, mount, overlay or directory");
    eprintln!("e2e-systemd: systemd scenario passed (fresh up {fresh:.2?}, no-op up {noop:.2?})");
    Ok(())
}

/// Runs `down` and checks that no process of `hosts` (their supervisors
/// and inits) nor the deployment's namespaces or directory remain.
pub(crate) fn down_leaves_nothing(
    d: &Deployment,
    provider: &LocalProvider,
    hosts: &[&str],
) -> Result<()> {
    let mut pids = Vec::new();
    for host in hosts {
        let host = HostName::new(host)?;
        pids.extend(provider.host_supervisor_pid(&host));
        pids.extend(provider.host_init_pid(&host));
    }
    ensure!(!pids.is_empty(), "the provider knows no host process");
    d.ok(&["down", "--yes"])?;
    crate::e2e::check_gone(&d.name, &pids)
}

/// Reboots every host of `d` at once and waits until each has booted
/// again (`running`), then until the monitor's Prometheus reports
/// `targets` targets, all up, at most `up_within` after the last host was
/// back. Returns the times from the reboot until all were booted and
/// until every target was up.
pub(crate) fn reboot_all(
    d: &Deployment,
    provider: &LocalProvider,
    targets: usize,
    up_within: Duration,
) -> Result<(Duration, Duration)> {
    let state = d.typed_state("before the reboot")?;
    let hosts: Vec<String> = state.hosts.keys().map(|h| h.to_string()).collect();
    let before: Vec<(String, u32)> = hosts
        .iter()
        .map(|h| Ok((h.clone(), container_pid(provider, h)?)))
        .collect::<Result<_>>()?;
    let rebooted = Instant::now();
    for (_, pid) in &before {
        // Asked from inside each host, all at once; its systemd goes down
        // and nspawn boots the host again.
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-a", "systemctl", "reboot"])
            .status()?;
    }
    for (host, old) in &before {
        wait_for_new_boot(d, provider, host, *old)?;
    }
    let back = Instant::now();
    // Asked of the monitor's Prometheus directly (inside the monitor), so
    // that the time measured is Prometheus' and not that of a status run.
    let deadline = back + up_within;
    loop {
        let health = target_health(provider)?;
        // One target per host, and Prometheus' own.
        if health.len() == targets + 1 && health.iter().all(|(_, h)| h == "up") {
            return Ok((back - rebooted, rebooted.elapsed()));
        }
        if Instant::now() >= deadline {
            bail!("targets not all up within {up_within:?} after the hosts were back: {health:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each target's scrape URL and health, as the monitor's Prometheus says
/// (`/api/v1/targets`, asked with curl inside the monitor).
/// `curl -fsS ARGS` of Prometheus' API inside the monitor: the JSON
/// answer, `None` while Prometheus does not answer (it is starting).
fn monitor_api(provider: &LocalProvider, args: &[&str]) -> Result<Option<serde_json::Value>> {
    let pid = container_pid(provider, MONITOR)?;
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-a",
            "curl",
            "-fsS",
            "--max-time",
            "2",
        ])
        .args(args)
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let body = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("Prometheus' answer to {args:?} is not JSON"))?;
    Ok(Some(body))
}

fn target_health(provider: &LocalProvider) -> Result<Vec<(String, String)>> {
    let Some(body) = monitor_api(
        provider,
        &["http://127.0.0.1:9090/api/v1/targets?state=active"],
    )?
    else {
        return Ok(Vec::new());
    };
    Ok(body["data"]["activeTargets"]
        .as_array()
        .context("no activeTargets in Prometheus' answer")?
        .iter()
        .map(|t| {
            (
                t["scrapeUrl"].as_str().unwrap_or_default().to_owned(),
                t["health"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// The value of an instant query `q` in the monitor's Prometheus (asked
/// inside the monitor); `None` while it has no answer or an empty one.
fn prometheus_value(provider: &LocalProvider, q: &str) -> Result<Option<f64>> {
    let pid = container_pid(provider, MONITOR)?;
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-a",
            "curl",
            "-fsS",
            "--max-time",
            "2",
        ])
        .args([
            "-G",
            "http://127.0.0.1:9090/api/v1/query",
            "--data-urlencode",
        ])
        .arg(format!("query={q}"))
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let body: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("Prometheus' /api/v1/query is not JSON")?;
    Ok(body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok()))
}

/// In this boot, the firewall unit finished before network-pre.target was
/// reached, so no interface came up without it.
fn firewall_before_network(d: &Deployment, host: &str) -> Result<()> {
    let out = d.ssh_ok(
        host,
        "systemctl show -P ActiveEnterTimestampMonotonic promguard-firewall.service; systemctl show -P ActiveEnterTimestampMonotonic network-pre.target",
    )?;
    let times: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    match times.as_slice() {
        [firewall, network] if *firewall > 0 && firewall <= network => Ok(()),
        _ => bail!(
            "on {host}, the firewall was not in force before network-pre.target in this boot (monotonic activation times: {out:?})"
        ),
    }
}

/// PID 1 of a host's container now.
fn container_pid(provider: &LocalProvider, host: &str) -> Result<u32> {
    provider
        .host_init_pid(&HostName::new(host)?)
        .with_context(|| format!("{host} is not running"))
}

/// Waits until `host` runs a container other than `old` and its systemd
/// says the boot is over (`running`).
fn wait_for_new_boot(d: &Deployment, provider: &LocalProvider, host: &str, old: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = provider.host_init_pid(&HostName::new(host)?);
        if let Some(pid) = now.filter(|p| *p != old) {
            let out = Command::new("nsenter")
                .args([
                    "-t",
                    &pid.to_string(),
                    "-a",
                    "systemctl",
                    "is-system-running",
                ])
                .output()?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            match state.as_str() {
                "running" => return Ok(()),
                "degraded" => {
                    let failed = d.ssh(
                        host,
                        "systemctl --failed --no-legend --plain; for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); do journalctl -b -u \"$u\" --no-pager | tail -n 15; done",
                    )?;
                    bail!(
                        "{host} booted degraded: {}",
                        String::from_utf8_lossy(&failed.stdout)
                    );
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            bail!("{host} did not boot again within 120 s of its reboot");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No failed unit, and no ordering cycle in this boot's journal or in the
/// console log (systemd reports cycles found before journald starts only
/// on the console).
pub(crate) fn check_boot(
    d: &Deployment,
    provider: &LocalProvider,
    host: &str,
    when: &str,
) -> Result<()> {
    let failed = d.ssh_ok(host, "systemctl --failed --no-legend --plain")?;
    ensure!(
        failed.trim().is_empty(),
        "{when}, units failed on {host}:\n{failed}"
    );
    let cycles = d.ssh_ok(
        host,
        "journalctl -b --no-pager | grep -i 'ordering cycle' || true",
    )?;
    ensure!(
        cycles.trim().is_empty(),
        "{when}, {host}'s journal reports an ordering cycle:\n{cycles}"
    );
    let console =
        std::fs::read_to_string(provider.host_console(&HostName::new(host)?)).unwrap_or_default();
    ensure!(
        !console.to_lowercase().contains("ordering cycle"),
        "{when}, {host}'s console reports an ordering cycle"
    );
    Ok(())
}

/// Waits until apt-get or dpkg runs on `node`.
fn wait_for_apt(d: &Deployment, node: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let out = d.ssh(node, "pgrep -x 'apt-get|dpkg|http' >/dev/null && echo busy")?;
        if String::from_utf8_lossy(&out.stdout).contains("busy") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("apt never ran on {node}")
}
