//! Trigger capture (outbox + LISTEN/NOTIFY) on a `wal_level=replica` server, its
//! equivalence with replication mode, and switches between the two.

mod concurrency;
mod crash;
mod equivalence;
mod switch;

use walhook::config::{CaptureMode, Config};

use crate::support::TestDb;
use crate::support::daemon::{FAST_RETRIES, config};

/// The test daemon configuration in `mode`.
fn config_in(db: &TestDb, mode: CaptureMode) -> Config {
    let mut config = config(db, FAST_RETRIES, &[]);
    config.capture.mode = mode;
    config.capture.trigger_poll_ms = 200;
    config
}

/// Rows left in the outbox.
async fn outbox_rows(db: &TestDb) -> i64 {
    db.client
        .query_one("SELECT count(*) FROM walhook.outbox", &[])
        .await
        .unwrap()
        .get(0)
}
