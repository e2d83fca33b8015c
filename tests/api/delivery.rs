//! Subscriptions made through the API take effect before the call answers: created ones
//! receive the next matching event, deleted ones nothing more. Intent verification.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::api::{ApiFixture, error};
use crate::support::receiver::Receiver;

#[tokio::test]
async fn created_hook_receives_the_next_event_and_deleted_one_nothing_after() {
    let f = ApiFixture::start("api_delivery", |_| {}).await;
    let token = f.token("acme", &["orders.*"]).await;
    let receiver = Receiver::start().await;
    let made = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(json!({"event": "orders.created", "target_url": receiver.url, "context": "api"})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    // No waiting: the write is in effect once POST has answered.
    f.db.exec("INSERT INTO orders VALUES (1, 'new', 9.99)")
        .await;
    let got = receiver.wait_delivered(1, Duration::from_secs(10)).await;
    let body = &got[0].json;
    assert_eq!(
        json!([
            body["type"],
            body["data"],
            body["previous"],
            body["changed"],
            body["context"]
        ]),
        json!(["orders.created", {"id": 1, "status": "new", "amount": 9.99}, null, null, "api"])
    );

    // A writer commits rows 2, 3, … while the subscription is deleted.
    let committed = Arc::new(AtomicI64::new(1));
    let writer = {
        let client = crate::support::connect(&f.db.url).await;
        let committed = committed.clone();
        tokio::spawn(async move {
            for id in 2..i64::MAX {
                let sql = format!("INSERT INTO orders VALUES ({id}, 'new', 1)");
                if client.batch_execute(&sql).await.is_err() {
                    return;
                }
                committed.store(id, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = made.json["id"].as_str().unwrap();
    let deleted = f
        .api
        .call("DELETE", &format!("/v1/hooks/{id}"), &token, None)
        .await;
    assert_eq!(deleted.status, 204);
    // At most the one insert in flight when DELETE answered may still go out.
    let last_before = committed.load(Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    writer.abort();
    let last_written = committed.load(Ordering::SeqCst);
    assert!(last_written > last_before + 20, "the writer kept writing");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<i64> = receiver
        .requests()
        .iter()
        .map(|r| r.json["data"]["id"].as_i64().unwrap())
        .collect();
    assert!(ids.len() > 2, "events flowed before the delete: {ids:?}");
    let late: Vec<&i64> = ids.iter().filter(|&&id| id > last_before).collect();
    assert!(
        late.is_empty(),
        "sent after DELETE answered: {late:?} (last before {last_before})"
    );
    f.daemon.stop().await;
}

#[tokio::test]
async fn verifies_intent_before_subscribing_when_configured() {
    let f = ApiFixture::start("api_verify", |c| c.api.verify_intent = true).await;
    let token = f.token("acme", &["*"]).await;
    let receiver = Receiver::start().await;
    let body = json!({"event": "orders.created", "target_url": receiver.url});
    let refused = f
        .api
        .call("POST", "/v1/hooks", &token, Some(body.clone()))
        .await;
    assert_eq!(
        (refused.status, refused.json),
        (
            422,
            error(
                "verification_failed",
                "intent verification failed: target did not echo the challenge (X-Hook-Secret header or \"challenge\" in a JSON body)",
                Some("target_url"),
            )
        )
    );
    let asked = &receiver.requests()[0];
    let challenge = asked.headers["x-hook-secret"].clone();
    assert!(challenge.len() >= 32, "{challenge}");
    assert_eq!(
        asked.json,
        json!({"type": "walhook.verification", "challenge": challenge})
    );
    let count = "SELECT count(*) FROM walhook.subscriptions";
    let none: i64 = f.db.client.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!(none, 0);

    receiver.echo_challenges(true);
    let made = f.api.call("POST", "/v1/hooks", &token, Some(body)).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let second = &receiver.requests()[1];
    assert_ne!(
        second.headers["x-hook-secret"], challenge,
        "a new challenge each time"
    );

    let down = json!({"event": "orders.created", "target_url": "http://127.0.0.1:9/closed"});
    let unreachable = f.api.call("POST", "/v1/hooks", &token, Some(down)).await;
    assert_eq!(unreachable.status, 422);
    assert_eq!(unreachable.json["error"]["code"], "verification_failed");
    let message = unreachable.json["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("intent verification failed: connect:"),
        "{message}"
    );
    let _: Value = made.json;
    f.daemon.stop().await;
}
