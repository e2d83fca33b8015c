//! Dead letters are purged once dead longer than `delivery.dead_letter_retention`.

use std::time::{Duration, Instant};

use walhook::subscriptions::store;

use crate::support::TestDb;
use crate::support::daemon::{Daemon, config};
use crate::support::receiver::Receiver;

#[tokio::test]
async fn dead_letters_past_the_retention_are_purged_newer_ones_stay() {
    let db = TestDb::new("dead_letter_retention").await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    db.exec(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');
         SELECT walhook.subscribe('{}', '{{orders.*}}');",
        receiver.url
    ))
    .await;
    // Two dead for 2 h and 61 min, one dead for 10 min, one pending (never purged), all
    // created 3 h ago.
    db.exec(
        "INSERT INTO walhook.delivery_queue
           (subscription_id, event_id, event_type, row_key, body, status, attempts, next_attempt_at, created_at)
         SELECT s.id, v.e, 'orders.created', v.e, '{}', v.st, 3, now() - v.dead_for, now() - interval '3 hours'
         FROM walhook.subscriptions s,
              (VALUES ('evt_old1', 'dead', interval '2 hours'),
                      ('evt_old2', 'dead', interval '61 minutes'),
                      ('evt_new', 'dead', interval '10 minutes'),
                      ('evt_pending', 'pending', interval '-1 day')) AS v(e, st, dead_for)",
    )
    .await;
    let delivery = "allow_private_targets = true\ndead_letter_retention = \"1h\"";
    let daemon = Daemon::start(&db, config(&db, delivery, &[])).await;
    let start = Instant::now();
    let left: Vec<String> = loop {
        let rows = db
            .client
            .query(
                "SELECT event_id FROM walhook.delivery_queue ORDER BY event_id",
                &[],
            )
            .await
            .unwrap();
        let left: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if left.len() <= 2 {
            break left;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not purged: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(left, ["evt_new", "evt_pending"]);
    let dead: i64 = db
        .client
        .query_one("SELECT count(*) FROM walhook.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 1);
    daemon.stop().await;
}
