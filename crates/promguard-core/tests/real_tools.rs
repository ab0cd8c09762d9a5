//! The real tools accept what core renders: `promtool check config` for the
//! Prometheus config and its targets files, and `nft` for the firewall
//! ruleset, checked (`nft -c`) and really loaded twice inside a network
//! namespace made for the test.
//!
//! These tests need root, prometheus (promtool), nftables and iproute2.
//! They fail (never skip) when something is missing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use promguard_core::config::Config;
use promguard_core::{nftables, planner, prometheus, FirewallPolicy, Plan};

/// Helpers that run real programs; same shape as promguard-wg's.
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

    /// Runs `command` and returns its output, whatever the exit status.
    pub fn output(command: &mut Command) -> Output {
        let shown = format!("{command:?}");
        command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"))
    }

    /// Runs `command`; fails the test with the program's output when it
    /// exits unsuccessfully.
    pub fn run(command: &mut Command) -> Output {
        let shown = format!("{command:?}");
        let out = output(command);
        assert!(
            out.status.success(),
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A network namespace made for one test, deleted (with its rules) when
    /// dropped, also when the test fails.
    pub struct Netns {
        pub name: String,
    }

    impl Netns {
        pub fn new() -> Self {
            require_root();
            require_program("ip", "iproute2");
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let name = format!("pgt-core-{}-{n}", std::process::id());
            run(Command::new("ip").args(["netns", "add", &name]));
            Self { name }
        }

        /// A command that runs `program` inside the namespace.
        pub fn command(&self, program: &str) -> Command {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.name, program]);
            c
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            // No process runs in these namespaces (nft exits), so deleting
            // the namespace is all the cleanup there is.
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.name])
                .status();
        }
    }
}

use support::{require_program, run, Netns};

fn plan(config_toml: &str) -> Plan {
    let config = Config::from_toml(config_toml, Path::new("t.toml")).unwrap();
    planner::plan(&config, None).unwrap()
}

/// An IPv6 deployment with extra exporters on the monitor and the nodes.
const IPV6_EXTRA: &str = "[deployment]\nsubnet = \"fd00:10::/64\"\n\
    [monitor]\nexporters = [{ name = \"blackbox\", port = 9115 }]\n\
    [nodes]\nexporters = [{ name = \"postgres_exporter\", port = 9187 }]\n";

/// Writes the plan's Prometheus files into a scratch directory and runs
/// `promtool check config` on them.
fn promtool_check(plan: &Plan) -> String {
    require_program("promtool", "prometheus");
    let prom = plan.monitor().prometheus.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets");
    fs::create_dir(&targets).unwrap();
    let files = prometheus::render_targets(prom);
    assert_eq!(files.len(), prom.jobs().len());
    for (path, json) in &files {
        let name = Path::new(path).file_name().unwrap();
        fs::write(targets.join(name), json).unwrap();
    }
    let config_path = dir.path().join("prometheus.yml");
    let config =
        prometheus::render_config_with_targets_dir(prom, targets.to_str().expect("UTF-8 path"));
    fs::write(&config_path, config).unwrap();
    let out = run(Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&config_path));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn promtool_accepts_default_prometheus_config() {
    let out = promtool_check(&plan(""));
    assert!(out.contains("SUCCESS"), "{out}");
    // A missing targets file is only a warning to promtool.
    assert!(!out.contains("WARNING"), "{out}");
}

#[test]
fn promtool_accepts_ipv6_config_with_extra_exporters() {
    let plan = plan(IPV6_EXTRA);
    assert_eq!(plan.monitor().prometheus.as_ref().unwrap().jobs().len(), 3);
    let out = promtool_check(&plan);
    assert!(out.contains("SUCCESS") && !out.contains("WARNING"), "{out}");
}

#[test]
fn promtool_rejects_a_broken_targets_file() {
    // Proves the check above really reads the targets files.
    require_program("promtool", "prometheus");
    let prom = plan("").monitor().prometheus.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("node.json"), "[{\"targets\": 1}]\n").unwrap();
    let config_path = dir.path().join("prometheus.yml");
    fs::write(
        &config_path,
        prometheus::render_config_with_targets_dir(&prom, dir.path().to_str().unwrap()),
    )
    .unwrap();
    let out = support::output(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(&config_path),
    );
    assert!(
        !out.status.success(),
        "promtool accepted a broken targets file"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checking SD file"), "{stderr}");
}

fn write_ruleset(dir: &Path, policy: &FirewallPolicy) -> PathBuf {
    let path = dir.join("nftables.conf");
    let mut file = fs::File::create(&path).unwrap();
    file.write_all(nftables::render(policy).as_bytes()).unwrap();
    path
}

fn list_table(netns: &Netns, table: &str) -> String {
    let mut command = netns.command("nft");
    command.args(["list", "table"]).args(table.split(' '));
    String::from_utf8(run(&mut command).stdout).unwrap()
}

/// Checks with `nft -c`, then loads the ruleset twice into a namespace that
/// already has a table of someone else, and checks that both tables are
/// there and the second load changed nothing.
fn nft_check_and_load(policy: &FirewallPolicy) -> String {
    require_program("nft", "nftables");
    let netns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let ruleset = write_ruleset(dir.path(), policy);

    run(netns.command("nft").arg("-c").arg("-f").arg(&ruleset));

    let other = dir.path().join("other.nft");
    fs::write(
        &other,
        "table inet other {\n\tchain input {\n\t\ttype filter hook input priority 10; policy accept;\n\t\ttcp dport 8080 counter accept\n\t}\n}\n",
    )
    .unwrap();
    run(netns.command("nft").arg("-f").arg(&other));
    let other_before = list_table(&netns, "inet other");

    run(netns.command("nft").arg("-f").arg(&ruleset));
    let first = list_table(&netns, nftables::TABLE);
    run(netns.command("nft").arg("-f").arg(&ruleset));
    let second = list_table(&netns, nftables::TABLE);
    assert_eq!(first, second, "loading twice gives the same table");
    assert_eq!(
        list_table(&netns, "inet other"),
        other_before,
        "the other table survives untouched"
    );
    second
}

#[test]
fn nft_loads_ipv4_ruleset_idempotently_and_leaves_other_tables() {
    let plan = plan("");
    let listed = nft_check_and_load(&plan.hosts[1].firewall);
    assert!(listed.contains("policy drop"), "{listed}");
    assert!(
        listed.contains("iifname \"wg0\" ip saddr 10.0.0.1 tcp dport 9100 accept"),
        "{listed}"
    );
    // The monitor's ruleset loads too.
    nft_check_and_load(&plan.monitor().firewall);
}

#[test]
fn nft_loads_ipv6_ruleset_with_several_exporter_ports() {
    let plan = plan(IPV6_EXTRA);
    let listed = nft_check_and_load(&plan.hosts[1].firewall);
    assert!(
        listed.contains("ip6 saddr fd00:10::1 tcp dport { 9100, 9187 } accept"),
        "{listed}"
    );
}

#[test]
fn nft_rejects_a_broken_ruleset() {
    // Proves `nft -c` really checks what it is given.
    require_program("nft", "nftables");
    let netns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write_ruleset(dir.path(), &plan("").hosts[1].firewall);
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("policy drop", "policy maybe");
    fs::write(&path, text).unwrap();
    let out = support::output(netns.command("nft").arg("-c").arg("-f").arg(&path));
    assert!(!out.status.success(), "nft accepted a broken ruleset");
}
