//! CVE-2018-1058 traps: a role with CREATE on `public` plants functions and operators that
//! would be picked over pg_catalog's (exact argument types beat polymorphic or coerced ones)
//! and record every call, trying to make their planter superuser. Subscribing, watching,
//! validating and capturing by trigger, through SQL, the API and replication, run none.

use std::time::Duration;

use serde_json::json;
use walhook::subscriptions::store;

use super::{connect_as, login_role};
use crate::support::TestDb;
use crate::support::api::ApiFixture;
use crate::support::receiver::Receiver;

/// Plants the traps as a fresh non-superuser role with CREATE on `public`; returns its name.
/// `row_type` is a table whose `to_jsonb(row)` gets a trap too.
async fn plant(db: &TestDb, row_type: &str) -> String {
    let role = login_role(db, "trapper", "").await;
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO {role}"))
        .await;
    let trapper = connect_as(db, &role).await;
    trapper
        .batch_execute(&format!(
            r#"
CREATE TABLE public.trap_calls (what text, by_role text);
GRANT INSERT ON public.trap_calls TO PUBLIC;
-- A sequence records calls even in transactions that roll back.
CREATE SEQUENCE public.trap_seq;
GRANT USAGE ON SEQUENCE public.trap_seq TO PUBLIC;
CREATE FUNCTION public.trap(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.nextval('public.trap_seq');
    INSERT INTO public.trap_calls VALUES (what, current_user);
    BEGIN
        EXECUTE 'ALTER ROLE {role} SUPERUSER';
    EXCEPTION WHEN others THEN NULL;
    END;
END $$;
CREATE FUNCTION public.cardinality(a text[]) RETURNS int LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('cardinality(text[])'); RETURN pg_catalog.cardinality(a); END $$;
CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION public.array_to_string(a text[], sep text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('array_to_string(text[],text)'); RETURN pg_catalog.array_to_string(a, sep); END $$;
CREATE FUNCTION public.trap_eq_int4(a oid, b int4) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('=(oid,int4)'); RETURN a OPERATOR(pg_catalog.=) b::oid; END $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = int4, FUNCTION = public.trap_eq_int4);
CREATE FUNCTION public.trap_eq_regclass(a oid, b regclass) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('=(oid,regclass)'); RETURN a OPERATOR(pg_catalog.=) b::oid; END $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.trap_eq_regclass);
CREATE FUNCTION public.trap_contained(a text[], b text[]) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('<@(text[],text[])'); RETURN a OPERATOR(pg_catalog.<@) b; END $$;
CREATE OPERATOR public.<@ (LEFTARG = text[], RIGHTARG = text[], FUNCTION = public.trap_contained);
CREATE FUNCTION public.to_jsonb(r public.{row_type}) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN PERFORM public.trap('to_jsonb({row_type})'); RETURN '{{"forged": true}}'; END $$;
"#
        ))
        .await
        .unwrap();
    role
}

/// (calls recorded, sequence ever called, planter is superuser).
async fn sprung(db: &TestDb, role: &str) -> (i64, bool, bool) {
    let calls: i64 = db
        .client
        .query_one("SELECT pg_catalog.count(*) FROM public.trap_calls", &[])
        .await
        .unwrap()
        .get(0);
    let called: bool = db
        .client
        .query_one("SELECT is_called FROM public.trap_seq", &[])
        .await
        .unwrap()
        .get(0);
    let superuser: bool = db
        .client
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1::text",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    (calls, called, superuser)
}

/// The traps work: an unpinned query of the planter's own picks them.
async fn control(db: &TestDb, role: &str) {
    let trapper = connect_as(db, role).await;
    let n: i32 = trapper
        .query_one("SELECT cardinality(ARRAY['a', 'b'])", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let (calls, called, superuser) = sprung(db, role).await;
    assert_eq!((calls, called, superuser), (1, true, false), "control");
}

#[tokio::test]
async fn planted_traps_never_run_in_sql_watch_validation_or_trigger_capture() {
    let db = TestDb::new("traps_sql").await;
    db.exec(
        "CREATE TABLE public.items (id int PRIMARY KEY, name text, tags text[]);
         CREATE TABLE public.\"Mixed Case\" (id int PRIMARY KEY);",
    )
    .await;
    let role = plant(&db, "items").await;
    // Planted before walhook is installed: migrate itself runs none either.
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec(&format!("CREATE PUBLICATION {}", db.name)).await;
    db.exec(
        "SELECT walhook.watch('items', verbs => '{created,updated,deleted,truncated}');
         SELECT walhook.watch('\"Mixed Case\"', noun => 'mixed');
         SELECT walhook.subscribe('https://example.test/a', '{items.*,mixed.created}',
             headers => '{\"x-team\": \"a\"}', filter => '{\"id\": [1, 2]}');
         SELECT walhook.subscribe('https://example.test/b', '{*}', owner => 'acme');
         UPDATE walhook.subscriptions SET events = '{items.created}' WHERE owner = 'acme';
         SELECT walhook.set_capture_mode('trigger');
         INSERT INTO items VALUES (1, 'a', '{x}'), (2, 'b', '{}');
         UPDATE items SET name = 'a2' WHERE id = 1;
         DELETE FROM items WHERE id = 2;
         INSERT INTO \"Mixed Case\" VALUES (7);
         SELECT walhook.unsubscribe('https://example.test/a');
         SELECT walhook.redeliver();",
    )
    .await;
    // Qualified names under the pinned path: both tables are published and captured.
    let published: Vec<String> = db
        .client
        .query(
            "SELECT tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname OPERATOR(pg_catalog.=) $1::text ORDER BY 1",
            &[&db.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, vec!["Mixed Case", "items"]);
    let outbox: Vec<(String, String, Option<String>)> = db
        .client
        .query(
            "SELECT table_name, op, new_row::text FROM walhook.outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let row = |table: &str, op: &str, new: Option<&str>| {
        (table.to_owned(), op.to_owned(), new.map(str::to_owned))
    };
    assert_eq!(
        outbox,
        vec![
            row(
                "items",
                "INSERT",
                Some(r#"{"id": 1, "name": "a", "tags": ["x"]}"#)
            ),
            row(
                "items",
                "INSERT",
                Some(r#"{"id": 2, "name": "b", "tags": []}"#)
            ),
            row(
                "items",
                "UPDATE",
                Some(r#"{"id": 1, "name": "a2", "tags": ["x"]}"#)
            ),
            row("items", "DELETE", None),
            row("Mixed Case", "INSERT", Some(r#"{"id": 7}"#)),
        ]
    );
    db.exec(
        "SELECT walhook.set_capture_mode('replication');
         SELECT walhook.unwatch('\"Mixed Case\"'); SELECT walhook.unwatch('items');",
    )
    .await;
    assert_eq!(sprung(&db, &role).await, (0, false, false));
    control(&db, &role).await;
}

#[tokio::test]
async fn planted_traps_never_run_through_the_api() {
    let f = ApiFixture::start("traps_api", |_| {}).await;
    let role = plant(&f.db, "orders").await;
    let receiver = Receiver::start().await;
    receiver.echo_challenges(true);
    let token = f.token("acme", &["orders.*"]).await;
    let created = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(
                json!({"events": ["orders.created", "orders.updated"], "target_url": receiver.url,
                        "headers": {"x-team": "a"}}),
            ),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    let patched = f
        .api
        .call(
            "PATCH",
            &format!("/v1/hooks/{id}"),
            &token,
            Some(json!({"events": ["orders.created"]})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let listed = f.api.call("GET", "/v1/hooks", &token, None).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(sprung(&f.db, &role).await, (0, false, false));
    control(&f.db, &role).await;
}

/// Streaming: every session walhook opens (replication, catalog, pool, LISTEN) pins its
/// search path, and catalog SQL casts, so planted operators never run.
#[tokio::test]
async fn planted_traps_never_run_while_replication_streams() {
    let f = ApiFixture::start("traps_stream", |_| {}).await;
    let role = plant(&f.db, "orders").await;
    let receiver = Receiver::start().await;
    f.db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{orders.*}}')",
        receiver.url
    ))
    .await;
    let reloads = f.api.reloads().await;
    f.api.wait_reload_after(reloads).await;
    // A new relation and new types reach the stream and the catalog session after planting.
    f.db.exec(
        "ALTER TABLE orders ADD COLUMN tags text[], ADD COLUMN at timestamptz;
         INSERT INTO orders VALUES (1, 'new', 1.50, '{a}', '2026-01-01Z');
         UPDATE orders SET status = 'paid' WHERE id = 1;
         DELETE FROM orders WHERE id = 1;",
    )
    .await;
    let got = receiver.wait_delivered(3, Duration::from_secs(20)).await;
    let types: Vec<&str> = got
        .iter()
        .map(|r| r.json["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec!["orders.created", "orders.updated", "orders.deleted"]
    );
    assert_eq!(
        got[0].json["data"].to_string(),
        r#"{"id":1,"status":"new","amount":1.50,"tags":["a"],"at":"2026-01-01T00:00:00+00:00"}"#
    );
    f.daemon.stop().await;
    assert_eq!(sprung(&f.db, &role).await, (0, false, false));
    control(&f.db, &role).await;
}
