//! PromGuard as a guest on a host it did not create.
//!
//! On such a host the recipe changes only what it manages and notes each
//! change in the guest manifest ([`MANIFEST_PATH`]) on the host *before*
//! making it: files it created, files of the host's it replaced (a copy
//! is kept in [`SAVED_DIR`]), units it enabled, packages it installed
//! (with what apt pulled in) and ufw rules it added. [`leave_script`]
//! undoes exactly what the manifest lists, so `down` leaves the host as it
//! was found, even after a run that was cut short. The manifest travels
//! back with every run and is recorded in the state ([`GuestRecord`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use promguard_core::state::GuestRecord;
use promguard_core::{InterfaceName, Port};

use crate::quote::{check_remote_path, shell_quote};

/// The guest manifest on the host.
pub const MANIFEST_PATH: &str = "/etc/promguard/guest-manifest";
/// Where copies of the host's own files wait until PromGuard leaves.
pub const SAVED_DIR: &str = "/etc/promguard/saved";
/// The manifest's first line.
pub const MANIFEST_HEADER: &str = "promguard-guest 1";
/// At most this many manifest lines are read back; a longer one is not
/// ours.
pub const MANIFEST_MAX_LINES: usize = 512;

/// Shell functions of the apply script on guest hosts.
pub(crate) const GUEST_SH: &str = include_str!("sh/guest.sh");
/// The body of the leave script.
const LEAVE_SH: &str = include_str!("sh/leave.sh");

/// What the recipe needs to know to be a guest on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// The UDP port WireGuard listens on: it must be free on the host
    /// (unless PromGuard's own interface has it), and ufw must let it in.
    pub wireguard_port: Port,
    /// The WireGuard addresses of the monitors that scrape the host: the
    /// only sources ufw lets in to the exporter ports on the WireGuard
    /// interface.
    pub scrapers: Vec<IpAddr>,
    /// The host's exporter ports (TCP, on its WireGuard address).
    pub exporter_ports: Vec<Port>,
    /// Ports of the host's own services a prober on the monitor reaches
    /// over the tunnel (TCP, as [`promguard_core::FirewallPolicy::probe_ports`]).
    pub probe_ports: Vec<Port>,
    /// The comment on PromGuard's ufw rules (`promguard-<deployment>`):
    /// letters, digits and `-` only.
    pub comment: String,
}

impl Guest {
    /// The ufw rules PromGuard adds when ufw is active, each as the
    /// arguments of `ufw`.
    pub fn ufw_rules(&self, interface: &InterfaceName) -> Vec<String> {
        let mut rules = vec![format!(
            "allow {}/udp comment {}",
            self.wireguard_port, self.comment
        )];
        for port in self.exporter_ports.iter().chain(&self.probe_ports) {
            for scraper in &self.scrapers {
                rules.push(format!(
                    "allow in on {interface} from {scraper} to any port {port} proto tcp comment {}",
                    self.comment
                ));
            }
        }
        rules
    }
}

/// One line of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A file PromGuard created.
    Created(String),
    /// A file of the host's PromGuard replaced; a copy is in
    /// [`SAVED_DIR`].
    Saved(String),
    /// A directory PromGuard created.
    Dir(String),
    /// A unit PromGuard enabled.
    Unit(String),
    /// A package PromGuard installed.
    Package(String),
    /// A ufw rule PromGuard added (the arguments of `ufw`).
    Ufw(String),
}

/// The manifest as the host reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Its entries, oldest first.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Parses the manifest's lines (after the header). Every entry is
    /// checked as untrusted input, as the state file checks it.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut lines = lines.into_iter();
        match lines.next() {
            None => return Ok(Self::default()),
            Some(MANIFEST_HEADER) => {}
            Some(other) => {
                return Err(format!(
                    "{MANIFEST_PATH} starts with {other:?}, not {MANIFEST_HEADER:?}"
                ))
            }
        }
        let mut entries = Vec::new();
        for line in lines {
            let (kind, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("malformed line {line:?} in {MANIFEST_PATH}"))?;
            let path = |v: &str| {
                check_remote_path(v)
                    .map(|()| v.to_owned())
                    .map_err(|r| format!("{MANIFEST_PATH}: path {v:?}: {r}"))
            };
            entries.push(match kind {
                "created" => Entry::Created(path(value)?),
                "saved" => Entry::Saved(path(value)?),
                "dir" => Entry::Dir(path(value)?),
                "unit" => Entry::Unit(value.to_owned()),
                "package" => Entry::Package(value.to_owned()),
                "ufw" => Entry::Ufw(value.to_owned()),
                _ => return Err(format!("unknown line {line:?} in {MANIFEST_PATH}")),
            });
        }
        let manifest = Self { entries };
        manifest
            .to_record()
            .check()
            .map_err(|e| format!("{MANIFEST_PATH}: {e}"))?;
        Ok(manifest)
    }

    /// Whether PromGuard created or replaced `path`.
    pub fn has_file(&self, path: &str) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e, Entry::Created(p) | Entry::Saved(p) if p == path))
    }

    /// Whether PromGuard added the ufw rule `rule`.
    pub fn has_ufw(&self, rule: &str) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e, Entry::Ufw(r) if r == rule))
    }

    /// The manifest as the state records it.
    pub fn to_record(&self) -> GuestRecord {
        let mut record = GuestRecord::default();
        for entry in &self.entries {
            match entry {
                Entry::Created(p) | Entry::Dir(p) => {
                    record.created_paths.insert(p.clone());
                }
                Entry::Saved(p) => {
                    record.saved_paths.insert(p.clone());
                }
                Entry::Unit(u) => {
                    record.units.insert(u.clone());
                }
                Entry::Package(p) => {
                    record.packages.insert(p.clone());
                }
                Entry::Ufw(r) => {
                    if !record.ufw_rules.contains(r) {
                        record.ufw_rules.push(r.clone());
                    }
                }
            }
        }
        record
    }
}

/// Parses the `guest-manifest` lines of a script's output (the apply
/// script reports the manifest at its end); `None` when there are none.
pub fn manifest_from_output(output: &str) -> Result<Option<Manifest>, String> {
    let lines: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("guest-manifest "))
        .collect();
    if lines.is_empty() {
        return Ok(None);
    }
    if lines.len() > MANIFEST_MAX_LINES {
        return Err(format!(
            "{MANIFEST_PATH} has more than {MANIFEST_MAX_LINES} lines"
        ));
    }
    Manifest::parse(lines).map(Some)
}

/// The variables the guest functions read, as shell assignments.
pub(crate) fn guest_variables() -> String {
    format!(
        "guest_manifest={}\nguest_saved={}\nguest_header={}\n",
        shell_quote(MANIFEST_PATH),
        shell_quote(SAVED_DIR),
        shell_quote(MANIFEST_HEADER),
    )
}

/// The script that removes PromGuard from a guest host: it undoes what
/// the host's manifest lists, newest first (units stopped and disabled,
/// PromGuard's nftables table and ufw rules deleted, created files
/// removed, the host's own files put back, installed packages purged,
/// created directories removed) and prints `leave done` (or `leave
/// nothing` without a manifest). Run as root with `bash -s`; running it
/// again finds nothing to do.
pub fn leave_script() -> String {
    let mut s = String::from("# PromGuard leave script, generated; run with bash -s.\nmain() {\n");
    s.push_str(super::script::PRELUDE);
    s.push_str(&guest_variables());
    s.push_str(LEAVE_SH);
    s.push_str("}\nmain </dev/null\n");
    s
}

/// What the leave script's output says it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// There was nothing of PromGuard's on the host.
    Nothing,
    /// Everything the manifest listed was undone.
    Done,
}

/// Reads the leave script's last line.
pub fn parse_leave(output: &str) -> Result<Left, String> {
    match output.lines().rev().find(|l| !l.starts_with("step ")) {
        Some("leave done") => Ok(Left::Done),
        Some("leave nothing") => Ok(Left::Nothing),
        _ => Err("the leave script ended without saying it was done".into()),
    }
}

/// The apply script's lines that note `paths` before they are written.
pub(crate) fn note_files(s: &mut String, paths: &[&str]) {
    for path in paths {
        let _ = writeln!(s, "guest_file {}", shell_quote(path));
    }
}

/// The apply script's line that notes `units` before they are enabled.
pub(crate) fn note_units(s: &mut String, units: &[String]) {
    if units.is_empty() {
        return;
    }
    let quoted: Vec<String> = units.iter().map(|u| shell_quote(u)).collect();
    let _ = writeln!(s, "guest_units {}", quoted.join(" "));
}

/// The packages of a manifest, for messages.
pub fn packages(manifest: &Manifest) -> BTreeSet<&str> {
    manifest
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Package(p) => Some(p.as_str()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> Guest {
        Guest {
            wireguard_port: Port::new(51821).unwrap(),
            scrapers: vec!["10.0.0.1".parse().unwrap()],
            exporter_ports: vec![Port::new(9100).unwrap(), Port::new(9187).unwrap()],
            probe_ports: Vec::new(),
            comment: "promguard-prod".into(),
        }
    }

    #[test]
    fn ufw_rules_open_the_wireguard_port_and_the_exporters_to_the_monitor_only() {
        let rules = guest().ufw_rules(&InterfaceName::new("wg1").unwrap());
        assert_eq!(
            rules,
            [
                "allow 51821/udp comment promguard-prod",
                "allow in on wg1 from 10.0.0.1 to any port 9100 proto tcp comment promguard-prod",
                "allow in on wg1 from 10.0.0.1 to any port 9187 proto tcp comment promguard-prod",
            ]
        );
        // The state file accepts what the manifest records.
        let manifest = Manifest {
            entries: rules.into_iter().map(Entry::Ufw).collect(),
        };
        manifest.to_record().check().unwrap();
    }

    #[test]
    fn the_manifest_is_read_back_strictly() {
        let output =
            "step x\nguest-manifest promguard-guest 1\nguest-manifest dir /etc/promguard\n\
            guest-manifest created /etc/promguard/nftables.conf\n\
            guest-manifest saved /etc/default/prometheus-node-exporter\n\
            guest-manifest unit wg-quick@wg1.service\nguest-manifest package wireguard-tools\n\
            guest-manifest ufw allow 51821/udp comment promguard-prod\nstep done\n";
        let manifest = manifest_from_output(output).unwrap().unwrap();
        assert!(manifest.has_file("/etc/promguard/nftables.conf"));
        assert!(manifest.has_file("/etc/default/prometheus-node-exporter"));
        assert!(!manifest.has_file("/etc/promguard"));
        assert!(manifest.has_ufw("allow 51821/udp comment promguard-prod"));
        let record = manifest.to_record();
        assert_eq!(
            record.created_paths.iter().collect::<Vec<_>>(),
            ["/etc/promguard", "/etc/promguard/nftables.conf"]
        );
        assert_eq!(
            record.packages.iter().collect::<Vec<_>>(),
            ["wireguard-tools"]
        );
        assert_eq!(manifest_from_output("step done\n").unwrap(), None);

        for (bad, why) in [
            ("guest-manifest other 1\n", "not \"promguard-guest 1\""),
            (
                "guest-manifest promguard-guest 1\nguest-manifest created etc/x\n",
                "must be absolute",
            ),
            (
                "guest-manifest promguard-guest 1\nguest-manifest package Foo;rm\n",
                "not a Debian package name",
            ),
            (
                "guest-manifest promguard-guest 1\nguest-manifest ufw allow 1; reboot\n",
                "ufw",
            ),
            (
                "guest-manifest promguard-guest 1\nguest-manifest wipe /\n",
                "unknown line",
            ),
        ] {
            let err = manifest_from_output(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn leave_output_must_say_it_is_done() {
        assert_eq!(parse_leave("step a\nleave done\n"), Ok(Left::Done));
        assert_eq!(parse_leave("leave nothing\n"), Ok(Left::Nothing));
        assert!(parse_leave("step a\n").is_err());
    }

    /// The guest functions and the leave script, run for real in a
    /// scratch root: what the apply script notes, leave takes away, and
    /// a file of the host's comes back as it was.
    #[test]
    fn leave_undoes_what_the_manifest_lists_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("etc/default")).unwrap();
        std::fs::write(dir.path().join("etc/default/exporter"), "HOSTS OWN\n").unwrap();
        std::fs::write(dir.path().join("etc/keep"), "untouched\n").unwrap();
        let manifest = format!("{root}/etc/promguard/guest-manifest");
        let saved = format!("{root}/etc/promguard/saved");
        let vars = format!(
            "guest_manifest={}\nguest_saved={}\nguest_header={}\n",
            shell_quote(&manifest),
            shell_quote(&saved),
            shell_quote(MANIFEST_HEADER)
        );
        let apply = format!(
            "main() {{\n{}{vars}{GUEST_SH}guest_begin\n\
             guest_file {root}/etc/default/exporter\necho new > {root}/etc/default/exporter\n\
             guest_file {root}/etc/promguard/a/b.conf\nmkdir -p {root}/etc/promguard/a && echo x > {root}/etc/promguard/a/b.conf\n\
             guest_file {root}/etc/default/exporter\nguest_report\n}}\nmain\n",
            super::super::script::PRELUDE
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &apply])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reported = manifest_from_output(&String::from_utf8_lossy(&out.stdout))
            .unwrap()
            .unwrap();
        assert_eq!(
            reported.entries,
            [
                Entry::Dir(format!("{root}/etc/promguard")),
                Entry::Saved(format!("{root}/etc/default/exporter")),
                Entry::Dir(format!("{root}/etc/promguard/a")),
                Entry::Created(format!("{root}/etc/promguard/a/b.conf")),
            ]
        );
        // The leave script, with the scratch root's manifest; without
        // systemd, ufw, nft or packages in it, only files are at stake.
        let leave =
            leave_script().replace(&guest_variables(), &format!("{vars}guest_files_only=1\n"));
        let out = std::process::Command::new("bash")
            .args(["-c", &leave])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            parse_leave(&String::from_utf8_lossy(&out.stdout)),
            Ok(Left::Done)
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/default/exporter")).unwrap(),
            "HOSTS OWN\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/keep")).unwrap(),
            "untouched\n"
        );
        assert!(!dir.path().join("etc/promguard").exists());
        // Again: nothing left to do.
        let out = std::process::Command::new("bash")
            .args(["-c", &leave])
            .output()
            .unwrap();
        assert_eq!(
            parse_leave(&String::from_utf8_lossy(&out.stdout)),
            Ok(Left::Nothing)
        );
    }
}
