//! Backfills (docs/backfill.md): existing rows as `<noun>.backfilled` events, consistent with
//! the live stream in both capture modes, resumable after `kill -9`, visible, cancellable,
//! and the API route's owner and scope rules.

mod api;
mod consistency;
mod pipeline;
mod sql;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use walhook::config::{CaptureMode, Config};

use crate::support::daemon::{FAST_RETRIES, config};
use crate::support::receiver::{Received, Receiver};
use crate::support::{TestDb, connect};

/// The test database for `mode` with `items (id int PRIMARY KEY, v int, note text)` holding
/// `rows` rows (written before the watch, so only a backfill sends them) and a receiver
/// subscribed to `items.*`; returns the subscription id.
async fn items(test: &str, mode: CaptureMode, rows: i64) -> (TestDb, Receiver, String) {
    let db = match mode {
        CaptureMode::Replication => TestDb::new(test).await,
        CaptureMode::Trigger => TestDb::replica(test).await,
    };
    let trigger = if mode == CaptureMode::Trigger {
        "UPDATE walhook.settings SET value = 'trigger' WHERE name = 'capture_mode';"
    } else {
        ""
    };
    let receiver = db
        .watched_with_receiver(
            &format!(
                "{trigger}
                 CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text);
                 INSERT INTO items SELECT g, 0, md5(g::text) FROM generate_series(1, {rows}) g;
                 SELECT walhook.watch('items');"
            ),
            "{items.*}",
        )
        .await;
    let sub: String = db
        .client
        .query_one("SELECT id::text FROM walhook.subscriptions", &[])
        .await
        .unwrap()
        .get(0);
    (db, receiver, sub)
}

/// The daemon configuration in `mode`.
fn config_in(db: &TestDb, mode: CaptureMode) -> Config {
    let mut config = config(db, FAST_RETRIES, &[]);
    config.capture.mode = mode;
    config.capture.trigger_poll_ms = 200;
    config
}

/// Starts a backfill of `items` to `sub`; its id.
async fn start_backfill(db: &TestDb, sub: &str) -> String {
    db.client
        .query_one(
            "SELECT walhook.backfill('items', $1::text::uuid)::text",
            &[&sub],
        )
        .await
        .unwrap()
        .get(0)
}

/// (state, rows_sent, estimated_total) of a backfill, from `walhook.backfills`.
async fn progress(db: &TestDb, id: &str) -> (String, i64, i64) {
    let row = db
        .client
        .query_one(
            "SELECT state, rows_sent, estimated_total FROM walhook.backfills WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Waits until the backfill's state is `state`.
async fn wait_state(db: &TestDb, id: &str, state: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let (now, sent, total) = progress(db, id).await;
        if now == state {
            return;
        }
        assert!(
            start.elapsed() < within,
            "backfill {id} still {now} ({sent} of ~{total}) after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A writer changing random rows of `items` until stopped: updates (`v` + 1), deletes, and
/// inserts of new ids above `rows`.
struct Writer {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(db: &TestDb, rows: i64, max_ops: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let url = db.url.clone();
        let (s, o) = (stop.clone(), ops.clone());
        let task = tokio::spawn(async move {
            let client = connect(&url).await;
            let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut next_id = rows + 1;
            while !s.load(Ordering::Acquire) && o.load(Ordering::Acquire) < max_ops {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let id = (seed % next_id as u64) as i32 + 1;
                match seed % 10 {
                    0..=5 => client
                        .execute(
                            "UPDATE items SET v = v + 1, note = md5(random()::text) WHERE id = $1",
                            &[&id],
                        )
                        .await
                        .unwrap(),
                    6 | 7 => client
                        .execute("DELETE FROM items WHERE id = $1", &[&id])
                        .await
                        .unwrap(),
                    _ => {
                        let new = next_id as i32;
                        next_id += 1;
                        client
                            .execute("INSERT INTO items VALUES ($1, 0, 'new')", &[&new])
                            .await
                            .unwrap()
                    }
                };
                o.fetch_add(1, Ordering::AcqRel);
            }
        });
        Writer { stop, ops, task }
    }

    /// Stops it; how many changes it made.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap();
        self.ops.load(Ordering::Acquire)
    }
}

/// The table's contents: id → row as JSON.
async fn table(db: &TestDb) -> BTreeMap<i64, Value> {
    db.client
        .query("SELECT id, to_jsonb(items)::text FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                i64::from(r.get::<_, i32>(0)),
                serde_json::from_str(r.get(1)).unwrap(),
            )
        })
        .collect()
}

/// The subscriber's view: the received events applied in arrival order (backfilled,
/// created, updated: upsert; deleted: delete). Also checks that no row's backfill image
/// arrived after a newer live event of that row (a larger `v`, or its delete); returns the
/// mirror and how many backfilled events arrived.
fn mirror(received: &[Received], backfill: &str) -> (BTreeMap<i64, Value>, usize) {
    let mut rows = BTreeMap::new();
    let mut live_v: HashMap<i64, i64> = HashMap::new();
    let mut deleted: HashMap<i64, bool> = HashMap::new();
    let mut backfilled = 0;
    for r in received {
        let event = &r.json;
        let id = event["data"]["id"].as_i64().unwrap();
        let v = event["data"]["v"].as_i64().unwrap();
        match event["type"].as_str().unwrap() {
            "items.backfilled" => {
                backfilled += 1;
                assert_eq!(event["source"]["backfill"], backfill, "{event}");
                assert!(
                    !deleted.get(&id).copied().unwrap_or(false),
                    "row {id}: backfill image after its delete: {event}"
                );
                let newest = live_v.get(&id).copied().unwrap_or(i64::MIN);
                assert!(
                    v >= newest,
                    "row {id}: backfill image v={v} after a live event with v={newest}"
                );
                rows.insert(id, event["data"].clone());
            }
            "items.created" | "items.updated" => {
                let seen = live_v.entry(id).or_insert(v);
                *seen = (*seen).max(v);
                rows.insert(id, event["data"].clone());
            }
            "items.deleted" => {
                deleted.insert(id, true);
                rows.remove(&id);
            }
            other => panic!("unexpected event type {other}"),
        }
    }
    (rows, backfilled)
}

/// How many backfilled events of `backfill` arrived, and how many distinct ones (an
/// attempt whose answer came later than the timeout is sent again: at least once).
fn backfilled_ids(received: &[Received], backfill: &str) -> (usize, usize) {
    let ids: Vec<&str> = received
        .iter()
        .filter(|r| r.json["source"]["backfill"] == backfill)
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    let distinct: HashSet<&str> = ids.iter().copied().collect();
    (ids.len(), distinct.len())
}

/// The end of a backfill under a writer: waits until it is done (`done_within`), stops the
/// writer, waits for the mirror (`mirror_within`), and checks that `rows_sent` counts the
/// distinct events sent. The writer's changes and the distinct backfilled events.
async fn finish_mirrored(
    db: &TestDb,
    receiver: &Receiver,
    id: &str,
    writer: Writer,
    (done_within, mirror_within): (Duration, Duration),
) -> (u64, usize) {
    wait_state(db, id, "done", done_within).await;
    let ops = writer.finish().await;
    wait_mirror(db, receiver, id, mirror_within).await;
    let (state, sent, _) = progress(db, id).await;
    assert_eq!(state, "done");
    let (all, distinct) = backfilled_ids(&receiver.delivered(), id);
    assert_eq!(
        sent as usize, distinct,
        "rows_sent counts the distinct events sent ({all} arrived)"
    );
    (ops, distinct)
}

/// Waits until the mirror equals the table (the writer has stopped); returns how many
/// backfilled events arrived.
async fn wait_mirror(db: &TestDb, receiver: &Receiver, backfill: &str, within: Duration) -> usize {
    let expected = table(db).await;
    let start = Instant::now();
    loop {
        let (got, backfilled) = mirror(&receiver.delivered(), backfill);
        if got == expected {
            return backfilled;
        }
        if start.elapsed() > within {
            let missing = expected.keys().filter(|k| !got.contains_key(k)).count();
            let extra = got.keys().filter(|k| !expected.contains_key(k)).count();
            let differ = expected
                .iter()
                .filter(|(k, v)| got.get(k).is_some_and(|g| g != *v))
                .count();
            panic!(
                "mirror differs after {within:?}: {missing} rows missing, {extra} extra, {differ} differ ({} of {} rows)",
                got.len(),
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
