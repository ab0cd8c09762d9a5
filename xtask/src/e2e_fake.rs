//! The end-to-end scenario through the DigitalOcean provider.
//!
//! `cargo xtask e2e --fake` runs it against the fake DigitalOcean API
//! (in this process), whose droplets are real local namespace hosts booted
//! from their cloud-init user data (host key, authorized keys): the
//! `promguard` binary talks HTTP to the fake and SSH to the hosts, which it
//! reaches through the hosts' hub namespace (`PROMGUARD_DIGITALOCEAN_NETNS`,
//! honoured only with a `http://127.0.0.1` API URL). On top of the local
//! scenario it checks that injected API faults still converge without a
//! duplicate droplet, that a droplet that never becomes active fails `up`
//! by name and `down` still removes everything, that the first SSH
//! connection is verified against the injected host key and the pinned key
//! is then one the host generated, and that no output contains the token.
//!
//! `cargo xtask e2e` runs the same scenario (without the fake-only checks)
//! on real DigitalOcean with the caller's token, and always destroys
//! everything tagged with its deployment at the end, also after a failure
//! or Ctrl-C.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use promguard_cloud::digitalocean::cloud_init::host_key_for;
use promguard_cloud::fake_digitalocean::{
    DropletBackend, DropletSpec, FakeDigitalOcean, FakeDroplet, FakeOptions, Fault,
};
use promguard_cloud::local::{LocalOptions, LocalProvider};
use promguard_cloud::{CloudProvider, HostRequest};
use promguard_core::config::LocalHostKind;
use promguard_core::{DeploymentName, HostName, Region, Role, SshPublicKey};

use crate::e2e::{check_targets, scenario, Deployment};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// How many running scenarios catch interrupts: `cargo xtask test` runs
/// several at once, and the first to finish must not restore the default
/// for the others.
static CATCHING: AtomicUsize = AtomicUsize::new(0);

/// Whether Ctrl-C (or SIGTERM) arrived; runs stop and clean up then.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn on_signal(_: std::ffi::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C and SIGTERM into a flag, so that xtask lives on to run its
/// cleanup (the `promguard` child still gets the signal and stops; a handler,
/// unlike an ignored signal, is not inherited across exec).
pub(crate) fn catch_interrupts() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    CATCHING.fetch_add(1, Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("cannot install a signal handler")?;
    }
    Ok(())
}

/// Gives Ctrl-C and SIGTERM their default effect again, for scenarios that
/// catch them only while they run, once no other running scenario catches
/// them.
pub(crate) fn restore_interrupts() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    if CATCHING.fetch_sub(1, Ordering::SeqCst) > 1 {
        return Ok(());
    }
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: restores the default disposition.
        unsafe { sigaction(signal, &default) }.context("cannot restore a signal handler")?;
    }
    Ok(())
}

/// Boots a local namespace host for every droplet, with the host key its
/// user data installs and the account keys the create request named.
struct NamespaceBackend {
    hosts: LocalProvider,
    /// Droplets that boot with a key of their own instead of the injected
    /// one, as if someone sat between PromGuard and the droplet.
    impostors: Mutex<HashSet<String>>,
}

impl NamespaceBackend {
    fn boot(&self, droplet: &DropletSpec) -> Result<Ipv4Addr> {
        let user_data = droplet
            .user_data
            .as_deref()
            .context("the droplet has no user data")?;
        let (mut private, _) = host_key_for(user_data, &droplet.name)
            .context("the user data installs no host key for this droplet")?;
        let impostor = self
            .impostors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&droplet.name);
        if impostor {
            private = fresh_private_key()?;
        }
        let role = if droplet.tags.iter().any(|t| t == "promguard:monitor") {
            Role::Monitor
        } else {
            Role::Node
        };
        let request = HostRequest {
            name: HostName::new(&droplet.name)?,
            role,
            region: Region::new(&droplet.region)?,
        };
        let host = match self.hosts.host_kind() {
            // A systemd droplet boots with cloud-init reading the user data
            // as sent; an impostor's carries another key in its place.
            LocalHostKind::Systemd => {
                let user_data = if impostor {
                    let (injected, _) = host_key_for(user_data, &droplet.name)
                        .context("the user data installs no host key for this droplet")?;
                    // The key's lines sit indented in the YAML block of the
                    // boot command.
                    let indent = |key: &str| -> String {
                        key.lines()
                            .map(|l| format!("      {l}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    };
                    let swapped = user_data.replace(&indent(&injected), &indent(&private));
                    ensure!(
                        swapped != user_data,
                        "the impostor's key could not be swapped into the user data"
                    );
                    swapped
                } else {
                    user_data.to_owned()
                };
                self.hosts.create_host_with_user_data_blocking(
                    &request,
                    &user_data,
                    &droplet.authorized_keys,
                )?
            }
            LocalHostKind::Namespace => self.hosts.create_host_with_key_blocking(
                &request,
                &private,
                &droplet.authorized_keys,
            )?,
        };
        match host.public_address {
            IpAddr::V4(v4) => Ok(v4),
            IpAddr::V6(v6) => bail!("the host got the IPv6 address {v6}"),
        }
    }
}

impl DropletBackend for NamespaceBackend {
    fn create(&self, droplet: &DropletSpec) -> Result<Ipv4Addr, String> {
        self.boot(droplet)
            .map_err(|e| format!("droplet {}: {e:#}", droplet.name))
    }

    fn destroy(&self, droplet: &DropletSpec) -> Result<(), String> {
        let name = HostName::new(&droplet.name).map_err(|e| e.to_string())?;
        self.hosts
            .destroy_hosts_blocking(&[name])
            .map_err(|e| e.to_string())
    }
}

/// The file the host's sshd reads its ed25519 key from, as seen from this
/// machine: in the host directory of a namespace host, in the overlay of a
/// systemd host (where the host wrote it when it replaced its key).
fn host_key_file(hosts: &LocalProvider, name: &str) -> Result<std::path::PathBuf> {
    let dir = hosts.host_dir(&HostName::new(name)?);
    Ok(match hosts.host_kind() {
        LocalHostKind::Namespace => dir.join("ssh_host_ed25519_key"),
        LocalHostKind::Systemd => dir.join("upper/etc/ssh/ssh_host_ed25519_key"),
    })
}

fn fresh_private_key() -> Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&path)
        .status()
        .context("cannot run ssh-keygen (install openssh-client)")?;
    ensure!(status.success(), "ssh-keygen failed");
    Ok(std::fs::read_to_string(&path)?)
}

/// Destroys the namespace hosts behind the fake's droplets when dropped.
struct Hosts(LocalProvider);

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Err(e) = self.0.destroy_deployment_blocking() {
            eprintln!("e2e: cleanup of the fake's hosts failed: {e}");
        }
    }
}

fn login_key(path: &Path) -> Result<()> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "promguard-e2e", "-f"])
        .arg(path)
        .status()
        .context("cannot run ssh-keygen (install openssh-client)")?;
    ensure!(status.success(), "ssh-keygen failed to make the login key");
    Ok(())
}

/// Polls `check` for up to `seconds`.
fn eventually(seconds: u64, what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if check()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what} (after {seconds} s)");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo xtask e2e --fake`.
pub fn fake(root: &Path) -> Result<()> {
    catch_interrupts()?;
    let bin = crate::cli(root)?;
    let id = std::process::id() % 100_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // The machines behind the droplets: one local deployment.
    // Droplets are systemd hosts that boot with cloud-init, as on
    // DigitalOcean.
    let hosts = LocalProvider::new(
        DeploymentName::new(&format!("do{id}"))?,
        LocalOptions {
            hosts: LocalHostKind::Systemd,
            ..LocalOptions::default()
        },
    );
    let _hosts_guard = Hosts(hosts.clone());
    // Makes the hub namespace now: the CLI opens its SSH sockets there.
    runtime.block_on(hosts.create_outsider(&HostName::new("hub-probe")?))?;
    let backend = Arc::new(NamespaceBackend {
        hosts: hosts.clone(),
        impostors: Mutex::new(HashSet::new()),
    });
    let fake = FakeDigitalOcean::start_in_thread(FakeOptions {
        active_after: Duration::from_millis(500),
        destroy_after: Duration::from_millis(200),
        backend: backend.clone(),
        ..FakeOptions::default()
    })?;
    let token = fake.token().to_owned();

    let dir = tempfile::tempdir()?;
    let key = dir.path().join("id_ed25519");
    login_key(&key)?;
    let d = Deployment {
        bin,
        dir,
        name: format!("fake{id}"),
        provider: "digitalocean",
        regions: ["lon1", "sfo3", "sgp1"],
        // The e2e's own login key, not the user's.
        extra_config: format!("\n[ssh]\nprivate_key = \"{}\"\n", key.display()),
        scrape_interval: "2s".to_owned(),
        env: vec![
            ("DIGITALOCEAN_TOKEN".into(), token.clone()),
            ("PROMGUARD_DIGITALOCEAN_URL".into(), fake.base_url()),
            ("PROMGUARD_DIGITALOCEAN_NETNS".into(), hosts.hub_netns()),
            ("PROMGUARD_DIGITALOCEAN_TEST_TIMING".into(), "fast".into()),
        ],
        transcript: Default::default(),
    };
    let droplet_names = || -> Vec<String> {
        fake.droplets()
            .into_iter()
            .filter(|d| !d.destroying)
            .map(|d| d.spec.name)
            .collect()
    };

    // The first up meets a 429 burst, 5xx answers, and a create that made
    // its droplets and then answered 500.
    fake.inject(Fault::RateLimit {
        count: 3,
        retry_after_seconds: 1,
    });
    fake.inject(Fault::ServerError { count: 2 });
    fake.inject(Fault::CreateSucceedsThenServerError);
    let (fresh, noop) = scenario(&d, Some(&hosts))?;
    // Every droplet booted with cloud-init, which ran all its stages and
    // was not dropped by an ordering cycle with PromGuard's firewall unit.
    let state = d.typed_state("the scenario")?;
    for name in state.hosts.keys() {
        crate::e2e_systemd::check_boot(&d, &hosts, name.as_str(), "on a droplet")?;
        let out = d.ssh_ok(
            name.as_str(),
            "cloud-init status --long; systemctl is-active cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service",
        )?;
        ensure!(
            out.contains("status: done") && !out.contains("inactive") && !out.contains("failed"),
            "cloud-init did not run every stage on droplet {name}:\n{out}"
        );
    }
    eprintln!(
        "e2e: 7. every droplet ran cloud-init's four stages; no failed unit, no ordering cycle"
    );
    let statuses: BTreeSet<u16> = fake.exchanges().iter().map(|e| e.status).collect();
    ensure!(
        statuses.contains(&429) && statuses.contains(&500),
        "the injected faults were not answered (statuses {statuses:?})"
    );
    let mut names = droplet_names();
    names.sort();
    ensure!(
        fake.droplets_created() == 5,
        "{} droplets were created for 4 + 1 hosts: {names:?}",
        fake.droplets_created()
    );
    ensure!(
        names
            == [
                "promguard-monitor-1",
                "promguard-node-1",
                "promguard-node-3",
                "promguard-node-4"
            ],
        "the droplets are {names:?}"
    );
    eprintln!("e2e: 8. with 429s, 5xx and a create that failed after succeeding: exactly one droplet per host");

    host_key_checks(&d, &fake, &hosts)?;

    // A create whose answer never comes (the client times out) after the
    // droplet was made.
    let before = fake.droplets_created();
    fake.inject(Fault::CreateSucceedsThenStalls {
        delay: Duration::from_secs(8),
    });
    let five = [
        "promguard-node-1",
        "promguard-node-3",
        "promguard-node-4",
        "promguard-node-5",
    ];
    d.write_config(&five)?;
    d.ok(&["up", "--yes"])?;
    let monitor = "promguard-monitor-1";
    check_targets(&d.status()?, &[monitor, five[0], five[1], five[2], five[3]])?;
    ensure!(
        fake.droplets_created() == before + 1,
        "a timed-out create was repeated: {} droplets created, expected {}",
        fake.droplets_created(),
        before + 1
    );
    eprintln!("e2e: 10. a create that timed out after succeeding made exactly one droplet");

    // Down removes every droplet, the firewall, the tag and our SSH key.
    d.ok(&["down", "--yes"])?;
    all_gone(&d, &fake, &hosts, &runtime)?;
    eprintln!("e2e: 11. down removed every droplet, host, firewall and the SSH key");

    // A droplet that never becomes active fails `up` by name; `down` cleans up.
    fake.inject(Fault::NeverActive {
        name: "promguard-node-2".into(),
    });
    let three = ["promguard-node-1", "promguard-node-2", "promguard-node-3"];
    d.write_config(&three)?;
    let out = d.promguard(&["up", "--yes"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "up succeeded with a stuck droplet");
    ensure!(
        stderr.contains("promguard-node-2"),
        "the failed up does not name the stuck droplet:\n{stderr}"
    );
    d.ok(&["down", "--yes"])?;
    all_gone(&d, &fake, &hosts, &runtime)?;
    eprintln!(
        "e2e: 12. a droplet that never became active failed up by name; down removed everything"
    );

    // A droplet presenting another host key than the injected one is refused.
    backend
        .impostors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert("promguard-node-1".into());
    d.write_config(&["promguard-node-1"])?;
    let out = d.promguard(&["up", "--yes"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "up accepted a droplet with the wrong host key"
    );
    ensure!(
        stderr.contains("host key of promguard-node-1 does not match"),
        "up failed, but not because of the host key:\n{stderr}"
    );
    d.ok(&["down", "--yes"])?;
    all_gone(&d, &fake, &hosts, &runtime)?;
    eprintln!("e2e: 13. a droplet presenting a key other than the injected one was refused");

    backend
        .impostors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    interruptions_and_lost_state(&d, &fake, &hosts, &runtime)?;

    // The token never shows.
    let transcript = d.transcript.borrow().clone();
    ensure!(
        !transcript.is_empty(),
        "no output was captured, so the token check would prove nothing"
    );
    ensure!(
        !transcript.contains(&token),
        "the API token appears in promguard's output"
    );
    for entry in std::fs::read_dir(d.dir.path())? {
        let path = entry?.path();
        if path.is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
            ensure!(
                !text.contains(&token),
                "the API token appears in {}",
                path.display()
            );
        }
    }
    eprintln!("e2e: 14. the token appears in no output and no file");
    eprintln!("e2e: fake DigitalOcean scenario passed (fresh up {fresh:.2?}, no-op up {noop:.2?})");
    drop(d);
    fake.stop_blocking();
    Ok(())
}

/// Interruptions and a lost state file through the DigitalOcean provider:
/// SIGKILL right after the create requests, SIGTERM while converging,
/// SIGINT while verifying; each time the state is valid and knows every
/// droplet with the host key injected into it, and the next `up` adopts
/// instead of duplicating. Then, without the state file, `up` refuses and
/// `down --discover` finds everything by its tags.
fn interruptions_and_lost_state(
    d: &Deployment,
    fake: &FakeDigitalOcean,
    hosts: &LocalProvider,
    runtime: &tokio::runtime::Runtime,
) -> Result<()> {
    let monitor = "promguard-monitor-1";
    // Node 2 is left out: the fake keeps it from ever becoming active.
    let three = ["promguard-node-1", "promguard-node-3", "promguard-node-4"];
    d.write_config(&three)?;
    let before = fake.droplets_created();
    let run = d.start(&["up", "--yes"])?;
    // Killed as soon as the fake made all four droplets: `up` is still
    // waiting for them to become active and has not recorded them as
    // created.
    eventually(60, "the create requests did not arrive", || {
        Ok(fake.droplets_created() >= before + 4)
    })?;
    run.signal(Signal::SIGKILL)?;
    let (status, stderr) = run.finish(Duration::from_secs(20))?;
    d.transcript.borrow_mut().push_str(&stderr);
    ensure!(
        status.signal() == Some(9),
        "up was not killed: {status}\n{stderr}"
    );
    let state = interrupted_state_is_sound(d, fake, "SIGKILL after the create requests")?;
    ensure!(
        state.hosts.values().all(|r| !r.created),
        "the killed run had marked hosts created; the kill came too late to test adoption"
    );
    // The droplets may still be booting (then `up` waits for them rather
    // than listing them as adoptable); either way none is made twice and
    // each must present the key recorded before it was requested.
    d.ok(&["up", "--yes"])?;
    ensure!(
        fake.droplets_created() == before + 4,
        "up after the kill created {} droplets instead of adopting",
        fake.droplets_created() - before - 4
    );
    host_key_checks(d, fake, hosts)?;
    check_targets(&d.status()?, &[monitor, three[0], three[1], three[2]])?;
    eprintln!("e2e: 15a. SIGKILL after the create requests: the state knew every droplet and its injected host key; the next up used them (no duplicate), verifying those keys");

    // SIGTERM while a new node converges, SIGINT while verifying.
    let four = [three[0], three[1], three[2], "promguard-node-5"];
    d.write_config(&four)?;
    for (signal, needle) in [
        (Signal::SIGTERM, ": converging"),
        (Signal::SIGINT, "verifying targets"),
    ] {
        let mut run = d.start(&["up", "--yes"])?;
        run.wait_for(needle, Duration::from_secs(90))?;
        run.signal(signal)?;
        let (status, stderr) = run.finish(Duration::from_secs(45))?;
        d.transcript.borrow_mut().push_str(&stderr);
        ensure!(
            status.code() == Some(128 + signal as i32) && stderr.contains("interrupted by"),
            "{signal:?} while {needle:?}: exit {status}\n{stderr}"
        );
        interrupted_state_is_sound(d, fake, &format!("{signal:?} at {needle:?}"))?;
    }
    d.ok(&["up", "--yes"])?;
    ensure!(
        fake.droplets_created() == before + 5,
        "interrupted runs led to {} droplets for 5 hosts",
        fake.droplets_created() - before
    );
    check_targets(&d.status()?, &[monitor, four[0], four[1], four[2], four[3]])?;
    eprintln!("e2e: 15b. SIGTERM while converging and SIGINT while verifying: state sound, the next up converged with no duplicate");

    // A host key replacement cut off after the new key was installed and
    // before it was pinned: the host serves the key recorded as next.
    let host = four[0];
    let key_file = host_key_file(hosts, host)?;
    let fresh = fresh_private_key()?;
    let staged = tempfile::tempdir()?;
    std::fs::write(staged.path().join("key"), &fresh)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        staged.path().join("key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    let out = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(staged.path().join("key"))
        .output()?;
    ensure!(out.status.success(), "ssh-keygen -y failed");
    let next =
        SshPublicKey::parse(&String::from_utf8_lossy(&out.stdout)).map_err(anyhow::Error::msg)?;
    let path = d.state_path();
    let mut state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    state["hosts"][host]["ssh_host_key_next"] = next.to_string().into();
    state["hosts"][host]["ssh_host_key_rotated"] = false.into();
    std::fs::write(&path, serde_json::to_string_pretty(&state)?)?;
    // Written in place (same inode), so a systemd host's overlay shows it.
    std::fs::write(&key_file, &fresh)?;
    std::fs::write(key_file.with_extension("pub"), format!("{next}\n"))?;
    d.ok(&["up", "--yes"])?;
    let state = d.state()?;
    let record = &state["hosts"][host];
    ensure!(
        record["ssh_host_key"] == next.to_string().as_str()
            && record["ssh_host_key_rotated"] == true
            && record.get("ssh_host_key_next").is_none(),
        "up did not pin the recorded next key of {host}: {record}"
    );
    let served = SshPublicKey::parse(&std::fs::read_to_string(key_file.with_extension("pub"))?)
        .map_err(anyhow::Error::msg)?;
    ensure!(
        served == next,
        "up replaced {host}'s key again instead of pinning the next one"
    );
    eprintln!("e2e: 15d. a host serving the next key of a cut-off replacement was accepted and pinned, not replaced again");

    // The state file is lost.
    let path = d.state_path();
    let saved = d.dir.path().join("lost.state.json");
    std::fs::rename(&path, &saved)?;
    let created = fake.droplets_created();
    let out = d.promguard(&["up", "--yes"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("down --discover")
            && stderr.contains("their tags")
            && stderr.contains("restoring the state file"),
        "up without state does not refuse and say how to adopt or remove: {stderr}"
    );
    ensure!(
        fake.droplets_created() == created && !path.exists(),
        "up without state created droplets or wrote a state file"
    );
    let out = d.promguard(&["down", "--yes"])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--discover"),
        "down without state did not point at --discover"
    );
    ensure!(
        fake.droplets().len() == 5,
        "down without state and --discover removed droplets"
    );
    d.ok(&["down", "--yes", "--discover"])?;
    all_gone(d, fake, hosts, runtime)?;
    std::fs::rename(&saved, &path)?;
    eprintln!(
        "e2e: 15c. without state, up refused and down --discover removed every droplet by its tags"
    );
    Ok(())
}

/// After an interrupted `up`: the state file is valid JSON of the current
/// version and records every live droplet, with the host key its user
/// data installs pinned (or, once replaced, a host-generated one).
fn interrupted_state_is_sound(
    d: &Deployment,
    fake: &FakeDigitalOcean,
    when: &str,
) -> Result<promguard_core::State> {
    let state = d.typed_state(when)?;
    for droplet in fake.droplets().into_iter().filter(|x| !x.destroying) {
        let name = HostName::new(&droplet.spec.name)?;
        let record = state.hosts.get(&name).with_context(|| {
            format!("after {when}, droplet {name} exists but the state does not know it")
        })?;
        if record.ssh_host_key_rotated {
            continue;
        }
        let injected = injected_key(&droplet)?;
        ensure!(
            record.ssh_host_key.as_ref() == Some(&injected),
            "after {when}, the state does not pin the host key injected into {name}"
        );
    }
    Ok(state)
}

/// After `up`: every host's pinned key is the one the host generated (in
/// its key file), not the injected one, and a host presenting the injected
/// key is refused.
fn host_key_checks(d: &Deployment, fake: &FakeDigitalOcean, hosts: &LocalProvider) -> Result<()> {
    let state = d.state()?;
    let records = state["hosts"].as_object().context("no hosts in state")?;
    let droplets = fake.droplets();
    for (name, record) in records {
        let pinned = SshPublicKey::parse(
            record["ssh_host_key"]
                .as_str()
                .with_context(|| format!("{name} has no pinned host key"))?,
        )
        .map_err(anyhow::Error::msg)?;
        let droplet = droplets
            .iter()
            .find(|x| &x.spec.name == name && !x.destroying)
            .with_context(|| format!("no droplet {name}"))?;
        let injected = injected_key(droplet)?;
        let file = host_key_file(hosts, name)?.with_extension("pub");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("{name}: cannot read {}", file.display()))?;
        let on_host = SshPublicKey::parse(&text).map_err(anyhow::Error::msg)?;
        ensure!(
            pinned != injected,
            "{name}: the pinned key is still the injected one"
        );
        ensure!(
            pinned == on_host,
            "{name}: the pinned key is not the one the host generated"
        );
        ensure!(
            record["ssh_host_key_rotated"] == true,
            "{name}: the state does not mark the key as replaced"
        );
    }

    // Pin the injected key again: the host, serving its own key now, is refused.
    let path = d.state_path();
    let original = std::fs::read_to_string(&path)?;
    let monitor = "promguard-monitor-1";
    let droplet = droplets
        .iter()
        .find(|x| x.spec.name == monitor && !x.destroying)
        .context("no monitor droplet")?;
    let injected = injected_key(droplet)?;
    let mut tampered: serde_json::Value = serde_json::from_str(&original)?;
    tampered["hosts"][monitor]["ssh_host_key"] = injected.to_string().into();
    std::fs::write(&path, serde_json::to_string_pretty(&tampered)?)?;
    let out = d.ssh(monitor, "true");
    std::fs::write(&path, &original)?;
    ensure!(
        !out?.status.success(),
        "ssh accepted the monitor with the injected key pinned"
    );
    d.ssh_ok(monitor, "true")?;
    eprintln!("e2e: 9. the first connections were verified against the injected keys; every pinned key is now host-generated; the injected key is refused");
    Ok(())
}

/// The SSH host key the droplet's user data installs on it.
fn injected_key(droplet: &FakeDroplet) -> Result<SshPublicKey> {
    let name = &droplet.spec.name;
    droplet
        .spec
        .user_data
        .as_deref()
        .and_then(|u| host_key_for(u, name))
        .map(|(_, public)| public)
        .with_context(|| format!("no injected key for droplet {name}"))
}

/// Nothing of the deployment is left: droplets, hosts, firewall, SSH key.
fn all_gone(
    d: &Deployment,
    fake: &FakeDigitalOcean,
    hosts: &LocalProvider,
    runtime: &tokio::runtime::Runtime,
) -> Result<()> {
    eventually(10, "droplets remain after down", || {
        Ok(fake.droplets().is_empty())
    })?;
    let left = runtime.block_on(hosts.list_hosts())?;
    ensure!(left.is_empty(), "hosts remain after down: {left:?}");
    ensure!(
        fake.firewalls().is_empty(),
        "firewalls remain: {:?}",
        fake.firewalls()
    );
    let ours = format!("promguard-{}", d.name);
    ensure!(
        !fake.ssh_keys().iter().any(|(name, _)| name == &ours),
        "the SSH key {ours} remains"
    );
    Ok(())
}

/// Destroys everything tagged with the deployment on real DigitalOcean
/// when dropped, whatever happened before.
struct TagCleanup {
    deployment: DeploymentName,
}

impl Drop for TagCleanup {
    fn drop(&mut self) {
        let result = (|| -> Result<()> {
            let token = promguard_cloud::digitalocean::Token::first_of(
                ["DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"]
                    .map(|name| std::env::var(name).ok()),
            )?;
            let provider = promguard_cloud::digitalocean::DigitalOceanProvider::builder(
                self.deployment.clone(),
                token,
            )
            .build()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(provider.destroy_deployment())?;
            Ok(())
        })();
        match result {
            Ok(()) => eprintln!(
                "e2e: everything tagged promguard:{} is destroyed",
                self.deployment
            ),
            Err(e) => eprintln!(
                "e2e: CLEANUP FAILED: {e:#}; delete the droplets tagged promguard:{} at https://cloud.digitalocean.com/droplets",
                self.deployment
            ),
        }
    }
}

/// `cargo xtask e2e`: the scenario on real DigitalOcean.
pub fn real(root: &Path) -> Result<()> {
    let has_token = ["DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"]
        .iter()
        .any(|n| std::env::var(n).is_ok_and(|v| !v.trim().is_empty()));
    if !has_token {
        bail!(
            "`cargo xtask e2e` runs on real DigitalOcean and needs an API token: create a personal access token with read and write scope at https://cloud.digitalocean.com/account/api/tokens and run `DIGITALOCEAN_TOKEN=<token> cargo xtask e2e` (it makes 5 s-1vcpu-1gb droplets for a few minutes, a few cents). Without an account: `cargo xtask e2e --fake` (fake API) or `cargo xtask e2e --local`"
        );
    }
    for name in [
        "PROMGUARD_DIGITALOCEAN_URL",
        "PROMGUARD_DIGITALOCEAN_NETNS",
        "PROMGUARD_DIGITALOCEAN_TEST_TIMING",
    ] {
        ensure!(
            std::env::var_os(name).is_none(),
            "{name} is set; unset it to run against the real API"
        );
    }
    catch_interrupts()?;
    let bin = crate::cli(root)?;
    let name = format!("e2e{}", std::process::id() % 100_000);
    let _cleanup = TagCleanup {
        deployment: DeploymentName::new(&name)?,
    };
    let d = Deployment {
        bin,
        dir: tempfile::tempdir()?,
        name,
        provider: "digitalocean",
        regions: ["lon1", "sfo3", "sgp1"],
        extra_config: String::new(),
        scrape_interval: "2s".to_owned(),
        env: Vec::new(),
        transcript: Default::default(),
    };
    let (fresh, noop) = scenario(&d, None)?;
    d.ok(&["down", "--yes"])?;
    eprintln!("e2e: DigitalOcean scenario passed (fresh up {fresh:.2?}, no-op up {noop:.2?})");
    Ok(())
}
