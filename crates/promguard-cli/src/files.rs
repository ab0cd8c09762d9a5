//! Every file PromGuard installs on a host, rendered from its plan.

use std::fmt;

use promguard_core::{nftables, prometheus, HostPlan};
use promguard_wg::Secrets;
use sha2::{Digest, Sha256};

/// Which kind of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The wg-quick config.
    WireGuard,
    /// prometheus.yml.
    Prometheus,
    /// A file_sd targets file.
    Targets,
    /// The nftables ruleset.
    Nftables,
}

/// One rendered file.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// What it is.
    pub kind: FileKind,
    /// Absolute path on the host.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Content.
    pub content: String,
}

impl RenderedFile {
    /// SHA-256 of the content, hex.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.content.as_bytes()))
    }
}

impl fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The content may hold keys.
        f.debug_struct("RenderedFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("bytes", &self.content.len())
            .finish()
    }
}

/// Renders every file of `host`.
pub fn render_host(host: &HostPlan, secrets: Secrets) -> Vec<RenderedFile> {
    let mut files = vec![RenderedFile {
        kind: FileKind::WireGuard,
        path: promguard_wg::config_path(&host.interface.name),
        mode: 0o600,
        content: promguard_wg::render(host, secrets),
    }];
    if let Some(p) = &host.prometheus {
        files.push(RenderedFile {
            kind: FileKind::Prometheus,
            path: prometheus::CONFIG_PATH.to_owned(),
            mode: 0o644,
            content: prometheus::render_config(p),
        });
        for (path, content) in prometheus::render_targets(p) {
            files.push(RenderedFile {
                kind: FileKind::Targets,
                path,
                mode: 0o644,
                content,
            });
        }
    }
    files.push(RenderedFile {
        kind: FileKind::Nftables,
        path: nftables::RULESET_PATH.to_owned(),
        mode: 0o600,
        content: nftables::render(&host.firewall),
    });
    files
}
