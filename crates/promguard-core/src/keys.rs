//! WireGuard keys: X25519 key pairs and preshared keys, generated from the
//! operating system's random number generator.
//!
//! Secrets never print themselves: their `Debug` is redacted and they have no
//! `Display`. The only way to get a secret's text is [`PrivateKey::expose_base64`]
//! or [`PresharedKey::expose_base64`], which callers use when writing the
//! state file or a host's `wg0.conf`.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// A key that is not 32 bytes of standard base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct KeyError {
    /// "private key", "public key" or "preshared key".
    pub what: &'static str,
    /// What was wrong; never contains the key text.
    pub reason: &'static str,
}

fn decode(what: &'static str, text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    if text.len() != 44 {
        return Err(KeyError {
            what,
            reason: "expected 44 characters of base64 (32 bytes)",
        });
    }
    let mut bytes = STANDARD.decode(text).map_err(|_| KeyError {
        what,
        reason: "not valid base64",
    })?;
    let out: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError {
        what,
        reason: "expected 32 bytes",
    })?;
    bytes.zeroize();
    Ok(out)
}

/// A WireGuard (X25519) private key.
#[derive(Clone)]
pub struct PrivateKey(x25519_dalek::StaticSecret);

impl PrivateKey {
    /// Generates a new key from the operating system's RNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        // Clamp as `wg genkey` does, so the key a running interface reports
        // is byte for byte the one in the state.
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        let key = Self(x25519_dalek::StaticSecret::from(bytes));
        bytes.zeroize();
        key
    }

    /// Parses the base64 form used by `wg genkey` and `wg0.conf`.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let mut bytes = decode("private key", text)?;
        let key = Self(x25519_dalek::StaticSecret::from(bytes));
        bytes.zeroize();
        Ok(key)
    }

    /// The base64 text of the secret. Only for writing it where it belongs
    /// (state file, the host's own `wg0.conf`).
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    /// The public key that belongs to this private key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(*x25519_dalek::PublicKey::from(&self.0).as_bytes())
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        // Not constant time, but only ever used in tests and plan diffs.
        self.0.as_bytes() == other.0.as_bytes()
    }
}
impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public {})", self.public_key())
    }
}

impl Serialize for PrivateKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.expose_base64())
    }
}

impl<'de> Deserialize<'de> for PrivateKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = String::deserialize(d)?;
        let key = Self::from_base64(&s).map_err(serde::de::Error::custom);
        s.zeroize();
        key
    }
}

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses the base64 form printed by `wg pubkey`.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode("public key", text).map(Self)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// A WireGuard preshared key (32 random bytes), shared by one monitor-node
/// pair.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    /// Generates a new key from the operating system's RNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses the base64 form used by `wg genpsk`.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode("preshared key", text).map(Self)
    }

    /// The base64 text of the secret, for the state file and `wg0.conf`.
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

impl Serialize for PresharedKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.expose_base64())
    }
}

impl<'de> Deserialize<'de> for PresharedKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = String::deserialize(d)?;
        let key = Self::from_base64(&s).map_err(serde::de::Error::custom);
        s.zeroize();
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let key = PrivateKey::generate();
        let secret = key.expose_base64();
        assert!(!format!("{key:?}").contains(&secret));
        let psk = PresharedKey::generate();
        assert!(!format!("{psk:?}").contains(&psk.expose_base64()));
    }

    #[test]
    fn base64_round_trip() {
        let key = PrivateKey::generate();
        let again = PrivateKey::from_base64(&key.expose_base64()).unwrap();
        assert_eq!(key, again);
        assert_eq!(key.public_key(), again.public_key());
        let public = key.public_key();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
    }

    #[test]
    fn rejects_bad_text_without_echoing_it() {
        let err = PrivateKey::from_base64("c2VjcmV0").unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"));
        assert!(PublicKey::from_base64(&"!".repeat(44)).is_err());
    }

    #[test]
    fn generated_keys_are_clamped_like_wg_genkey() {
        let key = PrivateKey::generate();
        let bytes = STANDARD.decode(key.expose_base64()).unwrap();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 0xc0, 0x40);
    }

    #[test]
    fn keys_are_random() {
        assert_ne!(PrivateKey::generate(), PrivateKey::generate());
        assert_ne!(PresharedKey::generate(), PresharedKey::generate());
    }
}
