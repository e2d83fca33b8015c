//! Limits on what one token or owner can do: subscriptions per owner, requests per token,
//! scopes on every write, denied headers, verification of changed targets, and coalesced
//! routing reloads however many `NOTIFY walhook_config` arrive.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::api::{ApiFixture, error};
use crate::support::receiver::Receiver;

#[tokio::test]
async fn the_101st_subscription_of_an_owner_is_refused() {
    let f = ApiFixture::start("api_owner_limit", |_| {}).await;
    let token = f.token("acme", &["*"]).await;
    // Admin rows (owner NULL) and other owners' rows do not count.
    f.db.exec("SELECT walhook.subscribe('http://127.0.0.1:9/admin', '{orders.*}')")
        .await;
    let other = f.token("globex", &["*"]).await;
    let hook = |i: usize| json!({"event": "orders.created", "target_url": format!("http://127.0.0.1:9/{i}")});
    assert_eq!(
        f.api
            .call("POST", "/v1/hooks", &other, Some(hook(0)))
            .await
            .status,
        201
    );
    for i in 0..100 {
        let made = f.api.call("POST", "/v1/hooks", &token, Some(hook(i))).await;
        assert_eq!(made.status, 201, "{i}: {}", made.text);
    }
    let refused = f
        .api
        .call("POST", "/v1/hooks", &token, Some(hook(100)))
        .await;
    assert_eq!(
        (refused.status, refused.json),
        (
            409,
            error(
                "subscription_limit",
                "this owner already has 100 subscriptions, the most api.max_subscriptions_per_owner allows; delete one first",
                None
            )
        )
    );
    let count = "SELECT count(*) FROM walhook.subscriptions WHERE owner = 'acme'";
    let n: i64 = f.db.client.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!(n, 100);
    // One fewer, and the next is accepted.
    let first = f.api.call("GET", "/v1/hooks?limit=1", &token, None).await;
    let id = first.json["data"][0]["id"].as_str().unwrap().to_owned();
    let deleted = f
        .api
        .call("DELETE", &format!("/v1/hooks/{id}"), &token, None)
        .await;
    assert_eq!(deleted.status, 204);
    let made = f
        .api
        .call("POST", "/v1/hooks", &token, Some(hook(100)))
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    f.daemon.stop().await;
}

#[tokio::test]
async fn a_token_past_its_rate_gets_429_with_retry_after() {
    let f = ApiFixture::start("api_rate", |c| c.api.rate_limit_per_minute = 5).await;
    let token = f.token("acme", &["*"]).await;
    let sibling = f.token("acme", &["*"]).await;
    for i in 0..5 {
        let listed = f.api.call("GET", "/v1/hooks", &token, None).await;
        assert_eq!(listed.status, 200, "request {i}: {}", listed.text);
    }
    let limited = f.api.call("GET", "/v1/hooks", &token, None).await;
    assert_eq!(limited.header("retry-after"), "12");
    assert_eq!(
        (limited.status, limited.json),
        (
            429,
            error(
                "rate_limited",
                "too many requests for this token (api.rate_limit_per_minute); retry after 12 s",
                None
            )
        )
    );
    // Every kind of request counts, and the budget is per token.
    let post = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(json!({"event": "orders.created", "target_url": "http://127.0.0.1:9/x"})),
        )
        .await;
    assert_eq!(post.status, 429);
    let other = f.api.call("GET", "/v1/hooks", &sibling, None).await;
    assert_eq!(other.status, 200);
    // Unauthenticated endpoints are not limited.
    for _ in 0..10 {
        assert_eq!(f.api.raw("GET", "/healthz", None, None).await.status, 200);
    }
    f.daemon.stop().await;
}

#[tokio::test]
async fn a_narrower_token_cannot_write_hooks_outside_its_scopes() {
    let f = ApiFixture::start("api_write_scopes", |_| {}).await;
    let wide = f.token("acme", &["*"]).await;
    let narrow = f.token("acme", &["orders.*"]).await;
    let made = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &wide,
            Some(json!({"events": ["invoices.*"], "target_url": "http://127.0.0.1:9/inv"})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let id = made.json["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/hooks/{id}");
    let forbidden = (
        403,
        error(
            "forbidden",
            "event pattern \"invoices.*\" is outside this token's scopes",
            Some("events"),
        ),
    );
    let writes: [(&str, Option<Value>); 5] = [
        (
            "PATCH",
            Some(json!({"secret": "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="})),
        ),
        ("PATCH", Some(json!({"headers": {"x-evil": "1"}}))),
        (
            "PATCH",
            Some(json!({"target_url": "http://127.0.0.1:9/mine"})),
        ),
        (
            "PUT",
            Some(json!({"events": ["orders.*"], "target_url": "http://127.0.0.1:9/inv"})),
        ),
        ("DELETE", None),
    ];
    for (method, body) in writes {
        let answer = f.api.call(method, &path, &narrow, body.clone()).await;
        assert_eq!((answer.status, answer.json), forbidden, "{method} {body:?}");
    }
    let unsubscribe = f
        .api
        .call(
            "POST",
            "/v1/hooks/unsubscribe",
            &narrow,
            Some(json!({"target_url": "http://127.0.0.1:9/inv"})),
        )
        .await;
    assert_eq!((unsubscribe.status, unsubscribe.json), forbidden);
    // Nothing changed; the wide token may still write it.
    let row =
        f.db.client
            .query_one(
                "SELECT target_url, secret, headers::text FROM walhook.subscriptions",
                &[],
            )
            .await
            .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        (
            "http://127.0.0.1:9/inv".to_owned(),
            made.json["secret"].as_str().unwrap().to_owned(),
            "{}".to_owned()
        )
    );
    let patched = f
        .api
        .call("PATCH", &path, &wide, Some(json!({"context": "ok"})))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    f.daemon.stop().await;
}

/// The deny-list is SQL's (`walhook.header_forbidden`, used by `check_subscription`); the
/// API reports its check violation as 422 naming the field and the header.
#[tokio::test]
async fn framing_and_hop_by_hop_headers_are_refused_naming_the_header() {
    let f = ApiFixture::start("api_denied_headers", |_| {}).await;
    let token = f.token("acme", &["*"]).await;
    let refused = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(json!({
                "event": "orders.created",
                "target_url": "http://127.0.0.1:9/h",
                "headers": {"Content-Length": "5", "Host": "x"},
            })),
        )
        .await;
    assert_eq!(
        (refused.status, refused.json),
        (
            422,
            error(
                "invalid",
                "headers: \"Content-Length\" may not be set (framing header)",
                Some("headers")
            )
        )
    );
    // PATCH of an existing hook is refused the same way.
    let made = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(json!({"event": "orders.created", "target_url": "http://127.0.0.1:9/h"})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let id = made.json["id"].as_str().unwrap();
    let patched = f
        .api
        .call(
            "PATCH",
            &format!("/v1/hooks/{id}"),
            &token,
            Some(json!({"headers": {"Transfer-Encoding": "chunked"}})),
        )
        .await;
    assert_eq!(
        (patched.status, patched.json),
        (
            422,
            error(
                "invalid",
                "headers: \"Transfer-Encoding\" may not be set (framing header)",
                Some("headers")
            )
        )
    );
    let count = "SELECT count(*) FROM walhook.subscriptions WHERE headers <> '{}'";
    let n: i64 = f.db.client.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    f.daemon.stop().await;
}

#[tokio::test]
async fn changing_target_url_verifies_the_new_target() {
    let f = ApiFixture::start("api_verify_update", |c| c.api.verify_intent = true).await;
    let token = f.token("acme", &["*"]).await;
    let echoing = Receiver::start().await;
    echoing.echo_challenges(true);
    let silent = Receiver::start().await;
    let made = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(json!({"event": "orders.created", "target_url": echoing.url})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    assert_eq!(echoing.requests().len(), 1);
    let path = format!("/v1/hooks/{}", made.json["id"].as_str().unwrap());
    let not_verified = (
        422,
        error(
            "verification_failed",
            "intent verification failed: target did not echo the challenge (X-Hook-Secret header or \"challenge\" in a JSON body)",
            Some("target_url"),
        ),
    );
    for method in ["PATCH", "PUT"] {
        let body = json!({"events": ["orders.created"], "target_url": silent.url});
        let answer = f.api.call(method, &path, &token, Some(body)).await;
        assert_eq!((answer.status, answer.json), not_verified, "{method}");
    }
    assert_eq!(silent.requests().len(), 2, "one challenge per attempt");
    let url: String =
        f.db.client
            .query_one("SELECT target_url FROM walhook.subscriptions", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(url, echoing.url, "unchanged");
    // A write keeping the target sends no challenge.
    let patched = f
        .api
        .call("PATCH", &path, &token, Some(json!({"context": "c"})))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let put = f
        .api
        .call(
            "PUT",
            &path,
            &token,
            Some(json!({"events": ["orders.*"], "target_url": echoing.url})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(echoing.requests().len(), 1);
    // A verified new target is taken.
    let other = Receiver::start().await;
    other.echo_challenges(true);
    let moved = f
        .api
        .call(
            "PATCH",
            &path,
            &token,
            Some(json!({"target_url": other.url})),
        )
        .await;
    assert_eq!(
        (moved.status, &moved.json["target_url"]),
        (200, &json!(other.url))
    );
    assert_eq!(other.requests().len(), 1);
    f.daemon.stop().await;
}

#[tokio::test]
async fn notifications_and_api_writes_are_coalesced_into_few_reloads() {
    let f = ApiFixture::start("api_coalesce", |_| {}).await;
    let receiver = Receiver::start().await;
    let before = f.api.reloads().await;
    let start = Instant::now();
    let notifier = crate::support::connect(&f.db.url).await;
    for i in 0..1000 {
        // Separate transactions, so PostgreSQL does not fold them into one.
        notifier
            .batch_execute(&format!("NOTIFY walhook_config, '{i}'"))
            .await
            .unwrap();
    }
    // An SQL change after the burst still takes effect within a second.
    f.db.exec(&format!(
        "SELECT walhook.subscribe('{}', '{{orders.created}}')",
        receiver.url
    ))
    .await;
    let sent = start.elapsed();
    tokio::time::sleep(Duration::from_millis(700)).await;
    f.db.exec("INSERT INTO orders VALUES (1, 'new', 1)").await;
    receiver.wait_delivered(1, Duration::from_secs(5)).await;
    let elapsed = start.elapsed();
    let made = f.api.reloads().await - before;
    // At most one per 250 ms, plus the periodic refresh.
    let most = elapsed.as_millis() as u64 / 250 + 2;
    eprintln!("1000 NOTIFYs in {sent:?}: {made} reloads in {elapsed:?}");
    assert!(made >= 1 && made <= most, "{made} reloads in {elapsed:?}");

    // API writes put their subscription into the index themselves: 30 writes, few reloads.
    let token = f.token("acme", &["*"]).await;
    let before = f.api.reloads().await;
    let start = Instant::now();
    for i in 0..30 {
        let body =
            json!({"event": "orders.created", "target_url": format!("{}?n={i}", receiver.url)});
        let made = f.api.call("POST", "/v1/hooks", &token, Some(body)).await;
        assert_eq!(made.status, 201, "{}", made.text);
    }
    f.db.exec("INSERT INTO orders VALUES (2, 'new', 1)").await;
    // The SQL subscription and the 30 new ones: 31 deliveries of row 2, at once.
    receiver
        .wait_delivered(1 + 31, Duration::from_secs(5))
        .await;
    let elapsed = start.elapsed();
    let made = f.api.reloads().await - before;
    let most = elapsed.as_millis() as u64 / 250 + 2;
    assert!(made <= most, "{made} reloads for 30 writes in {elapsed:?}");
    f.daemon.stop().await;
}
