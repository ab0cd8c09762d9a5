//! Alerts end to end (`cargo xtask e2e --alerts`): a local deployment (a
//! monitor and two nodes) whose Alertmanager sends to a webhook receiver
//! on the deployment's underlay, started by the test (busybox httpd with a
//! CGI script that appends every request body to a file).
//!
//! Killing node 1's WireGuard makes the target-down and stale-handshake
//! alerts fire and reach the receiver with the node's name in the payload,
//! and `status --json` lists them; `up` repairs the node and the receiver
//! gets the resolved notifications. Thresholds are short (6 s down, 30 s
//! stale handshake at a 2 s scrape interval; Alertmanager's group wait 2 s
//! and group interval 5 s) so the test takes about a minute and a half.
//! A stale threshold below WireGuard's two-minute rekey makes healthy
//! peers fire too, half a minute after the deployment came up; the test
//! checks node 1's alerts only, and its resolved notification must come
//! within the group interval, before node 1's fresh handshake is itself
//! 30 s old.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_core::{DeploymentName, HostName};
use serde_json::Value;

use crate::e2e::{check_targets, Deployment};

const MONITOR: &str = "promguard-monitor-1";
const N1: &str = "promguard-node-1";
const N2: &str = "promguard-node-2";
/// The receiver's port on the underlay.
pub(crate) const RECEIVER_PORT: u16 = 8080;

/// The receiver's web server, ended by PID when dropped.
pub(crate) struct Receiver {
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Every notification received so far, as Alertmanager sent it, with
    /// `receivedAt` (Unix seconds) added.
    pub(crate) fn notifications(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (at, body) = l.split_once(' ')?;
                let mut n = serde_json::from_str::<Value>(body).ok()?;
                n["receivedAt"] = Value::String(at.to_owned());
                Some(n)
            })
            .collect()
    }

    /// Every alert of every notification received so far: (notification
    /// status of the alert, its labels).
    fn alerts(&self) -> Vec<(String, Value)> {
        self.notifications()
            .iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .map(|a| {
                (
                    a["status"].as_str().unwrap_or_default().to_owned(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    /// Waits until the receiver got an alert `name` in `status` whose
    /// labels name `node` (as `instance` or `peer`).
    pub(crate) fn wait_for(
        &self,
        status: &str,
        name: &str,
        node: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.alerts().iter().any(|(s, labels)| {
                s == status
                    && labels["alertname"] == name
                    && (labels["instance"] == node || labels["peer"] == node)
            });
            if found {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the receiver got no {status} {name} for {node} within {timeout:?}; it got {:?}",
                    self.alerts()
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Starts the receiver in `netns`.
pub(crate) fn start_receiver(netns: &str) -> Result<Receiver> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("hooks.log");
    let cgi = dir.path().join("cgi-bin");
    std::fs::create_dir(&cgi)?;
    let script = cgi.join("hook");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# One request body per line, after the time it came.\nbody=$(head -c \"${{CONTENT_LENGTH:-0}}\")\nprintf '%s %s\\n' \"$(date +%s.%N)\" \"$body\" >> '{}'\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'\n",
            log.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let child = Command::new("ip")
        .args(["netns", "exec", netns, "busybox", "httpd", "-f", "-p"])
        .arg(RECEIVER_PORT.to_string())
        .arg("-h")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start busybox httpd (Debian package busybox)")?;
    Ok(Receiver {
        child,
        _dir: dir,
        log,
    })
}

/// Runs the test.
pub fn run(root: &Path) -> Result<()> {
    let bin = crate::cli(root)?;
    let name = format!("al{}", std::process::id() % 100000);
    let d = Deployment::local(bin, name.clone())?;
    let provider = LocalProvider::new(DeploymentName::new(&name)?, LocalOptions::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    // The receiver first: its address goes into the config.
    let outsider = runtime.block_on(provider.create_outsider(&HostName::new("receiver")?))?;
    let receiver = start_receiver(&outsider.netns)?;
    let result = scenario(&d, &receiver, &outsider.address.to_string());
    drop(receiver);
    result?;
    d.ok(&["down", "--yes"])?;
    eprintln!(
        "alerts: passed in {:.0?}: firing and resolved notifications reached the webhook",
        started.elapsed()
    );
    Ok(())
}

fn scenario(d: &Deployment, receiver: &Receiver, address: &str) -> Result<()> {
    let text = format!(
        "[deployment]\nname = \"{}\"\nprovider = \"local\"\n\n\
         [prometheus]\nscrape_interval = \"2s\"\n\n\
         [monitor]\nname = \"{MONITOR}\"\nregion = \"tor1\"\n\n\
         [[nodes.host]]\nname = \"{N1}\"\nregion = \"lon1\"\n\n\
         [[nodes.host]]\nname = \"{N2}\"\nregion = \"sfo2\"\n\n\
         [alerts]\ntarget_down_after = \"6s\"\nhandshake_stale_after = \"30s\"\n\
         group_wait = \"2s\"\ngroup_interval = \"5s\"\n\
         webhooks = [\"http://{address}:{RECEIVER_PORT}/cgi-bin/hook\"]\n",
        d.name
    );
    std::fs::write(d.config_path(), text)?;
    d.ok(&["up", "--yes"])?;
    check_targets(&d.status()?, &[MONITOR, N1, N2])?;
    eprintln!("alerts: 1. up; every target up");

    // Node 1's WireGuard dies.
    d.ssh_ok(N1, "kill $(pgrep -x wireguard-go)")?;
    let killed = Instant::now();
    receiver.wait_for("firing", "PromGuardTargetDown", N1, Duration::from_secs(90))?;
    receiver.wait_for(
        "firing",
        "WireGuardHandshakeStale",
        N1,
        Duration::from_secs(90),
    )?;
    eprintln!(
        "alerts: 2. target down and stale handshake of {N1} reached the webhook {:.0?} after its WireGuard died",
        killed.elapsed()
    );
    let status = d.status()?;
    let listed: Vec<(String, String)> = status["alerts"]
        .as_array()
        .context("status --json has no alerts")?
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap_or_default().to_owned(),
                a["instance"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    anyhow::ensure!(
        listed.contains(&("PromGuardTargetDown".to_owned(), N1.to_owned())),
        "status lists {listed:?}, not {N1}'s target down"
    );
    for field in ["name", "instance", "severity", "since", "summary"] {
        anyhow::ensure!(
            status["alerts"][0][field].is_string(),
            "status' alerts have no {field}: {}",
            status["alerts"]
        );
    }
    eprintln!("alerts: 3. status lists the firing alerts");

    // `up` repairs it; the alerts resolve.
    d.ok(&["up", "--yes"])?;
    let repaired = Instant::now();
    receiver.wait_for(
        "resolved",
        "PromGuardTargetDown",
        N1,
        Duration::from_secs(120),
    )?;
    receiver.wait_for(
        "resolved",
        "WireGuardHandshakeStale",
        N1,
        Duration::from_secs(120),
    )?;
    eprintln!(
        "alerts: 4. up repaired {N1}; the resolved notifications came {:.0?} later",
        repaired.elapsed()
    );
    Ok(())
}
