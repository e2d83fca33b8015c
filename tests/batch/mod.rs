//! Batched delivery (`batch_max`, `batch_window_ms`) and cleartext HTTP/2 (`http2`), end to
//! end through `walhook run` against real receivers on 127.0.0.1.

mod http2;
mod order;
mod retry;
mod signing;
mod validation;

use walhook::subscriptions::store;

use crate::support::TestDb;

/// A secret of 32 bytes, as `walhook.new_secret()` makes them.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=";

/// A database with `orders` watched and walhook's schema in place.
pub async fn setup(test: &str) -> TestDb {
    let db = TestDb::new(test).await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         SELECT walhook.watch('orders');",
    )
    .await;
    db
}

/// Subscribes `url` to `orders.*` with [`SECRET`], then sets `settings` (SQL `SET` list,
/// e.g. `batch_max = 10`) on it.
pub async fn subscribe(db: &TestDb, url: &str, settings: &str) {
    db.exec(&format!(
        "SELECT walhook.subscribe('{url}', '{{orders.*}}', secret => '{SECRET}');
         UPDATE walhook.subscriptions SET {settings} WHERE target_url = '{url}';"
    ))
    .await;
}

/// The `webhook-id` a batch of these event ids must carry, computed independently of
/// walhook: `bat_` + hex of the first 16 bytes of SHA-256 over the ids joined by `,`.
pub fn expected_batch_id(ids: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(ids.join(",").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("bat_{hex}")
}

/// The event ids of a batch body (a JSON array of envelopes), in order.
pub fn member_ids(body: &serde_json::Value) -> Vec<String> {
    body.as_array()
        .unwrap_or_else(|| panic!("a batch body is an array: {body}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}
