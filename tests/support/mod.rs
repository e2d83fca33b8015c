//! Test harness: one disposable PostgreSQL 15 per test process (or the server named by
//! `WALHOOK_TEST_DATABASE_URL`), one database per test.
//!
//! The server is [`LocalPostgres`]: a temp dir, a free 127.0.0.1 port, `wal_level=logical`,
//! run as `postgres` when we are root, removed by a watchdog when the test process exits.

#![allow(dead_code)]

pub mod api;
pub mod capture;
pub mod daemon;
pub mod receiver;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::{Client, NoTls};
use walhook::localpg::LocalPostgres;

/// The server all tests of this process share.
pub struct Server {
    /// Superuser connection string without a database name.
    pub base_url: String,
    /// Host and port, for building role-specific URLs.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether the harness enabled TLS (it does when `openssl` is available).
    pub tls: bool,
}

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("WALHOOK_TEST_DATABASE_URL") {
        Ok(url) => external(url),
        Err(_) => start_local(),
    })
}

fn external(url: String) -> Server {
    let config: tokio_postgres::Config = url.parse().expect("WALHOOK_TEST_DATABASE_URL parses");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    Server {
        base_url: format!("postgres://{user}{password}@{host}:{port}"),
        host,
        port,
        tls: false,
    }
}

/// A second shared server with `wal_level=replica` (no logical replication), for trigger
/// capture; always local.
pub fn replica_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start_local_with("replica"))
}

impl Server {
    /// A server of this test's own (e.g. one the test restarts).
    pub fn of(pg: &LocalPostgres) -> Server {
        Server {
            base_url: format!("postgres://postgres:{}@127.0.0.1:{}", pg.password, pg.port),
            host: "127.0.0.1".into(),
            port: pg.port,
            tls: pg.tls,
        }
    }
}

fn start_local() -> Server {
    start_local_with("logical")
}

fn start_local_with(wal_level: &str) -> Server {
    // Leaked on purpose: the server lives as long as the test process, and the watchdog
    // stops it and removes its directory when the process exits.
    let pg = Box::leak(Box::new(
        LocalPostgres::start_with_wal_level(wal_level).unwrap_or_else(|e| panic!("{e}")),
    ));
    Server::of(pg)
}

/// Connects a tokio-postgres client (driving its connection in the background).
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh database for one test.
pub struct TestDb {
    /// Database name, also used for slot and publication names.
    pub name: String,
    /// Superuser connection string for this database.
    pub url: String,
    /// A superuser client on this database, with `TimeZone=UTC`.
    pub client: Client,
}

impl TestDb {
    /// Creates a database named after the test on the shared (logical) server.
    pub async fn new(test: &str) -> TestDb {
        TestDb::on(server(), test).await
    }

    /// Creates a database named after the test on the `wal_level=replica` server.
    pub async fn replica(test: &str) -> TestDb {
        TestDb::on(replica_server(), test).await
    }

    /// Creates a database named after the test on `server`.
    pub async fn on(server: &Server, test: &str) -> TestDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            test.to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&format!("{}/postgres", server.base_url)).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = format!("{}/{name}", server.base_url);
        let client = connect(&url).await;
        client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        TestDb { name, url, client }
    }

    /// walhook's handle on this database.
    pub fn database(&self) -> walhook::database::Database {
        self.url.parse().expect("test URL parses")
    }

    /// Inserts rows `1..=transactions * rows` into `orders (id, status)`, `rows` per
    /// transaction, in a task of its own (so walhook delivers while it writes).
    pub fn insert_orders(&self, transactions: i64, rows: i64) -> tokio::task::JoinHandle<()> {
        let url = self.url.clone();
        tokio::spawn(async move {
            let client = connect(&url).await;
            for batch in 0..transactions {
                let from = batch * rows + 1;
                client
                    .batch_execute(&format!(
                        "INSERT INTO orders SELECT g, 'new' FROM generate_series({from}, {}) g",
                        from + rows - 1
                    ))
                    .await
                    .unwrap();
            }
        })
    }

    /// Installs walhook's schema, runs `setup` (tables and `walhook.watch` calls), and
    /// subscribes a fresh receiver to the event patterns `events` (SQL array text).
    pub async fn watched_with_receiver(&self, setup: &str, events: &str) -> receiver::Receiver {
        walhook::subscriptions::store::migrate(&self.database(), &self.name, true)
            .await
            .unwrap();
        let receiver = receiver::Receiver::start().await;
        self.exec(setup).await;
        self.exec(&format!(
            "SELECT walhook.subscribe('{}', '{events}')",
            receiver.url
        ))
        .await;
        receiver
    }

    /// Runs SQL (several statements allowed, one implicit transaction).
    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Whether the slot named after this database exists and is streaming.
    pub async fn slot_active(&self) -> bool {
        self.client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&self.name],
            )
            .await
            .unwrap()
            .is_some()
    }

    /// The slot's `confirmed_flush_lsn` and the server's `pg_current_wal_lsn()`, as bytes.
    pub async fn slot_positions(&self, slot: &str) -> (u64, u64) {
        let row = self
            .client
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint, (pg_current_wal_lsn() - '0/0')::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
    }
}
