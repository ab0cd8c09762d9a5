//! Validated names and numbers: host names, regions, interface names, ports.
//!
//! Every value here may end up in a file on a remote host, a shell command or
//! a cloud API request, so each type accepts only a conservative alphabet and
//! refuses anything else when it is built, not when it is used.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name or number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct NameError {
    /// Which kind of value was being checked ("host name", "region", ...).
    pub what: &'static str,
    /// The offending input, truncated to 80 characters.
    pub value: String,
    /// What the rule is.
    pub reason: &'static str,
}

impl NameError {
    /// A refusal of `value` (kept to its first 80 characters) as a `what`.
    pub fn invalid(what: &'static str, value: &str, reason: &'static str) -> Self {
        Self::new(what, value, reason)
    }

    fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        let value: String = value.chars().take(80).collect();
        Self {
            what,
            value,
            reason,
        }
    }
}

fn check_label(what: &'static str, value: &str, max: usize, extra: &[u8]) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::new(what, value, "must not be empty"));
    }
    if value.len() > max {
        return Err(NameError::new(what, value, "is too long"));
    }
    let bytes = value.as_bytes();
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || extra.contains(&b);
    if !bytes.iter().all(|&b| allowed(b)) {
        return Err(NameError::new(
            what,
            value,
            "may contain only lowercase letters, digits and '-'",
        ));
    }
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err(NameError::new(
            what,
            value,
            "must start and end with a letter or digit",
        ));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn new(value: &str) -> Result<Self, NameError> {
                let check: fn(&str) -> Result<(), NameError> = $check;
                check(value)?;
                Ok(Self(value.to_owned()))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(
    /// A host name: an RFC 1123 label (lowercase letters, digits, '-', at
    /// most 63 characters). Used as droplet name, namespace name part and
    /// Prometheus `instance` label.
    HostName,
    "host name",
    |v| check_label("host name", v, 63, &[])
);

string_newtype!(
    /// A deployment name, prefixed to everything a deployment creates (tags,
    /// namespaces). Same alphabet as host names, at most 24 characters so the
    /// names derived from it stay within kernel limits.
    DeploymentName,
    "deployment name",
    |v| check_label("deployment name", v, 24, &[])
);

string_newtype!(
    /// A cloud region slug such as `lon1`.
    Region,
    "region",
    |v| check_label("region", v, 32, &[])
);

string_newtype!(
    /// A network interface name such as `wg0` (at most 15 bytes, the kernel's
    /// limit).
    InterfaceName,
    "interface name",
    |v| check_label("interface name", v, 15, &[])
);

string_newtype!(
    /// The user PromGuard logs in as on an existing host (`root`, or a user
    /// with passwordless sudo): lowercase letters, digits, '-' and '_', at
    /// most 32 characters, as `useradd` accepts by default.
    SshUser,
    "SSH user",
    |v| check_label("SSH user", v, 32, b"_")
);

string_newtype!(
    /// The name of an exporter (`node`, `postgres`, ...), used as Prometheus
    /// job name suffix and in file names. Letters, digits, '-' and '_'.
    ExporterName,
    "exporter name",
    |v| check_label("exporter name", v, 32, b"_")
);

/// A TCP or UDP port number other than 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(u16);

impl Port {
    /// Wraps a port number, refusing 0.
    pub fn new(port: u16) -> Result<Self, NameError> {
        if port == 0 {
            return Err(NameError::new("port", "0", "must be between 1 and 65535"));
        }
        Ok(Self(port))
    }

    /// The port number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Port {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u16 = s
            .parse()
            .map_err(|_| NameError::new("port", s, "must be a number between 1 and 65535"))?;
        Self::new(n)
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        let n = u16::try_from(n).map_err(|_| {
            serde::de::Error::custom(format!("port {n} must be between 1 and 65535"))
        })?;
        Self::new(n).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert!(HostName::new("promguard-node-1").is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a b",
            "$(touch /tmp/pwned)",
            "a;b",
            "a\nb",
            "a'b",
        ] {
            assert!(HostName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(HostName::new(&"a".repeat(63)).is_ok());
        assert!(HostName::new(&"a".repeat(64)).is_err());
    }

    #[test]
    fn error_message_names_the_value() {
        let err = HostName::new("Bad_Name").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid host name \"Bad_Name\": may contain only lowercase letters, digits and '-'"
        );
    }

    #[test]
    fn exporter_names_allow_underscore() {
        assert!(ExporterName::new("postgres_exporter").is_ok());
        assert!(ExporterName::new("_x").is_err());
    }

    #[test]
    fn ports() {
        assert!(Port::new(0).is_err());
        assert_eq!("9100".parse::<Port>().unwrap().get(), 9100);
        assert!("70000".parse::<Port>().is_err());
        assert!(serde_json::from_str::<Port>("-1").is_err());
    }
}
