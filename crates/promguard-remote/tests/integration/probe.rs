//! Reading a real sshd's host key without logging in, and trusting it
//! through a known_hosts file that OpenSSH's own `ssh-keyscan` wrote.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use promguard_core::{HostName, SshPublicKey};
use promguard_remote::known_hosts::{
    decide_host_key, KeySource, KnownHosts, TrustDecision, TrustFacts,
};
use promguard_remote::probe::{probe_host_key, probe_host_key_preferring, ProbeError};
use promguard_remote::{tcp_connector, Connection};

use crate::common::{quick_options, SshdFixture};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Makes a host key of `kind` (`rsa`, `ecdsa`, ...) in the fixture's
/// directory, adds it to sshd's config and returns its public key.
fn add_host_key(fixture: &SshdFixture, kind: &str) -> SshPublicKey {
    let path = fixture.dir.path().join(format!("host_{kind}"));
    let status = Command::new("/usr/bin/ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", "probe-test", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let config = fixture.dir.path().join("sshd_config");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(config)
        .unwrap();
    writeln!(file, "HostKey {}", path.display()).unwrap();
    public_key_file(&path.with_extension("pub"))
}

fn public_key_file(path: &Path) -> SshPublicKey {
    SshPublicKey::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Takes the fixture's ed25519 key out of sshd's config.
fn drop_ed25519(fixture: &SshdFixture) {
    let config = fixture.dir.path().join("sshd_config");
    let text = std::fs::read_to_string(&config).unwrap();
    let kept: String = text
        .lines()
        .filter(|line| !line.ends_with("/host_ed25519"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(config, kept).unwrap();
}

fn connector() -> promguard_remote::Connector {
    tcp_connector(Duration::from_secs(5))
}

#[test]
fn probe_returns_the_host_key_file_of_sshd() {
    let sshd = SshdFixture::new().start();
    let key = probe_host_key(sshd.fixture.addr(), &connector(), TIMEOUT).unwrap();
    assert_eq!(key, sshd.fixture.host_key);
    // The probe did not disturb the server: a login pinned to that key works.
    let mut target = sshd.fixture.target();
    target.expected_host_key = Some(key);
    let conn = Connection::connect(&target, &connector(), quick_options()).unwrap();
    assert!(conn.exec("true", b"").unwrap().success());
}

#[test]
fn probe_prefers_ed25519_and_asks_for_a_recorded_type_first() {
    let fixture = SshdFixture::new();
    let rsa = add_host_key(&fixture, "rsa");
    let ecdsa = add_host_key(&fixture, "ecdsa");
    let ed25519 = fixture.host_key.clone();
    let sshd = fixture.start();
    let addr = sshd.fixture.addr();
    assert_eq!(
        probe_host_key(addr, &connector(), TIMEOUT).unwrap(),
        ed25519
    );
    let preferring = |algorithm: &str| {
        probe_host_key_preferring(addr, &connector(), TIMEOUT, &[algorithm.to_owned()]).unwrap()
    };
    assert_eq!(preferring("ssh-rsa"), rsa);
    assert_eq!(preferring("ecdsa-sha2-nistp256"), ecdsa);
    // A type the server lacks: the usual order decides.
    assert_eq!(preferring("ecdsa-sha2-nistp521"), ed25519);
}

#[test]
fn probe_without_an_ed25519_host_key_takes_the_next_type() {
    let fixture = SshdFixture::new();
    drop_ed25519(&fixture);
    let rsa = add_host_key(&fixture, "rsa");
    let ecdsa = add_host_key(&fixture, "ecdsa");
    let sshd = fixture.start();
    let addr = sshd.fixture.addr();
    assert_eq!(probe_host_key(addr, &connector(), TIMEOUT).unwrap(), ecdsa);
    let rsa_first = probe_host_key_preferring(addr, &connector(), TIMEOUT, &["ssh-rsa".into()]);
    assert_eq!(rsa_first.unwrap(), rsa);
}

/// The whole trust flow for a host the user already knows: OpenSSH's
/// `ssh-keyscan -H` records the server's RSA key (as an older setup
/// would have), the decision asks to probe for RSA first, and the probed
/// key is trusted from known_hosts.
#[test]
fn a_host_recorded_by_ssh_keyscan_is_trusted_from_known_hosts() {
    let fixture = SshdFixture::new();
    let rsa = add_host_key(&fixture, "rsa");
    let sshd = fixture.start();
    let port = sshd.fixture.port;
    let scan = Command::new("/usr/bin/ssh-keyscan")
        .args(["-H", "-t", "rsa", "-p", &port.to_string(), "127.0.0.1"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("running ssh-keyscan");
    assert!(scan.status.success());
    let text = String::from_utf8(scan.stdout).unwrap();
    assert!(text.starts_with("|1|"), "{text}");
    let path = sshd.fixture.dir.path().join("known_hosts");
    std::fs::write(&path, &text).unwrap();

    let known = KnownHosts::load(&path).unwrap();
    assert_eq!(known.skipped(), &[]);
    let lookup = known.lookup("127.0.0.1", port);
    assert_eq!(lookup.keys.len(), 1);
    assert!(known.lookup("127.0.0.1", 22).keys.is_empty());

    let host = HostName::new("db-1").unwrap();
    let mut facts = TrustFacts {
        host: &host,
        address: "127.0.0.1",
        port,
        config_key: None,
        pinned_key: None,
        known_hosts: &lookup,
        presented_key: None,
    };
    let Ok(TrustDecision::Probe { algorithms }) = decide_host_key(&facts) else {
        panic!("a host in known_hosts is probed first");
    };
    assert_eq!(algorithms[0], "ssh-rsa");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let presented = probe_host_key_preferring(addr, &connector(), TIMEOUT, &algorithms).unwrap();
    assert_eq!(presented, rsa);
    facts.presented_key = Some(&presented);
    assert_eq!(
        decide_host_key(&facts),
        Ok(TrustDecision::Trusted {
            key: rsa,
            source: KeySource::KnownHosts
        })
    );

    // The server's ed25519 key is not what known_hosts records: a probe
    // that ignored the recorded types would meet a changed key.
    let ed25519 = probe_host_key(addr, &connector(), TIMEOUT).unwrap();
    facts.presented_key = Some(&ed25519);
    let err = decide_host_key(&facts).unwrap_err();
    assert!(err.to_string().contains(&ed25519.fingerprint()), "{err}");
}

#[test]
fn probe_errors_name_the_address() {
    // The connector fails: its error, with the address. (A connector that
    // refuses, rather than a port that was free a moment ago: tests running
    // beside this one may take that port.)
    let refusing: promguard_remote::Connector =
        Arc::new(|_| Err(io::Error::from(io::ErrorKind::ConnectionRefused)));
    let closed = SocketAddr::from(([127, 0, 0, 1], 9));
    let err = probe_host_key(closed, &refusing, TIMEOUT).unwrap_err();
    assert!(matches!(err, ProbeError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");

    // A server that accepts and never speaks: the timeout, not a hang.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let start = Instant::now();
    let err = probe_host_key(addr, &connector(), Duration::from_millis(500)).unwrap_err();
    assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // Not an SSH server.
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = http.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = http.accept().unwrap();
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let err = probe_host_key(addr, &connector(), TIMEOUT).unwrap_err();
    assert!(matches!(err, ProbeError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    server.join().unwrap();
}

/// The trust step of `up` against a real sshd, from the config to the
/// pinned key: an existing host named by DNS name is new until the user's
/// known_hosts (hashed by `ssh-keyscan -H`) records its key, and a known_hosts
/// entry with another key is a hard error naming both fingerprints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_hosts_keys_are_reviewed_from_config_to_pin() {
    use promguard_cloud::none::NoProvider;
    use promguard_core::{config::Config, Journal, MemoryStore, State};
    use promguard_remote::{
        pin_host_key, resolve_existing_addresses, review_host_keys, HostKeyTrustError,
        HostKeyVerdict, TrustOptions,
    };

    let sshd = SshdFixture::new().start();
    let port = sshd.fixture.port;
    let other = {
        let path = sshd.fixture.dir.path().join("other_ed25519");
        let status = Command::new("/usr/bin/ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        public_key_file(&path.with_extension("pub"))
    };
    let config = Config::from_toml(
        &format!(
            "[monitor]\naddress = \"127.0.0.1\"\nssh_port = {port}\nhost_key = \"{}\"\n\n\
             [[nodes.host]]\nname = \"db-1\"\naddress = \"localhost\"\nssh_port = {port}\n",
            sshd.fixture.host_key
        ),
        Path::new("promguard.toml"),
    )
    .unwrap();
    let mut plan = promguard_core::planner::plan(&config, None).unwrap();
    resolve_existing_addresses(&config, &mut plan)
        .await
        .unwrap();
    let db = HostName::new("db-1").unwrap();
    let node = plan.hosts.iter_mut().find(|h| h.name == db).unwrap();
    assert!(node.public_address.unwrap().is_loopback());
    // The fixture listens on IPv4 only; a resolver may put ::1 first.
    node.public_address = Some([127, 0, 0, 1].into());
    let journal = Journal::new(
        Arc::new(MemoryStore::default()),
        State::new(config.deployment.clone()),
    );
    promguard_cloud::provision::provision(
        &NoProvider::new(config.deployment.clone()),
        &plan,
        &journal,
        None,
        &(),
        &promguard_remote::CancellationToken::new(),
    )
    .await
    .unwrap();

    let known_hosts = sshd.fixture.dir.path().join("known_hosts");
    let options = TrustOptions {
        known_hosts: Some(known_hosts.clone()),
        connector: connector(),
        timeout: TIMEOUT,
        parallel: std::num::NonZeroUsize::new(4).unwrap(),
    };
    let fingerprint = sshd.fixture.host_key.fingerprint();

    // Known nowhere (no known_hosts file at all): new, with its fingerprint.
    let review = review_host_keys(&config, &journal.snapshot(), &options)
        .await
        .unwrap();
    let new: Vec<_> = review.new_hosts().collect();
    assert_eq!(new.len(), 1, "{review:?}");
    assert_eq!(new[0].host, db);
    assert_eq!(new[0].address, "localhost");
    assert_eq!(
        new[0].verdict,
        HostKeyVerdict::New {
            key: sshd.fixture.host_key.clone(),
            fingerprint: fingerprint.clone()
        }
    );
    // The monitor's key is the config's: trusted, not probed.
    assert_eq!(review.trusted().count(), 1);

    // Recorded by OpenSSH under the name the user gave: trusted.
    let scan = Command::new("/usr/bin/ssh-keyscan")
        .args(["-H", "-t", "ed25519", "-p", &port.to_string(), "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("running ssh-keyscan");
    assert!(scan.status.success());
    std::fs::write(&known_hosts, &scan.stdout).unwrap();
    let review = review_host_keys(&config, &journal.snapshot(), &options)
        .await
        .unwrap();
    assert_eq!(review.new_hosts().count(), 0, "{review:?}");
    let trusted: Vec<_> = review.trusted().filter(|h| h.host == db).collect();
    assert_eq!(trusted[0].key(), &sshd.fixture.host_key);

    // Pinned: the converge's connection is verified against it.
    journal
        .update(|state| {
            for check in review.trusted() {
                pin_host_key(state, &check.host, check.key());
            }
        })
        .unwrap();
    let state = journal.snapshot();
    assert_eq!(
        state.hosts[&db].ssh_host_key,
        Some(sshd.fixture.host_key.clone())
    );
    let review = review_host_keys(&config, &state, &options).await.unwrap();
    assert!(review.hosts.is_empty(), "{review:?}");

    // known_hosts records another key for the name: a hard error that
    // names both fingerprints.
    let mut unpinned = state.clone();
    unpinned.hosts.get_mut(&db).unwrap().ssh_host_key = None;
    std::fs::write(&known_hosts, format!("[localhost]:{port} {other}\n")).unwrap();
    let err = review_host_keys(&config, &unpinned, &options)
        .await
        .unwrap_err();
    assert!(matches!(err, HostKeyTrustError::Untrusted(_)), "{err}");
    assert_eq!(err.host(), Some(&db));
    let message = err.to_string();
    assert!(message.contains(&fingerprint), "{message}");
    assert!(message.contains(&other.fingerprint()), "{message}");
}
