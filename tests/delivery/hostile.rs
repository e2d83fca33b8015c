//! Hostile endpoints and refused queue writes cannot hold acknowledgement: a `Retry-After`
//! of 10^13 seconds, a huge error body, an event the queue table refuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::routing::post;
use walhook::subscriptions::store;

use crate::support::TestDb;
use crate::support::daemon::{Daemon, config};
use crate::support::receiver::Receiver;

/// An endpoint on 127.0.0.1 answering every POST with `status`, `headers` and `body`; returns
/// its URL and how many requests it got.
async fn answering(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: Vec<u8>,
) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let mut answer = HeaderMap::new();
    for (name, value) in headers {
        answer.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let counter = hits.clone();
    let app = Router::new().route(
        "/hook",
        post(move || {
            let (answer, body) = (answer.clone(), body.clone());
            counter.fetch_add(1, Ordering::SeqCst);
            async move { (StatusCode::from_u16(status).unwrap(), answer, body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

/// Inserts `values` into `orders` in one transaction; returns an LSN inside it (after the
/// rows, before the commit): the slot has passed the write once it is confirmed past this.
async fn write(db: &TestDb, values: &str) -> u64 {
    db.exec(&format!("BEGIN; INSERT INTO orders VALUES {values}"))
        .await;
    let lsn: i64 = db
        .client
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap()
        .get(0);
    db.exec("COMMIT").await;
    lsn as u64
}

/// Waits until the slot's `confirmed_flush_lsn` is past `lsn`, at most `within` after `since`.
async fn wait_confirmed(db: &TestDb, lsn: u64, since: Instant, within: Duration) {
    loop {
        let (confirmed, _) = db.slot_positions(&db.name).await;
        if confirmed > lsn {
            return;
        }
        assert!(
            since.elapsed() < within,
            "confirmed_flush_lsn {confirmed:X} has not passed the write {lsn:X} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup(test: &str) -> TestDb {
    let db = TestDb::new(test).await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT walhook.watch('orders');",
    )
    .await;
    db
}

#[tokio::test]
async fn a_huge_retry_after_holds_neither_the_healthy_endpoint_nor_acknowledgement() {
    let db = setup("hostile_retry_after").await;
    let healthy = Receiver::start().await;
    let (hostile, hostile_hits) =
        answering(429, &[("retry-after", "10000000000000")], Vec::new()).await;
    let (noisy, _) = answering(503, &[("retry-after", "in a while")], vec![b'x'; 1 << 20]).await;
    for url in [&healthy.url, &hostile, &noisy] {
        db.exec(&format!(
            "SELECT walhook.subscribe('{url}', '{{orders.*}}')"
        ))
        .await;
    }
    let delivery = "allow_private_targets = true\nretry_schedule_ms = [60000]\ntimeout_ms = 2000";
    let mut daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    for round in 0..2 {
        let ids: Vec<String> = (1..=20)
            .map(|i| format!("({}, 'new')", round * 100 + i))
            .collect();
        let lsn = write(&db, &ids.join(", ")).await;
        let written = Instant::now();
        healthy
            .wait_delivered(20 * (round + 1), Duration::from_secs(6))
            .await;
        wait_confirmed(&db, lsn, written, Duration::from_secs(6)).await;
        // The hostile events wait at most the schedule's last step (60 s, +20 % jitter).
        let rows = db
            .client
            .query(
                "SELECT s.target_url, q.status, q.attempts, q.last_error, \
                        q.next_attempt_at > now() + interval '45 seconds', \
                        q.next_attempt_at <= now() + interval '73 seconds' \
                 FROM walhook.delivery_queue q JOIN walhook.subscriptions s ON s.id = q.subscription_id \
                 ORDER BY s.target_url, q.id",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 40 * (round + 1));
        for row in rows {
            let url: String = row.get(0);
            let expected_error = if url == hostile {
                "HTTP 429".to_string()
            } else {
                format!("HTTP 503: {}", "x".repeat(256))
            };
            assert!(url == hostile || url == noisy, "{url}");
            assert_eq!(row.get::<_, String>(1), "pending");
            assert_eq!(row.get::<_, i32>(2), 1);
            assert_eq!(row.get::<_, String>(3), expected_error);
            assert!(row.get::<_, bool>(4) && row.get::<_, bool>(5), "{url}");
        }
        if round == 0 {
            // A restart replays nothing into a jam: the slot is past the write.
            daemon.stop().await;
            daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
        }
    }
    assert_eq!(healthy.delivered().len(), 40);
    assert_eq!(hostile_hits.load(Ordering::SeqCst), 40);
    daemon.stop().await;
}

#[tokio::test]
async fn a_refused_queue_write_parks_the_event_or_drops_it_and_acknowledgement_moves() {
    let db = setup("refused_queue_write").await;
    // The queue table refuses pending rows of "poison" events (the dead letter is accepted)
    // and every row of "doomed" ones, as a data exception and a check violation would.
    db.exec(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.body LIKE '%\"poison\"%' AND NEW.status = 'pending' THEN
             RAISE EXCEPTION 'poisoned pending' USING ERRCODE = '22023';
           END IF;
           IF NEW.body LIKE '%\"doomed\"%' THEN
             RAISE EXCEPTION 'doomed everywhere' USING ERRCODE = '23514';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON walhook.delivery_queue
           FOR EACH ROW EXECUTE FUNCTION public.refuse();",
    )
    .await;
    let receiver = Receiver::start().await;
    for id in 1..=3 {
        receiver.fail_row(id, if id == 3 { 1 } else { 100 });
    }
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{orders.*}}')",
        receiver.url
    ))
    .await;
    let delivery =
        "allow_private_targets = true\nretry_schedule_ms = [200, 200]\ntimeout_ms = 2000";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    let lsn = write(&db, "(1, 'poison'), (2, 'doomed'), (3, 'fine')").await;
    let written = Instant::now();
    wait_confirmed(&db, lsn, written, Duration::from_secs(6)).await;
    // Row 3 was queued normally and is delivered by the retrier.
    let delivered = receiver.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(delivered[0].json["data"]["id"], 3);
    // Its queue row goes once the retrier has settled it.
    let start = Instant::now();
    let rows = loop {
        let rows = db
            .client
            .query(
                "SELECT body::jsonb #>> '{data,id}', status, attempts, last_error FROM walhook.delivery_queue ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        let rows: Vec<(String, String, i32, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        if rows.iter().all(|r| r.1 == "dead") || start.elapsed() > Duration::from_secs(5) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        rows,
        [(
            "1".to_string(),
            "dead".to_string(),
            1,
            "cannot queue: delivery queue write refused: 22023 poisoned pending".to_string()
        )]
    );
    // Nothing jammed: a later write is acknowledged too.
    let lsn = write(&db, "(4, 'later')").await;
    wait_confirmed(&db, lsn, Instant::now(), Duration::from_secs(6)).await;
    receiver.wait_delivered(2, Duration::from_secs(6)).await;
    daemon.stop().await;
}
