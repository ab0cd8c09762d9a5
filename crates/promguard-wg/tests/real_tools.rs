//! The real WireGuard tools accept what this crate renders: every config of
//! a plan goes through `wg-quick strip` and `wg setconf` on a throwaway
//! wireguard-go interface inside a network namespace made for the test, and
//! `wg show <if> dump` of that interface parses back into the plan's peers.
//!
//! These tests need root and wireguard-tools, wireguard-go and iproute2.
//! They fail (never skip) when something is missing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use promguard_core::config::Config;
use promguard_core::plan::host_network;
use promguard_core::{planner, HostPlan, Plan, PrivateKey};
use promguard_wg::{parse_dump, render, Secrets};

/// Helpers that run real programs; shared shape with core's real-tool tests.
mod support {
    use super::*;

    /// Fails the test unless it runs as root.
    pub fn require_root() {
        let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .expect("Uid line in /proc/self/status");
        assert_eq!(
            uid, "0",
            "these tests create network namespaces and must run as root (effective uid is {uid}); run them with sudo or in the project's container"
        );
    }

    /// The path of `program`, or a failure saying which package to install.
    pub fn require_program(program: &str, package: &str) -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("program {program} is missing: apt-get install {package}"))
    }

    /// Runs `command`, feeding it `stdin`, and returns its output; fails the
    /// test with the program's stderr when it exits unsuccessfully.
    pub fn run(command: &mut Command, stdin: &[u8]) -> Output {
        let shown = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin)
            .unwrap_or_else(|e| panic!("cannot write to {shown}: {e}"));
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("cannot wait for {shown}: {e}"));
        assert!(
            output.status.success(),
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A network namespace made for one test, with at most one wireguard-go
    /// interface in it. Dropping it ends the processes inside (all started by
    /// this test), deletes the namespace and removes the control socket.
    pub struct Netns {
        pub name: String,
        interface: Option<String>,
    }

    impl Netns {
        pub fn new() -> Self {
            require_root();
            require_program("ip", "iproute2");
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let name = format!("pgt-wg-{}-{n}", std::process::id());
            run(Command::new("ip").args(["netns", "add", &name]), b"");
            Self {
                name,
                interface: None,
            }
        }

        /// A command that runs `program` inside the namespace.
        pub fn command(&self, program: &str) -> Command {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.name, program]);
            c
        }

        /// Starts wireguard-go on a new interface in the namespace and
        /// returns the interface's name.
        pub fn start_wireguard_go(&mut self) -> String {
            require_program("wireguard-go", "wireguard-go");
            assert!(self.interface.is_none(), "one interface per namespace");
            // Interface names are at most 15 bytes, and the control socket
            // directory is shared by all namespaces, so the name must be
            // unique on the machine: pid and a counter.
            let interface = (0..100)
                .map(|_| {
                    format!(
                        "pgt{}w{}",
                        std::process::id() % 1000,
                        COUNTER.fetch_add(1, Ordering::SeqCst)
                    )
                })
                .find(|i| !socket_path(i).exists())
                .expect("a free interface name");
            self.interface = Some(interface.clone());
            // wireguard-go daemonizes; the parent returns once the device is up.
            run(
                self.command("env")
                    .arg("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1")
                    .arg("wireguard-go")
                    .arg(&interface),
                b"",
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while !socket_path(&interface).exists() {
                assert!(
                    Instant::now() < deadline,
                    "wireguard-go {interface} made no control socket within 10s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            interface
        }

        fn pids(&self) -> Vec<String> {
            Command::new("ip")
                .args(["netns", "pids", &self.name])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        }
    }

    pub fn socket_path(interface: &str) -> PathBuf {
        Path::new("/var/run/wireguard").join(format!("{interface}.sock"))
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            // Only processes this test started live in its namespace.
            let pids = self.pids();
            for pid in &pids {
                let _ = Command::new("kill").arg(pid).status();
            }
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.name])
                .status();
            if let Some(interface) = &self.interface {
                // wireguard-go removes its socket on exit; wait briefly, then
                // remove it ourselves if it is still there.
                let socket = socket_path(interface);
                let deadline = Instant::now() + Duration::from_secs(3);
                while socket.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = fs::remove_file(socket);
            }
        }
    }
}

use support::{require_program, run, Netns};

/// A plan whose hosts all have public addresses, so configs carry
/// endpoints; IPv6 underlay for IPv6 subnets.
fn plan_with_endpoints(config_toml: &str) -> Plan {
    let config = Config::from_toml(config_toml, Path::new("t.toml")).unwrap();
    let mut state = planner::plan(&config, None).unwrap().next_state;
    for (i, record) in state.hosts.values_mut().enumerate() {
        let address = if config.subnet.is_ipv4() {
            format!("198.18.0.{}", 10 + i)
        } else {
            format!("2001:db8::{}", 10 + i)
        };
        record.public_address = Some(address.parse().unwrap());
        record.created = true;
    }
    planner::plan(&config, Some(&state)).unwrap()
}

/// Renders `host`, feeds it to `wg-quick strip` and `wg setconf` on a fresh
/// wireguard-go interface, and checks that the interface then has exactly
/// the plan's key, port and peers.
fn check_host_with_real_tools(host: &HostPlan) {
    require_program("wg", "wireguard-tools");
    require_program("wg-quick", "wireguard-tools");
    let mut netns = Netns::new();
    let interface = netns.start_wireguard_go();

    let dir = tempfile::tempdir().unwrap();
    // wg-quick takes the interface name from the file name.
    let config = dir.path().join(format!("{interface}.conf"));
    fs::write(&config, render(host, Secrets::Include)).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let stripped = run(Command::new("wg-quick").arg("strip").arg(&config), b"").stdout;
    let stripped_path = dir.path().join("stripped.conf");
    fs::write(&stripped_path, &stripped).unwrap();
    fs::set_permissions(&stripped_path, fs::Permissions::from_mode(0o600)).unwrap();
    run(
        netns
            .command("wg")
            .arg("setconf")
            .arg(&interface)
            .arg(&stripped_path),
        b"",
    );

    let dump = run(netns.command("wg").args(["show", &interface, "dump"]), b"").stdout;
    let dump = parse_dump(&String::from_utf8(dump).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", host.name));
    assert_eq!(
        dump.interface.public_key,
        Some(host.interface.public_key()),
        "{}: interface key",
        host.name
    );
    assert_eq!(dump.interface.listen_port, host.interface.listen_port.get());
    assert_eq!(dump.peers.len(), host.peers.len(), "{}: peers", host.name);
    for want in &host.peers {
        let got = dump
            .peer(&want.public_key)
            .unwrap_or_else(|| panic!("{}: peer {} missing", host.name, want.name));
        assert_eq!(got.preshared_key, want.preshared_key, "{}", want.name);
        assert_eq!(got.allowed_ips, [host_network(want.allowed_ip)]);
        assert_eq!(got.endpoint, want.endpoint, "{}", want.name);
        assert_eq!(got.persistent_keepalive, want.persistent_keepalive);
        assert_eq!(got.latest_handshake, None, "no packet left the namespace");
    }
}

#[test]
fn default_plan_is_accepted_by_wg_quick_and_wg_setconf() {
    let plan = plan_with_endpoints("");
    assert_eq!(plan.hosts.len(), 4);
    for host in &plan.hosts {
        check_host_with_real_tools(host);
    }
}

#[test]
fn ipv6_plan_is_accepted_by_wg_quick_and_wg_setconf() {
    let plan = plan_with_endpoints("[deployment]\nsubnet = \"fd00:10::/64\"\n");
    for host in &plan.hosts {
        check_host_with_real_tools(host);
    }
}

#[test]
fn plan_without_endpoints_or_preshared_keys_is_accepted() {
    let config = Config::from_toml(
        "[deployment]\npreshared_keys = false\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let plan = planner::plan(&config, None).unwrap();
    check_host_with_real_tools(plan.monitor());
    check_host_with_real_tools(&plan.hosts[1]);
}

#[test]
fn wg_pubkey_agrees_with_core() {
    support::require_program("wg", "wireguard-tools");
    for _ in 0..8 {
        let key = PrivateKey::generate();
        let out = run(
            Command::new("wg").arg("pubkey"),
            format!("{}\n", key.expose_base64()).as_bytes(),
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim_end(),
            key.public_key().to_string()
        );
    }
}

#[test]
fn netns_cleanup_leaves_nothing_behind() {
    let mut netns = Netns::new();
    let name = netns.name.clone();
    let interface = netns.start_wireguard_go();
    assert!(support::socket_path(&interface).exists());
    drop(netns);
    assert!(!support::socket_path(&interface).exists());
    let list = run(Command::new("ip").args(["netns", "list"]), b"").stdout;
    assert!(!String::from_utf8_lossy(&list)
        .split_whitespace()
        .any(|n| n == name));
}
