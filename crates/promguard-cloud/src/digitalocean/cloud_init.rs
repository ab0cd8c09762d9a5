//! The cloud-init user data that installs PromGuard-generated SSH host keys,
//! and the `ssh-keygen` call that makes them.
//!
//! One create request carries one `user_data` for every droplet of its batch,
//! so the user data holds the host keys of the whole batch and a boot command
//! picks the one for the droplet's own name. The keys are in the clear in the
//! metadata service of every droplet of the batch; that is why the host recipe
//! replaces each host key with one generated on the host right after the first
//! (verified) connection.

use std::fmt;
use std::path::Path;

use promguard_core::{HostName, SshPublicKey};

/// An ed25519 SSH host key pair PromGuard generated for one droplet.
#[derive(Clone)]
pub struct HostKeyPair {
    /// The private key in OpenSSH format.
    private: String,
    /// The public key.
    public: SshPublicKey,
}

impl HostKeyPair {
    /// The public key, which the first SSH connection must see.
    pub fn public(&self) -> &SshPublicKey {
        &self.public
    }

    /// The private key in OpenSSH format.
    pub fn private_openssh(&self) -> &str {
        &self.private
    }

    /// Runs `ssh-keygen -t ed25519` in a fresh temporary directory.
    pub async fn generate(comment: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir()
            .map_err(|e| format!("cannot create a temporary directory for a host key: {e}"))?;
        let path = dir.path().join("host_key");
        let output = tokio::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| {
                format!(
                    "cannot run ssh-keygen to make an SSH host key: {e}; install openssh-client"
                )
            })?;
        if !output.status.success() {
            return Err(format!(
                "ssh-keygen failed to make an SSH host key: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Self::read(&path)
    }

    fn read(path: &Path) -> Result<Self, String> {
        let private = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the host key {}: {e}", path.display()))?;
        let public_path = path.with_extension("pub");
        let public_text = std::fs::read_to_string(&public_path)
            .map_err(|e| format!("cannot read the host key {}: {e}", public_path.display()))?;
        let public = SshPublicKey::parse(&public_text)
            .map_err(|e| format!("ssh-keygen wrote an unreadable public key: {e}"))?;
        if !private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") {
            return Err("ssh-keygen wrote a private key in an unexpected format".into());
        }
        Ok(Self { private, public })
    }
}

impl fmt::Debug for HostKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostKeyPair({}, private: <redacted>)", self.public)
    }
}

/// What a droplet installs on its first boot, before PromGuard first
/// connects: the packages, and the units to keep stopped until PromGuard
/// has configured them (Debian starts a service as it installs it: the
/// exporter would listen on every address until then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirstBoot {
    /// Debian packages for cloud-init's `packages`.
    pub packages: Vec<String>,
    /// Units masked (in `/run`, so only until the next boot) before the
    /// packages are installed; PromGuard unmasks them when it starts them.
    pub hold_units: Vec<String>,
}

fn is_plain(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.+-_".contains(&b))
}

/// Where the boot command records that it ran: a later boot must not undo
/// the host key the recipe put in place.
const MARKER: &str = "/etc/promguard/initial-host-key-installed";

/// Marks the start of one droplet's key block; parsed by [`host_key_for`].
const BEGIN: &str = "# promguard-host-key ";

/// Renders `#cloud-config` user data installing `keys` (droplet name ->
/// key pair) and `first_boot`'s packages. The script runs as `bootcmd`,
/// before cloud-init's `ssh` module and before sshd starts, and cloud-init
/// is told neither to delete nor to generate host keys. Package and unit
/// names that are not plain words are left out.
pub fn render(keys: &[(HostName, HostKeyPair)], first_boot: &FirstBoot) -> String {
    let packages: Vec<&str> = first_boot
        .packages
        .iter()
        .map(String::as_str)
        .filter(|p| is_plain(p))
        .collect();
    let held: Vec<&str> = first_boot
        .hold_units
        .iter()
        .map(String::as_str)
        .filter(|u| is_plain(u))
        .collect();
    let mut script = String::new();
    script.push_str("set -eu\n");
    if !packages.is_empty() && !held.is_empty() {
        // bootcmd runs at every boot, before the packages module of the
        // first: mask only while the packages are missing, so a later boot
        // starts the services PromGuard configured. The mask lives in /run
        // and PromGuard unmasks the units when it starts them.
        script.push_str(&format!(
            "dpkg -s {} >/dev/null 2>&1 || systemctl mask --runtime --quiet {} || true\n",
            packages.join(" "),
            held.join(" ")
        ));
    }
    script.push_str(&format!("if [ -e {MARKER} ]; then exit 0; fi\n"));
    // The metadata service knows the droplet's name even before cloud-init
    // has set the hostname (bootcmd runs first).
    script.push_str(
        "name=$(curl -fsS --max-time 5 http://169.254.169.254/metadata/v1/hostname 2>/dev/null || hostname)\n",
    );
    script.push_str("umask 077\nmkdir -p /etc/promguard /etc/ssh\n");
    script.push_str("rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub\n");
    script.push_str("case \"$name\" in\n");
    for (name, pair) in keys {
        // Host names are [a-z0-9-]: safe inside single quotes.
        script.push_str(&format!("{BEGIN}{name}\n'{name}')\n"));
        script.push_str("cat > /etc/ssh/ssh_host_ed25519_key <<'PROMGUARD_KEY'\n");
        script.push_str(pair.private.trim_end());
        script.push_str("\nPROMGUARD_KEY\n");
        script.push_str(&format!(
            "echo '{}' > /etc/ssh/ssh_host_ed25519_key.pub\n;;\n",
            pair.public
        ));
    }
    script
        .push_str("*) echo \"promguard: no SSH host key for droplet $name\" >&2; exit 1;;\nesac\n");
    script.push_str(
        "chmod 600 /etc/ssh/ssh_host_ed25519_key\nchmod 644 /etc/ssh/ssh_host_ed25519_key.pub\n",
    );
    script.push_str(&format!("touch {MARKER}\n"));

    let mut out = String::from("#cloud-config\n");
    out.push_str("# Written by PromGuard: installs the SSH host key PromGuard generated for\n");
    out.push_str("# this droplet, so that the first SSH connection is verified.\n");
    if !packages.is_empty() {
        out.push_str("package_update: true\npackages:\n");
        for package in &packages {
            out.push_str(&format!("  - {package}\n"));
        }
    }
    out.push_str(
        "ssh_deletekeys: false\nssh_genkeytypes: []\nbootcmd:\n  - - sh\n    - -c\n    - |\n",
    );
    for line in script.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("      ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Reads back the host key that `user_data` (as [`render`] wrote it) installs
/// on the droplet called `name`: `(private key, public key)`. A fake
/// DigitalOcean backend that boots real hosts uses it.
pub fn host_key_for(user_data: &str, name: &str) -> Option<(String, SshPublicKey)> {
    let start = format!("{BEGIN}{name}\n");
    let at = user_data.find(&start)?;
    let rest = &user_data[at + start.len()..];
    let mut private = String::new();
    let mut public = None;
    let mut in_key = false;
    for line in rest.lines().map(str::trim_start) {
        if line.starts_with("cat > /etc/ssh/ssh_host_ed25519_key <<") {
            in_key = true;
        } else if line == "PROMGUARD_KEY" {
            in_key = false;
        } else if in_key {
            private.push_str(line);
            private.push('\n');
        } else if let Some(text) = line.strip_prefix("echo '") {
            public = SshPublicKey::parse(text.split('\'').next()?).ok();
            break;
        }
    }
    Some((private, public?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ed25519 public key whose 32 key bytes spell `tag` (padded).
    fn fake_public_key(tag: &str) -> String {
        use base64::Engine as _;
        let mut blob = vec![0, 0, 0, 11];
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&[0, 0, 0, 32]);
        let mut key = tag.as_bytes().to_vec();
        key.resize(32, b'.');
        blob.extend_from_slice(&key);
        format!(
            "ssh-ed25519 {}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    fn fake_pair(tag: &str) -> HostKeyPair {
        HostKeyPair {
            private: format!(
                "-----BEGIN OPENSSH PRIVATE KEY-----\n{tag}\n-----END OPENSSH PRIVATE KEY-----\n"
            ),
            public: SshPublicKey::parse(&fake_public_key(tag)).unwrap(),
        }
    }

    #[test]
    fn user_data_snapshot_and_round_trip() {
        let keys = vec![
            (HostName::new("node-1").unwrap(), fake_pair("one")),
            (HostName::new("node-2").unwrap(), fake_pair("two")),
        ];
        let text = render(&keys, &FirstBoot::default());
        expect_test::expect_file!["../../tests/data/user_data.snapshot"].assert_eq(&text);
        let (private, public) = host_key_for(&text, "node-2").unwrap();
        assert_eq!(private, keys[1].1.private);
        assert_eq!(public, keys[1].1.public);
        assert!(host_key_for(&text, "node-3").is_none());
        assert!(!format!("{:?}", keys[0].1).contains("PRIVATE"));
    }

    #[tokio::test]
    async fn generates_a_key_with_ssh_keygen() {
        let pair = HostKeyPair::generate("test").await.unwrap();
        assert_eq!(pair.public().algorithm(), "ssh-ed25519");
        let first_boot = FirstBoot {
            packages: vec!["wireguard-tools".into(), "bad;package".into()],
            hold_units: vec!["prometheus.service".into()],
        };
        let text = render(&[(HostName::new("m").unwrap(), pair.clone())], &first_boot);
        assert!(text.contains("packages:\n  - wireguard-tools\n"), "{text}");
        assert!(!text.contains("bad;package"), "{text}");
        let (private, public) = host_key_for(&text, "m").unwrap();
        assert_eq!(private, pair.private);
        assert_eq!(&public, pair.public());

        // The user data is YAML whose boot command is a valid shell script
        // carrying the key verbatim.
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let script = yaml["bootcmd"][0][2].as_str().unwrap().to_owned();
        assert!(script.contains(&pair.private));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootcmd.sh");
        std::fs::write(&path, &script).unwrap();
        let status = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "sh -n rejects the boot command:\n{script}"
        );
    }
}
