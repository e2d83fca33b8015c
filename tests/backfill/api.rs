//! `POST /v1/hooks/{id}/backfill` and `GET` of its progress: owner isolation (404), the
//! token's scopes (403), unknown tables (422), and a started backfill reaching `done`.

use std::time::Duration;

use serde_json::json;

use crate::support::api::{ApiFixture, error};
use crate::support::receiver::Receiver;

#[tokio::test]
async fn backfill_route_keeps_owners_apart_and_tokens_in_scope() {
    let f = ApiFixture::start("backfill_api", |_| {}).await;
    f.db.exec("INSERT INTO orders SELECT g, 'new', g FROM generate_series(1, 5) g")
        .await;
    let receiver = Receiver::start().await;
    let acme = f.token("acme", &["orders.*", "invoices.*"]).await;
    let created = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &acme,
            Some(json!({"events": ["orders.updated"], "target_url": receiver.url})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let hook = created.json["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/hooks/{hook}/backfill");

    // Another owner: 404, as for every other route of someone else's hook.
    let other = f.token("globex", &["*"]).await;
    let answer = f
        .api
        .call("POST", &path, &other, Some(json!({"tables": ["orders"]})))
        .await;
    assert_eq!(answer.status, 404, "{}", answer.text);
    assert_eq!(
        answer.json,
        error("not_found", &format!("no subscription {hook}"), None)
    );
    let answer = f.api.call("GET", &path, &other, None).await;
    assert_eq!(answer.status, 404, "{}", answer.text);

    // Same owner, a token whose scopes do not cover the table's events: 403.
    let narrow = f.token("acme", &["invoices.*"]).await;
    let answer = f
        .api
        .call("POST", &path, &narrow, Some(json!({"tables": ["orders"]})))
        .await;
    assert_eq!(answer.status, 403, "{}", answer.text);
    assert_eq!(
        answer.json,
        error(
            "forbidden",
            "event pattern \"orders.*\" is outside this token's scopes",
            Some("events")
        )
    );

    // Not a watched table, no tables, a table the hook takes no event of: 422.
    let answer = f
        .api
        .call("POST", &path, &acme, Some(json!({"tables": ["nope"]})))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(
        answer.json,
        error("invalid", "\"nope\" is not a watched table", Some("tables"))
    );
    let answer = f
        .api
        .call("POST", &path, &acme, Some(json!({"tables": []})))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    let answer = f
        .api
        .call("POST", &path, &acme, Some(json!({"tables": ["invoices"]})))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(answer.json["error"]["field"], "tables");
    assert!(
        answer.json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "subscription {hook} takes no event of public.invoices"
            )),
        "{}",
        answer.text
    );

    // The owner, in scope: 202 with the id; the rows arrive; GET shows it done.
    let answer = f
        .api
        .call("POST", &path, &acme, Some(json!({"tables": ["orders"]})))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let started = answer.json["backfills"].as_array().unwrap();
    assert_eq!(started.len(), 1);
    let id = started[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer.json,
        json!({"backfills": [{"id": id, "table": "public.orders", "state": "running"}]})
    );
    let got = receiver.wait_delivered(5, Duration::from_secs(30)).await;
    let mut ids: Vec<i64> = got
        .iter()
        .map(|r| {
            assert_eq!(r.json["type"], "orders.backfilled");
            assert_eq!(r.json["source"]["backfill"], id.as_str());
            r.json["data"]["id"].as_i64().unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    let start = std::time::Instant::now();
    loop {
        let answer = f.api.call("GET", &path, &acme, None).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let b = &answer.json["backfills"][0];
        assert_eq!(b["id"], id.as_str());
        if b["state"] == "done" {
            assert_eq!(b["rows_sent"], 5);
            assert_eq!(b["estimated_total"], 5);
            assert_eq!(b["table"], "public.orders");
            assert!(b["finished_at"].is_string());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{}", answer.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // /metrics counts its rows.
    let metrics = f.api.raw("GET", "/metrics", None, None).await;
    let line = format!(
        "walhook_backfill_rows_total{{backfill=\"{id}\",table=\"public.orders\",state=\"done\"}} 5"
    );
    assert!(metrics.text.lines().any(|l| l == line), "{}", metrics.text);
    f.daemon.stop().await;
}
