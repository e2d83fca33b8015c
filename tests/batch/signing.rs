//! A batch is one signed request: verified here with the `openssl` CLI (an implementation
//! of HMAC-SHA256 independent of walhook's crates), over exactly the bytes received.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{SECRET, expected_batch_id, member_ids, setup, subscribe};
use crate::support::daemon::{Daemon, FAST_RETRIES, config};
use crate::support::receiver::{Received, Receiver};

/// `v1,` + base64 HMAC-SHA256 of `id.timestamp.body` by `openssl dgst`, Standard Webhooks.
fn openssl_signature(r: &Received) -> String {
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let hexkey: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-mac", "HMAC", "-macopt"])
        .arg(format!("hexkey:{hexkey}"))
        .arg("-binary")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    let signed = format!(
        "{}.{}.{}",
        r.headers["webhook-id"], r.headers["webhook-timestamp"], r.body
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signed.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst failed");
    format!("v1,{}", STANDARD.encode(out.stdout))
}

#[tokio::test]
async fn a_batch_is_one_request_signed_over_the_array() {
    let db = setup("batch_signed").await;
    let receiver = Receiver::start().await;
    subscribe(&db, &receiver.url, "batch_max = 10, batch_window_ms = 300").await;
    let daemon = Daemon::start(&db, config(&db, FAST_RETRIES, &[])).await;
    db.exec("INSERT INTO orders (id) SELECT g FROM generate_series(1, 5) g")
        .await;
    let got = receiver.wait_delivered(1, Duration::from_secs(20)).await;
    // Nothing else arrives: the five events were one request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.requests().len(), 1);
    let r = &got[0];
    let members = r.json.as_array().unwrap();
    assert_eq!(
        members
            .iter()
            .map(|e| e["data"]["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(members.iter().all(|e| e["type"] == "orders.created"));
    let ids = member_ids(&r.json);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(r.headers["webhook-id"], expected_batch_id(&ids));
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["webhook-signature"], openssl_signature(r));
    daemon.stop().await;
}
