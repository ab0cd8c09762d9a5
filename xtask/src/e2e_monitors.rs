//! Several monitors end to end (`cargo xtask e2e --monitors`, issue 14),
//! on local namespace hosts.
//!
//! **Replicas.** Two replica monitors, three nodes and a storage host
//! running VictoriaMetrics (Debian's `victoria-metrics`, with
//! `-dedup.minScrapeInterval` equal to the scrape interval). Every node is
//! up in both monitors; VictoriaMetrics, queried through `promguard tunnel
//! --storage`, holds exactly one series per host and exporter, without the
//! replica labels, with one sample per scrape interval; Prometheus stopped
//! on one monitor for a minute leaves no gap in any node's series (the
//! other replica kept writing); `up` brings it back; a node cannot reach
//! the storage host, and an outsider reaches no monitor, exporter or
//! storage port, nor Alertmanager's API and gossip ports, which only the
//! other replica reaches. The replicas' Alertmanagers form one cluster:
//! when a node's WireGuard dies, both replicas fire the same alert, and
//! the webhook (busybox httpd on an outsider) gets it firing once, and
//! resolved after `up`, without the replica labels. A second `up` changes nothing;
//! `status` shows each monitor's remote_write queue.
//!
//! **Shards.** Two shards of one monitor each and six nodes: each node is
//! up in exactly its shard's monitor and in no other; adding a third shard
//! moves exactly the nodes the plan lists (and rendezvous hashing
//! predicts), each to the new shard, and every node is then up in exactly
//! its new shard's monitor.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_core::shards::{ShardId, Shards};
use promguard_core::{DeploymentName, HostName};
use serde_json::Value;

use crate::e2e::{check_gone, connect_from, http_get, url_encode, with_tunnel_to, Deployment};
use crate::e2e_alerts::{start_receiver, Receiver, RECEIVER_PORT};

/// The scrape interval, and so VictoriaMetrics' deduplication interval.
const SCRAPE_SECONDS: u64 = 5;
/// How long Prometheus stays stopped on one replica.
const OUTAGE: Duration = Duration::from_secs(60);
/// The longest gap allowed between two samples of a series in
/// VictoriaMetrics: three scrape intervals (the outage is twelve).
const MAX_GAP_MS: i64 = 3 * SCRAPE_SECONDS as i64 * 1000;

const MONITORS: [&str; 2] = ["promguard-monitor-1", "promguard-monitor-2"];
const STORAGE: &str = "promguard-storage-1";
const NODES: [&str; 3] = ["promguard-node-1", "promguard-node-2", "promguard-node-3"];

/// Runs both scenarios.
pub fn run(root: &Path) -> Result<()> {
    let bin = crate::cli(root)?;
    let started = Instant::now();
    replicas(&bin)?;
    shards(&bin)?;
    eprintln!("e2e --monitors: passed in {:.0?}", started.elapsed());
    Ok(())
}

/// A local deployment called `name` with `config` (the part after
/// `[deployment]`), and the provider that sees its hosts.
fn deployment(bin: &Path, prefix: &str, config: &str) -> Result<(Deployment, LocalProvider)> {
    let name = format!("{prefix}{}", std::process::id() % 100_000);
    let d = Deployment::local(bin.to_path_buf(), name.clone())?;
    std::fs::write(
        d.config_path(),
        format!(
            "[deployment]\nname = \"{name}\"\nprovider = \"local\"\n\n[prometheus]\nscrape_interval = \"{SCRAPE_SECONDS}s\"\n\n{config}"
        ),
    )?;
    let provider = LocalProvider::new(DeploymentName::new(&name)?, LocalOptions::default());
    Ok((d, provider))
}

/// `down`, then nothing of the deployment is left.
fn down(d: &Deployment, provider: &LocalProvider) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let hosts = runtime.block_on(promguard_cloud::CloudProvider::list_hosts(provider))?;
    let pids: Vec<u32> = hosts
        .iter()
        .filter_map(|h| provider.host_init_pid(&h.name))
        .collect();
    d.ok(&["down", "--yes"])?;
    check_gone(&d.name, &pids)
}

fn replicas(bin: &Path) -> Result<()> {
    let (d, provider) = deployment(
        bin,
        "mon",
        "[monitor]\nreplicas = 2\nregion = \"tor1\"\n\n[storage]\n\n[nodes]\ncount = 3\n",
    )?;
    // The webhook first: its address goes into the config.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outsider = runtime.block_on(provider.create_outsider(&HostName::new("receiver")?))?;
    let receiver = start_receiver(&outsider.netns)?;
    let mut text = std::fs::read_to_string(d.config_path())?;
    text.push_str(&format!(
        "\n[alerts]\ntarget_down_after = \"10s\"\ngroup_wait = \"2s\"\ngroup_interval = \"5s\"\n\
         webhooks = [\"http://{}:{RECEIVER_PORT}/cgi-bin/hook\"]\n",
        outsider.address
    ));
    std::fs::write(d.config_path(), text)?;
    let result = replicas_scenario(&d, &provider, &receiver);
    drop(receiver);
    result
}

fn replicas_scenario(d: &Deployment, provider: &LocalProvider, receiver: &Receiver) -> Result<()> {
    d.ok(&["up", "--yes"])?;
    let status = d.status()?;
    for monitor in MONITORS {
        let mut scraped: Vec<&str> = NODES.to_vec();
        scraped.extend([STORAGE, monitor]);
        check_monitor_targets(&status, monitor, &scraped)?;
    }
    eprintln!("e2e --monitors: 1. every node and the storage host are up in both replicas");

    let everyone: Vec<&str> = MONITORS
        .iter()
        .chain(&NODES)
        .chain([&STORAGE])
        .copied()
        .collect();
    with_tunnel_to(d, &["--storage"], |port| {
        let series = wait_for_series(port, &everyone)?;
        eprintln!(
            "e2e --monitors: 2. VictoriaMetrics holds one `up` series per host and exporter ({series}), without replica labels"
        );
        Ok(())
    })?;

    // One replica's Prometheus stops for a minute; the other keeps
    // writing.
    let pid = d
        .ssh_ok(MONITORS[0], "cat /run/promguard/prometheus.pid")?
        .trim()
        .to_owned();
    ensure!(
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()),
        "{} has no Prometheus PID file: {pid:?}",
        MONITORS[0]
    );
    let stopped_at = unix_ms();
    d.ssh_ok(MONITORS[0], &format!("kill {pid}"))?;
    std::thread::sleep(OUTAGE);
    d.ok(&["up", "--yes"])?;
    let restarted_at = unix_ms();
    let status = d.status()?;
    check_monitor_targets(&status, MONITORS[0], &everyone_of(MONITORS[0]))?;
    with_tunnel_to(d, &["--storage"], |port| {
        // What the surviving replica wrote is queryable once the engine's
        // latency offset (one scrape interval) has passed.
        std::thread::sleep(Duration::from_secs(2 * SCRAPE_SECONDS));
        for node in NODES {
            let gap = largest_gap(port, node, stopped_at - 10_000, restarted_at)?;
            ensure!(
                gap <= MAX_GAP_MS,
                "{node}'s series in VictoriaMetrics has a gap of {gap} ms while {} was stopped",
                MONITORS[0]
            );
            let samples = samples_per_minute(port, node)?;
            ensure!(
                samples <= 60 / SCRAPE_SECONDS + 2,
                "{node} has {samples} samples a minute in VictoriaMetrics: the replicas' copies are not deduplicated"
            );
        }
        Ok(())
    })?;
    eprintln!(
        "e2e --monitors: 3. {} stopped for {OUTAGE:?}: no node's series has a gap over {MAX_GAP_MS} ms, one sample per interval; `up` brought it back",
        MONITORS[0]
    );

    firewall_checks(d, provider)?;
    eprintln!("e2e --monitors: 4. no node reaches the storage host; no outsider reaches a monitor, an exporter, the storage port or Alertmanager, which the other replica reaches");

    alerts_once(d, receiver)?;
    eprintln!("e2e --monitors: 5. both replicas fired {} down; the clustered Alertmanagers notified it firing once, then resolved", NODES[0]);

    let out = d.ok(&["up", "--yes"])?;
    ensure!(
        out.contains("No changes"),
        "a second up changed something:\n{out}"
    );
    let status = d.status()?;
    for monitor in MONITORS {
        let queue = status["monitors"]
            .as_array()
            .context("status has no monitors")?
            .iter()
            .find(|m| m["name"] == monitor)
            .with_context(|| format!("status does not list {monitor}"))?["remote_write"]
            .clone();
        ensure!(
            queue["samples_pending"].is_u64() && queue["samples_failed"].is_u64(),
            "status shows no remote_write queue of {monitor}: {queue}"
        );
    }
    eprintln!("e2e --monitors: 6. a second up changes nothing; status shows each monitor's remote_write queue");
    down(d, provider)?;
    eprintln!("e2e --monitors: 7. down left nothing");
    Ok(())
}

/// The hosts `monitor` scrapes in the replica scenario.
fn everyone_of(monitor: &str) -> Vec<&str> {
    let mut hosts: Vec<&str> = NODES.to_vec();
    hosts.extend([STORAGE, monitor]);
    hosts
}

/// Every target of `monitor` in `status` is up, at a WireGuard address,
/// and its node_exporter targets are exactly those of `hosts`.
fn check_monitor_targets(status: &Value, monitor: &str, hosts: &[&str]) -> Result<()> {
    let targets = monitor_targets(status, monitor)?;
    let mut seen = BTreeSet::new();
    for t in &targets {
        let instance = t["instance"].as_str().unwrap_or_default();
        let url = t["scrape_url"].as_str().unwrap_or_default();
        ensure!(
            t["health"] == "up",
            "{monitor}: target {instance} ({url}) is {}: {}",
            t["health"],
            t["last_error"]
        );
        if t["job"] == "node" {
            ensure!(
                url.starts_with("http://10.0.0."),
                "{monitor} scrapes {instance} at {url}, not at a WireGuard address"
            );
            seen.insert(instance.to_owned());
        }
    }
    let wanted: BTreeSet<String> = hosts.iter().map(|h| h.to_string()).collect();
    ensure!(
        seen == wanted,
        "{monitor} scrapes the node_exporters of {seen:?}, expected {wanted:?}"
    );
    Ok(())
}

fn monitor_targets(status: &Value, monitor: &str) -> Result<Vec<Value>> {
    let monitors = status["monitors"]
        .as_array()
        .context("status has no monitors")?;
    let entry = monitors
        .iter()
        .find(|m| m["name"] == monitor)
        .with_context(|| format!("status does not list monitor {monitor}"))?;
    Ok(entry["targets"].as_array().context("no targets")?.to_vec())
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Waits until VictoriaMetrics at `port` has `up` of every host's
/// node_exporter, then checks there is exactly one series per host and
/// job and none carries a replica label. Returns how many series there
/// are.
fn wait_for_series(port: u16, hosts: &[&str]) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = vm_query(port, "up")?;
        let result = answer["data"]["result"]
            .as_array()
            .context("no result")?
            .clone();
        let nodes: BTreeSet<&str> = result
            .iter()
            .filter(|r| r["metric"]["job"] == "node")
            .filter_map(|r| r["metric"]["instance"].as_str())
            .collect();
        if hosts.iter().all(|h| nodes.contains(h)) {
            let mut keys = BTreeMap::new();
            for r in &result {
                let m = &r["metric"];
                ensure!(
                    m.get("replica").is_none() && m.get("monitor").is_none(),
                    "a series in VictoriaMetrics keeps a replica label: {m}"
                );
                let key = (m["instance"].to_string(), m["job"].to_string());
                *keys.entry(key).or_insert(0) += 1;
            }
            if let Some((key, n)) = keys.iter().find(|(_, &n)| n != 1) {
                bail!("VictoriaMetrics has {n} series of {key:?}, not one");
            }
            return Ok(result.len());
        }
        ensure!(
            Instant::now() < deadline,
            "VictoriaMetrics has `up` of {nodes:?} only, not of every host of {hosts:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn vm_query(port: u16, q: &str) -> Result<Value> {
    let body = http_get(port, &format!("/api/v1/query?query={}", url_encode(q)))?;
    serde_json::from_str(&body).with_context(|| format!("VictoriaMetrics' answer to {q}: {body}"))
}

/// The largest gap, in milliseconds, between two samples of `node`'s
/// node_exporter `up` in VictoriaMetrics from `start` to `end` (Unix ms),
/// counting the window's edges.
fn largest_gap(port: u16, node: &str, start: i64, end: i64) -> Result<i64> {
    let selector = format!("up{{job=\"node\",instance=\"{node}\"}}");
    let body = http_get(
        port,
        &format!(
            "/api/v1/export?match[]={}&start={}&end={}",
            url_encode(&selector),
            start / 1000,
            end / 1000
        ),
    )?;
    let lines: Vec<&str> = body.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        lines.len() == 1,
        "VictoriaMetrics exported {} series of {selector}, not one",
        lines.len()
    );
    let series: Value = serde_json::from_str(lines[0])?;
    let mut stamps: Vec<i64> = series["timestamps"]
        .as_array()
        .context("no timestamps")?
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    stamps.sort_unstable();
    ensure!(
        !stamps.is_empty(),
        "no samples of {selector} from {start} to {end}"
    );
    let mut gap = stamps[0] - start;
    for pair in stamps.windows(2) {
        gap = gap.max(pair[1] - pair[0]);
    }
    Ok(gap.max(end - stamps[stamps.len() - 1]))
}

/// Samples of `node`'s node_exporter `up` in the last minute, as
/// VictoriaMetrics counts them after deduplication.
fn samples_per_minute(port: u16, node: &str) -> Result<u64> {
    let q = format!("count_over_time(up{{job=\"node\",instance=\"{node}\"}}[1m])");
    let answer = vm_query(port, &q)?;
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("no answer to {q}: {answer}"))
}

/// No node reaches the storage host over the tunnel or the underlay; an
/// outsider reaches no monitor's Prometheus or node_exporter and not the
/// storage port, at any address.
fn firewall_checks(d: &Deployment, provider: &LocalProvider) -> Result<()> {
    let state = d.state()?;
    let address = |host: &str, which: &str| -> Result<IpAddr> {
        state["hosts"][host][which]
            .as_str()
            .with_context(|| format!("no {which} of {host} in the state"))?
            .parse()
            .with_context(|| format!("the {which} of {host}"))
    };
    // Whether `host` can open a TCP connection to `ip`:`port`.
    let tcp_from = |host: &str, ip: IpAddr, port: u16| -> Result<bool> {
        let out = d.ssh(
            host,
            &format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'"),
        )?;
        Ok(out.status.success())
    };
    let storage_wg = address(STORAGE, "wireguard_address")?;
    let storage_public = address(STORAGE, "public_address")?;
    for node in NODES {
        for target in [
            SocketAddr::new(storage_wg, 8428),
            SocketAddr::new(storage_public, 8428),
            SocketAddr::new(storage_wg, 9100),
        ] {
            ensure!(
                !tcp_from(node, target.ip(), target.port())?,
                "{node} reached the storage host at {target}"
            );
        }
    }
    // Alertmanager's API and gossip: the other replica reaches them over
    // the tunnel (so the refusals below mean something), a node does not.
    let first = address(MONITORS[0], "wireguard_address")?;
    for port in [9093, 9094] {
        ensure!(
            tcp_from(MONITORS[1], first, port)?,
            "{} cannot reach {}'s Alertmanager at {first}:{port}",
            MONITORS[1],
            MONITORS[0]
        );
        ensure!(
            !tcp_from(NODES[0], first, port)?,
            "{} reached {}'s Alertmanager at {first}:{port}",
            NODES[0],
            MONITORS[0]
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outsider = runtime.block_on(provider.create_outsider(&HostName::new("outsider")?))?;
    for host in MONITORS.iter().chain([&STORAGE]) {
        for which in ["public_address", "wireguard_address"] {
            let ip = address(host, which)?;
            for port in [9090, 9100, 8428, 9093, 9094] {
                ensure!(
                    !connect_from(&outsider.netns, SocketAddr::new(ip, port))?,
                    "the outsider reached {host} at {ip}:{port}"
                );
            }
        }
    }
    Ok(())
}

/// Both replicas' Alertmanagers are in one ready cluster of two; node 1's
/// WireGuard dies, so both replicas fire its target-down alert; the
/// webhook gets it firing once (the second Alertmanager waits its peer
/// timeout, 15 s, then finds the first one's notification in the log they
/// share; unclustered, each would send it), and after `up` resolved,
/// without the replica labels. Only the firing is checked for
/// duplicates: while the replicas disagree, for the seconds between
/// their evaluations, a late resend of the firing alert from one can
/// make the cluster notify the change twice (`docs/alerts.md`).
fn alerts_once(d: &Deployment, receiver: &Receiver) -> Result<()> {
    for monitor in MONITORS {
        let status = alertmanager_status(d, monitor)?;
        let peers = status["cluster"]["peers"].as_array().map_or(0, Vec::len);
        ensure!(
            status["cluster"]["status"] == "ready" && peers == MONITORS.len(),
            "{monitor}'s Alertmanager is not in a ready cluster of {}: {}",
            MONITORS.len(),
            status["cluster"]
        );
    }
    let node = NODES[0];
    d.ssh_ok(node, "kill $(pgrep -x wireguard-go)")?;
    receiver.wait_for(
        "firing",
        "PromGuardTargetDown",
        node,
        Duration::from_secs(90),
    )?;
    std::thread::sleep(Duration::from_secs(30));
    check_no_duplicates(receiver).map_err(|e| with_alertmanager_logs(d, e))?;
    d.ok(&["up", "--yes"])?;
    receiver.wait_for(
        "resolved",
        "PromGuardTargetDown",
        node,
        Duration::from_secs(120),
    )?;
    let notifications = receiver.notifications();
    let down: Vec<&Value> = notifications
        .iter()
        .flat_map(|n| n["alerts"].as_array().into_iter().flatten())
        .filter(|a| a["labels"]["alertname"] == "PromGuardTargetDown")
        .collect();
    ensure!(!down.is_empty(), "the webhook got no target-down alert");
    for alert in down {
        let labels = &alert["labels"];
        ensure!(
            labels.get("replica").is_none() && labels.get("monitor").is_none(),
            "an alert reached the webhook with a replica label: {labels}"
        );
    }
    Ok(())
}

/// `error`, with the end of every replica's Alertmanager log.
fn with_alertmanager_logs(d: &Deployment, error: anyhow::Error) -> anyhow::Error {
    let mut logs = String::new();
    for monitor in MONITORS {
        let tail = d
            .ssh_ok(monitor, "tail -n 30 /run/promguard/alertmanager.log")
            .unwrap_or_else(|e| format!("cannot read it: {e:#}"));
        logs.push_str(&format!("\n{monitor}'s Alertmanager:\n{tail}"));
    }
    error.context(logs)
}

/// Alertmanager's `/api/v2/status` on `monitor`, read over SSH.
fn alertmanager_status(d: &Deployment, monitor: &str) -> Result<Value> {
    let answer = d.ssh_ok(
        monitor,
        "exec 3<>/dev/tcp/127.0.0.1/9093 && printf 'GET /api/v2/status HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && cat <&3",
    )?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .with_context(|| format!("{monitor}'s Alertmanager answered {answer:?}"))?;
    serde_json::from_str(body)
        .with_context(|| format!("{monitor}'s Alertmanager status is not JSON: {body}"))
}

/// No two notifications the webhook got are the same: the same group with
/// the same alerts in the same states, as two Alertmanagers that do not
/// share their log send.
fn check_no_duplicates(receiver: &Receiver) -> Result<()> {
    let notifications = receiver.notifications();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &notifications {
        let mut alerts: Vec<String> = n["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| format!("{} {}", a["status"], a["labels"]))
            .collect();
        alerts.sort();
        let key = format!("{} {} {alerts:?}", n["groupKey"], n["status"]);
        seen.entry(key)
            .or_default()
            .push(format!("{} from {}", n["receivedAt"], n["externalURL"]));
    }
    if let Some((key, times)) = seen.iter().find(|(_, times)| times.len() > 1) {
        let all: Vec<String> = notifications
            .iter()
            .map(|n| {
                format!(
                    "{} {} from {}: {}",
                    n["receivedAt"], n["status"], n["externalURL"], n["groupKey"]
                )
            })
            .collect();
        bail!(
            "the webhook got the same notification {} times ({}): {key}; all it got:\n{}",
            times.len(),
            times.join(", "),
            all.join("\n")
        );
    }
    Ok(())
}

/// The nodes of the shard scenario.
const SHARD_NODES: usize = 6;

fn shards(bin: &Path) -> Result<()> {
    let config = |shards: &[&str]| {
        let list: Vec<String> = shards.iter().map(|s| format!("{s:?}")).collect();
        format!(
            "[monitor]\nshards = [{}]\nregion = \"tor1\"\n\n[nodes]\ncount = {SHARD_NODES}\n",
            list.join(", ")
        )
    };
    let (d, provider) = deployment(bin, "shd", &config(&["a", "b"]))?;
    let nodes: Vec<String> = (1..=SHARD_NODES)
        .map(|i| format!("promguard-node-{i}"))
        .collect();
    d.ok(&["up", "--yes"])?;
    let before = shard_of_each(&d, &nodes, &["a", "b"])?;
    eprintln!("e2e --monitors: 8. two shards: each node is up in exactly its shard's monitor ({before:?})");

    // The third shard: the plan says which nodes move.
    let text = std::fs::read_to_string(d.config_path())?;
    let old = config(&["a", "b"]);
    std::fs::write(
        d.config_path(),
        text.replace(&old, &config(&["a", "b", "c"])),
    )?;
    let plan: Value = serde_json::from_str(&d.ok(&["plan", "--json"])?)?;
    let planned: BTreeMap<String, (String, String)> = plan["changes"]
        .as_array()
        .context("no changes in the plan")?
        .iter()
        .filter(|c| c["kind"] == "move_node")
        .map(|c| {
            (
                c["node"].as_str().unwrap_or_default().to_owned(),
                (
                    c["from"].as_str().unwrap_or_default().to_owned(),
                    c["to"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect();
    let three = Shards::new(["a", "b", "c"].map(|s| ShardId::new(s).expect("a valid id")))?;
    let predicted: BTreeMap<String, (String, String)> = nodes
        .iter()
        .filter_map(|n| {
            let to = three.assign(&HostName::new(n).ok()?).to_string();
            let from = before[n].clone();
            (to != from).then(|| (n.clone(), (from, to)))
        })
        .collect();
    ensure!(
        planned == predicted,
        "the plan moves {planned:?}; rendezvous hashing moves {predicted:?}"
    );
    ensure!(
        !planned.is_empty(),
        "the fixture moves no node to the third shard; the scenario checks nothing"
    );
    ensure!(
        planned.values().all(|(_, to)| to == "c"),
        "a node moves between shards that stay: {planned:?}"
    );
    d.ok(&["up", "--yes"])?;
    let after = shard_of_each(&d, &nodes, &["a", "b", "c"])?;
    for node in &nodes {
        let moved = before[node] != after[node];
        ensure!(
            moved == planned.contains_key(node),
            "{node} went from shard {} to {}, but the plan said {:?}",
            before[node],
            after[node],
            planned.get(node)
        );
    }
    eprintln!(
        "e2e --monitors: 9. a third shard took exactly the nodes the plan listed ({:?})",
        planned.keys().collect::<Vec<_>>()
    );
    down(&d, &provider)?;
    eprintln!("e2e --monitors: 10. down left nothing");
    Ok(())
}

/// Each node's shard, from `status`: the one monitor that scrapes it (and
/// has it up), checked to be the only one.
fn shard_of_each(
    d: &Deployment,
    nodes: &[String],
    shards: &[&str],
) -> Result<BTreeMap<String, String>> {
    let status = d.status()?;
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for shard in shards {
        let monitor = format!("promguard-monitor-{shard}-1");
        for t in monitor_targets(&status, &monitor)? {
            let instance = t["instance"].as_str().unwrap_or_default();
            if t["job"] != "node" || instance == monitor {
                continue;
            }
            ensure!(
                t["health"] == "up",
                "{monitor}: {instance} is {}: {}",
                t["health"],
                t["last_error"]
            );
            if let Some(other) = owner.insert(instance.to_owned(), shard.to_string()) {
                bail!("{instance} is scraped by the monitors of shards {other} and {shard}");
            }
        }
    }
    let listed: BTreeSet<&String> = owner.keys().collect();
    let wanted: BTreeSet<&String> = nodes.iter().collect();
    ensure!(
        listed == wanted,
        "the monitors scrape {listed:?}, expected each of {wanted:?} once"
    );
    Ok(owner)
}
