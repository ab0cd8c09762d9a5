//! Integration tests against a real sshd on 127.0.0.1 (root namespace,
//! loopback only). The recipe is not run here: it would change the root
//! namespace's network configuration.

mod common;
mod local_host;
mod probe;
mod session;
