//! Default event nouns for any table name, and the error when two tables would share one.

use std::time::Duration;

use walhook::subscriptions::store;

use crate::support::TestDb;
use crate::support::daemon::{Daemon, FAST_RETRIES, config};
use crate::support::receiver::Receiver;

#[tokio::test]
async fn default_nouns_fold_any_table_name() {
    let db = TestDb::new("nouns_fold").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    let rows = db
        .client
        .query(
            "SELECT walhook.default_noun(n) FROM unnest($1::text[]) WITH ORDINALITY u(n, i) ORDER BY i",
            &[&vec![
                "Order Items",
                "orders",
                "__Weird--Name__",
                "2024 Sales",
                "a  b",
                "???",
                "Ünits",
            ]],
        )
        .await
        .unwrap();
    let nouns: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        nouns,
        vec![
            Some("order_items".to_owned()),
            Some("orders".to_owned()),
            Some("weird_name".to_owned()),
            Some("t_2024_sales".to_owned()),
            Some("a_b".to_owned()),
            None,
            Some("nits".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_quoted_mixed_case_table_gets_a_default_noun_and_collisions_name_both_tables() {
    let db = TestDb::new("nouns_quoted").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec(r#"CREATE SCHEMA "Sales"; CREATE TABLE "Sales"."Order Items" (id int PRIMARY KEY);"#)
        .await;
    let row = db
        .client
        .query_one(
            r#"SELECT noun, schema_name, table_name FROM walhook.watch('"Sales"."Order Items"')"#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        (
            "order_items".to_owned(),
            "Sales".to_owned(),
            "Order Items".to_owned()
        )
    );
    db.exec("CREATE TABLE order_items (id int PRIMARY KEY)")
        .await;
    let err = db
        .client
        .batch_execute("SELECT walhook.watch('order_items')")
        .await
        .unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(
        db_err.message(),
        r#"walhook.watch: noun 'order_items' of table public.order_items is already used by table "Sales"."Order Items"; pass another noun => 'public_order_items'"#
    );
    assert_eq!(
        db_err.hint(),
        Some("e.g. walhook.watch('public.order_items', noun => 'public_order_items')")
    );
    assert_eq!(db_err.code().code(), "23505");
    // The suggested noun works.
    db.exec("SELECT walhook.watch('order_items', noun => 'public_order_items')")
        .await;
    let err = db
        .client
        .batch_execute(r#"CREATE TABLE "???" (id int); SELECT walhook.watch('"???"')"#)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().message(),
        r#"walhook.watch: noun (none: the table name has no letter or digit) of table public."???" must be lower-case letters, digits and _, starting with a letter; pass noun => '...'"#
    );
}

#[tokio::test]
async fn a_configured_table_with_spaces_and_capitals_is_watched_and_delivered() {
    let db = TestDb::new("nouns_config").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    db.exec(r#"CREATE SCHEMA "Sales"; CREATE TABLE "Sales"."Order Items" (id int PRIMARY KEY, "Qty" int);"#)
        .await;
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{order_items.created}}')",
        receiver.url
    ))
    .await;
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &["Sales.Order Items"])).await;
    db.exec(r#"INSERT INTO "Sales"."Order Items" VALUES (1, 5)"#)
        .await;
    let got = receiver.wait_delivered(1, Duration::from_secs(20)).await;
    daemon.stop().await;
    let body = &got[0].json;
    assert_eq!(body["type"], "order_items.created");
    assert_eq!(body["data"], serde_json::json!({"id": 1, "Qty": 5}));
    assert_eq!(body["source"]["schema"], "Sales");
    assert_eq!(body["source"]["table"], "Order Items");
    let watched = db
        .client
        .query_one(
            "SELECT schema_name, table_name, noun FROM walhook.watched_tables",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            watched.get::<_, String>(0),
            watched.get::<_, String>(1),
            watched.get::<_, String>(2)
        ),
        (
            "Sales".to_owned(),
            "Order Items".to_owned(),
            "order_items".to_owned()
        )
    );
}
