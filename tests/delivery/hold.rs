//! The slot never waits on an endpoint: an endpoint answering in 3 s beside a fast one, 1,000
//! events in one transaction. The fast one gets everything at once, the slot's confirmed
//! position passes the commit within seconds (the slow endpoint's events were queued after
//! `delivery.max_hold_ms`), a fast shutdown of PostgreSQL completes promptly, and the slow
//! endpoint still gets every event, in per-row order, once the server is back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use walhook::localpg::LocalPostgres;

use crate::support::daemon::{Daemon, config};
use crate::support::receiver::Receiver;
use crate::support::{Server, TestDb};

#[tokio::test]
async fn slow_endpoint_never_holds_the_slot_or_a_fast_shutdown() {
    let mut pg = tokio::task::spawn_blocking(LocalPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let db = TestDb::on(&Server::of(&pg), "hold").await;
    let fast = db
        .watched_with_receiver(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT walhook.watch('orders');",
            "{orders.*}",
        )
        .await;
    let slow = Receiver::start().await;
    slow.set_delay(Duration::from_secs(3));
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{orders.*}}')",
        slow.url
    ))
    .await;
    let config = config(
        &db,
        "allow_private_targets = true\nretry_schedule_ms = [200, 200, 200]\ntimeout_ms = 10000\n\
         max_in_flight_per_subscription = 250\nmax_hold_ms = 1000",
        &[],
    );
    let daemon = Daemon::start(&db, config).await;

    // 500 rows created and updated in one transaction: 1,000 events, two per row.
    db.exec(
        "BEGIN; INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 500) g; \
         UPDATE orders SET status = 'paid'; COMMIT;",
    )
    .await;
    let committed = Instant::now();
    let written: i64 = db
        .client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap()
        .get(0);

    // The fast endpoint is not held back: all 1,000 while the slow one has a fraction.
    fast.wait_delivered(1000, Duration::from_secs(10)).await;
    let slow_by_then = slow.delivered().len();
    assert!(
        slow_by_then <= 500,
        "the slow endpoint had {slow_by_then} already"
    );
    println!(
        "fast endpoint: 1,000 events {:?} after the commit",
        committed.elapsed()
    );
    loop {
        let (confirmed, _) = db.slot_positions(&db.name).await;
        if confirmed >= written as u64 {
            break;
        }
        assert!(
            committed.elapsed() < Duration::from_secs(5),
            "confirmed_flush_lsn {confirmed} still behind the commit {written} after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let shutdown = tokio::task::spawn_blocking(move || {
        let took = pg.restart_fast().unwrap();
        (pg, took)
    });
    let (pg, took) = shutdown.await.unwrap();
    assert!(
        took < Duration::from_secs(10),
        "fast shutdown took {took:?}"
    );

    // Every event reaches the slow endpoint, each row's `created` before its `updated`.
    let deadline = Instant::now() + Duration::from_secs(90);
    let distinct = |r: &Receiver| {
        let mut first: HashMap<String, usize> = HashMap::new();
        for (i, received) in r.delivered().iter().enumerate() {
            first
                .entry(received.headers["webhook-id"].clone())
                .or_insert(i);
        }
        first.len()
    };
    while distinct(&slow) < 1000 {
        assert!(
            Instant::now() < deadline,
            "{} of 1,000 events reached the slow endpoint",
            distinct(&slow)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut order: HashMap<i64, Vec<String>> = HashMap::new();
    for received in slow.delivered() {
        let row = received.json["data"]["id"].as_i64().unwrap();
        let kind = received.json["type"].as_str().unwrap().to_owned();
        let seen = order.entry(row).or_default();
        if !seen.contains(&kind) {
            seen.push(kind);
        }
    }
    assert_eq!(order.len(), 500);
    for (row, kinds) in &order {
        assert_eq!(
            kinds,
            &["orders.created", "orders.updated"],
            "row {row} arrived out of order"
        );
    }
    daemon.stop().await;
    drop(pg);
}
