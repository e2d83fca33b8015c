//! `/v1/hooks` and `/v1/events`: exact bodies for every answer.

use serde_json::{Value, json};

use crate::support::TestDb;
use crate::support::api::{ApiFixture, error};

/// `created_at` and `updated_at` of a subscription as the API formats them.
async fn times(db: &TestDb, id: &str) -> (String, String) {
    let row = db
        .client
        .query_one(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
             FROM walhook.subscriptions WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The body the API shows for subscription `id` with these fields (and defaults).
async fn expected(db: &TestDb, id: &str, fields: Value) -> Value {
    let (created, updated) = times(db, id).await;
    let mut body = json!({
        "id": id, "filter": {}, "headers": {}, "context": null, "active": true,
        "expires_at": null, "disabled_reason": null,
        "created_at": created, "updated_at": updated,
        "batch_max": null, "batch_window_ms": 0, "http2": false,
    });
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn create_show_replace_patch_delete() {
    let f = ApiFixture::start("api_lifecycle", |_| {}).await;
    let token = f.token("acme", &["orders.*"]).await;
    let created = f
        .api
        .call(
            "POST",
            "/v1/hooks",
            &token,
            Some(json!({
                "event": "orders.created",
                "target_url": "http://127.0.0.1:9/hook",
                "filter": {"status": ["new", "paid"]},
                "headers": {"x-team": "billing"},
                "context": "ctx-1",
                "expires_at": "2099-01-01T00:00:00Z",
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    assert_eq!(created.header("location"), format!("/v1/hooks/{id}"));
    let secret = created.json["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 6 + 44,
        "{secret}"
    );
    let shown = expected(
        &f.db,
        &id,
        json!({
            "events": ["orders.created"], "target_url": "http://127.0.0.1:9/hook",
            "filter": {"status": ["new", "paid"]}, "headers": {"x-team": "billing"},
            "context": "ctx-1", "expires_at": "2099-01-01T00:00:00.000000Z",
        }),
    )
    .await;
    let mut with_secret = shown.clone();
    with_secret["secret"] = json!(secret);
    assert_eq!(created.json, with_secret);
    // The row admins see in SQL.
    let row =
        f.db.client
            .query_one(
                "SELECT owner, events, secret FROM walhook.subscriptions WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, String>(0), "acme");
    assert_eq!(row.get::<_, Vec<String>>(1), vec!["orders.created"]);
    assert_eq!(row.get::<_, String>(2), secret);

    // GET shows it without the secret.
    let got = f
        .api
        .call("GET", &format!("/v1/hooks/{id}"), &token, None)
        .await;
    assert_eq!((got.status, got.json), (200, shown));

    // PUT replaces every field; absent ones get their defaults, the secret stays.
    let put = f
        .api
        .call(
            "PUT",
            &format!("/v1/hooks/{id}"),
            &token,
            Some(json!({"events": ["orders.*"], "target_url": "http://127.0.0.1:9/other"})),
        )
        .await;
    let after_put = expected(
        &f.db,
        &id,
        json!({"events": ["orders.*"], "target_url": "http://127.0.0.1:9/other"}),
    )
    .await;
    assert_eq!((put.status, put.json), (200, after_put));

    // PATCH changes only what it names; null clears a nullable field.
    let patched = f
        .api
        .call(
            "PATCH",
            &format!("/v1/hooks/{id}"),
            &token,
            Some(json!({"context": "ctx-2", "active": false})),
        )
        .await;
    let after_patch = expected(
        &f.db,
        &id,
        json!({"events": ["orders.*"], "target_url": "http://127.0.0.1:9/other", "context": "ctx-2", "active": false}),
    )
    .await;
    assert_eq!((patched.status, patched.json), (200, after_patch));
    let patched = f
        .api
        .call(
            "PATCH",
            &format!("/v1/hooks/{id}"),
            &token,
            Some(json!({"context": null})),
        )
        .await;
    assert_eq!(patched.json["context"], Value::Null);
    let secret_now: String =
        f.db.client
            .query_one("SELECT secret FROM walhook.subscriptions", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(secret_now, secret, "PUT and PATCH keep the secret");

    // DELETE: 204, then 404.
    let deleted = f
        .api
        .call("DELETE", &format!("/v1/hooks/{id}"), &token, None)
        .await;
    assert_eq!((deleted.status, deleted.text.as_str()), (204, ""));
    let again = f
        .api
        .call("DELETE", &format!("/v1/hooks/{id}"), &token, None)
        .await;
    assert_eq!(
        (again.status, again.json),
        (
            404,
            error("not_found", &format!("no subscription {id}"), None)
        )
    );
    f.daemon.stop().await;
}

#[tokio::test]
async fn lists_in_pages_and_shows_rows_made_in_sql() {
    let f = ApiFixture::start("api_pages", |_| {}).await;
    let token = f.token("acme", &["*"]).await;
    for i in 0..4 {
        let made = f
            .api
            .call(
                "POST",
                "/v1/hooks",
                &token,
                Some(json!({"events": ["orders.created"], "target_url": format!("http://127.0.0.1:9/{i}")})),
            )
            .await;
        assert_eq!(made.status, 201, "{}", made.text);
    }
    // One made by an admin in SQL for this owner: the same kind of row.
    f.db.exec(
        "SELECT walhook.subscribe('http://127.0.0.1:9/sql', '{invoices.*}', owner => 'acme')",
    )
    .await;
    let mut seen = Vec::new();
    let mut path = "/v1/hooks?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = f.api.call("GET", &path, &token, None).await;
        assert_eq!(page.status, 200, "{}", page.text);
        pages += 1;
        for hook in page.json["data"].as_array().unwrap() {
            assert!(hook.get("secret").is_none(), "lists never show secrets");
            seen.push(hook["target_url"].as_str().unwrap().to_owned());
        }
        match page.json["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/hooks?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        ["0", "1", "2", "3", "sql"].map(|s| format!("http://127.0.0.1:9/{s}"))
    );
    let bad = f.api.call("GET", "/v1/hooks?limit=0", &token, None).await;
    assert_eq!(
        (bad.status, bad.json),
        (
            422,
            error(
                "invalid",
                "limit must be an integer from 1 to 100",
                Some("limit")
            )
        )
    );
    let bad = f
        .api
        .call("GET", "/v1/hooks?cursor=nope", &token, None)
        .await;
    assert_eq!(
        (bad.status, bad.json),
        (
            422,
            error(
                "invalid",
                "cursor must be a next_cursor value from a previous page",
                Some("cursor")
            )
        )
    );

    // A subscription made through the API is a plain row to SQL: an admin can change it.
    f.db.exec(
        "UPDATE walhook.subscriptions SET context = 'set in sql' WHERE target_url LIKE '%/0'",
    )
    .await;
    let page = f.api.call("GET", "/v1/hooks?limit=1", &token, None).await;
    assert_eq!(page.json["data"][0]["context"], "set in sql");
    f.daemon.stop().await;
}

#[tokio::test]
async fn unsubscribes_by_target_url() {
    let f = ApiFixture::start("api_unsubscribe", |_| {}).await;
    let token = f.token("acme", &["*"]).await;
    let url = "http://127.0.0.1:9/zap";
    let mut ids = Vec::new();
    for events in [json!(["orders.created"]), json!(["invoices.*"])] {
        let made = f
            .api
            .call(
                "POST",
                "/v1/hooks",
                &token,
                Some(json!({"events": events, "target_url": url})),
            )
            .await;
        ids.push(made.json["id"].clone());
    }
    let gone = f
        .api
        .call(
            "POST",
            "/v1/hooks/unsubscribe",
            &token,
            Some(json!({"target_url": url})),
        )
        .await;
    assert_eq!(gone.status, 200, "{}", gone.text);
    let mut deleted = gone.json["deleted"].as_array().unwrap().clone();
    deleted.sort_by_key(|v| v.as_str().unwrap().to_owned());
    ids.sort_by_key(|v| v.as_str().unwrap().to_owned());
    assert_eq!(deleted, ids);
    let none = f
        .api
        .call(
            "POST",
            "/v1/hooks/unsubscribe",
            &token,
            Some(json!({"target_url": url})),
        )
        .await;
    assert_eq!(
        (none.status, none.json),
        (
            404,
            error("not_found", &format!("no subscription to {url}"), None)
        )
    );
    let missing = f
        .api
        .call("POST", "/v1/hooks/unsubscribe", &token, Some(json!({})))
        .await;
    assert_eq!(
        (missing.status, missing.json),
        (
            422,
            error(
                "missing_field",
                "target_url is required",
                Some("target_url")
            )
        )
    );
    f.daemon.stop().await;
}

#[tokio::test]
async fn refuses_bad_requests_with_exact_errors() {
    let f = ApiFixture::start("api_errors", |_| {}).await;
    let token = f.token("acme", &["orders.*", "invoices.created"]).await;
    let post = |body: Value| f.api.call("POST", "/v1/hooks", &token, Some(body));
    let url = "http://127.0.0.1:9/hook";

    let cases: Vec<(Value, u16, Value)> = vec![
        (
            json!({"events": ["orders.created"], "target_url": url, "colour": "red"}),
            422,
            error(
                "unknown_field",
                "unknown field \"colour\"; expected one of: event, events, target_url, filter, secret, headers, context, expires_at, active, batch_max, batch_window_ms, http2",
                Some("colour"),
            ),
        ),
        (
            json!({"events": "orders.created", "target_url": url}),
            422,
            error(
                "invalid",
                "events must be a non-empty array of strings",
                Some("events"),
            ),
        ),
        (
            json!({"event": "orders.created", "events": ["orders.created"], "target_url": url}),
            422,
            error(
                "invalid",
                "give either event (a string) or events (an array), not both",
                Some("event"),
            ),
        ),
        (
            json!({"event": "orders.created"}),
            422,
            error(
                "missing_field",
                "target_url is required",
                Some("target_url"),
            ),
        ),
        (
            json!({"target_url": url}),
            422,
            error("missing_field", "events is required", Some("events")),
        ),
        (
            json!({"event": "orders.made", "target_url": url}),
            422,
            error(
                "invalid",
                "\"orders.made\" is not an event pattern: use noun.verb, noun.*, *.verb or *, with verb one of created, updated, deleted, truncated",
                Some("events"),
            ),
        ),
        (
            json!({"event": "orders.created", "target_url": 42}),
            422,
            error("invalid", "target_url must be a string", Some("target_url")),
        ),
        (
            json!({"event": "orders.created", "target_url": url, "expires_at": "tomorrow"}),
            422,
            error(
                "invalid",
                "expires_at must be an RFC 3339 timestamp such as 2030-01-01T00:00:00Z: premature end of input",
                Some("expires_at"),
            ),
        ),
        (
            json!({"event": "orders.created", "target_url": "ftp://example.com/x"}),
            422,
            error(
                "invalid",
                "target_url must be an http:// or https:// URL, got 'ftp://example.com/x'",
                Some("target_url"),
            ),
        ),
        (
            json!({"event": "orders.created", "target_url": url, "secret": "hunter2"}),
            422,
            error(
                "invalid",
                "secret must be whsec_ followed by at least 24 base64-encoded bytes",
                Some("secret"),
            ),
        ),
        (
            json!({"event": "orders.created", "target_url": url, "headers": {"x-n": 1}}),
            422,
            error(
                "invalid",
                "headers must be a JSON object of string values, got {\"x-n\": 1}",
                Some("headers"),
            ),
        ),
        (
            json!({"events": ["orders.created", "invoices.*"], "target_url": url}),
            403,
            error(
                "forbidden",
                "event pattern \"invoices.*\" is outside this token's scopes",
                Some("events"),
            ),
        ),
        (
            json!({"event": "*", "target_url": url}),
            403,
            error(
                "forbidden",
                "event pattern \"*\" is outside this token's scopes",
                Some("events"),
            ),
        ),
    ];
    for (body, status, expected) in cases {
        let answer = post(body.clone()).await;
        assert_eq!((answer.status, &answer.json), (status, &expected), "{body}");
    }
    assert_eq!(
        f.db.client
            .query_one("SELECT count(*) FROM walhook.subscriptions", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0,
        "nothing was created"
    );

    let malformed = f
        .api
        .raw(
            "POST",
            "/v1/hooks",
            Some(&token),
            Some("{\"event\": ".into()),
        )
        .await;
    assert_eq!(
        (malformed.status, malformed.json),
        (
            400,
            error(
                "malformed_json",
                "request body is not valid JSON: EOF while parsing a value at line 1 column 10",
                None
            )
        )
    );
    let array = f
        .api
        .raw("POST", "/v1/hooks", Some(&token), Some("[]".into()))
        .await;
    assert_eq!(
        (array.status, array.json),
        (
            422,
            error("invalid", "the body must be a JSON object", Some("body"))
        )
    );
    let huge = json!({"event": "orders.created", "target_url": url, "context": "x".repeat(70_000)});
    let too_large = post(huge).await;
    assert_eq!(
        (too_large.status, too_large.json),
        (
            413,
            error(
                "body_too_large",
                "request body is larger than 65536 bytes",
                None
            )
        )
    );

    // Duplicates: 409 pointing at the existing one; the same events in another order too.
    let first =
        post(json!({"events": ["orders.created", "orders.updated"], "target_url": url})).await;
    assert_eq!(first.status, 201);
    let id = first.json["id"].as_str().unwrap();
    let dup =
        post(json!({"events": ["orders.updated", "orders.created"], "target_url": url})).await;
    assert_eq!(
        (dup.status, &dup.json),
        (
            409,
            &error(
                "duplicate",
                &format!("a subscription to this target_url for these events already exists: {id}"),
                Some("target_url")
            )
        )
    );
    assert_eq!(dup.header("location"), format!("/v1/hooks/{id}"));

    // Expiry in the past is refused by the database's rule, named by column.
    let past = f
        .api
        .call(
            "PATCH",
            &format!("/v1/hooks/{id}"),
            &token,
            Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(past.status, 422, "{}", past.text);
    assert_eq!(past.json["error"]["field"], "expires_at");
    assert_eq!(past.json["error"]["code"], "invalid");

    for path in [
        "/v1/hooks/not-a-uuid",
        "/v1/hooks/00000000-0000-4000-8000-000000000000",
    ] {
        let missing = f.api.call("GET", path, &token, None).await;
        let id = path.trim_start_matches("/v1/hooks/");
        assert_eq!(
            (missing.status, missing.json),
            (
                404,
                error("not_found", &format!("no subscription {id}"), None)
            )
        );
    }
    let nowhere = f.api.call("GET", "/v2/nothing", &token, None).await;
    assert_eq!(
        (nowhere.status, nowhere.json),
        (
            404,
            error("not_found", "no route for GET /v2/nothing", None)
        )
    );
    f.daemon.stop().await;
}

#[tokio::test]
async fn lists_the_event_types_in_scope_with_their_tables() {
    let f = ApiFixture::start("api_catalog", |_| {}).await;
    let token = f.token("acme", &["orders.*", "invoices.created"]).await;
    let events = f.api.call("GET", "/v1/events", &token, None).await;
    let orders = json!([{"name": "id", "type": "integer"}, {"name": "status", "type": "text"}, {"name": "amount", "type": "numeric(10,2)"}]);
    let invoices = json!([{"name": "id", "type": "integer"}, {"name": "total", "type": "integer"}]);
    assert_eq!(
        (events.status, events.json),
        (
            200,
            json!({"data": [
                {"type": "invoices.created", "table": "public.invoices", "columns": invoices},
                {"type": "orders.created", "table": "public.orders", "columns": orders},
                {"type": "orders.deleted", "table": "public.orders", "columns": orders},
                {"type": "orders.updated", "table": "public.orders", "columns": orders},
            ]})
        )
    );
    f.daemon.stop().await;
}

#[tokio::test]
async fn refuses_private_targets_unless_allowed() {
    let f = ApiFixture::start("api_ssrf", |c| c.delivery.allow_private_targets = false).await;
    let token = f.token("acme", &["*"]).await;
    for url in [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest",
        "http://[::1]:8080/x",
    ] {
        let answer = f
            .api
            .call(
                "POST",
                "/v1/hooks",
                &token,
                Some(json!({"event": "orders.created", "target_url": url})),
            )
            .await;
        let message = format!(
            "target_url '{url}' points to a loopback, private, link-local or metadata address"
        );
        assert_eq!(
            (answer.status, answer.json),
            (422, error("invalid", &message, Some("target_url"))),
            "{url}"
        );
    }
    f.daemon.stop().await;
}
