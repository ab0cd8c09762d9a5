//! The local provider against the real machine: namespaces, sshd, teardown.
//! These tests need root and the packages the provider needs; without them
//! they fail and say what is missing (they never skip).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use promguard_cloud::local::{self, LocalOptions, LocalProvider};
use promguard_cloud::{CloudProvider, Host, HostRequest};
use promguard_core::{DeploymentName, HostName, Region, Role, SshPublicKey};

/// A deployment that is destroyed when the test ends, also on panic.
struct Deployment {
    provider: LocalProvider,
    _state: tempfile::TempDir,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Err(err) = self.provider.destroy_deployment_blocking() {
            eprintln!("cleanup of {} failed: {err}", self.provider.deployment());
        }
    }
}

fn require_environment() {
    if let Err(err) = local::check_programs(local::REQUIRED_PROGRAMS) {
        panic!("the local provider tests need root and these packages: {err}");
    }
}

/// A deployment named after this process and `suffix`, with its state in a
/// fresh directory under /var/tmp (not /tmp, which hosts replace).
fn deployment(suffix: &str) -> Deployment {
    require_environment();
    let state = tempfile::Builder::new()
        .prefix("promguard-local-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let name = DeploymentName::new(&format!("t{}{suffix}", std::process::id())).unwrap();
    let options = LocalOptions {
        state_dir: state.path().to_owned(),
        ..LocalOptions::default()
    };
    Deployment {
        provider: LocalProvider::new(name, options),
        _state: state,
    }
}

fn request(name: &str, role: Role) -> HostRequest {
    HostRequest {
        name: HostName::new(name).unwrap(),
        role,
        region: Region::new("local").unwrap(),
    }
}

fn name(text: &str) -> HostName {
    HostName::new(text).unwrap()
}

fn read_banner(mut stream: TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a shell command inside a host (all its namespaces).
fn in_host(provider: &LocalProvider, host: &str, script: &str) -> String {
    let pid = provider
        .host_init_pid(&name(host))
        .expect("host is running")
        .to_string();
    run(
        "nsenter",
        &["-t", &pid, "-m", "-u", "-i", "-n", "-p", "sh", "-c", script],
    )
}

/// What the root namespace looks like, minus counters that change by
/// themselves: interfaces with their addresses, and routes.
fn root_network() -> (Vec<String>, Vec<String>) {
    let addrs: Vec<serde_json::Value> = serde_json::from_str(&run("ip", &["-j", "addr"])).unwrap();
    let mut interfaces: Vec<String> = addrs
        .iter()
        .map(|link| {
            let mut locals: Vec<String> = link["addr_info"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| format!("{}/{}", i["local"], i["prefixlen"]))
                        .collect()
                })
                .unwrap_or_default();
            locals.sort();
            format!("{} {}", link["ifname"], locals.join(","))
        })
        .collect();
    interfaces.sort();
    let routes: Vec<serde_json::Value> =
        serde_json::from_str(&run("ip", &["-j", "route", "show", "table", "all"])).unwrap();
    let mut routes: Vec<String> = routes
        .iter()
        .map(|r| format!("{} {} {}", r["dst"], r["dev"], r["table"]))
        .collect();
    routes.sort();
    (interfaces, routes)
}

fn netns_exists(name: &str) -> bool {
    local::netns_path(name).exists()
}

fn pid_alive(pid: u32) -> bool {
    // A zombie has ended too; /proc/<pid>/stat says Z for it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z'
        })
        .unwrap_or(false)
}

fn client_key(dir: &Path) -> SshPublicKey {
    let key = dir.join("id_ed25519");
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    SshPublicKey::parse(&std::fs::read_to_string(key.with_extension("pub")).unwrap()).unwrap()
}

fn by_name<'a>(hosts: &'a [Host], host: &str) -> &'a Host {
    hosts.iter().find(|h| h.name.as_str() == host).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_are_isolated_reachable_and_leave_nothing_behind() {
    let before = root_network();
    let deployment = deployment("a");
    let provider = &deployment.provider;
    provider.preflight().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let login = client_key(keys.path());
    provider.register_ssh_key(&login).await.unwrap();

    let hosts = provider
        .create_hosts(&[
            request("monitor", Role::Monitor),
            request("node-1", Role::Node),
        ])
        .await
        .unwrap();
    assert_eq!(hosts.len(), 2);
    let underlay = provider.underlay().unwrap();
    for host in &hosts {
        let IpAddr::V4(address) = host.public_address else {
            panic!("{host:?} has no IPv4 address")
        };
        assert!(underlay.contains(address), "{host:?} outside {underlay}");
        assert_eq!(host.ssh, SocketAddr::new(host.public_address, 22));
        // The host key reported is the one the host's sshd uses.
        let public = std::fs::read_to_string(
            provider
                .host_dir(&host.name)
                .join("ssh_host_ed25519_key.pub"),
        )
        .unwrap();
        assert_eq!(
            host.ssh_host_key.as_ref(),
            Some(&SshPublicKey::parse(&public).unwrap())
        );
        let banner = read_banner(provider.connect(host.ssh).unwrap());
        assert!(banner.starts_with("SSH-2.0-"), "{banner:?}");
    }
    let monitor = by_name(&hosts, "monitor");
    let node = by_name(&hosts, "node-1");
    assert_eq!(monitor.role, Some(Role::Monitor));

    // The login key was authorized inside the host's private /root.
    let authorized = in_host(provider, "monitor", "cat /root/.ssh/authorized_keys");
    assert!(authorized.contains(login.base64()), "{authorized}");

    // Private /etc/wireguard and /run, own host name, own PID namespace.
    let probe = Path::new("/etc/wireguard/promguard-test-probe");
    let out = in_host(
        provider,
        "node-1",
        "echo probe > /etc/wireguard/promguard-test-probe; hostname; ls /run; cat /run/sshd.pid",
    );
    assert!(provider
        .host_dir(&name("node-1"))
        .join("etc-wireguard/promguard-test-probe")
        .exists());
    assert!(
        !probe.exists(),
        "the probe leaked into the machine's /etc/wireguard"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "node-1", "{out}");
    assert!(
        lines.contains(&"wireguard") && lines.contains(&"sshd"),
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"1"), "sshd is PID 1 of the host: {out}");

    // Prometheus' data directory belongs to the prometheus user.
    let owner = in_host(
        provider,
        "monitor",
        "stat -c %U /var/lib/prometheus/metrics2",
    );
    assert_eq!(owner.trim(), "prometheus");

    // No default route: only the underlay.
    let netns = provider.host_netns(&name("monitor")).unwrap();
    let routes = run("ip", &["-n", &netns, "-4", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    assert!(routes.contains(&underlay.to_string()), "{routes}");

    // Hosts reach each other on the underlay.
    let node_ssh = node.ssh;
    let banner = local::run_in_netns(&local::netns_path(&netns), move || {
        read_banner(TcpStream::connect_timeout(&node_ssh, Duration::from_secs(5)).unwrap())
    })
    .unwrap();
    assert!(banner.starts_with("SSH-2.0-"), "{banner:?}");

    // An orphan re-parented to sshd (PID 1) is reaped when it ends.
    in_host(provider, "monitor", "(sleep 0.2 &) ; true");
    std::thread::sleep(Duration::from_millis(600));
    let zombies = in_host(provider, "monitor", "ps -e -o stat= | grep -c '^Z' || true");
    assert_eq!(zombies.trim(), "0", "zombies in the host");

    // Creating a host that exists is an error naming it.
    let err = provider
        .create_hosts(&[request("monitor", Role::Monitor)])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("monitor") && err.contains("already exists"),
        "{err}"
    );

    let mut listed: Vec<String> = provider
        .list_hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.name.to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, ["monitor", "node-1"]);

    // The root namespace did not change.
    assert_eq!(root_network(), before);

    let pids: Vec<u32> = ["monitor", "node-1"]
        .iter()
        .map(|h| provider.host_init_pid(&name(h)).unwrap())
        .collect();
    let host_netns: Vec<String> = ["monitor", "node-1"]
        .iter()
        .map(|h| provider.host_netns(&name(h)).unwrap())
        .collect();
    provider.destroy_deployment().await.unwrap();
    for pid in pids {
        assert!(!pid_alive(pid), "init {pid} still runs");
    }
    for ns in host_netns.iter().chain([&provider.hub_netns()]) {
        assert!(!netns_exists(ns), "{ns} left behind");
    }
    assert!(!deployment
        ._state
        .path()
        .join(provider.deployment().as_str())
        .exists());
    assert!(provider.list_hosts().await.unwrap().is_empty());
    // A second destroy is a no-op.
    provider.destroy_deployment().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn destroying_one_host_keeps_the_others_and_frees_its_slot() {
    let deployment = deployment("b");
    let provider = &deployment.provider;
    let hosts = provider
        .create_hosts(&[request("one", Role::Node), request("two", Role::Node)])
        .await
        .unwrap();
    let one_netns = provider.host_netns(&name("one")).unwrap();
    let one_pid = provider.host_init_pid(&name("one")).unwrap();
    provider
        .destroy_hosts(&[name("one"), name("no-such-host")])
        .await
        .unwrap();
    assert!(!pid_alive(one_pid));
    assert!(!netns_exists(&one_netns));
    assert!(!provider.host_dir(&name("one")).exists());
    let listed = provider.list_hosts().await.unwrap();
    assert_eq!(listed, vec![by_name(&hosts, "two").clone()]);
    read_banner(provider.connect(by_name(&hosts, "two").ssh).unwrap());

    // The freed index (and address) is used again at once.
    let again = provider
        .create_hosts(&[request("three", Role::Node)])
        .await
        .unwrap();
    assert_eq!(
        again[0].public_address,
        by_name(&hosts, "one").public_address
    );
    read_banner(provider.connect(again[0].ssh).unwrap());

    // An outsider on the same bridge reaches the hosts' SSH ports.
    let outsider = provider.create_outsider(&name("internet")).await.unwrap();
    let ssh = again[0].ssh;
    let banner = local::run_in_netns(&local::netns_path(&outsider.netns), move || {
        read_banner(TcpStream::connect_timeout(&ssh, Duration::from_secs(5)).unwrap())
    })
    .unwrap();
    assert!(banner.starts_with("SSH-2.0-"));
    assert!(provider.underlay().unwrap().contains(outsider.address));

    provider.destroy_deployment().await.unwrap();
    assert!(!netns_exists(&outsider.netns));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_deployments_side_by_side() {
    let first = deployment("c");
    let second = deployment("d");
    let a = first
        .provider
        .create_hosts(&[request("host", Role::Node)])
        .await
        .unwrap();
    let b = second
        .provider
        .create_hosts(&[request("host", Role::Node)])
        .await
        .unwrap();
    assert_ne!(first.provider.hub_netns(), second.provider.hub_netns());
    // Separate state directories in this test, so only the routes keep
    // them apart; with a shared state directory the records do too (see
    // the unit tests of record.rs).
    read_banner(first.provider.connect(a[0].ssh).unwrap());
    read_banner(second.provider.connect(b[0].ssh).unwrap());
    first.provider.destroy_deployment().await.unwrap();
    assert_eq!(second.provider.list_hosts().await.unwrap().len(), 1);
    read_banner(second.provider.connect(b[0].ssh).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_deployments_in_one_state_directory_get_different_underlays() {
    let first = deployment("e");
    let options = LocalOptions {
        state_dir: first._state.path().to_owned(),
        ..LocalOptions::default()
    };
    let second = LocalProvider::new(
        DeploymentName::new(&format!("t{}f", std::process::id())).unwrap(),
        options,
    );
    let guard = Deployment {
        provider: second.clone(),
        _state: tempfile::tempdir_in("/var/tmp").unwrap(),
    };
    first.provider.create_outsider(&name("x")).await.unwrap();
    second.create_outsider(&name("x")).await.unwrap();
    assert_ne!(first.provider.underlay(), second.underlay());
    drop(guard);
}

#[tokio::test]
async fn a_state_directory_under_tmp_is_refused() {
    let provider = LocalProvider::new(
        DeploymentName::new("tmp-test").unwrap(),
        LocalOptions {
            state_dir: "/tmp/promguard-state".into(),
            ..LocalOptions::default()
        },
    );
    let err = provider
        .create_hosts(&[request("a", Role::Node)])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/tmp/promguard-state is under /tmp"), "{err}");
    assert!(!Path::new("/tmp/promguard-state").exists());
}

/// What the recipe will do: log in with the registered key, pinning the
/// reported host key, from the hub namespace, and bring up WireGuard with
/// wireguard-go (there is no kernel module) in the host's private /run.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_login_and_userspace_wireguard_work_inside_a_host() {
    let deployment = deployment("g");
    let provider = &deployment.provider;
    let keys = tempfile::tempdir().unwrap();
    provider
        .register_ssh_key(&client_key(keys.path()))
        .await
        .unwrap();
    let hosts = provider
        .create_hosts(&[request("wg-host", Role::Node)])
        .await
        .unwrap();
    let host = &hosts[0];
    let known_hosts = keys.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "{} {}\n",
            host.public_address,
            host.ssh_host_key.as_ref().unwrap()
        ),
    )
    .unwrap();
    let private_key = run("wg", &["genkey"]);
    let script = format!(
        "set -e; umask 077; printf '[Interface]\\nPrivateKey = {}\\nAddress = 10.99.0.1/24\\nListenPort = 51820\\n' > /etc/wireguard/wg0.conf; \
         WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wg-quick up wg0 >/dev/null 2>&1; \
         wg show wg0 listen-port; ls /run/wireguard; echo HOME=$HOME",
        private_key.trim()
    );
    let identity = keys.path().join("id_ed25519");
    let ssh_args = [
        "netns",
        "exec",
        &provider.hub_netns(),
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        identity.to_str().unwrap(),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        &format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=5",
        &format!("root@{}", host.public_address),
        &script,
    ];
    let started = std::time::Instant::now();
    let out = run("ip", &ssh_args);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ssh took {:?}",
        started.elapsed()
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["51820", "wg0.sock", "HOME=/root"],
        "{out}"
    );
    assert!(!Path::new("/run/wireguard/wg0.sock").exists());
    // wireguard-go was re-parented to the host's PID 1 and ends with it.
    let interfaces = run(
        "ip",
        &[
            "-n",
            &provider.host_netns(&host.name).unwrap(),
            "-br",
            "link",
        ],
    );
    assert!(interfaces.contains("wg0"), "{interfaces}");
}

/// Bring-up of a realistic deployment size is concurrent and quick; the
/// time is printed, not asserted (this is no benchmark).
#[tokio::test(flavor = "multi_thread")]
async fn thirty_hosts_come_up_and_go_away() {
    let deployment = deployment("h");
    let provider = &deployment.provider;
    let requests: Vec<HostRequest> = (0..30)
        .map(|i| request(&format!("node-{i}"), Role::Node))
        .collect();
    let started = std::time::Instant::now();
    let hosts = provider.create_hosts(&requests).await.unwrap();
    eprintln!("30 hosts up in {:?}", started.elapsed());
    assert_eq!(hosts.len(), 30);
    let mut addresses: Vec<IpAddr> = hosts.iter().map(|h| h.public_address).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 30);
    for host in &hosts {
        read_banner(provider.connect(host.ssh).unwrap());
    }
    let started = std::time::Instant::now();
    provider.destroy_deployment().await.unwrap();
    eprintln!("30 hosts destroyed in {:?}", started.elapsed());
    for host in &hosts {
        assert!(!netns_exists(&host.id));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namesake_in_another_state_directory_is_left_alone() {
    let first = deployment("i");
    first.provider.create_outsider(&name("x")).await.unwrap();
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let namesake = Deployment {
        provider: LocalProvider::new(
            first.provider.deployment().clone(),
            LocalOptions {
                state_dir: state.path().to_owned(),
                ..LocalOptions::default()
            },
        ),
        _state: state,
    };
    let err = namesake
        .provider
        .create_hosts(&[request("a", Role::Node)])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists but is not recorded"), "{err}");
    namesake.provider.destroy_deployment().await.unwrap();
    assert!(netns_exists(&first.provider.hub_netns()));
    drop(namesake);
    assert!(netns_exists(&first.provider.hub_netns()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_with_a_provided_host_key_presents_it_and_survives_sighup() {
    let deployment = deployment("k");
    let provider = deployment.provider.clone();
    let keys = tempfile::tempdir().unwrap();
    let login = client_key(keys.path());
    // A registered login key must not be authorized: only the given ones are.
    let other = keys.path().join("other");
    std::fs::create_dir(&other).unwrap();
    provider
        .register_ssh_key(&client_key(&other))
        .await
        .unwrap();
    let host_key_path = keys.path().join("host_key");
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            host_key_path.to_str().unwrap(),
        ],
    );
    let private = std::fs::read_to_string(&host_key_path).unwrap();
    let public =
        SshPublicKey::parse(&std::fs::read_to_string(host_key_path.with_extension("pub")).unwrap())
            .unwrap();
    let host = tokio::task::spawn_blocking({
        let provider = provider.clone();
        let login = login.clone();
        move || {
            provider.create_host_with_key_blocking(
                &request("droplet", Role::Node),
                &private,
                std::slice::from_ref(&login),
            )
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(host.ssh_host_key.as_ref(), Some(&public));

    // sshd presents exactly that key.
    let hub = provider.hub_netns();
    let scanned = run(
        "ip",
        &[
            "netns",
            "exec",
            &hub,
            "ssh-keyscan",
            "-t",
            "ed25519",
            &host.public_address.to_string(),
        ],
    );
    assert!(
        scanned.contains(&public.to_string()),
        "ssh-keyscan saw {scanned}, expected {public}"
    );
    let authorized = in_host(&provider, "droplet", "cat /root/.ssh/authorized_keys");
    assert_eq!(authorized.trim(), login.to_string());

    // SIGHUP makes sshd, the host's PID 1, re-execute itself: the host
    // lives on and accepts connections again.
    let pid = provider.host_init_pid(&name("droplet")).unwrap();
    in_host(&provider, "droplet", "kill -HUP 1");
    let ssh = host.ssh;
    let mut banner = String::new();
    for _ in 0..50 {
        if let Ok(stream) = provider.connect(ssh) {
            banner = read_banner(stream);
            if banner.starts_with("SSH-2.0-") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(banner.starts_with("SSH-2.0-"), "sshd is gone after SIGHUP");
    assert_eq!(provider.host_init_pid(&name("droplet")), Some(pid));

    provider.destroy_hosts_blocking(&[name("droplet")]).unwrap();
    assert!(!pid_alive(pid));
    assert!(provider.list_hosts().await.unwrap().is_empty());
}
