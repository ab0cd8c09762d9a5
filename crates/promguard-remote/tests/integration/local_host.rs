//! The recipe for real, on a namespace host made by the local provider
//! (never in the root namespace): first run, no-op run, a new peer, a dead
//! daemon, a Prometheus config change, runs cut short.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_cloud::{CloudProvider, HostRequest};
use promguard_core::{DeploymentName, HostName, InterfaceName, Region, Role, SshPublicKey};
use promguard_remote::recipe::{self, script::APPLY_MARKER_PATH, Action};
use promguard_remote::{
    converge, ConnectOptions, Connection, Connector, DesiredFile, DesiredHost, FileKind, SshTarget,
};

/// Destroys the deployment (namespaces, processes, files) even when the
/// test fails.
struct Deployment {
    provider: LocalProvider,
    _dir: tempfile::TempDir,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Err(err) = self.provider.destroy_deployment_blocking() {
            eprintln!("cleanup of the test deployment failed: {err}");
        }
    }
}

fn wg_key() -> (String, String) {
    assert!(
        Path::new("/usr/bin/wg").exists(),
        "/usr/bin/wg is missing; install it with `apt-get install wireguard-tools`"
    );
    let private = Command::new("/usr/bin/wg")
        .arg("genkey")
        .output()
        .unwrap()
        .stdout;
    let mut child = Command::new("/usr/bin/wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&private).unwrap();
    let public = child.wait_with_output().unwrap().stdout;
    (
        String::from_utf8(private).unwrap().trim().to_owned(),
        String::from_utf8(public).unwrap().trim().to_owned(),
    )
}

fn wg_conf(private: &str, peers: &[(&str, &str)]) -> String {
    let mut conf =
        format!("[Interface]\nPrivateKey = {private}\nAddress = 10.0.0.1/32\nListenPort = 51820\n");
    for (public, ip) in peers {
        conf.push_str(&format!(
            "\n[Peer]\nPublicKey = {public}\nAllowedIPs = {ip}/32\n"
        ));
    }
    conf
}

const RULESET: &str = "table inet promguard\ndelete table inet promguard\n\
table inet promguard {\n  chain input {\n    type filter hook input priority 0; policy accept;\n  }\n}\n";

fn prometheus_yml(interval: &str) -> String {
    format!(
        "global:\n  scrape_interval: {interval}\nscrape_configs:\n  - job_name: node\n    \
         file_sd_configs:\n      - files: ['/etc/prometheus/promguard/node.json']\n"
    )
}

/// The public keys `wg show wg0 peers` lists: the live peers.
fn live_peers(conn: &Connection) -> BTreeSet<String> {
    let out = conn
        .exec_checked("list live peers", "wg show wg0 peers", b"")
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The apply marker's content, `None` when there is none.
fn apply_marker(conn: &Connection) -> Option<String> {
    let out = conn.exec(&format!("cat {APPLY_MARKER_PATH}"), b"").unwrap();
    out.success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// Regression test for "cut between writing `wg0.conf` and `wg syncconf`":
/// the next run saw a matching digest, did nothing, and the live peers
/// stayed old for good. The cut is the real apply script of a new peer,
/// SIGKILLed (as a dropped connection or a killed promguard can end it)
/// after its file writes, right before its first action.
fn interrupted_apply(conn: &Connection, desired: &mut DesiredHost, private: &str, kept: &str) {
    let (new_peer, _) = wg_key();
    desired.files[0].content =
        wg_conf(private, &[(kept, "10.0.0.3"), (&new_peer, "10.0.0.4")]).into_bytes();
    let managed = recipe::managed_paths(desired);
    let facts_script = recipe::facts::facts_script(&desired.interface, &managed);
    let out = conn
        .exec_checked("gathering facts", "bash -s", facts_script.as_bytes())
        .unwrap();
    let facts = recipe::parse_facts(&String::from_utf8_lossy(&out.stdout), &managed).unwrap();
    let decision = recipe::decide(desired, &facts).unwrap();
    assert!(
        matches!(decision.actions[..], [Action::WireguardSync { .. }]),
        "{decision:?}"
    );
    let script = recipe::script::apply_script(desired, facts.systemd, &decision);
    let first_action = "step 'wg syncconf wg0'\n";
    let cut = script.replacen(first_action, &format!("kill -KILL $$\n{first_action}"), 1);
    assert_ne!(cut, script, "the apply script has no step {first_action:?}");
    let out = conn.exec("bash -s", cut.as_bytes()).unwrap();
    assert!(!out.success(), "the cut apply script went on: {out:?}");

    // The file is new, the live peers are old, the marker says why.
    let file = conn
        .exec_checked("read wg0.conf", "cat /etc/wireguard/wg0.conf", b"")
        .unwrap();
    assert_eq!(file.stdout, desired.files[0].content);
    assert_eq!(live_peers(conn), BTreeSet::from([kept.to_owned()]));
    assert_eq!(
        apply_marker(conn).as_deref(),
        Some("promguard-apply-pending 1\nfile /etc/wireguard/wg0.conf\n")
    );
    let mode = conn
        .exec_checked(
            "marker mode",
            &format!("stat -c %a {APPLY_MARKER_PATH}"),
            b"",
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "600");

    // The next run writes nothing (the digest matches) but syncs.
    let report = converge(conn, desired).unwrap();
    assert!(report.changed_files.is_empty(), "{report:?}");
    assert_eq!(report.actions, ["wg syncconf wg0"]);
    assert_eq!(
        live_peers(conn),
        BTreeSet::from([kept.to_owned(), new_peer.clone()])
    );
    let routes =
        String::from_utf8(conn.exec("ip route show dev wg0", b"").unwrap().stdout).unwrap();
    assert!(routes.contains("10.0.0.4"), "{routes}");
    assert_eq!(apply_marker(conn), None);

    // And then the host is converged: facts only, nothing run.
    let report = converge(conn, desired).unwrap();
    assert!(report.is_noop(), "{report:?}");
    assert_eq!(report.round_trips, 1);

    // Back to the one peer the rest of the test expects.
    desired.files[0].content = wg_conf(private, &[(kept, "10.0.0.3")]).into_bytes();
    let report = converge(conn, desired).unwrap();
    assert_eq!(report.actions, ["wg syncconf wg0"]);
    assert_eq!(live_peers(conn), BTreeSet::from([kept.to_owned()]));
}

/// A failed action leaves the marker, so the actions it kept from running
/// run next time although their files are in place: `wg syncconf` fails
/// on a bad peer key, so the new ruleset (written, digest matching from
/// then on) is loaded only by the run after the fix.
fn failed_action_is_retried(conn: &Connection, desired: &mut DesiredHost) {
    let good_wg = desired.files[0].content.clone();
    let mut bad_wg = good_wg.clone();
    bad_wg.extend_from_slice(b"\n[Peer]\nPublicKey = not-a-key\nAllowedIPs = 10.0.0.9/32\n");
    desired.files[0].content = bad_wg;
    desired.files[1].content = RULESET
        .replace("  }\n}\n", "  }\n  chain retried {\n  }\n}\n")
        .into_bytes();
    let err = converge(conn, desired).unwrap_err().to_string();
    assert!(
        err.starts_with("wg syncconf wg0 failed on monitor"),
        "{err}"
    );
    assert_eq!(
        apply_marker(conn).as_deref(),
        Some(
            "promguard-apply-pending 1\nfile /etc/wireguard/wg0.conf\n\
             file /etc/promguard/nftables.conf\n"
        )
    );
    let table = |conn: &Connection| {
        let out = conn
            .exec_checked("list the table", "nft list table inet promguard", b"")
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(!table(conn).contains("retried"), "{}", table(conn));

    desired.files[0].content = good_wg;
    let report = converge(conn, desired).unwrap();
    assert_eq!(report.changed_files, ["/etc/wireguard/wg0.conf"]);
    assert_eq!(
        report.actions,
        ["wg syncconf wg0", "nft -f /etc/promguard/nftables.conf"]
    );
    assert!(table(conn).contains("chain retried"), "{}", table(conn));
    assert_eq!(apply_marker(conn), None);
    let report = converge(conn, desired).unwrap();
    assert!(report.is_noop(), "{report:?}");
    assert_eq!(report.round_trips, 1);
}

/// One namespace host of a fresh local deployment, and a connection to it.
struct Lab {
    _runtime: tokio::runtime::Runtime,
    _deployment: Deployment,
    conn: Connection,
    name: HostName,
}

fn lab(prefix: &str, host_name: &str, role: Role) -> Lab {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Not under /tmp: hosts get a private /tmp and must see the state dir.
    std::fs::create_dir_all("/var/tmp").unwrap();
    let dir = tempfile::Builder::new()
        .prefix("promguard-remote-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let deployment =
        DeploymentName::new(&format!("{prefix}{}", std::process::id() % 100_000)).unwrap();
    let provider = LocalProvider::new(
        deployment,
        LocalOptions {
            state_dir: dir.path().join("state"),
            ..LocalOptions::default()
        },
    );
    runtime
        .block_on(provider.preflight())
        .expect("the local provider cannot run here");
    let deployment = Deployment {
        provider: provider.clone(),
        _dir: dir,
    };
    let key_path = deployment._dir.path().join("id_ed25519");
    let status = Command::new("/usr/bin/ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key_path)
        .status()
        .expect("ssh-keygen is needed (apt-get install openssh-client)");
    assert!(status.success());
    let public =
        SshPublicKey::parse(&std::fs::read_to_string(key_path.with_extension("pub")).unwrap())
            .unwrap();
    runtime
        .block_on(provider.register_ssh_key(&public))
        .unwrap();
    let name = HostName::new(host_name).unwrap();
    let hosts = runtime
        .block_on(provider.create_hosts(&[HostRequest {
            name: name.clone(),
            role,
            region: Region::new("local").unwrap(),
        }]))
        .unwrap();
    let host = &hosts[0];
    let connector: Connector = {
        let provider = provider.clone();
        Arc::new(move |addr| provider.connect(addr))
    };
    let target = SshTarget {
        expected_host_key: host.ssh_host_key.clone(),
        ..SshTarget::new(name.clone(), host.ssh, key_path.clone())
    };
    let conn = Connection::connect(&target, &connector, ConnectOptions::default()).unwrap();
    Lab {
        _runtime: runtime,
        _deployment: deployment,
        conn,
        name,
    }
}

#[test]
fn converge_a_local_monitor() {
    let lab = lab("rt", "monitor", Role::Monitor);
    let (conn, name) = (&lab.conn, lab.name.clone());

    let (private, _) = wg_key();
    let (peer_a, _) = wg_key();
    let (peer_b, _) = wg_key();
    let mut desired = DesiredHost {
        name: name.clone(),
        role: Role::Monitor,
        interface: InterfaceName::new("wg0").unwrap(),
        wireguard_address: "10.0.0.1".parse().unwrap(),
        files: vec![
            DesiredFile::new(
                FileKind::WireguardConfig,
                "/etc/wireguard/wg0.conf",
                0o600,
                wg_conf(&private, &[(&peer_a, "10.0.0.2")]),
            ),
            DesiredFile::new(
                FileKind::Firewall,
                "/etc/promguard/nftables.conf",
                0o644,
                RULESET,
            ),
            DesiredFile::new(
                FileKind::PrometheusConfig,
                "/etc/prometheus/prometheus.yml",
                0o644,
                prometheus_yml("15s"),
            ),
            DesiredFile::new(
                FileKind::ScrapeTargets,
                "/etc/prometheus/promguard/node.json",
                0o644,
                r#"[{"targets":["10.0.0.1:9100"],"labels":{"instance":"monitor"}}]"#,
            ),
        ],
        node_exporter_listen: "10.0.0.1:9100".parse().unwrap(),
        exporters: Vec::new(),
        prometheus_listen: Some("127.0.0.1:9090".parse().unwrap()),
        alertmanager_listen: None,
        alertmanager_cluster: None,
        install_packages: false,
        guest: None,
    };

    // First run: everything.
    let report = converge(conn, &desired).unwrap();
    assert_eq!(report.changed_files.len(), 5, "{report:?}");
    assert_eq!(
        report.actions,
        [
            "wg-quick up wg0",
            "nft -f /etc/promguard/nftables.conf",
            "start node_exporter",
            "start the WireGuard metrics collector",
            "start prometheus"
        ]
    );
    assert_eq!(report.round_trips, 2);
    // The collector's metrics reach node_exporter's textfile collector,
    // with public keys only.
    let mut metrics = String::new();
    for _ in 0..50 {
        let (status, body) = conn
            .http_get("10.0.0.1:9100".parse().unwrap(), "/metrics")
            .unwrap();
        assert_eq!(status, 200);
        metrics = String::from_utf8_lossy(&body).into_owned();
        if metrics.contains("promguard_wireguard_collector_last_run_timestamp_seconds") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        metrics.contains("wireguard_peers{interface=\"wg0\"} 1"),
        "{metrics}"
    );
    let handshake = format!(
        "wireguard_latest_handshake_seconds{{interface=\"wg0\",peer=\"unknown\",public_key=\"{peer_a}\"}} 0"
    );
    assert!(metrics.contains(&handshake), "no {handshake} in {metrics}");
    assert!(
        !metrics.contains(&private),
        "the private key is in the metrics"
    );
    let (status, body) = conn
        .http_get("127.0.0.1:9090".parse().unwrap(), "/-/ready")
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let routes = conn.exec("ip route show dev wg0", b"").unwrap();
    assert!(String::from_utf8_lossy(&routes.stdout).contains("10.0.0.2"));

    // Second run: nothing to do, one round trip.
    let report = converge(conn, &desired).unwrap();
    assert!(report.is_noop(), "{report:?}");
    assert_eq!(report.round_trips, 1);

    // A new peer: syncconf, and a route for it; node_exporter untouched.
    desired.files[0].content =
        wg_conf(&private, &[(&peer_a, "10.0.0.2"), (&peer_b, "10.0.0.3")]).into_bytes();
    let report = converge(conn, &desired).unwrap();
    assert_eq!(report.actions, ["wg syncconf wg0"]);
    let routes =
        String::from_utf8(conn.exec("ip route show dev wg0", b"").unwrap().stdout).unwrap();
    assert!(routes.contains("10.0.0.3"), "{routes}");
    let peers = String::from_utf8(conn.exec("wg show wg0 peers", b"").unwrap().stdout).unwrap();
    assert_eq!(peers.lines().count(), 2, "{peers}");

    // A removed peer loses its route.
    desired.files[0].content = wg_conf(&private, &[(&peer_b, "10.0.0.3")]).into_bytes();
    converge(conn, &desired).unwrap();
    let routes =
        String::from_utf8(conn.exec("ip route show dev wg0", b"").unwrap().stdout).unwrap();
    assert!(!routes.contains("10.0.0.2"), "{routes}");
    assert_eq!(apply_marker(conn), None);

    interrupted_apply(conn, &mut desired, &private, &peer_b);
    failed_action_is_retried(conn, &mut desired);

    // A dead node_exporter is restarted; a changed prometheus.yml reloads.
    conn.exec_checked(
        "kill node_exporter",
        "kill $(cat /run/promguard/node_exporter.pid); sleep 0.3",
        b"",
    )
    .unwrap();
    desired.files[2].content = prometheus_yml("10s").into_bytes();
    let report = converge(conn, &desired).unwrap();
    assert_eq!(report.actions, ["start node_exporter", "reload prometheus"]);
    assert_eq!(converge(conn, &desired).unwrap().round_trips, 1);

    // Only the targets file changed: written, nothing restarted.
    desired.files[3].content =
        br#"[{"targets":["10.0.0.1:9100"],"labels":{"instance":"m"}}]"#.to_vec();
    let report = converge(conn, &desired).unwrap();
    assert_eq!(
        report.changed_files,
        ["/etc/prometheus/promguard/node.json"]
    );
    assert!(report.actions.is_empty());

    // A WireGuard interface left broken by a run cut short (SIGKILL or a
    // dropped connection during `wg-quick up`) is repaired by the next
    // run; one with only its address missing is readdressed in place.
    let breakages = [
        (
            "set down",
            "ip link set wg0 down",
            "recreate wg0 and wg-quick up wg0",
        ),
        (
            // What `wg-quick up` leaves when cut after `wg setconf`: the
            // link exists and answers `wg show`, but is down, without an
            // address or routes.
            "half configured",
            "ip link delete dev wg0\n\
             i=0; while [ -S /run/wireguard/wg0.sock ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done\n\
             WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go wg0 >/dev/null 2>&1\n\
             wg setconf wg0 <(wg-quick strip wg0)\n\
             wg show wg0 >/dev/null",
            "recreate wg0 and wg-quick up wg0",
        ),
        (
            "address flushed",
            "ip address flush dev wg0",
            "set address of wg0 and wg syncconf wg0",
        ),
    ];
    for (name, breakage, repair) in breakages {
        conn.exec_checked(name, "bash -s", breakage.as_bytes())
            .unwrap();
        let state = conn
            .exec_checked(
                "inspect wg0",
                "ip -o link show dev wg0; ip -o address show dev wg0",
                b"",
            )
            .unwrap();
        let state = String::from_utf8_lossy(&state.stdout).into_owned();
        assert!(
            !state.contains(",UP,") || !state.contains("10.0.0.1/32"),
            "{name}: the breakage left wg0 up with its address: {state}"
        );
        let report = converge(conn, &desired).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.actions, [repair], "{name}");
        let state = conn
            .exec_checked(
                "inspect wg0",
                "ip -o link show dev wg0 && ip -o address show dev wg0 && ip route show dev wg0 && wg show wg0",
                b"",
            )
            .unwrap_or_else(|e| panic!("{name}: wg0 is not usable after the repair: {e}"));
        let state = String::from_utf8_lossy(&state.stdout).into_owned();
        assert!(state.contains(",UP,"), "{name}: wg0 is not up: {state}");
        assert!(state.contains("inet 10.0.0.1/32"), "{name}: {state}");
        assert!(
            state.contains("10.0.0.3 "),
            "{name}: no route to the peer: {state}"
        );
        assert!(
            state.contains("peer: "),
            "{name}: no peer in `wg show`: {state}"
        );
        let report = converge(conn, &desired).unwrap();
        assert!(report.is_noop(), "{name}: {report:?}");
    }

    // A failing step names the host and the step.
    desired.files[1].content = b"this is not nftables\n".to_vec();
    let err = converge(conn, &desired).unwrap_err().to_string();
    assert!(
        err.starts_with("nft -f /etc/promguard/nftables.conf failed on monitor"),
        "{err}"
    );
    // The failed action leaves the marker, so a later run retries it.
    assert_eq!(
        apply_marker(conn).as_deref(),
        Some("promguard-apply-pending 1\nfile /etc/promguard/nftables.conf\n")
    );
    desired.files[1].content = RULESET.as_bytes().to_vec();
    let report = converge(conn, &desired).unwrap();
    assert_eq!(report.actions, ["nft -f /etc/promguard/nftables.conf"]);
    assert_eq!(apply_marker(conn), None);
    assert!(converge(conn, &desired).unwrap().is_noop());
    std::thread::sleep(Duration::from_millis(10));
}

/// What a guest must leave as it was: the WireGuard and PromGuard
/// directories, the nftables ruleset, the links and the processes.
fn snapshot(conn: &Connection) -> String {
    let out = conn
        .exec_checked(
            "snapshot",
            "bash -s",
            b"ls -la /etc/wireguard 2>&1 | grep -v ' \\.\\.\\?$' | awk '{print $1, $NF}'; \
              ls -la /etc/promguard 2>&1 | grep -v ' \\.\\.\\?$' | awk '{print $1, $NF}'; \
              nft -s list ruleset; ip -o link | awk '{print $2}'; \
              ps -eo comm= | grep -v -e '^ps$' -e '^bash$' -e '^sshd$' -e '^awk$' -e '^grep$' -e '^sort$' | sort\n",
        )
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_guest_refuses_the_hosts_own_interface_and_leaves_no_trace() {
    let lab = lab("rg", "db-1", Role::Node);
    let conn = &lab.conn;
    let (private, _) = wg_key();
    let (peer, _) = wg_key();
    let desired = DesiredHost {
        name: lab.name.clone(),
        role: Role::Node,
        interface: InterfaceName::new("wg7").unwrap(),
        wireguard_address: "10.0.0.1".parse().unwrap(),
        files: vec![
            DesiredFile::new(
                FileKind::WireguardConfig,
                "/etc/wireguard/wg7.conf",
                0o600,
                wg_conf(&private, &[(&peer, "10.0.0.2")]).replace("51820", "51827"),
            ),
            DesiredFile::new(
                FileKind::Firewall,
                "/etc/promguard/nftables.conf",
                0o644,
                RULESET,
            ),
        ],
        node_exporter_listen: "10.0.0.1:9100".parse().unwrap(),
        exporters: Vec::new(),
        prometheus_listen: None,
        alertmanager_listen: None,
        alertmanager_cluster: None,
        install_packages: false,
        guest: Some(recipe::Guest {
            wireguard_port: promguard_core::Port::new(51827).unwrap(),
            scrapers: vec!["10.0.0.2".parse().unwrap()],
            exporter_ports: vec![promguard_core::Port::new(9100).unwrap()],
            probe_ports: Vec::new(),
            comment: "promguard-test".into(),
        }),
    };

    // The host's own interface of that name: refused, nothing changed.
    conn.exec_checked("add a link", "ip tuntap add dev wg7 mode tun", b"")
        .unwrap();
    let before = snapshot(conn);
    let err = converge(conn, &desired).unwrap_err().to_string();
    assert!(
        err.contains("db-1 already has a network interface wg7")
            && err.contains("wireguard.interface"),
        "{err}"
    );
    assert_eq!(snapshot(conn), before);
    conn.exec_checked("delete the link", "ip link delete wg7", b"")
        .unwrap();

    let before = snapshot(conn);
    let report = converge(conn, &desired).unwrap();
    let guest = report.guest.expect("a guest host reports its manifest");
    assert!(
        guest.created_paths.contains("/etc/wireguard/wg7.conf")
            && guest.created_paths.contains("/etc/promguard/nftables.conf"),
        "{guest:?}"
    );
    assert!(converge(conn, &desired).unwrap().is_noop());
    // Now the interface and port are PromGuard's own: no clash.
    let out = conn
        .exec_root_checked("leave", recipe::guest::leave_script().as_bytes())
        .unwrap();
    assert_eq!(
        recipe::guest::parse_leave(&String::from_utf8_lossy(&out.stdout)),
        Ok(recipe::guest::Left::Done)
    );
    // Processes take a moment to exit after their signal.
    let mut after = snapshot(conn);
    for _ in 0..50 {
        if after == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = snapshot(conn);
    }
    assert_eq!(after, before);
    let out = conn
        .exec_root_checked("leave again", recipe::guest::leave_script().as_bytes())
        .unwrap();
    assert_eq!(
        recipe::guest::parse_leave(&String::from_utf8_lossy(&out.stdout)),
        Ok(recipe::guest::Left::Nothing)
    );
}
