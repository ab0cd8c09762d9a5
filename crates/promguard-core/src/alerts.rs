//! Alerting files for the monitor: the Prometheus rules file and
//! Alertmanager's `alertmanager.yml`. Text only; no IO.
//!
//! The rules read the metrics every host's node_exporter serves from its
//! textfile collector (see `docs/alerts.md`): `wireguard_latest_handshake_seconds`
//! is a Unix timestamp (0 for a peer that never completed a handshake), so
//! its age is `time() - wireguard_latest_handshake_seconds`, never the value
//! itself. `promtool test rules` checks every rule
//! (`tests/alerts.rs` with the cases in `tests/data/alerts/`).

use std::fmt::Write;
use std::time::Duration;

use crate::config::{format_duration, AlertsConfig};
use crate::prometheus::yaml_string;

/// Where the rules file lives on the monitor. Not under
/// [`crate::prometheus::TARGETS_DIR`], which holds only file_sd targets.
pub const RULES_PATH: &str = "/etc/prometheus/promguard-rules/promguard.rules.yml";
/// Where Alertmanager's API is reached on the monitor: loopback (only
/// there without replicas; with them it listens on every address, which
/// the firewall opens to the other replicas alone).
pub const ALERTMANAGER_LISTEN: &str = "127.0.0.1:9093";
/// The port of Alertmanager's API, which the other replicas' Prometheus
/// servers send their alerts to over WireGuard.
pub const ALERTMANAGER_API_PORT: u16 = 9093;
/// The port replicas' Alertmanagers gossip on (TCP and UDP), over
/// WireGuard: Alertmanager's default.
pub const ALERTMANAGER_CLUSTER_PORT: u16 = 9094;
/// Where Alertmanager's config lives on the monitor (Debian's path). It may
/// hold the SMTP password, so it is written with mode 0600.
pub const ALERTMANAGER_CONFIG_PATH: &str = "/etc/prometheus/alertmanager.yml";
/// The rule group's name.
pub const RULE_GROUP: &str = "promguard";
/// The one receiver every alert is routed to.
pub const RECEIVER: &str = "promguard";

/// The thresholds of the rules, from `[alerts]` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRules {
    /// `PromGuardTargetDown` fires after a target is down this long.
    pub target_down_after: Duration,
    /// `WireGuardHandshakeStale` fires once a peer's latest handshake is
    /// older than this.
    pub handshake_stale_after: Duration,
    /// `WireGuardNeverHandshook` fires after a peer had no handshake this
    /// long.
    pub never_handshook_after: Duration,
    /// `WireGuardMetricsStale` fires once the collector last ran longer ago
    /// than this, or its metrics were missing this long.
    pub collector_stale_after: Duration,
}

impl AlertRules {
    /// The rules' thresholds from the config's `[alerts]`.
    pub fn from_config(alerts: &AlertsConfig) -> Self {
        Self {
            target_down_after: alerts.target_down_after,
            handshake_stale_after: alerts.handshake_stale_after,
            never_handshook_after: alerts.never_handshook_after,
            collector_stale_after: alerts.collector_stale_after,
        }
    }
}

/// How long the Prometheus health rules look back, and how long
/// `PrometheusAlertmanagerMissing` waits.
const PROMETHEUS_WINDOW: Duration = Duration::from_secs(300);

/// One alerting rule.
struct Rule {
    alert: &'static str,
    expr: String,
    for_: Option<Duration>,
    severity: &'static str,
    /// A `reason` label telling apart rules of the same alert (`promtool
    /// check rules` refuses two with the same name and labels).
    reason: Option<&'static str>,
    summary: String,
    description: String,
}

/// A duration as Prometheus writes it, in the largest whole unit (`5m`,
/// `90s`, `1500ms`), for `for:` and range selectors and for people.
fn duration(d: Duration) -> String {
    match d.as_secs() {
        s if d.subsec_nanos() == 0 && s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if d.subsec_nanos() == 0 && s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        _ => format_duration(d),
    }
}

/// A duration as a PromQL number of seconds (`180`, `0.5`).
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", d.as_secs())
    } else {
        format!("{s}")
    }
}

fn rules(r: &AlertRules) -> Vec<Rule> {
    let down = duration(r.target_down_after);
    let stale = duration(r.handshake_stale_after);
    let never = duration(r.never_handshook_after);
    let collector = duration(r.collector_stale_after);
    let window = duration(PROMETHEUS_WINDOW);
    let peer = "{{ $labels.peer }} ({{ $labels.interface }}, public key {{ $labels.public_key }})";
    vec![
        Rule {
            alert: "PromGuardTargetDown",
            expr: "up == 0".to_owned(),
            for_: Some(r.target_down_after),
            severity: "critical",
            reason: None,
            summary: "{{ $labels.instance }}: {{ $labels.job }} is down".to_owned(),
            description: format!(
                "Prometheus has failed to scrape the {{{{ $labels.job }}}} exporter on {{{{ $labels.instance }}}} for {down}: the host, its exporter or its WireGuard tunnel is down."
            ),
        },
        Rule {
            alert: "PromGuardProbeFailed",
            // The probe job's `up` only says that the prober answered; the
            // endpoint's own health is `probe_success`.
            expr: "probe_success == 0".to_owned(),
            for_: Some(r.target_down_after),
            severity: "critical",
            reason: None,
            summary: "{{ $labels.instance }}: {{ $labels.url }} fails its {{ $labels.module }} probe".to_owned(),
            description: format!(
                "The {{{{ $labels.job }}}} prober has failed to reach {{{{ $labels.url }}}} on {{{{ $labels.instance }}}} over the tunnel with module {{{{ $labels.module }}}} for {down}: the service there is down or answers with an error."
            ),
        },
        Rule {
            alert: "WireGuardHandshakeStale",
            // The value is the age in seconds. A peer that never completed a
            // handshake reports 0, which `WireGuardNeverHandshook` covers.
            expr: format!(
                "time() - wireguard_latest_handshake_seconds > {} and wireguard_latest_handshake_seconds > 0",
                seconds(r.handshake_stale_after)
            ),
            for_: None,
            severity: "warning",
            reason: None,
            summary: "{{ $labels.instance }}: no WireGuard handshake with {{ $labels.peer }} for {{ $value | humanizeDuration }}".to_owned(),
            description: format!(
                "The latest WireGuard handshake of {{{{ $labels.instance }}}} with {peer} was {{{{ $value | humanizeDuration }}}} ago, more than {stale}: the tunnel is down."
            ),
        },
        Rule {
            alert: "WireGuardNeverHandshook",
            expr: "wireguard_latest_handshake_seconds == 0".to_owned(),
            for_: Some(r.never_handshook_after),
            severity: "warning",
            reason: None,
            summary: "{{ $labels.instance }}: no WireGuard handshake with {{ $labels.peer }} ever".to_owned(),
            description: format!(
                "{{{{ $labels.instance }}}} has not completed a single WireGuard handshake with {peer} for {never}: the peer is unreachable, or its keys or endpoint are wrong."
            ),
        },
        Rule {
            alert: "WireGuardMetricsStale",
            expr: format!(
                "time() - promguard_wireguard_collector_last_run_timestamp_seconds > {}",
                seconds(r.collector_stale_after)
            ),
            for_: None,
            severity: "warning",
            reason: Some("stopped"),
            summary: "{{ $labels.instance }}: WireGuard metrics are {{ $value | humanizeDuration }} old".to_owned(),
            description: format!(
                "The WireGuard metrics collector on {{{{ $labels.instance }}}} last ran {{{{ $value | humanizeDuration }}}} ago, more than {collector}: its timer stopped, so the WireGuard alerts for this host see old values."
            ),
        },
        Rule {
            alert: "WireGuardMetricsStale",
            expr: "up{job=\"node\"} == 1 unless on(instance) promguard_wireguard_collector_last_run_timestamp_seconds".to_owned(),
            for_: Some(r.collector_stale_after),
            severity: "warning",
            reason: Some("missing"),
            summary: "{{ $labels.instance }}: no WireGuard metrics".to_owned(),
            description: format!(
                "node_exporter on {{{{ $labels.instance }}}} is up but has served no WireGuard metrics for {collector}: the collector never ran or its file is gone, so the WireGuard alerts cannot see this host."
            ),
        },
        Rule {
            alert: "PrometheusRuleEvaluationFailures",
            expr: format!("increase(prometheus_rule_evaluation_failures_total[{window}]) > 0"),
            for_: None,
            severity: "warning",
            reason: None,
            summary: "{{ $labels.instance }}: Prometheus fails to evaluate rules".to_owned(),
            description: format!(
                "Prometheus on {{{{ $labels.instance }}}} failed to evaluate rules of group {{{{ $labels.rule_group }}}} in the last {window}: some alerts may not fire."
            ),
        },
        Rule {
            alert: "PrometheusNotificationsFailing",
            expr: format!("increase(prometheus_notifications_errors_total[{window}]) > 0"),
            for_: None,
            severity: "critical",
            reason: None,
            summary: "{{ $labels.instance }}: Prometheus cannot send alerts to Alertmanager".to_owned(),
            description: format!(
                "Prometheus on {{{{ $labels.instance }}}} failed to send notifications to Alertmanager {{{{ $labels.alertmanager }}}} in the last {window}: firing alerts may reach no receiver."
            ),
        },
        Rule {
            alert: "PrometheusAlertmanagerMissing",
            expr: "prometheus_notifications_alertmanagers_discovered < 1".to_owned(),
            for_: Some(PROMETHEUS_WINDOW),
            severity: "critical",
            reason: None,
            summary: "{{ $labels.instance }}: Prometheus knows no Alertmanager".to_owned(),
            description: format!(
                "Prometheus on {{{{ $labels.instance }}}} has had no Alertmanager to send alerts to for {window}: firing alerts reach no receiver."
            ),
        },
    ]
}

/// Renders the Prometheus rules file installed at [`RULES_PATH`]: one group,
/// [`RULE_GROUP`], every rule with a `severity` label and `summary` and
/// `description` annotations naming the host (and the peer, for WireGuard).
pub fn render_rules(r: &AlertRules) -> String {
    let mut out = String::from(
        "# Managed by PromGuard: changes here are overwritten by the next `promguard up`.\n\
         # Thresholds come from [alerts] in promguard.toml; docs/alerts.md explains each rule.\n\
         groups:\n",
    );
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = write!(out, "  - name: {}\n    rules:\n", yaml_string(RULE_GROUP));
    for rule in rules(r) {
        let _ = writeln!(out, "      - alert: {}", rule.alert);
        let _ = writeln!(out, "        expr: {}", yaml_string(&rule.expr));
        if let Some(d) = rule.for_ {
            let _ = writeln!(out, "        for: {}", duration(d));
        }
        let _ = write!(
            out,
            "        labels:\n          severity: {}\n",
            rule.severity
        );
        if let Some(reason) = rule.reason {
            let _ = writeln!(out, "          reason: {reason}");
        }
        let _ = write!(
            out,
            "        annotations:\n          summary: {}\n          description: {}\n",
            yaml_string(&rule.summary),
            yaml_string(&rule.description)
        );
    }
    out
}

/// Renders `alertmanager.yml` (Alertmanager 0.25, Debian 12) for
/// [`ALERTMANAGER_CONFIG_PATH`]: every alert goes to one receiver,
/// [`RECEIVER`], with a webhook config per webhook and an email config if
/// email is set, all sending resolved notifications too. With no receivers
/// configured the receiver has no configs: Alertmanager still runs, and
/// `status` still shows the alerts.
///
/// `smtp_password` is the password the caller read from the email's
/// `password_file` or `password_env`; it is written into the file as is
/// (only when the email has a `username`), so the file must be 0600.
pub fn render_alertmanager(alerts: &AlertsConfig, smtp_password: Option<&str>) -> String {
    let mut out = String::from(
        "# Managed by PromGuard: changes here are overwritten by the next `promguard up`.\n\
         # Receivers come from [alerts] in promguard.toml.\n",
    );
    let _ = write!(
        out,
        "route:\n  receiver: {receiver}\n  group_by: [\"alertname\", \"instance\"]\n  group_wait: {wait}\n  group_interval: {interval}\n  repeat_interval: 4h\n\nreceivers:\n  - name: {receiver}\n",
        receiver = yaml_string(RECEIVER),
        wait = duration(alerts.group_wait),
        interval = duration(alerts.group_interval)
    );
    if !alerts.webhooks.is_empty() {
        out.push_str("    webhook_configs:\n");
        for url in &alerts.webhooks {
            let _ = write!(
                out,
                "      - url: {}\n        send_resolved: true\n",
                yaml_string(url.as_str())
            );
        }
    }
    if let Some(email) = &alerts.email {
        let to: Vec<&str> = email.to.iter().map(|a| a.as_str()).collect();
        let _ = write!(
            out,
            "    email_configs:\n      - to: {}\n        from: {}\n        smarthost: {}\n",
            yaml_string(&to.join(", ")),
            yaml_string(email.from.as_str()),
            yaml_string(&email.smarthost.to_string())
        );
        if let Some(user) = &email.username {
            let _ = writeln!(out, "        auth_username: {}", yaml_string(user));
            if let Some(password) = smtp_password {
                let _ = writeln!(out, "        auth_password: {}", yaml_string(password));
            }
        }
        out.push_str("        send_resolved: true\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use expect_test::expect_file;

    use super::*;
    use crate::config::Config;

    fn alerts(toml: &str) -> AlertsConfig {
        Config::from_toml(toml, Path::new("t.toml")).unwrap().alerts
    }

    const RECEIVERS: &str = r#"
[alerts]
webhooks = ["https://hooks.example.com/services/T000/B000/XXXX", "http://10.0.0.9:8080/alert?team=ops"]
[alerts.email]
to = ["ops@example.com", "oncall@example.org"]
from = "promguard@example.com"
smarthost = "smtp.example.com:587"
username = "promguard@example.com"
password_env = "SMTP_PASSWORD"
"#;

    #[test]
    fn snapshot_rules_default() {
        let rules = AlertRules::from_config(&Config::default().alerts);
        expect_file!["../tests/data/alerts/promguard.rules.yml"].assert_eq(&render_rules(&rules));
    }

    #[test]
    fn snapshot_alertmanager_with_every_receiver() {
        expect_file!["../tests/data/alerts/alertmanager-receivers.yml"].assert_eq(
            &render_alertmanager(&alerts(RECEIVERS), Some("s3cret \"pw\"")),
        );
    }

    #[test]
    fn snapshot_alertmanager_without_receivers() {
        expect_file!["../tests/data/alerts/alertmanager-none.yml"]
            .assert_eq(&render_alertmanager(&alerts(""), None));
    }

    #[test]
    fn thresholds_follow_the_config() {
        let config = alerts(
            "[prometheus]\nscrape_interval = \"15s\"\n[alerts]\nhandshake_stale_after = \"150s\"\ncollector_stale_after = \"1500ms\"\n",
        );
        let text = render_rules(&AlertRules::from_config(&config));
        assert!(
            text.contains("        for: 30s\n"),
            "twice the scrape interval: {text}"
        );
        assert!(text.contains("more than 150s"), "{text}");
        assert!(
            text.contains("time() - wireguard_latest_handshake_seconds > 150 and"),
            "{text}"
        );
        assert!(
            text.contains("promguard_wireguard_collector_last_run_timestamp_seconds > 1.5\""),
            "{text}"
        );
        assert!(text.contains("        for: 1500ms\n"), "{text}");
    }

    #[test]
    fn every_rule_names_its_host_and_severity() {
        let text = render_rules(&AlertRules::from_config(&Config::default().alerts));
        for rule in text.split("      - alert: ").skip(1) {
            assert!(rule.contains("severity: "), "{rule}");
            let summary = rule.lines().find(|l| l.contains("summary:")).unwrap();
            assert!(summary.contains("{{ $labels.instance }}"), "{rule}");
            if rule.starts_with("WireGuardHandshake") || rule.starts_with("WireGuardNever") {
                assert!(summary.contains("{{ $labels.peer }}"), "{rule}");
            }
        }
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("      - alert: "))
            .collect();
        names.dedup();
        assert_eq!(names.len(), 8, "{names:?}");
    }

    #[test]
    fn the_password_appears_only_in_the_rendered_file() {
        let config = alerts(RECEIVERS);
        let debug = format!("{config:?}");
        assert!(!debug.contains("XXXX"), "a webhook token in Debug: {debug}");
        assert!(debug.contains("SMTP_PASSWORD"), "{debug}");
        let text = render_alertmanager(&config, Some("pa\"ss\nword"));
        assert!(
            text.contains("auth_password: \"pa\\\"ss\\nword\""),
            "{text}"
        );
    }
}
