//! 8 concurrent writers, long and short transactions, some rolled back: every committed
//! change is delivered exactly once, in per-row order; nothing rolled back is delivered.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use walhook::config::CaptureMode;

use super::{config_in, outbox_rows};
use crate::support::daemon::Daemon;
use crate::support::{TestDb, connect};

const ROWS: i64 = 20;
const WRITERS: i64 = 8;
const TRANSACTIONS: i64 = 25;

#[tokio::test]
async fn concurrent_writers_are_delivered_exactly_once_in_row_order() {
    let db = TestDb::replica("trigger_concurrency").await;
    let receiver = db
        .watched_with_receiver(
            "CREATE TABLE counters (id int PRIMARY KEY, version int NOT NULL, note text);
             SELECT walhook.watch('counters');",
            "{counters.*}",
        )
        .await;
    let daemon = Daemon::start(&db, config_in(&db, CaptureMode::Trigger)).await;
    db.exec(&format!(
        "INSERT INTO counters SELECT g, 0, 'new' FROM generate_series(0, {}) g",
        ROWS - 1
    ))
    .await;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = connect(&db.url).await;
        writers.push(tokio::spawn(async move {
            let mut committed = 0;
            for t in 0..TRANSACTIONS {
                // Deterministic spread: 1-3 rows per transaction, in id order (no deadlocks);
                // every third transaction of odd writers is long, every fifth rolls back.
                let mut ids: Vec<i64> = (0..1 + (w + t) % 3).map(|i| (w * 7 + t * 3 + i * 5) % ROWS).collect();
                ids.sort();
                ids.dedup();
                let rollback = t % 5 == 4;
                let note = if rollback { "rolled back" } else { "kept" };
                let mut sql = String::from("BEGIN;");
                for id in &ids {
                    sql.push_str(&format!(
                        "UPDATE counters SET version = version + 1, note = '{note} w{w}' WHERE id = {id};"
                    ));
                    if w % 2 == 1 && t % 3 == 0 {
                        sql.push_str("SELECT pg_sleep(0.05);");
                    }
                }
                sql.push_str(if rollback { "ROLLBACK;" } else { "COMMIT;" });
                client.batch_execute(&sql).await.unwrap();
                if !rollback {
                    committed += ids.len();
                }
            }
            committed
        }));
    }
    let mut updates = 0;
    for writer in writers {
        updates += writer.await.unwrap();
    }
    let expected = ROWS as usize + updates;
    let got = receiver
        .wait_delivered(expected, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = receiver.delivered();
    assert_eq!(got_all.len(), expected, "exactly once: no extra deliveries");
    let ids: HashSet<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    assert_eq!(ids.len(), expected, "distinct event ids");

    let mut versions: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for r in &got_all {
        let data = &r.json["data"];
        assert!(
            !data["note"].as_str().unwrap().starts_with("rolled back"),
            "{data}"
        );
        versions
            .entry(data["id"].as_i64().unwrap())
            .or_default()
            .push(data["version"].as_i64().unwrap());
    }
    let finals: Vec<(i32, i32)> = db
        .client
        .query("SELECT id, version FROM counters ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (id, version) in finals {
        let want: Vec<i64> = (0..=i64::from(version)).collect();
        assert_eq!(
            versions[&i64::from(id)],
            want,
            "row {id}: every version once, in order"
        );
    }
    daemon.stop().await;
    assert_eq!(outbox_rows(&db).await, 0);
}
