//! Exporters PromGuard installs from Debian packages: what the config says
//! about one ([`ManagedExporter`]), what the Debian packages it knows need
//! ([`KnownExporter`]), and what a host gets ([`PackagedExporter`]).
//!
//! Debian's `prometheus-*-exporter` packages share one shape, which the
//! recipe relies on: the binary is `/usr/bin/<package>`, the unit
//! `<package>.service` runs it as `prometheus` with the arguments in
//! `$ARGS` of the environment file `/etc/default/<package>`, and every one
//! takes `--web.listen-address`. An exporter's settings are the variables
//! of that file (the postgres exporter's `DATA_SOURCE_NAME`, the redis
//! exporter's `REDIS_PASSWORD`, ...) and extra arguments.

use std::fmt;
use std::path::PathBuf;

use crate::names::{ExporterName, HostName, NameError, Port};

/// A Debian package name (policy 5.6.1: lowercase letters, digits, `+`,
/// `-` and `.`, at least two characters, starting with a letter or digit).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DebianPackage(String);

impl DebianPackage {
    /// Checks `value` and wraps it.
    pub fn new(value: &str) -> Result<Self, NameError> {
        let ok = value.len() >= 2
            && value.len() <= 100
            && value
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(NameError::invalid(
                "Debian package name",
                value,
                "must be 2-100 lowercase letters, digits, '+', '-' or '.', starting with a letter or digit",
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The exporter's binary, as Debian's exporter packages install it.
    pub fn binary(&self) -> String {
        format!("/usr/bin/{}", self.0)
    }

    /// Its systemd unit.
    pub fn unit(&self) -> String {
        format!("{}.service", self.0)
    }

    /// Its environment file (`ARGS` and the exporter's own variables).
    pub fn defaults_path(&self) -> String {
        format!("/etc/default/{}", self.0)
    }
}

impl fmt::Display for DebianPackage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DebianPackage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// An environment variable name: `[A-Z_][A-Z0-9_]*`, at most 64 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvName(String);

impl EnvName {
    /// Checks `value` and wraps it.
    pub fn new(value: &str) -> Result<Self, NameError> {
        let ok = !value.is_empty()
            && value.len() <= 64
            && !value.as_bytes()[0].is_ascii_digit()
            && value
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(NameError::invalid(
                "environment variable name",
                value,
                "must be uppercase letters, digits and '_', not starting with a digit, at most 64 characters",
            ));
        }
        if value == "ARGS" {
            return Err(NameError::invalid(
                "environment variable name",
                value,
                "ARGS holds the exporter's arguments: give them in `args`",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Where a setting's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingSource {
    /// Written in the config: not a secret, shown by `render`.
    Value(String),
    /// A file (relative to the config's directory), read by the caller: a
    /// secret.
    File(PathBuf),
    /// An environment variable of the caller's: a secret.
    Env(String),
}

impl SettingSource {
    /// True for values read from a file or the environment, which are
    /// never shown.
    pub fn is_secret(&self) -> bool {
        !matches!(self, SettingSource::Value(_))
    }
}

impl fmt::Display for SettingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingSource::Value(v) => write!(f, "{v:?}"),
            SettingSource::File(p) => write!(f, "<secret from file {}>", p.display()),
            SettingSource::Env(v) => write!(f, "<secret from ${v}>"),
        }
    }
}

/// A setting's value once the caller has read it. `Debug` never shows a
/// secret one.
#[derive(Clone, PartialEq, Eq)]
pub struct SettingValue {
    value: String,
    secret: bool,
}

impl SettingValue {
    /// Checks `value` (one line, no `'`, no control characters: it is
    /// written single-quoted into an environment file) and wraps it.
    pub fn new(value: String, secret: bool) -> Result<Self, String> {
        if let Err(reason) = check_value(&value) {
            // Never echo a secret in the reason.
            return Err(reason.to_owned());
        }
        Ok(Self { value, secret })
    }

    /// The value itself, for the file on the host.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// True when it came from a file or the environment.
    pub fn is_secret(&self) -> bool {
        self.secret
    }
}

impl fmt::Debug for SettingValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            f.write_str("SettingValue(<redacted>)")
        } else {
            write!(f, "SettingValue({:?})", self.value)
        }
    }
}

/// Why `value` cannot be a setting (a static reason that never quotes it).
pub fn check_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("the value is empty");
    }
    if value.len() > 4096 {
        return Err("the value is longer than 4096 bytes");
    }
    if value.chars().any(|c| c.is_control()) {
        return Err("the value has a newline or another control character");
    }
    if value.contains('\'') {
        return Err(
            "the value has a single quote (') which an environment file cannot hold quoted",
        );
    }
    Ok(())
}

/// Why `arg` cannot be an exporter argument: `$ARGS` is split on
/// whitespace by systemd and unquoted, so an argument is one word of
/// printable ASCII without quotes, `\`, `$` or `` ` ``.
pub fn check_arg(arg: &str) -> Result<(), String> {
    if arg.is_empty() || arg.len() > 1024 {
        return Err("an argument is 1 to 1024 characters".into());
    }
    if let Some(c) = arg
        .chars()
        .find(|c| !c.is_ascii_graphic() || "\"'\\$`".contains(*c))
    {
        return Err(format!(
            "{arg:?} has {c:?}: an argument is one word of printable characters without quotes, '\\', '$' or '`' (systemd splits $ARGS on spaces and does not unquote it); put a value with such characters in `env`"
        ));
    }
    let flag = arg.trim_start_matches('-');
    for own in [WEB_LISTEN_FLAG, STORAGE_ENGINE.listen_flag] {
        if arg.starts_with('-') && flag.starts_with(own.trim_start_matches('-')) {
            return Err(format!(
                "{arg:?}: PromGuard sets {own} itself (the listen address is the host's WireGuard address and the exporter's port)"
            ));
        }
    }
    Ok(())
}

/// One setting of a managed exporter: a variable of its environment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterSetting {
    /// The variable.
    pub name: EnvName,
    /// Where its value comes from.
    pub source: SettingSource,
    /// The value: set by the planner for [`SettingSource::Value`], by the
    /// caller (who reads files and the environment) for the others.
    pub value: Option<SettingValue>,
}

/// An HTTP endpoint of a host that a blackbox exporter probes over the
/// tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The host whose WireGuard address is probed.
    pub host: HostName,
    /// Its TCP port (the host's firewall lets the prober in on it).
    pub port: Port,
    /// The path, starting with `/`.
    pub path: String,
    /// The blackbox module (`http_2xx` in Debian's `blackbox.yml`).
    pub module: String,
}

/// What the config says about an exporter PromGuard installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedExporter {
    /// The Debian package.
    pub package: DebianPackage,
    /// Extra arguments, after the package's base arguments
    /// ([`KnownExporter::base_args`]).
    pub args: Vec<String>,
    /// Variables of its environment file, sorted by name.
    pub settings: Vec<ExporterSetting>,
    /// For a blackbox exporter, what it probes.
    pub probes: Vec<ProbeSpec>,
}

/// What PromGuard knows about one of Debian's exporter packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownExporter {
    /// The package.
    pub package: &'static str,
    /// Its usual port (the default of `port`).
    pub port: u16,
    /// Arguments it always gets (Debian's own defaults file has them).
    pub base_args: &'static [&'static str],
    /// Variables it cannot run without, and what to say when one is
    /// missing.
    pub required: &'static [(&'static str, &'static str)],
    /// Arguments one of which it needs (argument name prefixes), and what
    /// to say when none is given.
    pub needs_one_arg_of: Option<(&'static [&'static str], &'static str)>,
    /// It probes other hosts (`probes` is allowed).
    pub probes: bool,
    /// The flag that sets its listen address (`--web.listen-address` for
    /// every exporter; servers of other shapes differ).
    pub listen_flag: &'static str,
    /// The flag that sets where it keeps its data, for a server that keeps
    /// any: on a host without systemd the recipe points it into the host's
    /// own state directory, since the package's default may be shared
    /// with the machine.
    pub data_dir_flag: Option<&'static str>,
}

/// The listen flag every Debian exporter package takes.
pub const WEB_LISTEN_FLAG: &str = "--web.listen-address";

/// The exporter packages PromGuard is tested with; any other
/// `prometheus-*-exporter` package of the same shape works through
/// `package`, `port`, `args` and `env`.
pub const KNOWN_EXPORTERS: &[KnownExporter] = &[
    KnownExporter {
        package: "prometheus-postgres-exporter",
        port: 9187,
        base_args: &[],
        required: &[(
            "DATA_SOURCE_NAME",
            "the postgres exporter needs the server to connect to: env = { DATA_SOURCE_NAME = { file = \"pg.dsn\" } } (a file holding e.g. postgresql://user:password@127.0.0.1:5432/postgres?sslmode=disable)",
        )],
        needs_one_arg_of: None,
        probes: false,
        listen_flag: WEB_LISTEN_FLAG,
        data_dir_flag: None,
    },
    KnownExporter {
        package: "prometheus-redis-exporter",
        port: 9121,
        base_args: &[],
        required: &[],
        needs_one_arg_of: None,
        probes: false,
        listen_flag: WEB_LISTEN_FLAG,
        data_dir_flag: None,
    },
    KnownExporter {
        package: "prometheus-nginx-exporter",
        port: 9113,
        base_args: &[],
        required: &[],
        needs_one_arg_of: None,
        probes: false,
        listen_flag: WEB_LISTEN_FLAG,
        data_dir_flag: None,
    },
    KnownExporter {
        package: "prometheus-blackbox-exporter",
        port: 9115,
        base_args: &["--config.file=/etc/prometheus/blackbox.yml"],
        required: &[],
        needs_one_arg_of: None,
        probes: true,
        listen_flag: WEB_LISTEN_FLAG,
        data_dir_flag: None,
    },
    KnownExporter {
        package: "prometheus-process-exporter",
        port: 9256,
        base_args: &[],
        required: &[],
        needs_one_arg_of: Some((
            &["-procnames=", "--procnames=", "-config.path=", "--config.path="],
            "the process exporter needs to know which processes to watch: args = [\"-procnames=sshd,postgres\"] or a -config.path=",
        )),
        probes: false,
        listen_flag: WEB_LISTEN_FLAG,
        data_dir_flag: None,
    },
];

/// What PromGuard knows about `package`, if it is one of
/// [`KNOWN_EXPORTERS`].
pub fn known(package: &DebianPackage) -> Option<&'static KnownExporter> {
    KNOWN_EXPORTERS
        .iter()
        .chain(std::iter::once(&STORAGE_ENGINE))
        .find(|k| k.package == package.as_str())
}

/// The time-series engine PromGuard installs on a storage host
/// (`[storage]`): single-node VictoriaMetrics from Debian, which takes
/// Prometheus' remote_write at `/api/v1/write` and serves the Prometheus
/// query API and its own metrics on the same port. Its package has the
/// exporters' shape (`/usr/bin/<package>`, `$ARGS` from
/// `/etc/default/<package>`) but its own flags.
pub const STORAGE_ENGINE: KnownExporter = KnownExporter {
    package: "victoria-metrics",
    port: 8428,
    base_args: &[],
    required: &[],
    needs_one_arg_of: None,
    probes: false,
    listen_flag: "-httpListenAddr",
    data_dir_flag: Some("-storageDataPath"),
};

/// The Prometheus job of the probes of the exporter called `prober`: its
/// name with `_probe` appended (its own metrics are the job of its name).
pub fn probe_job(prober: &ExporterName) -> String {
    format!("{prober}_probe")
}

/// What a host gets for one managed exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagedExporter {
    /// The Debian package.
    pub package: DebianPackage,
    /// Every argument but `--web.listen-address`: the package's base
    /// arguments, then the config's.
    pub args: Vec<String>,
    /// Its environment file's variables, sorted by name.
    pub settings: Vec<ExporterSetting>,
    /// The flag that sets its listen address ([`KnownExporter::listen_flag`];
    /// [`WEB_LISTEN_FLAG`] for a package PromGuard does not know).
    pub listen_flag: String,
    /// The flag that sets its data directory, if it keeps data
    /// ([`KnownExporter::data_dir_flag`]).
    pub data_dir_flag: Option<String>,
}

impl PackagedExporter {
    /// True when a setting is a secret (its environment file is then
    /// readable by root only, which systemd reads it as).
    pub fn has_secrets(&self) -> bool {
        self.settings.iter().any(|s| s.source.is_secret())
    }

    /// The settings whose value the caller has not read yet.
    pub fn unresolved(&self) -> impl Iterator<Item = &ExporterSetting> {
        self.settings.iter().filter(|s| s.value.is_none())
    }
}

/// What a host gets for `managed`: base arguments first, and the values
/// written in the config already set (the caller reads the secrets).
pub fn packaged(managed: &ManagedExporter) -> PackagedExporter {
    let known = known(&managed.package);
    let base = known.map_or(&[][..], |k| k.base_args);
    PackagedExporter {
        package: managed.package.clone(),
        listen_flag: known.map_or(WEB_LISTEN_FLAG, |k| k.listen_flag).to_owned(),
        data_dir_flag: known.and_then(|k| k.data_dir_flag).map(str::to_owned),
        args: base
            .iter()
            .map(|a| a.to_string())
            .chain(managed.args.iter().cloned())
            .collect(),
        settings: managed
            .settings
            .iter()
            .map(|s| ExporterSetting {
                value: match &s.source {
                    SettingSource::Value(v) => SettingValue::new(v.clone(), false).ok(),
                    _ => s.value.clone(),
                },
                ..s.clone()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        let p = DebianPackage::new("prometheus-postgres-exporter").unwrap();
        assert_eq!(p.binary(), "/usr/bin/prometheus-postgres-exporter");
        assert_eq!(p.unit(), "prometheus-postgres-exporter.service");
        assert_eq!(
            p.defaults_path(),
            "/etc/default/prometheus-postgres-exporter"
        );
        for bad in ["", "a", "Prom", "-x", "a b", "a/b", "a;b", "ä-exporter"] {
            assert!(DebianPackage::new(bad).is_err(), "{bad}");
        }
        assert!(DebianPackage::new("libc6.1-dev+x").is_ok());
    }

    #[test]
    fn env_names() {
        assert!(EnvName::new("DATA_SOURCE_NAME").is_ok());
        for bad in ["", "1X", "a", "A-B", "ARGS", "A B"] {
            assert!(EnvName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments_are_single_plain_words() {
        assert!(check_arg("--redis.addr=redis://127.0.0.1:6379").is_ok());
        assert!(check_arg("-procnames=sshd,postgres").is_ok());
        for bad in ["", "a b", "$(id)", "x'y", "a\"b", "a\\b", "`id`", "a\nb"] {
            assert!(check_arg(bad).is_err(), "{bad:?}");
        }
        let err = check_arg("--web.listen-address=:9187").unwrap_err();
        assert!(err.contains("sets --web.listen-address itself"), "{err}");
        assert!(check_arg("-web.listen-address=0.0.0.0:1").is_err());
    }

    #[test]
    fn secret_values_are_redacted_and_checked_without_echo() {
        let v = SettingValue::new("postgresql://u:hunter2@db/x".into(), true).unwrap();
        assert_eq!(format!("{v:?}"), "SettingValue(<redacted>)");
        let plain = SettingValue::new("redis://x".into(), false).unwrap();
        assert!(format!("{plain:?}").contains("redis://x"));
        let err = SettingValue::new("hunter2'\n".into(), true).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(
            SettingSource::File("pg.dsn".into()).to_string(),
            "<secret from file pg.dsn>"
        );
        assert_eq!(
            SettingSource::Env("PG_DSN".into()).to_string(),
            "<secret from $PG_DSN>"
        );
    }

    #[test]
    fn every_known_package_is_a_valid_name() {
        for k in KNOWN_EXPORTERS {
            let p = DebianPackage::new(k.package).unwrap();
            assert_eq!(known(&p), Some(k));
            for a in k.base_args {
                check_arg(a).unwrap();
            }
        }
    }
}
