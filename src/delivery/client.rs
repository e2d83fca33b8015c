//! The HTTP sender: Standard Webhooks headers, no redirects, a timeout, the SSRF guard, no
//! environment proxies. Cleartext `http://` targets (no `delivery.proxy`, no `http2`) go over
//! HTTP/1.1 written on the socket directly ([`super::direct`]: keep-alive connections per
//! host, the request head prepared per routing build); `https://` targets, h2c targets and
//! everything behind `delivery.proxy` go through one pooled reqwest client (rustls, HTTP/2
//! by ALPN) or its prior-knowledge twin.
//!
//! Everything an endpoint sends back is bounded here: at most [`MAX_RESPONSE_BODY`] bytes
//! of a body are read (and only the first [`MAX_ERROR_TEXT`] bytes of it kept in an error),
//! response headers are limited in number and size, `Retry-After` is read only when short
//! (then clamped by [`super::retry`]), and the whole exchange ends within the timeout. No
//! answer can make an attempt longer, larger or later than the configuration allows.
//!
//! Proxies: `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` (and lower case) are ignored — a proxy
//! resolves target names itself, past the guard. `delivery.proxy` sends everything through
//! the given proxy, and is refused unless `delivery.allow_private_targets = true`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::direct::{self, DirectError, Endpoint, Pool};
use super::guard;
use super::retry::{MAX_RETRY_AFTER_LEN, Outcome, classify};
use super::signing::{BadSecret, Key};

/// Most bytes of a response body ever read (the rest is dropped with the connection).
pub const MAX_RESPONSE_BODY: usize = 4096;

/// Most bytes of an endpoint's body or a transport error kept in an error text.
pub const MAX_ERROR_TEXT: usize = 256;

/// Most response headers accepted (HTTP/1); more fails the attempt.
const MAX_RESPONSE_HEADERS: usize = direct::MAX_RESPONSE_HEADERS;

/// Largest HTTP/2 response header list accepted, in bytes.
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// How long a success's body may take to drain (for connection reuse) before it is dropped.
const DRAIN_SUCCESS: Duration = Duration::from_millis(50);

/// Header names a subscription's `headers` may not set, because walhook sets them, they
/// frame or route the request, or they belong to a hop: dropped by [`Target::new`] (the
/// SQL check and the API refuse them before that).
pub const DENIED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "content-type",
    "user-agent",
];

/// Whether a subscription's header `name` is refused: one of [`DENIED_HEADERS`], or starts
/// with `proxy-` or `webhook-` (case-insensitive).
pub fn is_denied_header(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    DENIED_HEADERS.contains(&name.as_str())
        || name.starts_with("proxy-")
        || name.starts_with("webhook-")
}

/// The sender could not be built: `walhook run` does not start.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// `delivery.proxy` is set while private targets are refused: a proxy resolves target
    /// names itself, so the guard could not vet the address it connects to.
    #[error(
        "delivery.proxy is set while delivery.allow_private_targets = false: walhook cannot \
         check the addresses a proxy connects to; unset delivery.proxy or set \
         delivery.allow_private_targets = true"
    )]
    ProxyWithGuard,
    /// `delivery.proxy` is not a usable proxy URL.
    #[error("delivery.proxy {url:?}: {message}")]
    Proxy {
        /// The configured value.
        url: String,
        /// Why.
        message: String,
    },
    /// The HTTP client (TLS backend) could not be initialised.
    #[error("delivery HTTP client: {0}")]
    Client(String),
}

/// A subscription's target, prepared once when routing is built: the parsed URL, the
/// decoded signing key and the extra headers. Problems are kept and reported per send.
#[derive(Debug, Clone)]
pub struct Target {
    url: Result<reqwest::Url, String>,
    key: Result<Key, BadSecret>,
    headers: HeaderMap,
    /// Cleartext HTTP/2 with prior knowledge for an `http://` URL (the subscription's
    /// `http2`); `https://` targets negotiate HTTP/2 by ALPN whatever it says.
    h2c: bool,
    /// An `http://` target sent to directly (HTTP/1.1 on the socket), its head prepared.
    direct: Option<Endpoint>,
}

impl Target {
    /// Prepares `url`, `secret` (`whsec_…`) and `headers` (a JSON object of strings; other
    /// values, invalid names or values, and names refused by [`is_denied_header`] are
    /// skipped).
    pub fn new(url: &str, secret: &str, headers: &serde_json::Value) -> Target {
        let mut extra = HeaderMap::new();
        for (name, value) in headers.as_object().into_iter().flatten() {
            if is_denied_header(name) {
                tracing::debug!(header = %name, "subscription header refused (deny-list)");
                continue;
            }
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::try_from),
            ) {
                extra.insert(name, value);
            }
        }
        let url = parse_url(url);
        let direct = url.as_ref().ok().and_then(|u| Endpoint::new(u, &extra));
        Target {
            url,
            key: Key::parse(secret),
            headers: extra,
            h2c: false,
            direct,
        }
    }

    /// The same target, sent to in cleartext HTTP/2 (prior knowledge) when `on` and its URL
    /// is `http://`.
    pub fn with_http2(mut self, on: bool) -> Target {
        self.h2c = on && self.url.as_ref().is_ok_and(|u| u.scheme() == "http");
        if self.h2c {
            self.direct = None;
        }
        self
    }
}

/// One message to send.
pub struct Message<'a> {
    /// Where and how to sign.
    pub target: &'a Target,
    /// Event id (`webhook-id`).
    pub id: &'a str,
    /// Exact body bytes.
    pub body: Bytes,
}

/// Sends webhooks (and intent-verification challenges) through one guarded client, and a
/// second one, built the same way, that speaks HTTP/2 with prior knowledge for cleartext
/// targets that opted in.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    h2c: reqwest::Client,
    /// Keep-alive HTTP/1.1 connections of cleartext targets (unused behind a proxy).
    direct: Option<Arc<Pool>>,
    timeout: Duration,
    allow_private: bool,
}

impl Sender {
    /// A sender with `timeout` per request; private targets refused unless `allow_private`;
    /// through `proxy` when given (only allowed with `allow_private`), else never through a
    /// proxy, whatever the environment says.
    pub fn new(
        timeout: Duration,
        allow_private: bool,
        proxy: Option<&str>,
    ) -> Result<Sender, SenderError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Self::client(timeout, allow_private, proxy, false)?;
        let h2c = Self::client(timeout, allow_private, proxy, true)?;
        let direct = proxy
            .is_none()
            .then(|| Arc::new(Pool::new(allow_private, timeout)));
        Ok(Sender {
            client,
            h2c,
            direct,
            timeout,
            allow_private,
        })
    }

    /// One reqwest client: no redirects, bounded headers, the guard's resolver, no
    /// environment proxy. With `prior_knowledge`, HTTP/2 only (h2c for `http://`). Without,
    /// HTTP/1.1, or HTTP/2 when an `https` server picks `h2` by ALPN (reqwest offers `h2`
    /// and `http/1.1` in its rustls configuration when its `http2` feature is on).
    fn client(
        timeout: Duration,
        allow_private: bool,
        proxy: Option<&str>,
        prior_knowledge: bool,
    ) -> Result<reqwest::Client, SenderError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .http1_max_headers(MAX_RESPONSE_HEADERS)
            .http2_max_header_list_size(MAX_HEADER_LIST)
            .user_agent(concat!("walhook/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        if let Some(url) = proxy {
            if !allow_private {
                return Err(SenderError::ProxyWithGuard);
            }
            let proxy = reqwest::Proxy::all(url).map_err(|e| SenderError::Proxy {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
            builder = builder.proxy(proxy);
        }
        if !allow_private {
            builder = builder.dns_resolver(guard::resolver());
        }
        if prior_knowledge {
            builder = builder.http2_prior_knowledge();
        }
        builder
            .build()
            .map_err(|e| SenderError::Client(e.to_string()))
    }

    /// Parses a target URL and refuses forbidden IP literals (names are checked on connect).
    fn target(&self, url: &str) -> Result<reqwest::Url, String> {
        let url = parse_url(url)?;
        self.allowed(&url)?;
        Ok(url)
    }

    /// Refuses a forbidden IP literal host unless private targets are allowed. The URL
    /// parser (WHATWG rules) has already read every IPv4 spelling (`2130706433`, `0x7f.1`,
    /// `127.1`, `0177.0.0.1`) as the address it denotes, so the literal is checked as such.
    fn allowed(&self, url: &reqwest::Url) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        let literal = url
            .host_str()
            .map(|h| h.trim_matches(['[', ']']))
            .and_then(|h| h.parse::<IpAddr>().ok());
        if literal.is_some_and(guard::is_forbidden) {
            return Err(guard::Forbidden(url.host_str().unwrap_or_default().into()).to_string());
        }
        Ok(())
    }

    /// REST hooks intent verification: POSTs `{"type": "walhook.verification", "challenge"}`
    /// with header `X-Hook-Secret: <challenge>`; the target must answer 2xx and echo the
    /// challenge in the `X-Hook-Secret` response header or a JSON body's `challenge` (at most
    /// [`MAX_RESPONSE_BODY`] bytes of the body are read). Same client, guard and no-proxy
    /// rule as deliveries.
    pub async fn verify(&self, url: &str, challenge: &str) -> Result<(), String> {
        let url = self.target(url)?;
        let body = serde_json::json!({"type": "walhook.verification", "challenge": challenge});
        let mut response = self
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
        let bytes = read_start(&mut response, MAX_RESPONSE_BODY)
            .await
            .map_err(|e| transport_error(&e))?;
        // A body that filled the cap was cut there: it does not count as an echo.
        let within_cap = bytes.len() < MAX_RESPONSE_BODY;
        let echoed_body = within_cap
            && serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|v| v["challenge"] == challenge);
        if echoed_header || echoed_body {
            Ok(())
        } else if !within_cap {
            Err(format!(
                "target answered a body longer than {MAX_RESPONSE_BODY} bytes without echoing the challenge in X-Hook-Secret"
            ))
        } else {
            Err("target did not echo the challenge (X-Hook-Secret header or \"challenge\" in a JSON body)".into())
        }
    }

    /// Sends one message and classifies the result; never panics, never hangs past timeout.
    pub async fn send(&self, message: &Message<'_>) -> Outcome {
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
        if let (Some(endpoint), Some(pool)) = (&target.direct, &self.direct) {
            let signed = direct::Signed {
                id: message.id,
                timestamp,
                signature: &signature,
            };
            let exchange = pool.post(
                endpoint,
                signed,
                &message.body,
                (MAX_ERROR_TEXT, MAX_RESPONSE_BODY),
                DRAIN_SUCCESS,
            );
            return match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok(answer)) => answered(answer.status, answer.retry_after, &answer.start),
                Ok(Err(e @ DirectError::Connect(_))) => Outcome::Unreachable {
                    error: bounded_text(e.to_string().as_bytes(), MAX_ERROR_TEXT),
                },
                Ok(Err(e)) => failed(bounded_text(e.to_string().as_bytes(), MAX_ERROR_TEXT)),
                Err(_) => Outcome::Unreachable {
                    error: "timeout: operation timed out".into(),
                },
            };
        }
        let mut headers = target.headers.clone();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        signed(&mut headers, message.id, timestamp, &signature);
        let client = if target.h2c { &self.h2c } else { &self.client };
        let request = client
            .post(url.clone())
            .headers(headers)
            .body(message.body.clone());
        // Boxed: reqwest's futures are large, and every job's future would carry their
        // size even when it takes the direct path.
        Box::pin(self.answer(request)).await
    }

    /// Sends a reqwest request and reads what the outcome needs of its answer.
    async fn answer(&self, request: reqwest::RequestBuilder) -> Outcome {
        match request.send().await {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .filter(|v| v.len() <= MAX_RETRY_AFTER_LEN)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if (200..300).contains(&status) {
                    // Drained briefly so the connection can be reused; never waited on.
                    let _ = tokio::time::timeout(
                        DRAIN_SUCCESS,
                        read_start(&mut response, MAX_RESPONSE_BODY),
                    )
                    .await;
                    return answered(status, retry_after, &[]);
                }
                // The first bytes of the answer say why; the rest is not read.
                let start = read_start(&mut response, MAX_ERROR_TEXT)
                    .await
                    .unwrap_or_default();
                answered(status, retry_after, &start)
            }
            Err(e) if e.is_connect() || e.is_timeout() => Outcome::Unreachable {
                error: transport_error(&e),
            },
            Err(e) => failed(transport_error(&e)),
        }
    }
}

/// Adds the Standard Webhooks headers of one signed message.
fn signed(headers: &mut HeaderMap, id: &str, timestamp: i64, signature: &str) {
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    for (name, value) in [("webhook-id", id), ("webhook-signature", signature)] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
}

/// A failed attempt with `error` and no `Retry-After`.
fn failed(error: String) -> Outcome {
    Outcome::Failed {
        error,
        retry_after: None,
    }
}

/// The outcome of an answer with `status`, its `Retry-After` and the first bytes of its
/// body (`start`, named in a failure's error).
fn answered(status: u16, retry_after: Option<String>, start: &[u8]) -> Outcome {
    match classify(status, retry_after.as_deref()) {
        Outcome::Failed { error, retry_after } => {
            let text = bounded_text(start, MAX_ERROR_TEXT);
            let error = if text.is_empty() {
                error
            } else {
                format!("{error}: {text}")
            };
            Outcome::Failed { error, retry_after }
        }
        outcome => outcome,
    }
}

/// Reads at most `cap` bytes of a response body (the client's timeout bounds the wait).
async fn read_start(response: &mut reqwest::Response, cap: usize) -> Result<Bytes, reqwest::Error> {
    let mut read = BytesMut::new();
    while read.len() < cap {
        match response.chunk().await? {
            Some(chunk) => {
                let room = cap - read.len();
                read.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            None => break,
        }
    }
    Ok(read.freeze())
}

/// At most `max` bytes of `bytes` as one line of text: invalid UTF-8 replaced, control
/// characters (NUL included, which PostgreSQL text refuses) as spaces, cut at a character
/// boundary, trimmed.
pub fn bounded_text(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out.trim().to_owned()
}

/// Parses a target URL, naming the problem: an absolute `http` or `https` URL.
fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid target URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "invalid target URL: scheme {:?} (http or https only)",
            parsed.scheme()
        ));
    }
    Ok(parsed)
}

/// The most specific cause of a transport error (timeout, refused, DNS, SSRF guard),
/// bounded to [`MAX_ERROR_TEXT`] bytes.
fn transport_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "request"
    };
    let cause = innermost(error);
    bounded_text(format!("{kind}: {cause}").as_bytes(), MAX_ERROR_TEXT)
}

/// The most specific cause of an error.
pub(super) fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ipv4_spelling_is_read_as_its_address() {
        for spelling in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://0x7f000001/",
            "http://127.0.0.1./",
            "http://017700000001/",
            "HTTP://127.0.1/",
        ] {
            let url = parse_url(spelling).unwrap();
            assert_eq!(url.host_str(), Some("127.0.0.1"), "{spelling}");
        }
        let sender = Sender::new(Duration::from_secs(1), false, None).unwrap();
        for spelling in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
        ] {
            let err = sender.target(spelling).unwrap_err();
            assert!(err.contains("refused"), "{spelling}: {err}");
        }
        assert_eq!(
            parse_url("file:///etc/passwd").unwrap_err(),
            "invalid target URL: scheme \"file\" (http or https only)"
        );
    }

    #[test]
    fn denied_headers_are_dropped() {
        let headers = serde_json::json!({
            "Host": "x", "Content-Length": "5", "transfer-encoding": "chunked",
            "Connection": "close", "Keep-Alive": "1", "Upgrade": "h2c", "TE": "trailers",
            "Trailer": "x", "Proxy-Authorization": "Basic x", "content-type": "text/plain",
            "User-Agent": "x", "Webhook-Signature": "v1,forged", "webhook-id": "x",
            "X-Tenant": "acme"
        });
        let target = Target::new("http://example.com/", "whsec_YQ==", &headers);
        let names: Vec<&str> = target.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-tenant"]);
        assert!(is_denied_header(" Proxy-Connection"));
        assert!(!is_denied_header("x-webhook-tenant"));
    }

    #[test]
    fn error_texts_are_bounded_single_lines() {
        assert_eq!(bounded_text(b"bad\0gateway\r\n", 256), "bad gateway");
        assert_eq!(bounded_text("é".repeat(300).as_bytes(), 5), "éé");
        assert_eq!(bounded_text(&[0xff, b'x'], 256), "\u{fffd}x");
        assert_eq!(bounded_text(&[b'a'; 10_000], 256).len(), 256);
    }

    #[test]
    fn a_proxy_needs_private_targets_allowed() {
        let err = Sender::new(Duration::from_secs(1), false, Some("http://127.0.0.1:3128"))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "delivery.proxy is set while delivery.allow_private_targets = false: walhook cannot \
             check the addresses a proxy connects to; unset delivery.proxy or set \
             delivery.allow_private_targets = true"
        );
        assert!(Sender::new(Duration::from_secs(1), true, Some("http://127.0.0.1:3128")).is_ok());
        let err = Sender::new(Duration::from_secs(1), true, Some("::not a url"))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("delivery.proxy \"::not a url\": "),
            "{err}"
        );
    }
}
