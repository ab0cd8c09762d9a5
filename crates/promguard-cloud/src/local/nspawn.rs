//! One systemd host: a Debian system booted with `systemd-nspawn --boot`
//! in the host's network namespace, from the shared base image with the
//! host's own overlay on top, plus the package mirror server of its
//! deployment.
//!
//! The host's init, as the provider records it, is a small supervisor
//! shell (in a session of its own) that runs nspawn and runs it again when
//! it exits with 133, which is how nspawn reports a reboot inside the
//! container: a host reboots like a server and comes back without
//! PromGuard. Any other exit ends the supervisor. Killing the supervisor's
//! process group ends nspawn, whose container dies with it; whatever is
//! left in the host's network namespace is ended by the caller.
//!
//! Facts of nspawn that shape this (checked here): without a system bus it
//! needs `--register=no --keep-unit`; with `--network-namespace-path` it
//! drops CAP_NET_ADMIN, which nft, wg and wireguard-go need, so it is
//! given back; a directory can be booted by one nspawn at a time, so every
//! host boots its own overlay.

use std::fs::{self, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use promguard_core::{HostName, Port, SshPublicKey};

use super::host::{install_host_key, io_context, mkdir, write, HostDir};
use super::image::{BaseImage, PackageMirror};
use super::net::netns_path;
use super::preflight::SEARCH_PATH;
use super::process::{children, InitProcess};
use super::record::create_private_dir;
use super::Provided;

/// The port the mirror server listens on, on the hub's bridge address.
pub(crate) const MIRROR_PORT: u16 = 8080;

/// What a systemd host boots with besides the image.
pub(crate) struct SystemdSpec<'a> {
    pub name: &'a HostName,
    pub ssh_port: Port,
    pub authorized_keys: &'a [String],
    /// A host key to use instead of a fresh one, or what cloud-init reads
    /// on first boot (the `user-data` of a NoCloud seed; without it
    /// cloud-init has no data source, as on a server no cloud made).
    pub provided: Provided<'a>,
    /// Where the deployment's package mirror answers.
    pub mirror: Ipv4Addr,
}

impl HostDir {
    /// The host's overlay: everything it changes in the image.
    pub fn upper(&self) -> PathBuf {
        self.path.join("upper")
    }
}

/// A machine id for a new host: 128 random bits in hex.
fn machine_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    let mut urandom = fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?;
    io::Read::read_exact(&mut urandom, &mut bytes).map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Fills a new host's overlay with what makes it this host: its name, a
/// machine id, root's authorized keys, the apt source of the deployment's
/// mirror, and either an SSH host key (made here, or the one given) or,
/// with user data, a cloud-init seed that makes it on first boot as a
/// cloud would. Returns the host's SSH public key when it is known here.
pub(crate) fn prepare(
    dir: &HostDir,
    spec: &SystemdSpec<'_>,
) -> Result<Option<SshPublicKey>, String> {
    create_private_dir(&dir.path).map_err(io_context("create", &dir.path))?;
    let upper = dir.upper();
    // The overlay's directories must match the image's (root-owned, 0755,
    // /root 0700), or the host would see other modes.
    mkdir(&upper, 0o755)?;
    mkdir(&upper.join("etc"), 0o755)?;
    mkdir(&upper.join("etc/ssh"), 0o755)?;
    mkdir(&upper.join("root"), 0o700)?;
    mkdir(&upper.join("root/.ssh"), 0o700)?;
    write(
        &upper.join("etc/hostname"),
        &format!("{}\n", spec.name),
        0o644,
    )?;
    write(
        &upper.join("etc/machine-id"),
        &format!("{}\n", machine_id()?),
        0o444,
    )?;
    write(
        &upper.join("etc/apt/sources.list.d/promguard-local.list"),
        &format!(
            "# The local provider's package mirror, served in the deployment's hub.\n\
             deb [trusted=yes] http://{}:{MIRROR_PORT}/ ./\n",
            spec.mirror
        ),
        0o644,
    )?;
    let mut keys = spec.authorized_keys.join("\n");
    if !keys.is_empty() {
        keys.push('\n');
    }
    write(&upper.join("root/.ssh/authorized_keys"), &keys, 0o600)?;
    if spec.ssh_port.get() != 22 {
        write(
            &upper.join("etc/ssh/sshd_config.d/promguard-local.conf"),
            &format!("# The local provider's SSH port.\nPort {}\n", spec.ssh_port),
            0o644,
        )?;
    }
    if let Provided::UserData(user_data) = spec.provided {
        let seed = upper.join("var/lib/cloud/seed/nocloud");
        // The login keys, as a cloud's metadata carries them (JSON strings
        // are YAML scalars).
        let mut meta = format!(
            "instance-id: {}\nlocal-hostname: {}\npublic-keys:\n",
            machine_id()?,
            spec.name
        );
        for key in spec.authorized_keys {
            meta.push_str(&format!("  - {}\n", serde_json::Value::from(key.as_str())));
        }
        write(&seed.join("meta-data"), &meta, 0o600)?;
        write(&seed.join("user-data"), user_data, 0o600)?;
        return Ok(None);
    }
    // Without user data there is no cloud to configure the host.
    write(
        &upper.join("etc/cloud/cloud-init.disabled"),
        "# PromGuard local host: no cloud made this host.\n",
        0o644,
    )?;
    let key = match spec.provided {
        Provided::HostKey(private) => Some(private),
        _ => None,
    };
    install_host_key(&upper.join("etc/ssh/ssh_host_ed25519_key"), key, spec.name).map(Some)
}

/// The cgroup directories a host's supervisor moves itself into before it
/// runs nspawn, one per hierarchy systemd uses (the `name=systemd` one and
/// the unified one of a hybrid setup, or the single cgroup2 one).
///
/// nspawn with `--keep-unit` makes its own cgroup the container's root, and
/// the container's systemd creates `init.scope`, `system.slice` and a cgroup
/// per unit in it: two hosts started from the same cgroup would share those
/// (seen here: units failing with status 219/CGROUP when hosts booted at
/// once). So every host gets a cgroup of its own, at a fixed place named
/// after its namespace, so that whichever process tears it down finds it.
pub(crate) fn cgroup_dirs(netns: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mounts: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.to_owned()]
    } else {
        ["systemd", "unified"]
            .iter()
            .map(|h| root.join(h))
            .filter(|p| p.join("cgroup.procs").exists())
            .collect()
    };
    mounts
        .into_iter()
        .map(|m| m.join("promguard.local").join(netns))
        .collect()
}

/// Removes a host's cgroups (every cgroup its container made below them,
/// deepest first) once no process is left in them.
pub(crate) fn remove_cgroups(netns: &str) -> Result<(), String> {
    fn remove(dir: &Path) -> Result<(), String> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read cgroup {}: {e}", dir.display())),
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&entry.path())?;
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove cgroup {}: {e}", dir.display())),
        }
    }
    for dir in cgroup_dirs(netns) {
        remove(&dir)?;
    }
    Ok(())
}

/// The supervisor's script: move into the host's own cgroups, boot, and
/// boot again after a reboot (133).
fn supervisor_script(
    image: &BaseImage,
    dir: &HostDir,
    name: &HostName,
    netns: &str,
    cgroup_dirs: &[PathBuf],
) -> String {
    let quote = |p: &Path| format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"));
    let mut cgroups = String::new();
    for cg in cgroup_dirs {
        cgroups.push_str(&format!(
            "mkdir -p {q} && echo $$ > {q}/cgroup.procs || {{ echo \"promguard: cannot move into cgroup {q}\"; exit 1; }}\n",
            q = quote(cg)
        ));
    }
    format!(
        "{cgroups}while :; do\n\
         systemd-nspawn --quiet --boot --register=no --keep-unit --console=read-only \
         --machine={name} --hostname={name} --network-namespace-path={ns} \
         --capability=CAP_NET_ADMIN --resolv-conf=off --timezone=off --link-journal=no \
         --directory={rootfs} --overlay={rootfs}:{upper}:/\n\
         rc=$?\n\
         echo \"promguard: the host's nspawn exited with $rc\"\n\
         [ \"$rc\" = 133 ] || exit \"$rc\"\n\
         done\n",
        ns = quote(&netns_path(netns)),
        rootfs = quote(&image.rootfs),
        upper = quote(&dir.upper()),
    )
}

/// Starts the host's supervisor in a session of its own, output appended
/// to the console log. Returns the supervisor's process.
pub(crate) fn start(
    image: &BaseImage,
    dir: &HostDir,
    name: &HostName,
    netns: &str,
) -> Result<InitProcess, String> {
    let console_path = dir.console();
    let console = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&console_path)
        .map_err(io_context("open", &console_path))?;
    let console_err = console
        .try_clone()
        .map_err(io_context("open", &console_path))?;
    let mut command = Command::new("/bin/sh");
    command
        .args([
            "-c",
            &supervisor_script(image, dir, name, netns, &cgroup_dirs(netns)),
        ])
        .env_clear()
        .env("PATH", SEARCH_PATH)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err);
    // SAFETY: the closure makes one system call (setsid) between fork and
    // exec; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot start the host's supervisor: {err}"))?;
    let pid = child.id() as i32;
    let init = InitProcess::of(pid).ok_or_else(|| {
        format!(
            "the host's supervisor exited at once; {}",
            dir.console_tail()
        )
    })?;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(init)
}

/// PID 1 of the host's container (its systemd), while it runs: the child
/// of the supervisor's nspawn that lives in a PID namespace of its own.
pub(crate) fn container_init(init: &InitProcess) -> Option<u32> {
    if !init.is_alive() {
        return None;
    }
    let nspawn = *children(init.pid).first()?;
    let own = fs::read_link(format!("/proc/{nspawn}/ns/pid")).ok()?;
    children(nspawn)
        .into_iter()
        .find(|pid| fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns != own))
        .map(|pid| pid as u32)
}

/// Ends a host: its supervisor and nspawn (one process group), then the
/// container's init, which takes every process of the container with it
/// (the container outlives a killed nspawn). By PID only. Returns the
/// processes to wait for.
pub(crate) fn kill(init: &InitProcess) -> Vec<InitProcess> {
    let nspawn = children(init.pid)
        .first()
        .and_then(|pid| InitProcess::of(*pid))
        .filter(|_| init.is_alive());
    let container = container_init(init).and_then(|pid| InitProcess::of(pid as i32));
    if init.is_alive() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(init.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(container) = container {
        container.kill();
    }
    nspawn.into_iter().chain(container).collect()
}

/// The mirror server of a deployment: busybox's httpd serving `mirror` on
/// `address` inside the hub namespace, in a session of its own.
pub(crate) fn start_mirror_server(
    mirror: &PackageMirror,
    hub_netns: &str,
    address: Ipv4Addr,
    log: &Path,
) -> Result<InitProcess, String> {
    let ns_path = netns_path(hub_netns);
    let ns: OwnedFd = fs::File::open(&ns_path)
        .map_err(io_context("open", &ns_path))?
        .into();
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(io_context("open", log))?;
    let err = out.try_clone().map_err(io_context("open", log))?;
    let listen = format!("{address}:{MIRROR_PORT}");
    let mut command = Command::new("busybox");
    command
        .args(["httpd", "-f", "-p", &listen, "-h"])
        .arg(&mirror.dir)
        .env_clear()
        .env("PATH", SEARCH_PATH)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    super::net::detach_into_netns(&mut command, ns);
    let mut child = command.spawn().map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => {
            "busybox is not installed (its httpd serves the package mirror); install it with \
             `apt-get install busybox`"
                .to_owned()
        }
        _ => format!("cannot start the package mirror server: {err}"),
    })?;
    let pid = child.id() as i32;
    let server = InitProcess::of(pid)
        .ok_or_else(|| "the package mirror server exited at once".to_owned())?;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    // Wait until it accepts connections, dialling from the hub.
    let addr = std::net::SocketAddr::new(address.into(), MIRROR_PORT);
    let ready = super::net::run_in_netns(&ns_path, || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    })
    .map_err(|e| e.to_string())?;
    if !ready || !server.is_alive() {
        server.kill();
        return Err(format!(
            "the package mirror server did not answer on {addr} within 10 s; see {}",
            log.display()
        ));
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisor_boots_again_after_a_reboot() {
        let image = BaseImage {
            rootfs: PathBuf::from("/var/cache/promguard/debian-12-v1/rootfs"),
        };
        let dir = HostDir {
            path: PathBuf::from("/var/lib/promguard/local/d/hosts/node-1"),
        };
        let script = supervisor_script(
            &image,
            &dir,
            &HostName::new("node-1").unwrap(),
            "pg-d-1",
            &[PathBuf::from(
                "/sys/fs/cgroup/systemd/promguard.local/pg-d-1",
            )],
        );
        expect_test::expect![[r#"
            mkdir -p '/sys/fs/cgroup/systemd/promguard.local/pg-d-1' && echo $$ > '/sys/fs/cgroup/systemd/promguard.local/pg-d-1'/cgroup.procs || { echo "promguard: cannot move into cgroup '/sys/fs/cgroup/systemd/promguard.local/pg-d-1'"; exit 1; }
            while :; do
            systemd-nspawn --quiet --boot --register=no --keep-unit --console=read-only --machine=node-1 --hostname=node-1 --network-namespace-path='/run/netns/pg-d-1' --capability=CAP_NET_ADMIN --resolv-conf=off --timezone=off --link-journal=no --directory='/var/cache/promguard/debian-12-v1/rootfs' --overlay='/var/cache/promguard/debian-12-v1/rootfs':'/var/lib/promguard/local/d/hosts/node-1/upper':/
            rc=$?
            echo "promguard: the host's nspawn exited with $rc"
            [ "$rc" = 133 ] || exit "$rc"
            done
        "#]]
        .assert_eq(&script);
        let status = Command::new("sh")
            .args(["-n", "-c", &script])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
