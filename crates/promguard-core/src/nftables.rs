//! The nftables ruleset of one host, in PromGuard's own table
//! (`inet promguard`). Text only; no IO.
//!
//! The ruleset is one `nft -f` transaction: it declares the table (so the
//! delete that follows also works on the first load), deletes it, and
//! defines it again from scratch. Loading it twice gives the same rules,
//! a failed load changes nothing, and no other table is ever touched.
//!
//! # Every path to an exporter port
//!
//! A connection to an exporter port reaches the host's own exporter
//! through the `input` hook, or, when a port is published with DNAT (a
//! container run with `-p 9187:9187`), is rewritten in `prerouting` and
//! goes through the `forward` hook to the container. Both must admit only
//! the scraper's WireGuard address on the WireGuard interface:
//!
//! - `input` (policy drop) accepts exporter ports only from there, as it
//!   matches the port a connection is delivered to, also after a redirect.
//! - `forward` (policy accept: the host's own forwarding keeps working)
//!   sends every connection this host DNAT'ed from an exporter port (`ct
//!   status dnat`, `ct original proto-dst`: the port before translation)
//!   to `published_exporter_ports`, which only drops: what is not from
//!   the scraper's address and family on the WireGuard interface. `input`
//!   does the same after its loopback rule, for a connection redirected
//!   from an exporter port to another local port. A drop is final in any
//!   base chain, whatever another table (Docker's) accepts and whatever
//!   the chains' order, while an accept here would not be; so only drops
//!   are added where other tables decide.
//!
//! Filtering in `prerouting`, before DNAT, would look simpler but is not:
//! before the routing decision a connection to this host's port 9100
//! cannot be told from one routed through it to another machine's port
//! 9100 (a container scraping elsewhere), except by `fib daddr type
//! local`, which misses DNAT rules matching other destinations; and it
//! never sees a port redirected *to* an exporter port. The original tuple
//! of the connection names exactly what this host translated, in the
//! hooks that know where it goes. The check is per packet of the original
//! direction, so replies from a container pass and a stranger's connection
//! open before the load is cut too.
//!
//! # Probed ports
//!
//! A port a blackbox exporter on the monitor probes
//! ([`FirewallPolicy::probe_ports`]) is one of the host's own services (a
//! web server), not an exporter: on a host PromGuard created, `input`
//! accepts it from the scraper's address on the WireGuard interface like
//! an exporter port (else the policy would drop the probe), but it is no
//! part of `published_exporter_ports`, since nothing about it is PromGuard's
//! to close to others. On a host the user runs, the table says nothing
//! about it: the host's own firewall decides (the recipe adds a ufw rule
//! for the probe where ufw is active).
//!
//! # Alertmanager's cluster
//!
//! A monitor with replicas accepts Alertmanager's API
//! ([`ALERTMANAGER_API_PORT`], TCP) and gossip
//! ([`ALERTMANAGER_CLUSTER_PORT`], TCP and UDP) from the other replicas'
//! WireGuard addresses ([`FirewallPolicy::gossip_peers`]) on the
//! WireGuard interface, and from nobody else: Alertmanager listens on
//! every address there (its WireGuard address may not exist yet when it
//! starts at boot), so the policy drop is what keeps both ports closed
//! to the world.
//!
//! # ICMP
//!
//! Accepted are the types ufw accepts by default (its `before.rules` and
//! `before6.rules`): destination-unreachable, time-exceeded,
//! parameter-problem and echo-request, for IPv6 also packet-too-big,
//! neighbour discovery (router and neighbour solicitations and adverts,
//! only with hop limit 255, as RFC 4861 requires) and MLD (hop limit 1),
//! which neighbour discovery needs on switches that snoop multicast. ufw
//! also wants MLD from a link-local source; the kernel checks that itself
//! (RFC 3810), so the rule names no address. Replies to our own pings and
//! errors about our own connections are `ct state established,related`.
//! ufw's rarer types (inverse neighbour discovery, SEND, multicast router
//! discovery, Mobile IPv6), which Linux does not act on, and its
//! echo-reply for multicast pings are left to the policy.

use std::fmt::Write;
use std::net::IpAddr;

use crate::alerts::{ALERTMANAGER_API_PORT, ALERTMANAGER_CLUSTER_PORT};
use crate::plan::{FirewallPolicy, FirewallScope};

/// Where the ruleset is installed on a host.
pub const RULESET_PATH: &str = "/etc/promguard/nftables.conf";

/// The nftables family and name of PromGuard's table.
pub const TABLE: &str = "inet promguard";

/// The chain that drops connections to exporter ports not from the scraper.
const SCRAPER_ONLY_CHAIN: &str = "published_exporter_ports";

/// Renders the ruleset for `nft -f`.
///
/// Inbound, it accepts replies to our own connections, loopback, the ICMP
/// and ICMPv6 types of the module doc, SSH and WireGuard from anyone, and
/// the exporter and probed ports only from the scraper's WireGuard address
/// on the WireGuard interface, Alertmanager's API and gossip ports only from
/// the other replicas there (on a monitor with replicas); the chain's policy
/// drops everything else.
/// Forwarded, it drops connections DNAT'ed from an exporter port unless
/// they come from the scraper on the WireGuard interface, and nothing
/// else.
pub fn render(policy: &FirewallPolicy) -> String {
    let mut out = String::from(
        "#!/usr/sbin/nft -f\n\
         # Managed by PromGuard: changes here are overwritten by the next `promguard up`.\n\
         # Replaces only the table inet promguard, atomically; other tables are left alone.\n\n",
    );
    let (family, nfproto) = match policy
        .scrapers
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    {
        IpAddr::V4(_) => ("ip", "ipv4"),
        IpAddr::V6(_) => ("ip6", "ipv6"),
    };
    let ports: Vec<String> = policy
        .exporter_ports
        .iter()
        .map(|p| p.to_string())
        .collect();
    let ports = ports.join(", ");
    // Every connection whose port before DNAT is an exporter port, checked
    // in each packet of its original direction (replies pass).
    let published = format!(
        "\t\tct direction original ct status dnat meta l4proto tcp \
         ct original proto-dst {{ {ports} }} jump {SCRAPER_ONLY_CHAIN}\n"
    );
    let has_exporters = !policy.exporter_ports.is_empty();

    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(out, "table {TABLE}");
    let _ = writeln!(out, "delete table {TABLE}\n");
    let _ = writeln!(out, "table {TABLE} {{");
    if policy.scope == FirewallScope::ExporterPorts {
        render_guest(&mut out, policy, &ports, &published, family, nfproto);
        return out;
    }
    out.push_str(
        "\tchain input {\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tiif \"lo\" accept\n",
    );
    if has_exporters {
        out.push_str(&published);
    }
    // In numeric order, as `nft list` shows them.
    out.push_str(
        "\t\ticmp type { destination-unreachable, echo-request, time-exceeded, parameter-problem } accept\n\
         \t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request } accept\n\
         \t\ticmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept\n\
         \t\ticmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } ip6 hoplimit 1 accept\n",
    );
    let _ = writeln!(out, "\t\ttcp dport {} accept", policy.ssh_port);
    let _ = writeln!(out, "\t\tudp dport {} accept", policy.wireguard_port);
    if has_exporters {
        // iifname (not iif) because the WireGuard interface may not exist
        // yet when the ruleset is loaded.
        let _ = writeln!(
            out,
            "\t\tiifname \"{}\" {family} saddr {} tcp dport {{ {ports} }} accept",
            policy.interface,
            scrapers(policy),
        );
    }
    if !policy.probe_ports.is_empty() {
        // The prober reaches the host's own services; the rest of the
        // world does not (policy drop), as before.
        let probed: Vec<String> = policy.probe_ports.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            out,
            "\t\tiifname \"{}\" {family} saddr {} tcp dport {{ {} }} accept",
            policy.interface,
            scrapers(policy),
            probed.join(", "),
        );
    }
    if !policy.gossip_peers.is_empty() {
        // The other replicas: their Prometheus servers send alerts to the
        // API, their Alertmanagers gossip (memberlist speaks TCP and UDP
        // on one port).
        let peers = address_set(&policy.gossip_peers);
        let _ = writeln!(
            out,
            "\t\tiifname \"{}\" {family} saddr {peers} tcp dport {{ {ALERTMANAGER_API_PORT}, {ALERTMANAGER_CLUSTER_PORT} }} accept",
            policy.interface,
        );
        let _ = writeln!(
            out,
            "\t\tiifname \"{}\" {family} saddr {peers} udp dport {ALERTMANAGER_CLUSTER_PORT} accept",
            policy.interface,
        );
    }
    out.push_str("\t}\n");
    if has_exporters {
        out.push_str(
            "\n\tchain forward {\n\
             \t\ttype filter hook forward priority filter; policy accept;\n",
        );
        out.push_str(&published);
        out.push_str("\t}\n");
        // Only drops: the chain returns what comes from the scraper.
        scraper_only_chain(&mut out, policy, family, nfproto);
    }
    out.push_str("}\n");
    out
}

/// The chain that drops what is not from the scraper's address and family
/// on the WireGuard interface, and returns the rest.
fn scraper_only_chain(out: &mut String, policy: &FirewallPolicy, family: &str, nfproto: &str) {
    let _ = writeln!(out, "\n\tchain {SCRAPER_ONLY_CHAIN} {{");
    let _ = writeln!(out, "\t\tiifname != \"{}\" drop", policy.interface);
    let _ = writeln!(out, "\t\tmeta nfproto != {nfproto} drop");
    let _ = writeln!(out, "\t\t{family} saddr != {} drop", scrapers(policy));
    out.push_str("\t}\n");
}

/// The scrapers' addresses as nft writes them: one address alone, several
/// as an anonymous set.
fn scrapers(policy: &FirewallPolicy) -> String {
    address_set(&policy.scrapers)
}

/// Addresses as nft writes them: one alone, several as an anonymous set.
fn address_set(addresses: &[IpAddr]) -> String {
    match addresses {
        [one] => one.to_string(),
        many => {
            let list: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("{{ {} }}", list.join(", "))
        }
    }
}

/// The table of a host PromGuard did not create: both chains accept by
/// policy and only drop connections to exporter ports that are not from
/// the scraper on the WireGuard interface, so that the host's own rules
/// (ufw, its own tables) keep deciding everything else, SSH, the
/// WireGuard port and probed ports included. The host's own connections
/// over loopback are its business too.
fn render_guest(
    out: &mut String,
    policy: &FirewallPolicy,
    ports: &str,
    published: &str,
    family: &str,
    nfproto: &str,
) {
    out.push_str(
        "\tchain input {\n\
         \t\ttype filter hook input priority filter; policy accept;\n",
    );
    if !policy.exporter_ports.is_empty() {
        out.push_str(published);
        let _ = writeln!(
            out,
            "\t\tiif != \"lo\" tcp dport {{ {ports} }} jump {SCRAPER_ONLY_CHAIN}"
        );
    }
    out.push_str("\t}\n");
    if !policy.exporter_ports.is_empty() {
        out.push_str(
            "\n\tchain forward {\n\
             \t\ttype filter hook forward priority filter; policy accept;\n",
        );
        out.push_str(published);
        out.push_str("\t}\n");
        scraper_only_chain(out, policy, family, nfproto);
    }
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use expect_test::expect_file;

    use super::*;
    use crate::config::Config;
    use crate::planner;

    fn policies(config_toml: &str) -> Vec<FirewallPolicy> {
        let config = Config::from_toml(config_toml, Path::new("t.toml")).unwrap();
        planner::plan(&config, None)
            .unwrap()
            .hosts
            .into_iter()
            .map(|h| h.firewall)
            .collect()
    }

    #[test]
    fn snapshot_default_node() {
        expect_file!["../tests/data/nftables-node.nft"].assert_eq(&render(&policies("")[1]));
    }

    #[test]
    fn snapshot_ipv6_with_extra_exporter() {
        let p = policies(
            "[deployment]\nsubnet = \"fd00:10::/64\"\n[ssh]\nport = 2222\n\
             [wireguard]\ninterface = \"wg7\"\nport = 51000\n\
             [nodes]\nexporters = [{ name = \"postgres\", port = 9187 }]\n",
        );
        expect_file!["../tests/data/nftables-node-ipv6.nft"].assert_eq(&render(&p[1]));
    }

    #[test]
    fn only_the_scraper_reaches_exporters() {
        let monitor = &policies("")[0];
        let text = render(monitor);
        assert!(text.contains("iifname \"wg0\" ip saddr 10.0.0.1 tcp dport { 9100 } accept"));
        assert!(text.contains("policy drop;"));
        // Only our table is named; no flush of the whole ruleset.
        assert!(!text.contains("flush ruleset"));
        for line in text
            .lines()
            .filter(|l| l.starts_with("table") || l.starts_with("delete"))
        {
            assert!(line.contains("inet promguard"), "{line}");
        }
    }

    #[test]
    fn no_exporter_rule_without_ports() {
        let mut policy = policies("")[1].clone();
        policy.exporter_ports.clear();
        assert!(!render(&policy).contains("saddr"));
    }

    #[test]
    fn forward_drops_dnat_from_exporter_ports_unless_from_the_scraper() {
        let v4 = render(&policies("")[1]);
        let published = "ct direction original ct status dnat meta l4proto tcp \
                         ct original proto-dst { 9100 } jump published_exporter_ports";
        let forward = v4.split("chain forward {").nth(1).expect("a forward chain");
        assert!(forward.contains("policy accept;"), "{v4}");
        assert!(forward.contains(published), "{v4}");
        assert!(v4.contains(&format!("iif \"lo\" accept\n\t\t{published}")));
        let check = v4.split("chain published_exporter_ports {").nth(1).unwrap();
        assert_eq!(
            check
                .lines()
                .map(str::trim)
                .take_while(|l| *l != "}")
                .collect::<Vec<_>>(),
            [
                "",
                "iifname != \"wg0\" drop",
                "meta nfproto != ipv4 drop",
                "ip saddr != 10.0.0.1 drop"
            ]
        );
        // No accept outside the input chain.
        assert!(!forward.contains("accept\n"), "{v4}");

        let v6 = render(&policies("[deployment]\nsubnet = \"fd00:10::/64\"\n")[1]);
        assert!(v6.contains("meta nfproto != ipv6 drop\n\t\tip6 saddr != fd00:10::1 drop"));

        let mut policy = policies("")[1].clone();
        policy.exporter_ports.clear();
        assert!(!render(&policy).contains("forward"));
    }

    /// A blackbox exporter on the monitor probing two ports of the first
    /// node, which also runs a postgres exporter, and a port of an existing
    /// node.
    const PROBES: &str = r#"
[monitor]
exporters = [{ name = "blackbox", package = "prometheus-blackbox-exporter", probes = [{ host = "web-1", port = 443 }, { host = "web-1", port = 80 }, { host = "web-1", port = 80, path = "/x" }, { host = "guest-1", port = 8080 }] }]
[[nodes.host]]
name = "web-1"
region = "lon1"
exporters = [{ name = "postgres", port = 9187 }]
[[nodes.host]]
name = "guest-1"
address = "192.0.2.7"
"#;

    #[test]
    fn snapshot_probed_node() {
        expect_file!["../tests/data/nftables-node-probed.nft"]
            .assert_eq(&render(&policies(PROBES)[1]));
    }

    #[test]
    fn probed_ports_are_accepted_from_the_scraper_and_never_closed_to_others() {
        let policies = policies(PROBES);
        let web = &policies[1];
        assert_eq!(
            web.probe_ports.iter().map(|p| p.get()).collect::<Vec<_>>(),
            [80, 443]
        );
        let text = render(web);
        let input = text
            .split("chain input {")
            .nth(1)
            .unwrap()
            .split("\n\t}")
            .next()
            .unwrap();
        assert!(
            input.contains("\t\tiifname \"wg0\" ip saddr 10.0.0.1 tcp dport { 9100, 9187 } accept\n\t\tiifname \"wg0\" ip saddr 10.0.0.1 tcp dport { 80, 443 } accept"),
            "{text}"
        );
        // The DNAT checks name the exporter ports only.
        for line in text.lines().filter(|l| l.contains("proto-dst")) {
            assert!(line.contains("{ 9100, 9187 }"), "{line}");
        }
        // A node that is probed and has no exporter ports still lets the
        // prober in, and has no forward chain.
        let mut only_probed = web.clone();
        only_probed.exporter_ports.clear();
        let text = render(&only_probed);
        assert!(text.contains("tcp dport { 80, 443 } accept"), "{text}");
        assert!(
            !text.contains("forward") && !text.contains("published_exporter_ports"),
            "{text}"
        );

        // On a host the user runs the table leaves probed ports alone.
        let guest = &policies[2];
        assert_eq!(guest.scope, FirewallScope::ExporterPorts);
        assert_eq!(guest.probe_ports, [crate::names::Port::new(8080).unwrap()]);
        let mut unprobed = guest.clone();
        unprobed.probe_ports.clear();
        assert_eq!(render(guest), render(&unprobed));
        assert!(!render(guest).contains("8080"));
    }

    #[test]
    fn icmp_accepts_only_what_ufw_accepts() {
        let text = render(&policies("")[1]);
        let icmp: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("icmp"))
            .collect();
        assert_eq!(
            icmp,
            [
                "icmp type { destination-unreachable, echo-request, time-exceeded, parameter-problem } accept",
                "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request } accept",
                "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
                "icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } ip6 hoplimit 1 accept",
            ]
        );
    }
}
