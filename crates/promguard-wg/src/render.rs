//! Rendering a host's wg-quick config.

use std::fmt::Write;

use promguard_core::HostPlan;

use crate::wgquick::WgQuickConfig;

/// Whether rendered text carries the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// The real private and preshared keys: for the file on the host itself.
    Include,
    /// [`REDACTED`] in place of every secret: for showing the file to a
    /// user (`promguard plan`, diffs, logs). Such text is not a valid config.
    Redact,
}

/// What stands in for a secret in a [`Secrets::Redact`] rendering.
pub const REDACTED: &str = "<redacted>";

/// The comment every rendered config starts with.
pub const HEADER: &str = "\
# Managed by PromGuard: changes here are overwritten by the next `promguard up`.
# This file holds this host's WireGuard private key: keep it mode 0600.
";

/// Renders `host`'s wg-quick config (`/etc/wireguard/<if>.conf`).
///
/// The interface address is a single-host prefix (/32 or /128) so that a
/// node has no route to other nodes; every peer is preceded by a comment
/// with its host name. The output depends only on the plan, whose peers are
/// sorted, so rendering twice gives the same bytes.
pub fn render(host: &HostPlan, secrets: Secrets) -> String {
    render_parsed(&WgQuickConfig::from_host(host), secrets)
}

/// Renders any [`WgQuickConfig`] in the same layout as [`render`], so a
/// parsed PromGuard file renders back to the same text.
pub fn render_parsed(config: &WgQuickConfig, secrets: Secrets) -> String {
    let secret = |text: String| match secrets {
        Secrets::Include => text,
        Secrets::Redact => REDACTED.to_owned(),
    };
    let list = |items: &[ipnetwork::IpNetwork]| {
        items
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };

    let mut out = String::from(HEADER);
    // Writing to a String cannot fail; the results are ignored on purpose.
    let i = &config.interface;
    out.push_str("\n[Interface]\n");
    if !i.addresses.is_empty() {
        let _ = writeln!(out, "Address = {}", list(&i.addresses));
    }
    if let Some(port) = i.listen_port {
        let _ = writeln!(out, "ListenPort = {port}");
    }
    let _ = writeln!(
        out,
        "PrivateKey = {}",
        secret(i.private_key.expose_base64())
    );

    for p in &config.peers {
        out.push('\n');
        if let Some(name) = &p.name {
            let _ = writeln!(out, "# {name}");
        }
        out.push_str("[Peer]\n");
        let _ = writeln!(out, "PublicKey = {}", p.public_key);
        if let Some(psk) = &p.preshared_key {
            let _ = writeln!(out, "PresharedKey = {}", secret(psk.expose_base64()));
        }
        let _ = writeln!(out, "AllowedIPs = {}", list(&p.allowed_ips));
        if let Some(endpoint) = p.endpoint {
            let _ = writeln!(out, "Endpoint = {endpoint}");
        }
        if let Some(secs) = p.persistent_keepalive {
            let _ = writeln!(out, "PersistentKeepalive = {secs}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::path::Path;

    use expect_test::expect_file;
    use ipnetwork::IpNetwork;
    use promguard_core::config::Config;
    use promguard_core::plan::host_network;
    use promguard_core::{planner, Plan, PresharedKey, PrivateKey, Role};

    use super::*;
    use crate::parse;

    /// Private keys made once with `wg genkey`, so snapshots are stable.
    /// They protect nothing.
    const FIXED_KEYS: [&str; 4] = [
        "yEOlZxlaL8TVzXJprSy3iSnFZd5u1Wpeh3Nqi8tFvXc=",
        "MLcLcloqZm2Y7ts+zH55su0go98xaWItV7dYHrIfo2U=",
        "WKRYMbFTVoF7WYKg5Cgrp/NK2PIjnqfdeEnZWmglmm0=",
        "YLzeQEVeM7wkARxlE84KrU+N4iW3cPVEjgkPqO9tMWA=",
    ];
    /// Preshared keys made with `wg genpsk`.
    const FIXED_PSKS: [&str; 3] = [
        "mfA/fpO4TeHkKirpHpBA+IgoKt+DHcC5xmRdFUfygsM=",
        "rjvob/edJ+buXxk295RXDuzL4S0qXb77J+gHVGl7Xk4=",
        "R2mKI5IuIL6ZDURy3JfGzMcn9hr1j5Up5e7i2xfMMTM=",
    ];

    /// Plans `config_toml` (4 hosts) with fixed keys and public addresses
    /// 198.18.0.10, .11, ... (2001:db8::10, ... for an IPv6 subnet) so that
    /// the output is the same on every run.
    fn fixed_plan(config_toml: &str) -> Plan {
        let config = Config::from_toml(config_toml, Path::new("t.toml")).unwrap();
        let mut state = planner::plan(&config, None).unwrap().next_state;
        for (i, record) in state.hosts.values_mut().enumerate() {
            record.private_key = PrivateKey::from_base64(FIXED_KEYS[i]).unwrap();
            record.public_key = record.private_key.public_key();
            record.public_address = Some(match config.subnet {
                IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + i as u8)),
                IpNetwork::V6(_) => {
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + i as u16))
                }
            });
            record.created = true;
        }
        for (i, pair) in state.preshared_keys.iter_mut().enumerate() {
            pair.key = PresharedKey::from_base64(FIXED_PSKS[i]).unwrap();
        }
        planner::plan(&config, Some(&state)).unwrap()
    }

    #[test]
    fn snapshot_monitor_and_node() {
        let plan = fixed_plan("");
        expect_file!["../tests/data/monitor.conf"]
            .assert_eq(&render(plan.monitor(), Secrets::Include));
        expect_file!["../tests/data/node-1.conf"]
            .assert_eq(&render(&plan.hosts[1], Secrets::Include));
        expect_file!["../tests/data/monitor-redacted.conf"]
            .assert_eq(&render(plan.monitor(), Secrets::Redact));
    }

    #[test]
    fn snapshot_ipv6_node() {
        let plan = fixed_plan("[deployment]\nsubnet = \"fd00:10::/64\"\npreshared_keys = false\n");
        expect_file!["../tests/data/node-1-ipv6.conf"]
            .assert_eq(&render(&plan.hosts[1], Secrets::Include));
    }

    #[test]
    fn round_trip_gives_the_plan_back() {
        for config in ["", "[deployment]\nsubnet = \"fd00:10::/64\"\n"] {
            let plan = fixed_plan(config);
            for host in &plan.hosts {
                let text = render(host, Secrets::Include);
                let parsed = parse(&text).unwrap();
                assert_eq!(parsed, WgQuickConfig::from_host(host));
                assert_eq!(render_parsed(&parsed, Secrets::Include), text);

                // And field by field against the plan, not only against
                // from_host.
                assert_eq!(
                    parsed.interface.addresses,
                    [host_network(host.interface.address)]
                );
                assert_eq!(
                    parsed.interface.listen_port,
                    Some(host.interface.listen_port)
                );
                assert_eq!(parsed.interface.private_key, host.interface.private_key);
                assert_eq!(parsed.peers.len(), host.peers.len());
                for (got, want) in parsed.peers.iter().zip(&host.peers) {
                    assert_eq!(got.name.as_ref(), Some(&want.name));
                    assert_eq!(got.public_key, want.public_key);
                    assert_eq!(got.preshared_key, want.preshared_key);
                    assert_eq!(got.allowed_ips, [want.allowed_ips()]);
                    let prefix = got.allowed_ips[0].prefix();
                    assert!(prefix == 32 || prefix == 128);
                    assert_eq!(got.endpoint, want.endpoint);
                    assert_eq!(got.persistent_keepalive, want.persistent_keepalive);
                }
            }
        }
    }

    #[test]
    fn redacted_text_holds_no_secret() {
        let plan = fixed_plan("");
        for host in &plan.hosts {
            let text = render(host, Secrets::Redact);
            assert!(!text.contains(&host.interface.private_key.expose_base64()));
            for p in &host.peers {
                let psk = p.preshared_key.as_ref().unwrap();
                assert!(!text.contains(&psk.expose_base64()));
                assert!(text.contains(&p.public_key.to_string()), "public keys stay");
            }
            assert!(text.contains(REDACTED));
        }
    }

    #[test]
    fn nobody_peers_with_itself_and_nodes_only_with_the_monitor() {
        let plan = fixed_plan("");
        for host in &plan.hosts {
            let parsed = parse(&render(host, Secrets::Include)).unwrap();
            let own = host.interface.public_key();
            assert!(
                parsed.peer(&own).is_none(),
                "{} peers with itself",
                host.name
            );
            if host.role == Role::Node {
                assert_eq!(parsed.peers.len(), 1);
                assert_eq!(
                    parsed.peers[0].public_key,
                    plan.monitor().interface.public_key()
                );
            }
        }
    }

    #[test]
    fn rendering_is_deterministic() {
        let plan = fixed_plan("");
        let again = fixed_plan("");
        for (a, b) in plan.hosts.iter().zip(&again.hosts) {
            assert_eq!(render(a, Secrets::Include), render(b, Secrets::Include));
        }
    }
}
