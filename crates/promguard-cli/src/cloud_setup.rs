//! Building the DigitalOcean provider from the config and the environment.
//!
//! The token comes from `DIGITALOCEAN_TOKEN` (or `DIGITALOCEAN_ACCESS_TOKEN`)
//! and is never printed. The login key is `ssh.private_key`, else
//! `~/.ssh/id_ed25519`, else `~/.ssh/id_rsa`, else a key PromGuard makes for
//! the deployment; its public half is `digitalocean.ssh_public_key` or the
//! private key's path plus `.pub`.
//!
//! For tests only, against a fake API on this machine:
//! - [`URL_ENV`] points the provider at another API base URL (`https://...`,
//!   or plain `http://127.0.0.1:<port>`);
//! - with a `http://127.0.0.1` URL, [`NETNS_ENV`] names a network namespace
//!   in which SSH connections are opened (the fake's droplets are namespace
//!   hosts whose addresses are routed only there), and [`TIMING_ENV`]` =
//!   fast` shortens waits and timeouts.
//!
//! Both refuse to work with any other URL, so a real deployment can never be
//! redirected into a namespace or made impatient by a stray variable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use promguard_cloud::digitalocean::{DigitalOceanProvider, FirstBoot, Timing, Token};
use promguard_cloud::CloudProvider;
use promguard_core::config::Config;
use promguard_core::Role;

/// Overrides the API base URL (tests: the fake API).
pub const URL_ENV: &str = "PROMGUARD_DIGITALOCEAN_URL";
/// Test only: the network namespace SSH connections are opened in.
pub const NETNS_ENV: &str = "PROMGUARD_DIGITALOCEAN_NETNS";
/// Test only: `fast` shortens the provider's waits and timeouts.
pub const TIMING_ENV: &str = "PROMGUARD_DIGITALOCEAN_TEST_TIMING";

/// Where the API is, as checked from [`URL_ENV`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// The real API.
    Default,
    /// Another `https` URL.
    Https(String),
    /// A server on this machine's loopback (the fake API).
    Loopback(String),
}

fn endpoint(url: Option<&str>) -> anyhow::Result<Endpoint> {
    let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(Endpoint::Default);
    };
    if let Some(rest) = url.strip_prefix("http://127.0.0.1:") {
        let port = rest.split('/').next().unwrap_or_default();
        if port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Ok(Endpoint::Loopback(url.trim_end_matches('/').to_owned()));
        }
    } else if url.starts_with("https://") && url.len() > "https://".len() {
        return Ok(Endpoint::Https(url.trim_end_matches('/').to_owned()));
    }
    bail!("{URL_ENV}={url:?} is not accepted: use an https:// URL, or http://127.0.0.1:<port> for a fake API in tests (the token must not travel in the clear)")
}

/// The DigitalOcean provider the config and environment describe.
pub fn digitalocean(config: &Config) -> anyhow::Result<Arc<dyn CloudProvider>> {
    digitalocean_with(config, &|name| std::env::var(name).ok())
}

fn digitalocean_with(
    config: &Config,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Arc<dyn CloudProvider>> {
    let env = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let endpoint = endpoint(env(URL_ENV).as_deref())?;
    let netns = env(NETNS_ENV);
    let fast = env(TIMING_ENV);
    let loopback = matches!(endpoint, Endpoint::Loopback(_));
    for (name, value) in [(NETNS_ENV, &netns), (TIMING_ENV, &fast)] {
        if value.is_some() && !loopback {
            bail!("{name} is only for tests against a fake API at http://127.0.0.1 ({URL_ENV}); unset it");
        }
    }
    let netns = match netns {
        None => None,
        Some(name) => {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                || name.starts_with('.')
            {
                bail!("{NETNS_ENV}={name:?} is no network namespace name");
            }
            let path = promguard_cloud::local::netns_path(&name);
            if !path.exists() {
                bail!("{NETNS_ENV}: network namespace {name} does not exist");
            }
            Some(path)
        }
    };
    let token = Token::first_of(
        ["DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"].map(|name| std::env::var(name).ok()),
    )?;
    let mut builder = DigitalOceanProvider::builder_from_config(config, token);
    for role in [Role::Monitor, Role::Node, Role::Storage] {
        builder = builder.first_boot(
            role,
            FirstBoot {
                packages: promguard_remote::recipe::packages_for(role),
                hold_units: promguard_remote::recipe::held_units(),
            },
        );
    }
    match &endpoint {
        Endpoint::Default => {}
        Endpoint::Https(url) | Endpoint::Loopback(url) => builder = builder.base_url(url.clone()),
    }
    match fast.as_deref() {
        None => {}
        Some("fast") => builder = builder.timing(Timing::fast()),
        Some(other) => bail!("{TIMING_ENV}={other:?} is unknown; the only value is \"fast\""),
    }
    if let Some(path) = netns {
        builder = builder.ssh_from_netns(path);
    }
    Ok(Arc::new(builder.build()?))
}

/// The login key when `ssh.private_key` is not set: `~/.ssh/id_ed25519`,
/// else `~/.ssh/id_rsa`, else PromGuard's own key for the deployment in
/// `data_dir` (made on first use).
pub fn default_identity(data_dir: &Path) -> PathBuf {
    default_identity_in(std::env::var_os("HOME").as_deref().map(Path::new), data_dir)
}

fn default_identity_in(home: Option<&Path>, data_dir: &Path) -> PathBuf {
    if let Some(home) = home {
        let ssh = home.join(".ssh");
        for name in ["id_ed25519", "id_rsa"] {
            let path = ssh.join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    data_dir.join("id_ed25519")
}

/// The login key's public half: `digitalocean.ssh_public_key` for the
/// DigitalOcean provider when set, else `<identity>.pub`.
pub fn login_public_key_path(config: &Config, identity: &Path) -> PathBuf {
    match (&config.provider, &config.digitalocean.ssh_public_key) {
        (promguard_core::config::ProviderKind::DigitalOcean, Some(path)) => {
            match path.strip_prefix("~") {
                Ok(rest) => std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(rest))
                    .unwrap_or_else(|| path.clone()),
                Err(_) => path.clone(),
            }
        }
        _ => PathBuf::from(format!("{}.pub", identity.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_urls_are_accepted() {
        assert_eq!(endpoint(None).unwrap(), Endpoint::Default);
        assert_eq!(endpoint(Some(" ")).unwrap(), Endpoint::Default);
        assert_eq!(
            endpoint(Some("http://127.0.0.1:4000/")).unwrap(),
            Endpoint::Loopback("http://127.0.0.1:4000".into())
        );
        assert_eq!(
            endpoint(Some("https://api.example.com")).unwrap(),
            Endpoint::Https("https://api.example.com".into())
        );
        for bad in [
            "http://api.digitalocean.com",
            "http://127.0.0.1.evil.com:80",
            "http://127.0.0.1:notaport",
            "http://localhost:4000",
            "https://",
            "ftp://x",
        ] {
            let err = endpoint(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("https://"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_public_key_follows_the_config() {
        let mut config = Config::default();
        let identity = Path::new("/keys/id_ed25519");
        assert_eq!(
            login_public_key_path(&config, identity),
            PathBuf::from("/keys/id_ed25519.pub")
        );
        config.provider = promguard_core::config::ProviderKind::DigitalOcean;
        config.digitalocean.ssh_public_key = Some(PathBuf::from("/other/key.pub"));
        assert_eq!(
            login_public_key_path(&config, identity),
            PathBuf::from("/other/key.pub")
        );
    }

    #[test]
    fn default_identity_prefers_ed25519_then_rsa_then_promguards_own_key() {
        let home = tempfile::tempdir().unwrap();
        let data = Path::new("/var/lib/promguard-data");
        let ssh = home.path().join(".ssh");
        let chosen = || default_identity_in(Some(home.path()), data);
        assert_eq!(chosen(), data.join("id_ed25519"));
        assert_eq!(default_identity_in(None, data), data.join("id_ed25519"));
        std::fs::create_dir(&ssh).unwrap();
        std::fs::write(ssh.join("id_rsa"), "x").unwrap();
        assert_eq!(chosen(), ssh.join("id_rsa"));
        std::fs::write(ssh.join("id_ed25519"), "x").unwrap();
        assert_eq!(chosen(), ssh.join("id_ed25519"));
    }

    #[test]
    fn test_knobs_need_a_loopback_url() {
        let config = Config::default();
        let run = |vars: &'static [(&'static str, &'static str)]| {
            digitalocean_with(&config, &|name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        let err = run(&[(NETNS_ENV, "pg-x-hub")]);
        assert!(err.contains("only for tests"), "{err}");
        let err = run(&[(URL_ENV, "https://api.example.com"), (TIMING_ENV, "fast")]);
        assert!(err.contains("only for tests"), "{err}");
        let err = run(&[(URL_ENV, "http://example.com")]);
        assert!(err.contains("not accepted"), "{err}");
        let err = run(&[(URL_ENV, "http://127.0.0.1:9"), (NETNS_ENV, "../../etc")]);
        assert!(err.contains("no network namespace name"), "{err}");
        let err = run(&[
            (URL_ENV, "http://127.0.0.1:9"),
            (NETNS_ENV, "promguard-no-such-netns"),
        ]);
        assert!(err.contains("does not exist"), "{err}");
    }
}
