//! Row filters (`walhook.watch(..., "where" => ...)`): rows outside never reach the stream or
//! the outbox; an UPDATE across the filter's edge becomes `created` or `deleted`, as
//! PostgreSQL's publication row filters make it, in both capture modes.

use std::time::Duration;

use walhook::config::CaptureMode;

use super::{config_in, database, outbox, shapes};
use crate::support::daemon::Daemon;
use crate::support::receiver::Receiver;

const WRITES: &str = "
INSERT INTO orders VALUES (1, 1, 10), (2, 0, 20);
UPDATE orders SET amount = 11 WHERE id = 1;
UPDATE orders SET amount = 21 WHERE id = 2;
UPDATE orders SET tenant_id = 0 WHERE id = 1;
UPDATE orders SET tenant_id = 3 WHERE id = 2;
DELETE FROM orders WHERE id = 1;
DELETE FROM orders WHERE id = 2;";

async fn row_filter(test: &str, mode: CaptureMode) {
    let db = database(test, mode).await;
    let receiver = Receiver::start().await;
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, tenant_id int, amount numeric);
         SELECT walhook.watch('orders', \"where\" => 'tenant_id <> 0');",
    )
    .await;
    let stored: String = db
        .client
        .query_one("SELECT row_filter FROM walhook.watched_tables", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "(tenant_id <> 0)");
    db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{orders.*}}')",
        receiver.url
    ))
    .await;
    let daemon = if mode == CaptureMode::Trigger {
        db.exec(WRITES).await;
        let ops: Vec<String> = outbox(&db).await.into_iter().map(|r| r.0).collect();
        assert_eq!(ops, ["INSERT", "UPDATE", "DELETE", "INSERT", "DELETE"]);
        Daemon::start(&db, config_in(&db, mode)).await
    } else {
        let daemon = Daemon::start(&db, config_in(&db, mode)).await;
        let filter: String = db
            .client
            .query_one(
                "SELECT rowfilter FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'orders'",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(filter, "(tenant_id <> 0)");
        db.exec(WRITES).await;
        daemon
    };
    // A last row through the filter, so that nothing can still be on its way.
    db.exec("INSERT INTO orders VALUES (9, 9, 9)").await;
    let got = receiver.wait_delivered(6, Duration::from_secs(20)).await;
    assert_eq!(
        shapes(&got),
        vec![
            r#"["orders.created",{"id":1,"tenant_id":1,"amount":10},null,null]"#,
            r#"["orders.updated",{"id":1,"tenant_id":1,"amount":11},{"id":1,"tenant_id":1,"amount":10},["amount"]]"#,
            r#"["orders.deleted",{"id":1,"tenant_id":1,"amount":11},{"id":1,"tenant_id":1,"amount":11},null]"#,
            r#"["orders.created",{"id":2,"tenant_id":3,"amount":21},null,null]"#,
            r#"["orders.deleted",{"id":2,"tenant_id":3,"amount":21},{"id":2,"tenant_id":3,"amount":21},null]"#,
            r#"["orders.created",{"id":9,"tenant_id":9,"amount":9},null,null]"#,
        ]
    );
    // Invalid predicates: PostgreSQL's own message.
    for (predicate, message) in [
        ("nonexist > 1", "column \"nonexist\" does not exist"),
        ("random() > 0.5", "invalid publication WHERE expression"),
        (
            "tenant_id <> 0; DROP TABLE orders",
            "walhook.watch: \"where\" must be one SQL predicate, without \";\"",
        ),
    ] {
        let e = db
            .client
            .batch_execute(&format!(
                "SELECT walhook.watch('orders', \"where\" => '{predicate}')"
            ))
            .await
            .unwrap_err();
        assert_eq!(e.as_db_error().unwrap().message(), message, "{predicate}");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn row_filter_keeps_rows_out_in_replication_mode() {
    row_filter("payload_rows_replication", CaptureMode::Replication).await;
}

#[tokio::test]
async fn row_filter_keeps_rows_out_in_trigger_mode() {
    row_filter("payload_rows_trigger", CaptureMode::Trigger).await;
}

/// Without REPLICA IDENTITY FULL, a filter on a column outside the key is refused: once
/// published, PostgreSQL would refuse the table's UPDATE and DELETE.
#[tokio::test]
async fn row_filter_outside_the_identity_is_refused() {
    let db = database("payload_rows_identity", CaptureMode::Replication).await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, tenant_id int)")
        .await;
    let e = db
        .client
        .batch_execute(
            "SELECT walhook.watch('t', full_identity => false, \"where\" => 'tenant_id <> 0')",
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "walhook.watch: the row filter of public.t uses tenant_id, which is not part of its replica identity, so PostgreSQL would refuse the table's UPDATE and DELETE"
    );
    db.exec("SELECT walhook.watch('t', full_identity => false, \"where\" => 'id > 0')")
        .await;
}
