//! SSH public keys (host keys and login keys) as validated values.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// An SSH public key in OpenSSH format (`ssh-ed25519 AAAA... [comment]`),
/// validated to have a known algorithm and base64 body.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SshPublicKey {
    algorithm: String,
    body: String,
}

impl SshPublicKey {
    /// Parses `algorithm base64 [comment]`; the comment is dropped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split_whitespace();
        let algorithm = parts.next().ok_or("empty SSH public key")?;
        let body = parts.next().ok_or("SSH public key has no key data")?;
        let known = [
            "ssh-ed25519",
            "ssh-rsa",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
        ];
        if !known.contains(&algorithm) {
            return Err(format!("unsupported SSH key type {algorithm:?}"));
        }
        if body.is_empty()
            || !body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        {
            return Err("SSH public key data is not base64".into());
        }
        Ok(Self {
            algorithm: algorithm.to_owned(),
            body: body.to_owned(),
        })
    }

    /// The algorithm name, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The base64 key blob.
    pub fn base64(&self) -> &str {
        &self.body
    }
}

// In files (the state) a key is its OpenSSH text, validated when read.
impl serde::Serialize for SshPublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SshPublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SshPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm, self.body)
    }
}

impl fmt::Debug for SshPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SshPublicKey({self})")
    }
}

impl SshPublicKey {
    /// The key as OpenSSH prints its fingerprint: `SHA256:<base64 without padding>`.
    pub fn fingerprint(&self) -> String {
        let blob = STANDARD.decode(&self.body).unwrap_or_default();
        let digest = Sha256::digest(&blob);
        let mut b64 = STANDARD.encode(digest);
        while b64.ends_with('=') {
            b64.pop();
        }
        format!("SHA256:{b64}")
    }

    /// The decoded key blob, as an SSH server sends it.
    pub fn blob(&self) -> Vec<u8> {
        STANDARD.decode(&self.body).unwrap_or_default()
    }

    /// Builds a key from the algorithm name and raw blob an SSH server sent.
    pub fn from_blob(algorithm: &str, blob: &[u8]) -> Result<Self, String> {
        Self::parse(&format!("{algorithm} {}", STANDARD.encode(blob)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_fingerprint() {
        // A throwaway ed25519 host key and the fingerprint ssh-keygen -lf printed for it.
        let key = SshPublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob root@vm",
        )
        .unwrap();
        assert_eq!(key.algorithm(), "ssh-ed25519");
        assert_eq!(key.to_string().split(' ').count(), 2);
        assert_eq!(
            key.fingerprint(),
            "SHA256:7TbgAdgG/VNVtJcaor719ENXkvbG+HmRtBsGIU3csFE"
        );
        assert_eq!(
            SshPublicKey::from_blob("ssh-ed25519", &key.blob()).unwrap(),
            key
        );
        assert!(SshPublicKey::parse("ssh-dss AAAA").is_err());
        assert!(SshPublicKey::parse("ssh-ed25519 $(x)").is_err());
    }
}
