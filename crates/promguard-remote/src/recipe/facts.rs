//! The facts round trip: a fixed script that reports a host's state, and
//! a strict parser for its output.
//!
//! The output comes from the remote host, so the parser treats it as
//! untrusted: anything unexpected is an error, never a panic.

use std::collections::{BTreeMap, BTreeSet};

use promguard_core::exporters::DebianPackage;
use promguard_core::InterfaceName;

use super::script::{APPLY_MARKER_HEADER, APPLY_MARKER_MAX_FILES, APPLY_MARKER_PATH};
use crate::quote::{check_remote_path, shell_quote};

/// The first line of the facts output. The number goes up whenever a line
/// is added or changes meaning, so a parser never misreads another
/// version's output (2 added the `apply-pending` lines, 3 the `enabled`
/// lines of systemd hosts, 6 the `guest` lines of hosts PromGuard did not
/// create, 7 the `process` and `program` lines of managed exporters).
pub const FACTS_HEADER: &str = "promguard-facts 8";

/// Programs the recipe runs, with the Debian package providing each.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("/usr/bin/wg", "wireguard-tools"),
    ("/usr/bin/wg-quick", "wireguard-tools"),
    ("/usr/sbin/nft", "nftables"),
    (
        "/usr/bin/prometheus-node-exporter",
        "prometheus-node-exporter",
    ),
    ("/usr/bin/prometheus", "prometheus"),
    (
        "/usr/bin/prometheus-alertmanager",
        "prometheus-alertmanager",
    ),
];

/// The units that must be enabled on a systemd host for it to come back
/// after a reboot with no PromGuard run: the firewall, the WireGuard
/// interface, node_exporter, the WireGuard metrics collector and
/// Prometheus and Alertmanager (only the monitor needs the last two, but
/// every host reports them).
pub fn boot_units(interface: &InterfaceName) -> [String; 6] {
    [
        super::script::FIREWALL_UNIT.to_owned(),
        format!("wg-quick@{interface}.service"),
        super::script::NODE_EXPORTER_UNIT.to_owned(),
        super::script::WG_METRICS_UNIT.to_owned(),
        super::script::PROMETHEUS_UNIT.to_owned(),
        super::script::ALERTMANAGER_UNIT.to_owned(),
    ]
}

/// The daemons the recipe runs, as named in facts and PID files.
pub const NODE_EXPORTER: &str = "node_exporter";
/// See [`NODE_EXPORTER`].
pub const PROMETHEUS: &str = "prometheus";
/// See [`NODE_EXPORTER`]: the WireGuard metrics collector.
pub const WG_METRICS: &str = "wg_metrics";
/// See [`NODE_EXPORTER`].
pub const ALERTMANAGER: &str = "alertmanager";

/// The recipe's own daemons, with their units on systemd hosts, in the
/// order the facts report them (managed exporters follow).
const DAEMONS: &[(&str, &str)] = &[
    (NODE_EXPORTER, super::script::NODE_EXPORTER_UNIT),
    (PROMETHEUS, super::script::PROMETHEUS_UNIT),
    (WG_METRICS, super::script::WG_METRICS_UNIT),
    (ALERTMANAGER, super::script::ALERTMANAGER_UNIT),
];

/// A host's state as the facts script saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// systemd is the init system (`/run/systemd/system` exists).
    pub systemd: bool,
    /// SHA-256 (hex) of each managed file; `None` when it does not exist.
    pub files: BTreeMap<String, Option<String>>,
    /// The WireGuard interface.
    pub interface: InterfaceState,
    /// PromGuard's nftables table (`inet promguard`) is loaded.
    pub firewall_loaded: bool,
    /// node_exporter.
    pub node_exporter: ProcessState,
    /// Prometheus.
    pub prometheus: ProcessState,
    /// The WireGuard metrics collector.
    pub wg_metrics: ProcessState,
    /// Alertmanager.
    pub alertmanager: ProcessState,
    /// Each managed exporter's daemon, by its name
    /// ([`super::ManagedExporter::daemon`]).
    pub exporters: BTreeMap<String, ProcessState>,
    /// The packages of the exporters PromGuard set up on the host (its
    /// drop-in or environment file is there), wanted or not: one no longer
    /// in the config is retired.
    pub exporter_configs: BTreeSet<DebianPackage>,
    /// Which of [`PROGRAMS`] (and the managed exporters' binaries) are
    /// installed.
    pub programs: BTreeMap<String, bool>,
    /// On systemd hosts, which of the units PromGuard relies on at boot
    /// ([`boot_units`]) are enabled; empty without systemd.
    pub enabled: BTreeMap<String, bool>,
    /// What the apply marker ([`APPLY_MARKER_PATH`]) says: whether an
    /// earlier apply stopped between writing files and finishing their
    /// actions.
    pub pending: PendingApply,
    /// On a host PromGuard is a guest on ([`facts_script_for_guest`]),
    /// what only such hosts report; `None` on the others.
    pub guest: Option<GuestFacts>,
}

/// What a host PromGuard did not create reports besides the common facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFacts {
    /// ufw is installed and enabled.
    pub ufw_active: bool,
    /// Something holds the WireGuard UDP port (which PromGuard's own
    /// interface does once it runs).
    pub port_used: bool,
    /// The guest manifest: what PromGuard added to the host so far.
    pub manifest: super::guest::Manifest,
}

/// The apply marker as the facts script saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingApply {
    /// No marker: the last apply finished (or none ever ran).
    Clear,
    /// A marker listing these paths: an apply wrote (or was about to
    /// write) them and stopped before all their actions ran.
    Files(BTreeSet<String>),
    /// Something is at the marker's path, but not a marker this version
    /// writes (another version, a hand edit, a directory): every managed
    /// file counts as pending.
    Unrecognized,
}

/// The WireGuard interface's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceState {
    /// No such link.
    Missing,
    /// The link exists but is not usable as it is, so the recipe deletes
    /// it and brings it up again: `wg show` cannot talk to it (wireguard-go
    /// died and left its TUN device, maybe with a stale socket), or the
    /// link is administratively down (a `wg-quick up` cut short by SIGKILL
    /// or a dropped SSH connection leaves it down, often without
    /// addresses, and routes cannot be added to a down link).
    Broken,
    /// Administratively up and answering `wg show`, with these addresses
    /// (`10.0.0.2/32`).
    Up {
        /// Addresses as `ip address` prints them.
        addresses: Vec<String>,
    },
}

/// wireguard-go's control socket `/run/wireguard/<interface>.sock`, as the
/// facts script saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SocketState {
    /// No socket file (a kernel interface, or no interface).
    Absent,
    /// A process listens on it.
    Listening,
    /// The file is left over from a wireguard-go that died.
    Stale,
}

/// Whether a daemon runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    /// Not running (or its PID file points at another program).
    Stopped,
    /// Running. Without systemd, `args` is its command line from
    /// `/proc/<pid>/cmdline`; with systemd it is empty (its arguments are
    /// in a managed `/etc/default` file).
    Running {
        /// The command line, split on whitespace.
        args: Vec<String>,
    },
}

/// The facts script for a host whose managed files are `paths` (each
/// already checked by [`crate::check_remote_path`]). It is the same for
/// every run but for those paths and the interface name, both quoted.
///
/// Its first line reads the rest into a variable with one `read -N`, which
/// reads in blocks, and runs it: bash reads a script from a pipe or socket
/// one byte per system call (so that commands see the input after it),
/// which for these 6 KiB cost the host about 2 ms of CPU per run. Nothing
/// runs before all of it is read, as with a script in a function.
pub fn facts_script(interface: &InterfaceName, paths: &[String]) -> String {
    read_and_run(facts_function(interface, paths, None, &[]))
}

/// [`facts_script`] for a host PromGuard is a guest on, whose WireGuard
/// interface is to listen on `port`: it also reports the [`GuestFacts`].
pub fn facts_script_for_guest(
    interface: &InterfaceName,
    paths: &[String],
    port: promguard_core::Port,
) -> String {
    read_and_run(facts_function(interface, paths, Some(port), &[]))
}

/// The facts script for `host` (a guest's when it is one), whose managed
/// files are `paths`: it also reports `host`'s managed exporters (their
/// programs, daemons and units).
pub fn facts_script_for(host: &super::DesiredHost, paths: &[String]) -> String {
    let guest_port = host.guest.as_ref().map(|g| g.wireguard_port);
    read_and_run(facts_function(
        &host.interface,
        paths,
        guest_port,
        &host.exporters,
    ))
}

fn read_and_run(script: String) -> String {
    // `read -N` counts characters: in ASCII, whatever the host's locale,
    // they are bytes. Every value in the script is ASCII (paths and
    // interface names are checked), so the fallback is only a safeguard.
    if !script.is_ascii() {
        return script;
    }
    format!(
        "IFS= read -r -N {} facts_script && eval \"$facts_script\"\n{script}",
        script.len()
    )
}

/// The facts function and its call, as bash reads them after the first
/// line of [`facts_script`].
fn facts_function(
    interface: &InterfaceName,
    paths: &[String],
    guest_port: Option<promguard_core::Port>,
    exporters: &[super::ManagedExporter],
) -> String {
    let quoted_paths: Vec<String> = paths.iter().map(|p| shell_quote(p)).collect();
    let units: Vec<String> = boot_units(interface)
        .into_iter()
        .chain(exporters.iter().map(|e| e.unit()))
        .map(|u| shell_quote(&u))
        .collect();
    let programs: Vec<String> = PROGRAMS
        .iter()
        .map(|(p, _)| p.to_string())
        .chain(exporters.iter().map(|e| e.binary()))
        .map(|p| shell_quote(&p))
        .collect();
    let daemons: Vec<String> = DAEMONS
        .iter()
        .map(|(d, _)| d.to_string())
        .chain(exporters.iter().map(|e| e.daemon().to_owned()))
        .map(|d| shell_quote(&d))
        .collect();
    let daemon_units: Vec<String> = DAEMONS
        .iter()
        .map(|(_, u)| u.to_string())
        .chain(exporters.iter().map(|e| e.unit()))
        .map(|u| shell_quote(&u))
        .collect();
    let array = |items: &[String]| format!("({})", items.join(" "));
    format!(
        "facts() {{\n\
         iface={iface}\nheader={header}\nmarker={marker}\nmarker_lines={marker_lines}\n\
         paths={paths}\nprograms={programs}\nunits={units}\n\
         daemons={daemons}\ndaemon_units={daemon_units}\n\
         guest_port={guest_port}\nguest_manifest={guest_manifest}\nguest_lines={guest_lines}\n\
         {FACTS_BODY}}}\nfacts </dev/null\n",
        guest_port = guest_port.map(|p| p.to_string()).unwrap_or_default(),
        guest_manifest = shell_quote(super::guest::MANIFEST_PATH),
        guest_lines = super::guest::MANIFEST_MAX_LINES + 1,
        iface = shell_quote(interface.as_str()),
        header = shell_quote(FACTS_HEADER),
        marker = shell_quote(APPLY_MARKER_PATH),
        marker_lines = MARKER_LINES_SHOWN,
        paths = array(&quoted_paths),
        programs = array(&programs),
        units = array(&units),
        daemons = array(&daemons),
        daemon_units = array(&daemon_units),
    )
}

/// The facts script's body: shell in a file of its own, so that shellcheck
/// checks it.
const FACTS_BODY: &str = include_str!("sh/facts.sh");

/// Lines of the marker the facts script prints at most: the header, the
/// most `file` lines a marker of ours has, and one more.
const MARKER_LINES_SHOWN: usize = APPLY_MARKER_MAX_FILES + 2;

/// Parses the facts script's output. `paths` are the files asked about;
/// each must be reported exactly once. Lines before the header (noise from
/// a login script) are skipped; everything after it must be understood.
pub fn parse_facts(output: &str, paths: &[String]) -> Result<Facts, String> {
    parse_facts_for(output, paths, &[])
}

/// [`parse_facts`] for the output of [`facts_script_for`] on a host with
/// `exporters`: each one's program and daemon must be reported too.
pub fn parse_facts_for(
    output: &str,
    paths: &[String],
    exporters: &[super::ManagedExporter],
) -> Result<Facts, String> {
    let binaries: Vec<String> = exporters.iter().map(|e| e.binary()).collect();
    let mut exporter_states = BTreeMap::new();
    let mut lines = output.lines().skip_while(|l| *l != FACTS_HEADER);
    if lines.next().is_none() {
        return Err(format!(
            "the output has no `{FACTS_HEADER}` header (is bash installed?)"
        ));
    }
    let mut systemd = None;
    let mut files = BTreeMap::new();
    let mut interface = None;
    let mut link_up = None;
    let mut wg_answers = None;
    let mut socket = None;
    let mut addresses = Vec::new();
    let mut firewall_loaded = None;
    let mut node_exporter = None;
    let mut prometheus = None;
    let mut wg_metrics = None;
    let mut alertmanager = None;
    let mut programs = BTreeMap::new();
    let mut exporter_configs = BTreeSet::new();
    let mut enabled = BTreeMap::new();
    let mut marker_present = None;
    let mut marker_lines: Vec<&str> = Vec::new();
    let mut ended = false;
    let mut guest = false;
    let mut ufw_active = None;
    let mut port_used = None;
    let mut guest_lines: Vec<&str> = Vec::new();
    for line in lines {
        if ended {
            return Err(format!("unexpected line after `end`: {:?}", short(line)));
        }
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        let bad = || format!("malformed line {:?}", short(line));
        match key {
            "end" if rest.is_empty() => ended = true,
            "systemd" => systemd = Some(yes_no(rest, "yes", "no").ok_or_else(bad)?),
            "file" => {
                let (hash, path) = rest.split_once(' ').ok_or_else(bad)?;
                let hash = match hash {
                    "missing" => None,
                    h if h.len() == 64
                        && h.bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
                    {
                        Some(h.to_owned())
                    }
                    _ => return Err(bad()),
                };
                if !paths.iter().any(|p| p == path) {
                    return Err(format!(
                        "facts report a file that was not asked about: {:?}",
                        short(path)
                    ));
                }
                if files.insert(path.to_owned(), hash).is_some() {
                    return Err(format!("file {path} is reported twice"));
                }
            }
            "program" => {
                let (present, path) = rest.split_once(' ').ok_or_else(bad)?;
                let present = yes_no(present, "yes", "no").ok_or_else(bad)?;
                if !PROGRAMS.iter().any(|(p, _)| *p == path) && !binaries.iter().any(|b| b == path)
                {
                    return Err(bad());
                }
                programs.insert(path.to_owned(), present);
            }
            "exporter-config" => {
                // node_exporter's drop-in is the recipe's own; a name that
                // is no package is a drop-in of the host's own, not ours.
                if Some(rest) != super::script::NODE_EXPORTER_UNIT.strip_suffix(".service") {
                    if let Ok(package) = DebianPackage::new(rest) {
                        exporter_configs.insert(package);
                    }
                }
            }
            "enabled" => {
                let (yes, unit) = rest.split_once(' ').ok_or_else(bad)?;
                let yes = yes_no(yes, "yes", "no").ok_or_else(bad)?;
                let known = unit.ends_with(".service")
                    && unit
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b));
                if !known || enabled.insert(unit.to_owned(), yes).is_some() {
                    return Err(bad());
                }
            }
            "interface" => interface = Some(yes_no(rest, "present", "missing").ok_or_else(bad)?),
            "link" => link_up = Some(yes_no(rest, "up", "down").ok_or_else(bad)?),
            "wg" => wg_answers = Some(yes_no(rest, "answers", "silent").ok_or_else(bad)?),
            "socket" => {
                socket = Some(match rest {
                    "absent" => SocketState::Absent,
                    "listening" => SocketState::Listening,
                    "stale" => SocketState::Stale,
                    _ => return Err(bad()),
                })
            }
            "address" => {
                if rest.is_empty() || rest.contains(' ') {
                    return Err(bad());
                }
                addresses.push(rest.to_owned());
            }
            "firewall" => {
                firewall_loaded = Some(yes_no(rest, "loaded", "missing").ok_or_else(bad)?)
            }
            "process" => {
                let mut words = rest.split_whitespace();
                let name = words.next().ok_or_else(bad)?;
                let state = match words.next() {
                    Some("running") => ProcessState::Running {
                        args: words.map(str::to_owned).collect(),
                    },
                    Some("stopped") if words.next().is_none() => ProcessState::Stopped,
                    _ => return Err(bad()),
                };
                let slot = match name {
                    NODE_EXPORTER => &mut node_exporter,
                    PROMETHEUS => &mut prometheus,
                    WG_METRICS => &mut wg_metrics,
                    ALERTMANAGER => &mut alertmanager,
                    _ if exporters.iter().any(|e| e.daemon() == name) => {
                        if exporter_states.insert(name.to_owned(), state).is_some() {
                            return Err(format!("process {name} is reported twice"));
                        }
                        continue;
                    }
                    _ => return Err(bad()),
                };
                *slot = Some(state);
            }
            "apply-pending" => {
                let present = yes_no(rest, "present", "absent").ok_or_else(bad)?;
                if marker_present.replace(present).is_some() {
                    return Err("the `apply-pending` line is reported twice".into());
                }
            }
            // The marker's own lines: any text, judged as a whole below.
            "apply-pending-line" if line.len() > key.len() => {
                if marker_present != Some(true) {
                    return Err(format!(
                        "an `apply-pending-line` without `apply-pending present` before it: {:?}",
                        short(line)
                    ));
                }
                if marker_lines.len() == MARKER_LINES_SHOWN {
                    return Err(format!(
                        "more than {MARKER_LINES_SHOWN} `apply-pending-line` lines (the script prints at most that many)"
                    ));
                }
                marker_lines.push(rest);
            }
            "guest" if rest == "yes" && !guest => guest = true,
            "ufw" if guest => {
                ufw_active = Some(yes_no(rest, "active", "inactive").ok_or_else(bad)?)
            }
            "udp-port" if guest => port_used = Some(yes_no(rest, "used", "free").ok_or_else(bad)?),
            "guest-line" if guest && !rest.is_empty() => {
                if guest_lines.len() > super::guest::MANIFEST_MAX_LINES {
                    return Err(format!(
                        "{} has more than {} lines",
                        super::guest::MANIFEST_PATH,
                        super::guest::MANIFEST_MAX_LINES
                    ));
                }
                guest_lines.push(rest);
            }
            _ => return Err(format!("unknown line {:?}", short(line))),
        }
    }
    if !ended {
        return Err("the output ends before `end` (the script was cut short)".into());
    }
    let missing = |what: &str| format!("the output has no {what} line");
    if let Some(path) = paths.iter().find(|p| !files.contains_key(*p)) {
        return Err(format!("the output does not report file {path}"));
    }
    if programs.len() != PROGRAMS.len() + binaries.len() {
        return Err(missing("`program` line for every program; it"));
    }
    let present = interface.ok_or_else(|| missing("`interface`"))?;
    // The socket is reported for every host; it does not change the
    // verdict (a kernel interface answers `wg show` beside a stale socket
    // file, and without the kernel module a stale socket means `wg show`
    // fails), but a malformed or missing line is still an error.
    let _socket = socket.ok_or_else(|| missing("`socket`"))?;
    let interface = if present {
        let link_up = link_up.ok_or_else(|| missing("`link`"))?;
        let wg_answers = wg_answers.ok_or_else(|| missing("`wg`"))?;
        if link_up && wg_answers {
            InterfaceState::Up { addresses }
        } else {
            // Addresses of a broken link do not matter: it is recreated.
            InterfaceState::Broken
        }
    } else {
        if link_up.is_some() || wg_answers.is_some() || !addresses.is_empty() {
            return Err(
                "the output describes the link, its addresses or `wg show` of a missing interface"
                    .into(),
            );
        }
        InterfaceState::Missing
    };
    let pending = match marker_present.ok_or_else(|| missing("`apply-pending`"))? {
        false => PendingApply::Clear,
        true => read_marker(&marker_lines),
    };
    Ok(Facts {
        systemd: systemd.ok_or_else(|| missing("`systemd`"))?,
        files,
        interface,
        firewall_loaded: firewall_loaded.ok_or_else(|| missing("`firewall`"))?,
        node_exporter: node_exporter.ok_or_else(|| missing("`process node_exporter`"))?,
        prometheus: prometheus.ok_or_else(|| missing("`process prometheus`"))?,
        wg_metrics: wg_metrics.ok_or_else(|| missing("`process wg_metrics`"))?,
        alertmanager: alertmanager.ok_or_else(|| missing("`process alertmanager`"))?,
        exporters: {
            if let Some(e) = exporters
                .iter()
                .find(|e| !exporter_states.contains_key(e.daemon()))
            {
                return Err(missing(&format!("`process {}`", e.daemon())));
            }
            exporter_states
        },
        exporter_configs,
        programs,
        enabled,
        pending,
        guest: if guest {
            Some(GuestFacts {
                ufw_active: ufw_active.ok_or_else(|| missing("`ufw`"))?,
                port_used: port_used.ok_or_else(|| missing("`udp-port`"))?,
                manifest: super::guest::Manifest::parse(guest_lines.iter().copied())?,
            })
        } else {
            None
        },
    })
}

/// Reads the apply marker's lines: [`APPLY_MARKER_HEADER`], then at most
/// [`APPLY_MARKER_MAX_FILES`] `file <path>` lines with plain absolute
/// paths. Anything else is [`PendingApply::Unrecognized`], which costs a
/// few extra actions, never a wrong skip.
fn read_marker(lines: &[&str]) -> PendingApply {
    let Some((header, rest)) = lines.split_first() else {
        return PendingApply::Unrecognized;
    };
    if *header != APPLY_MARKER_HEADER || rest.len() > APPLY_MARKER_MAX_FILES {
        return PendingApply::Unrecognized;
    }
    let mut paths = BTreeSet::new();
    for line in rest {
        match line.strip_prefix("file ") {
            Some(path) if check_remote_path(path).is_ok() => {
                paths.insert(path.to_owned());
            }
            _ => return PendingApply::Unrecognized,
        }
    }
    PendingApply::Files(paths)
}

fn yes_no(text: &str, yes: &str, no: &str) -> Option<bool> {
    match text {
        t if t == yes => Some(true),
        t if t == no => Some(false),
        _ => None,
    }
}

/// At most 80 characters of untrusted text for an error message.
fn short(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    fn paths() -> Vec<String> {
        vec![
            "/etc/wireguard/wg0.conf".into(),
            "/etc/promguard/nftables.conf".into(),
        ]
    }

    fn sample() -> String {
        format!(
            "noise from a login script\npromguard-facts 8\nsystemd no\n\
             file {HASH} /etc/wireguard/wg0.conf\nfile missing /etc/promguard/nftables.conf\n\
             program yes /usr/bin/wg\nprogram yes /usr/bin/wg-quick\nprogram yes /usr/sbin/nft\n\
             program yes /usr/bin/prometheus-node-exporter\nprogram no /usr/bin/prometheus\nprogram no /usr/bin/prometheus-alertmanager\n\
             socket listening\ninterface present\nlink up\nwg answers\naddress 10.0.0.2/32\naddress fe80::1/64\n\
             exporter-config prometheus-redis-exporter\nexporter-config prometheus-node-exporter\nexporter-config getty@tty1\n\
             firewall missing\n\
             process node_exporter running /usr/bin/prometheus-node-exporter --web.listen-address=10.0.0.2:9100 \n\
             process prometheus stopped\nprocess wg_metrics stopped\nprocess alertmanager stopped\napply-pending absent\nend\n"
        )
    }

    #[test]
    fn parses_a_full_report() {
        let facts = parse_facts(&sample(), &paths()).unwrap();
        expect_test::expect![[r#"
            Facts {
                systemd: false,
                files: {
                    "/etc/promguard/nftables.conf": None,
                    "/etc/wireguard/wg0.conf": Some(
                        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
                    ),
                },
                interface: Up {
                    addresses: [
                        "10.0.0.2/32",
                        "fe80::1/64",
                    ],
                },
                firewall_loaded: false,
                node_exporter: Running {
                    args: [
                        "/usr/bin/prometheus-node-exporter",
                        "--web.listen-address=10.0.0.2:9100",
                    ],
                },
                prometheus: Stopped,
                wg_metrics: Stopped,
                alertmanager: Stopped,
                exporters: {},
                exporter_configs: {
                    "prometheus-redis-exporter",
                },
                programs: {
                    "/usr/bin/prometheus": false,
                    "/usr/bin/prometheus-alertmanager": false,
                    "/usr/bin/prometheus-node-exporter": true,
                    "/usr/bin/wg": true,
                    "/usr/bin/wg-quick": true,
                    "/usr/sbin/nft": true,
                },
                enabled: {},
                pending: Clear,
                guest: None,
            }
        "#]]
        .assert_debug_eq(&facts);
    }

    /// The interface lines of a report, as the facts script prints them
    /// for each state a host can be in, and what the parser makes of them.
    #[test]
    fn interface_states() {
        let cases = [
            (
                "healthy wireguard-go",
                "socket listening\ninterface present\nlink up\nwg answers\naddress 10.0.0.2/32\n",
            ),
            (
                "healthy kernel interface",
                "socket absent\ninterface present\nlink up\nwg answers\naddress 10.0.0.2/32\n",
            ),
            (
                "up without addresses",
                "socket listening\ninterface present\nlink up\nwg answers\n",
            ),
            ("no interface", "socket absent\ninterface missing\n"),
            (
                "no interface, stale socket",
                "socket stale\ninterface missing\n",
            ),
            (
                "wg-quick cut before `ip link set up`",
                "socket listening\ninterface present\nlink down\nwg answers\n",
            ),
            (
                "set down, addresses kept",
                "socket listening\ninterface present\nlink down\nwg answers\naddress 10.0.0.2/32\n",
            ),
            (
                "wireguard-go died",
                "socket stale\ninterface present\nlink up\nwg silent\naddress 10.0.0.2/32\n",
            ),
            (
                "wireguard-go died, socket removed",
                "socket absent\ninterface present\nlink down\nwg silent\n",
            ),
        ];
        let mut out = String::new();
        for (name, lines) in cases {
            let report = sample().replace(
                "socket listening\ninterface present\nlink up\nwg answers\naddress 10.0.0.2/32\naddress fe80::1/64\n",
                lines,
            );
            let state = parse_facts(&report, &paths()).map(|f| f.interface);
            out.push_str(&format!("{name}: {state:?}\n"));
        }
        expect_test::expect![[r#"
            healthy wireguard-go: Ok(Up { addresses: ["10.0.0.2/32"] })
            healthy kernel interface: Ok(Up { addresses: ["10.0.0.2/32"] })
            up without addresses: Ok(Up { addresses: [] })
            no interface: Ok(Missing)
            no interface, stale socket: Ok(Missing)
            wg-quick cut before `ip link set up`: Ok(Broken)
            set down, addresses kept: Ok(Broken)
            wireguard-go died: Ok(Broken)
            wireguard-go died, socket removed: Ok(Broken)
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn malformed_output_is_an_error_not_a_panic() {
        let good = sample();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no `promguard-facts 8` header"),
            (
                good.replace("promguard-facts 8", "promguard-facts 1"),
                "no `promguard-facts 8` header",
            ),
            (
                good.replace("apply-pending absent\n", ""),
                "no `apply-pending` line",
            ),
            (
                good.replace("apply-pending absent", "apply-pending maybe"),
                "malformed line \"apply-pending maybe\"",
            ),
            (
                good.replace(
                    "apply-pending absent\n",
                    "apply-pending absent\napply-pending present\n",
                ),
                "reported twice",
            ),
            (
                good.replace(
                    "apply-pending absent\n",
                    "apply-pending absent\napply-pending-line promguard-apply-pending 1\n",
                ),
                "without `apply-pending present`",
            ),
            (
                good.replace(
                    "apply-pending absent\n",
                    "apply-pending-line file /etc/x\napply-pending present\n",
                ),
                "without `apply-pending present`",
            ),
            (
                good.replace("apply-pending absent\n", "apply-pending-line\n"),
                "unknown line \"apply-pending-line\"",
            ),
            (
                good.replace(
                    "apply-pending absent\n",
                    &format!(
                        "apply-pending present\n{}",
                        "apply-pending-line file /etc/x\n".repeat(MARKER_LINES_SHOWN + 1)
                    ),
                ),
                "more than 258 `apply-pending-line` lines",
            ),
            (good.replace("end\n", ""), "ends before `end`"),
            (good.replace("end\n", "end\nextra\n"), "after `end`"),
            (
                good.replace("systemd no", "systemd maybe"),
                "malformed line \"systemd maybe\"",
            ),
            (good.replace("systemd no\n", ""), "no `systemd` line"),
            (good.replace(HASH, "XYZ"), "malformed line"),
            (good.replace(HASH, &HASH.to_uppercase()), "malformed line"),
            (
                good.replace("/etc/wireguard/wg0.conf", "/etc/shadow"),
                "not asked about",
            ),
            (
                good.replace("file missing /etc/promguard/nftables.conf\n", ""),
                "does not report file /etc/promguard/nftables.conf",
            ),
            (
                good.replace(
                    "nftables.conf\n",
                    "nftables.conf\nfile missing /etc/promguard/nftables.conf\n",
                ),
                "reported twice",
            ),
            (
                good.replace("interface present", "interface missing"),
                "of a missing interface",
            ),
            (
                good.replace("interface present", "interface up"),
                "malformed line \"interface up\"",
            ),
            (
                good.replace("interface present\n", ""),
                "no `interface` line",
            ),
            (good.replace("link up\n", ""), "no `link` line"),
            (good.replace("link up", "link dormant"), "malformed line"),
            (good.replace("wg answers\n", ""), "no `wg` line"),
            (good.replace("wg answers", "wg maybe"), "malformed line"),
            (good.replace("socket listening\n", ""), "no `socket` line"),
            (
                good.replace("socket listening", "socket open"),
                "malformed line",
            ),
            (
                good.replace("process prometheus stopped", "process sshd stopped"),
                "malformed line",
            ),
            (
                good.replace(
                    "process prometheus stopped",
                    "process prometheus stopped now",
                ),
                "malformed line",
            ),
            (
                good.replace("program no /usr/bin/prometheus", "program no /bin/sh"),
                "malformed line",
            ),
            (
                good.replace("program no /usr/bin/prometheus\n", ""),
                "every program",
            ),
            (
                good.replace("firewall missing", "firewall ☃"),
                "malformed line",
            ),
            (
                good.replace("end\n", "rm -rf /\nend\n"),
                "unknown line \"rm -rf /\"",
            ),
            (
                good.replace("address 10.0.0.2/32", "address"),
                "malformed line",
            ),
        ];
        for (output, expected) in cases {
            let err = parse_facts(&output, &paths()).unwrap_err();
            assert!(err.contains(expected), "expected {expected:?}, got {err:?}");
        }
        // Arbitrary bytes never panic.
        for n in 0..good.len() {
            if good.is_char_boundary(n) {
                let _ = parse_facts(&good[..n], &paths());
            }
        }
    }

    /// What the parser makes of the marker's lines as the facts script
    /// prints them: ours gives the listed files, anything else (another
    /// version, a hand edit, hostile text) counts as "everything pending",
    /// never as "nothing pending".
    #[test]
    fn apply_marker_contents() {
        let many_files: String = std::iter::once("promguard-apply-pending 1\n".to_owned())
            .chain((0..APPLY_MARKER_MAX_FILES).map(|i| format!("file /etc/x{i}\n")))
            .collect();
        let too_many_files = format!("{many_files}file /etc/y\n");
        let cases: Vec<(&str, Option<String>)> = vec![
            ("no marker", None),
            (
                "ours",
                Some("promguard-apply-pending 1\nfile /etc/wireguard/wg0.conf\nfile /etc/promguard/nftables.conf\n".into()),
            ),
            ("ours, no files", Some("promguard-apply-pending 1\n".into())),
            ("ours, last line without newline", Some("promguard-apply-pending 1\nfile /etc/a".into())),
            ("a file no longer managed", Some("promguard-apply-pending 1\nfile /etc/old.conf\n".into())),
            ("empty", Some(String::new())),
            ("another version", Some("promguard-apply-pending 2\nfile /etc/a\n".into())),
            ("no header", Some("file /etc/a\n".into())),
            ("relative path", Some("promguard-apply-pending 1\nfile etc/a\n".into())),
            ("dot-dot path", Some("promguard-apply-pending 1\nfile /etc/../shadow\n".into())),
            ("shell in a path", Some("promguard-apply-pending 1\nfile /etc/$(reboot)\n".into())),
            ("unknown line", Some("promguard-apply-pending 1\nrun nft -f /x\n".into())),
            ("fake end of facts", Some("promguard-apply-pending 1\nend\n".into())),
            ("blank line", Some("promguard-apply-pending 1\n\nfile /etc/a\n".into())),
            ("carriage return", Some("promguard-apply-pending 1\r\nfile /etc/a\rx\n".into())),
            ("most files ours can list", Some(many_files)),
            ("one file too many", Some(too_many_files)),
        ];
        let mut out = String::new();
        for (name, marker) in cases {
            // Exactly what the facts script prints for such a marker.
            let lines = match &marker {
                None => "apply-pending absent\n".to_owned(),
                Some(text) => {
                    let mut lines = "apply-pending present\n".to_owned();
                    for line in text.lines().take(MARKER_LINES_SHOWN) {
                        lines.push_str(&format!("apply-pending-line {line}\n"));
                    }
                    lines
                }
            };
            let report = sample().replace("apply-pending absent\n", &lines);
            let pending = match parse_facts(&report, &paths()).map(|f| f.pending) {
                Ok(PendingApply::Files(files)) if files.len() > 3 => {
                    format!("Files(<{} paths>)", files.len())
                }
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("error: {e}"),
            };
            out.push_str(&format!("{name}: {pending}\n"));
        }
        expect_test::expect![[r#"
            no marker: Clear
            ours: Files({"/etc/promguard/nftables.conf", "/etc/wireguard/wg0.conf"})
            ours, no files: Files({})
            ours, last line without newline: Files({"/etc/a"})
            a file no longer managed: Files({"/etc/old.conf"})
            empty: Unrecognized
            another version: Unrecognized
            no header: Unrecognized
            relative path: Unrecognized
            dot-dot path: Unrecognized
            shell in a path: Unrecognized
            unknown line: Unrecognized
            fake end of facts: Unrecognized
            blank line: Unrecognized
            carriage return: Unrecognized
            most files ours can list: Files(<256 paths>)
            one file too many: Unrecognized
        "#]]
        .assert_eq(&out);
    }

    /// The marker lines of the real facts script, run against a marker in a
    /// temp dir (the script's marker path swapped for it): the parser
    /// reads back what [`super::super::script::apply_marker_content`]
    /// writes, and a marker with hostile lines comes back as lines.
    #[test]
    fn marker_lines_round_trip_through_bash() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("apply-pending");
        let iface = InterfaceName::new("wg0").unwrap();
        let script = facts_script(&iface, &paths());
        let local = script.replace(
            &shell_quote(APPLY_MARKER_PATH),
            &shell_quote(marker.to_str().unwrap()),
        );
        assert_ne!(script, local, "the facts script names the marker path once");
        // Only the marker part runs (with the variables it reads): the
        // rest would look at this machine.
        let vars_start = local.find("marker=").unwrap();
        let vars_end = vars_start + local[vars_start..].find("\npaths=").unwrap();
        let start = local.find("# The apply marker").unwrap();
        let end = local.find("echo 'end'").unwrap();
        let part = &format!("{}\n{}", &local[vars_start..vars_end], &local[start..end]);
        let run = |content: Option<&[u8]>| -> String {
            let _ = std::fs::remove_file(&marker);
            if let Some(content) = content {
                std::fs::write(&marker, content).unwrap();
            }
            let out = std::process::Command::new("bash")
                .args(["-c", part])
                .output()
                .expect("bash is needed for this test");
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run(None), "apply-pending absent\n");
        let ours = super::super::script::apply_marker_content(&paths());
        let printed = run(Some(ours.as_bytes()));
        let report = sample().replace("apply-pending absent\n", &printed);
        assert_eq!(
            parse_facts(&report, &paths()).unwrap().pending,
            PendingApply::Files(paths().into_iter().collect())
        );
        let printed = run(Some(b"promguard-apply-pending 1\nend\n\\ $(id) 'x\nlast"));
        assert_eq!(
            printed,
            "apply-pending present\napply-pending-line promguard-apply-pending 1\n\
             apply-pending-line end\napply-pending-line \\ $(id) 'x\napply-pending-line last\n"
        );
        let report = sample().replace("apply-pending absent\n", &printed);
        assert_eq!(
            parse_facts(&report, &paths()).unwrap().pending,
            PendingApply::Unrecognized
        );
        // A huge marker is cut to what the parser accepts.
        let huge = "file /etc/x\n".repeat(10_000);
        let printed = run(Some(huge.as_bytes()));
        assert_eq!(printed.lines().count(), 1 + MARKER_LINES_SHOWN);
        let report = sample().replace("apply-pending absent\n", &printed);
        assert_eq!(
            parse_facts(&report, &paths()).unwrap().pending,
            PendingApply::Unrecognized
        );
    }

    /// The whole script, fed to `bash -s` through a pipe as sshd feeds it:
    /// its first line reads the rest, and the report parses, with this
    /// machine's state (an interface that does not exist, files in a temp
    /// dir, one of them missing).
    #[test]
    fn whole_script_runs_from_a_pipe() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present.conf");
        std::fs::write(&present, "hello\n").unwrap();
        let paths = vec![
            present.to_str().unwrap().to_owned(),
            dir.path().join("missing.conf").to_str().unwrap().to_owned(),
        ];
        for p in &paths {
            assert!(check_remote_path(p).is_ok(), "{p}");
        }
        let iface = InterfaceName::new("pgtest9").unwrap();
        let script = facts_script(&iface, &paths);
        assert!(script.starts_with("IFS= read -r -N "), "{script}");
        let mut child = std::process::Command::new("bash")
            .arg("-s")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("bash is needed for this test");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = String::from_utf8(out.stdout).unwrap();
        let facts = parse_facts(&report, &paths).unwrap();
        // HASH is the SHA-256 of "hello\n".
        assert_eq!(facts.files[&paths[0]].as_deref(), Some(HASH));
        assert_eq!(facts.files[&paths[1]], None);
        assert_eq!(facts.interface, InterfaceState::Missing);
    }

    #[test]
    fn script_quotes_paths_and_runs_locally() {
        let iface = InterfaceName::new("wg0").unwrap();
        let script = facts_script(&iface, &paths());
        assert!(script.contains("paths=('/etc/wireguard/wg0.conf' '/etc/promguard/nftables.conf'"));
        // As a file that shellcheck checks in `cargo xtask test`.
        expect_test::expect_file!["snapshots/facts.sh"].assert_eq(&script);
        // The script is valid bash (syntax check only: running it here
        // would look at this machine, not a host).
        let status = std::process::Command::new("bash")
            .args(["-n", "-c", &script])
            .status()
            .expect("bash is needed for this test");
        assert!(status.success());
    }
}
