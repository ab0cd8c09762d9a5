//! The fake's HTTP handling: one handler that checks auth, applies injected
//! faults and rate limits, routes, and records the exchange.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use promguard_core::SshPublicKey;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::{
    md5_fingerprint, now_unix, rfc3339, AccountKey, DropletSpec, Exchange, FakeDroplet,
    FakeOptions, Fault, World,
};

/// Sizes the fake knows: slug, memory MiB, vCPUs, disk GB, transfer TB,
/// monthly and hourly price in USD.
const SIZES: &[(&str, i64, i64, i64, f64, f64, f64)] = &[
    ("s-1vcpu-512mb-10gb", 512, 1, 10, 0.5, 4.0, 0.00595),
    ("s-1vcpu-1gb", 1024, 1, 25, 1.0, 6.0, 0.00893),
    ("s-1vcpu-2gb", 2048, 1, 50, 2.0, 12.0, 0.01786),
    ("s-2vcpu-2gb", 2048, 2, 60, 3.0, 18.0, 0.02679),
    ("s-2vcpu-4gb", 4096, 2, 80, 4.0, 24.0, 0.03571),
];
/// Regions: slug and name.
const REGIONS: &[(&str, &str)] = &[
    ("ams3", "Amsterdam 3"),
    ("blr1", "Bangalore 1"),
    ("fra1", "Frankfurt 1"),
    ("lon1", "London 1"),
    ("nyc1", "New York 1"),
    ("nyc3", "New York 3"),
    ("sfo2", "San Francisco 2"),
    ("sfo3", "San Francisco 3"),
    ("sgp1", "Singapore 1"),
    ("syd1", "Sydney 1"),
    ("tor1", "Toronto 1"),
];
/// Images: slug, id, distribution, name.
const IMAGES: &[(&str, i64, &str, &str)] = &[
    ("ubuntu-24-04-x64", 160_000_001, "Ubuntu", "24.04 (LTS) x64"),
    ("ubuntu-22-04-x64", 160_000_002, "Ubuntu", "22.04 (LTS) x64"),
    ("debian-12-x64", 160_000_003, "Debian", "12 x64"),
];
const MAX_USER_DATA: usize = 64 * 1024;

pub(super) struct FirewallRecord {
    pub id: String,
    pub name: String,
    pub body: Value,
    pub created: u64,
}

pub(super) struct Shared {
    pub token: String,
    options: FakeOptions,
    base_url: String,
    world: Mutex<World>,
}

/// An answer before it becomes HTTP.
struct Answer {
    status: StatusCode,
    body: Option<Value>,
    headers: Vec<(String, String)>,
    /// Held back this long before it is sent.
    delay: Duration,
}

impl Answer {
    fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    fn empty(status: StatusCode) -> Self {
        Self {
            status,
            body: None,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    fn error(status: StatusCode, id: &str, message: &str) -> Self {
        Self::json(status, json!({ "id": id, "message": message }))
    }

    fn unprocessable(message: &str) -> Self {
        Self::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            message,
        )
    }

    fn not_found() -> Self {
        Self::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "The resource you were accessing could not be found.",
        )
    }
}

impl Shared {
    pub fn new(options: FakeOptions, addr: SocketAddr) -> Self {
        let token = options.token.clone().unwrap_or_else(random_token);
        let world = World {
            next_id: 3_164_444,
            remaining: options.rate_limit,
            window_reset: now_unix() + 60,
            ..World::default()
        };
        Self {
            token,
            options,
            base_url: format!("http://{addr}"),
            world: Mutex::new(world),
        }
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn inject(&self, fault: Fault) {
        let mut w = self.world();
        match fault {
            Fault::RateLimit {
                count,
                retry_after_seconds,
            } => {
                w.rate_limited += count;
                w.retry_after = retry_after_seconds;
            }
            Fault::ServerError { count } => w.server_errors += count,
            Fault::NeverActive { name } => {
                w.never_active.insert(name);
            }
            Fault::ListingLag { hidden_for } => {
                w.listing_lag = Some(hidden_for.min(super::MAX_LISTING_LAG))
            }
            Fault::Slow { count, delay } => {
                w.slow += count;
                w.slow_delay = delay;
            }
            f @ (Fault::CreateSucceedsThenServerError | Fault::CreateSucceedsThenStalls { .. }) => {
                w.create_fault = Some(f)
            }
        }
    }

    pub fn add_key(&self, name: &str, key: SshPublicKey) -> u64 {
        let mut w = self.world();
        w.next_id += 1;
        let id = w.next_id;
        let fingerprint = md5_fingerprint(&key);
        w.ssh_keys.insert(
            id,
            AccountKey {
                id,
                name: name.to_owned(),
                key,
                fingerprint,
            },
        );
        id
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // The OS RNG through getrandom via std's hasher seeds is not exposed;
    // /dev/urandom is always there on Linux.
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("dop_v1_fake_{hex}")
}

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: oneshot::Receiver<()>,
) {
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let shared = shared.clone();
            async move { handle(shared, method, uri, headers, body).await }
        },
    );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = shutdown.await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("fake DigitalOcean server failed: {e}");
    }
}

async fn handle(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_body: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let body_is_json = body.is_empty() || request_body.is_some();
    let mut answer = answer(
        &shared,
        &method,
        &uri,
        &headers,
        request_body.as_ref(),
        body_is_json,
    )
    .await;

    // Rate-limit headers on every response.
    {
        let w = shared.world();
        let remaining = if answer.status == StatusCode::TOO_MANY_REQUESTS {
            0
        } else {
            w.remaining
        };
        answer.headers.push((
            "ratelimit-limit".into(),
            shared.options.rate_limit.to_string(),
        ));
        answer
            .headers
            .push(("ratelimit-remaining".into(), remaining.to_string()));
        answer
            .headers
            .push(("ratelimit-reset".into(), w.window_reset.to_string()));
    }
    shared.world().exchanges.push(Exchange {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        request_body,
        status: answer.status.as_u16(),
        response_body: answer.body.clone(),
        response_headers: answer.headers.clone(),
    });
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = match &answer.body {
        Some(body) => (answer.status, axum::Json(body.clone())).into_response(),
        None => answer.status.into_response(),
    };
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

async fn answer(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Option<&Value>,
    body_is_json: bool,
) -> Answer {
    let delay = {
        let mut w = shared.world();
        if w.slow > 0 {
            w.slow -= 1;
            w.slow_delay
        } else {
            Duration::ZERO
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let expected = format!("Bearer {}", shared.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Answer::error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unable to authenticate you",
        );
    }
    {
        let mut w = shared.world();
        let now = now_unix();
        if now >= w.window_reset {
            w.window_reset = now + 60;
            w.remaining = shared.options.rate_limit;
        }
        if w.rate_limited > 0 || w.remaining == 0 {
            let retry_after = if w.rate_limited > 0 {
                w.rate_limited -= 1;
                w.retry_after
            } else {
                w.window_reset.saturating_sub(now)
            };
            let mut a = Answer::error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "API rate limit exceeded.",
            );
            a.headers
                .push(("retry-after".into(), retry_after.to_string()));
            return a;
        }
        w.remaining -= 1;
        if w.server_errors > 0 {
            w.server_errors -= 1;
            return Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Unexpected server-side error",
            );
        }
    }
    if !body_is_json {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "The request body is not valid JSON.",
        );
    }
    let query = parse_query(uri.query());
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["v2", "droplets"]) => list_droplets(shared, uri.path(), &query),
        (Method::POST, ["v2", "droplets"]) => create_droplets(shared, body).await,
        (Method::DELETE, ["v2", "droplets"]) => match query.get("tag_name") {
            Some(tag) => destroy_droplets(shared, |d| d.spec.tags.contains(tag)),
            None => Answer::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "tag_name is required to delete Droplets in bulk.",
            ),
        },
        (Method::GET, ["v2", "droplets", id]) => {
            let now = Instant::now();
            let w = shared.world();
            match id.parse::<u64>().ok().and_then(|id| w.droplets.get(&id)) {
                Some(d) => Answer::json(
                    StatusCode::OK,
                    json!({ "droplet": droplet_json(shared, &w, d, now) }),
                ),
                None => Answer::not_found(),
            }
        }
        (Method::DELETE, ["v2", "droplets", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return Answer::not_found();
            };
            if !shared.world().droplets.contains_key(&id) {
                return Answer::not_found();
            }
            destroy_droplets(shared, |d| d.spec.id == id)
        }
        (Method::GET, ["v2", "account", "keys"]) => {
            let w = shared.world();
            let keys: Vec<Value> = w.ssh_keys.values().map(key_json).collect();
            paginate(shared, uri.path(), &query, "ssh_keys", keys)
        }
        (Method::POST, ["v2", "account", "keys"]) => create_key(shared, body),
        (Method::GET, ["v2", "account", "keys", which]) => {
            let w = shared.world();
            match find_key(&w, which) {
                Some(k) => Answer::json(StatusCode::OK, json!({ "ssh_key": key_json(k) })),
                None => Answer::not_found(),
            }
        }
        (Method::DELETE, ["v2", "account", "keys", which]) => {
            let mut w = shared.world();
            match find_key(&w, which).map(|k| k.id) {
                Some(id) => {
                    w.ssh_keys.remove(&id);
                    Answer::empty(StatusCode::NO_CONTENT)
                }
                None => Answer::not_found(),
            }
        }
        (Method::POST, ["v2", "tags"]) => create_tag(shared, body),
        (Method::DELETE, ["v2", "tags", name]) => {
            let name = percent_decode(name);
            let mut w = shared.world();
            let in_use = w.droplets.values().any(|d| d.spec.tags.contains(&name));
            if in_use {
                // The real API would untag them; PromGuard deletes droplets first.
                Answer::unprocessable("the tag is still applied to droplets")
            } else if w.tags.remove(&name) {
                Answer::empty(StatusCode::NO_CONTENT)
            } else {
                Answer::not_found()
            }
        }
        (Method::GET, ["v2", "firewalls"]) => {
            let w = shared.world();
            let list: Vec<Value> = w.firewalls.iter().map(firewall_json).collect();
            paginate(shared, uri.path(), &query, "firewalls", list)
        }
        (Method::POST, ["v2", "firewalls"]) => create_firewall(shared, body),
        (Method::PUT, ["v2", "firewalls", id]) => update_firewall(shared, id, body),
        (Method::DELETE, ["v2", "firewalls", id]) => {
            let mut w = shared.world();
            let before = w.firewalls.len();
            w.firewalls.retain(|f| f.id != *id);
            if w.firewalls.len() < before {
                Answer::empty(StatusCode::NO_CONTENT)
            } else {
                Answer::not_found()
            }
        }
        _ => Answer::not_found(),
    }
}

fn parse_query(query: Option<&str>) -> std::collections::HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One page of `items` under `key`, with `links.pages` and `meta.total` as
/// the API sets them.
fn paginate(
    shared: &Shared,
    path: &str,
    query: &std::collections::HashMap<String, String>,
    key: &str,
    items: Vec<Value>,
) -> Answer {
    let per_page = match query.get("per_page").map(|v| v.parse::<usize>()) {
        None => 20,
        Some(Ok(n)) if (1..=200).contains(&n) => n,
        Some(_) => return Answer::unprocessable("per_page must be between 1 and 200"),
    };
    let page = match query.get("page").map(|v| v.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => return Answer::unprocessable("page must be 1 or more"),
    };
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let link = |n: usize| {
        let mut parts: Vec<String> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "page")
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        parts.sort();
        parts.push(format!("page={n}"));
        format!("{}{}?{}", shared.base_url, path, parts.join("&"))
    };
    let mut pages = Map::new();
    if page > 1 {
        pages.insert("first".into(), json!(link(1)));
        pages.insert("prev".into(), json!(link(page - 1)));
    }
    if page < last {
        pages.insert("next".into(), json!(link(page + 1)));
        pages.insert("last".into(), json!(link(last)));
    }
    let links = if pages.is_empty() {
        json!({})
    } else {
        json!({ "pages": pages })
    };
    let mut body = Map::new();
    body.insert(key.into(), Value::Array(page_items));
    body.insert("links".into(), links);
    body.insert("meta".into(), json!({ "total": total }));
    Answer::json(StatusCode::OK, Value::Object(body))
}

fn valid_droplet_name(name: &str) -> bool {
    // The spec's pattern: ^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 255
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'-')
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 255
        && tag
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b':')
}

async fn create_droplets(shared: &Arc<Shared>, body: Option<&Value>) -> Answer {
    let Some(body) = body.and_then(Value::as_object) else {
        return Answer::unprocessable(
            "request payload validation failed: the body must be a JSON object",
        );
    };
    let names: Vec<String> = match (body.get("name"), body.get("names")) {
        (Some(_), Some(_)) => {
            return Answer::unprocessable("specify either name or names, not both")
        }
        (Some(Value::String(name)), None) => vec![name.clone()],
        (None, Some(Value::Array(list))) => {
            let mut names = Vec::new();
            for n in list {
                match n.as_str() {
                    Some(s) => names.push(s.to_owned()),
                    None => return Answer::unprocessable("names must be strings"),
                }
            }
            names
        }
        _ => return Answer::unprocessable("name or names is required"),
    };
    if names.is_empty() {
        return Answer::unprocessable("names must not be empty");
    }
    if names.len() > 10 {
        return Answer::unprocessable(
            "You can only create up to 10 Droplets at a time; split the request",
        );
    }
    if let Some(bad) = names.iter().find(|n| !valid_droplet_name(n)) {
        return Answer::unprocessable(&format!(
            "Name {bad:?} is invalid: only letters, numbers, '.' and '-' are allowed"
        ));
    }
    let region = match body.get("region") {
        None => "nyc3".to_owned(),
        Some(Value::String(r)) if REGIONS.iter().any(|(slug, _)| slug == r) => r.clone(),
        Some(_) => {
            return Answer::unprocessable("You specified an invalid region for Droplet creation.")
        }
    };
    match body.get("size").and_then(Value::as_str) {
        Some(s) if SIZES.iter().any(|z| z.0 == s) => {}
        _ => return Answer::unprocessable("You specified an invalid size for Droplet creation."),
    }
    match body.get("image") {
        Some(Value::String(s)) if IMAGES.iter().any(|i| i.0 == s) => {}
        _ => return Answer::unprocessable("You specified an invalid image for Droplet creation."),
    }
    let mut tags = Vec::new();
    match body.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for t in list {
                match t.as_str() {
                    Some(t) if valid_tag(t) => tags.push(t.to_owned()),
                    _ => {
                        return Answer::unprocessable(
                            "Tags may contain letters, numbers, colons, dashes, and underscores",
                        )
                    }
                }
            }
        }
        Some(_) => return Answer::unprocessable("tags must be an array of strings"),
    }
    let user_data = match body.get("user_data") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if u.len() <= MAX_USER_DATA => Some(u.clone()),
        Some(Value::String(_)) => return Answer::unprocessable("user_data is limited to 64 KiB"),
        Some(_) => return Answer::unprocessable("user_data must be a string"),
    };
    let mut answer_fault = None;
    let created: Vec<FakeDroplet> = {
        let mut w = shared.world();
        let mut authorized_keys = Vec::new();
        if let Some(list) = body.get("ssh_keys") {
            let Some(list) = list.as_array() else {
                return Answer::unprocessable("ssh_keys must be an array");
            };
            for k in list {
                let which = match k {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    _ => return Answer::unprocessable("ssh_keys must hold ids or fingerprints"),
                };
                match find_key(&w, &which) {
                    Some(key) => authorized_keys.push(key.key.clone()),
                    None => {
                        return Answer::unprocessable(&format!(
                            "SSH key {which} is not on your account"
                        ))
                    }
                }
            }
        }
        let live = w.droplets.values().filter(|d| !d.destroying).count();
        if live + names.len() > shared.options.droplet_limit {
            return Answer::unprocessable(&format!(
                "creating this/these droplet(s) will exceed your droplet limit of {}",
                shared.options.droplet_limit
            ));
        }
        for tag in &tags {
            w.tags.insert(tag.clone());
        }
        if let Some(f) = w.create_fault.take() {
            answer_fault = Some(f);
        }
        let unlisted_until = w.listing_lag.take().map(|lag| Instant::now() + lag);
        let mut made = Vec::new();
        for name in &names {
            w.next_id += 1;
            w.created += 1;
            let id = w.next_id;
            let droplet = FakeDroplet {
                spec: DropletSpec {
                    id,
                    name: name.clone(),
                    region: region.clone(),
                    user_data: user_data.clone(),
                    authorized_keys: authorized_keys.clone(),
                    tags: tags.clone(),
                },
                public_address: None,
                destroying: false,
            };
            w.created_at.insert(id, now_unix());
            if let Some(until) = unlisted_until {
                w.unlisted_until.insert(id, until);
            }
            w.droplets.insert(id, droplet.clone());
            made.push(droplet);
        }
        made
    };
    // Boot the machines in the background: the API answers 202 at once and
    // the droplets stay `new` until they are up.
    for droplet in &created {
        let shared = shared.clone();
        let spec = droplet.spec.clone();
        tokio::spawn(async move {
            let backend = shared.options.backend.clone();
            let boot_spec = spec.clone();
            let result = tokio::task::spawn_blocking(move || backend.create(&boot_spec)).await;
            let mut w = shared.world();
            match result {
                Ok(Ok(ip)) => {
                    if let Some(d) = w.droplets.get_mut(&spec.id) {
                        d.public_address = Some(ip);
                    }
                    w.booted_at.insert(spec.id, Instant::now());
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        "fake DigitalOcean: droplet {} failed to boot: {e}",
                        spec.name
                    );
                    w.failed.insert(spec.id);
                }
                Err(e) => {
                    tracing::warn!(
                        "fake DigitalOcean: droplet {} boot panicked: {e}",
                        spec.name
                    );
                    w.failed.insert(spec.id);
                }
            }
        });
    }
    match answer_fault {
        Some(Fault::CreateSucceedsThenServerError) => {
            return Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Unexpected server-side error",
            )
        }
        Some(Fault::CreateSucceedsThenStalls { delay }) => {
            let mut a = Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Unexpected server-side error",
            );
            a.delay = delay;
            return a;
        }
        _ => {}
    }
    let now = Instant::now();
    let w = shared.world();
    let links = json!({
        "actions": created.iter().map(|d| json!({
            "id": d.spec.id + 1_000_000,
            "rel": "create",
            "href": format!("{}/v2/actions/{}", shared.base_url, d.spec.id + 1_000_000),
        })).collect::<Vec<_>>()
    });
    let body = if body.contains_key("name") {
        json!({ "droplet": droplet_json(shared, &w, &created[0], now), "links": links })
    } else {
        json!({
            "droplets": created.iter().map(|d| droplet_json(shared, &w, d, now)).collect::<Vec<_>>(),
            "links": links,
        })
    };
    Answer::json(StatusCode::ACCEPTED, body)
}

fn destroy_droplets(shared: &Arc<Shared>, which: impl Fn(&FakeDroplet) -> bool) -> Answer {
    let doomed: Vec<DropletSpec> = {
        let mut w = shared.world();
        let mut doomed = Vec::new();
        for d in w.droplets.values_mut() {
            if which(d) && !d.destroying {
                d.destroying = true;
                doomed.push(d.spec.clone());
            }
        }
        doomed
    };
    for spec in doomed {
        let shared = shared.clone();
        tokio::spawn(async move {
            let backend = shared.options.backend.clone();
            let destroy_spec = spec.clone();
            let result = tokio::task::spawn_blocking(move || backend.destroy(&destroy_spec)).await;
            if let Ok(Err(e)) = result {
                tracing::warn!(
                    "fake DigitalOcean: droplet {} failed to go away: {e}",
                    spec.name
                );
            }
            tokio::time::sleep(shared.options.destroy_after).await;
            shared.world().droplets.remove(&spec.id);
        });
    }
    Answer::empty(StatusCode::NO_CONTENT)
}

fn list_droplets(
    shared: &Shared,
    path: &str,
    query: &std::collections::HashMap<String, String>,
) -> Answer {
    let now = Instant::now();
    let w = shared.world();
    let items: Vec<Value> = w
        .droplets
        .values()
        .filter(|d| match query.get("tag_name") {
            Some(tag) => d.spec.tags.contains(tag),
            None => true,
        })
        .filter(|d| w.unlisted_until.get(&d.spec.id).is_none_or(|t| now >= *t))
        .map(|d| droplet_json(shared, &w, d, now))
        .collect();
    paginate(shared, path, query, "droplets", items)
}

/// A droplet in the API's full shape.
fn droplet_json(shared: &Shared, w: &World, d: &FakeDroplet, now: Instant) -> Value {
    let id = d.spec.id;
    let status = if w.failed.contains(&id) {
        "off"
    } else {
        match w.booted_at.get(&id) {
            Some(t)
                if now.duration_since(*t) >= shared.options.active_after
                    && !w.never_active.contains(&d.spec.name) =>
            {
                "active"
            }
            _ => "new",
        }
    };
    let (size_slug, memory, vcpus, disk, transfer, monthly, hourly) = SIZES[1];
    let (region_slug, region_name) = REGIONS
        .iter()
        .find(|(slug, _)| *slug == d.spec.region)
        .copied()
        .unwrap_or(REGIONS[0]);
    let (image_slug, image_id, distribution, image_name) = IMAGES[0];
    let mut v4 = Vec::new();
    if status == "active" {
        if let Some(ip) = d.public_address {
            // The real API lists the private address first: never take index 0.
            v4.push(json!({
                "ip_address": format!("10.{}.{}.{}", (id >> 16) as u8, (id >> 8) as u8, id as u8),
                "netmask": "255.255.0.0",
                "gateway": "10.0.0.1",
                "type": "private",
            }));
            let o = ip.octets();
            v4.push(json!({
                "ip_address": ip.to_string(),
                "netmask": "255.255.255.0",
                "gateway": format!("{}.{}.{}.1", o[0], o[1], o[2]),
                "type": "public",
            }));
        }
    }
    let created = w.created_at.get(&id).copied().unwrap_or_else(now_unix);
    let region_list: Vec<&str> = REGIONS.iter().map(|r| r.0).collect();
    let size_list: Vec<&str> = SIZES.iter().map(|s| s.0).collect();
    json!({
        "id": id,
        "name": d.spec.name,
        "memory": memory,
        "vcpus": vcpus,
        "disk": disk,
        "locked": false,
        "status": status,
        "kernel": null,
        "created_at": rfc3339(created),
        "features": ["droplet_agent", "private_networking"],
        "backup_ids": [],
        "next_backup_window": null,
        "snapshot_ids": [],
        "image": {
            "id": image_id,
            "name": image_name,
            "distribution": distribution,
            "slug": image_slug,
            "public": true,
            "regions": region_list,
            "created_at": "2024-04-25T13:44:27Z",
            "min_disk_size": 7,
            "type": "base",
            "size_gigabytes": 2.46,
            "description": format!("{distribution} {image_name}"),
            "tags": [],
            "status": "available",
        },
        "volume_ids": [],
        "size": {
            "slug": size_slug,
            "memory": memory,
            "vcpus": vcpus,
            "disk": disk,
            "transfer": transfer,
            "price_monthly": monthly,
            "price_hourly": hourly,
            "regions": region_list,
            "available": true,
            "description": "Basic",
        },
        "size_slug": size_slug,
        "networks": { "v4": v4, "v6": [] },
        "region": {
            "name": region_name,
            "slug": region_slug,
            "features": ["backups", "ipv6", "metadata", "install_agent"],
            "available": true,
            "sizes": size_list,
        },
        "tags": d.spec.tags,
        "vpc_uuid": "5a4981aa-9653-4bd1-bef5-d6bff52042e4",
    })
}

fn key_json(k: &AccountKey) -> Value {
    json!({
        "id": k.id,
        "fingerprint": k.fingerprint,
        "public_key": k.key.to_string(),
        "name": k.name,
    })
}

fn find_key<'w>(w: &'w World, which: &str) -> Option<&'w AccountKey> {
    w.ssh_keys
        .values()
        .find(|k| k.id.to_string() == which || k.fingerprint == which)
}

fn create_key(shared: &Shared, body: Option<&Value>) -> Answer {
    let body = body.and_then(Value::as_object);
    let name = body.and_then(|b| b.get("name")).and_then(Value::as_str);
    let public = body
        .and_then(|b| b.get("public_key"))
        .and_then(Value::as_str);
    let (Some(name), Some(public)) = (name, public) else {
        return Answer::unprocessable("name and public_key are required");
    };
    if name.trim().is_empty() {
        return Answer::unprocessable("Name can't be blank");
    }
    let Ok(key) = SshPublicKey::parse(public) else {
        return Answer::unprocessable(
            "Key invalid type, we support 'ssh-rsa', 'ssh-ed25519' and 'ecdsa-sha2-*' keys",
        );
    };
    if shared.world().ssh_keys.values().any(|k| k.key == key) {
        return Answer::unprocessable("SSH Key is already in use on your account");
    }
    let id = shared.add_key(name, key);
    let w = shared.world();
    Answer::json(
        StatusCode::CREATED,
        json!({ "ssh_key": key_json(&w.ssh_keys[&id]) }),
    )
}

fn create_tag(shared: &Shared, body: Option<&Value>) -> Answer {
    let Some(name) = body.and_then(|b| b.get("name")).and_then(Value::as_str) else {
        return Answer::unprocessable("name is required");
    };
    if !valid_tag(name) {
        return Answer::unprocessable(
            "Tags may contain letters, numbers, colons, dashes, and underscores",
        );
    }
    shared.world().tags.insert(name.to_owned());
    Answer::json(
        StatusCode::CREATED,
        json!({ "tag": { "name": name, "resources": { "count": 0, "last_tagged_uri": "" } } }),
    )
}

/// Checks a firewall as `POST /v2/firewalls` and `PUT /v2/firewalls/{id}`
/// take it (`models/firewall.yml`): a valid name, rules with a known
/// protocol, string ports and their sources or destinations, at least one
/// rule, and tags that exist.
fn check_firewall(w: &World, body: &Map<String, Value>) -> Result<String, Answer> {
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        return Err(Answer::unprocessable("name is required"));
    };
    let name_ok = name.len() >= 2
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
    if !name_ok {
        return Err(Answer::unprocessable(
            "name must begin with a letter or digit and hold only letters, digits, '.' and '-'",
        ));
    }
    let rules = |key: &str, target: &str| -> Result<usize, String> {
        let Some(list) = body.get(key) else {
            return Ok(0);
        };
        let list = list.as_array().ok_or(format!("{key} must be an array"))?;
        for rule in list {
            let protocol = rule.get("protocol").and_then(Value::as_str);
            if !matches!(protocol, Some("tcp" | "udp" | "icmp")) {
                return Err(format!("{key}: protocol must be tcp, udp or icmp"));
            }
            if rule.get("ports").and_then(Value::as_str).is_none() {
                return Err(format!("{key}: ports must be a string"));
            }
            if rule.get(target).map(Value::is_object) != Some(true) {
                return Err(format!("{key}: {target} is required"));
            }
        }
        Ok(list.len())
    };
    let count = match (
        rules("inbound_rules", "sources"),
        rules("outbound_rules", "destinations"),
    ) {
        (Ok(a), Ok(b)) => a + b,
        (Err(e), _) | (_, Err(e)) => return Err(Answer::unprocessable(&e)),
    };
    if count == 0 {
        return Err(Answer::unprocessable(
            "a firewall needs at least one inbound or outbound rule",
        ));
    }
    if let Some(tags) = body.get("tags").and_then(Value::as_array) {
        for tag in tags {
            let tag = tag.as_str().unwrap_or_default();
            if !w.tags.contains(tag) {
                return Err(Answer::unprocessable(&format!(
                    "tag {tag:?} does not exist; create it first"
                )));
            }
        }
    }
    Ok(name.to_owned())
}

fn create_firewall(shared: &Shared, body: Option<&Value>) -> Answer {
    let Some(body) = body.and_then(Value::as_object) else {
        return Answer::unprocessable("request payload validation failed");
    };
    let mut w = shared.world();
    let name = match check_firewall(&w, body) {
        Ok(name) => name,
        Err(answer) => return answer,
    };
    w.next_id += 1;
    let n = w.next_id;
    let record = FirewallRecord {
        id: format!("bb4b2611-3d72-467b-8602-{n:012x}"),
        name,
        body: Value::Object(body.clone()),
        created: now_unix(),
    };
    let json = firewall_json(&record);
    w.firewalls.push(record);
    Answer::json(StatusCode::ACCEPTED, json!({ "firewall": json }))
}

/// `PUT /v2/firewalls/{id}` (`firewalls_update`): the body is the whole
/// firewall, `name` and one of `inbound_rules` and `outbound_rules`
/// required; whatever it leaves out is reset to its default (no rules, no
/// tags, no droplets). Answers 200 with the updated firewall.
fn update_firewall(shared: &Shared, id: &str, body: Option<&Value>) -> Answer {
    let mut w = shared.world();
    let Some(index) = w.firewalls.iter().position(|f| f.id == id) else {
        return Answer::not_found();
    };
    let Some(body) = body.and_then(Value::as_object) else {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request payload validation failed: the body must be a JSON object",
        );
    };
    if !body.contains_key("inbound_rules") && !body.contains_key("outbound_rules") {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "inbound_rules or outbound_rules is required",
        );
    }
    let name = match check_firewall(&w, body) {
        Ok(name) => name,
        Err(answer) => return answer,
    };
    let record = &mut w.firewalls[index];
    record.name = name;
    record.body = Value::Object(body.clone());
    let json = firewall_json(record);
    Answer::json(StatusCode::OK, json!({ "firewall": json }))
}

pub(super) fn firewall_json(f: &FirewallRecord) -> Value {
    let get = |k: &str| f.body.get(k).cloned().unwrap_or(json!([]));
    json!({
        "id": f.id,
        "status": "succeeded",
        "created_at": rfc3339(f.created),
        "pending_changes": [],
        "name": f.name,
        "droplet_ids": get("droplet_ids"),
        "tags": get("tags"),
        "inbound_rules": get("inbound_rules"),
        "outbound_rules": get("outbound_rules"),
    })
}
