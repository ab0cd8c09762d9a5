//! The `promguard` binary from the outside: exit codes, messages, and that
//! bad input never writes a file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(name);
        fs::write(&p, content).unwrap();
        p
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_promguard"))
            .args(args)
            .current_dir(self.path())
            .env_remove("PROMGUARD_LOG")
            .output()
            .unwrap()
    }

    fn listing(&self) -> Vec<(String, Vec<u8>)> {
        let mut entries: Vec<_> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let content = fs::read(e.path()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), content)
            })
            .collect();
        entries.sort();
        entries
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `plan` on a bad config and checks the failure: non-zero exit, the
/// expected words in one paragraph, and no file written.
fn check_bad_config(config: &str, expected: &[&str]) {
    let dir = Dir::new();
    dir.write("promguard.toml", config);
    let before = dir.listing();
    for args in [
        &["plan"][..],
        &["plan", "--json"],
        &["render", "promguard-monitor-1"],
    ] {
        let out = dir.run(args);
        assert!(!out.status.success(), "{args:?} succeeded on a bad config");
        let err = stderr(&out);
        for word in expected {
            assert!(err.contains(word), "{args:?}: {err:?} lacks {word:?}");
        }
        assert!(err.starts_with("error: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one paragraph: {err}");
        assert!(stdout(&out).is_empty());
        assert_eq!(dir.listing(), before, "a file was written");
    }
}

#[test]
fn subnet_too_small() {
    check_bad_config(
        "[deployment]\nsubnet = \"10.0.0.0/30\"\n",
        &["deployment.subnet", "room for 2"],
    );
}

#[test]
fn invalid_cidr() {
    check_bad_config(
        "[deployment]\nsubnet = \"10.0.0/24x\"\n",
        &["not a CIDR subnet"],
    );
}

#[test]
fn duplicate_host_names() {
    check_bad_config(
        "[[nodes.host]]\nname = \"promguard-monitor-1\"\nregion = \"lon1\"\n",
        &["duplicate host name promguard-monitor-1"],
    );
}

#[test]
fn invalid_host_name() {
    check_bad_config(
        "[[nodes.host]]\nname = \"node;rm -rf /\"\nregion = \"lon1\"\n",
        &["nodes.host[0].name", "invalid host name"],
    );
}

#[test]
fn port_clash() {
    check_bad_config(
        "[[nodes.host]]\nname = \"db\"\nregion = \"lon1\"\nexporters = [{ name = \"pg\", port = 22 }]\n",
        &["port 22 clashes with ssh"],
    );
}

#[test]
fn unknown_key() {
    check_bad_config(
        "[wireguard]\nprot = 51820\n",
        &["unknown field `prot`", "line 2, column 1"],
    );
}

#[test]
fn empty_node_list() {
    check_bad_config("[nodes]\ncount = 0\n", &["node list is empty"]);
}

fn default_state(dir: &Dir) -> String {
    // A valid state made by planning once, as `up` would have saved it.
    let config = promguard_core::config::Config::default();
    let plan = promguard_core::planner::plan(&config, None).unwrap();
    let text = plan.next_state.to_json();
    dir.write("promguard.state.json", &text);
    dir.write(
        "promguard.toml",
        promguard_core::config::Config::template(promguard_core::config::ProviderKind::Local, 3),
    );
    text
}

#[test]
fn corrupt_state() {
    let dir = Dir::new();
    default_state(&dir);
    dir.write("promguard.state.json", "{\"version\": 1, \"deployment\": ");
    let before = dir.listing();
    let out = dir.run(&["plan"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is corrupt"), "{}", stderr(&out));
    assert_eq!(dir.listing(), before);
}

#[test]
fn unreadable_state() {
    let dir = Dir::new();
    default_state(&dir);
    // A directory where the state file should be cannot be read as a file.
    fs::remove_file(dir.path().join("promguard.state.json")).unwrap();
    fs::create_dir(dir.path().join("promguard.state.json")).unwrap();
    let out = dir.run(&["plan"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read state file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn state_from_a_newer_version() {
    let dir = Dir::new();
    let text = default_state(&dir);
    dir.write(
        "promguard.state.json",
        text.replacen("\"version\": 1", "\"version\": 2", 1),
    );
    let before = dir.listing();
    let out = dir.run(&["plan"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("version 2"), "{}", stderr(&out));
    assert!(stderr(&out).contains("upgrade promguard"));
    assert_eq!(dir.listing(), before, "the newer state was touched");
}

#[test]
fn plan_json_contract_and_no_secrets() {
    let dir = Dir::new();
    let text = default_state(&dir);
    let out = dir.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hosts = json["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 4);
    for key in [
        "name",
        "role",
        "region",
        "origin",
        "wireguard_address",
        "public_key",
    ] {
        assert!(hosts[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(hosts[0]["wireguard_address"], "10.0.0.1");
    assert_eq!(hosts[0]["origin"], "created");
    assert_eq!(json["changes"][0]["kind"], "create_host");
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (_, host) in state["hosts"].as_object().unwrap() {
        let secret = host["private_key"].as_str().unwrap();
        assert!(!stdout(&out).contains(secret));
        let human = dir.run(&["plan"]);
        assert!(!stdout(&human).contains(secret));
    }
}

// Regression: without a state, `plan` showed public keys that each run
// generates anew, so a key copied from it was never used.
#[test]
fn plan_shows_no_key_that_is_thrown_away() {
    let dir = Dir::new();
    let out = dir.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for host in json["hosts"].as_array().unwrap() {
        assert!(host["public_key"].is_null(), "{host}");
    }
    let human = stdout(&dir.run(&["plan"]));
    assert!(human.contains("(new: made by `up`)"), "{human}");
    // Saved keys are shown.
    let text = default_state(&dir);
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let key = state["hosts"]["promguard-node-1"]["public_key"]
        .as_str()
        .unwrap();
    assert!(stdout(&dir.run(&["plan"])).contains(key));
}

#[test]
fn plan_warns_about_old_keys() {
    let dir = Dir::new();
    default_state(&dir);
    let fresh = stdout(&dir.run(&["plan"]));
    assert!(!fresh.contains("rotate"), "{fresh}");
    let config = promguard_core::config::Config::default();
    let mut state = promguard_core::planner::plan(&config, None)
        .unwrap()
        .next_state;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for record in state.hosts.values_mut() {
        record.created = true;
        record.key_created = Some(now - 100 * 86_400);
    }
    dir.write("promguard.state.json", state.to_json());
    let old = stdout(&dir.run(&["plan"]));
    assert!(
        old.contains("WireGuard keys older than 90 days") && old.contains("run `promguard rotate`"),
        "{old}"
    );
    assert!(old.contains("promguard-node-1 (100 days)"), "{old}");
}

#[test]
fn render_redacts_unless_asked() {
    let dir = Dir::new();
    let text = default_state(&dir);
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let secret = state["hosts"]["promguard-node-1"]["private_key"]
        .as_str()
        .unwrap();
    let psk = state["preshared_keys"][0]["key"].as_str().unwrap();
    let out = dir.run(&["render", "promguard-node-1", "wg"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains(secret) && !stdout(&out).contains(psk));
    assert!(stdout(&out).contains("[Peer]"));
    let out = dir.run(&["render", "promguard-node-1", "wg", "--show-secrets"]);
    assert!(stdout(&out).contains(secret) && stdout(&out).contains(psk));
    let out = dir.run(&["render", "promguard-node-1", "prometheus"]);
    assert!(!out.status.success(), "a node has no Prometheus config");
    let out = dir.run(&["render", "promguard-monitor-1"]);
    assert!(stdout(&out).contains("/etc/prometheus/prometheus.yml"));
    let out = dir.run(&["render", "nope"]);
    assert!(stderr(&out).contains("no host nope"));
}

#[test]
fn init_writes_a_valid_config_and_refuses_to_overwrite() {
    let dir = Dir::new();
    let out = dir.run(&["init", "--nodes", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = fs::read_to_string(dir.path().join("promguard.toml")).unwrap();
    assert!(written.contains("count = 5"));
    let out = dir.run(&["plan", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["hosts"].as_array().unwrap().len(), 6);
    let out = dir.run(&["init"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"));
    assert_eq!(
        fs::read_to_string(dir.path().join("promguard.toml")).unwrap(),
        written
    );
}

#[test]
fn every_command_has_help() {
    let dir = Dir::new();
    for cmd in [
        "init", "plan", "render", "up", "status", "tunnel", "ssh", "down",
    ] {
        let out = dir.run(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help");
        assert!(stdout(&out).contains("Usage"), "{cmd}");
    }
}

#[test]
fn plan_without_config_uses_the_default() {
    let dir = Dir::new();
    let out = dir.run(&["plan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("built-in default"));
    assert!(stdout(&out).contains("promguard-node-3"));
    assert!(dir.listing().is_empty(), "plan wrote a file");
}

/// `promguard plan | head` ends quietly once head is gone: killed by
/// SIGPIPE like any Unix filter, not a panic reported as a bug. The pipe's
/// read end is closed before promguard starts, so the first write fails.
#[test]
fn a_closed_stdout_ends_printing_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = Dir::new();
    for args in [&["plan"][..], &["render", "promguard-node-1"]] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = Command::new(env!("CARGO_BIN_EXE_promguard"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("PROMGUARD_LOG")
            .stdout(std::process::Stdio::from(write))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{args:?}: {:?} {err}",
            out.status
        );
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

/// `plan` on a deployment that mixes hosts the user runs with created
/// ones: the ORIGIN column says which is which, and the scrape job for the
/// user's own Prometheus is shown once.
#[test]
fn plan_shows_each_hosts_origin_and_the_scrape_job_for_an_existing_prometheus() {
    let dir = Dir::new();
    dir.write(
        "promguard.toml",
        "[monitor]\naddress = \"192.0.2.1\"\nprometheus = \"existing\"\n\n\
         [[nodes.host]]\nname = \"db-1\"\naddress = \"db.example.com\"\n\n\
         [[nodes.host]]\nname = \"web-1\"\nregion = \"tor1\"\n",
    );
    let out = dir.run(&["plan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let header = text.lines().find(|l| l.starts_with("HOST")).unwrap();
    assert!(header.contains("ORIGIN"), "{text}");
    let origin = |host: &str| {
        let line = text.lines().find(|l| l.starts_with(host)).unwrap();
        line.split_whitespace().nth(3).unwrap().to_owned()
    };
    assert_eq!(origin("promguard-monitor-1"), "existing", "{text}");
    assert_eq!(origin("db-1"), "existing", "{text}");
    assert_eq!(origin("web-1"), "created", "{text}");
    assert_eq!(
        text.matches("- job_name: \"promguard-promguard\"").count(),
        1,
        "{text}"
    );
    assert!(text.contains("/etc/promguard/targets/*.json"), "{text}");

    let out = dir.run(&["plan", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let origins: Vec<&str> = json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["origin"].as_str().unwrap())
        .collect();
    assert_eq!(origins, ["existing", "existing", "created"]);
}
