//! Routing cost per event with 1 subscription vs 1 + 10,000 non-matching ones (of other
//! event types), and vs 1 + 10,000 of the same event type whose filters do not match.
//!
//! `cargo bench --bench routing`. Builds 100,000 `orders.created` events (distinct rows) and
//! routes each through the index (the same-type case: the first 2,000 of them, as each
//! event then runs 10,000 filters); prints events/s and ns/event per case.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use walhook::change::{CommitTime, Op, Origin, Position, RowChange, Table};
use walhook::events::{Event, Watch};
use walhook::lsn::Lsn;
use walhook::subscriptions::routing::RoutingIndex;
use walhook::subscriptions::store::{Subscription, WatchedTable};

const EVENTS: usize = 100_000;

fn subscription(target: String, events: &[&str], filter: serde_json::Value) -> Subscription {
    Subscription {
        id: uuid::Uuid::new_v4(),
        owner: None,
        events: events.iter().map(|e| e.to_string()).collect(),
        target_url: target,
        filter,
        secret: "whsec_x".into(),
        headers: json!({}),
        context: None,
        active: true,
        expires_at: None,
        batch_max: None,
        batch_window_ms: 0,
        http2: false,
    }
}

fn tables() -> Vec<WatchedTable> {
    (0..100)
        .map(|i| format!("t{i}"))
        .chain(["orders".to_string(), "invoices".to_string()])
        .map(|noun| WatchedTable {
            schema_name: "public".into(),
            table_name: noun.clone(),
            noun,
            verbs: vec!["created".into(), "updated".into(), "deleted".into()],
            relid: None,
            column_list: None,
            exclude_columns: Vec::new(),
            row_filter: None,
        })
        .collect()
}

fn events() -> Vec<Event> {
    let table = Arc::new(Table {
        id: 1,
        schema: "public".into(),
        name: "orders".into(),
        columns: vec!["id".into(), "workspace_id".into(), "status".into()],
        key: vec!["id".into()],
    });
    let watch = Watch {
        noun: "orders".into(),
        verbs: vec!["created".into()],
        ..Watch::default()
    };
    (0..EVENTS)
        .map(|i| {
            let change = RowChange {
                position: Position {
                    commit_lsn: Lsn(i as u64),
                    index: 0,
                },
                xid: 1,
                commit_time: CommitTime(0),
                table: table.clone(),
                op: Op::Insert,
                new: json!({"id": i, "workspace_id": 42, "status": "new"})
                    .as_object()
                    .cloned(),
                old: None,
                unchanged_toast: vec![],
                origin: Origin::Replication,
            };
            Event::from_change(change, &watch).expect("created is watched")
        })
        .collect()
}

fn run(name: &str, index: &RoutingIndex, events: &[Event]) -> f64 {
    // Warm up, then measure the best of 5 rounds.
    let mut best = f64::MAX;
    for _ in 0..6 {
        let start = Instant::now();
        let mut routed = 0usize;
        for event in events {
            routed += index.route(black_box(event), 0).count();
        }
        assert_eq!(
            routed,
            events.len(),
            "exactly the one matching subscription"
        );
        best = best.min(start.elapsed().as_secs_f64());
    }
    let ns = best * 1e9 / events.len() as f64;
    println!("| {name} | {:.0} | {ns:.0} |", events.len() as f64 / best);
    ns
}

fn main() {
    let events = events();
    println!("| subscriptions | events/s | ns/event |\n|---|---|---|");
    let hit = || {
        subscription(
            "https://hit.test/".into(),
            &["orders.created"],
            json!({"workspace_id": 42}),
        )
    };
    let one = RoutingIndex::build(tables(), vec![hit()]);
    let base = run("1 matching", &one, &events);
    let mut subs = vec![hit()];
    let patterns = ["invoices.*", "*.deleted", "orders.updated"];
    for i in 0..10_000 {
        let noun_pattern = format!("t{}.created", i % 100);
        let pattern = if i % 4 == 3 {
            noun_pattern.as_str()
        } else {
            patterns[i % 3]
        };
        subs.push(subscription(
            format!("https://n{i}.test/"),
            &[pattern],
            json!({}),
        ));
    }
    let many = RoutingIndex::build(tables(), subs);
    let loaded = run("1 matching + 10,000 non-matching", &many, &events);
    println!("\ncost ratio: {:.3} (target ≤ 1.10)", loaded / base);
    // Same event type, filters that do not match: every one is evaluated.
    let mut same = vec![hit()];
    for i in 0..10_000 {
        let filter = match i % 5 {
            0 => json!({"workspace_id": 1000 + i}),
            1 => json!({"workspace_id": {"gt": 1000 + i}}),
            2 => json!({"status": {"in": ["paid", "refunded"]}}),
            3 => json!({"status": {"prefix": "pa"}, "workspace_id": 42}),
            _ => json!({"$changed": ["status"]}),
        };
        same.push(subscription(
            format!("https://s{i}.test/"),
            &["orders.created"],
            filter,
        ));
    }
    let same = RoutingIndex::build(tables(), same);
    let filtered = run(
        "1 matching + 10,000 of the same type, filters not matching",
        &same,
        &events[..2_000],
    );
    println!(
        "\nper non-matching filter: {:.1} ns",
        (filtered - base) / 10_000.0
    );
}
