//! `promguard init`: write a commented config.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use promguard_core::config::{Config, ProviderKind, CONFIG_FILE};

use crate::cli::ProviderArg;

pub fn run(config: Option<&Path>, provider: ProviderArg, nodes: usize) -> anyhow::Result<ExitCode> {
    if nodes == 0 {
        anyhow::bail!("--nodes 0: a deployment needs at least one node");
    }
    let provider = match provider {
        ProviderArg::Local => ProviderKind::Local,
        ProviderArg::Digitalocean => ProviderKind::DigitalOcean,
    };
    let path = config
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(CONFIG_FILE));
    let text = Config::template(provider, nodes);
    // The template must always be a valid config; check before writing.
    Config::from_toml(&text, &path)?;
    // create_new refuses to overwrite, atomically.
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "{} already exists; edit it, or remove it first to start over",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "Wrote {} ({provider} provider, {nodes} nodes). Next: `promguard plan`, then `promguard up`.",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
