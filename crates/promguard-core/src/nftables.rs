//! The nftables ruleset of one host, in PromGuard's own table
//! (`inet promguard`). Text only; no IO.
//!
//! The ruleset is one `nft -f` transaction: it declares the table (so the
//! delete that follows also works on the first load), deletes it, and
//! defines it again from scratch. Loading it twice gives the same rules,
//! a failed load changes nothing, and no other table is ever touched.

use std::fmt::Write;
use std::net::IpAddr;

use crate::plan::FirewallPolicy;

/// Where the ruleset is installed on a host.
pub const RULESET_PATH: &str = "/etc/promguard/nftables.conf";

/// The nftables family and name of PromGuard's table.
pub const TABLE: &str = "inet promguard";

/// Renders the ruleset for `nft -f`.
///
/// Inbound, it accepts replies to our own connections, loopback, ICMP and
/// ICMPv6 (IPv6 needs neighbour discovery), SSH and WireGuard from anyone,
/// and the exporter ports only from the scraper's WireGuard address on the
/// WireGuard interface. The chain's policy drops everything else.
pub fn render(policy: &FirewallPolicy) -> String {
    let mut out = String::from(
        "#!/usr/sbin/nft -f\n\
         # Managed by PromGuard: changes here are overwritten by the next `promguard up`.\n\
         # Replaces only the table inet promguard, atomically; other tables are left alone.\n\n",
    );
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(out, "table {TABLE}");
    let _ = writeln!(out, "delete table {TABLE}\n");
    let _ = writeln!(out, "table {TABLE} {{");
    out.push_str(
        "\tchain input {\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tiif \"lo\" accept\n\
         \t\tmeta l4proto icmp accept\n\
         \t\tmeta l4proto ipv6-icmp accept\n",
    );
    let _ = writeln!(out, "\t\ttcp dport {} accept", policy.ssh_port);
    let _ = writeln!(out, "\t\tudp dport {} accept", policy.wireguard_port);
    if !policy.exporter_ports.is_empty() {
        let family = match policy.scraper {
            IpAddr::V4(_) => "ip",
            IpAddr::V6(_) => "ip6",
        };
        let ports: Vec<String> = policy
            .exporter_ports
            .iter()
            .map(|p| p.to_string())
            .collect();
        // iifname (not iif) because the WireGuard interface may not exist
        // yet when the ruleset is loaded.
        let _ = writeln!(
            out,
            "\t\tiifname \"{}\" {family} saddr {} tcp dport {{ {} }} accept",
            policy.interface,
            policy.scraper,
            ports.join(", ")
        );
    }
    out.push_str("\t}\n}\n");
    out
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
}
