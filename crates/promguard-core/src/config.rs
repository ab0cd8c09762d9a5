//! The config file, `promguard.toml`: what the operator wants.
//!
//! Parsing happens in two stages: serde reads the TOML into plain mirror
//! structs (unknown keys are refused with line and column), then
//! [`Config::from_toml`] validates every field into typed values. Defaults
//! reproduce the 2018 original: a monitor in `tor1` and three nodes in
//! `lon1`, `sfo2` and `sgp1` on `10.0.0.0/24`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::exporters::{
    self, check_arg, check_value, DebianPackage, EnvName, ExporterSetting, KnownExporter,
    ManagedExporter, ProbeSpec, SettingSource, KNOWN_EXPORTERS,
};
use crate::names::{
    DeploymentName, ExporterName, HostName, InterfaceName, NameError, Port, Region, SshUser,
};
use crate::ssh::SshPublicKey;

/// The config file name `promguard` looks for.
pub const CONFIG_FILE: &str = "promguard.toml";

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys or wrong types.
    #[error("config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("config {path}: {field}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted path of the offending field, e.g. `nodes.host[2].name`.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Which cloud creates the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Namespace hosts on this machine.
    Local,
    /// DigitalOcean droplets.
    DigitalOcean,
}

impl ProviderKind {
    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::DigitalOcean => "digitalocean",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self::Local),
            "digitalocean" => Ok(Self::DigitalOcean),
            other => Err(format!(
                "unknown provider {other:?}; use \"local\" or \"digitalocean\""
            )),
        }
    }
}

/// An exporter an operator runs on a host, which Prometheus scrapes over the
/// tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterSpec {
    /// Exporter (and Prometheus job) name.
    pub name: ExporterName,
    /// TCP port it listens on, at the host's WireGuard address.
    pub port: Port,
    /// When PromGuard installs it from a Debian package (`package`):
    /// how; `None` when the operator runs it.
    pub managed: Option<ManagedExporter>,
}

/// One host the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Host name.
    pub name: HostName,
    /// Region.
    pub region: Region,
    /// Extra exporters besides node_exporter.
    pub exporters: Vec<ExporterSpec>,
    /// Whether a provider makes the host or the user already runs it.
    pub origin: HostOrigin,
    /// This host's own WireGuard settings.
    pub wireguard: HostWireGuard,
}

impl HostSpec {
    /// A host a provider creates, with the deployment's WireGuard settings.
    pub fn created(name: HostName, region: Region, exporters: Vec<ExporterSpec>) -> Self {
        Self {
            name,
            region,
            exporters,
            origin: HostOrigin::Created,
            wireguard: HostWireGuard::default(),
        }
    }

    /// The existing host's login, when the user already runs the host.
    pub fn existing(&self) -> Option<&ExistingHost> {
        match &self.origin {
            HostOrigin::Existing(e) => Some(e),
            HostOrigin::Created => None,
        }
    }
}

/// Where a host comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOrigin {
    /// The deployment's provider creates it and may destroy it.
    Created,
    /// The user runs it already (the config names its `address`): no
    /// provider creates or destroys it, and PromGuard changes only what it
    /// manages there.
    Existing(ExistingHost),
}

/// How to reach a host the user already runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingHost {
    /// Its address: an IP address or a DNS name.
    pub address: HostAddress,
    /// Who PromGuard logs in as: `root`, or a user with passwordless sudo.
    pub ssh_user: SshUser,
    /// Its SSH port; `None`: `ssh.port`.
    pub ssh_port: Option<Port>,
    /// Its SSH host key, when the user names it; else it comes from
    /// `known_hosts` or is trusted on the user's say-so.
    pub host_key: Option<SshPublicKey>,
}

/// An existing host's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAddress {
    /// An IPv4 or IPv6 address.
    Ip(std::net::IpAddr),
    /// A DNS name, resolved by the caller when it connects.
    Name(String),
}

impl fmt::Display for HostAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAddress::Ip(ip) => write!(f, "{ip}"),
            HostAddress::Name(name) => f.write_str(name),
        }
    }
}

/// A host's own WireGuard settings, overriding `[wireguard]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostWireGuard {
    /// Interface name; `None`: `wireguard.interface`.
    pub interface: Option<InterfaceName>,
    /// UDP port; `None`: `wireguard.port`.
    pub port: Option<Port>,
    /// Whether the monitor can reach the host's WireGuard port. A host
    /// behind NAT (`false`) gets no endpoint on the monitor's side and
    /// keeps the tunnel open itself.
    pub inbound: bool,
}

impl Default for HostWireGuard {
    fn default() -> Self {
        Self {
            interface: None,
            port: None,
            inbound: true,
        }
    }
}

/// Which Prometheus the monitor scrapes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorPrometheus {
    /// PromGuard installs and configures Prometheus (and Alertmanager).
    Managed,
    /// The monitor already runs a Prometheus of the user's: PromGuard writes
    /// only its file_sd targets files, and verifies through that
    /// Prometheus' API at `api`.
    Existing {
        /// Where that Prometheus' HTTP API listens, as seen on the monitor.
        api: std::net::SocketAddr,
    },
}

/// SSH settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    /// Port sshd listens on.
    pub port: Port,
    /// Private key to log in with; `None` means the provider's default (a
    /// per-deployment key for the local provider, `~/.ssh/id_ed25519` for
    /// clouds).
    pub private_key: Option<PathBuf>,
}

/// DigitalOcean settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigitalOceanConfig {
    /// Droplet size slug.
    pub size: String,
    /// Image slug.
    pub image: String,
    /// SSH public key to register; `None` means `~/.ssh/id_ed25519.pub`,
    /// then `~/.ssh/id_rsa.pub`.
    pub ssh_public_key: Option<PathBuf>,
    /// Whether to create a Cloud Firewall for the deployment.
    pub firewall: bool,
}

/// What kind of host the local provider makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LocalHostKind {
    /// Network + mount + PID namespaces sharing this machine's programs,
    /// with no init: fast, for the demo and benchmarks.
    #[default]
    Namespace,
    /// Debian 12 systems booted by their own systemd (`systemd-nspawn
    /// --boot`), installing packages with apt: hosts like the ones users
    /// have.
    Systemd,
}

impl LocalHostKind {
    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalHostKind::Namespace => "namespace",
            LocalHostKind::Systemd => "systemd",
        }
    }
}

impl fmt::Display for LocalHostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LocalHostKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "namespace" => Ok(Self::Namespace),
            "systemd" => Ok(Self::Systemd),
            other => Err(format!(
                "unknown kind of local host {other:?}; use \"namespace\" or \"systemd\""
            )),
        }
    }
}

/// Settings of the local provider (`[local]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalConfig {
    /// What kind of host it makes.
    pub hosts: LocalHostKind,
    /// Debian packages the systemd hosts' apt mirror serves besides what
    /// PromGuard installs (`mirror_packages`), so that software the
    /// operator wants on a host (a database, a web server) installs there
    /// as on a host with a network.
    pub mirror_packages: Vec<crate::exporters::DebianPackage>,
}

/// Alerting settings (`[alerts]`): the thresholds of the alert rules
/// PromGuard installs on the monitor, and where Alertmanager sends alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// A scrape target down this long fires `PromGuardTargetDown`; twice
    /// the scrape interval unless set.
    pub target_down_after: Duration,
    /// A peer whose latest handshake is older than this fires
    /// `WireGuardHandshakeStale`.
    pub handshake_stale_after: Duration,
    /// A peer that has not completed any handshake for this long fires
    /// `WireGuardNeverHandshook`.
    pub never_handshook_after: Duration,
    /// A WireGuard metrics collector that last ran longer ago than this
    /// (or whose metrics are missing this long) fires `WireGuardMetricsStale`.
    pub collector_stale_after: Duration,
    /// How long Alertmanager waits to gather a new group's first alerts
    /// before notifying (10 s unless set).
    pub group_wait: Duration,
    /// How long Alertmanager waits before notifying a group again about
    /// what changed in it, resolved alerts included (1 minute unless set).
    pub group_interval: Duration,
    /// Webhook receivers, in order; may be empty.
    pub webhooks: Vec<WebhookUrl>,
    /// The email receiver, if any.
    pub email: Option<EmailConfig>,
}

/// The email receiver (`[alerts.email]`). It holds where the SMTP
/// password is, never the password: the CLI reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailConfig {
    /// Recipients, at least one.
    pub to: Vec<EmailAddress>,
    /// The sender.
    pub from: EmailAddress,
    /// The SMTP server (`host:port`).
    pub smarthost: SmartHost,
    /// The SMTP user name; set exactly when a password source is.
    pub username: Option<String>,
    /// A file holding the SMTP password (at most one of this and
    /// `password_env`).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the SMTP password (at most one of
    /// this and `password_file`).
    pub password_env: Option<String>,
}

/// An `http` or `https` URL for a webhook receiver. Its `Debug` shows only
/// the scheme and host, since webhook paths often carry a token; `Display`
/// shows the whole URL.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: String,
    /// Length of `scheme://authority`.
    origin_len: usize,
}

impl WebhookUrl {
    /// Checks `text`: `http://` or `https://`, a host name, IPv4 or
    /// bracketed IPv6 address, an optional port, and an optional path and
    /// query of URL characters (no user info, no fragment, no spaces).
    pub fn new(text: &str) -> Result<Self, String> {
        const EXAMPLE: &str = "use a URL such as \"https://alerts.example.com/hook\"";
        if text.len() > 2048 {
            return Err(format!(
                "the URL is {} bytes long; at most 2048 are allowed",
                text.len()
            ));
        }
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .ok_or_else(|| {
                format!(
                    "{:?} does not start with http:// or https://; {EXAMPLE}",
                    cut_short(text)
                )
            })?;
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_len);
        if authority.contains('@') {
            return Err(
                "the URL carries a user name or password before '@', which PromGuard does not support in webhook URLs".to_owned(),
            );
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| {
            format!(
                "{:?} is not a host with an optional port; {EXAMPLE}",
                cut_short(authority)
            )
        })?;
        if let Some(port) = port {
            parse_port(port)
                .ok_or_else(|| format!("port {port:?} is not a number from 1 to 65535"))?;
        }
        check_host(host).map_err(|reason| format!("host {:?} {reason}", cut_short(host)))?;
        check_url_tail(tail)?;
        Ok(Self {
            url: text.to_owned(),
            origin_len: text.len() - tail.len(),
        })
    }

    /// The whole URL.
    pub fn as_str(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = &self.url[..self.origin_len];
        if self.origin_len == self.url.len() {
            write!(f, "WebhookUrl({origin:?})")
        } else {
            write!(f, "WebhookUrl(\"{origin}/<redacted>\")")
        }
    }
}

/// A plain email address (`local@domain`, no display name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Checks `text`: one `@`, a local part of the characters RFC 5322
    /// allows unquoted, a domain of dot-separated labels.
    pub fn new(text: &str) -> Result<Self, String> {
        let refuse = |why: &str| {
            format!(
                "{:?} is not an email address such as alerts@example.com: {why}",
                cut_short(text)
            )
        };
        if text.len() > 254 {
            return Err(refuse("it is longer than 254 characters"));
        }
        let (local, domain) = text
            .split_once('@')
            .ok_or_else(|| refuse("it has no '@'"))?;
        let local_ok = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c);
        if local.is_empty()
            || local.len() > 64
            || !local.chars().all(local_ok)
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
        {
            return Err(refuse("the part before '@' may hold letters, digits and !#$%&'*+/=?^_`{|}~.- (dots not first, last or doubled)"));
        }
        if !domain.contains('.') {
            return Err(refuse("the domain after '@' needs a dot"));
        }
        check_dns_name(domain).map_err(|why| refuse(&format!("the domain {why}")))?;
        Ok(Self(text.to_owned()))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An SMTP server: a host name or address and a port. `Display` writes
/// `host:port` (IPv6 in brackets), the form Alertmanager wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartHost {
    host: String,
    port: Port,
}

impl SmartHost {
    /// Parses `host:port`; an IPv6 address goes in brackets.
    pub fn new(text: &str) -> Result<Self, String> {
        let refuse = |why: String| {
            format!(
                "{:?} is not a host and port such as \"smtp.example.com:587\": {why}",
                cut_short(text)
            )
        };
        let (host, port) =
            split_host_port(text).ok_or_else(|| refuse("malformed brackets".to_owned()))?;
        let port = port.ok_or_else(|| refuse("the port is missing".to_owned()))?;
        let port = parse_port(port)
            .ok_or_else(|| refuse(format!("port {port:?} is not a number from 1 to 65535")))?;
        check_host(host).map_err(|why| refuse(format!("the host {why}")))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host name or address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> Port {
        self.port
    }
}

impl fmt::Display for SmartHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Splits `host[:port]` or `[v6][:port]`; `None` for unbalanced brackets
/// or text after the closing bracket that is not a port. The IPv6 host is
/// returned without brackets.
fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match text.split_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((text, None)),
    }
}

fn parse_port(text: &str) -> Option<Port> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 5 {
        return None;
    }
    Port::new(text.parse().ok()?).ok()
}

/// A host in a URL or `host:port`: an IPv6 address (already unbracketed),
/// an IPv4 address, or a DNS name.
fn check_host(host: &str) -> Result<(), String> {
    if host.contains(':') {
        return host
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "is not an IPv6 address".to_owned());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') && !host.is_empty() {
        return host
            .parse::<std::net::Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| "is not an IPv4 address".to_owned());
    }
    check_dns_name(host)
}

/// A DNS name: dot-separated labels of letters, digits and '-' (not first
/// or last), 1 to 63 characters each, 253 in all; one trailing dot allowed.
fn check_dns_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.len() > 253 {
        return Err("is longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(
                "needs dot-separated labels of letters, digits and '-' (not first or last)"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

/// The path and query of a webhook URL: empty, or starting with `/` or
/// `?`, of unreserved, reserved (but `#`) and percent-encoded characters.
fn check_url_tail(tail: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~:/?[]@!$&'()*+,;=%".contains(c);
    if let Some((at, c)) = tail.char_indices().find(|&(_, c)| !allowed(c)) {
        let what = match c {
            '#' => "a fragment ('#...'), which a webhook never receives; remove it".to_owned(),
            c if c.is_whitespace() || c.is_control() => {
                "a space or control character; percent-encode it".to_owned()
            }
            c => format!("the character {c:?}; percent-encode it"),
        };
        return Err(format!(
            "the path or query has {what} (at byte {} after the host)",
            at
        ));
    }
    let bytes = tail.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(format!(
                "the path or query has a '%' not followed by two hex digits (at byte {i} after the host)"
            ));
        }
    }
    Ok(())
}

/// The first 60 characters of a value, for a message.
fn cut_short(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// A validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Deployment name.
    pub deployment: DeploymentName,
    /// Which cloud creates the hosts.
    pub provider: ProviderKind,
    /// WireGuard subnet.
    pub subnet: IpNetwork,
    /// Whether each monitor-node pair gets a preshared key.
    pub preshared_keys: bool,
    /// WireGuard interface name.
    pub interface: InterfaceName,
    /// WireGuard UDP port.
    pub wireguard_port: Port,
    /// Keys older than this many days make `plan` suggest `promguard rotate`.
    pub rotate_after_days: u32,
    /// Prometheus scrape interval.
    pub scrape_interval: Duration,
    /// node_exporter port on every host.
    pub node_exporter_port: Port,
    /// The monitor; with several, the first replica of the first shard,
    /// whose exporters every other monitor shares.
    pub monitor: HostSpec,
    /// The other monitors, shard by shard, replica by replica.
    pub more_monitors: Vec<HostSpec>,
    /// How many monitors there are and how they split the nodes.
    pub topology: crate::topology::MonitorTopology,
    /// The storage host, if the deployment has one.
    pub storage: Option<crate::topology::StorageHost>,
    /// Where the monitors send their samples, if anywhere.
    pub remote_write: Option<crate::topology::RemoteWriteConfig>,
    /// The nodes, in order.
    pub nodes: Vec<HostSpec>,
    /// SSH settings.
    pub ssh: SshConfig,
    /// DigitalOcean settings.
    pub digitalocean: DigitalOceanConfig,
    /// Local provider settings.
    pub local: LocalConfig,
    /// Alert thresholds and receivers.
    pub alerts: AlertsConfig,
    /// Which Prometheus the monitor runs.
    pub prometheus: MonitorPrometheus,
}

impl Default for Config {
    /// The original deployment: a monitor in Toronto and nodes in London,
    /// San Francisco and Singapore, on the local provider.
    fn default() -> Self {
        Config::from_toml("", Path::new("<built-in default>")).expect("the default config is valid")
    }
}

// ---- the serde mirror ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    deployment: RawDeployment,
    #[serde(default)]
    wireguard: RawWireGuard,
    #[serde(default)]
    prometheus: RawPrometheus,
    #[serde(default)]
    monitor: RawMonitor,
    #[serde(default)]
    nodes: RawNodes,
    #[serde(default)]
    ssh: RawSsh,
    #[serde(default)]
    digitalocean: RawDigitalOcean,
    #[serde(default)]
    local: RawLocal,
    #[serde(default)]
    alerts: RawAlerts,
    storage: Option<RawStorage>,
    remote_write: Option<RawRemoteWrite>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    name: Option<String>,
    region: Option<String>,
    port: Option<i64>,
    retention_days: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteWrite {
    url: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    bearer_token_file: Option<PathBuf>,
    bearer_token_env: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    target_down_after: Option<String>,
    handshake_stale_after: Option<String>,
    never_handshook_after: Option<String>,
    collector_stale_after: Option<String>,
    group_wait: Option<String>,
    group_interval: Option<String>,
    webhooks: Option<Vec<String>>,
    email: Option<RawEmail>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    to: OneOrMore,
    from: String,
    smarthost: String,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug)]
struct OneOrMore(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMore {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrMore;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address or a list of addresses")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMore, E> {
                Ok(OneOrMore(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMore, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element::<String>()? {
                    all.push(one);
                }
                Ok(OneOrMore(all))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    hosts: Option<String>,
    #[serde(default)]
    mirror_packages: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    name: Option<String>,
    provider: Option<String>,
    subnet: Option<String>,
    preshared_keys: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWireGuard {
    interface: Option<String>,
    port: Option<i64>,
    rotate_after_days: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    scrape_interval: Option<String>,
    node_exporter_port: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    name: Option<String>,
    name_prefix: Option<String>,
    replicas: Option<i64>,
    shards: Option<Vec<String>>,
    region: Option<String>,
    #[serde(default)]
    exporters: Vec<RawExporter>,
    address: Option<String>,
    ssh_user: Option<String>,
    ssh_port: Option<i64>,
    host_key: Option<String>,
    wireguard: Option<RawHostWireGuard>,
    prometheus: Option<String>,
    prometheus_api: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostWireGuard {
    interface: Option<String>,
    port: Option<i64>,
    inbound: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodes {
    count: Option<i64>,
    regions: Option<Vec<String>>,
    name_prefix: Option<String>,
    #[serde(default)]
    exporters: Vec<RawExporter>,
    host: Option<Vec<RawHost>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    region: Option<String>,
    #[serde(default)]
    exporters: Vec<RawExporter>,
    address: Option<String>,
    ssh_user: Option<String>,
    ssh_port: Option<i64>,
    host_key: Option<String>,
    wireguard: Option<RawHostWireGuard>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExporter {
    name: String,
    port: Option<i64>,
    package: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, RawSetting>>,
    probes: Option<Vec<RawProbe>>,
}

/// A value of an exporter's `env`: a string, `{ file = "path" }` or
/// `{ env = "VARIABLE" }`.
#[derive(Debug)]
enum RawSetting {
    Value(String),
    File(PathBuf),
    Env(String),
}

impl<'de> Deserialize<'de> for RawSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, { file = \"path\" } or { env = \"VARIABLE\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSetting, E> {
                Ok(RawSetting::Value(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawSetting, A::Error> {
                use serde::de::Error;
                const KEYS: &[&str] = &["file", "env"];
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(
                        "the table is empty; give { file = \"path\" } or { env = \"VARIABLE\" }",
                    ));
                };
                let setting = match key.as_str() {
                    "file" => RawSetting::File(map.next_value::<PathBuf>()?),
                    "env" => RawSetting::Env(map.next_value::<String>()?),
                    other => return Err(A::Error::unknown_field(other, KEYS)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom("give either `file` or `env`, not both"));
                }
                Ok(setting)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    host: String,
    port: i64,
    path: Option<String>,
    module: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    port: Option<i64>,
    private_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDigitalOcean {
    size: Option<String>,
    image: Option<String>,
    ssh_public_key: Option<PathBuf>,
    firewall: Option<bool>,
}

const DEFAULT_REGIONS: [&str; 3] = ["lon1", "sfo2", "sgp1"];

/// The `region` label of an existing host whose entry names none.
pub const EXISTING_REGION: &str = "existing";

/// A host entry's keys that make it an existing host, and its WireGuard
/// settings.
struct RawOrigin<'a> {
    address: Option<&'a str>,
    ssh_user: Option<&'a str>,
    ssh_port: Option<i64>,
    host_key: Option<&'a str>,
    wireguard: Option<&'a RawHostWireGuard>,
}

struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn name<T>(&self, field: &str, r: Result<T, NameError>) -> Result<T, ConfigError> {
        r.map_err(|e| self.invalid(field, e.to_string()))
    }

    fn port(&self, field: &str, value: i64) -> Result<Port, ConfigError> {
        u16::try_from(value)
            .ok()
            .and_then(|p| Port::new(p).ok())
            .ok_or_else(|| self.invalid(field, format!("port {value} must be between 1 and 65535")))
    }

    /// The exporters of the list at `{field}.exporters`, on `host`.
    fn exporters(
        &self,
        field: &str,
        raw: &[RawExporter],
        host: ExporterHost,
    ) -> Result<Vec<ExporterSpec>, ConfigError> {
        raw.iter()
            .enumerate()
            .map(|(i, e)| {
                let field = format!("{field}.exporters[{i}]");
                let name = self.name(&format!("{field}.name"), ExporterName::new(&e.name))?;
                if name.as_str() == "node" {
                    return Err(self.invalid(
                        format!("{field}.name"),
                        "\"node\" is reserved for node_exporter, which every host runs already",
                    ));
                }
                if name.as_str() == "prometheus" {
                    return Err(self.invalid(
                        format!("{field}.name"),
                        "\"prometheus\" is reserved for the job of Prometheus' own metrics, which the monitor scrapes already",
                    ));
                }
                let managed = match &e.package {
                    Some(package) => Some(self.managed(&field, e, package, host)?),
                    None => {
                        for (key, set) in [
                            ("args", e.args.is_some()),
                            ("env", e.env.is_some()),
                            ("probes", e.probes.is_some()),
                        ] {
                            if set {
                                return Err(self.invalid(
                                    format!("{field}.{key}"),
                                    "is only for an exporter PromGuard installs: name its Debian package in `package`, or remove the key (an exporter you run yourself is only scraped)",
                                ));
                            }
                        }
                        None
                    }
                };
                let port = match (e.port, &managed) {
                    (Some(port), _) => self.port(&format!("{field}.port"), port)?,
                    (None, Some(m)) => match exporters::known(&m.package) {
                        Some(k) => Port::new(k.port).expect("known ports are nonzero"),
                        None => {
                            return Err(self.invalid(
                                format!("{field}.port"),
                                format!(
                                    "is missing: PromGuard does not know the usual port of {}; give the port it listens on",
                                    m.package
                                ),
                            ))
                        }
                    },
                    (None, None) => {
                        return Err(self.invalid(
                            format!("{field}.port"),
                            "is missing: give the port the exporter listens on (or its Debian package in `package`, for PromGuard to install it)",
                        ))
                    }
                };
                Ok(ExporterSpec {
                    name,
                    port,
                    managed,
                })
            })
            .collect()
    }

    /// What the exporter at `field` with `package` gets installed with.
    fn managed(
        &self,
        field: &str,
        raw: &RawExporter,
        package: &str,
        host: ExporterHost,
    ) -> Result<ManagedExporter, ConfigError> {
        let package = self.name(&format!("{field}.package"), DebianPackage::new(package))?;
        let args = raw
            .args
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, arg)| {
                check_arg(arg)
                    .map(|()| arg.clone())
                    .map_err(|m| self.invalid(format!("{field}.args[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A BTreeMap: the settings come sorted by name.
        let settings = raw
            .env
            .iter()
            .flatten()
            .map(|(key, value)| {
                self.setting(&format!("{field}.env.{}", cut_short(key)), key, value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let known = exporters::known(&package);
        if let Some(k) = known {
            for (variable, message) in k.required {
                if !settings.iter().any(|s| s.name.as_str() == *variable) {
                    return Err(self.invalid(format!("{field}.env.{variable}"), *message));
                }
            }
            if let Some((prefixes, message)) = k.needs_one_arg_of {
                if !args
                    .iter()
                    .any(|a| prefixes.iter().any(|p| a.starts_with(p)))
                {
                    return Err(self.invalid(format!("{field}.args"), message));
                }
            }
        }
        let probes = match &raw.probes {
            None => Vec::new(),
            Some(probes) => {
                self.probes_allowed(&format!("{field}.probes"), &package, known, host)?;
                self.probes(&format!("{field}.probes"), probes)?
            }
        };
        Ok(ManagedExporter {
            package,
            args,
            settings,
            probes,
        })
    }

    /// Refuses `probes` at `field` unless the exporter is a prober on a
    /// monitor whose Prometheus is PromGuard's.
    fn probes_allowed(
        &self,
        field: &str,
        package: &DebianPackage,
        known: Option<&KnownExporter>,
        host: ExporterHost,
    ) -> Result<(), ConfigError> {
        if !known.is_some_and(|k| k.probes) {
            let probers: Vec<&str> = KNOWN_EXPORTERS
                .iter()
                .filter(|k| k.probes)
                .map(|k| k.package)
                .collect();
            return Err(self.invalid(
                field,
                format!("{package} does not probe; only {} does", probers.join(", ")),
            ));
        }
        match host {
            ExporterHost::Node => Err(self.invalid(
                field,
                "probes are for the exporter on the monitor, which reaches every host over the tunnel: move this exporter to [monitor] exporters",
            )),
            ExporterHost::Monitor(MonitorPrometheus::Existing { .. }) => Err(self.invalid(
                field,
                "probes need PromGuard's own Prometheus on the monitor (their scrape job goes into the prometheus.yml it writes); with monitor.prometheus = \"existing\", add a probe job to your own Prometheus' config instead",
            )),
            ExporterHost::Monitor(MonitorPrometheus::Managed) => Ok(()),
        }
    }

    /// The probes at `field`.
    fn probes(&self, field: &str, raw: &[RawProbe]) -> Result<Vec<ProbeSpec>, ConfigError> {
        let mut probes: Vec<ProbeSpec> = Vec::new();
        for (k, p) in raw.iter().enumerate() {
            let field = format!("{field}[{k}]");
            let path = p.path.as_deref().unwrap_or("/");
            check_probe_path(path).map_err(|m| self.invalid(format!("{field}.path"), m))?;
            let module = p.module.as_deref().unwrap_or(DEFAULT_PROBE_MODULE);
            check_probe_module(module).map_err(|m| self.invalid(format!("{field}.module"), m))?;
            let probe = ProbeSpec {
                host: self.name(&format!("{field}.host"), HostName::new(&p.host))?,
                port: self.port(&format!("{field}.port"), p.port)?,
                path: path.to_owned(),
                module: module.to_owned(),
            };
            if let Some(j) = probes.iter().position(|q| *q == probe) {
                return Err(self.invalid(
                    field,
                    format!(
                        "probes the same endpoint with the same module as probes[{j}]; remove one"
                    ),
                ));
            }
            probes.push(probe);
        }
        Ok(probes)
    }

    /// The setting `key` at `field`.
    fn setting(
        &self,
        field: &str,
        key: &str,
        raw: &RawSetting,
    ) -> Result<ExporterSetting, ConfigError> {
        let name = self.name(field, EnvName::new(key))?;
        let source = match raw {
            RawSetting::Value(value) => {
                check_value(value).map_err(|m| self.invalid(field, m))?;
                SettingSource::Value(value.clone())
            }
            RawSetting::File(path) => {
                if path.as_os_str().is_empty() {
                    return Err(self.invalid(format!("{field}.file"), "the path is empty"));
                }
                SettingSource::File(path.clone())
            }
            RawSetting::Env(variable) => {
                if !is_env_var_name(variable) {
                    return Err(self.invalid(
                        format!("{field}.env"),
                        format!(
                            "{:?} is not an environment variable name (letters, digits and '_', not starting with a digit)",
                            cut_short(variable)
                        ),
                    ));
                }
                SettingSource::Env(variable.clone())
            }
        };
        Ok(ExporterSetting {
            name,
            source,
            value: None,
        })
    }

    /// Refuses a package that two of `exporters` (one host's) name:
    /// PromGuard runs one unit per package. `field_of` gives the field of
    /// the exporter at an index.
    fn unique_packages(
        &self,
        exporters: &[ExporterSpec],
        field_of: impl Fn(usize) -> String,
    ) -> Result<(), ConfigError> {
        let mut seen: BTreeMap<&DebianPackage, usize> = BTreeMap::new();
        for (j, e) in exporters.iter().enumerate() {
            let Some(m) = &e.managed else { continue };
            if let Some(first) = seen.insert(&m.package, j) {
                return Err(self.invalid(
                    format!("{}.package", field_of(j)),
                    format!(
                        "{} is installed for exporter {} already ({}); a host runs one unit per package",
                        m.package,
                        exporters[first].name,
                        field_of(first)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whose exporter list is checked: only the monitor's exporters probe.
#[derive(Debug, Clone, Copy)]
enum ExporterHost {
    /// The monitor, with the Prometheus it runs.
    Monitor(MonitorPrometheus),
    /// A node, or every node (`[nodes] exporters`).
    Node,
}

/// The blackbox module of a probe that names none (Debian's
/// `blackbox.yml` has it).
pub const DEFAULT_PROBE_MODULE: &str = "http_2xx";

/// Why `path` cannot be a probe's path: it goes into the probed URL
/// unescaped, so it is printable ASCII without spaces, quotes or `#`.
fn check_probe_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{:?} does not start with '/'; give the path of the URL, such as \"/\" or \"/health\"",
            cut_short(path)
        ));
    }
    if path.len() > 1024 {
        return Err("the path is longer than 1024 characters".to_owned());
    }
    if let Some(c) = path
        .chars()
        .find(|c| !c.is_ascii_graphic() || "\"'#".contains(*c))
    {
        return Err(format!(
            "{:?} has {c:?}: a path is printable ASCII without spaces, quotes or '#' (percent-encode them)",
            cut_short(path)
        ));
    }
    Ok(())
}

/// Why `module` cannot be a blackbox module name.
fn check_probe_module(module: &str) -> Result<(), String> {
    let ok = !module.is_empty()
        && module.len() <= 64
        && module
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a module name of blackbox.yml (1 to 64 lowercase letters, digits, '_' and '-', such as \"http_2xx\")",
            cut_short(module)
        ))
    }
}

/// An environment variable name as a shell takes it: letters, digits and
/// `_`, not starting with a digit, at most 256 characters.
fn is_env_var_name(name: &str) -> bool {
    name.len() <= 256
        && name.starts_with(|ch: char| ch.is_ascii_alphabetic() || ch == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Checker<'_> {
    /// Where the host at `field` comes from, and its WireGuard settings.
    fn origin(
        &self,
        field: &str,
        raw: RawOrigin<'_>,
    ) -> Result<(HostOrigin, HostWireGuard), ConfigError> {
        let wireguard = match raw.wireguard {
            None => HostWireGuard::default(),
            Some(w) => HostWireGuard {
                interface: w
                    .interface
                    .as_deref()
                    .map(|i| {
                        self.name(
                            &format!("{field}.wireguard.interface"),
                            InterfaceName::new(i),
                        )
                    })
                    .transpose()?,
                port: w
                    .port
                    .map(|p| self.port(&format!("{field}.wireguard.port"), p))
                    .transpose()?,
                inbound: w.inbound.unwrap_or(true),
            },
        };
        let Some(address) = raw.address else {
            for (key, set) in [
                ("ssh_user", raw.ssh_user.is_some()),
                ("ssh_port", raw.ssh_port.is_some()),
                ("host_key", raw.host_key.is_some()),
            ] {
                if set {
                    return Err(self.invalid(
                        format!("{field}.{key}"),
                        "is only for a host you already run; give it an address too, or remove the key (PromGuard logs in to hosts it creates as root on ssh.port)",
                    ));
                }
            }
            return Ok((HostOrigin::Created, wireguard));
        };
        let address = match address.parse::<std::net::IpAddr>() {
            Ok(ip) => HostAddress::Ip(ip),
            Err(_) => {
                check_host(address).map_err(|m| {
                    self.invalid(
                        format!("{field}.address"),
                        format!(
                            "{:?} {m}; give an IPv4 address, an IPv6 address or a DNS name",
                            cut_short(address)
                        ),
                    )
                })?;
                HostAddress::Name(address.to_owned())
            }
        };
        let ssh_user = self.name(
            &format!("{field}.ssh_user"),
            SshUser::new(raw.ssh_user.unwrap_or("root")),
        )?;
        let ssh_port = raw
            .ssh_port
            .map(|p| self.port(&format!("{field}.ssh_port"), p))
            .transpose()?;
        let host_key = raw
            .host_key
            .map(|k| {
                SshPublicKey::parse(k).map_err(|e| {
                    self.invalid(
                        format!("{field}.host_key"),
                        format!("{e}; copy the host's /etc/ssh/ssh_host_ed25519_key.pub (\"ssh-ed25519 AAAA...\")"),
                    )
                })
            })
            .transpose()?;
        Ok((
            HostOrigin::Existing(ExistingHost {
                address,
                ssh_user,
                ssh_port,
                host_key,
            }),
            wireguard,
        ))
    }
}

/// One line of a parser's message cut to 120 characters: it quotes the
/// offending line and value, which may be megabytes long.
fn cut(line: &str) -> String {
    match line.char_indices().nth(120) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_owned(),
    }
}

/// Parses a Prometheus-style duration: a whole number followed by `ms`, `s`,
/// `m` or `h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

/// Formats a duration the way Prometheus writes it (`30s`, `1500ms`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// How many host addresses a subnet offers: IPv4 excludes the network and
/// broadcast addresses, IPv6 the subnet-router anycast (network) address.
pub fn usable_addresses(subnet: IpNetwork) -> u128 {
    match subnet {
        IpNetwork::V4(n) => {
            let size = 1u128 << (32 - u32::from(n.prefix()));
            size.saturating_sub(2)
        }
        IpNetwork::V6(n) => {
            let bits = 128 - u32::from(n.prefix());
            if bits >= 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            }
        }
    }
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e
                .to_string()
                .trim_end()
                .lines()
                .map(cut)
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let c = Checker { path };

        let deployment = c.name(
            "deployment.name",
            DeploymentName::new(raw.deployment.name.as_deref().unwrap_or("promguard")),
        )?;
        let provider = raw
            .deployment
            .provider
            .as_deref()
            .unwrap_or("local")
            .parse()
            .map_err(|m: String| c.invalid("deployment.provider", m))?;
        let subnet_text = raw.deployment.subnet.as_deref().unwrap_or("10.0.0.0/24");
        let subnet: IpNetwork = subnet_text.parse().map_err(|_| {
            c.invalid(
                "deployment.subnet",
                format!("{subnet_text:?} is not a CIDR subnet such as 10.0.0.0/24 or fd00:10::/64"),
            )
        })?;
        if subnet.network() != subnet.ip() {
            return Err(c.invalid(
                "deployment.subnet",
                format!(
                    "{subnet_text} has host bits set; did you mean {}/{}?",
                    subnet.network(),
                    subnet.prefix()
                ),
            ));
        }

        let interface = c.name(
            "wireguard.interface",
            InterfaceName::new(raw.wireguard.interface.as_deref().unwrap_or("wg0")),
        )?;
        let wireguard_port = c.port("wireguard.port", raw.wireguard.port.unwrap_or(51820))?;
        let rotate_after_days = match raw.wireguard.rotate_after_days.unwrap_or(90) {
            days @ 1..=36_500 => days as u32,
            days => {
                return Err(c.invalid(
                    "wireguard.rotate_after_days",
                    format!("{days} is not a number of days from 1 to 36500"),
                ))
            }
        };

        let interval_text = raw.prometheus.scrape_interval.as_deref().unwrap_or("30s");
        let scrape_interval = parse_duration(interval_text).ok_or_else(|| {
            c.invalid(
                "prometheus.scrape_interval",
                format!("{interval_text:?} is not a duration such as \"30s\", \"1m\" or \"500ms\""),
            )
        })?;
        let node_exporter_port = c.port(
            "prometheus.node_exporter_port",
            raw.prometheus.node_exporter_port.unwrap_or(9100),
        )?;

        let m = &raw.monitor;
        let (origin, host_wireguard) = c.origin(
            "monitor",
            RawOrigin {
                address: m.address.as_deref(),
                ssh_user: m.ssh_user.as_deref(),
                ssh_port: m.ssh_port,
                host_key: m.host_key.as_deref(),
                wireguard: m.wireguard.as_ref(),
            },
        )?;
        if !host_wireguard.inbound {
            return Err(c.invalid(
                "monitor.wireguard.inbound",
                "the monitor must be reachable on its WireGuard port: every node sends to it; put the monitor where nodes can reach it, and set inbound = false on nodes behind NAT instead",
            ));
        }
        let default_region = match origin {
            HostOrigin::Existing(_) => EXISTING_REGION,
            HostOrigin::Created => "tor1",
        };
        let prometheus = match (m.prometheus.as_deref(), &origin) {
            (None | Some("managed"), _) => {
                if m.prometheus_api.is_some() {
                    return Err(c.invalid(
                        "monitor.prometheus_api",
                        "only for a Prometheus of your own; set monitor.prometheus = \"existing\" too",
                    ));
                }
                MonitorPrometheus::Managed
            }
            (Some("existing"), HostOrigin::Existing(_)) => {
                let text = m.prometheus_api.as_deref().unwrap_or("127.0.0.1:9090");
                let api = text.parse().map_err(|_| {
                    c.invalid(
                        "monitor.prometheus_api",
                        format!(
                            "{:?} is not an address and port such as 127.0.0.1:9090",
                            cut_short(text)
                        ),
                    )
                })?;
                MonitorPrometheus::Existing { api }
            }
            (Some("existing"), HostOrigin::Created) => {
                return Err(c.invalid(
                    "monitor.prometheus",
                    "\"existing\" is for a monitor you already run (set monitor.address); a monitor PromGuard creates gets its own Prometheus",
                ))
            }
            (Some(other), _) => {
                return Err(c.invalid(
                    "monitor.prometheus",
                    format!(
                        "{:?} is neither \"managed\" (PromGuard installs Prometheus) nor \"existing\" (your own Prometheus on the monitor)",
                        cut_short(other)
                    ),
                ))
            }
        };
        let monitor_exporters =
            c.exporters("monitor", &m.exporters, ExporterHost::Monitor(prometheus))?;
        c.unique_packages(&monitor_exporters, |j| format!("monitor.exporters[{j}]"))?;
        let topology = Self::topology(&c, m)?;
        let monitor_names = Self::monitor_names(&c, m, &topology, &origin)?;
        let monitor = HostSpec {
            name: monitor_names[0].clone(),
            region: c.name(
                "monitor.region",
                Region::new(m.region.as_deref().unwrap_or(default_region)),
            )?,
            exporters: monitor_exporters,
            origin,
            wireguard: host_wireguard,
        };

        let more_monitors = monitor_names[1..]
            .iter()
            .map(|name| HostSpec {
                name: name.clone(),
                ..monitor.clone()
            })
            .collect();

        let nodes = Self::nodes(&c, &raw.nodes)?;
        let storage = match &raw.storage {
            Some(raw) => Some(Self::storage(&c, raw, &monitor.region, scrape_interval)?),
            None => None,
        };
        let remote_write = Self::remote_write(&c, raw.remote_write.as_ref(), storage.is_some())?;
        if (topology.is_several() || remote_write.is_some())
            && prometheus != MonitorPrometheus::Managed
        {
            return Err(c.invalid(
                "monitor.prometheus",
                "several monitors and remote_write need PromGuard's own Prometheus (it writes their prometheus.yml); with your own, configure remote_write there",
            ));
        }

        let ssh = SshConfig {
            port: c.port("ssh.port", raw.ssh.port.unwrap_or(22))?,
            private_key: raw.ssh.private_key,
        };
        let digitalocean = DigitalOceanConfig {
            size: raw
                .digitalocean
                .size
                .unwrap_or_else(|| "s-1vcpu-1gb".into()),
            image: raw
                .digitalocean
                .image
                .unwrap_or_else(|| "debian-12-x64".into()),
            ssh_public_key: raw.digitalocean.ssh_public_key,
            firewall: raw.digitalocean.firewall.unwrap_or(true),
        };
        for (field, value) in [
            ("digitalocean.size", &digitalocean.size),
            ("digitalocean.image", &digitalocean.image),
        ] {
            c.name(
                field,
                Region::new(value).map_err(|e| NameError { what: "slug", ..e }),
            )?;
        }

        let local = LocalConfig {
            hosts: match raw.local.hosts.as_deref() {
                None => LocalHostKind::default(),
                Some(text) => text
                    .parse()
                    .map_err(|message: String| c.invalid("local.hosts", message))?,
            },
            mirror_packages: raw
                .local
                .mirror_packages
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    c.name(
                        &format!("local.mirror_packages[{i}]"),
                        crate::exporters::DebianPackage::new(p),
                    )
                })
                .collect::<Result<_, _>>()?,
        };

        let alerts = Self::alerts(&c, raw.alerts, scrape_interval)?;

        let config = Config {
            deployment,
            provider,
            subnet,
            preshared_keys: raw.deployment.preshared_keys.unwrap_or(true),
            interface,
            wireguard_port,
            rotate_after_days,
            scrape_interval,
            node_exporter_port,
            monitor,
            more_monitors,
            topology,
            storage,
            remote_write,
            nodes,
            ssh,
            digitalocean,
            local,
            alerts,
            prometheus,
        };
        config.check_hosts(&c)?;
        Ok(config)
    }

    fn topology(
        c: &Checker<'_>,
        m: &RawMonitor,
    ) -> Result<crate::topology::MonitorTopology, ConfigError> {
        use crate::shards::{ShardId, Shards};
        use crate::topology::{MonitorTopology, MAX_REPLICAS};
        let replicas = match m.replicas.unwrap_or(1) {
            n @ 1..=9 => n as u16,
            n => {
                return Err(c.invalid(
                    "monitor.replicas",
                    format!("{n} is not a number of monitors per shard from 1 to {MAX_REPLICAS}"),
                ))
            }
        };
        let shards = match &m.shards {
            None => None,
            Some(ids) => {
                let ids = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| c.name(&format!("monitor.shards[{i}]"), ShardId::new(id)))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Shards::new(ids).map_err(|e| c.invalid("monitor.shards", e.to_string()))?)
            }
        };
        Ok(MonitorTopology { replicas, shards })
    }

    /// The monitors' names, shard by shard, replica by replica: `name`
    /// for a single monitor, else derived from `name_prefix`.
    fn monitor_names(
        c: &Checker<'_>,
        m: &RawMonitor,
        topology: &crate::topology::MonitorTopology,
        origin: &HostOrigin,
    ) -> Result<Vec<HostName>, ConfigError> {
        if !topology.is_several() {
            if m.name_prefix.is_some() {
                return Err(c.invalid(
                    "monitor.name_prefix",
                    "names several monitors; with one, set monitor.name (or set monitor.replicas or monitor.shards)",
                ));
            }
            return Ok(vec![c.name(
                "monitor.name",
                HostName::new(m.name.as_deref().unwrap_or("promguard-monitor-1")),
            )?]);
        }
        if m.name.is_some() {
            return Err(c.invalid(
                "monitor.name",
                "with monitor.replicas or monitor.shards the monitors are named <name_prefix>-<shard>-<replica> (<name_prefix>-<replica> without shards); set monitor.name_prefix instead",
            ));
        }
        if matches!(origin, HostOrigin::Existing(_)) {
            return Err(c.invalid(
                "monitor.address",
                "several monitors are hosts PromGuard creates; an existing monitor is a single one (remove monitor.replicas and monitor.shards)",
            ));
        }
        let prefix = m.name_prefix.as_deref().unwrap_or("promguard-monitor");
        let shards: Vec<Option<&crate::shards::ShardId>> = match &topology.shards {
            Some(s) => s.iter().map(Some).collect(),
            None => vec![None],
        };
        let mut names = Vec::new();
        for shard in shards {
            for replica in 1..=topology.replicas {
                names.push(c.name(
                    "monitor.name_prefix",
                    HostName::new(&crate::topology::monitor_name(prefix, shard, replica)),
                )?);
            }
        }
        Ok(names)
    }

    fn storage(
        c: &Checker<'_>,
        raw: &RawStorage,
        monitor_region: &Region,
        scrape_interval: Duration,
    ) -> Result<crate::topology::StorageHost, ConfigError> {
        use crate::exporters::STORAGE_ENGINE;
        let name = c.name(
            "storage.name",
            HostName::new(raw.name.as_deref().unwrap_or("promguard-storage-1")),
        )?;
        let region = match &raw.region {
            Some(r) => c.name("storage.region", Region::new(r))?,
            None => monitor_region.clone(),
        };
        let port = c.port(
            "storage.port",
            raw.port.unwrap_or(i64::from(STORAGE_ENGINE.port)),
        )?;
        let retention_days = match raw.retention_days.unwrap_or(30) {
            d @ 1..=36_500 => d as u32,
            d => {
                return Err(c.invalid(
                    "storage.retention_days",
                    format!("{d} is not a number of days from 1 to 36500"),
                ))
            }
        };
        let engine = ExporterSpec {
            name: ExporterName::new(crate::topology::STORAGE_JOB).expect("a valid exporter name"),
            port,
            managed: Some(ManagedExporter {
                package: DebianPackage::new(STORAGE_ENGINE.package).expect("a valid package name"),
                // Two replicas write each series twice: one sample per
                // scrape interval is kept. Queries see data from one
                // scrape interval ago instead of the default 30 s.
                args: vec![
                    format!(
                        "-dedup.minScrapeInterval={}",
                        format_duration(scrape_interval)
                    ),
                    format!("-retentionPeriod={retention_days}d"),
                    format!("-search.latencyOffset={}", format_duration(scrape_interval)),
                ],
                settings: Vec::new(),
                probes: Vec::new(),
            }),
        };
        Ok(crate::topology::StorageHost {
            host: HostSpec::created(name, region, vec![engine]),
            retention_days,
        })
    }

    fn remote_write(
        c: &Checker<'_>,
        raw: Option<&RawRemoteWrite>,
        has_storage: bool,
    ) -> Result<Option<crate::topology::RemoteWriteConfig>, ConfigError> {
        use crate::topology::{RemoteWriteAuth, RemoteWriteConfig};
        let Some(raw) = raw else {
            return Ok(has_storage.then_some(RemoteWriteConfig {
                url: None,
                auth: RemoteWriteAuth::None,
                ca_file: None,
            }));
        };
        let url = match (&raw.url, has_storage) {
            (Some(_), true) => {
                return Err(c.invalid(
                    "remote_write.url",
                    "the monitors already write to the [storage] host; remove remote_write.url, or [storage] to write to an engine of your own",
                ))
            }
            (None, false) => {
                return Err(c.invalid(
                    "remote_write.url",
                    "is missing: name the engine's write URL (e.g. \"https://vm.example.com/api/v1/write\"), or add a [storage] host",
                ))
            }
            (Some(u), false) => Some(
                WebhookUrl::new(u).map_err(|m| c.invalid("remote_write.url", m))?,
            ),
            (None, true) => None,
        };
        let secret = |file: &Option<PathBuf>, env: &Option<String>, what: &str| match (file, env) {
            (Some(_), Some(_)) => Err(c.invalid(
                format!("remote_write.{what}_file"),
                format!("give the {what} in a file or in an environment variable, not both"),
            )),
            (Some(f), None) => Ok(Some(SettingSource::File(f.clone()))),
            (None, Some(v)) => {
                c.name(&format!("remote_write.{what}_env"), EnvName::new(v))?;
                Ok(Some(SettingSource::Env(v.clone())))
            }
            (None, None) => Ok(None),
        };
        let password = secret(&raw.password_file, &raw.password_env, "password")?;
        let token = secret(
            &raw.bearer_token_file,
            &raw.bearer_token_env,
            "bearer_token",
        )?;
        let auth = match (&raw.username, password, token) {
            (_, Some(_), Some(_)) => {
                return Err(c.invalid(
                    "remote_write.bearer_token_file",
                    "choose basic authentication (username and password) or a bearer token, not both",
                ))
            }
            (Some(u), Some(p), None) => {
                if u.is_empty() || u.len() > 256 || u.chars().any(|ch| ch.is_control()) {
                    return Err(c.invalid(
                        "remote_write.username",
                        "is 1 to 256 characters without control characters",
                    ));
                }
                RemoteWriteAuth::Basic {
                    username: u.clone(),
                    password: p,
                }
            }
            (None, Some(_), None) => {
                return Err(c.invalid(
                    "remote_write.username",
                    "is missing: basic authentication needs a user name with its password",
                ))
            }
            (Some(_), None, _) => {
                return Err(c.invalid(
                    "remote_write.password_file",
                    "is missing: give the password of remote_write.username in password_file or password_env",
                ))
            }
            (None, None, Some(t)) => RemoteWriteAuth::Bearer { token: t },
            (None, None, None) => RemoteWriteAuth::None,
        };
        if has_storage && (auth != RemoteWriteAuth::None || raw.ca_file.is_some()) {
            return Err(c.invalid(
                "remote_write",
                "the [storage] host is reached over WireGuard, without credentials or TLS; remove them, or [storage] to write to an engine of your own",
            ));
        }
        Ok(Some(RemoteWriteConfig {
            url,
            auth,
            ca_file: raw.ca_file.clone(),
        }))
    }

    fn alerts(
        c: &Checker<'_>,
        raw: RawAlerts,
        scrape_interval: Duration,
    ) -> Result<AlertsConfig, ConfigError> {
        let duration = |key: &str, text: Option<&str>, default: Duration| {
            let Some(text) = text else {
                return Ok(default);
            };
            let field = format!("alerts.{key}");
            let d = parse_duration(text).ok_or_else(|| {
                c.invalid(
                    &field,
                    format!(
                        "{:?} is not a duration such as \"90s\", \"3m\" or \"1h\"",
                        cut_short(text)
                    ),
                )
            })?;
            if d < Duration::from_secs(1) {
                return Err(c.invalid(&field, format!("{text} is shorter than one second")));
            }
            if d > Duration::from_secs(366 * 24 * 3600) {
                return Err(c.invalid(&field, format!("{text} is longer than a year")));
            }
            Ok(d)
        };
        let webhooks = raw
            .webhooks
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, url)| {
                WebhookUrl::new(url).map_err(|m| c.invalid(format!("alerts.webhooks[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let email = raw.email.map(|e| Self::email(c, e)).transpose()?;
        Ok(AlertsConfig {
            target_down_after: duration(
                "target_down_after",
                raw.target_down_after.as_deref(),
                scrape_interval * 2,
            )?,
            handshake_stale_after: duration(
                "handshake_stale_after",
                raw.handshake_stale_after.as_deref(),
                Duration::from_secs(180),
            )?,
            never_handshook_after: duration(
                "never_handshook_after",
                raw.never_handshook_after.as_deref(),
                Duration::from_secs(300),
            )?,
            collector_stale_after: duration(
                "collector_stale_after",
                raw.collector_stale_after.as_deref(),
                Duration::from_secs(120),
            )?,
            group_wait: duration(
                "group_wait",
                raw.group_wait.as_deref(),
                Duration::from_secs(10),
            )?,
            group_interval: duration(
                "group_interval",
                raw.group_interval.as_deref(),
                Duration::from_secs(60),
            )?,
            webhooks,
            email,
        })
    }

    fn email(c: &Checker<'_>, raw: RawEmail) -> Result<EmailConfig, ConfigError> {
        if raw.to.0.is_empty() {
            return Err(c.invalid(
                "alerts.email.to",
                "the recipient list is empty; name at least one address",
            ));
        }
        let to = raw
            .to
            .0
            .iter()
            .enumerate()
            .map(|(i, a)| {
                EmailAddress::new(a).map_err(|m| c.invalid(format!("alerts.email.to[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let from = EmailAddress::new(&raw.from).map_err(|m| c.invalid("alerts.email.from", m))?;
        let smarthost =
            SmartHost::new(&raw.smarthost).map_err(|m| c.invalid("alerts.email.smarthost", m))?;
        if let Some(user) = &raw.username {
            if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
                return Err(c.invalid(
                    "alerts.email.username",
                    "the user name must be 1 to 256 characters, none of them control characters",
                ));
            }
        }
        if let Some(name) = &raw.password_env {
            if !is_env_var_name(name) {
                return Err(c.invalid(
                    "alerts.email.password_env",
                    format!(
                        "{:?} is not an environment variable name (letters, digits and '_', not starting with a digit)",
                        cut_short(name)
                    ),
                ));
            }
        }
        if let Some(path) = &raw.password_file {
            if path.as_os_str().is_empty() {
                return Err(c.invalid("alerts.email.password_file", "the path is empty"));
            }
        }
        let has_password = match (&raw.password_file, &raw.password_env) {
            (Some(_), Some(_)) => {
                return Err(c.invalid(
                    "alerts.email",
                    "give either password_file or password_env, not both",
                ))
            }
            (None, None) => false,
            _ => true,
        };
        match (&raw.username, has_password) {
            (Some(_), false) => {
                return Err(c.invalid(
                    "alerts.email.username",
                    "a user name needs a password: add password_file or password_env",
                ))
            }
            (None, true) => {
                return Err(c.invalid(
                    "alerts.email.username",
                    "a password needs a user name to log in with: add username",
                ))
            }
            _ => {}
        }
        Ok(EmailConfig {
            to,
            from,
            smarthost,
            username: raw.username,
            password_file: raw.password_file,
            password_env: raw.password_env,
        })
    }

    fn nodes(c: &Checker<'_>, raw: &RawNodes) -> Result<Vec<HostSpec>, ConfigError> {
        let shared = c.exporters("nodes", &raw.exporters, ExporterHost::Node)?;
        // An exporter's field in a node's list of shared ones and its own.
        let field_of = |host: Option<usize>, j: usize| match host {
            Some(i) if j >= shared.len() => {
                format!("nodes.host[{i}].exporters[{}]", j - shared.len())
            }
            _ => format!("nodes.exporters[{j}]"),
        };
        if let Some(hosts) = &raw.host {
            if raw.count.is_some() || raw.regions.is_some() || raw.name_prefix.is_some() {
                return Err(c.invalid(
                    "nodes",
                    "give either [[nodes.host]] entries or count/regions/name_prefix, not both",
                ));
            }
            if hosts.is_empty() {
                return Err(c.invalid(
                    "nodes.host",
                    "the node list is empty; add at least one [[nodes.host]]",
                ));
            }
            return hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let field = format!("nodes.host[{i}]");
                    let mut exporters = shared.clone();
                    exporters.extend(c.exporters(&field, &h.exporters, ExporterHost::Node)?);
                    c.unique_packages(&exporters, |j| field_of(Some(i), j))?;
                    let (origin, wireguard) = c.origin(
                        &field,
                        RawOrigin {
                            address: h.address.as_deref(),
                            ssh_user: h.ssh_user.as_deref(),
                            ssh_port: h.ssh_port,
                            host_key: h.host_key.as_deref(),
                            wireguard: h.wireguard.as_ref(),
                        },
                    )?;
                    let region = match (&h.region, &origin) {
                        (Some(r), _) => r.as_str(),
                        (None, HostOrigin::Existing(_)) => EXISTING_REGION,
                        (None, HostOrigin::Created) => {
                            return Err(c.invalid(
                                format!("{field}.region"),
                                "a host PromGuard creates needs a region (or give it an address if you already run it)",
                            ))
                        }
                    };
                    Ok(HostSpec {
                        name: c.name(&format!("{field}.name"), HostName::new(&h.name))?,
                        region: c.name(&format!("{field}.region"), Region::new(region))?,
                        exporters,
                        origin,
                        wireguard,
                    })
                })
                .collect();
        }
        let count = raw.count.unwrap_or(3);
        if count < 1 {
            return Err(c.invalid(
                "nodes.count",
                "the node list is empty; a deployment needs at least one node",
            ));
        }
        if count > 1_000_000 {
            return Err(c.invalid(
                "nodes.count",
                format!("{count} nodes is more than PromGuard supports (1000000)"),
            ));
        }
        let regions: Vec<Region> = match &raw.regions {
            None => DEFAULT_REGIONS
                .iter()
                .map(|r| Region::new(r).expect("valid"))
                .collect(),
            Some(list) if list.is_empty() => {
                return Err(c.invalid(
                    "nodes.regions",
                    "the region list is empty; name at least one region",
                ))
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, r)| c.name(&format!("nodes.regions[{i}]"), Region::new(r)))
                .collect::<Result<_, _>>()?,
        };
        c.unique_packages(&shared, |j| field_of(None, j))?;
        let prefix = raw.name_prefix.as_deref().unwrap_or("promguard-node");
        (0..count as usize)
            .map(|i| {
                Ok(HostSpec::created(
                    c.name(
                        "nodes.name_prefix",
                        HostName::new(&format!("{prefix}-{}", i + 1)),
                    )?,
                    regions[i % regions.len()].clone(),
                    shared.clone(),
                ))
            })
            .collect()
    }

    fn check_hosts(&self, c: &Checker<'_>) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (i, host) in self.hosts().enumerate() {
            if !names.insert(&host.name) {
                let monitors = 1 + self.more_monitors.len();
                let field = if i < monitors {
                    "monitor.name".to_owned()
                } else if i == monitors && self.storage.is_some() {
                    "storage.name".to_owned()
                } else {
                    let first_node = monitors + usize::from(self.storage.is_some());
                    format!("nodes[{}].name", i - first_node)
                };
                return Err(c.invalid(
                    field,
                    format!(
                        "duplicate host name {}; every host needs its own name",
                        host.name
                    ),
                ));
            }
            let mut ports: BTreeMap<Port, &str> = BTreeMap::new();
            ports.insert(self.ssh.port, "ssh");
            if ports
                .insert(self.node_exporter_port, "node_exporter")
                .is_some()
            {
                return Err(c.invalid(
                    "prometheus.node_exporter_port",
                    format!("port {} is already used by ssh", self.node_exporter_port),
                ));
            }
            if i <= self.more_monitors.len()
                && ports
                    .insert(Port::new(9090).expect("nonzero"), "prometheus")
                    .is_some()
            {
                return Err(c.invalid(
                    "prometheus.node_exporter_port",
                    "port 9090 is used by Prometheus on the monitor",
                ));
            }
            for e in &host.exporters {
                if let Some(other) = ports.insert(e.port, e.name.as_str()) {
                    return Err(c.invalid(
                        format!("host {}: exporter {}", host.name, e.name),
                        format!("port {} clashes with {other} on the same host; give each exporter its own port", e.port),
                    ));
                }
            }
            let mut exporter_names = BTreeSet::new();
            for e in &host.exporters {
                if !exporter_names.insert(&e.name) {
                    return Err(c.invalid(
                        format!("host {}: exporter {}", host.name, e.name),
                        "exporter listed twice on the same host",
                    ));
                }
            }
        }
        self.check_probes(c)?;
        let needed = self.hosts().count() as u128;
        let usable = usable_addresses(self.subnet);
        if needed > usable {
            return Err(c.invalid(
                "deployment.subnet",
                format!(
                    "{} has room for {usable} host address(es) but the deployment has {needed} hosts; use a larger subnet (a smaller prefix length)",
                    self.subnet
                ),
            ));
        }
        Ok(())
    }

    /// Probes reach hosts of the config, on ports that are not an
    /// exporter's, and their job's name is no exporter's.
    fn check_probes(&self, c: &Checker<'_>) -> Result<(), ConfigError> {
        for (j, e) in self.monitor.exporters.iter().enumerate() {
            let Some(m) = e.managed.as_ref().filter(|m| !m.probes.is_empty()) else {
                continue;
            };
            let job = exporters::probe_job(&e.name);
            if let Some(host) = self
                .hosts()
                .find(|h| h.exporters.iter().any(|x| x.name.as_str() == job))
            {
                return Err(c.invalid(
                    format!("monitor.exporters[{j}].name"),
                    format!(
                        "its probes are the Prometheus job {job:?}, which is also the name of an exporter on {}; rename one of them",
                        host.name
                    ),
                ));
            }
            for (k, probe) in m.probes.iter().enumerate() {
                let field = format!("monitor.exporters[{j}].probes[{k}]");
                let Some(host) = self.hosts().find(|h| h.name == probe.host) else {
                    return Err(c.invalid(
                        format!("{field}.host"),
                        format!(
                            "no host of the config is called {}; a probe reaches a host of the deployment over the tunnel",
                            probe.host
                        ),
                    ));
                };
                let exporter = if probe.port == self.node_exporter_port {
                    Some("node_exporter")
                } else {
                    host.exporters
                        .iter()
                        .find(|x| x.port == probe.port)
                        .map(|x| x.name.as_str())
                };
                if let Some(exporter) = exporter {
                    return Err(c.invalid(
                        format!("{field}.port"),
                        format!(
                            "port {} is exporter {exporter}'s on {}, which Prometheus scrapes already; probe a service of the host's own",
                            probe.port, host.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every host, monitor first, then nodes in order.
    pub fn hosts(&self) -> impl Iterator<Item = &HostSpec> {
        std::iter::once(&self.monitor)
            .chain(self.more_monitors.iter())
            .chain(self.storage.iter().map(|s| &s.host))
            .chain(self.nodes.iter())
    }

    /// Every monitor with its shard and replica number, shard by shard.
    pub fn monitors(&self) -> Vec<crate::topology::MonitorSlot<'_>> {
        let shards: Vec<Option<&crate::shards::ShardId>> = match &self.topology.shards {
            Some(s) => s.iter().map(Some).collect(),
            None => vec![None],
        };
        let replicas = usize::from(self.topology.replicas);
        std::iter::once(&self.monitor)
            .chain(self.more_monitors.iter())
            .enumerate()
            .map(|(i, host)| crate::topology::MonitorSlot {
                host,
                shard: shards[i / replicas],
                replica: (i % replicas) as u16 + 1,
            })
            .collect()
    }

    /// Whether a provider creates any host: a deployment of existing hosts
    /// only needs no provider.
    pub fn creates_hosts(&self) -> bool {
        self.hosts().any(|h| h.origin == HostOrigin::Created)
    }

    /// `host`'s WireGuard interface: its own, else `wireguard.interface`.
    pub fn interface_of<'a>(&'a self, host: &'a HostSpec) -> &'a InterfaceName {
        host.wireguard.interface.as_ref().unwrap_or(&self.interface)
    }

    /// `host`'s WireGuard port: its own, else `wireguard.port`.
    pub fn wireguard_port_of(&self, host: &HostSpec) -> Port {
        host.wireguard.port.unwrap_or(self.wireguard_port)
    }

    /// `host`'s SSH port: an existing host's own, else `ssh.port`.
    pub fn ssh_port_of(&self, host: &HostSpec) -> Port {
        host.existing()
            .and_then(|e| e.ssh_port)
            .unwrap_or(self.ssh.port)
    }

    /// The commented config `promguard init` writes.
    pub fn template(provider: ProviderKind, nodes: usize) -> String {
        let regions = DEFAULT_REGIONS.map(|r| format!("{r:?}")).join(", ");
        let known: String = KNOWN_EXPORTERS
            .iter()
            .map(|k| format!("#   {} ({})\n", k.package, k.port))
            .collect();
        format!(
            r#"# PromGuard configuration. Every key is optional; the values shown are the
# defaults, which reproduce the original deployment: one monitor and three
# nodes, every exporter reachable only through WireGuard.

[deployment]
# Prefixed to everything the deployment creates (tags, namespaces).
name = "promguard"
# "local" (network namespaces on this machine) or "digitalocean".
provider = "{provider}"
# WireGuard addresses: the monitor gets the first, nodes the next free ones.
# An IPv6 subnet such as "fd00:10::/64" works too.
subnet = "10.0.0.0/24"
# A preshared key per monitor-node pair, for post-quantum resistance.
preshared_keys = true

[wireguard]
interface = "wg0"
port = 51820
# `plan` suggests `promguard rotate` once keys are older than this.
rotate_after_days = 90

[prometheus]
scrape_interval = "30s"
# node_exporter runs on every host, bound to its WireGuard address.
node_exporter_port = 9100

[monitor]
name = "promguard-monitor-1"
region = "tor1"
# Several monitors: `replicas` monitors each scrape the same nodes (high
# availability); `shards` split the nodes between groups of replicas, by
# rendezvous hashing of the shard ids (adding a shard moves only the nodes it
# takes over). They are named <name_prefix>-<shard>-<replica>, or
# <name_prefix>-<replica> without shards (remove `name` above).
# replicas = 2
# shards = ["a", "b"]
# name_prefix = "promguard-monitor"
# A blackbox exporter on the monitor probes HTTP endpoints of the hosts over
# the tunnel (each probed host's firewall lets the monitor in on the port).
# Probes need PromGuard's own Prometheus; path defaults to "/", module (one
# of Debian's /etc/prometheus/blackbox.yml) to "http_2xx".
# exporters = [
#   {{ name = "blackbox", package = "prometheus-blackbox-exporter", probes = [{{ host = "web-1", port = 80, path = "/", module = "http_2xx" }}] }},
# ]

[nodes]
# Either a count spread over regions...
count = {nodes}
regions = [{regions}]
name_prefix = "promguard-node"
# Extra exporters every node runs (Prometheus scrapes them over the tunnel).
# One you run yourself needs its port:
# exporters = [{{ name = "postgres", port = 9187 }}]

# ...or nodes one by one (remove count/regions/name_prefix above):
# [[nodes.host]]
# name = "db-1"
# region = "lon1"
# An exporter that names its Debian package PromGuard installs with apt,
# binds to the WireGuard address and starts after the tunnel. `args` are
# extra arguments; `env` the variables of /etc/default/<package>, each a
# string, {{ file = "path" }} (relative to this file's directory) or
# {{ env = "VARIABLE" }} (of the environment `promguard` runs in): the last
# two are secrets, never printed. `port` defaults to the usual one of
{known}# and is needed for any other package of the same shape.
# exporters = [
#   {{ name = "postgres", package = "prometheus-postgres-exporter", env = {{ DATA_SOURCE_NAME = {{ file = "pg.dsn" }} }} }},
#   {{ name = "redis", package = "prometheus-redis-exporter", args = ["--redis.addr=redis://127.0.0.1:6379"], env = {{ REDIS_PASSWORD = {{ env = "REDIS_PW" }} }} }},
#   {{ name = "mysql", package = "prometheus-mysqld-exporter", port = 9104 }},
# ]

# A storage host running VictoriaMetrics (Debian's victoria-metrics), which
# every monitor remote_writes to over WireGuard; only the monitors reach it.
# The replicas' copies of a series are deduplicated to one per scrape interval.
# [storage]
# name = "promguard-storage-1"
# port = 8428
# retention_days = 30

# Or remote_write to an engine of your own (VictoriaMetrics, Mimir, Thanos,
# Cortex) over TLS. Each monitor adds the labels monitor, replica (and shard).
# The password or token is read by `promguard` from a file or the environment
# and stored 0600 on the monitors.
# [remote_write]
# url = "https://metrics.example.com/api/v1/write"
# username = "promguard"
# password_env = "PROMGUARD_REMOTE_WRITE_PASSWORD"  # or password_file
# bearer_token_file = "token"                        # instead of basic auth
# ca_file = "ca.pem"                                 # a private CA's bundle

[ssh]
port = 22
# private_key = "~/.ssh/id_ed25519"

[local]
# "namespace" (fast, sharing this machine's programs) or "systemd" (Debian 12
# booted by its own systemd, packages installed with apt, like a real server).
hosts = "namespace"

[digitalocean]
size = "s-1vcpu-1gb"
image = "debian-12-x64"
# ssh_public_key = "~/.ssh/id_ed25519.pub"
# A Cloud Firewall allowing only SSH and WireGuard inbound.
firewall = true

[alerts]
# Thresholds of the alert rules on the monitor (docs/alerts.md).
# A scrape target down this long; twice the scrape interval by default.
# target_down_after = "1m"
# A peer's latest WireGuard handshake older than this (WireGuard shakes hands
# every two minutes while traffic flows, so keep it above 2m).
handshake_stale_after = "3m"
# A peer that has not completed any handshake for this long.
never_handshook_after = "5m"
# The WireGuard metrics collector last ran longer ago than this.
collector_stale_after = "2m"
# Alertmanager: wait this long to gather a new group of alerts, and this
# long between notifications about a group's changes (resolved included).
# group_wait = "10s"
# group_interval = "1m"
# Alertmanager on the monitor sends alerts to these webhooks...
# webhooks = ["https://alerts.example.com/promguard"]
# ...and to email. The SMTP password is read by `promguard` from a file or
# an environment variable (one of the two) and stored 0600 on the monitor.
# [alerts.email]
# to = ["ops@example.com"]
# from = "promguard@example.com"
# smarthost = "smtp.example.com:587"
# username = "promguard@example.com"
# password_env = "PROMGUARD_SMTP_PASSWORD"
# password_file = "smtp-password"   # relative to this file's directory
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("promguard.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn local_host_kind() {
        assert_eq!(parse("").unwrap().local.hosts, LocalHostKind::Namespace);
        let systemd = parse("[local]\nhosts = \"systemd\"\n").unwrap();
        assert_eq!(systemd.local.hosts, LocalHostKind::Systemd);
        let err = error("[local]\nhosts = \"docker\"\n");
        assert!(
            err.contains("local.hosts") && err.contains("\"namespace\" or \"systemd\""),
            "{err}"
        );
        assert!(error("[local]\nkind = 1\n").contains("unknown field"));
    }

    #[test]
    fn defaults_reproduce_the_original() {
        let c = Config::default();
        assert_eq!(c.deployment.as_str(), "promguard");
        assert_eq!(c.provider, ProviderKind::Local);
        assert_eq!(c.monitor.name.as_str(), "promguard-monitor-1");
        assert_eq!(c.monitor.region.as_str(), "tor1");
        let nodes: Vec<_> = c
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.region.as_str()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("promguard-node-1", "lon1"),
                ("promguard-node-2", "sfo2"),
                ("promguard-node-3", "sgp1")
            ]
        );
        assert_eq!(c.subnet.to_string(), "10.0.0.0/24");
        assert_eq!(c.wireguard_port.get(), 51820);
        assert_eq!(c.interface.as_str(), "wg0");
        assert_eq!(c.node_exporter_port.get(), 9100);
        assert_eq!(c.scrape_interval, Duration::from_secs(30));
        assert!(c.preshared_keys);
    }

    #[test]
    fn template_parses_to_the_defaults() {
        let c = parse(&Config::template(ProviderKind::Local, 3)).unwrap();
        assert_eq!(c, Config::default());
        let c = parse(&Config::template(ProviderKind::DigitalOcean, 5)).unwrap();
        assert_eq!(c.nodes.len(), 5);
        assert_eq!(c.provider, ProviderKind::DigitalOcean);
    }

    #[test]
    fn nodes_one_by_one_with_exporters() {
        let c = parse(
            r#"
[[nodes.host]]
name = "db-1"
region = "lon1"
exporters = [{ name = "postgres", port = 9187 }]
[[nodes.host]]
name = "web-1"
region = "fra1"
"#,
        )
        .unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[0].exporters[0].port.get(), 9187);
        assert!(c.nodes[1].exporters.is_empty());
    }

    #[test]
    fn count_spreads_over_regions() {
        let c = parse("[nodes]\ncount = 5\nregions = [\"ams3\", \"nyc1\"]\n").unwrap();
        let regions: Vec<_> = c.nodes.iter().map(|n| n.region.as_str()).collect();
        assert_eq!(regions, ["ams3", "nyc1", "ams3", "nyc1", "ams3"]);
    }

    #[test]
    fn ipv6_subnet() {
        let c = parse("[deployment]\nsubnet = \"fd00:10::/120\"\n").unwrap();
        assert!(c.subnet.is_ipv6());
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let msg = error("[deployment]\nname = \"x\"\nsubnett = \"10.0.0.0/24\"\n");
        assert!(
            msg.contains("line 3") && msg.contains("column 1") && msg.contains("subnett"),
            "{msg}"
        );
    }

    #[test]
    fn subnet_too_small() {
        let msg = error("[deployment]\nsubnet = \"10.0.0.0/30\"\n");
        assert!(
            msg.contains("room for 2 host address(es)") && msg.contains("4 hosts"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_cidr() {
        let msg = error("[deployment]\nsubnet = \"10.0.0.0/33\"\n");
        assert!(
            msg.contains("deployment.subnet") && msg.contains("not a CIDR"),
            "{msg}"
        );
        let msg = error("[deployment]\nsubnet = \"10.0.0.7/24\"\n");
        assert!(msg.contains("did you mean 10.0.0.0/24"), "{msg}");
    }

    #[test]
    fn duplicate_host_names() {
        let msg = error(
            "[monitor]\nname = \"a\"\n[[nodes.host]]\nname = \"b\"\nregion = \"x1\"\n[[nodes.host]]\nname = \"b\"\nregion = \"x1\"\n",
        );
        assert!(msg.contains("duplicate host name b"), "{msg}");
    }

    #[test]
    fn invalid_host_name() {
        let msg = error("[monitor]\nname = \"$(touch /tmp/pwned)\"\n");
        assert!(
            msg.contains("monitor.name") && msg.contains("invalid host name"),
            "{msg}"
        );
    }

    #[test]
    fn port_clash() {
        let msg = error("[nodes]\nexporters = [{ name = \"x\", port = 9100 }]\n");
        assert!(
            msg.contains("port 9100 clashes with node_exporter"),
            "{msg}"
        );
        let msg = error("[prometheus]\nnode_exporter_port = 22\n");
        assert!(msg.contains("already used by ssh"), "{msg}");
    }

    #[test]
    fn empty_node_list() {
        assert!(error("[nodes]\ncount = 0\n").contains("node list is empty"));
        assert!(error("[nodes]\nhost = []\n").contains("node list is empty"));
    }

    #[test]
    fn bad_scrape_interval() {
        assert!(error("[prometheus]\nscrape_interval = \"soon\"\n").contains("not a duration"));
    }

    #[test]
    fn rotate_after_days_is_a_number_of_days() {
        let days = |value: &str| parse(&format!("[wireguard]\nrotate_after_days = {value}\n"));
        assert_eq!(parse("").unwrap().rotate_after_days, 90);
        assert_eq!(days("1").unwrap().rotate_after_days, 1);
        assert_eq!(days("36500").unwrap().rotate_after_days, 36_500);
        for value in ["0", "-1", "36501", "4294967296", "-9223372036854775808"] {
            let err = days(value).unwrap_err().to_string();
            assert!(
                err.contains("wireguard.rotate_after_days")
                    && err.contains(&format!("{value} is not a number of days from 1 to 36500")),
                "{value}: {err}"
            );
        }
        for value in [
            "\"90\"",
            "1.5",
            "1e3",
            "nan",
            "inf",
            "true",
            "[90]",
            "{ days = 90 }",
            "1979-05-27",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            let err = days(value).unwrap_err().to_string();
            assert!(
                err.contains("rotate_after_days") && err.contains("line 2"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn parse_errors_quote_long_values_short() {
        let long = "x".repeat(100_000);
        for text in [
            format!("[wireguard]\nrotate_after_days = \"{long}\"\n"),
            format!("[ssh]\nport = \"{long}\"\n"),
            format!("[ssh]\nport = {}\n", "9".repeat(100_000)),
        ] {
            let err = error(&text);
            assert!(err.len() < 1000, "{} bytes: {}", err.len(), &err[..300]);
            assert!(err.contains("line 2, column"), "{err}");
            assert!(
                err.contains("rotate_after_days = ") || err.contains("port = "),
                "{err}"
            );
        }
    }

    #[test]
    fn alerts_defaults_follow_the_scrape_interval() {
        let a = parse("").unwrap().alerts;
        assert_eq!(a.target_down_after, Duration::from_secs(60));
        assert_eq!(a.handshake_stale_after, Duration::from_secs(180));
        assert_eq!(a.never_handshook_after, Duration::from_secs(300));
        assert_eq!(a.collector_stale_after, Duration::from_secs(120));
        assert!(a.webhooks.is_empty() && a.email.is_none());
        let a = parse("[prometheus]\nscrape_interval = \"5s\"\n")
            .unwrap()
            .alerts;
        assert_eq!(a.target_down_after, Duration::from_secs(10));
        let a =
            parse("[prometheus]\nscrape_interval = \"5s\"\n[alerts]\ntarget_down_after = \"1h\"\n")
                .unwrap()
                .alerts;
        assert_eq!(a.target_down_after, Duration::from_secs(3600));
    }

    #[test]
    fn alerts_durations_name_their_key() {
        for (key, value, wanted) in [
            ("target_down_after", "\"soon\"", "is not a duration"),
            ("handshake_stale_after", "\"3 m\"", "is not a duration"),
            ("never_handshook_after", "\"0s\"", "is not a duration"),
            (
                "collector_stale_after",
                "\"500ms\"",
                "shorter than one second",
            ),
            ("collector_stale_after", "\"9000h\"", "longer than a year"),
        ] {
            let err = error(&format!("[alerts]\n{key} = {value}\n"));
            assert!(
                err.contains(&format!("alerts.{key}:")) && err.contains(wanted),
                "{err}"
            );
        }
        let err = error("[alerts]\nhandshake_stale_after = 180\n");
        assert!(
            err.contains("handshake_stale_after") && err.contains("line 2"),
            "{err}"
        );
        assert!(error("[alerts]\nstale = \"3m\"\n").contains("unknown field"));
    }

    #[test]
    fn webhooks_are_strict_urls() {
        let a = parse(
            "[alerts]\nwebhooks = [\"https://hooks.example.com/a/b?c=d&e=%20\", \"http://10.0.0.9:8080\", \"http://[fd00::1]:9/x\"]\n",
        )
        .unwrap()
        .alerts;
        let urls: Vec<&str> = a.webhooks.iter().map(WebhookUrl::as_str).collect();
        assert_eq!(
            urls,
            [
                "https://hooks.example.com/a/b?c=d&e=%20",
                "http://10.0.0.9:8080",
                "http://[fd00::1]:9/x"
            ]
        );
        assert_eq!(
            format!("{:?}", a.webhooks[0]),
            "WebhookUrl(\"https://hooks.example.com/<redacted>\")"
        );
        assert_eq!(
            format!("{:?}", a.webhooks[1]),
            "WebhookUrl(\"http://10.0.0.9:8080\")"
        );
        for (url, wanted) in [
            (
                "ftp://example.com/",
                "does not start with http:// or https://",
            ),
            ("HTTPS://example.com/", "does not start with"),
            ("example.com/hook", "does not start with"),
            ("https://", "host \"\""),
            ("https://user:pw@example.com/", "user name or password"),
            ("https://exa mple.com/", "host \"exa mple.com\""),
            ("https://-example.com/", "labels of letters"),
            ("https://example.com:0/", "port \"0\""),
            ("https://example.com:70000/", "port \"70000\""),
            ("https://example.com:/", "port \"\""),
            ("https://999.1.1.1/", "not an IPv4 address"),
            ("https://[fd00::zz]/", "not a host"),
            ("https://fd00::1/", "not a number"),
            ("https://example.com/a b", "space or control character"),
            ("https://example.com/a\"b", "the character '\"'"),
            ("https://example.com/a#b", "fragment"),
            ("https://example.com/%zz", "two hex digits"),
            ("https://example.com/\u{e9}", "the character"),
        ] {
            let text = format!("[alerts]\nwebhooks = [\"https://ok.example.com/\", {url:?}]\n");
            let err = error(&text);
            assert!(
                err.contains("alerts.webhooks[1]: ") && err.contains(wanted),
                "{url}: {err}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(3000));
        let err = error(&format!("[alerts]\nwebhooks = [{long:?}]\n"));
        assert!(err.contains("at most 2048") && err.len() < 300, "{err}");
    }

    const EMAIL: &str = "[alerts.email]\nto = \"ops@example.com\"\nfrom = \"pg@example.com\"\nsmarthost = \"smtp.example.com:587\"\n";

    #[test]
    fn email_receiver() {
        let e = parse(EMAIL).unwrap().alerts.email.unwrap();
        assert_eq!(e.to.len(), 1);
        assert_eq!(e.smarthost.to_string(), "smtp.example.com:587");
        assert_eq!(
            (e.username, e.password_file, e.password_env),
            (None, None, None)
        );
        let e = parse(&format!(
            "{}username = \"pg\"\npassword_file = \"/run/secrets/smtp\"\n",
            EMAIL
                .replace(
                    "\"ops@example.com\"",
                    "[\"a@example.com\", \"b.c+d@mail.example.org\"]"
                )
                .replace("smtp.example.com:587", "[2001:db8::25]:25")
        ))
        .unwrap()
        .alerts
        .email
        .unwrap();
        let to: Vec<&str> = e.to.iter().map(EmailAddress::as_str).collect();
        assert_eq!(to, ["a@example.com", "b.c+d@mail.example.org"]);
        assert_eq!(e.smarthost.to_string(), "[2001:db8::25]:25");
        assert_eq!(e.smarthost.host(), "2001:db8::25");
        assert_eq!(
            e.password_file.as_deref(),
            Some(Path::new("/run/secrets/smtp"))
        );
        let e = parse(&format!(
            "{EMAIL}username = \"pg\"\npassword_env = \"SMTP_PW\"\n"
        ))
        .unwrap()
        .alerts
        .email
        .unwrap();
        assert_eq!(e.password_env.as_deref(), Some("SMTP_PW"));
    }

    #[test]
    fn email_errors_name_the_key() {
        let with = |extra: &str| error(&format!("{EMAIL}{extra}"));
        for (text, field, wanted) in [
            (
                EMAIL.replace("\"ops@example.com\"", "[]"),
                "alerts.email.to",
                "list is empty",
            ),
            (
                EMAIL.replace("ops@example.com", "ops"),
                "alerts.email.to[0]",
                "has no '@'",
            ),
            (
                EMAIL.replace("ops@example.com", "Ops <ops@example.com>"),
                "alerts.email.to[0]",
                "before '@'",
            ),
            (
                EMAIL.replace("ops@example.com", "ops@localhost"),
                "alerts.email.to[0]",
                "needs a dot",
            ),
            (
                EMAIL.replace("ops@example.com", "ops@exa_mple.com"),
                "alerts.email.to[0]",
                "labels",
            ),
            (
                EMAIL.replace("pg@example.com", "pg@@example.com"),
                "alerts.email.from",
                "the domain",
            ),
            (
                EMAIL.replace("smtp.example.com:587", "smtp.example.com"),
                "alerts.email.smarthost",
                "port is missing",
            ),
            (
                EMAIL.replace("smtp.example.com:587", "smtp.example.com:smtp"),
                "alerts.email.smarthost",
                "port \"smtp\"",
            ),
            (
                EMAIL.replace("smtp.example.com:587", "[::1:25"),
                "alerts.email.smarthost",
                "malformed",
            ),
            (
                EMAIL.replace("smtp.example.com:587", "smtp example.com:25"),
                "alerts.email.smarthost",
                "the host",
            ),
        ] {
            let err = error(&text);
            assert!(
                err.contains(&format!("{field}: ")) && err.contains(wanted),
                "{err}"
            );
        }
        let err = with("username = \"pg\"\npassword_file = \"/x\"\npassword_env = \"X\"\n");
        assert!(
            err.contains("alerts.email: ") && err.contains("not both"),
            "{err}"
        );
        let err = with("username = \"pg\"\n");
        assert!(
            err.contains("alerts.email.username: ") && err.contains("needs a password"),
            "{err}"
        );
        let err = with("password_env = \"X\"\n");
        assert!(
            err.contains("alerts.email.username: ") && err.contains("needs a user name"),
            "{err}"
        );
        let err = with("username = \"pg\"\npassword_env = \"1X\"\n");
        assert!(
            err.contains("alerts.email.password_env: ")
                && err.contains("not an environment variable name"),
            "{err}"
        );
        let err = with("username = \"pg\"\npassword_env = \"A-B\"\n");
        assert!(err.contains("alerts.email.password_env: "), "{err}");
        let err = with("username = \"pg\"\npassword_file = \"\"\n");
        assert!(err.contains("alerts.email.password_file: "), "{err}");
        let err = with("password = \"hunter2\"\n");
        assert!(err.contains("unknown field `password`"), "{err}");
        let err = error("[alerts.email]\nto = 1\nfrom = \"a@b.c\"\nsmarthost = \"h:1\"\n");
        assert!(err.contains("an address or a list of addresses"), "{err}");
        let err = error("[alerts.email]\nto = \"a@b.c\"\n");
        assert!(err.contains("missing field `from`"), "{err}");
    }

    /// The managed exporters of the issue: three on a node, and a blackbox
    /// exporter on the monitor that probes another node.
    const MANAGED: &str = r#"
[monitor]
exporters = [
  { name = "blackbox", package = "prometheus-blackbox-exporter", probes = [{ host = "web-1", port = 80, path = "/", module = "http_2xx" }, { host = "web-1", port = 8443, path = "/health?full=1" }, { host = "db-1", port = 443, module = "http-tls" }] },
]
[[nodes.host]]
name = "db-1"
region = "lon1"
exporters = [
  { name = "postgres", package = "prometheus-postgres-exporter", env = { DATA_SOURCE_NAME = { file = "pg.dsn" } } },
  { name = "redis", package = "prometheus-redis-exporter", args = ["--redis.addr=redis://127.0.0.1:6379"], env = { REDIS_USER = "default", REDIS_PASSWORD = { env = "REDIS_PW" } } },
  { name = "mysql", package = "prometheus-mysqld-exporter", port = 9104 },
]
[[nodes.host]]
name = "web-1"
region = "lon1"
exporters = [{ name = "nginx", port = 9113 }]
"#;

    #[test]
    fn managed_exporters() {
        let c = parse(MANAGED).unwrap();
        let db = &c.nodes[0].exporters;
        let ports: Vec<u16> = db.iter().map(|e| e.port.get()).collect();
        assert_eq!(
            ports,
            [9187, 9121, 9104],
            "known packages' ports by default"
        );
        let postgres = db[0].managed.as_ref().unwrap();
        assert_eq!(postgres.package.as_str(), "prometheus-postgres-exporter");
        assert!(postgres.args.is_empty() && postgres.probes.is_empty());
        assert_eq!(
            postgres.settings,
            [ExporterSetting {
                name: EnvName::new("DATA_SOURCE_NAME").unwrap(),
                source: SettingSource::File("pg.dsn".into()),
                value: None,
            }],
            "a file stays relative: the caller resolves it"
        );
        let redis = db[1].managed.as_ref().unwrap();
        assert_eq!(redis.args, ["--redis.addr=redis://127.0.0.1:6379"]);
        let settings: Vec<(&str, &SettingSource)> = redis
            .settings
            .iter()
            .map(|s| (s.name.as_str(), &s.source))
            .collect();
        assert_eq!(
            settings,
            [
                ("REDIS_PASSWORD", &SettingSource::Env("REDIS_PW".into())),
                ("REDIS_USER", &SettingSource::Value("default".into())),
            ],
            "sorted by name"
        );
        let mysql = db[2].managed.as_ref().unwrap();
        assert_eq!(mysql.package.as_str(), "prometheus-mysqld-exporter");
        assert!(mysql.settings.is_empty());
        // Today's form is an exporter the operator runs.
        let nginx = &c.nodes[1].exporters[0];
        assert_eq!((nginx.port.get(), &nginx.managed), (9113, &None));

        let blackbox = &c.monitor.exporters[0];
        assert_eq!(blackbox.port.get(), 9115);
        let probes: Vec<(&str, u16, &str, &str)> = blackbox
            .managed
            .as_ref()
            .unwrap()
            .probes
            .iter()
            .map(|p| {
                (
                    p.host.as_str(),
                    p.port.get(),
                    p.path.as_str(),
                    p.module.as_str(),
                )
            })
            .collect();
        assert_eq!(
            probes,
            [
                ("web-1", 80, "/", "http_2xx"),
                ("web-1", 8443, "/health?full=1", "http_2xx"),
                ("db-1", 443, "/", "http-tls"),
            ]
        );
    }

    #[test]
    fn the_template_examples_parse() {
        // The commented exporter lists of the template, uncommented: the
        // monitor's first, then the one of [[nodes.host]].
        let template = Config::template(ProviderKind::Local, 3);
        let mut blocks = Vec::new();
        let mut lines = template.lines();
        while let Some(line) = lines.next() {
            if line == "# exporters = [" {
                let block: Vec<&str> = std::iter::once(line)
                    .chain(lines.by_ref().take_while(|l| *l != "# ]"))
                    .map(|l| l.trim_start_matches("# "))
                    .collect();
                blocks.push(format!("{}\n]\n", block.join("\n")));
            }
        }
        assert_eq!(blocks.len(), 2, "{template}");
        let text = format!(
            "[monitor]\n{}[[nodes.host]]\nname = \"web-1\"\nregion = \"lon1\"\n[[nodes.host]]\nname = \"db-1\"\nregion = \"lon1\"\n{}",
            blocks[0], blocks[1]
        );
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.monitor.exporters[0].name.as_str(), "blackbox");
        assert_eq!(c.nodes[1].exporters.len(), 3);
        for k in KNOWN_EXPORTERS {
            assert!(template.contains(&format!("#   {} ({})\n", k.package, k.port)));
        }
    }

    #[test]
    fn managed_exporter_errors_name_the_field() {
        let with = |monitor: &str, node: &str| {
            format!(
                "[monitor]\nexporters = [{monitor}]\n[[nodes.host]]\nname = \"db-1\"\nregion = \"lon1\"\nexporters = [{node}]\n"
            )
        };
        const BB: &str = "name = \"blackbox\", package = \"prometheus-blackbox-exporter\"";
        const PG: &str = "name = \"pg\", package = \"prometheus-postgres-exporter\", env = { DATA_SOURCE_NAME = \"x\" }";
        let probe = |probe: &str| format!("{{ {BB}, probes = [{probe}] }}");
        let env = |setting: &str| {
            format!("{{ name = \"redis\", package = \"prometheus-redis-exporter\", env = {{ {setting} }} }}")
        };
        let node = "nodes.host[0].exporters[0]";
        let probe0 = "monitor.exporters[0].probes[0]";
        for (monitor, node_exporters, field, wanted) in [
            // Managed keys without a package.
            ("", "{ name = \"x\", port = 9200, args = [\"-a\"] }".to_owned(), format!("{node}.args"), "only for an exporter PromGuard installs"),
            ("", "{ name = \"x\", port = 9200, env = { A = \"b\" } }".to_owned(), format!("{node}.env"), "name its Debian package"),
            ("{ name = \"x\", port = 9200, probes = [] }", String::new(), "monitor.exporters[0].probes".to_owned(), "only for an exporter PromGuard installs"),
            // Ports.
            ("", "{ name = \"x\" }".to_owned(), format!("{node}.port"), "is missing: give the port"),
            ("", "{ name = \"mysql\", package = \"prometheus-mysqld-exporter\" }".to_owned(), format!("{node}.port"), "does not know the usual port of prometheus-mysqld-exporter"),
            ("", "{ name = \"x\", package = \"prometheus-redis-exporter\", port = 0 }".to_owned(), format!("{node}.port"), "between 1 and 65535"),
            // Package and arguments.
            ("", "{ name = \"x\", package = \"Redis\" }".to_owned(), format!("{node}.package"), "invalid Debian package name"),
            ("", "{ name = \"x\", package = \"prometheus-redis-exporter\", args = [\"-a\", \"-b c\"] }".to_owned(), format!("{node}.args[1]"), "systemd splits $ARGS"),
            ("", "{ name = \"x\", package = \"prometheus-redis-exporter\", args = [\"--web.listen-address=:1\"] }".to_owned(), format!("{node}.args[0]"), "sets --web.listen-address itself"),
            // Settings.
            ("", env("pw = \"x\""), format!("{node}.env.pw"), "invalid environment variable name"),
            ("", env("ARGS = \"-x\""), format!("{node}.env.ARGS"), "give them in `args`"),
            ("", env("A = \"x\\ny\""), format!("{node}.env.A"), "control character"),
            ("", env("A = \"it's\""), format!("{node}.env.A"), "single quote"),
            ("", env("A = \"\""), format!("{node}.env.A"), "the value is empty"),
            ("", env("A = { file = \"\" }"), format!("{node}.env.A.file"), "the path is empty"),
            ("", env("A = { env = \"1X\" }"), format!("{node}.env.A.env"), "not an environment variable name"),
            // Rules of known packages.
            ("", "{ name = \"pg\", package = \"prometheus-postgres-exporter\" }".to_owned(), format!("{node}.env.DATA_SOURCE_NAME"), "the postgres exporter needs the server to connect to"),
            ("", "{ name = \"procs\", package = \"prometheus-process-exporter\", args = [\"-children\"] }".to_owned(), format!("{node}.args"), "which processes to watch"),
            ("", format!("{{ {PG} }}, {{ {} }}", PG.replace("\"pg\"", "\"pg2\"")), "nodes.host[0].exporters[1].package".to_owned(), "installed for exporter pg already (nodes.host[0].exporters[0]); a host runs one unit per package"),
            // Probes.
            ("{ name = \"r\", package = \"prometheus-redis-exporter\", probes = [] }", String::new(), "monitor.exporters[0].probes".to_owned(), "prometheus-redis-exporter does not probe; only prometheus-blackbox-exporter does"),
            ("", format!("{{ {BB}, probes = [] }}"), format!("{node}.probes"), "move this exporter to [monitor] exporters"),
            (&probe("{ host = \"db-1\", port = 80, path = \"health\" }"), String::new(), format!("{probe0}.path"), "does not start with '/'"),
            (&probe("{ host = \"db-1\", port = 80, path = \"/a b\" }"), String::new(), format!("{probe0}.path"), "has ' '"),
            (&probe("{ host = \"db-1\", port = 80, path = \"/a#b\" }"), String::new(), format!("{probe0}.path"), "has '#'"),
            (&probe("{ host = \"db-1\", port = 80, path = \"/a\\\"b\" }"), String::new(), format!("{probe0}.path"), "without spaces, quotes or '#'"),
            (&probe("{ host = \"db-1\", port = 80, module = \"HTTP\" }"), String::new(), format!("{probe0}.module"), "not a module name"),
            (&probe("{ host = \"db-1\", port = 80, module = \"\" }"), String::new(), format!("{probe0}.module"), "not a module name"),
            (&probe("{ host = \"web-9\", port = 80 }"), String::new(), format!("{probe0}.host"), "no host of the config is called web-9"),
            (&probe("{ host = \"Web 1\", port = 80 }"), String::new(), format!("{probe0}.host"), "invalid host name"),
            (&probe("{ host = \"db-1\", port = 70000 }"), String::new(), format!("{probe0}.port"), "between 1 and 65535"),
            (&probe("{ host = \"db-1\", port = 9100 }"), String::new(), format!("{probe0}.port"), "port 9100 is exporter node_exporter's on db-1"),
            (&probe("{ host = \"db-1\", port = 9187 }"), format!("{{ {PG} }}"), format!("{probe0}.port"), "port 9187 is exporter pg's on db-1"),
            (&probe("{ host = \"db-1\", port = 80 }, { host = \"db-1\", port = 80, path = \"/\", module = \"http_2xx\" }"), String::new(), "monitor.exporters[0].probes[1]".to_owned(), "the same endpoint with the same module as probes[0]"),
            (&probe("{ host = \"db-1\", port = 80 }"), "{ name = \"blackbox_probe\", port = 9999 }".to_owned(), "monitor.exporters[0].name".to_owned(), "the Prometheus job \"blackbox_probe\", which is also the name of an exporter on db-1"),
        ] {
            let text = with(monitor, &node_exporters);
            let err = error(&text);
            assert!(
                err.contains(&format!("{field}: ")) && err.contains(wanted),
                "{text}\n{err}"
            );
        }
        // The env values serde refuses, with their line.
        for (setting, wanted) in [
            ("A = {}", "the table is empty"),
            ("A = { file = \"a\", env = \"B\" }", "not both"),
            (
                "A = { path = \"a\" }",
                "unknown field `path`, expected `file` or `env`",
            ),
            (
                "A = 1",
                "a string, { file = \"path\" } or { env = \"VARIABLE\" }",
            ),
        ] {
            let err = error(&with("", &env(setting)));
            assert!(
                err.contains(wanted) && err.contains("line 6"),
                "{setting}: {err}"
            );
        }
        let err = error(&with(&probe("{ host = \"db-1\" }"), String::new().as_str()));
        assert!(err.contains("missing field `port`"), "{err}");
    }

    #[test]
    fn managed_exporter_errors_of_lists_and_monitors() {
        // A package of the shared list again in a host's own.
        let err = error(
            "[nodes]\nexporters = [{ name = \"redis\", package = \"prometheus-redis-exporter\" }]\n\
             [[nodes.host]]\nname = \"a\"\nregion = \"lon1\"\n\
             [[nodes.host]]\nname = \"b\"\nregion = \"lon1\"\n\
             exporters = [{ name = \"redis2\", package = \"prometheus-redis-exporter\", port = 9999 }]\n",
        );
        assert!(
            err.contains("nodes.host[1].exporters[0].package: ")
                && err.contains("exporter redis already (nodes.exporters[0])"),
            "{err}"
        );
        let err = error(
            "[nodes]\nexporters = [{ name = \"a\", package = \"prometheus-redis-exporter\" }, { name = \"b\", package = \"prometheus-redis-exporter\", port = 1 }]\n",
        );
        assert!(err.contains("nodes.exporters[1].package: "), "{err}");
        let err = error(
            "[monitor]\nexporters = [{ name = \"a\", package = \"prometheus-redis-exporter\" }, { name = \"b\", package = \"prometheus-redis-exporter\", port = 1 }]\n",
        );
        assert!(err.contains("monitor.exporters[1].package: "), "{err}");
        // The same package on two hosts is two units.
        parse("[nodes]\nexporters = [{ name = \"redis\", package = \"prometheus-redis-exporter\" }]\n")
            .unwrap();
        // Shared exporters do not probe.
        let err = error(
            "[nodes]\nexporters = [{ name = \"bb\", package = \"prometheus-blackbox-exporter\", probes = [] }]\n",
        );
        assert!(err.contains("nodes.exporters[0].probes: "), "{err}");
        // Probes need PromGuard's own Prometheus; the exporter alone does not.
        let existing = "[monitor]\naddress = \"192.0.2.1\"\nprometheus = \"existing\"\n";
        let err = error(&format!(
            "{existing}exporters = [{{ name = \"bb\", package = \"prometheus-blackbox-exporter\", probes = [{{ host = \"promguard-node-1\", port = 80 }}] }}]\n"
        ));
        assert!(
            err.contains("monitor.exporters[0].probes: ")
                && err.contains("need PromGuard's own Prometheus"),
            "{err}"
        );
        parse(&format!(
            "{existing}exporters = [{{ name = \"bb\", package = \"prometheus-blackbox-exporter\" }}]\n"
        ))
        .unwrap();
        // The process exporter with one of its arguments.
        let c = parse(
            "[nodes]\nexporters = [{ name = \"procs\", package = \"prometheus-process-exporter\", args = [\"-procnames=sshd,postgres\"] }]\n",
        )
        .unwrap();
        assert_eq!(c.nodes[0].exporters[0].port.get(), 9256);
    }

    #[test]
    fn prometheus_is_a_reserved_exporter_name() {
        let err = error("[nodes]\nexporters = [{ name = \"prometheus\", port = 9999 }]\n");
        assert!(
            err.contains("nodes.exporters[0].name") && err.contains("reserved"),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn several_monitors_are_named_from_their_prefix() {
        let c =
            parse("[monitor]\nshards = [\"a\", \"b\"]\nreplicas = 2\nregion = \"fra1\"\n").unwrap();
        let names: Vec<String> = c
            .monitors()
            .iter()
            .map(|m| {
                format!(
                    "{} {:?} {}",
                    m.host.name,
                    m.shard.map(|s| s.as_str()),
                    m.replica
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "promguard-monitor-a-1 Some(\"a\") 1",
                "promguard-monitor-a-2 Some(\"a\") 2",
                "promguard-monitor-b-1 Some(\"b\") 1",
                "promguard-monitor-b-2 Some(\"b\") 2"
            ]
        );
        assert!(c
            .monitors()
            .iter()
            .all(|m| m.host.region.as_str() == "fra1"));
        assert_eq!(c.hosts().count(), 7);
    }

    #[test]
    fn several_monitors_storage_and_remote_write_refuse_what_cannot_work() {
        for (text, wanted) in [
            ("[monitor]\nreplicas = 2\nname = \"m\"\n", "set monitor.name_prefix instead"),
            ("[monitor]\nreplicas = 0\n", "monitor.replicas"),
            ("[monitor]\nreplicas = 10\n", "from 1 to 9"),
            ("[monitor]\nshards = [\"a\", \"a\"]\n", "monitor.shards"),
            ("[monitor]\nshards = [\"A b\"]\n", "monitor.shards[0]"),
            ("[monitor]\nname_prefix = \"m\"\n", "monitor.name_prefix"),
            (
                "[monitor]\nreplicas = 2\naddress = \"192.0.2.1\"\n",
                "several monitors are hosts PromGuard creates",
            ),
            ("[remote_write]\n", "remote_write.url: is missing"),
            (
                "[storage]\n[remote_write]\nurl = \"https://vm.example.com/api/v1/write\"\n",
                "already write to the [storage] host",
            ),
            (
                "[storage]\n[remote_write]\nbearer_token_env = \"T\"\n",
                "reached over WireGuard",
            ),
            (
                "[remote_write]\nurl = \"ftp://x/\"\n",
                "does not start with http",
            ),
            (
                "[remote_write]\nurl = \"https://x/w\"\npassword_env = \"P\"\n",
                "needs a user name",
            ),
            (
                "[remote_write]\nurl = \"https://x/w\"\nusername = \"u\"\n",
                "give the password",
            ),
            (
                "[remote_write]\nurl = \"https://x/w\"\nusername = \"u\"\npassword_env = \"P\"\nbearer_token_env = \"T\"\n",
                "not both",
            ),
            (
                "[remote_write]\nurl = \"https://x/w\"\nbearer_token_env = \"T\"\nbearer_token_file = \"t\"\n",
                "not both",
            ),
            ("[storage]\nretention_days = 0\n", "storage.retention_days"),
            ("[storage]\nport = 9100\n", "clashes"),
            ("[storage]\nname = \"promguard-node-1\"\n", "duplicate host name"),
            ("[deployment]\nsubnet = \"10.0.0.0/30\"\n[monitor]\nreplicas = 2\n", "room for 2"),
        ] {
            let err = error(text);
            assert!(err.contains(wanted), "{text:?}: {err}");
        }
    }

    #[test]
    fn remote_write_secrets_come_from_files_or_the_environment() {
        use crate::topology::RemoteWriteAuth;
        let c = parse(
            "[remote_write]\nurl = \"https://vm.example.com/api/v1/write\"\nusername = \"pg\"\npassword_file = \"rw.pw\"\nca_file = \"ca.pem\"\n",
        )
        .unwrap();
        let rw = c.remote_write.unwrap();
        assert_eq!(
            rw.auth,
            RemoteWriteAuth::Basic {
                username: "pg".into(),
                password: SettingSource::File("rw.pw".into())
            }
        );
        assert_eq!(rw.ca_file, Some(PathBuf::from("ca.pem")));
        let c = parse("[storage]\n").unwrap();
        let rw = c.remote_write.unwrap();
        assert_eq!((rw.url, rw.auth), (None, RemoteWriteAuth::None));
    }
}
