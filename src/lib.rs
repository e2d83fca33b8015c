//! walhook turns row changes in PostgreSQL into webhooks.
//!
//! # Layout
//!
//! ```text
//! src/main.rs        CLI only: parse, load config, init tracing, call the library
//! src/app.rs         walhook run: wiring and shutdown order
//! src/api/           REST hooks API (axum): tokens, /v1/hooks, /v1/events, health, metrics
//! src/config.rs      figment chain: defaults < walhook.toml < WALHOOK_* env
//! src/database/      the one place that connects: Database handle, sslmode/TLS, pinned search_path
//! src/capture/       replication client (startup, TLS, auth, stream, status updates),
//!                    slot/publication, catalog lookups; lease.rs: one instance streams, the
//!                    rest stand by; progress.rs: the slot's record, gaps, `slot reset`;
//!                    outbox.rs: trigger capture
//! src/pgoutput/      protocol bytes → typed messages; relation cache; values → JSON
//! src/change.rs      the change model: Begin, RowChange{position, op, new, old}, Commit
//! src/events.rs      row change → event envelope (type, stable id, data, previous, changed)
//! src/subscriptions/ diesel schema + store (migrations, sql/), routing index, live reload
//! src/delivery/      dispatcher (per-row chains, watermark), sender, signing, SSRF guard,
//!                    retry policy, queue table and retrier
//! src/ops/          walhook status, heartbeat rows (walhook.instances), preflight checks
//! src/backfill/     backfills: existing rows in primary-key chunks between watermarks,
//!                    interleaved with the live stream (DBLog)
//! src/switch.rs      capture-mode switches split at the switch LSN (nothing lost or repeated)
//! src/table_names.rs how a table named in the config is found (exact names, then SQL syntax)
//! src/lsn.rs         WAL positions
//! ```
//!
//! # Data path
//!
//! capture → decode → route → deliver → acknowledge. The capture task streams pgoutput
//! from a walhook-owned slot, decodes each message as it arrives into [`change`] values and
//! sends them through a bounded channel; the consumer acknowledges each commit's end LSN once
//! it is safe, and only then may the slot advance past it.
//!
//! # Guarantees
//!
//! - Row values equal PostgreSQL's `to_jsonb(row)` under `TimeZone=UTC`.
//! - Every change has a stable [`change::Position`] (commit LSN, index), the same on replay.
//! - Nothing is acknowledged to the server before the consumer acknowledged it; while idle,
//!   the keepalive's WAL end is confirmed so unrelated writes pin no WAL.

pub mod api;
pub mod app;
pub mod backfill;
pub mod capture;
pub mod change;
pub mod config;
pub mod console;
pub mod database;
pub mod delivery;
pub mod demo;
pub mod events;
pub mod localpg;
pub mod lsn;
pub mod ops;
pub mod pgoutput;
pub mod subscriptions;
pub mod switch;
pub mod table_names;
