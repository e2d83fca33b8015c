//! `walhook demo` works as the README says: webhooks arrive, Ctrl-C stops it cleanly.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::daemon::spawn_demo;

#[test]
fn demo_delivers_webhooks_and_stops_on_ctrl_c() {
    let (mut child, rx) = spawn_demo();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut types = Vec::new();
    let mut curl = None;
    while types.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("demo printed 4 webhooks within 60 s");
        if let Some(command) = line.trim().strip_prefix("curl ") {
            curl = Some(command.to_owned());
        }
        if let Some(t) = line.trim().strip_prefix("\"type\": ") {
            types.push(t.trim_end_matches(',').trim_matches('"').to_owned());
        }
    }
    types.sort();
    assert_eq!(
        types,
        [
            "orders.created",
            "orders.created",
            "orders.deleted",
            "orders.updated"
        ]
    );
    // The printed REST API command works.
    let curl = curl.expect("demo printed a curl command");
    let (header, url) = curl
        .strip_prefix("-H 'Authorization: Bearer ")
        .and_then(|rest| rest.split_once("' "))
        .expect("curl -H 'Authorization: Bearer TOKEN' URL");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    });
    assert!(body.contains("\"type\":\"orders.created\""), "{body}");
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exited with {status}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("stopped; the throwaway server is removed.")
    );
}
