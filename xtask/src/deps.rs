//! Installs the Debian packages PromGuard's tests and demo need, when they
//! are missing.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Packages, with why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("wireguard-tools", "wg and wg-quick"),
    (
        "wireguard-go",
        "WireGuard in user space (the kernel has no module)",
    ),
    ("openssh-server", "sshd on every local host"),
    ("openssh-client", "ssh-keygen"),
    ("prometheus", "Prometheus and promtool"),
    (
        "prometheus-alertmanager",
        "amtool checks the rendered alertmanager.yml",
    ),
    ("prometheus-node-exporter", "node_exporter"),
    ("nftables", "the host firewall"),
    ("iproute2", "network namespaces"),
    ("util-linux", "unshare and nsenter"),
    ("procps", "ps for checks"),
    (
        "systemd-container",
        "systemd-nspawn boots the local systemd hosts",
    ),
    ("debootstrap", "builds the systemd hosts' Debian image"),
    ("dpkg-dev", "dpkg-scanpackages indexes their package mirror"),
    (
        "busybox",
        "its httpd serves that mirror in the hub namespace, and the attack suite's container; its ping",
    ),
    ("nmap", "the attack suite's port scans"),
    (
        "victoria-metrics",
        "the storage host's engine on local namespace hosts (e2e --monitors)",
    ),
    ("shellcheck", "checks the shell scripts that run on hosts"),
    ("libssh2-1-dev", "the ssh2 crate links libssh2"),
    ("libssl-dev", "libssh2's crypto"),
    ("pkg-config", "finding libssh2 when building"),
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs every missing package with apt-get (as root), without starting
/// their services: the packages' daemons must not run in this machine's own
/// namespace.
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        let list: Vec<String> = PACKAGES
            .iter()
            .filter(|(p, _)| missing.contains(p))
            .map(|(p, why)| format!("{p} ({why})"))
            .collect();
        bail!(
            "missing packages: {}; run as root or install them with `apt-get install {}`",
            list.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    // policy-rc.d answering 101 tells maintainer scripts not to start services.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let created_policy = if policy.exists() {
        false
    } else {
        std::fs::write(
            policy,
            "#!/bin/sh\n# Temporary, written by promguard's xtask\nexit 101\n",
        )?;
        set_mode(policy, 0o755)?;
        true
    };
    let result = (|| {
        crate::run(Command::new("apt-get").args(["update", "-q"]))?;
        crate::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )
    })();
    if created_policy {
        std::fs::remove_file(policy)
            .context("cannot remove the temporary /usr/sbin/policy-rc.d")?;
    }
    result?;
    let still: Vec<&str> = missing.iter().copied().filter(|p| !installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get did not install {}", still.join(" "));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
