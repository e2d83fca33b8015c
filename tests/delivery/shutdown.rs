//! A clean restart delivers nothing twice: SIGTERM in the middle of a burst of 500-row
//! transactions stops at a transaction boundary, acknowledges it, and the next run sends
//! only what the first did not (both capture modes).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::TestDb;
use crate::support::daemon::spawn_walhook;

const ROWS: i64 = 5000;

async fn sigterm_mid_burst(db: TestDb, mode: &str, setup: &str) {
    let receiver = db
        .watched_with_receiver(
            &format!(
                "{setup} CREATE TABLE orders (id int PRIMARY KEY, status text); \
                 SELECT walhook.watch('orders');"
            ),
            "{orders.created}",
        )
        .await;
    receiver.set_delay(Duration::from_millis(1));
    let env = [("WALHOOK_CAPTURE__MODE", mode)];
    let mut first = spawn_walhook(&db, &env);
    if mode == "replication" {
        // Changes before the slot exists are not captured: start writing once it streams.
        let start = Instant::now();
        while !db.slot_active().await {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "walhook did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let writer = db.insert_orders(ROWS / 500, 500);
    receiver.wait_delivered(1200, Duration::from_secs(60)).await;
    let pid = first.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // Waited for without blocking the runtime: the receiver must keep answering meanwhile.
    let status = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "walhook run exited with {status} on SIGTERM"
    );
    let before = receiver.delivered().len();
    assert!(
        before < ROWS as usize,
        "stopped mid-burst ({before} delivered)"
    );
    writer.await.unwrap();

    let mut second = spawn_walhook(&db, &env);
    receiver
        .wait_delivered(ROWS as usize, Duration::from_secs(90))
        .await;
    // Nothing more arrives: no event was sent twice.
    let mut seen = receiver.requests().len();
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = receiver.requests().len();
        if now == seen {
            break;
        }
        seen = now;
    }
    let mut per_row: HashMap<i64, usize> = HashMap::new();
    for received in receiver.delivered() {
        *per_row
            .entry(received.json["data"]["id"].as_i64().unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_row.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(per_row.len(), ROWS as usize, "every row arrived");
    assert!(
        twice.is_empty(),
        "{} rows arrived more than once after a clean restart (stopped after {before})",
        twice.len()
    );
    let pid = second.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(second.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let queued: i64 = db
            .client
            .query_one("SELECT count(*) FROM walhook.delivery_queue", &[])
            .await
            .unwrap()
            .get(0);
        if queued == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("events left in the queue");
}

#[tokio::test]
async fn sigterm_mid_burst_then_restart_sends_nothing_twice() {
    let db = TestDb::new("sigterm").await;
    sigterm_mid_burst(db, "replication", "").await;
}

#[tokio::test]
async fn sigterm_mid_burst_then_restart_sends_nothing_twice_in_trigger_mode() {
    let db = TestDb::replica("sigterm_trigger").await;
    sigterm_mid_burst(
        db,
        "trigger",
        "UPDATE walhook.settings SET value = 'trigger' WHERE name = 'capture_mode';",
    )
    .await;
}
