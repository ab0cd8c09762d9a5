//! The user's OpenSSH `known_hosts` file, read as untrusted input, and the
//! decision whether a host's SSH key is trusted ([`decide_host_key`]).
//!
//! An existing host (one the user already runs, reached by address) has no
//! key PromGuard made for it. Its key comes, in this order, from the
//! config's `host_key`, from the key pinned in the state by an earlier run,
//! or from the user's `known_hosts`; a host found in none of them is new,
//! and the caller shows its fingerprint and stops unless the user accepts
//! it. A key that differs from what is known is never accepted here.
//!
//! The file is matched the way OpenSSH matches it (`hostfile.c`,
//! `match.c`): a host is written `host` for port 22 and `[host]:port`
//! otherwise; a line's host field is either one hashed name
//! (`|1|salt|hmac`, HMAC-SHA1 keyed by the salt) or comma-separated
//! patterns with `*`, `?` and `!` negation, compared without regard to
//! ASCII case. `@revoked` lines name keys that must never be trusted;
//! `@cert-authority` lines are ignored, since PromGuard does not accept
//! host certificates.
//!
//! A line that cannot be read is skipped, as OpenSSH skips it (it only
//! logs it at debug level): one stray line must not make every host
//! untrusted. Skipping never makes a key trusted that would not be
//! otherwise, and [`KnownHosts::skipped`] lists every such line with the
//! reason, for the caller to show.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hmac::{Hmac, Mac};
use promguard_core::{HostName, SshPublicKey};
use sha1::Sha1;

use crate::quote::shell_quote;

/// The most of a known_hosts file that is read. A path that points at
/// something endless (`/dev/zero`, a FIFO fed forever) must not exhaust
/// memory; real files, even organisation-wide ones, are far smaller.
pub const MAX_KNOWN_HOSTS_BYTES: u64 = 64 << 20;

/// SHA-1's output and so the length of a hashed entry's salt and HMAC.
const SHA1_LEN: usize = 20;

/// Host key algorithms in the order PromGuard asks servers for them:
/// ed25519 first (small, fast, no parameter choices), RSA last.
pub const HOST_KEY_ALGORITHMS: [&str; 5] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// Standard base64, with or without padding: OpenSSH's decoder does not
/// insist on it, and hand-edited files lose it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Where OpenSSH keeps the user's known hosts: `<home>/.ssh/known_hosts`.
/// The caller supplies the home directory; this crate reads no
/// environment.
pub fn default_known_hosts_path(home: &Path) -> PathBuf {
    home.join(".ssh").join("known_hosts")
}

/// How a host is written in known_hosts, and so what its patterns and
/// hashes are computed over: `host` for port 22, `[host]:port` otherwise,
/// in lower case (ssh lowercases the name it was given before it looks
/// it up).
pub fn known_hosts_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// Why a known_hosts file could not be read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KnownHostsError {
    /// The file exists but reading it failed (permissions, a directory).
    #[error("cannot read known hosts file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// The file is larger than [`MAX_KNOWN_HOSTS_BYTES`].
    #[error("known hosts file {} is larger than {} MiB; is it really a known_hosts file?", path.display(), MAX_KNOWN_HOSTS_BYTES >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
}

/// A line of a known_hosts file that was skipped because it cannot be
/// read (as OpenSSH skips it), with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}; line skipped", path.display())]
pub struct SkippedLine {
    /// The file.
    pub path: PathBuf,
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// A key recorded in known_hosts, with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKey {
    /// The key (canonical: re-encoded from its decoded blob).
    pub key: SshPublicKey,
    /// The line number, from 1.
    pub line: usize,
}

/// What known_hosts records for one host ([`KnownHosts::lookup`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lookup {
    /// The file that was searched (empty for [`Lookup::default`], which
    /// stands for "no known_hosts consulted").
    pub path: PathBuf,
    /// The host as known_hosts writes it ([`known_hosts_name`]).
    pub name: String,
    /// Keys recorded for the host, every type, in file order.
    pub keys: Vec<KnownKey>,
    /// Keys an `@revoked` line marks as revoked for the host.
    pub revoked: Vec<KnownKey>,
}

impl Lookup {
    /// The `@revoked` entry that revokes `key` for this host, if any.
    pub fn revocation(&self, key: &SshPublicKey) -> Option<&KnownKey> {
        self.revoked.iter().find(|known| same_key(&known.key, key))
    }

    /// The entry recording `key` for this host, if any.
    pub fn find(&self, key: &SshPublicKey) -> Option<&KnownKey> {
        self.keys.iter().find(|known| same_key(&known.key, key))
    }

    /// The algorithms of the recorded keys, in [`HOST_KEY_ALGORITHMS`]
    /// order, each once.
    pub fn algorithms(&self) -> Vec<String> {
        HOST_KEY_ALGORITHMS
            .iter()
            .filter(|algorithm| self.keys.iter().any(|k| k.key.algorithm() == **algorithm))
            .map(|algorithm| (*algorithm).to_owned())
            .collect()
    }
}

/// A parsed known_hosts file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
    skipped: Vec<SkippedLine>,
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    revoked: bool,
    hosts: HostField,
    key: SshPublicKey,
}

#[derive(Debug, Clone)]
enum HostField {
    /// `|1|salt|hmac`: HMAC-SHA1 over the host name, keyed by the salt.
    Hashed { salt: Vec<u8>, hmac: [u8; SHA1_LEN] },
    /// `pattern,pattern,...`, each lowercased.
    Patterns(Vec<Pattern>),
}

#[derive(Debug, Clone)]
struct Pattern {
    negated: bool,
    glob: String,
}

/// What a line turned out to be.
enum Parsed {
    /// Blank, a comment, or a line PromGuard has no use for.
    Nothing,
    Entry(Entry),
}

impl KnownHosts {
    /// Reads and parses `path`. A file that does not exist is an empty
    /// known_hosts (a user who never ran ssh has none); any other failure
    /// to read it is an error, since silently ignoring a file the user has
    /// would make every host look new.
    pub fn load(path: &Path) -> Result<KnownHosts, KnownHostsError> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok(KnownHosts {
                    path: path.to_owned(),
                    ..KnownHosts::default()
                })
            }
            Err(source) => {
                return Err(KnownHostsError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut bytes = Vec::new();
        file.take(MAX_KNOWN_HOSTS_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| KnownHostsError::Read {
                path: path.to_owned(),
                source,
            })?;
        if bytes.len() as u64 > MAX_KNOWN_HOSTS_BYTES {
            return Err(KnownHostsError::TooLarge {
                path: path.to_owned(),
            });
        }
        Ok(Self::parse(path, &bytes))
    }

    /// Parses the contents of a known_hosts file; `path` is only used in
    /// messages. Never fails: unreadable lines are skipped and listed in
    /// [`KnownHosts::skipped`].
    pub fn parse(path: &Path, contents: &[u8]) -> KnownHosts {
        let mut known = KnownHosts {
            path: path.to_owned(),
            ..KnownHosts::default()
        };
        for (index, line) in contents.split(|&b| b == b'\n').enumerate() {
            let number = index + 1;
            let result = std::str::from_utf8(line)
                .map_err(|_| "the line is not UTF-8".to_owned())
                .and_then(|line| parse_line(number, line));
            match result {
                Ok(Parsed::Nothing) => {}
                Ok(Parsed::Entry(entry)) => known.entries.push(entry),
                Err(reason) => known.skipped.push(SkippedLine {
                    path: path.to_owned(),
                    line: number,
                    reason,
                }),
            }
        }
        known
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lines that were skipped, in file order.
    pub fn skipped(&self) -> &[SkippedLine] {
        &self.skipped
    }

    /// The keys recorded for `host` on `port` (the address as the user
    /// gives it to ssh: a DNS name or an IP address without brackets), and
    /// the keys revoked for it. Lines for the same name on another port do
    /// not count, as in OpenSSH.
    pub fn lookup(&self, host: &str, port: u16) -> Lookup {
        let name = known_hosts_name(host, port);
        let mut lookup = Lookup {
            path: self.path.clone(),
            name,
            keys: Vec::new(),
            revoked: Vec::new(),
        };
        for entry in &self.entries {
            if !entry.hosts.matches(&lookup.name) {
                continue;
            }
            let known = KnownKey {
                key: entry.key.clone(),
                line: entry.line,
            };
            if entry.revoked {
                lookup.revoked.push(known);
            } else {
                lookup.keys.push(known);
            }
        }
        lookup
    }
}

/// One line, `number` for messages. `Err` is the reason it is skipped.
fn parse_line(number: usize, line: &str) -> Result<Parsed, String> {
    // CRLF files: the carriage return is whitespace to OpenSSH's base64
    // decoder, which is where it would otherwise end up.
    let line = line.strip_suffix('\r').unwrap_or(line);
    let line = line.trim_start_matches([' ', '\t']);
    if line.is_empty() || line.starts_with('#') {
        return Ok(Parsed::Nothing);
    }
    let mut fields = line.split([' ', '\t']).filter(|f| !f.is_empty());
    let mut first = fields.next().unwrap_or_default();
    let mut revoked = false;
    if first.starts_with('@') {
        match first {
            "@revoked" => revoked = true,
            // A CA key vouches for host certificates, which PromGuard
            // never accepts; the line says nothing about plain keys.
            "@cert-authority" => return Ok(Parsed::Nothing),
            other => return Err(format!("unknown marker {}", printable(other))),
        }
        first = fields
            .next()
            .ok_or("the line has a marker and nothing else")?;
    }
    let hosts = parse_host_field(first)?;
    let algorithm = fields.next().ok_or("the line has no key")?;
    if algorithm.bytes().all(|b| b.is_ascii_digit()) {
        return Err("SSH protocol 1 keys are not supported".into());
    }
    let data = fields.next().ok_or("the key has no data")?;
    let blob = BASE64
        .decode(data)
        .map_err(|_| "the key data is not base64".to_owned())?;
    match blob_algorithm(&blob) {
        Some(inner) if inner == algorithm => {}
        Some(inner) => {
            return Err(format!(
                "the key data is of type {}, not {}",
                printable(inner),
                printable(algorithm)
            ))
        }
        None => return Err("the key data is malformed".into()),
    }
    let key = SshPublicKey::from_blob(algorithm, &blob).map_err(|err| {
        // Only the algorithm can be wrong here: the blob was just encoded.
        format!("{err} (PromGuard's hosts use ed25519, ECDSA or RSA)")
    })?;
    Ok(Parsed::Entry(Entry {
        line: number,
        revoked,
        hosts,
        key,
    }))
}

fn parse_host_field(field: &str) -> Result<HostField, String> {
    if let Some(rest) = field.strip_prefix('|') {
        // OpenSSH knows one hash format, `|1|`, and takes the whole field
        // as one hashed name.
        let mut parts = rest.split('|');
        let (Some("1"), Some(salt), Some(hmac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the hashed host name is not |1|salt|hash".into());
        };
        let salt = BASE64
            .decode(salt)
            .ok()
            .filter(|salt| salt.len() == SHA1_LEN)
            .ok_or("the hashed host name's salt is not 20 bytes of base64")?;
        let hmac = BASE64
            .decode(hmac)
            .ok()
            .and_then(|hmac| <[u8; SHA1_LEN]>::try_from(hmac).ok())
            .ok_or("the hashed host name's hash is not 20 bytes of base64")?;
        return Ok(HostField::Hashed { salt, hmac });
    }
    let patterns = field
        .split(',')
        .map(|pattern| match pattern.strip_prefix('!') {
            Some(glob) => Pattern {
                negated: true,
                glob: glob.to_ascii_lowercase(),
            },
            None => Pattern {
                negated: false,
                glob: pattern.to_ascii_lowercase(),
            },
        })
        .collect();
    Ok(HostField::Patterns(patterns))
}

impl HostField {
    /// Whether the line applies to `name` (already in
    /// [`known_hosts_name`] form).
    fn matches(&self, name: &str) -> bool {
        match self {
            HostField::Hashed { salt, hmac } => {
                // HMAC takes keys of any length; the arm is for the type.
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hmac).is_ok()
            }
            // OpenSSH's match_pattern_list: a negated pattern that matches
            // rules the line out whatever else matches; otherwise one
            // positive match is enough.
            HostField::Patterns(patterns) => {
                let mut positive = false;
                for pattern in patterns {
                    if glob_match(pattern.glob.as_bytes(), name.as_bytes()) {
                        if pattern.negated {
                            return false;
                        }
                        positive = true;
                    }
                }
                positive
            }
        }
    }
}

/// `*` (any run of bytes) and `?` (one byte) as in OpenSSH's
/// match_pattern, but iterative: OpenSSH recurses at every `*`, which is
/// exponential on a hostile pattern; this backtracks only to the last
/// `*`, which is enough for these two wildcards and stays
/// O(pattern × text).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                last_star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match last_star {
                // Let the last `*` swallow one more byte and try again.
                Some((star, start)) => {
                    last_star = Some((star, start + 1));
                    p = star + 1;
                    t = start + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The algorithm name an SSH key blob starts with (a u32 length, then the
/// name).
fn blob_algorithm(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
}

/// Untrusted text for a message: at most 40 characters, control
/// characters escaped, so a hostile line cannot rewrite the terminal.
fn printable(text: &str) -> String {
    let mut shown: String = text.chars().take(40).flat_map(char::escape_debug).collect();
    if text.chars().count() > 40 {
        shown.push_str("...");
    }
    shown
}

/// Whether two keys are the same key: same decoded blob (which starts
/// with the algorithm), whatever the base64 padding of their text.
fn same_key(a: &SshPublicKey, b: &SshPublicKey) -> bool {
    if a == b {
        return true;
    }
    match (BASE64.decode(a.base64()), BASE64.decode(b.base64())) {
        (Ok(a_blob), Ok(b_blob)) => a.algorithm() == b.algorithm() && a_blob == b_blob,
        _ => false,
    }
}

/// `ssh-ed25519 SHA256:...`, the way errors show a key.
fn describe(key: &SshPublicKey) -> String {
    format!("{} {}", key.algorithm(), key.fingerprint())
}

fn describe_all(keys: &[SshPublicKey]) -> String {
    keys.iter().map(describe).collect::<Vec<_>>().join(" or ")
}

/// Where a trusted key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The host's `host_key` in the config.
    Config,
    /// The key an earlier run pinned in the state.
    State,
    /// The user's known_hosts.
    KnownHosts,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySource::Config => "the config's host_key",
            KeySource::State => "the key pinned in the state",
            KeySource::KnownHosts => "known_hosts",
        })
    }
}

/// Who showed the key that differs from the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentedBy {
    /// The SSH server, in the handshake.
    Server,
    /// The config's `host_key`, against the key pinned in the state.
    Config,
}

/// Everything known about a host's key, for [`decide_host_key`].
#[derive(Debug, Clone, Copy)]
pub struct TrustFacts<'a> {
    /// The host's name in the deployment, for messages.
    pub host: &'a HostName,
    /// The address it is reached at, as in the config (DNS name or IP).
    pub address: &'a str,
    /// Its SSH port.
    pub port: u16,
    /// `host_key` from the config.
    pub config_key: Option<&'a SshPublicKey>,
    /// The key an earlier run pinned in the state.
    pub pinned_key: Option<&'a SshPublicKey>,
    /// What the user's known_hosts records for `address` and `port`
    /// ([`Lookup::default`] when none was read).
    pub known_hosts: &'a Lookup,
    /// The key the server presented, once probed
    /// ([`crate::probe::probe_host_key_preferring`]); `None` before.
    pub presented_key: Option<&'a SshPublicKey>,
}

/// What to do about a host's key ([`decide_host_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustDecision {
    /// Connect expecting `key`; pin it in the state if it is not yet.
    Trusted {
        /// The key.
        key: SshPublicKey,
        /// Where it is known from.
        source: KeySource,
    },
    /// Nothing is known about the host and it presented `key`: show
    /// `fingerprint` and stop, unless the user passed
    /// `--trust-new-host-keys` or answers yes; then pin `key`.
    New {
        /// The key the server presented.
        key: SshPublicKey,
        /// Its fingerprint as `ssh-keygen -lf` prints it.
        fingerprint: String,
    },
    /// The decision needs the key the server presents: probe it, asking
    /// for `algorithms` first (the types known_hosts records, so an honest
    /// server with several keys presents a recorded one), and decide
    /// again with [`TrustFacts::presented_key`] set.
    Probe {
        /// Host key algorithms to prefer, most wanted first.
        algorithms: Vec<String>,
    },
}

/// A host key that must not be trusted. The details are boxed: the
/// error travels through every caller's `Result`, which should stay small.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The key differs from the one known: the server presented another
    /// key, or the config's `host_key` differs from the key pinned in the
    /// state. The user must say which is right.
    #[error("{0}")]
    Changed(Box<ChangedKey>),
    /// The key is marked `@revoked` for this host in known_hosts.
    #[error("{0}")]
    Revoked(Box<RevokedKey>),
}

impl TrustError {
    /// The host this error is about.
    pub fn host(&self) -> &HostName {
        match self {
            TrustError::Changed(changed) => &changed.host,
            TrustError::Revoked(revoked) => &revoked.host,
        }
    }
}

/// A key other than the one known ([`TrustError::Changed`]); its message
/// names both fingerprints and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedKey {
    /// The host.
    pub host: HostName,
    /// The host as known_hosts writes it (`addr` or `[addr]:port`).
    pub name: String,
    /// The key(s) expected.
    pub expected: Vec<SshPublicKey>,
    /// Where the expected keys are from.
    pub expected_from: KeySource,
    /// The other key.
    pub presented: SshPublicKey,
    /// Who showed the other key.
    pub presented_by: PresentedBy,
    /// The known_hosts file, for the command that removes an entry.
    pub known_hosts: PathBuf,
}

impl fmt::Display for ChangedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&changed_message(self))
    }
}

/// A key known_hosts revokes for the host ([`TrustError::Revoked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedKey {
    /// The host.
    pub host: HostName,
    /// The host as known_hosts writes it.
    pub name: String,
    /// The revoked key.
    pub key: SshPublicKey,
    /// The known_hosts file.
    pub known_hosts: PathBuf,
    /// The `@revoked` line.
    pub line: usize,
}

impl fmt::Display for RevokedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the host key {} of {} ({}) is revoked by line {} of {}; PromGuard never trusts a revoked key: \
             give the host a new key and check its fingerprint on the host itself",
            describe(&self.key),
            self.host,
            self.name,
            self.line,
            self.known_hosts.display()
        )
    }
}

fn changed_message(changed: &ChangedKey) -> String {
    let ChangedKey {
        host,
        name,
        expected,
        expected_from,
        presented,
        presented_by,
        known_hosts,
    } = changed;
    let expected_keys = describe_all(expected);
    let presented_key = describe(presented);
    const INTERCEPTED: &str = "otherwise someone may be intercepting the connection";
    match (*presented_by, *expected_from) {
        (PresentedBy::Config, _) => format!(
            "the host_key of {host} in the config ({presented_key}) differs from the key pinned in the state ({expected_keys}); \
             say which is right: if the host was reinstalled and host_key is its new key, forget the key pinned in the state, \
             otherwise set host_key back to the pinned key"
        ),
        (PresentedBy::Server, KeySource::KnownHosts) => format!(
            "the host key of {host} ({name}) has changed: {} records {expected_keys}, the server presented {presented_key}; \
             if the host was reinstalled, check the new key on the host itself, remove the old entry with \
             `ssh-keygen -R {} -f {}` (or set host_key in the config) and run again; {INTERCEPTED}",
            known_hosts.display(),
            shell_quote(name),
            shell_quote(&known_hosts.to_string_lossy()),
        ),
        (PresentedBy::Server, KeySource::Config) => format!(
            "the host key of {host} ({name}) has changed: host_key in the config is {expected_keys}, the server presented {presented_key}; \
             if the host was reinstalled, check the new key on the host itself and update host_key; {INTERCEPTED}"
        ),
        (PresentedBy::Server, KeySource::State) => format!(
            "the host key of {host} ({name}) has changed: the state pins {expected_keys}, the server presented {presented_key}; \
             if the host was reinstalled, check the new key on the host itself and forget the key pinned in the state; {INTERCEPTED}"
        ),
    }
}

/// Decides whether a host's key is trusted. Pure: the caller reads the
/// config, state and known_hosts, and probes the server only when this
/// returns [`TrustDecision::Probe`].
///
/// The order: a key revoked in known_hosts is refused wherever it comes
/// from. The config's `host_key` and then the key pinned in the state are
/// trusted as they are (the connection then checks the server presents
/// it); if both are set they must agree. Otherwise known_hosts decides
/// once the server's key is known: a recorded key is trusted, any other
/// key is [`TrustError::Changed`] (also one of a type known_hosts does
/// not record, where OpenSSH would only ask: a host the user already
/// knows is not new, and `--trust-new-host-keys` must not wave a
/// different key through). Only a host known nowhere is
/// [`TrustDecision::New`].
pub fn decide_host_key(facts: &TrustFacts<'_>) -> Result<TrustDecision, TrustError> {
    let name = known_hosts_name(facts.address, facts.port);
    let lookup = facts.known_hosts;
    for key in [facts.config_key, facts.pinned_key, facts.presented_key]
        .into_iter()
        .flatten()
    {
        if let Some(revocation) = lookup.revocation(key) {
            return Err(TrustError::Revoked(Box::new(RevokedKey {
                host: facts.host.clone(),
                name,
                key: key.clone(),
                known_hosts: lookup.path.clone(),
                line: revocation.line,
            })));
        }
    }
    let changed = |expected: Vec<SshPublicKey>,
                   expected_from: KeySource,
                   presented: &SshPublicKey,
                   presented_by: PresentedBy| {
        TrustError::Changed(Box::new(ChangedKey {
            host: facts.host.clone(),
            name: name.clone(),
            expected,
            expected_from,
            presented: presented.clone(),
            presented_by,
            known_hosts: lookup.path.clone(),
        }))
    };
    if let (Some(config), Some(pinned)) = (facts.config_key, facts.pinned_key) {
        if !same_key(config, pinned) {
            return Err(changed(
                vec![pinned.clone()],
                KeySource::State,
                config,
                PresentedBy::Config,
            ));
        }
    }
    let authoritative = match (facts.config_key, facts.pinned_key) {
        (Some(config), _) => Some((config, KeySource::Config)),
        (None, Some(pinned)) => Some((pinned, KeySource::State)),
        (None, None) => None,
    };
    if let Some((key, source)) = authoritative {
        return match facts.presented_key {
            Some(presented) if !same_key(presented, key) => Err(changed(
                vec![key.clone()],
                source,
                presented,
                PresentedBy::Server,
            )),
            _ => Ok(TrustDecision::Trusted {
                key: key.clone(),
                source,
            }),
        };
    }
    let Some(presented) = facts.presented_key else {
        let mut algorithms = lookup.algorithms();
        for algorithm in HOST_KEY_ALGORITHMS {
            if !algorithms.iter().any(|a| a == algorithm) {
                algorithms.push(algorithm.to_owned());
            }
        }
        return Ok(TrustDecision::Probe { algorithms });
    };
    if lookup.keys.is_empty() {
        return Ok(TrustDecision::New {
            key: presented.clone(),
            fingerprint: presented.fingerprint(),
        });
    }
    match lookup.find(presented) {
        Some(known) => Ok(TrustDecision::Trusted {
            key: known.key.clone(),
            source: KeySource::KnownHosts,
        }),
        None => Err(changed(
            lookup.keys.iter().map(|k| k.key.clone()).collect(),
            KeySource::KnownHosts,
            presented,
            PresentedBy::Server,
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Write as _;
    use std::process::{Command, Stdio};

    use expect_test::{expect, expect_file};

    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/known_hosts/mixed");
    const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

    // The fixture's throwaway keys.
    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBz2LKTIJHVMT2WS1LueK4THd/2bD75IH43SLrgRXDoj";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPod/UrQIKkRhXbIUC9Z/lPO90XTW47myjqyxqnBOjRd";

    fn key(text: &str) -> SshPublicKey {
        SshPublicKey::parse(text).unwrap()
    }

    fn fixture() -> KnownHosts {
        KnownHosts::load(Path::new(FIXTURE)).unwrap()
    }

    fn ssh_keygen(args: &[&str]) -> String {
        assert!(
            Path::new(SSH_KEYGEN).exists(),
            "{SSH_KEYGEN} is missing; install it with `apt-get install openssh-client`"
        );
        let out = Command::new(SSH_KEYGEN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ssh-keygen");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The lines `ssh-keygen -F name -f file` reports for `name`, without
    /// the `@cert-authority` ones (marked `CA`), which PromGuard ignores.
    fn ssh_keygen_lines(name: &str, file: &Path) -> BTreeSet<usize> {
        ssh_keygen(&["-F", name, "-f", file.to_str().unwrap()])
            .lines()
            .filter_map(|line| line.strip_prefix(&format!("# Host {name} found: line ")))
            .filter(|rest| !rest.trim_end().ends_with("CA"))
            .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    }

    fn our_lines(lookup: &Lookup) -> BTreeSet<usize> {
        lookup
            .keys
            .iter()
            .chain(&lookup.revoked)
            .map(|known| known.line)
            .collect()
    }

    const QUERIES: &[(&str, u16)] = &[
        ("alpha.example.com", 22),
        ("ALPHA.Example.com", 22),
        ("192.0.2.10", 22),
        ("alpha.example.com", 2222),
        ("alpha.example.com", 2200),
        ("192.0.2.10", 2222),
        ("192.0.2.10", 2200),
        ("x.wild.example.com", 22),
        ("a.b.wild.example.com", 22),
        ("wild.example.com", 22),
        ("bad.wild.example.com", 22),
        ("x.wild.example.com", 2222),
        ("host.example.com", 22),
        ("hxst.example.com", 22),
        ("hoost.example.com", 22),
        ("gamma.example.com", 22),
        ("delta.example.com", 22),
        ("indented.example.com", 22),
        ("upper.example.com", 22),
        ("::1", 22),
        ("::1", 2222),
        ("epsilon.example.com", 22),
        ("zeta.example.com", 22),
        ("eta.example.com", 22),
        ("theta.example.com", 22),
        ("iota.example.com", 22),
        ("nowhere.example.org", 22),
    ];

    #[test]
    fn lookups_and_skipped_lines_of_every_kind() {
        let known = fixture();
        let mut out = String::new();
        for &(host, port) in QUERIES {
            let lookup = known.lookup(host, port);
            let show = |keys: &[KnownKey]| {
                keys.iter()
                    .map(|k| format!("{}:{}", k.line, k.key.algorithm()))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            writeln!(
                out,
                "{host} {port} -> {}: keys [{}] revoked [{}]",
                lookup.name,
                show(&lookup.keys),
                show(&lookup.revoked)
            )
            .unwrap();
        }
        out.push_str("\nskipped:\n");
        for skipped in known.skipped() {
            let text = skipped.to_string();
            writeln!(out, "{}", text.strip_prefix(FIXTURE).unwrap()).unwrap();
        }
        expect_file!["../tests/data/known_hosts/mixed.lookups"].assert_eq(&out);
    }

    // The oracle is OpenSSH itself: for every query, the lines it finds
    // are the ones we find, less those we skip (keys PromGuard cannot
    // read or use: ssh-keygen -F does not parse keys) and the
    // @cert-authority lines.
    #[test]
    fn lookups_agree_with_ssh_keygen_find() {
        let known = fixture();
        let skipped: BTreeSet<usize> = known.skipped().iter().map(|s| s.line).collect();
        for &(host, port) in QUERIES {
            let lookup = known.lookup(host, port);
            let expected: BTreeSet<usize> = ssh_keygen_lines(&lookup.name, Path::new(FIXTURE))
                .difference(&skipped)
                .copied()
                .collect();
            assert_eq!(our_lines(&lookup), expected, "{}", lookup.name);
        }
    }

    #[test]
    fn hashed_entries_written_by_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        // ssh-keygen -H refuses files with wildcards or bad lines, so a
        // file of the kinds it hashes: names, addresses, ports, lists.
        let plain = format!(
            "alpha.example.com,192.0.2.10 {KEY_A}\n\
             [alpha.example.com]:2222 {KEY_B}\n\
             @revoked gamma.example.com {KEY_A}\n\
             gamma.example.com {KEY_B}\n\
             ::1 {KEY_A}\n\
             [::1]:2222 {KEY_B}\n\
             [2001:db8::7]:2022,203.0.113.7 {KEY_B}\n"
        );
        std::fs::write(&path, &plain).unwrap();
        ssh_keygen(&["-q", "-H", "-f", path.to_str().unwrap()]);
        let hashed_text = std::fs::read_to_string(&path).unwrap();
        // Every name hashed, one line each; ssh-keygen leaves marker lines
        // as they are.
        let unhashed: Vec<&str> = hashed_text
            .lines()
            .filter(|line| !line.starts_with("|1|"))
            .collect();
        assert_eq!(unhashed, [format!("@revoked gamma.example.com {KEY_A}")]);
        assert_eq!(hashed_text.matches("|1|").count(), 8, "{hashed_text}");

        let hashed = KnownHosts::load(&path).unwrap();
        assert_eq!(hashed.skipped(), &[]);
        let plain = KnownHosts::parse(Path::new("plain"), plain.as_bytes());
        let queries = [
            ("alpha.example.com", 22),
            ("Alpha.example.com", 22),
            ("192.0.2.10", 22),
            ("alpha.example.com", 2222),
            ("192.0.2.10", 2222),
            ("gamma.example.com", 22),
            ("::1", 22),
            ("::1", 2222),
            ("2001:db8::7", 2022),
            ("2001:db8::7", 22),
            ("203.0.113.7", 22),
            ("beta.example.com", 22),
        ];
        for (host, port) in queries {
            let from_hashed = hashed.lookup(host, port);
            let from_plain = plain.lookup(host, port);
            let keys = |l: &Lookup| l.keys.iter().map(|k| k.key.clone()).collect::<Vec<_>>();
            assert_eq!(keys(&from_hashed), keys(&from_plain), "{host} {port}");
            let revoked = |l: &Lookup| l.revoked.iter().map(|k| k.key.clone()).collect::<Vec<_>>();
            assert_eq!(revoked(&from_hashed), revoked(&from_plain), "{host} {port}");
            assert_eq!(
                our_lines(&from_hashed),
                ssh_keygen_lines(&from_hashed.name, &path),
                "{host} {port}"
            );
        }
        assert_eq!(hashed.lookup("alpha.example.com", 22).keys.len(), 1);
        assert_eq!(hashed.lookup("gamma.example.com", 22).revoked.len(), 1);
        assert!(hashed.lookup("beta.example.com", 22).keys.is_empty());
    }

    #[test]
    fn fingerprints_are_those_ssh_keygen_prints() {
        let dir = tempfile::tempdir().unwrap();
        let kinds: &[&[&str]] = &[
            &["-t", "ed25519"],
            &["-t", "ecdsa", "-b", "256"],
            &["-t", "ecdsa", "-b", "384"],
            &["-t", "ecdsa", "-b", "521"],
            &["-t", "rsa", "-b", "2048"],
            &["-t", "rsa", "-b", "3072"],
        ];
        let mut lines = String::new();
        for (i, kind) in kinds.iter().enumerate() {
            let file = dir.path().join(format!("key{i}"));
            let mut args = vec![
                "-q",
                "-N",
                "",
                "-C",
                "fp-test",
                "-f",
                file.to_str().unwrap(),
            ];
            args.extend_from_slice(kind);
            ssh_keygen(&args);
            let public = std::fs::read_to_string(file.with_extension("pub")).unwrap();
            let printed = ssh_keygen(&["-lf", file.with_extension("pub").to_str().unwrap()]);
            let expected = printed.split_whitespace().nth(1).unwrap();
            let parsed = key(&public);
            assert_eq!(parsed.fingerprint(), expected, "{kind:?}");
            writeln!(lines, "host{i}.example.com {public}").unwrap();
        }
        // The same keys read back from a known_hosts file: canonical keys,
        // same fingerprints as `ssh-keygen -lf` prints for the file.
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, &lines).unwrap();
        let known = KnownHosts::load(&path).unwrap();
        let printed = ssh_keygen(&["-lf", path.to_str().unwrap()]);
        for (i, line) in printed.lines().enumerate() {
            let lookup = known.lookup(&format!("host{i}.example.com"), 22);
            assert_eq!(
                lookup.keys[0].key.fingerprint(),
                line.split_whitespace().nth(1).unwrap()
            );
        }
    }

    #[test]
    fn a_missing_file_is_empty_and_an_unreadable_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = KnownHosts::load(&dir.path().join("nope")).unwrap();
        assert!(missing.lookup("alpha.example.com", 22).keys.is_empty());
        assert_eq!(missing.path(), dir.path().join("nope"));
        let err = KnownHosts::load(dir.path()).unwrap_err();
        assert!(matches!(err, KnownHostsError::Read { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
        assert_eq!(
            default_known_hosts_path(Path::new("/home/ada")),
            Path::new("/home/ada/.ssh/known_hosts")
        );
    }

    #[test]
    fn hostile_lines_are_skipped_without_harm() {
        let mut text = b"\xff\xfe not utf-8\n".to_vec();
        text.extend_from_slice(format!("@revoked\n|1|{}|x {KEY_A}\n", "A".repeat(5000)).as_bytes());
        text.extend_from_slice(b"h ssh-ed25519 AAAA\nh ssh-ed25519 AAAAC3N\x1b[2J\n");
        text.extend_from_slice(format!("@\x1b[31mred h {KEY_A}\n").as_bytes());
        let known = KnownHosts::parse(Path::new("kh"), &text);
        let reasons: Vec<String> = known.skipped().iter().map(ToString::to_string).collect();
        expect![[r#"
            [
                "kh:1: the line is not UTF-8; line skipped",
                "kh:2: the line has a marker and nothing else; line skipped",
                "kh:3: the hashed host name's salt is not 20 bytes of base64; line skipped",
                "kh:4: the key data is malformed; line skipped",
                "kh:5: the key data is not base64; line skipped",
                "kh:6: unknown marker @\\u{1b}[31mred; line skipped",
            ]
        "#]]
        .assert_debug_eq(&reasons);
        assert!(known.entries.is_empty());
    }

    #[test]
    fn glob_matching() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("a*", "a", true),
            ("*.example.com", "x.example.com", true),
            ("*.example.com", "example.com", false),
            ("h?st", "host", true),
            ("h?st", "hst", false),
            ("h*t", "hoooost", true),
            ("h*t", "hoooosx", false),
            ("[h]:*", "[h]:2222", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("**", "x", true),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                expected,
                "{pattern:?} {text:?}"
            );
        }
        // A pattern that makes a recursive matcher take exponential time
        // is answered at once.
        let pattern = "*a".repeat(40) + "b";
        let text = "a".repeat(10_000);
        let start = std::time::Instant::now();
        assert!(!glob_match(pattern.as_bytes(), text.as_bytes()));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    // The decision, one test per branch.

    fn host() -> HostName {
        HostName::new("db-1").unwrap()
    }

    fn rsa_key() -> SshPublicKey {
        fixture().lookup("alpha.example.com", 22).keys[1]
            .key
            .clone()
    }

    fn known_hosts_with(lines: &str) -> Lookup {
        KnownHosts::parse(Path::new("/home/ada/.ssh/known_hosts"), lines.as_bytes())
            .lookup("203.0.113.7", 22)
    }

    struct Facts {
        config: Option<SshPublicKey>,
        pinned: Option<SshPublicKey>,
        known: Lookup,
        presented: Option<SshPublicKey>,
    }

    impl Facts {
        fn new() -> Self {
            Facts {
                config: None,
                pinned: None,
                known: Lookup::default(),
                presented: None,
            }
        }

        fn decide(&self) -> Result<TrustDecision, TrustError> {
            let host = host();
            decide_host_key(&TrustFacts {
                host: &host,
                address: "203.0.113.7",
                port: 22,
                config_key: self.config.as_ref(),
                pinned_key: self.pinned.as_ref(),
                known_hosts: &self.known,
                presented_key: self.presented.as_ref(),
            })
        }
    }

    fn trusted(key: &str, source: KeySource) -> Result<TrustDecision, TrustError> {
        Ok(TrustDecision::Trusted {
            key: self::key(key),
            source,
        })
    }

    #[test]
    fn config_key_is_trusted_without_a_probe() {
        let mut facts = Facts::new();
        facts.config = Some(key(KEY_A));
        // known_hosts is not consulted when the config names the key.
        facts.known = known_hosts_with(&format!("203.0.113.7 {KEY_B}\n"));
        assert_eq!(facts.decide(), trusted(KEY_A, KeySource::Config));
        facts.presented = Some(key(KEY_A));
        assert_eq!(facts.decide(), trusted(KEY_A, KeySource::Config));
        facts.pinned = Some(key(KEY_A));
        assert_eq!(facts.decide(), trusted(KEY_A, KeySource::Config));
    }

    #[test]
    fn pinned_key_is_trusted_without_a_probe() {
        let mut facts = Facts::new();
        facts.pinned = Some(key(KEY_A));
        assert_eq!(facts.decide(), trusted(KEY_A, KeySource::State));
        facts.presented = Some(key(KEY_A));
        assert_eq!(facts.decide(), trusted(KEY_A, KeySource::State));
    }

    #[test]
    fn keys_compare_by_blob_not_by_base64_padding() {
        let ecdsa = fixture().lookup("alpha.example.com", 2200).keys[0]
            .key
            .clone();
        let unpadded = key(ecdsa.to_string().trim_end_matches('='));
        assert_ne!(ecdsa, unpadded);
        let mut facts = Facts::new();
        facts.pinned = Some(ecdsa.clone());
        facts.config = Some(unpadded.clone());
        facts.presented = Some(ecdsa.clone());
        assert_eq!(
            facts.decide(),
            Ok(TrustDecision::Trusted {
                key: unpadded,
                source: KeySource::Config
            })
        );
    }

    #[test]
    fn config_key_other_than_the_pinned_one_is_changed() {
        let mut facts = Facts::new();
        facts.config = Some(key(KEY_B));
        facts.pinned = Some(key(KEY_A));
        let err = facts.decide().unwrap_err();
        assert!(
            matches!(
                &err,
                TrustError::Changed(changed)
                    if changed.expected_from == KeySource::State
                        && changed.presented_by == PresentedBy::Config
            ),
            "{err:?}"
        );
        expect!["the host_key of db-1 in the config (ssh-ed25519 SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE) differs from the key pinned in the state (ssh-ed25519 SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k); say which is right: if the host was reinstalled and host_key is its new key, forget the key pinned in the state, otherwise set host_key back to the pinned key"]
            .assert_eq(&err.to_string());
        assert_eq!(err.host(), &host());
    }

    #[test]
    fn server_key_other_than_the_config_key_is_changed() {
        let mut facts = Facts::new();
        facts.config = Some(key(KEY_A));
        facts.presented = Some(key(KEY_B));
        let err = facts.decide().unwrap_err();
        expect!["the host key of db-1 (203.0.113.7) has changed: host_key in the config is ssh-ed25519 SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k, the server presented ssh-ed25519 SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE; if the host was reinstalled, check the new key on the host itself and update host_key; otherwise someone may be intercepting the connection"]
            .assert_eq(&err.to_string());
    }

    #[test]
    fn server_key_other_than_the_pinned_key_is_changed() {
        let mut facts = Facts::new();
        facts.pinned = Some(key(KEY_A));
        facts.presented = Some(key(KEY_B));
        let err = facts.decide().unwrap_err();
        expect!["the host key of db-1 (203.0.113.7) has changed: the state pins ssh-ed25519 SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k, the server presented ssh-ed25519 SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE; if the host was reinstalled, check the new key on the host itself and forget the key pinned in the state; otherwise someone may be intercepting the connection"]
            .assert_eq(&err.to_string());
    }

    #[test]
    fn unknown_host_is_probed_ed25519_first() {
        let facts = Facts::new();
        assert_eq!(
            facts.decide(),
            Ok(TrustDecision::Probe {
                algorithms: HOST_KEY_ALGORITHMS.map(String::from).to_vec()
            })
        );
    }

    #[test]
    fn host_in_known_hosts_is_probed_for_the_recorded_types_first() {
        let mut facts = Facts::new();
        facts.known = known_hosts_with(&format!("203.0.113.7 {}\n", rsa_key()));
        assert_eq!(
            facts.decide(),
            Ok(TrustDecision::Probe {
                algorithms: [
                    "ssh-rsa",
                    "ssh-ed25519",
                    "ecdsa-sha2-nistp256",
                    "ecdsa-sha2-nistp384",
                    "ecdsa-sha2-nistp521",
                ]
                .map(String::from)
                .to_vec()
            })
        );
    }

    #[test]
    fn key_recorded_in_known_hosts_is_trusted() {
        let mut facts = Facts::new();
        facts.known = known_hosts_with(&format!(
            "203.0.113.7 {}\n|1|c2FsdHNhbHRzYWx0c2FsdHNhbHQ=|AAAAAAAAAAAAAAAAAAAAAAAAAAA= {KEY_B}\n203.0.113.7 {KEY_A}\n",
            rsa_key()
        ));
        facts.presented = Some(key(KEY_A));
        assert_eq!(facts.decide(), trusted(KEY_A, KeySource::KnownHosts));
    }

    #[test]
    fn key_other_than_those_in_known_hosts_is_changed() {
        let mut facts = Facts::new();
        facts.known = known_hosts_with(&format!("203.0.113.7 {KEY_A}\n"));
        facts.presented = Some(key(KEY_B));
        let err = facts.decide().unwrap_err();
        expect!["the host key of db-1 (203.0.113.7) has changed: /home/ada/.ssh/known_hosts records ssh-ed25519 SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k, the server presented ssh-ed25519 SHA256:erA4elc776YpNhu5/zEShRa3inrqAmmxuTZX8vFp0tE; if the host was reinstalled, check the new key on the host itself, remove the old entry with `ssh-keygen -R '203.0.113.7' -f '/home/ada/.ssh/known_hosts'` (or set host_key in the config) and run again; otherwise someone may be intercepting the connection"]
            .assert_eq(&err.to_string());
    }

    // OpenSSH would only ask here; a host the user knows is not new.
    #[test]
    fn key_of_a_type_known_hosts_does_not_record_is_changed() {
        let mut facts = Facts::new();
        facts.known = known_hosts_with(&format!("203.0.113.7 {}\n", rsa_key()));
        facts.presented = Some(key(KEY_A));
        let err = facts.decide().unwrap_err();
        assert!(
            matches!(
                &err,
                TrustError::Changed(changed)
                    if changed.expected_from == KeySource::KnownHosts
                        && changed.presented_by == PresentedBy::Server
            ),
            "{err}"
        );
        assert!(err.to_string().contains("records ssh-rsa SHA256:8TQG21NPInTktsaLHt+lBTqOEQs4ZDQwba44J47Wo8o, the server presented ssh-ed25519"), "{err}");
    }

    #[test]
    fn host_known_nowhere_is_new() {
        let mut facts = Facts::new();
        // Entries for the same address on another port do not count.
        facts.known = KnownHosts::parse(
            Path::new("kh"),
            format!("[203.0.113.7]:2222 {KEY_B}\n").as_bytes(),
        )
        .lookup("203.0.113.7", 22);
        facts.presented = Some(key(KEY_A));
        assert_eq!(
            facts.decide(),
            Ok(TrustDecision::New {
                key: key(KEY_A),
                fingerprint: "SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k".into()
            })
        );
    }

    #[test]
    fn revoked_key_is_refused_wherever_it_comes_from() {
        let revoked = known_hosts_with(&format!("203.0.113.7 {KEY_A}\n@revoked * {KEY_A}\n"));
        let mut presented = Facts::new();
        presented.known = revoked.clone();
        presented.presented = Some(key(KEY_A));
        let mut config = Facts::new();
        config.known = revoked.clone();
        config.config = Some(key(KEY_A));
        let mut pinned = Facts::new();
        pinned.known = revoked;
        pinned.pinned = Some(key(KEY_A));
        for facts in [presented, config, pinned] {
            let err = facts.decide().unwrap_err();
            assert!(
                matches!(&err, TrustError::Revoked(revoked) if revoked.line == 2),
                "{err}"
            );
            expect!["the host key ssh-ed25519 SHA256:i10WXA+xbir0824xsSukBx8tCN/agTLCLXo5OXsoh3k of db-1 (203.0.113.7) is revoked by line 2 of /home/ada/.ssh/known_hosts; PromGuard never trusts a revoked key: give the host a new key and check its fingerprint on the host itself"]
                .assert_eq(&err.to_string());
        }
        // A revoked key is not a reason to refuse another one.
        let mut facts = Facts::new();
        facts.known = known_hosts_with(&format!("203.0.113.7 {KEY_B}\n@revoked * {KEY_A}\n"));
        facts.presented = Some(key(KEY_B));
        assert_eq!(facts.decide(), trusted(KEY_B, KeySource::KnownHosts));
    }

    #[test]
    fn changed_message_quotes_a_non_standard_port_for_the_shell() {
        let host = host();
        let known = KnownHosts::parse(
            Path::new("/home/ada/.ssh/known_hosts"),
            format!("[db.example.com]:2222 {KEY_A}\n").as_bytes(),
        )
        .lookup("db.example.com", 2222);
        let err = decide_host_key(&TrustFacts {
            host: &host,
            address: "db.example.com",
            port: 2222,
            config_key: None,
            pinned_key: None,
            known_hosts: &known,
            presented_key: Some(&key(KEY_B)),
        })
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "`ssh-keygen -R '[db.example.com]:2222' -f '/home/ada/.ssh/known_hosts'`"
            ),
            "{err}"
        );
    }
}
