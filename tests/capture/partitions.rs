//! Partitioned tables: watching the parent captures every partition, including one attached
//! while walhook runs, as the parent's events, in both capture modes; a partitioned table
//! without a primary key; a partition watched on its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use walhook::config::CaptureMode;

use crate::support::TestDb;
use crate::support::daemon::{Daemon, FAST_RETRIES, config};
use crate::support::receiver::{Received, Receiver};

/// A test database on the server the mode needs (trigger capture runs on `wal_level=replica`).
async fn db_for(test: &str, mode: CaptureMode) -> TestDb {
    match mode {
        CaptureMode::Replication => TestDb::new(test).await,
        CaptureMode::Trigger => TestDb::replica(test).await,
    }
}

/// Starts the daemon in `mode` with `setup` run first and a receiver subscribed to `events`.
async fn start(db: &TestDb, mode: CaptureMode, setup: &str, events: &str) -> (Daemon, Receiver) {
    let receiver = db.watched_with_receiver(setup, events).await;
    let mut config = config(db, FAST_RETRIES, &[]);
    config.capture.mode = mode;
    config.capture.trigger_poll_ms = 200;
    (Daemon::start(db, config).await, receiver)
}

/// Waits for exactly `n` deliveries: `n` arrive, and no more within a further 300 ms.
async fn exactly(receiver: &Receiver, n: usize) -> Vec<Received> {
    let got = receiver.wait_delivered(n, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.delivered().len(), n, "no extra deliveries");
    got
}

/// Events grouped by `data.id` and `data.region` (the row key), in arrival order, as
/// `[type, data, previous, changed]` text (so key order counts too).
fn per_row(received: &[Received]) -> BTreeMap<String, Vec<String>> {
    let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in received {
        let b = &r.json;
        let key = format!("{}/{}", b["data"]["id"], b["data"]["region"]);
        let seen = json!([b["type"], b["data"], b["previous"], b["changed"]]);
        rows.entry(key).or_default().push(seen.to_string());
    }
    rows
}

/// `[type, data, previous, changed]` as [`per_row`] renders it.
fn ev(verb: &str, data: Value, previous: Value, changed: Value) -> String {
    json!([format!("measurements.{verb}"), data, previous, changed]).to_string()
}

const MEASUREMENTS: &str = "
CREATE TABLE measurements (id int, region text, value numeric, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE m_eu PARTITION OF measurements FOR VALUES IN ('eu');
CREATE TABLE m_us PARTITION OF measurements FOR VALUES IN ('us');
SELECT walhook.watch('measurements');";

async fn partitioned_table_workload(mode: CaptureMode) {
    let db = db_for(&format!("parts_{mode:?}"), mode).await;
    let (daemon, receiver) = start(&db, mode, MEASUREMENTS, "{measurements.*}").await;
    db.exec("INSERT INTO measurements VALUES (1, 'eu', 1.5), (2, 'us', 2)")
        .await;
    db.exec("INSERT INTO m_eu VALUES (3, 'eu', 3)").await;
    db.exec("UPDATE measurements SET value = 10 WHERE id = 1")
        .await;
    db.exec("UPDATE m_us SET value = 20 WHERE id = 2").await;
    // A third partition, attached while walhook runs, its columns in another order.
    db.exec(
        "CREATE TABLE m_asia (value numeric, region text NOT NULL, id int NOT NULL);
         ALTER TABLE measurements ATTACH PARTITION m_asia FOR VALUES IN ('asia')",
    )
    .await;
    // Its REPLICA IDENTITY FULL comes from the daemon within about a second; until then an
    // UPDATE or DELETE of it would carry only the key in `previous` (docs/capture.md).
    until_identity_full(&db, "m_asia").await;
    db.exec("INSERT INTO measurements VALUES (4, 'asia', 4)")
        .await;
    db.exec("INSERT INTO m_asia (id, region, value) VALUES (5, 'asia', 5)")
        .await;
    db.exec("UPDATE m_asia SET value = 40 WHERE id = 4").await;
    // Moves a row from one partition to another.
    db.exec("UPDATE measurements SET region = 'asia' WHERE id = 3")
        .await;
    db.exec("DELETE FROM measurements WHERE id = 2").await;
    db.exec("DELETE FROM m_asia WHERE id = 5").await;

    let got = exactly(&receiver, 12).await;
    daemon.stop().await;
    for r in &got {
        assert_eq!(r.json["source"]["schema"], "public", "{}", r.body);
        assert_eq!(r.json["source"]["table"], "measurements", "{}", r.body);
    }
    let row =
        |id: i64, region: &str, value: Value| json!({"id": id, "region": region, "value": value});
    let null = Value::Null;
    let want: BTreeMap<String, Vec<String>> = [
        (
            "1/\"eu\"",
            vec![
                ev(
                    "created",
                    row(1, "eu", json!(1.5)),
                    null.clone(),
                    null.clone(),
                ),
                ev(
                    "updated",
                    row(1, "eu", json!(10)),
                    row(1, "eu", json!(1.5)),
                    json!(["value"]),
                ),
            ],
        ),
        (
            "2/\"us\"",
            vec![
                ev(
                    "created",
                    row(2, "us", json!(2)),
                    null.clone(),
                    null.clone(),
                ),
                ev(
                    "updated",
                    row(2, "us", json!(20)),
                    row(2, "us", json!(2)),
                    json!(["value"]),
                ),
                ev(
                    "deleted",
                    row(2, "us", json!(20)),
                    row(2, "us", json!(20)),
                    null.clone(),
                ),
            ],
        ),
        (
            // The move: a delete from the old partition, an insert into the new one.
            "3/\"eu\"",
            vec![
                ev(
                    "created",
                    row(3, "eu", json!(3)),
                    null.clone(),
                    null.clone(),
                ),
                ev(
                    "deleted",
                    row(3, "eu", json!(3)),
                    row(3, "eu", json!(3)),
                    null.clone(),
                ),
            ],
        ),
        (
            "3/\"asia\"",
            vec![ev(
                "created",
                row(3, "asia", json!(3)),
                null.clone(),
                null.clone(),
            )],
        ),
        (
            "4/\"asia\"",
            vec![
                ev(
                    "created",
                    row(4, "asia", json!(4)),
                    null.clone(),
                    null.clone(),
                ),
                ev(
                    "updated",
                    row(4, "asia", json!(40)),
                    row(4, "asia", json!(4)),
                    json!(["value"]),
                ),
            ],
        ),
        (
            "5/\"asia\"",
            vec![
                ev(
                    "created",
                    row(5, "asia", json!(5)),
                    null.clone(),
                    null.clone(),
                ),
                ev(
                    "deleted",
                    row(5, "asia", json!(5)),
                    row(5, "asia", json!(5)),
                    null.clone(),
                ),
            ],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(per_row(&got), want);
}

#[tokio::test]
async fn partitions_are_captured_as_the_parent_in_replication_mode() {
    partitioned_table_workload(CaptureMode::Replication).await;
}

#[tokio::test]
async fn partitions_are_captured_as_the_parent_in_trigger_mode() {
    partitioned_table_workload(CaptureMode::Trigger).await;
}

/// REPLICA IDENTITY of `table` (`d`, `f`, `n`, `i`).
async fn identity(db: &TestDb, table: &str) -> String {
    let row = db
        .client
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Waits until `table` has REPLICA IDENTITY FULL (the daemon sets it within about a second).
async fn until_identity_full(db: &TestDb, table: &str) {
    let start = Instant::now();
    while identity(db, table).await != "f" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{table} never got REPLICA IDENTITY FULL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_partitioned_table_without_primary_key_keeps_updates_and_deletes_working() {
    let db = TestDb::new("parts_no_pk").await;
    let setup = "
        CREATE TABLE readings (sensor text, at int, value int) PARTITION BY LIST (sensor);
        CREATE TABLE r_a PARTITION OF readings FOR VALUES IN ('a');
        CREATE TABLE r_b PARTITION OF readings FOR VALUES IN ('b') PARTITION BY RANGE (at);
        CREATE TABLE r_b_low PARTITION OF r_b FOR VALUES FROM (0) TO (100);
        SELECT walhook.watch('readings');";
    let (daemon, receiver) = start(&db, CaptureMode::Replication, setup, "{readings.*}").await;
    // watch() gave every partition, at every level, REPLICA IDENTITY FULL.
    for table in ["readings", "r_a", "r_b", "r_b_low"] {
        assert_eq!(identity(&db, table).await, "f", "{table}");
    }
    db.exec("INSERT INTO readings VALUES ('a', 1, 10), ('b', 2, 20)")
        .await;
    db.exec("UPDATE readings SET value = 11 WHERE sensor = 'a'")
        .await;
    db.exec("DELETE FROM r_b_low WHERE at = 2").await;
    // A partition attached later gets it from the daemon within about a second.
    db.exec(
        "CREATE TABLE r_c (sensor text, at int, value int);
         ALTER TABLE readings ATTACH PARTITION r_c FOR VALUES IN ('c')",
    )
    .await;
    until_identity_full(&db, "r_c").await;
    db.exec("INSERT INTO r_c VALUES ('c', 3, 30)").await;
    db.exec("UPDATE r_c SET value = 31").await;
    db.exec("DELETE FROM readings WHERE sensor = 'c'").await;

    let got = exactly(&receiver, 7).await;
    daemon.stop().await;
    let seen: Vec<String> = got
        .iter()
        .map(|r| {
            let b = &r.json;
            json!([b["type"], b["data"], b["previous"], b["source"]["table"]]).to_string()
        })
        .collect();
    let row =
        |sensor: &str, at: i64, value: i64| json!({"sensor": sensor, "at": at, "value": value});
    let e = |ty: &str, data: Value, previous: Value| {
        json!([ty, data, previous, "readings"]).to_string()
    };
    // Rows without a key are one row for ordering per sensor here; compare per sensor.
    let by_sensor = |events: &[String], sensor: &str| -> Vec<String> {
        events
            .iter()
            .filter(|s| s.contains(&format!("\"sensor\":\"{sensor}\"")))
            .cloned()
            .collect()
    };
    assert_eq!(
        by_sensor(&seen, "a"),
        vec![
            e("readings.created", row("a", 1, 10), Value::Null),
            e("readings.updated", row("a", 1, 11), row("a", 1, 10)),
        ]
    );
    assert_eq!(
        by_sensor(&seen, "b"),
        vec![
            e("readings.created", row("b", 2, 20), Value::Null),
            e("readings.deleted", row("b", 2, 20), row("b", 2, 20)),
        ]
    );
    assert_eq!(
        by_sensor(&seen, "c"),
        vec![
            e("readings.created", row("c", 3, 30), Value::Null),
            e("readings.updated", row("c", 3, 31), row("c", 3, 30)),
            e("readings.deleted", row("c", 3, 31), row("c", 3, 31)),
        ]
    );
}

async fn single_partition_watch(mode: CaptureMode) {
    let db = db_for(&format!("parts_single_{mode:?}"), mode).await;
    let setup = "
        CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id);
        CREATE TABLE p_low PARTITION OF p FOR VALUES FROM (0) TO (100);
        CREATE TABLE p_high PARTITION OF p FOR VALUES FROM (100) TO (200);
        SELECT walhook.watch('p_low');";
    let (daemon, receiver) = start(&db, mode, setup, "{*}").await;
    db.exec("INSERT INTO p VALUES (1), (101)").await;
    db.exec("INSERT INTO p_low VALUES (2)").await;
    let got = exactly(&receiver, 2).await;
    let seen = |got: &[Received]| -> Vec<String> {
        got.iter()
            .map(|r| {
                let b = &r.json;
                json!([b["type"], b["data"]["id"], b["source"]["table"]]).to_string()
            })
            .collect()
    };
    assert_eq!(
        seen(&got),
        vec![
            json!(["p_low.created", 1, "p_low"]).to_string(),
            json!(["p_low.created", 2, "p_low"]).to_string(),
        ]
    );
    // Watching the parent too: the partition's changes are the parent's from now on.
    db.exec("SELECT walhook.watch('p')").await;
    // The routing index and the capture follow within a second; wait until p's events flow.
    let start = Instant::now();
    let mut next = 10;
    loop {
        db.exec(&format!("INSERT INTO p_high VALUES ({})", 100 + next))
            .await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if receiver
            .delivered()
            .iter()
            .any(|r| r.json["type"] == "p.created")
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "p never watched");
    }
    db.exec("INSERT INTO p_low VALUES (3)").await;
    db.exec("INSERT INTO p VALUES (4)").await;
    let start = Instant::now();
    let phase_two = |got: &[Received]| -> Vec<String> {
        seen(got)
            .into_iter()
            .filter(|s| s.contains(",3,") || s.contains(",4,"))
            .collect()
    };
    while phase_two(&receiver.delivered()).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "3 and 4 not delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.stop().await;
    let got = receiver.delivered();
    assert_eq!(
        phase_two(&got),
        vec![
            json!(["p.created", 3, "p"]).to_string(),
            json!(["p.created", 4, "p"]).to_string(),
        ]
    );
    // The probes written while the new watch took effect: nothing, or the parent's events.
    for probe in &got[2..] {
        assert_eq!(probe.json["type"], "p.created", "{}", probe.body);
    }
}

#[tokio::test]
async fn a_partition_watched_on_its_own_has_its_own_events_in_replication_mode() {
    single_partition_watch(CaptureMode::Replication).await;
}

#[tokio::test]
async fn a_partition_watched_on_its_own_has_its_own_events_in_trigger_mode() {
    single_partition_watch(CaptureMode::Trigger).await;
}
