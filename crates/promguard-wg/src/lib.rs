//! WireGuard files as text: renders a host's `wg0.conf` (wg-quick format)
//! from its plan, parses wg-quick configs back, and parses the output of
//! `wg show <if> dump`. Text in, text out: no processes, no network.
