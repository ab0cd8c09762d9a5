//! Where a deployment's files live: the config, the state file beside it and
//! its lock.

use std::path::{Path, PathBuf};

use anyhow::Context;
use promguard_core::config::{Config, CONFIG_FILE};
use promguard_core::state::{State, StateFile, StateLock};
use promguard_core::StateStore;

/// File name of the state, beside the config.
pub const STATE_FILE: &str = "promguard.state.json";
/// File name of the lock, beside the state.
pub const LOCK_FILE: &str = "promguard.state.lock";

/// The config and the paths derived from it.
#[derive(Debug)]
pub struct Project {
    /// The validated config.
    pub config: Config,
    /// Where the config came from (`None`: the built-in default).
    pub config_path: Option<PathBuf>,
    /// Directory of the config (or the current directory).
    pub dir: PathBuf,
}

impl Project {
    /// Loads the config named by `--config`, else `./promguard.toml`, else the
    /// built-in default.
    pub fn load(config: Option<&Path>) -> anyhow::Result<Self> {
        let (path, explicit) = match config {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(CONFIG_FILE), false),
        };
        if !explicit && !path.exists() {
            return Ok(Self {
                config: Config::default(),
                config_path: None,
                dir: PathBuf::from("."),
            });
        }
        let config = Config::load(&path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        Ok(Self {
            config,
            config_path: Some(path),
            dir,
        })
    }

    /// The state file's path.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Directory for files PromGuard keeps beside the state (the local
    /// provider's login key).
    pub fn data_dir(&self) -> PathBuf {
        self.dir
            .join(".promguard")
            .join(self.config.deployment.as_str())
    }

    /// The state file as a store.
    pub fn store(&self) -> StateFile {
        StateFile::new(self.state_path())
    }

    /// Reads the state, if there is one, and checks it belongs to this
    /// deployment.
    pub fn load_state(&self) -> anyhow::Result<Option<State>> {
        Ok(self.store().load_for(&self.config.deployment)?)
    }

    /// The state of a deployment that has hosts; commands that talk to hosts
    /// (`status`, `ssh`, `tunnel`) need one.
    pub fn existing_state(&self) -> anyhow::Result<State> {
        self.load_state()?
            .filter(|s| s.hosts.values().any(|h| h.created))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "deployment {} has no hosts; run `promguard up` first",
                    self.config.deployment
                )
            })
    }

    /// Takes the deployment's lock for the length of a run.
    pub fn lock(&self) -> anyhow::Result<StateLock> {
        let path = self.dir.join(LOCK_FILE);
        StateLock::acquire(&path).with_context(|| "cannot start".to_owned())
    }
}
