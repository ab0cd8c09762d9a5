//! Parsing what `wg show <if> latest-handshakes`, `transfer` and
//! `endpoints` print: each peer's activity, read without any key material
//! (unlike `wg show <if> dump`, which prints the private and preshared
//! keys).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use promguard_core::PublicKey;

/// What one peer did, as the interface reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerActivity {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Time of the latest handshake in Unix seconds; `None` for never.
    pub latest_handshake: Option<u64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// The peer's current endpoint, `None` while it has none.
    pub endpoint: Option<SocketAddr>,
}

/// Why `wg show` output could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShowError {
    /// A line does not have the fields that output has.
    #[error("`wg show <if> {what}` line {line}: {reason}")]
    Line {
        /// Which output (`latest-handshakes`, `transfer`, `endpoints`).
        what: &'static str,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

fn lines<'a>(
    what: &'static str,
    text: &'a str,
    fields: usize,
) -> impl Iterator<Item = Result<(usize, PublicKey, Vec<&'a str>), ShowError>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(move |(i, line)| {
            let bad = |reason: String| ShowError::Line {
                what,
                line: i + 1,
                reason,
            };
            let parts: Vec<&str> = line.split('\t').collect();
            if parts.len() != fields {
                return Err(bad(format!(
                    "expected {fields} tab-separated fields, found {}",
                    parts.len()
                )));
            }
            let key = PublicKey::from_base64(parts[0])
                .map_err(|_| bad("the first field is no WireGuard public key".into()))?;
            Ok((i + 1, key, parts[1..].to_vec()))
        })
}

fn number(what: &'static str, line: usize, field: &str) -> Result<u64, ShowError> {
    field.parse().map_err(|_| ShowError::Line {
        what,
        line,
        reason: format!("{field:?} is no number"),
    })
}

/// Joins the outputs of `latest-handshakes`, `transfer` and `endpoints` of
/// one interface into one entry per peer, in the order of `handshakes`.
pub fn parse_activity(
    handshakes: &str,
    transfer: &str,
    endpoints: &str,
) -> Result<Vec<PeerActivity>, ShowError> {
    let mut traffic = BTreeMap::new();
    for entry in lines("transfer", transfer, 3) {
        let (line, key, fields) = entry?;
        let rx = number("transfer", line, fields[0])?;
        let tx = number("transfer", line, fields[1])?;
        traffic.insert(key.to_string(), (rx, tx));
    }
    let mut reached = BTreeMap::new();
    for entry in lines("endpoints", endpoints, 2) {
        let (line, key, fields) = entry?;
        let endpoint = match fields[0] {
            "(none)" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| ShowError::Line {
                what: "endpoints",
                line,
                reason: format!("{text:?} is no address:port"),
            })?),
        };
        reached.insert(key.to_string(), endpoint);
    }
    let mut peers = Vec::new();
    for entry in lines("latest-handshakes", handshakes, 2) {
        let (line, key, fields) = entry?;
        let at = number("latest-handshakes", line, fields[0])?;
        let (rx_bytes, tx_bytes) = traffic.get(&key.to_string()).copied().unwrap_or((0, 0));
        let endpoint = reached.get(&key.to_string()).copied().flatten();
        peers.push(PeerActivity {
            public_key: key,
            latest_handshake: (at != 0).then_some(at),
            rx_bytes,
            tx_bytes,
            endpoint,
        });
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const B: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn joins_the_three_outputs_per_peer() {
        let peers = parse_activity(
            &format!("{A}\t1700000000\n{B}\t0\n"),
            &format!("{A}\t100\t200\n{B}\t0\t0\n"),
            &format!("{A}\t192.0.2.1:51820\n{B}\t(none)\n"),
        )
        .unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].latest_handshake, Some(1_700_000_000));
        assert_eq!((peers[0].rx_bytes, peers[0].tx_bytes), (100, 200));
        assert_eq!(peers[0].endpoint, Some("192.0.2.1:51820".parse().unwrap()));
        assert_eq!(peers[1].latest_handshake, None);
        assert_eq!(peers[1].endpoint, None);
    }

    #[test]
    fn refuses_what_is_not_wg_show_output() {
        for (h, t, e) in [
            ("garbage", "", ""),
            (&format!("{A}\tsoon") as &str, "", ""),
            ("", &format!("{A}\t1") as &str, ""),
            ("", "", &format!("{A}\tnowhere") as &str),
        ] {
            assert!(parse_activity(h, t, e).is_err(), "{h:?} {t:?} {e:?}");
        }
    }
}
