//! Panics in real processes: the `promguard` binary reports them through
//! its own hook, and that hook keeps secrets out of the report.
//!
//! No input makes the binary panic with a secret in the message (that
//! would be a bug to fix, not to test), so the proof has two halves:
//! the real binary is made to panic from outside, which shows `main`
//! installs the hook; and this test program re-runs itself as a child
//! that installs the same hook and panics with secrets in its message and
//! its environment, which shows what reaches stderr.

use std::fs::File;
use std::process::{Command, Output};

/// A private key as `wg genkey` prints it.
const KEY: &str = "GBUnE38QCc2QwcWqc8X0MRFloD1YcE4itOSNDeDeGEk=";
/// A personal access token of DigitalOcean's shape.
const TOKEN: &str = "dop_v1_9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021";
/// A token in the environment that has no recognisable shape: only its
/// exact value can find it.
const ENV_TOKEN: &str = "plain-env-token-7Hq2";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `plan` prints to stdout with `println!`, which panics when stdout cannot
/// be written; `/dev/full` fails every write. The panic must come out as
/// promguard's report, not Rust's default `thread 'main' panicked at`.
#[test]
fn the_binary_reports_panics_through_its_hook() {
    let dir = tempfile::tempdir().unwrap();
    let full = File::options()
        .write(true)
        .open("/dev/full")
        .expect("this test needs /dev/full (a Linux character device, 1:7)");
    let out = Command::new(env!("CARGO_BIN_EXE_promguard"))
        .arg("plan")
        .current_dir(dir.path())
        .env_remove("PROMGUARD_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("DIGITALOCEAN_TOKEN", ENV_TOKEN)
        .stdout(full)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(101), "{err}");
    assert!(
        err.starts_with("promguard hit a bug and stopped: failed printing to stdout: ")
            && err.contains(".rs:")
            && err.contains("please report it"),
        "{err}"
    );
    assert!(!err.contains("panicked at"), "the default hook ran: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Run only as the child of [`a_panic_message_never_carries_a_secret`]:
/// installs the binary's hook, then panics with a key, a token and the
/// environment's token in the message.
#[test]
#[ignore = "the child half of a_panic_message_never_carries_a_secret, which runs it"]
#[should_panic]
fn child_panics_with_secrets() {
    promguard_cli::crash::install();
    let env = std::env::var("DIGITALOCEAN_ACCESS_TOKEN").unwrap_or_default();
    let message = format!("key {KEY} for token {TOKEN} with {env} did not parse");
    "x".parse::<u32>().expect(&message);
}

#[test]
fn a_panic_message_never_carries_a_secret() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_panics_with_secrets",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DIGITALOCEAN_ACCESS_TOKEN", ENV_TOKEN)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    let err = stderr(&out);
    // should_panic: the child test passes only if it panicked.
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child did not run or did not panic:\n{}\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    for secret in [KEY, TOKEN, ENV_TOKEN] {
        assert!(!err.contains(secret), "{secret} in the report:\n{err}");
    }
    assert!(
        err.contains(
            "promguard hit a bug and stopped: key <redacted> for token <redacted> with \
             <redacted> did not parse: ParseIntError { kind: InvalidDigit } (at "
        ),
        "{err}"
    );
    assert!(!err.contains("panicked at"), "the default hook ran: {err}");
}

/// With `RUST_BACKTRACE=1` the report ends with a backtrace, still without
/// the secrets.
#[test]
fn a_backtrace_is_added_when_asked_for() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_panics_with_secrets",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DIGITALOCEAN_ACCESS_TOKEN", ENV_TOKEN)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("\nbacktrace:\n"), "{err}");
    assert!(err.contains("child_panics_with_secrets"), "{err}");
    for secret in [KEY, TOKEN, ENV_TOKEN] {
        assert!(!err.contains(secret), "{secret} in the report:\n{err}");
    }
}
