//! The local end-to-end scenario: real sshd, WireGuard (wireguard-go),
//! Prometheus, node_exporter and nftables on namespace hosts of this
//! machine, driven through the `promguard` binary exactly as a user would.
//!
//! It always tears its deployment down, also when a check fails. The same
//! scenario ([`scenario`]) runs through the DigitalOcean provider in
//! `e2e_fake` (against the fake API, and against the real one).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// A deployment made by the scenario; `down` runs when it is dropped.
pub(crate) struct Deployment {
    pub(crate) bin: PathBuf,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) name: String,
    /// `local` or `digitalocean`.
    pub(crate) provider: &'static str,
    /// Regions of nodes 1, 2, 3 (node 4 gets node 1's).
    pub(crate) regions: [&'static str; 3],
    /// Config text appended after the hosts (`[ssh]`, `[digitalocean]`).
    pub(crate) extra_config: String,
    /// Prometheus' scrape interval (`2s` unless a scenario needs another).
    pub(crate) scrape_interval: String,
    /// Environment of every promguard run.
    pub(crate) env: Vec<(String, String)>,
    /// Everything every promguard run printed, for checks over all output.
    pub(crate) transcript: RefCell<String>,
}

impl Deployment {
    /// A deployment on the local provider.
    pub(crate) fn local(bin: PathBuf, name: String) -> Result<Self> {
        Ok(Self {
            bin,
            dir: tempfile::tempdir()?,
            name,
            provider: "local",
            regions: ["lon1", "sfo2", "sgp1"],
            extra_config: String::new(),
            scrape_interval: "2s".to_owned(),
            env: Vec::new(),
            transcript: RefCell::new(String::new()),
        })
    }

    pub(crate) fn state_path(&self) -> PathBuf {
        self.dir.path().join("promguard.state.json")
    }

    /// The state file, which must be valid and of the current version
    /// (`when` names the moment, for the message).
    pub(crate) fn typed_state(&self, when: &str) -> Result<promguard_core::State> {
        let path = self.state_path();
        let bytes = std::fs::read(&path).with_context(|| format!("no state file after {when}"))?;
        let state = promguard_core::State::from_json(&path, &bytes)
            .with_context(|| format!("the state file after {when}"))?;
        ensure!(
            state.version == promguard_core::state::STATE_VERSION,
            "the state file after {when} has version {}",
            state.version
        );
        Ok(state)
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("promguard.toml")
    }

    pub(crate) fn write_config(&self, nodes: &[&str]) -> Result<()> {
        let mut text = format!(
            "[deployment]\nname = \"{}\"\nprovider = \"{}\"\n\n[prometheus]\nscrape_interval = \"{}\"\n\n[monitor]\nname = \"promguard-monitor-1\"\nregion = \"tor1\"\n",
            self.name, self.provider, self.scrape_interval
        );
        let regions = self.regions;
        for n in nodes {
            // The region follows the node's number, so removing a node
            // moves no other.
            let number: usize = n
                .rsplit('-')
                .next()
                .and_then(|d| d.parse().ok())
                .unwrap_or(1);
            text.push_str(&format!(
                "\n[[nodes.host]]\nname = \"{n}\"\nregion = \"{}\"\n",
                regions[(number - 1) % regions.len()]
            ));
        }
        text.push_str(&self.extra_config);
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    pub(crate) fn promguard(&self, args: &[&str]) -> Result<Output> {
        ensure!(
            !crate::e2e_fake::interrupted(),
            "interrupted (Ctrl-C); cleaning up"
        );
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(self.config_path()).args(args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let mut transcript = self.transcript.borrow_mut();
        transcript.push_str(&String::from_utf8_lossy(&out.stdout));
        transcript.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(out)
    }

    /// Starts promguard in the background (stdin and stdout closed),
    /// collecting its stderr lines.
    pub(crate) fn start(&self, args: &[&str]) -> Result<Running> {
        ensure!(
            !crate::e2e_fake::interrupted(),
            "interrupted (Ctrl-C); cleaning up"
        );
        let mut child = Command::new(&self.bin)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start promguard {}", args.join(" ")))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Running {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Runs promguard and fails with its output when it fails.
    pub(crate) fn ok(&self, args: &[&str]) -> Result<String> {
        let started = Instant::now();
        let out = self.promguard(args)?;
        eprintln!(
            "e2e: promguard {} took {:.2?}",
            args.join(" "),
            started.elapsed()
        );
        if !out.status.success() {
            bail!(
                "promguard {} failed ({}):\n{}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn ssh(&self, host: &str, command: &str) -> Result<Output> {
        self.promguard(&["ssh", host, "--", command])
    }

    pub(crate) fn ssh_ok(&self, host: &str, command: &str) -> Result<String> {
        let out = self.ssh(host, command)?;
        if !out.status.success() {
            bail!(
                "on {host}, `{command}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn status(&self) -> Result<Value> {
        let out = self.promguard(&["status", "--json"])?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "status --json printed no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub(crate) fn state(&self) -> Result<Value> {
        let text = std::fs::read_to_string(self.state_path())?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// A promguard command running in the background.
pub(crate) struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Waits until a stderr line contains `needle`.
    pub(crate) fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "promguard ended before printing {needle:?}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
        bail!(
            "promguard printed no {needle:?} within {timeout:?}:\n{}",
            self.seen.join("\n")
        )
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).context("cannot signal promguard")
    }

    /// Waits (bounded) for the child to end; returns its status and stderr.
    pub(crate) fn finish(mut self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "promguard did not end within {timeout:?} of being asked to:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        Ok((status, self.seen.join("\n")))
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // Cleanup runs after Ctrl-C too.
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(self.config_path())
            .args(["down", "--yes"]);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        match cmd.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "e2e: cleanup `down` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("e2e: cleanup `down` failed: {e:#}"),
        }
    }
}

/// Facts of one host that must not change across a no-op run.
fn fingerprint(d: &Deployment, host: &str, monitor: bool) -> Result<String> {
    let mut files = "/etc/wireguard/wg0.conf /etc/promguard/nftables.conf".to_owned();
    if monitor {
        files.push_str(" /etc/prometheus/prometheus.yml /etc/prometheus/promguard/node.json");
    }
    d.ssh_ok(
        host,
        &format!(
            "stat -c '%n %Y.%y' {files}; cat /run/promguard/*.pid 2>/dev/null || systemctl show -p MainPID prometheus prometheus-node-exporter; pgrep -x wireguard-go || true"
        ),
    )
}

pub(crate) fn check_targets(status: &Value, expected_hosts: &[&str]) -> Result<()> {
    let targets = status["targets"]
        .as_array()
        .context("status has no targets")?;
    let mut seen = BTreeMap::new();
    // Prometheus' own metrics, on loopback, for the rules about rule
    // evaluation and notifications.
    for t in targets.iter().filter(|t| t["job"] == "prometheus") {
        ensure!(
            t["health"] == "up" && t["scrape_url"] == "http://127.0.0.1:9090/metrics",
            "Prometheus' own target is {t}"
        );
    }
    for t in targets.iter().filter(|t| t["job"] != "prometheus") {
        let instance = t["instance"].as_str().unwrap_or_default();
        let url = t["scrape_url"].as_str().unwrap_or_default();
        ensure!(
            t["health"] == "up",
            "target {instance} ({url}) is {}: {}",
            t["health"],
            t["last_error"]
        );
        ensure!(
            url.starts_with("http://10.0.0.") && url.ends_with(":9100/metrics"),
            "target {instance} is scraped at {url}, not a WireGuard address"
        );
        seen.insert(instance.to_owned(), url.to_owned());
    }
    let mut wanted: Vec<&str> = expected_hosts.to_vec();
    wanted.sort();
    let got: Vec<&str> = seen.keys().map(String::as_str).collect();
    ensure!(got == wanted, "targets are {got:?}, expected {wanted:?}");
    Ok(())
}

pub(crate) fn connect_from(netns: &str, addr: SocketAddr) -> Result<bool> {
    // bash's /dev/tcp inside the namespace: exit 0 when the connect works.
    let status = Command::new("ip")
        .args(["netns", "exec", netns, "timeout", "3", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port()))
        .stderr(std::process::Stdio::null())
        .status()?;
    Ok(status.success())
}

/// Runs the scenario.
pub fn local(root: &Path) -> Result<()> {
    let bin = crate::cli(root)?;
    let name = format!("e2e{}", std::process::id() % 100000);
    let d = Deployment::local(bin, name.clone())?;
    let provider = promguard_cloud::local::LocalProvider::new(
        promguard_core::DeploymentName::new(&name)?,
        promguard_cloud::local::LocalOptions::default(),
    );
    let (fresh, noop) = scenario(&d, Some(&provider))?;
    unmanaged_exporter_not_running(&d)?;

    // 7. Down leaves nothing.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let hosts = runtime.block_on(promguard_cloud::CloudProvider::list_hosts(&provider))?;
    let pids: Vec<u32> = hosts
        .iter()
        .filter_map(|h| provider.host_init_pid(&h.name))
        .collect();
    ensure!(
        pids.len() == hosts.len() && !pids.is_empty(),
        "the provider does not know every host's init process"
    );
    d.ok(&["down", "--yes"])?;
    check_gone(&name, &pids)?;
    eprintln!("e2e: 7. down left no namespace, process or directory");
    eprintln!("e2e: local scenario passed (fresh up {fresh:.2?}, no-op up {noop:.2?})");
    Ok(())
}

/// Checks that local deployment `name` left no namespace, no state
/// directory, and none of the processes `pids`.
pub(crate) fn check_gone(name: &str, pids: &[u32]) -> Result<()> {
    let netns =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout)
            .into_owned();
    ensure!(
        !netns.contains(&format!("pg-{name}")),
        "namespaces remain:\n{netns}"
    );
    ensure!(
        !Path::new("/var/lib/promguard/local").join(name).exists(),
        "the deployment directory remains"
    );
    for &pid in pids {
        // A zombie (state Z) or exiting (X) process is already dead; only its
        // parent can reap it. Allow the kernel a moment to finish the exit.
        let state = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit(") ")
                .next()
                .and_then(|rest| rest.chars().next())
        };
        let alive = || state().is_some_and(|c| c != 'Z' && c != 'X');
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        ensure!(
            !alive(),
            "process {pid} of the deployment remains (state {:?})",
            state()
        );
    }
    Ok(())
}

/// 6c. An exporter of the operator's that is not running: `up` verifies
/// every other target, then fails at once naming where nothing listens
/// (not after its verify timeout); without it, `up` succeeds again. The
/// scenario's last nodes are kept.
fn unmanaged_exporter_not_running(d: &Deployment) -> Result<()> {
    let nodes = ["promguard-node-1", "promguard-node-3", "promguard-node-4"];
    d.write_config(&nodes)?;
    let config = std::fs::read_to_string(d.config_path())?;
    let with = config.replacen(
        "name = \"promguard-node-1\"\n",
        "name = \"promguard-node-1\"\nexporters = [{ name = \"postgres\", port = 9187 }]\n",
        1,
    );
    ensure!(with != config, "the config names no promguard-node-1");
    std::fs::write(d.config_path(), with)?;
    let started = Instant::now();
    let out = d.promguard(&["up", "--yes"])?;
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "up succeeded though nothing runs the postgres exporter:\n{text}"
    );
    // The fast answer, not the verify timeout's "not every target was up".
    ensure!(
        text.contains("every target PromGuard runs is up, but nothing listens on ")
            && text.contains(
                ":9187 on promguard-node-1: start the postgres exporter bound to that address"
            )
            && !text.contains("not every target was up"),
        "up did not say at once that nothing listens on node-1's postgres exporter port:\n{text}"
    );
    d.write_config(&nodes)?;
    d.ok(&["up", "--yes"])?;
    eprintln!(
        "e2e: 6c. an exporter nobody runs: up verified the rest and said where nothing listens after {took:.2?}; without it, up succeeds"
    );
    Ok(())
}

/// Steps 1-6 of the scenario: up with a monitor and three nodes, every
/// target up over WireGuard; outsiders refused; nodes isolated; a no-op
/// second up; a fourth node; node 2 removed. `hosts_on` is the local
/// provider whose namespace hosts are the deployment's hosts (the fake
/// DigitalOcean's droplets are too); without one (a real cloud) the checks
/// that need an outsider on the hosts' network are left out. Returns the
/// durations of the fresh and the no-op `up`.
pub(crate) fn scenario(
    d: &Deployment,
    hosts_on: Option<&promguard_cloud::local::LocalProvider>,
) -> Result<(Duration, Duration)> {
    let three = ["promguard-node-1", "promguard-node-2", "promguard-node-3"];
    let monitor = "promguard-monitor-1";

    // 1. Up: every target is up at its WireGuard address.
    d.write_config(&three)?;
    let started = Instant::now();
    d.ok(&["up", "--yes"])?;
    let fresh = started.elapsed();
    check_targets(&d.status()?, &[monitor, three[0], three[1], three[2]])?;
    eprintln!("e2e: 1. every target is up over WireGuard (fresh up {fresh:.2?})");
    wireguard_metrics(d, monitor, &three)?;
    eprintln!("e2e: 1b. every peer's WireGuard health is in Prometheus, without key material");

    // 2. From an outsider on the underlay, exporters and Prometheus are closed, SSH open.
    match hosts_on {
        Some(provider) => {
            outsider_checks(d, provider, "outsider")?;
            eprintln!("e2e: 2. outsiders cannot reach exporters or Prometheus; SSH answers");
        }
        None => eprintln!("e2e: 2. skipped: no outsider can join a real cloud's network"),
    }

    // 3. Node to node: no route, no peer; the monitor's Prometheus is not reachable from a node.
    let probe = |from: &str, to: &str| -> Result<bool> {
        let out = d.ssh(
            from,
            &format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{to}' && echo open || echo closed"),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("open"))
    };
    ensure!(
        !probe(three[0], "10.0.0.3/9100")?,
        "node 1 reached node 2's exporter"
    );
    ensure!(
        !probe(three[0], "10.0.0.1/9090")?,
        "node 1 reached the monitor's Prometheus"
    );
    ensure!(
        probe(monitor, "10.0.0.3/9100")?,
        "the monitor cannot reach node 2's exporter"
    );
    eprintln!("e2e: 3. nodes cannot reach each other or Prometheus");

    // 4. A second up changes nothing.
    let before: Vec<String> = std::iter::once(monitor)
        .chain(three)
        .map(|h| fingerprint(d, h, h == monitor))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    let out = d.ok(&["up", "--yes"])?;
    let noop = started.elapsed();
    ensure!(
        out.contains("No changes"),
        "second up reported changes:\n{out}"
    );
    let after: Vec<String> = std::iter::once(monitor)
        .chain(three)
        .map(|h| fingerprint(d, h, h == monitor))
        .collect::<Result<_>>()?;
    ensure!(
        before == after,
        "a no-op up touched files or restarted processes:\n{before:#?}\n{after:#?}"
    );
    eprintln!("e2e: 4. a second up changed nothing (no-op up {noop:.2?})");

    // 5. A fourth node: its target comes up, existing tunnels stay.
    // wireguard-go's PID, or the kernel interface's index on cloud hosts.
    let wg_pid = |d: &Deployment| {
        d.ssh_ok(
            monitor,
            "pgrep -x wireguard-go || cat /sys/class/net/wg0/ifindex",
        )
    };
    let pid_before = wg_pid(d)?;
    let peers_before = peers_of(&d.status()?, monitor)?;
    let four = [
        "promguard-node-1",
        "promguard-node-2",
        "promguard-node-3",
        "promguard-node-4",
    ];
    d.write_config(&four)?;
    d.ok(&["up", "--yes"])?;
    let status = d.status()?;
    check_targets(&status, &[monitor, four[0], four[1], four[2], four[3]])?;
    ensure!(
        wg_pid(d)? == pid_before,
        "the monitor's WireGuard was restarted"
    );
    let peers_after = peers_of(&status, monitor)?;
    for (peer, (key, rx)) in &peers_before {
        let (key2, rx2) = peers_after
            .get(peer)
            .with_context(|| format!("peer {peer} vanished"))?;
        ensure!(key == key2, "peer {peer} changed key");
        ensure!(
            rx2 >= rx,
            "peer {peer}'s counters were reset: the tunnel was torn down"
        );
    }
    eprintln!("e2e: 5. a fourth node joined; existing peers and tunnels unchanged");

    // 6. Remove node 2.
    let without = ["promguard-node-1", "promguard-node-3", "promguard-node-4"];
    d.write_config(&without)?;
    d.ok(&["up", "--yes"])?;
    let status = d.status()?;
    check_targets(&status, &[monitor, without[0], without[1], without[2]])?;
    ensure!(
        !peers_of(&status, monitor)?.contains_key("promguard-node-2"),
        "node 2 is still a peer"
    );
    if let Some(provider) = hosts_on {
        ensure!(
            provider
                .host_netns(&promguard_core::HostName::new("promguard-node-2")?)
                .is_none(),
            "node 2 still exists"
        );
    }
    eprintln!("e2e: 6. node 2 was removed and destroyed");

    // 6b. Rotate every key, preshared keys too: both ends switch in one
    // run, every target stays up, the old keys are gone from the state.
    let peers_before = peers_of(&d.status()?, monitor)?;
    let rotation = Instant::now();
    let out = d.ok(&["rotate", "--psk"])?;
    ensure!(out.contains("every tunnel switched"), "rotate said:\n{out}");
    let status = d.status()?;
    check_targets(&status, &[monitor, without[0], without[1], without[2]])?;
    let peers_after = peers_of(&status, monitor)?;
    for (peer, (key, _)) in &peers_before {
        let (key2, _) = peers_after
            .get(peer)
            .with_context(|| format!("peer {peer} vanished in the rotation"))?;
        ensure!(key != key2, "peer {peer} kept its key through the rotation");
    }
    let state = d.state()?;
    let leftovers = state.to_string().contains("previous");
    ensure!(
        !leftovers,
        "the state still holds keys from before the rotation"
    );
    // Failed scrapes since the rotation began, of the targets scraped now,
    // once every target was scraped twice more over the new keys: each
    // tunnel was down for less than one 5 s scrape interval.
    let interval: f64 = d
        .scrape_interval
        .trim_end_matches('s')
        .parse()
        .unwrap_or(1.0);
    std::thread::sleep(Duration::from_secs_f64(2.0 * interval + 1.0));
    let window = rotation.elapsed().as_secs() + 1;
    let failed = d.ssh_ok(
        monitor,
        &format!("curl -sf -G http://127.0.0.1:9090/api/v1/query --data-urlencode 'query=max((count_over_time(up[{window}s]) - sum_over_time(up[{window}s])) and on(instance, job) up)'"),
    )?;
    let value: Value = serde_json::from_str(&failed).context("Prometheus' answer")?;
    let missed: f64 = value["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no count of failed scrapes in {failed}"))?;
    let interval: f64 = d
        .scrape_interval
        .trim_end_matches('s')
        .parse()
        .unwrap_or(1.0);
    ensure!(
        missed * interval < 5.0,
        "a target missed {missed} scrapes at {interval} s during the rotation"
    );
    eprintln!("e2e: 6b. every key rotated in one run; targets stayed up ({missed} failed scrape(s) at {interval} s)");

    Ok((fresh, noop))
}

/// The monitor's Prometheus, through `promguard tunnel`, has each node's WireGuard health from the
/// collector (a handshake as a recent Unix time, labelled with the peer's
/// name), and no WireGuard series holds a private or preshared key.
fn wireguard_metrics(d: &Deployment, monitor: &str, nodes: &[&str]) -> Result<()> {
    with_tunnel(d, |query| wireguard_metrics_via(d, monitor, nodes, query))
}

/// Runs `f` with a query function that asks the monitor's Prometheus
/// through `promguard tunnel`, as a user would query it, and ends the
/// tunnel afterwards.
pub(crate) fn with_tunnel<T>(
    d: &Deployment,
    f: impl FnOnce(&dyn Fn(&str) -> Result<Value>) -> Result<T>,
) -> Result<T> {
    with_tunnel_to(d, &[], |port| {
        let query = |q: &str| -> Result<Value> { prometheus_query(port, q) };
        f(&query)
    })
}

/// Runs `f` with the local port of `promguard tunnel <args>` (`--monitor
/// NAME`, `--storage`) once it listens, and ends the tunnel afterwards.
pub(crate) fn with_tunnel_to<T>(
    d: &Deployment,
    args: &[&str],
    f: impl FnOnce(u16) -> Result<T>,
) -> Result<T> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let port_text = port.to_string();
    let mut all = vec!["tunnel", "--port", &port_text];
    all.extend_from_slice(args);
    let tunnel = d.start(&all)?;
    let result = (|| -> Result<T> {
        // It prints its URL on stdout, which `start` closes: wait until
        // the port accepts instead.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "promguard tunnel does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        f(port)
    })();
    tunnel.signal(nix::sys::signal::Signal::SIGINT)?;
    let _ = tunnel.finish(Duration::from_secs(10));
    result
}

/// `GET /api/v1/query?query=q` on 127.0.0.1:`port`.
pub(crate) fn prometheus_query(port: u16, q: &str) -> Result<Value> {
    let body = http_get(port, &format!("/api/v1/query?query={}", url_encode(q)))?;
    serde_json::from_str(&body).with_context(|| format!("Prometheus' answer to {q}: {body}"))
}

/// `text` escaped for a URL's query.
pub(crate) fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of `GET path` on 127.0.0.1:`port` (HTTP/1.0, so the answer
/// ends with the connection); fails unless the status is 200.
pub(crate) fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP body in {response:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path} answered {}: {body}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}

fn wireguard_metrics_via(
    d: &Deployment,
    monitor: &str,
    nodes: &[&str],
    query: &dyn Fn(&str) -> Result<Value>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in nodes {
        let q =
            format!("wireguard_latest_handshake_seconds{{peer=\"{node}\",instance=\"{monitor}\"}}");
        loop {
            let answer = query(&q)?;
            let value: Option<f64> = answer["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs_f64();
            match value {
                Some(t) if t > now - 600.0 && t <= now + 60.0 => break,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_secs(1)),
                _ => bail!("no recent handshake of {node} in Prometheus: {answer}"),
            }
        }
    }
    let all = query("{__name__=~\"wireguard_.*|promguard_wireguard_.*\"}")?;
    let text = all.to_string();
    ensure!(
        text.contains("wireguard_received_bytes_total")
            && text.contains("promguard_wireguard_collector_last_run_timestamp_seconds"),
        "the WireGuard metrics are incomplete: {text}"
    );
    let state = d.state()?;
    for (host, record) in state["hosts"].as_object().context("no hosts in state")? {
        let key = record["private_key"].as_str().context("no private key")?;
        ensure!(
            !text.contains(key),
            "{host}'s private key is in the metrics"
        );
    }
    for pair in state["preshared_keys"].as_array().into_iter().flatten() {
        let key = pair["key"].as_str().context("no preshared key")?;
        ensure!(!text.contains(key), "a preshared key is in the metrics");
    }
    Ok(())
}

/// From an outsider on the hosts' underlay, exporters and Prometheus are
/// closed and SSH is open.
pub(crate) fn outsider_checks(
    d: &Deployment,
    provider: &promguard_cloud::local::LocalProvider,
    name: &str,
) -> Result<()> {
    let state = d.state()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outsider =
        runtime.block_on(provider.create_outsider(&promguard_core::HostName::new(name)?))?;
    for (host, record) in state["hosts"].as_object().context("no hosts in state")? {
        let public: IpAddr = record["public_address"]
            .as_str()
            .context("no public address")?
            .parse()?;
        let wg: IpAddr = record["wireguard_address"]
            .as_str()
            .context("no wireguard address")?
            .parse()?;
        ensure!(
            !connect_from(&outsider.netns, SocketAddr::new(public, 9100))?,
            "outsider reached {host}:9100 on {public}"
        );
        ensure!(
            !connect_from(&outsider.netns, SocketAddr::new(wg, 9100))?,
            "outsider reached {host}:9100 on {wg}"
        );
        ensure!(
            !connect_from(&outsider.netns, SocketAddr::new(public, 9090))?,
            "outsider reached {host}:9090"
        );
        ensure!(
            connect_from(&outsider.netns, SocketAddr::new(public, 22))?,
            "outsider cannot reach SSH of {host}"
        );
    }
    Ok(())
}

pub(crate) fn peers_of(status: &Value, host: &str) -> Result<BTreeMap<String, (String, u64)>> {
    let hosts = status["hosts"].as_array().context("status has no hosts")?;
    let h = hosts
        .iter()
        .find(|h| h["name"] == host)
        .with_context(|| format!("no host {host} in status"))?;
    Ok(h["peers"]
        .as_array()
        .context("no peers")?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                (
                    p["public_key"].as_str().unwrap_or_default().to_owned(),
                    p["rx_bytes"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect())
}
