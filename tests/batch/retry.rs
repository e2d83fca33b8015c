//! A failed batch is queued as its members with the batch's id and sent again as the same
//! batch: same `webhook-id`, same members, same bytes.

use std::time::{Duration, Instant};

use super::{expected_batch_id, member_ids, setup, subscribe};
use crate::support::daemon::{Daemon, FAST_RETRIES, config};
use crate::support::receiver::Receiver;

#[tokio::test]
async fn a_failed_batch_is_retried_with_the_same_id_and_members() {
    let db = setup("batch_retry").await;
    let receiver = Receiver::start().await;
    receiver.script(&[(500, Duration::ZERO), (503, Duration::ZERO)]);
    subscribe(&db, &receiver.url, "batch_max = 10, batch_window_ms = 300").await;
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &[])).await;
    db.exec("INSERT INTO orders (id) SELECT g FROM generate_series(1, 4) g")
        .await;
    receiver.wait_delivered(1, Duration::from_secs(20)).await;
    let all = receiver.requests();
    assert_eq!(
        all.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 503, 200]
    );
    let ids = member_ids(&all[0].json);
    assert_eq!(ids.len(), 4);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let batch = expected_batch_id(&ids);
    for r in &all {
        assert_eq!(r.headers["webhook-id"], batch);
        assert_eq!(r.body, all[0].body, "the same bytes on every attempt");
    }
    // Settled: the queue is empty once the 2xx was read.
    let start = Instant::now();
    loop {
        let left: i64 = db
            .client
            .query_one("SELECT count(*) FROM walhook.delivery_queue", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{left} rows left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_queued_batch_keeps_its_members_across_a_restart() {
    let db = setup("batch_restart").await;
    let receiver = Receiver::start().await;
    // Failed once: queued with a long delay, so it is still queued when the daemon stops.
    receiver.script(&[(500, Duration::ZERO)]);
    subscribe(&db, &receiver.url, "batch_max = 10, batch_window_ms = 300").await;
    let daemon = Daemon::start(
        &db,
        config(
            &db,
            "allow_private_targets = true\nretry_schedule_ms = [3000]\ntimeout_ms = 2000",
            &[],
        ),
    )
    .await;
    db.exec("INSERT INTO orders (id) SELECT g FROM generate_series(1, 3) g")
        .await;
    let start = Instant::now();
    let queued: Vec<(String, Option<String>)> = loop {
        let rows = db
            .client
            .query(
                "SELECT event_id, batch_id FROM walhook.delivery_queue ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        if rows.len() == 3 {
            break rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "not queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    daemon.stop().await;
    let first = receiver.requests();
    assert_eq!(first.len(), 1);
    let ids = member_ids(&first[0].json);
    let batch = first[0].headers["webhook-id"].clone();
    assert_eq!(
        queued,
        ids.iter()
            .map(|id| (id.clone(), Some(batch.clone())))
            .collect::<Vec<_>>()
    );
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &[])).await;
    let got = receiver.wait_delivered(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].headers["webhook-id"], batch);
    assert_eq!(got[0].body, first[0].body);
    daemon.stop().await;
}

#[tokio::test]
async fn a_batch_in_flight_past_max_hold_is_queued_then_settled_by_its_answer() {
    let db = setup("batch_held").await;
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_secs(2));
    subscribe(&db, &receiver.url, "batch_max = 10, batch_window_ms = 100").await;
    let delivery = "allow_private_targets = true\nretry_schedule_ms = [200]\ntimeout_ms = 5000\nmax_hold_ms = 300";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    db.exec("INSERT INTO orders (id) SELECT g FROM generate_series(1, 3) g")
        .await;
    // Held past 300 ms: the members are queued with the batch's id while it is in flight.
    let start = Instant::now();
    let queued: Vec<(String, Option<String>)> = loop {
        let rows = db
            .client
            .query(
                "SELECT event_id, batch_id FROM walhook.delivery_queue ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        if rows.len() == 3 {
            break rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let sent = receiver.requests();
    assert_eq!(sent.len(), 1);
    let ids = member_ids(&sent[0].json);
    let batch = sent[0].headers["webhook-id"].clone();
    assert_eq!(
        queued,
        ids.iter()
            .map(|id| (id.clone(), Some(batch.clone())))
            .collect::<Vec<_>>()
    );
    // The 2xx, when it comes, deletes them: nothing is sent again.
    loop {
        let left: i64 = db
            .client
            .query_one("SELECT count(*) FROM walhook.delivery_queue", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{left} rows left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.requests().len(), 1);
    daemon.stop().await;
}
