//! The SSH layer against a real sshd.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use promguard_core::SshPublicKey;
use promguard_remote::{tcp_connector, Connection, RemoteError};

use crate::common::{quick_options, SshdFixture};

#[test]
fn exec_reports_exit_code_stdout_and_stderr() {
    let sshd = SshdFixture::new().start();
    let conn = sshd.connect();
    let out = conn
        .exec("cat; echo to-stderr >&2; exit 3", b"from stdin\n")
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    let ok = conn.exec("true", b"").unwrap();
    assert!(ok.success());
    assert_eq!(conn.round_trips(), 2);

    let err = conn
        .exec_checked("the failing step", "echo boom >&2; exit 7", b"")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RemoteError::CommandFailed { exit_code: 7, .. }),
        "{msg}"
    );
    assert_eq!(
        msg,
        "the failing step failed on test-host with exit code 7: boom"
    );
}

#[test]
fn large_output_on_both_streams_does_not_deadlock() {
    let sshd = SshdFixture::new().start();
    let conn = sshd.connect();
    // 4 MiB on each stream, interleaved, and 2 MiB of input echoed back:
    // more than any SSH window, so a reader that drains one stream at a
    // time would hang.
    let input: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let out = conn
        .exec(
            "for i in 1 2 3 4; do head -c 1048576 /dev/zero; head -c 1048576 /dev/zero | tr '\\0' e >&2; done; cat",
            &input,
        )
        .unwrap();
    assert!(
        out.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr[..100.min(out.stderr.len())])
    );
    assert_eq!(out.stdout.len(), 4 * 1024 * 1024 + input.len());
    assert_eq!(&out.stdout[4 * 1024 * 1024..], &input[..]);
    assert_eq!(out.stderr.len(), 4 * 1024 * 1024);
    assert!(out.stderr.iter().all(|&b| b == b'e'));
}

// Regression: a compromised host could exhaust the operator's memory with
// endless output.
#[test]
fn endless_output_is_cut_off_with_a_clear_error() {
    let sshd = SshdFixture::new().start();
    let conn = sshd.connect();
    let err = conn.exec("cat /dev/zero", b"").unwrap_err();
    assert!(matches!(err, RemoteError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("more than 16 MiB"), "{err}");
    let err = conn.exec("cat /dev/zero >&2", b"").unwrap_err();
    assert!(err.to_string().contains("more than 16 MiB"), "{err}");
    // The connection still works.
    assert!(conn.exec("true", b"").unwrap().success());
}

#[test]
fn upload_is_atomic_with_mode() {
    let sshd = SshdFixture::new().start();
    let conn = sshd.connect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/secret.conf");
    let path_str = path.to_str().unwrap();
    conn.upload(path_str, b"first\n", 0o600, None).unwrap();
    conn.upload(path_str, b"second\n", 0o600, Some("root"))
        .unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["secret.conf"]);

    for bad in [
        "relative",
        "/tmp/../etc/passwd",
        "/tmp/$(touch x)",
        "/tmp/a b",
    ] {
        let err = conn.upload(bad, b"x", 0o600, None).unwrap_err();
        assert!(
            matches!(err, RemoteError::InvalidInput { .. }),
            "{bad}: {err}"
        );
    }
    let err = conn
        .upload(path_str, b"x", 0o600, Some("root;id"))
        .unwrap_err();
    assert!(matches!(err, RemoteError::InvalidInput { .. }), "{err}");
    // Refused inputs cost no round trip.
    assert_eq!(conn.round_trips(), 2);
}

#[test]
fn host_key_mismatch_is_a_hard_error_with_both_fingerprints() {
    let sshd = SshdFixture::new().start();
    let mut target = sshd.fixture.target();
    let other = SshPublicKey::parse(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob",
    )
    .unwrap();
    target.expected_host_key = Some(other.clone());
    let started = std::time::Instant::now();
    let err = Connection::connect(
        &target,
        &tcp_connector(Duration::from_secs(5)),
        quick_options(),
    )
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a mismatch must not be retried"
    );
    let msg = err.to_string();
    assert!(matches!(err, RemoteError::HostKeyMismatch { .. }), "{msg}");
    assert!(msg.contains("test-host"), "{msg}");
    assert!(msg.contains(&other.fingerprint()), "{msg}");
    assert!(msg.contains(&sshd.fixture.host_key.fingerprint()), "{msg}");
}

/// A host whose key replacement was cut off may present the recorded new
/// key instead of the pinned one; any third key is still refused.
#[test]
fn the_replacement_key_is_accepted_and_nothing_else() {
    let sshd = SshdFixture::new().start();
    let mut target = sshd.fixture.target();
    let other = SshPublicKey::parse(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob",
    )
    .unwrap();
    target.expected_host_key = Some(other.clone());
    target.replacement_host_key = Some(sshd.fixture.host_key.clone());
    let connector = tcp_connector(Duration::from_secs(5));
    let conn = Connection::connect(&target, &connector, quick_options()).unwrap();
    assert_eq!(conn.presented_host_key(), &sshd.fixture.host_key);
    target.replacement_host_key = Some(other);
    let err = Connection::connect(&target, &connector, quick_options()).unwrap_err();
    assert!(matches!(err, RemoteError::HostKeyMismatch { .. }), "{err}");
}

#[test]
fn trust_on_first_use_returns_the_presented_key() {
    let sshd = SshdFixture::new().start();
    let mut target = sshd.fixture.target();
    target.expected_host_key = None;
    let conn = Connection::connect(
        &target,
        &tcp_connector(Duration::from_secs(5)),
        quick_options(),
    )
    .unwrap();
    assert_eq!(conn.presented_host_key(), &sshd.fixture.host_key);
}

#[test]
fn wrong_client_key_is_an_auth_error() {
    let sshd = SshdFixture::new().start();
    let mut target = sshd.fixture.target();
    target.identity = sshd.fixture.dir.path().join("host_ed25519").into();
    let err = Connection::connect(
        &target,
        &tcp_connector(Duration::from_secs(5)),
        quick_options(),
    )
    .unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("host_ed25519"), "{err}");
}

#[test]
fn connect_retries_until_sshd_listens() {
    let fixture = SshdFixture::new();
    let target = fixture.target();
    let connecting = std::thread::spawn(move || {
        Connection::connect(
            &target,
            &tcp_connector(Duration::from_secs(5)),
            quick_options(),
        )
        .map(|conn| conn.exec("echo up", b"").unwrap().stdout)
    });
    std::thread::sleep(Duration::from_millis(700));
    let _sshd = fixture.start();
    assert_eq!(connecting.join().unwrap().unwrap(), b"up\n");
}

#[test]
fn connect_gives_up_after_retry_for() {
    let fixture = SshdFixture::new();
    let mut options = quick_options();
    options.retry_for = Duration::from_millis(500);
    let err = Connection::connect(
        &fixture.target(),
        &tcp_connector(Duration::from_secs(1)),
        options,
    )
    .unwrap_err();
    assert!(matches!(err, RemoteError::Connect { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("cannot connect to test-host at 127.0.0.1:"),
        "{err}"
    );
}

/// A one-request-per-connection HTTP server on 127.0.0.1 that answers with
/// the request line it received, so a test sees what was sent.
fn tiny_http_server(requests: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        for _ in 0..requests {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "client closed before the end of the request");
                request.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap()
                .to_owned();
            let body = format!("you asked: {line}");
            write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    (addr, handle)
}

#[test]
fn http_get_through_direct_tcpip() {
    let sshd = SshdFixture::new().start();
    let conn = sshd.connect();
    let (addr, server) = tiny_http_server(2);
    let (status, body) = conn.http_get(addr, "/api/v1/query?query=up").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "you asked: GET /api/v1/query?query=up HTTP/1.0"
    );
    let (status, _) = conn.http_get(addr, "/-/ready").unwrap();
    assert_eq!(status, 200);
    server.join().unwrap();
    assert_eq!(conn.round_trips(), 2);
    let err = conn.http_get(addr, "/a b\r\nX: y").unwrap_err();
    assert!(matches!(err, RemoteError::InvalidInput { .. }), "{err}");
}

#[test]
fn serve_forward_pipes_local_connections() {
    let sshd = SshdFixture::new().start();
    let conn = Arc::new(sshd.connect());
    let (remote, server) = tiny_http_server(3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let forward = tokio::spawn(promguard_remote::serve_forward(
            conn.clone(),
            listener,
            remote,
        ));
        let clients = (0..3).map(|i| {
            tokio::task::spawn_blocking(move || {
                let mut stream = std::net::TcpStream::connect(local).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                write!(stream, "GET /{i} HTTP/1.0\r\n\r\n").unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                response
            })
        });
        for (i, client) in clients.enumerate() {
            let response = client.await.unwrap();
            assert!(response.starts_with("HTTP/1.0 200 OK"), "{response}");
            assert!(
                response.ends_with(&format!("you asked: GET /{i} HTTP/1.0")),
                "{response}"
            );
        }
        forward.abort();
    });
    server.join().unwrap();
}

#[test]
fn for_each_host_keeps_order_and_limit() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let results = runtime.block_on(promguard_remote::for_each_host(
        (0..8).collect(),
        3,
        move |i: u32| {
            let now = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            r.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            i * 10
        },
    ));
    assert_eq!(results, (0..8).map(|i| i * 10).collect::<Vec<_>>());
    assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
}
