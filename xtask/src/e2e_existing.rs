//! The existing-hosts end-to-end scenario (`cargo xtask e2e --existing`,
//! issue 12): PromGuard as a careful guest on servers a user already runs.
//!
//! The test first makes those servers itself, outside PromGuard: a "lab"
//! of systemd hosts on the local provider (a deployment of its own), each
//! prepared the way users have theirs: `web-1` with ufw active and a web
//! server on a port of its own (and, from the config, a process exporter
//! PromGuard installs and manages), `wg-1` with its own WireGuard interface
//! `wg0` on 51820, `sudo-1` reached only as a non-root sudo user, `mon-1`
//! running Debian's Prometheus with its own scrape job (and the one
//! PromGuard prints for the user to add), and `nat-1`, whose inbound UDP
//! the lab's network drops (a node behind NAT). The `promguard` binary then
//! runs in the lab's hub namespace, as a user on the hosts' network would,
//! with an empty `~/.ssh/known_hosts` and a config that names all five by
//! address. It checks, in order: `up` refuses the unknown host keys until
//! `--trust-new-host-keys`; refuses the WireGuard clash on `wg-1` until the
//! config names another interface and port; then every target is up over
//! WireGuard in the user's Prometheus, the user's own job and web server
//! still work, no exporter answers an outsider, `wg0` runs as before, and a
//! second `up` changes nothing; `down` leaves every host as it was before
//! `up` (packages, enabled units, nftables ruleset, ufw, `/etc/wireguard`,
//! the user's Prometheus config).
//!
//! The lab is torn down at the end, also when a check fails or on Ctrl-C,
//! and the test checks that nothing of it (namespace, process, mount,
//! overlay) is left.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use promguard_cloud::local::{LocalOptions, LocalProvider, Outsider, Program};
use promguard_cloud::{CloudProvider, Host, HostRequest};
use promguard_core::config::LocalHostKind;
use promguard_core::prometheus::{existing_job_name, render_existing_job};
use promguard_core::{DeploymentName, HostName, Region, Role, SshPublicKey};
use serde_json::Value;

/// Prepares one lab host (see its header for the arguments).
const PREPARE_SH: &str = include_str!("e2e_existing/prepare.sh");

/// Prints what is compared on a host before `up` and after `down`.
const SNAPSHOT_SH: &str = include_str!("e2e_existing/snapshot.sh");

/// The port of `web-1`'s own web server.
const WEB_PORT: u16 = 8080;

/// The UDP port of `wg-1`'s own WireGuard interface `wg0`: PromGuard's
/// default, so the default config clashes with it.
const USER_WG_PORT: u16 = 51820;

/// The login of `sudo-1`, where root may not log in.
const SUDO_USER: &str = "deploy";

/// The scrape interval of the user's Prometheus (and PromGuard's config):
/// short, so that new targets are scraped soon after `up`.
const SCRAPE_SECONDS: u64 = 5;

/// The job of the user's own Prometheus that must keep running.
const USER_JOB: &str = "self";

/// How long one `promguard` run may take before the test ends it: `up`
/// installs packages on five hosts and then waits for the targets.
const PROMGUARD_TIMEOUT: Duration = Duration::from_secs(600);

/// What the user made of each server of the lab, before PromGuard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Runs the user's Prometheus; PromGuard's monitor.
    Monitor,
    /// ufw active, a web server on [`WEB_PORT`].
    Web,
    /// Its own WireGuard interface `wg0` on [`USER_WG_PORT`].
    WireGuard,
    /// Reached only as [`SUDO_USER`] with passwordless sudo.
    Sudo,
    /// Inbound UDP dropped on the way to it (behind NAT).
    Nat,
}

/// The lab's servers: name and what the user made of it.
const SERVERS: [(&str, Server); 5] = [
    ("mon-1", Server::Monitor),
    ("web-1", Server::Web),
    ("wg-1", Server::WireGuard),
    ("sudo-1", Server::Sudo),
    ("nat-1", Server::Nat),
];

/// Packages the lab installs that PromGuard's recipe does not, so the
/// lab's mirror must hold them too.
const LAB_PACKAGES: &[&str] = &["ufw", MANAGED_EXPORTER.1];

/// The exporter PromGuard installs and manages on web-1 (name, package,
/// port), which `down` must remove as exactly as the rest.
const MANAGED_EXPORTER: (&str, &str, u16) = ("process", "prometheus-process-exporter", 9256);

/// Catches Ctrl-C and SIGTERM (`e2e_fake`'s flag) while `f` runs, so the
/// lab is torn down rather than left running, and restores the default
/// afterwards (later tests of `cargo xtask test` expect it).
fn with_interrupts_caught<T>(f: impl FnOnce() -> T) -> Result<T> {
    crate::e2e_fake::catch_interrupts()?;
    let result = f();
    crate::e2e_fake::restore_interrupts()?;
    Ok(result)
}

fn check_interrupted() -> Result<()> {
    ensure!(
        !crate::e2e_fake::interrupted(),
        "interrupted (Ctrl-C); tearing the lab down"
    );
    Ok(())
}

/// Runs the scenario.
pub fn run(root: &Path) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "e2e --existing needs root: it makes network namespaces and boots systemd hosts"
    );
    promguard_cloud::local::check_programs(&[
        Program {
            name: "nft",
            package: "nftables",
        },
        Program {
            name: "ssh",
            package: "openssh-client",
        },
        Program {
            name: "curl",
            package: "curl",
        },
        Program {
            name: "diff",
            package: "diffutils",
        },
    ])
    .context("e2e --existing cannot run")?;
    let bin = crate::cli(root)?;
    let id = std::process::id() % 100000;
    with_interrupts_caught(|| {
        let mut lab = Lab::new(&format!("lab{id}"))?;
        let outcome = scenario(&mut lab, &bin, &format!("ex{id}"));
        let started = Instant::now();
        let teardown = lab.tear_down();
        eprintln!(
            "e2e-existing: the lab's teardown took {:.1?}",
            started.elapsed()
        );
        match (outcome, teardown) {
            (Ok(()), Ok(())) => {
                eprintln!(
                    "e2e-existing: the existing-hosts scenario passed; the lab left nothing behind"
                );
                Ok(())
            }
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(e), Err(t)) => Err(e.context(format!("tearing the lab down failed too: {t:#}"))),
        }
    })?
}

/// The scenario proper, on a lab that [`run`] tears down afterwards.
fn scenario(lab: &mut Lab, bin: &Path, deployment: &str) -> Result<()> {
    let started = Instant::now();
    lab.create()?;
    let created = started.elapsed();
    lab.prepare(deployment)?;
    lab.check_prepared(deployment)?;
    eprintln!(
        "e2e-existing: the lab is ready in {:.1?} ({created:.1?} to create five systemd hosts, {:.1?} to prepare and check them)",
        started.elapsed(),
        started.elapsed() - created
    );

    // 1. What each host looks like before PromGuard.
    let before = lab.snapshots()?;
    compare_snapshots(&before, &lab.snapshots()?, "a second snapshot before up")?;
    let wg0_before = lab.in_host_ok("wg-1", "wg showconf wg0", &[])?;
    eprintln!("e2e-existing: 1. every host's packages, units, ruleset, ufw, /etc/wireguard and Prometheus config recorded");

    let pg = Promguard::new(lab, bin, deployment)?;

    // 2. Unknown host keys: up stops and shows them.
    pg.write_config(false)?;
    let out = pg.run(&["up", "--yes"])?;
    ensure!(
        !out.status.success(),
        "up with five unknown host keys and no --trust-new-host-keys succeeded:\n{}",
        out.text
    );
    ensure!(
        out.text.contains("SHA256:") && out.text.contains("--trust-new-host-keys"),
        "up refused the unknown host keys without showing a fingerprint (SHA256:...) and --trust-new-host-keys:\n{}",
        out.text
    );
    let shown: Vec<&str> = lab
        .hosts
        .iter()
        .filter(|(_, h)| {
            h.ssh_host_key
                .as_ref()
                .is_some_and(|k| out.text.contains(&k.fingerprint()))
        })
        .map(|(name, _)| name.as_str())
        .collect();
    ensure!(
        !shown.is_empty(),
        "up showed no fingerprint of the lab hosts' real keys:\n{}",
        out.text
    );
    compare_snapshots(
        &before,
        &lab.snapshots()?,
        "after up refused the unknown host keys",
    )?;
    eprintln!(
        "e2e-existing: 2. up refused the unknown host keys, showed their fingerprints ({}) and changed nothing",
        shown.join(", ")
    );

    // 2b. A login user without sudo: up says what to grant, and changes
    // nothing anywhere.
    pg.write_config_with(false, &format!("{SUDO_USER}-nosudo"))?;
    let out = pg.run(&["up", "--yes", "--trust-new-host-keys"])?;
    ensure!(
        !out.status.success(),
        "up succeeded on sudo-1 as a user without sudo:\n{}",
        out.text
    );
    for needle in ["sudo -n", "NOPASSWD", &format!("{SUDO_USER}-nosudo")] {
        ensure!(
            out.text.contains(needle),
            "up's refusal of a user without sudo does not say {needle:?}:\n{}",
            out.text
        );
    }
    compare_snapshots(
        &before,
        &lab.snapshots()?,
        "after up found no sudo on sudo-1",
    )?;
    eprintln!("e2e-existing: 2b. up as a user without sudo said what to grant and changed nothing");
    pg.write_config(false)?;

    // 3. wg-1's own wg0 on 51820: up stops with the keys to change.
    let out = pg.run(&["up", "--yes", "--trust-new-host-keys"])?;
    ensure!(
        !out.status.success(),
        "up succeeded although wg-1 runs its own wg0 on {USER_WG_PORT}:\n{}",
        out.text
    );
    for needle in [
        "wg0",
        &USER_WG_PORT.to_string(),
        "wireguard.interface",
        "wireguard.port",
    ] {
        ensure!(
            out.text.contains(needle),
            "up's refusal of the WireGuard clash on wg-1 does not name {needle:?}:\n{}",
            out.text
        );
    }
    let wg1_before: Vec<(String, String)> = before
        .iter()
        .filter(|(h, _)| h == "wg-1")
        .cloned()
        .collect();
    compare_snapshots(
        &wg1_before,
        &lab.snapshot_of(&["wg-1"])?,
        "after up refused the WireGuard clash",
    )?;
    // The clash is found before anything changes on any host.
    compare_snapshots(
        &before,
        &lab.snapshots()?,
        "after up refused the WireGuard clash",
    )?;
    eprintln!(
        "e2e-existing: 3. up refused wg-1's wg0 on {USER_WG_PORT}, named the config keys, and changed nothing on any host"
    );

    // 4. Another interface and port for wg-1: up succeeds, host keys
    // pinned by the run before.
    pg.write_config(true)?;
    let out = pg.run(&["up", "--yes"])?;
    ensure!(
        out.status.success(),
        "up with wg-1 on wg1/51821 failed ({}):\n{}\non mon-1:\n{}",
        out.status,
        out.text,
        lab.discovery_log()?
    );
    lab.check_targets(deployment, Duration::from_secs(3 * SCRAPE_SECONDS + 10))?;
    lab.check_web_server("after up")?;
    let outsider = lab.outsider()?;
    for (name, host) in &lab.hosts {
        let managed = (name == "web-1").then_some(MANAGED_EXPORTER.2);
        for port in std::iter::once(9100).chain(managed) {
            let exporter = SocketAddr::new(host.public_address, port);
            ensure!(
                !crate::e2e::connect_from(&outsider.netns, exporter)?,
                "after up, the outsider reached {name}'s exporter at {exporter}"
            );
        }
    }
    ensure!(
        lab.in_host_ok("wg-1", "wg showconf wg0", &[])? == wg0_before,
        "after up, wg-1's own wg0 runs with another config"
    );
    let wg = lab.in_host_ok(
        "wg-1",
        "systemctl is-active wg-quick@wg0.service; wg show wg0 listen-port; wg show wg1 listen-port",
        &[],
    )?;
    ensure!(
        wg.split_whitespace().collect::<Vec<_>>() == ["active", "51820", "51821"],
        "after up, wg-1's WireGuard is not wg0 (its own, active, on 51820) and wg1 (PromGuard's, on 51821): {wg:?}"
    );
    // ufw would drop WireGuard's packets that no flow of web-1 started.
    let ufw = lab.in_host_ok("web-1", "ufw status", &[])?;
    ensure!(
        ufw.lines()
            .any(|l| l.contains(&format!("{USER_WG_PORT}/udp")) && l.contains("ALLOW")),
        "after up, web-1's ufw does not allow PromGuard's WireGuard port {USER_WG_PORT}/udp:\n{ufw}"
    );
    eprintln!("e2e-existing: 4. up succeeded: every target is up over WireGuard in the user's Prometheus, its own job too; the web server answers; no exporter answers the outsider; wg0 runs as before; web-1's ufw lets WireGuard in");

    // 4b. A second up changes nothing.
    let converged = lab.fingerprints()?;
    let out = pg.run(&["up", "--yes"])?;
    ensure!(
        out.status.success(),
        "the second up failed ({}):\n{}",
        out.status,
        out.text
    );
    ensure!(
        out.text.contains("No changes"),
        "the second up reported changes:\n{}",
        out.text
    );
    compare_snapshots(&converged, &lab.fingerprints()?, "after a second up")?;
    eprintln!("e2e-existing: 4b. a second up changed nothing");

    // 5. Down leaves every host as it was found.
    let out = pg.run(&["down", "--yes"])?;
    ensure!(
        out.status.success(),
        "down failed ({}):\n{}",
        out.status,
        out.text
    );
    ensure!(
        says_existing_hosts_stay(&out.text),
        "down does not say that it leaves the hosts (all existing) running:\n{}",
        out.text
    );
    lab.check_still_running()?;
    compare_snapshots(&before, &lab.snapshots()?, "after down")?;
    lab.check_web_server("after down")?;
    lab.check_user_job(Duration::from_secs(3 * SCRAPE_SECONDS))?;
    eprintln!("e2e-existing: 5. down left every host running and exactly as it was before up");
    Ok(())
}

/// Whether `down`'s output says it does not destroy the hosts, in
/// whatever words: a line that negates destroying them, or says they stay
/// (are kept, left running).
fn says_existing_hosts_stay(text: &str) -> bool {
    const SAYINGS: &[&str] = &[
        "not destroy",
        "never destroy",
        "n't destroy",
        "not be destroyed",
        "host stays",
        "hosts stay",
        "left running",
        "keeps running",
        "kept running",
    ];
    text.lines()
        .map(str::to_lowercase)
        .any(|line| SAYINGS.iter().any(|s| line.contains(s)))
}

/// Fails with a diff of each host whose snapshot in `after` differs from
/// `before` (`when` names the moment).
fn compare_snapshots(
    before: &[(String, String)],
    after: &[(String, String)],
    when: &str,
) -> Result<()> {
    let mut diffs = String::new();
    for ((host, old), (host2, new)) in before.iter().zip(after) {
        ensure!(host == host2, "snapshots of {host} and {host2} compared");
        if old != new {
            diffs.push_str(&format!("--- {host}\n{}\n", diff(old, new)?));
        }
    }
    ensure!(
        before.len() == after.len(),
        "{} snapshots before, {} {when}",
        before.len(),
        after.len()
    );
    ensure!(
        diffs.is_empty(),
        "{when}, hosts differ from before (- before, + {when}):\n{diffs}"
    );
    Ok(())
}

/// `diff -u` of two texts.
fn diff(old: &str, new: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("before"), dir.path().join("after"));
    std::fs::write(&a, old)?;
    std::fs::write(&b, new)?;
    let out = Command::new("diff")
        .args(["-u", "--label", "before", "--label", "after"])
        .arg(&a)
        .arg(&b)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lab: the user's servers, made on the local provider as a
/// deployment of their own, with a login key and an outsider.
struct Lab {
    provider: LocalProvider,
    runtime: tokio::runtime::Runtime,
    /// The login key, the lab's known_hosts.
    dir: tempfile::TempDir,
    /// The servers as created, by name.
    hosts: BTreeMap<String, Host>,
    outsider: Option<Outsider>,
    /// Every process the lab's hosts started with, to check they are gone.
    pids: Vec<u32>,
    torn_down: bool,
}

impl Lab {
    /// A lab named `name`; creates nothing yet.
    fn new(name: &str) -> Result<Self> {
        let provider = LocalProvider::new(
            DeploymentName::new(name)?,
            LocalOptions {
                hosts: LocalHostKind::Systemd,
                extra_mirror_packages: LAB_PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
                ..LocalOptions::default()
            },
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime
            .block_on(provider.preflight())
            .context("the lab's systemd hosts cannot run here")?;
        Ok(Self {
            provider,
            runtime,
            dir: tempfile::tempdir()?,
            hosts: BTreeMap::new(),
            outsider: None,
            pids: Vec::new(),
            torn_down: false,
        })
    }

    /// The login key PromGuard is given (the lab's hosts let it in).
    fn key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// Makes the login key, the five servers (at once) and the outsider.
    fn create(&mut self) -> Result<()> {
        crate::run(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "promguard-e2e-existing",
                    "-f",
                ])
                .arg(self.key()),
        )?;
        let public = std::fs::read_to_string(self.key().with_extension("pub"))?;
        let public = SshPublicKey::parse(public.trim()).map_err(anyhow::Error::msg)?;
        self.runtime
            .block_on(self.provider.register_ssh_key(&public))?;
        let requests: Vec<HostRequest> = SERVERS
            .iter()
            .map(|(name, server)| {
                Ok(HostRequest {
                    name: HostName::new(name)?,
                    role: match server {
                        Server::Monitor => Role::Monitor,
                        _ => Role::Node,
                    },
                    region: Region::new("lab")?,
                })
            })
            .collect::<Result<_>>()?;
        let hosts = self
            .runtime
            .block_on(self.provider.create_hosts(&requests))
            .context("cannot create the lab's hosts")?;
        let mut known_hosts = String::new();
        for host in hosts {
            let key = host
                .ssh_host_key
                .as_ref()
                .with_context(|| format!("the provider knows no host key of {}", host.name))?;
            known_hosts.push_str(&format!("{} {key}\n", host.public_address));
            self.pids
                .extend(self.provider.host_supervisor_pid(&host.name));
            self.pids.extend(self.provider.host_init_pid(&host.name));
            self.hosts.insert(host.name.to_string(), host);
        }
        std::fs::write(self.dir.path().join("known_hosts"), known_hosts)?;
        self.outsider = Some(
            self.runtime
                .block_on(self.provider.create_outsider(&HostName::new("outsider")?))?,
        );
        Ok(())
    }

    fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .get(name)
            .with_context(|| format!("the lab has no host {name}"))
    }

    fn address(&self, name: &str) -> Result<Ipv4Addr> {
        match self.host(name)?.public_address {
            IpAddr::V4(a) => Ok(a),
            IpAddr::V6(a) => bail!("lab host {name} has IPv6 address {a}"),
        }
    }

    fn outsider(&self) -> Result<&Outsider> {
        self.outsider.as_ref().context("the lab has no outsider")
    }

    /// Runs `script` with bash as root inside host `name` (entering its
    /// container's namespaces: no SSH, so the lab does not depend on what
    /// PromGuard changes), with `args` as its positional parameters.
    fn in_host(&self, name: &str, script: &str, args: &[&str]) -> Result<Output> {
        check_interrupted()?;
        let pid = self
            .provider
            .host_init_pid(&HostName::new(name)?)
            .with_context(|| format!("lab host {name} is not running"))?;
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-a", "--", "/usr/bin/env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LC_ALL=C.UTF-8",
                "bash",
                "-c",
                script,
                "lab",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot enter lab host {name}"))
    }

    /// [`Self::in_host`], failing with its stderr unless it succeeds;
    /// returns its stdout.
    fn in_host_ok(&self, name: &str, script: &str, args: &[&str]) -> Result<String> {
        let out = self.in_host(name, script, args)?;
        ensure!(
            out.status.success(),
            "on lab host {name}, `{}` failed ({}):\n{}{}",
            script.lines().next().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Prepares every server the way its user runs it (all at once; one
    /// apt run each), then drops the inbound UDP of `nat-1` in the hub.
    fn prepare(&self, deployment: &str) -> Result<()> {
        let prometheus_yml = user_prometheus_config(deployment)?;
        let web_port = WEB_PORT.to_string();
        let wg_port = USER_WG_PORT.to_string();
        let results: Vec<Result<String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = SERVERS
                .iter()
                .map(|(name, server)| {
                    let args: Vec<&str> = match server {
                        Server::Monitor => vec!["monitor", &prometheus_yml],
                        Server::Web => vec!["web", &web_port],
                        Server::WireGuard => vec!["wireguard", &wg_port],
                        Server::Sudo => vec!["sudo", SUDO_USER],
                        Server::Nat => vec!["plain"],
                    };
                    scope.spawn(move || {
                        // Boot finished first: the script enables units.
                        self.in_host_ok(
                            name,
                            "timeout 120 systemctl is-system-running --wait >/dev/null || { systemctl --failed --no-legend; exit 1; }",
                            &[],
                        )?;
                        self.in_host_ok(name, PREPARE_SH, &args)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| bail!("preparing a host panicked"))
                })
                .collect()
        });
        for ((name, _), result) in SERVERS.iter().zip(results) {
            result.with_context(|| format!("cannot prepare lab host {name}"))?;
        }
        // The NAT: in the hub, whose bridge hands bridged IPv4 to the inet
        // hooks (br_netfilter), only UDP flows nat-1 started reach it.
        let hub = self.provider.hub_netns();
        crate::run(Command::new("ip").args([
            "netns",
            "exec",
            &hub,
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=1",
        ]))?;
        let ruleset = format!(
            "table inet lab_nat {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ip daddr {} meta l4proto udp ct state new counter drop\n  }}\n}}\n",
            self.address("nat-1")?
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &hub, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(
            &mut nft.stdin.take().context("nft's stdin")?,
            ruleset.as_bytes(),
        )?;
        ensure!(
            nft.wait()?.success(),
            "nft refused the lab's NAT rule:\n{ruleset}"
        );
        Ok(())
    }

    /// Checks that each server is as its user runs it, so that what the
    /// scenario finds later is PromGuard's doing.
    fn check_prepared(&self, deployment: &str) -> Result<()> {
        // Every login the config names works, with the lab's own client.
        for (name, server) in SERVERS {
            let user = match server {
                Server::Sudo => SUDO_USER,
                _ => "root",
            };
            let out = self.ssh(name, user, "sudo -n true")?;
            ensure!(
                out.status.success(),
                "{user}@{name} cannot log in and sudo: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = self.ssh("sudo-1", "root", "true")?;
        ensure!(!out.status.success(), "root logs in to sudo-1");

        let ufw = self.in_host_ok("web-1", "ufw status verbose", &[])?;
        ensure!(
            ufw.contains("Status: active")
                && ufw.contains("deny (incoming)")
                && ufw.contains(&format!("{WEB_PORT}/tcp")),
            "web-1's ufw is not active with incoming denied and {WEB_PORT}/tcp allowed:\n{ufw}"
        );
        self.check_web_server("before up")?;

        let wg = self.in_host_ok(
            "wg-1",
            "systemctl is-enabled wg-quick@wg0.service; systemctl is-active wg-quick@wg0.service; wg show wg0 listen-port",
            &[],
        )?;
        ensure!(
            wg.split_whitespace().collect::<Vec<_>>() == ["enabled", "active", "51820"],
            "wg-1's wg0 is not enabled, up and on 51820: {wg:?}"
        );

        let packages = self.in_host_ok(
            "mon-1",
            "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' prometheus prometheus-node-exporter 2>/dev/null; true",
            &[],
        )?;
        ensure!(
            packages
                .lines()
                .any(|l| l.starts_with("ii") && l.ends_with(" prometheus"))
                && !packages.contains("ii  prometheus-node-exporter"),
            "mon-1 has not prometheus without node_exporter: {packages:?}"
        );
        self.check_user_job(Duration::from_secs(3 * SCRAPE_SECONDS + 10))?;
        let config = self
            .prometheus_api("/api/v1/status/config")?
            .context("mon-1's Prometheus does not answer")?;
        let job = existing_job_name(&DeploymentName::new(deployment)?);
        ensure!(
            config["data"]["yaml"]
                .as_str()
                .is_some_and(|y| y.contains(&job)),
            "mon-1's Prometheus has no job {job}: {config}"
        );

        // A UDP packet from the outsider to nat-1 is dropped in the hub.
        let nat = self.address("nat-1")?;
        let outsider = self.outsider()?;
        Command::new("ip")
            .args(["netns", "exec", &outsider.netns, "bash", "-c"])
            .arg(format!("echo probe > /dev/udp/{nat}/{USER_WG_PORT}"))
            .status()?;
        let rules = Command::new("ip")
            .args(["netns", "exec", &self.provider.hub_netns()])
            .args(["nft", "list", "chain", "inet", "lab_nat", "forward"])
            .output()?;
        let rules = String::from_utf8_lossy(&rules.stdout);
        ensure!(
            !rules.contains("counter packets 0 "),
            "the lab's NAT rule dropped no UDP packet of the outsider to nat-1:\n{rules}"
        );
        eprintln!("e2e-existing: lab: every login works (deploy@sudo-1 with sudo, not root); web-1's ufw is active and its web server answers; wg-1's wg0 is up on 51820; mon-1's Prometheus scrapes its own job; nat-1's inbound UDP is dropped");
        Ok(())
    }

    /// Runs `command` on host `name` as `user` over SSH with the lab's
    /// key and known_hosts, from the hub (the system's OpenSSH client, not
    /// PromGuard's).
    fn ssh(&self, name: &str, user: &str, command: &str) -> Result<Output> {
        check_interrupted()?;
        let address = self.address(name)?;
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.provider.hub_netns(),
                "ssh",
                "-F",
                "/dev/null",
            ])
            .arg("-i")
            .arg(self.key())
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg(format!("{user}@{address}"))
            .arg(command)
            .stdin(Stdio::null())
            .env_remove("SSH_AUTH_SOCK")
            .output()
            .context("cannot run ssh")
    }

    /// `curl` of `path` on mon-1's Prometheus, inside mon-1: the JSON
    /// answer, `None` while it does not answer.
    fn prometheus_api(&self, path: &str) -> Result<Option<Value>> {
        let out = self.in_host(
            "mon-1",
            "curl -fsS --max-time 3 \"http://127.0.0.1:9090$1\"",
            &[path],
        )?;
        if !out.status.success() {
            return Ok(None);
        }
        let body = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("mon-1's Prometheus answered {path} with no JSON"))?;
        Ok(Some(body))
    }

    /// The active targets of mon-1's Prometheus.
    fn active_targets(&self) -> Result<Vec<Value>> {
        Ok(self
            .prometheus_api("/api/v1/targets?state=active")?
            .and_then(|b| b["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default())
    }

    /// Waits (at most `within`) until the user's own job is up.
    fn check_user_job(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let targets = self.active_targets()?;
            let own: Vec<&Value> = targets
                .iter()
                .filter(|t| t["scrapePool"] == USER_JOB)
                .collect();
            if !own.is_empty() && own.iter().all(|t| t["health"] == "up") {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the user's own job {USER_JOB} is not up in mon-1's Prometheus: {own:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits (at most `within`) until the job PromGuard's targets come in
    /// has one target per lab host, each up and scraped at a WireGuard
    /// address, and the user's own job is up too.
    fn check_targets(&self, deployment: &str, within: Duration) -> Result<()> {
        let job = existing_job_name(&DeploymentName::new(deployment)?);
        // node_exporter on every host, and web-1's managed exporter.
        let mut wanted: Vec<(String, String)> = self
            .hosts
            .keys()
            .map(|h| (h.clone(), "9100".to_owned()))
            .chain(std::iter::once((
                "web-1".to_owned(),
                MANAGED_EXPORTER.2.to_string(),
            )))
            .collect();
        wanted.sort();
        let deadline = Instant::now() + within;
        loop {
            let targets = self.active_targets()?;
            let ours: BTreeMap<(String, String), (String, String, String)> = targets
                .iter()
                .filter(|t| t["scrapePool"] == job.as_str())
                .map(|t| {
                    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                    let url = s(&t["scrapeUrl"]);
                    let port = url
                        .rsplit_once(':')
                        .map(|(_, p)| p.trim_end_matches("/metrics").to_owned())
                        .unwrap_or_default();
                    (
                        (s(&t["labels"]["instance"]), port),
                        (url, s(&t["health"]), s(&t["lastError"])),
                    )
                })
                .collect();
            let got: Vec<(String, String)> = ours.keys().cloned().collect();
            let all_up = got == wanted
                && ours.values().all(|(url, health, _)| {
                    health == "up" && url.starts_with("http://10.0.0.") && url.ends_with("/metrics")
                });
            if all_up {
                return self.check_user_job(within);
            }
            ensure!(
                Instant::now() < deadline,
                "in mon-1's Prometheus, job {job} does not have every lab host up at a WireGuard address (wanted {wanted:?}); its targets (instance: url, health, error): {ours:#?}\non mon-1:\n{}",
                self.discovery_log()?
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// What the user's Prometheus on mon-1 made of PromGuard's targets
    /// files: the directory, and what its file discovery logged (for
    /// messages when targets are missing).
    fn discovery_log(&self) -> Result<String> {
        let out = self.in_host(
            "mon-1",
            "ls -l /etc/promguard/targets; journalctl -u prometheus.service --no-pager | grep -i 'discovery\\|file watch' | tail -n 5",
            &[],
        )?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// web-1's web server answers the outsider.
    fn check_web_server(&self, when: &str) -> Result<()> {
        let url = format!("http://{}:{WEB_PORT}/", self.address("web-1")?);
        let out = Command::new("ip")
            .args(["netns", "exec", &self.outsider()?.netns])
            .args(["curl", "-fsS", "--max-time", "5", &url])
            .output()?;
        let body = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && body.contains("the web server of web-1"),
            "{when}, web-1's web server does not answer the outsider at {url}: {}{body}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Every lab host still runs the container it was created with
    /// (PromGuard destroyed and rebooted none).
    fn check_still_running(&self) -> Result<()> {
        for name in self.hosts.keys() {
            let init = self.provider.host_init_pid(&HostName::new(name)?);
            ensure!(
                init.is_some_and(|pid| self.pids.contains(&pid)),
                "lab host {name} no longer runs the system it was created with"
            );
        }
        Ok(())
    }

    /// What is compared before `up` and after `down`, of hosts `names`:
    /// [`SNAPSHOT_SH`]'s output and the host's nftables ruleset (read in
    /// its network namespace with this machine's nft: the host may have
    /// none installed).
    fn snapshot_of(&self, names: &[&str]) -> Result<Vec<(String, String)>> {
        names
            .iter()
            .map(|name| {
                let mut text = self.in_host_ok(name, SNAPSHOT_SH, &[])?;
                let netns = self
                    .provider
                    .host_netns(&HostName::new(name)?)
                    .with_context(|| format!("lab host {name} has no namespace"))?;
                let out = Command::new("ip")
                    .args(["netns", "exec", &netns, "nft", "-s", "list", "ruleset"])
                    .output()?;
                ensure!(
                    out.status.success(),
                    "cannot list {name}'s nftables ruleset: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                text.push_str("## nftables ruleset\n");
                text.push_str(&String::from_utf8_lossy(&out.stdout));
                Ok(((*name).to_owned(), text))
            })
            .collect()
    }

    /// [`Self::snapshot_of`] every lab host.
    fn snapshots(&self) -> Result<Vec<(String, String)>> {
        let names: Vec<&str> = self.hosts.keys().map(String::as_str).collect();
        self.snapshot_of(&names)
    }

    /// The snapshots plus the modification times of what PromGuard
    /// writes on a host, and the processes of its services: what a no-op
    /// `up` must leave as it is.
    fn fingerprints(&self) -> Result<Vec<(String, String)>> {
        let mut all = self.snapshots()?;
        for (name, text) in &mut all {
            text.push_str(&self.in_host_ok(
                name,
                "echo '## files and services of PromGuard'; find /etc/promguard /etc/wireguard -type f -printf '%p %T@\\n' 2>/dev/null | sort; systemctl show -p MainPID --value prometheus-node-exporter.service; pgrep -x wireguard-go | sort",
                &[],
            )?);
        }
        Ok(all)
    }

    /// Destroys the lab and checks that nothing of it is left.
    fn tear_down(&mut self) -> Result<()> {
        self.torn_down = true;
        self.provider
            .destroy_deployment_blocking()
            .context("cannot tear the lab down")?;
        let name = self.provider.deployment().to_string();
        crate::e2e::check_gone(&name, &self.pids)?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        ensure!(
            !mounts.contains(&format!("/local/{name}/")),
            "mounts of the lab remain:\n{mounts}"
        );
        Ok(())
    }
}

impl Drop for Lab {
    /// Tears the lab down if [`Lab::tear_down`] did not run (a panic).
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(err) = self.provider.destroy_deployment_blocking() {
                eprintln!("e2e-existing: cannot tear the lab down: {err}");
            }
        }
    }
}

/// The user's Prometheus config on mon-1: its own job, and the one
/// PromGuard tells users to add.
fn user_prometheus_config(deployment: &str) -> Result<String> {
    let job = existing_job_name(&DeploymentName::new(deployment)?);
    Ok(format!(
        "# The user's own Prometheus, set up before PromGuard.\n\
         global:\n  scrape_interval: {SCRAPE_SECONDS}s\n  evaluation_interval: {SCRAPE_SECONDS}s\n\
         scrape_configs:\n  - job_name: {USER_JOB}\n    static_configs:\n      - targets: ['localhost:9090']\n{}",
        render_existing_job(&job)
    ))
}

/// What one `promguard` run printed.
struct Run {
    status: std::process::ExitStatus,
    /// stdout, then stderr.
    text: String,
}

/// The `promguard` binary as the lab's user runs it: in the lab's hub
/// namespace (on the hosts' network), with a home of its own (an empty
/// `~/.ssh/known_hosts`, no ssh-agent) and a config in a temporary
/// directory (where its state goes too).
struct Promguard {
    bin: PathBuf,
    hub: String,
    dir: tempfile::TempDir,
    deployment: String,
    key: PathBuf,
    /// The servers' addresses, by name.
    addresses: BTreeMap<String, Ipv4Addr>,
}

impl Promguard {
    fn new(lab: &Lab, bin: &Path, deployment: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("home/.ssh"))?;
        std::fs::write(dir.path().join("home/.ssh/known_hosts"), "")?;
        let addresses = lab
            .hosts
            .keys()
            .map(|name| Ok((name.clone(), lab.address(name)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            bin: bin.to_owned(),
            hub: lab.provider.hub_netns(),
            dir,
            deployment: deployment.to_owned(),
            key: lab.key(),
            addresses,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("promguard.toml")
    }

    /// Writes the config naming all five servers by address; with
    /// `wg1_elsewhere`, wg-1 gets an interface and port of its own.
    fn write_config(&self, wg1_elsewhere: bool) -> Result<()> {
        self.write_config_with(wg1_elsewhere, SUDO_USER)
    }

    /// [`Self::write_config`] with `sudo_user` as sudo-1's login user.
    fn write_config_with(&self, wg1_elsewhere: bool, sudo_user: &str) -> Result<()> {
        let address = |name: &str| -> Result<Ipv4Addr> {
            self.addresses
                .get(name)
                .copied()
                .with_context(|| format!("no lab host {name}"))
        };
        let wg1 = match wg1_elsewhere {
            true => "wireguard = { interface = \"wg1\", port = 51821 }\n",
            false => "",
        };
        let text = format!(
            "# Servers the user runs already: PromGuard creates none.\n\
             [deployment]\nname = \"{deployment}\"\n\n\
             [prometheus]\nscrape_interval = \"{SCRAPE_SECONDS}s\"\n\n\
             [ssh]\nprivate_key = \"{key}\"\n\n\
             [monitor]\nname = \"mon-1\"\naddress = \"{mon}\"\nprometheus = \"existing\"\nprometheus_api = \"127.0.0.1:9090\"\n\n\
             [[nodes.host]]\nname = \"web-1\"\naddress = \"{web}\"\n\
             exporters = [{{ name = \"{exporter}\", package = \"{package}\", args = [\"-procnames=sshd\"] }}]\n\n\
             [[nodes.host]]\nname = \"wg-1\"\naddress = \"{wg}\"\n{wg1}\n\
             [[nodes.host]]\nname = \"sudo-1\"\naddress = \"{sudo}\"\nssh_user = \"{sudo_user}\"\n\n\
             [[nodes.host]]\nname = \"nat-1\"\naddress = \"{nat}\"\nwireguard = {{ inbound = false }}\n",
            deployment = self.deployment,
            exporter = MANAGED_EXPORTER.0,
            package = MANAGED_EXPORTER.1,
            key = self.key.display(),
            mon = address("mon-1")?,
            web = address("web-1")?,
            wg = address("wg-1")?,
            sudo = address("sudo-1")?,
            nat = address("nat-1")?,
        );
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Runs `promguard ARGS` (stdin closed: no terminal to answer a
    /// prompt), ending it after [`PROMGUARD_TIMEOUT`].
    fn run(&self, args: &[&str]) -> Result<Run> {
        check_interrupted()?;
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.hub])
            .arg(&self.bin)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("HOME", self.dir.path().join("home"))
            .env_remove("SSH_AUTH_SOCK")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let mut stdout = child.stdout.take().context("promguard's stdout")?;
        let mut stderr = child.stderr.take().context("promguard's stderr")?;
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > PROMGUARD_TIMEOUT || crate::e2e_fake::interrupted() {
                // `ip netns exec` became promguard (it execs): this is its PID.
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "promguard {} did not end within {PROMGUARD_TIMEOUT:?} (or was interrupted); ended it",
                    args.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = format!(
            "{}{}",
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default()
        );
        eprintln!(
            "e2e-existing: promguard {} ended ({status}) after {:.1?}",
            args.join(" "),
            started.elapsed()
        );
        Ok(Run { status, text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_saying_it_keeps_existing_hosts_is_recognised_in_other_words() {
        for said in [
            "Existing hosts are not destroyed: web-1, wg-1",
            "removed PromGuard from 5 host(s) you run (mon-1, nat-1); they were not destroyed and are as PromGuard found them.",
            "mon-1 (existing): PromGuard's files removed; the host is left running",
            "wg-1: PromGuard removed (the host stays)",
            "Will not destroy 5 existing host(s)",
        ] {
            assert!(says_existing_hosts_stay(said), "{said}");
        }
        for said in [
            "Destroying existing hosts",
            "Destroyed 5 hosts",
            "mon-1: destroyed",
            "",
        ] {
            assert!(!says_existing_hosts_stay(said), "{said}");
        }
    }

    #[test]
    fn the_users_prometheus_config_has_its_own_job_and_promguards() {
        let yml = user_prometheus_config("ex1").unwrap();
        assert!(yml.contains("job_name: self"), "{yml}");
        assert!(yml.contains("promguard-ex1"), "{yml}");
        assert!(yml.contains("/etc/promguard/targets/*.json"), "{yml}");
    }
}
