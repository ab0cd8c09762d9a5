//! Replacing an SSH host key that a provider injected.
//!
//! On DigitalOcean PromGuard generates each droplet's SSH host key and hands
//! it over in cloud-init user data, so that even the first connection is
//! verified. User data stays readable from the droplet's metadata service
//! (and the whole batch's keys are in it), so once that first, verified
//! connection is up, the host makes a new key of its own beside the served
//! one, PromGuard reads its public half over the verified connection and
//! records it as the *next* key ([`HostRecord::ssh_host_key_next`](promguard_core::HostRecord::ssh_host_key_next)); only
//! then does the host put it in place and have sshd reload, and only after
//! a connection verified against the new key is it pinned. A run cut off
//! anywhere in between finds the host presenting either the pinned or the
//! recorded next key, both of which it accepts. Done once per host; the
//! state remembers it ([`HostRecord::ssh_host_key_rotated`](promguard_core::HostRecord::ssh_host_key_rotated)).
//!
//! The key file is the one sshd really serves: the script finds the
//! listening sshd, asks it (`sshd -T`, with the listener's own `-f` file)
//! for its `HostKey` files and picks the one whose public half is the key
//! this connection was verified against. That also finds the host keys of
//! local namespace hosts, which live in the host's directory.

use std::time::{Duration, Instant};

use promguard_core::state::StateError;
use promguard_core::{HostName, SshPublicKey};

use crate::{shell_quote, ConnectOptions, Connection, Connector, RemoteError, SshTarget};

/// How long sshd may take to serve the new key after the reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Finds the key file sshd serves and makes a new key beside it, without
/// serving it yet; prints the listener's PID, the key file and the new
/// public key.
const STAGE_SCRIPT: &str = include_str!("sh/host_key_stage.sh");

/// Puts the staged key in place of the served one and has sshd load it.
/// With systemd, the unit's reload; otherwise SIGHUP, on which sshd
/// re-executes itself (also when it is PID 1 of a local host) and keeps
/// open sessions.
const INSTALL_SCRIPT: &str = include_str!("sh/host_key_install.sh");

/// Why an injected host key was not replaced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostKeyError {
    /// The host could not make a new key beside the served one.
    #[error("host {host}: cannot replace the SSH host key that cloud-init installed (it is readable from the metadata service); check sshd on the host: {source}")]
    Stage {
        /// The host.
        host: HostName,
        /// What failed.
        source: Box<RemoteError>,
    },
    /// What the host answered cannot be used.
    #[error("host {host}: {reason}")]
    Unusable {
        /// The host.
        host: HostName,
        /// What was wrong.
        reason: String,
    },
    /// sshd could not be made to load the new key.
    #[error(
        "host {host}: cannot make sshd load its new host key; restart sshd on the host: {source}"
    )]
    Install {
        /// The host.
        host: HostName,
        /// What failed.
        source: Box<RemoteError>,
    },
    /// sshd still does not present the new key after the reload.
    #[error("host {host}: sshd does not present its new host key {fingerprint} after the reload; restart sshd on the host and run `promguard up` again: {source}")]
    NotServed {
        /// The host.
        host: HostName,
        /// The new key's fingerprint.
        fingerprint: String,
        /// The last connection error.
        source: Box<RemoteError>,
    },
    /// A step could not be recorded in the state.
    #[error(transparent)]
    State(#[from] StateError),
}

impl HostKeyError {
    /// The host this error is about, when it names one.
    pub fn host(&self) -> Option<&HostName> {
        match self {
            HostKeyError::Stage { host, .. }
            | HostKeyError::Unusable { host, .. }
            | HostKeyError::Install { host, .. }
            | HostKeyError::NotServed { host, .. } => Some(host),
            HostKeyError::State(_) => None,
        }
    }
}

/// Finishes the replacement of the injected host key of the host `conn`
/// reaches: when the host already presents the recorded next key (an
/// earlier run was cut off after installing it), `pin` pins it; otherwise
/// [`rotate`] replaces the key. Blocking.
pub fn replace_injected(
    conn: &Connection,
    target: &SshTarget,
    connector: &Connector,
    record_next: impl FnOnce(&SshPublicKey) -> Result<(), StateError>,
    pin: impl FnOnce(&SshPublicKey) -> Result<(), StateError>,
) -> Result<(), HostKeyError> {
    let presented = conn.presented_host_key().clone();
    if target.replacement_host_key.as_ref() == Some(&presented) {
        Ok(pin(&presented)?)
    } else {
        rotate(conn, target, connector, record_next, pin).map(|_| ())
    }
}

/// `ssh-keygen` arguments for a new key of the same type as `key`.
fn keygen_type(key: &SshPublicKey) -> Result<&'static str, String> {
    Ok(match key.algorithm() {
        "ssh-ed25519" => "-t ed25519",
        "ecdsa-sha2-nistp256" => "-t ecdsa -b 256",
        "ecdsa-sha2-nistp384" => "-t ecdsa -b 384",
        "ecdsa-sha2-nistp521" => "-t ecdsa -b 521",
        "ssh-rsa" => "-t rsa -b 3072",
        other => return Err(format!("cannot make a new SSH host key of type {other}")),
    })
}

/// What [`STAGE_SCRIPT`] printed.
#[derive(Debug, PartialEq)]
struct Staged {
    /// PID of the listening sshd.
    listener: u32,
    /// The served key file, beside which the new key waits.
    file: String,
    /// The new public key.
    key: SshPublicKey,
}

/// Reads the stage script's output (untrusted: it comes from the host).
fn parse_staged(stdout: &str) -> Result<Staged, String> {
    let mut listener = None;
    let mut file = None;
    let mut key = None;
    for line in stdout.lines() {
        if let Some(pid) = line.strip_prefix("listener ") {
            listener = pid.trim().parse::<u32>().ok();
        } else if let Some(path) = line.strip_prefix("file ") {
            // Passed back quoted, but only a plain absolute path is a
            // path sshd could have been configured with by us or a distro.
            let plain = path.starts_with('/')
                && path.len() < 4096
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
            if !plain {
                return Err(format!(
                    "the host key script named an unusual key file {path:?}"
                ));
            }
            file = Some(path.to_owned());
        } else if !line.trim().is_empty() {
            key = Some(SshPublicKey::parse(line).map_err(|e| e.to_string())?);
        }
    }
    match (listener, file, key) {
        (Some(listener), Some(file), Some(key)) => Ok(Staged {
            listener,
            file,
            key,
        }),
        _ => Err(format!(
            "the host key script printed no PID, key file and key: {stdout:?}"
        )),
    }
}

/// Replaces the host key `conn` was verified with by one generated on the
/// host, in three steps that a cut-off run can resume: the host makes the
/// new key beside the served one; `record_next` records its public half
/// (read over `conn`); the host puts it in place and reloads sshd. A second
/// connection then proves sshd presents the new key, and `pin` pins it.
/// Blocking.
pub fn rotate(
    conn: &Connection,
    target: &SshTarget,
    connector: &Connector,
    record_next: impl FnOnce(&SshPublicKey) -> Result<(), StateError>,
    pin: impl FnOnce(&SshPublicKey) -> Result<(), StateError>,
) -> Result<SshPublicKey, HostKeyError> {
    let host = conn.host().clone();
    let unusable = |reason: String| HostKeyError::Unusable {
        host: host.clone(),
        reason,
    };
    let old = conn.presented_host_key().clone();
    let old_text = old.to_string();
    let blob = old_text
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| unusable("the presented host key has no key data".into()))?;
    let command = format!(
        "sh -s -- {} {}",
        shell_quote(blob),
        keygen_type(&old).map_err(unusable)?
    );
    let output = conn
        .exec_checked("make a new SSH host key", &command, STAGE_SCRIPT.as_bytes())
        .map_err(|source| HostKeyError::Stage {
            host: host.clone(),
            source: Box::new(source),
        })?;
    let staged = parse_staged(&String::from_utf8_lossy(&output.stdout)).map_err(unusable)?;
    let new = staged.key.clone();
    if new == old {
        return Err(unusable("the new SSH host key is the injected one".into()));
    }
    // Recorded before sshd can serve it: a run cut off from here on still
    // accepts the host.
    record_next(&new)?;
    conn.exec_checked(
        "install the new SSH host key and reload sshd",
        &format!("sh -s -- {} {}", shell_quote(&staged.file), staged.listener),
        INSTALL_SCRIPT.as_bytes(),
    )
    .map_err(|source| HostKeyError::Install {
        host: host.clone(),
        source: Box::new(source),
    })?;

    let mut pinned = target.clone();
    pinned.expected_host_key = Some(new.clone());
    pinned.replacement_host_key = None;
    let started = Instant::now();
    loop {
        let options = ConnectOptions {
            retry_for: Duration::from_secs(5),
            ..ConnectOptions::default()
        };
        match Connection::connect(&pinned, connector, options) {
            Ok(_) => break,
            // sshd may still be re-executing and serve the old key a moment.
            Err(e) if started.elapsed() < RELOAD_TIMEOUT => {
                tracing::debug!(%host, error = %e, "sshd does not serve the new host key yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(source) => {
                return Err(HostKeyError::NotServed {
                    host,
                    fingerprint: new.fingerprint(),
                    source: Box::new(source),
                })
            }
        }
    }
    pin(&new)?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_output() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob root@h";
        let file = "/etc/ssh/ssh_host_ed25519_key";
        let staged = parse_staged(&format!("listener 1\nfile {file}\n{key}\n")).unwrap();
        assert_eq!(
            staged,
            Staged {
                listener: 1,
                file: file.to_owned(),
                key: SshPublicKey::parse(key).unwrap()
            }
        );
        assert!(parse_staged("listener 1\n").is_err());
        assert!(parse_staged(&format!("listener 1\n{key}\n")).is_err());
        assert!(parse_staged(&format!("file {file}\n{key}\n")).is_err());
        for hostile in [
            "relative/key",
            "/etc/ssh/$(touch x)",
            "/etc/ssh/a b",
            "/etc/'x",
        ] {
            let err = parse_staged(&format!("listener 1\nfile {hostile}\n{key}\n")).unwrap_err();
            assert!(
                err.to_string().contains("unusual key file"),
                "{hostile}: {err}"
            );
        }
    }

    #[test]
    fn new_keys_keep_the_type() {
        let ed = SshPublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob",
        )
        .unwrap();
        assert_eq!(keygen_type(&ed).unwrap(), "-t ed25519");
    }

    #[test]
    fn only_injected_keys_are_rotated_once() {
        use promguard_cloud::CloudProvider;
        let config = promguard_core::config::Config::default();
        let mut state = promguard_core::planner::plan(&config, None)
            .unwrap()
            .next_state;
        let name = config.monitor.name.clone();
        // Providers as the CLI makes them; neither does any IO here.
        let digitalocean = promguard_cloud::digitalocean::DigitalOceanProvider::builder(
            config.deployment.clone(),
            promguard_cloud::digitalocean::Token::new("not-a-real-token"),
        )
        .build()
        .unwrap();
        let local = promguard_cloud::local::LocalProvider::new(
            config.deployment.clone(),
            promguard_cloud::local::LocalOptions::default(),
        );
        let needs_rotation = |provider: &dyn CloudProvider, record: &promguard_core::HostRecord| {
            record.host_key_needs_replacing(provider.capabilities().host_keys)
        };
        assert!(needs_rotation(&digitalocean, &state.hosts[&name]));
        assert!(!needs_rotation(&local, &state.hosts[&name]));
        let key = SshPublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob",
        )
        .unwrap();
        state.hosts.get_mut(&name).unwrap().ssh_host_key_next = Some(key.clone());
        assert!(needs_rotation(&digitalocean, &state.hosts[&name]));
        state
            .hosts
            .get_mut(&name)
            .unwrap()
            .pin_replaced_host_key(&key);
        assert!(!needs_rotation(&digitalocean, &state.hosts[&name]));
        assert_eq!(state.hosts[&name].ssh_host_key_next, None);
        assert_eq!(state.hosts[&name].ssh_host_key.as_ref(), Some(&key));
    }

    #[test]
    fn scripts_are_valid_shell() {
        for script in [STAGE_SCRIPT, INSTALL_SCRIPT] {
            let status = std::process::Command::new("sh")
                .args(["-n", "-c", script])
                .status()
                .unwrap();
            assert!(status.success(), "sh -n rejects:\n{script}");
        }
    }
}
