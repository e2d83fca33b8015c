//! A REST API client for tests, over real HTTP, and a running daemon to call.

use reqwest::header::HeaderMap;
use serde_json::Value;
use walhook::config::Config;
use walhook::subscriptions::store;

use super::TestDb;
use super::daemon::{Daemon, FAST_RETRIES, config};

/// One answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body text.
    pub text: String,
    /// Body as JSON (Null when empty or not JSON).
    pub json: Value,
}

impl Answer {
    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// The API of one daemon.
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    client: reqwest::Client,
}

/// A database with `orders` watched, and a daemon (API on) running on it.
pub struct ApiFixture {
    /// The database.
    pub db: TestDb,
    /// The daemon.
    pub daemon: Daemon,
    /// Its API.
    pub api: Api,
}

impl ApiFixture {
    /// Starts it with the test configuration as `tweak` leaves it. Intent verification is
    /// off here (most receivers in tests do not echo challenges); tests of it turn it on.
    pub async fn start(test: &str, tweak: impl FnOnce(&mut Config)) -> ApiFixture {
        let db = TestDb::new(test).await;
        store::migrate(&db.database(), &db.name, true)
            .await
            .unwrap();
        db.exec(
            "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2));
             CREATE TABLE invoices (id int PRIMARY KEY, total int);
             SELECT walhook.watch('orders'); SELECT walhook.watch('invoices');",
        )
        .await;
        let mut config = config(&db, FAST_RETRIES, &[]);
        config.api.verify_intent = false;
        tweak(&mut config);
        let api = Api::new(&config);
        let daemon = Daemon::start(&db, config).await;
        ApiFixture { db, daemon, api }
    }

    /// A new token for `owner` with `scopes`.
    pub async fn token(&self, owner: &str, scopes: &[&str]) -> String {
        let mut conn = store::connect(&self.db.database()).await.unwrap();
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        walhook::api::auth::create(&mut conn, owner, &scopes)
            .await
            .unwrap()
            .1
    }
}

impl Api {
    /// The API `config` serves.
    pub fn new(config: &Config) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Api {
            base: format!("http://{}", config.api.listen),
            client: reqwest::Client::new(),
        }
    }

    /// `walhook_routing_reloads_total` from `/metrics`.
    pub async fn reloads(&self) -> u64 {
        let metrics = self.raw("GET", "/metrics", None, None).await;
        metrics
            .text
            .lines()
            .find_map(|l| l.strip_prefix("walhook_routing_reloads_total "))
            .unwrap_or_else(|| panic!("no reload counter in\n{}", metrics.text))
            .parse()
            .unwrap()
    }

    /// Waits until a full load of the routing index that started after `before` was read
    /// has been published: loads run one after another and are counted when they start, so
    /// that is when a second one has started (a NOTIFY's, then at the latest the periodic
    /// refresh). Read `before` after the change committed.
    pub async fn wait_reload_after(&self, before: u64) {
        let start = std::time::Instant::now();
        while self.reloads().await < before + 2 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(15),
                "no reload"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// An API client of its own (own connections) for `base`.
    pub fn new_base(base: &str) -> Api {
        Api {
            base: base.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// Sends `method path` with an optional bearer token and raw body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            json,
        }
    }

    /// Sends JSON (or nothing) with `token`.
    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Answer {
        self.raw(method, path, Some(token), body.map(|b| b.to_string()))
            .await
    }
}

/// The `{"error": ...}` body of an error.
pub fn error(code: &str, message: &str, field: Option<&str>) -> Value {
    serde_json::json!({"error": {"code": code, "message": message, "field": field}})
}
