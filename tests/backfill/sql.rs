//! `walhook.backfill` and `walhook.cancel_backfill` from SQL: clear refusals (unwatched
//! table, no primary key, unknown subscription, bad filter), a backfill to every matching
//! subscription with a filter (the envelope exactly), a partitioned parent read through,
//! and cancel stopping a running one.

use std::time::{Duration, Instant};

use walhook::config::CaptureMode;
use walhook::subscriptions::store;

use super::{config_in, items, progress, start_backfill, wait_state};
use crate::support::TestDb;
use crate::support::daemon::Daemon;
use crate::support::receiver::Receiver;

/// The error message of `sql`.
async fn refusal(db: &TestDb, sql: &str) -> String {
    let e = db.client.batch_execute(sql).await.unwrap_err();
    e.as_db_error().unwrap().message().to_owned()
}

#[tokio::test]
async fn backfill_refuses_what_it_cannot_do_with_clear_messages() {
    let db = TestDb::new("backfill_refusals").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, status text);
         CREATE TABLE notes (body text);
         CREATE TABLE other (id int PRIMARY KEY);
         SELECT walhook.watch('orders'); SELECT walhook.watch('notes', full_identity => true);",
    )
    .await;
    assert_eq!(
        refusal(&db, "SELECT walhook.backfill('other')").await,
        "walhook.backfill: public.other is not watched"
    );
    assert_eq!(
        refusal(&db, "SELECT walhook.backfill('notes')").await,
        "walhook.backfill: public.notes has no primary key; backfills read a table in primary-key order"
    );
    assert_eq!(
        refusal(
            &db,
            "SELECT walhook.backfill('orders', '00000000-0000-0000-0000-000000000001')"
        )
        .await,
        "walhook.backfill: no subscription 00000000-0000-0000-0000-000000000001"
    );
    assert_eq!(
        refusal(
            &db,
            "SELECT walhook.backfill('orders', filter => '{\"status\": {\"near\": 1}}')"
        )
        .await,
        "walhook.backfill: filter: \"status\": unknown operator \"near\" (use eq, ne, gt, gte, lt, lte, in, nin, null or prefix)"
    );
    assert_eq!(
        refusal(
            &db,
            "SELECT walhook.backfill('orders', filter => '{\"$changed\": [\"status\"]}')"
        )
        .await,
        "walhook.backfill: filter: backfilled rows have no previous image: \"$changed\" and \"$previous\" do not apply"
    );
    let sub: String = db
        .client
        .query_one(
            "SELECT (walhook.subscribe('http://127.0.0.1:9/x', '{notes.*}')).id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        refusal(&db, &format!("SELECT walhook.backfill('orders', '{sub}')")).await,
        format!("walhook.backfill: subscription {sub} takes no event of public.orders (orders.*)")
    );
    // Nothing was recorded; cancelling an unknown one says false.
    let count: i64 = db
        .client
        .query_one("SELECT count(*) FROM walhook.backfills", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    let cancelled: bool = db
        .client
        .query_one(
            "SELECT walhook.cancel_backfill('00000000-0000-0000-0000-000000000001')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!cancelled);
}

#[tokio::test]
async fn backfill_goes_to_every_matching_subscription_filtered_and_reads_partitions() {
    let db = TestDb::new("backfill_every").await;
    let first = db
        .watched_with_receiver(
            "CREATE TABLE events (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
             CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
             CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
             INSERT INTO events SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END FROM generate_series(1, 40) g;
             SELECT walhook.watch('events');",
            "{events.created}",
        )
        .await;
    let second = Receiver::start().await;
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{events.*}}', context => 'ctx')",
        second.url
    ))
    .await;
    let daemon = Daemon::start(&db, config_in(&db, CaptureMode::Replication)).await;
    let id: String = db
        .client
        .query_one(
            "SELECT walhook.backfill('events', filter => '{\"id\": {\"lte\": 10}}')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for receiver in [&first, &second] {
        let got = receiver.wait_delivered(10, Duration::from_secs(30)).await;
        let mut ids: Vec<i64> = got
            .iter()
            .map(|r| r.json["data"]["id"].as_i64().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    }
    wait_state(&db, &id, "done", Duration::from_secs(30)).await;
    let row = second
        .delivered()
        .into_iter()
        .find(|r| r.json["data"]["id"] == 4)
        .unwrap();
    let event = &row.json;
    let lsn = event["source"]["lsn"].as_str().unwrap();
    let xid = event["source"]["xid"].as_u64().unwrap();
    assert_eq!(
        *event,
        serde_json::json!({
            "id": event["id"],
            "type": "events.backfilled",
            "timestamp": event["timestamp"],
            "data": {"id": 4, "region": "eu"},
            "previous": null,
            "changed": null,
            "source": {"schema": "public", "table": "events", "lsn": lsn, "xid": xid,
                       "mode": "replication", "backfill": id},
            "context": "ctx",
        })
    );
    assert!(event["id"].as_str().unwrap().starts_with("evt_b"));
    assert_eq!(row.headers["webhook-id"], event["id"].as_str().unwrap());
    // The same row's event id is the same for both subscriptions.
    let same = first
        .delivered()
        .into_iter()
        .find(|r| r.json["data"]["id"] == 4)
        .unwrap();
    assert_eq!(same.json["id"], event["id"]);
    let (state, sent, total) = progress(&db, &id).await;
    assert_eq!((state.as_str(), sent, total), ("done", 10, 40));
    daemon.stop().await;
}

#[tokio::test]
async fn cancel_stops_a_running_backfill() {
    const ROWS: i64 = 20_000;
    let (db, receiver, sub) = items("backfill_cancel", CaptureMode::Replication, ROWS).await;
    receiver.set_delay(Duration::from_millis(1));
    let mut config = config_in(&db, CaptureMode::Replication);
    config.backfill.chunk_size = 200;
    let daemon = Daemon::start(&db, config).await;
    let id = start_backfill(&db, &sub).await;
    let start = Instant::now();
    loop {
        let (state, sent, _) = progress(&db, &id).await;
        assert_eq!(state, "running");
        if sent >= 400 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled: bool = db
        .client
        .query_one("SELECT walhook.cancel_backfill($1::text::uuid)", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(cancelled);
    let (state, _, _) = progress(&db, &id).await;
    assert_eq!(state, "cancelled");
    // Deliveries stop: at most the chunks in flight follow (4 chunks of 200 rows).
    let at_cancel = receiver.delivered().len();
    let (_, sent_at_cancel, _) = progress(&db, &id).await;
    let mut last = at_cancel;
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_secs(2) {
        let now = receiver.delivered().len();
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last <= at_cancel + 4 * 200,
        "{at_cancel} at cancel, {last} after"
    );
    assert!(last < ROWS as usize);
    let (state, sent, _) = progress(&db, &id).await;
    assert_eq!(state, "cancelled");
    assert_eq!(
        sent, sent_at_cancel,
        "no progress is stored after the cancel"
    );
    assert!(sent < ROWS);
    daemon.stop().await;
}
