//! The pgoutput logical decoding protocol (version 1), from bytes to row changes.
//!
//! ```text
//! XLogData payload ──message::PgOutput::parse──▶ PgOutput ──Decoder::decode──▶ CaptureMessage
//!                                                   │ Relation/Type      ▲
//!                                                   └──▶ relation cache, TypeRegistry (value::to_json)
//! ```

pub mod decoder;
pub mod message;
pub mod types;
pub mod value;

pub use decoder::Decoder;
pub use message::{PgOutput, Relation};

/// A replication message that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field it announces.
    #[error("pgoutput message truncated")]
    Truncated,
    /// An unknown message tag.
    #[error("unknown pgoutput message {0:#x}")]
    UnknownMessage(u8),
    /// A field had a value the protocol does not allow.
    #[error("malformed pgoutput message: {0}")]
    Malformed(String),
    /// A change names a relation no Relation message described.
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
    /// A change or Commit arrived outside Begin/Commit.
    #[error("row change or commit outside a transaction")]
    OutsideTransaction,
    /// A row image's width differs from its relation's.
    #[error("row of {table} has {got} columns, its relation has {expected}")]
    ColumnCount {
        /// `schema.table`.
        table: String,
        /// Columns in the Relation message.
        expected: usize,
        /// Columns in the tuple.
        got: usize,
    },
}
