//! Nothing acknowledged early, nothing lost across restarts and killed walsenders, idle
//! streams pin no WAL, huge transactions stream in bounded memory.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::TestDb;
use crate::support::capture::{Tap, config};

async fn insert_each(db: &TestDb, table: &str, ids: std::ops::RangeInclusive<i32>) {
    let statement = db
        .client
        .prepare(&format!("INSERT INTO {table} VALUES ($1)"))
        .await
        .unwrap();
    for id in ids {
        db.client.execute(&statement, &[&id]).await.unwrap();
    }
}

fn ids(changes: &[walhook::change::RowChange]) -> BTreeSet<i64> {
    changes
        .iter()
        .map(|c| c.new.as_ref().unwrap()["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn restart_resumes_and_nothing_is_acknowledged_early() {
    let db = TestDb::new("restart").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let tap = Tap::start(config(&db, &["t"])).await;
    tap.stop().await;
    let (confirmed_before, _) = db.slot_positions(&db.name).await;

    // 1,000 committed rows while no consumer runs.
    insert_each(&db, "t", 1..=1000).await;

    // A consumer reads 600 of them but acknowledges nothing, then stops.
    let mut tap = Tap::start(config(&db, &["t"])).await;
    tap.auto_ack = false;
    assert_eq!(ids(&tap.changes(600).await), (1..=600).collect());
    tokio::time::sleep(Duration::from_millis(400)).await; // several status intervals
    tap.stop().await;
    let (confirmed, _) = db.slot_positions(&db.name).await;
    assert_eq!(
        confirmed, confirmed_before,
        "the slot advanced past unacknowledged changes"
    );

    // The next consumer gets all 1,000, acknowledging as it goes.
    let mut tap = Tap::start(config(&db, &["t"])).await;
    let changes = tap.changes(1000).await;
    assert_eq!(ids(&changes), (1..=1000).collect());
    let end = tap.last_commit_end;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (confirmed, _) = db.slot_positions(&db.name).await;
    assert!(
        confirmed >= end.0,
        "acknowledged {end} but slot confirmed {confirmed:X}"
    );
    tap.stop().await;
}

#[tokio::test]
async fn terminated_walsender_reconnects_and_loses_nothing() {
    let db = TestDb::new("terminate").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut config = config(&db, &["t"]);
    config.reconnect_min = Duration::from_millis(50);
    let mut tap = Tap::start(config).await;
    insert_each(&db, "t", 1..=100).await;
    let mut seen = ids(&tap.changes(30).await);
    let pid_sql = "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1";
    let pid: i32 = db
        .client
        .query_one(pid_sql, &[&db.name])
        .await
        .unwrap()
        .get(0);
    db.client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    insert_each(&db, "t", 101..=200).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 200 && Instant::now() < deadline {
        seen.extend(ids(&tap.changes(1).await));
    }
    assert_eq!(seen, (1..=200).collect());
    let new_pid: Option<i32> = db
        .client
        .query_one(pid_sql, &[&db.name])
        .await
        .unwrap()
        .get(0);
    assert!(new_pid.is_some_and(|p| p != pid), "a new walsender streams");
    tap.stop().await;
}

#[tokio::test]
async fn idle_stream_confirms_unwatched_writes() {
    let db = TestDb::new("idle_wal").await;
    db.exec("CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE junk (id int, pad text);")
        .await;
    let tap = Tap::start(config(&db, &["watched"])).await;
    // About 50 MB of WAL on a table walhook does not watch.
    for chunk in 0..10 {
        db.exec(&format!(
            "INSERT INTO junk SELECT g, repeat(md5(g::text), 30) FROM generate_series({}, {}) g",
            chunk * 5000,
            chunk * 5000 + 4999
        ))
        .await;
    }
    let (confirmed, current) = db.slot_positions(&db.name).await;
    assert!(current - confirmed > 0, "the writes produced WAL");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (confirmed, current) = db.slot_positions(&db.name).await;
        if current.saturating_sub(confirmed) < 1024 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot still {} bytes behind after 30 s",
            current - confirmed
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tap.stop().await;
}

/// Peak resident memory of a process, from /proc (kB).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn million_row_transaction_streams_in_bounded_memory() {
    let db = TestDb::new("million").await;
    db.exec("CREATE TABLE big (id int PRIMARY KEY, label text)")
        .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .arg("tail")
        .args(["--table", "big"])
        .env("WALHOOK_DATABASE_URL", &db.url)
        .env("WALHOOK_CAPTURE__SLOT", &db.name)
        .env("WALHOOK_CAPTURE__PUBLICATION", &db.name)
        .env("WALHOOK_LOG", "walhook=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the tail streams (it logs so), then write one 1,000,000-row transaction.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = stderr.lines();
    let mut seen = Vec::new();
    for line in log.by_ref() {
        let line = line.unwrap();
        if line.contains("streaming changes") {
            break;
        }
        seen.push(line);
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "walhook tail exited: {}",
        seen.join("\n")
    );
    std::thread::spawn(move || log.for_each(drop));
    db.exec("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 1000000) g")
        .await;
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let counted = tokio::task::spawn_blocking(move || {
        let mut count = 0u64;
        let mut last = String::new();
        for line in BufReader::new(stdout).lines() {
            last = line.unwrap();
            count += 1;
            if count == 1_000_000 {
                break;
            }
        }
        (count, last)
    })
    .await
    .unwrap();
    assert_eq!(counted.0, 1_000_000, "walhook tail stopped early");
    let peak_mb = peak_rss_kb(pid) / 1024;
    child.kill().unwrap();
    child.wait().unwrap();
    let last: serde_json::Value = serde_json::from_str(&counted.1).unwrap();
    assert_eq!(
        last["new"],
        serde_json::json!({"id": 1000000, "label": "row 1000000"})
    );
    assert_eq!(
        last["position"].as_str().unwrap().rsplit('-').next(),
        Some("999999")
    );
    println!("walhook tail peak RSS over a 1,000,000-row transaction: {peak_mb} MB");
    assert!(peak_mb < 200, "peak RSS {peak_mb} MB");
}
