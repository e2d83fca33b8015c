//! Payload control: columns a watch hides, row filters (publication row filters in
//! replication mode, the capture trigger in trigger mode), and subscription filters with
//! operators, `$changed` and `$previous`, checked against real events in both capture modes.

mod columns;
mod filters;
mod rows;

use std::time::{Duration, Instant};

use walhook::config::{CaptureMode, Config};
use walhook::subscriptions::store;

use crate::support::TestDb;
use crate::support::daemon::{FAST_RETRIES, config};
use crate::support::receiver::{Received, Receiver};

/// A migrated database for `mode`: on the logical server for replication, on the
/// `wal_level=replica` one for trigger mode (there switched to trigger capture first, so
/// `walhook.watch` installs the capture triggers and writes land in the outbox before the
/// daemon runs).
async fn database(test: &str, mode: CaptureMode) -> TestDb {
    let db = match mode {
        CaptureMode::Replication => TestDb::new(test).await,
        CaptureMode::Trigger => TestDb::replica(test).await,
    };
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    if mode == CaptureMode::Trigger {
        db.exec("SELECT walhook.set_capture_mode('trigger')").await;
    }
    db
}

/// The test daemon configuration in `mode`.
fn config_in(db: &TestDb, mode: CaptureMode) -> Config {
    let mut config = config(db, FAST_RETRIES, &[]);
    config.capture.mode = mode;
    config.capture.trigger_poll_ms = 200;
    config
}

/// The outbox rows' old and new images as JSON text, in id order.
async fn outbox(db: &TestDb) -> Vec<(String, Option<String>, Option<String>)> {
    db.client
        .query(
            "SELECT op, old_row::text, new_row::text FROM walhook.outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// (type, data, previous, changed) of each delivery, grouped by row (noun, then `data.id`)
/// in arrival order within a row: walhook orders the events of one row, not across rows.
fn shapes(received: &[Received]) -> Vec<String> {
    let mut received = received.to_vec();
    received.sort_by_key(|r| {
        let noun = r.json["type"].as_str().unwrap_or_default();
        let noun = noun.split('.').next().unwrap_or_default().to_owned();
        (noun, r.json["data"]["id"].as_i64())
    });
    received
        .iter()
        .map(|r| {
            let b = &r.json;
            serde_json::json!([b["type"], b["data"], b["previous"], b["changed"]]).to_string()
        })
        .collect()
}

/// Waits until `receiver` has a delivery for which `found` holds; panics after `within`.
async fn wait_for(
    receiver: &Receiver,
    within: Duration,
    found: impl Fn(&Received) -> bool,
) -> Received {
    let start = Instant::now();
    loop {
        if let Some(r) = receiver.delivered().into_iter().find(|r| found(r)) {
            return r;
        }
        assert!(
            start.elapsed() < within,
            "nothing matching within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
