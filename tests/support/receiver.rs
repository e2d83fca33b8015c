//! A real HTTP receiver on 127.0.0.1 that records every request and answers as scripted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Lower-case header name → value.
    pub headers: HashMap<String, String>,
    /// Exact body.
    pub body: String,
    /// Parsed body.
    pub json: Value,
    /// Status we answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    requests: Vec<Received>,
    /// Answers for the next requests, in order: (status, delay before answering).
    script: VecDeque<(u16, Duration)>,
    /// Per `data.id`: how many more requests for that row to fail with 500.
    fail_rows: HashMap<i64, usize>,
    /// Delay for every unscripted request.
    delay: Duration,
    /// Echo an intent-verification challenge (`X-Hook-Secret`) back.
    echo_challenge: bool,
}

/// The receiver.
#[derive(Clone)]
pub struct Receiver {
    /// Its URL (`http://127.0.0.1:PORT/hook`).
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

async fn hook(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let body = String::from_utf8_lossy(&body).into_owned();
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let row = json["data"]["id"].as_i64();
    let mut answer_headers = HeaderMap::new();
    let (status, delay) = {
        let mut inner = inner.lock().unwrap();
        if let Some(challenge) = headers
            .get("x-hook-secret")
            .filter(|_| inner.echo_challenge)
        {
            answer_headers.insert("x-hook-secret", challenge.clone());
        }
        let scripted = inner.script.pop_front();
        let failing = row
            .and_then(|id| inner.fail_rows.get_mut(&id))
            .filter(|left| **left > 0);
        match (scripted, failing) {
            (Some(answer), _) => answer,
            (None, Some(left)) => {
                *left -= 1;
                (500, Duration::ZERO)
            }
            (None, None) => (200, inner.delay),
        }
    };
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // Recorded on arrival, so a request the sender gives up on (timeout) is seen too.
    inner.lock().unwrap().requests.push(Received {
        headers,
        body,
        json,
        status,
        at: Instant::now(),
    });
    tokio::time::sleep(delay).await;
    (StatusCode::from_u16(status).unwrap(), answer_headers)
}

impl Receiver {
    /// Starts a receiver answering 200 at once.
    pub async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0").await
    }

    /// Starts a receiver on `addr` (e.g. a port that refused connections until now).
    pub async fn start_on(addr: &str) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, inner }
    }

    /// Scripts the next answers.
    pub fn script(&self, answers: &[(u16, Duration)]) {
        self.inner
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().copied());
    }

    /// Fails the next `times` requests for the row whose `data.id` is `id`.
    pub fn fail_row(&self, id: i64, times: usize) {
        self.inner.lock().unwrap().fail_rows.insert(id, times);
    }

    /// Echoes intent-verification challenges (off by default).
    pub fn echo_challenges(&self, on: bool) {
        self.inner.lock().unwrap().echo_challenge = on;
    }

    /// Delays every unscripted answer.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().unwrap().delay = delay;
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Requests answered 2xx so far.
    pub fn delivered(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// The distinct `webhook-id`s answered 2xx so far.
    pub fn distinct_delivered(&self) -> HashSet<String> {
        let inner = self.inner.lock().unwrap();
        inner
            .requests
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.headers["webhook-id"].clone())
            .collect()
    }

    /// Waits until `n` distinct `webhook-id`s were answered 2xx (fails after `wait`).
    pub async fn wait_distinct(&self, n: usize, wait: Duration) {
        let start = Instant::now();
        loop {
            let seen = self.distinct_delivered().len();
            if seen >= n {
                return;
            }
            assert!(
                start.elapsed() < wait,
                "only {seen} of {n} distinct events arrived after {wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` requests were answered 2xx (fails after `wait`).
    pub async fn wait_delivered(&self, n: usize, wait: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            // Counted under the lock, not cloned: polling must not slow the receiver down.
            let (delivered, requests) = {
                let inner = self.inner.lock().unwrap();
                let ok = |r: &&Received| (200..300).contains(&r.status);
                (
                    inner.requests.iter().filter(ok).count(),
                    inner.requests.len(),
                )
            };
            if delivered >= n {
                return self.delivered();
            }
            assert!(
                start.elapsed() < wait,
                "{delivered} of {n} deliveries after {wait:?} ({requests} requests)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
