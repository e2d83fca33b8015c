//! Phase 6 of the harness: backfills while live traffic flows. A table of existing rows is
//! backfilled to its own subscription (its own receiver route) while pgbench writes live
//! rows at a fixed rate, once with one request per event and once with `batch_max = 100`;
//! it prints each backfill's rows/s and the live commit → 2xx latency with and without a
//! backfill running (without: before, between and after the backfills, and the median of
//! those three is the divisor; docs/backfill.md states the targets: ≥ 20,000 rows/s, live
//! p99 at most twice the p99 without).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Bench, Result, Seen};

/// The live rate during the comparison (TPS), below walhook's capacity so that the
/// latency measured is the path's, not a queue's.
const LIVE_TPS: u32 = 1_000;

/// Runs the phase: `fill` is the receiver state behind `fill_hook`.
pub(super) async fn phase(b: &Bench, fill: &Arc<Seen>, fill_hook: &str) -> Result<()> {
    let rows: u64 = if b.quick { 50_000 } else { 300_000 };
    let seconds = if b.quick { 2 } else { 10 };
    b.client
        .batch_execute(&format!(
            "CREATE TABLE bench_fill (id int PRIMARY KEY, v int NOT NULL, note text NOT NULL);
             INSERT INTO bench_fill SELECT g, 0, md5(g::text) FROM generate_series(1, {rows}) g;
             SELECT walhook.watch('bench_fill');"
        ))
        .await?;
    // Vacuumed now rather than by autovacuum during a measured row.
    b.client
        .batch_execute("VACUUM (ANALYZE) bench_fill")
        .await?;
    let sub: String = b
        .client
        .query_one(
            "SELECT (walhook.subscribe($1, '{bench_fill.*}')).id::text",
            &[&fill_hook],
        )
        .await?
        .get(0);
    tokio::time::sleep(Duration::from_secs(2)).await; // routing reload
    b.wait_quiet().await;
    println!(
        "## 6. Backfill ({rows} existing rows, chunks of 1,000) while pgbench writes {LIVE_TPS} TPS for {seconds} s\n"
    );
    println!(
        "| live traffic | TPS | delivered | p50 ms | p95 ms | p99 ms | max ms | final lag |\n|---|---|---|---|---|---|---|---|"
    );
    let mut without = vec![
        b.live_as("without a backfill", seconds, Some(LIVE_TPS))
            .await?,
    ];
    let mut results = Vec::new();
    for batch in [None, Some(100)] {
        b.client
            .execute(
                "UPDATE walhook.subscriptions SET batch_max = $2 WHERE id = $1::text::uuid",
                &[&sub, &batch],
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await; // routing reload
        b.wait_quiet().await;
        let label = batch.map_or("one request per event".to_string(), |n| {
            format!("batch_max = {n}")
        });
        let (p99, rate, overlap) =
            backfill_under_live(b, fill, &sub, rows, seconds, &label).await?;
        results.push((label, rate, p99, overlap));
        b.wait_quiet().await;
        let again = format!("without a backfill, again ({})", without.len() + 1);
        without.push(b.live_as(&again, seconds, Some(LIVE_TPS)).await?);
    }
    // The p99 without a backfill moves from run to run (an idle vCPU wakes late): the
    // median of the runs before, between and after the backfills.
    without.sort_by(f64::total_cmp);
    let p99_without = without[without.len() / 2];
    println!(
        "\n| backfill subscription | rows/s (target ≥ 20,000) | live p99 during ÷ without (median of the three runs without, {p99_without:.1} ms; target ≤ 2.00) | seconds of live traffic the backfill overlapped |\n|---|---|---|---|"
    );
    for (label, rate, p99, overlap) in results {
        let ratio = p99 / p99_without;
        println!("| {label} | {rate:.0} | {ratio:.2} | {overlap:.1} of {seconds} |");
    }
    println!();
    Ok(())
}

/// One backfill of `bench_fill` to `sub` while a live row runs: the live p99 (ms), the
/// backfill's rows/s at the receiver, and for how many seconds the two overlapped.
async fn backfill_under_live(
    b: &Bench,
    fill: &Arc<Seen>,
    sub: &str,
    rows: u64,
    seconds: u64,
    label: &str,
) -> Result<(f64, f64, f64)> {
    fill.count.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let id: String = b
        .client
        .query_one(
            "SELECT walhook.backfill('bench_fill', $1::text::uuid)::text",
            &[&sub],
        )
        .await?
        .get(0);
    let watch = {
        let fill = fill.clone();
        tokio::spawn(async move {
            while fill.count.load(Ordering::Relaxed) < rows
                && started.elapsed() < Duration::from_secs(600)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            started.elapsed()
        })
    };
    let p99 = b
        .live_as(
            &format!("during a backfill, {label}"),
            seconds,
            Some(LIVE_TPS),
        )
        .await?;
    let live_ended = started.elapsed();
    let took = watch.await?;
    let received = fill.count.load(Ordering::Relaxed);
    let (state, sent): (String, i64) = {
        let row = b
            .client
            .query_one(
                "SELECT state, rows_sent FROM walhook.backfills WHERE id = $1::text::uuid",
                &[&id],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    if received < rows || state != "done" {
        eprintln!(
            "note: backfill {id} ({label}): {received}/{rows} received, state {state}, rows_sent {sent}"
        );
    }
    Ok((
        p99,
        received as f64 / took.as_secs_f64(),
        took.min(live_ended).as_secs_f64(),
    ))
}
