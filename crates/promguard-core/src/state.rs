//! The state file (`promguard.state.json`): what a deployment has, so the
//! next run keeps every address and key, knows which hosts exist and which
//! SSH host keys to trust.
//!
//! It is versioned JSON, written atomically (temporary file, fsync, rename,
//! fsync of the directory) with mode 0600 because it holds private keys, and
//! guarded by a lock file so two runs cannot interleave. Neither the
//! temporary file nor the lock is opened through a link planted at its path.
//! A state from a newer PromGuard or a corrupt one is refused and never
//! overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::names::{DeploymentName, HostName, Port, Region, SshUser};
use crate::plan::Role;
use crate::ssh::SshPublicKey;

/// The state format this build writes and the newest it reads.
pub const STATE_VERSION: u32 = 1;

/// Errors reading, writing or locking the state file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The file exists but cannot be read.
    #[error("cannot read state file {path}: {source}; check its permissions")]
    Read {
        /// The state file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// The file is not valid state JSON.
    #[error("state file {path} is corrupt: {reason}; it was left untouched: restore it from a backup, or move it away and adopt the hosts again")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong, with line and column where known.
        reason: String,
    },
    /// The file was written by a newer PromGuard.
    #[error("state file {path} has version {found}, but this promguard understands only up to version {supported}; upgrade promguard (the file was left untouched)")]
    NewerVersion {
        /// The state file.
        path: PathBuf,
        /// The version found.
        found: u64,
        /// [`STATE_VERSION`].
        supported: u32,
    },
    /// The state belongs to a different deployment than the config.
    #[error("{location} belongs to deployment {found:?}, but the config names {expected:?}; use the matching config or another state file")]
    WrongDeployment {
        /// Where the state is ([`StateStore::location`](crate::journal::StateStore::location)).
        location: String,
        /// Deployment named in the state.
        found: String,
        /// Deployment named in the config.
        expected: String,
    },
    /// Writing the file failed; the previous file, if any, is intact.
    #[error("cannot write state file {path}: {source}; the previous state is unchanged")]
    Write {
        /// The state file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// Another run holds the lock.
    #[error("another promguard run (pid {pid}) is working on this deployment (lock {path}); wait for it to finish")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's process id as written in the lock file, or "unknown".
        pid: String,
    },
    /// The run was cancelled and its [`Journal`](crate::journal::Journal)
    /// closed: nothing is saved any more.
    #[error("the run was interrupted; {location} was not saved again")]
    Closed {
        /// Where the state is.
        location: String,
    },
    /// The lock file cannot be created or opened, or is not one promguard
    /// may use (a link, another user's file).
    #[error("cannot use lock file {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
}

/// Everything PromGuard remembers about one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version, [`STATE_VERSION`].
    pub version: u32,
    /// The deployment this state belongs to.
    pub deployment: DeploymentName,
    /// Hosts by name.
    #[serde(default)]
    pub hosts: BTreeMap<HostName, HostRecord>,
    /// One preshared key per monitor-node pair.
    #[serde(default)]
    pub preshared_keys: Vec<PairKey>,
    /// Provider-specific values (ids of registered keys, firewalls, ...).
    #[serde(default)]
    pub provider: BTreeMap<String, String>,
}

/// What the state knows about one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    /// Monitor or node.
    pub role: Role,
    /// Region it was created in.
    pub region: Region,
    /// Its WireGuard address; stays with the host name for its lifetime.
    pub wireguard_address: IpAddr,
    /// Its WireGuard private key.
    pub private_key: PrivateKey,
    /// Its public key, stored for humans and checked against the private key
    /// on load.
    pub public_key: PublicKey,
    /// True once a provider created the host.
    #[serde(default)]
    pub created: bool,
    /// The provider's id for the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// Public (underlay) address, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<IpAddr>,
    /// SSH port on the public address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<Port>,
    /// Pinned SSH host public key, OpenSSH format (`ssh-ed25519 AAAA...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<SshPublicKey>,
    /// True once the host key a provider injected (and that stays readable
    /// from the host's metadata service) was replaced by one generated on
    /// the host, and `ssh_host_key` pins that one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ssh_host_key_rotated: bool,
    /// The new host key of a replacement under way: recorded before the
    /// host serves it, so a run cut off in between still knows both keys
    /// the host may present. Cleared once `ssh_host_key` pins it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key_next: Option<SshPublicKey>,
    /// SHA-256 (hex) of every file PromGuard last wrote on the host, by path.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// When its WireGuard key was first saved (Unix seconds); `None` in
    /// states from before PromGuard recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_created: Option<u64>,
    /// The private key the host had before a rotation, kept until the host
    /// runs the new one, so that a cut-off run never leaves a host with a
    /// key the state does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_private_key: Option<PrivateKey>,
    /// True for a host the user ran before PromGuard (the config names its
    /// address): never destroyed, only left as it was found.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
    /// Who PromGuard logs in as on an existing host; `None`: root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<SshUser>,
    /// What PromGuard installed on an existing host, so that leaving it
    /// removes exactly that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestRecord>,
    /// The shard a monitor scrapes, when the monitors are sharded: the
    /// next plan compares the shards recorded with the configured ones to
    /// say which nodes move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::shards::ShardId>,
}

/// What PromGuard put on a host it did not create, beyond the files of
/// [`HostRecord::files`]: removing exactly this (and those files) leaves
/// the host as it was found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestRecord {
    /// Debian packages PromGuard installed (with the dependencies apt
    /// pulled in); packages the host had before are not listed.
    #[serde(default)]
    pub packages: BTreeSet<String>,
    /// systemd units PromGuard enabled that were not enabled before.
    #[serde(default)]
    pub units: BTreeSet<String>,
    /// ufw rules PromGuard added, each as the arguments of `ufw` that
    /// added it (`allow 51820/udp comment promguard`).
    #[serde(default)]
    pub ufw_rules: Vec<String>,
    /// Files and directories PromGuard created, removed when it leaves.
    #[serde(default)]
    pub created_paths: BTreeSet<String>,
    /// Files that existed before PromGuard changed them: each was copied
    /// aside first and is put back when PromGuard leaves.
    #[serde(default)]
    pub saved_paths: BTreeSet<String>,
}

impl GuestRecord {
    /// Checks every entry as untrusted input: package and unit names of
    /// their alphabets, absolute paths without `..`, ufw arguments of a
    /// plain alphabet.
    pub fn check(&self) -> Result<(), String> {
        let short = |t: &str| -> String {
            match t.char_indices().nth(60) {
                Some((end, _)) => format!("{}...", &t[..end]),
                None => t.to_owned(),
            }
        };
        for p in &self.packages {
            let ok = p.len() <= 100
                && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.:".contains(&b));
            if !ok {
                return Err(format!(
                    "guest.packages: {:?} is not a Debian package name",
                    short(p)
                ));
            }
        }
        for u in &self.units {
            let ok = u.len() <= 200
                && !u.starts_with('-')
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"@-_.:\\".contains(&b))
                && u.contains('.');
            if !ok {
                return Err(format!(
                    "guest.units: {:?} is not a systemd unit name",
                    short(u)
                ));
            }
        }
        for r in &self.ufw_rules {
            let ok = !r.is_empty()
                && r.len() <= 300
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b" ./:-_".contains(&b));
            if !ok {
                return Err(format!(
                    "guest.ufw_rules: {:?} is not a ufw rule PromGuard writes",
                    short(r)
                ));
            }
        }
        for p in self.created_paths.iter().chain(&self.saved_paths) {
            let ok = p.starts_with('/')
                && p.len() > 1
                && p.len() <= 4096
                && !p.split('/').any(|part| part == ".." || part == ".")
                && !p.contains("//")
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'\'' && b != b'"');
            if !ok {
                return Err(format!(
                    "guest paths: {:?} is not an absolute, plain path",
                    short(p)
                ));
            }
        }
        Ok(())
    }
}

impl HostRecord {
    /// Pins `key`, the host-generated key that replaced an injected one.
    pub fn pin_replaced_host_key(&mut self, key: &SshPublicKey) {
        self.ssh_host_key = Some(key.clone());
        self.ssh_host_key_rotated = true;
        self.ssh_host_key_next = None;
    }

    /// Pins `key`, injected by the provider into a host not created yet.
    pub fn pin_injected_host_key(&mut self, key: &SshPublicKey) {
        self.ssh_host_key = Some(key.clone());
        self.ssh_host_key_rotated = false;
        self.ssh_host_key_next = None;
    }

    /// Whether the pinned key is one a provider injected (per `host_keys`)
    /// and so still to be replaced by one the host makes.
    pub fn host_key_needs_replacing(&self, host_keys: crate::capabilities::HostKeys) -> bool {
        host_keys == crate::capabilities::HostKeys::Injected && !self.ssh_host_key_rotated
    }
}

/// Whether [`State::rotate_keys`] also replaces preshared keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preshared {
    /// Keep them.
    Keep,
    /// Replace those of the rotated hosts' pairs.
    Rotate,
}

/// The preshared key of one pair of peers: a monitor and a node or the
/// storage host, or two replicas of one shard (recorded once, the name
/// that sorts first as [`Self::monitor`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairKey {
    /// The monitor (of two replicas, the one whose name sorts first).
    pub monitor: HostName,
    /// The node or the storage host (of two replicas, the other one).
    pub node: HostName,
    /// Their shared key.
    pub key: PresharedKey,
    /// When the key was first saved (Unix seconds), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// The key before a rotation, until both hosts run the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PresharedKey>,
}

impl State {
    /// An empty state for `deployment`.
    pub fn new(deployment: DeploymentName) -> Self {
        Self {
            version: STATE_VERSION,
            deployment,
            hosts: BTreeMap::new(),
            preshared_keys: Vec::new(),
            provider: BTreeMap::new(),
        }
    }

    /// Gives the named hosts (every host when `hosts` is empty) new
    /// WireGuard keys, keeping each old key as the previous one until
    /// [`State::forget_previous_keys`]; with [`Preshared::Rotate`] also the
    /// preshared keys of their pairs. Returns the hosts whose key changed.
    pub fn rotate_keys(
        &mut self,
        hosts: &[HostName],
        preshared: Preshared,
        now: u64,
    ) -> Vec<HostName> {
        let chosen = |name: &HostName| hosts.is_empty() || hosts.contains(name);
        let mut rotated = Vec::new();
        for (name, record) in self.hosts.iter_mut().filter(|(n, _)| chosen(n)) {
            // A rotation cut off part-way leaves the host running either
            // its previous key or its new one, and the state can keep only
            // those two: the host keeps the new key it may already run, and
            // this run finishes that rotation instead of starting another.
            if record.previous_private_key.is_none() {
                let new = PrivateKey::generate();
                record.public_key = new.public_key();
                let old = std::mem::replace(&mut record.private_key, new);
                record.previous_private_key = Some(old);
                record.key_created = Some(now);
            }
            rotated.push(name.clone());
        }
        if preshared == Preshared::Rotate {
            for pair in self
                .preshared_keys
                .iter_mut()
                .filter(|p| chosen(&p.monitor) || chosen(&p.node))
                .filter(|p| p.previous.is_none())
            {
                let old = std::mem::replace(&mut pair.key, PresharedKey::generate());
                pair.previous = Some(old);
                pair.created = Some(now);
            }
        }
        rotated
    }

    /// Drops the previous keys of `converged` hosts (and of pairs whose
    /// both hosts are among them): they run their new keys now.
    pub fn forget_previous_keys(&mut self, converged: &[HostName]) {
        for name in converged {
            if let Some(record) = self.hosts.get_mut(name) {
                record.previous_private_key = None;
            }
        }
        for pair in &mut self.preshared_keys {
            if converged.contains(&pair.monitor) && converged.contains(&pair.node) {
                pair.previous = None;
            }
        }
    }

    /// Whether a rotation is under way: some host or pair still has its
    /// previous key.
    pub fn rotation_pending(&self) -> bool {
        self.hosts
            .values()
            .any(|r| r.previous_private_key.is_some())
            || self.preshared_keys.iter().any(|p| p.previous.is_some())
    }

    /// Records `now` as the creation time of keys that have none.
    pub fn date_new_keys(&mut self, now: u64) {
        for record in self.hosts.values_mut() {
            record.key_created.get_or_insert(now);
        }
        for pair in &mut self.preshared_keys {
            pair.created.get_or_insert(now);
        }
    }

    /// The preshared key of a monitor-node pair.
    pub fn preshared_key(&self, monitor: &HostName, node: &HostName) -> Option<&PresharedKey> {
        self.preshared_keys
            .iter()
            .find(|p| &p.monitor == monitor && &p.node == node)
            .map(|p| &p.key)
    }

    /// Parses state JSON, refusing newer versions and inconsistent content.
    /// `path` is only used in error messages.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Self, StateError> {
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.to_owned(),
            reason: shortened(reason),
        };
        let text = std::str::from_utf8(bytes).map_err(|e| corrupt(format!("not UTF-8 ({e})")))?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
        let version = value
            .get("version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| corrupt("no numeric \"version\" field".into()))?;
        if version > u64::from(STATE_VERSION) {
            return Err(StateError::NewerVersion {
                path: path.to_owned(),
                found: version,
                supported: STATE_VERSION,
            });
        }
        if version == 0 {
            return Err(corrupt("version 0 does not exist".into()));
        }
        let state: State = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        state.check(now).map_err(corrupt)?;
        Ok(state)
    }

    /// Refuses content no PromGuard writes; `now` (Unix seconds, `None`
    /// when the clock is before 1970) bounds the times keys were made.
    fn check(&self, now: Option<u64>) -> Result<(), String> {
        // A key is not made in the future; a day's leeway for the clocks of
        // machines that share a state file.
        let made = |what: String, at: Option<u64>| {
            match (at, now) {
            (Some(at), Some(now)) if at > now.saturating_add(86_400) => Err(format!(
                "{what} is {at} (Unix seconds), {} days after this machine's clock; keys are not made in the future (if the clock is right, the field was edited)",
                (at - now) / 86_400
            )),
            _ => Ok(()),
        }
        };
        let mut seen = BTreeMap::new();
        for (name, host) in &self.hosts {
            if host.private_key.public_key() != host.public_key {
                return Err(format!(
                    "host {name}: public key does not belong to its private key"
                ));
            }
            made(format!("host {name}: key_created"), host.key_created)?;
            if host.previous_private_key.as_ref() == Some(&host.private_key) {
                return Err(format!(
                    "host {name}: previous_private_key is its private_key; a rotation keeps the key it replaced, never the new one"
                ));
            }
            if let Some(guest) = &host.guest {
                guest.check().map_err(|e| format!("host {name}: {e}"))?;
                if !host.existing {
                    return Err(format!("host {name}: a guest record belongs to an existing host only, and this one was created by a provider"));
                }
            }
            if let Some(other) = seen.insert(host.wireguard_address, name) {
                return Err(format!(
                    "hosts {other} and {name} share the WireGuard address {}",
                    host.wireguard_address
                ));
            }
        }
        for pair in &self.preshared_keys {
            let what = format!("preshared key of {} and {}", pair.monitor, pair.node);
            made(format!("{what}: created"), pair.created)?;
            if pair.previous.as_ref() == Some(&pair.key) {
                return Err(format!(
                    "{what}: previous is its key; a rotation keeps the key it replaced, never the new one"
                ));
            }
        }
        Ok(())
    }

    /// The JSON text of the state (with secrets: write it only to a 0600
    /// file).
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("state always serializes");
        text.push('\n');
        text
    }

    /// Reads the state at `path`; `Ok(None)` when there is no file.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|source| StateError::Read {
                path: path.to_owned(),
                source,
            })?;
        Self::from_json(path, &bytes).map(Some)
    }

    /// Writes the state atomically with mode 0600: a crash leaves either the
    /// old file or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        write_atomic(path, self.to_json().as_bytes(), 0o600).map_err(|source| StateError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// `reason` cut to its first 300 and last 100 characters: a parser's message
/// quotes the offending value, which may be megabytes long, and ends with
/// the line and column.
fn shortened(reason: String) -> String {
    let (head, tail) = (300, 100);
    let count = reason.chars().count();
    if count <= head + tail {
        return reason;
    }
    let start: String = reason.chars().take(head).collect();
    let end: String = reason.chars().skip(count - tail).collect();
    format!("{start}...{end}")
}

/// The state in a file (`promguard.state.json`), the CLI's
/// [`StateStore`](crate::journal::StateStore).
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl crate::journal::StateStore for StateFile {
    fn load(&self) -> Result<Option<State>, StateError> {
        State::load(&self.path)
    }

    fn save(&self, state: &State) -> Result<(), StateError> {
        state.save(&self.path)
    }

    fn location(&self) -> String {
        format!("state file {}", self.path.display())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// fsyncs it, renames it over `path` and fsyncs the directory.
///
/// The temporary file is `.<file name>.tmp.<pid>.<16 random hex digits>`,
/// created with `O_CREAT|O_EXCL|O_NOFOLLOW` and `mode` from the first byte:
/// nothing planted in the directory (a link, a file) is ever followed or
/// overwritten, and two writers never share a name. Should a file exist at
/// the name anyway, the write fails and leaves it alone. Temporary files
/// that earlier writers left behind (killed by SIGKILL) are removed first:
/// regular files of this user whose name has exactly that pattern (or the
/// pid-only `.<file name>.tmp.<pid>` of earlier versions) and whose writer
/// process is gone.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    remove_stale_temp_files(dir, file_name);
    let tmp = dir.join(temp_name(file_name, std::process::id(), OsRng.next_u64()));
    write_through(&tmp, path, dir, bytes, mode)
}

/// `.<file name>.tmp.`, the start of every temporary file of `file_name`.
fn temp_prefix(file_name: &OsStr) -> Vec<u8> {
    [b".", file_name.as_bytes(), b".tmp."].concat()
}

/// The temporary file's name for a writer with process id `pid`.
fn temp_name(file_name: &OsStr, pid: u32, nonce: u64) -> OsString {
    let mut name = temp_prefix(file_name);
    name.extend_from_slice(format!("{pid}.{nonce:016x}").as_bytes());
    OsString::from_vec(name)
}

/// The writer's pid if `candidate` is exactly a temporary file's name of
/// `file_name`: `.<file name>.tmp.<pid>` followed by `.<16 lowercase hex
/// digits>` (since names are random) or by nothing (the pid-only name
/// earlier versions used), the pid a decimal from 1 to `i32::MAX` without
/// leading zeros (0 or a negative number would mean a process group to
/// `kill`).
fn temp_writer_pid(file_name: &OsStr, candidate: &OsStr) -> Option<u32> {
    let rest = candidate
        .as_bytes()
        .strip_prefix(temp_prefix(file_name).as_slice())?;
    let (pid, nonce) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], Some(&rest[dot + 1..])),
        None => (rest, None),
    };
    if let Some(nonce) = nonce {
        let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if nonce.len() != 16 || !nonce.iter().all(hex) {
            return None;
        }
    }
    if pid.first().is_none_or(|&b| b == b'0') || !pid.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let pid: u32 = std::str::from_utf8(pid).ok()?.parse().ok()?;
    i32::try_from(pid).is_ok().then_some(pid)
}

/// Whether a process with id `pid` exists (`kill(pid, 0)`; one of another
/// user counts as existing).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return true;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Removes the temporary files of `file_name` in `dir` that a writer killed
/// before it could rename or remove them left behind: they hold a whole
/// state, private keys included. Only names of exactly the temporary files'
/// pattern whose writer's process is gone are removed, and only if they are
/// regular files of this user (never followed: links are left alone). A
/// writer in another PID namespace would look gone; the CLI saves only
/// under the deployment's [`StateLock`], so none runs beside it. Best
/// effort: a file that cannot be removed stays until the next save.
fn remove_stale_temp_files(dir: &Path, file_name: &OsStr) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let Some(pid) = temp_writer_pid(file_name, &entry.file_name()) else {
            continue;
        };
        if process_exists(pid) {
            continue;
        }
        let path = entry.path();
        // lstat: a link is looked at, not through. `remove_file` unlinks
        // the name, so a file swapped for a link meanwhile only loses that
        // link.
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_file() && meta.uid() == uid => {
                let _ = fs::remove_file(&path);
            }
            _ => {}
        }
    }
}

/// Writes the temporary file `tmp` (which must not exist), then renames it
/// over `path` in `dir`.
fn write_through(tmp: &Path, path: &Path, dir: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .mode(mode)
        .open(tmp)
        .map_err(|e| match e.kind() {
            // Not ours: neither followed, nor overwritten, nor removed.
            io::ErrorKind::AlreadyExists => io::Error::new(
                e.kind(),
                format!(
                    "temporary file {} already exists (promguard neither follows nor overwrites it); check what put it there and remove it",
                    tmp.display()
                ),
            ),
            _ => e,
        })?;
    let written = (|| {
        // The mode given to open is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written?;
    File::open(dir)?.sync_all()
}

/// An exclusive lock on a deployment, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl StateLock {
    /// Takes the lock at `path` (created if missing), without waiting: if
    /// another process holds it, the error names that process.
    ///
    /// The lock file is opened with `O_NOFOLLOW` and not truncated on open;
    /// it is used only if it is a regular file of this user with no other
    /// name (a hard link), so no link planted at `path` makes promguard
    /// truncate or write to another file.
    pub fn acquire(path: &Path) -> Result<Self, StateError> {
        let lock_error = |source| StateError::Lock {
            path: path.to_owned(),
            source,
        };
        let refuse = |what: String| {
            lock_error(io::Error::other(format!(
                "{what}; remove it (a run creates its lock file itself)"
            )))
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
                if source.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) && is_link {
                    refuse("it is a symbolic link, which promguard does not follow".into())
                } else {
                    lock_error(source)
                }
            })?;
        let meta = file.metadata().map_err(lock_error)?;
        let uid = nix::unistd::geteuid().as_raw();
        if !meta.file_type().is_file() {
            return Err(refuse("it is not a regular file".into()));
        }
        if meta.uid() != uid {
            return Err(refuse(format!(
                "it belongs to uid {}, not to this user (uid {uid})",
                meta.uid()
            )));
        }
        if meta.nlink() != 1 {
            return Err(refuse(format!(
                "it has {} hard links, so it is another file too",
                meta.nlink()
            )));
        }
        let mut lock =
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((mut file, _)) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    let pid = pid.trim();
                    let pid = if pid.is_empty()
                        || pid.len() > 20
                        || !pid.bytes().all(|b| b.is_ascii_digit())
                    {
                        "unknown".to_owned()
                    } else {
                        pid.to_owned()
                    };
                    return Err(StateError::Locked {
                        path: path.to_owned(),
                        pid,
                    });
                }
            };
        let write_pid = (|| {
            lock.set_len(0)?;
            use std::io::Seek;
            lock.seek(io::SeekFrom::Start(0))?;
            writeln!(lock, "{}", std::process::id())?;
            lock.sync_all()
        })();
        write_pid.map_err(|source| StateError::Lock {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let mut state = State::new(DeploymentName::new("promguard").unwrap());
        let key = PrivateKey::generate();
        state.hosts.insert(
            HostName::new("promguard-monitor-1").unwrap(),
            HostRecord {
                role: Role::Monitor,
                region: Region::new("tor1").unwrap(),
                wireguard_address: "10.0.0.1".parse().unwrap(),
                public_key: key.public_key(),
                private_key: key,
                created: true,
                provider_id: Some("1".into()),
                public_address: Some("198.18.0.2".parse().unwrap()),
                ssh_port: Some(Port::new(22).unwrap()),
                ssh_host_key: None,
                ssh_host_key_rotated: false,
                ssh_host_key_next: None,
                files: BTreeMap::new(),
                key_created: None,
                previous_private_key: None,
                existing: false,
                ssh_user: None,
                guest: None,
                shard: None,
            },
        );
        state
    }

    #[test]
    fn rotation_keeps_the_old_key_until_the_host_runs_the_new_one() {
        let config = crate::config::Config::default();
        let mut state = crate::planner::plan(&config, None).unwrap().next_state;
        state.date_new_keys(100);
        let before = state.clone();
        let node = HostName::new("promguard-node-1").unwrap();
        let monitor = config.monitor.name.clone();
        let rotated = state.rotate_keys(std::slice::from_ref(&node), Preshared::Rotate, 200);
        assert_eq!(rotated, std::slice::from_ref(&node));
        let (old, new) = (&before.hosts[&node], &state.hosts[&node]);
        assert_ne!(old.public_key, new.public_key);
        assert_eq!(new.private_key.public_key(), new.public_key);
        assert_eq!(new.previous_private_key.as_ref(), Some(&old.private_key));
        assert_eq!((old.key_created, new.key_created), (Some(100), Some(200)));
        // Only the named host and its pair changed.
        assert_eq!(state.hosts[&monitor], before.hosts[&monitor]);
        let pair = |s: &State, n: &str| {
            s.preshared_keys
                .iter()
                .find(|p| p.node.as_str() == n)
                .unwrap()
                .clone()
        };
        assert_ne!(
            pair(&state, "promguard-node-1").key,
            pair(&before, "promguard-node-1").key
        );
        assert_eq!(
            pair(&state, "promguard-node-2"),
            pair(&before, "promguard-node-2")
        );
        // Rotated again before the rotation finished: the host runs the
        // old key or the new one, and the state still holds both.
        let first = state.clone();
        state.rotate_keys(std::slice::from_ref(&node), Preshared::Rotate, 300);
        assert_eq!(
            state.hosts[&node].previous_private_key.as_ref(),
            Some(&old.private_key)
        );
        assert_eq!(state.hosts[&node], first.hosts[&node]);
        assert_eq!(
            pair(&state, "promguard-node-1"),
            pair(&first, "promguard-node-1")
        );
        assert!(state.rotation_pending());
        // The pair's previous key goes only once both ends converged.
        state.forget_previous_keys(std::slice::from_ref(&node));
        assert!(state.hosts[&node].previous_private_key.is_none());
        assert!(pair(&state, "promguard-node-1").previous.is_some());
        state.forget_previous_keys(&[node, monitor]);
        assert!(!state.rotation_pending());
        // Everything survives a save and a load.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap().unwrap(), state);
    }

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("promguard.state.json");
        let state = sample();
        state.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(State::load(&path).unwrap().unwrap(), state);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn host_key_rotation_flag_is_optional_and_round_trips() {
        let mut state = sample();
        let text = state.to_json();
        // Old state files have no flag; a false flag is not written.
        assert!(!text.contains("ssh_host_key_rotated"));
        assert_eq!(
            State::from_json(Path::new("s.json"), text.as_bytes()).unwrap(),
            state
        );
        for host in state.hosts.values_mut() {
            host.ssh_host_key_rotated = true;
        }
        let text = state.to_json();
        assert!(text.contains("\"ssh_host_key_rotated\": true"), "{text}");
        assert_eq!(
            State::from_json(Path::new("s.json"), text.as_bytes()).unwrap(),
            state
        );
        // Unknown fields are still refused.
        let bad = text.replace("ssh_host_key_rotated", "ssh_host_key_rotatd");
        assert!(State::from_json(Path::new("s.json"), bad.as_bytes()).is_err());
    }

    #[test]
    fn host_keys_are_validated_when_read() {
        let mut state = sample();
        let key = SshPublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob",
        )
        .unwrap();
        for host in state.hosts.values_mut() {
            host.ssh_host_key = Some(key.clone());
        }
        let text = state.to_json();
        // The file holds the OpenSSH text, as before keys were typed.
        assert!(
            text.contains(&format!("\"ssh_host_key\": \"{key}\"")),
            "{text}"
        );
        assert_eq!(
            State::from_json(Path::new("s.json"), text.as_bytes()).unwrap(),
            state
        );
        let bad = text.replace(&key.to_string(), "ssh-dss AAAA");
        let err = State::from_json(Path::new("s.json"), bad.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported SSH key type"), "{err}");
    }

    #[test]
    fn missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(State::load(&dir.path().join("nope.json"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn newer_version_is_refused() {
        let text = sample()
            .to_json()
            .replace("\"version\": 1", "\"version\": 7");
        let err = State::from_json(Path::new("s.json"), text.as_bytes()).unwrap_err();
        assert!(
            matches!(err, StateError::NewerVersion { found: 7, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade promguard"));
    }

    #[test]
    fn corrupt_state_is_refused_with_position() {
        let err = State::from_json(Path::new("s.json"), b"{\"version\": 1, ").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("is corrupt") && msg.contains("line 1"),
            "{msg}"
        );
        let err = State::from_json(Path::new("s.json"), b"\xff\xfe").unwrap_err();
        assert!(err.to_string().contains("not UTF-8"));
    }

    #[test]
    fn mismatched_public_key_is_refused() {
        let mut state = sample();
        for host in state.hosts.values_mut() {
            host.public_key = PrivateKey::generate().public_key();
        }
        let err = State::from_json(Path::new("s.json"), state.to_json().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn hostile_host_names_in_state_are_refused() {
        let text = sample()
            .to_json()
            .replace("promguard-monitor-1", "$(touch /tmp/pwned)");
        assert!(State::from_json(Path::new("s.json"), text.as_bytes()).is_err());
    }

    /// A state with a rotation under way: every key field is set.
    fn rotating() -> State {
        let config = crate::config::Config::default();
        let mut state = crate::planner::plan(&config, None).unwrap().next_state;
        state.date_new_keys(1_700_000_000);
        state.rotate_keys(&[], Preshared::Rotate, 1_700_000_100);
        state
    }

    fn refused(state: &State) -> String {
        State::from_json(Path::new("s.json"), state.to_json().as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn keys_made_in_the_future_are_refused() {
        let node = HostName::new("promguard-node-2").unwrap();
        let year_3000 = 32_503_680_000;
        let mut state = rotating();
        state.hosts.get_mut(&node).unwrap().key_created = Some(year_3000);
        let err = refused(&state);
        assert!(
            err.contains("is corrupt")
                && err.contains("host promguard-node-2: key_created is 32503680000")
                && err.contains("after this machine's clock"),
            "{err}"
        );
        state.hosts.get_mut(&node).unwrap().key_created = Some(u64::MAX);
        assert!(refused(&state).contains("key_created"));
        let mut state = rotating();
        state.preshared_keys[1].created = Some(year_3000);
        let err = refused(&state);
        assert!(
            err.contains("preshared key of promguard-monitor-1 and promguard-node-2: created"),
            "{err}"
        );
        // A day's leeway for another machine's clock; none without a clock.
        let mut state = rotating();
        let now = 1_800_000_000;
        state.hosts.get_mut(&node).unwrap().key_created = Some(now + 86_400);
        state.preshared_keys[0].created = Some(now + 86_400);
        assert_eq!(state.check(Some(now)), Ok(()));
        assert!(state.check(Some(now - 1)).is_err());
        assert_eq!(state.check(None), Ok(()));
    }

    #[test]
    fn a_previous_key_that_is_the_current_one_is_refused() {
        let node = HostName::new("promguard-node-1").unwrap();
        let mut state = rotating();
        assert_eq!(
            State::from_json(Path::new("s.json"), state.to_json().as_bytes()).unwrap(),
            state
        );
        let record = state.hosts.get_mut(&node).unwrap();
        record.previous_private_key = Some(record.private_key.clone());
        let err = refused(&state);
        assert!(
            err.contains("host promguard-node-1: previous_private_key is its private_key"),
            "{err}"
        );
        let mut state = rotating();
        state.preshared_keys[0].previous = Some(state.preshared_keys[0].key.clone());
        let err = refused(&state);
        assert!(
            err.contains(
                "preshared key of promguard-monitor-1 and promguard-node-1: previous is its key"
            ),
            "{err}"
        );
    }

    #[test]
    fn corrupt_values_are_quoted_short() {
        let text = rotating().to_json().replacen(
            "\"key_created\": 1700000100",
            &format!("\"key_created\": \"{}\"", "x".repeat(100_000)),
            1,
        );
        let err = State::from_json(Path::new("s.json"), text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.len() < 1000, "{} bytes: {}", err.len(), &err[..200]);
        assert!(
            err.contains("invalid type: string \"xxx") && err.contains("expected u64 at line"),
            "{err}"
        );
    }

    #[test]
    fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("promguard.state.lock");
        let _held = StateLock::acquire(&path).unwrap();
        let err = StateLock::acquire(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }
}

#[cfg(test)]
mod symlink_tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A file the user owns that a planted link points at.
    fn victim(dir: &Path) -> PathBuf {
        let victim = dir.join("victim");
        fs::write(&victim, "the user's own file\n").unwrap();
        victim
    }

    fn assert_untouched(victim: &Path) {
        assert_eq!(fs::read_to_string(victim).unwrap(), "the user's own file\n");
    }

    #[test]
    fn temp_file_is_never_opened_through_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = victim(dir.path());
        let path = dir.path().join("promguard.state.json");
        sample_state().save(&path).unwrap();
        let before = fs::read(&path).unwrap();
        let tmp = dir
            .path()
            .join(".promguard.state.json.tmp.1.0000000000000000");
        symlink(&victim, &tmp).unwrap();

        let err = write_through(&tmp, &path, dir.path(), b"{}", 0o600).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert!(
            err.to_string().contains(&tmp.display().to_string()),
            "{err}"
        );
        assert_untouched(&victim);
        // The link is not ours to remove, and the previous state is intact.
        assert!(fs::symlink_metadata(&tmp).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn save_is_not_diverted_by_a_symlink_at_the_predictable_temp_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = victim(dir.path());
        let path = dir.path().join("promguard.state.json");
        // The name every PromGuard up to this fix used: pid only.
        let planted = dir
            .path()
            .join(format!(".promguard.state.json.tmp.{}", std::process::id()));
        symlink(&victim, &planted).unwrap();

        let state = sample_state();
        state.save(&path).unwrap();

        assert_untouched(&victim);
        assert_eq!(State::load(&path).unwrap().unwrap(), state);
    }

    #[test]
    fn lock_refuses_a_symlink_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = victim(dir.path());
        let path = dir.path().join("promguard.state.lock");
        symlink(&victim, &path).unwrap();
        let dangling = dir.path().join("dangling.lock");
        symlink(dir.path().join("created-through-the-link"), &dangling).unwrap();

        let err = StateLock::acquire(&path).unwrap_err();
        let dangling_err = StateLock::acquire(&dangling).unwrap_err();

        assert!(matches!(err, StateError::Lock { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("symbolic link")
                && msg.contains("remove it"),
            "{msg}"
        );
        assert_untouched(&victim);
        assert!(
            dangling_err.to_string().contains("symbolic link"),
            "{dangling_err}"
        );
        assert!(!dir.path().join("created-through-the-link").exists());
    }

    #[test]
    fn lock_refuses_a_hard_link_to_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let victim = victim(dir.path());
        let path = dir.path().join("promguard.state.lock");
        fs::hard_link(&victim, &path).unwrap();

        let err = StateLock::acquire(&path).unwrap_err();

        assert!(matches!(err, StateError::Lock { .. }), "{err}");
        assert!(err.to_string().contains("remove it"), "{err}");
        assert_untouched(&victim);
    }

    #[test]
    fn lock_file_of_an_earlier_run_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("promguard.state.lock");
        fs::write(&path, "999999999\n").unwrap();
        let lock = StateLock::acquire(&path).unwrap();
        assert_eq!(
            fs::read_to_string(lock.path()).unwrap(),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn save_removes_temp_files_of_dead_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let victim = victim(dir.path());
        let path = dir.path().join("promguard.state.json");
        // No process has this pid: Linux's pid_max is at most 2^22.
        let dead = i32::MAX;
        let live = std::process::id();
        let name = |suffix: &str| {
            dir.path()
                .join(format!(".promguard.state.json.tmp.{suffix}"))
        };
        let stale = [
            name(&format!("{dead}.0123456789abcdef")),
            // What a PromGuard before this fix left behind.
            name(&format!("{dead}")),
        ];
        let kept = [
            name(&format!("{live}.0123456789abcdef")),
            name(&format!("{live}")),
            // Not exactly the pattern.
            name(&format!("{dead}.0123456789abcdeg")),
            name(&format!("{dead}.0123456789abcdef0")),
            name(&format!("{dead}.")),
            name(&format!("{dead}x")),
            name(""),
            name("0"),
            dir.path().join(format!(".other.json.tmp.{dead}")),
            dir.path().join(format!("promguard.state.json.tmp.{dead}")),
        ];
        for file in stale.iter().chain(&kept) {
            fs::write(file, "secret").unwrap();
        }
        // A matching name that is a link: neither followed nor removed.
        let link = name(&format!("{dead}.fedcba9876543210"));
        symlink(&victim, &link).unwrap();

        sample_state().save(&path).unwrap();

        for file in &stale {
            assert!(!file.exists(), "{} is left", file.display());
        }
        for file in &kept {
            assert!(file.exists(), "{} was removed", file.display());
        }
        assert!(fs::symlink_metadata(&link).is_ok());
        assert_untouched(&victim);
    }

    fn sample_state() -> State {
        State::new(DeploymentName::new("promguard").unwrap())
    }
}
