//! Subscription filters with operators, `$changed` and `$previous`, against real events in
//! both capture modes; bad filters refused the same way by SQL and by the REST API.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use walhook::config::CaptureMode;

use super::{config_in, database};
use crate::support::api::{Api, ApiFixture, error};
use crate::support::daemon::Daemon;
use crate::support::receiver::Receiver;

const BIG: &str = "12345678901234567890.123456789";

/// (name, events, filter, deliveries expected as "verb id").
fn cases() -> Vec<(
    &'static str,
    &'static str,
    serde_json::Value,
    Vec<&'static str>,
)> {
    let big: serde_json::Value = serde_json::from_str(BIG).unwrap();
    let just_below: serde_json::Value =
        serde_json::from_str("12345678901234567890.123456788").unwrap();
    vec![
        (
            "eq_plain",
            "items.created",
            json!({"status": "paid"}),
            vec!["created 1"],
        ),
        (
            "in_plain",
            "items.created",
            json!({"status": ["paid", "x"]}),
            vec!["created 1"],
        ),
        (
            "eq",
            "items.created",
            json!({"amount": {"eq": 100.50}}),
            vec!["created 1"],
        ),
        (
            "ne",
            "items.created",
            json!({"status": {"ne": "paid"}}),
            vec!["created 2", "created 3"],
        ),
        (
            "gt",
            "items.created",
            json!({"amount": {"gt": 100}}),
            vec!["created 1", "created 2"],
        ),
        (
            "gte",
            "items.created",
            json!({"amount": {"gte": 100.5}}),
            vec!["created 1", "created 2"],
        ),
        (
            "lt",
            "items.created",
            json!({"amount": {"lt": 100.5}}),
            vec!["created 3"],
        ),
        (
            "lte",
            "items.created",
            json!({"amount": {"lte": 100.5}}),
            vec!["created 1", "created 3"],
        ),
        (
            "range",
            "items.created",
            json!({"amount": {"gt": 0, "lt": 101}}),
            vec!["created 1", "created 3"],
        ),
        (
            "in",
            "items.created",
            json!({"id": {"in": [2, 3.0]}}),
            vec!["created 2", "created 3"],
        ),
        (
            "nin",
            "items.created",
            json!({"id": {"nin": [2, 3]}}),
            vec!["created 1"],
        ),
        (
            "null_true",
            "items.created",
            json!({"note": {"null": true}}),
            vec!["created 1", "created 3"],
        ),
        (
            "null_false",
            "items.created",
            json!({"note": {"null": false}}),
            vec!["created 2"],
        ),
        (
            "eq_null",
            "items.created",
            json!({"note": null}),
            vec!["created 1", "created 3"],
        ),
        (
            "ne_on_null",
            "items.created",
            json!({"note": {"ne": "x"}}),
            vec!["created 1", "created 3"],
        ),
        (
            "gt_on_null",
            "items.created",
            json!({"note": {"gt": ""}}),
            vec!["created 2"],
        ),
        (
            "prefix",
            "items.created",
            json!({"status": {"prefix": "pen"}}),
            vec!["created 2"],
        ),
        (
            "big_eq",
            "items.created",
            json!({"amount": big}),
            vec!["created 2"],
        ),
        (
            "big_gt",
            "items.created",
            json!({"amount": {"gt": just_below}}),
            vec!["created 2"],
        ),
        (
            "big_lte",
            "items.created",
            json!({"amount": {"lte": just_below}}),
            vec!["created 1", "created 3"],
        ),
        (
            "ts_eq",
            "items.created",
            json!({"seen": {"eq": "2026-01-02T01:04:05Z"}}),
            vec!["created 1"],
        ),
        (
            "ts_lt",
            "items.created",
            json!({"seen": {"lt": "2026-01-02T03:00:00+02:00"}}),
            vec!["created 2"],
        ),
        (
            "ts_gte",
            "items.created",
            json!({"seen": {"gte": "2026-01-01T20:04:05-05:00"}}),
            vec!["created 1"],
        ),
        (
            "mismatch_gt",
            "items.created",
            json!({"status": {"gt": 5}}),
            vec![],
        ),
        (
            "mismatch_eq",
            "items.created",
            json!({"amount": "100.5"}),
            vec![],
        ),
        (
            "changed_status",
            "items.updated",
            json!({"$changed": ["status"]}),
            vec!["updated 2"],
        ),
        (
            "changed_any",
            "items.updated",
            json!({"$changed": ["note", "status"]}),
            vec!["updated 1", "updated 2"],
        ),
        (
            "changed_none",
            "items.updated",
            json!({"$changed": ["amount"]}),
            vec![],
        ),
        (
            "pending_to_paid",
            "items.updated",
            json!({"status": "paid", "$previous": {"status": "pending"}}),
            vec!["updated 2"],
        ),
        (
            "previous_null",
            "items.*",
            json!({"$previous": {"note": {"null": true}}}),
            vec!["updated 1", "deleted 3"],
        ),
        (
            "previous_deleted",
            "items.deleted",
            json!({"$previous": {"amount": {"lt": 1}}}),
            vec!["deleted 3"],
        ),
        (
            "changed_on_created",
            "items.created",
            json!({"$changed": ["status"]}),
            vec![],
        ),
    ]
}

async fn operators(test: &str, mode: CaptureMode) {
    let db = database(test, mode).await;
    let receiver = Receiver::start().await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, amount numeric, status text, seen timestamptz, note text);
         CREATE TABLE marks (id int PRIMARY KEY);
         SELECT walhook.watch('items'); SELECT walhook.watch('marks');",
    )
    .await;
    let cases = cases();
    for (name, events, filter, _) in &cases {
        db.client
            .execute(
                "SELECT walhook.subscribe($1, ARRAY[$2], filter => $3::text::jsonb, context => $4)",
                &[&receiver.url, events, &filter.to_string(), name],
            )
            .await
            .unwrap();
    }
    db.client
        .execute(
            "SELECT walhook.subscribe($1, '{marks.created}', context => 'sentinel')",
            &[&receiver.url],
        )
        .await
        .unwrap();
    let daemon = Daemon::start(&db, config_in(&db, mode)).await;
    db.exec(&format!(
        "INSERT INTO items VALUES (1, 100.5, 'paid', '2026-01-02 03:04:05+02', NULL);
         INSERT INTO items VALUES (2, {BIG}, 'pending', '2026-01-02 00:00:00+00', 'x');
         INSERT INTO items VALUES (3, 0.5, 'new', NULL, NULL);
         UPDATE items SET note = 'n' WHERE id = 1;
         UPDATE items SET status = 'paid' WHERE id = 2;
         DELETE FROM items WHERE id = 3;
         INSERT INTO marks VALUES (99);"
    ))
    .await;
    let expected: BTreeSet<String> = cases
        .iter()
        .flat_map(|(name, _, _, hits)| hits.iter().map(move |h| format!("{name}: {h}")))
        .chain(["sentinel: created 99".to_owned()])
        .collect();
    let got = receiver
        .wait_delivered(expected.len(), Duration::from_secs(30))
        .await;
    let got: BTreeSet<String> = got
        .iter()
        .map(|r| {
            let b = &r.json;
            let verb = b["type"].as_str().unwrap().split_once('.').unwrap().1;
            format!(
                "{}: {verb} {}",
                b["context"].as_str().unwrap(),
                b["data"]["id"]
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        receiver.delivered().len(),
        expected.len(),
        "no extra deliveries"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn every_operator_against_real_events_in_replication_mode() {
    operators("payload_operators_replication", CaptureMode::Replication).await;
}

#[tokio::test]
async fn every_operator_against_real_events_in_trigger_mode() {
    operators("payload_operators_trigger", CaptureMode::Trigger).await;
}

/// The same bad filter is refused with the same message by SQL and by the REST API (which
/// writes through the same trigger), naming the field and the operator.
#[tokio::test]
async fn bad_filters_are_refused_the_same_way_by_sql_and_the_api() {
    let fixture = ApiFixture::start("payload_bad_filters", |_| {}).await;
    let token = fixture.token("acme", &["orders.*"]).await;
    let api: &Api = &fixture.api;
    let bad = [
        (
            json!({"amount": {"gtt": 100}}),
            "filter: \"amount\": unknown operator \"gtt\" (use eq, ne, gt, gte, lt, lte, in, nin, null or prefix)",
        ),
        (
            json!({"amount": {"in": 5}}),
            "filter: \"amount\": operator \"in\" needs an array, got 5",
        ),
        (
            json!({"amount": {"gt": true}}),
            "filter: \"amount\": operator \"gt\" needs a number or a string, got true",
        ),
        (
            json!({"note": {"null": "yes"}}),
            "filter: \"note\": operator \"null\" needs true or false, got \"yes\"",
        ),
        (
            json!({"status": {"prefix": 1}}),
            "filter: \"status\": operator \"prefix\" needs a string, got 1",
        ),
        (
            json!({"status": {}}),
            "filter: \"status\": an operator object needs at least one of eq, ne, gt, gte, lt, lte, in, nin, null, prefix",
        ),
        (
            json!({"$changed": []}),
            "filter: \"$changed\" must be a non-empty array of column names, got []",
        ),
        (
            json!({"$previous": {"status": {"like": "x"}}}),
            "filter: \"$previous\": \"status\": unknown operator \"like\" (use eq, ne, gt, gte, lt, lte, in, nin, null or prefix)",
        ),
        (
            json!({"$previous": {"$changed": ["a"]}}),
            "filter: \"$previous\": \"$changed\" is not a filter key (inside \"$previous\" only column conditions are allowed)",
        ),
        (
            json!({"$where": 1}),
            "filter: \"$where\" is not a filter key (the keys starting with $ are \"$changed\" and \"$previous\")",
        ),
    ];
    for (filter, message) in bad {
        let sql = fixture
            .db
            .client
            .execute(
                "SELECT walhook.subscribe('https://example.test/h', '{orders.*}', filter => $1::text::jsonb)",
                &[&filter.to_string()],
            )
            .await
            .unwrap_err();
        assert_eq!(
            sql.as_db_error().unwrap().message(),
            format!("walhook.subscriptions.{message}"),
            "{filter}"
        );
        let answer = api
            .call(
                "POST",
                "/v1/hooks",
                &token,
                Some(json!({"event": "orders.created", "target_url": "https://example.test/h", "filter": filter})),
            )
            .await;
        assert_eq!(answer.status, 422, "{filter}");
        assert_eq!(
            answer.json,
            error("invalid", message, Some("filter")),
            "{filter}"
        );
    }
    // A good one with every operator is accepted by both.
    let good = json!({"amount": {"gt": 1, "lte": "9", "ne": null}, "status": {"in": ["a"], "nin": [], "prefix": "p", "eq": "x"},
                      "note": {"null": false}, "id": [1, 2], "$changed": ["status"], "$previous": {"status": "pending"}});
    let answer = api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(json!({"event": "orders.updated", "target_url": "https://example.test/h", "filter": good})),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    assert_eq!(answer.json["filter"], good);
    fixture.daemon.stop().await;
}
