//! Change shapes: operations, old images, transactions, TOAST, DDL mid-stream.

use std::time::Duration;

use serde_json::{Value, json};
use walhook::change::{CaptureMessage, Op};

use crate::support::TestDb;
use crate::support::capture::{Tap, config};

fn obj(value: Value) -> Option<serde_json::Map<String, Value>> {
    value.as_object().cloned()
}

/// JSON from text, so numbers keep their exact digits (`12.50` stays `12.50`).
fn exact(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn insert_update_delete_truncate_decode_exactly() {
    let db = TestDb::new("ops").await;
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2));
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )
    .await;
    let mut tap = Tap::start(config(&db, &["orders"])).await;
    db.exec("INSERT INTO orders VALUES (42, 'new', 12.5)").await;
    db.exec("UPDATE orders SET status = 'paid' WHERE id = 42")
        .await;
    db.exec("DELETE FROM orders WHERE id = 42").await;
    db.exec("TRUNCATE orders").await;
    let c = tap.changes(4).await;
    let new = exact(r#"{"id": 42, "status": "new", "amount": 12.50}"#);
    let paid = exact(r#"{"id": 42, "status": "paid", "amount": 12.50}"#);
    assert_eq!(
        (c[0].op, &c[0].new, &c[0].old),
        (Op::Insert, &obj(new.clone()), &None)
    );
    assert_eq!(
        (c[1].op, &c[1].new, &c[1].old),
        (Op::Update, &obj(paid.clone()), &obj(new))
    );
    assert_eq!(
        (c[2].op, &c[2].new, &c[2].old),
        (Op::Delete, &None, &obj(paid))
    );
    assert_eq!(
        (c[3].op, &c[3].new, &c[3].old),
        (Op::Truncate, &None, &None)
    );
    assert_eq!(c[0].new.as_ref().unwrap()["amount"].to_string(), "12.50");
    for change in &c {
        assert_eq!(change.table.schema, "public");
        assert_eq!(change.table.name, "orders");
        assert_eq!(change.table.key, vec!["id".to_string()]);
        assert_eq!(change.position.index, 0, "one change per transaction");
        assert!(change.unchanged_toast.is_empty());
    }
    assert!(
        c.windows(2)
            .all(|w| w[0].position.commit_lsn < w[1].position.commit_lsn)
    );
    tap.stop().await;
}

#[tokio::test]
async fn a_transaction_is_framed_and_its_changes_numbered() {
    let db = TestDb::new("frame").await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, label text)")
        .await;
    let mut tap = Tap::start(config(&db, &["items"])).await;
    db.exec("BEGIN; INSERT INTO items VALUES (1, 'a'); INSERT INTO items VALUES (2, 'b'); COMMIT;")
        .await;
    let xid: i64 = db
        .client
        .query_one("SELECT xmin::text::bigint FROM items WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    let mut messages = Vec::new();
    while messages.len() < 4 {
        messages.push(tap.next(Duration::from_secs(30)).await.expect("message"));
    }
    let CaptureMessage::Begin(begin) = &messages[0] else {
        panic!("{:?}", messages[0])
    };
    let CaptureMessage::Commit(commit) = &messages[3] else {
        panic!("{:?}", messages[3])
    };
    assert_eq!(i64::from(begin.xid), xid);
    assert_eq!(
        (commit.xid, commit.commit_lsn, commit.changes),
        (begin.xid, begin.commit_lsn, 2)
    );
    assert!(commit.end_lsn > commit.commit_lsn);
    for (i, message) in messages[1..3].iter().enumerate() {
        let CaptureMessage::Change(change) = message else {
            panic!("{message:?}")
        };
        assert_eq!(change.position.commit_lsn, begin.commit_lsn);
        assert_eq!(change.position.index, i as u32);
        assert_eq!(change.xid, begin.xid);
        assert_eq!(change.commit_time, begin.commit_time);
        assert_eq!(change.new.as_ref().unwrap()["id"], json!(i + 1));
    }
    tap.stop().await;
}

#[tokio::test]
async fn default_identity_sends_keys_only_and_unchanged_toast_is_never_null() {
    let db = TestDb::new("toast").await;
    db.exec(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE docs_full REPLICA IDENTITY FULL;
         INSERT INTO docs VALUES (1, 'a', repeat('x', 20000));
         INSERT INTO docs_full VALUES (1, 'a', repeat('y', 20000));",
    )
    .await;
    let mut tap = Tap::start(config(&db, &["docs", "docs_full"])).await;
    db.exec("UPDATE docs SET title = 'b' WHERE id = 1").await;
    db.exec("UPDATE docs_full SET title = 'b' WHERE id = 1")
        .await;
    db.exec("DELETE FROM docs WHERE id = 1").await;
    let c = tap.changes(3).await;
    // DEFAULT identity: the unchanged TOASTed body is reported as unchanged, never null.
    assert_eq!(c[0].new, obj(json!({"id": 1, "title": "b"})));
    assert_eq!(c[0].unchanged_toast, vec!["body".to_string()]);
    assert_eq!(c[0].old, None);
    // FULL identity: the old row is complete and the new row's body is filled in from it.
    let body = "y".repeat(20000);
    assert_eq!(c[1].old, obj(json!({"id": 1, "title": "a", "body": body})));
    assert_eq!(c[1].new, obj(json!({"id": 1, "title": "b", "body": body})));
    assert!(c[1].unchanged_toast.is_empty());
    // DEFAULT identity delete: key columns only.
    assert_eq!(c[2].old, obj(json!({"id": 1})));
    tap.stop().await;
}

#[tokio::test]
async fn add_column_mid_stream_shows_in_later_rows() {
    let db = TestDb::new("ddl").await;
    db.exec("CREATE TABLE evolving (id int PRIMARY KEY, a text)")
        .await;
    let mut tap = Tap::start(config(&db, &["evolving"])).await;
    db.exec("INSERT INTO evolving VALUES (1, 'before')").await;
    db.exec("ALTER TABLE evolving ADD COLUMN extra jsonb DEFAULT '{\"v\": 1}'")
        .await;
    db.exec("INSERT INTO evolving VALUES (2, 'after')").await;
    db.exec("UPDATE evolving SET a = 'touched' WHERE id = 1")
        .await;
    let c = tap.changes(3).await;
    assert_eq!(c[0].new, obj(json!({"id": 1, "a": "before"})));
    assert_eq!(
        c[1].new,
        obj(json!({"id": 2, "a": "after", "extra": {"v": 1}}))
    );
    assert_eq!(
        c[2].new,
        obj(json!({"id": 1, "a": "touched", "extra": {"v": 1}}))
    );
    assert_eq!(c[1].table.columns, vec!["id", "a", "extra"]);
    tap.stop().await;
}

#[tokio::test]
async fn unwatched_tables_and_other_databases_yield_nothing() {
    let db = TestDb::new("quiet").await;
    db.exec("CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY);")
        .await;
    let mut tap = Tap::start(config(&db, &["watched"])).await;
    db.exec("INSERT INTO other VALUES (1)").await;
    tap.assert_quiet(Duration::from_millis(500)).await;
    db.exec("INSERT INTO watched VALUES (7)").await;
    let c = tap.changes(1).await;
    assert_eq!(c[0].new, obj(json!({"id": 7})));
    tap.stop().await;
}
