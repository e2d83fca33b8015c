//! HTTP/1.1 on hyper directly, for cleartext `http://` targets when no `delivery.proxy` is
//! set and the subscription did not opt into HTTP/2: the per-request path without reqwest's
//! layers (request builder, tower stack, pool checkout through a shared lock per request).
//!
//! ```text
//! Endpoint (prepared per routing build: host, port, origin-form path, base headers)
//!   ─▶ Pool::post: an idle keep-alive connection of that host:port, or a new one
//!        (names resolved here; with private targets refused, every resolved address is
//!         checked by the guard and only allowed ones are connected to)
//!   ─▶ one request ─▶ status, Retry-After, the first bytes of the body
//!   ─▶ the connection back to the idle list when the response was read to its end
//! ```
//!
//! The exchange drives its connection itself: request, answer and body are read in the
//! task that awaits them, with no connection task between (one wake-up per answer instead
//! of three hops through channels). An idle connection is driven by nobody; taking it polls
//! it once, which notices a close by the server.
//!
//! The bounds of the reqwest path hold here too: at most [`MAX_RESPONSE_HEADERS`] response
//! headers, at most `cap` bytes of a body read, and the caller bounds the whole exchange by
//! the delivery timeout. A connection whose response was not read to the end is dropped,
//! never reused. A request that a reused connection could not even start (closed by the
//! server while idle) is sent once more on a fresh connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::http::{HeaderMap, HeaderValue, Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::client::innermost;
use super::guard;

/// Most response headers accepted; more fails the attempt (as on the reqwest path).
pub(super) const MAX_RESPONSE_HEADERS: usize = 64;

/// Idle keep-alive connections kept per host:port.
const MAX_IDLE_PER_HOST: usize = 64;

/// A cleartext target, prepared once per routing build.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// Host as written in the URL (brackets of an IPv6 literal removed).
    host: Arc<str>,
    port: u16,
    /// `host:port`, the idle list's key.
    authority: Arc<str>,
    /// The request target in origin form (path and query).
    path: Uri,
    /// `host`, `content-type`, `user-agent` and the subscription's extra headers.
    pub(super) base: HeaderMap,
}

impl Endpoint {
    /// The endpoint of an `http://` URL, with `extra` headers; `None` for other schemes or a
    /// URL hyper cannot take as it is (those keep the reqwest path).
    pub(super) fn new(url: &reqwest::Url, extra: &HeaderMap) -> Option<Endpoint> {
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?.trim_matches(['[', ']']);
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str()?),
            None => url.host_str()?.to_owned(),
        };
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let mut base = HeaderMap::with_capacity(8 + extra.len());
        base.insert("host", HeaderValue::from_str(&authority).ok()?);
        base.insert("content-type", HeaderValue::from_static("application/json"));
        base.insert(
            "user-agent",
            HeaderValue::from_static(concat!("walhook/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in extra {
            base.insert(name, value.clone());
        }
        Some(Endpoint {
            host: Arc::from(host),
            port,
            authority: Arc::from(format!("{host}:{port}")),
            path: path.parse().ok()?,
            base,
        })
    }
}

/// What an endpoint answered.
pub(super) struct Answer {
    /// The status code.
    pub(super) status: u16,
    /// Its `Retry-After` value, when short enough to read.
    pub(super) retry_after: Option<String>,
    /// The first bytes of the body (at most the cap asked for).
    pub(super) start: Bytes,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum DirectError {
    /// No connection could be made (name resolution, the guard, TCP connect, handshake).
    #[error("connect: {0}")]
    Connect(String),
    /// The request or its response broke off.
    #[error("request: {0}")]
    Request(String),
}

/// The request body: one buffer, sent as is with its length.
struct OneShot(Option<Bytes>);

impl Body for OneShot {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// One keep-alive HTTP/1.1 connection: the handle requests go in by, and the connection
/// itself, driven by whichever exchange uses it (`None` once it ended).
struct Conn {
    sender: SendRequest<OneShot>,
    driver: Option<Connection<TokioIo<TcpStream>, OneShot>>,
}

/// Awaits `work` while driving the connection whose progress it needs: both are polled in
/// the caller's task. The connection ending (closed, broken) ends `work` too, through its
/// channels.
async fn driving<F: Future>(
    driver: &mut Option<Connection<TokioIo<TcpStream>, OneShot>>,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Some(connection) = driver
            && Pin::new(connection).poll(cx).is_ready()
        {
            *driver = None;
        }
        work.as_mut().poll(cx)
    })
    .await
}

/// Keep-alive HTTP/1.1 connections per host:port.
pub(super) struct Pool {
    idle: Mutex<HashMap<Arc<str>, Vec<Conn>>>,
    allow_private: bool,
    connect_timeout: Duration,
}

impl Pool {
    /// An empty pool; private addresses refused unless `allow_private`.
    pub(super) fn new(allow_private: bool, connect_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            allow_private,
            connect_timeout,
        }
    }

    /// POSTs `body` with `headers` to `endpoint` and reads at most `cap` bytes of a failure's
    /// body, or of a 2xx's at most `success_cap` for at most `drain` (a success's body is
    /// only drained so the connection can be reused). The caller bounds the whole exchange.
    pub(super) async fn post(
        &self,
        endpoint: &Endpoint,
        headers: HeaderMap,
        body: Bytes,
        (cap, success_cap): (usize, usize),
        drain: Duration,
    ) -> Result<Answer, DirectError> {
        let mut request = Request::new(OneShot(Some(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = endpoint.path.clone();
        *request.headers_mut() = headers;
        let (mut conn, response) = loop {
            let (mut conn, reused) = match self.take(&endpoint.authority).await {
                Some(conn) => (conn, true),
                // Rare (connections are kept): boxed, so the hot path's future stays small.
                None => (Box::pin(self.connect(endpoint)).await?, false),
            };
            let sent = conn.sender.try_send_request(request);
            match driving(&mut conn.driver, sent).await {
                Ok(response) => break (conn, response),
                Err(mut e) => match e.take_message() {
                    // Never started on an idle connection the server had closed: again,
                    // on a fresh one.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(DirectError::Request(innermost(e.error()))),
                },
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .filter(|v| v.len() <= super::retry::MAX_RETRY_AFTER_LEN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut incoming = response.into_body();
        let (start, ended) = if incoming.is_end_stream() {
            (Bytes::new(), true)
        } else if (200..300).contains(&status) {
            let read = driving(&mut conn.driver, read_start(&mut incoming, success_cap));
            tokio::time::timeout(drain, read)
                .await
                .unwrap_or((Bytes::new(), false))
        } else {
            driving(&mut conn.driver, read_start(&mut incoming, cap)).await
        };
        drop(incoming);
        if ended && conn.driver.is_some() && !conn.sender.is_closed() {
            self.put(&endpoint.authority, conn);
        }
        Ok(Answer {
            status,
            retry_after,
            start,
        })
    }

    /// An idle connection of `authority` that is still open and ready for a request
    /// (driving it finishes the previous exchange and notices a close by the server).
    async fn take(&self, authority: &str) -> Option<Conn> {
        loop {
            let mut conn = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(authority)?
                .pop()?;
            let ready = driving(&mut conn.driver, conn.sender.ready()).await;
            if ready.is_ok() && conn.driver.is_some() && !conn.sender.is_closed() {
                return Some(conn);
            }
        }
    }

    fn put(&self, authority: &Arc<str>, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(authority.clone()).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(conn);
        }
    }

    /// A new connection to `endpoint`: its name resolved here, and with private targets
    /// refused, only addresses the guard allows connected to.
    async fn connect(&self, endpoint: &Endpoint) -> Result<Conn, DirectError> {
        let connect = async {
            let allowed = guard::resolve(&endpoint.host, endpoint.port, self.allow_private)
                .await
                .map_err(|e| e.to_string())?;
            let mut last = None;
            for addr in allowed {
                match TcpStream::connect(addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(stream);
                    }
                    Err(e) => last = Some(e.to_string()),
                }
            }
            Err(last.unwrap_or_default())
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| DirectError::Connect("operation timed out".into()))?
            .map_err(DirectError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .max_headers(MAX_RESPONSE_HEADERS)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| DirectError::Connect(innermost(&e)))?;
        Ok(Conn {
            sender,
            driver: Some(connection),
        })
    }
}

/// Reads at most `cap` bytes of a body; whether it was read to its end.
async fn read_start(body: &mut Incoming, cap: usize) -> (Bytes, bool) {
    let mut read = BytesMut::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    let room = cap.saturating_sub(read.len());
                    read.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if read.len() >= cap && !body.is_end_stream() {
                        return (read.freeze(), false);
                    }
                }
            }
            Some(Err(_)) => return (read.freeze(), false),
            None => return (read.freeze(), true),
        }
    }
}
