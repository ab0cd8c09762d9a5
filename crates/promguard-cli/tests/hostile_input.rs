//! Hostile values in the config, the state file and the command line are
//! refused with a clear, one-paragraph error before anything runs: no
//! file is written, no host is touched, and no injected command runs.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

/// A marker file an injected command would create.
fn marker() -> String {
    format!("/tmp/promguard-pwned-cli-{}", std::process::id())
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_promguard"))
        .args(args)
        .current_dir(dir)
        .env_remove("PROMGUARD_LOG")
        .output()
        .unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A config with one hostile value in place of `slot`.
fn config(deployment: &str, monitor: &str, region: &str, exporter: &str) -> String {
    format!(
        "[deployment]\nname = {deployment:?}\nprovider = \"local\"\n\n[monitor]\nname = {monitor:?}\nregion = {region:?}\n\n[[nodes.host]]\nname = \"node-1\"\nregion = \"lon1\"\nexporters = [{{ name = {exporter:?}, port = 9200 }}]\n"
    )
}

fn hostile_values() -> Vec<String> {
    let m = marker();
    vec![
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("a;touch {m}"),
        "a'b".into(),
        "a\"b".into(),
        format!("a\ntouch {m}"),
        "a b".into(),
        "../../etc".into(),
        "x".repeat(10_000),
        "Ünïcode".into(),
    ]
}

/// Every command that reads the config refuses it, writes nothing and
/// runs nothing.
fn check_refused(text: &str, field: &str) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("promguard.toml"), text).unwrap();
    let before = listing(dir.path());
    for args in [
        &["plan"][..],
        &["render", "node-1"],
        &["up", "--yes"],
        &["status"],
        &["down", "--yes", "--discover"],
        &["ssh", "node-1", "--", "true"],
    ] {
        let out = run(dir.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a hostile {field}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(
            err.contains(field),
            "{args:?}: the error does not name {field}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one paragraph: {err}");
        assert!(
            err.len() < 2000,
            "{args:?}: the error echoes too much: {} bytes",
            err.len()
        );
        assert_eq!(listing(dir.path()), before, "{args:?} wrote a file");
    }
    assert!(!Path::new(&marker()).exists(), "an injected command ran");
}

#[test]
fn hostile_config_values_are_refused() {
    for bad in hostile_values() {
        check_refused(&config(&bad, "monitor-1", "tor1", "app"), "deployment");
        check_refused(&config("demo", &bad, "tor1", "app"), "monitor.name");
        check_refused(&config("demo", "monitor-1", &bad, "app"), "monitor.region");
        check_refused(
            &config("demo", "monitor-1", "tor1", &bad),
            "exporters[0].name",
        );
    }
}

#[test]
fn non_utf8_config_is_refused() {
    let mut text = config("demo", "monitor-1", "tor1", "app").into_bytes();
    text.extend_from_slice(b"\n# \xff\xfe\n");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("promguard.toml"), &text).unwrap();
    let out = run(dir.path(), &["plan"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("promguard.toml"), "{err}");
}

/// A valid config with a state file beside it.
fn with_state(state: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("promguard.toml"),
        config("demo", "monitor-1", "tor1", "app"),
    )
    .unwrap();
    fs::write(dir.path().join("promguard.state.json"), state).unwrap();
    dir
}

#[test]
fn hostile_state_files_are_refused_and_left_untouched() {
    let m = marker();
    let cases: Vec<Vec<u8>> = vec![
        b"{\"version\": 1, \"deployment\": \"demo\", \"hosts\": {}}\xff".to_vec(),
        format!(
            "{{\"version\": 1, \"deployment\": \"demo\", \"hosts\": {{\"$(touch {m})\": {{}}}}}}"
        )
        .into_bytes(),
        format!("{{\"version\": 1, \"deployment\": \"a;touch {m}\"}}").into_bytes(),
        b"{\"version\": 1, \"deployment\": \"demo\", \"extra\": 1}".to_vec(),
        format!(
            "{{\"version\": 1, \"deployment\": \"{}\"}}",
            "x".repeat(100_000)
        )
        .into_bytes(),
    ];
    for state in cases {
        let dir = with_state(&state);
        for args in [
            &["plan"][..],
            &["up", "--yes"],
            &["status"],
            &["down", "--yes"],
        ] {
            let out = run(dir.path(), args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} accepted a hostile state");
            assert!(err.contains("promguard.state.json"), "{args:?}: {err}");
            assert!(err.contains("corrupt"), "{args:?}: {err}");
            assert_eq!(
                fs::read(dir.path().join("promguard.state.json")).unwrap(),
                state,
                "the state file was changed"
            );
        }
    }
    assert!(!Path::new(&m).exists(), "an injected command ran");
}

#[test]
fn hostile_host_arguments_are_refused() {
    let dir = with_state(b"{\"version\": 1, \"deployment\": \"demo\"}");
    let m = marker();
    for host in [
        format!("$(touch {m})"),
        format!("node-1;touch {m}"),
        format!("node-1\ntouch {m}"),
        "-oProxyCommand=touch".to_owned(),
        "x".repeat(10_000),
    ] {
        for args in [
            vec!["ssh", host.as_str(), "--", "true"],
            vec!["render", host.as_str()],
            vec!["proxy", host.as_str()],
        ] {
            let out = run(dir.path(), &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{args:?} accepted a hostile host name"
            );
            assert!(
                err.contains("invalid host name") || err.contains("unexpected argument"),
                "{args:?}: {err}"
            );
        }
    }
    assert!(!Path::new(&m).exists(), "an injected command ran");
}
