//! Exact bodies and headers, retries, 410, dead letters, per-row order, isolation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use walhook::subscriptions::store;

use crate::support::TestDb;
use crate::support::daemon::{Daemon, FAST_RETRIES, config};
use crate::support::receiver::{Received, Receiver};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=";

/// A database with `orders` watched and walhook's schema in place.
async fn setup(test: &str) -> TestDb {
    let db = TestDb::new(test).await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2));
         SELECT walhook.watch('orders');",
    )
    .await;
    db
}

async fn subscribe(db: &TestDb, url: &str, extra: &str) {
    db.exec(&format!(
        "SELECT walhook.subscribe('{url}', '{{orders.*}}'{extra})"
    ))
    .await;
}

/// Subscribes a port nobody listens on yet (every connection refused); returns its address.
async fn subscribe_refused(db: &TestDb) -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    subscribe(db, &format!("http://{addr}/hook"), "").await;
    addr
}

async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(db: &TestDb, sql: &str) -> T {
    db.client.query_one(sql, &[]).await.unwrap().get(0)
}

fn verify_signature(r: &Received) -> bool {
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    let signed = format!(
        "{}.{}.{}",
        r.headers["webhook-id"], r.headers["webhook-timestamp"], r.body
    );
    mac.update(signed.as_bytes());
    r.headers["webhook-signature"] == format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn delivers_the_exact_body_and_headers_signed() {
    let db = setup("deliver_exact").await;
    let receiver = Receiver::start().await;
    subscribe(
        &db,
        &receiver.url,
        &format!(
            ", secret => '{SECRET}', headers => '{{\"x-tenant\": \"acme\"}}', context => 'ctx-1'"
        ),
    )
    .await;
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &[])).await;
    db.exec("INSERT INTO orders VALUES (42, 'new', 12.50)")
        .await;
    let got = receiver.wait_delivered(1, Duration::from_secs(20)).await;
    let r = &got[0];
    let xid: i64 = scalar(&db, "SELECT xmin::text::bigint FROM orders WHERE id = 42").await;
    let lsn = r.json["source"]["lsn"].as_str().unwrap().to_owned();
    let lsn_hex: Vec<u64> = lsn
        .split('/')
        .map(|p| u64::from_str_radix(p, 16).unwrap())
        .collect();
    let id = format!("evt_{:016X}_0", (lsn_hex[0] << 32) | lsn_hex[1]);
    let expected: Value = serde_json::from_str(&format!(
        r#"{{"id": "{id}", "type": "orders.created", "timestamp": {ts},
            "data": {{"id": 42, "status": "new", "amount": 12.50}}, "previous": null, "changed": null,
            "source": {{"schema": "public", "table": "orders", "lsn": "{lsn}", "xid": {xid}, "mode": "replication"}},
            "context": "ctx-1"}}"#,
        ts = r.json["timestamp"],
    ))
    .unwrap();
    assert_eq!(r.json, expected);
    assert!(r.body.contains(r#""amount":12.50"#), "{}", r.body);
    let ts = r.json["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.headers["user-agent"],
        format!("walhook/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(r.headers["webhook-id"], id);
    assert_eq!(r.headers["x-tenant"], "acme");
    let sent: i64 = r.headers["webhook-timestamp"].parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent).abs() < 60);
    assert!(verify_signature(r), "signature does not verify");
    daemon.stop().await;
}

#[tokio::test]
async fn retries_failures_with_the_same_id_and_body() {
    let db = setup("deliver_retry").await;
    let receiver = Receiver::start().await;
    receiver.script(&[(500, Duration::ZERO), (503, Duration::ZERO)]);
    subscribe(&db, &receiver.url, &format!(", secret => '{SECRET}'")).await;
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &[])).await;
    db.exec("INSERT INTO orders VALUES (1, 'new', 1)").await;
    receiver.wait_delivered(1, Duration::from_secs(20)).await;
    let all = receiver.requests();
    assert_eq!(
        all.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 503, 200]
    );
    assert!(
        all.iter()
            .all(|r| r.headers["webhook-id"] == all[0].headers["webhook-id"])
    );
    assert!(
        all.iter().all(|r| r.body == all[0].body),
        "the body is identical on every attempt"
    );
    assert!(all.iter().all(verify_signature));
    // The receiver records a request on arrival; walhook settles the row after the response.
    let settled = "SELECT (SELECT count(*) FROM walhook.delivery_queue) = 0 \
                   AND (SELECT consecutive_failures FROM walhook.subscription_health) = 0";
    let start = Instant::now();
    while !scalar::<bool>(&db, settled).await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "delivered retry not settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await;
}

#[tokio::test]
async fn gone_deactivates_and_is_not_retried() {
    let db = setup("deliver_gone").await;
    let receiver = Receiver::start().await;
    receiver.script(&[(410, Duration::ZERO)]);
    subscribe(&db, &receiver.url, "").await;
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &[])).await;
    db.exec("INSERT INTO orders VALUES (1, 'new', 1)").await;
    let start = Instant::now();
    while scalar::<bool>(&db, "SELECT active FROM walhook.subscriptions").await {
        assert!(start.elapsed() < Duration::from_secs(10), "not deactivated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason: String = scalar(&db, "SELECT disabled_reason FROM walhook.subscriptions").await;
    assert_eq!(reason, "target answered 410 Gone");
    db.exec("INSERT INTO orders VALUES (2, 'new', 1)").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.requests().len(), 1, "no further calls after 410");
    daemon.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_past_disable_after_is_disabled() {
    let db = setup("deliver_disable").await;
    let receiver = Receiver::start().await;
    receiver.script(&[(500, Duration::ZERO), (500, Duration::ZERO)]);
    subscribe(&db, &receiver.url, "").await;
    let delivery =
        "allow_private_targets = true\nretry_schedule_ms = [60000]\ndisable_after_secs = 0";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    db.exec("INSERT INTO orders VALUES (1, 'new', 1)").await;
    let start = Instant::now();
    while scalar::<bool>(&db, "SELECT active FROM walhook.subscriptions").await {
        assert!(start.elapsed() < Duration::from_secs(10), "not disabled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason: String = scalar(&db, "SELECT disabled_reason FROM walhook.subscriptions").await;
    assert!(
        reason.starts_with("failing without a success since "),
        "{reason}"
    );
    let health = db
        .client
        .query_one(
            "SELECT consecutive_failures, last_error FROM walhook.subscription_health",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (health.get::<_, i32>(0), health.get::<_, String>(1)),
        (1, "HTTP 500".to_string())
    );
    daemon.stop().await;
}

#[tokio::test]
async fn timeouts_and_refusals_are_retried_then_dead_lettered_and_redelivered() {
    let db = setup("deliver_dead").await;
    let receiver = Receiver::start().await;
    // Attempt 1 times out (timeout 300 ms), attempts 2-4 fail: the schedule has 3 retries.
    receiver.script(&[
        (200, Duration::from_millis(800)),
        (500, Duration::ZERO),
        (502, Duration::ZERO),
        (500, Duration::ZERO),
    ]);
    subscribe(&db, &receiver.url, "").await;
    // A second subscription to a closed port: connection refused on every attempt.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    subscribe(&db, &refused, "").await;
    let delivery =
        "allow_private_targets = true\nretry_schedule_ms = [100, 100, 100]\ntimeout_ms = 300";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    db.exec("INSERT INTO orders VALUES (7, 'new', 1)").await;
    let start = Instant::now();
    while scalar::<i64>(&db, "SELECT count(*) FROM walhook.dead_letters").await < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = db
        .client
        .query(
            "SELECT target_url, attempts, last_error FROM walhook.dead_letters ORDER BY target_url",
            &[],
        )
        .await
        .unwrap();
    let errors: BTreeMap<String, (i32, String)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(errors[&receiver.url], (4, "HTTP 500".to_string()));
    let (attempts, error) = &errors[&refused];
    assert_eq!(*attempts, 4);
    assert!(error.starts_with("connect:"), "{error}");
    assert_eq!(receiver.requests().len(), 4);
    // The first request timed out (the receiver's 200 came after 800 ms): not a delivery.
    assert_eq!(receiver.requests()[0].status, 200);
    // Timeouts are retried: the first (slow) attempt was not the last.
    let n: i32 = scalar(&db, &format!("SELECT walhook.redeliver(subscription_id => (SELECT id FROM walhook.subscriptions WHERE target_url = '{}'))", receiver.url)).await;
    assert_eq!(n, 1);
    let start = Instant::now();
    while receiver.requests().len() < 5 {
        assert!(start.elapsed() < Duration::from_secs(10), "not redelivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = receiver.requests();
    assert_eq!(all[4].status, 200);
    assert_eq!(all[4].headers["webhook-id"], all[0].headers["webhook-id"]);
    let start = Instant::now();
    while scalar::<i64>(&db, "SELECT count(*) FROM walhook.dead_letters").await != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "redelivered row not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
}

#[tokio::test]
async fn an_unreachable_endpoint_opens_the_breaker_its_events_queue_then_flow_in_order() {
    let db = setup("deliver_breaker").await;
    let addr = subscribe_refused(&db).await;
    let delivery = "allow_private_targets = true\nretry_schedule_ms = [2000, 2000, 2000]";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    db.exec("INSERT INTO orders SELECT g, 'new', g FROM generate_series(1, 300) g")
        .await;
    db.exec("UPDATE orders SET status = 'paid' WHERE id <= 3")
        .await;
    let start = Instant::now();
    while scalar::<i64>(&db, "SELECT count(*) FROM walhook.delivery_queue").await < 303 {
        assert!(start.elapsed() < Duration::from_secs(10), "not all queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only the attempts in flight when the first refusal came were made (at most
    // max_in_flight = 16); every other event was held without an attempt, and the health
    // statistics were written once.
    let attempted: i64 = scalar(
        &db,
        "SELECT count(*) FROM walhook.delivery_queue WHERE attempts > 0",
    )
    .await;
    assert!((1..=16).contains(&attempted), "{attempted} attempted");
    let held: Vec<String> = db
        .client
        .query(
            "SELECT DISTINCT last_error FROM walhook.delivery_queue WHERE attempts = 0",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].starts_with("circuit open: connect:"), "{held:?}");
    let failures: i32 = scalar(
        &db,
        "SELECT consecutive_failures FROM walhook.subscription_health",
    )
    .await;
    assert_eq!(failures, 1);
    // The endpoint comes up: after the breaker's delay everything arrives, each row's events
    // in commit order, each event once.
    let receiver = Receiver::start_on(&addr).await;
    let got = receiver.wait_delivered(303, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 303);
    let ids: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    assert_eq!(ids.len(), 303, "each event once");
    for id in 1..=3 {
        let types: Vec<&str> = got
            .iter()
            .filter(|r| r.json["data"]["id"] == json!(id))
            .map(|r| r.json["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["orders.created", "orders.updated"], "row {id}");
    }
    let start = Instant::now();
    while scalar::<i64>(&db, "SELECT count(*) FROM walhook.delivery_queue").await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "queue not emptied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failures: i32 = scalar(
        &db,
        "SELECT consecutive_failures FROM walhook.subscription_health",
    )
    .await;
    assert_eq!(failures, 0);
    daemon.stop().await;
}

#[tokio::test]
async fn more_rows_queued_than_tracked_keep_their_order_across_a_restart() {
    use walhook::delivery::MAX_QUEUED_ROWS_TRACKED;
    let db = setup("deliver_many_queued").await;
    let addr = subscribe_refused(&db).await;
    let delivery = "allow_private_targets = true\nretry_schedule_ms = [1500, 1500, 1500]";
    let rows = MAX_QUEUED_ROWS_TRACKED as i64 + 500;
    let wait_queued = |n: i64| {
        let db = &db;
        async move {
            let start = Instant::now();
            while scalar::<i64>(db, "SELECT count(*) FROM walhook.delivery_queue").await < n {
                assert!(start.elapsed() < Duration::from_secs(30), "not all queued");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Past the tracking limit the subscription is marked as a whole: later events of rows
    // queued before still wait behind them.
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    db.exec(&format!(
        "INSERT INTO orders SELECT g, 'new', 1 FROM generate_series(1, {rows}) g"
    ))
    .await;
    db.exec(&format!(
        "UPDATE orders SET status = 'paid' WHERE id IN (1, {rows})"
    ))
    .await;
    wait_queued(rows + 2).await;
    daemon.stop().await;
    // A restart finds more queued rows than it tracks: the same holds from the start.
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    db.exec(&format!(
        "UPDATE orders SET status = 'shipped' WHERE id IN (1, {rows})"
    ))
    .await;
    wait_queued(rows + 4).await;
    let receiver = Receiver::start_on(&addr).await;
    let total = rows as usize + 4;
    let got = receiver
        .wait_delivered(total, Duration::from_secs(60))
        .await;
    assert_eq!(got.len(), total);
    for id in [1, rows] {
        let statuses: Vec<&str> = got
            .iter()
            .filter(|r| r.json["data"]["id"] == json!(id))
            .map(|r| r.json["data"]["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["new", "paid", "shipped"], "row {id}");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_failing_row_holds_back_only_its_own_later_events() {
    let db = setup("deliver_order").await;
    let receiver = Receiver::start().await;
    receiver.fail_row(1, 2); // row A's first event fails twice
    subscribe(&db, &receiver.url, "").await;
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &[])).await;
    for sql in [
        "INSERT INTO orders VALUES (1, 'a0', 1)",
        "INSERT INTO orders VALUES (2, 'b0', 1)",
        "UPDATE orders SET status = 'a1' WHERE id = 1",
        "UPDATE orders SET status = 'b1' WHERE id = 2",
        "UPDATE orders SET status = 'a2' WHERE id = 1",
        "UPDATE orders SET status = 'b2' WHERE id = 2",
    ] {
        db.exec(sql).await;
    }
    let got = receiver.wait_delivered(6, Duration::from_secs(20)).await;
    let statuses = |id: i64| -> Vec<String> {
        got.iter()
            .filter(|r| r.json["data"]["id"] == json!(id))
            .map(|r| r.json["data"]["status"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(statuses(1), vec!["a0", "a1", "a2"], "row A in commit order");
    assert_eq!(statuses(2), vec!["b0", "b1", "b2"], "row B in commit order");
    let last_b = got
        .iter()
        .rposition(|r| r.json["data"]["id"] == json!(2))
        .unwrap();
    let first_a = got
        .iter()
        .position(|r| r.json["data"]["id"] == json!(1))
        .unwrap();
    assert!(
        last_b < first_a,
        "row B flowed while row A waited on its retries"
    );
    daemon.stop().await;
}

/// The retrier serves each subscription within its own request slots: a slow endpoint's
/// queued backlog (older, so claimed first) never takes the places of a fast endpoint's
/// retries.
#[tokio::test]
async fn a_slow_endpoints_queued_backlog_does_not_delay_a_fast_ones_retries() {
    let db = setup("deliver_retry_isolation").await;
    let slow = Receiver::start().await;
    slow.set_delay(Duration::from_secs(5));
    subscribe(&db, &slow.url, "").await;
    let fast = Receiver::start().await;
    // Each row's first request fails (per row: under load a job may wait past the hold and
    // make its first attempt from the queue, after other rows' retries).
    for id in 1..=300 {
        fast.fail_row(id, 1);
    }
    subscribe(&db, &fast.url, "").await;
    // Past the hold (200 ms) the slow endpoint's events waiting for a slot go to the queue
    // table, as do the fast one's after its first answer (500): both are the retrier's.
    let delivery = "allow_private_targets = true\nretry_schedule_ms = [300]\nmax_hold_ms = 200\ntimeout_ms = 10000";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    db.exec("INSERT INTO orders SELECT g, 'new', 1 FROM generate_series(1, 300) g")
        .await;
    let start = Instant::now();
    let got = fast.wait_delivered(300, Duration::from_secs(15)).await;
    let distinct: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    assert_eq!(distinct.len(), 300);
    assert_eq!(
        fast.requests().len(),
        600,
        "one failed and one retried request per event"
    );
    println!(
        "fast endpoint's 300 retries delivered in {:?} beside a slow backlog",
        start.elapsed()
    );
    assert!(
        slow.requests().len() <= 48,
        "the slow endpoint never has more than 16 in flight (5 s each)"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_slow_endpoint_does_not_delay_a_fast_one() {
    let db = setup("deliver_isolation").await;
    let slow = Receiver::start().await;
    slow.set_delay(Duration::from_secs(5));
    let fast = Receiver::start().await;
    subscribe(&db, &slow.url, "").await;
    subscribe(&db, &fast.url, "").await;
    let delivery = "allow_private_targets = true\nretry_schedule_ms = [60000]\ntimeout_ms = 10000";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    let start = Instant::now();
    db.exec("INSERT INTO orders SELECT g, 'new', 1 FROM generate_series(1, 2000) g")
        .await;
    let got = fast.wait_delivered(2000, Duration::from_secs(30)).await;
    let took = start.elapsed();
    let distinct: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    assert_eq!(distinct.len(), 2000);
    println!("fast endpoint received 2,000 events in {took:?} beside a 5 s/request endpoint");
    assert!(
        took < Duration::from_secs(15),
        "fast endpoint took {took:?}"
    );
    assert!(
        slow.requests().len() <= 16,
        "the slow endpoint never has more than 16 in flight"
    );
    daemon.stop().await;
}
