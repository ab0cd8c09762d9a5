//! `promguard ssh HOST [-- COMMAND]`: the system's ssh client, told to trust
//! only the host key PromGuard pinned, reaching the host through
//! `promguard proxy` so it works wherever the provider's hosts live.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{anyhow, Context as _};
use promguard_core::HostName;

use crate::deploy::Context;
use crate::project::Project;

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn run(
    config: Option<&Path>,
    config_arg: Option<&Path>,
    host: &str,
    command: &[String],
) -> anyhow::Result<ExitCode> {
    let name = HostName::new(host)?;
    let project = Project::load(config)?;
    let state = project.load_state()?.ok_or_else(|| {
        anyhow!(
            "deployment {} has no state; run `promguard up` first",
            project.config.deployment
        )
    })?;
    let ctx = Context::new(project, false)?;
    let target = ctx.target(&state, &name)?;
    let key = target.expected_host_key.ok_or_else(|| {
        anyhow!("host {name} has no pinned SSH host key yet; run `promguard up` first")
    })?;
    let alias = format!("promguard-{name}");
    let known_hosts = tempfile_in_data_dir(&ctx, &format!("{alias} {key}\n"))?;
    let exe = std::env::current_exe().context("cannot find the promguard executable")?;
    let mut proxy = shell_quote(&exe.to_string_lossy());
    if let Some(c) = config_arg {
        proxy.push_str(&format!(" --config {}", shell_quote(&c.to_string_lossy())));
    }
    proxy.push_str(&format!(" proxy {name}"));
    let mut ssh = Command::new("ssh");
    ssh.arg("-i")
        .arg(&target.identity)
        .args([
            "-o",
            "IdentitiesOnly=yes",
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
        .arg(format!("root@{}", target.addr.ip()));
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

fn tempfile_in_data_dir(ctx: &Context, content: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = ctx.project.data_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = tempfile::Builder::new()
        .prefix("known_hosts.")
        .tempfile_in(&dir)?;
    file.write_all(content.as_bytes())?;
    Ok(file)
}

/// Pipes stdin/stdout to the host's SSH port.
pub fn proxy(config: Option<&Path>, host: &str) -> anyhow::Result<ExitCode> {
    let name = HostName::new(host)?;
    let project = Project::load(config)?;
    let state = project.load_state()?.ok_or_else(|| anyhow!("no state"))?;
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
