//! `deployment.json`: what a local deployment consists of, so that listing
//! and destroying never guess. Every change happens under one lock file in
//! the state directory, shared by all deployments (the underlay choice looks
//! at the other deployments too).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use nix::fcntl::{Flock, FlockArg};
use promguard_core::{DeploymentName, HostName, Port, Region, Role};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::process::InitProcess;

/// The version written into new records.
const VERSION: u32 = 1;

/// One local deployment as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeploymentRecord {
    pub version: u32,
    pub deployment: DeploymentName,
    /// The /24 the hosts' "public" addresses come from; `None` until the hub
    /// exists.
    #[serde(
        serialize_with = "serialize_network",
        deserialize_with = "deserialize_network"
    )]
    pub underlay: Option<Ipv4Network>,
    /// The hub namespace, once created.
    pub hub_netns: Option<String>,
    /// Login keys authorized on hosts created from now on.
    pub authorized_keys: Vec<String>,
    pub hosts: Vec<HostEntry>,
    pub outsiders: Vec<OutsiderEntry>,
    /// The package mirror server in the hub, while systemd hosts need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_server: Option<InitProcess>,
    /// The mirror directory that server serves: a config naming other
    /// packages needs another mirror, and the server is restarted on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_dir: Option<std::path::PathBuf>,
}

/// What kind of host an entry is; records written before systemd hosts
/// existed hold namespace hosts only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HostKind {
    /// A namespace host whose init is sshd.
    #[default]
    Namespace,
    /// A systemd host whose init is the nspawn supervisor.
    Systemd,
}

impl HostKind {
    fn is_namespace(&self) -> bool {
        *self == HostKind::Namespace
    }
}

/// One host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostEntry {
    pub name: HostName,
    /// Small number that names the host's namespace and veth and picks its
    /// address (`.10 + index`).
    pub index: u8,
    pub address: Ipv4Addr,
    pub netns: String,
    pub role: Option<Role>,
    pub region: Region,
    pub ssh_port: Port,
    /// `ssh-ed25519 AAAA...`, once generated.
    pub host_key: Option<String>,
    /// PID 1 of the host's PID namespace (namespace hosts) or the nspawn
    /// supervisor (systemd hosts), once started.
    pub init: Option<InitProcess>,
    /// What kind of host it is.
    #[serde(default, skip_serializing_if = "HostKind::is_namespace")]
    pub kind: HostKind,
}

/// A namespace on the bridge that belongs to no host (tests use it as "the
/// internet").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutsiderEntry {
    pub name: HostName,
    pub index: u8,
    pub address: Ipv4Addr,
    pub netns: String,
}

impl DeploymentRecord {
    pub fn new(deployment: DeploymentName) -> Self {
        Self {
            version: VERSION,
            deployment,
            underlay: None,
            hub_netns: None,
            authorized_keys: Vec::new(),
            hosts: Vec::new(),
            outsiders: Vec::new(),
            mirror_server: None,
            mirror_dir: None,
        }
    }

    /// The lowest index that no host or outsider uses, keeping addresses
    /// within `.10 ..= .253`.
    pub fn free_index(&self) -> Option<u8> {
        (0..=243u8).find(|i| {
            !self.hosts.iter().any(|h| h.index == *i)
                && !self.outsiders.iter().any(|o| o.index == *i)
        })
    }
}

fn serialize_network<S: Serializer>(net: &Option<Ipv4Network>, s: S) -> Result<S::Ok, S::Error> {
    match net {
        Some(net) => s.serialize_some(&net.to_string()),
        None => s.serialize_none(),
    }
}

fn deserialize_network<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Network>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| Ipv4Network::from_str(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// The state directory and the files in it.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn deployment_dir(&self, deployment: &DeploymentName) -> PathBuf {
        self.root.join(deployment.as_str())
    }

    pub fn record_path(&self, deployment: &DeploymentName) -> PathBuf {
        self.deployment_dir(deployment).join("deployment.json")
    }

    pub fn host_dir(&self, deployment: &DeploymentName, host: &HostName) -> PathBuf {
        self.deployment_dir(deployment)
            .join("hosts")
            .join(host.as_str())
    }

    /// Takes the state directory's lock, creating the directory (0700) if
    /// needed. Blocks while another thread or process holds it.
    pub fn lock(&self) -> io::Result<Flock<File>> {
        create_private_dir(&self.root)?;
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))
    }

    /// Reads a deployment's record; `None` when it has none.
    pub fn load(&self, deployment: &DeploymentName) -> io::Result<Option<DeploymentRecord>> {
        let path = self.record_path(deployment);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        serde_json::from_str(&text).map(Some).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a valid deployment record: {err}", path.display()),
            )
        })
    }

    /// Writes a record atomically (temporary file + rename), mode 0600.
    pub fn save(&self, record: &DeploymentRecord) -> io::Result<()> {
        let dir = self.deployment_dir(&record.deployment);
        create_private_dir(&dir)?;
        let path = self.record_path(&record.deployment);
        let tmp = dir.join(".deployment.json.tmp");
        let mut text = serde_json::to_string_pretty(record).map_err(io::Error::other)?;
        text.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    }

    /// The underlays of every other deployment in this state directory.
    pub fn other_underlays(&self, deployment: &DeploymentName) -> io::Result<Vec<Ipv4Network>> {
        let mut taken = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(taken),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(other) = DeploymentName::new(&name) else {
                continue;
            };
            if &other == deployment {
                continue;
            }
            // A broken record of another deployment must not stop this one,
            // but its underlay is then unknown: skip it rather than guess.
            if let Ok(Some(record)) = self.load(&other) {
                taken.extend(record.underlay);
            }
        }
        Ok(taken)
    }
}

/// Creates `path` and its parents; the last component gets mode 0700.
pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, index: u8) -> HostEntry {
        HostEntry {
            name: HostName::new(name).unwrap(),
            index,
            address: Ipv4Addr::new(198, 18, 0, 10 + index),
            netns: format!("pg-d-{index}"),
            role: Some(Role::Node),
            region: Region::new("local").unwrap(),
            ssh_port: Port::new(22).unwrap(),
            host_key: None,
            init: Some(InitProcess {
                pid: 42,
                start_time: 7,
            }),
            kind: HostKind::Namespace,
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir {
            root: dir.path().to_owned(),
        };
        let mut record = DeploymentRecord::new(DeploymentName::new("d").unwrap());
        record.underlay = Some("198.18.3.0/24".parse().unwrap());
        record.hub_netns = Some("pg-d-hub".into());
        record.hosts.push(entry("monitor", 0));
        state.save(&record).unwrap();
        assert_eq!(
            state.load(&record.deployment).unwrap(),
            Some(record.clone())
        );
        let text = fs::read_to_string(state.record_path(&record.deployment)).unwrap();
        expect_test::expect![[r#"
            {
              "version": 1,
              "deployment": "d",
              "underlay": "198.18.3.0/24",
              "hub_netns": "pg-d-hub",
              "authorized_keys": [],
              "hosts": [
                {
                  "name": "monitor",
                  "index": 0,
                  "address": "198.18.0.10",
                  "netns": "pg-d-0",
                  "role": "node",
                  "region": "local",
                  "ssh_port": 22,
                  "host_key": null,
                  "init": {
                    "pid": 42,
                    "start_time": 7
                  }
                }
              ],
              "outsiders": []
            }
        "#]]
        .assert_eq(&text);
        let other = DeploymentName::new("e").unwrap();
        assert_eq!(
            state.other_underlays(&other).unwrap(),
            vec!["198.18.3.0/24".parse::<Ipv4Network>().unwrap()]
        );
        assert!(state
            .other_underlays(&record.deployment)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn free_index_fills_gaps() {
        let mut record = DeploymentRecord::new(DeploymentName::new("d").unwrap());
        assert_eq!(record.free_index(), Some(0));
        record.hosts.push(entry("a", 0));
        record.hosts.push(entry("b", 2));
        assert_eq!(record.free_index(), Some(1));
    }
}
