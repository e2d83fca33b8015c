//! The mirror check: a 100,000-row table backfilled to one subscription while a writer
//! updates, deletes and inserts random rows; the subscriber's events applied in arrival
//! order rebuild exactly the final table, and no row's backfill image arrives after a newer
//! live event of that row. In both capture modes, and across a `kill -9` and restart.

use std::time::{Duration, Instant};

use walhook::config::CaptureMode;

use super::{
    Writer, backfilled_ids, config_in, finish_mirrored, items, progress, start_backfill,
    wait_mirror, wait_state,
};
use crate::support::daemon::{Daemon, spawn_walhook};

async fn mirror_while_writing(test: &str, mode: CaptureMode) {
    const ROWS: i64 = 100_000;
    let (db, receiver, sub) = items(test, mode, ROWS).await;
    let daemon = Daemon::start(&db, config_in(&db, mode)).await;
    let writer = Writer::start(&db, ROWS, 20_000);
    let id = start_backfill(&db, &sub).await;
    // Progress while it runs: some rows sent, not all, state running.
    let start = Instant::now();
    loop {
        let (state, sent, total) = progress(&db, &id).await;
        // Counted, or from the statistics when autovacuum analyzed the table first.
        assert!((total - ROWS).abs() <= ROWS / 20, "estimated total {total}");
        if state == "running" && sent > 0 {
            assert!(sent < ROWS, "{sent}");
            break;
        }
        assert_eq!(state, "running", "finished before progress was seen");
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ops, backfilled) = finish_mirrored(
        &db,
        &receiver,
        &id,
        writer,
        (Duration::from_secs(600), Duration::from_secs(300)),
    )
    .await;
    assert!(ops > 100, "the writer ran throughout ({ops} changes)");
    assert!(
        backfilled > (ROWS as usize) * 9 / 10 && backfilled <= (ROWS as usize) + ops as usize,
        "{backfilled} rows backfilled"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn replication_backfill_mirrors_the_table_under_concurrent_writes() {
    mirror_while_writing("backfill_mirror_replication", CaptureMode::Replication).await;
}

#[tokio::test]
async fn trigger_backfill_mirrors_the_table_under_concurrent_writes() {
    mirror_while_writing("backfill_mirror_trigger", CaptureMode::Trigger).await;
}

async fn kill_9_and_resume(test: &str, mode: CaptureMode) {
    const ROWS: i64 = 30_000;
    let (db, receiver, sub) = items(test, mode, ROWS).await;
    receiver.set_delay(Duration::from_micros(300));
    let env = [(
        "WALHOOK_CAPTURE__MODE",
        match mode {
            CaptureMode::Replication => "replication",
            CaptureMode::Trigger => "trigger",
        },
    )];
    let mut first = spawn_walhook(&db, &env);
    let writer = Writer::start(&db, ROWS, 6_000);
    let id = start_backfill(&db, &sub).await;
    let start = Instant::now();
    loop {
        let (state, sent, _) = progress(&db, &id).await;
        assert_eq!(state, "running", "finished before the kill");
        if sent >= 5_000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no progress ({sent})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let (state, sent, _) = progress(&db, &id).await;
    assert_eq!(state, "running");
    assert!(sent < ROWS, "killed mid-backfill ({sent} sent)");
    let mut second = spawn_walhook(&db, &env);
    wait_state(&db, &id, "done", Duration::from_secs(600)).await;
    writer.finish().await;
    let backfilled = wait_mirror(&db, &receiver, &id, Duration::from_secs(300)).await;
    assert!(backfilled >= (ROWS as usize) * 9 / 10, "{backfilled}");
    // Sent again after the kill: at most the chunks in flight (4 of 1,000 rows).
    let (all, distinct) = backfilled_ids(&receiver.delivered(), &id);
    assert!(
        all - distinct <= 4 * 1_000,
        "{} backfilled events sent again",
        all - distinct
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test]
async fn replication_backfill_resumes_after_kill_9() {
    kill_9_and_resume("backfill_kill_replication", CaptureMode::Replication).await;
}

#[tokio::test]
async fn trigger_backfill_resumes_after_kill_9() {
    kill_9_and_resume("backfill_kill_trigger", CaptureMode::Trigger).await;
}
