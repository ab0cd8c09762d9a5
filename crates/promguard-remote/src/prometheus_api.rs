//! Reading Prometheus' HTTP API on the monitor (through SSH): which targets
//! exist and how their last scrape went. Responses are untrusted input and
//! are parsed into typed values.

use serde::{Deserialize, Serialize};

/// How a target's last scrape went, as Prometheus says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The last scrape worked.
    Up,
    /// The last scrape failed (see the target's error).
    Down,
    /// Not scraped yet.
    Unknown,
}

impl Health {
    /// The word Prometheus uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One active target, as `GET /api/v1/targets` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetHealth {
    /// The `instance` label (the host name).
    pub instance: String,
    /// The job (exporter name).
    pub job: String,
    /// The scrape job of Prometheus' config the target belongs to: the
    /// job itself on a Prometheus PromGuard manages, the user's
    /// `promguard-<deployment>` job on a Prometheus of the user's.
    pub scrape_pool: String,
    /// The URL Prometheus scrapes.
    pub scrape_url: String,
    /// How its last scrape went.
    pub health: Health,
    /// Time of the last scrape (RFC 3339), if any.
    pub last_scrape: Option<String>,
    /// The last scrape's error, empty when it worked.
    pub last_error: String,
}

/// The envelope of every Prometheus API answer.
#[derive(Deserialize)]
struct Response<D> {
    status: String,
    data: Option<D>,
    error: Option<String>,
}

/// The `data` of a successful answer in `body`.
fn parse_data<D: serde::de::DeserializeOwned>(body: &[u8]) -> Result<D, String> {
    let response: Response<D> = serde_json::from_slice(body)
        .map_err(|e| format!("Prometheus answered with unexpected JSON: {e}"))?;
    if response.status != "success" {
        return Err(format!(
            "Prometheus answered {}: {}",
            response.status,
            response.error.unwrap_or_default()
        ));
    }
    response
        .data
        .ok_or_else(|| "Prometheus' answer has no data".to_owned())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    active_targets: Vec<ActiveTarget>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActiveTarget {
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    scrape_pool: String,
    scrape_url: String,
    health: Health,
    #[serde(default)]
    last_error: String,
    last_scrape: Option<String>,
}

/// The path of the targets API.
pub const TARGETS_PATH: &str = "/api/v1/targets?state=active";

/// Parses a `/api/v1/targets` response body.
pub fn parse_targets(body: &[u8]) -> Result<Vec<TargetHealth>, String> {
    let data: Data = parse_data(body)?;
    Ok(data
        .active_targets
        .into_iter()
        .map(|t| TargetHealth {
            instance: t.labels.get("instance").cloned().unwrap_or_default(),
            job: t.labels.get("job").cloned().unwrap_or_default(),
            scrape_pool: t.scrape_pool,
            scrape_url: t.scrape_url,
            health: t.health,
            // Prometheus reports "0001-01-01T00:00:00Z" before the first scrape.
            last_scrape: t.last_scrape.filter(|s| !s.starts_with("0001-")),
            last_error: t.last_error,
        })
        .collect())
}

/// The instant query, URL-encoded, that reads a monitor's remote_write
/// queue: samples waiting to be sent, and samples given up on.
pub const REMOTE_WRITE_PATH: &str = "/api/v1/query?query=%7B__name__%3D~%22prometheus_remote_storage_samples_pending%7Cprometheus_remote_storage_samples_failed_total%22%7D";

/// A monitor's remote_write queue, summed over its queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RemoteWriteQueue {
    /// Samples read from the WAL and not sent yet.
    pub samples_pending: u64,
    /// Samples that failed to send and were dropped, since Prometheus
    /// started.
    pub samples_failed: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VectorData {
    result_type: String,
    result: Vec<VectorSample>,
}

#[derive(Deserialize)]
struct VectorSample {
    metric: std::collections::BTreeMap<String, String>,
    value: (f64, String),
}

/// Parses the answer to [`REMOTE_WRITE_PATH`]; `None` when Prometheus has
/// no remote_write queue.
pub fn parse_remote_write(body: &[u8]) -> Result<Option<RemoteWriteQueue>, String> {
    let data: VectorData = parse_data(body)?;
    if data.result_type != "vector" {
        return Err(format!(
            "Prometheus answered a {:?} to an instant query, not a vector",
            data.result_type.chars().take(20).collect::<String>()
        ));
    }
    if data.result.is_empty() {
        return Ok(None);
    }
    let mut queue = RemoteWriteQueue::default();
    for sample in data.result {
        // Prometheus writes every value as a float; these count samples,
        // so anything but a finite, non-negative number is a wrong answer
        // (Rust would parse "NaN" and "-1" too).
        let value: f64 = sample
            .value
            .1
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| "Prometheus answered a sample count that is no count".to_owned())?;
        // Saturating, as `as` is for floats beyond u64.
        let count = value.round() as u64;
        let total = match sample.metric.get("__name__").map(String::as_str) {
            Some("prometheus_remote_storage_samples_pending") => &mut queue.samples_pending,
            Some("prometheus_remote_storage_samples_failed_total") => &mut queue.samples_failed,
            _ => return Err("Prometheus answered a series that was not asked for".to_owned()),
        };
        *total = total.saturating_add(count);
    }
    Ok(Some(queue))
}

/// The path of the alerts API.
pub const ALERTS_PATH: &str = "/api/v1/alerts";

/// One firing alert, as `GET /api/v1/alerts` reports it (pending ones,
/// whose `for` has not passed, are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FiringAlert {
    /// The `alertname` label.
    pub name: String,
    /// The `instance` label (the host), empty when the alert has none.
    pub instance: String,
    /// The `severity` label.
    pub severity: String,
    /// When it became active (RFC 3339).
    pub since: String,
    /// The `summary` annotation.
    pub summary: String,
}

#[derive(Deserialize)]
struct AlertsData {
    alerts: Vec<RawAlert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAlert {
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    state: String,
    #[serde(default)]
    active_at: String,
}

/// Longest label or annotation value kept: an answer is untrusted, and a
/// table row should stay a row.
const MAX_ALERT_TEXT: usize = 300;

/// Parses a `/api/v1/alerts` response body into the firing alerts, sorted
/// by name and instance.
pub fn parse_alerts(body: &[u8]) -> Result<Vec<FiringAlert>, String> {
    let data: AlertsData = parse_data(body)?;
    let text = |s: Option<&String>| -> String {
        s.map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(MAX_ALERT_TEXT)
                .collect()
        })
        .unwrap_or_default()
    };
    let mut alerts: Vec<FiringAlert> = data
        .alerts
        .into_iter()
        .filter(|a| a.state == "firing")
        .map(|a| FiringAlert {
            name: text(a.labels.get("alertname")),
            instance: text(a.labels.get("instance")),
            severity: text(a.labels.get("severity")),
            since: text(Some(&a.active_at)),
            summary: text(a.annotations.get("summary")),
        })
        .collect();
    alerts.sort_by(|a, b| (&a.name, &a.instance).cmp(&(&b.name, &b.instance)));
    Ok(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_firing_alerts_and_leaves_out_pending_ones() {
        let body = br#"{"status":"success","data":{"alerts":[
            {"labels":{"alertname":"PromGuardTargetDown","instance":"promguard-node-1","job":"node","severity":"critical"},
             "annotations":{"summary":"node on promguard-node-1 is down"},"state":"firing","activeAt":"2026-12-02T04:00:00Z","value":"0e+00"},
            {"labels":{"alertname":"WireGuardHandshakeStale","instance":"promguard-monitor-1"},
             "annotations":{},"state":"pending","activeAt":"2026-12-02T04:01:00Z","value":"1"},
            {"labels":{"alertname":"A\u0007\nB"},"state":"firing"}]}}"#;
        let alerts = parse_alerts(body).unwrap();
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        assert_eq!(alerts[0].name, "AB");
        assert_eq!(
            alerts[1],
            FiringAlert {
                name: "PromGuardTargetDown".into(),
                instance: "promguard-node-1".into(),
                severity: "critical".into(),
                since: "2026-12-02T04:00:00Z".into(),
                summary: "node on promguard-node-1 is down".into(),
            }
        );
        assert!(parse_alerts(b"{\"status\":\"error\",\"error\":\"x\"}").is_err());
        assert!(parse_alerts(b"[]").is_err());
    }

    #[test]
    fn parses_targets() {
        let body = br#"{"status":"success","data":{"activeTargets":[{"discoveredLabels":{},"labels":{"instance":"promguard-node-1","job":"node","region":"lon1","role":"node"},"scrapePool":"node","scrapeUrl":"http://10.0.0.2:9100/metrics","globalUrl":"http://10.0.0.2:9100/metrics","lastError":"","lastScrape":"2026-11-28T01:00:00.1Z","lastScrapeDuration":0.01,"health":"up","scrapeInterval":"30s","scrapeTimeout":"10s"}],"droppedTargets":[]}}"#;
        let targets = parse_targets(body).unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].instance, "promguard-node-1");
        assert_eq!(targets[0].health, Health::Up);
        assert_eq!(targets[0].scrape_url, "http://10.0.0.2:9100/metrics");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_targets(b"<html>").is_err());
        assert!(parse_targets(br#"{"status":"error","error":"boom"}"#)
            .unwrap_err()
            .contains("boom"));
        assert!(
            parse_targets(br#"{"status":"success","data":{"activeTargets":[{"labels":1}]}}"#)
                .is_err()
        );
        // A health Prometheus does not report is refused, not passed on.
        let odd = br#"{"status":"success","data":{"activeTargets":[{"labels":{},"scrapeUrl":"u","health":"fine"}]}}"#;
        let err = parse_targets(odd).unwrap_err();
        assert!(err.contains("unknown variant `fine`"), "{err}");
    }

    #[test]
    fn health_reads_and_prints_as_prometheus_words() {
        for (word, health) in [
            ("up", Health::Up),
            ("down", Health::Down),
            ("unknown", Health::Unknown),
        ] {
            let parsed: Health = serde_json::from_str(&format!("\"{word}\"")).unwrap();
            assert_eq!(parsed, health);
            assert_eq!(health.to_string(), word);
            assert_eq!(
                serde_json::to_string(&health).unwrap(),
                format!("\"{word}\"")
            );
        }
    }

    #[test]
    fn the_remote_write_queue_is_summed_over_queues_and_checked() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"prometheus_remote_storage_samples_pending","remote_name":"a"},"value":[1.5,"12"]},
            {"metric":{"__name__":"prometheus_remote_storage_samples_pending","remote_name":"b"},"value":[1.5,"3"]},
            {"metric":{"__name__":"prometheus_remote_storage_samples_failed_total"},"value":[1.5,"7"]}]}}"#;
        assert_eq!(
            parse_remote_write(body).unwrap(),
            Some(RemoteWriteQueue {
                samples_pending: 15,
                samples_failed: 7
            })
        );
        let none = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_remote_write(none).unwrap(), None);
        let odd = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up"},"value":[1,"1"]}]}}"#;
        assert!(parse_remote_write(odd).is_err());
        for bad in ["x", "NaN", "-1", "+Inf"] {
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"__name__":"prometheus_remote_storage_samples_pending"}},"value":[1,"{bad}"]}}]}}}}"#
            );
            assert!(parse_remote_write(body.as_bytes()).is_err(), "{bad}");
        }
    }
}
