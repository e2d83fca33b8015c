//! Cleartext HTTP/2 (prior knowledge) when a subscription opts in with `http2`, HTTP/1.1
//! otherwise, against a real local server that speaks both and records the version.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use super::{setup, subscribe};
use crate::support::daemon::{Daemon, FAST_RETRIES, config};

/// One request: path, protocol version, body.
type Seen = Arc<Mutex<Vec<(String, Version, Value)>>>;

/// A server on 127.0.0.1 answering 200 in HTTP/2 to connections that open with the HTTP/2
/// preface (h2c prior knowledge) and in HTTP/1.1 to the others; returns its base URL.
async fn start_server(seen: Seen) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                // The first bytes tell: "PRI * HTTP/2.0…" is the HTTP/2 preface.
                let mut start = [0u8; 4];
                let n = stream.peek(&mut start).await.unwrap_or(0);
                let h2 = n > 0 && b"PRI "[..n] == start[..n];
                let service = service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let version = request.version();
                        let body = axum::body::Body::new(request.into_body());
                        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        seen.lock().unwrap().push((path, version, json));
                        Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
                    }
                });
                let io = TokioIo::new(stream);
                let _ = if h2 {
                    http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    http1::Builder::new().serve_connection(io, service).await
                };
            });
        }
    });
    base
}

#[tokio::test]
async fn h2c_when_opted_in_http1_otherwise() {
    let db = setup("batch_h2c").await;
    let seen = Seen::default();
    let base = start_server(seen.clone()).await;
    subscribe(&db, &format!("{base}/h2"), "http2 = true").await;
    subscribe(&db, &format!("{base}/h1"), "http2 = false").await;
    subscribe(
        &db,
        &format!("{base}/h2batch"),
        "http2 = true, batch_max = 10, batch_window_ms = 300",
    )
    .await;
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &[])).await;
    db.exec("INSERT INTO orders (id) SELECT g FROM generate_series(1, 3) g")
        .await;
    let start = Instant::now();
    while seen.lock().unwrap().len() < 7 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let of = |path: &str| -> Vec<(Version, Value)> {
        seen.iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, v, j)| (*v, j.clone()))
            .collect()
    };
    let ids = |requests: &[(Version, Value)]| {
        let mut ids: Vec<i64> = requests
            .iter()
            .map(|(_, j)| j["data"]["id"].as_i64().unwrap())
            .collect();
        ids.sort();
        ids
    };
    let h2 = of("/h2");
    assert_eq!(ids(&h2), vec![1, 2, 3]);
    assert!(h2.iter().all(|(v, _)| *v == Version::HTTP_2), "{h2:?}");
    let h1 = of("/h1");
    assert_eq!(ids(&h1), vec![1, 2, 3]);
    assert!(h1.iter().all(|(v, _)| *v == Version::HTTP_11), "{h1:?}");
    let batch = of("/h2batch");
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].0, Version::HTTP_2);
    let members: Vec<i64> = batch[0]
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(members, vec![1, 2, 3]);
    daemon.stop().await;
}
