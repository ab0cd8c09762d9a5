//! Prometheus files for the monitor: `prometheus.yml` and one file_sd
//! targets file per job. Text only; no IO. The rules file and
//! Alertmanager's config are in [`crate::alerts`].
//!
//! Targets live in file_sd JSON files rather than in `prometheus.yml`, so a
//! new node only changes a targets file, which Prometheus rereads by itself
//! without a restart.
//!
//! A blackbox exporter's probes are a job of their own
//! (`<exporter>_probe`) in the same directory: each target is a URL with
//! its blackbox module in the `__param_module` label, and the job's
//! relabelling sends the scrape to the prober's `/probe` with the URL as
//! its `target` parameter (the multi-target exporter pattern), so the
//! probed host's labels stay the target's; the URL and the module become
//! the labels `url` and `module`, which keep apart the series of several
//! probes of one host.

use std::fmt::Write;

use serde::Serialize;

use crate::alerts::{ALERTMANAGER_LISTEN, RULES_PATH};
use crate::config::format_duration;
use crate::names::ExporterName;
use crate::plan::{PrometheusMode, PrometheusPlan, RemoteWritePlan, ScrapeTarget};
use crate::topology::{REMOTE_WRITE_CA_FILE, REMOTE_WRITE_SECRET_FILE};

/// Where the monitor's Prometheus config lives.
pub const CONFIG_PATH: &str = "/etc/prometheus/prometheus.yml";
/// Directory of the file_sd targets files (`<job>.json`).
pub const TARGETS_DIR: &str = "/etc/prometheus/promguard";

/// Directory of the targets files on a monitor whose Prometheus is the
/// user's own: outside `/etc/prometheus`, which is the user's.
pub const EXISTING_TARGETS_DIR: &str = "/etc/promguard/targets";

/// The scrape job a user adds to their own Prometheus to scrape
/// `deployment`'s targets.
pub fn existing_job_name(deployment: &crate::names::DeploymentName) -> String {
    format!("promguard-{deployment}")
}

/// How often the user's Prometheus rereads the targets files besides
/// watching them: a Prometheus started before PromGuard made their
/// directory cannot watch it, and would otherwise wait its default 5
/// minutes.
pub const EXISTING_REFRESH_INTERVAL: &str = "30s";

/// The scrape job, as YAML for the user's `scrape_configs`, that reads the
/// targets files PromGuard writes on a monitor whose Prometheus is the
/// user's. Each target carries its own `job` label (`node`, ...).
pub fn render_existing_job(job_name: &str) -> String {
    format!(
        "  - job_name: {}\n    file_sd_configs:\n      - files:\n          - {}\n        refresh_interval: {EXISTING_REFRESH_INTERVAL}\n",
        yaml_string(job_name),
        yaml_string(&format!("{EXISTING_TARGETS_DIR}/*.json"))
    )
}

/// The file name of `job`'s targets file inside [`TARGETS_DIR`].
pub fn targets_file_name(job: &ExporterName) -> String {
    format!("{job}.json")
}

/// The file name of the probe job `job`'s targets file inside
/// [`TARGETS_DIR`]: named like an exporter's (the config keeps the probe
/// jobs' names apart from the exporters').
pub fn probe_targets_file_name(job: &str) -> String {
    format!("{job}.json")
}

/// The absolute path of `job`'s targets file on the monitor.
pub fn targets_path(job: &ExporterName) -> String {
    format!("{TARGETS_DIR}/{}", targets_file_name(job))
}

/// Renders `prometheus.yml`.
pub fn render_config(plan: &PrometheusPlan) -> String {
    render_config_with_paths(plan, TARGETS_DIR, RULES_PATH)
}

/// Renders `prometheus.yml` with the targets files in `targets_dir`
/// instead of [`TARGETS_DIR`], and the rules files matched by
/// `<targets_dir>/*.rules.yml` instead of [`RULES_PATH`] (for checking the
/// config with `promtool` against files in a scratch directory, which may
/// hold the rendered rules too; `promtool` skips a pattern that matches
/// nothing).
pub fn render_config_with_targets_dir(plan: &PrometheusPlan, targets_dir: &str) -> String {
    let rules = format!("{}/*.rules.yml", targets_dir.trim_end_matches('/'));
    render_config_with_paths(plan, targets_dir, &rules)
}

/// Renders `prometheus.yml` with the targets files in `targets_dir` and the
/// rules file (or pattern) `rules_path` instead of [`TARGETS_DIR`] and
/// [`RULES_PATH`] (for checking with `promtool` in a scratch directory).
pub fn render_config_with_paths(
    plan: &PrometheusPlan,
    targets_dir: &str,
    rules_path: &str,
) -> String {
    let interval = format_duration(plan.scrape_interval);
    let mut out = String::from(
        "# Managed by PromGuard: changes here are overwritten by the next `promguard up`.\n\
         # Targets are in file_sd files, one per job, updated without a restart.\n",
    );
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = write!(
        out,
        "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
    );
    if !plan.external_labels.is_empty() {
        out.push_str("  external_labels:\n");
        for (name, value) in &plan.external_labels {
            let _ = writeln!(out, "    {name}: {}", yaml_string(value));
        }
    }
    out.push('\n');
    let _ = write!(
        out,
        "rule_files:\n  - {}\n\nalerting:\n",
        yaml_string(rules_path)
    );
    if let Some(cluster) = &plan.alertmanager_cluster {
        // External labels are added to alerts before this relabelling.
        let _ = write!(
            out,
            "  alert_relabel_configs:\n    - action: labeldrop\n      regex: {}\n",
            yaml_string(&cluster.drop_labels.join("|"))
        );
    }
    let _ = write!(
        out,
        "  alertmanagers:\n    - static_configs:\n        - targets:\n            - {}\n",
        yaml_string(ALERTMANAGER_LISTEN)
    );
    // Every replica's Alertmanager gets every alert, as Prometheus' docs
    // ask of a cluster (never one of them only).
    for api in plan.alertmanager_cluster.iter().flat_map(|c| &c.apis) {
        let _ = writeln!(out, "            - {}", yaml_string(&api.to_string()));
    }
    out.push('\n');
    if let Some(rw) = &plan.remote_write {
        render_remote_write(&mut out, rw, targets_dir);
    }
    out.push_str("scrape_configs:\n");
    for job in plan.jobs() {
        let file = format!(
            "{}/{}",
            targets_dir.trim_end_matches('/'),
            targets_file_name(job)
        );
        // JSON strings are valid YAML double-quoted scalars, so quoting with
        // serde_json is safe for any path.
        let _ = write!(
            out,
            "  - job_name: {}\n    file_sd_configs:\n      - files:\n          - {}\n",
            yaml_string(job.as_str()),
            yaml_string(&file)
        );
    }
    for job in plan.probe_jobs() {
        let Some(prober) = plan.probes.iter().find(|p| p.job == job).map(|p| p.prober) else {
            continue;
        };
        let file = format!(
            "{}/{}",
            targets_dir.trim_end_matches('/'),
            probe_targets_file_name(job)
        );
        // The targets are URLs: each becomes the `target` parameter, and
        // the scrape goes to the prober (one per job). The URL and the
        // module are labels too: the probes of one host share its
        // `instance`, and their series must differ.
        let _ = write!(
            out,
            "  - job_name: {}\n    metrics_path: {}\n    file_sd_configs:\n      - files:\n          - {}\n    relabel_configs:\n      - source_labels: [__address__]\n        target_label: __param_target\n      - source_labels: [__param_target]\n        target_label: url\n      - source_labels: [__param_module]\n        target_label: module\n      - target_label: __address__\n        replacement: {}\n",
            yaml_string(job),
            yaml_string("/probe"),
            yaml_string(&file),
            yaml_string(&prober.to_string())
        );
    }
    let own = &plan.self_scrape;
    let _ = write!(
        out,
        "  - job_name: {}\n    static_configs:\n      - targets:\n          - {}\n        labels:\n          instance: {}\n          region: {}\n          role: {}\n",
        yaml_string(own.job.as_str()),
        yaml_string(&own.address.to_string()),
        yaml_string(own.instance.as_str()),
        yaml_string(own.region.as_str()),
        yaml_string(own.role.as_str())
    );
    out
}

/// The `remote_write` section: the secret and the CA bundle are files
/// next to the targets files, never in `prometheus.yml` itself.
fn render_remote_write(out: &mut String, rw: &RemoteWritePlan, targets_dir: &str) {
    let dir = targets_dir.trim_end_matches('/');
    let _ = write!(out, "remote_write:\n  - url: {}\n", yaml_string(&rw.url));
    let secret = format!("{dir}/{REMOTE_WRITE_SECRET_FILE}");
    match (&rw.username, &rw.secret_source) {
        (Some(user), Some(_)) => {
            let _ = write!(
                out,
                "    basic_auth:\n      username: {}\n      password_file: {}\n",
                yaml_string(user),
                yaml_string(&secret)
            );
        }
        (None, Some(_)) => {
            let _ = write!(
                out,
                "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
                yaml_string(&secret)
            );
        }
        _ => {}
    }
    if rw.ca_file.is_some() {
        let _ = write!(
            out,
            "    tls_config:\n      ca_file: {}\n",
            yaml_string(&format!("{dir}/{REMOTE_WRITE_CA_FILE}"))
        );
    }
    if !rw.drop_labels.is_empty() {
        let _ = write!(
            out,
            "    write_relabel_configs:\n      - action: labeldrop\n        regex: {}\n",
            yaml_string(&rw.drop_labels.join("|"))
        );
    }
    out.push('\n');
}

/// Quotes `text` as a YAML double-quoted scalar.
pub(crate) fn yaml_string(text: &str) -> String {
    // JSON strings are valid YAML double-quoted scalars.
    serde_json::to_string(text).expect("a string always serializes")
}

/// One file_sd target group: one target, so each gets its own labels.
#[derive(Serialize)]
struct TargetGroup<'a> {
    targets: [String; 1],
    labels: Labels<'a>,
}

#[derive(Serialize)]
struct Labels<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a str>,
    instance: &'a str,
    region: &'a str,
    role: &'a str,
}

impl<'a> From<&'a ScrapeTarget> for TargetGroup<'a> {
    fn from(t: &'a ScrapeTarget) -> Self {
        Self {
            // SocketAddr brackets IPv6 addresses, as Prometheus wants.
            targets: [t.address.to_string()],
            labels: Labels {
                job: None,
                instance: t.instance.as_str(),
                region: t.region.as_str(),
                role: t.role.as_str(),
            },
        }
    }
}

/// Renders the targets files: `(absolute path, JSON text)` per job, in the
/// order of [`PrometheusPlan::jobs`].
pub fn render_targets(plan: &PrometheusPlan) -> Vec<(String, String)> {
    plan.jobs()
        .into_iter()
        .map(|job| {
            let groups: Vec<TargetGroup<'_>> = plan
                .targets
                .iter()
                .filter(|t| &t.job == job)
                .map(TargetGroup::from)
                .collect();
            let (groups, dir): (Vec<TargetGroup<'_>>, &str) = match &plan.mode {
                PrometheusMode::Managed => (groups, TARGETS_DIR),
                // One job of the user's reads every file: the job label
                // comes with each target (Prometheus sets `job` from the
                // job's name only when the target has none).
                PrometheusMode::Existing { .. } => (
                    groups
                        .into_iter()
                        .map(|mut g| {
                            g.labels.job = Some(job.as_str());
                            g
                        })
                        .collect(),
                    EXISTING_TARGETS_DIR,
                ),
            };
            let mut json =
                serde_json::to_string_pretty(&groups).expect("target groups always serialize");
            json.push('\n');
            (format!("{dir}/{}", targets_file_name(job)), json)
        })
        .collect()
}

/// One file_sd target group of a probe job: one URL, with the probed
/// host's labels and the blackbox module as the `module` parameter.
#[derive(Serialize)]
struct ProbeGroup<'a> {
    targets: [&'a str; 1],
    labels: ProbeLabels<'a>,
}

#[derive(Serialize)]
struct ProbeLabels<'a> {
    instance: &'a str,
    region: &'a str,
    role: &'a str,
    /// A `__param_` label is a URL parameter of the scrape.
    #[serde(rename = "__param_module")]
    module: &'a str,
}

/// Renders the probe jobs' targets files: `(absolute path, JSON text)` per
/// job, in the order of [`PrometheusPlan::probe_jobs`]. None for the user's
/// own Prometheus, whose config PromGuard does not write (the config
/// refuses probes there).
pub fn render_probe_targets(plan: &PrometheusPlan) -> Vec<(String, String)> {
    if plan.mode != PrometheusMode::Managed {
        return Vec::new();
    }
    plan.probe_jobs()
        .into_iter()
        .map(|job| {
            let groups: Vec<ProbeGroup<'_>> = plan
                .probes
                .iter()
                .filter(|p| p.job == job)
                .map(|p| ProbeGroup {
                    targets: [p.url.as_str()],
                    labels: ProbeLabels {
                        instance: p.instance.as_str(),
                        region: p.region.as_str(),
                        role: p.role.as_str(),
                        module: p.module.as_str(),
                    },
                })
                .collect();
            let mut json =
                serde_json::to_string_pretty(&groups).expect("target groups always serialize");
            json.push('\n');
            (
                format!("{TARGETS_DIR}/{}", probe_targets_file_name(job)),
                json,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use expect_test::expect_file;

    use super::*;
    use crate::config::Config;
    use crate::planner;

    fn prometheus_plan(config_toml: &str) -> PrometheusPlan {
        let config = Config::from_toml(config_toml, Path::new("t.toml")).unwrap();
        let plan = planner::plan(&config, None).unwrap();
        plan.monitor().prometheus.clone().unwrap()
    }

    /// An IPv6 deployment with an extra exporter on every node and one more
    /// on the monitor.
    const EXTRA: &str = "[deployment]\nsubnet = \"fd00:10::/64\"\n\
        [prometheus]\nscrape_interval = \"15s\"\n\
        [monitor]\nexporters = [{ name = \"blackbox\", port = 9115 }]\n\
        [nodes]\ncount = 2\nexporters = [{ name = \"postgres\", port = 9187 }]\n";

    fn all_files(plan: &PrometheusPlan) -> String {
        let mut out = format!("=== {CONFIG_PATH}\n{}", render_config(plan));
        for (path, json) in render_targets(plan)
            .into_iter()
            .chain(render_probe_targets(plan))
        {
            let _ = write!(out, "=== {path}\n{json}");
        }
        out
    }

    /// A blackbox exporter on the monitor of an IPv6 deployment probing
    /// two nodes, one of them on two ports.
    const PROBES: &str = r#"
[deployment]
subnet = "fd00:10::/64"
[monitor]
exporters = [
  { name = "blackbox", package = "prometheus-blackbox-exporter", probes = [{ host = "web-1", port = 80 }, { host = "web-1", port = 443, path = "/health?deep=1", module = "http-tls" }, { host = "web-2", port = 8080, path = "/status" }] },
]
[[nodes.host]]
name = "web-1"
region = "fra1"
[[nodes.host]]
name = "web-2"
region = "sfo2"
"#;

    #[test]
    fn snapshot_default() {
        // Keys do not appear in Prometheus files, so random keys are fine.
        expect_file!["../tests/data/prometheus-default.txt"]
            .assert_eq(&all_files(&prometheus_plan("")));
    }

    #[test]
    fn snapshot_ipv6_with_extra_exporters() {
        expect_file!["../tests/data/prometheus-ipv6-extra.txt"]
            .assert_eq(&all_files(&prometheus_plan(EXTRA)));
    }

    #[test]
    fn one_job_and_one_file_per_exporter() {
        let plan = prometheus_plan(EXTRA);
        let files = render_targets(&plan);
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/prometheus/promguard/node.json",
                "/etc/prometheus/promguard/blackbox.json",
                "/etc/prometheus/promguard/postgres.json"
            ]
        );
        let node: serde_json::Value = serde_json::from_str(&files[0].1).unwrap();
        assert_eq!(node.as_array().unwrap().len(), 3, "monitor and two nodes");
        assert_eq!(node[1]["targets"][0], "[fd00:10::2]:9100");
        assert_eq!(node[1]["labels"]["instance"], "promguard-node-1");
        assert_eq!(node[1]["labels"]["role"], "node");
        assert_eq!(node[0]["labels"]["role"], "monitor");
        let config = render_config(&plan);
        assert_eq!(
            config.matches("- job_name:").count(),
            4,
            "three exporters and Prometheus itself"
        );
        assert!(config.contains("scrape_interval: 15s"));
    }

    #[test]
    fn snapshot_probes() {
        expect_file!["../tests/data/prometheus-probes.txt"]
            .assert_eq(&all_files(&prometheus_plan(PROBES)));
    }

    #[test]
    fn probes_are_a_job_of_urls_scraped_at_the_prober() {
        let plan = prometheus_plan(PROBES);
        let files = render_probe_targets(&plan);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "/etc/prometheus/promguard/blackbox_probe.json");
        let groups: serde_json::Value = serde_json::from_str(&files[0].1).unwrap();
        assert_eq!(groups.as_array().unwrap().len(), 3);
        assert_eq!(
            groups[1]["targets"][0],
            "http://[fd00:10::2]:443/health?deep=1"
        );
        assert_eq!(groups[1]["labels"]["__param_module"], "http-tls");
        assert_eq!(groups[1]["labels"]["instance"], "web-1");
        assert_eq!(groups[2]["labels"]["region"], "sfo2");
        assert_eq!(groups[2]["labels"]["role"], "node");
        let config = render_config(&plan);
        let job = config
            .split("- job_name: \"blackbox_probe\"\n")
            .nth(1)
            .expect("a probe job");
        assert!(
            job.starts_with(
                "    metrics_path: \"/probe\"\n    file_sd_configs:\n      - files:\n          - \"/etc/prometheus/promguard/blackbox_probe.json\"\n    relabel_configs:\n      - source_labels: [__address__]\n        target_label: __param_target\n      - source_labels: [__param_target]\n        target_label: url\n      - source_labels: [__param_module]\n        target_label: module\n      - target_label: __address__\n        replacement: \"[fd00:10::1]:9115\"\n"
            ),
            "{config}"
        );
        // The blackbox exporter's own metrics are a job as any exporter's.
        assert!(config.contains("- job_name: \"blackbox\"\n    file_sd_configs:"));
        // The scratch directory of promtool's check holds them too.
        let moved = render_config_with_targets_dir(&plan, "/tmp/x");
        assert!(
            moved.contains("- \"/tmp/x/blackbox_probe.json\""),
            "{moved}"
        );
        // A deployment without probes has no probe job.
        assert!(render_probe_targets(&prometheus_plan("")).is_empty());
        assert!(!render_config(&prometheus_plan(EXTRA)).contains("/probe"));
    }

    #[test]
    fn targets_dir_can_be_moved() {
        let config = render_config_with_targets_dir(&prometheus_plan(""), "/tmp/x y/");
        assert!(config.contains("- \"/tmp/x y/node.json\""), "{config}");
        assert!(config.contains("- \"/tmp/x y/*.rules.yml\""), "{config}");
    }
}
