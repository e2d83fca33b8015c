//! Backfills: a watched table's existing rows as `<noun>.backfilled` events, consistent
//! with the live stream (the watermark method of Netflix's DBLog; docs/backfill.md).
//!
//! ```text
//!  worker (one per streaming daemon)           change stream (capture)
//!  ─────────────────────────────────           ───────────────────────────────────────
//!  emit LOW watermark ───────────────────────▶ … live … LOW … live … HIGH … live …
//!  wait until the stage saw LOW                        │          │        │
//!  SELECT chunk (pk > last_key, LIMIT n)               ▼          ▼        ▼
//!  hand the rows to the stage                  interleave: records the keys of the
//!  emit HIGH watermark ──────────────────────▶ table's live changes between LOW and HIGH;
//!  wait until the chunk's events are done      after HIGH releases the chunk's other rows
//!  store last_key / rows_sent                  in slices of their own ─▶ Delivery::run
//! ```
//!
//! Guarantee: a row's backfill image is never delivered after a newer live event of that
//! row. A row changed between the watermarks is dropped from the chunk (its live event,
//! which is at least as new as the chunk's image, is delivered in stream order); a row not
//! changed there had, when the chunk was read, the image of its last change before LOW,
//! and every later change comes after HIGH in the stream, so after the backfill image,
//! on the same per-(subscription, row) chain.
//!
//! Watermarks travel as a transactional logical message (replication) or an outbox row
//! (trigger capture) under the pseudo table [`crate::change::Table::watermark`]; the stage
//! takes them out of the stream. A consumer without the stage (a mode switch's drain) skips
//! them as changes of an unwatched table. Progress is stored only once every event of a
//! chunk is delivered or durably queued (a marker behind the frame of its last row), so after `kill -9` a
//! backfill repeats at most its chunks in flight (up to 4), with the same event ids.

mod interleave;
mod worker;

pub use interleave::{Interleave, interleave};
pub use worker::{Worker, WorkerConfig};

/// What went wrong with a backfill.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// A query failed.
    #[error("backfill: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// The database could not be reached.
    #[error("backfill: {0}")]
    Connect(#[from] crate::database::DatabaseError),
    /// The backfill cannot go on (its table is gone or lost its primary key); it is marked
    /// failed with this message.
    #[error("{0}")]
    Definite(String),
    /// A watermark did not come back through the stream in time (the capture is
    /// reconnecting or another instance streams); the chunk is tried again.
    #[error("backfill: {0}")]
    Timeout(String),
}
