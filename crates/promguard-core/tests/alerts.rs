//! The real tools accept and pass what `alerts` renders: `promtool check
//! rules` and `promtool test rules` (the cases in `tests/data/alerts/`) for
//! the rules file, `amtool check-config` for `alertmanager.yml`. A rule
//! changed to a wrong form, such as the published
//! `wireguard_latest_handshake_seconds > 180`, fails the cases.
//!
//! These tests need promtool (Debian's `prometheus`) and amtool (Debian's
//! `prometheus-alertmanager`); they fail (never skip) when one is missing.
//! They live here rather than in `src/alerts.rs` because core's source does
//! no IO and starts no processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use promguard_core::alerts::{self, AlertRules};
use promguard_core::config::Config;

/// The thresholds `tests/data/alerts/*.test.yml` are written for.
fn test_rules() -> AlertRules {
    AlertRules {
        target_down_after: Duration::from_secs(120),
        handshake_stale_after: Duration::from_secs(180),
        never_handshook_after: Duration::from_secs(300),
        collector_stale_after: Duration::from_secs(120),
    }
}

/// The promtool test files, next to which the rules are rendered.
const TEST_FILES: [&str; 2] = ["promguard.test.yml", "promguard-unix-time.test.yml"];

/// The rules' expression for a stale handshake with [`test_rules`].
const STALE_EXPR: &str =
    "time() - wireguard_latest_handshake_seconds > 180 and wireguard_latest_handshake_seconds > 0";

/// The path of `program`, or a failure saying which Debian package to
/// install.
fn require_program(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("program {program} is missing: apt-get install {package} (Debian's {package} package)")
        })
}

fn output(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory holding `rules` as `promguard.rules.yml` and the
/// promtool test files.
fn rules_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("promguard.rules.yml"), rules).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/alerts");
    for file in TEST_FILES {
        fs::copy(data.join(file), dir.path().join(file))
            .unwrap_or_else(|e| panic!("cannot copy {file}: {e}"));
    }
    dir
}

fn promtool(dir: &Path, args: &[&str]) -> Output {
    let promtool = require_program("promtool", "prometheus");
    output(Command::new(promtool).current_dir(dir).args(args))
}

fn promtool_test(dir: &Path) -> Output {
    let mut args = vec!["test", "rules"];
    args.extend(TEST_FILES);
    promtool(dir, &args)
}

#[test]
fn promtool_checks_and_passes_the_rules() {
    let rules = alerts::render_rules(&test_rules());
    assert!(rules.contains(STALE_EXPR), "{rules}");
    let dir = rules_dir(&rules);
    let out = promtool(dir.path(), &["check", "rules", "promguard.rules.yml"]);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("SUCCESS: 9 rules found"),
        "{}",
        text(&out)
    );
    let out = promtool_test(dir.path());
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));
}

#[test]
fn promtool_checks_the_default_rules() {
    let rules = alerts::render_rules(&AlertRules::from_config(&Config::default().alerts));
    let dir = rules_dir(&rules);
    let out = promtool(dir.path(), &["check", "rules", "promguard.rules.yml"]);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );
}

/// The cases fail when the stale-handshake rule is replaced by `wrong`.
fn stale_rule_fails(wrong: &str) {
    let rules = alerts::render_rules(&test_rules()).replace(STALE_EXPR, wrong);
    assert!(rules.contains(wrong), "the stale rule was not replaced");
    let dir = rules_dir(&rules);
    // The wrong rule is valid PromQL: only the cases catch it.
    let out = promtool(dir.path(), &["check", "rules", "promguard.rules.yml"]);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );
    let out = promtool_test(dir.path());
    assert!(
        !out.status.success(),
        "promtool test rules passed with the stale rule `{wrong}`:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("alertname: WireGuardHandshakeStale"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_always_firing_stale_rule_fails_the_cases() {
    // Compares a Unix timestamp with a duration.
    stale_rule_fails("wireguard_latest_handshake_seconds > 180");
}

#[test]
fn a_stale_rule_firing_for_peers_that_never_shook_hands_fails_the_cases() {
    stale_rule_fails("time() - wireguard_latest_handshake_seconds > 180");
}

#[test]
fn a_never_handshook_rule_without_its_wait_fails_the_cases() {
    let rules = alerts::render_rules(&test_rules());
    let wrong = rules.replacen(
        "expr: \"wireguard_latest_handshake_seconds == 0\"\n        for: 5m\n",
        "expr: \"wireguard_latest_handshake_seconds == 0\"\n",
        1,
    );
    assert_ne!(wrong, rules, "the never-handshook rule was not changed");
    let out = promtool_test(rules_dir(&wrong).path());
    assert!(!out.status.success(), "{}", text(&out));
}

fn amtool_check(config: &str) -> Output {
    let amtool = require_program("amtool", "prometheus-alertmanager");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alertmanager.yml");
    fs::write(&path, config).unwrap();
    output(Command::new(amtool).arg("check-config").arg(&path))
}

#[test]
fn amtool_accepts_alertmanager_configs() {
    let with_receivers = r#"
[alerts]
webhooks = ["https://hooks.example.com/services/T000/B000/XXXX", "http://[fd00::9]:8080/alert?team=ops"]
[alerts.email]
to = ["ops@example.com", "oncall@example.org"]
from = "promguard@example.com"
smarthost = "[2001:db8::25]:587"
username = "promguard@example.com"
password_file = "/run/secrets/smtp"
"#;
    let email_only = "[alerts.email]\nto = \"ops@example.com\"\nfrom = \"pg@example.com\"\nsmarthost = \"smtp.example.com:25\"\n";
    for (toml, password) in [
        (with_receivers, Some("p\"a:s s\\w\nord #1")),
        (email_only, None),
        ("", None),
    ] {
        let config = Config::from_toml(toml, Path::new("t.toml")).unwrap();
        let rendered = alerts::render_alertmanager(&config.alerts, password);
        let out = amtool_check(&rendered);
        assert!(
            out.status.success(),
            "amtool check-config:\n{}\n{rendered}",
            text(&out)
        );
        assert!(text(&out).contains("1 receivers"), "{}", text(&out));
        if let Some(password) = password {
            assert!(
                !text(&out).contains(password),
                "amtool printed the password"
            );
        }
    }
}

#[test]
fn amtool_rejects_a_broken_config() {
    // Proves the check above really reads the file.
    let rendered = alerts::render_alertmanager(&Config::default().alerts, None)
        .replace("receiver: \"promguard\"", "receiver: \"nobody\"");
    let out = amtool_check(&rendered);
    assert!(!out.status.success(), "amtool accepted:\n{rendered}");
}

#[test]
fn promtool_checks_prometheus_yml_with_the_rules_it_loads() {
    let plan = promguard_core::planner::plan(&Config::default(), None).unwrap();
    let prom = plan.monitor().prometheus.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().to_str().expect("a UTF-8 path");
    for (path, json) in promguard_core::prometheus::render_targets(&prom) {
        let name = Path::new(&path).file_name().unwrap();
        fs::write(dir.path().join(name), json).unwrap();
    }
    let config = dir.path().join("prometheus.yml");
    fs::write(
        &config,
        promguard_core::prometheus::render_config_with_targets_dir(&prom, scratch),
    )
    .unwrap();
    let rules = dir.path().join("promguard.rules.yml");
    fs::write(&rules, alerts::render_rules(&prom.rules)).unwrap();
    let check = || promtool(dir.path(), &["check", "config", "prometheus.yml"]);
    let out = check();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("SUCCESS: 9 rules found"),
        "{}",
        text(&out)
    );
    // Proves the check reads the rules file.
    fs::write(
        &rules,
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: \"up ==\"\n",
    )
    .unwrap();
    assert!(
        !check().status.success(),
        "promtool accepted a broken rules file"
    );
}
