//! The attacker's-eye suite (`cargo xtask e2e --attack`): a local
//! deployment (a monitor and two nodes on namespace hosts) attacked from
//! an outsider on its underlay, which is no part of it, and from inside a
//! node, as docs/security.md promises it withstands:
//!
//! 1. port scans with nmap over IPv4 and IPv6 (the suite gives every host
//!    and the outsider an IPv6 address on the underlay too: dual stack),
//!    every TCP port and the common UDP ports;
//! 2. a packet from the underlay with the monitor's WireGuard address as
//!    its source, to a node's exporter;
//! 3. a DNAT-published extra exporter (a "container" behind node 1, as
//!    `docker run -p 9187:9187` makes one) probed from the outsider;
//! 4. a node that rewrites its own WireGuard peers to reach the other node
//!    and the monitor's Prometheus;
//! 5. a WireGuard peer with a made-up key that knows the monitor's public
//!    key;
//! 6. everything PromGuard printed during the suite, at `-vv`, searched
//!    for every private key, preshared key and token of the deployment.
//!
//! Each attack is paired with a control that shows the attack really
//! reached its target (a counter before PromGuard's chain, a ping over
//! IPv6, a scrape through the published port), so that no check passes
//! because the attack went nowhere. The suite ends with a table of what it
//! observed, which docs/security.md records. Hostile input values are
//! tested next to the code that parses them (crates/promguard-cli/tests/
//! hostile_input.rs and the parsers' unit tests).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_core::{DeploymentName, HostName};

use crate::e2e::Deployment;

const MONITOR: &str = "promguard-monitor-1";
const NODES: [&str; 2] = ["promguard-node-1", "promguard-node-2"];
/// The extra exporter node 1 publishes with DNAT.
const PUBLISHED_PORT: u16 = 9187;
/// The IPv6 prefix the suite adds to the underlay (a ULA /64: the bridge
/// is the deployment's own, so no other network sees it).
const UNDERLAY_V6: &str = "fd70:6767:0:1";
/// The "container" behind node 1: its namespace and addresses.
const CONTAINER_NET: (&str, &str) = ("172.31.255.1", "172.31.255.2");

/// One line of the results table.
struct Row {
    attack: &'static str,
    expected: &'static str,
    observed: String,
}

/// What the suite made outside PromGuard and the provider, undone on drop
/// (also when a check fails): processes it started, by PID, and the
/// container namespace.
#[derive(Default)]
struct Made {
    children: Vec<Child>,
    netns: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
}

impl Drop for Made {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// Runs `script` with sh inside network namespace `netns`; fails with its
/// stderr unless it succeeds.
fn in_ns(netns: &str, script: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", script])
        .output()
        .with_context(|| format!("cannot run ip netns exec {netns}"))?;
    ensure!(
        out.status.success(),
        "in {netns}, `{script}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a TCP connection from `netns` to `addr`:`port` succeeds within
/// 3 s.
fn connects(netns: &str, addr: IpAddr, port: u16) -> Result<bool> {
    crate::e2e::connect_from(netns, std::net::SocketAddr::new(addr, port))
}

/// Runs promguard at `-vv`, so that the secret scan sees its debug output.
fn pg(d: &Deployment, args: &[&str]) -> Result<String> {
    let mut all = vec!["-vv"];
    all.extend_from_slice(args);
    d.ok(&all)
}

fn pg_ssh(d: &Deployment, host: &str, command: &str) -> Result<String> {
    pg(d, &["ssh", host, "--", command])
}

fn status(d: &Deployment) -> Result<serde_json::Value> {
    let out = d.promguard(&["-vv", "status", "--json"])?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "status --json printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn write_config(d: &Deployment, published: bool) -> Result<()> {
    let exporter = if published {
        format!("exporters = [{{ name = \"published\", port = {PUBLISHED_PORT} }}]\n")
    } else {
        String::new()
    };
    let text = format!(
        "[deployment]\nname = \"{}\"\nprovider = \"local\"\n\n\
         [prometheus]\nscrape_interval = \"2s\"\n\n\
         [monitor]\nname = \"{MONITOR}\"\nregion = \"tor1\"\n\n\
         [[nodes.host]]\nname = \"{}\"\nregion = \"lon1\"\n{exporter}\n\
         [[nodes.host]]\nname = \"{}\"\nregion = \"sfo2\"\n\n\
         [ssh]\nprivate_key = \"{}\"\n\n\
         [alerts.email]\nto = \"ops@example.com\"\nfrom = \"promguard@example.com\"\n\
         smarthost = \"smtp.example.com:587\"\nusername = \"promguard\"\n\
         password_env = \"{SMTP_PASSWORD_VAR}\"\n",
        d.name,
        NODES[0],
        NODES[1],
        login_key(d).display()
    );
    std::fs::write(d.config_path(), text)?;
    Ok(())
}

/// The environment variable the SMTP password of the suite's
/// `[alerts.email]` comes from.
const SMTP_PASSWORD_VAR: &str = "PROMGUARD_ATTACK_SMTP_PASSWORD";

/// The deployment's SSH login key, made by [`run`].
fn login_key(d: &Deployment) -> std::path::PathBuf {
    d.dir.path().join("login_ed25519")
}

/// A host of the deployment as the state records it.
struct Host {
    netns: String,
    public: Ipv4Addr,
    public_v6: Ipv6Addr,
    wireguard: IpAddr,
    public_key: String,
}

fn hosts(d: &Deployment, provider: &LocalProvider) -> Result<BTreeMap<String, Host>> {
    let state = d.typed_state("up")?;
    let mut out = BTreeMap::new();
    for (name, record) in &state.hosts {
        let public = match record.public_address {
            Some(IpAddr::V4(a)) => a,
            other => bail!("{name} has no IPv4 underlay address: {other:?}"),
        };
        let netns = provider
            .host_netns(name)
            .with_context(|| format!("the provider knows no namespace of {name}"))?;
        out.insert(
            name.to_string(),
            Host {
                netns,
                public,
                public_v6: v6_of(public),
                wireguard: record.wireguard_address,
                public_key: record.public_key.to_string(),
            },
        );
    }
    Ok(out)
}

/// The IPv6 underlay address the suite gives the holder of `v4`.
fn v6_of(v4: Ipv4Addr) -> Ipv6Addr {
    let [.., last] = v4.octets();
    format!("{UNDERLAY_V6}::{last}")
        .parse()
        .expect("a valid IPv6 address")
}

/// Runs the suite.
pub fn run(root: &Path) -> Result<()> {
    let bin = crate::cli(root)?;
    let name = format!("atk{}", std::process::id() % 100000);
    let mut d = Deployment::local(bin, name.clone())?;
    // Made up per run, so that finding it in the output means a leak.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let smtp_password = format!("smtp-{}-{nanos:x}", std::process::id());
    d.env
        .push((SMTP_PASSWORD_VAR.to_owned(), smtp_password.clone()));
    let provider = LocalProvider::new(DeploymentName::new(&name)?, LocalOptions::default());
    crate::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(login_key(&d)),
    )?;
    let mut made = Made::default();
    let rows = attacks(&d, &provider, &mut made, &smtp_password)?;
    drop(made);
    d.ok(&["down", "--yes"])?;
    let mut table = String::from("| attack | expected | observed | test |\n|---|---|---|---|\n");
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | `cargo xtask e2e --attack` |\n",
            r.attack, r.expected, r.observed
        ));
    }
    println!("{table}");
    eprintln!("attack: every attack failed as it should");
    Ok(())
}

fn attacks(
    d: &Deployment,
    provider: &LocalProvider,
    made: &mut Made,
    smtp_password: &str,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    write_config(d, false)?;
    pg(d, &["up", "--yes"])?;
    let mut secrets = secrets_of(d)?;
    let hosts = hosts(d, provider)?;
    let outsider = runtime.block_on(provider.create_outsider(&HostName::new("outsider")?))?;
    let out_ns = outsider.netns.clone();
    eprintln!("attack: deployment up; outsider at {}", outsider.address);

    // Dual stack: an IPv6 address on every underlay interface.
    for h in hosts.values() {
        in_ns(
            &h.netns,
            &format!("ip -6 addr add {}/64 dev eth0 nodad", h.public_v6),
        )?;
    }
    let out_v6 = v6_of(outsider.address);
    in_ns(
        &out_ns,
        &format!("ip -6 addr add {out_v6}/64 dev eth0 nodad"),
    )?;
    for (name, h) in &hosts {
        // Control: IPv6 reaches every host (and PromGuard's ruleset lets
        // neighbour discovery and echo requests through).
        in_ns(
            &out_ns,
            &format!("busybox ping -6 -c 1 -W 3 {}", h.public_v6),
        )
        .with_context(|| format!("{name} does not answer a ping over IPv6"))?;
    }

    // 1. Port scans.
    let v4: Vec<String> = hosts.values().map(|h| h.public.to_string()).collect();
    let v6: Vec<String> = hosts.values().map(|h| h.public_v6.to_string()).collect();
    let tcp4 = nmap(&out_ns, &["-sS", "-p-"], &v4)?;
    let tcp6 = nmap(&out_ns, &["-6", "-sS", "-p-"], &v6)?;
    let udp4 = nmap(&out_ns, &["-sU", "--top-ports", "100"], &v4)?;
    let udp6 = nmap(&out_ns, &["-6", "-sU", "--top-ports", "100"], &v6)?;
    for (family, scan, addrs) in [("IPv4", &tcp4, &v4), ("IPv6", &tcp6, &v6)] {
        ensure!(
            scan.len() == addrs.len(),
            "the {family} TCP scan reported {} of {} hosts: {scan:?}",
            scan.len(),
            addrs.len()
        );
        for (addr, open) in scan {
            let allowed: BTreeSet<String> = ["22/tcp".to_owned()].into();
            ensure!(
                open.is_subset(&allowed),
                "over {family}, {addr} has open TCP ports {open:?}; only SSH may be open"
            );
        }
    }
    for (addr, open) in &tcp4 {
        ensure!(
            open.contains("22/tcp"),
            "the IPv4 scan did not see SSH open on {addr}: the scan saw nothing"
        );
    }
    for (family, scan) in [("IPv4", &udp4), ("IPv6", &udp6)] {
        for (addr, open) in scan {
            ensure!(
                open.is_empty(),
                "over {family}, {addr} answers on UDP ports {open:?}"
            );
        }
    }
    rows.push(Row {
        attack:
            "nmap from an outsider on the underlay: every TCP port of every host, IPv4 and IPv6",
        expected: "only SSH open (the exporters, Prometheus and everything else filtered)",
        observed: format!(
            "open: {}",
            summarize(&tcp4, "IPv4") + "; " + &summarize(&tcp6, "IPv6")
        ),
    });
    rows.push(Row {
        attack:
            "nmap from the outsider: the 100 most common UDP ports of every host, IPv4 and IPv6",
        expected: "none answers (WireGuard answers only a valid handshake)",
        observed: format!(
            "no open UDP port on {} hosts over IPv4 and IPv6",
            udp4.len()
        ),
    });
    eprintln!("attack: 1. scans: only SSH open over IPv4 and IPv6, no UDP port answers");

    // 2. A packet from the underlay that claims to be the monitor.
    let node1 = &hosts[NODES[0]];
    let monitor = &hosts[MONITOR];
    let (arrived, delivered) = spoofed_probe(&out_ns, node1, monitor.wireguard)?;
    ensure!(
        arrived > 0,
        "the spoofed SYN never reached node 1: the attack went nowhere"
    );
    ensure!(
        delivered == 0,
        "a SYN from the underlay with the monitor's address {} passed node 1's firewall",
        monitor.wireguard
    );
    rows.push(Row {
        attack: "a SYN to a node's exporter (WireGuard address, port 9100) from the underlay, with the monitor's WireGuard address as source",
        expected: "dropped",
        observed: format!("{arrived} packet(s) reached the node, 0 passed its firewall"),
    });
    eprintln!("attack: 2. a spoofed monitor address from the underlay is dropped");

    // 3. A DNAT-published exporter behind node 1.
    container(made, node1)?;
    write_config(d, true)?;
    pg(d, &["up", "--yes"])?;
    secrets.extend(secrets_of(d)?);
    let published_up = status(d)?["targets"]
        .as_array()
        .context("status has no targets")?
        .iter()
        .any(|t| {
            t["health"] == "up"
                && t["scrape_url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&format!(":{PUBLISHED_PORT}/metrics")))
        });
    ensure!(
        published_up,
        "the monitor cannot scrape the published exporter: the control failed"
    );
    ensure!(
        !connects(&out_ns, IpAddr::V4(node1.public), PUBLISHED_PORT)?,
        "the outsider reached the DNAT-published port {PUBLISHED_PORT} of node 1"
    );
    ensure!(
        !connects(&out_ns, IpAddr::V6(node1.public_v6), PUBLISHED_PORT)?,
        "the outsider reached the DNAT-published port {PUBLISHED_PORT} of node 1 over IPv6"
    );
    rows.push(Row {
        attack: "connect from the outsider to an extra exporter port that node 1 publishes with DNAT (a container behind `-p 9187:9187`)",
        expected: "refused; the monitor still scrapes it over WireGuard",
        observed: "no connection over IPv4 or IPv6; the monitor's target is up".into(),
    });
    eprintln!(
        "attack: 3. a DNAT-published exporter is closed to the outsider, open to the monitor"
    );

    // 4. A node that rewrites its own WireGuard peers.
    let node2 = &hosts[NODES[1]];
    let iface = "wg0";
    let mon_key = &monitor.public_key;
    let before = pg_ssh(d, NODES[0], &format!("wg show {iface} allowed-ips"))?;
    let probe = |to: IpAddr, port: u16| -> Result<bool> {
        let out = pg_ssh(
            d,
            NODES[0],
            &format!(
                "timeout 3 bash -c 'exec 3<>/dev/tcp/{to}/{port}' && echo open || echo closed"
            ),
        )?;
        Ok(out.trim_end().ends_with("open"))
    };
    // Through the monitor: every WireGuard address routed to it.
    pg_ssh(
        d,
        NODES[0],
        &format!("wg set {iface} peer {mon_key} allowed-ips 10.0.0.0/8"),
    )?;
    let via_monitor = probe(node2.wireguard, 9100)?;
    let to_prometheus = probe(monitor.wireguard, 9090)?;
    // Directly: node 2 as a peer of node 1.
    pg_ssh(
        d,
        NODES[0],
        &format!(
            "wg set {iface} peer {} endpoint {}:51820 allowed-ips {}/32 persistent-keepalive 1",
            node2.public_key, node2.public, node2.wireguard
        ),
    )?;
    let direct = probe(node2.wireguard, 9100)?;
    let handshakes = pg_ssh(d, NODES[0], &format!("wg show {iface} latest-handshakes"))?;
    let with_node2: u64 = handshakes
        .lines()
        .find_map(|l| l.strip_prefix(node2.public_key.as_str()))
        .and_then(|rest| rest.trim().parse().ok())
        .context("node 1 does not list node 2 as a peer")?;
    // Undo the rewrite.
    pg_ssh(
        d,
        NODES[0],
        &format!("wg set {iface} peer {} remove", node2.public_key),
    )?;
    for line in before.lines() {
        if let Some((key, ips)) = line.split_once('\t') {
            pg_ssh(
                d,
                NODES[0],
                &format!(
                    "wg set {iface} peer {key} allowed-ips {}",
                    ips.trim().replace(' ', ",")
                ),
            )?;
        }
    }
    ensure!(
        !via_monitor,
        "node 1 reached node 2's exporter through the monitor"
    );
    ensure!(
        !to_prometheus,
        "node 1 reached the monitor's Prometheus after rewriting its peers"
    );
    ensure!(!direct, "node 1 reached node 2's exporter directly");
    ensure!(
        with_node2 == 0,
        "node 2 completed a handshake with node 1: nodes can tunnel to each other"
    );
    check_all_up(d)?;
    rows.push(Row {
        attack: "root on node 1 routes all of 10.0.0.0/8 to the monitor and adds node 2 as a peer, then connects to node 2's exporter and the monitor's Prometheus",
        expected: "no connection: the monitor forwards nothing and admits only its own scrapes; node 2 knows no node 1",
        observed: "no connection to either; no handshake with node 2".into(),
    });
    eprintln!("attack: 4. a node that rewrites its peers reaches nothing");

    // 5. A WireGuard peer with a made-up key.
    let (handshake, received) = unknown_peer(made, &out_ns, monitor)?;
    ensure!(
        handshake == 0 && received == 0,
        "a peer with an unknown key got a handshake ({handshake}) or {received} bytes from the monitor"
    );
    let peers = pg_ssh(d, MONITOR, &format!("wg show {iface} peers"))?;
    ensure!(
        peers.lines().count() == NODES.len(),
        "the monitor has peers it was not given:\n{peers}"
    );
    rows.push(Row {
        attack: "the outsider runs wireguard-go with a made-up key and the monitor's public key and endpoint, and sends to the monitor's exporter",
        expected: "no handshake, no data",
        observed: format!("latest handshake {handshake}, {received} bytes received"),
    });
    eprintln!("attack: 5. an unknown WireGuard key gets no handshake");

    // Key material in flight: rotate every key, so that old and new keys
    // both pass through the run.
    pg(d, &["rotate", "--psk"])?;
    secrets.extend(secrets_of(d)?);
    pg(d, &["plan"])?;
    status(d)?;
    pg(d, &["render", NODES[0]])?;

    // 6. No secret in anything PromGuard printed.
    secrets.push(("the SMTP password".to_owned(), smtp_password.to_owned()));
    // Control: the password did reach the monitor, 0600.
    let stored = pg_ssh(
        d,
        MONITOR,
        "stat -c %a /etc/prometheus/alertmanager.yml && grep -c auth_password /etc/prometheus/alertmanager.yml",
    )?;
    ensure!(
        stored.split_whitespace().collect::<Vec<_>>() == ["600", "1"],
        "alertmanager.yml on the monitor is not 0600 with the password: {stored}"
    );
    let transcript = d.transcript.borrow().clone();
    ensure!(
        transcript.contains("DEBUG"),
        "the suite's output has no debug lines: -vv did not take effect"
    );
    for (what, secret) in &secrets {
        ensure!(
            !transcript.contains(secret.as_str()),
            "PromGuard printed {what} at -vv"
        );
    }
    rows.push(Row {
        attack: "everything PromGuard printed in this suite at `-vv` (up, up with a new exporter, rotate --psk, plan, status, render, ssh), searched for every key",
        expected: "no private key, preshared key, SSH login key or SMTP password",
        observed: format!(
            "none of {} secrets in {} KiB of output",
            secrets.len(),
            transcript.len() / 1024
        ),
    });
    eprintln!(
        "attack: 6. no secret in {} bytes of -vv output",
        transcript.len()
    );
    Ok(rows)
}

/// Every target up.
fn check_all_up(d: &Deployment) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(d)?;
        let down: Vec<String> = s["targets"]
            .as_array()
            .context("status has no targets")?
            .iter()
            .filter(|t| t["health"] != "up")
            .map(|t| t["scrape_url"].to_string())
            .collect();
        if down.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "targets are not up after the attack: {down:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The secrets of the deployment now: every WireGuard private key (and
/// one kept from before a rotation), every preshared key, and the body of
/// every private key file in the local provider's deployment directory
/// (the SSH login key).
fn secrets_of(d: &Deployment) -> Result<Vec<(String, String)>> {
    let state = d.state()?;
    let mut out = Vec::new();
    for (host, record) in state["hosts"].as_object().context("no hosts")? {
        for field in ["private_key", "previous_private_key"] {
            if let Some(key) = record[field].as_str() {
                out.push((format!("{host}'s {field}"), key.to_owned()));
            }
        }
    }
    for pair in state["preshared_keys"].as_array().into_iter().flatten() {
        for field in ["key", "previous"] {
            if let Some(key) = pair[field].as_str() {
                out.push((format!("a preshared key ({field})"), key.to_owned()));
            }
        }
    }
    let dir = Path::new("/var/lib/promguard/local").join(&d.name);
    for entry in walk(&dir).into_iter().chain([login_key(d)]) {
        let Ok(text) = std::fs::read_to_string(&entry) else {
            continue;
        };
        if text.contains("PRIVATE KEY-----") {
            // Each base64 line of the key's body on its own: a leak of
            // any part of it counts.
            for line in text.lines().filter(|l| l.len() >= 40 && !l.contains('-')) {
                out.push((format!("a line of {}", entry.display()), line.to_owned()));
            }
        }
    }
    ensure!(
        out.iter().any(|(what, _)| what.contains("private_key"))
            && out.iter().any(|(what, _)| what.contains("preshared")),
        "found no WireGuard private or preshared key in the state"
    );
    Ok(out)
}

/// Every file under `dir`, not following symlinks.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            out.extend(walk(&e.path()));
        } else if kind.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// Runs nmap in `netns` against `targets` and returns, per target, its
/// ports in state `open` (`22/tcp`); `open|filtered` is not open. Bounded:
/// each host at most 3 minutes.
fn nmap(
    netns: &str,
    args: &[&str],
    targets: &[String],
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let started = Instant::now();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "nmap",
            "-n",
            "-Pn",
            "--max-retries",
            "1",
        ])
        .args(["--min-rate", "20000", "--host-timeout", "180s", "-oG", "-"])
        .args(args)
        .args(targets)
        .output()
        .context("cannot run nmap (Debian package nmap)")?;
    ensure!(
        out.status.success(),
        "nmap {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "attack: nmap {} took {:.1?}",
        args.join(" "),
        started.elapsed()
    );
    let found = parse_grepable(&text);
    ensure!(
        !text.contains("Status: Timeout") && !text.contains("timed out"),
        "nmap timed out on a host:\n{text}"
    );
    Ok(found)
}

/// Parses nmap's grepable output: `Host: <addr> ()\tPorts: 22/open/tcp//ssh///, ...`.
fn parse_grepable(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("Host: ") else {
            continue;
        };
        let Some((addr, _)) = rest.split_once(' ') else {
            continue;
        };
        let Some((_, ports)) = rest.split_once("Ports: ") else {
            // The status line of a host comes first; the ports line
            // follows.
            found.entry(addr.to_owned()).or_default();
            continue;
        };
        let ports = ports.split('\t').next().unwrap_or("");
        let open = found.entry(addr.to_owned()).or_default();
        for port in ports.split(", ") {
            let fields: Vec<&str> = port.split('/').collect();
            if let [number, "open", proto, ..] = fields[..] {
                open.insert(format!("{}/{proto}", number.trim()));
            }
        }
    }
    found
}

fn summarize(scan: &BTreeMap<String, BTreeSet<String>>, family: &str) -> String {
    let mut by_ports: BTreeMap<String, usize> = BTreeMap::new();
    for open in scan.values() {
        let ports: Vec<&str> = open.iter().map(String::as_str).collect();
        let key = if ports.is_empty() {
            "none".to_owned()
        } else {
            ports.join(", ")
        };
        *by_ports.entry(key).or_default() += 1;
    }
    let parts: Vec<String> = by_ports
        .into_iter()
        .map(|(ports, n)| format!("{ports} on {n} host(s)"))
        .collect();
    format!("{family} {}", parts.join(", "))
}

/// Sends SYNs from the outsider, with `spoofed` as source, to node's
/// WireGuard address on port 9100 through its underlay address, and
/// returns how many reached the node and how many passed its firewall:
/// counted by a table of the suite's own in the node, one chain where
/// packets arrive (prerouting) and one after PromGuard's input chain (a packet PromGuard drops
/// never reaches a later chain of the same hook).
fn spoofed_probe(out_ns: &str, node: &Host, spoofed: IpAddr) -> Result<(u64, u64)> {
    let to = node.wireguard;
    in_ns(
        &node.netns,
        &format!(
            "nft -f - <<'EOF'\n\
             table inet attack_count {{\n\
             \tchain before {{ type filter hook prerouting priority raw; policy accept;\n\
             \t\tiifname \"eth0\" ip saddr {spoofed} tcp dport 9100 counter\n\t}}\n\
             \tchain after {{ type filter hook input priority filter + 10; policy accept;\n\
             \t\tiifname \"eth0\" ip saddr {spoofed} tcp dport 9100 counter\n\t}}\n\
             }}\nEOF"
        ),
    )?;
    let result = (|| -> Result<(u64, u64)> {
        in_ns(
            out_ns,
            &format!(
                "ip addr add {spoofed}/32 dev eth0 && ip route add {to}/32 via {} src {spoofed}",
                node.public
            ),
        )?;
        let reached = connects(out_ns, to, 9100)?;
        in_ns(
            out_ns,
            &format!("ip route del {to}/32; ip addr del {spoofed}/32 dev eth0"),
        )?;
        ensure!(!reached, "the outsider connected to {to}:9100 as {spoofed}");
        let counters = in_ns(&node.netns, "nft list table inet attack_count")?;
        let packets: Vec<u64> = counters
            .split("packets ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next()?.parse().ok())
            .collect();
        match packets[..] {
            [before, after] => Ok((before, after)),
            _ => bail!("cannot read the counters:\n{counters}"),
        }
    })();
    let _ = in_ns(&node.netns, "nft delete table inet attack_count");
    result
}

/// A "container" behind `node`: a namespace with a web server on
/// PUBLISHED_PORT, which the node publishes with a DNAT rule in a table of
/// its own, as Docker does.
fn container(made: &mut Made, node: &Host) -> Result<()> {
    let ns = format!("atk-ctr-{}", std::process::id());
    let status = Command::new("ip").args(["netns", "add", &ns]).status()?;
    ensure!(status.success(), "cannot add namespace {ns}");
    made.netns.push(ns.clone());
    let (gateway, address) = CONTAINER_NET;
    in_ns(
        &node.netns,
        &format!(
            "ip link add ctr0 type veth peer name eth0 netns {ns} && \
             ip addr add {gateway}/30 dev ctr0 && ip link set ctr0 up && \
             sysctl -qw net.ipv4.ip_forward=1 && \
             nft -f - <<'EOF'\n\
             table ip container_nat {{\n\
             \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n\
             \t\ttcp dport {PUBLISHED_PORT} dnat to {address}:{PUBLISHED_PORT}\n\t}}\n\
             }}\nEOF"
        ),
    )?;
    let root = tempfile::tempdir()?;
    std::fs::write(root.path().join("metrics"), "attack_container_up 1\n")?;
    in_ns(
        &ns,
        &format!(
            "ip addr add {address}/30 dev eth0 && ip link set eth0 up && \
             ip link set lo up && ip route add default via {gateway}"
        ),
    )?;
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, "busybox", "httpd", "-f", "-p"])
        .arg(PUBLISHED_PORT.to_string())
        .arg("-h")
        .arg(root.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start busybox httpd (Debian package busybox)")?;
    made.children.push(child);
    made.dirs.push(root);
    // Control: the container serves from inside its node.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !connects(&node.netns, address.parse()?, PUBLISHED_PORT)? {
        ensure!(
            Instant::now() < deadline,
            "the container's web server does not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs wireguard-go in the outsider with a made-up key, peered with the
/// monitor's public key at its endpoint, sends to the monitor for a few
/// seconds, and returns the latest handshake (0: none) and the bytes it
/// received.
fn unknown_peer(made: &mut Made, out_ns: &str, monitor: &Host) -> Result<(u64, u64)> {
    let key_file = tempfile::NamedTempFile::new()?;
    let key = Command::new("wg").arg("genkey").output()?;
    ensure!(key.status.success(), "wg genkey failed");
    std::fs::write(key_file.path(), &key.stdout)?;
    let child = Command::new("ip")
        .args(["netns", "exec", out_ns, "wireguard-go", "-f", "wgatk"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start wireguard-go")?;
    made.children.push(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_ns(out_ns, "ip link show wgatk").is_err() {
        ensure!(Instant::now() < deadline, "wireguard-go made no interface");
        std::thread::sleep(Duration::from_millis(100));
    }
    in_ns(
        out_ns,
        &format!(
            "wg set wgatk private-key {} peer {} endpoint {}:51820 allowed-ips {}/32 persistent-keepalive 1 && \
             ip addr add 10.255.0.99/32 dev wgatk && ip link set wgatk up && \
             ip route add {}/32 dev wgatk",
            key_file.path().display(),
            monitor.public_key,
            monitor.public,
            monitor.wireguard,
            monitor.wireguard
        ),
    )?;
    // Three connection attempts, each retrying SYNs, and keepalives every
    // second: several handshake initiations reach the monitor.
    for _ in 0..3 {
        let _ = connects(out_ns, monitor.wireguard, 9100)?;
    }
    let handshake = in_ns(out_ns, "wg show wgatk latest-handshakes")?;
    let transfer = in_ns(out_ns, "wg show wgatk transfer")?;
    let field = |text: &str, n: usize| -> Result<u64> {
        text.split_whitespace()
            .nth(n)
            .with_context(|| format!("no field {n} in {text:?}"))?
            .parse()
            .with_context(|| format!("field {n} of {text:?}"))
    };
    let sent = field(&transfer, 2)?;
    ensure!(
        sent > 0,
        "the made-up peer sent nothing: the attack went nowhere"
    );
    Ok((field(&handshake, 1)?, field(&transfer, 1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grepable_output_gives_the_open_ports_of_each_host() {
        let text = "# Nmap 7.93 scan\n\
                    Host: 198.18.0.2 ()\tStatus: Up\n\
                    Host: 198.18.0.2 ()\tPorts: 22/open/tcp//ssh///, 9100/filtered/tcp//jetdirect///\tIgnored State: filtered (65533)\n\
                    Host: 198.18.0.3 ()\tStatus: Up\n\
                    Host: 198.18.0.3 ()\tPorts: 53/open|filtered/udp//domain///, 161/open/udp//snmp///\n\
                    Host: 198.18.0.4 ()\tStatus: Up\n";
        let found = parse_grepable(text);
        assert_eq!(found["198.18.0.2"], BTreeSet::from(["22/tcp".to_owned()]));
        assert_eq!(found["198.18.0.3"], BTreeSet::from(["161/udp".to_owned()]));
        assert!(found["198.18.0.4"].is_empty());
        assert_eq!(found.len(), 3);
    }
}
