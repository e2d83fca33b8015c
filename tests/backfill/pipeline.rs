//! The pipelined worker: many small chunks in flight still mirror the table exactly under
//! concurrent writes (both capture modes), and a new backfill starts on its
//! `walhook_backfill` notification rather than on the worker's fallback look (10 s), and
//! stored progress never runs ahead of what the endpoint has received.

use std::time::{Duration, Instant};

use walhook::config::CaptureMode;

use super::{
    Writer, backfilled_ids, config_in, finish_mirrored, items, progress, start_backfill, wait_state,
};
use crate::support::daemon::Daemon;

async fn small_chunks_mirror(test: &str, mode: CaptureMode) {
    const ROWS: i64 = 5_000;
    let (db, receiver, sub) = items(test, mode, ROWS).await;
    let mut config = config_in(&db, mode);
    config.backfill.chunk_size = 50;
    let daemon = Daemon::start(&db, config).await;
    let writer = Writer::start(&db, ROWS, 3_000);
    let id = start_backfill(&db, &sub).await;
    let (ops, _) = finish_mirrored(
        &db,
        &receiver,
        &id,
        writer,
        (Duration::from_secs(300), Duration::from_secs(120)),
    )
    .await;
    assert!(ops > 0, "the writer ran");
    daemon.stop().await;
}

#[tokio::test]
async fn replication_small_pipelined_chunks_mirror_the_table() {
    small_chunks_mirror(
        "backfill_small_chunks_replication",
        CaptureMode::Replication,
    )
    .await;
}

#[tokio::test]
async fn trigger_small_pipelined_chunks_mirror_the_table() {
    small_chunks_mirror("backfill_small_chunks_trigger", CaptureMode::Trigger).await;
}

/// A chunk's rows are released in frames that reuse an earlier transaction's end LSN: its
/// progress must wait until those rows are delivered (or queued), not until that LSN is
/// acknowledged, or a `kill -9` would skip the rows still in flight.
async fn progress_follows_deliveries(test: &str, mode: CaptureMode) {
    const ROWS: i64 = 160;
    let (db, receiver, sub) = items(test, mode, ROWS).await;
    receiver.set_delay(Duration::from_millis(250));
    let mut config = config_in(&db, mode);
    // Nothing waits long enough to be queued: done means delivered here.
    config.delivery.max_hold_ms = 600_000;
    let daemon = Daemon::start(&db, config).await;
    let id = start_backfill(&db, &sub).await;
    let start = Instant::now();
    loop {
        let (state, sent, _) = progress(&db, &id).await;
        // Read after the progress: every event counted in it has been received by now.
        let (_, received) = backfilled_ids(&receiver.requests(), &id);
        assert!(
            sent <= received as i64,
            "progress says {sent} rows sent while the endpoint has received {received}"
        );
        if state == "done" {
            assert_eq!(sent, ROWS);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not done ({sent})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await;
}

#[tokio::test]
async fn replication_progress_never_runs_ahead_of_deliveries() {
    progress_follows_deliveries("backfill_progress_replication", CaptureMode::Replication).await;
}

#[tokio::test]
async fn trigger_progress_never_runs_ahead_of_deliveries() {
    progress_follows_deliveries("backfill_progress_trigger", CaptureMode::Trigger).await;
}

#[tokio::test]
async fn a_new_backfill_starts_on_its_notification() {
    let (db, receiver, sub) = items("backfill_notified", CaptureMode::Replication, 10).await;
    let daemon = Daemon::start(&db, config_in(&db, CaptureMode::Replication)).await;
    // The worker has looked once and found nothing: a live event went through meanwhile.
    db.exec("INSERT INTO items VALUES (1000, 0, 'live')").await;
    receiver.wait_delivered(1, Duration::from_secs(30)).await;
    let first = start_backfill(&db, &sub).await;
    let started = Instant::now();
    wait_state(&db, &first, "done", Duration::from_secs(30)).await;
    // A second one, started while the worker waits idle again.
    let second = start_backfill(&db, &sub).await;
    let again = Instant::now();
    wait_state(&db, &second, "done", Duration::from_secs(30)).await;
    let took = again.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the second backfill took {took:?} (first {:?}): not woken by its notification",
        started.elapsed()
    );
    let (state, sent, _) = progress(&db, &second).await;
    assert_eq!((state.as_str(), sent), ("done", 11));
    daemon.stop().await;
}
