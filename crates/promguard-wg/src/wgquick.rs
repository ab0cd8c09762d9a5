//! The wg-quick config model and its parser.
//!
//! The parser reads untrusted text (a file found on a host), so it never
//! panics, refuses anything it does not understand instead of guessing, and
//! never repeats a secret in an error message.

use std::net::SocketAddr;

use ipnetwork::IpNetwork;
use promguard_core::plan::host_network;
use promguard_core::{HostName, HostPlan, Port, PresharedKey, PrivateKey, PublicKey};

/// A parsed wg-quick config: one `[Interface]` and its `[Peer]`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgQuickConfig {
    /// The `[Interface]` section.
    pub interface: InterfaceSection,
    /// The `[Peer]` sections, in file order.
    pub peers: Vec<PeerSection>,
}

/// The `[Interface]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSection {
    /// `Address`: the interface's addresses with their prefixes (wg-quick
    /// syntax; `wg setconf` does not know this key).
    pub addresses: Vec<IpNetwork>,
    /// `ListenPort`, when given.
    pub listen_port: Option<Port>,
    /// `PrivateKey`.
    pub private_key: PrivateKey,
}

/// One `[Peer]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSection {
    /// The peer's host name, from the `# <name>` comment line right before
    /// `[Peer]`, when that comment is a valid host name.
    pub name: Option<HostName>,
    /// `PublicKey`.
    pub public_key: PublicKey,
    /// `PresharedKey`, when given.
    pub preshared_key: Option<PresharedKey>,
    /// `AllowedIPs`.
    pub allowed_ips: Vec<IpNetwork>,
    /// `Endpoint`, when given. Only literal addresses are supported.
    pub endpoint: Option<SocketAddr>,
    /// `PersistentKeepalive` in seconds; `None` when absent, `off` or 0.
    pub persistent_keepalive: Option<u16>,
}

impl WgQuickConfig {
    /// The config PromGuard wants on `host`: its address as a single-host
    /// prefix (so a node has no route to other nodes), its port and key, and
    /// one peer per planned peer with exactly the peer's address as
    /// AllowedIPs.
    pub fn from_host(host: &HostPlan) -> Self {
        Self {
            interface: InterfaceSection {
                addresses: vec![host_network(host.interface.address)],
                listen_port: Some(host.interface.listen_port),
                private_key: host.interface.private_key.clone(),
            },
            peers: host
                .peers
                .iter()
                .map(|p| PeerSection {
                    name: Some(p.name.clone()),
                    public_key: p.public_key,
                    preshared_key: p.preshared_key.clone(),
                    allowed_ips: vec![p.allowed_ips()],
                    endpoint: p.endpoint,
                    persistent_keepalive: p.persistent_keepalive,
                })
                .collect(),
        }
    }

    /// The peer with `public_key`, if any.
    pub fn peer(&self, public_key: &PublicKey) -> Option<&PeerSection> {
        self.peers.iter().find(|p| &p.public_key == public_key)
    }
}

/// Why a wg-quick config was refused. Line numbers start at 1. Messages
/// never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A line that is neither a section header, `Key = Value`, a comment
    /// nor blank.
    #[error("line {line}: expected `[Interface]`, `[Peer]`, `Key = Value` or a comment; fix or remove the line")]
    Syntax {
        /// The line.
        line: usize,
    },
    /// A section other than `[Interface]` or `[Peer]`.
    #[error("line {line}: unknown section [{name}]; a wg-quick config has only [Interface] and [Peer] sections")]
    UnknownSection {
        /// The line.
        line: usize,
        /// The section name as written (at most 40 characters).
        name: String,
    },
    /// A `Key = Value` line before the first section.
    #[error("line {line}: setting outside any section; put it under [Interface] or [Peer]")]
    OutsideSection {
        /// The line.
        line: usize,
    },
    /// A key PromGuard does not know in this section.
    #[error(
        "line {line}: unknown key {key:?} in [{section}]; PromGuard understands only {allowed}"
    )]
    UnknownKey {
        /// The line.
        line: usize,
        /// `Interface` or `Peer`.
        section: &'static str,
        /// The key as written (at most 40 characters).
        key: String,
        /// The keys that section may contain.
        allowed: &'static str,
    },
    /// A single-valued key given twice in one section.
    #[error("line {line}: {key} is given twice in this [{section}] section (first on line {first}); keep one")]
    DuplicateKey {
        /// The line of the second occurrence.
        line: usize,
        /// `Interface` or `Peer`.
        section: &'static str,
        /// The key.
        key: &'static str,
        /// The line of the first occurrence.
        first: usize,
    },
    /// A second `[Interface]` section.
    #[error("line {line}: second [Interface] section (the first is on line {first}); a config has exactly one")]
    DuplicateInterface {
        /// The line of the second header.
        line: usize,
        /// The line of the first header.
        first: usize,
    },
    /// Two peers with the same public key.
    #[error("line {line}: peer {public_key} appears twice (first on line {first}); every peer needs its own public key")]
    DuplicatePeer {
        /// The header line of the second peer.
        line: usize,
        /// The duplicated public key.
        public_key: PublicKey,
        /// The header line of the first peer.
        first: usize,
    },
    /// A section lacks a required key.
    #[error("line {line}: this [{section}] section has no {key}; add it")]
    MissingKey {
        /// The section's header line.
        line: usize,
        /// `Interface` or `Peer`.
        section: &'static str,
        /// The missing key.
        key: &'static str,
    },
    /// There is no `[Interface]` section at all.
    #[error("no [Interface] section; a wg-quick config needs one with a PrivateKey")]
    NoInterface,
    /// A value that cannot be used.
    #[error("line {line}: invalid {key}: {reason}")]
    InvalidValue {
        /// The line.
        line: usize,
        /// The key.
        key: &'static str,
        /// What is wrong (never the text of a secret).
        reason: String,
    },
}

impl ParseError {
    /// The line the error is about, when it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ParseError::Syntax { line }
            | ParseError::UnknownSection { line, .. }
            | ParseError::OutsideSection { line }
            | ParseError::UnknownKey { line, .. }
            | ParseError::DuplicateKey { line, .. }
            | ParseError::DuplicateInterface { line, .. }
            | ParseError::DuplicatePeer { line, .. }
            | ParseError::MissingKey { line, .. }
            | ParseError::InvalidValue { line, .. } => Some(*line),
            ParseError::NoInterface => None,
        }
    }
}

/// At most this many characters of untrusted text are quoted in errors.
const QUOTE_LIMIT: usize = 40;

fn quote(text: &str) -> String {
    text.chars().take(QUOTE_LIMIT).collect()
}

const INTERFACE_KEYS: &[&str] = &["Address", "ListenPort", "PrivateKey"];
const PEER_KEYS: &[&str] = &[
    "PublicKey",
    "PresharedKey",
    "AllowedIPs",
    "Endpoint",
    "PersistentKeepalive",
];
/// Keys that may repeat; their values accumulate, as in wg and wg-quick.
const LIST_KEYS: &[&str] = &["Address", "AllowedIPs"];

/// Keys are matched without regard to case, as `wg` does.
fn canonical(keys: &'static [&'static str], key: &str) -> Option<&'static str> {
    keys.iter().copied().find(|k| k.eq_ignore_ascii_case(key))
}

/// Settings seen so far in one section, with the line of each.
struct Seen {
    section: &'static str,
    header: usize,
    keys: Vec<(&'static str, usize)>,
}

impl Seen {
    fn new(section: &'static str, header: usize) -> Self {
        Self {
            section,
            header,
            keys: Vec::new(),
        }
    }

    fn note(&mut self, key: &'static str, line: usize) -> Result<(), ParseError> {
        if !LIST_KEYS.contains(&key) {
            if let Some(&(_, first)) = self.keys.iter().find(|(k, _)| *k == key) {
                return Err(ParseError::DuplicateKey {
                    line,
                    section: self.section,
                    key,
                    first,
                });
            }
        }
        self.keys.push((key, line));
        Ok(())
    }
}

#[derive(Default)]
struct RawInterface {
    addresses: Vec<IpNetwork>,
    listen_port: Option<Port>,
    private_key: Option<PrivateKey>,
}

#[derive(Default)]
struct RawPeer {
    name: Option<HostName>,
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    allowed_ips: Vec<IpNetwork>,
    endpoint: Option<SocketAddr>,
    persistent_keepalive: Option<u16>,
}

enum Section {
    None,
    Interface(Seen, RawInterface),
    Peer(Seen, RawPeer),
}

struct Parser {
    interface: Option<(usize, InterfaceSection)>,
    peers: Vec<(usize, PeerSection)>,
    current: Section,
}

impl Parser {
    /// Closes the current section, checking its required keys.
    fn finish_section(&mut self) -> Result<(), ParseError> {
        match std::mem::replace(&mut self.current, Section::None) {
            Section::None => {}
            Section::Interface(seen, raw) => {
                let private_key = raw.private_key.ok_or(ParseError::MissingKey {
                    line: seen.header,
                    section: "Interface",
                    key: "PrivateKey",
                })?;
                self.interface = Some((
                    seen.header,
                    InterfaceSection {
                        addresses: raw.addresses,
                        listen_port: raw.listen_port,
                        private_key,
                    },
                ));
            }
            Section::Peer(seen, raw) => {
                let public_key = raw.public_key.ok_or(ParseError::MissingKey {
                    line: seen.header,
                    section: "Peer",
                    key: "PublicKey",
                })?;
                if let Some((first, _)) =
                    self.peers.iter().find(|(_, p)| p.public_key == public_key)
                {
                    return Err(ParseError::DuplicatePeer {
                        line: seen.header,
                        public_key,
                        first: *first,
                    });
                }
                self.peers.push((
                    seen.header,
                    PeerSection {
                        name: raw.name,
                        public_key,
                        preshared_key: raw.preshared_key,
                        allowed_ips: raw.allowed_ips,
                        endpoint: raw.endpoint,
                        persistent_keepalive: raw.persistent_keepalive,
                    },
                ));
            }
        }
        Ok(())
    }
}

/// Parses a wg-quick config.
///
/// Understood keys: `Address`, `ListenPort`, `PrivateKey` in `[Interface]`;
/// `PublicKey`, `PresharedKey`, `AllowedIPs`, `Endpoint`,
/// `PersistentKeepalive` in `[Peer]`. Keys and section names match without
/// regard to case; `Address` and `AllowedIPs` may repeat and accumulate;
/// every other key at most once per section; `#` starts a comment. Any other
/// key (including wg-quick's `PostUp` and friends, which run shell commands)
/// is refused rather than ignored.
pub fn parse(text: &str) -> Result<WgQuickConfig, ParseError> {
    let mut parser = Parser {
        interface: None,
        peers: Vec::new(),
        current: Section::None,
    };
    // The host name in a `# name` comment right before a `[Peer]` header.
    let mut pending_name: Option<HostName> = None;

    for (index, raw_line) in text.lines().enumerate() {
        let line = index + 1;
        let (content, comment) = match raw_line.split_once('#') {
            Some((before, after)) => (before.trim(), Some(after.trim())),
            None => (raw_line.trim(), None),
        };
        if content.is_empty() {
            pending_name = comment.and_then(|c| HostName::new(c).ok());
            continue;
        }
        let name_for_peer = pending_name.take();

        if let Some(rest) = content.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or(ParseError::Syntax { line })?
                .trim();
            parser.finish_section()?;
            if name.eq_ignore_ascii_case("Interface") {
                if let Some((first, _)) = &parser.interface {
                    return Err(ParseError::DuplicateInterface {
                        line,
                        first: *first,
                    });
                }
                parser.current =
                    Section::Interface(Seen::new("Interface", line), RawInterface::default());
            } else if name.eq_ignore_ascii_case("Peer") {
                let raw = RawPeer {
                    name: name_for_peer,
                    ..RawPeer::default()
                };
                parser.current = Section::Peer(Seen::new("Peer", line), raw);
            } else {
                return Err(ParseError::UnknownSection {
                    line,
                    name: quote(name),
                });
            }
            continue;
        }

        let (key, value) = content.split_once('=').ok_or(ParseError::Syntax { line })?;
        let (key, value) = (key.trim(), value.trim());
        match &mut parser.current {
            Section::None => return Err(ParseError::OutsideSection { line }),
            Section::Interface(seen, raw) => {
                let key = canonical(INTERFACE_KEYS, key).ok_or_else(|| ParseError::UnknownKey {
                    line,
                    section: "Interface",
                    key: quote(key),
                    allowed: "Address, ListenPort and PrivateKey",
                })?;
                seen.note(key, line)?;
                interface_value(raw, line, key, value)?;
            }
            Section::Peer(seen, raw) => {
                let key = canonical(PEER_KEYS, key).ok_or_else(|| ParseError::UnknownKey {
                    line,
                    section: "Peer",
                    key: quote(key),
                    allowed:
                        "PublicKey, PresharedKey, AllowedIPs, Endpoint and PersistentKeepalive",
                })?;
                seen.note(key, line)?;
                peer_value(raw, line, key, value)?;
            }
        }
    }
    parser.finish_section()?;

    let (_, interface) = parser.interface.ok_or(ParseError::NoInterface)?;
    Ok(WgQuickConfig {
        interface,
        peers: parser.peers.into_iter().map(|(_, p)| p).collect(),
    })
}

fn invalid(line: usize, key: &'static str, reason: impl Into<String>) -> ParseError {
    ParseError::InvalidValue {
        line,
        key,
        reason: reason.into(),
    }
}

fn non_empty(line: usize, key: &'static str, value: &str) -> Result<(), ParseError> {
    if value.is_empty() {
        return Err(invalid(line, key, "the value is empty"));
    }
    Ok(())
}

/// Whether an empty list of networks is valid.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Empty {
    /// `Address`: an interface needs one.
    Refused,
    /// `AllowedIPs`: wg reads an empty value as "no addresses".
    Allowed,
}

/// A comma-separated list of networks.
fn networks(
    line: usize,
    key: &'static str,
    value: &str,
    empty: Empty,
) -> Result<Vec<IpNetwork>, ParseError> {
    if value.is_empty() {
        if empty == Empty::Allowed {
            return Ok(Vec::new());
        }
        return Err(invalid(line, key, "the value is empty"));
    }
    value
        .split(',')
        .map(|item| {
            let item = item.trim();
            item.parse::<IpNetwork>().map_err(|_| {
                invalid(
                    line,
                    key,
                    format!(
                        "{:?} is not an address with prefix such as 10.0.0.1/32 or fd00::1/128",
                        quote(item)
                    ),
                )
            })
        })
        .collect()
}

fn interface_value(
    raw: &mut RawInterface,
    line: usize,
    key: &'static str,
    value: &str,
) -> Result<(), ParseError> {
    match key {
        "Address" => raw
            .addresses
            .extend(networks(line, key, value, Empty::Refused)?),
        "ListenPort" => {
            non_empty(line, key, value)?;
            let port = value.parse::<Port>().map_err(|_| {
                invalid(
                    line,
                    key,
                    format!("{:?} is not a port between 1 and 65535", quote(value)),
                )
            })?;
            raw.listen_port = Some(port);
        }
        "PrivateKey" => {
            non_empty(line, key, value)?;
            // The key error names only what was wrong, never the text.
            let k = PrivateKey::from_base64(value).map_err(|e| invalid(line, key, e.reason))?;
            raw.private_key = Some(k);
        }
        _ => unreachable!("canonical() returns only interface keys"),
    }
    Ok(())
}

fn peer_value(
    raw: &mut RawPeer,
    line: usize,
    key: &'static str,
    value: &str,
) -> Result<(), ParseError> {
    match key {
        "PublicKey" => {
            non_empty(line, key, value)?;
            let k = PublicKey::from_base64(value).map_err(|e| invalid(line, key, e.reason))?;
            raw.public_key = Some(k);
        }
        "PresharedKey" => {
            non_empty(line, key, value)?;
            let k = PresharedKey::from_base64(value).map_err(|e| invalid(line, key, e.reason))?;
            raw.preshared_key = Some(k);
        }
        "AllowedIPs" => raw
            .allowed_ips
            .extend(networks(line, key, value, Empty::Allowed)?),
        "Endpoint" => {
            non_empty(line, key, value)?;
            let endpoint = value.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    line,
                    key,
                    format!(
                        "{:?} is not IP:port or [IPv6]:port (host names are not supported)",
                        quote(value)
                    ),
                )
            })?;
            raw.endpoint = Some(endpoint);
        }
        "PersistentKeepalive" => {
            non_empty(line, key, value)?;
            raw.persistent_keepalive = if value.eq_ignore_ascii_case("off") {
                None
            } else {
                let secs = value.parse::<u16>().map_err(|_| {
                    invalid(
                        line,
                        key,
                        format!(
                            "{:?} is neither \"off\" nor a number of seconds up to 65535",
                            quote(value)
                        ),
                    )
                })?;
                // wg reads 0 as "off".
                (secs != 0).then_some(secs)
            };
        }
        _ => unreachable!("canonical() returns only peer keys"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "yEOlZxlaL8TVzXJprSy3iSnFZd5u1Wpeh3Nqi8tFvXc=";
    const PUB_A: &str = "5Myv3ATIFAj1q2tH0A4oFG0ZmmyY91+pj5pADYIXgj4=";
    const PUB_B: &str = "8pMzivjB7RfLBt1p7Yyx6i/5l7ZUEyj9EaeXspw+Owo=";
    const PSK: &str = "mfA/fpO4TeHkKirpHpBA+IgoKt+DHcC5xmRdFUfygsM=";

    fn err(text: &str) -> String {
        let e = parse(text).unwrap_err();
        // No error message may repeat a secret.
        let msg = e.to_string();
        assert!(!msg.contains(KEY) && !msg.contains(PSK), "{msg}");
        msg
    }

    #[test]
    fn parses_a_full_config() {
        let text = format!(
            "[Interface]\nAddress = 10.0.0.1/32\nListenPort = 51820\nPrivateKey = {KEY}\n\n\
             # promguard-node-1\n[Peer]\nPublicKey = {PUB_A}\nPresharedKey = {PSK}\n\
             AllowedIPs = 10.0.0.2/32, fd00::2/128\nAllowedIPs = 10.0.0.9/32\n\
             Endpoint = [fd00:1::2]:51820\nPersistentKeepalive = 25\n\n\
             [peer] # comment after a header\npublickey={PUB_B}\nPersistentKeepalive = off\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.interface.addresses[0].to_string(), "10.0.0.1/32");
        assert_eq!(c.interface.listen_port.unwrap().get(), 51820);
        assert_eq!(c.interface.private_key.expose_base64(), KEY);
        assert_eq!(c.peers.len(), 2);
        let a = &c.peers[0];
        assert_eq!(a.name.as_ref().unwrap().as_str(), "promguard-node-1");
        assert_eq!(a.public_key.to_string(), PUB_A);
        assert_eq!(a.preshared_key.as_ref().unwrap().expose_base64(), PSK);
        let ips: Vec<String> = a.allowed_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(ips, ["10.0.0.2/32", "fd00::2/128", "10.0.0.9/32"]);
        assert_eq!(a.endpoint.unwrap().to_string(), "[fd00:1::2]:51820");
        assert_eq!(a.persistent_keepalive, Some(25));
        let b = &c.peers[1];
        assert_eq!(b.name, None);
        assert!(b.allowed_ips.is_empty() && b.endpoint.is_none());
        assert_eq!(b.persistent_keepalive, None);
        assert_eq!(c.peer(&b.public_key), Some(b));
    }

    #[test]
    fn peer_name_comment_must_be_right_before_the_header() {
        let text =
            format!("[Interface]\nPrivateKey = {KEY}\n# someone\n\n[Peer]\nPublicKey = {PUB_A}\n");
        assert_eq!(parse(&text).unwrap().peers[0].name, None);
        let text = format!(
            "[Interface]\nPrivateKey = {KEY}\n# not a host name!\n[Peer]\nPublicKey = {PUB_A}\n"
        );
        assert_eq!(parse(&text).unwrap().peers[0].name, None);
    }

    #[test]
    fn errors_name_the_line_and_never_the_secret() {
        let i = format!("[Interface]\nPrivateKey = {KEY}\n");
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no [Interface] section"),
            ("# only a comment\n".into(), "no [Interface] section"),
            (format!("PrivateKey = {KEY}\n"), "line 1: setting outside any section"),
            ("[Interface]\nListenPort = 1\n".into(), "line 1: this [Interface] section has no PrivateKey"),
            (format!("{i}[Peer]\nAllowedIPs = 10.0.0.2/32\n"), "line 3: this [Peer] section has no PublicKey"),
            (format!("{i}[Wireguard]\n"), "line 3: unknown section [Wireguard]"),
            (format!("{i}[Peer\n"), "line 3: expected `[Interface]`"),
            (format!("{i}just words\n"), "line 3: expected `[Interface]`"),
            (format!("{i}PostUp = rm -rf /\n"), "line 3: unknown key \"PostUp\" in [Interface]"),
            (format!("{i}PrivateKey = {KEY}\n"), "line 3: PrivateKey is given twice in this [Interface] section (first on line 2)"),
            (format!("{i}[Interface]\nPrivateKey = {KEY}\n"), "line 3: second [Interface] section (the first is on line 1)"),
            (format!("[Interface]\nPrivateKey = {}\n", &KEY[..40]), "line 2: invalid PrivateKey: expected 44 characters"),
            (format!("[Interface]\nPrivateKey = {}!\n", &KEY[..43]), "line 2: invalid PrivateKey: not valid base64"),
            (format!("{i}[Peer]\nPublicKey = {PUB_A}\nPresharedKey = {}\n", &PSK[..43]), "line 5: invalid PresharedKey"),
            (format!("{i}[Peer]\nPublicKey = {PUB_A}\nPresharedKey =\n"), "line 5: invalid PresharedKey: the value is empty"),
            (format!("{i}ListenPort = 0\n"), "line 3: invalid ListenPort: \"0\" is not a port"),
            (format!("{i}ListenPort = 70000\n"), "line 3: invalid ListenPort"),
            (format!("{i}Address = 10.0.0.1/33\n"), "line 3: invalid Address: \"10.0.0.1/33\""),
            (format!("{i}Address = 10.0.0.1/32,\n"), "line 3: invalid Address: \"\""),
            (format!("{i}[Peer]\nPublicKey = {PUB_A}\nEndpoint = example.com:51820\n"), "host names are not supported"),
            (format!("{i}[Peer]\nPublicKey = {PUB_A}\nEndpoint = fd00::1:51820\n"), "line 5: invalid Endpoint"),
            (format!("{i}[Peer]\nPublicKey = {PUB_A}\nPersistentKeepalive = -1\n"), "line 5: invalid PersistentKeepalive"),
            (format!("{i}[Peer]\nPublicKey = {PUB_A}\n[Peer]\nPublicKey = {PUB_A}\n"), "line 5: peer 5Myv3ATIFAj1q2tH0A4oFG0ZmmyY91+pj5pADYIXgj4= appears twice (first on line 3)"),
        ];
        for (text, expected) in cases {
            let msg = err(&text);
            assert!(
                msg.contains(expected),
                "{text:?}: got {msg:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn error_lines_are_reported() {
        let e = parse("[Interface]\n\n\nFoo = bar\n").unwrap_err();
        assert_eq!(e.line(), Some(4));
        assert_eq!(ParseError::NoInterface.line(), None);
    }

    #[test]
    fn hostile_input_never_panics() {
        // Not a fuzzer, but every prefix and a few mutations of a valid
        // config exercise the parser's edges (cut keys, cut headers, ...).
        let text = format!(
            "[Interface]\nAddress = 10.0.0.1/32\nListenPort = 51820\nPrivateKey = {KEY}\n\
             # n\n[Peer]\nPublicKey = {PUB_A}\nPresharedKey = {PSK}\nAllowedIPs = 10.0.0.2/32\n\
             Endpoint = [fd00::2]:51820\nPersistentKeepalive = 25\n"
        );
        let mut ok = 0;
        for end in 0..=text.len() {
            if !text.is_char_boundary(end) {
                continue;
            }
            if parse(&text[..end]).is_ok() {
                ok += 1;
            }
        }
        assert!(ok > 0, "the full text parses");
        for junk in [
            "\0", "[", "]", "=", "==", "[]", "[ ]", "\u{feff}", "é", "\r", "#",
        ] {
            for pos in [0, 1, 12, 40, text.len()] {
                let mut t = text.clone();
                if t.is_char_boundary(pos) {
                    t.insert_str(pos, junk);
                    let _ = parse(&t);
                }
            }
        }
        let _ = parse(&"[Peer]\n".repeat(1000));
        let _ = parse(&"=".repeat(100_000));
    }
}
