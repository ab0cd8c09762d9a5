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

/// `text` quoted for a message, cut to 40 characters: a host's answer is
/// input, and one line of it may be megabytes long.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
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

/// A decimal as `wg` prints it: digits only (no sign), at most `u64::MAX`.
fn number(what: &'static str, line: usize, field: &str) -> Result<u64, ShowError> {
    let digits = !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| field.parse().ok())
        .flatten()
        .ok_or_else(|| ShowError::Line {
            what,
            line,
            reason: format!("{} is no number up to {}", quoted(field), u64::MAX),
        })
}

/// Refuses a peer that one output lists twice: `wg` prints each peer once.
fn once(
    what: &'static str,
    line: usize,
    seen: &mut BTreeMap<PublicKey, usize>,
    key: PublicKey,
) -> Result<(), ShowError> {
    match seen.insert(key, line) {
        Some(first) => Err(ShowError::Line {
            what,
            line,
            reason: format!("peer {key} is listed twice (first on line {first})"),
        }),
        None => Ok(()),
    }
}

/// Joins the outputs of `latest-handshakes`, `transfer` and `endpoints` of
/// one interface into one entry per peer, in the order of `handshakes`.
pub fn parse_activity(
    handshakes: &str,
    transfer: &str,
    endpoints: &str,
) -> Result<Vec<PeerActivity>, ShowError> {
    let mut traffic = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for entry in lines("transfer", transfer, 3) {
        let (line, key, fields) = entry?;
        once("transfer", line, &mut seen, key)?;
        let rx = number("transfer", line, fields[0])?;
        let tx = number("transfer", line, fields[1])?;
        traffic.insert(key.to_string(), (rx, tx));
    }
    let mut reached = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for entry in lines("endpoints", endpoints, 2) {
        let (line, key, fields) = entry?;
        once("endpoints", line, &mut seen, key)?;
        let endpoint = match fields[0] {
            "(none)" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| ShowError::Line {
                what: "endpoints",
                line,
                reason: format!("{} is no address:port", quoted(text)),
            })?),
        };
        reached.insert(key.to_string(), endpoint);
    }
    let mut peers = Vec::new();
    let mut seen = BTreeMap::new();
    for entry in lines("latest-handshakes", handshakes, 2) {
        let (line, key, fields) = entry?;
        once("latest-handshakes", line, &mut seen, key)?;
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

    /// What a hostile or broken host may answer: refused with a message
    /// that names the output and line and stays short.
    #[test]
    fn refuses_hostile_lines_with_a_short_message() {
        let long = "9".repeat(1_000_000);
        let h = |line: &str| (format!("{line}\n"), String::new(), String::new());
        let t = |line: &str| (String::new(), format!("{line}\n"), String::new());
        let e = |line: &str| (String::new(), String::new(), format!("{line}\n"));
        let cases = [
            // Not a number, or not one `wg` prints.
            (h(&format!("{A}\tsoon")), "latest-handshakes` line 1: \"soon\" is no number"),
            (h(&format!("{A}\t-1")), "\"-1\" is no number"),
            (h(&format!("{A}\t+1")), "\"+1\" is no number"),
            (h(&format!("{A}\t 1")), "\" 1\" is no number"),
            (h(&format!("{A}\t1.5")), "\"1.5\" is no number"),
            (h(&format!("{A}\t1e3")), "\"1e3\" is no number"),
            (h(&format!("{A}\t")), "\"\" is no number"),
            (h(&format!("{A}\t18446744073709551616")), "is no number up to 18446744073709551615"),
            (h(&format!("{A}\t{long}")), "is no number"),
            (h(&format!("{A}\t1\0")), "\"1\\0\" is no number"),
            (t(&format!("{A}\t-1\t0")), "transfer` line 1: \"-1\" is no number"),
            (t(&format!("{A}\t0\t18446744073709551616")), "is no number"),
            (t(&format!("{A}\tlots\t0")), "\"lots\" is no number"),
            // Wrong field counts (spaces are no separator).
            (h(A), "expected 2 tab-separated fields, found 1"),
            (h(&format!("{A} 1")), "expected 2 tab-separated fields, found 1"),
            (h(&format!("{A}\t1\t2")), "expected 2 tab-separated fields, found 3"),
            (t(&format!("{A}\t1")), "expected 3 tab-separated fields, found 2"),
            (t(&format!("{A}\t1\t2\t3")), "expected 3 tab-separated fields, found 4"),
            (e(&format!("{A}\t192.0.2.1:1\t(none)")), "expected 2 tab-separated fields, found 3"),
            (h(&format!("\t{long}")), "the first field is no WireGuard public key"),
            (h(&long), "expected 2 tab-separated fields, found 1"),
            // Keys that are not WireGuard public keys.
            (h("garbage\t1"), "no WireGuard public key"),
            (h(&format!("{}\t1", "!".repeat(44))), "no WireGuard public key"),
            (h("AAAA\t1"), "no WireGuard public key"),
            (h(&format!("{}\t1", &A[..43])), "no WireGuard public key"),
            (h(&format!("{A}A\t1")), "no WireGuard public key"),
            (h(&format!("\0{A}\t1")), "no WireGuard public key"),
            (h("$(touch /tmp/promguard-pwned)\t1"), "no WireGuard public key"),
            (t(&format!("{}\t1\t1", "A".repeat(100_000))), "transfer` line 1: the first field"),
            (e("garbage\t192.0.2.1:1"), "endpoints` line 1: the first field"),
            // Endpoints that are no address:port.
            (e(&format!("{A}\tnowhere")), "\"nowhere\" is no address:port"),
            (e(&format!("{A}\t192.0.2.1")), "is no address:port"),
            (e(&format!("{A}\t192.0.2.1:65536")), "is no address:port"),
            (e(&format!("{A}\t192.0.2.1:1\0")), "is no address:port"),
            (e(&format!("{A}\t$(touch /tmp/promguard-pwned):1")), "is no address:port"),
            (e(&format!("{A}\t(none) ")), "is no address:port"),
            (e(&format!("{A}\t{long}")), "is no address:port"),
            // A peer listed twice in one output.
            (
                h(&format!("{A}\t1\n{B}\t0\n{A}\t2")),
                "latest-handshakes` line 3: peer xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg= is listed twice (first on line 1)",
            ),
            (t(&format!("{A}\t1\t1\n{A}\t2\t2")), "transfer` line 2: peer"),
            (e(&format!("{A}\t(none)\n{A}\t192.0.2.1:1")), "endpoints` line 2: peer"),
        ];
        for ((handshakes, transfer, endpoints), expected) in cases {
            let short = |text: &str| text.chars().take(80).collect::<String>();
            let input = format!(
                "{:?} {:?} {:?}",
                short(&handshakes),
                short(&transfer),
                short(&endpoints)
            );
            let err = parse_activity(&handshakes, &transfer, &endpoints)
                .map(|peers| format!("accepted as {peers:?}"))
                .unwrap_or_else(|e| e.to_string());
            assert!(err.contains(expected), "{input}: {err}");
            assert!(err.len() < 200, "{input}: the error echoes too much: {err}");
        }
    }

    /// A peer added or removed between the three `wg show` commands is in
    /// some outputs only: no error, and nothing made up for it.
    #[test]
    fn a_peer_missing_from_some_outputs_is_no_error() {
        let peers = parse_activity(
            &format!("{A}\t1700000000\n"),
            &format!("{B}\t5\t6\n"),
            &format!("{B}\t192.0.2.1:51820\n"),
        )
        .unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].public_key.to_string(), A);
        assert_eq!((peers[0].rx_bytes, peers[0].tx_bytes), (0, 0));
        assert_eq!(peers[0].endpoint, None);
        // The largest numbers `wg` can print are read, not refused.
        let max = u64::MAX;
        let peers = parse_activity(
            &format!("{A}\t{max}\n"),
            &format!("{A}\t{max}\t{max}\n"),
            &format!("{A}\t[2001:db8::1]:65535\n"),
        )
        .unwrap();
        assert_eq!(peers[0].latest_handshake, Some(max));
        assert_eq!((peers[0].rx_bytes, peers[0].tx_bytes), (max, max));
        assert_eq!(
            peers[0].endpoint,
            Some("[2001:db8::1]:65535".parse().unwrap())
        );
    }
}
