//! Parsing `wg show <if> dump`: what a running interface actually has.
//!
//! The dump holds the interface's private key and the preshared keys. They
//! are parsed straight into the core secret types, whose `Debug` is
//! redacted, and never kept or reported as plain text.

use std::net::SocketAddr;

use ipnetwork::IpNetwork;
use promguard_core::{PresharedKey, PrivateKey, PublicKey};

/// The parsed output of `wg show <if> dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    /// The interface line.
    pub interface: DumpInterface,
    /// One entry per peer line, in output order.
    pub peers: Vec<DumpPeer>,
}

impl Dump {
    /// The peer with `public_key`, if the interface has it.
    pub fn peer(&self, public_key: &PublicKey) -> Option<&DumpPeer> {
        self.peers.iter().find(|p| &p.public_key == public_key)
    }
}

/// The interface line of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpInterface {
    /// The private key, `None` when the interface has none yet.
    ///
    /// WireGuard stores keys clamped (RFC 7748), so these bytes may differ
    /// from those of an unclamped key that was set, though both give the
    /// same public key: compare [`DumpInterface::public_key`] instead.
    pub private_key: Option<PrivateKey>,
    /// The public key, `None` when the interface has no private key.
    pub public_key: Option<PublicKey>,
    /// The UDP port it listens on (0 while it has none).
    pub listen_port: u16,
    /// The firewall mark, `None` for `off`.
    pub fwmark: Option<u32>,
}

/// One peer line of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpPeer {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// The preshared key, `None` for `(none)`.
    pub preshared_key: Option<PresharedKey>,
    /// The peer's current endpoint, `None` for `(none)`.
    pub endpoint: Option<SocketAddr>,
    /// AllowedIPs, empty for `(none)`.
    pub allowed_ips: Vec<IpNetwork>,
    /// Time of the latest handshake in Unix seconds; `None` for never (0).
    pub latest_handshake: Option<u64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Keepalive interval in seconds; `None` for `off`.
    pub persistent_keepalive: Option<u16>,
}

/// Why a dump could not be parsed. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// The text has no interface line.
    #[error("`wg show <if> dump` output is empty; is the interface up and is the name right?")]
    Empty,
    /// A line has the wrong number of tab-separated fields.
    #[error("`wg show <if> dump` line {line}: expected {expected} tab-separated fields, found {found}; pass the output of `wg show <if> dump` for a single interface (not `wg show all dump`)")]
    Fields {
        /// The line (from 1).
        line: usize,
        /// Fields an interface (4) or peer (8) line has.
        expected: usize,
        /// Fields found.
        found: usize,
    },
    /// A field does not have the expected form.
    #[error("`wg show <if> dump` line {line}: invalid {field}: {reason}")]
    Field {
        /// The line (from 1).
        line: usize,
        /// The field's name, e.g. `endpoint`.
        field: &'static str,
        /// What is wrong (never a secret's text).
        reason: String,
    },
}

const NONE: &str = "(none)";

fn field_error(line: usize, field: &'static str, value: &str, expected: &str) -> DumpError {
    let shown: String = value.chars().take(40).collect();
    DumpError::Field {
        line,
        field,
        reason: format!("{shown:?} is not {expected}"),
    }
}

fn number<T: std::str::FromStr>(
    line: usize,
    field: &'static str,
    value: &str,
) -> Result<T, DumpError> {
    value
        .parse()
        .map_err(|_| field_error(line, field, value, "a number"))
}

/// `off` or a number.
fn off_or<T: std::str::FromStr>(
    line: usize,
    field: &'static str,
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, DumpError> {
    if value == "off" {
        return Ok(None);
    }
    parse(value)
        .map(Some)
        .ok_or_else(|| field_error(line, field, value, "\"off\" or a number"))
}

fn key_field<T>(
    line: usize,
    field: &'static str,
    value: &str,
    parse: impl Fn(&str) -> Result<T, promguard_core::keys::KeyError>,
) -> Result<Option<T>, DumpError> {
    if value == NONE {
        return Ok(None);
    }
    // KeyError's reason never contains the key text.
    parse(value).map(Some).map_err(|e| DumpError::Field {
        line,
        field,
        reason: e.reason.to_owned(),
    })
}

/// Parses the output of `wg show <if> dump`.
///
/// The first line describes the interface (private key, public key, listen
/// port, fwmark), every further line one peer (public key, preshared key,
/// endpoint, allowed IPs, latest handshake, rx bytes, tx bytes, persistent
/// keepalive), fields separated by tabs. A trailing empty line is fine.
pub fn parse_dump(text: &str) -> Result<Dump, DumpError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.is_empty());
    let (line, first) = lines.next().ok_or(DumpError::Empty)?;
    let interface = parse_interface(line, first)?;
    let peers = lines
        .map(|(line, text)| parse_peer(line, text))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Dump { interface, peers })
}

fn fields<const N: usize>(line: usize, text: &str) -> Result<[&str; N], DumpError> {
    let parts: Vec<&str> = text.split('\t').collect();
    let found = parts.len();
    parts.try_into().map_err(|_| DumpError::Fields {
        line,
        expected: N,
        found,
    })
}

fn parse_interface(line: usize, text: &str) -> Result<DumpInterface, DumpError> {
    let [private_key, public_key, listen_port, fwmark] = fields::<4>(line, text)?;
    Ok(DumpInterface {
        private_key: key_field(line, "private key", private_key, PrivateKey::from_base64)?,
        public_key: key_field(line, "public key", public_key, PublicKey::from_base64)?,
        listen_port: number(line, "listen port", listen_port)?,
        fwmark: off_or(line, "fwmark", fwmark, |v| {
            // wg prints the mark in hex (0x...).
            match v.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })?,
    })
}

fn parse_peer(line: usize, text: &str) -> Result<DumpPeer, DumpError> {
    let [public_key, preshared_key, endpoint, allowed_ips, handshake, rx, tx, keepalive] =
        fields::<8>(line, text)?;
    let public_key = key_field(line, "public key", public_key, PublicKey::from_base64)?
        .ok_or_else(|| field_error(line, "public key", public_key, "a public key"))?;
    let endpoint = if endpoint == NONE {
        None
    } else {
        Some(
            endpoint
                .parse::<SocketAddr>()
                .map_err(|_| field_error(line, "endpoint", endpoint, "IP:port or [IPv6]:port"))?,
        )
    };
    let allowed_ips = if allowed_ips == NONE {
        Vec::new()
    } else {
        allowed_ips
            .split(',')
            .map(|n| {
                n.parse::<IpNetwork>()
                    .map_err(|_| field_error(line, "allowed ips", n, "an address with prefix"))
            })
            .collect::<Result<_, _>>()?
    };
    let handshake: u64 = number(line, "latest handshake", handshake)?;
    Ok(DumpPeer {
        public_key,
        preshared_key: key_field(
            line,
            "preshared key",
            preshared_key,
            PresharedKey::from_base64,
        )?,
        endpoint,
        allowed_ips,
        latest_handshake: (handshake != 0).then_some(handshake),
        rx_bytes: number(line, "transfer rx", rx)?,
        tx_bytes: number(line, "transfer tx", tx)?,
        persistent_keepalive: off_or(line, "persistent keepalive", keepalive, |v| {
            v.parse::<u16>().ok()
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real output of wireguard-go 0.0.2023 / wg 1.0.20210914: a monitor
    /// after a handshake with one node, plus a peer with an IPv6 endpoint and
    /// one with nothing set.
    const MONITOR: &str = include_str!("../tests/data/dump-monitor.txt");
    /// The node's side of the same tunnel, with an fwmark set.
    const NODE: &str = include_str!("../tests/data/dump-node.txt");

    #[test]
    fn parses_real_monitor_dump() {
        let dump = parse_dump(MONITOR).unwrap();
        let i = &dump.interface;
        assert!(i.private_key.is_some());
        assert_eq!(
            i.public_key.unwrap(),
            i.private_key.as_ref().unwrap().public_key(),
            "the dump's public key belongs to its private key"
        );
        assert_eq!(i.listen_port, 51820);
        assert_eq!(i.fwmark, None);
        assert_eq!(dump.peers.len(), 3);

        let node = &dump.peers[0];
        assert!(node.preshared_key.is_some());
        assert_eq!(node.endpoint.unwrap().to_string(), "198.18.0.2:51820");
        assert_eq!(node.allowed_ips.len(), 1);
        assert_eq!(node.allowed_ips[0].to_string(), "10.0.0.2/32");
        assert!(node.latest_handshake.unwrap() > 1_600_000_000);
        assert!(node.rx_bytes > 0 && node.tx_bytes > 0);
        assert_eq!(node.persistent_keepalive, None);

        let v6 = &dump.peers[1];
        assert_eq!(v6.preshared_key, None);
        assert_eq!(v6.endpoint.unwrap().to_string(), "[fd00:1::3]:51820");
        assert_eq!(v6.allowed_ips[0].to_string(), "fd00:10::3/128");
        assert_eq!(v6.latest_handshake, None);
        assert_eq!(v6.persistent_keepalive, Some(25));

        let bare = &dump.peers[2];
        assert_eq!(bare.endpoint, None);
        assert!(bare.allowed_ips.is_empty());
        assert_eq!(dump.peer(&bare.public_key), Some(bare));
    }

    #[test]
    fn both_ends_of_a_real_tunnel_agree() {
        let monitor = parse_dump(MONITOR).unwrap();
        let node = parse_dump(NODE).unwrap();
        assert_eq!(node.interface.fwmark, Some(0x1234));
        let monitor_key = monitor.interface.public_key.unwrap();
        let node_key = node.interface.public_key.unwrap();
        let seen_by_node = node.peer(&monitor_key).unwrap();
        let seen_by_monitor = monitor.peer(&node_key).unwrap();
        assert_eq!(seen_by_node.preshared_key, seen_by_monitor.preshared_key);
        assert_eq!(seen_by_node.rx_bytes, seen_by_monitor.tx_bytes);
        assert_eq!(seen_by_node.allowed_ips.len(), 2);
    }

    #[test]
    fn debug_of_a_dump_shows_no_secret() {
        let dump = parse_dump(MONITOR).unwrap();
        let debug = format!("{dump:?}");
        let private = MONITOR.split('\t').next().unwrap();
        assert!(!debug.contains(private));
        let psk = MONITOR.lines().nth(1).unwrap().split('\t').nth(1).unwrap();
        assert!(!debug.contains(psk));
    }

    #[test]
    fn interface_without_key() {
        let dump = parse_dump("(none)\t(none)\t0\toff\n").unwrap();
        assert_eq!(dump.interface.private_key, None);
        assert_eq!(dump.interface.public_key, None);
        assert!(dump.peers.is_empty());
    }

    #[test]
    fn errors_say_what_and_where_without_secrets() {
        let first = MONITOR.lines().next().unwrap();
        let private = first.split('\t').next().unwrap();
        let peer = MONITOR.lines().nth(1).unwrap();
        let psk = peer.split('\t').nth(1).unwrap();
        let with_peer = |p: &str| format!("{first}\n{p}\n");
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "output is empty"),
            (
                "a\tb\n".into(),
                "line 1: expected 4 tab-separated fields, found 2",
            ),
            (format!("wg0\t{first}\n"), "found 5; pass the output"),
            (
                first.replacen("51820", "x", 1),
                "line 1: invalid listen port: \"x\" is not a number",
            ),
            (first.replacen("off", "on", 1), "line 1: invalid fwmark"),
            (
                first.replacen(private, &private[..43], 1),
                "line 1: invalid private key: expected 44",
            ),
            (
                with_peer(&peer.replacen(psk, &psk[..40], 1)),
                "line 2: invalid preshared key",
            ),
            (
                with_peer(&peer.replacen('\t', "\t\t", 1)),
                "line 2: expected 8 tab-separated fields, found 9",
            ),
            (
                with_peer(&peer.replacen("198.18.0.2:51820", "198.18.0.2", 1)),
                "line 2: invalid endpoint",
            ),
            (
                with_peer(&peer.replacen("10.0.0.2/32", "10.0.0.2/32,x", 1)),
                "line 2: invalid allowed ips: \"x\"",
            ),
            (
                with_peer(&peer.replacen("\toff", "\t-1", 1)),
                "line 2: invalid persistent keepalive",
            ),
            (
                with_peer(&format!("(none){}", &peer[44..])),
                "line 2: invalid public key",
            ),
        ];
        for (text, expected) in cases {
            let msg = parse_dump(&text).unwrap_err().to_string();
            assert!(
                msg.contains(expected),
                "{text:?}: got {msg:?}, want {expected:?}"
            );
            assert!(!msg.contains(private) && !msg.contains(psk), "{msg}");
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        for end in 0..=MONITOR.len() {
            if MONITOR.is_char_boundary(end) {
                let _ = parse_dump(&MONITOR[..end]);
            }
        }
        let _ = parse_dump(&"\t".repeat(10_000));
        let _ = parse_dump("é\té\té\té\n");
    }
}
