//! The command line, as clap types. Parsing does no IO; [`crate::run`]
//! turns these values into work.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Prometheus scraping over WireGuard: one monitor, many nodes, every
/// exporter reachable only through the tunnel.
#[derive(Debug, Parser)]
#[command(name = "promguard", version, about, long_about = None)]
pub struct Args {
    /// Config file (default: ./promguard.toml; without one, the built-in
    /// default deployment on the local provider).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Show what runs on which host (-v), and debug output (-vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented promguard.toml (never overwrites one).
    Init {
        /// Where the hosts come from.
        #[arg(long, value_enum, default_value = "local")]
        provider: ProviderArg,
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Show the hosts and what `up` would change, without changing anything.
    Plan {
        /// Machine-readable output: {"hosts": [...], "changes": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Print a file `up` would install on a host.
    Render {
        /// Host name.
        host: String,
        /// Which file (all when omitted).
        #[arg(value_enum)]
        what: Option<RenderWhat>,
        /// Print private and preshared keys instead of redacting them.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Create missing hosts, converge every host, verify every target is up.
    Up {
        /// Do not ask before destroying hosts removed from the config.
        #[arg(long, short = 'y')]
        yes: bool,
        /// How many hosts to converge at once.
        #[arg(long, default_value = "16")]
        parallel: std::num::NonZeroUsize,
        /// How long to wait for every target to be up, in seconds.
        #[arg(long, default_value_t = 120)]
        verify_timeout: u64,
        /// How long to keep retrying a host's SSH port, in seconds, before
        /// that host counts as unreachable (the other hosts still converge).
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        connect_timeout: u64,
        /// Also write a JSON report (phase times, per-host round trips and
        /// changes) to FILE.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Pin the SSH host key of each existing host (one with an address
        /// in the config) seen for the first time, without asking: only
        /// after checking the fingerprints `up` showed.
        #[arg(long)]
        trust_new_host_keys: bool,
    },
    /// Replace WireGuard keys (all hosts, or the named ones) and switch
    /// both ends of every tunnel in one run.
    Rotate {
        /// Also replace the preshared keys of the rotated hosts' pairs.
        #[arg(long)]
        psk: bool,
        /// Hosts whose keys are replaced (default: every host).
        hosts: Vec<String>,
        /// How many hosts to converge at once.
        #[arg(long, default_value = "16")]
        parallel: std::num::NonZeroUsize,
        /// How long to wait for every target to be up, in seconds.
        #[arg(long, default_value_t = 120)]
        verify_timeout: u64,
        /// How long to keep retrying a host's SSH port, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        connect_timeout: u64,
    },
    /// Show tunnels (handshakes, transfer) and target health.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// How many hosts to read at once (one SSH connection each).
        #[arg(long, default_value = "16")]
        parallel: std::num::NonZeroUsize,
    },
    /// Forward a local port to the monitor's Prometheus until Ctrl-C.
    Tunnel {
        /// Local port (on 127.0.0.1); 9090, 9093 with --alertmanager, 8428
        /// with --storage.
        #[arg(long)]
        port: Option<u16>,
        /// Forward to the monitor's Alertmanager instead of Prometheus.
        #[arg(long, conflicts_with = "storage")]
        alertmanager: bool,
        /// Forward to the storage host's VictoriaMetrics (its Prometheus
        /// query API and UI at /vmui) instead.
        #[arg(long, conflicts_with = "monitor")]
        storage: bool,
        /// The monitor to reach, when there are several (the first by
        /// default).
        #[arg(long, value_name = "NAME")]
        monitor: Option<String>,
    },
    /// Open a shell or run a command on a host, host key verified.
    Ssh {
        /// Host name.
        host: String,
        /// Command to run (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Destroy every host of the deployment.
    Down {
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Find the deployment's hosts through the provider (tags on a
        /// cloud, namespaces on the local provider) instead of the state
        /// file: for a deployment whose state file is lost.
        #[arg(long)]
        discover: bool,
    },
    /// Internal: the ProxyCommand `promguard ssh` gives to ssh; pipes stdin
    /// and stdout to a host's SSH port from where hosts are reachable.
    #[command(hide = true)]
    Proxy {
        /// Host name.
        host: String,
    },
}

impl Command {
    /// Whether the command only reads and prints (it changes no host and
    /// no file), so a closed stdout may simply end it.
    pub fn only_prints(&self) -> bool {
        matches!(
            self,
            Command::Plan { .. } | Command::Render { .. } | Command::Status { .. }
        )
    }
}

/// `--provider` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProviderArg {
    /// Network namespaces on this machine.
    Local,
    /// DigitalOcean droplets.
    Digitalocean,
}

/// Which file `render` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RenderWhat {
    /// /etc/wireguard/wg0.conf
    Wg,
    /// /etc/prometheus/prometheus.yml (monitor only)
    Prometheus,
    /// The file_sd targets files (monitor only)
    Targets,
    /// The nftables ruleset
    Nftables,
    /// What each exporter PromGuard installs from a Debian package gets
    /// (its environment file and unit drop-in, secrets redacted)
    Exporters,
}
