//! The console in a real headless Chromium (Debian's `chromium` package, never a downloaded
//! build), driven by Playwright for Python (`browser.py`, a subprocess like the schemathesis
//! test's): log in, an INSERT's delivery in recent deliveries within 2 s, a dead letter
//! redelivered and seen delivered, 360 px dark mode, another owner kept out (HTML and JSON).
//! The screenshots land in docs/console/. Without chromium or Playwright the test skips,
//! except under `CI=true` (`.ci/run` installs both), where it fails.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{admin_token, subscribe};
use crate::support::api::ApiFixture;
use crate::support::receiver::Receiver;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether chromium and Playwright are here; under CI they must be.
fn browser_present() -> bool {
    let playwright = Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .output()
        .is_ok_and(|o| o.status.success());
    let present = playwright && std::path::Path::new(CHROMIUM).exists();
    if !present {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "chromium ({CHROMIUM}) and Playwright for Python are required under CI=true"
        );
        eprintln!("skipped: needs apt-get install chromium and pip install playwright");
    }
    present
}

/// The event id of the queue row or delivery of `orders` row `id`, once it exists.
async fn event_of_row(f: &ApiFixture, receiver: &Receiver, id: i64) -> String {
    let start = Instant::now();
    loop {
        if let Some(r) = receiver
            .requests()
            .iter()
            .find(|r| r.json["data"]["id"].as_i64() == Some(id))
        {
            return r.json["id"].as_str().unwrap().to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "row {id} never sent"
        );
        let _ = f;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_console_in_headless_chromium() {
    if !browser_present() {
        return;
    }
    let f = ApiFixture::start("console_browser", |_| {}).await;
    let receiver = Receiver::start().await;
    let alice = f.token("alice", &["orders.*"]).await;
    let bob = f.token("bob", &["*"]).await;
    let (_, admin) = admin_token(&f).await;
    let sub = subscribe(&f, &alice, &receiver.url, r#"["orders.created"]"#).await;
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console");
    std::fs::create_dir_all(shots).unwrap();
    let args = json!({
        "base": f.api.base, "chromium": CHROMIUM, "screenshots": shots,
        "admin_token": admin, "other_token": bob, "subscription": sub,
    });
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/console/browser.py"
        ))
        .arg(args.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(120), lines.recv())
            .await
            .expect("browser.py went quiet for 2 minutes")
    };
    let mut answer = |value: serde_json::Value| {
        writeln!(stdin, "{value}").unwrap();
        stdin.flush().unwrap();
    };
    let mut done = false;
    while let Some(line) = next().await {
        eprintln!("browser.py: {line}");
        match line.as_str() {
            "WAIT insert" => {
                f.db.exec("INSERT INTO orders VALUES (1, 'new', 12.50)")
                    .await;
                let event = event_of_row(&f, &receiver, 1).await;
                answer(json!({"event_id": event}));
            }
            "WAIT dead" => {
                // Failing until it is a dead letter (four attempts with the test schedule).
                receiver.fail_row(2, 1000);
                f.db.exec("INSERT INTO orders VALUES (2, 'new', 99.00)")
                    .await;
                let event = event_of_row(&f, &receiver, 2).await;
                let start = Instant::now();
                while f
                    .db
                    .client
                    .query_opt(
                        "SELECT 1 FROM walhook.delivery_queue WHERE event_id = $1 AND status = 'dead'",
                        &[&event],
                    )
                    .await
                    .unwrap()
                    .is_none()
                {
                    assert!(start.elapsed() < Duration::from_secs(20), "no dead letter");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                receiver.fail_row(2, 0);
                answer(json!({"event_id": event}));
            }
            "WAIT redelivered" => {
                let delivered = receiver
                    .delivered()
                    .iter()
                    .filter(|r| r.json["data"]["id"].as_i64() == Some(2))
                    .count();
                assert_eq!(delivered, 1);
                answer(json!({}));
            }
            "DONE" => done = true,
            _ => {}
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success() && done, "browser.py failed: {status}");
    for shot in ["overview", "subscription", "subscription-360-dark"] {
        let bytes = std::fs::read(format!("{shots}/{shot}.png")).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{shot}");
    }
    f.daemon.stop().await;
}
