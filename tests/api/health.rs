//! `/healthz`, `/readyz` (503 while capture is not streaming) and `/metrics`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::api::{Api, ApiFixture};

async fn wait_ready(api: &Api, want: u16) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let answer = api.raw("GET", "/readyz", None, None).await;
        if answer.status == want {
            return answer.json;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "readyz stayed {}",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let f = ApiFixture::start("api_health", |c| c.capture.reconnect_min_ms = 3000).await;
    let live = f.api.raw("GET", "/healthz", None, None).await;
    assert_eq!((live.status, live.json), (200, json!({"status": "ok"})));
    assert_eq!(
        wait_ready(&f.api, 200).await,
        json!({"status": "ready", "role": "streaming"})
    );

    f.db.exec(
        "SELECT walhook.subscribe('http://127.0.0.1:9/a', '{orders.*}');
               SELECT walhook.subscribe('http://127.0.0.1:9/b', '{orders.*}');
               UPDATE walhook.subscriptions SET active = false WHERE target_url LIKE '%/b'",
    )
    .await;
    let metrics = f.api.raw("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    for line in [
        "walhook_capture_streaming 1",
        "walhook_queue_events{status=\"pending\"} 0",
        "walhook_queue_events{status=\"dead\"} 0",
        "walhook_subscriptions{state=\"active\"} 1",
        "walhook_subscriptions{state=\"inactive\"} 1",
        "# TYPE walhook_slot_retained_wal_bytes gauge",
    ] {
        assert!(
            metrics.text.lines().any(|l| l == line),
            "{line} in\n{}",
            metrics.text
        );
    }

    // Cut the replication connection: not ready until capture streams again.
    f.db.exec(&format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{}'",
        f.db.name
    ))
    .await;
    assert_eq!(
        wait_ready(&f.api, 503).await,
        json!({"status": "not ready", "role": "reconnecting", "reason": "capture is not streaming"})
    );
    assert_eq!(
        wait_ready(&f.api, 200).await,
        json!({"status": "ready", "role": "streaming"})
    );
    f.daemon.stop().await;
}
