//! Trigger capture needs no grants: `walhook.capture_row` is SECURITY DEFINER, so an
//! application role with rights on its own table only writes it and its changes are
//! delivered, while it can neither read nor write `walhook.outbox`.

use std::time::Duration;

use walhook::config::CaptureMode;
use walhook::subscriptions::store;

use super::{connect_as, failure, login_role};
use crate::support::TestDb;
use crate::support::daemon::{Daemon, FAST_RETRIES, config};
use crate::support::receiver::Receiver;

#[tokio::test]
async fn an_application_role_with_only_its_table_writes_and_is_delivered() {
    let db = TestDb::replica("grants_trigger").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    let app = login_role(&db, "app", "").await;
    let receiver = Receiver::start().await;
    db.exec(&format!(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.items (id int PRIMARY KEY, name text);
         GRANT USAGE ON SCHEMA shop TO {app};
         GRANT ALL ON shop.items TO {app};
         SELECT walhook.watch('shop.items');
         SELECT walhook.subscribe('{}', '{{items.*}}');",
        receiver.url
    ))
    .await;
    let mut config = config(&db, FAST_RETRIES, &[]);
    config.capture.mode = CaptureMode::Trigger;
    config.capture.trigger_poll_ms = 200;
    let daemon = Daemon::start(&db, config).await;

    let writer = connect_as(&db, &app).await;
    writer
        .batch_execute(
            "INSERT INTO shop.items VALUES (1, 'a');
             UPDATE shop.items SET name = 'b' WHERE id = 1;",
        )
        .await
        .unwrap();
    let got = receiver.wait_delivered(2, Duration::from_secs(20)).await;
    let seen: Vec<String> = got
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r.json["type"],
                r.json["source"]["schema"],
                r.json["source"]["table"],
                r.json["data"]
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            r#""items.created" "shop" "items" {"id":1,"name":"a"}"#,
            r#""items.updated" "shop" "items" {"id":1,"name":"b"}"#,
        ]
    );
    daemon.stop().await;

    let row = db
        .client
        .query_one(
            "SELECT has_table_privilege($1, 'walhook.outbox', 'INSERT'),
                    has_table_privilege($1, 'walhook.outbox', 'SELECT'),
                    has_schema_privilege($1, 'walhook', 'USAGE'),
                    has_function_privilege($1, 'walhook.capture_row()', 'EXECUTE')",
            &[&app],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2),
            row.get::<_, bool>(3)
        ),
        (false, false, false, false)
    );
    for sql in [
        "INSERT INTO walhook.outbox (schema_name, table_name, op, new_row) VALUES ('shop', 'items', 'INSERT', '{\"id\": 9}')",
        "SELECT * FROM walhook.outbox",
    ] {
        assert_eq!(
            failure(&writer, sql).await,
            (
                "42501".to_owned(),
                "permission denied for schema walhook".to_owned()
            ),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn capture_refuses_rows_a_user_defined_json_cast_would_render() {
    let db = TestDb::replica("grants_cast").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    let owner = login_role(&db, "owner", "").await;
    db.exec(&format!(
        "CREATE SCHEMA app AUTHORIZATION {owner};
         SELECT walhook.set_capture_mode('trigger');"
    ))
    .await;
    let o = connect_as(&db, &owner).await;
    o.batch_execute(&format!(
        "CREATE TYPE app.mood AS ENUM ('ok');
         CREATE TABLE app.t (id int PRIMARY KEY, m app.mood);
         CREATE FUNCTION app.mood_json(app.mood) RETURNS json LANGUAGE plpgsql AS $$
         BEGIN EXECUTE 'ALTER ROLE {owner} SUPERUSER'; RETURN '1'; END $$;
         CREATE CAST (app.mood AS json) WITH FUNCTION app.mood_json(app.mood);"
    ))
    .await
    .unwrap();
    db.exec("SELECT walhook.watch('app.t')").await;
    assert_eq!(
        failure(&o, "INSERT INTO app.t VALUES (1, 'ok')").await,
        (
            "42501".to_owned(),
            "walhook.capture_row: app.t has a column of a user-defined type and the database has a \
             user-defined cast to json, which capture would run with walhook's rights"
                .to_owned()
        )
    );
    let superuser: bool = db
        .client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser);
}
