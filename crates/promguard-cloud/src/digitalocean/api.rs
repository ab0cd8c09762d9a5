//! The HTTP side of the DigitalOcean provider: authenticated requests with
//! rate-limit handling and retries, and the decoding of API errors. Nothing
//! here knows about droplets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::{Timing, Token};

/// What went wrong talking to the API. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 401.
    #[error("DigitalOcean rejected the API token (401 Unauthorized); set DIGITALOCEAN_TOKEN to a valid personal access token with read and write scope")]
    Unauthorized,
    /// 403.
    #[error("the DigitalOcean API token may not {what} (403 Forbidden: {message}); create a token with read and write scope")]
    Forbidden { what: String, message: String },
    /// 404.
    #[error("DigitalOcean has no such resource when trying to {what}: {message}")]
    NotFound { what: String, message: String },
    /// 422 and other 4xx.
    #[error("DigitalOcean refused to {what} ({status}): {message}")]
    Refused {
        what: String,
        status: u16,
        id: String,
        message: String,
    },
    /// 429 more often than we retry.
    #[error("DigitalOcean rate limit exceeded while trying to {what}, still after {attempts} attempts; wait a minute and run again")]
    RateLimited { what: String, attempts: u32 },
    /// 5xx more often than we retry.
    #[error("DigitalOcean failed to {what} ({status}: {message}), still after {attempts} attempts; see https://status.digitalocean.com and run again")]
    Server {
        what: String,
        status: u16,
        message: String,
        attempts: u32,
    },
    /// Connection failures and timeouts, after retries.
    #[error("cannot reach the DigitalOcean API to {what} after {attempts} attempts: {message}")]
    Transport {
        what: String,
        message: String,
        attempts: u32,
    },
    /// A body that does not have the documented shape.
    #[error("DigitalOcean answered {what} with unexpected JSON at {path}: {message}")]
    Decode {
        what: String,
        path: String,
        message: String,
    },
    /// A well-formed answer with values we refuse (bad names, addresses, links).
    #[error("DigitalOcean answered {what} with an invalid value: {message}")]
    Invalid { what: String, message: String },
}

impl ApiError {
    /// Whether the request may have taken effect although we got no success.
    pub(crate) fn maybe_applied(&self) -> bool {
        matches!(self, ApiError::Server { .. } | ApiError::Transport { .. })
    }
}

/// The error body of the API: `{"id": "...", "message": "..."}`.
#[derive(Deserialize)]
struct ErrorBody {
    id: Option<String>,
    message: Option<String>,
}

/// How a request may be repeated after a failure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Repeat {
    /// GET and DELETE: repeating changes nothing, so retry 5xx and transport
    /// errors as well as 429.
    Idempotent,
    /// A create: only a 429 proves nothing happened, so only that is retried
    /// here; the caller checks what exists before it tries again.
    OnlyIfRejected,
}

/// A successful response.
pub(crate) struct Reply {
    pub body: Vec<u8>,
}

impl Reply {
    /// Decodes the body, naming the JSON path of a mismatch.
    pub(crate) fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(&self.body);
        serde_path_to_error::deserialize(&mut de).map_err(|e| ApiError::Decode {
            what: what.to_owned(),
            path: e.path().to_string(),
            message: clean(&e.inner().to_string()),
        })
    }
}

/// Keeps server text short, printable and on one line: it is untrusted.
pub(crate) fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// The authenticated client.
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    token: Token,
    timing: Timing,
    /// When the rate limit is used up, the time it resets (Unix seconds).
    exhausted_until: Mutex<Option<u64>>,
}

impl Api {
    pub(crate) fn new(base: &str, token: Token, timing: Timing) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://127.0.0.1:")) {
            // Plain HTTP would send the token in the clear; only a local fake gets it.
            return Err(format!(
                "the DigitalOcean API URL {base:?} must use https (plain http only for 127.0.0.1)"
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(timing.request_timeout)
            .connect_timeout(timing.request_timeout)
            .user_agent(concat!("promguard/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the token elsewhere; the API does not redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base,
            token,
            timing,
            exhausted_until: Mutex::new(None),
        })
    }

    /// The base URL, e.g. `https://api.digitalocean.com`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Turns a path (`/v2/droplets?...`) or a `next` link from the API into a
    /// URL, refusing links to any other server: they would get the token.
    pub(crate) fn url(&self, path_or_link: &str, what: &str) -> Result<String, ApiError> {
        if path_or_link.starts_with('/') {
            return Ok(format!("{}{}", self.base, path_or_link));
        }
        let same_server = path_or_link
            .strip_prefix(&self.base)
            .is_some_and(|rest| rest.starts_with('/'));
        if same_server {
            Ok(path_or_link.to_owned())
        } else {
            Err(ApiError::Invalid {
                what: what.to_owned(),
                message: format!(
                    "a pagination link points away from {}: {}",
                    self.base,
                    clean(path_or_link)
                ),
            })
        }
    }

    /// Sends one request, waiting out rate limits and retrying as `repeat`
    /// allows. `what` says what the request is for, for error messages.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        repeat: Repeat,
        what: &str,
    ) -> Result<Reply, ApiError> {
        let attempts = self.timing.max_attempts.max(1);
        let mut backoff = self.timing.retry_backoff;
        let mut last: Option<ApiError> = None;
        for attempt in 1..=attempts {
            self.wait_for_rate_limit().await;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(self.token.expose())
                .header("accept", "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    let error = ApiError::Transport {
                        what: what.to_owned(),
                        message: self.redact(&transport_message(&e)),
                        attempts: attempt,
                    };
                    if repeat == Repeat::OnlyIfRejected {
                        return Err(error);
                    }
                    tracing::debug!(%error, "retrying");
                    last = Some(error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.timing.max_backoff);
                    continue;
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            self.note_rate_limit(&headers).await;
            let bytes = match response.bytes().await {
                Ok(bytes) => bytes.to_vec(),
                Err(e) => {
                    let error = ApiError::Transport {
                        what: what.to_owned(),
                        message: self.redact(&transport_message(&e)),
                        attempts: attempt,
                    };
                    if repeat == Repeat::OnlyIfRejected {
                        return Err(error);
                    }
                    last = Some(error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.timing.max_backoff);
                    continue;
                }
            };
            if status.is_success() {
                return Ok(Reply { body: bytes });
            }
            let (id, message) = self.error_body(&bytes, status);
            match status.as_u16() {
                401 => return Err(ApiError::Unauthorized),
                403 => {
                    return Err(ApiError::Forbidden {
                        what: what.to_owned(),
                        message,
                    })
                }
                404 => {
                    return Err(ApiError::NotFound {
                        what: what.to_owned(),
                        message,
                    })
                }
                429 => {
                    let wait = self.retry_after(&headers);
                    tracing::debug!(?wait, "rate limited by DigitalOcean");
                    last = Some(ApiError::RateLimited {
                        what: what.to_owned(),
                        attempts: attempt,
                    });
                    if attempt < attempts {
                        tokio::time::sleep(wait).await;
                    }
                }
                500..=599 => {
                    let error = ApiError::Server {
                        what: what.to_owned(),
                        status: status.as_u16(),
                        message,
                        attempts: attempt,
                    };
                    if repeat == Repeat::OnlyIfRejected {
                        return Err(error);
                    }
                    last = Some(error);
                    if attempt < attempts {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.timing.max_backoff);
                    }
                }
                code => {
                    return Err(ApiError::Refused {
                        what: what.to_owned(),
                        status: code,
                        id,
                        message,
                    })
                }
            }
        }
        Err(last.unwrap_or(ApiError::Transport {
            what: what.to_owned(),
            message: "no attempt was made".into(),
            attempts: 0,
        }))
    }

    fn error_body(&self, bytes: &[u8], status: StatusCode) -> (String, String) {
        let parsed: Option<ErrorBody> = serde_json::from_slice(bytes).ok();
        let id = parsed
            .as_ref()
            .and_then(|b| b.id.clone())
            .unwrap_or_default();
        let message = parsed
            .and_then(|b| b.message)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        (clean(&id), self.redact(&clean(&message)))
    }

    /// Removes the token should a server (or a proxy) echo it back.
    fn redact(&self, text: &str) -> String {
        let secret = self.token.expose();
        if secret.is_empty() {
            text.to_owned()
        } else {
            text.replace(secret, "<redacted>")
        }
    }

    /// How long to wait after a 429: `retry-after` (seconds), else until
    /// `ratelimit-reset`, else the backoff; never more than `max_rate_wait`.
    fn retry_after(&self, headers: &HeaderMap) -> Duration {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let wait = if let Some(seconds) = number("retry-after") {
            Duration::from_secs(seconds)
        } else if let Some(reset) = number("ratelimit-reset") {
            Duration::from_secs(reset.saturating_sub(now_unix()))
        } else {
            self.timing.retry_backoff
        };
        wait.min(self.timing.max_rate_wait)
    }

    async fn note_rate_limit(&self, headers: &HeaderMap) {
        *self.exhausted_until.lock().await = exhausted_until(headers, now_unix());
    }

    /// Sleeps until the rate limit resets when the last response said none
    /// is left, so we do not provoke a 429.
    async fn wait_for_rate_limit(&self) {
        let until = *self.exhausted_until.lock().await;
        if let Some(reset) = until {
            let wait = Duration::from_secs(reset.saturating_sub(now_unix()))
                .min(self.timing.max_rate_wait);
            if !wait.is_zero() {
                tracing::info!(
                    ?wait,
                    "DigitalOcean rate limit used up; waiting for it to reset"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Until when (Unix seconds) no request may be sent, after a response with
/// `headers` received at `now`; `None` while requests remain.
///
/// A burst-limit 429 carries `retry-after` next to a `ratelimit-reset`
/// that may be most of an hour away (it is when the oldest request of the
/// hour expires): the explicit, shorter wait is the one that applies.
fn exhausted_until(headers: &HeaderMap, now: u64) -> Option<u64> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match (
        number("ratelimit-remaining"),
        number("retry-after"),
        number("ratelimit-reset"),
    ) {
        (Some(0), Some(seconds), _) => Some(now.saturating_add(seconds)),
        (Some(0), None, Some(reset)) => Some(reset),
        _ => None,
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A transport error in words, with its causes; reqwest's messages carry the
/// URL but never the request headers, so the token is not in them.
fn transport_message(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "the request timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    clean(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn retry_after_wins_over_a_distant_reset() {
        let now = 1_700_000_000;
        let burst = headers(&[
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "1700003500"),
            ("retry-after", "29"),
        ]);
        assert_eq!(exhausted_until(&burst, now), Some(now + 29));
        let hourly = headers(&[
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "1700003500"),
        ]);
        assert_eq!(exhausted_until(&hourly, now), Some(1_700_003_500));
        let fine = headers(&[
            ("ratelimit-remaining", "4816"),
            ("ratelimit-reset", "1700003500"),
        ]);
        assert_eq!(exhausted_until(&fine, now), None);
        let garbage = headers(&[("ratelimit-remaining", "0"), ("retry-after", "soon")]);
        assert_eq!(exhausted_until(&garbage, now), None);
        let huge = headers(&[
            ("ratelimit-remaining", "0"),
            ("retry-after", "18446744073709551615"),
        ]);
        assert_eq!(exhausted_until(&huge, now), Some(u64::MAX));
    }
}
