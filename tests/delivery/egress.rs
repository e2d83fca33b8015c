//! Where delivery may connect: environment proxies are ignored, every IPv4 spelling and
//! IPv6 form of a loopback address is refused before connecting, for deliveries and for
//! intent verification alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use walhook::delivery::client::Sender;
use walhook::subscriptions::store;

use crate::support::TestDb;
use crate::support::daemon::{Daemon, config, spawn_walhook};

/// A plain TCP listener on 127.0.0.1 that counts every connection (and closes it).
async fn recording_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (port, connections)
}

async fn setup(test: &str, allow_private: bool) -> TestDb {
    let db = TestDb::new(test).await;
    store::migrate(&db.database(), &db.name, allow_private)
        .await
        .unwrap();
    db.exec("CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');")
        .await;
    db
}

/// Waits until every subscription has a queued or dead row with an error (an attempt was
/// made); returns (target_url, last_error) ordered by URL.
async fn attempted(db: &TestDb, n: usize, within: Duration) -> Vec<(String, String)> {
    let start = Instant::now();
    loop {
        let rows = db
            .client
            .query(
                "SELECT DISTINCT ON (s.target_url) s.target_url, q.last_error \
                 FROM walhook.delivery_queue q JOIN walhook.subscriptions s ON s.id = q.subscription_id \
                 WHERE q.last_error IS NOT NULL AND q.attempts > 0 ORDER BY s.target_url, q.id",
                &[],
            )
            .await
            .unwrap();
        if rows.len() >= n {
            return rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        assert!(
            start.elapsed() < within,
            "{} of {n} subscriptions attempted after {within:?}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn environment_proxies_are_ignored() {
    let db = setup("env_proxy", false).await;
    let (port, connections) = recording_listener().await;
    // Accepted at subscribe time (a name), refused when connecting by the guard's resolver.
    db.exec(
        "INSERT INTO walhook.subscriptions (target_url, events) \
         VALUES ('http://metadata.google.internal/computeMetadata/v1/', '{*}')",
    )
    .await;
    let proxy = format!("http://127.0.0.1:{port}");
    let mut child = spawn_walhook(
        &db,
        &[
            ("WALHOOK_DELIVERY__ALLOW_PRIVATE_TARGETS", "false"),
            ("WALHOOK_DELIVERY__RETRY_SCHEDULE_MS", "[60000]"),
            ("HTTP_PROXY", &proxy),
            ("HTTPS_PROXY", &proxy),
            ("ALL_PROXY", &proxy),
            ("http_proxy", &proxy),
            ("https_proxy", &proxy),
            ("all_proxy", &proxy),
        ],
    );
    let start = Instant::now();
    loop {
        let active: Option<bool> = db
            .client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.name],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        if active == Some(true) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "walhook exited");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "walhook did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.exec("INSERT INTO orders VALUES (1)").await;
    // The name goes to the host's resolver first; with the whole suite on two cores and a
    // resolver that times out, that alone can take longer than a local refusal.
    let rows = attempted(&db, 1, Duration::from_secs(45)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].1.starts_with("connect: "), "{:?}", rows[0]);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the proxy saw traffic"
    );
}

#[tokio::test]
async fn no_ipv4_spelling_of_loopback_is_ever_connected_to() {
    // Subscribed while private targets are allowed; the daemon then refuses them.
    let db = setup("ipv4_spellings", true).await;
    let (port, connections) = recording_listener().await;
    let targets = [
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("http://127.0.0.1.:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://[::127.0.0.1]:{port}/"),
        format!("http://[64:ff9b::7f00:1]:{port}/"),
    ];
    for target in &targets {
        db.exec(&format!(
            "INSERT INTO walhook.subscriptions (target_url, events) VALUES ('{target}', '{{*}}')"
        ))
        .await;
    }
    let delivery = "allow_private_targets = false\nretry_schedule_ms = [60000]\ntimeout_ms = 2000";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    db.exec("INSERT INTO orders VALUES (1)").await;
    let rows = attempted(&db, targets.len(), Duration::from_secs(20)).await;
    let refused = |host: &str| {
        format!(
            "target {host} resolves only to loopback/private/link-local addresses, refused \
             (set delivery.allow_private_targets = true to allow)"
        )
    };
    let mut expected: Vec<(String, String)> = targets
        .iter()
        .zip([
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.1",
            "127.0.0.1",
            "[::ffff:7f00:1]",
            "[::7f00:1]",
            "[64:ff9b::7f00:1]",
        ])
        .map(|(t, host)| (t.clone(), refused(host)))
        .collect();
    expected.sort();
    assert_eq!(rows, expected);
    // Intent verification goes through the same guarded client.
    let sender = Sender::new(Duration::from_secs(2), false, None).unwrap();
    for target in &targets {
        let err = sender.verify(target, "challenge").await.unwrap_err();
        assert!(
            err.ends_with("refused (set delivery.allow_private_targets = true to allow)"),
            "{err}"
        );
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a refused target was connected to"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_proxy_with_private_targets_refused_stops_start_up_naming_both_keys() {
    let db = TestDb::new("proxy_refused").await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walhook"))
        .arg("run")
        .env("WALHOOK_DATABASE_URL", &db.url)
        .env("WALHOOK_DELIVERY__PROXY", "http://127.0.0.1:3128")
        .env("WALHOOK_DELIVERY__ALLOW_PRIVATE_TARGETS", "false")
        .env("WALHOOK_API__ENABLED", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("walhook did not refuse to start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(
            "configuration key delivery.proxy: set while delivery.allow_private_targets = false"
        ),
        "{stderr}"
    );
}
