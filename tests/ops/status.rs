//! `walhook status`: every field with and without a daemon, the exit code following the
//! checks and the capture state, `/readyz` while the slot retains too much WAL.

use std::time::Duration;

use serde_json::{Value, json};
use walhook::subscriptions::store;

use super::{bounded_server, expected_levels, keys, levels, status_json, status_raw, status_until};
use crate::support::TestDb;
use crate::support::daemon::{Daemon, FAST_RETRIES, config};
use crate::support::receiver::Receiver;

const TOP: [&str; 11] = [
    "backfills",
    "capture",
    "checked_at",
    "checks",
    "exit_code",
    "gaps",
    "health",
    "instances",
    "queue",
    "rates",
    "subscriptions",
];
const CAPTURE: [&str; 12] = [
    "acknowledged_commit_time",
    "acknowledged_lsn",
    "lag_bytes",
    "lag_seconds",
    "max_retained_wal_bytes",
    "mode",
    "outbox_rows",
    "retained_wal_bytes",
    "slot",
    "slot_name",
    "state",
    "streaming_instance",
];
const INSTANCE: [&str; 16] = [
    "acknowledged_commit_time",
    "acknowledged_lsn",
    "capture_mode",
    "deliveries_per_second",
    "events_per_second",
    "heartbeat_age_seconds",
    "heartbeat_at",
    "heartbeat_interval_ms",
    "host",
    "id",
    "pid",
    "retained_wal_over_limit",
    "role",
    "role_since",
    "started_at",
    "version",
];
const SUBSCRIPTION: [&str; 12] = [
    "active",
    "consecutive_failures",
    "dead",
    "disabled_reason",
    "failing",
    "id",
    "last_error",
    "last_error_at",
    "last_success_at",
    "owner",
    "pending",
    "target_url",
];
const SLOT: [&str; 9] = [
    "active",
    "active_pid",
    "confirmed_flush_lsn",
    "lag_bytes",
    "plugin",
    "restart_lsn",
    "retained_wal_bytes",
    "safe_wal_size",
    "wal_status",
];

fn sorted<const N: usize>(mut names: [&'static str; N]) -> Vec<&'static str> {
    names.sort();
    let mut v = names.to_vec();
    v.dedup();
    v
}

/// A database with `orders` watched and walhook's schema in place.
async fn setup(db: &TestDb) {
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT walhook.watch('orders');",
    )
    .await;
}

#[tokio::test]
async fn json_without_a_daemon_says_not_running_and_exits_2() {
    let db = TestDb::new("ops_status_idle").await;
    setup(&db).await;
    let (code, doc) = status_json(&db, &[]).await;
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(keys(&doc), sorted(TOP));
    assert_eq!(keys(&doc["capture"]), sorted(CAPTURE));
    assert_eq!(doc["health"], "failing");
    assert_eq!(doc["exit_code"], 2);
    let capture = &doc["capture"];
    assert_eq!(capture["mode"], "replication");
    assert_eq!(capture["state"], "not running");
    assert_eq!(capture["streaming_instance"], Value::Null);
    assert_eq!(capture["slot_name"], json!(db.name));
    assert_eq!(capture["slot"], Value::Null);
    assert_eq!(capture["retained_wal_bytes"], Value::Null);
    assert_eq!(capture["max_retained_wal_bytes"], 1u64 << 30);
    assert_eq!(capture["lag_bytes"], Value::Null);
    assert_eq!(capture["lag_seconds"], Value::Null);
    assert_eq!(capture["acknowledged_lsn"], Value::Null);
    assert_eq!(capture["outbox_rows"], Value::Null);
    assert_eq!(doc["instances"], json!([]));
    assert_eq!(doc["gaps"], json!([]));
    assert_eq!(
        doc["rates"],
        json!({"events_per_second": 0.0, "deliveries_per_second": 0.0})
    );
    assert_eq!(
        doc["queue"],
        json!({"pending": 0, "dead": 0, "subscriptions": 0, "failing": 0, "disabled": 0})
    );
    // No daemon ever ran: no slot, no publication yet.
    assert_eq!(
        levels(&doc),
        expected_levels(&[
            ("max_slot_wal_keep_size", "warn"),
            ("slot", "warn"),
            ("publication", "warn")
        ])
    );
    for check in doc["checks"].as_array().unwrap() {
        assert_eq!(keys(check), ["fix", "level", "message", "name"]);
        assert_eq!(check["fix"].is_null(), check["level"] == "ok", "{check}");
    }
    let (code, table) = status_raw(&db, false, &[]).await;
    assert_eq!(code, 2);
    assert!(
        table.contains("\ncapture               replication mode, not running\n")
            && table.contains("streaming instance    none: no walhook run is running\n"),
        "{table}"
    );
}

#[tokio::test]
async fn json_against_a_running_daemon_has_every_field() {
    let db = TestDb::new("ops_status_running").await;
    setup(&db).await;
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.script(&[(500, Duration::ZERO); 50]);
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{orders.*}}');
         SELECT walhook.subscribe('{}', '{{orders.*}}');
         SELECT walhook.subscribe('http://127.0.0.1:9/off', '{{orders.*}}');
         UPDATE walhook.subscriptions SET active = false, disabled_reason = 'switched off by hand'
         WHERE target_url = 'http://127.0.0.1:9/off';",
        good.url, bad.url
    ))
    .await;
    let mut config = config(&db, FAST_RETRIES, &[]);
    config.ops.heartbeat_interval_ms = 100;
    let daemon = Daemon::start(&db, config).await;
    db.exec("INSERT INTO orders VALUES (1, 'new'); INSERT INTO orders VALUES (2, 'new');")
        .await;
    good.wait_delivered(2, Duration::from_secs(30)).await;
    let bad_sub = |doc: &Value| {
        doc["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["target_url"] == json!(bad.url))
            .cloned()
            .unwrap()
    };
    let (code, doc) = status_until(&db, Duration::from_secs(30), |doc| {
        doc["capture"]["state"] == "streaming"
            && bad_sub(doc)["dead"] == 2
            && doc["rates"]["deliveries_per_second"].as_f64() > Some(0.0)
    })
    .await;
    assert_eq!(keys(&doc), sorted(TOP));
    assert_eq!(keys(&doc["capture"]), sorted(CAPTURE));
    assert_eq!(keys(&doc["capture"]["slot"]), sorted(SLOT));
    let capture = &doc["capture"];
    let instances = doc["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{doc:#}");
    let instance = &instances[0];
    assert_eq!(keys(instance), sorted(INSTANCE));
    assert_eq!(instance["role"], "streaming");
    assert_eq!(instance["capture_mode"], "replication");
    assert_eq!(instance["pid"], std::process::id());
    assert_eq!(instance["host"], json!(walhook::ops::host_name()));
    assert_eq!(instance["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(instance["heartbeat_interval_ms"], 100);
    assert_eq!(instance["retained_wal_over_limit"], false);
    assert!(
        instance["events_per_second"].as_f64() > Some(0.0),
        "{instance}"
    );
    assert_eq!(
        capture["streaming_instance"],
        json!({"id": instance["id"], "host": instance["host"], "pid": instance["pid"], "since": instance["role_since"]})
    );
    assert_eq!(capture["state"], "streaming");
    assert_eq!(capture["slot"]["active"], true);
    assert_eq!(capture["slot"]["wal_status"], "reserved");
    assert_eq!(capture["slot"]["plugin"], "pgoutput");
    assert!(
        capture["retained_wal_bytes"].as_i64() > Some(0),
        "{capture}"
    );
    assert!(capture["lag_bytes"].as_i64() >= Some(0), "{capture}");
    assert!(capture["lag_seconds"].as_f64() >= Some(0.0), "{capture}");
    assert!(capture["acknowledged_lsn"].is_string(), "{capture}");
    assert!(capture["acknowledged_commit_time"].is_string(), "{capture}");
    assert_eq!(capture["acknowledged_lsn"], instance["acknowledged_lsn"]);
    assert_eq!(
        doc["rates"]["events_per_second"],
        instance["events_per_second"]
    );
    let subs = doc["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 3);
    for s in subs {
        assert_eq!(keys(s), sorted(SUBSCRIPTION));
    }
    let failing = bad_sub(&doc);
    assert_eq!(failing["failing"], true);
    assert_eq!(failing["pending"], 0);
    assert_eq!(failing["dead"], 2);
    assert_eq!(failing["last_error"], "HTTP 500");
    let off = subs
        .iter()
        .find(|s| s["target_url"] == "http://127.0.0.1:9/off")
        .unwrap();
    assert_eq!(
        (&off["active"], &off["disabled_reason"], &off["failing"]),
        (&json!(false), &json!("switched off by hand"), &json!(false))
    );
    let ok = subs
        .iter()
        .find(|s| s["target_url"] == json!(good.url))
        .unwrap();
    assert_eq!(
        (&ok["failing"], &ok["pending"], &ok["dead"]),
        (&json!(false), &json!(0), &json!(0))
    );
    assert!(ok["last_success_at"].is_string(), "{ok}");
    assert_eq!(
        doc["queue"],
        json!({"pending": 0, "dead": 2, "subscriptions": 3, "failing": 1, "disabled": 1})
    );
    // The shared server keeps max_slot_wal_keep_size = -1: a warning, exit 1.
    assert_eq!(
        levels(&doc),
        expected_levels(&[("max_slot_wal_keep_size", "warn")])
    );
    assert_eq!((code, &doc["health"]), (1, &json!("warning")));

    daemon.stop().await;
    // A clean stop deletes the heartbeat row at once.
    let (code, doc) = status_json(&db, &[]).await;
    assert_eq!(doc["capture"]["state"], "not running");
    assert_eq!(doc["instances"], json!([]));
    assert_eq!(code, 2);
}

#[tokio::test]
async fn healthy_is_exit_0_and_retained_wal_above_the_limit_is_exit_1() {
    let db = TestDb::on(bounded_server().await, "ops_status_healthy").await;
    setup(&db).await;
    let mut config = config(&db, FAST_RETRIES, &[]);
    config.ops.heartbeat_interval_ms = 100;
    let daemon = Daemon::start(&db, config).await;
    let (code, doc) = status_until(&db, Duration::from_secs(30), |doc| {
        doc["capture"]["state"] == "streaming"
    })
    .await;
    assert_eq!(levels(&doc), expected_levels(&[]), "{doc:#}");
    assert_eq!((code, &doc["health"]), (0, &json!("ok")));
    let (code, table) = status_raw(&db, false, &[]).await;
    assert_eq!(code, 0);
    assert!(
        table.starts_with("health                ok (exit 0)\n"),
        "{table}"
    );
    assert!(
        table.contains("\n  OK   max_slot_wal_keep_size  max_slot_wal_keep_size = 1.0 GiB\n"),
        "{table}"
    );

    let (code, doc) = status_json(&db, &[("WALHOOK_CAPTURE__MAX_RETAINED_WAL", "1")]).await;
    assert_eq!(levels(&doc), expected_levels(&[("retained_wal", "warn")]));
    assert_eq!((code, &doc["health"]), (1, &json!("warning")));
    let check = &doc["checks"][7];
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .ends_with("of WAL, above capture.max_retained_wal (1 B)"),
        "{check}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn readyz_is_503_while_retained_wal_is_above_the_limit() {
    let db = TestDb::on(bounded_server().await, "ops_readyz_wal").await;
    setup(&db).await;
    db.exec("CREATE TABLE filler (id int, pad text); CREATE TABLE held (id int);")
        .await;
    let mut config = config(&db, FAST_RETRIES, &[]);
    config.ops.heartbeat_interval_ms = 100;
    config.capture.max_retained_wal = walhook::config::ByteSetting::Text("1MB".into());
    let readyz = format!("http://{}/readyz", config.api.listen);
    let daemon = Daemon::start(&db, config).await;
    let http = reqwest::Client::new();
    let ready = || async {
        let answer = http.get(&readyz).send().await.unwrap();
        let status = answer.status().as_u16();
        (
            status,
            serde_json::from_str::<Value>(&answer.text().await.unwrap()).unwrap(),
        )
    };
    let until = |want: u16| async move {
        let start = std::time::Instant::now();
        loop {
            let (status, body) = ready().await;
            if status == want {
                return body;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(
        until(200).await,
        json!({"status": "ready", "role": "streaming"})
    );
    // An open transaction keeps the slot's restart_lsn where it is; then 4 MB of WAL.
    let holder = crate::support::connect(&db.url).await;
    holder
        .batch_execute("BEGIN; INSERT INTO held VALUES (1);")
        .await
        .unwrap();
    db.exec(
        "INSERT INTO filler SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 3000) g",
    )
    .await;
    let body = until(503).await;
    let reason = body["reason"].as_str().unwrap();
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["role"], "streaming");
    assert!(
        reason.starts_with(&format!("replication slot \"{}\" retains ", db.name))
            && reason.ends_with("of WAL, above capture.max_retained_wal (1.0 MiB)"),
        "{reason}"
    );
    // The transaction ends; a checkpoint logs the running transactions, so the slot moves on.
    holder.batch_execute("COMMIT").await.unwrap();
    db.exec("CHECKPOINT").await;
    assert_eq!(
        until(200).await,
        json!({"status": "ready", "role": "streaming"})
    );
    daemon.stop().await;
}
