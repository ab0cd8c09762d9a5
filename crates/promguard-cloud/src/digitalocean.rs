//! The DigitalOcean provider: droplets made through the v2 API with a
//! personal access token.
//!
//! Every resource it makes carries the tags `promguard` and
//! `promguard:<deployment>` (droplets also `promguard:<role>`), or the name
//! `promguard-<deployment>` (SSH key, Cloud Firewall), so that `down` finds
//! everything again from the API alone. Droplets get an SSH host key that
//! PromGuard generated ([`cloud_init`]), so the first connection is verified.
//!
//! ```no_run
//! # async fn demo() -> Result<(), promguard_cloud::CloudError> {
//! use promguard_cloud::digitalocean::{DigitalOceanProvider, Token};
//! use promguard_cloud::CloudProvider;
//! let deployment = promguard_core::DeploymentName::new("demo").unwrap();
//! let provider = DigitalOceanProvider::builder(deployment, Token::new("dop_v1_..."))
//!     .firewall(Some(51820))
//!     .build()?;
//! provider.preflight().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use promguard_core::config::Config;
use promguard_core::{
    Capabilities, DeploymentName, HostKeys, HostName, Lifecycle, Programs, Region, Role,
    SshPublicKey,
};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::{CloudError, CloudProvider, Host, HostRequest};

mod api;
pub mod cloud_init;

use api::{Api, ApiError, Repeat};
pub use cloud_init::FirstBoot;
use cloud_init::HostKeyPair;

/// The real API.
pub const DEFAULT_BASE_URL: &str = "https://api.digitalocean.com";
/// Droplets per create request, as the API allows.
pub const MAX_NAMES_PER_REQUEST: usize = 10;
const PROVIDER: &str = "digitalocean";

/// A DigitalOcean API token. `Debug` never shows it, and no message of this
/// crate contains it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token; surrounding whitespace is dropped.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }

    /// The first of `values` (say, the variables `DIGITALOCEAN_TOKEN` and
    /// `DIGITALOCEAN_ACCESS_TOKEN`, as `doctl` reads them) that is set and
    /// not blank; the caller reads the environment, this crate never does.
    pub fn first_of(values: impl IntoIterator<Item = Option<String>>) -> Result<Self, CloudError> {
        values
            .into_iter()
            .flatten()
            .find(|v| !v.trim().is_empty())
            .map(Self::new)
            .ok_or_else(|| CloudError::Missing {
                provider: PROVIDER,
                what: "no API token: neither DIGITALOCEAN_TOKEN nor DIGITALOCEAN_ACCESS_TOKEN is set".into(),
                fix: "create a personal access token with read and write scope at https://cloud.digitalocean.com/account/api/tokens and export DIGITALOCEAN_TOKEN=<token>".into(),
            })
    }

    /// The secret itself, for the `Authorization` header only.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Time limits and retry pacing. The defaults suit the real API; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Per-request timeout (connect and whole response).
    pub request_timeout: Duration,
    /// Attempts per request for 429, 5xx and connection errors.
    pub max_attempts: u32,
    /// First wait after a 5xx or connection error; doubles each time.
    pub retry_backoff: Duration,
    /// Upper bound of the doubling waits.
    pub max_backoff: Duration,
    /// Longest wait for a rate limit to reset.
    pub max_rate_wait: Duration,
    /// First wait between polls for `active`; doubles up to `max_backoff`.
    pub poll_interval: Duration,
    /// How long droplets may take to become `active` (and to disappear
    /// after a destroy).
    pub active_timeout: Duration,
}

impl Timing {
    /// Short waits for a fake API on this machine that answers at once.
    pub fn fast() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            max_attempts: 8,
            retry_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            max_rate_wait: Duration::from_secs(10),
            poll_interval: Duration::from_millis(200),
            // The fake's droplets are systemd containers booting on this
            // machine: beside other scenarios' boots (`xtask test` runs
            // two lanes), eight at once have taken over 20 s.
            active_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_attempts: 6,
            retry_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15),
            max_rate_wait: Duration::from_secs(120),
            poll_interval: Duration::from_secs(2),
            active_timeout: Duration::from_secs(300),
        }
    }
}

/// Builds a [`DigitalOceanProvider`].
#[derive(Debug)]
pub struct DigitalOceanBuilder {
    deployment: DeploymentName,
    token: Token,
    base_url: String,
    size: String,
    image: String,
    login_key: Option<SshPublicKey>,
    firewall_wireguard_port: Option<u16>,
    ssh_port: u16,
    page_size: u32,
    timing: Timing,
    first_boot: HashMap<Role, FirstBoot>,
    ssh_netns: Option<std::path::PathBuf>,
}

impl DigitalOceanBuilder {
    /// Test only: open SSH connections to droplets from inside the network
    /// namespace at `path` (the fake API's droplets are local hosts whose
    /// addresses are routed only there).
    pub fn ssh_from_netns(mut self, path: std::path::PathBuf) -> Self {
        self.ssh_netns = Some(path);
        self
    }

    /// What droplets of `role` install on their first boot (cloud-init's
    /// `packages`), so that the first converge finds them present; the
    /// caller says which, as this crate knows nothing of what runs on a
    /// host.
    pub fn first_boot(mut self, role: Role, first_boot: FirstBoot) -> Self {
        self.first_boot.insert(role, first_boot);
        self
    }

    /// The API's base URL (default [`DEFAULT_BASE_URL`]); plain `http` only
    /// for `127.0.0.1`, as the fake API uses.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Droplet size slug (default `s-1vcpu-1gb`).
    pub fn size(mut self, size: impl Into<String>) -> Self {
        self.size = size.into();
        self
    }

    /// Image slug (default `debian-12-x64`, the image PromGuard is tested on).
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = image.into();
        self
    }

    /// The login key to register before creating droplets; the same as
    /// calling [`CloudProvider::register_ssh_key`] later.
    pub fn login_key(mut self, key: SshPublicKey) -> Self {
        self.login_key = Some(key);
        self
    }

    /// `Some(port)`: make a Cloud Firewall for the deployment's tag that lets
    /// in only SSH and WireGuard on `port`/udp (the default, with 51820).
    /// `None`: no firewall.
    pub fn firewall(mut self, wireguard_port: Option<u16>) -> Self {
        self.firewall_wireguard_port = wireguard_port;
        self
    }

    /// The SSH port droplets listen on and the firewall lets in (default
    /// 22).
    pub fn ssh_port(mut self, port: u16) -> Self {
        self.ssh_port = port;
        self
    }

    /// Items per page when listing (1..=200, default 200); tests use small
    /// pages to exercise pagination.
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.clamp(1, 200);
        self
    }

    /// Retry pacing and time limits.
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Builds the provider; fails only on a base URL that would expose the token.
    pub fn build(self) -> Result<DigitalOceanProvider, CloudError> {
        let api = Api::new(&self.base_url, self.token, self.timing.clone()).map_err(|e| {
            CloudError::Deployment {
                deployment: self.deployment.clone(),
                message: e,
            }
        })?;
        Ok(DigitalOceanProvider {
            deployment: self.deployment,
            api,
            size: self.size,
            image: self.image,
            firewall_wireguard_port: self.firewall_wireguard_port,
            ssh_port: self.ssh_port,
            page_size: self.page_size,
            timing: self.timing,
            first_boot: self.first_boot,
            ssh_netns: self.ssh_netns,
            state: Mutex::new(State {
                login_key: self.login_key,
                ..State::default()
            }),
        })
    }
}

/// Makes the SSH host key pair to inject into droplet `name`.
async fn generate_pair(name: &HostName) -> Result<HostKeyPair, CloudError> {
    HostKeyPair::generate(&format!("promguard-{name}"))
        .await
        .map_err(|message| CloudError::Host {
            host: name.clone(),
            message,
        })
}

/// What the provider learned in this process.
#[derive(Default)]
struct State {
    /// The key to register, until it is registered.
    login_key: Option<SshPublicKey>,
    /// The API id of the registered login key.
    login_key_id: Option<u64>,
    /// Host keys generated for droplets, by name.
    host_keys: HashMap<HostName, SshPublicKey>,
    /// Key pairs made by `prepare_host_keys`, which the next create of
    /// these names must inject (their public halves are recorded already).
    prepared: HashMap<HostName, HostKeyPair>,
    /// Droplets `create_hosts` waited for in vain (still without an
    /// address, or in a state other than `active`): it reported them, so
    /// `list_hosts` does not wait for their address again.
    given_up: HashSet<u64>,
}

/// Droplets on DigitalOcean.
pub struct DigitalOceanProvider {
    deployment: DeploymentName,
    api: Api,
    size: String,
    image: String,
    firewall_wireguard_port: Option<u16>,
    ssh_port: u16,
    page_size: u32,
    timing: Timing,
    first_boot: HashMap<Role, FirstBoot>,
    state: Mutex<State>,
    /// Test only: where SSH connections are opened.
    ssh_netns: Option<std::path::PathBuf>,
}

impl fmt::Debug for DigitalOceanProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOceanProvider")
            .field("deployment", &self.deployment)
            .field("base_url", &self.api.base())
            .field("token", &"<redacted>")
            .field("size", &self.size)
            .field("image", &self.image)
            .field("firewall_wireguard_port", &self.firewall_wireguard_port)
            .finish()
    }
}

// ---- JSON shapes of the API (only the fields we read) ----

#[derive(Deserialize)]
struct DropletJson {
    id: u64,
    name: String,
    status: String,
    #[serde(default)]
    tags: Vec<String>,
    region: RegionJson,
    networks: NetworksJson,
}

#[derive(Deserialize)]
struct RegionJson {
    slug: String,
}

#[derive(Deserialize)]
struct NetworksJson {
    #[serde(default)]
    v4: Vec<NetworkV4Json>,
}

#[derive(Deserialize)]
struct NetworkV4Json {
    ip_address: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
struct LinksJson {
    #[serde(default)]
    pages: Option<PagesJson>,
}

#[derive(Deserialize, Default)]
struct PagesJson {
    next: Option<String>,
}

#[derive(Deserialize)]
struct DropletsPage {
    droplets: Vec<DropletJson>,
    #[serde(default)]
    links: LinksJson,
}

#[derive(Deserialize)]
struct SshKeyJson {
    id: u64,
    name: String,
    public_key: String,
}

#[derive(Deserialize)]
struct SshKeysPage {
    ssh_keys: Vec<SshKeyJson>,
    #[serde(default)]
    links: LinksJson,
}

#[derive(Deserialize)]
struct SshKeyReply {
    ssh_key: SshKeyJson,
}

#[derive(Deserialize)]
struct FirewallJson {
    id: String,
    name: String,
    #[serde(default)]
    inbound_rules: Vec<FirewallRuleJson>,
}

#[derive(Deserialize)]
struct FirewallRuleJson {
    protocol: String,
    #[serde(default)]
    ports: String,
}

#[derive(Deserialize)]
struct FirewallsPage {
    firewalls: Vec<FirewallJson>,
    #[serde(default)]
    links: LinksJson,
}

/// A droplet we understood and accepted.
struct Droplet {
    id: u64,
    name: HostName,
    status: String,
    role: Option<Role>,
    region: Region,
    public_v4: Option<Ipv4Addr>,
}

impl DigitalOceanProvider {
    /// Starts a builder with the real API and the defaults.
    pub fn builder(deployment: DeploymentName, token: Token) -> DigitalOceanBuilder {
        DigitalOceanBuilder {
            deployment,
            token,
            base_url: DEFAULT_BASE_URL.to_owned(),
            size: "s-1vcpu-1gb".to_owned(),
            image: "debian-12-x64".to_owned(),
            login_key: None,
            firewall_wireguard_port: Some(51820),
            ssh_port: 22,
            page_size: 200,
            first_boot: HashMap::new(),
            timing: Timing::default(),
            ssh_netns: None,
        }
    }

    /// A builder set up from a config: deployment, size, image, firewall
    /// with the config's WireGuard port, SSH port.
    pub fn builder_from_config(config: &Config, token: Token) -> DigitalOceanBuilder {
        Self::builder(config.deployment.clone(), token)
            .size(config.digitalocean.size.clone())
            .image(config.digitalocean.image.clone())
            .firewall(
                config
                    .digitalocean
                    .firewall
                    .then_some(config.wireguard_port.get()),
            )
            .ssh_port(config.ssh.port.get())
    }

    /// `promguard:<deployment>`, the tag every droplet of the deployment has.
    pub fn deployment_tag(&self) -> String {
        format!("promguard:{}", self.deployment)
    }

    /// `promguard-<deployment>`: the name of the SSH key and firewall we make.
    pub fn resource_name(&self) -> String {
        format!("promguard-{}", self.deployment)
    }

    fn fail(&self, error: impl fmt::Display) -> CloudError {
        CloudError::Deployment {
            deployment: self.deployment.clone(),
            message: error.to_string(),
        }
    }

    /// Follows `links.pages.next` from `first`, collecting every page.
    async fn pages<P, T>(
        &self,
        first: String,
        what: &str,
        split: impl Fn(P) -> (Vec<T>, LinksJson),
    ) -> Result<Vec<T>, ApiError>
    where
        P: serde::de::DeserializeOwned,
    {
        let mut items = Vec::new();
        let mut url = self.api.url(&first, what)?;
        // A bound against a server that links pages in a circle.
        for _ in 0..1000 {
            let reply = self
                .api
                .send(Method::GET, &url, None, Repeat::Idempotent, what)
                .await?;
            let (mut page, links) = split(reply.json::<P>(what)?);
            items.append(&mut page);
            match links.pages.and_then(|p| p.next) {
                Some(next) => url = self.api.url(&next, what)?,
                None => return Ok(items),
            }
        }
        Err(ApiError::Invalid {
            what: what.to_owned(),
            message: "more than 1000 pages".into(),
        })
    }

    async fn list_droplets(&self) -> Result<Vec<Droplet>, ApiError> {
        Ok(self.list_tagged().await?.0)
    }

    /// The deployment's droplets, and the ids of droplets that carry its
    /// tag but whose name is no PromGuard host name (made by hand, or by
    /// another tool that reused the tag). Those are skipped with a warning:
    /// one stray droplet must not stop `up` or `down` from handling the
    /// deployment's own.
    async fn list_tagged(&self) -> Result<(Vec<Droplet>, Vec<u64>), ApiError> {
        let what = "list the deployment's droplets";
        let raw = self
            .pages(
                format!(
                    "/v2/droplets?tag_name={}&per_page={}",
                    self.deployment_tag(),
                    self.page_size
                ),
                what,
                |p: DropletsPage| (p.droplets, p.links),
            )
            .await?;
        let tag = self.deployment_tag();
        let mut droplets = Vec::new();
        let mut skipped = Vec::new();
        for d in raw {
            // The filter is the server's; check it, the answer is untrusted.
            if !d.tags.contains(&tag) {
                continue;
            }
            if let Err(e) = HostName::new(&d.name) {
                tracing::warn!(
                    droplet = d.id,
                    name = %api::clean(&d.name),
                    "droplet {} carries the tag {tag} but its name {:?} is no PromGuard host name ({e}); PromGuard leaves it alone: remove the tag or the droplet if it belongs to no deployment",
                    d.id,
                    api::clean(&d.name),
                );
                skipped.push(d.id);
                continue;
            }
            droplets.push(Self::accept(d, what)?);
        }
        Ok((droplets, skipped))
    }

    /// Validates a droplet from the API.
    fn accept(d: DropletJson, what: &str) -> Result<Droplet, ApiError> {
        let invalid = |message: String| ApiError::Invalid {
            what: what.to_owned(),
            message,
        };
        let name = HostName::new(&d.name).map_err(|e| {
            invalid(format!(
                "droplet {} has the name {:?}, which is no valid host name: {e}",
                d.id,
                api::clean(&d.name)
            ))
        })?;
        let region = Region::new(&d.region.slug)
            .map_err(|e| invalid(format!("droplet {name} has an invalid region: {e}")))?;
        let role = if d.tags.iter().any(|t| t == "promguard:monitor") {
            Some(Role::Monitor)
        } else if d.tags.iter().any(|t| t == "promguard:node") {
            Some(Role::Node)
        } else if d.tags.iter().any(|t| t == "promguard:storage") {
            Some(Role::Storage)
        } else {
            None
        };
        let mut public_v4 = None;
        for net in d.networks.v4.iter().filter(|n| n.kind == "public") {
            let ip: Ipv4Addr = net.ip_address.parse().map_err(|_| {
                invalid(format!(
                    "droplet {name} has the public address {:?}, which is no IPv4 address",
                    api::clean(&net.ip_address)
                ))
            })?;
            if ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.is_link_local()
            {
                return Err(invalid(format!(
                    "droplet {name} has the public address {ip}, which cannot be a host's"
                )));
            }
            public_v4.get_or_insert(ip);
        }
        Ok(Droplet {
            id: d.id,
            name,
            status: api::clean(&d.status),
            role,
            region,
            public_v4,
        })
    }

    fn to_host(&self, d: &Droplet, host_keys: &HashMap<HostName, SshPublicKey>) -> Option<Host> {
        let ip = IpAddr::V4(d.public_v4?);
        Some(Host {
            name: d.name.clone(),
            role: d.role,
            region: d.region.clone(),
            id: d.id.to_string(),
            public_address: ip,
            ssh: SocketAddr::new(ip, self.ssh_port),
            ssh_host_key: host_keys.get(&d.name).cloned(),
        })
    }

    /// Registers `key`, or finds it on the account when the API says it is
    /// there already (422). Returns its id.
    async fn ensure_key(&self, key: &SshPublicKey) -> Result<u64, ApiError> {
        let body = json!({ "name": self.resource_name(), "public_key": key.to_string() });
        let what = "register the SSH login key";
        let url = self.api.url("/v2/account/keys", what)?;
        match self
            .api
            .send(
                Method::POST,
                &url,
                Some(&body),
                Repeat::OnlyIfRejected,
                what,
            )
            .await
        {
            Ok(reply) => {
                let created: SshKeyReply = reply.json(what)?;
                if !same_key(&created.ssh_key.public_key, key) {
                    return Err(ApiError::Invalid {
                        what: what.into(),
                        message: "the registered key is not the one sent".into(),
                    });
                }
                Ok(created.ssh_key.id)
            }
            // A duplicate (422), or a create that may have happened: look again.
            Err(
                e @ (ApiError::Refused { status: 422, .. }
                | ApiError::Server { .. }
                | ApiError::Transport { .. }),
            ) => match self.find_key(key).await? {
                Some(id) => Ok(id),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn find_key(&self, key: &SshPublicKey) -> Result<Option<u64>, ApiError> {
        let keys = self
            .pages(
                format!("/v2/account/keys?per_page={}", self.page_size),
                "list the account's SSH keys",
                |p: SshKeysPage| (p.ssh_keys, p.links),
            )
            .await?;
        Ok(keys
            .into_iter()
            .find(|k| same_key(&k.public_key, key))
            .map(|k| k.id))
    }

    async fn list_firewalls(&self) -> Result<Vec<FirewallJson>, ApiError> {
        let name = self.resource_name();
        Ok(self
            .pages(
                format!("/v2/firewalls?per_page={}", self.page_size),
                "list the account's Cloud Firewalls",
                |p: FirewallsPage| (p.firewalls, p.links),
            )
            .await?
            .into_iter()
            .filter(|f| f.name == name)
            .collect())
    }

    /// The inbound rules the deployment's firewall must have: SSH on
    /// `ssh_port`/tcp and WireGuard on `wireguard_port`/udp, from anywhere.
    fn inbound_ports(&self, wireguard_port: u16) -> [(&'static str, String); 2] {
        [
            ("tcp", self.ssh_port.to_string()),
            ("udp", wireguard_port.to_string()),
        ]
    }

    /// The whole firewall as POST and PUT take it (a PUT resets whatever it
    /// leaves out, so both send everything).
    fn firewall_body(&self, wireguard_port: u16) -> serde_json::Value {
        let everywhere = json!({ "addresses": ["0.0.0.0/0", "::/0"] });
        let inbound: Vec<serde_json::Value> = self
            .inbound_ports(wireguard_port)
            .iter()
            .map(|(protocol, ports)| {
                json!({ "protocol": protocol, "ports": ports, "sources": everywhere })
            })
            .collect();
        json!({
            "name": self.resource_name(),
            "tags": [self.deployment_tag()],
            "inbound_rules": inbound,
            // A firewall without outbound rules blocks all outbound traffic;
            // hosts must still fetch packages and answer WireGuard.
            "outbound_rules": [
                { "protocol": "tcp", "ports": "0", "destinations": everywhere },
                { "protocol": "udp", "ports": "0", "destinations": everywhere },
                { "protocol": "icmp", "ports": "0", "destinations": everywhere },
            ],
        })
    }

    /// Makes the deployment's tag and firewall unless they exist, and
    /// brings an existing firewall's inbound rules in line with the SSH and
    /// WireGuard ports of this run: after a port change, the old rules
    /// would let nobody in.
    async fn ensure_firewall(&self, wireguard_port: u16) -> Result<(), ApiError> {
        if let Some(firewall) = self.list_firewalls().await?.into_iter().next() {
            return self.update_firewall(&firewall, wireguard_port).await;
        }
        // Firewalls refer to existing tags only.
        let what = "create the deployment's tag";
        let url = self.api.url("/v2/tags", what)?;
        let body = json!({ "name": self.deployment_tag() });
        self.api
            .send(Method::POST, &url, Some(&body), Repeat::Idempotent, what)
            .await?;

        let body = self.firewall_body(wireguard_port);
        let what = "create the deployment's Cloud Firewall";
        let url = self.api.url("/v2/firewalls", what)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self
                .api
                .send(
                    Method::POST,
                    &url,
                    Some(&body),
                    Repeat::OnlyIfRejected,
                    what,
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.maybe_applied() && attempts < self.timing.max_attempts => {
                    if !self.list_firewalls().await?.is_empty() {
                        return Ok(());
                    }
                    tokio::time::sleep(self.timing.retry_backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Replaces `firewall`'s rules (`PUT /v2/firewalls/{id}`) unless its
    /// inbound rules already open exactly the ports of this run.
    async fn update_firewall(
        &self,
        firewall: &FirewallJson,
        wireguard_port: u16,
    ) -> Result<(), ApiError> {
        let mut wanted: Vec<(String, String)> = self
            .inbound_ports(wireguard_port)
            .iter()
            .map(|(protocol, ports)| ((*protocol).to_owned(), ports.clone()))
            .collect();
        let mut present: Vec<(String, String)> = firewall
            .inbound_rules
            .iter()
            .map(|r| (r.protocol.clone(), r.ports.clone()))
            .collect();
        wanted.sort();
        present.sort();
        if wanted == present {
            return Ok(());
        }
        tracing::info!(
            firewall = %firewall.name,
            "updating the Cloud Firewall to SSH port {} and WireGuard port {wireguard_port}",
            self.ssh_port
        );
        let what = format!(
            "update the Cloud Firewall {} to SSH port {}/tcp and WireGuard port {wireguard_port}/udp",
            api::clean(&firewall.name),
            self.ssh_port
        );
        let url = self
            .api
            .url(&format!("/v2/firewalls/{}", urlencode(&firewall.id)), &what)?;
        // The PUT names the whole firewall, so repeating it is harmless.
        self.api
            .send(
                Method::PUT,
                &url,
                Some(&self.firewall_body(wireguard_port)),
                Repeat::Idempotent,
                &what,
            )
            .await?;
        Ok(())
    }

    /// The registered login key's id, registering the builder's key first if
    /// needed.
    async fn login_key_id(&self) -> Result<u64, CloudError> {
        let pending = {
            let state = self.state.lock().await;
            if let Some(id) = state.login_key_id {
                return Ok(id);
            }
            state.login_key.clone()
        };
        match pending {
            Some(key) => {
                self.register_ssh_key(&key).await?;
                Ok(self.state.lock().await.login_key_id.unwrap_or_default())
            }
            None => Err(self.fail(
                "no SSH login key registered before creating droplets; register one with register_ssh_key (a bug in the caller)",
            )),
        }
    }

    /// Sends the create requests for `missing`, grouped by region and role,
    /// at most ten names each. A failed request may still have created
    /// droplets, so the caller lists before it tries again.
    async fn create_batches(
        &self,
        missing: &[&HostRequest],
        key_id: u64,
        pairs: &HashMap<HostName, HostKeyPair>,
        sent: &mut HashSet<HostName>,
    ) -> Result<(), ApiError> {
        let mut groups: BTreeMap<(String, &'static str), Vec<&HostRequest>> = BTreeMap::new();
        for request in missing {
            groups
                .entry((request.region.to_string(), request.role.as_str()))
                .or_default()
                .push(request);
        }
        for ((region, role), requests) in groups {
            for chunk in requests.chunks(MAX_NAMES_PER_REQUEST) {
                let keys: Vec<(HostName, HostKeyPair)> = chunk
                    .iter()
                    .map(|r| (r.name.clone(), pairs[&r.name].clone()))
                    .collect();
                let names: Vec<&str> = chunk.iter().map(|r| r.name.as_str()).collect();
                let body = json!({
                    "names": names,
                    "region": region,
                    "size": self.size,
                    "image": self.image,
                    "ssh_keys": [key_id],
                    "tags": ["promguard", self.deployment_tag(), format!("promguard:{role}")],
                    "user_data": cloud_init::render(
                        &keys,
                        self.first_boot.get(&requests[0].role).unwrap_or(&FirstBoot::default())
                    ),
                    "ipv6": false,
                    "monitoring": false,
                });
                let what = format!(
                    "create droplets {} in region {region} (size {}, image {})",
                    names.join(", "),
                    self.size,
                    self.image
                );
                let url = self.api.url("/v2/droplets", &what)?;
                sent.extend(chunk.iter().map(|r| r.name.clone()));
                self.api
                    .send(
                        Method::POST,
                        &url,
                        Some(&body),
                        Repeat::OnlyIfRejected,
                        &what,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Lists the deployment's droplets, polling until every one of `names`
    /// is listed or [`Timing::active_timeout`] ends; returns the last
    /// listing either way.
    async fn list_until_listed(&self, names: &HashSet<HostName>) -> Result<Vec<Droplet>, ApiError> {
        let started = Instant::now();
        let mut interval = self.timing.poll_interval;
        loop {
            let droplets = self.list_droplets().await?;
            let unlisted: Vec<&str> = names
                .iter()
                .filter(|n| !droplets.iter().any(|d| &d.name == *n))
                .map(|n| n.as_str())
                .collect();
            if unlisted.is_empty() {
                return Ok(droplets);
            }
            if started.elapsed() >= self.timing.active_timeout {
                tracing::warn!(
                    "droplets {} are still not listed {} s after a create that may have made them; creating them again",
                    unlisted.join(", "),
                    self.timing.active_timeout.as_secs()
                );
                return Ok(droplets);
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(self.timing.max_backoff);
        }
    }

    /// Polls until every named droplet is `active` with a public address.
    async fn wait_active(&self, names: &[HostName]) -> Result<Vec<Droplet>, CloudError> {
        let result = self.wait_active_inner(names).await;
        if result.is_err() {
            // Whatever is not ready now was reported with the error; later
            // listings of this process do not wait for it again.
            if let Ok(droplets) = self.list_droplets().await {
                let mut state = self.state.lock().await;
                for d in droplets.iter().filter(|d| names.contains(&d.name)) {
                    if d.status != "active" || d.public_v4.is_none() {
                        state.given_up.insert(d.id);
                    }
                }
            }
        }
        result
    }

    async fn wait_active_inner(&self, names: &[HostName]) -> Result<Vec<Droplet>, CloudError> {
        let started = Instant::now();
        let mut interval = self.timing.poll_interval;
        // The listing may lag behind a create: a droplet not listed yet is
        // waited for, one that was listed and is gone has disappeared.
        let mut seen: HashSet<HostName> = HashSet::new();
        loop {
            let droplets = self.list_droplets().await.map_err(|e| self.fail(e))?;
            seen.extend(
                droplets
                    .iter()
                    .filter(|d| names.contains(&d.name))
                    .map(|d| d.name.clone()),
            );
            let mut ready = Vec::new();
            let mut waiting: Option<(HostName, String)> = None;
            for name in names {
                match droplets.iter().find(|d| &d.name == name) {
                    Some(d) if d.status == "active" && d.public_v4.is_some() => {
                        ready.push(d.id)
                    }
                    Some(d) if d.status == "active" || d.status == "new" => {
                        waiting.get_or_insert((
                            name.clone(),
                            if d.status == "new" {
                                "its status is still \"new\"".to_owned()
                            } else {
                                "it is active but has no public IPv4 address".to_owned()
                            },
                        ));
                    }
                    Some(d) => {
                        return Err(CloudError::Host {
                            host: name.clone(),
                            message: format!(
                                "droplet {} is {:?} instead of becoming active; run `promguard down` and try again",
                                d.id, d.status
                            ),
                        })
                    }
                    None if seen.contains(name) => {
                        return Err(CloudError::Host {
                            host: name.clone(),
                            message: "the droplet disappeared while it was starting".into(),
                        })
                    }
                    None => {
                        waiting.get_or_insert((
                            name.clone(),
                            "DigitalOcean does not list it yet".to_owned(),
                        ));
                    }
                }
            }
            match waiting {
                None => {
                    return Ok(droplets
                        .into_iter()
                        .filter(|d| ready.contains(&d.id))
                        .collect())
                }
                Some((host, message)) if started.elapsed() >= self.timing.active_timeout => {
                    return Err(CloudError::Timeout {
                        host,
                        seconds: self.timing.active_timeout.as_secs(),
                        message: format!(
                            "{message}; run `promguard down` to remove what was created"
                        ),
                    })
                }
                Some(_) => {
                    tokio::time::sleep(interval).await;
                    interval = (interval * 2).min(self.timing.max_backoff);
                }
            }
        }
    }

    /// Re-lists until none of `ids` is left.
    async fn wait_gone(&self, ids: &[u64]) -> Result<(), CloudError> {
        let started = Instant::now();
        let mut interval = self.timing.poll_interval;
        loop {
            let left: Vec<String> = self
                .list_droplets()
                .await
                .map_err(|e| self.fail(e))?
                .into_iter()
                .filter(|d| ids.contains(&d.id))
                .map(|d| d.name.to_string())
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= self.timing.active_timeout {
                return Err(self.fail(format!(
                    "droplets {} still exist {} s after their deletion; check https://cloud.digitalocean.com/droplets and run `promguard down` again",
                    left.join(", "),
                    self.timing.active_timeout.as_secs()
                )));
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(self.timing.max_backoff);
        }
    }

    /// Turns a refused create into a message about the config values.
    fn explain_create_error(&self, error: ApiError) -> CloudError {
        if let ApiError::Refused {
            status: 422,
            message,
            ..
        } = &error
        {
            let lower = message.to_lowercase();
            let hint = if lower.contains("limit") {
                "the account's droplet limit is reached: destroy droplets or ask DigitalOcean support to raise the limit".to_owned()
            } else if lower.contains("region") {
                "check `digitalocean` regions in the config (`doctl compute region list`)"
                    .to_owned()
            } else if lower.contains("size") {
                format!(
                    "check digitalocean.size = {:?} in the config (`doctl compute size list`)",
                    self.size
                )
            } else if lower.contains("image") {
                format!("check digitalocean.image = {:?} in the config (`doctl compute image list-distribution`)", self.image)
            } else {
                "check the region, size and image in the config".to_owned()
            };
            return self.fail(format!("{error}; {hint}"));
        }
        self.fail(error)
    }
}

/// Whether the API's `public_key` text is `key` (comments aside).
fn same_key(text: &str, key: &SshPublicKey) -> bool {
    SshPublicKey::parse(text).is_ok_and(|k| &k == key)
}

#[async_trait]
impl CloudProvider for DigitalOceanProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    /// Droplets boot from a stock image and get their SSH host keys
    /// through cloud-init user data.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            programs: Programs::Packages,
            host_keys: HostKeys::Injected,
            lifecycle: Lifecycle::Disposable,
        }
    }

    fn connect(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        let dial = || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10));
        match &self.ssh_netns {
            None => dial(),
            Some(path) => crate::local::run_in_netns(path, dial)?,
        }
    }

    fn discovery_hint(&self) -> &'static str {
        "their tags"
    }

    async fn preflight(&self) -> Result<(), CloudError> {
        let which = tokio::process::Command::new("ssh-keygen")
            .arg("-?")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        if which.is_err() {
            return Err(CloudError::Missing {
                provider: PROVIDER,
                what: "ssh-keygen is not installed (it makes the droplets' SSH host keys)".into(),
                fix: "install openssh-client (apt-get install openssh-client)".into(),
            });
        }
        // Proves the token works, with the cheapest authenticated request.
        let what = "check the API token";
        let url = self
            .api
            .url("/v2/account/keys?per_page=1", what)
            .map_err(|e| self.fail(e))?;
        self.api
            .send(Method::GET, &url, None, Repeat::Idempotent, what)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn register_ssh_key(&self, key: &SshPublicKey) -> Result<(), CloudError> {
        let id = self.ensure_key(key).await.map_err(|e| self.fail(e))?;
        let mut state = self.state.lock().await;
        state.login_key = Some(key.clone());
        state.login_key_id = Some(id);
        Ok(())
    }

    async fn prepare_host_keys(
        &self,
        requests: &[HostRequest],
    ) -> Result<Vec<(HostName, SshPublicKey)>, CloudError> {
        // A droplet that exists already, even one still booting (which
        // `list_hosts` does not show yet), carries the key an earlier run
        // recorded: it gets no new one, and create_hosts will not make it.
        let existing = self.list_droplets().await.map_err(|e| self.fail(e))?;
        let mut made = HashMap::new();
        let mut publics = Vec::new();
        for request in requests {
            if existing.iter().any(|d| d.name == request.name) {
                continue;
            }
            let pair = generate_pair(&request.name).await?;
            publics.push((request.name.clone(), pair.public().clone()));
            made.insert(request.name.clone(), pair);
        }
        self.state.lock().await.prepared = made;
        Ok(publics)
    }

    /// The Cloud Firewall, when the deployment has one, gets the current
    /// ports (one listing when nothing changed).
    async fn reconcile_deployment(&self) -> Result<(), CloudError> {
        match self.firewall_wireguard_port {
            Some(port) => self.ensure_firewall(port).await.map_err(|e| self.fail(e)),
            None => Ok(()),
        }
    }

    async fn create_hosts(&self, requests: &[HostRequest]) -> Result<Vec<Host>, CloudError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let key_id = self.login_key_id().await?;
        if let Some(port) = self.firewall_wireguard_port {
            self.ensure_firewall(port).await.map_err(|e| self.fail(e))?;
        }
        // Host keys for every requested name, made once: a retried create
        // must carry the same keys as the attempt that may have succeeded.
        // Prepared pairs come first: the caller has recorded those.
        let mut pairs = std::mem::take(&mut self.state.lock().await.prepared);
        pairs.retain(|name, _| requests.iter().any(|r| &r.name == name));
        for request in requests {
            if !pairs.contains_key(&request.name) {
                pairs.insert(request.name.clone(), generate_pair(&request.name).await?);
            }
        }
        let names: Vec<HostName> = requests.iter().map(|r| r.name.clone()).collect();
        // Names whose create request was sent and may have been applied.
        // The API does not refuse a second droplet of the same name, and a
        // droplet shows up in listings by tag only some time after its
        // create was applied, also when the answer was lost (a 5xx, a
        // timeout). Resending at once for a name the listing does not show
        // yet would make it twice, so before another attempt these names
        // are looked for in the listing until they show up or
        // `active_timeout` ends (a droplet that may take that long to boot
        // is listed long before); only names still missing then are sent
        // again. Looking them up is the one thing that works after a lost
        // answer: the ids of what it made are unknown.
        let mut may_exist: HashSet<HostName> = HashSet::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // List first, every time: never create a droplet twice.
            let existing = self
                .list_until_listed(&may_exist)
                .await
                .map_err(|e| self.fail(e))?;
            let missing: Vec<&HostRequest> = requests
                .iter()
                .filter(|r| !existing.iter().any(|d| d.name == r.name))
                .collect();
            if missing.is_empty() {
                break;
            }
            {
                let mut state = self.state.lock().await;
                for request in &missing {
                    state
                        .host_keys
                        .insert(request.name.clone(), pairs[&request.name].public().clone());
                }
            }
            match self
                .create_batches(&missing, key_id, &pairs, &mut may_exist)
                .await
            {
                Ok(()) => break,
                Err(e) if e.maybe_applied() && attempt < self.timing.max_attempts => {
                    tracing::warn!(error = %e, "droplet creation failed; checking what exists before trying again");
                    tokio::time::sleep(self.timing.retry_backoff).await;
                }
                Err(e) => return Err(self.explain_create_error(e)),
            }
        }
        let droplets = self.wait_active(&names).await?;
        let state = self.state.lock().await;
        let mut hosts = Vec::new();
        for name in &names {
            if let Some(host) = droplets
                .iter()
                .find(|d| &d.name == name)
                .and_then(|d| self.to_host(d, &state.host_keys))
            {
                hosts.push(host);
            }
        }
        Ok(hosts)
    }

    /// Every droplet of the deployment, waiting (up to
    /// [`Timing::active_timeout`]) for those without a public IPv4 address
    /// yet: a host left out of the list would escape `up`'s refusal to
    /// create hosts when the state is lost, and be created again or
    /// adopted without a known host key. A droplet that still has no
    /// address then is an error naming it; only droplets `create_hosts`
    /// already reported as failed in this process are left out at once.
    async fn list_hosts(&self) -> Result<Vec<Host>, CloudError> {
        let started = Instant::now();
        let mut interval = self.timing.poll_interval;
        loop {
            let droplets = self.list_droplets().await.map_err(|e| self.fail(e))?;
            let state = self.state.lock().await;
            let waiting = droplets
                .iter()
                .find(|d| d.public_v4.is_none() && !state.given_up.contains(&d.id));
            match waiting {
                None => {
                    return Ok(droplets
                        .iter()
                        .filter_map(|d| self.to_host(d, &state.host_keys))
                        .collect())
                }
                Some(d) if started.elapsed() >= self.timing.active_timeout => {
                    return Err(CloudError::Host {
                        host: d.name.clone(),
                        message: format!(
                            "droplet {} exists (status {:?}) but still has no public IPv4 address after {} s, so PromGuard can neither reach it nor count it among the deployment's hosts; check it at https://cloud.digitalocean.com/droplets and run again, or remove the deployment with `promguard down`",
                            d.id,
                            d.status,
                            self.timing.active_timeout.as_secs()
                        ),
                    })
                }
                Some(d) => {
                    tracing::debug!(host = %d.name, "waiting for the droplet's public address");
                }
            }
            drop(state);
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(self.timing.max_backoff);
        }
    }

    async fn destroy_hosts(&self, names: &[HostName]) -> Result<(), CloudError> {
        let droplets = self.list_droplets().await.map_err(|e| self.fail(e))?;
        let mut ids = Vec::new();
        for d in droplets.iter().filter(|d| names.contains(&d.name)) {
            let what = format!("destroy droplet {} ({})", d.name, d.id);
            let url = self
                .api
                .url(&format!("/v2/droplets/{}", d.id), &what)
                .map_err(|e| self.fail(e))?;
            match self
                .api
                .send(Method::DELETE, &url, None, Repeat::Idempotent, &what)
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) => ids.push(d.id),
                Err(e) => return Err(self.fail(e)),
            }
        }
        self.wait_gone(&ids).await?;
        let mut state = self.state.lock().await;
        for name in names {
            state.host_keys.remove(name);
        }
        Ok(())
    }

    async fn destroy_deployment(&self) -> Result<(), CloudError> {
        let tag = self.deployment_tag();
        let (droplets, strays) = self.list_tagged().await.map_err(|e| self.fail(e))?;
        if !strays.is_empty() {
            // Destroying by tag would take the stray droplets along: destroy
            // ours one by one instead, and keep the tag they still carry.
            let names: Vec<HostName> = droplets.iter().map(|d| d.name.clone()).collect();
            self.destroy_hosts(&names).await?;
        } else if !droplets.is_empty() {
            let what = format!("destroy the droplets tagged {tag}");
            let url = self
                .api
                .url(&format!("/v2/droplets?tag_name={tag}"), &what)
                .map_err(|e| self.fail(e))?;
            self.api
                .send(Method::DELETE, &url, None, Repeat::Idempotent, &what)
                .await
                .map_err(|e| self.fail(e))?;
            let ids: Vec<u64> = droplets.iter().map(|d| d.id).collect();
            self.wait_gone(&ids).await?;
        }
        for firewall in self.list_firewalls().await.map_err(|e| self.fail(e))? {
            let what = format!("delete the Cloud Firewall {}", firewall.name);
            let url = self
                .api
                .url(&format!("/v2/firewalls/{}", urlencode(&firewall.id)), &what)
                .map_err(|e| self.fail(e))?;
            match self
                .api
                .send(Method::DELETE, &url, None, Repeat::Idempotent, &what)
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        // The deployment's tag goes too; `promguard` and the role tags may
        // be shared with other deployments and stay. Stray droplets still
        // carry it, so it stays with them.
        if strays.is_empty() {
            let what = format!("delete the tag {tag}");
            let url = self
                .api
                .url(&format!("/v2/tags/{tag}"), &what)
                .map_err(|e| self.fail(e))?;
            match self
                .api
                .send(Method::DELETE, &url, None, Repeat::Idempotent, &what)
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(self.fail(e)),
            }
        } else {
            tracing::warn!(
                "the tag {tag} is kept: {} droplet(s) that are no PromGuard hosts still carry it",
                strays.len()
            );
        }
        // Only the key we registered carries our name; a key the user had
        // on the account before is reused under its own name and stays.
        let name = self.resource_name();
        let keys = self
            .pages(
                format!("/v2/account/keys?per_page={}", self.page_size),
                "list the account's SSH keys",
                |p: SshKeysPage| (p.ssh_keys, p.links),
            )
            .await
            .map_err(|e| self.fail(e))?;
        for key in keys.iter().filter(|k| k.name == name) {
            let what = format!("delete the SSH key {name}");
            let url = self
                .api
                .url(&format!("/v2/account/keys/{}", key.id), &what)
                .map_err(|e| self.fail(e))?;
            match self
                .api
                .send(Method::DELETE, &url, None, Repeat::Idempotent, &what)
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        let mut state = self.state.lock().await;
        state.login_key_id = None;
        state.host_keys.clear();
        Ok(())
    }
}

/// Percent-encodes a path segment from the API (firewall ids are UUIDs, but
/// the answer is untrusted).
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_is_redacted() {
        let token = Token::new("dop_v1_secret");
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        let provider = DigitalOceanProvider::builder(DeploymentName::new("d").unwrap(), token)
            .build()
            .unwrap();
        assert!(!format!("{provider:?}").contains("dop_v1_secret"));
    }

    #[test]
    fn plain_http_is_refused_except_locally() {
        let build = |url: &str| {
            DigitalOceanProvider::builder(DeploymentName::new("d").unwrap(), Token::new("t"))
                .base_url(url)
                .build()
        };
        assert!(build("http://api.example.com").is_err());
        assert!(build("http://127.0.0.1:8080").is_ok());
        assert!(build("https://api.digitalocean.com").is_ok());
    }
}

/// Decodes and validates one page of `GET /v2/droplets` exactly as the
/// provider does, returning how many droplets it accepted. Only for the fuzz
/// target (`fuzz/fuzz_targets/digitalocean_droplets.rs`): API responses are
/// untrusted input.
#[doc(hidden)]
pub fn fuzz_decode_droplets_page(body: &[u8]) -> Result<usize, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let page: DropletsPage =
        serde_path_to_error::deserialize(&mut de).map_err(|e| e.to_string())?;
    let mut accepted = 0;
    for d in page.droplets {
        DigitalOceanProvider::accept(d, "fuzz").map_err(|e| e.to_string())?;
        accepted += 1;
    }
    Ok(accepted)
}

#[cfg(test)]
mod fuzz_entry_tests {
    use super::fuzz_decode_droplets_page;

    #[test]
    fn decodes_a_page_and_refuses_hostile_droplets() {
        let page = br#"{"droplets":[{"id":1,"name":"promguard-node-1","status":"active","region":{"slug":"lon1"},"tags":["promguard:node"],"networks":{"v4":[{"ip_address":"10.1.0.5","type":"private"},{"ip_address":"198.51.100.7","type":"public"}]}}],"links":{},"meta":{"total":1}}"#;
        assert_eq!(fuzz_decode_droplets_page(page), Ok(1));
        let hostile = String::from_utf8_lossy(page).replace("promguard-node-1", "$(touch /tmp/x)");
        assert!(fuzz_decode_droplets_page(hostile.as_bytes())
            .unwrap_err()
            .contains("no valid host name"));
        let loopback = String::from_utf8_lossy(page).replace("198.51.100.7", "127.0.0.1");
        assert!(fuzz_decode_droplets_page(loopback.as_bytes()).is_err());
        assert!(fuzz_decode_droplets_page(b"{\"droplets\": 3}")
            .unwrap_err()
            .contains("droplets"));
    }
}
