//! Replacing an SSH host key that a provider injected.
//!
//! On DigitalOcean PromGuard generates each droplet's SSH host key and hands
//! it over in cloud-init user data, so that even the first connection is
//! verified. User data stays readable from the droplet's metadata service
//! (and the whole batch's keys are in it), so once that first, verified
//! connection is up, the host makes a new key of its own, PromGuard reads
//! the new public key over the verified connection, pins it in the state,
//! and has sshd reload. Done once per host; the state remembers it
//! ([`HostRecord::ssh_host_key_rotated`]).
//!
//! The key file is the one sshd really serves: the script finds the
//! listening sshd, asks it (`sshd -T`, with the listener's own `-f` file)
//! for its `HostKey` files and picks the one whose public half is the key
//! this connection was verified against. That also finds the host keys of
//! local namespace hosts, which live in the host's directory.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use promguard_core::state::HostRecord;
use promguard_core::{HostName, SshPublicKey, State};
use promguard_remote::{shell_quote, ConnectOptions, Connection, Connector, SshTarget};

/// How long sshd may take to serve the new key after the reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether `up` must replace the host key of a host the provider `provider`
/// made: only keys a provider injected through user data are replaced, and
/// only once.
pub fn needs_rotation(provider: &str, record: &HostRecord) -> bool {
    provider == "digitalocean" && !record.ssh_host_key_rotated
}

/// Records `key` as the pinned, host-generated key of `name`.
pub fn pin(state: &mut State, name: &HostName, key: &SshPublicKey) {
    if let Some(record) = state.hosts.get_mut(name) {
        record.ssh_host_key = Some(key.to_string());
        record.ssh_host_key_rotated = true;
    }
}

/// Finds the key file sshd serves (`$1`: the presented key's base64 blob),
/// replaces it with a new key (`$2...`: `ssh-keygen` type arguments), and
/// prints the listener's PID and the new public key.
const REPLACE_SCRIPT: &str = r#"set -eu
old=$1
shift
listener=
for dir in /proc/[0-9]*; do
  exe=$(readlink "$dir/exe" 2>/dev/null) || continue
  case "$exe" in */sshd) ;; *) continue ;; esac
  ppid=$(sed -n 's/^PPid:[[:space:]]*//p' "$dir/status" 2>/dev/null) || continue
  parent=$(readlink "/proc/$ppid/exe" 2>/dev/null) || parent=
  case "$parent" in */sshd) continue ;; esac
  listener=${dir#/proc/}
  break
done
if [ -z "$listener" ]; then echo "no listening sshd process found" >&2; exit 3; fi
# sshd rewrites its title ("sshd: /usr/sbin/sshd -D -f FILE [listener] ..."),
# so the arguments are split at blanks as well as at NULs.
config=$(tr '\0' ' ' < "/proc/$listener/cmdline" | tr -s ' ' '\n' | sed -n '/^-f$/{n;p;q;}')
if [ -n "$config" ]; then keys=$(sshd -T -f "$config"); else keys=$(sshd -T); fi
found=
for key in $(printf '%s\n' "$keys" | awk '$1 == "hostkey" { print $2 }'); do
  [ -f "$key" ] || continue
  if [ "$(ssh-keygen -y -f "$key" | awk '{ print $2 }')" = "$old" ]; then found=$key; break; fi
done
if [ -z "$found" ]; then echo "none of sshd's HostKey files holds the key it presented" >&2; exit 4; fi
umask 077
rm -f "$found.promguard-new" "$found.promguard-new.pub"
ssh-keygen -q "$@" -N '' -C "root@$(hostname)" -f "$found.promguard-new"
chmod 644 "$found.promguard-new.pub"
mv -f "$found.promguard-new.pub" "$found.pub"
mv -f "$found.promguard-new" "$found"
echo "listener $listener"
cat "$found.pub"
"#;

/// Has sshd load its host keys again (`$1`: the listener's PID). With
/// systemd, the unit's reload; otherwise SIGHUP, on which sshd re-executes
/// itself (also when it is PID 1 of a local host) and keeps open sessions.
const RELOAD_SCRIPT: &str = r#"set -eu
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl reload ssh.service 2>/dev/null || systemctl reload sshd.service
else
  kill -HUP "$1"
fi
"#;

/// `ssh-keygen` arguments for a new key of the same type as `key`.
fn keygen_type(key: &SshPublicKey) -> anyhow::Result<&'static str> {
    Ok(match key.algorithm() {
        "ssh-ed25519" => "-t ed25519",
        "ecdsa-sha2-nistp256" => "-t ecdsa -b 256",
        "ecdsa-sha2-nistp384" => "-t ecdsa -b 384",
        "ecdsa-sha2-nistp521" => "-t ecdsa -b 521",
        "ssh-rsa" => "-t rsa -b 3072",
        other => bail!("cannot make a new SSH host key of type {other}"),
    })
}

/// Reads the replace script's output: the listener's PID and the new key.
fn parse_replaced(stdout: &str) -> anyhow::Result<(u32, SshPublicKey)> {
    let mut listener = None;
    let mut key = None;
    for line in stdout.lines() {
        if let Some(pid) = line.strip_prefix("listener ") {
            listener = pid.trim().parse::<u32>().ok();
        } else if !line.trim().is_empty() {
            key = Some(SshPublicKey::parse(line).map_err(|e| anyhow!("{e}"))?);
        }
    }
    match (listener, key) {
        (Some(pid), Some(key)) => Ok((pid, key)),
        _ => bail!("the host key script printed no PID and key: {stdout:?}"),
    }
}

/// Replaces the host key `conn` was verified with by one generated on the
/// host, calls `pin` with the new public key (read over `conn`) before sshd
/// serves it, reloads sshd and proves with a second connection that sshd
/// presents the new key. Blocking.
pub fn rotate(
    conn: &Connection,
    target: &SshTarget,
    connector: &Connector,
    pin: impl FnOnce(&SshPublicKey) -> anyhow::Result<()>,
) -> anyhow::Result<SshPublicKey> {
    let host = conn.host().clone();
    let old = conn.presented_host_key().clone();
    let old_text = old.to_string();
    let blob = old_text
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("host {host}: the presented host key has no key data"))?;
    let command = format!(
        "sh -s -- {} {}",
        shell_quote(blob),
        keygen_type(&old).with_context(|| format!("host {host}"))?
    );
    let output = conn
        .exec_checked(
            "replace the injected SSH host key",
            &command,
            REPLACE_SCRIPT.as_bytes(),
        )
        .with_context(|| format!("host {host}: cannot replace the SSH host key that cloud-init installed (it is readable from the metadata service); check sshd on the host"))?;
    let (listener, new) = parse_replaced(&String::from_utf8_lossy(&output.stdout))
        .with_context(|| format!("host {host}"))?;
    if new == old {
        bail!("host {host}: the new SSH host key is the injected one");
    }
    // Pinned before sshd serves it: from here on the file on the host is
    // the key any sshd start will present.
    pin(&new)?;
    conn.exec_checked(
        "reload sshd",
        &format!("sh -s -- {listener}"),
        RELOAD_SCRIPT.as_bytes(),
    )
    .with_context(|| {
        format!("host {host}: cannot make sshd load its new host key; restart sshd on the host")
    })?;

    let mut pinned = target.clone();
    pinned.expected_host_key = Some(new.clone());
    let started = Instant::now();
    loop {
        let options = ConnectOptions {
            retry_for: Duration::from_secs(5),
            ..ConnectOptions::default()
        };
        match Connection::connect(&pinned, connector, options) {
            Ok(_) => return Ok(new),
            // sshd may still be re-executing and serve the old key a moment.
            Err(e) if started.elapsed() < RELOAD_TIMEOUT => {
                tracing::debug!(%host, error = %e, "sshd does not serve the new host key yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "host {host}: sshd does not present its new host key {} after the reload; restart sshd on the host and run `promguard up` again",
                    new.fingerprint()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_output() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob root@h";
        let (pid, parsed) = parse_replaced(&format!("listener 1\n{key}\n")).unwrap();
        assert_eq!(pid, 1);
        assert_eq!(parsed, SshPublicKey::parse(key).unwrap());
        assert!(parse_replaced("listener 1\n").is_err());
        assert!(parse_replaced(key).is_err());
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
        let config = promguard_core::config::Config::default();
        let mut state = promguard_core::planner::plan(&config, None)
            .unwrap()
            .next_state;
        let name = config.monitor.name.clone();
        assert!(needs_rotation("digitalocean", &state.hosts[&name]));
        assert!(!needs_rotation("local", &state.hosts[&name]));
        let key = SshPublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob",
        )
        .unwrap();
        pin(&mut state, &name, &key);
        assert!(!needs_rotation("digitalocean", &state.hosts[&name]));
        assert_eq!(
            state.hosts[&name].ssh_host_key.as_deref(),
            Some(key.to_string().as_str())
        );
    }

    #[test]
    fn scripts_are_valid_shell() {
        for script in [REPLACE_SCRIPT, RELOAD_SCRIPT] {
            let status = std::process::Command::new("sh")
                .args(["-n", "-c", script])
                .status()
                .unwrap();
            assert!(status.success(), "sh -n rejects:\n{script}");
        }
    }
}
