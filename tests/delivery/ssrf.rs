//! Private targets are refused at subscribe time (IP literals) and at connect time (names).

use std::time::{Duration, Instant};

use walhook::subscriptions::store;

use crate::support::TestDb;
use crate::support::daemon::{Daemon, config};
use crate::support::receiver::Receiver;

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let db = TestDb::new("ssrf").await;
    store::migrate(&db.database(), &db.name, false)
        .await
        .unwrap();
    db.exec("CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');")
        .await;
    for target in [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest",
        "http://[::1]/",
        "http://127.0.0.1:9/",
    ] {
        let err = db
            .client
            .batch_execute(&format!("SELECT walhook.subscribe('{target}', '{{*}}')"))
            .await
            .expect_err(target);
        let message = err.as_db_error().unwrap().message().to_owned();
        assert_eq!(
            message,
            format!(
                "walhook.subscriptions.target_url '{target}' points to a loopback, private, link-local or metadata address"
            )
        );
    }
    // A name is accepted at subscribe time and refused when connecting: no request arrives.
    let receiver = Receiver::start().await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    db.exec(&format!("SELECT walhook.subscribe('{by_name}', '{{*}}')"))
        .await;
    let delivery = "allow_private_targets = false\nretry_schedule_ms = [100]\ntimeout_ms = 2000";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    db.exec("INSERT INTO orders VALUES (1)").await;
    let start = Instant::now();
    let error: String = loop {
        let row = db
            .client
            .query_opt("SELECT last_error FROM walhook.dead_letters", &[])
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(start.elapsed() < Duration::from_secs(15), "not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        error.contains("resolves only to loopback/private/link-local addresses, refused"),
        "{error}"
    );
    assert!(
        receiver.requests().is_empty(),
        "no traffic reached the private target"
    );
    daemon.stop().await;
}
