//! The `promguard` binary.
fn main() {}
