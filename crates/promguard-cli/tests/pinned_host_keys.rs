//! `status`, `tunnel` and `ssh` trust only the SSH host keys the state
//! pins: a host without one is refused before any connection, and `ssh`
//! accepts the recorded next key of a cut-off replacement as `up` does.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};

use promguard_core::config::{Config, ProviderKind};
use promguard_core::{HostName, Port, SshPublicKey};

const PINNED: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob";
const NEXT: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMTtFHcdteJUlDWqgVsR8q4qyEICcbkii8PR2OH/JJiI";
const MONITOR: &str = "promguard-monitor-1";

/// A DigitalOcean deployment whose hosts exist at `127.0.0.1:<port>`, with
/// `keys` (pinned, next) for every host.
fn deployment(dir: &Path, port: u16, keys: (Option<&str>, Option<&str>)) {
    // The hosts listen where the test's listener is, as the config says.
    let text = Config::template(ProviderKind::DigitalOcean, 1)
        .replace("[ssh]\nport = 22\n", &format!("[ssh]\nport = {port}\n"));
    let config_path = dir.join("promguard.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = Config::from_toml(&text, &config_path).unwrap();
    let mut state = promguard_core::planner::plan(&config, None)
        .unwrap()
        .next_state;
    for record in state.hosts.values_mut() {
        record.created = true;
        record.public_address = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        record.ssh_port = Some(Port::new(port).unwrap());
        record.ssh_host_key = keys.0.map(|k| SshPublicKey::parse(k).unwrap());
        record.ssh_host_key_next = keys.1.map(|k| SshPublicKey::parse(k).unwrap());
    }
    assert!(state.hosts.contains_key(&HostName::new(MONITOR).unwrap()));
    state.save(&dir.join("promguard.state.json")).unwrap();
}

fn run(dir: &Path, args: &[&str], path: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_promguard"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("PROMGUARD_LOG")
        .env("HOME", dir)
        .env("DIGITALOCEAN_TOKEN", "dop_v1_not_a_real_token");
    if let Some(bin) = path {
        let old = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{old}", bin.display()));
    }
    command.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Regression: `status`, `tunnel` and `ssh` accepted whatever key a host
/// without a pinned one presented.
#[test]
fn hosts_without_a_pinned_key_are_never_connected_to() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    deployment(
        dir.path(),
        listener.local_addr().unwrap().port(),
        (None, None),
    );
    for args in [
        &["status"][..],
        &["tunnel", "--port", "0"],
        &["ssh", MONITOR, "--", "true"],
    ] {
        let out = run(dir.path(), args, None);
        let said = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {said}");
        assert!(said.contains("no pinned SSH host key"), "{args:?}: {said}");
        assert!(said.contains("promguard up"), "{args:?}: {said}");
        match listener.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("{args:?} connected to the host: {other:?}"),
        }
    }
}

/// Regression: `ssh` knew only the pinned key, so a host a cut-off
/// replacement left serving its recorded next key was refused.
#[test]
fn ssh_accepts_the_recorded_next_key() {
    let dir = tempfile::tempdir().unwrap();
    deployment(dir.path(), 22, (Some(PINNED), Some(NEXT)));
    // A stand-in for the ssh client that saves the known_hosts file it was
    // given.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let saved = dir.path().join("known_hosts.seen");
    let script = format!(
        "#!/bin/sh\nfor arg in \"$@\"; do\n  case \"$arg\" in UserKnownHostsFile=*) cp \"${{arg#UserKnownHostsFile=}}\" {} ;; esac\ndone\nexit 0\n",
        saved.display()
    );
    let fake_ssh = bin.join("ssh");
    std::fs::write(&fake_ssh, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake_ssh, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = run(dir.path(), &["ssh", MONITOR, "--", "true"], Some(&bin));
    assert!(out.status.success(), "{}", text(&out));
    let known = std::fs::read_to_string(&saved).unwrap();
    let alias = format!("promguard-{MONITOR}");
    assert_eq!(known, format!("{alias} {PINNED}\n{alias} {NEXT}\n"));
}
