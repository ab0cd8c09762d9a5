//! One namespace host: its private directories, its sshd, and its init.
//!
//! A host is a network namespace (made by the caller) plus a mount, PID, UTS
//! and IPC namespace made by `unshare`, whose PID 1 is a shell that mounts
//! the host's private directories and then becomes `sshd -D`. OpenSSH's
//! listener reaps every child it gets (its SIGCHLD handler loops on
//! `waitpid(-1)`), so orphans that are re-parented to it do not stay
//! zombies, and no separate init is needed.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use promguard_core::{HostName, Port, SshPublicKey};

use super::net::{netns_path, run, run_in_netns};
use super::preflight::SEARCH_PATH;
use super::process::{children, InitProcess};
use super::record::create_private_dir;

/// Directories of the host directory that are bind-mounted over the same
/// paths as seen inside the host, in mount order. Directories, never single
/// files: a bind-mounted file cannot be replaced by rename.
pub(crate) const BINDS: &[(&str, &str)] = &[
    ("etc-wireguard", "/etc/wireguard"),
    ("etc-prometheus", "/etc/prometheus"),
    ("var-lib-prometheus", "/var/lib/prometheus"),
    ("etc-promguard", "/etc/promguard"),
    ("var-log-promguard", "/var/log/promguard"),
    ("etc-default", "/etc/default"),
    ("root", "/root"),
    ("tmp", "/tmp"),
];

/// Directories under `/run` (a fresh tmpfs in each host) that programs
/// expect to exist.
const RUN_DIRS: &[&str] = &["/run/sshd", "/run/wireguard", "/run/promguard", "/run/lock"];

/// The shell start-up files of the host's `root`: empty on purpose, so that
/// every command run over SSH starts fast.
const SHELL_RC: &str =
    "# PromGuard local host: intentionally empty so remote commands start fast.\n";

/// The files of one host directory.
#[derive(Debug, Clone)]
pub(crate) struct HostDir {
    pub path: PathBuf,
}

impl HostDir {
    pub fn sshd_config(&self) -> PathBuf {
        self.path.join("sshd_config")
    }

    pub fn host_key(&self) -> PathBuf {
        self.path.join("ssh_host_ed25519_key")
    }

    pub fn console(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// The last part of the host's console log, for error messages.
    pub fn console_tail(&self) -> String {
        let Ok(mut file) = fs::File::open(self.console()) else {
            return "no console log".to_owned();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(1500)));
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let text = text.trim();
        if text.is_empty() {
            "console log is empty".to_owned()
        } else {
            format!("console log {} ends with: {text}", self.console().display())
        }
    }
}

/// What a host is made from.
pub(crate) struct HostSpec<'a> {
    pub name: &'a HostName,
    pub address: Ipv4Addr,
    pub ssh_port: Port,
    pub authorized_keys: &'a [String],
    /// A private host key (OpenSSH format) to use instead of a fresh one.
    pub host_key: Option<&'a str>,
}

pub(crate) fn io_context<'a>(what: &str, path: &'a Path) -> impl FnOnce(io::Error) -> String + 'a {
    let what = what.to_owned();
    move |err| format!("cannot {what} {}: {err}", path.display())
}

pub(crate) fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io_context("create", path))?;
    // The umask may have cleared bits (the sticky bit of tmp, for one).
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_context("chmod", path))
}

/// Writes `text` to `path` (replacing it), with `mode` from its first byte:
/// private host keys are never readable by others, not even briefly.
pub(crate) fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_context("create", parent))?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot replace {}: {e}", path.display())),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_context("create", path))?;
    io::Write::write_all(&mut file, text.as_bytes()).map_err(io_context("write", path))?;
    // The umask may have cleared bits the mode asks for.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_context("chmod", path))
}

/// Copies a directory tree (files, directories, symbolic links) with its
/// modes, so that a host starts with the package's files like a fresh
/// install.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    for entry in fs::read_dir(from).map_err(io_context("read", from))? {
        let entry = entry.map_err(io_context("read", from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&source).map_err(io_context("stat", &source))?;
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&source).map_err(io_context("read", &source))?;
            std::os::unix::fs::symlink(link, &target).map_err(io_context("create", &target))?;
        } else if meta.is_dir() {
            mkdir(&target, meta.mode() & 0o7777)?;
            copy_tree(&source, &target)?;
        } else if meta.is_file() {
            fs::copy(&source, &target).map_err(io_context("copy to", &target))?;
        }
    }
    Ok(())
}

/// Makes an empty copy of a directory's subdirectories, with their owners
/// and modes (`/var/lib/prometheus` has `metrics2` owned by `prometheus`).
fn copy_dir_skeleton(from: &Path, to: &Path) -> Result<(), String> {
    let meta = fs::metadata(from).map_err(io_context("stat", from))?;
    mkdir(to, meta.mode() & 0o7777)?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_context("chown", to))?;
    for entry in fs::read_dir(from).map_err(io_context("read", from))? {
        let entry = entry.map_err(io_context("read", from))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            copy_dir_skeleton(&entry.path(), &to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The sshd configuration of a host. Only what the host needs: root logs in
/// with a key, TCP forwarding stays on for the Prometheus port forward, and
/// nothing reads the machine's own `/etc/ssh/sshd_config`.
///
/// Every run opens one connection to every host, and on this machine all
/// hosts share its cores, so what a connection costs sshd counts: no PAM,
/// no DNS lookup, one host key, and key exchange with ECDH on P-256 only.
/// OpenSSH's curve25519 (the client's first choice) is a portable
/// reference implementation that costs sshd about 4 ms of CPU per
/// connection more than P-256, which OpenSSL computes; both are 128-bit
/// secure. Offering only the NIST curves makes any client pick one; hosts
/// of other providers keep their own sshd's choice.
pub(crate) fn sshd_config(dir: &HostDir, address: Ipv4Addr, port: Port) -> String {
    format!(
        "# Written by PromGuard for a local namespace host.\n\
         ListenAddress {address}:{port}\n\
         HostKey {key}\n\
         KexAlgorithms ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521\n\
         PidFile /run/sshd.pid\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         AuthorizedKeysFile .ssh/authorized_keys\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         UseDNS no\n\
         AllowTcpForwarding yes\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         MaxStartups 100:30:200\n\
         MaxSessions 64\n\
         Subsystem sftp internal-sftp\n",
        key = dir.host_key().display(),
    )
}

/// Quotes `text` for a POSIX shell.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The script PID 1 of a host runs: mount the private directories, name the
/// host, then become sshd. `/proc` and `/sys` are mounted afresh so that
/// they show the host's own processes and interfaces.
///
/// sshd runs with `-r`: it serves each connection from a fork of its
/// listener instead of executing itself again, which saves about 7 ms of
/// CPU per connection (loading sshd, its libraries, its configuration and
/// host key again). The re-execution gives each connection a fresh address
/// space layout, so that what one connection might learn of the memory
/// layout does not help an attack on the next. These hosts are test hosts
/// on this machine, reachable only from the deployment's own bridge, with
/// one login key and nothing but PromGuard's daemons on them, so the
/// saving is worth more here. OpenSSH 9.8 and later always execute a
/// separate per-connection binary and ignore `-r` (with a log line).
pub(crate) fn init_script(dir: &HostDir, name: &HostName) -> String {
    let mut script = String::from("set -e\n");
    script.push_str("mount -t proc proc /proc\n");
    script.push_str("mount -t sysfs sysfs /sys\n");
    script.push_str("mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run\n");
    script.push_str(&format!("mkdir -p {}\n", RUN_DIRS.join(" ")));
    for (sub, target) in BINDS {
        let source = dir.path.join(sub);
        script.push_str(&format!(
            "mount --bind {} {target}\n",
            sh_quote(&source.to_string_lossy())
        ));
    }
    script.push_str(&format!("echo {name} > /proc/sys/kernel/hostname\n"));
    script.push_str(&format!(
        "exec /usr/sbin/sshd -D -e -r -f {}\n",
        sh_quote(&dir.sshd_config().to_string_lossy())
    ));
    script
}

/// Fills the host directory: private directories, `root`'s home with the
/// authorized keys, a fresh SSH host key and the sshd configuration.
/// Returns the host's SSH public key.
pub(crate) fn prepare(dir: &HostDir, spec: &HostSpec<'_>) -> Result<SshPublicKey, String> {
    create_private_dir(&dir.path).map_err(io_context("create", &dir.path))?;
    for (sub, target) in BINDS {
        // The mount point must exist in the machine's file system; only
        // PromGuard's own directories may be missing, and are created empty.
        let target = Path::new(target);
        if !target.exists() {
            mkdir(target, 0o755)?;
        }
        let path = dir.path.join(sub);
        match *sub {
            "etc-wireguard" | "root" => mkdir(&path, 0o700)?,
            "tmp" => mkdir(&path, 0o1777)?,
            "var-lib-prometheus" => copy_dir_skeleton(target, &path)?,
            "etc-prometheus" | "etc-default" => {
                mkdir(&path, 0o755)?;
                copy_tree(target, &path)?;
            }
            _ => mkdir(&path, 0o755)?,
        }
    }
    let home = dir.path.join("root");
    write(&home.join(".bashrc"), SHELL_RC, 0o644)?;
    write(&home.join(".profile"), SHELL_RC, 0o644)?;
    mkdir(&home.join(".ssh"), 0o700)?;
    let mut keys = spec.authorized_keys.join("\n");
    if !keys.is_empty() {
        keys.push('\n');
    }
    write(&home.join(".ssh/authorized_keys"), &keys, 0o600)?;

    let public = install_host_key(&dir.host_key(), spec.host_key, spec.name)?;

    write(
        &dir.sshd_config(),
        &sshd_config(dir, spec.address, spec.ssh_port),
        0o600,
    )?;
    Ok(public)
}

/// Puts an ed25519 SSH host key at `key_path` (and its public half at
/// `<key_path>.pub`): `private` when given (an OpenSSH private key), else
/// a fresh one made by ssh-keygen. Returns the public key.
pub(crate) fn install_host_key(
    key_path: &Path,
    private: Option<&str>,
    name: &HostName,
) -> Result<SshPublicKey, String> {
    let key_text = key_path.to_string_lossy();
    let public_path = key_path.with_extension("pub");
    match private {
        Some(private) => {
            // Written 0600 before ssh-keygen reads it: it refuses keys
            // others can read.
            write(key_path, private, 0o600)?;
            let public = run("ssh-keygen", &["-y", "-f", &key_text], None)?;
            write(&public_path, &public, 0o644)?;
        }
        None => {
            let comment = format!("root@{name}");
            run(
                "ssh-keygen",
                &[
                    "-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f", &key_text,
                ],
                None,
            )?;
        }
    }
    let public = fs::read_to_string(&public_path).map_err(io_context("read", &public_path))?;
    SshPublicKey::parse(&public).map_err(|err| {
        format!(
            "ssh-keygen wrote an unusable key to {}: {err}",
            public_path.display()
        )
    })
}

/// Starts the host's init in network namespace `netns`, in a session of its
/// own so that it outlives the calling process. Returns PID 1 of the new PID
/// namespace.
pub(crate) fn start_init(
    dir: &HostDir,
    name: &HostName,
    netns: &str,
) -> Result<InitProcess, String> {
    let ns_path = netns_path(netns);
    let ns: OwnedFd = fs::File::open(&ns_path)
        .map_err(io_context("open", &ns_path))?
        .into();
    let console_path = dir.console();
    let console = fs::File::create(&console_path).map_err(io_context("create", &console_path))?;
    let console_err = console
        .try_clone()
        .map_err(io_context("open", &console_path))?;
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--pid",
            "--uts",
            "--ipc",
            "--fork",
            // If unshare itself is killed, so is the host.
            "--kill-child",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            &init_script(dir, name),
        ])
        // The caller's environment (tokens, for one) stays out of the host.
        .env_clear()
        .env("PATH", SEARCH_PATH)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err);
    super::net::detach_into_netns(&mut command, ns);
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot start unshare for the host's init: {err}"))?;
    let unshare_pid = child.id() as i32;
    // unshare forks PID 1 of the new PID namespace right away.
    let deadline = Instant::now() + Duration::from_secs(5);
    let init = loop {
        if let Some(&pid) = children(unshare_pid).first() {
            if let Some(init) = InitProcess::of(pid) {
                break init;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the host's init exited at once ({status}); {}",
                dir.console_tail()
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("unshare did not start the host's init within 5 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // unshare waits for the host to end; reap it then, so it does not stay
    // a zombie of a long-running caller. If the caller exits first, the
    // machine's init reaps it.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(init)
}

/// Waits until sshd accepts TCP connections on `addr`, dialling from the
/// hub namespace, while the host's init is alive.
pub(crate) fn wait_for_ssh(
    dir: &HostDir,
    hub_netns: &str,
    addr: SocketAddr,
    init: &InitProcess,
    timeout: Duration,
) -> Result<(), String> {
    let outcome = run_in_netns(&netns_path(hub_netns), || {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(_) => return Ok(()),
                Err(err) => format!("connecting to {addr}: {err}"),
            };
            if !init.is_alive() {
                return Err(format!(
                    "the host's init (pid {}) ended; {}",
                    init.pid,
                    dir.console_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("{last}; {}", dir.console_tail()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    outcome.map_err(|err| err.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_and_sshd_config() {
        let dir = HostDir {
            path: PathBuf::from("/var/lib/promguard/local/demo/hosts/node-1"),
        };
        let name = HostName::new("node-1").unwrap();
        expect_test::expect![[r#"
            set -e
            mount -t proc proc /proc
            mount -t sysfs sysfs /sys
            mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
            mkdir -p /run/sshd /run/wireguard /run/promguard /run/lock
            mount --bind '/var/lib/promguard/local/demo/hosts/node-1/etc-wireguard' /etc/wireguard
            mount --bind '/var/lib/promguard/local/demo/hosts/node-1/etc-prometheus' /etc/prometheus
            mount --bind '/var/lib/promguard/local/demo/hosts/node-1/var-lib-prometheus' /var/lib/prometheus
            mount --bind '/var/lib/promguard/local/demo/hosts/node-1/etc-promguard' /etc/promguard
            mount --bind '/var/lib/promguard/local/demo/hosts/node-1/var-log-promguard' /var/log/promguard
            mount --bind '/var/lib/promguard/local/demo/hosts/node-1/etc-default' /etc/default
            mount --bind '/var/lib/promguard/local/demo/hosts/node-1/root' /root
            mount --bind '/var/lib/promguard/local/demo/hosts/node-1/tmp' /tmp
            echo node-1 > /proc/sys/kernel/hostname
            exec /usr/sbin/sshd -D -e -r -f '/var/lib/promguard/local/demo/hosts/node-1/sshd_config'
        "#]]
        .assert_eq(&init_script(&dir, &name));
        expect_test::expect![[r#"
            # Written by PromGuard for a local namespace host.
            ListenAddress 198.18.0.11:22
            HostKey /var/lib/promguard/local/demo/hosts/node-1/ssh_host_ed25519_key
            KexAlgorithms ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521
            PidFile /run/sshd.pid
            PermitRootLogin prohibit-password
            PubkeyAuthentication yes
            AuthorizedKeysFile .ssh/authorized_keys
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            UseDNS no
            AllowTcpForwarding yes
            X11Forwarding no
            PrintMotd no
            MaxStartups 100:30:200
            MaxSessions 64
            Subsystem sftp internal-sftp
        "#]]
        .assert_eq(&sshd_config(
            &dir,
            Ipv4Addr::new(198, 18, 0, 11),
            Port::new(22).unwrap(),
        ));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("/a b/c'd"), r"'/a b/c'\''d'");
    }

    #[test]
    fn copies_a_tree_with_links_and_modes() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        fs::create_dir(from.path().join("sub")).unwrap();
        fs::write(from.path().join("sub/file"), "x").unwrap();
        fs::set_permissions(
            from.path().join("sub/file"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("sub/file", from.path().join("link")).unwrap();
        copy_tree(from.path(), to.path()).unwrap();
        assert_eq!(fs::read_to_string(to.path().join("link")).unwrap(), "x");
        assert_eq!(
            fs::metadata(to.path().join("sub/file")).unwrap().mode() & 0o777,
            0o640
        );
        assert!(fs::symlink_metadata(to.path().join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
