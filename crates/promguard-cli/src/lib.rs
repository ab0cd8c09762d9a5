//! The workflows behind the `promguard` command.
