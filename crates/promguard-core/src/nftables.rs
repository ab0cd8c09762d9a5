//! The nftables ruleset of one host, in PromGuard's own table
//! (`inet promguard`). Text only; no IO.

use crate::plan::FirewallPolicy;

/// Where the ruleset is installed on a host.
pub const RULESET_PATH: &str = "/etc/promguard/nftables.conf";

/// Renders the ruleset for `nft -f`.
pub fn render(_policy: &FirewallPolicy) -> String {
    todo!()
}
