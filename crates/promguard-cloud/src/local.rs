//! The local provider: hosts are namespaces on this machine.
