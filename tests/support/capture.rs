//! Running a capture inside a test: start it on a test database, wait until it streams, and
//! collect row changes, acknowledging commits as a real consumer would.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walhook::capture::{Capture, CaptureConfig};
use walhook::change::{CaptureMessage, RowChange};
use walhook::lsn::Lsn;

use super::TestDb;

/// A capture under test.
pub struct Tap {
    /// The running capture.
    pub capture: Capture,
    cancel: CancellationToken,
    /// Acknowledge each commit as soon as it is read.
    pub auto_ack: bool,
    /// End LSN of the last commit read.
    pub last_commit_end: Lsn,
}

/// A capture configuration for `db`: slot and publication named after the database.
pub fn config(db: &TestDb, tables: &[&str]) -> CaptureConfig {
    config_for(&db.url, &db.name, tables)
}

/// A capture configuration for any URL (e.g. another role), slot/publication `name`.
pub fn config_for(url: &str, name: &str, tables: &[&str]) -> CaptureConfig {
    let mut config = CaptureConfig::new(url.parse().expect("url parses"));
    config.slot = name.to_owned();
    config.publication = name.to_owned();
    config.tables = tables
        .iter()
        .map(|t| walhook::database::split_table_name(t).expect("table name"))
        .collect();
    config.status_interval = Duration::from_millis(100);
    config
}

impl Tap {
    /// Starts capturing and waits until the stream is live (the slot exists), so changes
    /// made after this returns are captured.
    pub async fn start(config: CaptureConfig) -> Tap {
        let cancel = CancellationToken::new();
        let capture = walhook::capture::start(config, cancel.clone()).expect("valid config");
        let tap = Tap {
            capture,
            cancel,
            auto_ack: true,
            last_commit_end: Lsn(0),
        };
        tap.wait_streaming().await;
        tap
    }

    /// Waits until the replication stream is (again) streaming.
    pub async fn wait_streaming(&self) {
        for _ in 0..600 {
            if self.capture.ack.is_streaming() {
                return;
            }
            assert!(!self.capture.task.is_finished(), "capture task ended early");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("capture did not start streaming within 30 s");
    }

    /// Reads the next message, failing the test after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<CaptureMessage> {
        let message = tokio::time::timeout(wait, self.capture.changes.recv())
            .await
            .ok()??;
        if let CaptureMessage::Commit(commit) = &message {
            self.last_commit_end = commit.end_lsn;
            if self.auto_ack {
                self.capture.ack.acknowledge(commit.end_lsn);
            }
        }
        Some(message)
    }

    /// Collects exactly `n` row changes (and the commits around them), within 120 s.
    pub async fn changes(&mut self, n: usize) -> Vec<RowChange> {
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(CaptureMessage::Change(change)) => out.push(change),
                Some(_) => {}
                None => panic!("got {} of {n} changes before timing out", out.len()),
            }
        }
        out
    }

    /// Reads on until the commit of the current transaction (so it gets acknowledged).
    pub async fn finish_transaction(&mut self) {
        while let Some(message) = self.next(Duration::from_secs(30)).await {
            if matches!(message, CaptureMessage::Commit(_)) {
                return;
            }
        }
        panic!("no commit arrived");
    }

    /// Asserts that no row change arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(CaptureMessage::Change(change)) = self.next(wait).await {
            panic!("unexpected change {:?}", change.to_json());
        }
    }

    /// Stops the capture and waits for its task (which must end cleanly).
    pub async fn stop(self) {
        self.cancel.cancel();
        drop(self.capture.changes);
        let result = self.capture.task.await.expect("capture task panicked");
        result.expect("capture ended with an error");
    }
}
