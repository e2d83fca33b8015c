//! Hot standby: the streamer `kill -9`'d mid-burst, the standby streams within 10 s and
//! delivers every row, and no watcher ever sees two walhook walsenders; the role in
//! `/readyz` and `/metrics`; a lost lease session stops the stream at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Instance;
use crate::support::TestDb;

/// Polls `pg_stat_replication` every 100 ms for walhook walsenders of this test's database
/// (the server is shared: other tests' walsenders are on other databases); returns the
/// largest count seen and the number of polls when `stop` is set.
fn watch_walsenders(db: &TestDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(i64, usize)> {
    let url = db.url.clone();
    let name = db.name.clone();
    tokio::spawn(async move {
        let client = crate::support::connect(&url).await;
        let (mut most, mut polls) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let count: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_activity a USING (pid) \
                     WHERE a.datname = $1 AND r.application_name = 'walhook'",
                    &[&name],
                )
                .await
                .unwrap()
                .get(0);
            most = most.max(count);
            polls += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (most, polls)
    })
}

#[tokio::test]
async fn kill_9_of_the_streamer_mid_burst_the_standby_takes_over_within_10_s() {
    let db = TestDb::new("standby_takeover").await;
    let receiver = db
        .watched_with_receiver(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT walhook.watch('orders');",
            "{orders.created}",
        )
        .await;
    let mut first = Instance::spawn(&db);
    first.wait_role("streaming", Duration::from_secs(30)).await;
    let mut second = Instance::spawn(&db);
    second.wait_role("standby", Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_walsenders(&db, stop.clone());
    // The burst: 100 transactions of 100 rows, written while walhook delivers.
    let writer = db.insert_orders(100, 100);
    receiver.wait_distinct(1500, Duration::from_secs(60)).await;
    first.kill9();
    let took = second.wait_role("streaming", Duration::from_secs(10)).await;
    println!("the standby streams {took:?} after the kill -9");
    writer.await.unwrap();

    receiver
        .wait_distinct(10_000, Duration::from_secs(90))
        .await;
    let rows: HashSet<i64> = receiver
        .delivered()
        .iter()
        .map(|r| r.json["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(rows, (1..=10_000).collect());
    stop.store(true, Ordering::Relaxed);
    let (most, polls) = watcher.await.unwrap();
    assert_eq!(most, 1, "walhook walsenders seen at once ({polls} polls)");
    assert!(polls >= 10, "{polls} polls");
    // The one streaming is the survivor's.
    assert_eq!(
        second.readyz().await.unwrap(),
        (200, json!({"status": "ready", "role": "streaming"}))
    );
    // Let the unacknowledged tail's redeliveries settle, then a clean stop.
    let settled = Instant::now();
    loop {
        let pending: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM walhook.delivery_queue WHERE status = 'pending'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(60),
            "{pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.stop().await;
}

/// The `/metrics` line of `walhook_capture_role` for `role`.
fn role_line(metrics: &str, role: &str) -> String {
    let prefix = format!("walhook_capture_role{{role=\"{role}\"}} ");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
        .to_owned()
}

#[tokio::test]
async fn the_standby_role_shows_in_readyz_and_metrics_and_is_logged_once() {
    let db = TestDb::new("standby_role").await;
    let receiver = db
        .watched_with_receiver(
            "CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');",
            "{orders.created}",
        )
        .await;
    let mut first = Instance::spawn(&db);
    first.wait_role("streaming", Duration::from_secs(30)).await;
    let mut second = Instance::spawn(&db);
    second.wait_role("standby", Duration::from_secs(30)).await;

    assert_eq!(
        first.readyz().await.unwrap(),
        (200, json!({"status": "ready", "role": "streaming"}))
    );
    assert_eq!(
        second.readyz().await.unwrap(),
        (
            503,
            json!({
                "status": "not ready",
                "role": "standby",
                "reason": "another instance streams; this one serves the API and retries, and takes over when it stops"
            })
        )
    );
    let metrics = second.metrics().await;
    assert_eq!(
        role_line(&metrics, "standby"),
        "walhook_capture_role{role=\"standby\"} 1"
    );
    assert_eq!(
        role_line(&metrics, "streaming"),
        "walhook_capture_role{role=\"streaming\"} 0"
    );
    assert!(
        metrics.lines().any(|l| l == "walhook_capture_streaming 0"),
        "{metrics}"
    );
    let metrics = first.metrics().await;
    assert_eq!(
        role_line(&metrics, "streaming"),
        "walhook_capture_role{role=\"streaming\"} 1"
    );
    assert_eq!(
        role_line(&metrics, "standby"),
        "walhook_capture_role{role=\"standby\"} 0"
    );
    // The standby serves the API.
    let live = reqwest::get(format!("{}/healthz", second.api))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    // Standing by is quiet: one line however long it waits (here: until 3 s of polls).
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(3) {
        assert_eq!(second.readyz().await.unwrap().0, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = second.log_text();
    assert_eq!(log.matches("standing by").count(), 1, "{log}");
    // (The start-up preflight checks warn about the harness server's settings.)
    let quiet = log
        .lines()
        .filter(|l| !l.contains("preflight"))
        .all(|l| !l.contains("WARN") && !l.contains("ERROR"));
    assert!(quiet, "{log}");

    // A clean stop of the streamer hands over too; events flow through the new streamer.
    first.stop().await;
    second.wait_role("streaming", Duration::from_secs(10)).await;
    let metrics = second.metrics().await;
    assert_eq!(
        role_line(&metrics, "streaming"),
        "walhook_capture_role{role=\"streaming\"} 1"
    );
    assert_eq!(
        role_line(&metrics, "standby"),
        "walhook_capture_role{role=\"standby\"} 0"
    );
    db.exec("INSERT INTO orders VALUES (1)").await;
    let got = receiver.wait_delivered(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].json["data"], json!({"id": 1}));
    second.stop().await;
}

/// The walsender pid holding this test's slot, if any.
async fn slot_pid(db: &TestDb) -> Option<i32> {
    db.client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

#[tokio::test]
async fn losing_the_lease_session_stops_the_stream_at_once() {
    let db = TestDb::new("standby_lease_lost").await;
    let receiver = db
        .watched_with_receiver(
            "CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');",
            "{orders.created}",
        )
        .await;
    let mut daemon = Instance::spawn(&db);
    daemon.wait_role("streaming", Duration::from_secs(30)).await;
    let walsender = slot_pid(&db).await.unwrap();
    let ended: i64 = db
        .client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'walhook lease'",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ended, 1);
    // The stream stops at once: its walsender goes without anyone terminating it.
    let start = Instant::now();
    loop {
        let alive: bool = db
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE pid = $1)",
                &[&walsender],
            )
            .await
            .unwrap()
            .get(0);
        if !alive {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "still streaming without its lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then it takes the lease again and streams on a new walsender; nothing is lost.
    daemon.wait_role("streaming", Duration::from_secs(10)).await;
    db.exec("INSERT INTO orders VALUES (1)").await;
    let got = receiver.wait_delivered(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].json["data"], json!({"id": 1}));
    assert_ne!(slot_pid(&db).await, Some(walsender));
    assert!(
        daemon.log_text().contains("the capture lease was lost"),
        "{}",
        daemon.log_text()
    );
    daemon.stop().await;
}
