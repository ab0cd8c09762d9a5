//! What `up` does for existing hosts (hosts the user runs, named by
//! `address` in the config) before it logs in to them: their DNS names
//! resolved, their SSH host keys trusted and pinned, and, when the
//! monitor's Prometheus is the user's, the scrape job to add shown.
//!
//! A key the config, the state or `~/.ssh/known_hosts` vouches for is
//! pinned without a word. A host seen for the first time is pinned only on
//! the user's say-so: `--trust-new-host-keys`, or yes at the terminal
//! prompt (one question per host, with its fingerprint); otherwise `up`
//! stops and lists each such host with its fingerprint. The decision and
//! the probes are `promguard_remote::trust`'s; this module asks and tells.

use std::path::Path;

use anyhow::{bail, Context as _};
use promguard_core::plan::PrometheusMode;
use promguard_core::{Journal, Lifecycle, Plan};
use promguard_remote::known_hosts::default_known_hosts_path;
use promguard_remote::{
    pin_host_key, review_host_keys, tcp_connector, CancellationToken, HostKeyCheck, HostKeyReview,
    HostKeyVerdict, TrustOptions,
};

use crate::deploy::{Context, UpOptions};
use crate::progress::Progress;

/// What `up` does with the SSH host key of an existing host seen for the
/// first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NewHostKeys {
    /// Ask at the terminal, one question per host; without a terminal,
    /// stop and list the hosts.
    #[default]
    Ask,
    /// Pin them (`--trust-new-host-keys`): the user checked the
    /// fingerprints already.
    Trust,
}

/// Sets the public address of `plan`'s existing hosts from the config,
/// resolving DNS names, before provision records them.
pub async fn resolve_addresses(ctx: &Context, mut plan: Plan) -> anyhow::Result<Plan> {
    promguard_remote::resolve_existing_addresses(&ctx.project.config, &mut plan).await?;
    Ok(plan)
}

/// The steps between provision and converge for existing hosts: shows the
/// scrape job a user's own Prometheus needs, then reviews the SSH host
/// key of every existing host the state does not pin yet and pins those
/// that are trusted or accepted (in one save). Fails, after pinning what
/// it could, when a new key was not accepted, and on a changed or revoked
/// key.
pub async fn before_converge(
    ctx: &Context,
    journal: &Journal,
    plan: &Plan,
    options: &UpOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    if let Some(note) = scrape_job_note(plan) {
        ctx.progress.note(&note);
    }
    let home = std::env::var_os("HOME");
    let trust = TrustOptions {
        known_hosts: home.map(|home| default_known_hosts_path(Path::new(&home))),
        // Existing hosts are reached directly, not through a provider.
        connector: tcp_connector(options.connect_timeout),
        timeout: options.connect_timeout,
        parallel: options.parallel,
    };
    let state = journal.snapshot();
    let review = tokio::select! {
        biased;
        _ = cancel.cancelled() => bail!("cancelled while reading the SSH host keys of existing hosts"),
        review = review_host_keys(&ctx.project.config, &state, &trust) => review?,
    };
    for skipped in &review.skipped {
        ctx.progress.note(&format!("warning: {skipped}"));
    }
    let (accepted, refused) = match options.new_host_keys {
        NewHostKeys::Trust => choose(&review, |_| true),
        NewHostKeys::Ask => ask_each(&ctx.progress, &review, cancel).await?,
    };
    if !accepted.is_empty() {
        journal
            .update(|state| {
                for check in &accepted {
                    pin_host_key(state, &check.host, check.key());
                }
            })
            .context("cannot pin the SSH host keys of existing hosts")?;
    }
    if !refused.is_empty() {
        bail!("{}", refusal(&refused));
    }
    Ok(())
}

/// Splits the review into the keys to pin (every trusted one, and the new
/// ones `accept` says yes to, asked in host order) and the new ones it
/// refused.
fn choose(
    review: &HostKeyReview,
    mut accept: impl FnMut(&HostKeyCheck) -> bool,
) -> (Vec<HostKeyCheck>, Vec<HostKeyCheck>) {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for check in &review.hosts {
        match check.verdict {
            HostKeyVerdict::Trusted { .. } => accepted.push(check.clone()),
            HostKeyVerdict::New { .. } if accept(check) => accepted.push(check.clone()),
            HostKeyVerdict::New { .. } => refused.push(check.clone()),
        }
    }
    (accepted, refused)
}

/// [`choose`] with a question at the terminal per new host (none without
/// a terminal: every new host is refused). The prompt waits on its own
/// thread so Ctrl-C still ends the run.
async fn ask_each(
    progress: &Progress,
    review: &HostKeyReview,
    cancel: &CancellationToken,
) -> anyhow::Result<(Vec<HostKeyCheck>, Vec<HostKeyCheck>)> {
    let mut answers = Vec::new();
    for check in review.new_hosts() {
        let question = question(check);
        let progress = progress.clone();
        let answer = tokio::task::spawn_blocking(move || {
            progress.suspend(|| crate::commands::confirm(&question))
        });
        let yes = tokio::select! {
            biased;
            _ = cancel.cancelled() => bail!("cancelled while asking about the SSH host key of {}", check.host),
            answer = answer => answer.unwrap_or(false),
        };
        answers.push((check.host.clone(), yes));
    }
    Ok(choose(review, |check| {
        answers
            .iter()
            .any(|(host, yes)| *yes && host == &check.host)
    }))
}

/// Where the host's own key of `check`'s type is, for checking the
/// fingerprint on the host (`ssh-keygen -lf <file>`).
fn host_key_file(check: &HostKeyCheck) -> String {
    let kind = match check.key().algorithm() {
        "ssh-ed25519" => "ed25519",
        "ssh-rsa" => "rsa",
        _ => "ecdsa",
    };
    format!("/etc/ssh/ssh_host_{kind}_key.pub")
}

fn fingerprint(check: &HostKeyCheck) -> String {
    format!("{} {}", check.key().algorithm(), check.key().fingerprint())
}

/// The prompt for one new host.
fn question(check: &HostKeyCheck) -> String {
    format!(
        "Existing host {} at {} ({}) presents an SSH host key no config, state or known_hosts knows:\n  {}\n\
         Check it on the host itself (`ssh-keygen -lf {}`). Trust it and pin it in the state?",
        check.host,
        check.address,
        check.ssh,
        fingerprint(check),
        host_key_file(check),
    )
}

/// Why `up` stops: the new hosts not accepted, each with its address and
/// fingerprint, and the ways on.
fn refusal(refused: &[HostKeyCheck]) -> String {
    let mut text = format!(
        "the SSH host key of {} existing host(s) is new (not in the config's host_key, the state or ~/.ssh/known_hosts), \
         and PromGuard does not trust a new key silently:",
        refused.len()
    );
    for check in refused {
        text.push_str(&format!(
            "\n  {} at {} ({}): {}",
            check.host,
            check.address,
            check.ssh,
            fingerprint(check)
        ));
    }
    text.push_str(
        "\ncheck each fingerprint on the host itself (for example `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there), \
         then run `promguard up --trust-new-host-keys`, or set host_key in the config",
    );
    text
}

/// When the monitor's Prometheus is the user's, the scrape job to add to
/// its config and where: printed once by `plan` and `up`.
pub fn scrape_job_note(plan: &Plan) -> Option<String> {
    let monitor = plan.monitor();
    let PrometheusMode::Existing { job_name } = &monitor.prometheus.as_ref()?.mode else {
        return None;
    };
    Some(format!(
        "The monitor {} runs your own Prometheus: PromGuard writes only the targets files in {}. \
         Add this job to scrape_configs in its prometheus.yml and reload Prometheus:\n\n{}",
        monitor.name,
        promguard_core::prometheus::EXISTING_TARGETS_DIR,
        promguard_core::prometheus::render_existing_job(job_name)
    ))
}

/// What removing the plan's removed hosts means, for `up`'s refusal: a
/// host a provider made is destroyed; PromGuard only leaves one the user
/// runs.
pub(crate) fn removals(plan: &Plan) -> String {
    let names = |lifecycle| {
        plan.removed_hosts_of(lifecycle)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (left, destroyed) = (names(Lifecycle::Existing), names(Lifecycle::Disposable));
    let mut parts = Vec::new();
    if !destroyed.is_empty() {
        parts.push(format!("destroy {destroyed}"));
    }
    if !left.is_empty() {
        parts.push(format!(
            "remove PromGuard from existing host(s) {left} (the hosts themselves stay)"
        ));
    }
    parts.join(" and ")
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use expect_test::expect;
    use promguard_core::{HostName, SshPublicKey};
    use promguard_remote::known_hosts::KeySource;

    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBz2LKTIJHVMT2WS1LueK4THd/2bD75IH43SLrgRXDoj";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPod/UrQIKkRhXbIUC9Z/lPO90XTW47myjqyxqnBOjRd";

    fn check(host: &str, address: &str, key: &str, new: bool) -> HostKeyCheck {
        let key = SshPublicKey::parse(key).unwrap();
        HostKeyCheck {
            host: HostName::new(host).unwrap(),
            address: address.to_owned(),
            ssh: SocketAddr::from(([192, 0, 2, 7], 22)),
            verdict: if new {
                HostKeyVerdict::New {
                    fingerprint: key.fingerprint(),
                    key,
                }
            } else {
                HostKeyVerdict::Trusted {
                    key,
                    source: KeySource::KnownHosts,
                }
            },
        }
    }

    fn review() -> HostKeyReview {
        HostKeyReview {
            hosts: vec![
                check("db-1", "db.example.com", KEY_A, true),
                check("db-2", "192.0.2.8", KEY_B, false),
                check("web-1", "192.0.2.9", KEY_B, true),
            ],
            skipped: Vec::new(),
        }
    }

    fn names(checks: &[HostKeyCheck]) -> Vec<&str> {
        checks.iter().map(|c| c.host.as_str()).collect()
    }

    #[test]
    fn trusted_keys_are_pinned_and_new_ones_only_when_accepted() {
        let review = review();
        let (accepted, refused) = choose(&review, |_| true);
        assert_eq!(names(&accepted), ["db-1", "db-2", "web-1"]);
        assert!(refused.is_empty());
        let mut asked = Vec::new();
        let (accepted, refused) = choose(&review, |c| {
            asked.push(c.host.to_string());
            c.host.as_str() == "web-1"
        });
        assert_eq!(asked, ["db-1", "web-1"], "one question per new host");
        assert_eq!(names(&accepted), ["db-2", "web-1"]);
        assert_eq!(names(&refused), ["db-1"]);
    }

    #[test]
    fn the_refusal_lists_each_new_host_and_the_ways_on() {
        let review = review();
        let (_, refused) = choose(&review, |_| false);
        expect![[r#"
            the SSH host key of 2 existing host(s) is new (not in the config's host_key, the state or ~/.ssh/known_hosts), and PromGuard does not trust a new key silently:
              db-1 at db.example.com (192.0.2.7:22): ssh-ed25519 SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k
              web-1 at 192.0.2.9 (192.0.2.7:22): ssh-ed25519 SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE
            check each fingerprint on the host itself (for example `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there), then run `promguard up --trust-new-host-keys`, or set host_key in the config"#]].assert_eq(&refusal(&refused));
        expect![[r#"
            Existing host db-1 at db.example.com (192.0.2.7:22) presents an SSH host key no config, state or known_hosts knows:
              ssh-ed25519 SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k
            Check it on the host itself (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`). Trust it and pin it in the state?"#]].assert_eq(&question(&refused[0]));
    }

    #[test]
    fn up_refuses_to_destroy_only_what_a_provider_made() {
        let config = |nodes: &str| {
            promguard_core::config::Config::from_toml(
                &format!("[monitor]\naddress = \"192.0.2.1\"\n\n{nodes}"),
                Path::new("promguard.toml"),
            )
            .unwrap()
        };
        let before = config(
            "[[nodes.host]]\nname = \"db-1\"\naddress = \"192.0.2.7\"\n\n\
             [[nodes.host]]\nname = \"web-1\"\nregion = \"tor1\"\n\n\
             [[nodes.host]]\nname = \"db-2\"\naddress = \"192.0.2.8\"\n",
        );
        let mut state = promguard_core::planner::plan(&before, None)
            .unwrap()
            .next_state;
        for (name, record) in &mut state.hosts {
            record.created = true;
            record.existing = name.as_str() != "web-1";
        }
        let after = config("[[nodes.host]]\nname = \"db-2\"\naddress = \"192.0.2.8\"\n");
        let plan = promguard_core::planner::plan(&after, Some(&state)).unwrap();
        expect!["destroy web-1 and remove PromGuard from existing host(s) db-1 (the hosts themselves stay)"].assert_eq(&removals(&plan));
        state.hosts.retain(|name, _| name.as_str() != "web-1");
        let plan = promguard_core::planner::plan(&after, Some(&state)).unwrap();
        expect!["remove PromGuard from existing host(s) db-1 (the hosts themselves stay)"]
            .assert_eq(&removals(&plan));
    }

    #[test]
    fn a_deployment_of_existing_hosts_needs_no_provider_and_no_login_key_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("promguard.toml");
        std::fs::write(
            &path,
            "[deployment]\nprovider = \"digitalocean\"\n\n[monitor]\naddress = \"192.0.2.1\"\n\n\
             [[nodes.host]]\nname = \"db-1\"\naddress = \"db.example.com\"\n",
        )
        .unwrap();
        // No DigitalOcean token is needed: no provider is asked anything.
        let ctx = Context::new(crate::project::Project::load(Some(&path)).unwrap(), false).unwrap();
        assert_eq!(ctx.provider.name(), "none");
        assert_eq!(ctx.login_public_key().unwrap(), None);
        assert!(
            !ctx.project.data_dir().exists(),
            "no key of PromGuard's made"
        );

        // A state that still records a host a provider made keeps the
        // provider, which alone can destroy it.
        let existing = "[monitor]\naddress = \"192.0.2.1\"\n\n\
                        [[nodes.host]]\nname = \"db-1\"\naddress = \"192.0.2.7\"\n";
        std::fs::write(
            &path,
            format!("{existing}\n[[nodes.host]]\nname = \"web-1\"\nregion = \"tor1\"\n"),
        )
        .unwrap();
        let project = crate::project::Project::load(Some(&path)).unwrap();
        let mut state = promguard_core::planner::plan(&project.config, None)
            .unwrap()
            .next_state;
        for (name, record) in &mut state.hosts {
            record.created = true;
            record.existing = name.as_str() != "web-1";
        }
        promguard_core::StateStore::save(&project.store(), &state).unwrap();
        std::fs::write(&path, existing).unwrap();
        let project = crate::project::Project::load(Some(&path)).unwrap();
        let ctx = Context::new(project, false).unwrap();
        assert_eq!(ctx.provider.name(), "local");
    }

    #[test]
    fn the_scrape_job_is_shown_only_for_the_users_own_prometheus() {
        let config = |monitor: &str| {
            promguard_core::config::Config::from_toml(
                &format!("[monitor]\naddress = \"192.0.2.1\"\n{monitor}\n"),
                Path::new("promguard.toml"),
            )
            .unwrap()
        };
        let plan = promguard_core::planner::plan(&config(""), None).unwrap();
        assert_eq!(scrape_job_note(&plan), None);
        let plan =
            promguard_core::planner::plan(&config("prometheus = \"existing\""), None).unwrap();
        expect![[r#"
            The monitor promguard-monitor-1 runs your own Prometheus: PromGuard writes only the targets files in /etc/promguard/targets. Add this job to scrape_configs in its prometheus.yml and reload Prometheus:

              - job_name: "promguard-promguard"
                file_sd_configs:
                  - files:
                      - "/etc/promguard/targets/*.json"
                    refresh_interval: 30s
        "#]].assert_eq(&scrape_job_note(&plan).unwrap());
    }
}
