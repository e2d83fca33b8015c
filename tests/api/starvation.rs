//! The API cannot starve delivery or be held by its clients: verification bodies are read
//! only up to a cap, slow verifications hold no database connection, the pool's waits are
//! bounded, and a client that never finishes its headers is disconnected.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::TestDb;
use crate::support::api::{Api, ApiFixture, error};
use crate::support::daemon::spawn_walhook;
use crate::support::receiver::Receiver;
use walhook::subscriptions::store;

/// A target answering 200 with a `size`-byte body, written as fast as the reader takes it;
/// returns its URL and a task giving the bytes it managed to write.
async fn streaming_target(size: u64) -> (String, tokio::task::JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await.unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b' '; 64 * 1024];
        let mut written = 0u64;
        while written < size {
            match socket.write(&chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        written
    });
    (url, task)
}

/// A kilobyte count from `/proc/PID/status` (`VmRSS`, `VmHWM`).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn a_huge_verification_body_is_not_read() {
    let db = TestDb::new("api_verify_body").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec("CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');")
        .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_walhook(
        &db,
        &[
            ("WALHOOK_API__ENABLED", "true"),
            ("WALHOOK_API__LISTEN", &listen),
            ("WALHOOK_API__VERIFY_INTENT", "true"),
        ],
    );
    let pid = child.id();
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let start = Instant::now();
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(child.try_wait().unwrap().is_none(), "walhook exited");
        assert!(start.elapsed() < Duration::from_secs(30), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = store::connect(&db.database()).await.unwrap();
    let (_, token) = walhook::api::auth::create(&mut conn, "acme", &["*".to_owned()])
        .await
        .unwrap();
    let before = proc_kb(pid, "VmRSS");

    const SIZE: u64 = 256 * 1024 * 1024;
    let (url, target) = streaming_target(SIZE).await;
    let api = Api::new_base(&base);
    let answer = api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(json!({"event": "orders.created", "target_url": url})),
        )
        .await;
    assert_eq!(
        (answer.status, answer.json),
        (
            422,
            error(
                "verification_failed",
                "intent verification failed: target answered a body longer than 4096 bytes without echoing the challenge in X-Hook-Secret",
                Some("target_url"),
            )
        )
    );
    let written = target.await.unwrap();
    assert!(
        written < 16 * 1024 * 1024,
        "the target wrote {written} bytes: the body was read on"
    );
    let (rss, peak) = (proc_kb(pid, "VmRSS"), proc_kb(pid, "VmHWM"));
    eprintln!("walhook RSS before {before} kB, after {rss} kB, peak {peak} kB");
    assert!(peak < 64 * 1024, "peak RSS {peak} kB");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A target that accepts connections and never answers; keeps them open.
async fn black_hole() -> (String, tokio::sync::mpsc::UnboundedReceiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            if tx.send(socket).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

#[tokio::test]
async fn stuck_verifications_leave_metrics_and_delivery_flowing() {
    let f = ApiFixture::start("api_stuck_verify", |c| {
        c.api.verify_intent = true;
        c.delivery.timeout_ms = 10_000;
    })
    .await;
    let token = f.token("acme", &["*"]).await;
    let healthy = Receiver::start().await;
    f.db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{orders.created}}')",
        healthy.url
    ))
    .await;
    let reloads = f.api.reloads().await;
    f.api.wait_reload_after(reloads).await;
    let (hole, mut held) = black_hole().await;
    let stuck: Vec<_> = (0..16)
        .map(|i| {
            let api = Api::new_base(&f.api.base);
            let token = token.clone();
            let url = format!("{hole}/{i}");
            tokio::spawn(async move {
                api.call(
                    "POST",
                    "/v1/hooks",
                    &token,
                    Some(json!({"event": "orders.created", "target_url": url})),
                )
                .await
            })
        })
        .collect();
    let mut sockets = Vec::new();
    let started = Instant::now();
    while sockets.len() < 16 {
        let socket = tokio::time::timeout(Duration::from_secs(10), held.recv())
            .await
            .expect("16 verifications reach the target")
            .unwrap();
        sockets.push(socket);
    }

    // For 8 s the verifications hang; meanwhile /metrics answers fast and deliveries flow.
    let mut id = 0;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(8) {
        let asked = Instant::now();
        let metrics = f.api.raw("GET", "/metrics", None, None).await;
        slowest = slowest.max(asked.elapsed());
        assert_eq!(metrics.status, 200, "{}", metrics.text);
        id += 1;
        f.db.exec(&format!("INSERT INTO orders VALUES ({id}, 'new', 1)"))
            .await;
        healthy.wait_delivered(id, Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        slowest < Duration::from_millis(100),
        "/metrics took {slowest:?}"
    );
    assert!(id >= 20, "only {id} deliveries in 8 s");
    assert!(
        stuck.iter().all(|t| !t.is_finished()),
        "the verifications were still waiting after 8 s"
    );
    for task in stuck {
        let answer = task.await.unwrap();
        assert_eq!(
            (answer.status, &answer.json["error"]["code"]),
            (422, &json!("verification_failed")),
            "{}",
            answer.text
        );
    }
    let count = "SELECT count(*) FROM walhook.subscriptions";
    let n: i64 = f.db.client.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "none of the stuck ones was subscribed");
    drop(sockets);
    f.daemon.stop().await;
}

#[tokio::test]
async fn a_request_whose_headers_never_finish_is_closed() {
    let f = ApiFixture::start("api_header_timeout", |c| c.api.header_timeout_ms = 500).await;
    let address = f.api.base.trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&address).await.unwrap();
    let sent = Instant::now();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer))
        .await
        .expect("the server closed the connection");
    let closed_after = sent.elapsed();
    assert_eq!(read.unwrap(), 0, "closed without an answer");
    assert!(
        closed_after >= Duration::from_millis(450) && closed_after < Duration::from_millis(1500),
        "closed after {closed_after:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "",
        "no answer to half a request"
    );

    // A whole request is served as before.
    let live = f.api.raw("GET", "/healthz", None, None).await;
    assert_eq!((live.status, live.json), (200, json!({"status": "ok"})));
    f.daemon.stop().await;
}

#[tokio::test]
async fn a_busy_pool_answers_503_with_a_request_id() {
    let f = ApiFixture::start("api_pool_wait", |c| {
        c.api.pool_size = 1;
        c.api.pool_wait_ms = 200;
    })
    .await;
    let token = f.token("acme", &["*"]).await;
    // The API's one connection blocks on a locked table while authenticating.
    let locker = crate::support::connect(&f.db.url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE walhook.api_tokens IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let blocked = {
        let api = Api::new_base(&f.api.base);
        tokio::spawn(async move { api.call("GET", "/v1/hooks", &token, None).await })
    };
    let start = Instant::now();
    while locker
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE relation = 'walhook.api_tokens'::regclass AND NOT granted",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    let busy = f.api.raw("GET", "/metrics", None, None).await;
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let id = busy.header("x-request-id").to_owned();
    assert!(
        id.len() == 20 && id.starts_with("req_"),
        "x-request-id {id:?}"
    );
    let mut expected = error(
        "unavailable",
        &format!("the database is unavailable or busy; retry later (request id {id})"),
        None,
    );
    expected["error"]["request_id"] = json!(id);
    assert_eq!((busy.status, busy.json), (503, expected));

    locker.batch_execute("COMMIT").await.unwrap();
    let answer = blocked.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    f.daemon.stop().await;
}
