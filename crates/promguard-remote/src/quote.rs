//! Shell quoting and the checks every value passes before it reaches a
//! remote shell.
//!
//! Remote commands are shell text (sshd runs them through the user's
//! shell), so every value interpolated into one is both checked for a
//! conservative alphabet and single-quoted: either defence alone would do,
//! together a mistake in one is caught by the other.

/// Quotes `text` as one POSIX shell word: wrapped in single quotes, each
/// `'` written as `'\''`. The result is safe for any text without NUL bytes
/// (a NUL cannot be part of a command line at all; callers validate that
/// away first).
pub fn shell_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for c in text.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// Checks that `path` is a plain absolute path: starts with `/`, has no
/// empty, `.` or `..` components, no trailing `/`, at most 255 bytes, and
/// only letters, digits and `.`, `_`, `-`, `+`, `@`, `/`.
pub fn check_remote_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("the path must be absolute".into());
    }
    if path.len() > 255 {
        return Err("the path is longer than 255 bytes".into());
    }
    if let Some(bad) = path
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "._-+@/".contains(c)))
    {
        return Err(format!(
            "the path contains {bad:?}; only letters, digits and . _ - + @ / are allowed"
        ));
    }
    let components: Vec<&str> = path[1..].split('/').collect();
    if components
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err("the path has an empty, '.' or '..' component".into());
    }
    Ok(())
}

/// The directory part of a path accepted by [`check_remote_path`].
pub(crate) fn parent_dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Checks a file owner given as `user` or `user:group`: each part starts
/// with a lowercase letter or `_` and continues with lowercase letters,
/// digits, `_` or `-` (the portable user name alphabet), at most 32 bytes.
pub fn check_owner(owner: &str) -> Result<(), String> {
    let mut parts = owner.splitn(2, ':');
    for part in parts.by_ref() {
        let ok = !part.is_empty()
            && part.len() <= 32
            && part
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(format!(
                "owner {owner:?} is not `user` or `user:group` with portable names"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `printf %s <quoted>` through a real shell and returns what it
    /// printed: quoting is right only if the shell hands back the input.
    fn round_trip(text: &str) -> String {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(text)))
            .output()
            .expect("/bin/sh is needed for this test (any POSIX shell)");
        assert!(out.status.success(), "sh failed for {text:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn quoting_survives_hostile_strings() {
        let hostile = [
            "",
            "plain",
            "two words",
            "'",
            "''",
            "it's",
            "'; touch /tmp/promguard-pwned; '",
            "$(touch /tmp/promguard-pwned)",
            "`touch /tmp/promguard-pwned`",
            "${HOME}",
            "a\nb\r\n",
            "\\'\\",
            "\"double\"",
            "*?[a-z]~!#&|<>;(){}",
            "-n",
            "ünïcödé ☃",
        ];
        for text in hostile {
            assert_eq!(round_trip(text), text, "quoting {text:?}");
        }
        assert!(!std::path::Path::new("/tmp/promguard-pwned").exists());
    }

    #[test]
    fn quoted_text_is_one_word() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn paths() {
        for good in [
            "/etc/wireguard/wg0.conf",
            "/etc/prometheus/promguard/node.json",
            "/a",
            "/etc/systemd/system/wg-quick@wg0.service.d/x.conf",
        ] {
            assert_eq!(check_remote_path(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "relative/path",
            "/",
            "/etc/",
            "/etc//passwd",
            "/etc/../shadow",
            "/etc/./x",
            "/tmp/a b",
            "/tmp/$(x)",
            "/tmp/a'b",
            "/tmp/a\nb",
            "/tmp/a\0b",
            "/tmp/*",
        ] {
            assert!(check_remote_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_remote_path(&format!("/{}", "a".repeat(300))).is_err());
        assert_eq!(parent_dir("/etc/wireguard/wg0.conf"), "/etc/wireguard");
        assert_eq!(parent_dir("/a"), "/");
    }

    #[test]
    fn owners() {
        for good in [
            "root",
            "prometheus",
            "prometheus:prometheus",
            "_apt",
            "a-b1",
        ] {
            assert_eq!(check_owner(good), Ok(()), "{good}");
        }
        for bad in [
            "", ":", "root:", "Root", "1abc", "a b", "a;b", "a:b:c", "$(x)",
        ] {
            assert!(check_owner(bad).is_err(), "{bad:?} accepted");
        }
    }
}
