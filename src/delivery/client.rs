//! The HTTP sender: one pooled reqwest client (rustls, HTTP/1.1 and HTTP/2, keep-alive), no
//! redirects, a timeout, the SSRF guard, and Standard Webhooks headers.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::guard;
use super::retry::{Outcome, classify};
use super::signing::{BadSecret, Key};

/// A subscription's target, prepared once when routing is built: the parsed URL, the
/// decoded signing key and the extra headers. Problems are kept and reported per send.
#[derive(Debug, Clone)]
pub struct Target {
    url: Result<reqwest::Url, String>,
    key: Result<Key, BadSecret>,
    headers: HeaderMap,
}

impl Target {
    /// Prepares `url`, `secret` (`whsec_…`) and `headers` (a JSON object of strings; other
    /// values are skipped).
    pub fn new(url: &str, secret: &str, headers: &serde_json::Value) -> Target {
        let mut extra = HeaderMap::new();
        for (name, value) in headers.as_object().into_iter().flatten() {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::try_from),
            ) {
                extra.insert(name, value);
            }
        }
        Target {
            url: parse_url(url),
            key: Key::parse(secret),
            headers: extra,
        }
    }
}

/// Most bytes of a verification response body read (the challenge echo fits many times).
pub const VERIFY_BODY_MAX: usize = 4 * 1024;

/// One message to send.
pub struct Message<'a> {
    /// Where and how to sign.
    pub target: &'a Target,
    /// Event id (`webhook-id`).
    pub id: &'a str,
    /// Exact body bytes.
    pub body: Bytes,
}

/// Sends webhooks.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    /// A sender with `timeout` per request; private targets refused unless `allow_private`.
    pub fn new(timeout: Duration, allow_private: bool) -> Sender {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .user_agent(concat!("walhook/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(guard::resolver());
        }
        // Building only fails if the TLS backend cannot initialise; fall back to defaults.
        let client = builder.build().unwrap_or_default();
        Sender {
            client,
            allow_private,
        }
    }

    /// Parses a target URL and refuses forbidden IP literals (names are checked on connect).
    fn target(&self, url: &str) -> Result<reqwest::Url, String> {
        let url = parse_url(url)?;
        self.allowed(&url)?;
        Ok(url)
    }

    /// Refuses a forbidden IP literal host unless private targets are allowed.
    fn allowed(&self, url: &reqwest::Url) -> Result<(), String> {
        if !self.allow_private {
            let literal = url
                .host_str()
                .map(|h| h.trim_matches(['[', ']']))
                .and_then(|h| h.parse::<IpAddr>().ok());
            if literal.is_some_and(guard::is_forbidden) {
                return Err(guard::Forbidden(url.host_str().unwrap_or_default().into()).to_string());
            }
        }
        Ok(())
    }

    /// REST hooks intent verification: POSTs `{"type": "walhook.verification", "challenge"}`
    /// with header `X-Hook-Secret: <challenge>`; the target must answer 2xx and echo the
    /// challenge in the `X-Hook-Secret` response header or a JSON body's `challenge` (a body
    /// longer than [`VERIFY_BODY_MAX`] is not read past it and does not count).
    pub async fn verify(&self, url: &str, challenge: &str) -> Result<(), String> {
        let url = self.target(url)?;
        let body = serde_json::json!({"type": "walhook.verification", "challenge": challenge});
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-hook-secret", challenge)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("target answered HTTP {}", status.as_u16()));
        }
        let echoed_header = response
            .headers()
            .get("x-hook-secret")
            .is_some_and(|v| v.as_bytes() == challenge.as_bytes());
        // The body is read chunk by chunk and only up to the cap: a target streaming an
        // endless body costs at most the cap (and the request timeout), never memory.
        let mut bytes = Vec::new();
        let mut response = response;
        let mut within_cap = true;
        while !echoed_header && within_cap {
            match response.chunk().await.map_err(|e| transport_error(&e))? {
                Some(chunk) if bytes.len() + chunk.len() <= VERIFY_BODY_MAX => {
                    bytes.extend_from_slice(&chunk);
                }
                Some(_) => within_cap = false,
                None => break,
            }
        }
        drop(response);
        let echoed_body = within_cap
            && serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|v| v["challenge"] == challenge);
        if echoed_header || echoed_body {
            Ok(())
        } else if !within_cap {
            Err(format!(
                "target answered a body longer than {VERIFY_BODY_MAX} bytes without echoing the challenge in X-Hook-Secret"
            ))
        } else {
            Err("target did not echo the challenge (X-Hook-Secret header or \"challenge\" in a JSON body)".into())
        }
    }

    /// Sends one message and classifies the result; never panics, never hangs past timeout.
    pub async fn send(&self, message: &Message<'_>) -> Outcome {
        let failed = |error: String| Outcome::Failed {
            error,
            retry_after: None,
        };
        let target = message.target;
        let url = match &target.url {
            Ok(url) => url,
            Err(e) => return failed(e.clone()),
        };
        if let Err(e) = self.allowed(url) {
            return failed(e);
        }
        let key = match &target.key {
            Ok(key) => key,
            Err(e) => return failed(e.to_string()),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = key.sign(message.id, timestamp, &message.body);
        let mut headers = target.headers.clone();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        for (name, value) in [
            ("webhook-id", message.id),
            ("webhook-signature", &signature),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        let request = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(message.body.clone());
        match request.send().await {
            Ok(response) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                classify(response.status().as_u16(), retry_after.as_deref())
            }
            Err(e) if e.is_connect() || e.is_timeout() => Outcome::Unreachable {
                error: transport_error(&e),
            },
            Err(e) => failed(transport_error(&e)),
        }
    }
}

/// Parses a target URL, naming the problem.
fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(url).map_err(|e| format!("invalid target URL: {e}"))
}

/// The most specific cause of a transport error (timeout, refused, DNS, SSRF guard).
fn transport_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "request"
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("{kind}: {cause}")
}
