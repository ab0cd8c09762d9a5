//! Exporters the recipe installs from Debian packages
//! ([`promguard_core::exporters`]): their files and command lines.
//!
//! On a systemd host an exporter is its package's own unit, configured
//! through Debian's environment file `/etc/default/<package>` (`ARGS` and
//! the exporter's variables), plus a drop-in that orders it after the
//! WireGuard interface: it binds to the interface's address, which does
//! not exist before `wg-quick@<if>` has run, so without the ordering it
//! fails at every boot. Without systemd the same variables live in
//! `/etc/promguard/exporters/<package>.env` (the host's `/etc/default` may
//! be the machine's own) and the supervisor starts the binary with them.

use std::fmt::Write as _;
use std::net::SocketAddr;

use promguard_core::exporters::{DebianPackage, EnvName, SettingValue};
use promguard_core::{ExporterName, InterfaceName};

use super::{DesiredFile, FileKind};

/// Where the environment files of exporters live on hosts without
/// systemd.
pub const PLAIN_ENV_DIR: &str = "/etc/promguard/exporters";

/// One exporter the recipe installs, configures and runs.
#[derive(Clone, PartialEq, Eq)]
pub struct ManagedExporter {
    /// Its name in the config (the Prometheus job).
    pub name: ExporterName,
    /// The Debian package.
    pub package: DebianPackage,
    /// Where it listens: the host's WireGuard address and its port.
    pub listen: SocketAddr,
    /// Its arguments besides `--web.listen-address` (each checked by
    /// [`promguard_core::exporters::check_arg`]).
    pub args: Vec<String>,
    /// Its environment variables, with their values.
    pub settings: Vec<(EnvName, SettingValue)>,
    /// The flag that sets its listen address (`--web.listen-address`).
    pub listen_flag: String,
    /// The flag that sets its data directory, for a server that keeps
    /// data ([`promguard_core::exporters::KnownExporter::data_dir_flag`]).
    pub data_dir_flag: Option<String>,
}

/// Where a server keeps its data on a host without systemd: in the
/// host's own `/var/lib/prometheus` (the package's directory may be the
/// machine's).
pub const PLAIN_DATA_ROOT: &str = "/var/lib/prometheus";

// Values may be secrets; SettingValue's Debug redacts them.
impl std::fmt::Debug for ManagedExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedExporter")
            .field("name", &self.name)
            .field("package", &self.package)
            .field("listen", &self.listen)
            .field("args", &self.args)
            .field("settings", &self.settings)
            .field("listen_flag", &self.listen_flag)
            .field("data_dir_flag", &self.data_dir_flag)
            .finish()
    }
}

/// The drop-in of the exporter of `package` on a systemd host (the facts
/// script finds exporters to retire by it).
pub fn dropin_path(package: &DebianPackage) -> String {
    format!("/etc/systemd/system/{}.d/promguard.conf", package.unit())
}

/// The environment file of the exporter of `package` on a host without
/// systemd (found by the facts script too).
pub fn plain_env_path(package: &DebianPackage) -> String {
    format!("{PLAIN_ENV_DIR}/{package}.env")
}

impl ManagedExporter {
    /// The name of its daemon in facts and PID files: the package's.
    pub fn daemon(&self) -> &str {
        self.package.as_str()
    }

    /// Its binary.
    pub fn binary(&self) -> String {
        self.package.binary()
    }

    /// Its systemd unit.
    pub fn unit(&self) -> String {
        self.package.unit()
    }

    /// Its environment file on a systemd host (Debian's).
    pub fn defaults_path(&self) -> String {
        self.package.defaults_path()
    }

    /// Its drop-in on a systemd host.
    pub fn dropin_path(&self) -> String {
        dropin_path(&self.package)
    }

    /// Its environment file on a host without systemd.
    pub fn plain_env_path(&self) -> String {
        plain_env_path(&self.package)
    }

    /// Every path the recipe may write for it, whatever the host's init
    /// (the facts hash them before the init is known).
    pub fn paths(&self) -> [String; 3] {
        [
            self.defaults_path(),
            self.dropin_path(),
            self.plain_env_path(),
        ]
    }

    /// Its whole command line's arguments on a systemd host: the listen
    /// address first, then its data directory (the package's own), then
    /// the rest.
    pub fn full_args(&self) -> Vec<String> {
        self.args_for(true)
    }

    /// Its data directory: the package's under systemd, else one in
    /// [`PLAIN_DATA_ROOT`].
    pub fn data_dir(&self, systemd: bool) -> String {
        if systemd {
            format!("/var/lib/{}", self.package)
        } else {
            format!("{PLAIN_DATA_ROOT}/{}", self.package)
        }
    }

    /// Its whole command line's arguments on a host with or without
    /// systemd.
    pub fn args_for(&self, systemd: bool) -> Vec<String> {
        std::iter::once(format!("{}={}", self.listen_flag, self.listen))
            .chain(
                self.data_dir_flag
                    .iter()
                    .map(|flag| format!("{flag}={}", self.data_dir(systemd))),
            )
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// True when a setting is a secret: its file is then 0600 (systemd and
    /// the supervisor read it as root before the exporter drops to its
    /// user).
    pub fn has_secrets(&self) -> bool {
        self.settings.iter().any(|(_, v)| v.is_secret())
    }

    /// The environment file: `ARGS` in double quotes (its words are plain,
    /// [`promguard_core::exporters::check_arg`]), each variable in single
    /// quotes (its value holds none, [`promguard_core::exporters::check_value`]),
    /// which systemd's `EnvironmentFile=` and `sh`'s `.` read alike.
    /// `redact` replaces secret values by `<redacted>`, for `render`.
    pub fn env_file_content(&self, redact: bool) -> String {
        let mut text = format!(
            "# Managed by PromGuard: {} ({}), bound to the WireGuard address.\nARGS=\"{}\"\n",
            self.name,
            self.package,
            self.full_args().join(" ")
        );
        for (name, value) in &self.settings {
            let shown = if redact && value.is_secret() {
                "<redacted>"
            } else {
                value.expose()
            };
            let _ = writeln!(text, "{name}='{shown}'");
        }
        text
    }

    /// The files a host gets for it: on a systemd host the environment
    /// file and the drop-in, otherwise the environment file only.
    pub fn files(&self, systemd: bool, interface: &InterfaceName) -> Vec<DesiredFile> {
        let mode = if self.has_secrets() { 0o600 } else { 0o644 };
        let content = self.env_file_content(false);
        if !systemd {
            return vec![DesiredFile::new(
                FileKind::ExporterEnv,
                self.plain_env_path(),
                mode,
                content,
            )];
        }
        let wg_unit = format!("wg-quick@{interface}.service");
        vec![
            DesiredFile::new(FileKind::ExporterEnv, self.defaults_path(), mode, content),
            DesiredFile::new(
                FileKind::ExporterDropIn,
                self.dropin_path(),
                0o644,
                format!(
                    "# Managed by PromGuard: {} binds to the WireGuard address.\n\
                     [Unit]\nWants={wg_unit}\nAfter={wg_unit}\n\n\
                     [Service]\nRestart=on-failure\nRestartSec=2\n",
                    self.package
                ),
            ),
        ]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A postgres exporter on node-1 whose data source holds a password.
    pub(crate) fn postgres() -> ManagedExporter {
        ManagedExporter {
            name: ExporterName::new("postgres").unwrap(),
            package: DebianPackage::new("prometheus-postgres-exporter").unwrap(),
            listen: "10.0.0.2:9187".parse().unwrap(),
            args: vec!["--log.level=warn".into()],
            settings: vec![(
                EnvName::new("DATA_SOURCE_NAME").unwrap(),
                SettingValue::new("postgresql://pg:hunter2@127.0.0.1/postgres".into(), true)
                    .unwrap(),
            )],
            listen_flag: "--web.listen-address".into(),
            data_dir_flag: None,
        }
    }

    #[test]
    fn files_of_a_systemd_host() {
        let e = postgres();
        let files = e.files(true, &InterfaceName::new("wg0").unwrap());
        let text: String = files
            .iter()
            .map(|f| {
                format!(
                    "== {} ({:04o})\n{}",
                    f.path,
                    f.mode,
                    String::from_utf8_lossy(&f.content)
                )
            })
            .collect();
        expect_test::expect![[r#"
            == /etc/default/prometheus-postgres-exporter (0600)
            # Managed by PromGuard: postgres (prometheus-postgres-exporter), bound to the WireGuard address.
            ARGS="--web.listen-address=10.0.0.2:9187 --log.level=warn"
            DATA_SOURCE_NAME='postgresql://pg:hunter2@127.0.0.1/postgres'
            == /etc/systemd/system/prometheus-postgres-exporter.service.d/promguard.conf (0644)
            # Managed by PromGuard: prometheus-postgres-exporter binds to the WireGuard address.
            [Unit]
            Wants=wg-quick@wg0.service
            After=wg-quick@wg0.service

            [Service]
            Restart=on-failure
            RestartSec=2
        "#]]
        .assert_eq(&text);
        let plain = e.files(false, &InterfaceName::new("wg0").unwrap());
        assert_eq!(plain.len(), 1);
        assert_eq!(
            plain[0].path,
            "/etc/promguard/exporters/prometheus-postgres-exporter.env"
        );
        assert_eq!(plain[0].mode, 0o600);
    }

    #[test]
    fn secrets_are_redacted_for_render_and_debug() {
        let e = postgres();
        assert!(!e.env_file_content(true).contains("hunter2"));
        assert!(e
            .env_file_content(true)
            .contains("DATA_SOURCE_NAME='<redacted>'"));
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    /// The environment file reads back the same in a real shell, which is
    /// how the supervisor loads it (systemd's reader follows the same
    /// quoting rules for these values).
    #[test]
    fn the_env_file_reads_back_in_sh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        let mut e = postgres();
        e.settings[0].1 = SettingValue::new("a \"b\" $HOME `id` \\ ; #c".into(), true).unwrap();
        std::fs::write(&path, e.env_file_content(false)).unwrap();
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                "set -a; . \"$1\"; set +a; printf '%s|%s' \"$DATA_SOURCE_NAME\" \"$ARGS\"",
                "sh",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a \"b\" $HOME `id` \\ ; #c|--web.listen-address=10.0.0.2:9187 --log.level=warn"
        );
    }
}
