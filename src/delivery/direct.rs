//! HTTP/1.1 written and read directly on a TCP stream, for cleartext `http://` targets when
//! no `delivery.proxy` is set and the subscription did not opt into HTTP/2: the per-request
//! path without a general HTTP client's layers (request objects, header maps, a connection
//! task and the channels to it).
//!
//! ```text
//! Endpoint (prepared per routing build: host, port, the request line and fixed headers
//!           as bytes)
//!   ─▶ Pool::post: an idle keep-alive connection of that host:port, or a new one
//!        (names resolved here; with private targets refused, every resolved address is
//!         checked by the guard and only allowed ones are connected to)
//!   ─▶ one write: fixed head + webhook-id/-timestamp/-signature + content-length + body
//!   ─▶ the answer parsed (httparse) from the connection's own read buffer: status,
//!        Retry-After, the first bytes of the body (by content-length, chunked, or to the
//!        close)
//!   ─▶ the connection back to the idle list when the answer was read to its end and
//!        nothing says it closes
//! ```
//!
//! Bounds: at most [`MAX_RESPONSE_HEADERS`] response headers and [`MAX_HEAD`] bytes of
//! response head, at most `cap` bytes of a body read; the caller bounds the whole exchange
//! by the delivery timeout. A connection whose answer was not read to its end (or that
//! carries bytes past it) is dropped, never reused. A request on a reused connection that
//! got no byte of an answer (the server had closed it while idle) is sent once more on
//! another connection: at least once, as every retry.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::guard;

/// Most response headers accepted; more fails the attempt (as on the reqwest path).
pub(super) const MAX_RESPONSE_HEADERS: usize = 64;

/// Largest response head (status line, headers; also a chunk-size or trailer line) read.
pub(super) const MAX_HEAD: usize = 64 * 1024;

/// Idle keep-alive connections kept per host:port.
const MAX_IDLE_PER_HOST: usize = 64;

/// Bodies up to this size are copied behind the head and written in one call; larger ones
/// are written on their own after it.
const INLINE_BODY: usize = 64 * 1024;

/// A cleartext target, prepared once per routing build.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// Host as written in the URL (brackets of an IPv6 literal removed).
    host: Arc<str>,
    port: u16,
    /// `host:port`, the idle list's key.
    authority: Arc<str>,
    /// `POST <path> HTTP/1.1`, then `host`, `content-type`, `user-agent` and the
    /// subscription's extra headers, each line ended by CRLF.
    head: Arc<[u8]>,
}

impl Endpoint {
    /// The endpoint of an `http://` URL, with `extra` headers (which replace the fixed ones
    /// of the same name); `None` for other schemes or a URL that cannot be written as a
    /// request line as it is (those keep the reqwest path).
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
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return None;
        }
        let mut fixed = HeaderMap::with_capacity(3 + extra.len());
        fixed.insert("host", HeaderValue::from_str(&authority).ok()?);
        fixed.insert("content-type", HeaderValue::from_static("application/json"));
        fixed.insert(
            "user-agent",
            HeaderValue::from_static(concat!("walhook/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in extra {
            fixed.insert(name, value.clone());
        }
        let mut head = format!("POST {path} HTTP/1.1\r\n").into_bytes();
        for (name, value) in &fixed {
            header(&mut head, name.as_str(), value.as_bytes());
        }
        Some(Endpoint {
            host: Arc::from(host),
            port,
            authority: Arc::from(format!("{host}:{port}")),
            head: Arc::from(head),
        })
    }
}

/// Appends `name: value` CRLF.
fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The Standard Webhooks headers of one request.
pub(super) struct Signed<'a> {
    /// `webhook-id`.
    pub(super) id: &'a str,
    /// `webhook-timestamp`, in seconds.
    pub(super) timestamp: i64,
    /// `webhook-signature`.
    pub(super) signature: &'a str,
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
    /// No connection could be made (name resolution, the guard, TCP connect).
    #[error("connect: {0}")]
    Connect(String),
    /// The request or its answer broke off, or the answer was not HTTP/1.1.
    #[error("request: {0}")]
    Request(String),
}

/// How one exchange on a connection failed.
enum Failure {
    /// Not a byte of an answer came back: on a reused connection (closed by the server
    /// while idle), the request is sent again on another one.
    Unanswered(String),
    /// The answer broke off or was malformed.
    Broken(String),
}

/// How the body of an answer is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// No body (204, 304).
    Empty,
    /// `content-length` bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// The parts of a response head delivery uses.
#[derive(Debug)]
struct Head {
    status: u16,
    retry_after: Option<String>,
    framing: Framing,
    /// The connection ends after this answer.
    close: bool,
}

/// Parses a response head at the start of `buf`: the head and its length, `None` while
/// incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Failure::Broken(format!(
                "more than {MAX_RESPONSE_HEADERS} response headers"
            )));
        }
        Err(e) => return Err(Failure::Broken(format!("invalid HTTP/1.1 answer: {e}"))),
    };
    let status = response.code.unwrap_or_default();
    let mut head = Head {
        status,
        retry_after: None,
        framing: Framing::UntilClose,
        close: response.version == Some(0),
    };
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or_default().trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .ok()
                .filter(|n| length.is_none_or(|l| l == *n));
            length = Some(n.ok_or_else(|| Failure::Broken("invalid content-length".into()))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only when it is the last coding applied.
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if h.name.eq_ignore_ascii_case("retry-after")
            && h.value.len() <= super::retry::MAX_RETRY_AFTER_LEN
            && !value.is_empty()
        {
            head.retry_after = Some(value.to_owned());
        }
    }
    head.framing = match (status, chunked, length) {
        (204 | 304, _, _) => Framing::Empty,
        (_, Some(true), _) => Framing::Chunked,
        (_, Some(false), _) => Framing::UntilClose,
        (_, None, Some(n)) => Framing::Length(n),
        (_, None, None) => Framing::UntilClose,
    };
    head.close |= head.framing == Framing::UntilClose || status == 101;
    Ok(Some((head, len)))
}

/// One keep-alive HTTP/1.1 connection with its buffers (kept across requests).
struct Conn {
    stream: TcpStream,
    /// Bytes read and not consumed yet.
    read: BytesMut,
    /// The request being written.
    write: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            read: BytesMut::with_capacity(8 * 1024),
            write: Vec::with_capacity(2 * 1024),
        }
    }

    /// Reads more into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.read.capacity() - self.read.len() < 1024 {
            self.read.reserve(8 * 1024);
        }
        Ok(self.stream.read_buf(&mut self.read).await? > 0)
    }

    /// Like [`Self::fill`], the end of the stream being a broken answer.
    async fn more(&mut self) -> Result<(), Failure> {
        match self.fill().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Broken(
                "connection closed inside the answer".into(),
            )),
            Err(e) => Err(Failure::Broken(e.to_string())),
        }
    }

    /// One request and its answer: the answer, and whether the connection may be reused.
    async fn exchange(
        &mut self,
        endpoint: &Endpoint,
        signed: &Signed<'_>,
        body: &[u8],
        (cap, success_cap): (usize, usize),
        drain: Duration,
    ) -> Result<(Answer, bool), Failure> {
        self.write.clear();
        self.write.extend_from_slice(&endpoint.head);
        for (name, value) in [
            ("webhook-id", signed.id),
            ("webhook-signature", signed.signature),
        ] {
            // As a header value would be refused: such a header is left out.
            if value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                header(&mut self.write, name, value.as_bytes());
            }
        }
        // Written into the buffer in place: no string per number.
        let _ = write!(
            self.write,
            "webhook-timestamp: {}\r\ncontent-length: {}\r\n\r\n",
            signed.timestamp,
            body.len()
        );
        let written = if body.len() <= INLINE_BODY {
            self.write.extend_from_slice(body);
            self.stream.write_all(&self.write).await
        } else {
            match self.stream.write_all(&self.write).await {
                Ok(()) => self.stream.write_all(body).await,
                Err(e) => Err(e),
            }
        };
        written.map_err(|e| Failure::Unanswered(e.to_string()))?;
        let head = self.head().await?;
        // A success's body is only drained (for reuse), for at most `drain`; no timer when
        // it was read with the head already.
        let success = (200..300).contains(&head.status);
        let buffered = match head.framing {
            Framing::Empty => true,
            Framing::Length(n) => n <= self.read.len() as u64,
            Framing::Chunked | Framing::UntilClose => false,
        };
        let (start, ended) = match (success, buffered) {
            (true, false) => tokio::time::timeout(drain, self.body(head.framing, success_cap))
                .await
                .unwrap_or((Bytes::new(), false)),
            (true, true) => self.body(head.framing, success_cap).await,
            (false, _) => self.body(head.framing, cap).await,
        };
        let reusable = ended && !head.close && self.read.is_empty();
        let answer = Answer {
            status: head.status,
            retry_after: head.retry_after,
            start,
        };
        Ok((answer, reusable))
    }

    /// Reads the final response head (informational 1xx answers skipped).
    async fn head(&mut self) -> Result<Head, Failure> {
        let mut answered = !self.read.is_empty();
        loop {
            if let Some((head, len)) = parse_head(&self.read)? {
                self.read.advance(len);
                if (100..200).contains(&head.status) && head.status != 101 {
                    continue;
                }
                return Ok(head);
            }
            if self.read.len() > MAX_HEAD {
                return Err(Failure::Broken(format!(
                    "response head larger than {MAX_HEAD} bytes"
                )));
            }
            match self.fill().await {
                Ok(true) => answered = true,
                Ok(false) if !answered => {
                    return Err(Failure::Unanswered(
                        "connection closed before an answer".into(),
                    ));
                }
                Err(e) if !answered => return Err(Failure::Unanswered(e.to_string())),
                Ok(false) => {
                    return Err(Failure::Broken(
                        "connection closed inside the answer".into(),
                    ));
                }
                Err(e) => return Err(Failure::Broken(e.to_string())),
            }
        }
    }

    /// Reads a body, keeping at most `cap` bytes of it; whether it was read to its end
    /// (reading stops once more than `cap` bytes came; a broken body ends the same way).
    async fn body(&mut self, framing: Framing, cap: usize) -> (Bytes, bool) {
        let mut kept = BytesMut::new();
        let ended = match framing {
            Framing::Empty => Ok(true),
            Framing::Length(n) => self.counted(n, &mut kept, cap).await,
            Framing::Chunked => self.chunked(&mut kept, cap).await,
            Framing::UntilClose => loop {
                self.keep(self.read.len() as u64, &mut kept, cap);
                if kept.len() >= cap {
                    break Ok(false);
                }
                match self.fill().await {
                    Ok(true) => {}
                    Ok(false) => break Ok(true),
                    Err(e) => break Err(Failure::Broken(e.to_string())),
                }
            },
        };
        (kept.freeze(), ended.unwrap_or(false))
    }

    /// Consumes up to `n` buffered bytes, keeping what fits within `cap`; how many it took.
    fn keep(&mut self, n: u64, kept: &mut BytesMut, cap: usize) -> u64 {
        let take = self
            .read
            .len()
            .min(usize::try_from(n).unwrap_or(usize::MAX));
        let room = cap.saturating_sub(kept.len()).min(take);
        kept.extend_from_slice(&self.read[..room]);
        self.read.advance(take);
        take as u64
    }

    /// `n` bytes of body (content-length, or one chunk's data).
    async fn counted(
        &mut self,
        mut n: u64,
        kept: &mut BytesMut,
        cap: usize,
    ) -> Result<bool, Failure> {
        loop {
            n -= self.keep(n, kept, cap);
            if n == 0 {
                return Ok(true);
            }
            if kept.len() >= cap {
                return Ok(false);
            }
            self.more().await?;
        }
    }

    /// A chunked body, trailers skipped.
    async fn chunked(&mut self, kept: &mut BytesMut, cap: usize) -> Result<bool, Failure> {
        loop {
            let (line, size) = loop {
                match httparse::parse_chunk_size(&self.read) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) if self.read.len() <= MAX_HEAD => {
                        self.more().await?
                    }
                    _ => return Err(Failure::Broken("invalid chunk size".into())),
                }
            };
            self.read.advance(line);
            if size == 0 {
                return self.trailers().await.map(|()| true);
            }
            if !self.counted(size, kept, cap).await? {
                return Ok(false);
            }
            while self.read.len() < 2 {
                self.more().await?;
            }
            if &self.read[..2] != b"\r\n" {
                return Err(Failure::Broken("invalid chunk".into()));
            }
            self.read.advance(2);
        }
    }

    /// The trailer section of a chunked body, up to its empty line.
    async fn trailers(&mut self) -> Result<(), Failure> {
        let mut skipped = 0;
        loop {
            match self.read.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.read.advance(2);
                    return Ok(());
                }
                Some(at) => {
                    skipped += at + 2;
                    self.read.advance(at + 2);
                }
                None if skipped + self.read.len() <= MAX_HEAD => self.more().await?,
                None => return Err(Failure::Broken("trailers too large".into())),
            }
        }
    }
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

    /// POSTs `body`, signed, to `endpoint` and reads at most `cap` bytes of a failure's
    /// body, or of a 2xx's at most `success_cap` for at most `drain` (a success's body is
    /// only drained so the connection can be reused). The caller bounds the whole exchange.
    pub(super) async fn post(
        &self,
        endpoint: &Endpoint,
        signed: Signed<'_>,
        body: &[u8],
        caps: (usize, usize),
        drain: Duration,
    ) -> Result<Answer, DirectError> {
        loop {
            let (mut conn, reused) = match self.take(&endpoint.authority) {
                Some(conn) => (conn, true),
                // Rare (connections are kept): boxed, so the hot path's future stays small.
                None => (Box::pin(self.connect(endpoint)).await?, false),
            };
            match conn.exchange(endpoint, &signed, body, caps, drain).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        self.put(&endpoint.authority, conn);
                    }
                    return Ok(answer);
                }
                // Closed by the server while idle: again, on another connection.
                Err(Failure::Unanswered(_)) if reused => continue,
                Err(Failure::Unanswered(e) | Failure::Broken(e)) => {
                    return Err(DirectError::Request(e));
                }
            }
        }
    }

    /// An idle connection of `authority`, the most recently used first.
    fn take(&self, authority: &str) -> Option<Conn> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(authority)?
            .pop()
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
        Ok(Conn::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    /// A server on 127.0.0.1 that answers the `n`-th request it reads on a connection with
    /// `answers(n)` (raw bytes), then closes the connection when `close_after` answers were
    /// sent on it; returns its URL, the requests it read and the connections it accepted.
    async fn server(
        answers: fn(usize) -> Vec<u8>,
        close_after: usize,
    ) -> (reqwest::Url, Arc<Mutex<Vec<Vec<u8>>>>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook?x=1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (requests.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    for _ in 0..close_after {
                        // A request: head up to the empty line, then content-length bytes.
                        let request = loop {
                            let mut headers = [httparse::EMPTY_HEADER; 32];
                            let mut req = httparse::Request::new(&mut headers);
                            if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
                                let body: usize = req
                                    .headers
                                    .iter()
                                    .find(|h| h.name == "content-length")
                                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                                    .unwrap();
                                if buf.len() >= len + body {
                                    break buf.split_to(len + body).to_vec();
                                }
                            }
                            if socket.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        };
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push(request);
                            seen.len()
                        };
                        if socket.write_all(&answers(n)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url.parse().unwrap(), requests, accepted)
    }

    fn prepared(url: &reqwest::Url) -> Endpoint {
        let mut extra = HeaderMap::new();
        extra.insert("x-tenant", HeaderValue::from_static("acme"));
        extra.insert("user-agent", HeaderValue::from_static("custom"));
        Endpoint::new(url, &extra).unwrap()
    }

    async fn post(pool: &Pool, endpoint: &Endpoint, body: &[u8]) -> Result<Answer, DirectError> {
        let signed = Signed {
            id: "evt_1",
            timestamp: 1_700_000_000,
            signature: "v1,abc=",
        };
        pool.post(endpoint, signed, body, (16, 4096), Duration::from_secs(1))
            .await
    }

    #[tokio::test]
    async fn writes_one_exact_request_and_reuses_the_connection() {
        let (url, requests, accepted) = server(
            |_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            10,
        )
        .await;
        let pool = Pool::new(true, Duration::from_secs(1));
        let endpoint = prepared(&url);
        for _ in 0..3 {
            let answer = post(&pool, &endpoint, br#"{"a":1}"#).await.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(&answer.start[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let authority = url.authority().to_owned();
        let expected = format!(
            "POST /hook?x=1 HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\n\
             user-agent: custom\r\nx-tenant: acme\r\nwebhook-id: evt_1\r\n\
             webhook-signature: v1,abc=\r\nwebhook-timestamp: 1700000000\r\n\
             content-length: 7\r\n\r\n{{\"a\":1}}"
        );
        assert_eq!(
            String::from_utf8_lossy(&requests.lock().unwrap()[0]),
            expected
        );
    }

    #[tokio::test]
    async fn reads_chunked_bodies_skips_informational_answers_and_keeps_the_cap() {
        let (url, _, accepted) = server(
            |n| match n {
                1 => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nretry-after: 7\r\n\
                       transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nt: 1\r\n\r\n"
                    .to_vec(),
                2 => {
                    let mut a = b"HTTP/1.1 500 No\r\ncontent-length: 1000000\r\n\r\n".to_vec();
                    a.extend((0..1_000_000).map(|i| b"0123456789"[i % 10]));
                    a
                }
                _ => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            },
            10,
        )
        .await;
        let pool = Pool::new(true, Duration::from_secs(1));
        let endpoint = prepared(&url);
        let answer = post(&pool, &endpoint, b"{}").await.unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.retry_after.as_deref(), Some("7"));
        assert_eq!(&answer.start[..], b"hello world");
        // A body far over the cap: its start kept, the rest not read, the connection not
        // reused.
        let answer = post(&pool, &endpoint, b"{}").await.unwrap();
        assert_eq!(
            (answer.status, &answer.start[..]),
            (500, &b"0123456789012345"[..])
        );
        let answer = post(&pool, &endpoint, b"{}").await.unwrap();
        assert_eq!((answer.status, answer.start.len()), (204, 0));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_and_a_close_is_honoured() {
        // Each connection answers once and closes, without saying so.
        let (url, requests, accepted) = server(
            |_| b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
            1,
        )
        .await;
        let pool = Pool::new(true, Duration::from_secs(1));
        let endpoint = prepared(&url);
        for _ in 0..3 {
            assert_eq!(post(&pool, &endpoint, b"{}").await.unwrap().status, 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(requests.lock().unwrap().len(), 3);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // `connection: close` and a body up to the close: never reused.
        let (url, _, accepted) = server(
            |n| match n % 2 {
                1 => b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".to_vec(),
                _ => b"HTTP/1.0 200 OK\r\n\r\nbye".to_vec(),
            },
            1,
        )
        .await;
        let endpoint = prepared(&url);
        for _ in 0..2 {
            assert_eq!(post(&pool, &endpoint, b"{}").await.unwrap().status, 200);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn malformed_and_oversized_answers_fail_the_attempt() {
        let (url, _, _) = server(
            |n| match n {
                1 => b"SMTP ready\r\n\r\n".to_vec(),
                2 => {
                    let mut a = b"HTTP/1.1 200 OK\r\n".to_vec();
                    for i in 0..=MAX_RESPONSE_HEADERS {
                        a.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
                    }
                    a.extend_from_slice(b"\r\n");
                    a
                }
                _ => {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec()
                }
            },
            1,
        )
        .await;
        let pool = Pool::new(true, Duration::from_secs(1));
        let endpoint = prepared(&url);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(
                post(&pool, &endpoint, b"{}")
                    .await
                    .err()
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(
            got,
            [
                "request: invalid HTTP/1.1 answer: invalid HTTP version",
                "request: more than 64 response headers",
                "request: invalid content-length",
            ]
        );
    }
}
