//! The SSH layer: one [`Connection`] per host and run, with host key
//! pinning, command execution, atomic uploads and TCP forwarding.
//!
//! Everything here blocks; async callers run it on
//! `tokio::task::spawn_blocking` (see [`for_each_host`]).
//!
//! After login the session runs in libssh2's non-blocking mode and every
//! operation drives it in a loop that waits on the socket with `poll`.
//! That is what lets one command's stdout and stderr both be drained
//! without deadlock, and several forwarded connections share one session
//! from several threads: ssh2 serialises each library call internally, and
//! no call ever sleeps inside the library while holding that lock.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use promguard_core::{HostName, SshPublicKey};
use ssh2::{BlockDirections, Channel, ErrorCode, MethodType, Session};
use tracing::{debug, warn};

use crate::error::{tail, RemoteError};
use crate::quote::{check_owner, check_remote_path, parent_dir, shell_quote};

/// libssh2's "would block" code (`LIBSSH2_ERROR_EAGAIN`).
const LIBSSH2_ERROR_EAGAIN: i32 = -37;

/// How long one wait for the socket may last before the caller looks at
/// its own channel again. Another thread may have read this thread's data
/// off the shared socket in the meantime, so waits must be short.
const POLL_SLICE_MS: u16 = 20;

/// The most a remote command may print (stdout and stderr together).
pub const MAX_OUTPUT: usize = 16 << 20;

/// Opens the TCP connection to an SSH server. The local provider opens
/// sockets inside a network namespace; [`tcp_connector`] dials directly.
pub type Connector = Arc<dyn Fn(SocketAddr) -> io::Result<TcpStream> + Send + Sync>;

/// A [`Connector`] that dials with `TcpStream::connect_timeout`.
pub fn tcp_connector(timeout: Duration) -> Connector {
    Arc::new(move |addr| TcpStream::connect_timeout(&addr, timeout))
}

/// Where and as whom to log in.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// The host's name, used in every error.
    pub host: HostName,
    /// The SSH server's address.
    pub addr: SocketAddr,
    /// The remote user (`root` for PromGuard's hosts).
    pub user: String,
    /// The pinned host key; `None` means trust on first use: the caller
    /// reads [`Connection::presented_host_key`] and pins it.
    pub expected_host_key: Option<SshPublicKey>,
    /// A second key the host may present instead: the new key of a host
    /// key replacement that was cut off before it was recorded as done.
    pub replacement_host_key: Option<SshPublicKey>,
    /// The private key to log in with.
    pub identity: Identity,
}

/// Which private key logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A private key file (OpenSSH format, as `ssh-keygen` writes it, or
    /// PEM).
    File(PathBuf),
    /// The keys the user's ssh-agent holds (`SSH_AUTH_SOCK`), tried in
    /// turn: the key never leaves the agent.
    Agent,
}

impl From<PathBuf> for Identity {
    fn from(path: PathBuf) -> Self {
        Identity::File(path)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::File(path) => write!(f, "key {}", path.display()),
            Identity::Agent => f.write_str("the keys of the ssh-agent"),
        }
    }
}

impl SshTarget {
    /// A target logging in as `root` with no pinned host key yet.
    pub fn new(host: HostName, addr: SocketAddr, identity: impl Into<Identity>) -> Self {
        Self {
            host,
            addr,
            user: "root".to_owned(),
            expected_host_key: None,
            replacement_host_key: None,
            identity: identity.into(),
        }
    }
}

/// Timeouts of a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Limit for one handshake and login attempt.
    pub timeout: Duration,
    /// How long refused or reset connections are retried (a host that is
    /// still booting), measured from the first attempt.
    pub retry_for: Duration,
    /// Limit for one command, upload or HTTP request (package installs
    /// take minutes).
    pub command_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            retry_for: Duration::from_secs(120),
            command_timeout: Duration::from_secs(900),
        }
    }
}

/// What a remote command did.
#[derive(Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit code; -1 when the command was killed by a signal.
    pub exit_code: i32,
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// True when the exit code is 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

// Output may hold file contents; print sizes only.
impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("exit_code", &self.exit_code)
            .field("stdout_bytes", &self.stdout.len())
            .field("stderr_bytes", &self.stderr.len())
            .finish()
    }
}

/// One logged-in SSH session to one host.
pub struct Connection {
    host: HostName,
    addr: SocketAddr,
    session: Session,
    /// A second handle on the session's socket, used only to wait for
    /// readiness; all protocol traffic goes through libssh2.
    socket: TcpStream,
    presented_host_key: SshPublicKey,
    options: ConnectOptions,
    round_trips: AtomicU64,
    /// The login user: other than root, privileged scripts go through
    /// `sudo -n`.
    user: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why one connection attempt failed.
enum AttemptError {
    /// Worth another try while the host boots.
    Retry(io::Error),
    /// Final (host key mismatch, login refused, ...).
    Fatal(RemoteError),
}

impl Connection {
    /// Connects, verifies the host key and logs in.
    ///
    /// Refused, reset and timed-out connections and failed handshakes are
    /// retried with a backoff from 100 ms to 1 s until
    /// [`ConnectOptions::retry_for`] has passed. A host key other than
    /// [`SshTarget::expected_host_key`] (and
    /// [`SshTarget::replacement_host_key`]) fails at once, naming both
    /// fingerprints.
    pub fn connect(
        target: &SshTarget,
        connector: &Connector,
        options: ConnectOptions,
    ) -> Result<Connection, RemoteError> {
        let deadline = Instant::now() + options.retry_for;
        let mut backoff = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match Self::attempt(target, connector, &options) {
                Ok(conn) => return Ok(conn),
                Err(AttemptError::Fatal(err)) => return Err(err),
                Err(AttemptError::Retry(err)) => {
                    if Instant::now() + backoff >= deadline {
                        return Err(RemoteError::Connect {
                            host: target.host.clone(),
                            addr: target.addr,
                            source: io::Error::new(
                                err.kind(),
                                format!("{err} (gave up after {attempts} attempts)"),
                            ),
                        });
                    }
                    debug!(host = %target.host, %err, "SSH not ready yet, retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn attempt(
        target: &SshTarget,
        connector: &Connector,
        options: &ConnectOptions,
    ) -> Result<Connection, AttemptError> {
        let host = &target.host;
        let tcp = connector(target.addr).map_err(|err| {
            if retryable(&err) {
                AttemptError::Retry(err)
            } else {
                AttemptError::Fatal(RemoteError::Connect {
                    host: host.clone(),
                    addr: target.addr,
                    source: err,
                })
            }
        })?;
        let fatal_io = |source: io::Error| {
            AttemptError::Fatal(RemoteError::Connect {
                host: host.clone(),
                addr: target.addr,
                source,
            })
        };
        tcp.set_nodelay(true).map_err(fatal_io)?;
        let socket = tcp.try_clone().map_err(fatal_io)?;
        let mut session = Session::new().map_err(|e| fatal_io(e.into()))?;
        session.set_tcp_stream(tcp);
        session.set_timeout(u32::try_from(options.timeout.as_millis()).unwrap_or(u32::MAX));
        // Ask for the pinned key's type, so a server with several host keys
        // presents the one we can compare. libssh2 drops names it does not
        // support and fails only if none is left; then its defaults apply
        // and the comparison below still decides.
        let prefs = match &target.expected_host_key {
            Some(key) if key.algorithm() == "ssh-rsa" => "rsa-sha2-512,rsa-sha2-256,ssh-rsa",
            Some(key) => key.algorithm(),
            None => "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa",
        };
        if let Err(err) = session.method_pref(MethodType::HostKey, prefs) {
            debug!(%host, %err, "host key algorithm preference not accepted");
        }
        session
            .handshake()
            .map_err(|e| AttemptError::Retry(io::Error::other(format!("SSH handshake: {e}"))))?;

        let presented = presented_key(&session).map_err(|reason| {
            AttemptError::Fatal(RemoteError::HostKeyUnusable {
                host: host.clone(),
                reason,
            })
        })?;
        if let Some(expected) = &target.expected_host_key {
            if expected != &presented && target.replacement_host_key.as_ref() != Some(&presented) {
                return Err(AttemptError::Fatal(RemoteError::HostKeyMismatch {
                    host: host.clone(),
                    expected: format!("{} {}", expected.algorithm(), expected.fingerprint()),
                    presented: format!("{} {}", presented.algorithm(), presented.fingerprint()),
                }));
            }
        }

        let auth_error = |source: io::Error| {
            AttemptError::Fatal(RemoteError::Auth {
                host: host.clone(),
                user: target.user.clone(),
                identity: target.identity.clone(),
                source,
            })
        };
        if let Identity::File(path) = &target.identity {
            if !path.is_file() {
                return Err(auth_error(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the private key file does not exist",
                )));
            }
        }
        login(&session, &target.user, &target.identity).map_err(auth_error)?;
        if !session.authenticated() {
            return Err(auth_error(io::Error::other(
                "the server did not accept the key",
            )));
        }
        session.set_blocking(false);
        debug!(%host, addr = %target.addr, "SSH session established");
        Ok(Connection {
            host: host.clone(),
            addr: target.addr,
            session,
            socket,
            presented_host_key: presented,
            options: options.clone(),
            round_trips: AtomicU64::new(0),
            user: target.user.clone(),
        })
    }

    /// The host this connection is to.
    pub fn host(&self) -> &HostName {
        &self.host
    }

    /// The host key the server presented (verified against the pinned key,
    /// if there was one). Callers trusting on first use pin this.
    pub fn presented_host_key(&self) -> &SshPublicKey {
        &self.presented_host_key
    }

    /// How many request/response exchanges ([`exec`](Self::exec),
    /// [`upload`](Self::upload), [`http_get`](Self::http_get)) this
    /// connection has made.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Runs `command` through the remote user's shell, feeding it `stdin`,
    /// and collects its whole stdout and stderr, up to [`MAX_OUTPUT`]
    /// bytes together: a host that answers more is broken or hostile, and
    /// must not exhaust this machine's memory. A non-zero exit is not an
    /// error here; see [`exec_checked`](Self::exec_checked).
    pub fn exec(&self, command: &str, stdin: &[u8]) -> Result<Output, RemoteError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let what = summary(command);
        let deadline = Instant::now() + self.options.command_timeout;
        let mut channel = self.retry(&what, deadline, || self.session.channel_session())?;
        self.retry(&what, deadline, || channel.exec(command))?;
        let mut stderr = channel.stderr();
        let (mut stdout_buf, mut stderr_buf) = (Vec::new(), Vec::new());
        let (mut stdout_done, mut stderr_done) = (false, false);
        let mut written = 0;
        let mut stdin_closed = false;
        let mut buf = vec![0u8; 64 * 1024];
        while !(stdout_done && stderr_done) {
            let mut progress = false;
            if !stdin_closed {
                if written < stdin.len() {
                    match channel.write(&stdin[written..]) {
                        Ok(n) => {
                            written += n;
                            progress = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // The command exited without reading all its input;
                        // its exit code and output tell what happened.
                        Err(err) => {
                            debug!(host = %self.host, %err, "remote command stopped reading stdin");
                            stdin_closed = true;
                        }
                    }
                }
                if written == stdin.len() && !stdin_closed {
                    match channel.send_eof() {
                        Ok(()) => {
                            stdin_closed = true;
                            progress = true;
                        }
                        Err(e) if would_block(&e) => {}
                        Err(_) => stdin_closed = true,
                    }
                }
            }
            if !stdout_done {
                match read_some(&mut channel, &mut buf)
                    .map_err(|source| self.exec_error(&what, source))?
                {
                    ReadState::Data(n) => {
                        stdout_buf.extend_from_slice(&buf[..n]);
                        self.check_output(&what, stdout_buf.len() + stderr_buf.len())?;
                        progress = true;
                    }
                    ReadState::Eof => stdout_done = true,
                    ReadState::Blocked => {}
                }
            }
            if !stderr_done {
                let state = match stderr.read(&mut buf) {
                    Ok(0) if channel.eof() => ReadState::Eof,
                    Ok(0) => ReadState::Blocked,
                    Ok(n) => ReadState::Data(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadState::Blocked,
                    Err(source) => return Err(self.exec_error(&what, source)),
                };
                match state {
                    ReadState::Data(n) => {
                        stderr_buf.extend_from_slice(&buf[..n]);
                        self.check_output(&what, stdout_buf.len() + stderr_buf.len())?;
                        progress = true;
                    }
                    ReadState::Eof => stderr_done = true,
                    ReadState::Blocked => {}
                }
            }
            if !progress {
                self.check_deadline(&what, deadline)?;
                self.wait(None);
            }
        }
        self.retry(&what, deadline, || channel.wait_close())?;
        let signal = channel
            .exit_signal()
            .ok()
            .and_then(|s| s.exit_signal)
            .filter(|s| !s.is_empty());
        let exit_code = match signal {
            Some(_) => -1,
            None => channel
                .exit_status()
                .map_err(|e| self.exec_error(&what, e.into()))?,
        };
        Ok(Output {
            exit_code,
            stdout: stdout_buf,
            stderr: stderr_buf,
        })
    }

    fn check_output(&self, what: &str, bytes: usize) -> Result<(), RemoteError> {
        if bytes > MAX_OUTPUT {
            return Err(RemoteError::Protocol {
                host: self.host.clone(),
                what: what.to_owned(),
                reason: format!(
                    "it printed more than {} MiB; PromGuard's commands print far less, so the host is broken or hostile (the command was stopped)",
                    MAX_OUTPUT >> 20
                ),
            });
        }
        Ok(())
    }

    /// The user this connection logged in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Runs the bash script `script` as root: directly when logged in as
    /// root, otherwise through `sudo -n` (never a password prompt). A
    /// refusal by sudo becomes [`RemoteError::Sudo`], saying what to
    /// grant; any other exit is the script's, for the caller to judge.
    pub fn exec_root(&self, what: &str, script: &[u8]) -> Result<Output, RemoteError> {
        if self.user == "root" {
            return self.exec("bash -s", script);
        }
        let output = self.exec("sudo -n -- bash -s", script)?;
        // sudo's own complaints start with its name; it exits 1.
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.exit_code == 1 && stderr.starts_with("sudo: ") {
            return Err(RemoteError::Sudo {
                host: self.host.clone(),
                user: self.user.clone(),
                reason: format!("{what}: {}", stderr.lines().next().unwrap_or("").trim()),
            });
        }
        Ok(output)
    }

    /// [`exec_root`](Self::exec_root), with a non-zero exit becoming
    /// [`RemoteError::CommandFailed`] naming `what`.
    pub fn exec_root_checked(&self, what: &str, script: &[u8]) -> Result<Output, RemoteError> {
        let output = self.exec_root(what, script)?;
        self.checked(what, output)
    }

    /// `output`, or [`RemoteError::CommandFailed`] naming `what` when it
    /// exited non-zero.
    fn checked(&self, what: &str, output: Output) -> Result<Output, RemoteError> {
        if !output.success() {
            return Err(RemoteError::CommandFailed {
                host: self.host.clone(),
                what: what.to_owned(),
                exit_code: output.exit_code,
                stderr_tail: tail(&output.stderr, 2000),
            });
        }
        Ok(output)
    }

    /// Like [`exec`](Self::exec), but a non-zero exit becomes
    /// [`RemoteError::CommandFailed`] naming `what`.
    pub fn exec_checked(
        &self,
        what: &str,
        command: &str,
        stdin: &[u8],
    ) -> Result<Output, RemoteError> {
        let output = self.exec(command, stdin)?;
        self.checked(what, output)
    }

    /// Writes `content` to `path` atomically: into a temporary file in the
    /// same directory (created if missing), which gets `mode` (and `owner`,
    /// `user` or `user:group`) and is then renamed over `path`. Readers see
    /// the old or the new file, never a partial one.
    ///
    /// `path` must pass [`crate::check_remote_path`] and
    /// `owner` [`crate::check_owner`].
    pub fn upload(
        &self,
        path: &str,
        content: &[u8],
        mode: u32,
        owner: Option<&str>,
    ) -> Result<(), RemoteError> {
        let invalid = |what: &str, reason: String| RemoteError::InvalidInput {
            host: self.host.clone(),
            what: what.to_owned(),
            reason,
        };
        check_remote_path(path).map_err(|r| invalid(&format!("upload path {path:?}"), r))?;
        if mode > 0o7777 {
            return Err(invalid(
                &format!("mode {mode:o} for {path}"),
                "a file mode is at most 7777 (octal)".into(),
            ));
        }
        let chown = match owner {
            Some(owner) => {
                check_owner(owner).map_err(|r| invalid(&format!("owner of {path}"), r))?;
                format!("chown -- {} \"$t\"; ", shell_quote(owner))
            }
            None => String::new(),
        };
        let dir = parent_dir(path);
        // umask 022 keeps created directories readable; the content is
        // safe regardless, as mktemp makes the temp file 0600.
        let command = format!(
            "set -e; umask 022; mkdir -p -- {dir}; t=$(mktemp -- {template}); \
             trap 'rm -f -- \"$t\"' EXIT; cat > \"$t\"; chmod {mode:04o} -- \"$t\"; {chown}\
             mv -f -- \"$t\" {path}; trap - EXIT",
            dir = shell_quote(dir),
            template = shell_quote(&format!("{}/.promguard.XXXXXX", dir.trim_end_matches('/'))),
            path = shell_quote(path),
        );
        self.exec_checked(&format!("upload of {path}"), &command, content)?;
        Ok(())
    }

    /// Opens a TCP connection from the remote host to `remote` (an SSH
    /// `direct-tcpip` channel), usable as a blocking `Read + Write` stream.
    pub fn open_direct_tcpip(&self, remote: SocketAddr) -> Result<Tunnel<'_>, RemoteError> {
        let what = format!("forward to {remote}");
        let deadline = Instant::now() + self.options.timeout;
        let host = remote.ip().to_string();
        let channel = self.retry(&what, deadline, || {
            self.session
                .channel_direct_tcpip(&host, remote.port(), None)
        })?;
        Ok(Tunnel {
            conn: self,
            channel,
            remote,
        })
    }

    /// Sends `GET path HTTP/1.0` to `target` as seen from the remote host
    /// (for example Prometheus on `127.0.0.1:9090`), through a
    /// `direct-tcpip` channel, with no local listener. Returns the status
    /// code and body. `path` may carry a query string and must be already
    /// URL-encoded.
    pub fn http_get(&self, target: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), RemoteError> {
        const MAX_RESPONSE: usize = 64 << 20;
        if !path.starts_with('/') || !path.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(RemoteError::InvalidInput {
                host: self.host.clone(),
                what: format!("HTTP path {path:?}"),
                reason:
                    "it must start with '/' and be URL-encoded (no spaces or control characters)"
                        .into(),
            });
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let what = format!("GET http://{target}{path}");
        let mut tunnel = self.open_direct_tcpip(target)?;
        // No half-close after the request: Go's HTTP server (Prometheus)
        // cancels a request whose client has closed its sending side.
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {target}\r\nAccept: */*\r\nUser-Agent: promguard\r\n\r\n"
        );
        tunnel
            .write_all(request.as_bytes())
            .map_err(|source| self.exec_error(&what, source))?;
        let mut response = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tunnel
                .read(&mut buf)
                .map_err(|source| self.exec_error(&what, source))?;
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if response.len() > MAX_RESPONSE {
                return Err(self.protocol(&what, "the response is larger than 64 MiB"));
            }
        }
        drop(tunnel);
        parse_http_response(&response).map_err(|reason| self.protocol(&what, reason))
    }

    fn protocol(&self, what: &str, reason: impl Into<String>) -> RemoteError {
        RemoteError::Protocol {
            host: self.host.clone(),
            what: what.to_owned(),
            reason: reason.into(),
        }
    }

    fn exec_error(&self, what: &str, source: io::Error) -> RemoteError {
        if source.kind() == io::ErrorKind::TimedOut {
            return RemoteError::Timeout {
                host: self.host.clone(),
                what: what.to_owned(),
                after: self.options.command_timeout,
            };
        }
        RemoteError::Exec {
            host: self.host.clone(),
            what: what.to_owned(),
            source,
        }
    }

    fn check_deadline(&self, what: &str, deadline: Instant) -> Result<(), RemoteError> {
        if Instant::now() >= deadline {
            return Err(RemoteError::Timeout {
                host: self.host.clone(),
                what: what.to_owned(),
                after: self.options.command_timeout,
            });
        }
        Ok(())
    }

    /// Repeats a libssh2 call that may answer "would block" until it
    /// succeeds, fails otherwise, or `deadline` passes.
    fn retry<T>(
        &self,
        what: &str,
        deadline: Instant,
        mut op: impl FnMut() -> Result<T, ssh2::Error>,
    ) -> Result<T, RemoteError> {
        loop {
            match op() {
                Ok(value) => return Ok(value),
                Err(e) if would_block(&e) => {
                    self.check_deadline(what, deadline)?;
                    self.wait(None);
                }
                Err(e) => return Err(self.exec_error(what, e.into())),
            }
        }
    }

    /// Waits (briefly) until the SSH socket is ready in the direction
    /// libssh2 last blocked on, or `extra` is ready.
    fn wait(&self, extra: Option<(&TcpStream, PollFlags)>) {
        let mut flags = match self.session.block_directions() {
            BlockDirections::Inbound => PollFlags::POLLIN,
            BlockDirections::Outbound => PollFlags::POLLOUT,
            BlockDirections::Both => PollFlags::POLLIN | PollFlags::POLLOUT,
            BlockDirections::None => PollFlags::POLLIN,
        };
        if flags.is_empty() {
            flags = PollFlags::POLLIN;
        }
        let mut fds = vec![PollFd::new(self.socket.as_fd(), flags)];
        if let Some((stream, flags)) = extra {
            fds.push(PollFd::new(stream.as_fd(), flags));
        }
        // An error (EINTR) only means we look again sooner.
        let _ = poll(&mut fds, PollTimeout::from(POLL_SLICE_MS));
    }
}

/// A TCP connection opened from the remote host through the SSH session
/// ([`Connection::open_direct_tcpip`]). Reads and writes block (up to the
/// connection's command timeout per call).
pub struct Tunnel<'a> {
    conn: &'a Connection,
    channel: Channel,
    remote: SocketAddr,
}

impl std::fmt::Debug for Tunnel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("host", &self.conn.host)
            .field("remote", &self.remote)
            .finish()
    }
}

impl Tunnel<'_> {
    /// Signals end of data to the remote side (TCP half-close).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + self.conn.options.command_timeout;
        loop {
            match self.channel.send_eof() {
                Ok(()) => return Ok(()),
                Err(e) if would_block(&e) => self.wait_until(deadline)?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn wait_until(&self, deadline: Instant) -> io::Result<()> {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no progress on the forward to {}", self.remote),
            ));
        }
        self.conn.wait(None);
        Ok(())
    }
}

impl Read for Tunnel<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = Instant::now() + self.conn.options.command_timeout;
        loop {
            match read_some(&mut self.channel, buf)? {
                ReadState::Data(n) => return Ok(n),
                ReadState::Eof => return Ok(0),
                ReadState::Blocked => self.wait_until(deadline)?,
            }
        }
    }
}

impl Write for Tunnel<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let deadline = Instant::now() + self.conn.options.command_timeout;
        loop {
            match self.channel.write(buf) {
                Ok(0) if !buf.is_empty() => self.wait_until(deadline)?,
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_until(deadline)?,
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + self.conn.options.command_timeout;
        loop {
            match self.channel.flush() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_until(deadline)?,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Tunnel<'_> {
    fn drop(&mut self) {
        // Close politely so libssh2 can free the channel; bounded, since a
        // dead connection must not hang the caller.
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Err(e) = self.channel.close() {
            if !would_block(&e) || Instant::now() >= deadline {
                break;
            }
            self.conn.wait(None);
        }
    }
}

/// Accepts local connections on `listener` and forwards each through its
/// own `direct-tcpip` channel to `remote` as seen from the connection's
/// host (`promguard tunnel`). Runs until accepting fails or the future is
/// dropped; each forwarded connection is pumped on a blocking thread until
/// either side closes it.
pub async fn serve_forward(
    conn: Arc<Connection>,
    listener: tokio::net::TcpListener,
    remote: SocketAddr,
) -> Result<(), RemoteError> {
    loop {
        let (stream, peer) = listener
            .accept()
            .await
            .map_err(|source| RemoteError::Exec {
                host: conn.host.clone(),
                what: format!("accepting a local connection for the forward to {remote}"),
                source,
            })?;
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                warn!(%peer, %err, "cannot take over a forwarded connection");
                continue;
            }
        };
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = pump(&conn, stream, remote) {
                warn!(host = %conn.host, %peer, %err, "forwarded connection ended with an error");
            }
        });
    }
}

/// Copies data both ways between a local socket and a channel to `remote`
/// until both directions are closed.
fn pump(conn: &Connection, local: TcpStream, remote: SocketAddr) -> Result<(), RemoteError> {
    const MAX_BUFFERED: usize = 256 * 1024;
    let what = format!("forward to {remote}");
    local
        .set_nonblocking(true)
        .map_err(|source| conn.exec_error(&what, source))?;
    let mut tunnel = conn.open_direct_tcpip(remote)?;
    let channel = &mut tunnel.channel;
    let (mut to_remote, mut to_local) = (Vec::new(), Vec::new());
    let (mut local_eof, mut remote_eof, mut eof_sent, mut local_shut) =
        (false, false, false, false);
    let mut buf = vec![0u8; 32 * 1024];
    let err = |source: io::Error| conn.exec_error(&what, source);
    while !(eof_sent && local_shut) {
        let mut progress = false;
        if !local_eof && to_remote.len() < MAX_BUFFERED {
            match (&local).read(&mut buf) {
                Ok(0) => {
                    local_eof = true;
                    progress = true;
                }
                Ok(n) => {
                    to_remote.extend_from_slice(&buf[..n]);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
        if !to_remote.is_empty() {
            match channel.write(&to_remote) {
                Ok(n) => {
                    to_remote.drain(..n);
                    progress = progress || n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(err(e)),
            }
        }
        if local_eof && to_remote.is_empty() && !eof_sent {
            match channel.send_eof() {
                Ok(()) => {
                    eof_sent = true;
                    progress = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(err(e.into())),
            }
        }
        if !remote_eof && to_local.len() < MAX_BUFFERED {
            match read_some(channel, &mut buf).map_err(err)? {
                ReadState::Data(n) => {
                    to_local.extend_from_slice(&buf[..n]);
                    progress = true;
                }
                ReadState::Eof => {
                    remote_eof = true;
                    progress = true;
                }
                ReadState::Blocked => {}
            }
        }
        if !to_local.is_empty() {
            match (&local).write(&to_local) {
                Ok(n) => {
                    to_local.drain(..n);
                    progress = progress || n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The local client went away: nothing left to deliver.
                Err(_) => return Ok(()),
            }
        }
        if remote_eof && to_local.is_empty() && !local_shut {
            let _ = local.shutdown(Shutdown::Write);
            local_shut = true;
            progress = true;
        }
        if !progress {
            let mut flags = PollFlags::empty();
            if !local_eof && to_remote.len() < MAX_BUFFERED {
                flags |= PollFlags::POLLIN;
            }
            if !to_local.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            conn.wait(Some((&local, flags)));
        }
    }
    Ok(())
}

/// Runs `f` on every item on tokio's blocking threads, at most `limit` at
/// a time, and returns the results in the order of `items`. A panic in `f`
/// is re-raised here.
pub async fn for_each_host<T, R, F>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    let semaphore = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let f = Arc::new(f);
    let handles: Vec<_> = items
        .into_iter()
        .map(|item| {
            let semaphore = semaphore.clone();
            let f = f.clone();
            tokio::spawn(async move {
                let _permit = semaphore
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                tokio::task::spawn_blocking(move || f(item)).await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        let joined = match handle.await {
            Ok(inner) => inner,
            Err(outer) => Err(outer),
        };
        match joined {
            Ok(result) => results.push(result),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => panic!("a host task was cancelled: {join}"),
        }
    }
    results
}

enum ReadState {
    Data(usize),
    Eof,
    Blocked,
}

/// One non-blocking read of a channel's stdout. libssh2 may return 0
/// without end of file in non-blocking mode, so 0 counts as end of file
/// only when the channel says so.
fn read_some(channel: &mut Channel, buf: &mut [u8]) -> io::Result<ReadState> {
    match channel.read(buf) {
        Ok(0) if channel.eof() => Ok(ReadState::Eof),
        Ok(0) => Ok(ReadState::Blocked),
        Ok(n) => Ok(ReadState::Data(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadState::Blocked),
        Err(e) => Err(e),
    }
}

fn would_block(e: &ssh2::Error) -> bool {
    e.code() == ErrorCode::Session(LIBSSH2_ERROR_EAGAIN)
}

/// Connection errors that mean "not (yet) listening" rather than "wrong".
fn retryable(err: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        err.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | TimedOut
            | WouldBlock
            | Interrupted
    ) {
        return true;
    }
    // A namespace host's bridge or route may appear a moment after its
    // sshd: unreachable is transient while a host boots.
    matches!(
        err.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::EHOSTUNREACH | nix::errno::Errno::ENETUNREACH)
    )
}

/// Public key authentication as `user` with the private key in `identity`.
///
/// Given only a file, libssh2 parses the key twice per login (once for the
/// public key it offers, once to sign), and each time lets OpenSSL 3's
/// PEM decoder try it first, which costs about half a millisecond of CPU
/// before it gives up on OpenSSH's own format. A key in that format (what
/// `ssh-keygen` writes) carries its public key in clear, so it is read
/// from there and handed over with the private key: one parse per login.
/// Any other format goes to libssh2 as a file, as before.
fn login(session: &Session, user: &str, identity: &Identity) -> io::Result<()> {
    let identity = match identity {
        Identity::File(path) => path,
        Identity::Agent => return login_with_agent(session, user),
    };
    let text = std::fs::read_to_string(identity).ok();
    let public = text.as_deref().and_then(openssh_public_key);
    match (text.as_deref(), public) {
        (Some(private), Some(public)) => {
            session.userauth_pubkey_memory(user, Some(&public), private, None)?
        }
        _ => session.userauth_pubkey_file(user, None, identity, None)?,
    }
    Ok(())
}

/// Public key authentication with each key of the user's ssh-agent in
/// turn, until the server accepts one.
fn login_with_agent(session: &Session, user: &str) -> io::Result<()> {
    let mut agent = session.agent()?;
    agent.connect().map_err(|e| {
        io::Error::other(format!(
            "cannot reach an ssh-agent ({e}); start one and `ssh-add` the key, or set ssh.private_key"
        ))
    })?;
    agent.list_identities()?;
    let keys = agent.identities()?;
    if keys.is_empty() {
        return Err(io::Error::other(
            "the ssh-agent holds no key; `ssh-add` the key, or set ssh.private_key",
        ));
    }
    for key in &keys {
        if agent.userauth(user, key).is_ok() {
            let _ = agent.disconnect();
            return Ok(());
        }
    }
    let _ = agent.disconnect();
    Err(io::Error::other(format!(
        "the server accepted none of the ssh-agent's {} key(s)",
        keys.len()
    )))
}

/// The public key (`<algorithm> <base64>`, as in `authorized_keys`) that an
/// OpenSSH private key file (`-----BEGIN OPENSSH PRIVATE KEY-----`) holds
/// in its unencrypted header; `None` for any other text. The header is
/// `openssh-key-v1\0`, the cipher, KDF and KDF options as strings, the
/// number of keys (a u32) and then the first public key blob as a string.
fn openssh_public_key(private: &str) -> Option<String> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    const END: &str = "-----END OPENSSH PRIVATE KEY-----";
    let body = private.trim().strip_prefix(BEGIN)?.strip_suffix(END)?;
    let body: String = body.split_whitespace().collect();
    let bytes = STANDARD.decode(body).ok()?;
    let mut rest = bytes.strip_prefix(b"openssh-key-v1\0")?;
    let (_cipher, _kdf, _kdf_options) = (
        take_string(&mut rest)?,
        take_string(&mut rest)?,
        take_string(&mut rest)?,
    );
    // ssh-keygen writes one key; only the first is used.
    if take_u32(&mut rest)? < 1 {
        return None;
    }
    let blob = take_string(&mut rest)?;
    let algorithm = blob_algorithm(blob)?;
    Some(format!("{algorithm} {}", STANDARD.encode(blob)))
}

/// Takes a big-endian u32 off the front of `rest`.
fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (head, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_be_bytes(*head))
}

/// Takes an SSH string (a u32 length, then that many bytes) off the front
/// of `rest`.
fn take_string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_u32(rest)? as usize;
    if rest.len() < len {
        return None;
    }
    let (value, tail) = rest.split_at(len);
    *rest = tail;
    Some(value)
}

/// The host key the server sent, with its algorithm read from the key
/// blob itself (the SSH wire format starts with the algorithm name).
fn presented_key(session: &Session) -> Result<SshPublicKey, String> {
    let (blob, _kind) = session.host_key().ok_or("the server sent no host key")?;
    let algorithm = blob_algorithm(blob).ok_or("the host key blob is malformed")?;
    SshPublicKey::from_blob(algorithm, blob)
}

fn blob_algorithm(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

/// A short form of a command for error messages: its first line, at most
/// 60 characters.
fn summary(command: &str) -> String {
    let first = command.lines().next().unwrap_or("");
    let mut s: String = first.chars().take(60).collect();
    if s.len() < command.len() {
        s.push_str("...");
    }
    format!("`{s}`")
}

/// Splits an HTTP/1.x response into status code and body.
fn parse_http_response(response: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no end of headers (the connection closed early?)")?;
    let head =
        std::str::from_utf8(&response[..end]).map_err(|_| "the response headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("the status line {status_line:?} is not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("the status line {status_line:?} has no status code"))?;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("transfer-encoding")
                && !value.trim().eq_ignore_ascii_case("identity")
            {
                return Err(format!(
                    "unsupported transfer encoding {:?} in an HTTP/1.0 response",
                    value.trim()
                ));
            }
        }
    }
    Ok((status, response[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses() {
        assert_eq!(
            parse_http_response(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello\r\n\r\n"
            )
            .unwrap(),
            (200, b"hello\r\n\r\n".to_vec())
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap(),
            (404, vec![])
        );
        for bad in [
            &b""[..],
            b"HTTP/1.0 200 OK\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.0 abc\r\n\r\n",
            b"HTTP/1.0 999 x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                parse_http_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn blob_algorithms() {
        let key = SshPublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob",
        )
        .unwrap();
        assert_eq!(blob_algorithm(&key.blob()), Some("ssh-ed25519"));
        assert_eq!(blob_algorithm(&[0, 0, 0, 9, b'a']), None);
        assert_eq!(blob_algorithm(&[0, 0]), None);
    }

    /// The public key read from an OpenSSH private key file is the one
    /// ssh-keygen writes next to it; other text gives none.
    #[test]
    fn public_keys_of_openssh_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, bits) in [
            ("ed25519", None),
            ("ecdsa", Some("256")),
            ("rsa", Some("2048")),
        ] {
            let path = dir.path().join(format!("id_{kind}"));
            let mut cmd = std::process::Command::new("ssh-keygen");
            cmd.args(["-q", "-t", kind, "-N", "", "-C", "test", "-f"])
                .arg(&path);
            if let Some(bits) = bits {
                cmd.args(["-b", bits]);
            }
            assert!(cmd
                .status()
                .expect("ssh-keygen is needed for this test")
                .success());
            let private = std::fs::read_to_string(&path).unwrap();
            let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            let expected: Vec<&str> = public.split_whitespace().take(2).collect();
            assert_eq!(
                openssh_public_key(&private).as_deref(),
                Some(expected.join(" ").as_str()),
                "{kind}"
            );
            // Cut anywhere in its body, it is no key at all.
            let lines: Vec<&str> = private.lines().collect();
            let cut = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[lines.len() - 1]);
            assert_eq!(openssh_public_key(&cut), None, "{kind}");
        }
        for other in [
            "",
            "-----BEGIN OPENSSH PRIVATE KEY-----\n-----END OPENSSH PRIVATE KEY-----\n",
            "-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n-----END OPENSSH PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
        ] {
            assert_eq!(openssh_public_key(other), None, "{other:?}");
        }
    }

    #[test]
    fn summaries() {
        assert_eq!(summary("true"), "`true`");
        assert_eq!(summary("bash -s\nsecond"), "`bash -s...`");
        assert_eq!(summary(&"x".repeat(100)).len(), 60 + 5);
    }

    #[test]
    fn retryable_errors() {
        assert!(retryable(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
        assert!(retryable(&io::Error::from_raw_os_error(
            nix::libc::EHOSTUNREACH
        )));
        assert!(!retryable(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
    }
}
