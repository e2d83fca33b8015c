//! `check_subscription` refuses what the sender must not or cannot use: hop-by-hop, framing
//! and walhook's own headers, every spelling of a private IPv4 target, IPv6 literals carrying
//! one, backslashes, undecodable secrets; and `unsubscribe('<uuid>')` removes by id.

use base64::Engine;
use walhook::delivery::signing::Key;
use walhook::subscriptions::store;

use super::failure;
use crate::support::TestDb;

/// A migrated database with private targets refused.
async fn strict(test: &str) -> TestDb {
    let db = TestDb::new(test).await;
    store::migrate(&db.database(), &db.name, false)
        .await
        .unwrap();
    db
}

/// (SQLSTATE, message, COLUMN field) of a refused subscription.
async fn refused(db: &TestDb, sql: &str) -> (String, String, Option<String>) {
    let err = db.client.batch_execute(sql).await.expect_err(sql);
    let e = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
    (
        e.code().code().to_owned(),
        e.message().to_owned(),
        e.column().map(str::to_owned),
    )
}

#[tokio::test]
async fn forbidden_headers_are_refused_naming_the_header() {
    let db = strict("headers").await;
    let cases = [
        (
            r#"{"Content-Length": "5", "Host": "x"}"#,
            r#""Content-Length" may not be set (framing header)"#,
        ),
        (
            r#"{"Host": "x"}"#,
            r#""Host" may not be set (routing header)"#,
        ),
        (
            r#"{"transfer-encoding": "chunked"}"#,
            r#""transfer-encoding" may not be set (framing header)"#,
        ),
        (
            r#"{"Content-Type": "text/plain"}"#,
            r#""Content-Type" may not be set (framing header)"#,
        ),
        (
            r#"{"Trailer": "x"}"#,
            r#""Trailer" may not be set (framing header)"#,
        ),
        (
            r#"{"Connection": "close"}"#,
            r#""Connection" may not be set (hop-by-hop header)"#,
        ),
        (
            r#"{"keep-alive": "1"}"#,
            r#""keep-alive" may not be set (hop-by-hop header)"#,
        ),
        (
            r#"{"Upgrade": "h2c"}"#,
            r#""Upgrade" may not be set (hop-by-hop header)"#,
        ),
        (
            r#"{"TE": "trailers"}"#,
            r#""TE" may not be set (hop-by-hop header)"#,
        ),
        (
            r#"{"Proxy-Authorization": "x"}"#,
            r#""Proxy-Authorization" may not be set (hop-by-hop header)"#,
        ),
        (
            r#"{"User-Agent": "me"}"#,
            r#""User-Agent" may not be set (set by walhook)"#,
        ),
        (
            r#"{"Webhook-Signature": "v1,x"}"#,
            r#""Webhook-Signature" may not be set (set by walhook)"#,
        ),
        (
            r#"{"webhook-id": "x"}"#,
            r#""webhook-id" may not be set (set by walhook)"#,
        ),
        (
            r#"{"x team": "a"}"#,
            r#""x team" may not be set (not a valid HTTP header name)"#,
        ),
        (
            r#"{"": "a"}"#,
            r#""" may not be set (not a valid HTTP header name)"#,
        ),
        (
            r#"{"x-a": "ok\r\nX-Injected: 1"}"#,
            r#"the value of "x-a" contains CR, LF or another control character"#,
        ),
    ];
    for (headers, reason) in cases {
        let sql = format!(
            "SELECT walhook.subscribe('https://example.test/h', '{{*}}', headers => '{}')",
            headers.replace('\'', "''")
        );
        assert_eq!(
            refused(&db, &sql).await,
            (
                "23514".to_owned(),
                format!("walhook.subscriptions.headers: {reason}"),
                Some("headers".to_owned())
            ),
            "{headers}"
        );
    }
    // Plain SQL too, and ordinary headers pass.
    db.exec(
        "INSERT INTO walhook.subscriptions (target_url, events, headers)
         VALUES ('https://example.test/h', '{*}', '{\"Authorization\": \"Bearer t\", \"X-Tenant\": \"7\", \"x-tab\": \"a\\tb\"}')",
    )
    .await;
    assert_eq!(
        refused(
            &db,
            "UPDATE walhook.subscriptions SET headers = '{\"Host\": \"evil.test\"}'"
        )
        .await
        .1,
        r#"walhook.subscriptions.headers: "Host" may not be set (routing header)"#
    );
    let reasons: Vec<Option<String>> = db
        .client
        .query(
            "SELECT walhook.header_forbidden(n) FROM unnest(ARRAY['CONTENT-LENGTH', 'proxy-connection', 'x-ok', 'Expect']) n",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        reasons,
        vec![
            Some("framing header".to_owned()),
            Some("hop-by-hop header".to_owned()),
            None,
            Some("hop-by-hop header".to_owned())
        ]
    );
}

#[tokio::test]
async fn every_spelling_of_a_private_address_is_refused() {
    let db = strict("targets").await;
    let private = [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0X7F000001/",
        "http://127.1/",
        "http://0177.0.0.1/",
        "http://0177.1:8080/h",
        "http://127.0.0.1./",
        "http://127.0.0.%31/",
        "http://%31%32%37.0.0.1/",
        "http://0/",
        "http://0x/",
        "http://10.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://user@127.0.0.1/",
        "http://a@b@127.0.0.1/",
        "http://１２７．０．０．１/",
        "http://127。0。0。1/",
        "http://[::1]/",
        "http://[::127.0.0.1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b::10.0.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[64:ff9b:1::1]/",
        "http://[fd00:ec2::254]/",
        // Numbers the URL parser refuses: nothing could be delivered there.
        "http://256.256.256.256/",
        "http://1.2.3.4.5/",
        "http://09.1/",
        "http://4294967296/",
        "http://[::1%25eth0]/",
    ];
    for url in private {
        let sql = format!("SELECT walhook.subscribe('{url}', '{{*}}')");
        assert_eq!(
            refused(&db, &sql).await,
            (
                "23514".to_owned(),
                format!(
                    "walhook.subscriptions.target_url '{url}' points to a loopback, private, link-local or metadata address"
                ),
                Some("target_url".to_owned())
            ),
            "{url}"
        );
    }
    for url in [
        r"http://example.test\@127.0.0.1/",
        r"http://127.0.0.1\/",
        "http://example.test/a\u{1}b",
    ] {
        let sql = format!("SELECT walhook.subscribe('{url}', '{{*}}')");
        // quote_literal writes a backslash as E'..\\..'.
        let quoted = if url.contains('\\') {
            format!("E'{}'", url.replace('\\', "\\\\"))
        } else {
            format!("'{url}'")
        };
        assert_eq!(
            refused(&db, &sql).await.1,
            format!(
                "walhook.subscriptions.target_url must be an http:// or https:// URL, got {quoted}"
            ),
            "{url:?}"
        );
    }
    for url in [
        "http://8.8.8.8/",
        "http://0x08080808/",
        "http://134744072/",
        "http://93.184.216.34:8080/x",
        "http://[2606:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
        "http://[64:ff9b::808:808]/",
        "http://example.test/",
        "http://1.2.3.4.example.test/",
        "http://0x7f.example.test/",
        "https://user:pw@hooks.example.test:8443/in?x=1#f",
    ] {
        db.exec(&format!("SELECT walhook.subscribe('{url}', '{{*}}')"))
            .await;
    }
    let parsed: Vec<Option<String>> = db
        .client
        .query(
            "SELECT host(walhook.host_ipv4(h)) FROM unnest(ARRAY['0x7f.1', '127.1', '2130706433', '0177.0.0.1', '1.2.3.4.', 'example.test', '10.0x10.0377']) h",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        parsed,
        vec![
            some("127.0.0.1"),
            some("127.0.0.1"),
            some("127.0.0.1"),
            some("127.0.0.1"),
            some("1.2.3.4"),
            None,
            some("10.16.0.255")
        ]
    );
    let embedded: Vec<Option<String>> = db
        .client
        .query(
            "SELECT host(walhook.embedded_ipv4(a::inet)) FROM unnest(ARRAY['::ffff:1.2.3.4', '::1.2.3.4', '64:ff9b::102:304', '2002:102:304::', '2606:4700::1111', '1.2.3.4']) a",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        embedded,
        vec![
            some("1.2.3.4"),
            some("1.2.3.4"),
            some("1.2.3.4"),
            some("1.2.3.4"),
            None,
            None
        ]
    );
}

#[tokio::test]
async fn secrets_are_refused_unless_the_sender_can_decode_them() {
    let db = strict("secrets").await;
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
    let padded_25 = b64(25); // 36 characters ending in "=="
    let stray_bits = format!("{}x==", &padded_25[..33]);
    let cases: Vec<(String, bool)> = vec![
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(), true),
        (format!("whsec_{}", b64(24)), true),
        (format!("whsec_{}", b64(64)), true),
        (format!("whsec_{padded_25}"), true),
        (format!("whsec_{}", b64(23)), false),
        (format!("whsec_{}", b64(65)), false),
        (format!("whsec_{}", padded_25.trim_end_matches('=')), false),
        (format!("whsec_{stray_bits}"), false),
        (format!("whsec_{}A", b64(24)), false),
        (format!("whsec_{}", b64(24).replace('B', "-")), false),
        (b64(32), false),
        ("hunter2".into(), false),
    ];
    for (secret, ok) in cases {
        // The Rust signer agrees (apart from the length bounds SQL adds).
        let decodes = Key::parse(&secret).is_ok();
        let sql = format!(
            "SELECT walhook.subscribe('https://example.test/h', '{{*}}', secret => '{secret}')"
        );
        if ok {
            assert!(decodes, "{secret}");
            db.exec(&sql).await;
        } else {
            assert_eq!(
                refused(&db, &sql).await,
                (
                    "23514".to_owned(),
                    "walhook.subscriptions.secret must be whsec_ followed by at least 24 base64-encoded bytes".to_owned(),
                    Some("secret".to_owned())
                ),
                "{secret}"
            );
        }
    }
}

#[tokio::test]
async fn unsubscribe_by_id_as_text_removes_that_subscription() {
    let db = strict("unsubscribe").await;
    let id = |sql: &'static str| {
        let db = &db;
        async move {
            db.client
                .query_one(sql, &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let a = id("SELECT id::text FROM walhook.subscribe('https://a.example.test/', '{*}')").await;
    let b = id("SELECT id::text FROM walhook.subscribe('https://a.example.test/', '{*}')").await;
    let c = id("SELECT id::text FROM walhook.subscribe('https://c.example.test/', '{*}')").await;
    let count = |sql: String| {
        let db = &db;
        async move {
            db.client
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    };
    // An untyped literal picks the text overload: a UUID there is an id.
    assert_eq!(count(format!("SELECT walhook.unsubscribe('{a}')")).await, 1);
    assert_eq!(
        count(format!(
            "SELECT walhook.unsubscribe('{}')",
            a.to_uppercase()
        ))
        .await,
        0
    );
    assert_eq!(
        count("SELECT walhook.unsubscribe('00000000-0000-0000-0000-000000000000')".into()).await,
        0
    );
    let left: Vec<String> = db
        .client
        .query(
            "SELECT id::text FROM walhook.subscriptions ORDER BY created_at, id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec![b.clone(), c.clone()]);
    let gone: bool = db
        .client
        .query_one(&format!("SELECT walhook.unsubscribe('{b}'::uuid)"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(gone);
    assert_eq!(
        count("SELECT walhook.unsubscribe('https://c.example.test/')".into()).await,
        1
    );
    let (code, _) = failure(&db.client, "SELECT walhook.unsubscribe(42)").await;
    assert_eq!(code, "42883");
}
