//! The DigitalOcean provider against the fake DigitalOcean API, with every
//! request and response checked against the official OpenAPI schemas.

#[path = "digitalocean/openapi.rs"]
mod openapi;

use std::net::IpAddr;
use std::time::Duration;

use promguard_cloud::digitalocean::cloud_init::host_key_for;
use promguard_cloud::digitalocean::{DigitalOceanProvider, Timing, Token};
use promguard_cloud::fake_digitalocean::{
    Exchange, FakeDigitalOcean, FakeOptions, Fault, MAX_LISTING_LAG,
};
use promguard_cloud::{CloudProvider, HostRequest};
use promguard_core::plan::Role;
use promguard_core::{DeploymentName, HostName, Region, SshPublicKey};

const LOGIN_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJbHkQpvXXXlCrfm9GPh94TOs3h4/BEQKAsLxu2dEiob";

fn login_key() -> SshPublicKey {
    SshPublicKey::parse(LOGIN_KEY).unwrap()
}

fn fast_timing() -> Timing {
    Timing {
        request_timeout: Duration::from_secs(2),
        max_attempts: 5,
        retry_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_rate_wait: Duration::from_secs(3),
        poll_interval: Duration::from_millis(50),
        active_timeout: Duration::from_secs(10),
    }
}

fn provider(fake: &FakeDigitalOcean, timing: Timing) -> DigitalOceanProvider {
    DigitalOceanProvider::builder(
        DeploymentName::new("test").unwrap(),
        Token::new(fake.token()),
    )
    .base_url(fake.base_url())
    .firewall(Some(51820))
    .timing(timing)
    .build()
    .unwrap()
}

fn request(name: &str, role: Role, region: &str) -> HostRequest {
    HostRequest {
        name: HostName::new(name).unwrap(),
        role,
        region: Region::new(region).unwrap(),
    }
}

/// The original's shape: a monitor in Toronto and three nodes in London.
fn four() -> Vec<HostRequest> {
    vec![
        request("monitor", Role::Monitor, "tor1"),
        request("node-1", Role::Node, "lon1"),
        request("node-2", Role::Node, "lon1"),
        request("node-3", Role::Node, "lon1"),
    ]
}

/// Every exchange satisfies the spec.
fn assert_spec(fake: &FakeDigitalOcean) {
    let spec = openapi::Spec::load();
    let problems: Vec<String> = fake
        .exchanges()
        .iter()
        .flat_map(|x| spec.check_exchange(x))
        .collect();
    assert!(
        problems.is_empty(),
        "spec violations:\n{}",
        problems.join("\n")
    );
}

fn creates(fake: &FakeDigitalOcean) -> Vec<Exchange> {
    fake.exchanges()
        .into_iter()
        .filter(|x| x.method == "POST" && x.path == "/v2/droplets")
        .collect()
}

fn live_droplets(fake: &FakeDigitalOcean) -> usize {
    fake.droplets().iter().filter(|d| !d.destroying).count()
}

#[tokio::test]
async fn create_list_destroy_lifecycle() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let p = provider(&fake, fast_timing());
    p.preflight().await.unwrap();
    p.register_ssh_key(&login_key()).await.unwrap();
    let hosts = p.create_hosts(&four()).await.unwrap();
    assert_eq!(hosts.len(), 4);

    // One request per region and role: the monitor, then the three nodes together.
    let posts = creates(&fake);
    assert_eq!(posts.len(), 2);
    let batch = posts
        .iter()
        .map(|x| x.request_body.as_ref().unwrap())
        .find(|b| b["region"] == "lon1")
        .unwrap();
    assert_eq!(
        batch["names"],
        serde_json::json!(["node-1", "node-2", "node-3"])
    );
    assert_eq!(batch["size"], "s-1vcpu-1gb");
    assert_eq!(batch["image"], "debian-12-x64");
    assert_eq!(batch["region"], "lon1");
    assert_eq!(
        batch["tags"],
        serde_json::json!(["promguard", "promguard:test", "promguard:node"])
    );

    let droplets = fake.droplets();
    for host in &hosts {
        let droplet = droplets
            .iter()
            .find(|d| d.spec.name == host.name.as_str())
            .unwrap();
        // The public address, not the private one listed first.
        assert_eq!(
            host.public_address,
            IpAddr::V4(droplet.public_address.unwrap())
        );
        assert_eq!(host.ssh.port(), 22);
        assert_eq!(droplet.spec.authorized_keys, vec![login_key()]);
        // The host key reported is the one the user data installs on this droplet.
        let user_data = droplet.spec.user_data.as_deref().unwrap();
        let (private, public) = host_key_for(user_data, host.name.as_str()).unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert_eq!(host.ssh_host_key.as_ref(), Some(&public));
    }
    let keys: std::collections::HashSet<_> = hosts.iter().map(|h| h.ssh_host_key.clone()).collect();
    assert_eq!(keys.len(), 4, "every droplet has a host key of its own");
    assert_eq!(fake.firewalls(), vec!["promguard-test".to_owned()]);

    let mut listed: Vec<String> = p
        .list_hosts()
        .await
        .unwrap()
        .iter()
        .map(|h| h.name.to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, ["monitor", "node-1", "node-2", "node-3"]);

    // A second create of the same hosts makes nothing new.
    p.create_hosts(&four()).await.unwrap();
    assert_eq!(fake.droplets_created(), 4);

    p.destroy_hosts(&[HostName::new("node-3").unwrap()])
        .await
        .unwrap();
    assert_eq!(p.list_hosts().await.unwrap().len(), 3);

    p.destroy_deployment().await.unwrap();
    assert!(fake.droplets().is_empty());
    assert!(fake.firewalls().is_empty());
    assert!(
        fake.ssh_keys().is_empty(),
        "the key we registered is deleted"
    );
    p.destroy_deployment().await.unwrap();
    assert!(fake.exchanges().iter().any(|x| x.method == "DELETE"
        && x.path == "/v2/droplets"
        && x.query.as_deref() == Some("tag_name=promguard:test")));
    assert_spec(&fake);
    fake.stop().await;
}

#[tokio::test]
async fn prepared_host_keys_are_the_ones_injected() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let p = provider(&fake, fast_timing());
    p.register_ssh_key(&login_key()).await.unwrap();
    let requests = four();
    let prepared = p.prepare_host_keys(&requests[1..]).await.unwrap();
    assert_eq!(prepared.len(), 3);
    // A create after the preparation injects the prepared keys; a name
    // that was not prepared (the monitor) gets a fresh one.
    let hosts = p.create_hosts(&requests).await.unwrap();
    let droplets = fake.droplets();
    for host in &hosts {
        let user_data = droplets
            .iter()
            .find(|d| d.spec.name == host.name.as_str())
            .and_then(|d| d.spec.user_data.clone())
            .unwrap();
        let (_, injected) = host_key_for(&user_data, host.name.as_str()).unwrap();
        assert_eq!(host.ssh_host_key.as_ref(), Some(&injected));
        match prepared.iter().find(|(name, _)| name == &host.name) {
            Some((_, key)) => assert_eq!(key, &injected, "{}", host.name),
            None => assert_eq!(host.name.as_str(), "monitor"),
        }
    }
    // A droplet that exists gets no prepared key: it keeps the one it has.
    assert!(p.prepare_host_keys(&requests).await.unwrap().is_empty());
    // Prepared keys are used once: a later create makes new ones.
    p.destroy_hosts(&[HostName::new("node-1").unwrap()])
        .await
        .unwrap();
    let again = p.create_hosts(&requests[1..2]).await.unwrap();
    assert_ne!(again[0].ssh_host_key.as_ref(), Some(&prepared[0].1));
    p.destroy_deployment().await.unwrap();
    fake.stop().await;
}

#[tokio::test]
async fn at_most_ten_names_per_request() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let p = provider(&fake, fast_timing());
    p.register_ssh_key(&login_key()).await.unwrap();
    let requests: Vec<HostRequest> = (1..=12)
        .map(|i| request(&format!("node-{i}"), Role::Node, "fra1"))
        .collect();
    assert_eq!(p.create_hosts(&requests).await.unwrap().len(), 12);
    let sizes: Vec<usize> = creates(&fake)
        .iter()
        .map(|x| {
            x.request_body.as_ref().unwrap()["names"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes, [10, 2]);
    p.destroy_deployment().await.unwrap();
    assert_spec(&fake);
}

#[tokio::test]
async fn rate_limit_bursts_converge() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let p = provider(&fake, fast_timing());
    p.register_ssh_key(&login_key()).await.unwrap();
    fake.inject(Fault::RateLimit {
        count: 3,
        retry_after_seconds: 1,
    });
    let hosts = p.create_hosts(&four()).await.unwrap();
    assert_eq!(hosts.len(), 4);
    assert_eq!(fake.droplets_created(), 4);
    let exchanges = fake.exchanges();
    let limited = exchanges.iter().filter(|x| x.status == 429).count();
    assert_eq!(limited, 3);
    assert!(exchanges.iter().filter(|x| x.status == 429).all(|x| x
        .response_headers
        .iter()
        .any(|(n, v)| n == "retry-after" && v == "1")));
    p.destroy_deployment().await.unwrap();
    assert_spec(&fake);
}

#[tokio::test]
async fn server_errors_converge() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let p = provider(&fake, fast_timing());
    p.register_ssh_key(&login_key()).await.unwrap();
    for _ in 0..3 {
        fake.inject(Fault::ServerError { count: 1 });
    }
    let hosts = p.create_hosts(&four()).await.unwrap();
    assert_eq!(hosts.len(), 4);
    assert_eq!(fake.droplets_created(), 4);
    assert_eq!(
        fake.exchanges().iter().filter(|x| x.status == 500).count(),
        3
    );
    p.destroy_deployment().await.unwrap();
    assert_eq!(live_droplets(&fake), 0);
    assert_spec(&fake);
}

#[tokio::test]
async fn a_create_that_failed_after_success_makes_no_duplicate() {
    for fault in [
        Fault::CreateSucceedsThenServerError,
        Fault::CreateSucceedsThenStalls {
            delay: Duration::from_secs(3),
        },
    ] {
        let fake = FakeDigitalOcean::start(FakeOptions::default())
            .await
            .unwrap();
        let timing = Timing {
            request_timeout: Duration::from_secs(1),
            ..fast_timing()
        };
        let p = provider(&fake, timing);
        p.register_ssh_key(&login_key()).await.unwrap();
        fake.inject(fault.clone());
        let hosts = p.create_hosts(&four()).await.unwrap();
        assert_eq!(hosts.len(), 4, "{fault:?}");
        assert_eq!(
            fake.droplets_created(),
            4,
            "{fault:?}: a droplet was created twice"
        );
        // The host key reported is still the one the droplet got.
        for host in &hosts {
            let d = fake
                .droplets()
                .into_iter()
                .find(|d| d.spec.name == host.name.as_str())
                .unwrap();
            let (_, public) =
                host_key_for(d.spec.user_data.as_deref().unwrap(), host.name.as_str()).unwrap();
            assert_eq!(host.ssh_host_key.as_ref(), Some(&public));
        }
        p.destroy_deployment().await.unwrap();
        assert_spec(&fake);
        fake.stop().await;
    }
}

#[tokio::test]
async fn a_droplet_that_never_becomes_active_is_named_and_down_cleans_up() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let timing = Timing {
        active_timeout: Duration::from_secs(1),
        ..fast_timing()
    };
    let p = provider(&fake, timing);
    p.register_ssh_key(&login_key()).await.unwrap();
    fake.inject(Fault::NeverActive {
        name: "node-2".into(),
    });
    let error = p.create_hosts(&four()).await.unwrap_err().to_string();
    assert!(error.contains("node-2"), "{error}");
    assert!(error.contains("\"new\""), "{error}");
    assert!(error.contains("promguard down"), "{error}");
    p.destroy_deployment().await.unwrap();
    assert!(fake.droplets().is_empty());
    assert!(fake.firewalls().is_empty());
    assert_spec(&fake);
}

#[tokio::test]
async fn an_existing_key_is_reused_and_kept() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let id = fake.add_ssh_key("my laptop", login_key());
    let p = provider(&fake, fast_timing());
    p.register_ssh_key(&login_key()).await.unwrap();
    // The API said 422 (duplicate) and the provider found the key instead.
    assert!(fake
        .exchanges()
        .iter()
        .any(|x| x.path == "/v2/account/keys" && x.status == 422));
    p.create_hosts(&four()[..1]).await.unwrap();
    let post = &creates(&fake)[0];
    assert_eq!(
        post.request_body.as_ref().unwrap()["ssh_keys"],
        serde_json::json!([id])
    );
    p.destroy_deployment().await.unwrap();
    assert_eq!(fake.ssh_keys(), vec![("my laptop".to_owned(), login_key())]);
    assert_spec(&fake);
}

#[tokio::test]
async fn lists_follow_pagination_links() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let p = DigitalOceanProvider::builder(
        DeploymentName::new("test").unwrap(),
        Token::new(fake.token()),
    )
    .base_url(fake.base_url())
    .timing(fast_timing())
    .page_size(2)
    .build()
    .unwrap();
    // Other keys on the account push ours to a later page.
    for i in 0..5 {
        let key = promguard_cloud::digitalocean::cloud_init::HostKeyPair::generate("other")
            .await
            .unwrap();
        fake.add_ssh_key(&format!("other-{i}"), key.public().clone());
    }
    p.register_ssh_key(&login_key()).await.unwrap();
    let requests: Vec<HostRequest> = (1..=5)
        .map(|i| request(&format!("node-{i}"), Role::Node, "ams3"))
        .collect();
    p.create_hosts(&requests).await.unwrap();
    assert_eq!(p.list_hosts().await.unwrap().len(), 5);
    let pages: Vec<String> = fake
        .exchanges()
        .iter()
        .filter(|x| x.method == "GET" && x.path == "/v2/droplets")
        .filter_map(|x| x.query.clone())
        .collect();
    assert!(pages.iter().any(|q| q.contains("page=3")), "{pages:?}");
    p.destroy_deployment().await.unwrap();
    assert_eq!(fake.ssh_keys().len(), 5, "only our key goes");
    assert_spec(&fake);
}

#[tokio::test]
async fn api_errors_say_what_to_do() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let bad = DigitalOceanProvider::builder(
        DeploymentName::new("test").unwrap(),
        Token::new("dop_v1_wrong"),
    )
    .base_url(fake.base_url())
    .timing(fast_timing())
    .build()
    .unwrap();
    let error = bad.preflight().await.unwrap_err().to_string();
    assert!(
        error.contains("401") && error.contains("DIGITALOCEAN_TOKEN"),
        "{error}"
    );

    let p = DigitalOceanProvider::builder(
        DeploymentName::new("test").unwrap(),
        Token::new(fake.token()),
    )
    .base_url(fake.base_url())
    .timing(fast_timing())
    .size("s-huge")
    .firewall(None)
    .login_key(login_key())
    .build()
    .unwrap();
    let error = p.create_hosts(&four()[..1]).await.unwrap_err().to_string();
    assert!(
        error.contains("422") && error.contains("digitalocean.size") && error.contains("s-huge"),
        "{error}"
    );

    let p = provider(&fake, fast_timing());
    p.register_ssh_key(&login_key()).await.unwrap();
    let error = p
        .create_hosts(&[request("n", Role::Node, "xyz9")])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("region"), "{error}");
    assert_eq!(fake.droplets_created(), 0);
    assert_spec(&fake);
}

#[tokio::test]
async fn the_quota_error_is_explained() {
    let options = FakeOptions {
        droplet_limit: 3,
        ..FakeOptions::default()
    };
    let fake = FakeDigitalOcean::start(options).await.unwrap();
    let p = provider(&fake, fast_timing());
    p.register_ssh_key(&login_key()).await.unwrap();
    let error = p.create_hosts(&four()).await.unwrap_err().to_string();
    assert!(error.contains("droplet limit"), "{error}");
    p.destroy_deployment().await.unwrap();
    assert_spec(&fake);
}

#[tokio::test]
async fn the_token_never_appears_in_messages() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let token = fake.token().to_owned();
    let timing = Timing {
        active_timeout: Duration::from_millis(500),
        max_attempts: 2,
        ..fast_timing()
    };
    let p = provider(&fake, timing);
    let mut texts = vec![format!("{p:?}"), format!("{:?}", Token::new(token.clone()))];
    // No key registered yet: an error.
    texts.push(p.create_hosts(&four()).await.unwrap_err().to_string());
    p.register_ssh_key(&login_key()).await.unwrap();
    fake.inject(Fault::NeverActive {
        name: "monitor".into(),
    });
    let e = p.create_hosts(&four()).await.unwrap_err();
    texts.push(e.to_string());
    texts.push(format!("{e:?}"));
    fake.inject(Fault::ServerError { count: 2 });
    let e = p.list_hosts().await.unwrap_err();
    texts.push(e.to_string());
    texts.push(format!("{e:?}"));
    fake.inject(Fault::RateLimit {
        count: 2,
        retry_after_seconds: 0,
    });
    texts.push(p.list_hosts().await.unwrap_err().to_string());
    let e = p
        .create_hosts(&[request("x", Role::Node, "nowhere1")])
        .await;
    texts.push(format!("{e:?}"));
    for text in &texts {
        assert!(!text.contains(&token), "the token leaked: {text}");
    }
    // And the messages are real ones, not empty.
    assert!(texts.iter().any(|t| t.contains("500")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("rate limit")), "{texts:?}");
    // The fake saw the token in the header on every accepted request.
    assert!(fake.exchanges().iter().filter(|x| x.status == 401).count() == 0);
    p.destroy_deployment().await.unwrap();
}

/// Requests the provider never sends, sent by hand: the fake enforces what
/// the real API enforces, with the spec's error bodies.
#[tokio::test]
async fn the_fake_enforces_auth_and_limits() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/v2/droplets", fake.base_url());
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let names: Vec<String> = (0..11).map(|i| format!("n{i}")).collect();
    let body = serde_json::json!({ "names": names, "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64", "region": "nyc3" });
    let r = client
        .post(&url)
        .bearer_auth(fake.token())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.headers().contains_key("ratelimit-remaining"));
    let error: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error["id"], "unprocessable_entity");
    let both = serde_json::json!({ "name": "a", "names": ["b"], "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64" });
    let r = client
        .post(&url)
        .bearer_auth(fake.token())
        .json(&both)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let single =
        serde_json::json!({ "name": "web-1", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64" });
    let r = client
        .post(&url)
        .bearer_auth(fake.token())
        .json(&single)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(fake.droplets_created(), 1);
    // Every answer follows the spec; every request but the one with both
    // `name` and `names` (index 2), which the spec's oneOf rejects.
    let spec = openapi::Spec::load();
    for (i, x) in fake.exchanges().into_iter().enumerate() {
        if i == 2 {
            continue;
        }
        let problems = spec.check_exchange(&x);
        assert!(problems.is_empty(), "{problems:?}");
    }
    // Requests that violate the schema are caught by the checker: the
    // two-name body above and a droplet list missing a required field.
    let mut bad = fake.exchanges()[2].clone();
    assert!(!spec.check_exchange(&bad).is_empty());
    bad = fake.exchanges()[3].clone();
    bad.response_body.as_mut().unwrap()["droplet"]
        .as_object_mut()
        .unwrap()
        .remove("networks");
    let problems = spec.check_exchange(&bad);
    assert!(
        problems.iter().any(|p| p.contains("networks")),
        "{problems:?}"
    );
}

#[test]
fn the_fake_runs_on_its_own_thread_for_xtask() {
    let fake = FakeDigitalOcean::start_in_thread(FakeOptions::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let p = provider(&fake, fast_timing());
        p.preflight().await.unwrap();
    });
    fake.stop_blocking();
}

/// A backend whose boots take a while, counting those that ended.
struct SlowBackend(std::sync::atomic::AtomicUsize);

impl promguard_cloud::fake_digitalocean::DropletBackend for SlowBackend {
    fn create(
        &self,
        _: &promguard_cloud::fake_digitalocean::DropletSpec,
    ) -> Result<std::net::Ipv4Addr, String> {
        std::thread::sleep(Duration::from_millis(500));
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(std::net::Ipv4Addr::new(198, 51, 100, 7))
    }

    fn destroy(&self, _: &promguard_cloud::fake_digitalocean::DropletSpec) -> Result<(), String> {
        Ok(())
    }
}

// Regression: dropping the fake while a droplet still booted returned at
// once, so xtask removed the machines behind the droplets before that
// boot ended, and its machine was left running.
#[test]
fn dropping_the_fake_waits_for_the_boots_under_way() {
    let backend = std::sync::Arc::new(SlowBackend(Default::default()));
    let fake = FakeDigitalOcean::start_in_thread(FakeOptions {
        backend: backend.clone(),
        ..FakeOptions::default()
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, _) = runtime.block_on(raw(
        &fake,
        reqwest::Method::POST,
        "/v2/droplets",
        Some(serde_json::json!({
            "name": "promguard-node-1",
            "region": "lon1",
            "size": "s-1vcpu-1gb",
            "image": "debian-12-x64",
        })),
    ));
    assert_eq!(status, 202);
    // The boot is under way (it takes 500 ms).
    std::thread::sleep(Duration::from_millis(100));
    drop(fake);
    assert_eq!(backend.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Sends one raw request to the fake, as another API client would.
async fn raw(
    fake: &FakeDigitalOcean,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", fake.base_url()))
        .bearer_auth(fake.token());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

// Regression: a droplet that had no public IPv4 address yet was left out of
// `list_hosts`, so `up` without a state file did not refuse to run and the
// droplet was later adopted without a known host key.
#[tokio::test]
async fn droplets_without_an_address_are_never_left_out_of_the_hosts() {
    let fake = FakeDigitalOcean::start(FakeOptions {
        active_after: Duration::from_millis(800),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let creator = provider(&fake, fast_timing());
    creator.register_ssh_key(&login_key()).await.unwrap();
    let creating = tokio::spawn(async move { creator.create_hosts(&four()).await });
    while fake.droplets().len() < 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another process lists while the droplets are still `new`, without
    // addresses: it waits for them instead of listing none.
    let other = provider(&fake, fast_timing());
    let listed = other.list_hosts().await.unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(creating.await.unwrap().unwrap().len(), 4);
    other.destroy_deployment().await.unwrap();

    // A droplet that never gets an address is an error naming it, not a
    // host fewer.
    let timing = Timing {
        active_timeout: Duration::from_secs(1),
        ..fast_timing()
    };
    fake.inject(Fault::NeverActive {
        name: "node-2".into(),
    });
    let creator = provider(&fake, timing.clone());
    creator.register_ssh_key(&login_key()).await.unwrap();
    creator.create_hosts(&four()).await.unwrap_err();
    // The process that reported node-2 lists the others at once.
    let started = std::time::Instant::now();
    let mut names: Vec<String> = creator
        .list_hosts()
        .await
        .unwrap()
        .iter()
        .map(|h| h.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["monitor", "node-1", "node-3"]);
    assert!(started.elapsed() < Duration::from_millis(900));
    let error = provider(&fake, timing)
        .list_hosts()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("node-2"), "{error}");
    assert!(error.contains("no public IPv4 address"), "{error}");
    assert!(error.contains("promguard down"), "{error}");
    creator.destroy_deployment().await.unwrap();
    assert_spec(&fake);
}

// Regression: after a create whose answer was lost, the droplets it made
// were not listed yet, and a second create made every one of them twice.
#[tokio::test]
async fn a_lost_create_answer_and_a_lagging_listing_make_no_duplicate() {
    for lost_answer in [
        None,
        Some(Fault::CreateSucceedsThenServerError),
        Some(Fault::CreateSucceedsThenStalls {
            delay: Duration::from_secs(2),
        }),
    ] {
        let fake = FakeDigitalOcean::start(FakeOptions::default())
            .await
            .unwrap();
        let timing = Timing {
            request_timeout: Duration::from_secs(1),
            ..fast_timing()
        };
        let p = provider(&fake, timing);
        p.register_ssh_key(&login_key()).await.unwrap();
        fake.inject(Fault::ListingLag {
            hidden_for: Duration::from_secs(2),
        });
        if let Some(fault) = lost_answer.clone() {
            fake.inject(fault);
        }
        let hosts = p.create_hosts(&four()).await.unwrap();
        assert_eq!(hosts.len(), 4, "{lost_answer:?}");
        assert_eq!(
            fake.droplets_created(),
            4,
            "{lost_answer:?}: a droplet was created twice"
        );
        p.destroy_deployment().await.unwrap();
        assert_spec(&fake);
        fake.stop().await;
    }
}

#[tokio::test]
async fn the_listing_lag_fault_hides_new_droplets_for_a_bounded_time() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let timing = Timing {
        active_timeout: MAX_LISTING_LAG * 2,
        ..fast_timing()
    };
    let p = provider(&fake, timing);
    p.register_ssh_key(&login_key()).await.unwrap();
    fake.inject(Fault::ListingLag {
        hidden_for: Duration::from_secs(3600),
    });
    let started = std::time::Instant::now();
    p.create_hosts(&four()[..1]).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= MAX_LISTING_LAG && waited < MAX_LISTING_LAG * 2,
        "{waited:?}"
    );
    let (status, body) = raw(
        &fake,
        reqwest::Method::GET,
        "/v2/droplets?tag_name=promguard:test",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["droplets"].as_array().unwrap().len(), 1);
    p.destroy_deployment().await.unwrap();
    assert_spec(&fake);
}

// Regression: one droplet with the deployment's tag but no PromGuard host
// name made every listing fail, and with it `up` and `down --discover`.
#[tokio::test]
async fn a_stray_droplet_with_the_tag_is_skipped_and_left_alone() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let p = provider(&fake, fast_timing());
    p.register_ssh_key(&login_key()).await.unwrap();
    p.create_hosts(&four()).await.unwrap();
    let (status, _) = raw(
        &fake,
        reqwest::Method::POST,
        "/v2/droplets",
        Some(serde_json::json!({
            "name": "Web.Server",
            "region": "lon1",
            "size": "s-1vcpu-1gb",
            "image": "debian-12-x64",
            "tags": ["promguard:test"],
        })),
    )
    .await;
    assert_eq!(status, 202);
    let listed = p.list_hosts().await.unwrap();
    assert_eq!(listed.len(), 4);
    p.destroy_deployment().await.unwrap();
    let left: Vec<String> = fake
        .droplets()
        .iter()
        .filter(|d| !d.destroying)
        .map(|d| d.spec.name.clone())
        .collect();
    assert_eq!(left, ["Web.Server"]);
    assert!(fake.firewalls().is_empty());
    assert_spec(&fake);
}

fn inbound_ports(fake: &FakeDigitalOcean) -> Vec<(String, String)> {
    let firewall = fake.firewall("promguard-test").unwrap();
    let mut ports: Vec<(String, String)> = firewall["inbound_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["protocol"].as_str().unwrap().to_owned(),
                r["ports"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ports.sort();
    ports
}

fn firewall_puts(fake: &FakeDigitalOcean) -> usize {
    fake.exchanges()
        .iter()
        .filter(|x| x.method == "PUT" && x.path.starts_with("/v2/firewalls/"))
        .count()
}

// Regression: the Cloud Firewall was made once, with SSH on 22, and kept
// its ports when the config's SSH or WireGuard port changed.
#[tokio::test]
async fn the_firewall_follows_the_ssh_and_wireguard_ports() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let build = |wireguard: u16, ssh: u16| {
        DigitalOceanProvider::builder(
            DeploymentName::new("test").unwrap(),
            Token::new(fake.token()),
        )
        .base_url(fake.base_url())
        .firewall(Some(wireguard))
        .ssh_port(ssh)
        .timing(fast_timing())
        .build()
        .unwrap()
    };
    let hosts = four();
    let first = build(51820, 22);
    first.register_ssh_key(&login_key()).await.unwrap();
    first.create_hosts(&hosts[..1]).await.unwrap();
    let original = [("tcp".into(), "22".into()), ("udp".into(), "51820".into())];
    assert_eq!(inbound_ports(&fake), original);

    let moved = build(51821, 2222);
    moved.register_ssh_key(&login_key()).await.unwrap();
    let created = moved.create_hosts(&hosts).await.unwrap();
    assert!(created.iter().all(|h| h.ssh.port() == 2222));
    assert_eq!(
        inbound_ports(&fake),
        [
            ("tcp".into(), "2222".into()),
            ("udp".into(), "51821".into())
        ]
    );
    assert_eq!(firewall_puts(&fake), 1);
    let firewall = fake.firewall("promguard-test").unwrap();
    // The PUT carries the whole firewall: tags and outbound rules stay.
    assert_eq!(firewall["tags"], serde_json::json!(["promguard:test"]));
    assert_eq!(firewall["outbound_rules"].as_array().unwrap().len(), 3);

    // The same ports again: nothing to update.
    moved.create_hosts(&hosts).await.unwrap();
    assert_eq!(firewall_puts(&fake), 1);
    assert_eq!(fake.firewalls().len(), 1);

    // A run that creates no host carries a port change too.
    let again = build(51822, 2222);
    again.reconcile_deployment().await.unwrap();
    assert_eq!(
        inbound_ports(&fake),
        [
            ("tcp".into(), "2222".into()),
            ("udp".into(), "51822".into())
        ]
    );
    assert_eq!(firewall_puts(&fake), 2);
    again.reconcile_deployment().await.unwrap();
    assert_eq!(firewall_puts(&fake), 2);
    moved.destroy_deployment().await.unwrap();
    assert_spec(&fake);
}

#[tokio::test]
async fn the_fake_updates_firewalls_as_the_spec_says() {
    let fake = FakeDigitalOcean::start(FakeOptions::default())
        .await
        .unwrap();
    let p = provider(&fake, fast_timing());
    p.register_ssh_key(&login_key()).await.unwrap();
    p.create_hosts(&four()[..1]).await.unwrap();
    let id = fake.firewall("promguard-test").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v2/firewalls/{id}");
    let rule = serde_json::json!({
        "protocol": "tcp", "ports": "2200", "sources": { "addresses": ["0.0.0.0/0"] }
    });
    // Unknown firewall, no rules at all, a bad name: refused.
    let (status, _) = raw(
        &fake,
        reqwest::Method::PUT,
        "/v2/firewalls/bb4b2611-3d72-467b-8602-000000000000",
        Some(serde_json::json!({ "name": "x1", "inbound_rules": [rule] })),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = raw(
        &fake,
        reqwest::Method::PUT,
        &path,
        Some(serde_json::json!({ "name": "promguard-test" })),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = raw(
        &fake,
        reqwest::Method::PUT,
        &path,
        Some(serde_json::json!({ "name": "-bad", "inbound_rules": [rule] })),
    )
    .await;
    assert_eq!(status, 422);
    // What the PUT leaves out is reset: here the tags and outbound rules.
    let (status, body) = raw(
        &fake,
        reqwest::Method::PUT,
        &path,
        Some(serde_json::json!({ "name": "renamed", "inbound_rules": [rule] })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["firewall"]["id"], id.as_str());
    assert_eq!(body["firewall"]["name"], "renamed");
    assert_eq!(body["firewall"]["tags"], serde_json::json!([]));
    assert_eq!(body["firewall"]["outbound_rules"], serde_json::json!([]));
    assert_eq!(fake.firewalls(), ["renamed"]);
    // The refused requests broke the spec on purpose; every answer keeps it.
    let spec = openapi::Spec::load();
    let problems: Vec<String> = fake
        .exchanges()
        .iter()
        .filter(|x| x.status < 400)
        .flat_map(|x| spec.check_exchange(x))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
