//! `kill -9` of `walhook run` in the middle of a 10,000-row burst loses nothing; SIGTERM
//! exits 0.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::TestDb;
use crate::support::daemon::spawn_walhook;

#[tokio::test]
async fn kill_9_mid_burst_then_restart_delivers_every_event() {
    let db = TestDb::new("crash").await;
    let receiver = db
        .watched_with_receiver(
            "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT walhook.watch('orders');",
            "{orders.created}",
        )
        .await;
    let mut first = spawn_walhook(&db, &[]);
    let start = Instant::now();
    loop {
        let row = db
            .client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.name],
            )
            .await
            .unwrap();
        if row.is_some_and(|r| r.get::<_, bool>(0)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "walhook did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The burst: 100 transactions of 100 rows, written while walhook delivers.
    let writer = db.insert_orders(100, 100);
    receiver.wait_distinct(1500, Duration::from_secs(60)).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before_restart = receiver.delivered().len();
    writer.await.unwrap();

    let mut second = spawn_walhook(&db, &[]);
    receiver
        .wait_distinct(10_000, Duration::from_secs(90))
        .await;
    let total = receiver.delivered().len();
    println!(
        "kill -9 after {before_restart} deliveries; {total} deliveries in all, {} duplicates",
        total - 10_000
    );
    // Every row's event arrived: the ids are those of the 10,000 inserted rows.
    let rows: HashSet<i64> = receiver
        .delivered()
        .iter()
        .map(|r| r.json["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(rows, (1..=10_000).collect());
    // Let the redeliveries of the unacknowledged tail finish (else SIGTERM rightly queues
    // them), then SIGTERM: a clean exit with nothing left queued.
    let mut seen = receiver.requests().len();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = receiver.requests().len();
        if now == seen {
            break;
        }
        seen = now;
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(second.id().to_string())
        .status()
        .unwrap();
    let status = second.wait().unwrap();
    assert!(
        status.success(),
        "walhook run exited with {status} on SIGTERM"
    );
    let queued: i64 = db
        .client
        .query_one("SELECT count(*) FROM walhook.delivery_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0);
}
