//! Operations: `walhook status` (JSON fields, exit codes, with and without a daemon), the
//! preflight checks failing and passing, `/readyz` while too much WAL is retained, JSON logs.

mod logs;
mod preflight;
mod status;

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::OnceCell;
use walhook::localpg::LocalPostgres;

use crate::support::{Server, TestDb, connect};

/// A server of the ops tests' own with `max_slot_wal_keep_size` bounded (1 GB), so every
/// check can pass: the shared server keeps PostgreSQL's default (-1) and other tests may
/// change its settings.
async fn bounded_server() -> &'static Server {
    static SERVER: OnceCell<Server> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            // Leaked on purpose, like the shared server: its watchdog removes it at exit.
            let pg = tokio::task::spawn_blocking(LocalPostgres::start)
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{e}"));
            let server = Server::of(Box::leak(Box::new(pg)));
            let admin = connect(&format!("{}/postgres", server.base_url)).await;
            for sql in [
                "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'",
                "SELECT pg_reload_conf()",
            ] {
                admin.batch_execute(sql).await.unwrap();
            }
            for _ in 0..100 {
                let row = admin
                    .query_one("SHOW max_slot_wal_keep_size", &[])
                    .await
                    .unwrap();
                if row.get::<_, &str>(0) == "1GB" {
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("max_slot_wal_keep_size not reloaded");
        })
        .await
}

/// `walhook status [--json]` on `db` (slot and publication named after it) with `env`:
/// (exit code, stdout).
async fn status_raw(db: &TestDb, json: bool, env: &[(&str, &str)]) -> (i32, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_walhook"));
    command
        .arg("status")
        .env("WALHOOK_DATABASE_URL", &db.url)
        .env("WALHOOK_CAPTURE__SLOT", &db.name)
        .env("WALHOOK_CAPTURE__PUBLICATION", &db.name)
        .env_remove("WALHOOK_LOG")
        .envs(env.iter().copied());
    if json {
        command.arg("--json");
    }
    let out = command.output().await.unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let code = out.status.code().expect("status exits with a code");
    assert!(
        (0..=2).contains(&code),
        "exit {code}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, stdout)
}

/// `walhook status --json`: (exit code, the document).
async fn status_json(db: &TestDb, env: &[(&str, &str)]) -> (i32, Value) {
    let (code, stdout) = status_raw(db, true, env).await;
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (code, doc)
}

/// Polls `walhook status --json` until `done` holds (fails after `wait`).
async fn status_until(db: &TestDb, wait: Duration, done: impl Fn(&Value) -> bool) -> (i32, Value) {
    let start = Instant::now();
    loop {
        let (code, doc) = status_json(db, &[]).await;
        if done(&doc) {
            return (code, doc);
        }
        assert!(start.elapsed() < wait, "status never got there: {doc:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sorted keys of a JSON object.
fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

/// The checks of a status document as (name, level) pairs, in order.
fn levels(doc: &Value) -> Vec<(String, String)> {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["level"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `levels` with every check `ok` except `exceptions`.
fn expected_levels(exceptions: &[(&str, &str)]) -> Vec<(String, String)> {
    [
        "wal_level",
        "max_slot_wal_keep_size",
        "slot",
        "publication",
        "triggers",
        "replica_identity",
        "privileges",
        "retained_wal",
    ]
    .iter()
    .map(|name| {
        let level = exceptions
            .iter()
            .find(|(n, _)| n == name)
            .map_or("ok", |(_, l)| l);
        ((*name).to_owned(), level.to_owned())
    })
    .collect()
}
