//! Watching a table, then writing to it, yields the exact SPEC §2 envelopes, routed by the
//! subscriptions stored in the database.

use serde_json::{Value, json};
use walhook::events::Event;
use walhook::subscriptions::routing::RoutingIndex;
use walhook::subscriptions::store;

use crate::support::TestDb;
use crate::support::capture::{Tap, config};

#[tokio::test]
async fn watched_table_changes_become_spec_envelopes_routed_by_subscriptions() {
    let db = TestDb::new("envelope").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec("CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2))")
        .await;
    let mut tap = Tap::start(config(&db, &[])).await; // creates the (empty) publication
    db.exec(
        "SELECT walhook.watch('orders');
         SELECT walhook.subscribe('https://a.test/all', '{orders.*}', context => 'ctx-a');
         SELECT walhook.subscribe('https://b.test/paid', '{orders.updated}', filter => '{\"status\": [\"paid\", \"refunded\"]}');
         SELECT walhook.subscribe('https://c.test/gone', '{*.deleted}', filter => '{\"id\": 42}');
         SELECT walhook.subscribe('https://d.test/off', '{*}');
         UPDATE walhook.subscriptions SET active = false WHERE target_url = 'https://d.test/off';",
    )
    .await;
    db.exec("INSERT INTO orders VALUES (42, 'new', 12.50)")
        .await;
    db.exec("UPDATE orders SET status = 'paid' WHERE id = 42")
        .await;
    db.exec("DELETE FROM orders WHERE id = 42").await;
    let changes = tap.changes(3).await;

    let mut conn = store::connect(&db.database()).await.unwrap();
    let (tables, subs) = store::load_routing(&mut conn).await.unwrap();
    let index = RoutingIndex::build(tables, subs);
    assert_eq!(
        index.event_types(),
        vec!["orders.created", "orders.deleted", "orders.updated"]
    );
    let now = chrono::Utc::now().timestamp_micros();
    let mut bodies = Vec::new();
    for change in &changes {
        let watch = index
            .watch(&change.table.schema, &change.table.name)
            .expect("watched");
        let event = Event::from_change(change.clone(), watch).expect("verb produced");
        let targets: Vec<(String, Value)> = index
            .route(&event, now)
            .map(|r| {
                let s = &r.subscription;
                let body = event.body(s.context.as_deref());
                (
                    s.target_url.clone(),
                    serde_json::from_slice(&body).expect("JSON body"),
                )
            })
            .collect();
        bodies.push(targets);
    }
    let lsn = |i: usize| changes[i].position.commit_lsn.to_string();
    let id = |i: usize| format!("evt_{:016X}_0", changes[i].position.commit_lsn.0);
    let ts = |i: usize| changes[i].commit_time.to_rfc3339();
    let row = |status: &str| -> Value {
        serde_json::from_str(&format!(
            r#"{{"id": 42, "status": "{status}", "amount": 12.50}}"#
        ))
        .unwrap()
    };
    let source = |i: usize| json!({"schema": "public", "table": "orders", "lsn": lsn(i), "xid": changes[i].xid, "mode": "replication"});
    let envelope = |i: usize,
                    kind: &str,
                    data: Value,
                    previous: Value,
                    changed: Value,
                    context: Value| {
        json!({"id": id(i), "type": kind, "timestamp": ts(i), "data": data, "previous": previous,
               "changed": changed, "source": source(i), "context": context})
    };
    assert_eq!(
        bodies[0],
        vec![(
            "https://a.test/all".to_string(),
            envelope(
                0,
                "orders.created",
                row("new"),
                Value::Null,
                Value::Null,
                json!("ctx-a")
            )
        )]
    );
    let updated = |context: Value| {
        envelope(
            1,
            "orders.updated",
            row("paid"),
            row("new"),
            json!(["status"]),
            context,
        )
    };
    let mut got = bodies[1].clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("https://a.test/all".to_string(), updated(json!("ctx-a"))),
            ("https://b.test/paid".to_string(), updated(Value::Null)),
        ]
    );
    let deleted = |context: Value| {
        envelope(
            2,
            "orders.deleted",
            row("paid"),
            row("paid"),
            Value::Null,
            context,
        )
    };
    let mut got = bodies[2].clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("https://a.test/all".to_string(), deleted(json!("ctx-a"))),
            ("https://c.test/gone".to_string(), deleted(Value::Null)),
        ]
    );
    // The body serialises with the exact numeric text.
    assert!(bodies[0][0].1.to_string().contains(r#""amount":12.50"#));
    tap.stop().await;
}
