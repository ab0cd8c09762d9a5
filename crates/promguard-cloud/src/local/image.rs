//! The base image of systemd hosts and the package mirror they install
//! from, both built once on this machine and cached.
//!
//! The image is what a cloud image holds and nothing PromGuard installs:
//! Debian 12 (`debootstrap --variant=minbase`) with systemd, dbus,
//! openssh-server, apt, ifupdown, sudo and cloud-init. It is shared,
//! read-only, by every systemd host (each host writes to an overlay of its
//! own). Two things stand in for what a real server's kernel and cloud do:
//! `wireguard-go` with the environment wg-quick needs to use it (the kernel
//! here has no WireGuard module, a droplet's has), and cloud-init leaves the
//! network alone (the provider configured `eth0` before the host booted).
//!
//! Hosts reach no network but their deployment's, so apt inside them
//! installs from a mirror: the `.deb` files of the packages the recipe
//! installs and of their dependencies that the image lacks, downloaded once
//! from Debian with a private apt configuration (this machine's own apt
//! state is not touched) and indexed with `dpkg-scanpackages`. The local
//! provider serves it inside each deployment's hub namespace. A test that
//! plays servers which run other software already asks for a mirror with
//! those extra packages too ([`ensure_mirror_with`]).
//!
//! Both are built in a temporary directory next to their final place and
//! renamed into it when complete, under a lock, so an interrupted build
//! leaves nothing that looks usable and two runs never build at once.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};

use super::preflight::SEARCH_PATH;

/// Bump when the image's contents change, so that old caches are rebuilt.
const IMAGE_VERSION: u32 = 3;

/// Bump when the mirror's layout changes.
const MIRROR_VERSION: u32 = 1;

/// The Debian release of the image.
const SUITE: &str = "bookworm";

/// Where Debian's packages come from.
pub const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// Where the security updates come from.
const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";

/// Packages of the image beyond minbase. `python3-cffi-backend` is named
/// because debootstrap does not resolve the virtual package that
/// cloud-init's `python3-cryptography` depends on.
const IMAGE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "ifupdown",
    "netbase",
    "procps",
    "sudo",
    "curl",
    "cloud-init",
    "python3-cffi-backend",
    // Stands in for the kernel's WireGuard module, which this machine lacks.
    "wireguard-go",
];

/// What the recipe installs with apt on a host (and so what the mirror
/// must hold, with every dependency the image lacks).
pub const MIRROR_PACKAGES: &[&str] = &[
    "wireguard-tools",
    "nftables",
    "prometheus-node-exporter",
    "prometheus",
    "prometheus-alertmanager",
];

/// Files the image gets on top of what debootstrap made.
const IMAGE_FILES: &[(&str, &str)] = &[
    (
        "etc/systemd/system/wg-quick@.service.d/userspace.conf",
        "# PromGuard local image: this machine's kernel has no WireGuard module,\n\
         # so wg-quick falls back to wireguard-go, which insists on this.\n\
         [Service]\nEnvironment=WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1\n",
    ),
    (
        "etc/cloud/cloud.cfg.d/90-promguard-local.cfg",
        "# PromGuard local image: the provider configured eth0 before boot;\n\
         # root logs in with its key, as on DigitalOcean's images; the\n\
         # image has no locales but C.UTF-8.\n\
         network:\n  config: disabled\n\
         datasource_list: [NoCloud, DigitalOcean, None]\n\
         disable_root: false\n\
         locale: C.UTF-8\n",
    ),
    // Hosts reach only their deployment's mirror, which the provider
    // configures for each host.
    ("etc/apt/sources.list", ""),
    // Each host gets its own machine id; an empty file makes systemd keep
    // the one the host's overlay holds.
    ("etc/machine-id", ""),
];

/// Units the image leaves off: apt's timers would run `apt-get update`
/// against a mirror at random moments of a test and hold the dpkg lock.
const MASKED_UNITS: &[&str] = &["apt-daily.timer", "apt-daily-upgrade.timer"];

/// A built image: its root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// The root file system, to be used read-only.
    pub rootfs: PathBuf,
}

/// A built package mirror: a flat apt repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageMirror {
    /// The directory with `Packages` and the `.deb` files.
    pub dir: PathBuf,
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> String {
    let message = format!("cannot {what} {}", path.display());
    move |err| format!("{message}: {err}")
}

/// Runs `program` with `args`; its output goes to `log`. Fails with the
/// log's last lines.
fn run_logged(program: &str, args: &[&str], cwd: Option<&Path>, log: &Path) -> Result<(), String> {
    let out = File::create(log).map_err(io_err("create", log))?;
    let err = out.try_clone().map_err(io_err("open", log))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("PATH", SEARCH_PATH)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let status = command.status().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!(
            "{program} is not installed; install it with `apt-get install {}`",
            package_of(program)
        ),
        _ => format!("cannot run {program}: {e}"),
    })?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{program} {} failed ({status}); the end of {}:\n{}",
        args.first().copied().unwrap_or_default(),
        log.display(),
        tail.join("\n")
    ))
}

/// The Debian package of `program`, from the provider's list of what
/// systemd hosts need.
fn package_of(program: &str) -> &'static str {
    super::preflight::SYSTEMD_PROGRAMS
        .iter()
        .find(|p| p.name == program)
        .map_or("apt", |p| p.package)
}

/// Takes the cache's lock (blocking), creating the cache directory.
fn lock(cache: &Path) -> Result<Flock<File>, String> {
    fs::create_dir_all(cache).map_err(io_err("create", cache))?;
    let path = cache.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("open", &path))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| format!("cannot lock {}: {errno}", path.display()))
}

fn remove_tree(path: &Path) -> Result<(), String> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(format!("cannot remove {}: {err}", path.display())),
    }
}

/// The image's directory in `cache`; complete once `complete` exists.
fn image_dir(cache: &Path) -> PathBuf {
    cache.join(format!("debian-12-v{IMAGE_VERSION}"))
}

/// The image, built first when `cache` has none. Building takes about a
/// minute and some 400 MB.
pub fn ensure_base_image(cache: &Path, debian_mirror: &str) -> Result<BaseImage, String> {
    let dir = image_dir(cache);
    let image = BaseImage {
        rootfs: dir.join("rootfs"),
    };
    if dir.join("complete").exists() {
        return Ok(image);
    }
    let _lock = lock(cache)?;
    if dir.join("complete").exists() {
        return Ok(image);
    }
    tracing::info!(
        "building the systemd hosts' base image in {}",
        dir.display()
    );
    let building = cache.join(format!("debian-12-v{IMAGE_VERSION}.building"));
    remove_tree(&building)?;
    fs::create_dir_all(&building).map_err(io_err("create", &building))?;
    let rootfs = building.join("rootfs");
    let include = format!("--include={}", IMAGE_PACKAGES.join(","));
    let target = rootfs.to_string_lossy().into_owned();
    run_logged(
        "debootstrap",
        &["--variant=minbase", &include, SUITE, &target, debian_mirror],
        None,
        &building.join("debootstrap.log"),
    )?;
    finish_image(&rootfs)?;
    fs::write(building.join("complete"), format!("{IMAGE_VERSION}\n"))
        .map_err(io_err("write", &building))?;
    remove_tree(&dir)?;
    fs::rename(&building, &dir).map_err(io_err("rename", &building))?;
    Ok(image)
}

/// What the image gets after debootstrap: no SSH host keys or machine id of
/// its own (every host makes its own), the files of [`IMAGE_FILES`], masked
/// timers, and no package cache.
fn finish_image(rootfs: &Path) -> Result<(), String> {
    let ssh = rootfs.join("etc/ssh");
    for entry in fs::read_dir(&ssh).map_err(io_err("read", &ssh))? {
        let entry = entry.map_err(io_err("read", &ssh))?;
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
        }
    }
    for (path, content) in IMAGE_FILES {
        let path = rootfs.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        fs::write(&path, content).map_err(io_err("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod", &path))?;
    }
    let _ = fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
    for unit in MASKED_UNITS {
        let link = rootfs.join("etc/systemd/system").join(unit);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).map_err(io_err("create", &link))?;
        let wants = rootfs
            .join("etc/systemd/system/timers.target.wants")
            .join(unit);
        let _ = fs::remove_file(wants);
    }
    let archives = rootfs.join("var/cache/apt/archives");
    if let Ok(entries) = fs::read_dir(&archives) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "deb") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// The mirror for `image`, built first when `cache` has none: the
/// packages of [`MIRROR_PACKAGES`] and every dependency the image lacks,
/// as apt resolves them against the image's own package database.
pub fn ensure_mirror(
    cache: &Path,
    image: &BaseImage,
    debian_mirror: &str,
) -> Result<PackageMirror, String> {
    ensure_mirror_with(cache, image, debian_mirror, &[])
}

/// The mirror for `image` with `extra` packages (and their dependencies)
/// besides [`MIRROR_PACKAGES`]: software a user's server runs already,
/// for tests that play such servers. Without extras it is the mirror of
/// [`ensure_mirror`]; with them, a mirror of its own, cached under a name
/// that lists them and seeded with the plain mirror's files, so only what
/// the extras add is downloaded.
pub fn ensure_mirror_with(
    cache: &Path,
    image: &BaseImage,
    debian_mirror: &str,
    extra: &[String],
) -> Result<PackageMirror, String> {
    let plain = build_mirror(cache, image, debian_mirror, &[], None)?;
    if extra.is_empty() {
        return Ok(plain);
    }
    build_mirror(cache, image, debian_mirror, extra, Some(&plain))
}

/// What names the mirror of `packages` in the cache: the list itself
/// while it is short, its digest once it would make too long a file name
/// (a host running several exporters and servers).
fn mirror_key(packages: &[&str]) -> String {
    use sha2::Digest as _;
    let list = packages.join("+");
    if list.len() <= 120 {
        return list;
    }
    let digest = sha2::Sha256::digest(list.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256-{hex}")
}

/// Builds (unless cached) the mirror of [`MIRROR_PACKAGES`] plus `extra`,
/// starting from the `.deb` files of `seed` when given.
fn build_mirror(
    cache: &Path,
    image: &BaseImage,
    debian_mirror: &str,
    extra: &[String],
    seed: Option<&PackageMirror>,
) -> Result<PackageMirror, String> {
    let mut packages: Vec<&str> = MIRROR_PACKAGES.to_vec();
    packages.extend(extra.iter().map(String::as_str));
    let dir = cache.join(format!(
        "mirror-v{MIRROR_VERSION}-image-v{IMAGE_VERSION}-{}",
        mirror_key(&packages)
    ));
    let mirror = PackageMirror {
        dir: dir.join("debs"),
    };
    if dir.join("complete").exists() {
        return Ok(mirror);
    }
    let _lock = lock(cache)?;
    if dir.join("complete").exists() {
        return Ok(mirror);
    }
    tracing::info!(
        "building the systemd hosts' package mirror in {}",
        dir.display()
    );
    let building = cache.join(format!("mirror-v{MIRROR_VERSION}.building"));
    remove_tree(&building)?;
    let debs = building.join("debs");
    let lists = building.join("lists");
    let apt_cache = building.join("apt-cache");
    for d in [&debs.join("partial"), &lists.join("partial"), &apt_cache] {
        fs::create_dir_all(d).map_err(io_err("create", d))?;
    }
    if let Some(seed) = seed {
        // apt downloads no file its archive directory holds already.
        for entry in fs::read_dir(&seed.dir).map_err(io_err("read", &seed.dir))? {
            let entry = entry.map_err(io_err("read", &seed.dir))?;
            if entry.path().extension().is_some_and(|e| e == "deb") {
                let to = debs.join(entry.file_name());
                fs::hard_link(entry.path(), &to)
                    .or_else(|_| fs::copy(entry.path(), &to).map(|_| ()))
                    .map_err(io_err("copy", &entry.path()))?;
            }
        }
    }
    // A private apt configuration: Debian's own archive (as the image
    // was made from, plus its updates), its own lists, and the image's
    // package database, so apt downloads exactly what the image lacks.
    let sources = building.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb {debian_mirror} {SUITE} main\n\
             deb {debian_mirror} {SUITE}-updates main\n\
             deb {DEBIAN_SECURITY} {SUITE}-security main\n"
        ),
    )
    .map_err(io_err("write", &sources))?;
    let status = image.rootfs.join("var/lib/dpkg/status");
    let options = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/nonexistent".to_owned(),
        format!("Dir::State::Lists={}", lists.display()),
        format!("Dir::State::status={}", status.display()),
        format!("Dir::Cache={}", apt_cache.display()),
        format!("Dir::Cache::archives={}", debs.display()),
        "Debug::NoLocking=1".to_owned(),
        "APT::Install-Recommends=false".to_owned(),
    ];
    let mut args: Vec<&str> = Vec::new();
    for option in &options {
        args.push("-o");
        args.push(option);
    }
    let mut update = args.clone();
    update.extend(["-q", "update"]);
    run_logged("apt-get", &update, None, &building.join("apt-update.log"))?;
    let mut download = args.clone();
    download.extend(["-q", "-y", "--download-only", "install"]);
    download.extend(&packages);
    run_logged(
        "apt-get",
        &download,
        None,
        &building.join("apt-download.log"),
    )?;
    remove_tree(&debs.join("partial"))?;
    let index = debs.join("Packages");
    let out = File::create(&index).map_err(io_err("create", &index))?;
    let scan = Command::new("dpkg-scanpackages")
        .args(["-m", ".", "/dev/null"])
        .current_dir(&debs)
        .env("PATH", SEARCH_PATH)
        .stdout(out)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!(
                "dpkg-scanpackages is not installed; install it with `apt-get install {}`",
                package_of("dpkg-scanpackages")
            ),
            _ => format!("cannot run dpkg-scanpackages: {e}"),
        })?;
    if !scan.status.success() {
        return Err(format!(
            "dpkg-scanpackages failed: {}",
            String::from_utf8_lossy(&scan.stderr)
        ));
    }
    let indexed = fs::read_to_string(&index).map_err(io_err("read", &index))?;
    for package in &packages {
        if !indexed
            .lines()
            .any(|l| l.strip_prefix("Package: ") == Some(*package))
        {
            return Err(format!(
                "the package mirror in {} lacks {package} after downloading",
                building.display()
            ));
        }
    }
    remove_tree(&lists)?;
    remove_tree(&apt_cache)?;
    fs::write(building.join("complete"), format!("{MIRROR_VERSION}\n"))
        .map_err(io_err("write", &building))?;
    remove_tree(&dir)?;
    fs::rename(&building, &dir).map_err(io_err("rename", &building))?;
    Ok(mirror)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_package_list_names_its_mirror_by_digest() {
        assert_eq!(
            mirror_key(&["nftables", "prometheus"]),
            "nftables+prometheus"
        );
        let many: Vec<String> = (0..20)
            .map(|i| format!("prometheus-exporter-{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let key = mirror_key(&many);
        assert!(key.starts_with("sha256-") && key.len() == 31, "{key}");
        assert_ne!(key, mirror_key(&many[1..]));
    }

    #[test]
    fn finishing_removes_what_hosts_must_not_share() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "etc/ssh",
            "etc/systemd/system/timers.target.wants",
            "var/lib/dbus",
            "var/cache/apt/archives",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "etc/ssh/ssh_host_rsa_key",
            "etc/ssh/sshd_config",
            "etc/machine-id",
            "var/lib/dbus/machine-id",
            "var/cache/apt/archives/x_1_amd64.deb",
        ] {
            fs::write(root.join(f), "shared").unwrap();
        }
        std::os::unix::fs::symlink(
            "/lib/systemd/system/apt-daily.timer",
            root.join("etc/systemd/system/timers.target.wants/apt-daily.timer"),
        )
        .unwrap();
        finish_image(root).unwrap();
        let ssh: Vec<String> = fs::read_dir(root.join("etc/ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(ssh, ["sshd_config"]);
        assert_eq!(fs::read_to_string(root.join("etc/machine-id")).unwrap(), "");
        assert!(!root.join("var/lib/dbus/machine-id").exists());
        assert!(!root.join("var/cache/apt/archives/x_1_amd64.deb").exists());
        assert_eq!(
            fs::read_link(root.join("etc/systemd/system/apt-daily.timer")).unwrap(),
            Path::new("/dev/null")
        );
        assert!(!root
            .join("etc/systemd/system/timers.target.wants/apt-daily.timer")
            .exists());
        let wg =
            fs::read_to_string(root.join("etc/systemd/system/wg-quick@.service.d/userspace.conf"))
                .unwrap();
        assert!(wg.contains("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1"));
        let cloud =
            fs::read_to_string(root.join("etc/cloud/cloud.cfg.d/90-promguard-local.cfg")).unwrap();
        assert!(cloud.contains("disable_root: false"), "{cloud}");
    }

    #[test]
    fn a_missing_program_is_named_with_its_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_logged(
            "promguard-no-such-debootstrap",
            &[],
            None,
            &dir.path().join("log"),
        )
        .unwrap_err();
        assert!(err.contains("is not installed"), "{err}");
    }
}
