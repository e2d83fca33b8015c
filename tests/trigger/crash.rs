//! `kill -9` of `walhook run` in trigger mode mid-drain, then a restart: nothing lost, and
//! the outbox ends empty.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use super::outbox_rows;
use crate::support::TestDb;
use crate::support::daemon::spawn_walhook;

#[tokio::test]
async fn kill_9_mid_drain_then_restart_loses_nothing() {
    let db = TestDb::replica("trigger_crash").await;
    let receiver = db
        .watched_with_receiver(
            "UPDATE walhook.settings SET value = 'trigger' WHERE name = 'capture_mode';
             CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT walhook.watch('orders');",
            "{orders.created}",
        )
        .await;
    receiver.set_delay(Duration::from_millis(2));
    // Rows waiting before walhook starts, and more while it drains.
    db.exec("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 3000) g")
        .await;
    let mut first = spawn_walhook(&db, &[("WALHOOK_CAPTURE__MODE", "trigger")]);
    let start = Instant::now();
    while receiver.delivered().len() < 300 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "walhook delivered nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    db.exec("INSERT INTO orders SELECT g, 'new' FROM generate_series(3001, 5000) g")
        .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let before = receiver.delivered().len();
    assert!(before < 5000, "killed mid-drain ({before} delivered)");

    let mut second = spawn_walhook(&db, &[("WALHOOK_CAPTURE__MODE", "trigger")]);
    let start = Instant::now();
    loop {
        let ids: HashSet<i64> = receiver
            .delivered()
            .iter()
            .map(|r| r.json["data"]["id"].as_i64().unwrap())
            .collect();
        if ids.len() == 5000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of 5000 rows delivered",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox_rows(&db).await > 0 {
        assert!(Instant::now() < deadline, "the outbox was not emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM: clean exit.
    let pid = second.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(second.wait().unwrap().success());
}
