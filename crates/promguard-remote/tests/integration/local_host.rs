//! The recipe for real, on a namespace host made by the local provider
//! (never in the root namespace): first run, no-op run, a new peer, a dead
//! daemon, a Prometheus config change.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_cloud::{CloudProvider, HostRequest};
use promguard_core::{DeploymentName, HostName, InterfaceName, Region, Role, SshPublicKey};
use promguard_remote::{
    converge, ConnectOptions, Connection, Connector, DesiredFile, DesiredHost, SshTarget,
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

#[test]
fn converge_a_local_monitor() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Not under /tmp: hosts get a private /tmp and must see the state dir.
    std::fs::create_dir_all("/var/tmp").unwrap();
    let dir = tempfile::Builder::new()
        .prefix("promguard-remote-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let deployment = DeploymentName::new(&format!("rt{}", std::process::id() % 100_000)).unwrap();
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
    let name = HostName::new("monitor").unwrap();
    let hosts = runtime
        .block_on(provider.create_hosts(&[HostRequest {
            name: name.clone(),
            role: Role::Monitor,
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
                "/etc/wireguard/wg0.conf",
                0o600,
                wg_conf(&private, &[(&peer_a, "10.0.0.2")]),
            ),
            DesiredFile::new("/etc/promguard/nftables.conf", 0o644, RULESET),
            DesiredFile::new(
                "/etc/prometheus/prometheus.yml",
                0o644,
                prometheus_yml("15s"),
            ),
            DesiredFile::new(
                "/etc/prometheus/promguard/node.json",
                0o644,
                r#"[{"targets":["10.0.0.1:9100"],"labels":{"instance":"monitor"}}]"#,
            ),
        ],
        node_exporter_listen: "10.0.0.1:9100".parse().unwrap(),
        prometheus_listen: Some("127.0.0.1:9090".parse().unwrap()),
        install_packages: false,
    };

    // First run: everything.
    let report = converge(&conn, &desired).unwrap();
    assert_eq!(report.changed_files.len(), 4, "{report:?}");
    assert_eq!(
        report.actions,
        [
            "wg-quick up wg0",
            "nft -f /etc/promguard/nftables.conf",
            "start node_exporter",
            "start prometheus"
        ]
    );
    assert_eq!(report.round_trips, 2);
    let (status, body) = conn
        .http_get("127.0.0.1:9090".parse().unwrap(), "/-/ready")
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let routes = conn.exec("ip route show dev wg0", b"").unwrap();
    assert!(String::from_utf8_lossy(&routes.stdout).contains("10.0.0.2"));

    // Second run: nothing to do, one round trip.
    let report = converge(&conn, &desired).unwrap();
    assert!(report.is_noop(), "{report:?}");
    assert_eq!(report.round_trips, 1);

    // A new peer: syncconf, and a route for it; node_exporter untouched.
    desired.files[0].content =
        wg_conf(&private, &[(&peer_a, "10.0.0.2"), (&peer_b, "10.0.0.3")]).into_bytes();
    let report = converge(&conn, &desired).unwrap();
    assert_eq!(report.actions, ["wg syncconf wg0"]);
    let routes =
        String::from_utf8(conn.exec("ip route show dev wg0", b"").unwrap().stdout).unwrap();
    assert!(routes.contains("10.0.0.3"), "{routes}");
    let peers = String::from_utf8(conn.exec("wg show wg0 peers", b"").unwrap().stdout).unwrap();
    assert_eq!(peers.lines().count(), 2, "{peers}");

    // A removed peer loses its route.
    desired.files[0].content = wg_conf(&private, &[(&peer_b, "10.0.0.3")]).into_bytes();
    converge(&conn, &desired).unwrap();
    let routes =
        String::from_utf8(conn.exec("ip route show dev wg0", b"").unwrap().stdout).unwrap();
    assert!(!routes.contains("10.0.0.2"), "{routes}");

    // A dead node_exporter is restarted; a changed prometheus.yml reloads.
    conn.exec_checked(
        "kill node_exporter",
        "kill $(cat /run/promguard/node_exporter.pid); sleep 0.3",
        b"",
    )
    .unwrap();
    desired.files[2].content = prometheus_yml("10s").into_bytes();
    let report = converge(&conn, &desired).unwrap();
    assert_eq!(report.actions, ["start node_exporter", "reload prometheus"]);
    assert_eq!(converge(&conn, &desired).unwrap().round_trips, 1);

    // Only the targets file changed: written, nothing restarted.
    desired.files[3].content =
        br#"[{"targets":["10.0.0.1:9100"],"labels":{"instance":"m"}}]"#.to_vec();
    let report = converge(&conn, &desired).unwrap();
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
        let report = converge(&conn, &desired).unwrap_or_else(|e| panic!("{name}: {e}"));
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
        let report = converge(&conn, &desired).unwrap();
        assert!(report.is_noop(), "{name}: {report:?}");
    }

    // A failing step names the host and the step.
    desired.files[1].content = b"this is not nftables\n".to_vec();
    let err = converge(&conn, &desired).unwrap_err().to_string();
    assert!(
        err.starts_with("nft -f /etc/promguard/nftables.conf failed on monitor"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(10));
}
