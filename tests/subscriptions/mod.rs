//! The SQL admin surface, events built from real changes, routing over real rows.

mod envelope;
mod live;
mod nouns;
mod sql;
