//! `cargo xtask tidy` (part of `cargo xtask test`): the architecture's
//! invariants, checked mechanically on the source tree.
//!
//! - Dependencies point one way and stay where they belong: only
//!   promguard-cloud uses reqwest, only promguard-remote ssh2, only
//!   promguard-cli clap, indicatif and anyhow (xtask is no library and may
//!   use anyhow); no library crate depends on promguard-cli, and core on no
//!   other crate of the workspace.
//! - promguard-core does no IO but the state file (`state.rs`) and reading
//!   the config file it parses (`config.rs`): no file, network or process
//!   API anywhere else in it.
//! - Every Rust module of the crates and of xtask opens with a `//!` doc.
//! - No function of a library crate has a `bool` parameter that every call
//!   in the workspace passes as a literal `true` or `false`.
//! - shellcheck accepts every shell file: the scripts hosts run
//!   (`crates/promguard-remote/src/sh/`, `recipe/sh/`), the snapshots of the
//!   generated ones, and `.ci/run`.
//!
//! The checks run on any tree with this layout, so the tests below break
//! each invariant once in a fixture and see it reported.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Crates of the workspace that the checks know, in dependency order.
const CRATES: &[&str] = &[
    "promguard-core",
    "promguard-wg",
    "promguard-cloud",
    "promguard-remote",
    "promguard-cli",
];

/// External crates that only one workspace crate may depend on.
const OWNED: &[(&str, &[&str])] = &[
    ("reqwest", &["promguard-cloud"]),
    ("ssh2", &["promguard-remote"]),
    ("clap", &["promguard-cli"]),
    ("indicatif", &["promguard-cli"]),
    ("anyhow", &["promguard-cli"]),
];

/// Workspace crates each crate may depend on (the one-way flow).
const ALLOWED_INTERNAL: &[(&str, &[&str])] = &[
    ("promguard-core", &[]),
    ("promguard-wg", &["promguard-core"]),
    ("promguard-cloud", &["promguard-core"]),
    ("promguard-remote", &["promguard-core", "promguard-wg"]),
    (
        "promguard-cli",
        &[
            "promguard-core",
            "promguard-wg",
            "promguard-cloud",
            "promguard-remote",
        ],
    ),
];

/// Paths of core's source (relative to its `src`) allowed to do IO.
const CORE_IO_ALLOWED: &[&str] = &["state.rs", "config.rs"];

/// What counts as IO in core's source.
const IO_PATTERNS: &[&str] = &[
    "std::fs",
    "fs::",
    "std::net::Tcp",
    "std::net::Udp",
    "TcpStream",
    "UdpSocket",
    "std::process",
    "Command::new",
    "tokio::",
    "reqwest",
];

/// Checks the tree at `root`; returns every violation, one per line.
pub fn violations(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for krate in CRATES {
        let manifest = root.join("crates").join(krate).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        let value: toml::Value = text
            .parse()
            .with_context(|| format!("{} is not TOML", manifest.display()))?;
        let deps: Vec<String> = value
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        for dep in &deps {
            if let Some((_, owners)) = OWNED.iter().find(|(name, _)| name == dep) {
                if !owners.contains(krate) {
                    found.push(format!(
                        "{krate} depends on {dep}, which only {} may use",
                        owners.join(", ")
                    ));
                }
            }
            if dep.starts_with("promguard-") {
                let allowed = ALLOWED_INTERNAL
                    .iter()
                    .find(|(name, _)| name == krate)
                    .map(|(_, a)| *a)
                    .unwrap_or(&[]);
                if !allowed.contains(&dep.as_str()) {
                    found.push(format!(
                        "{krate} depends on {dep}: dependencies point one way (cli -> remote/cloud/wg -> core)"
                    ));
                }
            }
        }
    }
    let core_src = root.join("crates/promguard-core/src");
    for file in rust_files(&core_src)? {
        let relative = file.strip_prefix(&core_src).unwrap_or(&file);
        if CORE_IO_ALLOWED.iter().any(|a| Path::new(a) == relative) {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if let Some(pattern) = IO_PATTERNS.iter().find(|p| code.contains(*p)) {
                found.push(format!(
                    "{}:{}: promguard-core does IO ({pattern}) outside the state file",
                    file.display(),
                    n + 1
                ));
            }
        }
    }
    let mut dirs: Vec<PathBuf> = CRATES
        .iter()
        .map(|c| root.join("crates").join(c).join("src"))
        .collect();
    dirs.push(root.join("xtask/src"));
    for dir in dirs {
        if !dir.exists() {
            continue;
        }
        for file in rust_files(&dir)? {
            let text = std::fs::read_to_string(&file)?;
            if !text.trim_start().starts_with("//!") {
                found.push(format!(
                    "{}: the module has no `//!` doc saying what it is for",
                    file.display()
                ));
            }
        }
    }
    found.extend(literal_bool_parameters(root)?);
    Ok(found)
}

/// The library crates, whose functions an embedder calls.
const LIBRARIES: &[&str] = &[
    "promguard-core",
    "promguard-wg",
    "promguard-cloud",
    "promguard-remote",
];

/// The text between the parenthesis at `open` and its match.
fn parenthesized(text: &str, open: usize) -> Option<&str> {
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[open + 1..open + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// `text` split at commas outside brackets.
fn top_level_items(text: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                items.push(String::new());
                continue;
            }
            _ => {}
        }
        items.last_mut().expect("never empty").push(c);
    }
    items
        .into_iter()
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty())
        .collect()
}

/// Functions of the library crates with a `bool` parameter that every
/// call in the workspace passes as a literal `true` or `false`: such a
/// parameter is two functions, or an enum, in disguise.
fn literal_bool_parameters(root: &Path) -> Result<Vec<String>> {
    let mut sources = Vec::new();
    for krate in CRATES {
        let dir = root.join("crates").join(krate);
        if dir.exists() {
            sources.extend(rust_files(&dir)?);
        }
    }
    if root.join("xtask/src").exists() {
        sources.extend(rust_files(&root.join("xtask/src"))?);
    }
    let texts: Vec<(PathBuf, String)> = sources
        .into_iter()
        .map(|f| std::fs::read_to_string(&f).map(|t| (f, t)))
        .collect::<std::io::Result<_>>()?;
    let mut found = Vec::new();
    for (file, text) in &texts {
        let library = LIBRARIES
            .iter()
            .any(|l| file.starts_with(root.join("crates").join(l).join("src")));
        if !library {
            continue;
        }
        for (at, _) in text.match_indices("fn ") {
            let rest = &text[at + 3..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let Some(open) = rest.find('(').map(|o| at + 3 + o) else {
                continue;
            };
            if name.is_empty() || text[at + 3 + name.len()..open].contains([';', '{']) {
                continue;
            }
            let Some(params) = parenthesized(text, open) else {
                continue;
            };
            let params = top_level_items(params);
            let receiver = params.first().is_some_and(|p| p.ends_with("self"));
            for (index, param) in params.iter().enumerate() {
                let Some((_, ty)) = param.split_once(':') else {
                    continue;
                };
                if ty.trim() != "bool" {
                    continue;
                }
                let index = index - usize::from(receiver);
                let mut calls = 0;
                let mut literal = 0;
                for (_, other) in &texts {
                    for (call, _) in other.match_indices(&format!("{name}(")) {
                        let before = other[..call].chars().next_back();
                        if before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                            || other[..call].ends_with("fn ")
                        {
                            continue;
                        }
                        let Some(args) = parenthesized(other, call + name.len()) else {
                            continue;
                        };
                        let args = top_level_items(args);
                        calls += 1;
                        if args.get(index).is_some_and(|a| a == "true" || a == "false") {
                            literal += 1;
                        }
                    }
                }
                if calls > 0 && calls == literal {
                    let line = text[..at].lines().count() + 1;
                    found.push(format!(
                        "{}:{line}: every call of {name} passes its bool parameter `{param}` as a literal; take an enum, or make two functions",
                        file.display()
                    ));
                }
            }
        }
    }
    Ok(found)
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    files_ending(dir, "rs")
}

/// Every file named `*.<extension>` under `dir` (build output excluded),
/// sorted.
fn files_ending(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == extension) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Every shell file of the tree: `.sh` files under `crates/` (the scripts
/// hosts run and the snapshots of the generated ones) and `xtask/` (what
/// the end-to-end tests run on their hosts), and `.ci/run`.
fn shell_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = files_ending(&root.join("crates"), "sh")?;
    let xtask = root.join("xtask");
    if xtask.is_dir() {
        files.extend(files_ending(&xtask, "sh")?);
    }
    files.push(root.join(".ci/run"));
    Ok(files)
}

/// Runs shellcheck (warnings and errors) on every shell file of the tree.
pub fn shellcheck(root: &Path) -> Result<()> {
    let files = shell_files(root)?;
    let out = std::process::Command::new("shellcheck")
        .args(["--shell=bash", "--severity=warning"])
        .args(&files)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "shellcheck is not installed; `cargo xtask deps` installs it (apt-get install shellcheck)"
            ),
            _ => anyhow::anyhow!("cannot run shellcheck: {e}"),
        })?;
    if !out.status.success() {
        bail!(
            "shellcheck rejects shell that runs on hosts:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    eprintln!("xtask tidy: shellcheck accepts {} shell files", files.len());
    Ok(())
}

/// Fails with every violation of the tree at `root`.
pub fn run(root: &Path) -> Result<()> {
    let found = violations(root)?;
    if found.is_empty() {
        eprintln!("xtask tidy: the architecture's invariants hold");
        return shellcheck(root);
    }
    let mut text = String::new();
    for v in &found {
        let _ = writeln!(text, "  {v}");
    }
    bail!("the architecture's invariants are broken:\n{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal tree with this workspace's layout that keeps every rule.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (krate, deps) in ALLOWED_INTERNAL {
            let src = dir.path().join("crates").join(krate).join("src");
            std::fs::create_dir_all(&src).unwrap();
            let mut manifest = format!("[package]\nname = \"{krate}\"\n\n[dependencies]\n");
            for dep in *deps {
                manifest.push_str(&format!("{dep}.workspace = true\n"));
            }
            std::fs::write(src.join("../Cargo.toml"), manifest).unwrap();
            std::fs::write(src.join("lib.rs"), "//! A crate.\n").unwrap();
        }
        std::fs::write(
            dir.path().join("crates/promguard-core/src/state.rs"),
            "//! The state file.\nfn save() { std::fs::write(\"x\", \"y\").unwrap() }\n",
        )
        .unwrap();
        dir
    }

    fn append(path: &Path, text: &str) {
        let mut old = std::fs::read_to_string(path).unwrap();
        old.push_str(text);
        std::fs::write(path, old).unwrap();
    }

    #[test]
    fn a_tree_that_keeps_the_rules_passes() {
        let tree = fixture();
        assert_eq!(violations(tree.path()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn each_broken_invariant_is_reported() {
        let tree = fixture();
        let root = tree.path();
        append(
            &root.join("crates/promguard-core/Cargo.toml"),
            "reqwest.workspace = true\npromguard-cli.workspace = true\n",
        );
        append(
            &root.join("crates/promguard-remote/Cargo.toml"),
            "clap.workspace = true\n",
        );
        append(
            &root.join("crates/promguard-core/src/lib.rs"),
            "fn peek() { let _ = std::fs::read(\"/etc/passwd\"); }\n",
        );
        std::fs::write(root.join("crates/promguard-wg/src/dump.rs"), "fn f() {}\n").unwrap();
        append(
            &root.join("crates/promguard-remote/src/lib.rs"),
            "pub fn converge(host: &str, dry_run: bool) {}\nfn run() { converge(\"a\", true); converge(\"b\", false) }\npub fn keep(quiet: bool) {}\nfn also(q: bool) { keep(q); keep(true) }\n",
        );
        let found = violations(root).unwrap().join("\n");
        for expected in [
            "promguard-core depends on reqwest, which only promguard-cloud may use",
            "promguard-core depends on promguard-cli: dependencies point one way",
            "promguard-remote depends on clap, which only promguard-cli may use",
            "lib.rs:2: promguard-core does IO (std::fs)",
            "dump.rs: the module has no `//!` doc",
            "every call of converge passes its bool parameter `dry_run: bool` as a literal",
        ] {
            assert!(found.contains(expected), "{expected:?} not in:\n{found}");
        }
        // The state file may do IO.
        assert!(!found.contains("state.rs"), "{found}");
        // A bool some caller computes is fine.
        assert!(!found.contains("call of keep"), "{found}");
    }

    #[test]
    fn shellcheck_rejects_a_broken_script() {
        let tree = fixture();
        let root = tree.path();
        std::fs::create_dir_all(root.join(".ci")).unwrap();
        std::fs::write(root.join(".ci/run"), "#!/usr/bin/env bash\nexec true\n").unwrap();
        shellcheck(root).unwrap();
        std::fs::write(
            root.join("crates/promguard-remote/src/broken.sh"),
            "# shellcheck shell=bash\nrm -rf \"$dir\"/*\n",
        )
        .unwrap();
        let err = shellcheck(root).unwrap_err().to_string();
        assert!(err.contains("broken.sh") && err.contains("SC2154"), "{err}");
    }

    #[test]
    fn this_tree_keeps_the_rules() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let found = violations(root).unwrap();
        assert!(found.is_empty(), "{}", found.join("\n"));
    }
}
