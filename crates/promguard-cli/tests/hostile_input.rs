//! Hostile values in the config, the state file and the command line are
//! refused with a clear, one-paragraph error before anything runs: no
//! file is written, no host is touched, and no injected command runs.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use promguard_core::config::Config;
use promguard_core::state::Preshared;
use promguard_core::{HostName, PresharedKey, PrivateKey, SshPublicKey};
use serde_json::Value;

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

/// The config of [`config`] with `wireguard.rotate_after_days` set to the
/// TOML text `value`.
fn rotating_after(value: &str) -> String {
    format!(
        "{}\n[wireguard]\nrotate_after_days = {value}\n",
        config("demo", "monitor-1", "tor1", "app")
    )
}

#[test]
fn hostile_rotate_after_days_is_refused() {
    // Whole numbers out of range: 0 would warn on every run, and more than
    // 100 years never.
    for value in ["0", "-1", "36501", "4294967296", "-9223372036854775808"] {
        check_refused(&rotating_after(value), "wireguard.rotate_after_days");
    }
    // Not a whole number: the parser names the key and its line.
    let mut values: Vec<String> = [
        "1.5",
        "1e3",
        "nan",
        "-inf",
        "true",
        "[90]",
        "{ days = 90 }",
        "1979-05-27",
        "99999999999999999999",
        "\"90\"",
    ]
    .map(String::from)
    .into();
    values.extend(hostile_values().iter().map(|v| format!("{v:?}")));
    for value in values {
        check_refused(&rotating_after(&value), "rotate_after_days");
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

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob";
const NEXT_HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

/// A valid state of [`with_state`]'s config, made as PromGuard makes it:
/// both hosts created, their keys two days old, a rotation of node-1's keys
/// under way (its previous key and its pair's are kept) and a replacement
/// of node-1's host key under way, so that every field of a rotation is in
/// the file.
fn valid_state() -> Value {
    let text = config("demo", "monitor-1", "tor1", "app");
    let config = Config::from_toml(&text, Path::new("promguard.toml")).unwrap();
    let mut state = promguard_core::planner::plan(&config, None)
        .unwrap()
        .next_state;
    state.date_new_keys(now() - 2 * 86_400);
    let node = HostName::new("node-1").unwrap();
    state.rotate_keys(
        std::slice::from_ref(&node),
        Preshared::Rotate,
        now() - 86_400,
    );
    for (i, (name, record)) in state.hosts.iter_mut().enumerate() {
        record.created = true;
        record.public_address = Some(format!("192.0.2.{}", i + 1).parse().unwrap());
        if *name == node {
            record.pin_injected_host_key(&SshPublicKey::parse(HOST_KEY).unwrap());
            record.ssh_host_key_next = Some(SshPublicKey::parse(NEXT_HOST_KEY).unwrap());
        } else {
            record.pin_replaced_host_key(&SshPublicKey::parse(HOST_KEY).unwrap());
        }
    }
    serde_json::to_value(&state).unwrap()
}

/// The file of `state` with the field at `pointer` (such as
/// `/hosts/node-1/key_created`, added if missing) set to the JSON text
/// `raw`, written as is: so it can be what a `Value` cannot hold, such as
/// an integer beyond u64.
fn mutated(state: &Value, pointer: &str, raw: &str) -> Vec<u8> {
    const MARK: &str = "@@hostile@@";
    let mut state = state.clone();
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    state
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {parent}"))
        .insert(field.to_owned(), Value::String(MARK.into()));
    let text = serde_json::to_string_pretty(&state).unwrap() + "\n";
    assert!(text.contains(MARK));
    text.replace(&format!("\"{MARK}\""), raw).into_bytes()
}

/// `text` as a JSON string.
fn json(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

#[test]
fn a_valid_state_with_a_rotation_under_way_is_accepted() {
    let state = valid_state();
    // A rotation and a host key replacement are under way.
    for field in [
        "/hosts/node-1/previous_private_key",
        "/hosts/node-1/ssh_host_key_next",
        "/preshared_keys/0/previous",
    ] {
        assert!(
            state.pointer(field).is_some_and(Value::is_string),
            "{field}"
        );
    }
    let files = [
        serde_json::to_string_pretty(&state).unwrap().into_bytes(),
        mutated(
            &state,
            "/hosts/monitor-1/key_created",
            &(now() - 400 * 86_400).to_string(),
        ),
        // Within a day of this machine's clock: another machine's clock.
        mutated(
            &state,
            "/hosts/node-1/key_created",
            &(now() + 3600).to_string(),
        ),
        mutated(&state, "/preshared_keys/0/created", "0"),
        mutated(&state, "/hosts/monitor-1/key_created", "null"),
        mutated(
            &state,
            "/hosts/monitor-1/previous_private_key",
            &json(&PrivateKey::generate().expose_base64()),
        ),
        mutated(
            &state,
            "/preshared_keys/0/previous",
            &json(&PresharedKey::generate().expose_base64()),
        ),
        mutated(&state, "/hosts/node-1/ssh_host_key_next", &json(HOST_KEY)),
        mutated(&state, "/hosts/node-1/ssh_host_key_rotated", "false"),
    ];
    for file in files {
        let dir = with_state(&file);
        let out = run(dir.path(), &["plan"]);
        assert!(
            out.status.success(),
            "a valid state is refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fs::read(dir.path().join("promguard.state.json")).unwrap(),
            file
        );
    }
}

#[test]
fn hostile_rotation_fields_in_the_state_are_refused_and_left_untouched() {
    let m = marker();
    let state = valid_state();
    let text = |p: &str| state.pointer(p).unwrap().as_str().unwrap().to_owned();
    let long = "x".repeat(100_000);
    let year_3000 = "32503680000";
    let mut cases: Vec<(&str, String)> = Vec::new();
    let times = [
        "-1".to_owned(),
        "1.5".into(),
        "1e10".into(),
        "18446744073709551616".into(),
        "9".repeat(1000),
        json("1700000000"),
        json(&format!("$(touch {m})")),
        json(&long),
        "true".into(),
        "[]".into(),
        "{}".into(),
        year_3000.into(),
        u64::MAX.to_string(),
    ];
    for field in [
        "/hosts/node-1/key_created",
        "/hosts/monitor-1/key_created",
        "/preshared_keys/0/created",
    ] {
        cases.extend(times.iter().map(|raw| (field, raw.clone())));
    }
    let keys = [
        json(""),
        json("not base64, but forty-four characters long!"),
        // 31, 33 and 36 bytes of base64; 43 characters.
        json(&format!("{}==", "A".repeat(42))),
        json(&"A".repeat(44)),
        json(&"A".repeat(48)),
        json(&"A".repeat(43)),
        json(&format!("$(touch {m})")),
        json(&format!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA;touch {m}")),
        json(&long),
        "12".into(),
        "[]".into(),
    ];
    for field in [
        "/hosts/node-1/previous_private_key",
        "/hosts/monitor-1/previous_private_key",
        "/preshared_keys/0/previous",
    ] {
        cases.extend(keys.iter().map(|raw| (field, raw.clone())));
    }
    // The key that replaced it, kept as the previous one.
    cases.push((
        "/hosts/node-1/previous_private_key",
        json(&text("/hosts/node-1/private_key")),
    ));
    cases.push((
        "/preshared_keys/0/previous",
        json(&text("/preshared_keys/0/key")),
    ));
    let host_keys = [
        json(""),
        json("ssh-ed25519"),
        json("ssh-dss AAAA"),
        json(&format!("ssh-ed25519 AAAA;touch {m}")),
        json(&format!("ssh-ed25519 $(touch {m})")),
        json(&format!("ssh-ed25519 `touch {m}`")),
        json(&format!("$(touch {m}) AAAA")),
        json(&long),
        json(&format!("ssh-ed25519 {long};")),
        "42".into(),
        "[]".into(),
    ];
    for field in [
        "/hosts/node-1/ssh_host_key_next",
        "/hosts/monitor-1/ssh_host_key_next",
    ] {
        cases.extend(host_keys.iter().map(|raw| (field, raw.clone())));
    }
    for field in [
        "/hosts/node-1/ssh_host_key_rotated",
        "/hosts/monitor-1/ssh_host_key_rotated",
    ] {
        for raw in ["\"yes\"", "\"true\"", "1", "null", "[]"] {
            cases.push((field, raw.into()));
        }
    }
    cases.push(("/hosts/node-1/key_createdd", "1".into()));
    cases.push((
        "/preshared_keys/0/previouss",
        json(&text("/preshared_keys/0/key")),
    ));

    for (field, raw) in &cases {
        let file = mutated(&state, field, raw);
        let dir = with_state(&file);
        let case = format!("{field} = {}", raw.chars().take(60).collect::<String>());
        // `plan` first: it changes nothing, so a state accepted by mistake
        // stops the test before a command that would act on it.
        for args in [
            &["plan"][..],
            &["up", "--yes"],
            &["status"],
            &["down", "--yes"],
            &["rotate"],
            &["rotate", "--psk", "node-1"],
        ] {
            let out = run(dir.path(), args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} accepted {case}");
            assert!(
                err.contains("promguard.state.json") && err.contains("corrupt"),
                "{args:?}, {case}: {err}"
            );
            assert!(
                err.len() < 2000,
                "{args:?}, {case}: the error echoes too much: {} bytes",
                err.len()
            );
            assert_eq!(
                fs::read(dir.path().join("promguard.state.json")).unwrap(),
                file,
                "{args:?}, {case}: the state file was changed"
            );
        }
        if *raw == year_3000 {
            let err = String::from_utf8_lossy(&run(dir.path(), &["status"]).stderr).into_owned();
            let named = match *field {
                "/preshared_keys/0/created" => {
                    "preshared key of monitor-1 and node-1: created".to_owned()
                }
                host => {
                    let host = host.split('/').nth(2).unwrap();
                    format!("host {host}: key_created")
                }
            };
            assert!(err.contains(&named), "{case}: {err}");
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
            vec!["rotate", host.as_str()],
            vec!["rotate", "--psk", host.as_str()],
            vec!["rotate", "node-1", host.as_str()],
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
