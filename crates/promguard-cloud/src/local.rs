//! The local provider: hosts are namespaces on this machine.
//!
//! Each host is a network namespace (`pg-<deployment>-<index>`) with one
//! veth, `eth0`, on a bridge (`br0`) in the deployment's hub namespace
//! (`pg-<deployment>-hub`), plus mount, PID, UTS and IPC namespaces whose
//! PID 1 is the host's own `sshd`. The hosts' "public" addresses come from
//! a /24 of `198.18.0.0/15` that collides with no route of this machine and
//! no other local deployment; the gateway address `.1` sits on the bridge
//! and host `i` gets `.10 + i`. No namespace has a default route, so no
//! packet of a deployment leaves the machine, and the root namespace is
//! never changed: the CLI reaches the hosts through sockets opened inside
//! the hub namespace ([`LocalProvider::connect`]).
//!
//! On disk, `<state_dir>/<deployment>/` (mode 0700) holds `deployment.json`
//! and `hosts/<name>/`, the host's private directories that are
//! bind-mounted over `/etc/wireguard`, `/etc/prometheus`,
//! `/var/lib/prometheus`, `/etc/promguard`, `/var/log/promguard`,
//! `/etc/default`, `/root` and `/tmp` inside the host; `/run` is a tmpfs of
//! its own. Destroying a host kills its PID 1 (recorded with its start time,
//! so a recycled PID is never signalled), which ends every process of the
//! host, then deletes its namespace and directory.

mod host;
pub mod image;
mod net;
mod nspawn;
mod preflight;
mod process;
mod record;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use ipnetwork::Ipv4Network;
use promguard_core::config::LocalHostKind;
use promguard_core::{
    Capabilities, DeploymentName, HostKeys, HostName, Lifecycle, Port, Programs, SshPublicKey,
};

use crate::{CloudError, CloudProvider, Host, HostRequest};
use host::{HostDir, HostSpec};
use image::{BaseImage, PackageMirror};
use record::{DeploymentRecord, HostEntry, HostKind, OutsiderEntry, StateDir};

pub use net::run_in_netns;
pub use preflight::{check as check_programs, Program, REQUIRED_PROGRAMS, SYSTEMD_PROGRAMS};

/// How long a new host's sshd may take to accept connections.
const SSH_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a new systemd host may take to boot as far as sshd (a first
/// boot with cloud-init on a loaded machine takes the longest).
const SYSTEMD_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a killed host may take to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The bridge in the hub namespace.
const BRIDGE: &str = "br0";

/// Where the local provider keeps its files and which SSH port hosts use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOptions {
    /// The state directory; each deployment gets `<state_dir>/<name>/`. It
    /// must not lie under a directory that hosts replace with a private one
    /// (`/tmp`, `/root`, `/run`, ...).
    pub state_dir: PathBuf,
    /// The port each host's sshd listens on.
    pub ssh_port: Port,
    /// What kind of host to make.
    pub hosts: LocalHostKind,
    /// Where systemd hosts' base image and package mirror are cached
    /// (built on first use).
    pub image_cache: PathBuf,
    /// The Debian archive the image and the mirror are built from.
    pub debian_mirror: String,
    /// Packages systemd hosts' mirror holds besides what the recipe
    /// installs ([`image::MIRROR_PACKAGES`]): the software that tests
    /// install on hosts playing servers a user already runs (ufw, say).
    /// Empty by default.
    pub extra_mirror_packages: Vec<String>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/promguard/local"),
            ssh_port: Port::new(22).expect("22 is a valid port"),
            hosts: LocalHostKind::Namespace,
            image_cache: PathBuf::from("/var/cache/promguard/local"),
            debian_mirror: image::DEFAULT_DEBIAN_MIRROR.to_owned(),
            extra_mirror_packages: Vec::new(),
        }
    }
}

/// What a caller hands a new host instead of what the provider makes.
#[derive(Debug, Clone, Copy)]
enum Provided<'a> {
    /// A fresh host key and the registered login keys.
    Nothing,
    /// This private host key (OpenSSH format).
    HostKey(&'a str),
    /// This cloud-init user data (systemd hosts only).
    UserData(&'a str),
}

/// What systemd hosts boot from, built (or found in the cache) once per run.
#[derive(Debug, Clone)]
struct SystemdBoot {
    image: BaseImage,
    mirror: PackageMirror,
}

/// A namespace on a deployment's bridge that is no host of it: no sshd, no
/// processes. Tests run commands in it (`ip netns exec <netns> ...`) to act
/// as "the internet".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outsider {
    /// The name given at creation.
    pub name: HostName,
    /// Its network namespace, a name under `/run/netns`.
    pub netns: String,
    /// Its address on the underlay.
    pub address: Ipv4Addr,
}

/// The local provider for one deployment.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    deployment: DeploymentName,
    options: LocalOptions,
    state: StateDir,
}

/// Paths a host replaces with private ones; the state directory must not
/// be under them, or a host could not see its own files.
const PRIVATE_PATHS: &[&str] = &[
    "/tmp",
    "/root",
    "/run",
    "/proc",
    "/sys",
    "/etc/wireguard",
    "/etc/prometheus",
    "/var/lib/prometheus",
    "/etc/promguard",
    "/var/log/promguard",
    "/etc/default",
];

impl LocalProvider {
    /// A provider for `deployment`; creates nothing until asked. A relative
    /// state directory is taken from the current directory.
    pub fn new(deployment: DeploymentName, options: LocalOptions) -> Self {
        let root = std::path::absolute(&options.state_dir).unwrap_or(options.state_dir.clone());
        Self {
            deployment,
            options,
            state: StateDir { root },
        }
    }

    /// The deployment this provider manages.
    pub fn deployment(&self) -> &DeploymentName {
        &self.deployment
    }

    /// The name of the deployment's hub namespace (it may not exist yet).
    pub fn hub_netns(&self) -> String {
        format!("pg-{}-hub", self.deployment)
    }

    /// The network namespace of host `name`, if the deployment has it.
    pub fn host_netns(&self, name: &HostName) -> Option<String> {
        self.find_host(name).map(|h| h.netns)
    }

    /// The PID (in this machine's PID namespace) of host `name`'s PID 1,
    /// while it runs: `nsenter -t <pid> -a` enters the host. On a systemd
    /// host it is the container's systemd, which changes at every reboot.
    pub fn host_init_pid(&self, name: &HostName) -> Option<u32> {
        let entry = self.find_host(name)?;
        let init = entry.init?;
        match entry.kind {
            HostKind::Namespace => init.is_alive().then_some(init.pid as u32),
            HostKind::Systemd => nspawn::container_init(&init),
        }
    }

    /// The PID of the process that keeps host `name` running, while it
    /// runs: PID 1 of a namespace host, the boot supervisor of a systemd
    /// host (which stays the same across reboots).
    pub fn host_supervisor_pid(&self, name: &HostName) -> Option<u32> {
        let init = self.find_host(name)?.init?;
        init.is_alive().then_some(init.pid as u32)
    }

    /// The console log of host `name` (a systemd host's boot messages,
    /// across reboots).
    pub fn host_console(&self, name: &HostName) -> PathBuf {
        self.host_dir(name).join("console.log")
    }

    /// The directory that holds host `name`'s private directories.
    pub fn host_dir(&self, name: &HostName) -> PathBuf {
        self.state.host_dir(&self.deployment, name)
    }

    /// The deployment's underlay network, once chosen.
    pub fn underlay(&self) -> Option<Ipv4Network> {
        self.load().ok().flatten().and_then(|r| r.underlay)
    }

    fn find_host(&self, name: &HostName) -> Option<HostEntry> {
        self.load()
            .ok()
            .flatten()?
            .hosts
            .into_iter()
            .find(|h| &h.name == name)
    }

    fn deployment_error(&self, message: impl Into<String>) -> CloudError {
        CloudError::Deployment {
            deployment: self.deployment.clone(),
            message: message.into(),
        }
    }

    fn state_error(&self, err: io::Error) -> CloudError {
        self.deployment_error(format!(
            "state directory {}: {err}",
            self.state.root.display()
        ))
    }

    fn load(&self) -> Result<Option<DeploymentRecord>, CloudError> {
        self.state
            .load(&self.deployment)
            .map_err(|err| self.state_error(err))
    }

    fn save(&self, record: &DeploymentRecord) -> Result<(), CloudError> {
        self.state.save(record).map_err(|err| self.state_error(err))
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, CloudError> {
        self.state.lock().map_err(|err| self.state_error(err))
    }

    fn check_state_dir(&self) -> Result<(), CloudError> {
        let root = &self.state.root;
        match PRIVATE_PATHS.iter().find(|p| root.starts_with(p)) {
            Some(private) => Err(self.deployment_error(format!(
                "state directory {} is under {private}, which every local host replaces with a \
                 private directory; choose a state directory elsewhere (the default is {})",
                root.display(),
                LocalOptions::default().state_dir.display()
            ))),
            None => Ok(()),
        }
    }

    /// Creates the hub namespace and its bridge if they do not exist,
    /// choosing the underlay first if the deployment has none.
    fn ensure_hub(&self, record: &mut DeploymentRecord) -> Result<Ipv4Network, CloudError> {
        let hub = self.hub_netns();
        if let (Some(underlay), Some(_)) = (record.underlay, &record.hub_netns) {
            if net::netns_path(&hub).exists() {
                return Ok(underlay);
            }
        }
        let underlay = match record.underlay {
            Some(underlay) => underlay,
            None => {
                let routes = net::root_routes().map_err(|e| self.deployment_error(e))?;
                let taken = self
                    .state
                    .other_underlays(&self.deployment)
                    .map_err(|err| self.state_error(err))?;
                net::pick_underlay(&routes, &taken).ok_or_else(|| {
                    self.deployment_error(format!(
                        "no /24 of {} is free: every one overlaps a route of this machine or \
                         another local deployment; destroy an old local deployment",
                        net::UNDERLAY_RANGE
                    ))
                })?
            }
        };
        refuse_foreign_netns(&hub).map_err(|e| self.deployment_error(e))?;
        record.underlay = Some(underlay);
        record.hub_netns = Some(hub.clone());
        // Record first, so that a failure below still leaves something that
        // destroy_deployment cleans up.
        self.save(record)?;
        let gateway = underlay.nth(1).expect("a /24 has a .1");
        net::add_netns(&hub).map_err(|e| self.deployment_error(e))?;
        net::ip_batch(
            &hub,
            &[
                format!("link add {BRIDGE} address {} type bridge", mac_for(gateway)),
                format!("addr add {gateway}/24 dev {BRIDGE}"),
                format!("link set {BRIDGE} up"),
                "link set lo up".to_owned(),
            ],
        )
        .map_err(|e| self.deployment_error(e))?;
        Ok(underlay)
    }

    /// Adds network namespace `netns` with `eth0` at `address` on the
    /// bridge, through veth `v<index>` in the hub.
    fn attach(&self, netns: &str, index: u8, address: Ipv4Addr) -> Result<(), String> {
        let hub = self.hub_netns();
        refuse_foreign_netns(netns)?;
        net::add_netns(netns)?;
        let veth = format!("v{index}");
        net::ip_batch(
            &hub,
            &[
                format!(
                    "link add {veth} type veth peer name eth0 address {} netns {netns}",
                    mac_for(address)
                ),
                format!("link set {veth} master {BRIDGE}"),
                format!("link set {veth} up"),
            ],
        )?;
        net::ip_batch(
            netns,
            &[
                format!("addr add {address}/24 dev eth0"),
                "link set eth0 up".to_owned(),
                "link set lo up".to_owned(),
            ],
        )
    }

    /// Removes a namespace attached with [`Self::attach`].
    fn detach(&self, netns: &str, index: u8) -> Result<(), String> {
        let hub = self.hub_netns();
        // Deleting the hub end at once (rather than when the kernel frees
        // the host namespace) lets the index be reused right away.
        if net::netns_path(&hub).exists() {
            let _ = net::run(
                "ip",
                &["-n", &hub, "link", "del", &format!("v{index}")],
                None,
            );
        }
        net::delete_netns(netns)
    }

    /// Ends hosts and removes their namespaces and directories. Kills all
    /// of them first so that they end in parallel.
    fn teardown(&self, hosts: &[HostEntry]) -> Result<(), CloudError> {
        let mut others = Vec::new();
        for host in hosts {
            if let Some(init) = host.init {
                match host.kind {
                    HostKind::Namespace => init.kill(),
                    HostKind::Systemd => others.push((host.name.clone(), nspawn::kill(&init))),
                }
            }
        }
        for (name, processes) in others {
            for process in processes {
                if !process.wait_gone(STOP_TIMEOUT) {
                    return Err(CloudError::Host {
                        host: name,
                        message: format!(
                            "its nspawn or container (pid {}) did not end within {} s of SIGKILL",
                            process.pid,
                            STOP_TIMEOUT.as_secs()
                        ),
                    });
                }
            }
        }
        for host in hosts {
            let host_error = |message: String| CloudError::Host {
                host: host.name.clone(),
                message,
            };
            if let Some(init) = host.init {
                if !init.wait_gone(STOP_TIMEOUT) {
                    return Err(host_error(format!(
                        "its init (pid {}) did not end within {} s of SIGKILL",
                        init.pid,
                        STOP_TIMEOUT.as_secs()
                    )));
                }
            }
            // A host whose init an interrupted run never recorded still has
            // its processes in its namespace: end them too.
            net::kill_netns_processes(&host.netns, STOP_TIMEOUT).map_err(host_error)?;
            if host.kind == HostKind::Systemd {
                nspawn::remove_cgroups(&host.netns).map_err(host_error)?;
            }
            self.detach(&host.netns, host.index).map_err(host_error)?;
            let dir = self.host_dir(&host.name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(host_error(format!(
                        "cannot remove {}: {err}",
                        dir.display()
                    )))
                }
            }
        }
        Ok(())
    }

    fn to_host(&self, entry: &HostEntry) -> Host {
        Host {
            name: entry.name.clone(),
            role: entry.role,
            region: entry.region.clone(),
            id: entry.netns.clone(),
            public_address: IpAddr::V4(entry.address),
            ssh: SocketAddr::new(IpAddr::V4(entry.address), entry.ssh_port.get()),
            ssh_host_key: entry
                .host_key
                .as_deref()
                .and_then(|k| SshPublicKey::parse(k).ok()),
        }
    }

    /// Brings up one recorded host: namespace, directories, init, and
    /// waits for its sshd. `boot` is what a systemd host boots from.
    fn bring_up(
        &self,
        entry: &HostEntry,
        authorized_keys: &[String],
        provided: Provided<'_>,
        boot: Option<&SystemdBoot>,
    ) -> Result<Host, CloudError> {
        let host_error = |message: String| CloudError::Host {
            host: entry.name.clone(),
            message,
        };
        self.attach(&entry.netns, entry.index, entry.address)
            .map_err(host_error)?;
        let dir = HostDir {
            path: self.host_dir(&entry.name),
        };
        let (host_key, init, timeout) = match boot {
            None => {
                let spec =
                    HostSpec {
                        name: &entry.name,
                        address: entry.address,
                        ssh_port: entry.ssh_port,
                        authorized_keys,
                        host_key: match provided {
                            Provided::HostKey(key) => Some(key),
                            Provided::Nothing => None,
                            Provided::UserData(_) => return Err(host_error(
                                "a namespace host cannot boot from user data; use systemd hosts"
                                    .into(),
                            )),
                        },
                    };
                let host_key = host::prepare(&dir, &spec).map_err(host_error)?;
                let init = host::start_init(&dir, &entry.name, &entry.netns).map_err(host_error)?;
                (Some(host_key), init, SSH_READY_TIMEOUT)
            }
            Some(boot) => {
                let underlay = self
                    .underlay()
                    .ok_or_else(|| host_error("its deployment has no underlay".into()))?;
                let spec = nspawn::SystemdSpec {
                    name: &entry.name,
                    ssh_port: entry.ssh_port,
                    authorized_keys,
                    provided,
                    mirror: underlay.nth(1).expect("a /24 has a .1"),
                };
                let host_key = nspawn::prepare(&dir, &spec).map_err(host_error)?;
                let init = nspawn::start(&boot.image, &dir, &entry.name, &entry.netns)
                    .map_err(host_error)?;
                (host_key, init, SYSTEMD_READY_TIMEOUT)
            }
        };
        let entry = {
            let _lock = self.lock()?;
            let mut record = self.load()?.ok_or_else(|| {
                self.deployment_error("deployment.json vanished while creating hosts")
            })?;
            let recorded = record
                .hosts
                .iter_mut()
                .find(|h| h.name == entry.name)
                .ok_or_else(|| {
                    host_error("its record vanished while it was being created".into())
                })?;
            recorded.init = Some(init);
            recorded.host_key = host_key.map(|k| k.to_string());
            let entry = recorded.clone();
            self.save(&record)?;
            entry
        };
        let ssh = SocketAddr::new(IpAddr::V4(entry.address), entry.ssh_port.get());
        host::wait_for_ssh(&dir, &self.hub_netns(), ssh, &init, timeout).map_err(|message| {
            CloudError::Timeout {
                host: entry.name.clone(),
                seconds: timeout.as_secs(),
                message,
            }
        })?;
        Ok(self.to_host(&entry))
    }

    /// The image and mirror of systemd hosts, built when the cache lacks
    /// them; `None` for namespace hosts.
    fn systemd_boot(&self) -> Result<Option<SystemdBoot>, CloudError> {
        if self.options.hosts != LocalHostKind::Systemd {
            return Ok(None);
        }
        let cache = &self.options.image_cache;
        let mirror = &self.options.debian_mirror;
        let image = image::ensure_base_image(cache, mirror)
            .map_err(|e| self.deployment_error(format!("the systemd hosts' base image: {e}")))?;
        let packages =
            image::ensure_mirror_with(cache, &image, mirror, &self.options.extra_mirror_packages)
                .map_err(|e| {
                self.deployment_error(format!("the systemd hosts' package mirror: {e}"))
            })?;
        Ok(Some(SystemdBoot {
            image,
            mirror: packages,
        }))
    }

    /// Starts the deployment's package mirror server unless it runs.
    fn ensure_mirror_server(
        &self,
        record: &mut DeploymentRecord,
        underlay: Ipv4Network,
        boot: &SystemdBoot,
    ) -> Result<(), CloudError> {
        if let Some(server) = record.mirror_server.filter(|s| s.is_alive()) {
            if record.mirror_dir.as_ref() == Some(&boot.mirror.dir) {
                return Ok(());
            }
            // The config now names other packages (an exporter added to a
            // running deployment): serve the mirror that has them.
            self.stop_mirror_server(server)?;
        }
        let log = self
            .state
            .deployment_dir(&self.deployment)
            .join("mirror.log");
        let server = nspawn::start_mirror_server(
            &boot.mirror,
            &self.hub_netns(),
            underlay.nth(1).expect("a /24 has a .1"),
            &log,
        )
        .map_err(|e| self.deployment_error(e))?;
        record.mirror_server = Some(server);
        record.mirror_dir = Some(boot.mirror.dir.clone());
        self.save(record)
    }

    /// Ends the deployment's package mirror server (by its PID, which the
    /// record holds) and waits until it is gone.
    fn stop_mirror_server(&self, server: process::InitProcess) -> Result<(), CloudError> {
        server.kill();
        if server.wait_gone(STOP_TIMEOUT) {
            return Ok(());
        }
        Err(self.deployment_error(format!(
            "the package mirror server (pid {}) did not end within {} s of SIGKILL",
            server.pid,
            STOP_TIMEOUT.as_secs()
        )))
    }

    /// [`LocalProvider::reconcile_deployment`]: restarts the mirror server
    /// of a deployment with systemd hosts on the mirror the options name.
    fn reconcile_mirror_blocking(&self) -> Result<(), CloudError> {
        let has_systemd_hosts =
            |record: &DeploymentRecord| record.hosts.iter().any(|h| h.kind == HostKind::Systemd);
        match self.load()? {
            Some(record) if has_systemd_hosts(&record) && record.underlay.is_some() => {}
            _ => return Ok(()),
        }
        // Built outside the deployment's lock, as when creating hosts.
        let Some(boot) = self.systemd_boot()? else {
            return Ok(());
        };
        let _lock = self.lock()?;
        let Some(mut record) = self.load()? else {
            return Ok(());
        };
        match record.underlay {
            Some(underlay) if has_systemd_hosts(&record) => {
                self.ensure_mirror_server(&mut record, underlay, &boot)
            }
            _ => Ok(()),
        }
    }

    /// Creates `requests`; with `provided`, every host gets that host key
    /// or boots from that user data, and those authorized keys, instead of
    /// a fresh key and the registered ones.
    fn create_hosts_blocking(
        &self,
        requests: &[HostRequest],
        provided: Option<(Provided<'_>, &[String])>,
    ) -> Result<Vec<Host>, CloudError> {
        self.check_state_dir()?;
        for (i, request) in requests.iter().enumerate() {
            if requests[..i].iter().any(|r| r.name == request.name) {
                return Err(CloudError::Host {
                    host: request.name.clone(),
                    message: "requested twice in one batch".into(),
                });
            }
        }
        // Built outside the deployment's lock: the first build takes minutes.
        let boot = self.systemd_boot()?;
        let kind = match boot {
            Some(_) => HostKind::Systemd,
            None => HostKind::Namespace,
        };
        let (entries, authorized_keys) = {
            let _lock = self.lock()?;
            let mut record = self
                .load()?
                .unwrap_or_else(|| DeploymentRecord::new(self.deployment.clone()));
            let underlay = self.ensure_hub(&mut record)?;
            if let Some(boot) = &boot {
                self.ensure_mirror_server(&mut record, underlay, boot)?;
            }
            let mut dead = Vec::new();
            for request in requests {
                if let Some(existing) = record.hosts.iter().find(|h| h.name == request.name) {
                    if existing.init.is_some_and(|i| i.is_alive()) {
                        return Err(CloudError::Host {
                            host: request.name.clone(),
                            message: format!(
                                "already exists in local deployment {}; destroy it first or \
                                 choose another name",
                                self.deployment
                            ),
                        });
                    }
                    dead.push(existing.clone());
                }
            }
            // A recorded host whose init has ended (a crash, a reboot) is
            // cleared away and made anew under the same name.
            self.teardown(&dead)?;
            record
                .hosts
                .retain(|h| !dead.iter().any(|d| d.name == h.name));
            let mut entries = Vec::new();
            for request in requests {
                let index = record.free_index().ok_or_else(|| {
                    self.deployment_error("a local deployment holds at most 244 hosts")
                })?;
                let address = underlay
                    .nth(10 + u32::from(index))
                    .expect("index keeps the address inside the /24");
                let entry = HostEntry {
                    name: request.name.clone(),
                    index,
                    address,
                    netns: format!("pg-{}-{index}", self.deployment),
                    role: Some(request.role),
                    region: request.region.clone(),
                    ssh_port: self.options.ssh_port,
                    host_key: None,
                    init: None,
                    kind,
                };
                record.hosts.push(entry.clone());
                entries.push(entry);
            }
            // Recorded before anything exists, so that destroy always finds
            // every host, whatever happens next.
            self.save(&record)?;
            (entries, record.authorized_keys.clone())
        };
        let (provided, authorized_keys) = match provided {
            Some((provided, authorized)) => (provided, authorized.to_vec()),
            None => (Provided::Nothing, authorized_keys),
        };
        let results: Vec<Result<Host, CloudError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = entries
                .iter()
                .map(|entry| {
                    scope.spawn(|| self.bring_up(entry, &authorized_keys, provided, boot.as_ref()))
                })
                .collect();
            handles
                .into_iter()
                .zip(&entries)
                .map(|(handle, entry)| {
                    handle.join().unwrap_or_else(|_| {
                        Err(CloudError::Host {
                            host: entry.name.clone(),
                            message: "creating it panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let failed: Vec<HostName> = entries
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_err())
            .map(|(entry, _)| entry.name.clone())
            .collect();
        if !failed.is_empty() {
            // A half-made host is of no use: remove it, keep the others.
            if let Err(err) = self.destroy_hosts_blocking(&failed) {
                tracing::warn!("cleaning up local hosts that failed to start: {err}");
            }
        }
        results.into_iter().collect()
    }

    fn list_hosts_blocking(&self) -> Result<Vec<Host>, CloudError> {
        let Some(record) = self.load()? else {
            return Ok(Vec::new());
        };
        let mut hosts = Vec::new();
        for entry in &record.hosts {
            if entry.init.is_some_and(|i| i.is_alive()) {
                hosts.push(self.to_host(entry));
            } else {
                tracing::warn!(
                    "local host {} of deployment {} is recorded but not running; \
                     creating it again replaces it",
                    entry.name,
                    self.deployment
                );
            }
        }
        Ok(hosts)
    }

    /// Creates one host whose sshd uses `host_key` (an OpenSSH private key,
    /// as `ssh-keygen` writes it) and lets in exactly `authorized_keys`,
    /// rather than a fresh host key and the registered login keys: a host
    /// booted from what a cloud's user data says, as the fake DigitalOcean
    /// API's droplets are. Blocks the calling thread.
    pub fn create_host_with_key_blocking(
        &self,
        request: &HostRequest,
        host_key: &str,
        authorized_keys: &[SshPublicKey],
    ) -> Result<Host, CloudError> {
        self.create_one(request, Provided::HostKey(host_key), authorized_keys)
    }

    /// Creates one systemd host that boots with cloud-init reading
    /// `user_data` (a NoCloud seed), as a droplet reads the user data of its
    /// create request, and lets in `authorized_keys`. Blocks the calling
    /// thread. Namespace hosts run no cloud-init: for them it fails.
    pub fn create_host_with_user_data_blocking(
        &self,
        request: &HostRequest,
        user_data: &str,
        authorized_keys: &[SshPublicKey],
    ) -> Result<Host, CloudError> {
        self.create_one(request, Provided::UserData(user_data), authorized_keys)
    }

    /// One host from what the caller provides, letting in `authorized_keys`.
    fn create_one(
        &self,
        request: &HostRequest,
        provided: Provided<'_>,
        authorized_keys: &[SshPublicKey],
    ) -> Result<Host, CloudError> {
        let authorized: Vec<String> = authorized_keys.iter().map(|k| k.to_string()).collect();
        let mut hosts = self
            .create_hosts_blocking(std::slice::from_ref(request), Some((provided, &authorized)))?;
        hosts.pop().ok_or_else(|| CloudError::Host {
            host: request.name.clone(),
            message: "was not created".into(),
        })
    }

    /// What kind of host this provider makes.
    pub fn host_kind(&self) -> LocalHostKind {
        self.options.hosts
    }

    /// [`CloudProvider::destroy_hosts`] without async. Blocks the calling
    /// thread.
    pub fn destroy_hosts_blocking(&self, names: &[HostName]) -> Result<(), CloudError> {
        let _lock = self.lock()?;
        let Some(mut record) = self.load()? else {
            return Ok(());
        };
        let doomed: Vec<HostEntry> = record
            .hosts
            .iter()
            .filter(|h| names.contains(&h.name))
            .cloned()
            .collect();
        let outcome = self.teardown(&doomed);
        // Forget only the hosts that are really gone, even on failure.
        record.hosts.retain(|h| {
            !doomed.iter().any(|d| d.name == h.name) || self.host_dir(&h.name).exists()
        });
        self.save(&record)?;
        outcome
    }

    /// [`CloudProvider::destroy_deployment`] without async, for `Drop`
    /// guards and synchronous callers. Blocks the calling thread.
    pub fn destroy_deployment_blocking(&self) -> Result<(), CloudError> {
        let _lock = self.lock()?;
        // Without a record there is nothing of ours to remove: a hub
        // namespace of this name then belongs to a deployment of the same
        // name in another state directory.
        if let Some(record) = self.load()? {
            self.teardown(&record.hosts)?;
            for outsider in &record.outsiders {
                self.detach(&outsider.netns, outsider.index)
                    .map_err(|e| self.deployment_error(e))?;
            }
            if let Some(server) = record.mirror_server {
                self.stop_mirror_server(server)?;
            }
            if let Some(hub) = &record.hub_netns {
                net::delete_netns(hub).map_err(|e| self.deployment_error(e))?;
            }
        }
        let dir = self.state.deployment_dir(&self.deployment);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => {
                Err(self.deployment_error(format!("cannot remove {}: {err}", dir.display())))
            }
        }
    }

    fn register_ssh_key_blocking(&self, key: &SshPublicKey) -> Result<(), CloudError> {
        self.check_state_dir()?;
        let _lock = self.lock()?;
        let mut record = self
            .load()?
            .unwrap_or_else(|| DeploymentRecord::new(self.deployment.clone()));
        let key = key.to_string();
        if !record.authorized_keys.contains(&key) {
            record.authorized_keys.push(key);
        }
        self.save(&record)
    }

    fn create_outsider_blocking(&self, name: &HostName) -> Result<Outsider, CloudError> {
        self.check_state_dir()?;
        let _lock = self.lock()?;
        let mut record = self
            .load()?
            .unwrap_or_else(|| DeploymentRecord::new(self.deployment.clone()));
        if record.outsiders.iter().any(|o| &o.name == name) {
            return Err(self.deployment_error(format!("outsider {name} already exists")));
        }
        let underlay = self.ensure_hub(&mut record)?;
        let index = record
            .free_index()
            .ok_or_else(|| self.deployment_error("no free address on the underlay"))?;
        let entry = OutsiderEntry {
            name: name.clone(),
            index,
            address: underlay
                .nth(10 + u32::from(index))
                .expect("index keeps the address inside the /24"),
            netns: format!("pg-{}-o{index}", self.deployment),
        };
        record.outsiders.push(entry.clone());
        self.save(&record)?;
        self.attach(&entry.netns, entry.index, entry.address)
            .map_err(|e| self.deployment_error(format!("outsider {name}: {e}")))?;
        Ok(Outsider {
            name: entry.name,
            netns: entry.netns,
            address: entry.address,
        })
    }

    /// Attaches a namespace that belongs to no host to the deployment's
    /// bridge, with an underlay address; [`CloudProvider::destroy_deployment`]
    /// removes it.
    pub async fn create_outsider(&self, name: &HostName) -> Result<Outsider, CloudError> {
        let this = self.clone();
        let name = name.clone();
        self.blocking(move || this.create_outsider_blocking(&name))
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, CloudError> + Send + 'static,
    ) -> Result<T, CloudError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|err| self.deployment_error(format!("a provider task failed: {err}")))?
    }
}

/// Fails if network namespace `name` exists although this deployment's
/// record does not account for it: it belongs to a deployment of the same
/// name in another state directory, or to a run that crashed, and deleting
/// it could break someone else's hosts.
fn refuse_foreign_netns(name: &str) -> Result<(), String> {
    if net::netns_path(name).exists() {
        return Err(format!(
            "network namespace {name} already exists but is not recorded in this state \
             directory (a deployment of the same name in another state directory, or a \
             crashed run); destroy that deployment, or delete it with `ip netns delete {name}` \
             if nothing uses it"
        ));
    }
    Ok(())
}

/// The MAC address of the interface that holds `address` on the underlay.
/// Derived from the address rather than random so that when a destroyed
/// host's address is given to a new host, the neighbour caches of the hub
/// and the other hosts are still right (stale entries would black-hole
/// traffic until they expire). `02:` marks it locally administered.
fn mac_for(address: Ipv4Addr) -> String {
    let [_, b, c, d] = address.octets();
    format!("02:70:67:{b:02x}:{c:02x}:{d:02x}")
}

/// The path of a named network namespace, for [`run_in_netns`].
pub fn netns_path(name: &str) -> PathBuf {
    net::netns_path(name)
}

#[async_trait]
impl CloudProvider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    /// Systemd hosts boot from a bare image and install with apt;
    /// namespace hosts share this machine's programs. A local host's key
    /// is made with the host and reported from its file.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            programs: match self.options.hosts {
                LocalHostKind::Systemd => Programs::Packages,
                LocalHostKind::Namespace => Programs::Preinstalled,
            },
            host_keys: HostKeys::FromHost,
            lifecycle: Lifecycle::Disposable,
        }
    }

    fn discovery_hint(&self) -> &'static str {
        "their namespaces"
    }

    async fn preflight(&self) -> Result<(), CloudError> {
        self.check_state_dir()?;
        match self.options.hosts {
            LocalHostKind::Namespace => preflight::check(REQUIRED_PROGRAMS),
            LocalHostKind::Systemd => preflight::check(preflight::SYSTEMD_PROGRAMS),
        }
    }

    /// Nothing: a local deployment has no resource besides its hosts that
    /// settings could change.
    /// Serves systemd hosts the mirror of the current config's packages:
    /// packages named after the hosts were created (a new managed
    /// exporter) are then installable on them.
    async fn reconcile_deployment(&self) -> Result<(), CloudError> {
        let this = self.clone();
        self.blocking(move || this.reconcile_mirror_blocking())
            .await
    }

    async fn register_ssh_key(&self, key: &SshPublicKey) -> Result<(), CloudError> {
        let this = self.clone();
        let key = key.clone();
        self.blocking(move || this.register_ssh_key_blocking(&key))
            .await
    }

    /// None: a local host generates its key at boot and the provider
    /// reports it from the key file, which lives on this machine.
    async fn prepare_host_keys(
        &self,
        _requests: &[HostRequest],
    ) -> Result<Vec<(HostName, SshPublicKey)>, CloudError> {
        Ok(Vec::new())
    }

    async fn create_hosts(&self, requests: &[HostRequest]) -> Result<Vec<Host>, CloudError> {
        let this = self.clone();
        let requests = requests.to_vec();
        self.blocking(move || this.create_hosts_blocking(&requests, None))
            .await
    }

    async fn list_hosts(&self) -> Result<Vec<Host>, CloudError> {
        let this = self.clone();
        self.blocking(move || this.list_hosts_blocking()).await
    }

    async fn destroy_hosts(&self, names: &[HostName]) -> Result<(), CloudError> {
        let this = self.clone();
        let names = names.to_vec();
        self.blocking(move || this.destroy_hosts_blocking(&names))
            .await
    }

    async fn destroy_deployment(&self) -> Result<(), CloudError> {
        let this = self.clone();
        self.blocking(move || this.destroy_deployment_blocking())
            .await
    }

    /// Opens the socket inside the deployment's hub namespace, where every
    /// host's underlay address is reachable.
    fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let hub = netns_path(&self.hub_netns());
        run_in_netns(&hub, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        })?
    }
}
