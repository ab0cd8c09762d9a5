//! What the user sees when promguard panics: one short report on stderr,
//! with every secret-looking value in the panic message replaced by
//! `<redacted>`.
//!
//! Key types redact themselves in `Debug`, but a message built with
//! `format!` or `expect` could still carry a private key, a preshared key or
//! a DigitalOcean token, and Rust's default hook prints messages verbatim.
//! [`install`] replaces that hook first thing in `main`.

use std::io::{self, Write};
use std::panic::PanicHookInfo;

/// What every redacted value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Environment variables whose values are DigitalOcean tokens.
pub const TOKEN_ENV: [&str; 2] = ["DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"];

/// Shorter environment values are not redacted: replacing every `abc` in a
/// message would hide the message, and a real token is far longer.
const MIN_ENV_SECRET: usize = 8;

/// Length of a 32-byte key in standard base64 without its `=` padding.
const KEY_CHARS: usize = 43;

/// Prefixes of DigitalOcean tokens: personal access, OAuth, refresh.
const TOKEN_PREFIXES: [&[u8]; 3] = [b"dop_v1_", b"doo_v1_", b"dor_v1_"];

/// Replaces Rust's panic hook with one that prints a short, redacted report
/// to stderr (see [`hook`]). Call it before anything else in `main`.
pub fn install() {
    std::panic::set_hook(hook(io::stderr));
}

/// A panic hook that writes one report per panic to the stream `out`
/// returns:
///
/// `promguard hit a bug and stopped: <message> (at <file>:<line>); please report it ...`
///
/// with the message passed through [`redact`]. When `RUST_BACKTRACE` (or
/// `RUST_LIB_BACKTRACE`) asks for one, a backtrace follows; it holds
/// function names and source locations, never values. Write errors are
/// ignored: a hook has nowhere else to report them.
pub fn hook<W, F>(out: F) -> Box<dyn Fn(&PanicHookInfo<'_>) + Send + Sync + 'static>
where
    W: Write,
    F: Fn() -> W + Send + Sync + 'static,
{
    Box::new(move |info| {
        let message = redact(payload_message(info));
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        let mut out = out();
        let _ = writeln!(
            out,
            "promguard hit a bug and stopped: {message}{at}; please report it with the \
             command you ran and this message"
        );
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            let _ = writeln!(out, "backtrace:\n{backtrace}");
        }
        let _ = out.flush();
    })
}

/// The text of a panic: `panic!("literal")` carries a `&str`, a formatted
/// panic or `expect` a `String`; anything else (`panic_any`) has none.
fn payload_message<'a>(info: &'a PanicHookInfo<'_>) -> &'a str {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

/// Returns `text` with every secret-looking value replaced by
/// [`REDACTED`]:
///
/// - the current values of [`TOKEN_ENV`] (when at least 8 characters, also
///   without surrounding whitespace),
/// - DigitalOcean tokens: `dop_v1_`, `doo_v1_` or `dor_v1_` and the letters
///   and digits after it,
/// - 32-byte keys in standard base64: a whole run of at least 43 base64
///   characters (`A-Z a-z 0-9 + /`) followed by `=` padding. The run's ends
///   are its word boundaries, so a key glued to other base64 characters
///   (`/etc/keys/<key>=`) goes with them.
///
/// Public keys look exactly like private ones, so they are redacted too; so
/// is any longer padded base64 text. A panic report loses little by that,
/// and telling them apart would mean trusting the message.
///
/// It reads only the environment; text without a secret comes back
/// unchanged. [`redact_with`] is the same with the env values passed in.
pub fn redact(text: &str) -> String {
    let env: Vec<String> = TOKEN_ENV
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .collect();
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    redact_with(text, &env)
}

/// [`redact`] with the known secrets (the values of [`TOKEN_ENV`]) given:
/// each one that is at least 8 characters long, and its trimmed form, is
/// replaced wherever it occurs, before the patterns are looked for.
pub fn redact_with(text: &str, known: &[&str]) -> String {
    let mut secrets: Vec<&str> = known
        .iter()
        .flat_map(|s| [*s, s.trim()])
        .filter(|s| s.len() >= MIN_ENV_SECRET)
        .collect();
    // Longest first, so a secret that contains another goes whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(secret) {
            text = text.replace(secret, REDACTED);
        }
    }
    redact_patterns(&text)
}

/// Replaces tokens and base64 keys. Every pattern is ASCII, so match
/// starts and ends are always char boundaries.
fn redact_patterns(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match token_end(bytes, i).or_else(|| key_end(bytes, i)) {
            Some(end) => {
                out.push_str(&text[copied..i]);
                out.push_str(REDACTED);
                copied = end;
                i = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// End of a DigitalOcean token starting at `i`. Any letter or digit after
/// the prefix counts, not only hex: a mistyped token is still a secret.
fn token_end(bytes: &[u8], i: usize) -> Option<usize> {
    let rest = &bytes[i..];
    let prefix = TOKEN_PREFIXES.iter().find(|p| rest.starts_with(p))?;
    let body = rest[prefix.len()..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    Some(i + prefix.len() + body)
}

/// End (after the padding) of a padded base64 run of at least
/// [`KEY_CHARS`] characters starting at `i`, if a run starts there.
fn key_end(bytes: &[u8], i: usize) -> Option<usize> {
    // Only at the start of a run: this keeps the scan linear and the
    // whole run redacted.
    if i > 0 && is_base64(bytes[i - 1]) {
        return None;
    }
    let run = bytes[i..].iter().take_while(|b| is_base64(**b)).count();
    let padding = bytes[i + run..]
        .iter()
        .take(2)
        .take_while(|b| **b == b'=')
        .count();
    (run >= KEY_CHARS && padding > 0).then_some(i + run + padding)
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A private key as WireGuard prints it (`wg genkey`), with a `/`.
    const KEY: &str = "eJ3RCmTVfXMakYOtau8EX2FyjkT/mgLxGlmZyj26aEM=";
    /// A preshared key with `+` and `/`, both base64 characters.
    const PSK: &str = "qBRtQK31C+uDkMfxH8yj70hav3vFlC4c5CRgrTrH/3o=";
    const TOKEN: &str = "dop_v1_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn keys_are_redacted_wherever_they_stand() {
        for (text, expected) in [
            (KEY.to_owned(), REDACTED.to_owned()),
            (
                format!("PrivateKey = {KEY}\nPresharedKey={PSK}"),
                format!("PrivateKey = {REDACTED}\nPresharedKey={REDACTED}"),
            ),
            (
                format!("bad key \"{KEY}\": too short"),
                format!("bad key \"{REDACTED}\": too short"),
            ),
            (format!("({KEY})"), format!("({REDACTED})")),
            (format!("/etc/keys/{KEY}"), REDACTED.to_owned()),
            (format!("é{KEY}é"), format!("é{REDACTED}é")),
        ] {
            assert_eq!(redact_with(&text, &[]), expected, "{text}");
        }
    }

    #[test]
    fn public_keys_and_longer_padded_base64_are_redacted_too() {
        // A public key cannot be told from a private one by its text.
        let public = "vo2edRZ9gR6rRkm0afLs1uMAGL13wnGuu+J+VfSy6B0=";
        assert_eq!(
            redact_with(&format!("peer {public}"), &[]),
            "peer <redacted>"
        );
        let long = format!("{}==", "A".repeat(60));
        assert_eq!(redact_with(&long, &[]), REDACTED);
    }

    #[test]
    fn tokens_are_redacted() {
        assert_eq!(
            redact_with(&format!("Authorization: Bearer {TOKEN}, retrying"), &[]),
            "Authorization: Bearer <redacted>, retrying"
        );
        assert_eq!(
            redact_with("token=doo_v1_abc123XYZ;", &[]),
            "token=<redacted>;"
        );
    }

    #[test]
    fn env_token_values_are_redacted_exactly() {
        let env = "not-a-do-shaped-secret";
        assert_eq!(
            redact_with(&format!("login with {env} failed"), &[env]),
            "login with <redacted> failed"
        );
        // A value read from a file keeps its newline; the trimmed form is
        // what ends up in messages.
        assert_eq!(
            redact_with(&format!("[{env}]"), &[&format!("{env}\n")]),
            "[<redacted>]"
        );
        // Too short, or empty: redacting it would shred the message.
        assert_eq!(redact_with("a short one", &["short", ""]), "a short one");
    }

    #[test]
    fn text_without_a_secret_is_unchanged() {
        for text in [
            "",
            "called `Option::unwrap()` on a `None` value",
            "every host runs node_exporter",
            // A SHA-256 digest in hex and a short base64 value.
            "digest 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "aGVsbG8=",
            // 42 base64 characters and padding: not a 32-byte key.
            "eJ3RCmTVfXMakYOtau8EX2FyjkT/mgLxGlmZyj26aE=",
            "dop_v2_abc is not a DigitalOcean token prefix",
            "ünïcödé → fine",
        ] {
            assert_eq!(redact_with(text, &["DIGITALOCEAN"]), text);
        }
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    /// The hook as `install` sets it, writing to a buffer, on real panics.
    /// The hook is process-wide: panics of other test threads go to the
    /// default hook meanwhile, and the default is back afterwards.
    #[test]
    fn the_hook_reports_real_panics_without_their_secrets() {
        let captured = Captured::default();
        let ours = hook({
            let captured = captured.clone();
            move || captured.clone()
        });
        let previous = std::panic::take_hook();
        let me = std::thread::current().id();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == me {
                ours(info)
            } else {
                previous(info)
            }
        }));
        let key = std::panic::catch_unwind(|| panic!("{}", KEY));
        let line = line!() - 1;
        let key_report = captured.take();
        let token = std::panic::catch_unwind(|| {
            let message = format!("no droplets for token {TOKEN}");
            "droplets".parse::<u32>().expect(&message);
        });
        let token_report = captured.take();
        let _ = std::panic::take_hook();

        assert!(key.is_err() && token.is_err());
        assert!(!key_report.contains(KEY), "{key_report}");
        assert!(
            key_report.starts_with(&format!(
                "promguard hit a bug and stopped: <redacted> (at {}:{line}); please report it",
                file!()
            )),
            "{key_report}"
        );
        assert!(!token_report.contains(TOKEN), "{token_report}");
        assert!(
            token_report.starts_with(
                "promguard hit a bug and stopped: no droplets for token <redacted>: \
                 ParseIntError { kind: InvalidDigit } (at "
            ),
            "{token_report}"
        );
    }
}
