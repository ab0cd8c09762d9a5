//! Fault tests on local namespace hosts (`cargo xtask e2e --faults`): an
//! unreachable node or monitor, SIGINT/SIGTERM/SIGKILL at several points of
//! `up`, a second run while one holds the lock, dead daemons and a
//! hand-edited config, hostile input that must stay inert, secrets in every
//! output, file modes, and a lost state file.
//!
//! Each test uses its own small deployment (a monitor and two nodes,
//! scraped every 2 s) with a unique name, and a guard that runs
//! `down --discover` when it is dropped, also when a check fails.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_cloud::CloudProvider;
use promguard_core::{DeploymentName, HostName};
use serde_json::Value;

use crate::e2e::{check_targets, Deployment, Running};

const MONITOR: &str = "promguard-monitor-1";
const N1: &str = "promguard-node-1";
const N2: &str = "promguard-node-2";
const N3: &str = "promguard-node-3";
const N4: &str = "promguard-node-4";
/// Short, so an unreachable host fails a run in seconds, not minutes.
const CONNECT: &[&str] = &["--connect-timeout", "5"];

/// One group of fault tests, given the promguard binary.
type FaultTest = fn(&Path) -> Result<()>;

/// Runs every fault test.
pub fn run(root: &Path) -> Result<()> {
    let bin = crate::cli(root)?;
    let started = Instant::now();
    let tests: [(&str, FaultTest); 4] = [
        ("unreachable hosts", unreachable_hosts),
        ("interruptions", interruptions),
        ("rotation cut off", rotation_cut_off),
        ("lock, healing, injection, secrets, lost state", operations),
    ];
    // FAULTS_ONLY=<part of a name> runs only matching tests, while working
    // on one.
    let only = std::env::var("FAULTS_ONLY").unwrap_or_default();
    for (name, test) in tests.into_iter().filter(|(n, _)| n.contains(only.as_str())) {
        let t = Instant::now();
        test(&bin).with_context(|| format!("fault test `{name}` failed"))?;
        eprintln!("faults: {name}: passed in {:.1?}", t.elapsed());
    }
    eprintln!(
        "faults: every fault test passed in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// A deployment of the fault tests: `down --discover` when dropped, so
/// hosts go away even when a test removed the state file.
struct Guard {
    d: Deployment,
    provider: LocalProvider,
    runtime: tokio::runtime::Runtime,
}

impl std::ops::Deref for Guard {
    type Target = Deployment;
    fn deref(&self) -> &Deployment {
        &self.d
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let out = Command::new(&self.d.bin)
            .arg("--config")
            .arg(self.d.config_path())
            .args(["down", "--yes", "--discover"])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "faults: cleanup `down --discover` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("faults: cleanup `down --discover` failed: {e:#}"),
        }
    }
}

impl Guard {
    fn new(bin: &Path, test: &str) -> Result<Self> {
        let name = format!("f{test}{}", std::process::id() % 100000);
        Ok(Self {
            d: Deployment::local(bin.to_owned(), name.clone())?,
            provider: LocalProvider::new(DeploymentName::new(&name)?, LocalOptions::default()),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Names of the hosts the provider has, sorted.
    fn listed(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .runtime
            .block_on(self.provider.list_hosts())?
            .into_iter()
            .map(|h| h.name.to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Host namespaces of this deployment that exist on the machine (the
    /// hub's excluded): a duplicate host would show up here.
    fn namespaces(&self) -> Result<usize> {
        let out = Command::new("ip").args(["netns", "list"]).output()?;
        let prefix = format!("pg-{}-", self.d.name);
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix) && !n.ends_with("-hub"))
            .count())
    }

    /// Takes `host`'s underlay link down or up, inside the host's own
    /// network namespace (never the machine's).
    fn set_link(&self, host: &str, up: bool) -> Result<()> {
        let netns = self
            .provider
            .host_netns(&HostName::new(host)?)
            .with_context(|| format!("host {host} has no namespace"))?;
        ensure!(
            netns.starts_with(&format!("pg-{}-", self.d.name)),
            "refusing to touch namespace {netns}"
        );
        crate::run(Command::new("ip").args([
            "-n",
            &netns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]))
    }

    /// Runs promguard and expects it to fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.d.promguard(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            !out.status.success(),
            "promguard {} succeeded but should have failed:\n{}{stderr}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(stderr)
    }

    /// `up` (with the short connect timeout) that must succeed.
    fn up(&self) -> Result<String> {
        let mut args = vec!["up", "--yes"];
        args.extend(CONNECT);
        self.d.ok(&args)
    }

    /// Starts `promguard up` in the background.
    fn start_up(&self) -> Result<Running> {
        let mut args = vec!["up", "--yes"];
        args.extend(CONNECT);
        self.d.start(&args)
    }
}

/// Test 1: a node, then the monitor, unreachable during `up`.
fn unreachable_hosts(bin: &Path) -> Result<()> {
    let d = Guard::new(bin, "u")?;
    d.write_config(&[N1, N2])?;
    d.up()?;

    // Node 2 unreachable while node 3 joins.
    d.set_link(N2, false)?;
    d.write_config(&[N1, N2, N3])?;
    let mut args = vec!["up", "--yes"];
    args.extend(CONNECT);
    let err = d.fails(&args)?;
    ensure!(
        err.contains("1 of 4 host(s) failed") && err.contains(&format!("host {N2}")),
        "up does not name the unreachable node alone:\n{err}"
    );
    ensure!(
        err.contains("cannot connect to promguard-node-2"),
        "up does not give the reason:\n{err}"
    );
    let state = d.state()?;
    let key = |h: &str| {
        state["hosts"][h]["public_key"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let monitor_peers = d.ssh_ok(MONITOR, "wg show wg0 peers")?;
    for node in [N1, N2, N3] {
        ensure!(
            monitor_peers.contains(&key(node)),
            "the monitor lost or lacks {node}'s peer during a partial run:\n{monitor_peers}"
        );
    }
    let n3_peers = d.ssh_ok(N3, "wg show wg0 peers")?;
    ensure!(
        n3_peers.contains(&key(MONITOR)),
        "node 3 did not converge while node 2 was unreachable"
    );
    d.set_link(N2, true)?;
    d.up()?;
    check_targets(&d.status()?, &[MONITOR, N1, N2, N3])?;
    eprintln!("faults: 1a. an unreachable node fails only itself; it converges once back");

    // The monitor unreachable while node 4 joins.
    d.set_link(MONITOR, false)?;
    d.write_config(&[N1, N2, N3, N4])?;
    let err = d.fails(&args)?;
    ensure!(
        err.contains("1 of 5 host(s) failed") && err.contains(&format!("host {MONITOR}")),
        "up does not name the unreachable monitor alone:\n{err}"
    );
    let state = d.state()?;
    let key = |h: &str| {
        state["hosts"][h]["public_key"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    for node in [N1, N4] {
        let peers = d.ssh_ok(node, "wg show wg0 peers")?;
        ensure!(
            peers.contains(&key(MONITOR)),
            "{node} has no monitor peer after a run with the monitor unreachable"
        );
    }
    d.set_link(MONITOR, true)?;
    d.up()?;
    check_targets(&d.status()?, &[MONITOR, N1, N2, N3, N4])?;
    eprintln!("faults: 1b. an unreachable monitor fails only itself; it converges once back");
    Ok(())
}

/// Where in `up` a signal arrives.
#[derive(Clone, Copy, Debug)]
enum Point {
    /// Just after `up` asked the provider for hosts.
    Create,
    /// When a host starts converging.
    Converge,
    /// When the monitor starts verifying targets.
    Verify,
}

/// Test 2: SIGINT, SIGTERM and SIGKILL at several points of `up`.
fn interruptions(bin: &Path) -> Result<()> {
    let plans: [(Signal, &[Point]); 3] = [
        (
            Signal::SIGINT,
            &[Point::Create, Point::Converge, Point::Verify],
        ),
        (Signal::SIGTERM, &[Point::Converge, Point::Verify]),
        // SIGKILL during converge drops the SSH connection mid-script and
        // can leave wg0 half configured (down, without address); the next
        // run must repair it.
        (
            Signal::SIGKILL,
            &[Point::Create, Point::Converge, Point::Verify],
        ),
    ];
    for (signal, points) in plans {
        let d = Guard::new(bin, &format!("i{}", signal as i32))?;
        d.write_config(&[N1, N2])?;
        for &point in points {
            interrupt(&d, signal, point)?;
        }
        // The next up finishes the job without a duplicate host.
        d.up()?;
        ensure!(
            d.listed()? == [MONITOR, N1, N2] && d.namespaces()? == 3,
            "after interrupted runs the deployment has {:?} ({} host namespaces)",
            d.listed()?,
            d.namespaces()?
        );
        check_targets(&d.status()?, &[MONITOR, N1, N2])?;
        // A last interrupted run, adding a node, then down removes it all.
        d.write_config(&[N1, N2, N3])?;
        interrupt(&d, signal, Point::Create)?;
        d.ok(&["down", "--yes"])?;
        ensure!(
            d.listed()?.is_empty() && d.namespaces()? == 0,
            "down after an interrupted up left {:?}",
            d.listed()?
        );
        eprintln!("faults: 2. {signal:?} at {points:?}, then during create: state valid, next up converges, down removes all");
    }
    Ok(())
}

/// Test 2b: `rotate --psk` killed (SIGKILL) at several points: every host
/// runs a key the state knows, and the next `up` or `rotate` finishes the
/// rotation: every host runs the state's key, no old key is left in the
/// state, every target is up.
fn rotation_cut_off(bin: &Path) -> Result<()> {
    let d = Guard::new(bin, "r")?;
    d.write_config(&[N1, N2])?;
    d.up()?;
    let hosts = [MONITOR, N1, N2];
    // What each host runs: its public key, read without key material.
    let running = |host: &str| -> Result<String> {
        Ok(d.ssh_ok(host, "wg show wg0 public-key")?.trim().to_owned())
    };
    let cuts: [(&str, String, &[&str]); 4] = [
        ("up", format!("{MONITOR}: converging"), &["up", "--yes"]),
        ("rotate", format!("{N2}: converging"), &["rotate"]),
        ("up", "verifying targets".to_owned(), &["up", "--yes"]),
        (
            "rotate --psk",
            format!("{N1}: converging"),
            &["rotate", "--psk"],
        ),
    ];
    for (finisher, point, args) in cuts {
        let before = d.typed_state("before the rotation")?;
        let mut run = d.start(&["rotate", "--psk"])?;
        run.wait_for(&point, Duration::from_secs(60))?;
        run.signal(Signal::SIGKILL)?;
        let (status, stderr) = run.finish(Duration::from_secs(20))?;
        let context = || format!("rotate killed at {point:?}:\n{stderr}");
        ensure!(status.signal() == Some(9), "{status}: {}", context());
        let state = d.typed_state(&context())?;
        for host in hosts {
            let record = &state.hosts[&HostName::new(host)?];
            let known: Vec<String> = std::iter::once(record.public_key.to_string())
                .chain(
                    record
                        .previous_private_key
                        .iter()
                        .map(|k| k.public_key().to_string()),
                )
                .collect();
            let runs = running(host)?;
            ensure!(
                known.contains(&runs),
                "{host} runs key {runs}, which the state does not know ({known:?}): {}",
                context()
            );
        }
        d.ok(args)?;
        let state = d.typed_state(&format!("`{finisher}` after the cut"))?;
        ensure!(
            !state.rotation_pending(),
            "the state still holds old keys after `{finisher}`"
        );
        for host in hosts {
            let name = HostName::new(host)?;
            let runs = running(host)?;
            ensure!(
                runs == state.hosts[&name].public_key.to_string(),
                "{host} runs {runs}, not the state's key, after `{finisher}`"
            );
            ensure!(
                state.hosts[&name].public_key != before.hosts[&name].public_key,
                "{host} kept its key through the rotation"
            );
        }
        check_targets(&d.status()?, &hosts)?;
        eprintln!("faults: 2b. rotate killed at {point:?}: every host ran a known key; `{finisher}` finished the rotation");
    }
    Ok(())
}

/// Starts `up`, sends `signal` at `point`, and checks what it left.
fn interrupt(d: &Guard, signal: Signal, point: Point) -> Result<()> {
    let mut run = d.start_up()?;
    let wait = Duration::from_secs(60);
    match point {
        Point::Create => {
            // The create request is under way right after this line; a
            // local host takes about a second to boot.
            run.wait_for("Creating", wait)?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Point::Converge => run.wait_for(": converging", wait)?,
        Point::Verify => run.wait_for("verifying targets", wait)?,
    }
    run.signal(signal)?;
    let (status, stderr) = run.finish(Duration::from_secs(20))?;
    let context = || format!("{signal:?} at {point:?}:\n{stderr}");
    match signal {
        Signal::SIGKILL => ensure!(status.signal() == Some(9), "{status}: {}", context()),
        _ => {
            let code = 128 + signal as i32;
            ensure!(
                status.code() == Some(code),
                "exit {status}, not {code}: {}",
                context()
            );
            ensure!(
                stderr.contains("interrupted by"),
                "no message: {}",
                context()
            );
        }
    }
    // The state is valid JSON of the current version.
    let state = d.typed_state(&context())?;
    // Every host that exists has its record (and so its keys) in the state.
    for host in d.listed()? {
        ensure!(
            state.hosts.contains_key(&HostName::new(&host)?),
            "host {host} exists but the state does not know it: {}",
            context()
        );
    }
    // A graceful stop leaves no temporary file and no held lock.
    if signal != Signal::SIGKILL {
        let leftovers: Vec<String> = std::fs::read_dir(d.dir.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        ensure!(leftovers.is_empty(), "left {leftovers:?}: {}", context());
    }
    promguard_core::state::StateLock::acquire(&d.dir.path().join("promguard.state.lock"))
        .with_context(|| format!("the lock is still held: {}", context()))?;
    Ok(())
}

/// Tests 3-6 and 8 on one deployment: one run at a time, healing,
/// injection, secrets and modes, and finally a lost state file.
fn operations(bin: &Path) -> Result<()> {
    let d = Guard::new(bin, "o")?;
    d.write_config(&[N1, N2])?;
    d.ok(&["up", "--yes", "-v"])?;

    one_run_at_a_time(&d)?;
    healing(&d)?;
    injection(&d)?;
    let state = std::fs::read_to_string(d.state_path())?;
    secrets_and_modes(&d)?;
    lost_state(&d)?;
    no_secret_in(&state, &d.transcript.borrow())?;
    eprintln!(
        "faults: 8. no private or preshared key in any output of this deployment, at any verbosity"
    );
    Ok(())
}

/// Test 5: while an `up` runs, a second `up` and a `down` are refused with
/// its pid.
fn one_run_at_a_time(d: &Guard) -> Result<()> {
    // An unreachable node keeps the first run busy retrying.
    d.set_link(N2, false)?;
    let mut run = d.start_up()?;
    let pid = run.pid();
    let result = (|| -> Result<()> {
        run.wait_for(&format!("{N2}: connecting"), Duration::from_secs(30))?;
        for args in [&["up", "--yes"][..], &["down", "--yes"]] {
            let err = d.fails(args)?;
            ensure!(
                err.contains(&format!("another promguard run (pid {pid})")),
                "promguard {} while up runs: {err}",
                args.join(" ")
            );
        }
        Ok(())
    })();
    run.signal(Signal::SIGINT)?;
    let (status, stderr) = run.finish(Duration::from_secs(20))?;
    d.set_link(N2, true)?;
    result?;
    ensure!(status.code() == Some(130), "{status}: {stderr}");
    d.up()?;
    eprintln!("faults: 5. a second up or down during an up is refused naming pid {pid}");
    Ok(())
}

/// Test 4: dead daemons and a hand-edited wg0.conf show in `status`; the
/// next `up` repairs them.
fn healing(d: &Guard) -> Result<()> {
    d.ssh_ok(N1, "kill $(pgrep -x wireguard-go)")?;
    d.ssh_ok(N2, "kill $(cat /run/promguard/node_exporter.pid)")?;
    d.ssh_ok(N2, "echo '# edited by hand' >> /etc/wireguard/wg0.conf")?;
    d.ssh_ok(MONITOR, "kill $(cat /run/promguard/prometheus.pid)")?;
    // PromGuard's firewall table dropped on node 1, and a managed file
    // deleted on the monitor: the file_sd targets file, which the state
    // records (its name follows the job).
    d.ssh_ok(N1, "nft delete table inet promguard")?;
    let targets = d.state()?["hosts"][MONITOR]["files"]
        .as_object()
        .and_then(|files| {
            files
                .keys()
                .find(|p| p.starts_with("/etc/prometheus/promguard/"))
                .cloned()
        })
        .context("the state records no Prometheus targets file on the monitor")?;
    ensure!(!targets.contains('\''), "unexpected targets path {targets}");
    d.ssh_ok(MONITOR, &format!("rm '{targets}'"))?;
    // Let the daemons end.
    std::thread::sleep(Duration::from_millis(500));
    let out = d.promguard(&["status", "--json"])?;
    ensure!(out.status.code() == Some(2), "status exit {}", out.status);
    let status: Value = serde_json::from_slice(&out.stdout)?;
    let host = |name: &str| -> Result<Value> {
        status["hosts"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["name"] == name))
            .cloned()
            .with_context(|| format!("no host {name} in status"))
    };
    let stopped = |h: &Value, service: &str| {
        h["services"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == service && s["running"] == false)
        })
    };
    let problems = |h: &Value| h["problems"].to_string();
    let (n1, n2, m) = (host(N1)?, host(N2)?, host(MONITOR)?);
    ensure!(
        stopped(&n1, "wireguard") && problems(&n1).contains("WireGuard interface wg0"),
        "status does not show node 1's dead wireguard-go: {n1}"
    );
    ensure!(
        stopped(&n2, "node_exporter") && problems(&n2).contains("/etc/wireguard/wg0.conf differs"),
        "status does not show node 2's dead node_exporter and edited wg0.conf: {n2}"
    );
    ensure!(
        stopped(&m, "prometheus") && problems(&m).contains("prometheus is not running"),
        "status does not show the monitor's dead Prometheus: {m}"
    );
    ensure!(
        stopped(&n1, "firewall")
            && problems(&n1).contains("the nftables table inet promguard is not loaded"),
        "status does not show node 1's missing nftables table: {n1}"
    );
    ensure!(
        problems(&m).contains(&format!("{targets} is missing")),
        "status does not show the monitor's deleted {targets}: {m}"
    );
    d.up()?;
    let out = d.promguard(&["status", "--json"])?;
    ensure!(
        out.status.success(),
        "status after repair: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let status: Value = serde_json::from_slice(&out.stdout)?;
    check_targets(&status, &[MONITOR, N1, N2])?;
    let state = d.state()?;
    for (host, path) in [(N2, "/etc/wireguard/wg0.conf"), (MONITOR, targets.as_str())] {
        let recorded = state["hosts"][host]["files"][path]
            .as_str()
            .unwrap_or_default();
        let found = d.ssh_ok(host, &format!("sha256sum < '{path}'"))?;
        ensure!(
            !recorded.is_empty() && found.starts_with(recorded),
            "{host}'s {path} was not restored ({found} vs {recorded})"
        );
    }
    d.ssh_ok(N1, "nft list table inet promguard")
        .context("node 1's nftables table was not restored")?;
    eprintln!(
        "faults: 4. status shows dead daemons, an edited wg0.conf, a dropped nftables table \
         and a deleted targets file; up repairs them"
    );
    Ok(())
}

/// Test 6 on live hosts: a hostile path in the state file, a hostile config
/// directory for `promguard ssh`, hostile host arguments.
fn injection(d: &Guard) -> Result<()> {
    let marker = format!("/tmp/promguard-pwned-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    let pwned = || Path::new(&marker).exists();

    // A managed path in the state that would run a command if unquoted.
    let path = d.state_path();
    let original = std::fs::read_to_string(&path)?;
    let mut state: Value = serde_json::from_str(&original)?;
    for hostile in [
        format!("/etc/x$(touch {marker})"),
        format!("/etc/x`touch {marker}`"),
        format!("/etc/x'; touch {marker}; '"),
        format!("/etc/x\ntouch {marker}"),
    ] {
        state["hosts"][N1]["files"][hostile] = Value::from("00");
    }
    std::fs::write(&path, serde_json::to_string_pretty(&state)?)?;
    let out = d.promguard(&["status", "--json"])?;
    std::fs::write(&path, &original)?;
    ensure!(
        out.status.success(),
        "status with hostile state paths: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!pwned(), "a path from the state file ran a command");

    // promguard ssh from a config directory whose name is hostile: the
    // ProxyCommand it builds must not carry it. A name cannot hold `/`, so
    // the command touches a relative path, in the directory promguard runs
    // in. ssh expands `%` in key paths, so a `%` is refused up front.
    let cwd = tempfile::tempdir()?;
    for (dir, works) in [
        ("cfg-$(touch pwned);`touch pwned`'\"\n x", true),
        ("cfg-%h%%", false),
    ] {
        let hostile_dir = cwd.path().join(dir);
        std::os::unix::fs::symlink(d.dir.path(), &hostile_dir)?;
        let out = Command::new(&d.bin)
            .current_dir(cwd.path())
            .arg("--config")
            .arg(hostile_dir.join("promguard.toml"))
            .args(["ssh", N1, "--", "echo", "reached"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if works {
            ensure!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("reached"),
                "promguard ssh from directory {dir:?}: {stderr}"
            );
        } else {
            ensure!(
                !out.status.success() && stderr.contains("which ssh would expand"),
                "promguard ssh from directory {dir:?}: {stderr}"
            );
        }
        ensure!(
            !cwd.path().join("pwned").exists(),
            "the config directory's name {dir:?} ran a command"
        );
    }

    // Hostile host names on the command line are refused before any shell.
    for host in [
        format!("$(touch {marker})"),
        format!("{N1};touch {marker}"),
        format!("{N1}\ntouch {marker}"),
        "x".repeat(5000),
    ] {
        for args in [
            vec!["ssh", host.as_str(), "--", "true"],
            vec!["render", host.as_str()],
        ] {
            let err = d.fails(&args)?;
            ensure!(
                err.contains("invalid host name") || err.contains("no host"),
                "{args:?}: {err}"
            );
        }
    }
    ensure!(!pwned(), "a host name argument ran a command");
    eprintln!("faults: 6. hostile state paths, config directory and host arguments are inert");
    Ok(())
}

/// Test 8: no secret in any output at any verbosity; key-bearing files
/// are 0600 here and on every host.
fn secrets_and_modes(d: &Guard) -> Result<()> {
    for args in [
        &["up", "--yes", "-vv"][..],
        &["status", "-vv"],
        &["status", "--json", "-v"],
        &["plan", "-vv"],
        &["plan", "--json"],
        &["render", MONITOR, "-vv"],
        &["render", N1, "wg"],
        &["render", N2, "nftables", "-v"],
    ] {
        let out = d.promguard(args)?;
        ensure!(
            out.status.success(),
            "promguard {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // PROMGUARD_LOG=debug overrides -v; run it outside the Deployment's
    // env so only this run gets it, and keep its output in the transcript.
    for args in [&["up", "--yes"][..], &["status"]] {
        let out = Command::new(&d.bin)
            .arg("--config")
            .arg(d.config_path())
            .args(args)
            .env("PROMGUARD_LOG", "debug")
            .output()?;
        ensure!(out.status.success(), "PROMGUARD_LOG=debug {args:?} failed");
        let mut t = d.transcript.borrow_mut();
        t.push_str(&String::from_utf8_lossy(&out.stdout));
        t.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    use std::os::unix::fs::PermissionsExt;
    for file in [
        d.state_path(),
        d.dir
            .path()
            .join(format!(".promguard/{}/id_ed25519", d.name)),
    ] {
        let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", file.display());
    }
    for host in [MONITOR, N1, N2] {
        let modes = d.ssh_ok(
            host,
            "stat -c %a /etc/wireguard/wg0.conf /etc/promguard/nftables.conf",
        )?;
        ensure!(
            modes.split_whitespace().collect::<Vec<_>>() == ["600", "600"],
            "on {host}, key-bearing files have modes {modes:?}"
        );
    }
    eprintln!("faults: 8. the state, login key, wg0.conf and nftables.conf are 0600");
    Ok(())
}

/// Fails if any private or preshared key of `state` (JSON text) appears
/// in `output`.
fn no_secret_in(state: &str, output: &str) -> Result<()> {
    let state: Value = serde_json::from_str(state)?;
    let mut secrets = Vec::new();
    for (name, host) in state["hosts"].as_object().context("no hosts")? {
        secrets.push((
            format!("{name}'s private key"),
            host["private_key"].as_str(),
        ));
    }
    for pair in state["preshared_keys"]
        .as_array()
        .context("no preshared keys")?
    {
        secrets.push(("a preshared key".to_owned(), pair["key"].as_str()));
    }
    ensure!(
        secrets.len() >= 5,
        "the state has fewer secrets than hosts and pairs"
    );
    for (what, secret) in secrets {
        let secret = secret.context("a key is not a string")?;
        ensure!(secret.len() >= 40, "{what} looks malformed");
        ensure!(
            !output.contains(secret),
            "{what} appears in promguard's output"
        );
    }
    Ok(())
}

/// Test 3: the state file is lost.
fn lost_state(d: &Guard) -> Result<()> {
    let before = d.listed()?;
    let saved = d.dir.path().join("lost.state.json");
    std::fs::rename(d.state_path(), &saved)?;
    let err = d.fails(&["up", "--yes"])?;
    ensure!(
        err.contains("down --discover")
            && err.contains(N1)
            && err.contains("restoring the state file"),
        "up without state does not say how to remove or adopt the hosts: {err}"
    );
    ensure!(
        d.listed()? == before && d.namespaces()? == 3,
        "up without state changed hosts"
    );
    ensure!(
        !d.state_path().exists(),
        "up without state wrote a state file"
    );
    let err = d.fails(&["down", "--yes"])?;
    ensure!(err.contains("--discover"), "down without state: {err}");
    ensure!(
        d.listed()? == before,
        "down without state and --discover removed hosts"
    );
    d.ok(&["down", "--yes", "--discover", "-vv"])?;
    ensure!(
        d.listed()?.is_empty() && d.namespaces()? == 0,
        "down --discover left {:?}",
        d.listed()?
    );
    // Put the (now empty-handed) state back, so the scenario's own
    // cleanup finds a deployment to close.
    std::fs::rename(&saved, d.state_path())?;
    eprintln!(
        "faults: 3. without state, up refuses and down needs --discover, which removes every host"
    );
    Ok(())
}
