//! Per-row order across batches, with concurrent batches and failures in between.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{setup, subscribe};
use crate::support::daemon::{Daemon, FAST_RETRIES, config};
use crate::support::receiver::Receiver;

#[tokio::test]
async fn per_row_order_holds_across_batches() {
    const ROWS: i64 = 40;
    const UPDATES: i64 = 10;
    let db = setup("batch_order").await;
    let receiver = Receiver::start().await;
    // Slow enough that several batches are in flight at once; some fail and are retried.
    receiver.set_delay(Duration::from_millis(5));
    receiver.script(&[
        (500, Duration::ZERO),
        (200, Duration::ZERO),
        (500, Duration::ZERO),
        (200, Duration::ZERO),
        (503, Duration::ZERO),
    ]);
    subscribe(&db, &receiver.url, "batch_max = 16, batch_window_ms = 10").await;
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &[])).await;
    db.exec(&format!(
        "INSERT INTO orders (id) SELECT g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    for _ in 0..UPDATES {
        db.exec("UPDATE orders SET n = n + 1").await;
    }
    let total = (ROWS * (UPDATES + 1)) as usize;
    let start = std::time::Instant::now();
    let delivered = loop {
        let delivered = receiver.delivered();
        let events: usize = delivered
            .iter()
            .map(|r| r.json.as_array().map_or(0, Vec::len))
            .sum();
        if events >= total {
            break delivered;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{events} of {total} events delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every request is an array; in arrival order, each row's values count up 0..=UPDATES,
    // each exactly once.
    let mut per_row: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for r in &delivered {
        for event in r.json.as_array().expect("an array body") {
            per_row
                .entry(event["data"]["id"].as_i64().unwrap())
                .or_default()
                .push(event["data"]["n"].as_i64().unwrap());
        }
    }
    let expected: Vec<i64> = (0..=UPDATES).collect();
    assert_eq!(per_row.len(), ROWS as usize);
    for (row, values) in &per_row {
        assert_eq!(values, &expected, "row {row}");
    }
    assert!(
        delivered
            .iter()
            .any(|r| r.json.as_array().unwrap().len() > 1),
        "events were batched"
    );
    assert_eq!(
        receiver
            .requests()
            .iter()
            .filter(|r| r.status >= 500)
            .count(),
        3
    );
    daemon.stop().await;
}
