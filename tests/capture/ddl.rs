//! DDL on watched tables while walhook runs, in both capture modes: DROP TABLE removes the
//! watch and leaves the others delivering (also after a restart); RENAME and SET SCHEMA
//! keep the watch under its noun, with `source` naming the table as it is now.

use std::time::{Duration, Instant};

use serde_json::json;
use walhook::config::CaptureMode;

use crate::support::TestDb;
use crate::support::daemon::{Daemon, FAST_RETRIES, config};
use crate::support::receiver::{Received, Receiver};

async fn db_for(test: &str, mode: CaptureMode) -> TestDb {
    match mode {
        CaptureMode::Replication => TestDb::new(test).await,
        CaptureMode::Trigger => TestDb::replica(test).await,
    }
}

async fn start(db: &TestDb, mode: CaptureMode) -> Daemon {
    let mut config = config(db, FAST_RETRIES, &[]);
    config.capture.mode = mode;
    config.capture.trigger_poll_ms = 200;
    Daemon::start(db, config).await
}

/// `walhook.watched_tables` as `schema.table=noun`, sorted.
async fn watches(db: &TestDb) -> Vec<String> {
    db.client
        .query(
            "SELECT schema_name || '.' || table_name || '=' || noun FROM walhook.watched_tables ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until the watches are `want` (the daemon reconciles about once a second).
async fn until_watches(db: &TestDb, want: &[&str]) {
    let start = Instant::now();
    while watches(db).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "watches {:?}, want {want:?}",
            watches(db).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `[type, data.id, source.schema, source.table]` of each delivery.
fn seen(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| {
            let b = &r.json;
            json!([
                b["type"],
                b["data"]["id"],
                b["source"]["schema"],
                b["source"]["table"]
            ])
            .to_string()
        })
        .collect()
}

fn e(ty: &str, id: i64, schema: &str, table: &str) -> String {
    json!([ty, id, schema, table]).to_string()
}

async fn drop_table_while_running(mode: CaptureMode) {
    let db = db_for(&format!("ddl_drop_{mode:?}"), mode).await;
    let receiver: Receiver = db
        .watched_with_receiver(
            "CREATE TABLE doomed (id int PRIMARY KEY); CREATE TABLE kept (id int PRIMARY KEY);
             SELECT walhook.watch('doomed'); SELECT walhook.watch('kept');",
            "{*}",
        )
        .await;
    let daemon = start(&db, mode).await;
    db.exec("INSERT INTO doomed VALUES (1); INSERT INTO kept VALUES (1)")
        .await;
    receiver.wait_delivered(2, Duration::from_secs(20)).await;
    db.exec("INSERT INTO doomed VALUES (2); DROP TABLE doomed")
        .await;
    until_watches(&db, &["public.kept=kept"]).await;
    db.exec("INSERT INTO kept VALUES (2)").await;
    receiver.wait_delivered(4, Duration::from_secs(20)).await;
    daemon.stop().await;
    // A restart after the drop works, and delivers.
    let daemon = start(&db, mode).await;
    db.exec("INSERT INTO kept VALUES (3)").await;
    let got = receiver.wait_delivered(5, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.stop().await;
    assert_eq!(receiver.delivered().len(), 5, "no extra deliveries");
    let mut got = seen(&got);
    got.sort();
    assert_eq!(
        got,
        vec![
            e("doomed.created", 1, "public", "doomed"),
            e("doomed.created", 2, "public", "doomed"),
            e("kept.created", 1, "public", "kept"),
            e("kept.created", 2, "public", "kept"),
            e("kept.created", 3, "public", "kept"),
        ]
    );
}

#[tokio::test]
async fn dropping_a_watched_table_removes_its_watch_in_replication_mode() {
    drop_table_while_running(CaptureMode::Replication).await;
}

#[tokio::test]
async fn dropping_a_watched_table_removes_its_watch_in_trigger_mode() {
    drop_table_while_running(CaptureMode::Trigger).await;
}

async fn rename_while_running(mode: CaptureMode) {
    let db = db_for(&format!("ddl_rename_{mode:?}"), mode).await;
    let receiver: Receiver = db
        .watched_with_receiver(
            "CREATE TABLE orders (id int PRIMARY KEY, v int); SELECT walhook.watch('orders');
             CREATE SCHEMA archive;",
            "{orders.*}",
        )
        .await;
    let daemon = start(&db, mode).await;
    db.exec("INSERT INTO orders VALUES (1, 0)").await;
    receiver.wait_delivered(1, Duration::from_secs(20)).await;
    // Changes right after the rename are not lost, before the watch's names catch up.
    db.exec("ALTER TABLE orders RENAME TO purchases").await;
    db.exec("INSERT INTO purchases VALUES (2, 0)").await;
    db.exec("UPDATE purchases SET v = 1 WHERE id = 1").await;
    until_watches(&db, &["public.purchases=orders"]).await;
    db.exec("ALTER TABLE purchases SET SCHEMA archive").await;
    db.exec("DELETE FROM archive.purchases WHERE id = 2").await;
    until_watches(&db, &["archive.purchases=orders"]).await;
    let got = receiver.wait_delivered(4, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.delivered().len(), 4, "no extra deliveries");
    daemon.stop().await;
    // Per row in order: row 1 then row 2.
    let got = seen(&got);
    let row = |id: &str| -> Vec<String> {
        got.iter()
            .filter(|s| s.contains(&format!(",{id},")))
            .cloned()
            .collect()
    };
    assert_eq!(
        row("1"),
        vec![
            e("orders.created", 1, "public", "orders"),
            e("orders.updated", 1, "public", "purchases"),
        ]
    );
    assert_eq!(
        row("2"),
        vec![
            e("orders.created", 2, "public", "purchases"),
            e("orders.deleted", 2, "archive", "purchases"),
        ]
    );
    // Restart after the moves: still watched as `orders`.
    let daemon = start(&db, mode).await;
    db.exec("INSERT INTO archive.purchases VALUES (3, 0)").await;
    let got = receiver.wait_delivered(5, Duration::from_secs(20)).await;
    daemon.stop().await;
    assert_eq!(
        seen(&got[4..]),
        vec![e("orders.created", 3, "archive", "purchases")]
    );
}

#[tokio::test]
async fn a_renamed_table_stays_watched_under_its_noun_in_replication_mode() {
    rename_while_running(CaptureMode::Replication).await;
}

#[tokio::test]
async fn a_renamed_table_stays_watched_under_its_noun_in_trigger_mode() {
    rename_while_running(CaptureMode::Trigger).await;
}
