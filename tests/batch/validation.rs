//! Invalid batching and HTTP/2 settings are refused, naming the field, in SQL and in the API.

use serde_json::json;

use super::setup;
use crate::support::api::{ApiFixture, error};

#[tokio::test]
async fn sql_refuses_invalid_settings_naming_the_column() {
    let db = setup("batch_sql_checks").await;
    db.exec("SELECT walhook.subscribe('http://127.0.0.1:9/hook', '{orders.*}')")
        .await;
    let cases = [
        (
            "batch_max = 0",
            "walhook.subscriptions.batch_max must be NULL or 1 (one event per request) or from 2 to 1000 (events per request), got 0",
            "batch_max",
        ),
        (
            "batch_max = 1001",
            "walhook.subscriptions.batch_max must be NULL or 1 (one event per request) or from 2 to 1000 (events per request), got 1001",
            "batch_max",
        ),
        (
            "batch_window_ms = -1",
            "walhook.subscriptions.batch_window_ms must be from 0 to 10000 (milliseconds a batch may wait to fill), got -1",
            "batch_window_ms",
        ),
        (
            "batch_window_ms = 10001",
            "walhook.subscriptions.batch_window_ms must be from 0 to 10000 (milliseconds a batch may wait to fill), got 10001",
            "batch_window_ms",
        ),
        (
            "batch_window_ms = NULL",
            "walhook.subscriptions.batch_window_ms must be from 0 to 10000 (milliseconds a batch may wait to fill), got NULL",
            "batch_window_ms",
        ),
        (
            "http2 = NULL",
            "walhook.subscriptions.http2 must be true or false, got NULL",
            "http2",
        ),
    ];
    for (set, message, column) in cases {
        let err = db
            .client
            .batch_execute(&format!("UPDATE walhook.subscriptions SET {set}"))
            .await
            .unwrap_err();
        let db_error = err.as_db_error().unwrap_or_else(|| panic!("{set}: {err}"));
        assert_eq!(db_error.message(), message, "{set}");
        assert_eq!(db_error.column(), Some(column), "{set}");
        assert_eq!(db_error.code().code(), "23514", "{set}");
    }
    // The limits themselves are accepted.
    db.exec(
        "UPDATE walhook.subscriptions SET batch_max = 1000, batch_window_ms = 10000, http2 = true;
         UPDATE walhook.subscriptions SET batch_max = 2, batch_window_ms = 0;
         UPDATE walhook.subscriptions SET batch_max = NULL;
         UPDATE walhook.subscriptions SET batch_max = 1;",
    )
    .await;
}

#[tokio::test]
async fn the_api_refuses_invalid_settings_naming_the_field() {
    let f = ApiFixture::start("batch_api_checks", |_| {}).await;
    let token = f.token("acme", &["orders.*"]).await;
    let url = "http://127.0.0.1:9/hook";
    let max_rule = "batch_max must be null or 1 (one event per request) or an integer from 2 to 1000 (events per request)";
    let window_rule = "batch_window_ms must be an integer from 0 to 10000 (milliseconds a batch may wait to fill)";
    let cases = [
        (
            json!({"batch_max": 0}),
            format!("{max_rule}, got 0"),
            "batch_max",
        ),
        (
            json!({"batch_max": 1001}),
            format!("{max_rule}, got 1001"),
            "batch_max",
        ),
        (
            json!({"batch_max": 2.5}),
            format!("{max_rule}, got 2.5"),
            "batch_max",
        ),
        (
            json!({"batch_max": "10"}),
            format!("{max_rule}, got \"10\""),
            "batch_max",
        ),
        (
            json!({"batch_window_ms": -1}),
            format!("{window_rule}, got -1"),
            "batch_window_ms",
        ),
        (
            json!({"batch_window_ms": 10001}),
            format!("{window_rule}, got 10001"),
            "batch_window_ms",
        ),
        (
            json!({"batch_window_ms": null}),
            format!("{window_rule}, got null"),
            "batch_window_ms",
        ),
        (
            json!({"http2": "yes"}),
            "http2 must be true or false".to_string(),
            "http2",
        ),
    ];
    for (fields, message, field) in &cases {
        let mut body = json!({"event": "orders.created", "target_url": url});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let answer = f.api.call("POST", "/v1/hooks", &token, Some(body)).await;
        assert_eq!(answer.status, 422, "{fields}: {}", answer.text);
        assert_eq!(
            answer.json,
            error("invalid", message, Some(field)),
            "{fields}"
        );
    }
    // Valid settings are stored and shown; PATCH changes them, null turns batching off.
    let created = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(json!({"event": "orders.created", "target_url": url,
                        "batch_max": 100, "batch_window_ms": 50, "http2": true})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(
        (
            &created.json["batch_max"],
            &created.json["batch_window_ms"],
            &created.json["http2"]
        ),
        (&json!(100), &json!(50), &json!(true))
    );
    let path = format!("/v1/hooks/{}", created.json["id"].as_str().unwrap());
    let patched = f
        .api
        .call("PATCH", &path, &token, Some(json!({"batch_max": null})))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(
        (
            &patched.json["batch_max"],
            &patched.json["batch_window_ms"],
            &patched.json["http2"]
        ),
        (&json!(null), &json!(50), &json!(true))
    );
    let bad_patch = f
        .api
        .call("PATCH", &path, &token, Some(json!({"batch_max": 0})))
        .await;
    assert_eq!(bad_patch.status, 422);
    assert_eq!(
        bad_patch.json,
        error("invalid", &format!("{max_rule}, got 0"), Some("batch_max"))
    );
    f.daemon.stop().await;
}
