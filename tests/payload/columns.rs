//! Hidden columns: never in a payload or an outbox row; a publication column list where the
//! replica identity allows one; the application's writes unaffected; changes take effect
//! within a second.

use std::time::{Duration, Instant};

use walhook::config::CaptureMode;

use super::{config_in, database, outbox, shapes, wait_for};
use crate::support::daemon::Daemon;
use crate::support::receiver::Receiver;

const SCHEMA: &str = "
CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text, api_key text);
SELECT walhook.watch('users', exclude_columns => '{password_hash,api_key}');";

const WRITES: &str = "
INSERT INTO users VALUES (1, 'a@x.test', 'hash-1', 'key-1');
UPDATE users SET email = 'b@x.test', password_hash = 'hash-2' WHERE id = 1;
UPDATE users SET api_key = 'key-2' WHERE id = 1;
DELETE FROM users WHERE id = 1;";

async fn excluded_columns(test: &str, mode: CaptureMode) {
    let db = database(test, mode).await;
    let receiver = Receiver::start().await;
    db.exec(SCHEMA).await;
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{users.*}}')",
        receiver.url
    ))
    .await;
    let daemon = if mode == CaptureMode::Trigger {
        // Written before the daemon runs, so the outbox rows can be read.
        db.exec(WRITES).await;
        assert_eq!(
            outbox(&db).await,
            vec![
                (
                    "INSERT".into(),
                    None,
                    Some(r#"{"id": 1, "email": "a@x.test"}"#.into())
                ),
                (
                    "UPDATE".into(),
                    Some(r#"{"id": 1, "email": "a@x.test"}"#.into()),
                    Some(r#"{"id": 1, "email": "b@x.test"}"#.into())
                ),
                (
                    "UPDATE".into(),
                    Some(r#"{"id": 1, "email": "b@x.test"}"#.into()),
                    Some(r#"{"id": 1, "email": "b@x.test"}"#.into())
                ),
                (
                    "DELETE".into(),
                    Some(r#"{"id": 1, "email": "b@x.test"}"#.into()),
                    None
                ),
            ]
        );
        Daemon::start(&db, config_in(&db, mode)).await
    } else {
        let daemon = Daemon::start(&db, config_in(&db, mode)).await;
        // REPLICA IDENTITY FULL: no column list (it would refuse these writes), all succeed.
        db.exec(WRITES).await;
        daemon
    };
    let got = receiver.wait_delivered(4, Duration::from_secs(20)).await;
    assert_eq!(
        shapes(&got),
        vec![
            r#"["users.created",{"id":1,"email":"a@x.test"},null,null]"#,
            r#"["users.updated",{"id":1,"email":"b@x.test"},{"id":1,"email":"a@x.test"},["email"]]"#,
            r#"["users.updated",{"id":1,"email":"b@x.test"},{"id":1,"email":"b@x.test"},[]]"#,
            r#"["users.deleted",{"id":1,"email":"b@x.test"},{"id":1,"email":"b@x.test"},null]"#,
        ]
    );
    for r in &got {
        for secret in ["password_hash", "api_key", "hash-", "key-"] {
            assert!(!r.body.contains(secret), "{secret} in {}", r.body);
        }
    }
    // The catalog shows only the visible columns.
    let catalog: String = db
        .client
        .query_one(
            "SELECT string_agg(a.attname, ',' ORDER BY a.attnum) FROM pg_attribute a \
             JOIN walhook.watched_tables w ON w.relid = a.attrelid \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND NOT (a.attname::text = ANY (w.exclude_columns))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(catalog, "id,email");
    // Removing the exclusion: the columns appear within a second, without a restart.
    db.exec("SELECT walhook.watch('users')").await;
    let removed = Instant::now();
    let mut id = 10;
    let shown = loop {
        db.exec(&format!(
            "INSERT INTO users VALUES ({id}, 'c@x.test', 'hash-{id}', 'key-{id}')"
        ))
        .await;
        let seen = receiver
            .delivered()
            .into_iter()
            .find(|r| r.json["data"].get("password_hash").is_some());
        if let Some(seen) = seen {
            break seen;
        }
        assert!(
            removed.elapsed() < Duration::from_secs(1),
            "hidden columns still hidden after a second"
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shown_id = shown.json["data"]["id"].as_i64().unwrap();
    assert_eq!(
        shown.json["data"],
        serde_json::json!({"id": shown_id, "email": "c@x.test",
                           "password_hash": format!("hash-{shown_id}"), "api_key": format!("key-{shown_id}")})
    );
    daemon.stop().await;
}

#[tokio::test]
async fn excluded_columns_never_reach_subscribers_in_replication_mode() {
    excluded_columns("payload_excluded_replication", CaptureMode::Replication).await;
}

#[tokio::test]
async fn excluded_columns_never_reach_subscribers_in_trigger_mode() {
    excluded_columns("payload_excluded_trigger", CaptureMode::Trigger).await;
}

/// `columns => [...]` keeps only those, including in the outbox, and a column added to the
/// table later stays out.
async fn column_allow_list(test: &str, mode: CaptureMode) {
    let db = database(test, mode).await;
    let receiver = Receiver::start().await;
    db.exec(
        "CREATE TABLE accounts (id int PRIMARY KEY, name text, token text);
         SELECT walhook.watch('accounts', columns => '{id,name}');",
    )
    .await;
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{accounts.*}}')",
        receiver.url
    ))
    .await;
    let daemon = Daemon::start(&db, config_in(&db, mode)).await;
    db.exec(
        "INSERT INTO accounts VALUES (1, 'a', 't1');
         ALTER TABLE accounts ADD COLUMN added text DEFAULT 'later';
         INSERT INTO accounts VALUES (2, 'b', 't2');
         UPDATE accounts SET name = 'c', token = 't3' WHERE id = 2;",
    )
    .await;
    let got = receiver.wait_delivered(3, Duration::from_secs(20)).await;
    assert_eq!(
        shapes(&got),
        vec![
            r#"["accounts.created",{"id":1,"name":"a"},null,null]"#,
            r#"["accounts.created",{"id":2,"name":"b"},null,null]"#,
            r#"["accounts.updated",{"id":2,"name":"c"},{"id":2,"name":"b"},["name"]]"#,
        ]
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_column_list_carries_only_its_columns_in_replication_mode() {
    column_allow_list("payload_allow_replication", CaptureMode::Replication).await;
}

#[tokio::test]
async fn a_column_list_carries_only_its_columns_in_trigger_mode() {
    column_allow_list("payload_allow_trigger", CaptureMode::Trigger).await;
}

/// With a primary-key identity the publication itself gets the column list (the columns
/// never leave the database); with REPLICA IDENTITY FULL it gets none, and a table switched
/// to FULL later loses its list within a second.
#[tokio::test]
async fn publication_column_list_only_where_the_identity_allows() {
    let db = database("payload_publication_list", CaptureMode::Replication).await;
    let receiver = Receiver::start().await;
    db.exec(
        "CREATE TABLE keyed (id int PRIMARY KEY, email text, secret text);
         CREATE TABLE full_rows (id int PRIMARY KEY, email text, secret text);
         SELECT walhook.watch('keyed', full_identity => false, exclude_columns => '{secret}');
         SELECT walhook.watch('full_rows', exclude_columns => '{secret}');",
    )
    .await;
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{keyed.*,full_rows.*}}')",
        receiver.url
    ))
    .await;
    let daemon = Daemon::start(&db, config_in(&db, CaptureMode::Replication)).await;
    let attnames = |table: &'static str| {
        let db = &db;
        async move {
            db.client
                .query_one(
                    "SELECT array_to_string(attnames, ',') FROM pg_publication_tables \
                     WHERE pubname = $1 AND tablename = $2",
                    &[&db.name, &table],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(attnames("keyed").await, "id,email");
    assert_eq!(attnames("full_rows").await, "id,email,secret");
    db.exec(
        "INSERT INTO keyed VALUES (1, 'a', 's1'); UPDATE keyed SET email = 'b', secret = 's2';
         DELETE FROM keyed;
         INSERT INTO full_rows VALUES (1, 'a', 's1'); UPDATE full_rows SET email = 'b', secret = 's2';
         DELETE FROM full_rows;",
    )
    .await;
    let got = receiver.wait_delivered(6, Duration::from_secs(20)).await;
    assert_eq!(
        shapes(&got),
        vec![
            r#"["full_rows.created",{"id":1,"email":"a"},null,null]"#,
            r#"["full_rows.updated",{"id":1,"email":"b"},{"id":1,"email":"a"},["email"]]"#,
            r#"["full_rows.deleted",{"id":1,"email":"b"},{"id":1,"email":"b"},null]"#,
            r#"["keyed.created",{"id":1,"email":"a"},null,null]"#,
            r#"["keyed.updated",{"id":1,"email":"b"},null,null]"#,
            r#"["keyed.deleted",{"id":1},{"id":1},null]"#,
        ]
    );
    // The identity becomes FULL: the list would refuse UPDATE and DELETE, so it goes.
    db.exec("ALTER TABLE keyed REPLICA IDENTITY FULL").await;
    let start = Instant::now();
    while attnames("keyed").await != "id,email,secret" {
        assert!(start.elapsed() < Duration::from_secs(3), "column list kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.exec("INSERT INTO keyed VALUES (2, 'c', 's3'); UPDATE keyed SET email = 'd' WHERE id = 2")
        .await;
    let updated = wait_for(&receiver, Duration::from_secs(10), |r| {
        r.json["type"] == "keyed.updated" && r.json["data"]["id"] == 2
    })
    .await;
    assert_eq!(
        updated.json["previous"],
        serde_json::json!({"id": 2, "email": "c"})
    );
    daemon.stop().await;
}

/// Unknown columns and both lists at once are refused with messages naming them.
#[tokio::test]
async fn unknown_columns_are_refused() {
    let db = database("payload_unknown_columns", CaptureMode::Replication).await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, a text)").await;
    let error = |sql: &'static str| {
        let db = &db;
        async move {
            let e = db.client.batch_execute(sql).await.unwrap_err();
            e.as_db_error().unwrap().message().to_owned()
        }
    };
    assert_eq!(
        error("SELECT walhook.watch('t', exclude_columns => '{a,nope}')").await,
        "walhook.watch: table public.t has no column nope"
    );
    assert_eq!(
        error("SELECT walhook.watch('t', columns => '{Id}')").await,
        "walhook.watch: table public.t has no column \"Id\""
    );
    assert_eq!(
        error("SELECT walhook.watch('t', columns => '{id}', exclude_columns => '{a}')").await,
        "walhook.watch: pass columns or exclude_columns, not both"
    );
    assert_eq!(
        error("SELECT walhook.watch('t', columns => '{}')").await,
        "walhook.watch: columns must name at least one column of public.t"
    );
}
