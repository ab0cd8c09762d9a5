//! What the local provider needs on this machine, checked all at once so a
//! user installs everything in one go.

use std::path::{Path, PathBuf};

use crate::CloudError;

/// A program the local provider runs, and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    /// Program name (looked up in the search path) or absolute path.
    pub name: &'static str,
    /// Debian package that installs it.
    pub package: &'static str,
}

/// Every program the local provider or its hosts run.
pub const REQUIRED_PROGRAMS: &[Program] = &[
    Program {
        name: "ip",
        package: "iproute2",
    },
    Program {
        name: "/usr/sbin/sshd",
        package: "openssh-server",
    },
    Program {
        name: "ssh-keygen",
        package: "openssh-client",
    },
    Program {
        name: "unshare",
        package: "util-linux",
    },
    Program {
        name: "nsenter",
        package: "util-linux",
    },
    Program {
        name: "mount",
        package: "mount",
    },
    Program {
        name: "bash",
        package: "bash",
    },
    Program {
        name: "wg",
        package: "wireguard-tools",
    },
    Program {
        name: "wg-quick",
        package: "wireguard-tools",
    },
    Program {
        name: "wireguard-go",
        package: "wireguard-go",
    },
    Program {
        name: "nft",
        package: "nftables",
    },
    Program {
        name: "prometheus",
        package: "prometheus",
    },
    Program {
        name: "promtool",
        package: "prometheus",
    },
    Program {
        name: "prometheus-node-exporter",
        package: "prometheus-node-exporter",
    },
];

/// Every program the local provider runs for systemd hosts, which bring
/// their own sshd, WireGuard, nftables and Prometheus (installed by apt).
pub const SYSTEMD_PROGRAMS: &[Program] = &[
    Program {
        name: "ip",
        package: "iproute2",
    },
    Program {
        name: "ssh-keygen",
        package: "openssh-client",
    },
    Program {
        name: "systemd-nspawn",
        package: "systemd-container",
    },
    Program {
        name: "debootstrap",
        package: "debootstrap",
    },
    Program {
        name: "apt-get",
        package: "apt",
    },
    Program {
        name: "dpkg-scanpackages",
        package: "dpkg-dev",
    },
    Program {
        name: "busybox",
        package: "busybox",
    },
];

/// The search path used for every program the provider runs, whatever the
/// caller's `PATH` is: root's programs live in `sbin` directories that a
/// user's `PATH` may lack.
pub(crate) const SEARCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds `name` in [`SEARCH_PATH`] (or checks it, when absolute).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let is_executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.starts_with('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    SEARCH_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| is_executable(path))
}

/// Checks root, the programs in `programs`, `/dev/net/tun` (wireguard-go
/// needs it) and the `prometheus` user, and reports everything missing in
/// one error with the packages to install.
pub fn check(programs: &[Program]) -> Result<(), CloudError> {
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(format!(
            "root privileges (effective uid is {})",
            nix::unistd::geteuid()
        ));
        fixes.push("run as root (namespaces, bridges and mounts need it)".to_owned());
    }
    let absent: Vec<&Program> = programs
        .iter()
        .filter(|p| find_program(p.name).is_none())
        .collect();
    if !absent.is_empty() {
        let names: Vec<String> = absent
            .iter()
            .map(|p| format!("{} (package {})", p.name, p.package))
            .collect();
        missing.push(format!("programs {}", names.join(", ")));
        let mut packages: Vec<&str> = absent.iter().map(|p| p.package).collect();
        packages.sort_unstable();
        packages.dedup();
        fixes.push(format!("apt-get install {}", packages.join(" ")));
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("the TUN device /dev/net/tun (wireguard-go needs it)".to_owned());
        fixes.push("load the tun module (modprobe tun) or create the device node".to_owned());
    }
    // Namespace hosts run this machine's Prometheus as its user.
    let runs_prometheus = programs.iter().any(|p| p.package == "prometheus");
    if runs_prometheus
        && nix::unistd::User::from_name("prometheus")
            .ok()
            .flatten()
            .is_none()
    {
        missing.push("the prometheus user".to_owned());
        fixes.push("apt-get install prometheus".to_owned());
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(CloudError::Missing {
        provider: "local",
        what: missing.join("; "),
        fix: fixes.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_programs_are_named_with_their_packages() {
        let programs = [
            Program {
                name: "ip",
                package: "iproute2",
            },
            Program {
                name: "promguard-no-such-program",
                package: "promguard-fake",
            },
            Program {
                name: "/usr/sbin/promguard-no-such-daemon",
                package: "promguard-fake",
            },
        ];
        let err = check(&programs).unwrap_err().to_string();
        assert!(
            err.contains("promguard-no-such-program (package promguard-fake)"),
            "{err}"
        );
        assert!(err.contains("/usr/sbin/promguard-no-such-daemon"), "{err}");
        // The package appears once in the fix even though two programs need it.
        assert!(
            err.contains("apt-get install promguard-fake")
                && !err.contains("promguard-fake promguard-fake"),
            "{err}"
        );
        assert!(!err.contains("ip (package iproute2)"), "{err}");
    }

    #[test]
    fn this_machine_has_everything() {
        // CI runs as root with every package installed; when this fails the
        // message says what to install.
        for programs in [REQUIRED_PROGRAMS, SYSTEMD_PROGRAMS] {
            if let Err(err) = check(programs) {
                panic!("{err}");
            }
        }
    }
}
