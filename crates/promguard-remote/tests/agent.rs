//! Logging in with the keys of a real ssh-agent, against a real sshd.
//!
//! A test binary of its own: libssh2 reads `SSH_AUTH_SOCK` from the
//! process environment, which a test may only change while no other
//! thread runs.

#[path = "integration/common.rs"]
#[allow(dead_code)]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use promguard_remote::{tcp_connector, Connection, Identity, RemoteError};

use common::{quick_options, SshdFixture};

/// Ends the agent also when the test fails.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agents_key_logs_in_and_an_empty_agent_is_a_clear_error() {
    let sshd = SshdFixture::new().start();
    let socket = sshd.fixture.dir.path().join("agent.sock");
    let _agent = Agent(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent is needed (apt-get install openssh-client)"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "ssh-agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The only thread of this binary's only test.
    std::env::set_var("SSH_AUTH_SOCK", &socket);
    let mut target = sshd.fixture.target();
    target.identity = Identity::Agent;
    let connect = || {
        Connection::connect(
            &target,
            &tcp_connector(Duration::from_secs(5)),
            quick_options(),
        )
    };

    let err = connect().unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err}");
    assert!(
        err.to_string().contains("the ssh-agent holds no key"),
        "{err}"
    );

    let added = Command::new("ssh-add")
        .arg("-q")
        .arg(&sshd.fixture.client_key)
        .env("SSH_AUTH_SOCK", &socket)
        .status()
        .unwrap();
    assert!(added.success());
    let conn = connect().unwrap();
    assert!(conn.exec("true", b"").unwrap().success());
}
