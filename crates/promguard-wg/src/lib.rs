//! The files hosts get, as text: renders a host's `wg0.conf` (wg-quick
//! format) from its plan, parses wg-quick configs back, parses the output of
//! `wg show <if> dump`, and renders the whole set of files a host gets
//! ([`files::host_files`]: WireGuard, firewall, Prometheus), and reads
//! peers' activity from `wg show` without key material ([`parse_activity`]). Text in, text
//! out: no processes, no network.
//!
//! ```
//! use promguard_core::{config::Config, planner};
//! use promguard_wg::{parse, render, Secrets};
//!
//! let plan = planner::plan(&Config::default(), None).unwrap();
//! let monitor = plan.monitor();
//! let text = render(monitor, Secrets::Include);
//! let parsed = parse(&text).unwrap();
//! assert_eq!(parsed.peers.len(), 3);
//! assert_eq!(parsed.interface.private_key, monitor.interface.private_key);
//! // A redacted rendering is safe to print.
//! let shown = render(monitor, Secrets::Redact);
//! assert!(!shown.contains(&monitor.interface.private_key.expose_base64()));
//! ```

mod dump;
pub mod files;
mod render;
mod show;
mod wgquick;

use promguard_core::InterfaceName;

pub use dump::{parse_dump, Dump, DumpError, DumpInterface, DumpPeer};
pub use render::{render, render_parsed, Secrets, HEADER, REDACTED};
pub use show::{parse_activity, PeerActivity, ShowError};
pub use wgquick::{parse, InterfaceSection, ParseError, PeerSection, WgQuickConfig};

/// Where wg-quick looks for interface configs.
pub const CONFIG_DIR: &str = "/etc/wireguard";

/// The path of `interface`'s wg-quick config, e.g. `/etc/wireguard/wg0.conf`.
pub fn config_path(interface: &InterfaceName) -> String {
    format!("{CONFIG_DIR}/{interface}.conf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_is_under_etc_wireguard() {
        let wg0 = InterfaceName::new("wg0").unwrap();
        assert_eq!(config_path(&wg0), "/etc/wireguard/wg0.conf");
    }
}
