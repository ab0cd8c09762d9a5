//! A real OpenSSH server on 127.0.0.1 in the root namespace for tests, with
//! throwaway host and client keys in a temp dir. It only accepts the
//! fixture's client key and is killed (by PID) when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use promguard_core::{HostName, SshPublicKey};
use promguard_remote::{tcp_connector, ConnectOptions, Connection, SshTarget};

/// Throwaway keys plus a config for sshd, not yet started.
pub struct SshdFixture {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub host_key: SshPublicKey,
    pub client_key: PathBuf,
}

/// A running sshd; killed on drop.
pub struct Sshd {
    child: Child,
    pub fixture: SshdFixture,
}

fn need(program: &str, package: &str) {
    assert!(
        Path::new(program).exists(),
        "{program} is missing; install it with `apt-get install {package}`"
    );
}

fn keygen(path: &Path) {
    let status = Command::new("/usr/bin/ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "promguard-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("running ssh-keygen");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl SshdFixture {
    /// Makes keys and a config; call [`SshdFixture::start`] to run sshd.
    pub fn new() -> Self {
        need("/usr/sbin/sshd", "openssh-server");
        need("/usr/bin/ssh-keygen", "openssh-client");
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the sshd tests need root (sshd refuses to run unprivileged with privilege separation)"
        );
        std::fs::create_dir_all("/run/sshd")
            .expect("creating /run/sshd for sshd's privilege separation");
        let dir = tempfile::tempdir().unwrap();
        let host_key_path = dir.path().join("host_ed25519");
        let client_key = dir.path().join("client_ed25519");
        keygen(&host_key_path);
        keygen(&client_key);
        std::fs::copy(
            dir.path().join("client_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let host_key = SshPublicKey::parse(
            &std::fs::read_to_string(dir.path().join("host_ed25519.pub")).unwrap(),
        )
        .unwrap();
        let port = free_port();
        let d = dir.path().display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nUsePAM no\n\
             StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nAllowTcpForwarding yes\nLogLevel ERROR\n"
        );
        std::fs::write(dir.path().join("sshd_config"), config).unwrap();
        Self {
            dir,
            port,
            host_key,
            client_key,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A target for this server, pinned to its real host key.
    pub fn target(&self) -> SshTarget {
        let mut target = SshTarget::new(
            HostName::new("test-host").unwrap(),
            self.addr(),
            self.client_key.clone(),
        );
        target.expected_host_key = Some(self.host_key.clone());
        target
    }

    /// Starts sshd and waits (at most 10 s) until it accepts connections.
    pub fn start(self) -> Sshd {
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            // sshd -e logs every probe connection; keep it out of the test
            // output but at hand in the temp dir.
            .stderr(std::fs::File::create(self.dir.path().join("sshd.log")).unwrap())
            .spawn()
            .expect("starting /usr/sbin/sshd");
        let sshd = Sshd {
            child,
            fixture: self,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(sshd.fixture.addr()).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }
}

impl Sshd {
    pub fn connect(&self) -> Connection {
        Connection::connect(
            &self.fixture.target(),
            &tcp_connector(Duration::from_secs(5)),
            quick_options(),
        )
        .expect("connecting to the test sshd")
    }
}

pub fn quick_options() -> ConnectOptions {
    ConnectOptions {
        timeout: Duration::from_secs(10),
        retry_for: Duration::from_secs(10),
        command_timeout: Duration::from_secs(60),
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
