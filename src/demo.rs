//! `walhook demo`: a working example on a throwaway local PostgreSQL.
//!
//! Starts a server ([`LocalPostgres`]), creates and watches a sample `orders` table, writes
//! a few rows, prints every captured change as it arrives, and keeps running so the user can
//! `psql` in and watch their own changes; Ctrl-C stops capture and removes the server.

use std::io::Write;

use tokio_util::sync::CancellationToken;

use crate::capture::{self, CaptureConfig};
use crate::change::CaptureMessage;
use crate::localpg::LocalPostgres;

const SAMPLE: &str = "
CREATE TABLE orders (
    id serial PRIMARY KEY,
    status text NOT NULL DEFAULT 'new',
    amount numeric(10,2) NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE orders REPLICA IDENTITY FULL;
";

const WRITES: &str = "
INSERT INTO orders (amount, tags) VALUES (12.50, '{gift}'), (99.00, '{}');
UPDATE orders SET status = 'paid', updated_at = now() WHERE id = 1;
DELETE FROM orders WHERE id = 2;
";

/// Runs the demo until Ctrl-C; prints to `out`.
pub async fn run(mut out: impl Write) -> anyhow::Result<()> {
    writeln!(out, "starting a throwaway PostgreSQL (wal_level=logical)…")?;
    let server = tokio::task::spawn_blocking(LocalPostgres::start).await??;
    let url = server.url("postgres");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(SAMPLE).await?;

    let cancel = CancellationToken::new();
    let mut config = CaptureConfig::new(url.parse()?);
    config.tables = vec!["orders".into()];
    let mut capture = capture::start(config, cancel.clone())?;
    while !capture.ack.is_streaming() {
        if capture.task.is_finished() {
            return Ok(capture.task.await??);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    client.batch_execute(WRITES).await?;
    writeln!(
        out,
        "capturing changes of table orders; sample writes made:\n{}",
        WRITES.trim()
    )?;
    writeln!(
        out,
        "\nmake your own (in another terminal):\n  psql {url} -c \"INSERT INTO orders (amount) VALUES (5.00)\"\n\
         press Ctrl-C to stop and remove the server.\n"
    )?;
    out.flush()?;

    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    loop {
        let message = tokio::select! {
            message = capture.changes.recv() => message,
            _ = cancel.cancelled() => None,
        };
        match message {
            Some(CaptureMessage::Change(change)) => {
                writeln!(out, "{}", serde_json::to_string_pretty(&change.to_json())?)?;
                out.flush()?;
            }
            Some(CaptureMessage::Commit(commit)) => capture.ack.acknowledge(commit.end_lsn),
            Some(CaptureMessage::Begin(_)) => {}
            None => break,
        }
    }
    cancel.cancel();
    drop(capture.changes);
    capture.task.await??;
    drop(server);
    writeln!(out, "stopped; the throwaway server is removed.")?;
    Ok(())
}
