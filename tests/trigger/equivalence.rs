//! The same workload gives the same events in trigger and in replication mode.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use walhook::config::CaptureMode;
use walhook::subscriptions::store;

use super::{config_in, outbox_rows};
use crate::support::TestDb;
use crate::support::daemon::Daemon;
use crate::support::receiver::{Received, Receiver};

const SCHEMA: &str = "
CREATE TABLE items (
    id int PRIMARY KEY, name text, price numeric(10,2), tags text[], meta jsonb,
    seen timestamptz, ok boolean, ratio float8, span interval, raw bytea,
    doubled numeric GENERATED ALWAYS AS (price * 2) STORED
);
SELECT walhook.watch('items');";

const WORKLOAD: &[&str] = &[
    "INSERT INTO items (id, name, price, tags, meta, seen, ok, ratio, span, raw) VALUES
       (1, 'a', 1.50, '{x,y}', '{\"k\": [1, 2.50], \"s\": \"é\"}', '2026-01-02 03:04:05.123456+02',
        true, 0.1, '1 day 02:03:04', '\\x00ff')",
    "INSERT INTO items (id, name, price) VALUES (2, 'b', 2), (3, 'c', 3)",
    "UPDATE items SET price = 9.99, tags = '{}' WHERE id = 1",
    "BEGIN; UPDATE items SET name = 'b2' WHERE id = 2; DELETE FROM items WHERE id = 3;
     INSERT INTO items (id, name) VALUES (4, 'd'); UPDATE items SET ok = false WHERE id = 4; COMMIT",
    "BEGIN; INSERT INTO items (id, name) VALUES (5, 'rolled back'); ROLLBACK",
    "UPDATE items SET name = name WHERE id = 2",
    "DELETE FROM items WHERE id = 1",
];
const EVENTS: usize = 10;

/// Runs the workload in `mode`; the requests received.
async fn run(db: TestDb, mode: CaptureMode) -> Vec<Received> {
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    db.exec(SCHEMA).await;
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{items.*}}', context => 'c')",
        receiver.url
    ))
    .await;
    let daemon = Daemon::start(&db, config_in(&db, mode)).await;
    for sql in WORKLOAD {
        db.exec(sql).await;
    }
    let got = receiver
        .wait_delivered(EVENTS, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.delivered().len(), EVENTS, "no extra deliveries");
    daemon.stop().await;
    if mode == CaptureMode::Trigger {
        assert_eq!(outbox_rows(&db).await, 0, "the outbox is emptied");
    }
    got
}

/// Row id → its events' (type, data, previous, changed), in arrival order, as JSON text
/// (so the order of keys counts too).
fn per_row(received: &[Received]) -> BTreeMap<i64, Vec<String>> {
    let mut rows: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in received {
        let b = &r.json;
        let id = b["data"]["id"].as_i64().unwrap();
        let seen = json!([
            b["type"],
            b["data"],
            b["previous"],
            b["changed"],
            b["context"]
        ]);
        rows.entry(id).or_default().push(seen.to_string());
    }
    rows
}

#[tokio::test]
async fn trigger_and_replication_modes_produce_the_same_events() {
    let trigger = run(TestDb::replica("same_trigger").await, CaptureMode::Trigger).await;
    let replication = run(
        TestDb::new("same_replication").await,
        CaptureMode::Replication,
    )
    .await;
    assert_eq!(per_row(&trigger), per_row(&replication));

    // Spot-check the values themselves, and what differs by design.
    let first = &trigger[0].json;
    assert_eq!(
        first["data"],
        serde_json::from_str::<Value>(
            r#"{"id": 1, "name": "a", "price": 1.50, "tags": ["x", "y"], "meta": {"k": [1, 2.50], "s": "é"},
                "seen": "2026-01-02T01:04:05.123456+00:00", "ok": true, "ratio": 0.1,
                "span": "1 day 02:03:04", "raw": "\\x00ff"}"#
        )
        .unwrap()
    );
    for r in &trigger {
        let id = r.json["id"].as_str().unwrap();
        assert!(id.starts_with("evt_t") && id.len() == 5 + 16, "{id}");
        assert_eq!(r.headers["webhook-id"], id);
        let source = &r.json["source"];
        assert_eq!(source["mode"], "trigger");
        assert_eq!(source["lsn"], Value::Null);
        assert_eq!(
            (source["schema"].as_str(), source["table"].as_str()),
            (Some("public"), Some("items"))
        );
        assert!(source["xid"].as_u64().is_some());
    }
    assert_eq!(replication[0].json["source"]["mode"], "replication");
}
