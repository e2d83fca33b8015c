//! Several `walhook run` processes on one database: one streams, the others stand by and take
//! over; lost and missing slots are refused until `walhook slot reset` records the gap.

mod gaps;
mod takeover;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::TestDb;

/// A `walhook run` child process on a test database, its API on its own port and its log
/// in a file; killed when dropped.
pub struct Instance {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub api: String,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// `walhook` with the test database's settings (slot and publication named after it, fast
/// retries, private targets allowed) and `extra` environment.
pub fn walhook(db: &TestDb, extra: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_walhook"));
    command
        .env("WALHOOK_DATABASE_URL", &db.url)
        .env("WALHOOK_CAPTURE__SLOT", &db.name)
        .env("WALHOOK_CAPTURE__PUBLICATION", &db.name)
        .env("WALHOOK_DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
        .env("WALHOOK_DELIVERY__RETRY_POLL_MS", "50")
        .env("WALHOOK_API__ENABLED", "false")
        .env("WALHOOK_LOG", "walhook=info")
        .envs(extra.iter().copied())
        .stdin(Stdio::null());
    command
}

fn log_file(db: &TestDb, what: &str) -> (PathBuf, std::fs::File) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "walhook-{}-{}-{what}-{n}.log",
        std::process::id(),
        db.name
    ));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

impl Instance {
    /// Starts `walhook run` with the API on a free port (does not wait for anything).
    pub fn spawn(db: &TestDb) -> Instance {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let (log, file) = log_file(db, "run");
        let child = walhook(
            db,
            &[
                ("WALHOOK_API__ENABLED", "true"),
                ("WALHOOK_API__LISTEN", &listen),
            ],
        )
        .arg("run")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
        Instance {
            child: Some(child),
            api: format!("http://{listen}"),
            log,
        }
    }

    /// `GET /readyz`: status and body, `None` while the API does not answer.
    pub async fn readyz(&self) -> Option<(u16, Value)> {
        let answer = reqwest::get(format!("{}/readyz", self.api)).await.ok()?;
        let status = answer.status().as_u16();
        let text = answer.text().await.ok()?;
        Some((status, serde_json::from_str(&text).ok()?))
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until `/readyz` names `role`; returns how long that took.
    pub async fn wait_role(&mut self, role: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Some((_, body)) = self.readyz().await
                && body["role"] == role
            {
                return start.elapsed();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("walhook exited ({status}):\n{}", self.log_text());
            }
            assert!(
                start.elapsed() < within,
                "role {role:?} not reached within {within:?} (readyz {:?}); log:\n{}",
                self.readyz().await,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; waits for the exit and expects 0.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(30)).await;
        assert!(status.success(), "exit {status}; log:\n{}", self.log_text());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a child to exit (fails after `within`).
pub async fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("process did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `walhook ARGS…` (API off) to its end: exit status, stdout, stderr.
pub async fn run_to_end(db: &TestDb, args: &[&str]) -> (ExitStatus, String, String) {
    let (out_path, out) = log_file(db, "out");
    let (err_path, err) = log_file(db, "err");
    let mut child = walhook(db, &[])
        .args(args)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;
    (
        status,
        std::fs::read_to_string(out_path).unwrap(),
        std::fs::read_to_string(err_path).unwrap(),
    )
}
