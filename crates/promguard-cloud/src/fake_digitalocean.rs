//! A fake DigitalOcean API: a real HTTP server on `127.0.0.1:<ephemeral
//! port>` that answers the requests the [`crate::digitalocean`] provider
//! sends the way the official OpenAPI spec says (shapes, status codes, error
//! bodies, pagination links, rate-limit headers), for tests and for
//! `cargo xtask e2e --fake`. Only built with the `fake-digitalocean` feature.
//!
//! Droplets are made by a [`DropletBackend`]; [`InMemoryBackend`] only hands
//! out addresses, a backend that boots local namespace hosts makes the
//! droplets real. Tests inject faults with [`FakeDigitalOcean::inject`] and
//! read every request and response with [`FakeDigitalOcean::exchanges`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use promguard_cloud::fake_digitalocean::{FakeDigitalOcean, FakeOptions};
//! let fake = FakeDigitalOcean::start(FakeOptions::default()).await?;
//! let (url, token) = (fake.base_url(), fake.token().to_owned());
//! // ... point the provider at `url` with `token` ...
//! fake.stop().await;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use promguard_core::SshPublicKey;
use tokio::sync::oneshot;

mod server;

/// Makes and removes the machines behind droplets.
pub trait DropletBackend: Send + Sync + 'static {
    /// Boots the droplet (blocking; runs on a blocking thread) and returns
    /// its public IPv4 address.
    fn create(&self, droplet: &DropletSpec) -> Result<Ipv4Addr, String>;
    /// Removes the droplet's machine (blocking).
    fn destroy(&self, droplet: &DropletSpec) -> Result<(), String>;
}

/// What a backend gets to boot a droplet.
#[derive(Debug, Clone)]
pub struct DropletSpec {
    /// The droplet's id.
    pub id: u64,
    /// Its name (the host name).
    pub name: String,
    /// Region slug.
    pub region: String,
    /// Cloud-init user data, as sent (see
    /// [`crate::digitalocean::cloud_init::host_key_for`]).
    pub user_data: Option<String>,
    /// The account SSH keys the create request named, for root's
    /// `authorized_keys`.
    pub authorized_keys: Vec<SshPublicKey>,
    /// Its tags.
    pub tags: Vec<String>,
}

/// Addresses from `198.18.0.0/15`, and no machine at all.
#[derive(Debug, Default)]
pub struct InMemoryBackend {
    next: Mutex<u32>,
}

impl DropletBackend for InMemoryBackend {
    fn create(&self, _droplet: &DropletSpec) -> Result<Ipv4Addr, String> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        *next += 1;
        // 198.18.0.0/15 is set aside for benchmarks: it cannot be anyone's host.
        let n = *next;
        Ok(Ipv4Addr::new(
            198,
            18 + ((n >> 16) & 1) as u8,
            (n >> 8) as u8,
            n as u8,
        ))
    }

    fn destroy(&self, _droplet: &DropletSpec) -> Result<(), String> {
        Ok(())
    }
}

/// How the fake behaves.
#[derive(Clone)]
pub struct FakeOptions {
    /// The bearer token it accepts; a random one when `None`.
    pub token: Option<String>,
    /// How long a droplet stays `new` after its machine is up.
    pub active_after: Duration,
    /// How long a destroyed droplet stays listed.
    pub destroy_after: Duration,
    /// The account's droplet limit (a create beyond it gets 422).
    pub droplet_limit: usize,
    /// Requests per window before 429 (`ratelimit-limit`).
    pub rate_limit: u32,
    /// Makes the droplets' machines.
    pub backend: Arc<dyn DropletBackend>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            token: None,
            active_after: Duration::from_millis(300),
            destroy_after: Duration::from_millis(100),
            droplet_limit: 25,
            rate_limit: 5000,
            backend: Arc::new(InMemoryBackend::default()),
        }
    }
}

/// The longest [`Fault::ListingLag`]: the fault models a lag, not a
/// droplet that is never listed.
pub const MAX_LISTING_LAG: Duration = Duration::from_secs(10);

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The next `count` requests get 429 with `retry-after: <seconds>`.
    RateLimit {
        /// How many requests.
        count: u32,
        /// The `retry-after` value.
        retry_after_seconds: u64,
    },
    /// The next `count` requests get 500.
    ServerError {
        /// How many requests.
        count: u32,
    },
    /// The next droplet create makes the droplets and then answers 500.
    CreateSucceedsThenServerError,
    /// The next droplet create makes the droplets and then answers only
    /// after `delay` (longer than the client's timeout).
    CreateSucceedsThenStalls {
        /// How long the answer is held back.
        delay: Duration,
    },
    /// The droplets of the next create are left out of `GET /v2/droplets`
    /// listings until `hidden_for` (at most [`MAX_LISTING_LAG`]) after
    /// they were made, as the real API's listings lag behind creates.
    ListingLag {
        /// How long they stay unlisted.
        hidden_for: Duration,
    },
    /// The droplet with this name stays `new` forever.
    NeverActive {
        /// Droplet name.
        name: String,
    },
    /// The next `count` responses are delayed by `delay`.
    Slow {
        /// How many responses.
        count: u32,
        /// By how much.
        delay: Duration,
    },
}

/// One request and the fake's answer.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// `GET`, `POST`, `DELETE`.
    pub method: String,
    /// The path, e.g. `/v2/droplets`.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The request's JSON body, if any.
    pub request_body: Option<serde_json::Value>,
    /// The status code answered.
    pub status: u16,
    /// The response's JSON body, if any.
    pub response_body: Option<serde_json::Value>,
    /// The response headers (lower-case names).
    pub response_headers: Vec<(String, String)>,
}

/// A droplet as the fake holds it.
#[derive(Debug, Clone)]
pub struct FakeDroplet {
    /// What the backend got.
    pub spec: DropletSpec,
    /// The public address, once the backend booted it.
    pub public_address: Option<Ipv4Addr>,
    /// Whether a destroy was requested.
    pub destroying: bool,
}

/// The running server.
pub struct FakeDigitalOcean {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    runner: Option<Runner>,
}

enum Runner {
    Task(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

impl FakeDigitalOcean {
    /// Starts the server on the current tokio runtime.
    pub async fn start(options: FakeOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(server::Shared::new(options, addr));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::serve(listener, shared.clone(), rx));
        Ok(Self {
            addr,
            shared,
            shutdown: Some(tx),
            runner: Some(Runner::Task(task)),
        })
    }

    /// Starts the server on a thread of its own with its own runtime, for
    /// callers without one (xtask).
    pub fn start_in_thread(options: FakeOptions) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(server::Shared::new(options, addr));
        let (tx, rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-digitalocean".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => server::serve(listener, thread_shared, rx).await,
                        Err(e) => tracing::error!("fake DigitalOcean cannot listen: {e}"),
                    }
                });
            })?;
        Ok(Self {
            addr,
            shared,
            shutdown: Some(tx),
            runner: Some(Runner::Thread(thread)),
        })
    }

    /// `http://127.0.0.1:<port>`, the provider's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token the fake accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        self.shared.inject(fault);
    }

    /// Every request so far and its answer, in order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.world().exchanges.clone()
    }

    /// The droplets that exist (including ones being destroyed).
    pub fn droplets(&self) -> Vec<FakeDroplet> {
        self.shared.world().droplets.values().cloned().collect()
    }

    /// How many droplets were ever created.
    pub fn droplets_created(&self) -> u64 {
        self.shared.world().created
    }

    /// Public keys of the SSH keys on the account.
    pub fn ssh_keys(&self) -> Vec<(String, SshPublicKey)> {
        self.shared
            .world()
            .ssh_keys
            .values()
            .map(|k| (k.name.clone(), k.key.clone()))
            .collect()
    }

    /// Adds an SSH key to the account, as if the user had uploaded it.
    pub fn add_ssh_key(&self, name: &str, key: SshPublicKey) -> u64 {
        self.shared.add_key(name, key)
    }

    /// Names of the account's firewalls.
    pub fn firewalls(&self) -> Vec<String> {
        self.shared
            .world()
            .firewalls
            .iter()
            .map(|f| f.name.clone())
            .collect()
    }

    /// The firewall named `name` as `GET /v2/firewalls` shows it.
    pub fn firewall(&self, name: &str) -> Option<serde_json::Value> {
        self.shared
            .world()
            .firewalls
            .iter()
            .find(|f| f.name == name)
            .map(server::firewall_json)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.runner.take() {
            Some(Runner::Task(task)) => {
                let _ = task.await;
            }
            Some(Runner::Thread(thread)) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            None => {}
        }
    }

    /// Stops the server from synchronous code.
    pub fn stop_blocking(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(Runner::Thread(thread)) = self.runner.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FakeDigitalOcean {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.runner.take() {
            Some(Runner::Task(task)) => task.abort(),
            // Joined, so that the backend's boots still under way have
            // ended when the caller goes on to remove the machines behind
            // the droplets (the thread's runtime waits for them as it
            // drops): a boot that ended later would leave its machine.
            Some(Runner::Thread(thread)) => {
                let _ = thread.join();
            }
            None => {}
        }
    }
}

/// State behind the server's lock.
#[derive(Default)]
struct World {
    next_id: u64,
    created: u64,
    droplets: BTreeMap<u64, FakeDroplet>,
    /// When each droplet's machine was up, by id.
    booted_at: BTreeMap<u64, Instant>,
    /// When each droplet was created (Unix seconds), by id.
    created_at: BTreeMap<u64, u64>,
    /// Droplets whose backend failed.
    failed: BTreeSet<u64>,
    ssh_keys: BTreeMap<u64, AccountKey>,
    firewalls: Vec<server::FirewallRecord>,
    tags: BTreeSet<String>,
    exchanges: Vec<Exchange>,
    never_active: HashSet<String>,
    rate_limited: u32,
    retry_after: u64,
    server_errors: u32,
    slow: u32,
    slow_delay: Duration,
    create_fault: Option<Fault>,
    /// How long the droplets of the next create stay unlisted.
    listing_lag: Option<Duration>,
    /// Until when each lagging droplet stays unlisted, by id.
    unlisted_until: BTreeMap<u64, Instant>,
    remaining: u32,
    window_reset: u64,
}

#[derive(Clone)]
struct AccountKey {
    id: u64,
    name: String,
    key: SshPublicKey,
    fingerprint: String,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// DigitalOcean's fingerprint: MD5 of the key blob, colon-separated hex.
fn md5_fingerprint(key: &SshPublicKey) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(key.blob());
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_fingerprints() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_595_356_664), "2020-07-21T18:37:44Z");
        let key = SshPublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob",
        )
        .unwrap();
        let fp = md5_fingerprint(&key);
        assert_eq!(fp.len(), 47);
        assert_eq!(fp.split(':').count(), 16);
    }
}
