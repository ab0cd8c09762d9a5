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
        // The blob starts with the key type as an SSH string: data that
        // does not decode, or names another type, would fingerprint as a
        // key no server ever presents.
        // With or without padding, as known_hosts files have it.
        use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
        use base64::Engine as _;
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            general_purpose::PAD.with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let blob = LENIENT
            .decode(body)
            .map_err(|_| "SSH public key data is not valid base64".to_owned())?;
        let named = blob
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| blob.get(4..4usize.checked_add(n)?));
        if named != Some(algorithm.as_bytes()) {
            return Err(format!(
                "SSH public key data is not that of a {algorithm} key"
            ));
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
        // Data that does not decode, or names another key type.
        let err = SshPublicKey::parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5A").unwrap_err();
        assert!(err.contains("not valid base64"), "{err}");
        let rsa_blob = "AAAAB3NzaC1yc2EAAAADAQAB";
        let err = SshPublicKey::parse(&format!("ssh-ed25519 {rsa_blob}")).unwrap_err();
        assert!(err.contains("not that of a ssh-ed25519 key"), "{err}");
        assert!(SshPublicKey::parse(&format!("ssh-rsa {rsa_blob}")).is_ok());
        assert!(SshPublicKey::parse("ssh-ed25519 $(x)").is_err());
    }
}
