//! `log.format = "json"`: every line a daemon writes to stderr is one JSON object.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use walhook::subscriptions::store;

use crate::support::TestDb;
use crate::support::receiver::Receiver;

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let db = TestDb::new("ops_json_logs").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    db.exec(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');
         SELECT walhook.subscribe('{}', '{{orders.*}}');",
        receiver.url
    ))
    .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .arg("run")
        .env("WALHOOK_DATABASE_URL", &db.url)
        .env("WALHOOK_CAPTURE__SLOT", &db.name)
        .env("WALHOOK_CAPTURE__PUBLICATION", &db.name)
        .env("WALHOOK_DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
        .env("WALHOOK_API__ENABLED", "false")
        .env("WALHOOK_LOG__FORMAT", "json")
        .env("WALHOOK_LOG__LEVEL", "debug")
        .env_remove("WALHOOK_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map(|l| l.unwrap())
            .collect::<Vec<String>>()
    });
    while !db.slot_active().await {
        assert!(child.try_wait().unwrap().is_none(), "walhook exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.exec("INSERT INTO orders VALUES (1)").await;
    receiver.wait_delivered(1, Duration::from_secs(30)).await;
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let lines = lines.join().unwrap();
    let objects: Vec<Value> = lines
        .iter()
        .map(|line| {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(v.is_object(), "{line}");
            for key in ["timestamp", "level", "target", "message"] {
                assert!(v.get(key).is_some(), "no {key}: {line}");
            }
            v
        })
        .collect();
    let messages: Vec<&str> = objects
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    for expected in [
        "walhook running",
        "stopping: draining deliveries",
        "stopped",
    ] {
        assert!(
            messages.contains(&expected),
            "{expected:?} in {messages:#?}"
        );
    }
    let wal_level = objects
        .iter()
        .find(|v| v["check"] == "wal_level")
        .expect("the preflight checks are logged");
    assert_eq!(
        (&wal_level["level"], &wal_level["message"]),
        (
            &Value::from("INFO"),
            &Value::from("preflight OK: wal_level=logical")
        )
    );
    assert!(
        objects.iter().any(|v| v["level"] == "DEBUG"),
        "log.level = debug shows debug lines"
    );
}

#[tokio::test]
async fn a_bad_log_setting_is_refused_naming_its_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .arg("run")
        .env("WALHOOK_DATABASE_URL", "postgres://u@127.0.0.1:1/db")
        .env("WALHOOK_LOG__LEVEL", "loud=[")
        .env_remove("WALHOOK_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr
            .starts_with("Error: configuration key log.level: \"loud=[\" is not a level or filter"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .arg("run")
        .env("WALHOOK_DATABASE_URL", "postgres://u@127.0.0.1:1/db")
        .env("WALHOOK_LOG__FORMAT", "xml")
        .env_remove("WALHOOK_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.to_lowercase().contains("key \"log.format\""),
        "{stderr}"
    );
}
