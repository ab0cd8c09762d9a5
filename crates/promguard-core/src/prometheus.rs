//! Prometheus files for the monitor: `prometheus.yml` and one file_sd
//! targets file per job. Text only; no IO.

use crate::plan::PrometheusPlan;

/// Where the monitor's Prometheus config lives.
pub const CONFIG_PATH: &str = "/etc/prometheus/prometheus.yml";
/// Directory of the file_sd targets files (`<job>.json`).
pub const TARGETS_DIR: &str = "/etc/prometheus/promguard";

/// Renders `prometheus.yml`.
pub fn render_config(_plan: &PrometheusPlan) -> String {
    todo!()
}

/// Renders the targets files: `(absolute path, JSON text)` per job.
pub fn render_targets(_plan: &PrometheusPlan) -> Vec<(String, String)> {
    todo!()
}
