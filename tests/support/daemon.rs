//! `walhook run` inside the test process, on a test database.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walhook::app::AppError;
use walhook::config::Config;

use super::TestDb;

/// A running daemon.
pub struct Daemon {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), AppError>>,
}

/// The daemon configuration for `db`: slot/publication named after it, fast status updates,
/// a short retry schedule, private targets allowed (receivers are on 127.0.0.1), the API on a
/// free port; `delivery` is TOML appended to `[delivery]`.
pub fn config(db: &TestDb, delivery: &str, tables: &[&str]) -> Config {
    let tables: String = tables
        .iter()
        .map(|t| format!("[[tables]]\nname = \"{t}\"\n"))
        .collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let toml = format!(
        "database_url = \"{url}\"\n{tables}\n[api]\nlisten = \"127.0.0.1:{port}\"\n[capture]\nslot = \"{name}\"\npublication = \"{name}\"\n\
         status_interval_ms = 100\n[delivery]\nretry_poll_ms = 50\n{delivery}\n",
        url = db.url,
        name = db.name,
    );
    Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

/// Default delivery settings for tests.
pub const FAST_RETRIES: &str =
    "allow_private_targets = true\nretry_schedule_ms = [200, 200, 200]\ntimeout_ms = 2000";

impl Daemon {
    /// Starts the daemon and waits until its capture streams (`/readyz` answers 200; with
    /// the API off, until the slot is active).
    pub async fn start(db: &TestDb, config: Config) -> Daemon {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let readyz = config
            .api
            .enabled
            .then(|| format!("http://{}/readyz", config.api.listen));
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(walhook::app::run(config, shutdown.clone()));
        let daemon = Daemon { shutdown, handle };
        let http = reqwest::Client::new();
        for _ in 0..600 {
            let ready = match &readyz {
                Some(url) => http.get(url).send().await.is_ok_and(|r| r.status() == 200),
                None => db
                    .client
                    .query_opt(
                        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                        &[&db.name],
                    )
                    .await
                    .unwrap()
                    .is_some(),
            };
            if ready {
                return daemon;
            }
            assert!(
                !daemon.handle.is_finished(),
                "daemon stopped: {:?}",
                daemon.handle.await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("daemon did not start streaming within 30 s");
    }

    /// SIGTERM equivalent: stops and expects a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("daemon panicked")
            .expect("daemon failed");
    }
}

/// `walhook run` as a child process on `db` (slot and publication named after it, fast
/// retries, private targets allowed, no API), with `extra` environment. Status updates
/// follow the default (150 ms) unless the test process's environment sets
/// `WALHOOK_CAPTURE__STATUS_INTERVAL_MS` (how docs/delivery.md's duplicate figures were made).
pub fn spawn_walhook(db: &TestDb, extra: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_walhook"))
        .arg("run")
        .env("WALHOOK_DATABASE_URL", &db.url)
        .env("WALHOOK_CAPTURE__SLOT", &db.name)
        .env("WALHOOK_CAPTURE__PUBLICATION", &db.name)
        .env("WALHOOK_DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
        .env("WALHOOK_DELIVERY__RETRY_POLL_MS", "50")
        .env("WALHOOK_API__ENABLED", "false")
        .env("WALHOOK_LOG", "walhook=warn")
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap()
}

/// `walhook demo` as its own process, and its stdout lines as they come (read on a thread).
pub fn spawn_demo() -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .arg("demo")
        .env("WALHOOK_LOG", "walhook=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}
