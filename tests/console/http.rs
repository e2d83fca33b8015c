//! The console over plain HTTP: escaping, CSRF, cookie flags, CSP, one-time links and
//! owner isolation.

use std::time::Duration;

use super::{Console, admin_token, login_code, subscribe};
use crate::support::api::ApiFixture;

#[tokio::test]
async fn script_payloads_in_target_context_and_headers_render_as_text() {
    let f = ApiFixture::start("console_escape", |_| {}).await;
    f.db.exec(
        r#"INSERT INTO walhook.subscriptions (events, target_url, context, headers)
           VALUES ('{orders.created}', 'http://127.0.0.1:9/hook?<script>alert(1)</script>',
                   '<script>alert("ctx")</script>',
                   '{"X-Note": "<script>alert(2)</script>"}')"#,
    )
    .await;
    let id: String =
        f.db.client
            .query_one("SELECT id::text FROM walhook.subscriptions", &[])
            .await
            .unwrap()
            .get(0);
    let (_, admin) = admin_token(&f).await;
    let mut console = Console::new(&f);
    assert_eq!(console.login(&admin).await.status, 303);
    for path in [
        format!("/console/subscriptions/{id}"),
        "/console/subscriptions".to_owned(),
        "/console/overview".to_owned(),
    ] {
        let page = console.get(&path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.text);
        // The one script element is the console's own.
        assert_eq!(page.text.matches("<script").count(), 1, "{path}");
        assert_eq!(
            page.text
                .matches(r#"<script src="/console/assets/console.js" defer></script>"#)
                .count(),
            1
        );
        assert_eq!(
            page.text
                .matches("&#60;script&#62;alert(1)&#60;/script&#62;")
                .count(),
            if path.ends_with("subscriptions") {
                1
            } else if path.contains(&id) {
                2
            } else {
                0
            },
            "{path}"
        );
    }
    let page = console.get(&format!("/console/subscriptions/{id}")).await;
    assert_eq!(
        page.text
            .matches("&#60;script&#62;alert(&#34;ctx&#34;)&#60;/script&#62;")
            .count(),
        1
    );
    assert_eq!(
        page.text
            .matches("&#60;script&#62;alert(2)&#60;/script&#62;")
            .count(),
        1
    );
    f.daemon.stop().await;
}

#[tokio::test]
async fn a_state_change_without_the_csrf_token_is_refused() {
    let f = ApiFixture::start("console_csrf", |_| {}).await;
    let alice = f.token("alice", &["orders.*"]).await;
    let id = subscribe(
        &f,
        &alice,
        "http://127.0.0.1:9/hook",
        r#"["orders.created"]"#,
    )
    .await;
    let mut console = Console::new(&f);
    assert_eq!(console.login(&alice).await.status, 303);
    let page = console.get(&format!("/console/subscriptions/{id}")).await;
    assert_eq!(page.status, 200);
    let csrf = page.csrf();
    let path = format!("/console/subscriptions/{id}/active");
    let active = || async {
        f.db.client
            .query_one(
                "SELECT active FROM walhook.subscriptions WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    let missing = console.post(&path, &[("active", "false")]).await;
    assert_eq!(missing.status, 403, "{}", missing.text);
    assert!(
        missing.text.contains("missing or wrong CSRF token"),
        "{}",
        missing.text
    );
    let wrong = console
        .post(&path, &[("active", "false"), ("csrf", "not-the-token")])
        .await;
    assert_eq!(wrong.status, 403);
    assert!(active().await);
    // Redeliver, test, edit and logout are refused the same way.
    for action in ["redeliver", "test", "edit", "rotate"] {
        let refused = console
            .post(&format!("/console/subscriptions/{id}/{action}"), &[])
            .await;
        assert_eq!(refused.status, 403, "{action}");
    }
    assert_eq!(console.post("/console/logout", &[]).await.status, 403);
    // The login form needs its own CSRF cookie and field.
    let mut stranger = Console::new(&f);
    let login = stranger.post("/console/login", &[("token", &alice)]).await;
    assert_eq!(login.status, 403);
    assert!(
        login
            .set_cookies
            .iter()
            .all(|c| !c.starts_with("walhook_session="))
    );
    // With the token, it happens.
    let done = console
        .post(&path, &[("active", "false"), ("csrf", &csrf)])
        .await;
    assert_eq!(done.status, 303);
    assert_eq!(
        done.header("location"),
        format!("/console/subscriptions/{id}?notice=disabled")
    );
    assert!(!active().await);
    f.daemon.stop().await;
}

#[tokio::test]
async fn session_cookies_are_httponly_samesite_strict_and_every_page_has_a_strict_csp() {
    let f = ApiFixture::start("console_cookies", |_| {}).await;
    let (_, admin) = admin_token(&f).await;
    let mut console = Console::new(&f);
    let form = console.get("/console/login").await;
    assert_eq!(
        form.header("content-security-policy"),
        walhook::console::CSP
    );
    assert_eq!(
        walhook::console::CSP,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    assert_eq!(form.set_cookies.len(), 1);
    assert!(form.set_cookies[0].starts_with("walhook_login="));
    assert!(
        form.set_cookies[0].ends_with("; Path=/console; HttpOnly; SameSite=Strict; Max-Age=3600")
    );
    let csrf = form.csrf();
    let login = console
        .post("/console/login", &[("csrf", &csrf), ("token", &admin)])
        .await;
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), "/console");
    let session = login
        .set_cookies
        .iter()
        .find(|c| c.starts_with("walhook_session="))
        .unwrap();
    let value = session
        .strip_prefix("walhook_session=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert_eq!(value.len(), 43);
    assert_eq!(
        &session[16 + 43..],
        "; Path=/console; HttpOnly; SameSite=Strict; Max-Age=43200"
    );
    // The token is nowhere in what the browser keeps: only a random session id.
    assert!(!session.contains(&admin));
    for path in [
        "/console/overview",
        "/console/subscriptions",
        "/console/events",
        "/console/tables",
        "/console/subscriptions/00000000-0000-4000-8000-000000000000",
        "/console/assets/console.js",
    ] {
        let page = console.get(path).await;
        assert_eq!(
            page.header("content-security-policy"),
            walhook::console::CSP,
            "{path}"
        );
        assert_eq!(page.header("x-content-type-options"), "nosniff");
        assert_eq!(page.header("x-frame-options"), "DENY");
        assert_eq!(page.header("cache-control"), "no-store");
    }
    assert_eq!(
        console
            .get("/console/subscriptions/00000000-0000-4000-8000-000000000000")
            .await
            .status,
        404
    );
    // No session: pages redirect to the login form.
    let mut anonymous = Console::new(&f);
    let away = anonymous.get("/console/overview").await;
    assert_eq!(
        (away.status, away.header("location")),
        (303, "/console/login")
    );
    f.daemon.stop().await;

    // With api.console_secure_cookie the cookie is Secure.
    let f = ApiFixture::start("console_cookies_secure", |c| {
        c.api.console_secure_cookie = true
    })
    .await;
    let (_, admin) = admin_token(&f).await;
    let mut console = Console::new(&f);
    let login = console.login(&admin).await;
    let session = login
        .set_cookies
        .iter()
        .find(|c| c.starts_with("walhook_session="))
        .unwrap();
    assert!(
        session.ends_with("; HttpOnly; SameSite=Strict; Max-Age=43200; Secure"),
        "{session}"
    );
    f.daemon.stop().await;
}

#[tokio::test]
async fn a_one_time_login_link_works_once_and_not_after_it_expires() {
    let f = ApiFixture::start("console_link", |_| {}).await;
    let (id, _) = admin_token(&f).await;
    let code = login_code(&f, id, Duration::from_secs(600)).await;
    let mut console = Console::new(&f);
    let page = console.get(&format!("/console/login?code={code}")).await;
    assert_eq!(page.status, 200);
    assert_eq!(super::field(&page.text, "code"), code);
    let csrf = page.csrf();
    let first = console
        .post("/console/login", &[("csrf", &csrf), ("code", &code)])
        .await;
    assert_eq!(first.status, 303, "{}", first.text);
    assert_eq!(console.get("/console/overview").await.status, 200);
    // Used: never again, in another browser or the same one.
    let mut other = Console::new(&f);
    let page = other.get(&format!("/console/login?code={code}")).await;
    let csrf = page.csrf();
    let again = other
        .post("/console/login", &[("csrf", &csrf), ("code", &code)])
        .await;
    assert_eq!(again.status, 401);
    assert!(
        again
            .text
            .contains("this login link was used already or has expired")
    );
    assert!(
        again
            .set_cookies
            .iter()
            .all(|c| !c.starts_with("walhook_session="))
    );
    assert_eq!(other.get("/console/overview").await.status, 303);
    // Expired: refused, and gone.
    let expired = login_code(&f, id, Duration::ZERO).await;
    let page = other.get("/console/login").await;
    let csrf = page.csrf();
    let late = other
        .post("/console/login", &[("csrf", &csrf), ("code", &expired)])
        .await;
    assert_eq!(late.status, 401);
    let left: i64 =
        f.db.client
            .query_one("SELECT count(*) FROM walhook.console_logins", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(left, 0);
    f.daemon.stop().await;
}

#[tokio::test]
async fn an_owner_token_cannot_reach_another_owners_subscription() {
    let f = ApiFixture::start("console_isolation", |_| {}).await;
    let alice = f.token("alice", &["orders.*"]).await;
    let bob = f.token("bob", &["*"]).await;
    let theirs = subscribe(
        &f,
        &alice,
        "http://127.0.0.1:9/alice",
        r#"["orders.created"]"#,
    )
    .await;
    let mine = subscribe(
        &f,
        &bob,
        "http://127.0.0.1:9/bob",
        r#"["invoices.created"]"#,
    )
    .await;
    let mut console = Console::new(&f);
    assert_eq!(console.login(&bob).await.status, 303);
    assert_eq!(
        console.get("/console").await.header("location"),
        "/console/subscriptions"
    );
    let list = console.get("/console/subscriptions").await;
    assert!(list.text.contains(&mine));
    assert!(!list.text.contains(&theirs));
    let page = console
        .get(&format!("/console/subscriptions/{theirs}"))
        .await;
    assert_eq!(page.status, 404);
    assert!(page.text.contains(&format!("no subscription {theirs}")));
    assert!(!page.text.contains("http://127.0.0.1:9/alice"));
    let json = console
        .get(&format!("/console/subscriptions/{theirs}/deliveries.json"))
        .await;
    assert_eq!(json.status, 404);
    let body: serde_json::Value = serde_json::from_str(&json.text).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "not_found",
            "message": format!("no subscription {theirs}"), "field": null}})
    );
    let csrf = console
        .get(&format!("/console/subscriptions/{mine}"))
        .await
        .csrf();
    for action in ["active", "rotate", "redeliver", "test", "edit"] {
        let refused = console
            .post(
                &format!("/console/subscriptions/{theirs}/{action}"),
                &[
                    ("csrf", &csrf),
                    ("active", "false"),
                    ("events", "orders.created"),
                ],
            )
            .await;
        assert_eq!(refused.status, 404, "{action}");
    }
    // The admin-only pages are refused to an owner.
    assert_eq!(console.get("/console/overview").await.status, 403);
    assert_eq!(console.get("/console/tables").await.status, 403);
    // And the REST API agrees.
    let api = f
        .api
        .raw("GET", &format!("/v1/hooks/{theirs}"), Some(&bob), None)
        .await;
    assert_eq!(api.status, 404);
    let active: bool =
        f.db.client
            .query_one(
                "SELECT active FROM walhook.subscriptions WHERE id = $1::text::uuid",
                &[&theirs],
            )
            .await
            .unwrap()
            .get(0);
    assert!(active);
    // Alice's event catalog holds only her scopes' types.
    let mut alice_console = Console::new(&f);
    alice_console.login(&alice).await;
    let catalog = alice_console.get("/console/events").await;
    assert!(catalog.text.contains("orders.created"));
    assert!(!catalog.text.contains("invoices.created"));
    f.daemon.stop().await;
}

#[tokio::test]
async fn token_create_admin_makes_a_token_that_sees_everything() {
    let f = ApiFixture::start("console_admin_cli", |_| {}).await;
    let alice = f.token("alice", &["orders.*"]).await;
    let id = subscribe(
        &f,
        &alice,
        "http://127.0.0.1:9/alice",
        r#"["orders.created"]"#,
    )
    .await;
    let walhook = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_walhook"))
            .args(args)
            .env("WALHOOK_DATABASE_URL", &f.db.url)
            .env("WALHOOK_LOG", "walhook=warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (token, said) = walhook(&["token", "create", "--admin"]);
    assert!(said.starts_with("admin token "), "{said}");
    assert!(said.ends_with(" for owner \"admin\", scopes [\"*\"] (shown only now):\n"));
    let token = token.trim();
    let mut console = Console::new(&f);
    let login = console.login(token).await;
    assert_eq!((login.status, login.header("location")), (303, "/console"));
    assert_eq!(
        console.get("/console").await.header("location"),
        "/console/overview"
    );
    assert_eq!(console.get("/console/overview").await.status, 200);
    let page = console.get(&format!("/console/subscriptions/{id}")).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Owner alice"));
    // An owner token is not an admin; `token list` says which is which.
    let (list, _) = walhook(&["token", "list"]);
    let admins: Vec<(&str, &str)> = list
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[1], cols[6])
        })
        .collect();
    assert_eq!(admins, [("alice", "false"), ("admin", "true")]);
    f.daemon.stop().await;
}

#[tokio::test]
async fn edits_rotation_test_events_and_watches_take_effect() {
    let f = ApiFixture::start("console_actions", |_| {}).await;
    let receiver = crate::support::receiver::Receiver::start().await;
    let alice = f.token("alice", &["orders.*"]).await;
    let id = subscribe(&f, &alice, &receiver.url, r#"["orders.created"]"#).await;
    let mut console = Console::new(&f);
    assert_eq!(console.login(&alice).await.status, 303);
    let csrf = console
        .get(&format!("/console/subscriptions/{id}"))
        .await
        .csrf();
    let path = |action: &str| format!("/console/subscriptions/{id}/{action}");
    let saved = console
        .post(
            &path("edit"),
            &[
                ("csrf", &csrf),
                ("target_url", &receiver.url),
                ("events", "orders.created, orders.updated"),
                ("context", "shop-1"),
                ("headers", r#"{"X-Shop": "1"}"#),
            ],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.text);
    let row = f
        .db
        .client
        .query_one(
            "SELECT events, context, headers::text, secret FROM walhook.subscriptions WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, Vec<String>>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, String>(2)
        ),
        (
            vec!["orders.created".to_owned(), "orders.updated".to_owned()],
            Some("shop-1".to_owned()),
            r#"{"X-Shop": "1"}"#.to_owned()
        )
    );
    // Outside the token's scopes: refused like the API refuses it.
    let outside = console
        .post(
            &path("edit"),
            &[
                ("csrf", &csrf),
                ("target_url", &receiver.url),
                ("events", "invoices.created"),
            ],
        )
        .await;
    assert_eq!(outside.status, 403);
    // Rotation shows the new secret once; it is the one stored.
    let rotated = console.post(&path("rotate"), &[("csrf", &csrf)]).await;
    assert_eq!(rotated.status, 200);
    let shown = rotated
        .text
        .split("<code id=\"secret\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    assert!(shown.starts_with("whsec_") && shown != row.get::<_, String>(3));
    let stored: String =
        f.db.client
            .query_one(
                "SELECT secret FROM walhook.subscriptions WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(stored, shown);
    let page = console.get(&format!("/console/subscriptions/{id}")).await;
    assert!(!page.text.contains(&shown));
    // A test event: signed, sent now, listed in recent deliveries.
    let tested = console.post(&path("test"), &[("csrf", &csrf)]).await;
    assert_eq!(
        tested.header("location"),
        format!("/console/subscriptions/{id}?notice=tested")
    );
    let got = receiver.wait_delivered(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].json["type"], "walhook.test");
    assert_eq!(got[0].json["context"], "shop-1");
    assert_eq!(got[0].headers["x-shop"], "1");
    assert!(got[0].headers["webhook-signature"].starts_with("v1,"));
    let recent = console
        .get(&format!("/console/subscriptions/{id}/deliveries.json"))
        .await;
    let recent: serde_json::Value = serde_json::from_str(&recent.text).unwrap();
    assert_eq!(recent["data"][0]["event_type"], "walhook.test");
    assert_eq!(recent["data"][0]["outcome"], "delivered");
    assert_eq!(recent["data"][0]["event_id"], got[0].json["id"]);
    // Watched tables (admin): unwatch, then watch again.
    let (_, admin) = super::admin_token(&f).await;
    let mut ops = Console::new(&f);
    ops.login(&admin).await;
    let csrf = ops.get("/console/tables").await.csrf();
    let watched = || async {
        f.db.client
            .query_one(
                "SELECT count(*) FROM walhook.watched_tables WHERE table_name = 'invoices'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let gone = ops
        .post(
            "/console/tables/unwatch",
            &[("csrf", &csrf), ("table", "invoices")],
        )
        .await;
    assert!(
        gone.text.contains("invoices: no longer watched"),
        "{}",
        gone.text
    );
    assert_eq!(watched().await, 0);
    let back = ops
        .post(
            "/console/tables/watch",
            &[("csrf", &csrf), ("table", "invoices")],
        )
        .await;
    assert!(back.text.contains("invoices: watched"));
    assert_eq!(watched().await, 1);
    let bad = ops
        .post(
            "/console/tables/watch",
            &[("csrf", &csrf), ("table", "nope")],
        )
        .await;
    assert!(
        bad.text
            .contains("nope: relation &#34;public.nope&#34; does not exist"),
        "{}",
        bad.text
    );
    f.daemon.stop().await;
}
