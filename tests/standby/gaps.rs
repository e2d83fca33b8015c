//! A slot invalidated while walhook is stopped (`max_slot_wal_keep_size`), or dropped by
//! hand: `walhook run` refuses to start with the last delivered position and commit time;
//! `walhook slot reset` records the gap in `walhook.gaps` and delivery resumes.
//!
//! `max_slot_wal_keep_size` is server-wide, so this test runs its own PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::json;
use walhook::localpg::LocalPostgres;

use super::{Instance, run_to_end};
use crate::support::receiver::Receiver;
use crate::support::{Server, TestDb};

/// The record's acknowledged position and commit time, once the commit time is `want`.
async fn wait_record(db: &TestDb, want: &str) -> String {
    let start = Instant::now();
    loop {
        let row = db
            .client
            .query_opt(
                "SELECT acknowledged_lsn::text, \
                   to_char(acknowledged_commit_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                 FROM walhook.capture_progress WHERE slot_name = $1",
                &[&db.name],
            )
            .await
            .unwrap();
        if let Some(row) = row
            && row.get::<_, Option<String>>(1).as_deref() == Some(want)
        {
            return row.get(0);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "record never reached commit time {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Delivered `data.id`s in arrival order.
fn ids(receiver: &Receiver) -> Vec<i64> {
    receiver
        .delivered()
        .iter()
        .map(|r| r.json["data"]["id"].as_i64().unwrap())
        .collect()
}

/// Writes WAL and checkpoints until the slot is invalidated.
async fn invalidate(db: &TestDb) {
    db.exec("CREATE TABLE filler (x text)").await;
    let start = Instant::now();
    loop {
        for _ in 0..3 {
            db.exec(
                "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000); \
                 SELECT pg_switch_wal()",
            )
            .await;
        }
        db.exec("CHECKPOINT").await;
        let status: Option<String> = db
            .client
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "slot not invalidated (wal_status {status:?})"
        );
    }
}

/// `walhook run` refuses to start; its error names the position, time and command.
async fn refuses(db: &TestDb, state: &str, lsn: &str, time: &str) {
    let (status, _, stderr) = run_to_end(db, &["run"]).await;
    assert!(!status.success(), "walhook run started:\n{stderr}");
    let message = format!(
        "replication slot \"{}\" {state}; walhook last delivered up to {lsn} (commit time {time}). \
         The changes after that position can no longer be streamed. Nothing is skipped silently: \
         to accept the gap and capture from now on, run `walhook slot reset` (it creates a fresh \
         slot and records the gap in walhook.gaps)",
        db.name
    );
    assert!(stderr.contains(&message), "{message}\nnot in:\n{stderr}");
    // Refusing creates nothing: the slot is as it was.
}

/// `walhook slot reset`: exit 0; the gap it recorded, as `walhook::capture::progress::gaps`
/// returns it.
async fn reset(db: &TestDb) -> walhook::capture::progress::Gap {
    let (status, stdout, stderr) = run_to_end(db, &["slot", "reset"]).await;
    assert!(status.success(), "slot reset failed:\n{stderr}");
    assert!(stdout.contains("gap"), "{stdout}");
    let client = walhook::database::Database::client(&db.database())
        .await
        .unwrap();
    let gaps = walhook::capture::progress::gaps(&client).await.unwrap();
    gaps.last().unwrap().clone()
}

#[tokio::test]
async fn a_lost_or_dropped_slot_is_refused_until_slot_reset_records_the_gap() {
    let pg = tokio::task::spawn_blocking(LocalPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let server = Server::of(&pg);
    let db = TestDb::on(&server, "lost_slot").await;
    db.exec("ALTER SYSTEM SET max_slot_wal_keep_size = '16MB'")
        .await;
    db.exec("SELECT pg_reload_conf()").await;
    let receiver = db
        .watched_with_receiver(
            "CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');",
            "{orders.created}",
        )
        .await;

    // A first run delivers row 1; its record follows.
    let mut daemon = Instance::spawn(&db);
    daemon.wait_role("streaming", Duration::from_secs(30)).await;
    db.exec("INSERT INTO orders VALUES (1)").await;
    let first = receiver.wait_delivered(1, Duration::from_secs(20)).await;
    let t1 = first[0].json["timestamp"].as_str().unwrap().to_owned();
    let lsn1 = wait_record(&db, &t1).await;
    daemon.stop().await;

    // Stopped: rows 2 and 3 are written, then enough WAL to invalidate the slot.
    db.exec("INSERT INTO orders VALUES (2); INSERT INTO orders VALUES (3)")
        .await;
    invalidate(&db).await;
    refuses(&db, "was invalidated (wal_status = lost)", &lsn1, &t1).await;
    refuses(&db, "was invalidated (wal_status = lost)", &lsn1, &t1).await;

    let gap = reset(&db).await;
    assert_eq!(
        (
            gap.slot.as_str(),
            gap.reason.as_str(),
            gap.from_lsn.to_string(),
            gap.from_time
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
            gap.tables.clone()
        ),
        (
            db.name.as_str(),
            "lost",
            lsn1.clone(),
            Some(t1.clone()),
            vec!["public.orders".to_owned()]
        )
    );
    assert!(gap.to_lsn > gap.from_lsn, "{gap:?}");
    let wal_status: Option<String> = db
        .client
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal_status.as_deref(), Some("reserved"));
    // A second reset has nothing to accept.
    let (status, _, stderr) = run_to_end(&db, &["slot", "reset"]).await;
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "walhook slot reset: replication slot \"{}\" is healthy (wal_status = reserved); there is no gap to accept",
            db.name
        )),
        "{stderr}"
    );

    // `walhook status` shows the recorded gap.
    let (_, stdout, stderr) = run_to_end(&db, &["status", "--json"]).await;
    let doc: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    let shown = &doc["gaps"][0];
    assert_eq!(
        (
            doc["gaps"].as_array().map(Vec::len),
            shown["reason"].as_str(),
            shown["slot"].as_str(),
            shown["from_lsn"].as_str(),
            shown["tables"].clone()
        ),
        (
            Some(1),
            Some("lost"),
            Some(db.name.as_str()),
            Some(lsn1.as_str()),
            json!(["public.orders"])
        ),
        "{doc:#}"
    );

    // Delivery resumes from the fresh slot: row 4 arrives, rows 2 and 3 are the gap.
    let mut daemon = Instance::spawn(&db);
    daemon.wait_role("streaming", Duration::from_secs(30)).await;
    db.exec("INSERT INTO orders VALUES (4)").await;
    let got = receiver.wait_delivered(2, Duration::from_secs(20)).await;
    assert_eq!(ids(&receiver), vec![1, 4]);
    let t4 = got[1].json["timestamp"].as_str().unwrap().to_owned();
    let lsn4 = wait_record(&db, &t4).await;
    daemon.stop().await;

    // Dropped by hand (as after a failover or a restore): the same refusal and recovery.
    db.exec(&format!("SELECT pg_drop_replication_slot('{}')", db.name))
        .await;
    db.exec("INSERT INTO orders VALUES (5)").await;
    refuses(&db, "has disappeared", &lsn4, &t4).await;
    let exists: bool = db
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "refusing must not create the slot");
    let gap = reset(&db).await;
    assert_eq!(
        (
            gap.reason.as_str(),
            gap.from_lsn.to_string(),
            gap.tables.clone()
        ),
        ("missing", lsn4.clone(), vec!["public.orders".to_owned()])
    );
    let count: i64 = db
        .client
        .query_one("SELECT count(*) FROM walhook.gaps", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    let mut daemon = Instance::spawn(&db);
    daemon.wait_role("streaming", Duration::from_secs(30)).await;
    db.exec("INSERT INTO orders VALUES (6)").await;
    receiver.wait_delivered(3, Duration::from_secs(20)).await;
    assert_eq!(ids(&receiver), vec![1, 4, 6]);
    assert_eq!(receiver.delivered()[2].json["data"], json!({"id": 6}));
    daemon.stop().await;
    drop(pg);
}
