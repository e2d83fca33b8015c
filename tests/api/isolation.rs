//! Owner A can never see, change or delete owner B's subscriptions (nor admin ones).

use serde_json::json;

use crate::support::api::{ApiFixture, error};

#[tokio::test]
async fn owners_cannot_reach_each_others_subscriptions() {
    let f = ApiFixture::start("api_isolation", |_| {}).await;
    let alice = f.token("alice", &["*"]).await;
    let bob = f.token("bob", &["*"]).await;
    let url = "http://127.0.0.1:9/shared";
    let made = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &bob,
            Some(json!({"event": "orders.created", "target_url": url})),
        )
        .await;
    assert_eq!(made.status, 201);
    let id = made.json["id"].as_str().unwrap().to_owned();
    f.db.exec(&format!(
        "SELECT walhook.subscribe('{url}', '{{orders.*}}')"
    ))
    .await; // admin's
    let before: String =
        f.db.client
            .query_one(
                "SELECT string_agg(s::text, ';' ORDER BY id) FROM walhook.subscriptions s",
                &[],
            )
            .await
            .unwrap()
            .get(0);

    let path = format!("/v1/hooks/{id}");
    let not_found = error("not_found", &format!("no subscription {id}"), None);
    let change = json!({"event": "orders.created", "target_url": "http://127.0.0.1:9/stolen"});
    for (method, body) in [
        ("GET", None),
        ("PUT", Some(change.clone())),
        ("PATCH", Some(json!({"active": false}))),
        ("DELETE", None),
    ] {
        let answer = f.api.call(method, &path, &alice, body).await;
        assert_eq!((answer.status, &answer.json), (404, &not_found), "{method}");
    }
    let list = f.api.call("GET", "/v1/hooks", &alice, None).await;
    assert_eq!(list.json, json!({"data": [], "next_cursor": null}));
    let unsub = f
        .api
        .call(
            "POST",
            "/v1/hooks/unsubscribe",
            &alice,
            Some(json!({"target_url": url})),
        )
        .await;
    assert_eq!(
        (unsub.status, unsub.json),
        (
            404,
            error("not_found", &format!("no subscription to {url}"), None)
        )
    );
    // Alice may subscribe the same URL herself: duplicates are per owner.
    let own = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &alice,
            Some(json!({"event": "orders.created", "target_url": url})),
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.text);
    f.db.exec(&format!(
        "DELETE FROM walhook.subscriptions WHERE id = '{}'",
        own.json["id"].as_str().unwrap()
    ))
    .await;
    let after: String =
        f.db.client
            .query_one(
                "SELECT string_agg(s::text, ';' ORDER BY id) FROM walhook.subscriptions s",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(after, before, "bob's and the admin's rows are untouched");
    let bobs = f.api.call("GET", "/v1/hooks", &bob, None).await;
    assert_eq!(bobs.json["data"].as_array().unwrap().len(), 1);
    assert_eq!(bobs.json["data"][0]["id"], id.as_str());
    f.daemon.stop().await;
}
