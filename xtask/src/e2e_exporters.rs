//! The managed-exporters end-to-end scenario (`cargo xtask e2e
//! --exporters`, issue 16): exporters PromGuard installs from Debian's
//! packages on systemd hosts, beside software the test runs there first.
//!
//! PromGuard first makes four systemd hosts with node_exporter only; the
//! test then plays the user and installs what the hosts are for, from the
//! deployment's mirror: PostgreSQL on `db-1` (with a password only the
//! test and a 0600 file know), redis on `cache-1`, nginx on `web-1` (its
//! site on :80, `stub_status` on 127.0.0.1:8080). The config then names
//! the exporters for them: postgres (its data source from that file),
//! redis, nginx, process (the generic `args` form) and, on the monitor,
//! blackbox probing web-1's site over the tunnel. It checks that every
//! target is up over WireGuard and each exporter sees its server
//! (`pg_up`, `redis_up`, `nginx_up`, `probe_success`, through `promguard
//! tunnel`); each exporter port is bound to the WireGuard address only and
//! closed to an outsider and to the other nodes; the password is in no
//! output of PromGuard and not in its state; a second `up` changes nothing;
//! new redis arguments restart the redis exporter and nothing else; after a
//! reboot of every host the exporters are back on the WireGuard address
//! with no PromGuard run; an exporter dropped from the config is stopped
//! and its files removed; `down` leaves nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_core::config::LocalHostKind;
use promguard_core::HostName;

use crate::e2e::{connect_from, with_tunnel, Deployment};
use crate::e2e_systemd::{check_boot, down_leaves_nothing, reboot_all};

/// The scrape interval: short, so that new targets are scraped soon, and
/// long enough for Prometheus' start-up after a reboot (see e2e_systemd).
const SCRAPE_SECONDS: u64 = 5;

const MONITOR: &str = "promguard-monitor-1";
const DB: &str = "db-1";
const CACHE: &str = "cache-1";
const WEB: &str = "web-1";

/// Every host of the scenario.
const HOSTS: [&str; 4] = [MONITOR, DB, CACHE, WEB];

/// What the test installs on the hosts before PromGuard manages their
/// exporters (the deployment's mirror must hold them).
const SERVER_PACKAGES: [&str; 3] = ["postgresql", "redis-server", "nginx-light"];

/// One managed exporter of the scenario: its host, job, package and port.
struct Managed {
    host: &'static str,
    job: &'static str,
    package: &'static str,
    port: u16,
}

const MANAGED: [Managed; 5] = [
    Managed {
        host: MONITOR,
        job: "blackbox",
        package: "prometheus-blackbox-exporter",
        port: 9115,
    },
    Managed {
        host: DB,
        job: "postgres",
        package: "prometheus-postgres-exporter",
        port: 9187,
    },
    Managed {
        host: CACHE,
        job: "redis",
        package: "prometheus-redis-exporter",
        port: 9121,
    },
    Managed {
        host: WEB,
        job: "nginx",
        package: "prometheus-nginx-exporter",
        port: 9113,
    },
    Managed {
        host: WEB,
        job: "process",
        package: "prometheus-process-exporter",
        port: 9256,
    },
];

/// The config's knobs that the scenario changes between runs.
struct Shape {
    /// Whether the hosts have their managed exporters yet.
    exporters: bool,
    /// The redis exporter's `--redis.addr`.
    redis_addr: &'static str,
    /// Whether web-1 still runs the process exporter.
    process: bool,
}

fn config(name: &str, shape: &Shape) -> String {
    let mut text = format!(
        "[deployment]\nname = \"{name}\"\nprovider = \"local\"\n\n\
         [prometheus]\nscrape_interval = \"{SCRAPE_SECONDS}s\"\n\n\
         [monitor]\nname = \"{MONITOR}\"\nregion = \"tor1\"\n"
    );
    if shape.exporters {
        text.push_str(&format!(
            "exporters = [{{ name = \"blackbox\", package = \"prometheus-blackbox-exporter\", probes = [{{ host = \"{WEB}\", port = 80, path = \"/\" }}] }}]\n"
        ));
    }
    let nodes: [(&str, &str, String); 3] = [
        (
            DB,
            "lon1",
            "{ name = \"postgres\", package = \"prometheus-postgres-exporter\", env = { DATA_SOURCE_NAME = { file = \"pg.dsn\" } } }".to_owned(),
        ),
        (
            CACHE,
            "sfo2",
            format!(
                "{{ name = \"redis\", package = \"prometheus-redis-exporter\", args = [\"--redis.addr={}\"] }}",
                shape.redis_addr
            ),
        ),
        (WEB, "sgp1", {
            let mut e = "{ name = \"nginx\", package = \"prometheus-nginx-exporter\" }".to_owned();
            if shape.process {
                e.push_str(", { name = \"process\", package = \"prometheus-process-exporter\", args = [\"-procnames=nginx\"] }");
            }
            e
        }),
    ];
    for (host, region, exporters) in nodes {
        text.push_str(&format!(
            "\n[[nodes.host]]\nname = \"{host}\"\nregion = \"{region}\"\n"
        ));
        if shape.exporters {
            text.push_str(&format!("exporters = [{exporters}]\n"));
        }
    }
    text.push_str(&format!(
        "\n[local]\nhosts = \"systemd\"\nmirror_packages = [{}]\n",
        SERVER_PACKAGES
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    text
}

/// Runs the scenario.
pub fn run(root: &Path) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "e2e --exporters needs root: it makes network namespaces and boots systemd hosts"
    );
    let bin = crate::cli(root)?;
    let name = format!("mx{}", std::process::id() % 100000);
    let d = Deployment::local(bin, name.clone())?;
    let provider = LocalProvider::new(
        promguard_core::DeploymentName::new(&name)?,
        LocalOptions {
            hosts: LocalHostKind::Systemd,
            ..LocalOptions::default()
        },
    );
    let write = |shape: &Shape| std::fs::write(d.config_path(), config(&name, shape));

    // 1. The hosts, with node_exporter only.
    let started = Instant::now();
    write(&Shape {
        exporters: false,
        redis_addr: "redis://localhost:6379",
        process: true,
    })?;
    d.ok(&["up", "--yes"])?;
    eprintln!(
        "e2e-exporters: 1. four systemd hosts up with node_exporter ({:.1?})",
        started.elapsed()
    );

    // 2. What the hosts are for, installed by the user.
    let password = password()?;
    serve(&d, &password)?;
    let dsn = format!("postgresql://postgres:{password}@127.0.0.1:5432/postgres?sslmode=disable");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(d.dir.path().join("pg.dsn"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, dsn.as_bytes()))
        .context("cannot write pg.dsn")?;
    eprintln!("e2e-exporters: 2. PostgreSQL, redis and nginx run on db-1, cache-1 and web-1");

    // 3. The managed exporters: every target up, each exporter sees its
    // server, ports bound to the WireGuard address only.
    let mut shape = Shape {
        exporters: true,
        redis_addr: "redis://localhost:6379",
        process: true,
    };
    write(&shape)?;
    let started = Instant::now();
    d.ok(&["up", "--yes"])?;
    let took = started.elapsed();
    check_all_up(&d, &shape)?;
    check_servers_seen(&d)?;
    let addresses = wireguard_addresses(&d)?;
    check_bound(&d, &addresses, &shape)?;
    let mode = d.ssh_ok(
        DB,
        "stat -c '%a %U' /etc/default/prometheus-postgres-exporter",
    )?;
    ensure!(
        mode.trim() == "600 root",
        "/etc/default/prometheus-postgres-exporter on {DB} is {}, not 600 root",
        mode.trim()
    );
    eprintln!(
        "e2e-exporters: 3. up installed five exporters in {took:.1?}; every target is up; pg_up, redis_up, nginx_up and probe_success are 1 through the tunnel; each exporter listens on its WireGuard address only"
    );

    // 4. The password is in no output and not in the state.
    let rendered = d.ok(&["render", DB, "exporters"])?;
    ensure!(
        rendered.contains("DATA_SOURCE_NAME"),
        "render {DB} exporters does not show the postgres exporter's setting:\n{rendered}"
    );
    let state = std::fs::read_to_string(d.state_path())?;
    ensure!(
        !state.contains(&password),
        "the postgres password is in the state file"
    );
    ensure!(
        !d.transcript.borrow().contains(&password),
        "promguard printed the postgres password"
    );
    eprintln!(
        "e2e-exporters: 4. the postgres password is in no output of promguard and not in its state"
    );

    // 5. Outsiders and other nodes cannot reach an exporter.
    check_closed(&d, &provider, &addresses)?;
    eprintln!("e2e-exporters: 5. no exporter port answers an outsider or another node");

    // 6. A second up changes nothing and restarts nothing.
    let pids = main_pids(&d)?;
    let out = d.ok(&["up", "--yes"])?;
    ensure!(
        out.contains("No changes"),
        "a second up reported changes:\n{out}"
    );
    ensure!(main_pids(&d)? == pids, "a second up restarted an exporter");
    eprintln!("e2e-exporters: 6. a second up changed nothing and restarted no exporter");

    // 7. New redis arguments restart the redis exporter only.
    shape.redis_addr = "redis://127.0.0.1:6379";
    write(&shape)?;
    d.ok(&["up", "--yes"])?;
    let after = main_pids(&d)?;
    for (unit, pid) in &pids {
        let now = after
            .get(unit)
            .with_context(|| format!("{unit} vanished"))?;
        let redis = unit.starts_with(&format!("{CACHE} prometheus-redis-exporter"));
        ensure!(
            (now != pid) == redis,
            "after new redis arguments, {unit} went from PID {pid} to {now}"
        );
    }
    let args = d.ssh_ok(
        CACHE,
        "tr '\\0' ' ' < /proc/$(systemctl show -P MainPID prometheus-redis-exporter)/cmdline",
    )?;
    ensure!(
        args.contains("--redis.addr=redis://127.0.0.1:6379"),
        "the redis exporter runs as {args}"
    );
    check_all_up(&d, &shape)?;
    eprintln!(
        "e2e-exporters: 7. new redis arguments restarted the redis exporter and nothing else"
    );

    // 8. Every host reboots: the exporters come back on their WireGuard
    // addresses with no PromGuard run.
    let targets = HOSTS.len() + MANAGED.len() + 1;
    let (booted, all_up) = reboot_all(
        &d,
        &provider,
        targets,
        Duration::from_secs(6 * SCRAPE_SECONDS),
    )?;
    check_bound(&d, &addresses, &shape)?;
    check_all_up(&d, &shape)?;
    check_servers_seen(&d)?;
    for host in HOSTS {
        check_boot(&d, &provider, host, "after the reboot")?;
    }
    eprintln!(
        "e2e-exporters: 8. every host rebooted ({booted:.1?}); every target up again {:.1?} later, each exporter on its WireGuard address",
        all_up - booted
    );

    // 9. An exporter dropped from the config is stopped and its files are
    // gone; the others stay.
    shape.process = false;
    write(&shape)?;
    d.ok(&["up", "--yes"])?;
    let left = d.ssh_ok(
        WEB,
        "systemctl is-active prometheus-process-exporter.service; dpkg-query -W -f='${db:Status-Abbrev}\\n' prometheus-process-exporter 2>/dev/null || echo unknown; ls -d /etc/default/prometheus-process-exporter /etc/systemd/system/prometheus-process-exporter.service.d 2>/dev/null; ss -Hltn 'sport = :9256'; true",
    )?;
    let lines: Vec<&str> = left.lines().map(str::trim).collect();
    ensure!(
        lines.len() == 2 && lines[0] == "inactive" && !lines[1].starts_with("ii"),
        "the process exporter dropped from the config still runs, is installed or has files on {WEB} (is-active, dpkg status, files, listeners):\n{left}"
    );
    check_all_up(&d, &shape)?;
    check_boot(&d, &provider, WEB, "after an exporter was dropped")?;
    eprintln!("e2e-exporters: 9. the process exporter dropped from the config was stopped and purged, its drop-in and defaults file gone");

    // 10. Down leaves nothing behind.
    down_leaves_nothing(&d, &provider, &HOSTS)?;
    eprintln!("e2e-exporters: 10. down left no namespace, process or directory");
    eprintln!("e2e-exporters: the managed-exporters scenario passed");
    Ok(())
}

/// A password for PostgreSQL that no earlier run used.
fn password() -> Result<String> {
    let mut bytes = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Installs and starts the hosts' own servers, as their user would.
fn serve(d: &Deployment, password: &str) -> Result<()> {
    const APT: &str = "export DEBIAN_FRONTEND=noninteractive; apt-get -q update >/dev/null && apt-get -qy install";
    d.ssh_ok(
        DB,
        &format!(
            "{APT} postgresql >/dev/null && su postgres -c \"psql -qc \\\"ALTER USER postgres PASSWORD '{password}'\\\"\""
        ),
    )?;
    d.ssh_ok(CACHE, &format!("{APT} redis-server >/dev/null"))?;
    d.ssh_ok(
        WEB,
        &format!(
            "{APT} nginx-light >/dev/null && printf 'server {{\\n listen 127.0.0.1:8080;\\n location = /stub_status {{ stub_status; }}\\n}}\\n' > /etc/nginx/conf.d/status.conf && nginx -t 2>/dev/null && systemctl reload nginx"
        ),
    )?;
    // Each server answers before an exporter is pointed at it.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (host, check) in [
        (DB, "su postgres -c 'psql -qAtc \"select 1\"'"),
        (CACHE, "redis-cli ping"),
        (
            WEB,
            "curl -fsS http://127.0.0.1:8080/stub_status && curl -fsS -o /dev/null http://127.0.0.1/",
        ),
    ] {
        loop {
            let out = d.ssh(host, check)?;
            if out.status.success() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the server on {host} does not answer `{check}`: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Ok(())
}

/// The jobs every host is scraped for, by instance, for `shape`.
fn expected_targets(shape: &Shape) -> BTreeSet<(String, String)> {
    let mut wanted = BTreeSet::new();
    for host in HOSTS {
        wanted.insert(("node".to_owned(), host.to_owned()));
    }
    for m in MANAGED
        .iter()
        .filter(|m| shape.exporters && (shape.process || m.job != "process"))
    {
        wanted.insert((m.job.to_owned(), m.host.to_owned()));
    }
    if shape.exporters {
        wanted.insert(("blackbox_probe".to_owned(), WEB.to_owned()));
    }
    wanted
}

/// `status` shows exactly the targets of `shape`, every one up at a
/// WireGuard address (the probe at the blackbox exporter's).
fn check_all_up(d: &Deployment, shape: &Shape) -> Result<()> {
    let status = d.status()?;
    let targets = status["targets"]
        .as_array()
        .context("status has no targets")?;
    let mut seen = BTreeSet::new();
    for t in targets.iter().filter(|t| t["job"] != "prometheus") {
        let job = t["job"].as_str().unwrap_or_default();
        let instance = t["instance"].as_str().unwrap_or_default();
        let url = t["scrape_url"].as_str().unwrap_or_default();
        ensure!(
            t["health"] == "up",
            "target {job} on {instance} ({url}) is {}: {}",
            t["health"],
            t["last_error"]
        );
        ensure!(
            url.starts_with("http://10.0.0."),
            "target {job} on {instance} is scraped at {url}, not a WireGuard address"
        );
        seen.insert((job.to_owned(), instance.to_owned()));
    }
    let wanted = expected_targets(shape);
    ensure!(
        seen == wanted,
        "the targets are {seen:?}, expected {wanted:?}"
    );
    Ok(())
}

/// Through `promguard tunnel`, each exporter reports its server up.
fn check_servers_seen(d: &Deployment) -> Result<()> {
    with_tunnel(d, |query| {
        let deadline = Instant::now() + Duration::from_secs(10 * SCRAPE_SECONDS);
        for q in [
            format!("pg_up{{instance=\"{DB}\"}}"),
            format!("redis_up{{instance=\"{CACHE}\"}}"),
            format!("nginx_up{{instance=\"{WEB}\"}}"),
            format!("probe_success{{job=\"blackbox_probe\",instance=\"{WEB}\"}}"),
            format!("clamp_max(namedprocess_namegroup_num_procs{{groupname=\"nginx\",instance=\"{WEB}\"}}, 1)"),
        ] {
            loop {
                let answer = query(&q)?;
                let value = answer["data"]["result"][0]["value"][1].as_str();
                if value == Some("1") {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{q} is not 1 in Prometheus: {answer}"
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Ok(())
    })
}

/// Each host's WireGuard address, from the state.
fn wireguard_addresses(d: &Deployment) -> Result<BTreeMap<String, IpAddr>> {
    let state = d.state()?;
    HOSTS
        .iter()
        .map(|h| {
            let address = state["hosts"][h]["wireguard_address"]
                .as_str()
                .with_context(|| format!("no WireGuard address of {h} in the state"))?;
            Ok((h.to_string(), address.parse()?))
        })
        .collect()
}

/// Each managed exporter of `shape` listens on its host's WireGuard
/// address and its port, and on nothing else.
fn check_bound(d: &Deployment, addresses: &BTreeMap<String, IpAddr>, shape: &Shape) -> Result<()> {
    let wanted = expected_targets(shape);
    for m in MANAGED
        .iter()
        .filter(|m| wanted.contains(&(m.job.to_owned(), m.host.to_owned())))
    {
        // Right after boot an exporter may still be starting.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = d.ssh_ok(m.host, &format!("ss -Hltn 'sport = :{}'", m.port))?;
            let bound: Vec<&str> = out
                .lines()
                .filter_map(|l| l.split_whitespace().nth(3))
                .collect();
            let expected = SocketAddr::new(addresses[m.host], m.port).to_string();
            if bound == [expected.as_str()] {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "on {}, {} ({}) listens on {bound:?}, not only on {expected}",
                m.host,
                m.job,
                m.package
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Ok(())
}

/// No exporter port answers an outsider on the hosts' network at the
/// host's public address, nor a node over the tunnel (only the monitor
/// scrapes).
fn check_closed(
    d: &Deployment,
    provider: &LocalProvider,
    addresses: &BTreeMap<String, IpAddr>,
) -> Result<()> {
    let state = d.state()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outsider = runtime.block_on(provider.create_outsider(&HostName::new("mx-outsider")?))?;
    for m in &MANAGED {
        let public: IpAddr = state["hosts"][m.host]["public_address"]
            .as_str()
            .with_context(|| format!("no public address of {}", m.host))?
            .parse()?;
        for address in [public, addresses[m.host]] {
            ensure!(
                !connect_from(&outsider.netns, SocketAddr::new(address, m.port))?,
                "an outsider reached {} on {}:{address}:{}",
                m.job,
                m.host,
                m.port
            );
        }
        // From a node that does not run it, over the tunnel.
        let from = if m.host == DB { CACHE } else { DB };
        let out = d.ssh(
            from,
            &format!(
                "timeout 3 bash -c 'exec 3<>/dev/tcp/{}/{}' && echo open || echo closed",
                addresses[m.host], m.port
            ),
        )?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains("closed"),
            "{from} reached {} on {} over the tunnel",
            m.job,
            m.host
        );
    }
    Ok(())
}

/// The main PID of every exporter unit on every host, by `host unit`.
fn main_pids(d: &Deployment) -> Result<BTreeMap<String, String>> {
    let mut pids = BTreeMap::new();
    for host in HOSTS {
        let units: Vec<&str> = std::iter::once("prometheus-node-exporter")
            .chain(MANAGED.iter().filter(|m| m.host == host).map(|m| m.package))
            .collect();
        let out = d.ssh_ok(
            host,
            &format!("systemctl show -P MainPID {}", units.join(" ")),
        )?;
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() != units.len() {
            bail!("systemctl show -P MainPID on {host} printed {out:?}");
        }
        for (unit, pid) in units.iter().zip(lines) {
            ensure!(pid != "0", "{unit} does not run on {host}");
            pids.insert(format!("{host} {unit}"), pid.to_owned());
        }
    }
    Ok(pids)
}
