//! `promguard ssh HOST [-- COMMAND]`: the system's ssh client, told to trust
//! only the host key PromGuard pinned, reaching the host through
//! `promguard proxy` so it works wherever the provider's hosts live.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use promguard_core::HostName;
use promguard_remote::SshTarget;

use crate::deploy::Context;
use crate::project::Project;

pub fn run(
    config: Option<&Path>,
    config_arg: Option<&Path>,
    host: &str,
    command: &[String],
) -> anyhow::Result<ExitCode> {
    let name = HostName::new(host)?;
    let project = Project::load(config)?;
    let state = project.existing_state()?;
    let ctx = Context::new(project, false)?;
    let target = ctx.pinned_target(&state, &name)?;
    let alias = format!("promguard-{name}");
    let known_hosts = known_hosts_file(&known_hosts_lines(&alias, &target))?;
    let exe = std::env::current_exe().context("cannot find the promguard executable")?;
    // ssh parses -o values itself (quotes, `%` tokens) before a shell
    // sees them, so paths reach the proxy through the environment, never
    // inside the ProxyCommand text; the host name is validated.
    let proxy = format!("\"${PROXY_EXE}\" proxy {name}");
    let mut ssh = Command::new("ssh");
    ssh.env(PROXY_EXE, &exe);
    match config_arg {
        Some(c) => ssh.env(PROXY_CONFIG, std::path::absolute(c)?),
        None => ssh.env_remove(PROXY_CONFIG),
    };
    match &target.identity {
        promguard_remote::Identity::File(path) => {
            // ssh expands `%` tokens and `${VAR}` in identity file names,
            // and checks the unexpanded name first: no escaping works for
            // both.
            let identity = path.to_string_lossy();
            if identity.contains('%') || identity.contains("${") {
                anyhow::bail!(
                    "the SSH private key path {identity} contains `%` or `${{`, which ssh would expand; move the config (or set ssh.private_key) to a path without them"
                );
            }
            ssh.arg("-i").arg(path).args(["-o", "IdentitiesOnly=yes"]);
        }
        // ssh asks the agent itself.
        promguard_remote::Identity::Agent => {}
    }
    ssh.args([
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ])
    .arg("-o")
    .arg(format!(
        "UserKnownHostsFile={}",
        known_hosts.path().display()
    ))
    .arg("-o")
    .arg(format!("HostKeyAlias={alias}"))
    .arg("-o")
    .arg(format!("ProxyCommand={proxy}"))
    .arg("-p")
    .arg(target.addr.port().to_string())
    .arg(format!("{}@{}", target.user, target.addr.ip()));
    if !command.is_empty() {
        ssh.arg("--").args(command);
    }
    let status = ssh
        .status()
        .context("cannot run ssh (install openssh-client)")?;
    Ok(ExitCode::from(
        status.code().unwrap_or(255).clamp(0, 255) as u8
    ))
}

/// The known_hosts lines for `target` under `alias`: its pinned key, and
/// the recorded next key of a replacement a run was cut off in (the host
/// may serve either, as `up` accepts).
fn known_hosts_lines(alias: &str, target: &SshTarget) -> String {
    target
        .expected_host_key
        .iter()
        .chain(target.replacement_host_key.iter())
        .map(|key| format!("{alias} {key}\n"))
        .collect()
}

/// Environment variable naming the promguard executable for the proxy.
const PROXY_EXE: &str = "PROMGUARD_PROXY_EXE";
/// Environment variable naming the config file for the proxy.
const PROXY_CONFIG: &str = "PROMGUARD_PROXY_CONFIG";

/// A known_hosts file with a name ssh's option parser reads as written: in
/// the temporary directory, not beside a config whose path may hold
/// quotes, spaces or `%`.
fn known_hosts_file(content: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("promguard-known_hosts.")
        .tempfile()?;
    let path = file.path().to_string_lossy().into_owned();
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    {
        anyhow::bail!(
            "the temporary file {path} has a name ssh would misread; set TMPDIR to a plain directory such as /tmp"
        );
    }
    file.write_all(content.as_bytes())?;
    Ok(file)
}

/// Pipes stdin/stdout to the host's SSH port.
pub fn proxy(config: Option<&Path>, host: &str) -> anyhow::Result<ExitCode> {
    let name = HostName::new(host)?;
    let from_env = std::env::var_os(PROXY_CONFIG).map(std::path::PathBuf::from);
    let project = Project::load(config.or(from_env.as_deref()))?;
    let state = project.existing_state()?;
    let ctx = Context::new(project, false)?;
    let target = ctx.target(&state, &name)?;
    let stream = ctx
        .provider
        .connect(target.addr)
        .with_context(|| format!("cannot reach host {name} at {}", target.addr))?;
    let mut reader = stream.try_clone()?;
    let writer_thread = std::thread::spawn(move || {
        let mut stdout = std::io::stdout();
        let mut buf = [0u8; 16384];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut writer = stream;
    let _ = std::io::copy(&mut std::io::stdin(), &mut writer);
    let _ = writer.shutdown(std::net::Shutdown::Write);
    let _ = writer_thread.join();
    Ok(ExitCode::SUCCESS)
}
