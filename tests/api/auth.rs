//! Tokens: 401 for missing, malformed, unknown and revoked tokens; the CLI creates, lists
//! (without secrets) and revokes them.

use std::process::Command;

use crate::support::api::{ApiFixture, error};

#[tokio::test]
async fn refuses_requests_without_a_valid_token() {
    let f = ApiFixture::start("api_auth", |_| {}).await;
    let cases = [
        (None, "missing token: send Authorization: Bearer <token>"),
        (
            Some("Basic abc"),
            "the Authorization header must be Bearer <token>",
        ),
        (
            Some("Bearer whk_not_a_real_token"),
            "invalid or revoked token",
        ),
    ];
    for (header, message) in cases {
        let mut request = reqwest::Client::new().get(format!("{}/v1/hooks", f.api.base));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 401);
        assert_eq!(
            answer.headers()["www-authenticate"],
            "Bearer realm=\"walhook\""
        );
        let body: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert_eq!(body, error("unauthorized", message, None), "{header:?}");
    }
    f.daemon.stop().await;
}

fn walhook(db_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .args(args)
        .env("WALHOOK_DATABASE_URL", db_url)
        .env("WALHOOK_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn cli_creates_lists_and_revokes_tokens() {
    let f = ApiFixture::start("api_token_cli", |_| {}).await;
    let url = &f.db.url;
    let (ok, stdout, stderr) = walhook(
        url,
        &[
            "token", "create", "--owner", "zapier", "--scope", "orders.*",
        ],
    );
    assert!(ok, "{stderr}");
    let token = stdout.trim().to_owned();
    assert!(token.starts_with("whk_"), "{stdout}");
    let listed = f.api.call("GET", "/v1/hooks", &token, None).await;
    assert_eq!(
        (listed.status, listed.json),
        (200, serde_json::json!({"data": [], "next_cursor": null}))
    );

    let (ok, list, _) = walhook(url, &["token", "list"]);
    assert!(ok);
    assert!(!list.contains(&token), "list never shows a token: {list}");
    let line = list.lines().nth(1).unwrap();
    let columns: Vec<&str> = line.split('\t').collect();
    assert_eq!(columns[1..3], ["zapier", "orders.*"]);
    assert_ne!(columns[4], "-", "last use is recorded: {line}");
    assert_eq!(columns[5], "-");
    let stored: String =
        f.db.client
            .query_one("SELECT token_hash FROM walhook.api_tokens", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(stored.len(), 64);
    assert!(!stored.contains(&token));

    let (ok, _, stderr) = walhook(url, &["token", "revoke", columns[0]]);
    assert!(ok, "{stderr}");
    let refused = f.api.call("GET", "/v1/hooks", &token, None).await;
    assert_eq!(
        (refused.status, refused.json),
        (401, error("unauthorized", "invalid or revoked token", None))
    );
    let (ok, _, stderr) = walhook(url, &["token", "revoke", columns[0]]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("no unrevoked token {}", columns[0])),
        "{stderr}"
    );

    let (ok, _, stderr) = walhook(
        url,
        &["token", "create", "--owner", "x", "--scope", "orders"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--scope \"orders\" is not an event pattern"),
        "{stderr}"
    );
    f.daemon.stop().await;
}
