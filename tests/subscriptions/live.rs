//! The daemon's routing index follows plain SQL within a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use walhook::change::{CommitTime, Op, Origin, Position, RowChange, Table};
use walhook::events::{Event, Watch};
use walhook::lsn::Lsn;
use walhook::subscriptions::live::LiveRouting;
use walhook::subscriptions::store;

use crate::support::TestDb;

fn created_order() -> Event {
    let change = RowChange {
        position: Position {
            commit_lsn: Lsn(1),
            index: 0,
        },
        xid: 1,
        commit_time: CommitTime(0),
        table: Arc::new(Table {
            id: 1,
            schema: "public".into(),
            name: "orders".into(),
            columns: vec!["id".into()],
            key: vec!["id".into()],
        }),
        op: Op::Insert,
        new: json!({"id": 1}).as_object().cloned(),
        old: None,
        unchanged_toast: vec![],
        origin: Origin::Replication,
    };
    let watch = Watch {
        noun: "orders".into(),
        verbs: vec!["created".into()],
        ..Watch::default()
    };
    Event::from_change(change, &watch).unwrap()
}

fn targets(live: &LiveRouting, event: &Event) -> Vec<String> {
    let now = chrono::Utc::now().timestamp_micros();
    let index = live.snapshot();
    index
        .route(event, now)
        .map(|r| r.subscription.target_url.clone())
        .collect()
}

/// Polls until `targets` equals `want`; returns how long it took.
async fn until(live: &LiveRouting, event: &Event, want: &[&str]) -> Duration {
    let start = Instant::now();
    while targets(live, event) != want {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "index never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn plain_sql_changes_reach_the_index_within_a_second() {
    let db = TestDb::new("live").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec("CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');")
        .await;
    let cancel = CancellationToken::new();
    // A long refresh interval: only NOTIFY can make these reloads fast.
    let live = LiveRouting::start(db.database(), Duration::from_secs(60), cancel.clone())
        .await
        .unwrap();
    let event = created_order();
    assert!(targets(&live, &event).is_empty());

    db.exec("INSERT INTO walhook.subscriptions (target_url, events) VALUES ('https://a.test/', '{orders.created}')")
        .await;
    let took = until(&live, &event, &["https://a.test/"]).await;
    assert!(
        took < Duration::from_secs(1),
        "new subscription took {took:?}"
    );

    db.exec("UPDATE walhook.subscriptions SET active = false")
        .await;
    let took = until(&live, &event, &[]).await;
    assert!(took < Duration::from_secs(1), "deactivation took {took:?}");

    db.exec(
        "INSERT INTO walhook.subscriptions (target_url, events, expires_at) \
         VALUES ('https://soon.test/', '{*}', now() + interval '1500 ms')",
    )
    .await;
    until(&live, &event, &["https://soon.test/"]).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        targets(&live, &event).is_empty(),
        "an expired subscription matched"
    );

    // Unwatching the table removes its event types.
    db.exec("SELECT walhook.unwatch('orders')").await;
    let start = Instant::now();
    while !live.snapshot().event_types().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(1), "unwatch not seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
}
